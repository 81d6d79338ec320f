"""Backend-agnostic call scenarios: the same code drives `AmiTelephony` and `AriTelephony`.

Each scenario takes a started `Telephony` (and the emulator's endpoint naming) and asserts only
on the normalized event stream, so a backend passes by behaving like the interface says, not
by matching the other backend's internals. The numbers follow `scenario_population()`:
suffix 0017 busy, 0019 no answer, 0021 rejected, 0001 failed, 0034 congestion, 0666 machine,
0777 a person who presses `1234#`, anything else a person who stays on the line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cti.events import CallEvent, CallEventKind
from cti.interface import OriginateRequest, Telephony, TelephonyError, UnknownCall
from dialer.domain import Outcome
from sim.population import DETERMINISTIC_OVERRIDES, CalleeKind, Override, Population

OUTCOME_BY_SUFFIX: dict[str, Outcome] = {
    "0017": Outcome.BUSY,
    "0019": Outcome.NO_ANSWER,
    "0021": Outcome.REJECTED,
    "0001": Outcome.FAILED,
    "0034": Outcome.CONGESTION,
    "0666": Outcome.MACHINE,
}
DTMF_SUFFIX = "0777"
DTMF_DIGITS = "1234#"


def scenario_population() -> Population:
    """Outcome by number only; people stay ~10 minutes, machines 1-1.5 (the test hangs up)."""
    return Population(
        weights={CalleeKind.HUMAN: 1.0},
        ring_range_s=(1.0, 3.0),
        talk_median_s=600.0,
        talk_sigma=0.0,
        # A greeting long enough for AMD to hear it even on a loaded machine (ARI starts AMD
        # after a REST round trip); the scenario hangs up machines itself.
        machine_talk_range_s=(60.0, 90.0),
        overrides=(
            *DETERMINISTIC_OVERRIDES,
            Override(r"0777$", CalleeKind.HUMAN, dtmf=DTMF_DIGITS),
        ),
    )


def expected_outcome(number: str) -> Outcome:
    return OUTCOME_BY_SUFFIX.get(number[-4:], Outcome.HUMAN)


def mixed_numbers(n: int) -> list[str]:
    """`n` numbers: every outcome several times, about half of them people."""
    suffixes = [*OUTCOME_BY_SUFFIX, DTMF_SUFFIX]
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(f"+1555{i:03d}{suffixes[(i // 2) % len(suffixes)]}")
        else:
            out.append(f"+1555{i:03d}{5000 + i:04d}")
    return out


@dataclass
class Recorder:
    """Reads a backend's event stream in the background and lets tests wait on it.

    `events` holds every event in arrival order; `by_call` the same per call id and `backend`
    the BACKEND_DOWN/UP ones. `until` re-checks its predicate on every event and at least
    every 20 ms, so a predicate may also look at the emulator's state."""

    telephony: Telephony
    events: list[CallEvent] = field(default_factory=list)
    by_call: dict[str, list[CallEvent]] = field(default_factory=lambda: defaultdict(list))
    backend: list[CallEvent] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        stream: AsyncIterator[CallEvent] = self.telephony.events()
        async for event in stream:
            self.events.append(event)
            if event.call_id:
                self.by_call[event.call_id].append(event)
            else:
                self.backend.append(event)
            self._changed.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Recorder]:
        async with asyncio.TaskGroup() as tg:
            self._task = tg.create_task(self._run())
            try:
                yield self
            finally:
                self._task.cancel()

    def of(self, call_id: str, kind: CallEventKind | None = None) -> list[CallEvent]:
        return [e for e in self.by_call.get(call_id, []) if kind is None or e.kind is kind]

    def kinds(self, call_id: str) -> list[CallEventKind]:
        return [e.kind for e in self.by_call.get(call_id, [])]

    def first(self, call_id: str, kind: CallEventKind) -> CallEvent | None:
        return next((e for e in self.by_call.get(call_id, []) if e.kind is kind), None)

    def count(self, call_id: str, kind: CallEventKind) -> int:
        return sum(1 for e in self.by_call.get(call_id, []) if e.kind is kind)

    def ended(self, call_id: str) -> bool:
        return self.first(call_id, CallEventKind.HANGUP) is not None

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.02)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}") from None

    async def until_event(
        self, call_id: str, kind: CallEventKind, timeout: float = 15.0
    ) -> CallEvent:
        await self.until(lambda: self.first(call_id, kind) is not None, timeout)
        event = self.first(call_id, kind)
        assert event is not None
        return event

    async def until_backend(self, kind: CallEventKind, timeout: float = 15.0) -> CallEvent:
        """The first BACKEND_DOWN or BACKEND_UP event, once it has come."""
        await self.until(lambda: any(e.kind is kind for e in self.backend), timeout)
        return next(e for e in self.backend if e.kind is kind)


Endpoint = Callable[[str], str]


async def originate(tel: Telephony, call_id: str, endpoint: str, *, amd: bool = False) -> None:
    await tel.originate(
        OriginateRequest(call_id=call_id, endpoint=endpoint, ring_timeout_s=20.0, amd=amd)
    )


async def answered_call(tel: Telephony, rec: Recorder, call_id: str, endpoint: str) -> None:
    await originate(tel, call_id, endpoint)
    await rec.until_event(call_id, CallEventKind.ANSWERED)


async def connected_call(
    tel: Telephony, rec: Recorder, call_id: str, endpoint: str, agent: str
) -> CallEvent:
    await answered_call(tel, rec, call_id, endpoint)
    await tel.connect_to_agent(call_id, agent)
    return await rec.until_event(call_id, CallEventKind.BRIDGED)


# ---- the scenarios ----------------------------------------------------------------------
async def scenario_mixed_campaign(
    tel: Telephony, rec: Recorder, endpoint: Endpoint, agents: list[str], n: int = 200
) -> None:
    """`n` concurrent originates with mixed outcomes; people are connected to agents."""
    numbers = {f"mix-{i}": number for i, number in enumerate(mixed_numbers(n))}
    async with asyncio.TaskGroup() as tg:
        for call_id, number in numbers.items():
            tg.create_task(originate(tel, call_id, endpoint(number), amd=True))

    people = [c for c, num in numbers.items() if expected_outcome(num) is Outcome.HUMAN]
    await rec.until(lambda: all(rec.first(c, CallEventKind.ANSWERED) for c in people), 60)
    for i, call_id in enumerate(people):
        await tel.connect_to_agent(call_id, agents[i % len(agents)])
    await rec.until(lambda: all(rec.first(c, CallEventKind.BRIDGED) for c in people), 60)
    for call_id in people:
        await tel.hangup(call_id)
    for call_id, number in numbers.items():
        if expected_outcome(number) is Outcome.MACHINE:
            with contextlib.suppress(UnknownCall):
                await tel.hangup(call_id)
    await rec.until(lambda: all(rec.ended(c) for c in numbers), 60)

    for call_id, number in numbers.items():
        assert rec.count(call_id, CallEventKind.HANGUP) == 1, (call_id, rec.kinds(call_id))
        hangup = rec.first(call_id, CallEventKind.HANGUP)
        assert hangup is not None
        assert hangup.outcome is expected_outcome(number), (number, hangup)
        kinds = rec.kinds(call_id)
        assert kinds[-1] is CallEventKind.HANGUP, kinds
        if expected_outcome(number) in (Outcome.HUMAN, Outcome.MACHINE):
            assert CallEventKind.ANSWERED in kinds
            amd = rec.first(call_id, CallEventKind.AMD)
            assert amd is not None and amd.amd == (
                "MACHINE" if expected_outcome(number) is Outcome.MACHINE else "HUMAN"
            ), (number, amd)
        else:
            assert CallEventKind.ANSWERED not in kinds, (number, kinds)
    for call_id in people:
        bridged = rec.first(call_id, CallEventKind.BRIDGED)
        assert bridged is not None and bridged.peer
    hangups = [rec.first(c, CallEventKind.HANGUP) for c in numbers]
    causes = {h.cause for h in hangups if h is not None}
    assert {17, 19, 21, 1, 34, 16} <= causes, causes


async def scenario_hangup_cause(tel: Telephony, rec: Recorder, endpoint: Endpoint) -> None:
    """A hangup with a cause reports that cause; a call that is gone is `UnknownCall`."""
    await answered_call(tel, rec, "cause-1", endpoint("+15551230500"))
    await tel.hangup("cause-1", cause=21)
    hangup = await rec.until_event("cause-1", CallEventKind.HANGUP)
    assert hangup.cause == 21 and hangup.outcome is Outcome.HUMAN
    try:
        await tel.hangup("cause-1")
    except UnknownCall:
        pass
    else:
        raise AssertionError("hanging up an ended call must raise UnknownCall")


async def scenario_abandon_message(tel: Telephony, rec: Recorder, endpoint: Endpoint) -> None:
    """play_and_hangup: the customer hears the message and the call ends normally."""
    await answered_call(tel, rec, "abandon-1", endpoint("+15551230501"))
    await tel.play_and_hangup("abandon-1", "paceline/abandon-message")
    hangup = await rec.until_event("abandon-1", CallEventKind.HANGUP)
    assert hangup.cause == 16 and hangup.outcome is Outcome.HUMAN


async def scenario_blind_transfer(
    tel: Telephony, rec: Recorder, endpoint: Endpoint, agent: str, target: str
) -> None:
    await connected_call(tel, rec, "blind-1", endpoint("+15551230502"), agent)
    await tel.blind_transfer("blind-1", target)
    moved = await rec.until_event("blind-1", CallEventKind.TRANSFERRED)
    assert moved.target and target in moved.target
    # The customer is then bridged with the target, not with the first agent.
    await rec.until(lambda: rec.count("blind-1", CallEventKind.BRIDGED) >= 2)
    assert not rec.ended("blind-1")
    await tel.hangup("blind-1")
    await rec.until_event("blind-1", CallEventKind.HANGUP)


async def scenario_attended_transfer(
    tel: Telephony, rec: Recorder, endpoint: Endpoint, agent: str, target: str
) -> None:
    await connected_call(tel, rec, "att-1", endpoint("+15551230503"), agent)
    await tel.attended_transfer("att-1", target)
    moved = await rec.until_event("att-1", CallEventKind.TRANSFERRED)
    assert moved.detail == "attended"
    await rec.until(lambda: rec.count("att-1", CallEventKind.BRIDGED) >= 2)
    assert not rec.ended("att-1")
    await tel.hangup("att-1")
    hangup = await rec.until_event("att-1", CallEventKind.HANGUP)
    assert hangup.outcome is Outcome.HUMAN


async def scenario_attended_transfer_refused(
    tel: Telephony, rec: Recorder, endpoint: Endpoint, agent: str, target: str
) -> None:
    """A consult target that does not answer (busy): `attended_transfer` raises as soon as
    the consult fails (not after the backend's 30 s transfer timeout, with the customer on
    hold all along), and the customer is neither transferred nor left on hold; the agent
    still has the call."""
    await connected_call(tel, rec, "att-2", endpoint("+15551230505"), agent)
    try:
        async with asyncio.timeout(5):
            await tel.attended_transfer("att-2", target)
    except TelephonyError:
        pass
    else:
        raise AssertionError("an attended transfer to a busy target must raise")
    assert rec.first("att-2", CallEventKind.TRANSFERRED) is None
    assert not rec.ended("att-2")
    await rec.until(lambda: rec.count("att-2", CallEventKind.UNHELD) >= 1)
    music = [k for k in rec.kinds("att-2") if k in (CallEventKind.HELD, CallEventKind.UNHELD)]
    assert music[-1] is CallEventKind.UNHELD, music
    # Still with the agent: a hold round trip works (on AMI it needs the agent leg).
    unheld = rec.count("att-2", CallEventKind.UNHELD)
    await tel.hold("att-2")
    await tel.unhold("att-2")
    await rec.until(lambda: rec.count("att-2", CallEventKind.UNHELD) > unheld)
    await tel.hangup("att-2")
    hangup = await rec.until_event("att-2", CallEventKind.HANGUP)
    assert hangup.outcome is Outcome.HUMAN


async def scenario_hold(tel: Telephony, rec: Recorder, endpoint: Endpoint, agent: str) -> None:
    await connected_call(tel, rec, "hold-1", endpoint("+15551230504"), agent)
    await tel.hold("hold-1")
    await rec.until_event("hold-1", CallEventKind.HELD)
    await tel.unhold("hold-1")
    await rec.until_event("hold-1", CallEventKind.UNHELD)
    # Back with the agent after the hold.
    await rec.until(lambda: rec.count("hold-1", CallEventKind.BRIDGED) >= 1)
    assert not rec.ended("hold-1")
    await tel.hangup("hold-1")
    await rec.until_event("hold-1", CallEventKind.HANGUP)


async def scenario_dtmf(tel: Telephony, rec: Recorder, endpoint: Endpoint) -> None:
    """Digits the customer presses arrive in order; digits we send are accepted."""
    await answered_call(tel, rec, "dtmf-1", endpoint(f"+1555123{DTMF_SUFFIX}"))

    def digits() -> str:
        return "".join(e.digit or "" for e in rec.by_call["dtmf-1"] if e.kind is CallEventKind.DTMF)

    await rec.until(lambda: digits() == DTMF_DIGITS)
    await tel.send_dtmf("dtmf-1", "42#")
    try:
        await tel.send_dtmf("no-such-call", "1")
    except TelephonyError:
        pass
    else:
        raise AssertionError("DTMF to an unknown call must raise")
    await tel.hangup("dtmf-1")
    await rec.until_event("dtmf-1", CallEventKind.HANGUP)
