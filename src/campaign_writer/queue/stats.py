"""The queue's figures: depth, bytes, oldest age and dead letters, live or from a file."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .file import Snapshot, open_connection, snapshot, translate_error

__all__ = ["QueueStats", "read_stats", "stats_of"]


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
    file = Path(path)
    conn = open_connection(file, create=False)
    try:
        snap = snapshot(conn)
    except sqlite3.Error as exc:
        raise translate_error(exc, file) from None
    finally:
        conn.close()
    return stats_of(snap, time.time(), 0, max_bytes)


def stats_of(snap: Snapshot, now: float, leased: int, max_bytes: int | None) -> QueueStats:
    """The stats of a snapshot taken at ``now``, with ``leased`` records out."""
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
