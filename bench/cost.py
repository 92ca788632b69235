"""Cost as the work grows: the writer's CPU per record and its memory, point by point.

``python -m bench.cost`` runs the writer daemon (``campaign-writer run``) against the
simulator, each point on a queue file built beforehand with the queue's own append API
(no HTTP), and measures while the writer delivers:

* ``lanes``: 1, 10 and 100 lanes (one route per lane, each on its own staging schema,
  Ingest), the records spread round-robin over them;
* ``keys``: one lane whose records cycle over K distinct keys (100 ... 10,000, and every
  key distinct), so that a key's later records merge into its pending entry, and are held
  back while a batch with that key is in flight;
* ``backlog``: backlogs of 100k, 1M (and, when asked, 10M) queued events in one lane; the
  writer delivers the first ``--measure`` of them, so what grows is the file, not the
  work measured;
* ``backlog-crash``: the same files marked as a crash leaves them (not closed cleanly), so
  that the writer checks the file when it opens it.

Per point: writer CPU-seconds (user + system, from ``/proc``) from ready until
``--measure`` records are delivered, divided by them; the time from start to ready (the
queue file is opened and checked); peak RSS (``VmHWM``); the file's size and how long the
build took. Campaign's limit is set high (``--tps``) so that the writer is bound by its
own CPU, not by the tenant's budget. Results go to ``<output>/cost-<timestamp>/``
(``cost.json``, one PNG per curve).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.toml"
READY = "intake listening on "

__all__ = [
    "Point",
    "event_lines",
    "lane_schema",
    "medians",
    "per_record_us",
    "simulator_config",
    "writer_config",
]


def lane_schema(lane: int) -> str:
    """The (non-staging) schema of lane ``lane``; the route writes its ``Stg`` copy."""
    return f"cost:lane{lane}"


def writer_config(example: str, lanes: int) -> str:
    """The example config with its routes replaced by ``lanes`` routes, one per lane:
    events with ``"type": "l<i>"`` go to ``cost:lane<i>Stg`` by Ingest, keyed on ``id``."""
    # The first [[routes]] table header (at a line's start: comments mention it too).
    head = example.split("\n[[routes]]", 1)[0] + "\n"
    blocks = []
    for lane in range(lanes):
        blocks.append(
            f'[[routes]]\nname = "l{lane}"\nmatch = {{ type = "l{lane}" }}\n'
            f'schema = "{lane_schema(lane)}Stg"\nmethod = "Ingest"\nkey = ["id"]\n\n'
            f'[routes.fields.id]\ntype = "string"\nlength = 64\nrequired = true\n\n'
            f'[routes.fields.testcol1]\ntype = "string"\nlength = 255\n'
        )
    return head + "\n".join(blocks)


def simulator_config(lanes: int, tps: int, latency_ms: float = 50.0) -> str:
    """A simulator config with one auto-staged schema per lane, the limit ``tps`` and
    each call's base latency."""
    lines = [f"tps_limit = {tps}", f"latency_ms = {latency_ms:g}", ""]
    for lane in range(lanes):
        lines += [
            f'[schemas."{lane_schema(lane)}"]',
            'keys = ["id"]',
            "auto_stg = true",
            'attributes = { id = { type = "string", length = 64 }, '
            'testcol1 = { type = "string", length = 255 } }',
            "",
        ]
    return "\n".join(lines)


def event_lines(start: int, count: int, lanes: int, keys: int | None) -> Iterator[bytes]:
    """Events ``start`` .. ``start + count - 1`` as JSON lines: event ``n`` goes to lane
    ``n % lanes`` and has key ``n % keys`` (every key distinct when ``keys`` is None)."""
    for n in range(start, start + count):
        key = n if keys is None else n % keys
        yield b'{"type":"l%d","id":"k%d","testcol1":"value %d"}' % (n % lanes, key, n)


def per_record_us(cpu_s: float, records: int) -> float | None:
    """Microseconds of CPU per record; None when nothing was delivered."""
    return round(cpu_s / records * 1e6, 2) if records > 0 else None


@dataclass
class Point:
    """One measured point of a curve."""

    curve: str
    x: int  # lanes, distinct keys, or backlog events
    queued: int
    repeat: int = 0
    measured: int = 0  # records delivered in the measurement
    cpu_s: float = 0.0
    cpu_us_per_record: float | None = None
    peak_rss_mib: float = 0.0
    start_s: float = 0.0  # process start to ready
    deliver_s: float = 0.0
    build_s: float = 0.0
    file_mib: float = 0.0
    calls: int = 0
    records_per_call: float | None = None
    coalesced: int | None = None  # records merged into a pending entry of their key
    held_keys_max: int = 0  # keys in flight, the most seen at once
    latency_ms: float = 50.0  # Campaign's (the simulator's) base latency per call
    max_records: int = 500  # batch.max_records; the writer leases max(5000, 8x) at most
    error: str | None = None


# --- building the queue file -----------------------------------------------------------


async def build_queue(
    path: Path, config_path: Path, events: int, lanes: int, keys: int | None
) -> float:
    """Append ``events`` mapped events to a fresh queue file in big batches; seconds taken."""
    from campaign_writer.config import load
    from campaign_writer.queue import DurableQueue
    from campaign_writer.router import Router

    config = load(config_path)
    # Router.from_config came with issue 19's config slices; before it, Router(config).
    router = getattr(Router, "from_config", Router)(config)
    started = time.monotonic()
    queue = await DurableQueue.open(
        path, max_bytes=1 << 40, synchronous="NORMAL", commit_window_s=0.0
    )
    try:
        step = 50_000
        for start in range(0, events, step):
            lines = list(event_lines(start, min(step, events - start), lanes, keys))
            routing = router.route_lines(lines, source="cost", created_at=time.time())
            if routing.rejected:
                raise RuntimeError(f"events refused by the routes: {routing.rejected[:3]}")
            await queue.append(routing.items)
    finally:
        await queue.close()
    return time.monotonic() - started


# --- one point -----------------------------------------------------------------------------


async def _stats(session: Any, url: str) -> dict[str, Any] | None:
    import aiohttp
    import orjson

    try:
        async with session.get(url + "/v1/stats") as answer:
            data: dict[str, Any] = await answer.json(loads=orjson.loads)
            return data
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def measure_point(
    point: Point,
    *,
    lanes: int,
    keys: int | None,
    measure: int,
    tps: int,
    work: Path,
    logs: Path,
    timeout_s: float,
    example: Path = EXAMPLE,
    wrap: Sequence[str] = (),
) -> Point:
    """Build the queue, start the simulator and the writer, deliver ``measure`` records."""
    import aiohttp

    from bench.procs import Child, SimulatorProcess, proc_sample
    from bench.subjects import WriterSubject, writer_settings

    name = f"{point.curve}-{point.x}"
    config_path, sim_config, queue_path = _write_configs(
        work, name, example, lanes, tps, point.latency_ms
    )
    point.build_s = round(await build_queue(queue_path, config_path, point.queued, lanes, keys), 2)
    point.file_mib = _file_mib(work, name)
    if point.curve == "backlog-crash":
        _mark_crashed(queue_path)
    sim = SimulatorProcess(logs / f"{name}-simulator.log", {"config": sim_config})
    await sim.start()
    try:
        settings = writer_settings(sim.url, queue_path, tps, point.max_records, 200)
        settings += ["queue.max_bytes=1TiB"]
        writer = WriterSubject("writer", settings, logs / f"{name}-writer.log", queue_path)
        argv = [*(part.format(name=name) for part in wrap), sys.executable]
        argv += ["-m", "campaign_writer", "run", "--config", str(config_path)]
        for item in settings:
            argv += ["--set", item]
        writer.child = Child("writer", argv, logs / f"{name}-writer.log")
        launched = time.monotonic()
        # Opening a big file after a crash checks all of it, and valgrind is slow to start.
        writer.child.start = functools.partial(writer.child.start, timeout_s=timeout_s)  # type: ignore[method-assign]
        await writer.start()
        point.start_s = round(time.monotonic() - launched, 2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            # Delivery starts before the intake is ready: count from this first reading.
            stats = await _stats(session, writer.admin_url)
            first = proc_sample(writer.child.pid)
            assert stats is not None
            assert first is not None
            delivered = before = int(stats["delivery"]["totals"]["delivered"])
            calls_before = int(stats["delivery"]["totals"]["calls"])
            began = time.monotonic()
            while time.monotonic() - began < timeout_s:
                await asyncio.sleep(0.25)
                stats = await _stats(session, writer.admin_url)
                if stats is None:
                    continue
                delivered = int(stats["delivery"]["totals"]["delivered"])
                point.calls = int(stats["delivery"]["totals"]["calls"]) - calls_before
                lanes_now = (stats["delivery"].get("lanes") or {}).values()
                held = sum(int(lane.get("held_keys", 0) or 0) for lane in lanes_now)
                point.held_keys_max = max(point.held_keys_max, held)
                if delivered >= measure:
                    break
            else:
                point.error = f"only {delivered} of {measure} delivered in {timeout_s:g} s"
        last = proc_sample(writer.child.pid)
        assert last is not None
        point.deliver_s = round(time.monotonic() - began, 2)
        delivered -= before
        point.measured = delivered
        point.cpu_s = round(last.cpu_s - first.cpu_s, 3)
        point.cpu_us_per_record = per_record_us(point.cpu_s, delivered)
        if point.calls:
            point.records_per_call = round(delivered / point.calls, 1)
        point.peak_rss_mib = round(last.peak_rss_mb, 1)
        if stats is not None:
            lanes_stats = stats["delivery"].get("lanes") or {}
            point.coalesced = sum(int(v.get("merges", 0) or 0) for v in lanes_stats.values())
        await writer.stop()
    finally:
        await sim.close()
        _remove_queue(work, name)
    return point


def _write_configs(
    work: Path, name: str, example: Path, lanes: int, tps: int, latency_ms: float
) -> tuple[Path, Path, Path]:
    """The writer's and the simulator's configs for a point; the queue file's path."""
    config_path = work / f"{name}-writer.toml"
    config_path.write_text(writer_config(example.read_text(), lanes))
    sim_config = work / f"{name}-simulator.toml"
    sim_config.write_text(simulator_config(lanes, tps, latency_ms))
    return config_path, sim_config, work / f"{name}.sqlite3"


def _mark_crashed(path: Path) -> None:
    """Leave the file as SIGKILL would: its 'closed cleanly' mark cleared."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE state SET value = '0' WHERE name = 'clean'")


def _file_mib(work: Path, name: str) -> float:
    return round(sum(p.stat().st_size for p in work.glob(f"{name}.sqlite3*")) / 2**20, 1)


def _remove_queue(work: Path, name: str) -> None:
    for leftover in work.glob(f"{name}.sqlite3*"):
        leftover.unlink()


# --- curves ------------------------------------------------------------------------------


def _curves(args: argparse.Namespace) -> list[tuple[Point, int, int | None, int]]:
    """(point, lanes, keys, records to measure) for every point asked for."""
    todo: list[tuple[Point, int, int | None, int]] = []
    if "lanes" in args.curves:
        for lanes in args.lanes:
            point = Point("lanes", lanes, args.records, max_records=args.max_records)
            todo.append((point, lanes, None, args.records))
    if "keys" in args.curves:
        for keys in args.keys:
            x = keys or args.records
            # Records delivered count once each, merged or not.
            point = Point(
                "keys",
                x,
                args.records,
                latency_ms=args.keys_latency_ms,
                max_records=args.max_records,
            )
            todo.append((point, 1, keys or None, args.records))
    for curve in ("backlog", "backlog-crash"):
        if curve in args.curves:
            for backlog in args.backlogs:
                measure = min(backlog, args.measure)
                point = Point(curve, backlog, backlog, max_records=args.max_records)
                todo.append((point, 1, None, measure))
    return todo


def medians(points: list[Point], curve: str) -> list[dict[str, float]]:
    """Per x of ``curve`` (ascending): the median, min and max over the repeats of CPU
    per record, peak RSS and start time; failed points are left out."""
    by_x: dict[int, list[Point]] = {}
    for point in points:
        if point.curve == curve and point.error is None and point.cpu_us_per_record:
            by_x.setdefault(point.x, []).append(point)
    rows = []
    for x in sorted(by_x):
        row: dict[str, float] = {"x": x, "n": len(by_x[x])}
        for name in ("cpu_us_per_record", "peak_rss_mib", "start_s", "records_per_call"):
            values = [float(getattr(p, name) or 0.0) for p in by_x[x]]
            row[name] = statistics.median(values)
            row[name + "_min"] = min(values)
            row[name + "_max"] = max(values)
        rows.append(row)
    return rows


def plot(points: list[Point], out: Path) -> list[Path]:
    """One PNG per curve: CPU per record and peak RSS against the curve's x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "lanes": "lanes (routes x methods)",
        "keys": "distinct keys in one lane (records merged per key = records / keys)",
        "backlog": "queued events when the writer starts",
        "backlog-crash": "queued events when the writer starts after a crash",
    }
    written = []
    for curve in ("lanes", "keys", "backlog", "backlog-crash"):
        rows = medians(points, curve)
        if not rows:
            continue
        xs = [row["x"] for row in rows]
        shown = [("cpu_us_per_record", "writer CPU per record delivered (µs)", "tab:blue")]
        shown.append(("peak_rss_mib", "writer peak RSS (MiB)", "tab:red"))
        if curve.startswith("backlog"):
            shown.append(("start_s", "start to ready (s)", "tab:green"))
        figure, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4.2))
        for axis, (name, label, colour) in zip(axes, shown, strict=True):
            ys = [row[name] for row in rows]
            spread = [
                [row[name] - row[name + "_min"] for row in rows],
                [row[name + "_max"] - row[name] for row in rows],
            ]
            axis.errorbar(xs, ys, yerr=spread, marker="o", color=colour, capsize=3)
            axis.set_ylabel(label)
            axis.set_xscale("log")
            axis.set_xlabel(labels[curve])
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
        figure.suptitle(f"Cost as the work grows: {curve}")
        figure.tight_layout()
        path = out / f"cost-{curve}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def _ints(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part]


async def run(args: argparse.Namespace) -> Path:
    out = Path(args.output) / time.strftime("cost-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cost-", dir=args.work))
    points: list[Point] = []
    try:
        todo = [
            (dataclasses.replace(point, repeat=repeat), lanes, keys, measure)
            for repeat in range(args.repeats)
            for point, lanes, keys, measure in _curves(args)
        ]
        for point, lanes, keys, measure in todo:
            print(f"{point.curve}={point.x}: {point.queued} queued ...", file=sys.stderr)
            try:
                await measure_point(
                    point,
                    lanes=lanes,
                    keys=keys,
                    measure=measure,
                    tps=args.tps,
                    work=work,
                    logs=out / "logs",
                    timeout_s=args.timeout,
                    example=Path(args.example),
                    wrap=shlex.split(args.wrap),
                )
            except Exception as exc:  # a failed point is reported, the others still run
                point.error = f"{type(exc).__name__}: {exc}"
            points.append(point)
            print(json.dumps(asdict(point)), flush=True)
            (out / "cost.json").write_text(
                json.dumps({"argv": sys.argv, "points": [asdict(p) for p in points]}, indent=1)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_plots:
        for path in plot(points, out):
            print(f"plot: {path}", file=sys.stderr)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", default="lanes,keys,backlog,backlog-crash")
    parser.add_argument("--repeats", type=int, default=1, help="each point, alternating")
    parser.add_argument("--records", type=int, default=100_000, help="queued, lanes and keys")
    parser.add_argument("--lanes", type=_ints, default=[1, 10, 100])
    parser.add_argument(
        "--keys", type=_ints, default=[100, 1000, 10_000, 0], help="0: every key distinct"
    )
    parser.add_argument("--backlogs", type=_ints, default=[100_000, 1_000_000])
    parser.add_argument("--measure", type=int, default=200_000, help="backlog: records to time")
    parser.add_argument("--tps", type=int, default=1000, help="Campaign's limit (calls/s)")
    parser.add_argument(
        "--max-records",
        type=int,
        default=500,
        help="the writer's batch.max_records (it keeps at most max(5000, 8x) records leased)",
    )
    parser.add_argument(
        "--keys-latency-ms",
        type=float,
        default=500.0,
        help="keys: Campaign's latency per call, so that many batches (and keys) are in flight",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per point, seconds")
    parser.add_argument("--work", default=None, help="where queue files go (default: TMPDIR)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--example",
        default=str(EXAMPLE),
        help="the config the writer's is made from (another checkout's, to compare commits)",
    )
    parser.add_argument(
        "--wrap",
        default="",
        help="a command the writer runs under, {name} is the point "
        "(e.g. 'valgrind --tool=callgrind --callgrind-out-file={name}.out')",
    )
    args = parser.parse_args(argv)
    args.curves = set(args.curves.split(","))
    out = asyncio.run(run(args))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
