"""Reading broker URLs from a ``[[sources]]`` block, and showing them safely.

Blocks are read with :class:`campaign_writer.settings.Section`, like the rest of the
config, so every problem reads ``sources[1].prefetch: must be at least 1, got 0``.
Each broker module offers ``parse_options(options, path, problems)`` (the hook
:mod:`campaign_writer.config` calls) and ``read_settings(options, path)``, which
raises :class:`~campaign_writer.errors.ConfigError` instead (for tests and tools);
both come with its :class:`~campaign_writer.sources.SourceKind`.
"""

from __future__ import annotations

from ..logs import MASK, Secret, register_secret
from ..settings import Section

__all__ = ["broker_url", "safe_url"]


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
