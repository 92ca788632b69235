"""Brokers to Campaign: the daemon with ``[[sources]]`` blocks, delivering to the simulator.

Each broker test publishes 10,000 events and a few poison messages, cuts the
daemon's broker connection in the middle (through a local TCP proxy), and then
finds every event in the simulator and every poison message in the dead-letter
queue. The Kafka test runs against the Tansu broker of ``test_kafka``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from campaign_writer.daemon import Daemon
from campaign_writer.deadletter import DeadLetterStore
from tests.sources.conftest import POISON, eventually, sample_events
from tests.sources.proxy import TcpProxy
from tests.sources.test_kafka import KafkaBroker, kafka  # noqa: F401
from tests.sources.test_nats import Stream, stream  # noqa: F401
from tests.sources.test_rabbitmq import Broker, broker  # noqa: F401
from tests.sources.test_redis_streams import client, publish  # noqa: F401
from tests.support.simulator import SimulatorHandle
from tests.support.writer import running_writer, writer_config

pytestmark = pytest.mark.services

SAMPLE = "dem:sampleTableStg"
HALF = 5_000

Publish = Callable[[list[bytes]], Awaitable[None]]


def counter(daemon: Daemon, name: str, source: str) -> float:
    value = daemon.metrics.registry.get_sample_value(f"campaign_writer_{name}", {"source": source})
    return value or 0.0


async def in_simulator(simulator: SimulatorHandle, keys: set[str], timeout: float = 90) -> None:
    async def arrived() -> bool:
        stored = {row["id"] for row in await simulator.records(SAMPLE)}
        return keys <= stored

    await eventually(arrived, timeout, interval=0.5, what=f"{len(keys)} records in Campaign")


async def stream_through(
    simulator: SimulatorHandle,
    tmp_path: Path,
    proxy: TcpProxy,
    block: dict[str, Any],
    publish: Publish,
    run: str,
    *,
    counts_reconnects: bool = True,
) -> Daemon:
    """Half the events and the poison, a cut, the other half; all must reach Campaign."""
    events = sample_events(run, 2 * HALF)
    config = writer_config(
        simulator.url,
        tmp_path,
        sources=[{"name": "feed", "reconnect_initial_s": 0.05, **block}],
    )
    async with running_writer(config) as daemon:
        await publish([body for _, body in events[:HALF]])
        await publish(list(POISON))
        await eventually(lambda: counter(daemon, "source_acked_total", "feed") >= 1_000)
        assert proxy.cut() >= 1
        proxy.refuse(0.3)
        # The publisher may go through the proxy too (Kafka advertises it): let it reopen.
        await asyncio.sleep(0.4)
        await publish([body for _, body in events[HALF:]])
        await in_simulator(simulator, {key for key, _ in events})
        if counts_reconnects:
            await eventually(lambda: counter(daemon, "source_reconnects_total", "feed") >= 1)
        await eventually(
            lambda: counter(daemon, "source_dead_lettered_total", "feed") >= len(POISON)
        )
    with DeadLetterStore(config.queue.path) as store:
        letters = store.page(limit=1_000)
    # At least once: poison in a batch whose ack the cut lost is dead-lettered again.
    assert {letter.event for letter in letters} == set(POISON)
    assert all(letter.source == "feed" for letter in letters)
    return daemon


async def test_rabbitmq_to_campaign(
    broker: Broker,  # noqa: F811
    simulator: SimulatorHandle,
    proxy_factory: Callable[[int], Awaitable[TcpProxy]],
    tmp_path: Path,
    unique: str,
) -> None:
    """10,000 events through RabbitMQ, a dropped connection midway: all in Campaign."""
    await broker.declare(unique)
    proxy = await proxy_factory(5672)
    block = {
        "kind": "rabbitmq",
        "url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        "queue": unique,
    }

    async def send(bodies: list[bytes]) -> None:
        await broker.publish(unique, bodies)

    await stream_through(simulator, tmp_path, proxy, block, send, unique)
    assert (await broker.counts(unique))[0] == 0


async def test_redis_streams_to_campaign(
    client: aioredis.Redis,  # noqa: F811
    simulator: SimulatorHandle,
    proxy_factory: Callable[[int], Awaitable[TcpProxy]],
    tmp_path: Path,
    unique: str,
) -> None:
    """10,000 events through a Redis stream, a dropped connection midway: all in Campaign."""
    proxy = await proxy_factory(6379)
    block = {
        "kind": "redis_streams",
        "url": f"redis://127.0.0.1:{proxy.port}/0",
        "stream": unique,
        "group": "writers",
    }

    async def send(bodies: list[bytes]) -> None:
        await publish(client, unique, bodies)

    await stream_through(simulator, tmp_path, proxy, block, send, unique)
    assert (await client.xpending(unique, "writers"))["pending"] == 0


async def test_nats_jetstream_to_campaign(
    stream: Stream,  # noqa: F811
    simulator: SimulatorHandle,
    proxy_factory: Callable[[int], Awaitable[TcpProxy]],
    tmp_path: Path,
    nats_port: int,
) -> None:
    """10,000 events through JetStream, a dropped connection midway: all in Campaign."""
    proxy = await proxy_factory(nats_port)
    block = {
        "kind": "nats",
        "url": f"nats://127.0.0.1:{proxy.port}",
        "stream": stream.name,
        "durable": "writers",
        "ack_wait_s": 2.0,
    }
    await stream_through(simulator, tmp_path, proxy, block, stream.publish, stream.name)


async def test_kafka_to_campaign(
    kafka: KafkaBroker,  # noqa: F811
    simulator: SimulatorHandle,
    tmp_path: Path,
    unique: str,
) -> None:
    """10,000 records through Kafka, connections cut midway: all in Campaign."""
    await kafka.create_topic(unique)
    block = {
        "kind": "kafka",
        "bootstrap_servers": kafka.bootstrap,
        "topics": unique,
        "group": "writers",
        "session_timeout_ms": 3_000,
        "heartbeat_interval_ms": 500,
    }

    async def send(bodies: list[bytes]) -> None:
        await kafka.publish(unique, bodies)

    # aiokafka re-establishes its connections inside the client, out of the source's
    # sight: the reconnect counter covers consumers the source had to rebuild.
    await stream_through(
        simulator, tmp_path, kafka.proxy, block, send, unique, counts_reconnects=False
    )


async def test_several_sources_at_once_each_with_its_own_counters(
    broker: Broker,  # noqa: F811
    client: aioredis.Redis,  # noqa: F811
    stream: Stream,  # noqa: F811
    simulator: SimulatorHandle,
    tmp_path: Path,
    unique: str,
) -> None:
    """RabbitMQ, Redis and NATS sources in one daemon; /metrics counts each by name."""
    await broker.declare(unique)
    sources = [
        {"kind": "rabbitmq", "name": "from-rabbit", "queue": unique},
        {"kind": "redis_streams", "name": "from-redis", "stream": unique, "group": "writers"},
        {"kind": "nats", "name": "from-nats", "stream": stream.name, "durable": "writers"},
    ]
    config = writer_config(simulator.url, tmp_path, sources=sources)
    rabbit, redis_events, nats_events = (sample_events(f"{unique}-{n}", 300) for n in range(3))
    async with running_writer(config) as daemon:
        await broker.publish(unique, [body for _, body in rabbit])
        await publish(client, unique, [body for _, body in redis_events] + [b"{oops"])
        await stream.publish([body for _, body in nats_events])
        await in_simulator(simulator, {key for key, _ in rabbit + redis_events + nats_events})
        assert daemon.admin is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{daemon.admin.url}/metrics") as answer,
        ):
            text = await answer.text()
        stats = {source["name"]: source for source in daemon.stats()["sources"]}
    for name, received in (("from-rabbit", 300), ("from-redis", 301), ("from-nats", 300)):
        for metric in ("events_received", "source_acked"):
            line = f'campaign_writer_{metric}_total{{source="{name}"}} {float(received)}'
            assert line in text
        assert f'campaign_writer_source_reconnects_total{{source="{name}"}} 0.0' in text
        assert stats[name]["acked"] == received
    assert 'campaign_writer_source_dead_lettered_total{source="from-redis"} 1.0' in text


async def test_two_writers_share_one_rabbitmq_queue(
    broker: Broker,  # noqa: F811
    simulator: SimulatorHandle,
    tmp_path: Path,
    unique: str,
) -> None:
    """Two daemons consume one queue: Campaign gets every event, none acked twice."""
    await broker.declare(unique)
    block = {"kind": "rabbitmq", "name": "shared", "queue": unique, "batch_size": 100}
    configs = []
    for index in range(2):
        directory = tmp_path / f"writer-{index}"
        directory.mkdir()
        configs.append(writer_config(simulator.url, directory, sources=[block]))
    events = sample_events(unique, 4_000)
    async with running_writer(configs[0]) as first, running_writer(configs[1]) as second:
        await broker.publish(unique, [body for _, body in events])
        await in_simulator(simulator, {key for key, _ in events})
        acked = [counter(daemon, "source_acked_total", "shared") for daemon in (first, second)]
    assert sum(acked) == 4_000 and all(acked)
    assert len(await simulator.records(SAMPLE)) == 4_000
