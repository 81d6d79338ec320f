"""The edges an IVR session needs, as interfaces; `ivr.services` holds the implementations.

`ivr.runner.SessionRunner` turns the interpreter's service commands into calls on these and
feeds the answers back as `ServiceDone`. Every method may raise; the runner turns an
exception into `ServiceDone(ok=False, error=describe_exception(exc))`, so an adapter never
needs to catch for the flow's sake. Adapters must not log card data, PINs or dates of birth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ivr.protocol import CardDetails

#: Contact fields only `verify` may see: a directory keeps them out of `ContactRecord.fields`
#: (so out of variables, traces and transfer data), under these lower-case names.
SECRET_FIELDS = frozenset({"pin", "dob", "date_of_birth"})


@dataclass(frozen=True)
class ContactRecord:
    """A contact found by number. `secrets` (pin, dob, ...) are only for `verify`: the
    interpreter never copies them into variables or traces."""

    contact_id: int
    campaign: str
    name: str
    fields: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PaymentResult:
    approved: bool
    token: str = ""
    error: str = ""  # gateway's reason when declined: "declined", "expired_card", ...


class Crm(Protocol):
    async def lookup(self, method: Literal["GET", "POST"], url: str,
                     params: Mapping[str, str], timeout_s: float) -> Mapping[str, Any]:
        """The JSON object the CRM answered; raises on timeout, non-2xx or a non-object."""
        ...


class ContactDirectory(Protocol):
    async def find(self, number: str, campaign: str | None) -> ContactRecord | None: ...


class PaymentGateway(Protocol):
    async def charge(self, card: CardDetails, amount: str, currency: str, description: str,
                     idempotency_key: str) -> PaymentResult: ...

    async def tokenize(self, card: CardDetails, idempotency_key: str) -> PaymentResult: ...


class WaitEstimator(Protocol):
    async def estimate_wait(self, queue: str) -> float:
        """Expected seconds before an agent of `queue` answers a caller joining now."""
        ...


class CallbackBook(Protocol):
    async def create_callback(self, number: str, campaign: str,
                              data: Mapping[str, str]) -> int:
        """A contact in `campaign` due for a call back as soon as possible; its id."""
        ...


class SmsSender(Protocol):
    async def send_sms(self, to: str, text: str) -> str:
        """The provider's message id; raises when the provider refuses."""
        ...


class DncList(Protocol):
    async def add_dnc(self, number: str, campaign: str | None, note: str) -> None: ...


class PaymentStore(Protocol):
    async def record_payment(self, *, session_id: str, flow: str, node: str, ani: str,
                             contact_id: int | None, action: str, amount: str, currency: str,
                             brand: str, last4: str, approved: bool, token: str,
                             error: str) -> None:
        """Keep what PCI allows: token, brand, last 4 digits and the result. Never the PAN."""
        ...
