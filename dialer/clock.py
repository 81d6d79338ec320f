"""The engine's clock: the one place the dialer service reads time.

Everything below the service (strategies, compliance, the pacer, the DB functions) takes `now`
as an argument. The service asks its `Clock`, so that a test or a load run can drive the whole
dialer faster than real time together with an emulator running at the same `time_scale`: a
90 s talk then lasts 0.9 s of wall time at scale 0.01, and the pacer, the 2-second connect
rule and every timestamp written to the database agree on one (virtual) time line.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Time as the service sees it."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC (what the database and calling hours use)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (what durations and the pacer use)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Virtual time running `1 / scale` times faster than the wall clock.

    `now()` is `start` (default: the wall clock at construction) plus elapsed wall seconds /
    `scale`. Pair it with the emulator's `time_scale=scale`. Processes that must share one
    virtual time line (a service killed and restarted in a crash test) pass the same `start`
    and `anchor`: `anchor` is the wall-clock epoch second at which virtual time was `start`,
    and elapsed time is then read from the wall clock instead of this process's monotonic one.
    """

    def __init__(
        self, scale: float, start: datetime | None = None, anchor: float | None = None
    ) -> None:
        if not scale > 0:
            raise ValueError(f"time scale must be > 0, got {scale!r}")
        self.scale = scale
        self._start = (start or datetime.now(UTC)).astimezone(UTC)
        self._wall = anchor is not None
        self._t0 = anchor if anchor is not None else time.monotonic()

    def monotonic(self) -> float:
        t = time.time() if self._wall else time.monotonic()
        return (t - self._t0) / self.scale

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) * self.scale)
