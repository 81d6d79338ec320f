"""Pacing speed: `decide_batch` against the same math in per-campaign pure Python.

Builds N warmed-up predictive campaigns (default 1,000), each with 50 busy agents and 150
ringing calls, and times one pacing tick decided by `dialer.pacing.decide_batch` (the
vectorized NumPy pass) and by `dialer.pacing_scalar.decide_one` (a straightforward scalar
implementation of the same model, one campaign at a time). The decisions must be equal.

    .venv/bin/python bench/pacing_speed.py                    # 1,000 campaigns
    .venv/bin/python bench/pacing_speed.py --campaigns 20     # a quick smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dialer.pacing import Pacer, PacingSnapshot, decide_batch
from dialer.pacing_scalar import decide_one

GOAL_RATIO = 50.0


def warmed_pacer(rng: np.random.Generator) -> Pacer:
    """A predictive pacer that has seen a few thousand calls of a standard-like population."""
    pacer = Pacer(mode="predictive")
    human_p = rng.uniform(0.15, 0.35)
    for _ in range(2000):
        u = rng.random()
        if u < human_p:
            pacer.observe_call(rng.uniform(4.0, 20.0), "human")
        elif u < human_p + 0.15:
            pacer.observe_call(rng.uniform(2.0, 10.0), "busy")
        else:
            pacer.observe_call(25.0, "no_answer")
    mean_talk = rng.uniform(60.0, 150.0)
    for _ in range(400):
        talk = rng.lognormal(np.log(mean_talk) - 0.5 * 0.6**2, 0.6)
        pacer.observe_handle(float(talk) + 15.0)
    return pacer


def snapshot(rng: np.random.Generator, now: float) -> PacingSnapshot:
    return PacingSnapshot(
        now=now,
        ready_agents=int(rng.integers(0, 12)),
        busy_elapsed=rng.uniform(0.0, 400.0, 50),
        # Most calls are late in their ring (a live answer comes within 4-20 s), so the
        # campaigns range from well covered to short of calls and the decisions vary.
        ringing_elapsed=rng.uniform(6.0, 25.0, 150),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=5, help="vectorized ticks timed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n = args.campaigns
    pacers = [warmed_pacer(rng) for _ in range(n)]
    now = 3600.0
    snaps = [snapshot(rng, now) for _ in range(n)]

    times = []
    decisions = np.zeros(n, dtype=np.int64)
    for _ in range(args.ticks):
        t0 = time.perf_counter()
        decisions = decide_batch(pacers, snaps)
        times.append(time.perf_counter() - t0)
    vec_s = statistics.median(times)

    t0 = time.perf_counter()
    scalar = [
        decide_one(
            p.model_arrays(),
            p.horizons.tolist(),
            s.ready_agents,
            s.busy_elapsed.tolist(),
            s.ringing_elapsed.tolist(),
            p.effective_target(s.now),
            p.predictive_cap(s),
        )
        for p, s in zip(pacers, snaps, strict=True)
    ]
    scalar_s = time.perf_counter() - t0

    equal = bool(np.array_equal(decisions, np.array(scalar, dtype=np.int64)))
    ratio = scalar_s / vec_s
    print(f"campaigns: {n:,}, each 50 busy agents and 150 ringing calls, "
          f"{len(pacers[0].horizons)} horizons")
    print(f"decide_batch (NumPy): {vec_s * 1e3:.1f} ms per tick "
          f"(median of {args.ticks}), {vec_s / n * 1e6:.1f} us per campaign")
    print(f"scalar pure Python: {scalar_s * 1e3:.1f} ms per tick, "
          f"{scalar_s / n * 1e6:.1f} us per campaign")
    print(f"calls placed this tick: {int(decisions.sum()):,} "
          f"(mean {decisions.mean():.2f} per campaign)")
    print(f"outputs equal: {'yes' if equal else 'NO'}")
    print(f"ratio: scalar / vectorized = {ratio:.1f}x (goal >= {GOAL_RATIO:.0f}x: "
          f"{'PASS' if ratio >= GOAL_RATIO else 'FAIL'})")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
