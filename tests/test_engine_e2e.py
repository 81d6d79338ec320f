"""End to end: a predictive campaign of 2,000 contacts, 20 simulated agents, the emulator.

The engine dials over real AMI (or ARI) sockets to `sim.pbx`; the emulator's population decides
what every callee does, and the simulated agents take the calls and confirm dispositions. The
run goes on (virtual time, `ScaledClock` and the emulator's `time_scale` agree) until nothing
is in flight and nothing is due; retries due later stay scheduled. Then:

- every contact is in a terminal state, or a scheduled one its last attempt explains (the
  strategy's retry, a callback from an R disposition), never leased or dangling;
- the abandon rate over live answers, from the attempts table, is under the campaign target;
- every attempt row matches the emulator's record of that call: same call id, number, an
  outcome that fits the drawn behaviour, people bridged to the agent the row names,
  abandoned calls never bridged and given the information message;
- no contact had two attempts at once; each attempt has one `attempt.finished` outbox row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine as DbEngine
from sqlalchemy import insert, update

from dialer.db.models import Attempt, Contact, WebhookOutbox
from sim.pbx.core import CallRecord
from tests.engine_harness import (
    Scenario,
    Snapshot,
    abandon_kinds,
    abandon_stats,
    assert_no_problems,
    check_abandon_rate,
    check_attempts_against_emulator,
    check_contact_states,
    check_no_overlap,
    check_outbox,
    e2e_strategy,
    load_snapshot,
    outcome_counts,
    run_campaign,
    state_counts,
)

log = logging.getLogger(__name__)

#: Wall seconds per virtual second. 0.02: the 2 s connect limit is 40 ms of wall time, and a
#: 2,000-contact campaign (about 70 virtual minutes) takes 45-60 s on AMI. ARI connects a call
#: with four REST round trips where AMI needs two actions, so at 0.02 its bridging latency
#: (tens of ms of wall time on a loaded 2-core machine) becomes seconds of virtual time and
#: customers hang up before the bridge: ARI runs at 0.025. `PACELINE_E2E_TIME_SCALE` overrides
#: both (a slower, more faithful run on a busy machine: e.g. 0.05).
TIME_SCALE = {"ami": 0.02, "ari": 0.025}


def _time_scale(backend: str) -> float:
    override = os.environ.get("PACELINE_E2E_TIME_SCALE")
    return float(override) if override else TIME_SCALE[backend]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ami", "ari"])
async def test_predictive_campaign_end_to_end(backend: str, sqlite_engine: DbEngine) -> None:
    sc = Scenario(backend=backend, contacts=2000, agents=20, time_scale=_time_scale(backend))
    result = await run_campaign(sqlite_engine, sc)
    snap = load_snapshot(sqlite_engine, result.campaign_id)
    ab = abandon_stats(snap)
    summary = (
        f"{backend}: {len(snap.contacts)} contacts, {len(snap.attempts)} attempts in "
        f"{result.wall_s:.1f} s wall, virtual end {result.virtual_end:%H:%M:%S}; "
        f"abandons {ab.abandoned}/{ab.live} = {ab.rate:.2%} "
        f"{abandon_kinds(snap, result.calls)}; loop lag p50/p99/max "
        f"{'/'.join(f'{x * 1000:.0f}' for x in result.loop_lag_s)} ms; "
        f"outcomes {outcome_counts(snap)}; "
        f"contacts {state_counts(snap)}; dispositions {result.disposed}"
    )
    print(summary)
    assert not result.emulator_errors, result.emulator_errors[:3]
    assert len(snap.contacts) == sc.contacts
    assert_no_problems("contact states", check_contact_states(snap, result.virtual_end))
    assert_no_problems("attempts vs emulator", check_attempts_against_emulator(snap, result.calls))
    assert_no_problems("overlapping attempts", check_no_overlap(snap))
    assert_no_problems("outbox", check_outbox(snap))
    assert_no_problems("abandon rate", check_abandon_rate(snap))
    # The run exercised what it claims to: people reached agents, and retries happened.
    outcomes = outcome_counts(snap)
    assert outcomes.get("human", 0) > sc.contacts // 10, summary
    assert len(snap.attempts) > sc.contacts, summary


async def test_checks_catch_what_the_emulator_did_not_do(sqlite_engine: DbEngine) -> None:
    """A small run passes every check; then each check catches a row that lies about it."""
    sc = Scenario(backend="ami", contacts=40, agents=10, time_scale=0.01,
                  strategy=e2e_strategy(short_retries=False), emulator_process=False)
    result = await run_campaign(sqlite_engine, sc)
    snap = load_snapshot(sqlite_engine, result.campaign_id)
    end = result.virtual_end
    for title, problems in _all_checks(snap, result.calls, end).items():
        assert_no_problems(title, problems)
    by_outcome: dict[str, list[Any]] = {}
    for a in snap.attempts:
        by_outcome.setdefault(str(a.outcome), []).append(a)
    human, other = by_outcome["human"][0], by_outcome["no_answer"][0]
    wrong_agent = next(u for u in result.agents if u != human.agent)
    with sqlite_engine.begin() as conn:
        # The human call names an agent it was never bridged to; a no-answer claims busy;
        # one contact is due in the past; one attempt has a second attempt.finished row.
        conn.execute(update(Attempt).where(Attempt.id == human.id).values(agent=wrong_agent))
        conn.execute(update(Attempt).where(Attempt.id == other.id).values(outcome="busy"))
        conn.execute(update(Contact).where(Contact.id == other.contact_id)
                     .values(due_at=end - timedelta(minutes=1)))
        row = next(r for r in snap.outbox if r.attempt_id == human.id)
        conn.execute(insert(WebhookOutbox).values(
            event=row.event, attempt_id=row.attempt_id, payload=row.payload,
            created_at=row.created_at, next_try_at=row.next_try_at))
    bad = _all_checks(load_snapshot(sqlite_engine, result.campaign_id), result.calls, end)
    emulator = "\n".join(bad["attempts vs emulator"])
    assert f"not bridged to exactly its agent PJSIP/{wrong_agent}" in emulator
    assert "outcome busy but the callee did no_answer" in emulator
    assert any(f"id={other.contact_id}," in p for p in bad["contact states"])
    assert any(f"id={human.id}," in p for p in bad["outbox"])


def _all_checks(snap: Snapshot, calls: Sequence[CallRecord], end: datetime
                ) -> dict[str, list[str]]:
    return {
        "contact states": check_contact_states(snap, end),
        "attempts vs emulator": check_attempts_against_emulator(snap, calls),
        "overlapping attempts": check_no_overlap(snap),
        "outbox": check_outbox(snap),
    }
