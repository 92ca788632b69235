"""``campaign-writer status``: queue depth and bytes, oldest event age, dead letters.

Reads the queue file directly (a daemon may be running on it or not), so it works
when the daemon is down, which is when an operator most wants to know.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..queue import QueueStats

__all__ = [
    "HELP",
    "add_queue_arguments",
    "configure",
    "execute",
    "format_age",
    "format_size",
    "queue_location",
]

HELP = "Show the local queue: depth, bytes, oldest event age, dead letters by reason."


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config F`` or ``--queue PATH``: which queue file to look at."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="FILE", help="the writer's config (uses queue.path)")
    where.add_argument(
        "--queue", metavar="PATH", help="the queue file itself (default: var/queue.sqlite3)"
    )


def queue_location(args: argparse.Namespace) -> tuple[Path, int | None]:
    """The queue file and its byte budget (known only from a config); ConfigError if bad."""
    from ..config import QueueConfig, load

    if not args.config:
        return Path(args.queue or QueueConfig.path), None
    config = load(args.config)
    return config.queue.path, config.queue.max_bytes


def configure(parser: argparse.ArgumentParser) -> None:
    add_queue_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def format_size(count: int) -> str:
    """A byte count in B, KiB, MiB or GiB (status and top show sizes alike)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def format_age(seconds: float | None) -> str:
    """Seconds as s, min or h; "-" for none (status and top show ages alike)."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(path: Path, stats: QueueStats) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"queue {path}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("records waiting", f"{stats.depth:,}")
    table.add_row("bytes", format_size(stats.bytes))
    table.add_row("oldest event age", format_age(stats.oldest_age_s))
    table.add_row("dead letters", f"{stats.dead_letters:,}")
    table.add_row("dead-letter bytes", format_size(stats.dead_letter_bytes))
    if stats.max_bytes:
        share = 100.0 * stats.used_bytes / stats.max_bytes
        table.add_row("used of queue.max_bytes", f"{share:.1f}% of {format_size(stats.max_bytes)}")
    console = Console()
    console.print(table)
    if stats.dead_letters_by_reason:
        reasons = Table(title="dead letters by reason", title_justify="left")
        reasons.add_column("reason (fault code)")
        reasons.add_column("count", justify="right")
        for code, count in sorted(stats.dead_letters_by_reason.items(), key=lambda kv: -kv[1]):
            reasons.add_row(code, f"{count:,}")
        console.print(reasons)


def execute(args: argparse.Namespace) -> int:
    import sys

    import orjson

    from ..errors import CampaignWriterError, ConfigError
    from ..queue import read_stats

    try:
        path, max_bytes = queue_location(args)
        stats = read_stats(path, max_bytes=max_bytes)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    except CampaignWriterError as exc:
        print(f"campaign-writer status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({"path": str(path), **stats.as_dict()}).decode())
    else:
        render(path, stats)
    return 0
