"""The SMS channel at module level: the HTTP provider against a real local server, templates,
segments, delivery receipts, inbound STOP/HELP/replies, expiry, the service with the simulated
SMSC, and the webhook routes. Database tests run on SQLite and PostgreSQL.

The engine-level test (voice -> SMS switch on busy, STOP, expiry through the running engine)
lives with the engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import Engine, insert, select, update

from dialer.campaigns import campaign_policy
from dialer.db import write_transaction
from dialer.db.models import (
    Attempt,
    Campaign,
    Contact,
    ContactPhone,
    DncEntry,
    SmsMessage,
    WebhookOutbox,
)
from dialer.dnc import check_numbers
from dialer.domain import Channel
from dialer.leasing import LeasedContact
from dialer.sms import (
    DeliveryReceipt,
    HttpSmsProvider,
    InboundError,
    InboundKind,
    ReceiptError,
    SmsError,
    SmsFieldMissing,
    SmsService,
    SmsSettings,
    SmsStatus,
    SmsTemplateError,
    apply_receipt,
    check_template,
    expire_sms,
    handle_inbound,
    parse_delivery_receipt,
    record_failed,
    record_sent,
    render_template,
    segments,
    sms_routes,
)
from sim.sms import SimSmsProvider
from tests.factories import add_contacts, make_campaign

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
NUMBER = "+12125550142"
AUTH = "Bearer s3cr3t-t0ken"
SETTINGS = SmsSettings(help_text="Acme: reply STOP to opt out", opt_out_confirmation="Bye!")


# --- a fake gateway: a real aiohttp server that records what it got -------------------------


@dataclass
class Gateway:
    status: int = 200
    answer: Any = field(default_factory=lambda: {"data": {"id": 4242}})
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append({
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "auth": request.headers.get("Authorization"),
            "json": json.loads(raw) if raw else None,
        })
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if isinstance(self.answer, bytes):
            return web.Response(status=self.status, body=self.answer)
        # An error page that echoes the credentials, as careless gateways do.
        if self.status >= 400:
            return web.Response(status=self.status,
                                text=f"denied for {request.headers.get('Authorization')}")
        return web.json_response(self.answer, status=self.status)


class EchoTokenGateway(Gateway):
    async def handle(self, request: web.Request) -> web.Response:
        token = request.headers["Authorization"].split()[-1]
        return web.Response(status=401, text=f"token {token} expired")


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gw.handle)
    server = TestServer(app)
    await server.start_server()
    gw.url = f"http://127.0.0.1:{server.port}"
    try:
        yield gw
    finally:
        await server.close()


def http_provider(gw: Gateway, **kw: Any) -> HttpSmsProvider:
    kw.setdefault("auth_header", AUTH)
    kw.setdefault("id_field", "data.id")
    return HttpSmsProvider(
        gw.url + "/v1/send?api_key=KEY123&to={to}&ref={ref}",
        body_template={"to": "{to}", "text": "{body}", "meta": {"ref": "{ref}", "n": 1}},
        **kw,
    )


def assert_no_secrets(text: str) -> None:
    assert "s3cr3t-t0ken" not in text
    assert "KEY123" not in text
    assert "to=" not in text  # no query string at all


# --- HttpSmsProvider ---------------------------------------------------------------------------


async def test_http_provider_fills_url_and_json_templates_and_returns_the_dotted_id(
    gateway: Gateway,
) -> None:
    async with http_provider(gateway) as provider:
        message_id = await provider.send(NUMBER, "Hi & bye ü {x}", ref="17")
    assert message_id == "4242"
    [req] = gateway.requests
    assert req["method"] == "POST" and req["path"] == "/v1/send"
    assert req["query"] == {"api_key": "KEY123", "to": NUMBER, "ref": "17"}  # `+` survived
    assert req["auth"] == AUTH
    assert req["json"] == {"to": NUMBER, "text": "Hi & bye ü {x}", "meta": {"ref": "17", "n": 1}}


async def test_http_provider_4xx_is_permanent_and_its_text_holds_no_secret(
    gateway: Gateway,
) -> None:
    gateway.status = 400
    async with http_provider(gateway) as provider:
        with pytest.raises(SmsError) as exc:
            await provider.send(NUMBER, "hello", ref="1")
    assert exc.value.permanent is True
    text = str(exc.value)
    assert "HTTP 400" in text and "/v1/send" in text
    assert "denied for ***" in text  # the echoed header was masked
    assert_no_secrets(text)


async def test_http_provider_masks_an_echoed_bare_token() -> None:
    gw = EchoTokenGateway()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gw.handle)
    async with TestServer(app) as server:
        provider = HttpSmsProvider(f"http://127.0.0.1:{server.port}/send", auth_header=AUTH)
        async with provider:
            with pytest.raises(SmsError, match=r"HTTP 401: token \*\*\* expired") as exc:
                await provider.send(NUMBER, "hello", ref="1")
    assert exc.value.permanent
    assert_no_secrets(str(exc.value))


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_http_provider_5xx_and_throttling_are_temporary(
    gateway: Gateway, status: int
) -> None:
    gateway.status = status
    async with http_provider(gateway) as provider:
        with pytest.raises(SmsError) as exc:
            await provider.send(NUMBER, "hello", ref="1")
    assert exc.value.permanent is False
    assert f"HTTP {status}" in str(exc.value)
    assert_no_secrets(str(exc.value))


async def test_http_provider_timeout_is_temporary(gateway: Gateway) -> None:
    gateway.delay_s = 1.0
    async with http_provider(gateway, timeout_s=0.1) as provider:
        with pytest.raises(SmsError, match=r"did not answer within 0\.1 s") as exc:
            await provider.send(NUMBER, "hello", ref="1")
    assert exc.value.permanent is False
    assert_no_secrets(str(exc.value))


async def test_http_provider_connection_refused_is_temporary_without_the_query() -> None:
    provider = HttpSmsProvider("http://127.0.0.1:9/send?api_key=KEY123&to={to}",
                               auth_header=AUTH)
    async with provider:
        with pytest.raises(SmsError) as exc:
            await provider.send(NUMBER, "hello", ref="1")
    assert exc.value.permanent is False
    assert "http://127.0.0.1:9/send failed" in str(exc.value)
    assert_no_secrets(str(exc.value))


async def test_http_provider_2xx_without_an_id_is_permanent_and_names_id_field(
    gateway: Gateway,
) -> None:
    gateway.answer = {"ok": True}
    async with http_provider(gateway) as provider:
        with pytest.raises(SmsError, match=r"no message id at 'data\.id'") as exc:
            await provider.send(NUMBER, "hello", ref="1")
    assert exc.value.permanent is True  # it may have been sent: never send it twice


async def test_http_provider_2xx_with_a_body_that_is_not_json_is_an_error(
    gateway: Gateway,
) -> None:
    gateway.answer = b"OK"
    async with http_provider(gateway) as provider:
        with pytest.raises(SmsError, match="no message id"):
            await provider.send(NUMBER, "hello", ref="1")


async def test_http_provider_get_without_a_body_template(gateway: Gateway) -> None:
    gateway.answer = {"messages": [{"message-id": "abc"}]}
    provider = HttpSmsProvider(gateway.url + "/sms?to={to}&text={body}", method="get",
                               id_field="messages.0.message-id")
    async with provider:
        assert await provider.send(NUMBER, "a b/c?", ref="1") == "abc"
    [req] = gateway.requests
    assert req["method"] == "GET" and req["json"] is None and req["auth"] is None
    assert req["query"] == {"to": NUMBER, "text": "a b/c?"}


def test_http_provider_refuses_unknown_placeholders_naming_them() -> None:
    with pytest.raises(ValueError, match=r"sms url: unknown placeholder \{phone\}"):
        HttpSmsProvider("https://sms.example/send?to={phone}")
    with pytest.raises(ValueError, match=r"sms body_template: unknown placeholder \{text\}"):
        HttpSmsProvider("https://sms.example/send", body_template={"t": "{text}"})
    with pytest.raises(ValueError, match="http"):
        HttpSmsProvider("ftp://sms.example/send")


def test_http_provider_from_config_reads_the_auth_header_from_the_environment() -> None:
    section = {"url": "https://sms.example/send", "auth_header_env": "SMS_AUTH",
               "id_field": "sid"}
    provider = HttpSmsProvider.from_config(section, {"SMS_AUTH": AUTH})
    assert provider.id_field == "sid" and provider.endpoint == "https://sms.example/send"
    with pytest.raises(ValueError, match=r"\[sms\] auth_header_env: .*'SMS_AUTH' is not set"):
        HttpSmsProvider.from_config(section, {})
    with pytest.raises(ValueError, match=r"\[sms\] url: required"):
        HttpSmsProvider.from_config({}, {})


# --- templates and segments --------------------------------------------------------------------


def test_render_template_fills_params_external_id_and_phone() -> None:
    fields = {"param1": "Ann", "param12": "12.50", "external_id": "C-7", "phone": NUMBER}
    body = render_template("Hi {param1}, {{ref}} {external_id}: {param12} EUR to {phone}",
                           fields)
    assert body == f"Hi Ann, {{ref}} C-7: 12.50 EUR to {NUMBER}"


def test_render_template_refuses_a_contact_with_missing_fields_naming_each() -> None:
    with pytest.raises(SmsFieldMissing) as exc:
        render_template("Hello {param1}, {param2} {param1} {param3}",
                        {"param1": None, "param2": "x", "param3": "  "})
    assert exc.value.fields == ("param1", "param3")
    assert "param1, param3" in str(exc.value)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Hi {name}", r"unknown placeholder '\{name\}' at character 4"),
        ("Hi {param13}", r"unknown placeholder '\{param13\}'"),
        ("Hi { param1 }", r"unknown placeholder '\{ param1 \}'"),
        ("Hi {param1", r"unmatched '\{' at character 4"),
        ("50% off}", r"unmatched '\}' at character 8"),
    ],
)
def test_template_errors_name_the_placeholder_and_where(template: str, message: str) -> None:
    with pytest.raises(SmsTemplateError, match=message):
        render_template(template, {})
    with pytest.raises(SmsTemplateError, match=message):
        check_template(template)


def test_check_template_lists_placeholders_and_refuses_a_missing_template() -> None:
    assert check_template("{param2} {external_id} {param2}") == ("param2", "external_id",
                                                                  "param2")
    for blank in (None, "", "   "):
        with pytest.raises(SmsTemplateError, match="no SMS text"):
            check_template(blank)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", 0),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets
        ("€" * 81, 2),  # 162 septets
        ("€" * 153, 3),  # 306 septets, but a part holds 76 of them: never split one
        ("ü" * 160, 1),  # ü is in the GSM alphabet
        ("ş" * 70, 1),  # ş is not: UCS-2
        ("ş" * 71, 2),
        ("ş" * 134, 2),
        ("ş" * 135, 3),
        ("😀" * 35, 1),  # two UTF-16 units each
        ("😀" * 36, 2),
    ],
    ids=lambda v: f"{len(v)}x{v[:1].encode('unicode_escape').decode()}" if isinstance(v, str)
    else str(v),
)
def test_segments_count_gsm7_and_ucs2(body: str, expected: int) -> None:
    assert segments(body) == expected, f"{len(body)} x {body[:1]!r}"


# --- receipts and keyword parsing (pure) -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("delivered", SmsStatus.DELIVERED), ("DELIVRD", SmsStatus.DELIVERED),
        ("undelivered", SmsStatus.FAILED), ("failed", SmsStatus.FAILED),
        ("REJECTD", SmsStatus.FAILED), ("expired", SmsStatus.FAILED),
        ("sent", SmsStatus.SENT), ("queued", SmsStatus.SENT), ("en-route", SmsStatus.SENT),
    ],
)
def test_parse_delivery_receipt_maps_common_statuses(raw: str, status: SmsStatus) -> None:
    receipt = parse_delivery_receipt({"id": 99, "status": raw})
    assert receipt == DeliveryReceipt("99", status, None)


def test_parse_delivery_receipt_reads_dotted_fields_and_names_what_is_missing() -> None:
    data = {"data": {"msg": "m-1", "state": "failed", "err": 1}}
    assert parse_delivery_receipt(data, id_field="data.msg", status_field="data.state",
                                  error_field="data.err") == DeliveryReceipt("m-1",
                                                                             SmsStatus.FAILED, "1")
    with pytest.raises(ReceiptError, match="no message id in field 'MessageSid'"):
        parse_delivery_receipt({"status": "sent"}, id_field="MessageSid")
    with pytest.raises(ReceiptError, match="no status in field 'status'"):
        parse_delivery_receipt({"id": "x"})
    with pytest.raises(ReceiptError, match="unknown status 'teleported'"):
        parse_delivery_receipt({"id": "x", "status": "teleported"})


@pytest.mark.parametrize("body", ["STOP", "stop", " Stop ", "STOP!", "stop.", "\tQuit\n",
                                  "unsubscribe", "Opt  Out", "REVOKE"])
def test_whole_message_opt_out_keywords_match(body: str) -> None:
    assert SETTINGS.is_opt_out(body)


@pytest.mark.parametrize("body", ["STOP please", "please stop", "stopping", "Don't stop", ""])
def test_a_message_that_only_contains_a_keyword_is_not_an_opt_out(body: str) -> None:
    assert not SETTINGS.is_opt_out(body)


def test_word_matching_opts_out_on_a_keyword_anywhere_but_not_inside_a_word() -> None:
    words = SmsSettings(opt_out_match="word")
    assert words.is_opt_out("STOP please")
    assert words.is_opt_out("please, opt out of this")
    assert not words.is_opt_out("stopping by later")


def test_settings_refuse_a_keyword_that_is_both_opt_out_and_help() -> None:
    with pytest.raises(ValueError, match="stop is both an opt-out and a help keyword"):
        SmsSettings(help_keywords=("HELP", "stop"))
    with pytest.raises(ValueError, match=r"\[sms\] opt_out_keywords: must be a list"):
        SmsSettings.from_config({"opt_out_keywords": "STOP"})
    custom = SmsSettings.from_config({"opt_out_keywords": ["ARRET"], "help_text": "aide"})
    assert custom.is_opt_out("arrêt") is False and custom.is_opt_out("Arret")
    assert custom.help_text == "aide"


# --- database helpers --------------------------------------------------------------------------


def sms_campaign(engine: Engine, *, expiry_s: int = 3600, channel: str = "voice+sms",
                 strategy: str = "default") -> int:
    cid = make_campaign(engine, NOW, channel=channel, strategy=strategy)
    with write_transaction(engine) as conn:
        conn.execute(update(Campaign).where(Campaign.id == cid).values(
            sms_expiry_s=expiry_s, sms_template="Hi {param1}, your code {external_id}"))
    return cid


def contact(engine: Engine, cid: int, *, state: str = "sms_sent", phone1: str = NUMBER,
            phones: bool = False, updated_at: datetime = NOW, **kw: Any) -> int:
    [contact_id] = add_contacts(engine, cid, [dict(phone1=phone1, state=state, **kw)], NOW)
    with write_transaction(engine) as conn:
        conn.execute(update(Contact).where(Contact.id == contact_id)
                     .values(updated_at=updated_at))
        if phones:  # as the importer keeps it
            row = conn.execute(select(Contact).where(Contact.id == contact_id)).one()
            conn.execute(insert(ContactPhone), [
                {"contact_id": contact_id, "slot": k, "e164": p}
                for k, p in enumerate((row.phone1, row.phone2, row.phone3, row.phone4,
                                       row.phone5), start=1) if p
            ])
    return contact_id


def attempt(engine: Engine, cid: int, contact_id: int, *, number: str = NUMBER,
            placed_at: datetime = NOW, outcome: str | None = None, step: int | None = None
            ) -> int:
    with write_transaction(engine) as conn:
        return int(conn.scalar(insert(Attempt).values(
            contact_id=contact_id, campaign_id=cid, step=step, phone_index=1, number=number,
            channel=Channel.SMS.value, placed_at=placed_at, outcome=outcome,
        ).returning(Attempt.id)))


def sent_sms(engine: Engine, cid: int, contact_id: int, *, at: datetime = NOW,
             number: str = NUMBER, provider_id: str = "p-1") -> int:
    """An SMS attempt the provider accepted at `at`."""
    aid = attempt(engine, cid, contact_id, number=number, placed_at=at)
    with write_transaction(engine) as conn:
        record_sent(conn, attempt_id=aid, contact_id=contact_id, campaign_id=cid,
                    number=number, body="Hi Ann", provider_id=provider_id, now=at)
    return aid


def row(engine: Engine, model: Any, id_: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(model).where(model.id == id_)).one()


def messages(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(SmsMessage).order_by(SmsMessage.id)).all())


def inbound(engine: Engine, body: str, number: str = NUMBER,
            settings: SmsSettings = SETTINGS) -> Any:
    with write_transaction(engine) as conn:
        return handle_inbound(conn, number=number, body=body, now=NOW + timedelta(minutes=5),
                              settings=settings)


# --- record_sent / record_failed / apply_receipt -----------------------------------------------


def test_record_sent_writes_the_message_and_ends_the_attempt(engine: Engine) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = sent_sms(engine, cid, c, at=NOW)
    a = row(engine, Attempt, aid)
    assert (a.outcome, a.ended_at) == ("sms_sent", NOW)
    [m] = messages(engine)
    assert (m.direction, m.attempt_id, m.contact_id, m.campaign_id, m.number, m.body,
            m.provider_id, m.status) == ("out", aid, c, cid, NUMBER, "Hi Ann", "p-1", "sent")


def test_record_failed_keeps_the_reason_clipped(engine: Engine) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = attempt(engine, cid, c)
    with write_transaction(engine) as conn:
        record_failed(conn, attempt_id=aid, contact_id=c, campaign_id=cid, number=NUMBER,
                      body="Hi {param1}", error="x" * 500, now=NOW)
    assert row(engine, Attempt, aid).outcome == "sms_failed"
    [m] = messages(engine)
    assert m.status == "failed" and len(m.error) == 200 and m.provider_id is None


def test_record_sent_for_a_missing_attempt_raises(engine: Engine) -> None:
    with pytest.raises(LookupError, match="no attempt with id 999"), \
            write_transaction(engine) as conn:
        record_sent(conn, attempt_id=999, contact_id=1, campaign_id=1, number=NUMBER,
                    body="x", provider_id="p", now=NOW)


def test_receipts_move_the_outcome_and_the_first_final_one_wins(engine: Engine) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    delivered = sent_sms(engine, cid, c, provider_id="p-d")
    failed = sent_sms(engine, cid, c, provider_id="p-f")
    later = NOW + timedelta(seconds=30)
    with write_transaction(engine) as conn:
        assert apply_receipt(conn, DeliveryReceipt("p-d", SmsStatus.SENT), later) is not None
        apply_receipt(conn, DeliveryReceipt("p-d", SmsStatus.DELIVERED), later)
        apply_receipt(conn, DeliveryReceipt("p-d", SmsStatus.FAILED, "late"), later)
        apply_receipt(conn, DeliveryReceipt("p-f", SmsStatus.FAILED, "absent subscriber"), later)
        apply_receipt(conn, DeliveryReceipt("p-f", SmsStatus.DELIVERED), later)
        assert apply_receipt(conn, DeliveryReceipt("nope", SmsStatus.DELIVERED), later) is None
    assert row(engine, Attempt, delivered).outcome == "sms_delivered"
    assert row(engine, Attempt, failed).outcome == "sms_failed"
    by_pid = {m.provider_id: m for m in messages(engine)}
    assert (by_pid["p-d"].status, by_pid["p-d"].error) == ("delivered", None)
    assert (by_pid["p-f"].status, by_pid["p-f"].error) == ("failed", "absent subscriber")
    assert by_pid["p-f"].updated_at == later


# --- inbound -----------------------------------------------------------------------------------


def test_stop_lists_the_number_globally_and_closes_every_contact_holding_it(
    engine: Engine,
) -> None:
    cid = sms_campaign(engine)
    other = sms_campaign(engine)
    texted = contact(engine, cid)
    sent_sms(engine, cid, texted)
    # The same person in another campaign, on phone2 (found through contact_phones).
    elsewhere = contact(engine, other, state="pending", phone1="+12125550199", phone2=NUMBER,
                        phones=True)
    on_a_call = contact(engine, other, state="sent_to_dialer", phones=True)
    unrelated = contact(engine, cid, state="pending", phone1="+12125550100", phones=True)

    result = inbound(engine, " Stop ")

    assert result.kind is InboundKind.OPT_OUT and result.reply == "Bye!"
    assert result.dnc_added and result.closed_contacts == tuple(sorted((texted, elsewhere)))
    assert (result.contact_id, result.campaign_id) == (texted, cid)
    states = {c: row(engine, Contact, c).state for c in (texted, elsewhere, on_a_call, unrelated)}
    assert states == {texted: "dnc_listed", elsewhere: "dnc_listed",
                      on_a_call: "sent_to_dialer", unrelated: "pending"}
    assert "opted out by SMS" in row(engine, Contact, texted).state_reason
    with engine.connect() as conn:
        [entry] = conn.execute(select(DncEntry)).all()
    assert (entry.value, entry.source, entry.campaign_id, entry.list_id) == (
        NUMBER, "sms-stop", None, None)
    # Global: every campaign's lease now refuses the number.
    [check] = check_numbers(engine, [NUMBER], NOW, campaign_id=other)
    assert check.blocked
    m = messages(engine)[-1]
    assert (m.direction, m.status, m.body, m.contact_id, m.campaign_id) == (
        "in", "received", " Stop ", texted, cid)
    # A second STOP confirms again but adds no second entry.
    again = inbound(engine, "STOP")
    assert again.kind is InboundKind.OPT_OUT and not again.dnc_added
    assert again.closed_contacts == ()


def test_stop_with_more_words_is_a_reply_not_an_opt_out(engine: Engine) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid)
    sent_sms(engine, cid, c)
    result = inbound(engine, "STOP please")
    assert result.kind is InboundKind.REPLY and result.responded and result.reply is None
    assert row(engine, Contact, c).state == "sms_responded"
    with engine.connect() as conn:
        assert conn.execute(select(DncEntry)).all() == []


def test_stop_from_a_number_never_texted_still_lists_it(engine: Engine) -> None:
    result = inbound(engine, "stop", number="+12125550111")
    assert result.kind is InboundKind.OPT_OUT and result.dnc_added
    assert result.contact_id is None and result.closed_contacts == ()


def test_help_answers_the_help_text_and_changes_nothing(engine: Engine) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid)
    sent_sms(engine, cid, c)
    result = inbound(engine, "help")
    assert result.kind is InboundKind.HELP and result.reply == "Acme: reply STOP to opt out"
    assert row(engine, Contact, c).state == "sms_sent"
    with engine.connect() as conn:
        assert conn.execute(select(DncEntry)).all() == []


def test_a_reply_marks_the_latest_texted_contact_responded(engine: Engine) -> None:
    cid = sms_campaign(engine)
    old, latest = contact(engine, cid), contact(engine, cid)
    sent_sms(engine, cid, old, at=NOW - timedelta(hours=1), provider_id="p-old")
    sent_sms(engine, cid, latest, at=NOW, provider_id="p-new")
    # The provider writes the sender without the `+`.
    result = inbound(engine, "Yes, call me tomorrow", number=NUMBER[1:])
    assert result.kind is InboundKind.REPLY and result.responded
    assert (result.number, result.contact_id) == (NUMBER, latest)
    assert row(engine, Contact, latest).state == "sms_responded"
    assert row(engine, Contact, latest).state_reason.startswith("replied by SMS at ")
    assert row(engine, Contact, old).state == "sms_sent"


def test_a_reply_to_a_contact_not_waiting_for_one_is_recorded_only(engine: Engine) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="not_connected")  # the plan resumed after a switch SMS
    sent_sms(engine, cid, c)
    result = inbound(engine, "who is this?")
    assert not result.responded and result.note is not None and "not_connected" in result.note
    assert row(engine, Contact, c).state == "not_connected"
    assert messages(engine)[-1].direction == "in"


def test_an_inbound_sender_that_is_not_a_number_is_refused(engine: Engine) -> None:
    with pytest.raises(InboundError, match="inbound SMS sender 'ACME'"):
        inbound(engine, "STOP", number="ACME")
    assert messages(engine) == []


# --- expiry ------------------------------------------------------------------------------------


def test_expiry_closes_only_sms_sent_contacts_past_their_campaign_expiry(
    engine: Engine,
) -> None:
    hour = sms_campaign(engine, expiry_s=3600)
    week = sms_campaign(engine, expiry_s=7 * 86400)
    voice = sms_campaign(engine, expiry_s=60, channel="voice")
    old = contact(engine, hour)
    sent_sms(engine, hour, old, at=NOW - timedelta(hours=2))
    fresh = contact(engine, hour)
    sent_sms(engine, hour, fresh, at=NOW - timedelta(minutes=30))
    # Texted long ago, but texted again recently: the latest text counts.
    retexted = contact(engine, hour)
    sent_sms(engine, hour, retexted, at=NOW - timedelta(days=2), provider_id="a")
    sent_sms(engine, hour, retexted, at=NOW - timedelta(minutes=10), provider_id="b")
    boundary = contact(engine, hour)
    sent_sms(engine, hour, boundary, at=NOW - timedelta(seconds=3600))
    answered = contact(engine, hour, state="sms_responded")
    sent_sms(engine, hour, answered, at=NOW - timedelta(days=3))
    no_attempt = contact(engine, hour, updated_at=NOW - timedelta(days=1))
    long_expiry = contact(engine, week)
    sent_sms(engine, week, long_expiry, at=NOW - timedelta(days=2))
    voice_only = contact(engine, voice, updated_at=NOW - timedelta(days=1))

    with write_transaction(engine) as conn:
        assert expire_sms(conn, NOW) == 2

    states = {c: row(engine, Contact, c).state
              for c in (old, fresh, retexted, boundary, answered, no_attempt, long_expiry,
                        voice_only)}
    assert states == {old: "sms_sent_closed", fresh: "sms_sent", retexted: "sms_sent",
                      boundary: "sms_sent", answered: "sms_responded",
                      no_attempt: "sms_sent_closed", long_expiry: "sms_sent",
                      voice_only: "sms_sent"}
    assert "no reply within 3600 s" in row(engine, Contact, old).state_reason
    # The engine's entry point (run in a thread): nothing is left to close.
    assert SmsService(engine, SimSmsProvider()).expire(NOW) == 0


# --- the service with the simulated SMSC -------------------------------------------------------


def lease(contact_id: int, cid: int, *, number: str = NUMBER,
          params: tuple[str | None, ...] = ("Ann",)) -> LeasedContact:
    return LeasedContact(contact_id, cid, 1, number, Channel.SMS, None, "America/New_York",
                         "C-7", params + (None,) * (12 - len(params)), NOW + timedelta(minutes=5))


async def test_service_sends_a_leased_contact_and_applies_the_simulated_receipt(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = attempt(engine, cid, c)
    async with SimSmsProvider(seed=1, delivered_p=1.0, failed_p=0.0, time_scale=0.0) as sim:
        service = SmsService(engine, sim, SETTINGS)
        sim.set_handlers(on_receipt=service.on_receipt, on_inbound=service.on_inbound)
        assert await service.send_leased(lease(c, cid), attempt_id=aid,
                                         template="Hi {param1}, your code {external_id}",
                                         now=NOW)
        await sim.settle()
    assert [(s.to, s.body, s.ref) for s in sim.sent] == [(NUMBER, "Hi Ann, your code C-7",
                                                          str(aid))]
    assert row(engine, Attempt, aid).outcome == "sms_delivered"
    assert messages(engine)[0].status == "delivered"
    assert sim.errors == []


@pytest.mark.parametrize(("param1", "state"), [("Ann", "sms_sent"), (None, "retries_completed")])
async def test_send_and_settle_records_the_text_settles_the_contact_and_fills_the_outbox(
    engine: Engine, param1: str | None, state: str
) -> None:
    cid = sms_campaign(engine, channel="sms", strategy="sms-only")
    c = contact(engine, cid, state="sent_to_dialer", param1=param1)
    aid = attempt(engine, cid, c, step=0)
    with engine.connect() as conn:
        policy = campaign_policy(conn, cid)
    async with SimSmsProvider(delivered_p=0.0, failed_p=0.0, time_scale=0.0) as sim:
        service = SmsService(engine, sim, SETTINGS)
        sent = await service.send_attempt_and_settle(
            aid, lease(c, cid, params=(param1,)), "Hi {param1}", policy, NOW)
    assert sent is (param1 is not None)
    assert row(engine, Attempt, aid).outcome == ("sms_sent" if sent else "sms_failed")
    settled = row(engine, Contact, c)
    assert (settled.state, settled.leased_by, settled.attempt_count) == (state, None, 1)
    if not sent:
        assert "needs param1" in settled.state_reason
        assert sim.sent == []
    with engine.connect() as conn:
        [event] = conn.execute(select(WebhookOutbox)).all()
    assert (event.event, event.attempt_id) == ("attempt.finished", aid)


async def test_service_records_a_missing_field_as_sms_failed_and_sends_nothing(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = attempt(engine, cid, c)
    async with SimSmsProvider(time_scale=0.0) as sim:
        service = SmsService(engine, sim, SETTINGS)
        sent = await service.send_leased(lease(c, cid, params=(None,)), attempt_id=aid,
                                         template="Hi {param1}", now=NOW)
    assert not sent and sim.sent == []
    assert row(engine, Attempt, aid).outcome == "sms_failed"
    [m] = messages(engine)
    assert m.body == "Hi {param1}" and "needs param1" in m.error


@pytest.mark.parametrize(("fault", "kind"), [("reject", "permanent"), ("outage", "temporary")])
async def test_service_records_provider_refusals_as_sms_failed(
    sqlite_engine: Engine, fault: str, kind: str
) -> None:
    engine = sqlite_engine
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = attempt(engine, cid, c)
    async with SimSmsProvider(time_scale=0.0) as sim:
        if fault == "reject":
            sim.reject_numbers.add(NUMBER)
        else:
            sim.outage = True
        service = SmsService(engine, sim, SETTINGS)
        assert not await service.send_attempt(aid, c, cid, NUMBER, "hello", NOW)
    assert row(engine, Attempt, aid).outcome == "sms_failed"
    assert messages(engine)[0].error.startswith(f"{kind}: the simulated SMSC")


async def test_service_stop_reply_lists_the_number_and_texts_the_confirmation(
    engine: Engine,
) -> None:
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = attempt(engine, cid, c)
    # No receipts (they would race the status asserted below).
    async with SimSmsProvider(delivered_p=0.0, failed_p=0.0, time_scale=0.0) as sim:
        service = SmsService(engine, sim, SETTINGS)
        sim.set_handlers(on_receipt=service.on_receipt, on_inbound=service.on_inbound)
        await service.send_attempt(aid, c, cid, NUMBER, "Hi Ann", NOW)
        with write_transaction(engine) as conn:  # the engine settles the contact
            conn.execute(update(Contact).where(Contact.id == c).values(state="sms_sent"))
        await sim.reply(NUMBER, "STOP")
        await sim.settle()
    assert row(engine, Contact, c).state == "dnc_listed"
    assert [s.body for s in sim.sent] == ["Hi Ann", "Bye!"]
    confirmation = messages(engine)[-1]
    assert (confirmation.direction, confirmation.attempt_id, confirmation.body,
            confirmation.status, confirmation.contact_id) == ("out", None, "Bye!", "sent", c)


class FixedIdProvider:
    async def send(self, to: str, body: str, *, ref: str) -> str:
        return "fast-1"


async def test_a_receipt_that_overtakes_its_send_is_applied_once_the_send_is_recorded(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    cid = sms_campaign(engine)
    c = contact(engine, cid, state="sent_to_dialer")
    aid = attempt(engine, cid, c)
    service = SmsService(engine, FixedIdProvider(), SETTINGS)
    early = DeliveryReceipt("fast-1", SmsStatus.DELIVERED)
    assert await service.handle_receipt(early, NOW) is None
    assert await service.send_attempt(aid, c, cid, NUMBER, "hello", NOW)
    assert row(engine, Attempt, aid).outcome == "sms_delivered"
    # Unknown and never sent: kept, and applied to nothing.
    for i in range(3):
        await service.handle_receipt(DeliveryReceipt(f"other-{i}", SmsStatus.FAILED), NOW)
    assert row(engine, Attempt, aid).outcome == "sms_delivered"


async def test_a_failed_confirmation_is_recorded_and_the_opt_out_stands(
    sqlite_engine: Engine,
) -> None:
    engine = sqlite_engine
    async with SimSmsProvider(time_scale=0.0) as sim:
        sim.outage = True
        service = SmsService(engine, sim, SETTINGS)
        result = await service.handle_inbound("+12125550111", "stop", NOW)
    assert result.dnc_added
    last = messages(engine)[-1]
    assert (last.direction, last.status) == ("out", "failed")
    assert "outage" in last.error


# --- the webhook routes ------------------------------------------------------------------------


@pytest.fixture
async def routes_client(
    sqlite_engine: Engine,
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, SimSmsProvider]]:
    sim = SimSmsProvider(time_scale=0.0)
    service = SmsService(sqlite_engine, sim, SETTINGS)
    app = web.Application()
    app.add_routes(sms_routes(service, id_field="MessageSid", status_field="MessageStatus",
                              token="tok"))
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(headers={"X-Paceline-Token": "tok"}) as session:
            yield session, f"http://127.0.0.1:{server.port}", sim
    finally:
        await server.close()
        await sim.close()


async def test_inbound_route_takes_a_form_and_answers_the_kind(
    sqlite_engine: Engine,
    routes_client: tuple[aiohttp.ClientSession, str, SimSmsProvider],
) -> None:
    session, base, sim = routes_client
    async with session.post(f"{base}/sms/inbound", data={"From": NUMBER, "Body": "HELP"}) as r:
        assert r.status == 200
        assert await r.json() == {"kind": "help", "reply": "Acme: reply STOP to opt out"}
    async with session.post(f"{base}/sms/inbound", json={"msisdn": NUMBER[1:], "text": "stop"}
                            ) as r:
        assert (await r.json())["kind"] == "opt_out"
    assert [s.body for s in sim.sent] == ["Acme: reply STOP to opt out", "Bye!"]
    async with session.post(f"{base}/sms/inbound", data={"Body": "hi"}) as r:
        assert r.status == 400 and "no sender" in await r.text()
    async with session.post(f"{base}/sms/inbound", data={"From": "ACME", "Body": "hi"}) as r:
        assert r.status == 400 and "ACME" in await r.text()


async def test_receipt_route_applies_the_receipt_and_refuses_bad_ones(
    sqlite_engine: Engine,
    routes_client: tuple[aiohttp.ClientSession, str, SimSmsProvider],
) -> None:
    session, base, _ = routes_client
    cid = sms_campaign(sqlite_engine)
    c = contact(sqlite_engine, cid, state="sent_to_dialer")
    aid = sent_sms(sqlite_engine, cid, c, provider_id="SM1")
    post: Callable[..., Any] = session.post
    async with post(f"{base}/sms/receipt",
                    data={"MessageSid": "SM1", "MessageStatus": "delivered"}) as r:
        assert r.status == 200 and await r.json() == {"matched": True}
    assert row(sqlite_engine, Attempt, aid).outcome == "sms_delivered"
    async with post(f"{base}/sms/receipt",
                    json={"MessageSid": "SM9", "MessageStatus": "delivered"}) as r:
        assert await r.json() == {"matched": False}
    async with post(f"{base}/sms/receipt",
                    json={"MessageSid": "SM1", "MessageStatus": "lost"}) as r:
        assert r.status == 400 and "unknown status 'lost'" in await r.text()
    async with aiohttp.ClientSession() as anonymous, anonymous.post(
        f"{base}/sms/receipt", data={"MessageSid": "SM1", "MessageStatus": "failed"}
    ) as r:
        assert r.status == 401
    assert row(sqlite_engine, Attempt, aid).outcome == "sms_delivered"


# --- the simulated SMSC ------------------------------------------------------------------------


async def fates(seed: int, n: int = 200) -> list[SmsStatus]:
    receipts: list[DeliveryReceipt] = []

    async def on_receipt(r: DeliveryReceipt) -> None:
        receipts.append(r)

    async with SimSmsProvider(seed=seed, delivered_p=0.7, failed_p=0.2, time_scale=0.0,
                              on_receipt=on_receipt) as sim:
        for i in range(n):
            await sim.send(f"+1212555{i:04d}", "x", ref=str(i))
        await sim.settle()
    assert len(receipts) == sum(1 for s in sim.sent if s.status is not SmsStatus.SENT)
    return [s.status for s in sim.sent]


async def test_sim_fates_are_seeded_and_follow_the_probabilities() -> None:
    a, b, c = await fates(7), await fates(7), await fates(8)
    assert a == b and a != c
    assert 120 <= a.count(SmsStatus.DELIVERED) <= 160
    assert 25 <= a.count(SmsStatus.FAILED) <= 55
    assert a.count(SmsStatus.SENT) > 5  # receipts that never came


async def test_sim_draws_replies_and_close_cancels_pending_timers() -> None:
    got: list[tuple[str, str]] = []

    async def on_inbound(number: str, text: str) -> None:
        got.append((number, text))

    async with SimSmsProvider(delivered_p=1.0, failed_p=0.0, replies=[(1.0, "STOP")],
                              reply_delay_s=(0.0, 0.0), time_scale=0.0,
                              on_inbound=on_inbound) as sim:
        await sim.send(NUMBER, "x", ref="1")
        await sim.settle()
    assert got == [(NUMBER, "STOP")]

    slow = SimSmsProvider(delivered_p=1.0, failed_p=0.0, receipt_delay_s=(3600, 3600))
    await slow.send(NUMBER, "x", ref="1")
    await asyncio.wait_for(slow.close(), 1)
    assert slow.sent[0].status is SmsStatus.SENT
    with pytest.raises(SmsError, match="closed"):
        await slow.send(NUMBER, "x", ref="2")


async def test_sim_keeps_handler_errors_and_delivers_the_other_receipts() -> None:
    seen: list[str] = []

    async def flaky(receipt: DeliveryReceipt) -> None:
        seen.append(receipt.provider_id)
        if receipt.provider_id == "sim-1":
            raise RuntimeError("boom")

    handler: Callable[[DeliveryReceipt], Awaitable[None]] = flaky
    async with SimSmsProvider(delivered_p=1.0, failed_p=0.0, time_scale=0.0,
                              on_receipt=handler) as sim:
        await sim.send(NUMBER, "a", ref="1")
        await sim.send(NUMBER, "b", ref="2")
        await sim.settle()
    assert sorted(seen) == ["sim-1", "sim-2"]
    assert [str(e) for e in sim.errors] == ["boom"]
