"""A rig that runs the shipped example flows over ARI against the in-process emulator.

Used by `test_ivr_examples_ari.py` (every example, end to end) and `test_ivr_pci.py` (the
payment flow with every log record, row, event and exception captured). What is real and
what is not:

- Real: `IvrApp` with `AriRestClient` and the event WebSocket against `sim.pbx.ari_server`;
  the caller is a channel placed with `place_inbound`, their keys are `press`ed and reach the
  app as ChannelDtmfReceived events; the services are `ivr.services.build_services` on a
  migrated SQLite database (contacts with `contact_phones`, agents, campaigns), `HttpCrm`
  against a local aiohttp CRM, `SimGateway`, `ProviderSms` over `sim.sms.SimSmsProvider`.
- The caller model: a script of key groups, as `ivr.walk.walk_flow` takes them. Each group
  is typed the next time the flow waits for input (an input timer starts with nothing typed
  yet, or a barge-in `play` node plays); `""` (or no group left) is silence. The session the
  app builds is wrapped (`IvrApp(session_factory=...)`) to see those waits as they begin and
  to scale its timers: a wait the caller will answer keeps the flow's own timeout (seconds,
  far longer than the few milliseconds the keys take to arrive), a silent wait or a caller
  who stopped typing fires after `SILENCE_S`. The wrapper changes no other command and
  sees no digit the app did not deliver; the interpreter itself is the product's.
- Time: every `paceline/...` sound lasts 1 emulated second at `TIME_SCALE` (2 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import Engine, insert, select, update

from cti.ari.rest import AriRestClient
from dialer.agents import create_agent
from dialer.db import make_engine, migrate, write_transaction
from dialer.db.models import Agent, Campaign, Contact, ContactPhone
from ivr.ari import IvrApp
from ivr.interpreter import Session
from ivr.model import Flow
from ivr.payments import SimGateway
from ivr.ports import ContactRecord, Crm, PaymentGateway
from ivr.protocol import Command, Dtmf, Event, Play, StartTimer
from ivr.runner import Services
from ivr.services import build_services
from ivr.validate import load_and_check
from ivr.walk import WalkResult, WalkServices, walk_flow
from sim.pbx.ari_server import CALLER_DTMF_GAP_S, AriServer
from sim.sms import SimSmsProvider
from tests.factories import add_contacts, make_campaign

EXAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "examples"
APP = "paceline-ivr"
AUTH = {"Authorization": "Basic ZGlhbGVyOmRpYWxlcg=="}  # dialer:dialer, the emulator's default
TIME_SCALE = 0.002
#: A silent wait's timer (real seconds): long enough for a digit in flight to land first.
SILENCE_S = 0.02
#: When the caller starts typing after the flow began to wait (real seconds).
TYPE_DELAY_S = 0.003
#: The cards' expiry check runs against this day (as the walker's default).
TODAY = date(2026, 1, 1)
#: The database's clock (a Tuesday, 12:00 in New York).
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
EXAMPLE_CRM = "https://crm.example.com"
#: The directory's names for the contact slots (`DbContactDirectory(field_names=...)`).
FIELD_NAMES = {"param1": "name", "param2": "pin", "param3": "dob", "param4": "tier"}
#: A group ending in this character: the caller hangs up right after typing it.
HANG_UP = "!"


def now() -> datetime:
    return NOW


@cache
def example(name: str) -> Flow:
    return load_and_check(EXAMPLES / name)


@cache
def example_sounds() -> dict[str, float]:
    """Every `sound:paceline/...` the examples play, 1 emulated second each."""
    names: set[str] = set()
    for path in EXAMPLES.rglob("*.yaml"):
        names.update(re.findall(r"sound:(paceline/[\w/-]+)", path.read_text(encoding="utf-8")))
    return dict.fromkeys(sorted(names), 1.0)


# ============================================================================== database


def migrated_template(folder: Path) -> Path:
    """A migrated SQLite file to copy per test (migrating takes ~0.2 s; a copy ~1 ms)."""
    path = folder / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


def copy_database(template: Path, folder: Path) -> Engine:
    path = folder / "paceline.db"
    shutil.copy(template, path)
    return make_engine(f"sqlite:///{path}")


def add_contact(engine: Engine, campaign: str, phone: str, **params: str) -> int:
    """One contact of `campaign` (created if new) with `phone` in slot 1, indexed in
    `contact_phones` as the importer does, and `params` (param1.., see `FIELD_NAMES`)."""
    with engine.connect() as conn:
        cid = conn.scalar(select(Campaign.id).where(Campaign.name == campaign))
    if cid is None:
        cid = make_campaign(engine, NOW, name=campaign)
    (contact_id,) = add_contacts(engine, cid, [{"phone1": phone, **params}], NOW)
    with write_transaction(engine) as conn:
        conn.execute(insert(ContactPhone).values(contact_id=contact_id, slot=1, e164=phone))
    return contact_id


def add_agents(engine: Engine, group: str, states: Sequence[str]) -> None:
    """Agents of `group` in the given states (what `AgentGroupWaitEstimator` reads)."""
    with write_transaction(engine) as conn:
        for i, state in enumerate(states):
            aid = create_agent(conn, f"{group}{i}", f"PJSIP/{group}{i}", groups=[group])
            conn.execute(update(Agent).where(Agent.id == aid).values(state=state))


def contact_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(Contact).order_by(Contact.id)).all())


# ============================================================================== CRM


@dataclass
class CrmData:
    """What the CRM knows; `answer` serves both the HTTP CRM and the walker's fake."""

    pin_set: dict[int, bool] = field(default_factory=dict)  # contact id -> has a PIN
    accounts: dict[str, str] = field(default_factory=dict)  # account number -> phone
    balances: dict[str, tuple[str, str]] = field(default_factory=dict)  # phone -> (amount, inv)
    offers: dict[int, dict[str, Any]] = field(default_factory=dict)  # contact id -> upgrade
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def answer(self, method: str, path: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The JSON object for a request, or None (the HTTP CRM answers 404)."""
        if m := re.fullmatch(r"/api/customers/(\d+)/security", path):
            known = self.pin_set.get(int(m[1]))
            return None if known is None else {"pin_set": known}
        if m := re.fullmatch(r"/api/accounts/(\w+)", path):
            phone = self.accounts.get(m[1])
            return None if phone is None else {"account": {"phone": phone}}
        if path == "/api/billing/balance":
            due = self.balances.get(str(params.get("phone", "")))
            return None if due is None else {"balance": {"amount": due[0], "invoice": due[1]}}
        if m := re.fullmatch(r"/api/customers/(\d+)/offers/upgrade", path):
            offer = self.offers.get(int(m[1]))
            return None if offer is None else {"upgrade": offer}
        if re.fullmatch(r"/api/customers/\d+/offers/upgrade/decline", path) and method == "POST":
            return {}
        return None

    def walker_lookup(self, method: str, url: str,
                      params: Mapping[str, str]) -> Mapping[str, Any] | None:
        return self.answer(method, urlsplit(url).path, params)


@contextlib.asynccontextmanager
async def crm_server(data: CrmData) -> AsyncIterator[str]:
    """The CRM on 127.0.0.1; yields its base URL."""

    async def handle(request: web.Request) -> web.StreamResponse:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            params.update(await request.json())
        data.requests.append((request.method, request.path, params))
        answer = data.answer(request.method, request.path, params)
        if answer is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


class RebasedCrm:
    """The flows name `https://crm.example.com`; the test CRM listens on 127.0.0.1."""

    def __init__(self, crm: Crm, base: str) -> None:
        self.crm = crm
        self.base = base

    async def lookup(self, method: Literal["GET", "POST"], url: str,
                     params: Mapping[str, str], timeout_s: float) -> Mapping[str, Any]:
        return await self.crm.lookup(method, url.replace(EXAMPLE_CRM, self.base), params,
                                     timeout_s)


class Agents:
    """`ivr.ari.AgentPicker`: `PJSIP/<group>` (the emulator answers it at once); a group in
    `busy` gets an agent whose line is busy (`Local/9001@agents`), so the transfer fails."""

    def __init__(self, busy: Sequence[str] = ()) -> None:
        self.busy = set(busy)
        self.asked: list[str] = []

    async def pick(self, group: str) -> str | None:
        self.asked.append(group)
        return "Local/9001@agents" if group in self.busy else f"PJSIP/{group}"


# ============================================================================== the caller


class Caller:
    """The scripted caller of one call: key groups, typed as the module docstring says."""

    def __init__(self, server: AriServer, channel_id: str, groups: Sequence[str]) -> None:
        self.server = server
        self.channel_id = channel_id
        self.groups = list(groups)
        self.typed = 0  # digits sent so far (plus one per pending hang-up)
        self.waits: list[tuple[str, str]] = []  # (wait id, group given to it)

    def next_group(self) -> str:
        return self.groups.pop(0) if self.groups else ""

    def type(self, group: str) -> None:
        digits = group.removesuffix(HANG_UP)
        self.typed += len(digits) + (1 if group.endswith(HANG_UP) else 0)
        loop = asyncio.get_running_loop()

        def go() -> None:
            with contextlib.suppress(KeyError):  # the call ended meanwhile
                self.server.press(self.channel_id, digits)
            if group.endswith(HANG_UP):
                gap = CALLER_DTMF_GAP_S * self.server.time_scale
                loop.call_later(len(digits) * gap + 0.005, self.hang_up)

        loop.call_later(TYPE_DELAY_S, go)

    def hang_up(self) -> None:
        with contextlib.suppress(KeyError):
            self.server.caller_hangup(self.channel_id)


class ScriptedSession:
    """The interpreter `Session`, seen by the caller: see the module docstring.

    Records every event handled and command given (`events`, `commands`) for the tests."""

    def __init__(self, inner: Session, session_id: str, caller: Caller | None) -> None:
        self.inner = inner
        self.caller = caller
        self.session_id = session_id
        self.dtmf_handled = 0
        self.events: list[Event] = []
        self.commands: list[Command] = []

    @property
    def variables(self) -> Mapping[str, Any]:
        return self.inner.variables

    @property
    def path(self) -> list[str]:
        return self.inner.path

    @property
    def finished(self) -> Any:
        return self.inner.finished

    def start(self) -> list[Command]:
        return self._after(self.inner.start())

    def handle(self, event: Event) -> list[Command]:
        self.events.append(event)
        if isinstance(event, Dtmf):
            self.dtmf_handled += 1
        return self._after(self.inner.handle(event))

    def _after(self, commands: list[Command]) -> list[Command]:
        out = [self._timer(c) for c in commands]
        self.commands.extend(out)
        caller = self.caller
        state = self.inner.input_state
        if caller is None or self.dtmf_handled < caller.typed:
            return out  # keys still on their way: they answer whatever waits
        wait = None
        if state == "first_digit":
            wait = next((c.timer_id for c in out if isinstance(c, StartTimer)), None)
        elif state == "play":
            wait = next((c.playback_id for c in out if isinstance(c, Play) and c.barge_in),
                        None)
        if wait is not None:
            group = caller.next_group()
            caller.waits.append((wait, group))
            if group:
                caller.type(group)
        return out

    def _timer(self, command: Command) -> Command:
        if not isinstance(command, StartTimer):
            return command
        caller = self.caller
        state = self.inner.input_state
        typing_done = caller is None or self.dtmf_handled >= caller.typed
        if state == "first_digit" and typing_done:
            silent = caller is None or not caller.groups or caller.groups[0] == ""
        else:
            # "more_digits" once the group is typed: the caller stopped (the walker fires
            # the inter-digit timer too); with keys in flight the timer must not win.
            silent = state == "more_digits" and typing_done
        return replace(command, seconds=SILENCE_S if silent else command.seconds)


# ============================================================================== the rig


@dataclass
class Call:
    channel_id: str
    caller: Caller
    rig: IvrRig

    @property
    def session(self) -> ScriptedSession:
        return self.rig.sessions[self.channel_id]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [d for c, k, d in self.rig.emitted if c == self.channel_id
                and (kind is None or k == kind)]

    def entered(self) -> list[str]:
        return [d["node"] for d in self.events("trace") if d["what"] == "enter"]

    def finished(self) -> dict[str, Any] | None:
        done = self.events("finished")
        return done[0] if done else None

    async def ended(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the session finished and the app let go of the call."""
        await self.rig.until(lambda: self.finished() is not None
                             and not self.rig.app.holds(self.channel_id), timeout)
        done = self.finished()
        assert done is not None
        return done


class IvrRig:
    """The emulator, the CRM, the services on `engine` and an `IvrApp` serving `flows`."""

    def __init__(
        self,
        engine: Engine,
        *,
        flows: Sequence[str] = (),
        crm: CrmData | None = None,
        gateway: PaymentGateway | None = None,
        agents: Agents | None = None,
        record_calls: bool = False,
        sounds: Mapping[str, float] | None = None,
        default_region: str = "US",
        on_event: Callable[[str, str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.flows = {example(f).name: example(f) for f in flows}
        self.crm = crm or CrmData()
        self.gateway = gateway or SimGateway()
        self.agents = agents or Agents()
        self.record_calls = record_calls
        self.sounds = {**example_sounds(), **(sounds or {})}
        self.default_region = default_region
        self._on_event = on_event
        self.emitted: list[tuple[str, str, dict[str, Any]]] = []
        self.sessions: dict[str, ScriptedSession] = {}
        self.callers: dict[str, Caller] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> IvrRig:
        stack = self._stack
        await stack.__aenter__()
        self.server = await stack.enter_async_context(
            AriServer(time_scale=TIME_SCALE, sounds=self.sounds))
        base = await stack.enter_async_context(crm_server(self.crm))
        self.sms = await stack.enter_async_context(
            SimSmsProvider(receipt_delay_s=(0.0, 0.0), time_scale=0.0))
        http = await stack.enter_async_context(aiohttp.ClientSession(headers=AUTH))
        self.rest = AriRestClient(http, f"http://127.0.0.1:{self.server.port}")
        parts = build_services(self.engine, gateway=self.gateway, sms_provider=self.sms,
                               now_fn=now, default_region=self.default_region,
                               field_names=FIELD_NAMES)
        stack.push_async_callback(parts["crm"].close)
        parts["crm"] = RebasedCrm(parts["crm"], base)
        self.services = Services(**parts)
        self.app = IvrApp(
            self.rest, http, APP, self.flows, {}, self.services,
            record_calls=self.record_calls, on_event=self._emit, agents=self.agents,
            session_factory=self._session, today=lambda: TODAY, agent_timeout_s=5.0,
        )
        task = asyncio.create_task(self.app.run())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop)
        await self.until(self.app.connected.is_set)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(None, None, None)

    def _emit(self, channel_id: str, kind: str, detail: Mapping[str, Any]) -> None:
        self.emitted.append((channel_id, kind, dict(detail)))
        if self._on_event is not None:
            self._on_event(channel_id, kind, detail)

    def _session(self, flow: Flow, *, session_id: str, variables: dict[str, Any],
                 today: date) -> ScriptedSession:
        inner = Session(flow, session_id=session_id, variables=variables, today=today)
        session = ScriptedSession(inner, session_id, self.callers.get(session_id))
        self.sessions[session_id] = session
        return session

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.002)

    def call(self, flow: str, ani: str, groups: Sequence[str] = (), *,
             variables: Mapping[str, str] | None = None) -> Call:
        """A caller from `ani` enters `flow` (Stasis args `ivr,<flow>`), typing `groups`.
        `variables`: channel variables the call brings (`PACELINE_AMOUNT_DUE` ...)."""
        cid = self.server.place_inbound(ani, "5000", app=APP, args=("ivr", flow))
        # Set before the app hears StasisStart (the event is sent once this task yields).
        self.server._channels[cid].variables.update(variables or {})
        caller = Caller(self.server, cid, groups)
        self.callers[cid] = caller
        return Call(cid, caller, self)

    async def variable(self, channel_id: str, name: str) -> str:
        return await self.rest.get_variable(channel_id, name)


def walk(flow: str, ani: str, groups: Sequence[str], services: WalkServices,
         variables: Mapping[str, Any] | None = None) -> WalkResult:
    """The walker's answer for the same caller (what `paceline ivr test` prints)."""
    return walk_flow(example(flow), ani=ani, dtmf=list(groups), services=services,
                     today=TODAY, variables=variables)


def record_of(contact_id: int, campaign: str, name: str = "", *,
              fields: Mapping[str, str] | None = None,
              secrets: Mapping[str, str] | None = None) -> ContactRecord:
    return ContactRecord(contact_id, campaign, name, dict(fields or {}), dict(secrets or {}))
