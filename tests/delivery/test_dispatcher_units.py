"""Delivery, outcome by outcome: the real dispatcher over the fake transport, on a virtual clock.

Each test wires a real Dispatcher, Batcher, CampaignClient, TenantThrottle and
SessionAuth over a real SQLite queue in ``tmp_path``, as the daemon does. Only the
network is faked, at the transport seam (:class:`campaign_writer.testing.FakeTransport`),
and the clock: every test runs on a :class:`~tests.support.clock.VirtualTimeLoop`, so
backoffs, pauses and probes pass at once, and each request the fake receives is stamped
with the loop's time. The real-HTTP tests against the simulator stay in
``test_end_to_end.py`` and ``test_real_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from campaign_writer.backoff import RetryPolicy
from campaign_writer.batcher import Batcher
from campaign_writer.campaign.auth import SessionAuth
from campaign_writer.campaign.client import CampaignClient
from campaign_writer.campaign.documents import render_fragment
from campaign_writer.deadletter import DeadLetterStore
from campaign_writer.dispatcher import Dispatcher
from campaign_writer.logs import Secret
from campaign_writer.metrics import Metrics
from campaign_writer.queue import DurableQueue, QueueItem
from campaign_writer.records import LaneId
from campaign_writer.testing import (
    FakeRequest,
    FakeTransport,
    Handler,
    Reply,
    fault,
    proxy_page,
    reset,
    session_expired,
    throttled,
)
from campaign_writer.throttle import InFlightLimit, TenantThrottle
from tests.support.clock import on_virtual_time

SCHEMA = "dem:sampleTableStg"
LANE = LaneId(SCHEMA, "Ingest")
WALL_OFFSET = 1_700_000_000.0  # wall clock = this + the loop's virtual time

# Faults as real instances send them (campaign-protocol.md, section 5.4a).
DUPLICATE_KEY = fault(
    "Error while executing the method 'Ingest' of service 'xtk:persist'.",
    detail='PostgreSQL error: ERROR:  duplicate key violates unique constraint "stg_id"'
    "Impossible to save document of type 'Sample (dem:sampleTableStg)'",
)
MASKED = fault(
    "SOP-330023 An error occurred during the SOAP call."
    " You don't have the required rights to view the detail.",
    faultcode="SOAP-ENV:Error",
)
BAD_LOGIN = fault(
    "Error while reading parameters of method 'Logon' of service 'xtk:session'.",
    detail="Invalid login or password. Connection denied.",
    faultcode="SOAP-ENV:Client",
)
ACCESS_DENIED = fault("Access denied for this operator", status=403)


# --- the rig -------------------------------------------------------------------------


@dataclass
class Rig:
    """Delivery's parts, wired as the daemon wires them."""

    loop: asyncio.AbstractEventLoop
    queue: DurableQueue
    transport: FakeTransport
    client: CampaignClient
    auth: SessionAuth
    dispatcher: Dispatcher
    metrics: Metrics

    def now(self) -> float:
        return self.loop.time()

    async def add(self, keys: list[str], *, age_s: float = 0.0) -> None:
        """Queue one keyed record per key, created ``age_s`` ago."""
        created = WALL_OFFSET + self.now() - age_s
        await self.queue.append(
            [
                QueueItem(
                    LANE.text,
                    key,
                    render_fragment({"id": key}, None, "@id").encode(),
                    orjson.dumps({"id": key}),
                    "test",
                    created,
                )
                for key in keys
            ]
        )

    @property
    def totals(self) -> dict[str, int]:
        return self.dispatcher.totals

    def ingests(self) -> list[FakeRequest]:
        return self.transport.calls("Ingest")

    def lane_stats(self) -> dict[str, object]:
        lanes: dict[str, dict[str, object]] = self.dispatcher.stats()["lanes"]
        return lanes[LANE.text]


@contextlib.asynccontextmanager
async def delivery(
    tmp_path: Path,
    *,
    handler: Handler | None = None,
    retry: RetryPolicy | None = None,
    max_records: int = 50,
    collection: str = "auto",
    max_in_flight: int = 4,
    latency_s: float = 0.0,
    tps_limit: float = 1000.0,
) -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()

    def wall() -> float:
        return WALL_OFFSET + loop.time()

    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", synchronous="NORMAL", clock=wall)
    transport = FakeTransport(handler=handler, clock=loop.time, latency_s=latency_s)
    await transport.start()
    metrics = Metrics()
    throttle = TenantThrottle(tps_limit, clock=loop.time, sleep=asyncio.sleep)
    client = CampaignClient(
        "https://campaign.test", transport, throttle, metrics=metrics, clock=loop.time
    )
    auth = SessionAuth(
        client,
        login="writer",
        password=Secret("writer-password"),
        refresh_margin_s=60.0,
        clock=loop.time,
        metrics=metrics,
    )
    batcher = Batcher(
        max_records=max_records,
        max_bytes=1 << 20,
        linger_s=0.0,
        modes={LANE: collection},  # type: ignore[dict-item]
        merges=metrics.records_coalesced,
    )
    dispatcher = Dispatcher(
        queue,
        client,
        auth,
        batcher,
        retry=retry or RetryPolicy(),
        max_in_flight=max_in_flight,
        metrics=metrics,
        clock=loop.time,
        wall=wall,
    )
    try:
        yield Rig(loop, queue, transport, client, auth, dispatcher, metrics)
    finally:
        await dispatcher.close(5.0)
        assert dispatcher.crashed is None, dispatcher.crashed
        await auth.close()
        await transport.close()
        await queue.close()


async def until(condition: Callable[[], bool], within: float = 120.0) -> None:
    """Wait (in virtual seconds) until ``condition()`` holds; fail after ``within``.

    Checked every 0.5 s: each idle moment of the loop costs a little real time, and
    what the tests time is read from the requests' stamps, not from this. A loop that
    never idles never moves its clock, so ten real seconds end the wait too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    real_deadline = time.monotonic() + 10.0
    while not condition():
        assert loop.time() < deadline, f"not so within {within} s"
        assert time.monotonic() < real_deadline, "not so within 10 s of real time"
        await asyncio.sleep(0.5)


def keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def holding(key: str) -> Callable[[FakeRequest], bool]:
    needle = f'id="{key}"'.encode()
    return lambda request: needle in request.body


def refusing(key: str, reply: Reply = DUPLICATE_KEY) -> Handler:
    """A Campaign that refuses every call holding ``key`` and accepts the rest."""
    holds = holding(key)
    return lambda request: reply if request.method == "Ingest" and holds(request) else None


def document(request: FakeRequest) -> bytes:
    """The call's document parameter, as sent."""
    return request.body.partition(b"<doc ")[2]


def letters(tmp_path: Path) -> list[tuple[str | None, str, str]]:
    """(key, code, reason) of every dead letter, read from the file."""
    with DeadLetterStore(tmp_path / "queue.sqlite3") as store:
        return [(e.key, e.code, e.reason) for e in store.page(limit=1000)]


@pytest.fixture
def top_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jitter at its top: every backoff is exactly its ceiling, so gaps can be checked."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


# --- outcome by outcome --------------------------------------------------------------


@on_virtual_time
async def test_ok_acks_every_record_in_one_call(tmp_path: Path) -> None:
    """Campaign takes a collection: one call carries every record and all are acked."""
    async with delivery(tmp_path) as rig:
        await rig.add(keys("k", 10))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 10)
        await until(lambda: rig.queue.stats().depth == 0)
        assert [r.method for r in rig.transport.calls()] == ["Logon", "Ingest"]
        assert rig.ingests()[0].records == 10
        assert rig.queue.stats().dead_letters == 0
        assert rig.totals["retried"] == rig.totals["throttled"] == 0


@on_virtual_time
async def test_429_pauses_for_retry_after_and_requeues_without_an_attempt(
    tmp_path: Path,
) -> None:
    """HTTP 429 with Retry-After: the batch goes again once the pause is over, and
    nothing counts it as a failure (no retry, no backoff, no strike)."""
    async with delivery(tmp_path) as rig:
        rig.transport.script("Ingest", throttled(retry_after=2.0))
        await rig.add(keys("k", 5))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 5)
        first, second = rig.ingests()
        assert second.at - first.at >= 2.0
        assert second.records == 5
        assert rig.totals["throttled"] == 1
        assert rig.totals["retried"] == 0
        assert rig.lane_stats()["failures"] == 0
        assert rig.queue.stats().dead_letters == 0


@on_virtual_time
async def test_transient_failures_back_off_then_deliver(tmp_path: Path, top_jitter: None) -> None:
    """A proxy's 502 then a reset connection: each backs the lane off, the delay
    doubling from retry.initial_backoff_s, and the batch is delivered after."""
    retry = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=10.0)
    async with delivery(tmp_path, retry=retry) as rig:
        rig.transport.script("Ingest", proxy_page(502), reset())
        await rig.add(keys("k", 5))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 5)
        calls = rig.ingests()
        assert len(calls) == 3
        gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
        assert gaps[0] == pytest.approx(0.5, abs=0.01)
        assert gaps[1] == pytest.approx(1.0, abs=0.01)
        assert rig.totals["retried"] == 2
        assert rig.lane_stats()["failures"] == 0  # a success resets the lane's count
        assert rig.queue.stats().dead_letters == 0


@on_virtual_time
async def test_records_past_max_age_are_dead_lettered_on_a_transient_failure(
    tmp_path: Path,
) -> None:
    """A transient failure dead-letters the records older than retry.max_age (MAX-AGE)
    and backs the others off; those are delivered later."""
    retry = RetryPolicy(max_age_s=3600.0)
    async with delivery(tmp_path, retry=retry) as rig:
        rig.transport.script("Ingest", reset())
        await rig.add(["old"], age_s=7200.0)
        await rig.add(["young"])
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 1 and rig.totals["dead_lettered"] == 1)
        assert b'id="old"' not in rig.ingests()[-1].body
    assert [(key, code) for key, code, _ in letters(tmp_path)] == [("old", "MAX-AGE")]


@on_virtual_time
async def test_session_expired_renews_and_resends_once(tmp_path: Path) -> None:
    """XSV-350008: one Logon more, and the same batch resent with the new session."""
    async with delivery(tmp_path) as rig:
        rig.transport.script("Ingest", session_expired())
        await rig.add(keys("k", 5))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 5)
        calls = rig.transport.calls()
        assert [r.method for r in calls] == ["Logon", "Ingest", "Logon", "Ingest"]
        assert calls[1].headers["X-Session-Token"] == "fake-session-1"
        assert calls[3].headers["X-Session-Token"] == "fake-session-2"
        assert document(calls[3]) == document(calls[1])
        assert rig.totals["retried"] == 0


@on_virtual_time
async def test_refused_again_after_renewal_is_a_retry_not_a_loop(
    tmp_path: Path, top_jitter: None
) -> None:
    """Still expired with fresh credentials: no third Logon at once; the lane backs
    off and the next send, with the same credentials, goes through."""
    async with delivery(tmp_path) as rig:
        rig.transport.script("Ingest", session_expired(), session_expired())
        await rig.add(keys("k", 5))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 5)
        methods = [r.method for r in rig.transport.calls()]
        assert methods == ["Logon", "Ingest", "Logon", "Ingest", "Ingest"]
        assert rig.totals["retried"] == 1
        last, before = rig.ingests()[-1], rig.ingests()[-2]
        assert last.at - before.at == pytest.approx(RetryPolicy().initial_backoff_s, abs=0.01)


@on_virtual_time
async def test_a_record_refused_alone_while_others_pass_is_dead_lettered(tmp_path: Path) -> None:
    """One record per call: the record Campaign refuses while the others pass is
    dead-lettered after retry.record_failures refusals, under its fault's name; every
    other record is delivered."""
    retry = RetryPolicy(record_failures=3)
    async with delivery(tmp_path, handler=refusing("k007"), retry=retry, collection="never") as rig:
        await rig.add(keys("k", 20))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 19 and rig.totals["dead_lettered"] == 1)
        tries = [r for r in rig.ingests() if holding("k007")(r)]
        assert len(tries) == retry.record_failures
        assert all(r.records == 1 for r in rig.ingests())
        assert rig.queue.stats().depth == 0
    [(key, code, reason)] = letters(tmp_path)
    assert (key, code) == ("k007", "duplicate-key")
    assert "refused alone 3 times" in reason


@on_virtual_time
async def test_stats_metrics_and_repr_read_one_count(tmp_path: Path) -> None:
    """Delivered, dead-lettered and retried records are counted once: /v1/stats' totals,
    the Prometheus exposition and the dispatcher's repr show the same figures."""
    retry = RetryPolicy(record_failures=3)
    async with delivery(tmp_path, handler=refusing("k002"), retry=retry, collection="never") as rig:
        rig.transport.script("Ingest", reset())
        await rig.add(keys("k", 6))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 5 and rig.totals["dead_lettered"] == 1)
        totals = rig.dispatcher.stats()["totals"]
        text = rig.metrics.exposition().decode()
        assert f'records_delivered_total{{method="Ingest",schema="{SCHEMA}"}} 5.0' in text
        assert 'records_dead_lettered_total{reason="duplicate-key"} 1.0' in text
        [(reason,)] = rig.metrics.retries.values()
        assert f'retries_total{{reason="{reason}"}} 1.0' in text
        assert (totals["delivered"], totals["dead_lettered"], totals["retried"]) == (5, 1, 1)
        assert totals["calls"] == len(rig.ingests())
        shown = repr(rig.dispatcher)
        assert "delivered=5," in shown and "dead_lettered=1," in shown and "retried=1," in shown


@pytest.mark.parametrize("refusal", [MASKED, DUPLICATE_KEY], ids=["masked", "duplicate-key"])
@on_virtual_time
async def test_a_fault_every_record_meets_pauses_the_lane_and_dead_letters_nothing(
    tmp_path: Path, refusal: Reply
) -> None:
    """Every call refused for a minute, whatever its fault says: after a few controls
    the lane pauses and probes one record at a time, the pause doubling up to its cap;
    nothing is dead-lettered, and everything is delivered once Campaign takes records
    again."""
    retry = RetryPolicy(suspect_after=4, fault_pause_initial_s=1.0, fault_pause_max_s=8.0)
    broken_until: list[float] = []

    def broken_for_a_minute(request: FakeRequest) -> Reply | None:
        if not broken_until:
            broken_until.append(request.at + 60.0)
        return refusal if request.method == "Ingest" and request.at < broken_until[0] else None

    async with delivery(tmp_path, handler=broken_for_a_minute, retry=retry) as rig:
        await rig.add(keys("k", 40))
        await rig.dispatcher.start()
        await until(lambda: bool(rig.dispatcher.fault_pauses()["paused_lanes"]))
        assert rig.dispatcher.fault_pauses()["instance_wide"] is True
        assert rig.lane_stats()["paused_on_fault"] is True
        await until(lambda: rig.totals["delivered"] == 40)
        assert rig.totals["dead_lettered"] == 0
        assert rig.queue.stats().dead_letters == 0
        assert not rig.dispatcher.fault_pauses()["paused_lanes"]
        refused = [r for r in rig.ingests() if r.at < broken_until[0]]
        probes = [r for r in refused if r.at - refused[0].at > 0.5]
        assert all(r.records == 1 for r in probes)
        gaps = [b.at - a.at for a, b in itertools.pairwise(probes)]
        assert gaps[:3] == pytest.approx([2.0, 4.0, 8.0], abs=0.05)
        assert all(gap == pytest.approx(8.0, abs=0.05) for gap in gaps[3:])
        assert len(refused) - len(probes) <= 1 + 2 * math.ceil(math.log2(40))


@pytest.mark.parametrize(
    ("method", "refusal"),
    [("Logon", BAD_LOGIN), ("Ingest", ACCESS_DENIED)],
    ids=["logon-refused", "access-denied"],
)
@on_virtual_time
async def test_a_fatal_answer_stops_sending_and_keeps_the_queue(
    tmp_path: Path, method: str, refusal: Reply
) -> None:
    """Credentials refused, or access denied: delivery stops (fatal, in /readyz), the
    queue keeps every record, nothing is dead-lettered, and only a probe goes out
    30 s later; once Campaign accepts again, everything is delivered."""
    async with delivery(tmp_path) as rig:
        rig.transport.script(method, refusal, refusal)
        await rig.add(keys("k", 10))
        await rig.dispatcher.start()
        await until(lambda: rig.dispatcher.fatal is not None)
        await asyncio.sleep(25.0)
        assert len(rig.transport.calls(method)) == 1
        assert rig.dispatcher.fatal is not None
        assert rig.queue.stats().depth == 10
        assert rig.queue.stats().dead_letters == 0
        if method == "Logon":
            assert rig.ingests() == []
            assert rig.auth.refused is not None
        await until(lambda: len(rig.transport.calls(method)) == 2)  # the probe, refused
        refused, probe = rig.transport.calls(method)
        assert probe.at - refused.at == pytest.approx(30.0, abs=0.01)
        await until(lambda: rig.totals["delivered"] == 10)
        third = rig.transport.calls(method)[2]
        assert third.at - probe.at == pytest.approx(60.0, abs=0.01)  # the delay doubles
        assert rig.dispatcher.fatal is None
        assert rig.totals["dead_lettered"] == 0


# --- bisection -----------------------------------------------------------------------


@on_virtual_time
async def test_bisection_dead_letters_only_the_bad_record_in_bounded_calls(
    tmp_path: Path,
) -> None:
    """A collection of 32 with one bad record: the batch is split until the bad record
    fails alone beside a sibling that passes; only it is dead-lettered, the 31 others
    are delivered, and the calls stay within twice the halvings plus its retries."""
    retry = RetryPolicy(record_failures=3)
    async with delivery(tmp_path, handler=refusing("k013"), retry=retry, max_records=64) as rig:
        await rig.add(keys("k", 32))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 31 and rig.totals["dead_lettered"] == 1)
        calls = rig.ingests()
        assert calls[0].records == 32
        halvings = math.ceil(math.log2(32))
        assert len(calls) <= 1 + 2 * halvings + 2 * retry.record_failures
        assert rig.totals["bisections"] >= 1
        assert rig.queue.stats().depth == 0
    assert [key for key, _, _ in letters(tmp_path)] == ["k013"]


# --- retry and backoff ---------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling() -> None:
    """RetryPolicy.backoff(n) draws in [0, min(max, initial x 2^(n-1))] and spreads over
    the whole range; a long outage's count neither overflows nor passes the cap."""
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=10.0)
    for failures, ceiling in [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0)]:
        draws = [policy.backoff(failures) for _ in range(2000)]
        assert all(0.0 <= d <= ceiling for d in draws), failures
        assert min(draws) < 0.1 * ceiling
        assert max(draws) > 0.9 * ceiling
        assert 0.4 * ceiling < sum(draws) / len(draws) < 0.6 * ceiling
    assert all(0.0 <= policy.backoff(n) <= 10.0 for n in (100, 1100, 10**9))


# --- the in-flight cap ---------------------------------------------------------------


@on_virtual_time
async def test_in_flight_limit_admits_up_to_its_limit_and_waits_for_a_release() -> None:
    """Two slots to start with; a third acquire waits until a release frees one."""
    reported: list[int] = []
    limit = InFlightLimit(8, reported.append)
    assert (limit.limit, reported) == (2, [2])
    await limit.acquire()
    await limit.acquire()
    third = asyncio.ensure_future(limit.acquire())
    await asyncio.sleep(1.0)
    assert not third.done()
    assert limit.current == 2
    await limit.release()
    await asyncio.wait_for(third, 1.0)
    assert limit.current == 2


@on_virtual_time
async def test_in_flight_limit_follows_rate_times_latency_within_its_bounds() -> None:
    """observe() sizes the cap as ceil(1.5 x rate x latency) + 2 (latency averaged),
    never under 2 nor over the maximum, and a larger cap lets waiting senders in."""
    reported: list[int] = []
    limit = InFlightLimit(10, reported.append)
    for _ in range(2):
        await limit.acquire()
    waiting = [asyncio.ensure_future(limit.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    await limit.observe(0.1, rate=20.0)  # ceil(1.5 x 20 x 0.1) + 2 = 5
    assert limit.limit == 5
    await asyncio.wait_for(asyncio.gather(*waiting), 1.0)
    assert limit.current == 5
    await limit.observe(0.6, rate=20.0)  # average 0.8 x 0.1 + 0.2 x 0.6 = 0.2: 8
    assert limit.latency_s == pytest.approx(0.2)
    assert limit.limit == 8
    await limit.observe(5.0, rate=20.0)
    assert limit.limit == 10  # the maximum
    await limit.observe(0.0, rate=0.0)
    assert limit.limit == 2  # the floor
    assert reported == [2, 5, 8, 10, 2]


@on_virtual_time
async def test_the_dispatcher_never_has_more_calls_in_flight_than_the_cap(
    tmp_path: Path,
) -> None:
    """One record per call, 0.5 s each, a budget for many more: at most
    sender.max_in_flight calls are ever out at once, and the cap is used."""
    out = 0
    peak = 0

    async def slow(request: FakeRequest) -> Reply | None:
        nonlocal out, peak
        if request.method != "Ingest":
            return None
        out += 1
        peak = max(peak, out)
        await asyncio.sleep(0.5)
        out -= 1
        return None

    async with delivery(tmp_path, handler=slow, collection="never", max_in_flight=3) as rig:
        await rig.add(keys("k", 30))
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 30)
        assert peak == 3
        assert rig.dispatcher.in_flight.limit == 3


@on_virtual_time
async def test_a_lane_reports_the_age_of_the_newest_record_delivered(tmp_path: Path) -> None:
    """Per lane, the time since the intake of the newest record Campaign acknowledged: a
    record merged into an older one of its key counts with its own intake time, and the
    age keeps growing while nothing newer is delivered."""
    async with delivery(tmp_path) as rig:
        added_at = rig.now()
        await rig.add(["old"], age_s=40.0)
        await rig.add(["k"], age_s=30.0)
        await rig.add(["k"], age_s=5.0)  # merges into the first "k"
        await rig.dispatcher.start()
        await until(lambda: rig.totals["delivered"] == 3)
        assert rig.metrics.records_coalesced.labels(*LANE).value == 1
        age = rig.lane_stats()["newest_delivered_age_s"]
        assert isinstance(age, float) and 5.0 <= age <= 5.0 + rig.now() - added_at + 0.01
        await asyncio.sleep(60)
        (lane_id, later), *others = rig.dispatcher.newest_delivered_ages().items()
        assert lane_id == LANE and not others
        assert later == pytest.approx(age + 60.0, abs=1.0)
