"""What the event loop asks of the queue's thread: one small class per kind of job.

The facade makes a job, the :class:`~.worker.Worker` runs it and sets ``result`` (or
``error``), and the facade settles its future on the event loop. Writes (appends,
acks, retries, dead letters) share one transaction per round; leases read after
that round's commit; ``CloseJob`` ends the thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, NamedTuple, TypeVar

from ..records import QueueItem, RawDeadLetter, RecordDeadLetter

__all__ = [
    "AckJob",
    "AppendJob",
    "Appended",
    "CloseJob",
    "DeadLetterJob",
    "DueRow",
    "FreshRow",
    "Job",
    "LeaseJob",
    "LeaseRows",
    "RetryJob",
    "StateJob",
]

ResultT = TypeVar("ResultT")

# A record read for a lease: id, lane, key, record, attempts, created_at, size (its
# bytes as the totals count them); a fresh one also has its retry_at.
DueRow = tuple[int, str, str | None, bytes, int, float, int]
FreshRow = tuple[int, str, str | None, bytes, int, float, int, float]


@dataclass(eq=False, slots=True)
class Job(Generic[ResultT]):
    """A job for the queue's thread; ``future`` (on the event loop) gets its outcome."""

    writes: ClassVar[bool] = False  # runs in the round's write transaction
    future: asyncio.Future[ResultT] | None = field(default=None, kw_only=True)
    result: ResultT | None = field(default=None, kw_only=True)
    error: BaseException | None = field(default=None, kw_only=True)


class Appended(NamedTuple):
    """The new rows' ids and sizes (the queue keeps both for leases from memory)."""

    ids: list[int]
    sizes: list[int]


@dataclass(eq=False, slots=True)
class AppendJob(Job[Appended]):
    """Insert records and raw dead letters, all or nothing."""

    writes: ClassVar[bool] = True
    items: Sequence[QueueItem]
    raws: Sequence[RawDeadLetter]

    @property
    def rows(self) -> int:
        """Rows it writes: its records and its raw dead letters."""
        return len(self.items) + len(self.raws)


@dataclass(eq=False, slots=True)
class AckJob(Job[int]):
    """Delete delivered records; ``size`` is their total when the lease knows it. Result:
    the rows deleted."""

    writes: ClassVar[bool] = True
    ids: list[int]
    size: int | None


@dataclass(eq=False, slots=True)
class RetryJob(Job[list[int]]):
    """Count an attempt and set ``retry_at``; result: the ids still there."""

    writes: ClassVar[bool] = True
    ids: list[int]
    retry_at: float
    reason: str


@dataclass(eq=False, slots=True)
class DeadLetterJob(Job[list[int]]):
    """Move records to the dead letters; result: the ids moved."""

    writes: ClassVar[bool] = True
    entries: Sequence[RecordDeadLetter]


class LeaseRows(NamedTuple):
    """What a lease read: the due records asked for, and fresh ones above the cursor."""

    due: list[DueRow]
    fresh: list[FreshRow]


@dataclass(eq=False, slots=True)
class LeaseJob(Job[LeaseRows]):
    """Read ``due_ids``, and up to ``limit`` records with ids above ``cursor``."""

    due_ids: list[int]
    cursor: int
    limit: int


@dataclass(eq=False, slots=True)
class StateJob(Job[str | None]):
    """Set a row of the state table (unless ``value`` is None); result: its value."""

    writes: ClassVar[bool] = True
    name: str
    value: str | None


@dataclass(eq=False, slots=True)
class CloseJob(Job[None]):
    """Finish the round, mark the file cleanly closed, end the thread."""
