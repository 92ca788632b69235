"""The ``campaign-writer`` command: one entry point, one subcommand per module.

This is the only place an event loop is started (uvloop); subcommands hand back a
coroutine and never start one themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from . import __version__

__all__ = ["COMMANDS", "build_parser", "main", "run_coroutine"]

# Subcommand name -> module under campaign_writer.commands, in --help order.
COMMANDS: dict[str, str] = {
    "run": "run",
    "validate": "validate",
    "scaffold": "scaffold",
    "send": "send",
    "status": "status",
    "top": "top",
    "dlq": "dlq",
    "simulate": "simulate",
    "bench": "bench",
}


def _load(name: str) -> Any | None:
    try:
        return importlib.import_module(f"campaign_writer.commands.{COMMANDS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"campaign_writer.commands.{COMMANDS[name]}":
            return None  # a subcommand that has not landed yet
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaign-writer",
        description=(
            "Batching, throttled writer for Adobe Campaign v8: takes events from HTTP and "
            "message queues, keeps them in a durable local queue, and writes them to "
            "staging schemas through one throttle calibrated to the tenant's TPS limit."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        child = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(child)
        child.set_defaults(_execute=module.execute)
    return parser


def run_coroutine(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run ``coroutine`` to completion on uvloop and return its exit code."""
    import gc

    import uvloop

    # The daemon and the simulator allocate a few short-lived objects per record:
    # collect the young generation less often. (The daemon also freezes what its
    # start made, once it has started: commands/run.py.)
    gc.set_threshold(50_000, 20, 20)
    return uvloop.run(coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args._execute(args)
        if asyncio.iscoroutine(result):
            result = run_coroutine(result)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
