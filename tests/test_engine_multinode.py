"""Several nodes: 3 `paceline run` processes, 3 emulators and 3 campaigns on one PostgreSQL.

Each node drives its own emulator (in this process) and its own simulated agents (prefixes
`na`, `nb`, `nc`); all share one database schema and three predictive campaigns. Checked:

- each campaign is paced by one node at a time: from the status files (the intervals in which
  nodes report a campaign as theirs never overlap) and from the attempts (the spans in which
  nodes placed calls for a campaign never overlap);
- after balancing, each node paces exactly one campaign;
- no contact is attempted twice at once: attempt intervals per contact across all nodes never
  overlap, and by the three emulators' own records no contact ever had two calls up at once;
- SIGKILL of one node: another node paces its campaign within 30 s (measured and asserted),
  and then places new calls for it.

Agents log in to the campaign their node paces when they start. Balancing can move a campaign
after that, and a node taking over a dead node's campaign has no agents in it, so the test
does what a supervisor does: it moves agents over the node's agent API (`[http]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import Engine as DbEngine
from sqlalchemy import func, select, update

from dialer.campaigns import save_strategy, set_campaign_state
from dialer.db import make_engine, migrate
from dialer.db.models import Attempt, Campaign
from dialer.domain import CampaignState, Outcome
from sim.pbx.core import CallRecord
from sim.pbx.runner import RunningPbx, run_pbx
from strategies.model import Step, Strategy
from tests.engine_harness import START, assert_no_problems, e2e_population
from tests.factories import add_contacts, make_campaign
from tests.service_harness import (
    A_KEYS,
    NodeProcess,
    NodeSpec,
    OriginateTimes,
    VirtualTime,
    attempts_of,
    check_emulator_no_overlap,
    contact_numbers,
    contacts_of,
    fmt,
    free_port,
    stamp_originates,
    wait_until,
)

#: 20 virtual seconds a wall second (gentler than the crash test: 3 engines share 2 cores).
SCALE = 0.05
CONTACTS = 80  # per campaign: few enough that contacts are dialed again within the run
AGENTS = 6  # per node
GROUP = "multinode"
NODES = ("a", "b", "c")
FAILOVER_LIMIT_S = 30.0
#: Wall seconds the balanced nodes dial before one is killed, and the new owner after.
RUN_S = 6.0
MIN_NEW_ATTEMPTS = 5

STRATEGY = Strategy(
    name="multinode-test",
    steps=(Step(phone=1, tries=3),),
    retry_delays={
        Outcome.BUSY: timedelta(minutes=1),
        Outcome.NO_ANSWER: timedelta(minutes=2),
        Outcome.MACHINE: timedelta(minutes=3),
        Outcome.REJECTED: timedelta(minutes=3),
        Outcome.CONGESTION: timedelta(minutes=1),
        Outcome.FAILED: timedelta(minutes=3),
        Outcome.ABANDONED: timedelta(minutes=3),
        Outcome.DANGLING: timedelta(minutes=3),
    },
    max_attempts=3,
    max_attempts_per_day=3,
)


def setup(db: DbEngine, now: datetime) -> list[int]:
    """Three running predictive campaigns; numbers are unique across all of them."""
    save_strategy(db, STRATEGY, now)
    ids = []
    for c in range(3):
        cid = make_campaign(db, now, name=f"multinode-{c + 1}", dial_mode="predictive",
                            strategy=STRATEGY.name, agent_groups=[GROUP], abandon_target=0.03)
        with db.begin() as conn:
            conn.execute(update(Campaign).where(Campaign.id == cid)
                         .values(amd=True, amd_action="hangup"))
        rows = [{"phone1": f"+1213{c + 1}{i:06d}", "tz": "America/New_York"}
                for i in range(CONTACTS)]
        add_contacts(db, cid, rows, now)
        set_campaign_state(db, cid, CampaignState.RUNNING, now)
        ids.append(cid)
    return ids


class StatusLog:
    """Samples every node's status file; keeps each distinct report (node, at, owned)."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        self.reports: dict[tuple[str, str], frozenset[int]] = {}

    def sample(self) -> None:
        for n in self.nodes:
            s = n.status()
            if s is not None:
                self.reports[(n.spec.node_id, str(s["at"]))] = frozenset(s["owned"])

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)

    def owners(self, campaign_id: int) -> set[str]:
        """Nodes whose latest report claims the campaign."""
        latest: dict[str, tuple[str, frozenset[int]]] = {}
        for (node, at), owned in self.reports.items():
            if node not in latest or at > latest[node][0]:
                latest[node] = (at, owned)
        return {node for node, (_, owned) in latest.items() if campaign_id in owned}

    def intervals(self) -> dict[int, list[tuple[datetime, datetime, str]]]:
        """Per campaign: (first, last report time, node) of each run of reports claiming it."""
        out: dict[int, list[tuple[datetime, datetime, str]]] = defaultdict(list)
        by_node: dict[str, list[tuple[datetime, frozenset[int]]]] = defaultdict(list)
        for (node, stamp), owned in self.reports.items():
            by_node[node].append((datetime.fromisoformat(stamp), owned))
        for node, reports in by_node.items():
            reports.sort(key=lambda r: r[0])
            open_: dict[int, tuple[datetime, datetime]] = {}
            for when, claimed in reports:
                for cid in list(open_):
                    if cid not in claimed:
                        out[cid].append((*open_.pop(cid), node))
                for cid in claimed:
                    first = open_.get(cid, (when, when))[0]
                    open_[cid] = (first, when)
            for cid, (first, last) in open_.items():
                out[cid].append((first, last, node))
        return out


def check_one_owner(log: StatusLog, slack: timedelta = timedelta(milliseconds=50)) -> list[str]:
    """No two nodes reported one campaign as theirs over overlapping times.

    A report is the engine's campaign set at the moment it was written, so the span between a
    node's first and last report claiming a campaign lies within its real ownership: spans that
    overlap (by more than `slack`, for the write itself) prove two owners at once.
    """
    problems = []
    for cid, spans in log.intervals().items():
        spans.sort()
        for i, (a0, a1, na) in enumerate(spans):
            for b0, b1, nb in spans[i + 1:]:
                if na != nb and b0 < a1 - slack:
                    problems.append(f"campaign {cid}: {na} reported it {a0:%H:%M:%S.%f}.."
                                    f"{a1:%H:%M:%S.%f} and {nb} {b0:%H:%M:%S.%f}.."
                                    f"{b1:%H:%M:%S.%f}")
    return problems


def check_placement_spans(attempts: list[Any]) -> list[str]:
    """Per campaign, the spans in which each node placed calls never overlap."""
    spans: dict[tuple[int, str], list[datetime]] = defaultdict(list)
    for a in attempts:
        spans[(a.campaign_id, a.node_id)].append(a.placed_at)
    problems = []
    by_campaign: dict[int, list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for (cid, node), times in spans.items():
        by_campaign[cid].append((min(times), max(times), node))
    for cid, lst in by_campaign.items():
        lst.sort()
        for (a0, a1, na), (b0, b1, nb) in itertools.pairwise(lst):
            if b0 <= a1:
                problems.append(f"campaign {cid}: {na} placed calls {a0:%H:%M:%S.%f}.."
                                f"{a1:%H:%M:%S.%f} and {nb} {b0:%H:%M:%S.%f}..{b1:%H:%M:%S.%f}")
    return problems


def check_no_concurrent_attempts(attempts: list[Any], ends: dict[str, datetime | None]
                                 ) -> list[str]:
    """Attempt intervals per contact (placed_at..ended_at, any node) never overlap.

    An attempt left without an outcome (its node was killed, or stopped with the call up)
    lasts until its PBX call ended (`ends`, by call id; None: still up at the end).
    """
    far = datetime.max.replace(tzinfo=START.tzinfo)
    by_contact: dict[int, list[Any]] = defaultdict(list)
    for a in attempts:
        by_contact[a.contact_id].append(a)
    problems = []
    for atts in by_contact.values():
        atts.sort(key=lambda a: (a.placed_at, a.id))
        for prev, nxt in itertools.pairwise(atts):
            end = prev.ended_at
            if end is None:
                end = ends.get(prev.correlation_id) or far
            if nxt.placed_at < end:
                problems.append(f"contact {prev.contact_id}: {fmt(nxt, *A_KEYS)} placed while "
                                f"{fmt(prev, *A_KEYS)} was in flight (until {end})")
    return problems


async def move_agents(node: NodeProcess, usernames: list[str], campaign_id: int,
                      timeout_s: float = 20.0) -> None:
    """Log agents in to `campaign_id` on the node's agent API, as a supervisor moves people.

    The node refuses (409) to move an agent who is on a call or in wrap-up; such an agent is
    asked again until the move lands on a ready or paused agent.
    """
    assert node.spec.http_port is not None
    todo = list(usernames)
    last: dict[str, str] = {}
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while todo:
            for u in list(todo):
                url = f"http://127.0.0.1:{node.spec.http_port}/agents/{u}/login"
                async with http.post(url, json={"campaign": campaign_id}) as resp:
                    body = await resp.json()
                    busy = resp.status == 409 and "busy" in str(body.get("error"))
                    assert resp.status == 200 or busy, \
                        f"{url}: {resp.status} {body}\n{node.describe()}"
                last[u] = str(body.get("state") or body.get("error"))
                if last[u] in ("ready", "not_ready"):
                    todo.remove(u)
            if todo:
                if time.monotonic() - t0 > timeout_s:
                    raise AssertionError(f"could not move {todo} to campaign {campaign_id} "
                                         f"on {node.spec.node_id}: states {last}")
                await asyncio.sleep(0.1)


def placed_by(db: DbEngine, campaign_id: int, node_id: str, since: datetime) -> int:
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Attempt).where(
            Attempt.campaign_id == campaign_id, Attempt.node_id == node_id,
            Attempt.placed_at > since)) or 0)


def redialed_by(db: DbEngine, campaign_id: int, node_id: str, earlier_node: str) -> int:
    """Attempts `node_id` placed for contacts that `earlier_node` had attempted before."""
    with db.connect() as conn:
        rows = conn.execute(select(Attempt.contact_id, Attempt.node_id, Attempt.placed_at)
                            .where(Attempt.campaign_id == campaign_id,
                                   Attempt.node_id.in_([node_id, earlier_node]))).all()
    first_by_earlier: dict[int, datetime] = {}
    for r in rows:
        if r.node_id == earlier_node:
            seen = first_by_earlier.get(r.contact_id)
            first_by_earlier[r.contact_id] = r.placed_at if seen is None else min(seen, r.placed_at)
    return sum(1 for r in rows if r.node_id == node_id and r.contact_id in first_by_earlier
               and r.placed_at > first_by_earlier[r.contact_id])


@pytest.mark.slow
@pytest.mark.postgres
async def test_three_nodes_share_campaigns_and_fail_over(pg_schema: str, tmp_path: Path) -> None:
    t_start = time.monotonic()
    db = make_engine(pg_schema)
    migrate(db)
    vt = VirtualTime.create(SCALE, START)
    campaigns = setup(db, vt.now())
    async with contextlib.AsyncExitStack() as stack:
        pbxs: list[RunningPbx] = []
        placed: list[OriginateTimes] = []
        for i in range(len(NODES)):
            pbx = await stack.enter_async_context(run_pbx(
                ami_port=0, population=e2e_population(), seed=11 + i, time_scale=SCALE))
            pbxs.append(pbx)
            placed.append(stamp_originates(pbx))
        nodes = [NodeProcess(NodeSpec(
            node_id=f"node-{x}", database=pg_schema, ami_port=pbxs[i].ami_port,
            workdir=tmp_path, time=vt, agents=AGENTS, prefix=f"n{x}", groups=(GROUP,),
            seed=i, http_port=free_port(),
        )) for i, x in enumerate(NODES)]

        def describe() -> str:
            return "\n".join(n.describe() for n in nodes)

        for n in nodes:
            stack.push_async_callback(n.kill)
        log = StatusLog(nodes)
        sampler = asyncio.create_task(log.run())
        stack.callback(sampler.cancel)

        # Start the nodes one after the other; each ends up with a campaign of its own.
        for n in nodes:
            await n.start()
            await n.wait_started()

            def owns_one(n: NodeProcess = n) -> str | None:
                s = n.status()
                return None if s and s["owned"] else f"owns nothing yet: {s}"

            await wait_until(owns_one, 30, f"{n.spec.node_id} to pace a campaign", describe)

        def balanced() -> str | None:
            log.sample()
            owned = {n.spec.node_id: (n.status() or {}).get("owned") for n in nodes}
            flat = [c for o in owned.values() for c in (o or [])]
            if all(o is not None and len(o) == 1 for o in owned.values()) \
                    and sorted(flat) == sorted(campaigns):
                return None
            return f"owned: {owned}"

        balance_s = await wait_until(balanced, 30, "one campaign per node", describe)
        owner = {(n.status() or {})["owned"][0]: n for n in nodes}
        # Agents work the campaign their node paces (balancing may have moved it).
        for cid, n in owner.items():
            await move_agents(n, [f"n{n.spec.node_id[-1]}{k:03d}" for k in range(1, AGENTS + 1)],
                              cid)
        await asyncio.sleep(RUN_S)
        for cid, n in owner.items():
            got = placed_by(db, cid, n.spec.node_id, vt.start)
            assert got > 0, f"campaign {cid}: no calls placed by its owner {n.spec.node_id}\n" \
                            f"{describe()}"

        # Kill the node that paces the first campaign; another must take it within 30 s.
        moved = campaigns[0]
        victim = owner[moved]
        survivors = [n for n in nodes if n is not victim]
        await victim.kill()
        killed_at = vt.now()

        def taken_over() -> str | None:
            log.sample()
            who = [n for n in survivors if moved in ((n.status() or {}).get("owned") or [])]
            return None if who else f"no survivor paces campaign {moved} yet"

        failover_s = await wait_until(taken_over, FAILOVER_LIMIT_S + 5, "the failover",
                                      describe, poll_s=0.02)
        new_owner = next(n for n in survivors if moved in (n.status() or {})["owned"])
        prefix = f"n{new_owner.spec.node_id[-1]}"
        await move_agents(new_owner, [f"{prefix}{k:03d}" for k in range(1, AGENTS // 2 + 1)],
                          moved)

        def progressing() -> str | None:
            # Enough new calls, and at least one to a contact the dead node had dialed: the
            # overlap checks below then compare the two nodes' attempts on one contact (with
            # 80 contacts the new owner may first dial the few the dead node never reached).
            got = placed_by(db, moved, new_owner.spec.node_id, killed_at)
            again = redialed_by(db, moved, new_owner.spec.node_id, victim.spec.node_id)
            if got >= MIN_NEW_ATTEMPTS and again:
                return None
            return f"{got} new attempts, {again} of contacts {victim.spec.node_id} had dialed"

        await wait_until(progressing, 30, f"new calls for campaign {moved} by "
                         f"{new_owner.spec.node_id}", describe)
        await asyncio.sleep(1.0)
        for n in survivors:
            code = await n.stop()
            assert code == 0, f"{n.spec.node_id} did not stop cleanly ({code})\n{describe()}"
        log.sample()
        sampler.cancel()
        calls: list[CallRecord] = [r for p in pbxs for r in p.ami.calls]
        errors = [e for p in pbxs for e in p.ami.pbx.errors]
        end_loop = vt.loop_now()
        # Customer calls still up (the killed node's, or left to the PBX at the stop) last
        # until now for the overlap checks.
        stamps = OriginateTimes({k: v for p in placed for k, v in p.placed.items()})
        for r in calls:
            if r.kind is not None and r.ended_at is None:
                r.ended_at = end_loop
    wall = time.monotonic() - t_start

    attempts = attempts_of(db, campaigns)
    contacts = contacts_of(db, campaigns)
    ends = {r.channel_id: vt.from_loop(r.ended_at) if r.ended_at is not None else None
            for r in calls if r.channel_id}
    by_node = Counter((a.campaign_id, a.node_id) for a in attempts)
    summary = (
        f"{len(attempts)} attempts {dict(by_node)}, {len(calls)} PBX calls, {wall:.1f} s wall; "
        f"balanced after {balance_s:.1f} s; killed {victim.spec.node_id} (campaign {moved}); "
        f"{new_owner.spec.node_id} took it over after {failover_s:.2f} s"
    )
    print(summary)
    assert not errors, f"emulator errors: {errors[:3]}"
    assert failover_s < FAILOVER_LIMIT_S, summary
    report = []
    for title, problems in [
        ("two nodes reported one campaign at once", check_one_owner(log)),
        ("two nodes placed calls of one campaign at once", check_placement_spans(attempts)),
        ("one contact attempted twice at once", check_no_concurrent_attempts(attempts, ends)),
        ("two calls of one contact up at once (emulators)",
         check_emulator_no_overlap(calls, stamps, contact_numbers(contacts), vt)),
    ]:
        try:
            assert_no_problems(title, problems, show=5)
        except AssertionError as exc:
            report.append(str(exc))
    assert not report, summary + "\n" + "\n".join(report)
    # The run tested what it claims: every node dialed, and contacts were dialed again.
    assert {a.node_id for a in attempts} == {n.spec.node_id for n in nodes}, summary
    assert len(attempts) > len(set(a.contact_id for a in attempts)), summary


# ---- the checks above can fail (fast, no database) --------------------------------------------


def test_one_owner_check_flags_overlapping_reports() -> None:
    log = StatusLog([])

    def at(s: float) -> str:
        return (START + timedelta(seconds=s)).isoformat()

    # a claims campaign 1 from 0 to 2 s; b already at 1.5 s: two owners at once.
    log.reports = {("a", at(0)): frozenset({1}), ("a", at(2)): frozenset({1}),
                   ("a", at(2.5)): frozenset(), ("b", at(1.5)): frozenset({1}),
                   ("b", at(3)): frozenset({1})}
    problems = check_one_owner(log)
    assert len(problems) == 1 and "campaign 1" in problems[0], problems
    log.reports[("b", at(1.5))] = frozenset()
    assert check_one_owner(log) == []


def test_concurrency_checks_flag_overlaps_across_nodes() -> None:
    from types import SimpleNamespace

    def att(aid: int, contact: int, campaign: int, node: str, placed: float,
            ended: float | None) -> Any:
        t = START + timedelta(seconds=placed)
        return SimpleNamespace(
            id=aid, contact_id=contact, campaign_id=campaign, node_id=node, number="+1",
            outcome=None if ended is None else "busy", call_state=None, placed_at=t,
            ended_at=None if ended is None else START + timedelta(seconds=ended), agent=None,
            disposition=None, correlation_id=f"c{aid}")

    # Node a's attempt 1 was left open (a killed); its PBX call ended at 50 s.
    rows = [att(1, 7, 1, "a", 0, None), att(2, 7, 1, "b", 60, 70), att(3, 8, 1, "a", 10, 20)]
    ends: dict[str, datetime | None] = {"c1": START + timedelta(seconds=50)}
    assert check_no_concurrent_attempts(rows, ends) == []
    ends["c1"] = START + timedelta(seconds=65)
    assert len(check_no_concurrent_attempts(rows, ends)) == 1
    assert check_placement_spans(rows) == []
    rows.append(att(4, 9, 1, "a", 61, 62))  # a placed a call for campaign 1 after b took it
    assert len(check_placement_spans(rows)) == 1
