"""Attempt rows and what follows an attempt: the database side of the engine.

Every function takes a `Connection` and runs in the caller's transaction, so that the engine
can write a state change and whatever depends on it (the agent's new state, the CRM outbox
row) atomically, before it acts on the PBX.

- `open_attempts` writes one attempt row per leased contact (outcome NULL: in flight) before
  anything is dialed; the row's `correlation_id` is the call id the PBX will know the call by.
- `finish_attempt` records the outcome and hands the contact to the strategy planner
  (`settle_contact`): the next dial (another phone, SMS, a retry time), or a closed state.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from dialer.db.models import Attempt, Contact, UtcDateTime
from dialer.domain import (
    Channel,
    ContactState,
    IllegalTransition,
    Outcome,
    check_contact_transition,
    clip_reason,
)
from dialer.leasing import LeasedContact
from strategies.model import AttemptView, CampaignPolicy, ContactView, Dial
from strategies.planner import next_action


def new_call_id() -> str:
    """A fresh correlation id: unique, 35 characters of [a-z0-9-] (what the backends accept)."""
    return f"pl-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class OpenAttempt:
    """An attempt row written for a leased contact, with the call id it will be dialed under."""

    attempt_id: int
    call_id: str
    lease: LeasedContact


def open_attempts(
    conn: Connection,
    leases: Sequence[LeasedContact],
    node_id: str,
    now: datetime,
) -> list[OpenAttempt]:
    """Write an in-flight attempt (outcome NULL, call_state `dialing`) per lease."""
    if not leases:
        return []
    rows = [
        {
            "contact_id": lease.contact_id,
            "campaign_id": lease.campaign_id,
            "step": lease.step,
            "phone_index": lease.phone_index,
            "number": lease.number,
            "channel": lease.channel.value,
            "placed_at": now,
            "node_id": node_id,
            "correlation_id": new_call_id(),
            "call_state": "dialing",
        }
        for lease in leases
    ]
    # One multi-row INSERT per tick (not one per call): the ids come back in row order.
    ids = conn.scalars(
        insert(Attempt).returning(Attempt.id, sort_by_parameter_order=True), rows
    ).all()
    return [
        OpenAttempt(int(aid), str(row["correlation_id"]), lease)
        for aid, row, lease in zip(ids, rows, leases, strict=True)
    ]


def cancel_attempt(conn: Connection, attempt_id: int, contact_id: int, now: datetime) -> None:
    """The PBX refused an originate, so nothing was dialed: drop the row, release the lease."""
    conn.execute(delete(Attempt).where(Attempt.id == attempt_id))
    conn.execute(
        update(Contact)
        .where(Contact.id == contact_id, Contact.state == ContactState.SENT_TO_DIALER.value)
        .values(
            state=Contact.leased_from,
            leased_by=None,
            lease_expires_at=None,
            leased_from=None,
            updated_at=now,
        )
    )


_MARKS: dict[tuple[str, ...], Any] = {}


def mark_call(conn: Connection, attempt_id: int, **values: Any) -> None:
    """Update the in-flight attempt (call_state, answered_at, agent, connected_at…).

    One statement per set of columns, built on first use (see `_FINISH` for why).
    """
    key = tuple(sorted(values))
    stmt = _MARKS.get(key)
    if stmt is None:
        cols = Attempt.__table__.c
        stmt = _MARKS[key] = (
            update(Attempt)
            .where(Attempt.id == bindparam("b_attempt_id"))
            .values({k: bindparam(f"b_{k}", type_=cols[k].type) for k in key})
        )
    conn.execute(stmt, {"b_attempt_id": attempt_id, **{f"b_{k}": v for k, v in values.items()}})


# Built once with bound parameters: the engine settles an attempt per finished call, up to a
# hundred a second, and building and cache-keying the statements cost more than running them.
_ATTEMPT_ROW = select(Attempt.contact_id, Attempt.outcome).where(
    Attempt.id == bindparam("attempt_id"))
_FINISH = (
    update(Attempt)
    .where(Attempt.id == bindparam("attempt_id"), Attempt.outcome.is_(None))
    .values(outcome=bindparam("outcome"), q850_cause=bindparam("cause"),
            ended_at=bindparam("now", type_=UtcDateTime()), call_state="ended")
)
_CONTACT = select(
    Contact.state, Contact.tz, Contact.tz_override, Contact.campaign_id,
    Contact.phone1, Contact.phone2, Contact.phone3, Contact.phone4, Contact.phone5,
).where(Contact.id == bindparam("contact_id"))
_HISTORY = select(
    Attempt.placed_at, Attempt.phone_index, Attempt.channel, Attempt.outcome, Attempt.step
).where(Attempt.contact_id == bindparam("contact_id"))
#: Counted, not incremented: settling twice for one attempt (a dangling call reconciled
#: late) cannot count it twice.
_COUNTED = (
    select(func.count()).select_from(Attempt)
    .where(Attempt.contact_id == bindparam("contact_id"), Attempt.outcome.is_not(None))
    .scalar_subquery()
)
_RECOUNT = update(Contact).where(Contact.id == bindparam("contact_id")).values(
    attempt_count=_COUNTED)
_SCHEDULE = update(Contact).where(Contact.id == bindparam("contact_id")).values(
    state=ContactState.NOT_CONNECTED.value,
    due_at=bindparam("due", type_=UtcDateTime()),
    next_phone=bindparam("phone"),
    next_channel=bindparam("channel"),
    next_step=bindparam("step"),
    state_reason=bindparam("reason"),
    leased_by=None, lease_expires_at=None, leased_from=None,
    attempt_count=_COUNTED,
    updated_at=bindparam("now", type_=UtcDateTime()),
)
_CLOSE = update(Contact).where(Contact.id == bindparam("contact_id")).values(
    state=bindparam("state"),
    due_at=None,
    state_reason=bindparam("reason"),
    leased_by=None, lease_expires_at=None, leased_from=None,
    attempt_count=_COUNTED,
    updated_at=bindparam("now", type_=UtcDateTime()),
)


def finish_attempt(
    conn: Connection,
    attempt_id: int,
    outcome: Outcome,
    now: datetime,
    policy: CampaignPolicy,
    *,
    cause: int | None = None,
    reason: str | None = None,
) -> ContactState:
    """Record the attempt's outcome, then let the strategy decide what the contact does next.

    Only an attempt still in flight (outcome NULL) is finished; finishing one twice is a no-op
    that returns the contact's current state (a HANGUP replayed after a reconnect).
    """
    row = conn.execute(_ATTEMPT_ROW, {"attempt_id": attempt_id}).one()
    if row.outcome is None:
        conn.execute(_FINISH, {"attempt_id": attempt_id, "outcome": outcome.value,
                               "cause": cause, "now": now})
    return settle_contact(conn, row.contact_id, policy, now, reason=reason)


def settle_contact(
    conn: Connection,
    contact_id: int,
    policy: CampaignPolicy,
    now: datetime,
    *,
    reason: str | None = None,
) -> ContactState:
    """Run the planner for a contact that is out with the dialer and apply its answer.

    Dial → `not_connected` with the next due time, phone, channel and step; Close → the
    closed state. A contact that is no longer `sent_to_dialer` or `dangling` (it is with an
    agent, or an operator changed it meanwhile) keeps its state; its attempt count is updated.

    DNC is not looked up here: every lease checks the number it would dial against the DNC
    lists exactly and moves the contact on to a usable number, or closes it as `dnc_listed`
    (`dialer.leasing`). Checking here as well would double the cost of every finished call.
    """
    c = conn.execute(_CONTACT, {"contact_id": contact_id}).one()
    state = ContactState(c.state)
    if state not in (ContactState.SENT_TO_DIALER, ContactState.DANGLING):
        conn.execute(_RECOUNT, {"contact_id": contact_id})
        return state
    phones = (c.phone1, c.phone2, c.phone3, c.phone4, c.phone5)
    view = ContactView(phones=phones, tz=c.tz_override or c.tz, state=state)
    history = [
        AttemptView(
            placed_at=a.placed_at,
            phone_index=a.phone_index,
            channel=_CHANNELS[a.channel],
            outcome=_OUTCOMES[a.outcome] if a.outcome is not None else None,
            step=a.step,
        )
        for a in conn.execute(_HISTORY, {"contact_id": contact_id})
    ]
    action = next_action(view, history, policy, now)
    if isinstance(action, Dial):
        new = ContactState.NOT_CONNECTED
        text = "; ".join([*(str(r) for r in action.delayed_by), *([reason] if reason else [])])
        stmt, params = _SCHEDULE, {
            "due": action.earliest, "phone": action.phone_index,
            "channel": action.channel.value, "step": action.step,
            "reason": clip_reason(text) or None,
        }
    else:
        new = action.state
        stmt, params = _CLOSE, {
            "state": new.value,
            "reason": clip_reason("; ".join([str(action.refusal), *([reason] if reason else [])])),
        }
    try:
        check_contact_transition(state, new)
    except IllegalTransition:
        # dangling -> sms_sent and the like: the planner's answer is right, but the state
        # machine has no such automatic move; keep the contact out of the pool and say why.
        stmt, params = _CLOSE, {
            "state": state.value,
            "reason": clip_reason(f"kept {state.value}: planner said {new.value} "
                            f"({params['reason']})"),
        }
        new = state
    conn.execute(stmt, {**params, "contact_id": contact_id, "now": now})
    return new


_CHANNELS = {c.value: c for c in Channel}
_OUTCOMES = {o.value: o for o in Outcome}

