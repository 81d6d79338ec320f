"""The SMS channel end to end: the engine switches voice to SMS on busy, a STOP reply puts the
number on DNC, and an unanswered text expires. Real AMI sockets to the emulator; the simulated
SMSC; virtual time (the engine and the emulator share one time scale)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update

from cti.ami.telephony import AmiTelephony
from dialer.campaigns import save_strategy, set_campaign_state
from dialer.clock import ScaledClock
from dialer.db import write_transaction
from dialer.db.models import Attempt, Campaign, Contact, DncEntry, SmsMessage
from dialer.domain import CampaignState
from dialer.engine import Engine as Dialer
from dialer.sms import SmsService, SmsSettings
from sim.agents import SimAgents, ensure_agents, ensure_fixtures
from sim.pbx.runner import run_pbx
from sim.population import deterministic_test_population
from sim.sms import SimSmsProvider
from strategies.model import Strategy
from tests.factories import add_contacts, make_campaign

SCALE = 0.01
START = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)  # 10:00 in New York
BUSY = ["+12125550017", "+12125510017", "+12125520017"]  # ...0017: always busy
PERSON = "+12125550100"
EXPIRY_S = 1800


def _rows(engine: Engine, stmt: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(stmt).all())


async def _until(check: Any, timeout_s: float, db: Engine) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            contacts = _rows(db, select(Contact.id, Contact.state, Contact.due_at,
                                        Contact.state_reason))
            attempts = _rows(db, select(Attempt.contact_id, Attempt.channel, Attempt.outcome,
                                        Attempt.placed_at))
            raise AssertionError(f"timed out; contacts {contacts}; attempts {attempts}")
        await asyncio.sleep(0.05)


async def test_voice_to_sms_on_busy_stop_and_expiry(sqlite_engine: Engine) -> None:
    db = sqlite_engine
    clock = ScaledClock(SCALE, START)
    now = clock.now()
    # One voice try; busy switches to a text, after which the plan has nothing left, so the
    # contact waits for a reply (`sms_sent`).
    save_strategy(db, Strategy.from_dict({
        "name": "call-once-then-text", "steps": [{"phone": 1, "tries": 1}],
        "switch_to_sms_on": ["busy"], "max_attempts": 3,
    }), now)
    cid = make_campaign(db, now, dial_mode="progressive", channel="voice+sms",
                        strategy="call-once-then-text")
    with write_transaction(db) as conn:
        conn.execute(update(Campaign).where(Campaign.id == cid).values(
            sms_template="Hi {param1}, we could not reach you. Reply STOP to opt out.",
            sms_expiry_s=EXPIRY_S))
    ids = add_contacts(db, cid, [{"phone1": n, "param1": f"C{i}"} for i, n in enumerate(BUSY)]
                       + [{"phone1": PERSON, "param1": "P"}], now)
    set_campaign_state(db, cid, CampaignState.RUNNING, now)
    ensure_fixtures(db)
    agents = ensure_agents(db, 2)
    provider = SimSmsProvider(time_scale=SCALE, seed=3, delivered_p=1.0, failed_p=0.0,
                              receipt_delay_s=(1.0, 2.0))
    sms = SmsService(db, provider, SmsSettings(), clock=clock)
    provider.set_handlers(on_receipt=sms.on_receipt, on_inbound=sms.on_inbound)
    async with (
        run_pbx(ami_port=0, population=deterministic_test_population(), time_scale=SCALE) as pbx,
        AmiTelephony("127.0.0.1", pbx.ami_port, "dialer", "dialer") as tel,
        provider,
    ):
        dialer = Dialer(db, {"pbx": tel}, {"pbx": "PJSIP/{number}@trunk"}, node_id="sms-node",
                        clock=clock, sms=sms, sms_expiry_every_s=30.0)
        team = SimAgents(dialer, agents, seed=1)
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(dialer.run())
            work = tg.create_task(team.run())

            def state(contact_id: int) -> str:
                with db.connect() as conn:
                    return str(conn.scalar(select(Contact.state).where(Contact.id == contact_id)))

            # 1. Busy on voice -> the strategy's switch sends an SMS (after its delay) and the
            #    contact waits for a reply.
            await _until(lambda: all(state(i) == "sms_sent" for i in ids[:3]), 20, db)
            texts = _rows(db, select(SmsMessage.number, SmsMessage.body, SmsMessage.attempt_id)
                          .where(SmsMessage.direction == "out"))
            assert sorted(t.number for t in texts) == sorted(BUSY)
            assert all("Reply STOP" in t.body and t.body.startswith("Hi C") for t in texts)
            for t in texts:
                voice = _rows(db, select(Attempt.channel, Attempt.outcome)
                              .where(Attempt.contact_id == ids[BUSY.index(t.number)])
                              .order_by(Attempt.placed_at))
                assert [tuple(v) for v in voice] == [("voice", "busy"), ("sms", "sms_sent")] or \
                    [tuple(v) for v in voice] == [("voice", "busy"), ("sms", "sms_delivered")]
            await _until(lambda: len(_rows(db, select(Attempt.id).where(
                Attempt.outcome == "sms_delivered"))) == 3, 20, db)

            # 2. STOP from the first number: global DNC entry (source sms-stop), contact closed,
            #    and the confirmation goes back to the customer.
            await provider.reply(BUSY[0], " stop ")
            dnc = _rows(db, select(DncEntry.value, DncEntry.source, DncEntry.campaign_id))
            assert (BUSY[0], "sms-stop", None) in [tuple(r) for r in dnc]
            assert state(ids[0]) == "dnc_listed"
            confirmation = SmsSettings().opt_out_confirmation
            assert [s.body for s in provider.sent if s.to == BUSY[0]][-1] == confirmation
            # Another reply marks the contact as responded.
            await provider.reply(BUSY[1], "Call me after 6pm")
            assert state(ids[1]) == "sms_responded"

            # 3. Nothing from the third: the text expires after sms_expiry_s (virtual time).
            assert state(ids[2]) == "sms_sent"
            await _until(lambda: state(ids[2]) == "sms_sent_closed", 60, db)
            # The person answered and reached an agent: no SMS for them.
            assert state(ids[3]) != "sms_sent"
            assert PERSON not in {s.to for s in provider.sent}
            dialer.stop()
            work.cancel()
        assert run.done()
