"""Helpers for the queue tests: items with recognisable keys, a fake wall clock, file peeks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from campaign_writer.campaign.documents import StagingRecord
from campaign_writer.queue import QueueItem
from campaign_writer.queue.file import SQL_SET_TOTALS, SQL_TOTALS, insert_records, open_connection
from tests.support.documents import encode_record

LANE = "dem:sampleTableStg#Ingest"


def item(key: str, *, size: int = 0, created_at: float = 1000.0, source: str = "test") -> QueueItem:
    """A queue item whose key, record and event all carry ``key``; ``size`` pads the event."""
    record = encode_record(StagingRecord({"id": key}, None, "@id"))
    event = orjson.dumps({"type": "sample", "id": key, "pad": "x" * size})
    return QueueItem(LANE, key, record, event, source, created_at)


def items(prefix: str, count: int, **kwargs: object) -> list[QueueItem]:
    return [item(f"{prefix}{i}", **kwargs) for i in range(count)]  # type: ignore[arg-type]


class WallClock:
    """A settable stand-in for time.time, for retry_at arithmetic."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the queue file with a separate connection, as another process would."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def append_elsewhere(path: Path, new: list[QueueItem]) -> None:
    """Append as another process does (a ``dlq replay``): its own connection and commit."""
    connection = open_connection(path, create=False)
    try:
        connection.execute("BEGIN IMMEDIATE")
        totals = list(connection.execute(SQL_TOTALS).fetchone())
        insert_records(connection, new)
        totals[0] += len(new)
        totals[1] += sum(len(i.record) + len(i.event) + 64 for i in new)
        connection.execute(SQL_SET_TOTALS, totals)
        connection.execute("COMMIT")
    finally:
        connection.close()
