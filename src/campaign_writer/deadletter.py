"""The dead-letter queue from outside the daemon: list, show, replay and purge.

``campaign-writer dlq`` works on the queue file directly, whether or not a daemon
owns it: SQLite serialises the writers, each change here is one short transaction
that keeps the ``totals`` row exact, and the daemon notices (it watches
``PRAGMA data_version`` and finds new records by id).

Replay re-maps each entry's original event through the *current* routes, so a
config fix (a renamed attribute, a longer length, a new route) applies to events
that were refused before it. Entries that map are appended to the queue and removed
from the DLQ in the same transaction; entries that still fail stay, and the reason
they fail now is reported.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import QueueFullError, RecordError
from .queue.file import (
    ROW_OVERHEAD,
    SQL_SET_TOTALS,
    SQL_TOTALS,
    insert_records,
    open_connection,
    translate_error,
)
from .records import DeadLetter, QueueItem
from .router import Router

__all__ = ["DeadLetter", "DeadLetterStore", "ReplayResult"]

_SELECT_ONE = (
    "SELECT id, record_id, source, lane, key, event, headers, reason, status, code, attempts, "
    "created_at, dead_at, record FROM dead_letters WHERE id = ?"
)
# Queries filter the same way (parameters from _filters); an absent filter is NULL, so
# the SQL text never changes with the filters.
_SELECT_MATCHING = (
    "SELECT id, record_id, source, lane, key, event, headers, reason, status, code, attempts, "
    "created_at, dead_at, record FROM dead_letters"
    " WHERE id > ?1 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2)))"
    " AND (?3 IS NULL OR code = ?3) ORDER BY id LIMIT ?4"
)
_COUNT_MATCHING = (
    "SELECT count(*) FROM dead_letters"
    " WHERE id > ?1 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2)))"
    " AND (?3 IS NULL OR code = ?3)"
)
_DELETE_MATCHING = (
    "DELETE FROM dead_letters"
    " WHERE id > ?1 AND (?2 IS NULL OR id IN (SELECT value FROM json_each(?2)))"
    " AND (?3 IS NULL OR code = ?3) RETURNING size"
)


@dataclass
class ReplayResult:
    """How a replay went: entries re-queued, and ``(id, reason)`` of those still failing."""

    replayed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


def _entry(row: Sequence[Any]) -> DeadLetter:
    headers = orjson.loads(row[6]) if row[6] else {}
    record = bytes(row[13]) if row[13] is not None else None
    return DeadLetter(
        id=row[0],
        record_id=row[1],
        source=row[2],
        lane=row[3],
        key=row[4],
        event=bytes(row[5]),
        headers=headers,
        reason=row[7],
        status=row[8],
        code=row[9],
        attempts=row[10],
        created_at=row[11],
        dead_at=row[12],
        record=record,
    )


def _filters(ids: Sequence[int] | None, code: str | None, after: int) -> tuple[Any, ...]:
    """Parameters for _MATCH: entries after an id, optionally among ids, with a code."""
    return (after, orjson.dumps(list(ids)).decode() if ids is not None else None, code)


class DeadLetterStore:
    """A connection to a queue file for dead-letter operations; use as a context manager."""

    def __init__(self, path: str | Path, *, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._conn = open_connection(self.path, create=False)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> DeadLetterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path) from None

    # --- reading ---------------------------------------------------------------------

    def count(self, *, ids: Sequence[int] | None = None, code: str | None = None) -> int:
        return int(self._rows(_COUNT_MATCHING, _filters(ids, code, 0))[0][0])

    def page(self, *, limit: int = 50, after: int = 0, code: str | None = None) -> list[DeadLetter]:
        """Entries in id order, ``limit`` at a time after id ``after``."""
        rows = self._rows(_SELECT_MATCHING, (*_filters(None, code, after), limit))
        return [_entry(row) for row in rows]

    def get(self, entry_id: int) -> DeadLetter | None:
        rows = self._rows(_SELECT_ONE, (entry_id,))
        return _entry(rows[0]) if rows else None

    def iter_entries(
        self, *, ids: Sequence[int] | None = None, code: str | None = None, batch: int = 500
    ) -> Iterator[list[DeadLetter]]:
        after = 0
        while True:
            rows = self._rows(_SELECT_MATCHING, (*_filters(ids, code, after), batch))
            if not rows:
                return
            entries = [_entry(row) for row in rows]
            after = entries[-1].id
            yield entries

    # --- changing --------------------------------------------------------------------

    def purge(self, *, ids: Sequence[int] | None = None, code: str | None = None) -> int:
        """Delete the matching entries for good; returns how many went."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            sizes = conn.execute(_DELETE_MATCHING, _filters(ids, code, 0)).fetchall()
            totals = list(conn.execute(SQL_TOTALS).fetchone())
            totals[2] -= len(sizes)
            totals[3] -= sum(size for (size,) in sizes)
            conn.execute(SQL_SET_TOTALS, totals)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise translate_error(exc, self.path) from None
        return len(sizes)

    def replay(
        self,
        router: Router,
        *,
        ids: Sequence[int] | None = None,
        code: str | None = None,
        batch: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> ReplayResult:
        """Re-map entries with ``router``; re-queue those that map, keep the others.

        QueueFullError stops the replay with nothing of the current batch written.
        """
        result = ReplayResult()
        for entries in self.iter_entries(ids=ids, code=code, batch=batch):
            items: list[QueueItem] = []
            done: list[int] = []
            now = time.time()
            for entry in entries:
                try:
                    routed = router.route(orjson.loads(entry.event))
                except orjson.JSONDecodeError as exc:
                    result.failed.append((entry.id, f"invalid JSON: {exc}"))
                    continue
                except RecordError as exc:
                    result.failed.append((entry.id, str(exc)))
                    continue
                items.append(
                    QueueItem(
                        routed.lane, routed.key, routed.record, entry.event, entry.source, now
                    )
                )
                done.append(entry.id)
            if done:
                self._requeue(items, done)
                result.replayed += len(done)
            if progress is not None:
                progress(len(entries))
        return result

    def _requeue(self, items: list[QueueItem], done: list[int]) -> None:
        """Append the records and delete their entries, in one transaction."""
        conn = self._conn
        added = sum(len(item[2]) + len(item[3]) + ROW_OVERHEAD for item in items)
        try:
            conn.execute("BEGIN IMMEDIATE")
            sizes = conn.execute(
                "DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?)) "
                "RETURNING size",
                (orjson.dumps(done).decode(),),
            ).fetchall()
            removed = sum(size for (size,) in sizes)
            totals = list(conn.execute(SQL_TOTALS).fetchone())
            used = totals[1] + totals[3] - removed + added
            if self.max_bytes is not None and used > self.max_bytes:
                conn.execute("ROLLBACK")
                raise QueueFullError(
                    f"the queue is full ({self.max_bytes} bytes); replay stopped, "
                    "the remaining entries are still in the dead-letter queue"
                )
            insert_records(conn, items)
            totals[0] += len(items)
            totals[1] += added
            totals[2] -= len(sizes)
            totals[3] -= removed
            conn.execute(SQL_SET_TOTALS, totals)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise translate_error(exc, self.path) from None
