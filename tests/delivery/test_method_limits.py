"""Per-method budgets inside the tenant's, and ``tps_limit = "auto"``, on a virtual clock:
calls go through the real CampaignClient to a FakeTransport playing Campaign's limiters."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import pytest

from campaign_writer.campaign.client import CampaignClient
from campaign_writer.campaign.soap import Credentials, Param
from campaign_writer.daemon import Daemon
from campaign_writer.queue import DurableQueue
from campaign_writer.testing import FakeRequest, FakeTransport, throttled
from campaign_writer.throttle import TenantThrottle
from campaign_writer.throttle.autolimit import LimitLearner, load_learned, save_learned
from campaign_writer.throttle.pacing import MethodLane
from tests.delivery.test_throttle import max_in_any_window
from tests.support.clock import FakeClock, on_virtual_time
from tests.support.writer import writer_config

CREDENTIALS = Credentials(session_token="s", security_token="t")
PARAMS = [Param("doc", "document", "<x/>")]


class Limiter:
    """Campaign's sliding windows: per tenant, and per method where a limit is given.

    ``limits`` may change while the test runs (the limit moves)."""

    def __init__(self, tenant: float, methods: Mapping[str, float] | None = None) -> None:
        self.tenant = tenant
        self.methods = dict(methods or {})
        self.seen: deque[float] = deque()
        self.seen_by: dict[str, deque[float]] = {}
        self.accepted: dict[str, list[float]] = {}
        self.refused: dict[str, int] = {}

    def __call__(self, request: FakeRequest) -> object:
        now, method = request.at, request.method
        windows = [(self.seen, self.tenant)]
        if method in self.methods:
            windows.append((self.seen_by.setdefault(method, deque()), self.methods[method]))
        for window, limit in windows:
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= limit:
                self.refused[method] = self.refused.get(method, 0) + 1
                return throttled()
        for window, _ in windows:
            window.append(now)
        self.accepted.setdefault(method, []).append(now)
        return None  # the fake's Campaign takes it


async def rig(
    throttle: TenantThrottle, limiter: Limiter
) -> tuple[CampaignClient, asyncio.AbstractEventLoop]:
    loop = asyncio.get_running_loop()
    transport = FakeTransport(handler=limiter, clock=loop.time)
    await transport.start()
    return CampaignClient("https://campaign.test", transport, throttle, clock=loop.time), loop


async def backlog(client: CampaignClient, method: str, until: float, callers: int = 3) -> None:
    """``callers`` tasks calling ``method`` back to back until the loop's time ``until``."""
    loop = asyncio.get_running_loop()

    async def caller() -> None:
        while loop.time() < until:
            await client.call(method, PARAMS, CREDENTIALS)

    await asyncio.gather(*(caller() for _ in range(callers)))


@on_virtual_time
async def test_each_method_stays_within_its_limit_and_the_tenant_s() -> None:
    """Tenant 20/s, Ingest 12/s, WriteCollection 5/s, Write unlimited, all with backlogs:
    no 1 s window holds more than 12 Ingest, 5 WriteCollection or 20 calls in all, no
    call is refused, and Write gets what the two others leave."""
    limiter = Limiter(20, {"Ingest": 12, "WriteCollection": 5})
    throttle = TenantThrottle(
        20, clock=asyncio.get_running_loop().time, method_limits=limiter.methods
    )
    client, loop = await rig(throttle, limiter)
    until = loop.time() + 30
    await asyncio.gather(
        *(backlog(client, m, until) for m in ("Ingest", "WriteCollection", "Write"))
    )
    accepted = limiter.accepted
    assert not limiter.refused
    assert max_in_any_window(accepted["Ingest"]) <= 12
    assert max_in_any_window(accepted["WriteCollection"]) <= 5
    assert max_in_any_window([t for times in accepted.values() for t in times]) <= 20
    assert len(accepted["Write"]) > 30 * 2  # the unlimited method is not starved either


@on_virtual_time
async def test_one_method_s_429s_do_not_starve_another() -> None:
    """WriteCollection is configured at 5/s but Campaign allows it 3: its 429s are charged
    to it (it sent at its own limit), so only its lane pauses and slows; Ingest keeps its
    12/s and the tenant is never paused."""
    limiter = Limiter(20, {"Ingest": 12, "WriteCollection": 3})
    throttle = TenantThrottle(
        20,
        clock=asyncio.get_running_loop().time,
        method_limits={"Ingest": 12, "WriteCollection": 5},
    )
    client, loop = await rig(throttle, limiter)
    start = loop.time()
    await asyncio.gather(*(backlog(client, m, start + 30) for m in ("Ingest", "WriteCollection")))
    assert limiter.refused.get("WriteCollection", 0) > 0
    assert "Ingest" not in limiter.refused
    assert throttle.throttled_episodes == 0  # the tenant rate never dropped
    assert len(limiter.accepted["Ingest"]) >= 0.95 * 12 * 0.98 * 30
    assert throttle.method_rates()["WriteCollection"] < 3.5


async def test_a_method_s_cap_leaves_the_headroom_s_slack_for_arrival_jitter() -> None:
    """Calls of a method that reach its cap bunched (the tenant's turn moved them) are let
    through at most floor(limit) in any 1/headroom s, not in any 1 s: twelve Ingest calls
    at once, limit 12, and the 13th waits until 1.0204 s after the first, so one that
    arrives up to 20 ms late still does not make the 13th of Campaign's second. A 429 then
    takes the calls Campaign accepted, less the refused one, as the lane's ceiling."""
    clock = FakeClock()
    lane = MethodLane("Ingest", 12.0, 0.98, clock, clock.sleep)
    stamps = []
    for _ in range(13):
        await lane.cap(1.0)
        stamps.append(clock())
    assert stamps[11] == stamps[0]
    assert stamps[12] - stamps[0] == pytest.approx(1 / 0.98)
    quiet = MethodLane("Ingest", 12.0, 0.98, clock, clock.sleep)
    for _ in range(5):
        await quiet.cap(1.0)
    quiet.on_throttled(clock(), 1.0)
    assert quiet.controller.ceiling == pytest.approx(4 * 0.98)  # 5 sent, 1 refused


@on_virtual_time
async def test_a_tenant_429_is_charged_to_the_tenant() -> None:
    """A 429 on a method far below its own limit is the tenant's: everyone pauses."""
    throttle = TenantThrottle(
        20, clock=asyncio.get_running_loop().time, method_limits={"Ingest": 12}
    )
    await throttle.acquire("Ingest")
    throttle.on_accepted("Ingest")
    throttle.on_throttled(None, "Ingest")
    assert throttle.throttled_episodes == 1 and throttle.paused_for == 1.0


@on_virtual_time
async def test_auto_finds_an_unknown_limit_and_follows_it_when_it_moves() -> None:
    """tps_limit = "auto" against a 20/s tenant: from 5/s it settles between 18 and 20/s
    within 30 s with few 429s; when the tenant's limit becomes 30/s it climbs to it, and
    when it falls to 10/s it comes down to it and keeps Campaign busy there."""
    limiter = Limiter(20)
    learner = LimitLearner(5.0)
    throttle = TenantThrottle(5.0, clock=asyncio.get_running_loop().time, learner=learner)
    client, loop = await rig(throttle, limiter)
    start = loop.time()
    await backlog(client, "Ingest", start + 30, callers=4)
    assert 18 <= learner.limit <= 20
    late = [t for t in limiter.accepted["Ingest"] if t >= start + 25]
    assert len(late) >= 0.95 * 20 * 5
    calls = len(limiter.accepted["Ingest"]) + limiter.refused.get("Ingest", 0)
    assert limiter.refused.get("Ingest", 0) <= 0.02 * calls
    limiter.tenant = 30
    await backlog(client, "Ingest", loop.time() + 60, callers=6)
    assert learner.limit >= 27
    limiter.tenant = 10
    dropped = loop.time()
    refused_before = limiter.refused["Ingest"]
    await backlog(client, "Ingest", dropped + 30, callers=6)
    # Under the new limit: the learned value sits on it, probing a little above it now
    # and then, and Campaign accepts nearly all of it with few 429s.
    assert 9 <= learner.limit <= 10 * 1.3
    late = [t for t in limiter.accepted["Ingest"] if t >= dropped + 10]
    assert len(late) >= 0.85 * 10 * 20
    assert limiter.refused["Ingest"] - refused_before <= 0.05 * len(late)


async def test_the_learned_limit_survives_a_restart(tmp_path: Path) -> None:
    """The learned limit is kept in the queue file; a throttle opened on it again starts
    from that value, not from 5/s, and probes it gently (the limit is known)."""
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path)
    assert await load_learned(queue) is None
    await save_learned(queue, 17.25)
    await queue.close()
    queue = await DurableQueue.open(path)
    try:
        kept = await load_learned(queue)
    finally:
        await queue.close()
    assert kept == 17.25
    learner = LimitLearner(kept, learned=True)
    throttle = TenantThrottle(5.0, learner=learner)
    assert throttle.controller.limit == 17.25
    assert learner.on_grant(0.0, True) is None
    assert learner.on_grant(LimitLearner.PROBE_S, True) == 17.25 + 17.25 * LimitLearner.STEP


def test_auto_probes_double_while_the_same_limit_holds() -> None:
    """429s at the cap at the same limit double the probe period up to its cap; a limit
    that moved far down resets it; a 429 below the cap cuts a fifth, whatever was accepted;
    the first 429, answering a x1.5 raise, keeps at least the limit that held before it."""
    learner = LimitLearner(20.0, learned=True)
    periods = []
    for _ in range(6):
        learner.on_grant(0.0, at_cap=True)  # at the cap: the accepted rate is the limit
        learner.on_throttled(19.5)
        learner.limit = 21.0  # as if probed above it again
        periods.append(learner.probe_s)
    assert periods == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    learner.on_grant(0.0, at_cap=True)
    learner.on_throttled(8.0)
    assert learner.probe_s == LimitLearner.PROBE_S and learner.limit == 8.0
    learner.on_grant(1.0, at_cap=False)
    assert learner.on_throttled(1.0) == 8.0 * 0.8
    learner.on_grant(2.0, at_cap=True)
    assert learner.on_grant(2.0 + LimitLearner.PROBE_S, at_cap=True) == 6.4 + 0.5
    assert learner.on_throttled(3.0) == 3.0  # a small probe: the accepted rate is trusted
    first = LimitLearner(10.0)
    first.on_grant(0.0, at_cap=True)
    assert first.on_grant(LimitLearner.PROBE_S, at_cap=True) == 15.0
    assert first.on_throttled(12.0) == 12.0
    second = LimitLearner(10.0)
    second.on_grant(0.0, at_cap=True)
    second.on_grant(LimitLearner.PROBE_S, at_cap=True)
    assert second.on_throttled(8.0) == 10.0  # the first 429: 10/s held before the raise


async def test_a_writer_on_auto_starts_from_the_kept_limit_and_keeps_the_new_one(
    tmp_path: Path,
) -> None:
    """A daemon with tps_limit = "auto" starts from the limit kept in its queue file, shows
    it in /v1/stats and the metric, and at shutdown keeps the limit it learned since."""
    config = writer_config(
        "https://campaign.test", tmp_path, campaign__tps_limit="auto", sources=[]
    )
    queue = await DurableQueue.open(config.queue.path)
    await save_learned(queue, 13.5)
    await queue.close()
    daemon = Daemon(config, transport=FakeTransport())
    await daemon.start()
    try:
        assert daemon.throttle is not None and daemon.throttle.learner is not None
        assert daemon.stats()["throttle"]["learned_limit"] == 13.5
        assert b"campaign_writer_throttle_learned_limit_calls_per_second 13.5" in (
            daemon.metrics.exposition()
        )
        daemon.throttle.on_throttled(None)  # a 429 with nothing accepted: 0.8 x 13.5
    finally:
        await daemon.close()
    queue = await DurableQueue.open(config.queue.path)
    try:
        assert await load_learned(queue) == 10.8
    finally:
        await queue.close()
