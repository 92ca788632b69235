"""The scenarios, by name, each in a quick and a full version.

A scenario is one or more *cases* (``limiter-models`` has one per limiter model,
``intake`` one per source). A case says how the simulator behaves (its knobs, and
timed control changes), how load arrives, and for how long:

* ``backlog``: every event is waiting before delivery starts (the writer and the
  cubic peer restart on a copy of a queue file filled over HTTP; the unitary and
  SDK peers get the events on stdin at once); figures come from a window after a
  warm-up;
* ``poisson``: Poisson arrivals at a share of capacity for ``warmup + duration``,
  then up to ``drain_s`` for the subject to empty;
* ``burst``: ``events`` posted at once, then up to ``drain_s`` to settle;
* ``intake`` and ``memory``: writer-only measurements (see :mod:`bench.special`);
* ``fleet``: several writer processes at once on one tenant, each in a role
  (``extra["roles"]``: ``backlog``, ``light`` or ``idle``), the subjects being how
  they share the budget (see :mod:`bench.fleet`); role ``two-routes`` is a backlog
  on two routes with different SOAP methods (``method-limits``).

Capacity is ``tps_limit x max_records`` records/s (20 x 500 = 10,000 by default).
Durations of the quick mode keep ``make bench`` near a minute; the full mode is
what ops run before a rise in volume.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "ALL_SUBJECTS",
    "BASE_KNOBS",
    "DEFAULT_QUICK",
    "METHOD_LIMITS",
    "SCENARIOS",
    "Case",
    "Phase",
    "build_cases",
]

ALL_SUBJECTS = ("writer", "unitary", "sdk", "cubic")
SCALE_OUT_SUBJECTS = ("shared", "storm", "split")
AUTO_SUBJECTS = ("auto", "known")
METHOD_SUBJECTS = ("per-method", "tenant-only")
# Per-method limits inside the tenant's (issue 20): what the simulator enforces in the
# method-limits case and what the per-method subject is told in [campaign.limits].
METHOD_LIMITS = {"Ingest": 12.0, "WriteCollection": 5.0}
TPS = 20.0
MAX_RECORDS = 500
LINGER_MS = 200
LATENCY_MS = 50.0

# Every knob any case changes, at the value the other cases need: each run starts
# from these, so nothing leaks from one case or subject into the next.
BASE_KNOBS: dict[str, Any] = {
    "tps_limit": TPS,
    "limiter": "sliding",
    "burst": 5,
    "latency_ms": LATENCY_MS,
    "latency_per_record_ms": 0.01,
    "latency_jitter": 0.1,
    "max_concurrent": 64,
    "retry_after": True,
    "rate_500": 0.0,
    "rate_502": 0.0,
    "rate_503": 0.0,
    "rate_timeout": 0.0,
    "timeout_hold_s": 30.0,
    "poison_rate": 0.0,
    "schedule": [],
    "method_limits": {},
}


@dataclass(frozen=True)
class Phase:
    """A control request sent ``at_s`` seconds after the run starts."""

    at_s: float
    changes: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str
    description: str
    load: str  # backlog | poisson | burst | intake | memory
    knobs: dict[str, Any] = field(default_factory=dict)
    warmup_s: float = 1.0
    duration_s: float = 5.0
    drain_s: float = 10.0
    rate_share: float = 0.5
    events: int = 0
    poison_share: float = 0.0
    phases: tuple[Phase, ...] = ()
    writer_sets: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ALL_SUBJECTS
    needs_records: bool = False
    figures: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tps(self) -> float:
        return float(self.knobs.get("tps_limit", TPS))

    @property
    def latency_ms(self) -> float:
        return float(self.knobs.get("latency_ms", LATENCY_MS))

    @property
    def capacity(self) -> float:
        """Records/s the tenant allows: tps_limit x max_records."""
        return self.tps * MAX_RECORDS

    def limit_changes(self) -> list[tuple[float, float]]:
        return [
            (p.at_s, float(p.changes["tps_limit"])) for p in self.phases if "tps_limit" in p.changes
        ]

    def backlog_needed(self, records_per_call: int = MAX_RECORDS) -> int:
        """Events a backlog case must hold so a subject sending ``records_per_call``
        records per call at the limit never runs dry."""
        if self.load not in ("backlog", "fleet"):
            return 0
        seconds = self.warmup_s + self.duration_s
        # Records/s follow the limit, so a halved limit needs half the backlog meanwhile.
        mean_limit = self._mean_limit(seconds)
        return int(mean_limit * records_per_call * seconds * 1.2) + 5 * records_per_call

    def _mean_limit(self, seconds: float) -> float:
        changes = sorted(self.limit_changes())
        edges = [0.0, *(at for at, _ in changes if at < seconds), seconds]
        values = [self.tps, *(limit for at, limit in changes if at < seconds)]
        spans = [b - a for a, b in itertools.pairwise(edges)]
        return sum(v * s for v, s in zip(values, spans, strict=True)) / seconds

    def knobs_for_run(self) -> dict[str, Any]:
        return {**BASE_KNOBS, **self.knobs}


THROUGHPUT = (
    "utilisation",
    "throttled_ratio",
    "records_per_s",
    "ceiling_share",
    "batch_fill",
    "ok_calls_per_s",
    "call_latency_p50_ms",
    "call_latency_p99_ms",
    "retried",
    "in_flight_median",
    "in_flight_max",
    "records_per_cpu_s",
    "cpu_s",
    "peak_rss_mb",
)
LATENCY = (
    "e2e_p50_ms",
    "e2e_p90_ms",
    "e2e_p99_ms",
    "e2e_p99.9_ms",
    "e2e_max_ms",
    "delivered_share",
)
INTAKE = ("intake_p50_ms", "intake_p99_ms")
FLEET = (
    "utilisation",
    "max_ok_calls_in_1s",
    "max_calls_in_1s",
    "windows_over_limit",
    "throttled_ratio",
    "throttled_calls",
    "ok_calls_per_s",
    "batch_fill",
    "redis_round_trips_per_call",
    "window_s",
    "cpu_s",
)
REDIS_LOSS = (
    "utilisation_before_loss",
    "throttled_during_loss",
    "throttled_ratio_during_loss",
    "utilisation_during_loss",
    "redis_recovery_s",
    "utilisation_after_loss",
    "fallback_members",
)
METHOD = (
    "ok_calls_per_s",
    "limit_share",
    "throttled_calls",
    "max_ok_calls_in_1s",
    "max_calls_in_1s",
)
AUTO = (
    "reach_s",
    "throttled_finding",
    "utilisation_first_limit",
    "follow_drop_s",
    "throttled_after_drop",
    "utilisation_after_drop",
    "follow_rise_s",
    "throttled_after_rise",
    "utilisation_after_rise",
    "throttled_ratio_run",
    "learned_limit_end",
)


def _durations(mode: str, quick: tuple[float, ...], full: tuple[float, ...]) -> tuple[float, ...]:
    return quick if mode == "quick" else full


def _saturation(mode: str, name: str, knobs: dict[str, Any], description: str) -> Case:
    warmup, window = _durations(mode, (1.0, 4.0), (3.0, 30.0))
    return Case(
        name=name,
        scenario=name.split("/")[0],
        description=description,
        load="backlog",
        knobs=knobs,
        warmup_s=warmup,
        duration_s=window,
        figures=THROUGHPUT,
    )


def _fleet_cases(mode: str) -> dict[str, list[Case]]:
    """``scale-out`` (3 writers, how they share the budget) and ``auto-limit``."""
    warmup, window = _durations(mode, (5.0, 20.0), (5.0, 60.0))
    before, down, after = _durations(mode, (20.0, 10.0, 20.0), (30.0, 20.0, 30.0))
    first, dropped, risen = _durations(mode, (40.0, 30.0, 30.0), (60.0, 60.0, 60.0))
    low = round(TPS * 0.6)
    shared = (
        "shared: each at the full limit, one budget through Redis; storm: each at the full "
        f"limit, no shared budget; split: each at {TPS:g} / 3"
    )
    backlog = Case(
        name="scale-out",
        scenario="scale-out",
        description=(
            f"3 writers on one tenant ({TPS:g} calls/s, sliding window), each with its own "
            f"backlog ({shared}): aggregate utilisation over {window:g} s after a "
            f"{warmup:g} s warm-up, the busiest second, 429s, Redis round trips per call."
        ),
        load="fleet",
        warmup_s=warmup,
        duration_s=window,
        subjects=SCALE_OUT_SUBJECTS,
        figures=FLEET,
        extra={"roles": ("backlog", "backlog", "backlog")},
    )
    uneven = replace(
        backlog,
        name="scale-out/uneven",
        description=(
            "3 writers, uneven load: one idle, one lightly loaded (Poisson, 2 events/s: about "
            "2 calls/s), one with a backlog: can the busy one use what the others leave?"
        ),
        extra={"roles": ("idle", "light", "backlog"), "light_rate": 2.0},
    )
    loss = replace(
        backlog,
        name="scale-out/redis-loss",
        description=(
            f"3 writers with backlogs sharing a budget through a Redis of the harness's own, "
            f"SIGKILLed at {warmup + before:g} s and started again (empty) {down:g} s later: "
            "429s while it is down, time back to 95% of the limit after it returns."
        ),
        duration_s=before + down + after,
        subjects=("shared",),
        figures=(*FLEET[:6], *REDIS_LOSS, "redis_round_trips_per_call"),
        extra={
            "roles": ("backlog", "backlog", "backlog"),
            "redis_kill_s": warmup + before,
            "redis_down_s": down,
        },
    )
    auto = Case(
        name="auto-limit",
        scenario="auto-limit",
        description=(
            f'One writer with a backlog and tps_limit = "auto" (auto) or told the limit (known, '
            f"{TPS:g}); the tenant allows {TPS:g} calls/s, {low:g} from {first:g} s, {TPS:g} "
            f"again from {first + dropped:g} s: time to 95% of the limit (3 seconds in a row), "
            "429s spent finding it and following it."
        ),
        load="fleet",
        warmup_s=0.0,
        duration_s=first + dropped + risen,
        phases=(
            Phase(first, {"tps_limit": low}, "limit drops"),
            Phase(first + dropped, {"tps_limit": TPS}, "limit back"),
        ),
        subjects=AUTO_SUBJECTS,
        figures=AUTO,
        extra={"roles": ("backlog",)},
    )
    together = replace(
        auto,
        name="auto-limit/shared",
        description=(
            'Three writers with backlogs, tps_limit = "auto" and one budget through Redis: '
            "they learn one limit together (same tenant limits and figures as auto-limit)."
        ),
        subjects=("auto",),
        extra={"roles": ("backlog", "backlog", "backlog")},
    )
    methods = Case(
        name="method-limits",
        scenario="method-limits",
        description=(
            f"One writer with a backlog on two routes, sample (Ingest) and recipient "
            f"(WriteCollection), mixed {METHOD_LIMITS['Ingest']:g}:"
            f"{METHOD_LIMITS['WriteCollection']:g}; the tenant allows {TPS:g} calls/s "
            "(sliding window) and, inside it, "
            + ", ".join(f"{m} {limit:g}/s" for m, limit in METHOD_LIMITS.items())
            + ". per-method: told the same limits in [campaign.limits]; tenant-only: told the "
            f"tenant limit alone. Over {window:g} s after a {warmup:g} s warm-up: each method's "
            "successful calls/s and share of its own limit, its 429s and busiest second; the "
            f"tenant's utilisation (at most {sum(METHOD_LIMITS.values()) / TPS:.0%}, all the "
            "method limits allow)."
        ),
        load="fleet",
        knobs={"method_limits": dict(METHOD_LIMITS)},
        warmup_s=warmup,
        duration_s=window,
        subjects=METHOD_SUBJECTS,
        figures=(
            *(f"{method}.{figure}" for method in METHOD_LIMITS for figure in METHOD),
            "utilisation",
            "ok_calls_per_s",
            "throttled_calls",
            "throttled_ratio",
            "max_ok_calls_in_1s",
            "batch_fill",
            "window_s",
            "cpu_s",
        ),
        extra={"roles": ("two-routes",), "method_limits": dict(METHOD_LIMITS)},
    )
    return {
        "scale-out": [backlog, uneven, loss],
        "auto-limit": [auto, together],
        "method-limits": [
            methods,
            replace(
                methods,
                name="method-limits/even-mix",
                description=(
                    "The method-limits case with a backlog mixed one for one instead of in "
                    "the ratio of the method limits (per-method only): does the lane with "
                    "the lower limit hold the other back? Its records wait in memory, and "
                    "the dispatcher leases no more once they fill its lease bound."
                ),
                subjects=("per-method",),
                extra={**methods.extra, "roles": ("two-routes-even",)},
            ),
        ],
    }


def build_cases(mode: str) -> dict[str, list[Case]]:
    """Every scenario's cases for ``mode`` ("quick" or "full")."""
    steady_warmup, steady_load, steady_drain = _durations(mode, (1.0, 5.0, 3.0), (3.0, 30.0, 15.0))
    slow_warmup, slow_window = _durations(mode, (2.0, 5.0), (5.0, 30.0))
    high, low, back = _durations(mode, (2.0, 5.0, 4.0), (10.0, 25.0, 25.0))
    pre, outage, post, outage_drain = _durations(
        mode, (3.0, 8.0, 12.0, 15.0), (10.0, 60.0, 60.0, 90.0)
    )
    (faults_events,) = _durations(mode, (3000.0,), (20000.0,))
    masked_pre, masked, masked_post, masked_drain = _durations(
        mode, (3.0, 12.0, 8.0, 30.0), (10.0, 60.0, 30.0, 90.0)
    )
    (faults_drain,) = _durations(mode, (45.0,), (180.0,))
    memory_events = 100_000 if mode == "quick" else 1_000_000
    # One writer alone on each model: at least 20 s, or the utilisation figure is noise.
    (models_window,) = _durations(mode, (20.0,), (30.0,))
    limit_drop = Case(
        name="limit-drop",
        scenario="limit-drop",
        description=(
            f"Backlog; the limit halves ({TPS:g} -> {TPS / 2:g} calls/s) at {high:g} s, as when "
            f"another application takes half the budget, and comes back at {high + low:g} s."
        ),
        load="backlog",
        warmup_s=0.0,
        duration_s=high + low + back,
        phases=(
            Phase(high, {"tps_limit": TPS / 2}, "limit halves"),
            Phase(high + low, {"tps_limit": TPS}, "limit back"),
        ),
        figures=(
            "settle_s",
            "throttled_during_change",
            "throttled_ratio_low",
            "utilisation_before",
            "utilisation_low",
            "recovery_s",
            "utilisation_after",
            "records_per_s",
        ),
        extra={"high_s": high, "low_s": low, "back_s": back},
    )
    steady = Case(
        name="steady",
        scenario="steady",
        description=(
            "Poisson arrivals at 50% of capacity "
            f"({TPS * MAX_RECORDS * 0.5:,.0f} events/s): end-to-end latency percentiles."
        ),
        load="poisson",
        warmup_s=steady_warmup,
        duration_s=steady_load,
        drain_s=steady_drain,
        rate_share=0.5,
        needs_records=True,
        figures=(*LATENCY, *INTAKE, "utilisation", "batch_fill", "records_per_cpu_s", "cpu_s"),
    )
    large_posts = replace(
        steady,
        name="steady/large-posts",
        description=(
            "The same arrivals posted every 40 ms instead of every 10 ms (about 200 events per "
            "post instead of 50): what the writer's CPU per record owes to the number of posts "
            "rather than the number of records."
        ),
        subjects=("writer",),
        figures=(*LATENCY, *INTAKE, "records_per_cpu_s", "cpu_s"),
        extra={"post_interval_ms": 40.0},
    )
    normal_sync = replace(
        steady,
        name="steady/normal-sync",
        description=(
            'The steady case (50 events per post) with queue.synchronous = "NORMAL": commits '
            "are not fsynced, which is safe against a crash of the process but not of the "
            "machine. What FULL's fsync per commit costs in writer CPU."
        ),
        subjects=large_posts.subjects,
        figures=large_posts.figures,
        writer_sets=('queue.synchronous="NORMAL"',),
    )
    no_window = replace(
        steady,
        name="steady/no-commit-window",
        description=(
            "The steady case (50 events per post) with queue.commit_window_ms = 0: every "
            "post is committed on its own, as soon as it arrives. What the window saves in "
            "writer CPU, and what it adds to the 202 answer."
        ),
        subjects=large_posts.subjects,
        figures=large_posts.figures,
        writer_sets=("queue.commit_window_ms=0",),
    )
    short_window = replace(
        no_window,
        name="steady/window-20ms",
        description=(
            "The steady case (50 events per post) with queue.commit_window_ms = 20, half "
            "the default: between no window and the default, in writer CPU and in the "
            "time to the 202 answer."
        ),
        writer_sets=("queue.commit_window_ms=20",),
    )
    return {
        "saturation": [
            _saturation(
                mode,
                "saturation",
                {},
                f"Backlog against tps_limit {TPS:g}, sliding window, {LATENCY_MS:g} ms latency, "
                f"{MAX_RECORDS}-record batches: utilisation, 429s, records/s against the "
                f"ceiling {TPS:g} x {MAX_RECORDS}.",
            )
        ],
        "steady": [steady, large_posts, normal_sync, no_window, short_window],
        "slow-campaign": [
            replace(
                _saturation(
                    mode,
                    "slow-campaign",
                    {"latency_ms": 400.0, "latency_jitter": 0.5},
                    "Backlog against a slow Campaign (400 ms, lognormal jitter sigma 0.5): "
                    "the concurrency each subject reaches and the utilisation it keeps.",
                ),
                warmup_s=slow_warmup,
                duration_s=slow_window,
            )
        ],
        "limit-drop": [limit_drop],
        "outage": [
            Case(
                name="outage",
                scenario="outage",
                description=(
                    f"Poisson load at 50% of capacity; Campaign down (503) for {outage:g} s from "
                    f"{pre:g} s: nothing lost, time to drain, drain rate against the budget."
                ),
                load="poisson",
                warmup_s=0.0,
                duration_s=pre + outage + post,
                drain_s=outage_drain,
                rate_share=0.5,
                phases=(Phase(pre, {"outage_s": outage}, "outage"),),
                needs_records=True,
                figures=(
                    "lost",
                    "drain_s",
                    "drain_records_per_s",
                    "drain_utilisation",
                    "e2e_p99_ms",
                    "delivered_share",
                    "retried",
                ),
                extra={"outage_start_s": pre, "outage_s": outage},
            )
        ],
        "faults": [
            Case(
                name="faults/masked",
                scenario="masked",
                description=(
                    f"Poisson load at 50% of capacity; every call answered SOP-330023 (HTTP 500,"
                    f" SOAP-ENV:Error, no detail) for {masked:g} s from {masked_pre:g} s, as an"
                    " instance after a broken upgrade: records dead-lettered (target 0), calls"
                    " spent during the fault, time to drain after it."
                ),
                load="poisson",
                warmup_s=0.0,
                duration_s=masked_pre + masked + masked_post,
                drain_s=masked_drain,
                rate_share=0.5,
                phases=(Phase(masked_pre, {"masked_s": masked}, "masked fault"),),
                needs_records=True,
                figures=(
                    "dead_lettered",
                    "masked_calls",
                    "masked_calls_per_min",
                    "lost",
                    "drain_s",
                    "drain_records_per_s",
                    "delivered_share",
                    "e2e_p99_ms",
                ),
                extra={"outage_start_s": masked_pre, "outage_s": masked},
            ),
            Case(
                name="faults",
                scenario="faults",
                description=(
                    f"{faults_events:,.0f} events at once against 2% 5xx answers, 1% timeouts "
                    "(held 5 s) and 0.5% of events carrying data Campaign refuses: delivered, "
                    "retried and dead-lettered add up to what was sent."
                ),
                load="burst",
                events=int(faults_events),
                drain_s=faults_drain,
                poison_share=0.005,
                knobs={
                    "rate_500": 0.007,
                    "rate_502": 0.007,
                    "rate_503": 0.006,
                    "rate_timeout": 0.01,
                    "timeout_hold_s": 5.0,
                },
                needs_records=True,
                figures=(
                    "sent",
                    "poisoned",
                    "delivered",
                    "dead_lettered",
                    "pending_at_end",
                    "unaccounted",
                    "good_records_not_delivered",
                    "retried",
                    "calls",
                    "records_per_s",
                ),
            ),
        ],
        "limiter-models": [
            replace(
                _saturation(
                    mode,
                    f"limiter-models/{model}{suffix}",
                    {"limiter": model},
                    f"Saturation (backlog) against the {label} limiter model, one writer "
                    f"alone{told}, measured over {models_window:g} s.",
                ),
                duration_s=models_window,
                figures=(*THROUGHPUT[:2], "max_ok_calls_in_1s", *THROUGHPUT[2:]),
                subjects=subjects,
                writer_sets=sets,
            )
            for suffix, told, subjects, sets in (
                ("", "", ALL_SUBJECTS, ()),
                (
                    "/headroom-0.99",
                    " with campaign.headroom = 0.99 (paced at 99% of the limit)",
                    ("writer",),
                    ("campaign.headroom=0.99",),
                ),
            )
            for model, label in (
                ("sliding", "sliding 1-second window"),
                ("fixed", "fixed 1-second window"),
                ("token_bucket", "token bucket (burst 5)"),
            )
        ],
        "intake": [
            Case(
                name="intake/http",
                scenario="intake",
                description=(
                    "HTTP intake into the durable queue: http-intake is HttpIntake and the "
                    "queue alone (bench/intake.py, 1,000-event posts, 4 in flight); writer is "
                    "the whole daemon with Campaign unreachable (2,000-event posts, 8 in flight)."
                ),
                load="intake",
                events=20_000 if mode == "quick" else 200_000,
                subjects=("writer",),
                figures=("events_per_s", "cpu_us_per_event", "peak_rss_mb", "latency_p99_ms"),
            ),
            Case(
                name="intake/brokers",
                scenario="intake",
                description=(
                    "Each broker source alone into the durable queue (bench/intake_brokers.py)."
                ),
                load="intake",
                events=20_000 if mode == "quick" else 100_000,
                subjects=("writer",),
                figures=("events_per_s", "cpu_us_per_event"),
            ),
        ],
        "memory": [
            Case(
                name="memory",
                scenario="memory",
                description=(
                    f"{memory_events:,} events waiting in the queue: peak RSS of the writer while "
                    "they arrive (Campaign down) and while it starts delivering them."
                ),
                load="memory",
                events=memory_events,
                duration_s=10.0 if mode == "full" else 4.0,
                subjects=("writer",),
                figures=("events_waiting", "peak_rss_filling_mb", "peak_rss_delivering_mb"),
            )
        ],
        **_fleet_cases(mode),
    }


SCENARIOS = tuple(build_cases("quick"))
# What `make bench` runs in about two minutes: throughput at saturation and latency at half
# capacity, for the writer and every peer. Name more scenarios to add them.
DEFAULT_QUICK = ("saturation", "steady")
