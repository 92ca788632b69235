"""Delivery: lease records from the queue, batch them, send them, settle each outcome.

Two tasks run under the dispatcher:

* the **feeder** leases records from the durable queue into the batcher, keeping at
  most ``lease_capacity`` records in memory (the rest stay on disk);
* the **dispatch loop** takes the next due batch, waits for an in-flight slot, and
  starts a send task. Every call goes through :class:`~campaign_writer.sender.
  CampaignClient`, hence through the one tenant throttle.

How each outcome is settled:

=============  =========================================================================
Ok             ack the records in the queue
Throttled      put the entries back (no attempt counted); the throttle pauses everyone
Retry          back off the lane (capped exponential, full jitter) and put them back;
               records older than ``retry.max_age`` are dead-lettered instead
AuthExpired    renew the credentials once and resend; a second refusal is a Retry
Reject record  split the batch in halves until the bad records are alone; deliver the
               good ones, dead-letter the bad ones with the fault text
Reject batch   the whole lane's schema is refused: dead-letter the batch
Reject coll.   the method refuses collection documents: the lane falls back to one
               record per call (``collection = "auto"``), reported once
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .auth import Authenticator
from .batcher import Batch, Batcher, Entry, LaneId
from .documents import fragments_document
from .errors import AuthError, QueueError, TransportError
from .logs import get_logger
from .metrics import Metrics
from .outcome import AuthExpired, Fatal, Ok, Reject, Retry, Throttled
from .sender import CampaignClient
from .soap import Param
from .wakeup import Wakeup

__all__ = ["Dispatcher", "InFlightLimit", "RetryPolicy"]

log = get_logger("dispatcher")


class LeasedRecord(Protocol):
    id: int
    lane: Any
    key: str | None
    record: bytes
    created_at: float


class RecordQueue(Protocol):
    """What delivery needs from :class:`campaign_writer.queue.DurableQueue`."""

    async def lease(self, limit: int) -> list[Any]: ...
    async def ack(self, ids: list[int]) -> None: ...
    async def release(self, ids: list[int]) -> None: ...
    async def dead_letter(self, entries: list[tuple[int, str, int | None, str]]) -> None: ...
    async def wait_for_records(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_age_s: float = 3 * 3600.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0

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


def lane_id_of(lane: Any) -> LaneId:
    """The queue's lane value as a LaneId (schema, method)."""
    if isinstance(lane, LaneId):
        return lane
    if isinstance(lane, str):
        schema, _, method = lane.partition("#")
        return LaneId(schema, method)
    return LaneId(lane.schema, lane.method)


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
        self.fallbacks: dict[LaneId, str] = {}
        self.crashed: BaseException | None = None
        self.totals = {
            "delivered": 0,
            "dead_lettered": 0,
            "retried": 0,
            "throttled": 0,
            "calls": 0,
            "bisections": 0,
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
        lane_ids: dict[Any, LaneId] = {}
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
                    lane_id = lane_ids[lane] = lane_id_of(lane)
                sooner = self.batcher.add_many(lane_id, entries) or sooner
            for lane_id, lane in self.batcher.lanes.items():
                new = lane.merges - merges_seen.get(lane_id, 0)
                if new:
                    merges_seen[lane_id] = lane.merges
                    self.metrics.records_coalesced.labels(*lane_id).inc(new)
            if sooner:
                # Otherwise the dispatcher's timer already covers every lane's due time.
                self._wake.set()

    # --- dispatching -----------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            now = self._clock()
            if self.fatal is not None and now < self._fatal_until:
                await self._sleep_or_wake(self._fatal_until - now)
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
        await self._send(batch, batch.entries, batch.collection)

    async def _send(self, batch: Batch, entries: list[Entry], collection: bool) -> int:
        """Send ``entries`` in one call and settle them; returns how many were not delivered."""
        lane = batch.lane
        method = lane.id.method
        if not collection and method == "WriteCollection":
            method = "Write"
        # Fragments were rendered and checked at intake: building is only joining them.
        document = fragments_document(
            lane.id.schema, [e.fragment for e in entries], collection=collection
        )
        params = [Param("doc", "document", document)]
        try:
            credentials = await self.auth.credentials()
        except AuthError as exc:
            self._go_fatal(batch, entries, f"authentication failed: {exc}")
            return len(entries)
        except TransportError as exc:
            self._back_off(batch, entries, f"authentication: {exc}")
            return len(entries)
        result = await self.client.call(method, params, credentials)
        self.totals["calls"] += 1
        outcome = result.outcome
        if isinstance(outcome, AuthExpired):
            try:
                credentials = await self.auth.renew(credentials)
            except AuthError as exc:
                self._go_fatal(batch, entries, f"re-authentication failed: {exc}")
                return len(entries)
            except TransportError as exc:
                self._back_off(batch, entries, f"re-authentication: {exc}")
                return len(entries)
            result = await self.client.call(method, params, credentials)
            self.totals["calls"] += 1
            outcome = result.outcome
            if isinstance(outcome, AuthExpired):
                outcome = Retry(f"still refused after re-authentication: {outcome.reason}")
        await self.in_flight.observe(result.latency_s, self.client.throttle.rate())
        if isinstance(outcome, Ok):
            await self._delivered(batch, entries, method)
            return 0
        if isinstance(outcome, Throttled):
            self.totals["throttled"] += 1
            self.metrics.batches.labels("throttled").inc()
            self.batcher.put_back(batch, entries)
            return len(entries)
        if isinstance(outcome, Retry):
            horizon = self._wall() - self.retry.max_age_s
            expired = [e for e in entries if e.created_at < horizon]
            live = [e for e in entries if e.created_at >= horizon]
            self._back_off(batch, live, outcome.reason)
            if not expired:
                return len(live)
            reason = f"gave up after retry.max_age: {outcome.reason}"
            dead = await self._dead_letter(batch, expired, reason, result.status, "MAX-AGE")
            return len(live) + dead
        if isinstance(outcome, Fatal):
            self._go_fatal(batch, entries, outcome.reason)
            return len(entries)
        assert isinstance(outcome, Reject)
        return await self._rejected(batch, entries, collection, outcome, result.status)

    async def _rejected(
        self,
        batch: Batch,
        entries: list[Entry],
        collection: bool,
        outcome: Reject,
        status: int | None,
    ) -> int:
        self.metrics.batches.labels("rejected").inc()
        lane = batch.lane
        if outcome.scope == "collection" and collection and lane.mode == "auto":
            self._fall_back(batch, outcome.reason)
            self.batcher.put_back(batch, entries)
            return len(entries)
        if outcome.scope == "record" and len(entries) > 1:
            return await self._bisect(batch, entries, collection)
        return await self._dead_letter(batch, entries, outcome.reason, status, outcome.code)

    async def _bisect(self, batch: Batch, entries: list[Entry], collection: bool) -> int:
        self.totals["bisections"] += 1
        middle = len(entries) // 2
        undelivered = 0
        for half in (entries[:middle], entries[middle:]):
            undelivered += await self._send(batch, half, collection if len(half) > 1 else False)
        lane = batch.lane
        if collection and entries is batch.entries and lane.mode == "auto":
            # A collection refused with a data fault whose records all pass alone,
            # twice running, is a method that does not take collections. A half put
            # back by a transient failure has not passed: the bad record may be in it.
            lane.clean_bisections = lane.clean_bisections + 1 if undelivered == 0 else 0
            if lane.clean_bisections >= 2:
                self._fall_back(batch, "collections refused while every record passed alone")
        return undelivered

    def _fall_back(self, batch: Batch, reason: str) -> None:
        lane = batch.lane
        if not lane.collections:
            return
        lane.collections = False
        self.fallbacks[lane.id] = reason
        log.warning(
            "Campaign refuses collection documents on this lane; sending one record per call",
            extra={"schema": lane.id.schema, "method": lane.id.method, "reason": reason},
        )

    # --- settling --------------------------------------------------------------------

    async def _delivered(self, batch: Batch, entries: list[Entry], method: str) -> None:
        ids = [i for e in entries for i in e.ids]
        try:
            await self.queue.ack(ids)
        except QueueError as exc:
            # Campaign has the records; without the ack they will be sent again
            # (at-least-once), which keyed upserts absorb. Backing off keeps a queue that
            # cannot commit (a full disk) from resending them at the full TPS budget.
            log.error("ack failed; records will be delivered again", extra={"error": str(exc)})
            self._back_off(batch, entries, f"ack failed: {exc}")
            return
        batch.lane.failures = 0
        if self.fatal is not None:
            log.warning("Campaign accepts calls again; leaving the fatal state")
            self.fatal, self._fatal_count = None, 0
        self.batcher.finished(batch, entries)
        self.totals["delivered"] += len(ids)
        self.metrics.records_delivered.labels(batch.lane.id.schema, method).inc(len(ids))
        self.metrics.batches.labels("ok").inc()
        wall = self._wall()
        # One value per record; records merged into an entry share its oldest intake time.
        self.metrics.end_to_end_latency.observe_many(
            [max(0.0, wall - e.created_at) for e in entries for _ in e.ids]
        )

    async def _dead_letter(
        self, batch: Batch, entries: list[Entry], reason: str, status: int | None, code: str
    ) -> int:
        rows = [(i, reason, status, code) for e in entries for i in e.ids]
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

    def stats(self) -> dict[str, Any]:
        throttle = self.client.throttle
        return {
            "fatal": self.fatal,
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
                }
                for lane_id, lane in self.batcher.lanes.items()
            },
        }
