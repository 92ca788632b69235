"""The scale-out scenario end to end, shortened: real writer processes on one simulator."""

from __future__ import annotations

import json
from pathlib import Path

from bench.runner import Options, run

from tests.support.services import require_command


async def test_scale_out_runs_every_case_with_the_installed_writer(tmp_path: Path) -> None:
    """Three split writers per case (backlog x3; idle, light, backlog) give a report with
    the fleet figures from the call log; the light writer was fed and delivered; the
    Redis-loss case runs the shared subject, or says why the installed writer cannot."""
    require_command("redis-server", "redis-server")
    options = Options(["scale-out"], "quick", 1, ("split",), tmp_path, 0.25, plots=False)
    assert await run(options) == 0
    check_report(tmp_path)


def check_report(tmp_path: Path) -> None:
    [out] = list(tmp_path.iterdir())
    report = json.loads((out / "report.json").read_text())
    for name in ("scale-out", "scale-out/uneven"):
        case = report["cases"][name]
        assert case["errors"] == [] and case["skipped"] == {}
        assert list(case["subjects"]) == ["split"]
        figures = {k: v["median"] for k, v in case["subjects"]["split"]["figures"].items()}
        assert 0.1 < figures["utilisation"] <= 1.0
        assert figures["max_ok_calls_in_1s"] <= 20  # the simulator enforces its limit
        assert figures["redis_round_trips_per_call"] is None  # no shared budget
        assert figures["window_s"] == 5.0
    uneven = json.loads((out / "runs" / "scale-out-uneven" / "split-0.json").read_text())
    assert uneven["roles"] == ["idle", "light", "backlog"]
    assert uneven["fed"]["1"]["sent"] > 0 and uneven["fed"]["1"]["error"] is None
    idle, light, backlog = (m["final"] for m in uneven["members"])
    assert idle["calls"] == 0 and idle["queue_depth"] == 0
    assert 0 < light["delivered"] <= uneven["fed"]["1"]["sent"]
    assert backlog["delivered"] > light["delivered"]
    loss = report["cases"]["scale-out/redis-loss"]
    assert loss["errors"] == []
    if loss["skipped"]:  # a writer without [campaign.budget]
        assert "campaign.budget" in loss["skipped"]["shared"]
    else:
        shared = {k: v["median"] for k, v in loss["subjects"]["shared"]["figures"].items()}
        assert shared["redis_round_trips_per_call"] is not None
        assert shared["fallback_members"] >= 1
    markdown = (out / "report.md").read_text()
    assert "## scale-out/uneven" in markdown
    assert "most successful calls in any 1 s window" in markdown
