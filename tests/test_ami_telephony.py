"""`AmiTelephony` against the Asterisk emulator: the AMI link dropped mid-campaign.

The shared call scenarios run on both backends in `tests/test_telephony_scenarios.py`."""

from __future__ import annotations

import asyncio

import pytest

from cti.ami.telephony import AmiTelephony
from cti.events import CallEventKind
from cti.interface import BackendUnavailable, OriginateRequest
from dialer.domain import Outcome
from sim.pbx.ami_server import AmiServer
from sim.population import CalleeKind, Override, Population
from tests import telephony_scenarios as sc


def customer(number: str) -> str:
    return f"Local/{number}@sim-customers"


async def test_link_dropped_mid_campaign() -> None:
    """The emulator drops the socket and refuses logins for a while; calls go on and end.

    Numbers ending in 1 hang up during the outage, numbers ending in 2 after it, and 0017 are
    busy (over before the outage). After the reconnect every call has exactly one HANGUP: the
    ones that ended unseen from the resync, the others from their own events.
    """
    population = Population(
        weights={CalleeKind.HUMAN: 1.0},
        ring_range_s=(1.0, 2.0),
        overrides=(
            Override(r"0017$", CalleeKind.BUSY),
            Override(r"1$", CalleeKind.HUMAN, talk_s=100.0),  # 1 s at time_scale 0.01
            Override(r"2$", CalleeKind.HUMAN, talk_s=400.0),  # 4 s
        ),
    )
    numbers = {
        f"f-{i}": f"+1555{i:03d}" + ("0017" if i % 3 == 0 else f"000{1 + i % 2}") for i in range(40)
    }
    async with (
        AmiServer(population=population, time_scale=0.01) as pbx,
        AmiTelephony(
            "127.0.0.1", pbx.port, "dialer", "dialer", backoff_initial=0.2, backoff_max=0.4
        ) as tel,
    ):
        rec = sc.Recorder(tel)
        async with rec.running():
            async with asyncio.TaskGroup() as tg:
                for call_id, number in numbers.items():
                    tg.create_task(sc.originate(tel, call_id, customer(number)))
            people = [c for c, n in numbers.items() if not n.endswith("0017")]
            busy = [c for c in numbers if c not in people]
            await rec.until(lambda: all(rec.first(c, CallEventKind.ANSWERED) for c in people))
            await rec.until(lambda: all(rec.ended(c) for c in busy))
            # Connected to agents, so the dialplan's 60 s (0.6 s here) wait does not end them.
            for call_id in people:
                await tel.connect_to_agent(call_id, "Local/1001@agents")
            await rec.until(lambda: all(rec.first(c, CallEventKind.BRIDGED) for c in people))

            pbx.refuse_logins = True
            pbx.drop_connections()
            await rec.until(lambda: CallEventKind.BACKEND_DOWN in [e.kind for e in rec.backend])
            assert not tel.connected
            with pytest.raises(BackendUnavailable):
                await tel.originate(
                    OriginateRequest(call_id="blind", endpoint=customer("+15550000"))
                )
            await asyncio.sleep(1.5)  # the "…1" people hang up meanwhile
            pbx.refuse_logins = False

            await rec.until(lambda: [e.kind for e in rec.backend][-1] is CallEventKind.BACKEND_UP)
            assert tel.connected and tel.reconnects >= 1
            await rec.until(lambda: all(rec.ended(c) for c in numbers), 20)
    for call_id, number in numbers.items():
        assert rec.count(call_id, CallEventKind.HANGUP) == 1, (call_id, rec.kinds(call_id))
        hangup = rec.first(call_id, CallEventKind.HANGUP)
        assert hangup is not None
        if number.endswith("0017"):
            assert hangup.outcome is Outcome.BUSY
        elif number.endswith("1"):
            # Ended during the outage: reported by the resync, cause unknown.
            assert hangup.outcome is Outcome.HUMAN and "down" in hangup.detail, hangup
        else:
            assert (hangup.outcome, hangup.cause, hangup.detail) == (Outcome.HUMAN, 16, "")
    assert tel.tracker.live_calls() == {}
    assert "blind" not in rec.by_call


async def test_an_originate_that_creates_no_channel_ends_from_its_originate_response() -> None:
    async with (
        AmiServer(time_scale=0.01) as pbx,
        AmiTelephony("127.0.0.1", pbx.port, "dialer", "dialer") as tel,
    ):
        rec = sc.Recorder(tel)
        async with rec.running():
            await tel.originate(
                OriginateRequest(call_id="nowhere", endpoint="Local/777@nosuchcontext")
            )
            hangup = await rec.until_event("nowhere", CallEventKind.HANGUP, timeout=5)
        assert hangup.outcome is Outcome.FAILED
        assert tel.tracker.live_calls() == {}
