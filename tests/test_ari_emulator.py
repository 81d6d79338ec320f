"""The ARI emulator answers like the captured Asterisk 20.20.1: same status codes, bodies,
JSON key order, and event shapes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cti.ari import AriRestClient, NotFound
from cti.ari.errors import BadRequest
from sim.pbx.ari_server import AriServer
from tests.test_ari_faults import another_client
from tests.test_ari_recording import Events as RawEvents

ARI = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts" / "ari"
CAPTURES = sorted(ARI.glob("*.ws.jsonl")) + sorted(ARI.parent.glob("ari_events_*.jsonl"))
SCALE = 0.01
AUTH = {"Authorization": "Basic " + base64.b64encode(b"dialer:dialer").decode()}


def key_shape(obj: Any) -> Any:
    """Key order, recursively (lists by their first element): what 'same shape' means here."""
    if isinstance(obj, dict):
        return [(k, key_shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [key_shape(obj[0])] if obj and isinstance(obj[0], dict) else []
    return None


def captured_shapes() -> dict[str, list[Any]]:
    """Event type -> the key shapes it has in the captures."""
    shapes: dict[str, list[Any]] = {}
    for path in CAPTURES:
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                msg = rec.get("msg", rec)
                shape = key_shape(msg)
                shapes.setdefault(msg["type"], [])
                if shape not in shapes[msg["type"]]:
                    shapes[msg["type"]].append(shape)
    return shapes


def http_records(name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (ARI / f"{name}.http.jsonl").read_text().splitlines()]


CAPTURED_CHANNEL = http_records("11_ari_originate_bridge_agent_hangup")[1]["body"]
CAPTURED_BRIDGE = http_records("11_ari_originate_bridge_agent_hangup")[2]["body"]


@pytest.fixture
async def server() -> AsyncIterator[AriServer]:
    async with AriServer(time_scale=SCALE) as srv:
        yield srv


@pytest.fixture
async def http(server: AriServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{server.port}", headers=AUTH
    ) as session:
        yield session


class Events:
    """An event WebSocket of app `dialer`, collecting decoded events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.items: list[dict[str, Any]] = []

    async def until(self, pred: Any, timeout: float = 3.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while not pred(self.items):
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.items.append(json.loads(msg.data))
                else:
                    raise AssertionError(f"socket ended: {msg.type}")
        return self.items

    def types(self, channel_id: str | None = None) -> list[str]:
        return [
            e["type"]
            for e in self.items
            if channel_id is None
            or (e.get("channel") or e.get("peer") or {}).get("id") == channel_id
        ]


@pytest.fixture
async def events(http: aiohttp.ClientSession) -> AsyncIterator[Events]:
    async with http.ws_connect("/ari/events?app=dialer") as ws:
        yield Events(ws)


def has(kind: str, channel_id: str | None = None) -> Any:
    def pred(items: list[dict[str, Any]]) -> bool:
        return any(
            e["type"] == kind
            and (channel_id is None or (e.get("channel") or {}).get("id") == channel_id)
            for e in items
        )

    return pred


async def test_originate_returns_a_channel_shaped_exactly_like_asterisks(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post(
        "/ari/channels",
        params={
            "endpoint": "Local/5550100@sim-customers",
            "app": "dialer",
            "appArgs": "customer,lead-100",
            "callerId": "Dialer <5550100>",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert key_shape(body) == key_shape(CAPTURED_CHANNEL)
    assert body["state"] == "Down"
    assert body["caller"] == {"name": "Dialer", "number": "5550100"}
    assert body["dialplan"]["app_name"] == "AppDial2"
    assert body["name"].startswith("Local/5550100@sim-customers-") and body["name"].endswith(";1")


async def test_answered_call_events_have_the_captured_types_and_key_orders(
    server: AriServer, http: aiohttp.ClientSession, events: Events
) -> None:
    server._population = server._population  # the deterministic test population
    async with http.post(
        "/ari/channels",
        params={
            "endpoint": "Local/5550100@sim-customers",
            "app": "dialer",
            "appArgs": "customer,x",
            "channelId": "call-1",
        },
    ) as resp:
        assert resp.status == 200
    await events.until(has("StasisStart", "call-1"), timeout=5)
    start = next(e for e in events.items if e["type"] == "StasisStart")
    assert start["args"] == ["customer", "x"]
    assert start["channel"]["dialplan"]["app_name"] == "Stasis"
    async with http.post("/ari/bridges", params={"type": "mixing", "name": "b"}) as resp:
        bridge = await resp.json()
    assert key_shape(bridge) == key_shape(CAPTURED_BRIDGE)
    async with http.post(
        f"/ari/bridges/{bridge['id']}/addChannel", params={"channel": "call-1"}
    ) as resp:
        assert resp.status == 204
    async with http.post("/ari/channels/call-1/play", params={"media": "sound:no-such"}) as resp:
        assert resp.status == 201
        assert resp.headers["Location"].startswith("/ari/playbacks/")
    await events.until(has("PlaybackFinished"))
    async with http.delete(f"/ari/bridges/{bridge['id']}") as resp:
        assert resp.status == 204
    async with http.delete("/ari/channels/call-1") as resp:
        assert resp.status == 204
    await events.until(has("ChannelDestroyed", "call-1"))
    shapes = captured_shapes()
    for event in events.items:
        assert event["type"] in shapes, event["type"]
        assert key_shape(event) in shapes[event["type"]], (event["type"], list(event))
    assert "BridgeCreated" not in events.types()
    assert "BridgeDestroyed" in events.types()
    finished = next(e for e in events.items if e["type"] == "PlaybackFinished")
    assert finished["playback"]["state"] == "failed"  # missing sound
    ours = events.types("call-1")
    assert ours.index("ChannelStateChange") < ours.index("StasisStart")
    hangup = [e for e in events.items if e["type"] == "ChannelHangupRequest"]
    assert (hangup[0]["cause"], hangup[0]["soft"], hangup[0]["channel"]["id"]) == (
        32,
        True,
        "call-1",
    )
    destroyed = next(
        e
        for e in events.items
        if e["type"] == "ChannelDestroyed" and e["channel"]["id"] == "call-1"
    )
    assert (destroyed["cause"], destroyed["cause_txt"]) == (16, "Normal Clearing")


@pytest.mark.parametrize(
    ("suffix", "cause", "cause_txt"),
    [
        ("0017", 17, "User busy"),
        ("0021", 21, "Call Rejected"),
        ("0001", 1, "Unallocated (unassigned) number"),
        ("0034", 34, "Circuit/channel congestion"),
    ],
)
async def test_failed_callees_never_enter_stasis_and_end_with_their_cause(
    http: aiohttp.ClientSession, events: Events, suffix: str, cause: int, cause_txt: str
) -> None:
    async with http.post(
        "/ari/channels",
        params={"endpoint": f"PJSIP/555{suffix}@trunk", "app": "dialer", "channelId": "f1"},
    ):
        pass
    await events.until(has("ChannelDestroyed", "f1"))
    assert "StasisStart" not in events.types("f1")
    destroyed = next(e for e in events.items if e["type"] == "ChannelDestroyed")
    assert (destroyed["cause"], destroyed["cause_txt"]) == (cause, cause_txt)


async def test_callee_dtmf_arrives_with_digit_and_duration(
    events: Events, http: aiohttp.ClientSession
) -> None:
    from sim.population import CalleeKind, Override, Population

    srv_pop = Population(
        weights={CalleeKind.HUMAN: 1.0},
        overrides=(Override("0700$", CalleeKind.HUMAN, ring_s=0.1, talk_s=100, dtmf="12#"),),
    )
    async with (
        AriServer(time_scale=SCALE, population=srv_pop) as srv,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{srv.port}", headers=AUTH) as s,
        s.ws_connect("/ari/events?app=dialer") as ws,
    ):
        ev = Events(ws)
        async with s.post(
            "/ari/channels",
            params={
                "endpoint": "Local/5550700@sim-customers",
                "app": "dialer",
                "channelId": "d",
            },
        ):
            pass
        await ev.until(lambda items: sum(e["type"] == "ChannelDtmfReceived" for e in items) == 3)
        dtmf = [e for e in ev.items if e["type"] == "ChannelDtmfReceived"]
        assert "".join(e["digit"] for e in dtmf) == "12#"
        assert list(dtmf[0])[:4] == ["type", "timestamp", "digit", "duration_ms"]
        assert dtmf[0]["duration_ms"] == 100


async def test_duplicate_channel_id_is_refused_like_asterisk_and_makes_no_second_call(
    server: AriServer, http: aiohttp.ClientSession
) -> None:
    params = {"endpoint": "Local/5550100@sim-customers", "app": "dialer", "channelId": "dup-1"}
    async with http.post("/ari/channels", params=params) as resp:
        assert resp.status == 200
    async with http.post("/ari/channels", params=params) as resp:
        assert resp.status == 409
        assert await resp.read() == b'{"message":"Channel with given unique ID already exists"}'
    assert server.channels_created["dup-1"] == 1
    assert server.originate_requests["dup-1"] == 2


ERROR_REPLAYS = [
    r
    for r in http_records("10_ari_error_responses")
    if r["status"] >= 400
    and r["status"] != 401
    and not r["target"].startswith(("/ari/events", "/ari/recordings", "/ari/sounds"))
    and "1795428405.412" not in r["target"]  # the not-in-Stasis channel is checked below
    and "subscription" not in r["target"]
    and "ad102a94" not in r["target"]
    and "request body" not in r["request_raw"]
    and r["status"] != 409
]


@pytest.mark.parametrize(
    "rec", ERROR_REPLAYS, ids=lambda r: f"{r['status']}-{r['method']}-{r['target'][:50]}"
)
async def test_captured_error_requests_get_the_captured_status_and_body(
    http: aiohttp.ClientSession, rec: dict[str, Any]
) -> None:
    request_body = rec["request_raw"].split("\r\n\r\n", 1)[1]
    async with http.request(
        rec["method"], rec["target"], data=request_body.encode() or None
    ) as resp:
        assert resp.status == rec["status"]
        assert (await resp.read()).decode() == rec["response_body_raw"]


async def test_channel_not_in_stasis_gets_409_and_addchannel_422(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post(
        "/ari/channels",
        params={"endpoint": "Local/1001@agents", "context": "agents", "extension": "1002"},
    ) as resp:
        chan = await resp.json()
    cid = chan["id"]
    for method, sub in [("POST", "answer"), ("POST", "moh"), ("POST", "hold"), ("POST", "dtmf")]:
        async with http.request(method, f"/ari/channels/{cid}/{sub}?dtmf=1") as resp:
            assert resp.status == 409
            assert await resp.read() == b'{"message":"Channel not in Stasis application"}'
    async with http.post("/ari/bridges", params={"type": "mixing"}) as resp:
        bridge = await resp.json()
    async with http.post(f"/ari/bridges/{bridge['id']}/addChannel", params={"channel": cid}) as r:
        assert r.status == 422
    async with http.post(
        f"/ari/bridges/{bridge['id']}/addChannel", params={"channel": "does-not-exist"}
    ) as r:
        assert (r.status, await r.read()) == (400, b'{"message":"Channel not found"}')
    async with http.post("/ari/bridges", params={"bridgeId": bridge["id"]}) as r:
        assert r.status == 409
        assert (await r.json())["message"] == f"Bridge with id '{bridge['id']}' already exists"
    async with http.delete(f"/ari/channels/{cid}", params={"reason": "nosuchreason"}) as r:
        assert r.status == 400
        assert (await r.json()) == {"message": "Invalid reason for hangup reason provided"}


async def test_bad_credentials_get_401_with_the_captured_body(server: AriServer) -> None:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}") as s:
        for params in ({}, {"api_key": "dialer:wrong"}):
            async with s.get("/ari/asterisk/info", params=params) as resp:
                assert resp.status == 401
                assert await resp.read() == b'{"message":"Authentication required"}'
                assert resp.headers["WWW-Authenticate"] == 'Basic realm="Asterisk REST Interface"'
        async with s.get("/ari/asterisk/ping", params={"api_key": "dialer:dialer"}) as resp:
            assert resp.status == 200
            assert list(await resp.json()) == ["ping", "timestamp", "asterisk_id"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect("/ari/events?app=dialer&api_key=dialer:wrong")
        assert info.value.status == 401


async def test_second_websocket_for_the_app_sends_application_replaced_to_the_first(
    http: aiohttp.ClientSession, events: Events
) -> None:
    async with http.ws_connect("/ari/events?app=dialer"):
        items = await events.until(has("ApplicationReplaced"))
    (replaced,) = items
    assert list(replaced) == ["type", "timestamp", "application", "asterisk_id"]
    assert replaced["application"] == "dialer"


async def test_drop_websockets_closes_sockets_while_calls_go_on(
    server: AriServer, http: aiohttp.ClientSession, events: Events
) -> None:
    async with http.post(
        "/ari/channels",
        params={"endpoint": "Local/5550100@sim-customers", "app": "dialer", "channelId": "k"},
    ):
        pass
    server.drop_websockets()
    msg = await asyncio.wait_for(events.ws.receive(), 2)
    while msg.type is aiohttp.WSMsgType.TEXT:
        msg = await asyncio.wait_for(events.ws.receive(), 2)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    async with http.get("/ari/channels") as resp:
        assert "k" in [c["id"] for c in await resp.json()]


async def test_list_channels_and_variables(http: aiohttp.ClientSession) -> None:
    # The app must be connected: an answered channel cannot enter an app that is not active.
    ws = await http.ws_connect("/ari/events?app=dialer")
    async with http.post(
        "/ari/channels",
        params={"endpoint": "Local/1001@agents", "app": "dialer", "channelId": "agent-leg-1"},
        json={"variables": {"CAMPAIGN": "spring"}},
    ) as resp:
        assert resp.status == 200
    while (await ws.receive_json())["type"] != "StasisStart":
        pass
    async with http.get("/ari/channels") as resp:
        ids = [c["id"] for c in await resp.json()]
    assert ids == ["agent-leg-1", "agent-leg-1;2"]
    async with http.get("/ari/channels/agent-leg-1/variable?variable=CAMPAIGN") as resp:
        assert await resp.json() == {"value": "spring"}
    async with http.get("/ari/channels/agent-leg-1/variable?variable=NOT_SET_VAR") as resp:
        assert (resp.status, await resp.json()) == (
            404,
            {"message": "Provided variable was not found"},
        )


async def test_run_pbx_serves_ari_next_to_ami_when_asked() -> None:
    from sim.pbx.runner import run_pbx

    async with run_pbx(ami_port=0, ari_port=0, auth_fail_delay_s=0.01) as pbx:
        assert pbx.ari is not None and pbx.ari_port
        async with (
            aiohttp.ClientSession(headers=AUTH) as s,
            s.get(f"http://127.0.0.1:{pbx.ari_port}/ari/asterisk/ping") as resp,
        ):
            assert (await resp.json())["ping"] == "pong"
    async with run_pbx(ami_port=0, auth_fail_delay_s=0.01) as pbx:
        assert pbx.ari is None and pbx.ari_port is None


def captured_types_of(name: str, channel_id: str) -> list[str]:
    out = []
    for line in (ARI / f"{name}.ws.jsonl").read_text().splitlines():
        msg = json.loads(line)["msg"]
        if (msg.get("channel") or msg.get("peer") or {}).get("id") == channel_id:
            out.append(msg["type"])
    return out


async def test_customer_leg_event_sequence_matches_capture_11(
    http: aiohttp.ClientSession, events: Events
) -> None:
    """Originate, answer into Stasis, bridge with an agent, DELETE: the customer channel's
    events come in the captured order (ChannelConnectedLine on bridging excepted)."""
    base = {"app": "dialer", "callerId": "Dialer <5550100>"}
    async with http.post(
        "/ari/channels",
        params={**base, "endpoint": "Local/5550100@sim-customers", "channelId": "cust"},
    ):
        pass
    await events.until(has("StasisStart", "cust"), timeout=5)
    async with http.post("/ari/bridges", params={"type": "mixing"}) as resp:
        bridge = (await resp.json())["id"]
    async with http.post(
        "/ari/channels", params={**base, "endpoint": "Local/1001@agents", "channelId": "agt"}
    ):
        pass
    await events.until(has("StasisStart", "agt"))
    async with http.post(
        f"/ari/bridges/{bridge}/addChannel", params={"channel": "cust,agt"}
    ) as resp:
        assert resp.status == 204
    async with http.delete("/ari/channels/cust", params={"reason": "normal"}):
        pass
    await events.until(has("ChannelDestroyed", "cust"))
    captured = [
        t
        for t in captured_types_of("11_ari_originate_bridge_agent_hangup", "1795428449.414")
        if t != "ChannelConnectedLine"
    ]
    assert events.types("cust") == captured


async def test_cli_sim_pbx_with_ari_port_serves_ari_on_the_port_it_prints() -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "dialer.cli", "sim", "pbx", "--ami-port", "0", "--ari-port", "0"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert first.startswith("AMI listening on 127.0.0.1:"), first
        line = (await asyncio.wait_for(proc.stdout.readline(), 5)).decode().strip()
        assert line.startswith("ARI listening on http://127.0.0.1:"), line
        async with (
            aiohttp.ClientSession(headers=AUTH) as s,
            s.get(f"{line.rsplit(' ', 1)[1]}/asterisk/ping") as resp,
        ):
            assert (await resp.json())["ping"] == "pong"
    finally:
        proc.terminate()
        await proc.wait()


# ----- snoop channels, and a channel recording holding the channel's playbacks ----------------


@pytest.fixture
async def ivr_link() -> AsyncIterator[tuple[AriServer, AriRestClient, RawEvents]]:
    """The emulator with app `ivr` connected: (server, REST client, raw events)."""
    async with AriServer(time_scale=SCALE) as srv, another_client(srv, "ivr") as (rest, ws):
        yield srv, rest, RawEvents(ws)


async def test_a_channel_recording_holds_the_channels_playbacks_until_it_ends(
    ivr_link: tuple[AriServer, AriRestClient, RawEvents],
) -> None:
    """record_file() runs on the channel's command queue: a play made meanwhile is queued."""
    server, rest, events = ivr_link
    cid = server.place_inbound("+15550001", "100", app="ivr")
    await events.until("StasisStart")
    await rest.record(cid, "msg", terminate_on="#")
    await events.until("RecordingStarted")
    pb = await rest.play(cid, "sound:hello-world", playback_id="p1")
    assert pb["state"] == "queued"
    await asyncio.sleep(0.1)  # hello-world lasts 14 ms here: it would be over if it ran
    assert (await rest.get_playback("p1"))["state"] == "queued"
    assert not [m for m in events.seen if m["type"].startswith("Playback")]
    server.press(cid, "#")  # the caller ends the message
    await events.until("RecordingFinished")
    started = await events.until("PlaybackStarted")
    assert started["playback"]["id"] == "p1"
    assert (await events.until("PlaybackFinished"))["playback"]["state"] == "done"
    # a play queued behind a recording when the caller hangs up never runs: no event
    await rest.record(cid, "msg2")
    await events.until("RecordingStarted")
    await rest.play(cid, "sound:hello-world", playback_id="p2")
    server.caller_hangup(cid)
    await events.until("RecordingFinished")
    await events.until("StasisEnd")
    await asyncio.sleep(0.05)
    assert not [m for m in events.seen if m["type"].startswith("Playback")]


async def test_a_snoop_channel_enters_the_app_is_recorded_and_dies_with_its_target(
    ivr_link: tuple[AriServer, AriRestClient, RawEvents],
) -> None:
    server, rest, events = ivr_link
    cid = server.place_inbound("+15550001", "100", app="ivr")
    await events.until("StasisStart")
    snoop = await rest.snoop(cid, app="ivr", app_args=["rec", "x"], snoop_id=f"{cid}.snoop")
    assert key_shape(snoop) == key_shape(CAPTURED_CHANNEL)
    assert snoop["id"] == f"{cid}.snoop" and snoop["state"] == "Up"
    assert re.fullmatch(rf"Snoop/{re.escape(cid)}-[0-9a-f]{{8}}", snoop["name"])
    start = await events.until("StasisStart")
    assert (start["channel"]["id"], start["args"]) == (f"{cid}.snoop", ["rec", "x"])
    # the snoop is recorded; the caller's own channel still plays at once
    await rest.record(f"{cid}.snoop", "whole-call")
    rec = await events.until("RecordingStarted")
    assert rec["recording"]["target_uri"] == f"channel:{cid}.snoop"
    await rest.play(cid, "sound:hello-world", playback_id="p1")
    assert (await events.until("PlaybackStarted"))["playback"]["id"] == "p1"
    await rest.pause_recording("whole-call")
    await rest.unpause_recording("whole-call")
    # the path form with the id, and what Asterisk refuses
    other = await rest.request("POST", f"/channels/{cid}/snoop/s2", params={"spy": "in",
                                                                            "app": "ivr"})
    assert other["id"] == "s2" and other["name"] != snoop["name"]
    with pytest.raises(NotFound, match="Provided channel was not found"):
        await rest.snoop("nope", app="ivr")
    with pytest.raises(BadRequest, match="at least spy or whisper"):
        await rest.snoop(cid, app="ivr", spy="none")
    with pytest.raises(BadRequest, match="Invalid direction"):
        await rest.snoop(cid, app="ivr", spy="sideways")
    # the target hangs up: the snoops follow, the recording is kept
    server.caller_hangup(cid)
    finished = await events.until("RecordingFinished")
    assert finished["recording"]["name"] == "whole-call"
    await asyncio.sleep(0.05)
    assert {f"{cid}.snoop", "s2"}.isdisjoint(server.live_channel_ids())
    assert "whole-call" in server.stored_recordings
    ends = {(await events.until("StasisEnd"))["channel"]["id"] for _ in range(3)}
    assert ends == {cid, f"{cid}.snoop", "s2"}
