"""The tenant throttle: one per Campaign tenant, shared by every call to it.

Three layers, each call passing them in this order:

1. **Per-method lanes** (``[campaign.limits]``): a method with a limit of its own is
   paced at it (and capped by its own 1-second window) before it asks the tenant, so
   one method's backlog never takes more of the tenant's budget than its limit.
2. **Pacing.** Calls are spaced evenly at the current rate (a reservation per call,
   as in GCRA), never in bursts: an even stream is what all three limiter models
   (sliding window, fixed window, token bucket with a small burst) accept best. The
   rate starts at ``tps_limit x headroom`` so network jitter cannot push two
   calls into one server window. With a shared budget
   (:class:`~campaign_writer.throttle.budget.SharedBudget`) the times come from the one
   schedule in Redis instead; without Redis, from local pacing at this instance's share.
3. **A hard cap.** A sliding window admits at most ``tps_limit`` calls in any
   1-second window (this instance's share of it while a shared budget's Redis is
   lost), whatever the pacing decides.

Which budget a 429 is charged to: Campaign's 429 names no method, so it is the
method's own when that method has a limit and was sending at 3/4 of its current rate
or more over the last second (or since it began, if later, but at least half a
second): only that lane pauses and slows. Otherwise it is the tenant's: everyone
pauses and the tenant rate drops, on every instance sharing the budget.

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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from ..backoff import delay
from ..logs import get_logger
from .autolimit import LimitLearner
from .budget import BudgetMode, SharedBudget
from .pacing import Clock, MethodLane, RateController, Sleep, SlidingWindow

__all__ = ["InFlightLimit", "RateController", "TenantThrottle"]

log = get_logger("throttle")


class TenantThrottle:
    """Admission for every Campaign call: method lanes, pacing (local or shared), a hard
    window cap, 429 pauses, and the learned limit when ``tps_limit = "auto"``."""

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
        method_limits: Mapping[str, float] | None = None,
        learner: LimitLearner | None = None,
        budget: SharedBudget | None = None,
    ) -> None:
        self.controller = RateController(tps_limit, headroom=headroom)
        # A shared time used later than this is void: half the slack the headroom leaves
        # in a 1 s window (1 / 0.98 - 1 = 20 ms), whatever the rate, so a late call never
        # makes the 21st of a window on Campaign's side, with room for clock offsets.
        self.late_s = max(0.001, (1.0 / headroom - 1.0) / 2)
        self.retry_after_cap_s = retry_after_cap_s
        self._clock = clock
        self._sleep = sleep
        self._window = SlidingWindow(max(1, math.floor(tps_limit)), clock, sleep)
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._consecutive_throttles = 0
        self._accepted: deque[float] = deque()
        self._on_rate_change = on_rate_change
        self._reported_rate = -1.0
        self.throttled_episodes = 0
        self.calls_admitted = 0
        self._callers = 0  # calls inside acquire: the demand a shared reservation serves
        self.lanes = {
            method: MethodLane(method, limit, headroom, clock, sleep)
            for method, limit in (method_limits or {}).items()
        }
        self.learner = learner
        if learner is not None:
            self.set_limit(learner.limit)
        self.budget = budget
        self._background: set[asyncio.Task[Any]] = set()
        self.on_limit_learned: Callable[[float], None] | None = None
        if budget is not None:
            budget.bind(rate=lambda: self.rate(), on_state=self._adopt)

    # --- admission -------------------------------------------------------------------

    def ready_at(self, method: str) -> float:
        """When a call of ``method`` would no longer wait behind that method's own earlier
        calls (0 for a method without a limit of its own). The batcher holds a lane until
        then, so a method at its limit does not fill the in-flight slots with calls that
        only wait, while other methods' lanes have work."""
        lane = self.lanes.get(method)
        return 0.0 if lane is None else lane.ready_at()

    async def acquire(self, method: str | None = None) -> None:
        """Wait for this call's turn. Never raises; cancellation is honoured."""
        self._callers += 1
        try:
            await self._admit(method)
        finally:
            self._callers -= 1

    async def _admit(self, method: str | None) -> None:
        lane = self.lanes.get(method) if method is not None else None
        if lane is not None:
            await lane.pace(self.share)
        budget = self.budget
        waited = False
        while True:
            taken, slept, at = await self._turn()
            waited = waited or slept
            if taken is None:
                continue  # a 429 pause, or a time gone void: start over
            if budget is not None:
                # The hard cap is this instance's share while Redis is lost, as the pacing,
                # and the part of the limit it reserves at while rejoining.
                part = budget.share if budget.mode == "fallback" else budget.ramp()
                self._window.limit = max(1, math.floor(self.controller.limit * part + 1e-9))
            await self._window.acquire()
            if taken == "shared" and budget is not None and self._clock() - at > self.late_s:
                # Held at the cap past its time (the cap is this instance's part while it
                # rejoins): sent now, it would bunch with the next holder's. Take another.
                budget.slots_expired += 1
                continue
            if taken == "local" and budget is not None and budget.mode == "shared":
                # Redis came back while this call waited on its local share (for its time,
                # or at the cap, which the share had lowered): that time is not in the
                # shared schedule, so sending on it would add to the schedule's.
                continue
            break
        if lane is not None:
            await lane.cap(self.share)
        self.calls_admitted += 1
        if self.learner is not None:
            self._probe(waited)

    async def _turn(self) -> tuple[Literal["shared", "local"] | None, bool, float]:
        """Wait for this call's time: from the shared schedule or paced locally (``None``:
        start over), whether that meant waiting, and the time."""
        now = self._clock()
        if now < self._paused_until:
            await self._sleep(self._paused_until - now)
            return None, False, now
        rate = self.rate(now)
        budget = self.budget
        if budget is not None:
            shared = await budget.slot(self._callers)
            if shared is not None:
                now = self._clock()
                if shared > now:
                    await self._sleep(shared - now)
                woke = self._clock()
                if woke < self._paused_until:
                    # A 429 here while we waited: this time is void.
                    return None, shared > now, shared
                if woke - shared > self.late_s:
                    # Woke too late (a stalled loop): sent now, it could join the next
                    # second's calls in one window of Campaign's. Take another time.
                    budget.slots_expired += 1
                    return None, shared > now, shared
                return "shared", shared > now, shared
            rate *= budget.share  # Redis lost: this instance's share, locally
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / rate
        if slot <= now:
            return "local", False, slot
        await self._sleep(slot - now)
        if self._clock() < self._paused_until:
            return None, True, slot  # a 429 arrived while we waited: queue behind the pause
        if budget is not None and budget.mode == "shared":
            return None, True, slot  # Redis came back meanwhile: take a shared time instead
        return "local", True, slot

    def _probe(self, waited: bool) -> None:
        assert self.learner is not None
        now = self._clock()
        at_cap = waited and self.controller.rate(now) >= self.controller.max_rate * 0.999
        if (raised := self.learner.on_grant(now, at_cap)) is not None:
            self._learned(raised)

    # --- feedback --------------------------------------------------------------------

    def on_accepted(self, method: str | None = None) -> None:
        """A call reached Campaign and was not throttled."""
        self._consecutive_throttles = 0
        now = self._clock()
        self._accepted.append(now)
        self._trim(now)
        if self.budget is not None:
            self.budget.on_accepted()

    def on_throttled(self, retry_after: float | None, method: str | None = None) -> float:
        """A 429: pause everyone (or the method's lane, when the 429 is charged to it),
        lower the rate. Returns the pause in seconds."""
        now = self._clock()
        self._trim(now)
        self._consecutive_throttles += 1
        if retry_after is not None:
            pause = min(retry_after, self.retry_after_cap_s)
        else:
            # Tenant limits count per second: a first pause of 1 s lets the window drain.
            pause = delay(1.0, self.retry_after_cap_s, self._consecutive_throttles - 1, "none")
        lane = self.lanes.get(method) if method is not None else None
        if lane is not None and lane.owns_429(now, self.share):
            lane.on_throttled(now, pause)
            log.debug("throttled by Campaign", extra={"pause_s": round(pause, 3), "method": method})
            return pause
        accepted = self.accepted_rate(now)
        read_version = self.budget.state_version if self.budget is not None else 0
        if self.controller.on_throttled(now, accepted):
            self.throttled_episodes += 1
            if self.learner is not None:
                self._learned(self.learner.on_throttled(accepted), publish=False)
            if self.budget is not None:
                fields = self.controller.export(self.budget.to_redis)
                self._spawn(self.budget.publish(fields, read_version))
        until = now + pause
        if until > self._paused_until:
            self._paused_until = until
            self._next_slot = until
        if self.budget is not None:
            self.budget.drop_held()
            self._spawn(self.budget.pause(pause))
        log.debug("throttled by Campaign", extra={"pause_s": round(pause, 3)})
        self.rate(now)
        return pause

    def set_limit(self, tps_limit: float) -> None:
        """Recalibrate to a new tenant limit (SIGHUP reload of ``campaign.tps_limit``, or a
        learned one)."""
        self.controller.set_limit(tps_limit)
        self._window.limit = max(1, math.floor(tps_limit))

    def _learned(self, limit: float, *, publish: bool = True) -> None:
        self.set_limit(limit)
        if self.on_limit_learned is not None:
            self.on_limit_learned(limit)
        if publish and self.budget is not None:
            fields = self.controller.export(self.budget.to_redis)
            self._spawn(self.budget.publish(fields, self.budget.state_version))

    def _adopt(self, state: Mapping[str, str], offset: float) -> None:
        """Another instance's 429 episode or learned limit, brought back from Redis."""
        self.controller.adopt(state, lambda shared: shared + offset)
        self._window.limit = max(1, math.floor(self.controller.limit))
        if self.learner is not None:
            self.learner.adopt(self.controller.limit)
            if self.on_limit_learned is not None:
                self.on_limit_learned(self.controller.limit)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- state -----------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"TenantThrottle(limit={self.controller.limit:g}, rate={self.rate():.3f},"
            f" paused_for={self.paused_for:.3f}, throttled_episodes={self.throttled_episodes})"
        )

    @property
    def share(self) -> float:
        """This instance's part of a budget it does not keep alone (:attr:`SharedBudget.share`)."""
        return self.budget.share if self.budget is not None else 1.0

    @property
    def budget_mode(self) -> BudgetMode:
        return "local" if self.budget is None else self.budget.mode

    def rate(self, now: float | None = None) -> float:
        rate = self.controller.rate(self._clock() if now is None else now)
        if self._on_rate_change is not None and abs(rate - self._reported_rate) > 1e-3:
            self._reported_rate = rate
            self._on_rate_change(rate)
        return rate

    def method_rates(self) -> dict[str, float]:
        """Calls/s each method with a limit of its own may use on this instance now."""
        now = self._clock()
        return {method: lane.rate(now, self.share) for method, lane in self.lanes.items()}

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def accepted_rate(self, now: float) -> float:
        """Calls/s Campaign accepted over the last second of wall time (all instances
        together when the budget is shared).

        A tenant limit counts calls per second of wall time, so when we send faster
        than the limit this is the limit itself; after a pause it is lower, which
        only makes the new ceiling cautious until the probe finds the limit again.
        """
        self._trim(now)
        own = len(self._accepted) / self.MEASURE_S
        shared = self.budget is not None and self.budget.mode == "shared"
        return max(self.budget.accepted_rate, own) if self.budget and shared else own

    def stats(self) -> dict[str, Any]:
        """The ``throttle`` object of /v1/stats."""
        budget = self.budget
        return {
            "rate_limit": round(self.rate(), 3),
            "paused_for_s": round(self.paused_for, 3),
            "budget": self.budget_mode,
            "budget_name": budget.name if budget is not None else None,
            "instances_seen": budget.instances_seen if budget is not None else 1,
            "learned_limit": round(self.controller.limit, 3) if self.learner else None,
            "redis_round_trips": budget.round_trips if budget is not None else 0,
            "calls_admitted": self.calls_admitted,
            "slots_expired": budget.slots_expired if budget is not None else 0,
            "method_limits": {m: round(r, 3) for m, r in self.method_rates().items()},
        }

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
