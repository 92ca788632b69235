"""A damaged queue file is refused with a recovery path, never replaced by an empty queue."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from campaign_writer.errors import QueueCorruptError, QueueError
from campaign_writer.queue import DurableQueue, read_stats
from tests.queue.support import items, rows
from tests.support.services import require_command


async def _filled(path: Path, count: int = 2000) -> None:
    queue = await DurableQueue.open(path)
    await queue.append(items("k", count, size=300))
    await queue.close()


async def test_corrupt_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    """Garbage where the queue file should be gives QueueCorruptError with the recovery steps."""
    path = tmp_path / "queue.sqlite3"
    path.write_bytes(b"this is not a database, it is a grocery list\n" * 100)
    with pytest.raises(QueueCorruptError) as caught:
        await DurableQueue.open(path)
    message = str(caught.value)
    assert "not an SQLite database" in message
    assert f"sqlite3 {path}.damaged .dump" in message
    assert path.read_bytes().startswith(b"this is not")  # left exactly as it was


async def test_corrupt_file_truncated_is_refused(tmp_path: Path) -> None:
    """A file cut short (shorter than its header says) is refused, not read as fewer records."""
    path = tmp_path / "queue.sqlite3"
    await _filled(path)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(QueueCorruptError, match=r"truncated: \d+ of \d+ bytes"):
        await DurableQueue.open(path)
    with pytest.raises(QueueCorruptError):
        read_stats(path)


async def test_corrupt_page_after_a_crash_is_found_and_the_documented_recovery_works(
    tmp_path: Path,
) -> None:
    """After an unclean stop a damaged page fails the check; the printed recovery salvages it."""
    path = tmp_path / "queue.sqlite3"
    await _filled(path)
    page_size = rows(path, "PRAGMA page_size")[0][0]
    assert isinstance(page_size, int)
    connection = sqlite3.connect(path)
    connection.execute("UPDATE state SET value = '0' WHERE name = 'clean'")  # as after kill -9
    connection.commit()
    connection.close()
    with path.open("r+b") as handle:
        handle.seek(page_size * 40 + 100)
        handle.write(b"\xde\xad\xbe\xef" * 200)
    with pytest.raises(QueueCorruptError) as caught:
        await DurableQueue.open(path)
    message = str(caught.value)
    require_command("sqlite3", "sqlite3")
    command = re.search(r"`(mv .*?)`", message)
    assert command is not None, message
    await asyncio.to_thread(
        subprocess.run, command.group(1), shell=True, check=True, capture_output=True
    )
    queue = await DurableQueue.open(path)
    try:
        salvaged = await queue.lease(10_000)
        assert 1000 < len(salvaged) < 2000  # most rows back; the damaged page's rows lost
        assert queue.stats().depth == len(salvaged)  # totals recounted from the rows
    finally:
        await queue.close()


async def test_corrupt_file_of_another_application_is_refused(tmp_path: Path) -> None:
    """An SQLite file with someone else's tables is not taken over as a queue."""
    path = tmp_path / "other.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    connection.commit()
    connection.close()
    with pytest.raises(QueueCorruptError, match="not a campaign-writer queue"):
        await DurableQueue.open(path)


async def test_one_process_owns_a_queue_file(tmp_path: Path) -> None:
    """A second open of a file already open is refused; after close it opens again."""
    path = tmp_path / "queue.sqlite3"
    first = await DurableQueue.open(path)
    try:
        with pytest.raises(QueueError, match="in use by another campaign-writer process"):
            await DurableQueue.open(path)
    finally:
        await first.close()
    second = await DurableQueue.open(path)
    await second.close()
