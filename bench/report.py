"""The report: ``report.json`` (every figure, median and spread over the repeats, ratios
to the peers, the delivery targets) and ``report.md`` (the same, for people), next
to the PNG plots.

Figures of one subject over its repeats are summarised as median, min, max and
spread (max - min); ratios are the writer's median over each peer's, because on a
shared machine absolute numbers drift while subjects measured side by side in the
same run drift together.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from .markdown import format_figure, render
from .measure import summarise
from .procs import REPO, machine_info
from .scenarios import LATENCY_MS, LINGER_MS, MAX_RECORDS, METHOD_LIMITS, TPS, build_cases

__all__ = ["build_report", "format_figure", "list_scenarios", "targets", "write_report"]


class _Plan(Protocol):
    mode: str
    repeats: int
    scale: float
    scenarios: list[str]
    subjects: tuple[str, ...]


class _Fill(Protocol):
    figures: Any


class Bench(Protocol):
    """What the report reads of a run (:class:`bench.runner.Bench`); the runner imports
    this module, so the report names what it needs rather than the runner's class."""

    options: _Plan
    backlog: _Fill
    cases: dict[str, dict[str, Any]]
    out: Path


E2E_TARGET_MS = LINGER_MS + 2 * LATENCY_MS + 100
PEERS = ("unitary", "sdk", "cubic")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _median(report: dict[str, Any], case: str, figure: str, subject: str = "writer") -> Any:
    try:
        return report["cases"][case]["subjects"][subject]["figures"][figure]["median"]
    except (KeyError, TypeError):
        return None


# The delivery issue's targets read from one case's writer median:
# (target, case, figure, bound, whether the figure must be at least the bound).
TARGETS = (
    ("successful calls >= 97% of the limit", "saturation", "utilisation", 0.97, True),
    ("429s <= 1% of calls", "saturation", "throttled_ratio", 0.01, False),
    (
        f"records/s >= 0.95 x {TPS:g} x {MAX_RECORDS}",
        "saturation",
        "records_per_s",
        0.95 * TPS * MAX_RECORDS,
        True,
    ),
    ("429s <= 1%, sliding window", "limiter-models/sliding", "throttled_ratio", 0.01, False),
    ("429s <= 2%, fixed window", "limiter-models/fixed", "throttled_ratio", 0.02, False),
    ("429s <= 2%, token bucket", "limiter-models/token_bucket", "throttled_ratio", 0.02, False),
    (
        "records per writer CPU-second, HTTP intake to ack (both at once)",
        "steady",
        "records_per_cpu_s",
        30_000,
        True,
    ),
    (
        f"end-to-end p99 at half capacity <= {E2E_TARGET_MS:g} ms (linger + 2 x latency + 100)",
        "steady",
        "e2e_p99_ms",
        E2E_TARGET_MS,
        False,
    ),
)


# Issue 20's targets: (target, case, subject, figure, bound, at least).
SCALE_TARGETS = (
    ("3 writers sharing: >= 97% of the limit", "scale-out", "shared", "utilisation", 0.97, True),
    (
        "3 writers sharing: 0 windows over the limit",
        "scale-out",
        "shared",
        "windows_over_limit",
        0,
        False,
    ),
    ("3 writers sharing: 429s <= 0.5%", "scale-out", "shared", "throttled_ratio", 0.005, False),
    ("uneven load, sharing: >= 95%", "scale-out/uneven", "shared", "utilisation", 0.95, True),
    (
        "Redis lost: 429s <= 2% while it is down",
        "scale-out/redis-loss",
        "shared",
        "throttled_ratio_during_loss",
        0.02,
        False,
    ),
    (
        "Redis back: >= 95% of the limit within 5 s",
        "scale-out/redis-loss",
        "shared",
        "redis_recovery_s",
        5.0,
        False,
    ),
    ("auto: 95% of an unknown limit within 30 s", "auto-limit", "auto", "reach_s", 30.0, False),
    ("auto: 429s <= 2% over the run", "auto-limit", "auto", "throttled_ratio_run", 0.02, False),
    *(
        (
            f"per-method limits: {method} >= 95% of its own limit",
            "method-limits",
            "per-method",
            f"{method}.limit_share",
            0.95,
            True,
        )
        for method in METHOD_LIMITS
    ),
    (
        "per-method limits: 429s <= 0.5%",
        "method-limits",
        "per-method",
        "throttled_ratio",
        0.005,
        False,
    ),
    *(
        (
            f"per-method limits, backlog mixed 1:1: {method} >= 95% of its own limit",
            "method-limits/even-mix",
            "per-method",
            f"{method}.limit_share",
            0.95,
            True,
        )
        for method in METHOD_LIMITS
    ),
    *(
        (
            f"one writer alone, {model}{told}: {name}",
            f"limiter-models/{model}{case}",
            "writer",
            fig,
            b,
            up,
        )
        for case, told in (("", ""), ("/headroom-0.99", " at headroom 0.99"))
        for model in ("sliding", "fixed", "token_bucket")
        for name, fig, b, up in (
            (">= 99% of the limit", "utilisation", 0.99, True),
            ("429s <= 0.5%", "throttled_ratio", 0.005, False),
        )
    ),
)


def _target(
    name: str, source: str, value: Any, bound: float, at_least: bool, unit: str
) -> dict[str, Any]:
    met = None if value is None else (value >= bound if at_least else value <= bound)
    wanted = (">= " if at_least else "<= ") + format_figure(unit, bound)
    return {
        "target": name,
        "source": source,
        "value": value,
        "wanted": wanted,
        "unit": unit,
        "met": met,
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The delivery issue's targets, each with the writer's median figure and a verdict."""
    rows = [
        _target(name, case, _median(report, case, figure), bound, at_least, figure)
        for name, case, figure, bound, at_least in TARGETS
    ]
    rows += [
        _target(
            name,
            f"{case} ({subject})",
            _median(report, case, figure, subject),
            bound,
            at_least,
            figure,
        )
        for name, case, subject, figure, bound, at_least in SCALE_TARGETS
    ]
    # CPU at full rate: the filling's intake cost per event plus saturation's delivery cost.
    fill = report.get("backlog_fill") or {}
    delivery = _median(report, "saturation", "records_per_cpu_s")
    combined = None
    if fill.get("cpu_us_per_event") and delivery:
        combined = 1.0 / (fill["cpu_us_per_event"] / 1e6 + 1.0 / delivery)
    name = "records per writer CPU-second, HTTP intake + delivery at saturation"
    rows.append(
        _target(name, "backlog fill + saturation", combined, 30_000, True, "records_per_cpu_s")
    )
    # Memory: the higher of the two peaks, filling and delivering.
    peaks = [
        _median(report, "memory", f"peak_rss_{phase}_mb") for phase in ("filling", "delivering")
    ]
    peak = max((v for v in peaks if v is not None), default=None)
    waiting = _median(report, "memory", "events_waiting")
    source = "memory" + (f" ({waiting:,.0f} events waiting)" if waiting else "")
    name = "RSS < 200 MB with one million events waiting"
    rows.append(_target(name, source, peak, 200, False, "peak_rss_mb"))
    return rows


def _case_report(result: dict[str, Any]) -> dict[str, Any]:
    case = result["case"]
    subjects: dict[str, Any] = {}
    for name, runs in result["runs"].items():
        figure_names: list[str] = []
        for run in runs:
            figure_names += [k for k in run["figures"] if k not in figure_names]
        subjects[name] = {
            "repeats": len(runs),
            "figures": {
                k: summarise([r["figures"].get(k) for r in runs])
                for k in figure_names
                if all(isinstance(r["figures"].get(k), int | float | type(None)) for r in runs)
            },
            "runs": [r["figures"] for r in runs],
        }
    ratios: dict[str, dict[str, float | None]] = {}
    # The subject the others are compared with: the writer, or a fleet case's first subject.
    main = "writer" if case.load != "fleet" else case.subjects[0]
    peers = PEERS if case.load != "fleet" else case.subjects[1:]
    writer = subjects.get(main, {}).get("figures", {})
    for name, data in subjects.items():
        if name not in peers or not writer:
            continue
        ratios[name] = {}
        for figure in case.figures:
            mine = (writer.get(figure) or {}).get("median")
            theirs = (data["figures"].get(figure) or {}).get("median")
            ratios[name][figure] = mine / theirs if mine is not None and theirs else None
    return {
        "scenario": case.scenario,
        "description": case.description,
        "load": case.load,
        "params": {
            "warmup_s": case.warmup_s,
            "duration_s": case.duration_s,
            "drain_s": case.drain_s,
            "events": case.events or None,
            "rate_share": case.rate_share if case.load == "poisson" else None,
            "poison_share": case.poison_share or None,
            "knobs": case.knobs_for_run(),
            "phases": [{"at_s": p.at_s, "label": p.label, **p.changes} for p in case.phases],
        },
        "headline": list(case.figures),
        "main_subject": main,
        "subjects": subjects,
        "ratios": ratios,
        "skipped": result.get("skipped", {}),
        "errors": result.get("errors", []),
        "plots": result.get("plots", []),
    }


def build_report(bench: Bench, started: float) -> dict[str, Any]:
    finished = getattr(bench, "finished", None) or time.time()
    machine = machine_info()
    # The load average when the run began tells more about its noise than the one at the end.
    at_start = getattr(bench, "machine_at_start", None)
    if at_start:
        machine["loadavg_start"] = at_start["loadavg"]
    machine["loadavg_end"] = machine.pop("loadavg")
    report: dict[str, Any] = {
        "version": 1,
        "started_at": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "finished_at": datetime.datetime.fromtimestamp(finished).isoformat(timespec="seconds"),
        "duration_s": round(finished - started, 1),
        "mode": bench.options.mode,
        "repeats": bench.options.repeats,
        "scale": bench.options.scale,
        "scenarios": bench.options.scenarios,
        "subjects": list(bench.options.subjects),
        "git_commit": _git_commit(),
        "machine": machine,
        "settings": {
            "tps_limit": TPS,
            "max_records": MAX_RECORDS,
            "linger_ms": LINGER_MS,
            "campaign_latency_ms": LATENCY_MS,
            "capacity_records_per_s": TPS * MAX_RECORDS,
            "writer_config": "config/example.toml",
        },
        "backlog_fill": bench.backlog.figures,
        "wake_cost": getattr(bench, "wake_cost", None),
        "cases": {name: _case_report(result) for name, result in bench.cases.items()},
    }
    report["targets"] = targets(report)
    return report


def write_report(bench: Bench, started: float, *, plots: bool = True) -> Path:
    if plots:
        from .plots import plot_case

        for name, result in bench.cases.items():
            result["plots"] = plot_case(name, result, bench.out)
    report = build_report(bench, started)
    (bench.out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    path = bench.out / "report.md"
    path.write_text(render(report))
    return path


def list_scenarios() -> str:
    quick, full = build_cases("quick"), build_cases("full")
    lines = []
    for name, cases in full.items():
        lines.append(f"{name}")
        for case, short in zip(cases, quick[name], strict=True):
            lines.append(f"  {case.name}: {case.description}")
            quick_s = short.warmup_s + short.duration_s
            full_s = case.warmup_s + case.duration_s
            lines.append(f"    quick: {quick_s:g} s per run; full: {full_s:g} s per run")
    return "\n".join(lines)
