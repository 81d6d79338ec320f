"""The strategy planner: what to try next for one contact, and when, or why to stop.

`next_action(contact, attempts, campaign, now)` is a pure function of its arguments. It never
reads the clock, the database or the DNC tables: the caller passes `now` (an aware datetime)
and the contact's slots already matched against DNC (`ContactView.dnc_phones`).

The rules, in the order they are applied:

1. `attempts` may come in any order; they are sorted by `placed_at`. An attempt whose
   `outcome` is None is still in progress: it counts toward `max_attempts`, the daily limit
   and "an SMS was already sent to this phone", but not toward a step's tries, and it is never
   the "latest finished attempt" that sets the retry delay.
2. Any attempt with outcome `human` closes the contact as `connected` (rule `connected`): a
   disposition decides what follows a live conversation, not the strategy.
3. When the attempts (voice and SMS, finished or not) reach `strategy.max_attempts`, the
   contact closes as `retries_completed` (rule `max_attempts`).
4. Phone resolution: a step on slot k uses `contact.phones[k-1]`; when that slot is empty it
   uses phone1 instead (the seed product's rule) and the dial's `phone_index` is 1. A resolved
   phone is unusable when its slot is in `contact.dnc_phones`, or when an earlier attempt on
   that slot (any channel) ended with an outcome in `strategy.skip_phone_on`.
5. SMS switch: when the latest finished attempt is a voice attempt whose outcome is in
   `strategy.switch_to_sms_on`, the campaign allows SMS, that phone is usable and no SMS was
   ever sent to that slot, the answer is an SMS to that slot (`step` None), no earlier than
   `placed_at + strategy.sms_switch_delay`. The plan resumes after it.
6. Step progress: attempts are counted per `step` (a 0-based index into `strategy.steps`).
   A step is skipped when the campaign does not allow its channel or its phone is unusable.
   The current step is the first step, in order, with fewer attempts than its `tries` that is
   not skipped; the answer dials it no earlier than the latest finished attempt's `placed_at`
   plus `strategy.retry_delay(outcome)` (now, without finished attempts).
7. Without a current step the contact closes: as `dnc_listed` (rule `dnc`) when every phone any
   step resolves to is DNC-suppressed; else as `sms_sent` (rule `sms_awaiting_reply`) when the
   latest finished attempt is an SMS that was sent or delivered; else as `retries_completed`
   (rule `strategy_exhausted`).
8. The earliest time is never before `now`. It is then pushed, until none of them refuses, by
   the daily attempt limit (in the contact's time zone), the UK 72-hour rule (when
   `campaign.uk_rules`, for abandoned calls to the chosen slot, lifted in dial modes that
   guarantee an agent) and the calling hours and holidays (for SMS too: quiet hours apply to
   texts). Each rule that moved it is in `Dial.delayed_by`, once. When the calling hours never
   open, no dial is possible and the contact closes as `retries_completed` with that refusal.

All returned datetimes are in UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from dialer.domain import Channel, ContactState, Outcome
from strategies.compliance import (
    Refusal,
    Rule,
    check_calling_hours,
    check_daily_attempts,
    check_max_attempts,
    check_uk_abandon,
)
from strategies.model import AttemptView, CampaignPolicy, Close, ContactView, Dial, Strategy

#: Rounds of the earliest-time adjustment before giving up. Each rule moves the time forward
#: and the three settle in two or three rounds; the bound only guards against a rule bug.
MAX_ADJUST_ROUNDS = 10

#: SMS outcomes after which the contact waits for a reply when the plan has nothing left.
_SMS_AWAITING = frozenset({Outcome.SMS_SENT, Outcome.SMS_DELIVERED})


def next_action(
    contact: ContactView,
    attempts: Sequence[AttemptView],
    campaign: CampaignPolicy,
    now: datetime,
) -> Dial | Close:
    """Decide the next dial (or SMS) for `contact`, or close it with the reason.

    See the module docstring for the rules. Raises ValueError for a naive `now` or `placed_at`.
    """
    _require_aware(now, "now")
    for i, a in enumerate(attempts):
        _require_aware(a.placed_at, f"attempts[{i}].placed_at")
    now = now.astimezone(UTC)
    history = sorted(attempts, key=lambda a: a.placed_at)
    finished = [a for a in history if a.outcome is not None]
    strategy = campaign.strategy

    for a in finished:
        if a.outcome is Outcome.HUMAN:
            return Close(
                ContactState.CONNECTED,
                Refusal(
                    Rule.CONNECTED,
                    f"a live person answered phone{a.phone_index} at {_iso(a.placed_at)}",
                ),
            )

    too_many = check_max_attempts(len(history), strategy.max_attempts)
    if too_many is not None:
        return Close(ContactState.RETRIES_COMPLETED, too_many)

    phones = _Phones(contact, finished, strategy)
    latest = finished[-1] if finished else None

    if latest is not None and _switches_to_sms(latest, history, campaign, phones):
        number = phones.number(latest.phone_index)
        assert number is not None  # usable() checked it
        return _schedule(
            step=None,
            phone_index=latest.phone_index,
            number=number,
            channel=Channel.SMS,
            base=latest.placed_at + strategy.sms_switch_delay,
            contact=contact,
            history=history,
            campaign=campaign,
            now=now,
        )

    tries_used = [0] * len(strategy.steps)
    for a in finished:
        if a.step is not None and 0 <= a.step < len(tries_used):
            tries_used[a.step] += 1

    for i, step in enumerate(strategy.steps):
        if tries_used[i] >= step.tries or not campaign.channel.allows(step.channel):
            continue
        resolved = phones.resolve(step.phone)
        if resolved is None or not phones.usable(resolved[0]):
            continue
        phone_index, number = resolved
        base = (
            now if latest is None else latest.placed_at + strategy.retry_delay(latest.outcome)
        )
        return _schedule(
            step=i,
            phone_index=phone_index,
            number=number,
            channel=step.channel,
            base=base,
            contact=contact,
            history=history,
            campaign=campaign,
            now=now,
        )

    return _close_without_step(contact, latest, strategy, phones)


class _Phones:
    """Slot resolution and usability for one contact and its finished attempts."""

    def __init__(
        self, contact: ContactView, finished: Sequence[AttemptView], strategy: Strategy
    ) -> None:
        self._contact = contact
        self._dead = {a.phone_index for a in finished if a.outcome in strategy.skip_phone_on}

    def number(self, slot: int) -> str | None:
        phones = self._contact.phones
        return (phones[slot - 1] or None) if 1 <= slot <= len(phones) else None

    def resolve(self, slot: int) -> tuple[int, str] | None:
        """(slot, number) for a step on `slot`; an empty slot falls back to phone1."""
        for candidate in (slot, 1):
            number = self.number(candidate)
            if number is not None:
                return candidate, number
        return None

    def usable(self, slot: int) -> bool:
        return (
            self.number(slot) is not None
            and slot not in self._contact.dnc_phones
            and slot not in self._dead
        )


def _switches_to_sms(
    latest: AttemptView,
    history: Sequence[AttemptView],
    campaign: CampaignPolicy,
    phones: _Phones,
) -> bool:
    return (
        latest.channel is Channel.VOICE
        and latest.outcome in campaign.strategy.switch_to_sms_on
        and campaign.channel.allows(Channel.SMS)
        and phones.usable(latest.phone_index)
        and not any(
            a.channel is Channel.SMS and a.phone_index == latest.phone_index for a in history
        )
    )


def _close_without_step(
    contact: ContactView, latest: AttemptView | None, strategy: Strategy, phones: _Phones
) -> Close:
    reachable = {r[0] for s in strategy.steps if (r := phones.resolve(s.phone)) is not None}
    if reachable and reachable <= contact.dnc_phones:
        slots = ", ".join(f"phone{k}" for k in sorted(reachable))
        return Close(
            ContactState.DNC_LISTED,
            Refusal(Rule.DNC, f"every number the strategy can dial is on a DNC list ({slots})"),
        )
    if latest is not None and latest.channel is Channel.SMS and latest.outcome in _SMS_AWAITING:
        return Close(
            ContactState.SMS_SENT,
            Refusal(
                Rule.SMS_AWAITING_REPLY,
                f"the strategy ended on an SMS to phone{latest.phone_index} sent at "
                f"{_iso(latest.placed_at)}; waiting for a reply",
            ),
        )
    return Close(
        ContactState.RETRIES_COMPLETED,
        Refusal(
            Rule.STRATEGY_EXHAUSTED,
            f"every step of strategy {strategy.name!r} is used up or skipped",
        ),
    )


def _schedule(
    *,
    step: int | None,
    phone_index: int,
    number: str,
    channel: Channel,
    base: datetime,
    contact: ContactView,
    history: Sequence[AttemptView],
    campaign: CampaignPolicy,
    now: datetime,
) -> Dial | Close:
    """A `Dial` at the first instant from max(base, now) that no compliance rule refuses."""
    strategy = campaign.strategy
    placed = [a.placed_at for a in history]
    abandoned = [
        a.placed_at
        for a in history
        if a.outcome is Outcome.ABANDONED and a.phone_index == phone_index
    ]
    checks: list[Callable[[datetime], Refusal | None]] = [
        lambda t: check_daily_attempts(placed, contact.tz, t, strategy.max_attempts_per_day),
        lambda t: check_calling_hours(contact.tz, t, campaign.calling_hours, campaign.holidays),
    ]
    if campaign.uk_rules:
        checks.insert(
            1,
            lambda t: check_uk_abandon(abandoned, t, campaign.dial_mode.guarantees_agent),
        )

    start = max(base.astimezone(UTC), now)
    delayed_by: dict[Rule, Refusal] = {}
    for _ in range(MAX_ADJUST_ROUNDS):
        moved = False
        for check in checks:
            refusal = check(start)
            if refusal is None:
                continue
            if refusal.until is None:
                return Close(ContactState.RETRIES_COMPLETED, refusal)
            until = refusal.until.astimezone(UTC)
            if until > start:
                start, moved = until, True
                delayed_by[refusal.rule] = refusal
        if not moved:
            break
    else:
        raise RuntimeError(
            f"no dial time settled after {MAX_ADJUST_ROUNDS} rounds (last {_iso(start)}); "
            f"a compliance rule keeps moving it: {list(delayed_by.values())}"
        )
    return Dial(
        step=step,
        phone_index=phone_index,
        number=number,
        channel=channel,
        earliest=start,
        delayed_by=tuple(delayed_by.values()),
    )


def _require_aware(t: datetime, what: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, got naive {t.isoformat()}")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()
