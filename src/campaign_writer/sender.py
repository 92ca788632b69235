"""One Campaign call: admission by the tenant throttle, the POST, the classified outcome.

:class:`CampaignClient` is the only way any part of the writer reaches Campaign --
record batches, retries, bisection halves and Logon calls alike -- so every call
passes the tenant throttle by construction. It feeds the throttle back (429 or not)
and counts each call in the metrics; what to do with the outcome is the caller's
business (see :mod:`campaign_writer.dispatcher`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .errors import CampaignError
from .metrics import Metrics
from .outcome import Outcome, Throttled, classify
from .soap import DEFAULT_MAX_RESPONSE_BYTES, Credentials, Param, WireOptions, build_request
from .throttle import TenantThrottle
from .transport import Transport

__all__ = ["CallResult", "CampaignClient"]


class CallResult(NamedTuple):
    outcome: Outcome
    status: int | None
    latency_s: float


class CampaignClient:
    """Calls Campaign's SOAP router through the tenant throttle."""

    def __init__(
        self,
        url: str,
        transport: Transport,
        throttle: TenantThrottle,
        *,
        wire: WireOptions | None = None,
        metrics: Metrics | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.base_url = url.rstrip("/")
        self.transport = transport
        self.throttle = throttle
        self.wire = wire or WireOptions()
        self.metrics = metrics
        self.max_response_bytes = max_response_bytes
        self._clock = clock  # times each call's latency (tests pass a virtual clock)
        self.last_response_at = 0.0  # monotonic time of the last HTTP answer, any status

    async def call(
        self, method: str, params: Sequence[Param], credentials: Credentials
    ) -> CallResult:
        """Make one call and classify what came back. Never raises for Campaign's answers."""
        request = build_request(method, params, credentials, self.wire)
        await self.throttle.acquire()
        started = self._clock()
        status: int | None = None
        try:
            response = await self.transport.post(
                self.base_url + request.path, request.body, request.headers
            )
        except CampaignError as exc:
            outcome = classify(None, None, None, exc)
        else:
            status = response.status
            outcome = classify(
                status, response.headers, response.body, max_bytes=self.max_response_bytes
            )
        latency = self._clock() - started
        if isinstance(outcome, Throttled):
            self.throttle.on_throttled(outcome.retry_after)
        elif status is not None:
            self.throttle.on_accepted()
        if status is not None:
            self.last_response_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.calls.labels(method, str(status) if status else "error").inc()
            self.metrics.call_latency.labels(method).observe(latency)
            if isinstance(outcome, Throttled):
                self.metrics.throttled.inc()
        return CallResult(outcome, status, latency)
