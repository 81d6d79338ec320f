"""Engine settings Paceline relies on, and the background WAL checkpointer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dialer.db import (
    SQLITE_AUTOCHECKPOINT_PAGES,
    WalCheckpointer,
    database_url,
    make_engine,
    migrate,
    write_transaction,
)


def _autocheckpoint(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def test_sqlite_engine_uses_wal_and_foreign_keys(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    assert _autocheckpoint(sqlite_engine) == SQLITE_AUTOCHECKPOINT_PAGES


def test_write_transaction_takes_the_sqlite_write_lock_at_begin(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    migrate(engine)
    other = make_engine(f"sqlite:///{tmp_path / 'lock.db'}", connect_args={"timeout": 0.1})
    # No statement has run in the first transaction, but a second writer is locked out.
    with (
        write_transaction(engine),
        pytest.raises(Exception, match="locked"),
        write_transaction(other),
    ):
        pass
    engine.dispose()
    other.dispose()


def test_checkpointer_moves_checkpoints_off_the_commit_path(sqlite_engine: Engine) -> None:
    with WalCheckpointer(sqlite_engine, interval_s=0.02) as ckpt:
        assert _autocheckpoint(sqlite_engine) == 0  # commits no longer checkpoint
        with write_transaction(sqlite_engine) as conn:
            conn.execute(text("CREATE TABLE t (x)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        deadline = time.monotonic() + 5
        while ckpt.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ckpt.checkpoints > 0
    # Stopped: automatic checkpoints are back, and a last checkpoint emptied the WAL.
    assert _autocheckpoint(sqlite_engine) == SQLITE_AUTOCHECKPOINT_PAGES
    with sqlite_engine.connect() as conn:
        busy, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    assert (busy, log - done) == (0, 0)


def test_checkpointer_is_a_no_op_on_postgres(pg_engine: Engine) -> None:
    with WalCheckpointer(pg_engine) as ckpt:
        pass
    assert ckpt.checkpoints == 0


def test_database_url_prefers_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PACELINE_DB", "sqlite:///from-env.db")
    assert database_url("sqlite:///arg.db") == "sqlite:///arg.db"
    assert database_url() == "sqlite:///from-env.db"
    monkeypatch.delenv("PACELINE_DB")
    assert database_url() == "sqlite:///paceline.db"
