"""Event sources: the HTTP intake (:mod:`.http`) and the message-queue consumers.

Every ``[[sources]]`` block in the config has a ``kind`` and a unique ``name``; the
module ``campaign_writer.sources.<kind>`` implements that kind. The config keeps the
block's other keys as a mapping and hands them to the module to check, so a kind's
options are defined in one place, next to the code that uses them. A source module
provides::

    def parse_options(options: Mapping[str, Any], path: str, problems: list[str]) -> object:
        # Check the block's keys; append "path.key: message" to problems for each fault
        # (settings.Section reads a table this way). The result is SourceConfig.settings.

    def create(config: SourceConfig, router: Router, queue: DurableQueue,
               metrics: Metrics) -> Source:
        # The source, not started yet.

A module is imported the first time its kind is used; :func:`register_source` plugs
one in explicitly instead (tests, out-of-tree kinds).

Every source obeys one rule: acknowledge a message upstream only after the local
queue committed it (``queue.append(items, dead_letters=...)`` returned). The broker
kinds share that loop in :mod:`.base`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config, SourceConfig
    from ..metrics import Metrics
    from ..queue import DurableQueue
    from ..router import Router

__all__ = [
    "Source",
    "SourceKind",
    "build_sources",
    "parse_source_options",
    "register_source",
    "source_kind",
]


class Source(Protocol):
    """What the daemon needs from a running source."""

    name: str
    crashed: BaseException | None

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


ParseOptions = Callable[[Mapping[str, Any], str, list[str]], Any]
CreateSource = Callable[["SourceConfig", "Router", "DurableQueue", "Metrics"], Source]


@dataclass(frozen=True)
class SourceKind:
    """How to check the options of one kind of source and how to build it."""

    create: CreateSource
    parse_options: ParseOptions | None = None


_KINDS: dict[str, SourceKind] = {}


def register_source(
    kind: str, *, create: CreateSource, parse_options: ParseOptions | None = None
) -> None:
    """Plug in a kind of source without a module under ``campaign_writer.sources``."""
    _KINDS[kind] = SourceKind(create, parse_options)


def source_kind(kind: str) -> SourceKind | None:
    """The registered kind, else the one its module defines; None if there is neither."""
    found = _KINDS.get(kind)
    if found is not None:
        return found
    name = f"{__name__}.{kind}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
    create = getattr(module, "create", None)
    if create is None:
        return None
    found = SourceKind(create, getattr(module, "parse_options", None))
    _KINDS[kind] = found
    return found


def parse_source_options(
    kind: str, options: Mapping[str, Any], path: str, problems: list[str]
) -> Any:
    """The kind's typed settings for one block, problems appended; called by config."""
    found = source_kind(kind)
    if found is None:
        problems.append(f"{path}.kind: {kind!r} sources are not available in this build")
        return None
    if found.parse_options is None:
        return None
    return found.parse_options(options, path, problems)


def build_sources(
    config: Config, router: Router, queue: DurableQueue, metrics: Metrics
) -> list[Source]:
    """One source per ``[[sources]]`` block, in config order, not started."""
    sources: list[Source] = []
    for index, source_config in enumerate(config.sources):
        found = source_kind(source_config.kind)
        if found is None:
            raise ConfigError(
                f"sources[{index}].kind: {source_config.kind!r} sources are not available"
            )
        sources.append(found.create(source_config, router, queue, metrics))
    return sources
