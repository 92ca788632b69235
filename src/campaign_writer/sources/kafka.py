"""Kafka intake (aiokafka): a consumer group, offsets committed after the local commit.

* Auto-commit is off. After a batch is committed locally, each partition in it gets
  its offset committed to one past the last record of that partition in the batch,
  never further: a crash or a rebalance replays only what was not yet in the queue.
* While the local queue is full the assigned partitions are paused, so the fetcher
  stops reading ahead; the fetch buffer is bounded by ``fetch_max_bytes`` anyway.
* A commit refused because a rebalance moved the partition away is not an error:
  the new owner replays from the last committed offset (at least once); the batch
  is simply not counted as acked.
* aiokafka re-establishes broker connections by itself; errors it does surface make
  :class:`~.base.BrokerSource` rebuild the consumer with its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from ..errors import SourceError
from ..logs import Secret, get_logger
from ..settings import Section
from . import SourceKind
from .base import POLL_S, BrokerSource, CommonSettings, Message

__all__ = ["KIND", "SOURCE", "KafkaSettings", "KafkaSource", "parse_options", "read_settings"]

KIND = "kafka"
_ERRORS = (KafkaError, OSError, TimeoutError)
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

log = get_logger("sources.kafka")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: tuple[str, ...]
    topics: tuple[str, ...]
    group: str
    client_id: str = "campaign-writer"
    auto_offset_reset: str = "earliest"
    fetch_max_bytes: int = 8 * 1024 * 1024
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    security_protocol: str = "PLAINTEXT"
    ca_file: str | None = None
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    common: CommonSettings = field(default_factory=CommonSettings)


def parse_options(options: Mapping[str, Any], path: str, problems: list[str]) -> KafkaSettings:
    """Read one ``kind = "kafka"`` block; problems are appended with their key path."""
    section = Section(options, path, problems)
    common = CommonSettings.read(section)
    settings = KafkaSettings(
        bootstrap_servers=tuple(section.string_list("bootstrap_servers")),
        topics=tuple(section.string_list("topics")),
        group=section.string("group"),
        client_id=section.string("client_id", "campaign-writer"),
        auto_offset_reset=section.string(
            "auto_offset_reset", "earliest", choices=("earliest", "latest")
        ),
        fetch_max_bytes=section.size("fetch_max_bytes", 8 * 1024 * 1024, minimum=1024),
        max_poll_interval_ms=section.integer("max_poll_interval_ms", 300_000, minimum=1_000),
        session_timeout_ms=section.integer("session_timeout_ms", 10_000, minimum=1_000),
        heartbeat_interval_ms=section.integer("heartbeat_interval_ms", 3_000, minimum=100),
        security_protocol=section.string("security_protocol", "PLAINTEXT", choices=_PROTOCOLS),
        ca_file=section.optional_string("ca_file"),
        sasl_mechanism=section.string("sasl_mechanism", "PLAIN", choices=_MECHANISMS),
        sasl_username=section.optional_string("sasl_username"),
        sasl_password=section.secret("sasl_password"),
        common=common,
    )
    if settings.heartbeat_interval_ms >= settings.session_timeout_ms:
        section.problem("heartbeat_interval_ms", "must be less than session_timeout_ms")
    for key in ("bootstrap_servers", "topics"):
        if not getattr(settings, key):
            section.problem(key, "is required (a string or an array of strings)")
    if settings.security_protocol.startswith("SASL") and not (
        settings.sasl_username and settings.sasl_password
    ):
        section.problem(
            "sasl_username",
            f"and sasl_password are required with {settings.security_protocol}",
        )
    section.finish()
    return settings


class KafkaSource(BrokerSource[KafkaSettings]):
    """Consume Kafka topics as one member of a consumer group."""

    kind: ClassVar[str] = KIND

    def _setup(self) -> None:
        self._consumer: AIOKafkaConsumer | None = None
        self.commits_refused = 0

    def _build_consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        extra: dict[str, Any] = {}
        if "SSL" in settings.security_protocol:
            extra["ssl_context"] = ssl.create_default_context(cafile=settings.ca_file)
        if settings.security_protocol.startswith("SASL"):
            assert settings.sasl_password is not None
            extra.update(
                sasl_mechanism=settings.sasl_mechanism,
                sasl_plain_username=settings.sasl_username,
                sasl_plain_password=settings.sasl_password.reveal(),
            )
        return AIOKafkaConsumer(
            *settings.topics,
            bootstrap_servers=list(settings.bootstrap_servers),
            group_id=settings.group,
            client_id=settings.client_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            fetch_max_bytes=settings.fetch_max_bytes,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            security_protocol=settings.security_protocol,
            **extra,
        )

    async def _open(self) -> None:
        self._consumer = self._build_consumer()
        try:
            await self._consumer.start()
        except _ERRORS as exc:
            raise SourceError(
                f"Kafka {','.join(self.settings.bootstrap_servers)} group "
                f"{self.settings.group!r}: {exc!r}"
            ) from exc

    def _live_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise SourceError("Kafka consumer is closed")
        return self._consumer

    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        consumer = self._live_consumer()
        try:
            fetched = await consumer.getmany(timeout_ms=int(POLL_S * 1000), max_records=max_count)
        except _ERRORS as exc:
            raise SourceError(f"Kafka fetch failed: {exc!r}") from exc
        messages: list[Message] = []
        for partition, records in fetched.items():
            for record in records:
                headers = (
                    {key: value.decode("utf-8", "replace") for key, value in record.headers}
                    if record.headers
                    else {}
                )
                handle = (partition, record.offset)
                if record.value is None:
                    messages.append(Message(b"", headers, handle, "record has no value"))
                else:
                    messages.append(Message(record.value, headers, handle))
        return messages

    async def _ack(self, batch: list[Message]) -> bool:
        consumer = self._live_consumer()
        last: dict[TopicPartition, int] = {}
        for message in batch:
            partition, offset = message.handle
            if offset >= last.get(partition, -1):
                last[partition] = offset
        offsets = {tp: OffsetAndMetadata(offset + 1, "") for tp, offset in last.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved these partitions while we committed locally: the new
            # owner replays them from the last committed offset.
            self.commits_refused += 1
            log.warning(
                "Kafka refused an offset commit after a rebalance; the batch will be replayed",
                extra={"source": self.name, "error": repr(exc)},
            )
            return False
        except _ERRORS as exc:
            raise SourceError(f"Kafka offset commit failed: {exc!r}") from exc
        return True

    async def _hold(self, batch: list[Message]) -> bool:
        consumer = self._live_consumer()
        try:
            consumer.pause(*consumer.assignment())
        except KafkaError as exc:
            raise SourceError(f"Kafka pause failed: {exc!r}") from exc
        return True

    async def _resume(self) -> None:
        consumer = self._live_consumer()
        try:
            consumer.resume(*consumer.paused())
        except KafkaError as exc:
            raise SourceError(f"Kafka resume failed: {exc!r}") from exc

    async def _shutdown(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(consumer.stop(), 10)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "commits_refused": self.commits_refused}


SOURCE: Final = SourceKind.of(KafkaSource, KafkaSettings, parse_options)
read_settings = SOURCE.read_settings
