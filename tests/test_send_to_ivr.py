"""`Telephony.send_to_ivr` (agentless campaigns) on both backends, against the emulators.

ARI: the call is moved into the IVR's Stasis app (`POST /channels/{id}/move`), which hears
StasisStart with the flow as its argument and finds the inputs as `PACELINE_*` variables; the
dialer's app stays subscribed, so the call's one HANGUP still comes when the callee hangs up.
AMI: Setvar + Redirect into `[paceline-ivr-outbound]`, where the call waits in Stasis().
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cti.ami.telephony import IVR_CONTEXT, AmiTelephony
from cti.ari import AriTelephony
from cti.ari.tracker import AriTracker
from cti.events import CallEventKind
from cti.interface import OriginateRequest, TelephonyError, UnknownCall
from dialer.domain import Outcome
from dialer.service import ConfigError, make_backend, parse_config
from sim.pbx.ami_server import AmiServer
from sim.pbx.ari_server import AriServer
from sim.population import CalleeKind, Override, deterministic_test_population
from tests.telephony_scenarios import Recorder

SCALE = 0.01  # 1 emulated second = 10 ms
IVR_APP = "paceline-ivr"
FLOW = "optout"
INPUTS = {"contact_id": "42", "campaign": "spring-renewals"}

POPULATION = dataclasses.replace(
    deterministic_test_population(),
    overrides=(
        # answers, then hangs up after 150 s (1.5 s here): longer than [paceline-outbound]'s
        # Wait(60), so only a call that really left it lives to the callee's hang-up
        Override(r"0900$", CalleeKind.HUMAN, ring_s=0.5, talk_s=150.0),
        *deterministic_test_population().overrides,
    ),
)
NUMBER = "5550900"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"dialer:dialer").decode()}


def customer(call_id: str) -> OriginateRequest:
    return OriginateRequest(
        call_id=call_id, endpoint=f"Local/{NUMBER}@sim-customers", ring_timeout_s=15
    )


# ----- ARI ---------------------------------------------------------------------------------
@pytest.fixture
async def server() -> AsyncIterator[AriServer]:
    async with AriServer(time_scale=SCALE, population=POPULATION, seed=7) as srv:
        yield srv


@pytest.fixture
async def tel(server: AriServer) -> AsyncIterator[tuple[AriTelephony, Recorder]]:
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", app="paceline",
            move_timeout_s=2.0,
        ) as telephony,
        Recorder(telephony).running() as recorder,
    ):
        yield telephony, recorder


class IvrSocket:
    """The IVR app's side: its own event WebSocket and REST session."""

    def __init__(self, server: AriServer) -> None:
        self.base = f"http://127.0.0.1:{server.port}/ari"
        self.session = aiohttp.ClientSession(headers=AUTH)
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> IvrSocket:
        self.ws = await self.session.ws_connect(f"{self.base}/events?app={IVR_APP}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()

    async def next_event(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            while True:
                event: dict[str, Any] = json.loads(await self.ws.receive_str())
                if event["type"] == kind:
                    return event

    async def variable(self, channel_id: str, name: str) -> str:
        async with self.session.get(
            f"{self.base}/channels/{channel_id}/variable", params={"variable": name}
        ) as resp:
            assert resp.status == 200, (name, resp.status)
            return str((await resp.json())["value"])


async def answered(tel: tuple[AriTelephony, Recorder], call_id: str) -> None:
    telephony, rec = tel
    await telephony.originate(customer(call_id))
    await rec.until_event(call_id, CallEventKind.ANSWERED)


def sent_to(server: AriServer, app: str, kind: str, channel_id: str) -> int:
    return sum(1 for entry in server.event_log if entry == (app, kind, channel_id))


async def test_ari_call_moves_to_the_ivr_app_with_its_flow_and_inputs_then_hangs_up_once(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    async with IvrSocket(server) as ivr:
        await answered(tel, "agentless-1")
        await telephony.send_to_ivr("agentless-1", FLOW, INPUTS)

        start = await ivr.next_event("StasisStart")
        assert (start["channel"]["id"], start["args"]) == ("agentless-1", [FLOW])
        assert await ivr.variable("agentless-1", "PACELINE_CONTACT_ID") == "42"
        assert await ivr.variable("agentless-1", "PACELINE_CAMPAIGN") == "spring-renewals"
        assert server.moves == [("agentless-1", IVR_APP, [FLOW])]
        # The move's StasisEnd reached the dialer and ended nothing.
        assert sent_to(server, "paceline", "StasisEnd", "agentless-1") == 1
        assert rec.count("agentless-1", CallEventKind.HANGUP) == 0
        assert telephony._tracker.moved_to("agentless-1") == IVR_APP

        hangup = await rec.until_event("agentless-1", CallEventKind.HANGUP, timeout=5)
        await ivr.next_event("StasisEnd")  # the IVR app, the call's Stasis app, hears the end
    assert (hangup.outcome, hangup.cause) == (Outcome.HUMAN, 16)
    await asyncio.sleep(0.1)
    assert rec.count("agentless-1", CallEventKind.HANGUP) == 1
    # StasisEnd of the hang-up went to the app the call was in, not to the dialer's.
    assert sent_to(server, "paceline", "StasisEnd", "agentless-1") == 1
    assert sent_to(server, IVR_APP, "StasisEnd", "agentless-1") == 1
    assert sent_to(server, "paceline", "ChannelDestroyed", "agentless-1") == 1


async def test_ari_unknown_call_raises_unknown_call(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, _rec = tel
    with pytest.raises(UnknownCall):
        await telephony.send_to_ivr("no-such-call", FLOW, {})
    # ARI's 404 (the call ended on the PBX before our tracker heard of it) is UnknownCall too.
    await answered(tel, "agentless-404")
    server.inject_fault("POST", "/move", status=404)
    with pytest.raises(UnknownCall):
        await telephony.send_to_ivr("agentless-404", FLOW, {})


async def test_ari_refused_move_raises_telephony_error_and_the_call_stays_ours(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    await answered(tel, "agentless-nobody")
    # No IVR WebSocket: ARI answers 204, then ApplicationMoveFailed to us.
    with pytest.raises(TelephonyError, match="not registered or not active") as info:
        await telephony.send_to_ivr("agentless-nobody", FLOW, INPUTS)
    assert not isinstance(info.value, UnknownCall)
    assert sent_to(server, "paceline", "ApplicationMoveFailed", "agentless-nobody") == 1
    assert server.moves == []
    assert telephony._tracker.moved_to("agentless-nobody") is None
    server.inject_fault("POST", "/move", status=409)
    with pytest.raises(TelephonyError) as refused:
        await telephony.send_to_ivr("agentless-nobody", FLOW, INPUTS)
    assert not isinstance(refused.value, UnknownCall)
    # Still ours: the abandon message can be played to it.
    await telephony.play_and_hangup("agentless-nobody", "abandon-message")
    hangup = await rec.until_event("agentless-nobody", CallEventKind.HANGUP, timeout=5)
    assert hangup.outcome is Outcome.HUMAN
    assert rec.count("agentless-nobody", CallEventKind.HANGUP) == 1


@pytest.mark.parametrize(
    ("flow", "variables"), [("opt,out", {}), ("", {}), (FLOW, {"contact-id": "1"})]
)
async def test_ari_flow_or_input_names_a_stasis_argument_cannot_carry_are_refused(
    server: AriServer, tel: tuple[AriTelephony, Recorder], flow: str, variables: dict[str, str]
) -> None:
    telephony, _rec = tel
    await answered(tel, "agentless-bad")
    with pytest.raises(ValueError):
        await telephony.send_to_ivr("agentless-bad", flow, variables)
    assert server.requests[("POST", "/channels/agentless-bad/move")] == 0


async def test_emulator_move_answers_404_and_409_as_the_swagger_says(server: AriServer) -> None:
    async with IvrSocket(server) as ivr:
        async with ivr.session.post(
            f"{ivr.base}/channels/nope/move", params={"app": IVR_APP}
        ) as resp:
            assert (resp.status, (await resp.json())["message"]) == (404, "Channel not found")
        inbound = server.place_inbound("5551234", "100", app=IVR_APP)
        await ivr.next_event("StasisStart")
        async with ivr.session.post(f"{ivr.base}/channels/{inbound}/continue",
                                    params={"context": "paceline-queue", "extension": "sales"}):
            pass
        async with ivr.session.post(
            f"{ivr.base}/channels/{inbound}/move", params={"app": "paceline"}
        ) as resp:
            assert resp.status == 409


def test_tracker_keeps_a_moved_call_until_its_channel_is_destroyed() -> None:
    tracker = AriTracker()
    tracker.expect("c1", role="customer", peer="Local/5550900@sim-customers")
    chan = {"id": "c1", "state": "Up", "dialplan": {"app_name": "Stasis"}}
    kinds = [e.kind for e in tracker.feed({"type": "StasisStart", "args": [], "channel": chan})]
    assert kinds == [CallEventKind.DIALING, CallEventKind.ANSWERED]
    dtmf = {"type": "ChannelDtmfReceived", "digit": "4", "duration_ms": 100, "channel": chan}
    assert [e.kind for e in tracker.feed(dtmf)] == [CallEventKind.DTMF]
    tracker.note_moved("c1", IVR_APP)
    assert tracker.feed({"type": "StasisEnd", "channel": chan}) == []
    assert tracker.feed(dtmf) == [], "the IVR's keys (a card number?) stay out of this stream"
    assert tracker.is_live("c1") and tracker.moved_to("c1") == IVR_APP
    # A snapshot shows it in Stasis (the IVR's): not a StasisStart of ours that was lost.
    assert tracker.sync_stasis("c1", True) is False and not tracker.in_stasis("c1")
    tracker.feed({"type": "ChannelHangupRequest", "cause": 16, "channel": chan})
    events = tracker.feed(
        {"type": "ChannelDestroyed", "cause": 16, "cause_txt": "Normal Clearing", "channel": chan}
    )
    assert [(e.kind, e.outcome, e.cause) for e in events] == [
        (CallEventKind.HANGUP, Outcome.HUMAN, 16)
    ]
    assert not tracker.is_live("c1")
    assert tracker.feed({"type": "ChannelDestroyed", "cause": 16, "channel": chan}) == []


def test_tracker_keeps_an_originated_call_after_any_stasis_end() -> None:
    """Without `note_moved` too (the move's StasisEnd may beat send_to_ivr's bookkeeping)."""
    tracker = AriTracker()
    tracker.expect("c2")
    chan = {"id": "c2", "state": "Up"}
    tracker.feed({"type": "StasisStart", "args": [], "channel": chan})
    assert tracker.feed({"type": "StasisEnd", "channel": chan}) == []
    events = tracker.feed({"type": "ChannelDestroyed", "cause": 16, "channel": chan})
    assert [(e.kind, e.outcome) for e in events] == [(CallEventKind.HANGUP, Outcome.HUMAN)]


# ----- AMI ---------------------------------------------------------------------------------
async def test_ami_call_is_redirected_into_the_ivr_context_and_hangs_up_once() -> None:
    async with (
        AmiServer(population=POPULATION, time_scale=SCALE) as server,
        AmiTelephony("127.0.0.1", server.port, "dialer", "dialer") as tel,
    ):
        rec = Recorder(tel)
        async with rec.running():
            await tel.originate(customer("agentless-ami"))
            await rec.until_event("agentless-ami", CallEventKind.ANSWERED)
            answered_at = asyncio.get_running_loop().time()
            await tel.send_to_ivr("agentless-ami", FLOW, INPUTS)
            await rec.until(lambda: "agentless-ami" in server.stasis_entries, timeout=5)
            entry = server.stasis_entries["agentless-ami"]
            assert (entry.app, entry.args, entry.context, entry.exten) == (
                IVR_APP, (FLOW,), IVR_CONTEXT, FLOW
            )
            assert entry.variables["PACELINE_CONTACT_ID"] == "42"
            assert entry.variables["PACELINE_CAMPAIGN"] == "spring-renewals"
            assert entry.variables["PACELINE_IVR_APP"] == IVR_APP
            # Past [paceline-outbound]'s Wait(60) (0.6 s): the callee's hang-up ends it.
            hangup = await rec.until_event("agentless-ami", CallEventKind.HANGUP, timeout=5)
            talked_s = asyncio.get_running_loop().time() - answered_at
            await asyncio.sleep(0.1)
        assert (hangup.outcome, hangup.cause) == (Outcome.HUMAN, 16)
        assert rec.count("agentless-ami", CallEventKind.HANGUP) == 1
        assert talked_s >= 1.0, talked_s  # 1.5 s of talk, not cut at 0.6 s by Wait(60)


async def test_ami_call_to_an_ivr_app_that_is_not_connected_fails_in_stasis_and_hangs_up() -> None:
    """Stasis() of an app nobody runs returns at once (STASISSTATUS=FAILED): Hangup()."""
    async with (
        AmiServer(population=POPULATION, time_scale=SCALE) as server,
        AmiTelephony("127.0.0.1", server.port, "dialer", "dialer", ivr_app="nobody") as tel,
    ):
        rec = Recorder(tel)
        async with rec.running():
            await tel.originate(customer("agentless-lost"))
            await rec.until_event("agentless-lost", CallEventKind.ANSWERED)
            await tel.send_to_ivr("agentless-lost", FLOW, {})
            hangup = await rec.until_event("agentless-lost", CallEventKind.HANGUP, timeout=0.5)
        assert hangup.outcome is Outcome.HUMAN
        assert server.stasis_entries == {}


async def test_ami_unknown_call_and_bad_flow_names_are_refused() -> None:
    async with (
        AmiServer(population=POPULATION, time_scale=SCALE) as server,
        AmiTelephony("127.0.0.1", server.port, "dialer", "dialer") as tel,
    ):
        with pytest.raises(UnknownCall):
            await tel.send_to_ivr("no-such-call", FLOW, {})
        for flow in ("Optout", "x", "opt out", "1flow"):
            with pytest.raises(ValueError, match="flow"):
                await tel.send_to_ivr("no-such-call", flow, {})
        with pytest.raises(ValueError, match="variable"):
            await tel.send_to_ivr("no-such-call", FLOW, {"contact-id": "1"})
        with pytest.raises(ValueError, match="one line"):
            await tel.send_to_ivr("no-such-call", FLOW, {"note": "a\r\nAction: Hangup"})


# ----- run config --------------------------------------------------------------------------
def test_the_ivr_app_of_the_run_config_reaches_the_backend_and_matches_the_ivr_section(
    tmp_path: Path,
) -> None:
    (tmp_path / "flows").mkdir()
    pbx = {"name": "lab", "backend": "ari", "password": "x", "trunk": "PJSIP/{number}@trunk"}
    base = {"pbx": [pbx], "ivr": {"app": "campaign-ivr", "flows": "flows"}}
    with pytest.raises(ConfigError, match="ivr_app"):
        parse_config(base, str(tmp_path / "run.toml"))
    cfg = parse_config({**base, "pbx": [{**pbx, "ivr_app": "campaign-ivr"}]},
                       str(tmp_path / "run.toml"))
    backend = make_backend(cfg.pbxs[0])
    assert isinstance(backend, AriTelephony) and backend.ivr_app == "campaign-ivr"
    ami = make_backend(dataclasses.replace(cfg.pbxs[0], backend="ami"))
    assert isinstance(ami, AmiTelephony) and ami.ivr_app == "campaign-ivr"
    # Without one: both default to the IVR's default app.
    plain = parse_config({"pbx": [pbx]}, str(tmp_path / "run.toml"))
    assert plain.pbxs[0].ivr_app == "paceline-ivr"
