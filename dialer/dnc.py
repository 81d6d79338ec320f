"""Do-not-call lists in the database: add, import, check, and load the matcher for a campaign.

Matching itself is pure (`strategies.compliance.DncMatcher`); this module only decides which
entries apply to a campaign and loads them. Scopes: global entries (no campaign, no list) apply
everywhere; a campaign's own entries; and entries of the named lists the campaign references.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    delete,
    false,
    insert,
    or_,
    select,
    true,
)

from dialer.db import literal_in_list, write_transaction
from dialer.db.models import Campaign, CampaignDncList, DncEntry, DncList
from dialer.domain import DncSource
from dialer.phones import PhoneError, PhoneNormalizer
from strategies.compliance import DncMatcher, DncRule

#: SQLite's default limit on bound parameters is 32766; stay well below it.
_IN_CHUNK = 5000


class DncError(ValueError):
    """A DNC request that cannot be carried out; the message names the value and the reason."""


def _scope_filter(conn: Connection, campaign_id: int | None) -> tuple[object, dict[int, str]]:
    """SQL condition selecting the entries that apply to `campaign_id`, and list-id -> name."""
    glob = and_(DncEntry.campaign_id.is_(None), DncEntry.list_id.is_(None))
    if campaign_id is None:
        return glob, {}
    lists = dict(
        conn.execute(
            select(DncList.id, DncList.name)
            .join(CampaignDncList, CampaignDncList.list_id == DncList.id)
            .where(CampaignDncList.campaign_id == campaign_id)
        ).all()
    )
    conds = [glob, DncEntry.campaign_id == campaign_id]
    if lists:
        conds.append(DncEntry.list_id.in_(list(lists)))
    return or_(*conds), lists


def _rule(e: Row[Any], lists: dict[int, str]) -> DncRule:
    if e.list_id is not None:
        scope = f"list:{lists.get(e.list_id, e.list_id)}"
    elif e.campaign_id is not None:
        scope = "campaign"
    else:
        scope = "global"
    return DncRule(e.value, e.is_prefix, e.expires_at, scope, e.source)


class DncLoader:
    """Loads the DNC entries that apply to one campaign, within one transaction.

    The scope (global, the campaign's own, its lists) and the prefix entries are read once;
    `matcher(numbers)` then adds only the exact entries for the numbers asked about. A lease
    asks twice (the numbers it would dial, then a refused contact's other numbers).
    """

    def __init__(self, conn: Connection, campaign_id: int | None, now: datetime) -> None:
        self.conn, self.now = conn, now
        cond, self._lists = _scope_filter(conn, campaign_id)
        active = or_(DncEntry.expires_at.is_(None), DncEntry.expires_at > now)
        self._base = select(DncEntry).where(cond, active)  # type: ignore[arg-type]
        self._prefixes: list[DncRule] | None = None

    def matcher(self, numbers: Iterable[str] | None = None) -> DncMatcher:
        """Prefix entries plus the exact entries for `numbers` (None: every exact entry)."""
        if numbers is None:
            return DncMatcher(_rule(e, self._lists) for e in self.conn.execute(self._base))
        if self._prefixes is None:
            q = self._base.where(DncEntry.is_prefix == true())
            self._prefixes = [_rule(e, self._lists) for e in self.conn.execute(q)]
        rules = list(self._prefixes)
        wanted = sorted(set(numbers))
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            q = self._base.where(
                DncEntry.is_prefix == false(),
                DncEntry.value.in_(literal_in_list("numbers", chunk)),
            )
            rules.extend(_rule(e, self._lists) for e in self.conn.execute(q))
        return DncMatcher(rules)


def load_matcher(
    conn: Connection,
    campaign_id: int | None,
    now: datetime,
    numbers: Iterable[str] | None = None,
) -> DncMatcher:
    """A matcher with the active entries that apply to `campaign_id` (None: global only).

    With `numbers`, exact entries are loaded only for those numbers (a lease or an import
    chunk); prefix entries are always loaded in full, since they are few. Without `numbers`,
    every applicable entry is loaded.
    """
    return DncLoader(conn, campaign_id, now).matcher(numbers)


def normalize_dnc_value(raw: str, region: str, prefix: bool) -> str:
    """E.164 for a number; for a prefix, `+` and digits as written (`+1212555`, `1212` -> `+1212`).

    Prefixes cannot be validated as numbers, so they must carry the country code.
    """
    raw = raw.strip()
    if prefix:
        digits = "".join(ch for ch in raw if ch.isdigit())
        if not digits or len(digits) > 15:
            raise DncError(f"prefix {raw!r}: give 1 to 15 digits, country code first (+1212555)")
        return "+" + digits
    try:
        return PhoneNormalizer(region)(raw).e164
    except PhoneError as exc:
        raise DncError(f"number {raw!r}: {exc}") from None


def _resolve_scope(
    conn: Connection, campaign: int | None, list_name: str | None
) -> tuple[int | None, int | None]:
    if campaign is not None and list_name is not None:
        raise DncError("give a campaign or a list, not both")
    list_id = None
    if list_name is not None:
        list_id = conn.scalar(select(DncList.id).where(DncList.name == list_name))
        if list_id is None:
            list_id = conn.scalar(insert(DncList).values(name=list_name).returning(DncList.id))
    if (
        campaign is not None
        and conn.scalar(select(Campaign.id).where(Campaign.id == campaign)) is None
    ):
        raise DncError(f"no campaign with id {campaign}")
    return campaign, list_id


@dataclass
class DncImportResult:
    file: str
    added: int = 0
    duplicates: int = 0  # already listed in this scope, or repeated in the file
    errors: list[str] = field(default_factory=list)


def add_entries(
    engine: Engine,
    values: Sequence[str],
    now: datetime,
    *,
    region: str = "US",
    prefix: bool = False,
    campaign_id: int | None = None,
    list_name: str | None = None,
    source: DncSource = DncSource.MANUAL,
    expires_at: datetime | None = None,
    note: str | None = None,
) -> list[str]:
    """Add numbers (or prefixes) to DNC; return the normalised values that were new.

    All-or-nothing: one bad value raises `DncError` naming it and nothing is added. A value
    already listed in the same scope is not added twice.
    """
    normalised = [normalize_dnc_value(v, region, prefix) for v in values]
    with write_transaction(engine) as conn:
        cid, lid = _resolve_scope(conn, campaign_id, list_name)
        entry = dict(source=source.value, expires_at=expires_at, note=note, created_at=now)
        return _insert_new(conn, [(v, prefix) for v in normalised], cid, lid, entry)


def _insert_new(
    conn: Connection,
    values: Sequence[tuple[str, bool]],
    campaign_id: int | None,
    list_id: int | None,
    entry: Mapping[str, object],
) -> list[str]:
    """Insert (value, is_prefix) pairs not already in this scope; return the values added.

    A number listed twice in one scope would only make `dnc remove` and reports confusing.
    """
    scope = [
        DncEntry.campaign_id.is_(None)
        if campaign_id is None
        else DncEntry.campaign_id == campaign_id,
        DncEntry.list_id.is_(None) if list_id is None else DncEntry.list_id == list_id,
    ]
    seen: set[tuple[str, bool]] = set()
    wanted = sorted({v for v, _ in values})
    for i in range(0, len(wanted), _IN_CHUNK):
        rows = conn.execute(
            select(DncEntry.value, DncEntry.is_prefix).where(
                *scope, DncEntry.value.in_(wanted[i : i + _IN_CHUNK])
            )
        ).all()
        seen.update((r.value, r.is_prefix) for r in rows)
    new: list[dict[str, object]] = []
    for value, is_prefix in values:
        if (value, is_prefix) in seen:
            continue
        seen.add((value, is_prefix))
        new.append(
            dict(
                value=value, is_prefix=is_prefix, campaign_id=campaign_id, list_id=list_id, **entry
            )
        )
    if new:
        conn.execute(insert(DncEntry), new)
    return [str(r["value"]) for r in new]


def remove_entries(
    engine: Engine, values: Sequence[str], *, region: str = "US", prefix: bool = False
) -> int:
    """Delete every entry (any scope) with these values; return how many went."""
    normalised = [normalize_dnc_value(v, region, prefix) for v in values]
    with write_transaction(engine) as conn:
        res = conn.execute(
            delete(DncEntry).where(DncEntry.value.in_(normalised), DncEntry.is_prefix == prefix)
        )
        return res.rowcount or 0


def import_file(
    engine: Engine,
    path: Path,
    now: datetime,
    *,
    region: str = "US",
    campaign_id: int | None = None,
    list_name: str | None = None,
    column: str | None = None,
) -> DncImportResult:
    """Import a DNC file: one number per line, or a CSV whose `column` holds the numbers.

    A value ending in `*` is a prefix (`+1212555*`). Bad lines are reported as
    `file:line: value: reason`; good lines are kept.
    """
    result = DncImportResult(str(path))
    pairs: list[tuple[str, bool]] = []
    try:
        fh = path.open(newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DncError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        col = 0
        if column is not None:
            header = next(reader, None) or []
            if column not in header:
                raise DncError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
            col = header.index(column)
        for row in reader:
            line = reader.line_num
            if not "".join(row).strip():
                continue
            raw = row[col].strip() if col < len(row) else ""
            if raw.startswith("#"):  # a comment line (or a commented-out number)
                continue
            is_prefix = raw.endswith("*")
            try:
                value = normalize_dnc_value(raw.rstrip("*"), region, is_prefix)
            except DncError as exc:
                result.errors.append(f"{path}:{line}: {exc}")
                continue
            pairs.append((value, is_prefix))
    with write_transaction(engine) as conn:
        cid, lid = _resolve_scope(conn, campaign_id, list_name)
        added = _insert_new(
            conn, pairs, cid, lid, dict(source=DncSource.IMPORT.value, created_at=now)
        )
    result.added = len(added)
    result.duplicates = len(pairs) - len(added)
    return result


@dataclass(frozen=True)
class DncCheck:
    number: str
    e164: str | None
    blocked: bool
    reason: str


def check_numbers(
    engine: Engine,
    numbers: Sequence[str],
    now: datetime,
    *,
    region: str = "US",
    campaign_id: int | None = None,
) -> list[DncCheck]:
    """Is each number blocked for `campaign_id` (or globally)? Each answer says why."""
    out: list[DncCheck] = []
    norm = PhoneNormalizer(region)
    parsed: list[tuple[str, str | None, str]] = []
    for n in numbers:
        try:
            parsed.append((n, norm(n).e164, ""))
        except PhoneError as exc:
            parsed.append((n, None, str(exc)))
    with engine.connect() as conn:
        matcher = load_matcher(conn, campaign_id, now, [e for _, e, _ in parsed if e])
    for raw, e164, err in parsed:
        if e164 is None:
            out.append(DncCheck(raw, None, False, err))
            continue
        refusal = matcher.refusal(e164, now)
        out.append(
            DncCheck(
                raw,
                e164,
                refusal is not None,
                refusal.detail if refusal else "not on any applicable DNC list",
            )
        )
    return out
