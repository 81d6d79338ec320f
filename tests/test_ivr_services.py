"""The IVR service adapters (`ivr.services`) on SQLite, PostgreSQL and a local HTTP server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from dialer.agents import create_agent
from dialer.db import write_transaction
from dialer.db.models import (
    Agent,
    AgentStateLog,
    Contact,
    ContactNote,
    ContactPhone,
    IvrPayment,
)
from dialer.dnc import check_numbers
from dialer.leasing import lease_due_contacts
from ivr.services import (
    DEFAULT_AHT_S,
    NO_AGENT_WAIT_S,
    AgentGroupWaitEstimator,
    CrmError,
    DbCallbackBook,
    DbContactDirectory,
    DbDncList,
    DbPaymentStore,
    HttpCrm,
    ProviderSms,
    ServiceError,
    StaticWaitEstimator,
    UnknownCampaign,
    build_services,
    looks_like_pan,
)
from tests.factories import add_contacts, make_campaign

# A Tuesday: 12:00 in New York, inside the default calling hours.
NOW = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)
ALICE = "+12127365000"
BOB = "+12127365001"
PAN = "4111111111111111"


def now() -> datetime:
    return NOW


# --- HTTP CRM ----------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def crm_server() -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    """A CRM on 127.0.0.1: /customer (JSON object), /error (500), /html, /list, /slow."""
    seen: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def customer(request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        seen.append({"method": request.method, "query": dict(request.query), "body": body,
                     "auth": request.headers.get("Authorization")})
        return web.json_response({"customer": {"tier": "gold"}, "echo": dict(request.query)})

    async def error(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text=f"database down; card {PAN}")

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>login</html>", content_type="text/html")

    async def listing(request: web.Request) -> web.StreamResponse:
        return web.json_response([1, 2])

    async def slow(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.json_response({})

    app = web.Application()
    routes: dict[str, Handler] = {"/customer": customer, "/error": error, "/html": html,
                                  "/list": listing, "/slow": slow}
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, seen
    finally:
        await server.close()


async def test_crm_get_sends_params_as_query_and_returns_the_object(
    crm_server: tuple[TestServer, list[dict[str, Any]]],
) -> None:
    server, seen = crm_server
    async with HttpCrm(headers={"Authorization": "Bearer s3cret-token"}) as crm:
        data = await crm.lookup("GET", str(server.make_url("/customer")),
                                {"ani": ALICE, "id": "42"}, 2.0)
    assert data["customer"] == {"tier": "gold"}
    assert seen == [{"method": "GET", "query": {"ani": ALICE, "id": "42"}, "body": None,
                     "auth": "Bearer s3cret-token"}]


async def test_crm_post_sends_params_as_a_json_body(
    crm_server: tuple[TestServer, list[dict[str, Any]]],
) -> None:
    server, seen = crm_server
    async with HttpCrm() as crm:
        await crm.lookup("POST", str(server.make_url("/customer")), {"account": "123456"}, 2.0)
    assert seen[0]["method"] == "POST"
    assert seen[0]["query"] == {}
    assert seen[0]["body"] == {"account": "123456"}


@pytest.mark.parametrize(("path", "expected"), [
    ("/error", "answered HTTP 500"),
    ("/html", "not JSON"),
    ("/list", "JSON list; a lookup needs a JSON object"),
])
async def test_crm_refuses_errors_and_non_objects_without_leaking_the_query(
    crm_server: tuple[TestServer, list[dict[str, Any]]], path: str, expected: str,
) -> None:
    server, _ = crm_server
    url = f"{server.make_url(path)}?api_key=topsecret&pin=1234"
    async with HttpCrm() as crm:
        with pytest.raises(CrmError) as info:
            await crm.lookup("GET", url, {"pin": "9876"}, 2.0)
    message = str(info.value)
    assert expected in message
    assert path in message
    for secret in ("topsecret", "1234", "9876", PAN):
        assert secret not in message


async def test_crm_timeout_is_an_error_naming_the_limit(
    crm_server: tuple[TestServer, list[dict[str, Any]]],
) -> None:
    server, _ = crm_server
    async with HttpCrm() as crm:
        with pytest.raises(CrmError, match=r"did not answer within 0.05 s"):
            await crm.lookup("GET", f"{server.make_url('/slow')}?api_key=topsecret", {}, 0.05)


async def test_crm_connection_failure_is_redacted() -> None:
    async with HttpCrm() as crm:
        with pytest.raises(CrmError) as info:
            # Port 9 (discard) is closed on the test machine: connection refused at once.
            await crm.lookup("GET", "http://127.0.0.1:9/c?api_key=topsecret", {"a": "b"}, 2.0)
    assert "failed" in str(info.value)
    assert "topsecret" not in str(info.value)


# --- contacts ----------------------------------------------------------------------------------


def index_phones(engine: Engine, ids: list[int]) -> None:
    """What the importer does for each contact: one `contact_phones` row per filled slot."""
    with write_transaction(engine) as conn:
        rows = conn.execute(
            select(Contact.id, Contact.phone1, Contact.phone2, Contact.phone3, Contact.phone4,
                   Contact.phone5).where(Contact.id.in_(ids))
        ).all()
        conn.execute(insert(ContactPhone), [
            {"contact_id": r[0], "slot": slot, "e164": r[slot]}
            for r in rows for slot in range(1, 6) if r[slot]
        ])


FIELD_NAMES = {"param1": "name", "param2": "pin", "param3": "dob", "param4": "tier"}


async def test_directory_finds_a_contact_by_any_phone_slot_and_splits_out_secrets(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    cid = make_campaign(engine, NOW, name="retention")
    (alice,) = add_contacts(engine, cid, [{
        "phone1": "+12127365099", "phone3": ALICE, "external_id": "A-1",
        "param1": "Alice Smith", "param2": "4321", "param3": "01021980", "param4": "gold",
        "param5": "note",
    }], NOW)
    index_phones(engine, [alice])
    directory = DbContactDirectory(engine, field_names=FIELD_NAMES)
    # The caller ID as the PBX writes it, national form: normalised as the importer does.
    record = await directory.find("(212) 736-5000", None)
    assert record is not None
    assert (record.contact_id, record.campaign, record.name) == (alice, "retention",
                                                                 "Alice Smith")
    assert dict(record.fields) == {"name": "Alice Smith", "tier": "gold", "param5": "note",
                                   "external_id": "A-1"}
    assert dict(record.secrets) == {"pin": "4321", "dob": "01021980"}
    assert "4321" not in repr(record) and "01021980" not in repr(record)
    assert await directory.find("anonymous", None) is None
    assert await directory.find("+12127365555", None) is None


async def test_directory_prefers_the_newest_contact_and_honours_the_campaign(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    old_cid = make_campaign(engine, NOW, name="old")
    new_cid = make_campaign(engine, NOW, name="new")
    (older,) = add_contacts(engine, old_cid, [{"phone2": ALICE}], NOW - timedelta(days=2))
    (newer,) = add_contacts(engine, new_cid, [{"phone1": ALICE}], NOW)
    index_phones(engine, [older, newer])
    directory = DbContactDirectory(engine)
    found = await directory.find(ALICE, None)
    assert found is not None and found.contact_id == newer
    in_old = await directory.find(ALICE, "old")
    assert in_old is not None and (in_old.contact_id, in_old.campaign) == (older, "old")
    assert in_old.name == "" and dict(in_old.secrets) == {}
    with pytest.raises(UnknownCampaign, match="'nowhere'"):
        await directory.find(ALICE, "nowhere")


def test_directory_refuses_field_names_for_unknown_slots(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match="param13"):
        DbContactDirectory(sqlite_engine, field_names={"param13": "pin"})


# --- wait estimates ----------------------------------------------------------------------------


async def test_static_wait_estimator_uses_the_table_then_the_default() -> None:
    assert await StaticWaitEstimator({"support": 300}, 5).estimate_wait("support") == 300.0
    assert await StaticWaitEstimator({"support": 300}, 5).estimate_wait("sales") == 5.0
    with pytest.raises(LookupError, match="sales"):
        await StaticWaitEstimator({"support": 300}).estimate_wait("sales")


def agents(engine: Engine, group: str, states: list[str]) -> list[int]:
    with write_transaction(engine) as conn:
        ids = [create_agent(conn, f"{group}{i}", f"PJSIP/{group}{i}", groups=[group])
               for i in range(len(states))]
        for aid, state in zip(ids, states, strict=True):
            conn.execute(update(Agent).where(Agent.id == aid).values(state=state))
    return ids


def intervals(engine: Engine, rows: list[tuple[int, str, float, float | None]]) -> None:
    """(agent, state, started seconds before NOW, duration seconds or None for open)."""
    with write_transaction(engine) as conn:
        conn.execute(insert(AgentStateLog), [
            {"agent_id": a, "state": s, "started_at": NOW - timedelta(seconds=ago),
             "ended_at": None if d is None else NOW - timedelta(seconds=ago - d)}
            for a, s, ago, d in rows
        ])


async def test_group_wait_is_zero_while_an_agent_is_ready(sqlite_engine: Engine) -> None:
    agents(sqlite_engine, "support", ["ready", "on_call"])
    estimator = AgentGroupWaitEstimator(sqlite_engine, now_fn=now)
    estimator.joined("support")
    assert await estimator.estimate_wait("support") == 0.0


async def test_group_wait_is_handle_time_per_staffed_agent_times_callers_ahead_plus_one(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    a, b, _paused = agents(engine, "support", ["on_call", "wrap_up", "not_ready"])
    (other,) = agents(engine, "sales", ["on_call"])
    intervals(engine, [
        (a, "on_call", 600, 60), (a, "wrap_up", 540, 30),      # 90 s
        (b, "on_call", 400, 120), (b, "wrap_up", 280, 30),     # 150 s
        (a, "on_call", 100, None),                             # still talking: not counted
        (b, "on_call", 7200, 1000),                            # ended before the window
        (other, "on_call", 300, 3000),                         # another group
        (a, "ready", 800, 200),                                # not handle time
    ])
    estimator = AgentGroupWaitEstimator(engine, now_fn=now, window_s=3600)
    load = estimator.load("support")
    assert (load.ready, load.staffed, load.aht_s, load.queued) == (0, 2, 120.0, 0)
    assert await estimator.estimate_wait("support") == 60.0  # 120 s / 2 agents * 1
    estimator.joined("support")
    estimator.joined("support")
    assert await estimator.estimate_wait("support") == 180.0  # two callers ahead
    estimator.left("support")
    estimator.left("support")
    estimator.left("support")  # never below zero
    assert estimator.queued("support") == 0


async def test_group_wait_falls_back_without_history_and_without_agents(
    sqlite_engine: Engine,
) -> None:
    agents(sqlite_engine, "support", ["on_call"])
    agents(sqlite_engine, "night", ["not_ready", "logged_out"])
    estimator = AgentGroupWaitEstimator(sqlite_engine, now_fn=now)
    assert await estimator.estimate_wait("support") == DEFAULT_AHT_S
    assert await estimator.estimate_wait("night") == NO_AGENT_WAIT_S
    with pytest.raises(LookupError, match="'nobody'"):
        await estimator.estimate_wait("nobody")


# --- callbacks ---------------------------------------------------------------------------------


async def test_callback_is_a_public_callback_the_dialer_leases_and_the_ivr_finds(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    cid = make_campaign(engine, NOW, name="callbacks")
    book = DbCallbackBook(engine, now)
    contact_id = await book.create_callback(
        "2127365000", "callbacks", {"param1": "Alice", "reason": "long wait"}
    )
    with engine.connect() as conn:
        row = conn.execute(select(Contact).where(Contact.id == contact_id)).one()
        note = conn.scalar(select(ContactNote.text).where(ContactNote.contact_id == contact_id))
    assert (row.campaign_id, row.phone1, row.state, row.callback_agent, row.due_at) == (
        cid, ALICE, "callback_scheduled", None, NOW)
    assert (row.tz, row.param1) == ("America/New_York", "Alice")
    assert note == "IVR callback request: reason=long wait"
    leased = lease_due_contacts(engine, cid, 10, NOW, "node1")
    assert [(c.contact_id, c.number) for c in leased] == [(contact_id, ALICE)]
    found = await DbContactDirectory(engine).find(ALICE, "callbacks")
    assert found is not None and found.contact_id == contact_id


async def test_callback_in_an_unknown_campaign_names_it(sqlite_engine: Engine) -> None:
    book = DbCallbackBook(sqlite_engine, now)
    with pytest.raises(UnknownCampaign, match="'no-such-campaign'"):
        await book.create_callback(ALICE, "no-such-campaign", {})
    make_campaign(sqlite_engine, NOW, name="cb")
    with pytest.raises(ServiceError, match="not a valid phone number"):
        await book.create_callback("anonymous", "cb", {})
    with pytest.raises(ServiceError, match="param2: at most 40"):
        await book.create_callback(ALICE, "cb", {"param2": "x" * 41})


# --- DNC ---------------------------------------------------------------------------------------


async def test_opt_out_is_campaign_scoped_or_global_and_the_dialer_sees_it(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    cid = make_campaign(engine, NOW, name="promo")
    other = make_campaign(engine, NOW, name="other")
    dnc = DbDncList(engine, now)
    await dnc.add_dnc("(212) 736-5000", "promo", "ivr opt-out")
    await dnc.add_dnc("(212) 736-5000", "promo", "ivr opt-out")  # listed once
    await dnc.add_dnc(BOB, None, "ivr opt-out")

    def blocked(number: str, campaign_id: int | None) -> bool:
        return check_numbers(engine, [number], NOW, campaign_id=campaign_id)[0].blocked

    assert blocked(ALICE, cid) and not blocked(ALICE, other) and not blocked(ALICE, None)
    assert blocked(BOB, cid) and blocked(BOB, other) and blocked(BOB, None)
    with engine.connect() as conn:
        notes = conn.execute(text("SELECT value, note FROM dnc_entries ORDER BY id")).all()
    assert [tuple(n) for n in notes] == [(ALICE, "ivr opt-out"), (BOB, "ivr opt-out")]
    with pytest.raises(UnknownCampaign):
        await dnc.add_dnc(ALICE, "gone", "ivr opt-out")


# --- SMS ---------------------------------------------------------------------------------------


class FakeProvider:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def send(self, to: str, body: str, *, ref: str) -> str:
        self.sent.append((to, body, ref))
        return f"msg-{len(self.sent)}"


async def test_sms_goes_through_the_provider_in_e164_and_returns_its_id() -> None:
    provider = FakeProvider()
    sms = ProviderSms(provider, "ivr-address")
    assert await sms.send_sms("212-736-5000", "Update: https://x.test/a/7") == "msg-1"
    assert provider.sent == [(ALICE, "Update: https://x.test/a/7", "ivr-address-1")]
    with pytest.raises(ServiceError):
        await sms.send_sms("withheld", "hi")


# --- payments ----------------------------------------------------------------------------------


def payment(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(
        session_id="s1", flow="payment", node="take_payment", ani=ALICE, contact_id=None,
        action="charge", amount="42.50", currency="GBP", brand="visa", last4="1111",
        approved=True, token="tok_sim_0123456789abcdef", error="",
    )
    values.update(overrides)
    return values


async def check_payment_store(engine: Engine) -> None:
    store = DbPaymentStore(engine, now)
    await store.record_payment(**payment())
    await store.record_payment(**payment(approved=False, token="", last4="0002",
                                         error=f"declined: card {PAN}"))
    for bad, field in ((dict(token=PAN), "token"),
                       (dict(token=f"tok-{PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}"), "token"),
                       (dict(last4=PAN), "last4"), (dict(last4="12a4"), "last4"),
                       (dict(session_id=f"s-{PAN}"), "session_id")):
        with pytest.raises(ValueError, match=field) as info:
            await store.record_payment(**payment(**bad))
        assert PAN not in str(info.value)
    with engine.connect() as conn:
        rows = conn.execute(select(IvrPayment).order_by(IvrPayment.id)).all()
    assert [(r.last4, r.approved, r.token, r.amount, r.created_at) for r in rows] == [
        ("1111", True, "tok_sim_0123456789abcdef", "42.50", NOW),
        ("0002", False, "", "42.50", NOW),
    ]
    assert PAN not in rows[1].error and rows[1].error.endswith("1111")
    # The table's CHECK stands behind the store: no path writes a longer last4.
    with pytest.raises(IntegrityError), write_transaction(engine) as conn:
        conn.execute(insert(IvrPayment).values(**payment(last4="11x1"), created_at=NOW))


async def test_payment_store_keeps_token_and_last4_and_refuses_card_numbers(
    sqlite_engine: Engine,
) -> None:
    await check_payment_store(sqlite_engine)


@pytest.mark.postgres
async def test_payment_store_on_postgres_after_the_migration(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0005"
    await check_payment_store(pg_engine)


def test_pan_detection_ignores_phone_numbers_and_short_runs() -> None:
    assert looks_like_pan(PAN) and looks_like_pan(f"x{PAN}y")
    assert not looks_like_pan("4111111111111112")  # fails Luhn
    assert not looks_like_pan("tok_sim_0123456789abcdef")
    assert not looks_like_pan("+12127365000")


# --- wiring ------------------------------------------------------------------------------------


async def test_build_services_fills_every_services_field(sqlite_engine: Engine) -> None:
    gateway = object()
    services = build_services(sqlite_engine, gateway=gateway,
                              sms_provider=FakeProvider(), now_fn=now)
    from ivr.runner import Services

    # Every port of the bundle (the time limits keep their defaults).
    names = [f.name for f in dataclasses.fields(Services) if not f.name.endswith("timeout_s")]
    Services(**services)
    assert sorted(services) == sorted(names)
    assert services["gateway"] is gateway
    assert all(v is not None for v in services.values())
    assert build_services(sqlite_engine, gateway=gateway)["sms"] is None
    await services["crm"].close()


def test_a_secret_field_named_in_capitals_is_kept_under_the_name_verify_looks_up(
    sqlite_engine: Engine,
) -> None:
    directory = DbContactDirectory(sqlite_engine, field_names={"param1": "PIN",
                                                               "param2": "Date_Of_Birth"})
    record = directory._record(7, "retention", {"param1": "1111", "param2": "01021980"})
    assert (dict(record.fields), dict(record.secrets)) == (
        {}, {"pin": "1111", "date_of_birth": "01021980"})
