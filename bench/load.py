"""The load generator: numbered sample events, fed as a backlog or as Poisson arrivals.

Every subject receives the same NDJSON lines, for the ``sample`` route of
``config/example.toml`` (``dem:sampleTableStg``, Ingest, keyed on ``id``)::

    {"type":"sample","id":"e42","testcol1":"user42@example.com|campaign-8",
     "testcol2":"1732350000.123456"}

``testcol2`` carries the event's creation time (unix seconds) through the writer
untouched, and the simulator stamps each stored row with ``__committed_at``: the
difference is the end-to-end latency, measured on the records themselves rather
than on the writer's own histogram. "Creation" is the moment the generator hands
the line to the subject (the HTTP POST or the pipe write), so a slow generator on a
busy machine does not count against the subject.

Sinks: :class:`HttpSink` posts to a writer's ``/v1/events`` (as production clients
do); :class:`PipeSink` writes to a peer's stdin (peers have no intake of their own).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp

__all__ = ["POISON", "Events", "Feeder", "HttpSink", "PipeSink", "TwoRouteEvents"]

POISON = "__POISON__"  # the simulator refuses a record with a value containing it
_LINE = (
    b'{"type":"sample","id":"e%d","testcol1":"user%d@example.com|campaign-%d%s",'
    b'"testcol2":"%.6f"}\n'
)
_RECIPIENT_LINE = (
    b'{"type":"recipient","email":"user%d@example.com","firstName":"first%d","lastName":"last%d"}\n'
)
_SHARE_SCALE = 1_000_000


class Events:
    """Sample events numbered from 0; a stable ``poison_share`` of them carries the marker."""

    def __init__(self, poison_share: float = 0.0) -> None:
        self.next_id = 0
        self.poisoned = 0
        self._threshold = round(poison_share * _SHARE_SCALE)

    def is_poisoned(self, number: int) -> bool:
        # A multiplicative hash spreads the poisoned ids evenly through the stream.
        return (number * 2654435761) % _SHARE_SCALE < self._threshold

    def take(self, count: int, created: float | None = None) -> list[bytes]:
        """The next ``count`` lines, created now (or at ``created``)."""
        stamp = time.time() if created is None else created
        lines = []
        for number in range(self.next_id, self.next_id + count):
            marker = b""
            if self._threshold and self.is_poisoned(number):
                marker = b"|" + POISON.encode()
                self.poisoned += 1
            lines.append(_LINE % (number, number, number % 17, marker, stamp))
        self.next_id += count
        return lines


class TwoRouteEvents(Events):
    """Events for two routes of ``config/example.toml`` with different methods, interleaved:
    of every ``sample_every + recipient_every`` events, ``sample_every`` are sample events
    (Ingest into ``dem:sampleTableStg``) and the rest ``recipient`` events
    (WriteCollection into ``nms:recipient``, keyed on a distinct email each)."""

    def __init__(self, sample_every: int, recipient_every: int) -> None:
        super().__init__()
        if sample_every < 1 or recipient_every < 1:
            raise ValueError("each route needs a share of at least 1")
        self.cycle = sample_every + recipient_every
        self.sample_every = sample_every

    def take(self, count: int, created: float | None = None) -> list[bytes]:
        stamp = time.time() if created is None else created
        lines = []
        for number in range(self.next_id, self.next_id + count):
            if number % self.cycle < self.sample_every:
                lines.append(_LINE % (number, number, number % 17, b"", stamp))
            else:
                lines.append(_RECIPIENT_LINE % (number, number, number))
        self.next_id += count
        return lines


Sink = Callable[[list[bytes]], Awaitable[None]]


class HttpSink:
    """POSTs NDJSON to a writer's intake; waits and retries while the queue is full (503)."""

    def __init__(self, intake_url: str) -> None:
        self.url = intake_url.rstrip("/") + "/v1/events"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32), timeout=aiohttp.ClientTimeout(total=120)
        )
        self.refused = 0
        # (unix time the post began, seconds until its 202), one per post: how long
        # intake took to acknowledge, including any waits on a full queue (503).
        self.answers: list[tuple[float, float]] = []

    async def __call__(self, lines: list[bytes]) -> None:
        body = b"".join(lines)
        headers = {"Content-Type": "application/x-ndjson"}
        began, started = time.time(), time.perf_counter()
        while True:
            async with self.session.post(self.url, data=body, headers=headers) as answer:
                text = await answer.read()
                if answer.status == 202:
                    self.answers.append((began, time.perf_counter() - started))
                    return
                if answer.status == 503:
                    self.refused += 1
                    await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))
                    continue
                raise RuntimeError(f"intake answered {answer.status}: {text[:300]!r}")

    async def close(self) -> None:
        await self.session.close()


class PipeSink:
    """Writes NDJSON lines to a child's stdin."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write

    async def __call__(self, lines: list[bytes]) -> None:
        await self._write(b"".join(lines))


class Feeder:
    """Feeds one sink and counts what it handed over."""

    def __init__(self, sink: Sink, events: Events, *, concurrency: int = 8) -> None:
        self.sink = sink
        self.events = events
        self.sent = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None
        # (first event number, count, unix time) of each hand-over, to find the
        # events of a measurement window afterwards.
        self.log: list[tuple[int, int, float]] = []

    async def _send(self, lines: list[bytes]) -> None:
        try:
            await self.sink(lines)
        except Exception as exc:  # reported with the run; the generator carries on
            self.error = exc
        finally:
            self._slots.release()

    async def _dispatch(self, count: int) -> None:
        await self._slots.acquire()
        now = time.time()
        lines = self.events.take(count, now)
        self.first_at = self.first_at or now
        self.last_at = now
        self.sent += count
        self.log.append((self.events.next_id - count, count, now))
        task = asyncio.create_task(self._send(lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def backlog(self, count: int, chunk: int = 2000) -> None:
        """Hand over ``count`` events as fast as the sink takes them."""
        for start in range(0, count, chunk):
            await self._dispatch(min(chunk, count - start))
        await self.drain()

    async def poisson(
        self, rate: float, duration_s: float, *, seed: int = 1, tick_s: float = 0.01
    ) -> None:
        """Poisson arrivals at ``rate`` events/s for ``duration_s``, sent every ``tick_s``."""
        rng = random.Random(seed)
        started = time.monotonic()
        next_arrival = rng.expovariate(rate)
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= duration_s:
                break
            due = 0
            while next_arrival <= elapsed:
                due += 1
                next_arrival += rng.expovariate(rate)
            if due:
                await self._dispatch(due)
            await asyncio.sleep(tick_s)
        await self.drain()

    async def drain(self) -> None:
        """Wait until every send under way has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
