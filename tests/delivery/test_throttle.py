"""The tenant throttle: pacing, the hard window cap, 429 pauses and rate recovery."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from campaign_writer.throttle import RateController, TenantThrottle
from tests.support.clock import FakeClock


def max_in_any_window(times: list[float], width: float = 1.0) -> int:
    """The largest number of timestamps inside any half-open window of ``width``."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


async def grants(throttle: TenantThrottle, clock: FakeClock, count: int) -> list[float]:
    stamps = []
    for _ in range(count):
        await throttle.acquire()
        stamps.append(clock())
    return stamps


async def test_calls_are_paced_evenly_under_the_limit() -> None:
    """At limit 20, 200 calls are spaced 1/19.6 s apart and no 1 s window holds more than 20."""
    clock = FakeClock()
    throttle = TenantThrottle(20, clock=clock, sleep=clock.sleep)
    stamps = await grants(throttle, clock, 200)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) == pytest.approx(1 / 19.6)
    assert max(gaps) == pytest.approx(1 / 19.6)
    assert max_in_any_window(stamps) <= 20
    assert (stamps[-1] - stamps[0]) == pytest.approx(199 / 19.6)


async def test_headroom_sets_the_pace_and_how_late_a_shared_time_may_be_used() -> None:
    """campaign.headroom 0.99: calls 1/19.8 s apart at limit 20, and a shared time is void
    past half the 10 ms that headroom leaves in a second (0.98: 10 ms of 20)."""
    clock = FakeClock()
    throttle = TenantThrottle(20, headroom=0.99, clock=clock, sleep=clock.sleep)
    stamps = await grants(throttle, clock, 100)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) == pytest.approx(1 / 19.8)
    assert max(gaps) == pytest.approx(1 / 19.8)
    assert throttle.late_s == pytest.approx((1 / 0.99 - 1) / 2)
    assert TenantThrottle(20).late_s == pytest.approx(0.0102, abs=1e-4)


async def test_window_cap_holds_even_if_pacing_asks_for_more() -> None:
    """The sliding window admits at most tps_limit calls per second, whatever the rate."""
    clock = FakeClock()
    throttle = TenantThrottle(10, headroom=3.0, clock=clock, sleep=clock.sleep)
    stamps = await grants(throttle, clock, 100)
    assert max_in_any_window(stamps) == 10


async def test_retry_after_pauses_every_caller_and_is_capped() -> None:
    """A 429 with Retry-After holds the next grant back that long, capped at the configured cap."""
    clock = FakeClock()
    throttle = TenantThrottle(20, retry_after_cap_s=5.0, clock=clock, sleep=clock.sleep)
    await throttle.acquire()
    before = clock()
    assert throttle.on_throttled(3.0) == 3.0
    await throttle.acquire()
    assert clock() - before >= 3.0
    before = clock()
    assert throttle.on_throttled(600.0) == 5.0
    await throttle.acquire()
    assert 5.0 <= clock() - before < 5.5


async def test_without_retry_after_the_pause_backs_off_exponentially() -> None:
    """Consecutive 429s without Retry-After pause 1, 2, 4, 8 s (a 1 s window drains in the
    first); the cap bounds it and a success resets it."""
    clock = FakeClock()
    throttle = TenantThrottle(20, retry_after_cap_s=6.0, clock=clock, sleep=clock.sleep)
    assert [throttle.on_throttled(None) for _ in range(4)] == [1.0, 2.0, 4.0, 6.0]
    throttle.on_accepted()
    assert throttle.on_throttled(None) == 1.0


def test_a_sudden_429_cuts_the_rate_to_at_most_eighty_percent() -> None:
    """Out of the blue (the limit fell), the ceiling is 0.8 x the rate, or lower if Campaign
    visibly accepted less; the rate restarts below it, plateaus at it, then probes up."""
    controller = RateController(20)
    assert controller.rate(0.0) == pytest.approx(19.6)
    assert controller.on_throttled(10.0, accepted_rate=20.0)
    assert controller.ceiling == pytest.approx(19.6 * RateController.DECREASE)
    controller = RateController(20)
    controller.on_throttled(10.0, accepted_rate=10.0)
    assert controller.ceiling == pytest.approx(9.8)
    assert controller.rate(10.0) == pytest.approx(9.8 * RateController.DROP)
    plateau = RateController.MIN_PLATEAU_S
    assert controller.rate(10.0 + plateau) == pytest.approx(9.8)
    assert controller.rate(10.0 + plateau * 0.5) < 9.8
    assert controller.rate(10.0 + plateau * 3) > 9.8
    assert controller.rate(10.0 + 1000) == pytest.approx(19.6)  # never above the calibration


def test_a_429_while_probing_sets_the_ceiling_to_what_was_accepted() -> None:
    """Throttled above a ceiling that held, the new ceiling is the accepted rate, and the
    plateau before the next probe doubles (up to its maximum)."""
    controller = RateController(20)
    controller.on_throttled(0.0, accepted_rate=10.0)
    probe_at = RateController.MIN_PLATEAU_S * 2.5
    assert controller.rate(probe_at) > 9.8
    controller.on_throttled(probe_at, accepted_rate=10.0)
    assert controller.ceiling == pytest.approx(9.8)
    assert controller._plateau == RateController.MIN_PLATEAU_S * 2
    controller.on_throttled(probe_at + 20, accepted_rate=10.0)
    controller.on_throttled(probe_at + 40, accepted_rate=10.0)
    assert controller._plateau == RateController.MAX_PLATEAU_S


def test_a_429_before_the_plateau_means_the_ceiling_was_too_high() -> None:
    """A 429 while still climbing to the ceiling cuts again and keeps the plateau short."""
    controller = RateController(20)
    controller.on_throttled(0.0, accepted_rate=0.0)
    first = controller.ceiling
    controller.on_throttled(1.5, accepted_rate=0.0)
    assert controller.ceiling < first
    assert controller._plateau == RateController.MIN_PLATEAU_S


def test_one_episode_of_429s_lowers_the_rate_once() -> None:
    """429s arriving within a second of each other count as one episode."""
    controller = RateController(20)
    assert controller.on_throttled(5.0, accepted_rate=10.0)
    assert not controller.on_throttled(5.3, accepted_rate=3.0)
    assert controller.ceiling == pytest.approx(9.8)


def test_accepted_rate_is_measured_over_the_last_second() -> None:
    """The throttle counts calls Campaign accepted in the last second of wall time."""
    clock = FakeClock()
    throttle = TenantThrottle(20, clock=clock, sleep=clock.sleep)
    for _ in range(12):
        throttle.on_accepted()
        clock.advance(0.05)
    assert throttle.accepted_rate(clock()) == 12.0
    clock.advance(0.88)
    assert throttle.accepted_rate(clock()) == 2.0  # those of the last second only


def test_rate_changes_are_reported() -> None:
    """The rate callback (the /metrics gauge) sees the lowered rate."""
    seen: list[float] = []
    clock = FakeClock()
    throttle = TenantThrottle(20, clock=clock, sleep=clock.sleep, on_rate_change=seen.append)
    throttle.rate()
    for _ in range(10):
        throttle.on_accepted()
    throttle.on_throttled(None)
    assert seen[0] == pytest.approx(19.6)
    assert seen[-1] == pytest.approx(9.8 * RateController.DROP)


async def test_concurrent_callers_share_one_budget_in_real_time() -> None:
    """40 tasks racing for slots at limit 40 get at most 40 grants in any real 1 s window."""
    throttle = TenantThrottle(40)
    stamps: list[float] = []
    deadline = time.monotonic() + 1.6

    async def worker() -> None:
        while time.monotonic() < deadline:
            await throttle.acquire()
            stamps.append(time.monotonic())

    await asyncio.gather(*(worker() for _ in range(40)))
    assert max_in_any_window(stamps) <= 40
    assert len(stamps) >= 50  # and the budget was actually used


async def test_repr_shows_limit_rate_pause_and_throttle_episodes() -> None:
    """A throttle's repr says its limit, current rate, pause left and 429 episodes."""
    clock = FakeClock()
    throttle = TenantThrottle(20, retry_after_cap_s=5.0, clock=clock, sleep=clock.sleep)
    assert repr(throttle).startswith("TenantThrottle(limit=20, rate=19.600, paused_for=0.000,")
    throttle.on_throttled(3.0)
    shown = repr(throttle)
    assert "paused_for=3.000" in shown and "throttled_episodes=1" in shown


BAD_STATE = [
    (field, bad)
    for field in ("limit", "ceiling", "start_rate", "plateau")
    for bad in ("0", "-1", "nan", "inf", "x")
] + [("decreased_at", "x")]


@pytest.mark.parametrize(("field", "bad"), BAD_STATE)
def test_shared_rate_state_that_makes_no_sense_is_ignored(field: str, bad: str) -> None:
    """Rate state read back from Redis with a value no writer publishes (another version,
    a hand edit) leaves the controller as it was instead of raising into a call."""
    controller = RateController(20.0)
    controller.on_throttled(10.0, 15.0)
    state = controller.export(lambda t: t)
    before = (controller.limit, controller.ceiling, controller.rate(11.0))
    controller.adopt({**state, field: bad}, lambda t: t)
    assert (controller.limit, controller.ceiling, controller.rate(11.0)) == before
