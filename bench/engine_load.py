"""Engine load: the whole dialer service against the emulator, with 500 simulated agents.

One predictive campaign, `--agents` simulated agents (`sim.agents.SimAgents`: they log in, go
ready, take every call the engine routes to them, wrap up and dispose) and an `Engine` on
SQLite (default) or PostgreSQL (`--db`), talking AMI (default) or ARI to the Asterisk emulator
over loopback sockets. After `--warmup` seconds it measures for `--duration` seconds:

- originates per second sustained: the mean over the window and its slowest 10 s stretch;
- pacing-tick latency p50/p99: how long one tick (decide, lease, write attempts, originate)
  takes;
- answer-to-bridge latency p50/p99: from the engine seeing a live answer to the PBX reporting
  the customer bridged to an agent (the engine's `bridge_latencies`). It includes the wait for
  an agent when none was ready, so it is also given for the calls that found one ready;
- the abandon rate, the CPU of the engine process, of its event loop and of the emulator, the
  event-loop lag, and the event loop's CPU per originate: the figure that does not depend on
  what else runs on the machine (the load average is printed: on a shared machine the engine
  may get only part of a core, and then every latency above is a queueing delay).

Goal: >= 100 originates/s sustained on a 2-core machine, with p99 answer-to-bridge < 200 ms.
The goal's latency is the engine's: answers that found an agent free. With a predictive pacer
some answers also wait for an agent (up to the 2 s connect limit); the p99 over every answer,
waits included, is printed beside it.

Time. By default everything runs in real time (time scale 1.0): the engine's clock runs at
wall speed, from a fixed virtual date inside the contacts' calling hours (so the bench does not
depend on the hour it is run). `--scale 0.1` runs the engine and the emulator 10x faster than
real time (a 12 s talk lasts 1.2 s); the engine's latencies are in engine seconds and are
converted back to wall milliseconds (x scale). Every figure printed is in wall time.

The emulator runs in its own process by default: in production the PBX is another machine, and
on 2 cores it should not steal the engine's event loop. `--in-process` runs it in the engine's
event loop instead (for comparison).

Population (printed): few live answers and short calls, so that 500 agents can absorb 100+
originates/s. An agent's cycle is talk + wrap ~= 13.5 + 3.5 s; at 100 originates/s with 20%
humans and 5% machines passed to agents (AMD off) that is 100 x 0.25 x ~16 s ~= 400 busy agents.

    .venv/bin/python bench/engine_load.py                          # 500 agents, 60 s, AMI
    .venv/bin/python bench/engine_load.py --backend ari --db postgresql://postgres@127.0.0.1/test
    .venv/bin/python bench/engine_load.py --agents 20 --warmup 2 --duration 3 --scale 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine as DbEngine  # noqa: E402
from sqlalchemy import text  # noqa: E402

from cti.ami.telephony import AmiTelephony  # noqa: E402
from cti.ari.telephony import AriTelephony  # noqa: E402
from cti.events import CallEvent, CallEventKind  # noqa: E402
from cti.interface import Telephony  # noqa: E402
from dialer.campaigns import create_campaign, set_campaign_state  # noqa: E402
from dialer.clock import ScaledClock  # noqa: E402
from dialer.db import make_engine, migrate  # noqa: E402
from dialer.domain import CampaignState  # noqa: E402
from dialer.engine import CallState, Engine, campaign_counts  # noqa: E402
from sim.agents import SimAgents, ensure_agents, ensure_fixtures  # noqa: E402
from sim.pbx.runner import run_pbx  # noqa: E402
from sim.population import CalleeKind, Population  # noqa: E402
from tests.factories import add_contacts  # noqa: E402

#: A Tuesday, 15:00 UTC: 10:00 in New York, where every contact lives (calling hours open).
START = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
GOAL_RATE = 100.0
GOAL_BRIDGE_P99_MS = 200.0
WRAP_S = (2.0, 5.0)
GROUP = "bench"


def population() -> Population:
    """The callees: 20% humans with short talks, most of the rest fail fast or ring out."""
    return Population(
        weights={
            CalleeKind.HUMAN: 0.20,
            CalleeKind.MACHINE: 0.05,
            CalleeKind.BUSY: 0.15,
            CalleeKind.NO_ANSWER: 0.30,
            CalleeKind.REJECTED: 0.10,
            CalleeKind.FAILED: 0.10,
            CalleeKind.CONGESTION: 0.10,
        },
        ring_range_s=(2.0, 8.0),
        fail_ring_range_s=(0.5, 3.0),
        no_answer_ring_s=60.0,  # the campaign's ring timeout (25 s) ends these first
        talk_median_s=12.0,
        talk_sigma=0.5,
        talk_max_s=60.0,
        machine_talk_range_s=(3.0, 8.0),
    )


def describe_population(p: Population) -> str:
    total = sum(p.weights.values())
    mix = ", ".join(f"{k.value} {w / total:.0%}" for k, w in p.weights.items())
    return (
        f"population: {mix}; answer after {p.ring_range_s[0]:g}-{p.ring_range_s[1]:g} s, "
        f"talk lognormal median {p.talk_median_s:g} s (sigma {p.talk_sigma:g}, max "
        f"{p.talk_max_s:g} s), machines {p.machine_talk_range_s[0]:g}-"
        f"{p.machine_talk_range_s[1]:g} s; agents wrap up {WRAP_S[0]:g}-{WRAP_S[1]:g} s; "
        "AMD off (machines reach agents), ring timeout 25 s"
    )


# ---- the emulator ----------------------------------------------------------------------------


def _emulator_process(
    ports: mp.Queue[tuple[int, int | None]], stop: MpEvent, ari: bool, scale: float, seed: int
) -> None:
    async def serve() -> None:
        async with run_pbx(ami_port=0, ari_port=0 if ari else None, population=population(),
                           seed=seed, time_scale=scale) as pbx:
            ports.put((pbx.ami_port, pbx.ari_port))
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(serve())


@dataclass
class Emulator:
    ami_port: int
    ari_port: int | None
    pid: int | None  # None: in this process


@asynccontextmanager
async def emulator(ari: bool, scale: float, seed: int, in_process: bool) -> AsyncIterator[Emulator]:
    if in_process:
        async with run_pbx(ami_port=0, ari_port=0 if ari else None, population=population(),
                           seed=seed, time_scale=scale) as pbx:
            yield Emulator(pbx.ami_port, pbx.ari_port, None)
        return
    ctx = mp.get_context("spawn")
    ports: mp.Queue[tuple[int, int | None]] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_emulator_process, args=(ports, stop, ari, scale, seed),
                       daemon=True)
    proc.start()
    try:
        ami_port, ari_port = await asyncio.to_thread(ports.get, True, 60)
        yield Emulator(ami_port, ari_port, proc.pid)
    finally:
        stop.set()
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of this process (None) or of another one (from /proc)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the database ----------------------------------------------------------------------------


@asynccontextmanager
async def database(url: str | None) -> AsyncIterator[tuple[DbEngine, str]]:
    """A fresh database: SQLite in a temporary directory, or a temporary PostgreSQL schema."""
    if url is None or url.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="paceline-engine-load-") as tmp:
            db = make_engine(url or f"sqlite:///{tmp}/load.db")
            migrate(db)
            try:
                yield db, f"sqlite ({url})" if url else "sqlite (file in a temporary directory)"
            finally:
                db.dispose()
        return
    schema = f"bench_engine_{uuid.uuid4().hex[:8]}"
    admin = make_engine(url)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    db = make_engine(f"{url}{sep}options=-csearch_path%3D{schema}")
    try:
        migrate(db)
        yield db, f"postgresql (temporary schema {schema})"
    finally:
        db.dispose()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def prepare(db: DbEngine, contacts: int, agents: int, mode: str) -> tuple[int, list[str]]:
    """The campaign (running), its contacts and the agents of its group."""
    now = START
    cid = create_campaign(db, f"engine-load-{uuid.uuid4().hex[:6]}", now, dial_mode=mode,
                          agent_groups=[GROUP])
    for first in range(0, contacts, 20_000):
        rows = [{"phone1": f"+1212{2_000_000 + i:07d}"}
                for i in range(first, min(contacts, first + 20_000))]
        add_contacts(db, cid, rows, now)
    set_campaign_state(db, cid, CampaignState.RUNNING, now)
    ensure_fixtures(db)
    return cid, ensure_agents(db, agents, groups=[GROUP])


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class Sample:
    wall: float
    originated: int
    live: int
    abandoned: int
    ticks: int
    bridges: int
    cpu: float
    loop_cpu: float
    emulator_cpu: float
    ready: int


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)
    tick_latencies: list[float] = field(default_factory=list)
    bridge_latencies: list[float] = field(default_factory=list)
    bridge_waited: list[bool] = field(default_factory=list)
    load: tuple[float, float] = (float("nan"), float("nan"))
    pending_left: int = 0
    in_flight_max: int = 0
    agents_by_state: dict[str, int] = field(default_factory=dict)
    sim_errors: int = 0


def _sample(eng: Engine, cid: int, emulator_pid: int | None) -> Sample:
    run = eng.campaigns.get(cid)
    return Sample(
        wall=time.perf_counter(),
        originated=eng.originated,
        live=run.live if run is not None else 0,
        abandoned=run.abandoned if run is not None else 0,
        ticks=len(eng.tick_latencies),
        bridges=len(eng.bridge_latencies),
        cpu=cpu_seconds(None),
        loop_cpu=time.thread_time(),  # this runs on the event loop's thread
        emulator_cpu=cpu_seconds(emulator_pid) if emulator_pid is not None else float("nan"),
        ready=eng.board.by_state().get("ready", 0),
    )


class WaitWatch:
    """Marks each entry of `engine.bridge_latencies` with whether that call waited for an agent.

    It wraps the engine's public `on_event` (what its event readers call) and looks at the call
    after each event: a live answer that went WAITING found no ready agent, so its latency
    includes the wait for one. The others show the engine's own speed.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.waited: set[str] = set()
        self.flags: list[bool] = []  # parallel to engine.bridge_latencies
        self._on_event = engine.on_event
        setattr(engine, "on_event", self.on_event)  # noqa: B010 (mypy: no method assignment)

    def on_event(self, pbx: str, ev: CallEvent) -> None:
        call = self.engine.calls.get(ev.call_id)
        self._on_event(pbx, ev)
        if call is None:
            return
        if call.state is CallState.WAITING:
            self.waited.add(call.call_id)
        elif ev.kind is CallEventKind.BRIDGED:
            while len(self.flags) < len(self.engine.bridge_latencies):
                self.flags.append(call.call_id in self.waited)
            self.waited.discard(call.call_id)


async def _loop_lag(out: list[float], every: float = 0.05) -> None:
    """How late the event loop wakes a sleeper: a direct measure of a busy loop."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(every)
        out.append(time.perf_counter() - t0 - every)


async def run_load(args: argparse.Namespace, out: Run) -> str:
    async with database(args.db) as (db, db_label):
        cid, usernames = await asyncio.to_thread(prepare, db, args.contacts, args.agents,
                                                 args.mode)
        async with emulator(args.backend == "ari", args.scale, args.seed,
                            args.in_process) as emu:
            tel: Telephony
            if args.backend == "ami":
                tel = AmiTelephony("127.0.0.1", emu.ami_port, "dialer", "dialer",
                                   action_timeout=30)
            else:
                tel = AriTelephony(f"http://127.0.0.1:{emu.ari_port}", "dialer", "dialer",
                                   app="paceline")
            async with tel:
                clock = ScaledClock(args.scale, START)
                eng = Engine(db, {"pbx1": tel}, {"pbx1": "PJSIP/{number}@trunk"},
                             node_id=f"bench-{os.getpid()}", clock=clock, tick_s=args.tick,
                             campaigns=[cid])
                watch = WaitWatch(eng)
                sim = SimAgents(eng, usernames, campaign_id=cid, seed=args.seed, wrap_s=WRAP_S)
                async with asyncio.TaskGroup() as tg:
                    engine_task = tg.create_task(eng.run())
                    agents_task = tg.create_task(sim.run())
                    lag_task = tg.create_task(_loop_lag(out.loop_lag))
                    t0 = time.perf_counter()
                    mark: Sample | None = None
                    while True:
                        await asyncio.sleep(1.0)
                        if engine_task.done():
                            break  # the engine died: the TaskGroup raises its error
                        elapsed = time.perf_counter() - t0
                        if mark is None and elapsed >= args.warmup:
                            mark = _sample(eng, cid, emu.pid)
                            out.samples.append(mark)
                            out.load = (os.getloadavg()[0], out.load[1])
                            out.loop_lag.clear()
                        elif mark is not None:
                            out.samples.append(_sample(eng, cid, emu.pid))
                            out.in_flight_max = max(out.in_flight_max, len(eng.calls))
                        if args.verbose:
                            st = eng.status()
                            print(f"  {elapsed:5.1f}s originated={eng.originated} "
                                  f"{st.originates_per_s:.0f}/s in flight={st.calls_in_flight} "
                                  f"agents={st.agents_by_state}", flush=True)
                        if elapsed >= args.warmup + args.duration:
                            break
                    first, last = out.samples[0], out.samples[-1]
                    out.tick_latencies = eng.tick_latencies[first.ticks:last.ticks]
                    out.bridge_latencies = eng.bridge_latencies[first.bridges:last.bridges]
                    out.bridge_waited = watch.flags[first.bridges:last.bridges]
                    out.agents_by_state = eng.board.by_state()
                    out.load = (out.load[0], os.getloadavg()[0])
                    out.sim_errors = len(sim.errors)
                    eng.stop()
                    agents_task.cancel()
                    lag_task.cancel()
            out.pending_left = campaign_counts(db, cid).get("pending", 0)
    return db_label


# ---- report ----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def report(args: argparse.Namespace, out: Run, db_label: str) -> bool:
    """Print the figures and the PASS/FAIL lines; True when both goals are met."""
    s = out.samples
    if len(s) < 2:
        print("FAIL  the measured window is empty (the engine stopped early?)")
        return False
    first, last = s[0], s[-1]
    wall = last.wall - first.wall
    originated = last.originated - first.originated
    rate = originated / wall
    window = max(1, min(10, len(s) - 1))
    slowest = min((s[i + window].originated - s[i].originated) / (s[i + window].wall - s[i].wall)
                  for i in range(len(s) - window))
    live = last.live - first.live
    abandoned = last.abandoned - first.abandoned
    ms = 1000.0 * args.scale  # engine seconds -> wall milliseconds
    ticks = [t * ms for t in out.tick_latencies]
    bridges = [b * ms for b in out.bridge_latencies]
    direct = [b for b, waited in zip(bridges, out.bridge_waited, strict=False) if not waited]
    cpu = (last.cpu - first.cpu) / wall
    loop_cpu = last.loop_cpu - first.loop_cpu
    emu_cpu = (last.emulator_cpu - first.emulator_cpu) / wall
    lag = [x * 1000.0 for x in out.loop_lag]
    ready = [x.ready for x in s]

    where = "in the engine's process and event loop" if args.in_process else \
        "in its own process (the PBX is another machine in production)"
    speed = "real time" if args.scale == 1.0 else f"{1 / args.scale:g}x faster than real time"
    print(f"engine load: {args.agents} simulated agents, one {args.mode} campaign of "
          f"{args.contacts:,} contacts, backend {args.backend.upper()}, database {db_label}")
    print(f"emulator: {where}; time scale {args.scale:g} ({speed}), tick {args.tick:g} s; "
          "all figures below in wall time")
    print(describe_population(population()))
    print(f"window: {wall:.1f} s after {args.warmup:g} s of warm-up; {os.cpu_count()} CPUs, "
          f"load average {out.load[0]:.1f} before and {out.load[1]:.1f} at the end "
          "(other processes compete for the cores above ~1)")
    print(f"originates: {originated:,} = {rate:,.1f}/s sustained (slowest {window} s stretch "
          f"{slowest:,.1f}/s); at most {out.in_flight_max:,} calls in flight")
    print(f"pacing tick: {len(ticks):,} ticks, p50 {pct(ticks, 50):.1f} ms, "
          f"p99 {pct(ticks, 99):.1f} ms, max {max(ticks, default=float('nan')):.1f} ms")
    print(f"answer to bridge: {len(bridges):,} bridged, p50 {pct(bridges, 50):.1f} ms, "
          f"p99 {pct(bridges, 99):.1f} ms, max {max(bridges, default=float('nan')):.1f} ms")
    print(f"answer to bridge, the {len(direct):,} that found an agent ready: "
          f"p50 {pct(direct, 50):.1f} ms, p99 {pct(direct, 99):.1f} ms "
          f"({len(bridges) - len(direct):,} waited for an agent to free up)")
    print(f"abandon rate: {abandoned:,} of {live:,} live answers = "
          f"{abandoned / live if live else 0.0:.2%} in the window, {last.abandoned:,} of "
          f"{last.live:,} = {last.abandoned / last.live if last.live else 0.0:.2%} over the "
          "whole run (what the pacer holds to the 3% cap: it spends the budget the cold start "
          f"saved); ready agents min {min(ready)}, mean {statistics.fmean(ready):.0f}")
    emu = "n/a (same process)" if args.in_process else f"{emu_cpu:.0%}"
    per_call = 1000.0 * loop_cpu / originated if originated else float("nan")
    print(f"CPU: engine process {cpu:.0%} of one core (threads included), its event loop "
          f"{loop_cpu / wall:.0%}; emulator {emu}; event-loop lag p50 {pct(lag, 50):.1f} ms, "
          f"p99 {pct(lag, 99):.1f} ms")
    print(f"event-loop CPU per originate: {per_call:.2f} ms (one free core would sustain "
          f"~{1000.0 / per_call if per_call > 0 else float('nan'):,.0f} originates/s of this mix)")
    print(f"agents at the end: {out.agents_by_state}; contacts still pending: "
          f"{out.pending_left:,}; simulated agent errors: {out.sim_errors}")
    if out.pending_left == 0:
        print("note: the contacts ran out during the run; give more with --contacts")
    ok_rate = rate >= GOAL_RATE
    # The goal judges the engine: from the live answer, with an agent free to take it, to the
    # PBX's bridge. A predictive pacer also lets some answers wait for an agent to free up
    # (within the 2 s connect limit, else the information message): that wait is the pacing
    # policy, not engine latency, and is shown separately.
    p99 = pct(direct, 99)
    ok_bridge = bool(direct) and p99 < GOAL_BRIDGE_P99_MS
    print(f"{'PASS' if ok_rate else 'FAIL'}  originates sustained {rate:,.1f}/s "
          f"(goal >= {GOAL_RATE:g}/s)")
    print(f"{'PASS' if ok_bridge else 'FAIL'}  answer-to-bridge p99 {p99:.1f} ms with an agent "
          f"free (goal < {GOAL_BRIDGE_P99_MS:g} ms)")
    print(f"info  answer-to-bridge p99 {pct(bridges, 99):.1f} ms over every bridged answer, "
          "including the waits for an agent the pacer allows (at most the 2 s connect limit)")
    return ok_rate and ok_bridge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=500)
    ap.add_argument("--duration", type=float, default=60.0, help="measured wall seconds")
    ap.add_argument("--warmup", type=float, default=20.0, help="wall seconds before measuring")
    ap.add_argument("--contacts", type=int, default=None,
                    help="default: enough for 150 originates/s over warm-up and window")
    ap.add_argument("--backend", choices=("ami", "ari"), default="ami")
    ap.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="time scale of engine and emulator (1.0: real time)")
    ap.add_argument("--tick", type=float, default=1.0, help="pacing tick, engine seconds")
    ap.add_argument("--mode", default="predictive", help="the campaign's dial mode")
    ap.add_argument("--in-process", action="store_true",
                    help="run the emulator in the engine's event loop")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="print progress every second")
    args = ap.parse_args(argv)
    if args.agents < 1 or args.duration <= 0 or args.warmup < 0 or not args.scale > 0:
        ap.error("--agents >= 1, --duration > 0, --warmup >= 0 and --scale > 0")
    if args.contacts is None:
        args.contacts = int(150 * (args.warmup + args.duration) / args.scale) + 1000
    logging.basicConfig(level=logging.WARNING)
    out = Run()
    db_label = asyncio.run(run_load(args, out))
    report(args, out, db_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
