"""The `pay` node (card capture in SecureMode) and the simulated gateway (`ivr.payments`)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ivr import model
from ivr.expr import compile_expr
from ivr.loader import load_flow
from ivr.model import FlowErrors
from ivr.payments import SimGateway, sim_authorize, sim_token
from ivr.protocol import (
    CallerHangup,
    CancelTimer,
    CardDetails,
    Command,
    Finished,
    HangupCall,
    PaymentRequest,
    Play,
    SecureMode,
    ServiceDone,
    StartTimer,
    Trace,
)
from tests.test_ivr_interpreter import Call, build, ends, flow, prompt

VISA = "4111111111111111"
AMEX = "378282246310005"
BAD_LUHN = "4111111111111112"
DECLINED = "4000000000000002"
NO_FUNDS = "4000000000009995"

STEP_PROMPTS = {
    "card_number": prompt("sound:pay/card"), "expiry": prompt("sound:pay/expiry"),
    "cvv": prompt("sound:pay/cvv"), "postcode": prompt("sound:pay/postcode"),
    "invalid_card_number": prompt("sound:pay/bad-card"), "expired": prompt("sound:pay/expired"),
    "invalid_expiry": prompt("sound:pay/bad-expiry"), "invalid_cvv": prompt("sound:pay/bad-cvv"),
}


def pay_node(**kw: Any) -> model.Pay:
    fields: dict[str, Any] = dict(amount=compile_expr("amount_due"), currency="GBP",
                                  prompts=STEP_PROMPTS, next="paid", failed="unpaid",
                                  aborted="menu", description="Invoice {invoice}", retries=1)
    fields.update(kw)
    return build(model.Pay, "take", **fields)


def pay_call(**kw: Any) -> Call:
    call = Call(flow("take", pay_node(**kw), *ends("paid", "unpaid", "menu")),
                {"amount_due": 42.5, "invoice": "INV-1"}, today=date(2026, 3, 15))
    call.start()
    return call


def secure_pairs_ok(commands: list[Command]) -> bool:
    """SecureMode alternates on/off, ends off, and no card prompt plays outside it."""
    on = False
    for c in commands:
        if isinstance(c, SecureMode):
            if c.on == on:
                return False
            on = c.on
        if isinstance(c, Play) and any(m.startswith("sound:pay/") for m in c.media) and not on:
            return False
    return not on


def test_good_card_is_charged_with_a_stable_idempotency_key() -> None:
    call = pay_call()
    assert call.all[1:4] == [Trace("take", "pay", "charge 42.50 GBP"), SecureMode(True),
                             Play("s1:pb1", ("sound:pay/card",), "en", True)]
    call.press(VISA + "#")
    call.press("0427")
    call.press("123")
    request = call.request
    assert isinstance(request, PaymentRequest)
    assert (request.action, request.amount, request.currency, request.description,
            request.idempotency_key) == ("charge", "42.50", "GBP", "Invoice INV-1", "s1:take:1")
    assert (request.card.number, request.card.expiry, request.card.cvv) == (VISA, "0427", "123")
    assert call.session.secure
    out = call.answer(approved=True, token="tok_1")
    assert out[0] == SecureMode(False)
    assert call.path == ["take", "paid"]
    v = call.session.variables
    assert (v["pay_result"], v["pay_last4"], v["pay_brand"], v["pay_token"], v["pay_error"]) == (
        "approved", "1111", "visa", "tok_1", "")
    assert call.traces()[:4] == ["take pay charge 42.50 GBP",
                                 "take card number ************1111 (visa) ok",
                                 "take expiry ok", "take cvv ok"]
    assert secure_pairs_ok(call.all)


def test_luhn_failure_replays_with_the_invalid_prompt_then_a_good_card_goes_on() -> None:
    call = pay_call()
    call.press(BAD_LUHN + "#")
    assert call.media()[-1] == ("sound:pay/bad-card", "sound:pay/card")
    call.press(VISA + "#")
    assert call.media()[-1] == ("sound:pay/expiry",)
    assert "take card number invalid_card_number (try 1 of 2)" in call.traces()


def test_card_retries_spent_fails_with_the_error_code() -> None:
    call = pay_call()
    call.press(BAD_LUHN + "#")
    call.press("1234#")
    assert call.path == ["take", "unpaid"]
    assert call.session.variables["pay_result"] == "error"
    assert call.session.variables["pay_error"] == "invalid_card_number"
    assert not call.of(PaymentRequest)
    assert secure_pairs_ok(call.all)


def test_expired_card_plays_the_expired_prompt_and_a_bad_month_is_invalid() -> None:
    call = pay_call(retries=2)
    call.press(VISA + "#")
    call.press("0226")  # February 2026, before March 2026
    assert call.media()[-1] == ("sound:pay/expired", "sound:pay/expiry")
    call.press("1326")
    assert call.media()[-1] == ("sound:pay/bad-expiry", "sound:pay/expiry")
    call.press("0326")  # this month is still good
    assert call.media()[-1] == ("sound:pay/cvv",)


def test_cvv_of_the_wrong_length_is_refused() -> None:
    call = pay_call()
    call.press(VISA + "#")
    call.press("0427")
    call.press("12#")
    assert call.media()[-1] == ("sound:pay/bad-cvv", "sound:pay/cvv")
    call.press("999")
    assert isinstance(call.request, PaymentRequest)


def test_amex_needs_a_four_digit_cvv() -> None:
    call = pay_call()
    call.press(AMEX + "#")
    call.press("0427")
    call.press("123#")
    assert call.media()[-1] == ("sound:pay/bad-cvv", "sound:pay/cvv")
    call.press("1234")
    assert call.request.card.cvv == "1234"
    assert call.session.variables["pay_brand"] == "amex"


def test_postcode_step_when_required_and_cvv_skipped_when_not() -> None:
    call = pay_call(require_cvv=False, require_postcode=True)
    call.press(VISA + "#")
    call.press("0427")
    assert call.media()[-1] == ("sound:pay/postcode",)
    call.press("90210#")
    assert (call.request.card.cvv, call.request.card.postcode) == ("", "90210")


@pytest.mark.parametrize("typed_before_abort", [
    ["41*"], [VISA + "#", "*"], [VISA + "#", "0427", "1*"],
    [VISA + "#", "0427", "123", "902*"]])
def test_star_aborts_at_every_step(typed_before_abort: list[str]) -> None:
    call = pay_call(require_postcode=True)
    for group in typed_before_abort:
        call.press(group)
    assert call.path == ["take", "menu"]
    assert call.session.variables["pay_result"] == "aborted"
    assert not call.of(PaymentRequest)
    assert secure_pairs_ok(call.all)


@pytest.mark.parametrize(("answer", "result", "error"), [
    ({"approved": False, "error": "insufficient_funds"}, "declined", "insufficient_funds"),
    ({"approved": False}, "declined", "declined"),
])
def test_declined_payment_takes_the_failed_route(answer: dict[str, Any], result: str,
                                                 error: str) -> None:
    call = pay_call(prompts={**STEP_PROMPTS, "declined": prompt("sound:pay/declined")})
    call.press(VISA + "#")
    call.press("0427")
    call.press("123")
    out = call.send(ServiceDone(call.request.request_id, True, answer))
    assert out[0] == SecureMode(False)
    assert call.media()[-1] == ("sound:pay/declined",)
    call.played()
    assert call.path == ["take", "unpaid"]
    v = call.session.variables
    assert (v["pay_result"], v["pay_error"], v["pay_last4"]) == (result, error, "1111")


def test_gateway_error_takes_the_failed_route() -> None:
    call = pay_call()
    call.press(VISA + "#")
    call.press("0427")
    call.press("123")
    call.answer(ok=False, error="ConnectionError: gateway down")
    assert call.path == ["take", "unpaid"]
    assert call.session.variables["pay_result"] == "error"
    assert call.session.variables["pay_error"] == "ConnectionError: gateway down"
    assert secure_pairs_ok(call.all)


def test_processing_prompt_plays_while_the_gateway_works() -> None:
    call = pay_call(prompts={**STEP_PROMPTS, "processing": prompt("sound:pay/wait")})
    call.press(VISA + "#")
    call.press("0427")
    out = call.press("123")
    assert isinstance(out[-3], PaymentRequest)
    assert out[-1] == Play("s1:pb4", ("sound:pay/wait",), "en", False)
    call.answer(approved=True, token="t")
    assert call.path == ["take"]  # waits for the prompt to end
    call.played()
    assert call.path == ["take", "paid"]


def test_caller_hangup_mid_card_turns_secure_mode_off_before_finishing() -> None:
    call = pay_call()
    call.press("41111")
    out = call.send(CallerHangup())
    assert SecureMode(False) in out
    assert out[-1].reason == "caller_hangup"  # type: ignore[union-attr]
    assert out.index(SecureMode(False)) < len(out) - 1
    assert secure_pairs_ok(call.all)


def test_no_input_on_every_try_fails() -> None:
    call = pay_call()
    for _ in range(2):
        call.played()
        call.timeout()
    assert call.path == ["take", "unpaid"]
    assert call.session.variables["pay_error"] == "no_input"
    assert secure_pairs_ok(call.all)


def test_the_wait_between_digits_is_the_inter_digit_timeout_not_the_first_digit_one() -> None:
    call = pay_call(timeout_s=10.0)
    call.played()
    assert call.last == [StartTimer("t1", 10.0)]  # time to find the card
    call.press("4")
    assert call.last == [CancelTimer("t1"), StartTimer("t2", 5.0)]  # the default
    call.press(VISA[1:])
    call.timeout()  # the caller forgot the #: 5 s later the card number is taken
    assert call.media()[-1] == ("sound:pay/expiry",)

    call = pay_call(inter_digit_timeout_s=2.5)
    call.press("41")
    assert call.last[-1] == StartTimer(call.timer or "", 2.5)


def test_a_lone_hash_at_a_pay_step_is_ignored_and_spends_no_try() -> None:
    call = pay_call(retries=0)
    assert call.press("#") == [Trace("take", "ignored digit", "# (nothing typed yet)")]
    call.played()
    call.press("#")
    call.press(VISA + "#")
    call.press("#")  # the habitual # once more, at the expiry prompt
    call.press("0427")
    call.press("#")  # and after the expiry, which ended on its 4th digit
    call.press("123")
    assert isinstance(call.request, PaymentRequest)
    assert not [t for t in call.traces() if "no_input" in t]


PAY_YAML = """\
start: take
nodes:
  take:
    type: pay
    amount: "10"
    currency: GBP
    inter_digit_timeout_s: 4
    prompts: {card_number: sound:pay/card, expiry: sound:pay/expiry, cvv: sound:pay/cvv}
    next: bye
    failed: bye
    aborted: bye
  bye:
    type: hangup
"""


def test_the_loader_reads_the_pay_inter_digit_timeout(tmp_path: Path) -> None:
    path = tmp_path / "pay.yaml"
    path.write_text(PAY_YAML)
    node = load_flow(path).nodes["take"]
    assert isinstance(node, model.Pay) and node.inter_digit_timeout_s == 4.0
    path.write_text(PAY_YAML.replace("    inter_digit_timeout_s: 4\n", ""))
    default = load_flow(path).nodes["take"]
    assert isinstance(default, model.Pay) and default.inter_digit_timeout_s == 5.0
    path.write_text(PAY_YAML.replace("inter_digit_timeout_s: 4", "inter_digit_timeout_s: 0"))
    with pytest.raises(FlowErrors, match="inter_digit_timeout_s"):
        load_flow(path)


def test_second_visit_of_the_pay_node_gets_a_new_idempotency_key() -> None:
    f = flow("take", pay_node(failed="take"), *ends("paid", "menu"))
    call = Call(f, {"amount_due": "10"})
    call.start()
    keys = []
    for _ in range(2):
        call.press(VISA + "#")
        call.press("0427")
        call.press("123")
        keys.append(call.request.idempotency_key)
        call.answer(approved=False)
    assert keys == ["s1:take:1", "s1:take:2"]


def test_invalid_amount_fails_before_any_card_prompt() -> None:
    call = Call(flow("take", pay_node(), *ends("paid", "unpaid", "menu")), {"amount_due": -3})
    call.start()
    assert call.path == ["take", "unpaid"]
    assert call.session.variables["pay_error"] == "invalid_amount"
    assert not call.of(SecureMode)


def test_tokenize_needs_no_amount() -> None:
    call = pay_call(action="tokenize", amount=None)
    call.press(VISA + "#")
    call.press("0427")
    call.press("123")
    assert (call.request.action, call.request.amount) == ("tokenize", "")


def test_digits_typed_ahead_before_pay_are_never_card_data() -> None:
    f = flow("hi", build(model.Play, "hi", prompt=prompt("sound:hi"), next="take",
                         barge_in=True), pay_node(), *ends("paid", "unpaid", "menu"))
    call = Call(f, {"amount_due": 5})
    call.start()
    call.press("4")
    assert call.media()[-1] == ("sound:pay/card",)  # the card prompt asks from scratch


def test_pci_no_card_number_or_cvv_outside_the_payment_request() -> None:
    call = pay_call(retries=2)
    call.press("4242424242424241#")  # fails Luhn: must not leak either
    call.press(VISA + "#")
    call.press("0427")
    call.press("73#")  # too short, then the real one
    call.press("739")
    request = call.request
    assert isinstance(request, PaymentRequest) and request.card.cvv == "739"
    call.answer(approved=True, token=sim_token("s1:take:1"))
    texts = [repr(c) for c in call.all] + [str(c) for c in call.all]
    texts += [repr(call.session.variables), repr(call.session), repr(call.finished)]
    joined = "\n".join(texts)
    for secret in (VISA, "4242424242424241", "739", "424242424242"):
        assert secret not in joined
    assert repr(request.card) == "CardDetails(visa ************1111)"


# ----------------------------------------------------------------------------- gateway


def card(number: str) -> CardDetails:
    return CardDetails(number, "0428", "123")


@pytest.mark.parametrize(("number", "approved", "error"), [
    (VISA, True, ""), ("5555555555554444", True, ""), (AMEX, True, ""),
    ("6011111111111117", True, ""), (DECLINED, False, "declined"),
    (NO_FUNDS, False, "insufficient_funds"), (BAD_LUHN, False, "invalid_number")])
def test_sim_authorize_test_cards(number: str, approved: bool, error: str) -> None:
    result = sim_authorize(card(number), "10.00", "charge", "k1")
    assert (result.approved, result.error) == (approved, error)
    assert result.token == (sim_token("k1") if approved else "")


def test_sim_token_comes_from_the_key_never_the_card() -> None:
    a = sim_authorize(card(VISA), "1.00", "charge", "key-a")
    b = sim_authorize(card("5555555555554444"), "1.00", "charge", "key-a")
    assert a.token == b.token and a.token.startswith("tok_sim_") and len(a.token) == 24
    assert sim_authorize(card(VISA), "0", "charge", "k").error == "invalid_amount"
    assert sim_authorize(card(VISA), "", "tokenize", "k").approved


async def test_sim_gateway_charges_once_per_idempotency_key() -> None:
    gateway = SimGateway()
    first = await gateway.charge(card(VISA), "42.50", "GBP", "x", "s1:take:1")
    again = await gateway.charge(card(VISA), "42.50", "GBP", "x", "s1:take:1")
    other = await gateway.charge(card(DECLINED), "42.50", "GBP", "x", "s1:take:2")
    token = await gateway.tokenize(card(VISA), "s1:save:1")
    assert first == again and first.approved and not other.approved and token.approved
    assert (gateway.requests, gateway.charges, gateway.tokens) == (4, 1, 1)
    assert gateway.charged == [("s1:take:1", "42.50", "GBP", "1111")]


def test_an_internal_error_mid_payment_ends_the_call_with_secure_mode_off() -> None:
    call = pay_call()
    call.press(VISA + "#")
    call.press("0427")
    call.press("123")
    # A driver bug: data that is not a mapping. The session must not raise, nor leak.
    out = call.send(ServiceDone(call.request.request_id, True, None))  # type: ignore[arg-type]
    assert out[-1] == Finished("error", "take")
    assert HangupCall() in out
    assert call.traces("error") == ["take error internal error (AttributeError)"]
    assert secure_pairs_ok(call.all)
    assert VISA not in repr(call.all)
