"""The per-record work of intake, in one process, for instruction counts.

A small fixed workload that runs the same way on any checkout (``PYTHONPATH=<checkout>/src``),
so that two commits can be compared under ``valgrind --tool=callgrind``, which counts
instructions rather than seconds and so does not move with the other load on the machine:

* ``route``: NDJSON bodies split into lines and mapped by the router (``route_lines``);
* ``queue``: the same, then each batch appended to the durable queue, leased back (from the
  in-memory tail) and acknowledged, one batch at a time, as intake and delivery do in a
  steady flow;
* ``http``: the HTTP intake in this process, posted to one body at a time over 127.0.0.1 by
  an aiohttp client in this process, then each batch leased and acknowledged.

Every step is awaited before the next, and the commit window is off, so two runs of the same
command do the same work. A run does some warm-up batches first; the instructions per event
come from two runs of different lengths (:func:`per_event`), which cancels the start-up::

    valgrind --tool=callgrind --callgrind-out-file=a.out python -m bench.hotpath --events 2000
    valgrind --tool=callgrind --callgrind-out-file=b.out python -m bench.hotpath --events 7000
    python -m bench.hotpath --per-event a.out b.out

Without valgrind it prints the CPU time per event, which is noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.toml"
_TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)

__all__ = ["callgrind_total", "per_event"]


def callgrind_total(text: bytes) -> int:
    """The instructions a callgrind output file counted (its ``summary:`` line)."""
    found = _TOTALS.search(text)
    if found is None:
        raise ValueError("no summary or totals line: not a callgrind output file")
    return int(found.group(1))


def per_event(short: tuple[int, int], long: tuple[int, int]) -> float:
    """Instructions per event from two runs, each ``(events, instructions)``: the slope
    between them, so that what both runs do once (start-up, warm-up) cancels."""
    (events_a, count_a), (events_b, count_b) = sorted((short, long))
    if events_b == events_a:
        raise ValueError("the two runs must have different event counts")
    return (count_b - count_a) / (events_b - events_a)


def bodies(count: int, batch: int) -> list[bytes]:
    """NDJSON bodies of ``batch`` events, as bench/intake.py posts them."""
    from bench.intake import bodies as intake_bodies

    return intake_bodies(count, batch)


def _lines(body: bytes) -> list[bytes]:
    return body.split(b"\n")


async def _drain(queue: Any, limit: int) -> int:
    leased = await queue.lease(limit)
    if leased:
        await queue.ack([record.id for record in leased])
    return len(leased)


async def _run_queue(args: argparse.Namespace, router: Any, queue: Any, work: list[bytes]) -> int:
    done = 0
    for body in work:
        routing = router.route_lines(_lines(body), source="http", created_at=time.time())
        if not args.route_only:
            await queue.append(routing.items)
            done += await _drain(queue, args.batch) if args.drain else len(routing.items)
        else:
            done += len(routing.items)
    return done


async def _run_http(
    args: argparse.Namespace, config: Any, router: Any, queue: Any, work: list[bytes]
) -> int:
    import aiohttp

    from campaign_writer.metrics import Metrics
    from campaign_writer.sources.http import HttpIntake

    # Before the config slices (issue 19, step 4) the intake took the whole config.
    params = list(inspect.signature(HttpIntake.__init__).parameters)
    settings = config if params[1] == "config" else config.http
    intake = HttpIntake(settings, router, queue, Metrics())
    await intake.start()
    url = f"http://127.0.0.1:{intake.port}/v1/events"
    headers = {"Content-Type": "application/x-ndjson"}
    done = 0
    try:
        async with aiohttp.ClientSession() as session:
            for body in work:
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                    await response.read()
                done += await _drain(queue, args.batch) if args.drain else args.batch
    finally:
        await intake.close()
    return done


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from campaign_writer.config import load
    from campaign_writer.queue import DurableQueue
    from campaign_writer.router import Router

    posts = max(1, args.events // args.batch)
    payloads = bodies(posts + args.warmup, args.batch)
    with tempfile.TemporaryDirectory(prefix="bench-hotpath-") as directory:
        config = load(
            EXAMPLE,
            overrides=[
                "http.listen=127.0.0.1:0",
                f'queue.path="{Path(directory) / "queue.sqlite3"}"',
                "http.max_body_bytes=64MiB",
            ],
        )
        make = getattr(Router, "from_config", Router)
        router = make(config)
        queue = await DurableQueue.open(
            config.queue.path, max_bytes=8 << 30, synchronous="FULL", commit_window_s=0.0
        )
        try:
            warm, work = payloads[: args.warmup], payloads[args.warmup :]
            if args.mode == "http":
                await _run_http(args, config, router, queue, warm)
                started = time.process_time()
                done = await _run_http(args, config, router, queue, work)
            else:
                await _run_queue(args, router, queue, warm)
                started = time.process_time()
                done = await _run_queue(args, router, queue, work)
            cpu = time.process_time() - started
        finally:
            await queue.close()
    return {
        "mode": args.mode + ("/route-only" if args.route_only else ""),
        "events": done,
        "cpu_us_per_event": round(cpu / max(done, 1) * 1e6, 2),
    }


def _per_event_files(paths: Sequence[str]) -> None:
    runs = []
    for path in paths:
        text = Path(path).read_bytes()
        events = re.search(rb"^cmd:.*--events[ =](\d+)", text, re.MULTILINE)
        if events is None:
            raise SystemExit(f"{path}: its cmd: line names no --events")
        runs.append((int(events.group(1)), callgrind_total(text)))
    print(json.dumps({"runs": runs, "instructions_per_event": round(per_event(*runs))}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100, help="events per body")
    parser.add_argument("--warmup", type=int, default=10, help="bodies before measuring")
    parser.add_argument("--mode", choices=("queue", "http"), default="queue")
    parser.add_argument("--route-only", action="store_true", help="queue mode: map, no queue")
    parser.add_argument(
        "--no-drain",
        dest="drain",
        action="store_false",
        help="append only, as bench/intake.py does (nothing leases or acknowledges)",
    )
    parser.add_argument(
        "--per-event",
        nargs=2,
        metavar="CALLGRIND_OUT",
        help="print instructions per event from two callgrind outputs of different --events",
    )
    args = parser.parse_args(argv)
    if args.per_event:
        _per_event_files(args.per_event)
        return
    import uvloop

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main(sys.argv[1:])
