"""The in-memory tail: fresh records handed to ``lease`` without reading them back.

Once a lease has read to the end of the file, the records this process appends next
are all that lies above it (unless another process writes), and their results settle
in commit order. The tail keeps them, one chunk per append, up to ``TAIL_MAX``, so
that ``lease`` takes them from memory: that saves the queue thread a read per append.
A gap in their ids, a commit by another process, or a backlog beyond that bound sends
leases back to the file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..records import Leased, QueueItem
from .jobs import Appended

__all__ = ["TAIL_MAX", "Tail", "Taken"]

TAIL_MAX: Final = 20_000  # fresh records held in memory for lease(); beyond, read the file


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


class Taken(NamedTuple):
    """Records taken from the tail, the lease cursor after them, and whether more wait."""

    records: list[Leased]
    cursor: int
    more: bool


class Tail:
    """Records this process appended since the last scan that reached the end of the
    file, when they are known to be ALL the records above the cursor (``exact``)."""

    def __init__(self) -> None:
        # One chunk per append, so that taking and counting them is slicing.
        self._chunks: deque[_Chunk] = deque()
        self.count = 0  # records in the tail not yet taken
        self.exact = False
        # The last id the scan that made the tail exact read (or its cursor, if it read
        # nothing): once the cursor is there, an empty exact tail means nothing is new.
        self.exact_end = 0

    def __repr__(self) -> str:
        return f"<Tail {self.count} records, exact={self.exact}, exact_end={self.exact_end}>"

    def made_exact(self, end: int) -> None:
        """A scan read to the end of the file, the last id it saw being ``end``."""
        self.forget()
        self.exact = True
        self.exact_end = end

    def forget(self) -> None:
        """Leases read the file again until a scan reaches its end."""
        self._chunks.clear()
        self.count = 0
        self.exact = False

    def extend(self, items: Sequence[QueueItem], appended: Appended) -> None:
        """Keep an append's records, as committed."""
        ids, sizes = appended
        count = len(ids)
        if not count:
            return
        first = ids[0]
        if self.count + count > TAIL_MAX or ids[-1] - first != count - 1:
            # A backlog builds up, or (never seen) one append's ids are not consecutive:
            # leases read the file.
            self.forget()
            return
        new = tuple.__new__  # Leased without its Python-level __new__ frame, per record
        records = [
            new(Leased, (record_id, lane, key, record, 0, created_at))
            for record_id, (lane, key, record, _, _, created_at) in zip(
                range(first, first + count), items, strict=True
            )
        ]
        self._chunks.append(_Chunk(first, records, sizes))
        self.count += count

    def take(self, cursor: int, limit: int, sizes: dict[int, int]) -> Taken | None:
        """Up to ``limit`` records above ``cursor`` from memory (their sizes go in
        ``sizes``), or None when the file must be read.

        Ids of one process's appends follow each other; a gap means another process
        inserted rows in between (a replay), so the file is read from there on.
        """
        chunks = self._chunks
        while chunks:  # drop what the scan that made the tail exact also read back
            chunk = chunks[0]
            if chunk.end - 1 <= cursor:
                chunks.popleft()
                self.count -= len(chunk.records) - chunk.start
                continue
            if chunk.next_id <= cursor:
                skipped = cursor + 1 - chunk.next_id
                chunk.start += skipped
                self.count -= skipped
            break
        if not chunks:
            if cursor >= self.exact_end:
                # Nothing above the cursor: no read of the file (in a steady flow the
                # feeder asks once more after each append it takes; that cost a round
                # trip through the queue thread per append).
                return Taken([], cursor, False)
            return None  # rows the scan read were never handed out (its lease was cancelled)
        if chunks[0].next_id != cursor + 1:
            self.forget()
            return None
        taken: list[Leased] = []
        expected = cursor + 1
        while chunks and len(taken) < limit:
            chunk = chunks[0]
            if chunk.next_id != expected:
                break
            start = chunk.start
            stop = min(len(chunk.records), start + limit - len(taken))
            taken.extend(chunk.records[start:stop])
            sizes.update(
                zip(range(expected, expected + stop - start), chunk.sizes[start:stop], strict=True)
            )
            expected += stop - start
            self.count -= stop - start
            if stop == len(chunk.records):
                chunks.popleft()
            else:
                chunk.start = stop
        if chunks and chunks[0].next_id != expected:
            self.forget()
            return Taken(taken, expected - 1, True)  # the rest is read from the file
        return Taken(taken, expected - 1, bool(chunks))
