"""The flow model: what a loaded, checked IVR flow is, independent of YAML or TOML.

A flow is a graph of named nodes. Every node and every field it was written with remembers
where it came from (`Pos`: file, line, column), so that the validator, the loader and the
interpreter can name the exact place of a problem. Routes are node names (strings); the
validator guarantees that every route of a checked flow names a node of the same flow.

Media references (`Prompt`) are what ARI's `media` parameter accepts (`sound:`, `digits:`,
`number:`, `recording:`, `tone:`, `characters:`), possibly with `{variable}` placeholders
filled at run time, and localized per language: `Prompt.for_language("fr")` falls back to the
flow's default language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ivr.expr import Expr


@dataclass(frozen=True)
class Pos:
    """Where something was written: 1-based line and column in `file`."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class FlowError(Exception):
    """One precise problem in a flow file: where, which field, what is wrong, what to do.

    `str(error)` reads `flows/pay.yaml:12:5: nodes.card.retries: must be an integer >= 0,
    got 'three'`. Values that may be sensitive are never put in the message.
    """

    def __init__(self, pos: Pos, field: str, message: str) -> None:
        self.pos = pos
        self.field = field
        self.message = message
        super().__init__(f"{pos}: {field}: {message}" if field else f"{pos}: {message}")


class FlowErrors(Exception):
    """Every problem found in one flow (the loader and validator report all, not the first)."""

    def __init__(self, errors: list[FlowError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class Prompt:
    """Media to play, per language; each language maps to one or more media URIs in order."""

    by_language: Mapping[str, tuple[str, ...]]
    pos: Pos

    def for_language(self, language: str, default: str) -> tuple[str, ...]:
        return self.by_language.get(language) or self.by_language.get(default) or ()


@dataclass(frozen=True)
class Node:
    """Fields common to every node. `fields` maps each field name written to its position."""

    name: str
    pos: Pos
    fields: Mapping[str, Pos]

    def where(self, field_name: str) -> Pos:
        return self.fields.get(field_name, self.pos)


@dataclass(frozen=True)
class Play(Node):
    prompt: Prompt
    next: str
    barge_in: bool = False


@dataclass(frozen=True)
class Menu(Node):
    """Prompt, then one digit. `options` maps a digit to a node.

    A no-input (nothing within `timeout_s`) or an invalid digit plays the matching prompt and
    asks again, at most `retries` more times; then the call goes to `no_input` or `invalid`
    (the route of the last failure). `repeat_key` replays the menu without spending a retry;
    `operator` is an escape key (and its route) that works at any try.
    """

    prompt: Prompt
    options: Mapping[str, str]
    no_input: str
    invalid: str
    retries: int = 2
    timeout_s: float = 5.0
    no_input_prompt: Prompt | None = None
    invalid_prompt: Prompt | None = None
    repeat_key: str | None = None
    operator_key: str | None = None
    operator: str | None = None


@dataclass(frozen=True)
class Gather(Node):
    """Collect digits into `var`.

    Ends on `finish_key` (not stored), on `max_digits` digits, or `inter_digit_timeout_s`
    after the last digit. Fewer than `min_digits`, or a value `pattern` (a full-match regular
    expression) refuses, is invalid; no digit within `timeout_s` is no input. Retries as
    `Menu`.
    """

    prompt: Prompt
    var: str
    next: str
    no_input: str
    invalid: str
    max_digits: int = 20
    min_digits: int = 1
    finish_key: str | None = "#"
    timeout_s: float = 5.0
    inter_digit_timeout_s: float = 3.0
    pattern: str | None = None
    retries: int = 2
    no_input_prompt: Prompt | None = None
    invalid_prompt: Prompt | None = None


@dataclass(frozen=True)
class Set(Node):
    """Assign variables in order; each expression sees the assignments before it."""

    assign: tuple[tuple[str, Expr], ...]
    next: str


@dataclass(frozen=True)
class Branch(Node):
    """The first case whose condition is true wins; else `default`."""

    cases: tuple[tuple[Expr, str], ...]
    default: str


@dataclass(frozen=True)
class Lookup(Node):
    """An HTTP call to a CRM. `url` and `params` values are templates over variables.

    The JSON answer's fields named in `into` (variable → dotted path) are stored; a timeout,
    a non-2xx status or a body that is not JSON goes to `fallback`.
    """

    url: str
    next: str
    fallback: str
    method: Literal["GET", "POST"] = "GET"
    params: Mapping[str, str] = field(default_factory=dict)
    into: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 3.0


@dataclass(frozen=True)
class Identify(Node):
    """ANI (variable `ani` unless `number` says otherwise) → a contact of Paceline.

    Found: variables `contact_id`, `contact_name`, `contact_<field>` for the record's
    business fields, then `found`. Not found (or no ANI): `not_found`.
    """

    found: str
    not_found: str
    number: str = "{ani}"
    campaign: str | None = None


@dataclass(frozen=True)
class Verify(Node):
    """Ask for a PIN or a date of birth (DDMMYYYY) and compare with the identified record.

    `field` names the record's field (default `pin` or `dob`). A wrong answer retries up to
    `max_tries` in all, then `failed`; right: variable `verified` = True, then `next`.
    Needs a record: a call that reached Verify without `contact_id` goes to `failed`.
    """

    method: Literal["pin", "dob"]
    prompt: Prompt
    next: str
    failed: str
    no_input: str
    max_tries: int = 3
    field: str | None = None
    timeout_s: float = 5.0
    invalid_prompt: Prompt | None = None


@dataclass(frozen=True)
class Pay(Node):
    """Payment capture, as Twilio <Pay>: card number (Luhn, brand), expiry, CVV, postcode.

    Each step has its own prompt and retries; a bad entry plays `prompts['invalid_<step>']`
    (or the step prompt again) and asks again. `*` at any step aborts (`aborted`). The
    gateway's answer routes to `next` (approved) or `failed` (declined, gateway error, or a
    step out of retries). Variables afterwards: `pay_result`, `pay_last4`, `pay_brand`,
    `pay_token`, `pay_error`. Digits themselves are never stored in variables.
    """

    amount: Expr | None
    currency: str
    prompts: Mapping[str, Prompt]
    next: str
    failed: str
    aborted: str
    action: Literal["charge", "tokenize"] = "charge"
    require_cvv: bool = True
    require_postcode: bool = False
    retries: int = 2
    timeout_s: float = 8.0
    description: str = ""
    #: Seconds after a digit before a step takes the entry as complete (no `#` pressed);
    #: `timeout_s` is the wait for the first digit.
    inter_digit_timeout_s: float = 5.0


@dataclass(frozen=True)
class Transfer(Node):
    """Hand the call to a Paceline agent group, an Asterisk queue, or an external number.

    `data` (name → template) is attached to the call (channel variables `PACELINE_<NAME>`,
    and the screen pop). A transfer that cannot be made goes to `failed`.
    """

    kind: Literal["group", "queue", "external"]
    target: str
    failed: str
    data: Mapping[str, str] = field(default_factory=dict)
    prompt: Prompt | None = None


@dataclass(frozen=True)
class CallbackOffer(Node):
    """Estimate the wait in `queue`; above `threshold_s`, offer a callback.

    Wait below the threshold: `no_wait` (usually a Transfer). Offer accepted
    (`accept_key`): a callback contact for `number` (default the ANI) is created in
    `campaign`, then `accepted`. Declined: `declined`. No input or an invalid key retries as
    `Menu`, then `declined`. Variable `ewt_s` holds the estimate either way.
    """

    queue: str
    threshold_s: float
    prompt: Prompt
    campaign: str
    no_wait: str
    accepted: str
    declined: str
    accept_key: str = "1"
    decline_key: str = "2"
    number: str = "{ani}"
    retries: int = 2
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Sms(Node):
    """Send `text` (a template) to `to` (default the ANI); `failed` if the provider refuses."""

    text: str
    next: str
    failed: str
    to: str = "{ani}"


@dataclass(frozen=True)
class Record(Node):
    """Record the caller (a message) until `finish_key`, silence or `max_s`; name in `var`."""

    prompt: Prompt | None
    var: str
    next: str
    max_s: float = 60.0
    finish_key: str = "#"


@dataclass(frozen=True)
class Dnc(Node):
    """Add `number` (default the ANI) to the do-not-call list, then `next`."""

    next: str
    number: str = "{ani}"
    campaign: str | None = None


@dataclass(frozen=True)
class Hangup(Node):
    prompt: Prompt | None = None


@dataclass(frozen=True)
class Subflow(Node):
    """Run another flow file (relative to this one) with the same variables, then `next`."""

    flow: str
    next: str


@dataclass(frozen=True)
class Return(Node):
    """End a subflow: the caller continues at the Subflow node's `next`."""


NODE_TYPES: dict[str, type[Node]] = {
    "play": Play, "menu": Menu, "gather": Gather, "set": Set, "branch": Branch,
    "lookup": Lookup, "identify": Identify, "verify": Verify, "pay": Pay,
    "transfer": Transfer, "callback_offer": CallbackOffer, "sms": Sms, "record": Record,
    "dnc": Dnc, "hangup": Hangup, "subflow": Subflow, "return": Return,
}  # fmt: skip

#: The fields of each node type that are routes (name another node).
ROUTE_FIELDS: dict[type[Node], tuple[str, ...]] = {
    Play: ("next",),
    Menu: ("no_input", "invalid", "operator"),  # + every options value
    Gather: ("next", "no_input", "invalid"),
    Set: ("next",),
    Branch: ("default",),  # + every case target
    Lookup: ("next", "fallback"),
    Identify: ("found", "not_found"),
    Verify: ("next", "failed", "no_input"),
    Pay: ("next", "failed", "aborted"),
    Transfer: ("failed",),
    CallbackOffer: ("no_wait", "accepted", "declined"),
    Sms: ("next", "failed"),
    Record: ("next",),
    Dnc: ("next",),
    Hangup: (),
    Subflow: ("next",),
    Return: (),
}

#: Variables every call starts with (set by the driver before the first node).
BUILTIN_VARIABLES: frozenset[str] = frozenset(
    {"ani", "dnid", "language", "channel_id", "call_id", "campaign", "contact_id"}
)


def routes_of(node: Node) -> list[tuple[str, str]]:
    """(field, target) for every route of `node`; `options.<digit>` and `cases[i]` included."""
    out: list[tuple[str, str]] = []
    for name in ROUTE_FIELDS[type(node)]:
        target = getattr(node, name)
        if target is not None:
            out.append((name, target))
    if isinstance(node, Menu):
        out.extend((f"options.{d}", t) for d, t in node.options.items())
    if isinstance(node, Branch):
        out.extend((f"cases[{i}]", t) for i, (_, t) in enumerate(node.cases))
    return out


@dataclass(frozen=True)
class Flow:
    """A loaded flow: nodes by name, the start node, languages; subflows loaded by path."""

    name: str
    path: Path
    start: str
    nodes: Mapping[str, Node]
    default_language: str = "en"
    languages: tuple[str, ...] = ("en",)
    #: Variables the flow expects from outside (e.g. a campaign's business fields).
    inputs: tuple[str, ...] = ()
    #: Subflows referenced by Subflow nodes, by the `flow` string as written.
    subflows: Mapping[str, Flow] = field(default_factory=dict)
    pos: Pos = field(default_factory=lambda: Pos("<flow>", 1, 1))
    #: Where each top-level field (`start`, `language`, `languages`, `inputs`...) was written.
    fields: Mapping[str, Pos] = field(default_factory=dict)

    def where(self, field_name: str) -> Pos:
        return self.fields.get(field_name, self.pos)
