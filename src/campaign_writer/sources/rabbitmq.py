"""RabbitMQ intake (aio-pika): one queue, manual acks after the local commit.

* The queue is either declared by us (``declare = true``: durable, ``queue_type``
  classic or quorum) or must exist already (checked with a passive declare).
* ``prefetch`` (default twice ``batch_size``) caps the unacked messages the broker
  sends us: while the local queue is full we stop acking, so the broker stops
  sending, and memory stays bounded.
* A batch is acked with one ``basic.ack(multiple=True)`` on its last delivery tag:
  one consumer on one channel receives tags in order, so "this tag and every one
  before it" is exactly the batch.
* Connection handling is ours, not aio-pika's robust connection: a lost connection
  ends the consume loop, :class:`~.base.BrokerSource` reconnects with capped backoff,
  and unacked messages are redelivered by RabbitMQ.

Deliveries are taken from aio-pika's underlying aiormq channel instead of wrapping
each one in an ``IncomingMessage``: at tens of thousands of messages a second that
wrapper is most of the per-message cost, and we only need the body, the headers
and the delivery tag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pamqp.common import FieldTable
from yarl import URL

from ..errors import SourceError
from ..logs import Secret
from ..metrics import Metrics
from ..settings import Section
from .base import POLL_S, BrokerSource, CommonSettings, IntakeQueue, IntakeRouter, Message
from .base import headers_text as _headers_text
from .options import block_settings, broker_url, raise_problems, safe_url

if TYPE_CHECKING:
    from ..config import SourceConfig

__all__ = ["KIND", "RabbitMQSettings", "RabbitMQSource", "create", "parse_options", "read_settings"]

KIND = "rabbitmq"
_ERRORS = (*CONNECTION_EXCEPTIONS, TimeoutError)


@dataclass(frozen=True)
class RabbitMQSettings:
    url: Secret
    queue: str
    declare: bool = False
    queue_type: str = "classic"
    prefetch: int = 0
    common: CommonSettings = field(default_factory=CommonSettings)


def parse_options(options: Mapping[str, Any], path: str, problems: list[str]) -> RabbitMQSettings:
    """Read one ``kind = "rabbitmq"`` block; problems are appended with their key path."""
    section = Section(options, path, problems)
    common = CommonSettings.read(section)
    settings = RabbitMQSettings(
        url=broker_url(section, "url", "amqp://guest:guest@127.0.0.1:5672/"),
        queue=section.string("queue"),
        declare=section.boolean("declare", False),
        queue_type=section.string("queue_type", "classic", choices=("classic", "quorum")),
        prefetch=section.integer("prefetch", 2 * common.batch_size, minimum=1, maximum=65_535),
        common=common,
    )
    if settings.prefetch < common.batch_size:
        section.problem("prefetch", f"must be at least batch_size ({common.batch_size})")
    section.finish()
    return settings


def read_settings(options: Mapping[str, Any], path: str) -> RabbitMQSettings:
    """:func:`parse_options`, raising ConfigError when the block has problems."""
    return raise_problems(parse_options, options, path)


def create(
    config: SourceConfig, router: IntakeRouter, queue: IntakeQueue, metrics: Metrics
) -> RabbitMQSource:
    """The source for one ``[[sources]]`` block (the daemon starts it)."""
    settings = block_settings(config, RabbitMQSettings, parse_options)
    return RabbitMQSource(config.name, settings, router, queue, metrics)


class RabbitMQSource(BrokerSource):
    """Consume one RabbitMQ queue into the local queue."""

    kind: ClassVar[str] = KIND

    def __init__(
        self,
        name: str,
        settings: RabbitMQSettings,
        router: IntakeRouter,
        queue: IntakeQueue,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(name, settings.common, router, queue, metrics)
        self.settings = settings
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._raw_channel: aiormq.abc.AbstractChannel | None = None
        self._pending: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._lost: str | None = None
        self._consumer_tag: str | None = None

    async def _open(self) -> None:
        settings = self.settings
        self._pending.clear()
        self._lost = None
        try:
            self._connection = await aio_pika.connect(self._url())
            self._connection.close_callbacks.add(self._on_close)
            self._channel = await self._connection.channel()
            await self._channel.set_qos(prefetch_count=settings.prefetch)
            if settings.declare:
                arguments: FieldTable = {"x-queue-type": settings.queue_type}
                queue = await self._channel.declare_queue(
                    settings.queue, durable=True, arguments=arguments
                )
            else:
                queue = await self._channel.declare_queue(settings.queue, passive=True)
            self._raw_channel = await self._channel.get_underlay_channel()
            consume = await self._raw_channel.basic_consume(
                queue.name, self._on_delivery, no_ack=False
            )
            self._consumer_tag = consume.consumer_tag
        except _ERRORS as exc:
            raise SourceError(
                f"RabbitMQ {safe_url(settings.url)} queue {settings.queue!r}: {exc!r}"
            ) from exc

    def _url(self) -> URL:
        # aiormq takes the connection's name from the URL (client_properties are ignored
        # with a URL): operators then see "campaign-writer:<source>" in RabbitMQ's list.
        url = URL(self.settings.url.reveal())
        if "name" in url.query:
            return url
        return url.update_query(name=f"campaign-writer:{self.name}")

    def _on_close(self, _sender: Any, exc: BaseException | None = None) -> None:
        self._lost = repr(exc) if exc is not None else "connection closed"
        self._arrived.set()

    async def _on_delivery(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        headers = delivered.header.properties.headers
        self._pending.append(
            Message(
                delivered.body,
                _headers_text(headers) if headers else {},
                delivered.delivery_tag,
            )
        )
        self._arrived.set()

    def _wake(self) -> None:
        self._arrived.set()

    def _check(self) -> None:
        if self._lost is not None:
            raise SourceError(f"RabbitMQ connection lost: {self._lost}")
        # aiormq's Channel keeps its live consumers by tag (not on the abstract type).
        consumers = getattr(self._raw_channel, "consumers", None)
        if consumers is not None and self._consumer_tag not in consumers:
            # RabbitMQ cancels a consumer whose queue was deleted; aiormq only forgets
            # it, so without this check the source would wait forever.
            raise SourceError(
                f"RabbitMQ cancelled the consumer of queue {self.settings.queue!r}"
                " (was it deleted?)"
            )

    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        pending = self._pending
        if not pending:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), POLL_S)
            self._check()
            if not pending:
                return []
        if len(pending) < max_count and wait_s > 0:
            # Let the rest of a burst arrive so one commit carries it.
            await asyncio.sleep(wait_s)
        count = min(max_count, len(pending))
        return [pending.popleft() for _ in range(count)]

    async def _ack(self, batch: list[Message]) -> bool:
        self._check()
        assert self._raw_channel is not None
        try:
            await self._raw_channel.basic_ack(batch[-1].handle, multiple=True)
        except _ERRORS as exc:
            raise SourceError(f"RabbitMQ ack failed: {exc!r}") from exc
        return True

    async def _idle(self, batch: Any) -> None:
        # A connection lost while we wait for room invalidates the batch's tags:
        # give it up now (RabbitMQ redelivers it) rather than commit it and fail the ack.
        self._check()

    async def _shutdown(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        self._raw_channel = None
        self._pending.clear()
        if connection is not None:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(connection.close(), POLL_S * 4)
