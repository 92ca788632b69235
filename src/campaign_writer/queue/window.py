"""The commit window: when an append waits for others to share its commit.

With a commit window (``queue.commit_window_ms``), an append that arrives while others
are arriving waits up to that long for company before its commit; :class:`GroupCommit`
decides when waiting pays, and :func:`gather` does the waiting in the queue's thread.
"""

from __future__ import annotations

import threading
import time
from queue import SimpleQueue
from typing import Any, Final

from .jobs import AppendJob, Job

__all__ = ["ENOUGH_ROWS", "MAX_JOBS_PER_COMMIT", "GroupCommit", "ends_window", "gather"]

ENOUGH_ROWS: Final = 500  # an append this large never waits, and ends a window it joins
MAX_JOBS_PER_COMMIT: Final = 512


def ends_window(job: Job[Any]) -> bool:
    """Whether ``job`` commits without a window, and ends one it arrives in."""
    return not isinstance(job, AppendJob) or job.rows >= ENOUGH_ROWS


class GroupCommit:
    """When an append should wait for others before its commit. Pure (times are given).

    Every commit costs an fsync and a round trip between the event loop and the
    queue thread, whatever it holds. Appends from independent producers that arrive
    a few milliseconds apart can share one commit if the first waits for the next;
    the wait delays its acknowledgement by up to ``window_s``. Waiting is worth it
    only when company comes, so:

    * an append arriving more than ``window_s`` after the previous round stopped
      gathering never waits (sparse traffic: nobody would join); that distance
      includes the commit, so a window shorter than a commit never waits, and then
      appends pile up behind the slow commits and share them anyway;
    * a wait that ends with company, or a round that finds appends already queued,
      restores the credit to ``CREDIT`` waits; a wait that ends alone spends one (a
      wait cut short by another kind of job spends nothing: nobody had time to join);
    * with no credit left (a single producer that posts only after each answer),
      one wait checks whether company has appeared, at most once every
      ``probe_s`` (``PROBE_S``, or 50 windows for long windows) after the last
      check ended: such a producer spends at most about 2% of its time waiting.
    """

    CREDIT: Final = 8
    PROBE_S: Final = 1.0
    PROBE_WINDOWS: Final = 50

    def __init__(self, window_s: float) -> None:
        if window_s < 0:
            raise ValueError("the commit window must not be negative")
        self.window_s = window_s
        self.probe_s = max(self.PROBE_S, self.PROBE_WINDOWS * window_s)
        self.credit = 0
        self._last_append = float("-inf")
        self._last_probe = float("-inf")
        self._probing = False
        self.waits = 0  # rounds that waited
        self.joined = 0  # waits that ended with company

    def wait_s(self, now: float) -> float:
        """How long the append taken at ``now`` should wait for others (0: commit now)."""
        gap = now - self._last_append
        self._last_append = now
        if self.window_s <= 0 or gap > self.window_s:
            return 0.0
        if self.credit <= 0:
            if now - self._last_probe < self.probe_s:
                return 0.0
            self._probing = True
        return self.window_s

    def done(self, appends: int, waited: bool, ended_at: float, cut: bool = False) -> None:
        """A round is ready to commit: ``appends`` appends in it, ``waited`` if it waited
        for them, gathering until ``ended_at``; ``cut`` if another kind of job ended the
        wait early. The next append's distance is counted from ``ended_at``, so a
        producer that answers fast after a wait still counts as close."""
        self._last_append = max(self._last_append, ended_at)
        if self._probing:
            self._probing = False
            self._last_probe = ended_at
        if waited:
            self.waits += 1
        if appends > 1:
            self.credit = self.CREDIT
            if waited:
                self.joined += 1
        elif waited and not cut:
            self.credit = max(0, self.credit - 1)


def gather(
    jobs: SimpleQueue[Job[Any]],
    batch: list[Job[Any]],
    grouping: GroupCommit,
    hurry: threading.Event,
) -> None:
    """Let appends that follow closely join the round (see :class:`GroupCommit`).

    ``hurry`` is set when a job that ends the window is queued. The wait ends at the
    window's end, or once the round holds another kind of job (a lease, an ack or a
    close should not sit out the window) or an append of ``ENOUGH_ROWS`` rows: a
    commit's fixed cost is small beside that many rows, so such appends (bulk posts,
    broker batches) never wait."""
    now = time.monotonic()
    appends = sum(1 for job in batch if isinstance(job, AppendJob))
    cut = False
    wait = grouping.wait_s(now) if len(batch) == 1 and not ends_window(batch[0]) else 0.0
    if wait > 0:
        deadline = now + wait
        # Cleared before looking at the queue: a job queued after this line sets it
        # again, one queued before is found by the look.
        hurry.clear()
        while True:
            ended = False
            while len(batch) < MAX_JOBS_PER_COMMIT and not jobs.empty():
                job = jobs.get_nowait()
                batch.append(job)
                is_append = isinstance(job, AppendJob)
                if is_append:
                    appends += 1
                if ends_window(job):
                    ended = True
                    cut = cut or not is_append
            left = deadline - time.monotonic()
            if ended or left <= 0 or len(batch) >= MAX_JOBS_PER_COMMIT:
                break
            hurry.wait(left)
        now = time.monotonic()
    grouping.done(appends, wait > 0, now, cut)
