"""Redis Streams intake: a consumer group, XREADGROUP in blocks, XACK after the commit.

* The group is created when missing (``MKSTREAM``), from ``start_id`` ("0": the
  whole stream, "$": only entries added from now on).
* Each entry carries its event, as JSON, in one field (``field``, default
  ``event``); the entry's other fields travel as headers into a dead letter.
* On connecting, the consumer first re-reads its own pending entries (ID ``0``):
  a writer restarted under the same ``consumer`` name takes back what it had read
  but not acked. Then it reads new entries (``>``).
* Every ``claim_interval_ms`` it takes over entries another consumer left pending
  for longer than ``claim_idle_ms`` (``XAUTOCLAIM``): a crashed writer's entries are
  committed by a live one.
* While the local queue is full it holds its batch and re-claims it to itself
  (``XCLAIM ... JUSTID``) so that no other writer takes it as abandoned.
* One ``XACK`` carries a whole batch's IDs.

redis-py's own retries are turned off: a lost connection surfaces at once and
:class:`~.base.BrokerSource` reconnects with its backoff and counts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from ..errors import SourceError
from ..logs import Secret
from ..settings import Section
from . import SourceKind
from .base import POLL_S, BrokerSource, CommonSettings, Message
from .options import broker_url, safe_url

__all__ = [
    "KIND",
    "SOURCE",
    "RedisStreamsSettings",
    "RedisStreamsSource",
    "parse_options",
    "read_settings",
]

KIND = "redis_streams"
# RuntimeError: under uvloop (the daemon's loop) redis-py writing to a connection that
# has just been closed gets "unable to perform operation on <TCPTransport closed=True>"
# instead of an OSError; it is the same lost connection and must reconnect, not crash.
_ERRORS = (RedisError, OSError, TimeoutError, RuntimeError)


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RedisStreamsSettings:
    url: Secret
    stream: str
    group: str
    consumer: str
    field: str = "event"
    start_id: str = "0"
    claim_idle_ms: int = 60_000
    claim_interval_ms: int = 15_000
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)


def parse_options(
    options: Mapping[str, Any], path: str, problems: list[str]
) -> RedisStreamsSettings:
    """Read one ``kind = "redis_streams"`` block; problems are appended with their key path."""
    section = Section(options, path, problems)
    common = CommonSettings.read(section)
    claim_idle = section.integer("claim_idle_ms", 60_000, minimum=1_000)
    settings = RedisStreamsSettings(
        url=broker_url(section, "url", "redis://127.0.0.1:6379/0"),
        stream=section.string("stream"),
        group=section.string("group"),
        consumer=section.optional_string("consumer") or _default_consumer(),
        field=section.string("field", "event"),
        start_id=section.string("start_id", "0"),
        claim_idle_ms=claim_idle,
        claim_interval_ms=section.integer("claim_interval_ms", claim_idle // 4, minimum=100),
        common=common,
    )
    section.finish()
    return settings


class RedisStreamsSource(BrokerSource[RedisStreamsSettings]):
    """Consume one stream through a consumer group into the local queue."""

    kind: ClassVar[str] = KIND

    def _setup(self) -> None:
        self.consumer = self.settings.consumer
        self._field = self.settings.field.encode()
        self._client: aioredis.Redis | None = None
        self._own_pending: bytes | str | None = "0"
        self._next_claim = 0.0
        self._claim_cursor: bytes | str = "0-0"
        self._next_touch = 0.0
        # Entries Redis hands over again: re-read from our pending list or claimed.
        self._redeliveries = self.metrics.source_redeliveries.labels(self.name)

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise SourceError("Redis connection is closed")
        return self._client

    async def _open(self) -> None:
        settings = self.settings
        self._client = aioredis.Redis.from_url(
            settings.url.reveal(),
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=5,
            socket_timeout=POLL_S + 10,
            client_name=f"campaign-writer:{self.name}",
        )
        try:
            await self._client.xgroup_create(
                settings.stream, settings.group, id=settings.start_id, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise SourceError(f"Redis stream {settings.stream!r}: {exc}") from exc
        except _ERRORS as exc:
            raise SourceError(f"Redis {safe_url(settings.url)}: {exc!r}") from exc
        self._own_pending = "0"
        self._next_claim = time.monotonic()

    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        settings = self.settings
        client = self._redis()
        try:
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + settings.claim_interval_ms / 1000.0
                claimed = await self._reclaim(client, max_count)
                if claimed:
                    return claimed
            if self._own_pending is not None:
                # Our pending entries after the cursor: the batch before this one may
                # not be acked yet (the base overlaps them), so never re-read from 0.
                reply = await client.xreadgroup(
                    settings.group,
                    self.consumer,
                    {settings.stream: self._own_pending},
                    count=max_count,
                )
                entries = reply[0][1] if reply else []
                if entries:
                    self._own_pending = entries[-1][0]
                    self._count_redelivered(len(entries))
                    return await self._messages(client, entries)
                self._own_pending = None
            reply = await client.xreadgroup(
                settings.group,
                self.consumer,
                {settings.stream: ">"},
                count=max_count,
                block=int(POLL_S * 1000),
            )
            return await self._messages(client, reply[0][1]) if reply else []
        except _ERRORS as exc:
            raise SourceError(f"Redis read from {settings.stream!r} failed: {exc!r}") from exc

    async def _reclaim(self, client: aioredis.Redis, max_count: int) -> list[Message]:
        """Take entries other consumers left pending too long (a crashed writer's)."""
        settings = self.settings
        reply = await client.xautoclaim(
            settings.stream,
            settings.group,
            self.consumer,
            min_idle_time=settings.claim_idle_ms,
            start_id=self._claim_cursor,
            count=max_count,
        )
        # XAUTOCLAIM scans a bounded slice of the pending list per call: carry on from
        # where it stopped, so idle entries deep in a long list are reached too.
        cursor = reply[0]
        self._claim_cursor = cursor if cursor not in (b"0-0", "0-0") else "0-0"
        entries = reply[1] if len(reply) > 1 else []
        if entries or self._claim_cursor != "0-0":
            # More may wait behind these: look again on the next receive.
            self._next_claim = time.monotonic()
        self._count_redelivered(len(entries))
        return await self._messages(client, entries)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "redelivered": self._redeliveries.value}

    def _count_redelivered(self, count: int) -> None:
        if count:
            self._redeliveries.inc(count)

    async def _messages(
        self, client: aioredis.Redis, entries: Sequence[tuple[bytes, Any]]
    ) -> list[Message]:
        messages: list[Message] = []
        vanished: list[bytes] = []
        event_field = self._field
        for entry_id, fields in entries:
            if not fields:
                # Trimmed from the stream while pending: nothing left to commit.
                vanished.append(entry_id)
                continue
            body = fields.get(event_field)
            headers = {
                key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
                for key, value in fields.items()
                if key != event_field
            }
            if body is None:
                messages.append(
                    Message(b"", headers, entry_id, f"entry has no {self.settings.field!r} field")
                )
            else:
                messages.append(Message(body, headers, entry_id))
        if vanished:
            await client.xack(self.settings.stream, self.settings.group, *vanished)
        return messages

    async def _ack(self, batch: list[Message]) -> bool:
        settings = self.settings
        try:
            await self._redis().xack(
                settings.stream, settings.group, *[message.handle for message in batch]
            )
        except _ERRORS as exc:
            raise SourceError(f"Redis XACK on {settings.stream!r} failed: {exc!r}") from exc
        return True

    async def _idle(self, batch: Sequence[Message]) -> None:
        # Keep the held entries' idle time low so other writers do not reclaim them.
        now = time.monotonic()
        if not batch or now < self._next_touch:
            return
        settings = self.settings
        self._next_touch = now + settings.claim_idle_ms / 3000.0
        try:
            await self._redis().xclaim(
                settings.stream,
                settings.group,
                self.consumer,
                min_idle_time=0,
                message_ids=[message.handle for message in batch],
                justid=True,
            )
        except _ERRORS as exc:
            raise SourceError(f"Redis XCLAIM on {settings.stream!r} failed: {exc!r}") from exc

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._stopping.is_set():
            await self._forget_consumer(client)
        with contextlib.suppress(*_ERRORS):
            await client.aclose()

    async def _forget_consumer(self, client: aioredis.Redis) -> None:
        """On close, leave the group if nothing is pending for us (no stale consumers)."""
        settings = self.settings
        with contextlib.suppress(*_ERRORS):
            pending = await client.xpending_range(
                settings.stream, settings.group, "-", "+", 1, consumername=self.consumer
            )
            if not pending:
                await client.xgroup_delconsumer(settings.stream, settings.group, self.consumer)


SOURCE: Final = SourceKind.of(RedisStreamsSource, RedisStreamsSettings, parse_options)
read_settings = SOURCE.read_settings
