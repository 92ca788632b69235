"""Every metric the writer exports, by its fixed name. Operators script against these.

Names are a contract: ``test_every_documented_metric_is_exported`` (in
``tests/delivery/test_end_to_end.py``) checks that a running daemon exports each one.
Counters are bumped per batch or per request, never per record in
a hot loop. Each daemon owns its own registry, so several can run in one process.

Each count is kept once. A counter here is a :class:`CounterFamily`: plain integers,
one per label set, that Prometheus reads at scrape time and that a stage's
``stats()`` and ``__repr__`` read too (``family.labels(...).value``,
``family.total()``); no stage keeps a second tally of its own.

========================================================  =====  ====================
name                                                      type   labels
========================================================  =====  ====================
campaign_writer_events_received_total                     ctr    source
campaign_writer_events_accepted_total                     ctr    source
campaign_writer_events_rejected_total                     ctr    source
campaign_writer_source_acked_total                        ctr    source
campaign_writer_source_dead_lettered_total                ctr    source
campaign_writer_source_reconnects_total                   ctr    source
campaign_writer_source_redeliveries_total                 ctr    source (not Kafka)
campaign_writer_source_paused                             gauge  source
campaign_writer_records_delivered_total                   ctr    schema, method
campaign_writer_records_coalesced_total                   ctr    schema, method
campaign_writer_records_dead_lettered_total               ctr    reason
campaign_writer_batches_total                             ctr    outcome
campaign_writer_calls_total                               ctr    method, status
campaign_writer_throttled_total                           ctr
campaign_writer_retries_total                             ctr    reason
campaign_writer_auth_renewals_total                       ctr    mode
campaign_writer_queue_depth                               gauge
campaign_writer_queue_bytes                               gauge
campaign_writer_dead_letter_depth                         gauge
campaign_writer_in_flight                                 gauge
campaign_writer_in_flight_limit                           gauge
campaign_writer_rate_limit                                gauge  (calls per second)
campaign_writer_budget_shared                             gauge
campaign_writer_budget_fallback                           gauge
campaign_writer_budget_redis_round_trips_total            ctr
campaign_writer_throttle_learned_limit_calls_per_second   gauge
campaign_writer_throttle_method_limit_calls_per_second    gauge  method
campaign_writer_campaign_reachable                        gauge
campaign_writer_call_latency_seconds                      hist   method
campaign_writer_end_to_end_latency_seconds                hist
campaign_writer_lane_fault_paused                         gauge  schema, method
campaign_writer_collection_fallbacks_total                ctr    schema, method
campaign_writer_partial_collections_total                 ctr    schema, method
campaign_writer_lane_newest_delivered_age_seconds         gauge  schema, method
campaign_writer_intake_responses_total                    ctr    source, status
campaign_writer_queue_oldest_age_seconds                  gauge
campaign_writer_queue_max_bytes                           gauge
campaign_writer_build_info                                gauge  version
campaign_writer_readiness                                 gauge  check
campaign_writer_auth_ready                                gauge
process_*, python_info, python_gc_*                       (prometheus-client's own)
========================================================  =====  ====================

``lane_fault_paused`` is 1 while a lane is paused because every record sent on it
meets the same fault (the instance's fault, not the records'); ``collection_fallbacks``
counts lanes that went to one record per call; ``partial_collections`` counts Ingest
collections Campaign stored only in part. ``lane_newest_delivered_age_seconds`` is, per
lane that delivered anything, the time since the newest record Campaign acknowledged was
taken in (its enqueue time; the writer knows no event time), refreshed at each scrape:
compare it with the staging replication lag (``ffdaReplicateStagingData``) to see when a
record reaches the Cloud DB. ``source_redeliveries`` counts messages a
broker hands over again: RabbitMQ's redelivered flag, NATS deliveries with
``num_delivered > 1``, Redis entries re-read from the consumer's pending list or
claimed from another consumer (XAUTOCLAIM); Kafka says nothing of the kind (a
rebalance re-reads from the committed offset unannounced), so it has none. It exists
only with such a source, so it is not in :data:`METRIC_NAMES` (which every daemon
exports). ``intake_responses`` counts the HTTP intake's answers by status code
(``source="http"``), the 503s of a full queue or too many connections included.
``queue_oldest_age_seconds`` is 0 when the queue is empty; ``queue_max_bytes`` is
``queue.max_bytes``. ``readiness`` is 1 per /readyz check that passes (``queue``,
``auth``, ``delivery``), 0 while it fails (credentials refused, delivery stopped by a
fatal answer, the queue full); ``auth_ready`` is 1 while the writer holds credentials
Campaign took. ``build_info`` is 1, labelled with the package version. The
process (CPU, memory, open files), platform and garbage-collector collectors of
prometheus-client are registered on each daemon's registry too.
``budget_shared`` is 1 while the tenant budget is shared through Redis and
``budget_fallback`` 1 while Redis is lost and this instance paces at its share;
``budget_redis_round_trips`` counts the budget's calls to Redis (reservations,
heartbeats, pauses). ``throttle_learned_limit_calls_per_second`` is the limit learned
with ``tps_limit = "auto"`` (0 otherwise); ``throttle_method_limit_calls_per_second``
is what each method may use on this instance now: its ``[campaign.limits]`` entry
(its share of it when the budget is shared, lowered after a 429 charged to it), or
the tenant rate for a route's method without a limit of its own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from . import __version__

__all__ = ["METRIC_NAMES", "BatchHistogram", "CounterFamily", "Metrics", "Tally"]

# The *_created series double the exposition for no use of ours.
disable_created_metrics()  # type: ignore[no-untyped-call]

_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 6.0, 15.0, 30.0)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 10800.0)


class BatchHistogram(Collector):
    """A histogram fed a whole batch of values at once, for per-record latencies.

    prometheus_client's Histogram takes a lock and a Python-level call per value;
    a 500-record batch would pay that 500 times. This keeps plain bucket counts,
    updated from the event loop only, and exports the standard histogram series.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts = self.bounds, self.counts
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = 0
        buckets = []
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            buckets.append((repr(float(bound)), float(cumulative)))
        buckets.append(("+Inf", float(cumulative + self.counts[-1])))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


class Tally:
    """One count: a plain integer, bumped from the event loop only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def __repr__(self) -> str:
        return f"Tally({self.value})"


class CounterFamily(Collector):
    """A Prometheus counter whose counts are plain integers, one :class:`Tally` per label set.

    prometheus_client's Counter takes a lock and checks its labels on every bump, and
    its value is private, so stages kept their own tallies beside it. This one is the
    tally: ``labels(...)`` returns the label set's :class:`Tally` (creating it at zero,
    so it is exported from then on), stages bump it from the event loop, and Prometheus,
    ``/v1/stats`` and ``__repr__`` all read the same integers. Without labels the family
    itself counts (``inc()``, ``value``). Exported as ``<name>_total``, like Counter.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._tallies: dict[tuple[str, ...], Tally] = {}
        self._unlabelled = Tally() if not labelnames else None
        registry.register(self)

    def labels(self, *values: str) -> Tally:
        tally = self._tallies.get(values)
        if tally is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            tally = self._tallies[values] = Tally()
        return tally

    def _own(self) -> Tally:
        if self._unlabelled is None:
            raise ValueError(f"{self.name} counts by {self.labelnames}: use labels()")
        return self._unlabelled

    def inc(self, amount: int = 1) -> None:
        self._own().value += amount

    @property
    def value(self) -> int:
        return self._own().value

    def total(self) -> int:
        """The sum over every label set."""
        if self._unlabelled is not None:
            return self._unlabelled.value
        return sum(tally.value for tally in self._tallies.values())

    def values(self) -> dict[tuple[str, ...], int]:
        """Each label set's count."""
        return {labels: tally.value for labels, tally in self._tallies.items()}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        if self._unlabelled is not None:
            family.add_metric((), float(self._unlabelled.value))
        for labels, tally in list(self._tallies.items()):
            family.add_metric(labels, float(tally.value))
        yield family

    def __repr__(self) -> str:
        return f"CounterFamily({self.name!r}, total={self.total()})"


class Metrics:
    """The writer's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        prefix = "campaign_writer_"

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterFamily:
            return CounterFamily(prefix + name, doc, labels, r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(prefix + name, doc, labels, registry=r)

        self.events_received = counter(
            "events_received", "Events received from a source", ("source",)
        )
        self.events_accepted = counter(
            "events_accepted", "Events routed and committed to the local queue", ("source",)
        )
        self.events_rejected = counter(
            "events_rejected", "Events refused at intake (unparseable or unmappable)", ("source",)
        )
        self.source_acked = counter(
            "source_acked", "Broker messages acknowledged after the local commit", ("source",)
        )
        self.source_dead_lettered = counter(
            "source_dead_lettered", "Broker messages sent to the dead-letter queue", ("source",)
        )
        self.source_reconnects = counter("source_reconnects", "Broker reconnections", ("source",))
        self.source_redeliveries = counter(
            "source_redeliveries",
            "Broker messages received again (RabbitMQ's redelivered flag)",
            ("source",),
        )
        self.source_paused = gauge(
            "source_paused", "1 while a source stops consuming for backpressure", ("source",)
        )
        self.records_delivered = counter(
            "records_delivered", "Records Campaign acknowledged", ("schema", "method")
        )
        self.records_coalesced = counter(
            "records_coalesced",
            "Records merged into another with the same key",
            ("schema", "method"),
        )
        self.records_dead_lettered = counter(
            "records_dead_lettered", "Records moved to the dead-letter queue", ("reason",)
        )
        self.batches = counter(
            "batches", "Campaign calls carrying records, by outcome", ("outcome",)
        )
        self.calls = counter("calls", "HTTP calls to Campaign", ("method", "status"))
        self.throttled = counter("throttled", "HTTP 429 answers from Campaign")
        self.retries = counter("retries", "Calls retried after a transient failure", ("reason",))
        self.auth_renewals = counter(
            "auth_renewals", "Sessions or tokens obtained or renewed", ("mode",)
        )
        self.queue_depth = gauge("queue_depth", "Records waiting in the local queue")
        self.queue_bytes = gauge("queue_bytes", "Bytes held by the local queue")
        self.dead_letter_depth = gauge("dead_letter_depth", "Entries in the dead-letter queue")
        self.in_flight = gauge("in_flight", "Campaign calls under way")
        self.in_flight_limit = gauge("in_flight_limit", "Current cap on calls under way")
        self.rate_limit = gauge("rate_limit", "Current throttle rate, calls per second")
        self.budget_shared = gauge(
            "budget_shared", "1 while the tenant budget is shared through Redis, else 0"
        )
        self.budget_fallback = gauge(
            "budget_fallback", "1 while Redis is lost and this instance paces at its share"
        )
        self.budget_redis_round_trips = counter(
            "budget_redis_round_trips", "Round trips to Redis for the shared tenant budget"
        )
        self.learned_limit = gauge(
            "throttle_learned_limit_calls_per_second",
            'The tenant limit learned with tps_limit = "auto" (0 otherwise)',
        )
        self.method_limit = gauge(
            "throttle_method_limit_calls_per_second",
            "Calls per second a method with its own limit may use on this instance now",
            ("method",),
        )
        self.campaign_reachable = gauge(
            "campaign_reachable",
            "1 while Campaign answers (a call or a probe got an HTTP answer), else 0",
        )
        self.lane_fault_paused = gauge(
            "lane_fault_paused",
            "1 while a lane is paused on a fault every record meets",
            ("schema", "method"),
        )
        self.collection_fallbacks = counter(
            "collection_fallbacks",
            "Lanes that went to one record per call",
            ("schema", "method"),
        )
        self.partial_collections = counter(
            "partial_collections",
            "Ingest collections Campaign stored only in part",
            ("schema", "method"),
        )
        self.intake_responses = counter(
            "intake_responses", "Answers of the HTTP intake, by status code", ("source", "status")
        )
        self.queue_oldest_age = gauge(
            "queue_oldest_age_seconds", "Age of the oldest record in the local queue (0 if empty)"
        )
        self.queue_max_bytes = gauge("queue_max_bytes", "Capacity of the local queue in bytes")
        self.readiness = gauge("readiness", "1 while this /readyz check passes, else 0", ("check",))
        self.auth_ready = gauge("auth_ready", "1 while the writer holds credentials Campaign took")
        self.build_info = gauge("build_info", "Always 1; labelled with the version", ("version",))
        self.build_info.labels(__version__).set(1)
        # prometheus-client's own collectors: CPU, memory, open files, Python, GC.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.lane_newest_delivered_age = gauge(
            "lane_newest_delivered_age_seconds",
            "Seconds since the intake of the newest record Campaign acknowledged on a lane",
            ("schema", "method"),
        )
        self.call_latency = Histogram(
            prefix + "call_latency_seconds",
            "Campaign call latency",
            ("method",),
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = BatchHistogram(
            prefix + "end_to_end_latency_seconds",
            "From intake to Campaign's acknowledgement, per record",
            _E2E_BUCKETS,
            r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


METRIC_NAMES = (
    "campaign_writer_events_received_total",
    "campaign_writer_events_accepted_total",
    "campaign_writer_events_rejected_total",
    "campaign_writer_source_acked_total",
    "campaign_writer_source_dead_lettered_total",
    "campaign_writer_source_reconnects_total",
    "campaign_writer_source_paused",
    "campaign_writer_records_delivered_total",
    "campaign_writer_records_coalesced_total",
    "campaign_writer_records_dead_lettered_total",
    "campaign_writer_batches_total",
    "campaign_writer_calls_total",
    "campaign_writer_throttled_total",
    "campaign_writer_retries_total",
    "campaign_writer_auth_renewals_total",
    "campaign_writer_queue_depth",
    "campaign_writer_queue_bytes",
    "campaign_writer_dead_letter_depth",
    "campaign_writer_in_flight",
    "campaign_writer_in_flight_limit",
    "campaign_writer_rate_limit",
    "campaign_writer_budget_shared",
    "campaign_writer_budget_fallback",
    "campaign_writer_budget_redis_round_trips_total",
    "campaign_writer_throttle_learned_limit_calls_per_second",
    "campaign_writer_throttle_method_limit_calls_per_second",
    "campaign_writer_campaign_reachable",
    "campaign_writer_call_latency_seconds",
    "campaign_writer_end_to_end_latency_seconds",
    "campaign_writer_lane_fault_paused",
    "campaign_writer_collection_fallbacks_total",
    "campaign_writer_partial_collections_total",
    "campaign_writer_intake_responses_total",
    "campaign_writer_queue_oldest_age_seconds",
    "campaign_writer_queue_max_bytes",
    "campaign_writer_build_info",
    "campaign_writer_readiness",
    "campaign_writer_auth_ready",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "python_info",
    "python_gc_collections_total",
    "campaign_writer_lane_newest_delivered_age_seconds",
)
