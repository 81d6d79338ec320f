"""AMI throughput: originates acknowledged/s and events parsed/s through the emulator on
loopback, with the parser alone on the recorded transcripts as the baseline of the same run.

    python bench/ami_throughput.py [--calls 2000] [--replays 10000]

The emulator runs in its own process (the machine has 2 cores: one for the PBX, one for the
bridge), so the bridge's figures do not include the emulator's CPU time. Every call is placed
through `AmiTelephony.originate` (the dialer's path, many in flight at once) and followed by
the channel tracker until its HANGUP.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cti.ami.framing import AmiMessage, AmiParser  # noqa: E402
from cti.ami.telephony import AmiTelephony  # noqa: E402
from cti.ami.tracker import ChannelTracker  # noqa: E402
from cti.events import CallEventKind  # noqa: E402
from cti.interface import OriginateRequest  # noqa: E402
from sim.pbx.ami_server import AmiServer  # noqa: E402
from sim.population import CalleeKind, Population  # noqa: E402
from tests.ami_transcripts import TRANSCRIPTS, received_bytes  # noqa: E402

REPLAY_FILE = "ami_session_transcript_outcomes.txt"  # five calls: every Originate outcome


def _population() -> Population:
    # A campaign-like mix. time_scale 1e-4 makes a 60 s ring last 6 ms, so simulated call time
    # does not limit the rates: the emulator, the socket and the client do.
    return Population(
        weights={
            CalleeKind.HUMAN: 0.35,
            CalleeKind.MACHINE: 0.15,
            CalleeKind.BUSY: 0.1,
            CalleeKind.NO_ANSWER: 0.25,
            CalleeKind.REJECTED: 0.05,
            CalleeKind.FAILED: 0.05,
            CalleeKind.CONGESTION: 0.05,
        },
        talk_median_s=5.0,
        no_answer_ring_s=20.0,
    )


def _run_emulator(port_out: mp.Queue[int], stop: MpEvent) -> None:
    async def serve() -> None:
        async with AmiServer(population=_population(), seed=7, time_scale=0.0001) as server:
            port_out.put(server.port)
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(serve())


async def _through_emulator(port: int, calls: int) -> tuple[float, float, int, int]:
    async with AmiTelephony("127.0.0.1", port, "dialer", "dialer", action_timeout=60) as tel:
        hangups = 0
        done = asyncio.Event()
        last_event = 0.0

        async def consume() -> None:
            nonlocal hangups, last_event
            async for event in tel.events():
                if event.kind is CallEventKind.HANGUP:
                    hangups += 1
                    last_event = time.perf_counter()
                    if hangups == calls:
                        done.set()

        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(consume())
            before = tel.ami_events
            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as originates:
                for i in range(calls):
                    request = OriginateRequest(
                        call_id=f"bench-{i}",
                        endpoint=f"Local/+1555{i:07d}@sim-customers",
                        ring_timeout_s=15.0,
                    )
                    originates.create_task(tel.originate(request))
            acked = time.perf_counter() - t0
            await asyncio.wait_for(done.wait(), 300)
            consumer.cancel()
        events = tel.ami_events - before
        return calls / acked, events / (last_event - t0), events, hangups


def _parser_alone(replays: int) -> tuple[float, float, int]:
    data = received_bytes(TRANSCRIPTS / REPLAY_FILE)
    per_replay = len(AmiParser().feed(data))
    t0 = time.perf_counter()
    for _ in range(replays):
        AmiParser().feed(data)
    elapsed = time.perf_counter() - t0
    return replays * per_replay / elapsed, replays * len(data) / elapsed / 1e6, per_replay


def _parser_and_tracker(replays: int) -> float:
    data = received_bytes(TRANSCRIPTS / REPLAY_FILE)
    count = 0
    t0 = time.perf_counter()
    for _ in range(replays):
        tracker = ChannelTracker(track_unknown=True)
        for frame in AmiParser().feed(data):
            if isinstance(frame, AmiMessage) and frame.event:
                tracker.feed(frame)
            count += 1
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description="AMI throughput through the emulator and alone")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--replays", type=int, default=10_000)
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    port_out: mp.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_run_emulator, args=(port_out, stop), daemon=True)
    proc.start()
    try:
        port = port_out.get(timeout=30)
        acks, events_rate, events, hangups = asyncio.run(_through_emulator(port, args.calls))
    finally:
        stop.set()
        proc.join(10)
    parse_rate, mb_rate, per_replay = _parser_alone(args.replays)
    tracked_rate = _parser_and_tracker(max(1, args.replays // 10))

    print(f"emulator on loopback: {args.calls:,} originates acknowledged at {acks:,.0f}/s")
    print(
        f"emulator on loopback: {events:,} AMI events parsed and tracked at {events_rate:,.0f}/s "
        f"({hangups:,} calls ended)"
    )
    print(
        f"parser alone: {REPLAY_FILE} ({per_replay} messages) replayed {args.replays:,} times: "
        f"{parse_rate:,.0f} messages/s ({mb_rate:.1f} MB/s)"
    )
    print(f"parser + channel tracker on the same capture: {tracked_rate:,.0f} messages/s")
    print(
        f"ratio: loopback event rate / parser-alone rate = {events_rate / parse_rate:.2f} "
        "(the rest is the emulator, the socket and the event loop)"
    )


if __name__ == "__main__":
    main()
