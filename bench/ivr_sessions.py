"""IVR sessions: N concurrent callers walk the payment flow by DTMF, through `ivr.ari.IvrApp`
and the ARI emulator over loopback, with the interpreter alone as the baseline of the same run.

    .venv/bin/python bench/ivr_sessions.py                    # 1,000 callers, real time
    .venv/bin/python bench/ivr_sessions.py --sessions 20 --ramp 0.5 --time-scale 0.1
    .venv/bin/python bench/ivr_sessions.py --json             # the figures as one JSON object

Goal (issue 6): 1,000 concurrent sessions, p99 from a DTMF event to the command it causes
under 20 ms, on this (2-core) machine.

The callers live in the emulator (`sim.pbx.ari_server.AriServer`), which runs in its own
process by default (`--in-process`: in the app's event loop, for comparison): in production
Asterisk is another machine, and on 2 cores it should not steal the app's event loop. There
its garbage collector is off (`--emulator-gc`: on), as Asterisk has none (see `emulator()`).
The app process runs what `paceline run` runs for an `[ivr]` section: an `IvrApp` (one
`SessionRunner` + `ivr.interpreter.Session` per call) on an aiohttp session configured as the
service configures it, with in-memory services (a static CRM answer, `SimGateway`, a payment
store that counts). No database: the flow's services are not what is measured.

The flow is `ivr/examples/payment.yaml`, unchanged. Each caller dials in (the calls are
spread evenly over `--ramp` seconds), hears the welcome and the amount due, and as each input
prompt starts it waits a moment ("think" time), then keys, 0.10-0.20 s apart: 1 (pay), a
card number and # (Visa/Mastercard 16 digits, some Amex 15), the expiry (4 digits), the CVV
(3, or 4 for Amex): 25 keys a call. The gateway approves; the call ends after the
receipt and the shared goodbye (about 20 s a call, so with a 5 s ramp every call is in the
IVR at once for several seconds).

Measured:
- sessions/s completed over the run, and the peak number of sessions running at once (counted
  by the app: a session's `started` to its `finished`);
- DTMF to command: `SessionRunner.dtmf_latencies`, from the digit reaching the runner
  (`feed()`, just after the app decoded the WebSocket frame) to the first command carried out
  because of it (a StopPlayback, a Play, a timer...): the goal's figure;
- end to end (emulator clock): from the emulator queueing a ChannelDtmfReceived for its
  WebSocket to the app's REST request arriving at the emulator's HTTP handler, for the keys
  that make the app call ARI (the key that barges into a playing prompt, the last key of an
  answer). It adds both event loops (the emulator's too), the WebSocket, the JSON decode and
  the HTTP request to the figure above; it is not the goal's figure;
- the baseline: each session's recorded event stream replayed through a fresh interpreter with
  no I/O, timing `handle()` for the same digits; the ratio runner p99 / interpreter p99;
- CPU of the app process and of the emulator, the load average, the event-loop lag of both
  processes and their garbage collectors' longest pauses: a pause stops a whole event loop,
  and the tails (max, and the end-to-end p99) line up with them.
`--profile` prints where the app process spent its CPU (cProfile, top functions; it slows the
app several times over, so its latencies are not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import io
import json
import math
import multiprocessing as mp
import os
import pickle
import pstats
import random
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.engine_load import cpu_seconds  # noqa: E402
from cti.ari.rest import AriRestClient  # noqa: E402
from ivr.ari import IvrApp  # noqa: E402
from ivr.interpreter import Session  # noqa: E402
from ivr.model import Flow  # noqa: E402
from ivr.payments import SimGateway  # noqa: E402
from ivr.protocol import Dtmf, Event, Trace  # noqa: E402
from ivr.runner import Services  # noqa: E402
from ivr.validate import load_and_check  # noqa: E402
from sim.pbx.ari_server import AriServer  # noqa: E402

GOAL_SESSIONS = 1000
GOAL_P99_MS = 20.0
APP = "paceline-ivr"
DNID = "0800123456"
FLOW_FILE = ROOT / "ivr" / "examples" / "payment.yaml"
TODAY = date(2026, 3, 10)  # the cards' expiry is checked against it
USER = PASSWORD = "dialer"  # the emulator's defaults

#: Length (s) of each prompt of the payment flow and of the shared goodbye. Media the
#: emulator does not know (`number:42`, `digits:1111`) end at once.
SOUNDS: dict[str, float] = {
    "paceline/welcome-payments": 3.0,
    "paceline/amount-due-is": 1.2,
    "paceline/pounds-and": 0.6,
    "paceline/pence": 0.5,
    "paceline/press-1-to-pay": 2.0,
    "paceline/no-input": 1.5,
    "paceline/invalid-choice": 1.5,
    "paceline/pay-card-number": 3.0,
    "paceline/pay-invalid-card-number": 2.0,
    "paceline/pay-expiry": 2.5,
    "paceline/pay-invalid-expiry": 2.0,
    "paceline/pay-expired": 2.0,
    "paceline/pay-cvv": 2.5,
    "paceline/pay-invalid-cvv": 2.0,
    "paceline/pay-processing": 1.5,
    "paceline/pay-approved": 1.5,
    "paceline/pay-receipt": 2.0,
    "paceline/thanks-goodbye": 2.0,
    "paceline/connecting": 2.0,
    "paceline/agents-unavailable": 4.0,
}

Step = Literal["menu", "card", "expiry", "cvv"]
#: The prompt sound that asks for each answer (the caller answers when it starts).
ASKS: dict[str, Step] = {
    "paceline/press-1-to-pay": "menu",
    "paceline/pay-card-number": "card",
    "paceline/pay-expiry": "expiry",
    "paceline/pay-cvv": "cvv",
}
#: Think time (emulated s) from the prompt starting to the first key: the menu's digit comes
#: during the amount (barge-in); card digits often before the prompt has finished.
THINK_S: dict[Step, tuple[float, float]] = {
    "menu": (1.0, 3.0), "card": (0.8, 2.5), "expiry": (0.8, 2.0), "cvv": (0.8, 2.0),
}
KEY_GAP_S = (0.10, 0.20)


# ---- the callers (in the emulator's process) -------------------------------------------------


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    """A card number starting with `prefix`, `length` digits, with a valid Luhn check digit."""
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # every other digit from the one left of the check digit: doubled
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


@dataclass
class Caller:
    """One caller's answers, drawn from the seed (test cards: the bench's memory only)."""

    rng: random.Random
    card: str
    expiry: str
    cvv: str

    @classmethod
    def make(cls, seed: int, index: int) -> Caller:
        rng = random.Random(seed * 1_000_003 + index)
        roll = rng.random()
        if roll < 0.1:
            card, cvv = "378282246310005", f"{rng.randrange(10_000):04d}"  # Amex
        else:
            card = luhn_complete("4" if roll < 0.7 else "51", 16, rng)
            cvv = f"{rng.randrange(1000):03d}"
        expiry = f"{rng.randint(1, 12):02d}{rng.randint(27, 31)}"
        return cls(rng, card, expiry, cvv)

    def keys(self, step: Step) -> str:
        return {"menu": "1", "card": self.card + "#", "expiry": self.expiry,
                "cvv": self.cvv}[step]


class BenchAriServer(AriServer):
    """The emulator with the callers in it.

    A caller answers a prompt when the app starts playing it (`POST .../play`). For the end to
    end figure a key is marked when the app should call ARI because of it (it barges into a
    prompt still playing, or it ends an answer); the first REST request about that channel
    afterwards closes the measurement.
    """

    def __init__(self, *, seed: int, time_scale: float) -> None:
        super().__init__(seed=seed, time_scale=time_scale, sounds=SOUNDS,
                         username=USER, password=PASSWORD)
        self.seed = seed
        self.callers: dict[str, Caller] = {}
        self.placed = 0
        self.peak_live = 0
        self.keys_sent = 0
        self.e2e: list[float] = []
        self._marks: dict[str, deque[bool]] = {}  # per channel: is each key queued marked?
        self._sent_at: dict[str, float] = {}  # per channel: the last marked key sent

    async def __aenter__(self) -> BenchAriServer:
        await self.start()
        return self

    def place_call(self, index: int) -> None:
        ani = f"+4477009{index:05d}"
        cid = self.place_inbound(ani, DNID, app=APP)
        self.callers[cid] = Caller.make(self.seed, index)
        self.placed += 1
        self.peak_live = max(self.peak_live, len(self.live_channel_ids()))

    def _play(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        response = super()._play(channel_id, q)
        caller = self.callers.get(channel_id)
        sounds = [m.split(":", 1)[1] for m in str(q.get("media") or "").split(",")
                  if m.startswith("sound:")]
        steps = [ASKS[s] for s in sounds if s in ASKS]
        if caller is not None and steps:
            self._caller_answers(channel_id, caller, steps[-1], str(q.get("playbackId") or ""))
        return response

    def _caller_answers(self, cid: str, caller: Caller, step: Step, playback_id: str) -> None:
        loop = asyncio.get_running_loop()
        keys = caller.keys(step)
        at = caller.rng.uniform(*THINK_S[step])
        for i, key in enumerate(keys):
            loop.call_later(at * self.time_scale, self._key, cid, key,
                            i == 0, i == len(keys) - 1, playback_id)
            at += caller.rng.uniform(*KEY_GAP_S)

    def _key(self, cid: str, key: str, first: bool, last: bool, playback_id: str) -> None:
        if self._closing or cid not in self._channels:
            return
        marked = last or (first and playback_id in self._playbacks)
        self._marks.setdefault(cid, deque()).append(marked)
        self.press(cid, key)

    def _chan_event(self, kind: str, chan: Any, *, pre: Mapping[str, Any] | None = None,
                    mid: Mapping[str, Any] | None = None,
                    post: Mapping[str, Any] | None = None) -> None:
        if kind == "ChannelDtmfReceived":
            marks = self._marks.get(chan.id)
            if marks:
                self.keys_sent += 1
                if marks.popleft():
                    self._sent_at[chan.id] = time.perf_counter()
        super()._chan_event(kind, chan, pre=pre, mid=mid, post=post)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        parts = request.match_info["tail"].split("/")
        if len(parts) >= 2 and parts[0] in ("channels", "playbacks"):
            # playback ids are "<channel id>:pb<n>" (ivr.interpreter)
            sent = self._sent_at.pop(parts[1].rsplit(":pb", 1)[0], None)
            if sent is not None:
                self.e2e.append(arrived - sent)
        return await super()._dispatch(request)

    def report(self, cpu_s: float) -> dict[str, Any]:
        return {"placed": self.placed, "peak_live": self.peak_live, "keys": self.keys_sent,
                "e2e": self.e2e, "requests": sum(self.requests.values()), "cpu_s": cpu_s,
                "live_at_end": len(self.live_channel_ids())}


async def place_calls(server: BenchAriServer, n: int, ramp_s: float) -> None:
    """`n` calls, evenly spread over `ramp_s` real seconds (each on its own slot: no drift)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        delay = start + i * ramp_s / max(1, n) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        server.place_call(i)


async def serve_callers(server: BenchAriServer, orders: Callable[[], Any],
                        tell: Callable[[Any], None]) -> None:
    """The emulator side: `("go", n, ramp_s)` places the calls, `("stop",)` reports."""
    go = await orders()
    cpu0 = time.process_time()
    lag: list[float] = []
    lag_task = asyncio.create_task(loop_lag(lag))
    with GcPauses() as gc_pauses:
        await place_calls(server, go[1], go[2])
        await orders()
    lag_task.cancel()
    report = server.report(time.process_time() - cpu0)
    report["loop_lag"] = lag
    report["gc_max_pause_s"] = max((p for _, p in gc_pauses.pauses), default=0.0)
    report["gc_gen2"] = sum(1 for g, _ in gc_pauses.pauses if g == 2)
    tell(report)


def _emulator_process(inbox: mp.Queue[Any], outbox: mp.Queue[Any], seed: int,
                      scale: float, gc_on: bool) -> None:
    if not gc_on:
        gc.disable()  # see `emulator()`

    async def main() -> None:
        async with BenchAriServer(seed=seed, time_scale=scale) as server:
            outbox.put((server.port, os.getpid()))
            await serve_callers(server, lambda: asyncio.to_thread(inbox.get), outbox.put)

    asyncio.run(main())


@dataclass
class Emulator:
    port: int
    pid: int | None  # None: in this process
    send: Callable[[Any], None]
    report: Callable[[], Any]  # awaitable: the emulator's report after ("stop",)


@asynccontextmanager
async def emulator(seed: int, scale: float, in_process: bool,
                   gc_on: bool) -> AsyncIterator[Emulator]:
    """The emulator with its callers, in its own process unless `in_process`.

    In its own process its garbage collector is off unless `gc_on`: it stands for Asterisk,
    which has none, and its collections (the emulator keeps logs of every event and request)
    stop its event loop for up to ~100 ms at 1,000 calls, which would then be charged to the
    app as late DTMF events and late REST answers. A 30 s run leaks only the emulator's
    garbage cycles."""
    if in_process:
        async with BenchAriServer(seed=seed, time_scale=scale) as server:
            inbox: asyncio.Queue[Any] = asyncio.Queue()
            reports: asyncio.Queue[Any] = asyncio.Queue()
            task = asyncio.create_task(serve_callers(server, inbox.get, reports.put_nowait))
            try:
                yield Emulator(server.port, None, inbox.put_nowait, reports.get)
            finally:
                task.cancel()
        return
    ctx = mp.get_context("spawn")
    to_child: mp.Queue[Any] = ctx.Queue()
    from_child: mp.Queue[Any] = ctx.Queue()
    proc = ctx.Process(target=_emulator_process,
                       args=(to_child, from_child, seed, scale, gc_on), daemon=True)
    proc.start()
    try:
        port, pid = await asyncio.to_thread(from_child.get, True, 60)
        yield Emulator(port, pid, to_child.put,
                       lambda: asyncio.to_thread(from_child.get, True, 60))
    finally:
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()


# ---- the app (this process) ------------------------------------------------------------------


class StaticCrm:
    """The balance lookup of payment.yaml: every caller owes the same."""

    async def lookup(self, method: str, url: str, params: Mapping[str, str],
                     timeout_s: float) -> Mapping[str, Any]:
        return {"balance": {"amount": "42.50", "invoice": "INV-1001"}}


class CountingPaymentStore:
    def __init__(self) -> None:
        self.results: Counter[str] = Counter()

    async def record_payment(self, *, session_id: str, flow: str, node: str, ani: str,
                             contact_id: int | None, action: str, amount: str, currency: str,
                             brand: str, last4: str, approved: bool, token: str,
                             error: str) -> None:
        self.results["approved" if approved else error or "declined"] += 1


class RecordingSession(Session):
    """The interpreter, keeping the events it handled for the no-I/O replay."""

    def __init__(self, flow: Flow, *, session_id: str, variables: dict[str, Any],
                 today: date) -> None:
        super().__init__(flow, session_id=session_id, variables=variables, today=today)
        self.flow = flow
        self.session_id = session_id
        self.initial = dict(variables)
        self.today = today
        self.events: list[Event] = []

    def handle(self, event: Event) -> list[Any]:
        self.events.append(event)
        return super().handle(event)


class Recorder:
    """The sessions' event streams. A finished session is packed into one `bytes` (which the
    garbage collector does not scan) and let go, as the app lets its sessions go: kept alive,
    1,000 finished sessions would add their objects to every collection the app makes."""

    def __init__(self) -> None:
        self.live: dict[str, RecordingSession] = {}
        self.packed: list[bytes] = []

    def __call__(self, flow: Flow, *, session_id: str, variables: dict[str, Any],
                 today: date) -> RecordingSession:
        """The app's `session_factory`."""
        session = RecordingSession(flow, session_id=session_id, variables=variables,
                                   today=today)
        self.live[session_id] = session
        return session

    def finished(self, session_id: str) -> None:
        rec = self.live.pop(session_id, None)
        if rec is not None:
            self.packed.append(pickle.dumps((rec.session_id, rec.initial, rec.today,
                                             rec.events)))

    def streams(self) -> Iterator[tuple[str, dict[str, Any], date, list[Event]]]:
        for blob in self.packed:
            yield pickle.loads(blob)


@dataclass
class Tracker:
    """The app's `on_event`: sessions running, their outcomes and their DTMF latencies."""

    n: int
    recorder: Recorder
    app: IvrApp | None = None
    live: int = 0
    peak: int = 0
    finished: int = 0
    first_start: float = math.nan
    last_end: float = math.nan
    started_at: dict[str, float] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, channel_id: str, kind: str, detail: Mapping[str, Any]) -> None:
        if kind == "started":
            now = time.perf_counter()
            if self.live == 0 and self.finished == 0:
                self.first_start = now
            self.started_at[channel_id] = now
            self.live += 1
            self.peak = max(self.peak, self.live)
        elif kind == "finished":
            now = time.perf_counter()
            self.live -= 1
            self.finished += 1
            self.last_end = now
            self.durations.append(now - self.started_at.pop(channel_id, now))
            self.outcomes[f"{detail['reason']} at {detail['node']}"] += 1
            # `finished` comes from inside SessionRunner.run(), while the app still holds
            # the call: its runner's latencies are complete here.
            runner = self.app.runner(channel_id) if self.app is not None else None
            if runner is not None:
                self.latencies.extend(runner.dtmf_latencies)
            self.recorder.finished(channel_id)
            if self.finished >= self.n:
                self.done.set()


async def loop_lag(samples: list[float], period_s: float = 0.005) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period_s)
        samples.append(loop.time() - t - period_s)


class GcPauses:
    """The garbage collector's pauses in this process inside `with` (a pause stops the loop)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._began))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


@dataclass
class Run:
    flow: Flow
    recorder: Recorder
    tracker: Tracker
    emulator: dict[str, Any]
    emulator_pid: int | None
    wall_s: float
    app_cpu_s: float
    emulator_cpu_s: float
    lag: list[float]
    gc_pauses: list[tuple[int, float]]
    payments: Counter[str]
    load: tuple[float, float]
    profile: str = ""


async def run_sessions(args: argparse.Namespace) -> Run:
    flow = load_and_check(FLOW_FILE)
    recorder = Recorder()
    tracker = Tracker(args.sessions, recorder)
    store = CountingPaymentStore()
    services = Services(crm=StaticCrm(), gateway=SimGateway(), payments=store)
    load_before = os.getloadavg()[0]
    async with emulator(args.seed, args.time_scale, args.in_process,
                        args.emulator_gc) as emu:
        # As dialer.service builds the IVR's HTTP session (default connector: 100 connections).
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"},
                                         timeout=aiohttp.ClientTimeout(total=10)) as http:
            rest = AriRestClient(http, f"http://127.0.0.1:{emu.port}")
            app = IvrApp(rest, http, APP, {flow.name: flow}, {DNID: flow.name}, services,
                         on_event=tracker, session_factory=recorder, today=lambda: TODAY)
            tracker.app = app
            app_task = asyncio.create_task(app.run())
            async with asyncio.timeout(30):
                await app.connected.wait()
            lag: list[float] = []
            lag_task = asyncio.create_task(loop_lag(lag))
            profiler = cProfile.Profile() if args.profile else None
            emu_cpu0 = cpu_seconds(emu.pid)
            cpu0, t0 = time.process_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            emu.send(("go", args.sessions, args.ramp * args.time_scale))
            # generous: the ramp, a call's length (~20 s) and room for a slow machine
            limit = 60 + (args.ramp + 60) * args.time_scale * 3
            with GcPauses() as gc_pauses:
                try:
                    async with asyncio.timeout(limit):
                        await tracker.done.wait()
                except TimeoutError:
                    print(f"timed out after {limit:.0f} s: {tracker.finished} of "
                          f"{args.sessions} sessions finished", file=sys.stderr)
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - t0
            app_cpu = time.process_time() - cpu0
            emu_cpu = cpu_seconds(emu.pid) - emu_cpu0
            load_after = os.getloadavg()[0]
            lag_task.cancel()
            app_task.cancel()  # first: the app would see the emulator go and reconnect
            with suppress(asyncio.CancelledError):
                await app_task
            emu.send(("stop",))
            report = await emu.report()
    profile = ""
    if profiler is not None:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(30)
        profile = buf.getvalue()
    if emu.pid is None:
        emu_cpu = float(report["cpu_s"])  # shares this process: counted inside app_cpu too
    return Run(flow, recorder, tracker, report, emu.pid, wall, app_cpu, emu_cpu, lag,
               gc_pauses.pauses, store.results, (load_before, load_after), profile)


# ---- the baseline: the interpreter alone ----------------------------------------------------


def replay(flow: Flow, recorder: Recorder) -> tuple[list[float], float, int, int]:
    """Each session's events through a fresh interpreter, no I/O: the time `handle()` takes
    for each digit that causes a command (as the runner counts them), the CPU seconds of the
    whole replay, the number of events replayed and how many of them were digits."""
    streams = list(recorder.streams())
    per_digit: list[float] = []
    events = keys = 0
    clock = time.perf_counter
    cpu0 = time.process_time()
    for session_id, initial, today, stream in streams:
        session = Session(flow, session_id=session_id, variables=initial, today=today)
        session.start()
        for event in stream:
            t = clock()
            commands = session.handle(event)
            dt = clock() - t
            if isinstance(event, Dtmf):
                keys += 1
                if any(not isinstance(c, Trace) for c in commands):
                    per_digit.append(dt)
        events += len(stream)
    return per_digit, time.process_time() - cpu0, events, keys


# ---- report -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank), in ms; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


def summarize(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    t = run.tracker
    base, replay_cpu, replayed, keys = replay(run.flow, run.recorder)
    span = t.last_end - t.first_start if t.finished else math.nan
    return {
        "sessions": args.sessions,
        "completed": t.finished,
        "outcomes": dict(t.outcomes),
        "payments": dict(run.payments),
        "span_s": span,
        "sessions_per_s": t.finished / span if span > 0 else math.nan,
        "mean_call_s": sum(t.durations) / len(t.durations) if t.durations else math.nan,
        "peak_concurrent": t.peak,
        "emulator_peak_live_channels": run.emulator["peak_live"],
        "keys_sent": run.emulator["keys"],
        "keys_handled": keys,
        "dtmf_to_command": {"count": len(t.latencies), "p50_ms": pct(t.latencies, 0.5),
                            "p99_ms": pct(t.latencies, 0.99), "max_ms": pct(t.latencies, 1.0)},
        "end_to_end": {"count": len(run.emulator["e2e"]),
                       "p50_ms": pct(run.emulator["e2e"], 0.5),
                       "p99_ms": pct(run.emulator["e2e"], 0.99),
                       "max_ms": pct(run.emulator["e2e"], 1.0)},
        "interpreter_alone": {"count": len(base), "p50_ms": pct(base, 0.5),
                              "p99_ms": pct(base, 0.99), "max_ms": pct(base, 1.0),
                              "events": replayed, "cpu_s": replay_cpu},
        "ratio_p99": pct(t.latencies, 0.99) / pct(base, 0.99) if base else math.nan,
        "wall_s": run.wall_s,
        "app_cpu_s": run.app_cpu_s,
        "emulator_cpu_s": run.emulator_cpu_s,
        "emulator_in_process": run.emulator_pid is None,
        "emulator_gc": args.emulator_gc or run.emulator_pid is None,
        "rest_requests": run.emulator["requests"],
        "loop_lag_p99_ms": pct(run.lag, 0.99),
        "loop_lag_max_ms": pct(run.lag, 1.0),
        "emulator_loop_lag_p99_ms": pct(run.emulator["loop_lag"], 0.99),
        "emulator_loop_lag_max_ms": pct(run.emulator["loop_lag"], 1.0),
        "gc_collections": Counter(g for g, _ in run.gc_pauses),
        "gc_max_pause_ms": max((p for _, p in run.gc_pauses), default=0.0) * 1000,
        "gc_gen2_total_ms": sum(p for g, p in run.gc_pauses if g == 2) * 1000,
        "emulator_gc_gen2": run.emulator["gc_gen2"],
        "emulator_gc_max_pause_ms": run.emulator["gc_max_pause_s"] * 1000,
        "load": list(run.load),
        "time_scale": args.time_scale,
        "ramp_s": args.ramp,
        "seed": args.seed,
    }


def goals(s: dict[str, Any]) -> list[tuple[bool, str]]:
    p99 = s["dtmf_to_command"]["p99_ms"]
    return [
        (s["peak_concurrent"] >= GOAL_SESSIONS,
         f"peak concurrent sessions {s['peak_concurrent']:,} (goal >= {GOAL_SESSIONS:,})"),
        (p99 < GOAL_P99_MS, f"DTMF-to-command p99 {p99:.2f} ms (goal < {GOAL_P99_MS:g} ms)"),
    ]


def print_report(s: dict[str, Any], profile: str) -> None:
    n = s["sessions"]
    where = ("in this process (the app's event loop: it shares the app's CPU)"
             if s["emulator_in_process"] else "in its own process")
    if not s["emulator_gc"]:
        where += " with its garbage collector off (Asterisk has none: --emulator-gc for on)"
    scale = s["time_scale"]
    print(f"ivr sessions: {n:,} callers walk {FLOW_FILE.relative_to(ROOT)} through IvrApp over "
          "ARI on loopback (menu 1, card + #, expiry, CVV: 25 keys a call; seed "
          f"{s['seed']})")
    print(f"emulator: {where}, time scale {scale:g}"
          f"{' (real time)' if scale == 1 else ''}; calls ramped over {s['ramp_s']:g} s, keys "
          f"{KEY_GAP_S[0]:.2f}-{KEY_GAP_S[1]:.2f} s apart (emulated seconds)")
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(s["outcomes"].items()))
    payments = ", ".join(f"{k} {v:,}" for k, v in sorted(s["payments"].items())) or "none"
    print(f"sessions: {s['completed']:,} of {n:,} completed in {s['span_s']:.1f} s = "
          f"{s['sessions_per_s']:,.1f} sessions/s (mean call {s['mean_call_s']:.1f} s: the "
          f"callers' pace, not the CPU; outcomes: {outcomes}; payments: {payments})")
    print(f"peak concurrent sessions: {s['peak_concurrent']:,} of {n:,} (the emulator's live "
          f"channels peaked at {s['emulator_peak_live_channels']:,})")
    d = s["dtmf_to_command"]
    print(f"DTMF to command (SessionRunner.dtmf_latencies, feed() to the first command): "
          f"{d['count']:,} keys of {s['keys_handled']:,} handled ({s['keys_sent']:,} sent), "
          f"p50 {d['p50_ms']:.3f} ms, p99 {d['p99_ms']:.3f} ms, max {d['max_ms']:.2f} ms")
    e = s["end_to_end"]
    print(f"end to end (emulator clock: ChannelDtmfReceived queued for the WebSocket -> the "
          f"app's REST request arriving, for keys that make the app call ARI): "
          f"{e['count']:,} keys, p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, "
          f"max {e['max_ms']:.2f} ms")
    b = s["interpreter_alone"]
    print(f"interpreter alone (no I/O, the same {b['events']:,} events replayed): "
          f"{b['count']:,} keys, p50 {b['p50_ms']:.3f} ms, p99 {b['p99_ms']:.3f} ms, "
          f"max {b['max_ms']:.2f} ms; whole replay {b['cpu_s']:.2f} s CPU")
    print(f"ratio: DTMF-to-command p99 / interpreter-alone p99 = {s['ratio_p99']:,.1f}x "
          "(the rest is the event loop, the WebSocket decode and the REST calls in flight)")
    wall = s["wall_s"]
    per_session = s["app_cpu_s"] / max(1, s["completed"]) * 1000
    emu_cpu = ("in the same process" if s["emulator_in_process"]
               else f"{s['emulator_cpu_s'] / wall:.0%}")
    print(f"CPU: app process {s['app_cpu_s'] / wall:.0%} of one core "
          f"({per_session:.2f} ms per session, of which the interpreter "
          f"{b['cpu_s'] / max(1, s['completed']) * 1000:.2f} ms), emulator "
          f"{emu_cpu}; {s['rest_requests']:,} REST requests; "
          f"load average {s['load'][0]:.1f} before, {s['load'][1]:.1f} at the end "
          f"({os.cpu_count()} cores)")
    gcs = s["gc_collections"]
    print(f"event-loop lag (5 ms sleeps): app p99 {s['loop_lag_p99_ms']:.2f} ms, max "
          f"{s['loop_lag_max_ms']:.2f} ms; emulator p99 {s['emulator_loop_lag_p99_ms']:.2f} ms, "
          f"max {s['emulator_loop_lag_max_ms']:.2f} ms; app GC: "
          f"{gcs.get(0, 0):,}/{gcs.get(1, 0):,}/{gcs.get(2, 0):,} collections of generation "
          f"0/1/2, longest pause {s['gc_max_pause_ms']:.2f} ms; emulator GC: "
          f"{s['emulator_gc_gen2']:,} of generation 2, longest pause "
          f"{s['emulator_gc_max_pause_ms']:.2f} ms")
    for ok, text in goals(s):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if profile:
        print("profile of the app process (cProfile, by own time):")
        print(profile)


def main() -> None:
    ap = argparse.ArgumentParser(description="N concurrent IVR sessions through IvrApp and "
                                             "the ARI emulator")
    ap.add_argument("--sessions", type=int, default=1000, help="callers (default 1000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ramp", type=float, default=5.0,
                    help="seconds over which the calls arrive (emulated; default 5)")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="emulated seconds -> wall seconds (0.1: ten times faster)")
    ap.add_argument("--in-process", action="store_true",
                    help="run the emulator in the app's event loop")
    ap.add_argument("--emulator-gc", action="store_true",
                    help="leave the garbage collector on in the emulator's process")
    ap.add_argument("--profile", action="store_true", help="profile the app process")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    run = asyncio.run(run_sessions(args))
    summary = summarize(args, run)
    if args.json:
        print(json.dumps(summary))
    else:
        print_report(summary, run.profile)
    if summary["completed"] < args.sessions:
        sys.exit(1)


if __name__ == "__main__":
    main()
