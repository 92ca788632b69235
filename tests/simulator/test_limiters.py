"""The TPS limiter models, exactly on a fake clock, then over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from campaign_writer.campaign.outcome import Throttled
from campaign_writer.simulator.limits import (
    ConcurrencyGate,
    FixedWindow,
    SlidingWindow,
    TokenBucket,
    make_limiter,
)
from tests.support.simulator import FakeClock


def admitted(limiter: SlidingWindow | FixedWindow | TokenBucket, calls: int) -> int:
    return sum(limiter.admit() for _ in range(calls))


def test_sliding_window_admits_limit_in_any_one_second_window() -> None:
    """Sliding: at most `limit` calls in any 1 s window, and the slot frees 1 s after use."""
    clock = FakeClock(1000.4)
    limiter = SlidingWindow(5, clock)
    assert admitted(limiter, 3) == 3
    clock.advance(0.5)  # 1000.9
    assert admitted(limiter, 5) == 2
    assert limiter.wait_s() == pytest.approx(0.5)  # the first three leave at 1001.4
    clock.advance(0.2)  # 1001.1: a fixed window would have reset here
    assert admitted(limiter, 5) == 0
    clock.advance(0.3)  # 1001.4: the first three left the window
    assert admitted(limiter, 5) == 3
    assert limiter.wait_s() == pytest.approx(0.5)


def test_fixed_window_resets_on_the_second_and_allows_a_double_burst() -> None:
    """Fixed: the count resets at each whole second, so 2x limit can pass across a boundary."""
    clock = FakeClock(1000.9)
    limiter = FixedWindow(5, clock)
    assert admitted(limiter, 10) == 5
    assert limiter.wait_s() == pytest.approx(0.1)
    clock.advance(0.1)  # 1001.0
    assert admitted(limiter, 10) == 5  # 10 calls within 0.1 s
    clock.advance(0.5)
    assert admitted(limiter, 1) == 0


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    """Token bucket: a full bucket lets `burst` through, then refills at `limit` per second."""
    clock = FakeClock()
    limiter = TokenBucket(10, clock, burst=3)
    assert admitted(limiter, 10) == 3
    assert limiter.wait_s() == pytest.approx(0.1)
    clock.advance(0.25)
    assert admitted(limiter, 10) == 2  # 2.5 tokens refilled
    clock.advance(10)
    assert admitted(limiter, 10) == 3  # never more than the bucket holds


def test_lowering_the_limit_keeps_the_window_history() -> None:
    """Halving the limit of a live sliding window refuses calls at once, counting earlier ones."""
    clock = FakeClock()
    limiter = SlidingWindow(10, clock)
    assert admitted(limiter, 6) == 6
    limiter.limit = 5
    assert admitted(limiter, 1) == 0
    clock.advance(1.0)
    assert admitted(limiter, 10) == 5


def test_zero_limit_means_no_limiter() -> None:
    """tps_limit 0 builds no limiter; an unknown model is refused."""
    assert make_limiter("sliding", 0, FakeClock(), 5) is None
    assert isinstance(make_limiter("token_bucket", 3, FakeClock(), 5), TokenBucket)
    with pytest.raises(ValueError, match="unknown limiter"):
        make_limiter("leaky", 3, FakeClock(), 5)


async def test_concurrency_gate_queues_in_order_and_follows_capacity_changes() -> None:
    """Beyond the cap calls wait FIFO; raising the cap lets waiters in at once."""
    gate = ConcurrencyGate(1)
    await gate.enter()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await gate.enter()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3 and not order
    gate.leave()
    await asyncio.sleep(0)
    assert order == [0]
    gate.capacity = 3
    gate.wake()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and gate.in_flight == 3 and gate.peak == 3


@pytest.mark.parametrize("model", ["sliding", "fixed", "token_bucket"])
async def test_each_model_throttles_over_http(simulator_factory, model: str) -> None:
    """Over HTTP, every model answers 429 past the limit, with Retry-After and a JSON body."""
    clock = FakeClock(1000.5)
    sim = await simulator_factory(
        tps_limit=3, limiter=model, burst=3, latency_ms=0, latency_per_record_ms=0, clock=clock
    )
    replies = await asyncio.gather(*(sim.call("Logoff") for _ in range(8)))
    assert sorted(r.status for r in replies) == [200] * 3 + [429] * 5
    throttled = [r for r in replies if r.status == 429]
    for reply in throttled:
        outcome = reply.outcome()
        assert isinstance(outcome, Throttled)
        assert outcome.retry_after is not None and outcome.retry_after >= 1
        assert b"429050" in reply.body
    stats = await sim.stats()
    assert stats["limiter"] == model
    assert stats["responses_by_status"]["429"] == len(throttled)


async def test_429_switches_and_fixed_retry_after(simulator_factory) -> None:
    """Retry-After and the 429 body can each be turned off; a fixed Retry-After is sent as set."""
    sim = await simulator_factory(tps_limit=1, latency_ms=0, retry_after_s=7)
    replies = [await sim.call("Logoff") for _ in range(2)]
    assert replies[1].status == 429 and replies[1].headers["Retry-After"] == "7"
    await sim.control(retry_after=False, throttle_body=False)
    reply = await sim.call("Logoff")
    assert reply.status == 429
    assert "Retry-After" not in reply.headers and reply.body == b""
    assert reply.outcome() == Throttled(None)


async def test_control_changes_the_limit_and_the_model_mid_run(simulator_factory) -> None:
    """POST /__sim/control halves the limit or swaps the model while the simulator runs."""
    clock = FakeClock()
    sim = await simulator_factory(tps_limit=50, latency_ms=0, clock=clock)
    first = await asyncio.gather(*(sim.call("Logoff") for _ in range(10)))
    assert all(r.status == 200 for r in first)
    await sim.control(tps_limit=8)  # halved below what this second already used
    assert (await sim.call("Logoff")).status == 429
    answer = await sim.control(tps_limit=2, limiter="fixed")
    assert answer["config"]["tps_limit"] == 2 and answer["config"]["limiter"] == "fixed"
    clock.advance(1.0)
    second = await asyncio.gather(*(sim.call("Logoff") for _ in range(6)))
    assert sorted(r.status for r in second) == [200, 200, 429, 429, 429, 429]
    stats = await sim.stats()
    assert stats["tps_limit"] == 2 and stats["limiter"] == "fixed"
    await sim.control(tps_limit=0)
    third = await asyncio.gather(*(sim.call("Logoff") for _ in range(20)))
    assert all(r.status == 200 for r in third)
