"""`AriTelephony`: the `cti.interface.Telephony` backend over Asterisk ARI.

Ownership: `async with AriTelephony(...)` opens one aiohttp session and the event WebSocket,
and starts a TaskGroup that owns the WebSocket reader and the short follow-up tasks (adding an
answered agent to its bridge, hanging up after a playback). Leaving the block cancels them,
closes the socket and the session, and ends `events()`.

How each command maps onto ARI (paths as in the Asterisk 20 swagger):
- originate: `POST /channels` with `channelId = request.call_id` and `app`, so the customer
  leg enters our Stasis app on answer and a replayed POST answers 409 instead of dialing twice
  (a 409 "already exists" is therefore taken as success). With `amd=True` the answered call is
  sent on with `POST /channels/{id}/continue` into `amd_context` (the reference `dialer-amd`:
  AMD(), then Stasis(app, human, <exten>) for a person, Hangup(16) for a machine); the channel
  stays subscribed, so AMDSTATUS/AMDCAUSE and the hang-up still arrive.
- connect_to_agent: a mixing bridge `<call_id>.bridge` with the customer in it, then the agent
  endpoint originated into the app as `<call_id>.agent<n>`; on its StasisStart it is added.
- play_and_hangup: `POST /channels/{id}/play`, then `DELETE` on its PlaybackFinished (also
  when the playback `failed`, e.g. a missing sound).
- hangup: `DELETE /channels/{id}?reason=<name>` (`cti.ari.codes`), `reason_code` otherwise.
- blind_transfer: the agent legs are hung up and the target (`1002`, `1002@agents`,
  `Local/1002@agents` -> `Local/<exten>@<context>`, context defaulting to `transfer_context`;
  or an endpoint such as `PJSIP/1002`) is originated into the app and joins the call's bridge,
  so the customer never leaves Stasis (after a `continue` or `redirect` we would see no more
  of the call). ARI has no transfer event: TRANSFERRED is reported once the target is dialled.
- attended_transfer: the customer leaves the bridge and gets music on hold; the target is
  originated into the app and, once it answers, joins the agent's bridge; then the customer's
  music stops, the agent is hung up and the customer joins the target. If the consult leg is
  never answered the customer goes back to the agent.
- hold/unhold: `POST`/`DELETE /channels/{id}/moh` (a Local channel sends no ChannelHold), and
  HELD/UNHELD are reported once ARI answered 204.
- send_dtmf: `POST /channels/{id}/dtmf`. Digits are never logged (a card number), only counts.

Link loss: `connected` turns False and BACKEND_DOWN is emitted; the WebSocket is reopened with
exponential backoff; then `GET /channels` resynchronizes the tracker (a call that vanished is
reported as hung up) and BACKEND_UP is emitted. `ApplicationReplaced` (another client took the
app) and a 401 on reconnect are final: BACKEND_DOWN with the reason, no reconnect loop, and
`originate` raises `BackendUnavailable` naming the cause.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from cti.ari.errors import AriAuthenticationFailed, Conflict, NotFound
from cti.ari.rest import AriRestClient
from cti.ari.tracker import AriTracker, LegRole
from cti.ari.ws import AriEventDecoder
from cti.events import CallEvent, CallEventKind
from cti.interface import (
    AuthenticationFailed,
    BackendUnavailable,
    OriginateRequest,
    TelephonyError,
    UnknownCall,
)

log = logging.getLogger(__name__)

#: Largest WebSocket message accepted at all; bigger ones drop the link (and reconnect). Frames
#: above the decoder's own `ws.MAX_FRAME_BYTES` are received but skipped.
MAX_WS_MESSAGE_BYTES = 8 << 20

CALL_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DTMF_RE = re.compile(r"^[0-9A-Da-d*#]+$")


class ApplicationReplaced(TelephonyError):
    """Another ARI client registered our application name; Asterisk now sends it our events."""


@dataclass(slots=True)
class _Transfer:
    call_id: str
    target: str
    bridge_id: str
    agent_ids: list[str]


def _number_of(endpoint: str) -> str:
    """`Local/0100@sim-customers` / `PJSIP/+1555@trunk` -> the number part."""
    resource = endpoint.split("/", 1)[-1]
    return resource.split("@", 1)[0].split("/", 1)[0]


class AriTelephony:
    """Telephony over ARI. See the module docstring for the mapping and the link handling.

    `base_url` is `http://host:8088` (or with `/ari`); `username`/`password` an ari.conf user
    (sent as HTTP Basic auth); `app` the Stasis application name, which must be unique per
    running dialer. `amd_context` is the dialplan context that runs AMD() and hands a person
    back to Stasis with `human` as first argument; `transfer_context` the context of bare
    extension targets of transfers; `moh_class` the music-on-hold class for `hold`.
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
        amd_context: str = "dialer-amd",
        transfer_context: str = "agents",
        moh_class: str | None = None,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.app = app
        self.amd_context = amd_context
        self.transfer_context = transfer_context
        self.moh_class = moh_class
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
        self._amd_pending: dict[str, str] = {}  # call_id -> extension for the AMD dialplan
        self._amd_started: set[str] = set()  # calls sent into the AMD dialplan
        self._bridges: dict[str, str] = {}  # call_id -> bridge id
        self._agent_bridge: dict[str, str] = {}  # agent channel id -> bridge id
        self._consults: dict[str, _Transfer] = {}  # consult channel id -> transfer
        self._playbacks: dict[str, str] = {}  # playback id -> call_id
        self._seq = 0
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
            except Exception:
                log.exception("ARI %s crashed", what)

        task = self._tg.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(self, event: CallEvent) -> None:
        self._queue.put_nowait(event)

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
        url = self._rest.base_url / "events"
        try:
            return await self._session.ws_connect(
                url.with_query({"app": self.app}), heartbeat=30.0, max_msg_size=MAX_WS_MESSAGE_BYTES
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise AriAuthenticationFailed(
                    f"ARI refused the event WebSocket for app {self.app!r} (HTTP 401)",
                    detail="check the ARI username/password in ari.conf",
                ) from exc
            raise BackendUnavailable(
                f"ARI event WebSocket at {url} refused", detail=f"HTTP {exc.status}"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(
                f"ARI at {self.base_url} is unreachable", detail=f"{type(exc).__name__}: {exc}"
            ) from exc

    def _go_down(self, detail: str) -> None:
        if self._connected:
            self._connected = False
            log.warning("ARI event link down: %s", detail)
            self._publish(CallEvent(kind=CallEventKind.BACKEND_DOWN, call_id="", detail=detail))

    async def _read_events(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Owner of the WebSocket: read, reconnect with backoff, resynchronize; until closed."""
        while True:
            try:
                await self._pump(ws)
            except ApplicationReplaced as exc:
                self._fatal = exc
                self._go_down(str(exc))
                await self._close_quietly(ws)
                return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("ARI event WebSocket failed: %s: %s", type(exc).__name__, exc)
            self._go_down("event WebSocket closed")
            await self._close_quietly(ws)
            reconnected = await self._reconnect()
            if reconnected is None:
                return
            ws = reconnected

    @staticmethod
    async def _close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await ws.close()

    async def _reconnect(self) -> aiohttp.ClientWebSocketResponse | None:
        delay = self.reconnect_initial_s
        while True:
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, self.reconnect_max_s)
            ws: aiohttp.ClientWebSocketResponse | None = None
            try:
                ws = await self._open_ws()
                assert self._rest is not None
                channels = await self._rest.list_channels()
            except AuthenticationFailed as exc:
                self._fatal = exc
                log.error("ARI reconnect refused, giving up: %s", exc)
                self._publish(
                    CallEvent(kind=CallEventKind.BACKEND_DOWN, call_id="", detail=str(exc))
                )
                if ws is not None:
                    await self._close_quietly(ws)
                return None
            except TelephonyError as exc:
                log.info("ARI reconnect or resync failed, retrying: %s", exc)
                if ws is not None:
                    await self._close_quietly(ws)
                continue
            self._ws = ws
            for chan in channels:  # answered while we were away: AMD must still be started
                call_id = str(chan.get("id", ""))
                dialplan = chan.get("dialplan") or {}
                if call_id in self._amd_pending and dialplan.get("app_name") == "Stasis":
                    exten = self._amd_pending.pop(call_id)
                    self._spawn(f"AMD of {call_id}", self._run_amd, call_id, exten)
                elif call_id in self._amd_started and not self._tracker.amd_known(call_id):
                    self._spawn(f"AMD read-back of {call_id}", self._read_back_amd, call_id)
            for event in self._tracker.reconcile(channels):
                self._after_tracker_event(event)
                self._publish(event)
            self._connected = True
            log.info("ARI event link up again; %d channels live", len(channels))
            self._publish(CallEvent(kind=CallEventKind.BACKEND_UP, call_id=""))
            return ws

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                try:
                    self._on_frame(msg.data)
                except ApplicationReplaced:
                    raise
                except Exception:  # one bad event must not stop the stream
                    log.exception("ARI event dropped: handling it failed")
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
        role = self._tracker.role_of(channel_id) if channel_id else None
        if event.type == "StasisStart" and role is not None:
            self._on_stasis_start(channel_id, *role)
        elif event.type == "PlaybackFinished":
            playback = event.data.get("playback") or {}
            call_id = self._playbacks.pop(str(playback.get("id", "")), None)
            if call_id is not None:
                self._spawn(f"hangup after playback of {call_id}", self._hangup_quietly, call_id)
        elif event.type == "ChannelDestroyed" and role is not None:
            self._on_leg_destroyed(channel_id, *role)
        for out in self._tracker.feed(event.data):
            self._after_tracker_event(out)
            self._publish(out)

    def _after_tracker_event(self, event: CallEvent) -> None:
        if event.kind is CallEventKind.HANGUP:
            self._spawn(f"cleanup of {event.call_id}", self._cleanup_call, event.call_id)

    def _on_stasis_start(self, channel_id: str, call_id: str, role: LegRole) -> None:
        if role is LegRole.CUSTOMER and call_id in self._amd_pending:
            exten = self._amd_pending.pop(call_id)
            self._spawn(f"AMD of {call_id}", self._run_amd, call_id, exten)
        elif role is LegRole.AGENT and channel_id in self._agent_bridge:
            bridge_id = self._agent_bridge[channel_id]
            self._spawn(f"bridging agent of {call_id}", self._add, bridge_id, channel_id)
        elif role is LegRole.CONSULT and channel_id in self._consults:
            self._spawn(f"attended transfer of {call_id}", self._complete_transfer, channel_id)

    def _on_leg_destroyed(self, channel_id: str, call_id: str, role: LegRole) -> None:
        self._agent_bridge.pop(channel_id, None)
        transfer = self._consults.pop(channel_id, None)
        if transfer is not None:
            self._spawn(f"abort transfer of {call_id}", self._abort_transfer, transfer)

    async def _run_amd(self, call_id: str, exten: str) -> None:
        assert self._rest is not None
        try:
            await self._rest.continue_in_dialplan(
                call_id, context=self.amd_context, extension=exten, priority=1
            )
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
        for event in self._tracker.note_amd(call_id, status, cause):
            self._publish(event)

    async def _add(self, bridge_id: str, channel_id: str) -> None:
        assert self._rest is not None
        await self._rest.add_channel(bridge_id, [channel_id])

    async def _hangup_quietly(self, channel_id: str, cause: int | None = None) -> None:
        assert self._rest is not None
        with contextlib.suppress(NotFound):
            await self._rest.hangup(channel_id, cause)

    async def _cleanup_call(self, call_id: str) -> None:
        """The customer is gone: hang up its agent/consult legs and destroy its bridge."""
        self._amd_pending.pop(call_id, None)
        self._amd_started.discard(call_id)
        for role in (LegRole.AGENT, LegRole.CONSULT):
            for leg in self._tracker.legs_of(call_id, role):
                await self._hangup_quietly(leg)
        bridge_id = self._bridges.pop(call_id, None)
        if bridge_id is not None and self._rest is not None:
            with contextlib.suppress(NotFound):
                await self._rest.destroy_bridge(bridge_id)

    def _require_call(self, call_id: str) -> None:
        if not self._tracker.is_live(call_id):
            raise UnknownCall(
                f"no live ARI call with id {call_id!r}", detail="it ended or never existed"
            )

    # ----- Telephony commands ------------------------------------------------------------
    async def originate(self, request: OriginateRequest) -> None:
        """POST /channels into our app with channelId = call_id. `request.context` and
        `extension` are not used (the call goes to Stasis), except that with `amd` a non-"s"
        `extension` names the AMD dialplan extension (default: the dialled number). Raises
        ValueError for a call id ARI cannot take, BackendUnavailable while the link is down."""
        rest = self._rest_or_raise()
        if not CALL_ID_RE.match(request.call_id):
            raise ValueError(
                f"call_id {request.call_id!r} must be 1-64 characters of [A-Za-z0-9._-]"
            )
        fresh = not self._tracker.is_live(request.call_id)  # False: a replayed originate
        if fresh:
            self._tracker.expect(request.call_id, role=LegRole.CUSTOMER, peer=request.endpoint)
        if request.amd and fresh:
            self._amd_pending[request.call_id] = (
                request.extension
                if request.extension not in ("", "s")
                else _number_of(request.endpoint)
            )
        try:
            await rest.originate(
                request.endpoint,
                app=self.app,
                app_args=("customer", request.call_id),
                channel_id=request.call_id,
                caller_id=request.caller_id or None,
                timeout_s=max(1, round(request.ring_timeout_s)),
                variables=request.variables,
            )
        except Conflict as exc:
            # A replay of an originate ARI already took: the call exists; do not dial twice.
            log.warning("originate %s: channel id already exists (%s)", request.call_id, exc.detail)
            return
        except BaseException:
            if fresh:
                self._tracker.forget(request.call_id)
                self._amd_pending.pop(request.call_id, None)
            raise
        for event in self._tracker.mark_dialing(request.call_id):
            self._publish(event)

    async def connect_to_agent(self, call_id: str, agent_endpoint: str) -> None:
        """Bridge the answered call with `agent_endpoint`; BRIDGED (peer = the endpoint) when
        the agent answered, UNBRIDGED with the cause if the agent leg fails."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        bridge_id = self._bridges.get(call_id)
        if bridge_id is None:
            bridge_id = f"{call_id}.bridge"
            await rest.create_bridge(
                bridge_type="mixing", bridge_id=bridge_id, name=f"call-{call_id}"
            )
            self._bridges[call_id] = bridge_id
            await rest.add_channel(bridge_id, [call_id])
        agent_id = f"{call_id}.agent{self._next()}"
        self._tracker.expect(agent_id, call_id, role=LegRole.AGENT, peer=agent_endpoint)
        self._agent_bridge[agent_id] = bridge_id
        try:
            await rest.originate(
                agent_endpoint, app=self.app, app_args=("agent", call_id), channel_id=agent_id
            )
        except BaseException:
            self._tracker.forget(agent_id)
            self._agent_bridge.pop(agent_id, None)
            raise

    async def play_and_hangup(self, call_id: str, sound: str) -> None:
        """Play `sound` (`name` or `sound:name`) and hang up when it ends, played or failed."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        playback_id = f"{call_id}.pb{self._next()}"
        self._playbacks[playback_id] = call_id
        media = sound if ":" in sound else f"sound:{sound}"
        try:
            await rest.play(call_id, media, playback_id=playback_id)
        except BaseException:
            self._playbacks.pop(playback_id, None)
            raise

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

    async def blind_transfer(self, call_id: str, target: str) -> None:
        """Hand the customer to `target` (`1002`, `1002@ctx`, `Local/1002@ctx` or an endpoint)
        without consulting: the agent legs are hung up and the target is dialled into the
        call's own bridge, so the call stays in Stasis and in view (a `continue` into the
        dialplan would end our events for it). TRANSFERRED (detail "blind") once accepted;
        BRIDGED with the target when it answers."""
        self._rest_or_raise()
        self._require_call(call_id)
        agents = self._tracker.legs_of(call_id, LegRole.AGENT)
        if call_id not in self._bridges or not agents:
            raise TelephonyError(
                f"blind transfer of {call_id!r} needs the call connected to an agent",
                detail="call connect_to_agent first",
            )
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
        (TRANSFERRED, detail "attended"). Returns once the consult leg is dialling."""
        rest = self._rest_or_raise()
        self._require_call(call_id)
        bridge_id = self._bridges.get(call_id)
        agents = self._tracker.legs_of(call_id, LegRole.AGENT)
        if bridge_id is None or not agents:
            raise TelephonyError(
                f"attended transfer of {call_id!r} needs the call connected to an agent",
                detail="call connect_to_agent first",
            )
        endpoint = self._target_endpoint(target)
        await rest.remove_channel(bridge_id, [call_id])
        await self.hold(call_id)
        consult_id = f"{call_id}.consult{self._next()}"
        self._tracker.expect(consult_id, call_id, role=LegRole.CONSULT, peer=target)
        self._consults[consult_id] = _Transfer(call_id, target, bridge_id, agents)
        try:
            await rest.originate(
                endpoint, app=self.app, app_args=("consult", call_id), channel_id=consult_id
            )
        except BaseException:
            self._tracker.forget(consult_id)
            transfer = self._consults.pop(consult_id)
            await self._abort_transfer(transfer)
            raise

    async def _complete_transfer(self, consult_id: str) -> None:
        transfer = self._consults.pop(consult_id, None)
        if transfer is None:
            return
        assert self._rest is not None
        await self._rest.add_channel(transfer.bridge_id, [consult_id])
        await self.unhold(transfer.call_id)
        for agent in transfer.agent_ids:
            await self._hangup_quietly(agent)
        await self._rest.add_channel(transfer.bridge_id, [transfer.call_id])
        self._publish(
            CallEvent(
                kind=CallEventKind.TRANSFERRED,
                call_id=transfer.call_id,
                channel=transfer.call_id,
                target=transfer.target,
                detail="attended",
            )
        )

    async def _abort_transfer(self, transfer: _Transfer) -> None:
        if not self._tracker.is_live(transfer.call_id):
            return
        log.warning("attended transfer of %s: consult leg not answered", transfer.call_id)
        with contextlib.suppress(TelephonyError):
            await self.unhold(transfer.call_id)
        assert self._rest is not None
        with contextlib.suppress(TelephonyError):
            await self._rest.add_channel(transfer.bridge_id, [transfer.call_id])

    async def hold(self, call_id: str) -> None:
        rest = self._rest_or_raise()
        self._require_call(call_id)
        await rest.start_moh(call_id, self.moh_class)
        self._publish(CallEvent(kind=CallEventKind.HELD, call_id=call_id, channel=call_id))

    async def unhold(self, call_id: str) -> None:
        rest = self._rest_or_raise()
        self._require_call(call_id)
        await rest.stop_moh(call_id)
        self._publish(CallEvent(kind=CallEventKind.UNHELD, call_id=call_id, channel=call_id))

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
