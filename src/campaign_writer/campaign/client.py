"""One Campaign call: admission by the tenant throttle, the POST, the classified outcome.

:class:`CampaignClient` is the only way any part of the writer reaches Campaign --
record batches, retries, bisection halves and Logon calls alike -- so every call
passes the tenant throttle by construction. It feeds the throttle back (429 or not)
and counts each call in the metrics; what to do with the outcome is the caller's
business (see :mod:`campaign_writer.dispatcher`).

It also builds delivery's requests, and holds the one place where an expired
session is renewed and the call resent once (:meth:`CampaignClient.write`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from ..errors import AuthError, CampaignError, TransportError
from ..metrics import Metrics
from ..throttle import TenantThrottle
from .documents import fragments_document
from .outcome import AuthExpired, Outcome, Retry, Throttled, classify
from .soap import DEFAULT_MAX_RESPONSE_BYTES, Credentials, Param, WireOptions, build_request
from .transport import Transport

__all__ = ["AuthFailed", "CallResult", "CampaignClient", "Credentialed", "Written"]


class CallResult(NamedTuple):
    outcome: Outcome
    status: int | None
    latency_s: float


class Credentialed(Protocol):
    """What :meth:`CampaignClient.write` needs of an :class:`~.auth.Authenticator`."""

    async def credentials(self) -> Credentials: ...
    async def renew(self, stale: Credentials) -> Credentials: ...


class Written(NamedTuple):
    """A write call's last answer (after a renewal, the resent call's)."""

    outcome: Outcome
    status: int | None
    latency_s: float
    method: str  # the method called (Write for a WriteCollection lane's single record)
    calls: int  # calls made: 1, or 2 when the session was renewed and the call resent
    stamp: int  # what ``stamp()`` returned just before the last call


class AuthFailed(NamedTuple):
    """No call went out: the credentials could not be had (``fatal``: Campaign refused
    them, so only a configuration change helps) or the Logon call failed in transit."""

    reason: str
    fatal: bool
    calls: int  # write calls made before it (1 when the renewal failed)


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

    def rate(self) -> float:
        """The throttle's current calls/s."""
        return self.throttle.rate()

    @property
    def paused_for(self) -> float:
        """Seconds left of the throttle's pause after a 429."""
        return self.throttle.paused_for

    async def write(
        self,
        schema: str,
        method: str,
        fragments: list[str],
        auth: Credentialed,
        *,
        collection: bool,
        stamp: Callable[[], int] = lambda: 0,
    ) -> Written | AuthFailed:
        """Write rendered fragments in one call; an expired session is renewed once.

        ``method`` is the lane's; a WriteCollection lane's single record goes as Write.
        ``stamp`` runs just before each call goes out (delivery numbers its sends
        with it, see :mod:`campaign_writer.evidence`). A second AuthExpired after the
        renewal is a Retry.
        """
        if not collection and method == "WriteCollection":
            method = "Write"
        # Fragments were rendered and checked at intake: building is only joining them.
        document = fragments_document(schema, fragments, collection=collection)
        params = [Param("doc", "document", document)]
        try:
            credentials = await auth.credentials()
        except AuthError as exc:
            return AuthFailed(f"authentication failed: {exc}", True, 0)
        except TransportError as exc:
            return AuthFailed(f"authentication: {exc}", False, 0)
        seq = stamp()
        result = await self.call(method, params, credentials)
        calls = 1
        outcome = result.outcome
        if isinstance(outcome, AuthExpired):
            try:
                credentials = await auth.renew(credentials)
            except AuthError as exc:
                return AuthFailed(f"re-authentication failed: {exc}", True, calls)
            except TransportError as exc:
                return AuthFailed(f"re-authentication: {exc}", False, calls)
            seq = stamp()
            result = await self.call(method, params, credentials)
            calls += 1
            outcome = result.outcome
            if isinstance(outcome, AuthExpired):
                outcome = Retry(f"still refused after re-authentication: {outcome.reason}")
        return Written(outcome, result.status, result.latency_s, method, calls, seq)

    async def read_schema(self, schema: str, credentials: Credentials) -> CallResult:
        """``GetEntityIfMoreRecent`` of a schema: the read Adobe's SDK makes before any call."""
        params = [
            Param("pk", "string", f"xtk:schema|{schema}"),
            Param("md5", "string", ""),
            Param("mustExist", "boolean", "false"),
        ]
        return await self.call("GetEntityIfMoreRecent", params, credentials)

    async def call(
        self, method: str, params: Sequence[Param], credentials: Credentials
    ) -> CallResult:
        """Make one call and classify what came back. Never raises for Campaign's answers."""
        request = build_request(method, params, credentials, self.wire)
        await self.throttle.acquire(method)
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
            self.throttle.on_throttled(outcome.retry_after, method)
        elif status is not None:
            self.throttle.on_accepted(method)
        if status is not None:
            self.last_response_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.calls.labels(method, str(status) if status else "error").inc()
            self.metrics.call_latency.labels(method).observe(latency)
            if isinstance(outcome, Throttled):
                self.metrics.throttled.inc()
        return CallResult(outcome, status, latency)
