"""The tenant throttle: one per Campaign tenant, shared by every call to it.

Two layers:

1. **Pacing.** Calls are spaced evenly at the current rate (a reservation per call,
   as in GCRA), never in bursts: an even stream is what all three limiter models
   (sliding window, fixed window, token bucket with a small burst) accept best. The
   rate starts at ``tps_limit x headroom`` so network jitter cannot push two
   calls into one server window.
2. **A hard cap.** asyncio-throttle's sliding window admits at most ``tps_limit``
   calls in any 1-second window, whatever the pacing decides.

On HTTP 429 the whole sink pauses (``Retry-After``, capped, or an exponential
backoff), and :class:`RateController` lowers the rate to what Campaign was actually
accepting in the last second. The rate then climbs back on a cubic curve: quickly to
just under that ceiling, a plateau there, then a probe upward toward ``tps_limit``.
The plateau doubles each time the same ceiling is hit again, so a lowered limit that
stays low is probed rarely. Waiting here is normal flow control: it spends no retry
budget and logs nothing above DEBUG.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from asyncio_throttle.throttler import Throttler

from .backoff import delay
from .logs import get_logger

__all__ = ["InFlightLimit", "RateController", "TenantThrottle"]

log = get_logger("throttle")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateController:
    """Target call rate over time: multiplicative decrease, cubic recovery. Pure.

    ``rate(now)`` is the rate to pace at; ``on_throttled(now, accepted_rate)`` records
    a 429 episode, where ``accepted_rate`` is the rate (calls/s) at which Campaign was
    accepting calls just before (0 when unknown).
    """

    DECREASE = 0.8  # the ceiling after a 429 is at most this share of the rate that got it
    DROP = 0.9  # how far below the new ceiling to restart after a 429
    MIN_PLATEAU_S = 2.0
    MAX_PLATEAU_S = 10.0
    EPISODE_S = 1.0  # 429s closer together than this are one episode

    def __init__(self, limit: float, *, headroom: float = 0.98, min_rate: float = 0.2) -> None:
        self.set_limit(limit, headroom=headroom)
        self.min_rate = min_rate
        self._ceiling = self.max_rate
        self._start_rate = self.max_rate
        self._plateau = self.MIN_PLATEAU_S
        self._decreased_at: float | None = None

    def set_limit(self, limit: float, *, headroom: float | None = None) -> None:
        if limit <= 0:
            raise ValueError("tps limit must be positive")
        self.limit = float(limit)
        if headroom is not None:
            self.headroom = headroom
        self.max_rate = self.limit * self.headroom

    @property
    def ceiling(self) -> float:
        return self._ceiling

    def rate(self, now: float) -> float:
        if self._decreased_at is None:
            return self.max_rate
        elapsed = now - self._decreased_at
        plateau = self._plateau
        gap = self._ceiling - self._start_rate
        # W(t) = ceiling + gap * ((t - K) / K)^3: W(0) = start, flat at t = K, then up.
        value = self._ceiling + gap * ((elapsed - plateau) / plateau) ** 3
        return max(self.min_rate, min(self.max_rate, value))

    def on_throttled(self, now: float, accepted_rate: float) -> bool:
        """Lower the rate; return False if this 429 belongs to an episode already counted."""
        if self._decreased_at is not None and now - self._decreased_at < self.EPISODE_S:
            return False
        current = self.rate(now)
        probing = self._decreased_at is not None and now - self._decreased_at > self._plateau
        if probing and accepted_rate > 0:
            # Throttled while probing above a ceiling that held: what Campaign accepted
            # meanwhile is the limit itself.
            ceiling = min(current, accepted_rate * self.headroom)
        else:
            # Out of the blue (the limit fell): at least a multiplicative cut, so a far
            # lower limit is found in a few episodes; lower still if Campaign visibly
            # accepted less than that.
            ceiling = current * self.DECREASE
            if accepted_rate > 0:
                ceiling = min(ceiling, accepted_rate * self.headroom)
        ceiling = max(self.min_rate, ceiling)
        if probing and ceiling >= self._ceiling * 0.9:
            # Throttled while probing above a ceiling that held for a whole plateau:
            # the ceiling is right, so probe it less often.
            self._plateau = min(self.MAX_PLATEAU_S, self._plateau * 2)
        else:
            self._plateau = self.MIN_PLATEAU_S
        self._ceiling = ceiling
        self._start_rate = max(self.min_rate, ceiling * self.DROP)
        self._decreased_at = now
        return True


class _Window(Throttler):
    """asyncio-throttle's sliding window (``rate_limit`` grants per ``period``), run on
    the throttle's clock so tests can drive it with a fake one."""

    def __init__(self, rate_limit: int, clock: Clock, sleep: Sleep) -> None:
        super().__init__(rate_limit=rate_limit, period=1.0, retry_interval=0.005)
        self._clock = clock
        self._sleep_for = sleep

    def flush(self) -> None:
        now = self._clock()
        logs = self._task_logs
        while logs and now - logs[0] >= self.period:
            logs.popleft()

    async def acquire(self) -> None:
        while True:
            self.flush()
            if len(self._task_logs) < self.rate_limit:
                break
            # Sleep exactly until the oldest grant leaves the window, not in polls.
            await self._sleep_for(
                max(self.retry_interval, self._task_logs[0] + self.period - self._clock())
            )
        self._task_logs.append(self._clock())


class TenantThrottle:
    """Admission for every Campaign call: pacing, a hard window cap, 429 pauses."""

    MEASURE_S = 1.0  # window over which the accepted rate is measured

    def __init__(
        self,
        tps_limit: float,
        *,
        headroom: float = 0.98,
        retry_after_cap_s: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_rate_change: Callable[[float], None] | None = None,
    ) -> None:
        self.controller = RateController(tps_limit, headroom=headroom)
        self.retry_after_cap_s = retry_after_cap_s
        self._clock = clock
        self._sleep = sleep
        self._window = _Window(max(1, math.floor(tps_limit)), clock, sleep)
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._consecutive_throttles = 0
        self._accepted: deque[float] = deque()
        self._on_rate_change = on_rate_change
        self._reported_rate = -1.0
        self.throttled_episodes = 0

    # --- admission -------------------------------------------------------------------

    async def acquire(self) -> None:
        """Wait for this call's turn. Never raises; cancellation is honoured."""
        while True:
            now = self._clock()
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                continue
            rate = self.rate(now)
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / rate
            if slot > now:
                await self._sleep(slot - now)
                if self._clock() < self._paused_until:
                    continue  # a 429 arrived while we waited: queue behind the pause
            break
        await self._window.acquire()

    # --- feedback --------------------------------------------------------------------

    def on_accepted(self) -> None:
        """A call reached Campaign and was not throttled."""
        self._consecutive_throttles = 0
        now = self._clock()
        self._accepted.append(now)
        self._trim(now)

    def on_throttled(self, retry_after: float | None) -> float:
        """A 429: pause everyone, lower the rate. Returns the pause in seconds."""
        now = self._clock()
        self._trim(now)
        self._consecutive_throttles += 1
        if self.controller.on_throttled(now, self.accepted_rate(now)):
            self.throttled_episodes += 1
        if retry_after is not None:
            pause = min(retry_after, self.retry_after_cap_s)
        else:
            # Tenant limits count per second: a first pause of 1 s lets the window drain.
            pause = delay(1.0, self.retry_after_cap_s, self._consecutive_throttles - 1, "none")
        until = now + pause
        if until > self._paused_until:
            self._paused_until = until
            self._next_slot = until
        log.debug("throttled by Campaign", extra={"pause_s": round(pause, 3)})
        self.rate(now)
        return pause

    def set_limit(self, tps_limit: float) -> None:
        """Recalibrate to a new tenant limit (SIGHUP reload of ``campaign.tps_limit``)."""
        self.controller.set_limit(tps_limit)
        self._window.rate_limit = max(1, math.floor(tps_limit))

    # --- state -----------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"TenantThrottle(limit={self.controller.limit:g}, rate={self.rate():.3f},"
            f" paused_for={self.paused_for:.3f}, throttled_episodes={self.throttled_episodes})"
        )

    def rate(self, now: float | None = None) -> float:
        rate = self.controller.rate(self._clock() if now is None else now)
        if self._on_rate_change is not None and abs(rate - self._reported_rate) > 1e-3:
            self._reported_rate = rate
            self._on_rate_change(rate)
        return rate

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def accepted_rate(self, now: float) -> float:
        """Calls/s Campaign accepted over the last second of wall time.

        A tenant limit counts calls per second of wall time, so when we send faster
        than the limit this is the limit itself; after a pause it is lower, which
        only makes the new ceiling cautious until the probe finds the limit again.
        """
        self._trim(now)
        return len(self._accepted) / self.MEASURE_S

    def _trim(self, now: float) -> None:
        horizon = now - self.MEASURE_S
        accepted = self._accepted
        while accepted and accepted[0] < horizon:
            accepted.popleft()


class InFlightLimit:
    """The in-flight cap: a semaphore whose size follows rate x latency (Little's law).

    About ``rate x latency`` calls must be in flight to use the throttle's whole
    budget, so the cap tracks ``ceil(1.5 x rate x latency) + 2``, at most ``maximum``.
    """

    def __init__(self, maximum: int, on_change: Callable[[int], None] | None = None) -> None:
        self.maximum = max(1, maximum)
        self.limit = min(self.maximum, 2)
        self.current = 0
        self.latency_s: float | None = None
        self._changed = asyncio.Condition()
        self._on_change = on_change
        if on_change is not None:
            on_change(self.limit)

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.current < self.limit)
            self.current += 1

    async def release(self) -> None:
        async with self._changed:
            self.current -= 1
            self._changed.notify_all()

    async def observe(self, latency_s: float, rate: float) -> None:
        """Fold one call's latency in and resize: ceil(1.5 x rate x latency) + 2."""
        previous = self.latency_s
        self.latency_s = latency_s if previous is None else previous * 0.8 + latency_s * 0.2
        wanted = max(2, min(self.maximum, math.ceil(1.5 * rate * self.latency_s) + 2))
        if wanted != self.limit:
            async with self._changed:
                self.limit = wanted
                self._changed.notify_all()
            if self._on_change is not None:
                self._on_change(wanted)

    def __repr__(self) -> str:
        return f"InFlightLimit(current={self.current}, limit={self.limit}, max={self.maximum})"
