"""Pacing pieces of the tenant throttle: the rate controller, a sliding window, and a
method's own lane (see :mod:`campaign_writer.throttle` for how they fit together)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["Clock", "MethodLane", "RateController", "Sleep", "SlidingWindow"]

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

    def export(self, to_shared: Callable[[float], float]) -> dict[str, str]:
        """The state another instance needs to pace at the same rate (times converted
        by ``to_shared``), as text for Redis."""
        decreased = "" if self._decreased_at is None else repr(to_shared(self._decreased_at))
        return {
            "limit": repr(self.limit),
            "ceiling": repr(self._ceiling),
            "start_rate": repr(self._start_rate),
            "plateau": repr(self._plateau),
            "decreased_at": decreased,
        }

    def adopt(self, state: Mapping[str, str], to_local: Callable[[float], float]) -> None:
        """Take the state :meth:`export` gave (another instance's 429 episode)."""
        try:
            limit = float(state["limit"])
            ceiling, start = float(state["ceiling"]), float(state["start_rate"])
            plateau = float(state["plateau"])
            decreased = state["decreased_at"]
            if decreased:
                float(decreased)
        except (KeyError, ValueError):
            return  # not ours to read (another version): keep what we have
        rates = (limit, ceiling, start, plateau)
        if not all(math.isfinite(value) and value > 0 for value in rates):
            return  # nothing a writer publishes (a 0 limit would raise in set_limit)
        self.set_limit(limit)
        self._ceiling, self._start_rate, self._plateau = ceiling, start, plateau
        self._decreased_at = to_local(float(decreased)) if decreased else None

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


class SlidingWindow:
    """A sliding window: at most ``limit`` grants in any ``period`` seconds, on the
    throttle's clock (a deque of grant times; it sleeps exactly until the oldest leaves)."""

    def __init__(self, limit: int, clock: Clock, sleep: Sleep, period: float = 1.0) -> None:
        self.limit = limit
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._grants: deque[float] = deque()

    async def acquire(self) -> None:
        grants = self._grants
        while True:
            now = self._clock()
            while grants and now - grants[0] >= self.period - 1e-9:  # rounding of period
                grants.popleft()
            if len(grants) < self.limit:
                break
            await self._sleep(max(0.005, grants[0] + self.period - now))
        grants.append(self._clock())


class MethodLane:
    """One method's own budget inside the tenant's: pacing, a pause, a window cap."""

    ATTRIBUTE_SHARE = 0.75  # a 429 is the method's when it sent at this share of its rate

    def __init__(self, method: str, limit: float, headroom: float, clock: Clock, sleep: Sleep):
        self.method = method
        self.limit = limit
        self.controller = RateController(limit, headroom=headroom)
        self._clock = clock
        self._sleep = sleep
        # The cap counts over a second and the headroom's slack, not one second: the
        # lane's calls are paced before they wait for the tenant's turn, which moves each
        # by up to one tenant interval, so at the cap they can come bunched, and a 1 s
        # cap would let floor(limit) through with nothing left for arrival jitter (12
        # Ingest calls in 0.996 s drew a 429 in the bench's method-limits case).
        self._window = SlidingWindow(max(1, math.floor(limit)), clock, sleep, 1.0 / headroom)
        self._next_slot = 0.0
        self.paused_until = 0.0
        self._sent: deque[float] = deque()  # this method's calls in the last second
        self._busy_since = 0.0  # since when it has been sending without a 1 s gap

    def rate(self, now: float, share: float) -> float:
        return self.controller.rate(now) * share

    async def pace(self, share: float) -> None:
        while True:
            now = self._clock()
            if now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.rate(now, share)
            if slot > now:
                await self._sleep(slot - now)
                if self._clock() < self.paused_until:
                    continue
            return

    def ready_at(self) -> float:
        """When a new call of this method would start without waiting behind the calls
        of it already paced (or behind its pause)."""
        return max(self._next_slot, self.paused_until)

    async def cap(self, share: float) -> None:
        self._window.limit = max(1, math.floor(self.limit * share))
        await self._window.acquire()
        now = self._clock()
        self._trim(now)
        if not self._sent:
            self._busy_since = now
        self._sent.append(now)

    def owns_429(self, now: float, share: float) -> bool:
        """Was this method sending at its own rate? Then a 429 on it is charged to it."""
        self._trim(now)
        could = self.rate(now, share) * max(0.5, min(1.0, now - self._busy_since))
        return bool(self._sent) and len(self._sent) >= self.ATTRIBUTE_SHARE * could

    def _trim(self, now: float) -> None:
        while self._sent and self._sent[0] < now - 1.0:
            self._sent.popleft()

    def on_throttled(self, now: float, pause: float) -> None:
        # What Campaign accepted of this method over the last second: the calls sent,
        # less the one it refused.
        self.controller.on_throttled(now, float(max(0, len(self._sent) - 1)))
        self.paused_until = max(self.paused_until, now + pause)
        self._next_slot = max(self._next_slot, self.paused_until)
