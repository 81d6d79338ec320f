"""Run the Asterisk emulator: `async with run_pbx(ami_port=0) as pbx: pbx.ami_port`.

The runner owns the servers and closes them (and every timer they own) on exit. The ARI server
(`sim.pbx.ari_server`) runs too when `ari_port` is given (0 = any free port); the two sides do
not share calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sim.pbx.ami_server import AmiServer
from sim.pbx.ari_server import AriServer
from sim.population import Population


@dataclass(slots=True)
class RunningPbx:
    """What a running emulator exposes: the bound ports and the servers (for fault hooks)."""

    ami: AmiServer
    host: str
    ari: AriServer | None = None

    @property
    def ami_port(self) -> int:
        return self.ami.port

    @property
    def ari_port(self) -> int | None:
        return None if self.ari is None else self.ari.port


@asynccontextmanager
async def run_pbx(
    *,
    host: str = "127.0.0.1",
    ami_port: int = 0,
    population: Population | None = None,
    seed: int = 0,
    time_scale: float = 1.0,
    auth_fail_delay_s: float = 1.0,
    ari_port: int | None = None,
) -> AsyncIterator[RunningPbx]:
    """Start the emulator on `host`; port 0 binds an ephemeral port. `ari_port` None: no ARI."""
    async with AmiServer(
        host=host,
        port=ami_port,
        population=population,
        seed=seed,
        time_scale=time_scale,
        auth_fail_delay_s=auth_fail_delay_s,
    ) as ami:
        if ari_port is None:
            yield RunningPbx(ami=ami, host=host)
            return
        async with AriServer(
            host=host, port=ari_port, population=population, seed=seed, time_scale=time_scale
        ) as ari:
            yield RunningPbx(ami=ami, host=host, ari=ari)
