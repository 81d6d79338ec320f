"""The ARI half of the Asterisk emulator: REST under `/ari/...` and the event WebSocket.

Faithful to the Asterisk 20.20.1 captures in `tests/fixtures/asterisk/transcripts/ari/`:
JSON objects (Channel, Bridge, Playback) with the captured fields in the captured order, error
bodies `{"message": ...}` with the captured texts and status codes (500 `{"error":"Allocation
failed"}` for an unknown technology), Basic auth or `api_key=user:pass`, events in the captured
field order, a second WebSocket for an app sending `ApplicationReplaced` to the first, no
BridgeCreated on POST /bridges but BridgeDestroyed on DELETE, a missing sound ending its
playback `failed`, DELETE /channels/{id} giving ChannelHangupRequest (cause 32, soft) then
ChannelDestroyed with the reason's cause, a duplicate channelId answering 409.

Who answers (the reference dialplan, `reference-config/extensions.conf`):
- `Local/<number>@sim-customers` and `PJSIP/<number>@trunk`: the population model decides
  (busy / no answer / congestion / rejected / failed end with ChannelDestroyed and the Q.850
  cause, never entering Stasis; answered callees enter Stasis, press their `dtmf` digits one
  second after the answer and hang up after `talk_s` with cause 16).
- `Local/1XXX@agents` answers at once, `2XXX` after 2 s of ringing, `9XXX` is busy;
  `PJSIP/<name>` (no `@`) answers at once. Agents never hang up by themselves.
- The AMD contexts of `sim.pbx.core.DIALPLAN` (reached by `continue` from Stasis, or by
  originating into them without `app`) run AMD: ChannelVarset AMDSTATUS and AMDCAUSE, then the
  context's own Stasis step. Paceline's `paceline-amd` (exten `s`) enters
  Stasis(${PACELINE_APP}, amd, ${AMDSTATUS}) for every verdict; the reference `dialer-amd`
  (exten `_X.`, digits only) enters Stasis(dialer, human, ${EXTEN}) for a person and hangs a
  machine up with cause 16, exactly as the reference dialplan does. An extension the pattern
  does not match, or an empty Stasis app name, hangs the channel up with cause 0.
- Anything else (an unknown context or extension) is destroyed at once with cause 0.
- Subscriptions: a channel originated with `app` (or subscribed with
  `POST /applications/{app}/subscription`) keeps sending that app its events until it is
  destroyed; a channel that merely entered Stasis from the dialplan sends nothing after its
  StasisEnd, as in the `08_amd` and inbound captures.

Simplifications (documented deviations):
- only a subset of the Local-channel events: the ;2 half gets ChannelCallerId/ConnectedLine at
  the start only, none of the Playback/Wait ChannelDialplan of the callee's own dialplan, and
  bridging sends no ChannelConnectedLine;
- hold and MOH on any channel send no event (true for Local channels, not for PJSIP ones);
- `redirect` of a Local channel is accepted and does nothing (as captured);
- events emitted while an app has no socket open are lost; a channel that tries to enter the
  Stasis of such an app is hung up (cause 16), as res_stasis refuses an app that is not active
  ("Stasis app '...' not active": Stasis() returns -1);
- a channelId can be reused once its channel is gone (as in Asterisk: only live ids clash);
- the callee's hang-up is emulated as ChannelHangupRequest (cause 16) on the ;1 channel, which
  no capture shows (the captures only hang up from the app side).

Recordings follow res_stasis_recording and ast_ari_channels_record() (Asterisk 20 source; no
capture has one): `POST /channels/{id}/record` and `/bridges/{id}/record` answer 201 with a
LiveRecording (`name`, `format`, `state`, `target_uri`) in state `queued`, then
RecordingStarted; pause/unpause/mute/unmute send no event; stop, cancel, a hang-up, the
`terminateOn` key or `maxDurationSeconds` end it with RecordingFinished (state `done`, also
after a cancel, as Asterisk publishes it). A bridged channel's recording fails with
RecordingFailed, cause `Cannot record channel while in bridge`. Stopped recordings are kept
in `stored_recordings`. A channel recording runs on the channel's Stasis command queue
(record_file -> ast_play_and_record_full holds it until the recording ends), so a
`POST /channels/{id}/play` made while a recording of that channel is queued, recording or
paused answers 201 (state `queued`) but only starts (PlaybackStarted) once the recording ends;
a hang-up meanwhile drops it without an event (its command never runs). Other commands are
not held (a simplification: on Asterisk `continue`, `answer` and the rest wait as well).

Snoop channels (res_stasis_snoop, ari_channels_handle_snoop_channel; no capture has one):
`POST /channels/{id}/snoop[/{snoopId}]` checks `spy` / `whisper` (400 `Invalid direction
specified for spy`, 400 `Direction must be specified for at least spy or whisper` when both
are none), `app` (400 `Application name is required`), then the target (404 `Provided channel
was not found`; it need not be in Stasis), and answers 200 with the new Channel: id `snoopId`
(generated if absent; a live id answers 500 `Snoop channel could not be created`), name
`Snoop/<target id>-<n:08x>`, state Up, dialplan default/s. It then enters Stasis(app, appArgs)
as pbx_exec(Stasis) does: StasisStart with the args, no STASISSTATUS ChannelVarset (no app is
subscribed yet). Its own recordings and playbacks work as on any channel in Stasis (audio is
not emulated). When its target is destroyed the snoop channel follows (its audiohook is gone):
its recording finishes, StasisEnd, ChannelDestroyed cause 0, no ChannelHangupRequest.

Inbound calls and the IVR (`ari_events_inbound_stasis.jsonl`, captures 12a and 12b):
`place_inbound()` makes a PJSIP trunk channel in state Ring whose dialplan runs Stasis at once:
StasisStart (with the args) is the first event the app hears (no STASISSTATUS ChannelVarset:
the app is not subscribed yet), and after its StasisEnd the app hears nothing more of it.
`press()` is the caller keying digits: one ChannelDtmfReceived (`digit`, `duration_ms` 100)
per digit; a playing playback is not stopped by a digit (the app DELETEs it, as in 12b).
`caller_hangup()` is the caller's BYE (ChannelHangupRequest cause 16, StasisEnd). `continue`
into `paceline-queue` (exten = queue) or `paceline-external` (exten = number) leaves Stasis and
stays in that context (Queue() / Dial(), not emulated further) until the caller hangs up;
`ivr_exits` records the context, extension and the `PACELINE_*` variables set before.
Simplification: these two contexts are Paceline's own, not yet in the reference dialplan.

Moving a channel to another app (`POST /channels/{id}/move`, res_stasis's stasis_app_exec
loop; no capture has one): 204 once queued (404 for no channel, 409 when it is not in Stasis);
then StasisEnd (to the app it leaves only) and StasisStart with the `appArgs` (to the new app
only). The app that originated the channel stays subscribed and still gets its ChannelVarset,
ChannelHangupRequest and ChannelDestroyed, as with `continue`. A target app with no event
socket (not registered or not active): the 204 still comes, then ApplicationMoveFailed
(`destination`, `args`) to the current app, and the channel stays in it. The channel keeps its
bridge and its `dialplan` (Stasis with the first app's data). `moves` records each move.

Test hooks: `channels_created` and `originate_requests` count per requested channelId,
`dtmf_sent` keeps the digits the app sent to each channel, `amd_verdicts` the AMD results,
`moh_active()`, `bridge_members()`, `dialplan_location()`, `calls` (a `sim.pbx.core.CallRecord` per
originated customer call, as the AMI side keeps); `drop_websockets()` closes every
event socket abruptly while calls go on; `send_raw()` sends any frame (malformed ones too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from cti import causes
from cti.ari.codes import CAUSE_BY_REASON
from sim.pbx.core import CallRecord, find_steps
from sim.population import CalleeBehaviour, CalleeKind, Population, deterministic_test_population

ASTERISK_ID = "02:fc:00:00:00:01"

CAUSE_TXT = causes.CAUSE_TEXT  # one table, in cti.causes

#: ARI hangup `reason` -> Q.850 cause: the client's table (one source of truth).
REASON_CAUSE = CAUSE_BY_REASON

DIALSTATUS_BY_KIND: dict[CalleeKind, str] = {
    CalleeKind.BUSY: "BUSY",
    CalleeKind.NO_ANSWER: "NOANSWER",
    CalleeKind.CONGESTION: "CONGESTION",
    CalleeKind.REJECTED: "CHANUNAVAIL",
    CalleeKind.FAILED: "CHANUNAVAIL",
}

#: Sounds the emulator can play, with their length in (unscaled) seconds.
DEFAULT_SOUNDS: dict[str, float] = {
    "hello-world": 1.4,
    "beep": 0.3,
    "vm-intro": 2.5,
    "tt-monkeys": 5.0,
    "abandon-message": 3.0,
}

PLAYBACK_OPERATIONS = frozenset({"restart", "pause", "unpause", "reverse", "forward"})
KNOWN_TECHS = frozenset({"Local", "PJSIP", "SIP"})
DTMF_FIRST_S = 1.0  # callee's first digit, seconds after the answer (12a: SendDTMF after Wait(1))
DTMF_GAP_S = 0.35  # between digits, as in 12a
AMD_S = 0.5  # AMD() analysis time
AGENT_RING_S = 2.0
CALLER_DTMF_GAP_S = 0.15  # a caller keying digits by hand (`press`), between digits

#: Paceline's IVR hand-over contexts (`continue` from the IVR app): the steps each runs, with
#: `${EXTEN}` the queue name or the number. The channel stays there until it hangs up.
IVR_EXIT_STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    "paceline-queue": (("NoOp", "paceline ivr to queue ${EXTEN}"), ("Queue", "${EXTEN}")),
    "paceline-external": (
        ("NoOp", "paceline ivr to ${EXTEN}"),
        ("Dial", "PJSIP/${EXTEN}@trunk,60"),
    ),
}


def _ts() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _parse_caller_id(text: str) -> tuple[str, str]:
    """'Dialer <5550100>' -> ('Dialer', '5550100'); '5550100' -> ('', '5550100')."""
    m = re.match(r'^\s*"?([^"<]*?)"?\s*<([^>]*)>\s*$', text)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    return "", text.strip()


@dataclass(slots=True)
class _Chan:
    id: str
    name: str
    tech: str
    context: str
    exten: str
    creationtime: str
    state: str = "Down"
    caller: tuple[str, str] = ("", "")
    connected: tuple[str, str] = ("", "")
    priority: int = 1
    app_name: str = "AppDial2"
    app_data: str = "(Outgoing Line)"
    apps: set[str] = field(default_factory=set)  # apps its events go to
    subscribed: set[str] = field(default_factory=set)  # apps that keep it after StasisEnd
    stasis_app: str | None = None
    last_app: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    bridge: str | None = None
    partner: _Chan | None = None
    half: bool = False  # the ;2 half of a Local pair
    behaviour: CalleeBehaviour | None = None
    agent: bool = False
    moh: bool = False
    alive: bool = True
    answered: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    requested_id: str = ""
    #: originate body variables that are plain variables (not functions), in body order
    originate_vars: list[tuple[str, str]] = field(default_factory=list)
    record: CallRecord | None = None  # an originated customer call (`AriServer.calls`)
    language: str = "en"  # CHANNEL(language): the endpoint's or trunk's `language` setting
    spyee: str = ""  # a snoop channel: the id of the channel it snoops on

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": "",
            "caller": {"name": self.caller[0], "number": self.caller[1]},
            "connected": {"name": self.connected[0], "number": self.connected[1]},
            "accountcode": "",
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": self.creationtime,
            "language": self.language,
        }


@dataclass(slots=True)
class _Bridge:
    id: str
    name: str
    bridge_type: str
    creationtime: str
    channels: list[str] = field(default_factory=list)
    apps: set[str] = field(default_factory=set)
    moh: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "technology": "simple_bridge" if len(self.channels) <= 2 else "softmix",
            "bridge_type": self.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": list(self.channels),
            "creationtime": self.creationtime,
            "video_mode": "talker",
        }


@dataclass(frozen=True, slots=True)
class IvrExit:
    """Where a channel went when the IVR app sent it on (`continue` into an `IVR_EXIT_STEPS`
    context), with its `PACELINE_*` channel variables at that moment."""

    context: str
    exten: str
    variables: Mapping[str, str]


@dataclass(slots=True)
class _Playback:
    id: str
    media: list[str]
    channel_id: str
    language: str
    state: str = "queued"
    index: int = 0
    timer: asyncio.Handle | None = None
    held: bool = False  # queued behind a recording of its channel (the command queue)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "media_uri": self.media[self.index]}
        if self.index + 1 < len(self.media):
            out["next_media_uri"] = self.media[self.index + 1]
        out["target_uri"] = f"channel:{self.channel_id}"
        out["language"] = self.language
        out["state"] = self.state
        return out


@dataclass(slots=True)
class _Recording:
    """A live recording (res_stasis_recording): `state` queued -> recording (-> paused) ->
    done / failed; `recorded_s` counts unpaused (emulated) seconds."""

    name: str
    format: str
    target: str  # "channel:<id>" or "bridge:<id>"
    terminate_on: str = ""  # "", "any", "*" or "#"
    max_duration_s: float = 0.0
    state: str = "queued"
    muted: bool = False
    recorded_s: float = 0.0
    resumed_at: float | None = None  # monotonic time the current unpaused stretch began
    timer: asyncio.TimerHandle | None = None

    def json(self, cause: str = "") -> dict[str, Any]:
        # Key order of stasis_app_recording_to_json(); duration once it is known.
        out: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "state": self.state,
            "target_uri": self.target,
        }
        if self.state in ("done", "canceled"):
            out["duration"] = int(self.recorded_s)
        if cause:
            out["cause"] = cause
        return out


#: File formats the emulated Asterisk can record (ast_get_format_for_file_ext).
RECORDING_FORMATS = frozenset({"wav", "wav16", "gsm", "ulaw", "alaw", "sln", "g722", "g729"})


class _Socket:
    """One event WebSocket: a queue drained in order by the connection's own handler."""

    def __init__(self, ws: web.WebSocketResponse, app: str, request: web.Request) -> None:
        self.ws = ws
        self.app = app
        self.request = request
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        #: the client is gone but Asterisk has not noticed: the app stays active, events are lost
        self.unnoticed = False

    def send(self, text: str) -> None:
        if not self.unnoticed:
            self.queue.put_nowait(text)


@dataclass(slots=True)
class _Fault:
    """One injected REST fault (see `AriServer.inject_fault`)."""

    method: str
    path: str
    status: int
    body: bytes | None
    before_s: float
    after_s: float
    times: int


class AriError(Exception):
    def __init__(self, status: int, message: str, *, reason: str = "", key: str = "message"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.key = key


class AriServer:
    """ARI over HTTP on `host:port` (port 0 = ephemeral). `start()`/`close()` or `async with`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "dialer",
        password: str = "dialer",
        population: Population | None = None,
        seed: int = 0,
        time_scale: float = 1.0,
        sounds: Mapping[str, float] | None = None,
    ) -> None:
        self.host = host
        self._want_port = port
        self.port = 0
        self.username = username
        self.password = password
        self._population = population or deterministic_test_population()
        self._rng = random.Random(seed)
        self.time_scale = time_scale
        self.sounds = dict(DEFAULT_SOUNDS if sounds is None else sounds)
        self._runner: web.AppRunner | None = None
        self._sockets: dict[str, _Socket] = {}  # app -> the socket that owns it
        self._all_sockets: set[_Socket] = set()
        self._apps_seen: set[str] = set()
        self._channels: dict[str, _Chan] = {}
        self._bridges: dict[str, _Bridge] = {}
        self._playbacks: dict[str, _Playback] = {}
        self._recordings: dict[str, _Recording] = {}  # live, by name
        #: finished recordings by name (GET /recordings/stored/{name}); tests read it too
        self.stored_recordings: dict[str, dict[str, Any]] = {}
        self._globals: dict[str, str] = {}
        self._seq = 0
        self._snoop_seq = 0  # res_stasis_snoop's chan_idx: the hex suffix of Snoop/ names
        self._epoch = int(time.time())
        self._closing = False
        #: channels actually created, per requested channelId (or generated id)
        self.channels_created: Counter[str] = Counter()
        #: POST /channels requests seen, per requested channelId ("" when none was given)
        self.originate_requests: Counter[str] = Counter()
        #: digits the app sent with POST /channels/{id}/dtmf, per channel id
        self.dtmf_sent: dict[str, str] = {}
        #: AMD verdicts reached, per channel id (a call that hangs up first has none)
        self.amd_verdicts: dict[str, str] = {}
        #: the last events sent (app, type, channel id), for tests
        self.event_log: deque[tuple[str, str, str]] = deque(maxlen=100_000)
        #: REST requests received (method, path after /ari), before any fault, for tests
        self.requests: Counter[tuple[str, str]] = Counter()
        #: the query strings of the last REST requests, as received (what a proxy would log)
        self.query_log: deque[str] = deque(maxlen=10_000)
        self._faults: list[_Fault] = []
        self._requests: set[asyncio.Future[web.StreamResponse]] = set()
        #: one record per originated customer call (a population callee), in order: what the
        #: callee did, when it answered and ended, its bridge peers and the sounds it heard
        self.calls: list[CallRecord] = []
        #: channels the IVR app sent on into `paceline-queue` / `paceline-external`, by id
        self.ivr_exits: dict[str, IvrExit] = {}
        #: channels moved to another Stasis app: (channel id, the new app, its args), in order
        self.moves: list[tuple[str, str, list[str]]] = []

    # ----- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_route("*", "/ari/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._want_port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing = True
        for work in list(self._requests):
            work.cancel()
        for chan in self._channels.values():
            for timer in chan.timers:
                timer.cancel()
        for pb in self._playbacks.values():
            if pb.timer is not None:
                pb.timer.cancel()
        for sock in list(self._all_sockets):
            sock.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await sock.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AriServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----- test hooks --------------------------------------------------------------------
    def drop_websockets(self, *, noticed: bool = True) -> None:
        """Abruptly close every event socket (a network failure); calls go on.

        `noticed=True`: Asterisk sees the socket close, so its apps are no longer active and a
        channel that tries to enter one is hung up. `noticed=False`: a link lost where Asterisk
        has not noticed yet (a partition, a dead NAT entry): the apps stay active, channels
        still enter Stasis, and their events are lost until the app reconnects."""
        for sock in list(self._all_sockets):
            sock.unnoticed = not noticed
            transport = sock.request.transport
            if transport is not None:
                transport.abort()
            sock.queue.put_nowait(None)
        if noticed:
            self._sockets.clear()
        self._all_sockets.clear()

    def inject_fault(
        self,
        method: str,
        path: str,
        *,
        status: int = 0,
        body: bytes | None = None,
        before_s: float = 0.0,
        after_s: float = 0.0,
        times: int = 1,
    ) -> None:
        """Make the next `times` REST requests whose method is `method` and whose path (after
        `/ari`) contains `path` misbehave: wait `before_s` real seconds before handling it (a
        slow Asterisk), answer `status` with `{"message": "Injected failure"}` instead of
        handling it, or answer 200 with the raw `body` (e.g. not JSON), or handle it and then
        wait `after_s` before answering (the request took effect; the answer is late)."""
        self._faults.append(_Fault(method, path, status, body, before_s, after_s, times))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.method == method and fault.path in path:
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def send_raw(self, app: str, text: str) -> bool:
        """Send any text frame to `app`'s socket (fault injection); False when none is open."""
        sock = self._sockets.get(app)
        if sock is None:
            return False
        sock.send(text)
        return True

    def live_channel_ids(self) -> list[str]:
        return list(self._channels)

    def channel_state(self, channel_id: str) -> str | None:
        chan = self._channels.get(channel_id)
        return None if chan is None else chan.state

    def moh_active(self, channel_id: str) -> bool:
        chan = self._channels.get(channel_id)
        return chan is not None and chan.moh

    def bridge_members(self, channel_id: str) -> list[str]:
        """The other channels in `channel_id`'s bridge ([] when not bridged)."""
        chan = self._channels.get(channel_id)
        if chan is None or chan.bridge is None:
            return []
        return [c for c in self._bridges[chan.bridge].channels if c != channel_id]

    def dialplan_location(self, channel_id: str) -> tuple[str, str] | None:
        chan = self._channels.get(channel_id)
        return None if chan is None else (chan.context, chan.exten)

    def place_inbound(
        self,
        caller: str,
        exten: str,
        *,
        app: str,
        args: tuple[str, ...] | list[str] = (),
        context: str = "from-trunk",
        name_prefix: str = "PJSIP/trunk",
        language: str = "en",
    ) -> str:
        """An inbound call from `caller` to `exten` whose dialplan runs Stasis(app, args...)
        at once; the channel's id.

        As in `ari_events_inbound_stasis.jsonl`: the channel is in state Ring, StasisStart
        (with `args`) is the first event the app hears, its `dialplan` names `context`,
        `exten` and Stasis with `app,args`, its `language` is `language` (as a trunk's
        `language=` setting would make it), and its caller number is `caller` (a caller id
        `Name <number>` sets the name too). The app answers it (POST .../answer) and can play,
        record and `continue`; the caller presses keys with `press` and hangs up with
        `caller_hangup`. The app is not subscribed to the channel: once it leaves Stasis the
        app hears nothing more of it. An app with no event socket: hung up (cause 16)."""
        seq = self._next_seq()
        chan = _Chan(
            id=f"{self._epoch}.{seq}",
            name=f"{name_prefix}-{seq:08x}",
            tech=name_prefix.split("/", 1)[0],
            context=context,
            exten=exten,
            creationtime=_ts(),
            state="Ring",
            caller=_parse_caller_id(caller),
            language=language,
        )
        self._channels[chan.id] = chan
        self.channels_created[chan.id] += 1
        self._enter_stasis(chan, app, list(args), varset=False)
        return chan.id

    def press(self, channel_id: str, digits: str, gap_s: float = CALLER_DTMF_GAP_S) -> None:
        """The caller keys `digits`: one ChannelDtmfReceived per digit (`digit`,
        `duration_ms` 100, as in capture 12a), the first now and then one every `gap_s`
        (emulated seconds). A playback goes on playing: Asterisk never stops one for a digit,
        the app DELETEs it (capture 12b). KeyError for a channel that is not live."""
        chan = self._channels[channel_id]
        for i, digit in enumerate(digits):
            self._later(
                chan,
                i * gap_s,
                lambda d=digit: self._chan_event(  # type: ignore[misc]
                    "ChannelDtmfReceived", chan, mid={"digit": d, "duration_ms": 100}
                ),
            )

    def caller_hangup(self, channel_id: str) -> None:
        """The caller hangs up (cause 16): ChannelHangupRequest, StasisEnd if in Stasis, and
        ChannelDestroyed to the apps still subscribed. KeyError when not live."""
        self._far_end_hangup(self._channels[channel_id])

    # ----- event plumbing ----------------------------------------------------------------
    def _emit(
        self,
        kind: str,
        apps: set[str],
        *,
        pre: Mapping[str, Any] | None = None,
        mid: Mapping[str, Any] | None = None,
        objs: Mapping[str, Any] | None = None,
        post: Mapping[str, Any] | None = None,
        channel_id: str = "",
    ) -> None:
        for app in sorted(apps):
            event: dict[str, Any] = dict(pre or {})
            event["type"] = kind
            event["timestamp"] = _ts()
            event.update(mid or {})
            event.update(objs or {})
            event.update(post or {})
            event["asterisk_id"] = ASTERISK_ID
            event["application"] = app
            self.event_log.append((app, kind, channel_id))
            sock = self._sockets.get(app)
            if sock is not None:
                sock.send(_dumps(event))

    def _chan_event(
        self,
        kind: str,
        chan: _Chan,
        *,
        pre: Mapping[str, Any] | None = None,
        mid: Mapping[str, Any] | None = None,
        post: Mapping[str, Any] | None = None,
    ) -> None:
        self._emit(
            kind,
            chan.apps,
            pre=pre,
            mid=mid,
            objs={"channel": chan.json()},
            post=post,
            channel_id=chan.id,
        )
        if kind == "ChannelDtmfReceived" and mid is not None:
            # The digit's event is published as the frame is read; then the recording
            # that reads it (terminateOn) ends.
            self._recording_dtmf(chan, str(mid.get("digit", "")))

    def _later(self, chan: _Chan, delay_s: float, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            if chan.alive and not self._closing:
                fn()

        chan.timers.append(loop.call_later(max(0.0, delay_s * self.time_scale), fire))

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self._epoch}.{self._seq}"

    # ----- HTTP dispatch -----------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        key = request.query.get("api_key")
        if key is not None:
            return key == f"{self.username}:{self.password}"
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            return decoded == f"{self.username}:{self.password}"
        return False

    @staticmethod
    def _json(status: int, body: Any, *, reason: str | None = None) -> web.Response:
        return web.Response(
            status=status,
            reason=reason,
            body=_dumps(body).encode(),
            headers={
                "Server": "Asterisk",
                "Cache-Control": "no-cache, no-store",
                "Content-Type": "application/json",
            },
        )

    @staticmethod
    def _no_content() -> web.Response:
        return web.Response(
            status=204, headers={"Server": "Asterisk", "Cache-Control": "no-cache, no-store"}
        )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        if not self._authorized(request):
            resp = self._json(401, {"message": "Authentication required"})
            resp.headers["WWW-Authenticate"] = 'Basic realm="Asterisk REST Interface"'
            return resp
        if parts == ["events"]:
            return await self._events(request)
        # Asterisk carries out a request whose client has gone (timed out, reset); aiohttp
        # would cancel the handler. The work is shielded and owned by `_requests`.
        work = asyncio.ensure_future(self._serve(request, parts))
        self._requests.add(work)
        work.add_done_callback(self._requests.discard)
        return await asyncio.shield(work)

    async def _serve(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        raw = await request.read() if request.can_read_body else b""
        path = "/" + "/".join(parts)
        self.requests[(request.method, path)] += 1
        self.query_log.append(request.query_string)
        fault = self._take_fault(request.method, path)
        if fault is not None:
            await asyncio.sleep(fault.before_s)
            if fault.status:
                return self._json(fault.status, {"message": "Injected failure"})
            if fault.body is not None:
                return web.Response(status=200, body=fault.body, content_type="text/html")
        response = self._handle(request, parts, raw)
        if fault is not None and fault.after_s:
            await asyncio.sleep(fault.after_s)
        return response

    def _handle(self, request: web.Request, parts: list[str], raw: bytes) -> web.StreamResponse:
        try:
            body: dict[str, Any] = {}
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    raise AriError(400, "Error parsing request body") from None
                if isinstance(parsed, dict):
                    body = parsed
            params: dict[str, Any] = dict(request.query)
            for k, v in body.items():
                if k != "variables" and isinstance(v, str | int | float):
                    params.setdefault(k, str(v))
            return self._route(request.method, parts, params, body)
        except AriError as err:
            return self._json(err.status, {err.key: err.message}, reason=err.reason or None)

    def _route(
        self, method: str, parts: list[str], q: dict[str, Any], body: dict[str, Any]
    ) -> web.Response:
        if not parts:
            raise AriError(404, "Resource not found")
        head, rest = parts[0], parts[1:]
        if head == "channels":
            return self._route_channels(method, rest, q, body)
        if head == "bridges":
            return self._route_bridges(method, rest, q)
        if head == "playbacks":
            return self._route_playbacks(method, rest, q)
        if head == "recordings":
            return self._route_recordings(method, rest)
        if head == "asterisk":
            return self._route_asterisk(method, rest, q)
        if head == "applications":
            return self._route_applications(method, rest, q)
        if head == "endpoints":
            return self._route_endpoints(method, rest)
        raise AriError(404, "Resource not found")

    @staticmethod
    def _method(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise AriError(405, "Invalid method")

    # ----- /channels ---------------------------------------------------------------------
    def _chan(self, channel_id: str, message: str = "Channel not found") -> _Chan:
        chan = self._channels.get(channel_id)
        if chan is None:
            raise AriError(404, message)
        return chan

    def _stasis_chan(self, channel_id: str) -> _Chan:
        chan = self._chan(channel_id)
        if chan.stasis_app is None:
            raise AriError(409, "Channel not in Stasis application")
        return chan

    def _route_channels(
        self, method: str, rest: list[str], q: dict[str, Any], body: dict[str, Any]
    ) -> web.Response:
        if not rest:
            self._method(method, ("GET", "POST"))
            if method == "GET":
                return self._json(200, [c.json() for c in self._channels.values()])
            return self._originate(q, body)
        channel_id = rest[0]
        sub = rest[1] if len(rest) > 1 else ""
        if len(rest) == 3 and sub == "snoop":  # POST /channels/{id}/snoop/{snoopId}
            self._method(method, ("POST",))
            return self._snoop(channel_id, {**q, "snoopId": rest[2]})
        if len(rest) > 2:
            raise AriError(404, "Resource not found")
        if sub == "":
            self._method(method, ("GET", "POST", "DELETE"))
            if method == "GET":
                return self._json(200, self._chan(channel_id).json())
            if method == "POST":
                return self._originate({**q, "channelId": channel_id}, body)
            return self._delete_channel(channel_id, q)
        handlers: dict[tuple[str, str], Callable[[str, dict[str, Any]], web.Response]] = {
            ("POST", "answer"): self._answer,
            ("POST", "continue"): self._continue,
            ("POST", "redirect"): self._redirect,
            ("POST", "move"): self._move,
            ("POST", "play"): self._play,
            ("POST", "moh"): self._moh_start,
            ("DELETE", "moh"): self._moh_stop,
            ("POST", "hold"): self._hold,
            ("DELETE", "hold"): self._hold,
            ("POST", "dtmf"): self._dtmf,
            ("GET", "variable"): self._get_var,
            ("POST", "variable"): self._set_var,
            ("POST", "record"): self._record_channel,
            ("POST", "snoop"): self._snoop,
        }
        handler = handlers.get((method, sub))
        if handler is None:
            if any(s == sub for _m, s in handlers):
                raise AriError(405, "Invalid method")
            raise AriError(404, "Resource not found")
        if sub == "variable" and method == "POST":
            merged = dict(q)
            merged.update({k: v for k, v in body.items() if isinstance(v, str)})
            return handler(channel_id, merged)
        return handler(channel_id, q)

    def _behaviour_for(self, tech: str, resource: str) -> tuple[str, str, str]:
        """(kind, number, context) for an endpoint: kind 'customer' | 'agent' | 'none'."""
        resource = resource.split("/", 1)[0]  # Local options such as /m or /n
        number, _, context = resource.partition("@")
        if tech == "Local":
            if context == "sim-customers":
                return "customer", number, context
            if context == "agents" and re.fullmatch(r"[129]\d{3}", number):
                return "agent", number, context
            return "none", number, context or "default"
        if context:  # PJSIP/<number>@trunk
            return "customer", number, context
        return "agent", number, "default"

    def _agent_behaviour(self, number: str, tech: str) -> CalleeBehaviour:
        if tech != "Local" or number.startswith("1"):
            return CalleeBehaviour(CalleeKind.HUMAN, 0.0, 0.0, causes.NORMAL_CLEARING)
        if number.startswith("2"):
            return CalleeBehaviour(CalleeKind.HUMAN, AGENT_RING_S, 0.0, causes.NORMAL_CLEARING)
        return CalleeBehaviour(CalleeKind.BUSY, 0.0, 0.0, causes.USER_BUSY)

    def _originate(self, q: dict[str, Any], body: dict[str, Any]) -> web.Response:
        endpoint = q.get("endpoint")
        requested = q.get("channelId") or ""
        self.originate_requests[requested] += 1
        if not endpoint:
            raise AriError(400, "Endpoint must be specified")
        app = q.get("app")
        if not app and not q.get("extension"):
            raise AriError(400, "Application or extension must be specified")
        if "/" not in endpoint:
            raise AriError(400, "Invalid endpoint specified")
        tech, resource = endpoint.split("/", 1)
        if tech not in KNOWN_TECHS:
            raise AriError(500, "Allocation failed", key="error")
        other_requested = q.get("otherChannelId")
        if (requested and requested in self._channels) or (
            other_requested and other_requested in self._channels
        ):
            raise AriError(409, "Channel with given unique ID already exists")
        kind, number, context = self._behaviour_for(tech, resource)
        if kind == "customer":
            behaviour: CalleeBehaviour | None = self._population.draw(number, self._rng)
        elif kind == "agent":
            behaviour = self._agent_behaviour(number, tech)
        else:
            behaviour = None
        self._seq += 1
        seq = self._seq
        chan_id = requested or f"{self._epoch}.{seq}"
        base = resource.split("/", 1)[0]
        caller = _parse_caller_id(str(q.get("callerId", "")))
        now = _ts()
        if tech == "Local":
            name = f"Local/{base}-{seq:08x};1"
        else:
            name = f"{tech}/{context if context != 'default' else number}-{seq:08x}"
        chan = _Chan(
            id=chan_id,
            name=name,
            tech=tech,
            context=context,
            exten=number,
            creationtime=now,
            caller=caller,
            connected=caller,
            behaviour=behaviour,
            agent=kind == "agent",
            requested_id=requested,
        )
        variables = body.get("variables")
        if isinstance(variables, dict):
            for k, v in variables.items():
                if isinstance(v, str):
                    chan.variables[str(k)] = v
                    if "(" not in str(k):
                        chan.originate_vars.append((str(k), v))
                    if k == "CALLERID(name)":
                        chan.caller = (v, chan.caller[1])
                    elif k == "CALLERID(num)":
                        chan.caller = (chan.caller[0], v)
        if app:
            chan.apps.add(str(app))
            chan.subscribed.add(str(app))
        self._channels[chan_id] = chan
        self.channels_created[chan_id] += 1
        if kind == "customer" and behaviour is not None:
            chan.record = CallRecord(None, chan_id, endpoint, behaviour.kind, channel=name,
                                     uniqueid=chan_id)
            self.calls.append(chan.record)
        if tech == "Local":
            other_id = q.get("otherChannelId") or (
                f"{requested};2" if requested else f"{self._epoch}.{self._next_seq()}"
            )
            half = _Chan(
                id=other_id,
                name=f"Local/{base}-{seq:08x};2",
                tech=tech,
                context=context,
                exten=number,
                creationtime=now,
                state="Ring",
                caller=caller,
                connected=caller,
                half=True,
                app_name="",
                app_data="",
                apps=set(chan.apps),
                subscribed=set(chan.subscribed),
                partner=chan,
            )
            chan.partner = half
            self._channels[other_id] = half
        response = self._json(200, chan.json())
        timeout_raw = str(q.get("timeout", "30"))
        timeout_s = float(timeout_raw) if timeout_raw.lstrip("-").isdigit() else 30.0
        stasis = (str(app), str(q.get("appArgs", ""))) if app else None
        amd_context = None if app else str(q.get("context") or "")
        amd_exten = str(q.get("extension") or number)
        asyncio.get_running_loop().call_soon(
            self._start_call, chan, stasis, timeout_s, amd_context, amd_exten
        )
        return response

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ----- call progress -----------------------------------------------------------------
    def _start_call(
        self,
        chan: _Chan,
        stasis: tuple[str, str] | None,
        timeout_s: float,
        context: str | None,
        exten: str,
    ) -> None:
        if not chan.alive or self._closing:
            return
        dialstring = f"{chan.exten}@{chan.context}" if chan.tech == "Local" else chan.name
        if chan.partner is not None:
            # Set on ;1 before anyone was subscribed; chan_local copies them to ;2, which the
            # app sees (capture 14: ChannelVarset on the ;2 half, last variable first).
            for name, value in reversed(chan.originate_vars):
                chan.partner.variables[name] = value
                self._chan_event(
                    "ChannelVarset", chan.partner, pre={"variable": name, "value": value}
                )
        if chan.partner is not None and chan.behaviour is not None:
            self._chan_event(
                "ChannelCallerId",
                chan.partner,
                mid={
                    "caller_presentation": 0,
                    "caller_presentation_txt": "Presentation Allowed, Not Screened",
                },
            )
            self._chan_event("ChannelConnectedLine", chan.partner)
        self._dial(chan, "", dialstring)
        b = chan.behaviour
        if b is None:
            self._destroy(chan, 0)
            return
        half = chan.partner
        if half is not None:
            what = "agent" if chan.agent else "sim customer"
            self._chan_event(
                "ChannelDialplan",
                half,
                mid={"dialplan_app": "NoOp", "dialplan_app_data": f"{what} {chan.exten}"},
            )
        rings = b.kind in (CalleeKind.HUMAN, CalleeKind.MACHINE, CalleeKind.NO_ANSWER) or (
            b.kind is CalleeKind.BUSY and not chan.agent
        )
        if rings and b.ring_s > 0:
            chan.state = "Ringing"
            self._chan_event("ChannelStateChange", chan)
            self._dial(chan, "RINGING", dialstring)
        if b.answered:
            if b.ring_s > timeout_s > 0:
                self._later(chan, timeout_s, lambda: self._fail(chan, causes.NO_ANSWER, dialstring))
            else:
                self._later(chan, b.ring_s, lambda: self._answer_call(chan, stasis, context, exten))
            return
        delay = b.ring_s
        cause = b.cause
        if b.kind is CalleeKind.NO_ANSWER and timeout_s > 0 and timeout_s < delay:
            delay = timeout_s
        self._later(chan, delay, lambda: self._fail(chan, cause, dialstring))

    def _dial(self, chan: _Chan, status: str, dialstring: str) -> None:
        self._emit(
            "Dial",
            chan.apps,
            mid={"dialstatus": status, "forward": "", "dialstring": dialstring},
            objs={"peer": chan.json()},
            channel_id=chan.id,
        )

    def _fail(self, chan: _Chan, cause: int, dialstring: str) -> None:
        b = chan.behaviour
        status = DIALSTATUS_BY_KIND.get(b.kind, "NOANSWER") if b else "CHANUNAVAIL"
        if cause == causes.NO_ANSWER:
            status = "NOANSWER"
        self._dial(chan, status, dialstring)
        self._destroy(chan, cause, request_cause=cause)

    def _answer_call(
        self, chan: _Chan, stasis: tuple[str, str] | None, context: str | None, exten: str
    ) -> None:
        half = chan.partner
        if half is not None:
            half.state = "Up"
            self._chan_event(
                "ChannelDialplan", half, mid={"dialplan_app": "Answer", "dialplan_app_data": ""}
            )
            self._chan_event("ChannelStateChange", half)
        chan.state = "Up"
        chan.answered = True
        if chan.record is not None:
            chan.record.answered_at = asyncio.get_running_loop().time()
        self._chan_event("ChannelStateChange", chan)
        dialstring = f"{chan.exten}@{chan.context}" if chan.tech == "Local" else chan.name
        self._dial(chan, "ANSWER", dialstring)
        b = chan.behaviour
        assert b is not None
        if stasis is not None:
            app, args = stasis
            self._enter_stasis(chan, app, [a for a in args.split(",") if a] if args else [])
        elif context:
            self._run_dialplan(chan, context, exten)
        if not chan.agent and b.talk_s > 0:
            self._later(chan, b.talk_s, lambda: self._far_end_hangup(chan))
        if not chan.agent and b.dtmf:
            for i, digit in enumerate(b.dtmf):
                self._later(
                    chan,
                    DTMF_FIRST_S + i * DTMF_GAP_S,
                    lambda d=digit: self._chan_event(  # type: ignore[misc]
                        "ChannelDtmfReceived", chan, mid={"digit": d, "duration_ms": 100}
                    ),
                )

    def _enter_stasis(
        self, chan: _Chan, app: str, args: list[str], *, varset: bool = True
    ) -> bool:
        """Stasis(app, args...): False (and the channel hung up) when the app has no socket.

        `varset=False`: the app hears nothing before StasisStart (Stasis() sets STASISSTATUS
        before it subscribes the app, so only an app already subscribed sees that
        ChannelVarset: the inbound capture starts at StasisStart)."""
        if app not in self._sockets:
            self._destroy(chan, causes.NORMAL_CLEARING)
            return False
        chan.apps.add(app)
        chan.stasis_app = app
        chan.last_app = app
        chan.app_name = "Stasis"
        chan.app_data = ",".join([app, *args])
        if varset:
            self._chan_event(
                "ChannelVarset", chan, pre={"variable": "STASISSTATUS", "value": ""}
            )
        self._stasis_event("StasisStart", chan, app, mid={"args": args})
        return True

    def _stasis_event(
        self, kind: str, chan: _Chan, app: str, *, mid: Mapping[str, Any] | None = None
    ) -> None:
        """StasisStart / StasisEnd go to the app the channel enters or leaves only (res_stasis
        sends them with app_send, not on the channel's topic): another app subscribed to the
        channel, e.g. the one that originated it before a `move`, does not hear them."""
        self._emit(kind, {app}, mid=mid, objs={"channel": chan.json()}, channel_id=chan.id)

    def _leave_stasis(self, chan: _Chan) -> None:
        if chan.stasis_app is None:
            return
        self._remove_from_bridge(chan)
        app, chan.stasis_app = chan.stasis_app, None
        self._stasis_event("StasisEnd", chan, app)
        if app not in chan.subscribed:
            chan.apps.discard(app)  # entered from the dialplan: nothing more for this app
        self._chan_event(
            "ChannelVarset", chan, pre={"variable": "STASISSTATUS", "value": "SUCCESS"}
        )

    def _amd(self, chan: _Chan, context: str, exten: str, stasis_data: str, branch: bool) -> None:
        """AMD() and what the context does with the verdict: `stasis_data` is its Stasis step
        (variables not yet substituted); with `branch` only HUMAN gets there, as in the
        reference `dialer-amd`, and anything else is hung up with cause 16."""
        b = chan.behaviour
        assert b is not None
        chan.context, chan.exten, chan.priority = context, exten, 1
        chan.app_name, chan.app_data = "AMD", ""
        self._chan_event(
            "ChannelDialplan", chan, mid={"dialplan_app": "AMD", "dialplan_app_data": ""}
        )
        status = b.amd_status or "NOTSURE"
        chan.variables["AMDSTATUS"] = status
        self.amd_verdicts[chan.id] = status
        if chan.record is not None:
            chan.record.amd = status
        chan.variables["AMDCAUSE"] = b.amd_cause or ""
        self._chan_event("ChannelVarset", chan, pre={"variable": "AMDSTATUS", "value": status})
        self._chan_event(
            "ChannelVarset", chan, pre={"variable": "AMDCAUSE", "value": b.amd_cause or ""}
        )
        if status == "HUMAN" or not branch:
            data = self._substitute(chan, stasis_data, exten)
            app, *args = data.split(",")
            if not app:  # Stasis() without an app name fails: the channel hangs up
                self._destroy(chan, 0, request_cause=0)
                return
            chan.priority = 5 if branch else 2
            chan.app_name, chan.app_data = "Stasis", data
            self._chan_event(
                "ChannelDialplan", chan, mid={"dialplan_app": "Stasis", "dialplan_app_data": data}
            )
            # The next priority runs after this one returned: the verdict's ChannelVarsets
            # reach the app while the channel is still in the dialplan, not in Stasis.
            def enter() -> None:
                self._enter_stasis(chan, app, args)

            self._later(chan, 0.0, enter)
        else:
            chan.priority, chan.app_name, chan.app_data = 4, "Hangup", "16"
            self._chan_event(
                "ChannelDialplan", chan, mid={"dialplan_app": "Hangup", "dialplan_app_data": "16"}
            )
            self._destroy(chan, causes.NORMAL_CLEARING, request_cause=causes.NORMAL_CLEARING)

    def _run_dialplan(self, chan: _Chan, context: str, exten: str) -> None:
        """`continue` into the dialplan: only `agents` extensions exist; the rest hang up."""
        chan.context, chan.exten, chan.priority = context, exten, 1
        steps = find_steps(context, exten)
        if steps is not None and steps[0][1] == "AMD":
            stasis_data = next(str(d) for _, app, d in steps if app == "Stasis")
            branch = any(app == "GotoIf" for _, app, _ in steps)
            self._later(
                chan, AMD_S, lambda: self._amd(chan, context, exten, stasis_data, branch)
            )
            return
        if context == "agents" and re.fullmatch(r"1\d{3}", exten):
            for prio, (app, data) in enumerate(
                [("NoOp", f"agent {exten}: answers at once"), ("Answer", ""), ("Wait", "3600")],
                start=1,
            ):
                chan.priority, chan.app_name, chan.app_data = prio, app, data
                self._chan_event(
                    "ChannelDialplan", chan, mid={"dialplan_app": app, "dialplan_app_data": data}
                )
            return
        if context in IVR_EXIT_STEPS:
            self._ivr_exit(chan, context, exten)
            return
        self._destroy(chan, 0, request_cause=0)

    def _ivr_exit(self, chan: _Chan, context: str, exten: str) -> None:
        """A channel the IVR handed to the dialplan: it runs the context's steps (ChannelDialplan
        only to apps still subscribed) and waits there (in the queue, or dialling) until it
        hangs up; `ivr_exits` records where it went and what data it carried."""
        for prio, (app, data) in enumerate(IVR_EXIT_STEPS[context], start=1):
            data = self._substitute(chan, data, exten)
            chan.priority, chan.app_name, chan.app_data = prio, app, data
            self._chan_event(
                "ChannelDialplan", chan, mid={"dialplan_app": app, "dialplan_app_data": data}
            )
        attached = {k: v for k, v in chan.variables.items() if k.startswith("PACELINE_")}
        self.ivr_exits[chan.id] = IvrExit(context, exten, attached)

    @staticmethod
    def _substitute(chan: _Chan, text: str, exten: str) -> str:
        def value(m: re.Match[str]) -> str:
            name = m.group(1)
            return exten if name == "EXTEN" else chan.variables.get(name, "")

        return re.sub(r"\$\{([A-Za-z0-9_]+)\}", value, text)

    def _far_end_hangup(self, chan: _Chan) -> None:
        self._destroy(chan, causes.NORMAL_CLEARING, request_cause=causes.NORMAL_CLEARING)

    def _destroy(
        self, chan: _Chan, cause: int, *, request_cause: int | None = None, soft: bool = False
    ) -> None:
        """Hang `chan` up: hang-up request, leave bridge and Stasis, ChannelDestroyed; then its
        Local half."""
        if not chan.alive:
            return
        chan.alive = False
        if chan.record is not None:
            chan.record.ended = True
            chan.record.ended_at, chan.record.cause = asyncio.get_running_loop().time(), cause
        for timer in chan.timers:
            timer.cancel()
        chan.timers.clear()
        if request_cause is not None:
            pre: dict[str, Any] = {"cause": request_cause}
            if soft:
                pre["soft"] = True
            self._chan_event("ChannelHangupRequest", chan, pre=pre)
        for pb in [p for p in self._playbacks.values() if p.channel_id == chan.id]:
            if pb.held:  # its command never ran: dropped without an event
                del self._playbacks[pb.id]
            else:
                self._finish_playback(pb, "failed")
        for rec in [r for r in self._recordings.values() if r.target == f"channel:{chan.id}"]:
            self._finish_recording(rec, "done")  # a hang-up ends the recording, kept
        self._leave_stasis(chan)
        if chan.state != "Up" and soft and not chan.half:
            dialstring = f"{chan.exten}@{chan.context}" if chan.tech == "Local" else chan.name
            self._dial(chan, "NOANSWER", dialstring)
        self._channels.pop(chan.id, None)
        self._emit(
            "ChannelDestroyed",
            chan.apps,
            mid={"cause": cause, "cause_txt": CAUSE_TXT.get(cause, "Unknown")},
            objs={"channel": chan.json()},
            channel_id=chan.id,
        )
        half = chan.partner
        if half is not None and half.alive:
            half_cause = cause if cause else 0
            self._destroy(half, half_cause, request_cause=causes.NORMAL_CLEARING, soft=True)
        for snoop in [c for c in self._channels.values() if c.spyee == chan.id]:
            # Its audiohook is gone: the snoop channel's next read fails and it hangs up.
            self._destroy(snoop, 0)

    def _delete_channel(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._chan(channel_id)
        reason = q.get("reason")
        code = q.get("reason_code")
        if reason is not None:
            if reason not in REASON_CAUSE:
                raise AriError(
                    400, "Invalid reason for hangup reason provided", reason="Invalid Reason"
                )
            cause = REASON_CAUSE[reason]
        elif code is not None and str(code).isdigit():
            cause = int(code)
        else:
            cause = causes.NORMAL_CLEARING
        self._destroy(chan, cause, request_cause=32, soft=True)
        return self._no_content()

    def _answer(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._stasis_chan(channel_id)
        if chan.state != "Up":
            chan.state = "Up"
            chan.answered = True
            self._chan_event("ChannelStateChange", chan)
        return self._no_content()

    def _continue(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._stasis_chan(channel_id)
        context = str(q.get("context") or chan.context)
        exten = str(q.get("extension") or chan.exten)
        self._leave_stasis(chan)
        self._run_dialplan(chan, context, exten)
        return self._no_content()

    def _redirect(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._stasis_chan(channel_id)
        endpoint = q.get("endpoint")
        if not endpoint:
            raise AriError(400, "Required parameter 'endpoint' not provided.")
        tech = str(endpoint).split("/", 1)[0]
        if tech != chan.tech:
            raise AriError(
                422,
                f"Endpoint technology '{tech}' does not match channel technology '{chan.tech}'",
            )
        return self._no_content()

    def _move(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        """`POST /channels/{id}/move?app=&appArgs=` (res_stasis's stasis_app_exec loop): 204
        once queued; then, if `app` has an event socket, StasisEnd to the current app and
        StasisStart (args = `appArgs` split on commas) to `app`. The channel keeps its
        bridge and its dialplan location (still the Stasis() it entered by), and every app
        subscribed to it (the originating one) keeps hearing its events, ChannelDestroyed too.
        An `app` with no socket: ApplicationMoveFailed (`destination`, `args`) to the current
        app, and the channel stays where it was."""
        chan = self._stasis_chan(channel_id)
        target = str(q.get("app") or "")
        if not target:
            raise AriError(400, "Required parameter 'app' not provided.")
        raw_args = str(q.get("appArgs") or "")
        args = [a for a in raw_args.split(",") if a] if raw_args else []
        current = chan.stasis_app
        assert current is not None
        if target not in self._sockets:
            self._emit(
                "ApplicationMoveFailed",
                {current},
                objs={"channel": chan.json()},
                post={"destination": target, "args": args},
                channel_id=chan.id,
            )
            return self._no_content()
        self._stasis_event("StasisEnd", chan, current)
        if current not in chan.subscribed:
            chan.apps.discard(current)  # it entered from the dialplan: nothing more for it
        chan.apps.add(target)
        chan.stasis_app = target
        chan.last_app = target
        self.moves.append((chan.id, target, list(args)))
        self._stasis_event("StasisStart", chan, target, mid={"args": args})
        return self._no_content()

    def _moh_start(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        self._stasis_chan(channel_id).moh = True
        return self._no_content()

    def _moh_stop(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        self._stasis_chan(channel_id).moh = False
        return self._no_content()

    def _hold(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        self._stasis_chan(channel_id)
        return self._no_content()

    def _dtmf(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._stasis_chan(channel_id)
        digits = str(q.get("dtmf") or "")
        if not digits:
            raise AriError(400, "DTMF is required")
        self.dtmf_sent[channel_id] = self.dtmf_sent.get(channel_id, "") + digits
        far = chan.partner
        if far is not None:
            for i, digit in enumerate(digits):
                self._later(
                    far,
                    0.1 * (i + 1),
                    lambda d=digit: self._chan_event(  # type: ignore[misc]
                        "ChannelDtmfReceived", far, mid={"digit": d, "duration_ms": 100}
                    ),
                )
        return self._no_content()

    def _get_var(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._chan(channel_id, "Provided channel was not found")
        name = q.get("variable")
        if not name:
            raise AriError(400, "Variable name is required")
        computed = {
            "CHANNEL(name)": chan.name,
            "CHANNEL(state)": chan.state,
            "CALLERID(num)": chan.caller[1],
            "CALLERID(name)": chan.caller[0],
            "CALLERID(all)": f'"{chan.caller[0]}" <{chan.caller[1]}>',
        }
        if name in chan.variables:
            return self._json(200, {"value": chan.variables[name]})
        if name in computed:
            return self._json(200, {"value": computed[name]})
        raise AriError(404, "Provided variable was not found", reason="Variable Not Found")

    def _set_var(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._stasis_chan(channel_id)
        name = q.get("variable")
        if not name:
            raise AriError(400, "Variable name is required")
        value = str(q.get("value", ""))
        if name == "CALLERID(num)":
            chan.caller = (chan.caller[0], value)
        elif name == "CALLERID(name)":
            chan.caller = (value, chan.caller[1])
        else:
            chan.variables[str(name)] = value
        self._chan_event("ChannelVarset", chan, pre={"variable": name, "value": value})
        return self._no_content()

    def _snoop(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        """POST /channels/{id}/snoop[/{snoopId}], checked in the order of
        ari_channels_handle_snoop_channel(); then stasis_app_control_snoop(): a channel
        `Snoop/<target id>-<n:08x>` in state Up runs Stasis(app, appArgs) (StasisStart with
        the args; no STASISSTATUS ChannelVarset, no app is subscribed yet) and the 200 carries
        it. The target need not be in Stasis. The snoop dies (cause 0) with its target."""
        directions = ("none", "both", "out", "in")
        spy = str(q.get("spy") or "none")
        whisper = str(q.get("whisper") or "none")
        if spy not in directions:
            raise AriError(400, "Invalid direction specified for spy", reason="Bad Request")
        if whisper not in directions:
            raise AriError(400, "Invalid direction specified for whisper", reason="Bad Request")
        if spy == "none" and whisper == "none":
            raise AriError(
                400, "Direction must be specified for at least spy or whisper",
                reason="Bad Request",
            )
        app = str(q.get("app") or "")
        if not app:
            raise AriError(400, "Application name is required", reason="Bad Request")
        target = self._chan(channel_id, "Provided channel was not found")
        snoop_id = str(q.get("snoopId") or "") or self._next_id()
        if snoop_id in self._channels:  # ast_channel_alloc refuses a live uniqueid
            raise AriError(500, "Snoop channel could not be created")
        n = self._snoop_seq
        self._snoop_seq += 1
        snoop = _Chan(
            id=snoop_id,
            name=f"Snoop/{target.id}-{n:08x}",
            tech="Snoop",
            context="default",
            exten="s",
            creationtime=_ts(),
            state="Up",
            answered=True,
            app_name="",
            app_data="",
            spyee=target.id,
        )
        self._channels[snoop_id] = snoop
        self.channels_created[snoop_id] += 1
        raw_args = str(q.get("appArgs") or "")
        args = [a for a in raw_args.split(",") if a] if raw_args else []
        response = self._json(200, snoop.json())

        def run_stasis() -> None:  # snoop_stasis_thread: pbx_exec(Stasis, "app,args")
            if snoop.alive and not self._closing:
                self._enter_stasis(snoop, app, args, varset=False)

        asyncio.get_running_loop().call_soon(run_stasis)
        return response

    # ----- playbacks ---------------------------------------------------------------------
    def _play(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        chan = self._stasis_chan(channel_id)
        media = [m for m in str(q.get("media") or "").split(",") if m]
        if not media:
            raise AriError(400, "media parameter is required")
        pb_id = str(q.get("playbackId") or uuid.uuid4())
        pb = _Playback(id=pb_id, media=media, channel_id=chan.id, language=q.get("lang", "en"))
        if chan.record is not None:
            chan.record.played += media
        self._playbacks[pb_id] = pb
        resp = self._json(201, pb.json())
        resp.headers["Location"] = f"/ari/playbacks/{pb_id}"
        if self._channel_recording(chan.id):
            pb.held = True  # behind the recording on the channel's command queue
        else:
            asyncio.get_running_loop().call_soon(self._start_item, pb)
        return resp

    def _channel_recording(self, channel_id: str) -> bool:
        """True while a recording of the channel itself (queued, recording or paused) holds
        its command queue."""
        target = f"channel:{channel_id}"
        return any(r.target == target for r in self._recordings.values())

    def _release_playbacks(self, target: str) -> None:
        """A channel recording ended: the playbacks queued behind it start, in order."""
        kind, _, channel_id = target.partition(":")
        if kind != "channel" or self._channel_recording(channel_id):
            return
        loop = asyncio.get_running_loop()
        for pb in [p for p in self._playbacks.values() if p.channel_id == channel_id and p.held]:
            pb.held = False
            loop.call_soon(self._start_item, pb)

    def _pb_event(self, kind: str, pb: _Playback) -> None:
        chan = self._channels.get(pb.channel_id)
        apps = chan.apps if chan is not None else set(self._sockets)
        self._emit(kind, apps, objs={"playback": pb.json()}, channel_id=pb.channel_id)

    def _start_item(self, pb: _Playback) -> None:
        if pb.id not in self._playbacks or self._closing:
            return
        pb.state = "playing"
        self._pb_event("PlaybackStarted", pb)
        uri = pb.media[pb.index]
        sound = uri.split(":", 1)[1] if uri.startswith("sound:") else None
        length = None
        if sound is not None:
            m = re.fullmatch(r"silence/(\d+)", sound)
            length = float(m.group(1)) if m else self.sounds.get(sound)
        loop = asyncio.get_running_loop()
        if length is None:
            pb.timer = loop.call_soon(self._item_done, pb, False)
        else:
            pb.timer = loop.call_later(length * self.time_scale, self._item_done, pb, True)

    def _item_done(self, pb: _Playback, ok: bool) -> None:
        if pb.id not in self._playbacks or self._closing:
            return
        if pb.index + 1 < len(pb.media):
            pb.state = "continuing"
            self._pb_event("PlaybackContinuing", pb)
            pb.index += 1
            self._start_item(pb)
            return
        self._finish_playback(pb, "done" if ok else "failed")

    def _finish_playback(self, pb: _Playback, state: str) -> None:
        if self._playbacks.pop(pb.id, None) is None:
            return
        if pb.timer is not None:
            pb.timer.cancel()
        pb.state = state
        self._pb_event("PlaybackFinished", pb)

    # ----- recordings --------------------------------------------------------------------
    def _record_channel(self, channel_id: str, q: dict[str, Any]) -> web.Response:
        """POST /channels/{id}/record, checked in the order of ast_ari_channels_record()."""
        self._check_record_limits(q)
        chan = self._stasis_chan(channel_id)
        return self._new_recording(q, f"channel:{chan.id}")

    def _record_bridge(self, bridge: _Bridge, q: dict[str, Any]) -> web.Response:
        """POST /bridges/{id}/record: the bridge's mix, until stopped or the bridge ends."""
        self._check_record_limits(q)
        return self._new_recording(q, f"bridge:{bridge.id}")

    @staticmethod
    def _check_record_limits(q: dict[str, Any]) -> None:
        for key in ("maxDurationSeconds", "maxSilenceSeconds"):
            raw = str(q.get(key, "0"))
            if raw.startswith("-"):
                snake = "max_duration_seconds" if key.startswith("maxD") else "max_silence_seconds"
                raise AriError(400, f"{snake} cannot be negative", reason="Bad Request")

    def _new_recording(self, q: dict[str, Any], target: str) -> web.Response:
        terminate = str(q.get("terminateOn") or "none").lower()
        if terminate not in ("none", "any", "*", "#"):
            raise AriError(400, "terminateOn invalid", reason="Bad Request")
        if_exists = str(q.get("ifExists") or "fail").lower()
        if if_exists not in ("fail", "overwrite", "append"):
            raise AriError(400, "ifExists invalid", reason="Bad Request")
        fmt = str(q.get("format") or "")
        if fmt not in RECORDING_FORMATS:
            raise AriError(
                422, "specified format is unknown on this system", reason="Unprocessable Entity"
            )
        name = str(q.get("name") or "")
        if not name:
            raise AriError(500, "Error parsing request", reason="Internal Server Error")
        if name in self._recordings or (if_exists == "fail" and name in self.stored_recordings):
            raise AriError(
                409, f"Recording '{name}' already exists and can not be overwritten"
            )
        duration = str(q.get("maxDurationSeconds") or "0")
        rec = _Recording(
            name=name,
            format=fmt,
            target=target,
            terminate_on="" if terminate == "none" else terminate,
            max_duration_s=float(duration) if duration.isdigit() else 0.0,
        )
        self._recordings[name] = rec
        resp = self._json(201, rec.json())
        resp.headers["Location"] = f"/recordings/live/{name}"
        asyncio.get_running_loop().call_soon(self._start_recording, rec)
        return resp

    def _rec_event(self, kind: str, rec: _Recording, cause: str = "") -> None:
        kind_of_target, _, ident = rec.target.partition(":")
        if kind_of_target == "bridge":
            bridge = self._bridges.get(ident)
            apps = bridge.apps if bridge is not None else set(self._sockets)
            ident = ""
        else:
            chan = self._channels.get(ident)
            apps = chan.apps if chan is not None else set(self._sockets)
        self._emit(kind, apps, objs={"recording": rec.json(cause)}, channel_id=ident)

    def _start_recording(self, rec: _Recording) -> None:
        if self._recordings.get(rec.name) is not rec or self._closing:
            return
        chan = self._channels.get(rec.target.partition(":")[2])
        if rec.target.startswith("channel:") and chan is not None and chan.bridge is not None:
            # record_file(): a bridged channel cannot be recorded (record the bridge).
            self._recordings.pop(rec.name, None)
            rec.state = "failed"
            self._rec_event("RecordingFailed", rec, "Cannot record channel while in bridge")
            self._release_playbacks(rec.target)
            return
        rec.state = "recording"
        rec.resumed_at = time.monotonic()
        self._rec_event("RecordingStarted", rec)
        if rec.max_duration_s > 0:
            rec.timer = asyncio.get_running_loop().call_later(
                rec.max_duration_s * self.time_scale, self._finish_recording, rec, "done"
            )

    def _recording_dtmf(self, chan: _Chan, digit: str) -> None:
        for rec in list(self._recordings.values()):
            wanted = rec.terminate_on == "any" or (digit and rec.terminate_on == digit)
            if rec.target == f"channel:{chan.id}" and rec.state == "recording" and wanted:
                self._finish_recording(rec, "done")

    def _pause_clock(self, rec: _Recording) -> None:
        if rec.resumed_at is not None:
            elapsed = time.monotonic() - rec.resumed_at
            rec.recorded_s += elapsed / self.time_scale if self.time_scale else 0.0
            rec.resumed_at = None

    def _finish_recording(self, rec: _Recording, state: str) -> None:
        """End a live recording: RecordingFinished (stop, cancel, hang-up, terminateOn,
        maxDurationSeconds). As in record_file(), the state published at the end is "done"
        even after a cancel; only a stop (or an end) keeps the file."""
        if self._recordings.pop(rec.name, None) is None:
            return
        if rec.timer is not None:
            rec.timer.cancel()
        self._pause_clock(rec)
        rec.state = "done"
        if state == "done":
            self.stored_recordings[rec.name] = {"name": rec.name, "format": rec.format}
        self._rec_event("RecordingFinished", rec)
        self._release_playbacks(rec.target)

    def _route_recordings(self, method: str, rest: list[str]) -> web.Response:
        if len(rest) >= 2 and rest[0] == "stored" and len(rest) == 2:
            self._method(method, ("GET", "DELETE"))
            stored = self.stored_recordings.get(rest[1])
            if stored is None:
                raise AriError(404, "Recording not found")
            if method == "GET":
                return self._json(200, stored)
            del self.stored_recordings[rest[1]]
            return self._no_content()
        if len(rest) < 2 or rest[0] != "live" or len(rest) > 3:
            raise AriError(404, "Resource not found")
        rec = self._recordings.get(rest[1])
        op = rest[2] if len(rest) == 3 else ""
        allowed = {"": ("GET", "DELETE"), "stop": ("POST",), "pause": ("POST", "DELETE")}
        allowed["mute"] = ("POST", "DELETE")
        if op not in allowed:
            raise AriError(404, "Resource not found")
        self._method(method, allowed[op])
        if rec is None:
            raise AriError(404, "Recording not found")
        if op == "" and method == "GET":
            return self._json(200, rec.json())
        if rec.state not in ("recording", "paused") and op in ("pause", "mute"):
            # stasis_app_recording_operation(): only stop/cancel act on a queued recording.
            raise AriError(409, "Recording not in session")
        if op in ("", "stop"):
            self._finish_recording(rec, "done" if op == "stop" else "canceled")
        elif op == "pause" and method == "POST" and rec.state == "recording":
            self._pause_clock(rec)
            rec.state = "paused"
        elif op == "pause" and method == "DELETE" and rec.state == "paused":
            rec.state = "recording"
            rec.resumed_at = time.monotonic()
        elif op == "mute":
            rec.muted = method == "POST"
        return self._no_content()

    def _route_playbacks(self, method: str, rest: list[str], q: dict[str, Any]) -> web.Response:
        if not rest or len(rest) > 2:
            raise AriError(404, "Resource not found")
        pb = self._playbacks.get(rest[0])
        if len(rest) == 1:
            self._method(method, ("GET", "DELETE"))
            if pb is None:
                raise AriError(404, "Playback not found")
            if method == "GET":
                return self._json(200, pb.json())
            self._finish_playback(pb, "done")
            return self._no_content()
        if rest[1] != "control":
            raise AriError(404, "Resource not found")
        self._method(method, ("POST",))
        if pb is None:
            raise AriError(404, "Playback not found")
        op = q.get("operation")
        if not op:
            raise AriError(400, "Missing operation")
        if op not in PLAYBACK_OPERATIONS:
            raise AriError(400, f"Invalid operation {op}")
        return self._no_content()

    # ----- bridges -----------------------------------------------------------------------
    def _route_bridges(self, method: str, rest: list[str], q: dict[str, Any]) -> web.Response:
        if not rest:
            self._method(method, ("GET", "POST"))
            if method == "GET":
                return self._json(200, [b.json() for b in self._bridges.values()])
            return self._create_bridge(q)
        bridge_id = rest[0]
        if len(rest) == 1:
            self._method(method, ("GET", "POST", "DELETE"))
            if method == "POST":
                return self._create_bridge({**q, "bridgeId": bridge_id})
            bridge = self._bridges.get(bridge_id)
            if bridge is None:
                raise AriError(404, "Bridge not found")
            if method == "GET":
                return self._json(200, bridge.json())
            self._destroy_bridge(bridge)
            return self._no_content()
        if len(rest) != 2:
            raise AriError(404, "Resource not found")
        sub = rest[1]
        if sub not in ("addChannel", "removeChannel", "moh", "record"):
            raise AriError(404, "Resource not found")
        bridge = self._bridges.get(bridge_id)
        if sub == "record":
            self._method(method, ("POST",))
            if bridge is None:
                raise AriError(404, "Bridge not found")
            return self._record_bridge(bridge, q)
        if sub == "moh":
            self._method(method, ("POST", "DELETE"))
            if bridge is None:
                raise AriError(404, "Bridge not found")
            if method == "DELETE" and not bridge.moh:
                raise AriError(409, "Bridge isn't playing music")
            bridge.moh = method == "POST"
            return self._no_content()
        self._method(method, ("POST",))
        if bridge is None:
            raise AriError(404, "Bridge not found", reason="Not found")
        ids = [c for c in str(q.get("channel") or "").split(",") if c]
        if not ids:
            raise AriError(400, "Missing parameter channel")
        chans = []
        for cid in ids:
            chan = self._channels.get(cid)
            if chan is None:
                raise AriError(400, "Channel not found")
            if chan.stasis_app is None:
                raise AriError(422, "Channel not in Stasis application")
            chans.append(chan)
        if sub == "addChannel":
            for chan in chans:
                self._add_to_bridge(bridge, chan)
        else:
            for chan in chans:
                if chan.bridge != bridge.id:
                    raise AriError(422, "Channel not in this bridge")
                self._remove_from_bridge(chan)
        return self._no_content()

    def _create_bridge(self, q: dict[str, Any]) -> web.Response:
        types = [t for t in str(q.get("type") or "mixing").split(",") if t]
        if not all(
            t in ("mixing", "holding", "dtmf_events", "proxy_media", "video_sfu") for t in types
        ):
            raise AriError(
                500,
                "Unable to create bridge. Possible duplicate bridge id '(null)'",
                reason="Internal Error",
            )
        bridge_id = str(q.get("bridgeId") or uuid.uuid4())
        if bridge_id in self._bridges:
            raise AriError(409, f"Bridge with id '{bridge_id}' already exists")
        bridge = _Bridge(
            id=bridge_id,
            name=str(q.get("name") or ""),
            bridge_type=types[0] if types[0] != "dtmf_events" else "mixing",
            creationtime=_ts(),
        )
        self._bridges[bridge_id] = bridge
        return self._json(200, bridge.json())

    def _add_to_bridge(self, bridge: _Bridge, chan: _Chan) -> None:
        if chan.bridge == bridge.id:
            return
        self._remove_from_bridge(chan)
        bridge.channels.append(chan.id)
        bridge.apps |= chan.apps
        chan.bridge = bridge.id
        for cid in bridge.channels:
            member = self._channels[cid]
            if member.record is not None:
                member.record.note_bridge(
                    [self._channels[o].name for o in bridge.channels if o != cid]
                )
        self._emit(
            "ChannelEnteredBridge",
            chan.apps,
            objs={"bridge": bridge.json(), "channel": chan.json()},
            channel_id=chan.id,
        )
        if len(bridge.channels) >= 2:
            for cid in bridge.channels:
                member = self._channels[cid]
                peers = ",".join(self._channels[o].name for o in bridge.channels if o != cid)
                self._chan_event(
                    "ChannelVarset", member, pre={"variable": "BRIDGEPEER", "value": peers}
                )

    def _remove_from_bridge(self, chan: _Chan) -> None:
        if chan.bridge is None:
            return
        bridge = self._bridges.get(chan.bridge)
        chan.bridge = None
        if bridge is None or chan.id not in bridge.channels:
            return
        bridge.channels.remove(chan.id)
        self._chan_event("ChannelVarset", chan, pre={"variable": "BRIDGEPEER", "value": ""})
        self._emit(
            "ChannelLeftBridge",
            chan.apps,
            objs={"bridge": bridge.json(), "channel": chan.json()},
            channel_id=chan.id,
        )

    def _destroy_bridge(self, bridge: _Bridge) -> None:
        for rec in [r for r in self._recordings.values() if r.target == f"bridge:{bridge.id}"]:
            self._finish_recording(rec, "done")
        for cid in list(bridge.channels):
            chan = self._channels.get(cid)
            if chan is not None:
                self._remove_from_bridge(chan)
        self._bridges.pop(bridge.id, None)
        self._emit("BridgeDestroyed", bridge.apps, objs={"bridge": bridge.json()})

    # ----- /asterisk, /applications, /endpoints -----------------------------------------
    def _route_asterisk(self, method: str, rest: list[str], q: dict[str, Any]) -> web.Response:
        if rest == ["ping"]:
            self._method(method, ("GET",))
            return self._json(200, {"ping": "pong", "timestamp": _ts(), "asterisk_id": ASTERISK_ID})
        if rest == ["info"]:
            self._method(method, ("GET",))
            return self._json(200, {"system": {"version": "20.20.1", "entity_id": ASTERISK_ID}})
        if rest == ["variable"]:
            self._method(method, ("GET", "POST"))
            name = q.get("variable")
            if not name:
                raise AriError(400, "Variable name is required")
            if method == "GET":
                return self._json(200, {"value": self._globals.get(name, "")})
            self._globals[name] = str(q.get("value", ""))
            return self._no_content()
        raise AriError(404, "Resource not found")

    def _app_json(self, app: str) -> dict[str, Any]:
        return {
            "name": app,
            "channel_ids": [c.id for c in self._channels.values() if app in c.apps],
            "bridge_ids": [b.id for b in self._bridges.values() if app in b.apps],
            "endpoint_ids": [],
            "device_names": [],
            "events_allowed": [],
            "events_disallowed": [],
        }

    def _route_applications(self, method: str, rest: list[str], q: dict[str, Any]) -> web.Response:
        if not rest:
            self._method(method, ("GET",))
            return self._json(200, [self._app_json(a) for a in sorted(self._sockets)])
        app = rest[0]
        if len(rest) > 1 and rest[1:] != ["subscription"]:
            raise AriError(404, "Resource not found")
        if app not in self._apps_seen:
            raise AriError(404, "Application not found")
        if len(rest) == 1:
            self._method(method, ("GET",))
            return self._json(200, self._app_json(app))
        if rest[1:] != ["subscription"]:
            raise AriError(404, "Resource not found")
        self._method(method, ("POST", "DELETE"))
        source = q.get("eventSource")
        if not source:
            raise AriError(400, "Missing parameter eventSource")
        targets: list[_Chan] = []
        for item in str(source).split(","):
            kind, _, ident = item.partition(":")
            chan = self._channels.get(ident) if kind == "channel" else None
            if chan is None:
                raise AriError(422, "Event source does not exist")
            if method == "DELETE" and app not in chan.subscribed:
                raise AriError(409, "Application not subscribed to event source")
            targets.append(chan)
        for chan in targets:
            if method == "POST":
                chan.apps.add(app)
                chan.subscribed.add(app)
            else:
                chan.subscribed.discard(app)
                if chan.stasis_app != app:
                    chan.apps.discard(app)
        return self._json(200, self._app_json(app))

    def _route_endpoints(self, method: str, rest: list[str]) -> web.Response:
        self._method(method, ("GET",))
        endpoints = [
            {"technology": "PJSIP", "resource": "trunk", "state": "online", "channel_ids": []}
        ]
        if not rest:
            return self._json(200, endpoints)
        if rest[0] not in KNOWN_TECHS:
            raise AriError(404, f"No Endpoints found - invalid tech {rest[0]}")
        if len(rest) == 1:
            return self._json(200, [e for e in endpoints if e["technology"] == rest[0]])
        for e in endpoints:
            if e["technology"] == rest[0] and e["resource"] == rest[1]:
                return self._json(200, e)
        raise AriError(404, "Endpoint not found")

    # ----- the event WebSocket -----------------------------------------------------------
    async def _events(self, request: web.Request) -> web.StreamResponse:
        app = request.query.get("app")
        if not app:
            return web.Response(
                status=400,
                content_type="text/html",
                text="<html><head><title>400 Bad Request</title></head><body>"
                "<h1>Bad Request</h1><p>HTTP request is missing param: [app]</p></body></html>",
            )
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, content_type="text/html", text="Upgrade Required")
        await ws.prepare(request)
        sock = _Socket(ws, app, request)
        previous = self._sockets.get(app)
        if previous is not None:
            previous.send(
                _dumps(
                    {
                        "type": "ApplicationReplaced",
                        "timestamp": _ts(),
                        "application": app,
                        "asterisk_id": ASTERISK_ID,
                    }
                )
            )
        self._sockets[app] = sock
        self._all_sockets.add(sock)
        self._apps_seen.add(app)

        async def pump() -> None:
            while True:
                text = await sock.queue.get()
                if text is None:
                    return
                await ws.send_str(text)

        sender = asyncio.create_task(pump())
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sock.queue.put_nowait(None)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(sender, timeout=1.0)
            sender.cancel()
            self._all_sockets.discard(sock)
            if self._sockets.get(app) is sock and not sock.unnoticed:
                del self._sockets[app]
        return ws
