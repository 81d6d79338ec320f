"""`Telephony.adopt`: a restarted dialer follows the calls its killed predecessor had in flight.

Process A (a first backend instance) originates calls, then dies without hanging anything up:
its link is cut by the emulator (as a kill -9 resets the sockets) and A is closed while it
cannot reconnect, so it sends nothing more. Process B (a second instance, same ARI app name)
adopts the call ids A used. Both backends, each against its half of the emulator over real
sockets; only the normalized event stream and the emulator's own state are asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cti.ami.telephony import AmiTelephony
from cti.ami.tracker import ChannelTracker
from cti.ari import AriTelephony
from cti.ari.tracker import AriTracker, LegRole
from cti.events import CallEvent, CallEventKind
from cti.interface import BackendUnavailable, OriginateRequest, Telephony
from dialer.domain import Outcome
from sim.pbx.ami_server import AmiServer
from sim.pbx.ari_server import AriServer
from sim.population import CalleeKind, Override, Population
from tests.ami_transcripts import received_events
from tests.telephony_scenarios import Recorder

#: 1 emulated second = 100 ms. The AMI dialplan (`paceline-outbound`) hangs an answered call
#: up after 60 s without the dialer: 6 s here, longer than the test needs.
SCALE = 0.1
AGENT = "Local/1001@agents"

# Numbers by what the callee does (emulated seconds).
WAITING = "+15550010050"  # answers at once, stays: answered, waiting for the dialer
BRIDGED = "+15550010051"  # answers at once, connected to an agent by A, hangs up at 40 s
GONE = "+15550010052"  # answers at once, hangs up at 12 s: over before B adopts
RINGING = "+15550010053"  # rings 35 s: still ringing when A dies, answers under B
XFER = "+15550010054"  # answers at once, stays: connected by A, blind-transferred by B
ABANDON = "+15550010055"  # answers at once, stays: B plays it the abandon message
BUSY = "+15550010017"  # busy: over while A still runs
MACHINE = "+15550010666"  # an answering machine (AMD says MACHINE), its greeting lasts 60 s
RINGING_AMD = "+15550010056"  # a person who answers at 20 s; A asked for AMD
GAP = "+15550010057"  # answers at 15 s: after B started, before B adopts

POPULATION = Population(
    weights={CalleeKind.HUMAN: 1.0},
    ring_range_s=(1.0, 2.0),
    talk_median_s=3000.0,
    talk_sigma=0.0,
    overrides=(
        Override(r"0050$", CalleeKind.HUMAN, ring_s=1.0, talk_s=3000.0),
        Override(r"0051$", CalleeKind.HUMAN, ring_s=1.0, talk_s=40.0),
        Override(r"0052$", CalleeKind.HUMAN, ring_s=1.0, talk_s=12.0),
        Override(r"0053$", CalleeKind.HUMAN, ring_s=35.0, talk_s=3000.0),
        Override(r"005[45]$", CalleeKind.HUMAN, ring_s=1.0, talk_s=3000.0),
        Override(r"0056$", CalleeKind.HUMAN, ring_s=20.0, talk_s=3000.0),
        Override(r"0057$", CalleeKind.HUMAN, ring_s=15.0, talk_s=3000.0),
        Override(r"0017$", CalleeKind.BUSY),
        Override(r"0666$", CalleeKind.MACHINE, ring_s=1.0, talk_s=60.0),
    ),
)

CALLS = {
    "adopt-waiting": WAITING,
    "adopt-bridged": BRIDGED,
    "adopt-gone": GONE,
    "adopt-ringing": RINGING,
    "adopt-xfer": XFER,
    "adopt-abandon": ABANDON,
    "adopt-busy": BUSY,
}


@dataclass
class Pbx:
    """One emulator half and how to run a dialer process against it."""

    new_backend: Callable[[bool], Telephony]  # True: reconnects only after 30 s
    is_live: Callable[[str], bool]  # the emulator still has the call's root channel
    is_up: Callable[[str], bool]  # ... and it is answered
    cut_links: Callable[[], None]  # every client link reset (AMI: logins refused too)
    allow_links: Callable[[], None]


@contextlib.asynccontextmanager
async def _ami() -> AsyncIterator[Pbx]:
    async with AmiServer(population=POPULATION, seed=5, time_scale=SCALE) as server:

        def new_backend(slow_reconnect: bool) -> Telephony:
            backoff = 30.0 if slow_reconnect else 0.1
            return AmiTelephony(
                "127.0.0.1", server.port, "dialer", "dialer", backoff_initial=backoff
            )

        def is_live(call_id: str) -> bool:
            return any(ch.uniqueid == call_id for ch in server.pbx.channels.values())

        def is_up(call_id: str) -> bool:
            return any(
                ch.uniqueid == call_id and ch.state == 6 for ch in server.pbx.channels.values()
            )

        def cut_links() -> None:
            server.refuse_logins = True
            server.drop_connections()

        def allow_links() -> None:
            server.refuse_logins = False

        yield Pbx(new_backend, is_live, is_up, cut_links, allow_links)


@contextlib.asynccontextmanager
async def _ari() -> AsyncIterator[Pbx]:
    async with AriServer(population=POPULATION, seed=5, time_scale=SCALE) as server:

        def new_backend(slow_reconnect: bool) -> Telephony:
            return AriTelephony(
                f"http://127.0.0.1:{server.port}",
                "dialer",
                "dialer",
                app="paceline",
                reconnect_initial_s=30.0 if slow_reconnect else 0.1,
                reconnect_max_s=30.0,
            )

        def is_live(call_id: str) -> bool:
            return call_id in server.live_channel_ids()

        def is_up(call_id: str) -> bool:
            return server.channel_state(call_id) == "Up"

        def cut_links() -> None:
            server.drop_websockets()

        def allow_links() -> None:
            pass  # a client that waits 30 s before reconnecting needs no refusal

        yield Pbx(new_backend, is_live, is_up, cut_links, allow_links)


@pytest.fixture(params=["ami", "ari"])
async def pbx(request: pytest.FixtureRequest) -> AsyncIterator[Pbx]:
    async with _ami() if request.param == "ami" else _ari() as half:
        yield half


async def _originate(tel: Telephony, call_id: str, number: str, *, amd: bool = False) -> None:
    await tel.originate(
        OriginateRequest(
            call_id=call_id,
            endpoint=f"Local/{number}@sim-customers",
            ring_timeout_s=120.0,
            amd=amd,
        )
    )


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


async def _die(pbx: Pbx, tel: Telephony, rec: Recorder) -> None:
    """kill -9 of process A: its sockets are reset, and it sends nothing more."""
    pbx.cut_links()
    await rec.until_backend(CallEventKind.BACKEND_DOWN, timeout=5)
    await tel.__aexit__(None, None, None)  # A cannot reach the PBX: closing sends nothing


async def _run_and_die(pbx: Pbx) -> Recorder:
    """Process A: every call in `CALLS` placed, BRIDGED and XFER connected to an agent, BUSY
    over; then A dies without hanging up anything."""
    tel = pbx.new_backend(True)
    await tel.__aenter__()
    rec = Recorder(tel)
    async with rec.running():
        for call_id, number in CALLS.items():
            await _originate(tel, call_id, number)
        for call_id in ("adopt-waiting", "adopt-bridged", "adopt-gone", "adopt-xfer"):
            await rec.until_event(call_id, CallEventKind.ANSWERED, timeout=5)
        for call_id in ("adopt-bridged", "adopt-xfer"):
            await tel.connect_to_agent(call_id, AGENT)
            await rec.until_event(call_id, CallEventKind.BRIDGED, timeout=5)
        await rec.until_event("adopt-abandon", CallEventKind.ANSWERED, timeout=5)
        await rec.until_event("adopt-busy", CallEventKind.HANGUP, timeout=5)
        assert not rec.ended("adopt-ringing")
        await _die(pbx, tel, rec)
    return rec


async def test_a_restarted_backend_adopts_the_live_calls_and_follows_them_to_their_end(
    pbx: Pbx,
) -> None:
    await _run_and_die(pbx)
    kept = {"adopt-waiting", "adopt-bridged", "adopt-ringing", "adopt-xfer", "adopt-abandon"}
    # The emulator, like Asterisk, keeps the calls of a client that vanished.
    assert all(pbx.is_live(c) for c in kept)
    pbx.allow_links()
    async with pbx.new_backend(False) as tel:
        rec = Recorder(tel)
        async with rec.running():
            await _until(lambda: not pbx.is_live("adopt-gone"), "GONE hangs up meanwhile")

            live = await tel.adopt([*CALLS, "never-existed"])

            assert live == kept
            # Answered and waiting for the dialer: reported, so that the dialer acts on it.
            for call_id in ("adopt-waiting", "adopt-abandon"):
                answered = await rec.until_event(call_id, CallEventKind.ANSWERED, timeout=2)
                assert answered.detail == "adopted"
            await tel.connect_to_agent("adopt-waiting", AGENT)
            bridged = await rec.until_event("adopt-waiting", CallEventKind.BRIDGED, timeout=5)
            assert bridged.peer
            await tel.play_and_hangup("adopt-abandon", "paceline/abandon-message")
            # Connected by A: B knows its agent leg, so the transfer works.
            await tel.blind_transfer("adopt-xfer", "1002")
            moved = await rec.until_event("adopt-xfer", CallEventKind.TRANSFERRED, timeout=5)
            assert moved.target and "1002" in moved.target
            await rec.until_event("adopt-xfer", CallEventKind.BRIDGED, timeout=5)
            # Ringing when A died: its answer comes to B.
            answered = await rec.until_event("adopt-ringing", CallEventKind.ANSWERED, timeout=8)
            assert answered.detail == ""
            for call_id in ("adopt-ringing", "adopt-waiting", "adopt-xfer"):
                await tel.hangup(call_id)
            # Already with its agent when adopted: no BRIDGED again, but its end.
            hangup = await rec.until_event("adopt-bridged", CallEventKind.HANGUP, timeout=8)
            assert (hangup.outcome, hangup.cause) == (Outcome.HUMAN, 16), hangup
            await rec.until(lambda: all(rec.ended(c) for c in live), timeout=5)
            await asyncio.sleep(0.3)  # late events would show up here

    for call_id in live:
        kinds = rec.kinds(call_id)
        assert kinds.count(CallEventKind.HANGUP) == 1 and kinds[-1] is CallEventKind.HANGUP, (
            call_id,
            kinds,
        )
        assert rec.of(call_id, CallEventKind.HANGUP)[0].outcome is Outcome.HUMAN
        assert CallEventKind.INBOUND not in kinds and CallEventKind.DIALING not in kinds
    # The customer leaving its agent: the UNBRIDGED and HANGUP of any bridged call.
    assert rec.kinds("adopt-bridged") == [CallEventKind.UNBRIDGED, CallEventKind.HANGUP]
    assert rec.count("adopt-waiting", CallEventKind.ANSWERED) == 1
    assert rec.count("adopt-xfer", CallEventKind.BRIDGED) == 1  # with the transfer target
    for call_id in ("adopt-gone", "adopt-busy", "never-existed"):
        assert rec.kinds(call_id) == [], (call_id, rec.kinds(call_id))
    assert not any(pbx.is_live(c) for c in CALLS)


async def test_adopted_calls_report_their_amd_verdict_even_one_given_before_the_crash(
    pbx: Pbx,
) -> None:
    """A machine whose verdict A saw is reported again (B's dialer must decide what it gets);
    a call A asked AMD for that was still ringing gets AMD when it answers under B."""
    a = pbx.new_backend(True)
    await a.__aenter__()
    rec_a = Recorder(a)
    async with rec_a.running():
        await _originate(a, "adopt-machine", MACHINE, amd=True)
        await _originate(a, "adopt-ringing-amd", RINGING_AMD, amd=True)
        verdict = await rec_a.until_event("adopt-machine", CallEventKind.AMD, timeout=5)
        assert verdict.amd == "MACHINE"
        assert not rec_a.first("adopt-ringing-amd", CallEventKind.ANSWERED)
        await _die(pbx, a, rec_a)
    pbx.allow_links()
    async with pbx.new_backend(False) as tel:
        rec = Recorder(tel)
        async with rec.running():
            live = await tel.adopt(["adopt-machine", "adopt-ringing-amd"])
            assert live == {"adopt-machine", "adopt-ringing-amd"}
            machine = await rec.until_event("adopt-machine", CallEventKind.AMD, timeout=3)
            assert machine.amd == "MACHINE"
            human = await rec.until_event("adopt-ringing-amd", CallEventKind.AMD, timeout=8)
            assert human.amd == "HUMAN"
            for call_id in live:
                await tel.hangup(call_id)
            await rec.until(lambda: all(rec.ended(c) for c in live), timeout=5)
    assert rec.kinds("adopt-machine") == [
        CallEventKind.ANSWERED,
        CallEventKind.AMD,
        CallEventKind.HANGUP,
    ]
    assert rec.of("adopt-machine", CallEventKind.HANGUP)[0].outcome is Outcome.MACHINE
    kinds = rec.kinds("adopt-ringing-amd")
    assert kinds.count(CallEventKind.ANSWERED) == 1 and kinds.count(CallEventKind.AMD) == 1
    assert kinds.index(CallEventKind.ANSWERED) < kinds.index(CallEventKind.AMD), kinds
    assert rec.of("adopt-ringing-amd", CallEventKind.HANGUP)[0].outcome is Outcome.HUMAN


async def test_a_call_answered_between_the_restart_and_the_adoption_is_no_inbound_call(
    pbx: Pbx,
) -> None:
    """B is up (ARI: the app is active again) before the dialer adopts: an answer meanwhile
    enters the app under a call id B does not know yet. It must wait for the adoption, not
    pass for an inbound call."""
    a = pbx.new_backend(True)
    await a.__aenter__()
    rec_a = Recorder(a)
    async with rec_a.running():
        await _originate(a, "adopt-gap", GAP)
        await rec_a.until_event("adopt-gap", CallEventKind.RINGING, timeout=5)
        await _die(pbx, a, rec_a)
    pbx.allow_links()
    async with pbx.new_backend(False) as tel:
        rec = Recorder(tel)
        async with rec.running():
            await _until(lambda: pbx.is_up("adopt-gap"), "GAP answers")
            await asyncio.sleep(0.2)  # its events reach B before the adoption
            assert await tel.adopt(["adopt-gap"]) == {"adopt-gap"}
            answered = await rec.until_event("adopt-gap", CallEventKind.ANSWERED, timeout=2)
            assert answered.detail == "adopted"
            await tel.hangup("adopt-gap")
            await rec.until_event("adopt-gap", CallEventKind.HANGUP, timeout=5)
        assert [e.kind for e in rec.events if e.call_id] == [
            CallEventKind.ANSWERED,
            CallEventKind.HANGUP,
        ]


async def test_adopting_a_call_already_followed_returns_it_without_new_events(pbx: Pbx) -> None:
    async with pbx.new_backend(False) as tel:
        rec = Recorder(tel)
        async with rec.running():
            await _originate(tel, "adopt-waiting", WAITING)
            await rec.until_event("adopt-waiting", CallEventKind.ANSWERED, timeout=5)
            before = rec.kinds("adopt-waiting")
            assert await tel.adopt(["adopt-waiting", "adopt-busy"]) == {"adopt-waiting"}
            await asyncio.sleep(0.2)
            assert rec.kinds("adopt-waiting") == before
            await tel.hangup("adopt-waiting")
            await rec.until_event("adopt-waiting", CallEventKind.HANGUP, timeout=5)
        assert rec.count("adopt-waiting", CallEventKind.HANGUP) == 1


async def test_adopt_on_a_down_link_raises_backend_unavailable(pbx: Pbx) -> None:
    async with pbx.new_backend(True) as tel:
        rec = Recorder(tel)
        async with rec.running():
            await _originate(tel, "adopt-waiting", WAITING)
            await rec.until_event("adopt-waiting", CallEventKind.ANSWERED, timeout=5)
            pbx.cut_links()
            await rec.until_backend(CallEventKind.BACKEND_DOWN, timeout=5)
            with pytest.raises(BackendUnavailable):
                await tel.adopt(["adopt-waiting", "other"])
            pbx.allow_links()


# ---- sans-IO: the trackers on their own ----------------------------------------------------
CAPTURE_02 = (
    Path(__file__).parent
    / "fixtures"
    / "asterisk"
    / "transcripts"
    / "ami"
    / "02_coreshowchannels_two_calls.rx.bin"
)


def test_ami_tracker_adopts_the_calls_of_a_recorded_asterisk_listing() -> None:
    """Capture 02 (Asterisk 20): two customers bridged with agents, listed mid-call, then hung
    up. A tracker that saw nothing before adopts both roots from the listing alone: no event
    then (they are with their agents), and from the events after it each call's UNBRIDGED
    from the agent leg the listing named, then one HANGUP with the real cause."""
    messages = received_events(CAPTURE_02)
    start = next(i for i, m in enumerate(messages) if m.event == "CoreShowChannel")
    done = next(
        i for i, m in enumerate(messages) if i > start and m.event == "CoreShowChannelsComplete"
    )
    items = messages[start:done]
    roots = {i["Channel"]: i["Uniqueid"] for i in items if i["Uniqueid"] == i["Linkedid"]}
    assert sorted(roots) == [
        "Local/500@sim-customers-0000000a;1",
        "Local/501@sim-customers-0000000b;1",
    ]
    tracker = ChannelTracker()
    pending = tracker.begin_adopt([*roots.values(), "1795427862.99"])
    adopted, events = tracker.finish_adopt(pending, items)
    assert adopted == set(roots.values()) and events == []
    call_500 = roots["Local/500@sim-customers-0000000a;1"]
    assert tracker.peer_of(call_500) == "Local/1001@agents-0000000d;1"
    after: list[CallEvent] = []
    for message in messages[done + 1 :]:
        after += tracker.feed(message)
    for call_id in adopted:
        kinds = [(e.kind, e.cause, e.outcome) for e in after if e.call_id == call_id]
        assert kinds == [
            (CallEventKind.UNBRIDGED, None, None),
            (CallEventKind.HANGUP, 16, Outcome.HUMAN),
        ], (call_id, kinds)
    assert tracker.live_calls() == {}


def _ami_event(event: str, uid: str, name: str, linkedid: str, **fields: str) -> dict[str, str]:
    return {"Event": event, "Channel": name, "Uniqueid": uid, "Linkedid": linkedid, **fields}


def test_ami_events_during_the_listing_are_held_and_replayed_after_it() -> None:
    """The listing and live events race: what arrives while it is on its way (an answer, a
    hang-up) is applied after it, so that neither is lost nor applied to nothing."""
    root, far = "Local/100@sim-customers-00000001;1", "Local/100@sim-customers-00000001;2"
    tracker = ChannelTracker()
    pending = tracker.begin_adopt(["c1", "c2"])
    held = [
        _ami_event("Newstate", "c1", root, "c1", ChannelState="6"),
        _ami_event("Hangup", "c2", "Local/200@sim-customers-00000002;1", "c2", Cause="16"),
        _ami_event("Hangup", "c2;2", "Local/200@sim-customers-00000002;2", "c2", Cause="16"),
    ]
    assert [tracker.feed(e) for e in held] == [[], [], []]
    listing = [
        _ami_event("CoreShowChannel", "c1", root, "c1", ChannelState="5"),
        _ami_event("CoreShowChannel", "c1;2", far, "c1", ChannelState="6"),
        _ami_event(
            "CoreShowChannel", "c2", "Local/200@sim-customers-00000002;1", "c2", ChannelState="6"
        ),
    ]
    adopted, events = tracker.finish_adopt(pending, listing)
    assert adopted == {"c1", "c2"}
    assert [(e.call_id, e.kind, e.detail) for e in events] == [
        ("c1", CallEventKind.ANSWERED, ""),
        ("c2", CallEventKind.ANSWERED, "adopted"),
        ("c2", CallEventKind.HANGUP, ""),
    ]
    assert list(tracker.live_calls()) == ["c1"]
    tracker.feed(_ami_event("Hangup", "c1", root, "c1", Cause="0"))
    (hangup,) = tracker.feed(_ami_event("Hangup", "c1;2", far, "c1", Cause="16"))
    assert (hangup.kind, hangup.cause, hangup.outcome) == (
        CallEventKind.HANGUP,
        16,
        Outcome.HUMAN,
    )


def test_ari_stasis_start_of_an_untracked_leg_of_ours_is_not_an_inbound_call() -> None:
    tracker = AriTracker()
    chan = {"id": "old-call", "state": "Up", "dialplan": {"app_name": "Stasis"}}
    for args in (["customer", "old-call"], ["amd", "MACHINE"], ["agent", "x"]):
        assert tracker.feed({"type": "StasisStart", "args": args, "channel": chan}) == []
    # The same channel entering with arguments that are not ours is an inbound call.
    events = tracker.feed({"type": "StasisStart", "args": ["inbound"], "channel": chan})
    assert events[0].kind is CallEventKind.INBOUND


def test_ari_tracker_adopts_a_bridged_call_without_a_new_bridged() -> None:
    tracker = AriTracker()
    customer = {"id": "c1", "state": "Up", "dialplan": {"app_name": "Stasis"}}
    agent = {"id": "c1.agent3", "state": "Up", "dialplan": {"app_name": "Stasis"}}
    tracker.adopt(customer, "c1", role=LegRole.CUSTOMER, confirmed_seq=1)
    tracker.adopt(agent, "c1", role=LegRole.AGENT, peer="PJSIP/agent7", confirmed_seq=1)
    tracker.adopt_bridge({"id": "c1.bridge", "channels": ["c1", "c1.agent3"]})
    assert tracker.is_bridged("c1") and tracker.pending_amd("c1") == []
    events = tracker.feed({"type": "ChannelDestroyed", "cause": 16, "channel": customer})
    assert [(e.kind, e.peer, e.cause) for e in events] == [
        (CallEventKind.UNBRIDGED, "PJSIP/agent7", None),
        (CallEventKind.HANGUP, None, 16),
    ]
    assert events[1].outcome is Outcome.HUMAN


def test_ari_tracker_keeps_the_amd_verdict_an_adopted_customer_came_back_with() -> None:
    tracker = AriTracker()
    chan = {
        "id": "c1",
        "state": "Up",
        "dialplan": {"app_name": "Stasis", "app_data": "paceline,amd,MACHINE"},
    }
    tracker.adopt(chan, "c1", role=LegRole.CUSTOMER, confirmed_seq=1)
    (amd,) = tracker.pending_amd("c1")
    assert amd.amd == "MACHINE" and tracker.pending_amd("c1") == []
