"""The records that cross stages: what intake queues, what delivery leases, what dies.

::

    router ── QueueItem ──> queue ── Leased ──> dispatcher ── RecordDeadLetter ──> queue
    sources ── RawDeadLetter ──> queue ── DeadLetter ──> dlq list / show / replay

A lane is one (schema, method): :class:`LaneId`. The queue file stores it as text,
``dem:sampleTableStg#Ingest``; :attr:`LaneId.text` and :meth:`LaneId.parse` are the
only places that spell that form.

They are NamedTuples (and one frozen dataclass read by people, not loops): the lease
loop and the append path make one per record, and a tuple is the cheapest object
Python builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

__all__ = [
    "LANE_SEPARATOR",
    "DeadLetter",
    "LaneId",
    "Leased",
    "QueueItem",
    "RawDeadLetter",
    "RecordDeadLetter",
]

LANE_SEPARATOR: Final = "#"  # between schema and method in a lane's text form


class LaneId(NamedTuple):
    """A lane: the target schema and the method that writes it."""

    schema: str
    method: str

    @property
    def text(self) -> str:
        """The lane as the queue stores it: ``dem:sampleTableStg#Ingest``."""
        return f"{self.schema}{LANE_SEPARATOR}{self.method}"

    @classmethod
    def parse(cls, text: str) -> LaneId:
        """The lane a stored text names (the inverse of :attr:`text`)."""
        schema, _, method = text.partition(LANE_SEPARATOR)
        return cls(schema, method)


class QueueItem(NamedTuple):
    """One record to append; ``event`` is the original event, kept for the DLQ and replay.

    ``lane`` is a :attr:`LaneId.text`."""

    lane: str
    key: str | None
    record: bytes
    event: bytes
    source: str
    created_at: float


class Leased(NamedTuple):
    """A record handed to delivery; it stays on disk until ack or dead_letter."""

    id: int
    lane: str  # a LaneId.text
    key: str | None
    record: bytes
    attempts: int
    created_at: float


class RecordDeadLetter(NamedTuple):
    """A leased record to move to the dead-letter queue, and why (Campaign's answer)."""

    id: int
    reason: str
    status: int | None  # the HTTP status, when there was an answer
    code: str  # the fault code; "" counts as "error"


class RawDeadLetter(NamedTuple):
    """A message that never became a record (unparseable, unmappable)."""

    source: str
    payload: bytes
    headers: Mapping[str, Any]
    reason: str
    code: str = "INTAKE"


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter entry: the original event (or broker message) and why it was refused."""

    id: int
    record_id: int | None
    source: str
    lane: str | None
    key: str | None
    event: bytes
    headers: dict[str, Any]
    reason: str
    status: int | None
    code: str
    attempts: int
    created_at: float
    dead_at: float
    record: bytes | None

    def as_dict(self, *, full: bool = False, limit: int = 200) -> dict[str, Any]:
        """A JSON-ready view; the event and record are text, cut to ``limit`` unless full."""

        def text(data: bytes | None) -> str | None:
            if data is None:
                return None
            shown = data.decode("utf-8", "replace")
            return shown if full or len(shown) <= limit else shown[:limit] + "..."

        return {
            "id": self.id,
            "code": self.code,
            "reason": self.reason,
            "status": self.status,
            "source": self.source,
            "lane": self.lane,
            "key": self.key,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "dead_at": self.dead_at,
            "event": text(self.event),
            "headers": self.headers,
            "record": text(self.record),
            "record_id": self.record_id,
        }
