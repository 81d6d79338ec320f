"""The lease query walks the partial index `ix_contacts_lease`: no sort, on both databases."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from dialer.leasing import AnySelect, lease_candidates_query
from tests.factories import add_contacts, make_campaign

NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]
# The query as `lease_due_contacts` runs it: every zone open, or some zones closed.
FILTERS: list[set[str] | None] = [None, {"America/New_York", "America/Chicago"}]


def spread(n: int, seed: int) -> list[dict[str, Any]]:
    """Mostly due contacts over the past day, 3 priorities, ~10% not leasable, 4 zones."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        state = rng.choices(["pending", "not_connected", "connected", "retries_completed"],
                            [80, 10, 5, 5])[0]
        rows.append({
            "priority": rng.randint(0, 2),
            "due_at": NOW + timedelta(seconds=rng.randint(-86_400, 3_600)),
            "state": state,
            "tz": rng.choice(ZONES),
        })
    return rows


def literal_sql(conn: Connection, stmt: AnySelect) -> str:
    return str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))


def sqlite_plan(conn: Connection, stmt: AnySelect) -> str:
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + literal_sql(conn, stmt)).all()
    return "\n".join(r[-1] for r in rows)


def assert_sqlite_uses_lease_index(engine: Engine, campaign_id: int) -> None:
    with engine.connect() as conn:
        for zones in FILTERS:
            plan = sqlite_plan(conn, lease_candidates_query(campaign_id, 1000, NOW, zones))
            assert "USING INDEX ix_contacts_lease (" in plan, plan
            assert "USE TEMP B-TREE" not in plan, plan


def test_sqlite_plan_uses_lease_index_without_sorting_on_an_empty_table(
    sqlite_engine: Engine,
) -> None:
    assert_sqlite_uses_lease_index(sqlite_engine, 1)


def test_sqlite_plan_uses_lease_index_without_sorting_after_analyze(
    sqlite_engine: Engine,
) -> None:
    cids = [make_campaign(sqlite_engine, NOW) for _ in range(2)]
    for k, cid in enumerate(cids):
        add_contacts(sqlite_engine, cid, spread(3_000, seed=k), NOW)
    with sqlite_engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    assert_sqlite_uses_lease_index(sqlite_engine, cids[0])


def pg_plans(conn: Connection, stmt: AnySelect) -> dict[str, str]:
    """EXPLAIN of `stmt` with literal values, and of its generic prepared plan (the plan that
    psycopg's automatic prepared statements can end up with, where no value is known)."""
    from psycopg import sql as pgsql
    from sqlalchemy.dialects.postgresql import psycopg

    plans = {}
    literal = conn.execute(text("EXPLAIN " + literal_sql(conn, stmt))).scalars()
    plans["literal"] = "\n".join(literal)
    numbered = psycopg.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
    expanded = stmt.compile(dialect=numbered).construct_expanded_state()
    conn.exec_driver_sql(f"PREPARE lease_q AS {expanded.statement}")
    try:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        raw = conn.connection.driver_connection
        args = ", ".join(
            pgsql.Literal(expanded.parameters[k]).as_string(raw)
            for k in expanded.positiontup or ()
        )
        generic = conn.exec_driver_sql(f"EXPLAIN EXECUTE lease_q({args})").scalars()
        plans["generic"] = "\n".join(generic)
    finally:
        conn.exec_driver_sql("RESET plan_cache_mode")
        conn.exec_driver_sql("DEALLOCATE lease_q")
    return plans


@pytest.mark.postgres
def test_postgres_plan_uses_lease_index_without_sorting(pg_engine: Engine) -> None:
    cids = [make_campaign(pg_engine, NOW) for _ in range(2)]
    for k, cid in enumerate(cids):
        add_contacts(pg_engine, cid, spread(10_000, seed=k), NOW)
    with pg_engine.connect() as conn:
        conn.execute(text("ANALYZE contacts"))
        for zones in FILTERS:
            base = lease_candidates_query(cids[0], 1000, NOW, zones)
            for stmt in (base, base.with_for_update(skip_locked=True)):
                for kind, plan in pg_plans(conn, stmt).items():
                    assert "using ix_contacts_lease on" in plan, f"{kind} plan:\n{plan}"
                    assert "Sort" not in plan, f"{kind} plan:\n{plan}"
                    assert "Seq Scan" not in plan, f"{kind} plan:\n{plan}"
