"""The queue's SQLite file: its schema, the checks made when opening it, and its thread.

The file holds three tables:

* ``records``: events mapped to staging records, waiting for delivery, with their
  original event bytes, attempt count and ``retry_at``;
* ``dead_letters``: records Campaign refused for good and broker messages that never
  became records, each with its original bytes, reason, HTTP status and fault code;
* ``totals``: one row of counts and byte sums, kept exact inside every transaction by
  every process that writes, so ``queue.max_bytes`` holds across processes too. The
  bound covers records and dead letters alike: it is the file's budget on disk.

:class:`Worker` runs in the queue's own thread and is the only user of its
connection. It takes all the jobs waiting for it and runs the writes among them in
ONE transaction, so concurrent appends share one fsync (group commit); reads run
after that commit, so a lease never sees a row that could still be rolled back.
With a commit window (``queue.commit_window_ms``), an append that arrives while
others are arriving waits up to that long for company before its commit;
:class:`GroupCommit` decides when waiting pays.

Damage is never papered over. A file that is not SQLite, is shorter than its header
says, or fails ``PRAGMA quick_check`` after an unclean shutdown raises
:class:`~campaign_writer.errors.QueueCorruptError`, whose message gives the recovery
path (:func:`corrupt_message`). sqlite3's exceptions are translated here
(:func:`translate_error`) and never leave the queue modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

from .errors import QueueCorruptError, QueueError, QueueFullError
from .logs import get_logger

if TYPE_CHECKING:
    from .queue import QueueItem, RawDeadLetter

__all__ = [
    "BUSY_TIMEOUT_S",
    "ROW_OVERHEAD",
    "SQL_SET_TOTALS",
    "SQL_TOTALS",
    "GroupCommit",
    "Job",
    "Snapshot",
    "Worker",
    "corrupt_message",
    "insert_records",
    "open_connection",
    "snapshot",
    "translate_error",
]

log = get_logger("queue")

ROW_OVERHEAD: Final = 64  # bytes counted per row on top of its payloads (ids, times, index)
SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_S: Final = 10.0  # another process (the CLI) may hold the write lock briefly
_IDLE_POLL_S: Final = 0.25
_MAX_JOBS_PER_COMMIT: Final = 512

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane TEXT NOT NULL,
    key TEXT,
    record BLOB NOT NULL,
    event BLOB NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id INTEGER,
    source TEXT NOT NULL,
    lane TEXT,
    key TEXT,
    record BLOB,
    event BLOB NOT NULL,
    headers BLOB,
    reason TEXT NOT NULL,
    status INTEGER,
    code TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_code ON dead_letters(code);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    records INTEGER NOT NULL,
    record_bytes INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL,
    dead_letter_bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0, 0);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_TABLES: Final = frozenset({"records", "dead_letters", "totals", "state"})

# A record's size is its two payloads plus ROW_OVERHEAD; SQLite knows a BLOB's length
# without reading it, so the size is computed when needed rather than stored.
# Written out in each query below as "length(record) + length(event) + 64".
_INSERT_RECORDS: Final = (
    "INSERT INTO records (lane, key, record, event, source, created_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_MAX_ROWS_PER_INSERT: Final = 512  # 3,072 parameters, well under SQLite's 32,766
_EXACT_ROWS: Final = 64  # up to this many rows, one statement of exactly that many
_CACHED_STATEMENTS: Final = 256  # sqlite3's default of 128 would churn with the above
_inserts: dict[int, str] = {}
SQL_INSERT_RAW: Final = (
    "INSERT INTO dead_letters (source, event, headers, reason, code, created_at, dead_at, size) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SQL_TOTALS: Final = "SELECT records, record_bytes, dead_letters, dead_letter_bytes FROM totals"
SQL_SET_TOTALS: Final = (
    "UPDATE totals SET records = ?, record_bytes = ?, dead_letters = ?, dead_letter_bytes = ?"
)


# --- the file -----------------------------------------------------------------------


def corrupt_message(path: Path, detail: str) -> str:
    """What went wrong and how to recover, for QueueCorruptError.

    The salvage uses the sqlite3 command's ``.dump``, which every build has (``.recover``
    needs an optional extension). On a damaged file ``.dump`` skips what it cannot read
    and ends with ROLLBACK; sed turns that into COMMIT so the readable rows are kept.
    The writer adopts the new file and recounts its totals from the rows.
    """
    damaged = f"{path}.damaged"
    command = (
        f"mv {path} {damaged} && {{ mv {path}-wal {damaged}-wal; rm -f {path}-shm; }} "
        f"2>/dev/null; sqlite3 {damaged} .dump | sed 's/^ROLLBACK; -- due to errors$/COMMIT;/' "
        f"| sqlite3 {path}"
    )
    return (
        f"queue file {path} is damaged ({detail}). The writer refuses to start on it rather "
        "than begin with an empty queue. Recovery: stop the writer, salvage the readable "
        f"records into a new file with `{command}` (needs the sqlite3 command), then start "
        f"the writer again; it adopts the salvaged file. Keep {damaged} until satisfied."
    )


def translate_error(exc: sqlite3.Error, path: Path) -> QueueError:
    """sqlite3's exception as one of ours; the only place their names are read."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return QueueFullError(f"the disk holding {path} is full ({exc})")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return QueueCorruptError(corrupt_message(path, str(exc)))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return QueueError(f"{path} stayed locked by another process for {BUSY_TIMEOUT_S:g} s")
    return QueueError(f"queue file {path}: {exc}")


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite or is shorter than its header says."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise QueueError(f"cannot read queue file {path}: {exc.strerror}") from None
    if size == 0:
        return
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise QueueCorruptError(corrupt_message(path, "not an SQLite database"))
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return  # a crashed run: the WAL may legitimately hold the newest pages
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid when "version-valid-for" equals the change counter.
    if header[92:96] == header[24:28] and pages and size < pages * page_size:
        raise QueueCorruptError(
            corrupt_message(path, f"truncated: {size} of {pages * page_size} bytes")
        )


def open_connection(path: Path, *, synchronous: str = "FULL", create: bool) -> sqlite3.Connection:
    """A connection to a checked queue file, WAL on; creates the schema if ``create``."""
    if not create and not path.exists():
        raise QueueError(f"no queue file at {path}")
    _check_header(path)
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueError(f"cannot create {path.parent}: {exc.strerror}") from None
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=_CACHED_STATEMENTS,
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA cache_size = -16384")
        _ensure_schema(conn, path, create)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise translate_error(exc, path) from None
    except QueueError:
        if conn is not None:
            conn.close()
        raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == SCHEMA_VERSION and tables >= _TABLES:
        return  # ours, as we left it
    if version > SCHEMA_VERSION:
        raise QueueError(f"{path} has queue format {version}; this version reads {SCHEMA_VERSION}")
    if tables and not tables >= _TABLES:
        raise QueueCorruptError(corrupt_message(path, "not a campaign-writer queue"))
    if not tables and not create:
        raise QueueError(f"{path} is not a campaign-writer queue (it is empty)")
    # A new file, or one salvaged with `.recover` (which drops user_version): set it up
    # and recount the totals from the rows themselves.
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    _recount(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def insert_records(conn: sqlite3.Connection, items: Sequence[QueueItem]) -> list[int]:
    """Insert queue items with multi-row INSERTs; their new ids.

    executemany steps SQLite once per row and hands the GIL back and forth each time,
    which stalls this thread whenever the event loop is busy routing; one statement
    per chunk releases the GIL once. Up to ``_EXACT_ROWS`` items (a typical post) go
    in one statement of exactly that many rows; larger appends go in power-of-two
    chunks. That bounds the distinct statements (cached by sqlite3) to about 70. The
    rows of one statement take consecutive ids (the write lock is ours and ids only
    grow), so the last one gives them all.
    """
    ids: list[int] = []
    start = 0
    while start < len(items):
        left = len(items) - start
        if left <= _EXACT_ROWS:
            rows = left
        else:
            rows = 1 << (min(left, _MAX_ROWS_PER_INSERT).bit_length() - 1)
        sql = _inserts.get(rows)
        if sql is None:
            sql = _inserts[rows] = _INSERT_RECORDS + ", (?, ?, ?, ?, ?, ?)" * (rows - 1)
        # The blobs go in as bytearrays: sqlite3 binds those directly, while every bytes
        # parameter first goes through its adapter lookup, which cost more than the copy.
        params = [
            value
            for lane, key, record, event, source, created_at in items[start : start + rows]
            for value in (lane, key, bytearray(record), bytearray(event), source, created_at)
        ]
        cursor = conn.execute(sql, params)
        last = cursor.lastrowid
        assert last is not None
        ids.extend(range(last - rows + 1, last + 1))
        start += rows
    return ids


def _recount(conn: sqlite3.Connection) -> None:
    records, record_bytes = conn.execute(
        "SELECT count(*), total(length(record) + length(event) + 64) FROM records"
    ).fetchone()
    dead, dead_bytes = conn.execute("SELECT count(*), total(size) FROM dead_letters").fetchone()
    conn.execute(SQL_SET_TOTALS, (records, int(record_bytes), dead, int(dead_bytes)))


def snapshot(conn: sqlite3.Connection, by_code: Mapping[str, int] | None = None) -> Snapshot:
    totals = conn.execute(SQL_TOTALS).fetchone()
    oldest = conn.execute("SELECT created_at FROM records ORDER BY id LIMIT 1").fetchone()
    if by_code is None:
        by_code = dict(conn.execute("SELECT code, count(*) FROM dead_letters GROUP BY code"))
    records, record_bytes, dead_letters, dead_letter_bytes = totals
    return Snapshot(
        records,
        record_bytes,
        dead_letters,
        dead_letter_bytes,
        oldest[0] if oldest else None,
        dict(by_code),
    )


class Snapshot(NamedTuple):
    records: int
    record_bytes: int
    dead_letters: int
    dead_letter_bytes: int
    oldest_created_at: float | None
    by_code: dict[str, int]


# --- the worker thread --------------------------------------------------------------


@dataclass(eq=False)
class Job:
    kind: str
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | None
    result: Any = None
    error: BaseException | None = None


_WRITES: Final = frozenset({"append", "ack", "retry", "dead_letter"})
_ENOUGH_ROWS: Final = 500  # an append this large never waits, and ends a window it joins


def _rows(job: Job) -> int:
    """Rows an append job writes: its records and its raw dead letters."""
    return len(job.args[0]) + len(job.args[1])


def _ends_window(job: Job) -> bool:
    """Whether ``job`` commits without a window, and ends one it arrives in."""
    return job.kind != "append" or _rows(job) >= _ENOUGH_ROWS


class GroupCommit:
    """When an append should wait for others before its commit. Pure (times are given).

    Every commit costs an fsync and a round trip between the event loop and the
    queue thread, whatever it holds. Appends from independent producers that arrive
    a few milliseconds apart can share one commit if the first waits for the next;
    the wait delays its acknowledgement by up to ``window_s``. Waiting is worth it
    only when company comes, so:

    * an append arriving more than ``window_s`` after the previous round stopped
      gathering never waits (sparse traffic: nobody would join); that distance
      includes the commit, so a window shorter than a commit never waits, and then
      appends pile up behind the slow commits and share them anyway;
    * a wait that ends with company, or a round that finds appends already queued,
      restores the credit to ``CREDIT`` waits; a wait that ends alone spends one (a
      wait cut short by another kind of job spends nothing: nobody had time to join);
    * with no credit left (a single producer that posts only after each answer),
      one wait checks whether company has appeared, at most once every
      ``probe_s`` (``PROBE_S``, or 50 windows for long windows) after the last
      check ended: such a producer spends at most about 2% of its time waiting.
    """

    CREDIT: Final = 8
    PROBE_S: Final = 1.0
    PROBE_WINDOWS: Final = 50

    def __init__(self, window_s: float) -> None:
        if window_s < 0:
            raise ValueError("the commit window must not be negative")
        self.window_s = window_s
        self.probe_s = max(self.PROBE_S, self.PROBE_WINDOWS * window_s)
        self.credit = 0
        self._last_append = float("-inf")
        self._last_probe = float("-inf")
        self._probing = False
        self.waits = 0  # rounds that waited
        self.joined = 0  # waits that ended with company

    def wait_s(self, now: float) -> float:
        """How long the append taken at ``now`` should wait for others (0: commit now)."""
        gap = now - self._last_append
        self._last_append = now
        if self.window_s <= 0 or gap > self.window_s:
            return 0.0
        if self.credit <= 0:
            if now - self._last_probe < self.probe_s:
                return 0.0
            self._probing = True
        return self.window_s

    def done(self, appends: int, waited: bool, ended_at: float, cut: bool = False) -> None:
        """A round is ready to commit: ``appends`` appends in it, ``waited`` if it waited
        for them, gathering until ``ended_at``; ``cut`` if another kind of job ended the
        wait early. The next append's distance is counted from ``ended_at``, so a
        producer that answers fast after a wait still counts as close."""
        self._last_append = max(self._last_append, ended_at)
        if self._probing:
            self._probing = False
            self._last_probe = ended_at
        if waited:
            self.waits += 1
        if appends > 1:
            self.credit = self.CREDIT
            if waited:
                self.joined += 1
        elif waited and not cut:
            self.credit = max(0, self.credit - 1)


@dataclass(eq=False)
class Worker:
    """Runs in the queue's thread: owns the connection, executes jobs in group commits."""

    path: Path
    synchronous: str
    max_bytes: int
    clock: Callable[[], float]
    publish: Callable[[list[Job], Snapshot | None, bool], None]
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
        _recount(self.conn)
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

    def run(self, jobs: SimpleQueue[Job]) -> None:
        """Serve jobs until a ``close`` job; each round is one commit plus the reads."""
        while True:
            try:
                first = jobs.get(timeout=_IDLE_POLL_S)
            except Empty:
                self._notice_others(idle=True)
                continue
            batch = [first]
            # empty() rather than get_nowait() until Empty: no exception raised per round.
            while len(batch) < _MAX_JOBS_PER_COMMIT and not jobs.empty():
                batch.append(jobs.get_nowait())  # this thread is the only consumer
            snap: Snapshot | None = None
            external = False
            try:
                if first.kind == "append":
                    self._gather(jobs, batch)
                writes = [job for job in batch if job.kind in _WRITES]
                # A write transaction looks for commits by others itself, under its lock.
                external = self._write(writes) if writes else self._notice_others(idle=False)
                for job in batch:
                    if job.kind == "lease":
                        self._guarded(job, self._lease)
                if writes or external:
                    snap = self._refresh()
            except Exception as exc:  # a bug must fail its callers, never strand them
                log.exception("queue worker failed a round of jobs")
                for job in batch:
                    job.error = QueueError(f"internal queue error: {exc!r}")
            stopping = any(job.kind == "close" for job in batch)
            if stopping:
                self.close()
            self.publish(batch, snap, external)
            if stopping:
                return

    def submit(self, jobs: SimpleQueue[Job], job: Job) -> None:
        """Queue ``job`` for this thread (called from the event loop's thread).

        An append that arrives during a commit window only joins the queue: the thread
        sleeps through the window and takes it at the end, so each append does not wake
        it (and the loop's thread, which holds the GIL, is not preempted by it). Any
        other job, or an append of ``_ENOUGH_ROWS`` rows, ends the window at once."""
        ends_window = _ends_window(job)
        jobs.put(job)
        if ends_window:
            self.hurry.set()

    def _gather(self, jobs: SimpleQueue[Job], batch: list[Job]) -> None:
        """Let appends that follow closely join the round (see :class:`GroupCommit`).

        The wait ends at the window's end, or once the round holds another kind of job
        (a lease, an ack or a close should not sit out the window) or an append of
        ``_ENOUGH_ROWS`` rows: a commit's fixed cost is small beside that many rows, so
        such appends (bulk posts, broker batches) never wait."""
        grouping = self.grouping
        now = time.monotonic()
        appends = sum(1 for job in batch if job.kind == "append")
        cut = False
        wait = grouping.wait_s(now) if len(batch) == 1 and not _ends_window(batch[0]) else 0.0
        if wait > 0:
            deadline = now + wait
            hurry = self.hurry
            # Cleared before looking at the queue: a job queued after this line sets it
            # again, one queued before is found by the look.
            hurry.clear()
            while True:
                ended = False
                while len(batch) < _MAX_JOBS_PER_COMMIT and not jobs.empty():
                    job = jobs.get_nowait()
                    batch.append(job)
                    if job.kind == "append":
                        appends += 1
                    if _ends_window(job):
                        ended = True
                        cut = cut or job.kind != "append"
                left = deadline - time.monotonic()
                if ended or left <= 0 or len(batch) >= _MAX_JOBS_PER_COMMIT:
                    break
                hurry.wait(left)
            now = time.monotonic()
        grouping.done(appends, wait > 0, now, cut)

    def _guarded(self, job: Job, handler: Callable[[Job], Any]) -> None:
        try:
            job.result = handler(job)
        except sqlite3.Error as exc:
            job.error = translate_error(exc, self.path)

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
            self.by_code = dict(
                self.conn.execute("SELECT code, count(*) FROM dead_letters GROUP BY code")
            )
            if idle:
                self.publish([], snapshot(self.conn, self.by_code), True)
        except sqlite3.Error as exc:
            self.totals = self.oldest = None  # read them back rather than trust them
            log.warning("could not look for changes by others", extra={"error": str(exc)})
            return False
        return True

    # --- writes: one transaction for many jobs ----------------------------------------

    def _write(self, jobs: list[Job]) -> bool:
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

    def _transaction(self, jobs: list[Job]) -> bool:
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
            if job.kind != "append":
                oldest_moves = True  # removes or reorders records
            handler = getattr(self, f"_{job.kind}")
            try:
                job.result = handler(conn, totals, codes, *job.args)
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
        self,
        conn: sqlite3.Connection,
        totals: list[int],
        codes: dict[str, int],
        items: Sequence[QueueItem],
        raws: Sequence[RawDeadLetter],
    ) -> tuple[list[int], list[int]]:
        """The new rows' ids and sizes (the queue keeps both for leases from memory)."""
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
        return ids, sizes

    def _ack(
        self,
        conn: sqlite3.Connection,
        totals: list[int],
        codes: dict[str, int],
        ids: list[int],
        size: int | None,
    ) -> int:
        """Delete delivered records. ``size`` is their total, known from the lease; when it
        is None (records acked without a lease of this run) the rows report their sizes."""
        if size is None:
            sizes = conn.execute(
                "DELETE FROM records WHERE id IN (SELECT value FROM json_each(?)) "
                "RETURNING length(record) + length(event) + 64",
                (orjson.dumps(ids),),
            ).fetchall()
            totals[0] -= len(sizes)
            totals[1] -= sum(s for (s,) in sizes)
            return len(sizes)
        # No RETURNING: a Python tuple per deleted row cost more than the delete itself.
        runs = _runs(ids)
        if runs is not None:
            deleted = conn.executemany(_DELETE_RUN, runs).rowcount
        else:
            deleted = conn.execute(
                "DELETE FROM records WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(ids),),
            ).rowcount
        if deleted != len(ids):
            # Some rows were already gone (another process?): recount rather than guess.
            count, total = conn.execute(
                "SELECT count(*), total(length(record) + length(event) + 64) FROM records"
            ).fetchone()
            totals[0], totals[1] = count, int(total)
            return int(deleted)
        totals[0] -= deleted
        totals[1] -= size
        return int(deleted)

    def _retry(
        self,
        conn: sqlite3.Connection,
        totals: list[int],
        codes: dict[str, int],
        ids: list[int],
        retry_at: float,
        reason: str,
    ) -> list[int]:
        rows = conn.execute(
            "UPDATE records SET attempts = attempts + 1, retry_at = ?, last_error = ? "
            "WHERE id IN (SELECT value FROM json_each(?)) RETURNING id",
            (retry_at, reason, orjson.dumps(ids)),
        ).fetchall()
        return [row[0] for row in rows]

    def _dead_letter(
        self,
        conn: sqlite3.Connection,
        totals: list[int],
        codes: dict[str, int],
        entries: Sequence[tuple[int, str, int | None, str]],
    ) -> list[int]:
        ids = orjson.dumps([entry[0] for entry in entries])
        sizes = dict(
            conn.execute(
                "SELECT id, length(record) + length(event) + 64 FROM records "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
        )
        now = self.clock()
        rows = []
        for record_id, reason, status, code in entries:
            size = sizes.pop(record_id, None)  # pop: an id listed twice moves once
            if size is None:
                continue
            code = code or "error"
            new_size = size + len(reason.encode("utf-8", "replace"))
            rows.append((reason, status, code, now, new_size, record_id, size))
            codes[code] = codes.get(code, 0) + 1
        conn.executemany(
            "INSERT INTO dead_letters (record_id, source, lane, key, record, event, reason, "
            "status, code, attempts, created_at, dead_at, size) SELECT id, source, lane, key, "
            "record, event, ?1, ?2, ?3, attempts, created_at, ?4, ?5 FROM records WHERE id = ?6",
            [row[:6] for row in rows],
        )
        moved = [row[5] for row in rows]
        conn.execute(
            "DELETE FROM records WHERE id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(moved),),
        )
        totals[0] -= len(rows)
        totals[1] -= sum(row[6] for row in rows)
        totals[2] += len(rows)
        totals[3] += sum(row[4] for row in rows)
        return moved

    # --- reads -----------------------------------------------------------------------

    def _lease(self, job: Job) -> tuple[list[Any], list[Any]]:
        conn = self.conn
        assert conn is not None
        due_ids, cursor, limit = job.args
        due: list[Any] = []
        if due_ids:
            due = conn.execute(
                "SELECT id, lane, key, record, attempts, created_at, "
                "length(record) + length(event) + 64 "
                "FROM records WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
                (orjson.dumps(due_ids),),
            ).fetchall()
        fresh: list[Any] = []
        if limit > 0:
            fresh = conn.execute(
                "SELECT id, lane, key, record, attempts, created_at, "
                "length(record) + length(event) + 64, retry_at "
                "FROM records WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit),
            ).fetchall()
        return due, fresh


_DELETE_RUN: Final = "DELETE FROM records WHERE id BETWEEN ? AND ?"
_MAX_RUNS_SHARE: Final = 8  # ranges pay off while a run holds this many ids on average


def _runs(ids: Sequence[int]) -> list[tuple[int, int]] | None:
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
