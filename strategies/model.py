"""The data a strategy decision is made from, and the decision itself.

All of it is plain frozen data: a `Strategy` is loaded from TOML/JSON (or a built-in), the
dialer builds `ContactView`/`AttemptView`/`CampaignPolicy` from its rows, and the planner
returns a `Dial` or a `Close`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from dialer.domain import (
    MAX_PHONES,
    CampaignChannel,
    Channel,
    ContactState,
    DialMode,
    Outcome,
)
from strategies.compliance import CallingHours, Refusal


class StrategyError(ValueError):
    """A bad strategy definition. The message names the source file and the key."""


#: Retry delays used when a strategy does not set one for an outcome.
DEFAULT_RETRY_DELAYS: Mapping[Outcome, timedelta] = {
    Outcome.BUSY: timedelta(minutes=5),
    Outcome.NO_ANSWER: timedelta(hours=1),
    Outcome.MACHINE: timedelta(hours=2),
    Outcome.REJECTED: timedelta(hours=1),
    Outcome.CONGESTION: timedelta(minutes=10),
    Outcome.FAILED: timedelta(hours=1),
    Outcome.ABANDONED: timedelta(hours=1),
    Outcome.ABANDONED_BY_AGENT: timedelta(hours=1),
    Outcome.DANGLING: timedelta(hours=1),
    Outcome.SMS_SENT: timedelta(days=1),
    Outcome.SMS_DELIVERED: timedelta(days=1),
    Outcome.SMS_FAILED: timedelta(hours=1),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any, where: str) -> timedelta:
    """`300`, `"90s"`, `"5m"`, `"1h"`, `"2d"` -> timedelta. Raises StrategyError naming `where`."""
    if isinstance(value, bool):
        raise StrategyError(f"{where}: {value!r} is not a duration like 300, '5m', '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise StrategyError(f"{where}: {value!r} is not a duration like 300, '5m', '1h'")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise StrategyError(f"{where}: a duration cannot be negative ({value!r})")
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # inf, nan (TOML and JSON allow both), or too large
        raise StrategyError(f"{where}: {value!r} is infinite, NaN or too long") from None


def format_duration(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


@dataclass(frozen=True, slots=True)
class Step:
    """Dial (or text) phone slot `phone` up to `tries` times before moving to the next step."""

    phone: int
    channel: Channel = Channel.VOICE
    tries: int = 1


def _outcome(value: Any, where: str) -> Outcome:
    try:
        return Outcome(value)
    except ValueError:
        raise StrategyError(
            f"{where}: unknown outcome {value!r} (one of {', '.join(o.value for o in Outcome)})"
        ) from None


def _int(data: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise StrategyError(f"{where}.{key}: {v!r} must be a whole number from {lo} to {hi}")
    return v


@dataclass(frozen=True, slots=True)
class Strategy:
    """An ordered plan of steps over phone slots and channels, with retry rules.

    - `steps` run in order; a step is used `tries` times, then the plan moves on.
    - After an attempt, the next one waits `retry_delays[outcome]`.
    - `switch_to_sms_on`: after a voice attempt with one of these outcomes, send one SMS to the
      same number (once per number) after `sms_switch_delay`, then resume the plan.
    - `skip_phone_on`: outcomes that prove a number useless (default: `failed`, i.e. the
      number does not exist); later steps on that phone are skipped.
    - A step on an empty phone slot dials phone1 instead, as the seed product does.
    """

    name: str
    steps: tuple[Step, ...]
    retry_delays: Mapping[Outcome, timedelta] = field(
        default_factory=lambda: dict(DEFAULT_RETRY_DELAYS)
    )
    max_attempts: int = 10
    max_attempts_per_day: int = 3
    switch_to_sms_on: frozenset[Outcome] = frozenset()
    sms_switch_delay: timedelta = timedelta(0)
    skip_phone_on: frozenset[Outcome] = frozenset({Outcome.FAILED})

    def retry_delay(self, outcome: Outcome | None) -> timedelta:
        if outcome is None:
            return timedelta(0)
        return self.retry_delays.get(outcome, DEFAULT_RETRY_DELAYS.get(outcome, timedelta(0)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<strategy>") -> Strategy:
        """Validate and build. Every error names `source` and the offending key."""
        if not isinstance(data, Mapping):
            raise StrategyError(f"{source}: a strategy must be a table of keys")
        known = {
            "name", "steps", "retry_delays", "max_attempts", "max_attempts_per_day",
            "switch_to_sms_on", "sms_switch_delay", "skip_phone_on",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise StrategyError(f"{source}: unknown key {unknown[0]!r} (known: {sorted(known)})")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise StrategyError(f"{source}: 'name' must be a non-empty string of at most 64 chars")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, str) or not raw_steps:
            raise StrategyError(f"{source}: 'steps' must be a non-empty list of steps")
        steps = []
        for i, st in enumerate(raw_steps):
            where = f"{source}: steps[{i}]"
            if not isinstance(st, Mapping):
                raise StrategyError(f"{where}: a step is a table like {{phone = 1}}")
            extra = sorted(set(st) - {"phone", "channel", "tries"})
            if extra:
                raise StrategyError(f"{where}: unknown key {extra[0]!r} (phone, channel, tries)")
            phone = _int(st, "phone", 0, 1, MAX_PHONES, where)
            try:
                channel = Channel(st.get("channel", "voice"))
            except ValueError:
                raise StrategyError(
                    f"{where}.channel: {st.get('channel')!r} must be 'voice' or 'sms'"
                ) from None
            steps.append(Step(phone, channel, _int(st, "tries", 1, 1, 100, where)))
        delays = dict(DEFAULT_RETRY_DELAYS)
        raw_delays = data.get("retry_delays", {})
        if not isinstance(raw_delays, Mapping):
            raise StrategyError(f"{source}: 'retry_delays' must be a table outcome = duration")
        for k, v in raw_delays.items():
            where = f"{source}: retry_delays.{k}"
            delays[_outcome(k, where)] = parse_duration(v, where)

        def outcomes(key: str, default: frozenset[Outcome]) -> frozenset[Outcome]:
            raw = data.get(key)
            if raw is None:
                return default
            if isinstance(raw, str) or not isinstance(raw, Sequence):
                raise StrategyError(f"{source}: '{key}' must be a list of outcomes")
            return frozenset(_outcome(v, f"{source}: {key}[{i}]") for i, v in enumerate(raw))

        return cls(
            name=name.strip(),
            steps=tuple(steps),
            retry_delays=delays,
            max_attempts=_int(data, "max_attempts", 10, 1, 1000, source),
            max_attempts_per_day=_int(data, "max_attempts_per_day", 3, 1, 100, source),
            switch_to_sms_on=outcomes("switch_to_sms_on", frozenset()),
            sms_switch_delay=parse_duration(
                data.get("sms_switch_delay", 0), f"{source}: sms_switch_delay"
            ),
            skip_phone_on=outcomes("skip_phone_on", frozenset({Outcome.FAILED})),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready form; `Strategy.from_dict(s.to_dict()) == s`."""
        return {
            "name": self.name,
            "steps": [
                {"phone": s.phone, "channel": s.channel.value, "tries": s.tries}
                for s in self.steps
            ],
            "retry_delays": {
                o.value: format_duration(d)
                for o, d in sorted(self.retry_delays.items(), key=lambda kv: kv[0].value)
            },
            "max_attempts": self.max_attempts,
            "max_attempts_per_day": self.max_attempts_per_day,
            "switch_to_sms_on": sorted(o.value for o in self.switch_to_sms_on),
            "sms_switch_delay": format_duration(self.sms_switch_delay),
            "skip_phone_on": sorted(o.value for o in self.skip_phone_on),
        }

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """Read a `.toml` or `.json` strategy file."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise StrategyError(f"{p}: cannot read: {exc.strerror}") from exc
        try:
            data = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise StrategyError(f"{p}: not valid {p.suffix.lstrip('.') or 'TOML'}: {exc}") from exc
        return cls.from_dict(data, source=str(p))


def _builtin(data: dict[str, Any]) -> Strategy:
    return Strategy.from_dict(data, source=f"<builtin {data['name']}>")


#: Strategies every database starts with. Campaigns share them by name.
BUILTIN_STRATEGIES: Mapping[str, Strategy] = {
    s.name: s
    for s in (
        _builtin({
            "name": "default",
            "steps": [
                {"phone": 1, "tries": 2}, {"phone": 2, "tries": 2},
                {"phone": 3}, {"phone": 4}, {"phone": 5}, {"phone": 1, "tries": 2},
            ],
            "max_attempts": 8,
        }),
        _builtin({
            "name": "voice-then-sms",
            "steps": [
                {"phone": 1, "tries": 2}, {"phone": 2, "tries": 2},
                {"phone": 1, "channel": "sms"},
            ],
            "switch_to_sms_on": ["busy"],
            "max_attempts": 6,
        }),
        _builtin({"name": "sms-only", "steps": [{"phone": 1, "channel": "sms"}]}),
    )
}


@dataclass(frozen=True, slots=True)
class ContactView:
    """What the planner needs of a contact.

    `phones` holds the five E.164 slots (index 0 = phone1; None = empty). `dnc_phones` holds
    the 1-based slots whose number the caller found on a DNC list that applies now.
    """

    phones: tuple[str | None, ...]
    tz: str
    state: ContactState = ContactState.PENDING
    dnc_phones: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One past attempt. `outcome` None means the attempt has no result yet."""

    placed_at: datetime
    phone_index: int
    channel: Channel
    outcome: Outcome | None
    step: int | None = None


@dataclass(frozen=True, slots=True)
class CampaignPolicy:
    """The campaign settings that shape a decision."""

    strategy: Strategy
    channel: CampaignChannel = CampaignChannel.VOICE
    dial_mode: DialMode = DialMode.PROGRESSIVE
    calling_hours: CallingHours = field(default_factory=CallingHours)
    holidays: frozenset[date] = frozenset()
    uk_rules: bool = False


@dataclass(frozen=True, slots=True)
class Dial:
    """Dial (or text) `number` (slot `phone_index`) no earlier than `earliest` (>= now).

    `step` is the strategy step this serves (None for an outcome-triggered SMS switch), and
    `delayed_by` lists every rule that pushed `earliest` past the plain retry delay.
    """

    step: int | None
    phone_index: int
    number: str
    channel: Channel
    earliest: datetime
    delayed_by: tuple[Refusal, ...] = ()


@dataclass(frozen=True, slots=True)
class Close:
    """The contact leaves the dialing pool in `state`, for the reason in `refusal`."""

    state: ContactState
    refusal: Refusal


NextAction = Dial | Close
