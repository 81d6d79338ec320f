"""Shared fixtures: a migrated SQLite database, and a migrated PostgreSQL schema per test.

PostgreSQL tests skip with a clear message when the server is unreachable, except when
`PACELINE_REQUIRE_PG=1` (set by `.ci/run`): then an unreachable server is a failure, so CI can
never go green on a run that silently tested SQLite only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from dialer.db import make_engine, migrate

PG_URL = os.environ.get("PACELINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("PACELINE_REQUIRE_PG") == "1"


def _pg_unavailable_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'paceline[postgres]')"
    try:
        eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
    except Exception as exc:  # any connection failure means "unreachable" here
        return f"PostgreSQL at {PG_URL} is unreachable: {type(exc).__name__}: {exc}".strip()
    return None


_PG_REASON: str | bool | None = False  # False = not probed yet


def pg_unavailable_reason() -> str | None:
    global _PG_REASON
    if _PG_REASON is False:
        _PG_REASON = _pg_unavailable_reason()
    return _PG_REASON  # type: ignore[return-value]


def require_pg() -> None:
    """Skip (or, in CI, fail) the calling test when PostgreSQL is unreachable."""
    reason = pg_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_PG:
        pytest.fail(f"PACELINE_REQUIRE_PG=1 but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema; dropped after the test. Yields its URL."""
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield pg_schema_url(schema)
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'paceline.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_schema: str) -> Iterator[Engine]:
    engine = make_engine(pg_schema)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """The same test on SQLite and on PostgreSQL."""
    fixture = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]
