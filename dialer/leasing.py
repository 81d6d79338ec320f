"""Contact leasing: hand due, callable contacts to one dialer node at a time.

`lease_due_contacts` takes up to `n` due contacts of a campaign in the order the dialer must
call them (priority first, then the longest overdue, then the oldest id) and moves them to
`sent_to_dialer` for the campaign's `lease_ttl_s`, all in one transaction. Several nodes may
lease from the same campaign at once: PostgreSQL skips rows another node has locked, and
SQLite serialises the nodes with `BEGIN IMMEDIATE`. No contact is ever leased twice.

Before a contact is leased it is checked once more, exactly: the calling hours of its own zone,
and the DNC lists that apply to the campaign for the number it would dial next. A refused
contact is not leased; it is rescheduled (calling hours), moved on to its next usable number by
the strategy planner, or closed (every number on DNC).

A lease that is not settled before it expires returns the contact to the state it was leased
from, at the start of the next lease of that campaign (or through `release_expired_leases`).

A private callback (`callback_scheduled` with `callback_agent` set, from an R disposition of
private scope; see `dialer.wrapup`) belongs to one agent: the general lease skips it, and only
`lease_private_callbacks` for that agent hands it out, with the same checks.

The statements are built once, with bound parameters, because a lease runs on every pacing
tick: building and cache-keying them per call cost more than some of them take to run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Select,
    bindparam,
    case,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.selectable import GenerativeSelect

from dialer.campaigns import campaign_policy
from dialer.db import is_postgres, literal_in_list, write_transaction
from dialer.db.models import (
    LEASABLE_SQL,
    Attempt,
    Campaign,
    CampaignZone,
    Contact,
    UtcDateTime,
)
from dialer.dnc import DncLoader
from dialer.domain import (
    CONTACT_TRANSITIONS,
    LEASABLE_STATES,
    Channel,
    ContactState,
    IllegalTransition,
    Outcome,
    check_contact_transition,
    clip_reason,
)
from strategies.compliance import (
    ComplianceConfigError,
    Refusal,
    Rule,
    check_calling_hours,
    is_zone,
    zones_open,
)
from strategies.model import AttemptView, CampaignPolicy, Close, ContactView, Dial
from strategies.planner import next_action

#: Fetch rounds per call. A round after the first happens only when more candidates were
#: refused than `OVERFETCH` covers; each refusal moves the contact out of the due set or on to
#: a usable number, so the bound only guards against a strategy that keeps picking a DNC number.
MAX_ROUNDS = 8

#: Extra candidates fetched per round (a fraction of those wanted, at least one), so that the
#: few a lease refuses (DNC, a zone missing from `campaign_zones`) do not cost a second round.
#: The extras stay locked until the transaction ends, and are not leased.
OVERFETCH = 0.02


#: The literal form of "out with a dialer", as the partial index `ix_contacts_lease_expiry`
#: spells it (a bound parameter would stop PostgreSQL's generic plans from using the index).
LEASED_SQL = f"state = '{ContactState.SENT_TO_DIALER.value}'"

#: The same condition with a bound value, for statements that name their rows by id: given the
#: literal, PostgreSQL may pick the partial expiry index and filter every leased row.
_IS_LEASED = Contact.state == ContactState.SENT_TO_DIALER.value

AnySelect = Select[*tuple[Any, ...]]
_Sel = TypeVar("_Sel", bound=GenerativeSelect)

_STATES = {s.value: s for s in ContactState}
_CHANNELS = {c.value: c for c in Channel}


def _sources(new: ContactState) -> frozenset[ContactState]:
    """The states from which the state machine allows a move to `new`."""
    return frozenset(old for old, targets in CONTACT_TRANSITIONS.items() if new in targets)


#: States a lease may take a contact from, and the states an unused lease may return it to.
_LEASE_FROM = sorted(s.value for s in LEASABLE_STATES & _sources(ContactState.SENT_TO_DIALER))
_RESTORE_TO = sorted(
    s.value for s in LEASABLE_STATES if s in CONTACT_TRANSITIONS[ContactState.SENT_TO_DIALER]
)


@dataclass(frozen=True)
class LeasedContact:
    """One contact handed to a dialer node: what to dial, and until when the lease holds."""

    contact_id: int
    campaign_id: int
    phone_index: int
    number: str  # E.164
    channel: Channel
    step: int | None
    tz: str
    external_id: str | None
    params: tuple[str | None, ...]  # param1..param12
    lease_expires_at: datetime


# --- statements --------------------------------------------------------------------------------


def _candidates_statement(in_zones: bool, *, private: bool = False) -> AnySelect:
    stmt = (
        select(
            Contact.id, Contact.state, Contact.tz, Contact.external_id, Contact.next_phone,
            Contact.next_channel, Contact.next_step,
            Contact.phone1, Contact.phone2, Contact.phone3, Contact.phone4, Contact.phone5,
            Contact.param1, Contact.param2, Contact.param3, Contact.param4, Contact.param5,
            Contact.param6, Contact.param7, Contact.param8, Contact.param9, Contact.param10,
            Contact.param11, Contact.param12,
        )
        .where(
            Contact.campaign_id == bindparam("campaign_id"),
            text(LEASABLE_SQL),
            Contact.due_at <= bindparam("now", type_=UtcDateTime()),
        )
        .order_by(Contact.priority.desc(), Contact.due_at, Contact.id)
        .limit(bindparam("n", type_=Integer()))
    )
    if private:
        # One agent's private callbacks. `LEASABLE_SQL` stays in the predicate so that both
        # databases can still prove the partial lease index applies.
        stmt = stmt.where(
            Contact.state == ContactState.CALLBACK_SCHEDULED.value,
            Contact.callback_agent == bindparam("agent"),
        )
    else:
        # Private callbacks wait for their agent. Only the state makes a callback private: a
        # `callback_agent` left behind on a contact in another state does not hide it. Neither
        # column is in the index: the filter is checked on the rows the index walk reads anyway,
        # so the walk still needs no sort.
        stmt = stmt.where(
            or_(
                Contact.callback_agent.is_(None),
                Contact.state != ContactState.CALLBACK_SCHEDULED.value,
            )
        )
    if in_zones:
        stmt = stmt.where(Contact.tz.in_(bindparam("zones", expanding=True)))
    return stmt


#: Keyed by (private callbacks of one agent, filtered on zones).
_CANDIDATES = {
    (private, in_zones): _candidates_statement(in_zones, private=private)
    for private in (False, True)
    for in_zones in (False, True)
}

_LEASE = (
    update(Contact)
    .where(Contact.id.in_(literal_in_list("ids")), Contact.state.in_(_LEASE_FROM))
    .values(
        state=ContactState.SENT_TO_DIALER.value,
        leased_by=bindparam("node_id"),
        lease_expires_at=bindparam("expires", type_=UtcDateTime()),
        leased_from=Contact.state,
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
    .returning(Contact.id)
)

_EXPIRED = select(Contact.id).where(
    Contact.campaign_id == bindparam("campaign_id"),
    text(LEASED_SQL),
    Contact.lease_expires_at < bindparam("now", type_=UtcDateTime()),
)

#: Back to the state it was leased from (pending if that is unknown), lease cleared.
_RETURN_TO_POOL = {
    "state": case(
        (Contact.leased_from.in_(_RESTORE_TO), Contact.leased_from),
        else_=ContactState.PENDING.value,
    ),
    "leased_by": None,
    "lease_expires_at": None,
    "leased_from": None,
    "updated_at": bindparam("now", type_=UtcDateTime()),
}

_CAMPAIGN_TTL = select(Campaign.lease_ttl_s).where(Campaign.id == bindparam("campaign_id"))
_CAMPAIGN_ZONES = select(CampaignZone.tz).where(
    CampaignZone.campaign_id == bindparam("campaign_id")
)

_RESCHEDULE = (
    update(Contact)
    .where(Contact.id == bindparam("b_id"))
    .values(due_at=bindparam("b_due", type_=UtcDateTime()), state_reason=bindparam("b_reason"),
            updated_at=bindparam("b_now", type_=UtcDateTime()))
)

_REPLAN = (
    update(Contact)
    .where(Contact.id == bindparam("b_id"))
    .values(due_at=bindparam("b_due", type_=UtcDateTime()), next_phone=bindparam("b_phone"),
            next_channel=bindparam("b_channel"), next_step=bindparam("b_step"),
            state_reason=bindparam("b_reason"),
            updated_at=bindparam("b_now", type_=UtcDateTime()))
)


def _candidate_params(
    campaign_id: int, n: int, now: datetime, zones: Collection[str] | None,
    agent: str | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {"campaign_id": campaign_id, "n": n, "now": now}
    if zones is not None:
        values["zones"] = sorted(zones)
    if agent is not None:
        values["agent"] = agent
    return values


def lease_candidates_query(
    campaign_id: int, n: int, now: datetime, zones: set[str] | None, agent: str | None = None
) -> AnySelect:
    """The first `n` due, leasable contacts of the campaign, in lease order.

    `zones` limits the contacts to those time zones (None: any zone). The predicate on the state
    is the literal `LEASABLE_SQL`, and the order is the column order of `ix_contacts_lease`, so
    both databases walk that partial index and stop after `n` rows: no sort, no scan of
    contacts that are not leasable. This is the statement `lease_due_contacts` runs; with
    `agent`, the one `lease_private_callbacks` runs for that agent.
    """
    return _CANDIDATES[agent is not None, zones is not None].params(
        _candidate_params(campaign_id, n, now, zones, agent)
    )


def _claim(stmt: _Sel, conn: Connection) -> _Sel:
    """Make `stmt` claim the rows it selects: the one place leasing differs by database.

    PostgreSQL: lock the rows, skipping those another node's transaction holds, so that nodes
    neither wait for nor double-lease each other. SQLite: nothing to add; the transaction began
    with `BEGIN IMMEDIATE` (`write_transaction`), so it holds the database's only write lock.
    """
    return stmt.with_for_update(skip_locked=True) if is_postgres(conn) else stmt


# --- leases ------------------------------------------------------------------------------------


def release_expired_leases(conn: Connection, campaign_id: int, now: datetime) -> int:
    """Return the campaign's contacts whose lease expired before `now` to the pool.

    Each goes back to the state it was leased from (`pending` if that is unknown), with its
    lease columns cleared. Runs in the caller's transaction; returns how many were released.
    """
    expired = conn.scalars(
        _claim(_EXPIRED, conn), {"campaign_id": campaign_id, "now": now}
    ).all()
    if not expired:
        return 0
    result = conn.execute(
        update(Contact)
        .where(Contact.id.in_(literal_in_list("ids")), _IS_LEASED)
        .values(**_RETURN_TO_POOL),
        {"ids": expired, "now": now},
    )
    return int(result.rowcount)


def release_lease(
    engine: Engine, contact_id: int, node_id: str, *, now: datetime | None = None
) -> bool:
    """Hand back a leased contact unused. Returns False if `node_id` no longer holds its lease."""
    with write_transaction(engine) as conn:
        result = conn.execute(
            update(Contact)
            .where(Contact.id == contact_id, _IS_LEASED, Contact.leased_by == node_id)
            .values(**_RETURN_TO_POOL),
            {"now": now or datetime.now(UTC)},
        )
        return bool(result.rowcount)


def lease_due_contacts(
    engine: Engine, campaign_id: int, n: int, now: datetime, node_id: str
) -> list[LeasedContact]:
    """Lease up to `n` due contacts of the campaign to `node_id`, in the order to dial them.

    One transaction: expired leases of the campaign return to the pool first; then candidates
    are fetched from the zones inside calling hours, re-checked (calling hours of the contact's
    zone, DNC on the number it would dial next), and the allowed ones move to `sent_to_dialer`
    with `leased_by=node_id` until `now + lease_ttl_s`. Refused ones are rescheduled, moved on
    to their next usable number, or closed, and more candidates are fetched in their place.
    Private callbacks (`callback_agent` set) are left for `lease_private_callbacks`.
    Raises LookupError for an unknown campaign.
    """
    return _lease(engine, campaign_id, n, now, node_id, agent=None)


def lease_private_callbacks(
    engine: Engine, campaign_id: int, agent: str, n: int, now: datetime, node_id: str
) -> list[LeasedContact]:
    """Lease up to `n` of `agent`'s due private callbacks in the campaign to `node_id`.

    The same transaction, order and checks as `lease_due_contacts` (expired leases returned
    first, calling hours, DNC), limited to `callback_scheduled` contacts whose
    `callback_agent` is `agent`. The lease keeps `callback_agent`, so a lease that expires
    unused returns the callback to the same agent. Raises LookupError for an unknown campaign.
    """
    return _lease(engine, campaign_id, n, now, node_id, agent=agent)


def _lease(
    engine: Engine, campaign_id: int, n: int, now: datetime, node_id: str, *, agent: str | None
) -> list[LeasedContact]:
    """The lease itself: the general pool (`agent` None) or one agent's private callbacks."""
    if n <= 0:
        return []
    with write_transaction(engine) as conn:
        release_expired_leases(conn, campaign_id, now)
        ttl_s = conn.scalar(_CAMPAIGN_TTL, {"campaign_id": campaign_id})
        if ttl_s is None:
            raise LookupError(f"no campaign with id {campaign_id}")
        policy = campaign_policy(conn, campaign_id)
        known = set(conn.scalars(_CAMPAIGN_ZONES, {"campaign_id": campaign_id}))
        open_zones = zones_open(
            (z for z in known if is_zone(z)), now, policy.calling_hours, policy.holidays
        )
        if known and not open_zones:
            return []
        # No recorded zones means the importer did not fill them: lease without the filter and
        # let the exact check below decide, rather than stall the campaign.
        zone_filter = open_zones if open_zones != known else None
        screen = _Screen(conn, campaign_id, policy, now)
        expires = now + timedelta(seconds=ttl_s)
        leased: list[LeasedContact] = []
        for _ in range(MAX_ROUNDS):
            want = n - len(leased)
            fetch = want + max(1, int(want * OVERFETCH))
            rows = conn.execute(
                _claim(_CANDIDATES[agent is not None, zone_filter is not None], conn),
                _candidate_params(campaign_id, fetch, now, zone_filter, agent),
            ).all()
            candidates = [_candidate(r) for r in rows]
            allowed = screen.allowed(candidates)
            leased += _mark_leased(conn, allowed[:want], campaign_id, node_id, now, expires)
            if len(leased) >= n or len(allowed) == len(candidates):
                break
        return leased


class _Candidate(NamedTuple):
    """One row of the candidate query, with the number it would dial next resolved."""

    id: int
    state: ContactState
    tz: str
    external_id: str | None
    slot: int
    number: str
    channel: Channel
    step: int | None
    phones: tuple[str | None, ...]
    params: tuple[str | None, ...]


def _candidate(row: Sequence[Any]) -> _Candidate:
    phones, params = tuple(row[7:12]), tuple(row[12:24])
    slot = row[4] if row[4] in (1, 2, 3, 4, 5) else 1
    if not phones[slot - 1]:
        slot = 1  # an empty slot dials phone1, as the planner resolves it
    return _Candidate(row[0], _STATES[row[1]], row[2], row[3], slot, phones[slot - 1],
                      _CHANNELS[row[5]], row[6], phones, params)


def _mark_leased(
    conn: Connection, rows: Sequence[_Candidate], campaign_id: int, node_id: str,
    now: datetime, expires: datetime,
) -> list[LeasedContact]:
    """Move `rows` to `sent_to_dialer`; the leased contacts, in the order of `rows`."""
    if not rows:
        return []
    done = set(conn.scalars(
        _LEASE, {"ids": [r.id for r in rows], "node_id": node_id, "expires": expires, "now": now}
    ).all())
    return [
        LeasedContact(r.id, campaign_id, r.slot, r.number, r.channel, r.step, r.tz,
                      r.external_id, r.params, expires)
        for r in rows
        if r.id in done
    ]


# --- the checks before a lease -----------------------------------------------------------------


class _Screen:
    """The exact per-contact checks before a lease, and what happens to a refused contact."""

    def __init__(
        self, conn: Connection, campaign_id: int, policy: CampaignPolicy, now: datetime
    ) -> None:
        self.conn, self.campaign_id, self.policy, self.now = conn, campaign_id, policy, now
        self._hours: dict[str, Refusal | None] = {}
        self._dnc = DncLoader(conn, campaign_id, now)

    def allowed(self, rows: Sequence[_Candidate]) -> list[_Candidate]:
        """The rows that may be leased, in order; every refused row is updated in the database."""
        if not rows:
            return []
        by_hours: list[tuple[_Candidate, Refusal]] = []
        passed: list[_Candidate] = []
        for r in rows:
            refusal = self._hours_refusal(r.tz)
            if refusal is None:
                passed.append(r)
            else:
                by_hours.append((r, refusal))
        self._reschedule(by_hours)
        matcher = self._dnc.matcher({r.number for r in passed})
        allowed: list[_Candidate] = []
        by_dnc: list[tuple[_Candidate, Refusal]] = []
        for r in passed:
            refusal = matcher.refusal(r.number, self.now) if len(matcher) else None
            if refusal is None:
                allowed.append(r)
            else:
                by_dnc.append((r, refusal))
        if by_dnc:
            self._replan(by_dnc)
        return allowed

    def _hours_refusal(self, tz: str) -> Refusal | None:
        if tz not in self._hours:
            try:
                self._hours[tz] = check_calling_hours(
                    tz, self.now, self.policy.calling_hours, self.policy.holidays
                )
            except ComplianceConfigError as exc:
                self._hours[tz] = Refusal(Rule.CALLING_HOURS, f"{exc}; fix the contact's zone")
        return self._hours[tz]

    def _reschedule(self, refused: Sequence[tuple[_Candidate, Refusal]]) -> None:
        """Calling hours: not before the window opens (never, if it never opens)."""
        if refused:
            self.conn.execute(_RESCHEDULE, [
                {"b_id": r.id, "b_due": refusal.until, "b_reason": _reason(refusal),
                 "b_now": self.now}
                for r, refusal in refused
            ])

    def _replan(self, refused: Sequence[tuple[_Candidate, Refusal]]) -> None:
        """DNC on the next number: let the planner choose another usable number, or close."""
        matcher = self._dnc.matcher({p for r, _ in refused for p in r.phones if p})
        history = self._attempts([r.id for r, _ in refused])
        dials: list[dict[str, Any]] = []
        for r, refusal in refused:
            view = ContactView(
                phones=r.phones,
                tz=r.tz,
                state=r.state,
                dnc_phones=frozenset(
                    i for i, p in enumerate(r.phones, 1) if p and matcher.match(p, self.now)
                ),
            )
            action = next_action(view, history.get(r.id, ()), self.policy, self.now)
            if isinstance(action, Dial):
                dials.append({
                    "b_id": r.id, "b_due": action.earliest, "b_phone": action.phone_index,
                    "b_channel": action.channel.value, "b_step": action.step,
                    "b_reason": _reason(refusal, *action.delayed_by), "b_now": self.now,
                })
            else:
                self._close(r, action)
        if dials:
            self.conn.execute(_REPLAN, dials)

    def _close(self, row: _Candidate, close: Close) -> None:
        values: dict[str, Any] = {"due_at": None, "updated_at": self.now}
        try:
            check_contact_transition(row.state, close.state)
        except IllegalTransition as exc:
            # The planner closed it in a state this one cannot reach automatically (say a
            # callback that ran out of attempts): keep the state, out of the pool, and say why.
            values["state_reason"] = _reason(close.refusal, note=f"kept {row.state.value}: {exc}")
        else:
            values["state"] = close.state.value
            values["state_reason"] = _reason(close.refusal)
        self.conn.execute(
            update(Contact)
            .where(Contact.id == row.id, Contact.state == row.state.value)
            .values(**values)
        )

    def _attempts(self, contact_ids: Sequence[int]) -> dict[int, list[AttemptView]]:
        out: dict[int, list[AttemptView]] = {}
        rows = self.conn.execute(
            select(Attempt.contact_id, Attempt.placed_at, Attempt.phone_index, Attempt.channel,
                   Attempt.outcome, Attempt.step)
            .where(Attempt.contact_id.in_(contact_ids))
            .order_by(Attempt.contact_id, Attempt.placed_at)
        )
        for a in rows:
            out.setdefault(a.contact_id, []).append(AttemptView(
                placed_at=a.placed_at,
                phone_index=a.phone_index,
                channel=Channel(a.channel),
                outcome=Outcome(a.outcome) if a.outcome is not None else None,
                step=a.step,
            ))
        return out


def _reason(*refusals: Refusal, note: str | None = None) -> str:
    return clip_reason("; ".join([*(str(r) for r in refusals), *([note] if note else [])]))
