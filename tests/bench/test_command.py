"""`campaign-writer bench`: found from the checkout, clear when the harness is missing."""

from __future__ import annotations

import pytest
from bench.peers.cubic import CubicThrottle
from bench.scenarios import SCENARIOS

from campaign_writer import cli
from campaign_writer.commands import bench as bench_command
from campaign_writer.metrics import Metrics


def test_list_describes_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    """`campaign-writer bench --list` names every scenario with its quick and full lengths."""
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"\n{name}\n" in f"\n{out}"
    assert "quick:" in out


def test_missing_harness_is_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside a checkout the command exits 2 and says the bench/ directory is needed."""
    monkeypatch.setattr(bench_command, "find_harness", lambda: None)
    assert cli.main(["bench", "saturation"]) == 2
    assert "bench/runner.py" in capsys.readouterr().err


def test_command_knows_the_harness_scenarios() -> None:
    """The command's scenario names are exactly the harness's."""
    assert bench_command.SCENARIOS == SCENARIOS
    assert bench_command.find_harness() is not None


def test_unknown_scenario_is_refused() -> None:
    """A misspelt scenario stops before anything runs, naming the known ones."""
    with pytest.raises(SystemExit, match="known: saturation"):
        cli.main(["bench", "saturaton"])


async def test_cubic_throttle_is_off_until_the_first_429() -> None:
    """As in botocore's adaptive mode, nothing is paced before a 429; after one the token
    bucket's CUBIC rate, below the limit, paces calls and there is no sink-wide pause."""
    throttle = CubicThrottle(20, Metrics())
    assert not throttle.limiting
    for _ in range(50):
        await throttle.acquire()
    assert throttle.rate() == 20
    assert throttle.on_throttled(retry_after=3.0) == 0.0
    assert throttle.limiting
    assert throttle.rate() < 20
    assert throttle.paused_for == 0.0
