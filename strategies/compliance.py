"""The compliance filter: calling hours, DNC suppression, attempt limits and the UK 72-hour rule.

Pure code: every function takes `now` (an aware datetime) and data, and returns a decision.
Every refusal is a `Refusal` that names its `Rule`, so that a report can say why a contact was
not dialed and when it may be dialed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Rule(StrEnum):
    """Why a contact was not dialed (now, or ever)."""

    CALLING_HOURS = "calling_hours"
    HOLIDAY = "holiday"
    DNC = "dnc"
    MAX_ATTEMPTS = "max_attempts"
    MAX_ATTEMPTS_PER_DAY = "max_attempts_per_day"
    UK_ABANDON_72H = "uk_abandon_72h"
    STRATEGY_EXHAUSTED = "strategy_exhausted"
    CONNECTED = "connected"
    SMS_AWAITING_REPLY = "sms_awaiting_reply"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A rule that stops a dial. `until` is when it stops refusing (None: never by itself)."""

    rule: Rule
    detail: str
    until: datetime | None = None

    def __str__(self) -> str:
        return f"{self.rule.value}: {self.detail}"


class ComplianceConfigError(ValueError):
    """A bad calling-hours or holiday setting; the message names the key and the value."""


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_WINDOW = (time(8, 0), time(21, 0))
#: How far ahead `next_allowed_time` looks before deciding the contact can never be called.
SEARCH_DAYS = 400


#: A number whose area spans several zones (Alaska's 907: Adak and Anchorage) gives its contact
#: a compound zone, the names joined by this separator. A call must then be inside calling
#: hours in every one of them: the only choice that is legal wherever the person is.
ZONE_SEPARATOR = "|"


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The `ZoneInfo` for an IANA name; raises `ComplianceConfigError` for an unknown one.

    For a compound zone (`A|B`) every part is checked and the first is returned: the one
    that dates a contact's calendar day (the daily attempt limit).
    """
    parts = name.split(ZONE_SEPARATOR)
    try:
        zones = [ZoneInfo(p) for p in parts]
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ComplianceConfigError(f"unknown time zone {name!r}") from exc
    return zones[0]


def is_zone(name: str) -> bool:
    """Whether `name` is a zone `zone()` accepts (an IANA name, or a compound of them)."""
    try:
        zone(name)
    except ComplianceConfigError:
        return False
    return True


def _parse_window(value: Any, where: str) -> tuple[time, time] | None:
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, str) and "-" in value:
        start_s, end_s = value.split("-", 1)
        try:
            start, end = time.fromisoformat(start_s.strip()), time.fromisoformat(end_s.strip())
        except ValueError as exc:
            raise ComplianceConfigError(
                f"{where}: {value!r} is not a window like '08:00-21:00'"
            ) from exc
        if not start < end:
            raise ComplianceConfigError(f"{where}: window {value!r} must start before it ends")
        return (start, end)
    raise ComplianceConfigError(
        f"{where}: {value!r} is not a window like '08:00-21:00' (or null for no calls)"
    )


@dataclass(frozen=True, slots=True)
class CallingHours:
    """Local-time calling windows, one per weekday (Monday first); None means no calls that day."""

    windows: tuple[tuple[time, time] | None, ...] = (DEFAULT_WINDOW,) * 7

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, where: str = "calling_hours"
    ) -> CallingHours:
        """Read `{"default": "08:00-21:00", "sat": "10:00-18:00", "sun": null}`.

        Keys are `default` and the weekday abbreviations `mon`..`sun`; a missing weekday takes
        the default, and a missing default is 08:00-21:00.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ComplianceConfigError(f"{where}: expected a table of weekday windows")
        data = {str(k).lower(): v for k, v in data.items()}  # "Sun" is as good as "sun"
        unknown = set(data) - {"default", *WEEKDAYS}
        if unknown:
            raise ComplianceConfigError(
                f"{where}: unknown key {sorted(unknown)[0]!r} (use default, {', '.join(WEEKDAYS)})"
            )
        default = (
            _parse_window(data["default"], f"{where}.default") if "default" in data
            else DEFAULT_WINDOW
        )
        windows = tuple(
            _parse_window(data[day], f"{where}.{day}") if day in data else default
            for day in WEEKDAYS
        )
        return cls(windows)

    def to_dict(self) -> dict[str, str | None]:
        return {
            day: (f"{w[0].strftime('%H:%M')}-{w[1].strftime('%H:%M')}" if w else None)
            for day, w in zip(WEEKDAYS, self.windows, strict=True)
        }

    def window_on(self, day: date, holidays: frozenset[date]) -> tuple[time, time] | None:
        """The window for the local date `day`, or None on a holiday or a closed weekday."""
        if day in holidays:
            return None
        return self.windows[day.weekday()]


def parse_holidays(values: Iterable[Any], where: str = "holidays") -> frozenset[date]:
    """ISO dates (`2026-12-25`) into a set; a bad one raises naming its position."""
    out = set()
    for i, v in enumerate(values):
        try:
            out.add(v if isinstance(v, date) else date.fromisoformat(str(v)))
        except ValueError as exc:
            raise ComplianceConfigError(f"{where}[{i}]: {v!r} is not an ISO date") from exc
    return frozenset(out)


def _local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    # A wall time in the spring-forward gap maps to the instant the gap ends (the clocks jump
    # past it), and an ambiguous autumn time to its first occurrence (fold=0).
    local = datetime.combine(day, at, tzinfo=tz)
    after = local.astimezone(UTC)  # fold=0 in a gap reads the offset before the jump: too late
    if after.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None):
        return local
    # In the gap: bisect (in whole seconds) for the transition between the fold=1 reading,
    # which lies before the jump, and the fold=0 reading, which lies after it.
    lo, hi = int(local.replace(fold=1).timestamp()), int(after.timestamp())
    offset_after = after.astimezone(tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == offset_after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, tz)


def check_calling_hours(
    tz: str, now: datetime, hours: CallingHours, holidays: frozenset[date]
) -> Refusal | None:
    """Refuse when `now` is outside the contact's local calling window (or a holiday).

    The refusal's `until` is the next instant (UTC) the window opens, or None if it never does
    within `SEARCH_DAYS`. A compound zone is refused when any of its zones refuses.
    """
    if ZONE_SEPARATOR in tz:
        for part in tz.split(ZONE_SEPARATOR):
            refusal = check_calling_hours(part, now, hours, holidays)
            if refusal is not None:
                return Refusal(refusal.rule, refusal.detail,
                               next_allowed_time(tz, now, hours, holidays))
        return None
    z = zone(tz)
    local = now.astimezone(z)
    day = local.date()
    if day in holidays:
        rule, why = Rule.HOLIDAY, f"{day.isoformat()} is a holiday"
    else:
        window = hours.windows[day.weekday()]
        if window is not None and window[0] <= local.time().replace(tzinfo=None) < window[1]:
            return None
        rule = Rule.CALLING_HOURS
        why = (
            f"{local.strftime('%a %H:%M')} {tz} is outside "
            + (f"{window[0]:%H:%M}-{window[1]:%H:%M}" if window else "calling days")
        )
    return Refusal(rule, why, next_allowed_time(tz, now, hours, holidays))


def next_allowed_time(
    tz: str, t: datetime, hours: CallingHours, holidays: frozenset[date]
) -> datetime | None:
    """The earliest instant at or after `t` inside the contact's local calling window.

    Returns `t` itself (in UTC) when it is already inside; None when no window opens within
    `SEARCH_DAYS` (every weekday closed, say). For a compound zone: the earliest instant inside
    the window of every one of its zones.
    """
    if ZONE_SEPARATOR in tz:
        parts = tz.split(ZONE_SEPARATOR)
        candidate: datetime | None = t
        # Each zone pushes the time to its own next window; stop when none moves it. Zones a
        # few hours apart agree within a round or two; disjoint windows never do.
        for _ in range(4 * len(parts) + 8):
            moved = False
            for part in parts:
                assert candidate is not None
                nxt = next_allowed_time(part, candidate, hours, holidays)
                if nxt is None:
                    return None
                if nxt != candidate:
                    candidate, moved = nxt, True
            if not moved:
                return candidate.astimezone(UTC) if candidate is not None else None
        return None
    z = zone(tz)
    local_day = t.astimezone(z).date()
    for k in range(SEARCH_DAYS):
        day = local_day + timedelta(days=k)
        window = hours.window_on(day, holidays)
        if window is None:
            continue
        start = _local_instant(day, window[0], z)
        end = _local_instant(day, window[1], z)
        candidate = max(t, start)
        if candidate < end:
            return candidate.astimezone(UTC)
    return None


def zones_open(
    zones: Iterable[str], now: datetime, hours: CallingHours, holidays: frozenset[date]
) -> set[str]:
    """The zones among `zones` whose local time is inside calling hours at `now`."""
    return {z for z in zones if check_calling_hours(z, now, hours, holidays) is None}


# --- DNC ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DncRule:
    """One DNC entry as the filter sees it. `value` is E.164 (`+1212...`) or a prefix of one."""

    value: str
    is_prefix: bool = False
    expires_at: datetime | None = None
    scope: str = "global"  # "global", "campaign", or "list:<name>", for the refusal text
    source: str = "manual"

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


class DncMatcher:
    """Matches numbers against exact and prefix DNC entries in O(number length).

    Build one per campaign from the entries that apply to it (global, the campaign's own, its
    lists). Expired entries never match.
    """

    __slots__ = ("_exact", "_prefix", "_prefix_lengths")

    def __init__(self, rules: Iterable[DncRule]) -> None:
        self._exact: dict[str, list[DncRule]] = {}
        self._prefix: dict[str, list[DncRule]] = {}
        for r in rules:
            (self._prefix if r.is_prefix else self._exact).setdefault(r.value, []).append(r)
        self._prefix_lengths = sorted({len(p) for p in self._prefix}, reverse=True)

    def __len__(self) -> int:
        return sum(map(len, self._exact.values())) + sum(map(len, self._prefix.values()))

    def match(self, e164: str, now: datetime) -> DncRule | None:
        """The active entry that suppresses `e164`, exact entries first, longest prefix next."""
        for r in self._exact.get(e164, ()):
            if r.active(now):
                return r
        for n in self._prefix_lengths:
            if n <= len(e164):
                for r in self._prefix.get(e164[:n], ()):
                    if r.active(now):
                        return r
        return None

    def refusal(self, e164: str, now: datetime) -> Refusal | None:
        rule = self.match(e164, now)
        if rule is None:
            return None
        kind = "prefix" if rule.is_prefix else "number"
        return Refusal(
            Rule.DNC,
            f"{e164} matches {rule.scope} DNC {kind} {rule.value} ({rule.source})",
            rule.expires_at,
        )


# --- attempt limits -----------------------------------------------------------------------------

#: Ofcom: after an abandoned call, no repeat call to that number within 72 hours unless a live
#: agent is guaranteed.
UK_ABANDON_QUIET = timedelta(hours=72)


def check_max_attempts(total_attempts: int, max_attempts: int) -> Refusal | None:
    if total_attempts >= max_attempts:
        return Refusal(Rule.MAX_ATTEMPTS, f"{total_attempts} of {max_attempts} attempts used")
    return None


def check_daily_attempts(
    placed: Iterable[datetime], tz: str, now: datetime, max_per_day: int
) -> Refusal | None:
    """Refuse once `max_per_day` attempts were placed on the contact's local calendar day."""
    z = zone(tz)
    today = now.astimezone(z).date()
    used = sum(1 for p in placed if p.astimezone(z).date() == today)
    if used < max_per_day:
        return None
    tomorrow = _local_instant(today + timedelta(days=1), time(0, 0), z).astimezone(UTC)
    return Refusal(
        Rule.MAX_ATTEMPTS_PER_DAY,
        f"{used} of {max_per_day} attempts used on {today.isoformat()} ({tz})",
        tomorrow,
    )


def check_uk_abandon(
    abandoned_at: Iterable[datetime], now: datetime, agent_guaranteed: bool
) -> Refusal | None:
    """Refuse a repeat call within 72 h of an abandoned call to the same number.

    `abandoned_at` are the times of abandoned calls to the number about to be dialed. The rule
    does not apply when the dial mode reserves an agent for the call (preview, progressive).
    """
    if agent_guaranteed:
        return None
    # in UTC: 72 hours are elapsed time, not wall-clock time across a DST change
    last = max((a.astimezone(UTC) for a in abandoned_at), default=None)
    if last is None or now >= last + UK_ABANDON_QUIET:
        return None
    return Refusal(
        Rule.UK_ABANDON_72H,
        f"abandoned at {last.isoformat()}; no repeat call without a guaranteed agent for 72 h",
        last + UK_ABANDON_QUIET,
    )
