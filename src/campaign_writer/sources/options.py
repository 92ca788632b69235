"""Shared helpers for reading a ``[[sources]]`` block and showing broker URLs safely.

Blocks are read with :class:`campaign_writer.settings.Section`, like the rest of the
config, so every problem reads ``sources[1].prefetch: must be at least 1, got 0``.
Each broker module offers ``parse_options(options, path, problems)`` (the hook
:mod:`campaign_writer.config` calls) and ``read_settings(options, path)``, which
raises :class:`~campaign_writer.errors.ConfigError` instead (for tests and tools).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError
from ..logs import MASK, Secret, register_secret
from ..settings import Section

if TYPE_CHECKING:
    from ..config import SourceConfig

__all__ = ["block_settings", "broker_url", "raise_problems", "safe_url"]

T = TypeVar("T")


def broker_url(section: Section, key: str, default: str) -> Secret:
    """A broker URL from ``key``, ``key_env`` or ``key_file``; its password is registered.

    URLs such as ``amqp://user:password@host/`` carry a password, so they are read
    like any other secret and kept as :class:`Secret`.
    """
    secret = section.secret(key)
    url = secret.reveal() if secret is not None else default
    if "://" not in url:
        section.problem(key, "must be a URL such as scheme://host:port")
        url = default
    _, _, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo:
        register_secret(userinfo.split(":", 1)[1])
    return Secret(url)


def safe_url(url: Secret | str) -> str:
    """``url`` with any password replaced by the mask, for log lines and errors."""
    text = url.reveal() if isinstance(url, Secret) else url
    scheme, sep, rest = text.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:{MASK}@{host}"


def raise_problems(
    parse: Callable[[Mapping[str, Any], str, list[str]], T], options: Mapping[str, Any], path: str
) -> T:
    """Run a module's ``parse_options`` and raise ConfigError if it found problems."""
    problems: list[str] = []
    settings = parse(options, path, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def block_settings(
    config: SourceConfig,
    settings_type: type[T],
    parse: Callable[[Mapping[str, Any], str, list[str]], T],
) -> T:
    """A ``[[sources]]`` block's settings: as config checked them, or checked now
    (a block built by hand, in tests), raising ConfigError if it has problems."""
    settings = config.settings
    if isinstance(settings, settings_type):
        return settings
    return raise_problems(parse, config.options, f"sources[{config.name}]")
