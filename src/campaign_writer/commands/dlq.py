"""``campaign-writer dlq``: list, show, replay and purge the dead-letter queue.

Works on the queue file while the daemon runs. ``replay`` re-maps each original
event through the routes of the config given *now*, so it is how events refused
before a config fix are sent again; ``purge`` deletes for good and asks first.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from .status import add_queue_arguments, queue_location

if TYPE_CHECKING:
    from ..deadletter import DeadLetterStore

__all__ = ["HELP", "configure", "execute"]

HELP = "Dead-letter queue: list, show ID, replay (through the current routes), purge."


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id", dest="ids", type=int, action="append", metavar="ID", help="only this entry"
    )
    parser.add_argument("--code", metavar="CODE", help="only entries with this fault code")


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list entries, oldest first")
    add_queue_arguments(listing)
    listing.add_argument("--limit", type=int, default=50, help="entries to show (default 50)")
    listing.add_argument("--after", type=int, default=0, metavar="ID", help="start after id")
    listing.add_argument("--code", metavar="CODE", help="only entries with this fault code")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="one entry in full, with its original event")
    add_queue_arguments(show)
    show.add_argument("id", type=int, metavar="ID")
    replay = actions.add_parser(
        "replay", help="re-map entries with the config's routes and queue them again"
    )
    replay.add_argument("--config", required=True, metavar="FILE", help="the (fixed) config")
    _filters(replay)
    purge = actions.add_parser("purge", help="delete entries for good (asks first)")
    add_queue_arguments(purge)
    _filters(purge)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def execute(args: argparse.Namespace) -> int:
    from ..deadletter import DeadLetterStore
    from ..errors import CampaignWriterError, ConfigError

    try:
        if args.action == "replay":
            return _replay(args)
        path, max_bytes = queue_location(args)
        with DeadLetterStore(path, max_bytes=max_bytes) as store:
            if args.action == "list":
                return _list(store, args)
            if args.action == "show":
                return _show(store, args.id)
            return _purge(store, args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    except CampaignWriterError as exc:
        print(f"campaign-writer dlq {args.action}: {exc}", file=sys.stderr)
        return 1


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _list(store: DeadLetterStore, args: argparse.Namespace) -> int:
    import orjson
    from rich.console import Console
    from rich.table import Table

    entries = store.page(limit=args.limit, after=args.after, code=args.code)
    if args.json:
        for entry in entries:
            print(orjson.dumps(entry.as_dict()).decode())
        return 0
    total = store.count(code=args.code)
    table = Table(title=f"dead letters in {store.path}: {total}", title_justify="left")
    for column in ("id", "dead at", "code", "status", "source", "key", "reason"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            str(entry.id),
            _when(entry.dead_at),
            entry.code,
            "" if entry.status is None else str(entry.status),
            entry.source,
            entry.key or "",
            entry.reason if len(entry.reason) <= 120 else entry.reason[:117] + "...",
        )
    Console().print(table)
    if total > len(entries) and entries:
        print(f"... {total - len(entries)} more; next page: --after {entries[-1].id}")
    return 0


def _show(store: DeadLetterStore, entry_id: int) -> int:
    import orjson

    entry = store.get(entry_id)
    if entry is None:
        print(f"no dead letter with id {entry_id} in {store.path}", file=sys.stderr)
        return 1
    print(orjson.dumps(entry.as_dict(full=True), option=orjson.OPT_INDENT_2).decode())
    return 0


def _purge(store: DeadLetterStore, args: argparse.Namespace) -> int:
    count = store.count(ids=args.ids, code=args.code)
    if count == 0:
        print("nothing to purge")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"refusing to purge {count} entries without --yes", file=sys.stderr)
            return 1
        answer = input(f"Delete {count} dead letters from {store.path} for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return 1
    purged = store.purge(ids=args.ids, code=args.code)
    print(f"purged {purged} dead letters")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ..config import load
    from ..deadletter import DeadLetterStore
    from ..router import Router

    config = load(args.config)
    router = Router.from_config(config)
    with DeadLetterStore(config.queue.path, max_bytes=config.queue.max_bytes) as store:
        total = store.count(ids=args.ids, code=args.code)
        if total == 0:
            print("nothing to replay")
            return 0
        console = Console(stderr=True)
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=not console.is_terminal,
        ) as progress:
            task = progress.add_task("replay", total=total)
            result = store.replay(
                router,
                ids=args.ids,
                code=args.code,
                progress=lambda done: progress.advance(task, done),
            )
    print(f"replayed {result.replayed} of {total} dead letters into the queue")
    if result.failed:
        print(f"{len(result.failed)} still fail with the current routes (kept):")
        for entry_id, reason in result.failed[:20]:
            print(f"  {entry_id}: {reason}")
        if len(result.failed) > 20:
            print(f"  ... and {len(result.failed) - 20} more")
        return 1
    return 0
