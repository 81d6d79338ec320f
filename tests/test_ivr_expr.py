"""IVR expressions and templates: what is allowed, what is refused (with the column), and
how evaluation fails (always ExprError)."""

from __future__ import annotations

import pytest

from ivr.expr import ExprError, compile_expr, render, template_names


@pytest.mark.parametrize(("source", "scope", "expected"), [
    ("amount_due * 1.2", {"amount_due": 10}, 12.0),
    ("verified and tier == 'gold'", {"verified": True, "tier": "gold"}, True),
    ("verified and tier == 'gold'", {"verified": False, "tier": "gold"}, False),
    ("1 < x <= 3", {"x": 3}, True),
    ("'a' if x in (1, 2) else 'b'", {"x": 5}, "b"),
    ("x not in [1, 2]", {"x": 5}, True),
    ("len(digits(account)) == 8", {"account": "12-34-56-78"}, True),
    ("last(card, 4)", {"card": "abcdef"}, "cdef"),
    ("upper(lower('MiX'))", {}, "MIX"),
    ("min(3, x) + max(1, 2) - abs(-1) + round(2.6)", {"x": 1}, 1 + 2 - 1 + 3),
    ("int('42') // 5 % 3", {}, 2),
    ("not missing", {}, True),
    ("-x", {"x": 2}, -2),
    ("x or 'default'", {"x": ""}, "default"),
])
def test_allowed_expressions_evaluate_in_the_scope(source: str, scope: dict[str, object],
                                                   expected: object) -> None:
    assert compile_expr(source).evaluate(scope) == expected


def test_names_are_the_variables_read_not_the_functions_called() -> None:
    e = compile_expr("len(account) > min_len and tier == 'gold'")
    assert e.names == frozenset({"account", "min_len", "tier"})


def test_an_unset_variable_is_none() -> None:
    assert compile_expr("x").evaluate({}) is None
    assert compile_expr("x == None").truth({})


@pytest.mark.parametrize(("source", "col", "words"), [
    ("a.b", 1, "Attribute"),
    ("a[0]", 1, "Subscript"),
    ("lambda: 1", 1, "Lambda"),
    ("[x for x in y]", 1, "ListComp"),
    ("__import__('os')", 1, "calling __import__"),
    ("open('f')", 1, "calling open"),
    ("1 + len", 5, "len is a function"),
    ("x ** 2", 1, "Pow"),
    ("x is None", 1, "Is"),
    ("round(x, ndigits=2)", 1, "keyword"),
    ("f'{x}'", 1, "JoinedStr"),
    ("b'x'", 1, "bytes"),
    ("x := 1", 3, "syntax error"),
    ("(1).real", 1, "Attribute"),
    ("~x", 1, "Invert"),
])
def test_forbidden_syntax_is_refused_with_its_column(source: str, col: int, words: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(source)
    assert words in str(info.value)
    assert info.value.col == col


@pytest.mark.parametrize("source", ["", "   ", "x" * 1001])
def test_empty_and_huge_expressions_are_refused(source: str) -> None:
    with pytest.raises(ExprError):
        compile_expr(source)


def test_deeply_nested_expressions_are_refused_not_crashing() -> None:
    with pytest.raises(ExprError):
        compile_expr("(" * 400 + "1" + ")" * 400)


@pytest.mark.parametrize(("source", "scope"), [
    ("x + 1", {}),
    ("1 / x", {"x": 0}),
    ("int(x)", {"x": "abc"}),
    ("x < 1", {"x": "a"}),
    ("len(x)", {"x": 5}),
])
def test_runtime_failures_raise_expr_error_naming_the_expression(
        source: str, scope: dict[str, object]) -> None:
    e = compile_expr(source)
    with pytest.raises(ExprError) as info:
        e.evaluate(scope)
    assert repr(source) in str(info.value)


def test_runtime_error_messages_hold_no_values() -> None:
    with pytest.raises(ExprError) as info:
        compile_expr("int(pin)").evaluate({"pin": "12x4"})
    assert "12x4" not in str(info.value)


def test_template_names_and_escaped_braces() -> None:
    assert template_names("https://crm/{contact_id}?a={ani}") == {"contact_id", "ani"}
    assert template_names("{{literal}} {x}") == {"x"}
    assert render("{{x}} is {x}, {y}!", {"x": 1}) == "{x} is 1, !"


@pytest.mark.parametrize(("template", "col"), [("a {b", 3), ("a } b", 3), ("{1x}", 1),
                                                ("{ x }", 1)])
def test_template_with_a_lone_brace_is_refused_with_its_column(template: str, col: int) -> None:
    with pytest.raises(ExprError) as info:
        template_names(template)
    assert info.value.col == col
