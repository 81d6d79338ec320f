"""The dialer's vocabulary: states, outcomes, modes and the legal state transitions.

Every state name, outcome code and transition rule is defined here once and imported everywhere
else (the database models, the strategies, the CTI cause mapping, reports). This module is pure:
no I/O, no clock, no third-party imports, so that `strategies/` can depend on it freely.
"""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    """The channel of one attempt (and of one strategy step)."""

    VOICE = "voice"
    SMS = "sms"


class CampaignChannel(StrEnum):
    """Which channels a campaign may use."""

    VOICE = "voice"
    SMS = "sms"
    VOICE_SMS = "voice+sms"

    def allows(self, channel: Channel) -> bool:
        return self is CampaignChannel.VOICE_SMS or self.value == channel.value


class DialMode(StrEnum):
    PREVIEW = "preview"
    PROGRESSIVE = "progressive"
    POWER = "power"
    PREDICTIVE = "predictive"
    AGENTLESS = "agentless"

    @property
    def guarantees_agent(self) -> bool:
        """True when every call is placed for an agent who is already reserved for it.

        Only then may the UK rule's 72-hour ban on re-calling an abandoned number be lifted.
        """
        return self in (DialMode.PREVIEW, DialMode.PROGRESSIVE)


class CampaignState(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    COMPLETED = "completed"


class ContactState(StrEnum):
    """Where a contact stands. See `CONTACT_TRANSITIONS` for the legal moves."""

    PENDING = "pending"  # never dialed, waiting for its due time
    SENT_TO_DIALER = "sent_to_dialer"  # leased by one dialer node until the lease expires
    CONNECTED = "connected"  # a live person was reached; the disposition decides what follows
    NOT_CONNECTED = "not_connected"  # the last attempt failed; the strategy set the next due time
    RETRIES_COMPLETED = "retries_completed"  # the strategy has nothing left to try
    DNC_LISTED = "dnc_listed"  # every number of the contact is on a do-not-call list
    SMS_SENT = "sms_sent"  # the strategy ended on an SMS; waiting for a reply or the expiry
    SMS_SENT_CLOSED = "sms_sent_closed"  # the SMS expired without a reply
    SMS_RESPONDED = "sms_responded"  # the customer replied to the SMS
    DANGLING = "dangling"  # a call had no result within the allowed time; needs reconciling
    CALLBACK_SCHEDULED = "callback_scheduled"  # an agent agreed a callback time (disposition R)


#: States a dialer may lease a contact from once its `due_at` has passed.
LEASABLE_STATES: frozenset[ContactState] = frozenset(
    {ContactState.PENDING, ContactState.NOT_CONNECTED, ContactState.CALLBACK_SCHEDULED}
)

#: States nothing moves a contact out of, except an explicit operator reset (recycling).
TERMINAL_STATES: frozenset[ContactState] = frozenset(
    {
        ContactState.RETRIES_COMPLETED,
        ContactState.DNC_LISTED,
        ContactState.SMS_SENT_CLOSED,
        ContactState.SMS_RESPONDED,
    }
)

_S = ContactState

#: The legal automatic moves. `reset_contact` (an operator recycling a list) may additionally
#: move any terminal or dangling contact back to `pending`; see `RESETTABLE_STATES`.
CONTACT_TRANSITIONS: dict[ContactState, frozenset[ContactState]] = {
    _S.PENDING: frozenset({_S.SENT_TO_DIALER, _S.DNC_LISTED, _S.RETRIES_COMPLETED}),
    _S.NOT_CONNECTED: frozenset({_S.SENT_TO_DIALER, _S.DNC_LISTED, _S.RETRIES_COMPLETED}),
    _S.CALLBACK_SCHEDULED: frozenset({_S.SENT_TO_DIALER, _S.DNC_LISTED}),
    _S.SENT_TO_DIALER: frozenset(
        {
            # the lease expired, or the dialer handed the contact back unused
            _S.PENDING,
            _S.NOT_CONNECTED,
            _S.CALLBACK_SCHEDULED,
            # the outcome of the attempt
            _S.CONNECTED,
            _S.RETRIES_COMPLETED,
            _S.DNC_LISTED,
            _S.SMS_SENT,
            _S.DANGLING,
        }
    ),
    _S.CONNECTED: frozenset({_S.CALLBACK_SCHEDULED, _S.DNC_LISTED}),
    _S.SMS_SENT: frozenset({_S.SMS_SENT_CLOSED, _S.SMS_RESPONDED, _S.DNC_LISTED}),
    _S.DANGLING: frozenset({_S.CONNECTED, _S.NOT_CONNECTED, _S.RETRIES_COMPLETED}),
    _S.RETRIES_COMPLETED: frozenset(),
    _S.DNC_LISTED: frozenset(),
    _S.SMS_SENT_CLOSED: frozenset(),
    _S.SMS_RESPONDED: frozenset({_S.DNC_LISTED}),
}

#: States an operator may recycle back to `pending` (a list reset). DNC is deliberately absent:
#: a number leaves DNC only by removing its entry, never by recycling the list.
RESETTABLE_STATES: frozenset[ContactState] = frozenset(
    {
        _S.RETRIES_COMPLETED,
        _S.SMS_SENT_CLOSED,
        _S.SMS_RESPONDED,
        _S.DANGLING,
        _S.CONNECTED,
        _S.NOT_CONNECTED,
    }
)


class IllegalTransition(ValueError):
    """A state change that the state machine does not allow."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        super().__init__(f"illegal {kind} transition {old} -> {new}")
        self.kind, self.old, self.new = kind, old, new


def check_contact_transition(old: ContactState, new: ContactState) -> None:
    """Raise `IllegalTransition` unless `old -> new` is a legal automatic move."""
    if new not in CONTACT_TRANSITIONS[old]:
        raise IllegalTransition("contact", old.value, new.value)


CAMPAIGN_TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    CampaignState.DRAFT: frozenset({CampaignState.RUNNING, CampaignState.STOPPED}),
    CampaignState.RUNNING: frozenset(
        {CampaignState.PAUSED, CampaignState.STOPPED, CampaignState.COMPLETED}
    ),
    CampaignState.PAUSED: frozenset({CampaignState.RUNNING, CampaignState.STOPPED}),
    CampaignState.STOPPED: frozenset({CampaignState.RUNNING}),
    CampaignState.COMPLETED: frozenset({CampaignState.RUNNING}),
}


def check_campaign_transition(old: CampaignState, new: CampaignState) -> None:
    """Raise `IllegalTransition` unless `old -> new` is allowed for a campaign."""
    if new not in CAMPAIGN_TRANSITIONS[old]:
        raise IllegalTransition("campaign", old.value, new.value)


class Outcome(StrEnum):
    """The result of one attempt. The CTI layer maps Q.850 causes onto these, once."""

    HUMAN = "human"  # a live answer that reached an agent (or the IVR)
    MACHINE = "machine"  # answering machine (AMD)
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    FAILED = "failed"  # the number does not exist or the network refused it
    CONGESTION = "congestion"
    ABANDONED = "abandoned"  # a live answer that found no agent within 2 s
    ABANDONED_BY_AGENT = "abandoned_by_agent"  # closed without a confirmed disposition
    DANGLING = "dangling"  # no result within the allowed time
    SMS_SENT = "sms_sent"
    SMS_DELIVERED = "sms_delivered"
    SMS_FAILED = "sms_failed"


#: Outcomes of a live person on the line.
LIVE_OUTCOMES: frozenset[Outcome] = frozenset(
    {Outcome.HUMAN, Outcome.ABANDONED, Outcome.ABANDONED_BY_AGENT}
)


class DispositionType(StrEnum):
    CALLBACK = "R"  # needs a date and time; private (same agent) or public
    NEGATIVE = "N"  # closes the contact
    CLOSE = "C"  # sale: a cart becomes a contract with a protocol number
    APPOINTMENT = "T"  # booked into a field agent's agenda


class CallbackScope(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class DncSource(StrEnum):
    MANUAL = "manual"
    IMPORT = "import"
    SMS_STOP = "sms-stop"
    AGENT = "agent"
    IVR = "ivr"  # the caller opted out in an IVR flow (a `dnc` node)


#: `contacts.state_reason` is a VARCHAR(200) (PostgreSQL refuses a longer value).
REASON_CHARS = 200


def clip_reason(text: str) -> str:
    """`text` cut to fit `contacts.state_reason`, marked with an ellipsis when cut."""
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


#: Length limits from the data contract; the importer and the CLI enforce them.
MAX_PHONES = 5
MAX_PHONE_CHARS = 28
MAX_PARAMS = 12
MAX_PARAM_CHARS = 40
MAX_EXTERNAL_ID_CHARS = 64
