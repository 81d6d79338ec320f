"""The one mapping from Q.850 hang-up causes to dialer outcomes.

Both backends use it: AMI's `Hangup` event carries `Cause`, ARI's `ChannelDestroyed` carries
`cause`. AMI's OriginateResponse `Reason` codes are AMI-only and live in `cti.ami.codes`; on
res_pjsip a 486 gives Reason 0 with cause 17, so a failed call is classified by its cause
whenever one is known, and by Reason only when no channel ever existed.
"""

from __future__ import annotations

from dialer.domain import Outcome

# Q.850 cause codes that matter to a dialer (ITU-T Q.850 table 1; Asterisk's causes.h).
UNALLOCATED = 1
NO_ROUTE_TRANSIT_NET = 2
NO_ROUTE_DESTINATION = 3
NORMAL_CLEARING = 16
USER_BUSY = 17
NO_USER_RESPONSE = 18
NO_ANSWER = 19
SUBSCRIBER_ABSENT = 20
CALL_REJECTED = 21
NUMBER_CHANGED = 22
DESTINATION_OUT_OF_ORDER = 27
INVALID_NUMBER_FORMAT = 28
NORMAL_UNSPECIFIED = 31
NORMAL_CIRCUIT_CONGESTION = 34
NETWORK_OUT_OF_ORDER = 38
NORMAL_TEMPORARY_FAILURE = 41
SWITCH_CONGESTION = 42
REQUESTED_CHAN_UNAVAIL = 44
INTERWORKING = 127

#: Asterisk's own text for a cause (`ast_cause2str`), as AMI `Cause-txt` and ARI `cause_txt`
#: carry it. The emulator writes these; the client only ever reads the number.
CAUSE_TEXT: dict[int, str] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    2: "No route to specified transmit network",
    3: "No route to destination",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    21: "Call Rejected",
    22: "Number changed",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format (incomplete number)",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    44: "Requested channel not available",
    58: "Bearer capability not available",
    127: "Interworking, unspecified",
}


def cause_text(cause: int) -> str:
    return CAUSE_TEXT.get(cause, "Unknown")


#: Outcome of a call that was never answered, by its Q.850 cause.
UNANSWERED_OUTCOME_BY_CAUSE: dict[int, Outcome] = {
    UNALLOCATED: Outcome.FAILED,
    NO_ROUTE_TRANSIT_NET: Outcome.FAILED,
    NO_ROUTE_DESTINATION: Outcome.FAILED,
    NUMBER_CHANGED: Outcome.FAILED,
    DESTINATION_OUT_OF_ORDER: Outcome.FAILED,
    INVALID_NUMBER_FORMAT: Outcome.FAILED,
    USER_BUSY: Outcome.BUSY,
    NO_USER_RESPONSE: Outcome.NO_ANSWER,
    NO_ANSWER: Outcome.NO_ANSWER,
    SUBSCRIBER_ABSENT: Outcome.NO_ANSWER,
    # A caller that hangs up (or a dialer that cancels) an unanswered call clears it normally.
    NORMAL_CLEARING: Outcome.NO_ANSWER,
    CALL_REJECTED: Outcome.REJECTED,
    NORMAL_CIRCUIT_CONGESTION: Outcome.CONGESTION,
    NETWORK_OUT_OF_ORDER: Outcome.CONGESTION,
    NORMAL_TEMPORARY_FAILURE: Outcome.CONGESTION,
    SWITCH_CONGESTION: Outcome.CONGESTION,
    REQUESTED_CHAN_UNAVAIL: Outcome.CONGESTION,
}


def outcome_for_unanswered(cause: int | None) -> Outcome:
    """The outcome of a call that ended before any answer. Unknown causes count as failed."""
    if cause is None:
        return Outcome.FAILED
    return UNANSWERED_OUTCOME_BY_CAUSE.get(cause, Outcome.FAILED)


def outcome_for_call(*, answered: bool, cause: int | None, amd: str | None = None) -> Outcome:
    """The outcome of a finished call.

    An answered call is `machine` when AMD said MACHINE and `human` otherwise (NOTSURE is
    treated as a person: dropping a person as a machine is the costlier error). The dialer may
    later refine `human` into `abandoned` when no agent took the call in time.
    """
    if answered:
        return Outcome.MACHINE if (amd or "").upper() == "MACHINE" else Outcome.HUMAN
    return outcome_for_unanswered(cause)
