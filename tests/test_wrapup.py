"""Wrap-up dispositions (R, N, C, T, DNC), notes, and abandon by agent, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, Row, func, insert, select, update

from dialer.campaigns import save_strategy
from dialer.db import write_transaction
from dialer.db.models import (
    Appointment,
    Attempt,
    Contact,
    ContactNote,
    Contract,
    ContractItem,
    DncEntry,
    FieldAgent,
    Product,
    WebhookOutbox,
)
from dialer.domain import ContactState, DispositionType
from dialer.leasing import lease_due_contacts
from dialer.wrapup import (
    WrapUp,
    WrapUpError,
    WrapUpResult,
    abandon_by_agent,
    apply_disposition,
    protocol_number,
)
from strategies.model import Strategy
from tests.factories import add_contacts, make_campaign

# A Tuesday, 12:00 in New York: inside calling hours.
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
TOMORROW = NOW + timedelta(days=1)


# --- builders (also used by tests/test_leasing_callbacks.py) ------------------------------------


def add_live_attempt(
    engine: Engine, campaign_id: int, contact_id: int, *, agent: str = "alice",
    number: str | None = None, **values: Any,
) -> int:
    """An attempt that reached `agent` live and is in wrap-up (outcome `human`)."""
    with write_transaction(engine) as conn:
        if number is None:
            number = conn.scalar(select(Contact.phone1).where(Contact.id == contact_id))
        row = {
            "contact_id": contact_id, "campaign_id": campaign_id, "step": 0, "phone_index": 1,
            "number": number, "channel": "voice", "placed_at": NOW - timedelta(minutes=5),
            "answered_at": NOW - timedelta(minutes=4), "connected_at": NOW - timedelta(minutes=4),
            "ended_at": NOW - timedelta(minutes=1), "outcome": "human", "agent": agent,
            "call_state": "wrap_up", **values,
        }
        aid = conn.scalar(insert(Attempt).values(**row).returning(Attempt.id))
    assert aid is not None
    return int(aid)


def live_call(engine: Engine, *, state: str = "connected", agent: str = "alice",
              campaign_id: int | None = None, **contact: Any) -> tuple[int, int, int]:
    """(campaign id, contact id, attempt id): a contact whose call `agent` is wrapping up."""
    cid = campaign_id if campaign_id is not None else make_campaign(engine, NOW)
    (contact_id,) = add_contacts(engine, cid, [{"state": state, **contact}], NOW)
    return cid, contact_id, add_live_attempt(engine, cid, contact_id, agent=agent)


def add_products(engine: Engine, *products: tuple[str, int, bool]) -> None:
    """(code, price in cents, active)."""
    with write_transaction(engine) as conn:
        conn.execute(insert(Product), [
            {"code": code, "name": f"product {code}", "price_cents": cents, "active": active}
            for code, cents, active in products
        ])


def add_field_agent(engine: Engine, name: str) -> None:
    with write_transaction(engine) as conn:
        conn.execute(insert(FieldAgent).values(name=name))


def apply(engine: Engine, attempt_id: int, wrap: WrapUp, *, agent: str = "alice",
          now: datetime = NOW) -> WrapUpResult:
    with write_transaction(engine) as conn:
        return apply_disposition(conn, attempt_id=attempt_id, agent=agent, wrap=wrap, now=now)


def abandon(engine: Engine, attempt_id: int, *, agent: str = "alice",
            reason: str = "wrap-up timeout") -> None:
    with write_transaction(engine) as conn:
        abandon_by_agent(conn, attempt_id=attempt_id, agent=agent, now=NOW, reason=reason)


def contact(engine: Engine, contact_id: int) -> Row[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Contact).where(Contact.id == contact_id)).one()


def attempt(engine: Engine, attempt_id: int) -> Row[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Attempt).where(Attempt.id == attempt_id)).one()


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


def outbox(engine: Engine) -> list[Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(select(WebhookOutbox).order_by(WebhookOutbox.id)))


def refused(message: str) -> Any:
    return pytest.raises(WrapUpError, match=re.escape(message))


# --- R: callbacks ------------------------------------------------------------------------------


def test_public_callback_schedules_the_contact_for_any_agent(engine: Engine) -> None:
    _, cont, att = live_call(engine)
    result = apply(engine, att, WrapUp("CB", callback_at=TOMORROW))
    assert (result.type, result.contact_state, result.due_at, result.callback_agent) == (
        DispositionType.CALLBACK, ContactState.CALLBACK_SCHEDULED, TOMORROW, None)
    row = contact(engine, cont)
    assert (row.state, row.due_at, row.callback_agent) == ("callback_scheduled", TOMORROW, None)
    assert row.state_reason == "public callback agreed by agent alice: CB Callback (anyone)"
    a = attempt(engine, att)
    assert (a.disposition, a.wrapup_ended_at, a.outcome) == ("CB", NOW, "human")


def test_private_callback_belongs_to_the_agent(engine: Engine) -> None:
    _, cont, att = live_call(engine, agent="bob")
    result = apply(engine, att, WrapUp("CBP", callback_at=TOMORROW), agent="bob")
    assert (result.contact_state, result.callback_agent) == (
        ContactState.CALLBACK_SCHEDULED, "bob")
    row = contact(engine, cont)
    assert (row.state, row.due_at, row.callback_agent) == ("callback_scheduled", TOMORROW, "bob")


def test_callback_needs_an_aware_time_in_the_future(engine: Engine) -> None:
    _, cont, att = live_call(engine)
    with refused("callback_at: required for disposition CB (type R)"):
        apply(engine, att, WrapUp("CB"))
    with refused("callback_at: 2026-03-10T16:00:00.000Z is not in the future"):
        apply(engine, att, WrapUp("CB", callback_at=NOW))
    with refused("callback_at: 2026-03-11T16:00:00 has no time zone"):
        apply(engine, att, WrapUp("CB", callback_at=TOMORROW.replace(tzinfo=None)))
    # Refused inputs write nothing: the agent fixes the time and confirms again.
    assert attempt(engine, att).disposition is None
    assert contact(engine, cont).state == "connected"
    assert apply(engine, att, WrapUp("CB", callback_at=NOW + timedelta(seconds=1))).due_at == (
        NOW + timedelta(seconds=1))


# --- N: negative -------------------------------------------------------------------------------


def test_negative_disposition_closes_the_contact_out_of_the_pool(engine: Engine) -> None:
    cid, cont, att = live_call(engine, due_at=NOW)
    result = apply(engine, att, WrapUp("NI"))
    assert (result.contact_state, result.due_at, result.contract_id, result.appointment_id) == (
        ContactState.CONNECTED, None, None, None)
    row = contact(engine, cont)
    assert (row.state, row.due_at) == ("connected", None)
    assert row.state_reason == "closed by agent alice: NI Not interested"
    assert lease_due_contacts(engine, cid, 10, NOW + timedelta(days=30), "n1") == []


def test_disposition_of_a_contact_still_leased_clears_the_lease(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    _, cont, att = live_call(engine, state="sent_to_dialer", leased_by="n1",
                             leased_from="pending", lease_expires_at=NOW + timedelta(minutes=5))
    assert apply(engine, att, WrapUp("NI")).contact_state is ContactState.CONNECTED
    row = contact(engine, cont)
    assert (row.state, row.leased_by, row.lease_expires_at, row.leased_from) == (
        "connected", None, None, None)


def test_contact_closed_meanwhile_keeps_its_state_but_the_disposition_is_recorded(
    engine: Engine,
) -> None:
    # An SMS STOP listed the contact while the agent was talking: no callback may revive it.
    _, cont, att = live_call(engine, state="dnc_listed", state_reason="sms STOP", due_at=None)
    result = apply(engine, att, WrapUp("CB", callback_at=TOMORROW))
    assert (result.contact_state, result.due_at) == (ContactState.DNC_LISTED, None)
    row = contact(engine, cont)
    assert (row.state, row.due_at, row.state_reason) == ("dnc_listed", None, "sms STOP")
    assert attempt(engine, att).disposition == "CB"


# --- C: sales ----------------------------------------------------------------------------------


def test_sale_creates_a_contract_with_items_prices_and_a_protocol_number(engine: Engine) -> None:
    add_products(engine, ("FIBER", 2999, True), ("ROUTER", 4900, True))
    cid, cont, att = live_call(engine)
    result = apply(engine, att, WrapUp("SALE", cart={"ROUTER": 1, "FIBER": 2}))
    assert result.contact_state is ContactState.CONNECTED
    assert result.total_cents == 2 * 2999 + 4900
    assert result.contract_id is not None
    assert result.protocol == protocol_number(result.contract_id, NOW)
    assert re.fullmatch(r"P20260310-\d{8}", result.protocol)
    with engine.connect() as conn:
        c = conn.execute(select(Contract)).one()
        items = conn.execute(select(ContractItem.product_code, ContractItem.quantity,
                                    ContractItem.unit_price_cents)
                             .order_by(ContractItem.product_code)).all()
    assert (c.id, c.protocol, c.contact_id, c.campaign_id, c.attempt_id, c.agent, c.total_cents,
            c.created_at) == (result.contract_id, result.protocol, cont, cid, att, "alice",
                              10898, NOW)
    assert [tuple(i) for i in items] == [("FIBER", 2, 2999), ("ROUTER", 1, 4900)]
    row = contact(engine, cont)
    assert (row.state, row.due_at) == ("connected", None)
    assert row.state_reason == f"closed by agent alice: SALE Sale (contract {result.protocol})"


def test_later_price_changes_do_not_touch_a_signed_contract(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    add_products(engine, ("FIBER", 2999, True))
    _, _, att = live_call(engine)
    result = apply(engine, att, WrapUp("SALE", cart={"FIBER": 1}))
    with write_transaction(engine) as conn:
        conn.execute(update(Product).values(price_cents=1))
    with engine.connect() as conn:
        assert conn.scalar(select(ContractItem.unit_price_cents)) == 2999
        assert conn.scalar(select(Contract.total_cents)) == result.total_cents == 2999


def test_protocol_numbers_are_unique_across_sales(engine: Engine) -> None:
    add_products(engine, ("FIBER", 100, True))
    cid = make_campaign(engine, NOW)
    protocols: list[str] = []
    for k in range(5):
        _, _, att = live_call(engine, campaign_id=cid)
        # The same day for all: the id alone makes them unique.
        protocol = apply(engine, att, WrapUp("SALE", cart={"FIBER": k + 1})).protocol
        assert protocol is not None
        protocols.append(protocol)
    assert len(set(protocols)) == 5
    with engine.connect() as conn:
        assert sorted(conn.scalars(select(Contract.protocol))) == sorted(protocols)


def test_protocol_number_format() -> None:
    assert protocol_number(42, NOW) == "P20260310-00000042"
    assert protocol_number(123_456_789, NOW) == "P20260310-123456789"


@pytest.mark.parametrize(("cart", "message"), [
    (None, "cart: disposition SALE (type C) needs at least one product"),
    ({}, "cart: disposition SALE (type C) needs at least one product"),
    ({"GHOST": 1}, "cart: unknown product 'GHOST'"),
    ({"FIBER": 1, "OLD": 2}, "cart: product 'OLD' is no longer sold (inactive)"),
    ({"FIBER": 0}, "cart: quantity of product 'FIBER' must be a whole number > 0 (got 0)"),
    ({"FIBER": -2}, "cart: quantity of product 'FIBER' must be a whole number > 0 (got -2)"),
    ({"FIBER": True}, "cart: quantity of product 'FIBER' must be a whole number > 0 (got True)"),
    ({"FIBER": 1.5}, "cart: quantity of product 'FIBER' must be a whole number > 0 (got 1.5)"),
])
def test_bad_cart_is_refused_naming_the_product(sqlite_engine: Engine, cart: Any,
                                                message: str) -> None:
    engine = sqlite_engine
    add_products(engine, ("FIBER", 2999, True), ("OLD", 100, False))
    _, _, att = live_call(engine)
    with refused(message):
        apply(engine, att, WrapUp("SALE", cart=cart))
    assert (count(engine, Contract), count(engine, ContractItem)) == (0, 0)
    assert attempt(engine, att).disposition is None


# --- T: appointments ---------------------------------------------------------------------------


def test_appointment_is_booked_in_the_field_agents_agenda(engine: Engine) -> None:
    add_field_agent(engine, "Fiona")
    _, cont, att = live_call(engine)
    starts = TOMORROW.replace(hour=14)
    result = apply(engine, att, WrapUp("APPT", field_agent="Fiona", appointment_at=starts,
                                       appointment_minutes=90))
    assert result.contact_state is ContactState.CONNECTED
    with engine.connect() as conn:
        appt = conn.execute(select(Appointment)).one()
        fiona = conn.scalar(select(FieldAgent.id).where(FieldAgent.name == "Fiona"))
    assert (appt.id, appt.field_agent_id, appt.starts_at, appt.ends_at, appt.contact_id,
            appt.attempt_id, appt.agent) == (result.appointment_id, fiona, starts,
                                             starts + timedelta(minutes=90), cont, att, "alice")
    assert contact(engine, cont).state_reason == (
        "closed by agent alice: APPT Appointment booked (appointment with Fiona at "
        "2026-03-11 14:00 UTC)")


def test_overlapping_appointment_is_refused_naming_the_booked_slot(engine: Engine) -> None:
    add_field_agent(engine, "Fiona")
    add_field_agent(engine, "Frank")
    cid = make_campaign(engine, NOW)
    two = TOMORROW.replace(hour=14)
    _, _, first = live_call(engine, campaign_id=cid)
    booked = apply(engine, first, WrapUp("APPT", field_agent="Fiona", appointment_at=two))
    _, _, second = live_call(engine, campaign_id=cid)
    for starts in (two, two + timedelta(minutes=59), two - timedelta(minutes=30)):
        with refused(f"appointment_at: field agent 'Fiona' is already booked "
                     f"2026-03-11 14:00-15:00 UTC (appointment {booked.appointment_id})"):
            apply(engine, second, WrapUp("APPT", field_agent="Fiona", appointment_at=starts))
    # Slots are [start, end): the next one may start when this one ends; another agent is free.
    apply(engine, second, WrapUp("APPT", field_agent="Fiona",
                                 appointment_at=two + timedelta(hours=1)))
    _, _, third = live_call(engine, campaign_id=cid)
    apply(engine, third, WrapUp("APPT", field_agent="Frank", appointment_at=two))
    _, _, fourth = live_call(engine, campaign_id=cid)
    apply(engine, fourth, WrapUp("APPT", field_agent="Fiona",
                                 appointment_at=two - timedelta(minutes=30),
                                 appointment_minutes=30))
    assert count(engine, Appointment) == 4


@pytest.mark.parametrize(("wrap", "message"), [
    (WrapUp("APPT", appointment_at=TOMORROW),
     "field_agent: required for disposition APPT (type T)"),
    (WrapUp("APPT", field_agent="Fiona"),
     "appointment_at: required for disposition APPT (type T)"),
    (WrapUp("APPT", field_agent="Nobody", appointment_at=TOMORROW),
     "field_agent: there is no field agent named 'Nobody'"),
    (WrapUp("APPT", field_agent="Fiona", appointment_at=NOW - timedelta(hours=1)),
     "appointment_at: 2026-03-10T15:00:00.000Z is not in the future"),
    (WrapUp("APPT", field_agent="Fiona", appointment_at=TOMORROW, appointment_minutes=0),
     "appointment_minutes: 0 must be a whole number from 1 to 1440"),
])
def test_bad_appointment_is_refused_naming_the_field(sqlite_engine: Engine, wrap: WrapUp,
                                                     message: str) -> None:
    add_field_agent(sqlite_engine, "Fiona")
    _, _, att = live_call(sqlite_engine)
    with refused(message):
        apply(sqlite_engine, att, wrap)
    assert count(sqlite_engine, Appointment) == 0


def test_concurrent_bookings_of_one_slot_cannot_both_succeed(engine: Engine) -> None:
    """Two wrap-ups book overlapping slots (different starts, so the unique constraint on
    (field agent, start) cannot save it) in transactions that overlap in time."""
    add_field_agent(engine, "Fiona")
    cid = make_campaign(engine, NOW)
    _, _, first = live_call(engine, campaign_id=cid, agent="alice")
    _, _, second = live_call(engine, campaign_id=cid, agent="bob")
    two = TOMORROW.replace(hour=14)
    first_booked = threading.Event()
    outcome: dict[str, str] = {}
    waited: list[float] = []

    def book_first() -> None:
        with write_transaction(engine) as conn:
            apply_disposition(conn, attempt_id=first, agent="alice", now=NOW,
                              wrap=WrapUp("APPT", field_agent="Fiona", appointment_at=two))
            first_booked.set()
            time.sleep(0.4)  # still uncommitted while the second booking runs
        outcome["first"] = "booked"

    def book_second() -> None:
        assert first_booked.wait(10)
        t0 = time.monotonic()
        try:
            with write_transaction(engine) as conn:
                apply_disposition(
                    conn, attempt_id=second, agent="bob", now=NOW,
                    wrap=WrapUp("APPT", field_agent="Fiona",
                                appointment_at=two + timedelta(minutes=30)))
            outcome["second"] = "booked"
        except WrapUpError as exc:
            outcome["second"] = str(exc)
        waited.append(time.monotonic() - t0)

    threads = [threading.Thread(target=book_first), threading.Thread(target=book_second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert outcome["first"] == "booked"
    assert outcome["second"].startswith(
        "appointment_at: field agent 'Fiona' is already booked 2026-03-11 14:00-15:00 UTC")
    assert waited[0] >= 0.2  # it waited for the first transaction (a lock), not a lucky order
    assert count(engine, Appointment) == 1
    assert attempt(engine, second).disposition is None


# --- DNC ---------------------------------------------------------------------------------------


def test_dnc_disposition_lists_the_dialed_number_and_closes_the_contact(engine: Engine) -> None:
    _, cont, att = live_call(engine, phone1="+12125550101", phone2="+12125550102")
    result = apply(engine, att, WrapUp("DNC"))
    assert (result.contact_state, result.dnc_added) == (ContactState.DNC_LISTED, True)
    row = contact(engine, cont)
    assert (row.state, row.due_at, row.callback_agent) == ("dnc_listed", None, None)
    assert row.state_reason == "do not call, by agent alice: DNC Do not call"
    with engine.connect() as conn:
        entry = conn.execute(select(DncEntry)).one()
    assert (entry.value, entry.is_prefix, entry.campaign_id, entry.list_id, entry.source,
            entry.expires_at, entry.created_at) == (
        "+12125550101", False, None, None, "agent", None, NOW)
    # Global: no campaign dials the number again.
    other = make_campaign(engine, NOW)
    (again,) = add_contacts(engine, other, [{"phone1": "+12125550101"}], NOW)
    assert lease_due_contacts(engine, other, 10, NOW, "n1") == []
    assert contact(engine, again).state == "dnc_listed"


def test_dnc_disposition_of_a_listed_number_adds_no_second_entry(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    _, _, att = live_call(engine, phone1="+12125550101")
    with write_transaction(engine) as conn:
        conn.execute(insert(DncEntry).values(value="+12125550101", source="manual",
                                             created_at=NOW))
    assert apply(engine, att, WrapUp("DNC")).dnc_added is False
    assert count(engine, DncEntry) == 1


def test_dnc_flag_on_a_sale_keeps_the_contract_and_lists_the_number(engine: Engine) -> None:
    from dialer.dispositions import DispositionSpec, add_disposition

    add_products(engine, ("FIBER", 100, True))
    cid, cont, att = live_call(engine)
    add_disposition(engine, cid, DispositionSpec("SALE-DNC", "Sale, never call again",
                                                 DispositionType.CLOSE, sale=True, dnc=True))
    result = apply(engine, att, WrapUp("SALE-DNC", cart={"FIBER": 1}))
    assert (result.contact_state, result.dnc_added) == (ContactState.DNC_LISTED, True)
    assert result.protocol is not None
    assert contact(engine, cont).state_reason == (
        f"do not call, by agent alice: SALE-DNC Sale, never call again "
        f"(contract {result.protocol})")


# --- notes -------------------------------------------------------------------------------------


def test_notes_are_saved_with_a_confirmed_disposition(engine: Engine) -> None:
    _, cont, att = live_call(engine)
    result = apply(engine, att, WrapUp("NI", notes="  Has a contract until June.\n"))
    with engine.connect() as conn:
        note = conn.execute(select(ContactNote)).one()
    assert (note.id, note.contact_id, note.attempt_id, note.agent, note.text, note.created_at
            ) == (result.note_id, cont, att, "alice", "Has a contract until June.", NOW)


def test_blank_notes_save_nothing(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    _, _, att = live_call(engine)
    assert apply(engine, att, WrapUp("NI", notes=" \n ")).note_id is None
    assert count(engine, ContactNote) == 0


def test_overlong_notes_are_refused(sqlite_engine: Engine) -> None:
    _, _, att = live_call(sqlite_engine)
    with refused("notes: at most 10000 characters (got 10001)"):
        apply(sqlite_engine, att, WrapUp("NI", notes="x" * 10_001))


# --- preconditions -----------------------------------------------------------------------------


def test_a_disposition_is_applied_once(engine: Engine) -> None:
    add_products(engine, ("FIBER", 100, True))
    _, _, att = live_call(engine)
    wrap = WrapUp("SALE", cart={"FIBER": 1}, notes="n")
    apply(engine, att, wrap)
    with refused(f"attempt_id: attempt {att} already has disposition 'SALE' (wrap-up ended "
                 "2026-03-10T16:00:00.000Z); a disposition is applied once"):
        apply(engine, att, wrap, now=NOW + timedelta(seconds=1))
    with refused(f"attempt_id: attempt {att} already has disposition 'SALE'"):
        apply(engine, att, WrapUp("NI"))
    assert (count(engine, Contract), count(engine, ContactNote), len(outbox(engine))) == (1, 1, 1)


@pytest.mark.parametrize(("values", "agent", "message"), [
    ({}, "mallory", "agent: attempt {att} was handled by agent 'alice', not by 'mallory'"),
    ({"agent": None}, "alice", "agent: attempt {att} was handled by no agent, not by 'alice'"),
    ({"connected_at": None, "outcome": "abandoned"}, "alice",
     "attempt_id: attempt {att} never reached its agent live (outcome abandoned)"),
    ({"connected_at": None, "outcome": None}, "alice",
     "attempt_id: attempt {att} never reached its agent live (outcome none yet)"),
])
def test_only_the_agent_of_a_live_answer_can_wrap_it_up(
    sqlite_engine: Engine, values: dict[str, Any], agent: str, message: str,
) -> None:
    cid = make_campaign(sqlite_engine, NOW)
    (cont,) = add_contacts(sqlite_engine, cid, [{"state": "connected"}], NOW)
    att = add_live_attempt(sqlite_engine, cid, cont, **values)
    with refused(message.format(att=att)):
        apply(sqlite_engine, att, WrapUp("NI"), agent=agent)
    with refused(message.format(att=att)):
        abandon(sqlite_engine, att, agent=agent)


def test_a_bridged_call_not_yet_settled_can_be_wrapped_up(sqlite_engine: Engine) -> None:
    cid = make_campaign(sqlite_engine, NOW)
    (cont,) = add_contacts(sqlite_engine, cid, [{"state": "connected"}], NOW)
    att = add_live_attempt(sqlite_engine, cid, cont, outcome=None)
    assert apply(sqlite_engine, att, WrapUp("NI")).contact_state is ContactState.CONNECTED


def test_unknown_attempt_and_unknown_code_are_refused(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    cid, _, att = live_call(engine)
    with refused("attempt_id: there is no attempt 999999"):
        apply(engine, 999_999, WrapUp("NI"))
    with refused(f"code: 'NOPE' is not in the disposition catalogue of campaign {cid} "
                 "(known: SALE, CBP, CB, APPT, NI, DNC, WRONG)"):
        apply(engine, att, WrapUp("NOPE"))


@pytest.mark.parametrize(("wrap", "message"), [
    (WrapUp("NI", callback_at=TOMORROW),
     "callback_at: disposition NI (type N) takes none; only a type R disposition does"),
    (WrapUp("CB", callback_at=TOMORROW, cart={"FIBER": 1}),
     "cart: disposition CB (type R) takes none; only a type C disposition does"),
    (WrapUp("SALE", cart={"FIBER": 1}, field_agent="Fiona"),
     "field_agent: disposition SALE (type C) takes none; only a type T disposition does"),
    (WrapUp("NI", appointment_at=TOMORROW),
     "appointment_at: disposition NI (type N) takes none; only a type T disposition does"),
])
def test_input_the_disposition_would_ignore_is_refused(sqlite_engine: Engine, wrap: WrapUp,
                                                       message: str) -> None:
    _, _, att = live_call(sqlite_engine)
    with refused(message):
        apply(sqlite_engine, att, wrap)


def test_a_refused_wrap_up_leaves_the_callers_transaction_clean(engine: Engine) -> None:
    add_field_agent(engine, "Fiona")
    _, cont, att = live_call(engine)
    # The caller catches the error inside its transaction, and commits anyway.
    with write_transaction(engine) as conn, pytest.raises(WrapUpError):
        apply_disposition(conn, attempt_id=att, agent="alice", now=NOW,
                          wrap=WrapUp("APPT", field_agent="Fiona", appointment_at=NOW))
    a = attempt(engine, att)
    assert (a.disposition, a.wrapup_ended_at) == (None, None)
    assert contact(engine, cont).state == "connected"
    assert (count(engine, Appointment), len(outbox(engine))) == (0, 0)


# --- the webhook -------------------------------------------------------------------------------


def test_disposition_queues_one_webhook_event_without_the_note_text(engine: Engine) -> None:
    add_products(engine, ("FIBER", 2999, True))
    _, cont, att = live_call(engine, external_id="CRM-7")
    result = apply(engine, att, WrapUp("SALE", cart={"FIBER": 2}, notes="spouse decides"))
    (row,) = outbox(engine)
    assert (row.id, row.event, row.attempt_id, row.created_at, row.next_try_at) == (
        result.outbox_id, "attempt.disposed", att, NOW, NOW)
    p = row.payload
    assert (p["attempt_id"], p["contact"], p["disposition"], p["agent"]) == (
        att, {"id": cont, "external_id": "CRM-7"}, "SALE", "alice")
    assert p["wrapup_ended_at"] == "2026-03-10T16:00:00.000Z"
    w = p["wrapup"]
    assert (w["code"], w["type"], w["sale"], w["contact_state"], w["has_notes"]) == (
        "SALE", "C", True, "connected", True)
    assert w["contract"] == {
        "id": result.contract_id, "protocol": result.protocol, "total_cents": 5998,
        "items": [{"product": "FIBER", "quantity": 2, "unit_price_cents": 2999}],
    }
    assert "spouse" not in str(p)


def test_callback_and_appointment_details_reach_the_webhook(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    add_field_agent(engine, "Fiona")
    cid = make_campaign(engine, NOW)
    _, _, cb = live_call(engine, campaign_id=cid)
    apply(engine, cb, WrapUp("CBP", callback_at=TOMORROW))
    _, _, appt = live_call(engine, campaign_id=cid)
    booked = apply(engine, appt, WrapUp("APPT", field_agent="Fiona", appointment_at=TOMORROW))
    first, second = (r.payload["wrapup"] for r in outbox(engine))
    assert (first["callback_scope"], first["due_at"], first["callback_agent"]) == (
        "private", "2026-03-11T16:00:00.000Z", "alice")
    assert second["appointment"] == {
        "id": booked.appointment_id, "field_agent": "Fiona",
        "starts_at": "2026-03-11T16:00:00.000Z", "ends_at": "2026-03-11T17:00:00.000Z",
    }


# --- abandon by agent --------------------------------------------------------------------------


def test_abandon_by_agent_records_the_attempt_and_makes_a_public_callback(engine: Engine) -> None:
    cid, cont, att = live_call(engine)
    abandon(engine, att, reason="wrap-up timeout after 600 s")
    a = attempt(engine, att)
    assert (a.outcome, a.disposition, a.wrapup_ended_at) == ("abandoned_by_agent", None, NOW)
    row = contact(engine, cont)
    # The default strategy retries abandoned_by_agent after 1 h.
    assert (row.state, row.due_at, row.callback_agent) == (
        "callback_scheduled", NOW + timedelta(hours=1), None)
    assert row.state_reason == ("abandoned by agent alice without a disposition: wrap-up "
                                "timeout after 600 s; public callback")
    (event,) = outbox(engine)
    assert (event.event, event.attempt_id) == ("attempt.abandoned_by_agent", att)
    assert event.payload["outcome"] == "abandoned_by_agent"
    assert event.payload["abandoned"] == {
        "reason": "wrap-up timeout after 600 s", "contact_state": "callback_scheduled",
        "due_at": "2026-03-10T17:00:00.000Z",
    }
    # Any agent gets it back once due.
    (lease,) = lease_due_contacts(engine, cid, 10, NOW + timedelta(hours=1), "n1")
    assert lease.contact_id == cont


def test_abandon_by_agent_waits_the_strategys_retry_delay(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    save_strategy(engine, Strategy.from_dict({
        "name": "quick", "steps": [{"phone": 1}], "retry_delays": {"abandoned_by_agent": "15m"},
    }), NOW)
    cid = make_campaign(engine, NOW, strategy="quick")
    _, cont, att = live_call(engine, campaign_id=cid)
    abandon(engine, att)
    assert contact(engine, cont).due_at == NOW + timedelta(minutes=15)


def test_abandon_saves_nothing_of_the_interaction_and_closes_the_wrap_up(engine: Engine) -> None:
    _, _, att = live_call(engine)
    abandon(engine, att, reason="browser closed")
    assert (count(engine, ContactNote), count(engine, Contract), count(engine, Appointment)) == (
        0, 0, 0)
    with refused(f"attempt_id: the wrap-up of attempt {att} ended at 2026-03-10T16:00:00.000Z "
                 "without a disposition (outcome abandoned_by_agent); it takes none now"):
        apply(engine, att, WrapUp("NI", notes="too late"))
    with refused(f"attempt_id: the wrap-up of attempt {att} ended at"):
        abandon(engine, att)
    assert count(engine, ContactNote) == 0


def test_abandon_after_a_disposition_is_refused(sqlite_engine: Engine) -> None:
    engine = sqlite_engine  # nothing here differs between the databases
    _, cont, att = live_call(engine)
    apply(engine, att, WrapUp("NI"))
    with refused(f"attempt_id: attempt {att} already has disposition 'NI'"):
        abandon(engine, att)
    assert contact(engine, cont).state == "connected"


def test_abandon_needs_a_reason(sqlite_engine: Engine) -> None:
    _, _, att = live_call(sqlite_engine)
    with refused("reason: say why the wrap-up ended without a disposition"):
        abandon(sqlite_engine, att, reason="  ")
