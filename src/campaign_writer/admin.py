"""The admin listener: /healthz, /readyz, /metrics and /v1/stats.

It binds to 127.0.0.1 unless ``admin.listen`` says otherwise, because /v1/stats
describes the tenant and the queue. Nothing it serves contains a secret: metrics and
stats are built from counters, and every string that could echo Campaign's answers
passes through :func:`campaign_writer.logs.redact`.

* ``/healthz``: 200 while the event loop answers (liveness).
* ``/readyz``: "can this instance take events": 200 when the queue is open and not
  full, Campaign has not refused the credentials, and no fatal answer stopped
  delivery; else 503, the body naming each check and its problem. Campaign being
  unreachable does not make it 503 (the queue is there to absorb events exactly
  then): ``/v1/stats`` ``campaign`` and the ``campaign_reachable`` gauge say so.
* ``/metrics``: Prometheus text format, names fixed in :mod:`campaign_writer.metrics`.
* ``/v1/stats``: a JSON snapshot of queue, delivery, throttle and sources.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .logs import get_logger, redact
from .metrics import Metrics

__all__ = ["AdminServer"]

log = get_logger("admin")

ReadinessChecks = Callable[[], Mapping[str, str | None]]
StatsProvider = Callable[[], Mapping[str, Any]]


def _json(payload: Any, status: int = 200) -> web.Response:
    body = redact(orjson.dumps(payload, default=str).decode())
    return web.Response(body=body.encode(), status=status, content_type="application/json")


class AdminServer:
    """Serves the operator endpoints on ``host:port``; start() and close() are symmetric."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: ReadinessChecks,
        stats: StatsProvider,
        before_scrape: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._readiness = readiness
        self._stats = stats
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        app.router.add_get("/v1/stats", self._stats_json)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = self._runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        log.info("admin listening", extra={"url": self.url})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = dict(self._readiness())
        ready = all(problem is None for problem in checks.values())
        body = {
            "ready": ready,
            "checks": {name: problem or "ok" for name, problem in checks.items()},
        }
        return _json(body, 200 if ready else 503)

    async def _metrics_text(self, _: web.Request) -> web.Response:
        if self._before_scrape is not None:
            self._before_scrape()
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _stats_json(self, _: web.Request) -> web.Response:
        return _json(self._stats())
