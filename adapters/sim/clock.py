"""Simulated time, shared by every instrument of a run and paced against the wall clock."""

from __future__ import annotations

import asyncio
import math
import time


class SimClock:
    """Sim time ``t`` (s since start) maps to epoch ns ``start_ns + t*1e9``; it runs ``speed``
    times faster than the wall clock (``math.inf``: as fast as the consumer takes frames)."""

    def __init__(self, start_ns: int | None = None, speed: float = 1.0):
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.speed = speed
        self._wall0 = time.monotonic()

    def epoch_ns(self, t_s: float) -> int:
        return self.start_ns + int(round(t_s * 1e9))

    async def wait_until(self, t_s: float) -> None:
        if not math.isfinite(self.speed):
            await asyncio.sleep(0)
            return
        delay = self._wall0 + t_s / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
