"""Agents: the state machine, the routing board, assignments, persistence and recovery.

The board (`AgentBoard`) is pure and is tested with plain numbers for time; the persistence
functions run on SQLite and PostgreSQL (`engine` fixture).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from dialer.agents import (
    AGENT_TRANSITIONS,
    RECOVERY_PAUSE,
    AgentBoard,
    AgentError,
    AgentSession,
    AgentState,
    Assignment,
    assign_campaign,
    create_agent,
    load_agents,
    load_assignment,
    persist_state,
    recover_agents,
)
from dialer.db import write_transaction
from dialer.db.models import Agent, AgentStateLog
from dialer.domain import Channel
from dialer.leasing import LeasedContact
from tests.factories import make_campaign

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
S = AgentState

_ids = itertools.count(1)


def session(username: str, *, campaign: int | None = 1, state: AgentState = S.LOGGED_OUT,
            groups: frozenset[str] = frozenset(), endpoint: str | None = None) -> AgentSession:
    return AgentSession(id=next(_ids), username=username,
                        endpoint=endpoint or f"PJSIP/{username}", groups=groups,
                        state=state, campaign_id=campaign)


def ready_agent(board: AgentBoard, username: str, at: float, campaign: int = 1) -> AgentSession:
    """Log `username` in to `campaign` and make them ready at `at`."""
    a = session(username, campaign=campaign)
    board.add(a)
    board.move(a, S.NOT_READY, at, pause_code="login")
    a.campaign_id = campaign
    board.move(a, S.READY, at)
    return a


def lease(contact_id: int = 1) -> LeasedContact:
    return LeasedContact(contact_id=contact_id, campaign_id=1, number="+12125550100",
                         phone_index=1, channel=Channel.VOICE, step=0, tz="America/New_York",
                         external_id=None, params=(), lease_expires_at=NOW)


# ---- the state machine ----------------------------------------------------------------------

LEGAL = sorted((old, new) for old, news in AGENT_TRANSITIONS.items() for new in news)
ILLEGAL = sorted((old, new) for old in S for new in S
                 if new not in AGENT_TRANSITIONS[old])


def test_the_transition_table_is_the_documented_one() -> None:
    documented = {
        S.LOGGED_OUT: {S.NOT_READY},
        S.NOT_READY: {S.READY, S.LOGGED_OUT},
        S.READY: {S.NOT_READY, S.ON_CALL, S.LOGGED_OUT},
        S.ON_CALL: {S.WRAP_UP},
        S.WRAP_UP: {S.READY, S.NOT_READY, S.LOGGED_OUT},
    }
    assert documented == AGENT_TRANSITIONS


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_illegal_moves_are_refused_and_change_nothing(old: AgentState, new: AgentState) -> None:
    board = AgentBoard()
    a = session("alice", state=old)
    a.since = 5.0
    board.add(a)
    with pytest.raises(AgentError, match=f"cannot go from {old.value} to {new.value}"):
        board.move(a, new, 10.0)
    assert a.state is old and a.since == 5.0


@pytest.mark.parametrize(("old", "new"), LEGAL)
def test_legal_moves_set_the_state_and_since(old: AgentState, new: AgentState) -> None:
    board = AgentBoard()
    a = session("alice", state=old)
    board.add(a)
    assert board.move(a, new, 42.0, pause_code="lunch") is old
    assert a.state is new and a.since == 42.0
    # A pause code belongs to not_ready only.
    assert a.pause_code == ("lunch" if new is S.NOT_READY else None)


def test_a_call_cycle_records_busy_talk_and_wrap_times_and_clears_them_after() -> None:
    board = AgentBoard()
    a = ready_agent(board, "alice", 10.0)
    assert a.idle_since == 10.0
    board.move(a, S.ON_CALL, 15.0)
    a.call_id, a.attempt_id = "pl-1", 7
    assert a.busy_since == 15.0 and a.talk_started == 15.0
    board.move(a, S.WRAP_UP, 75.0)
    assert a.wrap_started == 75.0 and a.busy_since == 15.0, "busy covers talk and wrap-up"
    board.move(a, S.READY, 90.0)
    assert a.idle_since == 90.0
    cleared: tuple[object, ...] = (a.busy_since, a.call_id, a.attempt_id, a.talk_started,
                                   a.wrap_started)
    assert cleared == (None,) * 5


def test_logging_out_leaves_the_campaign() -> None:
    board = AgentBoard()
    a = ready_agent(board, "alice", 0.0, campaign=3)
    board.move(a, S.LOGGED_OUT, 1.0)
    assert a.campaign_id is None
    assert board.pick_ready(3) is None


def test_get_names_an_unknown_agent() -> None:
    with pytest.raises(AgentError, match="'nobody': no such agent"):
        AgentBoard().get("nobody")


# ---- routing ----------------------------------------------------------------------------------


def test_pick_ready_takes_the_longest_idle_ready_agent_of_the_campaign() -> None:
    board = AgentBoard()
    ready_agent(board, "alice", 30.0)
    ready_agent(board, "bob", 10.0)
    ready_agent(board, "carol", 20.0)
    ready_agent(board, "dave", 1.0, campaign=2)  # idle longest, but another campaign
    assert board.pick_ready(1) is board.agents["bob"]
    board.move(board.agents["bob"], S.ON_CALL, 40.0)
    assert board.pick_ready(1) is board.agents["carol"]
    assert board.pick_ready(2) is board.agents["dave"]
    assert board.pick_ready(99) is None


def test_pick_ready_skips_agents_who_are_not_ready_or_are_previewing() -> None:
    board = AgentBoard()
    paused = ready_agent(board, "paused", 1.0)
    board.move(paused, S.NOT_READY, 2.0, pause_code="break")
    previewing = ready_agent(board, "previewing", 3.0)
    previewing.preview = lease()
    assert board.pick_ready(1) is None
    late = ready_agent(board, "late", 50.0)
    assert board.pick_ready(1) is late


def test_becoming_ready_again_goes_to_the_back_of_the_line() -> None:
    board = AgentBoard()
    alice = ready_agent(board, "alice", 1.0)
    ready_agent(board, "bob", 2.0)
    board.move(alice, S.NOT_READY, 3.0)
    board.move(alice, S.READY, 4.0)
    assert board.pick_ready(1) is board.agents["bob"]


def test_counts_give_ready_agents_and_busy_times_for_the_pacer() -> None:
    board = AgentBoard()
    ready_agent(board, "r1", 0.0)
    ready_agent(board, "r2", 0.0)
    ready_agent(board, "previewing", 0.0).preview = lease()
    talking = ready_agent(board, "talking", 0.0)
    board.move(talking, S.ON_CALL, 100.0)
    wrapping = ready_agent(board, "wrapping", 0.0)
    board.move(wrapping, S.ON_CALL, 50.0)
    board.move(wrapping, S.WRAP_UP, 90.0)
    paused = ready_agent(board, "paused", 0.0)
    board.move(paused, S.NOT_READY, 1.0)
    ready_agent(board, "elsewhere", 0.0, campaign=2)
    ready, busy = board.counts(1, 120.0)
    assert ready == 2, "previewing, paused and other campaigns' agents are not ready"
    assert sorted(busy) == [20.0, 70.0]  # since the call connected, talk + wrap-up
    assert board.counts(2, 120.0) == (1, [])


def test_by_state_counts_every_state() -> None:
    board = AgentBoard()
    ready_agent(board, "a", 0.0)
    board.add(session("b"))
    assert board.by_state() == {"logged_out": 1, "not_ready": 0, "ready": 1, "on_call": 0,
                                "wrap_up": 0}


def test_assignment_by_group_position_or_user() -> None:
    alice = session("alice", groups=frozenset({"sales"}), endpoint="PJSIP/agent101")
    assert Assignment().allows(alice), "an unassigned campaign is open to anyone"
    assert Assignment(groups=frozenset({"sales", "x"})).allows(alice)
    assert not Assignment(groups=frozenset({"support"})).allows(alice)
    assert Assignment(positions=frozenset({"PJSIP/agent101"})).allows(alice)
    assert not Assignment(positions=frozenset({"PJSIP/agent102"})).allows(alice)
    assert Assignment(users=frozenset({"alice"})).allows(alice)
    assert not Assignment(users=frozenset({"bob"}), groups=frozenset({"support"})).allows(alice)


# ---- persistence --------------------------------------------------------------------------


def test_create_agent_validates_and_refuses_duplicates(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        create_agent(conn, "alice", "PJSIP/agent101", groups=["sales", "vip"])
    with write_transaction(engine) as conn:
        with pytest.raises(AgentError, match="'alice' exists already"):
            create_agent(conn, "alice", "PJSIP/agent109")
        with pytest.raises(AgentError, match="endpoint"):
            create_agent(conn, "bob", "  ")
    with engine.connect() as conn:
        (a,) = load_agents(conn, ["alice"])
    assert (a.username, a.endpoint, a.groups, a.state) == \
        ("alice", "PJSIP/agent101", frozenset({"sales", "vip"}), S.LOGGED_OUT)


def test_assign_campaign_and_load_assignment(engine: Engine) -> None:
    cid = make_campaign(engine, NOW, agent_groups=["sales"])
    with write_transaction(engine) as conn:
        assign_campaign(conn, cid, "group", "retention")
        assign_campaign(conn, cid, "position", "PJSIP/agent105")
        assign_campaign(conn, cid, "user", "carol")
        with pytest.raises(AgentError, match="'team': use group, position or user"):
            assign_campaign(conn, cid, "team", "x")
    with engine.connect() as conn:
        got = load_assignment(conn, cid)
    assert got == Assignment(groups=frozenset({"sales", "retention"}),
                             positions=frozenset({"PJSIP/agent105"}),
                             users=frozenset({"carol"}))


def test_persist_state_writes_the_agent_and_one_open_log_interval(engine: Engine) -> None:
    cid = make_campaign(engine, NOW)
    with write_transaction(engine) as conn:
        create_agent(conn, "alice", "PJSIP/agent101")
        (a,) = load_agents(conn, ["alice"])
    board = AgentBoard({"alice": a})
    steps: list[tuple[AgentState, int | None]] = [
        (S.NOT_READY, None), (S.READY, None), (S.ON_CALL, 11), (S.WRAP_UP, 11),
        (S.READY, None), (S.LOGGED_OUT, None)]
    for i, (state, attempt) in enumerate(steps):
        board.move(a, state, float(i), pause_code="login" if state is S.NOT_READY else None)
        a.attempt_id = attempt
        a.campaign_id = None if state is S.LOGGED_OUT else cid
        with write_transaction(engine) as conn:
            persist_state(conn, a, NOW + timedelta(seconds=10 * i), "node-a")
        with engine.connect() as conn:
            row = conn.execute(select(Agent).where(Agent.username == "alice")).one()
            open_rows = conn.execute(select(AgentStateLog).where(
                AgentStateLog.ended_at.is_(None))).all()
        assert row.state == state.value and row.attempt_id == attempt
        assert row.node_id == (None if state is S.LOGGED_OUT else "node-a")
        assert len(open_rows) == (0 if state is S.LOGGED_OUT else 1)
    with engine.connect() as conn:
        log = conn.execute(select(AgentStateLog).order_by(AgentStateLog.id)).all()
    assert [(r.state, r.attempt_id, r.campaign_id) for r in log] == [
        ("not_ready", None, cid), ("ready", None, cid), ("on_call", 11, cid),
        ("wrap_up", 11, cid), ("ready", None, cid)]
    assert [(r.ended_at - r.started_at).total_seconds() for r in log] == [10.0] * 5
    assert log[0].pause_code == "login"


def test_recover_agents_brings_this_nodes_agents_back_paused(engine: Engine) -> None:
    with write_transaction(engine) as conn:
        for name in ("talking", "ready", "gone", "theirs"):
            create_agent(conn, name, f"PJSIP/{name}")
        agents = {a.username: a for a in load_agents(conn)}
    setup = {"talking": (S.ON_CALL, "node-a"), "ready": (S.READY, "node-a"),
             "gone": (S.LOGGED_OUT, "node-a"), "theirs": (S.READY, "node-b")}
    with write_transaction(engine) as conn:
        for name, (state, node) in setup.items():
            a = agents[name]
            a.state = state
            a.attempt_id = 5 if state is S.ON_CALL else None
            persist_state(conn, a, NOW, node)
    later = NOW + timedelta(minutes=3)
    with write_transaction(engine) as conn:
        assert recover_agents(conn, "node-a", later) == 2
    with engine.connect() as conn:
        rows = {r.username: r for r in conn.execute(select(Agent))}
        log = conn.execute(select(AgentStateLog, Agent.username)
                           .join(Agent, Agent.id == AgentStateLog.agent_id)).all()
    for name in ("talking", "ready"):
        assert (rows[name].state, rows[name].pause_code, rows[name].attempt_id) == \
            ("not_ready", RECOVERY_PAUSE, None)
    assert rows["gone"].state == "logged_out"
    assert rows["theirs"].state == "ready", "another node's agents are not touched"
    open_by_agent = {r.username: r.state for r in log if r.ended_at is None}
    assert open_by_agent == {"talking": "not_ready", "ready": "not_ready", "theirs": "ready"}
    closed = {r.username: r.ended_at for r in log if r.ended_at is not None}
    assert closed == {"talking": later, "ready": later}
    with write_transaction(engine) as conn:
        assert recover_agents(conn, "node-c", later) == 0


@pytest.mark.parametrize(("username", "endpoint", "field"), [
    ("u" * 65, "PJSIP/agent101", "username"),
    ("alice", "PJSIP/" + "e" * 100, "endpoint"),
], ids=["username", "endpoint"])
def test_create_agent_refuses_values_too_long_to_store(
    engine: Engine, username: str, endpoint: str, field: str,
) -> None:
    with write_transaction(engine) as conn, pytest.raises(AgentError, match=field):
        create_agent(conn, username, endpoint)
