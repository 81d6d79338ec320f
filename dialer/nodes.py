"""Several `paceline run` nodes on one database: who paces which campaign, and node heartbeats.

**Ownership.** Exactly one node paces a campaign at a time. A node owns a campaign while it holds
that campaign's lock, and the lock is one the operating system or the database server drops by
itself when the node dies, so failover needs no expiry timer and no cleanup by the survivors:

- PostgreSQL: a session-level advisory lock `pg_try_advisory_lock(namespace, campaign_id)`, held
  on one dedicated connection (never a pooled one: the pool would hand the session, and with it
  the locks, to other code). When the process dies the server ends the session and drops its
  locks. Session locks do not survive a transaction-mode connection pooler (PgBouncer
  `pool_mode=transaction`): point nodes at PostgreSQL itself, or at a session-mode pool.
- SQLite on a file (several processes on one machine): `flock(LOCK_EX | LOCK_NB)` on
  `<database>.campaign-<id>.lock` next to the database file; the kernel drops it when the
  process dies. flock belongs to the open file description, so two owners in one process
  exclude each other too. The lock files are left in place on purpose: deleting a lock file
  that another process has open breaks the exclusion. A child made with `fork()` (and no
  `exec`) shares the descriptors and keeps the locks while it lives.
- SQLite in memory: one process, one node; it owns every campaign it wants.

**Failover bounds (PostgreSQL).**
- A killed node (`kill -9`): its kernel closes the socket, the server drops the locks at once,
  and another node takes each campaign within `grace_refreshes + 1` of its refreshes.
- A node cut off from the server (network partition, host frozen off the network): the lock
  session is configured (`LOCK_SESSION_SETTINGS`) so the server drops it, and the locks, within
  about 11 s of the last packet it got: TCP keepalives after 5 s idle, 3 probes 2 s apart, and
  `tcp_user_timeout` 10 s when the server was sending. On the node's side the libpq settings
  (`LOCK_CONNECT_ARGS`) make the `SELECT 1` of its next refresh fail within about 4 s, so with a
  refresh every 2 s or less the cut-off node reports the loss (about 6 s) before the server can
  hand the campaign over (about 9 s at the earliest). Another node then takes it within
  `grace_refreshes + 1` refreshes: about 11 s + 3 refreshes in all.
- The server's `idle_session_timeout` and `idle_in_transaction_session_timeout` are turned off
  for the lock session (it is idle between refreshes by design), and it runs in autocommit.
- Two nodes pacing one campaign for a moment would upset the pacing, never dial a contact twice:
  leases are row claims of their own (`dialer.leasing`: `FOR UPDATE SKIP LOCKED` on
  PostgreSQL, `BEGIN IMMEDIATE` on SQLite).

**Balance.** A node does not take every campaign when several are up. Each refresh it computes a
quota, `ceil(wanted / live nodes)`, live nodes being those whose heartbeat in `nodes` is newer
than `live_within_s` (itself counted always), and takes unowned campaigns, lowest id first, only
while it owns fewer than the quota. So 3 nodes and 3 campaigns end up one each. Balance never
delays failover: a wanted campaign this node has seen unowned for `grace_refreshes` refreshes in
a row is taken regardless of the quota (a dead node's heartbeat stays "live" for a while, and
the survivors are then all at quota). On PostgreSQL, where `pg_locks` shows who holds what, a node
above its quota also hands back one campaign per refresh while some live node holds fewer than
the quota (so a node started first does not keep everything when the others come up). That
hand-back pauses after any take-over past the quota (someone counted live is not taking work)
until the live count or the number of campaigns changes, so the nodes never pass a campaign
back and forth. On SQLite a node cannot see who holds a lock without taking it, so there is no
hand-back; balance applies at acquisition only.

Every method here blocks on the database or the file system. The engine calls them through
`asyncio.to_thread`; one `CampaignOwnership` serialises its own calls. Nothing here reads the
clock: `now` is passed in.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Engine, Table, create_engine, delete, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from dialer.db import is_postgres, upsert, write_transaction
from dialer.db.models import Node

log = logging.getLogger(__name__)

#: Default first key of the advisory locks: "PACE" in ASCII. Two Paceline deployments that
#: share one PostgreSQL database (in different schemas) must use different namespaces: advisory
#: locks are per database, not per schema.
NAMESPACE = 0x5041_4345
#: How often the engine should call `heartbeat`, and how old a heartbeat may be for its node to
#: count as live (three missed beats).
HEARTBEAT_INTERVAL_S = 5.0
LIVE_WITHIN_S = 3 * HEARTBEAT_INTERVAL_S
#: Refreshes in a row a wanted campaign may stay unowned before any node takes it past its quota.
GRACE_REFRESHES = 2

#: libpq settings of the lock connection: the node notices a dead link within about 4 s
#: (`tcp_user_timeout` while a query is unacknowledged; keepalives 2 s + 2 x 1 s while idle).
LOCK_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 4000,
}
#: Server-side settings of the lock session: the server drops a silent node's session (and its
#: locks) within about 11 s (5 s idle + 3 probes x 2 s; 10 s for unacknowledged data). Applied
#: only where the server knows the setting (`idle_session_timeout` is PostgreSQL 14+).
LOCK_SESSION_SETTINGS: dict[str, str] = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "idle_session_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "statement_timeout": "5000",
}

_INT4 = range(-(2**31), 2**31)


@dataclass(frozen=True)
class OwnershipChange:
    """What one `CampaignOwnership.refresh` changed.

    `gained` and `lost` are disjoint. `owned` is every campaign this node may pace from now on;
    a campaign in `lost` (no longer wanted, handed back for balance, or its lock gone) must stop
    being paced at once: another node may take it on its next refresh. Calls already in flight
    stay with this node, which goes on handling their events. `error` says why ownership was
    lost wholesale (lock session dead, database unreachable); None on a normal refresh.
    """

    gained: frozenset[int]
    lost: frozenset[int]
    owned: frozenset[int]
    error: str | None = None


class _SessionLost(Exception):
    """The lock session is gone (or cannot be trusted): every lock it held is lost."""


class _Locks(Protocol):
    def verify(self) -> None: ...
    def try_lock(self, campaign_id: int) -> bool: ...
    def unlock(self, campaign_id: int) -> None: ...
    def probe(self, campaign_id: int) -> bool: ...
    def holders(self, campaign_ids: frozenset[int]) -> dict[int, int] | None: ...
    def reset(self) -> None: ...


class _PgLocks:
    """Advisory locks on one dedicated PostgreSQL session (see the module docstring)."""

    def __init__(self, engine: Engine, namespace: int) -> None:
        self.namespace = namespace
        # Own engine without a pool: closing its connection really ends the session.
        self._engine = create_engine(
            engine.url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args=LOCK_CONNECT_ARGS,
        )
        self._conn: Connection | None = None
        self.backend_pid: int | None = None

    def _session(self) -> Connection:
        if self._conn is not None:
            return self._conn
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            raise _SessionLost(f"cannot open the lock session: {_brief(exc)}") from exc
        try:
            known = set(
                conn.scalars(
                    text("SELECT name FROM pg_settings WHERE name = ANY(:names)"),
                    {"names": list(LOCK_SESSION_SETTINGS)},
                )
            )
            for name, value in LOCK_SESSION_SETTINGS.items():
                if name in known:
                    conn.execute(
                        text("SELECT set_config(:name, :value, false)"),
                        {"name": name, "value": value},
                    )
            self.backend_pid = conn.scalar(text("SELECT pg_backend_pid()"))
        except SQLAlchemyError as exc:
            conn.close()
            raise _SessionLost(f"cannot set up the lock session: {_brief(exc)}") from exc
        self._conn = conn
        log.info("campaign lock session open (backend pid %s)", self.backend_pid)
        return conn

    def _run(self, sql: str, params: dict[str, Any]) -> Any:
        conn = self._session()
        try:
            return conn.execute(text(sql), params).scalar()
        except SQLAlchemyError as exc:
            # Whatever failed, a session we cannot trust must not keep locks: drop it.
            self.reset()
            raise _SessionLost(f"lock session failed: {_brief(exc)}") from exc

    def verify(self) -> None:
        self._run("SELECT 1", {})

    def try_lock(self, campaign_id: int) -> bool:
        return bool(
            self._run(
                "SELECT pg_try_advisory_lock(:ns, :id)", {"ns": self.namespace, "id": campaign_id}
            )
        )

    def unlock(self, campaign_id: int) -> None:
        held = self._run(
            "SELECT pg_advisory_unlock(:ns, :id)", {"ns": self.namespace, "id": campaign_id}
        )
        if not held:
            log.warning("campaign %s: its lock was not held on unlock", campaign_id)

    def probe(self, campaign_id: int) -> bool:
        # Not needed: `holders` always answers on PostgreSQL.
        raise NotImplementedError

    def holders(self, campaign_ids: frozenset[int]) -> dict[int, int] | None:
        """Campaign -> backend pid, for the wanted campaigns that another session holds."""
        conn = self._session()
        try:
            rows = conn.execute(
                text(
                    "SELECT objid::bigint, pid FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                    " AND classid::bigint = :cls AND pid <> pg_backend_pid()"
                    " AND database = (SELECT oid FROM pg_database"
                    "                 WHERE datname = current_database())"
                ),
                {"cls": self.namespace & 0xFFFF_FFFF},  # oid: the int4 key read unsigned
            ).all()
        except SQLAlchemyError as exc:
            self.reset()
            raise _SessionLost(f"lock session failed: {_brief(exc)}") from exc
        return {int(cid): int(pid) for cid, pid in rows if cid in campaign_ids}

    def reset(self) -> None:
        """Close the session (dropping its locks on the server); the next call opens a new one."""
        conn, self._conn, self.backend_pid = self._conn, None, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except SQLAlchemyError:  # already dead: nothing more to release
                pass

    def session_settings(self) -> dict[str, str]:
        """The server's values of `LOCK_SESSION_SETTINGS` on the open lock session, else {}.

        Never opens or resets the session: a failure here is left for `verify` to find, so that
        losing the locks is always reported by `refresh`.
        """
        if self._conn is None:
            return {}
        try:
            rows = self._conn.execute(
                text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
                {"names": list(LOCK_SESSION_SETTINGS)},
            ).all()
        except SQLAlchemyError:
            return {}
        return {str(name): str(setting) for name, setting in rows}

    def dispose(self) -> None:
        self.reset()
        self._engine.dispose()


class _FileLocks:
    """flock on one lock file per campaign next to a SQLite database file."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._fds: dict[int, int] = {}

    def path(self, campaign_id: int) -> Path:
        return self.database.with_name(f"{self.database.name}.campaign-{campaign_id}.lock")

    def verify(self) -> None:
        pass  # a held flock cannot go away while the process lives

    def try_lock(self, campaign_id: int) -> bool:
        # os.open makes a non-inheritable descriptor: an exec'd child does not keep the lock.
        fd = os.open(self.path(campaign_id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fds[campaign_id] = fd
        return True

    def unlock(self, campaign_id: int) -> None:
        fd = self._fds.pop(campaign_id)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def probe(self, campaign_id: int) -> bool:
        """Whether anyone holds the campaign, learnt by taking its lock and giving it back."""
        if not self.try_lock(campaign_id):
            return True
        self.unlock(campaign_id)
        return False

    def holders(self, campaign_ids: frozenset[int]) -> dict[int, int] | None:
        return None  # flock has no way to ask who holds a lock

    def reset(self) -> None:
        for campaign_id in list(self._fds):
            self.unlock(campaign_id)


def _brief(exc: BaseException) -> str:
    # The first line of a DBAPI error names the cause; the rest repeats the SQL.
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine, or None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or "mode=memory" in str(engine.url):
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).resolve()


def balance_quota(wanted: int, live_nodes: int) -> int:
    """How many of `wanted` campaigns one of `live_nodes` nodes takes before leaving the rest."""
    return math.ceil(wanted / max(1, live_nodes))


class CampaignOwnership:
    """Which campaigns this node paces, kept by `refresh` (see the module docstring).

    Use as a context manager, or call `close()`: both release every lock. Blocking; run it in a
    thread from async code. Calls on one object are serialised.
    """

    def __init__(
        self,
        engine: Engine,
        node_id: str,
        *,
        namespace: int = NAMESPACE,
        live_within_s: float = LIVE_WITHIN_S,
        grace_refreshes: int = GRACE_REFRESHES,
    ) -> None:
        if namespace not in _INT4:
            raise ValueError(f"namespace {namespace} does not fit PostgreSQL's int4 lock key")
        if grace_refreshes < 0:
            raise ValueError(f"grace_refreshes must be >= 0, not {grace_refreshes}")
        self.engine, self.node_id = engine, node_id
        self.live_within_s, self.grace_refreshes = live_within_s, grace_refreshes
        self._locks: _Locks | None
        if is_postgres(engine):
            self._locks = _PgLocks(engine, namespace)
        elif (path := _sqlite_file(engine)) is not None:
            self._locks = _FileLocks(path)
        else:
            self._locks = None  # in-memory SQLite: this process is the only node
        self._owned: set[int] = set()
        #: `_owned` as of the end of the last call, for readers on other threads.
        self._published: frozenset[int] = frozenset()
        #: Wanted campaigns seen unowned by anyone, and for how many refreshes in a row.
        self._unowned_for: dict[int, int] = {}
        #: (live nodes, wanted) while hand-back is paused; see the module docstring.
        self._hand_back_paused: tuple[int, int] | None = None
        self._live = 1
        self._mutex = threading.Lock()
        self._closed = False

    @property
    def owned(self) -> frozenset[int]:
        """What this node owned when its last `refresh` or `release_all` returned."""
        return self._published

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL: the server pid of the lock session (None before the first refresh)."""
        return self._locks.backend_pid if isinstance(self._locks, _PgLocks) else None

    def lock_session_settings(self) -> dict[str, str]:
        """The keepalive and timeout settings the server applies to the lock session, for the
        startup log. PostgreSQL, after the first `refresh`; empty otherwise."""
        with self._mutex:
            if not isinstance(self._locks, _PgLocks):
                return {}
            return self._locks.session_settings()

    def refresh(self, campaign_ids: Iterable[int], now: datetime) -> OwnershipChange:
        """Own what this node should pace among `campaign_ids` (the running campaigns).

        Checks the lock session first: if it died, every campaign is reported `lost` and none is
        taken in this call (the next call opens a new session and takes them again, if no other
        node did meanwhile). Otherwise releases owned campaigns no longer wanted (paused,
        finished), then takes unowned ones by the balance rule. `now` dates the heartbeats
        that count as live; the nodes' clocks should agree to well within `live_within_s`.
        """
        wanted = frozenset(campaign_ids)
        for cid in wanted:
            if cid not in _INT4:
                raise ValueError(f"campaign id {cid} does not fit PostgreSQL's int4 lock key")
        with self._mutex:
            if self._closed:
                raise RuntimeError("refresh() on a closed CampaignOwnership")
            before = frozenset(self._owned)
            if self._locks is None:
                self._owned, self._published = set(wanted), wanted
                return OwnershipChange(wanted - before, before - wanted, wanted)
            try:
                self._refresh(self._locks, wanted, now)
            except _SessionLost as exc:
                self._owned.clear()
                self._published = frozenset()
                self._unowned_for.clear()
                # While the database stays down every refresh ends here: say it loudly once.
                log.log(
                    logging.WARNING if before else logging.DEBUG,
                    "node %s lost its campaigns %s: %s", self.node_id, sorted(before), exc,
                )
                return OwnershipChange(frozenset(), before, frozenset(), error=str(exc))
            after = self._published = frozenset(self._owned)
            return OwnershipChange(after - before, before - after, after)

    def _refresh(self, locks: _Locks, wanted: frozenset[int], now: datetime) -> None:
        locks.verify()
        for cid in sorted(self._owned - wanted):
            locks.unlock(cid)
            self._owned.discard(cid)
        self._live = self._live_nodes(now)
        quota = balance_quota(len(wanted), self._live)
        holders = locks.holders(wanted)
        for cid in list(self._unowned_for):
            if cid not in wanted:
                del self._unowned_for[cid]
        gained: set[int] = set()
        for cid in sorted(wanted - self._owned):
            if holders is not None and cid in holders:
                self._unowned_for.pop(cid, None)
                continue
            overdue = self._unowned_for.get(cid, 0) >= self.grace_refreshes
            if len(self._owned) < quota or overdue:
                if locks.try_lock(cid):
                    self._owned.add(cid)
                    gained.add(cid)
                    if overdue and len(self._owned) > quota:
                        # Someone counted live is not taking work: stop handing campaigns
                        # back until the live count or the campaigns change.
                        self._hand_back_paused = (self._live, len(wanted))
                    self._unowned_for.pop(cid, None)
                else:
                    self._unowned_for.pop(cid, None)  # another node holds it
            elif holders is not None or not locks.probe(cid):
                self._unowned_for[cid] = self._unowned_for.get(cid, 0) + 1
            else:
                self._unowned_for.pop(cid, None)
        if holders is not None:
            self._hand_back_one(locks, wanted, quota, holders, gained)

    def _hand_back_one(
        self,
        locks: _Locks,
        wanted: frozenset[int],
        quota: int,
        holders: dict[int, int],
        gained: set[int],
    ) -> None:
        if len(self._owned) <= quota or self._hand_back_paused == (self._live, len(wanted)):
            return
        loads: dict[int, int] = {}
        for pid in holders.values():
            loads[pid] = loads.get(pid, 0) + 1
        peers_with_room = self._live - 1 - sum(1 for n in loads.values() if n >= quota)
        candidates = self._owned - gained
        if peers_with_room <= 0 or not candidates:
            return
        cid = max(candidates)
        locks.unlock(cid)
        self._owned.discard(cid)
        log.info("node %s hands campaign %s back for balance", self.node_id, cid)

    def _live_nodes(self, now: datetime) -> int:
        try:
            with self.engine.connect() as conn:
                nodes = set(live_nodes(conn, now, self.live_within_s))
        except SQLAlchemyError as exc:
            # The lock session answered, so this is likely brief: keep the last count.
            log.warning("cannot read live nodes, keeping %d: %s", self._live, _brief(exc))
            return self._live
        return len(nodes | {self.node_id})

    def release_all(self) -> frozenset[int]:
        """Give up every campaign (clean shutdown). Returns those released."""
        with self._mutex:
            released = frozenset(self._owned)
            if self._locks is not None:
                try:
                    for cid in sorted(self._owned):
                        self._locks.unlock(cid)
                except _SessionLost:
                    pass  # the session is gone, and its locks with it
            self._owned.clear()
            self._published = frozenset()
            self._unowned_for.clear()
            return released

    def close(self) -> None:
        """Release everything and close the lock session. Idempotent."""
        self.release_all()
        with self._mutex:
            self._closed = True
            if isinstance(self._locks, _PgLocks):
                self._locks.dispose()

    def __enter__(self) -> CampaignOwnership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- node heartbeats ------------------------------------------------------------------------


def heartbeat(
    engine: Engine,
    node_id: str,
    now: datetime,
    info: dict[str, Any] | None = None,
    *,
    starting: bool = False,
) -> None:
    """Record that `node_id` is alive at `now`, with `info` (JSON-safe; never secrets).

    Inserts the node on its first beat (`started_at = now`). With `starting=True`, a node that
    restarts under the same id also resets `started_at`. Call every `HEARTBEAT_INTERVAL_S`.
    """
    values = {"node_id": node_id, "started_at": now, "heartbeat_at": now, "info": info or {}}
    with write_transaction(engine) as conn:
        # PostgreSQL's and SQLite's INSERT both have `excluded` and `on_conflict_do_update`,
        # which the common `Insert` type does not declare.
        stmt: Any = upsert(cast(Table, Node.__table__), conn).values(**values)
        update = {"heartbeat_at": stmt.excluded.heartbeat_at, "info": stmt.excluded.info}
        if starting:
            update["started_at"] = stmt.excluded.started_at
        conn.execute(stmt.on_conflict_do_update(index_elements=["node_id"], set_=update))


def live_nodes(conn: Connection, now: datetime, within_s: float = LIVE_WITHIN_S) -> list[str]:
    """Ids of the nodes whose last heartbeat is at most `within_s` before `now`, sorted."""
    since = now - timedelta(seconds=within_s)
    rows: Sequence[str] = conn.scalars(
        select(Node.node_id).where(Node.heartbeat_at >= since).order_by(Node.node_id)
    ).all()
    return list(rows)


def remove_node(engine: Engine, node_id: str) -> bool:
    """Delete `node_id`'s heartbeat row (clean shutdown). Returns whether it was there."""
    with write_transaction(engine) as conn:
        return bool(conn.execute(delete(Node).where(Node.node_id == node_id)).rowcount)
