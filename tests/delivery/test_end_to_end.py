"""The whole writer against the simulator: HTTP intake -> queue -> batches -> Campaign."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson
import redis.asyncio as aioredis

from campaign_writer.metrics import METRIC_NAMES
from tests.support.simulator import SimulatorHandle
from tests.support.writer import (
    WriterProcess,
    post_events,
    recipient_events,
    running_writer,
    sample_events,
    wait_for,
    writer_config,
)

SAMPLE = "dem:sampleTableStg"
RECIPIENT = "nms:recipient"


async def stored(simulator: SimulatorHandle, schema: str) -> dict[str, dict[str, str]]:
    key = "id" if schema == SAMPLE else "email"
    return {row[key]: row for row in await simulator.records(schema)}


async def test_twenty_five_thousand_events_arrive_intact(
    simulator: SimulatorHandle, tmp_path
) -> None:
    """20,000 sample events and 5,000 recipients posted over HTTP are exactly the records
    Campaign ends up with, values intact, in batches (not one call per event)."""
    samples = sample_events(20_000)
    recipients = recipient_events(5_000)
    config = writer_config(simulator.url, tmp_path)
    async with running_writer(config) as writer:
        assert writer.http is not None
        url = writer.http.url
        accepted = await asyncio.gather(post_events(url, samples), post_events(url, recipients))
        assert accepted == [20_000, 5_000]
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 25_000)
    got = await stored(simulator, SAMPLE)
    assert len(got) == 20_000
    for event in samples:
        row = got[event["id"]]
        assert (row["testcol1"], row["testcol2"]) == (event["testcol1"], event["testcol2"])
    people = await stored(simulator, RECIPIENT)
    assert len(people) == 5_000
    for event in recipients:
        row = people[event["email"]]
        assert (row["firstName"], row["lastName"]) == (event["firstName"], event["lastName"])
    stats = await simulator.stats()
    assert stats["calls_by_method"]["Ingest"] <= 20_000 / 500 * 2
    assert stats["calls_by_method"]["WriteCollection"] <= 5_000 / 500 * 2


async def test_429s_pause_and_the_rate_recovers(simulator_factory, tmp_path) -> None:
    """Configured above the tenant's real limit, the writer gets 429s, lowers its rate below
    the limit, and still delivers everything."""
    simulator = await simulator_factory(tps_limit=8, latency_ms=5, latency_jitter=0)
    config = writer_config(simulator.url, tmp_path, campaign__tps_limit=20, batch__max_records=20)
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.throttle is not None
        await post_events(writer.http.url, sample_events(1200))
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 1200, timeout=60)
        assert writer.dispatcher.totals["throttled"] >= 1
        assert writer.throttle.rate() < 8.5
        assert writer.metrics.throttled.value >= 1
    stats = await simulator.stats()
    assert stats["responses_by_status"].get("429", 0) >= 1
    assert len(await simulator.records(SAMPLE)) == 1200


async def test_poisoned_batch_is_bisected_and_only_bad_records_dead_lettered(
    simulator: SimulatorHandle,
    tmp_path,
) -> None:
    """Three poison records in 1,000: the 997 others are delivered, the three are
    dead-lettered with Campaign's fault text, in about 2 x log2(batch) calls per bad record."""
    events = sample_events(1000)
    for i in (17, 480, 901):
        events[i]["testcol2"] = "__POISON__"
    config = writer_config(simulator.url, tmp_path, batch__linger_ms=300)
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.queue is not None
        await post_events(writer.http.url, events)
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 997)
        await wait_for(lambda: writer.dispatcher.totals["dead_lettered"] == 3)
        stats = writer.queue.stats()
        assert stats.dead_letters == 3
    got = await stored(simulator, SAMPLE)
    assert set(got) == {e["id"] for e in events} - {"s000017", "s000480", "s000901"}
    calls = (await simulator.stats())["calls_by_method"]["Ingest"]
    # Two collections, then ~2 calls per halving per bad record, and a few calls of each
    # bad record alone (or with a read of the schema as control) before its verdict.
    assert calls < 2 + 3 * (2 * 10 + 8)


async def test_per_key_order_holds_under_concurrency(simulator_factory, tmp_path) -> None:
    """Forty updates to each of 25 keys, sent with 16 calls in flight and jittery latency:
    every key ends with its last value."""
    simulator = await simulator_factory(tps_limit=1000, latency_ms=20, latency_jitter=1.0)
    config = writer_config(
        simulator.url, tmp_path, batch__max_records=7, batch__linger_ms=1, sender__max_in_flight=16
    )
    async with running_writer(config) as writer:
        assert writer.http is not None
        async with aiohttp.ClientSession() as session:
            for round_ in range(40):
                events = [
                    {"type": "sample", "id": f"k{k}", "testcol1": str(round_)} for k in range(25)
                ]
                await post_events(writer.http.url, events, session=session)
                await asyncio.sleep(0.01)
        await wait_for(
            lambda: writer.dispatcher.batcher.pending == 0 and writer.queue.stats().depth == 0
        )
    got = await stored(simulator, SAMPLE)
    assert {k: row["testcol1"] for k, row in got.items()} == {f"k{k}": "39" for k in range(25)}


async def test_expired_session_is_renewed_mid_stream(simulator: SimulatorHandle, tmp_path) -> None:
    """Sessions expired while records flow: the writer logs on again and loses nothing."""
    config = writer_config(simulator.url, tmp_path, batch__max_records=50)
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, sample_events(500))
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 500)
        await simulator.control(expire_sessions=True)
        await post_events(writer.http.url, sample_events(500, start=500))
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 1000)
        assert writer.metrics.auth_renewals.labels("session").value == 2
    assert len(await simulator.records(SAMPLE)) == 1000


async def test_collection_refusal_falls_back_to_single_records(simulator_factory, tmp_path) -> None:
    """If Ingest refuses collection documents, the lane falls back to one record per call,
    says so once in /v1/stats, and delivers everything."""
    simulator = await simulator_factory(tps_limit=1000, latency_ms=0, ingest_collections=False)
    config = writer_config(simulator.url, tmp_path)
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.admin is not None
        await post_events(writer.http.url, sample_events(60))
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 60)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{writer.admin.url}/v1/stats") as answer,
        ):
            stats = await answer.json()
    lane = stats["delivery"]["lanes"]["dem:sampleTableStg#Ingest"]
    queue = stats["queue"]
    assert queue["commit_window_ms"] == config.queue.commit_window_ms
    assert queue["commits"] >= 1 and queue["window_waits"] >= queue["window_joined"] >= 0
    assert lane["collections"] is False
    assert "collection" in lane["collection_fallback"].lower()
    assert len(await simulator.records(SAMPLE)) == 60


async def test_concurrency_follows_latency(simulator_factory, tmp_path) -> None:
    """With Campaign at 20 ms the in-flight cap stays small; at 400 ms it grows (Little's law)
    so the rate is still used."""
    simulator = await simulator_factory(tps_limit=1000, latency_ms=20, latency_jitter=0)
    config = writer_config(
        simulator.url, tmp_path, campaign__tps_limit=40, batch__max_records=10, batch__linger_ms=1
    )
    async with running_writer(config) as writer:
        assert writer.http is not None
        dispatcher = writer.dispatcher
        assert dispatcher is not None
        await post_events(writer.http.url, sample_events(400))
        await wait_for(lambda: dispatcher.totals["delivered"] >= 200)
        fast_limit = dispatcher.in_flight.limit
        await simulator.control(latency_ms=400)
        await post_events(writer.http.url, sample_events(2000, start=400))
        await wait_for(lambda: dispatcher.in_flight.limit >= 20, timeout=30)
        assert fast_limit <= 6
        await wait_for(lambda: dispatcher.in_flight.current >= 12, timeout=10)


async def test_wrong_password_stops_delivery_and_keeps_the_queue(
    simulator: SimulatorHandle, tmp_path
) -> None:
    """Bad credentials are fatal: /readyz says why, nothing is sent or dropped."""
    tree_changes = {"campaign__auth__password": "not-the-password"}
    config = writer_config(simulator.url, tmp_path, **tree_changes)
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.admin is not None and writer.queue is not None
        await post_events(writer.http.url, sample_events(10))
        await wait_for(lambda: writer.dispatcher.fatal is not None, timeout=20)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{writer.admin.url}/readyz") as answer,
        ):
            body = await answer.json()
        assert answer.status == 503
        assert "XSV-350012" in body["checks"]["delivery"]
        assert writer.queue.stats().depth == 10
    assert await simulator.records(SAMPLE) == []


async def test_transient_failures_are_retried_until_delivered(simulator_factory, tmp_path) -> None:
    """With a third of calls failing 503/502/reset, everything still arrives and retries count."""
    simulator = await simulator_factory(
        tps_limit=1000,
        latency_ms=0,
        rate_503=0.15,
        rate_502=0.1,
        rate_reset=0.1,
        fault_methods="Ingest",
    )
    config = writer_config(
        simulator.url,
        tmp_path,
        batch__max_records=50,
        retry__initial_backoff_s=0.05,
        retry__max_backoff_s=0.2,
    )
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, sample_events(1000))
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 1000)
        assert writer.dispatcher.totals["retried"] >= 1
        assert writer.dispatcher.totals["dead_lettered"] == 0
    assert len(await simulator.records(SAMPLE)) == 1000


async def test_every_documented_metric_is_exported(
    simulator_factory,
    tmp_path,
    redis_port: int,
) -> None:
    """After traffic through HTTP and a Redis stream with a 429, a retry, a merge and a dead
    letter, /metrics carries every name in the metrics contract."""
    stream = f"cw-metrics-{uuid.uuid4().hex}"
    redis = aioredis.Redis(port=redis_port)
    simulator = await simulator_factory(tps_limit=3, latency_ms=1, fault_methods="Ingest")
    config = writer_config(
        simulator.url,
        tmp_path,
        campaign__tps_limit=10,
        batch__max_records=10,
        retry__initial_backoff_s=0.05,
        sources=[
            {
                "kind": "redis_streams",
                "name": "metrics-redis",
                "url": f"redis://127.0.0.1:{redis_port}/0",
                "stream": stream,
                "group": "cw",
            }
        ],
    )
    try:
        async with running_writer(config) as writer, aiohttp.ClientSession() as session:
            assert writer.http is not None and writer.admin is not None
            dispatcher = writer.dispatcher
            assert dispatcher is not None
            events = sample_events(60) + sample_events(1, start=100)
            events[-1]["testcol1"] = "__POISON__"
            events.insert(1, {"type": "sample", "id": "s000000", "testcol1": "merged"})
            await post_events(writer.http.url, events)
            async with session.post(
                f"{writer.http.url}/v1/events",
                json=[{"type": "nope"}, {"type": "sample", "id": "x"}],
            ) as answer:
                assert answer.status == 202
            await redis.xadd(stream, {"event": orjson.dumps(sample_events(1, start=200)[0])})
            await redis.xadd(stream, {"event": b"not json"})
            await wait_for(lambda: dispatcher.totals["delivered"] >= 62, timeout=60)
            await wait_for(lambda: dispatcher.totals["dead_lettered"] >= 1, timeout=60)
            await wait_for(lambda: dispatcher.totals["throttled"] >= 1, timeout=30)
            # Every Ingest answered 503 for a while: a retry is certain, not drawn by chance.
            await simulator.control(rate_503=1.0)
            await post_events(writer.http.url, sample_events(5, start=300))
            await wait_for(lambda: dispatcher.totals["retried"] >= 1, timeout=30)
            await simulator.control(rate_503=0.0)
            await wait_for(lambda: dispatcher.totals["delivered"] >= 67, timeout=60)
            async with session.get(f"{writer.admin.url}/metrics") as answer:
                text = await answer.text()
    finally:
        await redis.delete(stream)
        await redis.aclose()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    for name in METRIC_NAMES:
        family = {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        assert exported & family, f"{name} missing from /metrics"


async def test_kill_9_mid_stream_loses_nothing_acknowledged(simulator_factory, tmp_path) -> None:
    """A writer process SIGKILLed while taking and delivering events: after a restart, every
    event that got a 202 is in Campaign."""
    simulator = await simulator_factory(tps_limit=50, latency_ms=30)
    writer = WriterProcess(simulator.url, tmp_path, "batch.max_records=100")
    url = await writer.start()
    acked: list[str] = []

    async def feed() -> None:
        async with aiohttp.ClientSession() as session:
            for start in range(0, 20_000, 500):
                events = sample_events(500, start=start)
                try:
                    await post_events(url, events, session=session)
                except (aiohttp.ClientError, AssertionError):
                    return  # the writer died mid-request: that request was not acknowledged
                acked.extend(e["id"] for e in events)

    feeder = asyncio.create_task(feed())
    await wait_for(lambda: len(acked) >= 3000, timeout=30)
    writer.kill()
    await writer.wait()
    await feeder
    assert len(acked) < 20_000  # it really died mid-stream
    restarted = WriterProcess(simulator.url, tmp_path, "batch.max_records=100")
    await restarted.start()
    try:
        await wait_for(lambda: _all_stored(simulator, acked), timeout=90, interval=0.5)
    finally:
        assert await restarted.terminate() == 0


async def _all_stored(simulator: SimulatorHandle, ids: list[str]) -> bool:
    got = {row["id"] for row in await simulator.records(SAMPLE)}
    return set(ids) <= got


async def test_sigterm_drains_then_a_restart_resumes(simulator_factory, tmp_path) -> None:
    """SIGTERM stops intake, ends cleanly (exit 0) within the shutdown timeout, and a restart
    delivers whatever was still queued."""
    simulator = await simulator_factory(tps_limit=5, latency_ms=50)
    writer = WriterProcess(
        simulator.url, tmp_path, "batch.max_records=10", "daemon.shutdown_timeout_s=5"
    )
    url = await writer.start()
    await post_events(url, sample_events(300))
    assert await writer.terminate(timeout=30) == 0
    delivered = len(await simulator.records(SAMPLE))
    assert delivered < 300  # 5 calls/s x 10 records: the queue was not empty at SIGTERM
    restarted = WriterProcess(simulator.url, tmp_path, "batch.max_records=100")
    await restarted.start()
    try:
        await wait_for(lambda: _count_is(simulator, 300), timeout=60, interval=0.5)
    finally:
        assert await restarted.terminate() == 0


async def _count_is(simulator: SimulatorHandle, count: int) -> bool:
    return len(await simulator.records(SAMPLE)) == count
