"""`campaign-writer bench`: a launcher of `python -m bench` in the checkout, clear when the
harness is missing, and never importing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bench.peers.cubic import CubicThrottle
from bench.scenarios import SCENARIOS

from campaign_writer import cli
from campaign_writer.commands import bench as bench_command
from campaign_writer.metrics import Metrics


def test_list_describes_every_scenario(capfd: pytest.CaptureFixture[str]) -> None:
    """`campaign-writer bench --list` (run by `python -m bench` in the checkout) names every
    scenario with its quick and full lengths."""
    assert cli.main(["bench", "--list"]) == 0
    out = capfd.readouterr().out
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


def test_the_installed_package_does_not_import_the_harness(tmp_path: Path) -> None:
    """`campaign-writer bench --list`, run outside the checkout, works without the
    `bench` package ever being imported into the command's own process."""
    script = (
        "import sys\n"
        "from campaign_writer import cli\n"
        "code = cli.main(['bench', '--list'])\n"
        "loaded = [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]\n"
        "print('loaded:', loaded)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "saturation" in done.stdout
    assert "loaded: []" in done.stdout


def test_the_launcher_passes_on_every_argument(tmp_path: Path) -> None:
    """What the command hands `python -m bench` parses there to the same options."""
    argv = ["bench", "--full", "--repeats", "5", "--peers", "writer", "--scale", "0.5"]
    argv += ["--output", "out", "--no-plots", "steady", "outage"]
    ours = cli.build_parser().parse_args(argv)
    passed = bench_command.harness_argv(ours)
    theirs = cli.build_parser().parse_args(["bench", *passed])
    for name in ("mode", "repeats", "peers", "scale", "plots", "list", "scenarios"):
        assert getattr(theirs, name) == getattr(ours, name), name
    assert theirs.output == str(Path("out").resolve())


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
