"""`paceline run`: the dialer service of one node, from a TOML run configuration.

The configuration (see `docker/paceline/paceline.toml` for a full example):

    node_id = "node-a"               # default: <hostname>-<pid>; keep it fixed across restarts
    database = "sqlite:///paceline.db"   # or --db / $PACELINE_DB
    tick_s = 1.0
    campaigns = ["spring-promo"]     # optional: only these (names or ids); default: all running

    [[pbx]]                          # one or more
    name = "pbx1"
    backend = "ami"                  # "ami" or "ari"
    host = "127.0.0.1"               # AMI
    port = 5038
    url = "http://127.0.0.1:8088"    # ARI
    username = "paceline"
    secret_env = "PACELINE_AMI_SECRET"   # or secret = "..."; never logged
    app = "paceline"                 # ARI Stasis application
    ivr_app = "paceline-ivr"         # agentless campaigns hand answered calls to this Stasis app
    trunk = "PJSIP/{number}@trunk"

    [sms]                            # optional; provider "http" or "sim"
    [webhook]                        # optional: url, secret_env
    [http]                           # optional: listen = "127.0.0.1:8080" (agent API, SMS
                                     # hooks), token_env = "PACELINE_API_TOKEN" (Bearer token)
    [sim]                            # optional, for demos and tests: simulated agents
    agents = 20
    [clock]                          # optional, for tests: virtual time (scale, start, anchor)
    [ivr]                            # optional: IVR flows on an ARI [[pbx]] (ivr.ari.IvrApp)
    app = "paceline-ivr"             # its Stasis app: not the dialer's own `app`
    pbx = "pbx1"                     # default: the first [[pbx]] with backend = "ari"
    flows = "flows/"                 # every *.yaml/*.yml/*.toml in it (relative to this file),
                                     # loaded and validated at start: any error stops the start
    default_flow = "main"            # the flow of a number without a route
    record_calls = false             # record each IVR call (paused while card digits are keyed)
    group_endpoint = "Local/{group}@paceline-queue"   # where `transfer kind = "group"` dials
                                     # (the default: the Asterisk queue of the group's name)
    [ivr.fields]                     # names of the contacts' business columns for the flows,
    param1 = "first_name"            # e.g. `identify` sets contact_first_name; a field named
    param2 = "pin"                   # pin / dob / date_of_birth is kept for `verify` only
    [ivr.routes]                     # dialled number -> flow name
    "0800123456" = "payment"
    [ivr.payment]
    gateway = "sim"                  # the only gateway shipped: ivr.payments.SimGateway

Every problem in the file is reported as `ConfigError` naming the file and the key. Secrets are
read from the environment variable a `*_env` key names (or inline, for a lab), and are never
logged or echoed.

The service owns everything it starts: the PBX backends, the HTTP server, the SMS provider, the
outbox worker, the engine and the simulated agents, all inside one `AsyncExitStack` and one
`TaskGroup`. SIGTERM or SIGINT stops the engine, which stops the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import signal
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import Engine as DbEngine

from cti.interface import Telephony, TelephonyError
from dialer.agents import AgentError
from dialer.campaigns import find_campaign_id
from dialer.clock import Clock, ScaledClock, SystemClock
from dialer.db import WalCheckpointer, make_engine, migrate
from dialer.engine import Engine
from ivr.model import Flow

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PbxConfig:
    name: str
    backend: str
    trunk: str
    username: str
    secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 5038
    url: str = "http://127.0.0.1:8088"
    app: str = "paceline"
    ivr_app: str = "paceline-ivr"


@dataclass(frozen=True)
class SimConfig:
    agents: int = 0
    prefix: str = "sim"
    groups: tuple[str, ...] = ()
    campaign: str | None = None
    seed: int = 0
    wrap_s: tuple[float, float] = (5.0, 25.0)


@dataclass(frozen=True)
class IvrConfig:
    pbx: str
    flows: Path
    app: str = "paceline-ivr"
    default_flow: str | None = None
    record_calls: bool = False
    routes: Mapping[str, str] = field(default_factory=dict)
    gateway: str = "sim"
    group_endpoint: str = "Local/{group}@paceline-queue"
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceConfig:
    source: str
    node_id: str
    # The URL may hold a password: shown masked (see __repr__).
    database: str | None = field(repr=False)
    tick_s: float
    pbxs: tuple[PbxConfig, ...]
    campaigns: tuple[str, ...] | None = None
    # May hold an inline auth header (a lab setup): never shown.
    sms: Mapping[str, Any] | None = field(default=None, repr=False)
    webhook_url: str | None = None
    webhook_secret: bytes = field(default=b"", repr=False)
    http_listen: str | None = None
    http_token: str | None = field(default=None, repr=False)
    sim: SimConfig | None = None
    clock_scale: float | None = None
    clock_start: datetime | None = None
    clock_anchor: float | None = None
    status_file: str | None = None
    #: Advisory-lock namespace of campaign ownership: deployments that share one PostgreSQL
    #: database (in different schemas) need different values.
    lock_namespace: int | None = None
    ivr: IvrConfig | None = None

    def __repr__(self) -> str:
        from sqlalchemy.engine import make_url

        db = None if self.database is None else \
            make_url(self.database).render_as_string(hide_password=True)
        return (f"ServiceConfig(source={self.source!r}, node_id={self.node_id!r}, "
                f"database={db!r}, tick_s={self.tick_s!r}, pbxs={self.pbxs!r}, "
                f"campaigns={self.campaigns!r}, sms={'...' if self.sms else None}, "
                f"webhook_url={self.webhook_url!r}, http_listen={self.http_listen!r}, "
                f"sim={self.sim!r}, clock_scale={self.clock_scale!r})")

    __str__ = __repr__


def _secret(section: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    env = section.get(f"{key}_env")
    if env is not None:
        value = os.environ.get(str(env))
        if value is None:
            raise ConfigError(f"{where}.{key}_env: environment variable {env!r} is not set")
        return value
    if key in section:
        return str(section[key])
    if required:
        raise ConfigError(f"{where}: set {key}_env (an environment variable) or {key}")
    return ""


def _get(section: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    value = section.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _table(data: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key}: expected a table ([{key}]), got {value!r}")
    return value


def _port(section: Mapping[str, Any], where: str) -> int:
    port: int = _get(section, "port", int, where, 5038)
    if not 0 < port < 65536:
        raise ConfigError(f"{where}.port: must be 1-65535, got {port}")
    return port


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> ServiceConfig:
    """Validate a parsed TOML document; errors name `source` and the key."""
    known = {"node_id", "database", "tick_s", "campaigns", "pbx", "sms", "webhook", "http",
             "sim", "clock", "status_file", "lock_namespace", "ivr"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    node_id = _get(data, "node_id", str, source, f"{socket.gethostname()}-{os.getpid()}")
    tick_s = _get(data, "tick_s", float, source, 1.0)
    if not 0.05 <= tick_s <= 10:
        raise ConfigError(f"{source}.tick_s: must be between 0.05 and 10 seconds, got {tick_s}")
    raw_pbxs = data.get("pbx")
    if not isinstance(raw_pbxs, list) or not raw_pbxs:
        raise ConfigError(f"{source}: at least one [[pbx]] section is needed")
    pbxs: list[PbxConfig] = []
    for i, p in enumerate(raw_pbxs):
        where = f"{source}: pbx[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a table")
        backend = _get(p, "backend", str, where, "ami")
        if backend not in ("ami", "ari"):
            raise ConfigError(f"{where}.backend: use \"ami\" or \"ari\", got {backend!r}")
        trunk = _get(p, "trunk", str, where, None)
        if not trunk or "{number}" not in trunk:
            raise ConfigError(f"{where}.trunk: a dial string with {{number}}, such as "
                              "\"PJSIP/{number}@trunk\"")
        name = _get(p, "name", str, where, f"pbx{i + 1}")
        if name in {q.name for q in pbxs}:
            raise ConfigError(f"{where}.name: {name!r} is used twice")
        pbxs.append(PbxConfig(
            name=name, backend=backend, trunk=trunk,
            username=_get(p, "username", str, where, "paceline"),
            # AMI calls it a secret (manager.conf), ARI a password (ari.conf).
            secret=_secret(p, "secret" if backend == "ami" else "password", where),
            host=_get(p, "host", str, where, "127.0.0.1"),
            port=_port(p, where),
            url=_get(p, "url", str, where, "http://127.0.0.1:8088"),
            app=_get(p, "app", str, where, "paceline"),
            ivr_app=_get(p, "ivr_app", str, where, "paceline-ivr"),
        ))
    campaigns = data.get("campaigns")
    if campaigns is not None and (
        not isinstance(campaigns, list) or not all(isinstance(c, str | int) for c in campaigns)
    ):
        raise ConfigError(f"{source}.campaigns: a list of campaign names or ids")
    sms = data.get("sms")
    if sms is not None:
        _check_sms(sms, f"{source}: sms")
    http = _table(data, "http", source)
    listen = _get(http, "listen", str, f"{source}: http", None)
    if listen is not None:
        _host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{source}: http.listen: give host:port, such as "
                              f"\"127.0.0.1:8080\", got {listen!r}")
    namespace = _get(data, "lock_namespace", int, source, None)
    webhook = _table(data, "webhook", source)
    sim = _table(data, "sim", source) if "sim" in data else None
    clock = _table(data, "clock", source)
    scale = _get(clock, "scale", float, f"{source}: clock", None)
    if scale is not None and not 0 < scale <= 1:
        raise ConfigError(f"{source}: clock.scale: wall seconds per virtual second, in (0, 1], "
                          f"got {scale}")
    start = clock.get("start")
    if isinstance(start, str):
        try:
            start = datetime.fromisoformat(start)
        except ValueError:
            raise ConfigError(f"{source}: clock.start: not an ISO 8601 time: {start!r}") from None
    if isinstance(start, datetime) and start.tzinfo is None:
        raise ConfigError(f"{source}: clock.start: give a time zone (e.g. 2026-12-03T15:00Z)")
    sim_cfg = None
    if sim is not None:
        where = f"{source}: sim"
        wrap = sim.get("wrap_s", [5.0, 25.0])
        if not (isinstance(wrap, list) and len(wrap) == 2
                and all(isinstance(w, int | float) and not isinstance(w, bool) for w in wrap)
                and 0 <= wrap[0] <= wrap[1]):
            raise ConfigError(f"{where}.wrap_s: [low, high] seconds, got {wrap!r}")
        if _get(sim, "agents", int, where, 0) < 0:
            raise ConfigError(f"{where}.agents: must be 0 or more")
        sim_cfg = SimConfig(
            agents=_get(sim, "agents", int, where, 0),
            prefix=_get(sim, "prefix", str, where, "sim"),
            groups=tuple(sim.get("groups", ())),
            campaign=None if sim.get("campaign") is None else str(sim["campaign"]),
            seed=_get(sim, "seed", int, where, 0),
            wrap_s=(float(wrap[0]), float(wrap[1])),
        )
    return ServiceConfig(
        source=source,
        node_id=node_id,
        database=_get(data, "database", str, source, None),
        tick_s=tick_s,
        pbxs=tuple(pbxs),
        campaigns=None if campaigns is None else tuple(str(c) for c in campaigns),
        sms=data.get("sms"),
        webhook_url=_get(webhook, "url", str, f"{source}: webhook", None),
        webhook_secret=_secret(webhook, "secret", f"{source}: webhook",
                               required="url" in webhook).encode(),
        http_listen=listen,
        lock_namespace=namespace,
        http_token=_secret(http, "token", f"{source}: http",
                           required=False) or None,
        sim=sim_cfg,
        clock_scale=scale,
        clock_start=start if isinstance(start, datetime) else None,
        clock_anchor=_get(clock, "anchor", float, f"{source}: clock", None),
        status_file=_get(data, "status_file", str, source, None),
        ivr=_parse_ivr(data, source, pbxs) if "ivr" in data else None,
    )


def _parse_ivr(data: Mapping[str, Any], source: str, pbxs: list[PbxConfig]) -> IvrConfig:
    where = f"{source}: ivr"
    ivr = _table(data, "ivr", source)
    known = {"app", "pbx", "flows", "default_flow", "record_calls", "routes", "payment",
             "group_endpoint", "fields"}
    for key in ivr:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    ari = [p for p in pbxs if p.backend == "ari"]
    name = _get(ivr, "pbx", str, where, ari[0].name if ari else None)
    pbx = next((p for p in pbxs if p.name == name), None)
    if pbx is None or pbx.backend != "ari":
        raise ConfigError(f"{where}.pbx: the IVR runs on ARI: name a [[pbx]] with "
                          f"backend = \"ari\" (got {name!r})")
    app = _get(ivr, "app", str, where, "paceline-ivr")
    if app == pbx.app:
        raise ConfigError(f"{where}.app: {app!r} is the dialer's own Stasis app on "
                          f"{pbx.name}; give the IVR another (e.g. \"paceline-ivr\")")
    if app != pbx.ivr_app:
        raise ConfigError(f"{where}.app: {app!r}, but [[pbx]] {pbx.name} hands agentless calls "
                          f"to ivr_app = {pbx.ivr_app!r}; set both to the same Stasis app")
    flows = _get(ivr, "flows", str, where, None)
    if not flows:
        raise ConfigError(f"{where}.flows: the folder of the flow files is required")
    folder = Path(flows)
    if not folder.is_absolute() and source != "<config>":
        folder = Path(source).parent / folder
    routes = _table(ivr, "routes", where)
    if not all(isinstance(v, str) for v in routes.values()):
        raise ConfigError(f"{where}.routes: map each number to a flow name (a string)")
    gateway = _get(_table(ivr, "payment", where), "gateway", str, f"{where}.payment", "sim")
    if gateway != "sim":
        raise ConfigError(f"{where}.payment.gateway: only \"sim\" is available, got {gateway!r}")
    group_endpoint = _get(ivr, "group_endpoint", str, where, "Local/{group}@paceline-queue")
    if "{group}" not in group_endpoint:
        raise ConfigError(f"{where}.group_endpoint: put {{group}} where the group's name goes, "
                          f"e.g. \"Local/{{group}}@paceline-queue\" (got {group_endpoint!r})")
    fields = _table(ivr, "fields", where)
    for column, label in fields.items():
        if not re.fullmatch(r"param([1-9]|1[0-2])|external_id", str(column)) \
                or not isinstance(label, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", label):
            raise ConfigError(f"{where}.fields.{column}: map a contact column (param1..param12, "
                              f"external_id) to a lower-case name, got {label!r}")
    return IvrConfig(
        pbx=pbx.name, flows=folder, app=app, group_endpoint=group_endpoint,
        fields={str(k): str(v) for k, v in fields.items()},
        default_flow=_get(ivr, "default_flow", str, where, None),
        record_calls=_get(ivr, "record_calls", bool, where, False),
        routes={str(k): str(v) for k, v in routes.items()}, gateway=gateway,
    )


def load_ivr_flows(cfg: IvrConfig) -> dict[str, Flow]:
    """Every flow file of `cfg.flows` by flow name, loaded and validated; `ConfigError` with
    every problem (file:line:col) otherwise, and when a route names no flow."""
    from ivr.model import FlowErrors
    from ivr.validate import load_and_check

    if not cfg.flows.is_dir():
        raise ConfigError(f"[ivr] flows: {cfg.flows} is not a folder")
    flows: dict[str, Flow] = {}
    problems: list[str] = []
    files = sorted(p for p in cfg.flows.iterdir() if p.suffix in (".yaml", ".yml", ".toml"))
    for path in files:
        try:
            flow = load_and_check(path)
        except FlowErrors as exc:
            problems.extend(str(e) for e in exc.errors)
            continue
        if flow.name in flows:
            problems.append(f"{path}: flow name {flow.name!r} is used by "
                            f"{flows[flow.name].path} too")
        flows[flow.name] = flow
    wanted = {f"routes.{number}": name for number, name in cfg.routes.items()}
    if cfg.default_flow is not None:
        wanted["default_flow"] = cfg.default_flow
    for key, name in wanted.items():
        if name not in flows and not problems:  # (a refused flow is reported once, above)
            problems.append(f"[ivr] {key}: no flow named {name!r} in {cfg.flows} "
                            f"(flows: {', '.join(sorted(flows)) or 'none'})")
    if problems:
        raise ConfigError("IVR flows refused:\n" + "\n".join(problems))
    return flows


def _check_sms(section: Any, where: str) -> None:
    """Refuse a bad [sms] table with the other config errors, before anything starts."""
    from dialer.sms import HttpSmsProvider, SmsSettings

    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a table")
    kind = section.get("provider", "http")
    if kind not in ("http", "sim"):
        raise ConfigError(f"{where}.provider: use \"http\" or \"sim\", got {kind!r}")
    try:
        SmsSettings.from_config(section, where=f"[{where}]")
        if kind == "http":
            # Builds nothing that needs closing: the provider opens its session on first use.
            HttpSmsProvider.from_config(section, os.environ, where=f"[{where}]")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate a run configuration file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p))


def make_backend(cfg: PbxConfig) -> Telephony:
    if cfg.backend == "ami":
        from cti.ami.telephony import AmiTelephony

        return AmiTelephony(cfg.host, cfg.port, cfg.username, cfg.secret, ivr_app=cfg.ivr_app)
    from cti.ari.telephony import AriTelephony

    return AriTelephony(cfg.url, cfg.username, cfg.secret, app=cfg.app, ivr_app=cfg.ivr_app)


def make_clock(cfg: ServiceConfig) -> Clock:
    if cfg.clock_scale is None:
        return SystemClock()
    return ScaledClock(cfg.clock_scale, cfg.clock_start, cfg.clock_anchor)


# --- the agent API and status over HTTP ---------------------------------------------------------


def _typed(data: Mapping[str, Any], key: str, kind: Any, default: Any = None) -> Any:
    """`data[key]` if it has the type the API documents; else an error naming the field."""
    value = data.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise AgentError(f"request body: {key}: wrong type {type(value).__name__}")
    return value


def _cart(data: Mapping[str, Any]) -> dict[str, int] | None:
    cart = _typed(data, "cart", dict)
    if cart is not None and not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in cart.items()
    ):
        raise AgentError("request body: cart: product codes to whole quantities")
    return None if cart is None else {str(k): int(v) for k, v in cart.items()}


def agent_routes(engine: Engine, *, token: str | None = None) -> list[web.RouteDef]:
    """The agent desktop's API. Errors an agent can act on come back as 409 with the reason.

    Actions are POST only (a GET must never log an agent out or dial). With `token`, every
    request must carry `Authorization: Bearer <token>` (else 401); without one, whoever can
    reach the listening address can act as any agent: bind it to a private network.
    """
    from dialer.wrapup import WrapUp, WrapUpError

    def _fail(exc: Exception) -> web.Response:
        return web.json_response({"error": str(exc)}, status=409)

    def _authorized(request: web.Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise AgentError("request body: not JSON") from None
        if not isinstance(data, dict):
            raise AgentError("request body: a JSON object is expected")
        return data

    async def action(request: web.Request) -> web.Response:
        if not _authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        user, verb = request.match_info["user"], request.match_info["verb"]
        try:
            data = await body(request)
            if verb == "login":
                camp = data.get("campaign")
                engine.login(user, None if camp is None else int(camp))
            elif verb == "ready":
                engine.ready(user)
            elif verb == "pause":
                engine.pause(user, str(data.get("code", "break")))
            elif verb == "logout":
                engine.logout(user)
            elif verb == "dispose":
                def when(key: str) -> datetime | None:
                    v = data.get(key)
                    return None if v is None else datetime.fromisoformat(str(v))

                wrap = WrapUp(
                    code=_typed(data, "code", str, ""), notes=_typed(data, "notes", str),
                    callback_at=when("callback_at"), cart=_cart(data),
                    field_agent=_typed(data, "field_agent", str),
                    appointment_at=when("appointment_at"),
                    appointment_minutes=_typed(data, "appointment_minutes", int, 60),
                )
                engine.dispose(user, wrap, then_ready=bool(data.get("ready", True)))
            elif verb == "preview":
                lease = await engine.preview_next(user)
                return web.json_response(None if lease is None else {
                    "contact_id": lease.contact_id, "number": lease.number,
                    "phone_index": lease.phone_index, "external_id": lease.external_id,
                    "params": list(lease.params),
                })
            elif verb == "dial":
                return web.json_response({"call_id": await engine.preview_dial(user)})
            elif verb == "skip":
                await engine.preview_skip(user)
            elif verb == "hold":
                await engine.hold(user)
            elif verb == "unhold":
                await engine.unhold(user)
            elif verb == "transfer":
                await engine.transfer(user, str(data.get("target", "")),
                                      attended=bool(data.get("attended", False)))
            else:
                raise web.HTTPNotFound(text=f"no agent action {verb!r}")
        except (AgentError, WrapUpError, ValueError, TelephonyError) as exc:
            return _fail(exc)
        agent = engine.board.agents.get(user)
        return web.json_response({"agent": user, "state": agent.state.value if agent else None})

    async def status(request: web.Request) -> web.Response:
        if not _authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        s = engine.status()
        return web.json_response({
            "node_id": engine.node_id, "calls_in_flight": s.calls_in_flight,
            "calls_by_state": s.calls_by_state, "agents_by_state": s.agents_by_state,
            "campaigns": s.campaigns, "originated": s.originated,
            "originates_per_s": s.originates_per_s,
        })

    return [
        web.post("/agents/{user}/{verb}", action),
        web.get("/status", status),
    ]


# --- running -----------------------------------------------------------------------------------


async def run_service(
    cfg: ServiceConfig,
    *,
    db_url: str | None = None,
    stop: asyncio.Event | None = None,
    on_started: Any = None,
) -> None:
    """Run one node until `stop` is set (or SIGTERM/SIGINT). Owns everything it starts."""
    clock = make_clock(cfg)
    ivr_flows = None if cfg.ivr is None else load_ivr_flows(cfg.ivr)  # bad flows stop here
    db = make_engine(db_url or cfg.database)
    await asyncio.to_thread(migrate, db)
    campaign_ids = None
    if cfg.campaigns is not None:
        with db.connect() as conn:
            campaign_ids = [find_campaign_id(conn, c) for c in cfg.campaigns]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(db.dispose)
        if db.dialect.name == "sqlite":
            # A long-running writer: WAL checkpoints on a background thread, not inside the
            # commits of the calls (see `WalCheckpointer`).
            stack.enter_context(WalCheckpointer(db))
        backends: dict[str, Telephony] = {}
        for p in cfg.pbxs:
            backends[p.name] = await stack.enter_async_context(make_backend(p))
        sms = await _sms_service(cfg, db, clock, stack)
        worker = None
        if cfg.webhook_url:
            from dialer.outbox import OutboxWorker

            worker = OutboxWorker(db, cfg.webhook_url, cfg.webhook_secret)
            stack.push_async_callback(worker.aclose)
        ownership = None
        if db.dialect.name == "postgresql" or not str(db.url).endswith(":memory:"):
            from dialer.nodes import CampaignOwnership, remove_node

            kwargs = {} if cfg.lock_namespace is None else {"namespace": cfg.lock_namespace}
            ownership = stack.enter_context(CampaignOwnership(db, cfg.node_id, **kwargs))
            stack.callback(remove_node, db, cfg.node_id)
        engine = Engine(
            db, backends, {p.name: p.trunk for p in cfg.pbxs}, node_id=cfg.node_id,
            clock=clock, tick_s=cfg.tick_s, sms=sms, ownership=ownership,
            outbox_worker=worker, campaigns=campaign_ids,
            ivr_flows=frozenset(ivr_flows or ()),
        )
        if cfg.http_listen:
            host, _, port = cfg.http_listen.rpartition(":")
            app = web.Application()
            app.add_routes(agent_routes(engine, token=cfg.http_token))
            if sms is not None:
                from dialer.sms import sms_routes

                app.add_routes(sms_routes(sms, token=cfg.http_token))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
            log.info("agent API and SMS hooks on http://%s", cfg.http_listen)
        ivr_app = None
        if cfg.ivr is not None and ivr_flows is not None:
            ivr_app = await _ivr_app(cfg, cfg.ivr, ivr_flows, db, sms, stack)
        log.info("node %s: %d PBX(s), tick %.2f s", cfg.node_id, len(backends), cfg.tick_s)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(engine.run(), name="engine")
            ivr_task = None if ivr_app is None else tg.create_task(ivr_app.run(), name="ivr")
            sim_task = None
            if cfg.sim is not None and cfg.sim.agents > 0:
                sim_task = tg.create_task(_sim_agents(cfg, db, engine), name="sim-agents")
            status_task = None
            if cfg.status_file:
                status_task = tg.create_task(_write_status(engine, cfg.status_file, clock))
            await engine.started()
            if on_started is not None:
                on_started(engine)
            await stop.wait()
            engine.stop()
            for t in (sim_task, status_task, ivr_task):
                if t is not None:
                    t.cancel()


async def _ivr_app(
    cfg: ServiceConfig, ivr: IvrConfig, flows: dict[str, Flow], db: DbEngine, sms: Any,
    stack: contextlib.AsyncExitStack,
) -> Any:
    """The IVR's Stasis app on its [[pbx]], with the database-backed services."""
    import base64

    import aiohttp

    from cti.ari.rest import AriRestClient
    from ivr.ari import IvrApp
    from ivr.payments import SimGateway
    from ivr.runner import Services
    from ivr.services import EndpointTemplatePicker, build_services

    pbx = next(p for p in cfg.pbxs if p.name == ivr.pbx)
    token = base64.b64encode(f"{pbx.username}:{pbx.secret}".encode()).decode()
    session = aiohttp.ClientSession(
        headers={"Authorization": f"Basic {token}"}, timeout=aiohttp.ClientTimeout(total=10)
    )
    stack.push_async_callback(session.close)
    parts = build_services(db, gateway=SimGateway(),
                           sms_provider=None if sms is None else sms.provider,
                           field_names=ivr.fields or None)
    stack.push_async_callback(parts["crm"].close)
    routes = dict(ivr.routes)
    if ivr.default_flow is not None:
        routes.setdefault("default", ivr.default_flow)
    log.info("IVR app %s on %s: %d flow(s)", ivr.app, pbx.name, len(flows))
    return IvrApp(AriRestClient(session, pbx.url), session, ivr.app, flows, routes,
                  Services(**parts), record_calls=ivr.record_calls,
                  agents=EndpointTemplatePicker(ivr.group_endpoint))


async def _sms_service(
    cfg: ServiceConfig, db: DbEngine, clock: Clock, stack: contextlib.AsyncExitStack
) -> Any:
    if cfg.sms is None:
        return None
    from dialer.sms import HttpSmsProvider, SmsService, SmsSettings

    where = f"{cfg.source}: sms"
    settings = SmsSettings.from_config(cfg.sms, where=f"[{where}]")
    kind = cfg.sms.get("provider", "http")
    if kind == "sim":
        from sim.sms import SimSmsProvider

        provider: Any = SimSmsProvider(
            time_scale=cfg.clock_scale or 1.0,
            seed=int(cfg.sms.get("seed", 0)),
            replies=[(float(p), str(t)) for p, t in cfg.sms.get("sim_replies", [])],
        )
    elif kind == "http":
        provider = HttpSmsProvider.from_config(cfg.sms, os.environ, where=f"[{where}]")
    else:
        raise ConfigError(f"{where}.provider: use \"http\" or \"sim\", got {kind!r}")
    if hasattr(provider, "__aenter__"):
        provider = await stack.enter_async_context(provider)
    service = SmsService(db, provider, settings, clock=clock)
    if kind == "sim":
        # The simulated SMSC pushes receipts and customer replies straight to the service, as
        # a real provider's webhooks would reach `sms_routes`.
        async def on_receipt(receipt: Any) -> None:
            await service.handle_receipt(receipt, clock.now())

        async def on_inbound(number: str, text: str) -> object:
            return await service.handle_inbound(number, text, clock.now())

        provider.set_handlers(on_receipt=on_receipt, on_inbound=on_inbound)
    return service


async def _sim_agents(cfg: ServiceConfig, db: DbEngine, engine: Engine) -> None:
    from sim.agents import SimAgents, ensure_agents, ensure_fixtures

    assert cfg.sim is not None
    await asyncio.to_thread(ensure_fixtures, db)
    names = await asyncio.to_thread(
        ensure_agents, db, cfg.sim.agents, prefix=cfg.sim.prefix, groups=cfg.sim.groups
    )
    campaign_id = None
    if cfg.sim.campaign is not None:
        with db.connect() as conn:
            campaign_id = find_campaign_id(conn, cfg.sim.campaign)
    await SimAgents(engine, names, campaign_id=campaign_id, seed=cfg.sim.seed,
                    wrap_s=cfg.sim.wrap_s).run()


async def _write_status(engine: Engine, path: str, clock: Clock) -> None:
    """Write the status as JSON every second (atomically), for operators and tests."""
    import json

    target = Path(path)
    while True:
        s = engine.status()
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "node_id": engine.node_id, "at": datetime.now(UTC).isoformat(),
            "campaigns": s.campaigns, "owned": sorted(engine.campaigns),
            "calls_in_flight": s.calls_in_flight, "agents_by_state": s.agents_by_state,
        }))
        tmp.replace(target)
        await asyncio.sleep(0.5)
