"""``tps_limit = "auto"``: the tenant limit learned from Campaign's 429s, and kept.

Adobe publishes no number and sends no rate-limit headers, so the only signal is the
429 itself. :class:`LimitLearner` holds the limit the throttle calibrates to:

* it starts low (:data:`~campaign_writer.config.AUTO_START_TPS`, or the value kept
  from the last run);
* while the throttle is the bottleneck (calls wait for their turn at the full rate)
  and no 429 came for a probe period, it raises the limit: x1.5 until the first 429,
  then +5 % (at least 0.5 calls/s), the step doubling (up to +50 %) with each probe
  that holds, so a limit that rose is caught in a few probes;
* on a 429 episode while at the cap, the limit becomes what Campaign accepted over
  the last second, just under where 429s begin (the first time, not below the limit
  that held before the x1.5 raise it answers; not at the cap: a fifth lower);
* a 429 at about the same limit doubles the probe period (up to 30 s), so a limit
  that holds is probed rarely (each probe past the limit costs a 429 and its pause);
  a probe that passes brings it back to 2 s.

The learned value is kept in the queue file's state table (:func:`load_learned`,
:func:`save_learned`), and the next start begins from it.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from ..errors import QueueError

__all__ = ["LEARNED_LIMIT_KEY", "LimitLearner", "StateStore", "load_learned", "save_learned"]

LEARNED_LIMIT_KEY = "throttle.learned_limit"


class LimitLearner:
    """The limit in calls/s, raised while Campaign accepts, set by its 429s. Pure."""

    GROWTH = 1.5  # per probe, until the first 429
    STEP = 0.05  # per probe, after it
    MIN_STEP = 0.5
    PROBE_S = 2.0
    MAX_PROBE_S = 30.0
    MAX_STEP = 0.5
    MINIMUM = 0.5
    MAXIMUM = 10_000.0
    SAME_LIMIT = 0.9  # a 429 at this share of the last one's limit or more: the same limit

    def __init__(self, start: float, *, learned: bool = False) -> None:
        self.limit = max(self.MINIMUM, min(self.MAXIMUM, start))
        self.found = learned  # a 429 told us where the limit is (or the last run did)
        self.probe_s = self.PROBE_S
        self._busy_since: float | None = None
        self._raised = False  # the last change was a raise no 429 has answered yet
        self._step = self.STEP  # doubles with each probe that holds: a risen limit is caught
        self._held = self.limit  # the last limit that held a probe period at the cap

    def on_grant(self, now: float, at_cap: bool) -> float | None:
        """A call was admitted; ``at_cap``: it waited for its turn at the full rate.
        Returns the new limit when this is the moment to probe higher."""
        if not at_cap:
            self._busy_since = None
            return None
        if self._busy_since is None:
            self._busy_since = now
            return None
        if now - self._busy_since < self.probe_s:
            return None
        if self._raised:  # the last probe held: the limit may have risen, probe on
            self.probe_s = self.PROBE_S
            self._step = min(self.MAX_STEP, self._step * 2)
        self._busy_since = now
        self._held = self.limit  # it held a whole probe period at the cap
        if self.found:
            raised = self.limit + max(self.MIN_STEP, self.limit * self._step)
        else:
            raised = self.limit * self.GROWTH
        self.limit = min(self.MAXIMUM, raised)
        self._raised = True
        return self.limit

    def on_throttled(self, accepted_rate: float) -> float:
        """A new 429 episode; ``accepted_rate``: calls/s Campaign accepted in the last
        second (0 when unknown). Returns the new limit."""
        before = self.limit
        # What Campaign accepted tells the limit only if we were sending at the cap;
        # otherwise (a light load, or other clients of the tenant) cut by a fifth.
        saturated = self._busy_since is not None and accepted_rate > 0
        learned = accepted_rate if saturated else before * 0.8
        if self._raised and not self.found:
            # The first 429, answering a x1.5 raise: the limit that held before it still
            # stands (the accepted rate counts a second partly spent below it). Later,
            # probes are small and the limit may have fallen meanwhile: trust the rate.
            learned = max(learned, self._held)
        learned = max(self.MINIMUM, min(before, learned))
        if self.found and learned >= self.SAME_LIMIT * before:
            self.probe_s = min(self.MAX_PROBE_S, self.probe_s * 2)
        else:
            self.probe_s = self.PROBE_S
        self.found = True
        self.limit = learned
        self._busy_since = None
        self._raised = False
        self._step = self.STEP
        return learned

    def adopt(self, limit: float) -> None:
        """Take the limit another instance learned (a shared budget learns one limit)."""
        self.limit = max(self.MINIMUM, min(self.MAXIMUM, limit))
        self.found = True


class StateStore(Protocol):
    """The queue's small key-value table (:class:`~campaign_writer.queue.DurableQueue`)."""

    async def recall(self, name: str) -> str | None: ...
    async def remember(self, name: str, value: str) -> None: ...


async def load_learned(store: StateStore) -> float | None:
    """The limit kept by the last run, or None (never learned, or unreadable)."""
    with contextlib.suppress(QueueError):
        text = await store.recall(LEARNED_LIMIT_KEY)
        if text is not None:
            with contextlib.suppress(ValueError):
                value = float(text)
                if LimitLearner.MINIMUM <= value <= LimitLearner.MAXIMUM:
                    return value
    return None


async def save_learned(store: StateStore, limit: float) -> None:
    """Keep ``limit`` in the queue file for the next start."""
    await store.remember(LEARNED_LIMIT_KEY, repr(round(limit, 3)))
