"""Flow validation: each rule, reported at the exact file:line:col of the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.model import FlowErrors
from ivr.validate import check_flow, load_and_check

BASE = """\
start: main
languages: [en, fr]
nodes:
  main:
    type: menu
    prompt: sound:main
    options: {"1": info, "2": account}
    no_input: bye
    invalid: bye
  info:
    type: play
    prompt: {en: sound:info, fr: sound:fr/info}
    next: main
  account:
    type: gather
    prompt: sound:account
    var: account
    next: check
    no_input: bye
    invalid: bye
  check:
    type: branch
    cases:
      - {if: "len(account) == 8", to: agent}
    default: bye
  agent:
    type: transfer
    kind: queue
    target: support
    data: {account: "{account}"}
    failed: bye
  bye:
    type: hangup
"""


def errors(tmp_path: Path, text: str, name: str = "flow.yaml") -> list[str]:
    """What validating `text` reports, file names relative to `tmp_path`."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    try:
        load_and_check(path)
    except FlowErrors as exc:
        return [str(e).replace(f"{tmp_path}/", "") for e in exc.errors]
    return []


def edit(*pairs: tuple[str, str]) -> str:
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_the_base_flow_is_valid(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE) == []


def test_unknown_route_targets_and_start(tmp_path: Path) -> None:
    text = edit(("start: main", "start: mian"), ('"2": account', '"2": acount'),
                ("to: agent", "to: agents"))
    assert errors(tmp_path, text) == [
        "flow.yaml:1:8: start: unknown node 'mian': did you mean 'main'? name one of the "
        "nodes of this flow",
        "flow.yaml:7:31: nodes.main.options.2: unknown node 'acount': did you mean "
        "'account'? name one of the nodes of this flow",
        "flow.yaml:24:39: nodes.check.cases[0]: unknown node 'agents': did you mean 'agent'? "
        "name one of the nodes of this flow",
    ]


def test_unreachable_nodes(tmp_path: Path) -> None:
    text = edit(('"2": account', '"2": bye'))
    assert errors(tmp_path, text) == [
        "flow.yaml:14:3: nodes.account: unreachable: no route leads here from start 'main'; "
        "route to it or delete it",
        "flow.yaml:21:3: nodes.check: unreachable: no route leads here from start 'main'; "
        "route to it or delete it",
        "flow.yaml:26:3: nodes.agent: unreachable: no route leads here from start 'main'; "
        "route to it or delete it",
    ]


def test_missing_routes_are_reported_at_the_node(tmp_path: Path) -> None:
    text = edit(("    next: main\n", ""))
    assert errors(tmp_path, text) == [
        "flow.yaml:10:3: nodes.info.next: missing route: name the node to go to"]


def test_a_loop_with_no_way_out(tmp_path: Path) -> None:
    text = edit(("no_input: bye\n    invalid: bye\n  info", "no_input: info\n"
                 "    invalid: info\n  info"), ('"2": account', '"2": info'))
    out = errors(tmp_path, text)
    assert "flow.yaml:4:3: nodes.main: loop with no exit: info -> main -> info; route one " \
           "of these nodes to a node outside the loop or to a hangup" in out


def test_a_loop_of_set_and_play_has_no_way_out(tmp_path: Path) -> None:
    text = edit(('"1": info', '"1": loop'), ("  bye:\n", "  loop:\n    type: set\n"
                 "    assign: {n: 1}\n    next: loop2\n  loop2:\n    type: play\n"
                 "    prompt: sound:again\n    next: loop\n  bye:\n"))
    assert errors(tmp_path, text)[-1] == (
        "flow.yaml:32:3: nodes.loop: loop with no exit: loop -> loop2 -> loop; route one "
        "of these nodes to a node outside the loop or to a hangup")


def test_an_endless_loop_of_nodes_without_input_or_branch(tmp_path: Path) -> None:
    text = edit(('"1": info', '"1": crm'), ("  bye:\n", "  crm:\n    type: lookup\n"
                 "    url: https://crm/x\n    next: bye\n    fallback: wait\n  wait:\n"
                 "    type: play\n    prompt: sound:wait\n    next: crm\n  bye:\n"))
    assert errors(tmp_path, text)[-1] == (
        "flow.yaml:32:3: nodes.crm: endless loop: crm -> wait -> crm runs without input or "
        "a condition; add a branch (with a counter) or route out of it")


def test_failure_route_back_to_the_same_input_node_never_ends(tmp_path: Path) -> None:
    text = edit(("    no_input: bye\n    invalid: bye\n  check",
                 "    no_input: sorry\n    invalid: bye\n  check"),
                ("  bye:\n", "  sorry:\n    type: play\n    prompt: sound:sorry\n"
                 "    next: account\n  bye:\n"))
    assert errors(tmp_path, text) == [
        "flow.yaml:19:15: nodes.account.no_input: retries never end: no_input leads back "
        "here (account -> sorry -> account) without a branch; route it to a node that ends "
        "the call, or through a branch that counts the tries"]


def test_a_retry_loop_through_a_counting_branch_is_accepted(tmp_path: Path) -> None:
    text = edit(("    no_input: bye\n    invalid: bye\n  check",
                 "    no_input: count\n    invalid: bye\n  check"),
                ("  bye:\n", "  count:\n    type: set\n    assign: {tries: 'tries + 1'}\n"
                 "    next: again\n  again:\n    type: branch\n"
                 "    cases: [{if: tries < 3, to: account}]\n    default: bye\n  bye:\n"),
                ("start: main\n", "start: main\ninputs: [tries]\n"))
    assert errors(tmp_path, text) == []


def test_undefined_variables_in_expressions_and_templates(tmp_path: Path) -> None:
    text = edit(('len(account) == 8', 'len(acount) == 8'),
                ('"{account}"', '"{account} {contact_tier}"'),
                ("target: support", "target: '{queue_name}'"))
    assert errors(tmp_path, text) == [
        "flow.yaml:24:14: nodes.check.cases[0].if: undefined variable 'acount' (did you mean "
        "'account'?): set it in a set, gather, lookup or record node before this, or list it "
        "in the flow's `inputs`",
        "flow.yaml:29:13: nodes.agent.target: undefined variable 'queue_name': set it in a "
        "set, gather, lookup or record node before this, or list it in the flow's `inputs`",
        "flow.yaml:30:21: nodes.agent.data.account: undefined variable 'contact_tier' (did "
        "you mean 'contact_id'?): contact_* variables are set by an identify node: add one "
        "before this",
    ]


def test_variables_set_by_nodes_inputs_and_identify_are_defined(tmp_path: Path) -> None:
    text = edit(("start: main\n", "start: who\ninputs: [queue_name]\n"),
                ("nodes:\n", "nodes:\n  who:\n    type: identify\n    found: main\n"
                 "    not_found: main\n"),
                ('"{account}"', '"{account} {contact_tier} {contact_name} {ani}"'),
                ("target: support", "target: '{queue_name}'"))
    assert errors(tmp_path, text) == []


def test_bad_gather_pattern(tmp_path: Path) -> None:
    text = edit(("    var: account\n", "    var: account\n    pattern: '[0-9{6}'\n"))
    assert errors(tmp_path, text) == [
        "flow.yaml:18:14: nodes.account.pattern: bad pattern: unterminated character set at "
        "character 1; write a regular expression the digits must match in full, e.g. "
        "[0-9]{6,8}"]


def test_return_outside_a_subflow(tmp_path: Path) -> None:
    text = edit(("  bye:\n    type: hangup\n", "  bye:\n    type: return\n"))
    assert errors(tmp_path, text) == [
        "flow.yaml:33:11: nodes.bye.type: return only ends a subflow; this flow is not one: "
        "use hangup, or route to another node (checking a subflow file on its own? paceline "
        "ivr validate --subflow)"]


def test_a_subflow_must_reach_a_return(tmp_path: Path) -> None:
    sub = "start: a\nnodes:\n  a:\n    type: play\n    prompt: sound:a\n    next: b\n" \
          "  b:\n    type: set\n    assign: {x: 1}\n    next: a\n"
    errors(tmp_path, sub, "common/sub.yaml")
    text = edit(("  bye:\n    type: hangup\n", "  bye:\n    type: subflow\n"
                 "    flow: common/sub.yaml\n    next: end\n  end:\n    type: hangup\n"))
    assert errors(tmp_path, text) == [
        "common/sub.yaml:1:8: start: this subflow never reaches a return (or a hangup or "
        "transfer): add a `type: return` node and route to it",
        "common/sub.yaml:3:3: nodes.a: loop with no exit: a -> b -> a; route one of these "
        "nodes to a node outside the loop or to a hangup",
    ]


def test_prompt_languages(tmp_path: Path) -> None:
    text = edit(("{en: sound:info, fr: sound:fr/info}", "{fr: sound:fr/info, de: sound:de}"),
                ("prompt: sound:account", "prompt: {en: sound:account, es: sound:es}"))
    assert errors(tmp_path, text) == [
        "flow.yaml:12:13: nodes.info.prompt: no prompt for the default language 'en': add "
        "one (callers of other languages hear it when theirs is missing)",
        "flow.yaml:12:37: nodes.info.prompt.de: language 'de' is not in the flow's languages "
        "(en, fr): add it there or remove this",
        "flow.yaml:16:37: nodes.account.prompt.es: language 'es' is not in the flow's "
        "languages (en, fr): add it there or remove this",
    ]


def test_default_language_must_be_in_languages(tmp_path: Path) -> None:
    text = edit(("languages: [en, fr]", "language: fr\nlanguages: [en]"),
                ("{en: sound:info, fr: sound:fr/info}", "sound:fr/info"))
    assert errors(tmp_path, text)[-1] == (
        "flow.yaml:3:12: languages: must include the default language 'fr'")


def test_menu_key_clashes_and_operator_pairs(tmp_path: Path) -> None:
    text = edit(("    invalid: bye\n  info", "    invalid: bye\n    repeat_key: '1'\n"
                 "    operator_key: '1'\n  info"))
    assert errors(tmp_path, text) == [
        "flow.yaml:7:20: nodes.main.options.1: key '1' is also the repeat_key: choose another "
        "key for one of them",
        "flow.yaml:7:20: nodes.main.options.1: key '1' is also the operator_key: choose "
        "another key for one of them",
        "flow.yaml:11:19: nodes.main.operator_key: key '1' is also the repeat_key: choose "
        "another",
        "flow.yaml:11:19: nodes.main.operator_key: operator_key needs `operator`: the node "
        "the key leads to (or remove operator_key)",
    ]
    text = edit(("    invalid: bye\n  info", "    invalid: bye\n    operator: agent\n  info"))
    assert errors(tmp_path, text) == [
        "flow.yaml:10:15: nodes.main.operator: operator needs `operator_key`: the key that "
        "leads there (or remove operator)"]


def test_callback_offer_keys_must_differ(tmp_path: Path) -> None:
    text = edit(("to: agent}", "to: offer}"), ("  bye:\n", "  offer:\n    type: callback_offer\n"
                "    queue: support\n    threshold_s: 60\n    prompt: sound:offer\n"
                "    campaign: callbacks\n    accept_key: '1'\n    decline_key: '1'\n"
                "    no_wait: agent\n    accepted: bye\n    declined: agent\n  bye:\n"))
    assert errors(tmp_path, text) == [
        "flow.yaml:39:18: nodes.offer.decline_key: the same key as accept_key ('1'): choose "
        "another"]


@pytest.mark.parametrize("example", sorted(
    (Path(__file__).parent.parent / "ivr" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_have_no_problems(example: Path) -> None:
    assert check_flow(load_and_check(example)) == []


def test_verify_may_only_compare_a_field_that_is_kept_secret(tmp_path: Path) -> None:
    text = """\
start: who
nodes:
  who:
    type: identify
    found: check
    not_found: bye
  check:
    type: verify
    method: pin
    field: account_pin
    prompt: sound:pin
    next: bye
    failed: bye
    no_input: bye
  bye:
    type: hangup
"""
    [error] = errors(tmp_path, text)
    assert error.startswith("flow.yaml:10:12: nodes.check.field: 'account_pin' is not a field "
                            "kept secret: use one of date_of_birth, dob, pin"), error
    assert errors(tmp_path, text.replace("account_pin", "pin")) == []
