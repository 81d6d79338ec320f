"""`IvrApp`: IVR flows on Asterisk through an ARI Stasis application.

One `IvrApp` owns the app's event WebSocket and a TaskGroup with one task per call, each
running a `SessionRunner` over an `AriCallChannel`. Shutdown is cancellation of `run()`.

A call enters the app (StasisStart) from the dialplan, e.g. `Stasis(paceline-ivr)` for an
inbound number, or `Stasis(paceline-ivr,ivr,payment)` to send an agent's caller into a flow:
- the flow: StasisStart args `[flow]` or `["ivr", flow]`; else the route of the dialled
  number (`channel.dialplan.exten`); else the route "default". A call with no flow is hung up.
- variables: `ani` (caller number), `dnid`, `language` (the channel's language when it
  is one of the flow's `languages`, else the flow's default), `channel_id`, `call_id` (both the
  channel id), `campaign` "", `contact_id` None; each of the flow's `inputs` from the channel
  variable `PACELINE_<INPUT>` when the channel has it (so `PACELINE_LANGUAGE` wins when the
  flow lists `language` in its inputs).
- the channel is answered; with `record_calls` a recording `paceline-ivr-<channel id>` starts
  before the first prompt (and `set_secure` pauses it while card digits are keyed).

The call recording is made on a snoop channel, not on the caller's: a channel recording runs
on the channel's Stasis command queue (res_stasis_recording's record_file) and holds it until
it ends, so the caller would hear none of the prompts played after it. The app creates
`POST /channels/{id}/snoop?spy=both&app=<app>&appArgs=ivr-snoop&snoopId=<id>.snoop`, waits
for the snoop channel's StasisStart (args `ivr-snoop`, never a session), and records that
channel. The recording covers the flow: the snoop channel is hung up when the session ends
(a transfer too; it also dies with the caller). A flow's `record` node records the caller's
channel itself (a message, while no prompt plays).

Events in: ChannelDtmfReceived -> Dtmf, PlaybackFinished -> PlaybackFinished,
RecordingFinished / RecordingFailed -> RecordingFinished (flow recordings only),
StasisEnd / ChannelDestroyed -> CallerHangup. Commands out: `POST /channels/{id}/play` with
the session's playbackId; `DELETE /playbacks/{id}` (a 404, the playback already over as in
capture 12b, is fine); `POST /channels/{id}/record`; `POST /channels/{id}/snoop`;
`POST|DELETE /recordings/live/{name}/pause` on every live recording of the call for secure
mode; `DELETE /channels/{id}` to hang up.

Transfers: `queue` sets `PACELINE_<KEY>` channel variables for the attached data and
`continue`s into context `paceline-queue`, extension = the queue; `external` the same into
`paceline-external`, extension = the number; `group` asks the `AgentPicker` for an endpoint,
plays music on hold, originates the agent into this app (`<channel id>.agent<n>`, the data as
`PACELINE_*` variables on that leg too), and once it answers bridges both in
`<channel id>.bridge`; when either side later hangs up, the other is hung up and the bridge
destroyed. A session that ends other than by a transfer hangs the channel up, and so does
stopping the app (cancelling `run()`) for every call still in a flow.

Link loss: the WebSocket is reopened with backoff, then `GET /channels` ends the sessions whose
channel vanished meanwhile (CallerHangup). `ApplicationReplaced` and a refused login end
`run()` with that error.

PCI: event bodies are never logged (they carry the digits); logs name event types, channel ids
and counts. See `ivr.runner` for the masking of `on_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import aiohttp

from cti.ari.errors import Conflict, NotFound
from cti.ari.rest import AriRestClient
from cti.ari.telephony import ApplicationReplaced
from cti.ari.ws import AriEvent, AriEventDecoder, close_quietly, open_event_socket
from cti.interface import AuthenticationFailed, BackendUnavailable, TelephonyError
from cti.redact import describe_exception
from ivr.model import Flow
from ivr.protocol import CallerHangup, Dtmf, Event, Finished, PlaybackFinished, RecordingFinished
from ivr.runner import ChannelGone, InterpreterSession, Services, SessionRunner

log = logging.getLogger(__name__)

#: Dialplan contexts a queue / external transfer continues into (extension: queue / number).
QUEUE_CONTEXT = "paceline-queue"
EXTERNAL_CONTEXT = "paceline-external"
#: StasisStart args of the agent legs this app originates (never an IVR session).
AGENT_LEG_ARG = "ivr-agent"
#: StasisStart args of the snoop channel the call recording is made on (never a session).
SNOOP_ARG = "ivr-snoop"
#: How long the call waits for its snoop channel to enter the app before it gives up.
SNOOP_START_TIMEOUT_S = 2.0
#: How long `set_secure` waits for a just-started recording to be recording (pausable).
RECORDING_START_TIMEOUT_S = 2.0
DTMF_DIGITS = frozenset("0123456789*#ABCD")

AppEventHandler = Callable[[str, str, Mapping[str, Any]], None]
"""`(channel_id, kind, detail)`: the runner's `on_event`, with the call it is about."""


class AgentPicker(Protocol):
    async def pick(self, group: str) -> str | None:
        """An endpoint (`PJSIP/agent7`, `Local/1001@agents`) of a free agent of `group`."""
        ...


class SessionFactory(Protocol):
    def __call__(
        self, flow: Flow, *, session_id: str, variables: dict[str, Any], today: date
    ) -> InterpreterSession: ...


def interpreter_session(
    flow: Flow, *, session_id: str, variables: dict[str, Any], today: date
) -> InterpreterSession:
    """The default `SessionFactory`: `ivr.interpreter.Session`."""
    from ivr.interpreter import Session  # the driver needs it only once a call comes

    return Session(flow, session_id=session_id, variables=variables, today=today)


class TransferFailed(TelephonyError):
    """A transfer that could not be made (the flow takes its `failed` route)."""


def channel_variable_name(key: str) -> str:
    """`contact_id` -> `PACELINE_CONTACT_ID`: the name attached data travels under."""
    return "PACELINE_" + re.sub(r"[^A-Za-z0-9_]", "_", key).upper()


def _target_channel(obj: Any) -> str:
    """The channel id of a playback's or recording's `target_uri` ("" for a bridge)."""
    uri = obj.get("target_uri", "") if isinstance(obj, Mapping) else ""
    kind, _, ident = str(uri).partition(":")
    return ident if kind == "channel" else ""


@dataclass(eq=False)
class _Recording:
    name: str
    started: asyncio.Future[bool]


class AriCallChannel:
    """One call in the app, as a `ivr.runner.CallChannel`."""

    def __init__(self, app: IvrApp, channel_id: str, ani: str) -> None:
        self._app = app
        self._rest = app.rest
        self.channel_id = channel_id
        self.ani = ani
        self.recordings: dict[str, _Recording] = {}  # live recordings of this channel
        self.call_recording = ""
        self.snoop_id = ""  # the snoop channel the call recording is made on
        self.leaving = False  # sent on into the dialplan: its StasisEnd is not a hang-up
        self.transferred = False
        self.hung_up = False

    async def _on_channel(self, op: Callable[[], Any]) -> Any:
        try:
            return await op()
        except (NotFound, Conflict) as exc:  # channel gone, or no longer in our app
            raise ChannelGone(str(exc)) from None

    async def answer(self) -> None:
        await self._on_channel(lambda: self._rest.answer(self.channel_id))

    async def play(self, playback_id: str, media: tuple[str, ...], language: str) -> None:
        await self._on_channel(
            lambda: self._rest.play(
                self.channel_id, list(media), playback_id=playback_id, lang=language
            )
        )

    async def stop_playback(self, playback_id: str) -> None:
        with contextlib.suppress(NotFound):  # it ended on its own meanwhile (capture 12b)
            await self._rest.stop_playback(playback_id)

    async def transfer(self, kind: str, target: str, data: Mapping[str, str]) -> None:
        if kind == "group":
            await self._app.bridge_to_agent(self, target, data)
            self.transferred = True
            return
        context = QUEUE_CONTEXT if kind == "queue" else EXTERNAL_CONTEXT
        for key, value in data.items():
            await self._rest.set_variable(self.channel_id, channel_variable_name(key), value)
        self.leaving = True
        try:
            await self._rest.continue_in_dialplan(
                self.channel_id, context=context, extension=target, priority=1
            )
        except BaseException:
            self.leaving = False
            raise
        self.transferred = True

    async def start_recording(self, name: str, max_s: float, finish_key: str) -> None:
        await self.record(name, max_s=max_s, finish_key=finish_key)

    async def record(
        self, name: str, *, max_s: float = 0.0, finish_key: str = "", target: str = ""
    ) -> _Recording:
        """Record `target` (a channel of this call: the caller's by default, or its snoop)."""
        rec = _Recording(name, asyncio.get_running_loop().create_future())
        self.recordings[name] = rec
        try:
            await self._on_channel(
                lambda: self._rest.record(
                    target or self.channel_id,
                    name,
                    max_duration_s=int(max_s) or None,
                    terminate_on=finish_key if finish_key in ("*", "#") else None,
                    if_exists="overwrite",
                )
            )
        except BaseException:
            self.recordings.pop(name, None)
            raise
        return rec

    async def stop_recording(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self._rest.stop_recording(name)

    async def set_secure(self, on: bool) -> None:
        """Pause (resume) every live recording of the call. A recording that cannot be paused
        raises: the runner then ends the call rather than record card digits."""
        for rec in list(self.recordings.values()):
            if not rec.started.done():
                async with asyncio.timeout(RECORDING_START_TIMEOUT_S):
                    await asyncio.shield(rec.started)
            if not rec.started.result():
                continue  # it failed to start: nothing is recorded
            try:
                if on:
                    await self._rest.pause_recording(rec.name)
                else:
                    await self._rest.unpause_recording(rec.name)
            except NotFound:
                self.recordings.pop(rec.name, None)  # it ended meanwhile

    def recording_event(self, kind: str, name: str) -> None:
        rec = self.recordings.get(name)
        if rec is None:
            return
        if kind == "RecordingStarted":
            if not rec.started.done():
                rec.started.set_result(True)
            return
        del self.recordings[name]
        if not rec.started.done():
            rec.started.set_result(False)

    async def hangup(self, cause: int) -> None:
        self.hung_up = True
        with contextlib.suppress(NotFound):
            await self._rest.hangup(self.channel_id, cause)


@dataclass(eq=False)
class _Call:
    channel: AriCallChannel
    runner: SessionRunner | None = None
    pending: list[Event] = field(default_factory=list)
    gone: bool = False

    def feed(self, event: Event) -> None:
        if isinstance(event, CallerHangup):
            if self.gone:
                return
            self.gone = True
        if self.runner is None:
            self.pending.append(event)
        else:
            self.runner.feed(event)


class IvrApp:
    """The IVR's Stasis application `app`: see the module docstring.

    `rest` and `session` talk to the same Asterisk (`session` opens the event WebSocket at
    `rest.base_url/events`, so it carries the credentials). `flows` by name; `routes` maps a
    dialled number (or "default") to a flow name. `agents` picks agents for `group`
    transfers (none: such a transfer fails). `session_factory` builds the interpreter (tests
    and the bench swap it). `on_event(channel_id, kind, detail)` sees what each session
    emits (`ivr.runner`), digits masked in secure mode.
    """

    def __init__(
        self,
        rest: AriRestClient,
        session: aiohttp.ClientSession,
        app: str,
        flows: Mapping[str, Flow],
        routes: Mapping[str, str],
        services: Services,
        *,
        record_calls: bool = False,
        on_event: AppEventHandler | None = None,
        agents: AgentPicker | None = None,
        session_factory: SessionFactory = interpreter_session,
        today: Callable[[], date] = date.today,
        agent_timeout_s: float = 30.0,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.rest = rest
        self._session = session
        self.app = app
        self.flows = dict(flows)
        self.routes = dict(routes)
        self.services = services
        self.record_calls = record_calls
        self.agents = agents
        self.agent_timeout_s = agent_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self._on_event = on_event
        self._session_factory = session_factory
        self._today = today
        self._decoder = AriEventDecoder()
        self._tg: asyncio.TaskGroup | None = None
        self._calls: dict[str, _Call] = {}
        self._agent_legs: dict[str, asyncio.Future[bool]] = {}
        self._bridged: dict[str, tuple[str, str]] = {}  # channel -> (other channel, bridge)
        self._snoops: dict[str, str] = {}  # snoop channel -> the call's channel
        self._snoop_ready: dict[str, asyncio.Future[bool]] = {}  # snoop -> in the app
        self._seq = 0
        #: set while the event WebSocket is open (tests wait on it before placing calls)
        self.connected = asyncio.Event()

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def runner(self, channel_id: str) -> SessionRunner | None:
        """The session of a call the app still holds (None once it has let the call go)."""
        call = self._calls.get(channel_id)
        return None if call is None else call.runner

    def holds(self, channel_id: str) -> bool:
        """True while the app still has the call (its session, or its transfer bridge)."""
        return channel_id in self._calls

    # ----- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        """Serve calls until cancelled; raises on a fatal link error (see the docstring)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                await self._read_events()
            finally:
                self._tg = None
                self.connected.clear()
                await self._hang_up_sessions()

    async def _hang_up_sessions(self) -> None:
        """On shutdown: a caller mid-flow would hear silence in a Stasis app nobody serves
        (no session survives a restart), so the calls still in a flow are hung up. Calls
        already handed to an agent stay bridged."""
        live = [c for c, call in self._calls.items() if not call.channel.transferred]
        if not live:
            return
        log.info("IVR stopping: hanging up %d call(s) in a flow", len(live))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(
                    *(self._hangup_quietly(c) for c in live), return_exceptions=True
                )

    def _spawn(self, what: str, fn: Callable[[], Any]) -> None:
        """`fn()` as a task of `run()`'s TaskGroup; its failure is logged, never raised."""
        if self._tg is None:
            return

        async def guarded() -> None:
            try:
                await fn()
            except Exception as exc:
                log.error("IVR %s failed: %s", what, describe_exception(exc))

        self._tg.create_task(guarded())

    async def _read_events(self) -> None:
        delay = self.reconnect_initial_s
        first = True
        while True:
            try:
                ws = await open_event_socket(self._session, self.rest.base_url, self.app)
            except BackendUnavailable as exc:
                log.warning("IVR event link: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            delay = self.reconnect_initial_s
            try:
                if not first:
                    await self._resync()
                first = False
                self.connected.set()
                await self._pump(ws)
            except (ApplicationReplaced, AuthenticationFailed):
                raise
            except (TelephonyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("IVR event link failed: %s", describe_exception(exc))
            finally:
                self.connected.clear()
                await close_quietly(ws)
            log.warning("IVR event link lost; reconnecting")

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            event = self._decoder.decode(msg.data)
            if event is None:
                continue
            if event.type == "ApplicationReplaced":
                raise ApplicationReplaced(
                    f"another ARI client registered application {self.app!r}; the IVR stops",
                    detail="run one IVR per ARI app name",
                )
            try:
                self._handle_event(event)
            except Exception as exc:  # one bad event must not stop the others
                log.error("IVR %s event dropped: %s", event.type, describe_exception(exc))

    async def _resync(self) -> None:
        """After a reconnect: calls whose channel vanished meanwhile have hung up."""
        live = {str(c.get("id")) for c in await self.rest.list_channels()}
        for channel_id, call in list(self._calls.items()):
            if channel_id not in live:
                call.feed(CallerHangup())
        for channel_id in [c for c in self._bridged if c not in live]:
            self._unbridge(channel_id)

    # ----- events ------------------------------------------------------------------------
    def _handle_event(self, event: AriEvent) -> None:
        kind = event.type
        data = event.data
        if kind.startswith("Playback"):
            call = self._calls.get(_target_channel(data.get("playback")))
            if call is not None and kind == "PlaybackFinished":
                call.feed(PlaybackFinished(str(data["playback"]["id"])))
            return
        if kind.startswith("Recording"):
            self._on_recording(kind, data.get("recording"))
            return
        channel_id = event.channel_id
        if kind == "StasisStart":
            self._on_stasis_start(channel_id, data)
            return
        leg = self._agent_legs.get(channel_id)
        if leg is not None and kind in ("StasisEnd", "ChannelDestroyed") and not leg.done():
            leg.set_result(False)
        snoop = self._snoop_ready.get(channel_id)
        if snoop is not None and kind in ("StasisEnd", "ChannelDestroyed") and not snoop.done():
            snoop.set_result(False)
        if channel_id in self._bridged and kind in ("StasisEnd", "ChannelDestroyed"):
            self._unbridge(channel_id)
        call = self._calls.get(channel_id)
        if call is None:
            return
        if kind == "ChannelDtmfReceived":
            digit = str(data.get("digit", ""))
            if digit in DTMF_DIGITS:
                call.feed(Dtmf(digit))
        elif (kind == "StasisEnd" and not call.channel.leaving) or kind == "ChannelDestroyed":
            call.feed(CallerHangup())

    def _on_recording(self, kind: str, recording: Any) -> None:
        target = _target_channel(recording)
        call = self._calls.get(self._snoops.get(target, target))
        if call is None or not isinstance(recording, Mapping):
            return
        name = str(recording.get("name", ""))
        call.channel.recording_event(kind, name)
        if kind in ("RecordingFinished", "RecordingFailed") and name != (
            call.channel.call_recording
        ):
            call.feed(RecordingFinished(name))

    def _on_stasis_start(self, channel_id: str, data: Mapping[str, Any]) -> None:
        leg = self._agent_legs.get(channel_id)
        if leg is None:
            leg = self._snoop_ready.get(channel_id)  # the snoop a call recording waits for
        if leg is not None:
            if not leg.done():
                leg.set_result(True)
            return
        args = [str(a) for a in data.get("args") or []]
        if channel_id in self._calls or args[:1] in ([AGENT_LEG_ARG], [SNOOP_ARG]):
            return  # an agent leg that answered too late is hung up by its transfer
        chan = data.get("channel") or {}
        dnid = str((chan.get("dialplan") or {}).get("exten", ""))
        ani = str((chan.get("caller") or {}).get("number", ""))
        flow_name = self._pick_flow(args, dnid)
        flow = self.flows.get(flow_name or "")
        if flow is None:
            log.warning(
                "IVR call %s to %s: no flow (%r); hanging up", channel_id, dnid, flow_name
            )
            self._spawn(f"hangup of {channel_id}", lambda: self._hangup_quietly(channel_id))
            return
        call = _Call(AriCallChannel(self, channel_id, ani))
        self._calls[channel_id] = call
        log.info("IVR call %s to %s: flow %s", channel_id, dnid, flow.name)
        self._spawn(
            f"call {channel_id}",
            lambda: self._run_call(
                call, flow, dnid, str(chan.get("state", "")), str(chan.get("language") or "")
            ),
        )

    def _pick_flow(self, args: list[str], dnid: str) -> str | None:
        if len(args) >= 2 and args[0] == "ivr":
            return args[1]
        if len(args) == 1 and args[0] in self.flows:
            return args[0]
        return self.routes.get(dnid) or self.routes.get("default")

    # ----- one call ----------------------------------------------------------------------
    async def _run_call(
        self, call: _Call, flow: Flow, dnid: str, state: str, language: str
    ) -> None:
        channel = call.channel
        channel_id = channel.channel_id
        try:
            if state != "Up":
                await channel.answer()
            variables = await self._variables(flow, channel_id, channel.ani, dnid, language)
            if self.record_calls:
                await self._record_call(channel)
            session = self._session_factory(
                flow, session_id=channel_id, variables=variables, today=self._today()
            )
            runner = SessionRunner(
                session, channel, self.services, flow_name=flow.name, ani=channel.ani,
                session_id=channel_id, on_event=self._event_sink(channel_id),
            )
            call.runner = runner
            for event in call.pending:
                runner.feed(event)
            call.pending.clear()
            finished = await runner.run()
        except ChannelGone:
            finished = Finished("caller_hangup", "")
        except Exception as exc:
            log.error("IVR call %s failed: %s", channel_id, describe_exception(exc))
            finished = Finished("error", "")
        finally:
            self._calls.pop(channel_id, None)
            self._snoops.pop(channel.snoop_id, None)
        log.info("IVR call %s ended: %s at %r", channel_id, finished.reason, finished.node)
        if channel.snoop_id:
            try:  # ends the call recording (it dies with the caller anyway)
                await self._hangup_quietly(channel.snoop_id)
            except TelephonyError as exc:
                log.warning("IVR call %s: snoop hang-up failed: %s", channel_id,
                            describe_exception(exc))
        if not channel.transferred and not channel.hung_up and not call.gone:
            await channel.hangup(16)

    async def _record_call(self, channel: AriCallChannel) -> None:
        """Start the call recording on a snoop channel of the call (the module docstring):
        recording the caller's channel itself would hold back every prompt until it ends."""
        snoop_id = f"{channel.channel_id}.snoop"
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._snoop_ready[snoop_id] = ready
        self._snoops[snoop_id] = channel.channel_id
        channel.snoop_id = snoop_id
        try:
            await channel._on_channel(
                lambda: self.rest.snoop(
                    channel.channel_id, app=self.app, app_args=[SNOOP_ARG], spy="both",
                    snoop_id=snoop_id,
                )
            )
            async with asyncio.timeout(SNOOP_START_TIMEOUT_S):
                if not await ready:
                    raise ChannelGone(f"snoop channel {snoop_id} ended before it was recorded")
        finally:
            self._snoop_ready.pop(snoop_id, None)
        channel.call_recording = f"paceline-ivr-{channel.channel_id}"
        await channel.record(channel.call_recording, target=snoop_id)

    async def _variables(
        self, flow: Flow, channel_id: str, ani: str, dnid: str, language: str
    ) -> dict[str, Any]:
        """The session's first variables. `language`: the channel's (CHANNEL(language), from
        the endpoint or trunk), used when it is one of the flow's `languages`."""
        if language not in flow.languages:
            language = flow.default_language
        variables: dict[str, Any] = {
            "ani": ani, "dnid": dnid, "language": language,
            "channel_id": channel_id, "call_id": channel_id, "campaign": "", "contact_id": None,
        }
        for name in flow.inputs:
            try:
                variables[name] = await self.rest.get_variable(
                    channel_id, channel_variable_name(name)
                )
            except NotFound:
                continue  # not set on this channel (variables named in the flow decide)
        return variables

    def _event_sink(self, channel_id: str) -> Callable[[str, Mapping[str, Any]], None]:
        def sink(kind: str, detail: Mapping[str, Any]) -> None:
            if self._on_event is not None:
                self._on_event(channel_id, kind, detail)

        return sink

    async def _hangup_quietly(self, channel_id: str, cause: int = 16) -> None:
        with contextlib.suppress(NotFound):
            await self.rest.hangup(channel_id, cause)

    # ----- group transfer ----------------------------------------------------------------
    async def bridge_to_agent(
        self, call: AriCallChannel, group: str, data: Mapping[str, str]
    ) -> None:
        """Connect `call` to an agent of `group` (see the module docstring); raises
        `TransferFailed` (or an ARI error) when no agent was connected, with the agent leg
        hung up, the bridge destroyed and the caller's music stopped."""
        if self.agents is None:
            raise TransferFailed("no agent picker configured for group transfers")
        endpoint = await self.agents.pick(group)
        if endpoint is None:
            raise TransferFailed(f"no agent available in group {group!r}")
        self._seq += 1
        customer = call.channel_id
        agent_id = f"{customer}.agent{self._seq}"
        bridge_id = f"{customer}.bridge"
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._agent_legs[agent_id] = answered
        variables = {channel_variable_name(k): v for k, v in data.items()}
        for name, value in variables.items():
            await self.rest.set_variable(customer, name, value)
        await self.rest.start_moh(customer)
        try:
            await self.rest.originate(
                endpoint, app=self.app, app_args=[AGENT_LEG_ARG], channel_id=agent_id,
                caller_id=call.ani or None, timeout_s=int(self.agent_timeout_s),
                variables=variables,
            )
            async with asyncio.timeout(self.agent_timeout_s):
                if not await answered:
                    raise TransferFailed(f"the agent of group {group!r} did not answer")
            await self.rest.create_bridge(bridge_id=bridge_id)
            await self.rest.stop_moh(customer)
            await self.rest.add_channel(bridge_id, [customer, agent_id])
        except BaseException:
            await self._undo_transfer(customer, agent_id, bridge_id)
            raise
        finally:
            self._agent_legs.pop(agent_id, None)
        self._bridged[customer] = (agent_id, bridge_id)
        self._bridged[agent_id] = (customer, bridge_id)

    async def _undo_transfer(self, customer: str, agent_id: str, bridge_id: str) -> None:
        with contextlib.suppress(TelephonyError):
            await self._hangup_quietly(agent_id)
        with contextlib.suppress(TelephonyError):
            await self.rest.destroy_bridge(bridge_id)
        with contextlib.suppress(TelephonyError):
            await self.rest.stop_moh(customer)

    def _unbridge(self, channel_id: str) -> None:
        """One side of a transferred call ended: end the other and the bridge."""
        other, bridge_id = self._bridged.pop(channel_id)
        self._bridged.pop(other, None)

        async def end() -> None:
            await self._hangup_quietly(other)
            with contextlib.suppress(NotFound):
                await self.rest.destroy_bridge(bridge_id)

        self._spawn(f"end of transferred call {channel_id}", end)
