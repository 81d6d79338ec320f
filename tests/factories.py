"""Test data builders, and worker functions that spawned processes can import."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from dialer.campaigns import create_campaign
from dialer.db import make_engine, write_transaction
from dialer.db.models import CampaignZone, Contact
from dialer.leasing import lease_due_contacts

_numbers = itertools.count(1)


def make_campaign(engine: Engine, now: datetime, **kw: Any) -> int:
    """`create_campaign` with a unique name; keyword arguments pass through."""
    name = kw.pop("name", None) or f"test-{uuid.uuid4().hex[:10]}"
    return create_campaign(engine, name, now, **kw)


def contact_row(campaign_id: int, now: datetime, **values: Any) -> dict[str, Any]:
    """A full `contacts` row: a unique New York number, pending and due `now`, plus `values`."""
    row: dict[str, Any] = {
        "campaign_id": campaign_id,
        "external_id": None,
        "phone1": f"+1212{next(_numbers) % 10_000_000:07d}",
        "tz": "America/New_York",
        "state": "pending",
        "priority": 0,
        "due_at": now,
        "attempt_count": 0,
        "next_step": 0,  # what the importer's planner sets for a new contact
        "next_phone": 1,
        "next_channel": "voice",
        "created_at": now,
        "updated_at": now,
    }
    row.update(values)
    for k in range(1, 6):
        row.setdefault(f"phone{k}_raw", row.get(f"phone{k}"))
    for col in Contact.__table__.columns:  # executemany needs the same keys in every row
        if col.nullable and col.key not in row:
            row[col.key] = None
    return row


def add_contacts(
    engine: Engine, campaign_id: int, rows: list[dict[str, Any]], now: datetime,
    *, zones: bool = True,
) -> list[int]:
    """Insert contacts (one executemany) and return their ids in the order of `rows`.

    Each dict holds only what the test cares about; `contact_row` fills the rest. With `zones`
    (the default) the contacts' zones are recorded in `campaign_zones`, as the importer does.
    """
    if not rows:
        return []
    full = [contact_row(campaign_id, now, **r) for r in rows]
    with write_transaction(engine) as conn:
        ids = list(conn.scalars(
            insert(Contact).returning(Contact.id, sort_by_parameter_order=True), full
        ))
        if zones:
            have = set(conn.scalars(
                select(CampaignZone.tz).where(CampaignZone.campaign_id == campaign_id)
            ))
            new = sorted({r["tz"] for r in full} - have)
            if new:
                conn.execute(insert(CampaignZone),
                             [{"campaign_id": campaign_id, "tz": z} for z in new])
    return ids


def wait_for_all_workers(barrier: Any) -> None:
    """Pool initializer: start leasing only once every worker process is up."""
    barrier.wait(timeout=60)


def lease_until_empty(url: str, campaign_id: int, n: int, now: datetime, node_id: str,
                      pause_s: float = 0.0) -> list[int]:
    """Worker for the concurrency tests: lease batches until none is left; the leased ids.

    `pause_s` between batches stands for the dialer's pacing tick; on SQLite it gives the other
    processes a chance at the write lock, as a real node's pause would.
    """
    engine = make_engine(url)
    got: list[int] = []
    try:
        while batch := lease_due_contacts(engine, campaign_id, n, now, node_id):
            got += [c.contact_id for c in batch]
            time.sleep(pause_s)
    finally:
        engine.dispose()
    return got
