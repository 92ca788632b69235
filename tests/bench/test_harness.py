"""The benchmark harness end to end: quick saturation with every subject, shortened."""

from __future__ import annotations

import json
from pathlib import Path

from bench.rebuild import main as rebuild_report
from bench.runner import Options, run
from bench.scenarios import ALL_SUBJECTS

from tests.support.services import require_node

PNG = b"\x89PNG\r\n\x1a\n"
THROUGHPUT = (
    "utilisation",
    "throttled_ratio",
    "records_per_s",
    "ceiling_share",
    "batch_fill",
    "call_latency_p50_ms",
    "call_latency_p99_ms",
    "in_flight_max",
    "cpu_s",
    "records_per_cpu_s",
    "peak_rss_mb",
)


def median(report: dict, subject: str, figure: str) -> float:
    summary = report["cases"]["saturation"]["subjects"][subject]["figures"][figure]
    assert summary["n"] == 1, (subject, figure, summary)
    value = summary["median"]
    assert isinstance(value, int | float), (subject, figure, value)
    return value


async def test_quick_saturation_writes_a_complete_report(tmp_path: Path) -> None:
    """Quick saturation (scaled down) with all four subjects writes report.json, report.md,
    per-run files and both plots, with every throughput and cost figure present and sane."""
    require_node()
    options = Options(["saturation"], "quick", 1, ALL_SUBJECTS, tmp_path, 0.5)
    assert await run(options) == 0
    check_report(tmp_path)
    check_rebuild(tmp_path)


def check_report(tmp_path: Path) -> None:
    [out] = list(tmp_path.iterdir())
    report = json.loads((out / "report.json").read_text())

    assert report["mode"] == "quick"
    assert report["machine"]["cores"] >= 1
    assert len(report["machine"]["loadavg_start"]) == 3
    assert len(report["machine"]["loadavg_end"]) == 3
    assert report["backlog_fill"]["events_per_s"] > 0
    wake = report["wake_cost"]
    assert wake["count"] == 150  # 300 at scale 1
    for figure in ("wake_us", "short_wake_us", "responder_us_per_post"):
        assert 0 < wake[figure] < 100_000, (figure, wake)
    case = report["cases"]["saturation"]
    assert case["errors"] == []
    assert case["skipped"] == {}
    assert set(case["subjects"]) == set(ALL_SUBJECTS)
    for subject in ALL_SUBJECTS:
        for figure in THROUGHPUT:
            median(report, subject, figure)
        assert 0 < median(report, subject, "utilisation") <= 1.1
        assert 0 <= median(report, subject, "throttled_ratio") <= 1
        assert median(report, subject, "records_per_s") > 0
        assert median(report, subject, "peak_rss_mb") > 10
        assert (out / "runs" / "saturation" / f"{subject}-0.json").is_file()
    # Batching is what the peers differ in: full 500-record batches except one per call.
    assert median(report, "writer", "batch_fill") == 500
    assert median(report, "cubic", "batch_fill") == 500
    assert median(report, "unitary", "batch_fill") == 1
    for peer in ("unitary", "sdk", "cubic"):
        assert isinstance(case["ratios"][peer]["records_per_s"], float)

    targets = {row["target"]: row for row in report["targets"]}
    assert len(targets) >= 8
    saturation = [row for row in report["targets"] if row["source"] == "saturation"]
    assert len(saturation) == 3
    assert all(isinstance(row["met"], bool) for row in saturation)

    assert case["plots"] == ["saturation-timeline.png", "saturation-latency.png"]
    for plot in case["plots"]:
        data = (out / plot).read_bytes()
        assert data.startswith(PNG)
        assert len(data) > 20_000
    markdown = (out / "report.md").read_text()
    assert "## saturation" in markdown
    assert "writer ÷ unitary" in markdown
    assert f"a process that sleeps 10 ms spends {wake['wake_us']:,.1f} µs" in markdown
    assert "![saturation-timeline.png](saturation-timeline.png)" in markdown


def check_rebuild(tmp_path: Path) -> None:
    """The saved runs alone give back the same figures (python -m bench.rebuild)."""
    [out] = list(tmp_path.iterdir())
    before = json.loads((out / "report.json").read_text())
    (out / "report.json").unlink()
    assert rebuild_report([str(out), "--no-plots"]) == 0
    after = json.loads((out / "report.json").read_text())
    for subject in ALL_SUBJECTS:
        for figure in THROUGHPUT:
            assert median(after, subject, figure) == median(before, subject, figure)
    assert after["targets"] == before["targets"]
    assert after["wake_cost"] == before["wake_cost"]
