"""Window counts, limit crossings and times to reach a share of the limit, on made-up call
logs."""

from __future__ import annotations

from bench.measure import Limits
from bench.windows import (
    busiest_window,
    count_between,
    method_figures,
    time_to_reach,
    windows_over,
)

T0 = 1_000_000.0


def call(t: float, status: int = 200, method: str = "Ingest") -> dict:
    outcome = {200: "ok", 429: "throttled"}.get(status, "inject:500")
    return {"t": T0 + t, "method": method, "records": 10, "status": status, "outcome": outcome}


def evenly(
    start: float, end: float, per_s: float, status: int = 200, method: str = "Ingest"
) -> list[dict]:
    count = round((end - start) * per_s)
    return [call(start + (i + 0.5) / per_s, status, method) for i in range(count)]


def test_busiest_window_slides_rather_than_counting_calendar_seconds() -> None:
    """Five calls late in one second and five early in the next make a busiest window of
    10, though no calendar second holds more than 5."""
    calls = [call(0.6 + i * 0.05) for i in range(5)] + [call(1.05 + i * 0.05) for i in range(5)]
    assert busiest_window(calls, T0, 0.0, 5.0) == 10
    assert busiest_window(calls, T0, 1.0, 5.0) == 5  # only arrivals inside [start, end) count


def test_busiest_window_counts_served_calls_unless_told_otherwise() -> None:
    """429s and failures are left out of the busiest window by default, counted on request."""
    calls = [call(0.1), call(0.2, 429), call(0.3, 503), call(0.4)]
    assert busiest_window(calls, T0, 0.0, 1.0) == 2
    assert busiest_window(calls, T0, 0.0, 1.0, keep=lambda c: True) == 4


def test_a_window_is_half_open_like_the_simulators() -> None:
    """A call exactly one second after another is in a new window: (t - 1, t]."""
    calls = [call(0.5), call(1.5), call(2.5)]
    assert busiest_window(calls, T0, 0.0, 3.0) == 1
    assert windows_over(calls, T0, 0.0, 3.0, Limits(1)) == 0


def test_windows_over_follow_the_limit_as_it_changes() -> None:
    """Steady 15 calls/s is within 20/s, over once the limit drops to 10 at 5 s."""
    calls = evenly(0.0, 10.0, 15.0)
    assert windows_over(calls, T0, 0.0, 10.0, Limits(20)) == 0
    over = windows_over(calls, T0, 0.0, 10.0, Limits(20, [(5.0, 10.0)]))
    assert 70 <= over <= 75  # every call from about 5 s on ends a window of 15 > 10
    assert windows_over(calls, T0, 0.0, 5.0, Limits(20, [(5.0, 10.0)])) == 0


def test_time_to_reach_is_the_end_of_the_first_bin_at_the_share() -> None:
    """A ramp 10, 15, 19, 20 calls/s reaches 95% of 20 in its third second: 3 s."""
    calls = evenly(0, 1, 10) + evenly(1, 2, 15) + evenly(2, 3, 19) + evenly(3, 10, 20)
    limits = Limits(20)
    assert time_to_reach(calls, T0, 0.0, 10.0, limits) == 3.0
    assert time_to_reach(calls, T0, 0.0, 10.0, limits, share=1.0) == 4.0
    assert time_to_reach(calls, T0, 2.0, 10.0, limits) == 1.0  # counted from `start`


def test_time_to_reach_with_hold_needs_consecutive_bins() -> None:
    """One good second between bad ones does not count when three in a row are needed."""
    calls = evenly(0, 1, 20) + evenly(1, 2, 5) + evenly(2, 6, 20)
    limits = Limits(20)
    assert time_to_reach(calls, T0, 0.0, 6.0, limits) == 1.0
    assert time_to_reach(calls, T0, 0.0, 6.0, limits, hold=3) == 3.0
    assert time_to_reach(calls, T0, 0.0, 4.0, limits, hold=3) is None


def test_time_to_reach_counts_only_served_calls_against_the_limit_then() -> None:
    """429s do not count; after a drop to 10/s, 10 served calls a second are enough."""
    calls = evenly(0, 5, 10) + evenly(0, 5, 10, status=429)
    assert time_to_reach(calls, T0, 0.0, 5.0, Limits(20)) is None
    assert time_to_reach(calls, T0, 2.0, 5.0, Limits(20, [(2.0, 10.0)])) == 1.0


def test_count_between_keeps_what_it_is_told() -> None:
    """429s arriving in [start, end) are counted; those outside are not."""
    calls = evenly(0, 10, 2, status=429) + evenly(0, 10, 5)
    assert count_between(calls, T0, 2.0, 4.0, lambda c: c["status"] == 429) == 4


def test_method_figures_count_each_method_against_its_own_limit() -> None:
    """Ingest at 12/s and WriteCollection at 4/s, with one WriteCollection second of 6
    calls of which 2 were refused: each method's calls/s, share of its own limit, 429s
    and busiest second are its own, not the other method's nor the tenant's."""
    ingest = evenly(0.0, 10.0, 12.0)
    collections = evenly(0.0, 10.0, 4.0, method="WriteCollection")
    refused = [call(5.1, 429, "WriteCollection"), call(5.2, 429, "WriteCollection")]
    other = evenly(0.0, 10.0, 3.0, method="Write")  # not limited: not reported
    calls = ingest + collections + refused + other
    figures = method_figures(calls, T0, 0.0, 10.0, {"Ingest": 12, "WriteCollection": 5})
    assert figures == {
        "Ingest.ok_calls_per_s": 12.0,
        "Ingest.limit_share": 1.0,
        "Ingest.throttled_calls": 0,
        "Ingest.max_ok_calls_in_1s": 12,
        "Ingest.max_calls_in_1s": 12,
        "WriteCollection.ok_calls_per_s": 4.0,
        "WriteCollection.limit_share": 0.8,
        "WriteCollection.throttled_calls": 2,
        "WriteCollection.max_ok_calls_in_1s": 4,
        "WriteCollection.max_calls_in_1s": 6,
    }


def test_method_figures_keep_to_the_window() -> None:
    """Calls before ``start`` or from ``end`` on count neither in the rate nor in the
    busiest second: a burst of 30 Ingest calls during the warm-up is left out."""
    burst = [call(0.5 + i * 0.01) for i in range(30)]
    calls = burst + evenly(2.0, 12.0, 10.0) + [call(12.0 + i * 0.01) for i in range(30)]
    figures = method_figures(calls, T0, 2.0, 12.0, {"Ingest": 12})
    assert figures["Ingest.ok_calls_per_s"] == 10.0
    assert figures["Ingest.max_ok_calls_in_1s"] == 10
    assert abs(figures["Ingest.limit_share"] - 10 / 12) < 1e-9
