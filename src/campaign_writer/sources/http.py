"""HTTP intake: ``POST /v1/events`` into the durable queue.

The body is one JSON object, a JSON array of objects, or NDJSON (``Content-Type:
application/x-ndjson``, one event per line). Each event is mapped by the router;
the good ones are committed to the queue before the answer is sent:

=====  ==========================================================================
202    ``{"accepted": n, "rejected": [{"index": i, "error": "..."}]}``, sent after
       the accepted events are on disk
400    same body, when nothing in the request is acceptable (bad JSON, not UTF-8,
       no events, every event rejected); ``index`` is null for the body as a whole
401    ``http.token`` is set and the request lacks ``Authorization: Bearer <token>``
413    the body is over ``http.max_body_bytes``
503    the queue is full (``Retry-After`` says when to try again); nothing written
=====  ==========================================================================

An index is the event's position: the array index, or the NDJSON line number
counted from 0 (blank lines count as lines but are not events). A broken line never
stops the lines around it. aiohttp's exceptions stay in this module.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson
from aiohttp import web

from ..errors import QueueError, QueueFullError, SourceError
from ..logs import get_logger
from ..router import Routing
from ..settings import split_listen

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import Metrics
    from ..queue import DurableQueue
    from ..router import Router

__all__ = ["NDJSON_TYPES", "RETRY_AFTER_S", "SOURCE_NAME", "HttpIntake"]

log = get_logger("sources.http")

SOURCE_NAME: Final = "http"
RETRY_AFTER_S: Final = 2
NDJSON_TYPES: Final = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
_READ_ERRORS = (OSError, aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError)


def _answer(status: int, payload: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=headers or None,
    )


def _outcome(accepted: int, rejected: list[tuple[int | None, str]]) -> dict[str, Any]:
    return {
        "accepted": accepted,
        "rejected": [{"index": index, "error": error} for index, error in rejected],
    }


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
        self._runner: web.AppRunner | None = None
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
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/v1/events", self._post_events)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=512)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SourceError(
                f"http.listen: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        log.info("HTTP intake listening", extra={"url": self.url})

    async def close(self) -> None:
        """Stop accepting requests; requests under way finish first."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def stats(self) -> dict[str, Any]:
        return {"name": SOURCE_NAME, "url": self.url, **self.totals}

    # --- the request ---------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time, so the comparison does not reveal how much of a guess was right.
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token)

    async def _read(self, request: web.Request) -> bytes | None:
        """The whole body, or None as soon as it passes ``max_body_bytes``."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> web.Response:
        return _answer(
            413,
            {"error": f"the body is over http.max_body_bytes ({self.max_body_bytes} bytes)"},
            Connection="close",
        )

    async def _post_events(self, request: web.Request) -> web.Response:
        self.totals["requests"] += 1
        if self._token is not None and not self._authorized(request):
            return _answer(
                401,
                {"error": "a valid 'Authorization: Bearer <token>' header is required"},
                **{"WWW-Authenticate": 'Bearer realm="campaign-writer"'},
            )
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return self._too_large()
        try:
            body = await self._read(request)
        except _READ_ERRORS as exc:
            return _answer(400, _outcome(0, [(None, f"the body could not be read: {exc}")]))
        if body is None:
            return self._too_large()
        if not self._queue.has_room(len(body)):
            return self._full()
        routing = self._map(body, request.content_type)
        if isinstance(routing, str):
            self._received.inc()
            self._rejected.inc()
            return _answer(400, _outcome(0, [(None, routing)]))
        items, rejected = routing.items, routing.rejected
        self._received.inc(len(items) + len(rejected))
        if not items:
            if rejected:
                self._rejected.inc(len(rejected))
            shown: list[tuple[int | None, str]] = list(rejected) or [(None, "no events in body")]
            return _answer(400, _outcome(0, shown))
        try:
            await self._queue.append(items)
        except QueueFullError:
            return self._full()
        except QueueError as exc:
            log.error("could not store events", extra={"error": str(exc)})
            return _answer(500, {"error": "the events could not be stored; nothing was kept"})
        self._accepted.inc(len(items))
        self.totals["accepted"] += len(items)
        if rejected:
            self._rejected.inc(len(rejected))
            self.totals["rejected"] += len(rejected)
        return _answer(202, _outcome(len(items), list(rejected)))

    def _full(self) -> web.Response:
        self.totals["refused_full"] += 1
        return _answer(
            503,
            {"error": "the local queue is full; nothing was stored, try again later"},
            **{"Retry-After": str(RETRY_AFTER_S)},
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
