"""Webhook outbox: call results pushed to the CRM, signed, retried, never lost.

Write side: `enqueue` inserts a row in the caller's transaction, so the row exists iff the state
change that produced it committed (the transactional-outbox pattern). A CRM outage therefore
never loses a result, and a crash between the commit and the POST only delays it.

Delivery side: `OutboxWorker` claims due rows, POSTs them, and records the result. Delivery is
**at least once**: a worker that dies after the CRM answered 2xx but before it recorded the
delivery sends the row again once its lease runs out. Each request carries the outbox id as
`X-Paceline-Delivery` (also inside the signed body as `id`) so the CRM can drop duplicates.

What the CRM receives (`Content-Type: application/json`)::

    POST <url>
    X-Paceline-Event: attempt.finished
    X-Paceline-Delivery: 4711
    X-Paceline-Signature: t=1796300000,v1=<hex HMAC-SHA256 of "1796300000." + body>

    {"id": 4711, "event": "attempt.finished", "created_at": "2026-12-03T13:00:00.000Z",
     "data": {...attempt_payload...}}

The signature covers the timestamp (the time of sending), so a CRM that checks it with `verify`
(tolerance 5 min) rejects a captured request replayed later (the Stripe scheme). Rows are sent
roughly in `next_try_at` order, but concurrently and with retries: the CRM must not rely on order
(each body has the attempt's own times).

Response handling (the worker's retry policy):

- 2xx: delivered.
- 408, 425, 429, 5xx, timeout, connection error: transient; retried with exponential backoff
  (`base_backoff_s * 2**tries`, capped at `max_backoff_s`, jittered). A `Retry-After` in seconds
  on such an answer (usually 429 or 503) is honoured, within the same cap.
- Any other status (3xx, 4xx): the CRM *rejected* the request (`last_error` = "rejected 400").
  It will most likely keep doing so, but the usual cause is configuration that an operator will
  fix (a rotated secret giving 401, a moved endpoint giving 404 or a redirect, a schema change
  giving 422), and then every rejected row must still arrive. So rejected rows are not dropped
  or parked: they are retried at `max_backoff_s` from the first rejection (one request per row
  per 10 minutes by default, instead of hammering a CRM that said no).
- With `max_tries` set, a row that failed that many times is *parked*: `delivered_at` stays
  NULL, `next_try_at` is `PARKED_UNTIL`, `last_error` keeps the reason. `parked()` counts them,
  `retry_parked()` puts them back in the queue. Without `max_tries` (the default) nothing parks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from dialer.db import is_postgres, write_transaction
from dialer.db.models import Attempt, Campaign, Contact, UtcDateTime, WebhookOutbox

log = logging.getLogger(__name__)

#: The event `enqueue` is called with when an attempt ends (dial or SMS).
ATTEMPT_FINISHED = "attempt.finished"

SIGNATURE_HEADER = "X-Paceline-Signature"
DELIVERY_HEADER = "X-Paceline-Delivery"
EVENT_HEADER = "X-Paceline-Event"
USER_AGENT = "Paceline-Webhook/1"

#: `next_try_at` of a parked row: never due until `retry_parked` brings it back.
PARKED_UNTIL = datetime(9999, 1, 1, tzinfo=UTC)

#: Requests in flight per worker. 8 x (a CRM answering in 50 ms) = 160 deliveries/s, above the
#: 100 attempts/s the engine is built for; more would mostly queue up inside the CRM.
DEFAULT_CONCURRENCY = 8

#: `webhook_outbox.last_error` is VARCHAR(200).
_MAX_ERROR_CHARS = 200

#: How much of a CRM's response body is read (and ignored); see `_drain`.
_MAX_RESPONSE_BYTES = 64 * 1024

#: Statuses that mean "try again later", not "no".
_TRANSIENT_4XX = frozenset({408, 425, 429})


class Clock(Protocol):
    """What `OutboxWorker.run` needs of a clock (`dialer.clock` provides it)."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float, /) -> None: ...


# --- write side --------------------------------------------------------------------------------


_ENQUEUE = insert(WebhookOutbox).values(
    event=bindparam("event"),
    attempt_id=bindparam("attempt_id"),
    payload=bindparam("payload", type_=WebhookOutbox.__table__.c.payload.type),
    created_at=bindparam("now", type_=UtcDateTime()),
    next_try_at=bindparam("now", type_=UtcDateTime()),
    tries=0,
)


def enqueue(
    conn: Connection,
    event: str,
    payload: dict[str, Any],
    now: datetime,
    attempt_id: int | None = None,
) -> int:
    """Queue `payload` for delivery as `event`, inside the caller's open transaction.

    Due at once (`next_try_at = now`). Returns the outbox id, which the CRM receives as the
    `X-Paceline-Delivery` idempotency key. `payload` must be JSON-serialisable (see
    `attempt_payload`); the caller's rollback removes the row with everything else.
    """
    result = conn.execute(_ENQUEUE, {"event": event, "attempt_id": attempt_id,
                                     "payload": payload, "now": now})
    pk = result.inserted_primary_key
    assert pk is not None  # an INSERT of one row always has one
    return int(pk[0])


def iso_utc(value: datetime | None) -> str | None:
    """`2026-12-03T13:00:00.000Z`, or None: the one time format of the webhook."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Built once: the engine asks for a payload per finished call, and building the statement
#: cost more than running it.
_PAYLOAD = (
    select(
        Attempt.id,
        Attempt.correlation_id,
        Attempt.campaign_id,
        Campaign.name,
        Attempt.contact_id,
        Contact.external_id,
        Attempt.phone_index,
        Attempt.number,
        Attempt.channel,
        Attempt.placed_at,
        Attempt.answered_at,
        Attempt.connected_at,
        Attempt.ended_at,
        Attempt.wrapup_ended_at,
        Attempt.outcome,
        Attempt.q850_cause,
        Attempt.agent,
        Attempt.disposition,
        Attempt.node_id,
    )
    .join(Campaign, Campaign.id == Attempt.campaign_id)
    .join(Contact, Contact.id == Attempt.contact_id)
    .where(Attempt.id == bindparam("attempt_id"))
)


def attempt_payload(conn: Connection, attempt_id: int) -> dict[str, Any]:
    """The finished attempt `attempt_id` as the CRM sees it: a JSON-safe dict.

    Keys: `attempt_id`, `correlation_id` (the PBX call id), `campaign` {`id`, `name`},
    `contact` {`id`, `external_id`} (`external_id` is the CRM's own key from the import file),
    `phone_index` (1-5), `number` (E.164), `channel` (voice | sms), `placed_at`, `answered_at`,
    `connected_at`, `ended_at`, `wrapup_ended_at` (ISO 8601 UTC or null), `outcome`,
    `q850_cause`, `agent`, `disposition`, `node_id`.

    Nothing card-like can leak through this: the attempts table holds no payment data (card
    numbers only ever pass through IVR DTMF collection, which is never written to attempts),
    and the payload is built from an explicit column list, never from the whole row.

    Raises LookupError if there is no such attempt. Reads in the caller's transaction, so the
    engine can call it right after writing the outcome, before its commit.
    """
    row = conn.execute(_PAYLOAD, {"attempt_id": attempt_id}).one_or_none()
    if row is None:
        raise LookupError(f"attempt {attempt_id} does not exist: cannot build its webhook payload")
    return {
        "attempt_id": row.id,
        "correlation_id": row.correlation_id,
        "campaign": {"id": row.campaign_id, "name": row.name},
        "contact": {"id": row.contact_id, "external_id": row.external_id},
        "phone_index": row.phone_index,
        "number": row.number,
        "channel": row.channel,
        "placed_at": iso_utc(row.placed_at),
        "answered_at": iso_utc(row.answered_at),
        "connected_at": iso_utc(row.connected_at),
        "ended_at": iso_utc(row.ended_at),
        "wrapup_ended_at": iso_utc(row.wrapup_ended_at),
        "outcome": row.outcome,
        "q850_cause": row.q850_cause,
        "agent": row.agent,
        "disposition": row.disposition,
        "node_id": row.node_id,
    }


# --- signing -----------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `timestamp + "." + body` under `secret`."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, now: datetime, body: bytes) -> str:
    """The `X-Paceline-Signature` value for `body` sent at `now`: `t=<unix s>,v1=<hex>`."""
    timestamp = str(int(now.timestamp()))
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: bytes, header: str, body: bytes, now: datetime, tolerance_s: float = 300
) -> bool:
    """Check an `X-Paceline-Signature` header, as a CRM receiving the webhook should.

    True iff the header is well formed, its timestamp is within `tolerance_s` of `now` (either
    way: clocks drift), and one of its `v1=` signatures is the HMAC of the *raw* request body
    (verify before parsing JSON: re-serialising changes the bytes). Several `v1` values are
    accepted so that a sender can sign with an old and a new secret while they are rotated.
    The comparison is constant-time. Never raises on malformed input.
    """
    timestamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)
    # ASCII digits only, and no absurd lengths (int() of a huge string cannot become a float).
    if timestamp is None or not candidates or not _is_small_int(timestamp):
        return False
    if abs(now.timestamp() - int(timestamp)) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    # compare_digest on every candidate (no early exit): timing does not tell which one matched.
    matches = [hmac.compare_digest(expected, c) for c in candidates if c.isascii()]
    return any(matches)


def _is_small_int(text: str) -> bool:
    return 0 < len(text) <= 12 and text.isascii() and text.isdigit()


def request_body(delivery_id: int, event: str, created_at: datetime, payload: Any) -> bytes:
    """The exact bytes POSTed for one outbox row (compact, key-sorted JSON)."""
    envelope = {
        "id": delivery_id,
        "event": event,
        "created_at": iso_utc(created_at),
        "data": payload,
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


# --- status ------------------------------------------------------------------------------------


def _waiting() -> Any:
    return and_(WebhookOutbox.delivered_at.is_(None), WebhookOutbox.next_try_at < PARKED_UNTIL)


def pending(conn: Connection) -> int:
    """Rows not delivered yet and still being retried (parked rows excluded)."""
    return int(conn.scalar(select(func.count()).select_from(WebhookOutbox).where(_waiting())) or 0)


def lag_s(conn: Connection, now: datetime) -> float:
    """Age in seconds of the oldest pending row at `now`; 0.0 when the outbox is drained."""
    oldest = conn.scalar(select(func.min(WebhookOutbox.created_at)).where(_waiting()))
    if oldest is None:
        return 0.0
    return max(0.0, (now - oldest).total_seconds())


def parked(conn: Connection) -> int:
    """Rows given up on after `max_tries` (see the module docstring)."""
    return int(
        conn.scalar(
            select(func.count())
            .select_from(WebhookOutbox)
            .where(WebhookOutbox.delivered_at.is_(None), WebhookOutbox.next_try_at >= PARKED_UNTIL)
        )
        or 0
    )


def purge_delivered(conn: Connection, delivered_before: datetime) -> int:
    """Delete rows delivered before `delivered_before`; returns the count.

    Delivered rows are kept as a delivery log until then. At 100 attempts/s the table grows by
    about 8.6 million rows a day, so a long-running service should purge, e.g. daily with a
    retention of a few days.
    """
    result = conn.execute(
        delete(WebhookOutbox).where(
            WebhookOutbox.delivered_at.is_not(None), WebhookOutbox.delivered_at < delivered_before
        )
    )
    return int(result.rowcount)


def retry_parked(conn: Connection, now: datetime) -> int:
    """Make every parked row due at `now` again (after the CRM was fixed). Returns the count.

    `tries` is kept, so with `max_tries` a row that fails once more is parked again.
    """
    result = conn.execute(
        update(WebhookOutbox)
        .where(WebhookOutbox.delivered_at.is_(None), WebhookOutbox.next_try_at >= PARKED_UNTIL)
        .values(next_try_at=now)
    )
    return int(result.rowcount)


# --- delivery ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: int
    event: str
    created_at: datetime
    payload: Any
    tries: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one POST came to. `retry_after_s` is None for a delivery."""

    id: int
    tries: int
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None


def _safe_url(url: str) -> str:
    """`url` for logs: no credentials, no query string (tokens live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _describe(exc: BaseException) -> str:
    """A short error text without the URL (aiohttp puts host and query in its messages)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    return f"{type(exc).__name__}"


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read (and drop) a small response body: only a fully read response lets aiohttp reuse
    the connection, and at 100 results/s a new TCP/TLS handshake per POST is a waste. A body
    past `_MAX_RESPONSE_BYTES` is left unread; the connection is then closed instead."""
    remaining = _MAX_RESPONSE_BYTES
    while remaining > 0 and (chunk := await resp.content.read(remaining)):
        remaining -= len(chunk)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None or not _is_small_int(value.strip()):
        return None  # the HTTP-date form is rare from APIs; the backoff applies instead
    return float(value.strip())


class OutboxWorker:
    """Delivers due outbox rows to one CRM URL. Several workers (nodes) may share a table.

    Claiming: in one short write transaction, up to `batch` due rows (`delivered_at IS NULL`,
    `next_try_at <= now`, oldest first) get `next_try_at = now + lease`; on PostgreSQL the
    SELECT uses `FOR UPDATE SKIP LOCKED`, so concurrent workers take disjoint rows without
    waiting (on SQLite the write transaction is already exclusive). The lease covers a whole
    batch sent `concurrency` at a time, so it does not run out while a row waits for its turn.
    A worker that dies leaves its rows claimed until the lease ends; then anyone retries them.

    Sending happens outside any transaction, `concurrency` requests at a time, each bounded by
    `timeout_s`. The results of a batch are written in one transaction. Recording is
    conditional: a failure only touches a row whose lease is still ours (`next_try_at` still
    equals our lease end), and a delivery never clears an existing `delivered_at`.

    `session`: an aiohttp session to use (the caller closes it); by default the worker opens
    its own on first use and `aclose()` closes it. Redirects are not followed: the body is
    signed for this URL only, and a redirect means the configuration needs a look.

    Blocking database work runs in a thread (`asyncio.to_thread`): on SQLite the claim may wait
    for the write lock, and the event loop also carries the calls.
    """

    def __init__(
        self,
        engine: Engine,
        url: str,
        secret: bytes,
        *,
        batch: int = 100,
        timeout_s: float = 10,
        base_backoff_s: float = 2,
        max_backoff_s: float = 600,
        max_tries: int | None = None,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        rng: random.Random | None = None,
    ) -> None:
        if batch < 1 or concurrency < 1:
            raise ValueError(f"batch ({batch}) and concurrency ({concurrency}) must be >= 1")
        if timeout_s <= 0 or base_backoff_s <= 0 or max_backoff_s < base_backoff_s:
            raise ValueError(
                "need timeout_s > 0 and 0 < base_backoff_s <= max_backoff_s, got "
                f"timeout_s={timeout_s}, base_backoff_s={base_backoff_s}, "
                f"max_backoff_s={max_backoff_s}"
            )
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(
                f"webhook url must start with http:// or https://, got {_safe_url(url)!r}"
            )
        if max_tries is not None and max_tries < 1:
            raise ValueError(f"max_tries must be >= 1 or None, got {max_tries}")
        self.engine, self.url, self._secret = engine, url, secret
        self.batch, self.timeout_s, self.concurrency = batch, timeout_s, concurrency
        self.base_backoff_s, self.max_backoff_s = base_backoff_s, max_backoff_s
        self.max_tries = max_tries
        self.rng = rng if rng is not None else random.Random()
        self._session = session
        self._own_session = session is None
        # Worst case for the last row of a batch: ceil(batch / concurrency) rounds of timeout_s.
        self.lease_s = timeout_s * (math.ceil(batch / concurrency) + 1)

    def __repr__(self) -> str:  # never the secret, never the query string
        return f"OutboxWorker(url={_safe_url(self.url)!r}, batch={self.batch})"

    async def __aenter__(self) -> OutboxWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if the worker opened it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def backoff_s(self, tries: int) -> float:
        """Delay before the next try of a row that has now failed `tries + 1` times.

        `base * 2**tries` capped at `max_backoff_s`, times a jitter factor in [0.5, 1) so that
        rows that failed together (a CRM outage) do not all come back in the same second.
        """
        # 2**tries grows without bound; past 2**62 the cap has long been reached anyway.
        delay = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** min(tries, 62))
        return delay * (0.5 + self.rng.random() / 2)

    async def deliver_due(self, now: datetime) -> int:
        """Send up to `batch` rows due at `now`; returns how many the CRM accepted (2xx).

        Times recorded (`delivered_at`, the base of the backoff) are `now`, the batch's start.

        Cancellation-safe: a row whose request was cut short is never marked delivered; the
        results that did come back are still recorded, and the unsent rows are released
        (due at `now`) for the next worker. Cancelled during the claim itself, the claimed rows
        wait out their lease (`lease_s`), as after a crash.
        """
        _claimed, delivered = await self._deliver_due(now)
        return delivered

    async def run(self, clock: Clock, interval_s: float = 1.0) -> None:
        """Deliver until cancelled: a full batch goes round again at once, else sleep.

        A database that is briefly unreachable (OperationalError) is logged and retried on the
        next round instead of ending the service. Closes its own session on the way out.
        """
        try:
            while True:
                try:
                    claimed, _ = await self._deliver_due(clock.now())
                except OperationalError as exc:
                    log.warning("webhook outbox: database error, retrying: %s", type(exc).__name__)
                    claimed = 0
                if claimed < self.batch:
                    await clock.sleep(interval_s)
        finally:
            await self.aclose()

    # -- internals --

    async def _deliver_due(self, now: datetime) -> tuple[int, int]:
        lease_until = now + timedelta(seconds=self.lease_s)
        rows = await asyncio.to_thread(self._claim, now, lease_until)
        if not rows:
            return 0, 0
        if self._session is None:
            self._session = aiohttp.ClientSession()
        session = self._session
        outcomes: list[_Outcome] = []
        limit = asyncio.Semaphore(self.concurrency)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def send(row: _Claimed) -> None:
            async with limit:
                # Sign with the time of sending: the last rows of a big batch against a slow
                # CRM go out minutes after `now`, and the CRM checks the timestamp's age.
                sent_at = now + timedelta(seconds=loop.time() - started)
                outcomes.append(await self._post(session, row, sent_at))

        try:
            async with asyncio.TaskGroup() as tg:
                for row in rows:
                    tg.create_task(send(row))
        finally:
            # Runs on cancellation too; the thread finishes even if we are cancelled again.
            done = {o.id for o in outcomes}
            unsent = [r.id for r in rows if r.id not in done]
            await asyncio.shield(
                asyncio.to_thread(self._record, list(outcomes), unsent, now, lease_until)
            )
        delivered = sum(1 for o in outcomes if o.delivered)
        return len(rows), delivered

    def _claim(self, now: datetime, lease_until: datetime) -> list[_Claimed]:
        t = WebhookOutbox
        with write_transaction(self.engine) as conn:
            query = (
                select(t.id, t.event, t.created_at, t.payload, t.tries)
                .where(t.delivered_at.is_(None), t.next_try_at <= now)
                .order_by(t.next_try_at, t.id)
                .limit(self.batch)
            )
            if is_postgres(conn):
                # Rows another worker is claiming right now are skipped, not waited for.
                query = query.with_for_update(skip_locked=True, of=t)
            rows = [_Claimed(*r) for r in conn.execute(query)]
            if rows:
                conn.execute(
                    update(t).where(t.id.in_([r.id for r in rows])).values(next_try_at=lease_until)
                )
        return rows

    async def _post(
        self, session: aiohttp.ClientSession, row: _Claimed, sent_at: datetime
    ) -> _Outcome:
        body = request_body(row.id, row.event, row.created_at, row.payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: row.event,
            DELIVERY_HEADER: str(row.id),
            SIGNATURE_HEADER: signature_header(self._secret, sent_at, body),
        }
        try:
            async with session.post(
                self.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers)
                await _drain(resp)
        # OSError: socket errors aiohttp does not wrap; ValueError: a header or URL it refuses.
        # Either way the row stays queued: a send problem must not end the dialer.
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = _describe(exc)
            log.info("webhook %s to %s failed: %s", row.id, _safe_url(self.url), error)
            return _Outcome(row.id, row.tries, error, self.backoff_s(row.tries))
        if 200 <= status < 300:
            return _Outcome(row.id, row.tries)
        if status >= 500 or status in _TRANSIENT_4XX:
            delay = self.backoff_s(row.tries)
            if retry_after is not None:
                delay = min(self.max_backoff_s, max(delay, retry_after))
            log.info("webhook %s to %s: HTTP %s", row.id, _safe_url(self.url), status)
            return _Outcome(row.id, row.tries, f"HTTP {status}", delay)
        log.warning(
            "webhook %s rejected by %s: HTTP %s; retrying every %s s",
            row.id,
            _safe_url(self.url),
            status,
            self.max_backoff_s,
        )
        return _Outcome(row.id, row.tries, f"rejected {status}", self.max_backoff_s)

    def _failure_row(self, o: _Outcome, now: datetime) -> dict[str, Any]:
        assert o.error is not None and o.retry_after_s is not None
        tries = o.tries + 1
        if self.max_tries is not None and tries >= self.max_tries:
            next_try = PARKED_UNTIL
            log.warning("webhook %s parked after %s tries: %s", o.id, tries, o.error)
        else:
            next_try = now + timedelta(seconds=o.retry_after_s)
        return {
            "row_id": o.id,
            "new_tries": tries,
            "new_next_try_at": next_try,
            "new_error": o.error[:_MAX_ERROR_CHARS],
        }

    def _record(
        self,
        outcomes: Sequence[_Outcome],
        unsent: Sequence[int],
        now: datetime,
        lease_until: datetime,
    ) -> None:
        t = WebhookOutbox
        ours = and_(t.delivered_at.is_(None), t.next_try_at == lease_until)
        delivered = [o.id for o in outcomes if o.delivered]
        with write_transaction(self.engine) as conn:
            if delivered:
                conn.execute(
                    update(t)
                    .where(t.id.in_(delivered), t.delivered_at.is_(None))
                    .values(delivered_at=now, tries=t.tries + 1)
                )
            failed = [self._failure_row(o, now) for o in outcomes if not o.delivered]
            if failed:
                conn.execute(
                    update(t)
                    .where(t.id == bindparam("row_id"), ours)
                    .values(
                        tries=bindparam("new_tries"),
                        next_try_at=bindparam("new_next_try_at", type_=t.next_try_at.type),
                        last_error=bindparam("new_error"),
                    ),
                    failed,
                )
            if unsent:
                conn.execute(update(t).where(t.id.in_(list(unsent)), ours).values(next_try_at=now))
