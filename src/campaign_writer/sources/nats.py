"""NATS JetStream intake: a durable pull consumer, acked after the local commit.

* The durable consumer is bound if it exists, created otherwise (explicit acks,
  ``ack_wait_s``, ``max_ack_pending``, optional ``subject`` filter). Several writers
  binding the same durable share its messages; each message goes to one of them.
* We pull ``batch_size`` messages at a time (a ``CONSUMER.MSG.NEXT`` request that
  expires after a poll interval): nothing comes unasked, so a paused writer holds
  no messages. Deliveries arrive on an inbox subscription with a callback, not one
  ``next_msg`` per message as nats-py's ``fetch`` does (a task, a timer and a uuid
  each): that per-message cost was most of the source's CPU.
* Acks are sent one per message (JetStream has no multiple-ack for pull consumers)
  after the batch committed, then flushed once.
* When the local queue is full the batch is ``nak``-ed with ``nak_delay_s``:
  JetStream redelivers it later (to us or another writer) and we fetch again only
  when there is room. Redeliveries (``num_delivered > 1``) go through the same path;
  a poison message is dead-lettered and acked on its first delivery, so it never
  comes back.
* nats-py's own reconnection is off; :class:`~.base.BrokerSource` reconnects with
  its backoff and counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from ..errors import SourceError
from ..logs import Secret, get_logger
from ..settings import Section
from . import SourceKind
from .base import POLL_S, BrokerSource, CommonSettings, Message
from .options import broker_url, safe_url

__all__ = ["KIND", "SOURCE", "NatsSettings", "NatsSource", "parse_options", "read_settings"]

KIND = "nats"
_ERRORS = (nats.errors.Error, OSError, TimeoutError)
# A flush waits for the server's PONG: a healthy server answers in milliseconds, and a
# link that died unnoticed should cost a reconnect soon, not a long stall.
FLUSH_TIMEOUT_S = 5  # nats-py takes whole seconds here

log = get_logger("sources.nats")


@dataclass(frozen=True)
class NatsSettings:
    url: Secret
    stream: str
    durable: str
    subject: str | None = None
    create: bool = True
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000
    nak_delay_s: float = 2.0
    common: CommonSettings = field(default_factory=CommonSettings)


def parse_options(options: Mapping[str, Any], path: str, problems: list[str]) -> NatsSettings:
    """Read one ``kind = "nats"`` block; problems are appended with their key path."""
    section = Section(options, path, problems)
    common = CommonSettings.read(section)
    settings = NatsSettings(
        url=broker_url(section, "url", "nats://127.0.0.1:4222"),
        stream=section.string("stream"),
        durable=section.string("durable"),
        subject=section.optional_string("subject"),
        create=section.boolean("create", True),
        ack_wait_s=section.number("ack_wait_s", 30.0, minimum=1.0),
        max_ack_pending=section.integer("max_ack_pending", 20_000, minimum=1),
        nak_delay_s=section.number("nak_delay_s", 2.0, minimum=0.0),
        common=common,
    )
    if settings.max_ack_pending < common.batch_size:
        section.problem("max_ack_pending", f"must be at least batch_size ({common.batch_size})")
    section.finish()
    return settings


def _delivery_count(reply: str) -> int:
    """How many times JetStream delivered a message, read from its ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<...>`` (9 tokens), or with a domain and
    an account hash before the stream (12 or more). Reading this one token is much
    cheaper than ``Msg.metadata``, which parses and builds the whole structure.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[4])
    if len(tokens) >= 12:
        return int(tokens[6])
    return 1


class NatsSource(BrokerSource[NatsSettings]):
    """Pull one JetStream durable consumer into the local queue."""

    kind: ClassVar[str] = KIND

    def _setup(self) -> None:
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._inbox = ""
        self._next_subject = ""
        self._pending: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._requested = 0  # deliveries still due on the open pull request
        self._problem: str | None = None
        self._redeliveries = self.metrics.source_redeliveries.labels(self.name)

    async def _open(self) -> None:
        settings = self.settings
        self._pending.clear()
        self._requested = 0
        self._problem = None
        try:
            self._client = client = await nats.connect(
                servers=[settings.url.reveal()],
                name=f"campaign-writer:{self.name}",
                allow_reconnect=False,
                # nats-py retries a refused first connect until a server has failed
                # more than max_reconnect_attempts times (0 means never stop): fail
                # fast instead and let the source's backoff pace the retries.
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,
                connect_timeout=5,
                error_cb=self._on_error,
                closed_cb=self._on_closed,
            )
            self._js = client.jetstream()
            await self._ensure_consumer(self._js)
            self._inbox = client.new_inbox()
            await client.subscribe(self._inbox, cb=self._on_message)
        except _ERRORS as exc:
            raise SourceError(
                f"NATS {safe_url(settings.url)} stream {settings.stream!r} "
                f"consumer {settings.durable!r}: {exc!r}"
            ) from exc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{settings.stream}.{settings.durable}"

    async def _ensure_consumer(self, js: JetStreamContext) -> None:
        settings = self.settings
        try:
            await js.consumer_info(settings.stream, settings.durable)
            return
        except nats.js.errors.NotFoundError:
            if not settings.create:
                raise
        config = ConsumerConfig(
            durable_name=settings.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.ack_wait_s,
            max_ack_pending=settings.max_ack_pending,
            max_deliver=-1,
            filter_subject=settings.subject,
        )
        # Two writers starting together may both get here; an identical config is
        # accepted twice by the server.
        await js.add_consumer(settings.stream, config)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS client error", extra={"source": self.name, "error": repr(exc)})

    async def _on_closed(self) -> None:
        log.debug("NATS connection closed", extra={"source": self.name})
        self._arrived.set()

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is not None and not msg.data:
            # 404 no messages, 408 request expired, 409 and the like: the pull request
            # is over. (100 idle heartbeats are not asked for.)
            if status != "100":
                self._requested = 0
                description = headers.get("Description", "") if headers else ""
                if status == "503" or "deleted" in description.lower():
                    # The consumer (or JetStream) is gone: reconnecting recreates it.
                    self._problem = f"JetStream answered {status} {description}".strip()
                self._arrived.set()
            return
        self._requested = max(0, self._requested - 1)
        if _delivery_count(msg.reply) > 1:
            self._redeliveries.inc()
        self._pending.append(Message(msg.data, dict(headers) if headers else {}, msg))
        self._arrived.set()

    def _wake(self) -> None:
        self._arrived.set()

    def _connected_client(self) -> Client:
        client = self._client
        if client is None or client.is_closed or not client.is_connected:
            raise SourceError("NATS connection lost")
        if self._problem is not None:
            raise SourceError(f"NATS consumer {self.settings.durable!r}: {self._problem}")
        return client

    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        client = self._connected_client()
        pending = self._pending
        if not self._requested and len(pending) < max_count:
            # Ask for the next batch before this one is used up, so the server's round
            # trip overlaps our work; at most two batches are ever with us.
            request = {"batch": max_count, "expires": int(POLL_S * 1e9)}
            try:
                await client.publish(self._next_subject, orjson.dumps(request), reply=self._inbox)
            except _ERRORS as exc:
                raise SourceError(f"NATS pull request failed: {exc!r}") from exc
            self._requested = max_count
        if not pending:
            self._arrived.clear()
            # The server answers an expired request with a 408; the margin covers a
            # request lost with its connection.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), POLL_S * 2)
            if not pending:
                if not self._arrived.is_set():
                    self._requested = 0  # no answer at all: ask again next time
                    await self._check_consumer()
                self._connected_client()
                return []
        if len(pending) < max_count and self._requested and wait_s > 0:
            # Let the rest of a burst arrive so one commit carries it.
            await asyncio.sleep(wait_s)
        count = min(max_count, len(pending))
        return [pending.popleft() for _ in range(count)]

    async def _check_consumer(self) -> None:
        """A pull request nobody answered: is the durable still there?

        JetStream answers an open request with a 409 when its consumer is deleted, but a
        request sent after the deletion gets no answer at all, so silence alone would
        leave us asking forever.
        """
        js = self._js
        if js is None:
            return
        settings = self.settings
        try:
            await js.consumer_info(settings.stream, settings.durable, timeout=FLUSH_TIMEOUT_S)
        except nats.js.errors.NotFoundError as exc:
            self._problem = f"consumer no longer exists ({exc.description or exc!r})"
        except _ERRORS as exc:
            raise SourceError(f"NATS consumer check failed: {exc!r}") from exc

    async def _ack(self, batch: list[Message]) -> bool:
        client = self._connected_client()
        try:
            for message in batch:
                await message.handle.ack()
            await client.flush(timeout=FLUSH_TIMEOUT_S)
        except _ERRORS as exc:
            raise SourceError(f"NATS ack failed: {exc!r}") from exc
        return True

    async def _hold(self, batch: list[Message]) -> bool:
        # Holding would outlive ack_wait and JetStream would redeliver to another writer
        # anyway: hand the batch back with a delay and fetch again when there is room.
        client = self._connected_client()
        # Whatever else the open pull request delivered goes back too.
        handed_back = [*batch, *self._pending]
        self._pending.clear()
        try:
            for message in handed_back:
                await message.handle.nak(delay=self.settings.nak_delay_s)
            await client.flush(timeout=FLUSH_TIMEOUT_S)
        except _ERRORS as exc:
            raise SourceError(f"NATS nak failed: {exc!r}") from exc
        return False

    async def _idle(self, batch: Any) -> None:
        self._connected_client()

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        self._js = None
        self._pending.clear()
        self._requested = 0
        if client is not None and not client.is_closed:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(client.close(), POLL_S * 4)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "redelivered": self._redeliveries.value}


SOURCE: Final = SourceKind.of(NatsSource, NatsSettings, parse_options)
read_settings = SOURCE.read_settings
