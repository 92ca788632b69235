"""PNG plots (matplotlib, Agg backend): per case, a timeline and latency CDFs.

* ``<case>-timeline.png``: successful calls/s against the tenant limit (a dashed
  black line that follows every change), 429s per second, calls in flight at
  Campaign, and events waiting (the writer's queue depth; a peer's pending
  events). One line per subject, from its first repeat; x is seconds since the run
  started.
* ``<case>-latency.png``: the CDF of call latency (as the simulator measured it),
  and when the case has it, of end-to-end latency (event creation to commit), all
  repeats pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .measure import WRITE_METHODS, Limits, bins, concurrency

__all__ = ["COLOURS", "plot_case"]

COLOURS = {"writer": "tab:blue", "cubic": "tab:orange", "sdk": "tab:green", "unitary": "tab:red"}


def _first_runs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: runs[0]["run"] for name, runs in result["runs"].items() if runs}


def _smooth(values: list[float], width: int) -> list[float]:
    out = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def _timeline(name: str, result: dict[str, Any], path: Path) -> None:
    case = result["case"]
    runs = _first_runs(result)
    end = max(r["t_end"] - r["t0"] for r in runs.values())
    figure, axes = plt.subplots(4, 1, figsize=(13, 11), sharex=True)
    limits = Limits(case.tps, case.limit_changes())
    steps = [(0.0, limits.at(0.0))] + [(at, limits.at(at)) for at, _ in case.limit_changes()]
    xs = [t for t, _ in steps] + [end]
    ys = [v for _, v in steps] + [steps[-1][1]]
    axes[0].step(
        xs,
        ys,
        where="post",
        color="black",
        linestyle="--",
        linewidth=2.0,
        label="tenant limit",
        zorder=10,  # on top: subjects running at the limit would hide it
    )
    for subject, run in runs.items():
        colour = COLOURS.get(subject)
        series = bins(run["calls"], run["t0"], end)
        axes[0].step(
            series["t"], series["ok"], where="post", color=colour, label=f"{subject} (successful)"
        )
        axes[1].step(series["t"], series["throttled"], where="post", color=colour, label=subject)
        level = concurrency(run["calls"], run["t0"], end)
        axes[2].plot(level["t"], _smooth(level["in_flight"], 5), color=colour, label=subject)
        samples = [s for s in run["samples"] if s.get("queue_depth") is not None]
        axes[3].plot(
            [s["t"] for s in samples],
            [s["queue_depth"] for s in samples],
            color=colour,
            label=subject,
        )
        rates = [
            s
            for s in run["samples"]
            if s.get("rate") is not None and subject not in ("sdk", "unitary")
        ]
        if rates:
            axes[0].plot(
                [s["t"] for s in rates],
                [s["rate"] for s in rates],
                color=colour,
                linestyle=":",
                linewidth=1,
                label=f"{subject} throttle rate",
            )
    for phase in case.phases:
        if "outage_s" in phase.changes:
            for axis in axes:
                axis.axvspan(
                    phase.at_s,
                    phase.at_s + phase.changes["outage_s"],
                    color="grey",
                    alpha=0.15,
                    label="_outage",
                )
            axes[0].text(phase.at_s, 0.5, " Campaign down", fontsize=8, color="dimgrey")
    if "redis_kill_s" in case.extra:  # scale-out/redis-loss: when Redis was down
        down = case.extra["redis_kill_s"]
        for axis in axes:
            axis.axvspan(down, down + case.extra["redis_down_s"], color="grey", alpha=0.15)
        axes[0].text(down, 0.5, " Redis down", fontsize=8, color="dimgrey")
    axes[0].set_ylabel("calls/s")
    axes[0].set_title(f"{name}: calls per second against the tenant limit")
    axes[1].set_ylabel("HTTP 429 per second")
    axes[1].set_title("throttled calls (429)")
    axes[2].set_ylabel("calls in flight")
    axes[2].set_title("calls under way at Campaign (0.5 s mean)")
    axes[3].set_ylabel("events waiting (log scale)")
    axes[3].set_title("queue depth (writer, cubic) / pending events (sdk, unitary)")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("time since the run started (s)")
    for axis in axes:
        axis.grid(True, alpha=0.3)
        # Outside the axes, so no line hides behind it.
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[0].set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def _cdf(axis: Any, values: list[float], colour: str | None, label: str) -> None:
    if not values:
        return
    ordered = sorted(values)
    n = len(ordered)
    axis.step(
        ordered,
        [(i + 1) / n for i in range(n)],
        where="post",
        color=colour,
        label=f"{label} (n={n:,})",
    )


def _latency(name: str, result: dict[str, Any], path: Path) -> None:
    has_e2e = any(r["run"].get("e2e") for runs in result["runs"].values() for r in runs)
    figure, axes = plt.subplots(
        1, 2 if has_e2e else 1, figsize=(12 if has_e2e else 7, 4.5), squeeze=False
    )
    call_axis = axes[0][0]
    for subject, runs in result["runs"].items():
        colour = COLOURS.get(subject)
        calls = [
            c["latency_ms"]
            for r in runs
            for c in r["run"]["calls"]
            if c["status"] == 200 and c["method"] in WRITE_METHODS
        ]
        _cdf(call_axis, calls, colour, subject)
        if has_e2e:
            values = [
                v * 1000.0 for r in runs for v in (r["run"].get("e2e") or {}).get("values", [])
            ]
            missing = sum((r["run"].get("e2e") or {}).get("missing", 0) for r in runs)
            label = subject + (f", {missing:,} never delivered" if missing else "")
            if values:
                _cdf(axes[0][1], values, colour, label)
            elif missing:  # nothing to draw, but the legend must say why
                axes[0][1].plot(
                    [], [], color=colour, label=f"{subject}: none of {missing:,} delivered"
                )
    call_axis.set_title(f"{name}: latency of successful write calls")
    call_axis.set_xlabel("call latency at Campaign (ms)")
    call_axis.set_ylabel("share of calls")
    if has_e2e:
        axis = axes[0][1]
        axis.set_title(f"{name}: end-to-end latency (creation to commit)")
        axis.set_xlabel("end-to-end latency (ms, log scale)")
        axis.set_ylabel("share of delivered events")
        axis.set_xscale("log")
    for axis in axes[0]:
        axis.grid(True, alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
        axis.set_ylim(0, 1.02)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_case(name: str, result: dict[str, Any], out: Path) -> list[str]:
    """Draw the case's plots into ``out``; returns their file names."""
    if result["case"].load in ("intake", "memory") or not _first_runs(result):
        return []
    stem = name.replace("/", "-")
    files = [f"{stem}-timeline.png", f"{stem}-latency.png"]
    _timeline(name, result, out / files[0])
    _latency(name, result, out / files[1])
    return files
