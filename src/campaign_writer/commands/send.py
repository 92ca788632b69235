"""``campaign-writer send``: post NDJSON events from a file or stdin to a running writer.

Lines go in batches (1,000 by default), one POST each, in order and one at a time so
the writer sees the events in the order of the file. Rejected lines are printed with
their line number and reason; a full queue (503) is waited out as its Retry-After
says. The exit code is 0 only when every event was accepted.

The intake token, when the writer wants one, comes from ``--token-file`` or the
``CAMPAIGN_WRITER_TOKEN`` environment variable, never from the command line, where
other users could read it in the process list.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import IO, Any, Final

__all__ = ["HELP", "TOKEN_ENV", "configure", "execute"]

HELP = "Send NDJSON events (FILE, or - for stdin) to a running writer's HTTP intake."

TOKEN_ENV: Final = "CAMPAIGN_WRITER_TOKEN"  # noqa: S105 - a variable's name, not a token
_SHOWN_REJECTIONS: Final = 50
_MAX_RETRY_WAIT_S: Final = 30.0
_MIN_RETRY_WAIT_S: Final = 0.1  # never hammer a full writer, whatever Retry-After says


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="NDJSON file, or - to read stdin")
    parser.add_argument(
        "--url", help="the writer's intake, e.g. http://127.0.0.1:8080 (default: from --config)"
    )
    parser.add_argument("--config", metavar="FILE", help="take the intake address from here")
    parser.add_argument(
        "--token-file", metavar="PATH", help=f"file holding the intake token (or ${TOKEN_ENV})"
    )
    parser.add_argument("--batch", type=int, default=1000, help="lines per request (1000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    parser.add_argument(
        "--retries", type=int, default=20, help="times to wait out a full queue (503) per batch"
    )


def execute(args: argparse.Namespace) -> int | Coroutine[Any, Any, int]:
    from ..errors import ConfigError

    try:
        endpoint, token = _target(args)
        handle: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 - closed by _send
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"campaign-writer send: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    size = None if handle is sys.stdin.buffer else os.fstat(handle.fileno()).st_size
    return _send(args, handle, size, endpoint, token)


class _Totals:
    def __init__(self) -> None:
        self.sent = 0
        self.accepted = 0
        self.rejected = 0
        self.failed = 0
        self.shown = 0

    def reject(self, where: str, error: str) -> None:
        self.rejected += 1
        if self.shown < _SHOWN_REJECTIONS:
            print(f"{where}: {error}", file=sys.stderr)
            self.shown += 1


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The intake URL and token; ConfigError or OSError when they cannot be had."""
    url = args.url
    token: str | None = None
    if url is None and args.config:
        from ..config import load

        config = load(args.config)
        url = f"http://{config.http.listen}"
        token = config.http.token.reveal() if config.http.token else None
    url = (url or "http://127.0.0.1:8080").rstrip("/")
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    elif os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
    return url + "/v1/events", token


def _read_batch(handle: IO[bytes], count: int) -> list[bytes]:
    lines = []
    for line in handle:
        lines.append(line if line.endswith(b"\n") else line + b"\n")
        if len(lines) >= count:
            break
    return lines


async def _send(
    args: argparse.Namespace, handle: IO[bytes], size: int | None, endpoint: str, token: str | None
) -> int:
    try:
        totals = await _post_all(args, handle, size, endpoint, token)
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    print(
        f"sent {totals.sent} events to {endpoint}: {totals.accepted} accepted, "
        f"{totals.rejected} rejected, {totals.failed} failed"
    )
    return 0 if totals.rejected == 0 and totals.failed == 0 else 1


async def _post_all(
    args: argparse.Namespace, handle: IO[bytes], size: int | None, endpoint: str, token: str | None
) -> _Totals:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from ..campaign.transport import HttpTransport

    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    totals = _Totals()
    transport = HttpTransport(timeout_s=args.timeout, max_response_bytes=64 * 1024 * 1024)
    await transport.start()
    console = Console(stderr=True)
    columns = (
        TextColumn("sending"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[accepted]} accepted, {task.fields[rejected]} rejected"),
    )
    try:
        with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
            task = progress.add_task("send", total=size, accepted=0, rejected=0)
            line_number = 0
            while True:
                lines = await asyncio.to_thread(_read_batch, handle, max(1, args.batch))
                if not lines:
                    break
                first = line_number + 1
                line_number += len(lines)
                ok = await _post_batch(transport, endpoint, headers, lines, first, args, totals)
                progress.update(
                    task,
                    advance=sum(len(line) for line in lines),
                    accepted=totals.accepted,
                    rejected=totals.rejected,
                )
                if not ok:
                    # Stop rather than skip: later lines must not overtake earlier ones.
                    print(
                        f"stopped after line {line_number}; later lines not sent", file=sys.stderr
                    )
                    break
    finally:
        await transport.close()
    return totals


async def _post_batch(
    transport: Any,
    endpoint: str,
    headers: dict[str, str],
    lines: list[bytes],
    first: int,
    args: argparse.Namespace,
    totals: _Totals,
) -> bool:
    """Post one batch; False when it failed as a whole and sending should stop."""
    import orjson

    from ..errors import CampaignWriterError

    events = sum(1 for line in lines if line.strip())
    body = b"".join(lines)
    for _attempt in range(max(0, args.retries) + 1):
        try:
            response = await transport.post(endpoint, body, headers)
        except CampaignWriterError as exc:
            print(f"lines {first}-{first + len(lines) - 1}: not sent: {exc}", file=sys.stderr)
            totals.failed += events
            return False
        if response.status != 503:
            break
        retry_after = response.headers.get("Retry-After", "1")
        try:
            delay = min(_MAX_RETRY_WAIT_S, max(_MIN_RETRY_WAIT_S, float(retry_after)))
        except ValueError:
            delay = 1.0
        await asyncio.sleep(delay)
    totals.sent += events
    try:
        answer = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        answer = {}
    if response.status in (202, 400) and isinstance(answer, dict) and "rejected" in answer:
        totals.accepted += int(answer.get("accepted", 0))
        for rejection in answer["rejected"]:
            index = rejection.get("index")
            where = (
                f"line {first + index}"
                if isinstance(index, int)
                else f"lines {first}-{first + len(lines) - 1}"
            )
            totals.reject(where, str(rejection.get("error")))
        return True
    reason = answer.get("error") if isinstance(answer, dict) else None
    print(
        f"lines {first}-{first + len(lines) - 1}: HTTP {response.status}"
        f"{': ' + str(reason) if reason else ''}",
        file=sys.stderr,
    )
    totals.failed += events
    return False
