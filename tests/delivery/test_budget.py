"""The tenant budget shared through a real Redis: the 1-second cap across instances, a
shared 429 pause and rate, no stranded budget, and the fallback when Redis is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from campaign_writer.throttle import TenantThrottle
from campaign_writer.throttle.autolimit import LimitLearner
from campaign_writer.throttle.budget import SharedBudget
from tests.delivery.test_throttle import max_in_any_window
from tests.reliability.brokers import wait_port
from tests.support.services import require_command

pytestmark = pytest.mark.services

Factory = Callable[..., TenantThrottle]


@pytest.fixture
async def shared(redis_port: int) -> AsyncIterator[Factory]:
    """Throttles sharing one budget in the local Redis, under a key prefix of this test."""
    prefix = f"cw-test-budget:{uuid.uuid4().hex}:"
    made: list[SharedBudget] = []

    def make(limit: float = 20.0, url: str = f"redis://127.0.0.1:{redis_port}/0") -> TenantThrottle:
        budget = SharedBudget(url, "tenant", key_prefix=prefix)
        made.append(budget)
        return TenantThrottle(limit, budget=budget)

    yield make
    for budget in made:
        await budget.close()


def record_reservations(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every time the shared budgets started from now on reserve, in seconds on Redis's
    clock, as the script returned them: exact, whatever the load on this machine (a
    stamp taken after the wait moves with a stalled event loop; these do not)."""
    times: list[float] = []
    start = SharedBudget.start

    async def recording_start(self: SharedBudget) -> None:
        script = self._reserve

        async def reserve(*, keys: list[str], args: list[Any]) -> list[Any]:
            reply: list[Any] = await script(keys=keys, args=args)
            first, count, interval = int(reply[1]), int(reply[2]), max(1, int(args[1]))
            times.extend((first + i * interval) / 1e6 for i in range(count))
            return reply

        self._reserve = reserve  # type: ignore[assignment]
        await start(self)

    monkeypatch.setattr(SharedBudget, "start", recording_start)
    return times


async def start(*throttles: TenantThrottle) -> None:
    for throttle in throttles:
        assert throttle.budget is not None
        await throttle.budget.start()


async def drive(throttle: TenantThrottle, stamps: list[float], seconds: float, tasks: int) -> None:
    """``tasks`` callers acquire back to back for ``seconds``, noting each grant's time."""
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < deadline:
            await throttle.acquire("Ingest")
            stamps.append(time.monotonic())
            throttle.on_accepted("Ingest")

    await asyncio.gather(*(caller() for _ in range(tasks)))


async def test_three_instances_never_exceed_the_limit_in_any_second(
    shared: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three throttles with backlogs, one budget of 20/s: no 1 s window holds more than 20
    of the times Redis reserved (on its clock) nor of the grants (on ours) across them,
    each got a part, and a block reservation serves several calls."""
    reserved = record_reservations(monkeypatch)
    throttles = [shared(20.0) for _ in range(3)]
    await start(*throttles)
    stamps: list[list[float]] = [[], [], []]
    await asyncio.gather(*(drive(t, s, 3.0, 4) for t, s in zip(throttles, stamps, strict=True)))
    together = sorted(t for s in stamps for t in s)
    assert len(reserved) >= len(together)
    assert max_in_any_window(reserved) <= 20
    assert max_in_any_window(together) <= 20
    assert all(len(s) > 5 for s in stamps)
    assert all(t.budget is not None and t.budget.instances_seen == 3 for t in throttles)
    trips = sum(t.budget.round_trips for t in throttles if t.budget is not None)
    assert trips < len(together) / 2  # blocks of times: fewer round trips than calls


async def test_a_429_on_one_pauses_the_others_and_they_share_its_rate(shared: Factory) -> None:
    """A 429 with Retry-After 1.5 s on one instance holds every instance's next grant back
    until the shared pause ends, and the lowered rate reaches the others through Redis."""
    first, second = shared(20.0), shared(20.0)
    await start(first, second)
    for _ in range(10):
        await first.acquire()
        first.on_accepted()
    await second.acquire()
    throttled_at = time.monotonic()
    first.on_throttled(1.5)
    await asyncio.sleep(0.05)  # the pause and the new rate reach Redis
    await second.acquire()
    assert time.monotonic() - throttled_at >= 1.4
    assert second.controller.ceiling == pytest.approx(first.controller.ceiling)
    assert second.controller.ceiling < 20 * 0.98


async def test_an_idle_instance_does_not_strand_budget(shared: Factory) -> None:
    """Two instances idle, one with a backlog: the busy one gets far more than a third of
    the budget (a static split would give it 20/3 per second)."""
    idle_one, idle_two, busy = shared(20.0), shared(20.0), shared(20.0)
    await start(idle_one, idle_two, busy)
    stamps: list[float] = []
    await drive(busy, stamps, 3.0, 4)
    assert busy.budget is not None and busy.budget.instances_seen == 3
    assert len(stamps) > 2 * 20 / 3 * 3
    assert max_in_any_window(stamps) <= 20


class OwnRedis:
    """A redis-server of this test's own on a free port, to kill and start again."""

    def __init__(self, folder: Path) -> None:
        self.command = require_command("redis-server", "redis-server")
        self.folder = folder
        with contextlib.closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = await asyncio.to_thread(self._launch)
        await wait_port(self.port, 10)

    def _launch(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self.command, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 10)
            self.process = None
        await wait_port(self.port, 10, is_open=False)


async def test_redis_lost_means_a_local_share_then_rejoining(
    shared: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed: each of two instances paces alone at 0.9 x half the limit, says so
    once in the log and its mode; Redis back (empty): both rejoin the shared schedule,
    say so once, and share a 429's rate again."""
    redis = OwnRedis(tmp_path)
    await redis.start()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        first, second = shared(20.0, url), shared(20.0, url)
        await start(first, second)
        await first.acquire()
        await second.acquire()
        assert first.budget_mode == "shared" and first.share == 0.45
        first.on_throttled(0.2)  # the shared rate state has a version now
        await asyncio.sleep(0.3)
        await second.acquire()
        await redis.kill()
        caplog.set_level(logging.WARNING, logger="campaign_writer.budget")
        stamps: list[float] = []
        await drive(first, stamps, 1.5, 2)
        assert first.budget_mode == "fallback"
        assert first.stats()["budget"] == "fallback"
        assert max_in_any_window(stamps) <= 9  # 0.9 x 20 / 2: two instances were alive
        await redis.start()
        deadline = time.monotonic() + 20
        while {first.budget_mode, second.budget_mode} != {"shared"}:
            assert time.monotonic() < deadline, "did not rejoin within 20 s"
            await asyncio.sleep(0.1)
        await first.acquire()
        # The new Redis is empty: a 429 still reaches the other instance's rate.
        first.on_throttled(0.2)
        await asyncio.sleep(0.3)
        await second.acquire()
        assert second.controller.ceiling == pytest.approx(first.controller.ceiling)
        lost = [r for r in caplog.records if "shared budget lost" in r.getMessage()]
        back = [r for r in caplog.records if "shared budget rejoined" in r.getMessage()]
        assert len(lost) == 2 and len(back) == 2  # once per instance and transition
    finally:
        await redis.kill()


async def test_instances_rejoining_one_by_one_stay_within_the_limit(
    shared: Factory, tmp_path: Path
) -> None:
    """Redis back after a loss, three instances with backlogs rejoin 1 s apart: the ones
    back reserve only the part of the rate of those back, so together with the local
    shares of those still away no 1 s window holds more than the limit; once all are
    back, they share the whole of it again."""
    redis = OwnRedis(tmp_path)
    await redis.start()
    try:
        url = f"redis://127.0.0.1:{redis.port}/0"
        throttles = [shared(20.0, url) for _ in range(3)]
        await start(*throttles)
        stamps: list[float] = []
        running = [asyncio.create_task(drive(t, stamps, 60.0, 4)) for t in throttles]
        await asyncio.sleep(1.0)
        await redis.kill()
        await asyncio.sleep(1.5)
        assert {t.budget_mode for t in throttles} == {"fallback"}
        # Each retries Redis when its gate opens: one by one, as retries fall.
        gates = [math.inf] * 3
        for index, throttle in enumerate(throttles):
            assert throttle.budget is not None
            throttle.budget._due_for_retry = partial(lambda i: time.monotonic() >= gates[i], index)  # type: ignore[method-assign]
        await redis.start()
        back = time.monotonic()
        gates[:] = [back + 1.0 * index for index in range(3)]
        first = throttles[0].budget
        assert first is not None
        while first.mode != "shared":
            assert time.monotonic() < back + 0.9, "the first did not rejoin when due"
            await asyncio.sleep(0.02)
        assert throttles[1].budget_mode == "fallback"
        assert first.ramp() == pytest.approx(1 / 3)  # alone back of three
        await asyncio.sleep(back + 4.0 - time.monotonic())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        assert {t.budget_mode for t in throttles} == {"shared"}
        assert all(t.budget is not None and t.budget.ramp() == 1.0 for t in throttles)
        rejoining = [t for t in stamps if t >= back]
        assert max_in_any_window(rejoining) <= 20
        last_second = [t for t in rejoining if t >= back + 3.0]
        assert len(last_second) >= 15  # the whole budget again, not a share of it
    finally:
        await redis.kill()


async def test_instances_on_auto_learn_one_limit_together(redis_port: int) -> None:
    """With tps_limit = "auto" and a shared budget, the limit one instance learns from a
    429 reaches the others through Redis."""
    prefix = f"cw-test-budget:{uuid.uuid4().hex}:"
    url = f"redis://127.0.0.1:{redis_port}/0"
    budgets = [SharedBudget(url, "tenant", key_prefix=prefix) for _ in range(2)]
    first, second = (
        TenantThrottle(10.0, learner=LimitLearner(10.0), budget=budget) for budget in budgets
    )
    try:
        await start(first, second)
        await first.acquire()
        first.on_throttled(0.2)
        await asyncio.sleep(0.05)  # the new state reaches Redis
        assert first.learner is not None and first.learner.limit == 8.0
        await asyncio.sleep(0.25)
        await second.acquire()
        assert second.learner is not None and second.learner.limit == 8.0
        assert second.stats()["learned_limit"] == 8.0
    finally:
        for budget in budgets:
            await budget.close()


async def test_a_hung_redis_costs_one_timeout_not_one_per_waiting_call() -> None:
    """A Redis that accepts connections but never answers: the calls queued behind the
    first round trip fall back when it times out, without a round trip (and a timeout)
    each."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    budget = SharedBudget(f"redis://127.0.0.1:{port}/0", "tenant", key_prefix="cw-test-hung:")
    try:
        slots = await asyncio.gather(*(budget.slot(5) for _ in range(5)))
        assert slots == [None] * 5
        assert budget.mode == "fallback"
        assert budget.round_trips == 1
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()
        await budget.close()


async def test_a_reply_read_late_does_not_move_the_clock_offset(shared: Factory) -> None:
    """Redis's clock is mapped onto ours from the shortest round trip: a reply our event
    loop reads 0.2 s late (the loop was busy) does not shift every time handed out."""
    throttle = shared(20.0)
    budget = throttle.budget
    assert budget is not None
    for _ in range(5):
        await budget._round_trip(0)
    offset = budget.to_local(0.0)
    trip = asyncio.create_task(budget._round_trip(0))
    await asyncio.sleep(0)  # the request is out
    time.sleep(0.2)  # noqa: ASYNC251 (the loop is busy, on purpose, while Redis answers)
    assert await trip == 0
    assert abs(budget.to_local(0.0) - offset) < 0.02


async def test_a_time_woken_up_to_too_late_is_not_used(shared: Factory) -> None:
    """A caller whose event loop stalled past its reserved time by more than LATE_S does
    not send on it (it would join the next holder's call in one window): it takes
    another, and the lost time is counted as expired."""
    throttle = shared(20.0)
    await start(throttle)
    await throttle.acquire()  # the schedule is under way: the next time is ~50 ms on
    late = asyncio.create_task(throttle.acquire())
    await asyncio.sleep(0.01)  # it holds that time and sleeps until it
    time.sleep(0.15)  # noqa: ASYNC251 (the loop stalls past it, on purpose)
    await late
    assert throttle.budget is not None and throttle.budget.slots_expired >= 1


async def test_the_fallback_share_is_a_hard_cap_even_when_the_loop_stalls() -> None:
    """Redis out of reach, two instances last seen: however late a stalled event loop
    wakes the callers, no 1 s window holds more grants than 0.9 x 20 / 2."""
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    budget = SharedBudget(f"redis://127.0.0.1:{port}/0", "tenant", key_prefix="cw-test-down:")
    budget.instances_seen = 2
    throttle = TenantThrottle(20.0, budget=budget)
    stamps: list[float] = []

    async def stall() -> None:
        while True:
            await asyncio.sleep(0.25)
            time.sleep(0.12)  # noqa: ASYNC251 (the loop stalls, on purpose)

    staller = asyncio.create_task(stall())
    try:
        await drive(throttle, stamps, 3.0, 3)
    finally:
        staller.cancel()
        await budget.close()
    assert throttle.budget_mode == "fallback"
    assert len(stamps) > 9
    assert max_in_any_window(stamps) <= 9


async def test_rate_state_no_writer_wrote_does_not_break_admission(
    shared: Factory, redis_port: int
) -> None:
    """A rate state in Redis with a version that is no number (a hand edit, another
    program) is left alone: calls are still admitted, through the shared schedule."""
    throttle = shared(20.0)
    budget = throttle.budget
    assert budget is not None
    client = aioredis.Redis(port=redis_port)
    try:
        await client.hset(budget._keys["state"], mapping={"version": "x", "limit": "0"})
        await start(throttle)
        await throttle.acquire()
        assert throttle.budget_mode == "shared" and throttle.controller.limit == 20.0
    finally:
        await client.delete(budget._keys["state"])
        await client.aclose()


async def test_a_clock_that_moved_is_followed_even_by_a_slow_round_trip(redis_port: int) -> None:
    """Our clock steps 0.5 s against Redis's: the next round trip, slow as it is (the
    loop stalls 0.05 s), moves the offset by the step, since no delay explains it."""
    shift = [0.0]
    budget = SharedBudget(
        f"redis://127.0.0.1:{redis_port}/0",
        "tenant",
        key_prefix=f"cw-test-budget:{uuid.uuid4().hex}:",
        clock=lambda: time.monotonic() + shift[0],
    )
    try:
        for _ in range(5):
            await budget._round_trip(0)
        offset = budget.to_local(0.0)
        shift[0] = 0.5
        trip = asyncio.create_task(budget._round_trip(0))
        await asyncio.sleep(0)  # the request is out
        time.sleep(0.05)  # noqa: ASYNC251 (the loop is busy, on purpose, while Redis answers)
        await trip
        assert abs(budget.to_local(0.0) - offset - 0.5) < 0.04
    finally:
        await budget.close()
