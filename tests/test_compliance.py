"""The compliance filter: calling hours across time zones and DST, DNC, attempt limits, UK rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from strategies.compliance import (
    DEFAULT_WINDOW,
    UK_ABANDON_QUIET,
    CallingHours,
    ComplianceConfigError,
    DncMatcher,
    DncRule,
    Refusal,
    Rule,
    check_calling_hours,
    check_daily_attempts,
    check_max_attempts,
    check_uk_abandon,
    next_allowed_time,
    parse_holidays,
    zone,
    zones_open,
)

NY, LA, LONDON = "America/New_York", "America/Los_Angeles", "Europe/London"
NO_HOLIDAYS: frozenset[date] = frozenset()
DEFAULT_HOURS = CallingHours()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def local(tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz))


def hours(**days: Any) -> CallingHours:
    return CallingHours.from_dict(days)


def config_error(data: Any) -> str:
    with pytest.raises(ComplianceConfigError) as err:
        CallingHours.from_dict(data)
    return str(err.value)


# --- CallingHours parsing ------------------------------------------------------------------------


def test_no_calling_hours_means_eight_to_nine_every_day() -> None:
    assert CallingHours.from_dict(None) == CallingHours()
    assert CallingHours.from_dict({}).windows == (DEFAULT_WINDOW,) * 7
    assert CallingHours().windows[0] == (time(8), time(21))


def test_weekday_override_replaces_the_default_on_that_day_only() -> None:
    h = hours(default="09:00-20:00", sat="10:00-18:00")
    assert h.windows[:5] == ((time(9), time(20)),) * 5
    assert h.windows[5] == (time(10), time(18))
    assert h.windows[6] == (time(9), time(20))


@pytest.mark.parametrize("closed", [None, "", False])
def test_null_day_means_no_calls_that_day(closed: Any) -> None:
    h = hours(sun=closed)
    assert h.windows[6] is None
    assert h.windows[0] == DEFAULT_WINDOW


def test_null_default_closes_every_day_not_given() -> None:
    assert hours(default=None, wed="10:00-12:00").windows == (
        None, None, (time(10), time(12)), None, None, None, None,
    )


def test_to_dict_round_trips() -> None:
    h = hours(default="09:00-20:00", sat="10:30-18:15", sun=None)
    assert h.to_dict()["sat"] == "10:30-18:15"
    assert h.to_dict()["sun"] is None
    assert CallingHours.from_dict(h.to_dict()) == h


@pytest.mark.parametrize(
    "value", ["9-17", "10:00", "10:00-18:60", "ten-six", 9, ["09:00", "17:00"]]
)
def test_bad_window_names_the_key_and_value(value: Any) -> None:
    msg = config_error({"sat": value})
    assert msg.startswith(f"calling_hours.sat: {value!r} is not a window like '08:00-21:00'")


@pytest.mark.parametrize("value", ["18:00-10:00", "10:00-10:00"])
def test_window_that_ends_before_it_starts_names_the_key(value: str) -> None:
    assert config_error({"default": value}) == (
        f"calling_hours.default: window {value!r} must start before it ends"
    )


def test_unknown_day_key_is_refused_naming_it() -> None:
    msg = config_error({"saturday": "10:00-18:00"})
    assert msg.startswith("calling_hours: unknown key 'saturday'")


def test_calling_hours_that_are_not_a_table_are_refused() -> None:
    assert config_error("08:00-21:00") == "calling_hours: expected a table of weekday windows"


def test_error_location_can_be_set_by_the_caller() -> None:
    with pytest.raises(ComplianceConfigError, match=r"^campaigns\.yaml: hours\.mon: "):
        CallingHours.from_dict({"mon": "x"}, where="campaigns.yaml: hours")


def test_parse_holidays_reads_iso_dates_and_names_a_bad_one() -> None:
    parsed = parse_holidays(["2026-12-25", date(2026, 1, 1)])
    assert parsed == {date(2026, 12, 25), date(2026, 1, 1)}
    with pytest.raises(ComplianceConfigError) as err:
        parse_holidays(["2026-12-25", "25/12/2026"])
    assert str(err.value) == "holidays[1]: '25/12/2026' is not an ISO date"


def test_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ComplianceConfigError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")


# --- calling hours -------------------------------------------------------------------------------

# 2026-06-10 is a Wednesday; New York is UTC-4 and Los Angeles UTC-7 in June.


def test_inside_the_window_is_allowed() -> None:
    assert check_calling_hours(NY, utc(2026, 6, 10, 14), DEFAULT_HOURS, NO_HOLIDAYS) is None


def test_window_opening_is_inclusive_and_closing_exclusive() -> None:
    assert check_calling_hours(NY, utc(2026, 6, 10, 12), DEFAULT_HOURS, NO_HOLIDAYS) is None
    r = check_calling_hours(NY, utc(2026, 6, 11, 1), DEFAULT_HOURS, NO_HOLIDAYS)  # 21:00 local
    assert r is not None and r.until == utc(2026, 6, 11, 12)


def test_before_opening_is_refused_until_the_opening_the_same_day() -> None:
    r = check_calling_hours(NY, utc(2026, 6, 10, 11, 30), DEFAULT_HOURS, NO_HOLIDAYS)
    assert r == Refusal(
        Rule.CALLING_HOURS,
        f"Wed 07:30 {NY} is outside 08:00-21:00",
        local(NY, 2026, 6, 10, 8),
    )


def test_after_closing_is_refused_until_the_next_days_opening() -> None:
    r = check_calling_hours(NY, utc(2026, 6, 11, 2), DEFAULT_HOURS, NO_HOLIDAYS)  # Wed 22:00
    assert r is not None and r.until == utc(2026, 6, 11, 12)


def test_closed_weekday_is_refused_until_the_next_open_day() -> None:
    h = hours(sat=None, sun=None)
    r = check_calling_hours(NY, utc(2026, 6, 13, 15), h, NO_HOLIDAYS)  # Sat 11:00
    assert r is not None
    assert r.rule is Rule.CALLING_HOURS
    assert r.detail == f"Sat 11:00 {NY} is outside calling days"
    assert r.until == utc(2026, 6, 15, 12)  # Mon 08:00 EDT


def test_contact_in_another_zone_than_the_campaign_uses_its_own_local_time() -> None:
    # 09:00 in New York is 06:00 in Los Angeles: a New York campaign may not call LA yet.
    nine_in_new_york = local(NY, 2026, 6, 10, 9)
    assert check_calling_hours(NY, nine_in_new_york, DEFAULT_HOURS, NO_HOLIDAYS) is None
    r = check_calling_hours(LA, nine_in_new_york, DEFAULT_HOURS, NO_HOLIDAYS)
    assert r is not None
    assert r.detail == f"Wed 06:00 {LA} is outside 08:00-21:00"
    assert r.until == local(LA, 2026, 6, 10, 8) == utc(2026, 6, 10, 15)


def test_holiday_is_refused_with_the_holiday_rule_until_the_next_day() -> None:
    christmas = frozenset({date(2026, 12, 25)})
    r = check_calling_hours(LA, utc(2026, 12, 25, 18), DEFAULT_HOURS, christmas)  # Fri 10:00
    assert r == Refusal(Rule.HOLIDAY, "2026-12-25 is a holiday", utc(2026, 12, 26, 16))


def test_holiday_is_a_local_date_of_the_contact() -> None:
    # 2026-12-25 03:00 UTC is still 24 December 19:00 in Los Angeles: not the holiday yet.
    christmas = frozenset({date(2026, 12, 25)})
    assert check_calling_hours(LA, utc(2026, 12, 25, 3), DEFAULT_HOURS, christmas) is None


def test_refusal_skips_consecutive_holidays_and_closed_days() -> None:
    h = hours(sun=None)
    holidays = parse_holidays(["2026-12-25", "2026-12-26"])  # Fri, Sat; Sun closed
    r = check_calling_hours(LONDON, utc(2026, 12, 24, 22), h, holidays)
    assert r is not None and r.until == utc(2026, 12, 28, 8)


def test_every_day_closed_is_refused_with_no_until() -> None:
    r = check_calling_hours(NY, utc(2026, 6, 10, 14), hours(default=None), NO_HOLIDAYS)
    assert r is not None and r.until is None
    assert next_allowed_time(NY, utc(2026, 6, 10, 14), hours(default=None), NO_HOLIDAYS) is None


def test_next_allowed_time_returns_the_time_itself_when_inside() -> None:
    t = utc(2026, 6, 10, 14, 7, 3)
    assert next_allowed_time(NY, t, DEFAULT_HOURS, NO_HOLIDAYS) == t


def test_zones_open_lists_the_zones_inside_their_window() -> None:
    t = utc(2026, 6, 10, 13)  # NY 09:00, LA 06:00, London 14:00, Tokyo 22:00
    assert zones_open([NY, LA, LONDON, "Asia/Tokyo"], t, DEFAULT_HOURS, NO_HOLIDAYS) == {
        NY,
        LONDON,
    }


# --- calling hours across DST changes ------------------------------------------------------------


def test_us_spring_forward_day_opens_at_eight_daylight_time() -> None:
    # Sun 2026-03-08: at 02:00 EST New York jumps to 03:00 EDT; 08:00 EDT is 12:00 UTC.
    r = check_calling_hours(NY, utc(2026, 3, 8, 6), DEFAULT_HOURS, NO_HOLIDAYS)  # 01:00 EST
    assert r is not None and r.until == utc(2026, 3, 8, 12)
    assert check_calling_hours(NY, utc(2026, 3, 8, 12), DEFAULT_HOURS, NO_HOLIDAYS) is None
    assert check_calling_hours(NY, utc(2026, 3, 8, 11, 59), DEFAULT_HOURS, NO_HOLIDAYS) is not None


def test_us_evening_before_spring_forward_reopens_eleven_hours_later() -> None:
    r = check_calling_hours(NY, utc(2026, 3, 8, 2), DEFAULT_HOURS, NO_HOLIDAYS)  # Sat 21:00 EST
    assert r is not None and r.until == utc(2026, 3, 8, 12)
    assert r.until - utc(2026, 3, 8, 2) == timedelta(hours=10)


def test_us_fall_back_day_opens_at_eight_standard_time() -> None:
    # Sun 2026-11-01: at 02:00 EDT New York falls back to 01:00 EST; 08:00 EST is 13:00 UTC.
    r = check_calling_hours(NY, utc(2026, 11, 1, 12, 30), DEFAULT_HOURS, NO_HOLIDAYS)
    assert r is not None
    assert r.detail == f"Sun 07:30 {NY} is outside 08:00-21:00"
    assert r.until == utc(2026, 11, 1, 13)
    assert check_calling_hours(NY, utc(2026, 11, 1, 13), DEFAULT_HOURS, NO_HOLIDAYS) is None
    # and it closes at 21:00 EST = 02:00 UTC the next day
    assert check_calling_hours(NY, utc(2026, 11, 2, 1, 59), DEFAULT_HOURS, NO_HOLIDAYS) is None
    assert check_calling_hours(NY, utc(2026, 11, 2, 2), DEFAULT_HOURS, NO_HOLIDAYS) is not None


def test_london_spring_forward_day_opens_at_eight_summer_time() -> None:
    # Sun 2026-03-29: at 01:00 GMT London jumps to 02:00 BST; 08:00 BST is 07:00 UTC.
    r = check_calling_hours(LONDON, utc(2026, 3, 28, 21), DEFAULT_HOURS, NO_HOLIDAYS)
    assert r is not None and r.until == utc(2026, 3, 29, 7)
    assert check_calling_hours(LONDON, utc(2026, 3, 29, 7), DEFAULT_HOURS, NO_HOLIDAYS) is None


def test_london_fall_back_day_opens_at_eight_gmt() -> None:
    # Sun 2026-10-25: at 02:00 BST London falls back to 01:00 GMT; 08:00 GMT is 08:00 UTC.
    r = check_calling_hours(LONDON, utc(2026, 10, 24, 20, 30), DEFAULT_HOURS, NO_HOLIDAYS)
    assert r is not None and r.until == utc(2026, 10, 25, 8)  # Sat 21:30 BST
    assert check_calling_hours(LONDON, utc(2026, 10, 25, 7, 59), DEFAULT_HOURS, NO_HOLIDAYS)
    assert check_calling_hours(LONDON, utc(2026, 10, 25, 8), DEFAULT_HOURS, NO_HOLIDAYS) is None


def test_window_opening_inside_the_spring_gap_opens_when_the_gap_ends() -> None:
    # 02:30 does not exist in New York on 2026-03-08; the clocks read 03:00 EDT at 07:00 UTC,
    # which is already past 02:30, so the window opens then (not at 03:30 EDT).
    h = hours(default="02:30-21:00")
    r = check_calling_hours(NY, utc(2026, 3, 8, 6), h, NO_HOLIDAYS)  # 01:00 EST
    assert r is not None and r.until == utc(2026, 3, 8, 7)
    assert r.until == local(NY, 2026, 3, 8, 3)
    assert check_calling_hours(NY, utc(2026, 3, 8, 7), h, NO_HOLIDAYS) is None
    assert check_calling_hours(NY, utc(2026, 3, 8, 6, 59, 59), h, NO_HOLIDAYS) is not None


def test_time_after_a_gap_opening_is_its_own_next_allowed_time() -> None:
    h = hours(default="02:30-21:00")
    t = utc(2026, 3, 8, 7, 10)  # 03:10 EDT
    assert next_allowed_time(NY, t, h, NO_HOLIDAYS) == t


def test_london_window_opening_inside_the_spring_gap() -> None:
    h = hours(default="01:30-21:00")
    r = check_calling_hours(LONDON, utc(2026, 3, 29, 0, 15), h, NO_HOLIDAYS)
    assert r is not None and r.until == utc(2026, 3, 29, 1)  # 02:00 BST


def test_window_opening_in_the_repeated_autumn_hour_opens_at_its_first_occurrence() -> None:
    h = hours(default="01:30-21:00")
    r = check_calling_hours(NY, utc(2026, 11, 1, 4), h, NO_HOLIDAYS)  # 00:00 EDT
    # (an ambiguous local time never compares equal across zones, hence the conversion)
    assert r is not None and r.until is not None
    assert r.until.astimezone(UTC) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


# --- DNC -----------------------------------------------------------------------------------------

NOW = utc(2026, 6, 10, 12)


def test_dnc_exact_entry_matches_only_that_number() -> None:
    m = DncMatcher([DncRule("+12125550100")])
    assert m.match("+12125550100", NOW) == DncRule("+12125550100")
    assert m.match("+12125550101", NOW) is None
    assert m.match("+1212555010", NOW) is None


def test_dnc_prefix_entry_matches_every_number_under_it() -> None:
    m = DncMatcher([DncRule("+1900", is_prefix=True)])
    assert m.match("+19005550100", NOW) is not None
    assert m.match("+1900", NOW) is not None
    assert m.match("+1901", NOW) is None
    assert m.match("+190", NOW) is None  # shorter than the prefix


def test_dnc_longest_prefix_wins() -> None:
    short = DncRule("+44", is_prefix=True, scope="global")
    long = DncRule("+447700", is_prefix=True, scope="campaign")
    m = DncMatcher([short, long])
    assert m.match("+447700900123", NOW) == long
    assert m.match("+442079460000", NOW) == short


def test_dnc_exact_entry_wins_over_prefix() -> None:
    exact = DncRule("+447700900123", source="sms-stop")
    m = DncMatcher([DncRule("+447700", is_prefix=True), exact])
    assert m.match("+447700900123", NOW) == exact


def test_expired_dnc_entry_never_matches() -> None:
    m = DncMatcher([DncRule("+12125550100", expires_at=NOW)])
    assert m.match("+12125550100", NOW) is None
    assert m.match("+12125550100", NOW - timedelta(seconds=1)) is not None


def test_expired_exact_entry_falls_back_to_an_active_prefix() -> None:
    prefix = DncRule("+1212", is_prefix=True)
    m = DncMatcher([DncRule("+12125550100", expires_at=NOW - timedelta(days=1)), prefix])
    assert m.match("+12125550100", NOW) == prefix


def test_expired_longer_prefix_falls_back_to_shorter_one() -> None:
    short = DncRule("+1", is_prefix=True)
    m = DncMatcher([short, DncRule("+1212", is_prefix=True, expires_at=NOW)])
    assert m.match("+12125550100", NOW) == short


def test_dnc_refusal_names_number_scope_kind_entry_and_source() -> None:
    expiry = utc(2026, 12, 31)
    m = DncMatcher([
        DncRule("+1900", is_prefix=True, scope="list:premium", source="import"),
        DncRule("+12125550100", expires_at=expiry, scope="campaign", source="agent"),
    ])
    assert m.refusal("+19005550100", NOW) == Refusal(
        Rule.DNC, "+19005550100 matches list:premium DNC prefix +1900 (import)", None
    )
    assert m.refusal("+12125550100", NOW) == Refusal(
        Rule.DNC, "+12125550100 matches campaign DNC number +12125550100 (agent)", expiry
    )
    assert m.refusal("+12125550199", NOW) is None


def test_dnc_matcher_counts_its_entries() -> None:
    m = DncMatcher([DncRule("+1"), DncRule("+1"), DncRule("+44", is_prefix=True)])
    assert len(m) == 3
    assert len(DncMatcher([])) == 0


# --- attempt limits ------------------------------------------------------------------------------


def test_max_attempts_refuses_at_the_limit() -> None:
    assert check_max_attempts(9, 10) is None
    assert check_max_attempts(10, 10) == Refusal(Rule.MAX_ATTEMPTS, "10 of 10 attempts used")
    assert check_max_attempts(12, 10) is not None


def test_daily_attempts_count_the_contacts_local_day_not_the_utc_day() -> None:
    # 2026-06-10 06:30 UTC is 23:30 on 9 June in Los Angeles; 07:30 UTC is 00:30 on 10 June.
    placed = [utc(2026, 6, 10, 6, 30), utc(2026, 6, 10, 7, 30)]
    now = utc(2026, 6, 10, 16)  # 09:00 PDT on 10 June
    assert check_daily_attempts(placed, LA, now, 2) is None
    r = check_daily_attempts([*placed, utc(2026, 6, 10, 15)], LA, now, 2)
    assert r == Refusal(
        Rule.MAX_ATTEMPTS_PER_DAY,
        f"2 of 2 attempts used on 2026-06-10 ({LA})",
        local(LA, 2026, 6, 11, 0),
    )
    assert r.until == utc(2026, 6, 11, 7)


def test_daily_attempts_refusal_ends_at_the_next_local_midnight_across_dst() -> None:
    # Sat 2026-03-07 in New York; the next midnight is still EST (the jump is at 02:00 Sunday).
    placed = [utc(2026, 3, 7, 15)]
    r = check_daily_attempts(placed, NY, utc(2026, 3, 7, 20), 1)
    assert r is not None and r.until == utc(2026, 3, 8, 5)


def test_daily_attempts_reset_after_local_midnight() -> None:
    placed = [utc(2026, 6, 10, 15), utc(2026, 6, 10, 16)]
    assert check_daily_attempts(placed, LA, utc(2026, 6, 11, 7), 2) is None  # 00:00 PDT
    assert check_daily_attempts(placed, LA, utc(2026, 6, 11, 6, 59), 2) is not None


def test_uk_abandon_refuses_a_repeat_call_within_72_hours() -> None:
    abandoned = utc(2026, 6, 1, 10)
    r = check_uk_abandon([abandoned], abandoned + timedelta(hours=71, minutes=59), False)
    assert r is not None
    assert r.rule is Rule.UK_ABANDON_72H
    assert r.until == abandoned + UK_ABANDON_QUIET == utc(2026, 6, 4, 10)


def test_uk_abandon_allows_the_call_at_exactly_72_hours() -> None:
    abandoned = utc(2026, 6, 1, 10)
    assert check_uk_abandon([abandoned], abandoned + timedelta(hours=72), False) is None
    assert check_uk_abandon([abandoned], abandoned + timedelta(hours=72, seconds=-1), False)


def test_uk_abandon_counts_from_the_latest_abandoned_call() -> None:
    first, second = utc(2026, 6, 1, 10), utc(2026, 6, 2, 10)
    r = check_uk_abandon([second, first], utc(2026, 6, 4, 11), False)
    assert r is not None and r.until == utc(2026, 6, 5, 10)


def test_uk_abandon_is_lifted_when_an_agent_is_guaranteed() -> None:
    abandoned = utc(2026, 6, 1, 10)
    assert check_uk_abandon([abandoned], abandoned + timedelta(hours=1), True) is None


def test_uk_abandon_without_abandoned_calls_allows() -> None:
    assert check_uk_abandon([], NOW, False) is None


def test_uk_abandon_72_hours_are_elapsed_time_across_the_clock_change() -> None:
    # Abandoned Sat 2026-03-28 12:00 GMT; 72 h later is Tue 13:00 BST, not 12:00 BST.
    abandoned = local(LONDON, 2026, 3, 28, 12)
    noon_bst = local(LONDON, 2026, 3, 31, 12)
    r = check_uk_abandon([abandoned], noon_bst, False)
    assert r is not None and r.until == utc(2026, 3, 31, 12) == local(LONDON, 2026, 3, 31, 13)
    assert check_uk_abandon([abandoned], local(LONDON, 2026, 3, 31, 13), False) is None


def test_refusal_prints_its_rule_and_detail() -> None:
    assert str(Refusal(Rule.DNC, "+1 matches")) == "dnc: +1 matches"


def test_weekday_keys_are_case_insensitive() -> None:
    hours = CallingHours.from_dict({"Sun": None, "DEFAULT": "09:00-20:00"})
    assert hours.to_dict()["sun"] is None and hours.to_dict()["mon"] == "09:00-20:00"
