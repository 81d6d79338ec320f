"""A harness for end-to-end tests of the dialer engine against the Asterisk emulator.

It builds a campaign with contacts and agents, runs `dialer.engine.Engine` with simulated
agents (`sim.agents.SimAgents`) against `sim.pbx.runner.run_pbx` over real AMI or ARI sockets,
all on one virtual time line (`ScaledClock` and the emulator's `time_scale` agree), waits until
the campaign has settled, and then checks what the database says against what the emulator
did. Other end-to-end tests (crash, SMS, several nodes) reuse the pieces:

- `Scenario` (what to run), `e2e_population()`, `contact_rows()`, `setup_campaign()`;
- `start_emulator()` / `telephony_for()`: the emulator (in a process of its own, or in this
  event loop) and a backend for it; `EmulatorHandle.finish()` gives its call records;
- `run_campaign()`: all of the above in one call, returning a `RunResult`;
- `load_snapshot()`: the campaign's contacts, attempts and outbox rows;
- the checks, each returning a list of problems (empty: fine), and `assert_no_problems()`:
  `check_contact_states`, `check_attempts_against_emulator`, `check_no_overlap`,
  `check_outbox`, `check_abandon_rate`.

Times: the emulator's `CallRecord` times are event-loop seconds (unscaled); the database
holds virtual UTC times. The checks only compare times within one of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import Engine as DbEngine
from sqlalchemy import func, select, update

from cti import causes
from cti.ami.telephony import AmiTelephony
from cti.ari.telephony import AriTelephony
from cti.interface import Telephony
from dialer.agents import AgentState
from dialer.campaigns import campaign_policy, save_strategy, set_campaign_state
from dialer.clock import ScaledClock
from dialer.db.models import Attempt, Campaign, Contact, Disposition, WebhookOutbox
from dialer.domain import (
    LEASABLE_STATES,
    TERMINAL_STATES,
    CampaignState,
    Channel,
    ContactState,
    DispositionType,
    Outcome,
)
from dialer.engine import Engine
from sim.agents import SimAgents, ensure_agents, ensure_fixtures
from sim.pbx.core import CallRecord
from sim.pbx.runner import RunningPbx, run_pbx
from sim.population import CalleeKind, Population
from strategies.model import (
    BUILTIN_STRATEGIES,
    AttemptView,
    CampaignPolicy,
    Close,
    ContactView,
    Dial,
    Strategy,
)
from strategies.planner import next_action
from tests.factories import add_contacts, make_campaign

#: 10:00 in New York on a Thursday: the contacts' calling hours (08:00-21:00) are open.
START = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
AGENT_GROUP = "e2e"
#: The agents' endpoints (`ensure_agents`), and the trunk dial string the engine uses.
AGENT_ENDPOINT = "PJSIP/{username}"
TRUNK = "PJSIP/{number}@trunk"
#: Contacts still out with the dialer: none may be left when a run has settled.
OPEN_STATES = frozenset({ContactState.PENDING, ContactState.SENT_TO_DIALER, ContactState.DANGLING})
#: What each drawn callee behaviour may end as in the attempts table (AMD on, hang-up on machines).
OUTCOMES_BY_KIND: dict[CalleeKind, frozenset[Outcome]] = {
    CalleeKind.HUMAN: frozenset({Outcome.HUMAN, Outcome.ABANDONED}),
    CalleeKind.MACHINE: frozenset({Outcome.MACHINE}),
    CalleeKind.BUSY: frozenset({Outcome.BUSY}),
    CalleeKind.NO_ANSWER: frozenset({Outcome.NO_ANSWER}),
    CalleeKind.REJECTED: frozenset({Outcome.REJECTED}),
    CalleeKind.FAILED: frozenset({Outcome.FAILED}),
    CalleeKind.CONGESTION: frozenset({Outcome.CONGESTION}),
}


def e2e_population(**overrides: Any) -> Population:
    """A realistic callee mix: 30 % people (talk median 60 s), machines, busy, no answer…"""
    values: dict[str, Any] = {
        "weights": {
            CalleeKind.HUMAN: 0.30,
            CalleeKind.MACHINE: 0.15,
            CalleeKind.BUSY: 0.10,
            CalleeKind.NO_ANSWER: 0.30,
            CalleeKind.REJECTED: 0.05,
            CalleeKind.FAILED: 0.05,
            CalleeKind.CONGESTION: 0.05,
        },
        "talk_median_s": 60.0,
        "talk_sigma": 0.6,
    }
    values.update(overrides)
    return Population(**values)


def e2e_strategy(long_retry: str = "3h", *, short_retries: bool = True) -> Strategy:
    """The built-in `default` strategy (2 tries on phone1, 2 on phone2, …, 8 attempts at most),
    with every retry that is an hour or more pushed to `long_retry`, and congestion retried
    after 5 minutes like busy (10 built in): busy and congestion retries happen within a run
    of a first pass over the list, and end it sooner; the others stay scheduled. With the
    built-in hour, retries of the first calls would fall due while the first pass is still
    going, and a run would only settle hours of virtual time later.
    Without `short_retries` busy and congestion wait `long_retry` too (a run is one pass)."""
    data = BUILTIN_STRATEGIES["default"].to_dict()
    short = {Outcome.BUSY.value, Outcome.CONGESTION.value} if short_retries else set()
    data["name"] = f"e2e-default-{long_retry}{'' if short_retries else '-all'}"
    data["retry_delays"] = {
        k: v if k.startswith("sms_") else "5m" if k in short else long_retry
        for k, v in data["retry_delays"].items()
    }
    return Strategy.from_dict(data, source="<e2e strategy>")


@dataclass(frozen=True)
class Scenario:
    """One end-to-end run. Durations are virtual seconds unless named `_wall_`."""

    backend: str = "ami"  # "ami" | "ari"
    contacts: int = 2000
    agents: int = 20
    time_scale: float = 0.01
    seed: int = 1
    population: Population = field(default_factory=e2e_population)
    #: A strategy name the database knows, or a `Strategy` to save first.
    strategy: str | Strategy = field(default_factory=e2e_strategy)
    dial_mode: str = "predictive"
    abandon_target: float = 0.03
    amd: bool = True
    amd_action: str = "hangup"
    tick_s: float = 1.0
    wrap_s: tuple[float, float] = (5.0, 20.0)
    #: How often (virtual s) the simulated agents look at their desks; None: 20 ms of wall.
    agent_poll_s: float | None = None
    start: datetime = START
    node_id: str = "e2e-node"
    #: Run the emulator in a process of its own (see `start_emulator`).
    emulator_process: bool = True
    #: Give up (and fail) after this much wall time.
    max_wall_s: float = 240.0
    #: A run has settled when nothing is due within this margin (so no lease races the stop).
    due_margin_s: float = 60.0


def contact_rows(n: int) -> list[dict[str, Any]]:
    """`n` New York contacts: one phone for most, two for every 4th, three for every 10th.

    Numbers are unique across contacts and slots (`+1212` + slot digit + 6 digits).
    """
    rows = []
    for i in range(n):
        phones = 3 if i % 10 == 9 else 2 if i % 4 == 3 else 1
        row: dict[str, Any] = {"tz": "America/New_York", "external_id": f"e2e-{i}"}
        for k in range(1, phones + 1):
            row[f"phone{k}"] = f"+1212{k}{i:06d}"
        rows.append(row)
    return rows


@dataclass(frozen=True)
class CampaignSetup:
    campaign_id: int
    contact_ids: list[int]
    agents: list[str]


def setup_campaign(db: DbEngine, sc: Scenario, now: datetime) -> CampaignSetup:
    """Create a running campaign of `sc.contacts` contacts and `sc.agents` agents in one group."""
    strategy = sc.strategy
    if isinstance(strategy, Strategy):
        save_strategy(db, strategy, now)
        strategy = strategy.name
    cid = make_campaign(
        db, now, dial_mode=sc.dial_mode, strategy=strategy, agent_groups=[AGENT_GROUP],
        abandon_target=sc.abandon_target,
    )
    with db.begin() as conn:
        conn.execute(
            update(Campaign).where(Campaign.id == cid)
            .values(amd=sc.amd, amd_action=sc.amd_action)
        )
    ids = add_contacts(db, cid, contact_rows(sc.contacts), now)
    set_campaign_state(db, cid, CampaignState.RUNNING, now)
    ensure_fixtures(db)
    agents = ensure_agents(db, sc.agents, groups=[AGENT_GROUP], endpoint=AGENT_ENDPOINT)
    return CampaignSetup(cid, ids, agents)


@dataclass
class EmulatorHandle:
    """A running emulator: where to reach it, and (once the run is over) what it did.

    `finish()` returns the emulator's `CallRecord`s of the scenario's backend and the errors
    its call tasks raised (as text); call it after the engine stopped.
    """

    host: str
    ami_port: int
    ari_port: int | None
    backend: str
    _local: RunningPbx | None = None
    _pipe: Connection | None = None
    #: The emulator process's own event-loop lag (p50, p99, max), when it ran in one.
    loop_lag_s: tuple[float, float, float] = (0.0, 0.0, 0.0)

    async def finish(self) -> tuple[list[CallRecord], list[str]]:
        if self._local is not None:
            pbx = self._local
            calls = list(pbx.ari.calls) if self.backend == "ari" and pbx.ari is not None \
                else list(pbx.ami.calls)
            return calls, [repr(e) for e in pbx.ami.pbx.errors]
        assert self._pipe is not None
        pipe = self._pipe
        pipe.send("finish")
        while not pipe.poll():
            await asyncio.sleep(0.02)
        calls, errors, self.loop_lag_s = pipe.recv()
        return calls, errors


@contextlib.asynccontextmanager
async def start_emulator(sc: Scenario) -> AsyncIterator[EmulatorHandle]:
    """The emulator at the scenario's time scale, with AMI (and ARI for the ARI backend).

    With `sc.emulator_process` it runs in a process of its own, so that the engine and the
    emulator do not share one event loop (and one core): on a loaded loop the emulator's
    timers drift, and the run tests the emulator's lag rather than the engine.
    """
    if not sc.emulator_process:
        async with run_pbx(
            ami_port=0, ari_port=0 if sc.backend == "ari" else None,
            population=sc.population, seed=sc.seed, time_scale=sc.time_scale,
        ) as pbx:
            yield EmulatorHandle(pbx.host, pbx.ami_port, pbx.ari_port, sc.backend, _local=pbx)
        return
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=_emulator_main,
        args=(theirs, sc.backend, sc.population, sc.seed, sc.time_scale),
        name="e2e-emulator", daemon=True,
    )
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while not ours.poll():
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator process did not start (exit {proc.exitcode})")
            await asyncio.sleep(0.02)
        host, ami_port, ari_port = ours.recv()
        yield EmulatorHandle(host, ami_port, ari_port, sc.backend, _pipe=ours)
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
        ours.close()


def _emulator_main(pipe: Connection, backend: str, population: Population, seed: int,
                   time_scale: float) -> None:
    """The emulator process: report the ports, serve until told to finish, send the records."""
    asyncio.run(_emulator_serve(pipe, backend, population, seed, time_scale))


async def _emulator_serve(pipe: Connection, backend: str, population: Population, seed: int,
                          time_scale: float) -> None:
    lags: list[float] = []
    async with run_pbx(
        ami_port=0, ari_port=0 if backend == "ari" else None, population=population,
        seed=seed, time_scale=time_scale,
    ) as pbx:
        lag_task = asyncio.create_task(_measure_lag(lags))
        pipe.send((pbx.host, pbx.ami_port, pbx.ari_port))
        while True:
            while not pipe.poll():
                await asyncio.sleep(0.02)
            msg = pipe.recv()
            if msg == "finish":
                lag_task.cancel()
                calls = list(pbx.ari.calls) if backend == "ari" and pbx.ari is not None \
                    else list(pbx.ami.calls)
                pipe.send((calls, [repr(e) for e in pbx.ami.pbx.errors], _percentiles(lags)))
            else:
                return


def telephony_for(backend: str, emulator: EmulatorHandle) -> Telephony:
    """A (not yet entered) backend connected to the emulator's AMI or ARI side."""
    if backend == "ami":
        return AmiTelephony(emulator.host, emulator.ami_port, "dialer", "dialer")
    if backend == "ari":
        return AriTelephony(f"http://{emulator.host}:{emulator.ari_port}", "dialer", "dialer",
                            app="paceline")
    raise ValueError(f"backend {backend!r}: use 'ami' or 'ari'")


def unsettled_reason(db: DbEngine, campaign_id: int, engine: Engine,
                     now: datetime, margin_s: float) -> str | None:
    """Why the campaign is still busy (None: settled). Settled means: no call in flight, no
    agent on a call or in wrap-up, no contact pending / leased / dangling, and none due
    before `now + margin_s`."""
    if engine.calls:
        return f"{len(engine.calls)} calls in flight"
    busy = [a.username for a in engine.board.agents.values()
            if a.state in (AgentState.ON_CALL, AgentState.WRAP_UP)]
    if busy:
        return f"{len(busy)} agents on a call or in wrap-up"
    with db.connect() as conn:
        open_n = conn.scalar(
            select(func.count()).select_from(Contact).where(
                Contact.campaign_id == campaign_id,
                Contact.state.in_([s.value for s in OPEN_STATES]),
            )
        )
        if open_n:
            return f"{open_n} contacts pending, leased or dangling"
        due_n = conn.scalar(
            select(func.count()).select_from(Contact).where(
                Contact.campaign_id == campaign_id,
                Contact.state.in_([s.value for s in LEASABLE_STATES]),
                Contact.due_at <= now + timedelta(seconds=margin_s),
            )
        )
        if due_n:
            return f"{due_n} contacts due"
        in_flight = conn.scalar(
            select(func.count()).select_from(Attempt).where(
                Attempt.campaign_id == campaign_id, Attempt.outcome.is_(None)
            )
        )
        if in_flight:
            return f"{in_flight} attempts without an outcome"
    return None


@dataclass
class RunResult:
    scenario: Scenario
    campaign_id: int
    contact_ids: list[int]
    agents: list[str]
    calls: list[CallRecord]
    emulator_errors: list[str]
    wall_s: float
    #: Virtual time when the run was found settled and the engine told to stop.
    virtual_end: datetime
    disposed: dict[str, int]
    agent_errors: list[str]
    engine_campaign: dict[str, Any]
    bridge_latencies: list[float]
    originated: int
    #: How late (wall s) a 10 ms sleep of the shared event loop woke: p50, p99, max. A loop
    #: that lags much more than the connect limit in wall time (2 s * time_scale) makes the
    #: emulator's timers and the engine's deadlines drift: the run is then less faithful.
    loop_lag_s: tuple[float, float, float]
    #: The same for the emulator's loop, when it ran in a process of its own.
    emulator_loop_lag_s: tuple[float, float, float]


async def run_campaign(db: DbEngine, sc: Scenario) -> RunResult:
    """Set up, run the engine and the simulated agents until the campaign settled, stop."""
    clock = ScaledClock(sc.time_scale, sc.start)
    setup = setup_campaign(db, sc, clock.now())
    async with start_emulator(sc) as emulator:
        tel = telephony_for(sc.backend, emulator)
        async with tel:
            eng = Engine(db, {"pbx1": tel}, {"pbx1": TRUNK}, node_id=sc.node_id, clock=clock,
                         tick_s=sc.tick_s)
            poll = sc.agent_poll_s if sc.agent_poll_s is not None else 0.02 / sc.time_scale
            agents = SimAgents(eng, setup.agents, seed=sc.seed, wrap_s=sc.wrap_s, poll_s=poll)
            t0 = time.monotonic()
            why: str | None = "not started"
            lags: list[float] = []
            async with asyncio.TaskGroup() as tg:
                engine_task = tg.create_task(eng.run(), name="engine")
                agents_task = tg.create_task(agents.run(), name="sim-agents")
                lag_task = tg.create_task(_measure_lag(lags), name="loop-lag")
                try:
                    await eng.started()
                    while time.monotonic() - t0 < sc.max_wall_s:
                        await asyncio.sleep(0.05)
                        why = unsettled_reason(db, setup.campaign_id, eng, clock.now(),
                                               sc.due_margin_s)
                        if why is None:
                            break
                finally:
                    stopped_at = clock.now()
                    eng.stop()
                    agents_task.cancel()
                    lag_task.cancel()
                await engine_task
            wall = time.monotonic() - t0
            status = eng.status()
        calls, errors = await emulator.finish()
    if why is not None:
        raise AssertionError(
            f"{sc.backend}: the campaign did not settle within {sc.max_wall_s:.0f} s wall "
            f"({wall:.1f} s, virtual {clock.now():%H:%M:%S}): {why}"
        )
    camp = next((c for c in status.campaigns if c["id"] == setup.campaign_id), {})
    return RunResult(
        scenario=sc, campaign_id=setup.campaign_id, contact_ids=setup.contact_ids,
        agents=setup.agents, calls=calls, emulator_errors=errors, wall_s=wall,
        virtual_end=stopped_at, disposed=dict(agents.disposed),
        agent_errors=list(agents.errors), engine_campaign=camp,
        bridge_latencies=list(eng.bridge_latencies), originated=status.originated,
        loop_lag_s=_percentiles(lags), emulator_loop_lag_s=emulator.loop_lag_s,
    )


async def _measure_lag(out: list[float], every_s: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(every_s)
        out.append(loop.time() - t - every_s)


def _percentiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if not xs:
        return (0.0, 0.0, 0.0)
    s = sorted(xs)
    return (s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))], s[-1])


# ---- what the database holds -------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The campaign's rows after a run, plus what the checks need to judge them."""

    contacts: dict[int, Any]
    attempts: list[Any]  # ordered by contact, then placed_at, then id
    outbox: list[Any]
    dispositions: dict[str, Any]  # code -> catalogue row
    policy: CampaignPolicy
    abandon_target: float

    def attempts_by_contact(self) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = defaultdict(list)
        for a in self.attempts:
            out[a.contact_id].append(a)
        return out


def load_snapshot(db: DbEngine, campaign_id: int) -> Snapshot:
    with db.connect() as conn:
        contacts = {r.id: r for r in conn.execute(
            select(Contact).where(Contact.campaign_id == campaign_id))}
        attempts = list(conn.execute(
            select(Attempt).where(Attempt.campaign_id == campaign_id)
            .order_by(Attempt.contact_id, Attempt.placed_at, Attempt.id)))
        ids = [a.id for a in attempts]
        outbox = list(conn.execute(
            select(WebhookOutbox).where(WebhookOutbox.attempt_id.in_(ids))
            .order_by(WebhookOutbox.id))) if ids else []
        dispositions = {r.code: r for r in conn.execute(
            select(Disposition).where(Disposition.campaign_id == campaign_id))}
        policy = campaign_policy(conn, campaign_id)
        target = conn.scalar(select(Campaign.abandon_target).where(Campaign.id == campaign_id))
    return Snapshot(contacts, attempts, outbox, dispositions, policy, float(target or 0.0))


# ---- checks --------------------------------------------------------------------------------


def _row(r: Any, *keys: str) -> str:
    return "{" + ", ".join(f"{k}={getattr(r, k)!r}" for k in keys) + "}"


_A_KEYS = ("id", "contact_id", "number", "phone_index", "outcome", "agent", "disposition",
           "placed_at", "answered_at", "ended_at", "call_state", "correlation_id")
_C_KEYS = ("id", "state", "due_at", "next_phone", "attempt_count", "state_reason")


def assert_no_problems(title: str, problems: Sequence[str], show: int = 8) -> None:
    """Fail with the first `show` problems (and how many there are) if there are any."""
    if problems:
        lines = "\n  ".join(problems[:show])
        more = f"\n  … and {len(problems) - show} more" if len(problems) > show else ""
        raise AssertionError(f"{title}: {len(problems)} problem(s)\n  {lines}{more}")


def _planner_view(contact: Any, attempts: Iterable[Any]) -> tuple[ContactView, list[AttemptView]]:
    phones = (contact.phone1, contact.phone2, contact.phone3, contact.phone4, contact.phone5)
    view = ContactView(phones=phones, tz=contact.tz_override or contact.tz,
                       state=ContactState.SENT_TO_DIALER)
    history = [
        AttemptView(placed_at=a.placed_at, phone_index=a.phone_index, channel=Channel(a.channel),
                    outcome=Outcome(a.outcome) if a.outcome is not None else None, step=a.step)
        for a in attempts
    ]
    return view, history


def check_contact_states(snap: Snapshot, end: datetime) -> list[str]:
    """Every contact ended in a terminal or scheduled state that its attempts explain."""
    problems: list[str] = []
    by_contact = snap.attempts_by_contact()
    for cid, c in snap.contacts.items():
        state = ContactState(c.state)
        atts = by_contact.get(cid, [])
        last = atts[-1] if atts else None
        where = f"contact {_row(c, *_C_KEYS)}; last attempt " + (
            _row(last, *_A_KEYS) if last is not None else "none")
        if state in OPEN_STATES:
            problems.append(f"still {state.value}: {where}")
            continue
        if last is None:
            problems.append(f"{state.value} without any attempt: {where}")
            continue
        if last.outcome is None:
            problems.append(f"last attempt has no outcome: {where}")
            continue
        if c.attempt_count != len(atts):
            problems.append(f"attempt_count {c.attempt_count} != {len(atts)} attempts: {where}")
        outcome = Outcome(last.outcome)
        spec = snap.dispositions.get(last.disposition) if last.disposition else None
        if state is ContactState.CONNECTED:
            ok = (outcome is Outcome.HUMAN and spec is not None and not spec.dnc
                  and spec.type != DispositionType.CALLBACK.value and c.due_at is None)
            if not ok:
                problems.append(f"connected without a closing disposition: {where}")
        elif state is ContactState.CALLBACK_SCHEDULED:
            by_disposition = (outcome is Outcome.HUMAN and spec is not None
                              and spec.type == DispositionType.CALLBACK.value)
            if not (by_disposition or outcome is Outcome.ABANDONED_BY_AGENT):
                problems.append(f"callback without an R disposition: {where}")
            elif c.due_at is None or c.due_at <= end:
                problems.append(f"callback not in the future: {where}")
            elif spec is not None and spec.callback_scope == "private" \
                    and c.callback_agent != last.agent:
                problems.append(f"private callback not kept for agent {last.agent}: {where}")
        elif state is ContactState.DNC_LISTED and spec is not None and spec.dnc:
            pass  # the agent's DNC disposition closed it
        elif state in (ContactState.NOT_CONNECTED, ContactState.RETRIES_COMPLETED,
                       ContactState.DNC_LISTED):
            if outcome in (Outcome.HUMAN, Outcome.ABANDONED_BY_AGENT):
                problems.append(f"{state.value} after a conversation: {where}")
                continue
            # The strategy decided when the last attempt ended: ask it again, the same way.
            view, history = _planner_view(c, atts)
            action = next_action(view, history, snap.policy, last.ended_at)
            expect: tuple[ContactState, datetime | None, int | None]
            if isinstance(action, Dial):
                expect = (ContactState.NOT_CONNECTED, action.earliest, action.phone_index)
            else:
                assert isinstance(action, Close)
                expect = (action.state, None, c.next_phone)
            got = (state, c.due_at, c.next_phone)
            if got != expect:
                problems.append(f"planner says {expect}, contact has {got}: {where}")
            elif state is ContactState.NOT_CONNECTED and (c.due_at is None or c.due_at <= end):
                problems.append(f"not_connected but due before the end {end}: {where}")
        elif state not in TERMINAL_STATES:
            problems.append(f"unexpected state {state.value}: {where}")
    return problems


def check_attempts_against_emulator(
    snap: Snapshot, calls: Sequence[CallRecord], *, agent_endpoint: str = AGENT_ENDPOINT,
    abandon_sound: str = "paceline/abandon", machines_to_agents: bool = False,
) -> list[str]:
    """Every voice attempt is one emulator call, and its row says what the emulator did.

    `machines_to_agents`: the campaign's `amd_action` is `agent`, so a machine may be bridged.
    An abandoned call may name the agent who was reserved for it, but was never bridged.
    """
    problems: list[str] = []
    by_id: dict[str, CallRecord] = {}
    for rec in calls:
        if rec.channel_id is None:
            problems.append(f"emulator call without a channel id: {rec}")
        elif rec.channel_id in by_id:
            problems.append(f"call id {rec.channel_id} originated twice: {rec}")
        else:
            by_id[rec.channel_id] = rec
    voice = [a for a in snap.attempts if a.channel == Channel.VOICE.value]
    seen: set[str] = set()
    for a in voice:
        where = f"attempt {_row(a, *_A_KEYS)}"
        found = by_id.get(a.correlation_id or "")
        if found is None:
            problems.append(f"no emulator call for {where}")
            continue
        rec = found
        seen.add(rec.channel_id or "")
        what = (f"emulator kind={rec.kind} answered={rec.answered_at is not None} "
                f"amd={rec.amd} cause={rec.cause} bridged_to={rec.bridged_to} played={rec.played}")
        if not rec.dial_string.startswith(TRUNK.format(number=a.number).partition("@")[0]) \
                or a.number not in rec.dial_string:
            problems.append(f"dialed {rec.dial_string!r}, row says {a.number}: {where}")
        if not rec.ended or rec.ended_at is None:
            problems.append(f"emulator call still up: {what}; {where}")
        if a.outcome is None or rec.kind is None:
            problems.append(f"no outcome: {what}; {where}")
            continue
        outcome = Outcome(a.outcome)
        did = emulator_did(rec)
        if outcome is Outcome.ABANDONED_BY_AGENT:
            allowed = OUTCOMES_BY_KIND[CalleeKind.HUMAN]  # a conversation the agent left
            outcome = Outcome.HUMAN
        else:
            allowed = OUTCOMES_BY_KIND[did]
        if outcome not in allowed:
            problems.append(f"outcome {outcome.value} but the callee did {did.value}: "
                            f"{what}; {where}")
            continue
        answered = rec.answered_at is not None
        if answered and (a.answered_at is None or a.ended_at is None
                         or not a.placed_at <= a.answered_at <= a.ended_at):
            problems.append(f"answered call without placed <= answered <= ended: {what}; {where}")
        if not answered and a.answered_at is not None:
            problems.append(f"answered_at set for an unanswered call: {what}; {where}")
        if a.ended_at is None or a.ended_at < a.placed_at:
            problems.append(f"ended_at missing or before placed_at: {where}")
        if outcome is Outcome.HUMAN or (outcome is Outcome.MACHINE and machines_to_agents
                                         and a.agent is not None and rec.bridged_to):
            endpoint = agent_endpoint.format(username=a.agent) if a.agent else None
            peers = [p for p in rec.bridged_to if endpoint and p.startswith(endpoint + "-")]
            if endpoint is None or len(peers) != 1 or len(rec.bridged_to) != 1:
                problems.append(f"human call not bridged to exactly its agent {endpoint}: "
                                f"{what}; {where}")
            elif a.connected_at is None:
                problems.append(f"bridged but connected_at is empty: {what}; {where}")
        else:
            if rec.bridged_to:
                problems.append(f"{outcome.value} call was bridged: {what}; {where}")
            if a.agent is not None and outcome is not Outcome.ABANDONED:
                problems.append(f"{outcome.value} call has an agent: {what}; {where}")
        if outcome is Outcome.ABANDONED and not any(abandon_sound in p for p in rec.played) \
                and rec.cause is None:
            problems.append(f"abandoned without the information message: {what}; {where}")
        if outcome is not Outcome.ABANDONED and rec.played:
            problems.append(f"{outcome.value} call heard a message: {what}; {where}")
    for cid, rec in by_id.items():
        if cid not in seen:
            problems.append(f"emulator call with no attempt row: {rec}")
    return problems


def emulator_did(rec: CallRecord) -> CalleeKind:
    """What the callee of an emulator call did: its drawn kind, except that a person or a
    machine the originate timeout (cause 19) ended before the answer did not answer. (Under a
    busy event loop the emulator's ring timers drift, so a ring time just under the timeout
    can lose the race; the dialer must then report what happened, not what was drawn.)"""
    assert rec.kind is not None
    if rec.kind in (CalleeKind.HUMAN, CalleeKind.MACHINE) and rec.answered_at is None \
            and rec.cause == causes.NO_ANSWER:
        return CalleeKind.NO_ANSWER
    return rec.kind


def check_no_overlap(snap: Snapshot) -> list[str]:
    """No contact had two attempts in flight at once (placed_at..ended_at)."""
    problems = []
    for cid, atts in snap.attempts_by_contact().items():
        for prev, nxt in itertools.pairwise(atts):
            if prev.ended_at is None or nxt.placed_at < prev.ended_at:
                problems.append(
                    f"contact {cid}: attempt {_row(nxt, *_A_KEYS)} placed while "
                    f"{_row(prev, *_A_KEYS)} was in flight"
                )
    return problems


def check_outbox(snap: Snapshot, event: str = "attempt.finished") -> list[str]:
    """Each finished attempt has exactly one `event` outbox row, naming its outcome."""
    rows: dict[int, list[Any]] = defaultdict(list)
    for r in snap.outbox:
        if r.event == event:
            rows[r.attempt_id].append(r)
    problems = []
    for a in snap.attempts:
        got = rows.get(a.id, [])
        if len(got) != 1:
            problems.append(f"{len(got)} {event} rows for attempt {_row(a, *_A_KEYS)}")
            continue
        payload = got[0].payload if isinstance(got[0].payload, dict) else {}
        # abandoned_by_agent is written after the call ended (and its own event says so).
        want_outcome = None if a.outcome == Outcome.ABANDONED_BY_AGENT.value else a.outcome
        seen = (payload.get("correlation_id"), payload.get("number"))
        if seen != (a.correlation_id, a.number) or (
            want_outcome is not None and payload.get("outcome") != want_outcome
        ):
            problems.append(f"{event} payload {payload!r} does not describe attempt "
                            f"{_row(a, *_A_KEYS)}")
    return problems


@dataclass(frozen=True)
class AbandonStats:
    live: int
    abandoned: int

    @property
    def rate(self) -> float:
        return self.abandoned / self.live if self.live else 0.0


def abandon_stats(snap: Snapshot) -> AbandonStats:
    """Abandons over live answers, from the attempts table (the TCPA reading)."""
    counts = Counter(a.outcome for a in snap.attempts)
    live = counts[Outcome.HUMAN.value] + counts[Outcome.ABANDONED.value] \
        + counts[Outcome.ABANDONED_BY_AGENT.value]
    return AbandonStats(live, counts[Outcome.ABANDONED.value])


def abandon_kinds(snap: Snapshot, calls: Sequence[CallRecord],
                  abandon_sound: str = "paceline/abandon") -> dict[str, int]:
    """Abandoned attempts by what happened: `message` (no agent in time: the information
    message played), `hung_up` (the person left before an agent or the message came)."""
    played = {r.channel_id for r in calls if any(abandon_sound in p for p in r.played)}
    out: Counter[str] = Counter()
    for a in snap.attempts:
        if a.outcome == Outcome.ABANDONED.value:
            out["message" if a.correlation_id in played else "hung_up"] += 1
    return dict(out)


def check_abandon_rate(snap: Snapshot) -> list[str]:
    st = abandon_stats(snap)
    if st.live == 0:
        return ["no live answers at all: the run tested nothing"]
    if st.rate >= snap.abandon_target:
        return [f"abandon rate {st.abandoned}/{st.live} = {st.rate:.2%} is not under the "
                f"target {snap.abandon_target:.2%}"]
    return []


def outcome_counts(snap: Snapshot) -> dict[str, int]:
    return dict(Counter(str(a.outcome) for a in snap.attempts))


def state_counts(snap: Snapshot) -> dict[str, int]:
    return dict(Counter(str(c.state) for c in snap.contacts.values()))
