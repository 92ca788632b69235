"""The simulator's HTTP face: routes, and what happens to a SOAP call before it is served.

Routes:

* ``POST /nl/jsp/soaprouter.jsp`` (with or without ``?soapAction=``): SOAP calls;
* ``GET /r/test`` (anonymous) and ``GET /nl/jsp/ping.jsp`` (authenticated): health;
* ``POST /ims/token/v3``: IMS client-credentials tokens;
* ``/__sim/*``: control and introspection, see :mod:`.control`.

A SOAP call goes through, in this order: an outage window (answer per
``outage_mode``), the TPS limiter and the limiter of its method if
``method_limits`` names it (HTTP 429, the same answer for either; the method is
the one the SOAPAction header or ``?soapAction=`` names), the concurrency cap (wait, or 503),
parsing, the per-call fault draw (failures injected before processing), the
latency model (the call sleeps while holding its concurrency slot), the method
itself, and for a ``truncate`` draw the answer cut short (for ``drip``, sent a byte
at a time). Only the SOAP route
counts against the TPS limit and appears in the call log.

In the ``strict`` profile the IMS token endpoint requires a non-empty ``scope``, as
Adobe's documentation marks it mandatory; it answers 400 ``invalid_scope`` without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..logs import get_logger
from .config import SimulatorConfig
from .control import add_routes, apply_control
from .faults import (
    SESSION_EXPIRED_TEXT,
    SimFault,
    hostile_body,
    html_page,
    huge_body_chunks,
)
from .limits import latency_s
from .protocol import INSTANCE, action_of, campaign_time, parse_call
from .refusals import bad_login_fault, masked_fault
from .staging import WRITE_METHODS, count_entities
from .tenant import Tenant

__all__ = ["Simulator"]

log = get_logger("simulator")

_XML = "text/xml; charset=utf-8"
_PRE_PROCESS = frozenset(
    {
        "500",
        "502",
        "503",
        "html",
        "reset",
        "timeout",
        "soap",
        "entity",
        "laughs",
        "huge",
        "masked",
        "badlogin",
    }
)
# How often the replication timer looks at replicate_interval_s (seconds).
_REPLICATION_TICK_S = 0.25
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class _Trace:
    """What the call log records about one SOAP call, filled in as it goes."""

    method: str
    urn: str = ""
    schema: str = ""
    records: int = 0
    status: int = 0
    outcome: str = "ok"
    committed_at: float | None = None


class Simulator:
    """An in-process simulated Campaign instance: ``await start()``, use ``url``, ``close()``."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tenant = Tenant(config or SimulatorConfig(), clock, wall)
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._replicator: asyncio.Task[None] | None = None

    @property
    def config(self) -> SimulatorConfig:
        return self.tenant.config

    async def start(self) -> None:
        config = self.config
        app = web.Application(client_max_size=config.max_body_bytes)
        app.router.add_post("/nl/jsp/soaprouter.jsp", self._soap)
        app.router.add_get("/r/test", self._r_test)
        app.router.add_get("/nl/jsp/ping.jsp", self._ping)
        app.router.add_post("/ims/token/v3", self._ims_token)
        add_routes(app, self.tenant)
        ssl_context = None
        if config.tls_cert and config.tls_key:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.host, config.port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        self.url = f"{config.scheme}://{host}:{self.port}"
        self._replicator = asyncio.create_task(self._replicate(), name="sim-replication")
        log.info("simulator started", extra={"url": self.url, "tps_limit": config.tps_limit})

    async def _replicate(self) -> None:
        """Run the staging replication every ``replicate_interval_s`` (a runtime knob).

        It looks at the knob every :data:`_REPLICATION_TICK_S`, so a new interval set
        through ``/__sim/control`` applies at once, not after the old one has run out.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self._closing.is_set():
            interval = self.config.replicate_interval_s
            wait = _REPLICATION_TICK_S if interval <= 0 else min(interval, _REPLICATION_TICK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), wait)
            interval = self.config.replicate_interval_s
            if interval <= 0:
                last = loop.time()  # the interval counts from when it was set
            elif loop.time() - last >= interval and not self._closing.is_set():
                self.tenant.replicate()
                last = loop.time()

    async def close(self) -> None:
        self._closing.set()  # releases calls held open by 'timeout' faults
        if self._replicator is not None:
            await self._replicator
            self._replicator = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("simulator stopped", extra={"url": self.url})
        self.tenant.close()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def control(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change knobs or run actions in process; the same as ``POST /__sim/control``."""
        return apply_control(self.tenant, changes)

    def stats(self) -> dict[str, Any]:
        return self.tenant.stats()

    # --- SOAP ------------------------------------------------------------------------

    async def _soap(self, request: web.Request) -> web.StreamResponse:
        tenant = self.tenant
        arrival = tenant.wall()
        started = tenant.clock()
        trace = _Trace(method=action_of(request.headers, request.query)[1])
        try:
            if tenant.plan.outage():
                trace.outcome = "outage"
                return await self._fail(request, tenant.config.outage_mode, trace)
            wait = tenant.admit(trace.method)
            if wait is not None:
                return self._throttled(trace, wait)
            gate = tenant.gate
            if not gate.try_enter():
                if tenant.config.overflow == "reject":
                    trace.status, trace.outcome = 503, "overloaded"
                    return self._html(503)
                await gate.enter()
            try:
                return await self._serve(request, trace)
            finally:
                gate.leave()
        finally:
            tenant.record_call(
                arrival=arrival,
                latency_s=tenant.clock() - started,
                method=trace.method,
                schema=trace.schema,
                records=trace.records,
                status=trace.status,
                outcome=trace.outcome,
                committed_at=trace.committed_at,
            )

    async def _serve(self, request: web.Request, trace: _Trace) -> web.StreamResponse:
        tenant = self.tenant
        config = tenant.config
        body = await request.read()
        try:
            call = parse_call(body, request.headers, request.query, config.max_body_bytes)
        except SimFault as fault:
            return self._fault(fault, trace)
        trace.method, trace.urn = call.method, call.urn
        if call.method in WRITE_METHODS:
            trace.records = count_entities(call.document(1))
        injected = tenant.plan.draw(call.method)
        if injected in _PRE_PROCESS:
            tenant.faults_by_kind[f"inject:{injected}"] += 1
            trace.outcome = f"inject:{injected}"
            return await self._fail(request, injected, trace)
        delay = latency_s(
            config.latency_ms,
            config.latency_per_record_ms,
            config.latency_jitter,
            trace.records,
            tenant.rng,
        )
        if delay > 0.0:
            await asyncio.sleep(delay)
        marker = config.poison_marker
        marker_in_body = bool(marker) and (
            marker.encode() in body or any(c in marker for c in "&<>\"'")
        )
        committed = round(tenant.wall(), 6)  # the same value in the log and on the rows
        try:
            payload, written = tenant.dispatch(
                call, injected=injected, marker_in_body=marker_in_body, stamp=f"{committed:.6f}"
            )
        except SimFault as fault:
            return self._fault(fault, trace)
        if written is not None:
            trace.schema, trace.records, trace.committed_at = (
                written.schema_id,
                written.records,
                committed,
            )
        trace.status = 200
        if injected == "truncate":
            tenant.faults_by_kind["inject:truncate"] += 1
            trace.outcome = "inject:truncate"
            return await self._truncated(request, payload)
        if injected == "drip":
            tenant.faults_by_kind["inject:drip"] += 1
            trace.outcome = "inject:drip"
            return await self._drip(request, payload)
        return web.Response(body=payload, headers={"Content-Type": _XML})

    def _fault(self, fault: SimFault, trace: _Trace, *, injected: bool = False) -> web.Response:
        tenant = self.tenant
        if not injected:  # injected ones are counted as inject:<kind> by the caller
            tenant.fault_raised(fault)
        status = fault.status or tenant.config.fault_status
        trace.status = status
        if not injected:
            trace.outcome = f"fault:{fault.kind}"
        trace.schema = trace.schema or fault.schema
        if fault.kind == "session_expired" and tenant.config.session_expired_style == "text":
            return web.Response(status=status, text=SESSION_EXPIRED_TEXT + "\n")
        return web.Response(status=status, body=fault.body(), headers={"Content-Type": _XML})

    def _throttled(self, trace: _Trace, wait_s: float) -> web.Response:
        """The same 429 whichever limit refused: Campaign does not say which."""
        config = self.tenant.config
        trace.status, trace.outcome = 429, "throttled"
        headers = {}
        if config.retry_after:
            wait = config.retry_after_s or max(1, math.ceil(wait_s))
            headers["Retry-After"] = str(max(1, wait))
        if not config.throttle_body:
            return web.Response(status=429, headers=headers)
        body = {
            "error_code": "429050",
            "message": f"Too many requests: the limit of {config.tps_limit:g} calls per second"
            " for this instance is reached.",
        }
        return web.json_response(body, status=429, headers=headers)

    def _html(self, status: int, *, http_status: int | None = None) -> web.Response:
        return web.Response(
            status=http_status or status,
            body=html_page(status, _REASONS.get(status, "Error")),
            headers={"Content-Type": "text/html; charset=utf-8"},
        )

    async def _fail(self, request: web.Request, kind: str, trace: _Trace) -> web.StreamResponse:
        """An injected failure or an outage answer of ``kind``."""
        if kind in ("500", "502", "503"):
            trace.status = int(kind)
            return self._html(int(kind))
        if kind == "html":
            trace.status = 200
            return self._html(503, http_status=200)
        if kind == "soap":
            fault = SimFault(
                "SOAP-ENV:Server",
                "Internal error while processing the request; please retry (simulated).",
                kind="transient",
            )
            return self._fault(fault, trace, injected=True)
        if kind == "masked":
            return self._fault(masked_fault("masked"), trace, injected=True)
        if kind == "badlogin":
            return self._fault(bad_login_fault(trace.method, trace.urn), trace, injected=True)
        if kind in ("entity", "laughs"):
            trace.status = 200
            body = hostile_body(kind, trace.method, self.tenant.config.hostile_encoding)
            return web.Response(body=body, headers={"Content-Type": _XML})
        if kind == "huge":
            trace.status = 200
            return await self._huge(request, trace.method)
        if kind == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._closing.wait(), timeout=self.tenant.config.timeout_hold_s
                )
        trace.status = 0
        return self._abort(request)

    @staticmethod
    def _abort(request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            # Linger 0 makes the close a TCP RST: the client sees a connection reset,
            # as behind a load balancer that kills a connection, not a clean close.
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)  # never sent: the connection is gone

    async def _truncated(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        answer = web.StreamResponse(status=200, headers={"Content-Type": _XML})
        answer.content_length = len(payload)
        await answer.prepare(request)
        await answer.write(payload[: len(payload) // 2])
        if request.transport is not None:
            request.transport.close()  # flushes the half written, then ends the connection
        return answer

    async def _huge(self, request: web.Request, method: str) -> web.StreamResponse:
        answer = web.StreamResponse(status=200, headers={"Content-Type": _XML})
        answer.enable_chunked_encoding()  # no Content-Length: the client must count
        await answer.prepare(request)
        # write() waits for the socket to drain, so an unread answer costs the
        # simulator one buffer, not huge_body_bytes.
        with contextlib.suppress(ConnectionError):
            for piece in huge_body_chunks(method, self.tenant.config.huge_body_bytes):
                if self._closing.is_set():
                    break
                await answer.write(piece)
            await answer.write_eof()
        return answer

    async def _drip(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        answer = web.StreamResponse(status=200, headers={"Content-Type": _XML})
        answer.content_length = len(payload)
        await answer.prepare(request)
        interval = self.tenant.config.drip_interval_s
        with contextlib.suppress(ConnectionError):
            for offset in range(len(payload)):
                await answer.write(payload[offset : offset + 1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), timeout=interval)
                if self._closing.is_set() or request.transport is None:
                    break
            else:
                await answer.write_eof()
        return answer

    # --- health and IMS --------------------------------------------------------------

    async def _r_test(self, request: web.Request) -> web.Response:
        if self.tenant.plan.outage():
            return self._html(503)
        body = (
            f"<redir status='OK' date='{campaign_time()}' build='9236' sha1='0000000'"
            f" instance='{INSTANCE}' sourceIP='{request.remote or ''}'"
            f" host='{request.host}' localHost='{INSTANCE}'/>"
        )
        return web.Response(text=body, content_type="text/xml")

    async def _ping(self, request: web.Request) -> web.Response:
        tenant = self.tenant
        if tenant.plan.outage():
            return self._html(503)
        headers = request.headers
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() == "bearer":
                tenant.auth.bearer(token.strip())
            else:
                session = headers.get("X-Session-Token") or request.cookies.get(
                    "__sessiontoken", ""
                )
                tenant.auth.session(
                    session,
                    headers.get("X-Security-Token", ""),
                    False,
                    tenant.config.require_security_token,
                )
        except SimFault:
            return web.Response(status=tenant.config.fault_status, text=SESSION_EXPIRED_TEXT)
        return web.Response(text=f"OK\n{campaign_time()}\n")

    async def _ims_token(self, request: web.Request) -> web.Response:
        form: dict[str, Any] = dict(request.query)
        form.update(await request.post())
        if form.get("grant_type") != "client_credentials":
            return self._oauth_error(
                400, "unsupported_grant_type", "grant_type must be client_credentials"
            )
        if self.tenant.config.strict and not str(form.get("scope", "")).strip():
            return self._oauth_error(400, "invalid_scope", "scope is required")
        client = self.tenant.clients.get(str(form.get("client_id", "")))
        if client is None:
            return self._oauth_error(400, "invalid_client", "invalid client_id parameter")
        secret = str(form.get("client_secret", ""))
        if not secrets.compare_digest(secret, client.client_secret):
            return self._oauth_error(401, "invalid_client", "invalid client_secret parameter")
        ttl = self.tenant.config.ims_token_ttl_s
        token = self.tenant.auth.issue_token(client, ttl)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": int(ttl)}
        )

    @staticmethod
    def _oauth_error(status: int, error: str, description: str) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps({"error": error, "error_description": description}),
            content_type="application/json",
        )
