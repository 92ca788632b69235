"""What this machine charges a process for waking up: the floor under the CPU figures.

Records per writer CPU-second at 50 events per post depend as much on the machine as
on the writer: every post wakes the writer from sleep, and on the VM this was written
on a wake after 10 ms asleep cost 60 to 235 µs of CPU, and one after 1 ms 35 to 80.
Two probes, each in a fresh process, put a figure on it so that runs on different
machines can be compared:

* ``sleep``: a uvloop loop sleeping ``interval`` again and again; its CPU per wake
  (uvloop rounds delays to whole milliseconds, so 1 ms is the shortest real sleep;
  the probe checks that it did sleep);
* ``responder``: an HTTP/1.1 responder that reads each request and answers 202 with a
  fixed body, doing nothing else, fed by the benchmark's own HTTP sink at the steady
  case's post interval; its CPU per post. Nothing a writer can do costs less.

``python -m bench.wakecost`` prints both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from .load import Events, HttpSink
from .procs import Child

__all__ = ["measure", "responder_cpu_per_post", "sleep_cpu_per_wake"]

_READY = "responder listening on "
_ANSWER = (
    b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
    b'{"accepted":50}\n'
)


class _Responder(asyncio.Protocol):
    """Answers every complete request (headers and Content-Length body) with 202."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's TCPTransport is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    # The sink posts bytes, so always with a length; anything else would
                    # be answered early and its chunks misread as requests.
                    raise ValueError("the wake-cost responder reads Content-Length bodies only")
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.transport.write(_ANSWER)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Responder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"{_READY}http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


async def _sleeps(interval_s: float, count: int) -> tuple[float, float]:
    await asyncio.sleep(interval_s)  # the first wake also pays for start-up
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await asyncio.sleep(interval_s)
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count


async def sleep_cpu_per_wake(interval_s: float, count: int, log_path: Path) -> tuple[float, float]:
    """CPU and wall seconds per wake of a fresh uvloop process sleeping ``interval_s``
    each time. ValueError if it did not sleep that long (uvloop runs a sleep shorter
    than half a millisecond at once)."""
    argv = [sys.executable, "-m", "bench.wakecost", "sleep", str(interval_s), str(count)]
    child = Child("wakecost-sleep", argv, log_path)
    line = await child.start("per wake ", timeout_s=60.0 + interval_s * count * 2)
    await child.stop()
    cpu, wall = (float(x) for x in line.removeprefix("per wake ").split())
    if wall < interval_s * 0.9:
        raise ValueError(f"asked to sleep {interval_s} s, woke after {wall:.6f} s")
    return cpu, wall


async def responder_cpu_per_post(
    tick_s: float, posts: int, log_path: Path, events_per_post: int = 50
) -> float:
    """CPU seconds per post of the do-nothing responder, posts ``tick_s`` apart."""
    argv = [sys.executable, "-m", "bench.wakecost", "responder"]
    child = Child("wakecost-responder", argv, log_path)
    url = (await child.start(_READY)).removeprefix(_READY)
    sink = HttpSink(url)
    events = Events()
    try:
        for _ in range(5):  # connection set up and code paths warm, outside the count
            await sink(events.take(events_per_post))
        first = _cpu_s(child.pid)
        for _ in range(posts):
            await sink(events.take(events_per_post))
            await asyncio.sleep(tick_s)
        spent = _cpu_s(child.pid) - first
    finally:
        await sink.close()
        await child.stop()
    return spent / posts


def _cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` to the nanosecond (/proc/<pid>/stat counts
    10 ms ticks). Threads that ended are not counted: uvloop's stay for the process's
    life."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def measure(
    work: Path, *, tick_s: float = 0.01, short_s: float = 0.001, posts: int = 300
) -> dict[str, Any]:
    """Both probes, ``posts`` wakes or posts each; in microseconds, as the report prints."""
    long_wake, _ = await sleep_cpu_per_wake(tick_s, posts, work / "wakecost-sleep.log")
    short_wake, _ = await sleep_cpu_per_wake(short_s, posts, work / "wakecost-sleep-short.log")
    per_post = await responder_cpu_per_post(tick_s, posts, work / "wakecost-responder.log")
    return {
        "tick_ms": tick_s * 1000,
        "short_ms": short_s * 1000,
        "count": posts,
        "wake_us": round(long_wake * 1e6, 1),
        "short_wake_us": round(short_wake * 1e6, 1),
        "responder_us_per_post": round(per_post * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    import uvloop

    parser = argparse.ArgumentParser(prog="python -m bench.wakecost", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sleep = sub.add_parser("sleep", help="print the CPU per wake of repeated sleeps")
    sleep.add_argument("interval_s", type=float)
    sleep.add_argument("count", type=int)
    sub.add_parser("responder", help="serve 202s on 127.0.0.1 until killed")
    args = parser.parse_args(argv)
    if args.command == "sleep":
        cpu, wall = uvloop.run(_sleeps(args.interval_s, args.count))
        print(f"per wake {cpu:.9f} {wall:.9f}", flush=True)
        return 0
    if args.command == "responder":
        uvloop.run(_serve())
        return 0
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        figures = uvloop.run(measure(Path(work)))
    print(
        f"waking after {figures['tick_ms']:g} ms asleep: {figures['wake_us']:.1f} µs CPU "
        f"(after {figures['short_ms']:g} ms: {figures['short_wake_us']:.1f} µs); "
        "an empty HTTP responder: "
        f"{figures['responder_us_per_post']:.1f} µs CPU per post"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
