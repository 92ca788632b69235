"""The cost curves' pure helpers: the configs they generate load in the writer and the
simulator, events reach the lane and key they are meant for, and the figures add up."""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson
import pytest
from bench.cost import (
    EXAMPLE,
    Point,
    event_lines,
    lane_schema,
    measure_point,
    medians,
    per_record_us,
    simulator_config,
    writer_config,
)
from bench.hotpath import callgrind_total, per_event

from campaign_writer.config import load
from campaign_writer.router import Router
from campaign_writer.simulator.config import load_config


def test_writer_config_has_one_ingest_route_per_lane_and_keeps_the_rest(tmp_path: Path) -> None:
    """The generated writer config loads, with one lane per route, and the example's
    other sections as they were."""
    path = tmp_path / "writer.toml"
    path.write_text(writer_config(EXAMPLE.read_text(), 10))
    config = load(path)
    example = load(EXAMPLE)
    assert [r.lane for r in config.routes] == [f"{lane_schema(i)}Stg#Ingest" for i in range(10)]
    assert len({r.lane for r in config.routes}) == 10
    assert config.queue == example.queue
    assert config.campaign == example.campaign


def test_events_go_round_robin_over_lanes_and_cycle_over_keys(tmp_path: Path) -> None:
    """Event n is mapped to lane n % lanes, with key n % keys (or its own key)."""
    path = tmp_path / "writer.toml"
    path.write_text(writer_config(EXAMPLE.read_text(), 3))
    router = Router.from_config(load(path))
    routing = router.route_lines(list(event_lines(5, 7, 3, 4)), source="t", created_at=0.0)
    assert routing.rejected == []
    assert [item.lane for item in routing.items] == [
        f"{lane_schema(n % 3)}Stg#Ingest" for n in range(5, 12)
    ]
    assert [item.key for item in routing.items] == [f"k{n % 4}" for n in range(5, 12)]
    distinct = [orjson.loads(line)["id"] for line in event_lines(0, 5, 1, None)]
    assert distinct == ["k0", "k1", "k2", "k3", "k4"]


def test_simulator_config_stages_one_schema_per_lane(tmp_path: Path) -> None:
    """The simulator config declares every lane's schema, auto-staged, with the limit
    and latency asked for."""
    text = simulator_config(4, 700, 250.0)
    table = tomllib.loads(text)
    assert table["tps_limit"] == 700
    assert table["latency_ms"] == 250
    path = tmp_path / "sim.toml"
    path.write_text(text)
    config = load_config(path)
    ids = {spec.id for spec in config.schemas}
    assert {lane_schema(i) for i in range(4)} <= ids
    staged = {spec.id: spec.auto_stg for spec in config.schemas}
    assert all(staged[lane_schema(i)] for i in range(4))


def test_per_record_and_per_event_figures() -> None:
    """CPU per record in µs, none for nothing delivered; per-event instructions are the
    slope between two runs, whatever their order."""
    assert per_record_us(0.5, 100_000) == 5.0
    assert per_record_us(1.0, 0) is None
    assert per_event((1000, 2_000_000), (5000, 6_000_000)) == 1000.0
    assert per_event((5000, 6_000_000), (1000, 2_000_000)) == 1000.0
    with pytest.raises(ValueError, match="different event counts"):
        per_event((1000, 1), (1000, 2))


def test_callgrind_total_reads_the_summary_line() -> None:
    """The instruction total comes from a callgrind file's summary (or totals) line."""
    text = b"version: 1\ncmd: python -m bench.hotpath --events 10\nevents: Ir\nsummary: 12345\n"
    assert callgrind_total(text) == 12345
    assert callgrind_total(b"events: Ir\ntotals: 77\n") == 77
    with pytest.raises(ValueError, match="not a callgrind output"):
        callgrind_total(b"events: Ir\n")


def test_medians_per_x_over_repeats_leave_out_failed_points() -> None:
    """A curve's row per x is the median (with min and max) of its repeats, in x order;
    failed points and other curves count for nothing."""
    points = [
        Point("lanes", 10, 100, cpu_us_per_record=9.0, peak_rss_mib=70.0, start_s=1.0),
        Point("lanes", 1, 100, cpu_us_per_record=7.0, peak_rss_mib=60.0, start_s=0.5),
        Point("lanes", 10, 100, cpu_us_per_record=12.0, peak_rss_mib=72.0, start_s=3.0),
        Point("lanes", 10, 100, cpu_us_per_record=10.0, peak_rss_mib=71.0, start_s=2.0),
        Point("lanes", 10, 100, cpu_us_per_record=99.0, error="timed out"),
        Point("keys", 10, 100, cpu_us_per_record=50.0),
    ]
    rows = medians(points, "lanes")
    assert [row["x"] for row in rows] == [1, 10]
    assert rows[1]["n"] == 3
    assert rows[1]["cpu_us_per_record"] == 10.0
    assert (rows[1]["cpu_us_per_record_min"], rows[1]["cpu_us_per_record_max"]) == (9.0, 12.0)
    assert rows[1]["start_s"] == 2.0
    assert rows[0]["peak_rss_mib"] == 60.0


async def test_a_point_delivers_its_queue_through_the_simulator(tmp_path: Path) -> None:
    """One point end to end: the queue file is built, the writer delivers every record to
    the simulator over both lanes, the figures are filled in and the file is removed."""
    point = Point("lanes", 2, 2000)
    await measure_point(
        point,
        lanes=2,
        keys=None,
        measure=2000,
        tps=200,
        work=tmp_path,
        logs=tmp_path / "logs",
        timeout_s=60.0,
    )
    assert point.error is None
    assert point.measured == 2000
    assert point.calls >= 2
    assert point.records_per_call is not None
    assert point.records_per_call <= 1000
    assert point.cpu_s > 0
    assert point.peak_rss_mib > 0
    assert point.build_s > 0
    assert not queue_files(tmp_path)


def queue_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.sqlite3*"))
