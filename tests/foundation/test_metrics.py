"""The metrics module: the batch histogram exports what a Prometheus histogram would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from campaign_writer.metrics import BatchHistogram, Metrics

BUCKETS = (0.05, 0.1, 0.25, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    ]


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_batch_histogram_matches_prometheus_histogram(values: list[float]) -> None:
    """Fed the same values, BatchHistogram and prometheus_client's Histogram export the
    same bucket, count and sum series (boundary values included)."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = BatchHistogram("lat_seconds", "doc", BUCKETS, ours)
    reference = Histogram("lat_seconds", "doc", buckets=BUCKETS, registry=theirs)
    histogram.observe_many(values[: len(values) // 2])
    histogram.observe_many(values[len(values) // 2 :])
    for value in values:
        reference.observe(value)
    mine = _samples(ours)
    expected = [s for s in _samples(theirs) if "_created" not in s]
    assert [s for s in mine if "_sum" not in s] == [s for s in expected if "_sum" not in s]
    (our_sum,) = (float(s.split()[-1]) for s in mine if "_sum" in s)
    (their_sum,) = (float(s.split()[-1]) for s in expected if "_sum" in s)
    assert our_sum == pytest.approx(their_sum)


def test_metrics_registries_are_independent() -> None:
    """Two Metrics objects (two daemons in one process) do not share counters."""
    first, second = Metrics(), Metrics()
    first.throttled.inc()
    assert "campaign_writer_throttled_total 1.0" in first.exposition().decode()
    assert "campaign_writer_throttled_total 0.0" in second.exposition().decode()
