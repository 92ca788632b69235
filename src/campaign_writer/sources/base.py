"""The loop every broker source shares: receive a batch, route it, commit it, then ack.

::

    broker --receive(up to batch_size, batch_wait)--> router.route_lines(bodies)
        accepted -> records
        poison   -> dead letters (original bytes, headers, reason)
    one queue.append(records, dead_letters=...): one all-or-nothing group commit
    then ack the whole batch to the broker (never before that commit)

* **Backpressure**: when ``append`` raises :class:`QueueFullError` nothing was written.
  The source stops asking its broker for messages (each kind keeps its prefetch or
  pull size bounded) and either holds the batch or hands it back (``_hold``), then
  waits for room before it receives again.
* **Reconnects**: a :class:`SourceError` from a hook (each module translates its
  client's exceptions) closes the connection and opens a new one after a capped,
  jittered exponential backoff. Messages received but not acked are redelivered by
  the broker, so delivery is at least once; nothing acked is ever missing.
* **Crashes**: any other exception ends the source's :attr:`~BrokerSource.task`,
  which the daemon's supervisor waits on; a source never dies silently.

Subclasses implement ``_open``, ``_receive``, ``_ack`` and ``_shutdown`` and may
override ``_hold``, ``_resume`` and ``_idle``. Each is built as
``Kind(name, settings, router, queue, metrics)``, with its own settings dataclass
(which carries :class:`CommonSettings` as ``common``); a subclass sets up its own
state in ``_setup`` rather than repeating that signature, and its module defines
``SOURCE = SourceKind.of(Kind, KindSettings, parse_options)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..backoff import Backoff
from ..errors import QueueFullError, SourceError
from ..logs import get_logger, redact
from ..metrics import Metrics
from ..records import QueueItem, RawDeadLetter
from ..settings import Section

__all__ = [
    "Backoff",
    "BrokerSettings",
    "BrokerSource",
    "CommonSettings",
    "IntakeQueue",
    "IntakeRouter",
    "Message",
    "headers_text",
]

log = get_logger("sources")

# How long one wait for messages, or for room in the queue, may last before the loop
# looks at its stop flag again. Bounds the time close() takes.
POLL_S = 0.5
# How long close() lets the batch in hand finish (commit and ack) before cancelling.
CLOSE_GRACE_S = 5.0


@dataclass(slots=True)
class Message:
    """One broker message: its original bytes, its headers, and the broker's handle.

    ``problem`` is set by a source that already knows the message is unusable (a
    stream entry without its event field, say); it becomes the dead letter's reason.
    """

    body: bytes
    headers: dict[str, str]
    handle: Any = None
    problem: str | None = None


class IntakeQueue(Protocol):
    """What a source needs from :class:`campaign_writer.queue.DurableQueue`."""

    async def append(
        self, items: Sequence[QueueItem], *, dead_letters: Sequence[RawDeadLetter] = ()
    ) -> None: ...

    async def wait_for_space(self, timeout: float) -> Any: ...


class IntakeRouter(Protocol):
    """What a source needs from :class:`campaign_writer.router.Router`."""

    def route_lines(self, lines: Sequence[bytes], *, source: str, created_at: float) -> Any:
        """``.items`` (queue items, event = the original bytes), ``.rejected`` (index, why)."""


FORMATS = ("json", "ndjson")


@dataclass(frozen=True)
class CommonSettings:
    """Keys every ``[[sources]]`` block of a broker kind accepts.

    ``format``: ``json`` (the default) takes one event per message; ``ndjson`` takes
    one or more events per message, one per line. Publishers that batch events into
    one message spare the broker client its per-message cost, which dominates intake
    from RabbitMQ (see README "Message-queue intake").
    """

    batch_size: int = 500
    batch_wait_ms: float = 5.0
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 30.0
    format: str = "json"

    @classmethod
    def read(cls, section: Section) -> CommonSettings:
        return cls(
            format=section.string("format", cls.format, choices=FORMATS),
            batch_size=section.integer("batch_size", cls.batch_size, minimum=1, maximum=10_000),
            batch_wait_ms=section.number("batch_wait_ms", cls.batch_wait_ms, minimum=0),
            reconnect_initial_s=section.number(
                "reconnect_initial_s", cls.reconnect_initial_s, minimum=0.01
            ),
            reconnect_max_s=section.number("reconnect_max_s", cls.reconnect_max_s, minimum=0.1),
        )


class BrokerSettings(Protocol):
    """What every kind's settings dataclass carries."""

    @property
    def common(self) -> CommonSettings: ...


S = TypeVar("S", bound=BrokerSettings)


class BrokerSource(ABC, Generic[S]):
    """One ``[[sources]]`` block: a task that moves broker messages into the local queue."""

    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        settings: S,
        router: IntakeRouter,
        queue: IntakeQueue,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.common = settings.common
        self.router = router
        self.queue = queue
        metrics = self.metrics = metrics or Metrics()
        self._received = metrics.events_received.labels(name)
        self._accepted = metrics.events_accepted.labels(name)
        self._rejected = metrics.events_rejected.labels(name)
        self._acked = metrics.source_acked.labels(name)
        self._dead_lettered = metrics.source_dead_lettered.labels(name)
        self._reconnects = metrics.source_reconnects.labels(name)
        self._paused = metrics.source_paused.labels(name)
        self._paused.set(0)
        self.connected = False
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._need_room = False
        self._setup()

    def _setup(self) -> None:
        """The kind's own state, set up at the end of ``__init__``."""

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming; returns once the first connection attempt has ended.

        A broker that is down is not an error here: the source logs it and keeps
        trying with backoff, so the writer can start before its brokers.
        """
        if self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"source:{self.name}")
        self._task.add_done_callback(self._on_task_done)
        waiter = asyncio.ensure_future(self._first_attempt.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def close(self) -> None:
        """Stop receiving, let the batch in hand finish, close the connection."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake()
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_GRACE_S)
            except TimeoutError:
                task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._paused.set(0)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The consuming task, from start() to close(); it ends early only on a crash."""
        return self._task

    @property
    def crashed(self) -> BaseException | None:
        """The error that ended the task, if it ended on one."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.critical(
                "source stopped on an unexpected error",
                extra={"source": self.name, "error": redact(repr(error))},
                exc_info=error,
            )

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "connected": self.connected,
            "paused": self._need_room,
            "reconnects": self._reconnects.value,
            "last_error": self.last_error,
            "received": self._received.value,
            "accepted": self._accepted.value,
            "dead_lettered": self._dead_lettered.value,
            "acked": self._acked.value,
        }

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        if self._need_room:
            state += ", paused"
        return (
            f"<{type(self).__name__} {self.name!r} {state}: received={self._received.value}"
            f" accepted={self._accepted.value} acked={self._acked.value}"
            f" dead_lettered={self._dead_lettered.value} reconnects={self._reconnects.value}>"
        )

    # --- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.common.reconnect_initial_s, self.common.reconnect_max_s, "half")
        opened_before = False
        while not self._stopping.is_set():
            try:
                await self._open()
                self.connected = True
                self.last_error = None
                if opened_before:
                    self._reconnects.inc()
                    log.info("source reconnected", extra={"source": self.name})
                opened_before = True
                backoff.reset()
                self._first_attempt.set()
                await self._consume()
            except SourceError as exc:
                self.last_error = redact(str(exc))
                log.warning(
                    "source connection failed; will reconnect",
                    extra={"source": self.name, "error": self.last_error},
                )
            finally:
                self.connected = False
                await self._shutdown()
            self._first_attempt.set()
            if not self._stopping.is_set():
                await self._sleep(backoff.next_delay())

    async def _consume(self) -> None:
        """Receive batch N+1 while batch N commits; settle batches strictly in order.

        The overlap hides the commit's fsync and the broker round trip behind each
        other. At most one batch waits beside the one being settled, so memory stays
        bounded, and acks keep the broker's order (RabbitMQ's multiple-ack needs it).
        """
        wait_s = self.common.batch_wait_ms / 1000.0
        settling: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                if self._need_room:
                    # The queue is full: receive nothing more until the batch in hand
                    # is committed (held) or handed back, and then until there is room.
                    if settling is not None:
                        await settling
                        settling = None
                    if self._need_room:
                        await self._wait_for_room(())
                        if self._stopping.is_set():
                            return
                        await self._unpause()
                batch = await self._receive(self.common.batch_size, wait_s)
                if settling is not None:
                    await settling
                    settling = None
                if batch:
                    settling = asyncio.create_task(self._settle(batch))
        finally:
            if settling is not None:
                # Let the batch in hand finish (close() bounds the wait), then surface
                # its error, if any, like any other.
                await settling

    async def _settle(self, batch: list[Message]) -> None:
        """Commit the batch's records and dead letters in one append, then ack it all."""
        items, poison = self._route(batch)
        # Events, not messages: an ndjson message carries several.
        self._received.inc(len(items) + len(poison))
        dead = [
            RawDeadLetter(self.name, message.body, message.headers, reason)
            for message, reason in poison
        ]
        retry_delay = 0.0
        held = False
        while True:
            try:
                await self.queue.append(items, dead_letters=dead)
                break
            except QueueFullError:
                if not self._need_room:
                    self._pause()
                if not held:
                    # Also for a batch received while an earlier one was held.
                    held = True
                    if not await self._hold(batch):
                        return  # handed back to the broker; see _consume
                await self._wait_for_room(batch)
                if self._stopping.is_set():
                    return  # not acked: the broker redelivers it
                # The queue signals room once usage falls below its resume mark, which
                # may still be too little for this batch: retry with a growing delay
                # rather than spin.
                await self._sleep(retry_delay)
                retry_delay = min(POLL_S, retry_delay * 2 or 0.01)
        if self._need_room:
            await self._unpause()
        acked = await self._ack(batch)
        self._accepted.inc(len(items))
        if poison:
            self._rejected.inc(len(poison))
            self._dead_lettered.inc(len(poison))
        if acked:
            self._acked.inc(len(batch))

    def _pause(self) -> None:
        self._need_room = True
        self._paused.set(1)
        log.info("local queue full: source paused", extra={"source": self.name})

    async def _unpause(self) -> None:
        self._need_room = False
        self._paused.set(0)
        await self._resume()
        log.info("local queue has room: source resumed", extra={"source": self.name})

    def _route(self, batch: list[Message]) -> tuple[list[QueueItem], list[tuple[Message, str]]]:
        """Queue items for the usable events; ``(message, reason)`` for the poison.

        With ``format = "ndjson"`` a poison line becomes a dead letter of its own (the
        line's bytes, the message's headers); the good lines of its message still go.
        """
        poison: list[tuple[Message, str]] = []
        usable: list[Message] = []
        for message in batch:
            body = message.body
            if message.problem is not None:
                poison.append((message, message.problem))
            elif not body or body.isspace():
                poison.append((message, "empty message"))
            elif self.common.format == "ndjson":
                usable.extend(
                    Message(line, message.headers)
                    for line in body.splitlines()
                    if line and not line.isspace()
                )
            else:
                usable.append(message)
        routing = self.router.route_lines(
            [message.body for message in usable], source=self.name, created_at=time.time()
        )
        for index, reason in routing.rejected:
            poison.append((usable[index], reason))
        return routing.items, poison

    async def _wait_for_room(self, batch: Sequence[Message]) -> None:
        """Wait until the queue signals room, keeping the broker session alive meanwhile."""
        while not self._stopping.is_set():
            if await self.queue.wait_for_space(POLL_S):
                return
            await self._idle(batch)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- what each broker provides ---------------------------------------------------

    @abstractmethod
    async def _open(self) -> None:
        """Connect and subscribe; raise SourceError when the broker is unreachable."""

    @abstractmethod
    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        """Up to ``max_count`` messages: wait up to POLL_S for the first, ``wait_s`` more."""

    @abstractmethod
    async def _ack(self, batch: list[Message]) -> bool:
        """Acknowledge every message of the batch (called only after the commit).

        False when the broker refused it without the link failing (a Kafka commit
        after a rebalance): the broker redelivers, and nothing is counted as acked.
        """

    @abstractmethod
    async def _shutdown(self) -> None:
        """Close the connection; must not raise."""

    async def _hold(self, batch: list[Message]) -> bool:
        """The queue is full: keep ``batch`` (True) or hand it back to the broker (False)."""
        return True

    def _wake(self) -> None:
        """close() was called: end a wait for messages early, if the broker allows."""

    async def _resume(self) -> None:
        """The queue has room again: undo whatever ``_hold`` did to stop the flow."""

    async def _idle(self, batch: Sequence[Message]) -> None:
        """Called about every POLL_S while paused; raise SourceError if the link is gone."""


def headers_text(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    """Broker headers as text, for the dead-letter entry (bytes decoded leniently)."""
    if not raw:
        return {}
    result: dict[str, str] = {}
    for key, value in raw.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes | bytearray):
            result[name] = bytes(value).decode("utf-8", "replace")
        else:
            result[name] = str(value)
    return result
