"""Clocks injected into everything that needs `now`, so the demo can run faster than life.

A `SimClock` maps real (wall) time onto simulated time: sim = sim_origin + (real - real_origin) * speed.
The unix-port firmware receives the same three numbers (`TENDRIL_CLOCK=real_origin,sim_origin,speed`)
and computes the same mapping from its own `time.time()`, so every process agrees on simulated time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds (UTC) in this clock's time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Sleep until this clock reads `when` (unix seconds)."""
        ...


@dataclass(frozen=True)
class WallClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: float) -> None:
        await self.sleep(when - self.now())


@dataclass(frozen=True)
class SimClock:
    sim_origin: float
    speed: float = 1.0
    real_origin: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed}")

    def now(self) -> float:
        return self.sim_origin + (time.time() - self.real_origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def sleep_until(self, sim_time: float) -> None:
        await self.sleep(sim_time - self.now())

    def env_value(self) -> str:
        """The TENDRIL_CLOCK value that makes a firmware process share this clock."""
        return f"{self.real_origin!r},{self.sim_origin!r},{self.speed!r}"
