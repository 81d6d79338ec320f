"""Wrap-up: what an agent's disposition does to the attempt, the contact and the business tables.

When an agent ends wrap-up with a confirmed disposition, `apply_disposition` records it on the
attempt and carries out what the campaign's catalogue (`dialer.dispositions`) says the code
means:

- `R` callback: the contact becomes `callback_scheduled`, due at the agreed time. A private
  callback keeps `contacts.callback_agent` (only `dialer.leasing.lease_private_callbacks` for
  that agent hands it out); a public one goes to anyone.
- `N` negative: the contact is closed. It stays `connected`, out of the lease pool.
- `C` sale/close: the cart becomes a contract with a unique protocol number; contact closed.
- `T` appointment: a slot in a field agent's agenda, never overlapping another; contact closed.
- any code flagged `dnc`: the dialed number goes on the global DNC list (source `agent`) and
  the contact becomes `dnc_listed`.
- the agent's notes become a `contact_notes` row.

When the agent leaves without a confirmed disposition (wrap-up timeout, logout, browser closed)
`abandon_by_agent` saves nothing of the interaction, as the seed CRM does, but does not lose the
contact either: the attempt is recorded as `abandoned_by_agent` and the contact becomes a public
callback after the strategy's retry delay for that outcome.

Both functions run in the caller's transaction and never commit: the engine writes the
disposition, the agent's next state and the webhook outbox row (`dialer.outbox.enqueue`)
atomically. Call them inside `dialer.db.write_transaction`: on SQLite that takes the write lock
at BEGIN, which is what serialises two bookings of one field agent there; on PostgreSQL the
field agent's row is locked (`SELECT ... FOR UPDATE`) before the overlap check.

Every input is checked before the first write, so a `WrapUpError` leaves the transaction as it
was (the agent fixes the field and confirms again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from dialer.campaigns import campaign_policy
from dialer.db import is_postgres
from dialer.db.models import (
    Appointment,
    Attempt,
    Contact,
    ContactNote,
    Contract,
    ContractItem,
    Disposition,
    DncEntry,
    FieldAgent,
    Product,
)
from dialer.domain import (
    TERMINAL_STATES,
    CallbackScope,
    ContactState,
    DispositionType,
    DncSource,
    IllegalTransition,
    Outcome,
    check_contact_transition,
    clip_reason,
)
from dialer.outbox import attempt_payload, enqueue, iso_utc

#: A note is free text typed during one call; more than this is a paste accident.
NOTES_MAX_CHARS = 10_000
#: An appointment lasts from one minute to one day.
APPOINTMENT_MINUTES_RANGE = (1, 24 * 60)

#: Webhook events this module queues.
EVENT_DISPOSED = "attempt.disposed"
EVENT_ABANDONED_BY_AGENT = "attempt.abandoned_by_agent"

_E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


class WrapUpError(ValueError):
    """A wrap-up that cannot be applied. The message starts with the field to fix."""


@dataclass(frozen=True)
class WrapUp:
    """What the agent entered when confirming the disposition.

    `cart` maps product codes to quantities (type C only); `field_agent` is a field agent's
    name and `appointment_at` the start of the slot (type T only); `callback_at` is the agreed
    callback time (type R only). Times must be timezone-aware.
    """

    code: str
    notes: str | None = None
    callback_at: datetime | None = None
    cart: Mapping[str, int] | None = None
    field_agent: str | None = None
    appointment_at: datetime | None = None
    appointment_minutes: int = 60


@dataclass(frozen=True)
class WrapUpResult:
    """What `apply_disposition` did.

    `contact_state` is the contact's state afterwards. It is the disposition's target unless
    the state machine forbids the move (say a concurrent SMS STOP made the contact
    `dnc_listed`); then the contact keeps its state and `contacts.state_reason` says why.
    """

    attempt_id: int
    contact_id: int
    campaign_id: int
    code: str
    type: DispositionType
    contact_state: ContactState
    due_at: datetime | None
    callback_agent: str | None
    outbox_id: int
    contract_id: int | None = None
    protocol: str | None = None
    total_cents: int | None = None
    appointment_id: int | None = None
    dnc_added: bool = False
    note_id: int | None = None


# --- public API --------------------------------------------------------------------------------


def apply_disposition(
    conn: Connection, *, attempt_id: int, agent: str, wrap: WrapUp, now: datetime
) -> WrapUpResult:
    """Apply the confirmed disposition `wrap` of `agent` to attempt `attempt_id`.

    Preconditions (else `WrapUpError`): the attempt exists, reached `agent` live (it has
    `connected_at`, or the outcome `human`), `agent` handled it, and it has no disposition and
    no closed wrap-up yet. A disposition is applied once: a second call for the same attempt,
    even with the same code, is refused, so a retried request can never create a second
    contract or appointment.

    Writes `attempts.disposition` and `attempts.wrapup_ended_at = now`, then what the type
    asks for (see the module docstring), the note, and one `attempt.disposed` outbox event
    whose payload is `dialer.outbox.attempt_payload` plus a `wrapup` section. Never commits.
    """
    _check_aware(now, "now")
    att = _open_attempt(conn, attempt_id, agent)
    spec = _catalogue_entry(conn, att.campaign_id, wrap.code)
    dtype = DispositionType(spec.type)
    where = f"disposition {spec.code} (type {dtype.value})"
    _refuse_fields_of_other_types(wrap, dtype, where)
    notes = _clean_notes(wrap.notes)

    # Validate everything, and take the locks, before the first write.
    callback_at: datetime | None = None
    cart: list[_Line] = []
    slot: _Slot | None = None
    if dtype is DispositionType.CALLBACK:
        callback_at = _future(wrap.callback_at, now, "callback_at", where)
    elif dtype is DispositionType.CLOSE:
        cart = _priced_cart(conn, wrap.cart, where)
    elif dtype is DispositionType.APPOINTMENT:
        slot = _free_slot(conn, wrap, now, where)
    if spec.dnc:
        _check_dnc_number(att.number)

    _claim_attempt(conn, att, now, disposition=spec.code)
    label = f"{spec.code} {spec.label}"
    contract: _Contract | None = None
    appointment_id: int | None = None
    detail = ""
    if cart:
        contract = _create_contract(conn, att, agent, cart, now)
        detail = f" (contract {contract.protocol})"
    elif slot is not None:
        appointment_id = _book(conn, att, agent, slot, now)
        detail = f" (appointment with {slot.field_agent} at {slot.starts:%Y-%m-%d %H:%M} UTC)"
    dnc_added = False
    if spec.dnc:
        dnc_added = _add_to_dnc(conn, att.number, now, f"disposition {label} by agent {agent}")
        target = _Target(ContactState.DNC_LISTED,
                         reason=f"do not call, by agent {agent}: {label}{detail}")
    elif dtype is DispositionType.CALLBACK:
        private = spec.callback_scope == CallbackScope.PRIVATE.value
        target = _Target(
            ContactState.CALLBACK_SCHEDULED,
            reason=f"{'private' if private else 'public'} callback agreed by agent {agent}: "
            f"{label}",
            due_at=callback_at,
            callback_agent=agent if private else None,
        )
    else:
        target = _Target(ContactState.CONNECTED, reason=f"closed by agent {agent}: {label}{detail}")
    moved = _move_contact(conn, att.contact_id, target, now)

    note_id = None
    if notes is not None:
        note_id = conn.scalar(
            insert(ContactNote)
            .values(contact_id=att.contact_id, attempt_id=att.id, agent=agent, text=notes,
                    created_at=now)
            .returning(ContactNote.id)
        )

    wrapup: dict[str, Any] = {
        "code": spec.code,
        "label": spec.label,
        "type": dtype.value,
        "callback_scope": spec.callback_scope,
        "sale": spec.sale,
        "dnc": spec.dnc,
        "completed": spec.completed,
        "contact_state": moved.state.value,
        "due_at": iso_utc(moved.due_at),
        "callback_agent": moved.callback_agent,
        "contract": None,
        "appointment": None,
        # The note's text stays in Paceline: agents type anything into it.
        "has_notes": notes is not None,
    }
    if contract is not None:
        wrapup["contract"] = {
            "id": contract.id,
            "protocol": contract.protocol,
            "total_cents": contract.total_cents,
            "items": [
                {"product": ln.code, "quantity": ln.quantity, "unit_price_cents": ln.unit_cents}
                for ln in cart
            ],
        }
    if slot is not None:
        wrapup["appointment"] = {
            "id": appointment_id,
            "field_agent": slot.field_agent,
            "starts_at": iso_utc(slot.starts),
            "ends_at": iso_utc(slot.ends),
        }
    payload = {**attempt_payload(conn, att.id), "wrapup": wrapup}
    outbox_id = enqueue(conn, EVENT_DISPOSED, payload, now, attempt_id=att.id)
    return WrapUpResult(
        attempt_id=att.id,
        contact_id=att.contact_id,
        campaign_id=att.campaign_id,
        code=spec.code,
        type=dtype,
        contact_state=moved.state,
        due_at=moved.due_at,
        callback_agent=moved.callback_agent,
        outbox_id=outbox_id,
        contract_id=contract.id if contract else None,
        protocol=contract.protocol if contract else None,
        total_cents=contract.total_cents if contract else None,
        appointment_id=appointment_id,
        dnc_added=dnc_added,
        note_id=int(note_id) if note_id is not None else None,
    )


def abandon_by_agent(
    conn: Connection, *, attempt_id: int, agent: str, now: datetime, reason: str
) -> None:
    """Close attempt `attempt_id` of `agent` without a confirmed disposition.

    For a wrap-up timeout, a logout or a closed browser. Nothing of the interaction is saved
    (no note, cart or appointment). The attempt gets `outcome = 'abandoned_by_agent'` and
    `wrapup_ended_at = now`, disposition NULL. The contact is not lost: it becomes a public
    callback (`callback_agent` NULL) due `now` + the campaign strategy's retry delay for
    `abandoned_by_agent`, with `reason` in its `state_reason`. Queues one
    `attempt.abandoned_by_agent` outbox event. Never commits.

    Same preconditions as `apply_disposition` (else `WrapUpError`); in particular an attempt
    that already has a disposition, or was already abandoned, is refused.
    """
    _check_aware(now, "now")
    reason = " ".join(reason.split())
    if not reason:
        raise WrapUpError("reason: say why the wrap-up ended without a disposition")
    att = _open_attempt(conn, attempt_id, agent)
    delay = campaign_policy(conn, att.campaign_id).strategy.retry_delay(
        Outcome.ABANDONED_BY_AGENT
    )
    _claim_attempt(conn, att, now, disposition=None)
    target = _Target(
        ContactState.CALLBACK_SCHEDULED,
        reason=f"abandoned by agent {agent} without a disposition: {reason}; public callback",
        due_at=now + delay,
    )
    moved = _move_contact(conn, att.contact_id, target, now)
    payload = {
        **attempt_payload(conn, att.id),
        "abandoned": {
            "reason": reason,
            "contact_state": moved.state.value,
            "due_at": iso_utc(moved.due_at),
        },
    }
    enqueue(conn, EVENT_ABANDONED_BY_AGENT, payload, now, attempt_id=att.id)


# --- the attempt -------------------------------------------------------------------------------


def _check_aware(value: datetime, field: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise WrapUpError(f"{field}: {value.isoformat()} has no time zone; give an aware time")


@dataclass(frozen=True)
class _Attempt:
    """The attempt whose wrap-up is closing."""

    id: int
    contact_id: int
    campaign_id: int
    number: str


def _open_attempt(conn: Connection, attempt_id: int, agent: str) -> _Attempt:
    """The attempt, checked: it reached `agent` live and its wrap-up is still open.

    On PostgreSQL the row is locked, so a concurrent second wrap-up of the same attempt waits
    for this transaction and then finds the wrap-up closed.
    """
    stmt = select(
        Attempt.id, Attempt.contact_id, Attempt.campaign_id, Attempt.number, Attempt.agent,
        Attempt.outcome, Attempt.connected_at, Attempt.disposition, Attempt.wrapup_ended_at,
    ).where(Attempt.id == attempt_id)
    if is_postgres(conn):
        stmt = stmt.with_for_update()
    att = conn.execute(stmt).one_or_none()
    if att is None:
        raise WrapUpError(f"attempt_id: there is no attempt {attempt_id}")
    if att.disposition is not None:
        raise WrapUpError(
            f"attempt_id: attempt {attempt_id} already has disposition {att.disposition!r} "
            f"(wrap-up ended {iso_utc(att.wrapup_ended_at)}); a disposition is applied once"
        )
    if att.wrapup_ended_at is not None:
        raise WrapUpError(
            f"attempt_id: the wrap-up of attempt {attempt_id} ended at "
            f"{iso_utc(att.wrapup_ended_at)} without a disposition (outcome {att.outcome}); "
            "it takes none now"
        )
    if att.agent != agent:
        handled = f"agent {att.agent!r}" if att.agent else "no agent"
        raise WrapUpError(
            f"agent: attempt {attempt_id} was handled by {handled}, not by {agent!r}"
        )
    if att.connected_at is None and att.outcome != Outcome.HUMAN.value:
        raise WrapUpError(
            f"attempt_id: attempt {attempt_id} never reached its agent live "
            f"(outcome {att.outcome or 'none yet'}); only a live answer takes a wrap-up"
        )
    return _Attempt(att.id, att.contact_id, att.campaign_id, att.number)


def _claim_attempt(
    conn: Connection, att: _Attempt, now: datetime, *, disposition: str | None
) -> None:
    """Close the attempt's wrap-up: with `disposition`, or as abandoned by the agent.

    The WHERE repeats the preconditions, so that even a caller whose transaction did not
    serialise with a concurrent one (a deferred SQLite BEGIN) cannot close a wrap-up twice.
    """
    values: dict[str, Any] = {"wrapup_ended_at": now}
    if disposition is not None:
        values["disposition"] = disposition
    else:
        values["outcome"] = Outcome.ABANDONED_BY_AGENT.value
    done = conn.execute(
        update(Attempt)
        .where(Attempt.id == att.id, Attempt.disposition.is_(None),
               Attempt.wrapup_ended_at.is_(None))
        .values(**values)
    ).rowcount
    if done != 1:
        raise WrapUpError(
            f"attempt_id: the wrap-up of attempt {att.id} was closed by someone else meanwhile"
        )


# --- the catalogue and the inputs --------------------------------------------------------------


def _catalogue_entry(conn: Connection, campaign_id: int, code: str) -> Row[Any]:
    spec = conn.execute(
        select(Disposition).where(Disposition.campaign_id == campaign_id,
                                  Disposition.code == code)
    ).one_or_none()
    if spec is None:
        known = conn.scalars(
            select(Disposition.code).where(Disposition.campaign_id == campaign_id)
            .order_by(Disposition.id)
        ).all()
        raise WrapUpError(
            f"code: {code!r} is not in the disposition catalogue of campaign {campaign_id} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return spec


def _refuse_fields_of_other_types(wrap: WrapUp, dtype: DispositionType, where: str) -> None:
    """Input the disposition would ignore is refused: the agent typed it for a reason."""
    given = {
        "callback_at": (wrap.callback_at is not None, DispositionType.CALLBACK),
        "cart": (bool(wrap.cart), DispositionType.CLOSE),
        "field_agent": (wrap.field_agent is not None, DispositionType.APPOINTMENT),
        "appointment_at": (wrap.appointment_at is not None, DispositionType.APPOINTMENT),
    }
    for field, (present, owner) in given.items():
        if present and dtype is not owner:
            raise WrapUpError(
                f"{field}: {where} takes none; only a type {owner.value} disposition does"
            )


def _clean_notes(notes: str | None) -> str | None:
    if notes is None or not notes.strip():
        return None
    notes = notes.strip()
    if len(notes) > NOTES_MAX_CHARS:
        raise WrapUpError(f"notes: at most {NOTES_MAX_CHARS} characters (got {len(notes)})")
    return notes


def _future(value: datetime | None, now: datetime, field: str, where: str) -> datetime:
    if value is None:
        raise WrapUpError(f"{field}: required for {where}")
    _check_aware(value, field)
    if value <= now:
        raise WrapUpError(
            f"{field}: {iso_utc(value)} is not in the future (now {iso_utc(now)})"
        )
    return value


# --- C: the cart and the contract --------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    code: str
    quantity: int
    unit_cents: int


def _priced_cart(conn: Connection, cart: Mapping[str, int] | None, where: str) -> list[_Line]:
    """The cart's lines, in the agent's order, with today's unit prices; refuses bad lines."""
    if not cart:
        raise WrapUpError(f"cart: {where} needs at least one product")
    for code, qty in cart.items():
        if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
            raise WrapUpError(f"cart: quantity of product {code!r} must be a whole number > 0 "
                              f"(got {qty!r})")
    products = {
        p.code: p
        for p in conn.execute(
            select(Product.code, Product.price_cents, Product.active)
            .where(Product.code.in_(list(cart)))
        )
    }
    lines = []
    for code, qty in cart.items():
        product = products.get(code)
        if product is None:
            raise WrapUpError(f"cart: unknown product {code!r}")
        if not product.active:
            raise WrapUpError(f"cart: product {code!r} is no longer sold (inactive)")
        lines.append(_Line(code, qty, product.price_cents))
    return lines


def protocol_number(contract_id: int, created_at: datetime) -> str:
    """The contract's protocol number: `P<yyyymmdd>-<id, 8+ digits>`, e.g. `P20261203-00000042`.

    Unique by construction, since the contract id is: no random part, no retry on a collision.
    The date (UTC) is the sale's, for people reading it on the phone; the number itself does not
    need it to be unique. `contracts.protocol` has a unique constraint all the same.
    """
    return f"P{created_at:%Y%m%d}-{contract_id:08d}"


@dataclass(frozen=True)
class _Contract:
    id: int
    protocol: str
    total_cents: int


def _create_contract(
    conn: Connection, att: _Attempt, agent: str, lines: list[_Line], now: datetime
) -> _Contract:
    """Insert the contract and its items."""
    total = sum(ln.quantity * ln.unit_cents for ln in lines)
    # The protocol number derives from the id, which exists only after the insert: insert under
    # a placeholder that is unique too (one contract per attempt: the attempt was claimed).
    contract_id = conn.scalar(
        insert(Contract)
        .values(protocol=f"pending-a{att.id}", contact_id=att.contact_id,
                campaign_id=att.campaign_id, attempt_id=att.id, agent=agent,
                total_cents=total, created_at=now)
        .returning(Contract.id)
    )
    assert contract_id is not None
    protocol = protocol_number(int(contract_id), now)
    conn.execute(update(Contract).where(Contract.id == contract_id).values(protocol=protocol))
    conn.execute(insert(ContractItem), [
        {"contract_id": contract_id, "product_code": ln.code, "quantity": ln.quantity,
         "unit_price_cents": ln.unit_cents}
        for ln in lines
    ])
    return _Contract(int(contract_id), protocol, total)


# --- T: the field agent's agenda ---------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    field_agent_id: int
    field_agent: str
    starts: datetime
    ends: datetime


def _free_slot(conn: Connection, wrap: WrapUp, now: datetime, where: str) -> _Slot:
    """A free slot of the wanted field agent, whose row is now locked (PostgreSQL).

    Slots are [starts, ends): one appointment may start when the previous one ends. On
    PostgreSQL the lock makes a concurrent booking for the same field agent wait until this
    transaction ends, and then see this booking in its own overlap check.
    """
    if not wrap.field_agent:
        raise WrapUpError(f"field_agent: required for {where}")
    starts = _future(wrap.appointment_at, now, "appointment_at", where)
    lo, hi = APPOINTMENT_MINUTES_RANGE
    minutes = wrap.appointment_minutes
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not lo <= minutes <= hi:
        raise WrapUpError(
            f"appointment_minutes: {minutes!r} must be a whole number from {lo} to {hi}"
        )
    ends = starts + timedelta(minutes=minutes)
    stmt = select(FieldAgent.id).where(FieldAgent.name == wrap.field_agent)
    if is_postgres(conn):
        stmt = stmt.with_for_update()
    fa_id = conn.scalar(stmt)
    if fa_id is None:
        raise WrapUpError(f"field_agent: there is no field agent named {wrap.field_agent!r}")
    clash = conn.execute(
        select(Appointment.id, Appointment.starts_at, Appointment.ends_at)
        .where(Appointment.field_agent_id == fa_id, Appointment.starts_at < ends,
               Appointment.ends_at > starts)
        .order_by(Appointment.starts_at)
        .limit(1)
    ).one_or_none()
    if clash is not None:
        raise WrapUpError(
            f"appointment_at: field agent {wrap.field_agent!r} is already booked "
            f"{clash.starts_at:%Y-%m-%d %H:%M}-{clash.ends_at:%H:%M} UTC "
            f"(appointment {clash.id}); pick another slot"
        )
    return _Slot(int(fa_id), wrap.field_agent, starts, ends)


def _book(conn: Connection, att: _Attempt, agent: str, slot: _Slot, now: datetime) -> int:
    appointment_id = conn.scalar(
        insert(Appointment)
        .values(field_agent_id=slot.field_agent_id, starts_at=slot.starts, ends_at=slot.ends,
                contact_id=att.contact_id, attempt_id=att.id, agent=agent, created_at=now)
        .returning(Appointment.id)
    )
    assert appointment_id is not None
    return int(appointment_id)


# --- DNC ---------------------------------------------------------------------------------------


def _check_dnc_number(number: str) -> None:
    if not _E164.match(number):
        raise WrapUpError(f"number: the attempt's number {number!r} is not E.164; cannot list it")


def _add_to_dnc(conn: Connection, number: str, now: datetime, note: str) -> bool:
    """Put `number` on the global DNC list (source `agent`); False if it is listed already.

    Global scope, because the person asked not to be called, not "not by this campaign".
    `number` is the attempt's, which the dialer took from the contact's E.164 column, so it is
    stored as it is (re-parsing it could only reject a number the dialer just dialed). An
    expired global entry for it is revived rather than duplicated.
    """
    scope = (DncEntry.campaign_id.is_(None), DncEntry.list_id.is_(None),
             DncEntry.is_prefix.is_(False), DncEntry.value == number)
    entries = conn.execute(select(DncEntry.id, DncEntry.expires_at).where(*scope)).all()
    if any(e.expires_at is None or e.expires_at > now for e in entries):
        return False
    values = {"source": DncSource.AGENT.value, "expires_at": None, "note": note}
    if entries:
        conn.execute(update(DncEntry).where(DncEntry.id == entries[0].id).values(**values))
    else:
        conn.execute(insert(DncEntry).values(value=number, is_prefix=False, campaign_id=None,
                                             list_id=None, created_at=now, **values))
    return True


# --- the contact -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where a wrap-up sends the contact."""

    state: ContactState
    reason: str
    due_at: datetime | None = None
    callback_agent: str | None = None


@dataclass(frozen=True)
class _Moved:
    """The contact after a wrap-up."""

    state: ContactState
    due_at: datetime | None
    callback_agent: str | None


def _move_contact(conn: Connection, contact_id: int, target: _Target, now: datetime) -> _Moved:
    """Move the contact to `target`; where it stands afterwards.

    The usual start is `connected` (the engine settled the live answer) or `sent_to_dialer`
    (not settled yet); both reach every target, and leaving `sent_to_dialer` clears the lease.
    A move the state machine forbids is not made: a terminal contact (say `dnc_listed` by a
    concurrent SMS STOP) stays exactly as it was; any other (`dangling`) keeps its state but
    takes the target's due time, so a closed contact leaves the pool, and the reason says what
    was kept. A wrap-up is never refused for the contact's state: the sale or the appointment
    happened all the same.
    """
    stmt = select(Contact.state, Contact.due_at, Contact.callback_agent).where(
        Contact.id == contact_id
    )
    if is_postgres(conn):
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).one()
    old = ContactState(row.state)
    try:
        if old is not target.state:
            check_contact_transition(old, target.state)
    except IllegalTransition as exc:
        if old in TERMINAL_STATES:
            return _Moved(old, row.due_at, row.callback_agent)
        values: dict[str, Any] = {
            "due_at": target.due_at,
            "callback_agent": None,
            "state_reason": clip_reason(f"kept {old.value} ({exc}): {target.reason}"),
            "updated_at": now,
        }
        new = old
    else:
        values = {
            "state": target.state.value,
            "due_at": target.due_at,
            "callback_agent": target.callback_agent,
            "state_reason": clip_reason(target.reason),
            "updated_at": now,
        }
        if old is ContactState.SENT_TO_DIALER:
            values.update(leased_by=None, lease_expires_at=None, leased_from=None)
        new = target.state
    conn.execute(update(Contact).where(Contact.id == contact_id).values(**values))
    return _Moved(new, values["due_at"], values["callback_agent"])

