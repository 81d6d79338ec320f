"""ARI recordings (what the IVR needs to pause a recording while a card number is keyed in):
the REST client against the emulator, which follows Asterisk 20's res_stasis_recording and
ast_ari_channels_record(): key order, state machine, events and error texts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from cti.ari import AriRestClient, Conflict, NotFound, Unprocessable
from cti.ari.errors import BadRequest
from cti.ari.ws import AriEventDecoder
from sim.pbx.ari_server import AriServer
from tests.test_ari_faults import another_client
from tests.test_ari_telephony import CARD, POPULATION, SCALE

APP = "ivr"


class Events:
    """The raw event socket of APP, read on demand."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def until(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        for msg in self.seen:
            if msg["type"] == kind:
                self.seen.remove(msg)
                return msg
        async with asyncio.timeout(timeout):
            while True:
                msg = (await self.ws.receive()).json()
                assert AriEventDecoder().decode(json.dumps(msg)) is not None  # valid ARI
                if msg["type"] == kind:
                    return msg
                self.seen.append(msg)


@pytest.fixture
async def ari() -> AsyncIterator[tuple[AriServer, AriRestClient, Events]]:
    async with (
        AriServer(time_scale=SCALE, population=POPULATION, seed=5) as server,
        another_client(server, APP) as (rest, ws),
    ):
        yield server, rest, Events(ws)


async def answered(rest: AriRestClient, events: Events, number: str, call_id: str) -> None:
    await rest.originate(f"Local/{number}@sim-customers", app=APP, channel_id=call_id)
    start = await events.until("StasisStart")
    assert start["channel"]["id"] == call_id


async def test_record_pause_unpause_stop_keeps_the_file(
    ari: tuple[AriServer, AriRestClient, Events],
) -> None:
    _, rest, events = ari
    await answered(rest, events, "5550500", "c1")
    live = await rest.record("c1", "c1-call", format="wav")
    assert list(live) == ["name", "format", "state", "target_uri"]
    assert (live["state"], live["target_uri"]) == ("queued", "channel:c1")
    started = await events.until("RecordingStarted")
    assert started["recording"]["state"] == "recording"
    await rest.pause_recording("c1-call")
    assert (await rest.get_live_recording("c1-call"))["state"] == "paused"
    await rest.pause_recording("c1-call")  # already paused: a no-op, as in Asterisk
    await rest.unpause_recording("c1-call")
    await rest.mute_recording("c1-call")
    await rest.unmute_recording("c1-call")
    assert (await rest.get_live_recording("c1-call"))["state"] == "recording"
    await rest.stop_recording("c1-call")
    finished = await events.until("RecordingFinished")
    assert finished["recording"]["state"] == "done"
    assert isinstance(finished["recording"]["duration"], int)
    with pytest.raises(NotFound, match="Recording not found"):
        await rest.get_live_recording("c1-call")
    assert (await rest.get_stored_recording("c1-call"))["name"] == "c1-call"
    with pytest.raises(NotFound):
        await rest.pause_recording("c1-call")


async def test_cancel_discards_and_a_hangup_ends_the_recording(
    ari: tuple[AriServer, AriRestClient, Events],
) -> None:
    server, rest, events = ari
    await answered(rest, events, "5550500", "c2")
    await rest.record("c2", "dropped")
    await events.until("RecordingStarted")
    await rest.cancel_recording("dropped")
    await events.until("RecordingFinished")
    assert "dropped" not in server.stored_recordings
    await rest.record("c2", "kept")
    await events.until("RecordingStarted")
    await rest.hangup("c2")
    finished = await events.until("RecordingFinished")
    assert finished["recording"]["name"] == "kept"
    assert "kept" in server.stored_recordings


async def test_terminate_on_hash_ends_the_recording_on_the_callers_key(
    ari: tuple[AriServer, AriRestClient, Events],
) -> None:
    _, rest, events = ari
    await answered(rest, events, "5550700", "c3")  # keys in CARD, ending with '#'
    await rest.record("c3", "card", terminate_on="#")
    await events.until("RecordingStarted")
    finished = await events.until("RecordingFinished", timeout=5)
    assert finished["recording"]["name"] == "card"
    digits = [m for m in events.seen if m["type"] == "ChannelDtmfReceived"]
    assert digits and digits[-1]["digit"] == CARD[-1]


async def test_a_bridged_channel_cannot_be_recorded_but_its_bridge_can(
    ari: tuple[AriServer, AriRestClient, Events],
) -> None:
    _, rest, events = ari
    await answered(rest, events, "5550500", "c4")
    await rest.create_bridge(bridge_id="b4")
    await rest.add_channel("b4", ["c4"])
    await rest.record("c4", "bridged")
    failed = await events.until("RecordingFailed")
    assert failed["recording"]["cause"] == "Cannot record channel while in bridge"
    live = await rest.record_bridge("b4", "whole-call")
    assert live["target_uri"] == "bridge:b4"
    await events.until("RecordingStarted")
    await rest.destroy_bridge("b4")
    assert (await events.until("RecordingFinished"))["recording"]["name"] == "whole-call"


async def test_recording_errors_carry_asterisks_words(
    ari: tuple[AriServer, AriRestClient, Events],
) -> None:
    _, rest, events = ari
    await answered(rest, events, "5550500", "c5")
    with pytest.raises(Unprocessable, match="specified format is unknown on this system"):
        await rest.record("c5", "x", format="mp9")
    with pytest.raises(BadRequest, match="max_duration_seconds cannot be negative"):
        await rest.record("c5", "x", max_duration_s=-1)
    with pytest.raises(BadRequest, match="terminateOn invalid"):
        await rest.record("c5", "x", terminate_on="5")
    await rest.record("c5", "once")
    with pytest.raises(Conflict, match="Recording 'once' already exists"):
        await rest.record("c5", "once")
    with pytest.raises(NotFound, match="Channel not found"):
        await rest.record("nobody", "y")
    await rest.stop_recording("once")
    with pytest.raises(Conflict):  # ifExists=fail (the default) and the file exists
        await rest.record("c5", "once")
    await rest.record("c5", "once", if_exists="overwrite")
