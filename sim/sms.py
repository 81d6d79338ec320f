"""The simulator's SMS provider: an in-memory SMSC with seeded delivery, receipts and replies.

`SimSmsProvider` implements `dialer.sms.SmsProvider`. Each accepted text gets an id
(`sim-1`, `sim-2`, ...) and a fate drawn from a seeded generator at send time, in send order,
so that a run is reproducible: delivered (`delivered_p`), failed (`failed_p`), or no final
receipt at all (the rest: a receipt that never came). The receipt is pushed to `on_receipt`
after a delay drawn from `receipt_delay_s`, in simulated seconds; the wall-clock wait is
`seconds * time_scale`, the same convention as the PBX emulator (`sim.pbx.core`).

A delivered text may draw a customer reply from `replies` (probability, text), pushed to
`on_inbound` after a delay drawn from `reply_delay_s`. Tests inject replies themselves with
`reply(number, text)`, which awaits the handler directly.

Faults: numbers in `reject_numbers` are refused permanently (an invalid destination), and
while `outage` is set every send fails temporarily (the gateway is down).

Every timer is a task owned by the provider; `close()` (or leaving `async with`) cancels and
awaits them. `settle()` waits until none is left. A handler that raises is logged and its
exception kept in `errors`: one bad callback must not stop the other texts' receipts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dialer.sms import DeliveryReceipt, SmsError, SmsStatus

log = logging.getLogger(__name__)

ReceiptHandler = Callable[[DeliveryReceipt], Awaitable[None]]
InboundHandler = Callable[[str, str], Awaitable[object]]


@dataclass
class SimSms:
    """One text the simulated SMSC accepted, and what became of it."""

    id: str
    to: str
    body: str
    ref: str
    #: sent until its receipt is pushed; then delivered or failed (or sent forever).
    status: SmsStatus = SmsStatus.SENT


class SimSmsProvider:
    """An in-memory SMSC; see the module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        delivered_p: float = 0.95,
        failed_p: float = 0.03,
        receipt_delay_s: tuple[float, float] = (1.0, 10.0),
        replies: Sequence[tuple[float, str]] = (),
        reply_delay_s: tuple[float, float] = (30.0, 600.0),
        time_scale: float = 1.0,
        on_receipt: ReceiptHandler | None = None,
        on_inbound: InboundHandler | None = None,
    ) -> None:
        for name, p in (("delivered_p", delivered_p), ("failed_p", failed_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: a probability in [0, 1], got {p}")
        if delivered_p + failed_p > 1.0:
            raise ValueError(f"delivered_p + failed_p must be <= 1, got {delivered_p + failed_p}")
        if sum(p for p, _ in replies) > 1.0 or any(p < 0 for p, _ in replies):
            raise ValueError("replies: probabilities must be >= 0 and sum to at most 1")
        for name, (lo, hi) in (("receipt_delay_s", receipt_delay_s),
                               ("reply_delay_s", reply_delay_s)):
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: give (low, high) with 0 <= low <= high")
        if time_scale < 0:
            raise ValueError(f"time_scale: must be >= 0, got {time_scale}")
        self._rng = random.Random(seed)
        self.delivered_p, self.failed_p = delivered_p, failed_p
        self.receipt_delay_s, self.reply_delay_s = receipt_delay_s, reply_delay_s
        self.replies = tuple(replies)
        self.time_scale = time_scale
        self.on_receipt, self.on_inbound = on_receipt, on_inbound
        #: Destinations refused permanently, as an SMSC refuses an unallocated number.
        self.reject_numbers: set[str] = set()
        #: While True every send fails temporarily.
        self.outage = False
        self.sent: list[SimSms] = []
        self.by_id: dict[str, SimSms] = {}
        #: Inbound texts pushed to `on_inbound` (injected or drawn), in order.
        self.inbound: list[tuple[str, str]] = []
        #: Exceptions raised by the handlers.
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def set_handlers(
        self, *, on_receipt: ReceiptHandler | None = None, on_inbound: InboundHandler | None = None
    ) -> None:
        """Connect the callbacks after construction (the service needs the provider first)."""
        self.on_receipt, self.on_inbound = on_receipt, on_inbound

    async def __aenter__(self) -> SimSmsProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, to: str, body: str, *, ref: str) -> str:
        if self._closed:
            raise SmsError("the simulated SMSC is closed", permanent=False)
        if self.outage:
            raise SmsError("the simulated SMSC is unavailable (outage)", permanent=False)
        if to in self.reject_numbers:
            raise SmsError(f"the simulated SMSC refused {to}: unknown subscriber", permanent=True)
        if not body:
            raise SmsError("the simulated SMSC refused an empty text", permanent=True)
        sms = SimSms(f"sim-{len(self.sent) + 1}", to, body, ref)
        self.sent.append(sms)
        self.by_id[sms.id] = sms
        # Every draw happens now, in send order, whatever the handlers or timers do later.
        u = self._rng.random()
        fate = (
            SmsStatus.DELIVERED if u < self.delivered_p
            else SmsStatus.FAILED if u < self.delivered_p + self.failed_p
            else None
        )
        delay = self._rng.uniform(*self.receipt_delay_s)
        reply = self._draw_reply() if fate is SmsStatus.DELIVERED else None
        reply_delay = self._rng.uniform(*self.reply_delay_s)
        if fate is not None:
            self._spawn(self._deliver(sms, fate, delay, reply, reply_delay))
        return sms.id

    def _draw_reply(self) -> str | None:
        u, acc = self._rng.random(), 0.0
        for p, text in self.replies:
            acc += p
            if u < acc:
                return text
        return None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) * self.time_scale)

    async def _deliver(
        self, sms: SimSms, fate: SmsStatus, delay: float, reply: str | None, reply_delay: float
    ) -> None:
        await self._sleep(delay)
        sms.status = fate
        error = None if fate is SmsStatus.DELIVERED else "simulated: absent subscriber"
        if self.on_receipt is not None:
            await self._call(self.on_receipt(DeliveryReceipt(sms.id, fate, error)))
        if reply is not None:
            await self._sleep(reply_delay)
            self.inbound.append((sms.to, reply))
            if self.on_inbound is not None:
                await self._call(self.on_inbound(sms.to, reply))

    async def _call(self, call: Awaitable[object]) -> None:
        try:
            await call
        except Exception as exc:
            log.exception("simulated SMSC: a handler failed")
            self.errors.append(exc)

    async def reply(self, number: str, text: str) -> None:
        """Inject an inbound text from `number` now; the handler's exceptions propagate."""
        self.inbound.append((number, text))
        if self.on_inbound is not None:
            await self.on_inbound(number, text)

    async def settle(self) -> None:
        """Wait until every pending receipt and drawn reply has been pushed."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel pending receipts and replies and wait for them; later sends fail."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


__all__ = ["SimSms", "SimSmsProvider"]
