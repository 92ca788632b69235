"""Window counts over the simulator's call log: the busiest second, the seconds over the
limit, how long until the successful calls reach a share of the limit, and each SOAP
method's figures against a limit of its own.

Pure functions on call-log entries (``t`` is the arrival time in unix seconds,
``status`` and ``outcome`` as :mod:`bench.measure` reads them), tested on made-up
logs in ``tests/bench/test_windows.py``. Offsets are seconds from the run's ``t0``.

A one-second window here is the simulator's own sliding window: the calls whose
arrival is in ``(t - 1, t]``. The busiest window over a set of arrival times is the
largest count any such window holds, and a window is over the limit when it holds
more than the limit in force at its end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .measure import Limits

__all__ = [
    "busiest_window",
    "count_between",
    "is_ok",
    "method_figures",
    "time_to_reach",
    "windows_over",
]

Call = dict[str, Any]


def is_ok(call: Call) -> bool:
    """A call Campaign served (what utilisation counts)."""
    return bool(call["status"] == 200 and call["outcome"] == "ok")


def _times(
    calls: Sequence[Call], t0: float, start: float, end: float, keep: Callable[[Call], bool]
) -> list[float]:
    return sorted(c["t"] - t0 for c in calls if start <= c["t"] - t0 < end and keep(c))


def busiest_window(
    calls: Sequence[Call],
    t0: float,
    start: float,
    end: float,
    *,
    keep: Callable[[Call], bool] = is_ok,
    width: float = 1.0,
) -> int:
    """The most calls (successful ones by default) arriving in any window of ``width``
    seconds, ``(t - width, t]``, among those arriving in ``[start, end)``."""
    times = _times(calls, t0, start, end, keep)
    best = 0
    first = 0
    for last, at in enumerate(times):
        while times[first] <= at - width:
            first += 1
        best = max(best, last - first + 1)
    return best


def windows_over(
    calls: Sequence[Call],
    t0: float,
    start: float,
    end: float,
    limits: Limits,
    *,
    keep: Callable[[Call], bool] = lambda call: True,
    width: float = 1.0,
) -> int:
    """How many calls end a ``width``-second window holding more calls than the limit in
    force then (every call counts by default: what a shared budget promises is about
    the calls made, not only those served)."""
    times = _times(calls, t0, start, end, keep)
    over = 0
    first = 0
    for last, at in enumerate(times):
        while times[first] <= at - width:
            first += 1
        if last - first + 1 > limits.at(at) * width + 1e-9:
            over += 1
    return over


def count_between(
    calls: Sequence[Call], t0: float, start: float, end: float, keep: Callable[[Call], bool]
) -> int:
    """Calls arriving in ``[start, end)`` that ``keep`` accepts."""
    return sum(1 for c in calls if start <= c["t"] - t0 < end and keep(c))


def time_to_reach(
    calls: Sequence[Call],
    t0: float,
    start: float,
    end: float,
    limits: Limits,
    *,
    share: float = 0.95,
    hold: int = 1,
    width: float = 1.0,
) -> float | None:
    """Seconds from ``start`` until successful calls reach ``share`` of the limit.

    The span from ``start`` is cut into bins of ``width`` seconds; the answer is the end
    of the first bin of the first ``hold`` consecutive bins that each reach ``share``
    of the limit in force at their start (so 1 s at best with one-second bins), or
    None when no such run of bins ends before ``end``.
    """
    count = math.floor((end - start) / width + 1e-9)
    if count <= 0:
        return None
    served = [0] * count
    for call in calls:
        index = math.floor((call["t"] - t0 - start) / width)
        if 0 <= index < count and is_ok(call):
            served[index] += 1
    run = 0
    for index, value in enumerate(served):
        needed = share * limits.at(start + index * width) * width
        run = run + 1 if value >= needed - 1e-9 else 0
        if run == hold:
            return (index - hold + 2) * width
    return None


def method_figures(
    calls: Sequence[Call], t0: float, start: float, end: float, limits: Mapping[str, float]
) -> dict[str, float | int | None]:
    """Each limited method's figures over the calls arriving in ``[start, end)``, named
    ``<method>.<figure>``: successful calls/s, their share of the method's own limit,
    429s, and the most successful calls and the most calls (429s included) in any
    one-second window. A method absent from ``limits`` is left out."""
    width = end - start
    figures: dict[str, float | int | None] = {}
    for method, limit in limits.items():
        mine = [c for c in calls if c["method"] == method]
        served = count_between(mine, t0, start, end, is_ok)
        per_s = served / width if width > 0 else None
        figures[f"{method}.ok_calls_per_s"] = per_s
        figures[f"{method}.limit_share"] = per_s / limit if per_s is not None else None
        figures[f"{method}.throttled_calls"] = count_between(
            mine, t0, start, end, lambda call: bool(call["status"] == 429)
        )
        figures[f"{method}.max_ok_calls_in_1s"] = busiest_window(mine, t0, start, end)
        figures[f"{method}.max_calls_in_1s"] = busiest_window(
            mine, t0, start, end, keep=lambda call: True
        )
    return figures
