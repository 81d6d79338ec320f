"""The six example flows end to end over ARI: `IvrApp` against the in-process emulator.

Each call is a `place_inbound` channel whose caller keys digits with `press` (the app hears
ChannelDtmfReceived); the services are the database-backed ones of `paceline run`
(`ivr.services.build_services` on SQLite), an HTTP CRM on 127.0.0.1, `SimGateway` and the
simulated SMSC. Outcomes are asserted where they land: DNC entries, callback contacts,
`ivr_payments` rows, texts sent, the channel's bridge / variables / hang-up. Every call's
path is also compared with the walker's (`paceline ivr test`) for the same keys and the same
data: one flow, one path, on both drivers. See `tests/ivr_harness.py` for the caller model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from dialer.agents import AgentState
from dialer.db.models import Agent, ContactNote, IvrPayment
from dialer.dnc import check_numbers
from ivr.protocol import Play
from ivr.walk import WalkResult, WalkServices
from tests.ivr_harness import (
    NOW,
    Agents,
    Call,
    CrmData,
    IvrRig,
    add_agents,
    add_contact,
    contact_rows,
    copy_database,
    migrated_template,
    record_of,
    walk,
)

US_ANI = "+13055550123"
UK_ANI = "+447911123456"  # a valid UK mobile (07700 900xxx, the drama range, is not)
GOODBYE = ["bye", "thanks", "back", "done"]
GOOD_CARD = ["4111111111111111#", "1230", "123"]
DECLINED_CARD = ["4000000000000002#", "1230", "123"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("ivr-ari-template"))


@pytest.fixture
def db(template: Path, tmp_path: Path) -> Iterator[Engine]:
    engine = copy_database(template, tmp_path)
    yield engine
    engine.dispose()


def played(call: Call) -> list[str]:
    return [m for c in call.session.commands if isinstance(c, Play) for m in c.media]


async def finish(call: Call, walked: WalkResult) -> dict[str, Any]:
    """Wait for the call to end; its path and ending are the walker's."""
    done = await call.ended()
    assert call.session.path == walked.path
    assert call.entered() == walked.path
    assert walked.finished is not None
    assert (done["reason"], done["node"]) == (walked.finished.reason, walked.finished.node)
    return done


async def hung_up(rig: IvrRig, call: Call) -> None:
    await rig.until(lambda: call.channel_id not in rig.server.live_channel_ids())


async def agent_leg(rig: IvrRig, call: Call) -> str:
    """The agent bridged with the caller (a `group` transfer that succeeded)."""
    (agent,) = rig.server.bridge_members(call.channel_id)
    assert agent.startswith(f"{call.channel_id}.agent")
    return agent


async def attached(rig: IvrRig, call: Call, data: Mapping[str, str]) -> dict[str, str]:
    """The transfer's data as the channel carries it (`PACELINE_<KEY>` variables)."""
    return {k: await rig.variable(call.channel_id, "PACELINE_" + k.upper()) for k in data}


# ----------------------------------------------------------------------------- 1 identify_verify

IV = "identify_verify.yaml"


def ana(db: Engine) -> tuple[int, CrmData, WalkServices]:
    ana_id = add_contact(db, "support", US_ANI, param1="Ana Diaz", param2="4321",
                         param3="04071980", param4="gold")
    crm = CrmData(pin_set={ana_id: True})
    record = record_of(ana_id, "support", "Ana Diaz", fields={"name": "Ana Diaz", "tier": "gold"},
                       secrets={"pin": "4321", "dob": "04071980"})
    return ana_id, crm, WalkServices(contacts={US_ANI: record}, lookup=crm.walker_lookup)


async def test_identify_verify_known_caller_with_the_right_pin_reaches_an_agent_verified(
    db: Engine,
) -> None:
    ana_id, crm, services = ana(db)
    keys = ["", "4321"]
    walked = walk(IV, US_ANI, keys, services)
    async with IvrRig(db, flows=[IV], crm=crm) as rig:
        call = rig.call("identify_verify", US_ANI, keys)
        done = await finish(call, walked)
        assert done == {"reason": "transferred", "node": "agent"}
        assert call.session.path == ["welcome", "who", "security", "pin_or_dob", "verify_pin",
                                     "agent"]
        await agent_leg(rig, call)
        assert await attached(rig, call, walked.transfers[0].data) == {
            "verified": "yes", "contact_id": str(ana_id)}
        assert crm.requests == [("GET", f"/api/customers/{ana_id}/security", {})]
        assert call.session.variables["contact_name"] == "Ana Diaz"
        assert "4321" not in repr(rig.emitted)


async def test_identify_verify_silence_then_wrong_pins_reach_an_agent_unverified(
    db: Engine,
) -> None:
    ana_id, crm, services = ana(db)
    silent, wrong = [""], ["", "1111", "2222", "3333"]
    walked_silent = walk(IV, US_ANI, silent, services)
    walked_wrong = walk(IV, US_ANI, wrong, services)
    async with IvrRig(db, flows=[IV], crm=crm) as rig:
        quiet = rig.call("identify_verify", US_ANI, silent)
        await finish(quiet, walked_silent)
        assert quiet.session.path[-2:] == ["verify_pin", "agent_unverified"]
        mistaken = rig.call("identify_verify", US_ANI, wrong)
        done = await finish(mistaken, walked_wrong)
        assert done == {"reason": "transferred", "node": "agent_unverified"}
        for call in (quiet, mistaken):
            await agent_leg(rig, call)
            assert await attached(rig, call, {"verified": "", "contact_id": ""}) == {
                "verified": "no", "contact_id": str(ana_id)}
        assert played(mistaken).count("sound:paceline/wrong-pin") == 2


async def test_identify_verify_unknown_account_and_no_agent_say_goodbye(db: Engine) -> None:
    crm = CrmData()
    keys = ["", "87654321#"]
    services = WalkServices(lookup=crm.walker_lookup, transfer_ok=False)
    walked = walk(IV, US_ANI, keys, services)
    async with IvrRig(db, flows=[IV], crm=crm, agents=Agents(busy=["support"])) as rig:
        call = rig.call("identify_verify", US_ANI, keys)
        done = await finish(call, walked)
        assert call.session.path == ["welcome", "who", "ask_account", "find_account",
                                     "account_unknown", "agent_unverified",
                                     "agents_unavailable", *GOODBYE]
        assert done == {"reason": "hangup", "node": "done"}
        assert crm.requests == [("GET", "/api/accounts/87654321", {})]
        await hung_up(rig, call)


# ----------------------------------------------------------------------------- 2 payment

PAY = "payment.yaml"


def payment_rows(db: Engine) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(select(IvrPayment).order_by(IvrPayment.id)).all())


async def test_payment_caller_with_a_balance_pays_by_card(db: Engine) -> None:
    crm = CrmData(balances={UK_ANI: ("42.50", "INV-1001")})
    keys = ["1", *GOOD_CARD]
    walked = walk(PAY, UK_ANI, keys, WalkServices(lookup=crm.walker_lookup))
    async with IvrRig(db, flows=[PAY], crm=crm) as rig:
        call = rig.call("payment", UK_ANI, keys)
        done = await finish(call, walked)
        assert done == {"reason": "hangup", "node": "done"}
        assert call.session.path == ["amount_known", "welcome", "balance", "anything_due",
                                     "prepare", "confirm", "count_card", "take_payment", "paid",
                                     *GOODBYE]
        assert crm.requests == [("GET", "/api/billing/balance", {"phone": UK_ANI})]
        [row] = payment_rows(db)
        assert (row.flow, row.node, row.ani, row.action, row.amount, row.currency) == (
            "payment", "take_payment", UK_ANI, "charge", "42.50", "GBP")
        assert (row.brand, row.last4, row.approved, row.error) == ("visa", "1111", True, "")
        assert row.token.startswith("tok_sim_") and row.token == call.session.variables[
            "pay_token"]
        assert rig.gateway.charges == 1  # type: ignore[attr-defined]
        assert "digits:1111" in played(call)
        assert [d["on"] for d in call.events("secure")] == [True, False]
        await hung_up(rig, call)


async def test_payment_from_an_agent_declined_card_then_silence_says_goodbye(db: Engine) -> None:
    keys = ["1", *DECLINED_CARD]  # then nothing at "try again"
    inputs = {"amount_due": "19.99", "invoice": "INV-7"}
    walked = walk(PAY, UK_ANI, keys, WalkServices(), variables=inputs)
    async with IvrRig(db, flows=[PAY]) as rig:
        call = rig.call("payment", UK_ANI, keys, variables={
            "PACELINE_AMOUNT_DUE": "19.99", "PACELINE_INVOICE": "INV-7"})
        done = await finish(call, walked)
        assert done == {"reason": "hangup", "node": "done"}
        assert call.session.path == ["amount_known", "prepare", "confirm", "count_card",
                                     "take_payment", "declined", "try_again", *GOODBYE]
        [row] = payment_rows(db)
        assert (row.amount, row.last4, row.approved, row.token, row.error) == (
            "19.99", "0002", False, "", "declined")
        assert call.session.variables["pay_result"] == "declined"
        await hung_up(rig, call)


async def test_payment_wrong_keys_at_the_amount_reach_an_adviser_with_the_invoice(
    db: Engine,
) -> None:
    crm = CrmData(balances={UK_ANI: ("42.50", "INV-1001")})
    keys = ["7", "8", "9"]
    walked = walk(PAY, UK_ANI, keys, WalkServices(lookup=crm.walker_lookup))
    async with IvrRig(db, flows=[PAY], crm=crm) as rig:
        call = rig.call("payment", UK_ANI, keys)
        done = await finish(call, walked)
        assert done == {"reason": "transferred", "node": "adviser"}
        await agent_leg(rig, call)
        assert await attached(rig, call, walked.transfers[0].data) == {
            "reason": "payment", "amount_due": "42.50", "invoice": "INV-1001"}
        assert payment_rows(db) == []


# ----------------------------------------------------------------------------- 3 upgrade_offer

UP = "upgrade_offer.yaml"
OFFER = {"eligible": True, "plan": "Unlimited 5G", "data_gb": 100, "monthly_price": 25}


def sam(db: Engine) -> tuple[int, CrmData, WalkServices]:
    sam_id = add_contact(db, "retention", UK_ANI, param1="Sam Jones")
    crm = CrmData(offers={sam_id: OFFER})
    record = record_of(sam_id, "retention", "Sam Jones", fields={"name": "Sam Jones"})
    return sam_id, crm, WalkServices(contacts={UK_ANI: record}, lookup=crm.walker_lookup)


async def test_upgrade_offer_accepted_texts_a_confirmation_and_reaches_sales(db: Engine) -> None:
    sam_id, crm, services = sam(db)
    walked = walk(UP, UK_ANI, ["1"], services)
    async with IvrRig(db, flows=[UP], crm=crm) as rig:
        call = rig.call("upgrade_offer", UK_ANI, ["1"])
        done = await finish(call, walked)
        assert done == {"reason": "transferred", "node": "to_sales"}
        [sms] = rig.sms.sent
        assert sms.to == UK_ANI
        assert sms.body == walked.sms[0].text
        assert "Unlimited 5G: 100GB for £25 a month" in sms.body
        await agent_leg(rig, call)
        assert await attached(rig, call, walked.transfers[0].data) == {
            "contact_id": str(sam_id), "offer": "Unlimited 5G", "offer_accepted": "yes"}
        assert [m for m in played(call) if m.startswith("number")] == ["number:100", "number:25"]


async def test_upgrade_offer_silence_falls_back_to_the_main_menu_then_goodbye(
    db: Engine,
) -> None:
    _, crm, services = sam(db)
    walked = walk(UP, UK_ANI, [], services)
    async with IvrRig(db, flows=[UP], crm=crm) as rig:
        call = rig.call("upgrade_offer", UK_ANI, [])
        await finish(call, walked)
        assert call.session.path == ["welcome", "who", "eligibility", "check", "offer",
                                     "main_menu", *GOODBYE]
        assert rig.sms.sent == []
        await hung_up(rig, call)


async def test_upgrade_offer_declined_is_posted_to_the_crm(db: Engine) -> None:
    sam_id, crm, services = sam(db)
    walked = walk(UP, UK_ANI, ["2", "1"], services)
    async with IvrRig(db, flows=[UP], crm=crm) as rig:
        call = rig.call("upgrade_offer", UK_ANI, ["2", "1"])
        await finish(call, walked)
        assert call.session.path[-4:] == ["record_decline", "declined", "main_menu", "billing"]
        assert crm.requests[-1] == (
            "POST", f"/api/customers/{sam_id}/offers/upgrade/decline", {"channel": "ivr"})


# ----------------------------------------------------------------------------- 4 address_update

ADDR = "address_update.yaml"


def kim(db: Engine) -> tuple[int, WalkServices]:
    kim_id = add_contact(db, "customers", UK_ANI, param1="Kim Lee")
    record = record_of(kim_id, "customers", "Kim Lee", fields={"name": "Kim Lee"})
    return kim_id, WalkServices(contacts={UK_ANI: record})


async def test_address_update_texts_the_link_with_the_contact_id(db: Engine) -> None:
    kim_id, services = kim(db)
    walked = walk(ADDR, UK_ANI, ["1"], services)
    async with IvrRig(db, flows=[ADDR]) as rig:
        call = rig.call("address_update", UK_ANI, ["1"])
        done = await finish(call, walked)
        assert done == {"reason": "hangup", "node": "done"}
        [sms] = rig.sms.sent
        assert sms.to == UK_ANI
        assert f"https://acme.example.com/address/{kim_id} " in sms.body
        assert sms.body == walked.sms[0].text
        await hung_up(rig, call)


async def test_address_update_refused_text_and_wrong_keys_reach_an_adviser(db: Engine) -> None:
    kim_id, services = kim(db)
    refused = WalkServices(contacts=services.contacts, sms_ok=False)
    walked_refused = walk(ADDR, UK_ANI, ["1"], refused)
    walked_wrong = walk(ADDR, UK_ANI, ["5", "", "6"], services)
    async with IvrRig(db, flows=[ADDR]) as rig:
        rig.sms.reject_numbers.add(UK_ANI)  # a landline: the SMSC refuses it
        call = rig.call("address_update", UK_ANI, ["1"])
        await finish(call, walked_refused)
        assert call.session.path == ["welcome", "who", "offer_link", "send_link", "sms_failed",
                                     "adviser"]
        wrong = rig.call("address_update", UK_ANI, ["5", "", "6"])
        await finish(wrong, walked_wrong)
        assert wrong.session.path[-2:] == ["offer_link", "adviser"]
        for c in (call, wrong):
            await agent_leg(rig, c)
            assert await attached(rig, c, {"contact_id": "", "reason": ""}) == {
                "contact_id": str(kim_id), "reason": "address update"}
        assert rig.sms.sent == []  # refused: nothing went out


# ----------------------------------------------------------------------------- 5 callback_offer

CB = "callback_offer.yaml"


async def test_callback_offer_long_wait_accepted_books_a_callback_contact(db: Engine) -> None:
    add_agents(db, "support", ["on_call"])  # nobody ready: 180 s default handle time
    add_contact(db, "callbacks", "+13055559999")  # the campaign exists
    walked = walk(CB, US_ANI, ["1"], WalkServices(ewt_s=180.0))
    async with IvrRig(db, flows=[CB]) as rig:
        call = rig.call("callback_offer", US_ANI, ["1"])
        done = await finish(call, walked)
        assert done == {"reason": "hangup", "node": "done"}
        assert call.session.variables["ewt_s"] == 180.0
        booked = [r for r in contact_rows(db) if r.phone1 == US_ANI]
        [row] = booked
        assert (row.state, row.callback_agent, row.due_at.replace(tzinfo=NOW.tzinfo)) == (
            "callback_scheduled", None, NOW)
        with db.connect() as conn:
            note = conn.scalar(select(ContactNote.text).where(ContactNote.contact_id == row.id))
        assert note is not None and "queue=support" in note
        assert "digits:3055550123" in played(call)
        assert rig.server.bridge_members(call.channel_id) == []
        await hung_up(rig, call)


async def test_callback_offer_wrong_keys_hold_for_an_agent_and_short_wait_skips_the_offer(
    db: Engine,
) -> None:
    add_agents(db, "support", ["on_call"])
    add_contact(db, "callbacks", "+13055559999")
    walked = walk(CB, US_ANI, ["7", "8", "9"], WalkServices(ewt_s=180.0))
    async with IvrRig(db, flows=[CB]) as rig:
        call = rig.call("callback_offer", US_ANI, ["7", "8", "9"])
        done = await finish(call, walked)
        assert done == {"reason": "transferred", "node": "to_agents"}
        await agent_leg(rig, call)
        assert await attached(rig, call, walked.transfers[0].data) == walked.transfers[0].data
        with db.begin() as conn:  # the agent is ready now: no wait, no offer
            conn.execute(update(Agent).values(state=AgentState.READY.value))
        walked_short = walk(CB, US_ANI, ["1"], WalkServices(ewt_s=0.0))
        short = rig.call("callback_offer", US_ANI, ["1"])
        await finish(short, walked_short)
        assert short.session.path == ["number_known", "welcome", "offer", "to_agents"]
        assert "sound:paceline/callback-offer" not in played(short)
    assert [r.phone1 for r in contact_rows(db)] == ["+13055559999"]  # no callback booked


# ----------------------------------------------------------------------------- 6 agentless_optout

OPT = "agentless_optout.yaml"
LONG_MESSAGE = {"paceline/reminder-message": 5000.0}  # 10 s at the rig's scale: barged into


def blocked(db: Engine, number: str) -> bool:
    return check_numbers(db, [number], NOW)[0].blocked


async def test_agentless_nine_during_the_message_opts_out(db: Engine) -> None:
    walked = walk(OPT, US_ANI, ["9"], WalkServices())
    async with IvrRig(db, flows=[OPT], sounds=LONG_MESSAGE) as rig:
        call = rig.call("agentless_optout", US_ANI, ["9"])
        done = await finish(call, walked)
        assert done == {"reason": "hangup", "node": "end"}
        assert blocked(db, US_ANI)
        stops = [k for k in rig.server.requests
                 if k[0] == "DELETE" and k[1].startswith("/playbacks/")]
        assert len(stops) == 1  # the app stopped the message on the digit
        assert "sound:paceline/optout-options" not in played(call)
        await hung_up(rig, call)


async def test_agentless_silence_or_wrong_keys_hang_up_without_an_opt_out(db: Engine) -> None:
    walked_silent = walk(OPT, US_ANI, [], WalkServices())
    walked_wrong = walk(OPT, US_ANI, ["5", "5"], WalkServices())
    async with IvrRig(db, flows=[OPT]) as rig:
        silent = rig.call("agentless_optout", US_ANI, [])
        wrong = rig.call("agentless_optout", "+13055550124", ["5", "5"])
        await finish(silent, walked_silent)
        await finish(wrong, walked_wrong)
        assert silent.session.path == wrong.session.path == ["message", "choice", "end"]
        assert played(silent).count("sound:paceline/optout-options") == 2
        for call in (silent, wrong):
            await hung_up(rig, call)
    assert not blocked(db, US_ANI) and not blocked(db, "+13055550124")


async def test_agentless_one_reaches_collections_and_the_called_number_is_opted_out(
    db: Engine,
) -> None:
    walked = walk(OPT, US_ANI, ["1"], WalkServices())
    walked_nine = walk(OPT, "+13055550100", ["", "9"], WalkServices(),
                       variables={"called_number": US_ANI})
    async with IvrRig(db, flows=[OPT]) as rig:
        call = rig.call("agentless_optout", US_ANI, ["1"])
        done = await finish(call, walked)
        assert done == {"reason": "transferred", "node": "to_agent"}
        await agent_leg(rig, call)
        assert await rig.variable(call.channel_id, "PACELINE_SOURCE") == "agentless"
        nine = rig.call("agentless_optout", "+13055550100", ["", "9"],
                        variables={"PACELINE_CALLED_NUMBER": US_ANI})
        await finish(nine, walked_nine)
    assert blocked(db, US_ANI) and not blocked(db, "+13055550100")
