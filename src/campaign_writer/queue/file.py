"""The queue's SQLite file: its schema, its shared statements, and the checks made when opening it.

The file holds three tables:

* ``records``: events mapped to staging records, waiting for delivery, with their
  original event bytes, attempt count and ``retry_at``;
* ``dead_letters``: records Campaign refused for good and broker messages that never
  became records, each with its original bytes, reason, HTTP status and fault code;
* ``totals``: one row of counts and byte sums, kept exact inside every transaction by
  every process that writes, so ``queue.max_bytes`` holds across processes too. The
  bound covers records and dead letters alike: it is the file's budget on disk.

Damage is never papered over. A file that is not SQLite, is shorter than its header
says, or fails ``PRAGMA quick_check`` after an unclean shutdown raises
:class:`~campaign_writer.errors.QueueCorruptError`, whose message gives the recovery
path (:func:`corrupt_message`). sqlite3's exceptions are translated here
(:func:`translate_error`) and never leave the queue package.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from ..errors import QueueCorruptError, QueueError, QueueFullError
from ..records import QueueItem

__all__ = [
    "BUSY_TIMEOUT_S",
    "RECORD_SIZE",
    "ROW_OVERHEAD",
    "SQL_COUNT_RECORDS",
    "SQL_INSERT_RAW",
    "SQL_SET_TOTALS",
    "SQL_TOTALS",
    "Snapshot",
    "corrupt_message",
    "insert_records",
    "open_connection",
    "recount",
    "snapshot",
    "translate_error",
]

ROW_OVERHEAD: Final = 64  # bytes counted per row on top of its payloads (ids, times, index)
SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_S: Final = 10.0  # another process (the CLI) may hold the write lock briefly

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
# without reading it, so the size is computed when needed rather than stored. Every
# query that needs it says RECORD_SIZE.
RECORD_SIZE: Final = f"length(record) + length(event) + {ROW_OVERHEAD}"
SQL_COUNT_RECORDS: Final = f"SELECT count(*), total({RECORD_SIZE}) FROM records"  # noqa: S608
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
    recount(conn)
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


def recount(conn: sqlite3.Connection) -> None:
    """Set the totals row from the rows themselves (inside the caller's transaction)."""
    records, record_bytes = conn.execute(SQL_COUNT_RECORDS).fetchone()
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
