"""A fake monotonic clock for code that takes ``clock`` and ``sleep`` callables."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time moves only when someone sleeps: ``sleep(d)`` advances it by ``d`` at once.

    Exact for one caller at a time; each sleep still yields to the event loop so
    other tasks run in between.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds
