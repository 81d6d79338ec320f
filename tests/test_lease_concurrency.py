"""Several dialer processes leasing from one campaign at once never lease a contact twice."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dialer.db import make_engine, migrate
from dialer.db.models import Contact
from tests.conftest import require_pg
from tests.factories import (
    add_contacts,
    lease_until_empty,
    make_campaign,
    wait_for_all_workers,
)

NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)  # a Tuesday, 12:00 in New York
BATCH = 250


def lease_in_parallel(
    url: str, contacts: int, nodes: int, pause_s: float = 0.0
) -> tuple[list[int], dict[str, list[int]]]:
    """Load a campaign with `contacts` due contacts, let `nodes` processes lease it empty.

    Returns the contact ids and what each node leased.
    """
    engine = make_engine(url)
    try:
        migrate(engine)
        cid = make_campaign(engine, NOW)
        ids = add_contacts(engine, cid, [{}] * contacts, NOW)
    finally:
        engine.dispose()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(nodes)
    names = [f"node{i}" for i in range(nodes)]
    with ctx.Pool(nodes, initializer=wait_for_all_workers, initargs=(barrier,)) as pool:
        work = [(url, cid, BATCH, NOW, n, pause_s) for n in names]
        results = pool.starmap(lease_until_empty, work, chunksize=1)
    return ids, dict(zip(names, results, strict=True))


def assert_leased_once_each(url: str, ids: list[int], leased: dict[str, list[int]]) -> None:
    counts = Counter(i for got in leased.values() for i in got)
    twice = [i for i, k in counts.items() if k > 1]
    assert not twice, f"{len(twice)} contacts leased more than once, e.g. {twice[:5]}"
    assert set(counts) == set(ids)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Contact.id, Contact.state, Contact.leased_by)).all()
            assert conn.scalar(select(func.count()).select_from(Contact)) == len(ids)
    finally:
        engine.dispose()
    holder = {i: node for node, got in leased.items() for i in got}
    wrong = [r for r in rows if r.state != "sent_to_dialer" or r.leased_by != holder[r.id]]
    assert not wrong, f"{len(wrong)} contacts not leased by their node in the DB: {wrong[:5]}"


@pytest.mark.postgres
def test_four_postgres_nodes_lease_20000_contacts_exactly_once(pg_schema: str) -> None:
    require_pg()
    ids, leased = lease_in_parallel(pg_schema, 20_000, nodes=4)
    assert_leased_once_each(pg_schema, ids, leased)
    # SKIP LOCKED lets the nodes work side by side: none waits for the others to finish.
    assert all(leased.values()), {n: len(got) for n, got in leased.items()}


def test_two_sqlite_processes_lease_4000_contacts_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'paceline.db'}"
    # A pacing pause between batches, as a real node has: without one, the process holding the
    # lock takes it straight back while the other sleeps in SQLite's busy handler.
    ids, leased = lease_in_parallel(url, 4_000, nodes=2, pause_s=0.01)
    assert_leased_once_each(url, ids, leased)
    assert all(leased.values()), {n: len(got) for n, got in leased.items()}
