"""Capped exponential backoff, the one formula every stage uses.

The n-th delay's ceiling is ``min(max_s, initial_s x 2^doublings)``; the jitter kind
says how the delay is drawn under it:

========  ===================================  =====================================
full      uniform in [0, ceiling]              delivery retries (:class:`RetryPolicy`)
half      uniform in [ceiling / 2, ceiling]    source reconnects
none      the ceiling itself                   the fatal state's probes, 429 pauses,
                                               a suspect lane's fault pauses
========  ===================================  =====================================

Draws go through :func:`random.uniform`, so tests can pin them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Jitter", "RetryPolicy", "ceiling", "delay"]

Jitter = Literal["full", "half", "none"]

# The exponent is capped: 2 ** 1024 does not fit a float, and failures keep counting
# through a long outage while the ceiling is long since max_s.
MAX_DOUBLINGS = 64


def ceiling(initial_s: float, max_s: float, doublings: int) -> float:
    """``min(max_s, initial_s x 2^doublings)``, doublings clamped to [0, 64]."""
    return min(max_s, initial_s * 2.0 ** min(max(0, doublings), MAX_DOUBLINGS))


def delay(initial_s: float, max_s: float, doublings: int, jitter: Jitter = "full") -> float:
    """One delay under :func:`ceiling`, drawn as ``jitter`` says."""
    top = ceiling(initial_s, max_s, doublings)
    if jitter == "full":
        return random.uniform(0.0, top)
    if jitter == "half":
        # The lower half is cut so a retry never comes much sooner than planned.
        return random.uniform(top / 2, top)
    return top


class Backoff:
    """Successive delays, doubling from ``initial_s`` up to ``max_s``, until :meth:`reset`."""

    def __init__(self, initial_s: float, max_s: float, jitter: Jitter = "full") -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter: Jitter = jitter
        self.attempts = 0

    def next_delay(self) -> float:
        """The next delay: the first is drawn under ``initial_s``, then each doubles."""
        value = delay(self.initial_s, self.max_s, self.attempts, self.jitter)
        self.attempts += 1
        return value

    def reset(self) -> None:
        self.attempts = 0

    def __repr__(self) -> str:
        return (
            f"Backoff({self.initial_s}, {self.max_s}, jitter={self.jitter!r},"
            f" attempts={self.attempts})"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Delivery's retry and fault-judgement settings (the ``[retry]`` config section)."""

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
        return delay(self.initial_backoff_s, self.max_backoff_s, failures - 1, "full")
