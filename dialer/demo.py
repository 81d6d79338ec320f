"""`paceline demo`: Paceline end to end on embedded defaults (SQLite and the Asterisk emulator).

It creates a predictive campaign, loads DNC entries, imports the bundled sample list (with
some bad rows on purpose), then runs the dialer service (`dialer.service.run_service`, what
`paceline run` runs) against the emulator over a real AMI socket, with simulated agents and
the simulated SMS provider. It shows live progress (calls in flight, agents by state, abandon
rate) and ends with a summary read from the database. Time runs faster than real time (a
virtual clock shared by the engine and the emulator), so a shift's worth of dialing takes
under a minute. Everything it shows is real: the same code the dialer service runs.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import click
from sqlalchemy import Engine, func, select, update

from dialer.campaigns import create_campaign, set_campaign_state
from dialer.db import open_database, write_transaction
from dialer.db.models import (
    AgentStateLog,
    Appointment,
    Attempt,
    Campaign,
    Contact,
    Contract,
    SmsMessage,
)
from dialer.dnc import add_entries, check_numbers
from dialer.domain import CampaignState
from dialer.engine import Engine as Engine_
from dialer.engine import EngineStatus
from dialer.importer import import_contacts
from dialer.service import PbxConfig, ServiceConfig, SimConfig, run_service
from strategies.compliance import CallingHours, check_calling_hours

SAMPLE_MAPPING = (
    "external_id=CustomerNo,phone1=Mobile,phone2=Home,param1=FirstName,param2=Plan,param3=Balance"
)


def _title(n: int, text: str) -> None:
    click.secho(f"\n{n}. {text}", bold=True)


def run_demo(
    db_file: Path | None = None,
    now: datetime | None = None,
    *,
    contacts: int = 400,
    agents: int = 15,
    time_scale: float = 0.02,
    minutes: float = 40.0,
) -> None:
    """Run the walkthrough; `now` defaults to the wall clock (the only clock read here).

    The live part dials `contacts` synthetic New York contacts with `agents` simulated agents
    for at most `minutes` of virtual time, `1 / time_scale` times faster than real time.
    """
    now = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="paceline-demo-") as tmp:
        path = db_file or Path(tmp) / "demo.db"
        engine = open_database(f"sqlite:///{path}")
        click.secho(f"Paceline demo: the data core on SQLite ({path})", bold=True)
        click.echo(f"now: {now:%Y-%m-%d %H:%M} UTC")

        _title(1, "Create a campaign")
        name = f"demo-{now:%H%M%S}"
        cid = create_campaign(
            engine,
            name,
            now,
            strategy="voice-then-sms",
            channel="voice+sms",
            dial_mode="predictive",
        )
        click.echo(
            f"campaign {name!r}: predictive, voice+sms, strategy voice-then-sms, "
            "calling hours 08:00-21:00 in each contact's own time zone"
        )

        _title(2, "Do-not-call entries")
        add_entries(engine, ["(212) 555-0199"], now, note="customer asked")
        add_entries(engine, ["+1305555"], now, prefix=True, campaign_id=cid)
        for c in check_numbers(
            engine, ["(212) 555-0199", "(305) 555-0106", "(415) 555-0100"], now, campaign_id=cid
        ):
            click.echo(f"  {c.number:<16} {'BLOCKED' if c.blocked else 'ok':<8} {c.reason}")

        _title(3, "Import the sample contact list (four bad rows on purpose)")
        sample = resources.files("dialer") / "examples" / "contacts.csv"
        with resources.as_file(sample) as csv_path:
            result = import_contacts(
                engine,
                cid,
                csv_path,
                now,
                mapping=SAMPLE_MAPPING,
                error_report=Path(tmp) / "contacts.errors.csv",
            )
        click.echo(
            f"  {result.rows} rows: {result.inserted} new, {result.rejected_rows} "
            f"rejected, {result.dnc_listed} DNC-listed"
        )
        for e in result.errors:
            click.echo(f"  rejected: line {e.line}, column {e.column!r}: {e.value!r}: {e.reason}")

        _title(4, "Dial it: the engine, the Asterisk emulator and simulated agents")
        synthetic = _add_synthetic_contacts(engine, cid, contacts, now, Path(tmp))
        with write_transaction(engine) as conn:
            conn.execute(update(Campaign).where(Campaign.id == cid).values(
                sms_template="Hello {param1}, we tried to call you about your plan. "
                             "Reply STOP to opt out."))
        set_campaign_state(engine, cid, CampaignState.RUNNING, now)
        click.echo(
            f"  {synthetic} more contacts in New York; {agents} simulated agents; the "
            f"emulator speaks AMI on a local port; time runs {1 / time_scale:.0f}x fast"
        )
        summary = asyncio.run(_dial_live(engine, str(engine.url), cid, now, agents=agents,
                                         time_scale=time_scale, minutes=minutes))

        _title(5, "Summary")
        _print_summary(engine, cid, summary)
        click.echo("\nNext: 'paceline --help' for the commands; 'paceline run --config' runs "
                   "the service against a real Asterisk (README: Running against Asterisk).")
        engine.dispose()


def _add_synthetic_contacts(engine: Engine, cid: int, n: int, now: datetime, tmp: Path) -> int:
    """Import `n` New York contacts with one to three phones, so the live part has enough to
    dial. They go through the importer, like any list."""
    path = tmp / "synthetic.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "p1", "p2", "p3", "name"])
        for i in range(n):
            phones = [f"(212) {200 + i // 10000 % 700:03d}-{i % 10000:04d}"]
            phones += [f"(646) {200 + k:03d}-{i % 10000:04d}" for k in range(i % 3)]
            w.writerow([f"DEMO{i:05d}", *phones, *[""] * (3 - len(phones)), f"Customer {i}"])
    result = import_contacts(engine, cid, path, now,
                             mapping="external_id=id,phone1=p1,phone2=p2,phone3=p3,param1=name")
    return result.inserted


@dataclass
class LiveSummary:
    virtual_s: float
    wall_s: float
    status: EngineStatus | None


async def _dial_live(
    engine: Engine, url: str, cid: int, now: datetime, *, agents: int, time_scale: float,
    minutes: float,
) -> LiveSummary:
    """Run `paceline run` in-process against the emulator until the list is worked through."""
    from sim.pbx.runner import run_pbx
    from sim.population import Population

    start = _next_open("America/New_York", now)
    async with run_pbx(ami_port=0, population=Population(), seed=1,
                       time_scale=time_scale) as pbx:
        cfg = ServiceConfig(
            source="<demo>",
            node_id="demo-node",
            database=url,
            tick_s=1.0,
            pbxs=(PbxConfig(name="emulator", backend="ami", trunk="PJSIP/{number}@trunk",
                            username="dialer", secret="dialer", port=pbx.ami_port),),
            sms={"provider": "sim", "seed": 1,
                 "sim_replies": [[0.05, "STOP"], [0.1, "Call me tomorrow please"]]},
            sim=SimConfig(agents=agents, prefix="agent", seed=1, wrap_s=(5.0, 20.0)),
            clock_scale=time_scale,
            clock_start=start,
        )
        stop = asyncio.Event()
        started: list[Engine_] = []
        t0 = time.monotonic()
        task = asyncio.create_task(run_service(cfg, stop=stop, on_started=started.append))
        status: EngineStatus | None = None
        virtual = 0.0
        draining = False
        try:
            while not task.done():
                # At most a wall second, and never past the virtual time limit by much.
                left = minutes * 60 - virtual
                await asyncio.sleep(max(0.05, min(1.0, left * time_scale)) if not draining
                                    else 1.0)
                if not started:
                    continue
                eng = started[0]
                status = eng.status()
                virtual = eng.clock.monotonic()
                _progress(status, virtual)
                due = await asyncio.to_thread(_due_now, engine, cid, eng.clock.now())
                if due == 0 and status.calls_in_flight == 0 and virtual > 60:
                    break
                if virtual > minutes * 60 and not draining:
                    # Time is up: no new calls (the engine drops a paused campaign at its
                    # next refresh); the calls in flight end normally.
                    draining = True
                    await asyncio.to_thread(set_campaign_state, engine, cid,
                                            CampaignState.PAUSED, eng.clock.now())
                elif draining and status.calls_in_flight == 0:
                    break
        finally:
            stop.set()
            await task
        click.echo("")
        return LiveSummary(virtual, time.monotonic() - t0, status)


def _progress(s: EngineStatus, virtual_s: float) -> None:
    camp = s.campaigns[0] if s.campaigns else {}
    agents = " ".join(f"{k}={v}" for k, v in s.agents_by_state.items() if v)
    rate = camp.get("abandon_rate", 0.0)
    line = (f"  t+{virtual_s / 60:5.1f} min  in flight {s.calls_in_flight:3d}  dialed "
            f"{s.originated:4d}  live {camp.get('live', 0):4d}  abandon {rate:5.2%}  "
            f"agents: {agents}")
    if sys.stdout.isatty():
        click.echo("\r" + line.ljust(120), nl=False)
    else:
        click.echo(line)


def _due_now(engine: Engine, cid: int, now: datetime) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(
            select(func.count()).select_from(Contact).where(
                Contact.campaign_id == cid,
                Contact.state.in_(["pending", "not_connected", "callback_scheduled",
                                   "sent_to_dialer"]),
                Contact.due_at <= now,
                Contact.tz == "America/New_York",
            )
        ) or 0)


def _print_summary(engine: Engine, cid: int, live: LiveSummary) -> None:
    with engine.connect() as conn:
        by_state = conn.execute(
            select(Contact.state, func.count()).where(Contact.campaign_id == cid)
            .group_by(Contact.state).order_by(Contact.state)
        ).all()
        by_outcome = conn.execute(
            select(Attempt.outcome, func.count()).where(Attempt.campaign_id == cid)
            .group_by(Attempt.outcome).order_by(func.count().desc())
        ).all()
        talk = conn.execute(
            select(AgentStateLog.state, func.count()).where(AgentStateLog.campaign_id == cid)
            .group_by(AgentStateLog.state)
        ).all()
        contracts = conn.scalar(select(func.count()).select_from(Contract)
                                .where(Contract.campaign_id == cid)) or 0
        appointments = conn.scalar(select(func.count()).select_from(Appointment)) or 0
        sms = conn.scalar(select(func.count()).select_from(SmsMessage)
                          .where(SmsMessage.direction == "out")) or 0
        replies = conn.scalar(select(func.count()).select_from(SmsMessage)
                              .where(SmsMessage.direction == "in")) or 0
    outcomes = dict((o or "in flight", n) for o, n in by_outcome)
    live_n = sum(outcomes.get(o, 0) for o in ("human", "abandoned", "abandoned_by_agent"))
    abandoned = outcomes.get("abandoned", 0)
    click.echo(f"  ran {live.virtual_s / 60:.1f} virtual minutes in {live.wall_s:.0f} s")
    click.echo("  contacts: " + ", ".join(f"{s} {n}" for s, n in by_state))
    click.echo("  attempts: " + ", ".join(f"{o} {n}" for o, n in outcomes.items()))
    click.echo(f"  abandon rate: {abandoned}/{live_n} live answers = "
               f"{abandoned / live_n if live_n else 0:.2%} (legal cap 3%)")
    click.echo(f"  agent calls handled: {dict(talk).get('on_call', 0)}; contracts {contracts}, "
               f"appointments {appointments}; SMS sent {sms}, replies {replies}")


def _next_open(tz: str, now: datetime) -> datetime:
    """The demo trace starts inside the contact's calling window, whatever the time now."""
    refusal = check_calling_hours(tz, now, CallingHours(), frozenset())
    return refusal.until if refusal and refusal.until else now


__all__ = ["run_demo"]
