"""The simulated payment gateway: deterministic answers for test cards, no network.

`sim_authorize` is the pure decision (used by the `paceline ivr test` walker); `SimGateway`
wraps it as an `ivr.ports.PaymentGateway` for the runner, the emulator tests and the
benchmark, with the idempotency a real gateway gives: the same key answers the same result
and charges once.

Test cards (any expiry and CVV the interpreter accepted):

- 4111111111111111 (visa), 5555555555554444 (mastercard), 378282246310005 (amex): approved;
- 4000000000000002: declined, error "declined";
- 4000000000009995: declined, error "insufficient_funds";
- any other number that passes Luhn: approved; one that does not: error "invalid_number".

Tokens are `"tok_sim_" + sha256(idempotency_key)[:16]`: derived from the key, never from the
card number, so a token reveals nothing about the card.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from typing import Literal

from ivr.ports import PaymentResult
from ivr.protocol import CardDetails, card_number_ok

#: Test card numbers the simulator declines, with the gateway's reason.
DECLINED_CARDS: dict[str, str] = {
    "4000000000000002": "declined",
    "4000000000009995": "insufficient_funds",
}

#: Test card numbers documented as approved (any other valid number is approved too).
APPROVED_CARDS: tuple[str, ...] = ("4111111111111111", "5555555555554444", "378282246310005")


def sim_token(idempotency_key: str) -> str:
    return "tok_sim_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def sim_authorize(card: CardDetails, amount: str, action: Literal["charge", "tokenize"],
                  idempotency_key: str) -> PaymentResult:
    """The simulator's answer for `card` (see the module docstring). Pure and deterministic.

    A charge needs a positive decimal `amount` (else error "invalid_amount"); a tokenize
    ignores it.
    """
    if not card_number_ok(card.number):
        return PaymentResult(approved=False, error="invalid_number")
    reason = DECLINED_CARDS.get(card.number)
    if reason is not None:
        return PaymentResult(approved=False, error=reason)
    if action == "charge":
        try:
            value = Decimal(amount)
        except (InvalidOperation, ValueError):
            return PaymentResult(approved=False, error="invalid_amount")
        if not value.is_finite() or value <= 0:
            return PaymentResult(approved=False, error="invalid_amount")
    return PaymentResult(approved=True, token=sim_token(idempotency_key))


class SimGateway:
    """An in-memory `ivr.ports.PaymentGateway` over `sim_authorize`.

    `requests` counts every call; `charges` counts approved charges actually made (a repeated
    idempotency key answers the first result again and charges nothing more). `charged`
    lists (idempotency key, amount, currency, last4) per charge made: no card data.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.charges = 0
        self.tokens = 0
        self.charged: list[tuple[str, str, str, str]] = []
        self._answers: dict[str, PaymentResult] = {}

    async def charge(self, card: CardDetails, amount: str, currency: str, description: str,
                     idempotency_key: str) -> PaymentResult:
        self.requests += 1
        known = self._answers.get(idempotency_key)
        if known is not None:
            return known
        result = sim_authorize(card, amount, "charge", idempotency_key)
        self._answers[idempotency_key] = result
        if result.approved:
            self.charges += 1
            self.charged.append((idempotency_key, amount, currency, card.last4))
        return result

    async def tokenize(self, card: CardDetails, idempotency_key: str) -> PaymentResult:
        self.requests += 1
        known = self._answers.get(idempotency_key)
        if known is not None:
            return known
        result = sim_authorize(card, "", "tokenize", idempotency_key)
        self._answers[idempotency_key] = result
        if result.approved:
            self.tokens += 1
        return result
