"""Delivery: lease records from the queue, batch them, send them, settle each outcome.

Two tasks run under the dispatcher:

* the **feeder** leases records from the durable queue into the batcher, keeping at
  most ``lease_capacity`` records in memory (the rest stay on disk);
* the **dispatch loop** takes the next due batch, waits for an in-flight slot, and
  starts a send task. Every call goes through :class:`~campaign_writer.campaign.client.
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

The in-flight cap (:class:`~campaign_writer.throttle.InFlightLimit`) follows Little's
law, bounded by ``sender.max_in_flight``. Backoff is :mod:`campaign_writer.backoff`'s.
A Reject is judged in :mod:`campaign_writer.isolation`. The client builds requests
and renews an expired session (:meth:`~campaign_writer.campaign.client.CampaignClient.write`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .backoff import Backoff, RetryPolicy
from .batcher import Batch, Batcher, Entry
from .campaign.auth import Authenticator
from .campaign.client import AuthFailed, CampaignClient
from .campaign.outcome import Fatal, Ok, Reject, Retry, Throttled
from .errors import QueueError
from .isolation import DeliveryCounts, Isolation, Refused
from .logs import get_logger
from .metrics import Metrics
from .records import LaneId, Leased, RecordDeadLetter
from .throttle import InFlightLimit
from .wakeup import Wakeup

__all__ = ["Dispatcher", "Halt", "InFlightLimit", "RetryPolicy"]

log = get_logger("dispatcher")

# The fatal state probes Campaign again after 30 s, doubling up to 15 minutes.
FATAL_PROBE_INITIAL_S = 30.0
FATAL_PROBE_MAX_S = 900.0


class RecordQueue(Protocol):
    """What delivery needs from :class:`campaign_writer.queue.DurableQueue`."""

    async def lease(self, limit: int) -> list[Leased]: ...
    async def ack(self, ids: list[int]) -> None: ...
    async def release(self, ids: list[int]) -> None: ...
    async def dead_letter(self, entries: Sequence[RecordDeadLetter]) -> None: ...
    async def wait_for_records(self, timeout: float) -> bool: ...


class Halt:
    """The fatal state: Campaign refuses every call, so nothing is sent until a probe.

    Each entry into it (a first Fatal, or a probe refused again) sets the next probe
    a doubled delay later, without jitter; the first delivery leaves it.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.until = 0.0
        self._probes = Backoff(FATAL_PROBE_INITIAL_S, FATAL_PROBE_MAX_S, "none")

    def enter(self, reason: str, now: float) -> tuple[bool, float]:
        """Stop until the next probe; whether this began the state, and the delay."""
        delay = self._probes.next_delay()
        self.until = now + delay
        began = self.reason is None
        self.reason = reason
        return began, delay

    def leave(self) -> bool:
        """A delivery went through; whether the state was on."""
        if self.reason is None:
            return False
        self.reason = None
        self._probes.reset()
        return True

    def blocks(self, now: float) -> bool:
        return self.reason is not None and now < self.until

    def __repr__(self) -> str:
        return f"Halt(reason={self.reason!r}, until={self.until})"


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
        self.halt = Halt()
        # Acks the queue could not write in a row, and until when sending waits for it.
        self._ack_failures = 0
        self._acks_wait_until = 0.0
        self.crashed: BaseException | None = None  # what ended a task of ours, if anything
        self._send_error: BaseException | None = None  # a send task's, for the loop to raise
        self.counts = DeliveryCounts()
        self.isolation = Isolation(
            batcher,
            client,
            auth,
            retry,
            metrics,
            self.counts,
            send=self._send,
            dead_letter=self._dead_letter,
            collections_evidence=self._collections_evidence,
            stopping=lambda: self._stopping,
            clock=clock,
        )
        # The batch outcomes, looked up once: one bump per batch.
        self._batches = {
            outcome: metrics.batches.labels(outcome)
            for outcome in ("ok", "throttled", "rejected", "retry", "fatal")
        }

    @property
    def fallbacks(self) -> dict[LaneId, str]:
        """Lanes that fell back to one record per call, and why."""
        return {i: lane.fallback for i, lane in self.batcher.lanes.items() if lane.fallback}

    @property
    def fatal(self) -> str | None:
        """Why delivery is stopped (Campaign refuses every call), or None."""
        return self.halt.reason

    def __repr__(self) -> str:
        metrics = self.metrics
        return (
            f"Dispatcher(sending={len(self._sending)}, {self.in_flight!r}, {self.batcher!r},"
            f" delivered={metrics.records_delivered.total()},"
            f" dead_lettered={metrics.records_dead_lettered.total()},"
            f" retried={metrics.retries.total()}, calls={self.counts.calls},"
            f" fatal={self.fatal!r})"
        )

    # --- lifecycle -------------------------------------------------------------------

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The feeder and the dispatch loop while they run: they end early only on a
        crash (a send task's crash ends the loop with its error). The daemon's
        supervisor waits on them."""
        return frozenset(self._tasks)

    async def start(self) -> None:
        for name, coroutine in (
            ("delivery:feed", self._feed()),
            ("delivery:loop", self._dispatch()),
        ):
            task = asyncio.create_task(coroutine, name=name)
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
        leftover.extend(self.batcher.unsent_ids())
        if leftover:
            try:
                await self.queue.release(leftover)
            except QueueError as exc:
                log.warning(
                    "could not release leases; they return on restart", extra={"error": str(exc)}
                )

    # --- feeding ---------------------------------------------------------------------

    async def _feed(self) -> None:
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
            if sooner:
                # Otherwise the dispatcher's timer already covers every lane's due time.
                self._wake.set()

    def _lane_series(self, lane_id: LaneId) -> None:
        """Export a lane's fault series from its first record on, at zero."""
        self.metrics.lane_fault_paused.labels(*lane_id).set(0)
        self.metrics.collection_fallbacks.labels(*lane_id)
        self.metrics.partial_collections.labels(*lane_id)

    # --- the loop: take a due batch, send, settle -------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            if self._send_error is not None:
                raise self._send_error
            now = self._clock()
            if self.halt.blocks(now):
                await self._sleep_or_wake(self.halt.until - now)
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
            task = asyncio.create_task(self._run_batch(batch))
            self._sending[task] = batch
            self.metrics.in_flight.set(self.in_flight.current)
            task.add_done_callback(self._batch_ended)

    async def _sleep_or_wake(self, timeout: float | None) -> None:
        self._wake.clear()
        await self._wake.wait(timeout)

    def _batch_ended(self, task: asyncio.Task[None]) -> None:
        """A batch's task ended: free its in-flight slot, wake the feeder and the loop."""
        self._sending.pop(task, None)
        release = asyncio.ensure_future(self.in_flight.release())
        release.add_done_callback(lambda _: self.metrics.in_flight.set(self.in_flight.current))
        self._room.set()
        self._wake.set()
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            # The dispatch loop raises it (the wake above gets it there): a crash of
            # delivery, seen through the loop's task like any other.
            self._send_error = task.exception()

    async def _run_batch(self, batch: Batch) -> None:
        """A send task: the batch in one call; a refusal goes to fault judgement."""
        outcome = await self._send(batch, batch.entries, batch.collection)
        if isinstance(outcome, Refused):
            await self.isolation.judge_refusal(batch, outcome)

    async def _send(
        self, batch: Batch, entries: list[Entry], collection: bool
    ) -> Ok | Refused | None:
        """Send ``entries`` in one call and settle it, unless Campaign refused it.

        Returns Ok when the entries are delivered, a refusal when Campaign refused the
        call (the caller still holds the entries and decides whose fault it is), or
        None when they were settled otherwise: put back, backed off, or fatal.
        """
        lane = batch.lane
        sent = await self.client.write(
            lane.id.schema,
            lane.id.method,
            [e.fragment for e in entries],
            self.auth,
            collection=collection,
            stamp=lane.health.send,
        )
        self.counts.calls += sent.calls
        if isinstance(sent, AuthFailed):
            if sent.fatal:
                self._go_fatal(batch, entries, sent.reason)
            else:
                self._back_off(batch, entries, sent.reason)
            return None
        await self.in_flight.observe(sent.latency_s, self.client.rate())
        outcome = sent.outcome
        if isinstance(outcome, Ok):
            acked = await self._acknowledge(
                batch, entries, sent.method, collection, outcome, sent.stamp
            )
            return outcome if acked else None
        if isinstance(outcome, Throttled):
            self._batches["throttled"].inc()
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
        self._batches["rejected"].inc()
        lane.health.refused(collection, counts=not batch.retrial)
        self._collections_evidence(batch)
        return Refused(outcome, sent.status, sent.stamp)

    def _collections_evidence(self, batch: Batch) -> None:
        lane = batch.lane
        if lane.mode == "auto" and lane.collections and lane.health.collections_refused():
            self._fall_back(batch, "collection documents refused while records sent alone pass")

    def _fall_back(self, batch: Batch, reason: str) -> None:
        lane = batch.lane
        if not self.batcher.fall_back(lane, reason):
            return
        self.metrics.collection_fallbacks.labels(*lane.id).inc()
        log.warning(
            "Campaign does not take collection documents on this lane; sending one record per call",
            extra={"schema": lane.id.schema, "method": lane.id.method, "reason": reason},
        )

    # --- settling --------------------------------------------------------------------

    async def _acknowledge(
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
        if self.halt.leave():
            log.warning("Campaign accepts calls again; leaving the fatal state")
        self.batcher.delivered(batch, entries)
        self.metrics.records_delivered.labels(lane.id.schema, method).inc(len(ids))
        self._batches["ok"].inc()
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
        self.metrics.records_dead_lettered.labels(code or "error").inc(len(rows))
        log.warning(
            "records dead-lettered",
            extra={"count": len(rows), "code": code, "reason": reason[:300]},
        )
        return len(rows)

    def _back_off(self, batch: Batch, entries: list[Entry], reason: str) -> None:
        delay = self.batcher.back_off(batch, entries, self._clock(), self.retry.backoff)
        self.metrics.retries.labels(reason.split(":")[0][:40]).inc()
        self._batches["retry"].inc()
        log.info(
            "transient failure; retrying",
            extra={"reason": reason[:300], "backoff_s": round(delay, 3)},
        )

    def _go_fatal(self, batch: Batch, entries: list[Entry], reason: str) -> None:
        began, delay = self.halt.enter(reason, self._clock())
        if began:
            log.error(
                "Campaign refuses every call; delivery stopped, queue kept",
                extra={"reason": reason, "probe_in_s": delay},
            )
        self._batches["fatal"].inc()
        self.batcher.put_back(batch, entries)

    # --- introspection ---------------------------------------------------------------

    def fault_pauses(self) -> dict[str, Any]:
        """Lanes paused on a fault every record meets (see :class:`Isolation`)."""
        return self.isolation.fault_pauses()

    @property
    def totals(self) -> dict[str, int]:
        """Delivery's counts, read from where each is kept (the metrics, or ``counts``)."""
        metrics, counts = self.metrics, self.counts
        return {
            "delivered": metrics.records_delivered.total(),
            "dead_lettered": metrics.records_dead_lettered.total(),
            "retried": metrics.retries.total(),
            "throttled": self._batches["throttled"].value,
            "calls": counts.calls,
            "bisections": counts.bisections,
            "fault_pauses": counts.fault_pauses,
            "partial_collections": metrics.partial_collections.total(),
            "tail_controls": counts.tail_controls,
        }

    def stats(self) -> dict[str, Any]:
        wall = self._wall()
        return {
            "fatal": self.fatal,
            "faults": self.isolation.fault_pauses(),
            "in_flight": self.in_flight.current,
            "in_flight_limit": self.in_flight.limit,
            "latency_ewma_s": self.in_flight.latency_s,
            "rate_limit": round(self.client.rate(), 3),
            "paused_for_s": round(self.client.paused_for, 3),
            "records_in_memory": self.batcher.pending,
            "totals": self.totals,
            "lanes": {
                lane_id.text: lane.stats(wall) for lane_id, lane in self.batcher.lanes.items()
            },
        }

    def newest_delivered_ages(self) -> dict[LaneId, float]:
        """Per lane that delivered anything: seconds since the newest delivered record's
        intake (see :attr:`~.batcher.Lane.newest_delivered_at`)."""
        wall = self._wall()
        ages = {}
        for lane_id, lane in self.batcher.lanes.items():
            age = lane.newest_delivered_age(wall)
            if age is not None:
                ages[lane_id] = age
        return ages
