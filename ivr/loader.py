"""Load a flow file (YAML or TOML) into the `ivr.model` dataclasses, with positions.

`load_flow(path)` returns a `Flow` or raises `FlowErrors` listing every problem found (never
the first one only), each with the file, line and column (1-based) and the field path, e.g.
`flows/pay.yaml:12:5: nodes.card.retries: must be an integer from 0 to 10, got 'three'`.
It never raises anything else, whatever the file holds (the tests fuzz it).

How it reads:

- YAML goes through `yaml.compose` (the safe loader) so every value keeps its mark; values
  are then checked and built by hand. Duplicate keys, tags other than the standard ones and
  merge keys (`<<`) are refused; aliases are allowed, but what they expand to is bounded
  (`MAX_VALUES`), as are nesting (`MAX_DEPTH`) and the file size (`MAX_FILE_BYTES`).
- TOML goes through `tomllib`; positions come from a scan of the text (table headers,
  `key = value` lines, inline tables and arrays). They are good, not perfect: a value the scan
  cannot place gets the position of the nearest enclosing table or key.

A node's `fields` maps the path of every value written in it, relative to the node, to where
the value starts: `next`, `options.1`, `prompt.fr`, `prompt.fr[1]`, `assign.total`,
`cases[0]` (the case's `to`), `cases[0].if`. Expressions and templates are compiled here; an
error inside one points at its column in the file when the string sits on one line as
written (else at the start of the value).

Subflows (`type: subflow`, `flow: relative/path.yaml`) are loaded relative to the file that
names them, once per load (cached by resolved path), into `Flow.subflows`; a subflow that
(indirectly) includes itself is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import keyword
import math
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ivr.expr import FUNCTIONS, Expr, ExprError, compile_expr, template_names
from ivr.model import (
    NODE_TYPES,
    Branch,
    CallbackOffer,
    Dnc,
    Flow,
    FlowError,
    FlowErrors,
    Gather,
    Hangup,
    Identify,
    Lookup,
    Menu,
    Node,
    Pay,
    Play,
    Pos,
    Prompt,
    Record,
    Return,
    Set,
    Sms,
    Subflow,
    Transfer,
    Verify,
)
from ivr.ports import SECRET_FIELDS

#: Flow files are written by people: anything bigger is a mistake (or an attack).
MAX_FILE_BYTES = 1_000_000
#: Deepest nesting of mappings and lists accepted (a flow needs about 5).
MAX_DEPTH = 40
#: Most values a file may expand to once YAML aliases are followed ("billion laughs").
MAX_VALUES = 50_000

#: ARI media URI schemes a prompt may use.
MEDIA_SCHEMES = ("sound", "digits", "number", "characters", "recording", "tone")
#: One DTMF key.
DTMF_KEYS = frozenset("0123456789*#ABCD")
#: Steps of a `pay` node and the optional prompts it may have.
PAY_STEPS = ("card_number", "expiry", "cvv", "postcode")
PAY_PROMPTS = (*PAY_STEPS, "invalid_card_number", "invalid_expiry", "expired", "invalid_cvv",
               "invalid_postcode", "processing", "approved", "declined")
FLOW_FIELDS = ("flow", "start", "language", "languages", "inputs", "nodes")

_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
_YAML_STD_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
}  # fmt: skip
_YAML_MAP_TAG = "tag:yaml.org,2002:map"
_YAML_SEQ_TAG = "tag:yaml.org,2002:seq"


# ----------------------------------------------------------------------------- located values


@dataclass(frozen=True)
class Value:
    """A value read from a file and where it starts.

    `data` is a scalar, a `dict[str, tuple[Pos, Value]]` (key → where the key is, value) or a
    `list[Value]`. `text_col` is the column of a string's first character when the string
    sits on one line exactly as written (so a column inside it maps into the file); `raw`
    is the source text of a YAML plain scalar (`1`, `0.50`, `yes`).
    """

    data: Any
    pos: Pos
    text_col: int | None = None
    raw: str | None = None

    @property
    def is_map(self) -> bool:
        return isinstance(self.data, dict)

    @property
    def is_list(self) -> bool:
        return isinstance(self.data, list)


def _describe(v: Value) -> str:
    """A short, safe description of a value for messages."""
    d = v.data
    if isinstance(d, dict):
        return "a mapping"
    if isinstance(d, list):
        return "a list"
    if d is None:
        return "nothing (null)"
    if isinstance(d, bool):
        return f"{str(d).lower()} (a boolean)"
    if isinstance(d, str):
        return repr(d) if len(d) <= 40 else repr(d[:37] + "...")
    if isinstance(d, int | float):
        return repr(d)
    return f"a {type(d).__name__}"


class _Problems:
    """Collects the errors of one file (and of its subflows)."""

    def __init__(self) -> None:
        self.errors: list[FlowError] = []

    def add(self, pos: Pos, field: str, message: str) -> None:
        self.errors.append(FlowError(pos, field, message))


# ----------------------------------------------------------------------------- YAML


def _yaml_tree(text: str, file: str, problems: _Problems) -> Value | None:
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    m = event.start_mark
                    at = Pos(file, m.line + 1, m.column + 1) if m else Pos(file, 1, 1)
                    problems.add(at, "",
                                 f"nested more than {MAX_DEPTH} levels deep")
                    return None
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(file, mark.line + 1, mark.column + 1) if mark else Pos(file, 1, 1)
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        problems.add(pos, "", f"not valid YAML: {what}")
        return None
    except yaml.YAMLError as exc:
        problems.add(Pos(file, 1, 1), "", f"not valid YAML: {exc}")
        return None
    except RecursionError:
        problems.add(Pos(file, 1, 1), "", "nested too deeply")
        return None
    if root is None:
        problems.add(Pos(file, 1, 1), "", "the file is empty: a flow needs `start` and `nodes`")
        return None
    budget = [MAX_VALUES]
    return _yaml_value(root, text, file, problems, budget, set(), "")


def _yaml_value(node: yaml.Node, text: str, file: str, problems: _Problems,
                budget: list[int], active: set[int], path: str) -> Value | None:
    """`node` as a `Value`; `path` is its field path (`nodes.main.options`) for errors."""
    pos = Pos(file, node.start_mark.line + 1, node.start_mark.column + 1)
    budget[0] -= 1
    if budget[0] < 0:
        if budget[0] == -1:
            problems.add(pos, path, f"expands to more than {MAX_VALUES} values (aliases?)")
        return None
    if id(node) in active:
        problems.add(pos, path, "an alias refers to a value that contains it")
        return None
    if isinstance(node, yaml.ScalarNode):
        return _yaml_scalar(node, pos, text, problems, path)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _YAML_SEQ_TAG:
            problems.add(pos, path, f"tag {node.tag} is not supported")
            return None
        active.add(id(node))
        items: list[Value] = []
        for n, child in enumerate(node.value):
            v = _yaml_value(child, text, file, problems, budget, active, f"{path}[{n}]")
            if v is not None:
                items.append(v)
        active.discard(id(node))
        return Value(items, pos)
    if isinstance(node, yaml.MappingNode):
        if node.tag != _YAML_MAP_TAG:
            problems.add(pos, path, f"tag {node.tag} is not supported")
            return None
        active.add(id(node))
        entries: dict[str, tuple[Pos, Value]] = {}
        for knode, vnode in node.value:
            kpos = Pos(file, knode.start_mark.line + 1, knode.start_mark.column + 1)
            if not isinstance(knode, yaml.ScalarNode):
                problems.add(kpos, path, "a key must be plain text, not a list or mapping")
                continue
            if knode.tag == "tag:yaml.org,2002:merge":
                problems.add(kpos, path, "merge keys (<<) are not supported: write the "
                             "fields")
                continue
            key = knode.value
            sub = f"{path}.{key}" if path else key
            if key in entries:
                first = entries[key][0]
                problems.add(kpos, sub, f"duplicate key (first written at line {first.line})")
                continue
            v = _yaml_value(vnode, text, file, problems, budget, active, sub)
            if v is not None:
                entries[key] = (kpos, v)
        active.discard(id(node))
        return Value(entries, pos)
    problems.add(pos, "", "unsupported YAML value")  # pragma: no cover - compose has 3 kinds
    return None


def _yaml_scalar(node: yaml.ScalarNode, pos: Pos, text: str, problems: _Problems,
                 path: str) -> Value | None:
    if node.tag not in _YAML_STD_TAGS:
        if node.tag in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"):
            # A date or binary where text is meant: keep the text as written.
            return Value(node.value, pos)
        problems.add(pos, path, f"tag {node.tag} is not supported")
        return None
    try:
        # A fresh constructor each time: one keeps every node it built.
        value = yaml.constructor.SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        problems.add(pos, path, f"cannot read the value {node.value[:40]!r}")
        return None
    text_col = None
    raw = None
    start, end = node.start_mark, node.end_mark
    if isinstance(value, str) and start.line == end.line:
        written = text[start.index:end.index]
        if node.style is None and written == value:
            text_col = start.column + 1
        elif node.style in ("'", '"') and written[1:-1] == value:
            text_col = start.column + 2
    if node.style is None:
        raw = node.value
    return Value(value, pos, text_col, raw)


# ----------------------------------------------------------------------------- TOML


class _TomlScan:
    """Positions of keys and values in a TOML text, by key path (array items by index).

    A best-effort scan over text `tomllib` already accepted: it only needs to find where
    things start, not to check them.
    """

    def __init__(self, text: str, file: str) -> None:
        self.t = text
        self.file = file
        self.i = 0
        #: path -> (key position, value position, exact string column or None)
        self.at: dict[tuple[str | int, ...], tuple[Pos, Pos, int | None]] = {}
        self._array_counts: dict[tuple[str | int, ...], int] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def pos(self, index: int) -> Pos:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return Pos(self.file, lo + 1, index - self._line_starts[lo] + 1)

    def run(self) -> None:
        t = self.t
        table: tuple[str | int, ...] = ()
        while True:
            self._skip(newlines=True)
            if self.i >= len(t):
                return
            start = self.i
            if t.startswith("[[", self.i):
                self.i += 2
                parts = self._key()
                self.i = t.index("]]", self.i) + 2
                base = tuple(parts)
                n = self._array_counts.get(base, 0)
                self._array_counts[base] = n + 1
                table = (*base, n)
                p = self.pos(start)
                self.at.setdefault(base, (p, p, None))
                self.at[table] = (p, p, None)
            elif t[self.i] == "[":
                self.i += 1
                parts = self._key()
                self.i = t.index("]", self.i) + 1
                table = tuple(parts)
                p = self.pos(start)
                self.at.setdefault(table, (p, p, None))
            else:
                self._keyval(table)

    def _keyval(self, table: tuple[str | int, ...]) -> None:
        kstart = self.i
        parts = self._key()
        self._skip()
        if self.i >= len(self.t) or self.t[self.i] != "=":
            raise ValueError("expected =")
        self.i += 1
        path = (*table, *parts)
        kpos = self.pos(kstart)
        for n in range(1, len(parts)):  # dotted keys define their parents here
            self.at.setdefault((*table, *parts[:n]), (kpos, kpos, None))
        self._value(path, kpos)

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip()
            t = self.t
            if t[self.i] in "\"'":
                q = t[self.i]
                j = self.i + 1
                buf = []
                while t[j] != q:
                    if q == '"' and t[j] == "\\":
                        buf.append(t[j + 1])
                        j += 2
                        continue
                    buf.append(t[j])
                    j += 1
                parts.append("".join(buf))
                self.i = j + 1
            else:
                m = re.compile(r"[A-Za-z0-9_-]+").match(t, self.i)
                if not m:
                    raise ValueError("bad key")
                parts.append(m.group(0))
                self.i = m.end()
            self._skip()
            if self.i < len(t) and t[self.i] == ".":
                self.i += 1
                continue
            return parts

    def _skip(self, newlines: bool = False) -> None:
        t = self.t
        while self.i < len(t):
            c = t[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(t) and t[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _value(self, path: tuple[str | int, ...], kpos: Pos) -> None:
        self._skip()
        t = self.t
        start = self.i
        vpos = self.pos(start)
        exact: int | None = None
        if t.startswith('"""', start) or t.startswith("'''", start):
            q = t[start:start + 3]
            end = t.index(q, start + 3)
            while t.startswith(q[0], end + 3):  # up to two quotes may end the content
                end += 1
            self.i = end + 3
        elif t[start] in "\"'":
            q = t[start]
            j = start + 1
            escaped = False
            while t[j] != q:
                if q == '"' and t[j] == "\\":
                    escaped = True
                    j += 2
                    continue
                j += 1
            self.i = j + 1
            if not escaped:
                exact = vpos.col + 1
        elif t[start] == "{":
            self.i += 1
            self.at[path] = (kpos, vpos, None)
            while True:
                self._skip()
                if t[self.i] == "}":
                    self.i += 1
                    return
                if t[self.i] == ",":
                    self.i += 1
                    continue
                self._keyval(path)
        elif t[start] == "[":
            self.i += 1
            self.at[path] = (kpos, vpos, None)
            n = 0
            while True:
                self._skip(newlines=True)
                if t[self.i] == "]":
                    self.i += 1
                    return
                if t[self.i] == ",":
                    self.i += 1
                    continue
                item_pos = self.pos(self.i)
                self._value((*path, n), item_pos)
                n += 1
        else:
            m = re.compile(r"[^,\]}\s#]+( [0-9:.+-Z]+)?").match(t, start)
            self.i = m.end() if m else start + 1
        self.at[path] = (kpos, vpos, exact)


def _toml_tree(text: str, file: str, problems: _Problems) -> Value | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        if m:
            pos = Pos(file, int(m.group(1)), int(m.group(2)))
        elif "end of document" in str(exc):
            pos = Pos(file, text.count("\n") + 1, 1)
        else:
            pos = Pos(file, 1, 1)
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "",
                     str(exc)) or "syntax error"
        problems.add(pos, "", f"not valid TOML: {msg}")
        return None
    except (RecursionError, ValueError):
        problems.add(Pos(file, 1, 1), "", "not valid TOML")
        return None
    scan = _TomlScan(text, file)
    # On a surprise, the positions found so far are kept; the rest fall back to their parents.
    with contextlib.suppress(ValueError, IndexError, RecursionError):
        scan.run()
    root = Pos(file, 1, 1)

    def where(path: tuple[str | int, ...]) -> tuple[Pos, Pos, int | None]:
        p = path
        while p:
            if p in scan.at:
                return scan.at[p] if p == path else (scan.at[p][0], scan.at[p][1], None)
            p = p[:-1]
        return root, root, None

    def build(obj: Any, path: tuple[str | int, ...], depth: int) -> Value | None:
        _, vpos, exact = where(path)
        if depth > MAX_DEPTH:
            problems.add(vpos, "", f"nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(obj, dict):
            entries: dict[str, tuple[Pos, Value]] = {}
            for k, v in obj.items():
                child = build(v, (*path, k), depth + 1)
                if child is not None:
                    entries[k] = (where((*path, k))[0], child)
            return Value(entries, vpos)
        if isinstance(obj, list):
            items = [build(v, (*path, n), depth + 1) for n, v in enumerate(obj)]
            return Value([x for x in items if x is not None], vpos)
        if isinstance(obj, str):
            return Value(obj, vpos, exact)
        if isinstance(obj, bool | int | float):
            return Value(obj, vpos)
        return Value(str(obj), vpos)  # dates and times: kept as text

    try:
        return build(data, (), 0)
    except RecursionError:
        problems.add(root, "", "nested too deeply")
        return None


# ----------------------------------------------------------------------------- conversion


def _suggest(word: str, choices: Iterator[str] | tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _NodeReader:
    """Reads the fields of one node mapping, type-checking each and recording positions."""

    def __init__(self, loader: _FlowReader, name: str, kpos: Pos, value: Value,
                 cls: type[Node]) -> None:
        self.loader = loader
        self.name = name
        self.pos = kpos
        self.entries: dict[str, tuple[Pos, Value]] = value.data
        self.cls = cls
        self.fields: dict[str, Pos] = {}
        self.failed = False
        self.kwargs: dict[str, Any] = {}

    # --- plumbing

    def path(self, field: str) -> str:
        return f"nodes.{self.name}.{field}"

    def error(self, pos: Pos, field: str, message: str) -> None:
        self.failed = True
        self.loader.problems.add(pos, self.path(field), message)

    def value(self, field: str) -> Value | None:
        entry = self.entries.get(field)
        if entry is None:
            return None
        self.fields[field] = entry[1].pos
        return entry[1]

    def missing(self, field: str, what: str) -> None:
        self.error(self.pos, field, f"required: {what}")

    def set(self, field: str, v: Any) -> None:
        self.kwargs[field] = v

    def check_unknown(self) -> None:
        allowed = ["type", *(f.name for f in dataclasses.fields(self.cls)
                             if f.name not in ("name", "pos", "fields"))]
        for key, (kpos, _) in self.entries.items():
            if key not in allowed:
                kind = self.loader.type_name(self.cls)
                self.error(kpos, key, f"unknown field {key!r} for a {kind} node"
                           f"{_suggest(key, allowed)}; allowed: {', '.join(allowed)}")

    # --- typed readers: each returns the value (or default) and records errors

    def route(self, field: str, *, required: bool = True) -> str | None:
        v = self.value(field)
        if v is None or (v.data is None and not required):
            if required:
                self.error(self.pos, field, "missing route: name the node to go to")
            return None
        return self.node_name(v, field)

    def node_name(self, v: Value, field: str) -> str | None:
        if not isinstance(v.data, str) or not v.data:
            hint = " (quote it)" if isinstance(v.data, bool | int | float) else ""
            self.error(v.pos, field, f"must be a node name, got {_describe(v)}{hint}")
            return None
        return v.data

    def text(self, field: str, default: str | None = None, *, required: bool = False,
             template: bool = False, allow_none: bool = False) -> str | None:
        v = self.value(field)
        if v is None or (allow_none and v.data is None):
            if required:
                self.missing(field, "a text value")
            return default
        return self.string(v, field, template=template)

    def string(self, v: Value, field: str, *, template: bool = False) -> str | None:
        data = v.data
        if isinstance(data, int | float) and not isinstance(data, bool):
            data = v.raw if v.raw is not None else str(data)  # a number is fine as text
        if not isinstance(data, str):
            self.error(v.pos, field, f"must be text, got {_describe(v)}")
            return None
        if template:
            try:
                template_names(data)
            except ExprError as exc:
                self.error(_inside(v, exc.col), field, f"bad template: {exc}")
                return None
        return data

    def expr(self, field: str, v: Value) -> Expr | None:
        data = v.data
        if isinstance(data, bool):
            data = str(data)
        elif isinstance(data, int | float):
            data = v.raw if v.raw is not None and _is_python_number(v.raw) else repr(data)
        if not isinstance(data, str):
            self.error(v.pos, field, f"must be an expression (text), got {_describe(v)}")
            return None
        try:
            return compile_expr(data)
        except ExprError as exc:
            lead = len(data) - len(data.lstrip())
            self.error(_inside(v, exc.col + lead), field, f"bad expression: {exc}")
            return None

    def integer(self, field: str, default: int, lo: int, hi: int) -> int:
        v = self.value(field)
        if v is None:
            return default
        if isinstance(v.data, bool) or not isinstance(v.data, int) or not lo <= v.data <= hi:
            self.error(v.pos, field, f"must be a whole number from {lo} to {hi}, "
                       f"got {_describe(v)}")
            return default
        return v.data

    def number(self, field: str, default: float, lo: float, hi: float, *,
               required: bool = False, above: bool = False) -> float:
        v = self.value(field)
        if v is None:
            if required:
                self.missing(field, "a number of seconds")
            return default
        d = v.data
        ok = (isinstance(d, int | float) and not isinstance(d, bool) and math.isfinite(d)
              and (d > lo if above else d >= lo) and d <= hi)
        if not ok:
            low = f"above {lo:g}" if above else f"from {lo:g}"
            self.error(v.pos, field, f"must be a number {low} to {hi:g}, got {_describe(v)}")
            return default
        return float(d)

    def boolean(self, field: str, default: bool) -> bool:
        v = self.value(field)
        if v is None:
            return default
        if not isinstance(v.data, bool):
            self.error(v.pos, field, f"must be true or false, got {_describe(v)}")
            return default
        return v.data

    def choice(self, field: str, choices: tuple[str, ...], default: str | None) -> str | None:
        v = self.value(field)
        if v is None:
            if default is None:
                self.missing(field, f"one of {', '.join(choices)}")
            return default
        if v.data not in choices or not isinstance(v.data, str):
            self.error(v.pos, field, f"must be one of {', '.join(choices)}, got {_describe(v)}")
            return default
        return v.data

    def dtmf(self, field: str, default: str | None, *, allow_none: bool = False) -> str | None:
        v = self.value(field)
        if v is None:
            return default
        if v.data is None and allow_none:
            return None
        return self.key_of(v, field)

    def key_of(self, v: Value, field: str, data: Any = None) -> str | None:
        d = v.data if data is None else data
        if isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 9 \
                and (v.raw is None or v.raw == str(d)):
            d = str(d)
        if not isinstance(d, str) or d not in DTMF_KEYS:
            self.error(v.pos, field, f"must be one DTMF key (0-9, *, #, A-D; quote * and #), "
                       f"got {_describe(v) if data is None else repr(d)}")
            return None
        return d

    def var(self, field: str, v: Value | None = None, *, name: Any = None) -> str | None:
        if v is None:
            v = self.value(field)
            if v is None:
                self.missing(field, "a variable name")
                return None
        d = v.data if name is None else name
        if not _is_var_name(d):
            self.error(v.pos, field, f"must be a variable name (letters, digits, _; not a "
                       f"keyword or a function name), got {d!r}")
            return None
        return str(d)

    def mapping(self, field: str, *, required: bool = False) -> dict[str, tuple[Pos, Value]]:
        v = self.value(field)
        if v is None:
            if required:
                self.missing(field, "a mapping")
            return {}
        if not v.is_map:
            self.error(v.pos, field, f"must be a mapping, got {_describe(v)}")
            return {}
        out: dict[str, tuple[Pos, Value]] = v.data
        for key, (_, item) in out.items():
            self.fields[f"{field}.{key}"] = item.pos
        return out

    def templates(self, field: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, (kpos, item) in self.mapping(field).items():
            if not _is_var_name(key):
                self.error(kpos, f"{field}.{key}", "must be a name (letters, digits, _)")
                continue
            s = self.string(item, f"{field}.{key}", template=True)
            if s is not None:
                out[key] = s
        return out

    def prompt(self, field: str, *, required: bool) -> Prompt | None:
        v = self.value(field)
        if v is None or (v.data is None and not required):
            if required:
                self.missing(field, "a prompt (a media URI such as sound:welcome, a list of "
                             "them, or one per language)")
            return None
        return self.prompt_of(v, field)

    def prompt_of(self, v: Value, field: str) -> Prompt | None:
        default = self.loader.default_language
        by_language: dict[str, tuple[str, ...]] = {}
        if v.is_map:
            if not v.data:
                self.error(v.pos, field, "must name at least one language")
                return None
            ok = True
            for lang, (kpos, item) in v.data.items():
                sub = f"{field}.{lang}"
                self.fields[sub] = item.pos
                if not _LANGUAGE_RE.fullmatch(lang):
                    self.error(kpos, sub, "must be a language code such as en, fr or pt-BR")
                    ok = False
                    continue
                media = self.media_list(item, sub)
                if media is None:
                    ok = False
                else:
                    by_language[lang] = media
            return Prompt(by_language, v.pos) if ok else None
        media = self.media_list(v, field)
        return None if media is None else Prompt({default: media}, v.pos)

    def media_list(self, v: Value, field: str) -> tuple[str, ...] | None:
        items = v.data if v.is_list else [v]
        if not items:
            self.error(v.pos, field, "must list at least one media URI")
            return None
        out: list[str] = []
        for n, item in enumerate(items):
            sub = f"{field}[{n}]" if v.is_list else field
            self.fields[sub] = item.pos
            m = self.media(item, sub)
            if m is None:
                return None
            out.append(m)
        return tuple(out)

    def media(self, v: Value, field: str) -> str | None:
        if not isinstance(v.data, str):
            self.error(v.pos, field, f"must be a media URI such as sound:welcome, "
                       f"got {_describe(v)}")
            return None
        scheme, sep, rest = v.data.partition(":")
        if not sep or scheme not in MEDIA_SCHEMES or not rest.strip():
            self.error(v.pos, field, f"must be a media URI <scheme>:<name>, the scheme one of "
                       f"{', '.join(MEDIA_SCHEMES)}; got {_describe(v)}")
            return None
        return self.string(v, field, template=True)

    def build(self) -> Node | None:
        self.check_unknown()
        if self.failed:
            return None
        try:
            return self.cls(name=self.name, pos=self.pos, fields=dict(self.fields),
                            **self.kwargs)
        except TypeError as exc:  # pragma: no cover - a reader forgot a required field
            self.error(self.pos, "", f"internal error in the flow loader: {exc}")
            return None


def _inside(v: Value, col: int) -> Pos:
    """The position of column `col` (1-based) of the string `v`, where it can be mapped."""
    if v.text_col is None:
        return v.pos
    return Pos(v.pos.file, v.pos.line, v.text_col + max(col, 1) - 1)


def _is_python_number(raw: str) -> bool:
    return re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", raw) is not None


def _is_var_name(name: Any) -> bool:
    return (isinstance(name, str) and name.isidentifier() and name.isascii()
            and not keyword.iskeyword(name) and name not in FUNCTIONS)


# ----------------------------------------------------------------------------- per node type


def _read_play(r: _NodeReader) -> None:
    r.set("prompt", r.prompt("prompt", required=True))
    r.set("next", r.route("next"))
    r.set("barge_in", r.boolean("barge_in", False))


def _read_retries(r: _NodeReader) -> None:
    r.set("retries", r.integer("retries", 2, 0, 10))
    r.set("timeout_s", r.number("timeout_s", 5.0, 0, 600, above=True))
    r.set("no_input_prompt", r.prompt("no_input_prompt", required=False))
    r.set("invalid_prompt", r.prompt("invalid_prompt", required=False))


def _read_menu(r: _NodeReader) -> None:
    r.set("prompt", r.prompt("prompt", required=True))
    options: dict[str, str] = {}
    entries = r.mapping("options", required=True)
    if "options" in r.entries and not entries and r.entries["options"][1].is_map:
        r.error(r.entries["options"][1].pos, "options", "must map at least one key to a node")
    for key, (kpos, item) in entries.items():
        field = f"options.{key}"
        digit = r.key_of(Value(key, kpos), field)
        target = r.node_name(item, field)
        if digit is not None and target is not None:
            options[digit] = target
    r.set("options", options)
    r.set("no_input", r.route("no_input"))
    r.set("invalid", r.route("invalid"))
    _read_retries(r)
    r.set("repeat_key", r.dtmf("repeat_key", None, allow_none=True))
    r.set("operator_key", r.dtmf("operator_key", None, allow_none=True))
    r.set("operator", r.route("operator", required=False))


def _read_gather(r: _NodeReader) -> None:
    r.set("prompt", r.prompt("prompt", required=True))
    r.set("var", r.var("var"))
    for route in ("next", "no_input", "invalid"):
        r.set(route, r.route(route))
    max_digits = r.integer("max_digits", 20, 1, 64)
    min_digits = r.integer("min_digits", 1, 0, 64)
    if min_digits > max_digits:
        r.error(r.fields.get("min_digits", r.pos), "min_digits",
                f"must not be more than max_digits ({max_digits})")
    r.set("max_digits", max_digits)
    r.set("min_digits", min_digits)
    r.set("finish_key", r.dtmf("finish_key", "#", allow_none=True))
    r.set("inter_digit_timeout_s", r.number("inter_digit_timeout_s", 3.0, 0, 600, above=True))
    r.set("pattern", r.text("pattern", None, allow_none=True))
    _read_retries(r)


def _read_set(r: _NodeReader) -> None:
    assign: list[tuple[str, Expr]] = []
    entries = r.mapping("assign", required=True)
    if "assign" in r.entries and not entries and r.entries["assign"][1].is_map:
        r.error(r.entries["assign"][1].pos, "assign", "must assign at least one variable")
    for key, (kpos, item) in entries.items():
        field = f"assign.{key}"
        name = r.var(field, Value(key, kpos), name=key)
        e = r.expr(field, item)
        if name is not None and e is not None:
            assign.append((name, e))
    r.set("assign", tuple(assign))
    r.set("next", r.route("next"))


def _read_branch(r: _NodeReader) -> None:
    cases: list[tuple[Expr, str]] = []
    v = r.value("cases")
    if v is None:
        r.missing("cases", "a list of {if: <condition>, to: <node>}")
    elif not v.is_list or not v.data:
        r.error(v.pos, "cases", f"must be a non-empty list of {{if: <condition>, to: <node>}}, "
                f"got {_describe(v)}")
    else:
        for n, item in enumerate(v.data):
            field = f"cases[{n}]"
            r.fields[field] = item.pos
            if not item.is_map:
                r.error(item.pos, field, f"must be {{if: <condition>, to: <node>}}, "
                        f"got {_describe(item)}")
                continue
            for key, (kpos, _) in item.data.items():
                if key not in ("if", "to"):
                    r.error(kpos, f"{field}.{key}", f"unknown field {key!r} for a case; "
                            "allowed: if, to")
            cond, to = item.data.get("if"), item.data.get("to")
            if cond is None or to is None:
                r.error(item.pos, field, "a case needs both `if` (a condition) and `to` "
                        "(a node)")
                continue
            r.fields[f"{field}.if"] = cond[1].pos
            r.fields[field] = to[1].pos
            e = r.expr(f"{field}.if", cond[1])
            target = r.node_name(to[1], field)
            if e is not None and target is not None:
                cases.append((e, target))
    r.set("cases", tuple(cases))
    r.set("default", r.route("default"))


def _read_lookup(r: _NodeReader) -> None:
    r.set("url", r.text("url", required=True, template=True))
    url = r.kwargs["url"]
    if url is not None and not re.match(r"(https?://|\{)", url):
        r.error(r.fields["url"], "url", "must start with http:// or https://")
    r.set("next", r.route("next"))
    r.set("fallback", r.route("fallback"))
    r.set("method", r.choice("method", ("GET", "POST"), "GET"))
    r.set("params", r.templates("params"))
    into: dict[str, str] = {}
    for key, (kpos, item) in r.mapping("into").items():
        field = f"into.{key}"
        name = r.var(field, Value(key, kpos), name=key)
        path = r.string(item, field)
        if path is not None and not re.fullmatch(r"[^.\s]+(\.[^.\s]+)*", path):
            r.error(item.pos, field, "must be a dotted path into the JSON answer, "
                    "e.g. customer.tier or items.0.id")
            path = None
        if name is not None and path is not None:
            into[name] = path
    r.set("into", into)
    r.set("timeout_s", r.number("timeout_s", 3.0, 0, 60, above=True))


def _read_identify(r: _NodeReader) -> None:
    r.set("found", r.route("found"))
    r.set("not_found", r.route("not_found"))
    r.set("number", r.text("number", "{ani}", template=True))
    r.set("campaign", r.text("campaign", None, allow_none=True))


def _read_verify(r: _NodeReader) -> None:
    r.set("method", r.choice("method", ("pin", "dob"), None))
    r.set("prompt", r.prompt("prompt", required=True))
    for route in ("next", "failed", "no_input"):
        r.set(route, r.route(route))
    r.set("max_tries", r.integer("max_tries", 3, 1, 10))
    secret_field = r.text("field", None, allow_none=True)
    if secret_field is not None and secret_field not in SECRET_FIELDS:
        r.error(r.fields["field"], "field",
                f"{secret_field!r} is not a field kept secret: use one of "
                f"{', '.join(sorted(SECRET_FIELDS))} (a contact's other fields become "
                f"variables that traces and transfers show, so a PIN must not be one)")
    r.set("field", secret_field)
    r.set("timeout_s", r.number("timeout_s", 5.0, 0, 600, above=True))
    r.set("invalid_prompt", r.prompt("invalid_prompt", required=False))


def _read_pay(r: _NodeReader) -> None:
    action = r.choice("action", ("charge", "tokenize"), "charge")
    r.set("action", action)
    amount = r.value("amount")
    if amount is None or amount.data is None:
        if action == "charge":
            r.missing("amount", "an expression for the amount to charge (e.g. amount_due)")
        r.set("amount", None)
    else:
        r.set("amount", r.expr("amount", amount))
    currency = r.text("currency", "", required=action == "charge")
    if currency and not _CURRENCY_RE.fullmatch(currency):
        r.error(r.fields["currency"], "currency", "must be an ISO 4217 code such as GBP or EUR")
    r.set("currency", currency)
    r.set("require_cvv", r.boolean("require_cvv", True))
    r.set("require_postcode", r.boolean("require_postcode", False))
    prompts: dict[str, Prompt] = {}
    entries = r.mapping("prompts", required=True)
    for key, (kpos, item) in entries.items():
        field = f"prompts.{key}"
        if key not in PAY_PROMPTS:
            r.error(kpos, field, f"unknown prompt{_suggest(key, PAY_PROMPTS)}; allowed: "
                    f"{', '.join(PAY_PROMPTS)}")
            continue
        p = r.prompt_of(item, field)
        if p is not None:
            prompts[key] = p
    if "prompts" in r.entries and r.entries["prompts"][1].is_map:
        needed = ["card_number", "expiry"]
        needed += ["cvv"] if r.kwargs["require_cvv"] else []
        needed += ["postcode"] if r.kwargs["require_postcode"] else []
        for step in needed:
            if step not in entries:
                r.error(r.fields["prompts"], f"prompts.{step}", "required: the prompt for "
                        f"the {step} step")
    r.set("prompts", prompts)
    for route in ("next", "failed", "aborted"):
        r.set(route, r.route(route))
    r.set("retries", r.integer("retries", 2, 0, 10))
    r.set("timeout_s", r.number("timeout_s", 8.0, 0, 600, above=True))
    r.set("inter_digit_timeout_s", r.number("inter_digit_timeout_s", 5.0, 0, 600, above=True))
    r.set("description", r.text("description", "", template=True))


def _read_transfer(r: _NodeReader) -> None:
    r.set("kind", r.choice("kind", ("group", "queue", "external"), None))
    r.set("target", r.text("target", required=True, template=True))
    r.set("failed", r.route("failed"))
    r.set("data", r.templates("data"))
    r.set("prompt", r.prompt("prompt", required=False))


def _read_callback_offer(r: _NodeReader) -> None:
    r.set("queue", r.text("queue", required=True))
    r.set("threshold_s", r.number("threshold_s", 0.0, 0, 86_400, required=True))
    r.set("prompt", r.prompt("prompt", required=True))
    r.set("campaign", r.text("campaign", required=True))
    for route in ("no_wait", "accepted", "declined"):
        r.set(route, r.route(route))
    r.set("accept_key", r.dtmf("accept_key", "1"))
    r.set("decline_key", r.dtmf("decline_key", "2"))
    r.set("number", r.text("number", "{ani}", template=True))
    r.set("retries", r.integer("retries", 2, 0, 10))
    r.set("timeout_s", r.number("timeout_s", 5.0, 0, 600, above=True))


def _read_sms(r: _NodeReader) -> None:
    r.set("text", r.text("text", required=True, template=True))
    r.set("next", r.route("next"))
    r.set("failed", r.route("failed"))
    r.set("to", r.text("to", "{ani}", template=True))


def _read_record(r: _NodeReader) -> None:
    r.set("prompt", r.prompt("prompt", required=False))
    r.set("var", r.var("var"))
    r.set("next", r.route("next"))
    r.set("max_s", r.number("max_s", 60.0, 0, 3600, above=True))
    r.set("finish_key", r.dtmf("finish_key", "#"))


def _read_dnc(r: _NodeReader) -> None:
    r.set("next", r.route("next"))
    r.set("number", r.text("number", "{ani}", template=True))
    r.set("campaign", r.text("campaign", None, allow_none=True))


def _read_hangup(r: _NodeReader) -> None:
    r.set("prompt", r.prompt("prompt", required=False))


def _read_subflow(r: _NodeReader) -> None:
    flow = r.text("flow", required=True)
    if flow is not None and not flow.strip():
        r.error(r.fields["flow"], "flow", "must name a flow file (relative to this one)")
        flow = None
    r.set("flow", flow)
    r.set("next", r.route("next"))


def _read_return(r: _NodeReader) -> None:
    pass


_READERS: dict[type[Node], Callable[[_NodeReader], None]] = {
    Play: _read_play, Menu: _read_menu, Gather: _read_gather, Set: _read_set,
    Branch: _read_branch, Lookup: _read_lookup, Identify: _read_identify, Verify: _read_verify,
    Pay: _read_pay, Transfer: _read_transfer, CallbackOffer: _read_callback_offer,
    Sms: _read_sms, Record: _read_record, Dnc: _read_dnc, Hangup: _read_hangup,
    Subflow: _read_subflow, Return: _read_return,
}  # fmt: skip


# ----------------------------------------------------------------------------- flow


class _FlowReader:
    def __init__(self, path: Path, problems: _Problems,
                 cache: dict[Path, Flow | None], loading: list[Path]) -> None:
        self.path = path
        self.file = str(path)
        self.problems = problems
        self.cache = cache
        self.loading = loading
        self.default_language = "en"

    @staticmethod
    def type_name(cls: type[Node]) -> str:
        return next(k for k, c in NODE_TYPES.items() if c is cls)

    def read(self) -> Flow | None:
        before = len(self.problems.errors)
        root = self.tree()
        if root is None:
            return None
        if not root.is_map:
            self.problems.add(root.pos, "", f"a flow file must be a mapping with start and "
                              f"nodes, got {_describe(root)}")
            return None
        top: dict[str, tuple[Pos, Value]] = root.data
        fields: dict[str, Pos] = {}
        for key, (kpos, val) in top.items():
            fields[key] = val.pos
            if key not in FLOW_FIELDS:
                self.problems.add(kpos, key, f"unknown field {key!r}"
                                  f"{_suggest(key, FLOW_FIELDS)}; "
                                  f"allowed: {', '.join(FLOW_FIELDS)}")

        def get(name: str) -> Value | None:
            entry = top.get(name)
            return None if entry is None else entry[1]

        name = self.path.stem
        if (v := get("flow")) is not None:
            if isinstance(v.data, str) and v.data.strip():
                name = v.data
            else:
                self.problems.add(v.pos, "flow", f"must be the flow's name, got {_describe(v)}")
        if (v := get("language")) is not None:
            if isinstance(v.data, str) and _LANGUAGE_RE.fullmatch(v.data):
                self.default_language = v.data
            else:
                self.problems.add(v.pos, "language", f"must be a language code such as en, "
                                  f"got {_describe(v)}")
        languages: list[str] = []
        if (v := get("languages")) is not None:
            items = v.data if v.is_list else None
            if not items:
                self.problems.add(v.pos, "languages", f"must be a non-empty list of language "
                                  f"codes, got {_describe(v)}")
            else:
                for n, item in enumerate(items):
                    fields[f"languages[{n}]"] = item.pos
                    if isinstance(item.data, str) and _LANGUAGE_RE.fullmatch(item.data):
                        if item.data not in languages:
                            languages.append(item.data)
                    else:
                        self.problems.add(item.pos, f"languages[{n}]", f"must be a language "
                                          f"code such as en, got {_describe(item)}")
        if not languages:
            languages = [self.default_language]
        inputs: list[str] = []
        if (v := get("inputs")) is not None:
            if not v.is_list:
                self.problems.add(v.pos, "inputs", f"must be a list of variable names, "
                                  f"got {_describe(v)}")
            else:
                for n, item in enumerate(v.data):
                    fields[f"inputs[{n}]"] = item.pos
                    if _is_var_name(item.data):
                        inputs.append(item.data)
                    else:
                        self.problems.add(item.pos, f"inputs[{n}]", f"must be a variable name, "
                                          f"got {_describe(item)}")
        start: str | None = None
        if (v := get("start")) is None:
            self.problems.add(root.pos, "start", "required: the name of the first node")
        elif isinstance(v.data, str) and v.data:
            start = v.data
        else:
            self.problems.add(v.pos, "start", f"must be a node name, got {_describe(v)}")
        nodes: dict[str, Node] = {}
        subflows: dict[str, Flow] = {}
        if (v := get("nodes")) is None:
            self.problems.add(root.pos, "nodes", "required: a mapping of node name to "
                              "node")
        elif not v.is_map or not v.data:
            self.problems.add(v.pos, "nodes", f"must be a non-empty mapping of node name to "
                              f"node, got {_describe(v)}")
        else:
            for node_name, (kpos, nv) in v.data.items():
                node = self.node(node_name, kpos, nv)
                if node is not None:
                    nodes[node_name] = node
                    if isinstance(node, Subflow) and node.flow not in subflows:
                        sub = self.subflow(node)
                        if sub is not None:
                            subflows[node.flow] = sub
        if len(self.problems.errors) > before or start is None:
            return None
        return Flow(name=name, path=self.path, start=start, nodes=nodes,
                    default_language=self.default_language, languages=tuple(languages),
                    inputs=tuple(inputs), subflows=subflows, pos=root.pos, fields=fields)

    def tree(self) -> Value | None:
        top = Pos(self.file, 1, 1)
        try:
            size = self.path.stat().st_size
            if size > MAX_FILE_BYTES:
                self.problems.add(top, "", f"the file is {size} bytes; flow files are limited "
                                  f"to {MAX_FILE_BYTES}")
                return None
            raw = self.path.read_bytes()
        except OSError as exc:
            self.problems.add(top, "", f"cannot read the file: {exc.strerror or exc}")
            return None
        if len(raw) > MAX_FILE_BYTES:
            self.problems.add(top, "", f"flow files are limited to {MAX_FILE_BYTES} bytes")
            return None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            self.problems.add(Pos(self.file, line, 1), "", "not UTF-8 text")
            return None
        suffix = self.path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return _yaml_tree(text, self.file, self.problems)
        if suffix == ".toml":
            return _toml_tree(text, self.file, self.problems)
        self.problems.add(top, "", "a flow file must end in .yaml, .yml or .toml")
        return None

    def node(self, name: str, kpos: Pos, v: Value) -> Node | None:
        field = f"nodes.{name}"
        if not _NODE_NAME_RE.fullmatch(name):
            self.problems.add(kpos, field, "a node name is letters, digits, _, - and . "
                              "(not starting with - or .)")
            return None
        if not v.is_map:
            self.problems.add(v.pos, field, f"must be a mapping with a type, got {_describe(v)}")
            return None
        tv = v.data.get("type")
        types = ", ".join(NODE_TYPES)
        if tv is None:
            self.problems.add(kpos, f"{field}.type", f"required: the node type, one of "
                              f"{types}")
            return None
        cls = NODE_TYPES.get(tv[1].data) if isinstance(tv[1].data, str) else None
        if cls is None:
            hint = _suggest(tv[1].data, tuple(NODE_TYPES)) if isinstance(tv[1].data, str) else ""
            self.problems.add(tv[1].pos, f"{field}.type", f"unknown type "
                              f"{_describe(tv[1])}{hint}; one of {types}")
            return None
        reader = _NodeReader(self, name, kpos, v, cls)
        reader.fields["type"] = tv[1].pos
        _READERS[cls](reader)
        return reader.build()

    def subflow(self, node: Subflow) -> Flow | None:
        where = node.where("flow")
        try:
            target = (self.path.parent / node.flow).resolve()
            exists = target.is_file()
        except (OSError, ValueError, RuntimeError):
            self.problems.add(where, f"nodes.{node.name}.flow", f"cannot open the flow file "
                              f"{node.flow!r}")
            return None
        if target in self.loading:
            chain = " -> ".join(p.name for p in [*self.loading[self.loading.index(target):],
                                                 target])
            self.problems.add(where, f"nodes.{node.name}.flow",
                              f"subflows include each other ({chain}): a subflow cannot "
                              f"run itself")
            return None
        if target in self.cache:
            return self.cache[target]
        if not exists:
            self.problems.add(where, f"nodes.{node.name}.flow", f"no such flow file "
                              f"{node.flow!r} (looked for {target})")
            return None
        sub_path = self.path.parent / node.flow
        self.loading.append(target)
        try:
            flow = _FlowReader(sub_path, self.problems, self.cache, self.loading).read()
        finally:
            self.loading.pop()
        self.cache[target] = flow
        return flow


def load_flow(path: Path) -> Flow:
    """The flow in `path` (.yaml, .yml or .toml) with its subflows; `FlowErrors` otherwise.

    Every problem found is reported, in file order. Never raises anything but `FlowErrors`.
    """
    path = Path(path)
    problems = _Problems()
    flow: Flow | None = None
    try:
        try:
            loading = [path.resolve()]
        except (OSError, RuntimeError):
            loading = [path]
        flow = _FlowReader(path, problems, {}, loading).read()
    except RecursionError:
        problems.add(Pos(str(path), 1, 1), "", "nested too deeply")
    except Exception as exc:  # the contract: FlowErrors only, whatever the input
        problems.add(Pos(str(path), 1, 1), "", f"internal error in the flow loader "
                     f"({type(exc).__name__}); please report it with this file")
    if problems.errors or flow is None:
        if not problems.errors:
            problems.add(Pos(str(path), 1, 1), "", "the flow could not be loaded")
        raise FlowErrors(sort_errors(problems.errors))
    return flow


def sort_errors(errors: list[FlowError]) -> list[FlowError]:
    """Errors in file order (files by name), duplicates dropped."""
    seen: set[str] = set()
    out = []
    for e in sorted(errors, key=lambda e: (e.pos.file, e.pos.line, e.pos.col, e.field)):
        if str(e) not in seen:
            seen.add(str(e))
            out.append(e)
    return out
