"""Wiring and lifecycle: build every stage from the config, start them, stop them in order.

Start order is queue -> Campaign client and auth -> delivery -> admin -> intake, so
nothing is accepted before it can be stored, and intake is the last thing to open.
Stop order is the reverse of intake first: sources and HTTP intake stop taking
events, delivery finishes or releases its in-flight batches within
``daemon.shutdown_timeout_s``, then auth logs off and the queue closes. Whatever was
not delivered stays in the queue; the next start resumes it.

One supervisor (:meth:`Daemon.wait`) waits on every stage's long-running task
(delivery's feeder and loop, the HTTP intake's listener, each source, the Campaign
probe) and on the stop request, whichever ends first: a stage whose task ends before
shutdown has crashed, and stops the daemon with an error at once instead of
disappearing silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .admin import AdminServer
from .batcher import Batcher
from .campaign.auth import Authenticator, create_authenticator
from .campaign.client import CampaignClient
from .campaign.schemas import SchemaLookupError, SchemaReader
from .campaign.transport import HttpTransport, TlsPolicy, Transport
from .config import Config, split_listen
from .datamodel.check import Finding, Lookup, check_routes, read_schemas
from .dispatcher import Dispatcher
from .errors import AuthError, CampaignError, CampaignWriterError, ConfigError
from .logs import get_logger
from .metrics import Metrics
from .queue import DurableQueue
from .router import Router
from .sources import build_sources
from .sources.http import HttpIntake
from .throttle import TenantThrottle
from .throttle.autolimit import LimitLearner, load_learned, save_learned
from .throttle.budget import BudgetMode, SharedBudget, load_instances, save_instances

__all__ = ["Daemon", "ThrottleFactory"]

log = get_logger("daemon")

# Builds the tenant throttle from the config and the daemon's metrics.
ThrottleFactory = Callable[[Config, Metrics], TenantThrottle]

PROBE_INTERVAL_S = 15.0
KEEP_STATE_S = 5.0  # how often a changed learned limit or instance count is kept


class Daemon:
    """The whole writer: intake, queue, delivery and the admin listener."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        throttle_factory: ThrottleFactory | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        # The benchmark's "cubic" peer swaps the throttle for another rate controller;
        # production always builds the TenantThrottle below.
        self._throttle_factory = throttle_factory
        # Tests pass a campaign_writer.testing.FakeTransport; by default the daemon
        # builds an HttpTransport from the config. Either way it starts and closes it.
        self._given_transport = transport
        self.queue: DurableQueue | None = None
        self.transport: Transport | None = None
        self.throttle: TenantThrottle | None = None
        self.router: Router | None = None
        self.client: CampaignClient | None = None
        self.auth: Authenticator | None = None
        self.dispatcher: Dispatcher | None = None
        self.admin: AdminServer | None = None
        self.http: HttpIntake | None = None
        self.sources: list[Any] = []
        self._probe: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._learned_kept = 0.0
        self._instances_kept = 0
        self._round_trips_counted = 0
        self._stopped = asyncio.Event()
        self._campaign_seen = 0.0
        self._campaign_problem: str | None = "not contacted yet"
        self.started_at = time.time()
        # What the start-up schema check read (campaign.check_schemas), kept in memory for
        # the life of the process; None when it did not run.
        self.schemas: dict[str, Lookup] | None = None
        self.schema_findings: list[Finding] = []

    # --- start -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open every stage; on failure, close what was opened and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        config = self.config
        campaign = config.campaign
        self.queue = await DurableQueue.open(
            config.queue.path,
            max_bytes=config.queue.max_bytes,
            synchronous=config.queue.synchronous,
            commit_window_s=config.queue.commit_window_ms / 1000,
        )
        self.metrics.queue_max_bytes.set(config.queue.max_bytes)
        router = self.router = Router(config.routes, config.intake.invalid_xml_chars)
        self.transport = self._given_transport
        if self.transport is None:
            self.transport = HttpTransport(
                timeout_s=config.sender.timeout_s,
                max_response_bytes=campaign.max_response_bytes,
                tls=TlsPolicy(campaign.tls.verify, campaign.tls.ca_bundle),
                max_connections=config.sender.max_in_flight + 8,
            )
        await self.transport.start()
        if self._throttle_factory is not None:
            self.throttle = self._throttle_factory(config, self.metrics)
        else:
            self.throttle = await self._build_throttle()
        self.client = CampaignClient(
            campaign.url,
            self.transport,
            self.throttle,
            wire=campaign.wire,
            metrics=self.metrics,
            max_response_bytes=campaign.max_response_bytes,
        )
        self.auth = create_authenticator(
            campaign.auth, self.client, self.transport, metrics=self.metrics
        )
        if campaign.check_schemas:
            await self._check_schemas(self.client, self.auth)
        modes = {route.lane_id: route.collection for route in config.routes}
        batcher = Batcher(
            max_records=config.batch.max_records,
            max_bytes=config.batch.max_bytes,
            linger_s=config.batch.linger_ms / 1000.0,
            modes=modes,
            merges=self.metrics.records_coalesced,
            method_ready=self.throttle.ready_at,
        )
        self.dispatcher = Dispatcher(
            self.queue,
            self.client,
            self.auth,
            batcher,
            retry=config.retry,
            max_in_flight=config.sender.max_in_flight,
            metrics=self.metrics,
        )
        await self.dispatcher.start()
        host, port = split_listen(config.admin.listen)
        self.admin = AdminServer(
            host, port, self.metrics, self.readiness, self.stats, before_scrape=self._refresh_gauges
        )
        await self.admin.start()
        self._probe = asyncio.create_task(self._watch_campaign())
        self.http = HttpIntake(config.http, router, self.queue, self.metrics)
        await self.http.start()
        self.sources = build_sources(config.sources, router, self.queue, self.metrics)
        for source in self.sources:
            await source.start()
        log.info(
            "campaign-writer started",
            extra={
                "intake": self.http.url,
                "admin": self.admin.url,
                "campaign": campaign.url,
                "tps_limit": campaign.tps_limit,
                "auth": campaign.auth.mode,
            },
        )

    async def _build_throttle(self) -> TenantThrottle:
        """The tenant throttle: its method lanes, its learned limit, its shared budget."""
        assert self.queue is not None
        campaign = self.config.campaign
        learner = None
        if campaign.auto_limit:
            kept = await load_learned(self.queue)
            learner = LimitLearner(kept or campaign.tps_limit, learned=kept is not None)
            self._learned_kept = learner.limit
        budget = None
        if campaign.budget.redis_url:
            budget = SharedBudget(campaign.budget.redis_url, campaign.budget.name)
            budget.on_mode_change = self._budget_mode
        throttle = TenantThrottle(
            campaign.tps_limit,
            headroom=campaign.headroom,
            retry_after_cap_s=campaign.retry_after_cap_s,
            on_rate_change=self.metrics.rate_limit.set,
            method_limits=dict(campaign.limits),
            learner=learner,
            budget=budget,
        )
        if learner is not None:
            throttle.on_limit_learned = self.metrics.learned_limit.set
            self.metrics.learned_limit.set(learner.limit)
        if budget is not None:
            kept = await load_instances(self.queue, budget.name)
            self._instances_kept = kept or 0
            await budget.start(kept or 1)
            self._budget_mode(budget.mode)
        if learner is not None or budget is not None:
            self._keeper = asyncio.create_task(self._keep_state(throttle))
        return throttle

    def _budget_mode(self, mode: BudgetMode) -> None:
        self.metrics.budget_shared.set(1 if mode == "shared" else 0)
        self.metrics.budget_fallback.set(1 if mode == "fallback" else 0)

    async def _keep_state(self, throttle: TenantThrottle) -> None:
        """Write the learned limit and the instances sharing the budget into the queue
        file when they changed (every few s), for the next start."""
        while True:
            await asyncio.sleep(KEEP_STATE_S)
            await self._save_state(throttle)

    async def _save_state(self, throttle: TenantThrottle) -> None:
        if self.queue is None:
            return
        limit = throttle.controller.limit
        if throttle.learner is not None and abs(limit - self._learned_kept) > 1e-3:
            try:
                await save_learned(self.queue, limit)
                self._learned_kept = limit
            except CampaignWriterError as exc:
                log.warning("could not keep the learned tps limit", extra={"error": str(exc)})
        budget = throttle.budget
        if budget is not None and budget.mode == "shared":
            seen = budget.instances_seen
            if seen != self._instances_kept:
                try:
                    await save_instances(self.queue, budget.name, seen)
                    self._instances_kept = seen
                except CampaignWriterError as exc:
                    log.warning("could not keep the instance count", extra={"error": str(exc)})

    async def _check_schemas(self, client: CampaignClient, auth: Authenticator) -> None:
        """``campaign.check_schemas``: refuse to start when a route does not fit its schema.

        Warnings are logged. An instance out of reach, refused credentials or a refused
        lookup are warnings too: intake must not depend on Campaign being up, and
        delivery meets (and reports) the same problems anyway.
        """
        routes = self.config.routes
        try:
            self.schemas = await read_schemas(routes, SchemaReader(client, auth))
        except SchemaLookupError as exc:
            log.warning(
                "schema check skipped: the schemas could not be read",
                extra={"kind": exc.kind, "reason": str(exc)},
            )
            return
        self.schema_findings = findings = check_routes(routes, self.schemas)
        for finding in findings:
            if finding.severity == "warning":
                log.warning(
                    "route does not quite fit its schema",
                    extra={"route": finding.route, "field": finding.field, "why": finding.message},
                )
        errors = [
            f"routes {f.route!r}{f' field {f.field!r}' if f.field else ''}: {f.message}"
            for f in findings
            if f.severity == "error"
        ]
        if errors:
            raise ConfigError(
                [*errors, "campaign.check_schemas: the routes above do not fit the instance"]
            )

    # --- run -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to shut down (signal handlers call this)."""
        self._stopped.set()

    async def wait(self) -> int:
        """Run until stop() or until a stage's task ends; returns the exit code (1 when a
        stage crashed). Waits on the tasks themselves: a crash is seen the moment it
        happens."""
        stages = self._stage_tasks()
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            done, _ = await asyncio.wait({stop, *stages}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if self._stopped.is_set():
            return 0
        ended = next(task for task in done if task is not stop)
        if ended.cancelled():
            why = "its task was cancelled"
        else:
            error = ended.exception()
            why = repr(error) if error is not None else "its task ended"
        log.critical("a stage crashed; shutting down", extra={"stage": f"{stages[ended]}: {why}"})
        return 1

    def _stage_tasks(self) -> dict[asyncio.Task[Any], str]:
        """Every stage's long-running task, by the stage's name."""
        stages: dict[asyncio.Task[Any], str] = {}
        if self.dispatcher is not None:
            stages.update(dict.fromkeys(self.dispatcher.tasks, "delivery"))
        if self.http is not None and self.http.task is not None:
            stages[self.http.task] = "http intake"
        for source in self.sources:
            if source.task is not None:
                stages[source.task] = f"source {source.name}"
        if self._probe is not None:
            stages[self._probe] = "campaign probe"
        return stages

    # --- stop ------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop intake, drain or release delivery, log off, close the queue."""
        timeout = self.config.daemon.shutdown_timeout_s
        for source in reversed(self.sources):
            await source.close()
        self.sources = []
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.dispatcher is not None:
            await self.dispatcher.close(timeout)
            self.dispatcher = None
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        if self.auth is not None:
            await self.auth.close()
            self.auth = None
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if isinstance(self.throttle, TenantThrottle):
            await self._save_state(self.throttle)
            if self.throttle.budget is not None:
                await self.throttle.budget.close()
        if self.transport is not None:
            await self.transport.close()
            self.transport = None
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        if self.queue is not None:
            await self.queue.close()
            self.queue = None
        log.info("campaign-writer stopped")

    # --- reload ----------------------------------------------------------------------

    def reload(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply a re-read config (SIGHUP): what changed and was applied, and what
        changed but needs a restart (left as it was).

        Live: ``log.level``, ``campaign.tps_limit``, and the routes (with
        ``intake.invalid_xml_chars``): events mapped from now on use the new routes;
        records already queued keep the lane and record they were mapped to, so
        nothing is dropped or mapped twice.
        """
        old = self.config
        applied: list[str] = []
        restart: list[str] = []
        if new.log.level != old.log.level:
            logging.getLogger().setLevel(new.log.level.upper())
            applied.append("log.level")
        if new.log != replace(old.log, level=new.log.level):
            restart.append("log")
        # Between a number and "auto" the learner (made at start) comes or goes: restart.
        switched = new.campaign.auto_limit != old.campaign.auto_limit
        if new.campaign.tps_limit != old.campaign.tps_limit:
            if isinstance(self.throttle, TenantThrottle) and not switched:
                self.throttle.set_limit(new.campaign.tps_limit)
                applied.append("campaign.tps_limit")
            else:
                restart.append("campaign.tps_limit")
        if new.campaign != replace(old.campaign, tps_limit=new.campaign.tps_limit):
            restart.append("campaign")
        if new.routes != old.routes or new.intake != old.intake:
            if self.router is not None:
                self.router.replace(Router(new.routes, new.intake.invalid_xml_chars))
            if self.dispatcher is not None:
                for route in new.routes:
                    self.dispatcher.batcher.modes.setdefault(route.lane_id, route.collection)
            applied.append("routes")
        for name in ("queue", "http", "admin", "batch", "sender", "retry", "daemon", "sources"):
            if getattr(new, name) != getattr(old, name):
                restart.append(name)
        live = replace(
            old,
            log=replace(old.log, level=new.log.level),
            campaign=replace(old.campaign, tps_limit=new.campaign.tps_limit)
            if "campaign.tps_limit" in applied
            else old.campaign,
            routes=new.routes,
            intake=new.intake,
        )
        self.config = live
        log.debug("reload: new settings in effect", extra={"applied": applied})
        return applied, restart

    # --- health ----------------------------------------------------------------------

    async def _watch_campaign(self) -> None:
        """Authenticate early and keep /readyz's 'campaign' check current."""
        assert self.auth is not None
        assert self.transport is not None
        while True:
            try:
                await self.auth.credentials()
            except (AuthError, CampaignError) as exc:
                log.warning("cannot authenticate to Campaign yet", extra={"error": str(exc)})
            await self._probe_campaign()
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _probe_campaign(self) -> None:
        assert self.transport is not None
        if self.metrics_seen_recently():
            self._campaign_problem = None
            return
        url = self.config.campaign.url.rstrip("/") + "/r/test"
        try:
            response = await self.transport.get(url)
        except CampaignWriterError as exc:
            self._campaign_problem = f"unreachable: {exc}"
            return
        self._campaign_seen = time.monotonic()
        self._campaign_problem = None if response.status < 500 else f"HTTP {response.status}"

    def metrics_seen_recently(self) -> bool:
        """True when a call or probe got an HTTP answer in the last probe interval."""
        last = max(self._campaign_seen, self.client.last_response_at if self.client else 0.0)
        return time.monotonic() - last < PROBE_INTERVAL_S

    def readiness(self) -> dict[str, str | None]:
        """Can this instance take events? The queue is open and has room, and nothing
        fatal (credentials refused, a fatal answer) stops delivery. Campaign being
        unreachable is not in it: that is when the queue should keep absorbing events
        (see :meth:`campaign_state`)."""
        auth = self.auth
        dispatcher = self.dispatcher
        queue = self.queue
        if queue is None:
            queue_problem: str | None = "closed"
        elif queue.full:
            queue_problem = "full: new events are refused until delivery makes room"
        else:
            queue_problem = None
        return {
            "queue": queue_problem,
            "auth": auth.refused if auth is not None else "not set up",
            "delivery": None
            if dispatcher is not None and dispatcher.fatal is None
            else (dispatcher.fatal if dispatcher is not None else "stopped"),
        }

    def campaign_state(self) -> dict[str, Any]:
        """Whether Campaign answers: for /v1/stats and the ``campaign_reachable`` gauge."""
        problem = self._campaign_problem
        self.metrics.campaign_reachable.set(0 if problem else 1)
        return {"reachable": problem is None, "problem": problem}

    def _refresh_gauges(self) -> None:
        self.campaign_state()
        throttle = self.throttle
        if isinstance(throttle, TenantThrottle):
            rates = throttle.method_rates()
            for route in self.config.routes:
                # A method without a limit of its own may use the whole tenant rate.
                rates.setdefault(route.method, throttle.rate())
            for method, rate in rates.items():
                self.metrics.method_limit.labels(method).set(rate)
            if throttle.budget is not None:
                trips = throttle.budget.round_trips
                self.metrics.budget_redis_round_trips.inc(trips - self._round_trips_counted)
                self._round_trips_counted = trips
        for check, problem in self.readiness().items():
            self.metrics.readiness.labels(check).set(0 if problem else 1)
        self.metrics.auth_ready.set(1 if self.auth is not None and self.auth.ready else 0)
        if self.dispatcher is not None:
            ages = self.metrics.lane_newest_delivered_age
            for lane_id, age in self.dispatcher.newest_delivered_ages().items():
                ages.labels(*lane_id).set(age)
        if self.queue is None:
            return
        stats = self.queue.stats()
        self.metrics.queue_depth.set(stats.depth)
        self.metrics.queue_bytes.set(stats.bytes)
        self.metrics.dead_letter_depth.set(stats.dead_letters)
        self.metrics.queue_oldest_age.set(stats.oldest_age_s or 0.0)

    def stats(self) -> dict[str, Any]:
        self._refresh_gauges()
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "queue": (
                {**self.queue.stats().as_dict(), **self.queue.commit_stats()}
                if self.queue is not None
                else None
            ),
            "delivery": self.dispatcher.stats() if self.dispatcher is not None else None,
            "throttle": self.throttle.stats() if self.throttle is not None else None,
            "auth": {
                "mode": self.config.campaign.auth.mode,
                "ready": bool(self.auth and self.auth.ready),
                "last_error": self.auth.last_error if self.auth else None,
            },
            "ready": self.readiness(),
            "campaign": {**self.campaign_state(), "tps_limit": self.config.campaign.tps_limit},
            "sources": [getattr(s, "stats", dict)() for s in self.sources],
            "schema_check": None
            if self.schemas is None
            else {
                "schemas_read": len(self.schemas),
                "findings": [{"route": f.route, **f.as_dict()} for f in self.schema_findings],
            },
        }
