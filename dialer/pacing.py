"""Pacing: how many new calls a campaign should place at this instant.

`Pacer` is one campaign's pure pacing object: no clock, no I/O, deterministic. The dialer (or
the simulator, `sim.des`) feeds it what happened through the `observe_*` methods and asks it
`decide(snapshot)` once per pacing tick; time only ever comes in through `snapshot.now`.
`decide_batch(pacers, snapshots)` decides for many campaigns in one vectorized pass.

Modes (switchable while the campaign runs, with `set_mode`; learned statistics survive):

- ``preview``: 0; the agent pulls the next contact.
- ``progressive``: one call per ready agent, minus the calls already ringing or waiting.
- ``power``: `ratio` lines per logged-in agent (ringing + waiting + connected).
- ``predictive``: the abandon-budget model (`dialer.pacing_model`), see `Pacer`.
- ``agentless``: calls go to the IVR: `agentless_cps` calls per second of pacing time, and no
  more than `agentless_max_lines` calls in flight (ringing + busy).
- ``vicidial_adaptive``: the VICIdial ADAPT_TAPERED baseline, see `Pacer`.

With no agent logged in (no ready and no busy agent) every mode but agentless places nothing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dialer.pacing_model import (
    HANDLE_BIN_S,
    HANDLE_BINS,
    HANDLE_MAX_S,
    RING_BIN_S,
    RING_BINS,
    RING_MAX_S,
    FloatArray,
    Histogram,
    IntArray,
    ModelArrays,
    busy_free_prob,
    choose_calls,
    ringing_answer_prob,
)

MODES = ("preview", "progressive", "power", "predictive", "agentless", "vicidial_adaptive")
OUTCOMES = ("human", "machine", "busy", "no_answer", "rejected", "failed")

#: A live answer must reach an agent within this many seconds, or it is abandoned.
CONNECT_LIMIT_S = 2.0


def _empty() -> FloatArray:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class PacingSnapshot:
    """What the dialer sees at one pacing tick.

    - `now`: seconds on the campaign's clock (any origin; it must not go backwards).
    - `ready_agents`: logged-in agents who are idle and could take a call now.
    - `busy_elapsed`: one entry per busy agent, seconds since their current call connected
      (talk and wrap-up both count as busy).
    - `ringing_elapsed`: one entry per outstanding call not yet answered (or not yet classified
      by AMD), seconds since it was placed.
    - `waiting_calls`: live answers waiting for an agent right now (VICIdial's "calls waiting").
    """

    now: float
    ready_agents: int
    busy_elapsed: FloatArray = field(default_factory=_empty)
    ringing_elapsed: FloatArray = field(default_factory=_empty)
    waiting_calls: int = 0


class RollingCounts:
    """Live answers and abandons over a rolling window, kept in time buckets.

    Counts are stamped with the caller's time (never a clock read) into buckets of
    `window_s / buckets` seconds. A bucket is dropped once it lies wholly before
    `now - window_s`, so the window is exact to one bucket width and errs towards remembering
    a little more, never less. Running totals make `totals` O(1) between bucket expiries.
    """

    def __init__(self, window_s: float, buckets: int = 64) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s: must be positive, got {window_s}")
        self.window_s = float(window_s)
        self.width = self.window_s / buckets
        self._buckets: deque[list[float]] = deque()  # [bucket id, live, abandons], oldest first
        self._live = 0.0
        self._abandons = 0.0

    def add(self, now: float, live: float = 0.0, abandons: float = 0.0) -> None:
        bid = float(math.floor(now / self.width))
        if self._buckets and self._buckets[-1][0] >= bid:
            # Same bucket (or a late stamp: counted in the newest bucket, never lost).
            self._buckets[-1][1] += live
            self._buckets[-1][2] += abandons
        else:
            self._buckets.append([bid, live, abandons])
        self._live += live
        self._abandons += abandons

    def totals(self, now: float) -> tuple[float, float]:
        """(live answers, abandons) in the buckets that overlap (now - window_s, now]."""
        oldest = math.floor((now - self.window_s) / self.width)
        while self._buckets and self._buckets[0][0] < oldest:
            _, live, abandons = self._buckets.popleft()
            self._live -= live
            self._abandons -= abandons
        if not self._buckets:
            self._live = self._abandons = 0.0  # no float drift once the window is empty
        return self._live, self._abandons


class Pacer:
    """One campaign's pacing model.

    Learning (any mode; statistics survive a mode switch):

    - `observe_call(ring_s, outcome)`: a call ended its ringing phase after `ring_s` seconds
      with `outcome` in human | machine | busy | no_answer | rejected | failed. Feeds the
      ring-time histograms (all outcomes, and live answers alone) and the window's live count.
    - `observe_handle(handle_s)`: feeds the handle-time histogram (talk + wrap-up).
    - `observe_connect(wait_s)` / `observe_abandon()`: a live answer reached an agent after
      `wait_s`, or found none within 2 s. Abandons count in the regulatory window.

    Observations are stamped with the `now` of the latest snapshot seen (the object reads no
    clock). Histograms forget exponentially: `ring_memory` calls and `handle_memory` handles
    are the e-folding memory lengths.

    Predictive deciding, per tick: for each horizon h in `horizons`, each ringing call gets
    P(live answer within h | not ended yet), each busy agent P(free within h + 2 s | busy so
    far), each new call P(live answer within h); the Poisson-binomial of (answers − free
    agents) gives expected abandons E[(answers − agents)+]. The pacer places the largest n
    whose new calls' expected abandons (the growth of that expectation) stay within
    `tau × their expected live answers` at every horizon (`choose_calls` has the details),
    where tau = `inner_target` × feedback. The feedback spends the window's remaining budget:
    with the window's abandon rate r (smoothed by `prior_live` pseudo-answers at the inner
    target), tau grows up to `max_boost` × when r is far below `target_abandon`, and falls
    towards 0 as r nears `target_abandon × cap_margin`. Until `min_calls` calls,
    `min_answers` live answers and `min_handles` handles are observed, predictive acts as
    progressive (cold start). New calls per tick are capped so lines in flight stay within
    `max_lines_per_agent` × logged-in agents.

    The horizon grid must resolve the ring times: a horizon compares the answers *by* h
    with the agents free *by* h + 2 s, so it cannot see an answer that comes early and an
    agent who frees up late within it. With short calls (2-8 s rings, ~16 s handles, 140
    calls/s) the old grid (8, 14, 20) let the model think 10-15% abandons were fine
    (the window feedback then had to pin tau near 0, and overshot after the cold start);
    the short horizons 2 and 5 s catch that, and leave the long-call scenarios of
    `bench/pacing_quality.py` as they were (within seed noise).

    vicidial_adaptive (VICIdial ADAPT_TAPERED, from its public documentation): lines in flight
    (ringing + waiting + connected) = dial level × active agents (ready + busy; VICIdial's
    default "available only tally" N counts agents in call). Every 15 s the level moves by
    the last minute's average (waiting agents − waiting calls) / active agents, and is
    clamped to [1.0, `vicidial_max_level`]. When today's drop % exceeds the allowed drop %,
    the level is cut in proportion (level × allowed / drop %) and not raised that round.
    Tapered: the allowed drop % is 1.5 × target at the start of the shift, easing linearly to
    the target at mid-shift and to 0.8 × target at its end (`shift_s` long, VICIdial's
    "latest server time"); VICIdial lets the first half of the shift run over the drop limit
    and gets stricter as the shift goes on.
    """

    def __init__(
        self,
        mode: str = "predictive",
        target_abandon: float = 0.03,
        window_s: float = 30 * 86400,
        *,
        ratio: float = 2.0,
        agentless_cps: float = 5.0,
        agentless_max_lines: int = 100,
        horizons: Sequence[float] = (2.0, 5.0, 8.0, 14.0, 20.0),
        inner_target: float | None = None,
        max_boost: float = 2.5,
        cap_margin: float = 0.9,
        prior_live: float = 200.0,
        ring_memory: float = 3000.0,
        handle_memory: float = 1000.0,
        min_calls: int = 100,
        min_answers: int = 20,
        min_handles: int = 10,
        max_lines_per_agent: float = 8.0,
        vicidial_max_level: float = 3.0,
        shift_s: float = 8 * 3600.0,
    ) -> None:
        _check_mode(mode)
        if not 0.0 < target_abandon < 1.0:
            raise ValueError(f"target_abandon: must be in (0, 1), got {target_abandon}")
        if ratio < 0:
            raise ValueError(f"ratio: must be >= 0, got {ratio}")
        if not horizons or min(horizons) <= 0:
            raise ValueError("horizons: need at least one positive horizon (seconds)")
        self._mode = mode
        self.target_abandon = float(target_abandon)
        self.window_s = float(window_s)
        self.ratio = float(ratio)
        self.agentless_cps = float(agentless_cps)
        self.agentless_max_lines = int(agentless_max_lines)
        self.horizons = np.asarray(sorted(horizons), dtype=np.float64)
        self._horizon_key = tuple(self.horizons.tolist())  # groups campaigns in decide_batch
        self.inner_target = (
            0.75 * self.target_abandon if inner_target is None else float(inner_target)
        )
        self.max_boost = float(max_boost)
        self.cap_margin = float(cap_margin)
        self.prior_live = float(prior_live)
        self.min_calls = min_calls
        self.min_answers = min_answers
        self.min_handles = min_handles
        self.max_lines_per_agent = float(max_lines_per_agent)
        self.vicidial_max_level = float(vicidial_max_level)
        self.shift_s = float(shift_s)

        # Priors: weak (a few pseudo-observations), so data takes over within minutes.
        ring_centres = (np.arange(RING_BINS) + 0.5) * RING_BIN_S
        spread = np.where(ring_centres < 30.0, 1.0, 0.0)
        spread /= spread.sum()
        self._ring_all = Histogram(RING_BIN_S, RING_BINS, 10.0 * spread, 1.0 - 1.0 / ring_memory)
        self._ring_human = Histogram(
            RING_BIN_S, RING_BINS, 3.0 * spread, 1.0 - 1.0 / ring_memory
        )
        handle_centres = (np.arange(HANDLE_BINS) + 0.5) * HANDLE_BIN_S
        hprior = np.exp(-handle_centres / 120.0)
        hprior *= 5.0 / hprior.sum()
        self._handle = Histogram(HANDLE_BIN_S, HANDLE_BINS, hprior, 1.0 - 1.0 / handle_memory)
        self._tail_weight = 0.1  # decayed count of handles beyond HANDLE_MAX_S (prior)
        self._tail_excess = 0.1 * 300.0  # ... and the sum of their excess seconds
        self._arrays: ModelArrays | None = None

        self.calls_seen = 0
        self.answers_seen = 0
        self.handles_seen = 0
        self.connects_seen = 0
        self.connect_wait_total = 0.0
        self._window = RollingCounts(self.window_s)
        self._now = 0.0

        self._last_decide: float | None = None
        self._agentless_credit = 0.0
        self.dial_level = 1.0
        # vicidial_adaptive state
        self._vd_level = 1.0
        self._vd_next_adjust: float | None = None
        self._vd_samples: deque[tuple[float, float]] = deque()
        self._vd_day = -1
        self._vd_day_live = 0.0
        self._vd_day_drops = 0.0

    # ---- mode ----------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The current dialing mode (one of `MODES`)."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        """Switch modes mid-run; learned statistics and window counts are kept."""
        _check_mode(mode)
        self._mode = mode

    # ---- learning -------------------------------------------------------------------------

    def observe_call(self, ring_s: float, outcome: str) -> None:
        """A call's ringing phase ended after `ring_s` s with `outcome` (see `OUTCOMES`)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: unknown {outcome!r}; one of {', '.join(OUTCOMES)}")
        ring = max(0.0, float(ring_s))
        self._ring_all.add(ring)
        if outcome == "human":
            self._ring_human.add(ring)
            self.answers_seen += 1
            self._window.add(self._now, live=1.0)
            self._vd_count(live=1.0)
        else:
            self._ring_human.forget()
        self.calls_seen += 1
        self._arrays = None

    def observe_handle(self, handle_s: float) -> None:
        """An agent finished a call that took `handle_s` s of talk plus wrap-up."""
        h = max(0.0, float(handle_s))
        decay = self._handle.decay
        self._tail_weight *= decay
        self._tail_excess *= decay
        if h >= HANDLE_MAX_S:
            self._handle.forget()
            self._tail_weight += 1.0
            self._tail_excess += h - HANDLE_MAX_S
        else:
            self._handle.add(h)
        self.handles_seen += 1
        self._arrays = None

    def observe_connect(self, wait_s: float) -> None:
        """A live answer reached an agent `wait_s` s after it answered."""
        self.connects_seen += 1
        self.connect_wait_total += max(0.0, float(wait_s))

    def observe_abandon(self) -> None:
        """A live answer found no agent within the connect limit (it was abandoned)."""
        self._window.add(self._now, abandons=1.0)
        self._vd_count(drops=1.0)

    def seed_window(self, now: float, live: float, abandons: float) -> None:
        """Carry over the regulatory window's counts from before this pacer existed.

        A restarted dialer must not forget the abandons it already spent: the caller passes
        the live answers and abandons its records show within the window, stamped `now`.
        They then leave the window up to `window_s` later than they really happened: the
        error is on the safe side of the cap.
        """
        self._window.add(now, live=float(live), abandons=float(abandons))

    def window_counts(self, now: float | None = None) -> tuple[float, float]:
        """(live answers, abandons) within the regulatory window ending at `now`."""
        return self._window.totals(self._now if now is None else now)

    @property
    def warmed_up(self) -> bool:
        """True once predictive has seen enough to leave its progressive cold start."""
        return (
            self.calls_seen >= self.min_calls
            and self.answers_seen >= self.min_answers
            and self.handles_seen >= self.min_handles
        )

    def model_arrays(self) -> ModelArrays:
        """The normalized curves the predictive math uses (cached until the next observation)."""
        if self._arrays is None:
            total = self._ring_all.total
            handle_total = self._handle.total + self._tail_weight
            self._arrays = ModelArrays(
                ring_human=self._ring_human.cdf_edges() / total,
                ring_end=self._ring_all.cdf_edges() / total,
                handle=self._handle.cdf_edges() / handle_total,
                tail_mean=max(1.0, self._tail_excess / self._tail_weight),
            )
        return self._arrays

    def effective_target(self, now: float) -> float:
        """The per-tick abandon target after the window feedback (see the class docstring)."""
        live, abandons = self._window.totals(now)
        rate = (abandons + self.inner_target * self.prior_live) / (live + self.prior_live)
        cap = self.target_abandon * self.cap_margin
        if rate >= cap:
            return 0.0
        # 1 at the inner target, rising to max_boost as the rate falls to 0, falling to 0 at
        # the cap; squared on the way down so a campaign near its cap backs off hard.
        if rate <= self.inner_target:
            factor = 1.0 + (self.max_boost - 1.0) * (1.0 - rate / self.inner_target)
        else:
            factor = ((cap - rate) / (cap - self.inner_target)) ** 2
        return self.inner_target * factor

    # ---- deciding -------------------------------------------------------------------------

    def decide(self, snap: PacingSnapshot) -> int:
        """How many new calls to place now (≥ 0). Advances the pacer's time to `snap.now`."""
        return int(decide_batch([self], [snap])[0])

    def _advance(self, snap: PacingSnapshot) -> float:
        """Move the pacer's time to snap.now; returns seconds since the previous decide."""
        dt = 0.0 if self._last_decide is None else max(0.0, snap.now - self._last_decide)
        self._last_decide = snap.now
        self._now = snap.now
        return dt

    def _decide_simple(self, snap: PacingSnapshot, dt: float) -> int | None:
        """Every mode but warmed-up predictive; None means "ask the predictive model"."""
        busy = len(snap.busy_elapsed)
        ringing = len(snap.ringing_elapsed)
        agents = snap.ready_agents + busy
        mode = self._mode
        if mode == "agentless":
            # Credit accrues at the cps cap; at most one second's worth is banked so a pause
            # in ticks does not turn into a burst.
            self._agentless_credit = min(
                self._agentless_credit + self.agentless_cps * dt, max(1.0, self.agentless_cps)
            )
            room = max(0, self.agentless_max_lines - ringing - busy)
            n = min(int(self._agentless_credit), room)
            self._agentless_credit -= n
            return n
        if mode == "vicidial_adaptive":
            self._vd_step(snap)
        if agents == 0:
            self.dial_level = 0.0
            return 0
        in_flight = ringing + snap.waiting_calls
        if mode == "preview":
            n = 0
        elif mode == "power":
            n = math.floor(self.ratio * agents + 1e-9) - busy - in_flight
        elif mode == "vicidial_adaptive":
            n = math.floor(self._vd_level * agents + 1e-9) - busy - in_flight
        elif mode == "progressive" or not self.warmed_up:
            n = snap.ready_agents - in_flight
        else:
            return None
        n = max(0, n)
        self.dial_level = (busy + in_flight + n) / agents
        return n

    def predictive_cap(self, snap: PacingSnapshot) -> int:
        """Most new calls predictive may place now: lines in flight stay within
        `max_lines_per_agent` × logged-in agents (a sanity bound, not the pacing itself)."""
        busy = len(snap.busy_elapsed)
        agents = snap.ready_agents + busy
        lines = math.floor(self.max_lines_per_agent * agents)
        return max(0, min(4000, lines - busy - len(snap.ringing_elapsed) - snap.waiting_calls))

    # ---- vicidial_adaptive ----------------------------------------------------------------

    def _vd_count(self, live: float = 0.0, drops: float = 0.0) -> None:
        day = math.floor(self._now / 86400.0)
        if day != self._vd_day:
            self._vd_day, self._vd_day_live, self._vd_day_drops = day, 0.0, 0.0
        self._vd_day_live += live
        self._vd_day_drops += drops

    def _vd_allowed_drop(self, now: float) -> float:
        frac = min(1.0, max(0.0, (now % 86400.0) / self.shift_s))
        # 1.5 at the start of the shift, 1.0 at mid-shift, 0.8 at its end.
        scale = 1.5 - frac if frac <= 0.5 else 1.0 - 0.4 * (frac - 0.5)
        return self.target_abandon * scale

    def _vd_step(self, snap: PacingSnapshot) -> None:
        now = snap.now
        self._vd_samples.append((now, float(snap.ready_agents - snap.waiting_calls)))
        while self._vd_samples and self._vd_samples[0][0] <= now - 60.0:
            self._vd_samples.popleft()
        if self._vd_next_adjust is None:
            self._vd_next_adjust = now + 15.0
            return
        if now < self._vd_next_adjust:
            return
        self._vd_next_adjust = now + 15.0
        agents = snap.ready_agents + len(snap.busy_elapsed)
        self._vd_count()  # roll the day over if needed
        drop = self._vd_day_drops / self._vd_day_live if self._vd_day_live > 0 else 0.0
        allowed = self._vd_allowed_drop(now)
        if drop > allowed:
            self._vd_level *= allowed / drop
        elif agents > 0 and self._vd_samples:
            diff = sum(d for _, d in self._vd_samples) / len(self._vd_samples)
            self._vd_level += diff / agents
        self._vd_level = min(self.vicidial_max_level, max(1.0, self._vd_level))

    @property
    def vicidial_level(self) -> float:
        """The vicidial_adaptive dial level (lines in flight per active agent)."""
        return self._vd_level


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: unknown {mode!r}; one of {', '.join(MODES)}")


def _pad(rows: Sequence[FloatArray], fill: float, lead: int) -> FloatArray:
    """Stack 1-D arrays of different lengths into one 2-D array after `lead` zero columns,
    padded on the right with `fill`."""
    if len(rows) == 1:  # the per-campaign `decide` path: no masks needed
        one = np.asarray(rows[0], dtype=np.float64)
        out1 = np.zeros((1, lead + len(one)), dtype=np.float64)
        out1[0, lead:] = one
        return out1
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max(initial=0))
    out = np.full((len(rows), lead + width), fill, dtype=np.float64)
    out[:, :lead] = 0.0
    if width:
        # One boolean-mask assignment instead of a copy per campaign.
        mask = np.zeros(out.shape, dtype=bool)
        mask[:, lead:] = np.arange(width)[None, :] < lengths[:, None]
        out[mask] = np.concatenate([np.asarray(r, dtype=np.float64) for r in rows])
    return out


#: Padding for the busy-agent array: an agent in a call this long is certainly free by now.
_FOREVER_S = 1e12


def decide_batch(pacers: Sequence[Pacer], snapshots: Sequence[PacingSnapshot]) -> IntArray:
    """`pacers[i].decide(snapshots[i])` for every i, with the predictive math in one pass.

    Returns an int64 array, one decision per campaign, equal to what the per-campaign
    `decide` returns (which is this function on a batch of one). State changes (time, cps
    credit, VICIdial level) happen exactly as in `decide`. The Python loop over campaigns only
    gathers each campaign's arrays; every probability, distribution and bisection runs on
    padded 2-D arrays, with no loop per call or per agent.
    """
    if len(pacers) != len(snapshots):
        raise ValueError("decide_batch: pacers and snapshots differ in length")
    out = np.zeros(len(pacers), dtype=np.int64)
    todo: list[int] = []
    for i, (pacer, snap) in enumerate(zip(pacers, snapshots, strict=True)):
        dt = pacer._advance(snap)
        n = pacer._decide_simple(snap, dt)
        if n is None:
            todo.append(i)
        else:
            out[i] = n
    if not todo:
        return out
    # Campaigns are grouped by horizon grid (one group in practice: the default grid).
    groups: dict[tuple[float, ...], list[int]] = {}
    for i in todo:
        groups.setdefault(pacers[i]._horizon_key, []).append(i)
    for members in groups.values():
        caps = np.array(
            [pacers[i].predictive_cap(snapshots[i]) for i in members], dtype=np.int64
        )
        out[members] = predictive_decisions(
            [pacers[i] for i in members], [snapshots[i] for i in members], caps
        )
    for i in todo:  # predictive runs only with agents logged in, so `agents` > 0
        snap = snapshots[i]
        agents = snap.ready_agents + len(snap.busy_elapsed)
        pacers[i].dial_level = (
            len(snap.busy_elapsed) + len(snap.ringing_elapsed) + snap.waiting_calls + int(out[i])
        ) / agents
    return out


#: `predictive_decisions` runs its vectorized pipeline on this many campaigns at a time. A
#: block's arrays (probabilities, items, pmfs, tail sums: a few hundred kB each) then stay in
#: the core's cache from one step to the next, where one pass over 1,000 campaigns streams
#: every intermediate (several MB each) through main memory. In the speed bench 128 beat
#: 32, 64 and 256 (each campaign is 3 horizon rows, so `poisson_binomial` gets 384 rows).
BLOCK_CAMPAIGNS = 128


def predictive_decisions(
    pacers: Sequence[Pacer], snapshots: Sequence[PacingSnapshot], caps: IntArray
) -> IntArray:
    """The predictive model's decisions for warmed-up campaigns (no state is changed).

    All campaigns must share one horizon grid (`decide_batch` groups them). `caps` are the
    per-campaign `predictive_cap`s. Campaigns are decided in blocks of `BLOCK_CAMPAIGNS`. A
    campaign's math uses its own inputs only; what its block can change is the padding width
    of the arrays, and so rounding in the last bits of its pmf, exactly as between `decide`
    and `decide_batch` (the tests and the speed bench check the decisions agree).
    """
    horizons = pacers[0].horizons
    arrays = [p.model_arrays() for p in pacers]
    # Curves and elapsed times: one row per campaign.
    if len(arrays) == 1:  # views, not copies, on the per-campaign `decide` path
        ring_human, ring_end = arrays[0].ring_human[None], arrays[0].ring_end[None]
        handle = arrays[0].handle[None]
    else:
        # Every curve of a kind has the same length: one concatenation, then a reshape
        # (np.stack costs several times more on a thousand small arrays).
        c = len(arrays)
        ring_human = np.concatenate([a.ring_human for a in arrays]).reshape(c, -1)
        ring_end = np.concatenate([a.ring_end for a in arrays]).reshape(c, -1)
        handle = np.concatenate([a.handle for a in arrays]).reshape(c, -1)
    tail = np.array([[a.tail_mean] for a in arrays])
    # Column 0 is a new call (0 s rung); padding is a call rung past every histogram (its
    # answer probability is exactly 0) or an agent busy for ages (exactly free: not counted).
    ringing = _pad([s.ringing_elapsed for s in snapshots], RING_MAX_S, 1)
    busy = _pad([s.busy_elapsed for s in snapshots], _FOREVER_S, 0)
    # Agents able to take answers, less the live answers already waiting for one (those are
    # certain answers: they take the next agents free, ahead of anything ringing).
    shift = np.array(
        [s.ready_agents + len(s.busy_elapsed) - s.waiting_calls for s in snapshots],
        dtype=np.int64,
    )
    tau = np.array([p.effective_target(s.now) for p, s in zip(pacers, snapshots, strict=True)])
    out = np.empty(len(pacers), dtype=np.int64)
    for start in range(0, len(pacers), BLOCK_CAMPAIGNS):
        b = slice(start, start + BLOCK_CAMPAIGNS)
        out[b] = _predictive_block(
            horizons, ring_human[b], ring_end[b], handle[b], tail[b], ringing[b], busy[b],
            shift[b], tau[b], caps[b],
        )
    return out


def _predictive_block(
    horizons: FloatArray,
    ring_human: FloatArray,
    ring_end: FloatArray,
    handle: FloatArray,
    tail: FloatArray,
    ringing: FloatArray,
    busy: FloatArray,
    shift: IntArray,
    tau: FloatArray,
    caps: IntArray,
) -> IntArray:
    """`predictive_decisions` for one block of campaigns, from their stacked inputs.

    Per campaign (row): curves `ring_human`, `ring_end`, `handle`, `tail` (C, 1); elapsed
    times `ringing` (column 0 a new call) and `busy`, padded; `shift` (agents able to take
    answers), `tau`, `caps`. Probabilities are one row per campaign × horizon,
    campaign-major.
    """
    hk = len(horizons)
    answer_p = ringing_answer_prob(ring_human, ring_end, ringing, horizons)
    new_p, ring_p = answer_p[:, 0], answer_p[:, 1:]
    # Busy items are "still busy at h + grace": see `choose_calls`.
    still_busy = 1.0 - busy_free_prob(handle, tail, busy, horizons + CONNECT_LIMIT_S)
    items = np.concatenate([ring_p, still_busy], axis=1)
    return choose_calls(items, np.repeat(shift, hk), new_p, tau, caps, hk)


__all__ = [
    "CONNECT_LIMIT_S",
    "MODES",
    "OUTCOMES",
    "Pacer",
    "PacingSnapshot",
    "RollingCounts",
    "decide_batch",
    "predictive_decisions",
]
