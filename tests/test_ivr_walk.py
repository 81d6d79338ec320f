"""The flow walker (`ivr.walk.walk_flow`): virtual time, DTMF groups, fake services, lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ivr import model
from ivr.expr import compile_expr
from ivr.payments import sim_token
from ivr.ports import ContactRecord, PaymentResult
from ivr.protocol import CardDetails, Finished
from ivr.walk import WalkServices, walk_flow
from tests.test_ivr_interpreter import build, ends, flow, hangup, menu, prompt

PAY_PROMPTS = {"card_number": prompt("sound:pay/card"), "expiry": prompt("sound:pay/expiry"),
               "cvv": prompt("sound:pay/cvv")}


def payment_flow() -> model.Flow:
    return flow(
        "welcome",
        build(model.Play, "welcome", prompt=prompt("sound:paceline/welcome"), next="main"),
        menu("main", options={"1": "take_payment", "2": "agent"}, no_input="goodbye",
             invalid="goodbye"),
        build(model.Pay, "take_payment", amount=compile_expr("amount_due"), currency="GBP",
              prompts=PAY_PROMPTS, next="goodbye", failed="goodbye", aborted="main"),
        build(model.Transfer, "agent", kind="queue", target="support", failed="goodbye"),
        hangup("goodbye", "sound:paceline/goodbye"))


def test_walk_prints_a_masked_payment_path() -> None:
    result = walk_flow(payment_flow(), ani="+441234567890",
                       dtmf=["1", "4111111111111111#", "0427#", "123"],
                       variables={"amount_due": "42.50"})
    token = sim_token("walk:take_payment:1")
    assert result.lines == [
        "welcome  play sound:paceline/welcome",
        "main  play sound:menu",
        "main  menu digit 1 -> take_payment",
        "take_payment  pay charge 42.50 GBP",
        "take_payment  secure mode on",
        "take_payment  play sound:pay/card",
        "take_payment  card number ************1111 (visa) ok",
        "take_payment  play sound:pay/expiry",
        "take_payment  expiry ok",
        "take_payment  play sound:pay/cvv",
        "take_payment  ignored digit # (right after a full answer)",
        "take_payment  cvv ok",
        "take_payment  pay sent to the gateway",
        "take_payment  secure mode off",
        f"take_payment  gateway approved token {token}",
        "take_payment  pay approved -> goodbye",
        "goodbye  play sound:paceline/goodbye",
        "-> hangup",
    ]
    assert result.path == ["welcome", "main", "take_payment", "goodbye"]
    assert result.finished == Finished("hangup", "goodbye")
    assert result.variables["pay_result"] == "approved"
    assert "4111111111111111" not in "\n".join(result.lines) + repr(result.variables)


def test_walk_without_digits_lets_every_timer_fire() -> None:
    result = walk_flow(payment_flow(), ani="+44", dtmf=[])
    assert result.path == ["welcome", "main", "goodbye"]
    assert result.lines.count("main  play sound:menu") == 3
    assert "main  menu no input, 3 tries spent -> goodbye" in result.lines


def test_empty_group_is_one_silence_then_the_next_group_answers() -> None:
    result = walk_flow(payment_flow(), ani="+44", dtmf=["", "2"])
    assert result.path == ["welcome", "main", "agent"]
    assert "main  menu no input (try 1 of 3)" in result.lines
    assert result.finished == Finished("transferred", "agent")
    assert [t.target for t in result.transfers] == ["support"]


def test_a_group_without_finish_key_ends_on_the_inter_digit_timeout() -> None:
    f = flow("acct", build(model.Gather, "acct", prompt=prompt("sound:acct"), var="account",
                           next="bye", no_input="bye", invalid="bye", finish_key="#"),
             hangup())
    result = walk_flow(f, ani="+44", dtmf=["1234", "9"])
    assert result.variables["account"] == "1234"
    assert result.path == ["acct", "bye"]


def test_barge_in_group_is_typed_ahead_into_the_menu() -> None:
    f = flow("hi", build(model.Play, "hi", prompt=prompt("sound:hi"), next="main",
                         barge_in=True), menu(), *ends("one", "two", "silent", "wrong"))
    result = walk_flow(f, ani="+44", dtmf=["2"])
    assert result.path == ["hi", "main", "two"]
    assert "hi  play barge-in" in result.lines


def test_identify_and_verify_with_walk_contacts() -> None:
    f = flow("who", build(model.Identify, "who", found="pin", not_found="nobody"),
             build(model.Verify, "pin", method="pin", prompt=prompt("sound:pin"), next="ok",
                   failed="no", no_input="no"), *ends("nobody", "ok", "no"))
    contacts = {"+441234": ContactRecord(7, "retention", "Ann", {"tier": "gold"},
                                         {"pin": "2468"})}
    good = walk_flow(f, ani="+441234", dtmf=["1111", "2468"],
                     services=WalkServices(contacts=contacts))
    assert good.path == ["who", "pin", "ok"]
    assert good.variables["contact_tier"] == "gold" and good.variables["verified"] is True
    assert "2468" not in "\n".join(good.lines) and "1111" not in "\n".join(good.lines)
    assert walk_flow(f, ani="+449999", dtmf=[],
                     services=WalkServices(contacts=contacts)).path == ["who", "nobody"]


def lookup_flow() -> model.Flow:
    return flow("crm", build(model.Lookup, "crm", url="https://crm/{ani}", next="ok",
                             fallback="fb", into={"tier": "customer.tier"}), *ends("ok", "fb"))


def test_lookup_answers_from_a_mapping_a_function_or_fails() -> None:
    answered = walk_flow(lookup_flow(), ani="+44", dtmf=[],
                         services=WalkServices(lookup={"customer": {"tier": "gold"}}))
    assert answered.path == ["crm", "ok"] and answered.variables["tier"] == "gold"

    seen: list[str] = []

    def crm(method: str, url: str, params: Mapping[str, str]) -> Mapping[str, Any] | None:
        seen.append(f"{method} {url}")
        return {"customer": {"tier": "silver"}}

    called = walk_flow(lookup_flow(), ani="+44", dtmf=[], services=WalkServices(lookup=crm))
    assert called.variables["tier"] == "silver" and seen == ["GET https://crm/+44"]
    assert walk_flow(lookup_flow(), ani="+44", dtmf=[]).path == ["crm", "fb"]


def test_callback_sms_dnc_and_record_are_recorded_on_the_result() -> None:
    f = flow(
        "offer",
        build(model.CallbackOffer, "offer", queue="support", threshold_s=60,
              prompt=prompt("sound:offer"), campaign="callbacks", no_wait="agent",
              accepted="link", declined="agent"),
        build(model.Sms, "link", text="https://x/{callback_contact_id}", next="msg",
              failed="bye"),
        build(model.Record, "msg", prompt=None, var="rec", next="out"),
        build(model.Dnc, "out", next="bye"),
        build(model.Transfer, "agent", kind="queue", target="support", failed="bye"),
        hangup())
    result = walk_flow(f, ani="+4477", dtmf=["1"], services=WalkServices(ewt_s=300))
    assert result.path == ["offer", "link", "msg", "out", "bye"]
    assert [(c.number, c.campaign) for c in result.callbacks] == [("+4477", "callbacks")]
    assert [(s.to, s.text) for s in result.sms] == [("+4477", "https://x/1001")]
    assert [d.number for d in result.dnc] == ["+4477"]
    assert result.variables["rec"] == "ivr-walk-1"
    short = walk_flow(f, ani="+4477", dtmf=[], services=WalkServices(ewt_s=10,
                                                                     transfer_ok=False))
    assert short.path == ["offer", "agent", "bye"]
    refused = walk_flow(f, ani="+4477", dtmf=["1"], services=WalkServices(ewt_s=300,
                                                                          sms_ok=False))
    assert refused.path == ["offer", "link", "bye"] and refused.sms == []


def test_declining_gateway_and_a_raising_gateway() -> None:
    digits = ["1", "4000000000009995#", "0427", "123"]
    declined = walk_flow(payment_flow(), ani="+44", dtmf=digits,
                         variables={"amount_due": 5})
    assert declined.variables["pay_error"] == "insufficient_funds"
    assert "take_payment  gateway declined insufficient_funds" in declined.lines

    def broken(card: CardDetails, amount: str, action: str, key: str) -> PaymentResult:
        raise ConnectionError(f"gateway down for {card.number}")

    failed = walk_flow(payment_flow(), ani="+44", dtmf=["1", "4111111111111111#", "0427", "123"],
                       variables={"amount_due": 5}, services=WalkServices(gateway=broken))
    assert failed.variables["pay_result"] == "error"
    text = "\n".join(failed.lines) + repr(failed.variables)
    assert "4111111111111111" not in text and "************1111" in text


def test_walk_stops_after_max_steps() -> None:
    f = flow("a", build(model.Set, "a", assign=(), next="main"),
             menu(retries=10**6), *ends("one", "two", "silent", "wrong"))
    result = walk_flow(f, ani="+44", dtmf=[], max_steps=50)
    assert result.finished is None
    assert result.lines[-1] == "main  (stopped after 50 steps)"
