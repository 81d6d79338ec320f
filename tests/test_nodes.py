"""Campaign ownership across nodes (advisory locks, failover, balance) and node heartbeats.

The PostgreSQL tests use real sessions: locks held on separate connections, a holder process
killed with SIGKILL, a lock session terminated by the server. Each test takes its own lock
namespace, so tests sharing the `test` database never see each other's locks.
"""

from __future__ import annotations

import os
import random
import select as io_select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text

from dialer.db import make_engine
from dialer.db.models import Node
from dialer.nodes import (
    GRACE_REFRESHES,
    LOCK_SESSION_SETTINGS,
    CampaignOwnership,
    balance_quota,
    heartbeat,
    live_nodes,
    remove_node,
)
from tests.conftest import PG_URL

NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent
TAKEOVER_LIMIT_S = 5.0

# A node in another process: takes one campaign, says which it owns, then waits to be killed.
HOLDER = """
import sys, time
from datetime import UTC, datetime
from dialer.db import make_engine
from dialer.db.models import Node
from dialer.nodes import CampaignOwnership
url, ns, cid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
own = CampaignOwnership(make_engine(url), "holder", namespace=ns)
print(sorted(own.refresh([cid], datetime(2026, 3, 10, 16, 0, tzinfo=UTC)).owned), flush=True)
time.sleep(60)
"""


@pytest.fixture
def namespace() -> int:
    return random.randrange(1, 2**31)


@pytest.fixture
def owners() -> Iterator[dict[str, CampaignOwnership]]:
    """Ownership objects by node id (made with `make_owner`); all closed after the test."""
    made: dict[str, CampaignOwnership] = {}
    yield made
    for own in made.values():
        own.close()


def make_owner(
    owners: dict[str, CampaignOwnership], engine: Engine, node_id: str, namespace: int
) -> CampaignOwnership:
    own = CampaignOwnership(engine, node_id, namespace=namespace)
    owners[node_id] = own
    return own


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def holder_process() -> Iterator[list[subprocess.Popen[str]]]:
    """Holder processes started by `start_holder`; killed at the end whatever happened."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_holder(
    procs: list[subprocess.Popen[str]], engine: Engine, namespace: int, campaign_id: int
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url_of(engine), str(namespace), str(campaign_id)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    procs.append(proc)
    assert proc.stdout is not None
    ready, _, _ = io_select.select([proc.stdout], [], [], 20)
    assert ready, "the holder process did not report within 20 s"
    line = proc.stdout.readline().strip()
    assert line == f"[{campaign_id}]", f"the holder process did not take the campaign: {line!r}"
    return proc


def refresh_until_owned(
    own: CampaignOwnership, wanted: list[int], campaign_id: int, limit_s: float
) -> float:
    """Refresh every 50 ms until `campaign_id` is owned; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if campaign_id in own.refresh(wanted, NOW).owned:
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"{own.node_id} did not take campaign {campaign_id} within {limit_s} s")


# --- one owner per campaign (SQLite file and PostgreSQL) ----------------------------------------


def test_only_one_node_owns_a_campaign_until_it_lets_go(
    engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    a = make_owner(owners, engine, "a", namespace)
    b = make_owner(owners, engine, "b", namespace)
    first = a.refresh([7], NOW)
    assert first.gained == {7} and first.owned == {7} and not first.lost
    # b never gets it, not even once its grace period has run out: the lock decides.
    for _ in range(GRACE_REFRESHES + 2):
        change = b.refresh([7], NOW)
        assert change.owned == frozenset() and not change.gained
    assert a.refresh([7], NOW).owned == {7}

    paused = a.refresh([], NOW)  # the campaign is no longer running: a lets it go
    assert paused.lost == {7} and paused.owned == frozenset()
    assert b.refresh([7], NOW).gained == {7}


def test_release_all_frees_every_campaign_for_another_node(
    engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    a = make_owner(owners, engine, "a", namespace)
    b = make_owner(owners, engine, "b", namespace)
    assert a.refresh([1, 2], NOW).owned == {1, 2}
    assert b.refresh([1, 2], NOW).owned == frozenset()
    assert a.release_all() == {1, 2}
    assert a.owned == frozenset()
    assert b.refresh([1, 2], NOW).owned == {1, 2}


def test_a_killed_node_hands_its_campaign_over_within_seconds(
    engine: Engine,
    namespace: int,
    owners: dict[str, CampaignOwnership],
    holder_process: list[subprocess.Popen[str]],
) -> None:
    survivor = make_owner(owners, engine, "survivor", namespace)
    proc = start_holder(holder_process, engine, namespace, 42)
    assert survivor.refresh([42], NOW).owned == frozenset()

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    took_s = refresh_until_owned(survivor, [42], 42, TAKEOVER_LIMIT_S)
    assert took_s < TAKEOVER_LIMIT_S


def test_campaign_ids_outside_the_lock_key_range_are_refused(
    sqlite_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    a = make_owner(owners, sqlite_engine, "a", namespace)
    with pytest.raises(ValueError, match="campaign id 2147483648"):
        a.refresh([2**31], NOW)
    with pytest.raises(ValueError, match="namespace"):
        CampaignOwnership(sqlite_engine, "x", namespace=2**31)


# --- SQLite specifics --------------------------------------------------------------------------


def test_sqlite_lock_files_sit_next_to_the_database_and_exclude_within_one_process(
    sqlite_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    # flock belongs to the open file description: two opens in one process still conflict.
    a = make_owner(owners, sqlite_engine, "a", namespace)
    b = make_owner(owners, sqlite_engine, "b", namespace)
    assert a.refresh([3], NOW).owned == {3}
    assert b.refresh([3], NOW).owned == frozenset()
    db = Path(str(sqlite_engine.url.database))
    assert (db.parent / f"{db.name}.campaign-3.lock").exists()


def test_in_memory_sqlite_owns_whatever_it_wants() -> None:
    engine = make_engine("sqlite://")
    with CampaignOwnership(engine, "solo") as own:
        assert own.refresh([1, 2], NOW).gained == {1, 2}
        change = own.refresh([2, 3], NOW)
        assert (change.gained, change.lost, change.owned) == ({3}, {1}, {2, 3})
    engine.dispose()


def test_sqlite_nodes_share_campaigns_one_each(
    sqlite_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    nodes = [make_owner(owners, sqlite_engine, n, namespace) for n in ("a", "b", "c")]
    for own in nodes:
        heartbeat(sqlite_engine, own.node_id, NOW)
    for own in nodes:
        own.refresh([1, 2, 3], NOW)
    assert [own.owned for own in nodes] == [{1}, {2}, {3}]


# --- PostgreSQL specifics ----------------------------------------------------------------------


def terminate_backend(pid: int) -> None:
    admin = create_engine(PG_URL)
    try:
        with admin.connect() as conn:
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


def test_pg_lock_session_lost_reports_every_campaign_lost_then_takes_them_again(
    pg_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    a = make_owner(owners, pg_engine, "a", namespace)
    assert a.refresh([1, 2], NOW).owned == {1, 2}
    old_pid = a.backend_pid
    assert old_pid is not None
    terminate_backend(old_pid)

    lost = a.refresh([1, 2], NOW)
    assert lost.lost == {1, 2} and lost.owned == frozenset() and not lost.gained
    assert lost.error is not None
    again = a.refresh([1, 2], NOW)
    assert again.gained == {1, 2} and again.error is None
    assert a.backend_pid not in (None, old_pid)


def test_pg_lock_session_lets_the_server_drop_a_silent_node(
    pg_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    a = make_owner(owners, pg_engine, "a", namespace)
    a.refresh([1], NOW)
    settings = a.lock_session_settings()
    # 5 s idle + 3 probes x 2 s: the server ends a silent node's session within about 11 s.
    for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count"):
        assert settings[name] == LOCK_SESSION_SETTINGS[name], name
    assert settings["tcp_user_timeout"] == "10000"
    assert settings["idle_session_timeout"] == "0"


def test_pg_three_nodes_take_one_of_three_campaigns_each(
    pg_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    nodes = [make_owner(owners, pg_engine, n, namespace) for n in ("a", "b", "c")]
    for own in nodes:
        heartbeat(pg_engine, own.node_id, NOW)
    for _ in range(3):
        for own in nodes:
            own.refresh([1, 2, 3], NOW)
        assert sorted(len(own.owned) for own in nodes) == [1, 1, 1]
    assert set().union(*(own.owned for own in nodes)) == {1, 2, 3}


def test_pg_a_node_started_first_hands_campaigns_back_as_others_come_up(
    pg_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    a = make_owner(owners, pg_engine, "a", namespace)
    heartbeat(pg_engine, "a", NOW)
    assert a.refresh([1, 2, 3], NOW).owned == {1, 2, 3}  # alone: takes everything

    late = [make_owner(owners, pg_engine, n, namespace) for n in ("b", "c")]
    for own in late:
        heartbeat(pg_engine, own.node_id, NOW)
    nodes = [a, *late]
    for _ in range(4):
        for own in nodes:
            own.refresh([1, 2, 3], NOW)
    assert sorted(len(own.owned) for own in nodes) == [1, 1, 1]
    assert set().union(*(own.owned for own in nodes)) == {1, 2, 3}


def test_pg_failover_does_not_wait_for_the_dead_nodes_heartbeat_to_expire(
    pg_engine: Engine, namespace: int, owners: dict[str, CampaignOwnership]
) -> None:
    nodes = [make_owner(owners, pg_engine, n, namespace) for n in ("a", "b", "c")]
    for own in nodes:
        heartbeat(pg_engine, own.node_id, NOW)
    for own in nodes:
        own.refresh([1, 2, 3], NOW)
    a, survivors = nodes[0], nodes[1:]
    (orphan,) = a.owned
    assert a.backend_pid is not None
    terminate_backend(a.backend_pid)  # as the server sees a killed node: the session ends
    del owners["a"]
    a.close()

    # a's heartbeat still counts it live, so b and c are at quota; the grace period decides.
    taken_in_round = None
    for rounds in range(1, GRACE_REFRESHES + 3):
        for own in survivors:
            own.refresh([1, 2, 3], NOW)
        if any(orphan in own.owned for own in survivors):
            taken_in_round = rounds
            break
    # Unowned for GRACE_REFRESHES refreshes in a row, then taken on the next one.
    assert taken_in_round == GRACE_REFRESHES + 1
    settled = [own.owned for own in survivors]
    for _ in range(5):  # and nobody hands it back and forth afterwards
        for own in survivors:
            own.refresh([1, 2, 3], NOW)
    assert [own.owned for own in survivors] == settled


# --- heartbeats --------------------------------------------------------------------------------


def test_heartbeats_say_which_nodes_are_live(engine: Engine) -> None:
    heartbeat(engine, "a", NOW - timedelta(seconds=60), {"pbx": ["pbx1"]}, starting=True)
    heartbeat(engine, "a", NOW, {"pbx": ["pbx1"], "campaigns": [1]})
    heartbeat(engine, "b", NOW - timedelta(seconds=20))
    heartbeat(engine, "c", NOW - timedelta(seconds=5))
    with engine.connect() as conn:
        assert live_nodes(conn, NOW, within_s=15) == ["a", "c"]
        assert live_nodes(conn, NOW, within_s=30) == ["a", "b", "c"]
        started, info = conn.execute(
            select(Node.started_at, Node.info).where(Node.node_id == "a")
        ).one()
    assert info == {"pbx": ["pbx1"], "campaigns": [1]}
    assert started == NOW - timedelta(seconds=60)  # kept by later beats

    heartbeat(engine, "a", NOW, starting=True)  # restarted under the same id
    assert remove_node(engine, "b") is True
    assert remove_node(engine, "b") is False
    with engine.connect() as conn:
        assert live_nodes(conn, NOW, within_s=30) == ["a", "c"]
        assert conn.scalar(select(Node.started_at).where(Node.node_id == "a")) == NOW


def test_balance_quota_splits_campaigns_over_live_nodes() -> None:
    assert balance_quota(3, 3) == 1
    assert balance_quota(4, 3) == 2
    assert balance_quota(3, 0) == 3  # no heartbeat seen yet: this node alone
    assert balance_quota(0, 2) == 0
