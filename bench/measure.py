"""Figures from what a run left behind: the simulator's call log, its stored records,
and the samples taken of the subject. Pure functions, no I/O, so they are tested
on made-up data (``tests/bench/test_measure.py``).

Times in the call log are the simulator's arrival times (unix seconds); every
function takes times relative to the run's start ``t0`` where it says so.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "PERCENTILES",
    "Limits",
    "bins",
    "concurrency",
    "end_to_end",
    "percentiles",
    "summarise",
    "window_figures",
]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
WRITE_METHODS = frozenset({"Ingest", "IngestExt", "Write", "WriteCollection"})

Call = dict[str, Any]


class Limits:
    """The tenant limit over a run: a start value and changes at offsets from ``t0``."""

    def __init__(self, start: float, changes: Sequence[tuple[float, float]] = ()) -> None:
        self.steps = [(0.0, start), *sorted(changes)]

    def at(self, offset: float) -> float:
        value = self.steps[0][1]
        for at, limit in self.steps:
            if offset >= at:
                value = limit
        return value

    def mean(self, start: float, end: float) -> float:
        """The time-averaged limit over [start, end)."""
        if end <= start:
            return self.at(start)
        edges = sorted({start, end, *(at for at, _ in self.steps if start < at < end)})
        total = sum((b - a) * self.at(a) for a, b in itertools.pairwise(edges))
        return total / (end - start)


def percentiles(values: Iterable[float], censored: int = 0) -> dict[str, float | None]:
    """Nearest-rank percentiles; ``censored`` values are known only to be larger than all
    (records never delivered), so a percentile landing among them is None (unbounded)."""
    ordered = sorted(values)
    total = len(ordered) + censored
    result: dict[str, float | None] = {}
    for p in PERCENTILES:
        key = f"p{p:g}"
        if total == 0:
            result[key] = None
            continue
        rank = max(1, math.ceil(p / 100.0 * total))
        result[key] = ordered[rank - 1] if rank <= len(ordered) else None
    result["max"] = (ordered[-1] if ordered else None) if censored == 0 else None
    return result


def _in(call: Call, t0: float, start: float, end: float) -> bool:
    return start <= call["t"] - t0 < end


def window_figures(
    calls: Sequence[Call],
    t0: float,
    start: float,
    end: float,
    limits: Limits,
    max_records: int,
) -> dict[str, Any]:
    """Throughput figures for calls arriving in [t0 + start, t0 + end)."""
    width = max(1e-9, end - start)
    inside = [c for c in calls if _in(c, t0, start, end)]
    ok = [c for c in inside if c["status"] == 200 and c["outcome"] == "ok"]
    throttled = sum(1 for c in inside if c["status"] == 429)
    writes = [c for c in ok if c["method"] in WRITE_METHODS]
    records = sum(c["records"] for c in writes)
    limit = limits.mean(start, end)
    latency = percentiles(c["latency_ms"] for c in ok)
    return {
        "window_s": round(width, 3),
        "limit": round(limit, 3),
        "calls": len(inside),
        "calls_per_s": len(inside) / width,
        "ok_calls_per_s": len(ok) / width,
        "utilisation": len(ok) / width / limit if limit else None,
        "throttled_calls": throttled,
        "throttled_ratio": throttled / len(inside) if inside else 0.0,
        "failed_calls": len(inside) - len(ok) - throttled,
        "records_per_s": records / width,
        "ceiling_share": records / width / (limit * max_records) if limit else None,
        "batch_fill": records / len(writes) if writes else None,
        "call_latency_ms": latency,
    }


def bins(
    calls: Sequence[Call], t0: float, end: float, width: float = 1.0
) -> dict[str, list[float]]:
    """Calls per second in bins of ``width`` from t0: ok, throttled (429), other."""
    count = max(1, math.ceil(end / width))
    series = {"t": [i * width for i in range(count)], "ok": [0.0] * count}
    series["throttled"] = [0.0] * count
    series["failed"] = [0.0] * count
    series["records"] = [0.0] * count
    for call in calls:
        index = math.floor((call["t"] - t0) / width)
        if not 0 <= index < count:
            continue
        if call["status"] == 429:
            series["throttled"][index] += 1 / width
        elif call["status"] == 200 and call["outcome"] == "ok":
            series["ok"][index] += 1 / width
            if call["method"] in WRITE_METHODS:
                series["records"][index] += call["records"] / width
        else:
            series["failed"][index] += 1 / width
    return series


def concurrency(
    calls: Sequence[Call], t0: float, end: float, step: float = 0.1
) -> dict[str, list[float]]:
    """Calls under way at the simulator, sampled every ``step`` seconds from t0."""
    count = max(1, math.ceil(end / step))
    deltas = [0] * (count + 1)
    for call in calls:
        # Rounded first: unix times near 1.8e9 carry float noise far above a microsecond step.
        first = max(0, math.ceil(round((call["t"] - t0) / step, 6)))
        last = math.floor(round((call["t"] - t0 + call["latency_ms"] / 1000.0) / step, 6))
        if first > last or first > count:
            continue
        deltas[first] += 1
        deltas[min(count, last + 1)] -= 1
    level = 0
    values = []
    for i in range(count):
        level += deltas[i]
        values.append(float(level))
    return {"t": [i * step for i in range(count)], "in_flight": values}


def end_to_end(
    records: Iterable[dict[str, str]], sent_ids: set[str] | None = None
) -> tuple[list[float], int]:
    """Seconds from creation (``testcol2``) to commit (``__committed_at``) of each record
    whose id is in ``sent_ids`` (all when None), and how many of those ids are missing."""
    latencies = []
    seen = 0
    for row in records:
        if sent_ids is not None and row.get("id") not in sent_ids:
            continue
        try:
            created = float(row["testcol2"])
            committed = float(row["__committed_at"])
        except (KeyError, ValueError):
            continue
        seen += 1
        latencies.append(committed - created)
    missing = 0 if sent_ids is None else max(0, len(sent_ids) - seen)
    return latencies, missing


def summarise(values: Sequence[float | None]) -> dict[str, Any]:
    """Median and spread of one figure over the repeats (None values are left out)."""
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not known:
        return {"median": None, "min": None, "max": None, "spread": None, "n": 0}
    median = statistics.median(known)
    low, high = min(known), max(known)
    return {
        "median": median,
        "min": low,
        "max": high,
        "spread": high - low,
        "relative_spread": (high - low) / abs(median) if median else None,
        "n": len(known),
    }
