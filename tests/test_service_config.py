"""`paceline run`'s configuration, the agent HTTP API, and a `paceline demo` smoke run.

Configuration errors must name the file and the key; secrets must never show in the
configuration's repr/str (it ends up in logs and tracebacks). The agent API is exercised over
a real aiohttp server bound to a local port, against a real (not running) `Engine` on SQLite.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from sqlalchemy import Engine, select

from cti.ami.telephony import AmiTelephony
from dialer.agents import AgentState, create_agent
from dialer.attempts import mark_call, open_attempts
from dialer.campaigns import set_campaign_state
from dialer.cli import main
from dialer.clock import ScaledClock
from dialer.db import write_transaction
from dialer.db.models import Agent
from dialer.domain import CampaignState, Outcome
from dialer.engine import Engine as Dialer
from dialer.leasing import lease_due_contacts
from dialer.service import ConfigError, agent_routes, load_config, parse_config
from tests.factories import add_contacts, make_campaign

START = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
AMI_SECRET = "ami-s3cr3t-value"
ARI_SECRET = "ari-s3cr3t-value"
HOOK_SECRET = "hook-s3cr3t-value"
SMS_SECRET = "Bearer sms-s3cr3t-value"
DB_PASSWORD = "db-s3cr3t-value"


def pbx(**kw: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"name": "pbx1", "backend": "ami", "trunk": "PJSIP/{number}@trunk",
                               "secret": "x"}
    section.update(kw)
    return section


def error_of(data: dict[str, Any], source: str = "/etc/paceline/run.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    return str(info.value)


# ---- parse_config ---------------------------------------------------------------------------


def test_a_full_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_AMI", AMI_SECRET)
    monkeypatch.setenv("T_ARI", ARI_SECRET)
    monkeypatch.setenv("T_HOOK", HOOK_SECRET)
    cfg = parse_config({
        "node_id": "node-a",
        "database": "sqlite:///x.db",
        "tick_s": 0.5,
        "campaigns": ["spring", 7],
        "pbx": [
            pbx(secret_env="T_AMI", host="10.0.0.5", port=5039),
            {"name": "pbx2", "backend": "ari", "url": "http://10.0.0.6:8088",
             "password_env": "T_ARI", "trunk": "PJSIP/{number}@trunk2", "app": "pl"},
        ],
        "webhook": {"url": "https://crm.example/hook", "secret_env": "T_HOOK"},
        "http": {"listen": "127.0.0.1:8080"},
        "clock": {"scale": 0.01, "start": "2026-12-03T15:00:00+00:00"},
    }, "run.toml")
    assert (cfg.node_id, cfg.database, cfg.tick_s, cfg.campaigns) == \
        ("node-a", "sqlite:///x.db", 0.5, ("spring", "7"))
    ami, ari = cfg.pbxs
    assert (ami.backend, ami.host, ami.port, ami.secret) == ("ami", "10.0.0.5", 5039, AMI_SECRET)
    assert (ari.backend, ari.url, ari.secret, ari.app) == \
        ("ari", "http://10.0.0.6:8088", ARI_SECRET, "pl")
    assert cfg.webhook_secret == HOOK_SECRET.encode()
    assert cfg.http_listen == "127.0.0.1:8080"
    assert cfg.clock_scale == 0.01 and cfg.clock_start == START


#: A bad configuration, and the key its error must name (after the file name).
BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({}, "[[pbx]]"),
    ({"pbx": []}, "[[pbx]]"),
    ({"pbx": [pbx(backend="sip")]}, "pbx[0].backend"),
    ({"pbx": [pbx(trunk="PJSIP/trunk")]}, "pbx[0].trunk"),
    ({"pbx": [pbx(), pbx(trunk=None)]}, "pbx[1].trunk"),
    ({"pbx": [pbx(port="5038")]}, "pbx[0].port"),
    ({"pbx": [pbx(), pbx()]}, "pbx[1].name"),
    ({"pbx": [pbx(secret_env="T_UNSET_SECRET")]}, "pbx[0].secret_env"),
    ({"pbx": [{"trunk": "PJSIP/{number}@t"}]}, "pbx[0]: set secret_env"),
    ({"pbx": [pbx(backend="ari", secret=None)]}, "pbx[0]: set password_env"),
    ({"pbx": [pbx()], "tick_s": 0}, "tick_s"),
    ({"pbx": [pbx()], "colour": "red"}, "unknown key 'colour'"),
    ({"pbx": [pbx()], "clock": {"start": "tomorrow at noon"}}, "clock.start"),
    ({"pbx": [pbx()], "clock": {"start": "2026-12-03T15:00:00"}}, "clock.start"),
    ({"pbx": [pbx()], "webhook": {"url": "https://crm.example"}}, "webhook"),
    ({"pbx": [pbx()], "campaigns": "spring"}, "campaigns"),
    ({"pbx": [pbx()], "sms": {"provider": "pigeon"}}, "sms.provider"),
    ({"pbx": [pbx()], "http": {"listen": "localhost"}}, "http.listen"),
    ({"pbx": [pbx()], "http": "8080"}, "http"),
    ({"pbx": [pbx(port=70000)]}, "pbx[0].port"),
    ({"pbx": [pbx()], "clock": {"scale": 0}}, "clock.scale"),
    ({"pbx": [pbx()], "sim": {"wrap_s": [5]}}, "sim.wrap_s"),
    ({"pbx": [pbx()], "sim": {"wrap_s": "x"}}, "sim.wrap_s"),
    ({"pbx": [pbx()], "sim": {"agents": -3}}, "sim.agents"),
]


@pytest.mark.parametrize(("data", "key"), BAD_CONFIGS,
                         ids=[f"{i}-{key}" for i, (_, key) in enumerate(BAD_CONFIGS)])
def test_config_errors_name_the_file_and_the_key(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], key: str
) -> None:
    monkeypatch.delenv("T_UNSET_SECRET", raising=False)
    for section in data.get("pbx", []):
        if isinstance(section, dict) and section.get("secret") is None:
            section.pop("secret", None)
    message = error_of(data)
    assert message.startswith("/etc/paceline/run.toml"), message
    assert key in message, message


def test_an_unset_secret_variable_is_named_but_no_secret_is_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("T_HOOK", HOOK_SECRET)
    monkeypatch.delenv("T_MISSING", raising=False)
    message = error_of({"pbx": [pbx(secret_env="T_MISSING")],
                        "webhook": {"url": "https://x", "secret_env": "T_HOOK"}})
    assert "T_MISSING" in message and "is not set" in message
    assert HOOK_SECRET not in message


def test_load_config_reads_toml_and_names_the_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_AMI", AMI_SECRET)
    good = tmp_path / "paceline.toml"
    good.write_text('node_id = "n1"\n[[pbx]]\nname = "p"\ntrunk = "PJSIP/{number}@t"\n'
                    'secret_env = "T_AMI"\n')
    cfg = load_config(good)
    assert cfg.source == str(good) and cfg.pbxs[0].secret == AMI_SECRET
    bad = tmp_path / "bad.toml"
    bad.write_text("[[pbx]\nname=")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: not valid TOML")):
        load_config(bad)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'none.toml'}: cannot read")):
        load_config(tmp_path / "none.toml")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[pbx]]\nbackend = "ami"\ntrunk = "PJSIP/x"\nsecret = "s"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{wrong}: pbx[0].trunk")):
        load_config(wrong)


def test_secrets_never_show_in_the_configs_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_AMI", AMI_SECRET)
    monkeypatch.setenv("T_HOOK", HOOK_SECRET)
    cfg = parse_config({
        "database": f"postgresql://paceline:{DB_PASSWORD}@db/paceline",
        "pbx": [pbx(secret_env="T_AMI"), pbx(name="p2", backend="ari", secret=None,
                                             password=ARI_SECRET)],
        "webhook": {"url": "https://crm.example/hook", "secret_env": "T_HOOK"},
        "sms": {"provider": "http", "url": "https://sms.example/send?to={to}",
                "auth_header": SMS_SECRET},
    }, "run.toml")
    assert cfg.pbxs[0].secret == AMI_SECRET and cfg.pbxs[1].secret == ARI_SECRET
    shown = repr(cfg) + str(cfg) + "".join(repr(p) + str(p) for p in cfg.pbxs)
    for secret in (AMI_SECRET, ARI_SECRET, HOOK_SECRET, SMS_SECRET, DB_PASSWORD):
        assert secret not in shown, f"{secret!r} shows in the config's repr"


# ---- the agent HTTP API ---------------------------------------------------------------------


@pytest.fixture
async def api(sqlite_engine: Engine) -> AsyncIterator[tuple[Dialer, TestServer, int]]:
    """The agent API of an engine that is not running (agent actions need no PBX)."""
    db = sqlite_engine
    clock = ScaledClock(0.01, START)
    cid = make_campaign(db, START, agent_groups=["sales"])
    add_contacts(db, cid, [{"phone1": "+12125550101"}], START)
    set_campaign_state(db, cid, CampaignState.RUNNING, START)
    with write_transaction(db) as conn:
        create_agent(conn, "alice", "PJSIP/agent101", groups=["sales"])
        create_agent(conn, "eve", "PJSIP/agent107", groups=["elsewhere"])
    # Never entered: no connection is made.
    backend = AmiTelephony("127.0.0.1", 9, "dialer", "dialer")
    engine = Dialer(db, {"pbx": backend}, {"pbx": "PJSIP/{number}@trunk"}, node_id="api-node",
                    clock=clock)
    app = web.Application()
    app.add_routes(agent_routes(engine))
    server = TestServer(app)
    await server.start_server()
    try:
        yield engine, server, cid
    finally:
        await server.close()


async def call(server: TestServer, user: str, verb: str, body: Any = None,
               raw: str | None = None, method: str = "POST",
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        url = server.make_url(f"/agents/{user}/{verb}")
        kw: dict[str, Any] = {"data": raw, "headers": {"Content-Type": "application/json"}} \
            if raw is not None else {"json": body}
        kw.setdefault("headers", {}).update(headers or {})
        async with session.request(method, url, **kw) as resp:
            data = await resp.json() if resp.content_type == "application/json" \
                else await resp.text()
            return resp.status, data


async def test_agent_api_login_ready_pause(api: tuple[Dialer, TestServer, int]) -> None:
    engine, server, cid = api
    assert await call(server, "alice", "login", {"campaign": cid}) == \
        (200, {"agent": "alice", "state": "not_ready"})
    assert await call(server, "alice", "ready") == (200, {"agent": "alice", "state": "ready"})
    assert await call(server, "alice", "pause", {"code": "lunch"}) == \
        (200, {"agent": "alice", "state": "not_ready"})
    with engine.db.connect() as conn:
        row = conn.execute(select(Agent).where(Agent.username == "alice")).one()
    assert (row.state, row.pause_code) == ("not_ready", "lunch")
    assert await call(server, "alice", "logout") == \
        (200, {"agent": "alice", "state": "logged_out"})


@pytest.mark.parametrize(("user", "verb", "body", "reason"), [
    ("mallory", "login", {}, "no such agent"),
    ("eve", "login", "CAMPAIGN", "not assigned"),
    ("alice", "login", {"campaign": "spring"}, "invalid literal"),
    ("alice", "ready", None, "not logged in"),
    ("alice", "dispose", {"code": "NI"}, "no call to wrap up"),
    ("alice", "dial", None, "no previewed contact"),
    ("alice", "login", [1, 2], "a JSON object is expected"),
])
async def test_agent_api_refusals_are_409_with_the_reason(
    api: tuple[Dialer, TestServer, int], user: str, verb: str, body: Any, reason: str,
) -> None:
    _, server, cid = api
    status, data = await call(server, user, verb, {"campaign": cid} if body == "CAMPAIGN"
                              else body)
    assert status == 409, data
    assert reason in data["error"], data


async def test_agent_api_bad_json_is_409_and_unknown_action_404(
    api: tuple[Dialer, TestServer, int],
) -> None:
    _, server, _ = api
    status, data = await call(server, "alice", "login", raw="{not json")
    assert status == 409 and data["error"]
    status, _ = await call(server, "alice", "dance", {})
    assert status == 404


async def test_agent_api_dispose_errors_name_the_field_and_a_good_one_goes_ready(
    api: tuple[Dialer, TestServer, int],
) -> None:
    engine, server, cid = api
    await call(server, "alice", "login", {"campaign": cid})
    await call(server, "alice", "ready")
    # A call reached alice and ended: she is in wrap-up on its attempt.
    now = engine.clock.now()
    (lease,) = lease_due_contacts(engine.db, cid, 1, now, "api-node")
    with write_transaction(engine.db) as conn:
        (o,) = open_attempts(conn, [lease], "api-node", now)
        mark_call(conn, o.attempt_id, agent="alice", answered_at=now, connected_at=now,
                  outcome=Outcome.HUMAN.value, ended_at=now, call_state="ended")
    alice = engine.board.agents["alice"]
    mono = engine.clock.monotonic()
    engine.board.move(alice, AgentState.ON_CALL, mono)
    engine.board.move(alice, AgentState.WRAP_UP, mono)
    alice.attempt_id = o.attempt_id
    status, data = await call(server, "alice", "dispose", {"code": "NOPE"})
    assert status == 409 and "NOPE" in data["error"], data
    status, data = await call(server, "alice", "dispose",
                              {"code": "CB", "callback_at": "next tuesday"})
    assert status == 409, data
    status, data = await call(server, "alice", "dispose", {"code": "CB"})
    assert status == 409 and "callback_at" in data["error"], data
    # Ill-typed fields from a desktop are the agent's to fix too, never a server error.
    for bad in ({"code": "SALE", "cart": ["PLAN-S"]}, {"code": "SALE", "cart": {"PLAN-S": "x"}},
                {"code": "NI", "notes": 42}, {"code": 7}):
        status, data = await call(server, "alice", "dispose", bad)
        assert status == 409, (bad, status, data)
    assert alice.state is AgentState.WRAP_UP, "a refused disposition changes nothing"
    assert await call(server, "alice", "dispose", {"code": "NI", "notes": "no thanks"}) == \
        (200, {"agent": "alice", "state": "ready"})


async def test_status_endpoint(api: tuple[Dialer, TestServer, int]) -> None:
    _, server, _ = api
    async with aiohttp.ClientSession() as session, \
            session.get(server.make_url("/status")) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["node_id"] == "api-node" and data["calls_in_flight"] == 0


# ---- paceline demo ----------------------------------------------------------------------------


def test_paceline_demo_runs_and_prints_a_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "demo", "--contacts", "30", "--agents", "3", "--minutes", "5", "--time-scale", "0.005",
        "--db-file", str(tmp_path / "demo.db"),
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    assert "Summary" in out
    rate = re.search(r"abandon rate: (\d+)/(\d+) live answers = ([\d.]+)%", out)
    assert rate is not None, out
    assert int(rate.group(2)) > 0, "the demo reached no one"
    assert re.search(r"attempts: .*human \d+", out), out


async def test_agent_actions_are_post_only(api: tuple[Dialer, TestServer, int]) -> None:
    engine, server, cid = api
    await call(server, "alice", "login", {"campaign": cid})
    status, _ = await call(server, "alice", "logout", method="GET")
    assert status in (404, 405)
    assert engine.board.agents["alice"].state is AgentState.NOT_READY, "a GET changed state"


async def test_agent_api_with_a_token_refuses_requests_without_it(
    api: tuple[Dialer, TestServer, int],
) -> None:
    engine, _, cid = api
    app = web.Application()
    app.add_routes(agent_routes(engine, token="t0ken-value"))
    server = TestServer(app)
    await server.start_server()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken-value"}):
            status, _ = await call(server, "alice", "login", {"campaign": cid}, headers=headers)
            assert status == 401, headers
        assert "alice" not in engine.board.agents or \
            engine.board.agents["alice"].state is AgentState.LOGGED_OUT
        status, data = await call(server, "alice", "login", {"campaign": cid},
                                  headers={"Authorization": "Bearer t0ken-value"})
        assert (status, data["state"]) == (200, "not_ready")
    finally:
        await server.close()


async def test_agent_api_preview_shows_the_contact_and_skip_hands_it_back(
    api: tuple[Dialer, TestServer, int],
) -> None:
    engine, server, cid = api
    await call(server, "alice", "login", {"campaign": cid})
    await call(server, "alice", "ready")
    status, lease = await call(server, "alice", "preview")
    assert status == 200, lease
    assert lease["number"] == "+12125550101" and lease["phone_index"] == 1
    assert set(lease) >= {"contact_id", "number", "phone_index", "external_id", "params"}
    assert (await call(server, "alice", "preview"))[1] == lease, "the same contact until done"
    assert (await call(server, "alice", "skip"))[0] == 200
    assert engine.board.agents["alice"].preview is None
    status, lease = await call(server, "alice", "preview")
    assert status == 200 and lease["contact_id"] is not None, "handed back: it can come again"
