"""Walk a flow without a call: the engine of `paceline ivr test` and of the example path tests.

`walk_flow` runs an `ivr.interpreter.Session` in virtual time and plays the caller and every
service itself. The caller's keys come as groups (`dtmf`, e.g. `["1", "4111111111111111#"]`):
each group is typed, whole, the next time the flow waits for input (an input timer runs or a
barge-in prompt plays); a prompt without barge-in plays out first. When the flow waits for
input and no group is left, or the group is `""`, the caller says nothing and the timer
fires. After a group, a caller who stopped typing lets the inter-digit timer fire.

Services are synchronous fakes (`WalkServices`) answered at once; playbacks take no virtual
time. The printable `lines` are masked: card digits never appear (the interpreter's traces are
masked already, and every line goes through `cti.redact.redact` as a last guard).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from cti.redact import describe_exception, redact
from ivr.interpreter import Session
from ivr.model import Flow
from ivr.payments import sim_authorize
from ivr.ports import ContactRecord, PaymentResult
from ivr.protocol import (
    AddDnc,
    CancelTimer,
    CardDetails,
    Command,
    CreateCallback,
    Dtmf,
    EstimateWait,
    Event,
    FindContact,
    Finished,
    HttpLookup,
    PaymentRequest,
    Play,
    PlaybackFinished,
    RecordingFinished,
    SecureMode,
    SendSms,
    ServiceDone,
    StartRecording,
    StartTimer,
    StopPlayback,
    TimerFired,
    Trace,
    TransferCall,
)

#: (method, url, params) -> the CRM's JSON object, or None for a failed lookup.
LookupFn = Callable[[str, str, Mapping[str, str]], Mapping[str, Any] | None]
#: (card, amount, action, idempotency key) -> the gateway's answer (`sim_authorize`'s shape).
GatewayFn = Callable[[CardDetails, str, Literal["charge", "tokenize"], str], PaymentResult]


@dataclass
class WalkServices:
    """The fakes a walk answers service commands with. Every field is optional.

    `contacts` by number (as the `identify` node renders it); `lookup` a JSON object answered
    to every lookup, a function, or None (every lookup fails, so flows take `fallback`);
    `ewt_s` the estimated wait of every queue.
    """

    contacts: dict[str, ContactRecord] = field(default_factory=dict)
    lookup: Mapping[str, Any] | LookupFn | None = None
    ewt_s: float = 0.0
    gateway: GatewayFn = sim_authorize
    transfer_ok: bool = True
    sms_ok: bool = True


@dataclass
class WalkResult:
    path: list[str]
    lines: list[str]
    finished: Finished | None
    variables: dict[str, Any]
    commands: list[Command]
    callbacks: list[CreateCallback] = field(default_factory=list)
    dnc: list[AddDnc] = field(default_factory=list)
    sms: list[SendSms] = field(default_factory=list)
    transfers: list[TransferCall] = field(default_factory=list)


class _Walk:
    def __init__(self, session: Session, services: WalkServices, groups: Sequence[str],
                 max_steps: int) -> None:
        self.session = session
        self.services = services
        self.groups = deque(groups)
        self.max_steps = max_steps
        self.steps = 0
        self.now = 0.0
        self.timers: dict[str, float] = {}
        self.timer_heap: list[tuple[float, int, str]] = []
        self.timer_seq = 0
        self.playback: str | None = None
        self.answers: deque[Event] = deque()
        self.node = ""
        self.result = WalkResult(path=[], lines=[], finished=None, variables={}, commands=[])

    # -------------------------------------------------------------- commands in

    def take(self, commands: list[Command]) -> None:
        for command in commands:
            self.result.commands.append(command)
            self.on_command(command)

    def line(self, text: str) -> None:
        self.result.lines.append(redact(text))

    def on_command(self, c: Command) -> None:
        if isinstance(c, Trace):
            if c.what == "enter":
                self.node = c.node
            else:
                self.line(f"{c.node}  {c.what} {c.detail}".rstrip())
        elif isinstance(c, Play):
            self.playback = c.playback_id
            self.line(f"{self.node}  play {' '.join(c.media)}")
        elif isinstance(c, StopPlayback):
            if self.playback == c.playback_id:
                self.playback = None
        elif isinstance(c, StartTimer):
            self.timers[c.timer_id] = self.now + c.seconds
            self.timer_seq += 1
            heapq.heappush(self.timer_heap, (self.now + c.seconds, self.timer_seq, c.timer_id))
        elif isinstance(c, CancelTimer):
            self.timers.pop(c.timer_id, None)
        elif isinstance(c, SecureMode):
            self.line(f"{self.node}  secure mode {'on' if c.on else 'off'}")
        elif isinstance(c, StartRecording):
            self.answers.append(RecordingFinished(c.name))
        elif isinstance(c, Finished):
            self.result.finished = c
            self.line(f"-> {c.reason}")
        elif isinstance(c, (HttpLookup, FindContact, PaymentRequest, EstimateWait,
                            CreateCallback, SendSms, AddDnc, TransferCall)):
            self.answers.append(self.serve(c))

    def serve(self, c: Any) -> ServiceDone:
        try:
            return self._serve(c)
        except Exception as exc:  # a fake that raises is a failed service, as on the runner
            return ServiceDone(c.request_id, ok=False, error=describe_exception(exc))

    def _serve(self, c: Any) -> ServiceDone:
        s = self.services
        rid = c.request_id
        if isinstance(c, HttpLookup):
            answer: Mapping[str, Any] | None
            answer = s.lookup(c.method, c.url, c.params) if callable(s.lookup) else s.lookup
            if answer is None:
                return ServiceDone(rid, ok=False, error="lookup not available")
            return ServiceDone(rid, ok=True, data=answer)
        if isinstance(c, FindContact):
            record = s.contacts.get(c.number)
            if record is None or (c.campaign is not None and record.campaign != c.campaign):
                return ServiceDone(rid, ok=True, data={})
            return ServiceDone(rid, ok=True, data={
                "contact_id": record.contact_id, "campaign": record.campaign,
                "name": record.name, "fields": dict(record.fields),
                "secrets": dict(record.secrets)})
        if isinstance(c, PaymentRequest):
            paid = s.gateway(c.card, c.amount, c.action, c.idempotency_key)
            return ServiceDone(rid, ok=True, data={"approved": paid.approved,
                                                   "token": paid.token, "error": paid.error})
        if isinstance(c, EstimateWait):
            return ServiceDone(rid, ok=True, data={"ewt_s": s.ewt_s})
        if isinstance(c, CreateCallback):
            self.result.callbacks.append(c)
            return ServiceDone(rid, ok=True, data={"contact_id": 1000 + len(self.result.callbacks)})
        if isinstance(c, SendSms):
            if not s.sms_ok:
                return ServiceDone(rid, ok=False, error="sms refused")
            self.result.sms.append(c)
            return ServiceDone(rid, ok=True, data={"message_id": f"sms{len(self.result.sms)}"})
        if isinstance(c, AddDnc):
            self.result.dnc.append(c)
            return ServiceDone(rid, ok=True)
        if isinstance(c, TransferCall):
            if not s.transfer_ok:
                return ServiceDone(rid, ok=False, error="transfer failed")
            self.result.transfers.append(c)
            return ServiceDone(rid, ok=True)
        return ServiceDone(rid, ok=False, error="not simulated")

    # -------------------------------------------------------------- events out

    def feed(self, event: Event) -> None:
        self.steps += 1
        self.take(self.session.handle(event))

    def drain_answers(self) -> None:
        while self.answers and self.session.finished is None and self.steps < self.max_steps:
            self.feed(self.answers.popleft())

    def finish_playback(self) -> None:
        pb, self.playback = self.playback, None
        if pb is not None:
            self.feed(PlaybackFinished(pb))

    def fire_next_timer(self) -> bool:
        while self.timer_heap:
            at, _, timer_id = heapq.heappop(self.timer_heap)
            if self.timers.get(timer_id) == at:
                del self.timers[timer_id]
                self.now = max(self.now, at)
                self.feed(TimerFired(timer_id))
                return True
        return False

    def type_group(self, group: str) -> None:
        state = self.session.input_state
        if group == "":
            # The caller says nothing: an input prompt plays out, then its timer fires.
            if state in ("play", "prompt"):
                self.finish_playback()
                self.drain_answers()
            if state != "play" and self.session.input_state in ("first_digit", "more_digits"):
                self.fire_next_timer()
            return
        for digit in group:
            if self.session.finished is not None:
                return
            self.feed(Dtmf(digit))
            self.drain_answers()
        if self.session.input_state == "more_digits":
            self.fire_next_timer()  # the caller stopped typing

    def run(self) -> None:
        self.take(self.session.start())
        while self.session.finished is None and self.steps < self.max_steps:
            if self.answers:
                self.feed(self.answers.popleft())
            elif self.session.input_state is not None and self.groups:
                self.type_group(self.groups.popleft())
            elif self.playback is not None:
                self.finish_playback()
            elif not self.fire_next_timer():
                self.line(f"{self.node}  (stuck: the flow waits for nothing a walk can give)")
                return
        if self.session.finished is None:
            self.line(f"{self.node}  (stopped after {self.max_steps} steps)")


def walk_flow(flow: Flow, *, ani: str, dtmf: Sequence[str], dnid: str = "",
              language: str | None = None, today: date = date(2026, 1, 1),
              services: WalkServices | None = None, variables: Mapping[str, Any] | None = None,
              max_steps: int = 10_000) -> WalkResult:
    """Run `flow` for a caller `ani` typing `dtmf` (one string per input group).

    See the module docstring for how groups, timers and services are simulated. The walk
    ends at `Finished`, when the flow waits for nothing a walk can give, or after
    `max_steps` events.
    """
    seed: dict[str, Any] = {"ani": ani, "dnid": dnid, "channel_id": "walk", "call_id": "walk"}
    seed.update(variables or {})
    session = Session(flow, session_id="walk", variables=seed, today=today, language=language)
    walk = _Walk(session, services or WalkServices(), dtmf, max_steps)
    walk.run()
    result = walk.result
    result.path = session.path
    result.variables = session.variables
    return result
