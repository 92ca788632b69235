"""The durable local queue that sits between intake and delivery.

::

    q = await DurableQueue.open(path, max_bytes=..., synchronous="FULL", commit_window_s=0.02)
    await q.append(items)            # all-or-nothing, durable when it returns
    leased = await q.lease(500)      # ready records, oldest first
    await q.ack(ids) / q.retry(ids, retry_at, reason) / q.release(ids)
    await q.dead_letter([RecordDeadLetter(id, reason, status, code)])
    await q.close()

Appends from many tasks are committed together, one fsync for all of them: every
statement runs in the queue's own thread (:mod:`.worker`), which owns the SQLite file
(:mod:`.file`: its format and the checks made when opening it) and takes the jobs
(:mod:`.jobs`) the facade (:mod:`.facade`) hands it. With a commit window, an append
that has others close behind it waits up to ``commit_window_s`` for them
(:mod:`.window`). With ``synchronous=FULL``, a record whose ``append`` returned
survives ``kill -9`` and power loss, so a source may acknowledge upstream at that
point and not before.

When the file holds ``max_bytes`` (records plus dead letters), ``append`` raises
:class:`~campaign_writer.errors.QueueFullError` and writes nothing; sources pause on
:meth:`DurableQueue.wait_for_space`. Nothing is ever dropped to make room.

Leases live in memory. One process owns a queue file (an advisory lock on
``<file>-lock``); after a crash, every record that was not acknowledged is ready
again on the next open. New records are found by id, which only grows, so records
appended by another process (``campaign-writer dlq replay``) reach delivery too.

Once a lease has read to the end of the file, the records this process appends next
are handed to ``lease`` from memory as their commits settle (:mod:`.tail`), which
saves the queue thread a read per append. A gap in their ids, a commit by another
process, or a backlog beyond that bound sends leases back to the file.

The records that cross into and out of the queue are in :mod:`campaign_writer.records`.
"""

from ..records import Leased, QueueItem, RawDeadLetter, RecordDeadLetter
from .facade import DEFAULT_MAX_BYTES, RESUME_FRACTION, DurableQueue
from .file import ROW_OVERHEAD, corrupt_message
from .stats import QueueStats, read_stats

__all__ = [
    "DEFAULT_MAX_BYTES",
    "RESUME_FRACTION",
    "ROW_OVERHEAD",
    "DurableQueue",
    "Leased",
    "QueueItem",
    "QueueStats",
    "RawDeadLetter",
    "RecordDeadLetter",
    "corrupt_message",
    "read_stats",
]
