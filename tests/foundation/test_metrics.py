"""The metrics module: our histogram and counters export what prometheus_client's would,
registries are independent, and the names are documented."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from campaign_writer.metrics import METRIC_NAMES, BatchHistogram, CounterFamily, Metrics

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


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", 'q"uote\\']), st.integers(0, 1000)), max_size=30)
)
def test_counter_family_exports_what_a_prometheus_counter_would(
    bumps: list[tuple[str, int]],
) -> None:
    """Fed the same bumps, CounterFamily and prometheus_client's Counter export the same
    HELP, TYPE and sample lines, labelled and unlabelled."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = CounterFamily("things", "doc", ("kind",), ours)
    plain = CounterFamily("calls", "doc", (), ours)
    reference = Counter("things", "doc", ("kind",), registry=theirs)
    plain_reference = Counter("calls", "doc", registry=theirs)
    for label, amount in bumps:
        family.labels(label).inc(amount)
        reference.labels(label).inc(amount)
        plain.inc(amount)
        plain_reference.inc(amount)
    expected = generate_latest(theirs).decode().splitlines()
    assert generate_latest(ours).decode().splitlines() == expected


def test_counter_family_is_the_one_count_stats_read() -> None:
    """What Prometheus exports is what total(), values() and a label set's value read."""
    metrics = Metrics()
    metrics.records_delivered.labels("dem:a", "Ingest").inc(3)
    metrics.records_delivered.labels("dem:b", "Write").inc(4)
    assert metrics.records_delivered.total() == 7
    assert metrics.records_delivered.labels("dem:a", "Ingest").value == 3
    assert metrics.records_delivered.values() == {("dem:a", "Ingest"): 3, ("dem:b", "Write"): 4}
    text = metrics.exposition().decode()
    assert 'campaign_writer_records_delivered_total{method="Write",schema="dem:b"} 4.0' in text
    with pytest.raises(ValueError, match="takes labels"):
        metrics.records_delivered.labels("dem:a")


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
