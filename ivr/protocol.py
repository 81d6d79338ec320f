"""What the IVR interpreter is fed (events) and what it asks for (commands).

The interpreter (`ivr.interpreter.Session`) is sans-IO: a driver (ARI, the emulator, the
`paceline ivr test` walker, the benchmark) turns what happens on the call into these events,
and carries out the commands it gets back, in order. Every service command carries a
`request_id`; its answer comes back as one `ServiceDone` with the same id. Timers likewise:
`StartTimer(id)` is answered by `TimerFired(id)` unless `CancelTimer(id)` came first (a
driver may still deliver a fired timer that raced the cancel; the interpreter ignores stale
ids).

PCI: card digits exist in one place only, `CardDetails`, which never shows them in `repr` or
`str`. Between `SecureMode(True)` and `SecureMode(False)` a driver must pause the call's
recordings and must not put the caller's DTMF digits in anything it logs or emits. The
interpreter's own `Trace` lines are already masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cti.redact import luhn_ok, mask_pan

# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Dtmf:
    """The caller pressed `digit` (0-9, *, #, A-D)."""

    digit: str


@dataclass(frozen=True)
class PlaybackFinished:
    """A `Play` ended (played out, stopped, or failed: the flow goes on either way)."""

    playback_id: str


@dataclass(frozen=True)
class TimerFired:
    timer_id: str


@dataclass(frozen=True)
class ServiceDone:
    """The answer to a service command. `ok` False: `error` says why (already safe to log)."""

    request_id: str
    ok: bool
    #: Left out of the repr: a contact's answer carries the secrets `verify` compares.
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    error: str = ""


@dataclass(frozen=True)
class RecordingFinished:
    name: str


@dataclass(frozen=True)
class CallerHangup:
    """The caller hung up (or the channel is gone)."""


Event = Dtmf | PlaybackFinished | TimerFired | ServiceDone | RecordingFinished | CallerHangup

# ----------------------------------------------------------------------------- card data

#: Card brands by IIN prefix and valid lengths (the common schemes; anything else: "unknown").
CARD_BRANDS: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("amex", ("34", "37"), (15,)),
    ("visa", ("4",), (13, 16, 19)),
    ("mastercard", tuple(str(p) for p in range(51, 56))
     + tuple(str(p) for p in range(2221, 2721)), (16,)),
    ("discover", ("6011", "65", *tuple(str(p) for p in range(644, 650))), (16, 19)),
    ("diners", ("36", "38", "300", "301", "302", "303", "304", "305"), (14, 16)),
    ("jcb", tuple(str(p) for p in range(3528, 3590)), (16, 17, 18, 19)),
    ("maestro", ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763"),
     tuple(range(12, 20))),
)  # fmt: skip


def card_brand(number: str) -> str:
    """The scheme of a card number by prefix and length, or "unknown"."""
    for brand, prefixes, lengths in CARD_BRANDS:
        if len(number) in lengths and number.startswith(prefixes):
            return brand
    return "unknown"


def card_number_ok(number: str) -> bool:
    """12 to 19 digits that pass Luhn (the brand may be unknown: gateways decide those)."""
    return number.isdigit() and 12 <= len(number) <= 19 and luhn_ok(number)


class CardDetails:
    """Card data captured by a `pay` node, held in memory only until the gateway call.

    `repr()` and `str()` show the brand and last four digits, nothing else, so the object can
    travel through logs, exceptions and tracebacks without leaking. Read `number`, `cvv`
    only in a gateway adapter, and never copy them elsewhere.
    """

    __slots__ = ("_cvv", "_number", "expiry", "postcode")

    def __init__(self, number: str, expiry: str, cvv: str = "", postcode: str = "") -> None:
        self._number = number
        self._cvv = cvv
        self.expiry = expiry  # MMYY: not a secret under PCI DSS when stored without the PAN
        self.postcode = postcode

    @property
    def number(self) -> str:
        return self._number

    @property
    def cvv(self) -> str:
        return self._cvv

    @property
    def last4(self) -> str:
        return self._number[-4:]

    @property
    def brand(self) -> str:
        return card_brand(self._number)

    @property
    def masked(self) -> str:
        return mask_pan(self._number)

    def __repr__(self) -> str:
        return f"CardDetails({self.brand} {self.masked})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would copy the digits somewhere (a cache, a queue, a file): refuse it.
        raise TypeError("CardDetails cannot be pickled")


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Play:
    """Play `media` (ARI media URIs, in order) on the call; answer with PlaybackFinished.

    `barge_in`: a digit stops the playback (the driver stops it at once on the first DTMF,
    and still delivers the digit as a `Dtmf` event).
    """

    playback_id: str
    media: tuple[str, ...]
    language: str
    barge_in: bool


@dataclass(frozen=True)
class StopPlayback:
    playback_id: str


@dataclass(frozen=True)
class StartTimer:
    timer_id: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    timer_id: str


@dataclass(frozen=True)
class HttpLookup:
    request_id: str
    method: Literal["GET", "POST"]
    url: str
    params: Mapping[str, str]
    timeout_s: float


@dataclass(frozen=True)
class FindContact:
    """Look the number up in Paceline's contacts; answer data: see `ivr.ports.ContactRecord`."""

    request_id: str
    number: str
    campaign: str | None


@dataclass(frozen=True)
class PaymentRequest:
    """Charge or tokenize. Answer data: `approved` (bool), `token`, `error` (when declined)."""

    request_id: str
    action: Literal["charge", "tokenize"]
    card: CardDetails
    amount: str  # decimal text, e.g. "42.50": no float rounding on money
    currency: str
    description: str
    #: `<session>:<node>:<n>`, n counting the caller's entries into the pay node: the same
    #: request sent twice charges once; a caller who comes back to pay starts a new payment
    #: (after a gateway timeout the flow should say so rather than loop back to pay).
    idempotency_key: str


@dataclass(frozen=True)
class EstimateWait:
    """Answer data: `ewt_s` (float seconds)."""

    request_id: str
    queue: str


@dataclass(frozen=True)
class CreateCallback:
    """Create a callback contact; answer data: `contact_id`."""

    request_id: str
    number: str
    campaign: str
    data: Mapping[str, str]


@dataclass(frozen=True)
class SendSms:
    request_id: str
    to: str
    text: str


@dataclass(frozen=True)
class AddDnc:
    request_id: str
    number: str
    campaign: str | None


@dataclass(frozen=True)
class TransferCall:
    """Hand the call over. ok: the call has left the IVR (the session then ends)."""

    request_id: str
    kind: Literal["group", "queue", "external"]
    target: str
    data: Mapping[str, str]


@dataclass(frozen=True)
class StartRecording:
    """Record the caller; answer: RecordingFinished(name)."""

    name: str
    max_s: float
    finish_key: str


@dataclass(frozen=True)
class StopRecording:
    name: str


@dataclass(frozen=True)
class SecureMode:
    """Card digits are being collected (on) or no longer (off); see the module docstring."""

    on: bool


@dataclass(frozen=True)
class HangupCall:
    cause: int = 16


@dataclass(frozen=True)
class Trace:
    """One step of the path, for people: `node` entered or `what` happened there.

    `detail` never holds a digit typed during SecureMode, a PIN or a date of birth.
    """

    node: str
    what: str
    detail: str = ""


@dataclass(frozen=True)
class Finished:
    """The session is over: `reason` is hangup | transferred | caller_hangup | error."""

    reason: str
    node: str


ServiceCommand = (
    HttpLookup | FindContact | PaymentRequest | EstimateWait | CreateCallback | SendSms
    | AddDnc | TransferCall
)
Command = (
    Play | StopPlayback | StartTimer | CancelTimer | ServiceCommand | StartRecording
    | StopRecording | SecureMode | HangupCall | Trace | Finished
)
