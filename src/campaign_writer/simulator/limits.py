"""The tenant's limits: TPS limiter models, the concurrency cap and the latency model.

Adobe does not publish how Campaign counts calls against its TPS limit, so three
models are offered; each admits or refuses a call at a given instant and says how
long until it would admit one (the ``Retry-After`` hint):

* ``sliding`` (default): at most ``limit`` calls in any window of one second
  ending now;
* ``fixed``: at most ``limit`` calls per calendar second (``floor(t)``), which lets
  ``2 * limit`` through across a second boundary;
* ``token_bucket``: ``limit`` tokens per second into a bucket of ``burst``.

Only admitted calls count; refused ones do not eat the budget. Every model reads
an injected clock, so tests drive them with a fake one, exactly and fast.

A limit change keeps the model's history (halving the limit mid-run takes effect
at once); a model change starts the new model empty.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "ConcurrencyGate",
    "FixedWindow",
    "Limiter",
    "SlidingWindow",
    "TokenBucket",
    "latency_s",
    "make_limiter",
]

Clock = Callable[[], float]


class Limiter(Protocol):
    limit: float

    def admit(self) -> bool:
        """Count the call and return True if it fits the limit; otherwise False."""
        ...

    def wait_s(self) -> float:
        """Seconds until a call would be admitted (0 when one would be now)."""
        ...


class SlidingWindow:
    """At most ``limit`` admitted calls in any one-second window ending now."""

    def __init__(self, limit: float, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._times: deque[float] = deque()

    def _trim(self, now: float) -> None:
        times = self._times
        edge = now - 1.0
        while times and times[0] <= edge:
            times.popleft()

    def admit(self) -> bool:
        now = self._clock()
        self._trim(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def wait_s(self) -> float:
        now = self._clock()
        self._trim(now)
        excess = len(self._times) - math.ceil(self.limit) + 1
        if excess <= 0:
            return 0.0
        # The call that must leave the window before one more fits.
        return max(0.0, self._times[excess - 1] + 1.0 - now)


class FixedWindow:
    """At most ``limit`` admitted calls per calendar second of the clock."""

    def __init__(self, limit: float, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._second = -1
        self._count = 0

    def admit(self) -> bool:
        second = math.floor(self._clock())
        if second != self._second:
            self._second, self._count = second, 0
        if self._count >= self.limit:
            return False
        self._count += 1
        return True

    def wait_s(self) -> float:
        now = self._clock()
        if math.floor(now) != self._second or self._count < self.limit:
            return 0.0
        return math.floor(now) + 1.0 - now


class TokenBucket:
    """``limit`` tokens per second into a bucket holding ``burst``; a call takes one."""

    def __init__(self, limit: float, clock: Clock, burst: int) -> None:
        self.limit = limit
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.limit)
        self._at = now

    def admit(self) -> bool:
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait_s(self) -> float:
        self._refill()
        if self._tokens >= 1.0 or self.limit <= 0:
            return 0.0
        return (1.0 - self._tokens) / self.limit


def make_limiter(model: str, limit: float, clock: Clock, burst: int) -> Limiter | None:
    """A limiter of ``model``, or ``None`` when ``limit`` is 0 (no limit)."""
    if limit <= 0:
        return None
    if model == "sliding":
        return SlidingWindow(limit, clock)
    if model == "fixed":
        return FixedWindow(limit, clock)
    if model == "token_bucket":
        return TokenBucket(limit, clock, burst)
    raise ValueError(f"unknown limiter model {model!r}")


class ConcurrencyGate:
    """Caps the calls processed at once; beyond the cap a call waits in FIFO order.

    ``capacity`` 0 means no cap. The capacity can change at run time; waiters are
    let in as soon as the new capacity allows.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def full(self) -> bool:
        return 0 < self.capacity <= self.in_flight

    def try_enter(self) -> bool:
        if self.full() or self._waiters:
            return False
        self._enter()
        return True

    def _enter(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    async def enter(self) -> None:
        if self.try_enter():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # we were let in just as we were cancelled
            else:
                self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        self.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        """Let waiters in while there is room (after a leave or a capacity change)."""
        while self._waiters and not self.full():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._enter()
                waiter.set_result(None)


def latency_s(
    base_ms: float, per_record_ms: float, jitter: float, records: int, rng: random.Random
) -> float:
    """Base plus per-record cost, times a lognormal factor of median 1 (sigma ``jitter``)."""
    latency = (base_ms + per_record_ms * records) / 1000.0
    if latency <= 0.0:
        return 0.0
    if jitter > 0.0:
        latency *= rng.lognormvariate(0.0, jitter)
    return latency
