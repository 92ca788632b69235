"""The metrics module: the batch histogram, independent registries, and the names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from campaign_writer.metrics import METRIC_NAMES, BatchHistogram, Metrics

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


def _documented() -> set[str]:
    """The names in the table of metrics.py's docstring."""
    import campaign_writer.metrics as module

    doc = module.__doc__ or ""
    return {
        line.split()[0]
        for line in doc.splitlines()
        if line.startswith("campaign_writer_") and len(line.split()) >= 2
    }


def test_every_metric_is_documented_and_follows_prometheus_naming() -> None:
    """Each exported family is in the documented table (or prometheus-client's own) and
    follows Prometheus conventions: prefix, snake case, _total on counters only, base
    units (seconds, bytes) in the names of times and sizes."""
    metrics = Metrics()
    families = list(metrics.registry.collect())
    documented = _documented()
    ours = set()
    for family in families:
        name = family.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        samples = {sample.name for sample in family.samples}
        if family.type == "counter":
            assert all(s.endswith("_total") for s in samples), (name, samples)
        else:
            assert not name.endswith("_total"), name
        for word in ("_ms", "_millis", "_milliseconds", "_kb", "_mib", "_percent", "_minutes"):
            assert word not in name, name
        if any(word in name for word in ("latency", "_age", "duration", "_time")):
            assert name.endswith(("_seconds", "_seconds_total")), name
        if name.startswith("campaign_writer_"):
            ours.add(name + ("_total" if family.type == "counter" else ""))
        else:
            assert name.startswith(("process_", "python_")), name
    # source_redeliveries has samples only once a broker source runs.
    assert ours | {"campaign_writer_source_redeliveries_total"} == documented
    exported = ours | {f.name + "_total" for f in families if f.type == "counter"}
    exported |= {f.name for f in families}
    assert set(METRIC_NAMES) <= exported
    assert 'campaign_writer_build_info{version="' in metrics.exposition().decode()
