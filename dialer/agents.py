"""Agents: their states, the in-memory board the engine routes calls with, and persistence.

States and the legal moves (`AGENT_TRANSITIONS`):

    logged_out -> not_ready (login; an agent starts paused until they say they are ready)
    not_ready  -> ready | logged_out
    ready      -> not_ready | on_call (a call is routed to them) | logged_out
    on_call    -> wrap_up (the customer or the agent hung up)
    wrap_up    -> ready | not_ready (a disposition was saved or the wrap-up was given up)
               | logged_out (closing without a disposition: recorded as abandoned by agent)

The board (`AgentBoard`) is pure: no I/O, no clock; callers pass `now` (the service's
monotonic seconds). Persistence functions take a `Connection` and run in the caller's
transaction, so the engine writes an agent's new state in the same transaction as the call
state it depends on, before it acts on the PBX.

Routing: an agent logs in to one campaign (VICIdial's model: the pacer of that campaign counts
them). `pick_ready` hands a live answer to the ready agent of the campaign who has waited
longest (the fairest rule, and the one that levels talk time across a team).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, bindparam, insert, select, update

from dialer.db.models import (
    Agent,
    AgentGroup,
    AgentGroupMember,
    AgentStateLog,
    CampaignAgentGroup,
    CampaignAssignment,
    UtcDateTime,
)
from dialer.leasing import LeasedContact


class AgentState(StrEnum):
    LOGGED_OUT = "logged_out"
    NOT_READY = "not_ready"
    READY = "ready"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"


_A = AgentState
AGENT_TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    _A.LOGGED_OUT: frozenset({_A.NOT_READY}),
    _A.NOT_READY: frozenset({_A.READY, _A.LOGGED_OUT}),
    _A.READY: frozenset({_A.NOT_READY, _A.ON_CALL, _A.LOGGED_OUT}),
    _A.ON_CALL: frozenset({_A.WRAP_UP}),
    _A.WRAP_UP: frozenset({_A.READY, _A.NOT_READY, _A.LOGGED_OUT}),
}

#: The pause code an agent gets after a service restart: logged in, but routed no call until
#: they say they are ready again (they may be mid-conversation on a call we no longer follow).
RECOVERY_PAUSE = "recovery"


class AgentError(ValueError):
    """An agent request that cannot be carried out (unknown agent, illegal move, not assigned)."""


@dataclass
class AgentSession:
    """One logged-in (or known) agent as the engine sees them.

    `since` is when the agent entered `state`; `idle_since` when they last became ready (the
    routing order); `busy_since` when their current call connected (talk + wrap-up).
    """

    id: int
    username: str
    endpoint: str
    groups: frozenset[str] = frozenset()
    state: AgentState = AgentState.LOGGED_OUT
    pause_code: str | None = None
    campaign_id: int | None = None
    since: float = 0.0
    idle_since: float = 0.0
    busy_since: float | None = None
    call_id: str | None = None
    attempt_id: int | None = None
    talk_started: float | None = None
    wrap_started: float | None = None
    #: Preview mode: the contact this (ready) agent is looking at; they get no other call.
    preview: LeasedContact | None = None
    #: The call placed for `preview` (a preview dial or a private callback), once dialed.
    preview_call: str | None = None


@dataclass(frozen=True)
class Assignment:
    """Who may work a campaign: members of `groups`, agents at `positions` (endpoints), or
    the named `users`. Empty everywhere means anyone."""

    groups: frozenset[str] = frozenset()
    positions: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def allows(self, agent: AgentSession) -> bool:
        if not (self.groups or self.positions or self.users):
            return True
        return (
            bool(self.groups & agent.groups)
            or agent.endpoint in self.positions
            or agent.username in self.users
        )


@dataclass
class AgentBoard:
    """The engine's live view of its agents. Pure: every method takes `now` if it needs time."""

    agents: dict[str, AgentSession] = field(default_factory=dict)

    def add(self, agent: AgentSession) -> None:
        self.agents[agent.username] = agent

    def get(self, username: str) -> AgentSession:
        try:
            return self.agents[username]
        except KeyError:
            raise AgentError(f"agent {username!r}: no such agent") from None

    def move(
        self, agent: AgentSession, new: AgentState, now: float, *, pause_code: str | None = None
    ) -> AgentState:
        """Move `agent` to `new` (raises AgentError for an illegal move); returns the old state."""
        old = agent.state
        if new not in AGENT_TRANSITIONS[old]:
            raise AgentError(
                f"agent {agent.username!r}: cannot go from {old.value} to {new.value}"
            )
        agent.state = new
        agent.since = now
        agent.pause_code = pause_code if new is AgentState.NOT_READY else None
        if new is AgentState.READY:
            agent.idle_since = now
        if new is AgentState.ON_CALL:
            agent.busy_since = now
            agent.talk_started = now
        if new is AgentState.WRAP_UP:
            agent.wrap_started = now
        if new in (AgentState.READY, AgentState.NOT_READY, AgentState.LOGGED_OUT):
            agent.busy_since = None
            agent.call_id = None
            agent.attempt_id = None
            agent.talk_started = agent.wrap_started = None
        if new is AgentState.LOGGED_OUT:
            agent.campaign_id = None
        return old

    def in_campaign(self, campaign_id: int) -> list[AgentSession]:
        return [a for a in self.agents.values() if a.campaign_id == campaign_id]

    def pick_ready(self, campaign_id: int) -> AgentSession | None:
        """The ready agent of the campaign who has waited longest, or None.

        An agent previewing a contact is reserved for it and is not picked.
        """
        best: AgentSession | None = None
        for a in self.agents.values():
            if a.campaign_id == campaign_id and a.state is AgentState.READY and (
                a.preview is None
            ) and (best is None or a.idle_since < best.idle_since):
                best = a
        return best

    def counts(self, campaign_id: int, now: float) -> tuple[int, list[float]]:
        """(ready agents, seconds each busy agent has been busy) for the campaign's pacer."""
        ready = 0
        busy: list[float] = []
        for a in self.agents.values():
            if a.campaign_id != campaign_id:
                continue
            if a.state is AgentState.READY and a.preview is None:
                ready += 1
            elif a.state in (AgentState.ON_CALL, AgentState.WRAP_UP):
                busy.append(max(0.0, now - (a.busy_since if a.busy_since is not None else now)))
        return ready, busy

    def by_state(self) -> dict[str, int]:
        out = {s.value: 0 for s in AgentState}
        for a in self.agents.values():
            out[a.state.value] += 1
        return out


# --- persistence ------------------------------------------------------------------------------


def create_agent(
    conn: Connection,
    username: str,
    endpoint: str,
    *,
    name: str | None = None,
    groups: Sequence[str] = (),
) -> int:
    """Create an agent (and any group it names). Raises AgentError if the username exists."""
    if not username.strip() or not endpoint.strip():
        raise AgentError("an agent needs a username and an endpoint (e.g. PJSIP/agent101)")
    for field_, value, most in (("username", username, 64), ("endpoint", endpoint, 100),
                                ("name", name or "", 100)):
        if len(value) > most:
            raise AgentError(f"{field_}: at most {most} characters, got {len(value)}")
    if conn.scalar(select(Agent.id).where(Agent.username == username)) is not None:
        raise AgentError(f"agent {username!r} exists already")
    aid = conn.scalar(
        insert(Agent)
        .values(username=username, endpoint=endpoint, name=name, state=AgentState.LOGGED_OUT)
        .returning(Agent.id)
    )
    assert aid is not None
    for g in groups:
        gid = conn.scalar(select(AgentGroup.id).where(AgentGroup.name == g))
        if gid is None:
            gid = conn.scalar(insert(AgentGroup).values(name=g).returning(AgentGroup.id))
        conn.execute(insert(AgentGroupMember).values(agent_id=aid, group_id=gid))
    return int(aid)


def assign_campaign(conn: Connection, campaign_id: int, kind: str, value: str) -> None:
    """Assign a campaign to a `group` (by name), a `position` (endpoint) or a `user`."""
    if kind == "group":
        gid = conn.scalar(select(AgentGroup.id).where(AgentGroup.name == value))
        if gid is None:
            gid = conn.scalar(insert(AgentGroup).values(name=value).returning(AgentGroup.id))
        conn.execute(insert(CampaignAgentGroup).values(campaign_id=campaign_id, group_id=gid))
    elif kind in ("position", "user"):
        conn.execute(
            insert(CampaignAssignment).values(campaign_id=campaign_id, kind=kind, value=value)
        )
    else:
        raise AgentError(f"assignment kind {kind!r}: use group, position or user")


def load_assignment(conn: Connection, campaign_id: int) -> Assignment:
    groups = conn.scalars(
        select(AgentGroup.name)
        .join(CampaignAgentGroup, CampaignAgentGroup.group_id == AgentGroup.id)
        .where(CampaignAgentGroup.campaign_id == campaign_id)
    ).all()
    rows = conn.execute(
        select(CampaignAssignment.kind, CampaignAssignment.value).where(
            CampaignAssignment.campaign_id == campaign_id
        )
    ).all()
    return Assignment(
        groups=frozenset(groups),
        positions=frozenset(v for k, v in rows if k == "position"),
        users=frozenset(v for k, v in rows if k == "user"),
    )


def load_agents(conn: Connection, usernames: Iterable[str] | None = None) -> list[AgentSession]:
    """Agents with their groups, as board sessions (state as persisted)."""
    stmt = select(Agent.id, Agent.username, Agent.endpoint, Agent.state, Agent.pause_code)
    if usernames is not None:
        stmt = stmt.where(Agent.username.in_(list(usernames)))
    rows = conn.execute(stmt).all()
    members: dict[int, set[str]] = {}
    for aid, gname in conn.execute(
        select(AgentGroupMember.agent_id, AgentGroup.name).join(
            AgentGroup, AgentGroup.id == AgentGroupMember.group_id
        )
    ):
        members.setdefault(aid, set()).add(gname)
    return [
        AgentSession(
            id=r.id,
            username=r.username,
            endpoint=r.endpoint,
            groups=frozenset(members.get(r.id, ())),
            state=AgentState(r.state),
            pause_code=r.pause_code,
        )
        for r in rows
    ]


# Built once: the engine persists an agent's state on every call it takes and ends.
_AGENT_STATE = update(Agent).where(Agent.id == bindparam("b_agent")).values(
    state=bindparam("b_state"),
    pause_code=bindparam("b_pause"),
    state_since=bindparam("b_now", type_=UtcDateTime()),
    attempt_id=bindparam("b_attempt"),
    node_id=bindparam("b_node"),
)
_CLOSE_INTERVAL = (
    update(AgentStateLog)
    .where(AgentStateLog.agent_id == bindparam("b_agent"), AgentStateLog.ended_at.is_(None))
    .values(ended_at=bindparam("b_now", type_=UtcDateTime()))
)
_OPEN_INTERVAL = insert(AgentStateLog).values(
    agent_id=bindparam("b_agent"),
    state=bindparam("b_state"),
    pause_code=bindparam("b_pause"),
    campaign_id=bindparam("b_campaign"),
    attempt_id=bindparam("b_attempt"),
    started_at=bindparam("b_now", type_=UtcDateTime()),
)


def persist_state(
    conn: Connection,
    agent: AgentSession,
    now: datetime,
    node_id: str | None,
) -> None:
    """Write the agent's current state and open a new `agent_state_log` interval."""
    params = {
        "b_agent": agent.id,
        "b_state": agent.state.value,
        "b_pause": agent.pause_code,
        "b_now": now,
        "b_attempt": agent.attempt_id,
        "b_node": node_id if agent.state is not AgentState.LOGGED_OUT else None,
        "b_campaign": agent.campaign_id,
    }
    conn.execute(_AGENT_STATE, params)
    conn.execute(_CLOSE_INTERVAL, params)
    if agent.state is not AgentState.LOGGED_OUT:
        conn.execute(_OPEN_INTERVAL, params)


def recover_agents(conn: Connection, node_id: str, now: datetime) -> int:
    """After a restart: every agent this node held comes back `not_ready` (pause `recovery`).

    An agent who was ready could otherwise be routed a call before they are back at their
    desk; one who was on a call may still be talking on a call we no longer follow. Returns
    how many agents were recovered.
    """
    ids = conn.scalars(
        select(Agent.id).where(
            Agent.node_id == node_id, Agent.state != AgentState.LOGGED_OUT.value
        )
    ).all()
    if not ids:
        return 0
    conn.execute(
        update(AgentStateLog)
        .where(AgentStateLog.agent_id.in_(ids), AgentStateLog.ended_at.is_(None))
        .values(ended_at=now)
    )
    conn.execute(
        update(Agent)
        .where(Agent.id.in_(ids))
        .values(
            state=AgentState.NOT_READY.value,
            pause_code=RECOVERY_PAUSE,
            state_since=now,
            attempt_id=None,
        )
    )
    conn.execute(
        insert(AgentStateLog),
        [
            {"agent_id": i, "state": AgentState.NOT_READY.value, "pause_code": RECOVERY_PAUSE,
             "started_at": now}
            for i in ids
        ],
    )
    return len(ids)
