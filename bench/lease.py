"""Lease speed on a large campaign, on SQLite and PostgreSQL.

Builds a campaign of N contacts (default 1,000,000) in two layouts:
- `worked`: a list after a day of dialing. Priorities 0-2, due times spread over the past
  day, ~10% in states that cannot be leased, so one lease touches ~1,000 scattered rows.
- `fresh`: a list just imported. All pending, one priority, one due time: the lease order
  is the insert order.
Both have seven US zones (Honolulu closed at the benchmark's instant, so the zone filter is on)
and a DNC table of 50,000 entries of which some hit the contacts. Each timed call leases the
next 1,000 (`lease_due_contacts`), after one untimed warm-up; it prints the median and the
maximum. Goal: median < 50 ms. SQLite is timed with its own checkpoints (inside commits) and
with the background `WalCheckpointer` the dialer service runs.

SQLite runs in a file in a temporary directory; PostgreSQL in a temporary schema of the
server at `--pg-url` (default `$PACELINE_TEST_PG_URL`, else postgres@127.0.0.1/test), dropped
at the end. PostgreSQL is skipped with a message when unreachable.

    python bench/lease.py [--contacts N] [--runs R] [--batch B] [--layout L] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, insert, text

from dialer.campaigns import create_campaign
from dialer.db import WalCheckpointer, make_engine, migrate, write_transaction
from dialer.db.models import CampaignZone, Contact, DncEntry
from dialer.leasing import lease_due_contacts

#: A Tuesday, 16:00 UTC: 12:00 in New York, 08:00 in Anchorage, 06:00 in Honolulu (closed).
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
GOAL_MS = 50.0
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Zone, share of the contacts, area codes.
ZONES: list[tuple[str, int, tuple[str, ...]]] = [
    ("America/New_York", 40, ("212", "646", "718", "617", "305", "404")),
    ("America/Chicago", 25, ("312", "713", "214", "612")),
    ("America/Denver", 8, ("303", "801", "505")),
    ("America/Phoenix", 4, ("602", "480")),
    ("America/Los_Angeles", 18, ("415", "213", "206", "503", "702")),
    ("America/Anchorage", 2, ("907",)),
    ("Pacific/Honolulu", 3, ("808",)),
]
#: State, share. The first three can be leased; together the others are ~10%.
STATES: list[tuple[str, int]] = [
    ("pending", 75), ("not_connected", 12), ("callback_scheduled", 3),
    ("connected", 3), ("retries_completed", 4), ("dnc_listed", 1), ("sms_sent", 1),
    ("dangling", 1),
]
COLUMNS = (
    "campaign_id", "external_id", "phone1_raw", "phone1", "phone2_raw", "phone2",
    "param1", "param2", "param3", "tz", "state", "priority", "due_at", "attempt_count",
    "next_phone", "next_channel", "created_at", "updated_at",
)
CHUNK = 50_000
DNC_ENTRIES = 50_000
DNC_HIT_EVERY = 400  # one contact in 400 has its phone1 on the DNC list


LAYOUTS = ("worked", "fresh")


def contact_rows(campaign_id: int, n: int, seed: int, layout: str = "worked"
                 ) -> Iterator[tuple[Any, ...]]:
    """The same N contacts for both databases, as tuples in `COLUMNS` order.

    `worked`: a list after a day of dialing; priorities and due times are scattered, so the
    contacts of one lease sit on ~1,000 different pages. `fresh`: a list just imported; every
    contact pending, same priority and due time, so the lease order is the insert order.
    """
    if layout == "fresh":
        yield from _fresh_rows(campaign_id, n, seed)
        return
    rng = random.Random(seed)
    zones = rng.choices(range(len(ZONES)), [w for _, w, _ in ZONES], k=n)
    states = rng.choices([s for s, _ in STATES], [w for _, w in STATES], k=n)
    created = NOW - timedelta(days=2)
    for i in range(n):
        tz, _, codes = ZONES[zones[i]]
        phone1 = f"+1{rng.choice(codes)}{2_000_000 + i:07d}"
        phone2 = f"+1{rng.choice(codes)}{9_000_000 - i:07d}" if i % 10 < 3 else None
        state = states[i]
        yield (
            campaign_id, f"C{i:08d}", phone1, phone1, phone2, phone2,
            f"Name{i % 997}", rng.choice(("gold", "silver", "basic")), f"{i % 9000:.2f}",
            tz, state, rng.choice((0, 0, 0, 1, 1, 2)),
            NOW - timedelta(seconds=rng.randint(1, 86_400)),
            0 if state == "pending" else rng.randint(1, 4), 1, "voice", created, created,
        )


def _fresh_rows(campaign_id: int, n: int, seed: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    zones = rng.choices(range(len(ZONES)), [w for _, w, _ in ZONES], k=n)
    imported = NOW - timedelta(hours=1)
    for i in range(n):
        tz, _, codes = ZONES[zones[i]]
        phone1 = f"+1{rng.choice(codes)}{2_000_000 + i:07d}"
        phone2 = f"+1{rng.choice(codes)}{9_000_000 - i:07d}" if i % 10 < 3 else None
        yield (
            campaign_id, f"C{i:08d}", phone1, phone1, phone2, phone2,
            f"Name{i % 997}", rng.choice(("gold", "silver", "basic")), f"{i % 9000:.2f}",
            tz, "pending", 0, imported, 0, 1, "voice", imported, imported,
        )


def dnc_values(seed: int) -> list[str]:
    """Exact DNC numbers that match no contact (the loaders add the ones that do)."""
    rng = random.Random(seed + 1)
    values = {f"+1{rng.choice(('212', '415', '312'))}{rng.randint(1_000_000, 1_999_999):07d}"
              for _ in range(DNC_ENTRIES)}
    return sorted(values)


def new_campaign(engine: Engine) -> int:
    cid = create_campaign(engine, f"bench-{uuid.uuid4().hex[:8]}", NOW)
    with write_transaction(engine) as conn:
        conn.execute(insert(CampaignZone), [{"campaign_id": cid, "tz": z} for z, _, _ in ZONES])
    return cid


def dnc_rows(values: list[str]) -> list[dict[str, Any]]:
    return [{"value": v, "is_prefix": False, "campaign_id": None, "list_id": None,
             "source": "import", "created_at": NOW} for v in values]


def load_sqlite(engine: Engine, cid: int, n: int, seed: int, layout: str = "worked") -> None:
    """Core executemany in chunks, one transaction per chunk."""
    hits: list[str] = []
    chunk: list[dict[str, Any]] = []
    stmt = insert(Contact)

    def flush() -> None:
        with write_transaction(engine) as conn:
            conn.execute(stmt, chunk)
        chunk.clear()

    for k, row in enumerate(contact_rows(cid, n, seed, layout)):
        chunk.append(dict(zip(COLUMNS, row, strict=True)))
        if k % DNC_HIT_EVERY == 0:
            hits.append(row[3])
        if len(chunk) == CHUNK:
            flush()
    if chunk:
        flush()
    with write_transaction(engine) as conn:
        conn.execute(insert(DncEntry), dnc_rows(dnc_values(seed) + hits))
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")


def load_postgres(engine: Engine, cid: int, n: int, seed: int, layout: str = "worked") -> None:
    """psycopg COPY, in one transaction."""
    hits: list[str] = []
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        assert pg is not None
        with pg.cursor() as cur:
            with cur.copy(f"COPY contacts ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for k, row in enumerate(contact_rows(cid, n, seed, layout)):
                    copy.write_row(row)
                    if k % DNC_HIT_EVERY == 0:
                        hits.append(row[3])
            dnc_cols = ("value", "is_prefix", "source", "created_at")
            with cur.copy(f"COPY dnc_entries ({', '.join(dnc_cols)}) FROM STDIN") as copy:
                for v in dnc_values(seed) + hits:
                    copy.write_row((v, False, "import", NOW))
        pg.commit()
    finally:
        raw.close()
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM ANALYZE contacts")
        conn.exec_driver_sql("ANALYZE dnc_entries")


def settle(engine: Engine) -> None:
    """Start the timing on a quiet disk: flush what the build (or an earlier phase) left.

    Without this the kernel is still writing back the previous database's pages while the
    next one is timed, and the figures measure the bench, not the lease.
    """
    os.sync()


def checkpoint_postgres(engine: Engine) -> None:
    """Force a PostgreSQL checkpoint: the next change to every page logs the whole page."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("CHECKPOINT")


def time_leases(
    engine: Engine, cid: int, batch: int, runs: int,
    between: Callable[[], None] | None = None,
) -> tuple[list[float], int]:
    """One warm-up lease, then `runs` timed ones (ms); also how many contacts were leased.

    `between` runs, untimed, before each timed lease.
    """
    settle(engine)
    leased = len(lease_due_contacts(engine, cid, batch, NOW, "bench-warmup"))
    times = []
    for k in range(runs):
        if between is not None:
            between()
        t0 = time.perf_counter()
        got = lease_due_contacts(engine, cid, batch, NOW, f"bench{k}")
        times.append((time.perf_counter() - t0) * 1000)
        leased += len(got)
    return times, leased


def report(name: str, n: int, batch: int, times: list[float], build_s: float) -> None:
    print(
        f"{name}: lease {batch} of {n:,}: median {statistics.median(times):.1f} ms, "
        f"max {max(times):.1f} ms (goal < {GOAL_MS:.0f} ms; {len(times)} runs, "
        f"built in {build_s:.0f} s)",
        flush=True,
    )


def bench_sqlite(n: int, batch: int, runs: int, seed: int, layout: str) -> None:
    """SQLite as `make_engine` sets it up, timed twice on the same database.

    First with SQLite's own automatic checkpoints (inside whichever commit crosses 1,000 WAL
    pages), then with a `WalCheckpointer` on a background thread, as the dialer service runs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            t0 = time.perf_counter()
            migrate(engine)
            cid = new_campaign(engine)
            load_sqlite(engine, cid, n, seed, layout)
            build_s = time.perf_counter() - t0
            times, _ = time_leases(engine, cid, batch, runs)
            report(f"sqlite, {layout} list, checkpoints inside commits", n, batch, times,
                   build_s)
            with WalCheckpointer(engine) as ckpt:
                times, _ = time_leases(engine, cid, batch, runs)
            report(f"sqlite, {layout} list, background WAL checkpointer "
                   f"({ckpt.checkpoints} checkpoints)", n, batch, times, build_s)
        finally:
            engine.dispose()


def pg_unreachable(url: str) -> str | None:
    try:
        eng = create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
    except Exception as exc:  # any failure to connect means "skip PostgreSQL"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def bench_postgres(url: str, n: int, batch: int, runs: int, seed: int, layout: str) -> None:
    reason = pg_unreachable(url)
    if reason is not None:
        print(f"postgresql: skipped, {url} is unreachable ({reason})", flush=True)
        return
    schema = f"bench_lease_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    engine = make_engine(f"{url}{sep}options=-csearch_path%3D{schema}")
    try:
        t0 = time.perf_counter()
        migrate(engine)
        cid = new_campaign(engine)
        load_postgres(engine, cid, n, seed, layout)
        build_s = time.perf_counter() - t0
        times, _ = time_leases(engine, cid, batch, runs)
        report(f"postgresql, {layout} list", n, batch, times, build_s)
        # The worst case: the first leases after a checkpoint write a full-page WAL image for
        # every page they touch (~8 KB per scattered contact). It lasts until the lease has
        # touched each page once in the new checkpoint cycle.
        checkpoint_postgres(engine)
        times, _ = time_leases(engine, cid, batch, runs)
        report(f"postgresql, {layout} list, just after a CHECKPOINT", n, batch, times, build_s)
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=9, help="timed lease calls (after a warm-up)")
    ap.add_argument("--batch", type=int, default=1000, help="contacts per lease call")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sqlite-only", action="store_true")
    ap.add_argument("--pg-url", default=os.environ.get("PACELINE_TEST_PG_URL", DEFAULT_PG_URL))
    ap.add_argument("--layout", choices=(*LAYOUTS, "both"), default="both",
                    help="worked: scattered (after a day of dialing); fresh: just imported")
    args = ap.parse_args(argv)
    if args.contacts < 1 or args.runs < 1 or args.batch < 1:
        ap.error("--contacts, --runs and --batch must be at least 1")
    for layout in LAYOUTS if args.layout == "both" else (args.layout,):
        bench_sqlite(args.contacts, args.batch, args.runs, args.seed, layout)
        if not args.sqlite_only:
            bench_postgres(args.pg_url, args.contacts, args.batch, args.runs, args.seed, layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
