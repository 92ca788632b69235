"""``campaign-writer bench``: a thin launcher of ``python -m bench`` in a source checkout.

The harness is the ``bench`` package at the root of the repository (next to
``src/``), not part of the installed package: it drives the simulator, the writer
and its peers (one of them needs Node.js) as separate processes and writes
``bench/results/<timestamp>/``. This command finds the checkout relative to this
file (an editable install, as ``make install`` does) or in the current directory,
says so clearly when neither has it, and otherwise runs ``python -m bench`` there as
a child process with the same arguments. The installed package never imports the
harness: the harness imports the package, not the other way round.

The arguments are defined here (the harness's ``python -m bench`` uses
:func:`configure` too), so that ``campaign-writer bench --help`` and a misspelt
scenario are answered without a checkout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["HELP", "SCENARIOS", "configure", "execute", "find_harness", "harness_argv"]

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
    "method-limits",
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
        "scale-out, auto-limit and method-limits scenarios run their own (shared,storm,split; "
        "auto,known; per-method,tenant-only): name some of those to run only them",
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


def harness_argv(args: argparse.Namespace) -> list[str]:
    """The arguments for ``python -m bench`` that say what ``args`` say (a relative
    ``--output`` made absolute, since the harness runs in the checkout)."""
    argv: list[str] = []
    if args.mode is not None:
        argv.append(f"--{args.mode}")
    if args.repeats is not None:
        argv += ["--repeats", str(args.repeats)]
    argv += ["--peers", args.peers, "--scale", repr(args.scale)]
    if args.output is not None:
        argv += ["--output", str(Path(args.output).resolve())]
    if not args.plots:
        argv.append("--no-plots")
    if args.list:
        argv.append("--list")
    return [*argv, *args.scenarios]


def execute(args: argparse.Namespace) -> int:
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    root = find_harness()
    if root is None:
        here = Path(__file__).resolve().parent
        print(MISSING.format(here=here, cwd=Path.cwd()), file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "bench", *harness_argv(args)]
    return subprocess.run(command, cwd=root, check=False).returncode
