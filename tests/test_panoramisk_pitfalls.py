"""The panoramisk 1.4 pitfalls named in issue 4, each shown against the emulator, next to
Paceline's own AMI client doing the right thing in the same situation.

These tests are why `cti.ami` does not use panoramisk (see `cti/ami/client.py`). If a later
panoramisk fixes one, its test here fails and says so: then it is worth another look.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from panoramisk import Manager

from cti.ami.telephony import AmiTelephony
from cti.events import CallEventKind
from cti.interface import AuthenticationFailed, OriginateRequest
from sim.pbx.ami_server import AmiServer
from tests.telephony_scenarios import Recorder, scenario_population

NUMBER = "Local/+15551230500@sim-customers"


@pytest.fixture
async def pbx() -> AsyncIterator[AmiServer]:
    async with AmiServer(
        population=scenario_population(), time_scale=0.01, auth_fail_delay_s=0.05
    ) as server:
        yield server


def _manager(port: int, secret: str = "dialer") -> Manager:
    return Manager(
        host="127.0.0.1",
        port=port,
        username="dialer",
        secret=secret,
        ping_delay=3600,
        reconnect_timeout=0,
    )


async def test_panoramisk_originate_without_async_never_resolves(
    pbx: AmiServer, caplog: pytest.LogCaptureFixture
) -> None:
    manager = _manager(pbx.port)
    await manager.connect()
    await asyncio.sleep(0.1)
    try:
        future = manager.send_action(
            {
                "Action": "Originate",
                "Channel": NUMBER,
                "Context": "paceline-outbound",
                "Exten": "s",
                "Priority": "1",
            }
        )
        with caplog.at_level(logging.ERROR), pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), 1.0)
    finally:
        manager.close()
    # The reply made panoramisk raise KeyError('async') in data_received; asyncio logged it.
    assert "KeyError: 'async'" in caplog.text or any(
        isinstance(r.exc_info[1], KeyError) for r in caplog.records if r.exc_info
    )


async def test_panoramisk_resends_an_unanswered_originate_and_dials_twice(pbx: AmiServer) -> None:
    pbx.drop_before_reply.add("originate")
    manager = _manager(pbx.port)
    await manager.connect()
    await asyncio.sleep(0.1)
    try:
        future = manager.send_action(
            {
                "Action": "Originate",
                "ActionID": "pan-1",
                "Channel": NUMBER,
                "Context": "paceline-outbound",
                "Exten": "s",
                "Priority": "1",
                "Async": "true",
            }
        )
        await asyncio.wait_for(asyncio.shield(future), 5.0)
    finally:
        manager.close()
    assert pbx.originates_by_action_id["pan-1"] == 2, "panoramisk no longer replays: re-check"


async def test_our_client_never_resends_and_the_call_is_placed_once(pbx: AmiServer) -> None:
    pbx.drop_before_reply.add("originate")
    async with AmiTelephony("127.0.0.1", pbx.port, "dialer", "dialer", backoff_initial=0.05) as tel:
        rec = Recorder(tel)
        async with rec.running():
            await tel.originate(OriginateRequest(call_id="once-1", endpoint=NUMBER))
            await rec.until(
                lambda: any(e.kind is CallEventKind.BACKEND_UP for e in rec.backend[1:])
            )
            await rec.until(
                lambda: (
                    rec.first("once-1", CallEventKind.ANSWERED) is not None or rec.ended("once-1")
                )
            )
            await asyncio.sleep(0.2)
            if not rec.ended("once-1"):
                await tel.hangup("once-1")
            await rec.until(lambda: rec.ended("once-1"))
    assert pbx.originates_by_channel_id["once-1"] == 1
    assert sum(pbx.originates_by_action_id.values()) == 1
    assert rec.count("once-1", CallEventKind.HANGUP) == 1
    assert [e.kind for e in rec.backend][:3] == [
        CallEventKind.BACKEND_UP,
        CallEventKind.BACKEND_DOWN,
        CallEventKind.BACKEND_UP,
    ]


async def test_panoramisk_connect_returns_before_login_and_retries_a_bad_secret(
    pbx: AmiServer,
) -> None:
    manager = _manager(pbx.port, secret="wrong")
    await manager.connect()  # returns although the login will fail
    try:
        assert manager.authenticated is False
        await asyncio.sleep(1.0)
        assert manager.authenticated is False
        assert pbx.login_attempts >= 3, "panoramisk gave up retrying: re-check"
    finally:
        manager.close()


async def test_our_client_reports_a_bad_secret_once_as_a_final_error(pbx: AmiServer) -> None:
    with pytest.raises(AuthenticationFailed, match="Authentication failed"):
        async with AmiTelephony("127.0.0.1", pbx.port, "dialer", "wrong"):
            pass
    await asyncio.sleep(0.3)
    assert pbx.login_attempts == 1


async def test_originate_responses_of_other_sessions_are_ignored(pbx: AmiServer) -> None:
    # panoramisk hands the other session's OriginateResponse to its event handlers as is.
    seen: list[str] = []
    manager = _manager(pbx.port)
    manager.register_event("OriginateResponse", lambda _m, event: seen.append(event.ActionID))
    await manager.connect()
    try:
        async with (
            AmiTelephony("127.0.0.1", pbx.port, "dialer", "dialer") as a,
            AmiTelephony("127.0.0.1", pbx.port, "dialer", "dialer") as b,
        ):
            rec_a, rec_b = Recorder(a), Recorder(b)
            async with rec_a.running(), rec_b.running():
                await a.originate(
                    OriginateRequest(call_id="a-1", endpoint="Local/+15551110017@sim-customers")
                )
                await b.originate(
                    OriginateRequest(call_id="b-1", endpoint="Local/+15552220017@sim-customers")
                )
                await rec_a.until(lambda: rec_a.ended("a-1"))
                await rec_b.until(lambda: rec_b.ended("b-1"))
                await asyncio.sleep(0.1)
            calls_a: set[str] = set(rec_a.by_call)
            calls_b: set[str] = set(rec_b.by_call)
    finally:
        manager.close()
    assert calls_a == {"a-1"} and calls_b == {"b-1"}
    assert len(seen) == 2, "the observer got both foreign OriginateResponses"
