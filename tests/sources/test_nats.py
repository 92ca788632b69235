"""NATS JetStream source against the real nats-server on 127.0.0.1:4222."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import nats
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from campaign_writer.errors import ConfigError
from campaign_writer.sources.nats import NatsSource, read_settings
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

pytestmark = pytest.mark.services


class Stream:
    """A JetStream stream of the test's own, deleted at teardown."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.js: JetStreamContext = client.jetstream()
        self.name = name
        self.subject = f"{name}.events"

    async def publish(self, bodies: Sequence[bytes], headers: dict[str, str] | None = None) -> None:
        """Core-NATS publishes (no per-message round trip), then wait until all are stored."""
        before = (await self.js.stream_info(self.name)).state.messages
        for body in bodies:
            await self.client.publish(self.subject, body, headers=headers)
        await self.client.flush()
        target = before + len(bodies)

        async def stored() -> bool:
            return (await self.js.stream_info(self.name)).state.messages >= target

        await eventually(stored, 30, what=f"{target} messages stored in {self.name}")

    async def consumer_state(self, durable: str) -> tuple[int, int]:
        """(messages not yet delivered, delivered but not acked)."""
        info = await self.js.consumer_info(self.name, durable)
        return info.num_pending or 0, info.num_ack_pending or 0


@pytest.fixture
async def stream(nats_port: int, unique: str) -> AsyncIterator[Stream]:
    client = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    stream = Stream(client, unique)
    await stream.js.add_stream(name=unique, subjects=[stream.subject])
    yield stream
    await stream.js.delete_stream(unique)
    await client.close()


def make_source(
    name: str, stream: Stream, intake: Intake, port: int = 4222, **keys: object
) -> NatsSource:
    raw = {
        "url": f"nats://127.0.0.1:{port}",
        "stream": stream.name,
        "durable": "writers",
        **keys,
    }
    settings = read_settings(raw, "sources[0]")
    return NatsSource(name, settings, intake.router, intake.queue, intake.metrics)


async def start_paused(
    stream: Stream, intake_factory: IntakeFactory, sources: list, count: int, **keys: object
) -> tuple[list[tuple[str, bytes]], Intake]:
    """``count`` events published, then a source (batches of 100) on a 64 KiB local queue,
    started and waited for until the full queue pauses it."""
    events = sample_events(stream.name, count)
    await stream.publish([body for _, body in events])
    intake = await intake_factory(max_bytes=64 * 1024)
    source = make_source("nats", stream, intake, batch_size=100, **keys)
    sources.append(source)
    await source.start()
    await eventually(lambda: intake.sample("source_paused", "nats") == 1, what="the pause")
    return events, intake


async def test_every_event_is_committed_then_acked(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """10,000 stream messages are all in the local queue; the consumer has nothing left."""
    events = sample_events(stream.name, 10_000)
    await stream.publish([body for _, body in events])
    intake = await intake_factory()
    source = make_source("nats", stream, intake)
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in events])
    assert sorted(keys) == sorted(key for key, _ in events)
    await eventually(lambda: intake.sample("source_acked_total", "nats") == 10_000)
    await eventually(lambda: _settled(stream, "writers"), what="no pending or unacked messages")


async def _settled(stream: Stream, durable: str) -> bool:
    return await stream.consumer_state(durable) == (0, 0)


async def test_an_existing_durable_is_bound_not_recreated(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """create = false binds a consumer made elsewhere, with its subject filter."""
    from nats.js.api import AckPolicy, ConsumerConfig

    await stream.js.add_consumer(
        stream.name,
        ConsumerConfig(
            durable_name="ops-made",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=stream.subject,
        ),
    )
    intake = await intake_factory()
    source = make_source("nats", stream, intake, durable="ops-made", create=False)
    sources.append(source)
    await source.start()
    assert source.connected
    events = sample_events(stream.name, 20)
    await stream.publish([body for _, body in events])
    assert sorted(await collect([intake], 20)) == sorted(key for key, _ in events)


async def test_missing_durable_without_create_is_an_error_retried(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """create = false and no such consumer: reported, and retried with backoff."""
    intake = await intake_factory()
    source = make_source("nats", stream, intake, durable="absent", create=False)
    sources.append(source)
    await source.start()
    assert not source.connected
    assert source.last_error is not None and "absent" in source.last_error


async def test_a_deleted_consumer_is_noticed_and_recreated(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """The durable is deleted under the source: it reconnects, recreates it, goes on."""
    intake = await intake_factory()
    source = make_source("nats", stream, intake, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    await stream.js.delete_consumer(stream.name, "writers")
    await eventually(lambda: intake.sample("source_reconnects_total", "nats") >= 1)
    events = sample_events(stream.name, 20)
    await stream.publish([body for _, body in events])
    assert sorted(await collect([intake], 20)) == sorted(key for key, _ in events)


async def test_a_consumer_deleted_between_pull_requests_is_noticed(
    stream: Stream, intake_factory: IntakeFactory, sources: list, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleted while the source was paused on a full queue, so no pull request was open to
    get JetStream's 409: the first unanswered request after the pause finds it gone."""
    events, intake = await start_paused(
        stream, intake_factory, sources, 600, reconnect_initial_s=0.05
    )
    await stream.js.delete_consumer(stream.name, "writers")
    with caplog.at_level(logging.WARNING, logger="campaign_writer.sources"):
        keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    assert intake.sample("source_reconnects_total", "nats") >= 1
    errors = [str(getattr(record, "error", "")) for record in caplog.records]
    assert any("no longer exists" in error for error in errors), errors


async def test_poison_messages_are_dead_lettered_and_never_redelivered(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """Bad messages go to the DLQ with bytes, headers and reason, and are acked."""
    good = sample_events(stream.name, 100)
    await stream.publish([body for _, body in good[:50]])
    await stream.publish(list(POISON), headers={"origin": "poison-test"})
    await stream.publish([body for _, body in good[50:]])
    intake = await intake_factory()
    source = make_source("nats", stream, intake, ack_wait_s=1.0)
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in good])
    assert sorted(keys) == sorted(key for key, _ in good)
    await eventually(lambda: intake.sample("source_acked_total", "nats") == 100 + len(POISON))
    letters = await intake.dead_letters()
    assert sorted(letter.event for letter in letters) == sorted(POISON)
    for letter in letters:
        assert POISON[letter.event] in letter.reason
        assert letter.headers.get("origin") == "poison-test"
    await eventually(lambda: _settled(stream, "writers"), what="nothing left to redeliver")
    assert intake.sample("source_dead_lettered_total", "nats") == len(POISON)


async def test_dropped_connection_reconnects_and_loses_nothing(
    stream: Stream,
    proxy_factory: object,
    intake_factory: IntakeFactory,
    sources: list,
    nats_port: int,
) -> None:
    """The connection is reset mid-stream: the source reconnects and every event arrives."""
    events = sample_events(stream.name, 6_000)
    proxy: TcpProxy = await proxy_factory(nats_port)  # type: ignore[operator]
    intake = await intake_factory()
    source = make_source(
        "nats",
        stream,
        intake,
        port=proxy.port,
        batch_size=200,
        reconnect_initial_s=0.05,
        ack_wait_s=2.0,
    )
    sources.append(source)
    await source.start()
    await stream.publish([body for _, body in events[:3_000]])
    await eventually(lambda: intake.sample("source_acked_total", "nats") >= 400)
    assert proxy.cut() >= 1
    proxy.refuse(0.3)
    await stream.publish([body for _, body in events[3_000:]])
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    assert intake.sample("source_reconnects_total", "nats") >= 1
    await eventually(lambda: _settled(stream, "writers"), what="every message acked")


async def test_full_queue_naks_with_a_delay_and_resumes(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """A full local queue: the batch is nak-ed with a delay, redelivered once there is room
    (num_delivered > 1: counted in the redeliveries metric)."""
    events, intake = await start_paused(stream, intake_factory, sources, 2_000, nak_delay_s=0.2)
    source = sources[-1]
    not_delivered, unacked = await stream.consumer_state("writers")
    # Bounded by a few batches, not by the 2,000 backlog: the held batch, the one
    # received beside it and what open pull requests brought, all nak-ed and waiting
    # out their delay on the server; the rest was never delivered.
    assert unacked <= 3 * 100 and not_delivered >= 2_000 - intake.depth() - 3 * 100
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    assert source.stats()["redelivered"] >= 1
    exported = intake.metrics.registry.get_sample_value(
        "campaign_writer_source_redeliveries_total", {"source": source.name}
    )
    assert exported == source.stats()["redelivered"]
    await eventually(lambda: _settled(stream, "writers"), what="every message acked")


async def test_two_writers_share_one_durable_without_loss_or_duplicates(
    stream: Stream, intake_factory: IntakeFactory, sources: list
) -> None:
    """Two writers on one durable pull consumer: every message once, split between them."""
    await check_two_writers_split(
        intake_factory,
        sources,
        lambda name, intake: make_source(name, stream, intake, batch_size=100),
        stream.publish,
        stream.name,
    )


def test_settings_reject_bad_keys_with_their_path() -> None:
    """Config errors name the key's path; defaults are filled in."""
    with pytest.raises(ConfigError) as caught:
        read_settings({"stream": "s", "max_ack_pending": 10, "batch_size": 50}, "sources[3]")
    problems = caught.value.problems
    assert "sources[3].durable: is required" in problems
    assert "sources[3].max_ack_pending: must be at least batch_size (50)" in problems
    settings = read_settings({"stream": "s", "durable": "d"}, "sources[3]")
    assert settings.create and settings.subject is None and settings.nak_delay_s == 2.0
