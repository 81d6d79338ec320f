"""Behaviour of the dialer engine, one rule per test, against the Asterisk emulator.

Each test runs `dialer.engine.Engine` in-process over a real AMI socket to `sim.pbx`, on one
virtual time line (`ScaledClock` and the emulator share `SCALE`), with a handful of contacts
whose behaviour depends on the number only (`deterministic_test_population` plus overrides)
and agents the test drives itself through the engine's agent API. Where a test must choose
when calls exist (no agent ready, say), the campaign gets a `BudgetPacer`: it places a fixed
number of calls at the first tick, whatever the agents.

The PBX backend is `RecordingAmi`: the real `AmiTelephony`, which first writes down what the
database had *committed* (read on a fresh connection) when the engine asked for a side effect
— the write-before-act rule is checked at the moment it matters.

The 2,000-contact runs, crash and multi-node tests live elsewhere (test_engine_e2e.py, …).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from cti.ami.telephony import AmiTelephony
from cti.interface import OriginateRequest, TelephonyError, UnknownCall
from dialer.agents import AgentError, AgentState, assign_campaign, create_agent
from dialer.campaigns import set_campaign_state
from dialer.clock import ScaledClock
from dialer.db import write_transaction
from dialer.db.models import Agent, AgentStateLog, Attempt, Campaign, Contact, WebhookOutbox
from dialer.domain import CampaignState
from dialer.engine import CallState
from dialer.engine import Engine as Dialer
from dialer.nodes import heartbeat
from dialer.pacing import Pacer, PacingSnapshot
from dialer.wrapup import WrapUp
from sim.pbx.core import CallRecord
from sim.pbx.runner import RunningPbx, run_pbx
from sim.population import (
    DETERMINISTIC_OVERRIDES,
    CalleeKind,
    Override,
    Population,
    deterministic_test_population,
)
from tests.factories import add_contacts, make_campaign

SCALE = 0.02  # 1 virtual second = 20 ms of wall time
START = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)  # 10:00 in New York: calling hours are open
TRUNK = "PJSIP/{number}@trunk"
GROUP = "sales"
#: Wall seconds a test waits for one expected thing before it fails and dumps the tables.
WAIT_S = 10.0

# Numbers: a suffix picks the behaviour (see `population()`); the rest of the digits keep
# them distinct. ...0017 busy, ...0019 no answer, ...0666 machine (DETERMINISTIC_OVERRIDES).
HUMAN_A = "+12125550101"
HUMAN_B = "+12125550102"
HUMAN_C = "+12125550103"
MACHINE = "+12125550666"
NO_ANSWER = "+12125550019"


def population(*extra: Override, talk_s: float = 30.0, ring_s: float = 3.0) -> Population:
    """Everyone not overridden is a person who answers after `ring_s` and talks `talk_s`."""
    humans = (
        Override(r"0101$", CalleeKind.HUMAN, ring_s=ring_s, talk_s=talk_s),
        Override(r"0102$", CalleeKind.HUMAN, ring_s=ring_s + 1.0, talk_s=talk_s),
        Override(r"0103$", CalleeKind.HUMAN, ring_s=ring_s + 2.0, talk_s=talk_s),
        Override(r"0666$", CalleeKind.MACHINE, ring_s=ring_s, talk_s=20.0),
    )
    return dataclasses.replace(
        deterministic_test_population(),
        overrides=(*extra, *humans, *DETERMINISTIC_OVERRIDES),
    )


class BudgetPacer(Pacer):
    """Places `budget` calls at the first decision and none after, whatever the agents.

    Lets a test decide which calls exist (e.g. a live answer while no agent is ready), which
    no real pacing mode would do.
    """

    def __init__(self, budget: int) -> None:
        super().__init__(mode="progressive")
        self.budget = budget

    def _decide_simple(self, snap: PacingSnapshot, dt: float) -> int | None:
        n, self.budget = self.budget, 0
        return n


class RecordingPacer(BudgetPacer):
    """A `BudgetPacer` that also writes down every observation the engine feeds it."""

    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        self.calls: list[tuple[float, str]] = []
        self.handles: list[float] = []
        self.connects: list[float] = []
        self.abandons = 0

    def observe_call(self, ring_s: float, outcome: str) -> None:
        self.calls.append((ring_s, outcome))
        super().observe_call(ring_s, outcome)

    def observe_handle(self, handle_s: float) -> None:
        self.handles.append(handle_s)
        super().observe_handle(handle_s)

    def observe_connect(self, wait_s: float) -> None:
        self.connects.append(wait_s)
        super().observe_connect(wait_s)

    def observe_abandon(self) -> None:
        self.abandons += 1
        super().observe_abandon()


@dataclass(frozen=True)
class Seen:
    """One PBX command, with what the database had committed when it was issued."""

    command: str
    call_id: str
    arg: str
    mono: float
    attempt: Any  # the attempt row (committed), or None
    contact: Any  # the contact row of that attempt, or None
    agents: dict[str, Any]  # username -> agent row


class RecordingAmi(AmiTelephony):
    """`AmiTelephony` that snapshots the committed database at each side effect.

    Originates of a number in `refuse` are refused as the PBX would (`TelephonyError`,
    nothing dialed). A command named in `faults` raises that exception instead of acting.
    """

    def __init__(self, db: Engine, clock: ScaledClock, port: int,
                 refuse: frozenset[str] = frozenset(),
                 faults: Mapping[str, Exception] | None = None) -> None:
        super().__init__("127.0.0.1", port, "dialer", "dialer")
        self.db = db
        self.clock = clock
        self.refuse = refuse
        self.faults = dict(faults or {})
        self.seen: list[Seen] = []
        self.requests: list[OriginateRequest] = []

    def _snap(self, command: str, call_id: str, arg: str) -> None:
        with self.db.connect() as conn:  # a fresh connection sees committed rows only
            attempt = conn.execute(
                select(Attempt).where(Attempt.correlation_id == call_id)).first()
            contact = None if attempt is None else conn.execute(
                select(Contact).where(Contact.id == attempt.contact_id)).first()
            agents = {a.username: a for a in conn.execute(select(Agent))}
        self.seen.append(Seen(command, call_id, arg, self.clock.monotonic(), attempt, contact,
                              agents))
        fault = self.faults.get(command)
        if fault is not None:
            raise fault

    def commands(self, command: str) -> list[Seen]:
        return [s for s in self.seen if s.command == command]

    async def originate(self, request: OriginateRequest) -> None:
        self.requests.append(request)
        self._snap("originate", request.call_id, request.endpoint)
        if any(n in request.endpoint for n in self.refuse):
            raise TelephonyError(f"Originate refused for {request.endpoint}")
        await super().originate(request)

    async def connect_to_agent(self, call_id: str, agent_endpoint: str) -> None:
        self._snap("connect_to_agent", call_id, agent_endpoint)
        await super().connect_to_agent(call_id, agent_endpoint)

    async def play_and_hangup(self, call_id: str, sound: str) -> None:
        self._snap("play_and_hangup", call_id, sound)
        await super().play_and_hangup(call_id, sound)

    async def hangup(self, call_id: str, cause: int = 16) -> None:
        self._snap("hangup", call_id, str(cause))
        await super().hangup(call_id, cause)

    async def send_to_ivr(self, call_id: str, flow: str, variables: Mapping[str, str]) -> None:
        self._snap("send_to_ivr", call_id, flow)
        await super().send_to_ivr(call_id, flow, variables)


@dataclass
class Rig:
    db: Engine
    engine: Dialer
    pbx: RunningPbx
    tel: RecordingAmi
    clock: ScaledClock
    campaign_id: int
    contact_ids: list[int]
    other_campaign_id: int | None = None
    agents: dict[str, str] = field(default_factory=dict)  # username -> endpoint
    task: asyncio.Task[None] | None = None  # the engine's run()

    # ---- reading the database ------------------------------------------------------------

    def attempts(self, contact_id: int | None = None) -> list[Any]:
        stmt = select(Attempt).order_by(Attempt.id)
        if contact_id is not None:
            stmt = stmt.where(Attempt.contact_id == contact_id)
        with self.db.connect() as conn:
            return list(conn.execute(stmt))

    def contact(self, contact_id: int) -> Any:
        with self.db.connect() as conn:
            return conn.execute(select(Contact).where(Contact.id == contact_id)).one()

    def agent_row(self, username: str) -> Any:
        with self.db.connect() as conn:
            return conn.execute(select(Agent).where(Agent.username == username)).one()

    def state_log(self, username: str) -> list[Any]:
        with self.db.connect() as conn:
            aid = conn.scalar(select(Agent.id).where(Agent.username == username))
            return list(conn.execute(select(AgentStateLog).where(AgentStateLog.agent_id == aid)
                                     .order_by(AgentStateLog.id)))

    def emulator_call(self, number: str) -> CallRecord:
        found = [c for c in self.pbx.ami.calls if number in c.dial_string]
        assert len(found) == 1, f"expected one call to {number}, emulator has {found}"
        return found[0]

    def agent_state(self, username: str) -> AgentState | None:
        a = self.engine.board.agents.get(username)
        return None if a is None else a.state

    def dump(self) -> str:
        with self.db.connect() as conn:
            contacts = [tuple(r) for r in conn.execute(
                select(Contact.id, Contact.phone1, Contact.state, Contact.due_at,
                       Contact.callback_agent, Contact.state_reason))]
        attempts = [(a.id, a.contact_id, a.number, a.outcome, a.call_state, a.agent,
                     a.disposition) for a in self.attempts()]
        agents = {u: (a.state.value, a.pause_code, a.call_id)
                  for u, a in self.engine.board.agents.items()}
        calls = {c.call_id: c.state.value for c in self.engine.calls.values()}
        return (f"\n contacts {contacts}\n attempts {attempts}\n agents {agents}\n"
                f" calls {calls}\n pbx commands {[(s.command, s.arg) for s in self.tel.seen]}")

    def check_outbox(self) -> None:
        """Every attempt that has ended (and is not awaiting a late hang-up) was reported to
        the CRM exactly once with `attempt.finished`."""
        following = {c.attempt_id for c in self.engine.calls.values()}
        with self.db.connect() as conn:
            events = [r.attempt_id for r in conn.execute(
                select(WebhookOutbox.attempt_id).where(WebhookOutbox.event == "attempt.finished"))]
        for a in self.attempts():
            if a.outcome is None or a.id in following:
                continue
            n = events.count(a.id)
            assert n == 1, f"{n} attempt.finished events for attempt {a.id} ({a.outcome}):" \
                f"{self.dump()}"

    async def until(self, check: Callable[[], bool], what: str, wait_s: float = WAIT_S,
                    poll_s: float = 0.002) -> None:
        deadline = time.monotonic() + wait_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:{self.dump()}")
            await asyncio.sleep(poll_s)

    async def virtual_sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)

    def live_call(self, number: str) -> Any:
        for c in self.engine.calls.values():
            if c.number == number:
                return c
        return None

    def outcome(self, number: str) -> str | None:
        rows = [a for a in self.attempts() if a.number == number]
        return rows[-1].outcome if rows else None


@contextlib.asynccontextmanager
async def rig(
    db: Engine,
    numbers: Sequence[str],
    *,
    pop: Population | None = None,
    settings: Mapping[str, Any] | None = None,
    dial_mode: str = "progressive",
    budget: int | None = None,
    pacer: Pacer | None = None,
    agents: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    assignments: Sequence[tuple[str, str]] = (),
    groups: Sequence[str] = (GROUP,),
    other_campaign_groups: Sequence[str] | None = None,
    refuse: frozenset[str] = frozenset(),
    faults: Mapping[str, Exception] | None = None,
    connect_limit_s: float | None = None,
    scale: float = SCALE,
) -> AsyncIterator[Rig]:
    """A running campaign with `numbers` as contacts, agents, the emulator and the engine.

    `agents` maps username -> (endpoint, groups); by default alice (PJSIP/agent101) and bob
    (PJSIP/agent102) in `GROUP`. `settings` are campaign columns (amd, abandon_message…).
    `budget`: use a `BudgetPacer` placing that many calls at once; None: the real pacer of
    `dial_mode` (or `pacer`, if given). `other_campaign_groups`: also run a second campaign
    (no contacts) for agents of those groups.
    """
    clock = ScaledClock(scale, START)
    now = clock.now()
    cid = make_campaign(db, now, dial_mode=dial_mode, agent_groups=list(groups))
    if settings:
        with write_transaction(db) as conn:
            conn.execute(update(Campaign).where(Campaign.id == cid).values(**settings))
    agents = agents if agents is not None else {
        "alice": ("PJSIP/agent101", [GROUP]), "bob": ("PJSIP/agent102", [GROUP])}
    with write_transaction(db) as conn:
        for username, (endpoint, agent_groups) in agents.items():
            create_agent(conn, username, endpoint, groups=agent_groups)
        for kind, value in assignments:
            assign_campaign(conn, cid, kind, value)
    ids = add_contacts(db, cid, [{"phone1": n} for n in numbers], now)
    set_campaign_state(db, cid, CampaignState.RUNNING, now)
    other = None
    if other_campaign_groups is not None:
        other = make_campaign(db, now, dial_mode="progressive",
                              agent_groups=list(other_campaign_groups))
        set_campaign_state(db, other, CampaignState.RUNNING, now)

    def pacer_factory(mode: str, target: float, window_s: float) -> Pacer:
        if pacer is not None:
            return pacer
        if budget is None:
            return Pacer(mode=mode, target_abandon=target, window_s=window_s)
        return BudgetPacer(budget)

    async with (
        run_pbx(ami_port=0, population=pop or population(), time_scale=scale) as pbx,
        RecordingAmi(db, clock, pbx.ami_port, refuse, faults) as tel,
    ):
        extra: dict[str, Any] = {}
        if connect_limit_s is not None:
            extra["connect_limit_s"] = connect_limit_s
        engine = Dialer(db, {"pbx": tel}, {"pbx": TRUNK}, node_id="test-node", clock=clock,
                        tick_s=1.0, pacer_factory=pacer_factory, **extra)
        r = Rig(db, engine, pbx, tel, clock, cid, ids, other,
                {u: e for u, (e, _) in agents.items()})
        async with asyncio.TaskGroup() as tg:
            r.task = tg.create_task(engine.run(), name="engine")
            try:
                await r.until(lambda: cid in engine.campaigns and (
                    other is None or other in engine.campaigns), "the campaigns to load")
                yield r
                r.check_outbox()
            finally:
                engine.stop()


def log_intervals(rows: Sequence[Any], state: str) -> list[float]:
    """Closed intervals (virtual seconds) the agent spent in `state`."""
    return [(r.ended_at - r.started_at).total_seconds()
            for r in rows if r.state == state and r.ended_at is not None]


# ---- live answers ------------------------------------------------------------------------------


async def test_live_answer_is_bridged_to_the_ready_agent_and_talk_and_wrap_are_logged(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A], pop=population(talk_s=20.0), budget=1) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL, "alice on call")
        (a,) = r.attempts()
        assert a.agent == "alice" and a.outcome is None
        assert r.contact(r.contact_ids[0]).state == "connected"
        assert r.agent_row("alice").state == "on_call"
        assert r.agent_row("alice").attempt_id == a.id
        await r.until(lambda: r.attempts()[0].connected_at is not None, "the bridge")
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP,
                      "alice in wrap-up after the customer hung up")
        wrap_seen = r.clock.monotonic()
        (a,) = r.attempts()
        assert a.outcome == "human" and a.connected_at is not None
        assert "PJSIP/agent101" in " ".join(r.emulator_call(HUMAN_A).bridged_to)
        assert r.agent_row("alice").state == "wrap_up"
        await r.virtual_sleep(5.0)  # a 5 s wrap-up
        disposed = r.clock.monotonic()
        result = r.engine.dispose("alice", WrapUp(code="NI", notes="not today"))
        assert result.contact_state.value == "connected"
        assert r.agent_state("alice") is AgentState.READY
        assert r.agent_row("alice").state == "ready"
        a = r.attempts()[0]
        assert a.disposition == "NI" and a.wrapup_ended_at is not None
        log = r.state_log("alice")
        (talk,) = log_intervals(log, "on_call")
        (wrap,) = log_intervals(log, "wrap_up")
        # The customer talks 20 s after the bridge (the bridge itself takes a moment).
        assert 18.0 <= talk <= 35.0, talk
        # The wrap-up runs from the end of the talk to the disposition: at least the 5 s the
        # test waited. Its length is not bounded by wall-clock guesses (at 50 virtual
        # seconds a wall second, a SQLite lock wait on a loaded machine is seconds of it):
        # the intervals must join up exactly instead.
        assert wrap >= 5.0 and disposed - wrap_seen >= 5.0, (wrap, disposed - wrap_seen)
        talk_row = next(x for x in log if x.state == "on_call")
        wrap_row = next(x for x in log if x.state == "wrap_up")
        assert wrap_row.started_at == talk_row.ended_at
        assert abs((wrap_row.ended_at - a.wrapup_ended_at).total_seconds()) < 1.0
        assert [x.attempt_id for x in log if x.state in ("on_call", "wrap_up")] == [a.id, a.id]


async def test_live_answer_without_a_ready_agent_gets_the_message_after_the_connect_limit(
    sqlite_engine: Engine,
) -> None:
    settings = {"abandon_message": "custom/sorry-we-missed-you"}
    async with rig(sqlite_engine, [HUMAN_A], settings=settings, budget=1) as r:
        r.engine.login("alice", r.campaign_id)  # logged in, but not ready
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the abandoned call to end")
        (a,) = r.attempts()
        assert a.outcome == "abandoned" and a.agent is None
        assert r.engine.campaigns[r.campaign_id].abandoned == 1
        assert r.engine.campaigns[r.campaign_id].live == 1
        (play,) = r.tel.commands("play_and_hangup")
        assert play.arg == "custom/sorry-we-missed-you"
        assert "custom/sorry-we-missed-you" in r.emulator_call(HUMAN_A).played
        # The message came after the 2 s connect limit, not before (nor much later).
        assert a.answered_at is not None
        waited = (START + timedelta(seconds=play.mono) - a.answered_at).total_seconds()
        assert 2.0 <= waited <= 8.0, waited
        assert r.agent_state("alice") is AgentState.NOT_READY
        assert r.contact(r.contact_ids[0]).state == "not_connected"  # the strategy retries


async def test_agent_ready_within_the_connect_limit_takes_the_waiting_call(
    sqlite_engine: Engine,
) -> None:
    # A slower clock (40 ms of wall time for the 2 s) leaves the poll below room to act.
    async with rig(sqlite_engine, [HUMAN_A], budget=1, scale=0.02) as r:
        r.engine.login("alice", r.campaign_id)
        await r.until(lambda: (c := r.live_call(HUMAN_A)) is not None
                      and c.state is CallState.WAITING, "the live answer to wait", poll_s=0.0005)
        r.engine.ready("alice")
        assert r.agent_state("alice") is AgentState.ON_CALL
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "the call to end")
        (a,) = r.attempts()
        assert a.outcome == "human" and a.agent == "alice" and a.connected_at is not None
        assert r.tel.commands("play_and_hangup") == []
        assert r.engine.campaigns[r.campaign_id].abandoned == 0


async def test_waiting_calls_go_to_the_next_ready_agent_longest_waiting_first(
    sqlite_engine: Engine,
) -> None:
    # The order, not the limit, is under test: a long limit lets both calls wait.
    async with rig(sqlite_engine, [HUMAN_B, HUMAN_A], budget=2, connect_limit_s=60.0) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.login("bob", r.campaign_id)
        await r.until(lambda: sum(c.state is CallState.WAITING
                                  for c in r.engine.calls.values()) == 2, "two waiting calls")
        r.engine.ready("bob")
        assert r.engine.board.agents["bob"].call_id == r.live_call(HUMAN_A).call_id, \
            "the call answered first (HUMAN_A rings 1 s less) goes first"
        r.engine.ready("alice")
        assert r.engine.board.agents["alice"].call_id == r.live_call(HUMAN_B).call_id
        await r.until(lambda: all(a.outcome for a in r.attempts()), "both calls to end")
        assert {a.number: a.agent for a in r.attempts()} == {HUMAN_A: "bob", HUMAN_B: "alice"}


async def test_a_failed_bridge_gives_the_customer_the_message_and_frees_the_agent(
    sqlite_engine: Engine,
) -> None:
    """The agent's phone cannot be reached: the person who answered is a live answer that
    got no agent, so they hear the information message (not a bare hang-up), the call counts
    as abandoned, and the agent is not left on a phantom call."""
    settings = {"abandon_message": "custom/sorry"}
    async with rig(sqlite_engine, [HUMAN_A], budget=1, settings=settings,
                   pop=population(talk_s=30.0),
                   faults={"connect_to_agent": TelephonyError("agent101 unreachable")}) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end")
        assert r.outcome(HUMAN_A) == "abandoned"
        assert [s.arg for s in r.tel.commands("play_and_hangup")] == ["custom/sorry"]
        assert r.agent_state("alice") in (AgentState.READY, AgentState.NOT_READY)
        assert r.engine.campaigns[r.campaign_id].abandoned == 1
        c = r.contact(r.contact_ids[0])
        assert c.state == "not_connected" and c.due_at is not None


AGENTLESS = {"dial_mode": "agentless", "ivr_flow": "reminder"}


async def test_agentless_live_answer_is_written_connected_then_handed_to_its_flow(
    sqlite_engine: Engine,
) -> None:
    """No agents at all: the person is connected to the campaign's IVR flow at once (written
    before the hand-off), never abandoned, and the attempt ends `human`."""
    async with rig(sqlite_engine, [HUMAN_A], budget=1, settings=AGENTLESS, agents={},
                   pop=population(talk_s=30.0)) as r:
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end")
        [handoff] = r.tel.commands("send_to_ivr")
        assert handoff.arg == "reminder"
        assert (handoff.attempt.call_state, handoff.attempt.connected_at is not None) == \
            ("ivr", True), r.dump()
        assert handoff.contact.state == "connected"
        assert r.outcome(HUMAN_A) == "human"
        assert r.engine.campaigns[r.campaign_id].abandoned == 0
        assert r.tel.commands("play_and_hangup") == []
        assert r.contact(r.contact_ids[0]).state == "connected"


async def test_agentless_hand_off_refused_by_the_pbx_is_an_abandon_with_the_message(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A], budget=1, settings=AGENTLESS, agents={},
                   pop=population(talk_s=30.0),
                   faults={"send_to_ivr": TelephonyError("IVR app not active")}) as r:
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end")
        assert r.outcome(HUMAN_A) == "abandoned"
        assert len(r.tel.commands("play_and_hangup")) == 1
        assert r.engine.campaigns[r.campaign_id].abandoned == 1
        [attempt] = r.attempts()
        assert attempt.connected_at is None, "nobody was connected"
        c = r.contact(r.contact_ids[0])
        assert c.state == "not_connected" and c.due_at is not None


async def test_agentless_call_gone_before_the_flow_took_it_is_an_abandon(
    sqlite_engine: Engine,
) -> None:
    """The PBX no longer knows the call when it is handed over (the person hung up at once):
    nothing spoke to them, so it is not a reached contact."""
    async with rig(sqlite_engine, [HUMAN_A], budget=1, settings=AGENTLESS, agents={},
                   pop=population(talk_s=5.0),
                   faults={"send_to_ivr": UnknownCall("gone")}) as r:
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end")
        assert r.outcome(HUMAN_A) == "abandoned"
        assert r.engine.campaigns[r.campaign_id].abandoned == 1
        [attempt] = r.attempts()
        assert attempt.connected_at is None
        assert r.contact(r.contact_ids[0]).state == "not_connected"


async def test_every_observation_reaches_the_pacer(sqlite_engine: Engine) -> None:
    busy = "+12125550017"
    pacer = RecordingPacer(4)
    async with rig(sqlite_engine, [HUMAN_A, HUMAN_B, busy, NO_ANSWER], pacer=pacer,
                   pop=population(Override(r"0017$", CalleeKind.BUSY, ring_s=2.0),
                                  talk_s=15.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")  # takes HUMAN_A; HUMAN_B (1 s later) finds nobody
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "alice's wrap-up")
        await r.virtual_sleep(3.0)
        r.engine.dispose("alice", WrapUp(code="NI"), then_ready=False)
        await r.until(lambda: all(a.outcome for a in r.attempts()) and len(r.attempts()) == 4,
                      "all four calls to end")
        rings = sorted(pacer.calls, key=lambda c: c[1])
        assert [o for _, o in rings] == ["busy", "human", "human", "no_answer"], rings
        ring = dict((o, t) for t, o in rings)
        # From the dial decision: the emulator's ring plus the scaled-up cost of placing the
        # call (a few ms of wall time are virtual seconds here).
        assert 1.5 <= ring["busy"] <= 15.0 and 25.0 <= ring["no_answer"] <= 45.0, rings
        assert ring["busy"] < ring["human"] < ring["no_answer"]
        assert pacer.abandons == 1
        # Answer to bridge: at this scale the wall-clock cost of the bridge is seconds.
        assert len(pacer.connects) == 1 and 0.0 <= pacer.connects[0] <= 8.0, pacer.connects
        (handle,) = pacer.handles
        assert 16.0 <= handle <= 30.0, f"{handle}: talk (15 s) plus wrap-up (3 s)"


# ---- answering machines ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["hangup", "message", "agent"])
async def test_machine_is_handled_per_amd_action(sqlite_engine: Engine, action: str) -> None:
    settings = {"amd": True, "amd_action": action, "machine_message": "custom/leave-a-message"}
    async with rig(sqlite_engine, [MACHINE], settings=settings, budget=1) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.outcome(MACHINE) is not None, "the machine call to end")
        (a,) = r.attempts()
        record = r.emulator_call(MACHINE)
        if action == "agent":
            # A machine is a machine even when an agent hears it (the attempts must match
            # what the PBX did); the agent still wraps it up.
            assert a.outcome == "machine", a.outcome
            assert a.agent == "alice" and a.connected_at is not None
            assert "PJSIP/agent101" in " ".join(record.bridged_to)
            assert r.agent_state("alice") is AgentState.WRAP_UP
        else:
            assert a.outcome == "machine" and a.agent is None
            assert record.bridged_to == []
            assert r.agent_state("alice") is AgentState.READY, "the agent was never used"
            played = ["custom/leave-a-message"] if action == "message" else []
            assert [p for p in record.played if p.startswith("custom/")] == played
            assert r.engine.campaigns[r.campaign_id].abandoned == 0
            # Written as a machine before the message or the hang-up was asked for.
            (end,) = r.tel.commands("play_and_hangup" if action == "message" else "hangup")
            assert end.attempt.call_state == "machine"


async def test_amd_human_verdict_goes_to_an_agent(sqlite_engine: Engine) -> None:
    settings = {"amd": True, "amd_action": "hangup"}
    async with rig(sqlite_engine, [HUMAN_A], settings=settings, budget=1,
                   pop=population(talk_s=20.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end")
        (a,) = r.attempts()
        assert a.outcome == "human" and a.agent == "alice" and a.connected_at is not None
        assert r.agent_state("alice") is AgentState.WRAP_UP


# ---- routing and logging in --------------------------------------------------------------------


async def test_the_longest_idle_ready_agent_gets_the_call(sqlite_engine: Engine) -> None:
    async with rig(sqlite_engine, [HUMAN_A], budget=1) as r:
        # alice logs in first (first on the board), but bob has been ready longer.
        r.engine.login("alice", r.campaign_id)
        r.engine.login("bob", r.campaign_id)
        r.engine.ready("bob")
        await r.virtual_sleep(0.5)
        r.engine.ready("alice")
        await r.until(lambda: any(a.agent is not None for a in r.attempts()), "a bridge")
        assert r.attempts()[0].agent == "bob"
        assert r.agent_state("alice") is AgentState.READY


async def test_agents_of_another_campaign_are_not_used(sqlite_engine: Engine) -> None:
    agents = {"alice": ("PJSIP/agent101", [GROUP]), "olga": ("PJSIP/agent109", ["other"])}
    async with rig(sqlite_engine, [HUMAN_A], budget=1, agents=agents,
                   other_campaign_groups=["other"]) as r:
        assert r.other_campaign_id is not None
        r.engine.login("olga", r.other_campaign_id)
        r.engine.ready("olga")  # ready, but for the other campaign
        r.engine.login("alice", r.campaign_id)  # ours, but paused
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end")
        assert r.attempts()[0].outcome == "abandoned"
        assert r.agent_state("olga") is AgentState.READY


async def test_login_needs_an_assignment_by_group_position_or_user(sqlite_engine: Engine) -> None:
    agents = {
        "alice": ("PJSIP/agent101", [GROUP]),  # by group
        "pos": ("PJSIP/agent105", ["elsewhere"]),  # by position (endpoint)
        "carol": ("PJSIP/agent106", []),  # by user name
        "eve": ("PJSIP/agent107", ["elsewhere"]),  # not assigned
    }
    assignments = [("position", "PJSIP/agent105"), ("user", "carol")]
    async with rig(sqlite_engine, [], agents=agents, assignments=assignments) as r:
        for username in ("alice", "pos", "carol"):
            assert r.engine.login(username, r.campaign_id).campaign_id == r.campaign_id
            r.engine.ready(username)
            assert r.agent_row(username).state == "ready"
        with pytest.raises(AgentError, match="not assigned"):
            r.engine.login("eve", r.campaign_id)
        assert r.agent_row("eve").state == "logged_out"
        with pytest.raises(AgentError):
            r.engine.ready("eve")
        with pytest.raises(AgentError, match="no such agent"):
            r.engine.login("mallory", r.campaign_id)


async def test_login_to_unassigned_campaign_is_refused_even_before_it_is_loaded(
    sqlite_engine: Engine,
) -> None:
    agents = {"eve": ("PJSIP/agent107", ["elsewhere"])}
    async with rig(sqlite_engine, [], agents=agents) as r:
        with write_transaction(r.db) as conn:
            conn.execute(update(Campaign).where(Campaign.id == r.campaign_id)
                         .values(state="paused"))
        # A paused campaign is not loaded by the engine, but eve is still not assigned to it.
        r.engine.campaigns.pop(r.campaign_id, None)
        with pytest.raises(AgentError):
            r.engine.login("eve", r.campaign_id)
        with pytest.raises(AgentError):
            r.engine.login("eve", 987654)  # no such campaign


async def test_switching_campaign_is_refused_while_on_a_call_or_in_wrap_up(
    sqlite_engine: Engine,
) -> None:
    """A busy agent counted by another campaign's pacer would make it over-dial; and after
    the call they would land back in the first campaign anyway."""
    agents = {"alice": ("PJSIP/agent101", [GROUP, "other"])}
    async with rig(sqlite_engine, [HUMAN_A], budget=1, agents=agents, pop=population(talk_s=20.0),
                   other_campaign_groups=["other"]) as r:
        assert r.other_campaign_id is not None
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL, "alice on call")
        with pytest.raises(AgentError):
            r.engine.login("alice", r.other_campaign_id)
        assert r.engine.board.agents["alice"].campaign_id == r.campaign_id
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "wrap-up")
        with pytest.raises(AgentError):
            r.engine.login("alice", r.other_campaign_id)
        r.engine.dispose("alice", WrapUp(code="NI"), then_ready=False)
        r.engine.login("alice", r.other_campaign_id)  # free to switch now
        assert r.engine.board.agents["alice"].campaign_id == r.other_campaign_id


async def test_an_agent_logged_in_on_one_node_cannot_log_in_on_another(
    sqlite_engine: Engine,
) -> None:
    """Two nodes routing calls to one agent's phone would hand them two customers at once."""
    clock = ScaledClock(SCALE, START)
    cid = make_campaign(sqlite_engine, START, agent_groups=[GROUP])
    with write_transaction(sqlite_engine) as conn:
        create_agent(conn, "alice", "PJSIP/agent101", groups=[GROUP])

    def node(name: str) -> Dialer:
        backend = AmiTelephony("127.0.0.1", 9, "dialer", "dialer")  # never connected
        return Dialer(sqlite_engine, {"pbx": backend}, {"pbx": TRUNK}, node_id=name,
                      clock=clock)

    a, b = node("node-a"), node("node-b")
    heartbeat(sqlite_engine, "node-a", clock.now(), {}, starting=True)  # node-a is alive
    a.login("alice", cid)
    a.ready("alice")
    with pytest.raises(AgentError):
        b.login("alice", cid)
    assert "alice" not in b.board.agents or b.board.agents["alice"].state in (
        AgentState.LOGGED_OUT,)
    with sqlite_engine.connect() as conn:
        row = conn.execute(select(Agent.state, Agent.node_id)
                           .where(Agent.username == "alice")).one()
    assert tuple(row) == ("ready", "node-a")
    a.logout("alice")
    b.login("alice", cid)  # free to move once logged out


async def test_a_pause_code_too_long_to_store_is_refused_cleanly(engine: Engine) -> None:
    """On PostgreSQL a pause code longer than the column would fail the write after the
    board had moved: the agent would be paused in memory and ready in the database."""
    clock = ScaledClock(SCALE, START)
    cid = make_campaign(engine, START, agent_groups=[GROUP])
    with write_transaction(engine) as conn:
        create_agent(conn, "alice", "PJSIP/agent101", groups=[GROUP])
    backend = AmiTelephony("127.0.0.1", 9, "dialer", "dialer")  # never connected
    dialer = Dialer(engine, {"pbx": backend}, {"pbx": TRUNK}, node_id="n", clock=clock)
    dialer.login("alice", cid)
    dialer.ready("alice")
    with pytest.raises(AgentError, match="pause"):
        dialer.pause("alice", "x" * 80)
    assert dialer.board.agents["alice"].state is AgentState.READY
    with engine.connect() as conn:
        assert conn.scalar(select(Agent.state).where(Agent.username == "alice")) == "ready"
    dialer.pause("alice", "lunch")
    assert dialer.board.agents["alice"].pause_code == "lunch"


# ---- preview mode and callbacks ----------------------------------------------------------------


async def test_preview_leases_one_contact_and_dials_it_for_that_agent_only(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A, HUMAN_B], dial_mode="preview") as r:
        for u in ("bob", "alice"):  # bob is ready longer: the general rule would pick him
            r.engine.login(u, r.campaign_id)
            r.engine.ready(u)
        await r.virtual_sleep(3.0)
        assert r.attempts() == [], "preview mode dials nothing by itself"
        lease = await r.engine.preview_next("alice")
        assert lease is not None and lease.number == HUMAN_A
        c = r.contact(lease.contact_id)
        assert c.state == "sent_to_dialer" and c.leased_by == "test-node"
        assert await r.engine.preview_next("alice") == lease, "the same contact until dialed"
        assert r.engine.board.counts(r.campaign_id, r.clock.monotonic())[0] == 1, \
            "a previewing agent is not counted as ready for other calls"
        call_id = await r.engine.preview_dial("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL, "alice on call")
        (a,) = r.attempts()
        assert a.correlation_id == call_id and a.agent == "alice" and a.number == HUMAN_A
        assert r.agent_state("bob") is AgentState.READY
        # bob previews the other contact and hands it back.
        other = await r.engine.preview_next("bob")
        assert other is not None and other.number == HUMAN_B
        await r.engine.preview_skip("bob")
        c = r.contact(other.contact_id)
        assert c.state == "pending" and c.leased_by is None
        assert r.engine.board.agents["bob"].preview is None
        assert len(r.attempts()) == 1


async def test_preview_dial_twice_is_refused(sqlite_engine: Engine) -> None:
    async with rig(sqlite_engine, [HUMAN_A], dial_mode="preview",
                   pop=population(ring_s=10.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        assert await r.engine.preview_next("alice") is not None
        await r.engine.preview_dial("alice")
        with pytest.raises(AgentError):
            await r.engine.preview_dial("alice")  # a double click
        assert len(r.attempts()) == 1
        assert len([c for c in r.pbx.ami.calls if HUMAN_A in c.dial_string]) <= 1


async def test_pause_or_logout_while_previewing_hands_the_contact_back(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A, HUMAN_B], dial_mode="preview",
                   pop=population(ring_s=10.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        first = await r.engine.preview_next("alice")
        assert first is not None
        r.engine.pause("alice")
        assert r.contact(first.contact_id).state == "pending"
        r.engine.ready("alice")
        second = await r.engine.preview_next("alice")
        assert second is not None
        r.engine.logout("alice")
        assert r.contact(second.contact_id).state == "pending"
        # While a call is being placed for them, they can do neither.
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        assert await r.engine.preview_next("alice") is not None
        await r.engine.preview_dial("alice")
        for leave in (r.engine.pause, r.engine.logout):
            with pytest.raises(AgentError):
                leave("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL, "the bridge")


async def test_a_preview_whose_lease_expired_is_not_dialed_twice(sqlite_engine: Engine) -> None:
    """alice looks at a contact longer than the lease lasts; the contact goes back to the pool
    and bob previews it. It must not then be dialed for both of them."""
    async with rig(sqlite_engine, [HUMAN_A], dial_mode="preview", settings={"lease_ttl_s": 20},
                   pop=population(ring_s=10.0)) as r:
        for u in ("alice", "bob"):
            r.engine.login(u, r.campaign_id)
            r.engine.ready(u)
        mine = await r.engine.preview_next("alice")
        assert mine is not None
        await r.virtual_sleep(30.0)
        theirs = await r.engine.preview_next("bob")
        for u in ("bob", "alice"):
            with contextlib.suppress(AgentError):
                await r.engine.preview_dial(u)
        dialed = [a for a in r.attempts() if a.contact_id == mine.contact_id]
        assert len(dialed) <= 1, (
            f"contact {mine.contact_id} dialed {len(dialed)} times at once "
            f"(bob previewed {theirs and theirs.contact_id})")


async def test_a_refused_preview_dial_frees_the_agent_and_the_contact(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A], dial_mode="preview",
                   refuse=frozenset({HUMAN_A})) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        lease = await r.engine.preview_next("alice")
        assert lease is not None
        with contextlib.suppress(AgentError, TelephonyError):
            await r.engine.preview_dial("alice")
        assert r.attempts() == []
        c = r.contact(lease.contact_id)
        assert c.state == "pending" and c.leased_by is None
        alice = r.engine.board.agents["alice"]
        assert alice.preview is None and alice.state is AgentState.READY
        r.engine.pause("alice")  # not stuck as "a call is being placed"
        r.engine.ready("alice")
        assert await r.engine.preview_next("alice") is not None


async def test_private_callback_is_dialed_for_its_agent_only(sqlite_engine: Engine) -> None:
    async with rig(sqlite_engine, [HUMAN_A], pop=population(talk_s=15.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")  # progressive: one ready agent, one call
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "the first call")
        due = r.clock.now() + timedelta(seconds=30)
        result = r.engine.dispose("alice", WrapUp(code="CBP", callback_at=due),
                                  then_ready=False)
        assert result.callback_agent == "alice"
        c = r.contact(r.contact_ids[0])
        assert c.state == "callback_scheduled" and c.callback_agent == "alice"
        # bob is ready and idle while the callback falls due: it is not his.
        r.engine.login("bob", r.campaign_id)
        r.engine.ready("bob")
        await r.virtual_sleep(45.0)
        assert len(r.attempts()) == 1, "a private callback went to the general pool"
        assert r.agent_state("bob") is AgentState.READY
        r.engine.ready("alice")
        await r.until(lambda: len(r.attempts()) == 2 and r.attempts()[1].agent is not None,
                      "the callback to be dialed and bridged")
        assert r.attempts()[1].agent == "alice"
        assert r.agent_state("bob") is AgentState.READY


async def test_in_preview_mode_a_private_callback_is_previewed_not_dialed_blind(
    sqlite_engine: Engine,
) -> None:
    """Preview mode: the agent sees every contact before it is dialed, their own callbacks
    included; `preview_next` offers the due private callback first."""
    async with rig(sqlite_engine, [HUMAN_A, HUMAN_B], dial_mode="preview",
                   pop=population(talk_s=15.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        first = await r.engine.preview_next("alice")
        assert first is not None and first.number == HUMAN_A
        await r.engine.preview_dial("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "the first call")
        due = r.clock.now() + timedelta(seconds=10)
        r.engine.dispose("alice", WrapUp(code="CBP", callback_at=due))
        await r.virtual_sleep(20.0)  # due now, alice ready
        assert len(r.attempts()) == 1, "dialed without being previewed"
        again = await r.engine.preview_next("alice")
        assert again is not None and again.contact_id == first.contact_id, \
            "the due private callback comes before the rest of the list"


async def test_public_callback_goes_to_whoever_is_ready(sqlite_engine: Engine) -> None:
    async with rig(sqlite_engine, [HUMAN_A], pop=population(talk_s=15.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "the first call")
        due = r.clock.now() + timedelta(seconds=20)
        r.engine.dispose("alice", WrapUp(code="CB", callback_at=due), then_ready=False)
        c = r.contact(r.contact_ids[0])
        assert c.state == "callback_scheduled" and c.callback_agent is None
        r.engine.login("bob", r.campaign_id)
        r.engine.ready("bob")
        await r.virtual_sleep(10.0)
        assert len(r.attempts()) == 1, "not before it is due"
        await r.until(lambda: len(r.attempts()) == 2 and r.attempts()[1].agent is not None,
                      "the callback to reach bob")
        assert r.attempts()[1].agent == "bob"
        assert r.attempts()[1].placed_at >= due


# ---- wrap-up without a disposition -------------------------------------------------------------


async def test_wrap_up_timeout_records_abandoned_by_agent_and_reschedules(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A], settings={"wrapup_timeout_s": 10},
                   pop=population(talk_s=15.0), budget=1) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "wrap-up")
        await r.until(lambda: r.agent_state("alice") is AgentState.NOT_READY,
                      "the wrap-up to time out")
        (a,) = r.attempts()
        assert a.outcome == "abandoned_by_agent" and a.disposition is None
        assert a.wrapup_ended_at is not None and a.ended_at is not None
        wrap_s = (a.wrapup_ended_at - a.ended_at).total_seconds()
        assert 10.0 <= wrap_s <= 20.0, f"timed out after {wrap_s} s of wrap-up, not 10"
        c = r.contact(r.contact_ids[0])
        assert c.state == "callback_scheduled" and c.callback_agent is None
        assert c.due_at is not None and c.due_at > r.clock.now()
        assert r.agent_row("alice").state == "not_ready"


async def test_logout_refused_on_a_call_and_during_wrap_up_abandons_by_agent(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A], pop=population(talk_s=10.0), budget=1) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL, "alice on call")
        with pytest.raises(AgentError, match="on a call"):
            r.engine.logout("alice")
        assert r.agent_state("alice") is AgentState.ON_CALL
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "wrap-up")
        r.engine.logout("alice")
        assert r.agent_state("alice") is AgentState.LOGGED_OUT
        assert r.agent_row("alice").state == "logged_out"
        (a,) = r.attempts()
        assert a.outcome == "abandoned_by_agent" and a.disposition is None
        c = r.contact(r.contact_ids[0])
        assert c.state == "callback_scheduled" and c.callback_agent is None


async def test_ready_or_pause_during_wrap_up_is_refused(sqlite_engine: Engine) -> None:
    async with rig(sqlite_engine, [HUMAN_A], pop=population(talk_s=15.0), budget=1) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.WRAP_UP, "wrap-up")
        for leave in (r.engine.ready, r.engine.pause):
            with pytest.raises(AgentError):
                leave("alice")
            assert r.agent_state("alice") is AgentState.WRAP_UP
        # The call is still there to wrap up.
        r.engine.dispose("alice", WrapUp(code="NI"))
        assert r.attempts()[0].disposition == "NI"


async def test_restart_after_a_call_with_an_agent_ended_leaves_no_contact_connected(
    sqlite_engine: Engine,
) -> None:
    """The service stops while an agent talks; the call ends while it is down. After the
    restart the contact must not stay `connected` with no disposition for ever: the attempt
    is closed without one (`abandoned_by_agent`) and the contact comes back."""
    async with rig(sqlite_engine, [HUMAN_A], pop=population(talk_s=10.0), budget=1) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL, "alice on call")
        await r.until(lambda: r.attempts()[0].connected_at is not None, "the bridge")
        r.engine.stop()
        assert r.task is not None
        await r.task
        await r.until(lambda: r.emulator_call(HUMAN_A).ended, "the call to end meanwhile")
        again = Dialer(r.db, {"pbx": r.tel}, {"pbx": TRUNK}, node_id="test-node",
                       clock=r.clock, tick_s=1.0, pacer_factory=lambda *_: BudgetPacer(0))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(again.run())
            await again.started()
            await r.virtual_sleep(3.0)
            again.stop()
        (a,) = r.attempts()
        c = r.contact(r.contact_ids[0])
        assert r.agent_row("alice").state == "not_ready"
        assert a.outcome is not None
        assert not (c.state == "connected" and a.disposition is None), \
            f"contact stranded connected without a disposition: {a.outcome=} {c.state_reason=}"
        assert c.state == "callback_scheduled" and c.due_at is not None


# ---- dangling calls ----------------------------------------------------------------------------


async def test_call_without_result_becomes_dangling_and_a_late_hangup_reconciles_it(
    sqlite_engine: Engine,
) -> None:
    # The engine rings at least 15 s; no result within 4 s makes the call dangling.
    settings = {"dangling_after_s": 4, "ring_timeout_s": 15}
    async with rig(sqlite_engine, [NO_ANSWER], settings=settings, budget=1) as r:
        await r.until(lambda: r.tel.commands("hangup") != [], "the dangling call's hang-up")
        (hang,) = r.tel.commands("hangup")
        (orig,) = r.tel.commands("originate")
        # At the engine's own hang-up the attempt was already written off as dangling.
        assert hang.attempt.outcome == "dangling" and hang.attempt.call_state == "dangling"
        assert hang.contact.state == "dangling"
        assert 3.0 <= hang.mono - orig.mono <= 12.0, hang.mono - orig.mono
        await r.until(lambda: r.contact(r.contact_ids[0]).state != "dangling",
                      "the late HANGUP to reconcile the call")
        (a,) = r.attempts()
        # The phone was ringing unanswered when the engine hung it up.
        assert a.outcome == "no_answer" and a.call_state == "ended"
        c = r.contact(r.contact_ids[0])
        assert c.state == "not_connected" and c.due_at is not None and c.leased_by is None
        assert c.attempt_count == 1
        assert r.engine.calls == {}


async def test_dangling_call_that_never_ends_is_rescheduled_and_reported(
    sqlite_engine: Engine,
) -> None:
    # The PBX refuses our hang-up and the ring outlasts the test: no HANGUP ever comes.
    settings = {"dangling_after_s": 4, "ring_timeout_s": 600}
    async with rig(sqlite_engine, [NO_ANSWER], settings=settings, budget=1,
                   faults={"hangup": TelephonyError("Hangup refused")}) as r:
        await r.until(lambda: r.contact(r.contact_ids[0]).state == "not_connected",
                      "the strategy to reschedule the dangling contact")
        (a,) = r.attempts()
        assert a.outcome == "dangling"
        assert r.engine.calls == {}
        with r.db.connect() as conn:
            events = list(conn.scalars(select(WebhookOutbox.event)
                                       .where(WebhookOutbox.attempt_id == a.id)))
        assert events == ["attempt.finished"], "the CRM must hear of every finished attempt"


# ---- write before acting -----------------------------------------------------------------------


async def test_every_pbx_command_follows_a_committed_write(sqlite_engine: Engine) -> None:
    settings = {"abandon_message": "custom/sorry"}
    async with rig(sqlite_engine, [HUMAN_A, HUMAN_B], settings=settings, budget=2,
                   pop=population(talk_s=30.0)) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")  # takes HUMAN_A; HUMAN_B finds nobody and is abandoned
        await r.until(lambda: r.outcome(HUMAN_B) is not None, "the abandoned call to end")
        originates = r.tel.commands("originate")
        assert len(originates) == 2
        for o in originates:
            assert o.attempt is not None, f"originate {o.arg} before its attempt row"
            assert o.attempt.outcome is None and o.attempt.call_state == "dialing"
            assert o.contact.state == "sent_to_dialer" and o.contact.leased_by == "test-node"
        (bridge,) = r.tel.commands("connect_to_agent")
        assert bridge.arg == "PJSIP/agent101"
        assert bridge.attempt.number == HUMAN_A and bridge.attempt.agent == "alice"
        assert bridge.attempt.call_state == "bridging"
        assert bridge.contact.state == "connected"
        assert bridge.agents["alice"].state == "on_call"
        assert bridge.agents["alice"].attempt_id == bridge.attempt.id
        (play,) = r.tel.commands("play_and_hangup")
        assert play.attempt.number == HUMAN_B and play.attempt.call_state == "abandoning"


# ---- the PBX -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ring_timeout_s", "sent_s"), [(40, 40.0), (5, 15.0)])
async def test_originate_carries_the_campaigns_ring_timeout_amd_and_caller_id(
    sqlite_engine: Engine, ring_timeout_s: int, sent_s: float,
) -> None:
    settings = {"ring_timeout_s": ring_timeout_s, "amd": True, "caller_id": "+12125559999"}
    async with rig(sqlite_engine, [NO_ANSWER], settings=settings, budget=1) as r:
        await r.until(lambda: r.outcome(NO_ANSWER) is not None, "the unanswered call to end")
        (req,) = r.tel.requests
        assert req.ring_timeout_s == sent_s, "the engine rings at least 15 s"
        assert req.amd is True and req.caller_id == "+12125559999"
        assert req.endpoint == TRUNK.format(number=NO_ANSWER)
        assert r.outcome(NO_ANSWER) == "no_answer"
        (orig,) = r.tel.commands("originate")
        a = r.attempts()[0]
        assert a.ended_at is not None
        rang = (a.ended_at - START).total_seconds() - orig.mono
        assert sent_s - 1.0 <= rang <= sent_s + 8.0, rang


async def test_refused_originate_leaves_no_attempt_and_releases_the_contact(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A], budget=1, refuse=frozenset({HUMAN_A})) as r:
        await r.until(lambda: r.tel.commands("originate") != [], "the originate")
        await r.virtual_sleep(3.0)
        assert r.attempts() == []
        c = r.contact(r.contact_ids[0])
        assert c.state == "pending" and c.leased_by is None and c.lease_expires_at is None
        assert c.attempt_count == 0
        assert r.engine.calls == {}


async def test_no_dialing_while_the_pbx_link_is_down_and_dialing_resumes_after(
    sqlite_engine: Engine,
) -> None:
    async with rig(sqlite_engine, [HUMAN_A]) as r:
        r.engine.login("alice", r.campaign_id)
        created = r.contact(r.contact_ids[0]).updated_at
        r.pbx.ami.refuse_logins = True
        r.pbx.ami.drop_connections()
        await r.until(lambda: not r.tel.connected, "the link to drop")
        r.engine.ready("alice")  # progressive would dial now
        await r.virtual_sleep(10.0)
        assert r.tel.commands("originate") == [] and r.attempts() == []
        c = r.contact(r.contact_ids[0])
        assert c.state == "pending" and c.leased_by is None
        assert c.updated_at == created, "leased and handed back while no PBX could dial it"
        r.pbx.ami.refuse_logins = False
        await r.until(lambda: r.tel.connected, "the link to come back")
        await r.until(lambda: r.agent_state("alice") is AgentState.ON_CALL,
                      "the call placed after the link came back")
        assert r.attempts()[0].agent == "alice"


async def test_a_failing_pbx_command_for_one_call_does_not_stop_the_engine(
    sqlite_engine: Engine,
) -> None:
    # An unexpected error (not a TelephonyError) from the backend while bridging one call.
    async with rig(sqlite_engine, [HUMAN_A, HUMAN_B], pop=population(talk_s=15.0), budget=1,
                   faults={"connect_to_agent": ConnectionResetError("reset by peer")}) as r:
        r.engine.login("alice", r.campaign_id)
        r.engine.ready("alice")
        await r.until(lambda: r.tel.commands("connect_to_agent") != [], "the bridge attempt")
        await r.virtual_sleep(20.0)
        assert r.task is not None and not r.task.done(), "the engine stopped"
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the first call to end")


async def test_a_failed_information_message_still_ends_the_call(sqlite_engine: Engine) -> None:
    """The PBX refuses to play the message: the customer must not be left on an open line
    (the call counts as abandoned either way); the engine hangs up instead."""
    async with rig(sqlite_engine, [HUMAN_A], budget=1, pop=population(talk_s=600.0),
                   settings={"dangling_after_s": 20},
                   faults={"play_and_hangup": TelephonyError("Redirect failed")}) as r:
        r.engine.login("alice", r.campaign_id)
        await r.until(lambda: r.tel.commands("play_and_hangup") != [], "the message")
        await r.virtual_sleep(30.0)
        assert [s.command for s in r.tel.seen if s.command != "originate"] == \
            ["play_and_hangup", "hangup"]
        await r.until(lambda: r.outcome(HUMAN_A) is not None, "the call to end", wait_s=2.0)
        assert r.outcome(HUMAN_A) == "abandoned"
        assert r.engine.campaigns[r.campaign_id].abandoned == 1


async def test_calls_in_flight_when_the_campaign_is_paused_are_still_settled(
    sqlite_engine: Engine,
) -> None:
    busy = "+12125550017"
    async with rig(sqlite_engine, [busy], budget=1,
                   pop=population(Override(r"0017$", CalleeKind.BUSY, ring_s=8.0))) as r:
        await r.until(lambda: r.tel.commands("originate") != [], "the originate")
        set_campaign_state(r.db, r.campaign_id, CampaignState.PAUSED, r.clock.now())
        await r.until(lambda: r.campaign_id not in r.engine.campaigns, "the pause to be seen")
        await r.until(lambda: r.outcome(busy) is not None, "the busy call to end")
        c = r.contact(r.contact_ids[0])
        assert c.state == "not_connected" and c.leased_by is None
        assert c.due_at is not None and c.due_at > r.clock.now(), "the busy retry delay"
        assert c.attempt_count == 1
