"""Database access: engine creation, migrations, sessions.

SQLite is the built-in default (`sqlite:///paceline.db` in the working directory); PostgreSQL
is used through a URL (`postgresql+psycopg://user@host/db`). Where the two databases behave
differently, the difference lives in one function in this package (`is_postgres`,
`write_transaction`, `upsert`), never in callers.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Insert

DEFAULT_URL = "sqlite:///paceline.db"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def database_url(url: str | None = None) -> str:
    """The URL to use: the argument, else `$PACELINE_DB`, else SQLite in the working directory."""
    return url or os.environ.get("PACELINE_DB") or DEFAULT_URL


def _normalise(url: str) -> str:
    # Users write postgresql://; we ship psycopg 3, not psycopg2 (SQLAlchemy's default driver).
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """Create an engine for `url` with the settings Paceline relies on.

    SQLite: WAL (readers do not block the writer), foreign keys on, a 30 s busy timeout, and
    explicit transaction control so that `write_transaction` can take the write lock up front
    (`BEGIN IMMEDIATE`); without that, two processes leasing at once could both read the same
    contacts before either writes.
    """
    url = _normalise(database_url(url))
    if url.startswith("sqlite"):
        connect_args = {"timeout": 30, **kwargs.pop("connect_args", {})}
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("paceline_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        @event.listens_for(engine, "checkout")
        def _sqlite_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            pages = _AUTOCHECKPOINT_PAGES.get(engine, SQLITE_AUTOCHECKPOINT_PAGES)
            if record.info.get("wal_autocheckpoint") != pages:
                dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
                record.info["wal_autocheckpoint"] = pages

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


#: SQLite's own default: a commit that takes the WAL past this many pages checkpoints it.
SQLITE_AUTOCHECKPOINT_PAGES = 1000
#: Engines whose connections run with another threshold (0 while a `WalCheckpointer` runs).
_AUTOCHECKPOINT_PAGES: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


class WalCheckpointer:
    """Runs SQLite's WAL checkpoints on a background thread, so writers never wait for them.

    Why: SQLite checkpoints inside whichever commit takes the WAL past 1,000 pages. A lease of
    1,000 scattered contacts dirties about that many, so nearly every lease would pay for
    copying the WAL back into the database (about half its time). While a checkpointer runs,
    the engine's connections have automatic checkpoints off and this thread checkpoints every
    `interval_s` in PASSIVE mode, which never blocks readers or the writer.

    Owned by whoever owns the engine, as a context manager: leaving it stops the thread, runs a
    last checkpoint and turns automatic checkpoints back on. A no-op for PostgreSQL.
    """

    def __init__(self, engine: Engine, interval_s: float = 0.5) -> None:
        self.engine, self.interval_s = engine, interval_s
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _checkpoint(self, conn: Any) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1

    def _run(self) -> None:
        try:
            conn = self.engine.raw_connection()
            try:
                while not self._stop.wait(self.interval_s):
                    self._checkpoint(conn.driver_connection)
            finally:
                conn.close()
        except BaseException as exc:  # surfaced by __exit__; the owner decides what to do
            self._error = exc
            _AUTOCHECKPOINT_PAGES.pop(self.engine, None)  # never leave the WAL unattended

    def __enter__(self) -> WalCheckpointer:
        if self.engine.dialect.name == "sqlite":
            _AUTOCHECKPOINT_PAGES[self.engine] = 0
            self._thread = threading.Thread(
                target=self._run, name="paceline-wal-checkpointer", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        _AUTOCHECKPOINT_PAGES.pop(self.engine, None)
        with self.engine.connect() as conn:
            self._checkpoint(conn.connection.driver_connection)
        if self._error is not None:
            raise RuntimeError("the WAL checkpointer failed") from self._error


def literal_in_list(name: str, values: Any = None) -> Any:
    """A list parameter for `IN` whose values are written into the SQL text at run time.

    For the long lists of one lease or import round (contact ids, phone numbers): one bound
    parameter per value costs more to render, send and plan than the value itself. The
    statement itself stays in SQLAlchemy's cache.
    """
    return bindparam(name, values, expanding=True, literal_execute=True)


def is_postgres(bind: Engine | Connection | Session) -> bool:
    return (
        bind.get_bind().dialect.name == "postgresql"
        if isinstance(bind, Session)
        else (bind.dialect.name == "postgresql")
    )


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: takes SQLite's write lock at BEGIN; plain on PostgreSQL."""
    with engine.connect() as conn:
        conn = conn.execution_options(paceline_write=True)
        with conn.begin():
            yield conn


def upsert(table: Table, bind: Engine | Connection) -> Insert:
    """`INSERT` for `table` that can take `.on_conflict_do_update(...)` on this database."""
    dialect = bind.dialect.name
    if dialect == "postgresql":
        return pg_insert(table)
    if dialect == "sqlite":
        return sqlite_insert(table)
    raise NotImplementedError(f"upsert is not implemented for {dialect}")


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision` with Alembic. Safe to call on every start."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def open_database(url: str | None = None) -> Engine:
    """Engine for `url` with the schema migrated to the latest revision."""
    engine = make_engine(url)
    migrate(engine)
    return engine
