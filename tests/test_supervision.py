"""The daemon's supervisor waits on every stage's task: a crash is seen at once.

Each test runs a whole Daemon (real queue file, real HTTP listeners, the fake
transport) on a virtual-time loop, whose clock moves only when the loop has nothing
else to do. A supervisor that polled would notice a crash only when its next poll
timer fired, a virtual jump later; one that waits on the tasks notices it at the
very instant of the crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from campaign_writer import sources
from campaign_writer.config import from_mapping
from campaign_writer.daemon import Daemon
from campaign_writer.metrics import Metrics
from campaign_writer.router import Router
from campaign_writer.sources import SourceConfig, register_source
from campaign_writer.testing import FakeTransport
from tests.support.clock import on_virtual_time
from tests.support.writer import config_tree, sample_events

URL = "https://campaign.test"


class TrippingSource:
    """A kind from outside the package whose task fails when ``trip`` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.trip = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await self.trip.wait()
        raise RuntimeError("tripped")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "tripping"}


def parse_nothing(options: Mapping[str, Any], path: str, problems: list[str]) -> None:
    return None


def create_tripping(config: SourceConfig, router: Any, queue: Any, metrics: Metrics) -> Any:
    return TrippingSource(config.name)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds registered by a test are gone after it."""
    monkeypatch.setattr(sources, "_KINDS", dict(sources._KINDS))


async def started(tmp_path: Path, transport: FakeTransport, **tree: Any) -> Daemon:
    config = config_tree(URL, tmp_path)
    config.update(tree)
    daemon = Daemon(from_mapping(config), transport=transport)
    await daemon.start()
    return daemon


async def supervising(daemon: Daemon) -> asyncio.Task[int]:
    """The supervisor, running, after some virtual seconds in which nothing crashed."""
    supervisor = asyncio.create_task(daemon.wait())
    await asyncio.sleep(5.5)
    assert not supervisor.done()
    return supervisor


async def noticed_at_once(daemon: Daemon, crash: Callable[[], object]) -> None:
    """After ``crash()``, the supervisor returns 1 with no virtual time gone by."""
    supervisor = await supervising(daemon)
    loop = asyncio.get_running_loop()
    crashed_at = loop.time()
    crash()
    assert await supervisor == 1
    assert loop.time() == crashed_at


@on_virtual_time
async def test_a_source_that_crashes_stops_the_daemon_at_once(
    registry: None, tmp_path: Path
) -> None:
    """A source's task failing makes wait() return 1 at the same virtual instant."""
    register_source("tripping", create=create_tripping, parse_options=parse_nothing)
    daemon = await started(
        tmp_path, FakeTransport(), sources=[{"kind": "tripping", "name": "trips"}]
    )
    try:
        (source,) = daemon.sources
        assert isinstance(source, TrippingSource)
        await noticed_at_once(daemon, source.trip.set)
    finally:
        await daemon.close()


@on_virtual_time
async def test_the_http_intake_is_supervised_through_its_task(tmp_path: Path) -> None:
    """The HTTP intake serves as a task: if it ends, the daemon stops with an error at once."""
    daemon = await started(tmp_path, FakeTransport())
    try:
        assert daemon.http is not None and daemon.http.task is not None
        await noticed_at_once(daemon, daemon.http.task.cancel)
    finally:
        await daemon.close()


@on_virtual_time
async def test_a_crashed_send_task_ends_delivery_and_stops_the_daemon(tmp_path: Path) -> None:
    """An unexpected error in a send task ends the dispatch loop with it, and the
    supervisor, waiting on that loop's task, returns 1."""
    transport = FakeTransport()
    transport.script("Ingest", RuntimeError("a bug in a send task"))
    daemon = await started(tmp_path, transport)
    try:
        supervisor = await supervising(daemon)
        assert daemon.queue is not None and daemon.dispatcher is not None
        routed = Router(daemon.config.routes).route_events(
            sample_events(3), source="test", created_at=time.time()
        )
        await daemon.queue.append(routed.items)
        assert await asyncio.wait_for(supervisor, 60) == 1  # virtual seconds
        assert isinstance(daemon.dispatcher.crashed, RuntimeError)
    finally:
        await daemon.close()


@on_virtual_time
async def test_stop_ends_the_wait_with_zero(tmp_path: Path) -> None:
    """stop() (SIGTERM) ends wait() with 0, with every stage still running."""
    daemon = await started(tmp_path, FakeTransport())
    try:
        supervisor = await supervising(daemon)
        daemon.stop()
        assert await supervisor == 0
        assert daemon.http is not None and daemon.http.task is not None
        assert not daemon.http.task.done()
    finally:
        await daemon.close()
