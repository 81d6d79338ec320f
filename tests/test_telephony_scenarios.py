"""The shared scenarios (`tests/telephony_scenarios.py`) on both backends, each against its
half of the emulator over real sockets: the same test code for AMI and ARI."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from cti.ami.telephony import AmiTelephony
from cti.ari import AriTelephony
from cti.interface import Telephony
from sim.pbx.ami_server import AmiServer
from sim.pbx.ari_server import AriServer
from tests import telephony_scenarios as sc

AGENTS = ["Local/1001@agents", "Local/1002@agents", "Local/2001@agents", "PJSIP/agent7"]
SCALE = 0.01


def customer(number: str) -> str:
    return f"Local/{number}@sim-customers"


@contextlib.asynccontextmanager
async def _ami() -> AsyncIterator[Telephony]:
    async with (
        AmiServer(population=sc.scenario_population(), seed=3, time_scale=SCALE) as pbx,
        AmiTelephony("127.0.0.1", pbx.port, "dialer", "dialer") as tel,
    ):
        yield tel


@contextlib.asynccontextmanager
async def _ari() -> AsyncIterator[Telephony]:
    async with (
        AriServer(population=sc.scenario_population(), seed=3, time_scale=SCALE) as pbx,
        AriTelephony(f"http://127.0.0.1:{pbx.port}", "dialer", "dialer", app="paceline") as tel,
    ):
        yield tel


@pytest.fixture(params=["ami", "ari"])
async def tel(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Telephony, sc.Recorder]]:
    backend = _ami() if request.param == "ami" else _ari()
    async with backend as telephony:
        rec = sc.Recorder(telephony)
        async with rec.running():
            yield telephony, rec


async def test_mixed_campaign_of_200_calls(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_mixed_campaign(*tel, customer, AGENTS, n=200)


async def test_hangup_cause(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_hangup_cause(*tel, customer)


async def test_abandon_message(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_abandon_message(*tel, customer)


async def test_blind_transfer(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_blind_transfer(*tel, customer, "Local/1001@agents", "1002")


async def test_attended_transfer(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_attended_transfer(*tel, customer, "Local/1001@agents", "1002")


async def test_attended_transfer_to_a_busy_target(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_attended_transfer_refused(*tel, customer, "Local/1001@agents", "9002")


async def test_hold_and_unhold(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_hold(*tel, customer, "Local/1001@agents")


async def test_dtmf_both_ways(tel: tuple[Telephony, sc.Recorder]) -> None:
    await sc.scenario_dtmf(*tel, customer)
