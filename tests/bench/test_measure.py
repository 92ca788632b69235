"""The benchmark's figures, computed from made-up call logs and records."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bench.analysis import run_figures
from bench.measure import (
    Limits,
    bins,
    concurrency,
    end_to_end,
    percentiles,
    summarise,
    window_figures,
)
from bench.report import format_figure
from bench.scenarios import Phase, build_cases

T0 = 1_000_000.0


def call(t: float, status: int = 200, records: int = 500, latency_ms: float = 50.0) -> dict:
    outcome = {200: "ok", 429: "throttled"}.get(status, "inject:500")
    return {
        "t": T0 + t,
        "method": "Ingest",
        "records": records if status == 200 else 0,
        "status": status,
        "latency_ms": latency_ms,
        "outcome": outcome,
    }


def test_percentiles_use_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, p99.9 is 100, max is 100."""
    result = percentiles(float(v) for v in range(1, 101))
    assert result == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 100.0, "max": 100.0}


def test_percentiles_among_undelivered_records_are_unbounded() -> None:
    """With 10 of 100 records never delivered, p50 is known, p99 and max are not."""
    result = percentiles([float(v) for v in range(90)], censored=10)
    assert result["p50"] == 49.0
    assert result["p90"] == 89.0
    assert result["p99"] is None
    assert result["max"] is None


def test_percentiles_of_nothing_are_none() -> None:
    """No values at all: every percentile is None."""
    assert set(percentiles([]).values()) == {None}


def test_window_figures_count_only_calls_inside_the_window() -> None:
    """20 successful calls/s and one 429 inside [1, 3) give 100% utilisation of limit 20."""
    calls = [call(1.0 + i / 20) for i in range(40)] + [call(2.5, 429), call(0.5), call(3.0)]
    figures = window_figures(calls, T0, 1.0, 3.0, Limits(20), 500)
    assert figures["calls"] == 41
    assert figures["ok_calls_per_s"] == pytest.approx(20.0)
    assert figures["utilisation"] == pytest.approx(1.0)
    assert figures["throttled_ratio"] == pytest.approx(1 / 41)
    assert figures["records_per_s"] == pytest.approx(10_000.0)
    assert figures["ceiling_share"] == pytest.approx(1.0)
    assert figures["batch_fill"] == 500


def test_limits_are_averaged_over_a_change() -> None:
    """A limit of 20 halved at 2 s averages 15 over [0, 4)."""
    limits = Limits(20, [(2.0, 10.0)])
    assert limits.at(1.9) == 20
    assert limits.at(2.0) == 10
    assert limits.mean(0.0, 4.0) == pytest.approx(15.0)


def test_bins_split_calls_by_outcome_per_second() -> None:
    """Calls land in their second's bin as ok, throttled or failed."""
    series = bins([call(0.1), call(0.2, 429), call(1.5, 503), call(1.6)], T0, 2.0)
    assert series["ok"] == [1.0, 1.0]
    assert series["throttled"] == [1.0, 0.0]
    assert series["failed"] == [0.0, 1.0]
    assert series["records"] == [500.0, 500.0]


def test_concurrency_counts_overlapping_calls() -> None:
    """Two calls overlapping between 0.2 s and 0.3 s show 2 in flight there."""
    level = concurrency([call(0.0, latency_ms=300), call(0.2, latency_ms=300)], T0, 1.0)
    values = dict(zip([round(t, 1) for t in level["t"]], level["in_flight"], strict=True))
    assert values[0.1] == 1
    assert values[0.2] == 2
    assert values[0.3] == 2
    assert values[0.4] == 1
    assert values[0.6] == 0


def test_end_to_end_matches_sent_ids_and_counts_the_missing() -> None:
    """Latency is commit minus creation; an id sent but not stored is missing."""
    rows = [
        {"id": "e1", "testcol2": "100.0", "__committed_at": "100.25"},
        {"id": "e9", "testcol2": "100.0", "__committed_at": "103.0"},
    ]
    latencies, missing = end_to_end(rows, {"e1", "e2"})
    assert latencies == [pytest.approx(0.25)]
    assert missing == 1


def test_summarise_gives_median_and_spread() -> None:
    """Median and spread over repeats ignore missing values."""
    summary = summarise([1.0, 3.0, None, 2.0])
    assert summary["median"] == 2.0
    assert summary["spread"] == 2.0
    assert summary["n"] == 3
    assert summarise([None])["median"] is None


def test_limit_drop_settling_and_recovery() -> None:
    """429s until 5 s after a drop at 3 s settle in 3 s; full rate again 2 s after the restore."""
    case = replace(
        build_cases("quick")["limit-drop"][0],
        extra={"high_s": 3.0, "low_s": 6.0, "back_s": 5.0},
        phases=(Phase(3.0, {"tps_limit": 10}, "halved"), Phase(9.0, {"tps_limit": 20}, "back")),
    )
    calls = [call(t / 20) for t in range(60)]  # 20/s for 3 s
    calls += [call(3 + t / 10) for t in range(60)]  # 10/s while halved
    calls += [call(3.5, 429), call(4.5, 429)]
    calls += [call(9 + t / 10) for t in range(10)]  # still 10/s for 1 s after the restore
    calls += [call(10 + t / 20) for t in range(80)]  # then 20/s
    run = {
        "t0": T0,
        "calls": calls,
        "measure_end": 14.0,
        "samples": [],
        "final": {},
        "cpu_s": 1.0,
        "peak_rss_mb": 50.0,
    }
    figures = run_figures(case, run)
    assert figures["settle_s"] == pytest.approx(2.0)
    assert figures["throttled_during_change"] == 2
    assert figures["utilisation_low"] == pytest.approx(1.0)
    assert figures["recovery_s"] == pytest.approx(2.0)
    assert figures["utilisation_after"] == pytest.approx(1.0)


def test_intake_answers_count_from_the_end_of_the_warmup() -> None:
    """The 202 percentiles cover the posts made after the warmup, and only those."""
    case = build_cases("quick")["steady"][0]
    assert case.warmup_s == 1.0
    answers = [(T0 + 0.5, 9.0)]  # a slow answer during the warmup: left out
    answers += [(T0 + 1.0 + i / 100, (i + 1) / 1000) for i in range(100)]  # 1..100 ms
    run = {
        "t0": T0,
        "calls": [],
        "measure_end": 6.0,
        "samples": [],
        "final": {},
        "cpu_s": 1.0,
        "peak_rss_mb": 50.0,
        "sent": 0,
        "intake_answers": answers,
    }
    figures = run_figures(case, run)
    assert figures["intake_p50_ms"] == pytest.approx(50.0)
    assert figures["intake_p99_ms"] == pytest.approx(99.0)
    assert "intake_p99_ms" not in run_figures(case, {**run, "intake_answers": []})
    assert format_figure("intake_p99_ms", 21.4) == "21 ms"


def test_figures_are_shown_with_their_units() -> None:
    """Shares as percentages, rates as thousands, durations and sizes with units."""
    assert format_figure("utilisation", 0.983) == "98.3%"
    assert format_figure("records_per_s", 9833.3) == "9,833"
    assert format_figure("e2e_p99_ms", 224.4) == "224 ms"
    assert format_figure("settle_s", 2.0) == "2.00 s"
    assert format_figure("peak_rss_mb", 70.2) == "70 MB"
    assert format_figure("anything", None) == "–"
