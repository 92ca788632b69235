"""Writer-only measurements: filling a queue over HTTP, intake, and memory with a
million events waiting.

**Filling** (:func:`fill`): a writer process whose ``campaign.url`` points at a port
nobody listens on takes events over ``POST /v1/events`` (8 concurrent 2,000-event
NDJSON bodies, each answered 202 only once on disk); delivery fails and backs off
meanwhile, so everything stays queued. The writer is then stopped with SIGTERM and
its queue file is what a restarted writer finds: a backlog, as after maintenance
or an outage. This is also the HTTP intake measurement (events/s, writer
CPU-microseconds per event from /proc).

:class:`Backlog` fills one master queue per invocation, as large as the largest
backlog case needs, and copies it for each writer or cubic run, so the saturation
figures measure delivery from the first second instead of racing intake.

**Broker intake** reuses :func:`bench.intake_brokers.measure` (one broker at a time,
in a child process so its CPU figure is its own): ``python -m bench.special broker
NAME EVENTS`` prints ``RESULT {json}``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .load import Events
from .procs import REPO, SimulatorProcess, free_port
from .scenarios import BASE_KNOBS, LINGER_MS, MAX_RECORDS, TPS
from .subjects import WriterSubject, make_subject

if TYPE_CHECKING:
    from .scenarios import Case

__all__ = ["BROKERS", "Backlog", "fill", "run_brokers", "run_intake_http", "run_memory"]


class _Repeats(Protocol):
    repeats: int


class Bench(Protocol):
    """What these cases read of a run (:class:`bench.runner.Bench`), which imports this
    module: how many repeats, a scratch directory and the output directory."""

    options: _Repeats
    work: Path
    out: Path


BROKERS = ("rabbitmq", "redis", "nats", "kafka")


async def fill(
    queue_path: Path, count: int, log_path: Path, events: Events | None = None
) -> dict[str, Any]:
    """Post ``count`` events (sample events unless ``events`` says otherwise) to a writer
    that cannot reach Campaign; figures of intake."""
    unreachable = f"http://127.0.0.1:{free_port()}"
    subject = make_subject(
        "writer",
        campaign_url=unreachable,
        queue_path=queue_path,
        log_path=log_path,
        tps=TPS,
        max_records=MAX_RECORDS,
        linger_ms=LINGER_MS,
    )
    assert isinstance(subject, WriterSubject)
    await subject.start()
    try:
        before = subject.child.sample()
        started = time.perf_counter()
        feeder = subject.feeder(events or Events())
        await feeder.backlog(count, chunk=2000)
        wall = time.perf_counter() - started
        after = subject.child.sample()
        stats = await subject.stats() or {}
        if feeder.error is not None:
            raise RuntimeError(f"filling the queue failed: {feeder.error!r}")
    finally:
        await subject.stop()
    cpu = (after.cpu_s - before.cpu_s) if after and before else None
    return {
        "events": count,
        "seconds": wall,
        "events_per_s": count / wall,
        "cpu_s": cpu,
        "cpu_us_per_event": cpu / count * 1e6 if cpu else None,
        "peak_rss_mb": after.peak_rss_mb if after else None,
        "queue_depth": (stats.get("queue") or {}).get("depth"),
    }


class Backlog:
    """One master queue file, filled once, copied for every backlog run.

    ``name`` tells two masters apart (each its own directory and fill log); ``make_events``
    gives the events to fill it with (sample events by default)."""

    def __init__(
        self,
        work: Path,
        logs: Path,
        *,
        name: str = "master",
        make_events: Callable[[], Events] = Events,
    ) -> None:
        self.path = work / name / "queue.sqlite3"
        self.logs = logs
        self.name = name
        self.make_events = make_events
        self.events = 0
        self.figures: dict[str, Any] | None = None

    async def prepare(self, count: int) -> None:
        if count <= 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        print(f"filling a backlog of {count:,} events over HTTP ...", flush=True)
        log = "backlog-fill.log" if self.name == "master" else f"backlog-fill-{self.name}.log"
        self.figures = await fill(self.path, count, self.logs / log, self.make_events())
        self.events = count
        print(
            f"  {self.figures['events_per_s']:,.0f} events/s, "
            f"{self.figures['cpu_us_per_event']:.1f} µs writer CPU per event",
            flush=True,
        )

    async def copy_to(self, target: Path, needed: int) -> None:
        if needed > self.events:
            raise RuntimeError(f"the backlog holds {self.events} events, {needed} needed")
        for source in self.path.parent.glob(self.path.name + "*"):
            if source.name.endswith("-lock"):
                continue
            suffix = source.name[len(self.path.name) :]
            await asyncio.to_thread(shutil.copyfile, source, target.with_name(target.name + suffix))


async def _script(*argv: str, timeout_s: float = 600) -> tuple[dict[str, Any] | None, str]:
    """Run a Python child; the last JSON object it printed (``RESULT`` prefix allowed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, "timed out"
    text = out.decode(errors="replace")
    for line in reversed(text.splitlines()):
        line = line.removeprefix("RESULT ").strip()
        if line.startswith("{"):
            try:
                result: dict[str, Any] = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            return result, text
    return None, text


async def run_intake_http(bench: Bench, case: Case) -> dict[str, list[dict[str, Any]]]:
    """HTTP intake two ways: bench/intake.py (HttpIntake and the queue alone, in a child
    process) and the whole writer daemon with Campaign unreachable (:func:`fill`)."""
    runs: dict[str, list[dict[str, Any]]] = {"http-intake": [], "writer": []}
    for repeat in range(bench.options.repeats):
        print(f"  intake/http: {case.events:,} events (repeat {repeat + 1})", flush=True)
        result, output = await _script("bench/intake.py", "--events", str(case.events), "--json")
        if result is None or "events_per_s" not in result:
            print(f"    bench/intake.py gave no figures: {output[-300:]}", flush=True)
        else:
            runs["http-intake"].append({"figures": result, "run": {"repeat": repeat, **result}})
        path = bench.work / f"intake-{repeat}.sqlite3"
        figures = await fill(path, case.events, bench.out / "logs" / f"intake-http-{repeat}.log")
        runs["writer"].append({"figures": figures, "run": {"repeat": repeat, **figures}})
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink(missing_ok=True)
    return runs


async def run_brokers(bench: Bench, case: Case) -> dict[str, list[dict[str, Any]]]:
    """Each broker source through bench/intake_brokers.py; a broker not running is skipped."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for broker in BROKERS:
        runs[broker] = []
        for repeat in range(bench.options.repeats):
            print(f"  intake/{broker}: {case.events:,} events (repeat {repeat + 1})", flush=True)
            result, output = await _script(
                "-m", "bench.special", "broker", broker, str(case.events)
            )
            if not result or "events_per_s" not in result:
                reason = (result or {}).get("skipped") or output[-300:]
                print(f"    skipped: {reason}", flush=True)
                break
            runs[broker].append({"figures": result, "run": result})
    return runs


async def run_memory(bench: Bench, case: Case) -> dict[str, list[dict[str, Any]]]:
    """Fill ``case.events`` with Campaign down, then deliver from that queue for a while."""
    runs = []
    for repeat in range(bench.options.repeats):
        path = bench.work / f"memory-{repeat}.sqlite3"
        logs = bench.out / "logs" / "memory"
        print(f"  memory: filling {case.events:,} events (repeat {repeat + 1})", flush=True)
        filled = await fill(path, case.events, logs / f"fill-{repeat}.log")
        sim = SimulatorProcess(logs / f"simulator-{repeat}.log", {"seed": 7})
        await sim.start()
        try:
            await sim.control(**BASE_KNOBS)
            subject = make_subject(
                "writer",
                campaign_url=sim.url,
                queue_path=path,
                log_path=logs / f"deliver-{repeat}.log",
                tps=TPS,
                max_records=MAX_RECORDS,
                linger_ms=LINGER_MS,
            )
            await subject.start()
            try:
                waiting = (await subject.sample() or {}).get("queue_depth")
                rss = []
                deadline = time.monotonic() + case.duration_s
                while time.monotonic() < deadline:
                    sample = subject.child.sample()
                    if sample is not None:
                        rss.append(sample.rss_mb)
                    await asyncio.sleep(0.25)
                last = subject.child.sample()
                status = await subject.sample() or {}
            finally:
                await subject.stop()
        finally:
            await sim.close()
        figures = {
            "events_waiting": waiting,
            "peak_rss_filling_mb": filled["peak_rss_mb"],
            "peak_rss_delivering_mb": last.peak_rss_mb if last else None,
            "rss_delivering_max_mb": max(rss) if rss else None,
            "delivered_while_measured": status.get("delivered"),
            "fill_events_per_s": filled["events_per_s"],
            "fill_cpu_us_per_event": filled["cpu_us_per_event"],
        }
        runs.append({"figures": figures, "run": {"repeat": repeat, **figures}})
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink(missing_ok=True)
    return {"writer": runs}


async def _broker_job(broker: str, events: int) -> None:
    import tempfile

    try:
        from . import intake_brokers

        with tempfile.TemporaryDirectory(prefix="cw-bench-broker-") as workdir:
            result = await intake_brokers.measure(broker, events, 500, "FULL", Path(workdir))
    except Exception as exc:  # the broker or its client is missing: reported, not fatal
        result = {"skipped": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + orjson.dumps(result or {"skipped": "not reachable"}).decode(), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "broker":
        asyncio.run(_broker_job(sys.argv[2], int(sys.argv[3])))
    else:
        raise SystemExit("usage: python -m bench.special broker NAME EVENTS")
