"""The ARI emulator's inbound calls (`place_inbound`, `press`, `caller_hangup`, the IVR exit
contexts) send the events real Asterisk sends: the inbound capture and captures 12a/12b."""

# ruff: noqa: F811  (the `server`, `http` and `events` fixtures come from test_ari_emulator)

from __future__ import annotations

import json
from typing import Any

import aiohttp

from sim.pbx.ari_server import AriServer, IvrExit
from tests.test_ari_emulator import (  # noqa: F401  (fixtures)
    ARI,
    Events,
    captured_shapes,
    events,
    has,
    http,
    key_shape,
    server,
)

INBOUND = [
    json.loads(line)
    for line in (ARI.parent / "ari_events_inbound_stasis.jsonl").read_text().splitlines()
    if line.strip()
]


def of_type(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in items if e["type"] == kind]


async def test_inbound_call_enters_stasis_first_as_in_the_capture(
    server: AriServer, events: Events
) -> None:
    cid = server.place_inbound("Ann <+447700900123>", "0800123456", app="dialer",
                               args=("ivr", "payment"))
    items = await events.until(has("StasisStart"))
    assert events.types() == ["StasisStart"]  # no STASISSTATUS varset: not subscribed yet
    start = items[0]
    assert key_shape(start) == key_shape(INBOUND[0])
    assert start["args"] == ["ivr", "payment"]
    chan = start["channel"]
    assert chan["id"] == cid and chan["state"] == "Ring"
    assert chan["name"].startswith("PJSIP/trunk-")
    assert chan["caller"] == {"name": "Ann", "number": "+447700900123"}
    assert chan["dialplan"] == {"context": "from-trunk", "exten": "0800123456", "priority": 1,
                                "app_name": "Stasis", "app_data": "dialer,ivr,payment"}


async def test_answer_play_press_and_hangup_send_real_shaped_events(
    server: AriServer, http: aiohttp.ClientSession, events: Events
) -> None:
    cid = server.place_inbound("+447700900123", "100", app="dialer")
    await events.until(has("StasisStart"))
    async with http.post(f"/ari/channels/{cid}/answer") as resp:
        assert resp.status == 204
    async with http.post(f"/ari/channels/{cid}/play",
                         params={"media": "sound:tt-monkeys", "playbackId": "pb1"}) as resp:
        assert resp.status == 201
    await events.until(has("PlaybackStarted"))
    server.press(cid, "41#")
    items = await events.until(lambda it: len(of_type(it, "ChannelDtmfReceived")) == 3)
    dtmf = of_type(items, "ChannelDtmfReceived")
    assert [e["digit"] for e in dtmf] == ["4", "1", "#"]
    shapes = captured_shapes()
    assert all(key_shape(e) in shapes["ChannelDtmfReceived"] for e in dtmf)
    assert all(e["duration_ms"] == 100 for e in dtmf)
    # A digit does not stop the playback (Asterisk does not: the app DELETEs it, capture 12b).
    assert "PlaybackFinished" not in events.types()
    async with http.delete("/ari/playbacks/pb1") as resp:
        assert resp.status == 204
    items = await events.until(has("PlaybackFinished"))
    (finished,) = of_type(items, "PlaybackFinished")
    assert finished["playback"]["state"] == "done"
    assert key_shape(finished) in shapes["PlaybackFinished"]
    state_changes = of_type(items, "ChannelStateChange")
    assert [e["channel"]["state"] for e in state_changes] == ["Up"]
    server.caller_hangup(cid)
    items = await events.until(has("StasisEnd"))
    assert events.types(cid)[-2:] == ["ChannelHangupRequest", "StasisEnd"]
    assert of_type(items, "ChannelHangupRequest")[0]["cause"] == 16
    assert cid not in server.live_channel_ids()


async def continue_into(
    server: AriServer, http: aiohttp.ClientSession, events: Events, context: str, exten: str,
    variables: dict[str, str],
) -> str:
    """An inbound call that the app sends on into `context`/`exten` with `variables` set."""
    cid = server.place_inbound("+447700900123", "100", app="dialer")
    await events.until(has("StasisStart"))
    for name, value in variables.items():
        async with http.post(f"/ari/channels/{cid}/variable",
                             params={"variable": name, "value": value}) as resp:
            assert resp.status == 204
    async with http.post(f"/ari/channels/{cid}/continue",
                         params={"context": context, "extension": exten}) as resp:
        assert resp.status == 204
    await events.until(has("StasisEnd"))
    return cid


async def test_continue_into_queue_leaves_stasis_and_records_the_attached_data(
    server: AriServer, http: aiohttp.ClientSession, events: Events
) -> None:
    cid = await continue_into(server, http, events, "paceline-queue", "support",
                              {"PACELINE_VERIFIED": "True", "OTHER": "x"})
    assert server.ivr_exits[cid] == IvrExit("paceline-queue", "support",
                                            {"PACELINE_VERIFIED": "True"})
    assert server.dialplan_location(cid) == ("paceline-queue", "support")  # waits in Queue()
    server.caller_hangup(cid)
    assert server.dialplan_location(cid) is None


async def test_continue_into_external_keeps_the_number(
    server: AriServer, http: aiohttp.ClientSession, events: Events
) -> None:
    cid = await continue_into(server, http, events, "paceline-external", "+442079460000", {})
    assert server.ivr_exits[cid].context == "paceline-external"
    assert server.dialplan_location(cid) == ("paceline-external", "+442079460000")


async def test_inbound_call_to_an_app_without_a_socket_is_hung_up(server: AriServer) -> None:
    cid = server.place_inbound("+447700900123", "100", app="nobody")
    assert cid not in server.live_channel_ids()
