"""A small, strict reader of Asterisk's configuration syntax, for tests of the configs we ship.

What it reads (Asterisk's `main/config.c` rules, the subset real configs use):
- `[name]` starts a category; `[name](!)` is a template, `[name](tpl1,tpl2)` copies the
  templates' variables first, `[name](+)` adds to the category defined before.
- `key = value` and `key => value` (the same to Asterisk, except for dialplan objects);
  spaces around both are dropped.
- `;` starts a comment unless escaped as `\\;`; `;-- ... --;` is a block comment.
- `#include file` / `#tryinclude file` (quotes optional), relative to the including file's
  folder (Asterisk's config directory); `#exec` is refused (it needs `execincludes`).

Anything else (a line outside a category, an unknown directive, an undefined template, a
missing include) raises `ConfigError` naming the file and line, so a test fails with the place
to fix. `dialplan()` turns the categories of extensions.conf into contexts of numbered steps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_CATEGORY = re.compile(r"^\[([^\]]+)\]\s*(?:\(([^)]*)\))?$")
_PRIORITY = re.compile(r"^(?:(\d+)|n|(?:(\d+)|n)\s*\((\w+)\))$")
_INCLUDE = re.compile(r"^#\s*(include|tryinclude|exec)\s+(.+)$")


class ConfigError(ValueError):
    """A config line Asterisk would refuse or misread; the message starts with file:line."""


@dataclass(frozen=True, slots=True)
class Where:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file.name}:{self.line}"


@dataclass(frozen=True, slots=True)
class Option:
    key: str
    value: str
    where: Where
    #: Written with `=>` (an object, e.g. `exten =>`) rather than `=`.
    is_object: bool = False


@dataclass(slots=True)
class Category:
    name: str
    where: Where
    is_template: bool = False
    templates: tuple[str, ...] = ()
    options: list[Option] = field(default_factory=list)

    def values(self, key: str) -> list[str]:
        """Every value of `key`, in file order (inherited ones first)."""
        return [o.value for o in self.options if o.key == key]

    def get(self, key: str) -> str | None:
        """The value of `key` that Asterisk uses for a single-valued option: the last one."""
        found = self.values(key)
        return found[-1] if found else None


def strip_comment(line: str) -> str:
    """The line without its `;` comment; `\\;` stays (as `;`)."""
    out: list[str] = []
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line) and line[i + 1] == ";":
            out.append(";")
            i += 2
            continue
        if c == ";":
            break
        out.append(c)
        i += 1
    return "".join(out)


def _find_unescaped(text: str, token: str) -> int:
    at = text.find(token)
    while at > 0 and text[at - 1] == "\\":
        at = text.find(token, at + 1)
    return at


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without comments) for every line, block comments removed."""
    in_block = False
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text, kept = raw, ""
        while True:
            if in_block:
                end = text.find("--;")
                if end < 0:
                    break
                text, in_block = text[end + 3 :], False
            start = _find_unescaped(text, ";--")
            if start < 0:
                kept += text
                break
            kept, text, in_block = kept + text[:start], text[start + 3 :], True
        yield number, strip_comment(kept).strip()


def parse_file(path: Path) -> list[Category]:
    """Every category of `path` and the files it includes, in order (templates included)."""
    categories: list[Category] = []
    _parse_into(path, categories, seen=())
    return categories


def _parse_into(
    path: Path,
    categories: list[Category],
    seen: tuple[Path, ...],
    current: Category | None = None,
) -> None:
    if path.resolve() in seen:
        raise ConfigError(f"{path.name}: included from itself ({' -> '.join(map(str, seen))})")
    seen = (*seen, path.resolve())
    by_name = {c.name: c for c in categories}
    for number, text in _lines(path):
        where = Where(path, number)
        if not text:
            continue
        if text.startswith("#"):
            m = _INCLUDE.match(text)
            if m is None:
                raise ConfigError(f"{where}: unknown directive {text!r}")
            kind, target = m.group(1), m.group(2).strip().strip('"')
            if kind == "exec":
                raise ConfigError(f"{where}: #exec needs execincludes=yes; not used here")
            included = path.parent / target
            if not included.is_file():
                if kind == "tryinclude":
                    continue
                raise ConfigError(f"{where}: #include {target}: no such file next to {path.name}")
            # The included file goes on in our current category; after it, we do too.
            _parse_into(included, categories, seen, current)
            by_name = {c.name: c for c in categories}
            continue
        if text.startswith("["):
            current = _category(text, where, by_name)
            if current.name in by_name and current is by_name[current.name]:
                continue  # (+): adding to the existing category
            categories.append(current)
            by_name.setdefault(current.name, current)
            continue
        if current is None:
            raise ConfigError(f"{where}: {text!r} is outside any [category]")
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected `key = value`, got {text!r}")
        is_object = value.startswith(">")
        current.options.append(
            Option(key.strip(), (value[1:] if is_object else value).strip(), where, is_object)
        )


def _category(text: str, where: Where, by_name: dict[str, Category]) -> Category:
    m = _CATEGORY.match(text)
    if m is None:
        raise ConfigError(f"{where}: malformed category header {text!r}")
    name = m.group(1).strip()
    flags = [f.strip() for f in (m.group(2) or "").split(",") if f.strip()]
    if "+" in flags:
        if name not in by_name:
            raise ConfigError(f"{where}: [{name}](+) adds to a category that is not defined yet")
        return by_name[name]
    category = Category(name, where, is_template="!" in flags)
    parents = tuple(f for f in flags if f != "!")
    for parent in parents:
        template = by_name.get(parent)
        if template is None:
            raise ConfigError(f"{where}: [{name}] uses template {parent!r}, not defined above")
        category.options.extend(template.options)
    category.templates = parents
    return category


def categories(path: Path, *, type_: str | None = None) -> dict[str, Category]:
    """The non-template categories of `path` by name. Same-named categories (pjsip.conf's
    endpoint, aor and auth `agent101`) are told apart with `type_`: only those whose `type`
    option is `type_` are returned."""
    out: dict[str, Category] = {}
    for c in parse_file(path):
        if c.is_template or (type_ is not None and c.get("type") != type_):
            continue
        if c.name in out:
            raise ConfigError(f"{c.where}: [{c.name}] defined twice (first at {out[c.name].where})")
        out[c.name] = c
    return out


# ----- dialplan ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    priority: int
    label: str | None
    app: str
    data: str
    where: Where


@dataclass(slots=True)
class Context:
    name: str
    where: Where
    #: extension (pattern) -> steps in priority order
    extensions: dict[str, list[Step]] = field(default_factory=dict)
    includes: list[str] = field(default_factory=list)

    def steps(self, exten: str) -> list[tuple[str | None, str, str]]:
        """(label, application, data) of `exten`, as the emulator's `DIALPLAN` lists them."""
        return [(s.label, s.app, s.data) for s in self.extensions[exten]]


#: extensions.conf categories that hold settings, not a context.
NOT_CONTEXTS = frozenset({"general", "globals"})


def _split_app(text: str, where: Where) -> tuple[str, str]:
    """`App(data)` -> (App, data); `App` -> (App, "")."""
    app, paren, rest = text.partition("(")
    app = app.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", app):
        raise ConfigError(f"{where}: {text!r}: not an application call")
    if not paren:
        return app, ""
    if not rest.endswith(")"):
        raise ConfigError(f"{where}: {text!r}: unbalanced parentheses")
    return app, rest[:-1]


def dialplan(path: Path) -> dict[str, Context]:
    """The contexts of extensions.conf `path` (with its includes). Checks what Asterisk's
    pbx_config checks: `same` after an `exten`, priority 1 first, no priority twice."""
    contexts: dict[str, Context] = {}
    for category in parse_file(path):
        if category.name in NOT_CONTEXTS:
            continue
        if category.name in contexts:
            raise ConfigError(f"{category.where}: context [{category.name}] defined twice")
        context = contexts[category.name] = Context(category.name, category.where)
        exten: str | None = None
        for option in category.options:
            where = option.where
            if option.key == "include":
                context.includes.append(option.value)
                continue
            if option.key not in ("exten", "same"):
                raise ConfigError(f"{where}: {option.key!r} is not a dialplan line")
            parts = option.value.split(",", 2 if option.key == "exten" else 1)
            if option.key == "exten":
                if len(parts) < 3:
                    raise ConfigError(f"{where}: expected exten => name,priority,App(...)")
                exten = parts.pop(0).strip()
            elif exten is None:
                raise ConfigError(f"{where}: `same =>` before any `exten =>`")
            if len(parts) < 2:
                raise ConfigError(f"{where}: expected a priority and an application")
            steps = context.extensions.setdefault(exten, [])
            m = _PRIORITY.match(parts[0].strip())
            if m is None:
                raise ConfigError(f"{where}: priority {parts[0].strip()!r} is not 1, n or n(label)")
            number_text = m.group(1) or m.group(2)
            if number_text is not None:
                number = int(number_text)
            elif steps:
                number = steps[-1].priority + 1
            else:
                raise ConfigError(f"{where}: priority `n` before priority 1 of {exten}")
            if not steps and number != 1:
                raise ConfigError(f"{where}: {exten} starts at priority {number}, not 1")
            if any(s.priority == number for s in steps):
                raise ConfigError(f"{where}: priority {number} of {exten} given twice")
            app, data = _split_app(parts[1].strip(), where)
            steps.append(Step(number, m.group(3), app, data, where))
    return contexts
