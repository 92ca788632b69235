"""The writer against faults shaped like real instances' (protocol facts, section 5.4a).

Each test runs the whole writer in-process against the simulator over real HTTP, with
the simulator playing one of the shapes public sources show: an instance-wide masked
SOP-330023, a code-less duplicate key, a code-less bad login, collections stored only
in part, and collections refused without a code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from campaign_writer.config import from_mapping
from campaign_writer.deadletter import DeadLetterStore
from tests.support.writer import (
    config_tree,
    post_events,
    recipient_events,
    running_writer,
    sample_events,
    wait_for,
    writer_config,
)

SAMPLE = "dem:sampleTableStg"
RECIPIENT = "nms:recipient"
FAST_PAUSES = {"retry__fault_pause_initial_s": 0.2, "retry__fault_pause_max_s": 1.0}


async def _json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as answer:
        return answer.status, await answer.json()


def _letters(queue_path: Path) -> list[Any]:
    with DeadLetterStore(queue_path) as store:
        return store.page(limit=1000)


async def test_instance_wide_masked_fault_dead_letters_nothing(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """Every call answered SOP-330023 for a while: nothing is dead-lettered, the pause
    shows in /v1/stats and a metric, and everything is delivered after it, at a bounded
    cost in calls."""
    simulator = await simulator_factory(latency_ms=5, latency_jitter=0)
    config = writer_config(simulator.url, tmp_path, batch__max_records=50, **FAST_PAUSES)
    events = sample_events(600)
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.admin is not None
        await post_events(writer.http.url, events[:100])
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 100)
        await simulator.control(masked_s=3.0)
        await post_events(writer.http.url, events[100:])
        async with aiohttp.ClientSession() as session:
            seen: dict[str, Any] = {}

            async def paused() -> bool:
                status, stats = await _json(session, f"{writer.admin.url}/v1/stats")
                assert status == 200
                seen.update(stats["delivery"]["faults"])
                return bool(stats["delivery"]["faults"]["paused_lanes"])

            await wait_for_async(paused, timeout=10)
            lane = seen["paused_lanes"][f"{SAMPLE}#Ingest"]
            assert "SOP-330023" in lane["fault"]
            assert seen["instance_wide"] is True
            async with session.get(f"{writer.admin.url}/metrics") as answer:
                text = await answer.text()
            assert (
                'campaign_writer_lane_fault_paused{method="Ingest",schema="dem:sampleTableStg"}'
                " 1.0" in text
            )
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 600, timeout=30)
        assert writer.dispatcher.totals["dead_lettered"] == 0
        assert not writer.dispatcher.fault_pauses()["paused_lanes"]
    stats = await simulator.stats()
    masked_calls = stats["faults_by_kind"].get("inject:masked", 0)
    # 500 records in batches of 50: each batch meeting the fault costs a few calls,
    # then the paused lane probes one record at a time.
    assert 1 <= masked_calls <= 60, masked_calls
    assert _letters(tmp_path / "queue.sqlite3") == []
    stored = {row["id"] for row in await simulator.records(SAMPLE)}
    assert stored == {e["id"] for e in events}


async def wait_for_async(predicate: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_codeless_duplicate_key_dead_letters_only_that_record(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """An insert that meets an existing key is refused with the code-less PostgreSQL text:
    that record alone is dead-lettered, with the text, within seconds; the rest land."""
    simulator = await simulator_factory(unique_keys=True, latency_ms=5, latency_jitter=0)
    tree = config_tree(simulator.url, tmp_path, batch__linger_ms=200)
    for route in tree["routes"]:
        if route["name"] == "recipient":
            route["operation"] = "insert"
    config = from_mapping(tree)
    people = recipient_events(40)
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, people[7:8])
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await post_events(writer.http.url, people)  # holds people[7] a second time
        await wait_for(lambda: writer.dispatcher.totals["dead_lettered"] == 1, timeout=20)
        elapsed = loop.time() - started
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 40)
    assert elapsed < 10, elapsed
    (letter,) = _letters(tmp_path / "queue.sqlite3")
    assert "duplicate key violates unique constraint" in letter.reason
    assert "PostgreSQL error" in letter.reason
    assert people[7]["email"].encode() in letter.record
    emails = [row["email"] for row in await simulator.records(RECIPIENT)]
    assert sorted(emails) == sorted(p["email"] for p in people)


async def test_records_refused_by_a_codeless_fault_among_good_ones(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """Five records the database refuses with the code-less duplicate-key shape, among
    995 good ones: exactly those five are dead-lettered, with the fault text."""
    simulator = await simulator_factory(poison_style="duplicate", latency_ms=5)
    events = sample_events(1000)
    bad = {e["id"] for e in events[::200]}
    for event in events:
        if event["id"] in bad:
            event["testcol2"] = "__POISON__"
    config = writer_config(simulator.url, tmp_path, batch__linger_ms=300)
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, events)
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 995, timeout=30)
        await wait_for(lambda: writer.dispatcher.totals["dead_lettered"] == 5, timeout=30)
    letters = _letters(tmp_path / "queue.sqlite3")
    assert len(letters) == 5
    assert all("duplicate key" in letter.reason for letter in letters)
    stored = {row["id"] for row in await simulator.records(SAMPLE)}
    assert stored == {e["id"] for e in events} - bad


async def test_a_codeless_bad_login_is_fatal_and_dead_letters_nothing(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """A code-less "Invalid login or password" on business calls stops delivery, keeps
    the queue, says so in /readyz, and dead-letters nothing."""
    simulator = await simulator_factory(latency_ms=5)
    config = writer_config(simulator.url, tmp_path)
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.admin is not None and writer.queue is not None
        await simulator.control(badlogin_s=60.0)
        await post_events(writer.http.url, sample_events(200))
        await wait_for(lambda: writer.dispatcher.fatal is not None, timeout=15)
        assert "Invalid login or password" in writer.dispatcher.fatal
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{writer.admin.url}/readyz") as answer,
        ):
            assert answer.status == 503
            body = await answer.text()
        assert "Invalid login" in body
        await asyncio.sleep(0.5)
        assert writer.dispatcher.totals["dead_lettered"] == 0
        assert writer.queue.stats().depth == 200
    assert _letters(tmp_path / "queue.sqlite3") == []


async def test_a_partially_stored_collection_is_detected_and_nothing_lost(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """Unkeyed Ingest collections of which Campaign stores only the first record: the
    UUID count gives it away, the lane goes to one record per call, and every record is
    stored (the first of the batch twice: at-least-once)."""
    simulator = await simulator_factory(ingest_collections="partial", latency_ms=5)
    tree = config_tree(simulator.url, tmp_path, batch__linger_ms=200)
    for route in tree["routes"]:
        if route["name"] == "sample":
            route.pop("key", None)
    config = from_mapping(tree)
    events = sample_events(30)
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, events)
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 30, timeout=30)
        stats = writer.dispatcher.stats()
        lane = stats["lanes"][f"{SAMPLE}#Ingest"]
        assert lane["collections"] is False
        assert "UUIDs" in lane["collection_fallback"]
        assert stats["totals"]["partial_collections"] >= 1
        assert writer.metrics.partial_collections.labels(SAMPLE, "Ingest").value >= 1
    ids = [row["id"] for row in await simulator.records(SAMPLE)]
    assert set(ids) == {e["id"] for e in events}
    assert len(ids) <= 31


async def test_strict_profile_collections_refused_without_a_code(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """The strict simulator refuses Ingest collections with a code-less fault: the lane
    learns it from the evidence, falls back to one record per call, loses nothing and
    dead-letters nothing."""
    simulator = await simulator_factory(profile="strict", latency_ms=2, latency_jitter=0)
    events = sample_events(60)
    config = writer_config(simulator.url, tmp_path, batch__linger_ms=100, **FAST_PAUSES)
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, events)
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 60, timeout=60)
        assert writer.dispatcher.totals["dead_lettered"] == 0
        assert writer.dispatcher.fallbacks
    stored = {row["id"] for row in await simulator.records(SAMPLE)}
    assert stored == {e["id"] for e in events}


async def test_bad_records_left_alone_at_the_end_of_a_stream(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """Three records the database refuses, sent after the good ones are all delivered:
    with no record left to compare them with, a read of the schema shows Campaign works,
    and the words point at the data, so they are dead-lettered within seconds."""
    simulator = await simulator_factory(poison_style="duplicate", latency_ms=5)
    config = writer_config(simulator.url, tmp_path, **FAST_PAUSES)
    good = sample_events(50)
    bad = sample_events(3, start=100)
    for event in bad:
        event["testcol2"] = "__POISON__"
    async with running_writer(config) as writer:
        assert writer.http is not None
        await post_events(writer.http.url, good)
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 50)
        await post_events(writer.http.url, bad)
        await wait_for(lambda: writer.dispatcher.totals["dead_lettered"] == 3, timeout=20)
        assert writer.dispatcher.totals["tail_controls"] >= 1
    letters = _letters(tmp_path / "queue.sqlite3")
    assert {letter.key for letter in letters} == {e["id"] for e in bad}
    assert all(letter.code == "duplicate-key" for letter in letters)


async def test_masked_refusals_with_nothing_to_compare_are_kept(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """Records refused with the masked SOP-330023 and no other record of their lane left:
    nothing tells a bad record from a broken instance, so they stay queued, probed."""
    simulator = await simulator_factory(poison_style="masked", latency_ms=5)
    config = writer_config(simulator.url, tmp_path, **FAST_PAUSES)
    bad = sample_events(3)
    for event in bad:
        event["testcol2"] = "__POISON__"
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.queue is not None
        await post_events(writer.http.url, sample_events(20, start=50))
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 20)
        await post_events(writer.http.url, bad)
        await wait_for(lambda: writer.dispatcher.fault_pauses()["paused_lanes"], timeout=20)
        await asyncio.sleep(3.0)
        assert writer.dispatcher.totals["dead_lettered"] == 0
        assert writer.queue.stats().depth == 3
        # Records sent the same way succeed again, post after post: the masked ones
        # fail alone between their successes, and go.
        for start in range(500, 1500, 20):
            await post_events(writer.http.url, sample_events(20, start=start))
            await asyncio.sleep(0.1)
            if writer.dispatcher.totals["dead_lettered"] == 3:
                break
        await wait_for(lambda: writer.dispatcher.totals["dead_lettered"] == 3, timeout=30)
    letters = _letters(tmp_path / "queue.sqlite3")
    assert {letter.key for letter in letters} == {e["id"] for e in bad}
    assert all(letter.code == "SOP-330023" for letter in letters)


async def test_while_acks_cannot_be_written_one_batch_at_a_time_goes(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """The queue cannot write acks (a full disk): Campaign takes the records, but the
    writer must not resend the queue at full speed. Every lane waits, then one batch at
    a time goes until an ack is written again; then everything is acked."""
    from campaign_writer.errors import QueueError

    simulator = await simulator_factory(latency_ms=20, latency_jitter=0)
    config = writer_config(
        simulator.url,
        tmp_path,
        batch__max_records=10,
        retry__initial_backoff_s=0.1,
        retry__max_backoff_s=0.4,
    )
    async with running_writer(config) as writer:
        assert writer.http is not None and writer.queue is not None
        queue = writer.queue
        real_ack = queue.ack
        failing = {"on": True, "count": 0}

        async def ack(ids: list[int]) -> None:
            if failing["on"]:
                failing["count"] += 1
                raise QueueError("database or disk is full")
            await real_ack(ids)

        queue.ack = ack  # type: ignore[method-assign]
        await post_events(writer.http.url, sample_events(300))
        await wait_for(lambda: failing["count"] > 0, timeout=10)
        await asyncio.sleep(0.5)  # the batches already under way end
        most = 0
        for _ in range(200):
            most = max(most, len(writer.dispatcher._sending))
            await asyncio.sleep(0.01)
        assert most <= 1, f"{most} batches in flight while acks fail"
        failing["on"] = False
        await wait_for(lambda: queue.stats().depth == 0, timeout=30)
    stored = {row["id"] for row in await simulator.records(SAMPLE)}
    assert stored == {e["id"] for e in sample_events(300)}
