"""Private callbacks go to their agent only; public ones to anyone (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from dialer.db import write_transaction
from dialer.db.models import DncEntry
from dialer.leasing import (
    lease_candidates_query,
    lease_due_contacts,
    lease_private_callbacks,
    release_lease,
)
from dialer.wrapup import WrapUp
from tests.factories import add_contacts, make_campaign
from tests.test_lease_plan import sqlite_plan
from tests.test_wrapup import apply, contact, live_call

# A Tuesday: 12:00 in New York, 06:00 in Honolulu (closed until 18:00 UTC).
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
HONOLULU_OPENS = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)


def callback(agent: str | None, **values: object) -> dict[str, object]:
    return {"state": "callback_scheduled", "callback_agent": agent, **values}


def private_ids(engine: Engine, cid: int, agent: str, n: int = 10, now: datetime = NOW,
                node: str = "n1") -> list[int]:
    return [c.contact_id for c in lease_private_callbacks(engine, cid, agent, n, now, node)]


def general_ids(engine: Engine, cid: int, n: int = 10, now: datetime = NOW) -> list[int]:
    return [c.contact_id for c in lease_due_contacts(engine, cid, n, now, "n1")]


def test_general_lease_skips_private_callbacks(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    pending, public, alices, bobs = add_contacts(engine, cid, [
        {}, callback(None), callback("alice"), callback("bob"),
    ], NOW)
    assert sorted(general_ids(engine, cid)) == sorted([pending, public])
    assert (contact(engine, alices).state, contact(engine, bobs).state) == (
        "callback_scheduled", "callback_scheduled")


def test_private_lease_hands_an_agent_only_their_own_due_callbacks(engine: Engine) -> None:
    cid, other = make_campaign(engine, NOW), make_campaign(engine, NOW)
    hour = timedelta(hours=1)
    later, first, second, _bobs, _public, _pending = add_contacts(engine, cid, [
        callback("alice", due_at=NOW + hour),
        callback("alice", due_at=NOW - 2 * hour, priority=1),
        callback("alice", due_at=NOW - hour),
        callback("bob"),
        callback(None),
        {},
    ], NOW)
    add_contacts(engine, other, [callback("alice")], NOW)
    leased = lease_private_callbacks(engine, cid, "alice", 10, NOW, "node7")
    assert [c.contact_id for c in leased] == [first, second]  # priority, then due time
    row = contact(engine, first)
    assert (row.state, row.leased_by, row.leased_from, row.callback_agent) == (
        "sent_to_dialer", "node7", "callback_scheduled", "alice")
    assert private_ids(engine, cid, "alice") == []
    # An hour later the first two leases have expired (unused) and come back with the third.
    assert private_ids(engine, cid, "alice", now=NOW + hour) == [first, second, later]
    assert private_ids(engine, cid, "carol") == []


def test_private_lease_takes_at_most_n(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    cid = make_campaign(engine, NOW)
    ids = add_contacts(engine, cid, [callback("alice", due_at=NOW - timedelta(minutes=k))
                                     for k in range(3)], NOW)
    assert private_ids(engine, cid, "alice", n=2) == ids[::-1][:2]
    assert private_ids(engine, cid, "alice", n=0) == []


def test_an_unused_private_lease_returns_to_the_same_agent(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (cb,) = add_contacts(engine, cid, [callback("alice")], NOW)
    assert private_ids(engine, cid, "alice", node="n1") == [cb]
    assert release_lease(engine, cb, "n1", now=NOW)
    assert general_ids(engine, cid) == []
    assert private_ids(engine, cid, "alice") == [cb]
    # An expired lease too.
    assert private_ids(engine, cid, "alice", now=NOW + timedelta(minutes=10)) == [cb]


def test_private_callbacks_get_the_same_calling_hours_and_dnc_checks(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    honolulu, listed = add_contacts(engine, cid, [
        callback("alice", tz="Pacific/Honolulu", phone1="+18085550100"),
        callback("alice", phone1="+12125550100", phone2="+12125550200"),
    ], NOW)
    with write_transaction(engine) as conn:
        conn.execute(insert(DncEntry).values(value="+12125550100", created_at=NOW))
    # phone1 is DNC: the planner moves the callback on to phone2, which is leased instead.
    (leased,) = lease_private_callbacks(engine, cid, "alice", 10, NOW, "n1")
    assert (leased.contact_id, leased.phone_index, leased.number) == (listed, 2, "+12125550200")
    assert contact(engine, listed).state_reason.startswith("dnc: +12125550100 matches")
    # Honolulu is closed until 08:00 local (18:00 UTC): the callback waits, still alice's.
    row = contact(engine, honolulu)
    assert (row.state, row.callback_agent) == ("callback_scheduled", "alice")
    # (The unused lease of the other callback expires meanwhile and is leased again.)
    assert private_ids(engine, cid, "alice", now=HONOLULU_OPENS - timedelta(minutes=1)) == [
        listed]
    assert private_ids(engine, cid, "alice", now=HONOLULU_OPENS) == [honolulu]


def test_a_stale_callback_agent_outside_a_callback_does_not_hide_the_contact(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    cid = make_campaign(engine, NOW)
    (retry,) = add_contacts(engine, cid, [{"state": "not_connected", "callback_agent": "alice"}],
                            NOW)
    assert general_ids(engine, cid) == [retry]


def test_private_callback_disposition_comes_back_to_its_agent_only(engine: Engine) -> None:
    cid, cont, att = live_call(engine, agent="alice")
    at = NOW + timedelta(hours=2)
    apply(engine, att, WrapUp("CBP", callback_at=at))
    assert general_ids(engine, cid, now=at) == []
    assert private_ids(engine, cid, "bob", now=at) == []
    assert private_ids(engine, cid, "alice", now=at - timedelta(seconds=1)) == []
    assert private_ids(engine, cid, "alice", now=at) == [cont]


def test_public_callback_disposition_goes_to_anyone(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    cid, cont, att = live_call(engine, agent="alice")
    at = NOW + timedelta(hours=2)
    apply(engine, att, WrapUp("CB", callback_at=at))
    assert private_ids(engine, cid, "alice", now=at) == []
    assert general_ids(engine, cid, now=at) == [cont]


def test_sqlite_private_callback_query_walks_the_lease_index(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        for zones in (None, {"America/New_York"}):
            for agent in (None, "alice"):
                plan = sqlite_plan(conn, lease_candidates_query(1, 10, NOW, zones, agent))
                assert "USING INDEX ix_contacts_lease (" in plan, plan
                assert "USE TEMP B-TREE" not in plan, plan
