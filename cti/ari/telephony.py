"""`AriTelephony`: the `cti.interface.Telephony` backend over Asterisk ARI.

Ownership: `async with AriTelephony(...)` opens one aiohttp session and the event WebSocket,
and starts a TaskGroup that owns the WebSocket reader and the short follow-up tasks (adding an
answered agent to its bridge, hanging up after a playback, checks after a resync). Leaving the
block cancels them, closes the socket and the session, and ends `events()`.

How each command maps onto ARI (paths as in the Asterisk 20 swagger):
- originate: `POST /channels` with `channelId = request.call_id` and `app`, so the customer
  leg enters our Stasis app on answer and a replayed POST answers 409 instead of dialing twice
  (a 409 "already exists" is therefore taken as success). The variables `PACELINE_APP` and
  `PACELINE_CALL_ID` are set on the channel. With `amd=True` the answered call is sent on with
  `POST /channels/{id}/continue` into `amd_context` (`paceline-amd` in
  `docker/asterisk/extensions_paceline.conf`: AMD(), then Stasis(${PACELINE_APP}, amd,
  ${AMDSTATUS}) for every verdict, so the dialer decides what a machine gets); the channel
  stays subscribed, so AMDSTATUS/AMDCAUSE and the hang-up still arrive.
  A POST that fails without an answer (timeout, reset) may still have been carried out: the
  channel is looked up, and if it is not there its id is disowned, so a channel that shows up
  later is hung up instead of being mistaken for an inbound call.
- connect_to_agent: a mixing bridge `<call_id>.bridge` with the customer in it, then the agent
  endpoint originated into the app as `<call_id>.agent<n>`; on its StasisStart it is added. An
  agent who answers after the customer is gone is hung up. A retry after a partial failure
  reuses the bridge (409 on create) and adds the customer only if it is not in it yet.
- play_and_hangup: `POST /channels/{id}/play`, then `DELETE` on its PlaybackFinished (also
  when the playback `failed`, e.g. a missing sound).
- hangup: `DELETE /channels/{id}?reason=<name>` (`cti.ari.codes`), `reason_code` otherwise.
- blind_transfer: the agent legs are hung up and the target (`1002`, `1002@agents`,
  `Local/1002@agents` -> `Local/<exten>@<context>`, context defaulting to `transfer_context`;
  or an endpoint such as `PJSIP/1002`) is originated into the app and joins the call's bridge,
  so the customer never leaves Stasis (after a `continue` or `redirect` we would see no more
  of the call). ARI has no transfer event: TRANSFERRED is reported once the target is dialled.
- attended_transfer: as on AMI, it returns once the transfer is complete and raises
  `TelephonyError` when it is not (the target did not answer within `transfer_timeout_s`, or a
  step was refused); in every failure the consult leg is hung up and the customer is taken off
  hold and put back with the agent. Steps: the customer leaves the bridge and gets music on
  hold; the target is originated into the app; once it answers it joins the agent's bridge,
  the customer's music stops and the customer joins too; only then are the agent legs hung up
  (so no failure can leave the customer alone on hold).
- hold/unhold: `POST`/`DELETE /channels/{id}/moh` (a Local channel sends no ChannelHold), and
  HELD/UNHELD are reported once ARI answered 204.
- send_dtmf: `POST /channels/{id}/dtmf` with the digits in the JSON body, never in the URL.
  Digits are never logged (a card number), only counts.
- send_to_ivr: `POST /channels/{id}/variable` for each `PACELINE_<NAME>`, then
  `POST /channels/{id}/move?app=<ivr_app>&appArgs=<flow>`. ARI answers 204 once the move is
  queued; res_stasis then sends StasisEnd to us and StasisStart (args [flow]) to the IVR app,
  or, when the IVR app has no WebSocket, ApplicationMoveFailed to us (the call stays with
  us). send_to_ivr returns on that StasisEnd and raises TelephonyError on the failure. The
  app that originated a channel stays subscribed to it after it leaves (as after a
  `continue`), so the call is still followed: its ChannelDestroyed gives the one HANGUP.
- inbound calls: a channel that enters our app without being ours is INBOUND; the app then
  subscribes to `channel:<id>` so its end is still seen after it leaves Stasis.

Link loss: `connected` turns False and BACKEND_DOWN is emitted; the WebSocket is reopened with
exponential backoff; then `GET /channels` resynchronizes: a leg that vanished is ended (a
customer's HANGUP, an agent's UNBRIDGED, a consult's failed transfer), a leg whose StasisStart
was lost is handled as if it had come (the agent is bridged, AMD is started), AMD verdicts are
read back from the channel variables, pending playbacks are looked up (`GET /playbacks/{id}`),
and bridges are re-read (`GET /bridges/{id}`); then BACKEND_UP is emitted. Only legs whose
originate ARI had confirmed before the snapshot was asked for are judged by it; the others are
looked up one by one (`GET /channels/{id}`) once their POST has answered. Any failure of the
event stream (not only a connection error) leads to a reconnect: the reader never dies while
the backend is open. `ApplicationReplaced` (another client took the app) and a 401 on
reconnect are final: BACKEND_DOWN with the reason, no reconnect loop, and `originate` raises
`BackendUnavailable` naming the cause.

Restart: `adopt(call_ids)` takes over the calls of an earlier process with the same app name
(Asterisk kept them in the app): see `AriTelephony.adopt` and docs/cti.md.

No secret reaches a log line or an exception text: errors from aiohttp pass through
`cti.redact` (they quote URLs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from cti.ari.errors import Conflict, NotFound
from cti.ari.rest import AriRestClient
from cti.ari.tracker import AriTracker, LegRole
from cti.ari.ws import AriEvent, AriEventDecoder, close_quietly, open_event_socket
from cti.events import CallEvent, CallEventKind
from cti.interface import (
    AuthenticationFailed,
    BackendUnavailable,
    OriginateRequest,
    TelephonyError,
    UnknownCall,
)
from cti.redact import describe_exception

log = logging.getLogger(__name__)

#: How many disowned originate ids are remembered (see `AriTelephony._disown`).
MAX_DISOWNED = 10_000

CALL_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DTMF_RE = re.compile(r"^[0-9A-Da-d*#]+$")
#: An IVR flow name (a Stasis argument: no comma) and the name of one of its inputs.
_FLOW_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: How a move to the IVR app ended (`AriTelephony.send_to_ivr`).
_MOVE_DONE, _MOVE_FAILED, _MOVE_ENDED, _MOVE_CLOSED = "moved", "failed", "ended", "closed"

#: Playback states after which no PlaybackFinished will come (swagger `Playback.state`).
PLAYBACK_ENDED = frozenset({"done", "failed"})

#: The ids this backend gives a call's other legs: `<call_id>.agent<n>`, `.consult<n>`, and
#: playbacks `.pb<n>` (see `_next`).
_LEG_ID_RE = re.compile(r"^(?P<call>.+)\.(?P<kind>agent|consult|pb)(?P<n>[0-9]+)$")
#: `PJSIP/agent7-0000000a` -> `PJSIP/agent7`; `Local/1001@agents-0000000c;1` -> `Local/1001@agents`
_CHANNEL_SUFFIX_RE = re.compile(r"-[0-9a-fA-F]+(;[12])?$")


class ApplicationReplaced(TelephonyError):
    """Another ARI client registered our application name; Asterisk now sends it our events."""


@dataclass(slots=True)
class _Transfer:
    """An attended transfer waiting for its consult leg: `answered` resolves True when the
    target answered (its StasisStart), False when the consult leg ended first."""

    call_id: str
    target: str
    bridge_id: str
    agent_ids: list[str]
    answered: asyncio.Future[bool]
    on_hold: bool = False

    def settle(self, answered: bool) -> None:
        if not self.answered.done():
            self.answered.set_result(answered)


class AriTelephony:
    """Telephony over ARI. See the module docstring for the mapping and the link handling.

    `base_url` is `http://host:8088` (or with `/ari`); `username`/`password` an ari.conf user
    (sent as HTTP Basic auth); `app` the Stasis application name, which must be unique per
    running dialer. `amd_context` is the dialplan context that runs AMD() and hands the call
    back to Stasis (`paceline-amd`, extension `amd_extension`); `transfer_context` the context
    of bare extension targets of transfers; `moh_class` the music-on-hold class for `hold`;
    `transfer_timeout_s` how long an attended transfer waits for its target to answer.
    Reconnects wait `reconnect_initial_s` doubling up to `reconnect_max_s` (with jitter).

    Entering raises `AuthenticationFailed` on a bad password and `BackendUnavailable` when
    Asterisk cannot be reached; commands raise `UnknownCall` for a call that is not live,
    `BackendUnavailable` while the link is down, and `cti.ari.errors.AriError` subclasses
    (with ARI's message) for anything else ARI refuses.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        app: str = "paceline",
        *,
        amd_context: str = "paceline-amd",
        amd_extension: str = "s",
        transfer_context: str = "agents",
        moh_class: str | None = None,
        transfer_timeout_s: float = 30.0,
        ivr_app: str = "paceline-ivr",
        move_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.app = app
        self.amd_context = amd_context
        self.amd_extension = amd_extension
        self.transfer_context = transfer_context
        self.moh_class = moh_class
        self.transfer_timeout_s = transfer_timeout_s
        self.ivr_app = ivr_app
        self.move_timeout_s = move_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self._username = username
        self._password = password
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._rest: AriRestClient | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self._tracker = AriTracker()
        self._decoder = AriEventDecoder()
        self._connected = False
        self._closing = False
        self._fatal: TelephonyError | None = None
        self._amd_pending: set[str] = set()  # calls to send into AMD when they enter Stasis
        self._amd_started: set[str] = set()  # calls sent into the AMD dialplan
        self._bridges: dict[str, str] = {}  # call_id -> the call's bridge (for cleanup)
        self._customer_bridged: set[str] = set()  # calls whose customer was added to it
        self._agent_bridge: dict[str, str] = {}  # agent channel id -> bridge to add it to
        self._consults: dict[str, _Transfer] = {}  # consult channel id -> transfer
        self._playbacks: dict[str, str] = {}  # playback id -> call_id
        self._seq = 0
        #: bumped each time ARI confirms a channel we originated (see AriTracker.reconcile)
        self._confirmed_seq = 0
        self._posting: set[str] = set()  # channel ids whose POST /channels is in flight
        self._verify_after_post: set[str] = set()  # ... that a resync could not judge
        self._disowned: dict[str, None] = {}  # originates given up on; hang up if they show
        #: calls being adopted -> their events held until the adoption is done (`adopt`)
        self._adopting: dict[str, list[AriEvent]] = {}
        #: calls being moved to the IVR app -> how the move ended (`send_to_ivr`)
        self._moves: dict[str, asyncio.Future[str]] = {}
        self._resyncs = 0  # bumped by every successful reconnect
        self._rng = random.Random()  # backoff jitter only

    # ----- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        token = base64.b64encode(f"{self._username}:{self._password}".encode()).decode()
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Basic {token}"}, timeout=self._timeout
        )
        self._rest = AriRestClient(self._session, self.base_url)
        try:
            await self._rest.ping()  # a bad password fails here, with ARI's own message
            ws = await self._open_ws()
        except BaseException:
            await self._session.close()
            raise
        self._ws = ws
        self._connected = True
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._spawn("ARI event reader", self._read_events, ws)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._connected = False
        for transfer in self._consults.values():
            transfer.settle(False)
        for move in self._moves.values():
            if not move.done():
                move.set_result(_MOVE_CLOSED)
        for task in list(self._tasks):
            task.cancel()
        if self._tg is not None:
            await self._tg.__aexit__(None, None, None)
            self._tg = None
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self._queue.put_nowait(None)

    @property
    def connected(self) -> bool:
        return self._connected and self._fatal is None and not self._closing

    async def events(self) -> AsyncIterator[CallEvent]:
        """The normalized event stream (one consumer); it ends when the backend is closed."""
        while True:
            event = await self._queue.get()
            if event is None:
                self._queue.put_nowait(None)  # a later iteration ends at once too
                return
            yield event

    # ----- internals ---------------------------------------------------------------------
    def _spawn(self, what: str, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run `fn(*args)` as a task of our TaskGroup; its failure is logged, never propagated.

        The coroutine is created inside the task, so a task cancelled before it starts (on
        shutdown) leaves no never-awaited coroutine behind."""
        if self._tg is None or self._closing:
            return

        async def guarded() -> None:
            try:
                await fn(*args)
            except asyncio.CancelledError:
                raise
            except TelephonyError as exc:
                log.warning("ARI %s failed: %s", what, exc)
            except Exception as exc:  # no traceback: a foreign text may quote a secret
                log.error("ARI %s crashed: %s", what, describe_exception(exc))

        task = self._tg.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(self, event: CallEvent) -> None:
        self._queue.put_nowait(event)

    def _publish_all(self, events: list[CallEvent]) -> None:
        """Tracker output: published, with the follow-up each event needs."""
        for event in events:
            if event.kind is CallEventKind.HANGUP:
                self._spawn(f"cleanup of {event.call_id}", self._cleanup_call, event.call_id)
            elif event.kind is CallEventKind.INBOUND:
                self._spawn(f"subscription to {event.call_id}", self._follow, event.call_id)
            self._publish(event)

    def _rest_or_raise(self) -> AriRestClient:
        if self._fatal is not None:
            raise BackendUnavailable("ARI backend stopped", detail=str(self._fatal))
        if self._rest is None or not self._connected:
            raise BackendUnavailable(
                f"ARI event link to {self.base_url} is down; nothing was sent",
                detail="wait for backend_up",
            )
        return self._rest

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def _open_ws(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None and self._rest is not None
        return await open_event_socket(self._session, self._rest.base_url, self.app)

    def _go_down(self, detail: str) -> None:
        if self._connected:
            self._connected = False
            log.warning("ARI event link down: %s", detail)
            self._publish(CallEvent(kind=CallEventKind.BACKEND_DOWN, call_id="", detail=detail))

    async def _read_events(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Owner of the WebSocket: read, reconnect with backoff, resynchronize; until closed.

        Whatever breaks the stream (a connection error, a payload error, a bug in a handler
        that escaped `_pump`) leads to a reconnect: only ApplicationReplaced, a refused login
        and shutdown end this loop."""
        while True:
            try:
                await self._pump(ws)
            except ApplicationReplaced as exc:
                self._fatal = exc
                self._go_down(str(exc))
                await close_quietly(ws)
                return
            except Exception as exc:
                log.warning("ARI event WebSocket failed: %s", describe_exception(exc))
            self._go_down("event WebSocket closed")
            await close_quietly(ws)
            reconnected = await self._reconnect()
            if reconnected is None:
                return
            ws = reconnected

    async def _reconnect(self) -> aiohttp.ClientWebSocketResponse | None:
        delay = self.reconnect_initial_s
        while True:
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, self.reconnect_max_s)
            ws: aiohttp.ClientWebSocketResponse | None = None
            try:
                ws = await self._open_ws()
                assert self._rest is not None
                # The WebSocket is open before the snapshot is asked for, so nothing that
                # happens after the snapshot is lost; legs confirmed later are not judged.
                confirmed_by = self._confirmed_seq
                channels = await self._rest.list_channels()
            except AuthenticationFailed as exc:
                self._fatal = exc
                log.error("ARI reconnect refused, giving up: %s", exc)
                self._publish(
                    CallEvent(kind=CallEventKind.BACKEND_DOWN, call_id="", detail=str(exc))
                )
                if ws is not None:
                    await close_quietly(ws)
                return None
            except Exception as exc:  # TelephonyError, or anything a broken server causes
                log.info("ARI reconnect or resync failed, retrying: %s", describe_exception(exc))
                if ws is not None:
                    await close_quietly(ws)
                continue
            try:
                self._resync(channels, confirmed_by)
            except Exception as exc:  # a bug must not end the reader: try the link again
                log.error("ARI resync failed, reconnecting: %s", describe_exception(exc))
                await close_quietly(ws)
                continue
            self._ws = ws
            self._connected = True
            self._resyncs += 1
            log.info("ARI event link up again; %d channels live", len(channels))
            self._publish(CallEvent(kind=CallEventKind.BACKEND_UP, call_id=""))
            return ws

    def _resync(self, channels: list[dict[str, Any]], confirmed_by: int) -> None:
        """Catch up with a `GET /channels` snapshot (see the module docstring)."""
        snapshot = {str(c.get("id", "")): c for c in channels if isinstance(c, Mapping)}
        for listed_id, listed in snapshot.items():
            if self._tracker.role_of(listed_id) is None:
                self._untracked_in_snapshot(listed_id, listed)
        unsure = set(self._tracker.unsure_legs(confirmed_by))
        for channel_id in self._tracker.channel_ids():
            role = self._tracker.role_of(channel_id)
            if role is None or channel_id in unsure:
                continue
            chan = snapshot.get(channel_id)
            if chan is None:
                self._on_leg_destroyed(channel_id, *role)
            else:
                self._catch_up(channel_id, chan, *role)
        self._publish_all(self._tracker.reconcile(channels, confirmed_by=confirmed_by))
        for channel_id in unsure:
            if channel_id in self._posting:
                self._verify_after_post.add(channel_id)
            else:
                self._check_later(channel_id)
        for playback_id in list(self._playbacks):
            if playback_id in self._posting:  # POST /play in flight: a 404 proves nothing yet
                self._verify_after_post.add(playback_id)
            else:
                self._check_later(playback_id)
        for bridge_id in list(self._bridges.values()):
            what = f"check of bridge {bridge_id}"
            self._spawn(what, self._retrying, what, self._check_bridge, bridge_id)

    def _check_later(self, ident: str) -> None:
        """Look a channel or playback up now (retried); the resync could not judge it."""
        if ident in self._playbacks:
            what = f"check of playback {ident}"
            self._spawn(what, self._retrying, what, self._check_playback, ident)
        else:
            what = f"check of {ident}"
            self._spawn(what, self._retrying, what, self._verify_leg, ident)

    def _untracked_in_snapshot(self, channel_id: str, chan: Mapping[str, Any]) -> None:
        """A channel in a snapshot that we do not track: one we disowned is hung up; one in
        our app's Stasis is an inbound call whose StasisStart was lost (unless its Stasis
        arguments say it is a leg of an earlier process: it waits for `adopt`)."""
        if channel_id in self._disowned:
            del self._disowned[channel_id]
            self._spawn(f"hangup of disowned {channel_id}", self._hangup_quietly, channel_id)
            return
        dialplan = chan.get("dialplan") or {}
        if not isinstance(dialplan, Mapping) or dialplan.get("app_name") != "Stasis":
            return
        app, *args = str(dialplan.get("app_data", "")).split(",")
        if app == self.app:
            self._publish_all(
                self._tracker.feed({"type": "StasisStart", "args": args, "channel": chan})
            )

    async def _retrying(
        self, what: str, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any
    ) -> None:
        """Run a post-resync check `fn(*args)`, retried with backoff while ARI fails: a check
        lost to one 500 or timeout would leave a call stuck until the next outage. A check
        handles NotFound itself; the next resync redoes every check anyway."""
        delay = self.reconnect_initial_s
        for attempt in range(6):
            try:
                await fn(*args)
                return
            except TelephonyError as exc:
                if attempt == 5 or self._closing or isinstance(exc, AuthenticationFailed):
                    raise
                log.info("ARI %s failed, retrying: %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def _catch_up(
        self, channel_id: str, chan: Mapping[str, Any], call_id: str, role: LegRole
    ) -> None:
        """A live leg of ours in a snapshot: do what its lost StasisStart would have done."""
        dialplan = chan.get("dialplan") or {}
        in_stasis = isinstance(dialplan, Mapping) and dialplan.get("app_name") == "Stasis"
        if self._tracker.sync_stasis(channel_id, in_stasis):
            self._on_stasis_start(channel_id, call_id, role)
        if (
            role is LegRole.CUSTOMER
            and call_id in self._amd_started
            and not self._tracker.amd_known(call_id)
        ):
            self._spawn(f"AMD read-back of {call_id}", self._read_back_amd, call_id)

    async def _verify_leg(self, channel_id: str) -> None:
        """A leg the resync could not judge: look it up on its own."""
        assert self._rest is not None
        role = self._tracker.role_of(channel_id)
        if role is None:
            return
        try:
            chan = await self._rest.get_channel(channel_id)
        except NotFound:
            if self._tracker.role_of(channel_id) is None:
                return  # its end arrived meanwhile
            self._on_leg_destroyed(channel_id, *role)
            self._publish_all(
                self._tracker.vanished(channel_id, "ended while the ARI event link was down")
            )
            return
        self._catch_up(channel_id, chan, *role)
        self._publish_all(self._tracker.observe_channel(chan))

    async def _check_playback(self, playback_id: str) -> None:
        """A playback whose PlaybackFinished may have been lost: hang up if it is over."""
        assert self._rest is not None
        try:
            playback = await self._rest.get_playback(playback_id)
            ended = playback.get("state") in PLAYBACK_ENDED
        except NotFound:
            ended = True
        call_id = self._playbacks.pop(playback_id, None) if ended else None
        if call_id is not None:
            await self._hangup_quietly(call_id)

    async def _check_bridge(self, bridge_id: str) -> None:
        assert self._rest is not None
        try:
            bridge = await self._rest.get_bridge(bridge_id)
        except NotFound:  # destroyed while we could not see it
            self._tracker.forget_bridge(bridge_id)
            return
        self._publish_all(self._tracker.note_bridge(bridge))

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                try:
                    self._on_frame(msg.data)
                except ApplicationReplaced:
                    raise
                except Exception as exc:  # one bad event must not stop the stream
                    log.error("ARI event dropped: handling it failed: %s", describe_exception(exc))
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                return

    def _on_frame(self, frame: str | bytes) -> None:
        event = self._decoder.decode(frame)
        if event is None:
            return
        if event.type == "ApplicationReplaced":
            raise ApplicationReplaced(
                f"another ARI client registered application {self.app!r}; this backend stops",
                detail="run one dialer per ARI app name",
            )
        channel_id = event.channel_id
        if self._adopting and channel_id:
            held = self._adopting.get(channel_id)
            if held is None:
                match = _LEG_ID_RE.match(channel_id)
                held = self._adopting.get(match["call"]) if match else None
            if held is not None:
                held.append(event)  # replayed once the adoption knows the call's state
                return
        self._on_event(event)

    def _on_event(self, event: AriEvent) -> None:
        channel_id = event.channel_id
        if channel_id in self._disowned:
            # An originate we reported as failed took after all: nobody expects this call.
            del self._disowned[channel_id]
            log.warning("hanging up %s: its originate had been given up", channel_id)
            self._spawn(f"hangup of disowned {channel_id}", self._hangup_quietly, channel_id)
            return
        role = self._tracker.role_of(channel_id) if channel_id else None
        if event.type == "StasisStart" and role is not None:
            self._on_stasis_start(channel_id, *role)  # the tracker marks it in Stasis below
        elif event.type == "PlaybackFinished":
            playback = event.data.get("playback") or {}
            call_id = self._playbacks.pop(str(playback.get("id", "")), None)
            if call_id is not None:
                self._spawn(f"hangup after playback of {call_id}", self._hangup_quietly, call_id)
        elif event.type == "ChannelDestroyed" and role is not None:
            self._on_leg_destroyed(channel_id, *role)
        elif event.type in ("StasisEnd", "ApplicationMoveFailed") and channel_id in self._moves:
            self._on_move_done(channel_id, event)
        self._publish_all(self._tracker.feed(event.data))

    def _on_move_done(self, call_id: str, event: AriEvent) -> None:
        """The StasisEnd of a call being moved (it is in the IVR app now), or its failure."""
        move = self._moves[call_id]
        if move.done():
            return
        if event.type == "StasisEnd":
            self._tracker.note_moved(call_id, self.ivr_app)
            move.set_result(_MOVE_DONE)
        else:
            move.set_result(_MOVE_FAILED)

    def _on_stasis_start(self, channel_id: str, call_id: str, role: LegRole) -> None:
        if role is not LegRole.CUSTOMER and not self._tracker.is_live(call_id):
            # The customer is gone (the agent or target answered late): nobody to talk to.
            self._consults.pop(channel_id, None)
            self._agent_bridge.pop(channel_id, None)
            self._spawn(f"hangup of orphan {channel_id}", self._hangup_quietly, channel_id)
        elif role is LegRole.CUSTOMER and call_id in self._amd_pending:
            self._amd_pending.discard(call_id)
            self._spawn(f"AMD of {call_id}", self._run_amd, call_id)
        elif role is LegRole.AGENT and channel_id in self._agent_bridge:
            bridge_id = self._agent_bridge.pop(channel_id)
            self._spawn(f"bridging agent of {call_id}", self._bridge_agent, bridge_id, channel_id)
        elif role is LegRole.CONSULT and channel_id in self._consults:
            self._consults[channel_id].settle(True)

    def _on_leg_destroyed(self, channel_id: str, call_id: str, role: LegRole) -> None:
        self._agent_bridge.pop(channel_id, None)
        move = self._moves.get(channel_id)
        if move is not None and not move.done():
            move.set_result(_MOVE_ENDED)
        transfer = self._consults.pop(channel_id, None)
        if transfer is not None:
            transfer.settle(False)

    async def _run_amd(self, call_id: str) -> None:
        assert self._rest is not None
        try:
            await self._rest.continue_in_dialplan(
                call_id, context=self.amd_context, extension=self.amd_extension, priority=1
            )
            if self._tracker.is_live(call_id):  # else its cleanup already ran
                self._amd_started.add(call_id)
        except NotFound:
            log.info("AMD of %s not started: the call already ended", call_id)

    async def _read_back_amd(self, call_id: str) -> None:
        """The AMD verdict set while the event link was down, from the channel variables."""
        assert self._rest is not None
        try:
            status = await self._rest.get_variable(call_id, "AMDSTATUS")
            cause = await self._rest.get_variable(call_id, "AMDCAUSE")
        except NotFound:
            return  # not decided yet (its ChannelVarset will come) or the call ended
        self._publish_all(self._tracker.note_amd(call_id, status, cause))

    async def _follow(self, channel_id: str) -> None:
        """Subscribe to an inbound channel, so its end is seen after it leaves Stasis."""
        assert self._rest is not None
        try:
            await self._rest.subscribe(self.app, [f"channel:{channel_id}"])
        except TelephonyError as exc:  # gone already (422): its StasisEnd ends it
            log.info("inbound %s not followed beyond Stasis: %s", channel_id, exc)
            return
        self._tracker.note_subscribed(channel_id)

    async def _bridge_agent(self, bridge_id: str, channel_id: str) -> None:
        """Add the answered agent leg; if that is refused, hang it up (its end is reported
        to the customer as UNBRIDGED) rather than leave an agent on a silent line."""
        assert self._rest is not None
        try:
            await self._rest.add_channel(bridge_id, [channel_id])
        except TelephonyError:
            await self._hangup_quietly(channel_id)
            raise

    async def _hangup_quietly(self, channel_id: str, cause: int | None = None) -> None:
        assert self._rest is not None
        with contextlib.suppress(NotFound):
            await self._rest.hangup(channel_id, cause)

    async def _cleanup_call(self, call_id: str) -> None:
        """The customer is gone: hang up its agent/consult legs and destroy its bridge."""
        self._amd_pending.discard(call_id)
        self._amd_started.discard(call_id)
        for playback_id in [p for p, c in self._playbacks.items() if c == call_id]:
            del self._playbacks[playback_id]
        for role in (LegRole.AGENT, LegRole.CONSULT):
            for leg in self._tracker.legs_of(call_id, role):
                await self._hangup_quietly(leg)
        self._customer_bridged.discard(call_id)
        bridge_id = self._bridges.pop(call_id, None)
        if bridge_id is not None and self._rest is not None:
            with contextlib.suppress(NotFound):
                await self._rest.destroy_bridge(bridge_id)

    def _require_call(self, call_id: str) -> None:
        if not self._tracker.is_live(call_id):
            raise UnknownCall(
                f"no live ARI call with id {call_id!r}", detail="it ended or never existed"
            )

    def _disown(self, channel_id: str) -> None:
        """Give up on a channel we tried to originate: stop tracking it, and hang it up if it
        appears after all (its POST may have been carried out although no answer came)."""
        self._tracker.forget(channel_id)
        self._disowned[channel_id] = None
        if len(self._disowned) > MAX_DISOWNED:
            del self._disowned[next(iter(self._disowned))]

    async def _originate_leg(
        self, channel_id: str, endpoint: str, *, fresh: bool = True, **kw: Any
    ) -> None:
        """`POST /channels` for a leg the tracker already expects, into our app.

        On success the leg is confirmed (it may be judged by the next resync). A 409 means
        the channel id exists: ours, from an earlier try, so it is success too. A failure
        without an answer (BackendUnavailable: timeout, reset) is ambiguous: it is a success
        if events of the channel already arrived (it may even be over: busy) or the channel
        exists. Any other outcome re-raises, and disowns the id when this POST was its first
        (`fresh`; a failed replay of a live call's originate leaves that call alone)."""
        assert self._rest is not None
        self._disowned.pop(channel_id, None)  # tried again: a channel with this id is wanted
        self._posting.add(channel_id)
        try:
            try:
                await self._rest.originate(endpoint, app=self.app, channel_id=channel_id, **kw)
            except Conflict as exc:
                log.warning("originate %s: channel id already exists (%s)", channel_id, exc.detail)
            except BackendUnavailable:
                if not self._tracker.seen(channel_id) and not await self._exists(channel_id):
                    raise
        except BaseException:
            self._verify_after_post.discard(channel_id)
            if fresh:
                self._disown(channel_id)
            raise
        finally:
            self._posting.discard(channel_id)
        self._confirmed_seq += 1
        self._tracker.confirm(channel_id, self._confirmed_seq)
        self._posted(channel_id)

    def _posted(self, ident: str) -> None:
        """A POST answered; a resync that ran meanwhile left its check to now."""
        if ident in self._verify_after_post:
            self._verify_after_post.discard(ident)
            self._check_later(ident)

    async def _exists(self, channel_id: str) -> bool:
        assert self._rest is not None
        try:
            await self._rest.get_channel(channel_id)
        except TelephonyError:
            return False
        return True

    # ----- Telephony commands ------------------------------------------------------------
    async def originate(self, request: OriginateRequest) -> None:
        """POST /channels into our app with channelId = call_id. `request.context` and
        `extension` are not used (the call goes to Stasis; AMD uses `amd_context`). Raises
        ValueError for a call id ARI cannot take, BackendUnavailable while the link is down
        or when the POST got no answer and the channel does not exist."""
        self._rest_or_raise()
        if not CALL_ID_RE.match(request.call_id):
            raise ValueError(
                f"call_id {request.call_id!r} must be 1-64 characters of [A-Za-z0-9._-]"
            )
        call_id = request.call_id
        fresh = not self._tracker.is_live(call_id)  # False: a replayed originate
        if fresh:
            self._tracker.expect(call_id, role=LegRole.CUSTOMER, peer=request.endpoint)
            if request.amd:
                self._amd_pending.add(call_id)
        # PACELINE_AMD lets a restarted dialer know what this one was asked (`adopt`).
        variables = {
            **request.variables,
            "PACELINE_APP": self.app,
            "PACELINE_CALL_ID": call_id,
            "PACELINE_AMD": "1" if request.amd else "0",
        }
        try:
            await self._originate_leg(
                call_id,
                request.endpoint,
                fresh=fresh,
                app_args=("customer", call_id),
                caller_id=request.caller_id or None,
                timeout_s=max(1, round(request.ring_timeout_s)),
                variables=variables,
            )
        except BaseException:
            if fresh:
                self._amd_pending.discard(call_id)
            raise
        self._publish_all(self._tracker.mark_dialing(call_id))

    async def adopt(self, call_ids: Collection[str]) -> set[str]:
        """Follow calls an earlier process originated into this app (see `Telephony.adopt`).

        Asterisk keeps an app's channels, bridges and subscriptions while no WebSocket is
        connected (events meanwhile are lost), and hands them to the next WebSocket that
        registers the same app name, so no re-subscription is needed. One `GET /channels`
        and one `GET /bridges` say, for each id, whether the customer leg lives, whether it is
        answered, in Stasis (with an AMD verdict in its arguments `amd,<STATUS>`) or in the
        dialplan (`amd_context`: its verdict comes with its return to Stasis), which agent
        legs (`<call_id>.agent<n>`) it has and whether it is in its bridge. The customer's
        `PACELINE_AMD` variable says whether the earlier process was asked for AMD (a call
        still ringing gets it when it answers). The legs are then followed as the resync
        after a reconnect follows them (`_catch_up`): an answered agent leg not yet in the
        bridge is added, an answered customer waiting for AMD is sent into it. A consult leg
        (an attended transfer whose caller died) is hung up. Events of these channels that
        arrive while the listings are on their way are held and replayed after them."""
        rest = self._rest_or_raise()
        wanted = [c for c in dict.fromkeys(call_ids) if CALL_ID_RE.match(c)]
        followed = {c for c in wanted if self._tracker.is_live(c)}
        pending = [c for c in wanted if c not in followed and c not in self._adopting]
        if not pending:
            return followed
        for call_id in pending:
            self._adopting[call_id] = []
        resyncs = self._resyncs
        try:
            channels = await rest.list_channels()
            bridges = await rest.request("GET", "/bridges")
            if not isinstance(bridges, list):
                raise BackendUnavailable(
                    "ARI GET /bridges answered something other than a list",
                    detail=type(bridges).__name__,
                )
            snapshot = {str(c.get("id", "")): c for c in channels}
            live = [c for c in pending if c in snapshot]
            amd_asked = await self._amd_asked(
                [c for c in live if self._needs_amd_flag(snapshot[c])]
            )
        except BaseException:
            for call_id in pending:
                self._adopting.pop(call_id, None)
            raise
        # No await from here on: the adoption and the replay of held events are one step.
        held = {c: self._adopting.pop(c) for c in pending}
        self._register_adopted(set(live), snapshot, bridges, amd_asked)
        for call_id in pending:
            if call_id in snapshot:
                for event in held[call_id]:
                    self._on_event(event)
        if self._resyncs != resyncs or not self._connected:
            # The link went down during the adoption: events may be lost; look each leg up.
            for call_id in live:
                for channel_id in [call_id, *self._tracker.legs_of(call_id, LegRole.AGENT)]:
                    self._check_later(channel_id)
        log.info("adopted %d of %d calls still live on the PBX", len(live), len(pending))
        return followed | set(live)

    def _needs_amd_flag(self, chan: Mapping[str, Any]) -> bool:
        """Whether an adopted customer's `PACELINE_AMD` matters: not when AMD runs or ran."""
        dialplan = chan.get("dialplan") or {}
        if not isinstance(dialplan, Mapping):
            return True
        if dialplan.get("app_name") == "Stasis":
            _app, *args = str(dialplan.get("app_data", "")).split(",")
            return args[:1] == ["customer"]
        return dialplan.get("context") != self.amd_context

    async def _amd_asked(self, call_ids: list[str]) -> set[str]:
        """The calls among `call_ids` whose originate asked for AMD (`PACELINE_AMD=1`)."""
        assert self._rest is not None
        rest = self._rest

        async def asked(call_id: str) -> bool:
            try:
                return await rest.get_variable(call_id, "PACELINE_AMD") == "1"
            except NotFound:  # gone meanwhile (its held end says so), or never set
                return False

        flags = await asyncio.gather(*(asked(c) for c in call_ids))
        return {c for c, flag in zip(call_ids, flags, strict=True) if flag}

    def _register_adopted(
        self,
        adopted: set[str],
        snapshot: Mapping[str, Mapping[str, Any]],
        bridges: list[Any],
        amd_asked: set[str],
    ) -> None:
        """Track the adopted calls' legs and bridges, report what the dialer must act on."""
        self._confirmed_seq += 1
        seq = self._confirmed_seq
        legs: list[str] = []
        for channel_id, chan in snapshot.items():
            match = _LEG_ID_RE.match(channel_id)
            if channel_id in adopted:
                self._tracker.adopt(chan, channel_id, role=LegRole.CUSTOMER, confirmed_seq=seq)
            elif match is not None and match["call"] in adopted:
                # Our next leg ids must not clash with the live ones of the earlier process.
                self._seq = max(self._seq, int(match["n"]))
                if match["kind"] == "pb":
                    continue
                role = LegRole.AGENT if match["kind"] == "agent" else LegRole.CONSULT
                peer = _CHANNEL_SUFFIX_RE.sub("", str(chan.get("name", ""))) or channel_id
                self._tracker.adopt(chan, match["call"], role=role, peer=peer, confirmed_seq=seq)
            else:
                continue
            legs.append(channel_id)
        in_bridge: set[str] = set()
        for bridge in bridges:
            if not isinstance(bridge, Mapping):
                continue
            bridge_id = str(bridge.get("id", ""))
            members = [c for c in bridge.get("channels", []) if isinstance(c, str)]
            owner = next((c for c in adopted if c in members or bridge_id == f"{c}.bridge"), None)
            if owner is None:
                continue
            self._bridges[owner] = bridge_id  # reused by connect_to_agent, destroyed at the end
            if owner in members:
                self._customer_bridged.add(owner)
            in_bridge.update(members)
            self._tracker.adopt_bridge(bridge)
        for call_id in sorted(adopted):
            chan = snapshot[call_id]
            dialplan = chan.get("dialplan") or {}
            in_amd = (
                isinstance(dialplan, Mapping)
                and dialplan.get("context") == self.amd_context
                and dialplan.get("app_name") != "Stasis"
            )
            # With an agent (bridged, or one being dialled): not waiting for the dialer.
            with_agent = self._tracker.is_bridged(call_id) or bool(
                self._tracker.legs_of(call_id, LegRole.AGENT)
            )
            if in_amd:
                self._amd_started.add(call_id)  # its verdict comes with its return to Stasis
            elif call_id in amd_asked and not self._tracker.amd_known(call_id) and not with_agent:
                self._amd_pending.add(call_id)  # AMD starts when it is (or now, if it is) in Stasis
            if chan.get("state") == "Up" and not with_agent:
                # Waiting for the dialer, who may have died before seeing the answer.
                self._publish(
                    CallEvent(
                        kind=CallEventKind.ANSWERED,
                        call_id=call_id,
                        channel=call_id,
                        detail="adopted",
                    )
                )
                self._publish_all(self._tracker.pending_amd(call_id))
        for channel_id in legs:
            known = self._tracker.role_of(channel_id)
            if known is None:
                continue
            owner_id, leg_role = known
            if leg_role is LegRole.CONSULT:
                # The attended transfer it belonged to died with the earlier process.
                self._spawn(f"hangup of orphan {channel_id}", self._hangup_quietly, channel_id)
                continue
            call_bridge = self._bridges.get(owner_id)
            if leg_role is LegRole.AGENT and call_bridge and channel_id not in in_bridge:
                self._agent_bridge[channel_id] = call_bridge  # add it once it is in Stasis
            self._catch_up(channel_id, snapshot[channel_id], owner_id, leg_role)

    async def connect_to_agent(self, call_id: str, agent_endpoint: str) -> None:
        """Bridge the answered call with `agent_endpoint`; BRIDGED (peer = the endpoint) when
        the agent answered, UNBRIDGED with the cause if the agent leg fails. Safe to retry."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        bridge_id = self._bridges.get(call_id)
        fresh = bridge_id is None
        if bridge_id is None:
            bridge_id = f"{call_id}.bridge"
            with contextlib.suppress(Conflict):  # 409: ours already (an earlier try)
                await rest.create_bridge(
                    bridge_type="mixing", bridge_id=bridge_id, name=f"call-{call_id}"
                )
            self._bridges[call_id] = bridge_id  # from now on the call's cleanup destroys it
            if not self._tracker.is_live(call_id):  # hung up meanwhile: cleanup already ran
                self._bridges.pop(call_id, None)
                with contextlib.suppress(NotFound):
                    await rest.destroy_bridge(bridge_id)
                self._require_call(call_id)
        if call_id not in self._customer_bridged:
            # A retry after a failed addChannel asks the bridge rather than guess.
            members = [] if fresh else (await rest.get_bridge(bridge_id)).get("channels", [])
            if call_id not in members:
                await rest.add_channel(bridge_id, [call_id])
            self._customer_bridged.add(call_id)
        agent_id = f"{call_id}.agent{self._next()}"
        self._tracker.expect(agent_id, call_id, role=LegRole.AGENT, peer=agent_endpoint)
        self._agent_bridge[agent_id] = bridge_id
        try:
            await self._originate_leg(agent_id, agent_endpoint, app_args=("agent", call_id))
        except BaseException:
            self._agent_bridge.pop(agent_id, None)
            raise
        if not self._tracker.is_live(call_id):  # the customer left while the agent was dialled
            self._agent_bridge.pop(agent_id, None)
            await self._hangup_quietly(agent_id)

    async def play_and_hangup(self, call_id: str, sound: str) -> None:
        """Play `sound` (`name` or `sound:name`) and hang up when it ends, played or failed."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        playback_id = f"{call_id}.pb{self._next()}"
        # Known before the POST (its PlaybackFinished may come first), checked by a resync
        # only once the POST answered.
        self._playbacks[playback_id] = call_id
        self._posting.add(playback_id)
        media = sound if ":" in sound else f"sound:{sound}"
        try:
            await rest.play(call_id, media, playback_id=playback_id)
        except BaseException:
            self._playbacks.pop(playback_id, None)
            self._verify_after_post.discard(playback_id)
            raise
        finally:
            self._posting.discard(playback_id)
        self._posted(playback_id)

    async def hangup(self, call_id: str, cause: int = 16) -> None:
        """Also tried while the event link is down (REST may still work): ending a call is
        always safe. Its HANGUP then comes from the resync."""
        if self._fatal is not None or self._rest is None:
            raise BackendUnavailable("ARI backend stopped", detail=str(self._fatal))
        rest = self._rest
        try:
            await rest.hangup(call_id, cause)
        except NotFound as exc:
            raise UnknownCall(f"no live ARI call with id {call_id!r}", detail=exc.detail) from exc

    def _dialplan_target(self, target: str) -> tuple[str, str]:
        resource = target.split("/", 1)[1] if target.startswith("Local/") else target
        exten, _, context = resource.partition("@")
        return exten, context.split("/", 1)[0] or self.transfer_context

    def _target_endpoint(self, target: str) -> str:
        if "/" in target and not target.startswith("Local/"):
            return target
        exten, context = self._dialplan_target(target)
        return f"Local/{exten}@{context}"

    def _connected_agents(self, call_id: str, what: str) -> tuple[str, list[str]]:
        bridge_id = self._bridges.get(call_id)
        agents = self._tracker.legs_of(call_id, LegRole.AGENT)
        if bridge_id is None or not agents:
            raise TelephonyError(
                f"{what} of {call_id!r} needs the call connected to an agent",
                detail="call connect_to_agent first",
            )
        return bridge_id, agents

    async def blind_transfer(self, call_id: str, target: str) -> None:
        """Hand the customer to `target` (`1002`, `1002@ctx`, `Local/1002@ctx` or an endpoint)
        without consulting: the agent legs are hung up and the target is dialled into the
        call's own bridge, so the call stays in Stasis and in view (a `continue` into the
        dialplan would end our events for it). TRANSFERRED (detail "blind") once accepted;
        BRIDGED with the target when it answers."""
        self._rest_or_raise()
        self._require_call(call_id)
        _bridge_id, agents = self._connected_agents(call_id, "blind transfer")
        for leg in agents:
            await self._hangup_quietly(leg)
        await self.connect_to_agent(call_id, self._target_endpoint(target))
        self._publish(
            CallEvent(
                kind=CallEventKind.TRANSFERRED,
                call_id=call_id,
                channel=call_id,
                target=target,
                detail="blind",
            )
        )

    async def attended_transfer(self, call_id: str, target: str) -> None:
        """Consult `target` while the customer is on hold, then hand the customer over
        (TRANSFERRED, detail "attended"). Returns once the transfer is complete; raises
        TelephonyError when it could not be done, with the customer back with the agent."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        bridge_id, agents = self._connected_agents(call_id, "attended transfer")
        consult_id = f"{call_id}.consult{self._next()}"
        transfer = _Transfer(
            call_id, target, bridge_id, agents, asyncio.get_running_loop().create_future()
        )
        try:
            await rest.remove_channel(bridge_id, [call_id])
            await self.hold(call_id)
            transfer.on_hold = True
            self._tracker.expect(consult_id, call_id, role=LegRole.CONSULT, peer=target)
            self._consults[consult_id] = transfer
            await self._originate_leg(
                consult_id, self._target_endpoint(target), app_args=("consult", call_id)
            )
            try:
                async with asyncio.timeout(self.transfer_timeout_s):
                    answered = await asyncio.shield(transfer.answered)
            except TimeoutError:
                answered = False
            if not answered:
                raise TelephonyError(
                    f"attended transfer of {call_id!r}: {target} did not answer",
                    detail=f"waited up to {self.transfer_timeout_s:g} s"
                    if self._connected
                    else "the event link went down: its answer could not be seen",
                )
            await self._complete_transfer(consult_id, transfer)
        except BaseException:
            self._consults.pop(consult_id, None)
            with contextlib.suppress(TelephonyError):
                await self._hangup_quietly(consult_id)
            await self._restore_customer(transfer)
            raise

    async def _complete_transfer(self, consult_id: str, transfer: _Transfer) -> None:
        """The target answered: target, then customer, join the agent's bridge; the agents
        leave last, so a refused step never leaves the customer without anyone."""
        assert self._rest is not None
        await self._rest.add_channel(transfer.bridge_id, [consult_id])
        await self._moh(transfer.call_id, on=False)
        transfer.on_hold = False
        await self._rest.add_channel(transfer.bridge_id, [transfer.call_id])
        self._consults.pop(consult_id, None)
        for agent in transfer.agent_ids:
            await self._hangup_quietly(agent)
        self._publish(
            CallEvent(
                kind=CallEventKind.TRANSFERRED,
                call_id=transfer.call_id,
                channel=transfer.call_id,
                target=transfer.target,
                detail="attended",
            )
        )

    async def _restore_customer(self, transfer: _Transfer) -> None:
        """After a failed attended transfer: music off, back in the agent's bridge."""
        if not self._tracker.is_live(transfer.call_id) or self._rest is None:
            return
        log.warning("attended transfer of %s failed; back to the agent", transfer.call_id)
        if transfer.on_hold:
            with contextlib.suppress(TelephonyError):
                await self._moh(transfer.call_id, on=False)
        with contextlib.suppress(TelephonyError):
            # Asked, not assumed: our own view of the bridge may lag the REST calls.
            bridge = await self._rest.get_bridge(transfer.bridge_id)
            if transfer.call_id not in bridge.get("channels", []):
                await self._rest.add_channel(transfer.bridge_id, [transfer.call_id])

    async def hold(self, call_id: str) -> None:
        self._rest_or_raise()
        self._require_call(call_id)
        await self._moh(call_id, on=True)

    async def unhold(self, call_id: str) -> None:
        self._rest_or_raise()
        self._require_call(call_id)
        await self._moh(call_id, on=False)

    async def _moh(self, call_id: str, *, on: bool) -> None:
        """Music on hold on or off, and HELD/UNHELD once ARI accepted. Not gated on the event
        link: giving a customer back after a failed transfer must work while it is down."""
        assert self._rest is not None
        if on:
            await self._rest.start_moh(call_id, self.moh_class)
        else:
            await self._rest.stop_moh(call_id)
        kind = CallEventKind.HELD if on else CallEventKind.UNHELD
        self._publish(CallEvent(kind=kind, call_id=call_id, channel=call_id))

    async def send_dtmf(self, call_id: str, digits: str) -> None:
        """Send `digits` (0-9, A-D, *, #) to the customer. Only their count is logged."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        if not DTMF_RE.match(digits):
            raise ValueError(
                f"DTMF for {call_id!r} must be digits 0-9, A-D, * or # ({len(digits)} given)"
            )
        await rest.send_dtmf(call_id, digits)
        log.info("sent %d DTMF digits to %s", len(digits), call_id)

    async def send_to_ivr(self, call_id: str, flow: str, variables: Mapping[str, str]) -> None:
        """Set `PACELINE_<NAME>` for each variable, then move the call into the IVR app
        (`ivr_app`) with `flow` as its argument; returns once it left our app (its StasisEnd).

        Raises ValueError for a flow name or variable name ARI cannot carry (nothing sent),
        UnknownCall when the call is gone (404, or it ended before the move), TelephonyError
        when ARI refused (409: not in Stasis, e.g. still in the AMD dialplan), when the IVR
        app has no WebSocket (ApplicationMoveFailed: the call is still ours, in Stasis) or
        when the move was not seen within `move_timeout_s`. Values are never logged."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        if not _FLOW_RE.fullmatch(flow):
            raise ValueError(
                f"IVR flow {flow!r}: 1-64 characters of [A-Za-z0-9_.-] (a Stasis argument)"
            )
        names = {}
        for name in variables:
            if not _VAR_NAME_RE.fullmatch(name):
                raise ValueError(f"IVR variable name {name!r}: letters, digits and _ only")
            names[name] = f"PACELINE_{name.upper()}"
        if call_id in self._moves:
            raise TelephonyError(f"{call_id!r} is already being sent to the IVR")
        moved: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        try:
            for name, value in variables.items():
                await rest.set_variable(call_id, names[name], value)
            # Known before the POST: the StasisEnd may arrive before its answer.
            self._moves[call_id] = moved
            await rest.request(
                "POST",
                f"/channels/{call_id}/move",
                params={"app": self.ivr_app, "appArgs": flow},
            )
            try:
                async with asyncio.timeout(self.move_timeout_s):
                    outcome = await asyncio.shield(moved)
            except TimeoutError:
                raise TelephonyError(
                    f"move of {call_id!r} to IVR app {self.ivr_app!r} not confirmed",
                    detail=f"no StasisEnd within {self.move_timeout_s:g} s"
                    if self._connected
                    else "the event link went down: the move could not be seen",
                ) from None
        except NotFound as exc:
            raise UnknownCall(f"no live ARI call with id {call_id!r}", detail=exc.detail) from exc
        finally:
            if self._moves.get(call_id) is moved:
                del self._moves[call_id]
        if outcome == _MOVE_FAILED:
            raise TelephonyError(
                f"IVR app {self.ivr_app!r} refused {call_id!r}: not registered or not active",
                detail="ApplicationMoveFailed; the call is still in our app: start the IVR",
            )
        if outcome == _MOVE_ENDED:
            raise UnknownCall(
                f"ARI call {call_id!r} ended before it reached the IVR",
                detail="its HANGUP comes as usual",
            )
        if outcome == _MOVE_CLOSED:
            raise BackendUnavailable("ARI backend closed while moving a call to the IVR")
        log.info(
            "sent %s to IVR app %s, flow %s, with %d variables",
            call_id, self.ivr_app, flow, len(variables),
        )
