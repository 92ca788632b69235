"""Disk: the queue's filesystem fills up. Intake answers 503 and the broker source stops
consuming; nothing acknowledged is lost; the writer recovers when space returns.

The filesystem is a real 32 MiB tmpfs mounted for the test (``small_disk``), filled
with a ballast file so the queue file hits ENOSPC (SQLITE_FULL) long before its
``queue.max_bytes`` budget.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.reliability.brokers import RabbitPublisher
from tests.reliability.conftest import Figures
from tests.reliability.support import WriterProc, base_tree
from tests.support.writer import wait_for

pytestmark = pytest.mark.services

SAMPLE = "dem:sampleTableStg"
ROOM = 1536 * 1024  # free space left beside the ballast


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file taking all but ``leave`` bytes of the filesystem."""
    ballast = disk / "ballast"
    stat = os.statvfs(disk)
    size = max(0, stat.f_bavail * stat.f_frsize - leave)
    with ballast.open("wb") as handle:
        handle.write(b"\0" * size)
    return ballast


def _events(prefix: str, count: int) -> list[dict[str, str]]:
    padding = "p" * 200  # ~300 bytes a record, so a few MiB fill the disk quickly
    return [
        {"type": "sample", "id": f"{prefix}{i}", "testcol1": padding, "testcol2": prefix}
        for i in range(count)
    ]


async def test_full_disk_gives_503_pauses_sources_and_recovers_losing_nothing(
    simulator_factory,
    small_disk: Path,
    tmp_path: Path,
    rabbitmq_port: int,
    soak: bool,
    figures: Figures,
) -> None:
    """On a tmpfs filled to the brim (Campaign down, so nothing drains): intake answers 503
    with Retry-After, the RabbitMQ source pauses and leaves messages in the broker, the
    process stays up and backs off while Campaign is back but acks cannot be written; once
    the ballast is deleted, intake takes events again and every 202-acknowledged and
    broker-confirmed event reaches Campaign. Once; three times over in the soak."""
    simulator = await simulator_factory(tps_limit=0, latency_ms=0, poison_marker="")
    queue_name = f"cw-disk-{uuid.uuid4().hex[:10]}"
    publisher = await RabbitPublisher(rabbitmq_port, queue_name).open()
    tree = base_tree(
        simulator.url,
        small_disk / "queue.sqlite3",
        batch__max_records=200,
        retry__max_backoff_s=2,
    )
    tree["queue"]["max_bytes"] = "1GiB"
    tree["sources"] = [
        {
            "kind": "rabbitmq",
            "name": "rabbit",
            "url": f"amqp://guest:guest@127.0.0.1:{rabbitmq_port}/",
            "queue": queue_name,
            "batch_size": 100,
            "reconnect_initial_s": 0.05,
        }
    ]
    writer = WriterProc(tmp_path, tree)
    acked: set[str] = set()
    confirmed: set[str] = set()
    statuses: list[int] = []
    try:
        url = await writer.start()
        async with aiohttp.ClientSession() as session:

            async def post(prefix: str) -> int:
                events = _events(prefix, 200)
                body = b"\n".join(orjson.dumps(e) for e in events)
                headers = {"Content-Type": "application/x-ndjson"}
                async with session.post(f"{url}/v1/events", data=body, headers=headers) as answer:
                    payload = await answer.json()
                    if answer.status == 202:
                        assert payload["accepted"] == len(events), payload
                        acked.update(e["id"] for e in events)
                    else:
                        assert answer.status == 503, payload
                        assert answer.headers["Retry-After"].isdigit()
                        assert "full" in payload["error"]
                    return answer.status

            for cycle in range(3 if soak else 1):
                await simulator.control(outage_s=3600)
                ballast = await asyncio.to_thread(_fill, small_disk, ROOM)
                # Fill: post until the disk refuses three requests in a row.
                for n in range(400):
                    statuses.append(await post(f"fill{cycle}-{n}-"))
                    if statuses[-3:] == [503, 503, 503]:
                        break
                assert statuses[-3:] == [503, 503, 503], "the disk never filled"
                assert 202 in statuses

                ids = [f"mq{cycle}-{i}" for i in range(1000)]
                await publisher.publish([orjson.dumps(e) for e in _events(f"mq{cycle}-", 1000)])
                confirmed.update(ids)
                await wait_for(
                    lambda: writer.metric("campaign_writer_source_paused", 'source="rabbit"'),
                    timeout=30,
                )
                acked_before = await writer.metric("campaign_writer_source_acked_total")
                await asyncio.sleep(1.5)
                assert await writer.metric("campaign_writer_source_acked_total") == acked_before
                assert await publisher.ready_count() > 0  # left in the broker, not dropped
                assert await post(f"still-full{cycle}-") == 503
                writer.check_alive()

                # Campaign is back but the disk is still full: deliveries cannot be acked.
                # The writer may deliver again (at least once) but must back off, not
                # resend the same batches as fast as the throttle lets it.
                await simulator.control(outage_s=0)
                await asyncio.sleep(1.5)  # the first delivery of each queued batch
                before = (await simulator.stats())["calls_by_method"].get("Ingest", 0)
                await asyncio.sleep(2.0)
                writer.check_alive()
                resent = (await simulator.stats())["calls_by_method"].get("Ingest", 0) - before
                assert resent <= 30, f"{resent} Ingest calls in 2 s while no ack could be written"

                # Space returns.
                await asyncio.to_thread(ballast.unlink)

                async def accepted_again(cycle: int = cycle) -> bool:
                    return await post(f"after{cycle}-{len(statuses)}-") == 202

                await wait_for(accepted_again, timeout=60, interval=0.5)

                async def all_in_campaign() -> bool:
                    writer.check_alive()
                    stored = {row["id"] for row in await simulator.records(SAMPLE, page=100_000)}
                    return (acked | confirmed) <= stored

                await wait_for(all_in_campaign, timeout=120, interval=0.5)
                await wait_for(
                    lambda: _is_zero(
                        writer.metric("campaign_writer_source_paused", 'source="rabbit"')
                    ),
                    timeout=30,
                )
        rows = await simulator.records(SAMPLE, page=100_000)
        assert await writer.stop() == 0
    finally:
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)
        await publisher.close()
    stored = {row["id"]: row for row in rows}
    missing = (acked | confirmed) - set(stored)
    figures.acknowledged += len(acked | confirmed)
    figures.lost += len(missing)
    figures.faults["disk full (503 answers)"] += statuses.count(503)
    assert not missing
    assert all(stored[i]["testcol1"] == "p" * 200 for i in acked | confirmed)


async def _is_zero(value) -> bool:
    return await value == 0
