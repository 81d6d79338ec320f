"""Agentless campaigns end to end: `paceline run` hands each live answer to the campaign's IVR
flow (the shipped `agentless_optout` example), over ARI against the emulator.

One service (the engine and the IVR app in one process, as `paceline run` runs them), one
emulator, no agents at all. The callees' behaviour is fixed by number: people who press 9
during the message (opt-out), people who listen and hang up, and numbers nobody answers.
Checked in the database and on the emulator:

- no live answer is abandoned (agentless campaigns have no agents: the flow is the connect);
- every person's attempt is `human`, its call reached the IVR app (`move`), and the contact
  is closed as connected;
- exactly the numbers that pressed 9 are on the global DNC list, with source `ivr`;
- unanswered numbers are settled by the strategy as usual.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dialer.campaigns import save_strategy, set_campaign_state
from dialer.db import make_engine, migrate
from dialer.db.models import Attempt, Contact, DncEntry
from dialer.domain import CampaignState, Outcome
from dialer.service import parse_config, run_service
from sim.pbx.ari_server import AriServer
from sim.population import CalleeKind, Override, Population
from strategies.model import Step, Strategy
from tests.engine_harness import START
from tests.factories import add_contacts, make_campaign

#: 10 virtual seconds a wall second: the emulated callee presses its digit 1 virtual second
#: (0.1 s) after the answer, well after the engine has moved the call into the IVR app.
SCALE = 0.1
EXAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "examples"
SOUNDS = {
    "paceline/reminder-message": 20.0, "paceline/optout-options": 4.0,
    "paceline/optout-confirmed": 3.0, "paceline/connecting": 1.0,
    "paceline/agents-unavailable-outbound": 3.0, "paceline/abandon": 3.0,
}
STRATEGY = Strategy(
    name="agentless-once",
    steps=(Step(phone=1, tries=1),),
    retry_delays={o: timedelta(hours=1) for o in Outcome if o is not Outcome.HUMAN},
    max_attempts=1,
    max_attempts_per_day=1,
)
#: Number endings: 0-3 press 9 during the message, 4-5 listen and hang up, 6-9 never answer.
POPULATION = Population(
    weights={CalleeKind.NO_ANSWER: 1.0},
    overrides=(
        Override(r"[0-3]$", CalleeKind.HUMAN, ring_s=3.0, talk_s=60.0, dtmf="9"),
        Override(r"[45]$", CalleeKind.HUMAN, ring_s=3.0, talk_s=8.0),
        Override(r"[6-9]$", CalleeKind.NO_ANSWER),
    ),
    no_answer_ring_s=20.0,
)
CONTACTS = 20


def run_config(tmp_path: Path, port: int) -> dict[str, Any]:
    flows = tmp_path / "flows"
    flows.mkdir()
    shutil.copy(EXAMPLES / "agentless_optout.yaml", flows)
    return {
        "node_id": "n1", "tick_s": 1.0,
        "pbx": [{"name": "lab", "backend": "ari", "url": f"http://127.0.0.1:{port}",
                 "username": "dialer", "password": "dialer", "app": "paceline",
                 "trunk": "PJSIP/{number}@trunk"}],
        "clock": {"scale": SCALE, "start": START.isoformat()},
        "ivr": {"flows": "flows"},
    }


async def test_agentless_live_answers_run_the_opt_out_flow_and_nothing_is_abandoned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'p.db'}"
    db = make_engine(db_url)
    migrate(db)
    save_strategy(db, STRATEGY, START)
    cid = make_campaign(db, START, name="reminders", dial_mode="agentless",
                        strategy=STRATEGY.name, ivr_flow="agentless_optout")
    numbers = [f"+1212555{i:04d}" for i in range(CONTACTS)]
    add_contacts(db, cid, [{"phone1": n} for n in numbers], START)
    set_campaign_state(db, cid, CampaignState.RUNNING, START)
    # A second agentless campaign names a flow the service does not run: never dialed.
    stray = make_campaign(db, START, name="stray", dial_mode="agentless",
                          strategy=STRATEGY.name, ivr_flow="no_such_flow")
    add_contacts(db, stray, [{"phone1": "+12125559990"}], START)
    set_campaign_state(db, stray, CampaignState.RUNNING, START)
    async with AriServer(time_scale=SCALE, population=POPULATION, seed=3,
                         sounds=SOUNDS) as server:
        cfg = parse_config(run_config(tmp_path, server.port), str(tmp_path / "run.toml"))
        stop = asyncio.Event()
        service = asyncio.create_task(run_service(cfg, db_url=db_url, stop=stop))

        def settled() -> bool:
            with db.connect() as conn:
                open_ = conn.execute(select(Contact.id).where(
                    Contact.campaign_id == cid,
                    Contact.state.in_(("pending", "sent_to_dialer")))).all()
                flying = conn.execute(select(Attempt.id).where(
                    Attempt.campaign_id == cid, Attempt.outcome.is_(None))).all()
            return not open_ and not flying

        try:
            async with asyncio.timeout(40):
                while not settled():
                    if service.done():
                        service.result()  # the service died: show why
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await service
    assert "no_such_flow', which this service does not run" in caplog.text
    with db.connect() as conn:
        assert conn.execute(select(Attempt.id).where(Attempt.campaign_id == stray)).all() == []
        attempts = conn.execute(select(Attempt.number, Attempt.outcome, Attempt.call_state,
                                       Attempt.connected_at)
                                .where(Attempt.campaign_id == cid)).all()
        contacts = dict(conn.execute(select(Contact.phone1, Contact.state)
                                     .where(Contact.campaign_id == cid)).all())
        dnc = conn.execute(select(DncEntry.value, DncEntry.source, DncEntry.campaign_id)).all()
    people = {n for n in numbers if n[-1] in "012345"}
    pressed_nine = {n for n in numbers if n[-1] in "0123"}
    by_number = {a.number: a for a in attempts}
    assert set(by_number) == set(numbers), "every contact was dialed once"
    assert not [a for a in attempts if a.outcome == Outcome.ABANDONED.value], attempts
    for n in people:
        a = by_number[n]
        assert (a.outcome, a.connected_at is not None) == ("human", True), a
        assert contacts[n] == "connected", (n, contacts[n])
    for n in set(numbers) - people:
        assert by_number[n].outcome == "no_answer", by_number[n]
        assert contacts[n] == "retries_completed", (n, contacts[n])
    # Every person's call went to the IVR app with the flow's name, and the dialer's app
    # told it which number it had dialed.
    moved = {c for c, _app, _args in server.moves}
    assert len(moved) == len(people), server.moves
    assert all((app, args) == ("paceline-ivr", ["agentless_optout"])
               for _c, app, args in server.moves), server.moves
    assert {v for v, src, camp in dnc if src == "ivr" and camp is None} == pressed_nine, dnc
