"""Expressions and templates of IVR flows: a small, safe subset of Python expression syntax.

Expressions (`set` values, `branch` conditions, `pay` amounts) are parsed once with `ast`,
checked against a whitelist and compiled into closures: evaluating one never runs arbitrary
code, imports, attribute access or subscripts. What is allowed:

- names (variables) and literals: numbers, strings, True/False/None, tuples and lists;
- arithmetic `+ - * / // %`, unary `- not`, comparisons (chains too) `== != < <= > >= in
  not in`, `and`, `or`, and `a if cond else b`;
- calls of the functions in `FUNCTIONS` only (`len`, `int`, `float`, `str`, `lower`, `upper`,
  `min`, `max`, `abs`, `round`, `digits`, `last`).

A variable that is not set evaluates to None (a flow author sees an empty value rather than a
crash); arithmetic or comparison on None raises `ExprError` at run time, which the
interpreter turns into a trace line and a false condition.

Templates (prompt media, URLs, SMS text) are strings with `{name}` placeholders; `{{` and `}}`
are literal braces. `template_names()` lists the placeholders so the validator can check them.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Scope = Mapping[str, Any]
_Fn = Callable[[Scope], Any]


class ExprError(Exception):
    """A bad expression (at parse time: `col` is the 1-based column in the expression text)."""

    def __init__(self, message: str, col: int = 1) -> None:
        self.col = col
        super().__init__(message)


def _to_int(x: Any) -> int:
    return int(x)


def _digits(x: Any) -> str:
    return "".join(ch for ch in str(x or "") if ch.isdigit())


def _last(x: Any, n: int = 4) -> str:
    return str(x or "")[-int(n):]


#: The only functions an expression may call.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "int": _to_int, "float": float, "str": str,
    "lower": lambda s: str(s).lower(), "upper": lambda s: str(s).upper(),
    "min": min, "max": max, "abs": abs, "round": round,
    "digits": _digits, "last": _last,
}  # fmt: skip

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}  # fmt: skip
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip

#: Longest expression accepted: flows are written by people, and `ast` recursion is bounded.
MAX_EXPR_CHARS = 1000


@dataclass(frozen=True)
class Expr:
    """A compiled expression. `names` are the variables it reads."""

    source: str
    names: frozenset[str]
    _fn: _Fn

    def evaluate(self, scope: Scope) -> Any:
        """The value in `scope`; raises `ExprError` (never anything else) when it fails."""
        try:
            return self._fn(scope)
        except ExprError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError) as exc:
            raise ExprError(f"{self.source!r} failed: {type(exc).__name__}") from None

    def truth(self, scope: Scope) -> bool:
        return bool(self.evaluate(scope))


def compile_expr(source: str) -> Expr:
    """Parse and check `source`; `ExprError` (with the column) if it is not allowed."""
    if not isinstance(source, str):
        raise ExprError(f"must be an expression string, got {type(source).__name__}")
    text = source.strip()
    if not text:
        raise ExprError("empty expression")
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error: {exc.msg}", exc.offset or 1) from None
    except (ValueError, RecursionError, MemoryError):
        raise ExprError("cannot be parsed") from None
    names: set[str] = set()
    try:
        fn = _compile(tree.body, names)
    except RecursionError:
        raise ExprError("nested too deeply") from None
    return Expr(source=text, names=frozenset(names), _fn=fn)


def _compile(node: ast.expr, names: set[str]) -> _Fn:
    col = getattr(node, "col_offset", 0) + 1
    if isinstance(node, ast.Constant):
        value = node.value
        if not isinstance(value, (int, float, str, bool, type(None))):
            raise ExprError(f"literal {type(value).__name__} is not allowed", col)
        return lambda s: value
    if isinstance(node, ast.Name):
        name = node.id
        if name in FUNCTIONS:
            raise ExprError(f"{name} is a function: call it as {name}(...)", col)
        names.add(name)
        return lambda s: s.get(name)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_compile(e, names) for e in node.elts]
        return lambda s: tuple(f(s) for f in items)
    if isinstance(node, ast.BinOp):
        bop = _BINOPS.get(type(node.op))
        if bop is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed", col)
        left, right = _compile(node.left, names), _compile(node.right, names)
        return lambda s: bop(left(s), right(s))
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, names)
        if isinstance(node.op, ast.Not):
            return lambda s: not operand(s)
        if isinstance(node.op, ast.USub):
            return lambda s: -operand(s)
        if isinstance(node.op, ast.UAdd):
            return lambda s: +operand(s)
        raise ExprError(f"operator {type(node.op).__name__} is not allowed", col)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, names) for v in node.values]
        if isinstance(node.op, ast.And):
            def all_of(s: Scope) -> Any:
                value: Any = True
                for p in parts:
                    value = p(s)
                    if not value:
                        return value
                return value
            return all_of

        def any_of(s: Scope) -> Any:
            value: Any = False
            for p in parts:
                value = p(s)
                if value:
                    return value
            return value
        return any_of
    if isinstance(node, ast.Compare):
        first = _compile(node.left, names)
        rest = [(_cmp(op, col), _compile(c, names)) for op, c in zip(node.ops, node.comparators,
                                                                     strict=True)]

        def compare(s: Scope) -> bool:
            left = first(s)
            for cop, f in rest:
                right = f(s)
                if not cop(left, right):
                    return False
                left = right
            return True
        return compare
    if isinstance(node, ast.IfExp):
        test, body, orelse = (_compile(node.test, names), _compile(node.body, names),
                              _compile(node.orelse, names))
        return lambda s: body(s) if test(s) else orelse(s)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = node.func.id if isinstance(node.func, ast.Name) else "this"
            raise ExprError(f"calling {what} is not allowed; functions: "
                            f"{', '.join(sorted(FUNCTIONS))}", col)
        if node.keywords:
            raise ExprError("keyword arguments are not allowed", col)
        fn = FUNCTIONS[node.func.id]
        args = [_compile(a, names) for a in node.args]
        return lambda s: fn(*(a(s) for a in args))
    raise ExprError(f"{type(node).__name__} is not allowed in an expression", col)


def _cmp(op: ast.cmpop, col: int) -> Callable[[Any, Any], Any]:
    found = _CMPOPS.get(type(op))
    if found is None:
        raise ExprError(f"comparison {type(op).__name__} is not allowed", col)
    return found


_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")


def template_names(template: str) -> frozenset[str]:
    """The `{name}` placeholders of `template`; `ExprError` for a stray or malformed brace."""
    names: set[str] = set()
    for m in _PLACEHOLDER_RE.finditer(template):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise ExprError("a lone brace: write {{ or }} for a literal one, {name} for a "
                            "variable", m.start() + 1)
        names.add(m.group(1))
    return frozenset(names)


def render(template: str, scope: Scope) -> str:
    """`template` with each `{name}` replaced by the variable's text (unset: empty)."""

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        if m.group(1) is None:
            return tok
        value = scope.get(m.group(1))
        return "" if value is None else str(value)

    return _PLACEHOLDER_RE.sub(sub, template)


def lookup_path(data: Any, path: str) -> Any:
    """The value at a dotted `path` in decoded JSON (`messages.0.id`, list items by index);
    None when absent. For a flow's `lookup.into` and an SMS provider's answer fields."""
    cur = data
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur
