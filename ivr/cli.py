"""`paceline ivr ...`: check flow files and walk them without a PBX.

- `paceline ivr validate FLOW...` prints one `file:line:col: field: message` line per
  problem (exit status 1 if any), else `FLOW: ok (N nodes, M subflows)` per file.
- `paceline ivr test FLOW --ani +44... --dtmf "1,4111111111111111#"` loads and checks the
  flow, walks it with `ivr.walk.walk_flow` (virtual time, fake services) and prints the path
  the call took, then how it ended. Card digits are masked in what it prints.

A flow with problems exits with status 1 (the problems are the output); a bad option or an
unreadable JSON file exits with status 2, as every `paceline` command does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import click

from ivr.model import Flow, FlowErrors
from ivr.validate import load_and_check


class _UserError(click.ClickException):
    """`Error: <message>` on stderr and exit status 2 (as `dialer.cli.UserError`)."""

    exit_code = 2


def _count_subflows(flow: Flow) -> int:
    seen: set[Path] = set()
    todo = list(flow.subflows.values())
    while todo:
        f = todo.pop()
        if f.path not in seen:
            seen.add(f.path)
            todo.extend(f.subflows.values())
    return len(seen)


@click.group("ivr")
def ivr_group() -> None:
    """IVR flows: validate them, walk them with given key presses."""


@ivr_group.command("validate")
@click.argument("flows", nargs=-1, required=True,
                type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--subflow", is_flag=True,
              help="Check the files as subflows (they end at `return` nodes).")
def validate(flows: Sequence[Path], subflow: bool) -> None:
    """Check FLOW files (YAML or TOML); print every problem with its file:line:col."""
    failed = False
    for path in flows:
        try:
            flow = load_and_check(path, as_subflow=subflow)
        except FlowErrors as exc:
            failed = True
            for error in exc.errors:
                click.echo(str(error))
            continue
        click.echo(f"{path}: ok ({len(flow.nodes)} nodes, {_count_subflows(flow)} subflows)")
    if failed:
        raise SystemExit(1)


def _read_json(path: Path | None, what: str) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _UserError(f"{path}: cannot read the {what} file: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _UserError(f"{path}: not valid JSON ({exc})") from None


def _contacts(data: Any, ani: str, path: Path | None) -> dict[str, Any]:
    """`--contact` JSON: one record (for the ANI) or {number: record}; as ContactRecords."""
    from ivr.ports import ContactRecord

    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _UserError(f"{path}: must be a JSON object (a contact, or number -> contact)")
    records = {ani: data} if "contact_id" in data else data
    out: dict[str, Any] = {}
    for number, rec in records.items():
        if not isinstance(rec, dict) or "contact_id" not in rec:
            raise _UserError(f"{path}: {number}: a contact needs contact_id (and campaign, "
                             f"name, fields, secrets)")
        try:
            out[str(number)] = ContactRecord(
                contact_id=int(rec["contact_id"]), campaign=str(rec.get("campaign", "")),
                name=str(rec.get("name", "")),
                fields={str(k): str(v) for k, v in dict(rec.get("fields") or {}).items()},
                secrets={str(k): str(v) for k, v in dict(rec.get("secrets") or {}).items()})
        except (TypeError, ValueError) as exc:
            raise _UserError(f"{path}: {number}: bad contact ({exc})") from None
    return out


def _variables(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise _UserError(f"--var {pair!r}: write NAME=VALUE")
        out[name.strip()] = value
    return out


@ivr_group.command("test")
@click.argument("flow_path", metavar="FLOW",
                type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--ani", required=True, help="The caller's number, e.g. +441632960001.")
@click.option("--dtmf", default="", help='Key presses, one group per input the flow asks '
              'for, comma-separated: "1,4111111111111111#". An empty group is silence.')
@click.option("--dnid", default="", help="The number dialled.")
@click.option("--language", default=None, help="The caller's language (default: the flow's).")
@click.option("--contact", "contact_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="JSON: the contact `identify` finds for the ANI (contact_id, "
              "campaign, name, fields, secrets), or {number: contact}.")
@click.option("--lookup", "lookup_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="JSON: the CRM's answer to every lookup (none: lookups fail).")
@click.option("--ewt", type=float, default=0.0, show_default=True,
              help="Estimated wait (seconds) callback_offer nodes see.")
@click.option("--var", "var_pairs", multiple=True, metavar="NAME=VALUE",
              help="A starting variable (e.g. a flow input); repeatable.")
@click.option("--today", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="The date card expiries are checked against (default: today).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def test(flow_path: Path, ani: str, dtmf: str, dnid: str, language: str | None,
         contact_file: Path | None, lookup_file: Path | None, ewt: float,
         var_pairs: Sequence[str], today: Any, as_json: bool) -> None:
    """Walk FLOW as a call from ANI pressing the --dtmf keys; print the path it takes."""
    from ivr.walk import WalkServices, walk_flow

    try:
        flow = load_and_check(flow_path)
    except FlowErrors as exc:
        for error in exc.errors:
            click.echo(str(error))
        raise SystemExit(1) from None
    groups = dtmf.split(",") if dtmf else []
    lookup = _read_json(lookup_file, "lookup")
    if lookup is not None and not isinstance(lookup, Mapping):
        raise _UserError(f"{lookup_file}: must be a JSON object (the CRM's answer)")
    services = WalkServices(
        contacts=_contacts(_read_json(contact_file, "contact"), ani, contact_file),
        lookup=lookup, ewt_s=ewt)
    result = walk_flow(flow, ani=ani, dtmf=groups, dnid=dnid, language=language,
                       today=today.date() if today is not None else date.today(),
                       services=services, variables=_variables(var_pairs) or None)
    finished = result.finished
    if as_json:
        click.echo(json.dumps({
            "flow": flow.name, "path": result.path, "lines": result.lines,
            "finished": None if finished is None else {"reason": finished.reason,
                                                       "node": finished.node},
            "variables": result.variables,
        }, indent=2, default=str))
        return
    for line in result.lines:
        click.echo(line)
    if finished is None:
        click.echo("end: the call did not finish (still waiting, or out of steps)")
    else:
        click.echo(f"end: {finished.reason} at {finished.node}")
