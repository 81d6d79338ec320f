"""The Alembic migrations and the models describe the same schema, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from dialer.db import migrate
from dialer.db.models import Base


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    # The lease index has an expression column (priority DESC) that autogenerate cannot
    # compare; the next test checks that index directly.
    diff = [d for d in diff if not (d[0].endswith("_index") and d[1].name == "ix_contacts_lease")]
    assert diff == [], diff


def test_lease_index_is_partial_and_ordered(engine: Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = conn.scalar(text("SELECT sql FROM sqlite_master WHERE name='ix_contacts_lease'"))
        else:
            sql = conn.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname='ix_contacts_lease'")
            )
    assert sql is not None
    assert "priority DESC" in sql
    for state in ("pending", "not_connected", "callback_scheduled"):
        assert state in sql


def test_migrate_is_idempotent(engine: Engine) -> None:
    migrate(engine)
    migrate(engine)
    assert "contacts" in inspect(engine).get_table_names()
