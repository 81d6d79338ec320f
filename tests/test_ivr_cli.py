"""`paceline ivr validate` and `paceline ivr test` through the real `paceline` group."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dialer.cli import main

EXAMPLES = Path(__file__).parent.parent / "ivr" / "examples"

FLOW = """\
flow: small
start: main
inputs: [amount_due]
nodes:
  main:
    type: menu
    prompt: sound:main
    options: {"1": pay, "9": opt_out}
    retries: 0
    no_input: bye
    invalid: bye
  pay:
    type: pay
    amount: amount_due
    currency: GBP
    require_cvv: false
    prompts: {card_number: sound:card, expiry: sound:expiry}
    next: bye
    failed: bye
    aborted: bye
  opt_out:
    type: dnc
    next: bye
  bye:
    type: hangup
    prompt: sound:bye
"""


def write(tmp_path: Path, text: str, name: str = "small.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_ok_prints_node_and_subflow_counts(tmp_path: Path) -> None:
    path = write(tmp_path, FLOW)
    result = CliRunner().invoke(main, ["ivr", "validate", str(path),
                                       str(EXAMPLES / "payment.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{path}: ok (4 nodes, 0 subflows)"
    assert lines[1].startswith(f"{EXAMPLES / 'payment.yaml'}: ok (")
    assert lines[1].endswith(", 1 subflows)")


def test_validate_prints_every_error_with_its_position_and_exits_1(tmp_path: Path) -> None:
    bad = write(tmp_path, FLOW.replace("next: bye\n    failed", "next: paid\n    failed")
                .replace("retries: 0", "retries: many"), "bad.yaml")
    good = write(tmp_path, FLOW)
    result = CliRunner().invoke(main, ["ivr", "validate", str(bad), str(good)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{bad}:9:14: nodes.main.retries: must be a whole number from 0 to 10, got 'many'",
        f"{good}: ok (4 nodes, 0 subflows)",
    ]
    bad.write_text(FLOW.replace("next: bye\n    failed", "next: paid\n    failed"))
    result = CliRunner().invoke(main, ["ivr", "validate", str(bad)])
    assert (result.exit_code, result.output) == (1, (
        f"{bad}:18:11: nodes.pay.next: unknown node 'paid': name one of "
        "the nodes of this flow\n"))


def test_validate_a_subflow_file_on_its_own(tmp_path: Path) -> None:
    sub = EXAMPLES / "common" / "goodbye.yaml"
    assert CliRunner().invoke(main, ["ivr", "validate", str(sub)]).exit_code == 1
    result = CliRunner().invoke(main, ["ivr", "validate", "--subflow", str(sub)])
    assert result.exit_code == 0, result.output


def test_validate_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ivr", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2


def test_walk_prints_the_path_and_the_end_with_card_digits_masked(tmp_path: Path) -> None:
    path = write(tmp_path, FLOW)
    result = CliRunner().invoke(main, [
        "ivr", "test", str(path), "--ani", "+441632960001", "--dtmf", "1,4111111111111111#,1230#",
        "--var", "amount_due=12.50", "--today", "2026-01-01"])
    assert result.exit_code == 0, result.output
    assert "4111111111111111" not in result.output
    lines = result.output.splitlines()
    assert lines[0] == "main  play sound:main"
    assert lines[-1] == "end: hangup at bye"
    assert any("approved" in line for line in lines), result.output


def test_walk_json_output_and_no_input(tmp_path: Path) -> None:
    path = write(tmp_path, FLOW)
    result = CliRunner().invoke(main, ["ivr", "test", str(path), "--ani", "+441632960001",
                                       "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["path"] == ["main", "bye"]
    assert data["finished"] == {"reason": "hangup", "node": "bye"}


def test_walk_of_an_invalid_flow_prints_the_errors(tmp_path: Path) -> None:
    path = write(tmp_path, FLOW.replace("invalid: bye", "invalid: nowhere"))
    result = CliRunner().invoke(main, ["ivr", "test", str(path), "--ani", "+441632960001"])
    assert result.exit_code == 1
    assert "nodes.main.invalid: unknown node 'nowhere'" in result.output


def test_walk_with_a_contact_file(tmp_path: Path) -> None:
    flow = write(tmp_path, "start: who\nnodes:\n  who:\n    type: identify\n"
                 "    found: hi\n    not_found: bye\n  hi:\n    type: play\n"
                 "    prompt: 'sound:hello-{contact_name}'\n    next: bye\n"
                 "  bye:\n    type: hangup\n")
    contact = tmp_path / "contact.json"
    contact.write_text(json.dumps({"contact_id": 7, "campaign": "c", "name": "Ann",
                                   "secrets": {"pin": "1234"}}))
    result = CliRunner().invoke(main, ["ivr", "test", str(flow), "--ani", "+441632960001",
                                       "--contact", str(contact)])
    assert result.exit_code == 0, result.output
    assert "hi  play sound:hello-Ann" in result.output.splitlines()
    contact.write_text("{nope")
    result = CliRunner().invoke(main, ["ivr", "test", str(flow), "--ani", "+441632960001",
                                       "--contact", str(contact)])
    assert result.exit_code == 2
    assert "not valid JSON" in result.output
