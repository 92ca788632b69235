"""Redis Streams source against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import redis.asyncio as aioredis

from campaign_writer.errors import ConfigError
from campaign_writer.metrics import Metrics
from campaign_writer.sources.redis_streams import RedisStreamsSource, read_settings
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


@pytest.fixture
async def client(redis_port: int, unique: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    yield client
    await client.delete(unique)
    await client.aclose()


async def publish(
    client: aioredis.Redis, stream: str, bodies: Sequence[bytes], **extra: str
) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for body in bodies:
            pipe.xadd(stream, {"event": body, **extra})
        await pipe.execute()


def redeliveries(metrics: Metrics, source: str) -> float:
    """campaign_writer_source_redeliveries_total{source} as exported."""
    value = metrics.registry.get_sample_value(
        "campaign_writer_source_redeliveries_total", {"source": source}
    )
    return value or 0.0


def make_source(
    name: str, stream: str, intake: Intake, port: int = 6379, **keys: object
) -> RedisStreamsSource:
    raw = {"url": f"redis://127.0.0.1:{port}/0", "stream": stream, "group": "writers", **keys}
    settings = read_settings(raw, "sources[0]")
    return RedisStreamsSource(name, settings, intake.router, intake.queue, intake.metrics)


async def pending(client: aioredis.Redis, stream: str) -> int:
    summary = await client.xpending(stream, "writers")
    return int(summary["pending"])


async def _no_pending(client: aioredis.Redis, stream: str) -> bool:
    return await pending(client, stream) == 0


async def test_every_event_is_committed_then_acked(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """10,000 stream entries are all in the local queue and none stays pending."""
    events = sample_events(unique, 10_000)
    await publish(client, unique, [body for _, body in events])
    intake = await intake_factory()
    source = make_source("redis", unique, intake, consumer="c1")
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in events])
    assert sorted(keys) == sorted(key for key, _ in events)
    await eventually(lambda: intake.sample("source_acked_total", "redis") == 10_000)
    assert await pending(client, unique) == 0
    await source.close()
    # A consumer with nothing pending leaves the group when it closes.
    assert await client.xinfo_consumers(unique, "writers") == []


async def test_group_is_created_only_for_new_entries_when_start_id_is_dollar(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """start_id "$" skips what the stream held before the group existed."""
    await publish(client, unique, [body for _, body in sample_events(f"{unique}-old", 5)])
    intake = await intake_factory()
    source = make_source("redis", unique, intake, start_id="$")
    sources.append(source)
    await source.start()
    new = sample_events(f"{unique}-new", 5)
    await publish(client, unique, [body for _, body in new])
    keys = await collect([intake], 5)
    assert sorted(keys) == sorted(key for key, _ in new)


async def test_poison_entries_are_dead_lettered_with_their_fields(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Bad entries go to the DLQ with the bytes, other fields and reason; then XACKed."""
    good = sample_events(unique, 100)
    await publish(client, unique, [body for _, body in good[:50]])
    await publish(client, unique, list(POISON), origin="poison-test")
    await client.xadd(unique, {"payload": b"{}", "origin": "wrong-field"})
    await publish(client, unique, [body for _, body in good[50:]])
    intake = await intake_factory()
    source = make_source("redis", unique, intake)
    sources.append(source)
    await source.start()
    keys = await collect([intake], 100)
    assert sorted(keys) == sorted(key for key, _ in good)
    await eventually(lambda: intake.sample("source_acked_total", "redis") == 100 + len(POISON) + 1)
    letters = await intake.dead_letters()
    by_payload = {letter.event: letter for letter in letters}
    assert set(by_payload) == {*POISON, b""}
    for body, why in POISON.items():
        assert why in by_payload[body].reason
        assert by_payload[body].headers == {"origin": "poison-test"}
    missing = by_payload[b""]
    assert "no 'event' field" in missing.reason
    assert missing.headers == {"payload": "{}", "origin": "wrong-field"}
    assert intake.sample("source_dead_lettered_total", "redis") == len(POISON) + 1
    assert await pending(client, unique) == 0


async def test_entries_a_crashed_consumer_left_pending_are_reclaimed(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """XAUTOCLAIM takes over entries another consumer read but never acked, and counts
    them as redeliveries."""
    events = sample_events(unique, 300)
    await client.xgroup_create(unique, "writers", id="0", mkstream=True)
    await publish(client, unique, [body for _, body in events])
    # A writer that read 120 entries and died before committing them.
    read = await client.xreadgroup("writers", "crashed", {unique: ">"}, count=120)
    assert len(read[0][1]) == 120
    intake = await intake_factory()
    source = make_source(
        "redis", unique, intake, consumer="alive", claim_idle_ms=1_000, claim_interval_ms=200
    )
    sources.append(source)
    await source.start()
    keys = await collect([intake], 300)
    assert sorted(keys) == sorted(key for key, _ in events)
    assert await pending(client, unique) == 0
    assert source.stats()["redelivered"] == 120
    assert redeliveries(intake.metrics, "redis") == 120


async def test_own_pending_entries_are_taken_back_after_a_restart(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """A writer restarted under the same consumer name first re-reads its pending entries
    (counted as redeliveries)."""
    events = sample_events(unique, 50)
    await client.xgroup_create(unique, "writers", id="0", mkstream=True)
    await publish(client, unique, [body for _, body in events])
    await client.xreadgroup("writers", "same-name", {unique: ">"}, count=50)
    intake = await intake_factory()
    source = make_source("redis", unique, intake, consumer="same-name")
    sources.append(source)
    await source.start()
    keys = await collect([intake], 50, timeout=10)
    assert sorted(keys) == sorted(key for key, _ in events)
    assert await pending(client, unique) == 0
    assert redeliveries(intake.metrics, "redis") == 50


async def test_killed_connection_reconnects_and_loses_nothing(
    client: aioredis.Redis,
    intake_factory: IntakeFactory,
    proxy_factory: object,
    sources: list,
    unique: str,
) -> None:
    """The connection is reset mid-stream: the source reconnects and every event arrives."""
    events = sample_events(unique, 6_000)
    proxy: TcpProxy = await proxy_factory(6379)  # type: ignore[operator]
    intake = await intake_factory()
    source = make_source(
        "redis", unique, intake, port=proxy.port, batch_size=200, reconnect_initial_s=0.05
    )
    sources.append(source)
    await source.start()
    await publish(client, unique, [body for _, body in events[:3_000]])
    await eventually(lambda: intake.sample("source_acked_total", "redis") >= 400)
    cut = proxy.cut()
    assert cut >= 1
    proxy.refuse(0.3)
    await publish(client, unique, [body for _, body in events[3_000:]])
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    assert intake.sample("source_reconnects_total", "redis") >= 1
    # Redis holds nothing pending: every entry was acked, none waits for redelivery.
    await eventually(lambda: _no_pending(client, unique), what="no pending entries")
    # An XACK that Redis ran but whose reply the cut lost is not counted (the source
    # cannot know it worked); at most one batch per cut connection.
    assert intake.sample("source_acked_total", "redis") >= 6_000 - 200 * cut


async def test_server_side_client_kill_is_survived(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """CLIENT KILL of the source's connections from the server: it reconnects."""
    intake = await intake_factory()
    source = make_source("kill-me", unique, intake, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    await publish(client, unique, [body for _, body in sample_events(f"{unique}-a", 100)])
    await collect([intake], 100)
    killed = 0
    for entry in await client.client_list():
        if entry.get("name") == "campaign-writer:kill-me":
            killed += await client.client_kill_filter(_id=entry["id"])
    assert killed >= 1
    await publish(client, unique, [body for _, body in sample_events(f"{unique}-b", 100)])
    assert len(await collect([intake], 200)) >= 200
    await eventually(lambda: intake.sample("source_reconnects_total", "kill-me") >= 1)


async def test_full_queue_holds_the_batch_until_there_is_room(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """A full local queue pauses reading; the held entries stay pending, then arrive."""
    events = sample_events(unique, 2_000)
    await publish(client, unique, [body for _, body in events])
    intake = await intake_factory(max_bytes=64 * 1024)
    source = make_source("redis", unique, intake, batch_size=100)
    sources.append(source)
    await source.start()
    await eventually(lambda: intake.sample("source_paused", "redis") == 1, what="the pause")
    info = await client.xinfo_groups(unique)
    # Bounded: the held batch and the one read beside it are pending; no more was read.
    assert info[0]["pending"] <= 2 * 100
    keys = await collect([intake], [key for key, _ in events])
    assert set(keys) == {key for key, _ in events}
    await eventually(lambda: intake.sample("source_paused", "redis") == 0)


async def test_two_writers_share_one_group_without_loss_or_duplicates(
    client: aioredis.Redis, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """Two writers in one consumer group: every entry once, split between them."""

    async def publish_in_thousands(bodies: list[bytes]) -> None:
        for start in range(0, len(bodies), 1_000):
            await publish(client, unique, bodies[start : start + 1_000])

    await check_two_writers_split(
        intake_factory,
        sources,
        lambda name, intake: make_source(name, unique, intake, consumer=name, batch_size=100),
        publish_in_thousands,
        unique,
    )


def test_settings_reject_bad_keys_with_their_path() -> None:
    """Config errors name the key's path; defaults are filled in."""
    with pytest.raises(ConfigError) as caught:
        read_settings({"stream": "s", "claim_idle_ms": 10, "url": "localhost"}, "sources[1]")
    problems = caught.value.problems
    assert "sources[1].group: is required" in problems
    assert "sources[1].claim_idle_ms: must be at least 1000, got 10" in problems
    assert any(p.startswith("sources[1].url: must be a URL") for p in problems)
    settings = read_settings({"stream": "s", "group": "g"}, "sources[1]")
    assert settings.field == "event" and settings.consumer and settings.start_id == "0"
