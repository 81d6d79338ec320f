"""Pacing-simulator scenarios: the TOML format, its validation and its random distributions.

A scenario describes one campaign shift for `sim.des`. Every key is optional except the
probabilities in `[population]`; unknown keys are errors. Times are in seconds unless the key
ends in `_h` (hours since the start of the simulated shift).

```toml
[run]
hours = 8.0              # simulated shift length; the dialer places calls in [0, hours)
tick_s = 0.25            # pacing tick: the pacer decides once per tick
seed = 1                 # random seed; the same scenario and seed give the same run
bin_s = 900              # width of the time-series bins (chart, per-window abandon rate)

[pacer]                  # passed to dialer.pacing.Pacer(**table)
mode = "predictive"      # preview|progressive|power|predictive|agentless|vicidial_adaptive
target_abandon = 0.03
window_s = 2592000       # the regulatory window (30 days)
# any other key is passed through as a keyword argument (e.g. ratio = 2.0 for power)

[[pacer.changes]]        # optional: switch the mode while the campaign runs (Pacer.set_mode)
at_h = 6.0
mode = "progressive"

[agents]
count = 50
start_h = 0.0            # agents log in together at start_h ...
end_h = 8.0              # ... and log out at end_h, or when their call in progress ends
wrap = 15                # wrap-up after each call: a number (fixed) or a distribution table

[[agents.groups]]        # optional: more agents on another shift (keys as in [agents];
count = 10               # wrap defaults to the one of [agents])
start_h = 2.0
end_h = 6.0

[dialer]
no_answer_timeout_s = 25 # the dialer gives up on an unanswered call after this ...
min_ring_s = 15          # ... which may not be below the minimum ring time
connect_limit_s = 2      # a live answer without an agent after this is abandoned
amd = false              # answering-machine detection
amd_delay_s = 0.0        # with amd = true: answer -> classification (human or machine)

[population]
human_p = 0.25           # live answer
machine_p = 0.0          # needs amd = true (without AMD the dialer cannot tell machines)
busy_p = 0.15
no_answer_p = 0.60
rejected_p = 0.0
failed_p = 0.0           # the six must sum to 1 (within 1e-6)
ring_to_answer = { dist = "uniform", low = 4, high = 20 }   # place -> answer (human, machine)
fail_ring = { dist = "uniform", low = 0.5, high = 3 }       # place -> busy/rejected/failed end
talk = { dist = "lognormal", mean = 90, sigma = 0.8 }       # answer (connect) -> callee hang-up

[[population.hours]]     # optional: from from_h on, these probabilities replace the ones above
from_h = 4.0
human_p = 0.10
no_answer_p = 0.75       # keys not given keep the base value; each period must sum to 1
```

Distributions: `{ dist = "fixed", value = V }` (or a bare number),
`{ dist = "uniform", low, high }`, `{ dist = "lognormal", mean, sigma }` (the mean of the
distribution, sigma of the log), `{ dist = "exponential", mean }`; any of them may add `max`
to cut the tail.

Errors raise `ScenarioError`, whose message names the file and the key path, e.g.
`standard.toml: [population] human_p: must be between 0 and 1, got 1.4`.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialer.domain import Outcome

#: The outcomes a placed call can have, as the population draws them (one source of truth:
#: dialer.domain.Outcome). Abandons are not drawn: they are what the dialer makes of a human.
DRAWN_OUTCOMES: tuple[Outcome, ...] = (
    Outcome.HUMAN,
    Outcome.MACHINE,
    Outcome.BUSY,
    Outcome.NO_ANSWER,
    Outcome.REJECTED,
    Outcome.FAILED,
)
PROB_KEYS: tuple[str, ...] = tuple(f"{o.value}_p" for o in DRAWN_OUTCOMES)


class ScenarioError(ValueError):
    """An invalid scenario. `source` is the file (or "<scenario>"), `key` the key path."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.reason = message
        super().__init__(f"{source}: {key}: {message}")


@dataclass(frozen=True, slots=True)
class Dist:
    """A non-negative random duration. `sample` uses only the given `random.Random`."""

    kind: str  # fixed | uniform | lognormal | exponential
    a: float = 0.0  # fixed: value; uniform: low; lognormal: mu (of the log); exponential: mean
    b: float = 0.0  # uniform: high; lognormal: sigma
    cap: float = math.inf

    @staticmethod
    def fixed(value: float) -> Dist:
        return Dist("fixed", value)

    @staticmethod
    def uniform(low: float, high: float) -> Dist:
        return Dist("uniform", low, high)

    @staticmethod
    def lognormal(mean: float, sigma: float) -> Dist:
        # Parameterised by the mean, as scenarios state it: E[X] = exp(mu + sigma^2 / 2).
        return Dist("lognormal", math.log(mean) - sigma * sigma / 2.0, sigma)

    @staticmethod
    def exponential(mean: float) -> Dist:
        return Dist("exponential", mean)

    @property
    def mean(self) -> float:
        """The mean before the `cap` (exact for fixed/uniform, analytic for the others)."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2.0
        if self.kind == "lognormal":
            return math.exp(self.a + self.b * self.b / 2.0)
        return self.a

    @property
    def upper(self) -> float:
        """The largest value the distribution can take (inf when unbounded)."""
        if self.kind == "fixed":
            return min(self.a, self.cap)
        if self.kind == "uniform":
            return min(self.b, self.cap)
        return self.cap

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            x = self.a
        elif self.kind == "uniform":
            x = self.a + (self.b - self.a) * rng.random()
        elif self.kind == "lognormal":
            x = rng.lognormvariate(self.a, self.b)
        else:
            x = rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        return x if x < self.cap else self.cap


@dataclass(frozen=True, slots=True)
class Period:
    """Outcome probabilities that hold from `from_s` (seconds since shift start) on."""

    from_s: float
    probs: tuple[float, ...]  # in DRAWN_OUTCOMES order, summing to 1


@dataclass(frozen=True, slots=True)
class AgentGroup:
    """Agents beyond `[agents]`, on their own shift (seconds since the start of the run)."""

    count: int
    start_s: float
    end_s: float
    wrap: Dist


@dataclass(frozen=True, slots=True)
class ModeChange:
    """At `at_s` the simulator calls `pacer.set_mode(mode)`."""

    at_s: float
    mode: str


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario. Build it with `load_scenario` / `parse_scenario`."""

    hours: float = 8.0
    tick_s: float = 0.25
    seed: int = 1
    bin_s: float = 900.0
    pacer: Mapping[str, Any] = field(
        default_factory=lambda: {"mode": "predictive", "target_abandon": 0.03,
                                 "window_s": 30 * 86400}
    )
    agents: int = 10
    agents_start_s: float = 0.0
    agents_end_s: float | None = None  # None: the end of the run
    wrap: Dist = field(default_factory=lambda: Dist.fixed(15.0))
    groups: tuple[AgentGroup, ...] = ()
    mode_changes: tuple[ModeChange, ...] = ()
    no_answer_timeout_s: float = 25.0
    min_ring_s: float = 15.0
    connect_limit_s: float = 2.0
    amd: bool = False
    amd_delay_s: float = 0.0
    periods: tuple[Period, ...] = ()
    ring_to_answer: Dist = field(default_factory=lambda: Dist.uniform(4.0, 20.0))
    fail_ring: Dist = field(default_factory=lambda: Dist.uniform(0.5, 3.0))
    talk: Dist = field(default_factory=lambda: Dist.lognormal(90.0, 0.8))
    source: str = "<scenario>"

    @property
    def duration_s(self) -> float:
        return self.hours * 3600.0

    @property
    def shift_end_s(self) -> float:
        return self.duration_s if self.agents_end_s is None else self.agents_end_s

    @property
    def all_groups(self) -> tuple[AgentGroup, ...]:
        """`[agents]` as the first group, then `[[agents.groups]]`."""
        main = AgentGroup(self.agents, self.agents_start_s, self.shift_end_s, self.wrap)
        return (main, *self.groups)

    @property
    def total_agents(self) -> int:
        return self.agents + sum(g.count for g in self.groups)

    def probs_at(self, t: float) -> tuple[float, ...]:
        """The outcome probabilities in force at `t` (the last period starting at or before)."""
        current = self.periods[0].probs
        for period in self.periods:
            if period.from_s <= t:
                current = period.probs
            else:
                break
        return current


# --- parsing -----------------------------------------------------------------------------------

_SECTIONS: dict[str, frozenset[str]] = {
    "run": frozenset({"hours", "tick_s", "seed", "bin_s"}),
    "agents": frozenset({"count", "start_h", "end_h", "wrap", "groups"}),
    "dialer": frozenset(
        {"no_answer_timeout_s", "min_ring_s", "connect_limit_s", "amd", "amd_delay_s"}
    ),
    "population": frozenset(
        {*PROB_KEYS, "ring_to_answer", "fail_ring", "talk", "hours"}
    ),
}


class _Reader:
    """Typed access to one TOML table, with errors naming `source: [section] key`."""

    def __init__(self, source: str, section: str, table: Mapping[str, Any]) -> None:
        self.source = source
        self.section = section
        self.table = table

    def error(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, f"[{self.section}] {key}" if key else
                             f"[{self.section}]", message)

    def number(self, key: str, default: float, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        x = float(value)
        if not math.isfinite(x):
            raise self.error(key, f"must be finite, got {value!r}")
        if lo is not None and hi is not None and not (lo < x <= hi if lo_open else lo <= x <= hi):
            raise self.error(key, f"must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(x)}")
        if lo is not None and hi is None and (x <= lo if lo_open else x < lo):
            word = "greater than" if lo_open else "at least"
            raise self.error(key, f"must be {word} {_fmt(lo)}, got {_fmt(x)}")
        return x

    def integer(self, key: str, default: int, *, lo: int = 0) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        if value < lo:
            raise self.error(key, f"must be at least {lo}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def dist(self, key: str, default: Dist) -> Dist:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _check_dist(self, key, Dist.fixed(float(value)), {})
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a number or a distribution table, got {value!r}")
        sub = _Reader(self.source, self.section, value)
        kind = value.get("dist")
        allowed = {
            "fixed": {"value"},
            "uniform": {"low", "high"},
            "lognormal": {"mean", "sigma"},
            "exponential": {"mean"},
        }
        if kind not in allowed:
            raise self.error(
                f"{key}.dist", f"must be one of {', '.join(sorted(allowed))}, got {kind!r}"
            )
        for k in value:
            if k not in allowed[kind] | {"dist", "max"}:
                raise self.error(f"{key}.{k}", f"unknown key for dist = {kind!r}")
        for k in allowed[kind]:
            if k not in value:
                raise self.error(f"{key}.{k}", f"missing (needed by dist = {kind!r})")

        def num(k: str, **kw: Any) -> float:
            try:
                return sub.number(k, 0.0, **kw)
            except ScenarioError as exc:
                raise self.error(f"{key}.{k}", exc.reason) from None

        if kind == "fixed":
            d = Dist.fixed(num("value", lo=0.0))
        elif kind == "uniform":
            low, high = num("low", lo=0.0), num("high", lo=0.0)
            if high < low:
                raise self.error(f"{key}.high", f"must be at least low ({_fmt(low)}), got "
                                 f"{_fmt(high)}")
            d = Dist.uniform(low, high)
        elif kind == "lognormal":
            d = Dist.lognormal(num("mean", lo=0.0, lo_open=True), num("sigma", lo=0.0))
        else:
            d = Dist.exponential(num("mean", lo=0.0))
        return _check_dist(self, key, d, value)


def _check_dist(reader: _Reader, key: str, d: Dist, table: Mapping[str, Any]) -> Dist:
    if "max" in table:
        sub = _Reader(reader.source, reader.section, table)
        try:
            cap = sub.number("max", 0.0, lo=0.0, lo_open=True)
        except ScenarioError as exc:
            raise reader.error(f"{key}.max", exc.reason) from None
        return Dist(d.kind, d.a, d.b, cap)
    return d


def _fmt(x: float) -> str:
    return f"{x:g}"


def _unknown(source: str, where: str, table: Mapping[str, Any], known: frozenset[str]) -> None:
    for key in table:
        if key not in known:
            hint = f" (known: {', '.join(sorted(known))})" if known else ""
            raise ScenarioError(source, f"{where} {key}".strip(), f"unknown key{hint}")


def _probs(reader: _Reader, base: tuple[float, ...] | None) -> tuple[float, ...]:
    values = []
    for i, key in enumerate(PROB_KEYS):
        if base is None:
            if key not in reader.table:
                raise reader.error(key, "missing (give all six outcome probabilities: "
                                   f"{', '.join(PROB_KEYS)})")
            default = 0.0
        else:
            default = base[i]
        values.append(reader.number(key, default, lo=0.0, hi=1.0))
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        raise reader.error(
            "", f"outcome probabilities must sum to 1, got {total:.6g} ("
            + ", ".join(f"{k} = {v:g}" for k, v in zip(PROB_KEYS, values, strict=True)) + ")"
        )
    return tuple(values)


def _agent_group(reader: _Reader, hours: float, default_wrap: Dist) -> AgentGroup:
    count = reader.integer("count", 10)
    start_h = reader.number("start_h", 0.0, lo=0.0, hi=hours)
    end_h = reader.number("end_h", hours, lo=0.0, hi=hours)
    if end_h < start_h:
        raise reader.error("end_h", f"must be at least start_h ({start_h:g}), got {end_h:g}")
    return AgentGroup(count, start_h * 3600.0, end_h * 3600.0,
                      reader.dist("wrap", default_wrap))


def _mode_changes(source: str, items: Any, hours: float) -> tuple[ModeChange, ...]:
    if not isinstance(items, list):
        raise ScenarioError(source, "[pacer] changes",
                            "must be an array of tables ([[pacer.changes]])")
    out: list[ModeChange] = []
    for i, item in enumerate(items):
        where = f"pacer.changes[{i}]"
        if not isinstance(item, Mapping):
            raise ScenarioError(source, f"[{where}]", f"must be a table, got {item!r}")
        _unknown(source, f"[{where}]", item, frozenset({"at_h", "mode"}))
        reader = _Reader(source, where, item)
        for key in ("at_h", "mode"):
            if key not in item:
                raise reader.error(key, "missing")
        at_h = reader.number("at_h", 0.0, lo=0.0, hi=hours)
        if not isinstance(item["mode"], str):
            raise reader.error("mode", f"must be a string, got {item['mode']!r}")
        if out and at_h * 3600.0 < out[-1].at_s:
            raise reader.error("at_h", "changes must be in time order")
        out.append(ModeChange(at_h * 3600.0, item["mode"]))
    return tuple(out)


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a parsed TOML document; raise `ScenarioError` naming `source` and the key."""
    _unknown(source, "", data, frozenset({*_SECTIONS, "pacer"}))
    tables: dict[str, Mapping[str, Any]] = {}
    for name in (*_SECTIONS, "pacer"):
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise ScenarioError(source, f"[{name}]", f"must be a table, got {table!r}")
        if name in _SECTIONS:
            _unknown(source, f"[{name}]", table, _SECTIONS[name])
        tables[name] = table

    run = _Reader(source, "run", tables["run"])
    hours = run.number("hours", 8.0, lo=0.0, lo_open=True)
    tick_s = run.number("tick_s", 0.25, lo=0.0, lo_open=True)
    seed = run.integer("seed", 1)
    bin_s = run.number("bin_s", 900.0, lo=0.0, lo_open=True)

    pacer_table = dict(tables["pacer"])
    changes = _mode_changes(source, pacer_table.pop("changes", []), hours)
    pacer_table.setdefault("mode", "predictive")
    pacer_table.setdefault("target_abandon", 0.03)
    pacer_table.setdefault("window_s", 30 * 86400)
    if not isinstance(pacer_table["mode"], str):
        raise ScenarioError(source, "[pacer] mode", f"must be a string, got "
                            f"{pacer_table['mode']!r}")
    _Reader(source, "pacer", pacer_table).number("target_abandon", 0.03, lo=0.0, hi=1.0)
    _Reader(source, "pacer", pacer_table).number("window_s", 1.0, lo=0.0, lo_open=True)

    agents = _Reader(source, "agents", tables["agents"])
    main = _agent_group(agents, hours, Dist.fixed(15.0))
    extra_groups = tables["agents"].get("groups", [])
    if not isinstance(extra_groups, list):
        raise agents.error("groups", "must be an array of tables ([[agents.groups]])")
    groups = []
    for i, item in enumerate(extra_groups):
        where = f"agents.groups[{i}]"
        if not isinstance(item, Mapping):
            raise ScenarioError(source, f"[{where}]", f"must be a table, got {item!r}")
        _unknown(source, f"[{where}]", item, frozenset({"count", "start_h", "end_h", "wrap"}))
        if "count" not in item:
            raise ScenarioError(source, f"[{where}] count", "missing")
        groups.append(_agent_group(_Reader(source, where, item), hours, main.wrap))

    dialer = _Reader(source, "dialer", tables["dialer"])
    min_ring = dialer.number("min_ring_s", 15.0, lo=0.0)
    timeout = dialer.number("no_answer_timeout_s", 25.0, lo=0.0)
    if timeout < min_ring:
        raise dialer.error("no_answer_timeout_s", f"must be at least min_ring_s "
                           f"({min_ring:g}): an unanswered call rings at least that long, "
                           f"got {timeout:g}")
    connect_limit = dialer.number("connect_limit_s", 2.0, lo=0.0)
    amd = dialer.boolean("amd", False)
    amd_delay = dialer.number("amd_delay_s", 0.0, lo=0.0)
    if amd_delay > 0 and not amd:
        raise dialer.error("amd_delay_s", f"is {amd_delay:g} but amd = false; set amd = true "
                           "or remove it")

    pop = _Reader(source, "population", tables["population"])
    base = _probs(pop, None)
    periods = [Period(0.0, base)]
    extra = tables["population"].get("hours", [])
    if not isinstance(extra, list):
        raise pop.error("hours", "must be an array of tables ([[population.hours]])")
    prev_h = 0.0
    for i, item in enumerate(extra):
        where = f"population.hours[{i}]"
        if not isinstance(item, Mapping):
            raise ScenarioError(source, f"[{where}]", f"must be a table, got {item!r}")
        _unknown(source, f"[{where}]", item, frozenset({"from_h", *PROB_KEYS}))
        sub = _Reader(source, where, item)
        if "from_h" not in item:
            raise sub.error("from_h", "missing (the hour of the shift the period starts at)")
        from_h = sub.number("from_h", 0.0, lo=0.0, hi=hours)
        if from_h <= prev_h:
            raise sub.error("from_h", f"periods must start in increasing order, got {from_h:g} "
                            f"after {prev_h:g}")
        prev_h = from_h
        periods.append(Period(from_h * 3600.0, _probs(sub, base)))
    probs = [p.probs for p in periods]
    if any(p[PROB_KEYS.index("machine_p")] > 0 for p in probs) and not amd:
        raise pop.error("machine_p", "is above 0 but [dialer] amd = false: without AMD the "
                        "dialer cannot tell a machine from a person; set amd = true")

    ring = pop.dist("ring_to_answer", Dist.uniform(4.0, 20.0))
    fail_ring = pop.dist("fail_ring", Dist.uniform(0.5, 3.0))
    talk = pop.dist("talk", Dist.lognormal(90.0, 0.8))

    return Scenario(
        hours=hours, tick_s=tick_s, seed=seed, bin_s=bin_s, pacer=pacer_table,
        agents=main.count, agents_start_s=main.start_s, agents_end_s=main.end_s,
        wrap=main.wrap, groups=tuple(groups), mode_changes=changes,
        no_answer_timeout_s=timeout, min_ring_s=min_ring,
        connect_limit_s=connect_limit, amd=amd, amd_delay_s=amd_delay,
        periods=tuple(periods), ring_to_answer=ring, fail_ring=fail_ring, talk=talk,
        source=source,
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; `ScenarioError` names the file and key at fault."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ScenarioError(p.name, "file", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ScenarioError(p.name, "file", f"not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(p.name, "file", f"invalid TOML: {exc}") from None
    return parse_scenario(data, p.name)


#: Where the shipped scenarios live (`standard.toml`, `answer_drop.toml`).
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
