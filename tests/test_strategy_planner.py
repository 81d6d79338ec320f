"""`next_action`: which number and channel next, when, or why the contact closes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dialer.domain import CampaignChannel, Channel, ContactState, DialMode, Outcome
from strategies import (
    BUILTIN_STRATEGIES,
    AttemptView,
    CampaignPolicy,
    Close,
    ContactView,
    Dial,
    Strategy,
    next_action,
)
from strategies.compliance import CallingHours, Refusal, Rule

NY, LA, LONDON = "America/New_York", "America/Los_Angeles", "Europe/London"
P1, P2, P3, P4, P5 = (f"+1212555010{k}" for k in range(1, 6))
ALL_PHONES = (P1, P2, P3, P4, P5)
VOICE, SMS = Channel.VOICE, Channel.SMS
NA, BUSY = Outcome.NO_ANSWER, Outcome.BUSY


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


#: Wed 2026-06-10 10:00 in New York (EDT, UTC-4): inside the default 08:00-21:00 window.
NOW = utc(2026, 6, 10, 14)


def contact(
    phones: Sequence[str | None] = (P1, P2, P3), tz: str = NY, dnc: Sequence[int] = ()
) -> ContactView:
    return ContactView(tuple(phones), tz, dnc_phones=frozenset(dnc))


def policy(strategy: str | Strategy = "default", **kw: Any) -> CampaignPolicy:
    s = BUILTIN_STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    return CampaignPolicy(strategy=s, **kw)


def plan(steps: list[dict[str, Any]], **kw: Any) -> Strategy:
    """A custom strategy; no daily limit unless one is given, so it does not interfere."""
    return Strategy.from_dict({"name": "test", "steps": steps, "max_attempts_per_day": 100, **kw})


def att(
    at: datetime,
    phone: int,
    outcome: Outcome | None,
    step: int | None,
    channel: Channel = VOICE,
) -> AttemptView:
    return AttemptView(at, phone, channel, outcome, step)


def dial(result: Dial | Close) -> Dial:
    assert isinstance(result, Dial), f"expected a Dial, got {result}"
    return result


def close(result: Dial | Close) -> Close:
    assert isinstance(result, Close), f"expected a Close, got {result}"
    return result


def rules(d: Dial) -> list[Rule]:
    return [r.rule for r in d.delayed_by]


# --- step order, tries and phone resolution ------------------------------------------------------


def test_fresh_contact_dials_phone1_now() -> None:
    assert next_action(contact(), [], policy(), NOW) == Dial(
        step=0, phone_index=1, number=P1, channel=VOICE, earliest=NOW, delayed_by=()
    )


def test_step_is_retried_until_its_tries_are_used() -> None:
    d = dial(next_action(contact(), [att(NOW - timedelta(hours=3), 1, NA, 0)], policy(), NOW))
    assert (d.step, d.phone_index) == (0, 1)


def test_busy_on_phone1_moves_to_phone2_after_retry_delay() -> None:
    busy_at = NOW - timedelta(minutes=1)
    attempts = [att(NOW - timedelta(hours=3), 1, NA, 0), att(busy_at, 1, BUSY, 0)]
    d = dial(next_action(contact(), attempts, policy(), NOW))
    assert (d.step, d.phone_index, d.number, d.channel) == (1, 2, P2, VOICE)
    assert d.earliest == busy_at + timedelta(minutes=5)
    assert d.delayed_by == ()


def test_default_strategy_walks_every_step_in_order_then_stops_at_max_attempts() -> None:
    c, p = contact(ALL_PHONES), policy()
    attempts: list[AttemptView] = []
    now = NOW
    seen = []
    while isinstance(action := next_action(c, attempts, p, now), Dial):
        seen.append((action.step, action.phone_index, action.number))
        attempts.append(att(action.earliest, action.phone_index, NA, action.step))
        now = action.earliest + timedelta(minutes=1)
    assert seen == [
        (0, 1, P1), (0, 1, P1), (1, 2, P2), (1, 2, P2),
        (2, 3, P3), (3, 4, P4), (4, 5, P5), (5, 1, P1),
    ]
    assert action == Close(
        ContactState.RETRIES_COMPLETED, Refusal(Rule.MAX_ATTEMPTS, "8 of 8 attempts used")
    )


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_phone2_falls_back_to_phone1(empty: str | None) -> None:
    attempts = [att(NOW - timedelta(hours=4), 1, NA, 0), att(NOW - timedelta(hours=2), 1, NA, 0)]
    d = dial(next_action(contact((P1, empty, P3)), attempts, policy(), NOW))
    assert (d.step, d.phone_index, d.number) == (1, 1, P1)


def test_steps_on_missing_slots_dial_phone1() -> None:
    # a contact with one number: the default plan dials it for every step
    c, p = contact((P1,)), policy()
    attempts: list[AttemptView] = []
    for _ in range(8):
        d = dial(next_action(c, attempts, p, NOW))
        assert (d.phone_index, d.number) == (1, P1)
        attempts.append(att(NOW - timedelta(days=1), 1, NA, d.step))
    assert close(next_action(c, attempts, p, NOW)).refusal.rule is Rule.MAX_ATTEMPTS


def test_step_is_skipped_when_its_slot_and_phone1_are_empty() -> None:
    d = dial(next_action(contact((None, P2)), [], policy(), NOW))
    assert (d.step, d.phone_index, d.number) == (1, 2, P2)


def test_contact_without_any_number_is_exhausted() -> None:
    c = close(next_action(contact((None, None)), [], policy(), NOW))
    assert c.state is ContactState.RETRIES_COMPLETED
    assert c.refusal.rule is Rule.STRATEGY_EXHAUSTED


def test_dnc_phone_is_skipped() -> None:
    d = dial(next_action(contact(dnc=[1]), [], policy(), NOW))
    assert (d.step, d.phone_index, d.number) == (1, 2, P2)


def test_empty_slot_falling_back_to_a_dnc_phone1_is_skipped() -> None:
    s = plan([{"phone": 2}, {"phone": 3}])
    d = dial(next_action(contact((P1, None, P3), dnc=[1]), [], policy(s), NOW))
    assert (d.step, d.phone_index) == (1, 3)


def test_all_phones_dnc_closes_as_dnc_listed() -> None:
    c = close(next_action(contact(dnc=[1, 2, 3]), [], policy(), NOW))
    assert c == Close(
        ContactState.DNC_LISTED,
        Refusal(
            Rule.DNC, "every number the strategy can dial is on a DNC list (phone1, phone2, phone3)"
        ),
    )


def test_dnc_listed_only_counts_phones_the_strategy_can_dial() -> None:
    # phone3 is clean but the strategy never dials it
    s = plan([{"phone": 1}, {"phone": 2}])
    c = close(next_action(contact(dnc=[1, 2]), [], policy(s), NOW))
    assert c.state is ContactState.DNC_LISTED
    assert c.refusal.detail.endswith("(phone1, phone2)")


def test_some_phones_dnc_and_the_rest_used_up_is_exhausted_not_dnc() -> None:
    s = plan([{"phone": 1}, {"phone": 2}])
    used = [att(NOW - timedelta(hours=2), 1, NA, 0)]
    c = close(next_action(contact(dnc=[2]), used, policy(s), NOW))
    assert c.state is ContactState.RETRIES_COMPLETED
    assert c.refusal == Refusal(
        Rule.STRATEGY_EXHAUSTED, "every step of strategy 'test' is used up or skipped"
    )


def test_failed_number_is_skipped_for_the_rest_of_the_plan() -> None:
    failed = [att(NOW - timedelta(hours=2), 1, Outcome.FAILED, 0)]
    d = dial(next_action(contact(), failed, policy(), NOW))
    assert (d.step, d.phone_index) == (1, 2)  # step 0 had a try left
    # and the last step, on phone1 again, is skipped too
    s = plan([{"phone": 1}, {"phone": 2}, {"phone": 1, "tries": 3}])
    attempts = [*failed, att(NOW - timedelta(hours=1), 2, NA, 1)]
    assert close(next_action(contact(), attempts, policy(s), NOW)).refusal.rule is (
        Rule.STRATEGY_EXHAUSTED
    )


def test_skip_phone_on_follows_the_strategy() -> None:
    rejected = [att(NOW - timedelta(hours=2), 1, Outcome.REJECTED, 0)]
    default = dial(next_action(contact(), rejected, policy(), NOW))
    assert default.phone_index == 1
    strict = plan([{"phone": 1, "tries": 2}, {"phone": 2}], skip_phone_on=["failed", "rejected"])
    assert dial(next_action(contact(), rejected, policy(strict), NOW)).phone_index == 2
    lenient = plan([{"phone": 1, "tries": 2}, {"phone": 2}], skip_phone_on=[])
    failed = [att(NOW - timedelta(hours=2), 1, Outcome.FAILED, 0)]
    assert dial(next_action(contact(), failed, policy(lenient), NOW)).phone_index == 1


def test_attempts_with_an_unknown_step_do_not_use_up_steps() -> None:
    attempts = [
        att(NOW - timedelta(hours=2), 1, NA, 42),
        att(NOW - timedelta(hours=3), 1, NA, None),
    ]
    assert dial(next_action(contact(), attempts, policy(), NOW)).step == 0


# --- channels and the SMS switch -----------------------------------------------------------------

VOICE_SMS = CampaignChannel.VOICE_SMS


def test_switch_busy_to_sms_once_per_phone_then_plan_resumes() -> None:
    p, c = policy("voice-then-sms", channel=VOICE_SMS), contact()
    t = NOW - timedelta(minutes=1)
    attempts = [att(t, 1, BUSY, 0)]

    switch = dial(next_action(c, attempts, p, NOW))
    assert switch == Dial(step=None, phone_index=1, number=P1, channel=SMS, earliest=NOW)

    attempts.append(att(NOW, 1, Outcome.SMS_SENT, None, SMS))
    resumed = dial(next_action(c, attempts, p, NOW))
    assert (resumed.step, resumed.phone_index, resumed.channel) == (0, 1, VOICE)
    assert resumed.earliest == NOW + timedelta(days=1)  # the SMS_SENT retry delay

    attempts.append(att(resumed.earliest, 1, BUSY, 0))  # busy again: no second SMS to phone1
    after = resumed.earliest + timedelta(minutes=1)
    d = dial(next_action(c, attempts, p, after))
    assert (d.step, d.phone_index, d.channel) == (1, 2, VOICE)

    attempts.append(att(after, 2, BUSY, 1))  # busy on phone2: its own SMS
    d = dial(next_action(c, attempts, p, after))
    assert (d.step, d.phone_index, d.number, d.channel) == (None, 2, P2, SMS)


def test_sms_switch_waits_its_delay() -> None:
    s = plan(
        [{"phone": 1, "tries": 3}], switch_to_sms_on=["busy", "no_answer"], sms_switch_delay="10m"
    )
    t = NOW - timedelta(minutes=2)
    d = dial(next_action(contact(), [att(t, 1, NA, 0)], policy(s, channel=VOICE_SMS), NOW))
    assert (d.step, d.channel, d.earliest) == (None, SMS, t + timedelta(minutes=10))


def test_sms_switch_only_follows_the_latest_finished_attempt() -> None:
    p = policy("voice-then-sms", channel=VOICE_SMS)
    attempts = [att(NOW - timedelta(hours=3), 1, BUSY, 0), att(NOW - timedelta(hours=2), 1, NA, 0)]
    d = dial(next_action(contact(), attempts, p, NOW))
    assert (d.step, d.channel) == (1, VOICE)


def test_sms_switch_skips_a_dnc_phone() -> None:
    p = policy("voice-then-sms", channel=VOICE_SMS)
    attempts = [att(NOW - timedelta(hours=3), 1, BUSY, 0)]
    d = dial(next_action(contact(dnc=[1]), attempts, p, NOW))
    assert (d.step, d.phone_index, d.channel) == (1, 2, VOICE)


def test_sms_switch_obeys_calling_hours() -> None:
    p = policy("voice-then-sms", channel=VOICE_SMS)
    late = utc(2026, 6, 11, 0, 59)  # 20:59 EDT
    d = dial(next_action(contact(), [att(late, 1, BUSY, 0)], p, late + timedelta(minutes=2)))
    assert (d.channel, d.earliest) == (SMS, utc(2026, 6, 11, 12))
    assert rules(d) == [Rule.CALLING_HOURS]


def test_sms_not_allowed_on_voice_campaign_skips_sms_steps_and_the_switch() -> None:
    p, c = policy("voice-then-sms", channel=CampaignChannel.VOICE), contact()
    busy = [att(NOW - timedelta(hours=1), 1, BUSY, 0)]
    d = dial(next_action(c, busy, p, NOW))
    assert (d.step, d.channel) == (0, VOICE)  # no switch to SMS
    voice_done = [
        att(NOW - timedelta(hours=k), phone, NA, step)
        for k, (phone, step) in enumerate([(1, 0), (1, 0), (2, 1), (2, 1)], start=1)
    ]
    c_ = close(next_action(c, voice_done, p, NOW))
    assert (c_.state, c_.refusal.rule) == (ContactState.RETRIES_COMPLETED, Rule.STRATEGY_EXHAUSTED)


def test_voice_then_sms_ends_with_its_sms_step() -> None:
    p = policy("voice-then-sms", channel=VOICE_SMS)
    voice_done = [
        att(NOW - timedelta(hours=5 - k), phone, NA, step)
        for k, (phone, step) in enumerate([(1, 0), (1, 0), (2, 1), (2, 1)])
    ]
    d = dial(next_action(contact(), voice_done, p, NOW))
    assert (d.step, d.phone_index, d.channel) == (2, 1, SMS)


@pytest.mark.parametrize("sms_outcome", [Outcome.SMS_SENT, Outcome.SMS_DELIVERED])
def test_ending_on_an_sms_closes_as_sms_sent(sms_outcome: Outcome) -> None:
    p = policy("voice-then-sms", channel=VOICE_SMS)
    attempts = [
        att(NOW - timedelta(hours=5), 1, NA, 0),
        att(NOW - timedelta(hours=4), 1, NA, 0),
        att(NOW - timedelta(hours=3), 2, NA, 1),
        att(NOW - timedelta(hours=2), 2, NA, 1),
        att(NOW - timedelta(hours=1), 1, sms_outcome, 2, SMS),
    ]
    c = close(next_action(contact(), attempts, p, NOW))
    assert c.state is ContactState.SMS_SENT
    assert c.refusal.rule is Rule.SMS_AWAITING_REPLY
    assert "phone1" in c.refusal.detail


def test_sms_only_campaign_texts_phone1_then_waits_for_a_reply() -> None:
    p, c = policy("sms-only", channel=CampaignChannel.SMS), contact()
    assert next_action(c, [], p, NOW) == Dial(
        step=0, phone_index=1, number=P1, channel=SMS, earliest=NOW
    )
    sent = [att(NOW - timedelta(minutes=5), 1, Outcome.SMS_SENT, 0, SMS)]
    assert close(next_action(c, sent, p, NOW)).state is ContactState.SMS_SENT


def test_failed_sms_ending_the_plan_is_exhausted() -> None:
    p = policy("sms-only", channel=CampaignChannel.SMS)
    failed = [att(NOW - timedelta(minutes=5), 1, Outcome.SMS_FAILED, 0, SMS)]
    c = close(next_action(contact(), failed, p, NOW))
    assert (c.state, c.refusal.rule) == (ContactState.RETRIES_COMPLETED, Rule.STRATEGY_EXHAUSTED)


def test_voice_steps_are_skipped_on_an_sms_campaign() -> None:
    c = close(next_action(contact(), [], policy("default", channel=CampaignChannel.SMS), NOW))
    assert c.refusal.rule is Rule.STRATEGY_EXHAUSTED
    p = policy("voice-then-sms", channel=CampaignChannel.SMS)
    assert dial(next_action(contact(), [], p, NOW)).step == 2


def test_sms_only_strategy_on_a_voice_campaign_is_exhausted_at_once() -> None:
    c = close(next_action(contact(), [], policy("sms-only"), NOW))
    assert (c.state, c.refusal.rule) == (ContactState.RETRIES_COMPLETED, Rule.STRATEGY_EXHAUSTED)


# --- closing rules -------------------------------------------------------------------------------


def test_human_answer_closes_as_connected() -> None:
    attempts = [att(NOW - timedelta(hours=2), 2, Outcome.HUMAN, 1)]
    c = close(next_action(contact(), attempts, policy(), NOW))
    assert c.state is ContactState.CONNECTED
    assert c.refusal.rule is Rule.CONNECTED
    assert "phone2" in c.refusal.detail


def test_human_answer_closes_as_connected_even_when_later_attempts_failed() -> None:
    attempts = [
        att(NOW - timedelta(hours=3), 1, Outcome.HUMAN, 0),
        att(NOW - timedelta(hours=1), 1, NA, 0),
    ]
    assert close(next_action(contact(), attempts, policy(), NOW)).state is ContactState.CONNECTED


def test_max_attempts_counts_voice_and_sms() -> None:
    s = plan([{"phone": 1, "tries": 9}], max_attempts=3)
    attempts = [
        att(NOW - timedelta(hours=3), 1, NA, 0),
        att(NOW - timedelta(hours=2), 1, Outcome.SMS_SENT, None, SMS),
        att(NOW - timedelta(hours=1), 1, NA, 0),
    ]
    assert next_action(contact(), attempts, policy(s, channel=VOICE_SMS), NOW) == Close(
        ContactState.RETRIES_COMPLETED, Refusal(Rule.MAX_ATTEMPTS, "3 of 3 attempts used")
    )
    assert isinstance(next_action(contact(), attempts[:2], policy(s), NOW), Dial)


def test_calling_hours_that_never_open_close_the_contact() -> None:
    p = policy(calling_hours=CallingHours.from_dict({"default": None}))
    c = close(next_action(contact(), [], p, NOW))
    assert c.state is ContactState.RETRIES_COMPLETED
    assert c.refusal.rule is Rule.CALLING_HOURS
    assert c.refusal.until is None


# --- in-progress attempts and ordering -----------------------------------------------------------


def test_in_progress_attempt_does_not_use_a_try_nor_set_the_retry_time() -> None:
    finished_at = NOW - timedelta(minutes=30)
    attempts = [
        att(finished_at, 1, NA, 0),
        att(NOW - timedelta(minutes=1), 1, None, 0),  # still ringing
    ]
    d = dial(next_action(contact(), attempts, policy(), NOW))
    assert d.step == 0  # one finished try of two
    assert d.earliest == finished_at + timedelta(hours=1)


def test_in_progress_attempt_counts_toward_max_attempts() -> None:
    s = plan([{"phone": 1, "tries": 5}], max_attempts=2)
    attempts = [att(NOW - timedelta(hours=2), 1, NA, 0), att(NOW, 1, None, 0)]
    assert close(next_action(contact(), attempts, policy(s), NOW)).refusal.rule is (
        Rule.MAX_ATTEMPTS
    )


def test_in_progress_attempt_counts_toward_the_daily_limit() -> None:
    s = plan([{"phone": 1, "tries": 5}], max_attempts_per_day=2)
    attempts = [att(NOW - timedelta(hours=2), 1, NA, 0), att(NOW, 1, None, 0)]
    d = dial(next_action(contact(), attempts, policy(s), NOW))
    assert rules(d) == [Rule.MAX_ATTEMPTS_PER_DAY, Rule.CALLING_HOURS]


def test_in_progress_sms_blocks_a_second_switch_to_that_phone() -> None:
    p = policy("voice-then-sms", channel=VOICE_SMS)
    attempts = [
        att(NOW - timedelta(minutes=10), 1, BUSY, 0),
        att(NOW - timedelta(minutes=9), 1, None, None, SMS),
    ]
    d = dial(next_action(contact(), attempts, p, NOW))
    assert (d.step, d.channel) == (0, VOICE)


def test_attempts_out_of_order_give_the_same_decision() -> None:
    attempts = [
        att(NOW - timedelta(hours=6), 1, NA, 0),
        att(NOW - timedelta(hours=5), 1, NA, 0),
        att(NOW - timedelta(hours=4), 2, NA, 1),
        att(NOW - timedelta(minutes=2), 2, BUSY, 1),
    ]
    p = policy(plan([{"phone": 1, "tries": 2}, {"phone": 2, "tries": 2}, {"phone": 3}]))
    expected = dial(next_action(contact(), attempts, p, NOW))
    assert (expected.step, expected.phone_index) == (2, 3)
    assert expected.earliest == NOW + timedelta(minutes=3)  # from the busy, the latest attempt
    shuffled = attempts[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert next_action(contact(), shuffled, p, NOW) == expected
    assert next_action(contact(), attempts[::-1], p, NOW) == expected


# --- the earliest time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "delay"),
    [
        (BUSY, timedelta(minutes=5)),
        (NA, timedelta(hours=1)),
        (Outcome.MACHINE, timedelta(hours=2)),
        (Outcome.CONGESTION, timedelta(minutes=10)),
        (Outcome.ABANDONED, timedelta(hours=1)),
    ],
)
def test_retry_delay_follows_the_outcome(outcome: Outcome, delay: timedelta) -> None:
    d = dial(next_action(contact(), [att(NOW, 1, outcome, 0)], policy(), NOW))
    assert d.earliest == NOW + delay


def test_retry_delay_comes_from_the_strategy() -> None:
    s = plan([{"phone": 1, "tries": 3}], retry_delays={"machine": "3h", "busy": 30})
    machine = dial(next_action(contact(), [att(NOW, 1, Outcome.MACHINE, 0)], policy(s), NOW))
    assert machine.earliest == NOW + timedelta(hours=3)
    busy = dial(next_action(contact(), [att(NOW, 1, BUSY, 0)], policy(s), NOW))
    assert busy.earliest == NOW + timedelta(seconds=30)
    no_answer = dial(next_action(contact(), [att(NOW, 1, NA, 0)], policy(s), NOW))
    assert no_answer.earliest == NOW + timedelta(hours=1)  # not overridden: the default


def test_earliest_is_never_before_now() -> None:
    long_ago = [att(NOW - timedelta(days=3), 1, NA, 0)]
    assert dial(next_action(contact(), long_ago, policy(), NOW)).earliest == NOW


def test_earliest_is_in_utc_whatever_zone_now_is_given_in() -> None:
    local_now = NOW.astimezone(ZoneInfo(NY))
    d = dial(next_action(contact(), [], policy(), local_now))
    assert d.earliest == NOW
    assert d.earliest.tzinfo is UTC


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="now must be an aware datetime"):
        next_action(contact(), [], policy(), datetime(2026, 6, 10, 10))


def test_calling_hours_push_to_the_window_opening() -> None:
    early = utc(2026, 6, 10, 10)  # 06:00 EDT
    d = dial(next_action(contact(), [], policy(), early))
    assert d.earliest == utc(2026, 6, 10, 12)
    assert d.delayed_by == (
        Refusal(Rule.CALLING_HOURS, f"Wed 06:00 {NY} is outside 08:00-21:00", d.earliest),
    )


def test_retry_after_closing_time_moves_to_the_next_morning() -> None:
    evening = utc(2026, 6, 11, 0, 30)  # 20:30 EDT; a no-answer retries in 1 h, after 21:00
    d = dial(next_action(contact(), [att(evening, 1, NA, 0)], policy(), evening))
    assert d.earliest == utc(2026, 6, 11, 12)
    assert rules(d) == [Rule.CALLING_HOURS]


def test_calling_hours_use_the_contacts_time_zone() -> None:
    # 09:00 in New York is 06:00 in Los Angeles: the LA contact waits until 08:00 PDT
    nine_ny = utc(2026, 6, 10, 13)
    assert dial(next_action(contact(tz=NY), [], policy(), nine_ny)).earliest == nine_ny
    assert dial(next_action(contact(tz=LA), [], policy(), nine_ny)).earliest == utc(2026, 6, 10, 15)


def test_campaign_calling_hours_and_holiday_push() -> None:
    p = policy(
        calling_hours=CallingHours.from_dict({"default": "09:00-17:00", "sat": None, "sun": None}),
        holidays=frozenset({date(2026, 6, 12)}),  # Friday
    )
    thursday_evening = utc(2026, 6, 11, 21, 30)  # 17:30 EDT
    d = dial(next_action(contact(), [], p, thursday_evening))
    assert d.earliest == utc(2026, 6, 15, 13)  # Monday 09:00 EDT
    friday = utc(2026, 6, 12, 14)
    d = dial(next_action(contact(), [], p, friday))
    assert d.earliest == utc(2026, 6, 15, 13)
    assert rules(d) == [Rule.HOLIDAY]


def test_daily_max_pushes_to_the_next_local_days_window_opening() -> None:
    # three attempts on Wed 10 June (New York); the default strategy allows 3 a day
    attempts = [
        att(utc(2026, 6, 10, 12), 1, NA, 0),
        att(utc(2026, 6, 10, 13, 30), 1, NA, 0),
        att(utc(2026, 6, 10, 15), 2, NA, 1),
    ]
    now = utc(2026, 6, 10, 15, 5)
    d = dial(next_action(contact(), attempts, policy(), now))
    assert (d.step, d.phone_index) == (1, 2)
    assert d.earliest == utc(2026, 6, 11, 12)  # Thu 08:00 EDT
    assert rules(d) == [Rule.MAX_ATTEMPTS_PER_DAY, Rule.CALLING_HOURS]
    daily = d.delayed_by[0]
    assert daily.until == utc(2026, 6, 11, 4)  # local midnight
    assert daily.detail == f"3 of 3 attempts used on 2026-06-10 ({NY})"


def test_daily_max_counts_the_contacts_local_day() -> None:
    # 01:00-03:00 UTC on 11 June is still the evening of 10 June in Los Angeles
    attempts = [
        att(utc(2026, 6, 10, 16), 1, NA, 0),
        att(utc(2026, 6, 11, 1), 1, NA, 0),
        att(utc(2026, 6, 11, 2), 2, NA, 1),
    ]
    now = utc(2026, 6, 11, 3, 30)  # 20:30 PDT: inside the window, but 3 attempts today
    d = dial(next_action(contact(tz=LA), attempts, policy(), now))
    assert d.earliest == utc(2026, 6, 11, 15)  # Thu 08:00 PDT
    assert rules(d) == [Rule.MAX_ATTEMPTS_PER_DAY, Rule.CALLING_HOURS]


# --- the UK 72-hour rule -------------------------------------------------------------------------

ABANDONED_AT = utc(2026, 6, 8, 10)  # Mon 11:00 BST


def _uk_policy(mode: DialMode, uk_rules: bool = True) -> CampaignPolicy:
    return policy("default", dial_mode=mode, uk_rules=uk_rules)


def test_uk_rule_holds_a_repeat_call_after_an_abandoned_call_for_72_hours() -> None:
    attempts = [att(ABANDONED_AT, 1, Outcome.ABANDONED, 0)]
    d = dial(next_action(contact(tz=LONDON), attempts, _uk_policy(DialMode.PREDICTIVE), NOW))
    assert (d.step, d.phone_index) == (0, 1)
    assert d.earliest == ABANDONED_AT + timedelta(hours=72)
    assert rules(d) == [Rule.UK_ABANDON_72H]


@pytest.mark.parametrize("mode", [DialMode.POWER, DialMode.AGENTLESS])
def test_uk_rule_applies_in_every_mode_without_a_guaranteed_agent(mode: DialMode) -> None:
    attempts = [att(ABANDONED_AT, 1, Outcome.ABANDONED, 0)]
    d = dial(next_action(contact(tz=LONDON), attempts, _uk_policy(mode), NOW))
    assert d.earliest == ABANDONED_AT + timedelta(hours=72)


@pytest.mark.parametrize("mode", [DialMode.PROGRESSIVE, DialMode.PREVIEW])
def test_uk_rule_is_lifted_when_an_agent_is_guaranteed(mode: DialMode) -> None:
    attempts = [att(ABANDONED_AT, 1, Outcome.ABANDONED, 0)]
    d = dial(next_action(contact(tz=LONDON), attempts, _uk_policy(mode), ABANDONED_AT))
    assert d.earliest == ABANDONED_AT + timedelta(hours=1)
    assert d.delayed_by == ()


def test_uk_rule_is_off_without_uk_rules() -> None:
    attempts = [att(ABANDONED_AT, 1, Outcome.ABANDONED, 0)]
    p = _uk_policy(DialMode.PREDICTIVE, uk_rules=False)
    assert dial(next_action(contact(tz=LONDON), attempts, p, ABANDONED_AT)).earliest == (
        ABANDONED_AT + timedelta(hours=1)
    )


def test_uk_rule_only_holds_the_abandoned_phone() -> None:
    s = plan([{"phone": 1}, {"phone": 2}, {"phone": 1}])
    attempts = [att(ABANDONED_AT, 1, Outcome.ABANDONED, 0)]
    p = policy(s, dial_mode=DialMode.PREDICTIVE, uk_rules=True)
    d = dial(next_action(contact(tz=LONDON), attempts, p, ABANDONED_AT))
    assert (d.phone_index, d.earliest, d.delayed_by) == (2, ABANDONED_AT + timedelta(hours=1), ())
    attempts.append(att(ABANDONED_AT + timedelta(hours=1), 2, NA, 1))
    d = dial(next_action(contact(tz=LONDON), attempts, p, ABANDONED_AT + timedelta(hours=1)))
    assert (d.step, d.phone_index, d.earliest) == (2, 1, ABANDONED_AT + timedelta(hours=72))


def test_uk_rule_end_outside_calling_hours_moves_to_the_next_window() -> None:
    late = utc(2026, 6, 8, 19, 30)  # 20:30 BST: 72 h later is Thu 20:30 BST, then 21:00 closes
    attempts = [att(late, 1, Outcome.ABANDONED, 0)]
    p = policy(
        "default",
        dial_mode=DialMode.PREDICTIVE,
        uk_rules=True,
        calling_hours=CallingHours.from_dict({"default": "09:00-20:00"}),
    )
    d = dial(next_action(contact(tz=LONDON), attempts, p, late))
    assert d.earliest == utc(2026, 6, 12, 8)  # Fri 09:00 BST
    assert rules(d) == [Rule.UK_ABANDON_72H, Rule.CALLING_HOURS]
