"""Path tests of the shipped example flows (`ivr/examples/`), one group per use case.

Each flow is loaded and checked (`ivr.validate.load_and_check`) as `paceline run` would, then
walked (`ivr.walk.walk_flow`, virtual time, fake services) with a caller's key presses. The
tests assert the nodes the call went through, how it ended, what it did on the way (texts,
callbacks, DNC entries, transfers with their data) and the variables it left; for every flow,
the happy path, the no-input and invalid routes and the retry limits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ivr.model import Flow, Prompt
from ivr.ports import ContactRecord
from ivr.protocol import PaymentRequest, Play
from ivr.validate import load_and_check
from ivr.walk import WalkResult, WalkServices, walk_flow

EXAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "examples"
FLOW_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))

US_ANI = "+13055550123"
UK_ANI = "+447700900123"

#: The path of `common/goodbye.yaml` as a subflow, then the hangup every example ends with.
GOODBYE = ["bye", "thanks", "back", "done"]


@functools.cache
def example(name: str) -> Flow:
    return load_and_check(EXAMPLES / name)


def walk(name: str, dtmf: Sequence[str] = (), *, ani: str = US_ANI,
         services: WalkServices | None = None, **kwargs: Any) -> WalkResult:
    return walk_flow(example(name), ani=ani, dtmf=list(dtmf), services=services, **kwargs)


def media(result: WalkResult) -> list[str]:
    """Every media URI played, in order."""
    return [m for c in result.commands if isinstance(c, Play) for m in c.media]


def printed(result: WalkResult) -> str:
    return "\n".join(result.lines)


def payments(result: WalkResult) -> list[PaymentRequest]:
    return [c for c in result.commands if isinstance(c, PaymentRequest)]


# ----------------------------------------------------------------------------- every example


@pytest.mark.parametrize("name", FLOW_FILES)
def test_every_example_passes_validate(name: str) -> None:
    flow = load_and_check(EXAMPLES / name)
    assert flow.start in flow.nodes


def test_the_goodbye_subflow_passes_validate_as_a_subflow() -> None:
    flow = load_and_check(EXAMPLES / "common" / "goodbye.yaml", as_subflow=True)
    assert [type(n).__name__ for n in flow.nodes.values()] == ["Play", "Return"]


def test_there_is_one_example_per_use_case() -> None:
    assert FLOW_FILES == ["address_update.yaml", "agentless_optout.yaml",
                          "callback_offer.yaml", "identify_verify.yaml", "payment.yaml",
                          "upgrade_offer.yaml"]


def _prompts(flow: Flow) -> list[tuple[str, Prompt]]:
    out: list[tuple[str, Prompt]] = []
    for node in flow.nodes.values():
        for name in ("prompt", "no_input_prompt", "invalid_prompt"):
            p = getattr(node, name, None)
            if isinstance(p, Prompt):
                out.append((f"{node.name}.{name}", p))
        for step, p in getattr(node, "prompts", {}).items():
            out.append((f"{node.name}.prompts.{step}", p))
    return out


@pytest.mark.parametrize("name", [*FLOW_FILES, "common/goodbye.yaml"])
def test_localized_examples_have_every_prompt_in_every_language(name: str) -> None:
    flow = load_and_check(EXAMPLES / name, as_subflow=name.startswith("common/"))
    missing = [(where, lang) for where, p in _prompts(flow) for lang in flow.languages
               if lang not in p.by_language]
    assert missing == []


def test_sounds_md_lists_exactly_the_sounds_the_examples_play() -> None:
    used: set[str] = set()
    for path in EXAMPLES.rglob("*.yaml"):
        used.update(re.findall(r"sound:(paceline/[\w/-]+)", path.read_text(encoding="utf-8")))
    listed = set(re.findall(r"^\| `(paceline/[\w/-]+)`", (EXAMPLES / "SOUNDS.md").read_text(
        encoding="utf-8"), flags=re.MULTILINE))
    assert used - listed == set(), "sounds played but not listed in SOUNDS.md"
    assert listed - used == set(), "sounds listed in SOUNDS.md that no flow plays"


# ----------------------------------------------------------------------------- 1 identify_verify

IV = "identify_verify.yaml"
ANA = ContactRecord(contact_id=42, campaign="support", name="Ana Diaz",
                    fields={"tier": "gold"}, secrets={"pin": "4321", "dob": "04071980"})
ACCOUNT_PHONE = "+13055550199"


def crm(answers: Mapping[str, Mapping[str, Any]]) -> Any:
    """A fake CRM answering by URL fragment; unknown URLs fail (the node's fallback)."""

    def lookup(method: str, url: str, params: Mapping[str, str]) -> Mapping[str, Any] | None:
        for fragment, answer in answers.items():
            if fragment in url:
                return answer
        return None

    return lookup


def known_caller(pin_set: bool | None = True) -> WalkServices:
    answers = {} if pin_set is None else {"/security": {"pin_set": pin_set}}
    return WalkServices(contacts={US_ANI: ANA}, lookup=crm(answers))


def account_caller(phone: str = ACCOUNT_PHONE) -> WalkServices:
    return WalkServices(contacts={ACCOUNT_PHONE: ANA}, lookup=crm({
        "/accounts/12345678": {"account": {"phone": phone}},
        "/security": {"pin_set": True}}))


def test_identify_verify_known_caller_with_right_pin_reaches_support_verified() -> None:
    r = walk(IV, ["", "4321"], services=known_caller())
    assert r.path == ["welcome", "who", "security", "pin_or_dob", "verify_pin", "agent"]
    assert r.finished is not None and r.finished.reason == "transferred"
    [t] = r.transfers
    assert (t.kind, t.target) == ("group", "support")
    assert t.data == {"verified": "yes", "contact_id": "42"}
    assert r.variables["verified"] is True
    assert r.variables["contact_name"] == "Ana Diaz"
    assert "4321" not in printed(r)
    assert "4321" not in repr(r.variables)


def test_identify_verify_caller_without_pin_is_asked_the_date_of_birth() -> None:
    r = walk(IV, ["", "04071980"], services=known_caller(pin_set=False))
    assert r.path == ["welcome", "who", "security", "pin_or_dob", "verify_dob", "agent"]
    assert r.transfers[0].data["verified"] == "yes"
    assert "04071980" not in printed(r)


def test_identify_verify_crm_down_falls_back_to_the_date_of_birth() -> None:
    r = walk(IV, ["", "04071980"], services=known_caller(pin_set=None))
    assert r.path == ["welcome", "who", "security", "verify_dob", "agent"]
    assert r.variables["verified"] is True


def test_identify_verify_two_wrong_pins_then_the_right_one_still_verifies() -> None:
    r = walk(IV, ["", "1111", "2222", "4321"], services=known_caller())
    assert r.path[-2:] == ["verify_pin", "agent"]
    assert "wrong pin (try 2 of 3)" in printed(r)
    assert r.transfers[0].data["verified"] == "yes"


def test_identify_verify_three_wrong_pins_reach_support_unverified() -> None:
    r = walk(IV, ["", "1111", "2222", "3333", "4321"], services=known_caller())
    assert r.path == ["welcome", "who", "security", "pin_or_dob", "verify_pin",
                      "agent_unverified"]
    assert "wrong pin, 3 tries spent -> agent_unverified" in printed(r)
    assert r.transfers[0].data == {"verified": "no", "contact_id": "42"}
    assert r.variables["verified"] is False


def test_identify_verify_silence_at_the_pin_reaches_support_unverified() -> None:
    r = walk(IV, [""], services=known_caller())
    assert r.path[-2:] == ["verify_pin", "agent_unverified"]
    assert "no input, 3 tries spent -> agent_unverified" in printed(r)


def test_identify_verify_unknown_number_identifies_by_account_number() -> None:
    r = walk(IV, ["", "12345678#", "4321"], services=account_caller())
    assert r.path == ["welcome", "who", "ask_account", "find_account", "who_by_account",
                      "security", "pin_or_dob", "verify_pin", "agent"]
    assert r.variables["account"] == "12345678"
    assert r.variables["account_phone"] == ACCOUNT_PHONE
    assert r.transfers[0].data == {"verified": "yes", "contact_id": "42"}


def test_identify_verify_account_number_may_end_without_the_hash_key() -> None:
    r = walk(IV, ["", "12345678", "4321"], services=account_caller())
    assert r.variables["account"] == "12345678"
    assert r.path[-1] == "agent"


def test_identify_verify_a_late_hash_after_the_account_number_costs_no_pin_try() -> None:
    # The account number ends on its 8th digit; the caller's "#" comes as the PIN prompt
    # plays. It is ignored: the three PIN tries are all still there.
    r = walk(IV, ["", "12345678", "#", "1111", "2222", "4321"], services=account_caller())
    assert r.path[-2:] == ["verify_pin", "agent"]
    assert "verify_pin  ignored digit # (right after a full answer)" in r.lines
    assert "wrong pin (try 2 of 3)" in printed(r)
    assert r.variables["verified"] is True


def test_identify_verify_a_pin_with_an_extra_digit_is_wrong() -> None:
    r = walk(IV, ["", "43210", "43219#", "4321#"], services=known_caller())
    assert r.path[-2:] == ["verify_pin", "agent"]
    assert "wrong pin (try 2 of 3)" in printed(r)


def test_identify_verify_short_account_numbers_are_retried_up_to_the_limit() -> None:
    r = walk(IV, ["", "123#", "99#", "12345678#", "4321"], services=account_caller())
    assert "fewer than 8 (try 2 of 3)" in printed(r)
    assert r.path[-1] == "agent"
    r = walk(IV, ["", "123#", "99#", "1#"], services=account_caller())
    assert r.path == ["welcome", "who", "ask_account", "agent_unverified"]
    assert "3 tries spent -> agent_unverified" in printed(r)
    assert r.transfers[0].data == {"verified": "no", "contact_id": ""}


def test_identify_verify_account_pattern_refuses_letters_keys() -> None:
    r = walk(IV, ["", "1234567A#", "1234567B#", "1234567C#"], services=account_caller())
    assert "refused by the pattern, 3 tries spent -> agent_unverified" in printed(r)


def test_identify_verify_silence_at_the_account_number_reaches_support_unverified() -> None:
    r = walk(IV, [""], services=account_caller())
    assert r.path == ["welcome", "who", "ask_account", "agent_unverified"]
    assert "no input, 3 tries spent -> agent_unverified" in printed(r)


def test_identify_verify_unknown_account_reaches_support_unverified() -> None:
    r = walk(IV, ["", "87654321#"], services=account_caller())
    assert r.path == ["welcome", "who", "ask_account", "find_account", "account_unknown",
                      "agent_unverified"]


def test_identify_verify_account_whose_phone_is_no_contact_reaches_support_unverified() -> None:
    r = walk(IV, ["", "12345678#"], services=account_caller(phone="+13055550000"))
    assert r.path[-2:] == ["who_by_account", "agent_unverified"]


def test_identify_verify_failed_transfer_says_goodbye_and_hangs_up() -> None:
    services = known_caller()
    services.transfer_ok = False
    r = walk(IV, ["", "4321"], services=services)
    assert r.path[-6:] == ["agent", "agents_unavailable", *GOODBYE]
    assert r.finished is not None and r.finished.reason == "hangup"


def test_identify_verify_speaks_spanish_to_a_spanish_caller() -> None:
    services = known_caller()
    services.transfer_ok = False
    r = walk(IV, ["", "4321"], services=services, language="es")
    sounds = [m for m in media(r) if m.startswith("sound:")]
    assert sounds and all(m.startswith("sound:paceline/es/") for m in sounds)
    assert "sound:paceline/es/thanks-goodbye" in sounds


def test_identify_verify_nine_at_the_welcome_switches_to_spanish() -> None:
    r = walk(IV, ["9", "4321"], services=known_caller())
    assert r.path == ["welcome", "spanish", "who", "security", "pin_or_dob", "verify_pin",
                      "agent"]
    assert r.variables["language"] == "es"
    assert media(r) == ["sound:paceline/welcome-support", "sound:paceline/para-espanol",
                        "sound:paceline/es/enter-pin", "sound:paceline/es/verified-connecting"]


def test_identify_verify_other_keys_at_the_welcome_carry_on_in_english() -> None:
    r = walk(IV, ["5", "4321"], services=known_caller())
    assert r.path[:2] == ["welcome", "who"]
    assert r.variables["language"] == "en"
    assert r.path[-1] == "agent"


# ----------------------------------------------------------------------------- 2 payment

PAY = "payment.yaml"
FROM_AGENT = {"amount_due": "42.50", "invoice": "INV-1001"}
GOOD_CARD = ["4111111111111111#", "1230", "123"]


def test_payment_from_an_agent_transfer_charges_the_amount_it_was_given() -> None:
    r = walk(PAY, ["1", *GOOD_CARD], ani=UK_ANI, variables=FROM_AGENT)
    assert r.path == ["amount_known", "prepare", "confirm", "count_card", "take_payment",
                      "paid", *GOODBYE]
    assert r.finished is not None and r.finished.reason == "hangup"
    [request] = payments(r)
    assert (request.amount, request.currency, request.action) == ("42.50", "GBP", "charge")
    assert request.description == "Invoice INV-1001"
    assert media(r)[1:4] == ["number:42", "sound:paceline/pounds-and", "number:50"]
    v = r.variables
    assert (v["pay_result"], v["pay_last4"], v["pay_brand"]) == ("approved", "1111", "visa")
    assert v["pay_token"].startswith("tok_sim_")
    assert "digits:1111" in media(r)


def test_payment_never_shows_the_card_number_or_cvv() -> None:
    r = walk(PAY, ["1", "4111111111111111#", "1230", "737"], ani=UK_ANI, variables=FROM_AGENT)
    text = printed(r) + repr(r.variables)
    assert "4111111111111111" not in text
    assert "737" not in text
    assert "secure mode on" in text and "secure mode off" in text


def test_payment_without_an_amount_asks_the_crm_for_the_balance() -> None:
    services = WalkServices(lookup={"balance": {"amount": 42.5, "invoice": "INV-7"}})
    r = walk(PAY, ["1", *GOOD_CARD], ani=UK_ANI, services=services)
    assert r.path[:6] == ["amount_known", "welcome", "balance", "anything_due", "prepare",
                          "confirm"]
    [request] = payments(r)
    assert (request.amount, request.description) == ("42.50", "Invoice INV-7")
    assert r.variables["pay_result"] == "approved"


def test_payment_with_nothing_due_says_so_and_takes_no_card() -> None:
    r = walk(PAY, ["1"], ani=UK_ANI, services=WalkServices(lookup={"balance": {"amount": 0}}))
    assert r.path == ["amount_known", "welcome", "balance", "anything_due", "nothing_due",
                      *GOODBYE]
    assert payments(r) == []


def test_payment_crm_down_goes_to_an_adviser() -> None:
    r = walk(PAY, [], ani=UK_ANI)
    assert r.path == ["amount_known", "welcome", "balance", "adviser"]
    [t] = r.transfers
    assert (t.kind, t.target, t.data["reason"]) == ("group", "billing", "payment")


def test_payment_declined_card_then_another_card_is_approved() -> None:
    r = walk(PAY, ["1", "4000000000000002#", "1230", "123",
                   "1", "5555555555554444#", "1230", "123"], ani=UK_ANI, variables=FROM_AGENT)
    assert r.path == ["amount_known", "prepare", "confirm", "count_card", "take_payment",
                      "declined", "try_again", "count_card", "take_payment", "paid", *GOODBYE]
    assert r.variables["cards_tried"] == 2
    assert (r.variables["pay_result"], r.variables["pay_last4"]) == ("approved", "4444")
    assert len(payments(r)) == 2


def test_payment_three_declined_cards_go_to_an_adviser() -> None:
    declined = ["4000000000000002#", "1230", "123"]
    r = walk(PAY, ["1", *declined, "1", *declined, "1", *declined], ani=UK_ANI,
             variables=FROM_AGENT)
    assert r.path[-3:] == ["take_payment", "declined", "adviser"]
    assert r.path.count("take_payment") == 3
    assert r.variables["pay_result"] == "declined"
    assert r.transfers[0].data == {"reason": "payment", "amount_due": "42.50",
                                   "invoice": "INV-1001"}


def test_payment_star_cancels_and_returns_to_the_amount() -> None:
    r = walk(PAY, ["1", "41111*", "2"], ani=UK_ANI, variables=FROM_AGENT)
    assert r.path == ["amount_known", "prepare", "confirm", "count_card", "take_payment",
                      "cancelled", "confirm", "adviser"]
    assert r.variables["pay_result"] == "aborted"
    assert payments(r) == []


def test_payment_invalid_card_numbers_use_up_the_step_retries() -> None:
    bad = "4111111111111112#"  # fails Luhn
    r = walk(PAY, ["1", bad, bad, bad], ani=UK_ANI, variables=FROM_AGENT)
    assert "invalid_card_number, 3 tries spent" in printed(r)
    assert r.variables["pay_error"] == "invalid_card_number"
    assert media(r).count("sound:paceline/pay-invalid-card-number") == 2
    # then the try-again menu: silence twice (retries: 1) ends the call
    assert r.path[-6:] == ["declined", "try_again", *GOODBYE]


def test_payment_expired_card_is_refused_before_the_gateway() -> None:
    r = walk(PAY, ["1", "4111111111111111#", "1225", "1225", "1225"], ani=UK_ANI,
             variables=FROM_AGENT)
    assert r.variables["pay_error"] == "expired"
    assert "sound:paceline/pay-expired" in media(r)
    assert payments(r) == []


def test_payment_silence_at_the_amount_says_goodbye() -> None:
    r = walk(PAY, [], ani=UK_ANI, variables=FROM_AGENT)
    assert r.path == ["amount_known", "prepare", "confirm", *GOODBYE]
    assert "no input, 3 tries spent -> bye" in printed(r)


def test_payment_wrong_keys_at_the_amount_go_to_an_adviser() -> None:
    r = walk(PAY, ["7", "8", "9"], ani=UK_ANI, variables=FROM_AGENT)
    assert r.path == ["amount_known", "prepare", "confirm", "adviser"]
    assert "invalid digit 9, 3 tries spent -> adviser" in printed(r)


def test_payment_repeating_the_amount_costs_no_try() -> None:
    r = walk(PAY, ["7", "8", "*", "1", *GOOD_CARD], ani=UK_ANI, variables=FROM_AGENT)
    assert r.variables["pay_result"] == "approved"
    assert media(r).count("sound:paceline/amount-due-is") == 4


# ----------------------------------------------------------------------------- 3 upgrade_offer

UP = "upgrade_offer.yaml"
SAM = ContactRecord(contact_id=7, campaign="retention", name="Sam Jones")
OFFER = {"upgrade": {"eligible": True, "plan": "Unlimited 5G", "data_gb": 100,
                     "monthly_price": 25}}


def offer_services(answer: Mapping[str, Any] | None = OFFER, *, sms_ok: bool = True,
                   calls: list[tuple[str, str]] | None = None) -> WalkServices:
    def lookup(method: str, url: str, params: Mapping[str, str]) -> Mapping[str, Any] | None:
        if calls is not None:
            calls.append((method, url))
        return {} if url.endswith("/decline") else answer

    return WalkServices(contacts={UK_ANI: SAM}, lookup=lookup, sms_ok=sms_ok)


def test_upgrade_offer_accepted_texts_a_confirmation_and_goes_to_sales() -> None:
    r = walk(UP, ["1"], ani=UK_ANI, services=offer_services())
    assert r.path == ["welcome", "who", "eligibility", "check", "offer", "confirm_sms",
                      "to_sales"]
    assert media(r)[2:5] == ["number:100", "sound:paceline/offer-gigabytes-for", "number:25"]
    [sms] = r.sms
    assert sms.to == UK_ANI
    assert "Unlimited 5G: 100GB for £25 a month" in sms.text
    [t] = r.transfers
    assert (t.target, t.data) == ("sales", {"contact_id": "7", "offer": "Unlimited 5G",
                                            "offer_accepted": "yes"})


def test_upgrade_offer_accepted_still_reaches_sales_when_the_text_fails() -> None:
    r = walk(UP, ["1"], ani=UK_ANI, services=offer_services(sms_ok=False))
    assert r.path[-2:] == ["confirm_sms", "to_sales"]
    assert r.sms == []


def test_upgrade_offer_declined_is_recorded_in_the_crm_then_the_main_menu() -> None:
    calls: list[tuple[str, str]] = []
    r = walk(UP, ["2", "1"], ani=UK_ANI, services=offer_services(calls=calls))
    assert r.path == ["welcome", "who", "eligibility", "check", "offer", "record_decline",
                      "declined", "main_menu", "billing"]
    assert calls[-1] == ("POST",
                         "https://crm.example.com/api/customers/7/offers/upgrade/decline")


def test_upgrade_offer_repeat_key_replays_the_offer_without_spending_a_try() -> None:
    r = walk(UP, ["9", "9", "3", "1"], ani=UK_ANI, services=offer_services())
    assert r.path[-2:] == ["confirm_sms", "to_sales"]
    assert "repeat key 3" in printed(r)
    assert media(r).count("sound:paceline/offer-intro") == 4


def test_upgrade_offer_wrong_keys_fall_back_to_the_main_menu() -> None:
    r = walk(UP, ["9", "8", "7", "0"], ani=UK_ANI, services=offer_services())
    assert r.path[-3:] == ["offer", "main_menu", "support"]
    assert "invalid digit 7, 3 tries spent -> main_menu" in printed(r)
    assert "operator key 0 -> support" in printed(r)


def test_upgrade_offer_silence_falls_back_to_the_main_menu_then_goodbye() -> None:
    r = walk(UP, [], ani=UK_ANI, services=offer_services())
    assert r.path == ["welcome", "who", "eligibility", "check", "offer", "main_menu", *GOODBYE]
    assert r.sms == [] and r.transfers == []


def test_upgrade_offer_not_eligible_goes_straight_to_the_main_menu() -> None:
    r = walk(UP, ["2"], ani=UK_ANI, services=offer_services({"upgrade": {"eligible": False}}))
    assert r.path == ["welcome", "who", "eligibility", "check", "main_menu", "support"]
    assert "sound:paceline/offer-intro" not in media(r)


def test_upgrade_offer_crm_down_or_unknown_caller_gets_the_main_menu() -> None:
    r = walk(UP, ["1"], ani=UK_ANI, services=offer_services(None))
    assert r.path == ["welcome", "who", "eligibility", "main_menu", "billing"]
    r = walk(UP, ["1"], ani="+447700900999", services=offer_services())
    assert r.path == ["welcome", "who", "main_menu", "billing"]


def test_upgrade_offer_main_menu_wrong_keys_go_to_support() -> None:
    r = walk(UP, ["5", "6", "7"], ani="+447700900999")
    assert r.path == ["welcome", "who", "main_menu", "support"]


def test_upgrade_offer_sales_unavailable_says_goodbye() -> None:
    services = offer_services()
    services.transfer_ok = False
    r = walk(UP, ["1"], ani=UK_ANI, services=services)
    assert r.path[-6:] == ["to_sales", "sales_unavailable", *GOODBYE]


# ----------------------------------------------------------------------------- 4 address_update

ADDR = "address_update.yaml"
KIM = ContactRecord(contact_id=42, campaign="customers", name="Kim Lee")


def addr_services(*, sms_ok: bool = True) -> WalkServices:
    return WalkServices(contacts={UK_ANI: KIM}, sms_ok=sms_ok)


def test_address_update_texts_a_link_with_the_contact_id() -> None:
    r = walk(ADDR, ["1"], ani=UK_ANI, services=addr_services())
    assert r.path == ["welcome", "who", "offer_link", "send_link", "link_sent", *GOODBYE]
    [sms] = r.sms
    assert sms.to == UK_ANI
    assert "https://acme.example.com/address/42 " in sms.text
    assert r.finished is not None and r.finished.reason == "hangup"


def test_address_update_text_failure_goes_to_an_adviser() -> None:
    r = walk(ADDR, ["1"], ani=UK_ANI, services=addr_services(sms_ok=False))
    assert r.path == ["welcome", "who", "offer_link", "send_link", "sms_failed", "adviser"]
    assert r.transfers[0].data == {"contact_id": "42", "reason": "address update"}


def test_address_update_caller_may_ask_for_an_adviser() -> None:
    r = walk(ADDR, ["2"], ani=UK_ANI, services=addr_services())
    assert r.path == ["welcome", "who", "offer_link", "adviser"]
    assert r.sms == []


def test_address_update_unknown_caller_goes_to_an_adviser() -> None:
    r = walk(ADDR, ["1"], ani=UK_ANI)
    assert r.path == ["welcome", "who", "adviser"]
    assert r.transfers[0].data["contact_id"] == ""


def test_address_update_silence_and_wrong_keys_reach_an_adviser_after_the_retries() -> None:
    r = walk(ADDR, [], ani=UK_ANI, services=addr_services())
    assert r.path[-2:] == ["offer_link", "adviser"]
    assert "no input, 3 tries spent -> adviser" in printed(r)
    assert media(r).count("sound:paceline/no-input") == 2
    r = walk(ADDR, ["5", "", "6"], ani=UK_ANI, services=addr_services())
    assert r.path[-2:] == ["offer_link", "adviser"]
    assert "invalid digit 6, 3 tries spent -> adviser" in printed(r)


def test_address_update_repeat_key_costs_no_try() -> None:
    r = walk(ADDR, ["5", "6", "*", "1"], ani=UK_ANI, services=addr_services())
    assert r.path == ["welcome", "who", "offer_link", "send_link", "link_sent", *GOODBYE]
    assert "repeat key *" in printed(r)
    assert len(r.sms) == 1


# ----------------------------------------------------------------------------- 5 callback_offer

CB = "callback_offer.yaml"


def test_callback_offer_long_wait_accepted_creates_a_callback() -> None:
    r = walk(CB, ["1"], services=WalkServices(ewt_s=300))
    assert r.path == ["number_known", "welcome", "offer", "number_to_say", "confirmed",
                      *GOODBYE]
    [cb] = r.callbacks
    assert (cb.number, cb.campaign) == (US_ANI, "callbacks")
    assert cb.data["queue"] == "support"
    assert r.variables["ewt_s"] == 300
    assert "digits:3055550123" in media(r)  # the number as the caller knows it
    assert r.transfers == []
    assert r.finished is not None and r.finished.reason == "hangup"


def test_callback_offer_short_wait_transfers_without_an_offer() -> None:
    r = walk(CB, ["1"], services=WalkServices(ewt_s=60))
    assert r.path == ["number_known", "welcome", "offer", "to_agents"]
    assert r.callbacks == []
    [t] = r.transfers
    assert (t.kind, t.target, t.data) == ("group", "support", {"estimated_wait_s": "60"})
    assert "sound:paceline/callback-offer" not in media(r)


def test_callback_offer_threshold_is_not_an_offer() -> None:
    r = walk(CB, ["1"], services=WalkServices(ewt_s=120))
    assert r.path[-1] == "to_agents"
    assert r.callbacks == []


def test_callback_offer_declined_holds_for_an_agent() -> None:
    r = walk(CB, ["2"], services=WalkServices(ewt_s=300))
    assert r.path == ["number_known", "welcome", "offer", "to_agents"]
    assert r.callbacks == []
    assert r.transfers[0].data == {"estimated_wait_s": "300"}


def test_callback_offer_silence_and_wrong_keys_hold_after_the_retries() -> None:
    r = walk(CB, [], services=WalkServices(ewt_s=300))
    assert r.path[-2:] == ["offer", "to_agents"]
    assert "no input, 3 tries spent -> to_agents" in printed(r)
    r = walk(CB, ["7", "8", "9", "1"], services=WalkServices(ewt_s=300))
    assert r.path[-2:] == ["offer", "to_agents"]
    assert "invalid digit 9, 3 tries spent -> to_agents" in printed(r)
    assert r.callbacks == []


def test_callback_offer_wrong_key_then_accept_is_a_callback() -> None:
    r = walk(CB, ["7", "1"], services=WalkServices(ewt_s=300))
    assert len(r.callbacks) == 1


def test_callback_offer_withheld_number_is_transferred_at_once() -> None:
    r = walk(CB, ["1"], ani="", services=WalkServices(ewt_s=300))
    assert r.path == ["number_known", "to_agents"]
    assert r.callbacks == []
    assert r.transfers[0].data == {"estimated_wait_s": ""}


def test_callback_offer_speaks_spanish() -> None:
    r = walk(CB, ["1"], services=WalkServices(ewt_s=300), language="es")
    assert media(r)[:2] == ["sound:paceline/es/welcome-support",
                            "sound:paceline/es/callback-offer"]
    assert "sound:paceline/es/thanks-goodbye" in media(r)


# ----------------------------------------------------------------------------- 6 agentless_optout

OPT = "agentless_optout.yaml"


def test_agentless_nine_during_the_message_opts_out() -> None:
    r = walk(OPT, ["9"])
    assert r.path == ["message", "choice", "which_number", "opt_out", "opted_out", "end"]
    [dnc] = r.dnc
    assert (dnc.number, dnc.campaign) == (US_ANI, None)
    assert "sound:paceline/optout-options" not in media(r)  # barged in: no need to hear it
    assert r.finished is not None and r.finished.reason == "hangup"


def test_agentless_opt_out_uses_the_number_the_dialer_dialed_when_given() -> None:
    r = walk(OPT, ["9"], ani="+13055550100", variables={"called_number": US_ANI})
    assert [d.number for d in r.dnc] == [US_ANI]


def test_agentless_nine_after_the_message_opts_out() -> None:
    r = walk(OPT, ["", "9"])
    assert r.path == ["message", "choice", "which_number", "opt_out", "opted_out", "end"]
    assert media(r)[:2] == ["sound:paceline/reminder-message", "sound:paceline/optout-options"]
    assert len(r.dnc) == 1


def test_agentless_one_reaches_an_agent() -> None:
    r = walk(OPT, ["1"])
    assert r.path == ["message", "choice", "to_agent"]
    [t] = r.transfers
    assert (t.kind, t.target, t.data) == ("group", "collections", {"source": "agentless"})
    assert r.dnc == []


def test_agentless_nothing_pressed_hangs_up_after_one_more_try() -> None:
    r = walk(OPT, [])
    assert r.path == ["message", "choice", "end"]
    assert "no input, 2 tries spent -> end" in printed(r)
    assert media(r).count("sound:paceline/optout-options") == 2
    assert r.dnc == [] and r.transfers == []
    assert r.finished is not None and r.finished.reason == "hangup"


def test_agentless_wrong_keys_hang_up_and_a_retry_still_opts_out() -> None:
    r = walk(OPT, ["5", "5"])
    assert r.path == ["message", "choice", "end"]
    assert "invalid digit 5, 2 tries spent -> end" in printed(r)
    r = walk(OPT, ["5", "9"])
    assert r.path[-3:] == ["opt_out", "opted_out", "end"]
    assert len(r.dnc) == 1


def test_agentless_no_agent_free_apologises_and_hangs_up() -> None:
    r = walk(OPT, ["1"], services=WalkServices(transfer_ok=False))
    assert r.path == ["message", "choice", "to_agent", "agents_unavailable", "end"]


def test_agentless_speaks_spanish() -> None:
    r = walk(OPT, ["9"], variables={"language": "es"})  # PACELINE_LANGUAGE on the call
    assert media(r) == ["sound:paceline/es/reminder-message",
                        "sound:paceline/es/optout-confirmed"]
