"""The discrete-event pacing simulator: one campaign shift driven by a real `Pacer`.

`simulate(scenario, pacer)` runs the scenario (see `sim.scenario` for the TOML format) on a
heap of timed events plus the pacing tick, and returns `SimResult` (metrics as JSON-ready data,
and the time series for `plot`). `paceline sim run SCENARIO.toml` wraps it.

The model, and what it chooses where the issue leaves room:
- Every tick (`tick_s`, 0.25 s) the events up to `now` are processed, then the pacer decides
  from a `PacingSnapshot` and that many calls are placed at `now`. Nothing else places calls.
- A call's fate (outcome, ring time, talk time) is drawn when it is placed, from the outcome
  probabilities in force then, but the pacer learns it only when it happens: `observe_call`
  fires at the answer (human: when it can be connected; machine: at AMD classification), at the
  network's end of a busy / rejected / failed call, or at the no-answer timeout.
- Ring time: answered calls ring `ring_to_answer`; a call that would ring past the no-answer
  timeout is ended by the dialer at the timeout as `no_answer` (so `no_answer_p` is a floor).
  The timeout is never below `min_ring_s` (validated), so no unanswered call is dropped before
  the minimum ring. Busy / rejected / failed end after `fail_ring` (the network ends them).
- AMD: with `amd = true` an answered call is classified `amd_delay_s` after the answer. Until
  then the dialer does not know it was answered by a person, so the call stays in
  `ringing_elapsed`, and the `ring_s` reported for human / machine is place -> classification.
  A machine ends at classification; a person becomes connectable then, and the 2 s rule counts
  from there (the regulators count from the end of the greeting, i.e. when AMD has decided).
  The customer hears the AMD delay too; `wait_*` metrics exclude it (it is a constant of the
  scenario). The standard scenarios have no machines and AMD off, identically for every mode.
- Connect rule: a person is connected at once to a ready agent, else waits in FIFO order for
  the next agent who becomes free; still waiting after `connect_limit_s` (2 s) it is abandoned
  (info message, call ends, `observe_abandon`). Connected: `observe_connect(wait_s)`.
- An agent is busy from the connect through the callee's talk and the agent's wrap-up, then
  `observe_handle(talk + wrap)` and ready again (and takes the oldest waiting person at once).
- Agents (each group of `[agents]` / `[[agents.groups]]`) log in at `start_h` and out at
  `end_h`, or when their call in progress ends. An agent whose shift ends while calls placed
  for the team are still unresolved stays on standby for them (not counted as ready for the
  pacer) until none is left, so the shift end by itself makes no abandons. Dialing stops at
  the end of the run; the calls in flight are then resolved the same way.
- `[[pacer.changes]]`: at `at_h` the simulator calls `pacer.set_mode(mode)`.
- Random draws: per placed call, in this order and always all of them (so the stream does not
  depend on the outcome): outcome, ring to answer, talk, fail ring; per connect: wrap-up.
- Metrics: occupancy = agent time on connected calls (talk + wrap) / logged-in agent time;
  abandon rate = abandons / live answers (overall and per bin); live answers per agent-hour;
  mean / p95 wait of connected persons (connectable -> agent); dial level = lines in use
  (ringing, in AMD, waiting for an agent, or talking; not wrap-up) / logged-in agents, sampled
  every tick and averaged per bin (VICIdial's sense: progressive dialing is about 1.0).

Determinism: all chance comes from one `random.Random(scenario.seed)`; the same scenario, seed
and (deterministic) pacer give the same result.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dialer.domain import Outcome
from dialer.pacing import Pacer, PacingSnapshot
from sim.scenario import DRAWN_OUTCOMES, Scenario, ScenarioError

FloatArray = npt.NDArray[np.float64]


class PacerLike(Protocol):
    """The part of the `dialer.pacing.Pacer` contract the simulator drives."""

    def observe_call(self, ring_s: float, outcome: str) -> None: ...
    def observe_handle(self, handle_s: float) -> None: ...
    def observe_connect(self, wait_s: float) -> None: ...
    def observe_abandon(self) -> None: ...
    def decide(self, snapshot: Any) -> int: ...


def make_pacer(scenario: Scenario, **overrides: Any) -> PacerLike:
    """Build the real `dialer.pacing.Pacer` from the scenario's `[pacer]` table.

    A keyword the Pacer rejects (TypeError / ValueError) becomes a `ScenarioError` on `[pacer]`.
    When the scenario does not set `shift_s` (VICIdial's tapered drop limit needs the shift
    length), it gets the agents' shift length.
    """
    kwargs = {**scenario.pacer, **overrides}
    if "shift_s" not in kwargs:
        staffed = [g for g in scenario.all_groups if g.count] or list(scenario.all_groups)
        span = max(g.end_s for g in staffed) - min(g.start_s for g in staffed)
        kwargs["shift_s"] = max(1.0, span)
    try:
        pacer: PacerLike = Pacer(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(scenario.source, "[pacer]", str(exc)) from None
    return pacer


# Event kinds; ties at one instant are processed in scheduling order (the heap's seq).
_EV_END = 0  # busy / rejected / failed / no_answer: the call ends unanswered
_EV_HUMAN = 1  # a person is connectable (answer + AMD delay)
_EV_MACHINE = 2  # AMD classified a machine; the call ends
_EV_ABANDON = 3  # connect_limit_s after _EV_HUMAN: abandon if still waiting
_EV_FREE = 4  # an agent ends talk + wrap-up
_EV_LOGIN = 5
_EV_LOGOUT = 6
_EV_MODE = 7  # pacer.set_mode(scenario.mode_changes[ref].mode)

_HUMAN, _MACHINE, _BUSY, _NO_ANSWER, _REJECTED, _FAILED = range(6)
assert [o.value for o in DRAWN_OUTCOMES] == [
    "human", "machine", "busy", "no_answer", "rejected", "failed",
]


@dataclass(slots=True)
class SimResult:
    """What one run produced. `metrics` is JSON-ready; `series` holds per-bin arrays."""

    metrics: dict[str, Any]
    series: dict[str, list[float]]
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Metrics plus series; NaN (a bin without data) becomes null, as JSON has no NaN."""
        series = {k: [None if math.isnan(v) else v for v in vs] for k, vs in self.series.items()}
        return {**self.metrics, "series": series, "wall_s": round(self.wall_s, 3)}


@dataclass(slots=True)
class _Call:
    placed: float
    kind: int
    talk: float
    slot: int  # index in the ringing buffer while unclassified, -1 after
    ring: float = 0.0  # place -> when the outcome is known (reported to the pacer)
    connectable: float = 0.0


@dataclass(slots=True)
class _Stats:
    counts: dict[str, int] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    live_t: list[float] = field(default_factory=list)  # when each live answer was connectable
    abandon_t: list[float] = field(default_factory=list)
    busy_iv: list[tuple[float, float]] = field(default_factory=list)  # agent (connect, free)
    wait_t: list[float] = field(default_factory=list)


class Simulation:
    """One run. Use `simulate()`; the class exists so tests can inspect the state."""

    def __init__(self, scenario: Scenario, pacer: PacerLike) -> None:
        self.sc = scenario
        self.pacer = pacer
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self.heap: list[tuple[float, int, int, int]] = []
        self.seq = 0
        self.calls: dict[int, _Call] = {}
        self.next_call = 0
        # Ringing (unclassified) calls: placed time by slot, NaN when the slot is free.
        self.ring_buf: FloatArray = np.full(256, np.nan)
        self.free_slots: list[int] = list(range(255, -1, -1))
        self.n_ringing = 0
        # One row per agent, group by group: shift and wrap-up distribution; then the state
        # arrays (connect time while busy, NaN otherwise) that make the snapshot cheap.
        self.agent_shift = [(g.start_s, g.end_s, g.wrap) for g in scenario.all_groups
                            for _ in range(g.count)]
        n = len(self.agent_shift)
        self.agent_conn: FloatArray = np.full(n, np.nan)
        self.agent_talk_end: FloatArray = np.full(n, -np.inf)  # the line is up until then
        self.agent_busy = np.zeros(n, dtype=bool)
        self.agent_in = np.zeros(n, dtype=bool)  # logged in
        self.agent_login = np.zeros(n)
        self.agent_logout = np.full(n, np.nan)
        self.leaving = np.zeros(n, dtype=bool)  # log out when the current call ends
        self.ready: list[int] = []  # ready agents, stack (the last freed takes the next call)
        self.standby = 0  # agents in `ready` past their shift end, kept for calls in flight
        self.waiting: dict[int, float] = {}  # call id -> connectable time, FIFO by insertion
        self.stats = _Stats(counts={o.value: 0 for o in (*DRAWN_OUTCOMES, Outcome.ABANDONED)})
        self.placed = 0
        self.ended = 0
        # Tick samples for the dial level series: time and lines in use / logged-in agents.
        self.dl_t: list[float] = []
        self.dl_v: list[float] = []

    # --- events ---------------------------------------------------------------------------

    def _push(self, t: float, kind: int, ref: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, ref))

    def _place(self, t: float) -> None:
        sc, rng = self.sc, self.rng
        probs = sc.probs_at(t)
        u = rng.random()
        kind = _FAILED
        acc = 0.0
        for i, p in enumerate(probs):
            acc += p
            if u < acc:
                kind = i
                break
        # Always draw ring and talk, so the stream does not depend on the outcome drawn.
        ring_answer = sc.ring_to_answer.sample(rng)
        talk = sc.talk.sample(rng)
        fail_ring = sc.fail_ring.sample(rng)
        cid = self.next_call
        self.next_call += 1
        if not self.free_slots:
            old = len(self.ring_buf)
            self.ring_buf = np.concatenate([self.ring_buf, np.full(old, np.nan)])
            self.free_slots = list(range(2 * old - 1, old - 1, -1))
        slot = self.free_slots.pop()
        self.ring_buf[slot] = t
        self.n_ringing += 1
        call = _Call(placed=t, kind=kind, talk=talk, slot=slot)
        self.calls[cid] = call
        self.placed += 1
        timeout = sc.no_answer_timeout_s
        if kind in (_HUMAN, _MACHINE):
            if ring_answer >= timeout:
                call.kind = _NO_ANSWER  # the dialer hangs up before the callee picks up
                call.ring = timeout
                self._push(t + timeout, _EV_END, cid)
            else:
                call.ring = ring_answer + (sc.amd_delay_s if sc.amd else 0.0)
                self._push(t + call.ring, _EV_HUMAN if kind == _HUMAN else _EV_MACHINE, cid)
        elif kind == _NO_ANSWER:
            call.ring = timeout
            self._push(t + timeout, _EV_END, cid)
        else:
            call.ring = fail_ring
            self._push(t + fail_ring, _EV_END, cid)

    def _unring(self, call: _Call) -> None:
        self.ring_buf[call.slot] = np.nan
        self.free_slots.append(call.slot)
        call.slot = -1
        self.n_ringing -= 1

    def _finish(self, cid: int, outcome: Outcome) -> None:
        self.stats.counts[outcome.value] += 1
        self.ended += 1
        del self.calls[cid]
        if self.standby:
            self._release_standby(self.now)

    def _connect(self, agent: int, cid: int, t: float) -> None:
        call = self.calls[cid]
        wait = t - call.connectable
        self.pacer.observe_connect(wait)
        self.stats.waits.append(wait)
        self.stats.wait_t.append(t)
        self.agent_busy[agent] = True
        self.agent_conn[agent] = t
        self.agent_talk_end[agent] = t + call.talk
        wrap = self.agent_shift[agent][2].sample(self.rng)
        self._push(t + call.talk + wrap, _EV_FREE, agent)
        self._finish(cid, Outcome.HUMAN)

    def _handle(self, t: float, kind: int, ref: int) -> None:
        if kind == _EV_END:
            call = self.calls[ref]
            self._unring(call)
            outcome = DRAWN_OUTCOMES[call.kind]
            self.pacer.observe_call(call.ring, outcome.value)
            self._finish(ref, outcome)
        elif kind == _EV_HUMAN:
            call = self.calls[ref]
            self._unring(call)
            call.connectable = t
            self.stats.live_t.append(t)
            self.pacer.observe_call(call.ring, Outcome.HUMAN.value)
            if self.ready:
                self._connect(self._take_ready(), ref, t)
            else:
                self.waiting[ref] = t
                self._push(t + self.sc.connect_limit_s, _EV_ABANDON, ref)
        elif kind == _EV_MACHINE:
            call = self.calls[ref]
            self._unring(call)
            self.pacer.observe_call(call.ring, Outcome.MACHINE.value)
            self._finish(ref, Outcome.MACHINE)
        elif kind == _EV_ABANDON:
            if ref in self.waiting:
                del self.waiting[ref]
                self.pacer.observe_abandon()
                self.stats.abandon_t.append(t)
                self._finish(ref, Outcome.ABANDONED)
        elif kind == _EV_FREE:
            start = float(self.agent_conn[ref])
            self.pacer.observe_handle(t - start)
            self.stats.busy_iv.append((start, t))
            self.agent_busy[ref] = False
            self.agent_conn[ref] = np.nan
            if self.waiting:
                cid = next(iter(self.waiting))
                del self.waiting[cid]
                self._connect(ref, cid, t)  # a leaving agent too: the person is on the line
            elif not self.leaving[ref]:
                self.ready.append(ref)
            elif self.n_ringing:
                self.ready.append(ref)
                self.standby += 1
            else:
                self._logout(ref, t)
        elif kind == _EV_LOGIN:
            self.agent_in[ref] = True
            self.agent_login[ref] = t
            if self.waiting:
                cid = next(iter(self.waiting))
                del self.waiting[cid]
                self._connect(ref, cid, t)
            else:
                self.ready.append(ref)
        elif kind == _EV_MODE:
            self._set_mode(ref)
        elif kind == _EV_LOGOUT:
            self.leaving[ref] = True
            if self.agent_busy[ref]:
                pass  # leaves when this call's wrap-up ends
            elif self.n_ringing or self.waiting:
                # Stays on standby for the calls already placed for the team (not counted as
                # ready for the pacer), so the shift end itself makes no abandons.
                self.standby += 1
            else:
                self.ready.remove(ref)
                self._logout(ref, t)

    def _take_ready(self) -> int:
        agent = self.ready.pop()
        if self.leaving[agent]:
            self.standby -= 1  # a standby agent takes the call, then leaves
        return agent

    def _release_standby(self, t: float) -> None:
        """Log out the standby agents once nothing placed is left unresolved."""
        if self.standby and not self.n_ringing and not self.waiting:
            for agent in [a for a in self.ready if self.leaving[a]]:
                self.ready.remove(agent)
                self._logout(agent, t)
            self.standby = 0

    def _set_mode(self, ref: int) -> None:
        mode = self.sc.mode_changes[ref].mode
        set_mode = getattr(self.pacer, "set_mode", None)
        if set_mode is None:
            raise ScenarioError(self.sc.source, "[pacer] changes", "this pacer has no set_mode")
        try:
            set_mode(mode)
        except ValueError as exc:
            raise ScenarioError(self.sc.source, f"[pacer.changes[{ref}]] mode",
                                str(exc)) from None

    def _logout(self, agent: int, t: float) -> None:
        self.agent_in[agent] = False
        self.leaving[agent] = False
        self.agent_logout[agent] = t

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        sc = self.sc
        for a, (start, end, _) in enumerate(self.agent_shift):
            self._push(start, _EV_LOGIN, a)
            self._push(end, _EV_LOGOUT, a)
        for i, change in enumerate(sc.mode_changes):
            self._push(change.at_s, _EV_MODE, i)
        n_ticks = math.ceil(sc.duration_s / sc.tick_s - 1e-9)
        heap = self.heap
        pop = heapq.heappop
        decide = self.pacer.decide
        for k in range(n_ticks):
            now = k * sc.tick_s
            while heap and heap[0][0] <= now:
                t, _, kind, ref = pop(heap)
                self.now = t
                self._handle(t, kind, ref)
            self.now = now
            conn = self.agent_conn[self.agent_busy]
            ring = self.ring_buf[~np.isnan(self.ring_buf)] if self.n_ringing else _EMPTY
            n = decide(
                PacingSnapshot(
                    now=now,
                    ready_agents=len(self.ready) - self.standby,
                    busy_elapsed=now - conn,
                    ringing_elapsed=now - ring,
                    waiting_calls=len(self.waiting),
                )
            )
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
                raise RuntimeError(f"pacer.decide returned {n!r} at t={now:g}; expected an "
                                   "int >= 0")
            for _ in range(int(n)):
                self._place(now)
            logged = int(self.agent_in.sum())
            in_flight = (self.n_ringing + len(self.waiting)
                         + int(np.count_nonzero(self.agent_talk_end > now)))
            self.dl_t.append(now)
            self.dl_v.append(in_flight / logged if logged else math.nan)
        # Drain: no more dialing; resolve what is in flight.
        while heap:
            t, _, kind, ref = pop(heap)
            self.now = t
            self._handle(t, kind, ref)
        result = self._metrics()
        result.wall_s = time.perf_counter() - wall0
        return result

    # --- metrics ----------------------------------------------------------------------------

    def _metrics(self) -> SimResult:
        sc, st = self.sc, self.stats
        end = max(self.now, sc.duration_s)
        logout = np.where(np.isnan(self.agent_logout), end, self.agent_logout)
        login_iv = np.stack([self.agent_login, logout], axis=1)
        busy_iv = np.array(st.busy_iv, dtype=float).reshape(-1, 2)
        logged_s = float((login_iv[:, 1] - login_iv[:, 0]).sum())
        busy_s = float((busy_iv[:, 1] - busy_iv[:, 0]).sum())
        live = len(st.live_t)
        abandons = len(st.abandon_t)
        waits = np.array(st.waits)
        bins = np.arange(0.0, sc.duration_s + sc.bin_s * 0.5, sc.bin_s)
        if bins[-1] < sc.duration_s:
            bins = np.append(bins, sc.duration_s)
        bins[-1] = max(bins[-1], end)  # the drain belongs to the last bin
        n_bins = len(bins) - 1

        def overlap(iv: npt.NDArray[np.float64]) -> FloatArray:
            lo = np.maximum(iv[:, 0:1], bins[None, :-1])
            hi = np.minimum(iv[:, 1:2], bins[None, 1:])
            return np.asarray(np.clip(hi - lo, 0.0, None).sum(axis=0), dtype=np.float64)

        bin_logged = overlap(login_iv) if len(login_iv) else np.zeros(n_bins)
        bin_busy = overlap(busy_iv) if len(busy_iv) else np.zeros(n_bins)
        bin_live = np.histogram(st.live_t, bins=bins)[0].astype(float)
        bin_ab = np.histogram(st.abandon_t, bins=bins)[0].astype(float)
        wsum = np.histogram(st.wait_t, bins=bins, weights=st.waits)[0]
        wcnt = np.histogram(st.wait_t, bins=bins)[0]
        dl_t = np.array(self.dl_t)
        dl_v = np.array(self.dl_v)
        ok = ~np.isnan(dl_v)
        dsum = np.histogram(dl_t[ok], bins=bins, weights=dl_v[ok])[0]
        dcnt = np.histogram(dl_t[ok], bins=bins)[0]

        def ratio(num: FloatArray, den: FloatArray, scale: float = 1.0) -> list[float]:
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(den > 0, num * scale / np.where(den > 0, den, 1.0), np.nan)
            return [_r(x) for x in r]

        series = {
            "t_h": [_r(x / 3600.0) for x in bins[:-1]],
            "occupancy": ratio(bin_busy, bin_logged),
            "abandon_rate": ratio(bin_ab, bin_live),
            "live_answers_per_agent_hour": ratio(bin_live, bin_logged, 3600.0),
            "wait_mean_s": ratio(wsum, wcnt.astype(float)),
            "dial_level": ratio(dsum, dcnt.astype(float)),
        }
        ab_bins = [x for x, n in zip(series["abandon_rate"], bin_live, strict=True)
                   if n > 0 and not math.isnan(x)]
        metrics: dict[str, Any] = {
            "scenario": sc.source,
            "mode": str(sc.pacer.get("mode")),
            "seed": sc.seed,
            "agents": sc.total_agents,
            "hours": sc.hours,
            "target_abandon": float(sc.pacer.get("target_abandon", 0.03)),
            "occupancy": _r(busy_s / logged_s) if logged_s > 0 else None,
            "abandon_rate": _r(abandons / live) if live else 0.0,
            "abandon_rate_max_bin": _r(max(ab_bins)) if ab_bins else 0.0,
            "live_answers": live,
            "abandons": abandons,
            "live_answers_per_agent_hour": _r(live / (logged_s / 3600.0)) if logged_s else None,
            "wait_mean_s": _r(float(waits.mean())) if len(waits) else None,
            "wait_p95_s": _r(float(np.percentile(waits, 95))) if len(waits) else None,
            "dial_level_mean": _r(float(dl_v[ok].mean())) if ok.any() else None,
            "calls_placed": self.placed,
            "calls_ended": self.ended,
            "outcomes": dict(st.counts),
            "agent_logged_in_s": _r(logged_s),
            "agent_busy_s": _r(busy_s),
            "bin_s": sc.bin_s,
        }
        return SimResult(metrics=metrics, series=series)


_EMPTY: FloatArray = np.zeros(0)


def _r(x: float) -> float:
    """Round for JSON (6 significant digits keep the file readable); NaN stays NaN."""
    return float(f"{x:.6g}")


def simulate(scenario: Scenario, pacer: PacerLike | None = None) -> SimResult:
    """Run `scenario` with `pacer` (default: the real Pacer built from `[pacer]`)."""
    if pacer is None:
        pacer = make_pacer(scenario)
    return Simulation(scenario, pacer).run()


def with_changes(scenario: Scenario, *, agents: int | None = None, seed: int | None = None,
                 hours: float | None = None, mode: str | None = None,
                 pacer: Mapping[str, Any] | None = None) -> Scenario:
    """A copy of `scenario` with another size, seed, length or pacer mode (for the bench).

    A new `hours` scales the time-varying population periods, the agents' shifts, the mode
    changes and the width of the time-series bins with the run, so "the answer rate drops
    mid-shift" stays mid-shift in a short run.
    `agents` sets the count of `[agents]` (not of `[[agents.groups]]`).
    """
    changes: dict[str, Any] = {}
    if agents is not None:
        changes["agents"] = agents
    if seed is not None:
        changes["seed"] = seed
    if hours is not None and hours != scenario.hours:
        k = hours / scenario.hours
        changes["hours"] = hours
        changes["bin_s"] = scenario.bin_s * k
        end = scenario.agents_end_s
        changes["agents_end_s"] = None if end is None else end * k
        changes["agents_start_s"] = scenario.agents_start_s * k
        changes["groups"] = tuple(
            dataclasses.replace(g, start_s=g.start_s * k, end_s=g.end_s * k)
            for g in scenario.groups
        )
        changes["mode_changes"] = tuple(
            dataclasses.replace(c, at_s=c.at_s * k) for c in scenario.mode_changes
        )
        changes["periods"] = tuple(
            dataclasses.replace(p, from_s=p.from_s * k) for p in scenario.periods
        )
    table = dict(scenario.pacer)
    if pacer is not None:
        table.update(pacer)
    if mode is not None:
        table["mode"] = mode
    changes["pacer"] = table
    return dataclasses.replace(scenario, **changes)


def plot(result: SimResult, path: str | Path, title: str = "") -> None:
    """Write the PNG chart: occupancy, abandon rate, live answers/agent-hour, wait, dial level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.series
    t = s["t_h"]
    panels: Sequence[tuple[str, str, float]] = (
        ("occupancy", "occupancy (%)", 100.0),
        ("abandon_rate", "abandon rate (%)", 100.0),
        ("live_answers_per_agent_hour", "live answers / agent-hour", 1.0),
        ("wait_mean_s", "mean wait (s)", 1.0),
        ("dial_level", "dial level (lines / agent)", 1.0),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 11), sharex=True)
    t_end = [*t, result.metrics["hours"]]  # repeat the last value to the end of the shift
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        ys = [v * scale for v in s[key]]
        ax.step(t_end, [*ys, ys[-1]] if ys else [], where="post")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].axhline(
        float(_target(result)) * 100.0, color="red", linestyle="--", linewidth=0.8
    )
    axes[-1].set_xlabel("hour of shift")
    m = result.metrics
    fig.suptitle(title or (
        f"{m['scenario']} · {m['mode']} · {m['agents']} agents · seed {m['seed']}: "
        f"occupancy {_pct(m['occupancy'])}, abandon {_pct(m['abandon_rate'])}"
    ), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _target(result: SimResult) -> float:
    return float(result.metrics.get("target_abandon", 0.03))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f}%"
