"""RabbitMQ intake: one queue, manual acks after the local commit.

* The connection is :class:`~.amqp.AmqpConsumer`, a lean consuming client of our own
  (see that module for why not aio-pika/aiormq, which the tests use to publish).
* The queue is either declared by us (``declare = true``: durable, ``queue_type``
  classic or quorum) or must exist already (checked with a passive declare).
* ``prefetch`` (default twice ``batch_size``) caps the unacked messages the broker
  sends us: while the local queue is full we stop acking, so the broker stops
  sending, and memory stays bounded.
* A batch is acked with one ``basic.ack(multiple=True)`` on its last delivery tag:
  one consumer on one channel receives tags in order, so "this tag and every one
  before it" is exactly the batch.
* A lost connection, or the broker cancelling the consumer (its queue was deleted),
  ends the consume loop; :class:`~.base.BrokerSource` reconnects with capped backoff,
  and RabbitMQ redelivers what was not acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SourceError
from ..logs import Secret
from ..metrics import Metrics
from ..settings import Section
from .amqp import AmqpConsumer, AmqpError, Endpoint
from .base import POLL_S, BrokerSource, CommonSettings, IntakeQueue, IntakeRouter, Message
from .base import headers_text as _headers_text
from .options import block_settings, broker_url, raise_problems, safe_url

if TYPE_CHECKING:
    from ..config import SourceConfig

__all__ = ["KIND", "RabbitMQSettings", "RabbitMQSource", "create", "parse_options", "read_settings"]

KIND = "rabbitmq"


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
    try:
        Endpoint.from_url(settings.url.reveal())
    except AmqpError as exc:  # its text names the fault, never the password
        section.problem("url", str(exc))
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
        self._consumer: AmqpConsumer | None = None
        self._pending: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._lost: str | None = None

    async def _open(self) -> None:
        settings = self.settings
        self._pending.clear()
        self._lost = None
        declare = {"x-queue-type": settings.queue_type} if settings.declare else None
        try:
            self._consumer = await AmqpConsumer.open(
                Endpoint.from_url(settings.url.reveal()),
                queue=settings.queue,
                prefetch=settings.prefetch,
                name=f"campaign-writer:{self.name}",
                on_delivery=self._on_delivery,
                on_lost=self._on_lost,
                declare=declare,
            )
        except AmqpError as exc:
            raise SourceError(
                f"RabbitMQ {safe_url(settings.url)} queue {settings.queue!r}: {exc}"
            ) from exc

    def _on_lost(self, reason: str) -> None:
        self._lost = reason
        self._arrived.set()

    def _on_delivery(self, tag: int, body: bytes, headers: dict[str, Any] | None) -> None:
        self._pending.append(Message(body, _headers_text(headers) if headers else {}, tag))
        self._arrived.set()

    def _wake(self) -> None:
        self._arrived.set()

    def _check(self) -> None:
        if self._lost is not None:
            raise SourceError(f"RabbitMQ queue {self.settings.queue!r}: {self._lost}")

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
        assert self._consumer is not None
        try:
            self._consumer.ack(batch[-1].handle, multiple=True)
        except AmqpError as exc:
            raise SourceError(f"RabbitMQ ack failed: {exc}") from exc
        return True

    async def _idle(self, batch: Any) -> None:
        # A connection lost while we wait for room invalidates the batch's tags:
        # give it up now (RabbitMQ redelivers it) rather than commit it and fail the ack.
        self._check()

    async def _shutdown(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._pending.clear()
        if consumer is not None:
            await consumer.close(POLL_S * 4)
