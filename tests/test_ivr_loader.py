"""Loading flow files: the model built, positions (YAML and TOML), every problem reported
with file:line:col and field, and never any exception but FlowErrors (fuzzed)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from ivr.loader import MAX_FILE_BYTES, load_flow
from ivr.model import Branch, Flow, FlowErrors, Gather, Menu, Pay, Play, Pos, Set, Subflow
from ivr.validate import check_flow

VALID = """\
flow: demo
start: welcome
language: en
languages: [en, fr]
inputs: [amount_due]
nodes:
  welcome:
    type: play
    prompt: {en: sound:en/welcome, fr: [sound:fr/welcome, "digits:{amount_due}"]}
    next: main
  main:
    type: menu
    prompt: sound:main
    options: {"1": account, 2: pay, "*": bye}
    no_input: bye
    invalid: bye
    retries: 1
    timeout_s: 4.5
    operator_key: "0"
    operator: bye
  account:
    type: gather
    prompt: sound:enter-account
    var: account
    min_digits: 6
    max_digits: 8
    finish_key: null
    pattern: "[0-9]{6,8}"
    next: compute
    no_input: bye
    invalid: bye
  compute:
    type: set
    assign: {total: "amount_due * 1.2", greeting: "'hello'"}
    next: check
  check:
    type: branch
    cases:
      - {if: "total > 100", to: pay}
    default: bye
  pay:
    type: pay
    amount: total
    currency: GBP
    prompts: {card_number: sound:card, expiry: sound:expiry, cvv: sound:cvv}
    next: bye
    failed: bye
    aborted: main
  bye:
    type: hangup
    prompt: sound:goodbye
"""


def write(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    """The errors of loading `path`, with the directory left out of the file names."""
    with pytest.raises(FlowErrors) as info:
        load_flow(path)
    return [str(e).replace(f"{path.parent}/", "") for e in info.value.errors]


def test_a_valid_yaml_flow_loads_into_the_model(tmp_path: Path) -> None:
    flow = load_flow(write(tmp_path, VALID))
    assert (flow.name, flow.start, flow.languages, flow.inputs) == (
        "demo", "welcome", ("en", "fr"), ("amount_due",))
    welcome = flow.nodes["welcome"]
    assert isinstance(welcome, Play)
    assert welcome.prompt.for_language("fr", "en") == ("sound:fr/welcome", "digits:{amount_due}")
    menu = flow.nodes["main"]
    assert isinstance(menu, Menu)
    assert menu.options == {"1": "account", "2": "pay", "*": "bye"}
    assert (menu.retries, menu.timeout_s, menu.operator_key, menu.repeat_key) == (1, 4.5, "0",
                                                                                  None)
    gather = flow.nodes["account"]
    assert isinstance(gather, Gather)
    assert (gather.finish_key, gather.min_digits, gather.pattern) == (None, 6, "[0-9]{6,8}")
    compute = flow.nodes["compute"]
    assert isinstance(compute, Set)
    assert [n for n, _ in compute.assign] == ["total", "greeting"]
    assert compute.assign[0][1].evaluate({"amount_due": 100}) == 120
    check = flow.nodes["check"]
    assert isinstance(check, Branch) and check.cases[0][1] == "pay"
    pay = flow.nodes["pay"]
    assert isinstance(pay, Pay)
    assert pay.amount is not None and pay.amount.names == {"total"}
    assert set(pay.prompts) == {"card_number", "expiry", "cvv"}


def test_yaml_positions_of_nodes_and_fields(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    flow = load_flow(path)
    f = str(path)
    assert flow.where("start") == Pos(f, 2, 8)
    menu = flow.nodes["main"]
    assert menu.pos == Pos(f, 11, 3)
    assert menu.where("no_input") == Pos(f, 15, 15)
    assert menu.where("options.2") == Pos(f, 14, 32)
    check = flow.nodes["check"]
    assert check.where("cases[0]") == Pos(f, 39, 33)
    assert check.where("cases[0].if") == Pos(f, 39, 14)
    welcome = flow.nodes["welcome"]
    assert welcome.where("prompt.fr[1]") == Pos(f, 9, 59)
    assert flow.nodes["bye"].where("nodes.nope") == flow.nodes["bye"].pos


TOML = """\
flow = "demo"
start = "main"

[nodes.main]
type = "menu"
prompt = "sound:main"
options = { "1" = "bye", "2" = "branch" }
no_input = "bye"
invalid = "bye"

[nodes.branch]
type = "branch"
default = "bye"

[[nodes.branch.cases]]
if = "x == 1"
to = "bye"

[[nodes.branch.cases]]
if = "x == 2"
to = "main"

[nodes.bye]
type = "hangup"
prompt = { en = ["sound:a", "sound:b"] }
"""


def test_toml_flow_loads_with_positions(tmp_path: Path) -> None:
    path = write(tmp_path, TOML, "flow.toml")
    flow = load_flow(path)
    f = str(path)
    menu = flow.nodes["main"]
    assert isinstance(menu, Menu) and menu.options == {"1": "bye", "2": "branch"}
    assert menu.pos == Pos(f, 4, 1)
    assert menu.where("no_input") == Pos(f, 8, 12)
    assert menu.where("options.2") == Pos(f, 7, 32)
    branch = flow.nodes["branch"]
    assert isinstance(branch, Branch) and [t for _, t in branch.cases] == ["bye", "main"]
    assert branch.where("cases[1]") == Pos(f, 21, 6)
    assert branch.where("cases[1].if") == Pos(f, 20, 6)
    assert flow.nodes["bye"].where("prompt.en[1]") == Pos(f, 25, 29)


def test_toml_errors_point_into_the_file(tmp_path: Path) -> None:
    text = TOML.replace('no_input = "bye"', "no_input = 3").replace('"x == 2"', '"x === 2"')
    assert problems(write(tmp_path, text, "flow.toml")) == [
        "flow.toml:8:12: nodes.main.no_input: must be a node name, got 3 (quote it)",
        "flow.toml:20:11: nodes.branch.cases[1].if: bad expression: syntax error: invalid "
        "syntax",
    ]


def test_toml_syntax_error_has_its_position(tmp_path: Path) -> None:
    assert problems(write(tmp_path, 'start = "a"\nnodes = [\n', "flow.toml"))[0].startswith(
        "flow.toml:3:1: not valid TOML")


def test_yaml_syntax_error_has_its_position(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "start: a\nnodes: {a: [}\n")) == [
        "flow.yaml:2:13: not valid YAML: while parsing a flow node expected the node "
        "content, but found '}'"]


def test_type_errors_name_the_field_and_what_is_allowed(tmp_path: Path) -> None:
    text = (VALID.replace("retries: 1", "retries: three")
            .replace("timeout_s: 4.5", "timeout_s: -1")
            .replace('operator_key: "0"', "operator_key: x")
            .replace("min_digits: 6", "min_digits: 9")
            .replace("currency: GBP", "currency: pounds")
            .replace("prompt: sound:main", "prompt: http://x/main.wav")
            .replace("languages: [en, fr]", "languages: [en, 7]"))
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:4:17: languages[1]: must be a language code such as en, got 7",
        "flow.yaml:13:13: nodes.main.prompt: must be a media URI <scheme>:<name>, the scheme "
        "one of sound, digits, number, characters, recording, tone; got 'http://x/main.wav'",
        "flow.yaml:17:14: nodes.main.retries: must be a whole number from 0 to 10, "
        "got 'three'",
        "flow.yaml:18:16: nodes.main.timeout_s: must be a number above 0 to 600, got -1",
        "flow.yaml:19:19: nodes.main.operator_key: must be one DTMF key (0-9, *, #, A-D; "
        "quote * and #), got 'x'",
        "flow.yaml:25:17: nodes.account.min_digits: must not be more than max_digits (8)",
        "flow.yaml:44:15: nodes.pay.currency: must be an ISO 4217 code such as GBP or EUR",
    ]


def test_unknown_fields_list_the_allowed_ones(tmp_path: Path) -> None:
    text = VALID.replace("    barge_in: false\n", "").replace(
        "    next: main\n", "    next: main\n    bargein: true\n", 1).replace(
        "flow: demo", "flow: demo\ntitle: x")
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:2:1: title: unknown field 'title'; allowed: flow, start, language, languages, "
        "inputs, nodes",
        "flow.yaml:12:5: nodes.welcome.bargein: unknown field 'bargein' for a play node (did "
        "you mean 'barge_in'?); allowed: type, prompt, next, barge_in",
    ]


def test_missing_required_fields_are_reported_at_the_node(tmp_path: Path) -> None:
    text = VALID.replace("    var: account\n", "").replace("    default: bye\n", "")
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:21:3: nodes.account.var: required: a variable name",
        "flow.yaml:35:3: nodes.check.default: missing route: name the node to go to",
    ]


def test_missing_type_and_unknown_type(tmp_path: Path) -> None:
    text = VALID.replace("    type: gather\n", "").replace("type: set", "type: sett")
    out = problems(write(tmp_path, text))
    assert out[0].startswith("flow.yaml:21:3: nodes.account.type: required: the node type, "
                             "one of play, menu")
    assert out[1].startswith("flow.yaml:32:11: nodes.compute.type: unknown type 'sett' "
                             "(did you mean 'set'?)")


def test_expression_errors_point_at_the_column_inside_the_string(tmp_path: Path) -> None:
    text = VALID.replace('"total > 100"', '"total > foo.bar"').replace(
        "amount: total", "amount: total +")
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:39:23: nodes.check.cases[0].if: bad expression: Attribute is not allowed "
        "in an expression",
        "flow.yaml:43:13: nodes.pay.amount: bad expression: syntax error: invalid syntax",
    ]


def test_template_errors_point_at_the_brace(tmp_path: Path) -> None:
    text = VALID.replace('"digits:{amount_due}"', '"digits:{amount_due"')
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:9:67: nodes.welcome.prompt.fr[1]: bad template: a lone brace: write {{ or "
        "}} for a literal one, {name} for a variable"]


def test_dtmf_keys_and_variable_names_are_checked(tmp_path: Path) -> None:
    text = VALID.replace('"*": bye', '"**": bye').replace("var: account", "var: 2fast")
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:14:37: nodes.main.options.**: must be one DTMF key (0-9, *, #, A-D; quote "
        "* and #), got '**'",
        "flow.yaml:24:10: nodes.account.var: must be a variable name (letters, digits, _; not "
        "a keyword or a function name), got '2fast'",
    ]


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = VALID.replace("    next: compute\n", "    next: compute\n    next: check\n")
    assert problems(write(tmp_path, text)) == [
        "flow.yaml:30:5: nodes.account.next: duplicate key (first written at line 29)"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "flow.yaml:1:1: the file is empty: a flow needs `start` and `nodes`"),
    ("- a\n- b\n", "flow.yaml:1:1: a flow file must be a mapping with start and nodes, "
     "got a list"),
    ("just text\n", "flow.yaml:1:1: a flow file must be a mapping with start and nodes, "
     "got 'just text'"),
    ("a: 1\n---\nb: 2\n", "flow.yaml:2:1: not valid YAML: expected a single document in the "
     "stream but found another document"),
    ("start: !!python/object:os.system x\nnodes: {}\n",
     "flow.yaml:1:8: start: tag tag:yaml.org,2002:python/object:os.system is not supported"),
    ("<<: {start: a}\n", "flow.yaml:1:1: merge keys (<<) are not supported: write the fields"),
])
def test_documents_that_are_not_flows(tmp_path: Path, text: str, message: str) -> None:
    assert message in problems(write(tmp_path, text))


def test_alias_bombs_are_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    out = problems(write(tmp_path, "\n".join(lines) + "\n"))
    assert any("expands to more than" in m for m in out)


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    out = problems(write(tmp_path, "start: &a [*a]\n"))
    assert any("an alias refers to a value that contains it" in m for m in out)


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    out = problems(write(tmp_path, "start: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert "nested more than" in out[0]


def test_big_files_and_binary_files_are_refused(tmp_path: Path) -> None:
    big = write(tmp_path, "# " + "x" * MAX_FILE_BYTES + "\n")
    assert "limited to" in problems(big)[0]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"start: \xff\xfe\n")
    assert problems(binary) == ["bin.yaml:1:1: not UTF-8 text"]
    assert problems(tmp_path / "missing.yaml")[0].startswith("missing.yaml:1:1: cannot read")
    assert problems(write(tmp_path, "x", "flow.json")) == [
        "flow.json:1:1: a flow file must end in .yaml, .yml or .toml"]


SUB = """\
start: bye
nodes:
  bye:
    type: play
    prompt: sound:bye
    next: back
  back:
    type: return
"""


def test_subflows_load_relative_to_the_file_once(tmp_path: Path) -> None:
    write(tmp_path, SUB, "common/bye.yaml")
    text = VALID.replace("  bye:\n    type: hangup\n", "  bye:\n    type: subflow\n"
                         "    flow: common/bye.yaml\n    next: end\n  bye2:\n"
                         "    type: subflow\n    flow: common/bye.yaml\n    next: end\n"
                         "  end:\n    type: hangup\n").replace("    prompt: sound:goodbye\n",
                                                               "")
    flow = load_flow(write(tmp_path, text))
    assert isinstance(flow.nodes["bye"], Subflow)
    assert list(flow.subflows) == ["common/bye.yaml"]
    sub = flow.subflows["common/bye.yaml"]
    assert isinstance(sub, Flow) and sub.start == "bye"


def test_subflow_cycles_and_missing_subflows_are_errors(tmp_path: Path) -> None:
    cyc = "start: s\nnodes:\n  s:\n    type: subflow\n    flow: {}\n    next: s\n"
    write(tmp_path, cyc.format("b.yaml"), "a.yaml")
    write(tmp_path, cyc.format("a.yaml"), "b.yaml")
    assert problems(tmp_path / "a.yaml") == [
        "b.yaml:5:11: nodes.s.flow: subflows include each other (a.yaml -> b.yaml -> a.yaml): "
        "a subflow cannot run itself"]
    missing = write(tmp_path, cyc.format("nope.yaml"), "c.yaml")
    assert problems(missing)[0].startswith(
        "c.yaml:5:11: nodes.s.flow: no such flow file 'nope.yaml'")


def test_errors_in_a_subflow_name_the_subflow_file(tmp_path: Path) -> None:
    write(tmp_path, SUB.replace("next: back", "next: 5"), "sub.yaml")
    main = "start: s\nnodes:\n  s:\n    type: subflow\n    flow: sub.yaml\n    next: e\n" \
           "  e:\n    type: hangup\n"
    assert problems(write(tmp_path, main)) == [
        "sub.yaml:6:11: nodes.bye.next: must be a node name, got 5 (quote it)"]


# ----------------------------------------------------------------------------- fuzzing

_SCALARS: list[Any] = [None, True, False, 0, 1, -1, 3.5, float("inf"), "", "x", "sound:x",
                       "{a}", "{", "a.b", "1", "*", "#", "GBP", "[0-9", "x" * 300, "🙂",
                       "type", "nodes", "start", "menu", "play", "hangup"]


def _random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.5:
        return rng.choice(_SCALARS)
    if roll < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["type", "next", "prompt", "options", "start", "nodes", "cases", "if", "to",
            "assign", "retries", "1", "x"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _mutate(rng: random.Random, doc: Any, depth: int = 0) -> Any:
    if isinstance(doc, dict) and doc:
        doc = dict(doc)
        key = rng.choice(list(doc))
        action = rng.random()
        if action < 0.3:
            del doc[key]
        elif action < 0.6 or depth > 6:
            doc[key] = _random_value(rng, 3)
        else:
            doc[key] = _mutate(rng, doc[key], depth + 1)
        return doc
    if isinstance(doc, list) and doc:
        doc = list(doc)
        i = rng.randrange(len(doc))
        doc[i] = _mutate(rng, doc[i], depth + 1) if rng.random() < 0.5 else \
            _random_value(rng, 3)
        return doc
    return _random_value(rng, 3)


def _fuzz_texts(rng: random.Random) -> list[str]:
    base = yaml.safe_load(VALID)
    texts: list[str] = []
    for _ in range(150):
        doc = base
        for _ in range(rng.randint(1, 4)):
            doc = _mutate(rng, doc)
        texts.append(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    for _ in range(60):
        texts.append(yaml.safe_dump(_random_value(rng, 0), allow_unicode=True))
    for _ in range(60):  # byte-level damage of a valid flow
        chars = list(VALID)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(chars))
            chars[i] = rng.choice(["", ":", "-", "[", "{", "&a", "*a", "!", "\t", "\x00", "'",
                                   '"', "\n", " ", "#", "%", "@", "|", ">", "?"])
        texts.append("".join(chars))
    for n in range(30):  # deep nesting of both kinds
        depth = rng.randint(30, 60) if n % 2 else rng.randint(1, 400)
        texts.append("start: " + "[{a: " * depth + "1" + "}]" * depth + "\n")
    return texts


def test_fuzzed_yaml_gives_a_flow_or_flow_errors_never_another_exception(
        tmp_path: Path) -> None:
    rng = random.Random(6)
    outcomes = {"flow": 0, "errors": 0}
    path = tmp_path / "fuzz.yaml"
    for text in _fuzz_texts(rng):
        path.write_text(text, encoding="utf-8")
        try:
            flow = load_flow(path)
            outcomes["flow"] += 1
            assert isinstance(check_flow(flow), list)  # the validator copes too
        except FlowErrors as exc:
            assert exc.errors, text
            assert not any("internal error" in str(e) for e in exc.errors), (text, str(exc))
            outcomes["errors"] += 1
    assert outcomes["errors"] > 200
    assert outcomes["flow"] > 0  # some mutations keep the flow valid


def test_fuzzed_toml_never_raises_another_exception(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "fuzz.toml"
    for _ in range(60):
        chars = list(TOML)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(chars))
            chars[i] = rng.choice(["", "=", "[", "]", "{", "}", '"', "'", "\n", ".", ",", "#"])
        path.write_text("".join(chars), encoding="utf-8")
        try:
            load_flow(path)
        except FlowErrors as exc:
            assert not any("internal error" in str(e) for e in exc.errors), str(exc)


@pytest.mark.parametrize("name", ["a\\u0000b.yaml", "x" * 5000 + ".yaml", "/"])
def test_unopenable_subflow_paths_are_errors(tmp_path: Path, name: str) -> None:
    text = f'start: s\nnodes:\n  s:\n    type: subflow\n    flow: "{name}"\n    next: s\n'
    out = problems(write(tmp_path, text))
    assert len(out) == 1
    assert out[0].startswith("flow.yaml:5:11: nodes.s.flow: ")
    assert "internal error" not in out[0]
