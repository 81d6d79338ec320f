"""PCI: a payment flow over ARI leaves no card number and no CVV anywhere Paceline writes.

The payment example runs against the emulator with `record_calls=True`, five callers at once:
an approved card; a declined card then an amex; a number failing Luhn then a good card; a
gateway whose exception quotes the card (the runner must not pass that text on); a caller who
hangs up half-way through the card number. Everything the process produces meanwhile is
captured (`Capture`):

- every log record of every logger (root at DEBUG, `aiohttp`, `asyncio` and
  `sqlalchemy.engine` included: the last logs each SQL statement with its parameters and
  the rows it read): the formatted message, `msg`, `args`, `exc_text` and `stack_info`;
- every exception raised in any Python frame of any thread (`sys.settrace` /
  `threading.settrace`, 'exception' events): `str`, `repr` and `args`. The one exception
  the test gateway raises itself, quoting the card on purpose, is excluded by identity (it
  is the foreign text under test); whatever Paceline derives from it is scanned;
- every `on_event` of the `IvrApp`, every command (`Trace`s included) and event of every
  session, the sessions' variables;
- every row of every table of the SQLite database (`sqlite_master`), and the raw bytes of the
  database file (free pages keep deleted data);
- what the emulator saw of Paceline's requests: query strings, channel variables, the
  recordings.

What is asserted: no full PAN (nor the half-typed one) appears in any text, also not with
spaces, dashes or dots between its digits. CVVs (737, 9374) are short, so they are looked for
only as a whole token: not touching a letter or digit, nor part of a decimal number (an
`0.0737 s` in a SQLAlchemy timing line, a hex id, a port number are not the keyed value; a
leak would show as "cvv 737", "'737'", "=737"). Digits are never emitted one per event while
card data is keyed: every `dtmf` on_event between `secure` on and off is "*". The call
recording is paused at every card digit (the emulator's state when each digit's event
leaves) and resumed after. A positive control feeds known leaks through each channel to show
the capture finds them, so this test can fail.

A gateway that quotes the CVV back in its error (not only the PAN, which `cti.redact` masks
by shape) is covered too: a bare 3-4 digit CVV has no shape, so the runner scrubs the card's
own data from whatever a gateway writes (`test_a_gateway_error_quoting_the_cvv_is_not_passed_on`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text

from dialer.db import write_transaction
from dialer.db.models import ContactNote
from ivr.payments import SimGateway
from ivr.ports import PaymentResult
from ivr.protocol import CardDetails, Trace
from tests.ivr_harness import (
    NOW,
    Call,
    CrmData,
    IvrRig,
    add_contact,
    copy_database,
    migrated_template,
)

#: Every card number keyed in this test (the Luhn failure and the half-typed one too).
PANS = ("4111111111111111", "4000000000000002", "378282246310005", "4111111111111112",
        "5555555555554444", "5105105105105100", "4111111111")
CVVS = ("737", "9374")
LEAKY_PAN = "5105105105105100"  # the test gateway raises, quoting it, for this card

CALLS: dict[str, list[str]] = {
    "approved": ["1", "4111111111111111#", "1230", "737"],
    "declined_then_amex": ["1", "4000000000000002#", "1230", "737",
                           "1", "378282246310005#", "1230", "9374"],
    "invalid_then_valid": ["1", "4111111111111112#", "5555555555554444#", "1230", "737"],
    "gateway_raises": ["1", f"{LEAKY_PAN}#", "1230", "737", "2"],
    "hangup_mid_card": ["1", "4111111111!"],
}
ANIS = {name: f"+4479111234{i:02d}" for i, name in enumerate(CALLS)}
OUTCOMES = {
    "approved": ("hangup", "done"),
    "declined_then_amex": ("hangup", "done"),
    "invalid_then_valid": ("hangup", "done"),
    "gateway_raises": ("transferred", "adviser"),
    "hangup_mid_card": ("caller_hangup", "take_payment"),
}


# ============================================================================== the capture


class ExceptionSpy:
    """Every exception raised in a Python frame while active, in every thread."""

    def __init__(self) -> None:
        self.seen: list[BaseException] = []
        self._ids: set[int] = set()
        self._previous: Any = None

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_lines = False  # 'exception' and 'return' events only: cheap enough
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "exception":
            exc = arg[1]
            if isinstance(exc, BaseException) and id(exc) not in self._ids:
                self._ids.add(id(exc))  # the object stays referenced: its id stays unique
                self.seen.append(exc)
        return self._local

    def __enter__(self) -> ExceptionSpy:
        self._previous = sys.gettrace()
        threading.settrace(self._global)
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)
        threading.settrace(None)


class LogCapture(logging.Handler):
    """Every record of every logger, as text: message, msg, args, exception and stack."""

    LOGGERS = ("aiohttp", "aiohttp.client", "aiohttp.server", "aiohttp.web", "aiohttp.access",
               "asyncio", "sqlalchemy.engine", "ivr", "cti", "dialer", "sim")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.records = 0
        self._fmt = logging.Formatter()
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        self.texts.append(f"{record.name}: {record.getMessage()}")
        self.texts.append(str(record.msg))
        self.texts.append(repr(record.args))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._fmt.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info):
            if extra:
                self.texts.append(extra)

    @contextlib.contextmanager
    def installed(self) -> Iterator[LogCapture]:
        root = logging.getLogger()
        loggers = [root, *(logging.getLogger(n) for n in self.LOGGERS)]
        self._saved = [(lg, lg.level, lg.propagate) for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
            if lg is not root:
                lg.propagate = True
        root.addHandler(self)
        logging.captureWarnings(True)
        try:
            yield self
        finally:
            logging.captureWarnings(False)
            root.removeHandler(self)
            for lg, level, propagate in self._saved:
                lg.setLevel(level)
                lg.propagate = propagate


def table_dump(engine: Engine) -> list[str]:
    """Every row of every table, one text per row (table name first)."""
    out: list[str] = []
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
        for (name,) in list(tables):
            for row in conn.execute(text(f'SELECT * FROM "{name}"')):
                out.append(f"{name}: {tuple(row)!r}")
    return out


def database_bytes(engine: Engine) -> str:
    """The database file (and its WAL/journal, if any) as latin-1 text."""
    path = Path(str(engine.url.database))
    blobs = [p.read_bytes() for p in (path, path.with_name(path.name + "-wal"),
                                      path.with_name(path.name + "-journal")) if p.exists()]
    return b"".join(blobs).decode("latin-1")


def exception_texts(excs: list[BaseException], exclude: list[BaseException]) -> list[str]:
    skip = {id(e) for e in exclude}
    out: list[str] = []
    for exc in excs:
        if id(exc) in skip:
            continue
        for render in (str, repr):
            with contextlib.suppress(Exception):
                out.append(f"{type(exc).__name__}: {render(exc)}")
        with contextlib.suppress(Exception):
            out.append(repr(exc.args))
        out.extend(getattr(exc, "__notes__", []) or [])
    return out


def pan_re(pan: str) -> re.Pattern[str]:
    """The PAN, also with one space, dash or dot between any two of its digits."""
    return re.compile(r"[ .-]?".join(pan))


def cvv_re(cvv: str) -> re.Pattern[str]:
    """The CVV as a token of its own: see the module docstring."""
    return re.compile(rf"(?<![0-9A-Za-z])(?<![0-9]\.){cvv}(?![0-9A-Za-z])(?!\.[0-9])")


@dataclass
class Findings:
    """Where each secret was found: (secret, source, excerpt)."""

    hits: list[tuple[str, str, str]] = field(default_factory=list)

    def sources(self, secret: str) -> set[str]:
        return {s for v, s, _ in self.hits if v == secret}


RAW_SOURCES = frozenset({"database file"})


def scan(sources: Mapping[str, list[str]], pans: tuple[str, ...] = PANS,
         cvvs: tuple[str, ...] = CVVS) -> Findings:
    found = Findings()
    pan_patterns = [(p, pan_re(p)) for p in pans]
    patterns = pan_patterns + [(c, cvv_re(c)) for c in cvvs]
    for source, texts in sources.items():
        # The raw file has no separators between a record's fields ("cvv 7372026-03-10"):
        # only the PANs can be looked for there.
        for item in texts:
            for secret, pattern in pan_patterns if source in RAW_SOURCES else patterns:
                m = pattern.search(item)
                if m is not None:
                    excerpt = item[max(0, m.start() - 60):m.end() + 60]
                    found.hits.append((secret, source, excerpt))
    return found


@dataclass
class Capture:
    """Every channel of the module docstring, on while the flows run."""

    logs: LogCapture = field(default_factory=LogCapture)
    spy: ExceptionSpy = field(default_factory=ExceptionSpy)
    events: list[str] = field(default_factory=list)
    planted: list[BaseException] = field(default_factory=list)

    def on_event(self, channel_id: str, kind: str, detail: Mapping[str, Any]) -> None:
        self.events.append(f"{channel_id} {kind} {dict(detail)!r}")

    @contextlib.contextmanager
    def active(self) -> Iterator[Capture]:
        with self.logs.installed(), self.spy:
            yield self

    def sources(self, engine: Engine, rig: IvrRig | None = None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {
            "log": self.logs.texts,
            "exception": exception_texts(self.spy.seen, self.planted),
            "on_event": self.events,
            "database row": table_dump(engine),
            "database file": [database_bytes(engine)],
        }
        if rig is not None:
            sessions = rig.sessions.values()
            out["command"] = [repr(c) for s in sessions for c in s.commands]
            out["session event"] = [repr(e) for s in sessions for e in s.events]
            out["variables"] = [repr(dict(s.variables)) for s in sessions]
            server = rig.server
            out["ari request"] = [*server.query_log, *map(repr, server.requests)]
            out["ari channel"] = [repr(c.variables) for c in server._channels.values()]
            out["ari exit"] = [repr(e) for e in server.ivr_exits.values()]
            out["recording"] = [repr(r) for r in (*server._recordings,
                                                  *server.stored_recordings.values())]
        return out


# ============================================================================== the rig


class LeakyGateway(SimGateway):
    """`SimGateway`, except that for `LEAKY_PAN` it raises with the card in the message, as a
    careless gateway SDK might."""

    def __init__(self, planted: list[BaseException], *, quote_cvv: bool = False) -> None:
        super().__init__()
        self.planted = planted
        self.quote_cvv = quote_cvv

    async def charge(self, card: CardDetails, amount: str, currency: str, description: str,
                     idempotency_key: str) -> PaymentResult:
        if card.number == LEAKY_PAN:
            cvv = f" cvv {card.cvv}" if self.quote_cvv else ""
            exc = RuntimeError(f"gateway timeout charging card {card.number} exp "
                               f"{card.expiry}{cvv} ({currency} {amount})")
            self.planted.append(exc)
            raise exc
        return await super().charge(card, amount, currency, description, idempotency_key)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    (tmp_path / "t").mkdir()
    engine = copy_database(migrated_template(tmp_path / "t"), tmp_path)
    yield engine
    engine.dispose()


@dataclass
class DtmfSeen:
    """Each ChannelDtmfReceived the emulator sends: (channel, digit, call recording state)."""

    items: list[tuple[str, str, str]] = field(default_factory=list)

    def of(self, channel_id: str) -> list[tuple[str, str]]:
        return [(d, s) for c, d, s in self.items if c == channel_id]


@contextlib.asynccontextmanager
async def payment_rig(db: Engine, capture: Capture, *, quote_cvv: bool = False,
                      ) -> AsyncIterator[tuple[IvrRig, DtmfSeen]]:
    crm = CrmData(balances={ani: ("42.50", "INV-1001") for ani in ANIS.values()})
    gateway = LeakyGateway(capture.planted, quote_cvv=quote_cvv)
    async with IvrRig(db, flows=["payment.yaml"], crm=crm, gateway=gateway, record_calls=True,
                      default_region="GB", on_event=capture.on_event) as rig:
        server = rig.server
        seen = DtmfSeen()
        send = server._chan_event

        def spy(kind: str, chan: Any, **kw: Any) -> None:
            if kind == "ChannelDtmfReceived":
                rec = server._recordings.get(f"paceline-ivr-{chan.id}")
                seen.items.append((chan.id, kw["mid"]["digit"], rec.state if rec else "none"))
            send(kind, chan, **kw)

        server._chan_event = spy  # type: ignore[method-assign]
        yield rig, seen


def secure_windows(call: Call) -> list[list[str]]:
    """The dtmf digits emitted between each `secure` on and off, per window."""
    windows: list[list[str]] = []
    current: list[str] | None = None
    for item in call.rig.emitted:
        channel_id, kind, detail = item
        if channel_id != call.channel_id:
            continue
        if kind == "secure":
            if detail["on"]:
                current = []
                windows.append(current)
            else:
                current = None
        elif kind == "dtmf" and current is not None:
            current.append(detail["digit"])
    return windows


# ============================================================================== the tests


async def test_payment_flow_leaves_no_card_number_or_cvv_in_logs_rows_events_or_errors(
    db: Engine,
) -> None:
    capture = Capture()
    with capture.active():
        async with payment_rig(db, capture) as (rig, dtmf):
            calls = {name: rig.call("payment", ANIS[name], keys) for name, keys in CALLS.items()}
            ended = {name: await call.ended(timeout=8.0) for name, call in calls.items()}
            sources = capture.sources(db, rig)

    # The flows went where they should: the capture saw the real thing.
    assert {n: (d["reason"], d["node"]) for n, d in ended.items()} == OUTCOMES
    assert capture.planted, "the leaky gateway was called"
    assert capture.logs.records > 100 and len(capture.spy.seen) > 10
    rows = [t for t in sources["database row"] if t.startswith("ivr_payments:")]
    assert len(rows) == 5  # approved, declined, amex, the card after the Luhn refusal, error
    assert any("ivr_payments:" in t and "RuntimeError" in t for t in rows)
    traces = [c for s in rig.sessions.values() for c in s.commands if isinstance(c, Trace)]
    assert any(t.detail == "************1111 (visa) ok" for t in traces)  # masked, present

    findings = scan(sources)
    assert findings.hits == []

    for name, call in calls.items():
        # Paceline's own events never spell a card out digit by digit.
        windows = secure_windows(call)
        assert windows and all(set(w) <= {"*"} for w in windows), name
        typed = "".join(d["digit"] for d in call.events("dtmf"))
        assert not any(pan_re(p).search(typed) for p in PANS), name
        # The call recording was paused at every digit keyed in `take_payment` (every group
        # but the menu choices), and recording at the menu choices.
        expected = [("recording" if g in ("1", "2") else "paused", ch)
                    for g in CALLS[name] for ch in g.removesuffix("!")]
        assert [(s, d) for d, s in dtmf.of(call.channel_id)] == expected, name
    # ... and resumed after each payment step.
    for name in ("approved", "declined_then_amex", "invalid_then_valid", "gateway_raises"):
        cid = calls[name].channel_id
        pauses = rig.server.requests[("POST", f"/recordings/live/paceline-ivr-{cid}/pause")]
        resumes = rig.server.requests[("DELETE", f"/recordings/live/paceline-ivr-{cid}/pause")]
        assert pauses == resumes == (2 if name == "declined_then_amex" else 1), name


async def test_a_gateway_error_quoting_the_cvv_is_not_passed_on(db: Engine) -> None:
    capture = Capture()
    with capture.active():
        async with payment_rig(db, capture, quote_cvv=True) as (rig, _):
            call = rig.call("payment", ANIS["gateway_raises"], CALLS["gateway_raises"])
            assert (await call.ended(timeout=8.0))["node"] == "adviser"
            sources = capture.sources(db, rig)
    assert capture.planted
    assert scan(sources).hits == []


async def test_the_capture_finds_a_leak_in_every_channel_it_watches(db: Engine) -> None:
    """Positive control: the same capture and scan, fed one leak through each channel."""
    capture = Capture()
    pan, amex = "4111111111111111", "378282246310005"
    with capture.active():
        logging.getLogger("aiohttp.client").debug("sending card %s", pan)  # via args
        logging.getLogger("ivr.runner").info("cvv was 737")  # in the message
        try:
            _fail(f"bad card {amex[:4]} {amex[4:10]} {amex[10:]}")  # spaced
        except ValueError:
            logging.getLogger("asyncio").exception("failed")  # exc_text
        await _raise_in_a_thread(f"key error {pan}")
        contact_id = add_contact(db, "c", "+12125550100")
        with write_transaction(db) as conn:
            conn.execute(insert(ContactNote).values(
                contact_id=contact_id, agent=None, text="card 5555555555554444, cvv: 9374",
                created_at=NOW))
        capture.on_event("chan", "dtmf", {"digit": "5105-1051-0510-5100"})
    findings = scan(capture.sources(db))
    assert findings.sources(pan) == {"log", "exception"}
    assert findings.sources(amex) >= {"log", "exception"}
    assert findings.sources("737") == {"log"}
    assert findings.sources("5555555555554444") == {"database row", "database file", "log"}
    assert findings.sources("9374") == {"database row", "log"}  # the INSERT's parameters
    assert findings.sources("5105105105105100") == {"on_event"}
    # ... and what must not count as a CVV does not.
    assert scan({"x": ["took 0.0737 s", "tok_sim_ab737cd", "port 40737", "737.5"]}).hits == []


def _fail(message: str) -> None:
    raise ValueError(message)


async def _raise_in_a_thread(message: str) -> None:
    def work() -> None:
        with contextlib.suppress(KeyError):
            raise KeyError(message)

    await asyncio.to_thread(work)
