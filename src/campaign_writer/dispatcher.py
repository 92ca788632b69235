"""Delivery: lease records from the queue, batch them, send them, settle each outcome.

Two tasks run under the dispatcher:

* the **feeder** leases records from the durable queue into the batcher, keeping at
  most ``lease_capacity`` records in memory (the rest stay on disk);
* the **dispatch loop** takes the next due batch, waits for an in-flight slot, and
  starts a send task. Every call goes through :class:`~campaign_writer.sender.
  CampaignClient`, hence through the one tenant throttle.

How each outcome is settled:

=============  =========================================================================
Ok             ack the records in the queue (an unkeyed Ingest collection whose UUIDs do
               not add up is resent one record per call instead)
Throttled      put the entries back (no attempt counted); the throttle pauses everyone
Retry          back off the lane (capped exponential, full jitter) and put them back;
               records older than ``retry.max_age`` are dead-lettered instead
AuthExpired    renew the credentials once and resend; a second refusal is a Retry
Reject         whose fault? (see :mod:`campaign_writer.evidence`) split the batch until
               the records at fault fail alone while others succeed, and dead-letter
               those; a fault every record meets pauses the lane and dead-letters nothing
Fatal          stop sending, keep everything queued, report in /readyz; probe again
               after a growing delay
=============  =========================================================================

The in-flight cap follows Little's law: about ``rate x latency`` calls are needed to
use the whole budget, so the cap tracks ``1.5 x rate x latency + 2``, bounded by
``sender.max_in_flight``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .auth import Authenticator
from .batcher import Batch, Batcher, Entry, Lane
from .codes import names_a_record
from .documents import fragments_document
from .errors import AuthError, QueueError, TransportError
from .evidence import Strike
from .logs import get_logger
from .metrics import Metrics
from .outcome import AuthExpired, Fatal, Ok, Outcome, Reject, Retry, Throttled
from .records import LaneId, Leased, RecordDeadLetter
from .sender import CampaignClient
from .soap import Param
from .wakeup import Wakeup

__all__ = ["Dispatcher", "InFlightLimit", "RetryPolicy"]

log = get_logger("dispatcher")

# How often the log says again that a lane is paused on a fault every record meets.
FAULT_REMINDER_S = 300.0
# Records sent alone, one after another, before refusals with no success in between
# are taken for the instance's fault (see Dispatcher._control).
CONTROLS = 2
# Strikes an entry keeps, newest last (voided ones included; see evidence.py).
MAX_STRIKES = 8
# The end of a stream: at most this many records left, all refused alone already, and
# the lane's last success no older than this (see Dispatcher._tail_control).
TAIL_RECORDS = 50
TAIL_WINDOW_S = 600.0


class RecordQueue(Protocol):
    """What delivery needs from :class:`campaign_writer.queue.DurableQueue`."""

    async def lease(self, limit: int) -> list[Leased]: ...
    async def ack(self, ids: list[int]) -> None: ...
    async def release(self, ids: list[int]) -> None: ...
    async def dead_letter(self, entries: Sequence[RecordDeadLetter]) -> None: ...
    async def wait_for_records(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_age_s: float = 3 * 3600.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    # A record sent alone is dead-lettered after this many refusals of its own, one
    # of them proven by records sent the same way succeeding (see evidence.py).
    record_failures: int = 3
    # Refused calls in a row, with no success, before a record alone must show that
    # the lane still works; if it fails too, the lane pauses.
    suspect_after: int = 4
    fault_pause_initial_s: float = 1.0
    fault_pause_max_s: float = 60.0

    def backoff(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(cap, initial x 2^(failures-1))]."""
        # The exponent is capped: 2 ** 1024 does not fit a float, and failures keep
        # counting through a long outage while the ceiling is long since max_backoff_s.
        doublings = min(max(0, failures - 1), 64)
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0**doublings)
        return random.uniform(0.0, ceiling)


class InFlightLimit:
    """A semaphore whose size follows rate x latency (Little's law)."""

    def __init__(self, maximum: int, on_change: Callable[[int], None] | None = None) -> None:
        self.maximum = max(1, maximum)
        self.limit = min(self.maximum, 2)
        self.current = 0
        self.latency_s: float | None = None
        self._changed = asyncio.Condition()
        self._on_change = on_change
        if on_change is not None:
            on_change(self.limit)

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.current < self.limit)
            self.current += 1

    async def release(self) -> None:
        async with self._changed:
            self.current -= 1
            self._changed.notify_all()

    async def observe(self, latency_s: float, rate: float) -> None:
        """Fold one call's latency in and resize: ceil(1.5 x rate x latency) + 2."""
        previous = self.latency_s
        self.latency_s = latency_s if previous is None else previous * 0.8 + latency_s * 0.2
        wanted = max(2, min(self.maximum, math.ceil(1.5 * rate * self.latency_s) + 2))
        if wanted != self.limit:
            async with self._changed:
                self.limit = wanted
                self._changed.notify_all()
            if self._on_change is not None:
                self._on_change(wanted)


class _Sent(NamedTuple):
    outcome: Outcome
    status: int | None
    method: str  # the method called (Write for a WriteCollection lane's single record)
    seq: int  # the call's send number in its lane (see evidence.py)


class _Refused(NamedTuple):
    """Campaign refused a call with a fault; whose fault it is remains to be seen."""

    fault: Reject
    status: int | None
    seq: int


class Dispatcher:
    """Owns the batcher and the send tasks; start() and close() are symmetric."""

    def __init__(
        self,
        queue: RecordQueue,
        client: CampaignClient,
        auth: Authenticator,
        batcher: Batcher,
        *,
        retry: RetryPolicy,
        max_in_flight: int,
        metrics: Metrics,
        lease_capacity: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.client = client
        self.auth = auth
        self.batcher = batcher
        self.retry = retry
        self.metrics = metrics
        self.lease_capacity = lease_capacity or max(5000, 8 * batcher.max_records)
        self._clock = clock
        self._wall = wall
        self.in_flight = InFlightLimit(max_in_flight, metrics.in_flight_limit.set)
        self._wake = Wakeup()
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: dict[asyncio.Task[None], Batch] = {}
        self._stopping = False
        self.fatal: str | None = None
        self._fatal_until = 0.0
        self._fatal_count = 0
        # Acks the queue could not write in a row, and until when sending waits for it.
        self._ack_failures = 0
        self._acks_wait_until = 0.0
        self.fallbacks: dict[LaneId, str] = {}
        self.crashed: BaseException | None = None
        self.totals = {
            "delivered": 0,
            "dead_lettered": 0,
            "retried": 0,
            "throttled": 0,
            "calls": 0,
            "bisections": 0,
            "fault_pauses": 0,
            "partial_collections": 0,
            "tail_controls": 0,
        }

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        for coroutine in (self._feed(), self._dispatch()):
            task = asyncio.create_task(coroutine)
            task.add_done_callback(self._supervise)
            self._tasks.add(task)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is not None:
            self.crashed = error
            log.critical("delivery task crashed", exc_info=error)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking batches, let sends finish within ``timeout_s``, release the rest."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        sending = list(self._sending)
        if sending:
            _, late = await asyncio.wait(sending, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        leftover = [i for batch in self._sending.values() for e in batch.entries for i in e.ids]
        for lane in self.batcher.lanes.values():
            leftover.extend(i for chain in lane.pending.values() for e in chain for i in e.ids)
        if leftover:
            try:
                await self.queue.release(leftover)
            except QueueError as exc:
                log.warning(
                    "could not release leases; they return on restart", extra={"error": str(exc)}
                )

    # --- feeding ---------------------------------------------------------------------

    async def _feed(self) -> None:
        merges_seen: dict[LaneId, int] = {}
        lane_ids: dict[str, LaneId] = {}
        while not self._stopping:
            room = self.lease_capacity - self.batcher.pending
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            leased = await self.queue.lease(min(room, 2 * self.batcher.max_records, 5000))
            if not leased:
                await self.queue.wait_for_records(1.0)
                continue
            now = self._clock()
            # Grouped by lane in one pass (order kept within each lane, which is all
            # per-key order needs), then handed to the batcher a lane at a time.
            by_lane: dict[str, list[Entry]] = {}
            for record_id, lane, key, record, _, created_at in leased:
                entries = by_lane.get(lane)
                if entries is None:
                    entries = by_lane[lane] = []
                entries.append(
                    Entry(key, record.decode(), [record_id], created_at, now, len(record))
                )
            sooner = False
            for lane, entries in by_lane.items():
                lane_id = lane_ids.get(lane)
                if lane_id is None:
                    lane_id = lane_ids[lane] = LaneId.parse(lane)
                    self._lane_series(lane_id)
                sooner = self.batcher.add_many(lane_id, entries) or sooner
            for lane_id, state in self.batcher.lanes.items():
                new = state.merges - merges_seen.get(lane_id, 0)
                if new:
                    merges_seen[lane_id] = state.merges
                    self.metrics.records_coalesced.labels(*lane_id).inc(new)
            if sooner:
                # Otherwise the dispatcher's timer already covers every lane's due time.
                self._wake.set()

    def _lane_series(self, lane_id: LaneId) -> None:
        """Export a lane's fault series from its first record on, at zero."""
        self.metrics.lane_fault_paused.labels(*lane_id).set(0)
        self.metrics.collection_fallbacks.labels(*lane_id)
        self.metrics.partial_collections.labels(*lane_id)

    # --- dispatching -----------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            now = self._clock()
            if self.fatal is not None and now < self._fatal_until:
                await self._sleep_or_wake(self._fatal_until - now)
                continue
            if self._ack_failures:
                if now < self._acks_wait_until:
                    await self._sleep_or_wake(self._acks_wait_until - now)
                    continue
                if self._sending:
                    await self._sleep_or_wake(None)  # a batch's end wakes us
                    continue
            batch, wake = self.batcher.next_batch(now)
            if batch is None:
                await self._sleep_or_wake(None if wake is None else max(0.0, wake - now))
                continue
            await self.in_flight.acquire()
            task = asyncio.create_task(self._deliver(batch))
            self._sending[task] = batch
            self.metrics.in_flight.set(self.in_flight.current)
            task.add_done_callback(self._sent)

    async def _sleep_or_wake(self, timeout: float | None) -> None:
        self._wake.clear()
        await self._wake.wait(timeout)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)
        release = asyncio.ensure_future(self.in_flight.release())
        release.add_done_callback(lambda _: self.metrics.in_flight.set(self.in_flight.current))
        self._room.set()
        self._wake.set()
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            self.crashed = task.exception()
            log.critical("send task crashed", exc_info=task.exception())

    async def _deliver(self, batch: Batch) -> None:
        entries = batch.entries
        outcome = await self._attempt(batch, entries, batch.collection)
        if not isinstance(outcome, _Refused):
            return
        if len(entries) > 1 or batch.collection:
            await self._isolate(batch, entries, batch.collection)
        else:
            await self._judge(batch, entries[0], outcome, sibling_ok=False)

    async def _call(self, batch: Batch, entries: list[Entry], collection: bool) -> _Sent | None:
        """One call for ``entries``, renewing credentials once; None if auth settled it."""
        method = batch.lane.id.method
        if not collection and method == "WriteCollection":
            method = "Write"
        # Fragments were rendered and checked at intake: building is only joining them.
        document = fragments_document(
            batch.lane.id.schema, [e.fragment for e in entries], collection=collection
        )
        params = [Param("doc", "document", document)]
        try:
            credentials = await self.auth.credentials()
        except AuthError as exc:
            self._go_fatal(batch, entries, f"authentication failed: {exc}")
            return None
        except TransportError as exc:
            self._back_off(batch, entries, f"authentication: {exc}")
            return None
        health = batch.lane.health
        seq = health.send()
        result = await self.client.call(method, params, credentials)
        self.totals["calls"] += 1
        outcome = result.outcome
        if isinstance(outcome, AuthExpired):
            try:
                credentials = await self.auth.renew(credentials)
            except AuthError as exc:
                self._go_fatal(batch, entries, f"re-authentication failed: {exc}")
                return None
            except TransportError as exc:
                self._back_off(batch, entries, f"re-authentication: {exc}")
                return None
            seq = health.send()
            result = await self.client.call(method, params, credentials)
            self.totals["calls"] += 1
            outcome = result.outcome
            if isinstance(outcome, AuthExpired):
                outcome = Retry(f"still refused after re-authentication: {outcome.reason}")
        await self.in_flight.observe(result.latency_s, self.client.throttle.rate())
        return _Sent(outcome, result.status, method, seq)

    async def _attempt(
        self, batch: Batch, entries: list[Entry], collection: bool
    ) -> Ok | _Refused | None:
        """Send ``entries`` in one call and settle it, unless Campaign refused it.

        Returns Ok when the entries are delivered, a refusal when Campaign refused the
        call (the caller still holds the entries and decides whose fault it is), or
        None when they were settled otherwise: put back, backed off, or fatal.
        """
        sent = await self._call(batch, entries, collection)
        if sent is None:
            return None
        outcome = sent.outcome
        if isinstance(outcome, Ok):
            delivered = await self._delivered(
                batch, entries, sent.method, collection, outcome, sent.seq
            )
            return outcome if delivered else None
        if isinstance(outcome, Throttled):
            self.totals["throttled"] += 1
            self.metrics.batches.labels("throttled").inc()
            self.batcher.put_back(batch, entries)
            return None
        if isinstance(outcome, Retry):
            horizon = self._wall() - self.retry.max_age_s
            expired = [e for e in entries if e.created_at < horizon]
            live = [e for e in entries if e.created_at >= horizon]
            self._back_off(batch, live, outcome.reason)
            if expired:
                reason = f"gave up after retry.max_age: {outcome.reason}"
                await self._dead_letter(batch, expired, reason, sent.status, "MAX-AGE")
            return None
        if isinstance(outcome, Fatal):
            self._go_fatal(batch, entries, outcome.reason)
            return None
        assert isinstance(outcome, Reject)
        self.metrics.batches.labels("rejected").inc()
        batch.lane.health.refused(collection, counts=not batch.retrial)
        self._collections_evidence(batch)
        return _Refused(outcome, sent.status, sent.seq)

    async def _isolate(self, batch: Batch, entries: list[Entry], collection: bool) -> None:
        """Split a refused call until the records at fault fail alone.

        Breadth first, both halves of a split at once, so that a bad record's sibling
        is sent beside it and proves records sent this way succeed. When refusals pile
        up with no success, one record alone is sent as a control; if it fails too, the
        fault is the instance's: the lane pauses and nothing is dead-lettered.
        """
        self.totals["bisections"] += 1
        lane = batch.lane
        health = lane.health
        work: deque[list[Entry]] = deque([entries])
        sibling_ok = False
        while work:
            if health.suspect or self._stopping or (collection and not lane.collections):
                # Paused, closing, or fallen back to one record per call: the rest waits.
                self.batcher.put_back(batch, [e for part in work for e in part])
                return
            part = work.popleft()
            if len(part) == 1:
                outcome = await self._attempt(batch, part, False)
                if isinstance(outcome, _Refused):
                    await self._judge(batch, part[0], outcome, sibling_ok=sibling_ok)
                sibling_ok = False
                continue
            if health.needs_control(self.retry.suspect_after):
                rest = await self._control(batch, part, work)
                if rest is None:
                    return
                part = rest
                if not part:
                    continue
                if len(part) == 1:
                    # The control, sent the same way beside it, succeeded.
                    work.appendleft(part)
                    sibling_ok = True
                    continue
            # Doubting collections, split off two records: a pair refused as a
            # collection whose records pass alone is the evidence that settles it.
            pair_test = collection and len(part) > 3 and health.doubts_collections()
            middle = 2 if pair_test else len(part) // 2
            halves = (part[:middle], part[middle:])
            outcomes = await asyncio.gather(
                *(self._attempt(batch, half, collection and len(half) > 1) for half in halves)
            )
            refused = [
                (half, outcome)
                for half, outcome in zip(halves, outcomes, strict=True)
                if isinstance(outcome, _Refused)
            ]
            # A half met a transient failure (it went back to the lane, backed off):
            # it proves nothing either way, and the other half is judged alone.
            if not refused and collection and len(part) == 2 and None not in outcomes:
                health.clean_pair()
                self._collections_evidence(batch)
            for half, outcome in refused:
                if len(half) > 1:
                    work.append(half)
                else:
                    await self._judge(
                        batch,
                        half[0],
                        outcome,
                        sibling_ok=len(refused) == 1 and None not in outcomes,
                    )

    async def _control(
        self, batch: Batch, part: list[Entry], work: deque[list[Entry]]
    ) -> list[Entry] | None:
        """Refusals piled up with no success: do records sent alone still pass?

        Up to :data:`CONTROLS` records of ``part`` are sent alone, those without strikes
        first. One passing proves the lane works (a control refused beside it is then a
        record failing alone while another succeeds); the rest of ``part`` is returned
        to go on splitting. All refused: the instance's fault; the lane pauses and
        everything goes back (None is returned, as when the isolation must stop). A
        transient failure of a control leaves the question open: everything goes back.
        """
        candidates = [e for e in part if not e.strikes] or list(part)
        refused: list[tuple[Entry, _Refused]] = []
        tried = candidates[:CONTROLS]
        for control in tried:
            part = [e for e in part if e is not control]
            outcome = await self._attempt(batch, [control], False)
            if isinstance(outcome, Ok):
                for entry, refusal in refused:
                    await self._judge(batch, entry, refusal, sibling_ok=True)
                return part
            if outcome is not None:
                refused.append((control, outcome))
            # None: a transient failure; the control went back to the lane.
        if len(refused) < len(tried):
            # Not every control was refused: no verdict on the lane this time.
            self.batcher.put_back(
                batch, [e for e, _ in refused] + part + [e for p in work for e in p]
            )
            return None
        self._suspect(batch, refused[-1][1].fault)
        for entry, refusal in refused:
            self._mark(batch, entry, refusal)
        self.batcher.put_back(batch, [e for e, _ in refused] + part + [e for p in work for e in p])
        return None

    async def _tail_control(self, batch: Batch, entry: Entry, refusal: Reject) -> bool:
        """Whether a suspect lane is down to a few refused records while Campaign works.

        At the end of a stream no record is left to compare a bad one with. When every
        record the lane holds was already refused alone (at most :data:`TAIL_RECORDS`),
        the fault's words name a record (a duplicate key, a violated constraint, a value
        too long: never a database that is down), the lane succeeded within
        :data:`TAIL_WINDOW_S`, and a read of the lane's own schema
        (``GetEntityIfMoreRecent``, as Adobe's SDK makes before any call) succeeds,
        the refusal counts as proven. A masked or unknown fault never does.
        """
        lane = batch.lane
        health = lane.health
        if not names_a_record(refusal.reason) or health.last_success_at is None:
            return False
        if self._clock() - health.last_success_at > TAIL_WINDOW_S:
            return False
        heads = [entry, *(chain[0] for chain in lane.pending.values())]
        if len(heads) > TAIL_RECORDS or not all(e.strikes for e in heads):
            return False
        try:
            credentials = await self.auth.credentials()
        except (AuthError, TransportError):
            return False
        params = [
            Param("pk", "string", f"xtk:schema|{lane.id.schema}"),
            Param("md5", "string", ""),
            Param("mustExist", "boolean", "false"),
        ]
        result = await self.client.call("GetEntityIfMoreRecent", params, credentials)
        self.totals["calls"] += 1
        self.totals["tail_controls"] += 1
        if not isinstance(result.outcome, Ok):
            return False
        health.pauses = 0  # Campaign answers: the next pause starts short again
        return True

    @staticmethod
    def _mark(batch: Batch, entry: Entry, refused: _Refused) -> None:
        """A refusal while the lane is suspect: a strike that counts for nothing (it is
        voided), yet makes the record go alone, so it is judged beside others later."""
        refusal = refused.fault
        data = refusal.scope == "record"
        mark = Strike(refused.seq, False, refusal.reason, refusal.code, data, void=True)
        strikes = (*entry.strikes, mark)
        entry.strikes = strikes[-MAX_STRIKES:]

    async def _judge(
        self, batch: Batch, entry: Entry, refused: _Refused, *, sibling_ok: bool
    ) -> None:
        """A record was refused alone: a strike against it, or evidence against the lane."""
        lane = batch.lane
        health = lane.health
        refusal = refused.fault
        if health.suspect and batch.probe and await self._tail_control(batch, entry, refusal):
            # Only records already refused are left, their faults name a record, and
            # Campaign answers: they fail alone while Campaign works. (At most
            # TAIL_RECORDS records, each until its verdict: no pause needed.)
            sibling_ok = True
        elif health.suspect:
            # No verdict while the lane is suspect, but the record is marked: it goes
            # alone from now on, so that it is judged beside others once the lane works.
            self._mark(batch, entry, refused)
            self.batcher.put_back(batch, [entry], rotate=batch.probe)
            if batch.probe:
                self._pause(lane)
            return
        if not sibling_ok and health.needs_control(self.retry.suspect_after):
            # Refused calls in a row, this one too, and nothing beside it succeeded:
            # the instance's fault, not this record's (a record proven bad before is
            # retried without end otherwise).
            self._suspect(batch, refusal)
            self._mark(batch, entry, refused)
            self.batcher.put_back(batch, [entry])
            return
        verdict = health.judge(
            entry.strikes,
            refusal.reason,
            refused.seq,
            sibling_ok,
            self.retry.record_failures,
            code=refusal.code,
            data=refusal.scope == "record",
        )
        entry.strikes = verdict.history[-MAX_STRIKES:]
        if not verdict.dead:
            self.batcher.put_back(batch, [entry])  # at the front: tried alone again soon
            return
        reason = (
            f"refused alone {len(verdict.strikes)} times while records sent the same way"
            f" succeeded: {' | '.join(verdict.faults)}"
        )
        await self._dead_letter(batch, [entry], reason, refused.status, verdict.code)

    def _suspect(self, batch: Batch, refusal: Reject) -> None:
        """Every record of the lane meets the fault: pause the lane, keep everything."""
        lane = batch.lane
        health = lane.health
        now = self._clock()
        if health.turn_suspect(now, refusal.reason):
            health.last_told = now
            self.metrics.lane_fault_paused.labels(*lane.id).set(1)
            log.warning(
                "every record of this lane meets the same fault, so it is Campaign's, not"
                " the records': lane paused, nothing dead-lettered, everything kept queued",
                extra={
                    "schema": lane.id.schema,
                    "method": lane.id.method,
                    "refused_in_a_row": health.streak,
                    "fault": refusal.reason[:500],
                },
            )
        self._pause(lane)

    def _pause(self, lane: Lane) -> None:
        health = lane.health
        initial, cap = self.retry.fault_pause_initial_s, self.retry.fault_pause_max_s
        delay = health.next_pause(initial, cap)
        now = self._clock()
        lane.not_before = max(lane.not_before, now + delay)
        self.totals["fault_pauses"] += 1
        if health.suspect_since is not None and now - health.last_told >= FAULT_REMINDER_S:
            health.last_told = now
            log.warning(
                "lane still paused: Campaign keeps refusing every record",
                extra={
                    "schema": lane.id.schema,
                    "method": lane.id.method,
                    "paused_for_s": round(now - health.suspect_since),
                    "fault": health.reason[:500],
                },
            )

    def _collections_evidence(self, batch: Batch) -> None:
        lane = batch.lane
        if lane.mode == "auto" and lane.collections and lane.health.collections_refused():
            self._fall_back(batch, "collection documents refused while records sent alone pass")

    def _fall_back(self, batch: Batch, reason: str) -> None:
        lane = batch.lane
        if not lane.collections:
            return
        lane.collections = False
        self.fallbacks[lane.id] = reason
        self.metrics.collection_fallbacks.labels(*lane.id).inc()
        log.warning(
            "Campaign does not take collection documents on this lane; sending one record per call",
            extra={"schema": lane.id.schema, "method": lane.id.method, "reason": reason},
        )

    # --- settling --------------------------------------------------------------------

    async def _delivered(
        self,
        batch: Batch,
        entries: list[Entry],
        method: str,
        collection: bool,
        outcome: Ok,
        seq: int,
    ) -> bool:
        """Ack what Campaign took; False when it was put back instead (nothing acked)."""
        lane = batch.lane
        partial = self._partial_collection(method, entries, collection, outcome)
        ended = lane.health.succeeded(collection, seq, self._clock())
        if ended is not None:
            self.metrics.lane_fault_paused.labels(*lane.id).set(0)
            log.warning(
                "Campaign accepts this lane's records again; lane resumed",
                extra={
                    "schema": lane.id.schema,
                    "method": lane.id.method,
                    "paused_for_s": round(self._clock() - ended, 1),
                },
            )
        if partial is not None:
            # Campaign took part of the collection, and nothing says which part: every
            # record goes back and is sent alone (what was stored is stored twice).
            self.totals["partial_collections"] += 1
            self.metrics.partial_collections.labels(*lane.id).inc()
            log.error(
                "Campaign stored only part of a collection; sending one record per call"
                " on this lane and resending the whole batch",
                extra={"schema": lane.id.schema, "method": method, "detail": partial},
            )
            self._fall_back(batch, partial)
            self.batcher.put_back(batch, entries)
            return False
        self._collections_evidence(batch)
        ids = [i for e in entries for i in e.ids]
        try:
            await self.queue.ack(ids)
        except QueueError as exc:
            # Campaign has the records; without the ack they will be sent again
            # (at-least-once), which keyed upserts absorb. Backing off keeps a queue that
            # cannot commit (a full disk) from resending them at the full TPS budget.
            log.error("ack failed; records will be delivered again", extra={"error": str(exc)})
            # The queue's fault, not the lane's: every lane waits, then one batch at a
            # time goes until an ack is written again.
            self._ack_failures += 1
            self._acks_wait_until = self._clock() + self.retry.backoff(self._ack_failures)
            self._back_off(batch, entries, f"ack failed: {exc}")
            return False
        self._ack_failures = 0
        lane.failures = 0
        if self.fatal is not None:
            log.warning("Campaign accepts calls again; leaving the fatal state")
            self.fatal, self._fatal_count = None, 0
        self.batcher.finished(batch, entries)
        self.totals["delivered"] += len(ids)
        self.metrics.records_delivered.labels(lane.id.schema, method).inc(len(ids))
        self.metrics.batches.labels("ok").inc()
        wall = self._wall()
        # One value per record; records merged into an entry share its oldest intake time.
        self.metrics.end_to_end_latency.observe_many(
            [max(0.0, wall - e.created_at) for e in entries for _ in e.ids]
        )
        return True

    @staticmethod
    def _partial_collection(
        method: str, entries: list[Entry], collection: bool, outcome: Ok
    ) -> str | None:
        """Why an unkeyed Ingest collection was not wholly stored, or None.

        Unkeyed Ingest returns one UUID per stored record; keyed Ingest, IngestExt and
        Write return nothing to check (see the README on collections).
        """
        if method != "Ingest" or not collection or len(entries) < 2:
            return None
        if any(' _key="' in entry.fragment for entry in entries):
            return None
        answer = outcome.response.output("pstrSUuids")
        text = answer.text.strip() if answer is not None else ""
        returned = len([part for part in text.split(",") if part.strip()]) if text else 0
        if returned == len(entries):
            return None
        return f"Ingest returned {returned} UUIDs for a collection of {len(entries)} records"

    async def _dead_letter(
        self, batch: Batch, entries: list[Entry], reason: str, status: int | None, code: str
    ) -> int:
        rows = [RecordDeadLetter(i, reason, status, code) for e in entries for i in e.ids]
        await self.queue.dead_letter(rows)
        self.batcher.finished(batch, entries)
        self.totals["dead_lettered"] += len(rows)
        self.metrics.records_dead_lettered.labels(code or "error").inc(len(rows))
        log.warning(
            "records dead-lettered",
            extra={"count": len(rows), "code": code, "reason": reason[:300]},
        )
        return len(rows)

    def _back_off(self, batch: Batch, entries: list[Entry], reason: str) -> None:
        lane = batch.lane
        lane.failures += 1
        delay = self.retry.backoff(lane.failures)
        lane.not_before = max(lane.not_before, self._clock() + delay)
        self.totals["retried"] += 1
        self.metrics.retries.labels(reason.split(":")[0][:40]).inc()
        self.metrics.batches.labels("retry").inc()
        log.info(
            "transient failure; retrying",
            extra={"reason": reason[:300], "backoff_s": round(delay, 3)},
        )
        self.batcher.put_back(batch, entries)

    def _go_fatal(self, batch: Batch, entries: list[Entry], reason: str) -> None:
        self._fatal_count += 1
        delay = min(900.0, 30.0 * 2 ** (self._fatal_count - 1))
        self._fatal_until = self._clock() + delay
        if self.fatal is None:
            log.error(
                "Campaign refuses every call; delivery stopped, queue kept",
                extra={"reason": reason, "probe_in_s": delay},
            )
        self.fatal = reason
        self.metrics.batches.labels("fatal").inc()
        self.batcher.put_back(batch, entries)

    # --- introspection ---------------------------------------------------------------

    def fault_pauses(self) -> dict[str, Any]:
        """Lanes paused on a fault every record meets, and whether every busy lane is."""
        now = self._clock()
        paused = {}
        for lane_id, lane in self.batcher.lanes.items():
            health = lane.health
            if health.suspect_since is None:
                continue
            paused[f"{lane_id.schema}#{lane_id.method}"] = {
                "paused_for_s": round(now - health.suspect_since, 1),
                "next_probe_in_s": round(max(0.0, lane.not_before - now), 1),
                "probes": health.pauses,
                "fault": health.reason[:500],
            }
        # Instance-wide: every lane with records to send is paused on a fault.
        waiting = [lane for lane in self.batcher.lanes.values() if lane.count or lane.held]
        return {
            "paused_lanes": paused,
            "instance_wide": bool(waiting) and all(lane.health.suspect for lane in waiting),
        }

    def stats(self) -> dict[str, Any]:
        throttle = self.client.throttle
        return {
            "fatal": self.fatal,
            "faults": self.fault_pauses(),
            "in_flight": self.in_flight.current,
            "in_flight_limit": self.in_flight.limit,
            "latency_ewma_s": self.in_flight.latency_s,
            "rate_limit": round(throttle.rate(), 3),
            "paused_for_s": round(throttle.paused_for, 3),
            "records_in_memory": self.batcher.pending,
            "totals": dict(self.totals),
            "lanes": {
                f"{lane_id.schema}#{lane_id.method}": {
                    "pending_entries": lane.count,
                    "held_keys": len(lane.held),
                    "collections": lane.collections,
                    "collection_fallback": self.fallbacks.get(lane_id),
                    "merges": lane.merges,
                    "failures": lane.failures,
                    "refused_in_a_row": lane.health.streak,
                    # Records refused alone, waiting to be tried alone again.
                    "suspected_records": sum(
                        1 for chain in lane.pending.values() if chain[0].strikes
                    ),
                    "paused_on_fault": lane.health.suspect,
                }
                for lane_id, lane in self.batcher.lanes.items()
            },
        }
