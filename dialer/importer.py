"""Contact import from CSV: header mapping, validation, DNC marking, upsert by external id.

Contract:
- A bad row never stops the import. Each problem becomes a `RowError` naming the file, the
  line, the column, the value and the reason; every good row is kept.
- Rows with an external id are upserted per campaign: re-importing a file updates those
  contacts instead of duplicating them. A contact that has not been dialed yet also takes the
  new state (it may have become DNC); one that is in progress keeps its state.
- A contact whose every number is on an applicable DNC list is stored as `dnc_listed`, with
  the entry named in `state_reason`.
- A file-level problem (unreadable, no header, a mapped column missing) raises
  `ImportFileError` before anything is written.

Speed: the work is dominated by `phonenumbers`. Large files are validated in worker processes
(chunks of rows in, plain tuples out) while this process reads the CSV and writes the database,
so that on a multi-core machine the parser, not the pipeline, is the limit.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from dialer.campaigns import campaign_policy
from dialer.db import write_transaction
from dialer.db.models import Campaign, CampaignZone, Contact
from dialer.dnc import load_matcher
from dialer.domain import (
    MAX_EXTERNAL_ID_CHARS,
    MAX_PARAM_CHARS,
    MAX_PARAMS,
    MAX_PHONES,
    ContactState,
)
from dialer.phones import PhoneError, PhoneNormalizer, contact_zone
from strategies.compliance import CallingHours, DncMatcher, is_zone
from strategies.model import CampaignPolicy, Close, ContactView
from strategies.planner import next_action

PHONE_FIELDS = tuple(f"phone{i}" for i in range(1, MAX_PHONES + 1))
PARAM_FIELDS = tuple(f"param{i}" for i in range(1, MAX_PARAMS + 1))
#: Every field a CSV column can be mapped to.
FIELDS = (*PHONE_FIELDS, *PARAM_FIELDS, "external_id", "tz", "priority")

#: Rows per chunk handed to a worker: big enough to amortise pickling, small enough to pipeline.
CHUNK_ROWS = 4000
#: Below this many bytes a file is validated in-process; starting workers would cost more.
PARALLEL_MIN_BYTES = 2_000_000


class ImportFileError(ValueError):
    """The file as a whole cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one field of one row."""

    file: str
    line: int
    column: str
    field: str
    value: str
    reason: str

    def __str__(self) -> str:
        col = f"column {self.column!r}" + (f" ({self.field})" if self.field != self.column else "")
        return f"{self.file}:{self.line}: {col}: {self.value!r}: {self.reason}"


@dataclass
class ImportResult:
    file: str
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    rejected_rows: int = 0
    dnc_listed: int = 0
    errors: list[RowError] = field(default_factory=list)
    error_report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "rejected_rows": self.rejected_rows,
            "dnc_listed": self.dnc_listed,
            "error_report": self.error_report,
            "errors": [asdict(e) for e in self.errors],
        }


def parse_mapping(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """`"phone1=Mobile,param1=Name"` -> {"phone1": "Mobile", "param1": "Name"}.

    Keys are Paceline fields (see `FIELDS`), values are CSV header names.
    """
    if spec is None:
        return {}
    items: dict[str, str] = {}
    pairs = (
        spec.items()
        if isinstance(spec, Mapping)
        else (p.split("=", 1) if "=" in p else (p, "") for p in spec.split(",") if p.strip())
    )
    for key, col in pairs:
        key, col = key.strip(), col.strip()
        if key not in FIELDS:
            raise ImportFileError(f"--map: unknown field {key!r}; fields are {', '.join(FIELDS)}")
        if not col:
            raise ImportFileError(f"--map: field {key!r} needs a column name ({key}=Column)")
        items[key] = col
    return items


# --- the plan of a new contact ------------------------------------------------------------------


class _Planner:
    """The first step of each new contact, cached by (slots filled, slots on DNC).

    For a contact with no attempts the plan depends on nothing else, so the pure planner runs
    once per combination instead of once per row. `due_at` is the import time; the lease
    re-checks calling hours in the contact's own zone.
    """

    def __init__(self, policy: CampaignPolicy, now: datetime) -> None:
        # Only the step matters here, and it does not depend on the clock: neutral hours keep
        # a campaign that is closed right now from looking closed for ever.
        self.policy = replace(policy, calling_hours=CallingHours(), holidays=frozenset())
        self.now = now
        self._cache: dict[tuple[int, int], tuple[Any, ...]] = {}

    def first(self, phones: Sequence[str | None], dnc: frozenset[int]) -> tuple[Any, ...]:
        """(state, state_reason, next_step, next_phone, next_channel) for a new contact."""
        filled = sum(1 << i for i, p in enumerate(phones) if p)
        key = (filled, sum(1 << (i - 1) for i in dnc))
        hit = self._cache.get(key)
        if hit is None:
            fake = tuple(f"+1{i}" if p else None for i, p in enumerate(phones))
            action = next_action(
                ContactView(fake, "UTC", dnc_phones=dnc), (), self.policy, self.now
            )
            if isinstance(action, Close):
                hit = (action.state.value, str(action.refusal), None, 1, "voice")
            else:
                hit = (
                    ContactState.PENDING.value,
                    None,
                    action.step,
                    action.phone_index,
                    action.channel.value,
                )
            self._cache[key] = hit
        return hit


# --- the row layout ------------------------------------------------------------------------------

#: Columns that follow a new plan only while the contact has not been dialed yet.
_PLAN_COLUMNS = ("state", "state_reason", "due_at", "next_step", "next_phone", "next_channel")


def _insert_columns(mapped: Sequence[str]) -> tuple[str, ...]:
    """The columns an import writes, in the order of its row tuples.

    Only mapped phone and parameter slots are written: an unmapped one stays as it is (NULL
    for a new contact), and binding fewer values makes the bulk insert faster.
    """
    phones = [
        c
        for i in range(1, MAX_PHONES + 1)
        if f"phone{i}" in mapped
        for c in (f"phone{i}_raw", f"phone{i}")
    ]
    params = [p for p in PARAM_FIELDS if p in mapped]
    return (
        "campaign_id",
        "external_id",
        *phones,
        *params,
        "tz",
        "tz_override",
        "region",
        "priority",
        "source_file",
        "source_line",
        *_PLAN_COLUMNS,
        "attempt_count",
        "created_at",
        "updated_at",
    )


#: Columns a re-import never overwrites on an existing contact.
_KEEP_ON_UPDATE = frozenset({"campaign_id", "external_id", "attempt_count", "created_at"})


def _insert_sql(columns: Sequence[str], paramstyle: str, with_upsert: bool) -> str:
    """The INSERT (or upsert on the external id) as driver-level SQL.

    Bulk rows bypass SQLAlchemy's per-row parameter processing, which cost more than the
    database itself; SQLite and PostgreSQL share the `ON CONFLICT` syntax, so only the
    placeholder differs.
    """
    mark = "?" if paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO contacts ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    if not with_upsert:
        return sql
    sets = []
    for c in columns:
        if c in _KEEP_ON_UPDATE:
            continue
        if c in _PLAN_COLUMNS:
            sets.append(
                f"{c} = CASE WHEN contacts.state = '{ContactState.PENDING.value}' "
                f"THEN excluded.{c} ELSE contacts.{c} END"
            )
        else:
            sets.append(f"{c} = excluded.{c}")
    return f"{sql} ON CONFLICT (campaign_id, external_id) DO UPDATE SET {', '.join(sets)}"


_SLOT_E164 = "CASE s.slot {} END".format(
    " ".join(f"WHEN {k} THEN c.phone{k}" for k in range(1, MAX_PHONES + 1))
)
_SLOTS = " UNION ALL ".join(f"SELECT {k} AS slot" for k in range(1, MAX_PHONES + 1))


def _phones_sync_sql(mark: str, where: str) -> str:
    """Copy the phone slots of the contacts matching `where` (on `c`) into `contact_phones`.

    One INSERT ... SELECT per chunk: the numbers never travel back to Python. A slot whose
    number changed is updated in place (only when it differs, so an unchanged re-import
    writes nothing); a concurrent import of the same contacts makes it a no-op, not an error.
    """
    return (
        "INSERT INTO contact_phones (contact_id, slot, e164) "
        f"SELECT c.id, s.slot, {_SLOT_E164} FROM contacts c CROSS JOIN ({_SLOTS}) s "
        f"WHERE c.campaign_id = {mark} AND {where} AND {_SLOT_E164} IS NOT NULL "
        "ON CONFLICT (contact_id, slot) DO UPDATE SET e164 = excluded.e164 "
        "WHERE contact_phones.e164 <> excluded.e164"
    )


def _phones_prune_sql(mark: str, nkeys: int) -> str:
    """Delete the `contact_phones` rows of re-imported contacts whose slot is now empty."""
    slot_e164 = _SLOT_E164.replace("s.slot", "contact_phones.slot")
    keys = ", ".join([mark] * nkeys)
    return (
        "DELETE FROM contact_phones WHERE contact_id IN (SELECT id FROM contacts "
        f"WHERE campaign_id = {mark} AND external_id IN ({keys})) AND NOT EXISTS ("
        f"SELECT 1 FROM contacts c WHERE c.id = contact_phones.contact_id "
        f"AND {slot_e164} IS NOT NULL)"
    )


@dataclass(frozen=True)
class _Spec:
    """Everything a worker needs to turn CSV text into insert-ready rows; picklable."""

    file: str
    region: str
    default_tz: str
    fields: tuple[tuple[str, int, str], ...]  # (field, column index, header name)
    ncols: int
    campaign_id: int
    policy: CampaignPolicy
    now: datetime
    now_db: Any  # `now` as the database driver takes it
    columns: tuple[str, ...]

    def index(self, column: str) -> int:
        return self.columns.index(column)


@lru_cache(maxsize=8)
def _normalizer(region: str) -> PhoneNormalizer:
    return PhoneNormalizer(region)


_planners: dict[tuple[int, datetime, str], _Planner] = {}


def _planner_for(spec: _Spec) -> _Planner:
    """This process's planner for the import `spec` describes (workers get a copy per chunk).

    Keyed by value, not by object identity: an id can be reused once an object is freed, and
    two imports in one process must never share a plan.
    """
    key = (spec.campaign_id, spec.now, repr(spec.policy))
    p = _planners.get(key)
    if p is None:
        _planners.clear()
        p = _planners[key] = _Planner(spec.policy, spec.now)
    return p


@dataclass
class _ChunkResult:
    rows: list[tuple[Any, ...]]
    errors: list[RowError]
    zones: set[str]
    read: int  # non-blank data rows seen


def _validate_chunk(spec: _Spec, first_line: int, text: str) -> _ChunkResult:
    """Parse and validate CSV text whose first record starts on `first_line`.

    Pure apart from caches; runs in a worker process. Returns rows in `spec.columns` order.
    """
    norm = _normalizer(spec.region)
    planner = _planner_for(spec)
    out = _ChunkResult([], [], set(), 0)
    file, ncols = spec.file, spec.ncols
    slots = [i for i in range(MAX_PHONES) if f"phone{i + 1}" in spec.columns]
    param_names = [p for p in PARAM_FIELDS if p in spec.columns]
    reader = csv.reader(io.StringIO(text, newline=""))
    consumed = 0
    for row in reader:
        line = first_line + consumed
        consumed = reader.line_num
        if not row or not any(row):
            continue
        out.read += 1
        errors: list[RowError] = []
        if len(row) != ncols:
            out.errors.append(
                RowError(
                    file, line, "*", "*", f"{len(row)} columns", f"the header has {ncols} columns"
                )
            )
            continue
        phones_raw: list[str | None] = [None] * MAX_PHONES
        phones: list[str | None] = [None] * MAX_PHONES
        params: dict[str, str] = {}
        ext = tz_override = None
        priority = 0
        region: str | None = None
        zones: tuple[str, ...] = ()
        for fld, idx, col in spec.fields:
            value = row[idx].strip()
            if "\ufffd" in value:
                errors.append(
                    RowError(file, line, col, fld, value, "not valid UTF-8: save the file as UTF-8")
                )
            elif not value:
                if fld == "phone1":
                    errors.append(RowError(file, line, col, fld, value, "phone1 is mandatory"))
            elif fld.startswith("phone"):
                slot = int(fld[5:]) - 1
                try:
                    info = norm(value)
                except PhoneError as exc:
                    errors.append(RowError(file, line, col, fld, value, str(exc)))
                    continue
                phones_raw[slot], phones[slot] = value, info.e164
                if slot == 0:
                    region, zones = info.region, info.zones
            elif fld.startswith("param"):
                if len(value) > MAX_PARAM_CHARS:
                    errors.append(
                        RowError(
                            file,
                            line,
                            col,
                            fld,
                            value,
                            f"longer than {MAX_PARAM_CHARS} characters ({len(value)})",
                        )
                    )
                else:
                    params[fld] = value
            elif fld == "external_id":
                if len(value) > MAX_EXTERNAL_ID_CHARS:
                    errors.append(
                        RowError(
                            file,
                            line,
                            col,
                            fld,
                            value,
                            f"longer than {MAX_EXTERNAL_ID_CHARS} characters ({len(value)})",
                        )
                    )
                else:
                    ext = value
            elif fld == "tz":
                if is_zone(value):
                    tz_override = value
                else:
                    errors.append(
                        RowError(
                            file,
                            line,
                            col,
                            fld,
                            value,
                            "unknown time zone; use an IANA name such as America/Chicago",
                        )
                    )
            elif fld == "priority":
                try:
                    priority = int(value)
                except ValueError:
                    errors.append(
                        RowError(file, line, col, fld, value, "priority must be a whole number")
                    )
        if errors:
            out.errors.extend(errors)
            continue
        tz = tz_override or contact_zone(zones, spec.default_tz)
        out.zones.add(tz)
        state, reason, step, phone, channel = planner.first(phones, frozenset())
        values: list[Any] = [spec.campaign_id, ext]
        for i in slots:
            values += (phones_raw[i], phones[i])
        values += [params.get(p) for p in param_names]
        values += (
            tz,
            tz_override,
            region,
            priority,
            file,
            line,
            state,
            reason,
            spec.now_db if state == ContactState.PENDING.value else None,
            step,
            phone,
            channel,
            0,
            spec.now_db,
            spec.now_db,
        )
        out.rows.append(tuple(values))
    return out


# --- reading ------------------------------------------------------------------------------------


def _records(
    fh: io.TextIOBase, progress: Callable[[int], None] | None
) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each CSV record, without parsing the fields.

    A record ends at a line end outside quotes: an odd count of `"` means a quoted field runs
    on. This is all the main process does per row, so the workers get the parsing.
    """
    start = 1
    parts: list[str] = []
    quotes = 0
    pending = 0
    for line_no, text_line in enumerate(fh, 1):
        pending += len(text_line)
        if progress is not None and pending >= 1 << 16:
            progress(pending)
            pending = 0
        parts.append(text_line)
        quotes += text_line.count('"')
        if quotes % 2 == 0:
            yield start, "".join(parts) if len(parts) > 1 else text_line
            parts, quotes, start = [], 0, line_no + 1
    if parts:  # an unterminated quote: hand it over; csv reports what it can
        yield start, "".join(parts)
    if progress is not None and pending:
        progress(pending)


def _chunks(records: Iterator[tuple[int, str]], size: int) -> Iterator[tuple[int, str]]:
    """Group records into (first line, text) chunks of `size` records."""
    first = 0
    buf: list[str] = []
    for line, text in records:
        if not buf:
            first = line
        buf.append(text)
        if len(buf) >= size:
            yield first, "".join(buf)
            buf = []
    if buf:
        yield first, "".join(buf)


class _InlineExecutor(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args, **kwargs))
        return f


def _pool(workers: int) -> Executor:
    if workers <= 1:
        return _InlineExecutor()
    methods = multiprocessing.get_all_start_methods()
    # fork starts in milliseconds and this process holds no threads or open transactions yet.
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


# --- writing ------------------------------------------------------------------------------------


class _Writer:
    """Writes validated chunks: DNC marking, insert or upsert, counts. One transaction each."""

    def __init__(self, engine: Engine, spec: _Spec, result: ImportResult) -> None:
        self.engine, self.spec, self.result = engine, spec, result
        self.planner = _Planner(spec.policy, spec.now)
        self.zones: set[str] = set()
        style = engine.dialect.paramstyle
        self.mark = "?" if style == "qmark" else "%s"
        self.insert_sql = _insert_sql(spec.columns, style, with_upsert=False)
        self.upsert_sql = _insert_sql(spec.columns, style, with_upsert=True)
        self.e164_at = [
            (int(c[5:]), spec.index(c))
            for c in spec.columns
            if c.startswith("phone") and not c.endswith("_raw")
        ]
        self.plan_at = [spec.index(c) for c in _PLAN_COLUMNS]

    def _mark_dnc(self, rows: list[tuple[Any, ...]], matcher: DncMatcher) -> None:
        """Re-plan, in place, the rows with a number on an applicable DNC list."""
        now = self.spec.now
        for r, row in enumerate(rows):
            dnc: set[int] = set()
            reason = None
            for slot, at in self.e164_at:
                if row[at] and (refusal := matcher.refusal(row[at], now)) is not None:
                    dnc.add(slot)
                    reason = str(refusal)
            if not dnc:
                continue
            phones = [None] * MAX_PHONES
            for slot, at in self.e164_at:
                phones[slot - 1] = row[at]
            state, plan_reason, step, phone, channel = self.planner.first(phones, frozenset(dnc))
            if state == ContactState.DNC_LISTED.value:
                self.result.dnc_listed += 1
            due = self.spec.now_db if state == ContactState.PENDING.value else None
            new = list(row)
            for at, v in zip(
                self.plan_at, (state, reason or plan_reason, due, step, phone, channel), strict=True
            ):
                new[at] = v
            rows[r] = tuple(new)

    def write(self, chunk: _ChunkResult) -> None:
        rows = chunk.rows
        self.zones |= chunk.zones
        if not rows:
            return
        with write_transaction(self.engine) as conn:
            numbers = [row[at] for row in rows for _, at in self.e164_at if row[at]]
            matcher = load_matcher(conn, self.spec.campaign_id, self.spec.now, numbers)
            if len(matcher):
                self._mark_dnc(rows, matcher)
            plain = [r for r in rows if r[1] is None]
            by_ext: dict[str, tuple[Any, ...]] = {}
            for r in rows:
                if r[1] is not None:
                    # One statement may touch a key once (PostgreSQL refuses to update a row
                    # twice); the later line of the file wins, as it would across chunks.
                    if r[1] in by_ext:
                        self.result.updated += 1
                    by_ext[r[1]] = r
            if plain:
                # New contacts get ids above the current maximum; their phones are copied by
                # id range, so no ids have to come back from the executemany.
                floor = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM contacts").scalar()
                conn.exec_driver_sql(self.insert_sql, plain)
                conn.exec_driver_sql(
                    _phones_sync_sql(self.mark, f"c.id > {self.mark}"),
                    (self.spec.campaign_id, floor),
                )
                self.result.inserted += len(plain)
            if by_ext:
                keys = list(by_ext)
                existing = conn.exec_driver_sql(
                    f"SELECT count(*) FROM contacts WHERE campaign_id = {self.mark} "
                    f"AND external_id IN ({', '.join([self.mark] * len(keys))})",
                    (self.spec.campaign_id, *keys),
                ).scalar_one()
                conn.exec_driver_sql(self.upsert_sql, list(by_ext.values()))
                in_keys = f"c.external_id IN ({', '.join([self.mark] * len(keys))})"
                conn.exec_driver_sql(
                    _phones_sync_sql(self.mark, in_keys), (self.spec.campaign_id, *keys)
                )
                if existing:  # only a re-imported contact can have a slot that was cleared
                    conn.exec_driver_sql(
                        _phones_prune_sql(self.mark, len(keys)), (self.spec.campaign_id, *keys)
                    )
                self.result.updated += existing
                self.result.inserted += len(keys) - existing

    def finish(self) -> None:
        if not self.zones:
            return
        with write_transaction(self.engine) as conn:
            known = set(
                conn.scalars(
                    select(CampaignZone.tz).where(CampaignZone.campaign_id == self.spec.campaign_id)
                )
            )
            new = sorted(self.zones - known)
            if new:
                conn.execute(
                    insert(CampaignZone),
                    [{"campaign_id": self.spec.campaign_id, "tz": z} for z in new],
                )


def _resolve_fields(
    header: list[str], mapping: dict[str, str], file: str
) -> tuple[tuple[str, int, str], ...]:
    if not mapping:
        # No --map: columns named like the fields map to them.
        mapping = {h: h for h in header if h in FIELDS}
    index = {h: i for i, h in enumerate(header)}
    missing = [f"{fld}={col}" for fld, col in mapping.items() if col not in index]
    if missing:
        raise ImportFileError(
            f"{file}: mapped column(s) not in the header: {', '.join(missing)}; "
            f"the header has: {', '.join(header)}"
        )
    if "phone1" not in mapping:
        raise ImportFileError(
            f"{file}: no column is mapped to phone1 (use --map phone1=ColumnName); "
            f"the header has: {', '.join(header)}"
        )
    return tuple((fld, index[col], col) for fld, col in mapping.items())


def write_error_report(errors: Sequence[RowError], path: Path) -> None:
    """A CSV of every rejected field: file, line, column, field, value, reason."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "line", "column", "field", "value", "reason"])
        for e in errors:
            w.writerow([e.file, e.line, e.column, e.field, e.value, e.reason])


def import_contacts(
    engine: Engine,
    campaign_id: int,
    path: str | Path,
    now: datetime,
    *,
    mapping: str | Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    error_report: Path | None = None,
) -> ImportResult:
    """Import one CSV file into a campaign. See the module docstring for the contract.

    `progress` is called with the number of characters read since the last call (the file's
    size is the total). `workers`: validation processes; default 0 for small files and
    `min(2, cores)` for large ones. `error_report`: where to write the rejected rows as CSV
    (default `<file>.errors.csv` next to the input, written only when there are errors).
    """
    p = Path(path)
    file = str(p)
    fields = parse_mapping(mapping)
    with engine.connect() as conn:
        row = conn.execute(
            select(Campaign.default_region, Campaign.default_timezone).where(
                Campaign.id == campaign_id
            )
        ).one_or_none()
        if row is None:
            raise ImportFileError(f"{file}: campaign {campaign_id} does not exist")
        region, default_tz = row
        policy = campaign_policy(conn, campaign_id)
    try:
        size = p.stat().st_size
        fh = p.open(newline="", encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise ImportFileError(f"{file}: cannot read: {exc.strerror}") from None
    result = ImportResult(file)
    with fh:
        records = _records(fh, progress)
        first = next(records, None)
        if first is None:
            raise ImportFileError(f"{file}: the file is empty: it needs a header row")
        header = [h.strip() for h in next(csv.reader(io.StringIO(first[1], newline="")), [])]
        resolved = _resolve_fields(header, fields, file)
        ts = Contact.__table__.c.created_at.type
        to_db = ts.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        spec = _Spec(
            file,
            region,
            default_tz,
            resolved,
            len(header),
            campaign_id,
            policy,
            now,
            to_db(now) if to_db else now,
            _insert_columns([f for f, _, _ in resolved]),
        )
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if size >= PARALLEL_MIN_BYTES else 0
        writer = _Writer(engine, spec, result)
        with _pool(workers) as pool:
            in_flight: list[Future[_ChunkResult]] = []
            for first_line, text in _chunks(records, CHUNK_ROWS):
                in_flight.append(pool.submit(_validate_chunk, spec, first_line, text))
                # Keep the workers fed but bound memory: write the oldest when enough wait.
                while len(in_flight) > max(2, 2 * workers):
                    _drain(in_flight.pop(0), writer, result)
            for fut in in_flight:
                _drain(fut, writer, result)
        writer.finish()
    if result.errors:
        report = error_report or p.with_name(p.name + ".errors.csv")
        write_error_report(result.errors, report)
        result.error_report = str(report)
    return result


def _drain(fut: Future[_ChunkResult], writer: _Writer, result: ImportResult) -> None:
    chunk = fut.result()
    result.rows += chunk.read
    writer.write(chunk)
    result.errors.extend(chunk.errors)
    result.rejected_rows += len({e.line for e in chunk.errors})
