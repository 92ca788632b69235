"""The queue's asyncio face: :class:`DurableQueue` (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Final, Literal, TypedDict, TypeVar, Unpack

from ..errors import CampaignWriterError, QueueError
from ..records import Leased, QueueItem, RawDeadLetter, RecordDeadLetter
from ..wakeup import Wakeup
from .file import Snapshot
from .jobs import AckJob, AppendJob, CloseJob, DeadLetterJob, Job, LeaseJob, RetryJob, StateJob
from .stats import QueueStats, stats_of
from .tail import Tail
from .window import GroupCommit
from .worker import Worker

__all__ = ["DEFAULT_MAX_BYTES", "RESUME_FRACTION", "DurableQueue", "QueueOptions"]

DEFAULT_MAX_BYTES: Final = 1024**3
RESUME_FRACTION: Final = 0.95  # wait_for_space wakes once usage is below this share

ResultT = TypeVar("ResultT")


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


class QueueOptions(TypedDict, total=False):
    """How a :class:`DurableQueue` runs, for its constructor and :meth:`~DurableQueue.open`
    alike; a key left out takes the default named beside it."""

    max_bytes: int  # DEFAULT_MAX_BYTES: records and dead letters together
    synchronous: Literal["FULL", "NORMAL"]  # "FULL"
    commit_window_s: float  # 0.0: an append never waits for others to share its commit
    clock: Callable[[], float]  # time.time: the wall clock of retry_at and intake times


class DurableQueue:
    """The queue's asyncio face; every statement runs in the queue's own thread."""

    def __init__(self, path: str | Path, **options: Unpack[QueueOptions]) -> None:
        unknown = options.keys() - QueueOptions.__optional_keys__
        if unknown:  # a caller mypy does not check, with a misspelt option
            raise TypeError(f"DurableQueue: unknown options {sorted(unknown)}")
        self.path = Path(path)
        self.max_bytes = options.get("max_bytes", DEFAULT_MAX_BYTES)
        self.synchronous: Literal["FULL", "NORMAL"] = options.get("synchronous", "FULL")
        self.grouping = GroupCommit(options.get("commit_window_s", 0.0))
        self._clock = options.get("clock", time.time)
        self._jobs: SimpleQueue[Job[Any]] = SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker: Worker | None = None
        self._lock_fd: int | None = None
        self._snapshot = Snapshot(0, 0, 0, 0, None, {})
        self._cursor = 0  # every record with a higher id has never been leased
        self._due: list[tuple[float, int]] = []  # (retry_at, id) of retried/released records
        self._leased: dict[int, int] = {}  # id -> size, so an ack needs no read-back
        self._more = False  # the last scan stopped at its limit
        self._tail = Tail()  # fresh appends, which lease() hands over without a read
        self._new_records = Wakeup()
        self._space = asyncio.Event()
        self._lease_lock = asyncio.Lock()
        self._closed = True

    @classmethod
    async def open(cls, path: str | Path, **options: Unpack[QueueOptions]) -> DurableQueue:
        """Open (or create) the queue file, checking it; a crashed run's leases are free."""
        queue = cls(path, **options)
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

    def _from_thread(self, batch: list[Job[Any]], snap: Snapshot | None, external: bool) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(self._settle, batch, snap, external)

    def _settle(self, batch: list[Job[Any]], snap: Snapshot | None, external: bool) -> None:
        appended = external
        tail = self._tail
        if external:
            tail.forget()  # another process wrote: only a scan knows what is there
        for job in batch:
            if job.error is None and job.result is not None:
                if isinstance(job, AppendJob):
                    if job.result.ids:
                        appended = True
                        if tail.exact:
                            tail.extend(job.items, job.result)
                elif isinstance(job, LeaseJob) and not tail.exact:
                    wanted, fresh = job.limit, job.result.fresh
                    if wanted > 0 and len(fresh) < wanted:
                        # This scan read to the end of the file. Appends settled from here
                        # on are all that lies above it (unless another process writes),
                        # and their results come after this one, in commit order.
                        tail.made_exact(fresh[-1][0] if fresh else job.cursor)
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

    async def _submit(self, job: Job[ResultT]) -> ResultT:
        if self._closed or self._loop is None:
            raise QueueError(f"the queue {self.path} is closed")
        future: asyncio.Future[ResultT] = self._loop.create_future()
        job.future = future
        assert self._worker is not None
        self._worker.submit(self._jobs, job)
        return await future

    # --- intake ----------------------------------------------------------------------

    async def append(
        self, items: Sequence[QueueItem], *, dead_letters: Sequence[RawDeadLetter] = ()
    ) -> None:
        """Commit ``items`` (and any ``dead_letters``) durably, all or nothing.

        QueueFullError, with nothing written, when they do not fit in ``max_bytes``.
        """
        if items or dead_letters:
            await self._submit(AppendJob(items, dead_letters))

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

    async def lease(self, limit: int) -> list[Leased]:
        """Up to ``limit`` ready records (retry_at passed, not leased), oldest first."""
        async with self._lease_lock:
            now = self._clock()
            if self._tail.exact and not (self._due and self._due[0][0] <= now):
                self._new_records.clear()
                taken = self._tail.take(self._cursor, limit, self._leased)
                if taken is not None:
                    records, self._cursor, self._more = taken
                    return records
            popped: list[tuple[float, int]] = []
            while self._due and self._due[0][0] <= now and len(popped) < limit:
                popped.append(heapq.heappop(self._due))
            due = [record_id for _, record_id in popped]
            self._new_records.clear()
            leased: list[Leased] = []
            wanted = limit - len(due)
            while True:
                try:
                    rows = await self._submit(LeaseJob(due, self._cursor, wanted))
                except BaseException:
                    # Cancelled or failed: what was taken off the heap must stay due.
                    for entry in popped:
                        heapq.heappush(self._due, entry)
                    raise
                popped = []
                sizes = self._leased
                new = tuple.__new__  # Leased without its Python-level __new__ frame
                for record_id, lane, key, record, attempts, created_at, size in rows.due:
                    leased.append(new(Leased, (record_id, lane, key, record, attempts, created_at)))
                    sizes[record_id] = size
                due = []
                fresh_rows = rows.fresh
                for row in fresh_rows:
                    record_id, lane, key, record, attempts, created_at, size, retry_at = row
                    if retry_at > now:  # retried before a restart and not due yet
                        heapq.heappush(self._due, (retry_at, record_id))
                    else:
                        leased.append(
                            new(Leased, (record_id, lane, key, record, attempts, created_at))
                        )
                        sizes[record_id] = size
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
        await self._submit(LeaseJob([], self._cursor, 0))

    async def ack(self, ids: Iterable[int]) -> None:
        """Delivered: remove the records for good."""
        wanted = list(ids)
        if wanted:
            sizes = self._leased
            try:
                size: int | None = sum([sizes[i] for i in wanted])
            except KeyError:
                size = None  # not leased by this run: the rows report their own sizes
            await self._submit(AckJob(wanted, size))
            for record_id in wanted:
                sizes.pop(record_id, None)

    async def retry(self, ids: Iterable[int], retry_at: float, reason: str) -> None:
        """Count an attempt and make the records ready again at ``retry_at``."""
        wanted = [i for i in ids if i in self._leased]
        if not wanted:
            return
        updated = await self._submit(RetryJob(wanted, retry_at, reason))
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

    async def dead_letter(self, entries: Sequence[RecordDeadLetter]) -> None:
        """Move records to the dead-letter queue: ``(id, reason, http_status, fault_code)``."""
        if entries:
            await self._submit(DeadLetterJob(list(entries)))
            for entry in entries:
                self._leased.pop(entry[0], None)

    async def remember(self, name: str, value: str) -> None:
        """Keep a small named value in the file (the learned tps limit), for the next run."""
        await self._submit(StateJob(name, value))

    async def recall(self, name: str) -> str | None:
        """A value :meth:`remember` kept, or None."""
        return await self._submit(StateJob(name, None))

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

    def __repr__(self) -> str:
        if self._closed:
            return f"<DurableQueue {self.path} closed>"
        snapshot = self._snapshot
        return (
            f"<DurableQueue {self.path}: records={snapshot.records}"
            f" bytes={snapshot.record_bytes} leased={len(self._leased)}"
            f" dead_letters={snapshot.dead_letters} commits={self.commits}>"
        )

    def stats(self) -> QueueStats:
        """Depth, bytes, oldest age, dead letters by reason (code), as of the last commit."""
        return stats_of(self._snapshot, self._clock(), len(self._leased), self.max_bytes)

    async def close(self) -> None:
        """Finish queued work, mark the file cleanly closed, release the lock."""
        if self._closed or self._loop is None:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            future: asyncio.Future[None] = self._loop.create_future()
            assert self._worker is not None
            self._worker.submit(self._jobs, CloseJob(future=future))
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
