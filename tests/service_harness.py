"""A harness for tests that run `paceline run` as real processes: crash and multi-node tests.

The engines run as subprocesses (`python -m dialer.cli run --config …`) so a test can kill them
with SIGKILL; the emulators run inside the test process (`sim.pbx.runner.run_pbx`) so the test
can read what each PBX really did. Everything shares one virtual time line: every node gets the
same `[clock]` start and anchor (`dialer.clock.ScaledClock`), and the emulators run at the same
time scale, so virtual time goes on across a kill and a restart.

Pieces:
- `VirtualTime`: the test's view of the shared clock, and conversions from the emulator's
  event-loop times to virtual UTC;
- `NodeSpec` / `write_config` / `NodeProcess`: one node's configuration and process (start,
  SIGKILL, SIGTERM, status file, log tail);
- `stamp_originates`: records when the emulator got each Originate (its `CallRecord` keeps
  answer and hang-up times only);
- `wait_until`: poll a condition without blocking the emulators' event loop;
- the database checks, each returning a list of problems (see `engine_harness.assert_no_problems`).

Every waiting helper yields to the event loop: the emulators live on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, SupportsIndex

from sqlalchemy import Engine as DbEngine
from sqlalchemy import select

from dialer.db.models import Agent, AgentStateLog, Attempt, Contact
from dialer.domain import ContactState, Outcome
from sim.pbx.core import CallRecord
from sim.pbx.runner import RunningPbx
from strategies.model import Strategy

#: The repository root: the node processes run from it, with its packages importable.
ROOT = Path(__file__).resolve().parent.parent
#: Contact states a settled campaign may not leave anything in.
OPEN_STATES = frozenset({ContactState.PENDING, ContactState.SENT_TO_DIALER, ContactState.DANGLING})


def free_port() -> int:
    """A TCP port that was free a moment ago (for a node's HTTP API)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- time ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VirtualTime:
    """One virtual time line for the test, its emulators and every node process.

    `anchor` is the wall-clock epoch second at which virtual time was `start`; nodes get both
    in their `[clock]` section. The emulators' `CallRecord` times are event-loop seconds:
    `from_loop` turns them into virtual UTC (the loop-to-wall offset is taken at creation).
    """

    scale: float
    start: datetime
    anchor: float
    loop_offset: float  # wall epoch seconds minus loop seconds

    @classmethod
    def create(cls, scale: float, start: datetime) -> VirtualTime:
        loop = asyncio.get_running_loop()
        return cls(scale, start, time.time(), time.time() - loop.time())

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.anchor) / self.scale)

    def from_loop(self, t: float) -> datetime:
        return self.start + timedelta(seconds=(t + self.loop_offset - self.anchor) / self.scale)

    def to_loop(self, when: datetime) -> float:
        return (when - self.start).total_seconds() * self.scale + self.anchor - self.loop_offset

    def loop_now(self) -> float:
        return asyncio.get_running_loop().time()


# ---- emulator ---------------------------------------------------------------------------------


class _StampedCalls(list[CallRecord]):
    """The emulator's list of Originates, noting the event-loop time each one arrived."""

    def __init__(self, existing: Iterable[CallRecord], placed: dict[int, float]) -> None:
        super().__init__(existing)
        self.placed = placed

    def append(self, record: CallRecord, /) -> None:
        self.placed[id(record)] = asyncio.get_running_loop().time()
        super().append(record)

    def insert(self, index: SupportsIndex, record: CallRecord, /) -> None:
        raise NotImplementedError("the emulator only appends Originates")


@dataclass
class OriginateTimes:
    """When the emulator received each Originate (event-loop seconds), by record."""

    placed: dict[int, float] = field(default_factory=dict)

    def of(self, record: CallRecord) -> float | None:
        return self.placed.get(id(record))


def stamp_originates(pbx: RunningPbx) -> OriginateTimes:
    """Start noting Originate arrival times on this (AMI) emulator. Call before any dialing.

    `sim.pbx.core.CallRecord` keeps the answer and hang-up times of a call but not when it was
    placed; the no-two-live-calls check needs the whole originate..hang-up interval.
    """
    times = OriginateTimes()
    core = pbx.ami.pbx
    core.calls = _StampedCalls(core.calls, times.placed)
    return times


def live_records(pbx: RunningPbx) -> list[CallRecord]:
    """Customer calls the emulator has not hung up yet."""
    return [r for r in pbx.ami.calls if r.kind is not None and not r.ended]


# ---- node processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """What one `paceline run` process is given (see `dialer.service` for the keys)."""

    node_id: str
    database: str
    ami_port: int
    workdir: Path
    time: VirtualTime
    agents: int = 20
    prefix: str = "sim"
    groups: tuple[str, ...] = ()
    seed: int = 0
    wrap_s: tuple[float, float] = (5.0, 20.0)
    tick_s: float = 1.0
    http_port: int | None = None

    @property
    def config_file(self) -> Path:
        return self.workdir / f"{self.node_id}.toml"

    @property
    def status_file(self) -> Path:
        return self.workdir / f"{self.node_id}.status.json"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.node_id}.log"


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def write_config(spec: NodeSpec) -> Path:
    """Write the node's TOML run configuration; returns its path."""
    lines = [
        f"node_id = {_toml_str(spec.node_id)}",
        f"database = {_toml_str(spec.database)}",
        f"tick_s = {spec.tick_s!r}",
        f"status_file = {_toml_str(str(spec.status_file))}",
        "[[pbx]]",
        'name = "pbx1"',
        'backend = "ami"',
        'host = "127.0.0.1"',
        f"port = {spec.ami_port}",
        'username = "dialer"',
        'secret = "dialer"',
        'trunk = "PJSIP/{number}@trunk"',
        "[sim]",
        f"agents = {spec.agents}",
        f"prefix = {_toml_str(spec.prefix)}",
        f"groups = [{', '.join(_toml_str(g) for g in spec.groups)}]",
        f"seed = {spec.seed}",
        f"wrap_s = [{spec.wrap_s[0]!r}, {spec.wrap_s[1]!r}]",
        "[clock]",
        f"scale = {spec.time.scale!r}",
        f"start = {_toml_str(spec.time.start.isoformat())}",
        f"anchor = {spec.time.anchor!r}",
    ]
    if spec.http_port is not None:
        lines += ["[http]", f'listen = "127.0.0.1:{spec.http_port}"']
    spec.workdir.mkdir(parents=True, exist_ok=True)
    spec.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return spec.config_file


class NodeProcess:
    """One node's `paceline run` process; restartable. Logs of every run go to one file."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.started_wall = 0.0
        self.runs = 0
        write_config(spec)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start the process (the previous one must have ended)."""
        if self.alive:
            raise RuntimeError(f"{self.spec.node_id} is running already")
        with contextlib.suppress(FileNotFoundError):
            self.spec.status_file.unlink()
        self.runs += 1
        with self.spec.log_file.open("ab") as log:
            log.write(f"\n==== run {self.runs} of {self.spec.node_id} ====\n".encode())
            log.flush()
            self.started_wall = time.time()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dialer.cli", "run", "--config", str(self.spec.config_file),
                "--log-level", "INFO", cwd=str(ROOT), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the node."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout_s`); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                await self.kill()
        return self.proc.returncode

    def status(self) -> dict[str, Any] | None:
        """The node's last status (`status_file`), or None before this run wrote one."""
        try:
            data = json.loads(self.spec.status_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.spec.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.alive else (
            f"exited {self.proc.returncode}" if self.proc is not None else "not started")
        return (f"--- {self.spec.node_id} ({state}); status {self.status()}\n"
                f"log tail:\n{self.log_tail()}")

    async def wait_started(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Until this run wrote its first status (the engine has recovered and started)."""
        async def ready() -> str | None:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"{self.spec.node_id} exited with {self.proc.returncode}:"
                                     f"\n{self.log_tail()}")
            return None if self.status() is not None else "no status file yet"

        await wait_until(ready, timeout_s, f"{self.spec.node_id} to start", self.describe)
        status = self.status()
        assert status is not None
        return status


async def wait_until(
    check: Callable[[], Awaitable[str | None]] | Callable[[], str | None],
    timeout_s: float,
    what: str,
    describe: Callable[[], str] | None = None,
    poll_s: float = 0.05,
) -> float:
    """Poll `check` (None: done; else why not yet) until done; returns the wall seconds taken.

    Fails after `timeout_s` with the last reason and `describe()` (node logs, say).
    """
    t0 = time.monotonic()
    why: str | None = "never checked"
    while True:
        got = check()
        why = await got if asyncio.iscoroutine(got) else got  # type: ignore[assignment]
        if why is None:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            extra = f"\n{describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}: "
                                 f"{why}{extra}")
        await asyncio.sleep(poll_s)


# ---- what the database holds ------------------------------------------------------------------


def open_attempts(db: DbEngine, node_id: str | None = None) -> list[Any]:
    """Attempts without an outcome (in flight), optionally of one node."""
    stmt = select(Attempt).where(Attempt.outcome.is_(None))
    if node_id is not None:
        stmt = stmt.where(Attempt.node_id == node_id)
    with db.connect() as conn:
        return list(conn.execute(stmt.order_by(Attempt.id)))


def logged_in_agents(db: DbEngine, node_id: str) -> dict[int, Any]:
    """Agents the node holds (not logged out), by id."""
    with db.connect() as conn:
        return {r.id: r for r in conn.execute(
            select(Agent).where(Agent.node_id == node_id, Agent.state != "logged_out"))}


def agent_log(db: DbEngine) -> dict[int, list[Any]]:
    """Every agent's state intervals, in order."""
    out: dict[int, list[Any]] = defaultdict(list)
    with db.connect() as conn:
        for r in conn.execute(select(AgentStateLog).order_by(AgentStateLog.started_at,
                                                            AgentStateLog.id)):
            out[r.agent_id].append(r)
    return out


def attempts_of(db: DbEngine, campaign_ids: Iterable[int] | None = None) -> list[Any]:
    """Attempts ordered by contact, placed_at, id."""
    stmt = select(Attempt)
    if campaign_ids is not None:
        stmt = stmt.where(Attempt.campaign_id.in_(list(campaign_ids)))
    with db.connect() as conn:
        return list(conn.execute(stmt.order_by(Attempt.contact_id, Attempt.placed_at,
                                               Attempt.id)))


def contacts_of(db: DbEngine, campaign_ids: Iterable[int]) -> dict[int, Any]:
    with db.connect() as conn:
        return {r.id: r for r in conn.execute(
            select(Contact).where(Contact.campaign_id.in_(list(campaign_ids))))}


def fmt(row: Any, *keys: str) -> str:
    return "{" + ", ".join(f"{k}={getattr(row, k)!r}" for k in keys) + "}"


A_KEYS = ("id", "contact_id", "number", "outcome", "call_state", "placed_at", "ended_at",
          "agent", "disposition", "node_id", "correlation_id")
C_KEYS = ("id", "state", "due_at", "attempt_count", "state_reason")


# ---- checks -----------------------------------------------------------------------------------


def check_settled(
    contacts: Mapping[int, Any], attempts: Sequence[Any], expected: Iterable[int],
    end: datetime,
) -> list[str]:
    """No contact lost: exactly the `expected` contacts, each in a terminal or scheduled state
    (never pending, leased or dangling), and every attempt has an outcome.

    Scheduled means due after `end` (a retry or a callback); `connected` needs a disposition
    on the contact's last attempt (else the conversation's result was lost).
    """
    problems: list[str] = []
    want = set(expected)
    if set(contacts) != want:
        problems.append(f"contacts changed: missing {sorted(want - set(contacts))[:10]}, "
                        f"unexpected {sorted(set(contacts) - want)[:10]}")
    last: dict[int, Any] = {}
    for a in attempts:
        last[a.contact_id] = a
        if a.outcome is None:
            problems.append(f"attempt without an outcome: {fmt(a, *A_KEYS)}")
    for cid, c in sorted(contacts.items()):
        state = ContactState(c.state)
        tail = last.get(cid)
        where = f"contact {fmt(c, *C_KEYS)}; last attempt " + (
            fmt(tail, *A_KEYS) if tail is not None else "none")
        if state in OPEN_STATES:
            problems.append(f"still {state.value}: {where}")
        elif state in (ContactState.NOT_CONNECTED, ContactState.CALLBACK_SCHEDULED):
            if c.due_at is None or c.due_at <= end:
                problems.append(f"{state.value} but not due after the end {end}: {where}")
        elif state is ContactState.CONNECTED:
            if tail is None or tail.disposition is None:
                problems.append(f"connected without a disposition: {where}")
        elif tail is None and state is not ContactState.DNC_LISTED:
            problems.append(f"{state.value} without any attempt: {where}")
    return problems


def check_retry_gaps(attempts: Sequence[Any], strategy: Strategy) -> list[str]:
    """No contact was dialed again within the strategy's retry delay for the earlier outcome:
    consecutive attempts of a contact are at least `retry_delay(outcome)` apart (placed_at)."""
    problems = []
    by_contact: dict[int, list[Any]] = defaultdict(list)
    for a in attempts:
        by_contact[a.contact_id].append(a)
    for atts in by_contact.values():
        atts.sort(key=lambda a: (a.placed_at, a.id))
        for prev, nxt in itertools.pairwise(atts):
            outcome = Outcome(prev.outcome) if prev.outcome is not None else None
            need = strategy.retry_delay(outcome)
            gap = nxt.placed_at - prev.placed_at
            if outcome is None or gap < need:
                problems.append(f"contact {prev.contact_id} dialed again after {gap} (the delay "
                                f"after {outcome} is {need}): {fmt(prev, *A_KEYS)} then "
                                f"{fmt(nxt, *A_KEYS)}")
    return problems


def check_attempts_never_overlap(attempts: Sequence[Any]) -> list[str]:
    """No contact had two attempts in flight at once (placed_at..ended_at, any node)."""
    problems = []
    by_contact: dict[int, list[Any]] = defaultdict(list)
    for a in attempts:
        by_contact[a.contact_id].append(a)
    for atts in by_contact.values():
        atts.sort(key=lambda a: (a.placed_at, a.id))
        for prev, nxt in itertools.pairwise(atts):
            if prev.ended_at is None or nxt.placed_at < prev.ended_at:
                problems.append(f"contact {prev.contact_id}: {fmt(nxt, *A_KEYS)} placed while "
                                f"{fmt(prev, *A_KEYS)} was in flight")
    return problems


def check_emulator_no_overlap(
    calls: Sequence[CallRecord], placed: OriginateTimes, contact_of_number: Mapping[str, int],
    vt: VirtualTime,
) -> list[str]:
    """By the emulators' own records, no contact ever had two calls up at once (originate to
    hang-up, any of its numbers); and every customer call ended."""
    problems = []
    by_contact: dict[int, list[tuple[float, float, CallRecord]]] = defaultdict(list)
    for rec in calls:
        if rec.kind is None:
            continue  # an agent leg or a local channel, not a customer call
        number = rec.dial_string.partition("/")[2].partition("@")[0]
        cid = contact_of_number.get(number)
        t0 = placed.of(rec)
        if cid is None or t0 is None:
            problems.append(f"emulator call to an unknown number or with no originate time: "
                            f"{rec}")
            continue
        if rec.ended_at is None:
            problems.append(f"emulator call never hung up: {rec}")
            continue
        by_contact[cid].append((t0, rec.ended_at, rec))
    for cid, spans in by_contact.items():
        spans.sort(key=lambda s: s[0])
        for (a0, a1, ra), (b0, _b1, rb) in itertools.pairwise(spans):
            if b0 < a1:
                problems.append(
                    f"contact {cid}: call {rb.channel_id} to {rb.dial_string} placed at "
                    f"{vt.from_loop(b0):%H:%M:%S.%f} while {ra.channel_id} "
                    f"({vt.from_loop(a0):%H:%M:%S.%f}..{vt.from_loop(a1):%H:%M:%S.%f}) was up")
    return problems


def contact_numbers(contacts: Mapping[int, Any]) -> dict[str, int]:
    """Every phone number of the contacts -> contact id."""
    out: dict[str, int] = {}
    for cid, c in contacts.items():
        for p in (c.phone1, c.phone2, c.phone3, c.phone4, c.phone5):
            if p:
                out[p] = cid
    return out
