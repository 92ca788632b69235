"""HTTP intake: ``POST /v1/events`` into the durable queue.

The body is one JSON object, a JSON array of objects, or NDJSON (``Content-Type:
application/x-ndjson``, one event per line). Each event is mapped by the router;
the good ones are committed to the queue before the answer is sent:

=====  ==========================================================================
202    ``{"accepted": n, "rejected": [{"index": i, "error": "..."}]}``, sent after
       the accepted events are on disk
400    same body, when nothing in the request is acceptable (bad JSON, not UTF-8,
       no events, every event rejected); ``index`` is null for the body as a whole;
       also ``{"error": ...}`` for a request that is not valid HTTP/1.1
401    ``http.token`` is set and the request lacks ``Authorization: Bearer <token>``
404    any other path; 405 any other method (``Allow: POST``)
408    a request started but not finished within ``READ_TIMEOUT_S``
413    the body is over ``http.max_body_bytes`` (a gzip or deflate body: once inflated too)
415    a ``Content-Encoding`` other than gzip, deflate or identity
431    the request line and headers are over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS``
503    the queue is full (``Retry-After`` says when to try again); nothing written
=====  ==========================================================================

An index is the event's position: the array index, or the NDJSON line number
counted from 0 (blank lines count as lines but are not events). A broken line never
stops the lines around it.

The listener is an asyncio protocol over httptools (llhttp, the parser of Node.js),
not a web framework: when it was replaced, a bare aiohttp app answering paced posts
cost about 0.5 ms of CPU per request, a protocol over httptools about 0.2 ms, more
than routing a post of a few dozen events.
HTTP/1.1 is served in full for this one endpoint: keep-alive, pipelining (answers
in request order), chunked bodies, ``Expect: 100-continue``, HTTP/1.0 clients. An
idle keep-alive connection is closed after ``IDLE_TIMEOUT_S``; an answer that ends a
connection (413, 431, 400 for broken HTTP) half-closes it and reads what the client
still sends for up to ``LINGER_S``, so the client sees the answer, not a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import zlib
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import httptools
import orjson

from ..errors import QueueError, QueueFullError, SourceError
from ..logs import get_logger
from ..router import Routing
from ..settings import split_listen

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import Metrics
    from ..queue import DurableQueue
    from ..router import Router

__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "NDJSON_TYPES",
    "READ_TIMEOUT_S",
    "RETRY_AFTER_S",
    "SOURCE_NAME",
    "HttpIntake",
]

log = get_logger("sources.http")

SOURCE_NAME: Final = "http"
RETRY_AFTER_S: Final = 2
NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
PATH: Final = b"/v1/events"
IDLE_TIMEOUT_S: Final = 75.0  # a keep-alive connection with no request under way
READ_TIMEOUT_S: Final = 60.0  # from a request's first byte to its last
LINGER_S: Final = 2.0  # reading and dropping after an answer that ends the connection
CLOSE_GRACE_S: Final = 10.0  # close() waits this long for requests under way
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
_PIPELINE_MAX: Final = 16  # requests parsed ahead of their answers before reading pauses
_SWEEP_S: Final = 1.0
_WANTED: Final = frozenset(
    {b"content-type", b"content-length", b"content-encoding", b"authorization", b"expect"}
)
# Content-Encoding -> zlib wbits; identity is no encoding at all.
_DECODERS: Final = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


_Answer = tuple[int, dict[str, Any], "dict[str, str] | None"]


def _outcome(accepted: int, rejected: list[tuple[int | None, str]]) -> dict[str, Any]:
    return {
        "accepted": accepted,
        "rejected": [{"index": index, "error": error} for index, error in rejected],
    }


class _Clock:
    """The Date header's text, formatted at most once a second."""

    second = -1
    text = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.text = now, formatdate(now, usegmt=True).encode()
        return cls.text


def _response(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None, close: bool
) -> bytes:
    body = orjson.dumps(payload)
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n"
        % (status, HTTPStatus(status).phrase.encode(), len(body), _Clock.date())
    )
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return b"".join(
        (head, extra.encode("latin-1"), b"Connection: close\r\n\r\n" if close else b"\r\n", body)
    )


@dataclass(slots=True)
class _Request:
    """One parsed request, or an answer already decided while parsing (``refused``)."""

    body: bytes
    content_type: str
    authorization: bytes | None
    keep_alive: bool
    refused: _Answer | None = None
    encoding: bytes = b""


class _Stop(Exception):
    """Raised in a parser callback: the connection has been answered and is ending."""


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, intake: HttpIntake) -> None:
        self.intake = intake
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.last_data = self.loop.time()
        self.requests: deque[_Request] = deque()
        self.serving: asyncio.Task[None] | None = None
        self.paused = False
        self.ending = False  # an answer that ends the connection is due: stop parsing
        self.eof = False
        self.in_message = False
        self.started = self.last_data
        self.continue_due = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.head_bytes = 0
        self.header_count = 0
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.refused: _Answer | None = None
        self.encoding = b"identity"

    # --- the transport ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.intake._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A request under way still finishes (its events may already be committing);
        # its answer has nowhere to go.
        self.intake._connections.discard(self)
        self.ending = True

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it sent, then close (None closes now)."""
        self.eof = self.ending = True
        return True if self.serving is not None or self.requests else None

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.ending:
            return  # lingering after a closing answer: read and drop
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                raise
        except httptools.HttpParserUpgrade:
            self._end(400, {"error": "protocol upgrades are not supported"})
        except httptools.HttpParserError as exc:
            self._end(400, {"error": f"not a valid HTTP/1.1 request: {exc}"})

    def busy(self) -> bool:
        return self.in_message or bool(self.requests) or self.serving is not None

    def _start_serving(self) -> None:
        if self.serving is None:
            self.serving = self.loop.create_task(self._serve())

    # --- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.started = self.loop.time()
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url), 0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value), 1)
        name = name.lower()
        if name in _WANTED:
            self.headers[name] = value

    def _count_head(self, size: int, headers: int) -> None:
        self.head_bytes += size
        self.header_count += headers
        if self.head_bytes > MAX_HEAD_BYTES or self.header_count > MAX_HEADERS:
            self._end(
                431,
                {
                    "error": f"the request line and headers are over {MAX_HEAD_BYTES} bytes "
                    f"or {MAX_HEADERS} headers"
                },
            )
            raise _Stop

    def on_headers_complete(self) -> None:
        path = self.url.partition(b"?")[0]
        method = self.parser.get_method()
        encoding = self.encoding = (
            self.headers.get(b"content-encoding", b"identity").strip().lower()
        )
        if path != PATH:
            self.refused = (404, {"error": "not found; events go to POST /v1/events"}, None)
        elif method != b"POST":
            self.refused = (405, {"error": "use POST"}, {"Allow": "POST"})
        elif encoding != b"identity" and encoding not in _DECODERS:
            shown = encoding.decode("latin-1")[:40]
            self.refused = (
                415,
                {"error": f"Content-Encoding {shown!r} is not supported (gzip, deflate)"},
                None,
            )
        declared = self.headers.get(b"content-length")
        if declared is not None and self.refused is None:
            try:
                too_large = int(declared) > self.intake.max_body_bytes
            except ValueError:
                too_large = False  # llhttp has checked it; nothing to add
            if too_large:
                self._end(*self.intake.too_large())
                raise _Stop
        if self.headers.get(b"expect", b"").lower() == b"100-continue":
            if self.refused is not None:
                # The client waits for a go-ahead it will not get: answer now and end,
                # as the body it may send after all would be read as the next request.
                self._end(*self.refused)
                raise _Stop
            if self.serving is None and not self.requests:
                self._write(_CONTINUE)
            else:
                self.continue_due = True  # after the answers ahead of it

    def on_body(self, body: bytes) -> None:
        if self.refused is not None:
            return  # the answer is decided; the body is read only to keep the connection
        self.size += len(body)
        if self.size > self.intake.max_body_bytes:
            self._end(*self.intake.too_large())
            raise _Stop
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        content_type = self.headers.get(b"content-type", b"application/octet-stream")
        self.requests.append(
            _Request(
                b"".join(self.chunks),
                content_type.partition(b";")[0].strip().lower().decode("latin-1"),
                self.headers.get(b"authorization"),
                # A HEAD is refused with a body the client will not read: end there.
                self.parser.should_keep_alive() and self.parser.get_method() != b"HEAD",
                self.refused,
                self.encoding,
            )
        )
        self._reset()
        if self.serving is None:
            self._start_serving()
        elif len(self.requests) >= _PIPELINE_MAX and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    # --- answers ---------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self.requests:
                request = self.requests.popleft()
                if self.paused and len(self.requests) < _PIPELINE_MAX // 2:
                    self.paused = False
                    transport = self.transport
                    if transport is not None and not transport.is_closing():
                        transport.resume_reading()
                if request.refused is not None:
                    status, payload, headers = request.refused
                else:
                    try:
                        status, payload, headers = await self.intake.handle(request)
                    except Exception:  # a bug: answer it, keep the listener up
                        log.exception("HTTP intake failed a request")
                        status, payload, headers = 500, {"error": "internal error"}, None
                        request.keep_alive = False
                close = not request.keep_alive or (self.eof and not self.requests)
                self._write(_response(status, payload, headers, close))
                if close:
                    self._close()
                    return
                if self.continue_due and not self.requests:
                    self.continue_due = False
                    self._write(_CONTINUE)
        finally:
            self.serving = None

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _end(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Answer (after the answers already due) and end the connection; what the
        client sends from now on is dropped."""
        self.requests.append(_Request(b"", "", None, False, (status, payload, headers)))
        self.in_message = False
        self.ending = True
        self._start_serving()

    def _close(self) -> None:
        """Half-close after the answer, read and drop for LINGER_S, then close."""
        self.ending = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.eof:
            transport.close()  # both sides are done
        elif transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


class HttpIntake:
    """The ``POST /v1/events`` listener; ``start()`` binds it, ``close()`` stops it."""

    name = SOURCE_NAME

    def __init__(
        self,
        config: Config,
        router: Router,
        queue: DurableQueue,
        metrics: Metrics,
    ) -> None:
        self.host, self.port = split_listen(config.http.listen)
        self.max_body_bytes = config.http.max_body_bytes
        token = config.http.token
        self._token = token.reveal().encode("utf-8") if token is not None else None
        self._router = router
        self._queue = queue
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self.crashed: BaseException | None = None
        self._received = metrics.events_received.labels(SOURCE_NAME)
        self._accepted = metrics.events_accepted.labels(SOURCE_NAME)
        self._rejected = metrics.events_rejected.labels(SOURCE_NAME)
        self.totals = {"requests": 0, "accepted": 0, "rejected": 0, "refused_full": 0}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind ``http.listen`` (port 0 picks a free port, read back into ``port``)."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: _Connection(self), self.host, self.port, backlog=512, reuse_address=True
            )
        except OSError as exc:
            raise SourceError(
                f"http.listen: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep(), name="http intake timeouts")
        log.info("HTTP intake listening", extra={"url": self.url})

    async def close(self) -> None:
        """Stop accepting connections; requests under way finish first (up to
        ``CLOSE_GRACE_S``), idle connections are closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        deadline = time.monotonic() + CLOSE_GRACE_S
        while True:
            for connection in list(self._connections):
                if not connection.busy() and connection.transport is not None:
                    connection.transport.close()
            if not self._connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.abort()
        await server.wait_closed()

    def stats(self) -> dict[str, Any]:
        return {"name": SOURCE_NAME, "url": self.url, **self.totals}

    async def _sweep(self) -> None:
        """Close idle keep-alive connections; answer 408 to requests that stall."""
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = asyncio.get_running_loop().time()
            for connection in list(self._connections):
                if connection.ending:
                    continue
                if connection.in_message:
                    if now - connection.started > READ_TIMEOUT_S:
                        connection._end(
                            408, {"error": f"the request took over {READ_TIMEOUT_S:g} s to arrive"}
                        )
                elif (
                    not connection.busy()
                    and now - connection.last_data > IDLE_TIMEOUT_S
                    and connection.transport is not None
                ):
                    connection.transport.close()

    # --- the request ---------------------------------------------------------------------

    def _authorized(self, authorization: bytes | None) -> bool:
        assert self._token is not None
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant time, so the comparison does not reveal how much of a guess was right.
        return hmac.compare_digest(given.strip(), self._token)

    def too_large(self) -> tuple[int, dict[str, Any]]:
        return (
            413,
            {"error": f"the body is over http.max_body_bytes ({self.max_body_bytes} bytes)"},
        )

    async def handle(self, request: _Request) -> _Answer:
        """The answer to one complete POST /v1/events."""
        self.totals["requests"] += 1
        if self._token is not None and not self._authorized(request.authorization):
            return (
                401,
                {"error": "a valid 'Authorization: Bearer <token>' header is required"},
                {"WWW-Authenticate": 'Bearer realm="campaign-writer"'},
            )
        body = request.body
        wbits = _DECODERS.get(request.encoding)
        if wbits is not None:
            decoded = self._decode(body, wbits)
            if isinstance(decoded, tuple):
                return decoded
            body = decoded
        if not self._queue.has_room(len(body)):
            return self._full()
        routing = self._map(body, request.content_type)
        if isinstance(routing, str):
            self._received.inc()
            self._rejected.inc()
            return 400, _outcome(0, [(None, routing)]), None
        items, rejected = routing.items, routing.rejected
        self._received.inc(len(items) + len(rejected))
        if not items:
            if rejected:
                self._rejected.inc(len(rejected))
            shown: list[tuple[int | None, str]] = list(rejected) or [(None, "no events in body")]
            return 400, _outcome(0, shown), None
        try:
            await self._queue.append(items)
        except QueueFullError:
            return self._full()
        except QueueError as exc:
            log.error("could not store events", extra={"error": str(exc)})
            return 500, {"error": "the events could not be stored; nothing was kept"}, None
        self._accepted.inc(len(items))
        self.totals["accepted"] += len(items)
        if rejected:
            self._rejected.inc(len(rejected))
            self.totals["rejected"] += len(rejected)
        return 202, _outcome(len(items), list(rejected)), None

    def _decode(self, body: bytes, wbits: int) -> bytes | _Answer:
        """A compressed body inflated, held to ``max_body_bytes`` once inflated too."""
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as exc:
            return 400, _outcome(0, [(None, f"the body could not be decompressed: {exc}")]), None
        if len(data) > self.max_body_bytes or inflater.unconsumed_tail:
            status, payload = self.too_large()
            payload["error"] += " once decompressed"
            return status, payload, None
        if not inflater.eof:
            return 400, _outcome(0, [(None, "the compressed body is truncated")]), None
        return data

    def _full(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.totals["refused_full"] += 1
        return (
            503,
            {"error": "the local queue is full; nothing was stored, try again later"},
            {"Retry-After": str(RETRY_AFTER_S)},
        )

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
