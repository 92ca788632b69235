"""The call log: one entry per SOAP call, in memory and optionally as NDJSON.

Each entry is a JSON object::

    {"seq": 17, "t": 1732350000.123456, "method": "Ingest", "schema": "dem:sampleTableStg",
     "records": 1000, "status": 200, "latency_ms": 12.873, "outcome": "ok",
     "committed_at": 1732350000.136221}

* ``seq``: 1, 2, 3... in order of completion; ``GET /__sim/calls?since=N`` returns
  the entries after ``N``;
* ``t``: arrival time, unix seconds (float);
* ``method``: from the body, or from SOAPAction for calls refused before parsing
  (``""`` when unknown); ``schema``: the document's xtkschema for writes, else ``""``;
* ``records``: records in the document (0 when not read, as for a 429);
* ``status``: HTTP status, ``0`` when the connection was dropped with no answer;
* ``latency_ms``: arrival to answer (or drop), milliseconds;
* ``outcome``: ``ok``, ``throttled``, ``overloaded``, ``outage``, ``fault:<kind>``
  for a SOAP fault (``data``, ``schema``, ``collection``, ``duplicate``,
  ``session_expired``, ``access``, ``login``, ``unknown_method``, ``malformed``), or
  ``inject:<kind>``
  for an injected failure (see :mod:`.faults`);
* ``committed_at``: unix time the call's records were committed, or ``null``.

Every stored record also carries ``__committed_at`` (see :mod:`.tables`).
"""

from __future__ import annotations

from collections import deque
from typing import IO, Any

import orjson

__all__ = ["CallLog"]


class CallLog:
    """Keeps the last ``memory`` entries; appends each to ``path`` when given."""

    def __init__(self, memory: int, path: str | None = None) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=memory)
        self._seq = 0
        self._file: IO[bytes] | None = open(path, "ab") if path else None  # noqa: SIM115

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(
        self,
        *,
        t: float,
        method: str,
        schema: str,
        records: int,
        status: int,
        latency_s: float,
        outcome: str,
        committed_at: float | None,
    ) -> None:
        self._seq += 1
        entry = {
            "seq": self._seq,
            "t": t,
            "method": method,
            "schema": schema,
            "records": records,
            "status": status,
            "latency_ms": round(latency_s * 1000.0, 3),
            "outcome": outcome,
            "committed_at": committed_at,
        }
        self._entries.append(entry)
        if self._file is not None:
            # One write and flush per call: a crashed simulator loses at most the line
            # being written, and readers tailing the file see calls as they end.
            self._file.write(orjson.dumps(entry) + b"\n")
            self._file.flush()

    def since(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Entries with ``seq`` greater than ``seq``, oldest first, at most ``limit``."""
        entries = self._entries
        if not entries or seq >= self._seq:
            return []
        first = entries[0]["seq"]
        start = max(0, seq - first + 1)
        return [entries[i] for i in range(start, min(len(entries), start + limit))]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
