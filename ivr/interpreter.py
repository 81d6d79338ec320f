"""The IVR interpreter: one call's walk through a flow, as a sans-IO state machine.

`Session` is fed events (`ivr.protocol.Dtmf`, `PlaybackFinished`, `TimerFired`,
`ServiceDone`, `RecordingFinished`, `CallerHangup`) and answers each with the commands a driver
must carry out, in order. It never reads a clock, a socket or a database: time arrives as
`TimerFired`, today's date (for card expiry) is given at construction, and every service is a
command answered by `ServiceDone`. The same object therefore runs on ARI, on the emulator, in
the `paceline ivr test` walker and in the benchmark.

Contract, in short (DESIGN.md "Interpreter semantics" is the long form):

- `start()` once, then `handle(event)` for every event; both return `list[Command]` and never
  raise. An event that does not belong to the current wait (a stale timer, playback, request
  or recording id, a digit nobody asked for) is ignored. After `Finished` every event is
  ignored.
- Ids: playbacks `"{session_id}:pb{n}"`, timers `"t{n}"`, service requests `"r{n}"`.
- Every node entered emits `Trace(node, "enter")`; decisions emit one `Trace` each, whose
  `what` and `detail` read as a line: `Trace("main", "menu", "digit 1 -> pay")`.
- Barge-in: input prompts (menu, gather, verify, pay, callback offer) always allow it; a `play`
  node when `barge_in` is set. A digit during such a playback stops it (`StopPlayback`) and
  counts as input; a digit that barges into a `play` node is kept as type-ahead for the next
  node that asks for input (dropped if the flow first waits for anything else, and never
  carried into `pay`). A digit during a playback without barge-in is ignored
  (`Trace("ignored digit", "*")`: masked, it may be a PIN digit).
- Input timers start when the prompt has finished. A digit restarts the inter-digit timer.
  An answer ends on its finish key, its last allowed digit or the inter-digit timeout.
- A finish key is never an answer by itself: pressed before the first digit of an answer it
  is ignored (`Trace("ignored digit", "# (nothing typed yet)")`): the prompt goes on, the
  timer runs on, no try is spent. The finish key is `#` for `verify` and `pay`, the node's
  `finish_key` for `gather`, and `#` for `menu` and `callback_offer` unless `#` is one of
  their keys. So the `#` callers press out of habit after an answer that ended on its last
  digit never costs the next node a try. Moreover a finish key pressed right after such an
  answer, before a prompt has played out or a timer fired, is ignored whatever waits next,
  even a menu with a `#` option (`Trace("ignored digit", "# (right after a full answer)")`).
- `pay` and `verify` run in SecureMode: `SecureMode(True)` before their first prompt,
  `SecureMode(False)` before the session leaves the node by any path (done, failed, aborted,
  caller hangup, internal error).
- Loop guard: more than `MAX_NODES_WITHOUT_WAIT` node entries within one `start()`/`handle()`
  end the call with `Finished("error")`, so a flow that loops without waiting cannot hang a
  driver.

PCI: card digits, CVV, PIN and date of birth are held only in `_Digits` buffers (whose repr
shows a count) while typed, then in `CardDetails` inside the one `PaymentRequest`. They never
reach variables, traces, `Finished`, exception texts or `repr(session)`.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

from cti.redact import mask_pan, redact
from ivr import model
from ivr.expr import ExprError, lookup_path, render
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
    PlaybackFinished,
    RecordingFinished,
    SecureMode,
    SendSms,
    ServiceDone,
    StartRecording,
    StartTimer,
    StopPlayback,
    StopRecording,
    TimerFired,
    Trace,
    TransferCall,
    card_brand,
    card_number_ok,
)
from ivr.protocol import Play as PlayMedia

#: Node entries allowed between two waits. A real flow enters a handful of nodes per caller
#: action; a thousand means a loop of set/branch nodes that never asks the caller anything.
MAX_NODES_WITHOUT_WAIT = 1000

#: Extra seconds after a recording's `max_s` before the session stops waiting for the
#: driver's RecordingFinished (a lost event must not leave the caller in silence forever).
RECORD_GRACE_S = 5.0

#: The keys a caller can press.
DTMF_KEYS = frozenset("0123456789*#ABCD")

#: The key that abandons a payment at any step (Twilio <Pay> uses the same).
PAY_ABORT_KEY = "*"

#: The longest PIN and date of birth (DDMMYYYY) a `verify` node collects. The entry never
#: stops at the stored secret's length: that would tell the caller how long the PIN is.
VERIFY_MAX_DIGITS = {"pin": 12, "dob": 8}

#: Seconds `verify` waits after a digit before it takes the entry as complete (a caller who
#: does not press `#`).
VERIFY_INTER_DIGIT_S = 3.0

#: How an input wait looks to a driver (see `Session.input_state`).
InputState = Literal["play", "prompt", "first_digit", "more_digits"]

_Run = Generator[None, Event, str | None]


class _FlowFault(Exception):
    """The flow cannot go on (a missing node or subflow): the call ends with an error.

    The message names nodes and files only, never a value typed by the caller."""


class _Digits:
    """Digits typed for one answer. `repr` shows how many, never which: they may be card data."""

    __slots__ = ("_chars",)

    def __init__(self) -> None:
        self._chars: list[str] = []

    def add(self, digit: str) -> None:
        self._chars.append(digit)

    def clear(self) -> None:
        self._chars.clear()

    @property
    def value(self) -> str:
        return "".join(self._chars)

    def __len__(self) -> int:
        return len(self._chars)

    def __repr__(self) -> str:
        return f"<{len(self._chars)} digits>"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class _Ask:
    """How to collect one answer."""

    max_digits: int
    finish_key: str | None
    timeout_s: float
    inter_digit_s: float
    #: Keys that end the answer at once, whatever was typed before (pay's `*`). Never the
    #: finish key.
    stop_keys: frozenset[str] = frozenset()
    #: Whether digits typed ahead (barge-in on a `play` node) count as the start of it.
    typeahead: bool = True


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: Literal["digits", "no_input", "key"]
    digits: _Digits
    key: str = ""


_NO_STOP: frozenset[str] = frozenset()
_PAY_STOP = frozenset({PAY_ABORT_KEY})
#: The steps of `pay`, in order, with their trace labels (cvv, postcode: when required).
_PAY_STEPS = (("card_number", "card number"), ("expiry", "expiry"), ("cvv", "cvv"),
              ("postcode", "postcode"))
_ISO_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


@functools.lru_cache(maxsize=256)
def _pattern(source: str) -> re.Pattern[str]:
    return re.compile(source)


def _amount_text(value: Any) -> str | None:
    """Money as decimal text with two places ("42.50"), or None when not a positive amount."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        if not amount.is_finite() or amount <= 0:
            return None
        return str(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError):
        return None


def _expiry_error(mmyy: str, today: date) -> str | None:
    """None for a good MMYY expiry; "invalid_expiry" or "expired" (before this month)."""
    if len(mmyy) != 4 or not mmyy.isdigit():
        return "invalid_expiry"
    month, year = int(mmyy[:2]), 2000 + int(mmyy[2:])
    if not 1 <= month <= 12:
        return "invalid_expiry"
    if (year, month) < (today.year, today.month):
        return "expired"
    return None


def _dob_digits(secret: str) -> str:
    """A stored date of birth as DDMMYYYY (records may hold ISO dates)."""
    iso = _ISO_DATE_RE.fullmatch(secret.strip())
    if iso:
        return f"{iso.group(3)}{iso.group(2)}{iso.group(1)}"
    return "".join(ch for ch in secret if ch.isdigit())


def _same_secret(typed: str, secret: str) -> bool:
    return hmac.compare_digest(typed.encode(), secret.encode())


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return redact(text if len(text) <= limit else text[: limit - 1] + "…")


class Session:
    """One call in one flow. See the module docstring for the contract.

    `variables` seeds the call's variables (builtins such as `ani`, the flow's inputs); the
    session language is `language`, else the `language` variable, else the flow's default,
    and is kept in the `language` variable (a `set` node may change it).
    """

    def __init__(self, flow: model.Flow, *, session_id: str, variables: Mapping[str, Any],
                 today: date, language: str | None = None) -> None:
        self._root = flow
        self._flow = flow
        self._session_id = session_id
        self._record_prefix = "ivr-" + re.sub(r"[^A-Za-z0-9_.-]", "-", session_id)
        self._today = today
        self._vars: dict[str, Any] = dict(variables)
        lang = language or self._vars.get("language") or flow.default_language
        self._vars["language"] = str(lang)
        #: The identified contact's secrets (pin, dob): only `verify` reads them.
        self._secrets: dict[str, str] = {}
        self._stack: list[tuple[model.Flow, str]] = []
        self._path: list[str] = []
        self._node = flow.start
        self._out: list[Command] = []
        self._gen: _Run | None = None
        self._started = False
        self._finished: Finished | None = None
        self._secure = False
        # What the session waits for; an event with another id is stale.
        self._playback: str | None = None
        self._playback_barge = False
        self._timer: str | None = None
        self._request: str | None = None
        self._recording: str | None = None
        self._accepting = False
        self._input_state: InputState | None = None
        #: The finish key of the answer being collected while nothing is typed yet: ignored.
        self._lone_key: str | None = None
        self._typeahead: list[str] = []
        #: The finish key of an answer that ended on its last allowed digit: callers often
        #: press it anyway, and it must not barge into the next prompt as an answer.
        self._late_finish_key: str | None = None
        self._n_playback = 0
        self._n_timer = 0
        self._n_request = 0
        self._n_recording = 0
        self._pay_attempts: dict[str, int] = {}

    # ------------------------------------------------------------------ public surface

    @property
    def finished(self) -> Finished | None:
        return self._finished

    @property
    def path(self) -> list[str]:
        """The node names entered so far, in order (a copy)."""
        return list(self._path)

    @property
    def variables(self) -> dict[str, Any]:
        """A copy of the call's variables (never a secret: see the module docstring)."""
        return dict(self._vars)

    @property
    def secure(self) -> bool:
        """True between SecureMode(True) and SecureMode(False)."""
        return self._secure

    @property
    def node(self) -> str:
        """The node the session is in (or ended in)."""
        return self._node

    @property
    def input_state(self) -> InputState | None:
        """Whether the session waits for the caller's digits, for drivers that simulate one.

        "play": a barge-in `play` node plays; "prompt": an input prompt plays; "first_digit":
        the input timer runs, nothing typed yet; "more_digits": some digits typed, the
        inter-digit timer runs. None: not waiting for digits.
        """
        return None if self._finished is not None else self._input_state

    def __repr__(self) -> str:
        state = self._finished.reason if self._finished else "running"
        return f"Session({self._session_id!r}, node={self._node!r}, {state})"

    def start(self) -> list[Command]:
        """Enter the flow's start node; only the first call does anything."""
        if self._started:
            return []
        self._started = True
        out: list[Command] = []
        self._out = out
        self._guarded(self._advance, self._flow.start)
        return out

    def handle(self, event: Event) -> list[Command]:
        """The commands `event` causes (often none). Never raises."""
        if self._finished is not None or not self._started:
            return []
        out: list[Command] = []
        self._out = out
        self._guarded(self._dispatch, event)
        return out

    # ------------------------------------------------------------------ event plumbing

    def _guarded(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except _FlowFault as fault:
            self._fail(str(fault))
        except Exception as exc:
            # A bug must end the call, not hang or crash the driver. Only the type is kept:
            # a message could quote a value the caller typed.
            self._fail(f"internal error ({type(exc).__name__})")

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Dtmf):
            if not isinstance(event.digit, str) or event.digit not in DTMF_KEYS:
                return  # not a key a phone can send: an illegal event
            late, self._late_finish_key = self._late_finish_key, None
            if event.digit == late:
                self._trace("ignored digit", f"{late} (right after a full answer)")
                return
            if event.digit == self._lone_key:
                # Checked before barge-in: a lone finish key must not cut the prompt short.
                self._trace("ignored digit", f"{event.digit} (nothing typed yet)")
                return
            if self._playback is not None:
                if not self._playback_barge:
                    self._trace("ignored digit", "*")
                    return
                self._out.append(StopPlayback(self._playback))
                self._playback = None
                self._resume(event)
            elif self._accepting:
                self._resume(event)
            else:
                self._trace("ignored digit", "*")
        elif isinstance(event, PlaybackFinished):
            if event.playback_id == self._playback and self._playback is not None:
                self._playback = None
                self._late_finish_key = None  # a prompt went by: no longer "right after"
                self._resume(event)
        elif isinstance(event, TimerFired):
            if event.timer_id == self._timer and self._timer is not None:
                self._timer = None
                self._late_finish_key = None
                self._resume(event)
        elif isinstance(event, ServiceDone):
            if event.request_id == self._request and self._request is not None:
                self._request = None
                self._resume(event)
        elif isinstance(event, RecordingFinished):
            if event.name == self._recording and self._recording is not None:
                self._recording = None
                self._resume(event)
        elif isinstance(event, CallerHangup):
            self._close_node()
            self._trace("hangup", "caller hung up")
            self._finish("caller_hangup")

    def _resume(self, event: Event) -> None:
        gen = self._gen
        if gen is None:
            return
        try:
            gen.send(event)
        except StopIteration as stop:
            self._gen = None
            self._advance(stop.value)

    def _advance(self, route: str | None) -> None:
        """Enter nodes from `route` until one waits or the call ends."""
        entries = 0
        while route is not None and self._finished is None:
            entries += 1
            if entries > MAX_NODES_WITHOUT_WAIT:
                raise _FlowFault(f"loop guard: more than {MAX_NODES_WITHOUT_WAIT} nodes "
                                 "entered without waiting for the caller")
            node = self._flow.nodes.get(route)
            if node is None:
                raise _FlowFault(f"no node named {route!r} in flow {self._flow.name!r}")
            self._node = node.name
            self._path.append(node.name)
            self._out.append(Trace(node.name, "enter"))
            simple = _SIMPLE.get(type(node))
            if simple is not None:
                route = simple(self, node)
                continue
            gen = _WAITING[type(node)](self, node)
            try:
                next(gen)
            except StopIteration as stop:
                route = stop.value
                continue
            self._gen = gen
            if self._input_state is None:
                # The flow waits for something else than the caller: typed-ahead digits
                # are stale by the time it asks again.
                self._typeahead.clear()
            return
        if self._finished is None:
            raise _FlowFault(f"node {self._node!r} ended without a route")

    def _close_node(self) -> None:
        """Abandon the node being run: its cleanup (timers, SecureMode off) runs now."""
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()
        self._disarm()
        self._secure_off()

    def _fail(self, message: str) -> None:
        self._close_node()
        if self._playback is not None:
            self._out.append(StopPlayback(self._playback))
            self._playback = None
        self._trace("error", message)
        self._out.append(HangupCall())
        self._finish("error")

    def _finish(self, reason: str) -> None:
        self._secure_off()
        self._finished = Finished(reason, self._node)
        self._input_state = None
        self._out.append(self._finished)

    # ------------------------------------------------------------------ command helpers

    def _trace(self, what: str, detail: str = "") -> None:
        self._out.append(Trace(self._node, what, detail))

    def _language(self) -> str:
        lang = self._vars.get("language")
        return lang if isinstance(lang, str) and lang else self._flow.default_language

    def _media(self, prompt: model.Prompt | None) -> tuple[str, ...]:
        if prompt is None:
            return ()
        uris = prompt.for_language(self._language(), self._flow.default_language)
        return tuple(render(u, self._vars) if "{" in u else u for u in uris)

    def _play(self, media: tuple[str, ...], barge_in: bool) -> str:
        self._n_playback += 1
        pb = f"{self._session_id}:pb{self._n_playback}"
        self._out.append(PlayMedia(pb, media, self._language(), barge_in))
        self._playback = pb
        self._playback_barge = barge_in
        return pb

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._n_timer += 1
        self._timer = f"t{self._n_timer}"
        self._out.append(StartTimer(self._timer, seconds))

    def _disarm(self) -> None:
        if self._timer is not None:
            self._out.append(CancelTimer(self._timer))
            self._timer = None

    def _request_id(self) -> str:
        self._n_request += 1
        self._request = f"r{self._n_request}"
        return self._request

    def _secure_on(self) -> None:
        if not self._secure:
            self._secure = True
            self._out.append(SecureMode(True))

    def _secure_off(self) -> None:
        if self._secure:
            self._secure = False
            self._out.append(SecureMode(False))

    def _render(self, template: str) -> str:
        return render(template, self._vars)

    # ------------------------------------------------------------------ waiting building blocks

    def _answer(self) -> Generator[None, Event, ServiceDone]:
        """Wait for the answer to the request just sent (`_request_id`)."""
        while True:
            event = yield
            if isinstance(event, ServiceDone):
                return event

    def _play_through(self, media: tuple[str, ...]) -> Generator[None, Event, None]:
        """Play `media` without barge-in and wait until it has finished."""
        if not media:
            return
        pb = self._play(media, barge_in=False)
        while self._playback == pb:
            yield

    def _take_digit(self, buf: _Digits, digit: str, ask: _Ask) -> _Answer | None:
        """Add `digit` to the answer; the answer when it is complete, else None.

        Never called with a lone finish key (`_dispatch` and `_collect` drop those)."""
        if digit in ask.stop_keys:
            return _Answer("key", buf, digit)
        if ask.finish_key is not None and digit == ask.finish_key:
            return _Answer("digits", buf)
        buf.add(digit)
        if len(buf) >= ask.max_digits:
            self._late_finish_key = ask.finish_key
            return _Answer("digits", buf)
        return None

    def _collect(self, media: tuple[str, ...], ask: _Ask) -> Generator[None, Event, _Answer]:
        """Play `media` (barge-in) and collect one answer: digits, no input, or a stop key."""
        buf = _Digits()
        pending, self._typeahead = self._typeahead, []
        if ask.typeahead:
            for digit in pending:
                if digit == ask.finish_key and not len(buf):
                    self._trace("ignored digit", f"{digit} (nothing typed yet)")
                    continue
                done = self._take_digit(buf, digit, ask)
                if done is not None:
                    return done
        self._accepting = True
        self._lone_key = None if len(buf) else ask.finish_key
        try:
            if len(buf):
                self._arm(ask.inter_digit_s)
                self._input_state = "more_digits"
            elif media:
                self._play(media, barge_in=True)
                self._input_state = "prompt"
            else:
                self._arm(ask.timeout_s)
                self._input_state = "first_digit"
            while True:
                event = yield
                if isinstance(event, PlaybackFinished):
                    self._arm(ask.timeout_s)
                    self._input_state = "first_digit"
                elif isinstance(event, TimerFired):
                    return _Answer("digits" if len(buf) else "no_input", buf)
                elif isinstance(event, Dtmf):
                    self._disarm()
                    done = self._take_digit(buf, event.digit, ask)
                    if done is not None:
                        return done
                    self._lone_key = None
                    self._arm(ask.inter_digit_s)
                    self._input_state = "more_digits"
        finally:
            self._accepting = False
            self._lone_key = None
            self._input_state = None
            self._disarm()

    def _choose(self, *, prompt: model.Prompt, options: Mapping[str, str], retries: int,
                timeout_s: float, no_input: str, invalid: str,
                no_input_prompt: model.Prompt | None = None,
                invalid_prompt: model.Prompt | None = None, repeat_key: str | None = None,
                operator_key: str | None = None, operator: str | None = None,
                label: str = "menu") -> Generator[None, Event, tuple[str, str]]:
        """One key among `options`, with retries: (key pressed or "", route)."""
        failures = 0
        tries = retries + 1
        extra: model.Prompt | None = None
        # "#" is these nodes' finish key (ignored: no answer) unless it is one of their keys.
        finish = None if "#" in {*options, repeat_key, operator_key} else "#"
        ask = _Ask(1, finish, timeout_s, timeout_s)
        while True:
            answer = yield from self._collect(self._media(extra) + self._media(prompt), ask)
            if answer.kind == "no_input":
                failures += 1
                if failures >= tries:
                    self._trace(label, f"no input, {tries} tries spent -> {no_input}")
                    return "", no_input
                self._trace(label, f"no input (try {failures} of {tries})")
                extra = no_input_prompt
                continue
            key = answer.digits.value
            target = options.get(key)
            if target is not None:
                self._trace(label, f"digit {key} -> {target}")
                return key, target
            if operator_key is not None and operator is not None and key == operator_key:
                self._trace(label, f"operator key {key} -> {operator}")
                return key, operator
            if repeat_key is not None and key == repeat_key:
                self._trace(label, f"repeat key {key}")
                extra = None
                continue
            failures += 1
            if failures >= tries:
                self._trace(label, f"invalid digit {key}, {tries} tries spent -> {invalid}")
                return "", invalid
            self._trace(label, f"invalid digit {key} (try {failures} of {tries})")
            extra = invalid_prompt

    # ------------------------------------------------------------------ nodes that never wait

    def _run_set(self, node: model.Set) -> str:
        for name, expr in node.assign:
            try:
                value = expr.evaluate(self._vars)
            except ExprError as exc:
                self._trace("set", f"{name}: {exc}; set to None")
                value = None
            self._vars[name] = value
            self._trace("set", f"{name} = {_short(value)}")
        return node.next

    def _run_branch(self, node: model.Branch) -> str:
        for i, (expr, target) in enumerate(node.cases, 1):
            try:
                hit = expr.truth(self._vars)
            except ExprError as exc:
                self._trace("branch", f"case {i}: {exc}; counts as false")
                continue
            if hit:
                self._trace("branch", f"case {i} ({expr.source}) -> {target}")
                return target
        self._trace("branch", f"default -> {node.default}")
        return node.default

    def _run_subflow(self, node: model.Subflow) -> str:
        sub = self._flow.subflows.get(node.flow)
        if sub is None:
            raise _FlowFault(f"subflow {node.flow!r} of node {node.name!r} is not loaded")
        self._stack.append((self._flow, node.next))
        self._flow = sub
        self._trace("subflow", f"{node.flow} -> {sub.start}")
        return sub.start

    def _run_return(self, node: model.Return) -> str:
        if not self._stack:
            raise _FlowFault(f"return node {node.name!r} reached outside a subflow")
        self._flow, route = self._stack.pop()
        self._trace("return", f"-> {route}")
        return route

    # ------------------------------------------------------------------ nodes that wait

    def _run_play(self, node: model.Play) -> _Run:
        media = self._media(node.prompt)
        if not media:
            return node.next
        if node.barge_in and self._typeahead:
            self._trace("play", "skipped: the caller typed ahead")
            return node.next
        pb = self._play(media, node.barge_in)
        if node.barge_in:
            self._input_state = "play"
        try:
            while self._playback == pb:
                event = yield
                if isinstance(event, Dtmf):
                    self._typeahead.append(event.digit)
                    self._trace("play", "barge-in")
                    break
        finally:
            self._input_state = None
        return node.next

    def _run_menu(self, node: model.Menu) -> _Run:
        _, route = yield from self._choose(
            prompt=node.prompt, options=node.options, retries=node.retries,
            timeout_s=node.timeout_s, no_input=node.no_input, invalid=node.invalid,
            no_input_prompt=node.no_input_prompt, invalid_prompt=node.invalid_prompt,
            repeat_key=node.repeat_key, operator_key=node.operator_key,
            operator=node.operator)
        return route

    def _run_gather(self, node: model.Gather) -> _Run:
        tries = node.retries + 1
        failures = 0
        extra: model.Prompt | None = None
        ask = _Ask(node.max_digits, node.finish_key, node.timeout_s, node.inter_digit_timeout_s)
        while True:
            answer = yield from self._collect(self._media(extra) + self._media(node.prompt), ask)
            value = answer.digits.value
            if answer.kind != "digits":
                problem, route, extra = "no input", node.no_input, node.no_input_prompt
            elif len(value) < node.min_digits:
                problem, route, extra = (f"{len(value)} digits, fewer than {node.min_digits}",
                                         node.invalid, node.invalid_prompt)
            elif node.pattern is not None and not _pattern(node.pattern).fullmatch(value):
                problem, route, extra = "refused by the pattern", node.invalid, node.invalid_prompt
            else:
                self._vars[node.var] = value
                self._trace("gather", f"{node.var} = {redact(value)} -> {node.next}")
                return node.next
            failures += 1
            if failures >= tries:
                self._trace("gather", f"{problem}, {tries} tries spent -> {route}")
                return route
            self._trace("gather", f"{problem} (try {failures} of {tries})")

    def _run_lookup(self, node: model.Lookup) -> _Run:
        url = self._render(node.url)
        params = {k: self._render(v) for k, v in node.params.items()}
        rid = self._request_id()
        self._out.append(HttpLookup(rid, node.method, url, params, node.timeout_s))
        done = yield from self._answer()
        if not done.ok:
            self._trace("lookup", f"failed ({redact(done.error)}) -> {node.fallback}")
            return node.fallback
        for var, path in node.into.items():
            self._vars[var] = lookup_path(done.data, path)
        self._trace("lookup", f"{node.method} {redact(url)} ok -> {node.next}")
        return node.next

    def _run_identify(self, node: model.Identify) -> _Run:
        self._secrets = {}
        number = self._render(node.number).strip()
        if not number:
            self._trace("identify", f"no number -> {node.not_found}")
            return node.not_found
        rid = self._request_id()
        self._out.append(FindContact(rid, number, node.campaign))
        done = yield from self._answer()
        data: Mapping[str, Any] = done.data if done.ok else {}
        contact_id = data.get("contact_id")
        if contact_id is None:
            why = "not found" if done.ok else f"failed ({redact(done.error)})"
            self._trace("identify", f"{why} -> {node.not_found}")
            return node.not_found
        self._vars["contact_id"] = contact_id
        self._vars["contact_name"] = data.get("name", "")
        self._vars["contact_campaign"] = data.get("campaign", "")
        fields = data.get("fields")
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                self._vars[f"contact_{key}"] = value
        secrets = data.get("secrets")
        if isinstance(secrets, Mapping):
            self._secrets = {str(k): str(v) for k, v in secrets.items() if v is not None}
        self._trace("identify", f"contact {contact_id} -> {node.found}")
        return node.found

    def _run_verify(self, node: model.Verify) -> _Run:
        self._vars["verified"] = False
        field = node.field or node.method
        secret = self._secrets.get(field, "") if self._vars.get("contact_id") else ""
        if node.method == "dob":
            secret = _dob_digits(secret)
        if not secret:
            self._trace("verify", f"no {field} on record to check -> {node.failed}")
            return node.failed
        # A fixed maximum, never the secret's length: the commands must not tell it. The whole
        # entry is compared, so "43210" is not PIN 4321.
        ask = _Ask(VERIFY_MAX_DIGITS[node.method], "#", node.timeout_s, VERIFY_INTER_DIGIT_S,
                   typeahead=False)
        # As for card data: a key pressed before the PIN prompt (during a message) is not the
        # PIN's first digit, and it was shown unmasked.
        self._typeahead.clear()
        tries = max(1, node.max_tries)
        extra: model.Prompt | None = None
        # PINs and birth dates are as private as card data: recordings pause, DTMF is masked.
        self._secure_on()
        try:
            for attempt in range(1, tries + 1):
                answer = yield from self._collect(
                    self._media(extra) + self._media(node.prompt), ask)
                right = answer.kind == "digits" and _same_secret(answer.digits.value, secret)
                answer.digits.clear()
                if right:
                    self._vars["verified"] = True
                    self._secure_off()
                    self._trace("verify", f"{field} right -> {node.next}")
                    return node.next
                what = "no input" if answer.kind == "no_input" else f"wrong {field}"
                if attempt == tries:
                    route = node.no_input if answer.kind == "no_input" else node.failed
                    self._secure_off()
                    self._trace("verify", f"{what}, {tries} tries spent -> {route}")
                    return route
                self._trace("verify", f"{what} (try {attempt} of {tries})")
                extra = node.invalid_prompt if answer.kind != "no_input" else None
            return node.failed  # not reached: the last attempt returns
        finally:
            self._secure_off()

    def _pay_step(self, node: model.Pay, step: str, label: str, max_digits: int,
                  check: Callable[[str], str | None]
                  ) -> Generator[None, Event, tuple[str, _Digits | None]]:
        """One step of `pay`: ("ok", digits) | ("aborted", None) | (error code, None)."""
        tries = node.retries + 1
        ask = _Ask(max_digits, "#", node.timeout_s, node.inter_digit_timeout_s, _PAY_STOP,
                   typeahead=False)
        extra: model.Prompt | None = None
        for attempt in range(1, tries + 1):
            media = self._media(extra) + self._media(node.prompts.get(step))
            answer = yield from self._collect(media, ask)
            if answer.kind == "key":
                answer.digits.clear()
                return "aborted", None
            error = "no_input" if answer.kind == "no_input" else check(answer.digits.value)
            if error is None:
                return "ok", answer.digits
            answer.digits.clear()
            if attempt == tries:
                self._trace(label, f"{error}, {tries} tries spent")
                return error, None
            self._trace(label, f"{error} (try {attempt} of {tries})")
            extra = None if error == "no_input" else (
                node.prompts.get(error) or node.prompts.get(f"invalid_{step}"))
        return "no_input", None  # not reached: the last attempt returns

    def _run_pay(self, node: model.Pay) -> _Run:
        # Digits typed before the payment started were typed outside SecureMode: never card data.
        self._typeahead.clear()
        self._vars.update(pay_result="", pay_last4="", pay_brand="", pay_token="", pay_error="")
        amount = ""
        if node.amount is not None:
            try:
                value: Any = node.amount.evaluate(self._vars)
            except ExprError as exc:
                self._trace("pay", f"amount: {exc}")
                value = None
            amount_text = _amount_text(value)
            if amount_text is None and node.action == "charge":
                self._vars.update(pay_result="error", pay_error="invalid_amount")
                self._trace("pay", f"no valid amount to charge -> {node.failed}")
                return node.failed
            amount = amount_text or ""
        attempt = self._pay_attempts[node.name] = self._pay_attempts.get(node.name, 0) + 1
        key = f"{self._session_id}:{node.name}:{attempt}"
        self._trace("pay", f"{node.action} {amount} {node.currency}".replace("  ", " "))
        self._secure_on()
        try:
            captured: dict[str, _Digits] = {}
            for step, label in _PAY_STEPS:
                if (step == "cvv" and not node.require_cvv) or (
                        step == "postcode" and not node.require_postcode):
                    continue
                brand = self._vars["pay_brand"]
                max_digits, check = self._pay_check(step, brand)
                outcome, digits = yield from self._pay_step(node, step, label, max_digits, check)
                if outcome == "aborted" or digits is None:
                    return self._pay_stop(node, outcome, captured)
                captured[step] = digits
                if step == "card_number":
                    brand = card_brand(digits.value)
                    self._vars.update(pay_last4=digits.value[-4:], pay_brand=brand)
                    self._trace(label, f"{mask_pan(digits.value)} ({brand}) ok")
                else:
                    self._trace(label, "ok")
            empty = _Digits()
            card = CardDetails(captured["card_number"].value, captured["expiry"].value,
                               captured.get("cvv", empty).value,
                               captured.get("postcode", empty).value)
            for digits in captured.values():
                digits.clear()
            rid = self._request_id()
            self._out.append(PaymentRequest(rid, node.action, card, amount, node.currency,
                                            self._render(node.description), key))
            del card
            self._trace("pay", "sent to the gateway")
            processing = self._media(node.prompts.get("processing"))
            pb = self._play(processing, barge_in=False) if processing else None
            done: ServiceDone | None = None
            while done is None or (pb is not None and self._playback == pb):
                event = yield
                if isinstance(event, ServiceDone):
                    done = event
            self._secure_off()
            if not done.ok:
                result, error, token = "error", redact(done.error) or "gateway_error", ""
                self._trace("gateway", f"error {error}")
            elif done.data.get("approved") is True:
                result, error, token = "approved", "", str(done.data.get("token") or "")
                self._trace("gateway", f"approved token {token}")
            else:
                result, token = "declined", ""
                error = redact(str(done.data.get("error") or "declined"))
                self._trace("gateway", f"declined {error}")
            self._vars.update(pay_result=result, pay_error=error, pay_token=token)
            route = node.next if result == "approved" else node.failed
            yield from self._play_through(
                self._media(node.prompts.get("approved" if result == "approved" else "declined")))
            self._trace("pay", f"{result} -> {route}")
            return route
        finally:
            self._secure_off()

    def _pay_check(self, step: str, brand: str) -> tuple[int, Callable[[str], str | None]]:
        """(most digits, check giving an error code or None) for one pay step."""
        if step == "card_number":
            return 19, lambda v: None if card_number_ok(v) else "invalid_card_number"
        if step == "expiry":
            return 4, lambda v: _expiry_error(v, self._today)
        if step == "cvv":
            length = 4 if brand == "amex" else 3
            return length, lambda v: None if len(v) == length and v.isdigit() else "invalid_cvv"
        return 10, lambda v: None if 3 <= len(v) <= 10 and v.isdigit() else "invalid_postcode"

    def _pay_stop(self, node: model.Pay, outcome: str, captured: Mapping[str, _Digits]) -> str:
        for digits in captured.values():
            digits.clear()
        self._secure_off()
        if outcome == "aborted":
            self._vars.update(pay_result="aborted", pay_error="aborted")
            self._trace("pay", f"aborted by the caller (*) -> {node.aborted}")
            return node.aborted
        self._vars.update(pay_result="error", pay_error=outcome)
        self._trace("pay", f"{outcome} -> {node.failed}")
        return node.failed

    def _run_transfer(self, node: model.Transfer) -> _Run:
        yield from self._play_through(self._media(node.prompt))
        data = {k: self._render(v) for k, v in node.data.items()}
        target = self._render(node.target)
        rid = self._request_id()
        self._out.append(TransferCall(rid, node.kind, target, data))
        done = yield from self._answer()
        if done.ok:
            self._trace("transfer", f"{node.kind} {target}")
            self._finish("transferred")
            return None
        self._trace("transfer", f"{node.kind} {target} failed ({redact(done.error)}) "
                                f"-> {node.failed}")
        return node.failed

    def _run_callback_offer(self, node: model.CallbackOffer) -> _Run:
        rid = self._request_id()
        self._out.append(EstimateWait(rid, node.queue))
        done = yield from self._answer()
        ewt: float | None = None
        if done.ok:
            try:
                ewt = float(done.data.get("ewt_s"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                ewt = None
        if ewt is None or ewt != ewt:  # unknown or NaN
            self._vars["ewt_s"] = None
            self._trace("callback offer", f"wait unknown -> {node.no_wait}")
            return node.no_wait
        self._vars["ewt_s"] = round(ewt)
        if ewt <= node.threshold_s:
            self._trace("callback offer",
                        f"wait {ewt:.0f}s within {node.threshold_s:g}s -> {node.no_wait}")
            return node.no_wait
        self._trace("callback offer", f"wait {ewt:.0f}s over {node.threshold_s:g}s: offering")
        key, route = yield from self._choose(
            prompt=node.prompt, options={node.accept_key: node.accepted,
                                         node.decline_key: node.declined},
            retries=node.retries, timeout_s=node.timeout_s, no_input=node.declined,
            invalid=node.declined, label="callback offer")
        if key != node.accept_key:
            return route
        number = self._render(node.number).strip()
        if not number:
            self._trace("callback offer", f"no number to call back -> {node.declined}")
            return node.declined
        rid = self._request_id()
        self._out.append(CreateCallback(rid, number, node.campaign,
                                        {"queue": node.queue, "ewt_s": str(round(ewt)),
                                         "flow": self._flow.name}))
        done = yield from self._answer()
        if not done.ok:
            self._trace("callback offer", f"callback not created ({redact(done.error)}) "
                                          f"-> {node.declined}")
            return node.declined
        self._vars["callback_contact_id"] = done.data.get("contact_id")
        self._trace("callback offer",
                    f"callback contact {done.data.get('contact_id')} -> {node.accepted}")
        return node.accepted

    def _run_sms(self, node: model.Sms) -> _Run:
        to = self._render(node.to).strip()
        if not to:
            self._trace("sms", f"no number -> {node.failed}")
            return node.failed
        rid = self._request_id()
        self._out.append(SendSms(rid, to, self._render(node.text)))
        done = yield from self._answer()
        if not done.ok:
            self._trace("sms", f"to {to} failed ({redact(done.error)}) -> {node.failed}")
            return node.failed
        self._trace("sms", f"sent to {to} -> {node.next}")
        return node.next

    def _run_record(self, node: model.Record) -> _Run:
        yield from self._play_through(self._media(node.prompt))
        self._n_recording += 1
        name = f"{self._record_prefix}-{self._n_recording}"
        self._out.append(StartRecording(name, node.max_s, node.finish_key))
        self._recording = name
        self._arm(node.max_s + RECORD_GRACE_S)
        self._accepting = True
        try:
            while True:
                event = yield
                if isinstance(event, RecordingFinished):
                    break
                if isinstance(event, TimerFired) or (
                        isinstance(event, Dtmf) and event.digit == node.finish_key):
                    self._out.append(StopRecording(name))
                    break
        finally:
            self._accepting = False
            self._recording = None
            self._disarm()
        self._vars[node.var] = name
        self._trace("record", f"{node.var} = {name} -> {node.next}")
        return node.next

    def _run_dnc(self, node: model.Dnc) -> _Run:
        number = self._render(node.number).strip()
        if not number:
            self._trace("dnc", f"no number -> {node.next}")
            return node.next
        rid = self._request_id()
        self._out.append(AddDnc(rid, number, node.campaign))
        done = yield from self._answer()
        outcome = "added" if done.ok else f"failed ({redact(done.error)})"
        self._trace("dnc", f"{number} {outcome} -> {node.next}")
        return node.next

    def _run_hangup(self, node: model.Hangup) -> _Run:
        yield from self._play_through(self._media(node.prompt))
        self._out.append(HangupCall())
        self._finish("hangup")
        return None


_SIMPLE: dict[type[model.Node], Callable[[Session, Any], str]] = {
    model.Set: Session._run_set,
    model.Branch: Session._run_branch,
    model.Subflow: Session._run_subflow,
    model.Return: Session._run_return,
}
_WAITING: dict[type[model.Node], Callable[[Session, Any], _Run]] = {
    model.Play: Session._run_play,
    model.Menu: Session._run_menu,
    model.Gather: Session._run_gather,
    model.Lookup: Session._run_lookup,
    model.Identify: Session._run_identify,
    model.Verify: Session._run_verify,
    model.Pay: Session._run_pay,
    model.Transfer: Session._run_transfer,
    model.CallbackOffer: Session._run_callback_offer,
    model.Sms: Session._run_sms,
    model.Record: Session._run_record,
    model.Dnc: Session._run_dnc,
    model.Hangup: Session._run_hangup,
}
