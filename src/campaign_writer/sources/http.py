"""HTTP intake: ``POST /v1/events`` into the durable queue, served by aiohttp.

The body is one JSON object, a JSON array of objects, or NDJSON (``Content-Type:
application/x-ndjson``, one event per line). Each event is mapped by the router;
the good ones are committed to the queue before the answer is sent:

=====  ==========================================================================
202    ``{"accepted": n, "rejected": [{"index": i, "error": "..."}]}``, sent after
       the accepted events are on disk
400    same body, when nothing in the request is acceptable (bad JSON, not UTF-8,
       no events, every event rejected, a compressed body that does not inflate);
       ``index`` is null for the body as a whole; ``{"error": ...}`` for a request
       that is not valid HTTP/1.1
401    ``http.token`` is set and the request lacks ``Authorization: Bearer <token>``
404    any other path; 405 any other method (``Allow: POST``)
408    a body that has not arrived within ``READ_TIMEOUT_S``
413    the body is over ``http.max_body_bytes`` (a gzip or deflate body: once inflated too)
415    a ``Content-Encoding`` other than gzip, deflate or identity
431    a request line or header over ``MAX_FIELD_BYTES``, or over ``MAX_HEADERS`` headers
503    the queue is full (``Retry-After`` says when to try again); nothing written;
       also the answer to a connection over ``http.max_connections``
=====  ==========================================================================

An index is the event's position: the array index, or the NDJSON line number
counted from 0 (blank lines count as lines but are not events). A broken line never
stops the lines around it. The answer is bounded whatever the body held: at most
``MAX_REJECTIONS_SHOWN`` rejections are listed; when there are any, ``rejected_total``
counts them all and ``rejected_by_reason`` counts them by their reason (the error with
its quoted values and numbers left out, at most ``MAX_REASONS`` reasons).

HTTP/1.1 itself (keep-alive, pipelining, chunked bodies, HTTP/1.0 clients, HEAD,
Upgrade, header limits, write flow control, graceful shutdown) is aiohttp's low-level
``web.Server``; this module only decides the answers. Before the body is read, and
before ``100 Continue`` is sent, a request is checked from its headers: path, method,
encoding, ``Authorization``, the declared length and the queue's room. A compressed
body is inflated here, not by aiohttp, so that every gzip member is read (``cat a.gz
b.gz`` is one legal body) and the inflated size is held to the limit.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from ..errors import QueueError, QueueFullError, SourceError
from ..logs import get_logger
from ..router import Routing
from ..settings import split_listen

if TYPE_CHECKING:
    from ..config import HttpConfig
    from ..metrics import Metrics, Tally
    from ..queue import DurableQueue
    from ..router import Router

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_FIELD_BYTES",
    "MAX_HEADERS",
    "MAX_REASONS",
    "MAX_REJECTIONS_SHOWN",
    "NDJSON_TYPES",
    "READ_TIMEOUT_S",
    "RETRY_AFTER_S",
    "SOURCE_NAME",
    "HttpIntake",
    "inflate",
]

log = get_logger("sources.http")

SOURCE_NAME: Final = "http"
RETRY_AFTER_S: Final = 2
NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
PATH: Final = "/v1/events"
# A connection with no request under way (or a request whose headers have not all
# arrived, counted from the connection's start or its last answer) is closed after it.
IDLE_TIMEOUT_S: Final = 75.0
READ_TIMEOUT_S: Final = 60.0  # from the end of a request's headers to its body's end
LINGER_S: Final = 2.0  # reading and dropping a body left unread after a refusal
CLOSE_GRACE_S: Final = 10.0  # close() waits this long for requests under way
MAX_FIELD_BYTES: Final = 8190  # the request line, or one header's name and value
MAX_HEADERS: Final = 100
MAX_REJECTIONS_SHOWN: Final = 100
MAX_REASONS: Final = 20
_REASON_CHARS: Final = 120
# Content-Encoding -> zlib wbits; identity is no encoding at all.
_DECODERS: Final = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_FULL_CONNECTIONS: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
# Quoted values and numbers vary from event to event; a reason is what is left.
_VARYING: Final = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\d+")


def _json(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=headers,
    )


def reason_of(error: str) -> str:
    """The reason an error belongs to: the text with its varying parts left out."""
    return _VARYING.sub("…", error)[:_REASON_CHARS]


def outcome(accepted: int, rejected: list[tuple[int | None, str]]) -> dict[str, Any]:
    """The 202/400 body: bounded, whatever the number of rejections."""
    body: dict[str, Any] = {
        "accepted": accepted,
        "rejected": [
            {"index": index, "error": error} for index, error in rejected[:MAX_REJECTIONS_SHOWN]
        ],
    }
    if rejected:
        reasons: Counter[str] = Counter()
        other = 0
        for _, error in rejected:
            reason = reason_of(error)
            if reason in reasons or len(reasons) < MAX_REASONS:
                reasons[reason] += 1
            else:
                other += 1
        if other:
            reasons["(other reasons)"] = other
        body["rejected_total"] = len(rejected)
        body["rejected_by_reason"] = dict(reasons.most_common())
    return body


class BodyError(Exception):
    """A compressed body that cannot be used: ``status`` 400 or 413."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def inflate(body: bytes, wbits: int, limit: int) -> bytes:
    """A gzip (``wbits`` 31) or deflate (15) body inflated whole, at most ``limit`` bytes.

    Every gzip member is inflated in turn (RFC 1952 allows several; trailing zero
    bytes, as some tools pad with, are allowed). Raises :class:`BodyError`: 413 over
    the limit, 400 when the data is broken, truncated, or followed by other bytes.
    """
    parts: list[bytes] = []
    size = 0
    data = body
    member = 0
    while True:
        member += 1
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            where = f" (member {member})" if member > 1 else ""
            raise BodyError(400, f"the body could not be decompressed{where}: {exc}") from None
        size += len(part)
        parts.append(part)
        if size > limit or inflater.unconsumed_tail:
            raise BodyError(413, "")
        if not inflater.eof:
            raise BodyError(400, "the compressed body is truncated")
        data = inflater.unused_data
        if not data.strip(b"\0"):
            return b"".join(parts)
        if wbits != 31:
            raise BodyError(400, "the body holds bytes after the end of its deflate stream")


class _Handler(web_protocol.RequestHandler):
    """aiohttp's connection handler, with errors answered in this intake's JSON."""

    # Counts an answer by status code (set by the server that made the handler).
    count_answer: Callable[[int], None] | None = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)
        ):
            status = 431
            text = (
                f"a request line or header is over {MAX_FIELD_BYTES} bytes, or there are "
                f"over {MAX_HEADERS} headers"
            )
        elif isinstance(exc, BadHttpMessage):
            text = f"not a valid HTTP/1.1 request: {exc.message}"[:300]
        else:
            if status >= 500:
                log.error("HTTP intake failed a request", exc_info=exc)
            text = "internal error" if status >= 500 else (message or "bad request")[:300]
        response = _json(status, {"error": text}, {"Connection": "close"})
        response.force_close()
        if self.count_answer is not None:
            self.count_answer(status)
        return response

    @property
    def idle(self) -> bool:
        """Waiting for a request, with none under way or parsed and waiting."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def eof_received(self) -> bool:  # type: ignore[override]
        """The client half-closed: answer what it sent, then close. (aiohttp would let
        the transport close at once, and the answer to a request under way be lost.)"""
        if self.idle:
            self.force_close()
        else:
            self.close()  # after the answer
        return True


class _Server(web.Server):
    """aiohttp's low-level server, with a cap on concurrent connections."""

    def __init__(
        self,
        handler: Any,
        max_connections: int,
        count_answer: Callable[[int], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.refused_connections = 0
        self.count_answer = count_answer

    def __call__(self) -> asyncio.BaseProtocol:  # type: ignore[override]
        if len(self._connections) >= self.max_connections:
            self.refused_connections += 1
            self.count_answer(503)
            return _Refuse()
        connection = _Handler(self, loop=self._loop, **self._kwargs)
        connection.count_answer = self.count_answer
        return connection


class _Refuse(asyncio.Protocol):
    """A connection over the cap: a fixed 503, then closed, before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = orjson.dumps({"error": "too many connections; try again later"})
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_FULL_CONNECTIONS % (RETRY_AFTER_S, len(body), body))
        transport.close()


class HttpIntake:
    """The ``POST /v1/events`` listener; ``start()`` binds it, ``close()`` stops it."""

    name = SOURCE_NAME

    def __init__(
        self,
        settings: HttpConfig,
        router: Router,
        queue: DurableQueue,
        metrics: Metrics,
    ) -> None:
        self.host, self.port = split_listen(settings.listen)
        self.max_body_bytes = settings.max_body_bytes
        self.max_connections = settings.max_connections
        token = settings.token
        self._token = token.reveal().encode("utf-8") if token is not None else None
        self._router = router
        self._queue = queue
        self._server: _Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy: set[_Handler] = set()  # connections with a request in our hands
        self._received = metrics.events_received.labels(SOURCE_NAME)
        self._accepted = metrics.events_accepted.labels(SOURCE_NAME)
        self._rejected = metrics.events_rejected.labels(SOURCE_NAME)
        # Counts without a Prometheus series of their own; the events' are the metrics'.
        self._requests = 0  # POSTs to /v1/events with an encoding we read
        self._refused_full = 0  # answered 503 because the local queue was full
        self._answers = metrics.intake_responses
        self._answer_counters: dict[int, Tally] = {}

    def __repr__(self) -> str:
        return (
            f"<HttpIntake {self.url}: requests={self._requests}"
            f" accepted={self._accepted.value} rejected={self._rejected.value}"
            f" refused_full={self._refused_full}>"
        )

    @property
    def totals(self) -> dict[str, int]:
        """The intake's counts, as ``/v1/stats`` shows them."""
        return {
            "requests": self._requests,
            "accepted": self._accepted.value,
            "rejected": self._rejected.value,
            "refused_full": self._refused_full,
        }

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind ``http.listen`` (port 0 picks a free port, read back into ``port``)."""
        if self._listener is not None:
            return
        server = _Server(
            self._handle,
            self.max_connections,
            self._count_answer,
            keepalive_timeout=IDLE_TIMEOUT_S,
            lingering_time=LINGER_S,
            max_line_size=MAX_FIELD_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
            auto_decompress=False,
            access_log=None,
        )
        loop = asyncio.get_running_loop()
        try:
            listener = await loop.create_server(
                server, self.host, self.port, backlog=512, reuse_address=True
            )
        except OSError as exc:
            raise SourceError(
                f"http.listen: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._server, self._listener = server, listener
        self.port = int(listener.sockets[0].getsockname()[1])
        # Serving as a task, like every other stage, so the supervisor can wait on it.
        self._task = asyncio.create_task(listener.serve_forever(), name="intake:http")
        log.info("HTTP intake listening", extra={"url": self.url})

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The listener's serving task, from start() to close(); the daemon's supervisor
        waits on it, and its end before close() is a crash of the intake."""
        return self._task

    async def close(self) -> None:
        """Stop accepting connections; requests under way finish first (up to
        ``CLOSE_GRACE_S``), idle connections are closed."""
        listener, self._listener = self._listener, None
        server = self._server
        task, self._task = self._task, None
        if listener is None or server is None:
            return
        listener.close()
        # aiohttp's own shutdown drops what arrives once it begins, the rest of a body
        # under way included: close the idle connections, let the busy ones finish.
        deadline = time.monotonic() + CLOSE_GRACE_S
        while True:
            for connection in server.connections:
                assert isinstance(connection, _Handler)
                if connection not in self._busy and connection.idle:
                    connection.force_close()
            if not server.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        await server.shutdown(1.0)
        await listener.wait_closed()
        if task is not None:
            task.cancel()  # uvloop's close() leaves serve_forever() waiting
            await asyncio.gather(task, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        refused = self._server.refused_connections if self._server is not None else 0
        return {
            "name": SOURCE_NAME,
            "url": self.url,
            **self.totals,
            "refused_connections": refused,
        }

    # --- the request ---------------------------------------------------------------------

    def _authorized(self, authorization: str | None) -> bool:
        assert self._token is not None
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time, so the comparison does not reveal how much of a guess was right.
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)

    def _too_large(self, inflated: bool = False) -> web.Response:
        once = " once decompressed" if inflated else ""
        text = f"the body is over http.max_body_bytes ({self.max_body_bytes} bytes){once}"
        response = _json(413, {"error": text})
        response.force_close()  # the rest of the body is not read
        return response

    def _full(self) -> web.Response:
        self._refused_full += 1
        return _json(
            503,
            {"error": "the local queue is full; nothing was stored, try again later"},
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
        """The answer the headers alone decide, or None to read the body."""
        if request.path != PATH:
            return _json(404, {"error": "not found; events go to POST /v1/events"})
        if request.method != "POST":
            return _json(405, {"error": "use POST"}, {"Allow": "POST"})
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity" and encoding not in _DECODERS:
            shown = encoding[:40]
            return _json(
                415, {"error": f"Content-Encoding {shown!r} is not supported (gzip, deflate)"}
            )
        self._requests += 1
        if self._token is not None and not self._authorized(request.headers.get("Authorization")):
            return _json(
                401,
                {"error": "a valid 'Authorization: Bearer <token>' header is required"},
                {"WWW-Authenticate": 'Bearer realm="campaign-writer"'},
            )
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            return self._too_large()
        if not self._queue.has_room(declared or 0):
            return self._full()
        return None

    async def _read(self, request: web.BaseRequest) -> bytes | web.Response:
        """The body, held to ``max_body_bytes`` and ``READ_TIMEOUT_S``."""
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (
            1,
            1,
        ):
            await request.writer.write(_CONTINUE)
        content = request.content
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        return self._too_large()
                    chunks.append(chunk)
        except TimeoutError:
            response = _json(408, {"error": f"the body took over {READ_TIMEOUT_S:g} s to arrive"})
            response.force_close()
            return response
        return b"".join(chunks)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        assert isinstance(connection, _Handler)
        self._busy.add(connection)
        try:
            response = await self._answer(request)
        finally:
            self._busy.discard(connection)
        self._count_answer(response.status)
        return response

    def _count_answer(self, status: int) -> None:
        """One more answer with this status in ``intake_responses_total``."""
        counter = self._answer_counters.get(status)
        if counter is None:
            counter = self._answer_counters[status] = self._answers.labels(SOURCE_NAME, str(status))
        counter.inc()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        wbits = _DECODERS.get(encoding)
        if wbits is not None:
            try:
                body = inflate(body, wbits, self.max_body_bytes)
            except BodyError as exc:
                if exc.status == 413:
                    return self._too_large(inflated=True)
                return _json(400, outcome(0, [(None, str(exc))]))
        if not self._queue.has_room(len(body)):
            return self._full()
        content_type = request.content_type.lower()
        return await self._store(body, content_type)

    async def _store(self, body: bytes, content_type: str) -> web.Response:
        routing = self._map(body, content_type)
        if isinstance(routing, str):
            self._received.inc()
            self._rejected.inc()
            return _json(400, outcome(0, [(None, routing)]))
        items, rejected = routing.items, routing.rejected
        self._received.inc(len(items) + len(rejected))
        if not items:
            if rejected:
                self._rejected.inc(len(rejected))
            shown: list[tuple[int | None, str]] = list(rejected) or [(None, "no events in body")]
            return _json(400, outcome(0, shown))
        try:
            await self._queue.append(items)
        except QueueFullError:
            return self._full()
        except QueueError as exc:
            log.error("could not store events", extra={"error": str(exc)})
            return _json(500, {"error": "the events could not be stored; nothing was kept"})
        self._accepted.inc(len(items))
        if rejected:
            self._rejected.inc(len(rejected))
        return _json(202, outcome(len(items), list(rejected)))

    def _map(self, body: bytes, content_type: str) -> Routing | str:
        """The routing of the body's events, or what is wrong with the body as a whole."""
        now = time.time()
        if content_type in NDJSON_TYPES:
            lines = body.split(b"\n")
            return self._router.route_lines(lines, source=SOURCE_NAME, created_at=now)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return f"the body is not valid JSON: {exc}"
        if isinstance(document, dict):
            document = [document]
        if isinstance(document, list):
            return self._router.route_events(document, source=SOURCE_NAME, created_at=now)
        return "the body must be a JSON object or an array of objects"
