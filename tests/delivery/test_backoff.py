"""The one backoff formula, in each stage's jitter kind."""

from __future__ import annotations

import random

import pytest

from campaign_writer.backoff import Backoff, RetryPolicy, ceiling, delay
from campaign_writer.dispatcher import Halt


def test_the_ceiling_doubles_and_is_capped_even_after_a_long_outage() -> None:
    assert [ceiling(0.5, 10.0, n) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert ceiling(0.5, 10.0, -3) == 0.5
    assert ceiling(0.5, 10.0, 10_000) == 10.0  # 2 ** 10000 would overflow a float


def test_each_jitter_kind_draws_under_the_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: (low, high))
    assert delay(1.0, 60.0, 3, "full") == (0.0, 8.0)
    assert delay(1.0, 60.0, 3, "half") == (4.0, 8.0)
    assert delay(1.0, 60.0, 3, "none") == 8.0


def test_retry_policy_is_full_jitter_from_the_first_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=10.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 6, 1000)] == [0.5, 1.0, 2.0, 10.0, 10.0]


def test_a_backoff_counts_its_attempts_until_reset() -> None:
    backoff = Backoff(1.0, 5.0, "none")
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_the_fatal_state_probes_after_30_s_doubling_to_15_minutes() -> None:
    halt = Halt()
    assert not halt.blocks(0.0)
    assert halt.enter("refused", 0.0) == (True, 30.0)
    assert halt.blocks(29.0) and not halt.blocks(30.0)
    delays = [halt.enter("refused", 0.0) for _ in range(6)]
    assert delays == [(False, d) for d in (60.0, 120.0, 240.0, 480.0, 900.0, 900.0)]
    assert halt.leave() and halt.reason is None and not halt.leave()
    assert halt.enter("again", 100.0) == (True, 30.0)
