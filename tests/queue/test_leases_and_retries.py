"""Leases, acks, retries and releases: order, attempt counts, retry_at, and restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from campaign_writer.queue import DurableQueue
from campaign_writer.queue.file import insert_records, open_connection
from campaign_writer.queue.jobs import AppendJob, Job, LeaseJob
from campaign_writer.queue.worker import id_runs
from tests.queue.support import WallClock, append_elsewhere, item, items, rows


async def test_lease_hands_out_each_ready_record_once_oldest_first(tmp_path: Path) -> None:
    """Leases come in append order and never hand out a record that is already leased."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    try:
        await queue.append(items("a", 30))
        first = await queue.lease(10)
        second = await queue.lease(100)
        assert [r.key for r in first + second] == [f"a{i}" for i in range(30)]
        assert await queue.lease(10) == []
        assert first[0].attempts == 0 and first[0].lane == "dem:sampleTableStg#Ingest"
        await queue.ack([r.id for r in first])
        assert queue.stats().depth == 20
        assert queue.stats().leased == 20
    finally:
        await queue.close()


async def test_retry_counts_attempts_and_waits_for_retry_at(tmp_path: Path) -> None:
    """retry() makes records ready again at retry_at with one more attempt, and remembers why."""
    path = tmp_path / "queue.sqlite3"
    clock = WallClock()
    queue = await DurableQueue.open(path, clock=clock)
    try:
        await queue.append(items("a", 3))
        leased = await queue.lease(3)
        await queue.retry([r.id for r in leased[:2]], clock.now + 30, "HTTP 503")
        await queue.release([leased[2].id])
        again = await queue.lease(10)
        assert [(r.key, r.attempts) for r in again] == [("a2", 0)]
        clock.now += 31
        due = await queue.lease(10)
        assert [(r.key, r.attempts) for r in due] == [("a0", 1), ("a1", 1)]
        assert rows(path, "SELECT DISTINCT last_error FROM records WHERE attempts = 1") == [
            ("HTTP 503",)
        ]
    finally:
        await queue.close()


async def test_released_records_come_back_before_newer_ones(tmp_path: Path) -> None:
    """A released (throttled, shutting down) record is older than anything fresh: it goes first."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    try:
        await queue.append(items("old", 2))
        leased = await queue.lease(2)
        await queue.append(items("new", 2))
        await queue.release([r.id for r in leased])
        assert [r.key for r in await queue.lease(4)] == ["old0", "old1", "new0", "new1"]
    finally:
        await queue.close()


async def test_restart_frees_leases_and_keeps_retry_times(tmp_path: Path) -> None:
    """After a restart, leased-but-unacked records are ready; retried ones still wait."""
    path = tmp_path / "queue.sqlite3"
    clock = WallClock()
    queue = await DurableQueue.open(path, clock=clock)
    await queue.append(items("a", 4))
    leased = await queue.lease(4)
    await queue.ack([leased[0].id])
    await queue.retry([leased[1].id], clock.now + 60, "timeout")
    await queue.close()
    queue = await DurableQueue.open(path, clock=clock)
    try:
        # a1 waits at the head of the file; it must not cost a2 its turn.
        assert [r.key for r in await queue.lease(1)] == ["a2"]
        assert [r.key for r in await queue.lease(10)] == ["a3"]
        clock.now += 61
        assert [(r.key, r.attempts) for r in await queue.lease(10)] == [("a1", 1)]
    finally:
        await queue.close()


async def test_wait_for_records_wakes_on_append_and_on_retry_due(tmp_path: Path) -> None:
    """The dispatcher's wait ends when records are appended or a retry comes due."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    try:
        assert await queue.lease(10) == []
        assert await queue.wait_for_records(0.05) is False
        waiter = asyncio.create_task(queue.wait_for_records(5.0))
        await asyncio.sleep(0.01)
        await queue.append([item("x")])
        assert await waiter is True
        leased = await queue.lease(10)
        loop_now = asyncio.get_running_loop().time()
        await queue.retry([leased[0].id], queue._clock() + 0.1, "later")
        assert await queue.lease(10) == []
        assert await queue.wait_for_records(5.0) is True
        assert asyncio.get_running_loop().time() - loop_now >= 0.09
        assert [r.key for r in await queue.lease(10)] == ["x"]
    finally:
        await queue.close()


async def test_a_cancelled_lease_leaves_due_records_due(tmp_path: Path) -> None:
    """A lease cancelled while the queue thread works (shutdown) loses no released record."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    try:
        await queue.append(items("a", 2))
        await queue.release([r.id for r in await queue.lease(2)])
        submit = queue._submit

        async def cancelled(job: Job[Any]) -> Any:
            if isinstance(job, LeaseJob):
                raise asyncio.CancelledError
            return await submit(job)

        queue._submit = cancelled  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await queue.lease(10)
        queue._submit = submit  # type: ignore[method-assign]
        assert [r.key for r in await queue.lease(10)] == ["a0", "a1"]
    finally:
        await queue.close()


async def test_byte_totals_stay_exact_when_acked_rows_were_already_gone(tmp_path: Path) -> None:
    """An ack whose rows another process already deleted recounts instead of guessing, so
    depth and bytes still match the file."""
    path = tmp_path / "q.sqlite3"
    queue = await DurableQueue.open(path)
    try:
        await queue.append(items("k", 6, size=100))
        leased = await queue.lease(10)
        gone = sqlite3.connect(path)
        gone.execute("DELETE FROM records WHERE id = ?", (leased[0].id,))
        gone.commit()
        gone.close()
        await queue.ack([r.id for r in leased[:3]])
        stats = queue.stats()
        ((count, size),) = rows(
            path, "SELECT count(*), total(length(record) + length(event) + 64) FROM records"
        )
        assert (stats.depth, stats.bytes) == (count, int(size)) == (3, stats.bytes)
        await queue.ack([r.id for r in leased[3:]])
        assert (queue.stats().depth, queue.stats().bytes) == (0, 0)
    finally:
        await queue.close()


async def test_records_and_events_are_stored_as_blobs_byte_for_byte(tmp_path: Path) -> None:
    """What an append stores, and what a lease from the file reads back, are the bytes it
    was given, as BLOBs (the insert binds them as bytearrays, which must not change that)."""
    path = tmp_path / "q.sqlite3"
    given = items("b", 70)  # a 64-row statement and a 6-row one
    queue = await DurableQueue.open(path)
    try:
        await queue.append(given)
    finally:
        await queue.close()
    stored = rows(
        path, "SELECT typeof(record), typeof(event), record, event FROM records ORDER BY id"
    )
    assert stored == [("blob", "blob", g.record, g.event) for g in given]
    queue = await DurableQueue.open(path)
    try:
        leased = await queue.lease(100)
        assert [(type(r.record), r.record) for r in leased] == [(bytes, g.record) for g in given]
    finally:
        await queue.close()


def test_ack_ids_become_runs_only_when_they_are_mostly_consecutive() -> None:
    """Runs of consecutive ids, in order and counted once; None when too scattered."""
    assert id_runs([7, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]) == [
        (3, 7),
        (10, 20),
    ]
    assert id_runs([5]) == [(5, 5)]
    assert id_runs([9, 9, 8, 8]) == [(8, 9)]
    assert id_runs([]) is None
    assert id_runs(list(range(0, 64, 2))) is None  # 32 runs of one
    assert id_runs(list(range(0, 64, 2)) * 8) is None  # repeats do not make runs longer
    assert id_runs([*range(32), 40]) == [(0, 31), (40, 40)]
    # Eight ids per run on average is still worth ranges; seven is not.
    assert id_runs([i for start in (0, 100) for i in range(start, start + 8)]) is not None
    assert id_runs([i for start in (0, 100) for i in range(start, start + 7)]) is None


@pytest.mark.parametrize("scattered", [False, True])
async def test_ack_deletes_exactly_the_acked_records(tmp_path: Path, scattered: bool) -> None:
    """Whether the acked ids form runs or are scattered, exactly those rows go, and depth
    and bytes still match the file."""
    path = tmp_path / "q.sqlite3"
    queue = await DurableQueue.open(path)
    try:
        await queue.append(items("k", 200, size=50))
        leased = await queue.lease(200)
        chosen = leased[::3] if scattered else leased[10:60] + leased[100:150] + leased[199:]
        await queue.ack(reversed([r.id for r in chosen]))
        kept = sorted({r.id for r in leased} - {r.id for r in chosen})
        assert [row[0] for row in rows(path, "SELECT id FROM records ORDER BY id")] == kept
        ((count, size),) = rows(
            path, "SELECT count(*), total(length(record) + length(event) + 64) FROM records"
        )
        assert (queue.stats().depth, queue.stats().bytes) == (count, int(size))
        assert count == len(kept)
    finally:
        await queue.close()


async def test_fresh_appends_are_leased_whole_and_in_order_from_memory_or_file(
    tmp_path: Path,
) -> None:
    """Once a scan has read to the end, new appends are handed to lease() from memory.
    Records another process inserts between them, and a scan whose lease was cancelled
    (its rows read but never handed out), still come out once each, in id order."""
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path)
    try:
        await queue.append(items("a", 5))
        scan = asyncio.create_task(queue.lease(100))
        await asyncio.sleep(0)  # the scan is submitted ...
        scan.cancel()  # ... and its caller gives up: a0-a4 were read, not handed out
        await queue.refresh()  # every earlier job has settled
        await queue.append(items("b", 3))
        got = [r.key for r in await queue.lease(100)]
        assert got == [f"a{i}" for i in range(5)] + ["b0", "b1", "b2"]
        await queue.append(items("c", 2))
        append_elsewhere(path, items("x", 2))
        await queue.append(items("d", 2))
        await queue.refresh()
        got = [r.key for r in await queue.lease(3)] + [r.key for r in await queue.lease(100)]
        assert got == ["c0", "c1", "x0", "x1", "d0", "d1"]
        assert await queue.lease(100) == []
    finally:
        await queue.close()


async def test_nothing_new_is_answered_from_memory_unless_a_scan_went_unread(
    tmp_path: Path,
) -> None:
    """Once appends are held in memory, a lease that finds none of them answers without a
    trip through the queue thread; but rows a cancelled scan read and never handed out
    still send the next lease to the file."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    submitted: list[type[Job[Any]]] = []
    submit = queue._submit

    async def counting(job: Job[Any]) -> Any:
        submitted.append(type(job))
        return await submit(job)

    queue._submit = counting  # type: ignore[method-assign]
    try:
        await queue.append(items("a", 3))
        assert [r.key for r in await queue.lease(10)] == ["a0", "a1", "a2"]  # a scan
        submitted.clear()
        assert await queue.lease(10) == []
        await queue.append(items("b", 2))
        assert [r.key for r in await queue.lease(10)] == ["b0", "b1"]
        assert await queue.lease(10) == []
        assert submitted == [AppendJob]
    finally:
        await queue.close()

    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    try:
        scan = asyncio.create_task(queue.lease(100))  # the file holds a0-b1 (nothing acked)
        await asyncio.sleep(0)
        scan.cancel()  # read to the end, never handed out
        await queue.refresh()
        got = [r.key for r in await queue.lease(100)]
        assert got == ["a0", "a1", "a2", "b0", "b1"]
    finally:
        await queue.close()


async def test_a_scan_that_stops_inside_an_append_held_in_memory_leaves_the_rest_once(
    tmp_path: Path,
) -> None:
    """A due record sends lease() to the file, whose scan may stop part-way through an
    append that memory also holds; what follows comes out once each, in order, with the
    sizes an ack needs."""
    clock = WallClock()
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path, clock=clock)
    try:
        await queue.append(items("a", 1))
        first = await queue.lease(10)  # a scan to the end: appends now settle into memory
        await queue.retry([first[0].id], clock.now + 5, "HTTP 503")
        await queue.append(items("b", 6))
        await queue.append(items("c", 3))
        clock.now += 6
        got = [(r.key, r.attempts) for r in await queue.lease(4)]  # a0 due: from the file
        assert got == [("a0", 1), ("b0", 0), ("b1", 0), ("b2", 0)]
        second = [r.key for r in await queue.lease(4)]
        # From memory: the scan's overlap was skipped, not a reason to drop the tail (a
        # private look; reading the file instead would give the same keys).
        assert queue._tail.exact and queue._tail.count == 2
        third = [r.key for r in await queue.lease(100)]
        assert (second, third) == (["b3", "b4", "b5", "c0"], ["c1", "c2"])
        assert queue._tail.exact and queue._tail.count == 0
        assert await queue.lease(100) == []
        await queue.ack(list(range(1, 11)))
        assert (queue.stats().depth, queue.stats().bytes, queue.stats().leased) == (0, 0, 0)
    finally:
        await queue.close()


@pytest.mark.parametrize("count", [1, 2, 63, 64, 65, 100, 129, 1000, 1100])
def test_insert_records_returns_each_rows_id_whatever_the_chunking(
    tmp_path: Path, count: int
) -> None:
    """Appends of up to 64 rows are one statement; larger ones are split in chunks. Each
    item's returned id is the id of the row holding its key."""
    connection = open_connection(tmp_path / "q.sqlite3", create=True)
    try:
        insert_records(connection, items("pre-", 3))  # ids do not start at 1
        new = items("k", count)
        ids = insert_records(connection, new)
        stored = dict(connection.execute("SELECT id, key FROM records WHERE id > 3"))
    finally:
        connection.close()
    assert ids == list(range(4, 4 + count))
    assert [stored[i] for i in ids] == [item.key for item in new]


async def test_repr_shows_depth_leases_and_commits(tmp_path: Path) -> None:
    """The queue's repr says what it holds: records, leased ones, dead letters, commits."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3")
    try:
        await queue.append(items("r", 3))
        await queue.lease(2)
        shown = repr(queue)
        assert "records=3" in shown and "leased=2" in shown and "dead_letters=0" in shown
    finally:
        await queue.close()
    assert repr(queue).endswith("closed>")


async def test_open_takes_the_constructor_options_and_refuses_unknown_ones(
    tmp_path: Path,
) -> None:
    """open() passes its options to the constructor as they are; a misspelt one is a
    TypeError naming it, before any file is touched."""
    clock = WallClock()
    queue = await DurableQueue.open(
        tmp_path / "queue.sqlite3", max_bytes=1 << 20, synchronous="NORMAL", clock=clock
    )
    try:
        assert (queue.max_bytes, queue.synchronous) == (1 << 20, "NORMAL")
    finally:
        await queue.close()
    with pytest.raises(TypeError, match="commit_window_ms"):
        await DurableQueue.open(tmp_path / "other.sqlite3", commit_window_ms=40)  # type: ignore[call-arg]
    assert not (tmp_path / "other.sqlite3").exists()
