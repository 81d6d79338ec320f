"""Checks of a loaded flow that need the whole graph: what `paceline ivr validate` reports.

`check_flow(flow)` returns every problem (empty: the flow is fine); `load_and_check(path)`
loads and checks, raising `FlowErrors`. Each error names the position of the offending field
(as the loader recorded it), the field path, and what to do. The checks:

- routes (and `start`) that name no node of the flow;
- nodes no route reaches from `start`;
- loops: a set of nodes the call can never leave (no route out, no hangup, transfer or
  return inside), and loops a silent or wrong caller goes round forever: a cycle of routes
  taken without the caller's input (every route of play, set, lookup, ...; the failure
  routes of input nodes: `no_input`, `invalid`, `failed`, callback `declined` and
  `no_wait`) that passes
  no `branch` node. A branch is taken as the way out (a counter in a `set`, tested by a
  `branch`); the checker cannot prove that the condition ever changes;
- variables read by expressions and templates that nothing sets: not a builtin, not in
  `inputs`, not set by any node of the flow or of its subflows (they share variables);
- gather patterns that do not compile;
- `return` outside a subflow; a subflow that never reaches a `return`, `hangup` or
  `transfer`;
- prompt languages not in `languages`, per-language prompts without the default language;
- menu keys used twice (an option and the repeat or operator key), `operator_key` without
  `operator` (or the reverse), callback accept and decline keys the same.

Subflows (`Flow.subflows`) are checked too, as subflows, once each.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ivr.expr import template_names
from ivr.loader import load_flow, sort_errors
from ivr.model import (
    BUILTIN_VARIABLES,
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
    Prompt,
    Record,
    Return,
    Set,
    Sms,
    Transfer,
    Verify,
    routes_of,
)

#: Nodes that wait for the caller, and their routes a silent or wrong caller ends up on.
FAILURE_ROUTES: dict[type[Node], tuple[str, ...]] = {
    Menu: ("no_input", "invalid"),
    Gather: ("no_input", "invalid"),
    Verify: ("failed", "no_input"),
    Pay: ("failed",),
    CallbackOffer: ("declined", "no_wait"),
}
#: Nodes where a call leaves the flow (or the subflow).
EXIT_NODES = (Hangup, Transfer, Return)

#: Variables set by node types, beyond those they name (`var`, `assign`, `into`).
IDENTIFY_VARIABLES = frozenset({"contact_id", "contact_name", "contact_campaign"})
VERIFY_VARIABLES = frozenset({"verified"})
PAY_VARIABLES = frozenset({"pay_result", "pay_last4", "pay_brand", "pay_token", "pay_error"})
CALLBACK_VARIABLES = frozenset({"ewt_s", "callback_contact_id"})


def load_and_check(path: Path, *, as_subflow: bool = False) -> Flow:
    """The flow in `path`, loaded and checked; `FlowErrors` with every problem otherwise."""
    flow = load_flow(path)
    errors = check_flow(flow, as_subflow=as_subflow)
    if errors:
        raise FlowErrors(errors)
    return flow


def check_flow(flow: Flow, *, as_subflow: bool = False) -> list[FlowError]:
    """Every problem of `flow` and its subflows, in file order (empty: the flow is fine)."""
    flows = list(_flow_tree(flow))
    defined = _defined_variables(flows)
    errors: list[FlowError] = []
    for f in flows:
        errors.extend(_Checker(f, as_subflow=as_subflow or f is not flow,
                               defined=defined).run())
    return sort_errors(errors)


def _flow_tree(flow: Flow) -> Iterator[Flow]:
    """`flow` and every subflow under it, each once."""
    seen: set[int] = set()
    todo = [flow]
    while todo:
        f = todo.pop(0)
        if id(f) in seen:
            continue
        seen.add(id(f))
        yield f
        todo.extend(f.subflows.values())


def _defined_variables(flows: Iterable[Flow]) -> tuple[frozenset[str], bool]:
    """Names some node (or the caller) sets; and whether `contact_*` fields may exist."""
    names: set[str] = set(BUILTIN_VARIABLES)
    identify = False
    for f in flows:
        names.update(f.inputs)
        for node in f.nodes.values():
            if isinstance(node, Set):
                names.update(n for n, _ in node.assign)
            elif isinstance(node, Gather | Record):
                names.add(node.var)
            elif isinstance(node, Lookup):
                names.update(node.into)
            elif isinstance(node, Identify):
                names.update(IDENTIFY_VARIABLES)
                identify = True
            elif isinstance(node, Verify):
                names.update(VERIFY_VARIABLES)
            elif isinstance(node, Pay):
                names.update(PAY_VARIABLES)
            elif isinstance(node, CallbackOffer):
                names.update(CALLBACK_VARIABLES)
    return frozenset(names), identify


def _prompts(node: Node) -> Iterator[tuple[str, Prompt]]:
    for name in ("prompt", "no_input_prompt", "invalid_prompt"):
        p = getattr(node, name, None)
        if isinstance(p, Prompt):
            yield name, p
    if isinstance(node, Pay):
        for step, p in node.prompts.items():
            yield f"prompts.{step}", p


def _templates(node: Node) -> Iterator[tuple[str, str]]:
    """(field, template) for every template of `node`, prompts' media included."""
    for field, prompt in _prompts(node):
        for lang, media in prompt.by_language.items():
            localized = f"{field}.{lang}" in node.fields
            for n, m in enumerate(media):
                sub = f"{field}.{lang}" if localized else field
                if len(media) > 1:
                    sub = f"{sub}[{n}]"
                yield sub, m
    if isinstance(node, Lookup):
        yield "url", node.url
        yield from ((f"params.{k}", v) for k, v in node.params.items())
    if isinstance(node, Identify | CallbackOffer | Dnc):
        yield "number", node.number
    if isinstance(node, Pay):
        yield "description", node.description
    if isinstance(node, Transfer):
        yield "target", node.target
        yield from ((f"data.{k}", v) for k, v in node.data.items())
    if isinstance(node, Sms):
        yield "to", node.to
        yield "text", node.text


class _Checker:
    def __init__(self, flow: Flow, *, as_subflow: bool,
                 defined: tuple[frozenset[str], bool]) -> None:
        self.flow = flow
        self.as_subflow = as_subflow
        self.defined, self.has_identify = defined
        self.errors: list[FlowError] = []
        #: Valid routes only: node -> [(field, target)].
        self.edges: dict[str, list[tuple[str, str]]] = {}

    def add(self, node: Node | None, field: str, message: str) -> None:
        if node is None:
            self.errors.append(FlowError(self.flow.where(field), field, message))
        else:
            path = f"nodes.{node.name}.{field}" if field else f"nodes.{node.name}"
            self.errors.append(FlowError(node.where(field) if field else node.pos, path,
                                         message))

    def run(self) -> list[FlowError]:
        self.check_routes()
        reachable = self.check_reachable()
        self.check_loops(reachable)
        self.check_ending(reachable)
        for node in self.flow.nodes.values():
            self.check_variables(node)
            self.check_prompts(node)
            self.check_keys(node)
            if isinstance(node, Gather) and node.pattern is not None:
                self.check_pattern(node, node.pattern)
        self.check_languages()
        return self.errors

    # --- graph

    def unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.flow.nodes), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown node {name!r}: {hint}name one of the nodes of this flow"

    def check_routes(self) -> None:
        if self.flow.start not in self.flow.nodes:
            self.add(None, "start", self.unknown(self.flow.start))
        for node in self.flow.nodes.values():
            ok: list[tuple[str, str]] = []
            for field, target in routes_of(node):
                if target in self.flow.nodes:
                    ok.append((field, target))
                else:
                    self.add(node, field, self.unknown(target))
            self.edges[node.name] = ok

    def check_reachable(self) -> set[str]:
        seen: set[str] = set()
        if self.flow.start in self.flow.nodes:
            todo = [self.flow.start]
            while todo:
                name = todo.pop()
                if name in seen:
                    continue
                seen.add(name)
                todo.extend(t for _, t in self.edges[name])
        for node in self.flow.nodes.values():
            if node.name not in seen and self.flow.start in self.flow.nodes:
                self.add(node, "", f"unreachable: no route leads here from start "
                         f"{self.flow.start!r}; route to it or delete it")
        return seen

    def check_loops(self, reachable: set[str]) -> None:
        nodes = self.flow.nodes
        # 1. Loops the call can never leave at all.
        graph = {n: [t for _, t in self.edges[n]] for n in reachable}
        trapped: set[str] = set()
        for scc in _sccs(graph):
            if not _is_cycle(scc, graph):
                continue
            leaves = any(t not in scc for n in scc for t in graph[n])
            exits = any(isinstance(nodes[n], EXIT_NODES) for n in scc)
            if not leaves and not exits:
                trapped |= scc
                first = min(scc, key=lambda n: (nodes[n].pos.line, nodes[n].pos.col))
                self.add(nodes[first], "", f"loop with no exit: {_cycle_text(scc, graph)}; "
                         f"route one of these nodes to a node outside the loop or to a hangup")
        # 2. Loops taken without the caller doing anything right: no retry limit.
        silent: dict[str, list[tuple[str, str]]] = {}
        for n in reachable:
            node = nodes[n]
            if isinstance(node, Branch):
                silent[n] = []
            elif type(node) in FAILURE_ROUTES:
                fails = FAILURE_ROUTES[type(node)]
                silent[n] = [(f, t) for f, t in self.edges[n] if f in fails]
            else:
                silent[n] = list(self.edges[n])
        sgraph = {n: [t for _, t in e] for n, e in silent.items()}
        for scc in _sccs(sgraph):
            if not _is_cycle(scc, sgraph) or scc <= trapped:
                continue  # (a trapped loop is reported once, above)
            cycle = _cycle_text(scc, sgraph)
            inputs = sorted((n for n in scc if type(nodes[n]) in FAILURE_ROUTES),
                            key=lambda n: (nodes[n].pos.line, nodes[n].pos.col))
            if inputs:
                node = nodes[inputs[0]]
                field = next(f for f, t in silent[node.name] if t in scc)
                self.add(node, field, f"retries never end: {field} leads back here "
                         f"({cycle}) without a branch; route it to a node that ends the "
                         f"call, or through a branch that counts the tries")
            else:
                first = min(scc, key=lambda n: (nodes[n].pos.line, nodes[n].pos.col))
                self.add(nodes[first], "", f"endless loop: {cycle} runs without input or a "
                         f"condition; add a branch (with a counter) or route out of it")

    def check_ending(self, reachable: set[str]) -> None:
        nodes = self.flow.nodes
        if not self.as_subflow:
            for node in nodes.values():
                if isinstance(node, Return):
                    self.add(node, "type", "return only ends a subflow; this flow is not one: "
                             "use hangup, or route to another node (checking a subflow "
                             "file on its own? paceline ivr validate --subflow)")
            return
        if self.flow.start in nodes and not any(
                isinstance(nodes[n], EXIT_NODES) for n in reachable):
            self.add(None, "start", "this subflow never reaches a return (or a hangup or "
                     "transfer): add a `type: return` node and route to it")

    # --- values

    def check_variables(self, node: Node) -> None:
        used: list[tuple[str, str]] = []
        if isinstance(node, Set):
            for name, e in node.assign:
                used.extend((f"assign.{name}", n) for n in sorted(e.names))
        if isinstance(node, Branch):
            for i, (e, _) in enumerate(node.cases):
                used.extend((f"cases[{i}].if", n) for n in sorted(e.names))
        if isinstance(node, Pay) and node.amount is not None:
            used.extend(("amount", n) for n in sorted(node.amount.names))
        for field, template in _templates(node):
            try:
                used.extend((field, n) for n in sorted(template_names(template)))
            except ValueError:  # the loader refused it already
                continue
        for field, name in used:
            if name in self.defined or (self.has_identify and name.startswith("contact_")):
                continue
            close = difflib.get_close_matches(name, sorted(self.defined), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if name.startswith("contact_"):
                how = "contact_* variables are set by an identify node: add one before this"
            else:
                how = ("set it in a set, gather, lookup or record node before this, or list "
                       "it in the flow's `inputs`")
            self.add(node, field, f"undefined variable {name!r}{hint}: {how}")

    def check_pattern(self, node: Gather, pattern: str) -> None:
        try:
            re.compile(pattern)
        except re.error as exc:
            at = f" at character {exc.pos + 1}" if exc.pos is not None else ""
            self.add(node, "pattern", f"bad pattern: {exc.msg}{at}; write a regular "
                     f"expression the digits must match in full, e.g. [0-9]{{6,8}}")
            return
        except (RecursionError, OverflowError, ValueError):
            self.add(node, "pattern", "bad pattern: too complex")

    def check_prompts(self, node: Node) -> None:
        flow = self.flow
        for field, prompt in _prompts(node):
            for lang in prompt.by_language:
                if lang not in flow.languages and lang != flow.default_language:
                    sub = f"{field}.{lang}"
                    self.add(node, sub if sub in node.fields else field,
                             f"language {lang!r} is not in the flow's languages "
                             f"({', '.join(flow.languages)}): add it there or remove this")
            if flow.default_language not in prompt.by_language:
                self.add(node, field, f"no prompt for the default language "
                         f"{flow.default_language!r}: add one (callers of other languages "
                         f"hear it when theirs is missing)")

    def check_keys(self, node: Node) -> None:
        if isinstance(node, Menu):
            for key_field in ("repeat_key", "operator_key"):
                key = getattr(node, key_field)
                if key is not None and key in node.options:
                    self.add(node, f"options.{key}", f"key {key!r} is also the {key_field}: "
                             f"choose another key for one of them")
            if node.repeat_key is not None and node.repeat_key == node.operator_key:
                self.add(node, "operator_key", f"key {node.repeat_key!r} is also the "
                         f"repeat_key: choose another")
            if node.operator_key is not None and node.operator is None:
                self.add(node, "operator_key", "operator_key needs `operator`: the node the "
                         "key leads to (or remove operator_key)")
            if node.operator is not None and node.operator_key is None:
                self.add(node, "operator", "operator needs `operator_key`: the key that "
                         "leads there (or remove operator)")
        if isinstance(node, CallbackOffer) and node.accept_key == node.decline_key:
            self.add(node, "decline_key", f"the same key as accept_key "
                     f"({node.accept_key!r}): choose another")

    def check_languages(self) -> None:
        flow = self.flow
        if flow.default_language not in flow.languages:
            self.add(None, "languages", f"must include the default language "
                     f"{flow.default_language!r}")


def _sccs(graph: dict[str, list[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan's, iterative: flows may be long chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            succ = [w for w in graph.get(v, ()) if w in graph]
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp: set[str] = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def _is_cycle(scc: set[str], graph: dict[str, list[str]]) -> bool:
    if len(scc) > 1:
        return True
    (n,) = scc
    return n in graph.get(n, ())


def _cycle_text(scc: set[str], graph: dict[str, list[str]]) -> str:
    """One cycle through the component, as `a -> b -> a` (the first node in name order)."""
    start = min(scc)
    path = [start]
    seen = {start}
    node = start
    while True:
        nxt = sorted(t for t in graph[node] if t in scc)
        if (start in nxt and len(path) > 1) or nxt == [start]:
            return " -> ".join([*path, start])
        fresh = [t for t in nxt if t not in seen]
        if not fresh:
            return " -> ".join([*path, nxt[0]])
        node = fresh[0]
        path.append(node)
        seen.add(node)
