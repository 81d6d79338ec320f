"""`AriTelephony` under the faults a review found: lost events across an outage, races between
a resync and an originate, slow or broken REST answers, partial failures of multi-step
commands, late answers, and the AMD dialplan. Each test fails on the code before the fix."""

# ruff: noqa: F811  (the `server` and `tel` fixtures come from test_ari_telephony)

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest

from cti.ari import AriRestClient, AriTelephony, AriTracker, ServerError
from cti.events import CallEventKind
from cti.interface import BackendUnavailable, TelephonyError
from cti.redact import luhn_ok, mask_pan, redact
from dialer.domain import Outcome
from sim.pbx import core
from sim.pbx.ari_server import AriServer
from tests.asterisk_conf import dialplan
from tests.telephony_scenarios import Recorder
from tests.test_ari_telephony import (  # noqa: F401  (fixtures)
    CARD,
    POPULATION,
    SCALE,
    answered_call,
    customer,
    server,
    tel,
)

ROOT = Path(__file__).resolve().parent.parent
DIALPLAN_FILE = ROOT / "docker" / "asterisk" / "extensions_paceline.conf"
Tel = tuple[AriTelephony, Recorder]


async def outage(server: AriServer, rec: Recorder, *, noticed: bool = True) -> None:
    """Drop the event socket now; return once the backend is up again (events were lost).
    `noticed=False`: Asterisk keeps the app active meanwhile (see `drop_websockets`)."""
    server.drop_websockets(noticed=noticed)
    await rec.until_backend(CallEventKind.BACKEND_DOWN)
    await rec.until_backend(CallEventKind.BACKEND_UP, timeout=5)


@contextlib.asynccontextmanager
async def another_client(
    server: AriServer, app: str = "dialer"
) -> AsyncIterator[tuple[AriRestClient, aiohttp.ClientWebSocketResponse]]:
    """Someone else's ARI client: REST plus the event socket of `app`."""
    base = f"http://127.0.0.1:{server.port}"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{base}/ari/events?app={app}&api_key=dialer:dialer") as ws,
    ):
        yield AriRestClient(session, base, api_key="dialer:dialer"), ws


async def through_dialer_amd(rest: AriRestClient, number: str, channel_id: str) -> None:
    """A call that reaches Stasis(dialer, human, ...) from the reference dialplan, not ours."""
    await rest.originate(
        f"Local/{number}@sim-customers", context="dialer-amd", extension=number,
        channel_id=channel_id,
    )  # fmt: skip


async def connected_call(tel: Tel, agent: str = "Local/1001@agents") -> str:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.connect_to_agent(call_id, agent)
    await rec.until_event(call_id, CallEventKind.BRIDGED)
    return call_id


# ----- 1. AMD: paceline-amd hands every verdict back to our app -----------------------------
def test_paceline_amd_context_is_defined_and_the_emulator_runs_the_same_steps() -> None:
    telephony = AriTelephony("http://127.0.0.1:1", "u", "p")
    context = dialplan(DIALPLAN_FILE)[telephony.amd_context]
    steps = [(app, data) for _, app, data in context.steps(telephony.amd_extension)]
    assert steps == [
        ("AMD", ""),
        ("Stasis", "${PACELINE_APP},amd,${AMDSTATUS}"),
        ("Hangup", ""),
    ]
    emulated = core.find_steps(telephony.amd_context, telephony.amd_extension)
    assert emulated is not None
    assert [(app, data) for _, app, data in emulated] == steps


@pytest.mark.parametrize(("number", "verdict"), [("+15550100", "HUMAN"), ("+15550666", "MACHINE")])
async def test_amd_verdict_comes_back_to_our_app_for_e164_numbers(
    server: AriServer, tel: Tel, number: str, verdict: str
) -> None:
    telephony, rec = tel
    request = customer(number, call_id=f"amd-{verdict}", amd=True)
    await telephony.originate(request)
    amd = await rec.until_event(request.call_id, CallEventKind.AMD)
    assert (amd.amd, server.amd_verdicts[request.call_id]) == (verdict, verdict)
    # Back in Stasis either way: the dialer, not the dialplan, decides what a machine gets.
    await rec.until(lambda: server.dialplan_location(request.call_id) is not None)
    assert not rec.of(request.call_id, CallEventKind.HANGUP)
    await telephony.hangup(request.call_id)
    hangup = await rec.until_event(request.call_id, CallEventKind.HANGUP)
    assert hangup.outcome is Outcome(verdict.lower())


async def test_reference_dialer_amd_is_faithful_digits_only_and_app_dialer(
    server: AriServer,
) -> None:
    async with another_client(server) as (rest, ws):
        # `_X.` does not match `+1555...`: the channel is hung up, not sent to Stasis.
        await through_dialer_amd(rest, "+15550100", "plus")
        # Digits only: a person reaches Stasis(dialer, human, <exten>).
        await through_dialer_amd(rest, "5550100", "digits")
        start = None
        async with asyncio.timeout(5):
            while start is None:
                msg = (await ws.receive()).json()
                if msg["type"] == "StasisStart":
                    start = msg
    assert (start["channel"]["id"], start["args"]) == ("digits", ["human", "5550100"])
    assert "plus" not in server.live_channel_ids()
    assert server.amd_verdicts.get("plus") is None


# ----- 2. resync: lost StasisStart and PlaybackFinished ------------------------------------
async def test_agent_answer_lost_in_an_unnoticed_outage_is_bridged_after_the_resync(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    # 2XXX agents ring 2 emulated seconds (20 ms): they answer while the link is down, and
    # enter Stasis (Asterisk has not noticed), but their StasisStart is lost.
    await telephony.connect_to_agent(call_id, "Local/2001@agents")
    await outage(server, rec, noticed=False)
    bridged = await rec.until_event(call_id, CallEventKind.BRIDGED)
    assert bridged.peer == "Local/2001@agents"
    members = server.bridge_members(call_id)
    assert len(members) == 1 and members[0].startswith(f"{call_id}.agent")
    await telephony.hangup(call_id)
    await rec.until(lambda: server.live_channel_ids() == [], timeout=3)


async def test_agent_answering_while_the_app_is_down_is_reported_lost(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.connect_to_agent(call_id, "Local/2001@agents")
    # Asterisk noticed: the answered agent cannot enter the app and is hung up.
    await outage(server, rec)
    unbridged = await rec.until_event(call_id, CallEventKind.UNBRIDGED)
    assert unbridged.peer == "Local/2001@agents"
    assert not any(".agent" in c for c in server.live_channel_ids())
    assert not rec.ended(call_id)  # the customer is still there: connect someone else
    await telephony.connect_to_agent(call_id, "Local/1001@agents")
    await rec.until_event(call_id, CallEventKind.BRIDGED)
    await telephony.hangup(call_id)


async def test_playback_ending_during_an_outage_still_hangs_up(server: AriServer, tel: Tel) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    # 5 emulated seconds: it ends 50 ms later, inside the outage (a reconnect takes >= 150 ms)
    await telephony.play_and_hangup(call_id, "tt-monkeys")
    await outage(server, rec)
    hangup = await rec.until_event(call_id, CallEventKind.HANGUP, timeout=3)
    assert hangup.outcome is Outcome.HUMAN
    assert call_id not in server.live_channel_ids()


async def test_agent_leg_gone_during_an_outage_unbridges_the_customer(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await connected_call(tel)
    (agent_leg,) = server.bridge_members(call_id)
    server.drop_websockets()
    await rec.until_backend(CallEventKind.BACKEND_DOWN)
    async with aiohttp.ClientSession() as session:
        rest = AriRestClient(session, f"http://127.0.0.1:{server.port}", api_key="dialer:dialer")
        await rest.hangup(agent_leg)  # the agent hangs up while we cannot see it
    await rec.until_backend(CallEventKind.BACKEND_UP, timeout=5)
    unbridged = await rec.until_event(call_id, CallEventKind.UNBRIDGED)
    assert unbridged.peer == "Local/1001@agents"
    await telephony.hangup(call_id)


# ----- 3. a broken answer never kills the event reader --------------------------------------
async def test_non_json_answer_to_the_resync_is_retried_not_fatal(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    server.inject_fault("GET", "/channels", body=b"<html>proxy error</html>")
    await outage(server, rec)
    assert telephony.connected
    assert server.requests[("GET", "/channels")] >= 2
    call_id = await answered_call(tel)
    await telephony.hangup(call_id)


async def test_truncated_body_is_backend_unavailable_not_a_crash() -> None:
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n[{"id"'
        )
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv, aiohttp.ClientSession() as session:
        rest = AriRestClient(session, f"http://127.0.0.1:{port}")
        with pytest.raises(BackendUnavailable, match="ClientPayloadError"):
            await rest.list_channels()


# ----- 4. no secret in an error text or a log line ------------------------------------------
def test_redact_masks_keys_digits_passwords_and_card_numbers() -> None:
    text = (
        "Cannot connect to http://dialer:s3cret@pbx:8088/ari/channels/c1/dtmf"
        "?api_key=dialer:s3cret&dtmf=4111111111111111%23&between=100 "
        "pan 4111 1111 1111 1111, phone +15550100, order 1234567890123"
    )
    out = redact(text)
    assert "s3cret" not in out and "4111111111111111" not in out
    assert "4111 1111 1111 1111" not in out and "************1111" in out
    assert "between=100" in out and "+15550100" in out
    assert "1234567890123" in out  # 13 digits that fail Luhn: not a card number
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert mask_pan("4111111111111111") == "************1111"


async def test_transport_errors_carry_no_api_key_or_dtmf(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A proxy that redirects forever: aiohttp's TooManyRedirects quotes the request URL.
    async def loop_back(request: aiohttp.web.Request) -> aiohttp.web.Response:
        raise aiohttp.web.HTTPFound(str(request.rel_url))

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", loop_back)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    caplog.set_level(logging.DEBUG)
    try:
        async with aiohttp.ClientSession() as session:
            rest = AriRestClient(session, f"http://127.0.0.1:{port}", api_key="dialer:s3cret")
            with pytest.raises(BackendUnavailable) as info:
                await rest.send_dtmf("c1", CARD)
    finally:
        await runner.cleanup()
    assert "TooManyRedirects" in str(info.value)
    # What a log line with a traceback would show (the chain as Python prints it).
    ours = [r.getMessage() for r in caplog.records if r.name != "aiohttp.access"]  # not the proxy's
    text = "".join(traceback.format_exception(info.value)) + "\n".join(ours)
    assert "s3cret" not in text
    assert "4111111111111111" not in text


async def test_dtmf_travels_in_the_body_not_the_url(server: AriServer, tel: Tel) -> None:
    telephony, _ = tel
    call_id = await answered_call(tel)
    await telephony.send_dtmf(call_id, CARD)
    assert server.dtmf_sent[call_id] == CARD
    assert server.query_log and not any("dtmf" in q for q in server.query_log)
    await telephony.hangup(call_id)


# ----- 5. a resync during an originate's POST ------------------------------------------------
async def test_resync_while_an_originate_is_in_flight_reports_no_false_hangup(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    server.inject_fault("POST", "/channels", before_s=0.8)
    request = customer("5550500", call_id="in-flight")
    placing = asyncio.create_task(telephony.originate(request))
    await rec.until(lambda: server.requests[("POST", "/channels")] == 1)
    await outage(server, rec)  # the snapshot cannot contain the call yet
    await placing
    await rec.until_event("in-flight", CallEventKind.ANSWERED, timeout=3)
    await asyncio.sleep(0.1)
    assert not rec.of("in-flight", CallEventKind.HANGUP)
    await telephony.hangup("in-flight")
    hangup = await rec.until_event("in-flight", CallEventKind.HANGUP)
    assert hangup.cause == 16


# ----- 6. a retried connect_to_agent ----------------------------------------------------------
async def test_connect_to_agent_retried_after_a_failed_add_bridges_the_customer(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    server.inject_fault("POST", "/addChannel", status=500)
    with pytest.raises(ServerError):
        await telephony.connect_to_agent(call_id, "Local/1001@agents")
    await telephony.connect_to_agent(call_id, "Local/1001@agents")
    bridged = await rec.until_event(call_id, CallEventKind.BRIDGED)
    assert bridged.peer == "Local/1001@agents"
    assert len(server.bridge_members(call_id)) == 1
    await telephony.hangup(call_id)


# ----- 7. an originate whose answer never came -----------------------------------------------
async def test_originate_that_took_although_its_answer_timed_out_is_followed(
    server: AriServer,
) -> None:
    server.inject_fault("POST", "/channels", after_s=1.0)
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", request_timeout_s=0.3
        ) as telephony,
        Recorder(telephony).running() as rec,
    ):
        await telephony.originate(customer("5550500", call_id="slow"))  # found by a lookup
        await rec.until_event("slow", CallEventKind.ANSWERED)
        await telephony.hangup("slow")
        await rec.until_event("slow", CallEventKind.HANGUP)
        assert CallEventKind.INBOUND not in [e.kind for e in rec.events]


async def test_originate_given_up_is_hung_up_if_it_takes_later(server: AriServer) -> None:
    server.inject_fault("POST", "/channels", before_s=0.6)
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", request_timeout_s=0.3
        ) as telephony,
        Recorder(telephony).running() as rec,
    ):
        with pytest.raises(BackendUnavailable):
            await telephony.originate(customer("5550500", call_id="late"))
        # The POST is carried out after we gave up: the call must not live on unseen, nor
        # be reported as an inbound caller.
        await rec.until(lambda: server.channels_created["late"] == 1, timeout=3)
        await rec.until(lambda: "late" not in server.live_channel_ids(), timeout=3)
        assert [e for e in rec.events if e.call_id == "late"] == []


# ----- 8. attended transfer failures give the customer back to the agent ---------------------
async def test_attended_transfer_whose_completion_fails_returns_the_customer(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await connected_call(tel)
    (agent_leg,) = server.bridge_members(call_id)
    server.inject_fault("POST", "/addChannel", status=500)  # adding the target fails
    with pytest.raises(TelephonyError):
        await telephony.attended_transfer(call_id, "Local/1003@agents")
    await assert_back_with_the_agent(server, rec, call_id)
    assert server.bridge_members(call_id) == [agent_leg]
    kinds = rec.kinds(call_id)
    assert kinds.index(CallEventKind.HELD) < kinds.index(CallEventKind.UNHELD)
    assert CallEventKind.TRANSFERRED not in kinds
    await telephony.hangup(call_id)


async def assert_back_with_the_agent(server: AriServer, rec: Recorder, call_id: str) -> None:
    """After a failed attended transfer: no music, with the agent again, no consult leg."""
    assert not server.moh_active(call_id)
    await rec.until(lambda: len(server.bridge_members(call_id)) == 1)
    assert ".agent" in server.bridge_members(call_id)[0]
    await rec.until(lambda: not any(".consult" in c for c in server.live_channel_ids()))


async def test_attended_transfer_to_a_busy_target_raises(server: AriServer, tel: Tel) -> None:
    telephony, rec = tel
    call_id = await connected_call(tel)
    with pytest.raises(TelephonyError, match="did not answer"):
        await telephony.attended_transfer(call_id, "Local/9003@agents")  # 9XXX: busy
    await assert_back_with_the_agent(server, rec, call_id)
    await telephony.hangup(call_id)


async def test_attended_transfer_to_a_target_that_rings_too_long_raises() -> None:
    # 1 emulated second = 100 ms: a 2XXX target rings 200 ms, four times the wait allowed.
    async with (
        AriServer(time_scale=0.1, population=POPULATION, seed=7) as server,
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", transfer_timeout_s=0.05
        ) as telephony,
        Recorder(telephony).running() as rec,
    ):
        call_id = await connected_call((telephony, rec))
        with pytest.raises(TelephonyError, match="did not answer"):
            await telephony.attended_transfer(call_id, "Local/2003@agents")
        await assert_back_with_the_agent(server, rec, call_id)
        await telephony.hangup(call_id)


# ----- 9 and 11. inbound calls are followed beyond Stasis; the emulator is faithful ----------
async def test_inbound_call_leaving_stasis_is_followed_until_it_ends(server: AriServer) -> None:
    async with (
        AriTelephony(f"http://127.0.0.1:{server.port}", "dialer", "dialer", app="dialer") as tel,
        aiohttp.ClientSession() as session,
        Recorder(tel).running() as rec,
    ):
        base = f"http://127.0.0.1:{server.port}"
        rest = AriRestClient(session, base, api_key="dialer:dialer")
        await through_dialer_amd(rest, "5550500", "in1")
        await rec.until_event("in1", CallEventKind.INBOUND)
        await rec.until(lambda: server.requests[("POST", "/applications/dialer/subscription")] > 0)
        await asyncio.sleep(0.05)
        await rest.continue_in_dialplan("in1", context="agents", extension="1001", priority=1)
        await asyncio.sleep(0.1)
        assert not rec.of("in1", CallEventKind.HANGUP)  # it left Stasis, it did not end
        await rest.hangup("in1", 17)
        hangup = await rec.until_event("in1", CallEventKind.HANGUP)
        assert hangup.cause == 17


def test_unsubscribed_inbound_leg_ends_when_it_leaves_stasis() -> None:
    tracker = AriTracker()
    chan = {"id": "in2", "state": "Up"}
    kinds = [e.kind for e in tracker.feed({"type": "StasisStart", "args": [], "channel": chan})]
    assert kinds == [CallEventKind.INBOUND, CallEventKind.ANSWERED]
    (hangup,) = tracker.feed({"type": "StasisEnd", "channel": chan})
    assert (hangup.kind, hangup.cause) == (CallEventKind.HANGUP, None)
    assert "no longer followed" in hangup.detail
    assert tracker.live_call_ids() == []


async def test_emulator_sends_nothing_after_stasis_end_unless_subscribed(
    server: AriServer,
) -> None:
    async with another_client(server) as (rest, ws):

        async def types_until(kind: str, channel_id: str) -> list[str]:
            seen: list[str] = []
            async with asyncio.timeout(5):
                while kind not in seen:
                    msg = (await ws.receive()).json()
                    if msg.get("channel", {}).get("id") == channel_id:
                        seen.append(msg["type"])
            return seen

        for channel_id, subscribe in (("plain", False), ("followed", True)):
            await through_dialer_amd(rest, "5550500", channel_id)
            await types_until("StasisStart", channel_id)
            if subscribe:
                await rest.subscribe("dialer", [f"channel:{channel_id}"])
            await rest.continue_in_dialplan(channel_id, context="agents", extension="1001")
            await types_until("StasisEnd", channel_id)
            await rest.hangup(channel_id)
            if subscribe:
                assert "ChannelDestroyed" in await types_until("ChannelDestroyed", channel_id)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        msg = (await ws.receive()).json()
                        assert msg.get("channel", {}).get("id") != channel_id, msg


# ----- 10. an agent who answers after the customer left ---------------------------------------
async def test_agent_dialled_while_the_customer_hangs_up_does_not_stay(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    server.inject_fault("POST", "/channels", before_s=0.3)  # the agent's originate is slow
    connecting = asyncio.create_task(telephony.connect_to_agent(call_id, "Local/1001@agents"))
    await rec.until(lambda: server.requests[("POST", "/channels")] == 2)
    await telephony.hangup(call_id)
    await rec.until_event(call_id, CallEventKind.HANGUP)
    with contextlib.suppress(TelephonyError):
        await connecting
    await rec.until(lambda: server.live_channel_ids() == [], timeout=3)


async def test_agent_answering_after_the_customer_left_is_hung_up() -> None:
    # 1 emulated second = 100 ms here: the agent rings 200 ms, long enough to hang up first.
    async with (
        AriServer(time_scale=0.1, population=POPULATION, seed=7) as server,
        AriTelephony(f"http://127.0.0.1:{server.port}", "dialer", "dialer") as telephony,
        Recorder(telephony).running() as rec,
    ):
        call_id = await answered_call((telephony, rec))
        await telephony.connect_to_agent(call_id, "Local/2001@agents")
        # The cleanup's DELETE of the ringing agent is lost (a stale 404): the agent's late
        # answer must still not leave it in Stasis with nobody.
        server.inject_fault("DELETE", ".agent", status=404)
        await telephony.hangup(call_id)
        await rec.until_event(call_id, CallEventKind.HANGUP)
        assert any(".agent" in c for c in server.live_channel_ids())
        await rec.until(lambda: server.live_channel_ids() == [], timeout=3)


async def test_originate_retried_after_giving_up_is_not_hung_up(server: AriServer) -> None:
    server.inject_fault("POST", "/channels", before_s=0.6)
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", request_timeout_s=0.3
        ) as telephony,
        Recorder(telephony).running() as rec,
    ):
        request = customer("5550500", call_id="again")
        with pytest.raises(BackendUnavailable):
            await telephony.originate(request)
        await telephony.originate(request)  # the dialer tries again with the same id
        await rec.until_event("again", CallEventKind.ANSWERED)
        await asyncio.sleep(0.8)  # the first POST has been carried out meanwhile (a 409)
        assert server.channels_created["again"] == 1
        assert "again" in server.live_channel_ids()
        assert not rec.of("again", CallEventKind.HANGUP)
        await telephony.hangup("again")
        await rec.until_event("again", CallEventKind.HANGUP)


async def test_failed_replay_of_a_live_originate_keeps_the_call(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    request = customer("5550500", call_id="live")
    await telephony.originate(request)
    await rec.until_event("live", CallEventKind.ANSWERED)
    server.inject_fault("POST", "/channels", status=500)
    with pytest.raises(ServerError):
        await telephony.originate(request)
    await telephony.hold("live")  # still a call we know
    await telephony.hangup("live")
    hangup = await rec.until_event("live", CallEventKind.HANGUP)
    assert hangup.cause == 16


# ----- a second review: what the first round of fixes still missed ----------------------------
async def test_a_null_channel_list_on_resync_is_retried_not_fatal(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    server.inject_fault("GET", "/channels", body=b"null")  # a proxy's empty answer
    await outage(server, rec)
    assert telephony.connected
    assert server.requests[("GET", "/channels")] >= 2


async def test_resync_during_a_slow_play_lets_the_message_play(server: AriServer, tel: Tel) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    server.inject_fault("POST", "/play", before_s=0.8)  # the snapshot cannot contain it yet
    playing = asyncio.create_task(telephony.play_and_hangup(call_id, "beep"))
    await rec.until(lambda: server.requests[("POST", f"/channels/{call_id}/play")] == 1)
    await outage(server, rec)
    await playing
    await rec.until_event(call_id, CallEventKind.HANGUP)
    finished = [k for app, k, c in server.event_log if k == "PlaybackFinished" and c == call_id]
    assert finished, "the call was hung up before its message was played"


async def test_a_failed_playback_check_after_a_resync_is_retried(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    await telephony.play_and_hangup(call_id, "tt-monkeys")  # ends inside the outage
    server.inject_fault("GET", "/playbacks", status=500, times=2)
    await outage(server, rec)
    await rec.until_event(call_id, CallEventKind.HANGUP, timeout=5)
    assert call_id not in server.live_channel_ids()


async def test_a_transfer_that_fails_while_the_link_is_down_still_stops_the_music(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    telephony.transfer_timeout_s = 0.5
    call_id = await connected_call(tel)
    server.inject_fault("POST", "/channels", before_s=0.2)  # the consult POST is slow
    transfer = asyncio.create_task(telephony.attended_transfer(call_id, "1002"))
    await rec.until(lambda: server.moh_active(call_id))
    server.inject_fault("GET", "/channels", status=500, times=1000)  # the link stays down
    server.drop_websockets()
    with pytest.raises(TelephonyError, match="event link went down"):
        await transfer
    assert not server.moh_active(call_id)
    assert len(server.bridge_members(call_id)) == 1  # back with the agent


async def test_no_bridge_is_left_when_the_customer_hangs_up_during_connect(
    server: AriServer, tel: Tel
) -> None:
    telephony, rec = tel
    call_id = await answered_call(tel)
    server.inject_fault("POST", "/bridges", after_s=0.3)  # made, but the answer is late
    connecting = asyncio.create_task(telephony.connect_to_agent(call_id, "Local/1001@agents"))
    await rec.until(lambda: server.requests[("POST", "/bridges")] == 1)
    await telephony.hangup(call_id)
    await rec.until_event(call_id, CallEventKind.HANGUP)
    with pytest.raises(TelephonyError):
        await connecting
    await rec.until(lambda: server.requests[("DELETE", f"/bridges/{call_id}.bridge")] > 0)
    assert server.live_channel_ids() == []


async def test_an_originate_whose_answer_timed_out_after_the_call_ended_succeeds(
    server: AriServer,
) -> None:
    server.inject_fault("POST", "/channels", after_s=1.0)  # carried out; the answer is late
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", request_timeout_s=0.5
        ) as telephony,
        Recorder(telephony).running() as rec,
    ):
        await telephony.originate(customer("5550017", call_id="busy-1"))  # over by now
        hangup = await rec.until_event("busy-1", CallEventKind.HANGUP)
        assert hangup.outcome is Outcome.BUSY
        assert rec.kinds("busy-1")[0] is CallEventKind.DIALING
        assert server.channels_created["busy-1"] == 1


async def test_an_inbound_caller_whose_stasis_start_was_lost_is_found_by_the_resync(
    server: AriServer,
) -> None:
    async with (
        AriTelephony(
            f"http://127.0.0.1:{server.port}", "dialer", "dialer", app="dialer",
            reconnect_initial_s=0.3,
        ) as telephony,
        Recorder(telephony).running() as rec,
        another_client(server, "other") as (rest, _ws),
    ):  # fmt: skip
        server.drop_websockets(noticed=False)  # Asterisk keeps the app active
        await rec.until_backend(CallEventKind.BACKEND_DOWN)
        await through_dialer_amd(rest, "5550500", "in-1")  # its StasisStart is lost
        await rec.until_backend(CallEventKind.BACKEND_UP, timeout=5)
        inbound = await rec.until_event("in-1", CallEventKind.INBOUND)
        assert inbound.caller_id is not None
        await rest.hangup("in-1")
        await rec.until_event("in-1", CallEventKind.HANGUP)


def test_the_amd_verdict_waits_until_the_call_is_back_in_stasis() -> None:
    tracker = AriTracker()
    tracker.expect("c1")
    chan = {"id": "c1", "state": "Up"}
    feed = [
        {"type": "StasisStart", "args": ["customer", "c1"], "channel": chan},
        {"type": "StasisEnd", "channel": chan},  # continue into paceline-amd
        {"type": "ChannelVarset", "variable": "AMDSTATUS", "value": "HUMAN", "channel": chan},
        {"type": "ChannelVarset", "variable": "AMDCAUSE", "value": "HUMAN-1-1", "channel": chan},
        {"type": "ChannelDialplan", "dialplan_app": "Stasis", "channel": chan},
    ]
    kinds = [e.kind for ev in feed for e in tracker.feed(ev)]
    assert CallEventKind.AMD not in kinds  # still in the dialplan: a bridge would get a 422
    back = {"type": "StasisStart", "args": ["amd", "HUMAN"], "channel": chan}
    (amd,) = [e for e in tracker.feed(back) if e.kind is CallEventKind.AMD]
    assert (amd.amd, amd.amd_cause) == ("HUMAN", "HUMAN-1-1")
