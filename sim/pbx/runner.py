"""Run the Asterisk emulator: `async with run_pbx(ami_port=0) as pbx: pbx.ami_port`.

The runner owns the servers and closes them (and every timer they own) on exit. Only the AMI
side exists so far; the ARI server is still to come.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sim.pbx.ami_server import AmiServer
from sim.population import Population


@dataclass(slots=True)
class RunningPbx:
    """What a running emulator exposes: the bound ports and the servers (for fault hooks)."""

    ami: AmiServer
    host: str

    @property
    def ami_port(self) -> int:
        return self.ami.port


@asynccontextmanager
async def run_pbx(
    *,
    host: str = "127.0.0.1",
    ami_port: int = 0,
    population: Population | None = None,
    seed: int = 0,
    time_scale: float = 1.0,
    auth_fail_delay_s: float = 1.0,
) -> AsyncIterator[RunningPbx]:
    """Start the emulator on `host`; port 0 binds an ephemeral port."""
    async with AmiServer(
        host=host,
        port=ami_port,
        population=population,
        seed=seed,
        time_scale=time_scale,
        auth_fail_delay_s=auth_fail_delay_s,
    ) as ami:
        yield RunningPbx(ami=ami, host=host)
