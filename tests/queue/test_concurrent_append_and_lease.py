"""Concurrent appends share commits, and concurrent leasing delivers each record exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from campaign_writer.queue import DurableQueue
from tests.queue.support import items


async def test_concurrent_append_and_lease_deliver_each_record_exactly_once(
    tmp_path: Path,
) -> None:
    """Eight appenders and three lease/ack consumers at once: no loss, no duplicate lease."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", synchronous="FULL")
    appends = 8 * 40
    delivered: list[str] = []
    producing = True

    async def produce(writer: int) -> None:
        for batch in range(40):
            await queue.append(items(f"w{writer}-{batch}-", 20))

    async def consume() -> None:
        while producing or queue.stats().depth:
            leased = await queue.lease(75)
            if not leased:
                await queue.wait_for_records(0.02)
                continue
            delivered.extend(str(record.key) for record in leased)
            await queue.ack([record.id for record in leased])

    try:
        consumers = [asyncio.create_task(consume()) for _ in range(3)]
        await asyncio.gather(*(produce(w) for w in range(8)))
        producing = False
        await asyncio.wait_for(asyncio.gather(*consumers), 30)
        assert len(delivered) == appends * 20
        assert len(set(delivered)) == len(delivered)
        assert queue.stats().depth == 0 and queue.stats().bytes == 0
        # Group commit: many appends (and acks) went to disk in fewer transactions.
        assert queue.commits < appends
    finally:
        await queue.close()
