"""Coalescing lanes: records in, staging batches out, per-key order kept.

One :class:`Lane` per (schema, method). Within a lane, records with the same key
merge into one pending entry: later attributes win, and a delete replaces the writes
before it (a write after a delete cannot merge and waits behind it). Entries keep
the queue ids of every record merged into them, so they are acknowledged or
dead-lettered together.

Key affinity: while a batch holding key K is in flight, K is *held*. New records for
K keep merging into its pending entry but are not sent until the batch ends, so an
older write can never land after a newer one. Entries of other keys flow past it.
A failed entry goes back to the *front* of its lane and newer records for its key
merge on top of it, which keeps the order through retries too.

A lane flushes when it holds ``max_records`` entries, ``max_bytes`` of them, or its
oldest entry has lingered ``linger_s``. Everything here is synchronous and
clock-free; :mod:`campaign_writer.dispatcher` drives it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .campaign.documents import StagingRecord, parse_fragment, render_fragment
from .evidence import LaneHealth, Strike
from .metrics import CounterFamily, Tally
from .records import LaneId

__all__ = ["Batch", "Batcher", "Entry", "Lane", "LaneId", "merge_operations"]

CollectionMode = Literal["auto", "always", "never"]

# How two write operations on one key combine, older first.
_COMBINED: dict[tuple[str, str], str] = {
    ("insert", "update"): "insert",
    ("insert", "insertOrUpdate"): "insertOrUpdate",
    ("update", "insert"): "insertOrUpdate",
    ("update", "insertOrUpdate"): "insertOrUpdate",
    ("insertOrUpdate", "update"): "insertOrUpdate",
    ("insertOrUpdate", "insert"): "insertOrUpdate",
}


def merge_operations(older: str | None, newer: str | None) -> tuple[bool, str | None]:
    """Whether two operations on one key can merge, and the merged operation."""
    if newer == "delete":
        return True, "delete"
    if older == "delete":
        return False, None
    if older == newer:
        return True, newer
    if older is not None and newer is not None and (older, newer) in _COMBINED:
        return True, _COMBINED[(older, newer)]
    return False, None


@dataclass(slots=True)
class Entry:
    """One pending entity: possibly several records merged, with all their queue ids.

    It holds the record's rendered fragment (see :mod:`campaign_writer.campaign.documents`);
    attributes are parsed back only when a newer record of the same key merges in.
    """

    key: str | None
    fragment: str
    ids: list[int]
    created_at: float  # wall-clock intake time of the oldest record merged in
    arrived: float  # batcher clock when the oldest record reached the lane
    size: int
    # Failures of this entry sent alone (see campaign_writer.evidence). An entry with
    # strikes is sent alone and merges with nothing, so a verdict is about it only.
    strikes: tuple[Strike, ...] = ()
    # Wall-clock intake time of the newest record merged in; 0 until a merge (then
    # ``created_at``, the only record's time, is also the newest).
    merged_newest_at: float = 0.0

    @property
    def newest_at(self) -> float:
        """Wall-clock intake time of the newest record this entry holds."""
        return self.merged_newest_at or self.created_at

    @classmethod
    def of(
        cls,
        key: str | None,
        record: StagingRecord,
        ids: list[int],
        created_at: float,
        arrived: float,
    ) -> Entry:
        fragment = render_fragment(record.attrs, record.operation, record.key)
        return cls(key, fragment, ids, created_at, arrived, len(fragment))

    def record(self) -> StagingRecord:
        return parse_fragment(self.fragment)

    def absorb(self, newer: Entry) -> bool:
        """Merge ``newer`` (same key, later) into this entry; False if they cannot merge."""
        if self.strikes or newer.strikes:
            return False
        mine = parse_fragment(self.fragment)
        theirs = parse_fragment(newer.fragment)
        ok, operation = merge_operations(mine.operation, theirs.operation)
        if not ok:
            return False
        attrs = dict(theirs.attrs) if operation == "delete" else {**mine.attrs, **theirs.attrs}
        self.fragment = render_fragment(attrs, operation, theirs.key or mine.key)
        self.ids.extend(newer.ids)
        self.size = len(self.fragment)
        self.merged_newest_at = max(self.newest_at, newer.newest_at)
        return True


@dataclass(eq=False)
class Batch:
    """Entries of one lane sent in one call; ``collection`` says which document shape."""

    lane: Lane
    entries: list[Entry]
    collection: bool
    probe: bool = False  # one record sent to see whether a suspect lane works again
    # A struck record tried again after a success proved its last strike: its refusal
    # is expected, and says nothing about the instance (it does not grow the streak).
    retrial: bool = False

    @property
    def record_count(self) -> int:
        return sum(len(e.ids) for e in self.entries)


@dataclass(eq=False)
class Lane:
    """Pending entries of one (schema, method), in order, with held keys."""

    id: LaneId
    mode: CollectionMode = "auto"
    collections: bool = True
    pending: OrderedDict[Hashable, list[Entry]] = field(default_factory=OrderedDict)
    held: set[Hashable] = field(default_factory=set)
    count: int = 0
    bytes: int = 0
    not_before: float = 0.0  # lane-level backoff after a transient failure
    failures: int = 0
    blocked: bool = False  # every pending key is held: wait for a release
    merges: Tally = field(default_factory=Tally)  # entries merged into an earlier one
    health: LaneHealth = field(default_factory=LaneHealth)
    # Intake (enqueue) time of the newest record Campaign acknowledged, wall clock;
    # events carry no event time the writer knows of, so enqueue time is what it has.
    newest_delivered_at: float | None = None
    probing: bool = False  # a probe of this suspect lane is under way
    fallback: str | None = None  # why collections stopped (see Batcher.fall_back)

    def __post_init__(self) -> None:
        self.collections = self.mode != "never"

    @property
    def oldest_arrival(self) -> float | None:
        for chain in self.pending.values():
            return chain[0].arrived
        return None

    def _slot(self, entry: Entry) -> Hashable:
        return entry.key if entry.key is not None else ("#id", entry.ids[0])

    def add(self, entry: Entry) -> None:
        """Append a new record's entry, merging it into its key's last pending entry."""
        self.add_many((entry,))

    def add_many(self, entries: Iterable[Entry]) -> None:
        """:meth:`add` for each entry in order, in one loop (the feeder's hot path)."""
        pending = self.pending
        held = self.held
        added = size = merged = 0
        for entry in entries:
            key = entry.key
            slot: Hashable = key if key is not None else ("#id", entry.ids[0])
            chain = pending.get(slot)
            if chain is None:
                pending[slot] = [entry]
            elif chain[-1].absorb(entry):
                merged += 1
                continue
            else:
                chain.append(entry)
            added += 1
            size += entry.size
            if slot not in held:
                self.blocked = False
        self.count += added
        if merged:
            self.merges.value += merged
        self.bytes += size

    def put_back(self, entries: Iterable[Entry], *, rotate: bool = False) -> None:
        """Return unsent or failed entries before newer ones of their key.

        Their keys go to the front of the lane, or with ``rotate`` to the back, so that
        a suspect lane's probes try other records next.
        """
        for entry in reversed(list(entries)):
            slot = self._slot(entry)
            chain = self.pending.get(slot)
            if chain is None:
                self.pending[slot] = [entry]
            else:
                newer = chain[0]
                if entry.absorb(newer):
                    chain[0] = entry
                    self.count -= 1
                    self.bytes -= newer.size
                else:
                    chain.insert(0, entry)
            self.pending.move_to_end(slot, last=rotate)
            self.count += 1
            self.bytes += entry.size
        self.blocked = False

    def waiting(self, entry: Entry) -> bool:
        """Whether a struck entry waits for evidence: no call of the lane sent after its
        last strike has succeeded yet, so trying it again now would prove nothing."""
        return bool(entry.strikes) and entry.strikes[-1].seq >= self.health.proof

    def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        """Up to ``max_records`` / ``max_bytes`` of sendable entries; their keys become held.

        A suspect lane gives one entry at a time, and an entry with strikes goes alone.
        A struck entry waits (see :meth:`waiting`) while other entries can go; when
        nothing else is left and nothing of the lane is in flight, it goes anyway.
        """
        suspect = self.health.suspect
        limit = max_records if self.collections and not suspect else 1
        chosen: list[Hashable] = []
        size = 0
        first_waiting: Hashable | None = None
        if suspect:
            # A probe: a record not suspected itself says more about the lane.
            for slot, chain in self.pending.items():
                if slot not in self.held and not chain[0].strikes:
                    chosen.append(slot)
                    size = chain[0].size
                    break
        for slot, chain in self.pending.items() if not chosen else ():
            if slot in self.held:
                continue
            if chain[0].strikes:
                if chosen:
                    continue
                if not suspect and self.waiting(chain[0]):
                    if first_waiting is None:
                        first_waiting = slot
                    continue
                limit = 1
            entry_size = chain[0].size
            if chosen and size + entry_size > max_bytes:
                break
            chosen.append(slot)
            size += entry_size
            if len(chosen) >= limit:
                break
        if not chosen and first_waiting is not None and not self.held:
            # Only struck records are left: no other call will bring evidence. The
            # lane's refusal streak (and so its pauses) bounds these tries.
            chosen.append(first_waiting)
            size = self.pending[first_waiting][0].size
        if not chosen:
            self.blocked = bool(self.pending)
            return []
        entries = []
        for slot in chosen:
            chain = self.pending[slot]
            entry = chain.pop(0)
            if not chain:
                del self.pending[slot]
            self.held.add(slot)
            entries.append(entry)
        self.count -= len(entries)
        self.bytes -= size
        return entries

    def release(self, entries: Iterable[Entry]) -> None:
        """The batch holding these entries has ended: their keys may be sent again."""
        for entry in entries:
            self.held.discard(self._slot(entry))
        self.blocked = False

    def newest_delivered_age(self, now: float) -> float | None:
        """Seconds from the intake of the newest record delivered to ``now`` (wall clock)."""
        at = self.newest_delivered_at
        return None if at is None else max(0.0, now - at)

    def stats(self, now: float | None = None) -> dict[str, object]:
        """The lane's part of ``/v1/stats``; ``now`` (wall clock) dates the delivery age."""
        age = self.newest_delivered_age(now) if now is not None else None
        return {
            "newest_delivered_age_s": None if age is None else round(age, 3),
            "pending_entries": self.count,
            "held_keys": len(self.held),
            "collections": self.collections,
            "collection_fallback": self.fallback,
            "merges": self.merges.value,
            "failures": self.failures,
            "refused_in_a_row": self.health.streak,
            # Records refused alone, waiting to be tried alone again.
            "suspected_records": sum(1 for chain in self.pending.values() if chain[0].strikes),
            "paused_on_fault": self.health.suspect,
        }

    def ready_at(self, linger_s: float, max_records: int, max_bytes: int) -> float | None:
        """When this lane should flush (batcher clock), or None if it has nothing to send."""
        oldest = self.oldest_arrival
        if oldest is None or self.blocked or self.probing:
            return None
        full = self.count >= (max_records if self.collections else 1) or self.bytes >= max_bytes
        due = self.not_before if full else max(self.not_before, oldest + linger_s)
        return due


class Batcher:
    """All lanes of one writer, with the flush policy; not thread-safe, not async."""

    def __init__(
        self,
        *,
        max_records: int,
        max_bytes: int,
        linger_s: float,
        modes: dict[LaneId, CollectionMode] | None = None,
        merges: CounterFamily | None = None,
        method_ready: Callable[[str], float] | None = None,
    ) -> None:
        """``merges``, when given, keeps each lane's merge count (by schema and method):
        the daemon passes ``records_coalesced``, so the lane's stats and Prometheus read
        one count. ``method_ready``, when given, says when a method's own budget takes its
        next call (the throttle's ``ready_at``, on the batcher's clock): a lane is not due
        before then."""
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.modes = dict(modes or {})
        self._merges = merges
        self._method_ready = method_ready
        self.lanes: dict[LaneId, Lane] = {}
        self.pending = 0  # records (not entries) held in memory, for the lease budget

    def lane(self, lane_id: LaneId) -> Lane:
        lane = self.lanes.get(lane_id)
        if lane is None:
            merges = self._merges.labels(*lane_id) if self._merges is not None else Tally()
            lane = self.lanes[lane_id] = Lane(
                lane_id, self.modes.get(lane_id, "auto"), merges=merges
            )
        return lane

    def add(self, lane_id: LaneId, entry: Entry) -> None:
        self.lane(lane_id).add(entry)
        self.pending += len(entry.ids)

    def add_many(self, lane_id: LaneId, entries: list[Entry]) -> bool:
        """Add entries of one lane, in order: the same as :meth:`add` for each.

        True when the lane became due sooner than before (it was empty or blocked, or
        is now full): only then does a dispatcher sleeping until the next due time
        need waking.
        """
        lane = self.lane(lane_id)
        before = lane.ready_at(self.linger_s, self.max_records, self.max_bytes)
        # Counted first: merging extends an earlier entry's ids, which may be in this list.
        self.pending += sum([len(entry.ids) for entry in entries])
        lane.add_many(entries)
        after = lane.ready_at(self.linger_s, self.max_records, self.max_bytes)
        return after is not None and (before is None or after < before)

    def next_batch(self, now: float) -> tuple[Batch | None, float | None]:
        """The batch to send now, or None and the time the next lane becomes due."""
        best: Lane | None = None
        best_due = None
        wake = None
        for lane in self.lanes.values():
            due = lane.ready_at(self.linger_s, self.max_records, self.max_bytes)
            if due is None:
                continue
            if self._method_ready is not None:
                due = max(due, self._method_ready(lane.id.method))
            if due > now:
                wake = due if wake is None else min(wake, due)
                continue
            oldest = lane.oldest_arrival
            if best is None or (oldest is not None and best_due is not None and oldest < best_due):
                best, best_due = lane, oldest
        if best is None:
            return None, wake
        entries = best.take(self.max_records, self.max_bytes)
        if not entries:
            return self.next_batch(now)  # that lane was blocked after all; look again
        probe = best.health.suspect
        best.probing = probe
        alone = probe or bool(entries[0].strikes)
        retrial = not probe and bool(entries[0].strikes) and not best.waiting(entries[0])
        batch = Batch(best, entries, best.collections and not alone, probe, retrial)
        return batch, None

    def finished(self, batch: Batch, entries: Iterable[Entry]) -> None:
        """Entries of ``batch`` reached a final state (acked or dead-lettered)."""
        entries = list(entries)
        self.pending -= sum(len(e.ids) for e in entries)
        self._ended(batch, entries)

    def put_back(self, batch: Batch, entries: Iterable[Entry], *, rotate: bool = False) -> None:
        """Entries of ``batch`` go back to their lane, before newer ones of their keys."""
        entries = list(entries)
        self._ended(batch, entries)
        batch.lane.put_back(entries, rotate=rotate)

    def delivered(self, batch: Batch, entries: Iterable[Entry]) -> None:
        """Entries of ``batch`` were acked: the lane's transient failures are over."""
        entries = list(entries)
        lane = batch.lane
        lane.failures = 0
        if entries:
            newest = max(e.newest_at for e in entries)
            if lane.newest_delivered_at is None or newest > lane.newest_delivered_at:
                lane.newest_delivered_at = newest
        self.finished(batch, entries)

    def back_off(
        self,
        batch: Batch,
        entries: Iterable[Entry],
        now: float,
        delay_for: Callable[[int], float],
    ) -> float:
        """A transient failure: one more for the lane, which waits ``delay_for(failures)``
        seconds from ``now``; the entries go back. Returns the delay."""
        lane = batch.lane
        lane.failures += 1
        delay = delay_for(lane.failures)
        self.pause(lane, now + delay)
        self.put_back(batch, entries)
        return delay

    @staticmethod
    def pause(lane: Lane, until: float) -> None:
        """Send nothing of ``lane`` before ``until`` (batcher clock); a later wait stays."""
        lane.not_before = max(lane.not_before, until)

    @staticmethod
    def fall_back(lane: Lane, reason: str) -> bool:
        """Send one record per call on ``lane`` from now on; False if it already did."""
        if not lane.collections:
            return False
        lane.collections = False
        lane.fallback = reason
        return True

    def unsent_ids(self) -> list[int]:
        """Queue ids of every entry waiting in a lane (not those of batches in flight)."""
        return [
            i
            for lane in self.lanes.values()
            for c in lane.pending.values()
            for e in c
            for i in e.ids
        ]

    def __repr__(self) -> str:
        return f"Batcher(lanes={len(self.lanes)}, pending={self.pending})"

    @staticmethod
    def _ended(batch: Batch, entries: list[Entry]) -> None:
        batch.lane.release(entries)
        if batch.probe:
            batch.lane.probing = False
