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
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.selectable import GenerativeSelect

from dialer.campaigns import campaign_policy
from dialer.db import is_postgres, write_transaction
from dialer.db.models import (
    LEASABLE_SQL,
    Attempt,
    Campaign,
    CampaignDncList,
    CampaignZone,
    Contact,
    DncEntry,
    DncList,
)
from dialer.domain import (
    CONTACT_TRANSITIONS,
    LEASABLE_STATES,
    Channel,
    ContactState,
    IllegalTransition,
    Outcome,
    check_contact_transition,
)
from strategies.compliance import (
    ComplianceConfigError,
    DncMatcher,
    DncRule,
    Refusal,
    Rule,
    check_calling_hours,
    zone,
    zones_open,
)
from strategies.model import AttemptView, CampaignPolicy, Close, ContactView, Dial
from strategies.planner import next_action

#: Fetch rounds per call. A round after the first happens only when candidates were refused;
#: each refusal moves the contact out of the due set or on to a usable number, so one extra
#: round is the norm and the bound only guards against a strategy that keeps picking a number
#: on DNC.
MAX_ROUNDS = 8

#: `contacts.state_reason` is a VARCHAR(200); PostgreSQL refuses a longer value.
REASON_CHARS = 200

#: The literal form of "out with a dialer", as the partial index `ix_contacts_lease_expiry`
#: spells it (a bound parameter would stop PostgreSQL's generic plans from using the index).
LEASED_SQL = f"state = '{ContactState.SENT_TO_DIALER.value}'"

_PHONES = (Contact.phone1, Contact.phone2, Contact.phone3, Contact.phone4, Contact.phone5)
_PARAMS = (
    Contact.param1, Contact.param2, Contact.param3, Contact.param4, Contact.param5,
    Contact.param6, Contact.param7, Contact.param8, Contact.param9, Contact.param10,
    Contact.param11, Contact.param12,
)

AnySelect = Select[*tuple[Any, ...]]
_Sel = TypeVar("_Sel", bound=GenerativeSelect)


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


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One row of `lease_candidates_query`, with the number it would dial next resolved."""

    id: int
    state: ContactState
    tz: str
    external_id: str | None
    slot: int
    number: str
    channel: str
    step: int | None
    phones: tuple[str | None, ...]
    params: tuple[str | None, ...]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> _Candidate:
        cid, state, tz, external_id, next_phone, channel, step, *rest = row
        phones, params = tuple(rest[:5]), tuple(rest[5:])
        slot = next_phone if 1 <= (next_phone or 0) <= len(phones) else 1
        if not phones[slot - 1]:
            slot = 1  # an empty slot dials phone1, as the planner resolves it
        number = phones[slot - 1]
        assert number is not None  # phone1 is NOT NULL
        return cls(cid, ContactState(state), tz, external_id, slot, number, channel, step,
                   phones, params)


def lease_candidates_query(
    campaign_id: int, n: int, now: datetime, zones: set[str] | None
) -> AnySelect:
    """The first `n` due, leasable contacts of the campaign, in lease order.

    `zones` limits the contacts to those time zones (None: any zone). The predicate on the state
    is the literal `LEASABLE_SQL`, and the order is the column order of `ix_contacts_lease`, so
    both databases walk that partial index and stop after `n` rows: no sort, no scan of
    contacts that are not leasable.
    """
    stmt = (
        select(
            Contact.id, Contact.state, Contact.tz, Contact.external_id, Contact.next_phone,
            Contact.next_channel, Contact.next_step, *_PHONES, *_PARAMS,
        )
        .where(Contact.campaign_id == campaign_id, text(LEASABLE_SQL), Contact.due_at <= now)
        .order_by(Contact.priority.desc(), Contact.due_at, Contact.id)
        .limit(n)
    )
    if zones is not None:
        stmt = stmt.where(Contact.tz.in_(sorted(zones)))
    return stmt


def _claim(stmt: _Sel, conn: Connection) -> _Sel:
    """Make `stmt` claim the rows it selects: the one place leasing differs by database.

    PostgreSQL: lock the rows, skipping those another node's transaction holds, so that nodes
    neither wait for nor double-lease each other. SQLite: nothing to add; the transaction began
    with `BEGIN IMMEDIATE` (`write_transaction`), so it holds the database's only write lock.
    """
    return stmt.with_for_update(skip_locked=True) if is_postgres(conn) else stmt


def _restored_state() -> Any:
    """SQL for the state a lease returns its contact to: the state it left, else pending."""
    return case(
        (Contact.leased_from.in_(_RESTORE_TO), Contact.leased_from),
        else_=ContactState.PENDING.value,
    )


def _returned_to_pool(now: datetime) -> dict[str, Any]:
    return {
        "state": _restored_state(),
        "leased_by": None,
        "lease_expires_at": None,
        "leased_from": None,
        "updated_at": now,
    }


def release_expired_leases(conn: Connection, campaign_id: int, now: datetime) -> int:
    """Return the campaign's contacts whose lease expired before `now` to the pool.

    Each goes back to the state it was leased from (`pending` if that is unknown), with its
    lease columns cleared. Runs in the caller's transaction; returns how many were released.
    """
    expired = conn.scalars(_claim(
        select(Contact.id).where(
            Contact.campaign_id == campaign_id,
            text(LEASED_SQL),
            Contact.lease_expires_at < now,
        ),
        conn,
    )).all()
    if not expired:
        return 0
    result = conn.execute(
        update(Contact)
        .where(_among(Contact.id, expired), text(LEASED_SQL))
        .values(**_returned_to_pool(now))
    )
    return int(result.rowcount)


def _among(column: Any, values: Collection[Any]) -> Any:
    """`column IN (values)` with the values written into the SQL text.

    For the long lists of ids and numbers of one lease round: it spares a bound parameter per
    value, which costs more to render and send than the value itself. The statement stays in
    SQLAlchemy's cache; only the list is rendered per execution.
    """
    return column.in_(bindparam(f"{column.key}_list", sorted(values), expanding=True,
                                literal_execute=True))


def release_lease(
    engine: Engine, contact_id: int, node_id: str, *, now: datetime | None = None
) -> bool:
    """Hand back a leased contact unused. Returns False if `node_id` no longer holds its lease."""
    now = now or datetime.now(UTC)
    with write_transaction(engine) as conn:
        result = conn.execute(
            update(Contact)
            .where(Contact.id == contact_id, text(LEASED_SQL), Contact.leased_by == node_id)
            .values(**_returned_to_pool(now))
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
    """
    if n <= 0:
        return []
    with write_transaction(engine) as conn:
        release_expired_leases(conn, campaign_id, now)
        ttl_s = conn.scalar(select(Campaign.lease_ttl_s).where(Campaign.id == campaign_id))
        if ttl_s is None:
            raise LookupError(f"no campaign with id {campaign_id}")
        policy = campaign_policy(conn, campaign_id)
        known = set(conn.scalars(select(CampaignZone.tz).where(
            CampaignZone.campaign_id == campaign_id
        )))
        open_zones = zones_open(
            (z for z in known if _is_zone(z)), now, policy.calling_hours, policy.holidays
        )
        if known and not open_zones:
            return []
        # No recorded zones means the importer did not fill them: lease without the filter and
        # let the exact check below decide, rather than stall the campaign.
        zone_filter = open_zones if open_zones != known else None
        screen = _Screen(conn, campaign_id, policy, now)
        lease = _Lease(node_id, now, now + timedelta(seconds=ttl_s), campaign_id)
        leased: list[LeasedContact] = []
        for _ in range(MAX_ROUNDS):
            want = n - len(leased)
            stmt = _claim(lease_candidates_query(campaign_id, want, now, zone_filter), conn)
            rows = [_Candidate.from_row(r) for r in conn.execute(stmt)]
            allowed = screen.allowed(rows)
            leased += lease.mark(conn, allowed)
            if len(allowed) == len(rows) or len(leased) >= n:
                break
        return leased


def _is_zone(name: str) -> bool:
    try:
        zone(name)
    except ComplianceConfigError:
        return False
    return True


class _Lease:
    def __init__(self, node_id: str, now: datetime, expires: datetime, campaign_id: int) -> None:
        self.node_id, self.now, self.expires, self.campaign_id = node_id, now, expires, campaign_id

    def mark(self, conn: Connection, rows: Sequence[_Candidate]) -> list[LeasedContact]:
        """Move `rows` to `sent_to_dialer`; the leased contacts, in the order of `rows`."""
        if not rows:
            return []
        done = set(conn.scalars(
            update(Contact)
            .where(_among(Contact.id, [r.id for r in rows]), Contact.state.in_(_LEASE_FROM))
            .values(
                state=ContactState.SENT_TO_DIALER.value,
                leased_by=self.node_id,
                lease_expires_at=self.expires,
                leased_from=Contact.state,
                updated_at=self.now,
            )
            .returning(Contact.id)
        ))
        return [
            LeasedContact(
                contact_id=r.id, campaign_id=self.campaign_id, phone_index=r.slot,
                number=r.number, channel=Channel(r.channel), step=r.step, tz=r.tz,
                external_id=r.external_id, params=r.params, lease_expires_at=self.expires,
            )
            for r in rows
            if r.id in done
        ]


class _Screen:
    """The exact per-contact checks before a lease, and what happens to a refused contact."""

    def __init__(
        self, conn: Connection, campaign_id: int, policy: CampaignPolicy, now: datetime
    ) -> None:
        self.conn, self.campaign_id, self.policy, self.now = conn, campaign_id, policy, now
        self._hours: dict[str, Refusal | None] = {}
        self._prefix_rules: list[DncRule] | None = None

    def allowed(self, rows: Sequence[_Candidate]) -> list[_Candidate]:
        """The rows that may be leased; every refused row is updated in the database."""
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
        if self._prefix_rules is None:  # read once per lease call, like the campaign settings
            self._prefix_rules = self._dnc_rules((), prefixes=True)
        exact = self._dnc_rules({r.number for r in passed}, prefixes=False)
        rules = [*self._prefix_rules, *exact]
        matcher = DncMatcher(rules)
        allowed: list[_Candidate] = []
        by_dnc: list[tuple[_Candidate, Refusal]] = []
        for r in passed:
            refusal = matcher.refusal(r.number, self.now)
            if refusal is None:
                allowed.append(r)
            else:
                by_dnc.append((r, refusal))
        if by_dnc:
            self._replan(by_dnc, rules)
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
        if not refused:
            return
        self.conn.execute(
            update(Contact)
            .where(Contact.id == bindparam("b_id"))
            .values(due_at=bindparam("b_due"), state_reason=bindparam("b_reason"),
                    updated_at=self.now),
            [
                {"b_id": r.id, "b_due": refusal.until, "b_reason": _reason(refusal)}
                for r, refusal in refused
            ],
        )

    def _dnc_rules(self, numbers: Collection[str], *, prefixes: bool) -> list[DncRule]:
        """The active DNC entries that apply to the campaign: exact ones for `numbers`, and
        every prefix entry when `prefixes`."""
        cid = self.campaign_id
        base = (
            select(
                DncEntry.value, DncEntry.is_prefix, DncEntry.expires_at, DncEntry.source,
                DncEntry.campaign_id, DncList.name.label("list_name"),
            )
            .outerjoin(DncList, DncList.id == DncEntry.list_id)
            .where(
                or_(
                    and_(DncEntry.campaign_id.is_(None), DncEntry.list_id.is_(None)),
                    DncEntry.campaign_id == cid,
                    DncEntry.list_id.in_(
                        select(CampaignDncList.list_id).where(CampaignDncList.campaign_id == cid)
                    ),
                ),
                or_(DncEntry.expires_at.is_(None), DncEntry.expires_at > self.now),
            )
        )
        # Two statements rather than a UNION: PostgreSQL would plan the union in parallel
        # workers, whose start-up costs more than both queries together.
        stmts = []
        if numbers:
            stmts.append(base.where(DncEntry.is_prefix.is_(False),
                                    _among(DncEntry.value, numbers)))
        if prefixes:
            stmts.append(base.where(DncEntry.is_prefix.is_(True)))
        return [
            DncRule(
                value=e.value, is_prefix=bool(e.is_prefix), expires_at=e.expires_at,
                scope=(
                    "campaign" if e.campaign_id == cid
                    else f"list:{e.list_name}" if e.list_name is not None
                    else "global"
                ),
                source=e.source,
            )
            for stmt in stmts
            for e in self.conn.execute(stmt)
        ]

    def _replan(self, refused: Sequence[tuple[_Candidate, Refusal]], rules: list[DncRule]) -> None:
        """DNC on the next number: let the planner choose another usable number, or close.

        `rules` were loaded for the numbers the contacts would have dialed (and every prefix);
        the exact entries for their other numbers are loaded here.
        """
        others = {p for r, _ in refused for p in r.phones if p}
        matcher = DncMatcher([*rules, *self._dnc_rules(others, prefixes=False)])
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
                    "b_reason": _reason(refusal, *action.delayed_by),
                })
            else:
                self._close(r, action)
        if dials:
            self.conn.execute(
                update(Contact)
                .where(Contact.id == bindparam("b_id"))
                .values(due_at=bindparam("b_due"), next_phone=bindparam("b_phone"),
                        next_channel=bindparam("b_channel"), next_step=bindparam("b_step"),
                        state_reason=bindparam("b_reason"), updated_at=self.now),
                dials,
            )

    def _close(self, row: _Candidate, close: Close) -> None:
        old = row.state
        values: dict[str, Any] = {"due_at": None, "updated_at": self.now}
        try:
            check_contact_transition(old, close.state)
        except IllegalTransition as exc:
            # The planner closed it in a state this one cannot reach automatically (say a
            # callback that ran out of attempts): keep the state, out of the pool, and say why.
            values["state_reason"] = _reason(close.refusal, note=f"kept {old.value}: {exc}")
        else:
            values["state"] = close.state.value
            values["state_reason"] = _reason(close.refusal)
        self.conn.execute(
            update(Contact).where(Contact.id == row.id, Contact.state == old.value).values(**values)
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
    text_ = "; ".join([*(str(r) for r in refusals), *([note] if note else [])])
    return text_ if len(text_) <= REASON_CHARS else text_[: REASON_CHARS - 1] + "…"
