"""Fake clocks: one for code that takes ``clock`` and ``sleep`` callables, and an
event loop whose own time is virtual, for code that waits on asyncio's timers."""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any


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


class _JumpingSelector(selectors.DefaultSelector):
    """Waits for real only while something may still come (a thread's result, a
    socket); once nothing has come for ``idle_s``, jumps the loop to its next timer."""

    def __init__(self, idle_s: float) -> None:
        super().__init__()
        self.idle_s = idle_s
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0 or self.loop is None:
            return super().select(timeout)
        events = super().select(min(timeout, self.idle_s))
        if not events:
            self.loop.virtual_now += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: every timer (``asyncio.sleep``, ``wait_for``,
    ``call_later``) fires as soon as the loop has nothing else to do, and ``time()``
    moves only by those jumps.

    Threads and sockets are still waited for in real time: when the loop is idle it
    first waits ``idle_s`` real seconds for them, so the queue's SQLite thread answers
    before time jumps. Code under test takes ``loop.time`` as its clock.
    """

    def __init__(self, start: float = 1000.0, idle_s: float = 0.002) -> None:
        selector = _JumpingSelector(idle_s)
        super().__init__(selector)
        selector.loop = self
        self.virtual_now = start

    def time(self) -> float:
        return self.virtual_now


def on_virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh :class:`VirtualTimeLoop` (fixtures pass through)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        loop = VirtualTimeLoop()
        try:
            loop.run_until_complete(test(*args, **kwargs))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    return run
