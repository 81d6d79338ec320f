"""`AmiTelephony`: the `cti.interface.Telephony` backend over AMI.

It steers calls only with Originate, Setvar + Redirect, Hangup, BlindTransfer, Atxfer, Bridge
and PlayDTMF, into the dialplan contexts of `docker/asterisk/extensions_paceline.conf`:

- originate: `Context=paceline-outbound` with `ChannelId=<call id>`, so the root channel's
  Uniqueid is the dialer's call id, and a replayed Originate could not create a second call;
- connect_to_agent: `Setvar PACELINE_AGENT` then `Redirect` to `paceline-agent` (a `Dial()`);
- play_and_hangup: `Setvar PACELINE_SOUND` then `Redirect` to `paceline-abandon`;
- hold: `Redirect` the customer to `paceline-hold` (music on hold) and, as `ExtraChannel`,
  the agent leg to `paceline-park`; unhold: the `Bridge` action joins them again;
- send_to_ivr: `Setvar PACELINE_<NAME>` for each of the flow's inputs and
  `PACELINE_IVR_APP=<ivr_app>`, then `Redirect` to `paceline-ivr-outbound` with the flow's
  name as the extension (its `Stasis(${PACELINE_IVR_APP},${EXTEN})`);
- blind/attended transfer: `BlindTransfer` / `Atxfer` on the agent leg, into
  `paceline-transfer`; an attended transfer completes when the consult target is bridged with
  the agent, by hanging up the agent leg (Asterisk then joins customer and target).

Connection lifecycle. `__aenter__` connects and logs in (a bad secret raises
`AuthenticationFailed` at once; it is never retried). A supervisor task, owned by this object's
TaskGroup, then reads the link. When the link drops it emits `BACKEND_DOWN` (and `connected`
turns False, so `originate` raises `BackendUnavailable` instead of dialing blind), reconnects
with exponential backoff, resynchronizes the live channels with `CoreShowChannels` (every call
that ended meanwhile gets its HANGUP), and emits `BACKEND_UP`. `__aexit__` stops it all.

Contract for originate: if `originate()` returns, the call gets exactly one HANGUP event later,
even if the link drops before Asterisk's reply (the resync decides). If it raises, nothing was
dialed. `adopt()` takes over the calls of a process that died (see `Telephony.adopt` and
docs/cti.md, "Adopting calls after a restart"); each returned call gets its one HANGUP too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Self

from cti.ami.client import ActionFailed, AmiConnection, AmiCredentials, ReplyLost, ReplyTimeout
from cti.ami.framing import AmiMessage
from cti.ami.tracker import ChannelTracker
from cti.events import CallEvent, CallEventKind
from cti.interface import (
    AuthenticationFailed,
    BackendUnavailable,
    OriginateRequest,
    TelephonyError,
    UnknownCall,
)

log = logging.getLogger(__name__)

#: How long after its ring time an originate may go without any channel before it is ended.
ORIGINATE_MARGIN_S = 60.0

#: `OriginateRequest.call_id` and variable names: both end up in places where anything else
#: would be misread (a ChannelId, a `Variable: KEY=value` header that Asterisk splits on commas).
_CALL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_NO_CHANNEL_MESSAGES = ("no such channel", "channel not found", "does not exist")

#: Where send_to_ivr redirects a call (extension = the flow). Not a constructor parameter:
#: its extension is the flow, matched by the pattern `_[a-z].` of extensions_paceline.conf.
IVR_CONTEXT = "paceline-ivr-outbound"
#: A flow name the pattern `_[a-z].` matches and a `Redirect` header can carry.
_FLOW = re.compile(r"[a-z][A-Za-z0-9_.-]+")


class AmiTelephony:
    """Telephony over one Asterisk manager connection. See the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        connect_timeout: float = 5.0,
        action_timeout: float = 10.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        transfer_timeout: float = 30.0,
        outbound_context: str = "paceline-outbound",
        agent_context: str = "paceline-agent",
        abandon_context: str = "paceline-abandon",
        hold_context: str = "paceline-hold",
        park_context: str = "paceline-park",
        transfer_context: str = "paceline-transfer",
        ivr_app: str = "paceline-ivr",
    ) -> None:
        self._host = host
        self._port = port
        self._credentials = AmiCredentials(username, secret)
        self._connect_timeout = connect_timeout
        self._action_timeout = action_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._transfer_timeout = transfer_timeout
        self._ctx_outbound = outbound_context
        self._ctx_agent = agent_context
        self._ctx_abandon = abandon_context
        self._ctx_hold = hold_context
        self._ctx_park = park_context
        self._ctx_transfer = transfer_context
        self.ivr_app = ivr_app
        self.tracker = ChannelTracker()
        self._queue: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self._conn: AmiConnection | None = None
        self._synced = False
        self._closing = False
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._held: dict[str, str] = {}
        self.reconnects = 0
        #: AMI events received (every event, including those that concern no call of ours).
        self.ami_events = 0
        self.fatal: TelephonyError | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        conn = await self._open()  # AuthenticationFailed / BackendUnavailable reach the caller
        ready = asyncio.Event()
        # The supervisor belongs to this object, not to the caller's task: a TaskGroup entered
        # here would cancel the caller's own task if the supervisor ever failed. Its shutdown
        # path is __aexit__; `_supervisor_done` reports a crash on the event stream.
        self._supervisor = asyncio.create_task(self._supervise(conn, ready), name="ami-supervisor")
        self._supervisor.add_done_callback(self._supervisor_done)
        ready_wait = asyncio.ensure_future(ready.wait())
        done, _ = await asyncio.wait(
            [self._supervisor, ready_wait], return_when=asyncio.FIRST_COMPLETED
        )
        ready_wait.cancel()
        if self._supervisor in done and self.fatal is None:
            self.fatal = BackendUnavailable("AMI supervisor stopped during start")
        if self.fatal is not None:
            await self.__aexit__(None, None, None)
            raise self.fatal
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._conn is not None:
            await self._conn.close()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._queue.put_nowait(None)

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        if exc is not None:
            log.error("AMI supervisor crashed", exc_info=exc)
            self.fatal = BackendUnavailable("AMI supervisor crashed", detail=repr(exc))
            self._synced = False
            self._emit(CallEventKind.BACKEND_DOWN, f"fatal: {self.fatal}")

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and self._synced

    async def events(self) -> AsyncIterator[CallEvent]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    # ---- the link ----------------------------------------------------------------------
    async def _open(self) -> AmiConnection:
        return await AmiConnection.open(
            self._host,
            self._port,
            self._credentials,
            on_event=self._on_event,
            timeout=self._connect_timeout,
        )

    def _on_event(self, message: AmiMessage) -> None:
        self.ami_events += 1
        self._publish(self.tracker.feed(message))

    def _publish(self, events: Iterable[CallEvent]) -> None:
        """Tracker output onto the event stream; wakes the commands waiting on the tracker."""
        for event in events:
            if event.kind is CallEventKind.HANGUP:
                self._held.pop(event.call_id, None)
            self._queue.put_nowait(event)
        if self._waiters:
            for predicate, future in list(self._waiters):
                if not future.done() and predicate():
                    future.set_result(None)

    def _emit(self, kind: CallEventKind, detail: str = "") -> None:
        self._queue.put_nowait(CallEvent(kind=kind, call_id="", detail=detail))

    async def _supervise(self, conn: AmiConnection, ready: asyncio.Event) -> None:
        while not self._closing:
            self._conn = conn
            try:
                await self._session(conn, ready)
            except Exception:
                # A bug in event handling must cost one connection, not the whole bridge.
                log.exception("AMI session failed; reconnecting")
                await conn.close()
            self._synced = False
            if self._closing or self.fatal is not None:
                return
            self._emit(CallEventKind.BACKEND_DOWN, "AMI link lost")
            log.warning("AMI link to %s:%s lost; reconnecting", self._host, self._port)
            reconnected = await self._reconnect()
            if reconnected is None:
                return
            conn = reconnected
            self.reconnects += 1

    async def _reconnect(self) -> AmiConnection | None:
        delay = self._backoff_initial
        while not self._closing:
            try:
                return await self._open()
            except AuthenticationFailed as exc:
                # Final: the secret changed under us. Stop, and say so on the event stream.
                self.fatal = exc
                log.error("AMI login refused on reconnect: %s", exc)
                self._emit(CallEventKind.BACKEND_DOWN, f"fatal: {exc}")
                return None
            except (BackendUnavailable, OSError) as exc:
                if self._closing:
                    # Closed meanwhile: on 3.11 `wait_for` in the login may have swallowed
                    # the cancellation (its inner task failed at the same moment).
                    return None
                log.info("AMI reconnect failed (%s); next try in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)
        return None

    async def _session(self, conn: AmiConnection, ready: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(conn.run(), name="ami-reader")
            watchdog = tg.create_task(self._watchdog(), name="ami-watchdog")
            try:
                self.tracker.begin_resync()
                items = await conn.list_action("CoreShowChannels", timeout=self._action_timeout)
                for event in self.tracker.resync(items):
                    self._queue.put_nowait(event)
                self._synced = True
                self._emit(CallEventKind.BACKEND_UP)
            except ActionFailed as exc:
                # Asterisk refused CoreShowChannels: the AMI user lacks read permission for
                # `reporting`/`system`. Reconnecting cannot fix that.
                self.fatal = exc
                log.error("AMI resync refused: %s", exc)
                self._emit(CallEventKind.BACKEND_DOWN, f"fatal: {exc}")
                await conn.close()
            except TelephonyError as exc:
                log.warning("AMI resync failed: %s", exc)
                await conn.close()
            finally:
                ready.set()
            await reader
            watchdog.cancel()

    async def _watchdog(self) -> None:
        """End originates whose channel never appeared (the PBX lost or never ran them)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            for event in self.tracker.expire(loop.time()):
                self._queue.put_nowait(event)

    def _require_link(self) -> AmiConnection:
        conn = self._conn
        if conn is None or conn.closed or not self._synced:
            if self.fatal is not None:
                raise BackendUnavailable("AMI backend stopped", detail=str(self.fatal))
            raise BackendUnavailable("AMI link is down")
        return conn

    def _root(self, call_id: str) -> str:
        channel = self.tracker.channel_of(call_id)
        if channel is None:
            raise UnknownCall(f"no live call {call_id!r}")
        return channel

    def _agent_leg(self, call_id: str) -> str:
        self._root(call_id)
        peer = self.tracker.peer_of(call_id) or self._held.get(call_id)
        if peer is None:
            raise TelephonyError(f"call {call_id!r} is not connected to an agent")
        return peer

    async def _act(self, action: str, *fields: tuple[str, str], call_id: str = "") -> AmiMessage:
        conn = self._require_link()
        try:
            return await conn.action(action, fields, timeout=self._action_timeout)
        except ActionFailed as exc:
            if call_id and any(m in exc.detail.lower() for m in _NO_CHANNEL_MESSAGES):
                raise UnknownCall(f"call {call_id!r} has no channel", detail=exc.detail) from exc
            raise

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds after some event, at most `timeout` seconds."""
        if predicate():
            return True
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)
        return True

    # ---- commands ----------------------------------------------------------------------
    @staticmethod
    def _dial_string(endpoint: str) -> str:
        """A Local endpoint gets the `n` option. Without it Asterisk optimizes the Local pair
        out of the path once both sides are bridged: the `;1`/`;2` halves hang up while the
        customer talks on, and the call would look ended."""
        if not endpoint.startswith("Local/"):
            return endpoint
        target, slash, options = endpoint.partition("/")[2].partition("/")
        if slash and "n" in options:
            return endpoint
        return f"Local/{target}/{options}n"

    @staticmethod
    def _validate(request: OriginateRequest) -> None:
        if not _CALL_ID.fullmatch(request.call_id):
            raise ValueError(f"call_id {request.call_id!r}: 1-64 characters of [A-Za-z0-9._-]")
        for key, value in request.variables.items():
            if not _VAR_NAME.fullmatch(key):
                raise ValueError(f"channel variable name {key!r}: letters, digits and _ only")
            if "," in value or '"' in value:
                # Asterisk splits `Variable:` on commas: "x,PACELINE_AMD=0" would set two.
                raise ValueError(f'channel variable {key}: value must not contain , or "')

    async def originate(self, request: OriginateRequest) -> None:
        self._validate(request)
        conn = self._require_link()
        if self.tracker.is_live(request.call_id):
            raise TelephonyError(f"call id {request.call_id!r} is already in progress")
        action_id = conn.next_action_id()
        fields: list[tuple[str, str]] = [
            ("Channel", self._dial_string(request.endpoint)),
            ("Context", request.context or self._ctx_outbound),
            ("Exten", request.extension),
            ("Priority", "1"),
            ("Timeout", str(round(request.ring_timeout_s * 1000))),
        ]
        if request.caller_id:
            fields.append(("CallerID", request.caller_id))
        fields.append(("Variable", f"PACELINE_CALL_ID={request.call_id}"))
        fields.append(("Variable", f"PACELINE_AMD={1 if request.amd else 0}"))
        fields += [("Variable", f"{k}={v}") for k, v in request.variables.items()]
        # Always Async (a synchronous Originate blocks the manager session for the whole ring
        # time); ChannelId makes the call's root Uniqueid our call id.
        fields += [
            ("Async", "true"),
            ("ChannelId", request.call_id),
            ("OtherChannelId", f"{request.call_id};2"),
        ]
        # The channel must appear within the ring time plus a margin, or the call is over.
        deadline = asyncio.get_running_loop().time() + request.ring_timeout_s + ORIGINATE_MARGIN_S
        self.tracker.expect_originate(
            request.call_id,
            action_id,
            channel_id=request.call_id,
            dial_string=request.endpoint,
            deadline=deadline,
        )
        try:
            await conn.action(
                "Originate", fields, action_id=action_id, timeout=self._action_timeout
            )
        except (ReplyLost, ReplyTimeout) as exc:
            # Written, reply lost or late: the PBX may be dialing. The channel's events, the
            # resync after a reconnect or the watchdog end the call; it gets its one HANGUP.
            log.warning("Originate %s sent, reply unknown: %s", request.call_id, exc)
        except asyncio.CancelledError:
            raise  # the action was written before the first await: the call stays followed
        except (ActionFailed, BackendUnavailable, TelephonyError):
            # Refused by Asterisk, or never written: nothing was dialed.
            self.tracker.originate_refused(request.call_id)
            raise

    async def adopt(self, call_ids: Collection[str]) -> set[str]:
        """Follow calls an earlier process originated (see `Telephony.adopt`).

        The root of such a call has the call id as its Uniqueid (`ChannelId`), so one
        `CoreShowChannels` finds them all; the tracker learns their `;2` halves, legs and
        bridges from the same listing, exactly as the reconnect resync does. Events of these
        channels that arrive while the listing is on its way are held and replayed after it,
        so none is lost. An answered, unbridged call also gets its AMD verdict read back
        (`Getvar AMDSTATUS`/`AMDCAUSE`): AMD may have finished before the adoption."""
        conn = self._require_link()
        wanted = [c for c in dict.fromkeys(call_ids) if _CALL_ID.fullmatch(c)]
        live = self.tracker.live_calls()
        followed = {c for c in wanted if c in live}
        pending = self.tracker.begin_adopt(wanted)
        if not pending:
            return followed
        try:
            items = await conn.list_action("CoreShowChannels", timeout=self._action_timeout)
        except BaseException as exc:
            self.tracker.cancel_adopt(pending)
            if isinstance(exc, ReplyTimeout):
                raise BackendUnavailable(
                    "AMI CoreShowChannels got no answer; nothing was adopted", detail=str(exc)
                ) from exc
            raise
        adopted, events = self.tracker.finish_adopt(pending, items)
        self._publish(events)
        log.info("adopted %d of %d calls still live on the PBX", len(adopted), len(pending))
        await asyncio.gather(
            *(
                self._read_back_amd(call_id)
                for call_id in sorted(adopted)
                if self.tracker.needs_amd_readback(call_id)
            )
        )
        return followed | adopted

    async def _read_back_amd(self, call_id: str) -> None:
        """The AMD verdict an adopted call got before we followed it (its VarSet events went
        to the earlier process). Nothing when AMD did not run, or has not finished: then its
        VarSet events are still to come."""
        root = self.tracker.channel_of(call_id)
        if root is None:
            return
        try:
            reply = await self._act("Getvar", ("Channel", root), ("Variable", "AMDSTATUS"))
            status = reply.get("Value", "") or ""
            if not status:
                return
            reply = await self._act("Getvar", ("Channel", root), ("Variable", "AMDCAUSE"))
            cause = reply.get("Value", "") or ""
        except TelephonyError as exc:  # hung up meanwhile, or the link dropped: its events say
            log.info("AMD read-back of adopted %s failed: %s", call_id, exc)
            return
        self._publish(self.tracker.note_amd(call_id, status, cause))

    async def hangup(self, call_id: str, cause: int = 16) -> None:
        root = self._root(call_id)
        await self._act("Hangup", ("Channel", root), ("Cause", str(cause)), call_id=call_id)

    async def _setvar_and_redirect(
        self, call_id: str, variable: str, value: str, context: str
    ) -> None:
        root = self._root(call_id)
        await self._act(
            "Setvar", ("Channel", root), ("Variable", variable), ("Value", value), call_id=call_id
        )
        await self._act(
            "Redirect",
            ("Channel", root),
            ("Context", context),
            ("Exten", "s"),
            ("Priority", "1"),
            call_id=call_id,
        )

    async def connect_to_agent(self, call_id: str, agent_endpoint: str) -> None:
        await self._setvar_and_redirect(call_id, "PACELINE_AGENT", agent_endpoint, self._ctx_agent)

    async def play_and_hangup(self, call_id: str, sound: str) -> None:
        await self._setvar_and_redirect(call_id, "PACELINE_SOUND", sound, self._ctx_abandon)

    async def send_to_ivr(self, call_id: str, flow: str, variables: Mapping[str, str]) -> None:
        """Setvar `PACELINE_<NAME>` for each variable and `PACELINE_IVR_APP`, then Redirect the
        customer channel into `IVR_CONTEXT`, extension `flow`. The call stays followed: its
        Hangup gives the HANGUP as for any call. ValueError for a flow name or a variable the
        dialplan cannot take (checked before anything is sent)."""
        if not _FLOW.fullmatch(flow):
            raise ValueError(
                f"IVR flow {flow!r}: a lower-case letter, then letters, digits, _ . or - "
                f"(the extension pattern _[a-z]. of [{IVR_CONTEXT}])"
            )
        settings: list[tuple[str, str]] = []
        for name, value in variables.items():
            if not _VAR_NAME.fullmatch(name):
                raise ValueError(f"IVR variable name {name!r}: letters, digits and _ only")
            if "\r" in value or "\n" in value:
                raise ValueError(f"IVR variable {name}: the value must be one line")
            settings.append((f"PACELINE_{name.upper()}", value))
        settings.append(("PACELINE_IVR_APP", self.ivr_app))
        root = self._root(call_id)
        self.tracker.note_in_ivr(call_id)  # from now on the keys are the flow's
        for variable, value in settings:
            await self._act(
                "Setvar",
                ("Channel", root),
                ("Variable", variable),
                ("Value", value),
                call_id=call_id,
            )
        await self._act(
            "Redirect",
            ("Channel", root),
            ("Context", IVR_CONTEXT),
            ("Exten", flow),
            ("Priority", "1"),
            call_id=call_id,
        )

    async def blind_transfer(self, call_id: str, target: str) -> None:
        agent = self._agent_leg(call_id)
        await self._act(
            "BlindTransfer",
            ("Channel", agent),
            ("Context", self._ctx_transfer),
            ("Exten", target),
            call_id=call_id,
        )

    async def attended_transfer(self, call_id: str, target: str) -> None:
        agent = self._agent_leg(call_id)
        await self._act(
            "Atxfer",
            ("Channel", agent),
            ("Context", self._ctx_transfer),
            ("Exten", target),
            call_id=call_id,
        )

        root = self.tracker.channel_of(call_id)
        left = False  # the agent left the customer's bridge for the consult

        def consulting() -> bool:
            # The target answered and is in the agent's consult bridge. Bridge membership
            # alone is not enough: the consult leg may enter the bridge while it rings.
            peers = self.tracker.bridge_peers(agent, answered_only=True)
            return any(p != root for p in peers)

        def settled() -> bool:
            # Consulting; or the consult failed (busy, rejected) and Asterisk put the agent
            # back with the customer; or the customer hung up meanwhile.
            nonlocal left
            with_customer = root in self.tracker.bridge_peers(agent)
            left = left or not with_customer
            gone = self.tracker.channel_of(call_id) is None
            return consulting() or (left and with_customer) or gone

        if not await self._wait_until(settled, self._transfer_timeout):
            # Give the customer back to the agent rather than leave them on hold.
            with contextlib.suppress(TelephonyError):
                await self._act("CancelAtxfer", ("Channel", agent))
            raise TelephonyError(f"attended transfer of {call_id!r}: {target} did not answer")
        if self.tracker.channel_of(call_id) is None:
            raise UnknownCall(f"attended transfer of {call_id!r}: the customer hung up")
        if not consulting():
            raise TelephonyError(
                f"attended transfer of {call_id!r}: {target} did not answer",
                detail="the consult call failed; the agent has the customer again",
            )
        # The agent leaving completes the transfer: Asterisk joins the customer and the target.
        await self._act("Hangup", ("Channel", agent), ("Cause", "16"))

    async def hold(self, call_id: str) -> None:
        root = self._root(call_id)
        agent = self._agent_leg(call_id)
        await self._act(
            "Redirect",
            ("Channel", root),
            ("Context", self._ctx_hold),
            ("Exten", "s"),
            ("Priority", "1"),
            ("ExtraChannel", agent),
            ("ExtraContext", self._ctx_park),
            ("ExtraExten", "s"),
            ("ExtraPriority", "1"),
            call_id=call_id,
        )
        self._held[call_id] = agent

    async def unhold(self, call_id: str) -> None:
        root = self._root(call_id)
        agent = self._held.get(call_id)
        if agent is None:
            raise TelephonyError(f"call {call_id!r} is not on hold")
        await self._act(
            "Bridge", ("Channel1", root), ("Channel2", agent), ("Tone", "no"), call_id=call_id
        )
        del self._held[call_id]

    async def send_dtmf(self, call_id: str, digits: str) -> None:
        root = self._root(call_id)
        for digit in digits:
            await self._act(
                "PlayDTMF",
                ("Channel", root),
                ("Digit", digit),
                ("Duration", "100"),
                call_id=call_id,
            )
