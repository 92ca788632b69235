"""The durable local queue that sits between intake and delivery.

::

    q = await DurableQueue.open(path, max_bytes=..., synchronous="FULL", commit_window_s=0.02)
    await q.append(items)            # all-or-nothing, durable when it returns
    leased = await q.lease(500)      # ready records, oldest first
    await q.ack(ids) / q.retry(ids, retry_at, reason) / q.release(ids)
    await q.dead_letter([(id, reason, status, code)])
    await q.close()

Appends from many tasks are committed together, one fsync for all of them (see
:mod:`.queuefile`, which owns the SQLite file and its thread); with a commit window,
an append that has others close behind it waits up to ``commit_window_s`` for them
(:class:`~campaign_writer.queuefile.GroupCommit`). With
``synchronous=FULL``, a record whose ``append`` returned survives ``kill -9`` and
power loss, so a source may acknowledge upstream at that point and not before.

When the file holds ``max_bytes`` (records plus dead letters), ``append`` raises
:class:`~campaign_writer.errors.QueueFullError` and writes nothing; sources pause on
:meth:`DurableQueue.wait_for_space`. Nothing is ever dropped to make room.

Leases live in memory. One process owns a queue file (an advisory lock on
``<file>-lock``); after a crash, every record that was not acknowledged is ready
again on the next open. New records are found by id, which only grows, so records
appended by another process (``campaign-writer dlq replay``) reach delivery too.

Once a lease has read to the end of the file, the records this process appends next
are handed to ``lease`` from memory as their commits settle (up to ``_TAIL_MAX`` of
them), which saves the queue thread a read per append. A gap in their ids, a commit by
another process, or a backlog beyond that bound sends leases back to the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Final, Literal, NamedTuple

from .errors import CampaignWriterError, QueueError
from .logs import get_logger
from .queuefile import (
    ROW_OVERHEAD,
    GroupCommit,
    Job,
    Snapshot,
    Worker,
    corrupt_message,
    open_connection,
    snapshot,
    translate_error,
)
from .wakeup import Wakeup

__all__ = [
    "DEFAULT_MAX_BYTES",
    "RESUME_FRACTION",
    "ROW_OVERHEAD",
    "DurableQueue",
    "Leased",
    "QueueItem",
    "QueueStats",
    "RawDeadLetter",
    "corrupt_message",
    "read_stats",
]

log = get_logger("queue")

DEFAULT_MAX_BYTES: Final = 1024**3
RESUME_FRACTION: Final = 0.95  # wait_for_space wakes once usage is below this share
_TAIL_MAX: Final = 20_000  # fresh records held in memory for lease(); beyond, read the file


class QueueItem(NamedTuple):
    """One record to append; ``event`` is the original event, kept for the DLQ and replay."""

    lane: str
    key: str | None
    record: bytes
    event: bytes
    source: str
    created_at: float


class Leased(NamedTuple):
    """A record handed to delivery; it stays on disk until ack or dead_letter."""

    id: int
    lane: str
    key: str | None
    record: bytes
    attempts: int
    created_at: float


class RawDeadLetter(NamedTuple):
    """A message that never became a record (unparseable, unmappable)."""

    source: str
    payload: bytes
    headers: Mapping[str, Any]
    reason: str
    code: str = "INTAKE"


@dataclass(slots=True, eq=False)
class _Chunk:
    """One append's records in the tail: ids ``first`` onwards, taken from ``start``."""

    first: int
    records: list[Leased]
    sizes: list[int]
    start: int = 0

    @property
    def next_id(self) -> int:
        return self.first + self.start

    @property
    def end(self) -> int:
        """One past the last id."""
        return self.first + len(self.records)


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue, for ``status``, /v1/stats and the gauges."""

    depth: int
    bytes: int
    dead_letters: int
    dead_letter_bytes: int
    dead_letters_by_reason: Mapping[str, int]
    oldest_created_at: float | None
    taken_at: float
    leased: int = 0
    max_bytes: int | None = None

    @property
    def oldest_age_s(self) -> float | None:
        if self.oldest_created_at is None:
            return None
        return max(0.0, self.taken_at - self.oldest_created_at)

    @property
    def used_bytes(self) -> int:
        return self.bytes + self.dead_letter_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "bytes": self.bytes,
            "leased": self.leased,
            "oldest_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 3),
            "dead_letters": self.dead_letters,
            "dead_letter_bytes": self.dead_letter_bytes,
            "dead_letters_by_reason": dict(self.dead_letters_by_reason),
            "max_bytes": self.max_bytes,
        }


def read_stats(path: str | Path, *, max_bytes: int | None = None) -> QueueStats:
    """Stats read straight from a queue file, whether or not a daemon owns it."""
    import sqlite3  # only for the exception type, translated right here

    file = Path(path)
    conn = open_connection(file, create=False)
    try:
        snap = snapshot(conn)
    except sqlite3.Error as exc:
        raise translate_error(exc, file) from None
    finally:
        conn.close()
    return _stats_of(snap, time.time(), 0, max_bytes)


def _stats_of(snap: Snapshot, now: float, leased: int, max_bytes: int | None) -> QueueStats:
    return QueueStats(
        depth=snap.records,
        bytes=snap.record_bytes,
        dead_letters=snap.dead_letters,
        dead_letter_bytes=snap.dead_letter_bytes,
        dead_letters_by_reason=snap.by_code,
        oldest_created_at=snap.oldest_created_at,
        taken_at=now,
        leased=leased,
        max_bytes=max_bytes,
    )


def _take_lock(path: Path) -> int:
    """Hold ``<file>-lock`` for as long as we run; the kernel drops it if we die."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise QueueError(f"cannot create the lock file for {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise QueueError(f"{path} is in use by another campaign-writer process") from None
    return fd


def _drop_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class DurableQueue:
    """The queue's asyncio face; every statement runs in the queue's own thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        commit_window_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.grouping = GroupCommit(commit_window_s)
        self._clock = clock
        self._jobs: SimpleQueue[Job] = SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker: Worker | None = None
        self._lock_fd: int | None = None
        self._snapshot = Snapshot(0, 0, 0, 0, None, {})
        self._cursor = 0  # every record with a higher id has never been leased
        self._due: list[tuple[float, int]] = []  # (retry_at, id) of retried/released records
        self._leased: dict[int, int] = {}  # id -> size, so an ack needs no read-back
        self._more = False  # the last scan stopped at its limit
        # Records this process appended since the last scan that reached the end of the
        # file, when they are known to be ALL the records above the cursor: lease()
        # then hands them over without reading them back (see _take_tail).
        # Held as one chunk per append, so that taking and counting them is slicing.
        self._tail: deque[_Chunk] = deque()
        self._tail_count = 0  # records in the tail not yet taken
        self._tail_exact = False
        # The last id the scan that made the tail exact read (or its cursor, if it read
        # nothing): once the cursor is there, an empty exact tail means nothing is new.
        self._exact_end = 0
        self._new_records = Wakeup()
        self._space = asyncio.Event()
        self._lease_lock = asyncio.Lock()
        self._closed = True

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        commit_window_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> DurableQueue:
        """Open (or create) the queue file, checking it; a crashed run's leases are free.

        ``commit_window_s`` is how long an append may wait for others to share its
        commit (0: never waits)."""
        queue = cls(
            path,
            max_bytes=max_bytes,
            synchronous=synchronous,
            commit_window_s=commit_window_s,
            clock=clock,
        )
        await queue._start()
        return queue

    async def _start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._lock_fd = _take_lock(self.path)
        worker = self._worker = Worker(
            self.path,
            self.synchronous,
            self.max_bytes,
            self._clock,
            self._from_thread,
            self.grouping,
        )
        opened: asyncio.Future[Snapshot] = loop.create_future()

        def main() -> None:
            try:
                snap = worker.open()
            except BaseException as exc:  # reported to open(); the thread ends here
                error = exc if isinstance(exc, CampaignWriterError) else QueueError(repr(exc))
                loop.call_soon_threadsafe(_resolve, opened, None, error)
                return
            loop.call_soon_threadsafe(_resolve, opened, snap, None)
            worker.run(self._jobs)

        self._thread = threading.Thread(target=main, name=f"queue {self.path.name}", daemon=True)
        self._thread.start()
        try:
            self._snapshot = await opened
        except BaseException:
            _drop_lock(self._lock_fd)
            self._lock_fd = None
            raise
        self._closed = False
        self._new_records.set()  # whatever the file holds is ready to lease

    # --- plumbing between the loop and the thread --------------------------------------

    def _from_thread(self, batch: list[Job], snap: Snapshot | None, external: bool) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(self._settle, batch, snap, external)

    def _settle(self, batch: list[Job], snap: Snapshot | None, external: bool) -> None:
        appended = external
        if external:
            self._forget_tail()  # another process wrote: only a scan knows what is there
        for job in batch:
            if job.error is not None:
                pass
            elif job.kind == "append" and job.result[0]:
                appended = True
                if self._tail_exact:
                    self._extend_tail(job.args[0], *job.result)
            elif job.kind == "lease" and not self._tail_exact:
                wanted = job.args[2]
                if wanted > 0 and len(job.result[1]) < wanted:
                    # This scan read to the end of the file. Appends settled from here on
                    # are all that lies above it (unless another process writes), and
                    # their results come after this one, in commit order.
                    self._forget_tail()
                    self._tail_exact = True
                    rows = job.result[1]
                    self._exact_end = rows[-1][0] if rows else job.args[1]
            future = job.future
            if future is None or future.done():
                continue
            if job.error is not None:
                future.set_exception(job.error)
            else:
                future.set_result(job.result)
        if snap is not None:
            self._snapshot = snap
        if appended:
            self._new_records.set()
        if self._has_space():
            self._space.set()

    async def _submit(self, kind: str, *args: Any) -> Any:
        if self._closed or self._loop is None:
            raise QueueError(f"the queue {self.path} is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        assert self._worker is not None
        self._worker.submit(self._jobs, Job(kind, args, future))
        return await future

    # --- intake ----------------------------------------------------------------------

    async def append(
        self, items: Sequence[QueueItem], *, dead_letters: Sequence[RawDeadLetter] = ()
    ) -> None:
        """Commit ``items`` (and any ``dead_letters``) durably, all or nothing.

        QueueFullError, with nothing written, when they do not fit in ``max_bytes``.
        """
        if items or dead_letters:
            await self._submit("append", items, dead_letters)

    async def dead_letter_raw(
        self,
        source: str,
        payload: bytes,
        headers: Mapping[str, Any],
        reason: str,
        *,
        code: str = "INTAKE",
    ) -> None:
        """Keep a message that never became a record, with its bytes and headers."""
        await self.append((), dead_letters=(RawDeadLetter(source, payload, headers, reason, code),))

    async def wait_for_space(self, timeout: float) -> bool:
        """Wait until usage is below ``RESUME_FRACTION`` of max_bytes; False on timeout."""
        if self._has_space():
            return True
        self._space.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._space.wait(), timeout)
        return self._has_space()

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit, as of the last commit; ``append`` decides exactly."""
        snap = self._snapshot
        return snap.record_bytes + snap.dead_letter_bytes + size <= self.max_bytes

    @property
    def full(self) -> bool:
        """Usage is at ``RESUME_FRACTION`` of max_bytes or more: broker sources wait,
        and HTTP posts are refused but the smallest."""
        return not self._has_space()

    def _has_space(self) -> bool:
        snap = self._snapshot
        return snap.record_bytes + snap.dead_letter_bytes < self.max_bytes * RESUME_FRACTION

    # --- delivery --------------------------------------------------------------------

    def _extend_tail(
        self, items: Sequence[QueueItem], ids: Sequence[int], sizes: list[int]
    ) -> None:
        count = len(ids)
        if not count:
            return
        first = ids[0]
        if self._tail_count + count > _TAIL_MAX or ids[-1] - first != count - 1:
            # A backlog builds up, or (never seen) one append's ids are not consecutive:
            # leases read the file.
            self._forget_tail()
            return
        new = tuple.__new__  # Leased without its Python-level __new__ frame, per record
        records = [
            new(Leased, (record_id, lane, key, record, 0, created_at))
            for record_id, (lane, key, record, _, _, created_at) in zip(
                range(first, first + count), items, strict=True
            )
        ]
        self._tail.append(_Chunk(first, records, sizes))
        self._tail_count += count

    def _forget_tail(self) -> None:
        self._tail.clear()
        self._tail_count = 0
        self._tail_exact = False

    def _take_tail(self, limit: int) -> list[Leased] | None:
        """Fresh records from memory, or None when the file must be read.

        Ids of one process's appends follow each other; a gap means another process
        inserted rows in between (a replay), so the file is read from there on.
        """
        tail = self._tail
        cursor = self._cursor
        while tail:  # drop what the scan that made the tail exact also read back
            chunk = tail[0]
            if chunk.end - 1 <= cursor:
                tail.popleft()
                self._tail_count -= len(chunk.records) - chunk.start
                continue
            if chunk.next_id <= cursor:
                skipped = cursor + 1 - chunk.next_id
                chunk.start += skipped
                self._tail_count -= skipped
            break
        if not tail:
            if cursor >= self._exact_end:
                # Nothing above the cursor: no read of the file (in a steady flow the
                # feeder asks once more after each append it takes; that cost a round
                # trip through the queue thread per append).
                self._more = False
                return []
            return None  # rows the scan read were never handed out (its lease was cancelled)
        if tail[0].next_id != cursor + 1:
            self._forget_tail()
            return None
        taken: list[Leased] = []
        sizes = self._leased
        expected = cursor + 1
        while tail and len(taken) < limit:
            chunk = tail[0]
            if chunk.next_id != expected:
                break
            start = chunk.start
            stop = min(len(chunk.records), start + limit - len(taken))
            taken.extend(chunk.records[start:stop])
            sizes.update(
                zip(range(expected, expected + stop - start), chunk.sizes[start:stop], strict=True)
            )
            expected += stop - start
            self._tail_count -= stop - start
            if stop == len(chunk.records):
                tail.popleft()
            else:
                chunk.start = stop
        self._cursor = expected - 1
        if tail and tail[0].next_id != expected:
            self._forget_tail()
            self._more = True  # the rest is read from the file
        else:
            self._more = bool(tail)
        return taken

    async def lease(self, limit: int) -> list[Leased]:
        """Up to ``limit`` ready records (retry_at passed, not leased), oldest first."""
        async with self._lease_lock:
            now = self._clock()
            if self._tail_exact and not (self._due and self._due[0][0] <= now):
                self._new_records.clear()
                taken = self._take_tail(limit)
                if taken is not None:
                    return taken
            popped: list[tuple[float, int]] = []
            while self._due and self._due[0][0] <= now and len(popped) < limit:
                popped.append(heapq.heappop(self._due))
            due = [record_id for _, record_id in popped]
            self._new_records.clear()
            leased: list[Leased] = []
            wanted = limit - len(due)
            while True:
                try:
                    due_rows, fresh_rows = await self._submit("lease", due, self._cursor, wanted)
                except BaseException:
                    # Cancelled or failed: what was taken off the heap must stay due.
                    for entry in popped:
                        heapq.heappush(self._due, entry)
                    raise
                popped = []
                sizes = self._leased
                for row in due_rows:
                    leased.append(Leased(*row[:6]))
                    sizes[row[0]] = row[6]
                due = []
                for row in fresh_rows:
                    if row[7] > now:  # retried before a restart and not due yet
                        heapq.heappush(self._due, (row[7], row[0]))
                    else:
                        leased.append(Leased(*row[:6]))
                        sizes[row[0]] = row[6]
                if fresh_rows:
                    self._cursor = max(self._cursor, fresh_rows[-1][0])  # rows come by id
                self._more = wanted > 0 and len(fresh_rows) == wanted
                # Rows set aside as not due must not cost ready ones behind them their turn.
                if not self._more or len(leased) >= limit:
                    break
                wanted = limit - len(leased)
            return leased

    async def refresh(self) -> None:
        """Look now for records another process committed (the queue thread also looks
        whenever it runs a job, and every quarter of a second when idle)."""
        await self._submit("lease", [], self._cursor, 0)

    async def ack(self, ids: Iterable[int]) -> None:
        """Delivered: remove the records for good."""
        wanted = list(ids)
        if wanted:
            sizes = self._leased
            try:
                size: int | None = sum([sizes[i] for i in wanted])
            except KeyError:
                size = None  # not leased by this run: the rows report their own sizes
            await self._submit("ack", wanted, size)
            for record_id in wanted:
                sizes.pop(record_id, None)

    async def retry(self, ids: Iterable[int], retry_at: float, reason: str) -> None:
        """Count an attempt and make the records ready again at ``retry_at``."""
        wanted = [i for i in ids if i in self._leased]
        if not wanted:
            return
        updated = await self._submit("retry", wanted, retry_at, reason)
        for record_id in wanted:
            self._leased.pop(record_id, None)
        for record_id in updated:
            heapq.heappush(self._due, (retry_at, record_id))
        self._new_records.set()

    async def release(self, ids: Iterable[int]) -> None:
        """Ready again now, attempts unchanged (throttled, shutting down)."""
        for record_id in ids:
            if self._leased.pop(record_id, None) is not None:
                # 0.0 puts them ahead of every fresh record: they are older.
                heapq.heappush(self._due, (0.0, record_id))
        self._new_records.set()

    async def dead_letter(self, entries: Sequence[tuple[int, str, int | None, str]]) -> None:
        """Move records to the dead-letter queue: ``(id, reason, http_status, fault_code)``."""
        if entries:
            await self._submit("dead_letter", list(entries))
            for entry in entries:
                self._leased.pop(entry[0], None)

    async def wait_for_records(self, timeout: float) -> bool:
        """Wait for new records or a retry coming due; False when ``timeout`` passes first."""
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        while not self._ready_now():
            wait = deadline - self._loop.time()
            if self._due:
                wait = min(wait, max(0.0, self._due[0][0] - self._clock()) + 0.001)
            if wait <= 0 or self._closed:
                return self._ready_now()
            await self._new_records.wait(wait)
        return True

    def _ready_now(self) -> bool:
        return (
            self._new_records.is_set()
            or self._more
            or bool(self._due and self._due[0][0] <= self._clock())
        )

    # --- introspection and shutdown ---------------------------------------------------

    @property
    def commits(self) -> int:
        """Write transactions (fsyncs) so far; fewer than appends means they were grouped."""
        return self._worker.commits if self._worker is not None else 0

    def commit_stats(self) -> dict[str, Any]:
        """Commits so far and how the commit window has been used, for /v1/stats.

        Read from the loop while the queue thread counts: each figure is a plain int
        written by that thread alone, so a reading is at worst one round behind."""
        grouping = self.grouping
        return {
            "commits": self.commits,
            "commit_window_ms": round(grouping.window_s * 1000, 3),
            "window_waits": grouping.waits,
            "window_joined": grouping.joined,
        }

    def stats(self) -> QueueStats:
        """Depth, bytes, oldest age, dead letters by reason (code), as of the last commit."""
        return _stats_of(self._snapshot, self._clock(), len(self._leased), self.max_bytes)

    async def close(self) -> None:
        """Finish queued work, mark the file cleanly closed, release the lock."""
        if self._closed or self._loop is None:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            future: asyncio.Future[Any] = self._loop.create_future()
            assert self._worker is not None
            self._worker.submit(self._jobs, Job("close", (), future))
            await future
            await asyncio.to_thread(thread.join, 10.0)
        if self._lock_fd is not None:
            _drop_lock(self._lock_fd)
            self._lock_fd = None
        self._new_records.set()
        self._space.set()


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
