"""`SessionRunner` carries out a session's commands: timers, services, the channel, PCI masking.

Most tests drive it with `ScriptedSession`, a stand-in that follows the interpreter's contract
(start / handle -> commands, ids answered by events) so each behaviour is pinned down alone;
the real interpreter runs end to end in tests/test_ivr_ari.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ivr.interpreter import Session
from ivr.model import Flow, Hangup, Menu, Pos, Prompt
from ivr.ports import ContactRecord, PaymentResult
from ivr.protocol import (
    CallerHangup,
    CancelTimer,
    CardDetails,
    Command,
    Dtmf,
    EstimateWait,
    Event,
    FindContact,
    Finished,
    HangupCall,
    PaymentRequest,
    Play,
    PlaybackFinished,
    SecureMode,
    ServiceDone,
    StartTimer,
    StopPlayback,
    TimerFired,
    Trace,
    TransferCall,
)
from ivr.runner import ChannelGone, Services, SessionRunner

PAN = "4111111111111111"


class ScriptedSession:
    """Commands at start, then `react(event)` for each event; records what it was fed."""

    def __init__(self, start: list[Command], react: Callable[[Event], list[Command]]) -> None:
        self._start = start
        self._react = react
        self.seen: list[Event] = []
        self.session_id = "s1"
        self.variables: Mapping[str, Any] = {"contact_id": 42}

    def start(self) -> list[Command]:
        return list(self._start)

    def handle(self, event: Event) -> list[Command]:
        self.seen.append(event)
        return self._react(event)


class FakeChannel:
    """Records every call; `on_play` lets a test make the caller act during a prompt."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.runner: SessionRunner | None = None
        self.on_play: dict[str, Callable[[SessionRunner], None]] = {}
        self.fail: dict[str, BaseException] = {}
        self.autoplay = False  # every prompt plays out at once (PlaybackFinished fed back)

    async def _do(self, what: str, arg: Any) -> None:
        self.calls.append((what, arg))
        if what in self.fail:
            raise self.fail[what]

    async def play(self, playback_id: str, media: tuple[str, ...], language: str) -> None:
        await self._do("play", playback_id)
        hook = self.on_play.get(playback_id)
        if hook is not None and self.runner is not None:
            hook(self.runner)
        elif self.autoplay and self.runner is not None:
            self.runner.feed(PlaybackFinished(playback_id))

    async def stop_playback(self, playback_id: str) -> None:
        await self._do("stop", playback_id)

    async def transfer(self, kind: str, target: str, data: Mapping[str, str]) -> None:
        await self._do("transfer", (kind, target, dict(data)))

    async def start_recording(self, name: str, max_s: float, finish_key: str) -> None:
        await self._do("record", name)

    async def stop_recording(self, name: str) -> None:
        await self._do("stop_record", name)

    async def set_secure(self, on: bool) -> None:
        await self._do("secure", on)

    async def hangup(self, cause: int) -> None:
        await self._do("hangup", cause)


def make(
    session: ScriptedSession, services: Services | None = None
) -> tuple[SessionRunner, FakeChannel, list[tuple[str, dict[str, Any]]]]:
    channel = FakeChannel()
    events: list[tuple[str, dict[str, Any]]] = []
    runner = SessionRunner(
        session, channel, services or Services(), flow_name="test", ani="+441234",
        on_event=lambda kind, detail: events.append((kind, dict(detail))),
    )
    channel.runner = runner
    return runner, channel, events


def finish_on(pred: Callable[[Event], bool]) -> Callable[[Event], list[Command]]:
    return lambda e: [Finished("hangup", "end")] if pred(e) else []


async def run(runner: SessionRunner) -> Finished:
    async with asyncio.timeout(2):
        return await runner.run()


async def test_timer_fires_back_as_event_and_cancelled_timer_never_does() -> None:
    session = ScriptedSession(
        [StartTimer("t1", 0.005), StartTimer("t2", 0.02), CancelTimer("t1")],
        finish_on(lambda e: e == TimerFired("t2")),
    )
    runner, _, _ = make(session)
    assert await run(runner) == Finished("hangup", "end")
    assert session.seen == [TimerFired("t2")]


async def test_pending_timers_are_cancelled_when_the_session_ends() -> None:
    session = ScriptedSession([StartTimer("t9", 0.01), Finished("hangup", "x")], lambda e: [])
    runner, _, _ = make(session)
    await run(runner)
    await asyncio.sleep(0.03)
    assert session.seen == []
    assert runner._timers == {}


async def test_service_exception_answers_not_ok_with_redacted_text() -> None:
    class Contacts:
        async def find(self, number: str, campaign: str | None) -> ContactRecord | None:
            raise RuntimeError(f"db said card {PAN}")

    session = ScriptedSession(
        [FindContact("r1", "+441234", None)], finish_on(lambda e: isinstance(e, ServiceDone))
    )
    runner, _, _ = make(session, Services(contacts=Contacts()))
    await run(runner)
    (done,) = session.seen
    assert isinstance(done, ServiceDone) and done.request_id == "r1" and not done.ok
    assert done.error.startswith("RuntimeError: db said card ")
    assert PAN not in done.error and done.error.endswith("1111")


async def test_unconfigured_service_answers_not_configured() -> None:
    session = ScriptedSession(
        [EstimateWait("r1", "support")], finish_on(lambda e: isinstance(e, ServiceDone))
    )
    runner, _, _ = make(session)
    await run(runner)
    assert session.seen == [ServiceDone("r1", False, error="wait not configured")]


async def test_found_contact_is_answered_with_its_record() -> None:
    class Contacts:
        async def find(self, number: str, campaign: str | None) -> ContactRecord | None:
            return ContactRecord(7, "retention", "Ann", {"tier": "gold"}, {"pin": "1234"})

    session = ScriptedSession(
        [FindContact("r1", "+441234", None)], finish_on(lambda e: isinstance(e, ServiceDone))
    )
    runner, _, _ = make(session, Services(contacts=Contacts()))
    await run(runner)
    (done,) = session.seen
    assert isinstance(done, ServiceDone) and done.ok
    assert done.data["contact_id"] == 7 and done.data["fields"] == {"tier": "gold"}


async def test_services_run_concurrently_with_the_call() -> None:
    release = asyncio.Event()

    class SlowWait:
        async def estimate_wait(self, queue: str) -> float:
            await release.wait()
            return 99.0

    def react(e: Event) -> list[Command]:
        if isinstance(e, Dtmf):
            release.set()
            return [Trace("n", "digit")]
        return [Finished("hangup", "n")] if isinstance(e, ServiceDone) else []

    session = ScriptedSession([EstimateWait("r1", "q"), Play("p1", ("sound:x",), "en", True)],
                              react)
    runner, channel, _ = make(session, Services(wait=SlowWait()))
    channel.on_play["p1"] = lambda r: r.feed(Dtmf("1"))
    await run(runner)
    assert session.seen == [Dtmf("1"), ServiceDone("r1", True, {"ewt_s": 99.0})]


async def test_secure_mode_pauses_recordings_and_masks_digits_in_events_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def react(e: Event) -> list[Command]:
        if e == PlaybackFinished("card"):
            return [SecureMode(False), Play("after", ("sound:x",), "en", False)]
        return finish_on(lambda ev: ev == PlaybackFinished("after"))(e)

    session = ScriptedSession([SecureMode(True), Play("card", ("sound:x",), "en", True)], react)
    runner, channel, events = make(session)

    def keyed(digits: str, playback: str) -> Callable[[SessionRunner], None]:
        def act(r: SessionRunner) -> None:
            for d in digits:
                r.feed(Dtmf(d))
            r.feed(PlaybackFinished(playback))
        return act

    channel.on_play["card"] = keyed("4111", "card")
    channel.on_play["after"] = keyed("9", "after")
    await run(runner)
    assert [c for c in channel.calls if c[0] == "secure"] == [("secure", True), ("secure", False)]
    assert channel.calls.index(("secure", True)) < channel.calls.index(("play", "card"))
    dtmf = [d["digit"] for k, d in events if k == "dtmf"]
    assert dtmf == ["*", "*", "*", "*", "9"]
    assert "4111" not in caplog.text and "dtmf 4" not in caplog.text
    assert session.seen[:4] == [Dtmf("4"), Dtmf("1"), Dtmf("1"), Dtmf("1")]  # real digits in


async def test_dtmf_latency_is_measured_to_the_first_command_other_than_trace() -> None:
    def react(e: Event) -> list[Command]:
        if e == Dtmf("1"):
            return [Trace("menu", "digit", "1"), StopPlayback("p1")]
        if e == Dtmf("2"):
            return [Trace("menu", "ignored digit")]
        return finish_on(lambda ev: ev == PlaybackFinished("p1"))(e)

    session = ScriptedSession([Play("p1", ("sound:x",), "en", True)], react)
    runner, channel, _ = make(session)

    def caller(r: SessionRunner) -> None:
        r.feed(Dtmf("1"))
        r.feed(Dtmf("2"))
        r.feed(PlaybackFinished("p1"))

    channel.on_play["p1"] = caller
    await run(runner)
    assert len(runner.dtmf_latencies) == 1
    assert 0 <= runner.dtmf_latencies[0] < 0.5
    assert ("stop", "p1") in channel.calls


async def test_failing_channel_op_ends_in_error_and_hangs_up() -> None:
    session = ScriptedSession(
        [Trace("welcome", "enter"), Play("p1", ("sound:x",), "en", False)], lambda e: []
    )
    runner, channel, events = make(session)
    channel.fail["play"] = RuntimeError(f"ARI broke dtmf={PAN}")
    assert await run(runner) == Finished("error", "welcome")
    assert channel.calls[-1] == ("hangup", 41)
    assert events[-1] == ("finished", {"reason": "error", "node": "welcome"})


async def test_channel_gone_ends_as_caller_hangup() -> None:
    session = ScriptedSession(
        [Play("p1", ("sound:x",), "en", False)],
        lambda e: [Finished("caller_hangup", "n")] if isinstance(e, CallerHangup) else [],
    )
    runner, channel, _ = make(session)
    channel.fail["play"] = ChannelGone()
    assert await run(runner) == Finished("caller_hangup", "n")
    assert session.seen == [CallerHangup()]
    assert ("hangup", 41) not in channel.calls


async def test_commands_after_finished_in_the_same_batch_still_run_in_order() -> None:
    session = ScriptedSession(
        [Play("bye", ("sound:x",), "en", False), HangupCall(16), Finished("hangup", "bye")],
        lambda e: [],
    )
    runner, channel, _ = make(session)
    await run(runner)
    assert channel.calls == [("play", "bye"), ("hangup", 16)]


async def test_transfer_goes_through_the_channel_and_answers_ok() -> None:
    session = ScriptedSession(
        [TransferCall("r1", "queue", "support", {"verified": "True"})],
        lambda e: [Finished("transferred", "agent")] if isinstance(e, ServiceDone) else [],
    )
    runner, channel, events = make(session)
    assert await run(runner) == Finished("transferred", "agent")
    assert channel.calls == [("transfer", ("queue", "support", {"verified": "True"}))]
    assert session.seen == [ServiceDone("r1", True, {})]
    assert ("transfer", {"kind": "queue", "target": "support",
                         "data": {"verified": "True"}}) in events


async def test_payment_answer_is_recorded_with_token_brand_last4_only() -> None:
    recorded: list[dict[str, Any]] = []

    class Gateway:
        async def charge(self, card: CardDetails, amount: str, currency: str,
                         description: str, idempotency_key: str) -> PaymentResult:
            assert card.number == PAN
            return PaymentResult(True, token="tok_1")

        async def tokenize(self, card: CardDetails, idempotency_key: str) -> PaymentResult:
            raise AssertionError("not called")

    class Store:
        async def record_payment(self, **kwargs: Any) -> None:
            recorded.append(kwargs)

    card = CardDetails(PAN, "1230", "123")
    session = ScriptedSession(
        [Trace("take_payment", "enter"),
         PaymentRequest("r1", "charge", card, "42.50", "GBP", "Invoice 7", "s1:take_payment")],
        finish_on(lambda e: isinstance(e, ServiceDone)),
    )
    runner, _, events = make(session, Services(gateway=Gateway(), payments=Store()))
    await run(runner)
    assert session.seen == [
        ServiceDone("r1", True, {"approved": True, "token": "tok_1", "error": ""})
    ]
    (row,) = recorded
    assert row == {
        "session_id": "s1", "flow": "test", "node": "take_payment", "ani": "+441234",
        "contact_id": 42, "action": "charge", "amount": "42.50", "currency": "GBP",
        "brand": "visa", "last4": "1111", "approved": True, "token": "tok_1", "error": "",
    }
    assert PAN not in repr(recorded) and "123'" not in repr(row)
    assert PAN not in repr(events)


async def test_real_interpreter_menu_no_input_retries_on_timers_then_hangs_up() -> None:
    pos = Pos("t.yaml", 1, 1)
    nodes = {
        "main": Menu("main", pos, {}, prompt=Prompt({"en": ("sound:menu",)}, pos),
                     options={"1": "bye"}, no_input="bye", invalid="bye", retries=1,
                     timeout_s=0.005),
        "bye": Hangup("bye", pos, {}, prompt=Prompt({"en": ("sound:bye",)}, pos)),
    }
    flow = Flow(name="t", path=Path("t.yaml"), start="main", nodes=nodes)
    session = Session(flow, session_id="c1", variables={"ani": "+441234"},
                      today=date(2026, 1, 1))
    channel = FakeChannel()
    channel.autoplay = True
    runner = SessionRunner(session, channel, Services(), flow_name="t", ani="+441234")
    channel.runner = runner
    assert await run(runner) == Finished("hangup", "bye")
    assert session.path == ["main", "bye"]
    assert channel.calls == [("play", "c1:pb1"), ("play", "c1:pb2"), ("play", "c1:pb3"),
                             ("hangup", 16)]
    assert runner._timers == {}


def test_scrub_card_data_masks_the_cards_own_cvv_and_postcode_as_whole_tokens_only() -> None:
    from ivr.protocol import CardDetails
    from ivr.runner import scrub_card_data

    card = CardDetails("4111111111111111", "1230", "737", "SW1A 1AA")
    text = ("declined: cvv=737 for 4111111111111111 at sw1a 1aa; took 0.0737 s, "
            "ref 17370, amount 737.00")
    assert scrub_card_data(text, card) == (
        "declined: cvv=*** for *** at ***; took 0.0737 s, ref 17370, amount ***.00"
    )


async def test_digits_typed_ahead_of_a_card_prompt_are_masked_like_the_card_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller presses 1 ("pay") and goes on typing the card number at once: the digits
    queued behind the 1 are taken after the pay step's SecureMode(True), and shown as "*"."""
    caplog.set_level(logging.DEBUG)

    def react(e: Event) -> list[Command]:
        if e == Dtmf("1") and not any(isinstance(x, Dtmf) for x in session.seen[:-1]):
            return [SecureMode(True), Play("card", ("sound:x",), "en", True)]
        if e == Dtmf("#"):
            return [SecureMode(False), Finished("hangup", "end")]
        return []

    session = ScriptedSession([Play("menu", ("sound:x",), "en", True)], react)
    runner, channel, events = make(session)

    def type_ahead(r: SessionRunner) -> None:
        for d in "1" + "4111111111111111" + "#":
            r.feed(Dtmf(d))

    channel.on_play["menu"] = type_ahead
    await run(runner)
    dtmf = [d["digit"] for k, d in events if k == "dtmf"]
    assert dtmf == ["1"] + ["*"] * 17
    assert "4111" not in caplog.text and "dtmf 4" not in caplog.text


class _SlowGateway:
    """Charges after `delay_s`; `charged` counts the charges that went through."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.charged = 0

    async def charge(self, card: CardDetails, amount: str, currency: str,
                     description: str, idempotency_key: str) -> PaymentResult:
        await asyncio.sleep(self.delay_s)
        self.charged += 1
        return PaymentResult(True, token="tok_slow")

    async def tokenize(self, card: CardDetails, idempotency_key: str) -> PaymentResult:
        raise AssertionError("not called")


class _Store:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def record_payment(self, **kwargs: Any) -> None:
        self.rows.append(kwargs)


async def test_a_charge_in_flight_when_the_caller_hangs_up_is_still_recorded() -> None:
    """The gateway may take the money after the caller has gone: the session does not cancel
    the charge, and its answer is recorded."""
    gateway, store = _SlowGateway(0.05), _Store()
    card = CardDetails(PAN, "1230", "123")
    session = ScriptedSession(
        [PaymentRequest("r1", "charge", card, "42.50", "GBP", "", "s1:pay:1")],
        lambda e: [Finished("caller_hangup", "pay")] if isinstance(e, CallerHangup) else [],
    )
    runner, _, _ = make(session, Services(gateway=gateway, payments=store))
    runner.feed(CallerHangup())
    assert await run(runner) == Finished("caller_hangup", "pay")
    assert gateway.charged == 1
    assert [(r["approved"], r["token"]) for r in store.rows] == [(True, "tok_slow")]


async def test_a_gateway_that_never_answers_is_recorded_as_failed_after_its_time_limit() -> None:
    gateway, store = _SlowGateway(60.0), _Store()
    card = CardDetails(PAN, "1230", "123")
    session = ScriptedSession(
        [PaymentRequest("r1", "charge", card, "42.50", "GBP", "", "s1:pay:1")],
        finish_on(lambda e: isinstance(e, ServiceDone)),
    )
    runner, _, _ = make(session, Services(gateway=gateway, payments=store,
                                          gateway_timeout_s=0.02))
    await run(runner)
    [done] = session.seen
    assert isinstance(done, ServiceDone) and not done.ok
    assert "gateway timed out" in done.error
    assert [(r["approved"], r["last4"]) for r in store.rows] == [(False, "1111")]
    assert "timed out" in store.rows[0]["error"]


async def test_a_service_that_never_answers_answers_not_ok_after_the_time_limit() -> None:
    class StuckDirectory:
        async def find(self, number: str, campaign: str | None) -> ContactRecord | None:
            await asyncio.sleep(60)
            return None

    session = ScriptedSession([FindContact("r1", "+441234", None)],
                              finish_on(lambda e: isinstance(e, ServiceDone)))
    runner, _, _ = make(session, Services(contacts=StuckDirectory(), timeout_s=0.02))
    await run(runner)
    assert session.seen == [ServiceDone("r1", False, error="FindContact timed out")]
