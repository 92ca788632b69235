"""Kinds of source: one list of the shipped kinds, one generic way to build them, and
register_source plugging in a kind the config then accepts and the daemon builds."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from campaign_writer import sources
from campaign_writer.config import from_mapping
from campaign_writer.daemon import Daemon
from campaign_writer.errors import ConfigError
from campaign_writer.metrics import Metrics
from campaign_writer.sources import (
    SOURCE_KINDS,
    SourceConfig,
    build_sources,
    known_kinds,
    register_source,
    source_kind,
)
from campaign_writer.sources.file import FileSettings, FileSource
from campaign_writer.testing import FakeTransport
from tests.support.writer import config_tree, sample_events, wait_for

URL = "https://campaign.test"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds registered by a test are gone after it."""
    monkeypatch.setattr(sources, "_KINDS", dict(sources._KINDS))


class ListSource:
    """A kind from outside the package: hands its events to the queue once started."""

    def __init__(self, name: str, events: list[bytes], router: Any, queue: Any) -> None:
        self.name = name
        self.task = None  # it has no long-running task for the supervisor to wait on
        self.events = events
        self.router = router
        self.queue = queue
        self.started = False

    async def start(self) -> None:
        routing = self.router.route_lines(self.events, source=self.name, created_at=time.time())
        await self.queue.append(routing.items)
        self.started = True

    async def close(self) -> None:
        self.started = False

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "list", "events": len(self.events)}


def parse_list(options: Mapping[str, Any], path: str, problems: list[str]) -> int:
    count = options.get("count")
    if not isinstance(count, int) or count < 1:
        problems.append(f"{path}.count: expected a positive integer")
        return 0
    return count


def create_list(config: SourceConfig, router: Any, queue: Any, metrics: Metrics) -> ListSource:
    events = [orjson.dumps(event) for event in sample_events(config.settings, prefix="l")]
    return ListSource(config.name, events, router, queue)


def test_every_shipped_kind_is_defined_by_its_module() -> None:
    """SOURCE_KINDS is the one list: each kind's module defines it; others are unknown."""
    for kind in SOURCE_KINDS:
        found = source_kind(kind)
        assert found is not None and found.parse_options is not None, kind
    assert source_kind("carrier-pigeon") is None
    assert known_kinds() == SOURCE_KINDS


def test_a_block_built_by_hand_is_checked_when_built(tmp_path: Path) -> None:
    """The generic create() reads a block config did not check, and refuses a bad one."""
    path = str(tmp_path / "events.ndjson")
    block = SourceConfig("file", "backfill", {"path": path, "follow": True})
    (source,) = build_sources([block], object(), object(), Metrics())  # type: ignore[arg-type]
    assert isinstance(source, FileSource)
    assert source.settings == FileSettings(path=path, follow=True)
    assert source.common is source.settings.common
    with pytest.raises(ConfigError, match=r"sources\[bad\]\.path"):
        build_sources([SourceConfig("file", "bad", {})], object(), object(), Metrics())  # type: ignore[arg-type]


def test_a_registered_kind_is_accepted_by_the_config(registry: None, tmp_path: Path) -> None:
    """Unknown until registered; then its parser checks its blocks."""
    tree = config_tree(URL, tmp_path)
    tree["sources"] = [{"kind": "list", "name": "replay", "count": 0}]
    with pytest.raises(ConfigError) as caught:
        from_mapping(tree)
    assert any(p.startswith("sources[0].kind: must be one of") for p in caught.value.problems)
    register_source("list", create=create_list, parse_options=parse_list)
    assert known_kinds() == (*SOURCE_KINDS, "list")
    with pytest.raises(ConfigError) as caught:
        from_mapping(tree)
    assert caught.value.problems == ["sources[0].count: expected a positive integer"]
    tree["sources"][0]["count"] = 3
    config = from_mapping(tree)
    assert (config.sources[0].kind, config.sources[0].settings) == ("list", 3)


async def test_the_daemon_builds_and_starts_a_registered_kind(
    registry: None, tmp_path: Path
) -> None:
    """A registered kind's events go the whole way, to Campaign's Ingest."""
    register_source("list", create=create_list, parse_options=parse_list)
    tree = config_tree(URL, tmp_path)
    tree["sources"] = [{"kind": "list", "name": "replay", "count": 25}]
    transport = FakeTransport()
    daemon = Daemon(from_mapping(tree), transport=transport)
    await daemon.start()
    try:
        (source,) = daemon.sources
        assert isinstance(source, ListSource) and source.started
        dispatcher = daemon.dispatcher
        assert dispatcher is not None
        await wait_for(lambda: dispatcher.totals["delivered"] == 25, timeout=20)
        assert sum(call.records for call in transport.calls("Ingest")) == 25
    finally:
        await daemon.close()
    assert not source.started
