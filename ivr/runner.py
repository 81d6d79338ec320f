"""`SessionRunner`: carries out what an IVR session asks for, on a call and on the services.

The interpreter (`ivr.interpreter.Session`) is sans-IO; this is its one asyncio edge, shared by
the ARI driver (`ivr.ari`), the emulator tests and the benchmark. A driver creates a runner per
call with the call's `CallChannel`, awaits `run()`, and `feed()`s it what happens on the call
(digits, playbacks that ended, recordings that ended, the caller's hang-up).

Contract:
- Commands are carried out in the order the session gave them. Channel commands (play, stop,
  record, secure mode, hang-up) are awaited one after the other, so ARI sees them in order.
- `StartTimer` is a `loop.call_later` owned by the runner (`CancelTimer` cancels it); its
  `TimerFired` is fed back like any event. Every timer still pending is cancelled at the end.
- Service commands run as tasks of the TaskGroup `run()` owns, concurrently with the call;
  each is answered with exactly one `ServiceDone`. An adapter that raises gives
  `ok=False` with `describe_exception` (redacted); a service that is not configured gives
  `ok=False, error="<name> not configured"`. Tasks still running at the end are cancelled.
- A channel command that fails ends the session: logged (redacted), `Finished("error")`, and
  one hang-up attempt. `ChannelGone` (the call no longer exists) instead ends it as the
  caller's hang-up, and so does any failure after the driver fed `CallerHangup`.
- PCI: a digit is shown (`on_event`, logs) when the session takes it, in order, so a digit
  typed ahead of a card prompt is taken after `SecureMode(True)`; from then until
  `SecureMode(False)` has been carried out, digits appear as "*"; the recordings are paused
  through `CallChannel.set_secure` before any card prompt plays (the command comes first
  and is awaited). An answered `PaymentRequest` is recorded through `Services.payments` with
  the token, brand, last four digits and the result only.
- `dtmf_latencies`: for each `Dtmf` fed, the seconds from `feed()` to the first command (other
  than a `Trace`) carried out because of it; digits that cause none are not counted.

`on_event(kind, detail)` is what Paceline emits about the session (logs, screen pop): kinds
`started`, `dtmf` (`digit`), `trace` (`node`, `what`, `detail`), `secure` (`on`), `payment`
(`approved`, `brand`, `last4`, `error`), `transfer` (`kind`, `target`, `data`), `finished`
(`reason`, `node`). `on_trace(trace)` gets the interpreter's `Trace` lines (already masked).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cti.redact import describe_exception, redact
from ivr.ports import (
    CallbackBook,
    ContactDirectory,
    ContactRecord,
    Crm,
    DncList,
    PaymentGateway,
    PaymentResult,
    PaymentStore,
    SmsSender,
    WaitEstimator,
)
from ivr.protocol import (
    AddDnc,
    CallerHangup,
    CancelTimer,
    CardDetails,
    Command,
    CreateCallback,
    Dtmf,
    EstimateWait,
    Event,
    FindContact,
    Finished,
    HangupCall,
    HttpLookup,
    PaymentRequest,
    Play,
    SecureMode,
    SendSms,
    ServiceCommand,
    ServiceDone,
    StartRecording,
    StartTimer,
    StopPlayback,
    StopRecording,
    TimerFired,
    Trace,
    TransferCall,
)

log = logging.getLogger(__name__)

#: Q.850 cause of the hang-up after a session ended in error (41: temporary failure).
ERROR_HANGUP_CAUSE = 41

OnEvent = Callable[[str, Mapping[str, Any]], None]
OnTrace = Callable[[Trace], None]


class ChannelGone(Exception):
    """Raised by a `CallChannel` when the call no longer exists (hung up, left the app)."""


class CallChannel(Protocol):
    """One call, as the runner drives it. Every method may raise; see the module docstring."""

    async def play(self, playback_id: str, media: tuple[str, ...], language: str) -> None:
        """Start playing (returns once started); `PlaybackFinished` is fed when it ends."""
        ...

    async def stop_playback(self, playback_id: str) -> None:
        """Stop it; a playback that already ended is not an error."""
        ...

    async def transfer(self, kind: str, target: str, data: Mapping[str, str]) -> None:
        """Hand the call over (it leaves the IVR); raises when that cannot be done."""
        ...

    async def start_recording(self, name: str, max_s: float, finish_key: str) -> None: ...

    async def stop_recording(self, name: str) -> None: ...

    async def set_secure(self, on: bool) -> None:
        """Pause (on) or resume (off) every recording of the call."""
        ...

    async def hangup(self, cause: int) -> None: ...


class InterpreterSession(Protocol):
    """What the runner needs of `ivr.interpreter.Session`."""

    def start(self) -> list[Command]: ...

    def handle(self, event: Event) -> list[Command]: ...

    @property
    def variables(self) -> Mapping[str, Any]: ...


@dataclass
class Services:
    """The adapters a session may use; None: its commands answer "<name> not configured"."""

    crm: Crm | None = None
    contacts: ContactDirectory | None = None
    gateway: PaymentGateway | None = None
    wait: WaitEstimator | None = None
    callbacks: CallbackBook | None = None
    sms: SmsSender | None = None
    dnc: DncList | None = None
    payments: PaymentStore | None = None
    #: Longest wait for any service but the gateway (a database, a CRM, the SMS provider): a
    #: stuck one answers not ok, and the flow takes its failure route instead of silence.
    timeout_s: float = 10.0
    #: Longest wait for the payment gateway (charges can be slow; the caller hears
    #: `processing` meanwhile).
    gateway_timeout_s: float = 45.0


class _NotConfigured(Exception):
    pass


def _need(service: Any, name: str) -> Any:
    if service is None:
        raise _NotConfigured(f"{name} not configured")
    return service


def contact_data(record: ContactRecord | None) -> dict[str, Any]:
    """A `FindContact` answer: {} when nothing was found (see `ivr.protocol.FindContact`)."""
    if record is None:
        return {}
    return {
        "contact_id": record.contact_id,
        "campaign": record.campaign,
        "name": record.name,
        "fields": dict(record.fields),
        "secrets": dict(record.secrets),
    }


class GatewayFailed(Exception):
    """A payment gateway's failure, its text already scrubbed of the card's data."""


def scrub_card_data(text: str, card: CardDetails) -> str:
    """`text` without this card's number, CVV or postcode (as whole tokens), then redacted.

    For texts a gateway wrote (errors, tokens): a gateway may quote what it was sent.
    """
    for secret in (card.number, card.cvv, card.postcode):
        secret = secret.strip().lower()
        if secret:
            text = _mask_token(text, secret)
    return redact(text)


def _mask_token(text: str, secret: str) -> str:
    # No regular expression is built from the secret: `re` would keep it as a cache key (and
    # raise a KeyError naming it on the first miss), putting the digits into an exception.
    low = text.lower()
    out: list[str] = []
    start = i = 0
    while (i := low.find(secret, i)) >= 0:
        end = i + len(secret)
        before = text[i - 1] if i > 0 else " "
        after = text[end] if end < len(text) else " "
        if not before.isalnum() and not after.isalnum():
            out.append(text[start:i])
            out.append("***")
            start = end
        i = end
    out.append(text[start:])
    return "".join(out)


class SessionRunner:
    """Runs one session on one call: see the module docstring for the contract."""

    def __init__(
        self,
        session: InterpreterSession,
        channel: CallChannel,
        services: Services,
        *,
        flow_name: str,
        ani: str,
        session_id: str | None = None,
        on_trace: OnTrace | None = None,
        on_event: OnEvent | None = None,
    ) -> None:
        self.session = session
        self.channel = channel
        self.services = services
        self.flow_name = flow_name
        self.ani = ani
        #: defaults to the session's own `session_id` (the ids of its playbacks start with it)
        self.session_id = session_id or str(getattr(session, "session_id", ""))
        self._on_trace = on_trace
        self._on_event = on_event
        self.dtmf_latencies: list[float] = []
        self._queue: asyncio.Queue[tuple[Event, float | None]] = asyncio.Queue()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._payments: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._secure = False
        self._caller_gone = False
        self._node = ""
        self._finished: Finished | None = None

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def finished(self) -> Finished | None:
        return self._finished

    # ----- input -------------------------------------------------------------------------
    def feed(self, event: Event) -> None:
        """Something happened on the call; handled in order by `run()`. Never blocks."""
        if self._finished is not None:
            return
        fed_at: float | None = None
        if isinstance(event, Dtmf):
            fed_at = time.perf_counter()
        elif isinstance(event, CallerHangup):
            self._caller_gone = True
        self._queue.put_nowait((event, fed_at))

    def _show_dtmf(self, event: Dtmf) -> None:
        # Shown when the session takes the digit, not when it arrives: a digit typed ahead,
        # queued behind the key that starts a `pay` step, is handled after SecureMode(True)
        # and so is masked like the rest of the card number.
        shown = "*" if self._secure else event.digit
        log.debug("ivr %s: dtmf %s", self.session_id, shown)
        self._emit("dtmf", {"digit": shown})

    def _emit(self, kind: str, detail: Mapping[str, Any]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, detail)
            except Exception as exc:  # a listener's bug must not end the call
                log.error("ivr %s: on_event failed: %s", self.session_id, describe_exception(exc))

    # ----- the loop ----------------------------------------------------------------------
    async def run(self) -> Finished:
        """Start the session and run it until it finishes; the `Finished` it ended with."""
        self._emit("started", {"flow": self.flow_name, "ani": self.ani})
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    await self._step(self.session.start, None)
                    while self._finished is None:
                        event, fed_at = await self._queue.get()
                        if isinstance(event, Dtmf):
                            self._show_dtmf(event)
                        await self._step(functools.partial(self.session.handle, event), fed_at)
                finally:
                    self._tg = None
                    # A payment in flight is not cancelled when the call ends: the gateway may
                    # have taken the money, and the answer must be recorded. The TaskGroup
                    # waits for it (bounded by `gateway_timeout_s`).
                    for task in self._tasks:
                        if task not in self._payments:
                            task.cancel()
        finally:
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
        assert self._finished is not None
        self._emit("finished", {"reason": self._finished.reason, "node": self._finished.node})
        return self._finished

    async def _step(self, produce: Callable[[], list[Command]], fed_at: float | None) -> None:
        try:
            commands = produce()
        except Exception as exc:  # an interpreter bug: end the call cleanly, say where
            log.error(
                "ivr %s: session failed at %r: %s", self.session_id, self._node,
                describe_exception(exc),
            )
            await self._fail()
            return
        for command in commands:
            if fed_at is not None and not isinstance(command, Trace):
                self.dtmf_latencies.append(time.perf_counter() - fed_at)
                fed_at = None
            if not await self._execute(command):
                return

    async def _execute(self, command: Command) -> bool:
        """Carry out one command; False when the session ended because it failed."""
        if isinstance(command, Trace):
            self._on_trace_line(command)
        elif isinstance(command, Finished):
            self._finished = command
        elif isinstance(command, StartTimer):
            self._start_timer(command)
        elif isinstance(command, CancelTimer):
            handle = self._timers.pop(command.timer_id, None)
            if handle is not None:
                handle.cancel()
        elif isinstance(command, SecureMode):
            return await self._set_secure(command.on)
        elif isinstance(command, ServiceCommand):
            self._start_service(command)
        else:
            return await self._channel_op(command)
        return True

    def _on_trace_line(self, trace: Trace) -> None:
        if trace.what == "enter":
            self._node = trace.node
        log.debug("ivr %s: %s %s %s", self.session_id, trace.node, trace.what, trace.detail)
        if self._on_trace is not None:
            self._on_trace(trace)
        self._emit("trace", {"node": trace.node, "what": trace.what, "detail": trace.detail})

    def _start_timer(self, command: StartTimer) -> None:
        old = self._timers.pop(command.timer_id, None)
        if old is not None:
            old.cancel()

        def fire(timer_id: str = command.timer_id) -> None:
            self._timers.pop(timer_id, None)
            self.feed(TimerFired(timer_id))

        loop = asyncio.get_running_loop()
        self._timers[command.timer_id] = loop.call_later(max(0.0, command.seconds), fire)

    async def _set_secure(self, on: bool) -> bool:
        # Masking starts before the recordings are paused and ends after they resume: a digit
        # fed in between is shown as "*" either way.
        if on:
            self._secure = True
        self._emit("secure", {"on": on})
        ok = await self._channel_op(SecureMode(on))
        if not on and ok:
            self._secure = False
        return ok

    async def _channel_op(self, command: Command) -> bool:
        ch = self.channel
        try:
            if isinstance(command, Play):
                await ch.play(command.playback_id, command.media, command.language)
            elif isinstance(command, StopPlayback):
                await ch.stop_playback(command.playback_id)
            elif isinstance(command, StartRecording):
                await ch.start_recording(command.name, command.max_s, command.finish_key)
            elif isinstance(command, StopRecording):
                await ch.stop_recording(command.name)
            elif isinstance(command, SecureMode):
                await ch.set_secure(command.on)
            elif isinstance(command, HangupCall):
                await ch.hangup(command.cause)
            else:
                log.error("ivr %s: unknown command %s", self.session_id, type(command).__name__)
            return True
        except ChannelGone:
            self._caller_hung_up(type(command).__name__)
            return True
        except Exception as exc:
            if self._caller_gone:
                self._caller_hung_up(type(command).__name__)
                return True
            log.warning(
                "ivr %s: %s failed at %r: %s", self.session_id, type(command).__name__,
                self._node, describe_exception(exc),
            )
            await self._fail()
            return False

    def _caller_hung_up(self, what: str) -> None:
        """The call is gone under a channel command: the session hears `CallerHangup` next
        (once); its own commands for the dead call then fail quietly the same way."""
        log.debug("ivr %s: %s on a call that is gone", self.session_id, what)
        if not self._caller_gone:
            self.feed(CallerHangup())

    async def _fail(self) -> None:
        self._finished = Finished("error", self._node)
        with contextlib.suppress(Exception):
            await self.channel.hangup(ERROR_HANGUP_CAUSE)

    # ----- services ----------------------------------------------------------------------
    def _start_service(self, command: ServiceCommand) -> None:
        if self._tg is None:
            return
        task = self._tg.create_task(self._serve(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if isinstance(command, PaymentRequest):
            self._payments.add(task)
            task.add_done_callback(self._payments.discard)

    async def _serve(self, command: ServiceCommand) -> None:
        # The lookup brings its own time limit, the gateway's is applied around the charge
        # (so that a timed-out charge is still recorded) and a transfer is bounded by the
        # driver (an agent's ring time); every other service gets `timeout_s`.
        bounded = not isinstance(command, HttpLookup | PaymentRequest | TransferCall)
        try:
            async with asyncio.timeout(self.services.timeout_s if bounded else None):
                data = await self._call_service(command)
            done = ServiceDone(command.request_id, True, data)
        except _NotConfigured as exc:
            done = ServiceDone(command.request_id, False, error=str(exc))
        except TimeoutError:
            error = f"{type(command).__name__} timed out"
            log.info("ivr %s: %s", self.session_id, error)
            done = ServiceDone(command.request_id, False, error=error)
        except Exception as exc:
            log.info(
                "ivr %s: %s failed: %s", self.session_id, type(command).__name__,
                describe_exception(exc),
            )
            done = ServiceDone(command.request_id, False, error=describe_exception(exc))
        self.feed(done)

    async def _call_service(self, command: ServiceCommand) -> Mapping[str, Any]:
        s = self.services
        if isinstance(command, HttpLookup):
            crm: Crm = _need(s.crm, "crm")
            async with asyncio.timeout(command.timeout_s):
                return await crm.lookup(
                    command.method, command.url, command.params, command.timeout_s
                )
        if isinstance(command, FindContact):
            contacts: ContactDirectory = _need(s.contacts, "contacts")
            return contact_data(await contacts.find(command.number, command.campaign))
        if isinstance(command, PaymentRequest):
            return await self._pay(command)
        if isinstance(command, EstimateWait):
            wait: WaitEstimator = _need(s.wait, "wait")
            return {"ewt_s": float(await wait.estimate_wait(command.queue))}
        if isinstance(command, CreateCallback):
            book: CallbackBook = _need(s.callbacks, "callbacks")
            contact_id = await book.create_callback(command.number, command.campaign, command.data)
            return {"contact_id": contact_id}
        if isinstance(command, SendSms):
            sms: SmsSender = _need(s.sms, "sms")
            return {"message_id": await sms.send_sms(command.to, command.text)}
        if isinstance(command, AddDnc):
            dnc: DncList = _need(s.dnc, "dnc")
            await dnc.add_dnc(command.number, command.campaign, f"ivr flow {self.flow_name}")
            return {}
        assert isinstance(command, TransferCall)
        self._emit(
            "transfer", {"kind": command.kind, "target": command.target, "data": command.data}
        )
        await self.channel.transfer(command.kind, command.target, command.data)
        return {}

    async def _pay(self, command: PaymentRequest) -> Mapping[str, Any]:
        gateway: PaymentGateway = _need(self.services.gateway, "gateway")
        node = self._node  # the pay node: no other node is entered while it waits
        card = command.card
        limit = self.services.gateway_timeout_s
        try:
            async with asyncio.timeout(limit):
                if command.action == "charge":
                    result = await gateway.charge(
                        card, command.amount, command.currency, command.description,
                        command.idempotency_key,
                    )
                else:
                    result = await gateway.tokenize(card, command.idempotency_key)
        except TimeoutError:
            text = (f"gateway timed out after {limit:g} s: the charge may have gone through; "
                    f"check key {command.idempotency_key}")
            await self._record_payment(command, node, PaymentResult(False, "", text))
            raise GatewayFailed(text) from None
        except Exception as exc:
            # `describe_exception` masks anything shaped like a PAN, but a gateway that quotes
            # the CVV or the postcode back would pass them on: scrub this card's own data.
            text = scrub_card_data(describe_exception(exc), card)
            failed = PaymentResult(False, "", text)
            await self._record_payment(command, node, failed)
            raise GatewayFailed(text) from None
        result = PaymentResult(result.approved, scrub_card_data(result.token, card),
                               scrub_card_data(result.error, card))
        await self._record_payment(command, node, result)
        return {"approved": result.approved, "token": result.token, "error": result.error}

    async def _record_payment(
        self, command: PaymentRequest, node: str, result: PaymentResult
    ) -> None:
        card = command.card
        self._emit(
            "payment",
            {"approved": result.approved, "brand": card.brand, "last4": card.last4,
             "error": result.error},
        )
        store = self.services.payments
        if store is None:
            return
        contact_id = self.session.variables.get("contact_id")
        try:
            await store.record_payment(
                session_id=self.session_id, flow=self.flow_name, node=node, ani=self.ani,
                contact_id=contact_id if isinstance(contact_id, int) else None,
                action=command.action, amount=command.amount, currency=command.currency,
                brand=card.brand, last4=card.last4, approved=result.approved,
                token=result.token, error=result.error,
            )
        except Exception as exc:  # the payment happened: the flow goes on, the log says so
            log.error(
                "ivr %s: payment not recorded (%s %s, approved=%s): %s", self.session_id,
                card.brand, card.last4, result.approved, describe_exception(exc),
            )
