"""The writer's configuration: one TOML file read into frozen dataclasses.

``load(path, overrides=[...])`` reads the file, applies ``CAMPAIGN_WRITER__SECTION__KEY``
environment variables and then ``--set section.key=value`` overrides (both in
:mod:`campaign_writer.overrides`; values are TOML literals, or plain strings when
they do not parse), and
checks everything in one pass: an unknown key, a wrong type, a value out of range, a
route naming an unknown XTK type or an invalid XML name, a secret that cannot be
read. Every problem is reported at once, each with its key path, in a
:class:`~campaign_writer.errors.ConfigError`::

    routes[2].fields.email.type: unknown type 'strng' (did you mean 'string'?)

Secrets (``campaign.auth.password``, ``campaign.auth.client_secret``,
``http.token``) come from the file, from an environment variable named by
``<key>_env`` or from a file named by ``<key>_file``; never from ``--set``. They are
:class:`~campaign_writer.logs.Secret` values, masked in ``repr`` and in logs.

Relative paths (``queue.path``) are relative to the working directory, as a
service manager's ``WorkingDirectory`` would set it. ``config/example.toml``
documents every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from .backoff import RetryPolicy
from .campaign.soap import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_URNS,
    METHODS,
    URN_SPELLINGS,
    WireOptions,
)
from .campaign.xmltext import XmlTextPolicy
from .errors import ConfigError
from .logs import Secret, register_secret
from .overrides import Origins, apply_environment, apply_overrides
from .routes import CollectionMode, FieldConfig, RouteConfig, read_routes
from .settings import Section, describe, split_listen
from .sources import SOURCE_KINDS, SourceConfig, known_kinds, parse_source_options

__all__ = [
    "DEFAULT_IMS_URL",
    "SOURCE_KINDS",
    "AdminConfig",
    "AuthConfig",
    "BatchConfig",
    "BudgetConfig",
    "CampaignConfig",
    "CollectionMode",
    "Config",
    "DaemonConfig",
    "FieldConfig",
    "HttpConfig",
    "IntakeConfig",
    "LogConfig",
    "QueueConfig",
    "RetryConfig",
    "RouteConfig",
    "SenderConfig",
    "SourceConfig",
    "TlsConfig",
    "apply_overrides",
    "from_mapping",
    "load",
    "split_listen",
]

AuthMode = Literal["session", "bearer_logon", "ims"]
Synchronous = Literal["FULL", "NORMAL"]
LogFormat = Literal["auto", "json", "console"]

DEFAULT_IMS_URL: Final = "https://ims-na1.adobelogin.com/ims/token/v3"
_AUTH_MODES: Final = ("session", "bearer_logon", "ims")
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_GIB: Final = 1024**3
_MIB: Final = 1024**2
_NO_ENVIRONMENT: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True)
class AuthConfig:
    """``[campaign.auth]``: how the writer authenticates to Campaign."""

    mode: AuthMode = "session"
    login: str = ""
    password: Secret | None = None
    ims_url: str = DEFAULT_IMS_URL
    client_id: str = ""
    client_secret: Secret | None = None
    scope: str = ""
    refresh_margin_s: float = 300.0


@dataclass(frozen=True)
class TlsConfig:
    """``[campaign.tls]``: certificate verification is on unless turned off."""

    verify: bool = True
    ca_bundle: str | None = None


# ``tps_limit = "auto"``: the rate the learned limit starts from when nothing was learned yet.
AUTO_START_TPS: Final = 5.0
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class BudgetConfig:
    """``[campaign.budget]``: where the tenant budget lives. An empty ``redis_url`` keeps
    it in this instance; instances with one Redis and one ``name`` share it."""

    redis_url: str = field(default="", repr=False)  # it may carry Redis's password
    name: str = "default"


@dataclass(frozen=True)
class CampaignConfig:
    url: str
    # With ``auto_limit`` (``tps_limit = "auto"``) this is only where learning starts.
    tps_limit: float = 20.0
    auto_limit: bool = False
    # The share of the limit calls are paced at: the rest absorbs arrival jitter.
    headroom: float = 0.98
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # ``[campaign.limits]``: calls per second per SOAP method, inside ``tps_limit``.
    limits: tuple[tuple[str, float], ...] = ()
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    retry_after_cap_s: float = 60.0
    check_schemas: bool = False
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    wire: WireOptions = field(default_factory=WireOptions)


@dataclass(frozen=True)
class QueueConfig:
    path: Path = Path("var/queue.sqlite3")
    max_bytes: int = _GIB
    synchronous: Synchronous = "FULL"
    commit_window_ms: float = 40.0


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:8080"
    token: Secret | None = None
    max_body_bytes: int = 16 * _MIB
    max_connections: int = 1024


@dataclass(frozen=True)
class AdminConfig:
    listen: str = "127.0.0.1:9090"


@dataclass(frozen=True)
class BatchConfig:
    max_records: int = 500
    max_bytes: int = 4 * _MIB
    linger_ms: float = 200.0


@dataclass(frozen=True)
class SenderConfig:
    max_in_flight: int = 32
    timeout_s: float = 30.0


# The [retry] section is delivery's retry policy itself, read as it is.
RetryConfig = RetryPolicy


@dataclass(frozen=True)
class DaemonConfig:
    shutdown_timeout_s: float = 30.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class IntakeConfig:
    invalid_xml_chars: XmlTextPolicy = "reject"


@dataclass(frozen=True)
class Config:
    campaign: CampaignConfig
    queue: QueueConfig = field(default_factory=QueueConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    sender: SenderConfig = field(default_factory=SenderConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    log: LogConfig = field(default_factory=LogConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    routes: tuple[RouteConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()


# --- loading ------------------------------------------------------------------------


def load(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    origins: Origins | None = None,
) -> Config:
    """Read, override and check a config file; ConfigError lists every problem.

    ``CAMPAIGN_WRITER__*`` variables of ``environ`` (default: this process's
    environment) override the file, and ``overrides`` (``--set``) override both.
    ``origins``, when given, learns where each value came from.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    environ = os.environ if environ is None else environ
    return from_mapping(data, overrides, environ=environ, origins=origins)


def from_mapping(
    data: Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    environ: Mapping[str, str] = _NO_ENVIRONMENT,
    origins: Origins | None = None,
) -> Config:
    """Build a Config from parsed TOML (tests and tools use this directly).

    Unlike :func:`load`, it reads ``CAMPAIGN_WRITER__*`` variables only from an
    ``environ`` it is given.
    """
    problems: list[str] = []
    origins = Origins() if origins is None else origins
    tree = _copy_tree(data)
    origins.mark_tree(tree, "file")
    apply_environment(tree, environ, problems, origins)
    apply_overrides(tree, overrides, problems, origins)
    root = Section(tree, "", problems)
    config = _read(root)
    root.finish()
    origins.add_defaults(root.taken)
    if problems:
        raise ConfigError([origins.suffix(problem) for problem in problems])
    return config


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


# --- sections -----------------------------------------------------------------------


def _read(root: Section) -> Config:
    intake = _read_intake(root.section("intake"))
    queue = _read_queue(root.section("queue"))
    routes = read_routes(root.sections("routes"), intake.invalid_xml_chars)
    if not routes and not root.problems:
        root.problem("routes", "at least one [[routes]] block is needed")
    return Config(
        campaign=_read_campaign(root.section("campaign")),
        queue=queue,
        http=_read_http(root.section("http")),
        admin=_read_admin(root.section("admin")),
        batch=_read_batch(root.section("batch")),
        sender=_read_sender(root.section("sender")),
        retry=_read_retry(root.section("retry")),
        daemon=_read_daemon(root.section("daemon")),
        log=_read_log(root.section("log")),
        intake=intake,
        routes=routes,
        sources=_read_sources(root.sections("sources")),
    )


def _read_url(section: Section, key: str, default: str | None = None) -> str:
    value = section.string(key) if default is None else section.string(key, default)
    if value:
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            # Campaign and IMS take credentials from [campaign.auth] only; a URL is
            # printed and logged, so it must never carry one (and is not echoed here).
            section.problem(
                key,
                "a URL with credentials in it (user:password@) is refused: "
                "give them under [campaign.auth]",
            )
        elif parts.scheme not in ("http", "https") or not parts.hostname:
            section.problem(key, f"expected an http:// or https:// URL, got {value!r}")
    return value


def _read_campaign(section: Section) -> CampaignConfig:
    auto = section.has("tps_limit") and section.peek("tps_limit") == "auto"
    if auto:
        section.take("tps_limit")
    config = CampaignConfig(
        url=_read_url(section, "url"),
        tps_limit=AUTO_START_TPS if auto else _read_tps_limit(section),
        auto_limit=auto,
        headroom=section.number("headroom", 0.98, minimum=0.5, maximum=1.0),
        budget=_read_budget(section.section("budget")),
        limits=_read_limits(section.section("limits")),
        max_response_bytes=section.size("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES),
        retry_after_cap_s=section.duration("retry_after_cap_s", 60.0),
        check_schemas=section.boolean("check_schemas", False),
        auth=_read_auth(section.section("auth")),
        tls=_read_tls(section.section("tls")),
        wire=_read_wire(section.section("wire")),
    )
    section.finish()
    return config


def _read_tps_limit(section: Section) -> float:
    if isinstance(section.peek("tps_limit"), str):
        section.take("tps_limit")
        section.problem("tps_limit", 'expected a number of calls per second or "auto"')
        return 20.0
    return section.number("tps_limit", 20.0, positive=True)


def _read_budget(section: Section) -> BudgetConfig:
    url = section.string("redis_url", "", allow_empty=True)
    if url and urlsplit(url).scheme not in _REDIS_SCHEMES:
        # The URL itself is not echoed: it may carry Redis's password.
        scheme = urlsplit(url).scheme or "none"
        section.problem(
            "redis_url", f"expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}"
        )
    elif url:
        _check_redis_url(section, url)
    name = section.string("name", "default")
    if not _SOURCE_NAME.fullmatch(name):
        section.problem("name", "expected 1-64 letters, digits, '_', '.' or '-'")
    section.finish()
    return BudgetConfig(redis_url=url, name=name)


def _check_redis_url(section: Section, url: str) -> None:
    """Read ``url`` as redis-py will at start (a bad port or database number would stop
    the daemon there), and register its password so no log line shows it."""
    from redis.asyncio.connection import parse_url  # only when a budget is shared

    try:
        options = parse_url(url)
    except ValueError:
        section.problem(
            "redis_url", "not a Redis URL: check its port, database number and query options"
        )
        return
    for password in (options.get("password"), urlsplit(url).password):
        if password:
            register_secret(password)


def _read_limits(section: Section) -> tuple[tuple[str, float], ...]:
    limits = []
    for method in sorted(section.keys()):
        if method not in METHODS:
            section.take(method)
            section.problem(method, f"unknown method; known: {', '.join(sorted(METHODS))}")
            continue
        limits.append((method, section.number(method, positive=True)))
    section.finish()
    return tuple(limits)


def _read_auth(section: Section) -> AuthConfig:
    mode = section.string("mode", "session", choices=_AUTH_MODES)
    config = AuthConfig(
        mode=mode,  # type: ignore[arg-type]  # checked against _AUTH_MODES
        login=section.string("login", "", allow_empty=True),
        password=section.secret("password"),
        ims_url=_read_url(section, "ims_url", DEFAULT_IMS_URL),
        client_id=section.string("client_id", "", allow_empty=True),
        client_secret=section.secret("client_secret"),
        scope=section.string("scope", "", allow_empty=True),
        refresh_margin_s=section.duration("refresh_margin_s", 300.0, positive=False),
    )
    if mode == "session":
        if not config.login:
            section.problem("login", "is required for mode 'session'")
        if config.password is None and not section.problems_for("password"):
            section.problem(
                "password", "is required for mode 'session' (or password_env / password_file)"
            )
    elif mode in ("bearer_logon", "ims"):
        if not config.client_id:
            section.problem("client_id", f"is required for mode {mode!r}")
        if not config.scope.strip():
            section.problem(
                "scope",
                f"is required for mode {mode!r}: IMS needs it in every token request;"
                " copy it from the credential in Adobe's Developer Console",
            )
        if config.client_secret is None and not section.problems_for("client_secret"):
            section.problem(
                "client_secret",
                f"is required for mode {mode!r} (or client_secret_env / client_secret_file)",
            )
    section.finish()
    return config


def _read_tls(section: Section) -> TlsConfig:
    verify = section.boolean("verify", True)
    bundle = section.path_value("ca_bundle", must_exist=True)
    section.finish()
    return TlsConfig(verify, str(bundle) if bundle is not None else None)


def _read_wire(section: Section) -> WireOptions:
    defaults = WireOptions()
    urns = dict(DEFAULT_URNS)
    table = section.section("urns")
    for method, urn in table.rest().items():
        if method not in METHODS:
            table.problem(method, f"unknown method; known: {', '.join(sorted(METHODS))}")
        elif urn not in URN_SPELLINGS:
            spellings = ", ".join(repr(s) for s in sorted(URN_SPELLINGS))
            table.problem(method, f"URN must be one of {spellings}, got {describe(urn)}")
        else:
            urns[method] = urn
    wire = WireOptions(
        urns=MappingProxyType(urns),
        content_type=section.string("content_type", defaults.content_type),
        soap_action_quoted=section.boolean("soap_action_quoted", defaults.soap_action_quoted),
        method_in_url=section.boolean("method_in_url", defaults.method_in_url),
    )
    section.finish()
    return wire


def _read_queue(section: Section) -> QueueConfig:
    path = section.path_value("path") or QueueConfig.path
    config = QueueConfig(
        path=path,
        max_bytes=section.size("max_bytes", _GIB, minimum=64 * 1024),
        synchronous=section.string(  # type: ignore[arg-type]  # checked by choices
            "synchronous", "FULL", choices=("FULL", "NORMAL")
        ),
        commit_window_ms=section.number(
            "commit_window_ms", QueueConfig.commit_window_ms, minimum=0, maximum=1000
        ),
    )
    section.finish()
    return config


def _read_http(section: Section) -> HttpConfig:
    config = HttpConfig(
        listen=section.listen("listen", "127.0.0.1:8080"),
        token=section.secret("token"),
        max_body_bytes=section.size("max_body_bytes", 16 * _MIB, minimum=1024),
        max_connections=section.integer("max_connections", 1024, minimum=1, maximum=1_000_000),
    )
    section.finish()
    return config


def _read_admin(section: Section) -> AdminConfig:
    config = AdminConfig(listen=section.listen("listen", "127.0.0.1:9090"))
    section.finish()
    return config


def _read_batch(section: Section) -> BatchConfig:
    config = BatchConfig(
        max_records=section.integer("max_records", 500, minimum=1, maximum=100_000),
        max_bytes=section.size("max_bytes", 4 * _MIB, minimum=1024),
        linger_ms=section.number("linger_ms", 200.0, minimum=0),
    )
    section.finish()
    return config


def _read_sender(section: Section) -> SenderConfig:
    config = SenderConfig(
        max_in_flight=section.integer("max_in_flight", 32, minimum=1, maximum=1024),
        timeout_s=section.duration("timeout_s", 30.0),
    )
    section.finish()
    return config


def _read_retry(section: Section) -> RetryConfig:
    config = RetryConfig(
        max_age_s=section.duration("max_age", 3 * 3600.0),
        initial_backoff_s=section.duration("initial_backoff_s", 0.5),
        max_backoff_s=section.duration("max_backoff_s", 10.0),
        record_failures=section.integer("record_failures", 3, minimum=1, maximum=10),
        suspect_after=section.integer("suspect_after", 4, minimum=2, maximum=50),
        fault_pause_initial_s=section.duration("fault_pause_initial_s", 1.0),
        fault_pause_max_s=section.duration("fault_pause_max_s", 60.0),
    )
    if config.max_backoff_s < config.initial_backoff_s:
        section.problem("max_backoff_s", "must not be shorter than initial_backoff_s")
    if config.fault_pause_max_s < config.fault_pause_initial_s:
        section.problem("fault_pause_max_s", "must not be shorter than fault_pause_initial_s")
    section.finish()
    return config


def _read_daemon(section: Section) -> DaemonConfig:
    config = DaemonConfig(shutdown_timeout_s=section.duration("shutdown_timeout_s", 30.0))
    section.finish()
    return config


def _read_log(section: Section) -> LogConfig:
    level = section.string("level", "INFO").upper()
    if level not in _LOG_LEVELS:
        section.problem("level", f"must be one of {', '.join(_LOG_LEVELS)}, got {level!r}")
        level = "INFO"
    fmt = section.string("format", "auto", choices=("auto", "json", "console"))
    section.finish()
    return LogConfig(level, fmt)  # type: ignore[arg-type]  # checked by choices


def _read_intake(section: Section) -> IntakeConfig:
    policy = section.string("invalid_xml_chars", "reject", choices=("reject", "strip"))
    section.finish()
    return IntakeConfig(policy)  # type: ignore[arg-type]  # checked by choices


def _read_sources(sections: list[Section]) -> tuple[SourceConfig, ...]:
    sources: list[SourceConfig] = []
    seen: dict[str, str] = {}
    kinds = known_kinds()
    for section in sections:
        kind = section.string("kind", choices=kinds)
        name = section.string("name")
        if name and _SOURCE_NAME.fullmatch(name) is None:
            section.problem("name", "use letters, digits, '_', '.' and '-' (at most 64)")
        elif name == "http":
            section.problem("name", "'http' is the HTTP intake's own name")
        elif name in seen:
            section.problem("name", f"{name!r} is already the name of {seen[name]}")
        else:
            seen[name] = section.path
        options = section.rest()
        settings = None
        if kind in kinds:
            settings = parse_source_options(kind, options, section.path, section.problems)
        sources.append(SourceConfig(kind, name, MappingProxyType(options), settings))
    return tuple(sources)
