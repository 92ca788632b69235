"""Whose fault is a refusal? Bisection, controls and verdicts for delivery.

When Campaign refuses a call (a :class:`~campaign_writer.campaign.outcome.Reject`), the
dispatcher hands the batch here (:meth:`Isolation.judge_refusal`).
:meth:`Isolation._isolate` splits it until the records at fault fail alone while
others succeed; :meth:`Isolation._judge` strikes a record refused alone, and
dead-letters it once the evidence holds (see :mod:`campaign_writer.evidence`). When
refusals pile up with no success, records sent alone act as controls
(:meth:`Isolation._control`); if they fail too, the fault is the instance's: the lane
pauses (:meth:`Isolation._suspect`) and nothing is dead-lettered.

:class:`Isolation` is a collaborator of :class:`~campaign_writer.dispatcher.Dispatcher`:
sending and settling are the dispatcher's (it hands its ``send`` over), judging is here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .batcher import Batch, Batcher, Entry, Lane
from .campaign.codes import names_a_record
from .campaign.outcome import Ok, Reject
from .errors import AuthError, TransportError
from .evidence import Strike
from .logs import get_logger
from .metrics import Metrics

if TYPE_CHECKING:
    from .backoff import RetryPolicy
    from .campaign.auth import Authenticator
    from .campaign.client import CampaignClient

__all__ = [
    "CONTROLS",
    "MAX_STRIKES",
    "TAIL_RECORDS",
    "TAIL_WINDOW_S",
    "DeliveryCounts",
    "Isolation",
    "Refused",
]

log = get_logger("dispatcher")

# How often the log says again that a lane is paused on a fault every record meets.
FAULT_REMINDER_S = 300.0
# Records sent alone, one after another, before refusals with no success in between
# are taken for the instance's fault (see Isolation._control).
CONTROLS = 2
# Strikes an entry keeps, newest last (voided ones included; see evidence.py).
MAX_STRIKES = 8
# The end of a stream: at most this many records left, all refused alone already, and
# the lane's last success no older than this (see Isolation._tail_control).
TAIL_RECORDS = 50
TAIL_WINDOW_S = 600.0


@dataclass(slots=True)
class DeliveryCounts:
    """Delivery's counts that have no Prometheus series (the others live in the metrics).

    Kept once, here; ``/v1/stats`` ``delivery.totals`` and the dispatcher's repr read them.
    """

    calls: int = 0  # Campaign calls that carried records, controls included
    bisections: int = 0  # refused batches split to find the records at fault
    tail_controls: int = 0  # read controls sent at the end of a stream
    fault_pauses: int = 0  # lanes paused on a fault every record meets


class Refused(NamedTuple):
    """Campaign refused a call with a fault; whose fault it is remains to be seen."""

    fault: Reject
    status: int | None
    seq: int


# What judging asks of the dispatcher: send ``entries`` of a batch in one call and
# settle it (Ok when delivered, the refusal when Campaign refused it, None when settled
# otherwise); dead-letter entries; weigh the lane's evidence about collections.
Send = Callable[[Batch, list[Entry], bool], Awaitable[Ok | Refused | None]]
DeadLetter = Callable[[Batch, list[Entry], str, int | None, str], Awaitable[int]]


class Isolation:
    """Fault judgement: the dispatcher's collaborator for refused calls.

    The dispatcher hands it a refused batch (:meth:`judge_refusal`); it sends parts of
    it through the dispatcher's own ``send`` (so every call is settled one way), and
    gives its verdicts back through ``dead_letter`` and the batcher.
    """

    def __init__(
        self,
        batcher: Batcher,
        client: CampaignClient,
        auth: Authenticator,
        retry: RetryPolicy,
        metrics: Metrics,
        counts: DeliveryCounts,
        *,
        send: Send,
        dead_letter: DeadLetter,
        collections_evidence: Callable[[Batch], None],
        stopping: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self.batcher = batcher
        self.client = client
        self.auth = auth
        self.retry = retry
        self.metrics = metrics
        self.counts = counts
        self._send = send
        self._dead_letter = dead_letter
        self._collections_evidence = collections_evidence
        self._stopping = stopping
        self._clock = clock

    def __repr__(self) -> str:
        paused = sum(1 for lane in self.batcher.lanes.values() if lane.health.suspect)
        return (
            f"Isolation(bisections={self.counts.bisections}, paused_lanes={paused},"
            f" fault_pauses={self.counts.fault_pauses})"
        )

    async def judge_refusal(self, batch: Batch, refused: Refused) -> None:
        """A whole batch was refused: split it, or judge its one record."""
        entries = batch.entries
        if len(entries) > 1 or batch.collection:
            await self._isolate(batch, entries, batch.collection)
        else:
            await self._judge(batch, entries[0], refused, sibling_ok=False)

    async def _isolate(self, batch: Batch, entries: list[Entry], collection: bool) -> None:
        """Split a refused call until the records at fault fail alone.

        Breadth first, both halves of a split at once, so that a bad record's sibling
        is sent beside it and proves records sent this way succeed. When refusals pile
        up with no success, one record alone is sent as a control; if it fails too, the
        fault is the instance's: the lane pauses and nothing is dead-lettered.
        """
        self.counts.bisections += 1
        lane = batch.lane
        health = lane.health
        work: deque[list[Entry]] = deque([entries])
        sibling_ok = False
        while work:
            if health.suspect or self._stopping() or (collection and not lane.collections):
                # Paused, closing, or fallen back to one record per call: the rest waits.
                self.batcher.put_back(batch, [e for part in work for e in part])
                return
            part = work.popleft()
            if len(part) == 1:
                outcome = await self._send(batch, part, False)
                if isinstance(outcome, Refused):
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
                *(self._send(batch, half, collection and len(half) > 1) for half in halves)
            )
            refused = [
                (half, outcome)
                for half, outcome in zip(halves, outcomes, strict=True)
                if isinstance(outcome, Refused)
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
        refused: list[tuple[Entry, Refused]] = []
        tried = candidates[:CONTROLS]
        for control in tried:
            part = [e for e in part if e is not control]
            outcome = await self._send(batch, [control], False)
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
        result = await self.client.read_schema(lane.id.schema, credentials)
        self.counts.calls += 1
        self.counts.tail_controls += 1
        if not isinstance(result.outcome, Ok):
            return False
        health.pauses = 0  # Campaign answers: the next pause starts short again
        return True

    @staticmethod
    def _mark(batch: Batch, entry: Entry, refused: Refused) -> None:
        """A refusal while the lane is suspect: a strike that counts for nothing (it is
        voided), yet makes the record go alone, so it is judged beside others later."""
        refusal = refused.fault
        data = refusal.scope == "record"
        mark = Strike(refused.seq, False, refusal.reason, refusal.code, data, void=True)
        strikes = (*entry.strikes, mark)
        entry.strikes = strikes[-MAX_STRIKES:]

    async def _judge(
        self, batch: Batch, entry: Entry, refused: Refused, *, sibling_ok: bool
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
        self.batcher.pause(lane, now + delay)
        self.counts.fault_pauses += 1
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

    def fault_pauses(self) -> dict[str, Any]:
        """Lanes paused on a fault every record meets, and whether every busy lane is."""
        now = self._clock()
        paused = {}
        for lane_id, lane in self.batcher.lanes.items():
            health = lane.health
            if health.suspect_since is None:
                continue
            paused[lane_id.text] = {
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
