"""Pacing quality: the standard scenarios through the discrete-event simulator, per dialing mode.

Runs `sim/scenarios/standard.toml` (live answer 0.25, ring to answer uniform 4-20 s, busy 0.15,
no answer 0.60 with a 25 s timeout, lognormal talk with a 90 s mean, 15 s wrap-up, 8 h) at
10, 25, 50 and 100 agents with 5 seeds each, for each mode (progressive, vicidial_adaptive,
predictive), in 2 worker processes. It prints per mode and size the occupancy (mean over seeds),
the abandon rate (max over seeds, and pooled: all abandons / all live answers), live answers
per agent-hour, the p95 wait and the mean dial level; then checks the goals of issue 3:

- predictive never exceeds 3.0% abandon on any seed;
- at 50 agents and more, predictive occupancy is at least 90%; at 10 agents at least 75%;
- on every size predictive beats vicidial_adaptive by at least 3 occupancy points at no higher
  (pooled) abandon rate.

It also runs predictive on `answer_drop.toml` (live answers 0.35, then 0.10 from mid-shift),
which must keep every seed at or under 3.0% (skip with --no-drop), and prints the wall time of
one 8 h x 100 agents run (from the grid when it holds one, per mode).

    python bench/pacing_quality.py [--sizes 10,25,50,100] [--seeds 5] [--hours 8]
        [--modes progressive,vicidial_adaptive,predictive] [--workers 2] [--no-drop] [--strict]

Quick tuning loop: `--sizes 50 --seeds 1 --hours 2 --modes predictive` (a few seconds).
`--strict` exits 1 when a goal fails (a goal that the chosen sizes/modes cannot check is SKIP).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from sim.des import simulate, with_changes  # noqa: E402
from sim.scenario import SCENARIO_DIR, load_scenario  # noqa: E402

CAP = 0.03


@dataclass(frozen=True, slots=True)
class Job:
    scenario: str  # file name in sim/scenarios
    mode: str
    agents: int
    seed: int
    hours: float


def run_job(job: Job) -> dict[str, Any]:
    """One simulation; returns the few metrics the report needs (cheap to pickle)."""
    sc = with_changes(load_scenario(SCENARIO_DIR / job.scenario), agents=job.agents,
                      seed=job.seed, hours=job.hours, mode=job.mode)
    result = simulate(sc)
    m = result.metrics
    return {
        "job": job,
        "occupancy": m["occupancy"] or 0.0,
        "abandon_rate": m["abandon_rate"],
        "abandons": m["abandons"],
        "live_answers": m["live_answers"],
        "la_per_agent_hour": m["live_answers_per_agent_hour"] or 0.0,
        "wait_p95_s": m["wait_p95_s"] or 0.0,
        "dial_level": m["dial_level_mean"] or 0.0,
        "wall_s": result.wall_s,
    }


def run_all(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    # The biggest runs first, so the two workers finish together.
    jobs = sorted(jobs, key=lambda j: -j.agents * j.hours)
    if workers <= 1:
        return [run_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_job, jobs, chunksize=1))


@dataclass(slots=True)
class Cell:
    occupancy: float
    abandon_max: float
    abandon_pooled: float
    la_per_agent_hour: float
    wait_p95_s: float
    dial_level: float
    worst_seed: int
    runs: int


def summarise(results: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int], Cell]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        job: Job = r["job"]
        groups.setdefault((job.scenario, job.mode, job.agents), []).append(r)
    cells = {}
    for key, rs in groups.items():
        n = len(rs)
        worst = max(rs, key=lambda r: r["abandon_rate"])
        live = sum(r["live_answers"] for r in rs)
        cells[key] = Cell(
            occupancy=sum(r["occupancy"] for r in rs) / n,
            abandon_max=worst["abandon_rate"],
            abandon_pooled=sum(r["abandons"] for r in rs) / live if live else 0.0,
            la_per_agent_hour=sum(r["la_per_agent_hour"] for r in rs) / n,
            wait_p95_s=max(r["wait_p95_s"] for r in rs),
            dial_level=sum(r["dial_level"] for r in rs) / n,
            worst_seed=worst["job"].seed,
            runs=n,
        )
    return cells


def print_table(cells: dict[tuple[str, str, int], Cell], scenario: str, modes: list[str],
                sizes: list[int]) -> None:
    print(f"{'mode':<18} {'agents':>6} {'occupancy':>9} {'abandon max':>11} "
          f"{'abandon pooled':>14} {'LA/agent-h':>10} {'wait p95':>8} {'dial lvl':>8}")
    for mode in modes:
        for size in sizes:
            c = cells.get((scenario, mode, size))
            if c is None:
                continue
            print(f"{mode:<18} {size:>6} {c.occupancy:>9.1%} {c.abandon_max:>11.2%} "
                  f"{c.abandon_pooled:>14.2%} {c.la_per_agent_hour:>10.1f} "
                  f"{c.wait_p95_s:>7.2f}s {c.dial_level:>8.2f}")


def check_goals(cells: dict[tuple[str, str, int], Cell], sizes: list[int],
                drop: bool) -> list[tuple[str, str, str]]:
    """(goal, PASS | FAIL | SKIP, detail) for each goal of issue 3."""
    std = "standard.toml"
    out: list[tuple[str, str, str]] = []

    def pred(size: int, scenario: str = std) -> Cell | None:
        return cells.get((scenario, "predictive", size))

    runs = [(s, c) for s in sizes if (c := pred(s)) is not None]
    if runs:
        size, worst = max(runs, key=lambda sc: sc[1].abandon_max)
        ok = worst.abandon_max <= CAP
        out.append(("predictive abandon <= 3.0% on every seed (standard)",
                    "PASS" if ok else "FAIL",
                    f"worst {worst.abandon_max:.2%} at {size} agents, seed {worst.worst_seed}"))
    else:
        out.append(("predictive abandon <= 3.0% on every seed (standard)", "SKIP",
                    "predictive not run"))
    if drop:
        druns = [(s, c) for s in sizes if (c := pred(s, "answer_drop.toml")) is not None]
        if druns:
            size, worst = max(druns, key=lambda sc: sc[1].abandon_max)
            out.append(("predictive abandon <= 3.0% on every seed (answer 0.35 -> 0.10)",
                        "PASS" if worst.abandon_max <= CAP else "FAIL",
                        f"worst {worst.abandon_max:.2%} at {size} agents, "
                        f"seed {worst.worst_seed}"))
    for size in sizes:
        c = pred(size)
        goal = 0.90 if size >= 50 else 0.75 if size == 10 else None  # as issue 3 states them
        if goal is None:
            continue
        name = f"predictive occupancy >= {goal:.0%} at {size} agents"
        if c is None:
            out.append((name, "SKIP", "predictive not run"))
        else:
            out.append((name, "PASS" if c.occupancy >= goal else "FAIL",
                        f"{c.occupancy:.1%}"))
    for size in sizes:
        name = (f"predictive beats vicidial_adaptive by >= 3 points at no higher abandon, "
                f"{size} agents")
        p, v = pred(size), cells.get((std, "vicidial_adaptive", size))
        if p is None or v is None:
            out.append((name, "SKIP", "needs both modes"))
            continue
        gain = (p.occupancy - v.occupancy) * 100.0
        ok = gain >= 3.0 and p.abandon_pooled <= v.abandon_pooled
        out.append((name, "PASS" if ok else "FAIL",
                    f"{gain:+.1f} points, abandon {p.abandon_pooled:.2%} vs "
                    f"{v.abandon_pooled:.2%}"))
    return out


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", type=_ints, default=[10, 25, 50, 100],
                    help="agent counts, comma-separated (default 10,25,50,100)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per size (1..N; default 5)")
    ap.add_argument("--hours", type=float, default=8.0, help="shift length (default 8)")
    ap.add_argument("--modes", default="progressive,vicidial_adaptive,predictive",
                    help="comma-separated modes")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--no-drop", action="store_true",
                    help="skip the time-varying answer-rate check (answer_drop.toml)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    sizes = sorted(set(args.sizes))
    seeds = list(range(1, args.seeds + 1))
    drop = not args.no_drop and "predictive" in modes

    jobs = [Job("standard.toml", m, n, s, args.hours) for m in modes for n in sizes
            for s in seeds]
    if drop:
        jobs += [Job("answer_drop.toml", "predictive", n, s, args.hours) for n in sizes
                 for s in seeds]
    print(f"pacing quality: {len(jobs)} runs ({', '.join(modes)}; agents "
          f"{', '.join(map(str, sizes))}; seeds 1-{args.seeds}; {args.hours:g} h) on "
          f"{args.workers} worker(s), {os.cpu_count()} CPUs", flush=True)
    t0 = time.perf_counter()
    results = run_all(jobs, args.workers)
    elapsed = time.perf_counter() - t0
    cells = summarise(results)

    print(f"\nstandard.toml ({args.hours:g} h, {args.seeds} seed(s) per cell; occupancy and "
          "LA/agent-h are means over seeds)")
    print_table(cells, "standard.toml", modes, sizes)
    if drop:
        print(f"\nanswer_drop.toml: live answers 0.35, then 0.10 from mid-shift "
              f"({args.hours / 2:g} h of {args.hours:g} h)")
        print_table(cells, "answer_drop.toml", ["predictive"], sizes)

    print()
    big = [r for r in results if r["job"].agents == 100 and r["job"].hours == 8.0
           and r["job"].scenario == "standard.toml"]
    if big:
        for mode in modes:
            walls = [r["wall_s"] for r in big if r["job"].mode == mode]
            if walls:
                how = ("1 worker" if args.workers <= 1 else
                       f"{args.workers} workers sharing the CPUs")
                print(f"timing: one 8 h x 100 agents run, {mode}: {min(walls):.1f} s "
                      f"(fastest of {len(walls)}; max {max(walls):.1f} s; {how})")
    else:
        print("timing: no 8 h x 100 agents run in this grid (use --sizes 100 --hours 8)")
    print(f"total wall time: {elapsed:.1f} s for {len(jobs)} runs")

    print()
    failed = False
    for name, verdict, detail in check_goals(cells, sizes, drop):
        failed |= verdict == "FAIL"
        print(f"{verdict}  {name}: {detail}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
