"""`AriTelephony` against the ARI emulator over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cti.ari import AriTelephony
from cti.events import CallEventKind
from cti.interface import (
    AuthenticationFailed,
    BackendUnavailable,
    OriginateRequest,
    Telephony,
    UnknownCall,
)
from dialer.domain import Outcome
from sim.pbx.ari_server import AriServer
from sim.population import CalleeKind, Override, deterministic_test_population
from tests.telephony_scenarios import Recorder

SCALE = 0.01  # 1 emulated second = 10 ms
CARD = "4111111111111111#"

POPULATION = dataclasses.replace(
    deterministic_test_population(),
    ring_range_s=(0.5, 3.0),
    talk_median_s=10.0,
    talk_max_s=20.0,
    machine_talk_range_s=(50.0, 80.0),  # the greeting outlasts AMD (0.5 s) under load
    overrides=(
        # long calls for the agent / transfer / hold tests (they end by our hangup)
        Override(r"0500$", CalleeKind.HUMAN, ring_s=0.5, talk_s=3000.0),
        Override(r"0700$", CalleeKind.HUMAN, ring_s=0.5, talk_s=3000.0, dtmf=CARD),
        *deterministic_test_population().overrides,
    ),
)

SUFFIXES = ["0017", "0019", "0021", "0001", "0034", "0666", "0100", "0234", "0042", "0777"]


def expected_outcome(number: str) -> Outcome:
    return POPULATION.draw(number, random.Random(0)).outcome


@pytest.fixture
async def server() -> AsyncIterator[AriServer]:
    async with AriServer(time_scale=SCALE, population=POPULATION, seed=7) as srv:
        yield srv


@pytest.fixture
async def tel(server: AriServer) -> AsyncIterator[tuple[AriTelephony, Recorder]]:
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}",
            "dialer",
            "dialer",
            app="paceline",
            reconnect_initial_s=0.3,
            reconnect_max_s=1.0,
        ) as telephony,
        Recorder(telephony).running() as recorder,
    ):
        yield telephony, recorder


def customer(number: str, call_id: str | None = None, **kw: object) -> OriginateRequest:
    return OriginateRequest(
        call_id=call_id or f"call-{number}",
        endpoint=f"Local/{number}@sim-customers",
        caller_id="Dialer <5550100>",
        ring_timeout_s=15,
        **kw,  # type: ignore[arg-type]
    )


async def answered_call(
    tel: tuple[AriTelephony, Recorder], number: str = "5550500", **kw: object
) -> str:
    telephony, rec = tel
    request = customer(number, **kw)
    await telephony.originate(request)
    await rec.until_event(request.call_id, CallEventKind.ANSWERED)
    return request.call_id


async def test_is_a_telephony(tel: tuple[AriTelephony, Recorder]) -> None:
    assert isinstance(tel[0], Telephony)
    assert tel[0].connected


async def test_200_calls_with_mixed_outcomes_each_reach_exactly_one_right_hangup(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    numbers = [f"55{i:03d}{SUFFIXES[i % len(SUFFIXES)]}" for i in range(200)]
    await asyncio.gather(*(telephony.originate(customer(n, amd=True)) for n in numbers))
    ids = {f"call-{n}": n for n in numbers}

    def all_done() -> bool:
        return {e.call_id for e in rec.events if e.kind is CallEventKind.HANGUP} >= set(ids)

    await rec.until(all_done, timeout=20)
    wrong = []
    for call_id, number in ids.items():
        hangups = rec.of(call_id, CallEventKind.HANGUP)
        assert len(hangups) == 1, (call_id, hangups)
        if hangups[0].outcome is not expected_outcome(number):
            wrong.append((number, hangups[0].outcome, hangups[0].cause))
        assert server.channels_created[call_id] == 1
        assert rec.kinds(call_id)[0] is CallEventKind.DIALING
    assert wrong == []
    machines = [n for n in numbers if n.endswith("0666")]
    for n in machines:
        (amd,) = rec.of(f"call-{n}", CallEventKind.AMD)
        assert (amd.amd, amd.amd_cause) == ("MACHINE", "LONGGREETING-1500-1500")
    assert server.live_channel_ids() == []


async def test_replayed_originate_makes_no_second_call(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    request = customer("5550500")
    await telephony.originate(request)
    await telephony.originate(request)  # e.g. retried after a lost response
    assert server.originate_requests[request.call_id] == 2
    assert server.channels_created[request.call_id] == 1
    await rec.until_event(request.call_id, CallEventKind.ANSWERED)
    await telephony.hangup(request.call_id)
    await rec.until_event(request.call_id, CallEventKind.HANGUP)
    assert len(rec.of(request.call_id, CallEventKind.HANGUP)) == 1


@pytest.mark.parametrize("agent", ["Local/1001@agents", "Local/2001@agents", "PJSIP/agent7"])
async def test_answered_call_is_bridged_with_the_agent(
    server: AriServer, tel: tuple[AriTelephony, Recorder], agent: str
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.connect_to_agent(call_id, agent)
    bridged = await rec.until_event(call_id, CallEventKind.BRIDGED)
    assert bridged.peer == agent
    (agent_leg,) = server.bridge_members(call_id)
    assert agent_leg.startswith(f"{call_id}.agent")
    await telephony.hangup(call_id)
    hangup = await rec.until_event(call_id, CallEventKind.HANGUP)
    assert (hangup.cause, hangup.outcome) == (16, Outcome.HUMAN)
    await rec.until(lambda: server.live_channel_ids() == [], timeout=2)  # agent leg dropped


async def test_busy_agent_reports_unbridged_with_the_cause(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.connect_to_agent(call_id, "Local/9001@agents")
    failed = await rec.until_event(call_id, CallEventKind.UNBRIDGED)
    assert (failed.peer, failed.cause) == ("Local/9001@agents", 17)
    assert CallEventKind.BRIDGED not in rec.kinds(call_id)
    await telephony.hangup(call_id)
    await rec.until_event(call_id, CallEventKind.HANGUP)


async def test_blind_transfer_drops_the_agent_and_bridges_the_target_in_stasis(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.connect_to_agent(call_id, "Local/1001@agents")
    await rec.until_event(call_id, CallEventKind.BRIDGED)
    (agent_leg,) = server.bridge_members(call_id)
    await telephony.blind_transfer(call_id, "1002@agents")
    transferred = await rec.until_event(call_id, CallEventKind.TRANSFERRED)
    assert (transferred.target, transferred.detail) == ("1002@agents", "blind")
    await rec.until_event(call_id, CallEventKind.UNBRIDGED)
    await rec.until(lambda: agent_leg not in server.live_channel_ids(), timeout=2)
    # The customer never left Stasis: it is bridged with the target, still in view.
    await rec.until(lambda: rec.kinds(call_id).count(CallEventKind.BRIDGED) == 2, timeout=2)
    bridged = rec.of(call_id, CallEventKind.BRIDGED)
    assert bridged[-1].peer == "Local/1002@agents"
    (new_leg,) = server.bridge_members(call_id)
    assert new_leg != agent_leg
    assert CallEventKind.HANGUP not in rec.kinds(call_id)
    await telephony.hangup(call_id)
    hangup = await rec.until_event(call_id, CallEventKind.HANGUP)
    assert hangup.outcome is Outcome.HUMAN


async def test_attended_transfer_consults_then_moves_the_customer_to_the_target(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.connect_to_agent(call_id, "Local/1001@agents")
    await rec.until_event(call_id, CallEventKind.BRIDGED)
    (agent_leg,) = server.bridge_members(call_id)
    await telephony.attended_transfer(call_id, "Local/2003@agents")
    transferred = await rec.until_event(call_id, CallEventKind.TRANSFERRED)
    assert transferred.target == "Local/2003@agents"
    (peer,) = server.bridge_members(call_id)
    assert peer.startswith(f"{call_id}.consult")
    assert agent_leg not in server.live_channel_ids()
    kinds = rec.kinds(call_id)
    assert kinds.index(CallEventKind.HELD) < kinds.index(CallEventKind.UNHELD)
    assert kinds.index(CallEventKind.UNHELD) < kinds.index(CallEventKind.TRANSFERRED)
    assert not server.moh_active(call_id)
    bridged = rec.of(call_id, CallEventKind.BRIDGED)
    assert [b.peer for b in bridged] == ["Local/1001@agents", "Local/2003@agents"]
    await telephony.hangup(call_id)
    await rec.until_event(call_id, CallEventKind.HANGUP)
    await rec.until(lambda: server.live_channel_ids() == [], timeout=2)


async def test_hold_and_unhold_use_moh_and_are_reported(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.hold(call_id)
    assert server.moh_active(call_id)
    await rec.until_event(call_id, CallEventKind.HELD)
    await telephony.unhold(call_id)
    assert not server.moh_active(call_id)
    await rec.until_event(call_id, CallEventKind.UNHELD)
    await telephony.hangup(call_id)


@pytest.mark.parametrize(("cause", "reason_cause"), [(16, 16), (17, 17), (21, 21), (42, 42)])
async def test_hangup_with_a_cause_reaches_asterisk(
    tel: tuple[AriTelephony, Recorder], cause: int, reason_cause: int
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.hangup(call_id, cause)
    hangup = await rec.until_event(call_id, CallEventKind.HANGUP)
    assert (hangup.cause, hangup.outcome) == (reason_cause, Outcome.HUMAN)


async def test_hangup_of_an_unknown_call_raises_unknown_call(
    tel: tuple[AriTelephony, Recorder],
) -> None:
    with pytest.raises(UnknownCall):
        await tel[0].hangup("no-such-call")
    with pytest.raises(UnknownCall):
        await tel[0].hold("no-such-call")


async def test_hangup_while_ringing_is_no_answer(tel: tuple[AriTelephony, Recorder]) -> None:
    telephony, rec = tel
    request = customer("5550019")
    await telephony.originate(request)
    await rec.until_event(request.call_id, CallEventKind.RINGING)
    await telephony.hangup(request.call_id)
    hangup = await rec.until_event(request.call_id, CallEventKind.HANGUP)
    assert (hangup.cause, hangup.outcome) == (16, Outcome.NO_ANSWER)


async def test_dtmf_both_ways_and_digits_never_logged(
    server: AriServer, tel: tuple[AriTelephony, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    telephony, rec = tel
    call_id = await answered_call(tel, "5550700")
    await rec.until(lambda: len(rec.of(call_id, CallEventKind.DTMF)) == len(CARD))
    assert "".join(e.digit or "" for e in rec.of(call_id, CallEventKind.DTMF)) == CARD
    await telephony.send_dtmf(call_id, "1234#")
    assert server.dtmf_sent[call_id] == "1234#"
    with pytest.raises(ValueError):
        await telephony.send_dtmf(call_id, "12x")
    await telephony.hangup(call_id)
    await rec.until_event(call_id, CallEventKind.HANGUP)
    assert "4111111111111111" not in caplog.text
    assert "1234#" not in caplog.text


@pytest.mark.parametrize("sound", ["hello-world", "no-such-sound"])
async def test_play_and_hangup_hangs_up_when_the_playback_ends(
    tel: tuple[AriTelephony, Recorder], sound: str
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.play_and_hangup(call_id, sound)
    hangup = await rec.until_event(call_id, CallEventKind.HANGUP)
    assert (hangup.cause, hangup.outcome) == (16, Outcome.HUMAN)


async def test_websocket_dropped_mid_campaign_reconnects_and_reports_every_end(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    numbers = [f"56{i:03d}{SUFFIXES[i % len(SUFFIXES)]}" for i in range(60)]
    await asyncio.gather(*(telephony.originate(customer(n, amd=True)) for n in numbers))
    await asyncio.sleep(0.01)
    server.drop_websockets()
    await rec.until_backend(CallEventKind.BACKEND_DOWN)
    assert not telephony.connected
    with pytest.raises(BackendUnavailable):
        await telephony.originate(customer("5559999"))
    await rec.until_backend(CallEventKind.BACKEND_UP, timeout=5)
    assert telephony.connected
    ids = [f"call-{n}" for n in numbers]

    def all_done() -> bool:
        return {e.call_id for e in rec.events if e.kind is CallEventKind.HANGUP} >= set(ids)

    await rec.until(all_done, timeout=20)
    resynced = 0
    for call_id, number in zip(ids, numbers, strict=True):
        (hangup,) = rec.of(call_id, CallEventKind.HANGUP)
        if hangup.cause is None:
            resynced += 1  # ended while the link was down: reported by the resync
        elif expected_outcome(number) is Outcome.MACHINE and call_id not in server.amd_verdicts:
            # Its answer was hidden by the outage, AMD started late and the machine hung up
            # before AMD decided: nobody can know it was a machine.
            assert hangup.outcome is Outcome.HUMAN
        else:
            assert hangup.outcome is expected_outcome(number), (number, rec.kinds(call_id))
    assert resynced > 0, "the drop should have hidden some ends"
    up = rec.events.index(next(e for e in rec.events if e.kind is CallEventKind.BACKEND_UP))
    down = rec.events.index(next(e for e in rec.events if e.kind is CallEventKind.BACKEND_DOWN))
    assert down < up
    # the link works again
    await telephony.originate(customer("5550500", call_id="after"))
    await rec.until_event("after", CallEventKind.ANSWERED)
    await telephony.hangup("after")
    await rec.until_event("after", CallEventKind.HANGUP)


async def test_second_client_for_the_app_is_final_not_a_reconnect_loop(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"http://127.0.0.1:{server.port}/ari/events?app=paceline&api_key=dialer:dialer"
        ),
    ):
        down = await rec.until_backend(CallEventKind.BACKEND_DOWN)
        assert "another ARI client" in down.detail
        await asyncio.sleep(0.5)
        assert not telephony.connected
        assert CallEventKind.BACKEND_UP not in [e.kind for e in rec.events]
        with pytest.raises(BackendUnavailable, match="another ARI client"):
            await telephony.originate(customer("5550500"))


async def test_bad_password_fails_promptly(server: AriServer) -> None:
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match="401"):
        async with AriTelephony(f"http://127.0.0.1:{server.port}", "dialer", "wrong"):
            pass
    assert time.monotonic() - started < 2.0


async def test_unreachable_ari_raises_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable):
        async with AriTelephony("http://127.0.0.1:1", "dialer", "dialer"):
            pass


async def test_events_end_when_the_backend_closes(server: AriServer) -> None:
    telephony = AriTelephony(f"http://127.0.0.1:{server.port}/ari", "dialer", "dialer")
    async with telephony:
        pass
    assert [e async for e in telephony.events()] == []
    assert not telephony.connected


async def test_rest_client_raises_typed_errors_with_aris_words(server: AriServer) -> None:
    from cti.ari import AriRestClient, BadRequest, NotFound, ServerError

    async with (
        aiohttp.ClientSession() as session,
        # An answered channel can only enter an app that is connected.
        session.ws_connect(
            f"http://127.0.0.1:{server.port}/ari/events?app=paceline&api_key=dialer:dialer"
        ),
    ):
        rest = AriRestClient(session, f"http://127.0.0.1:{server.port}", api_key="dialer:dialer")
        assert (await rest.ping())["ping"] == "pong"
        with pytest.raises(NotFound) as info:
            await rest.get_channel("does-not-exist")
        assert info.value.detail == "Channel not found"
        assert "GET /channels/does-not-exist" in str(info.value)
        with pytest.raises(BadRequest, match="Invalid endpoint specified"):
            await rest.originate("garbage", app="paceline")
        with pytest.raises(ServerError, match="Allocation failed"):
            await rest.originate("NoSuchTech/123", app="paceline")
        chan = await rest.originate(
            "Local/1001@agents", app="paceline", channel_id="a1", variables={"LEAD": "42"}
        )
        assert chan["id"] == "a1"
        assert await rest.get_variable("a1", "LEAD") == "42"
        assert [c["id"] for c in await rest.list_channels()] == ["a1", "a1;2"]
        bridge = await rest.create_bridge(bridge_id="b1", name="n")
        assert bridge["id"] == "b1"
        await rest.destroy_bridge("b1")
        await rest.hangup("a1", 17)
        assert await rest.list_endpoints()


async def test_malformed_frames_on_the_socket_are_skipped_and_calls_go_on(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    for frame in ['{"type":"ChannelDestroyed",', "[]", '{"type":"Nope"}', "x" * (2 << 20)]:
        assert server.send_raw("paceline", frame)
    call_id = await answered_call(tel)
    await telephony.hangup(call_id)
    await rec.until_event(call_id, CallEventKind.HANGUP)
    assert telephony.connected


async def test_password_changed_while_down_is_final(
    server: AriServer, tel: tuple[AriTelephony, Recorder]
) -> None:
    telephony, rec = tel
    server.password = "rotated"
    server.drop_websockets()
    await rec.until(
        lambda: any(
            e.kind is CallEventKind.BACKEND_DOWN and "401" in e.detail for e in rec.backend
        ),
        timeout=5,
    )
    assert not telephony.connected
    await asyncio.sleep(0.3)
    assert CallEventKind.BACKEND_UP not in [e.kind for e in rec.events]
    with pytest.raises(BackendUnavailable, match="401"):
        await telephony.originate(customer("5550500"))
