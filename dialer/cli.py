"""The `paceline` command line.

Every command takes `--db URL` (default `$PACELINE_DB`, else `sqlite:///paceline.db`) and
migrates the schema on first use. Commands whose output a script would read take `--json`.
Errors a user can act on exit with status 2 and one line naming the file, line, field or
setting at fault; nothing prints a traceback for them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine, func, select

from dialer.agents import AgentError
from dialer.campaigns import (
    ABANDON_PROFILES,
    CampaignError,
    campaign_info,
    create_campaign,
    find_campaign_id,
    list_campaigns,
    list_strategy_names,
    load_strategy,
    save_strategy,
    set_campaign_state,
)
from dialer.db import database_url, open_database
from dialer.db.models import Contact
from dialer.dispositions import (
    DispositionError,
    DispositionSpec,
    add_disposition,
    list_dispositions,
)
from dialer.dnc import DncError, add_entries, check_numbers, import_file, remove_entries
from dialer.domain import (
    CallbackScope,
    CampaignChannel,
    CampaignState,
    DialMode,
    DispositionType,
    DncSource,
)
from dialer.importer import ImportFileError, ImportResult, import_contacts
from ivr.cli import ivr_group
from strategies.compliance import ComplianceConfigError
from strategies.model import Strategy, StrategyError

F = TypeVar("F", bound=Callable[..., Any])

#: Errors that are the user's to fix: print the message, exit 2, no traceback.
USER_ERRORS = (
    AgentError,
    CampaignError,
    DispositionError,
    DncError,
    ImportFileError,
    StrategyError,
    ComplianceConfigError,
)


def _now() -> datetime:
    return datetime.now(UTC)


class UserError(click.ClickException):
    """A user error: `Error: <message>` on stderr and exit status 2 (ClickException uses 1)."""

    exit_code = 2


def user_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None

    return wrapper  # type: ignore[return-value]


class Ctx:
    def __init__(self, url: str | None) -> None:
        self.url = database_url(url)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_database(self.url)
        return self._engine


pass_ctx = click.make_pass_decorator(Ctx)


def _emit(data: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        text()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "url",
    envvar="PACELINE_DB",
    default=None,
    help="Database URL (default: sqlite:///paceline.db; postgresql://... works too).",
)
@click.version_option(package_name="paceline")
@click.pass_context
def main(ctx: click.Context, url: str | None) -> None:
    """Paceline: predictive dialer, CTI bridge, IVR engine and simulator for Asterisk."""
    ctx.obj = Ctx(url)


# --- campaigns -----------------------------------------------------------------------------


@main.group()
def campaign() -> None:
    """Create, list, show, pause and resume campaigns."""


def _parse_hours(spec: str | None) -> dict[str, Any] | None:
    """`"default=08:00-21:00,sat=10:00-18:00,sun=closed"` -> the calling_hours table."""
    if not spec:
        return None
    out: dict[str, Any] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ComplianceConfigError(
                f"--hours: {part!r} must look like day=HH:MM-HH:MM (or day=closed)"
            )
        day, window = (x.strip() for x in part.split("=", 1))
        out[day] = None if window.lower() in ("closed", "none", "") else window
    return out


@campaign.command("create")
@click.argument("name")
@click.option("--strategy", default="default", show_default=True, help="Strategy name.")
@click.option(
    "--channel",
    type=click.Choice([c.value for c in CampaignChannel]),
    default="voice",
    show_default=True,
)
@click.option(
    "--mode",
    "dial_mode",
    type=click.Choice([m.value for m in DialMode]),
    default="progressive",
    show_default=True,
    help="Dial mode.",
)
@click.option(
    "--region",
    default="US",
    show_default=True,
    help="Region for numbers written without a country code.",
)
@click.option(
    "--timezone",
    "tz",
    default=None,
    help="Fallback zone for numbers whose zone is unknown (default: the region's).",
)
@click.option(
    "--hours",
    default=None,
    help="Calling hours in the contact's local time, e.g. "
    "'default=08:00-21:00,sat=10:00-18:00,sun=closed'.",
)
@click.option("--holiday", "holidays", multiple=True, help="ISO date without calls (repeat).")
@click.option(
    "--profile",
    type=click.Choice(list(ABANDON_PROFILES)),
    default="us",
    show_default=True,
    help="Abandon-rate rules: us (3%/30 days), uk (3%/24 h + 72 h).",
)
@click.option("--abandon-target", type=float, default=None, help="Override, e.g. 0.03.")
@click.option("--abandon-window", type=int, default=None, help="Override, in seconds.")
@click.option("--caller-id", default=None)
@click.option("--script", "script_ref", default=None, help="Script or questionnaire reference.")
@click.option("--dnc-list", "dnc_lists", multiple=True, help="DNC list to apply (repeat).")
@click.option("--group", "groups", multiple=True, help="Agent group assigned (repeat).")
@click.option("--ivr-flow", default=None,
              help="Agentless mode: the IVR flow each answered call runs (its `flow:` name).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def campaign_create(
    ctx: Ctx,
    name: str,
    strategy: str,
    channel: str,
    dial_mode: str,
    region: str,
    tz: str | None,
    hours: str | None,
    holidays: Sequence[str],
    profile: str,
    abandon_target: float | None,
    abandon_window: int | None,
    caller_id: str | None,
    script_ref: str | None,
    dnc_lists: Sequence[str],
    groups: Sequence[str],
    ivr_flow: str | None,
    as_json: bool,
) -> None:
    """Create campaign NAME (in state draft)."""
    cid = create_campaign(
        ctx.engine,
        name,
        _now(),
        strategy=strategy,
        channel=channel,
        dial_mode=dial_mode,
        default_region=region,
        default_timezone=tz,
        calling_hours=_parse_hours(hours),
        holidays=list(holidays),
        abandon_profile=profile,
        abandon_target=abandon_target,
        abandon_window_s=abandon_window,
        caller_id=caller_id,
        script_ref=script_ref,
        dnc_lists=dnc_lists,
        agent_groups=groups,
        ivr_flow=ivr_flow,
    )
    with ctx.engine.connect() as conn:
        info = campaign_info(conn, cid)
    _emit(info.to_dict(), as_json, lambda: click.echo(f"created campaign {cid} {info.name!r}"))


@campaign.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def campaign_list(ctx: Ctx, as_json: bool) -> None:
    """List campaigns."""
    with ctx.engine.connect() as conn:
        infos = list_campaigns(conn)

    def text() -> None:
        if not infos:
            click.echo("no campaigns yet: paceline campaign create NAME")
        for i in infos:
            click.echo(
                f"{i.id:>4}  {i.name:<24} {i.state:<9} {i.dial_mode:<11} {i.channel:<9} "
                f"strategy={i.strategy}"
            )

    _emit([i.to_dict() for i in infos], as_json, text)


def _contact_stats(engine: Engine, cid: int) -> dict[str, Any]:
    with engine.connect() as conn:
        by_state = dict(
            conn.execute(
                select(Contact.state, func.count())
                .where(Contact.campaign_id == cid)
                .group_by(Contact.state)
            ).all()
        )
        reasons = conn.execute(
            select(Contact.state_reason, func.count())
            .where(Contact.campaign_id == cid, Contact.state_reason.is_not(None))
            .group_by(Contact.state_reason)
            .order_by(func.count().desc())
            .limit(10)
        ).all()
    return {
        "contacts": sum(by_state.values()),
        "by_state": by_state,
        "top_reasons": [{"reason": r, "contacts": n} for r, n in reasons],
    }


@campaign.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def campaign_show(ctx: Ctx, ref: str, as_json: bool) -> None:
    """Show campaign REF (id or name): settings and contacts by state."""
    with ctx.engine.connect() as conn:
        info = campaign_info(conn, find_campaign_id(conn, ref))
    stats = _contact_stats(ctx.engine, info.id)

    def text() -> None:
        for k, v in info.to_dict().items():
            if k == "calling_hours":
                v = ", ".join(f"{d}={w or 'closed'}" for d, w in v.items())
            click.echo(f"{k:>17}: {v}")
        click.echo(f"{'contacts':>17}: {stats['contacts']}")
        for state, n in sorted(stats["by_state"].items()):
            click.echo(f"{'':>19}{state:<20} {n}")
        if stats["top_reasons"]:
            click.echo(f"{'why not dialed':>17}:")
            for r in stats["top_reasons"]:
                click.echo(f"{'':>19}{r['contacts']:>7}  {r['reason']}")

    _emit({**info.to_dict(), **stats}, as_json, text)


def _state_command(name: str, target: CampaignState, doc: str) -> None:
    @campaign.command(name, help=doc)
    @click.argument("ref")
    @pass_ctx
    @user_errors
    def cmd(ctx: Ctx, ref: str) -> None:
        old = set_campaign_state(ctx.engine, ref, target, _now())
        click.echo(f"campaign {ref}: {old} -> {target.value}")


_state_command("pause", CampaignState.PAUSED, "Pause campaign REF: no new calls are placed.")
_state_command("resume", CampaignState.RUNNING, "Start or resume campaign REF.")
_state_command("stop", CampaignState.STOPPED, "Stop campaign REF.")


@campaign.command("dispositions")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def campaign_dispositions(ctx: Ctx, ref: str, as_json: bool) -> None:
    """List the disposition catalogue of campaign REF."""
    with ctx.engine.connect() as conn:
        specs = list_dispositions(conn, find_campaign_id(conn, ref))

    def text() -> None:
        for d in specs:
            flags = ",".join(
                f
                for f in ("human_answered", "sale", "dnc", "completed", "customer_contact")
                if getattr(d, f)
            )
            scope = f" ({d.callback_scope.value})" if d.callback_scope else ""
            key = d.quick_key or "-"
            click.echo(f"{d.code:<8} {d.type.value}{scope:<10} key={key} {d.label:<24} {flags}")

    _emit([d.to_dict() for d in specs], as_json, text)


@campaign.command("add-disposition")
@click.argument("ref")
@click.argument("code")
@click.argument("label")
@click.option(
    "--type",
    "dtype",
    required=True,
    type=click.Choice([t.value for t in DispositionType]),
    help="R callback, N negative, C sale/close, T appointment.",
)
@click.option(
    "--scope",
    type=click.Choice([s.value for s in CallbackScope]),
    default=None,
    help="For R: private (same agent) or public (anyone).",
)
@click.option("--sale", is_flag=True)
@click.option("--dnc", is_flag=True, help="Using it puts the number on the campaign's DNC.")
@click.option("--completed", is_flag=True, help="Using it closes the contact.")
@click.option("--no-human", is_flag=True, help="Not a live answer (e.g. fax, machine).")
@click.option("--no-contact", is_flag=True, help="Not a customer contact (wrong person).")
@click.option("--key", "quick_key", default=None, help="One-character quick key.")
@click.option("--colour", default=None, help="Display colour, #rrggbb.")
@pass_ctx
@user_errors
def campaign_add_disposition(
    ctx: Ctx,
    ref: str,
    code: str,
    label: str,
    dtype: str,
    scope: str | None,
    sale: bool,
    dnc: bool,
    completed: bool,
    no_human: bool,
    no_contact: bool,
    quick_key: str | None,
    colour: str | None,
) -> None:
    """Add disposition CODE with LABEL to campaign REF."""
    with ctx.engine.connect() as conn:
        cid = find_campaign_id(conn, ref)
    add_disposition(
        ctx.engine,
        cid,
        DispositionSpec(
            code,
            label,
            DispositionType(dtype),
            CallbackScope(scope) if scope else None,
            human_answered=not no_human,
            sale=sale,
            dnc=dnc,
            completed=completed,
            customer_contact=not no_contact,
            quick_key=quick_key,
            colour=colour,
        ),
    )
    click.echo(f"campaign {ref}: added disposition {code}")


# --- contacts ------------------------------------------------------------------------------


@main.group()
def contacts() -> None:
    """Import contacts from CSV files or a watched drop folder."""


def _print_import(result: ImportResult, shown: int = 20) -> None:
    click.echo(
        f"{result.file}: {result.rows} rows: {result.inserted} new, {result.updated} "
        f"updated, {result.rejected_rows} rejected, {result.dnc_listed} DNC-listed"
    )
    for e in result.errors[:shown]:
        click.echo(f"  {e}", err=True)
    if len(result.errors) > shown:
        click.echo(f"  ... and {len(result.errors) - shown} more", err=True)
    if result.error_report:
        click.echo(f"  every rejected field is listed in {result.error_report}", err=True)


@contacts.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--campaign", "ref", required=True, help="Campaign id or name.")
@click.option(
    "--map",
    "mapping",
    default=None,
    help="field=Column pairs, e.g. 'phone1=Mobile,phone2=Home,param1=Name,"
    "external_id=CustomerNo'. Without it, columns named like fields are used.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the rejected rows (default FILE.errors.csv).",
)
@click.option("--workers", type=int, default=None, help="Validation processes.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def contacts_import(
    ctx: Ctx,
    files: Sequence[Path],
    ref: str,
    mapping: str | None,
    report: Path | None,
    workers: int | None,
    as_json: bool,
) -> None:
    """Import CSV FILES into a campaign. Bad rows are reported; good rows are kept."""
    with ctx.engine.connect() as conn:
        cid = find_campaign_id(conn, ref)
    results = []
    show_bar = not as_json and sys.stderr.isatty()
    for f in files:
        size = f.stat().st_size if f.exists() else 0
        if show_bar and size > 1_000_000:
            with click.progressbar(
                length=size, label=f"importing {f.name}", file=sys.stderr
            ) as bar:
                result = import_contacts(
                    ctx.engine,
                    cid,
                    f,
                    _now(),
                    mapping=mapping,
                    progress=bar.update,
                    workers=workers,
                    error_report=report,
                )
        else:
            result = import_contacts(
                ctx.engine, cid, f, _now(), mapping=mapping, workers=workers, error_report=report
            )
        results.append(result)
        if not as_json:
            _print_import(result)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))


@contacts.command("watch")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--campaign", "ref", required=True, help="Campaign id or name.")
@click.option("--map", "mapping", default=None, help="As for 'contacts import'.")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds.")
@click.option("--once", is_flag=True, help="Scan twice (to see files settle), then exit.")
@pass_ctx
@user_errors
def contacts_watch(
    ctx: Ctx, folder: Path, ref: str, mapping: str | None, interval: float, once: bool
) -> None:
    """Import every CSV dropped into FOLDER; files move to processed/ or failed/."""
    from dialer.dropfolder import DropOutcome, watch

    with ctx.engine.connect() as conn:
        cid = find_campaign_id(conn, ref)
    scans = {"n": 0}

    def should_stop() -> bool:
        scans["n"] += 1
        return once and scans["n"] > 2

    def report(outcome: DropOutcome) -> None:
        if outcome.result is not None:
            _print_import(outcome.result)
        else:
            click.echo(f"{outcome.file}: not imported: {outcome.error}", err=True)
        click.echo(f"  moved to {outcome.moved_to}")

    click.echo(f"watching {folder} for campaign {ref} (Ctrl-C to stop)")
    try:
        watch(
            ctx.engine,
            cid,
            folder,
            mapping=mapping,
            interval_s=0.0 if once else interval,
            on_file=report,
            should_stop=should_stop,
        )
    except KeyboardInterrupt:
        click.echo("stopped")


# --- DNC -----------------------------------------------------------------------------------


@main.group()
def dnc() -> None:
    """Do-not-call lists: add, import, check, remove."""


def _scope_options(fn: F) -> F:
    fn = click.option(
        "--campaign", "ref", default=None, help="Campaign id or name (default: global)."
    )(fn)
    fn = click.option("--list", "list_name", default=None, help="Named DNC list.")(fn)
    fn = click.option(
        "--region",
        default="US",
        show_default=True,
        help="Region for numbers without a country code.",
    )(fn)
    return fn


def _campaign_id(ctx: Ctx, ref: str | None) -> int | None:
    if ref is None:
        return None
    with ctx.engine.connect() as conn:
        return find_campaign_id(conn, ref)


def _expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        d = date.fromisoformat(value)
    except ValueError:
        raise DncError(f"--expires {value!r}: use an ISO date such as 2027-01-31") from None
    return datetime.combine(d, time(0), tzinfo=UTC)


@dnc.command("add")
@click.argument("numbers", nargs=-1, required=True)
@click.option("--prefix", is_flag=True, help="The values are prefixes (+1212555), not numbers.")
@click.option("--expires", default=None, help="ISO date when the entries stop applying.")
@click.option("--source", type=click.Choice([s.value for s in DncSource]), default="manual")
@click.option("--note", default=None)
@_scope_options
@pass_ctx
@user_errors
def dnc_add(
    ctx: Ctx,
    numbers: Sequence[str],
    prefix: bool,
    expires: str | None,
    source: str,
    note: str | None,
    ref: str | None,
    list_name: str | None,
    region: str,
) -> None:
    """Add NUMBERS (or prefixes) to a DNC list."""
    added = add_entries(
        ctx.engine,
        numbers,
        _now(),
        region=region,
        prefix=prefix,
        campaign_id=_campaign_id(ctx, ref),
        list_name=list_name,
        source=DncSource(source),
        expires_at=_expiry(expires),
        note=note,
    )
    scope = f"campaign {ref}" if ref else (f"list {list_name}" if list_name else "global")
    click.echo(
        f"added {len(added)} {scope} DNC entr{'y' if len(added) == 1 else 'ies'}: "
        + ", ".join(added)
    )


@dnc.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--column", default=None, help="CSV column with the numbers (default: 1st).")
@_scope_options
@pass_ctx
@user_errors
def dnc_import(
    ctx: Ctx, file: Path, column: str | None, ref: str | None, list_name: str | None, region: str
) -> None:
    """Import a DNC FILE (one number per line, or a CSV --column; 'prefix*' for blocks)."""
    res = import_file(
        ctx.engine,
        file,
        _now(),
        region=region,
        campaign_id=_campaign_id(ctx, ref),
        list_name=list_name,
        column=column,
    )
    click.echo(
        f"{file}: {res.added} entries added, {res.duplicates} already listed, "
        f"{len(res.errors)} rejected"
    )
    for e in res.errors:
        click.echo(f"  {e}", err=True)


@dnc.command("check")
@click.argument("numbers", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@_scope_options
@pass_ctx
@user_errors
def dnc_check(
    ctx: Ctx,
    numbers: Sequence[str],
    as_json: bool,
    ref: str | None,
    list_name: str | None,
    region: str,
) -> None:
    """Say whether each number may be called (exit 1 if any is blocked or invalid)."""
    if list_name:
        raise DncError("dnc check takes --campaign (or nothing, for global), not --list")
    checks = check_numbers(
        ctx.engine, numbers, _now(), region=region, campaign_id=_campaign_id(ctx, ref)
    )

    def text() -> None:
        for c in checks:
            verdict = "BLOCKED" if c.blocked else ("invalid" if c.e164 is None else "ok")
            click.echo(f"{c.number}\t{c.e164 or '-'}\t{verdict}\t{c.reason}")

    _emit([c.__dict__ for c in checks], as_json, text)
    # Exit 1 when any number may not be called: on a DNC list, or not a valid number at all.
    if any(c.blocked or c.e164 is None for c in checks):
        sys.exit(1)


@dnc.command("remove")
@click.argument("numbers", nargs=-1, required=True)
@click.option("--prefix", is_flag=True)
@click.option("--region", default="US", show_default=True)
@pass_ctx
@user_errors
def dnc_remove(ctx: Ctx, numbers: Sequence[str], prefix: bool, region: str) -> None:
    """Remove NUMBERS from every DNC list."""
    n = remove_entries(ctx.engine, numbers, region=region, prefix=prefix)
    click.echo(f"removed {n} entr{'y' if n == 1 else 'ies'}")


# --- strategies ------------------------------------------------------------------------------


@main.group()
def strategy() -> None:
    """Show, list and add call strategies."""


def _describe(s: Strategy) -> None:
    click.echo(
        f"strategy {s.name!r}: at most {s.max_attempts} attempts, {s.max_attempts_per_day} a day"
    )
    for i, st in enumerate(s.steps):
        tries = f" x{st.tries}" if st.tries > 1 else ""
        click.echo(f"  step {i}: phone{st.phone} {st.channel.value}{tries}")
    if s.switch_to_sms_on:
        click.echo(
            f"  switch to SMS after: {', '.join(sorted(o.value for o in s.switch_to_sms_on))}"
        )
    if s.skip_phone_on:
        click.echo(
            f"  give up a number after: {', '.join(sorted(o.value for o in s.skip_phone_on))}"
        )
    click.echo(
        "  retry delays: " + ", ".join(f"{k}={v}" for k, v in s.to_dict()["retry_delays"].items())
    )
    click.echo("  an empty phone slot dials phone1 instead")


@strategy.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@user_errors
def strategy_show(ctx: Ctx, name: str, as_json: bool) -> None:
    """Show strategy NAME (built-in or added)."""
    with ctx.engine.connect() as conn:
        s = load_strategy(conn, name)
    _emit(s.to_dict(), as_json, lambda: _describe(s))


@strategy.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def strategy_list(ctx: Ctx, as_json: bool) -> None:
    """List strategy names."""
    with ctx.engine.connect() as conn:
        names = list_strategy_names(conn)
    _emit(names, as_json, lambda: click.echo("\n".join(names)))


@strategy.command("add")
@click.argument("file", type=click.Path(path_type=Path))
@pass_ctx
@user_errors
def strategy_add(ctx: Ctx, file: Path) -> None:
    """Add (or replace) a strategy from a TOML or JSON FILE."""
    s = Strategy.load(file)
    save_strategy(ctx.engine, s, _now())
    click.echo(f"saved strategy {s.name!r}")


# --- database & demo --------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Ctx) -> None:
    """Migrate the schema to the latest revision."""
    ctx.engine  # noqa: B018 - opening the database migrates it
    click.echo(f"schema up to date at {ctx.url}")


@main.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The run configuration (TOML): PBXs, SMS, webhook, HTTP API. See docs/engine.md.",
)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.pass_context
def run(ctx: click.Context, config_file: Path, log_level: str) -> None:
    """Run the dialer service of this node until SIGTERM or Ctrl-C."""
    import asyncio
    import logging

    from dialer.service import ConfigError, load_config, run_service

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_file)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    # --db / $PACELINE_DB win over the file's `database`, like every other command.
    url = ctx.obj.url if ctx.find_root().params.get("url") or os.environ.get("PACELINE_DB") \
        else None
    import contextlib

    from cti.interface import TelephonyError

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_service(cfg, db_url=url))
    except* TelephonyError as group:
        # A wrong secret, or no PBX at the configured address: one line naming it.
        raise UserError("; ".join(str(e) for e in group.exceptions)) from None


@main.group()
def agent() -> None:
    """Agents: create them, assign campaigns."""


@agent.command("add")
@click.argument("username")
@click.option("--endpoint", required=True, help="The agent's phone, e.g. PJSIP/agent101.")
@click.option("--name", default=None)
@click.option("--group", "groups", multiple=True, help="Agent group (repeatable).")
@pass_ctx
@user_errors
def agent_add(ctx: Ctx, username: str, endpoint: str, name: str | None,
              groups: Sequence[str]) -> None:
    """Create agent USERNAME."""
    from dialer.agents import create_agent
    from dialer.db import write_transaction

    with write_transaction(ctx.engine) as conn:
        create_agent(conn, username, endpoint, name=name, groups=groups)
    click.echo(f"agent {username} ({endpoint}) created")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def agent_list(ctx: Ctx, as_json: bool) -> None:
    """List agents with their last known state."""
    from dialer.agents import load_agents

    with ctx.engine.connect() as conn:
        agents = load_agents(conn)
    data: list[dict[str, Any]] = [
        {"username": a.username, "endpoint": a.endpoint, "state": a.state.value,
         "pause_code": a.pause_code, "groups": sorted(a.groups)}
        for a in agents
    ]

    def text() -> None:
        for a in data:
            click.echo(f"{a['username']:<16} {a['endpoint']:<24} {a['state']:<11} "
                       f"{','.join(a['groups'])}")

    _emit(data, as_json, text)


@agent.command("assign")
@click.argument("campaign_ref")
@click.option("--group", "groups", multiple=True)
@click.option("--position", "positions", multiple=True, help="An endpoint (a desk's phone).")
@click.option("--user", "users", multiple=True)
@pass_ctx
@user_errors
def agent_assign(ctx: Ctx, campaign_ref: str, groups: Sequence[str], positions: Sequence[str],
                 users: Sequence[str]) -> None:
    """Assign campaign CAMPAIGN_REF to agent groups, positions or single users."""
    from dialer.agents import assign_campaign
    from dialer.db import write_transaction

    with write_transaction(ctx.engine) as conn:
        cid = find_campaign_id(conn, campaign_ref)
        for kind, values in (("group", groups), ("position", positions), ("user", users)):
            for v in values:
                assign_campaign(conn, cid, kind, v)
    click.echo(f"campaign {campaign_ref}: assigned")


@main.command("demo")
@click.option(
    "--db-file",
    type=click.Path(path_type=Path),
    default=None,
    help="SQLite file to use (default: a fresh file in a temporary folder).",
)
@click.option("--contacts", type=click.IntRange(10, 100_000), default=400, show_default=True,
              help="Synthetic contacts to dial, besides the sample list.")
@click.option("--agents", type=click.IntRange(1, 500), default=15, show_default=True)
@click.option("--time-scale", type=click.FloatRange(0.001, 1.0), default=0.02,
              show_default=True, help="Wall seconds per virtual second (0.02: 50x fast).")
@click.option("--minutes", type=float, default=40.0, show_default=True,
              help="Stop after this many virtual minutes at the latest.")
def demo(db_file: Path | None, contacts: int, agents: int, time_scale: float,
         minutes: float) -> None:
    """Run the demo on embedded defaults: SQLite, the Asterisk emulator, simulated agents."""
    from dialer.demo import run_demo

    run_demo(db_file, contacts=contacts, agents=agents, time_scale=time_scale,
             minutes=minutes)


@main.group()
def sim() -> None:
    """Simulators (the pacing simulator, the Asterisk emulator)."""


@sim.command("run")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--out", "out_json", type=click.Path(path_type=Path), default=None,
              help="JSON metrics file (default: <scenario name>.json in the current folder).")
@click.option("--png", "out_png", type=click.Path(path_type=Path), default=None,
              help="PNG chart (default: <scenario name>.png in the current folder).")
@click.option("--seed", type=int, default=None, help="Override [run] seed.")
@click.option("--agents", type=click.IntRange(min=0), default=None,
              help="Override [agents] count.")
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override [run] hours.")
@click.option("--mode", default=None, help="Override [pacer] mode.")
@click.option("--json", "as_json", is_flag=True, help="Also print the metrics as JSON.")
def sim_run(scenario: Path, out_json: Path | None, out_png: Path | None, seed: int | None,
            agents: int | None, hours: float | None, mode: str | None, as_json: bool) -> None:
    """Simulate one campaign shift (discrete-event) with the real pacer; write JSON + PNG."""
    from sim.des import plot, simulate, with_changes
    from sim.scenario import ScenarioError, load_scenario

    try:
        sc = with_changes(load_scenario(scenario), agents=agents, seed=seed, hours=hours,
                          mode=mode)
        result = simulate(sc)
    except ScenarioError as exc:
        raise UserError(str(exc)) from None
    out_json = out_json or Path(f"{scenario.stem}.json")
    out_png = out_png or Path(f"{scenario.stem}.png")
    data = result.to_json()
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    plot(result, out_png)
    m = result.metrics
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    def num(x: float | None, digits: int) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    click.echo(
        f"{scenario.name}: mode {m['mode']}, {m['agents']} agents, {m['hours']:g} h, "
        f"seed {m['seed']} ({result.wall_s:.1f} s)\n"
        f"  occupancy {pct(m['occupancy'])}, abandon rate {pct(m['abandon_rate'])} "
        f"(worst bin {pct(m['abandon_rate_max_bin'])}), "
        f"live answers/agent-hour {num(m['live_answers_per_agent_hour'], 1)}\n"
        f"  wait mean {num(m['wait_mean_s'], 2)} s, p95 {num(m['wait_p95_s'], 2)} s; "
        f"dial level {num(m['dial_level_mean'], 2)}; calls placed {m['calls_placed']:,}\n"
        f"  wrote {out_json} and {out_png}"
    )


@sim.command("pbx")
@click.option("--ami-port", type=int, default=5038, show_default=True)
@click.option(
    "--ari-port", type=int, default=None, help="Also serve ARI (/ari, user dialer) on this port."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--time-scale", type=float, default=1.0, show_default=True)
@click.option(
    "--population",
    type=click.Choice(["deterministic", "realistic"]),
    default="deterministic",
    show_default=True,
    help="Who answers: by number suffix (0017 busy, 0666 machine...), or drawn at random "
    "with realistic weights (35% people, 15% machines, 30% no answer...).",
)
@click.option("--seed", type=int, default=0, show_default=True)
def sim_pbx(ami_port: int, ari_port: int | None, host: str, time_scale: float,
            population: str, seed: int) -> None:
    """Run the Asterisk 20 emulator (AMI; ARI with --ari-port) until interrupted. Port 0: any."""
    import asyncio
    import contextlib

    from sim.pbx.runner import run_pbx
    from sim.population import Population, deterministic_test_population

    people = deterministic_test_population() if population == "deterministic" else Population()

    async def serve() -> None:
        async with run_pbx(
            host=host, ami_port=ami_port, time_scale=time_scale, ari_port=ari_port,
            population=people, seed=seed,
        ) as pbx:
            click.echo(f"AMI listening on {host}:{pbx.ami_port}")
            if pbx.ari_port is not None:
                click.echo(f"ARI listening on http://{host}:{pbx.ari_port}/ari")
            await asyncio.Event().wait()  # runs until Ctrl-C cancels it

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


main.add_command(ivr_group)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
