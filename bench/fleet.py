"""Several writer processes on one simulated tenant: the ``scale-out`` and ``auto-limit``
scenarios.

A *fleet* subject is a group of ``campaign-writer run`` processes started together
against the same simulator, each with its own queue file and its own role:

* ``backlog``: restarts on a copy of the invocation's backlog queue file;
* ``light``: an empty queue, fed Poisson arrivals over HTTP at ``light_rate`` events/s
  (a few calls per second: each linger sends what came);
* ``idle``: an empty queue, fed nothing (it still runs, and a shared budget sees it);
* ``two-routes``: restarts on a copy of a second backlog queue file, whose events go
  to two routes with different SOAP methods (Ingest and WriteCollection), mixed in
  the ratio of their limits in :data:`bench.scenarios.METHOD_LIMITS`.

The subjects differ only in the settings every member runs with:

* ``shared``: each at the full limit, one budget shared through Redis
  (``[campaign.budget]``; a budget name unique to the run, a Redis database other
  than 0, or a Redis of its own in the case where Redis dies);
* ``storm``: each at the full limit, each with its own budget (the 429 storm);
* ``split``: each at the limit divided by the number of writers (the static split);
* ``auto`` and ``known``: ``tps_limit = "auto"``, or the limit told, as today;
* ``per-method`` and ``tenant-only``: told the case's per-method limits in
  ``[campaign.limits]`` as well as the tenant's, or the tenant's alone.

In a Redis-loss case the harness starts its own ``redis-server`` on a free port,
SIGKILLs it ``redis_kill_s`` into the run and starts it again on the same port
``redis_down_s`` later (empty: it keeps nothing). A writer that does not know the
budget keys refuses to start; the subject is then reported as skipped, with why.

Figures come from the simulator's call log (every member's calls together) and the
members' ``/v1/stats`` (see :func:`fleet_figures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .load import Events, Feeder, HttpSink, TwoRouteEvents
from .measure import Limits, window_figures
from .procs import SimulatorProcess, free_port
from .scenarios import LINGER_MS, MAX_RECORDS, METHOD_LIMITS
from .subjects import SubjectUnavailable, WriterSubject, writer_settings
from .windows import (
    busiest_window,
    count_between,
    is_ok,
    method_figures,
    time_to_reach,
    windows_over,
)

if TYPE_CHECKING:
    from .runner import Bench
    from .scenarios import Case

__all__ = [
    "FLEET_SUBJECTS",
    "TWO_ROUTES",
    "TWO_ROUTES_EVEN",
    "RedisServer",
    "fleet_figures",
    "run_fleet",
    "two_route_events",
    "two_route_events_even",
]

FLEET_SUBJECTS = ("shared", "storm", "split", "auto", "known", "per-method", "tenant-only")
SAMPLE_EVERY_S = 0.5
# The shared Redis on 127.0.0.1:6379, in a database the tests leave alone.
SHARED_REDIS = "redis://127.0.0.1:6379/3"
# The role of a member whose backlog feeds two routes with different SOAP methods.
TWO_ROUTES = "two-routes"
# The same two routes, half and half: a mix that does not follow the method limits.
TWO_ROUTES_EVEN = "two-routes-even"


def two_route_events() -> Events:
    """The events of the ``two-routes`` backlog: Ingest and WriteCollection records in
    the ratio of their limits, so that neither lane runs dry before the other."""
    return TwoRouteEvents(round(METHOD_LIMITS["Ingest"]), round(METHOD_LIMITS["WriteCollection"]))


def two_route_events_even() -> Events:
    """The events of the ``two-routes-even`` backlog: Ingest and WriteCollection records
    one for one, so the lane with the lower limit has the larger backlog for its rate."""
    return TwoRouteEvents(1, 1)


def _throttled(call: dict[str, Any]) -> bool:
    return bool(call["status"] == 429)


class RedisServer:
    """A ``redis-server`` of the harness's own on 127.0.0.1, to be killed and restarted."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SubjectUnavailable("redis-server is not installed (package redis-server)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - opened once per start
            self.process = await asyncio.create_subprocess_exec(
                binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--daemonize", "no"),
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.025)
        raise RuntimeError(f"redis-server did not listen on {self.port} (see {self.log_path})")

    async def kill(self) -> None:
        """SIGKILL: Redis is gone at once, nothing flushed, connections reset."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self.process = None


def member_settings(
    subject: str, case: Case, campaign_url: str, queue_path: Path, budget: tuple[str, str]
) -> list[str]:
    """The ``--set`` overrides of one member of ``subject``."""
    writers = len(case.extra["roles"])
    tps = case.tps / writers if subject == "split" else case.tps
    settings = writer_settings(campaign_url, queue_path, tps, MAX_RECORDS, LINGER_MS)
    if subject == "auto":
        settings.append('campaign.tps_limit="auto"')
    if subject == "per-method":
        for method, limit in case.extra["method_limits"].items():
            settings.append(f"campaign.limits.{method}={limit:g}")
    if subject == "shared" or (subject == "auto" and writers > 1):
        url, name = budget
        settings += [f'campaign.budget.redis_url="{url}"', f'campaign.budget.name="{name}"']
    return settings


def _compact(stats: dict[str, Any] | None, t: float) -> dict[str, Any] | None:
    if stats is None:
        return None
    delivery = stats.get("delivery") or {}
    queue = stats.get("queue") or {}
    return {
        "t": round(t, 3),
        "rate": delivery.get("rate_limit"),
        "in_flight": delivery.get("in_flight"),
        "queue_depth": queue.get("depth"),
        "calls": (delivery.get("totals") or {}).get("calls"),
        "throttle": stats.get("throttle"),
    }


def _aggregate(per_member: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One sample per tick: the members' rates, calls in flight and queues added up."""
    rows = []
    for ticks in zip(*per_member, strict=False):
        row: dict[str, Any] = {"t": ticks[0]["t"]}
        for key in ("rate", "in_flight", "queue_depth"):
            values = [tick.get(key) for tick in ticks]
            row[key] = sum(values) if all(v is not None for v in values) else None
        rows.append(row)
    return rows


class _Fleet:
    """The members of one fleet run, started and stopped together."""

    def __init__(self, bench: Bench, case: Case, subject: str, repeat: int) -> None:
        self.bench, self.case, self.subject, self.repeat = bench, case, subject, repeat
        self.members: list[WriterSubject] = []
        self.roles: list[str] = list(case.extra["roles"])
        self.feeders: dict[int, Feeder] = {}

    def _logs(self) -> Path:
        return self.bench.out / "logs" / self.case.name.replace("/", "-")

    async def start(self, sim: SimulatorProcess, budget: tuple[str, str]) -> None:
        work = self.bench.work
        stem = f"{self.case.name.replace('/', '-')}-{self.subject}-{self.repeat}"
        for index, role in enumerate(self.roles):
            queue_path = work / f"{stem}-{index}.sqlite3"
            if role == "backlog":
                await self.bench.backlog.copy_to(queue_path, self.case.backlog_needed())
            elif role == TWO_ROUTES:
                await self.bench.two_routes.copy_to(queue_path, self.case.backlog_needed())
            elif role == TWO_ROUTES_EVEN:
                await self.bench.two_routes_even.copy_to(queue_path, self.case.backlog_needed())
            settings = member_settings(self.subject, self.case, sim.url, queue_path, budget)
            log_path = self._logs() / f"{self.subject}-{self.repeat}-{index}-{role}.log"
            member = WriterSubject("writer", settings, log_path, queue_path)
            self.members.append(member)
            try:
                await member.start()
            except RuntimeError as exc:
                text = str(exc)
                if "unknown key" in text or "campaign.budget" in text or "tps_limit" in text:
                    raise SubjectUnavailable(
                        f"the installed writer refuses the settings of '{self.subject}': "
                        f"{text[-300:]}"
                    ) from None
                raise

    async def sample(self, t0: float, out: list[list[dict[str, Any]]]) -> None:
        while True:
            now = time.time() - t0
            stats = await asyncio.gather(*(m.stats() for m in self.members))
            for index, found in enumerate(stats):
                row = _compact(found, now)
                if row is not None:
                    out[index].append(row)
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def feed_light(self, seconds: float) -> None:
        rate = float(self.case.extra.get("light_rate", 2.0))
        jobs = []
        for index, (member, role) in enumerate(zip(self.members, self.roles, strict=True)):
            if role != "light":
                continue
            feeder = Feeder(HttpSink(member.intake_url), Events(), concurrency=2)
            self.feeders[index] = feeder
            jobs.append(feeder.poisson(rate, seconds, seed=self.repeat * 10 + index + 1))
        await asyncio.gather(*jobs)

    async def stop(self) -> list[dict[str, Any]]:
        finals = await asyncio.gather(*(m.stop() for m in self.members), return_exceptions=True)
        for feeder in self.feeders.values():
            with contextlib.suppress(Exception):
                await feeder.sink.close()  # type: ignore[attr-defined]
        for member in self.members:
            for leftover in member.queue_path.parent.glob(member.queue_path.name + "*"):
                leftover.unlink(missing_ok=True)
        return [f if isinstance(f, dict) else {"error": repr(f)} for f in finals]


async def _redis_loss(
    redis: RedisServer, kill_at: float, down_s: float, t0: float, events: dict[str, float]
) -> None:
    await asyncio.sleep(max(0.0, t0 + kill_at - time.time()))
    await redis.kill()
    events["killed_at_s"] = round(time.time() - t0, 3)
    await asyncio.sleep(max(0.0, t0 + kill_at + down_s - time.time()))
    await redis.start()
    events["back_at_s"] = round(time.time() - t0, 3)


async def _controls(sim: SimulatorProcess, case: Case, t0: float, done: list[Any]) -> None:
    for phase in case.phases:
        await asyncio.sleep(max(0.0, t0 + phase.at_s - time.time()))
        await sim.control(**phase.changes)
        done.append({"at_s": round(time.time() - t0, 3), "label": phase.label, **phase.changes})


async def one_fleet_run(
    bench: Bench, sim: SimulatorProcess, case: Case, subject: str, repeat: int
) -> dict[str, Any]:
    """One run of a fleet subject; the run record :func:`fleet_figures` reads."""
    await sim.control(**case.knobs_for_run(), outage_s=0, clear_records=True, reset_stats=True)
    await asyncio.sleep(1.1)  # every limiter window empty of the previous run's calls
    seq0 = (await sim.stats())["last_call_seq"]
    loss = "redis_kill_s" in case.extra
    redis = RedisServer(bench.out / "logs" / "redis" / f"{subject}-{repeat}.log") if loss else None
    budget_name = f"bench-{os.getpid()}-{int(time.time())}-{case.name}-{subject}-{repeat}"
    budget = (redis.url if redis else SHARED_REDIS, budget_name.replace("/", "-"))
    fleet = _Fleet(bench, case, subject, repeat)
    per_member: list[list[dict[str, Any]]] = [[] for _ in fleet.roles]
    tasks: list[asyncio.Task[Any]] = []
    redis_events: dict[str, float] = {}
    controls: list[Any] = []
    finals: list[dict[str, Any]] = []
    try:
        if redis is not None:
            await redis.start()
        await fleet.start(sim, budget)
        cpu0 = [m.child.sample() for m in fleet.members]
        t0 = time.time()
        end = case.warmup_s + case.duration_s
        tasks.append(asyncio.create_task(fleet.sample(t0, per_member)))
        tasks.append(asyncio.create_task(_controls(sim, case, t0, controls)))
        tasks.append(asyncio.create_task(fleet.feed_light(end)))
        if redis is not None:
            kill_at, down_s = case.extra["redis_kill_s"], case.extra["redis_down_s"]
            tasks.append(asyncio.create_task(_redis_loss(redis, kill_at, down_s, t0, redis_events)))
        await asyncio.sleep(max(0.0, t0 + end - time.time()))
        t_end = time.time()
        cpu1 = [m.child.sample() for m in fleet.members]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        finals = await fleet.stop()
        if redis is not None:
            await redis.kill()
    cpu = [
        (after.cpu_s - before.cpu_s) if after and before else None
        for before, after in zip(cpu0, cpu1, strict=True)
    ]
    return {
        "case": case.name,
        "subject": subject,
        "repeat": repeat,
        "fleet": True,
        "t0": t0,
        "t_end": t_end,
        "measure_end": end,
        "roles": fleet.roles,
        "budget": {"redis": budget[0].rpartition("@")[2], "name": budget[1]},
        "redis_events": redis_events,
        "controls": controls,
        "members": [
            {"role": role, "final": final, "cpu_s": cpu_s, "samples": samples}
            for role, final, cpu_s, samples in zip(
                fleet.roles, finals, cpu, per_member, strict=True
            )
        ],
        "samples": _aggregate(per_member),
        "final": {},
        "cpu_s": sum(c for c in cpu if c is not None),
        "peak_rss_mb": max((s.peak_rss_mb for s in cpu1 if s is not None), default=None),
        "sent": sum(f.sent for f in fleet.feeders.values()),
        "fed": {
            str(index): {
                "sent": feeder.sent,
                "error": repr(feeder.error) if feeder.error else None,
                "answers": getattr(feeder.sink, "answers", None),
                "refused": getattr(feeder.sink, "refused", None),
            }
            for index, feeder in fleet.feeders.items()
        },
        "calls": await sim.calls(seq0),
    }


def _last_throttle(member: dict[str, Any]) -> dict[str, Any]:
    for sample in reversed(member["samples"]):
        if sample.get("throttle"):
            throttle: dict[str, Any] = sample["throttle"]
            return throttle
    return {}


def _budget_figures(run: dict[str, Any]) -> dict[str, Any]:
    """Redis round trips per call and what the members said of their budget."""
    trips = admitted = 0
    known = False
    for member in run["members"]:
        throttle = _last_throttle(member)
        if throttle.get("budget") in ("shared", "fallback"):
            known = True
            trips += throttle.get("redis_round_trips") or 0
            admitted += throttle.get("calls_admitted") or 0
    fallback = [
        any((s.get("throttle") or {}).get("budget") == "fallback" for s in m["samples"])
        for m in run["members"]
    ]
    reported = any(s.get("throttle") for m in run["members"] for s in m["samples"])
    calls = len(run["calls"])
    return {
        "redis_round_trips": trips if known else None,
        "redis_round_trips_per_call": trips / (admitted or calls) if known and calls else None,
        "fallback_members": sum(fallback) if reported else None,
    }


def _learned(run: dict[str, Any]) -> float | None:
    values = [_last_throttle(m).get("learned_limit") for m in run["members"]]
    known = [v for v in values if isinstance(v, int | float)]
    return max(known) if known else None


def fleet_figures(case: Case, run: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one fleet run (flat: name -> number or None)."""
    calls, t0 = run["calls"], run["t0"]
    limits = Limits(case.tps, case.limit_changes())
    start, end = case.warmup_s, run["measure_end"]
    window = window_figures(calls, t0, start, end, limits, MAX_RECORDS)
    figures: dict[str, Any] = {
        key: window[key]
        for key in (
            "utilisation",
            "throttled_ratio",
            "throttled_calls",
            "ok_calls_per_s",
            "calls",
            "records_per_s",
            "batch_fill",
        )
    }
    figures["window_s"] = end - start
    figures["max_ok_calls_in_1s"] = busiest_window(calls, t0, start, end)
    figures["max_calls_in_1s"] = busiest_window(calls, t0, start, end, keep=lambda c: True)
    figures["windows_over_limit"] = windows_over(calls, t0, start, end, limits)
    figures.update(_budget_figures(run))
    figures["cpu_s"] = run.get("cpu_s")
    figures["peak_rss_mb"] = run.get("peak_rss_mb")
    loss = run.get("redis_events") or {}
    if "killed_at_s" in loss:
        down, back = loss["killed_at_s"], loss.get("back_at_s", end)
        during = window_figures(calls, t0, down, back, limits, MAX_RECORDS)
        figures["throttled_during_loss"] = during["throttled_calls"]
        figures["throttled_ratio_during_loss"] = during["throttled_ratio"]
        figures["utilisation_during_loss"] = during["utilisation"]
        figures["utilisation_before_loss"] = window_figures(
            calls, t0, start, down, limits, MAX_RECORDS
        )["utilisation"]
        figures["redis_recovery_s"] = time_to_reach(calls, t0, back, end, limits)
        figures["utilisation_after_loss"] = window_figures(
            calls, t0, back, end, limits, MAX_RECORDS
        )["utilisation"]
    if case.scenario == "auto-limit":
        figures.update(_auto_figures(case, run, limits))
    if "method_limits" in case.extra:
        figures.update(method_figures(calls, t0, start, end, case.extra["method_limits"]))
    return figures


def _auto_figures(case: Case, run: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Time to 95% of a limit nobody told the writer, and the 429s it took; again after the
    limit moves."""
    calls, t0, end = run["calls"], run["t0"], run["measure_end"]
    changes = [at for at, _ in case.limit_changes()]
    first_end = changes[0] if changes else end
    reach = time_to_reach(calls, t0, 0.0, first_end, limits, hold=3)
    figures: dict[str, Any] = {
        "reach_s": reach,
        "throttled_finding": count_between(calls, t0, 0.0, reach or first_end, _throttled),
        "throttled_ratio_run": window_figures(calls, t0, 0.0, end, limits, MAX_RECORDS)[
            "throttled_ratio"
        ],
        "utilisation_first_limit": window_figures(
            calls, t0, first_end / 2, first_end, limits, MAX_RECORDS
        )["utilisation"],
        "learned_limit_end": _learned(run),
    }
    for index, (change, label) in enumerate(zip(changes, ("drop", "rise"), strict=False)):
        until = changes[index + 1] if index + 1 < len(changes) else end
        follow = time_to_reach(calls, t0, change, until, limits, hold=3)
        figures[f"follow_{label}_s"] = follow
        figures[f"throttled_after_{label}"] = count_between(
            calls, t0, change, change + (follow or until - change), _throttled
        )
        figures[f"utilisation_after_{label}"] = window_figures(
            calls, t0, (change + until) / 2, until, limits, MAX_RECORDS
        )["utilisation"]
    figures["served_share"] = sum(1 for c in calls if is_ok(c)) / len(calls) if calls else None
    return figures


async def run_fleet(bench: Bench, case: Case, result: dict[str, Any]) -> None:
    """Every fleet subject of ``case`` (those named in ``--peers``, or all), each repeat,
    into ``result`` (runs, skipped subjects, failed runs) as :meth:`Bench.run_case` keeps
    them."""
    from .analysis import run_figures

    named = [s for s in case.subjects if s in bench.options.subjects]
    subjects = named or list(case.subjects)
    result["runs"] = {s: [] for s in subjects}
    sim = SimulatorProcess(
        bench.out / "logs" / f"{case.name.replace('/', '-')}-simulator.log", {"seed": 7}
    )
    await sim.start()
    try:
        for repeat in range(bench.options.repeats):
            shift = repeat % len(subjects)
            for subject in subjects[shift:] + subjects[:shift]:
                if subject in result["skipped"]:
                    continue
                print(
                    f"  {case.name}: {subject} x{len(case.extra['roles'])} "
                    f"(repeat {repeat + 1}/{bench.options.repeats})",
                    flush=True,
                )
                try:
                    run = await one_fleet_run(bench, sim, case, subject, repeat)
                except SubjectUnavailable as exc:
                    result["skipped"][subject] = str(exc)
                    print(f"    skipped: {exc}", flush=True)
                    continue
                except Exception as exc:  # one failed run must not lose the others
                    result["errors"].append(f"{subject} repeat {repeat + 1}: {exc!r}")
                    print(f"    failed: {exc!r}", flush=True)
                    continue
                bench.save_run(run)
                result["runs"][subject].append({"figures": run_figures(case, run), "run": run})
    finally:
        await sim.close()
