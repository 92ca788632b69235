"""A flag that tasks wait on with a timeout, for the hot waits of delivery.

``asyncio.wait_for(event.wait(), timeout)`` wraps the wait in a new task and its
timeout in a second future, on every wait. The feeder and the dispatcher wait once or
twice for every intake commit, so that machinery showed in profiles. :class:`Wakeup`
keeps the semantics of :class:`asyncio.Event` that they use (set, clear, is_set, wait)
and takes the timeout as one timer handle on a plain future.
"""

from __future__ import annotations

import asyncio

__all__ = ["Wakeup"]


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Wakeup:
    """Set, clear and wait, like :class:`asyncio.Event`; ``wait`` takes a timeout."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[bool]] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._flag:
            return
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout: float | None = None) -> bool:
        """True once the flag is set; False if ``timeout`` seconds pass first."""
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(max(0.0, timeout), _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:  # timed out or cancelled, not woken by set()
                self._waiters.remove(waiter)
