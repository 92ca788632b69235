"""Event sources: the HTTP intake (:mod:`.http`) and the message-queue consumers.

Every ``[[sources]]`` block in the config has a ``kind`` and a unique ``name``; the
config keeps the block's other keys as a mapping and hands them to the kind to
check, so a kind's options are defined in one place, next to the code that uses
them. A kind is a :class:`SourceKind`: how to check a block's options
(``parse_options(options, path, problems)``, appending ``"path.key: message"`` to
``problems`` for each fault, as :class:`~campaign_writer.settings.Section` does) and
how to build the source (``create(config, router, queue, metrics)``, not started).

:data:`SOURCE_KINDS` lists the kinds this package ships; the module
``campaign_writer.sources.<kind>`` defines each one as ``SOURCE`` (a broker source
gets it from :meth:`SourceKind.of`) and is imported the first time its kind is
used, so a client library is loaded only when a block needs it.
:func:`register_source` adds a kind from elsewhere (tests, out-of-tree kinds): the
config then accepts it and the daemon builds it.

Every source obeys one rule: acknowledge a message upstream only after the local
queue committed it (``queue.append(items, dead_letters=...)`` returned). The broker
kinds share that loop in :mod:`.base`.

This package imports nothing from :mod:`campaign_writer.config`; the config imports
:class:`SourceConfig` and :func:`parse_source_options` from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    import asyncio

    from ..metrics import Metrics
    from ..queue import DurableQueue
    from ..router import Router

__all__ = [
    "EXTRAS",
    "SOURCE_KINDS",
    "Source",
    "SourceConfig",
    "SourceKind",
    "build_sources",
    "known_kinds",
    "parse_source_options",
    "register_source",
    "source_kind",
]

# The kinds shipped in this package, in the order the config's error lists them.
SOURCE_KINDS: Final = ("rabbitmq", "redis_streams", "nats", "kafka", "file")

# The package extra that installs each broker kind's client, and the top-level
# modules of that client: a kind whose client is missing is refused by name.
EXTRAS: Final = {
    "rabbitmq": ("rabbitmq", frozenset({"aiormq", "pamqp", "yarl"})),
    "redis_streams": ("redis", frozenset({"redis", "hiredis"})),
    "nats": ("nats", frozenset({"nats"})),
    "kafka": ("kafka", frozenset({"aiokafka", "kafka"})),
}

T = TypeVar("T")


class Source(Protocol):
    """What the daemon needs from a running source."""

    name: str

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The source's long-running task while it runs (None if it has none): the
        daemon's supervisor waits on it, and its end before shutdown is a crash."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SourceConfig:
    """One ``[[sources]]`` block: kind, unique name, and the kind's own options.

    ``options`` are the block's other keys as written; ``settings`` is what the
    kind's ``parse_options`` made of them (None when it has no parser).
    """

    kind: str
    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    settings: Any = None


ParseOptions = Callable[[Mapping[str, Any], str, list[str]], T]
CreateSource = Callable[[SourceConfig, "Router", "DurableQueue", "Metrics"], Source]


@dataclass(frozen=True)
class SourceKind(Generic[T]):
    """How to check the options of one kind of source and how to build it."""

    create: CreateSource
    parse_options: ParseOptions[T] | None = None

    @classmethod
    def of(
        cls,
        source_type: Callable[[str, T, Any, Any, Metrics | None], Source],
        settings_type: type[T],
        parse_options: ParseOptions[T],
    ) -> SourceKind[T]:
        """The kind whose sources are ``source_type(name, settings, router, queue,
        metrics)``, with settings of ``settings_type`` read by ``parse_options``."""

        def create(
            config: SourceConfig, router: Router, queue: DurableQueue, metrics: Metrics
        ) -> Source:
            settings = config.settings
            if not isinstance(settings, settings_type):
                # A block built by hand (tests): check it now.
                settings = raise_problems(parse_options, config.options, f"sources[{config.name}]")
            return source_type(config.name, settings, router, queue, metrics)

        return cls(create, parse_options)

    def read_settings(self, options: Mapping[str, Any], path: str) -> T:
        """``parse_options``, raising ConfigError when the block has problems."""
        if self.parse_options is None:
            raise TypeError("this kind of source has no options")
        return raise_problems(self.parse_options, options, path)


def raise_problems(parse: ParseOptions[T], options: Mapping[str, Any], path: str) -> T:
    """Run a kind's ``parse_options`` and raise ConfigError if it found problems."""
    problems: list[str] = []
    settings = parse(options, path, problems)
    if problems:
        raise ConfigError(problems)
    return settings


_KINDS: dict[str, SourceKind[Any]] = {}


def _import_kind(kind: str) -> Any:
    """The kind's module; a ConfigError naming the extra when its client is missing."""
    try:
        return importlib.import_module(f"{__name__}.{kind}")
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if kind not in EXTRAS or missing not in EXTRAS[kind][1]:
            raise
        extra = EXTRAS[kind][0]
        raise ConfigError(
            f"{kind!r} sources need the {extra!r} extra, whose client ({missing}) is not"
            f" installed: pip install 'campaign-writer[{extra}]'"
        ) from None


def register_source(
    kind: str, *, create: CreateSource, parse_options: ParseOptions[Any] | None = None
) -> None:
    """Plug in a kind of source without a module under ``campaign_writer.sources``."""
    _KINDS[kind] = SourceKind(create, parse_options)


def known_kinds() -> tuple[str, ...]:
    """Every kind a ``[[sources]]`` block may name: the shipped ones, then registered."""
    return SOURCE_KINDS + tuple(kind for kind in _KINDS if kind not in SOURCE_KINDS)


def source_kind(kind: str) -> SourceKind[Any] | None:
    """The registered kind, else the shipped one; None if there is neither.

    Raises ConfigError, naming the package extra, when the kind's client is missing.
    """
    found = _KINDS.get(kind)
    if found is not None or kind not in SOURCE_KINDS:
        return found
    module = _import_kind(kind)
    shipped: SourceKind[Any] = module.SOURCE
    _KINDS[kind] = shipped
    return shipped


def parse_source_options(
    kind: str, options: Mapping[str, Any], path: str, problems: list[str]
) -> Any:
    """The kind's typed settings for one block, problems appended; called by config."""
    try:
        found = source_kind(kind)
    except ConfigError as exc:
        problems.extend(f"{path}.kind: {problem}" for problem in exc.problems)
        return None
    if found is None:
        problems.append(f"{path}.kind: {kind!r} sources are not available in this build")
        return None
    if found.parse_options is None:
        return None
    return found.parse_options(options, path, problems)


def build_sources(
    configs: Sequence[SourceConfig], router: Router, queue: DurableQueue, metrics: Metrics
) -> list[Source]:
    """One source per ``[[sources]]`` block, in config order, not started."""
    sources: list[Source] = []
    for index, source_config in enumerate(configs):
        found = source_kind(source_config.kind)
        if found is None:
            raise ConfigError(
                f"sources[{index}].kind: {source_config.kind!r} sources are not available"
            )
        sources.append(found.create(source_config, router, queue, metrics))
    return sources
