"""The dialer engine: pacing, leasing, dialing, routing answers to agents, settling attempts.

One `Engine` runs in one `paceline run` process (a node). It owns every background task it
starts, in one `asyncio.TaskGroup`: a reader per PBX event stream, the pacing tick, the
housekeeping sweep (dangling calls, wrap-up timeouts, SMS expiry, campaign ownership and the
node heartbeat) and the CRM outbox worker. `run()` returns when `stop()` is called, after
cancelling them all; calls still in flight are left to the PBX and adopted by the next start.

On every pacing tick, for each running campaign this node owns:
1. ask the campaign's `Pacer` how many calls to place (all campaigns in one `decide_batch`);
2. lease that many due contacts (`dialer.leasing`: strategy, calling hours and DNC checked);
3. write one in-flight attempt row per contact, then originate them.

Then, per call event:
- live answer (or AMD HUMAN/NOTSURE): the longest-idle ready agent of the campaign is reserved
  and written to the database, then the call is bridged to them. No agent within the connect
  limit (2 s): the information message is played and the call counts as abandoned;
- machine (AMD): the campaign's `amd_action`: hang up, leave `machine_message`, or an agent;
- busy, no answer, rejected, failed: the strategy planner schedules the next step;
- every observation feeds the campaign's pacer.

Rules the engine keeps:
- Write before acting: every state change reaches the database in a committed transaction
  before the PBX command that depends on it. A crash therefore leaves at most calls the
  database knows as in flight; the next start reconciles them with the PBX (`adopt`): live
  ones are followed again, the others become `dangling` and are rescheduled by the strategy.
- A call with no result `dangling_after_s` after its originate becomes `dangling`.
- The engine reads time only from its `Clock` (virtual time in tests and load runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
from sqlalchemy import Engine as DbEngine
from sqlalchemy import bindparam, func, select, update

from cti.events import CallEvent, CallEventKind
from cti.interface import OriginateRequest, Telephony, TelephonyError, UnknownCall
from dialer import outbox
from dialer.agents import (
    AgentBoard,
    AgentError,
    AgentSession,
    AgentState,
    Assignment,
    load_agents,
    load_assignment,
    persist_state,
    recover_agents,
)
from dialer.attempts import (
    OpenAttempt,
    cancel_attempt,
    finish_attempt,
    mark_call,
    open_attempts,
    settle_contact,
)
from dialer.campaigns import campaign_policy
from dialer.clock import Clock, SystemClock
from dialer.db import write_transaction
from dialer.db.models import Agent, Attempt, Campaign, Contact, UtcDateTime
from dialer.domain import LIVE_OUTCOMES, Channel, ContactState, DialMode, Outcome
from dialer.leasing import (
    LeasedContact,
    lease_due_contacts,
    lease_private_callbacks,
    release_lease,
)
from dialer.pacing import CONNECT_LIMIT_S, Pacer, PacingSnapshot, decide_batch
from strategies.model import CampaignPolicy

log = logging.getLogger(__name__)

#: Pacer outcomes by dialer outcome (the pacer knows six; the rest are failures to it).
_PACER_OUTCOME: dict[Outcome, str] = {
    Outcome.HUMAN: "human",
    Outcome.MACHINE: "machine",
    Outcome.BUSY: "busy",
    Outcome.NO_ANSWER: "no_answer",
    Outcome.REJECTED: "rejected",
}

#: How often (engine seconds) the housekeeping sweep runs and campaign settings are reloaded.
SWEEP_S = 1.0
REFRESH_S = 5.0
#: How often (engine seconds) the engine looks for due private callbacks of ready agents.
PRIVATE_CALLBACK_CHECK_S = 5.0
#: The event reader lets other tasks run after this many events.
EVENTS_PER_YIELD = 16
#: A pacing tick that starts this late (fraction of tick_s) places no calls: the event loop
#: is behind, the agents and calls it sees are stale, and more calls only deepen the backlog.
LATE_TICK_SKIP = 0.25
#: `agents.pause_code` is a VARCHAR(32).
PAUSE_CODE_CHARS = 32
#: AMD decides within its total analysis time (Asterisk's default: 5 s); a verdict that has
#: not come this long after the answer was lost, and the person is treated as live.
AMD_DEADLINE_S = 8.0
#: How often (engine seconds) a node looks for attempts that dead nodes left in flight.
REAP_S = 60.0
#: How often a node that shares campaigns with others writes its heartbeat.
HEARTBEAT_S = 5.0


#: The contact of a bridged call leaves the lease pool (built once: it runs on every answer).
_CONNECT_CONTACT = (
    update(Contact)
    .where(Contact.id == bindparam("contact_id"),
           Contact.state == ContactState.SENT_TO_DIALER.value)
    .values(state=ContactState.CONNECTED.value, leased_by=None, lease_expires_at=None,
            leased_from=None, updated_at=bindparam("now", type_=UtcDateTime()))
)
#: The way back: nobody talked after all (the bridge or the IVR hand-off failed, or the person
#: left first), so the contact returns to its dialer and then to the strategy.
_UNCONNECT_CONTACT = (
    update(Contact)
    .where(Contact.id == bindparam("contact_id"),
           Contact.state == ContactState.CONNECTED.value)
    .values(state=ContactState.SENT_TO_DIALER.value,
            updated_at=bindparam("now", type_=UtcDateTime()))
)


#: Live answers and abandons of a campaign since a time: a new pacer's regulatory window.
_WINDOW_COUNTS = select(
    func.count().filter(Attempt.outcome.in_([o.value for o in LIVE_OUTCOMES])),
    func.count().filter(Attempt.outcome == Outcome.ABANDONED.value),
).where(Attempt.campaign_id == bindparam("cid"),
        Attempt.placed_at >= bindparam("since", type_=UtcDateTime()))


class CallState(StrEnum):
    DIALING = "dialing"  # originated, nothing heard yet
    RINGING = "ringing"
    AMD = "amd"  # answered, waiting for the AMD verdict
    WAITING = "waiting"  # a live answer waiting for a ready agent (the 2 s clock runs)
    BRIDGING = "bridging"  # an agent is reserved and the bridge was asked for
    BRIDGED = "bridged"
    ABANDONING = "abandoning"  # the information message plays; counted as abandoned
    MACHINE = "machine"  # a machine being hung up or given the recorded message
    DANGLING = "dangling"  # no result in time; kept to reconcile a late hang-up
    IVR = "ivr"  # an agentless campaign's live answer, handed to its IVR flow


#: States in which a call still counts as "ringing" for the pacer (no live answer yet).
_RINGING = frozenset({CallState.DIALING, CallState.RINGING, CallState.AMD})


@dataclass
class LiveCall:
    call_id: str
    attempt_id: int
    contact_id: int
    campaign_id: int
    pbx: str
    number: str
    placed: float
    state: CallState = CallState.DIALING
    answered: float | None = None
    live_since: float | None = None
    agent: AgentSession | None = None
    preview_agent: str | None = None
    dangling_since: float | None = None
    #: AMD said MACHINE (the call may still be passed to an agent: `amd_action = agent`).
    machine: bool = False
    #: For a call adopted after a restart while it was with an agent: who that agent was.
    adopted_agent: str | None = None
    #: When the engine started ending the call (information or machine message).
    ending_since: float | None = None
    #: Agentless: the PBX confirmed the hand-off to the IVR flow (state IVR alone means it
    #: was asked for).
    in_ivr: bool = False


@dataclass
class CampaignStats:
    """Counters of one campaign on this node since it started pacing it."""

    originated: int = 0
    live: int = 0
    abandoned: int = 0


@dataclass
class CampaignRun:
    """What the engine keeps per campaign it paces."""

    id: int
    name: str
    mode: DialMode
    policy: CampaignPolicy
    assignment: Assignment
    pacer: Pacer
    amd: bool
    amd_action: str
    machine_message: str | None
    abandon_message: str
    ring_timeout_s: float
    dangling_after_s: float
    wrapup_timeout_s: float
    caller_id: str
    channel: str
    sms_template: str | None
    #: Agentless mode: the IVR flow every live answer is handed to (None: nothing is dialed).
    ivr_flow: str | None = None
    waiting: deque[str] = field(default_factory=deque)
    #: Shared by every version of the run that a settings reload makes (like the pacer).
    stats: CampaignStats = field(default_factory=lambda: CampaignStats())

    @property
    def originated(self) -> int:
        return self.stats.originated

    @property
    def live(self) -> int:
        return self.stats.live

    @property
    def abandoned(self) -> int:
        return self.stats.abandoned


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot for displays (`paceline demo`, the status endpoint)."""

    calls_in_flight: int
    calls_by_state: dict[str, int]
    agents_by_state: dict[str, int]
    campaigns: list[dict[str, Any]]
    originated: int
    originates_per_s: float


class Engine:
    """The dialer service of one node. See the module docstring for what it does.

    `pbxs` maps a PBX name to a started `Telephony` backend (the caller owns their lifetime);
    `trunks` maps the same names to a dial-string template with `{number}` (e.g.
    `PJSIP/{number}@trunk`). `sms` is a `dialer.sms.SmsService`-like object with
    `send_attempt(...)`; `ownership` a `dialer.nodes.CampaignOwnership`-like object with
    `refresh(ids) -> change` (None: this node paces every running campaign); `outbox_worker`
    an `OutboxWorker` to run. Agents act through `login`, `ready`, `pause`, `logout`,
    `dispose`, `preview_next` and `preview_dial`.
    """

    def __init__(
        self,
        db: DbEngine,
        pbxs: Mapping[str, Telephony],
        trunks: Mapping[str, str],
        *,
        node_id: str,
        clock: Clock | None = None,
        tick_s: float = 1.0,
        sms: Any = None,
        ownership: Any = None,
        outbox_worker: Any = None,
        campaigns: Sequence[int] | None = None,
        pacer_factory: Callable[[str, float, float], Pacer] | None = None,
        max_calls_per_tick: int = 500,
        connect_limit_s: float = CONNECT_LIMIT_S,
        sms_expiry_every_s: float = 60.0,
        ivr_flows: Collection[str] | None = None,
    ) -> None:
        if not pbxs:
            raise ValueError("the engine needs at least one PBX")
        missing = set(pbxs) - set(trunks)
        if missing:
            raise ValueError(f"no trunk dial string for PBX {', '.join(sorted(missing))}")
        self.db = db
        self.pbxs = dict(pbxs)
        self.trunks = dict(trunks)
        self.node_id = node_id
        self.clock: Clock = clock or SystemClock()
        self.tick_s = tick_s
        self.sms = sms
        self.ownership = ownership
        self.outbox_worker = outbox_worker
        self.only_campaigns = None if campaigns is None else set(campaigns)
        self._pacer_factory = pacer_factory or _default_pacer
        self.max_calls_per_tick = max_calls_per_tick
        self.connect_limit_s = connect_limit_s
        self.sms_expiry_every_s = sms_expiry_every_s
        #: The IVR flows the service runs (`paceline run`'s `[ivr]`): an agentless campaign
        #: naming another is not dialed. None: not checked (the flows run elsewhere).
        self.ivr_flows = None if ivr_flows is None else frozenset(ivr_flows)
        self.board = AgentBoard()
        self.campaigns: dict[int, CampaignRun] = {}
        self.calls: dict[str, LiveCall] = {}
        self.originated = 0
        self.tick_latencies: list[float] = []
        self.bridge_latencies: list[float] = []
        self._stopping = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._started = asyncio.Event()
        self._last_refresh = -math.inf
        self._last_sms_expiry = -math.inf
        self._last_heartbeat = -math.inf
        self._last_private_check = -math.inf
        self._last_reap = -math.inf
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self._pending_abandons: list[LiveCall] = []
        self._late = 0.0
        self.skipped_ticks = 0
        self._retired: dict[int, CampaignRun] = {}
        self._no_flow_warned: set[int] = set()

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover, then run until `stop()`. Every task started here ends before this returns."""
        await self._recover()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for name, backend in self.pbxs.items():
                    tg.create_task(self._read_events(name, backend), name=f"events-{name}")
                tg.create_task(self._tick_loop(), name="pacing")
                tg.create_task(self._sweep_loop(), name="sweep")
                if self.outbox_worker is not None:
                    tg.create_task(self.outbox_worker.run(self.clock), name="outbox")
                self._started.set()
                await self._stopping.wait()
                # Leaving the group by an exception cancels every task it owns.
                raise _Stop
        except* _Stop:
            pass
        finally:
            self._tg = None

    def stop(self) -> None:
        self._stopping.set()

    async def started(self) -> None:
        await self._started.wait()

    def spawn(self, coro: Any, name: str | None = None) -> None:
        """Run `coro` under the engine's TaskGroup (it is cancelled on stop).

        A per-call task that fails (a backend bug, a dropped database connection) is logged
        and ends alone: it must not take the node's other calls and campaigns down with it.
        """
        if self._tg is None:
            raise RuntimeError("the engine is not running")
        self._tg.create_task(self._guarded(coro, name), name=name)

    @staticmethod
    async def _guarded(coro: Any, name: str | None) -> None:
        try:
            await coro
        except Exception:
            log.exception("task %s failed", name or "?")

    # ---- recovery -------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Reconcile what an earlier process of this node left: calls, leases and agents."""
        now = self.clock.now()
        with self.db.connect() as conn:
            rows = conn.execute(
                select(Attempt.id, Attempt.correlation_id, Attempt.contact_id,
                       Attempt.campaign_id, Attempt.number, Attempt.call_state,
                       Attempt.channel, Attempt.agent, Attempt.connected_at)
                .where(Attempt.node_id == self.node_id, Attempt.outcome.is_(None))
            ).all()
        voice = [r for r in rows if r.channel == Channel.VOICE.value and r.correlation_id]
        live: dict[str, str] = {}
        for name, backend in self.pbxs.items():
            if not voice:
                break
            try:
                found = await backend.adopt([r.correlation_id for r in voice])
            except TelephonyError as exc:
                log.warning("PBX %s: cannot list live calls at start (%s); its calls become "
                            "dangling", name, exc)
                continue
            for cid in found:
                live.setdefault(cid, name)
        with write_transaction(self.db) as conn:
            # Wrap-ups the stop cut short: the agent's disposition is lost, so the attempt is
            # recorded as abandoned by agent and the contact comes back as a public callback.
            for username, attempt_id in conn.execute(
                select(Agent.username, Agent.attempt_id).where(
                    Agent.node_id == self.node_id, Agent.state == AgentState.WRAP_UP.value,
                    Agent.attempt_id.is_not(None))
            ).all():
                if attempt_id is not None:
                    self._abandon_by_agent(conn, attempt_id, username, now,
                                           "the service restarted during the wrap-up")
            recovered = recover_agents(conn, self.node_id, now)
            policies: dict[int, CampaignPolicy] = {}
            for r in rows:
                policy = policies.get(r.campaign_id)
                if policy is None:
                    policy = policies[r.campaign_id] = campaign_policy(conn, r.campaign_id)
                if r.correlation_id in live:
                    continue
                if r.call_state == "ivr" and r.connected_at is not None:
                    # An agentless call that was in its IVR flow and ended while no engine
                    # ran: the person was reached.
                    finish_attempt(conn, r.id, Outcome.HUMAN, now, policy,
                                   reason="ended in the IVR while the engine was stopped")
                elif r.agent is not None and r.connected_at is not None:
                    # A conversation that ended while no engine ran: it happened, but its
                    # wrap-up cannot, so it is closed as abandoned by agent (nothing lost).
                    conn.execute(
                        update(Attempt)
                        .where(Attempt.id == r.id, Attempt.outcome.is_(None))
                        .values(outcome=Outcome.HUMAN.value, ended_at=now, call_state="ended")
                    )
                    self._abandon_by_agent(conn, r.id, r.agent, now,
                                           "the service restarted during the call")
                else:
                    if r.agent is not None:
                        # An agent was reserved but the bridge never came: nobody talked. The
                        # contact goes back to the strategy like any unanswered call.
                        conn.execute(_UNCONNECT_CONTACT, {"contact_id": r.contact_id, "now": now})
                    finish_attempt(
                        conn, r.id, Outcome.DANGLING, now, policy,
                        reason="in flight when the engine stopped; not live on the PBX at "
                        "restart",
                    )
                outbox.enqueue(conn, "attempt.finished", outbox.attempt_payload(conn, r.id),
                               now, attempt_id=r.id)
        mono = self.clock.monotonic()
        for r in rows:
            pbx = live.get(r.correlation_id or "")
            if pbx is None:
                continue
            call = LiveCall(r.correlation_id, r.id, r.contact_id, r.campaign_id, pbx, r.number,
                            placed=mono)
            state = r.call_state or "dialing"
            if state in ("bridging", "bridged"):
                call.state = CallState.BRIDGED
                call.answered = call.live_since = mono
                # The agent is back `not_ready` (recovery) and cannot wrap this call up.
                call.adopted_agent = r.agent
            elif state in ("waiting", "amd"):
                # More than the connect limit has passed since the answer: the call cannot
                # reach an agent in time any more. Give it the message and count it.
                call.state = CallState.ABANDONING
            elif state == "abandoning":
                call.state = CallState.ABANDONING
            elif state == "machine":
                call.state = CallState.MACHINE
            elif state == "ivr":
                call.state = CallState.IVR
                call.answered = call.live_since = mono
                call.in_ivr = True  # live on the PBX: it may be anywhere in its flow
            self.calls[call.call_id] = call
        # Adopted calls are settled by their campaign's strategy whether or not this node
        # paces that campaign from now on (the first refresh decides that).
        with self.db.connect() as conn:
            for camp_id in {c.campaign_id for c in self.calls.values()}:
                row = conn.execute(
                    select(*Campaign.__table__.columns).where(Campaign.id == camp_id)
                ).one_or_none()
                if row is not None:
                    self._retired[camp_id] = self._make_run(conn, row, None)
        adopted_abandon = [c for c in self.calls.values() if c.state is CallState.ABANDONING]
        if rows or recovered:
            log.info("recovered: %d calls in flight (%d still live), %d agents set not ready",
                     len(rows), len(live), recovered)
        self._pending_abandons = adopted_abandon

    # ---- campaigns ------------------------------------------------------------------------

    def _run(self, campaign_id: int | None) -> CampaignRun | None:
        """The campaign's settings: one this node paces, or one it paced with calls left."""
        if campaign_id is None:
            return None
        return self.campaigns.get(campaign_id) or self._retired.get(campaign_id)

    def _refresh_campaigns(self) -> dict[int, CampaignRun]:
        """Reload running campaigns and settings; keep pacers of campaigns that stay.

        Runs in a worker thread (database reads, ownership locks); it changes nothing the
        event loop uses: `_install_campaigns` swaps the result in, on the loop.
        """
        with self.db.connect() as conn:
            rows = conn.execute(
                select(*Campaign.__table__.columns).where(Campaign.state == "running")
            ).all()
            wanted = [c for c in rows if self.only_campaigns is None or c.id in self.only_campaigns]
            if self.ownership is not None:
                change = self.ownership.refresh([c.id for c in wanted], self.clock.now())
                owned = set(change.owned)
                if change.error:
                    log.warning("campaign ownership: %s", change.error)
                for cid in change.lost:
                    log.warning("campaign %s: this node no longer paces it", cid)
                for cid in change.gained:
                    log.info("campaign %s: this node paces it now", cid)
            else:
                owned = {c.id for c in wanted}
            fresh: dict[int, CampaignRun] = {}
            for c in wanted:
                if c.id in owned:
                    fresh[c.id] = self._make_run(conn, c, self._run(c.id))
        return fresh

    def _install_campaigns(self, fresh: dict[int, CampaignRun]) -> None:
        """Swap in reloaded settings. On the event loop: it reads the calls in flight."""
        # A campaign this node stops pacing (paused, stopped, or taken over by another node)
        # keeps its settings here while calls it placed are still in flight, so that their
        # outcomes are settled by its strategy and fed to its pacer.
        for cid, old_run in self.campaigns.items():
            if cid not in fresh:
                self._retired[cid] = old_run
        busy = {c.campaign_id for c in self.calls.values()}
        for cid in list(self._retired):
            if cid in fresh or cid not in busy:
                del self._retired[cid]
        self.campaigns = fresh

    def _make_run(self, conn: Any, c: Any, old: CampaignRun | None) -> CampaignRun:
        """A campaign's run settings from its row; the pacer and counters of `old` go on."""
        mode = DialMode(c.dial_mode)
        if old is not None:
            pacer = old.pacer
        else:
            pacer = self._pacer_factory(
                mode.value, c.abandon_target, float(c.abandon_window_s))
            # The legal cap counts over the whole window, not since this process started.
            since = self.clock.now() - timedelta(seconds=c.abandon_window_s)
            live, abandons = conn.execute(_WINDOW_COUNTS, {"cid": c.id, "since": since}).one()
            if live:
                pacer.seed_window(self.clock.monotonic(), live or 0, abandons or 0)
        if old is not None and old.mode is not mode:
            pacer.set_mode(mode.value)
        run = CampaignRun(
            id=c.id,
            name=c.name,
            mode=mode,
            policy=campaign_policy(conn, c.id),
            assignment=load_assignment(conn, c.id),
            pacer=pacer,
            amd=bool(c.amd),
            amd_action=c.amd_action,
            machine_message=c.machine_message,
            abandon_message=c.abandon_message,
            ring_timeout_s=float(max(15, c.ring_timeout_s)),
            dangling_after_s=float(c.dangling_after_s),
            wrapup_timeout_s=float(c.wrapup_timeout_s),
            caller_id=c.caller_id or "",
            channel=c.channel,
            sms_template=c.sms_template,
            ivr_flow=c.ivr_flow,
        )
        if old is not None:
            run.waiting, run.stats = old.waiting, old.stats
        return run

    # ---- pacing tick ----------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        pending, self._pending_abandons = self._pending_abandons, []
        for call in pending:
            self._abandon(call, count=True)
        due = self.clock.monotonic()
        while not self._stopping.is_set():
            t0 = self.clock.monotonic()
            self._late = t0 - due
            if t0 - self._last_refresh >= REFRESH_S:
                self._last_refresh = t0
                try:
                    self._install_campaigns(await asyncio.to_thread(self._refresh_campaigns))
                except Exception:
                    log.exception("refreshing campaigns failed; keeping the previous set")
            try:
                await self.tick()
            except Exception:
                # A tick that fails (a database hiccup) must not stop the service; the next
                # tick starts from the database again.
                log.exception("pacing tick failed")
            self.tick_latencies.append(self.clock.monotonic() - t0)
            if len(self.tick_latencies) > 100_000:
                del self.tick_latencies[:50_000]
            due = t0 + self.tick_s
            await self.clock.sleep(max(0.0, self.tick_s - (self.clock.monotonic() - t0)))

    def _can_take_live_answers(self, run: CampaignRun) -> bool:
        """An agentless campaign whose IVR flow is missing (not named, or not one the service
        runs) would abandon every live answer: it is not dialed (said once in the log, and
        again after it is fixed and broken again)."""
        if run.mode is not DialMode.AGENTLESS:
            self._no_flow_warned.discard(run.id)
            return True
        if run.ivr_flow is None:
            why = "names no IVR flow (ivr_flow)"
        elif self.ivr_flows is not None and run.ivr_flow not in self.ivr_flows:
            why = (f"hands its calls to IVR flow {run.ivr_flow!r}, which this service does "
                   f"not run (its [ivr] flows: {', '.join(sorted(self.ivr_flows)) or 'none'})")
        else:
            self._no_flow_warned.discard(run.id)
            return True
        if run.id not in self._no_flow_warned:
            self._no_flow_warned.add(run.id)
            log.warning("campaign %s (%s) is agentless but %s: nothing is dialed for it",
                        run.id, run.name, why)
        return False

    def snapshot(self, run: CampaignRun, now: float) -> PacingSnapshot:
        ready, busy = self.board.counts(run.id, now)
        ringing = [now - c.placed for c in self.calls.values()
                   if c.campaign_id == run.id and c.state in _RINGING]
        if run.mode is DialMode.AGENTLESS:
            # The lines an agentless campaign holds are its calls in the IVR, not agents.
            busy = [*busy, *(now - c.live_since for c in self.calls.values()
                             if c.campaign_id == run.id and c.state is CallState.IVR
                             and c.live_since is not None)]
        waiting = sum(1 for c in self.calls.values()
                      if c.campaign_id == run.id and c.state is CallState.WAITING)
        return PacingSnapshot(
            now=now,
            ready_agents=max(0, ready),
            busy_elapsed=np.asarray(busy, dtype=float),
            ringing_elapsed=np.asarray(ringing, dtype=float),
            waiting_calls=waiting,
        )

    async def tick(self) -> None:
        """One pacing tick over every campaign this node paces."""
        if not self.campaigns:
            return
        mono = self.clock.monotonic()
        if mono - self._last_private_check >= PRIVATE_CALLBACK_CHECK_S:
            self._last_private_check = mono
            await self._dial_private_callbacks()
        runs = [r for r in self.campaigns.values()
                if r.channel != "sms" and self._can_take_live_answers(r)]
        up = [n for n, b in self.pbxs.items() if b.connected]
        wants: dict[int, int] = {}
        if runs:
            decisions = decide_batch([r.pacer for r in runs],
                                     [self.snapshot(r, mono) for r in runs])
            for r, n in zip(runs, decisions, strict=True):
                if int(n) > 0 and up:
                    wants[r.id] = min(int(n), self.max_calls_per_tick)
        for r in self.campaigns.values():
            if r.channel == "sms":
                wants[r.id] = self.max_calls_per_tick
        if not wants:
            return
        if self._late > LATE_TICK_SKIP * self.tick_s:
            self.skipped_ticks += 1
            log.debug("pacing tick %.2f s late: no calls placed this tick", self._late)
            return
        now = self.clock.now()
        for cid, n in wants.items():
            leases = await asyncio.to_thread(self._lease, cid, n, now)
            if leases:
                await self._dial(self.campaigns[cid], leases, up)

    async def _dial_private_callbacks(self) -> None:
        """Due private callbacks go to their own agent, who is reserved for the call.

        The general lease skips them; here each ready agent of ours who has one due gets it
        dialed for them alone, as in preview mode (the answer waits for no one else).
        """
        now = self.clock.now()
        up = [n for n, b in self.pbxs.items() if b.connected]
        if not up:
            return
        for run in list(self.campaigns.values()):
            if run.channel == "sms" or run.mode is DialMode.PREVIEW:
                # In preview mode the agent pulls their callbacks with `preview_next`.
                continue
            ready = {a.username: a for a in self.board.in_campaign(run.id)
                     if a.state is AgentState.READY and a.preview is None}
            if not ready:
                continue
            owners = await asyncio.to_thread(_private_callback_owners, self.db, run.id, now)
            for username in owners:
                agent = ready.get(username)
                if agent is None or agent.state is not AgentState.READY or agent.preview:
                    continue
                leased = await asyncio.to_thread(
                    lease_private_callbacks, self.db, run.id, username, 1, now, self.node_id)
                if not leased:
                    continue
                agent.preview = leased[0]
                try:
                    await self._dial_for(agent, run, leased[0], up)
                except AgentError as exc:
                    log.info("private callback for %s not dialed: %s", username, exc)

    async def _dial_for(self, agent: AgentSession, run: CampaignRun, lease: LeasedContact,
                        up: list[str]) -> str:
        """Dial `lease` for `agent` alone (preview dial, private callback)."""
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            # The lease must still be the one the agent was given: a preview read for longer
            # than the lease returned the contact to the pool, and someone else may have it.
            held = conn.execute(
                update(Contact)
                .where(Contact.id == lease.contact_id,
                       Contact.state == ContactState.SENT_TO_DIALER.value,
                       Contact.leased_by == self.node_id,
                       Contact.lease_expires_at == lease.lease_expires_at)
                .values(updated_at=now)
            ).rowcount
            if held:
                o = open_attempts(conn, [lease], self.node_id, now)[0]
        if not held:
            agent.preview = agent.preview_call = None
            raise AgentError(f"agent {agent.username!r}: the previewed contact's lease ran "
                             "out; take the next contact")
        call = self._track(run, o, up[0], self.clock.monotonic(), preview_agent=agent.username)
        agent.preview_call = o.call_id
        await self._originate(run, call, o)
        return o.call_id

    def _lease(self, campaign_id: int, n: int, now: datetime) -> list[OpenAttempt]:
        leased = lease_due_contacts(self.db, campaign_id, n, now, self.node_id)
        if not leased:
            return []
        with write_transaction(self.db) as conn:
            return open_attempts(conn, leased, self.node_id, now)

    async def _dial(self, run: CampaignRun, opened: list[OpenAttempt], up: list[str]) -> None:
        voice = [o for o in opened if o.lease.channel is Channel.VOICE]
        for o in opened:
            if o.lease.channel is Channel.SMS:
                self.spawn(self._send_sms(run, o), name=f"sms-{o.attempt_id}")
        if not voice:
            return
        if not up:
            self._cancel(voice, "no PBX is connected")
            return
        mono = self.clock.monotonic()
        # Spread calls over the connected PBXs, fewest calls in flight first.
        load = {n: 0 for n in up}
        for c in self.calls.values():
            if c.pbx in load:
                load[c.pbx] += 1
        for o in voice:
            pbx = min(load, key=load.__getitem__)
            load[pbx] += 1
            call = self._track(run, o, pbx, mono)
            self.spawn(self._originate(run, call, o), name=f"originate-{o.call_id}")

    def _track(self, run: CampaignRun, o: OpenAttempt, pbx: str, mono: float,
               preview_agent: str | None = None) -> LiveCall:
        """Follow a call about to be originated, and count it."""
        call = LiveCall(o.call_id, o.attempt_id, o.lease.contact_id, run.id, pbx,
                        o.lease.number, placed=mono, preview_agent=preview_agent)
        self.calls[o.call_id] = call
        run.stats.originated += 1
        self.originated += 1
        if self._rate and self._rate[-1][0] == mono:  # the tick's calls share one entry
            self._rate[-1] = (mono, self._rate[-1][1] + 1)
        else:
            self._rate.append((mono, 1))
        return call

    async def _originate(self, run: CampaignRun, call: LiveCall, o: OpenAttempt) -> None:
        req = OriginateRequest(
            call_id=call.call_id,
            endpoint=self.trunks[call.pbx].format(number=call.number),
            caller_id=run.caller_id,
            variables={"PACELINE_CAMPAIGN": str(run.id), "PACELINE_ATTEMPT": str(o.attempt_id)},
            ring_timeout_s=run.ring_timeout_s,
            amd=run.amd,
        )
        try:
            await self.pbxs[call.pbx].originate(req)
        except TelephonyError as exc:
            # Nothing was dialed (the interface's contract): give the contact back unused.
            log.warning("originate %s on %s refused: %s", call.call_id, call.pbx, exc)
            self.calls.pop(call.call_id, None)
            self._free_reserved(call)
            self._cancel([o], str(exc))

    def _free_reserved(self, call: LiveCall) -> None:
        """The agent a preview dial or private callback reserved is free for other calls."""
        if call.preview_agent is not None:
            reserved = self.board.agents.get(call.preview_agent)
            if reserved is not None and reserved.preview_call == call.call_id:
                reserved.preview = reserved.preview_call = None

    def _cancel(self, opened: Sequence[OpenAttempt], why: str) -> None:
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            for o in opened:
                cancel_attempt(conn, o.attempt_id, o.lease.contact_id, now)
        log.info("%d calls not placed: %s", len(opened), why)

    # ---- SMS ------------------------------------------------------------------------------

    async def _send_sms(self, run: CampaignRun, o: OpenAttempt) -> None:
        now = self.clock.now()
        if self.sms is None:
            with write_transaction(self.db) as conn:
                finish_attempt(conn, o.attempt_id, Outcome.SMS_FAILED, now, run.policy,
                               reason="no SMS provider is configured on this node")
            return
        await self.sms.send_attempt_and_settle(
            o.attempt_id, o.lease, run.sms_template, run.policy, now
        )

    # ---- call events ----------------------------------------------------------------------

    async def _read_events(self, pbx: str, backend: Telephony) -> None:
        handled = 0
        async for ev in backend.events():
            try:
                self.on_event(pbx, ev)
            except Exception:
                log.exception("handling %s for call %s failed", ev.kind, ev.call_id)
            handled += 1
            if handled % EVENTS_PER_YIELD == 0:
                # `get()` on a queue that has events never suspends: without this a backlog
                # runs as one callback, and the bridges and originates it spawns (and the
                # pacing tick) wait for its end.
                await asyncio.sleep(0)

    def on_event(self, pbx: str, ev: CallEvent) -> None:
        """Apply one event. Runs on the event loop; database writes are short transactions."""
        if ev.kind in (CallEventKind.BACKEND_DOWN, CallEventKind.BACKEND_UP):
            log.warning("PBX %s: %s", pbx, ev.kind.value)
            return
        call = self.calls.get(ev.call_id)
        if call is None:
            return
        run = self._run(call.campaign_id)
        mono = self.clock.monotonic()
        k = ev.kind
        if k is CallEventKind.RINGING and call.state is CallState.DIALING:
            call.state = CallState.RINGING
        elif k is CallEventKind.ANSWERED and call.state in (CallState.DIALING,
                                                             CallState.RINGING):
            call.answered = mono
            if run is not None and run.amd and ev.detail != "adopted":
                self.spawn(self._amd_deadline(call), name=f"amd-{call.call_id}")
            if ev.detail == "adopted":
                # Answered while no engine was running: the person has waited longer than
                # the connect limit already. The information message, and it counts.
                call.live_since = mono
                self._abandon(call, count=True)
            elif run is not None and run.amd:
                call.state = CallState.AMD
            else:
                self._live(call, run, mono)
        elif k is CallEventKind.AMD and call.state in (CallState.AMD, CallState.DIALING,
                                                      CallState.RINGING):
            if call.answered is None:
                call.answered = mono
            if (ev.amd or "").upper() == "MACHINE":
                self._machine(call, run, mono)
            else:
                self._live(call, run, mono)
        elif k is CallEventKind.BRIDGED and call.state is CallState.BRIDGING:
            call.state = CallState.BRIDGED
            if call.live_since is not None:
                self.bridge_latencies.append(mono - call.live_since)
                if run is not None:
                    run.pacer.observe_connect(mono - call.live_since)
            with write_transaction(self.db) as conn:
                mark_call(conn, call.attempt_id, call_state="bridged",
                          connected_at=self.clock.now())
        elif k is CallEventKind.TRANSFERRED and call.agent is not None:
            # The customer went on to someone else: the agent's part ends, the call goes on.
            agent, call.agent = call.agent, None
            if agent.state is AgentState.ON_CALL:
                self.board.move(agent, AgentState.WRAP_UP, mono)
                agent.attempt_id, agent.campaign_id = call.attempt_id, call.campaign_id
                with write_transaction(self.db) as conn:
                    persist_state(conn, agent, self.clock.now(), self.node_id)
        elif k is CallEventKind.HANGUP:
            self._hangup(call, run, ev, mono)

    async def _amd_deadline(self, call: LiveCall) -> None:
        await self.clock.sleep(AMD_DEADLINE_S)
        if call.state is CallState.AMD and self.calls.get(call.call_id) is call:
            log.warning("call %s: no AMD verdict %.0f s after the answer; taken as a person",
                        call.call_id, AMD_DEADLINE_S)
            self._live(call, self._run(call.campaign_id), self.clock.monotonic())

    def _observe_ring(self, call: LiveCall, run: CampaignRun | None, outcome: Outcome,
                      mono: float) -> None:
        if run is None:
            return
        end = call.answered if call.answered is not None else mono
        run.pacer.observe_call(end - call.placed, _PACER_OUTCOME.get(outcome, "failed"))

    def _live(self, call: LiveCall, run: CampaignRun | None, mono: float) -> None:
        """A live person answered: route to an agent now, or wait up to the connect limit."""
        call.live_since = mono
        self._observe_ring(call, run, Outcome.HUMAN, mono)
        if run is not None:
            run.stats.live += 1
        if run is not None and run.mode is DialMode.AGENTLESS and call.preview_agent is None:
            self._to_ivr(call, run)
            return
        agent = self._agent_for(call)
        if agent is not None:
            self._bridge(call, agent)
            return
        call.state = CallState.WAITING
        with write_transaction(self.db) as conn:
            mark_call(conn, call.attempt_id, call_state="waiting", answered_at=self.clock.now())
        if run is not None:
            run.waiting.append(call.call_id)
        self.spawn(self._connect_deadline(call), name=f"deadline-{call.call_id}")

    def _to_ivr(self, call: LiveCall, run: CampaignRun) -> None:
        """Agentless: the live answer is connected at once, to the campaign's IVR flow.

        Written first (the attempt `ivr`, connected now; the contact out of the lease pool
        while the call lasts), then the PBX moves the call; the flow decides the rest (an
        opt-out, a transfer). A hand-off the PBX refuses is an abandon: nobody spoke to the
        person within the connect limit.
        """
        if run.ivr_flow is None:  # the flow was removed after the call was placed
            self._abandon(call, count=True)
            return
        now = self.clock.now()
        call.state = CallState.IVR
        with write_transaction(self.db) as conn:
            mark_call(conn, call.attempt_id, call_state="ivr", answered_at=now,
                      connected_at=now)
            conn.execute(_CONNECT_CONTACT, {"contact_id": call.contact_id, "now": now})
        variables = {"called_number": call.number, "contact_id": str(call.contact_id),
                     "campaign": run.name, "attempt_id": str(call.attempt_id)}
        self.spawn(self._do_ivr(call, run.ivr_flow, variables), name=f"ivr-{call.call_id}")

    async def _do_ivr(self, call: LiveCall, flow: str, variables: Mapping[str, str]) -> None:
        try:
            await self.pbxs[call.pbx].send_to_ivr(call.call_id, flow, variables)
            call.in_ivr = True
            run = self._run(call.campaign_id)
            if run is not None:
                run.pacer.observe_connect(0.0)
        except UnknownCall:
            pass  # the person hung up before the flow took the call; the HANGUP settles it
        except TelephonyError as exc:
            log.warning("handing %s to IVR flow %s failed: %s", call.call_id, flow, exc)
            if self.calls.get(call.call_id) is call and call.state is CallState.IVR:
                with write_transaction(self.db) as conn:
                    mark_call(conn, call.attempt_id, connected_at=None)
                    conn.execute(_UNCONNECT_CONTACT,
                                 {"contact_id": call.contact_id, "now": self.clock.now()})
                self._abandon(call, count=True)

    def _agent_for(self, call: LiveCall) -> AgentSession | None:
        if call.preview_agent is not None:
            a = self.board.agents.get(call.preview_agent)
            return a if a is not None and a.state is AgentState.READY else None
        return self.board.pick_ready(call.campaign_id)

    def _bridge(self, call: LiveCall, agent: AgentSession) -> None:
        now = self.clock.now()
        mono = self.clock.monotonic()
        self.board.move(agent, AgentState.ON_CALL, mono)
        agent.call_id, agent.attempt_id = call.call_id, call.attempt_id
        agent.preview = agent.preview_call = None
        call.agent = agent
        call.state = CallState.BRIDGING
        with write_transaction(self.db) as conn:
            mark_call(conn, call.attempt_id, call_state="bridging", agent=agent.username,
                      answered_at=now)
            persist_state(conn, agent, now, self.node_id)
            # The contact is with an agent now: out of the lease pool until the disposition,
            # even if the conversation outlasts the lease.
            conn.execute(_CONNECT_CONTACT, {"contact_id": call.contact_id, "now": now})
        self.spawn(self._do_bridge(call, agent), name=f"bridge-{call.call_id}")

    async def _do_bridge(self, call: LiveCall, agent: AgentSession) -> None:
        try:
            await self.pbxs[call.pbx].connect_to_agent(call.call_id, agent.endpoint)
        except UnknownCall:
            pass  # the customer hung up meanwhile; the HANGUP event settles it
        except TelephonyError as exc:
            log.warning("bridging %s to %s failed: %s", call.call_id, agent.username, exc)
            self._bridge_failed(call, agent)

    def _bridge_failed(self, call: LiveCall, agent: AgentSession) -> None:
        """The agent's phone could not be reached. The agent is paused (the next call would
        fail the same way); the person goes to another agent within the connect limit, or
        hears the information message, like any live answer without an agent."""
        mono = self.clock.monotonic()
        now = self.clock.now()
        if agent.state is AgentState.ON_CALL and agent.call_id == call.call_id:
            self.board.move(agent, AgentState.WRAP_UP, mono)
            self.board.move(agent, AgentState.NOT_READY, mono, pause_code="phone-unreachable")
            with write_transaction(self.db) as conn:
                persist_state(conn, agent, now, self.node_id)
        if self.calls.get(call.call_id) is not call or call.state is not CallState.BRIDGING:
            return
        call.agent = None
        with write_transaction(self.db) as conn:
            mark_call(conn, call.attempt_id, call_state="waiting", agent=None)
            conn.execute(_UNCONNECT_CONTACT, {"contact_id": call.contact_id, "now": now})
        waited = mono - (call.live_since if call.live_since is not None else mono)
        other = self._agent_for(call)
        if other is not None and waited < self.connect_limit_s:
            self._bridge(call, other)
        elif waited < self.connect_limit_s:
            call.state = CallState.WAITING
            run = self._run(call.campaign_id)
            if run is not None:
                run.waiting.appendleft(call.call_id)
            self.spawn(self._connect_deadline(call, self.connect_limit_s - waited),
                       name=f"deadline-{call.call_id}")
        else:
            self._abandon(call, count=True)

    async def _connect_deadline(self, call: LiveCall, after_s: float | None = None) -> None:
        await self.clock.sleep(self.connect_limit_s if after_s is None else after_s)
        if call.state is CallState.WAITING and self.calls.get(call.call_id) is call:
            self._abandon(call, count=True)

    def _abandon(self, call: LiveCall, *, count: bool) -> None:
        run = self._run(call.campaign_id)
        call.state = CallState.ABANDONING
        call.ending_since = self.clock.monotonic()
        if run is not None:
            with contextlib.suppress(ValueError):
                run.waiting.remove(call.call_id)
            if count:
                run.stats.abandoned += 1
                run.pacer.observe_abandon()
        with write_transaction(self.db) as conn:
            mark_call(conn, call.attempt_id, call_state="abandoning")
        sound = run.abandon_message if run is not None else "paceline/abandon"
        self.spawn(self._play_and_hangup(call, sound), name=f"abandon-{call.call_id}")

    async def _play_and_hangup(self, call: LiveCall, sound: str | None) -> None:
        backend = self.pbxs[call.pbx]
        try:
            if sound:
                try:
                    await backend.play_and_hangup(call.call_id, sound)
                    return
                except UnknownCall:
                    raise
                except TelephonyError as exc:
                    # No message (a missing sound file, a refused redirect): the call must
                    # still end, not sit on an open, silent line.
                    log.warning("message %r for %s failed (%s); hanging up", sound,
                                call.call_id, exc)
            await backend.hangup(call.call_id)
        except UnknownCall:
            pass
        except TelephonyError as exc:
            log.warning("ending %s failed: %s", call.call_id, exc)

    def _machine(self, call: LiveCall, run: CampaignRun | None, mono: float) -> None:
        call.machine = True
        self._observe_ring(call, run, Outcome.MACHINE, mono)
        action = run.amd_action if run is not None else "hangup"
        if action == "agent":
            agent = self._agent_for(call)
            if agent is not None:
                call.live_since = mono
                self._bridge(call, agent)
                return
        call.state = CallState.MACHINE
        call.ending_since = mono
        with write_transaction(self.db) as conn:
            mark_call(conn, call.attempt_id, call_state="machine", answered_at=self.clock.now())
        sound = run.machine_message if run is not None and action == "message" else None
        self.spawn(self._play_and_hangup(call, sound), name=f"machine-{call.call_id}")

    def _hangup(self, call: LiveCall, run: CampaignRun | None, ev: CallEvent,
                mono: float) -> None:
        self.calls.pop(call.call_id, None)
        if run is not None:
            with contextlib.suppress(ValueError):
                run.waiting.remove(call.call_id)
        st = call.state
        reported = ev.outcome or Outcome.FAILED
        if st in (CallState.DIALING, CallState.RINGING):
            outcome = reported if ev.outcome is not None else Outcome.FAILED
            if outcome in (Outcome.HUMAN, Outcome.MACHINE):
                # Answered and gone before we heard ANSWERED: nobody was connected.
                outcome = Outcome.ABANDONED if outcome is Outcome.HUMAN else outcome
            self._observe_ring(call, run, outcome, mono)
        elif st is CallState.AMD:
            # Answered, gone before AMD could tell: no one was there to talk to.
            outcome = Outcome.MACHINE if reported is Outcome.MACHINE else Outcome.NO_ANSWER
            self._observe_ring(call, run, outcome, mono)
        elif st is CallState.WAITING:
            # A live answer that hung up before an agent came: counted against the cap, the
            # conservative reading of the rule.
            outcome = Outcome.ABANDONED
            if run is not None:
                run.stats.abandoned += 1
                run.pacer.observe_abandon()
        elif st is CallState.ABANDONING:
            outcome = Outcome.ABANDONED
        elif st is CallState.MACHINE:
            outcome = Outcome.MACHINE
        elif st is CallState.DANGLING:
            outcome = reported
        elif st is CallState.BRIDGING:
            # An agent was reserved, but the customer left before the bridge was made: nobody
            # talked. For a person that is an abandon (as for WAITING), not a call for the
            # agent to dispose of.
            outcome = Outcome.MACHINE if call.machine else Outcome.ABANDONED
            if run is not None and not call.machine:
                run.stats.abandoned += 1
                run.pacer.observe_abandon()
        elif st is CallState.IVR and call.in_ivr:
            # The person heard the flow: reached, like a call an agent took (the contact
            # stays `connected`, closed for the strategy as any live answer is).
            outcome = Outcome.HUMAN
            if run is not None and call.live_since is not None:
                run.pacer.observe_handle(mono - call.live_since)
        elif st is CallState.IVR:
            # Gone before the flow took the call: a live answer nobody (and nothing) spoke
            # to, counted like a person who hangs up while waiting for an agent.
            outcome = Outcome.ABANDONED
            if run is not None:
                run.stats.abandoned += 1
                run.pacer.observe_abandon()
        else:  # BRIDGED
            # A machine passed to an agent stays a machine in the record and the statistics.
            outcome = Outcome.MACHINE if call.machine else Outcome.HUMAN
        now = self.clock.now()
        agent = call.agent
        # `_bridge` / `_to_ivr` took the contact out of the pool as `connected`; nobody talked.
        unbridged = st is CallState.BRIDGING or (st is CallState.IVR and not call.in_ivr)
        with write_transaction(self.db) as conn:
            if st is CallState.AMD and call.answered is not None:
                # The record says what happened: answered (at that time), then nothing.
                mark_call(conn, call.attempt_id,
                          answered_at=now - timedelta(seconds=mono - call.answered))
            if unbridged:
                # Nobody talked: the contact goes back to the strategy like any other
                # unanswered attempt.
                conn.execute(_UNCONNECT_CONTACT, {"contact_id": call.contact_id, "now": now})
                if st is CallState.IVR:
                    mark_call(conn, call.attempt_id, connected_at=None)
            if st is CallState.DANGLING:
                conn.execute(
                    update(Attempt)
                    .where(Attempt.id == call.attempt_id)
                    .values(outcome=outcome.value, q850_cause=ev.cause, call_state="ended")
                )
                state = settle_contact(conn, call.contact_id, run.policy, now,
                                       reason="reconciled a late hang-up") \
                    if run is not None else None
            elif run is not None:
                state = finish_attempt(conn, call.attempt_id, outcome, now, run.policy,
                                       cause=ev.cause)
            else:
                conn.execute(
                    update(Attempt)
                    .where(Attempt.id == call.attempt_id, Attempt.outcome.is_(None))
                    .values(outcome=outcome.value, q850_cause=ev.cause, ended_at=now,
                            call_state="ended")
                )
                state = None
            if agent is not None and agent.state is AgentState.ON_CALL and unbridged:
                # The reserved agent never heard the call: straight back to ready.
                self.board.move(agent, AgentState.WRAP_UP, mono)
                self.board.move(agent, AgentState.READY, mono)
                persist_state(conn, agent, now, self.node_id)
            elif agent is not None and agent.state is AgentState.ON_CALL:
                self.board.move(agent, AgentState.WRAP_UP, mono)
                agent.call_id, agent.attempt_id = None, call.attempt_id
                agent.campaign_id = call.campaign_id
                persist_state(conn, agent, now, self.node_id)
            if agent is None and call.adopted_agent is not None and outcome is Outcome.HUMAN:
                self._abandon_by_agent(conn, call.attempt_id, call.adopted_agent, now,
                                       "the service restarted during the call; no wrap-up")
            outbox.enqueue(conn, "attempt.finished", outbox.attempt_payload(conn, call.attempt_id),
                           now, attempt_id=call.attempt_id)
        # The reserved agent is free again (the call failed, or it reached them).
        self._free_reserved(call)
        if agent is not None and unbridged and agent.state is AgentState.READY:
            self._offer(agent)
        log.debug("call %s ended %s (contact now %s)", call.call_id, outcome.value, state)

    # ---- housekeeping ---------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("housekeeping sweep failed")
            await self.clock.sleep(SWEEP_S)

    async def sweep(self) -> None:
        """Dangling calls, wrap-up timeouts, SMS expiry."""
        mono = self.clock.monotonic()
        now = self.clock.now()
        for call in list(self.calls.values()):
            run = self._run(call.campaign_id)
            limit = run.dangling_after_s if run is not None else 180.0
            if call.state in _RINGING and mono - call.placed > limit:
                self._dangle(call, run, now)
            elif call.state in (CallState.ABANDONING, CallState.MACHINE) and \
                    call.ending_since is not None and mono - call.ending_since > limit:
                # The message should have ended the call long ago: end it for sure.
                call.ending_since = mono
                self.spawn(self._play_and_hangup(call, None), name=f"end-{call.call_id}")
            elif call.state is CallState.DANGLING and call.dangling_since is not None and \
                    mono - call.dangling_since > limit:
                # No late hang-up came: let the strategy reschedule the contact.
                self.calls.pop(call.call_id, None)
                with write_transaction(self.db) as conn:
                    if run is not None:
                        settle_contact(conn, call.contact_id, run.policy, now,
                                       reason="dangling call never reported an end")
                    # Final now: the CRM hears of it once (a late hang-up would have reported
                    # the reconciled outcome instead).
                    outbox.enqueue(conn, "attempt.finished",
                                   outbox.attempt_payload(conn, call.attempt_id), now,
                                   attempt_id=call.attempt_id)
        for agent in list(self.board.agents.values()):
            if agent.state is AgentState.WRAP_UP and agent.wrap_started is not None:
                run = self._run(agent.campaign_id)
                limit = run.wrapup_timeout_s if run is not None else 600.0
                if mono - agent.wrap_started > limit:
                    self._close_without_disposition(agent, "wrap-up timed out")
        if self.ownership is not None and mono - self._last_heartbeat >= HEARTBEAT_S:
            from dialer.nodes import heartbeat

            first = self._last_heartbeat == -math.inf
            self._last_heartbeat = mono
            info = {"pbxs": sorted(self.pbxs), "calls": len(self.calls),
                    "campaigns": sorted(self.campaigns)}
            await asyncio.to_thread(heartbeat, self.db, self.node_id, now, info, starting=first)
        if self.ownership is not None and mono - self._last_reap >= REAP_S and self.campaigns:
            self._last_reap = mono
            reaped = await asyncio.to_thread(self._reap_orphans, now)
            if reaped:
                log.warning("closed %d attempts left in flight by nodes that died", reaped)
        if self.sms is not None and mono - self._last_sms_expiry >= self.sms_expiry_every_s:
            self._last_sms_expiry = mono
            await asyncio.to_thread(self.sms.expire, now)

    def _reap_orphans(self, now: datetime) -> int:
        """Close the unanswered attempts that a dead node left in flight in our campaigns.

        A node that died for good never reconciles its calls. Once its heartbeat is stale and
        the campaign's lease time has passed since the originate, such a call cannot be
        ringing any more (the ring timeout is far shorter) and its contact went back to the
        pool when the lease expired: the attempt is closed as `dangling` so that the records
        and the CRM see an end. Calls that had reached an agent are left alone: the
        conversation may still go on at that node's PBX, and the node's restart (same node id)
        reconciles them with it.
        """
        from dialer.nodes import LIVE_WITHIN_S, live_nodes

        with write_transaction(self.db) as conn:
            alive = set(live_nodes(conn, now, 3 * LIVE_WITHIN_S)) | {self.node_id}
            rows = conn.execute(
                select(Attempt.id, Attempt.placed_at, Campaign.lease_ttl_s)
                .join(Campaign, Campaign.id == Attempt.campaign_id)
                .where(Attempt.outcome.is_(None),
                       Attempt.campaign_id.in_(list(self.campaigns)),
                       Attempt.node_id.not_in(alive),
                       Attempt.call_state.not_in(["bridging", "bridged"]))
            ).all()
            done = 0
            for r in rows:
                if r.placed_at > now - timedelta(seconds=r.lease_ttl_s):
                    continue
                done += conn.execute(
                    update(Attempt).where(Attempt.id == r.id, Attempt.outcome.is_(None))
                    .values(outcome=Outcome.DANGLING.value, ended_at=now, call_state="orphaned")
                ).rowcount
                outbox.enqueue(conn, "attempt.finished", outbox.attempt_payload(conn, r.id),
                               now, attempt_id=r.id)
            return done

    def _dangle(self, call: LiveCall, run: CampaignRun | None, now: datetime) -> None:
        call.state = CallState.DANGLING
        call.dangling_since = self.clock.monotonic()
        with write_transaction(self.db) as conn:
            conn.execute(
                update(Attempt)
                .where(Attempt.id == call.attempt_id, Attempt.outcome.is_(None))
                .values(outcome=Outcome.DANGLING.value, ended_at=now, call_state="dangling")
            )
            conn.execute(
                update(Contact)
                .where(Contact.id == call.contact_id,
                       Contact.state == ContactState.SENT_TO_DIALER.value)
                .values(state=ContactState.DANGLING.value, leased_by=None,
                        lease_expires_at=None, leased_from=None, updated_at=now,
                        state_reason="no result from the PBX in time; waiting to reconcile")
            )
        self.spawn(self._play_and_hangup(call, None), name=f"dangling-{call.call_id}")

    # ---- agents ---------------------------------------------------------------------------

    def _agent(self, username: str) -> AgentSession:
        agent = self.board.agents.get(username)
        if agent is None:
            with self.db.connect() as conn:
                found = load_agents(conn, [username])
            if not found:
                raise AgentError(f"agent {username!r}: no such agent")
            agent = found[0]
            if agent.state is not AgentState.LOGGED_OUT:
                self._check_not_elsewhere(username)
            agent.state = AgentState.LOGGED_OUT if agent.state is AgentState.LOGGED_OUT \
                else AgentState.NOT_READY
            self.board.add(agent)
        return agent

    def _check_not_elsewhere(self, username: str) -> None:
        """An agent logged in on another node that is alive stays that node's: two nodes
        routing calls to one phone would put two customers on it."""
        from dialer.nodes import LIVE_WITHIN_S, live_nodes

        with self.db.connect() as conn:
            node = conn.scalar(select(Agent.node_id).where(Agent.username == username))
            if node is None or node == self.node_id:
                return
            if node in live_nodes(conn, self.clock.now(), LIVE_WITHIN_S):
                raise AgentError(f"agent {username!r} is logged in on node {node!r}; log out "
                                 "there first")

    def _persist(self, agent: AgentSession, before: AgentSession | None = None) -> None:
        """Write the agent's new state; if that fails, the board goes back to `before`.

        The board and the database must not disagree: an agent whose `ready` could not be
        written must not be routed calls.
        """
        try:
            with write_transaction(self.db) as conn:
                persist_state(conn, agent, self.clock.now(), self.node_id)
        except Exception:
            if before is not None:
                agent.__dict__.update(before.__dict__)
            raise

    def login(self, username: str, campaign_id: int | None = None) -> AgentSession:
        """Log an agent in to a campaign (the first running one assigned to them if None).

        The agent starts `not_ready`; a recovered agent (after a restart) is already logged
        in and stays paused until `ready`.
        """
        agent = self._agent(username)
        if agent.state in (AgentState.ON_CALL, AgentState.WRAP_UP) or agent.preview is not None:
            raise AgentError(f"agent {username!r} is busy ({agent.state.value}); log in to "
                             "another campaign after the call")
        if campaign_id is None:
            for candidate in self.campaigns.values():
                if candidate.assignment.allows(agent):
                    campaign_id = candidate.id
                    break
        if campaign_id is not None:
            run = self.campaigns.get(campaign_id)
            name: str | None
            if run is not None:
                assignment, name = run.assignment, run.name
            else:
                # Not paced here (yet): the assignment still decides who may log in to it.
                with self.db.connect() as conn:
                    name = conn.scalar(select(Campaign.name).where(Campaign.id == campaign_id))
                    if name is None:
                        raise AgentError(f"campaign {campaign_id}: no such campaign")
                    assignment = load_assignment(conn, campaign_id)
            if not assignment.allows(agent):
                raise AgentError(f"agent {username!r} is not assigned to campaign {name!r}")
        if agent.state is AgentState.LOGGED_OUT:
            self.board.move(agent, AgentState.NOT_READY, self.clock.monotonic(),
                            pause_code="login")
        agent.campaign_id = campaign_id
        self._persist(agent)
        return agent

    def ready(self, username: str) -> None:
        agent = self._agent(username)
        if agent.state is AgentState.READY:
            return
        self._not_in_wrap_up(agent)
        if agent.campaign_id is None:
            raise AgentError(f"agent {username!r} is not logged in to a campaign")
        before = copy.copy(agent)
        self.board.move(agent, AgentState.READY, self.clock.monotonic())
        self._persist(agent, before)
        self._offer(agent)

    def pause(self, username: str, code: str = "break") -> None:
        agent = self._agent(username)
        if not code or len(code) > PAUSE_CODE_CHARS or not code.isprintable():
            raise AgentError(f"code: a pause code of 1 to {PAUSE_CODE_CHARS} printable "
                             f"characters, got {code[:40]!r}")
        self._not_in_wrap_up(agent)
        if agent.preview_call is not None:
            raise AgentError(f"agent {username!r}: a call is being placed for them")
        self._release_preview(agent)
        before = copy.copy(agent)
        if agent.state is AgentState.NOT_READY:
            agent.pause_code = code
        else:
            self.board.move(agent, AgentState.NOT_READY, self.clock.monotonic(), pause_code=code)
        self._persist(agent, before)

    @staticmethod
    def _not_in_wrap_up(agent: AgentSession) -> None:
        # Leaving wrap-up any other way than a disposition (or giving it up, which records
        # the attempt as abandoned by agent) would strand the contact in `connected`.
        if agent.state is AgentState.WRAP_UP:
            raise AgentError(f"agent {agent.username!r}: finish the wrap-up with a disposition "
                             "first")

    def _release_preview(self, agent: AgentSession) -> None:
        """Give a previewed, not yet dialed contact back to the pool."""
        if agent.preview is not None and agent.preview_call is None:
            lease, agent.preview = agent.preview, None
            release_lease(self.db, lease.contact_id, self.node_id, now=self.clock.now())

    def logout(self, username: str) -> None:
        agent = self._agent(username)
        if agent.state is AgentState.ON_CALL or agent.preview_call is not None:
            raise AgentError(f"agent {username!r} is on a call; hang up first")
        self._release_preview(agent)
        if agent.state is AgentState.WRAP_UP:
            self._close_without_disposition(agent, "agent logged out during wrap-up")
        if agent.state is not AgentState.LOGGED_OUT:
            if agent.state is AgentState.READY:
                self.board.move(agent, AgentState.NOT_READY, self.clock.monotonic())
            self.board.move(agent, AgentState.LOGGED_OUT, self.clock.monotonic())
            self._persist(agent)

    def dispose(self, username: str, wrap: Any, *, then_ready: bool = True) -> Any:
        """Save the agent's disposition for the call they wrap up; they go ready (or paused).

        `wrap` is a `dialer.wrapup.WrapUp`. Raises `AgentError` if the agent is not in
        wrap-up, `dialer.wrapup.WrapUpError` (naming the field) for a bad disposition.
        """
        from dialer.wrapup import apply_disposition

        agent = self._agent(username)
        if agent.state is not AgentState.WRAP_UP or agent.attempt_id is None:
            raise AgentError(f"agent {username!r} has no call to wrap up")
        mono = self.clock.monotonic()
        now = self.clock.now()
        handle = mono - (agent.busy_since if agent.busy_since is not None else mono)
        with write_transaction(self.db) as conn:
            result = apply_disposition(conn, attempt_id=agent.attempt_id, agent=username,
                                       wrap=wrap, now=now)
            self.board.move(agent, AgentState.READY if then_ready else AgentState.NOT_READY,
                            mono, pause_code=None if then_ready else "after-call")
            persist_state(conn, agent, now, self.node_id)
        run = self._run(agent.campaign_id)
        if run is not None:
            run.pacer.observe_handle(handle)
        if then_ready:
            self._offer(agent)
        return result

    def _close_without_disposition(self, agent: AgentSession, why: str) -> None:
        mono = self.clock.monotonic()
        now = self.clock.now()
        attempt_id = agent.attempt_id
        self.board.move(agent, AgentState.NOT_READY, mono, pause_code="no-disposition")
        with write_transaction(self.db) as conn:
            if attempt_id is not None:
                self._abandon_by_agent(conn, attempt_id, agent.username, now, why)
            persist_state(conn, agent, now, self.node_id)

    @staticmethod
    def _abandon_by_agent(conn: Any, attempt_id: int, username: str, now: datetime,
                          why: str) -> None:
        from dialer.wrapup import WrapUpError, abandon_by_agent

        try:
            abandon_by_agent(conn, attempt_id=attempt_id, agent=username, now=now, reason=why)
        except WrapUpError as exc:
            # Already disposed or abandoned (a retry after a crash): nothing to undo.
            log.info("agent %s: attempt %s not abandoned: %s", username, attempt_id, exc)

    def _offer(self, agent: AgentSession) -> None:
        """An agent became ready: give them the oldest live answer waiting, if any."""
        run = self._run(agent.campaign_id)
        if run is None:
            return
        while run.waiting:
            call = self.calls.get(run.waiting.popleft())
            if call is not None and call.state is CallState.WAITING:
                self._bridge(call, agent)
                return

    # ---- agent call control ---------------------------------------------------------------

    def _agent_call(self, username: str) -> LiveCall:
        agent = self._agent(username)
        call = self.calls.get(agent.call_id or "")
        if agent.state is not AgentState.ON_CALL or call is None:
            raise AgentError(f"agent {username!r} is not on a call")
        return call

    async def hold(self, username: str) -> None:
        """Put the agent's customer on music on hold."""
        call = self._agent_call(username)
        await self.pbxs[call.pbx].hold(call.call_id)

    async def unhold(self, username: str) -> None:
        call = self._agent_call(username)
        await self.pbxs[call.pbx].unhold(call.call_id)

    async def transfer(self, username: str, target: str, *, attended: bool = False) -> None:
        """Send the agent's customer to `target`; the agent goes to wrap-up when it is done.

        An attended transfer lets the agent talk to the target first; the PBX completes it
        when the agent hangs up, so it runs in the background (its TRANSFERRED event, or a
        failure in the log, tells the outcome).
        """
        call = self._agent_call(username)
        backend = self.pbxs[call.pbx]
        if not attended:
            await backend.blind_transfer(call.call_id, target)
            return

        async def consult() -> None:
            try:
                await backend.attended_transfer(call.call_id, target)
            except TelephonyError as exc:
                log.warning("attended transfer of %s to %s failed: %s", call.call_id, target,
                            exc)

        self.spawn(consult(), name=f"atxfer-{call.call_id}")

    # ---- preview --------------------------------------------------------------------------

    async def preview_next(self, username: str) -> LeasedContact | None:
        """Preview mode: lease the next contact for this agent, who sees it before dialing."""
        agent = self._agent(username)
        if agent.state is not AgentState.READY or agent.campaign_id is None:
            raise AgentError(f"agent {username!r} must be ready to preview a contact")
        if agent.preview is not None:
            return agent.preview
        now = self.clock.now()
        campaign_id = agent.campaign_id

        def lease() -> list[LeasedContact]:
            # The agent's own due private callbacks come first, then the campaign's pool.
            return lease_private_callbacks(
                self.db, campaign_id, username, 1, now, self.node_id
            ) or lease_due_contacts(self.db, campaign_id, 1, now, self.node_id)

        leased = await asyncio.to_thread(lease)
        if not leased:
            return None
        if agent.state is not AgentState.READY or agent.preview is not None:
            # A live answer reached them meanwhile (or a second click won): hand it back.
            await asyncio.to_thread(release_lease, self.db, leased[0].contact_id, self.node_id,
                                    now=now)
            return agent.preview
        agent.preview = leased[0]
        return agent.preview

    async def preview_skip(self, username: str) -> None:
        """Hand the previewed contact back unused."""
        agent = self._agent(username)
        if agent.preview is not None:
            lease, agent.preview = agent.preview, None
            await asyncio.to_thread(release_lease, self.db, lease.contact_id, self.node_id,
                                    now=self.clock.now())

    async def preview_dial(self, username: str) -> str:
        """Dial the previewed contact for this agent; returns the call id."""
        agent = self._agent(username)
        lease = agent.preview
        if lease is None:
            raise AgentError(f"agent {username!r} has no previewed contact to dial")
        if agent.preview_call is not None:
            raise AgentError(f"agent {username!r}: the previewed contact is being dialed")
        if agent.state is not AgentState.READY:
            raise AgentError(f"agent {username!r} must be ready to dial ({agent.state.value})")
        run = self.campaigns.get(lease.campaign_id)
        up = [n for n, b in self.pbxs.items() if b.connected]
        if run is None or not up:
            raise AgentError("the campaign is not running on this node or no PBX is up")
        return await self._dial_for(agent, run, lease, up)

    # ---- status ---------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        mono = self.clock.monotonic()
        by_state: dict[str, int] = {}
        for c in self.calls.values():
            by_state[c.state.value] = by_state.get(c.state.value, 0) + 1
        campaigns = []
        for run in self.campaigns.values():
            live, abandons = run.pacer.window_counts(mono)
            campaigns.append({
                "id": run.id, "name": run.name, "mode": run.mode.value,
                "originated": run.stats.originated, "live": run.stats.live,
                "abandoned": run.stats.abandoned,
                "abandon_rate": run.stats.abandoned / run.stats.live if run.stats.live else 0.0,
                "window_abandon_rate": abandons / live if live else 0.0,
            })
        recent = [(t, n) for t, n in self._rate if mono - t <= 10.0]
        rate = sum(n for _, n in recent) / 10.0 if recent else 0.0
        return EngineStatus(
            calls_in_flight=len(self.calls),
            calls_by_state=by_state,
            agents_by_state=self.board.by_state(),
            campaigns=campaigns,
            originated=self.originated,
            originates_per_s=rate,
        )


class _Stop(Exception):
    """Raised inside the TaskGroup to leave it on `stop()`."""


def _default_pacer(mode: str, target: float, window_s: float) -> Pacer:
    return Pacer(mode=mode, target_abandon=target, window_s=window_s)


def _private_callback_owners(db: DbEngine, campaign_id: int, now: datetime) -> list[str]:
    """Agents with a private callback of the campaign due now."""
    with db.connect() as conn:
        return [str(a) for a in conn.scalars(
            select(Contact.callback_agent).distinct().where(
                Contact.campaign_id == campaign_id,
                Contact.state == ContactState.CALLBACK_SCHEDULED.value,
                Contact.callback_agent.is_not(None),
                Contact.due_at <= now,
            )
        )]


def campaign_counts(db: DbEngine, campaign_id: int) -> dict[str, int]:
    """Contacts of a campaign by state (for summaries)."""
    with db.connect() as conn:
        return {
            s: int(n)
            for s, n in conn.execute(
                select(Contact.state, func.count())
                .where(Contact.campaign_id == campaign_id)
                .group_by(Contact.state)
            )
        }


__all__ = [
    "CallState",
    "CampaignRun",
    "Engine",
    "EngineStatus",
    "LiveCall",
    "campaign_counts",
]
