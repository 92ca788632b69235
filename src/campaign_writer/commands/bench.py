"""``campaign-writer bench``: the benchmark harness, run from a source checkout.

The harness is the ``bench`` package at the root of the repository (next to
``src/``), not part of the installed package: it drives the simulator, the writer
and its peers (one of them needs Node.js) as separate processes and writes
``bench/results/<timestamp>/``. This command finds that package relative to this
file (an editable install from a checkout, as ``make install`` does) or in the
current directory, and says so clearly when neither has it.

The arguments are defined here, not in the harness, so that building the CLI
never imports the harness (``campaign-writer run`` must not depend on it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

__all__ = ["HELP", "SCENARIOS", "configure", "execute", "find_harness"]

HELP = "Run the benchmark scenarios against the simulator (from a source checkout)."

# Mirrors bench/scenarios.py; `campaign-writer bench --list` prints what each does.
SCENARIOS = (
    "saturation",
    "steady",
    "slow-campaign",
    "limit-drop",
    "outage",
    "faults",
    "limiter-models",
    "intake",
    "memory",
    "scale-out",
    "auto-limit",
)

MISSING = (
    "campaign-writer bench: the benchmark harness (bench/runner.py of the source "
    "repository) was found neither above {here} nor in {cwd}. Run it from a checkout of "
    "campaign-writer installed with `make install` (pip install -e '.[test,bench]')."
)


def find_harness() -> Path | None:
    """The repository root holding ``bench/runner.py``, or None."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "bench" / "runner.py").is_file():
            return root
    return None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="scenarios to run: " + ", ".join(SCENARIOS) + " (default: saturation and "
        "steady in quick mode, all of them in full mode)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="short runs, one repeat (the default; about two minutes for the default set)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="the durations ops run before a rise in volume, 3 repeats",
    )
    parser.add_argument("--repeats", type=int, help="repeats of each case (quick: 1, full: 3)")
    parser.add_argument(
        "--peers",
        default="writer,unitary,sdk,cubic",
        help="subjects to run, comma-separated (default: writer,unitary,sdk,cubic); the "
        "scale-out and auto-limit scenarios run their own (shared,storm,split and auto,known): "
        "name some of those to run only them",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="where the <timestamp> directory goes (default: bench/results of the checkout)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every duration by this factor (e.g. 0.5 for a smoke test)",
    )
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.add_argument(
        "--list", action="store_true", help="describe every scenario and its cases, and exit"
    )


def execute(args: argparse.Namespace) -> Coroutine[Any, Any, int] | int:
    root = find_harness()
    if root is None:
        here = Path(__file__).resolve().parent
        print(MISSING.format(here=here, cwd=Path.cwd()), file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    runner = importlib.import_module("bench.runner")
    if args.list:
        print(runner.listing())
        return 0
    coroutine: Coroutine[Any, Any, int] = runner.run(runner.options_from(args, root))
    return coroutine
