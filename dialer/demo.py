"""`paceline demo`: the data core end to end on embedded defaults (SQLite, no PBX).

It creates a campaign, loads DNC entries, imports the bundled sample list (with some bad rows
on purpose), leases the contacts that may be called right now, and traces what the call
strategy does after a few outcomes. Everything it shows is real: the same code the dialer
service runs. The live dialing part joins once the pacer, the CTI bridge and the engine land.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import click
from sqlalchemy import func, select

from dialer.campaigns import campaign_policy, create_campaign
from dialer.db import open_database
from dialer.db.models import Contact
from dialer.dnc import add_entries, check_numbers
from dialer.domain import Outcome
from dialer.importer import import_contacts
from dialer.leasing import lease_due_contacts
from strategies.compliance import CallingHours, check_calling_hours, zone
from strategies.model import AttemptView, Close, ContactView
from strategies.planner import next_action

SAMPLE_MAPPING = (
    "external_id=CustomerNo,phone1=Mobile,phone2=Home,param1=FirstName,param2=Plan,param3=Balance"
)


def _title(n: int, text: str) -> None:
    click.secho(f"\n{n}. {text}", bold=True)


def run_demo(db_file: Path | None = None, now: datetime | None = None) -> None:
    """Run the walkthrough; `now` defaults to the wall clock (the only clock read here)."""
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

        _title(4, "Lease what may be dialed now (calling hours checked in each contact's zone)")
        leased = lease_due_contacts(engine, cid, 100, now, node_id="demo-node")
        for lc in leased[:8]:
            local = now.astimezone(zone(lc.tz))
            click.echo(
                f"  #{lc.contact_id:<3} {lc.channel.value:<5} phone{lc.phone_index} "
                f"{lc.number:<14} {lc.tz:<20} local {local:%H:%M}"
            )
        if len(leased) > 8:
            click.echo(f"  ... and {len(leased) - 8} more")
        with engine.connect() as conn:
            waiting = conn.execute(
                select(Contact.id, Contact.tz)
                .where(Contact.campaign_id == cid, Contact.state == "pending")
                .order_by(Contact.id)
            ).all()
        click.echo(f"  leased {len(leased)}; {len(waiting)} wait for their calling window:")
        for row in waiting[:5]:
            refusal = check_calling_hours(row.tz, now, CallingHours(), frozenset())
            opens = f"{refusal.until:%a %H:%M} UTC" if refusal and refusal.until else "now"
            detail = refusal.detail if refusal else "due"
            click.echo(f"  #{row.id:<3} opens {opens}: {detail}")

        _title(5, "What the strategy does after each outcome (pure planner, no I/O)")
        with engine.connect() as conn:
            policy = campaign_policy(conn, cid)
        contact = ContactView(
            ("+14155550100", "+14155550101", None, None, None), "America/Los_Angeles"
        )
        start = _next_open(contact.tz, now)
        history: list[AttemptView] = []
        t = start
        for outcome in (Outcome.BUSY, Outcome.SMS_SENT, Outcome.NO_ANSWER, Outcome.NO_ANSWER):
            action = next_action(contact, history, policy, t)
            if isinstance(action, Close):
                break
            history.append(
                AttemptView(
                    action.earliest, action.phone_index, action.channel, outcome, action.step
                )
            )
            click.echo(
                f"  {action.earliest:%a %H:%M} UTC  {action.channel.value:<5} "
                f"phone{action.phone_index} -> {outcome.value}"
            )
            t = action.earliest
        final = next_action(contact, history, policy, t)
        if isinstance(final, Close):
            click.echo(f"  then: close as {final.state.value} ({final.refusal})")
        else:
            why = "; ".join(str(r) for r in final.delayed_by) or "retry delay"
            click.echo(
                f"  next: {final.channel.value} phone{final.phone_index} at "
                f"{final.earliest:%a %H:%M} UTC ({why})"
            )

        _title(6, "Summary")
        with engine.connect() as conn:
            by_state = conn.execute(
                select(Contact.state, func.count())
                .where(Contact.campaign_id == cid)
                .group_by(Contact.state)
                .order_by(Contact.state)
            ).all()
        for state, n in by_state:
            click.echo(f"  {state:<16} {n}")
        click.echo("\nNext: 'paceline --help' for the commands; 'make test' runs the suite.")
        engine.dispose()


def _next_open(tz: str, now: datetime) -> datetime:
    """The demo trace starts inside the contact's calling window, whatever the time now."""
    refusal = check_calling_hours(tz, now, CallingHours(), frozenset())
    return refusal.until if refusal and refusal.until else now


__all__ = ["run_demo"]
