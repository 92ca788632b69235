"""A full queue refuses appends whole, never drops, and lets intake resume when room returns."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from campaign_writer.errors import QueueFullError
from campaign_writer.queue import DurableQueue, RawDeadLetter
from campaign_writer.queue.file import translate_error
from tests.queue.support import items, rows


async def test_full_queue_refuses_an_append_with_nothing_written(tmp_path: Path) -> None:
    """Over max_bytes, append raises QueueFullError and the file holds exactly what it held."""
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path, max_bytes=64 * 1024)
    try:
        await queue.append(items("a", 100, size=400))
        before = queue.stats()
        with pytest.raises(QueueFullError, match="the queue is full"):
            await queue.append(items("b", 100, size=400))
        assert queue.stats().depth == before.depth == 100
        assert rows(path, "SELECT count(*) FROM records WHERE key LIKE 'b%'") == [(0,)]
        await queue.append(items("c", 5, size=400))  # what still fits is taken
        assert queue.stats().depth == 105
    finally:
        await queue.close()


async def test_full_queue_resumes_when_delivery_makes_room(tmp_path: Path) -> None:
    """wait_for_space times out while full and wakes once acks bring usage under the mark."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", max_bytes=64 * 1024)
    try:
        while True:
            try:
                await queue.append(items(f"k{queue.stats().depth}-", 10, size=400))
            except QueueFullError:
                break
        assert not queue.has_room(4096)
        assert await queue.wait_for_space(0.05) is False
        waiter = asyncio.create_task(queue.wait_for_space(5.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        leased = await queue.lease(60)
        await queue.ack([record.id for record in leased])
        assert await waiter is True
        await queue.append(items("after", 10, size=400))
    finally:
        await queue.close()


async def test_full_queue_counts_dead_letters_but_always_takes_a_move(tmp_path: Path) -> None:
    """Dead letters use the same budget; moving a leased record to the DLQ is never refused."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", max_bytes=64 * 1024)
    try:
        await queue.append(items("a", 120, size=400))
        leased = await queue.lease(120)
        await queue.dead_letter([(r.id, "refused by Campaign", 500, "PGS-220000") for r in leased])
        stats = queue.stats()
        assert (stats.depth, stats.dead_letters) == (0, 120)
        assert stats.used_bytes > 60 * 1024
        with pytest.raises(QueueFullError):
            await queue.append(items("b", 20, size=400))
        with pytest.raises(QueueFullError):
            await queue.append([], dead_letters=[RawDeadLetter("rabbit", b"x" * 8000, {}, "bad")])
    finally:
        await queue.close()


def test_full_disk_is_reported_as_queue_full(tmp_path: Path) -> None:
    """SQLite's 'database or disk is full' becomes QueueFullError, so intake answers 503."""
    connection = sqlite3.connect(tmp_path / "tiny.sqlite3")
    connection.execute("PRAGMA max_page_count = 4")
    connection.execute("CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.OperationalError) as caught:
        connection.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    connection.close()
    error = translate_error(caught.value, tmp_path / "tiny.sqlite3")
    assert isinstance(error, QueueFullError)
    assert error.retriable
