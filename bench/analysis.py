"""One run's figures: the generic throughput and cost figures, plus what each scenario
asks for (settling after a limit drop, draining after an outage, accounting under
faults, end-to-end latency). Input is the run record the runner saved
(``runs/<case>/<subject>-<repeat>.json``); output is a flat mapping of figure name
to number (or None when the figure does not exist for that run, e.g. a latency
percentile that falls among records never delivered).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .measure import Limits, bins, concurrency, percentiles, window_figures
from .scenarios import MAX_RECORDS, Case
from .windows import busiest_window

__all__ = ["run_figures"]

Run = dict[str, Any]


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def _throughput(case: Case, run: Run, limits: Limits) -> dict[str, Any]:
    calls, t0 = run["calls"], run["t0"]
    start = case.warmup_s
    end = run["measure_end"]
    figures = window_figures(calls, t0, start, end, limits, MAX_RECORDS)
    figures["max_ok_calls_in_1s"] = busiest_window(calls, t0, start, end)
    latency = figures.pop("call_latency_ms")
    for key, value in latency.items():
        figures[f"call_latency_{key}_ms"] = value
    level = concurrency(calls, t0, end)
    inside = [v for t, v in zip(level["t"], level["in_flight"], strict=True) if t >= start]
    figures["in_flight_median"] = statistics.median(inside) if inside else None
    figures["in_flight_max"] = max(inside) if inside else None
    limits_seen = [s.get("in_flight_limit") for s in run["samples"] if s.get("in_flight_limit")]
    figures["in_flight_limit_max"] = max(limits_seen) if limits_seen else None
    return figures


def _cost(run: Run) -> dict[str, Any]:
    calls, t0 = run["calls"], run["t0"]
    delivered = sum(
        c["records"]
        for c in calls
        if c["status"] == 200 and c["outcome"] == "ok" and c["t"] >= t0 and c["records"]
    )
    cpu = run.get("cpu_s")
    return {
        "records_delivered": delivered,
        "cpu_s": cpu,
        "records_per_cpu_s": delivered / cpu if cpu else None,
        "peak_rss_mb": run.get("peak_rss_mb"),
        "retried": run["final"].get("retried"),
        "throttled_seen": run["final"].get("throttled"),
        "dead_lettered": run["final"].get("dead"),
    }


def _latency(run: Run) -> dict[str, Any]:
    latency = run.get("e2e")
    if latency is None:
        return {}
    values, missing = latency["values"], latency["missing"]
    result: dict[str, Any] = {
        f"e2e_{key}_ms": _ms(value) for key, value in percentiles(values, missing).items()
    }
    total = len(values) + missing
    result["delivered_share"] = len(values) / total if total else None
    return result


def _intake(case: Case, run: Run) -> dict[str, Any]:
    """How long intake took to answer 202, over the posts of the measurement window."""
    answers = run.get("intake_answers")
    if not answers:
        return {}
    start = run["t0"] + case.warmup_s
    took = [seconds for at, seconds in answers if at >= start]
    found = percentiles(took)
    return {"intake_p50_ms": _ms(found["p50"]), "intake_p99_ms": _ms(found["p99"])}


def _limit_drop(case: Case, run: Run, limits: Limits) -> dict[str, Any]:
    calls, t0 = run["calls"], run["t0"]
    high, low, back = case.extra["high_s"], case.extra["low_s"], case.extra["back_s"]
    drop, restore, end = high, high + low, high + low + back
    series = bins(calls, t0, end)

    def between(a: float, b: float) -> list[int]:
        return [i for i, t in enumerate(series["t"]) if a <= t < b]

    low_bins = between(drop, restore)
    throttled_bins = [i for i in low_bins if series["throttled"][i] > 0]
    if not throttled_bins:
        settle: float | None = 0.0
    else:
        settled_at = series["t"][throttled_bins[-1]] + 1.0
        # A run still being throttled in the last 2 s of the low phase never settled.
        settle = settled_at - drop if settled_at <= restore - 2.0 else None
    low_window = window_figures(calls, t0, drop, restore, limits, MAX_RECORDS)
    recovery = None
    for i in between(restore, end):
        if series["ok"][i] >= 0.9 * limits.at(restore):
            recovery = series["t"][i] + 1.0 - restore
            break

    def utilisation(a: float, b: float) -> float | None:
        value: float | None = window_figures(calls, t0, a, b, limits, MAX_RECORDS)["utilisation"]
        return value

    return {
        "settle_s": settle,
        "throttled_during_change": low_window["throttled_calls"],
        "throttled_ratio_low": low_window["throttled_ratio"],
        "utilisation_before": utilisation(min(1.0, drop / 2), drop),
        "utilisation_low": utilisation(drop + low / 2, restore),
        "recovery_s": recovery,
        "utilisation_after": utilisation(restore + back / 2, end),
    }


def _outage(case: Case, run: Run, limits: Limits) -> dict[str, Any]:
    """How long the backlog built during the outage took to reach Campaign, and how fast."""
    t0 = run["t0"]
    outage_end = case.extra["outage_start_s"] + case.extra["outage_s"]
    backlog = run.get("outage_backlog") or {}
    result: dict[str, Any] = {
        "drain_s": None,
        "drain_records_per_s": None,
        "drain_utilisation": None,
    }
    # Drained when every event created before the outage ended is in Campaign.
    if backlog.get("events") and not backlog.get("undelivered"):
        drain = max(0.0, backlog["last_commit"] - t0 - outage_end)
        result["drain_s"] = drain
        if drain > 0.5:
            window = window_figures(
                run["calls"], t0, outage_end, outage_end + drain, limits, MAX_RECORDS
            )
            result["drain_records_per_s"] = window["records_per_s"]
            result["drain_utilisation"] = window["utilisation"]
    return result


def _masked(case: Case, run: Run) -> dict[str, Any]:
    """What an instance-wide masked fault cost: calls answered with it, per minute."""
    spent = sum(1 for c in run["calls"] if c["outcome"] == "inject:masked")
    minutes = case.extra["outage_s"] / 60.0
    return {"masked_calls": spent, "masked_calls_per_min": spent / minutes if minutes else None}


def _accounting(run: Run) -> dict[str, Any]:
    sent = run["sent"]
    delivered = run.get("delivered_distinct")
    dead = run["final"].get("dead") or 0
    pending = run["final"].get("queue_depth") or 0
    result: dict[str, Any] = {
        "sent": sent,
        "poisoned": run.get("poisoned", 0),
        "delivered": delivered,
        "dead_lettered": dead,
        "pending_at_end": pending,
        "calls": len(run["calls"]),
    }
    if delivered is not None:
        result["unaccounted"] = sent - delivered - dead - pending
        result["lost"] = sent - delivered - dead - pending
        result["good_records_not_delivered"] = sent - run.get("poisoned", 0) - delivered
    return result


def run_figures(case: Case, run: Run) -> dict[str, Any]:
    """Every figure of one run (flat: name -> number or None)."""
    if case.load == "fleet":
        from .fleet import fleet_figures

        found = fleet_figures(case, run)
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in found.items()
        }
    limits = Limits(case.tps, case.limit_changes())
    figures: dict[str, Any] = {}
    figures.update(_throughput(case, run, limits))
    figures.update(_cost(run))
    figures.update(_latency(run))
    figures.update(_intake(case, run))
    if case.scenario == "limit-drop":
        figures.update(_limit_drop(case, run, limits))
    if case.scenario in ("outage", "masked"):
        figures.update(_outage(case, run, limits))
    if case.scenario == "masked":
        figures.update(_masked(case, run))
    if case.load in ("poisson", "burst"):
        figures.update(_accounting(run))
    figures["machine_other_cores"] = run.get("other_cores")
    figures["simulator_cpu_share"] = run.get("simulator_cpu_share")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()}
