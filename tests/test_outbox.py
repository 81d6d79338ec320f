"""The webhook outbox against a real local HTTP server playing the CRM (SQLite and PostgreSQL).

Time is passed in (`now`), so backoff is checked by stepping the clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import Engine, func, insert, select, text

from dialer.db import make_engine, write_transaction
from dialer.db.models import Attempt, WebhookOutbox
from dialer.outbox import (
    ATTEMPT_FINISHED,
    DELIVERY_HEADER,
    EVENT_HEADER,
    PARKED_UNTIL,
    SIGNATURE_HEADER,
    OutboxWorker,
    attempt_payload,
    enqueue,
    lag_s,
    parked,
    pending,
    purge_delivered,
    request_body,
    retry_parked,
    sign,
    signature_header,
    verify,
)
from tests.factories import add_contacts, make_campaign

NOW = datetime(2026, 12, 3, 13, 0, tzinfo=UTC)
SECRET = b"whsec-test-0123456789"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


# --- the CRM -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Crm:
    """A webhook receiver that checks every request the way a CRM implementer would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/paceline"
        self.status = 200
        self.headers: dict[str, str] = {}
        self.now: Callable[[], datetime] = lambda: NOW
        self.delay_s = 0.0
        #: Set to an Event to hold the next request until it is set (or the CRM stops); the held
        #: request then gets HTTP 503. Later requests are answered normally.
        self.hold_next: asyncio.Event | None = None
        self._held: list[asyncio.Event] = []
        self.received: list[dict[str, Any]] = []  # verified bodies, in arrival order
        self.bad_signatures = 0
        self.request_seen = asyncio.Event()
        self.in_flight = self.max_in_flight = 0
        self.client_ports: set[int] = set()
        self.user_agents: set[str] = set()
        #: Answer 200 with a body sent in two parts, the second after a pause (a slow CRM).
        self.slow_body = False
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.request_seen.set()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.client_ports.add(peer[1] if peer else -1)
        self.user_agents.add(request.headers.get("User-Agent", ""))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold_next is not None:
                gate, self.hold_next = self.hold_next, None
                self._held.append(gate)
                await gate.wait()
                return web.Response(status=503)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not verify(SECRET, request.headers[SIGNATURE_HEADER], body, self.now()):
                self.bad_signatures += 1
                return web.Response(status=401)
            if self.status == 200:
                doc = json.loads(body)
                assert str(doc["id"]) == request.headers[DELIVERY_HEADER]
                assert doc["event"] == request.headers[EVENT_HEADER]
                self.received.append(doc)
            if self.slow_body and self.status == 200:
                resp = web.StreamResponse()
                await resp.prepare(request)
                await resp.write(b'{"ok":')
                await asyncio.sleep(0.01)
                await resp.write(b"true}")
                await resp.write_eof()
                return resp
            return web.Response(status=self.status, headers=self.headers)
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/paceline", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        for gate in self._held:
            gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivery_counts(self) -> Counter[int]:
        return Counter(int(doc["id"]) for doc in self.received)


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    """A CRM that is up and answers 200."""
    c = Crm(free_port())
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def crm_down() -> AsyncIterator[Crm]:
    """A CRM whose port nobody listens on until the test calls `start()`."""
    c = Crm(free_port())
    yield c
    await c.stop()


@pytest.fixture
async def worker_factory(engine: Engine) -> AsyncIterator[Callable[..., OutboxWorker]]:
    import random

    workers: list[OutboxWorker] = []

    def make(url: str, **kw: Any) -> OutboxWorker:
        kw.setdefault("rng", random.Random(5))
        w = OutboxWorker(kw.pop("engine", engine), url, kw.pop("secret", SECRET), **kw)
        workers.append(w)
        return w

    yield make
    for w in workers:
        await w.aclose()


# --- data --------------------------------------------------------------------------------------


def enqueue_rows(engine: Engine, n: int, now: datetime = NOW) -> list[int]:
    with write_transaction(engine) as conn:
        return [enqueue(conn, ATTEMPT_FINISHED, {"n": i}, now) for i in range(n)]


def outbox_row(engine: Engine, row_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(WebhookOutbox).where(WebhookOutbox.id == row_id)).one()


def add_attempt(engine: Engine, **values: Any) -> int:
    cid = make_campaign(engine, NOW, name="Spring renewals")
    [contact_id] = add_contacts(engine, cid, [{"external_id": "CRM-0042"}], NOW)
    row = {
        "contact_id": contact_id, "campaign_id": cid, "step": 0, "phone_index": 1,
        "number": "+12125550142", "channel": "voice", "placed_at": NOW,
        "answered_at": at(12), "connected_at": at(12.5), "ended_at": at(95),
        "wrapup_ended_at": at(120), "outcome": "human", "q850_cause": 16,
        "agent": "agent101", "disposition": "SALE", "node_id": "node-a",
        "correlation_id": "1764766800.42", "call_state": None,
    }
    row.update(values)
    with write_transaction(engine) as conn:
        return int(conn.execute(insert(Attempt).values(**row)).inserted_primary_key[0])  # type: ignore[index]


# --- enqueue and payload -----------------------------------------------------------------------


def test_enqueued_row_exists_only_if_the_callers_transaction_commits(engine: Engine) -> None:
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        enqueue(conn, ATTEMPT_FINISHED, {"a": 1}, NOW, attempt_id=None)
        raise RuntimeError("the state change failed")
    with engine.connect() as conn:
        assert pending(conn) == 0
    [row_id] = enqueue_rows(engine, 1)
    row = outbox_row(engine, row_id)
    assert (row.event, row.payload, row.tries, row.delivered_at) == (
        ATTEMPT_FINISHED, {"n": 0}, 0, None)
    assert row.created_at == row.next_try_at == NOW
    with engine.connect() as conn:
        assert pending(conn) == 1
        assert lag_s(conn, at(42)) == 42.0


def test_attempt_payload_is_json_safe_with_the_fields_a_crm_needs(engine: Engine) -> None:
    attempt_id = add_attempt(engine)
    with engine.connect() as conn:
        payload = attempt_payload(conn, attempt_id)
    assert json.loads(json.dumps(payload)) == payload
    assert payload["attempt_id"] == attempt_id
    assert payload["campaign"]["name"] == "Spring renewals"
    assert payload["contact"]["external_id"] == "CRM-0042"
    assert payload["correlation_id"] == "1764766800.42"
    assert (payload["phone_index"], payload["number"], payload["channel"]) == (
        1, "+12125550142", "voice")
    assert payload["placed_at"] == "2026-12-03T13:00:00.000Z"
    assert payload["connected_at"] == "2026-12-03T13:00:12.500Z"
    assert payload["ended_at"] == "2026-12-03T13:01:35.000Z"
    assert (payload["outcome"], payload["q850_cause"], payload["agent"],
            payload["disposition"], payload["node_id"]) == (
        "human", 16, "agent101", "SALE", "node-a")
    assert set(payload) == {
        "attempt_id", "correlation_id", "campaign", "contact", "phone_index", "number",
        "channel", "placed_at", "answered_at", "connected_at", "ended_at", "wrapup_ended_at",
        "outcome", "q850_cause", "agent", "disposition", "node_id",
    }


def test_attempt_payload_of_an_unanswered_call_has_null_times(engine: Engine) -> None:
    attempt_id = add_attempt(engine, answered_at=None, connected_at=None, wrapup_ended_at=None,
                             agent=None, disposition=None, outcome="busy", q850_cause=17)
    with engine.connect() as conn:
        payload = attempt_payload(conn, attempt_id)
        with pytest.raises(LookupError, match="attempt 999999"):
            attempt_payload(conn, 999999)
    assert payload["answered_at"] is None and payload["agent"] is None
    assert payload["outcome"] == "busy"


# --- signatures --------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"id":1}'
    assert sign(SECRET, "1796302800", body) == hmac.new(
        SECRET, b"1796302800." + body, hashlib.sha256).hexdigest()
    header = signature_header(SECRET, NOW, body)
    assert header == f"t={int(NOW.timestamp())},v1={sign(SECRET, str(int(NOW.timestamp())), body)}"
    assert verify(SECRET, header, body, NOW)
    assert verify(SECRET, header, body, at(299)) and verify(SECRET, header, body, at(-299))


def test_verify_rejects_wrong_secret_tampering_replays_and_garbage() -> None:
    body = b'{"id":1,"data":{"outcome":"human"}}'
    header = signature_header(SECRET, NOW, body)
    assert not verify(b"another-secret", header, body, NOW)
    assert not verify(SECRET, header, body.replace(b"human", b"busy"), NOW)
    assert not verify(SECRET, header, body, at(301)), "a replay 5 min later must fail"
    assert not verify(SECRET, header, body, at(3600), tolerance_s=300)
    assert verify(SECRET, header, body, at(3600), tolerance_s=3601)
    for bad in ("", "t=", "v1=abc", f"v1={sign(SECRET, '1', body)}", "t=abc,v1=00",
                "t=\u0661\u0662,v1=00", "garbage", f"t={'9' * 40},v1=00",
                header.replace("v1=", "v1=\u00e9")):
        assert not verify(SECRET, bad, body, NOW), bad


def test_verify_accepts_any_of_several_signatures_during_a_secret_rotation() -> None:
    body = b"{}"
    t = str(int(NOW.timestamp()))
    header = f"t={t},v1={sign(b'old', t, body)},v1={sign(b'new', t, body)}"
    assert verify(b"new", header, body, NOW) and verify(b"old", header, body, NOW)
    assert not verify(b"other", header, body, NOW)


def test_request_body_is_signed_bytes_with_the_delivery_id_inside() -> None:
    body = request_body(7, ATTEMPT_FINISHED, NOW, {"b": 1, "a": [1, 2]})
    assert body == (b'{"created_at":"2026-12-03T13:00:00.000Z","data":{"a":[1,2],"b":1},'
                    b'"event":"attempt.finished","id":7}')


# --- delivery ----------------------------------------------------------------------------------


async def test_delivers_every_due_row_once_signed_and_marks_it_delivered(
    engine: Engine, crm: Crm, worker_factory: Callable[..., OutboxWorker]
) -> None:
    ids = enqueue_rows(engine, 25)
    enqueue_rows(engine, 1, now=at(60))  # not due yet
    worker = worker_factory(crm.url)
    assert await worker.deliver_due(NOW) == 25
    assert crm.bad_signatures == 0
    assert crm.delivery_counts() == Counter(ids)
    assert [doc["data"]["n"] for doc in crm.received if doc["id"] == ids[3]] == [3]
    assert await worker.deliver_due(at(1)) == 0, "delivered rows are never sent again"
    assert outbox_row(engine, ids[0]).delivered_at == NOW
    assert outbox_row(engine, ids[0]).tries == 1
    with engine.connect() as conn:
        assert pending(conn) == 1
    crm.now = lambda: at(60)
    assert await worker.deliver_due(at(60)) == 1
    with engine.connect() as conn:
        assert pending(conn) == 0 and lag_s(conn, at(61)) == 0.0
    with write_transaction(engine) as conn:
        assert purge_delivered(conn, at(60)) == 25, "only rows delivered before the cut-off"
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(WebhookOutbox)) == 1


async def test_crm_down_loses_nothing_backs_off_and_delivers_once_when_back(
    engine: Engine, crm_down: Crm, worker_factory: Callable[..., OutboxWorker]
) -> None:
    ids = enqueue_rows(engine, 3)
    worker = worker_factory(crm_down.url, base_backoff_s=2, max_backoff_s=60)
    now = NOW
    delays = []
    for tries in range(1, 7):
        assert await worker.deliver_due(now) == 0
        rows = [outbox_row(engine, i) for i in ids]
        assert all(r.tries == tries and r.delivered_at is None for r in rows)
        assert rows[0].last_error.startswith("connection failed"), rows[0].last_error
        delay = (rows[0].next_try_at - now).total_seconds()
        cap = min(60.0, 2.0 * 2 ** (tries - 1))
        assert cap / 2 <= delay <= cap, (tries, delay)
        delays.append(delay)
        # Not due before its time: nothing is claimed, nothing is sent.
        soonest = min(r.next_try_at for r in rows)
        assert await worker._deliver_due(soonest - timedelta(milliseconds=1)) == (0, 0)
        now = max(r.next_try_at for r in rows)
    assert delays[4] > delays[0] * 4, delays
    with engine.connect() as conn:
        assert pending(conn) == 3
        assert lag_s(conn, now) == (now - NOW).total_seconds()
    await crm_down.start()
    crm_down.now = lambda: now
    assert await worker.deliver_due(now) == 3
    assert await worker.deliver_due(now + timedelta(hours=1)) == 0
    assert crm_down.delivery_counts() == Counter(ids)
    assert outbox_row(engine, ids[0]).last_error.startswith("connection failed"), "history kept"


async def test_503_is_retried_and_retry_after_is_honoured_within_the_cap(
    sqlite_engine: Engine, crm: Crm
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    async with OutboxWorker(sqlite_engine, crm.url, SECRET, max_backoff_s=120) as worker:
        crm.status, crm.headers = 503, {"Retry-After": "30"}
        assert await worker.deliver_due(NOW) == 0
        row = outbox_row(sqlite_engine, row_id)
        assert (row.last_error, row.next_try_at) == ("HTTP 503", at(30))
        crm.status, crm.headers = 429, {"Retry-After": "86400"}
        assert await worker.deliver_due(at(30)) == 0
        assert outbox_row(sqlite_engine, row_id).next_try_at == at(30 + 120)
        crm.status, crm.headers = 200, {}
        crm.now = lambda: at(150)
        assert await worker.deliver_due(at(150)) == 1
    assert crm.delivery_counts() == Counter([row_id])


async def test_a_rejected_row_is_retried_at_max_backoff_until_the_crm_is_fixed(
    sqlite_engine: Engine, crm: Crm
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    async with OutboxWorker(sqlite_engine, crm.url, SECRET, max_backoff_s=600) as worker:
        crm.status = 422
        for k in range(3):
            crm.now = lambda k=k: at(600 * k)  # type: ignore[misc]
            assert await worker.deliver_due(at(600 * k)) == 0
            row = outbox_row(sqlite_engine, row_id)
            assert (row.last_error, row.next_try_at, row.delivered_at) == (
                "rejected 422", at(600 * (k + 1)), None)
        crm.status, crm.now = 200, (lambda: at(1800))
        assert await worker.deliver_due(at(1800)) == 1
    assert crm.delivery_counts() == Counter([row_id])


async def test_a_wrong_secret_is_refused_by_the_crm_and_the_row_waits(
    sqlite_engine: Engine, crm: Crm
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    async with OutboxWorker(sqlite_engine, crm.url, b"rotated-too-early") as worker:
        assert await worker.deliver_due(NOW) == 0
    assert crm.bad_signatures == 1 and crm.received == []
    assert outbox_row(sqlite_engine, row_id).last_error == "rejected 401"


async def test_max_tries_parks_a_row_and_retry_parked_brings_it_back(
    sqlite_engine: Engine, crm: Crm
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    crm.status = 500
    async with OutboxWorker(sqlite_engine, crm.url, SECRET, max_tries=2) as worker:
        assert await worker.deliver_due(NOW) == 0
        crm.now = lambda: at(3600)
        assert await worker.deliver_due(at(3600)) == 0
        row = outbox_row(sqlite_engine, row_id)
        assert (row.tries, row.next_try_at, row.last_error) == (2, PARKED_UNTIL, "HTTP 500")
        with sqlite_engine.connect() as conn:
            assert (pending(conn), parked(conn), lag_s(conn, at(7200))) == (0, 1, 0.0)
        assert await worker.deliver_due(at(10**8)) == 0, "a parked row is never due"
        with write_transaction(sqlite_engine) as conn:
            assert retry_parked(conn, at(7200)) == 1
        crm.status, crm.now = 200, (lambda: at(7200))
        assert await worker.deliver_due(at(7200)) == 1
    assert crm.delivery_counts() == Counter([row_id])


async def test_a_slow_crm_times_out_and_the_row_is_retried(
    sqlite_engine: Engine, crm: Crm
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    crm.hold_next = asyncio.Event()
    async with OutboxWorker(sqlite_engine, crm.url, SECRET, timeout_s=0.2) as worker:
        assert await worker.deliver_due(NOW) == 0
    row = outbox_row(sqlite_engine, row_id)
    assert (row.last_error, row.tries, row.delivered_at) == ("timeout", 1, None)


async def test_errors_and_logs_never_show_the_url_query_or_credentials(
    sqlite_engine: Engine, crm_down: Crm, caplog: pytest.LogCaptureFixture
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    url = f"http://crm:pw-hunter2@127.0.0.1:{crm_down.port}/hook?token=tok-hunter2"
    caplog.set_level(logging.DEBUG, logger="dialer.outbox")
    async with OutboxWorker(sqlite_engine, url, SECRET) as worker:
        assert await worker.deliver_due(NOW) == 0
        assert "hunter2" not in repr(worker) and SECRET.decode() not in repr(worker)
    error = outbox_row(sqlite_engine, row_id).last_error
    assert error.startswith("connection failed") and "hunter2" not in error and "token" not in error
    assert caplog.records and "hunter2" not in caplog.text
    assert f"http://127.0.0.1:{crm_down.port}/hook" in caplog.text


async def test_sends_concurrently_but_within_the_limit(sqlite_engine: Engine, crm: Crm) -> None:
    ids = enqueue_rows(sqlite_engine, 40)
    crm.delay_s = 0.02
    async with OutboxWorker(sqlite_engine, crm.url, SECRET, concurrency=8) as worker:
        assert await worker.deliver_due(NOW) == 40
    assert 1 < crm.max_in_flight <= 8
    assert crm.delivery_counts() == Counter(ids)


async def test_keeps_the_connection_alive_between_posts(sqlite_engine: Engine, crm: Crm) -> None:
    enqueue_rows(sqlite_engine, 30)
    crm.slow_body = True
    async with OutboxWorker(sqlite_engine, crm.url, SECRET, concurrency=1) as worker:
        assert await worker.deliver_due(NOW) == 30
    assert len(crm.client_ports) == 1, "one TCP connection for 30 sequential POSTs"
    assert crm.user_agents == {"Paceline-Webhook/1"}


# --- cancellation and the run loop -------------------------------------------------------------


async def test_cancelling_during_a_send_never_marks_the_row_delivered(
    engine: Engine, crm: Crm, worker_factory: Callable[..., OutboxWorker]
) -> None:
    [row_id] = enqueue_rows(engine, 1)
    crm.hold_next = asyncio.Event()
    worker = worker_factory(crm.url)
    task = asyncio.create_task(worker.deliver_due(NOW))
    await asyncio.wait_for(crm.request_seen.wait(), 5)
    assert outbox_row(engine, row_id).next_try_at > NOW, "claimed while in flight"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = outbox_row(engine, row_id)
    assert (row.delivered_at, row.tries) == (None, 0)
    assert row.next_try_at == NOW, "released: due again at once for the next worker"
    assert await worker.deliver_due(at(1)) == 1
    assert crm.delivery_counts() == Counter([row_id])


async def test_a_worker_whose_lease_ran_out_does_not_undo_another_workers_delivery(
    sqlite_engine: Engine, crm: Crm
) -> None:
    [row_id] = enqueue_rows(sqlite_engine, 1)
    crm.hold_next = gate = asyncio.Event()
    async with (OutboxWorker(sqlite_engine, crm.url, SECRET, timeout_s=30) as slow,
                OutboxWorker(sqlite_engine, crm.url, SECRET) as other):
        task = asyncio.create_task(slow.deliver_due(NOW))
        await asyncio.wait_for(crm.request_seen.wait(), 5)
        late = NOW + timedelta(seconds=slow.lease_s + 1)
        crm.now = lambda: late
        assert await other.deliver_due(late) == 1, "the lease ran out: the row is due again"
        gate.set()  # the slow worker's request now ends in a 503
        assert await task == 0
    row = outbox_row(sqlite_engine, row_id)
    assert (row.delivered_at, row.tries, row.last_error) == (late, 1, None)
    assert crm.delivery_counts() == Counter([row_id])


class StepClock:
    """A clock whose sleep advances `now` at once (and lets the loop breathe)."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float, /) -> None:
        self.sleeps.append(seconds)
        self.t += timedelta(seconds=seconds)
        await asyncio.sleep(0.005)


async def test_run_delivers_as_rows_arrive_and_stops_when_cancelled(
    sqlite_engine: Engine, crm: Crm
) -> None:
    clock = StepClock(NOW)
    crm.now = clock.now
    first = enqueue_rows(sqlite_engine, 7)
    worker = OutboxWorker(sqlite_engine, crm.url, SECRET, batch=5)
    task = asyncio.create_task(worker.run(clock, interval_s=0.5))
    await wait_until(lambda: len(crm.received) == 7)
    later = enqueue_rows(sqlite_engine, 2, now=clock.now())
    await wait_until(lambda: len(crm.received) == 9)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert crm.delivery_counts() == Counter(first + later)
    assert clock.sleeps and set(clock.sleeps) == {0.5}
    assert worker._session is None, "run closes the session it opened"


# --- several workers (PostgreSQL) --------------------------------------------------------------


@pytest.fixture
def pg_engine_pair(pg_schema: str, pg_engine: Engine) -> Iterator[tuple[Engine, Engine]]:
    """Two engines (two nodes' pools) on one migrated PostgreSQL schema."""
    other = make_engine(pg_schema)
    yield pg_engine, other
    other.dispose()


async def test_two_workers_on_postgres_deliver_each_row_exactly_once(
    pg_engine_pair: tuple[Engine, Engine], crm: Crm
) -> None:
    a, b = pg_engine_pair
    ids = enqueue_rows(a, 300)
    crm.delay_s = 0.001
    async with (OutboxWorker(a, crm.url, SECRET, batch=7) as wa,
                OutboxWorker(b, crm.url, SECRET, batch=7) as wb):

        async def drain(w: OutboxWorker) -> int:
            total = 0
            while n := await w.deliver_due(NOW):
                total += n
            return total

        got_a, got_b = await asyncio.gather(drain(wa), drain(wb))
    assert got_a + got_b == 300
    assert got_a > 0 and got_b > 0, (got_a, got_b)
    counts = crm.delivery_counts()
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    with a.connect() as conn:
        assert pending(conn) == 0


async def test_claim_skips_rows_another_worker_holds_instead_of_waiting(
    pg_engine: Engine, crm: Crm
) -> None:
    ids = enqueue_rows(pg_engine, 10)
    held = ids[:4]
    release = threading.Event()
    locked = threading.Event()

    def hold_rows() -> None:  # another node in the middle of its claim
        with pg_engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT id FROM webhook_outbox WHERE id = ANY(:ids) FOR UPDATE"),
                         {"ids": held})
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_rows)
    holder.start()
    try:
        assert locked.wait(5)
        async with OutboxWorker(pg_engine, crm.url, SECRET) as worker:
            delivered = await asyncio.wait_for(worker.deliver_due(NOW), 5)
    finally:
        release.set()
        holder.join()
    assert delivered == 6
    assert set(crm.delivery_counts()) == set(ids[4:])
