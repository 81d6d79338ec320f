"""The `paceline` command line, driven in-process (and once as a real process).

User errors must exit 2 with one `Error: ...` line naming the setting, file or line at fault,
and never a traceback. `--json` output must parse.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dialer.cli import main

Run = Callable[..., Result]

MAP = "external_id=CustomerNo,phone1=Mobile,phone2=Home,param1=Name"
CONTACTS = (
    "CustomerNo,Mobile,Home,Name\n"
    "A1,(212) 555-0142,,Ana\n"
    "A2,12,,Ben\n"
    "A3,+1 415 555 0100,+1 999 000,Chloe\n"
    "A4,+44 20 7946 0018,,Gus\n"
)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'x.db'}"


@pytest.fixture
def run(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    """`run("campaign", "list")` -> click Result; the database is a fresh SQLite file."""
    monkeypatch.delenv("PACELINE_DB", raising=False)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, ["--db", db_url, *args])

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        f"\nexception: {result.exception!r}")
    return result


def user_error(result: Result, *named: str) -> str:
    """Assert an exit-2 user error of one line naming each of `named`; return the line."""
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in named:
        assert text in lines[0], f"{text!r} not named in {lines[0]!r}"
    return lines[0]


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the command tree -------------------------------------------------------------------------


def test_help_lists_the_command_groups(run: Run) -> None:
    out = ok(run("--help")).stdout
    commands = out.split("Commands:", 1)[1].split()
    for group in ("campaign", "contacts", "dnc", "strategy", "db"):
        assert group in commands, f"{group} missing from --help"


def test_db_upgrade_migrates_and_says_where(run: Run, db_url: str, tmp_path: Path) -> None:
    assert ok(run("db", "upgrade")).stdout == f"schema up to date at {db_url}\n"
    assert (tmp_path / "x.db").is_file()
    assert ok(run("db", "upgrade")).exit_code == 0, "upgrading twice is harmless"


# --- campaigns ------------------------------------------------------------------------------


def test_campaign_create_with_every_option_is_shown_by_show_json(run: Run) -> None:
    created = as_json(run(
        "campaign", "create", "Renewals Q4", "--mode", "predictive", "--channel", "voice+sms",
        "--strategy", "voice-then-sms", "--hours", "default=09:00-20:00,sun=closed",
        "--holiday", "2026-12-25", "--holiday", "2027-01-01", "--dnc-list", "internal",
        "--dnc-list", "tps", "--group", "sales", "--caller-id", "+12125550100",
        "--script", "renewal-v2", "--json"))
    shown = as_json(run("campaign", "show", "Renewals Q4", "--json"))
    assert {k: shown[k] for k in created} == created
    assert created["state"] == "draft"
    assert (created["dial_mode"], created["channel"], created["strategy"]) == (
        "predictive", "voice+sms", "voice-then-sms")
    assert created["calling_hours"] == {**{d: "09:00-20:00" for d in
                                           ("mon", "tue", "wed", "thu", "fri", "sat")},
                                        "sun": None}
    assert created["holidays"] == ["2026-12-25", "2027-01-01"]
    assert (created["dnc_lists"], created["agent_groups"]) == (["internal", "tps"], ["sales"])
    assert (created["caller_id"], created["script_ref"]) == ("+12125550100", "renewal-v2")
    assert (shown["contacts"], shown["by_state"], shown["top_reasons"]) == (0, {}, [])


def test_campaign_create_without_json_says_what_it_created(run: Run) -> None:
    assert ok(run("campaign", "create", "Renewals")).stdout == "created campaign 1 'Renewals'\n"


@pytest.mark.parametrize(("profile", "window", "uk_rules"), [("us", 30 * 86400, False),
                                                             ("uk", 86400, True)])
def test_campaign_profile_sets_the_abandon_window_and_uk_rules(
    run: Run, profile: str, window: int, uk_rules: bool
) -> None:
    got = as_json(run("campaign", "create", "c", "--profile", profile, "--json"))
    assert (got["abandon_target"], got["abandon_window_s"], got["uk_rules"]) == (
        0.03, window, uk_rules)


def test_campaign_region_gb_defaults_to_london_time(run: Run) -> None:
    got = as_json(run("campaign", "create", "c", "--region", "GB", "--json"))
    assert (got["default_region"], got["default_timezone"]) == ("GB", "Europe/London")


def test_campaign_list_text_and_json(run: Run) -> None:
    assert ok(run("campaign", "list")).stdout.startswith("no campaigns yet")
    assert as_json(run("campaign", "list", "--json")) == []
    ok(run("campaign", "create", "Renewals"))
    ok(run("campaign", "create", "Winback", "--mode", "preview", "--strategy", "sms-only",
           "--channel", "sms"))
    listed = as_json(run("campaign", "list", "--json"))
    assert [(c["id"], c["name"], c["dial_mode"], c["strategy"]) for c in listed] == [
        (1, "Renewals", "progressive", "default"), (2, "Winback", "preview", "sms-only")]
    lines = ok(run("campaign", "list")).stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].split() == ["2", "Winback", "draft", "preview", "sms", "strategy=sms-only"]


def test_campaign_show_text_names_settings_and_closed_days(run: Run) -> None:
    ok(run("campaign", "create", "c", "--hours", "default=09:00-20:00,sun=closed"))
    out = ok(run("campaign", "show", "1")).stdout
    assert "name: c" in out and "state: draft" in out
    assert "sat=09:00-20:00, sun=closed" in out
    assert "contacts: 0" in out


@pytest.mark.parametrize(("args", "named"), [
    (["--hours", "mon 09:00-17:00"], ["--hours", "'mon 09:00-17:00'"]),
    (["--hours", "default=9-8"], ["'9-8'"]),
    (["--hours", "funday=09:00-17:00"], ["'funday'"]),
    (["--holiday", "christmas"], ["'christmas'"]),
    (["--strategy", "nope"], ["no strategy named 'nope'", "default, sms-only"]),
    (["--region", "XX"], ["region 'XX'"]),
    (["--timezone", "Mars/Base"], ["'Mars/Base'"]),
    (["--abandon-target", "5"], ["abandon target 5.0"]),
])
def test_campaign_create_with_a_bad_setting_exits_2_naming_it(
    run: Run, args: list[str], named: list[str]
) -> None:
    user_error(run("campaign", "create", "c", *args), *named)
    assert as_json(run("campaign", "list", "--json")) == []


def test_campaign_create_with_a_duplicate_name_exits_2_naming_it(run: Run) -> None:
    ok(run("campaign", "create", "Renewals"))
    user_error(run("campaign", "create", "Renewals"), "'Renewals' exists already")


def test_campaign_with_an_unknown_choice_is_a_click_usage_error(run: Run) -> None:
    result = run("campaign", "create", "c", "--mode", "turbo")
    assert result.exit_code == 2 and "'turbo' is not one of" in result.stderr


def test_campaign_show_of_unknown_campaign_exits_2(run: Run) -> None:
    user_error(run("campaign", "show", "ghost"), "no campaign 'ghost'")


def test_campaign_pause_resume_stop_follow_the_state_machine(run: Run) -> None:
    ok(run("campaign", "create", "c"))
    assert ok(run("campaign", "resume", "c")).stdout == "campaign c: draft -> running\n"
    assert ok(run("campaign", "pause", "1")).stdout == "campaign 1: running -> paused\n"
    assert ok(run("campaign", "resume", "c")).stdout == "campaign c: paused -> running\n"
    assert ok(run("campaign", "stop", "c")).stdout == "campaign c: running -> stopped\n"
    assert as_json(run("campaign", "show", "c", "--json"))["state"] == "stopped"


def test_pausing_a_draft_campaign_exits_2_and_leaves_it_draft(run: Run) -> None:
    ok(run("campaign", "create", "c"))
    line = user_error(run("campaign", "pause", "c"))
    assert line == "Error: campaign 'c' is draft; it cannot go to paused"
    assert as_json(run("campaign", "show", "c", "--json"))["state"] == "draft"


# --- contacts -------------------------------------------------------------------------------


def test_contacts_import_keeps_good_rows_and_reports_bad_ones(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    f = write(tmp_path / "list.csv", CONTACTS)
    result = ok(run("contacts", "import", str(f), "--campaign", "c", "--map", MAP))
    assert result.stdout == f"{f}: 4 rows: 2 new, 0 updated, 2 rejected, 0 DNC-listed\n"
    err = result.stderr.splitlines()
    assert err[0].strip().startswith(f"{f}:3: column 'Mobile' (phone1): '12': ")
    assert err[1].strip().startswith(f"{f}:4: column 'Home' (phone2): '+1 999 000': ")
    report = tmp_path / "list.csv.errors.csv"
    assert err[2].strip() == f"every rejected field is listed in {report}"
    with report.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["column"], r["value"]) for r in rows] == [
        ("3", "Mobile", "12"), ("4", "Home", "+1 999 000")]
    shown = as_json(run("campaign", "show", "c", "--json"))
    assert (shown["contacts"], shown["by_state"]) == (2, {"pending": 2})


def test_contacts_import_json_has_the_counts_and_each_error(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    f = write(tmp_path / "list.csv", CONTACTS)
    [got] = as_json(run("contacts", "import", str(f), "--campaign", "1", "--map", MAP,
                        "--json"))
    assert {k: got[k] for k in ("file", "rows", "inserted", "updated", "rejected_rows",
                                "dnc_listed")} == {
        "file": str(f), "rows": 4, "inserted": 2, "updated": 0, "rejected_rows": 2,
        "dnc_listed": 0}
    assert got["error_report"] == str(tmp_path / "list.csv.errors.csv")
    assert [(e["line"], e["field"], e["value"]) for e in got["errors"]] == [
        (3, "phone1", "12"), (4, "phone2", "+1 999 000")]


def test_contacts_reimport_updates_by_external_id(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    f = write(tmp_path / "list.csv", CONTACTS)
    ok(run("contacts", "import", str(f), "--campaign", "c", "--map", MAP))
    [got] = as_json(run("contacts", "import", str(f), "--campaign", "c", "--map", MAP,
                        "--json"))
    assert (got["inserted"], got["updated"]) == (0, 2)


def test_contacts_import_writes_the_report_where_asked(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    f = write(tmp_path / "list.csv", CONTACTS)
    report = tmp_path / "rejects.csv"
    ok(run("contacts", "import", str(f), "--campaign", "c", "--map", MAP,
           "--report", str(report)))
    assert report.is_file() and not (tmp_path / "list.csv.errors.csv").exists()


def test_contacts_import_marks_dnc_listed_contacts(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    ok(run("dnc", "add", "(212) 555-0142"))
    f = write(tmp_path / "list.csv", "Mobile\n(212) 555-0142\n(415) 555-0100\n")
    result = ok(run("contacts", "import", str(f), "--campaign", "c", "--map", "phone1=Mobile"))
    assert result.stdout == f"{f}: 2 rows: 2 new, 0 updated, 0 rejected, 1 DNC-listed\n"
    shown = as_json(run("campaign", "show", "c", "--json"))
    assert shown["by_state"] == {"dnc_listed": 1, "pending": 1}
    assert "+12125550142" in shown["top_reasons"][0]["reason"]


@pytest.mark.parametrize(("mapping", "named"), [
    ("phone9=Mobile", ["--map", "unknown field 'phone9'"]),
    ("phone1=Cell", ["list.csv", "phone1=Cell", "the header has: CustomerNo, Mobile"]),
    ("phone1=", ["--map", "'phone1' needs a column name"]),
])
def test_contacts_import_with_a_bad_map_exits_2_naming_it(
    run: Run, tmp_path: Path, mapping: str, named: list[str]
) -> None:
    ok(run("campaign", "create", "c"))
    f = write(tmp_path / "list.csv", CONTACTS)
    user_error(run("contacts", "import", str(f), "--campaign", "c", "--map", mapping), *named)
    assert as_json(run("campaign", "show", "c", "--json"))["contacts"] == 0


def test_contacts_import_of_a_missing_file_or_campaign_exits_2(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    user_error(run("contacts", "import", str(tmp_path / "nope.csv"), "--campaign", "c"),
               "nope.csv", "cannot read")
    f = write(tmp_path / "list.csv", CONTACTS)
    user_error(run("contacts", "import", str(f), "--campaign", "ghost"), "no campaign 'ghost'")


def test_contacts_watch_once_imports_a_dropped_file(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    drop = tmp_path / "drop"
    drop.mkdir()
    write(drop / "list.csv", CONTACTS)
    result = ok(run("contacts", "watch", str(drop), "--campaign", "c", "--map", MAP, "--once"))
    assert f"moved to {drop / 'processed' / 'list.csv'}" in result.stdout
    assert (drop / "processed" / "list.csv.errors.csv").is_file()
    assert as_json(run("campaign", "show", "c", "--json"))["contacts"] == 2


# --- DNC ------------------------------------------------------------------------------------


def check(run: Run, *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = run("dnc", "check", "--json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_dnc_add_normalises_and_says_the_scope(run: Run) -> None:
    ok(run("campaign", "create", "c"))
    assert ok(run("dnc", "add", "(212) 555-0142", "+1 415 555 0100")).stdout == (
        "added 2 global DNC entries: +12125550142, +14155550100\n")
    assert ok(run("dnc", "add", "--prefix", "+1 303 555")).stdout == (
        "added 1 global DNC entry: +1303555\n")
    assert ok(run("dnc", "add", "--campaign", "c", "+44 20 7946 0018")).stdout == (
        "added 1 campaign c DNC entry: +442079460018\n")
    assert ok(run("dnc", "add", "--list", "tps", "020 7946 0019", "--region", "GB")).stdout == (
        "added 1 list tps DNC entry: +442079460019\n")


def test_dnc_check_exits_1_when_a_number_is_blocked_and_0_otherwise(run: Run) -> None:
    ok(run("dnc", "add", "(212) 555-0142"))
    blocked = run("dnc", "check", "212-555-0142", "(415) 555-0100")
    assert blocked.exit_code == 1
    assert [line.split("\t")[2] for line in blocked.stdout.splitlines()] == ["BLOCKED", "ok"]
    clear = run("dnc", "check", "(415) 555-0100")
    assert clear.exit_code == 0
    assert clear.stdout == ("(415) 555-0100\t+14155550100\tok\tnot on any applicable DNC list\n")


def test_dnc_check_json_gives_each_number_its_verdict(run: Run) -> None:
    ok(run("dnc", "add", "(212) 555-0142"))
    code, got = check(run, "212-555-0142", "(415) 555-0100", "xyz")
    assert code == 1
    assert got == [
        {"number": "212-555-0142", "e164": "+12125550142", "blocked": True,
         "reason": "+12125550142 matches global DNC number +12125550142 (manual)"},
        {"number": "(415) 555-0100", "e164": "+14155550100", "blocked": False,
         "reason": "not on any applicable DNC list"},
        {"number": "xyz", "e164": None, "blocked": False, "reason": "not a phone number"},
    ]


def test_dnc_scopes_campaign_list_and_prefix(run: Run) -> None:
    ok(run("campaign", "create", "uses-tps", "--dnc-list", "tps"))
    ok(run("campaign", "create", "other"))
    ok(run("dnc", "add", "--campaign", "other", "(212) 555-0142"))
    ok(run("dnc", "add", "--list", "tps", "+44 20 7946 0018"))
    ok(run("dnc", "add", "--prefix", "+1808555"))
    numbers = ("(212) 555-0142", "+44 20 7946 0018", "(808) 555-0103")

    def verdicts(*scope: str) -> list[bool]:
        return [c["blocked"] for c in check(run, *scope, *numbers)[1]]

    assert verdicts() == [False, False, True]
    assert verdicts("--campaign", "uses-tps") == [False, True, True]
    assert verdicts("--campaign", "other") == [True, False, True]


def test_dnc_add_expires_stops_applying_after_the_date(run: Run) -> None:
    ok(run("dnc", "add", "(212) 555-0142", "--expires", "2000-01-31"))
    ok(run("dnc", "add", "(415) 555-0100", "--expires", "2999-01-31"))
    assert [c["blocked"] for c in check(run, "(212) 555-0142", "(415) 555-0100")[1]] == [
        False, True]


@pytest.mark.parametrize(("args", "named"), [
    (["dnc", "add", "(212) 555-0142", "555-01"], ["number '555-01'"]),
    (["dnc", "add", "--expires", "tomorrow", "(212) 555-0142"], ["--expires 'tomorrow'"]),
    (["dnc", "add", "--campaign", "ghost", "(212) 555-0142"], ["no campaign 'ghost'"]),
    (["dnc", "check", "--list", "tps", "(212) 555-0142"], ["not --list"]),
    (["dnc", "import", "nope.txt"], ["nope.txt", "cannot read"]),
])
def test_dnc_bad_request_exits_2_naming_the_value(
    run: Run, args: list[str], named: list[str]
) -> None:
    user_error(run(*args), *named)
    assert check(run, "(212) 555-0142")[0] == 0, "nothing was added"


def test_dnc_import_keeps_good_lines_and_reports_bad_ones_by_file_and_line(
    run: Run, tmp_path: Path
) -> None:
    f = write(tmp_path / "dnc.txt",
              "# opt-outs\n(212) 555-0142\nnot a number\n+1 808 555*\n\n+44 20 7946 0018\n")
    result = ok(run("dnc", "import", str(f)))
    assert result.stdout == f"{f}: 3 entries added, 0 already listed, 1 rejected\n"
    assert result.stderr == f"  {f}:3: number 'not a number': not a phone number\n"
    code, got = check(run, "(212) 555-0142", "(808) 555-0103", "+44 20 7946 0018",
                      "(415) 555-0100")
    assert code == 1
    assert [c["blocked"] for c in got] == [True, True, True, False]
    assert "global DNC prefix +1808555 (import)" in got[1]["reason"]


def test_dnc_import_csv_column_into_a_campaign(run: Run, tmp_path: Path) -> None:
    ok(run("campaign", "create", "c"))
    f = write(tmp_path / "optouts.csv", "Name,Phone\nAna,(212) 555-0142\nBen,+1 415 555 0100\n")
    assert ok(run("dnc", "import", str(f), "--column", "Phone", "--campaign", "c")).stdout == (
        f"{f}: 2 entries added, 0 already listed, 0 rejected\n")
    assert check(run, "--campaign", "c", "(212) 555-0142")[0] == 1
    assert check(run, "(212) 555-0142")[0] == 0, "campaign entries are not global"
    user_error(run("dnc", "import", str(f), "--column", "Mobile"), "no column 'Mobile'")


def test_dnc_remove_takes_numbers_and_prefixes_out_of_every_scope(run: Run) -> None:
    ok(run("campaign", "create", "c"))
    ok(run("dnc", "add", "(212) 555-0142"))
    ok(run("dnc", "add", "--campaign", "c", "(212) 555-0142"))
    ok(run("dnc", "add", "--prefix", "+1808555"))
    assert ok(run("dnc", "remove", "212-555-0142")).stdout == "removed 2 entries\n"
    assert ok(run("dnc", "remove", "--prefix", "+1808555")).stdout == "removed 1 entry\n"
    assert ok(run("dnc", "remove", "(212) 555-0142")).stdout == "removed 0 entries\n"
    assert check(run, "--campaign", "c", "(212) 555-0142", "(808) 555-0103")[0] == 0


# --- strategies ----------------------------------------------------------------------------

MOBILE_FIRST = """\
name = "mobile-first"
max_attempts = 4
steps = [{phone = 2, tries = 2}, {phone = 1}]

[retry_delays]
busy = "10m"
"""


def test_strategy_list_and_show_the_builtins(run: Run) -> None:
    assert as_json(run("strategy", "list", "--json")) == ["default", "sms-only", "voice-then-sms"]
    assert ok(run("strategy", "list")).stdout == "default\nsms-only\nvoice-then-sms\n"
    out = ok(run("strategy", "show", "default")).stdout
    assert out.startswith("strategy 'default': at most 8 attempts, 3 a day\n")
    assert "  step 0: phone1 voice x2\n" in out
    assert as_json(run("strategy", "show", "sms-only", "--json"))["steps"] == [
        {"phone": 1, "channel": "sms", "tries": 1}]


def test_strategy_add_from_toml_is_listed_shown_and_usable(run: Run, tmp_path: Path) -> None:
    f = write(tmp_path / "mobile-first.toml", MOBILE_FIRST)
    assert ok(run("strategy", "add", str(f))).stdout == "saved strategy 'mobile-first'\n"
    assert "mobile-first" in as_json(run("strategy", "list", "--json"))
    got = as_json(run("strategy", "show", "mobile-first", "--json"))
    assert (got["max_attempts"], got["retry_delays"]["busy"]) == (4, "10m")
    assert got["steps"] == [{"phone": 2, "channel": "voice", "tries": 2},
                            {"phone": 1, "channel": "voice", "tries": 1}]
    assert as_json(run("campaign", "create", "c", "--strategy", "mobile-first", "--json"))[
        "strategy"] == "mobile-first"


def test_strategy_add_again_replaces_it(run: Run, tmp_path: Path) -> None:
    f = write(tmp_path / "s.toml", MOBILE_FIRST)
    ok(run("strategy", "add", str(f)))
    write(f, MOBILE_FIRST.replace("max_attempts = 4", "max_attempts = 6"))
    ok(run("strategy", "add", str(f)))
    assert as_json(run("strategy", "show", "mobile-first", "--json"))["max_attempts"] == 6


@pytest.mark.parametrize(("toml", "named"), [
    ('name = "bad"\nsteps = [{phone = 1}]\nmax_tries = 3\n', ["bad.toml", "'max_tries'"]),
    ('name = "bad"\nsteps = [{phone = 9}]\n', ["bad.toml", "steps[0].phone", "9"]),
    ('name = "bad"\nsteps = [{phone = 1}]\n[retry_delays]\nbusy = "soon"\n',
     ["bad.toml", "retry_delays.busy", "'soon'"]),
    ('name = \n', ["bad.toml", "not valid toml"]),
])
def test_strategy_add_of_a_bad_file_exits_2_naming_the_key(
    run: Run, tmp_path: Path, toml: str, named: list[str]
) -> None:
    f = write(tmp_path / "bad.toml", toml)
    user_error(run("strategy", "add", str(f)), *named)
    assert "bad" not in as_json(run("strategy", "list", "--json"))


def test_strategy_show_of_unknown_name_exits_2_listing_the_known(run: Run) -> None:
    user_error(run("strategy", "show", "nope"), "no strategy named 'nope'", "voice-then-sms")


# --- a real process -------------------------------------------------------------------------


def test_real_process_prints_one_error_line_and_exits_2(run: Run, db_url: str) -> None:
    ok(run("campaign", "create", "Renewals"))
    cmd = [sys.executable, "-c", "from dialer.cli import main; main()", "--db", db_url,
           "campaign", "create", "Renewals", "--profile", "uk"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == "Error: a campaign named 'Renewals' exists already\n"


def test_dnc_check_exits_1_for_an_invalid_number(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--db", f"sqlite:///{tmp_path / 'x.db'}", "dnc", "check",
                                       "12"])
    assert result.exit_code == 1
    assert "invalid" in result.output


def test_campaign_dispositions_lists_the_default_catalogue_as_json(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'x.db'}"]
    runner = CliRunner()
    assert runner.invoke(main, [*db, "campaign", "create", "c"]).exit_code == 0
    result = runner.invoke(main, [*db, "campaign", "dispositions", "c", "--json"])
    assert result.exit_code == 0, result.output
    codes = {d["code"]: d for d in json.loads(result.output)}
    assert codes["CBP"]["type"] == "R" and codes["CBP"]["callback_scope"] == "private"
    assert codes["DNC"]["dnc"] is True


def test_add_disposition_then_list_it_and_refuse_a_bad_one_with_exit_2(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'x.db'}"]
    runner = CliRunner()
    runner.invoke(main, [*db, "campaign", "create", "c"])
    ok = runner.invoke(main, [*db, "campaign", "add-disposition", "c", "FAX", "Fax tone",
                              "--type", "N", "--no-human", "--completed", "--key", "f"])
    assert ok.exit_code == 0, ok.output
    listed = runner.invoke(main, [*db, "campaign", "dispositions", "c"])
    assert "FAX" in listed.output and "Fax tone" in listed.output
    bad = runner.invoke(main, [*db, "campaign", "add-disposition", "c", "CB9", "Later",
                               "--type", "R"])
    assert bad.exit_code == 2
    assert "'CB9'" in bad.output and "callback_scope" in bad.output
