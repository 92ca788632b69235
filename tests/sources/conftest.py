"""Fixtures for the broker source tests: a real queue file, a real router, helpers.

``intake_factory(max_bytes=...)`` opens a real SQLite queue in ``tmp_path`` and a
Router built from a config file that routes ``{"type": "sample", ...}`` events to
``dem:sampleTableStg`` keyed by ``id``, as ``config/example.toml`` does. Each call
gives a separate queue, so two sources in one test behave like two writer instances.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from campaign_writer.config import load
from campaign_writer.deadletter import DeadLetter, DeadLetterStore
from campaign_writer.metrics import Metrics
from campaign_writer.queue import DurableQueue
from campaign_writer.router import Router
from campaign_writer.sources.base import BrokerSource
from tests.sources.proxy import TcpProxy

ROUTES = """
[[routes]]
name = "sample"
match = { type = "sample" }
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["id"]

[routes.fields]
id = { type = "string", length = 64, required = true }
testcol1 = { type = "string", length = 255 }
testcol2 = { type = "string", length = 255 }
"""


def write_config(
    directory: Path,
    *,
    queue_path: Path,
    max_bytes: int = 1 << 30,
    campaign_url: str = "http://127.0.0.1:9/",
    extra: str = "",
) -> Path:
    """A config file routing ``{"type": "sample", "id": ...}`` events, keyed by id."""
    path = directory / f"config-{queue_path.stem}.toml"
    path.write_text(
        f"""
[campaign]
url = "{campaign_url}"
tps_limit = 1000

[campaign.auth]
mode = "session"
login = "admin"
password = "admin"

[queue]
path = "{queue_path}"
max_bytes = {max_bytes}
{ROUTES}
{extra}
""",
        encoding="utf-8",
    )
    return path


def sample_event(key: str) -> bytes:
    return orjson.dumps({"type": "sample", "id": key, "testcol1": "a", "testcol2": "b"})


def sample_events(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{i}", sample_event(f"{prefix}-{i}")) for i in range(count)]


# Poison messages: each is a body that must end in the dead-letter queue, with why.
POISON = {
    b"{not json": "invalid JSON",
    b"[1, 2, 3]": "must be a JSON object",
    b'{"type": "no-such-route", "id": "x"}': "type: ",
    b'{"type": "sample", "testcol1": "no id"}': "id: is required",
    b"   ": "empty message",
}


@dataclass
class Intake:
    """One writer's intake side: its queue, router and metrics."""

    queue: DurableQueue
    router: Router
    metrics: Metrics = field(default_factory=Metrics)
    keys: list[str] = field(default_factory=list)

    def sample(self, name: str, source: str) -> float:
        value = self.metrics.registry.get_sample_value(
            f"campaign_writer_{name}", {"source": source}
        )
        return value or 0.0

    async def drain(self) -> list[str]:
        """Lease and ack everything committed so far; returns the keys, in order."""
        while True:
            leased = await self.queue.lease(5000)
            if not leased:
                return self.keys
            self.keys.extend(str(entry.key) for entry in leased)
            await self.queue.ack([entry.id for entry in leased])

    async def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter in the queue file, read as ``campaign-writer dlq`` reads it."""
        with DeadLetterStore(self.queue.path) as store:
            return list(store.page(limit=10_000))

    def depth(self) -> int:
        return int(self.queue.stats().depth)


IntakeFactory = Callable[..., Awaitable[Intake]]


@pytest.fixture
async def intake_factory(tmp_path: Path) -> AsyncIterator[IntakeFactory]:
    """Open real queue files under tmp_path with the example routes; closed at teardown."""
    opened: list[Intake] = []

    async def make(max_bytes: int = 1 << 30) -> Intake:
        queue_path = tmp_path / f"queue-{len(opened)}.sqlite3"
        config = load(write_config(tmp_path, queue_path=queue_path, max_bytes=max_bytes))
        queue = await DurableQueue.open(
            config.queue.path,
            max_bytes=config.queue.max_bytes,
            synchronous=config.queue.synchronous,
        )
        intake = Intake(queue, Router.from_config(config))
        opened.append(intake)
        return intake

    yield make
    for intake in opened:
        await intake.queue.close()


@pytest.fixture
async def sources() -> AsyncIterator[list[BrokerSource]]:
    """Sources a test appends here are closed at teardown even if the test fails."""
    started: list[BrokerSource] = []
    yield started
    for source in started:
        await source.close()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    proxies: list[TcpProxy] = []

    async def make(port: int) -> TcpProxy:
        proxy = await TcpProxy(port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
def unique() -> str:
    """A name no other test, or other run on this machine, uses."""
    return f"cw-test-{uuid.uuid4().hex[:12]}"


async def eventually(
    check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> None:
    """Wait until ``check()`` (sync or async) is truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


async def collect(
    intakes: Iterable[Intake], expected: int | Iterable[str], timeout: float = 60.0
) -> list[str]:
    """Drain the intakes until every expected key arrived (or, for a count, that many).

    Returns every key drained, duplicates included (delivery is at least once).
    """
    intakes = list(intakes)
    wanted = None if isinstance(expected, int) else set(expected)
    count = expected if isinstance(expected, int) else len(wanted or ())

    async def enough() -> bool:
        for intake in intakes:
            await intake.drain()
        keys = [key for intake in intakes for key in intake.keys]
        if wanted is None:
            return len(keys) >= count
        return wanted <= set(keys)

    await eventually(enough, timeout, what=f"{count} events in the local queue(s)")
    return [key for intake in intakes for key in intake.keys]


async def check_two_writers_split(
    intake_factory: IntakeFactory,
    sources: list[BrokerSource],
    make: Callable[[str, Intake], BrokerSource],
    publish: Callable[[list[bytes]], Awaitable[None]],
    prefix: str,
) -> None:
    """Two writer instances (``make(name, intake)``) on one broker subscription: 4,000
    published events each reach exactly one of them, and both take a share."""
    first, second = await intake_factory(), await intake_factory()
    for name, intake in (("writer-1", first), ("writer-2", second)):
        source = make(name, intake)
        sources.append(source)
        await source.start()
    events = sample_events(prefix, 4_000)
    await publish([body for _, body in events])
    await collect([first, second], [key for key, _ in events])
    for source in sources:
        await source.close()
    keys = [*await first.drain(), *await second.drain()]
    assert sorted(keys) == sorted(key for key, _ in events)
    assert first.keys and second.keys
    assert not set(first.keys) & set(second.keys)
