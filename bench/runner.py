"""``campaign-writer bench``: run scenarios against the simulator, write the report.

For each case: one simulator process; for each repeat, every subject in turn (the
order rotates between repeats so none always goes first), each against the same
simulator reset to the case's knobs, with its records cleared and its limiter
windows empty. A run is:

1. reset the simulator; note the call log's position;
2. start the subject (a backlog case gives the writer and the cubic peer a copy of
   a queue file filled over HTTP beforehand; see :mod:`bench.special`);
3. feed it (backlog, Poisson arrivals or a burst), apply timed control changes,
   sample the subject and /proc every quarter second;
4. stop it; read the call log since step 1 and, when the case needs them, the
   stored records (for end-to-end latency and loss accounting).

Raw runs go to ``runs/<case>/<subject>-<repeat>.json``, logs to ``logs/``; the
report (:mod:`bench.report`) and plots (:mod:`bench.plots`) are built from them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import wakecost
from .analysis import run_figures
from .fleet import (
    FLEET_SUBJECTS,
    TWO_ROUTES,
    TWO_ROUTES_EVEN,
    run_fleet,
    two_route_events,
    two_route_events_even,
)
from .load import Events
from .procs import REPO, MachineSampler, SimulatorProcess, machine_info
from .scenarios import (
    ALL_SUBJECTS,
    DEFAULT_QUICK,
    LINGER_MS,
    MAX_RECORDS,
    SCENARIOS,
    Case,
    build_cases,
)
from .special import Backlog, run_brokers, run_intake_http, run_memory
from .subjects import Subject, SubjectUnavailable, make_subject

__all__ = ["Options", "listing", "main", "options_from", "run"]

SAMPLE_EVERY_S = 0.25
SCHEMA = "dem:sampleTableStg"


@dataclass
class Options:
    scenarios: list[str]
    mode: str
    repeats: int
    subjects: tuple[str, ...]
    output: Path
    scale: float
    plots: bool = True


def options_from(args: argparse.Namespace, root: Path = REPO) -> Options:
    """Options from the arguments of ``campaign-writer bench`` (see commands/bench.py)."""
    mode = args.mode or "quick"
    names = args.scenarios or (list(DEFAULT_QUICK) if mode == "quick" else list(SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    subjects = tuple(s.strip() for s in args.peers.split(",") if s.strip())
    known = (*ALL_SUBJECTS, *FLEET_SUBJECTS)
    bad = [s for s in subjects if s not in known]
    if bad:
        raise SystemExit(f"unknown subject(s): {', '.join(bad)}; known: {', '.join(known)}")
    repeats = args.repeats or (1 if mode == "quick" else 3)
    output = Path(args.output) if args.output else root / "bench" / "results"
    return Options(names, mode, repeats, subjects, output, args.scale, args.plots)


def listing() -> str:
    """What ``--list`` prints."""
    from .report import list_scenarios

    return list_scenarios()


def _safe(name: str) -> str:
    return name.replace("/", "-")


class Bench:
    """One benchmark invocation: its output directory, scratch space and results."""

    def __init__(self, options: Options) -> None:
        self.options = options
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = options.output / stamp
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="cw-bench-"))
        self.backlog = Backlog(self.work, self.out / "logs")
        # The method-limits case's backlog: events for an Ingest and a WriteCollection route.
        self.two_routes = Backlog(
            self.work, self.out / "logs", name=TWO_ROUTES, make_events=two_route_events
        )
        self.two_routes_even = Backlog(
            self.work, self.out / "logs", name=TWO_ROUTES_EVEN, make_events=two_route_events_even
        )
        self.cases: dict[str, dict[str, Any]] = {}
        self._last_stop = 0.0
        self.started = time.time()
        self.machine_at_start = machine_info()
        self.wake_cost: dict[str, Any] | None = None

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def record_invocation(self) -> None:
        """invocation.json: what ``python -m bench.rebuild`` needs besides the runs."""
        options = self.options
        data = {
            "options": {
                "scenarios": options.scenarios,
                "mode": options.mode,
                "repeats": options.repeats,
                "subjects": list(options.subjects),
                "scale": options.scale,
            },
            "started": self.started,
            "finished": time.time(),
            "machine_at_start": self.machine_at_start,
            "backlog_fill": self.backlog.figures,
            "two_routes_fill": self.two_routes.figures,
            "two_routes_even_fill": self.two_routes_even.figures,
            "wake_cost": self.wake_cost,
            "cases": {
                name: {"skipped": result["skipped"], "errors": result["errors"]}
                for name, result in self.cases.items()
            },
        }
        (self.out / "invocation.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))

    # --- one run ---------------------------------------------------------------------

    async def _sample_loop(
        self, subject: Subject, t0: float, cpu0: float, out: list[dict[str, Any]]
    ) -> None:
        while True:
            status = await subject.sample() or {}
            proc = subject.child.sample()
            row: dict[str, Any] = {"t": round(time.time() - t0, 3), **status}
            if proc is not None:
                row["cpu_s"] = round(proc.cpu_s - cpu0, 3)
                row["rss_mb"] = round(proc.rss_mb, 1)
            out.append(row)
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _controls(
        self, sim: SimulatorProcess, case: Case, t0: float, done: list[Any]
    ) -> None:
        for phase in case.phases:
            await asyncio.sleep(max(0.0, t0 + phase.at_s - time.time()))
            await sim.control(**phase.changes)
            done.append({"at_s": round(time.time() - t0, 3), "label": phase.label, **phase.changes})

    async def _wait_idle(self, subject: Subject, sent: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = await subject.sample() or {}
            received = status.get("received")
            if (
                status.get("queue_depth") == 0
                and status.get("in_flight") == 0
                and (received is None or received >= sent)
            ):
                return True
            await asyncio.sleep(SAMPLE_EVERY_S)
        return False

    async def one_run(
        self, sim: SimulatorProcess, case: Case, name: str, repeat: int
    ) -> dict[str, Any]:
        await sim.control(**case.knobs_for_run(), outage_s=0, clear_records=True, reset_stats=True)
        # Every limiter window must be empty of the previous run's calls (1 s old at most).
        await asyncio.sleep(max(0.0, self._last_stop + 1.1 - time.monotonic()))
        seq0 = (await sim.stats())["last_call_seq"]
        queue_path = self.work / f"{_safe(case.name)}-{name}-{repeat}.sqlite3"
        if case.load == "backlog" and name in ("writer", "cubic"):
            await self.backlog.copy_to(queue_path, case.backlog_needed())
        subject = make_subject(
            name,
            campaign_url=sim.url,
            queue_path=queue_path,
            log_path=self.out / "logs" / _safe(case.name) / f"{name}-{repeat}.log",
            tps=case.tps,
            max_records=MAX_RECORDS,
            linger_ms=LINGER_MS,
            extra_sets=case.writer_sets,
        )
        await subject.start()
        samples: list[dict[str, Any]] = []
        controls: list[Any] = []
        events = Events(case.poison_share)
        feeder = subject.feeder(events)
        settled = None
        tasks: list[asyncio.Task[None]] = []
        try:
            machine = MachineSampler()
            own_cpu0 = time.process_time()
            first = subject.child.sample()
            sim_first = sim.child.sample()
            cpu0 = first.cpu_s if first else 0.0
            t0 = time.time()
            tasks.append(asyncio.create_task(self._sample_loop(subject, t0, cpu0, samples)))
            tasks.append(asyncio.create_task(self._controls(sim, case, t0, controls)))
            if case.load == "backlog":
                if not subject.fed_over_http:
                    # Fed while it runs (a busy peer reads its pipe slowly, and the window must
                    # not stretch for it). The unitary peer sends one record per call: more
                    # would only sit in its memory and inflate its RSS.
                    count = case.backlog_needed(1 if name == "unitary" else MAX_RECORDS)
                    tasks.append(asyncio.create_task(feeder.backlog(count)))
                await asyncio.sleep(max(0.0, t0 + case.warmup_s + case.duration_s - time.time()))
                measure_end = case.warmup_s + case.duration_s
            elif case.load == "poisson":
                rate = case.capacity * case.rate_share
                await feeder.poisson(
                    rate,
                    case.warmup_s + case.duration_s,
                    seed=repeat + 1,
                    tick_s=case.extra.get("post_interval_ms", 10.0) / 1000,
                )
                measure_end = time.time() - t0
                settled = await self._wait_idle(subject, feeder.sent, case.drain_s)
            else:  # burst
                await feeder.backlog(case.events)
                settled = await self._wait_idle(subject, feeder.sent, case.drain_s)
                measure_end = time.time() - t0
            t_end = time.time()
            last = subject.child.sample()
            sim_last = sim.child.sample()
            busy = machine.busy_cores()
            own_cpu = time.process_time() - own_cpu0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            final = await subject.stop()
            self._last_stop = time.monotonic()
        elapsed = max(1e-9, t_end - t0)
        cpu = (last.cpu_s - cpu0) if last else None
        sim_cpu = (sim_last.cpu_s - sim_first.cpu_s) if sim_last and sim_first else 0.0
        run: dict[str, Any] = {
            "case": case.name,
            "subject": name,
            "repeat": repeat,
            "t0": t0,
            "t_end": t_end,
            "measure_end": measure_end,
            "settled": settled,
            "sent": feeder.sent,
            "poisoned": events.poisoned,
            "feed_error": repr(feeder.error) if feeder.error else None,
            "cpu_s": cpu,
            "peak_rss_mb": last.peak_rss_mb if last else None,
            "simulator_cpu_share": sim_cpu / elapsed,
            "other_cores": max(0.0, busy - ((cpu or 0.0) + sim_cpu + own_cpu) / elapsed),
            "final": final,
            "controls": controls,
            "samples": samples,
            "calls": await sim.calls(seq0),
        }
        answers = getattr(feeder.sink, "answers", None)
        if answers is not None:
            run["intake_answers"] = [(round(at, 4), round(took, 6)) for at, took in answers]
        if case.needs_records:
            await self._records(sim, case, run, feeder.log)
        return run

    async def _records(
        self,
        sim: SimulatorProcess,
        case: Case,
        run: dict[str, Any],
        log: list[tuple[int, int, float]],
    ) -> None:
        """End-to-end latency and delivery accounting from the stored records."""
        rows = await sim.records(SCHEMA)
        committed: dict[str, tuple[float, float]] = {}
        for row in rows:
            with contextlib.suppress(KeyError, ValueError):
                committed[row["id"]] = (float(row["testcol2"]), float(row["__committed_at"]))
        run["delivered_distinct"] = sum(
            1
            for first, count, _ in log
            for n in range(first, first + count)
            if f"e{n}" in committed
        )
        t0 = run["t0"]
        start, end = t0 + case.warmup_s, t0 + run["measure_end"]
        values: list[float] = []
        missing = 0
        for first, count, at in log:
            if not start <= at <= end:
                continue
            for n in range(first, first + count):
                found = committed.get(f"e{n}")
                if found is None:
                    missing += 1
                else:
                    values.append(round(found[1] - found[0], 5))
        run["e2e"] = {"values": values, "missing": missing}
        if case.scenario in ("outage", "masked"):
            outage_end = t0 + case.extra["outage_start_s"] + case.extra["outage_s"]
            before = [
                n
                for first, count, at in log
                if at <= outage_end
                for n in range(first, first + count)
            ]
            found = [committed.get(f"e{n}") for n in before]
            done = [f[1] for f in found if f is not None]
            run["outage_backlog"] = {
                "events": len(before),
                "undelivered": len(before) - len(done),
                "last_commit": max(done) if done else None,
            }

    # --- cases -----------------------------------------------------------------------

    def save_run(self, run: dict[str, Any]) -> None:
        self._save(run)

    def _save(self, run: dict[str, Any]) -> None:
        path = self.out / "runs" / _safe(run["case"]) / f"{run['subject']}-{run['repeat']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(run))

    async def run_case(self, case: Case) -> dict[str, Any]:
        subjects = [s for s in self.options.subjects if s in case.subjects]
        result: dict[str, Any] = {
            "case": case,
            "runs": {s: [] for s in subjects},
            "skipped": {},
            "errors": [],
        }
        if case.load == "fleet":
            await run_fleet(self, case, result)
            return result
        if case.load in ("intake", "memory"):
            runner = {
                "intake/http": run_intake_http,
                "intake/brokers": run_brokers,
                "memory": run_memory,
            }[case.name]
            result["runs"] = await runner(self, case)
            for subject, runs in result["runs"].items():
                for repeat, run in enumerate(runs):
                    self._save(
                        {
                            "case": case.name,
                            "subject": subject,
                            "repeat": repeat,
                            **run["run"],
                            "special": True,
                            "figures": run["figures"],
                        }
                    )
            return result
        sim = SimulatorProcess(self.out / "logs" / f"{_safe(case.name)}-simulator.log", {"seed": 7})
        await sim.start()
        try:
            for repeat in range(self.options.repeats):
                shift = repeat % max(1, len(subjects))
                for name in subjects[shift:] + subjects[:shift]:
                    if name in result["skipped"]:
                        continue
                    print(
                        f"  {case.name}: {name} (repeat {repeat + 1}/{self.options.repeats})",
                        flush=True,
                    )
                    try:
                        run = await self.one_run(sim, case, name, repeat)
                    except SubjectUnavailable as exc:
                        result["skipped"][name] = str(exc)
                        print(f"    skipped: {exc}", flush=True)
                        continue
                    except Exception as exc:  # one failed run must not lose the others
                        result["errors"].append(f"{name} repeat {repeat + 1}: {exc!r}")
                        print(f"    failed: {exc!r}", flush=True)
                        continue
                    self._save(run)
                    figures = run_figures(case, run)
                    result["runs"][name].append({"figures": figures, "run": run})
        finally:
            await sim.close()
        return result


def scaled(case: Case, factor: float) -> Case:
    """``case`` with every duration multiplied by ``factor`` (smoke tests, slow machines)."""
    if factor == 1.0:
        return case
    from dataclasses import replace

    from .scenarios import Phase

    extra = {k: (v * factor if k.endswith("_s") else v) for k, v in case.extra.items()}
    phases = tuple(
        Phase(
            p.at_s * factor,
            {k: (v * factor if k == "outage_s" else v) for k, v in p.changes.items()},
            p.label,
        )
        for p in case.phases
    )
    return replace(
        case,
        warmup_s=case.warmup_s * factor,
        duration_s=case.duration_s * factor,
        drain_s=max(5.0, case.drain_s * factor),
        phases=phases,
        extra=extra,
        events=max(1000, int(case.events * factor)) if case.events else 0,
    )


async def measure_wake_cost(logs: Path, scale: float) -> dict[str, Any]:
    """wakecost.measure's figures (300 wakes and posts at scale 1), or why there are none:
    a probe that fails must not cost the cases their run."""
    try:
        return await wakecost.measure(logs, posts=max(50, round(300 * scale)))
    except Exception as exc:
        print(f"wake cost not measured: {exc!r}", flush=True)
        return {"error": repr(exc)}


async def run(options: Options) -> int:
    from .report import write_report

    catalogue = build_cases(options.mode)
    cases = [scaled(c, options.scale) for name in options.scenarios for c in catalogue[name]]
    bench = Bench(options)
    print(
        f"campaign-writer bench ({options.mode}): {', '.join(options.scenarios)} -> {bench.out}",
        flush=True,
    )
    try:
        bench.record_invocation()
        if any("records_per_cpu_s" in c.figures for c in cases):
            # What waking costs on this machine, for reading the CPU figures (wakecost.py).
            print("wake cost: sleeping and empty-responder probes", flush=True)
            bench.wake_cost = await measure_wake_cost(bench.out / "logs", options.scale)
            bench.record_invocation()
        two_routes = [c for c in cases if TWO_ROUTES in c.extra.get("roles", ())]
        even = [c for c in cases if TWO_ROUTES_EVEN in c.extra.get("roles", ())]
        plain = [c for c in cases if c not in two_routes and c not in even]
        if {"writer", "cubic"} & set(options.subjects) or any(c.load == "fleet" for c in plain):
            await bench.backlog.prepare(max((c.backlog_needed() for c in plain), default=0))
        if two_routes:
            await bench.two_routes.prepare(max(c.backlog_needed() for c in two_routes))
        if even:
            await bench.two_routes_even.prepare(max(c.backlog_needed() for c in even))
        for case in cases:
            print(f"{case.name}: {case.description}", flush=True)
            bench.cases[case.name] = await bench.run_case(case)
            bench.record_invocation()
    finally:
        bench.close()
    report = write_report(bench, bench.started, plots=options.plots)
    print(report.read_text() if report.suffix == ".md" else report, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from campaign_writer.commands.bench import configure

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    import uvloop

    return uvloop.run(run(options_from(args)))
