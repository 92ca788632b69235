"""RabbitMQ source against the real broker on 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
from collections.abc import AsyncIterator, Sequence

import aio_pika
import pytest

from campaign_writer.errors import ConfigError
from campaign_writer.sources.rabbitmq import RabbitMQSource, read_settings
from tests.sources.conftest import (
    POISON,
    IntakeFactory,
    check_two_writers_split,
    collect,
    eventually,
    sample_events,
)
from tests.sources.proxy import TcpProxy

pytestmark = pytest.mark.services


class Broker:
    """A publishing connection and the test's own queues (deleted at teardown)."""

    def __init__(self, port: int) -> None:
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.queues: list[str] = []

    async def open(self) -> Broker:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=False)
        return self

    async def declare(self, name: str, queue_type: str = "classic") -> None:
        assert self.channel is not None
        await self.channel.declare_queue(name, durable=True, arguments={"x-queue-type": queue_type})
        self.queues.append(name)

    async def publish(
        self, queue: str, bodies: Sequence[bytes], headers: dict[str, str] | None = None
    ) -> None:
        assert self.channel is not None
        exchange = self.channel.default_exchange
        for body in bodies:
            await exchange.publish(aio_pika.Message(body, headers=headers), routing_key=queue)

    async def counts(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) as the broker sees them."""
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            result = declared.declaration_result
            return result.message_count or 0, result.consumer_count or 0
        finally:
            await channel.close()

    async def close(self) -> None:
        if self.connection is None:
            return
        channel = await self.connection.channel()
        for name in self.queues:
            await channel.queue_delete(name)
        await self.connection.close()


@pytest.fixture
async def broker(rabbitmq_port: int) -> AsyncIterator[Broker]:
    broker = await Broker(rabbitmq_port).open()
    yield broker
    await broker.close()


def make_source(
    name: str, queue: str, intake: object, port: int = 5672, **keys: object
) -> RabbitMQSource:
    raw = {"url": f"amqp://guest:guest@127.0.0.1:{port}/", "queue": queue, **keys}
    settings = read_settings(raw, "sources[0]")
    return RabbitMQSource(name, settings, intake.router, intake.queue, intake.metrics)  # type: ignore[attr-defined]


async def test_every_published_event_is_committed_then_acked(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """10,000 events published to a queue are all in the local queue, and all acked."""
    await broker.declare(unique)
    events = sample_events(unique, 10_000)
    await broker.publish(unique, [body for _, body in events])
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, batch_size=500)
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in events])
    assert sorted(keys) == sorted(key for key, _ in events)
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") == 10_000)
    await source.close()
    ready, consumers = await broker.counts(unique)
    assert (ready, consumers) == (0, 0)
    assert intake.sample("events_received_total", "rabbit") == 10_000
    assert intake.sample("events_accepted_total", "rabbit") == 10_000


async def test_declares_a_durable_quorum_queue_when_asked(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """declare = true creates a quorum queue that the source then consumes."""
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, declare=True, queue_type="quorum")
    sources.append(source)
    broker.queues.append(unique)
    await source.start()
    assert source.connected
    events = sample_events(unique, 50)
    await broker.publish(unique, [body for _, body in events])
    keys = await collect([intake], 50)
    assert sorted(keys) == sorted(key for key, _ in events)
    assert broker.channel is not None
    declared = await broker.channel.declare_queue(
        unique, durable=True, arguments={"x-queue-type": "quorum"}
    )
    assert declared.durable


async def test_missing_queue_is_reported_and_retried(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Without declare, a queue that does not exist is an error the source retries."""
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    assert not source.connected
    assert source.last_error is not None and unique in source.last_error
    await broker.declare(unique)
    await eventually(lambda: source.connected, what="the source to connect once declared")
    await broker.publish(unique, [body for _, body in sample_events(unique, 3)])
    assert len(await collect([intake], 3)) == 3


async def test_a_deleted_queue_is_noticed_and_consumption_resumes_once_it_is_back(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """RabbitMQ cancels the consumer of a deleted queue: reported, then resumed."""
    await broker.declare(unique)
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    assert broker.channel is not None
    await broker.channel.queue_delete(unique)
    await eventually(lambda: not source.connected, what="the cancelled consumer noticed")
    assert source.last_error is not None
    await broker.declare(unique)
    await eventually(lambda: source.connected, what="the source to consume again")
    events = sample_events(unique, 20)
    await broker.publish(unique, [body for _, body in events])
    assert sorted(await collect([intake], 20)) == sorted(key for key, _ in events)


async def test_poison_messages_go_to_the_dead_letter_queue_and_are_acked(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Unparseable or unmappable messages are dead-lettered with bytes, headers and reason."""
    await broker.declare(unique)
    good = sample_events(unique, 200)
    await broker.publish(unique, [body for _, body in good[:100]])
    await broker.publish(unique, list(POISON), headers={"origin": "poison-test"})
    await broker.publish(unique, [body for _, body in good[100:]])
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake)
    sources.append(source)
    await source.start()
    keys = await collect([intake], 200)
    assert sorted(keys) == sorted(key for key, _ in good)
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") == 200 + len(POISON))
    letters = await intake.dead_letters()
    assert {letter.event for letter in letters} == set(POISON)
    for letter in letters:
        assert letter.source == "rabbit"
        assert letter.headers.get("origin") == "poison-test"
        assert POISON[letter.event] in letter.reason
    assert intake.sample("source_dead_lettered_total", "rabbit") == len(POISON)
    assert intake.sample("events_rejected_total", "rabbit") == len(POISON)
    await source.close()
    assert await broker.counts(unique) == (0, 0)


async def test_dropped_connection_reconnects_and_loses_nothing(
    broker: Broker,
    intake_factory: IntakeFactory,
    proxy_factory: object,
    sources: list,
    unique: str,
) -> None:
    """Connections reset mid-stream: the source reconnects and every event arrives."""
    await broker.declare(unique)
    events = sample_events(unique, 6_000)
    proxy: TcpProxy = await proxy_factory(5672)  # type: ignore[operator]
    intake = await intake_factory()
    source = make_source(
        "rabbit", unique, intake, port=proxy.port, batch_size=200, reconnect_initial_s=0.05
    )
    sources.append(source)
    await source.start()
    await broker.publish(unique, [body for _, body in events[:3_000]])
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") >= 500)
    assert proxy.cut() >= 1
    proxy.refuse(0.3)
    await broker.publish(unique, [body for _, body in events[3_000:]])
    await eventually(lambda: intake.sample("source_reconnects_total", "rabbit") >= 1)
    keys = await collect([intake], [key for key, _ in events])
    # At least once: a batch committed but not acked before the cut comes again.
    assert set(keys) == {key for key, _ in events}
    assert source.stats()["reconnects"] >= 1
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") >= 6_000)
    await source.close()
    assert (await broker.counts(unique))[0] == 0


def close_connections_named(name: str) -> int:
    """Close, from the broker's side, the connections whose connection_name is ``name``."""
    listed = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # One line per connection: "<pid>\t[..., {"connection_name","<name>"}, ...]".
    wanted = f'{{"connection_name","{name}"}}'
    closed = 0
    for line in listed.stdout.splitlines():
        pid, _, properties = line.partition("\t")
        if wanted in properties:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "test: closed by the server"],
                capture_output=True,
                check=True,
                timeout=60,
            )
            closed += 1
    return closed


async def test_connection_closed_by_the_broker_is_reopened(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """rabbitmqctl close_connection on the source's connection: it reconnects, loses nothing."""
    await broker.declare(unique)
    intake = await intake_factory()
    source = make_source(unique, unique, intake, batch_size=100, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    events = sample_events(unique, 2_000)
    await broker.publish(unique, [body for _, body in events[:1_000]])
    await eventually(lambda: intake.sample("source_acked_total", unique) >= 200)
    closed = await asyncio.to_thread(close_connections_named, f"campaign-writer:{unique}")
    assert closed == 1
    await broker.publish(unique, [body for _, body in events[1_000:]])
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    assert intake.sample("source_reconnects_total", unique) >= 1
    gc.collect()  # report the dropped connection's leftovers here, under this test's filter


async def test_full_queue_stops_consumption_until_there_is_room(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """When the local queue is full nothing more is taken from RabbitMQ; it resumes later."""
    await broker.declare(unique)
    events = sample_events(unique, 3_000)
    await broker.publish(unique, [body for _, body in events])
    intake = await intake_factory(max_bytes=64 * 1024)
    source = make_source("rabbit", unique, intake, batch_size=100, prefetch=200)
    sources.append(source)
    await source.start()
    await eventually(lambda: intake.sample("source_paused", "rabbit") == 1, what="the pause")
    ready, _ = await broker.counts(unique)
    # Bounded: what is not committed stays in RabbitMQ, apart from one prefetch window.
    assert ready >= 3_000 - intake.depth() - 200
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    await eventually(lambda: intake.sample("source_paused", "rabbit") == 0)


async def test_two_writers_share_one_queue_without_loss_or_duplicates(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Two writer instances on one queue: every event once, split between them."""
    await broker.declare(unique)
    await check_two_writers_split(
        intake_factory,
        sources,
        lambda name, intake: make_source(name, unique, intake, batch_size=100, prefetch=100),
        lambda bodies: broker.publish(unique, bodies),
        unique,
    )


def test_settings_reject_bad_keys_with_their_path() -> None:
    """Config errors name the key's path; prefetch below the batch is refused."""
    with pytest.raises(ConfigError) as caught:
        read_settings(
            {"queue": "q", "prefetch": 10, "batch_size": 50, "queue_type": "stream", "x": 1},
            "sources[2]",
        )
    problems = caught.value.problems
    assert "sources[2].prefetch: must be at least batch_size (50)" in problems
    assert any(p.startswith("sources[2].queue_type: must be one of") for p in problems)
    assert any(p.startswith("sources[2].x: unknown key") for p in problems)
    with pytest.raises(ConfigError, match=r"sources\[0\]\.queue: is required"):
        read_settings({}, "sources[0]")
    settings = read_settings({"queue": "q", "batch_size": 300}, "sources[0]")
    assert settings.prefetch == 600 and settings.queue_type == "classic" and not settings.declare
    with pytest.raises(ConfigError) as caught:
        read_settings({"queue": "q", "url": "http://u:s3cret@host/"}, "sources[1]")
    assert any(p.startswith("sources[1].url: not an AMQP URL") for p in caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        read_settings({"queue": "q", "url": "amqp://u:s3cret@host/?heartbeat=x"}, "sources[1]")
    assert any(p.startswith("sources[1].url: bad AMQP URL") for p in caught.value.problems)
    assert "s3cret" not in str(caught.value)


async def test_ndjson_messages_carry_many_events_and_poison_lines_alone(
    broker: Broker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """With format = "ndjson", each message's lines are events: good lines are committed,
    a broken line is dead-lettered on its own with the message's headers, and every
    message is acked."""
    await broker.declare(unique)
    events = sample_events(unique, 1000)
    bodies = [
        b"\n".join(body for _, body in events[start : start + 100]) for start in range(0, 1000, 100)
    ]
    bodies[3] += b"\n{not json\n"
    await broker.publish(unique, bodies, headers={"producer": "batcher-7"})
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, format="ndjson")
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in events])
    assert sorted(keys) == sorted(key for key, _ in events)
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") == 10)
    dead = await intake.dead_letters()
    assert [(d.event, d.headers.get("producer")) for d in dead] == [(b"{not json", "batcher-7")]
    assert "invalid JSON" in dead[0].reason
    assert intake.sample("events_received_total", "rabbit") == 1001
    assert intake.sample("source_dead_lettered_total", "rabbit") == 1


def test_unknown_message_format_is_a_config_error() -> None:
    """format must be json or ndjson; anything else names the key."""
    with pytest.raises(ConfigError, match=r"sources\[0\]\.format: must be one of"):
        read_settings({"url": "amqp://127.0.0.1/", "queue": "q", "format": "xml"}, "sources[0]")
