"""Leasing due contacts to dialer nodes, on SQLite and PostgreSQL (`engine` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, Row, insert, select

from dialer.db import write_transaction
from dialer.db.models import Attempt, Contact, DncEntry, DncList
from dialer.leasing import lease_due_contacts, release_expired_leases, release_lease
from tests.factories import add_contacts, make_campaign

# A Tuesday: 12:00 in New York (EDT), 06:00 in Honolulu (HST, opens 08:00 = 18:00 UTC).
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
HONOLULU_OPENS = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)


def contact(engine: Engine, contact_id: int) -> Row[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Contact).where(Contact.id == contact_id)).one()


def lease_ids(engine: Engine, cid: int, n: int = 100, now: datetime = NOW,
              node: str = "node1") -> list[int]:
    return [c.contact_id for c in lease_due_contacts(engine, cid, n, now, node)]


def add_dnc(engine: Engine, value: str, **kw: Any) -> None:
    with write_transaction(engine) as conn:
        conn.execute(insert(DncEntry).values(value=value, created_at=NOW, **kw))


def add_attempts(engine: Engine, cid: int, contact_id: int, placed: list[tuple[datetime, int, str]]
                 ) -> None:
    """Finished voice attempts: (placed_at, phone_index, outcome), step = phone_index - 1."""
    with write_transaction(engine) as conn:
        conn.execute(insert(Attempt), [
            {"contact_id": contact_id, "campaign_id": cid, "step": slot - 1, "phone_index": slot,
             "number": f"+1212555000{slot}", "channel": "voice", "placed_at": at,
             "outcome": outcome}
            for at, slot, outcome in placed
        ])


def dnc_list_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        lid = conn.scalar(select(DncList.id).where(DncList.name == name))
    assert lid is not None
    return lid


# --- order and selection ---------------------------------------------------------------------


def test_leases_by_priority_then_due_time_then_id(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    hour = timedelta(hours=1)
    a, b, c, d, e = add_contacts(engine, cid, [
        {"priority": 0, "due_at": NOW - hour},
        {"priority": 2, "due_at": NOW - hour / 6},
        {"priority": 2, "due_at": NOW - hour / 2},
        {"priority": 1, "due_at": NOW - 2 * hour},
        {"priority": 0, "due_at": NOW - hour},
    ], NOW)
    assert lease_ids(engine, cid) == [c, b, d, a, e]


def test_lease_returns_at_most_n_and_the_rest_on_later_calls(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    ids = add_contacts(engine, cid, [{"due_at": NOW - timedelta(minutes=k)} for k in range(5)],
                       NOW)
    oldest_first = ids[::-1]
    assert lease_ids(engine, cid, 3) == oldest_first[:3]
    assert lease_ids(engine, cid, 3) == oldest_first[3:]
    assert lease_ids(engine, cid, 3) == []


def test_contacts_not_yet_due_are_not_leased(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    due, later, unscheduled = add_contacts(engine, cid, [
        {"due_at": NOW}, {"due_at": NOW + timedelta(seconds=1)}, {"due_at": None},
    ], NOW)
    assert lease_ids(engine, cid) == [due]
    assert contact(engine, later).state == "pending"
    assert contact(engine, unscheduled).state == "pending"


def test_only_pending_not_connected_and_callback_contacts_are_leased(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    states = ["pending", "not_connected", "callback_scheduled", "connected", "dnc_listed",
              "retries_completed", "sms_sent", "sms_sent_closed", "sms_responded", "dangling"]
    ids = add_contacts(engine, cid, [{"state": s} for s in states], NOW)
    other_node = add_contacts(engine, cid, [{
        "state": "sent_to_dialer", "leased_by": "node9", "leased_from": "pending",
        "lease_expires_at": NOW + timedelta(minutes=1),
    }], NOW)[0]
    assert lease_ids(engine, cid) == ids[:3]
    assert [contact(engine, i).state for i in ids[3:]] == states[3:]
    assert contact(engine, other_node).leased_by == "node9"


def test_other_campaigns_contacts_are_not_leased(engine: Engine) -> None:
    cid, other = make_campaign(engine, NOW), make_campaign(engine, NOW)
    mine = add_contacts(engine, cid, [{}], NOW)
    add_contacts(engine, other, [{}], NOW)
    assert lease_ids(engine, cid) == mine


def test_lease_marks_contact_sent_to_dialer_for_the_node_until_expiry(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    params = {f"param{k}": f"v{k}" for k in range(1, 13)}
    (cb,) = add_contacts(engine, cid, [{
        "state": "callback_scheduled", "external_id": "C42", "phone1": "+12125550142",
        "next_step": 3, **params,
    }], NOW)
    (leased,) = lease_due_contacts(engine, cid, 10, NOW, "node7")
    expires = NOW + timedelta(seconds=300)  # the campaign's default lease_ttl_s
    assert (leased.contact_id, leased.campaign_id, leased.phone_index, leased.number) == (
        cb, cid, 1, "+12125550142")
    assert (leased.channel, leased.step, leased.tz, leased.external_id) == (
        "voice", 3, "America/New_York", "C42")
    assert leased.params == tuple(f"v{k}" for k in range(1, 13))
    assert leased.lease_expires_at == expires
    row = contact(engine, cb)
    assert (row.state, row.leased_by, row.lease_expires_at, row.leased_from) == (
        "sent_to_dialer", "node7", expires, "callback_scheduled")


def test_empty_next_phone_slot_dials_phone1(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    add_contacts(engine, cid, [{"phone1": "+12125550100", "next_phone": 3}], NOW)
    (leased,) = lease_due_contacts(engine, cid, 1, NOW, "node1")
    assert (leased.phone_index, leased.number) == (1, "+12125550100")


# --- lease expiry and hand-back --------------------------------------------------------------


def test_expired_lease_returns_to_the_pool_in_its_previous_state(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (nc,) = add_contacts(engine, cid, [{"state": "not_connected"}], NOW)
    assert lease_ids(engine, cid, node="node1") == [nc]
    assert lease_ids(engine, cid, now=NOW + timedelta(seconds=299), node="node2") == []
    later = NOW + timedelta(seconds=301)
    assert lease_ids(engine, cid, now=later, node="node2") == [nc]
    row = contact(engine, nc)
    assert (row.state, row.leased_by, row.leased_from) == (
        "sent_to_dialer", "node2", "not_connected")


def test_release_expired_leases_restores_state_and_clears_the_lease(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    soon = NOW + timedelta(seconds=10)
    expired, unknown_origin, live = add_contacts(engine, cid, [
        {"state": "sent_to_dialer", "leased_by": "n1", "lease_expires_at": NOW,
         "leased_from": "callback_scheduled"},
        {"state": "sent_to_dialer", "leased_by": "n1", "lease_expires_at": NOW},
        {"state": "sent_to_dialer", "leased_by": "n1", "lease_expires_at": soon,
         "leased_from": "pending"},
    ], NOW)
    with write_transaction(engine) as conn:
        assert release_expired_leases(conn, cid, NOW + timedelta(seconds=1)) == 2
    for cid_, state in ((expired, "callback_scheduled"), (unknown_origin, "pending")):
        row = contact(engine, cid_)
        assert (row.state, row.leased_by, row.lease_expires_at, row.leased_from) == (
            state, None, None, None)
    assert contact(engine, live).state == "sent_to_dialer"


def test_release_lease_hands_back_only_what_the_node_holds(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (c,) = add_contacts(engine, cid, [{"state": "not_connected"}], NOW)
    lease_ids(engine, cid, node="node1")
    assert release_lease(engine, c, "node2", now=NOW) is False
    assert contact(engine, c).leased_by == "node1"
    assert release_lease(engine, c, "node1", now=NOW) is True
    row = contact(engine, c)
    assert (row.state, row.leased_by, row.lease_expires_at, row.leased_from) == (
        "not_connected", None, None, None)
    assert release_lease(engine, c, "node1", now=NOW) is False
    assert lease_ids(engine, cid, node="node2") == [c]


# --- calling hours ---------------------------------------------------------------------------


def test_contact_outside_calling_hours_waits_for_its_window(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    ny = add_contacts(engine, cid, [{}], NOW)
    # The importer did not record Honolulu, so the zone filter cannot exclude it: the exact
    # per-contact check must.
    (hnl,) = add_contacts(engine, cid, [{"tz": "Pacific/Honolulu"}], NOW, zones=False)
    assert lease_ids(engine, cid) == ny
    row = contact(engine, hnl)
    assert (row.state, row.due_at) == ("pending", HONOLULU_OPENS)
    assert row.state_reason.startswith("calling_hours: ")
    assert hnl in lease_ids(engine, cid, now=HONOLULU_OPENS)


def test_contacts_in_a_closed_zone_stay_in_the_pool_untouched(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    hnl = add_contacts(engine, cid, [{"tz": "Pacific/Honolulu", "priority": 5}] * 2, NOW)
    ny = add_contacts(engine, cid, [{}] * 2, NOW)
    assert lease_ids(engine, cid) == ny
    for i in hnl:
        row = contact(engine, i)
        assert (row.state, row.due_at, row.state_reason) == ("pending", NOW, None)


def test_contact_in_an_unknown_zone_is_never_leased(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (c,) = add_contacts(engine, cid, [{"tz": "Mars/Olympus_Mons"}], NOW, zones=False)
    add_contacts(engine, cid, [{}], NOW)
    assert c not in lease_ids(engine, cid)
    row = contact(engine, c)
    assert (row.state, row.due_at) == ("pending", None)
    assert "unknown time zone 'Mars/Olympus_Mons'" in row.state_reason


def test_no_zone_open_leases_nothing(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (hnl,) = add_contacts(engine, cid, [{"tz": "Pacific/Honolulu"}], NOW)
    assert lease_ids(engine, cid) == []
    assert contact(engine, hnl).due_at == NOW
    assert lease_ids(engine, cid, now=HONOLULU_OPENS) == [hnl]


# --- DNC -------------------------------------------------------------------------------------


def test_dnc_number_moves_the_contact_to_its_next_phone(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (c,) = add_contacts(engine, cid, [{"phone1": "+12125550001", "phone2": "+12125550002"}],
                        NOW)
    add_dnc(engine, "+12125550001")
    (leased,) = lease_due_contacts(engine, cid, 5, NOW, "node1")
    assert (leased.contact_id, leased.phone_index, leased.number) == (c, 2, "+12125550002")
    row = contact(engine, c)
    assert (row.state, row.next_phone) == ("sent_to_dialer", 2)
    assert row.state_reason.startswith("dnc: +12125550001 matches global DNC number")


def test_contact_closes_as_dnc_listed_when_every_number_is_dnc(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    ok = add_contacts(engine, cid, [{"phone1": "+12125550009"}], NOW)
    (c,) = add_contacts(engine, cid, [{"phone1": "+12125550001", "phone2": "+12125550002"}],
                        NOW)
    add_dnc(engine, "+12125550001")
    add_dnc(engine, "+12125550002", campaign_id=cid)
    assert lease_ids(engine, cid) == ok
    row = contact(engine, c)
    assert (row.state, row.due_at, row.leased_by) == ("dnc_listed", None, None)
    assert row.state_reason.startswith("dnc: ")


def test_dnc_on_a_retried_contact_waits_for_the_retry_delay_on_the_next_phone(
    engine: Engine,
) -> None:
    cid = make_campaign(engine, NOW)
    (c,) = add_contacts(engine, cid, [{
        "state": "not_connected", "phone1": "+12125550001", "phone2": "+12125550002",
        "next_step": 0, "due_at": NOW - timedelta(minutes=5),
    }], NOW)
    placed = NOW - timedelta(minutes=10)
    add_attempts(engine, cid, c, [(placed, 1, "no_answer")])
    add_dnc(engine, "+12125550001")
    assert lease_ids(engine, cid) == []
    row = contact(engine, c)
    # The default strategy waits 1 h after no answer; phone1 is now DNC, so its second step
    # (index 1, phone2) is next.
    assert (row.state, row.next_phone, row.next_step, row.due_at) == (
        "not_connected", 2, 1, placed + timedelta(hours=1))


def test_callback_that_cannot_close_as_the_planner_says_stays_out_of_the_pool(
    engine: Engine,
) -> None:
    cid = make_campaign(engine, NOW)  # default strategy: at most 8 attempts
    (cb,) = add_contacts(engine, cid, [{
        "state": "callback_scheduled", "phone1": "+12125550001", "phone2": "+12125550002",
    }], NOW)
    add_attempts(engine, cid, cb, [(NOW - timedelta(hours=k + 1), 2, "no_answer")
                                   for k in range(8)])
    add_dnc(engine, "+12125550001")
    assert lease_ids(engine, cid) == []
    row = contact(engine, cb)
    # callback_scheduled -> retries_completed is not an automatic move: the state stays.
    assert (row.state, row.due_at) == ("callback_scheduled", None)
    assert row.state_reason.startswith("max_attempts: 8 of 8 attempts used")
    assert "kept callback_scheduled" in row.state_reason


def test_dnc_scope_is_global_own_campaign_and_referenced_lists(engine: Engine) -> None:
    cid = make_campaign(engine, NOW, dnc_lists=["client-a"])
    other = make_campaign(engine, NOW, dnc_lists=["client-b"])
    numbers = {
        "global": "+12125550001", "own": "+12125550002", "other_campaign": "+12125550003",
        "own_list": "+12125550004", "other_list": "+12125550005", "clean": "+12125550006",
    }
    add_dnc(engine, numbers["global"])
    add_dnc(engine, numbers["own"], campaign_id=cid)
    add_dnc(engine, numbers["other_campaign"], campaign_id=other)
    add_dnc(engine, numbers["own_list"], list_id=dnc_list_id(engine, "client-a"))
    add_dnc(engine, numbers["other_list"], list_id=dnc_list_id(engine, "client-b"))
    ids = dict(zip(numbers, add_contacts(engine, cid, [{"phone1": p} for p in numbers.values()],
                                         NOW), strict=True))
    assert lease_ids(engine, cid) == [ids["other_campaign"], ids["other_list"], ids["clean"]]
    states = {k: contact(engine, i).state for k, i in ids.items()}
    assert states == {
        "global": "dnc_listed", "own": "dnc_listed", "other_campaign": "sent_to_dialer",
        "own_list": "dnc_listed", "other_list": "sent_to_dialer", "clean": "sent_to_dialer",
    }


def test_expired_dnc_entry_is_ignored(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    (c,) = add_contacts(engine, cid, [{"phone1": "+12125550001"}], NOW)
    add_dnc(engine, "+12125550001", expires_at=NOW - timedelta(seconds=1))
    assert lease_ids(engine, cid) == [c]


def test_prefix_dnc_entry_blocks_every_number_under_it(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    blocked, free = add_contacts(engine, cid, [
        {"phone1": "+12125550123"}, {"phone1": "+12125560123"},
    ], NOW)
    add_dnc(engine, "+1212555", is_prefix=True)
    assert lease_ids(engine, cid) == [free]
    row = contact(engine, blocked)
    assert row.state == "dnc_listed"


@pytest.mark.parametrize("n", [0, -1])
def test_non_positive_n_leases_nothing(engine: Engine, n: int) -> None:
    cid = make_campaign(engine, NOW)
    add_contacts(engine, cid, [{}], NOW)
    assert lease_ids(engine, cid, n) == []


def test_unknown_campaign_is_an_error(engine: Engine) -> None:
    with pytest.raises(LookupError, match="no campaign with id 999"):
        lease_due_contacts(engine, 999, 1, NOW, "node1")
