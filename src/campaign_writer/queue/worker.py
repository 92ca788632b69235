"""The queue's thread: the only user of its connection, running jobs in group commits.

:class:`Worker` takes all the jobs waiting for it and runs the writes among them in
ONE transaction, so concurrent appends share one fsync (group commit); reads run
after that commit, so a lease never sees a row that could still be rolled back. An
append may first wait for company (:mod:`.window`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, Final

import orjson

from ..errors import QueueCorruptError, QueueError, QueueFullError
from ..logs import get_logger
from ..records import RawDeadLetter
from .file import (
    RECORD_SIZE,
    ROW_OVERHEAD,
    SQL_COUNT_RECORDS,
    SQL_INSERT_RAW,
    SQL_SET_TOTALS,
    SQL_TOTALS,
    Snapshot,
    corrupt_message,
    insert_records,
    open_connection,
    recount,
    snapshot,
    translate_error,
)
from .jobs import (
    AckJob,
    Appended,
    AppendJob,
    CloseJob,
    DeadLetterJob,
    Job,
    LeaseJob,
    LeaseRows,
    RetryJob,
    StateJob,
)
from .window import MAX_JOBS_PER_COMMIT, GroupCommit, ends_window, gather

__all__ = ["Worker", "id_runs"]

log = get_logger("queue")

_IDLE_POLL_S: Final = 0.25

# The statements, built once from constants (no value is ever formatted into them).
_BY_CODE: Final = "SELECT code, count(*) FROM dead_letters GROUP BY code"
_IN_IDS: Final = "id IN (SELECT value FROM json_each(?))"
_DELETE_IDS: Final = f"DELETE FROM records WHERE {_IN_IDS}"  # noqa: S608
_DELETE_IDS_SIZES: Final = f"{_DELETE_IDS} RETURNING {RECORD_SIZE}"
_DELETE_RUN: Final = "DELETE FROM records WHERE id BETWEEN ? AND ?"
_MAX_RUNS_SHARE: Final = 8  # ranges pay off while a run holds this many ids on average
_RETRY: Final = (
    "UPDATE records SET attempts = attempts + 1, retry_at = ?, last_error = ? "  # noqa: S608
    f"WHERE {_IN_IDS} RETURNING id"
)
_SIZES: Final = f"SELECT id, {RECORD_SIZE} FROM records WHERE {_IN_IDS}"  # noqa: S608
_MOVE_TO_DEAD_LETTERS: Final = (
    "INSERT INTO dead_letters (record_id, source, lane, key, record, event, reason, "
    "status, code, attempts, created_at, dead_at, size) SELECT id, source, lane, key, "
    "record, event, ?1, ?2, ?3, attempts, created_at, ?4, ?5 FROM records WHERE id = ?6"
)
_LEASE_DUE: Final = (
    f"SELECT id, lane, key, record, attempts, created_at, {RECORD_SIZE} "  # noqa: S608
    f"FROM records WHERE {_IN_IDS} ORDER BY id"
)
_LEASE_FRESH: Final = (
    f"SELECT id, lane, key, record, attempts, created_at, {RECORD_SIZE}, retry_at "  # noqa: S608
    "FROM records WHERE id > ? ORDER BY id LIMIT ?"
)


@dataclass(eq=False)
class Worker:
    """Runs in the queue's thread: owns the connection, executes jobs in group commits."""

    path: Path
    synchronous: str
    max_bytes: int
    clock: Callable[[], float]
    publish: Callable[[list[Job[Any]], Snapshot | None, bool], None]
    grouping: GroupCommit = field(default_factory=lambda: GroupCommit(0.0))
    hurry: threading.Event = field(default_factory=threading.Event)  # ends a commit window
    conn: sqlite3.Connection | None = None
    by_code: dict[str, int] = field(default_factory=dict)
    data_version: int = 0
    commits: int = 0  # write transactions committed: appends per commit shows the grouping
    # The totals row and the oldest record's intake time as of our last commit. They
    # stay exact while no other process commits (data_version unchanged), so a round
    # of appends reads neither back; None means "read it from the file".
    totals: list[int] | None = None
    oldest: tuple[float | None] | None = None

    # --- opening and closing ----------------------------------------------------------

    def open(self) -> Snapshot:
        self.conn = conn = open_connection(self.path, synchronous=self.synchronous, create=True)
        try:
            clean = conn.execute("SELECT value FROM state WHERE name = 'clean'").fetchone()
            if clean is not None and clean[0] == "0":
                self._check_after_crash()
            conn.execute("INSERT OR REPLACE INTO state VALUES ('clean', '0')")
            opened = snapshot(conn)
            self.by_code = dict(opened.by_code)
            self.data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            self.totals = list(opened[:4])
            self.oldest = (opened.oldest_created_at,)
        except sqlite3.Error as exc:
            conn.close()
            self.conn = None
            raise translate_error(exc, self.path) from None
        except QueueError:
            conn.close()
            self.conn = None
            raise
        return opened

    def _check_after_crash(self) -> None:
        assert self.conn is not None
        log.warning("the queue was not closed cleanly; checking it", extra={"path": str(self.path)})
        rows = [row[0] for row in self.conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise QueueCorruptError(corrupt_message(self.path, "; ".join(rows[:3])))
        self.conn.execute("BEGIN IMMEDIATE")
        recount(self.conn)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.execute("INSERT OR REPLACE INTO state VALUES ('clean', '1')")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("could not mark the queue closed cleanly", extra={"error": str(exc)})
        finally:
            self.conn.close()
            self.conn = None

    # --- the loop --------------------------------------------------------------------

    def run(self, jobs: SimpleQueue[Job[Any]]) -> None:
        """Serve jobs until a :class:`CloseJob`; each round is one commit plus the reads."""
        while True:
            try:
                first = jobs.get(timeout=_IDLE_POLL_S)
            except Empty:
                self._notice_others(idle=True)
                continue
            batch = [first]
            # empty() rather than get_nowait() until Empty: no exception raised per round.
            while len(batch) < MAX_JOBS_PER_COMMIT and not jobs.empty():
                batch.append(jobs.get_nowait())  # this thread is the only consumer
            snap: Snapshot | None = None
            external = False
            try:
                if isinstance(first, AppendJob):
                    gather(jobs, batch, self.grouping, self.hurry)
                writes = [job for job in batch if job.writes]
                # A write transaction looks for commits by others itself, under its lock.
                external = self._write(writes) if writes else self._notice_others(idle=False)
                for job in batch:
                    if isinstance(job, LeaseJob):
                        self._read(job)
                if writes or external:
                    snap = self._refresh()
            except Exception as exc:  # a bug must fail its callers, never strand them
                log.exception("queue worker failed a round of jobs")
                for job in batch:
                    job.error = QueueError(f"internal queue error: {exc!r}")
            stopping = any(isinstance(job, CloseJob) for job in batch)
            if stopping:
                self.close()
            self.publish(batch, snap, external)
            if stopping:
                return

    def submit(self, jobs: SimpleQueue[Job[Any]], job: Job[Any]) -> None:
        """Queue ``job`` for this thread (called from the event loop's thread).

        An append that arrives during a commit window only joins the queue: the thread
        sleeps through the window and takes it at the end, so each append does not wake
        it (and the loop's thread, which holds the GIL, is not preempted by it). Any
        other job, or an append of ``ENOUGH_ROWS`` rows, ends the window at once."""
        hurry = ends_window(job)
        jobs.put(job)
        if hurry:
            self.hurry.set()

    def _refresh(self) -> Snapshot | None:
        """The queue's figures after a round: from memory when they are known exactly."""
        assert self.conn is not None
        totals, oldest = self.totals, self.oldest
        if totals is None or oldest is None:
            try:
                snap = snapshot(self.conn, self.by_code)
            except sqlite3.Error as exc:
                self.totals = self.oldest = None
                log.warning("could not read queue totals", extra={"error": str(exc)})
                return None
            self.totals = list(snap[:4])
            self.oldest = (snap.oldest_created_at,)
            return snap
        return Snapshot(totals[0], totals[1], totals[2], totals[3], oldest[0], dict(self.by_code))

    def _notice_others(self, *, idle: bool) -> bool:
        """True when another process committed (a CLI replay or purge) since last look."""
        if self.conn is None:
            return False
        try:
            version = self.conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self.data_version:
                return False
            self.data_version = version
            self.totals = self.oldest = None  # another process changed them
            self.by_code = dict(self.conn.execute(_BY_CODE))
            if idle:
                self.publish([], snapshot(self.conn, self.by_code), True)
        except sqlite3.Error as exc:
            self.totals = self.oldest = None  # read them back rather than trust them
            log.warning("could not look for changes by others", extra={"error": str(exc)})
            return False
        return True

    # --- writes: one transaction for many jobs ----------------------------------------

    def _write(self, jobs: list[Job[Any]]) -> bool:
        """Run the jobs in one transaction; True if another process had committed since
        our last look (found inside the transaction, under the write lock)."""
        try:
            return self._transaction(jobs)
        except sqlite3.Error as exc:
            self._rollback()
            if len(jobs) == 1:
                jobs[0].error = translate_error(exc, self.path)
                return self._notice_others(idle=False)
        # One job's failure must not fail the others: retry each in its own transaction.
        external = False
        for job in jobs:
            try:
                external = self._transaction([job]) or external
            except sqlite3.Error as exc:
                self._rollback()
                job.error = translate_error(exc, self.path)
        return self._notice_others(idle=False) or external

    def _rollback(self) -> None:
        assert self.conn is not None
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def _transaction(self, jobs: list[Job[Any]]) -> bool:
        """One write transaction for ``jobs``; True if it found another process's commit."""
        conn = self.conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        # Under the write lock nobody else can commit, so a data_version equal to the
        # one of our last look means the totals we keep are the file's (a change makes
        # _notice_others forget them).
        external = self._notice_others(idle=False)
        known, self.totals = self.totals, None  # unknown again until this commits
        totals = list(known) if known is not None else list(conn.execute(SQL_TOTALS).fetchone())
        oldest_moves = totals[0] == 0 or self.oldest is None
        codes: dict[str, int] = {}
        for job in jobs:
            job.result, job.error = None, None
            if not isinstance(job, AppendJob):
                oldest_moves = True  # removes or reorders records
            try:
                match job:
                    case AppendJob():
                        job.result = self._append(conn, totals, codes, job)
                    case AckJob():
                        job.result = self._ack(conn, totals, job)
                    case RetryJob():
                        job.result = self._retry(conn, job)
                    case DeadLetterJob():
                        job.result = self._dead_letter(conn, totals, codes, job)
                    case StateJob():
                        job.result = self._state(conn, job)
                    case _:
                        raise TypeError(f"not a write: {job!r}")
            except _Refused as refused:
                job.error = refused.error
        conn.execute(SQL_SET_TOTALS, totals)
        conn.execute("COMMIT")
        self.commits += 1
        self.totals = totals
        if oldest_moves:
            self.oldest = None
        for code, count in codes.items():
            self.by_code[code] = self.by_code.get(code, 0) + count
        return external

    def _room(self, totals: list[int], size: int) -> None:
        used = totals[1] + totals[3]
        if used + size > self.max_bytes:
            raise _Refused(
                QueueFullError(
                    f"the queue is full: {used} of {self.max_bytes} bytes used, {size} more refused"
                )
            )

    def _append(
        self, conn: sqlite3.Connection, totals: list[int], codes: dict[str, int], job: AppendJob
    ) -> Appended:
        items, raws = job.items, job.raws
        sizes = [len(item[2]) + len(item[3]) + ROW_OVERHEAD for item in items]
        size = sum(sizes)
        raw_rows = [_raw_row(raw, self.clock()) for raw in raws]
        raw_size = sum(row[-1] for row in raw_rows)
        self._room(totals, size + raw_size)  # raises _Refused before anything is written
        ids = insert_records(conn, items)
        totals[0] += len(items)
        totals[1] += size
        if raw_rows:
            conn.executemany(SQL_INSERT_RAW, raw_rows)
            totals[2] += len(raw_rows)
            totals[3] += raw_size
            for raw in raws:
                codes[raw.code] = codes.get(raw.code, 0) + 1
        return Appended(ids, sizes)

    def _state(self, conn: sqlite3.Connection, job: StateJob) -> str | None:
        if job.value is not None:
            conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (job.name, job.value))
            return job.value
        row = conn.execute("SELECT value FROM state WHERE name = ?", (job.name,)).fetchone()
        return None if row is None else str(row[0])

    def _ack(self, conn: sqlite3.Connection, totals: list[int], job: AckJob) -> int:
        """Delete delivered records. ``job.size`` is their total, known from the lease; when
        it is None (records acked without a lease of this run) the rows report their sizes."""
        ids, size = job.ids, job.size
        if size is None:
            sizes = conn.execute(_DELETE_IDS_SIZES, (orjson.dumps(ids),)).fetchall()
            totals[0] -= len(sizes)
            totals[1] -= sum(s for (s,) in sizes)
            return len(sizes)
        # No RETURNING: a Python tuple per deleted row cost more than the delete itself.
        runs = id_runs(ids)
        if runs is not None:
            deleted = conn.executemany(_DELETE_RUN, runs).rowcount
        else:
            deleted = conn.execute(_DELETE_IDS, (orjson.dumps(ids),)).rowcount
        if deleted != len(ids):
            # Some rows were already gone (another process?): recount rather than guess.
            count, total = conn.execute(SQL_COUNT_RECORDS).fetchone()
            totals[0], totals[1] = count, int(total)
            return int(deleted)
        totals[0] -= deleted
        totals[1] -= size
        return int(deleted)

    def _retry(self, conn: sqlite3.Connection, job: RetryJob) -> list[int]:
        rows = conn.execute(_RETRY, (job.retry_at, job.reason, orjson.dumps(job.ids))).fetchall()
        return [row[0] for row in rows]

    def _dead_letter(
        self,
        conn: sqlite3.Connection,
        totals: list[int],
        codes: dict[str, int],
        job: DeadLetterJob,
    ) -> list[int]:
        entries = job.entries
        ids = orjson.dumps([entry[0] for entry in entries])
        sizes = dict(conn.execute(_SIZES, (ids,)))
        now = self.clock()
        rows = []
        # Unpacked by position: callers may give plain (id, reason, status, code) tuples.
        for record_id, reason, status, code in entries:
            size = sizes.pop(record_id, None)  # pop: an id listed twice moves once
            if size is None:
                continue
            code = code or "error"
            new_size = size + len(reason.encode("utf-8", "replace"))
            rows.append((reason, status, code, now, new_size, record_id, size))
            codes[code] = codes.get(code, 0) + 1
        conn.executemany(_MOVE_TO_DEAD_LETTERS, [row[:6] for row in rows])
        moved = [row[5] for row in rows]
        conn.execute(_DELETE_IDS, (orjson.dumps(moved),))
        totals[0] -= len(rows)
        totals[1] -= sum(row[6] for row in rows)
        totals[2] += len(rows)
        totals[3] += sum(row[4] for row in rows)
        return moved

    # --- reads -----------------------------------------------------------------------

    def _read(self, job: LeaseJob) -> None:
        try:
            job.result = self._lease(job)
        except sqlite3.Error as exc:
            job.error = translate_error(exc, self.path)

    def _lease(self, job: LeaseJob) -> LeaseRows:
        conn = self.conn
        assert conn is not None
        due = []
        if job.due_ids:
            due = conn.execute(_LEASE_DUE, (orjson.dumps(job.due_ids),)).fetchall()
        fresh = []
        if job.limit > 0:
            fresh = conn.execute(_LEASE_FRESH, (job.cursor, job.limit)).fetchall()
        return LeaseRows(due, fresh)


def id_runs(ids: Sequence[int]) -> list[tuple[int, int]] | None:
    """``ids`` as runs of consecutive ids ``(first, last)``, or None when scattered.

    A batch's records were mostly appended one after another, so their ids form a few
    runs. Deleting a run walks the table once; ``IN (json_each)`` looks every id up
    (about a third more CPU per record on a 500-record ack). Ids in no order, or
    repeated, are sorted and counted once here; the caller still compares the rows
    deleted with ``len(ids)``.
    """
    if not ids:
        return None
    ordered = sorted(set(ids))
    runs: list[tuple[int, int]] = []
    first = last = ordered[0]
    for record_id in ordered:
        if record_id > last + 1:
            runs.append((first, last))
            if len(runs) * _MAX_RUNS_SHARE > len(ordered):
                return None
            first = record_id
        last = record_id
    runs.append((first, last))
    return runs if len(runs) * _MAX_RUNS_SHARE <= len(ordered) or len(runs) == 1 else None


class _Refused(Exception):
    """A job refused before it wrote anything (the queue is full)."""

    def __init__(self, error: QueueFullError) -> None:
        super().__init__(str(error))
        self.error = error


def _raw_row(raw: RawDeadLetter, now: float) -> tuple[Any, ...]:
    headers = orjson.dumps(dict(raw.headers), default=str)
    size = len(raw.payload) + len(headers) + len(raw.reason.encode("utf-8", "replace"))
    return (raw.source, raw.payload, headers, raw.reason, raw.code, now, now, size + ROW_OVERHEAD)
