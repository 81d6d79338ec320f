"""The predictive decision in plain, per-campaign Python: the reference twin of the NumPy math.

Same inputs, same formulas as `dialer.pacing.predictive_decisions` and
`dialer.pacing_model.choose_calls`, written the straightforward way: a list per call, the
Poisson-binomial by the textbook dynamic programme, expected abandons by direct sums, and a
linear scan over the number of new calls. It exists to check the vectorized code (tests, and
`bench/pacing_speed.py`, which also times it) and to read the model without NumPy in the way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dialer.pacing import CONNECT_LIMIT_S
from dialer.pacing_model import (
    HANDLE_BIN_S,
    HANDLE_MAX_S,
    RING_BIN_S,
    ModelArrays,
)

_EPS = 1e-12  # as in dialer.pacing_model


def interp(cdf: Sequence[float], x: float, bin_s: float) -> float:
    """Piecewise-linear value of the edge curve `cdf` at `x` (flat beyond the last edge)."""
    bins = len(cdf) - 1
    pos = min(max(x / bin_s, 0.0), float(bins))
    idx = min(int(pos), bins - 1)
    frac = pos - idx
    return cdf[idx] + frac * (cdf[idx + 1] - cdf[idx])


def ringing_answer_prob(
    human: Sequence[float], end: Sequence[float], elapsed: float, horizon: float
) -> float:
    """P(live answer in (e, e+h] | not ended by e)."""
    h0 = interp(human, elapsed, RING_BIN_S)
    h1 = interp(human, elapsed + horizon, RING_BIN_S)
    alive = 1.0 - interp(end, elapsed, RING_BIN_S)
    p = (h1 - h0) / max(alive, _EPS) if alive > _EPS else 0.0
    return min(max(p, 0.0), 1.0)


def handle_cdf(handle: Sequence[float], tail_mean: float, x: float) -> float:
    if x < HANDLE_MAX_S:
        return interp(handle, x, HANDLE_BIN_S)
    return 1.0 - (1.0 - handle[-1]) * math.exp(-(x - HANDLE_MAX_S) / tail_mean)


def busy_free_prob(handle: Sequence[float], tail_mean: float, elapsed: float, h: float) -> float:
    c0 = handle_cdf(handle, tail_mean, elapsed)
    c1 = handle_cdf(handle, tail_mean, elapsed + h)
    alive = 1.0 - c0
    p = (c1 - c0) / max(alive, _EPS) if alive > _EPS else 1.0
    return min(max(p, 0.0), 1.0)


def poisson_binomial(ps: Sequence[float]) -> list[float]:
    """pmf of the number of successes, by adding one Bernoulli at a time."""
    pmf = [1.0]
    for p in ps:
        nxt = [0.0] * (len(pmf) + 1)
        for k, mass in enumerate(pmf):
            nxt[k] += mass * (1.0 - p)
            nxt[k + 1] += mass * p
        pmf = nxt
    return pmf


def binomial_pmf(n: int, p: float, y: int) -> float:
    if y > n:
        return 0.0
    return math.comb(n, y) * p**y * (1.0 - p) ** (n - y)


def decide_one(
    arrays: ModelArrays,
    horizons: Sequence[float],
    ready: int,
    busy_elapsed: Sequence[float],
    ringing_elapsed: Sequence[float],
    tau: float,
    n_max: int,
    waiting: int = 0,
) -> int:
    """The predictive decision for one warmed-up campaign (see `choose_calls` for the model).

    `waiting` live answers already wait for an agent: certain answers, ahead of the rest.
    """
    human = [float(v) for v in arrays.ring_human]
    end = [float(v) for v in arrays.ring_end]
    handle = [float(v) for v in arrays.handle]
    best = n_max
    for h in horizons:
        ring_p = [ringing_answer_prob(human, end, e, h) for e in ringing_elapsed]
        still_busy = [
            1.0 - busy_free_prob(handle, arrays.tail_mean, e, h + CONNECT_LIMIT_S)
            for e in busy_elapsed
        ]
        pmf = poisson_binomial(ring_p + still_busy)
        shift = ready + len(busy_elapsed) - waiting
        new_p = ringing_answer_prob(human, end, 0.0, h)

        def excess(y: int, pmf: list[float] = pmf, shift: int = shift) -> float:
            # E[(K - shift + y)+]
            return sum(mass * max(k - shift + y, 0) for k, mass in enumerate(pmf))

        g = [excess(0)]
        accepted = 0
        for n in range(1, n_max + 1):
            g.append(excess(n))
            abandons = sum(binomial_pmf(n, new_p, y) * g[y] for y in range(n + 1))
            if abandons - g[0] <= tau * n * new_p + 1e-12:
                accepted = n
            else:
                break
        best = min(best, accepted)
    return best
