"""HTTP intake into the durable queue: events per second and CPU per event.

Starts the intake (HttpIntake + DurableQueue with the example routes, uvloop, as the
daemon runs them) in a child process, posts pre-built NDJSON bodies of ``--batch``
events from this process with ``--concurrency`` requests in flight, and reports:

* events/s: events accepted (202, committed) per second of wall time;
* CPU per event: the intake process's user+system CPU (all its threads, SQLite's
  included) over the measured posts, divided by the events;
* events per commit: how many events each fsync carried (group commit at work);
* the CPU share (cores) of the intake and of this load generator, which shares the
  machine and can be what limits the rate;
* request latency p50 / p99.

Nothing consumes the queue during the run, so it grows; ``--events`` bounds it.
Run: ``.venv/bin/python bench/intake.py [--events 200000] [--synchronous FULL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.toml"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --- the intake process --------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    from campaign_writer.config import load
    from campaign_writer.metrics import Metrics
    from campaign_writer.queue import DurableQueue
    from campaign_writer.router import Router
    from campaign_writer.sources.http import HttpIntake

    config = load(
        EXAMPLE,
        overrides=[
            "http.listen=127.0.0.1:0",
            f'queue.path="{args.queue}"',
            f"queue.synchronous={args.synchronous}",
            "http.max_body_bytes=64MiB",
        ],
    )
    queue = await DurableQueue.open(
        config.queue.path,
        max_bytes=8 << 30,
        synchronous=config.queue.synchronous,
        commit_window_s=config.queue.commit_window_ms / 1000,
    )
    intake = HttpIntake(config.http, Router.from_config(config), queue, Metrics())
    await intake.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"port": intake.port}), flush=True)
    await stop.wait()
    await intake.close()
    stats = queue.stats()
    print(json.dumps({"commits": queue.commits, "depth": stats.depth}), flush=True)
    await queue.close()


# --- the load generator ----------------------------------------------------------------


def bodies(count: int, batch: int) -> list[bytes]:
    """NDJSON bodies of ``batch`` events: 4 samples to 1 recipient, unique keys."""
    built = []
    serial = 0
    for _ in range(count):
        lines = []
        for _ in range(batch):
            serial += 1
            if serial % 5:
                event = {
                    "type": "sample",
                    "id": f"S-{serial:012d}",
                    "testcol1": f"value one of {serial}",
                    "testcol2": "the second column, a little longer",
                }
            else:
                event = {
                    "type": "recipient",
                    "email": f"user{serial}@example.com",
                    "firstName": "Ada",
                    "lastName": "Lovelace",
                }
            lines.append(orjson.dumps(event))
        built.append(b"\n".join(lines) + b"\n")
    return built


async def post_all(
    url: str, payloads: list[bytes], concurrency: int
) -> tuple[int, float, list[float]]:
    """Post every body; returns events accepted, wall seconds and per-request latencies."""
    headers = {"Content-Type": "application/x-ndjson"}
    latencies: list[float] = []
    accepted = 0
    work = iter(payloads)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal accepted
            for body in work:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    answer = orjson.loads(await response.read())
                    if response.status != 202:
                        raise RuntimeError(f"HTTP {response.status}: {answer}")
                latencies.append(time.perf_counter() - started)
                accepted += answer["accepted"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return accepted, time.perf_counter() - started, latencies


async def measure(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as directory:
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            "--queue",
            str(Path(directory) / "queue.sqlite3"),
            "--synchronous",
            args.synchronous,
            stdout=asyncio.subprocess.PIPE,
        )
        assert server.stdout is not None
        port = json.loads(await server.stdout.readline())["port"]
        url = f"http://127.0.0.1:{port}/v1/events"
        posts = max(1, args.events // args.batch)
        payloads = bodies(posts + args.warmup, args.batch)
        await post_all(url, payloads[: args.warmup], args.concurrency)
        cpu_before = cpu_seconds(server.pid)
        client_before = cpu_seconds(os.getpid())
        accepted, wall, latencies = await post_all(url, payloads[args.warmup :], args.concurrency)
        cpu = cpu_seconds(server.pid) - cpu_before
        client_cpu = cpu_seconds(os.getpid()) - client_before
        server.send_signal(signal.SIGTERM)
        final = json.loads(await server.stdout.readline())
        await server.wait()
    latencies.sort()
    return {
        "events": accepted,
        "wall_s": round(wall, 3),
        "events_per_s": round(accepted / wall),
        "cpu_us_per_event": round(cpu / accepted * 1e6, 2),
        "intake_cpu_share": round(cpu / wall, 2),
        "load_generator_cpu_share": round(client_cpu / wall, 2),
        "events_per_commit": round((accepted + args.warmup * args.batch) / final["commits"], 1),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per NDJSON post")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--warmup", type=int, default=10, help="posts before measuring")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.serve:
        uvloop.run(serve(args))
        return
    figures = uvloop.run(measure(args))
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"HTTP intake, {args.batch}-event NDJSON posts, {args.concurrency} in flight, "
        f"synchronous={args.synchronous}"
    )
    for name, value in figures.items():
        print(f"  {name:<20} {value}")


if __name__ == "__main__":
    main()
