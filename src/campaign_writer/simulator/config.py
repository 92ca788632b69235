"""Every knob of the simulator, with its default, in one frozen dataclass.

:class:`SimulatorConfig` is the single source of truth for the knobs: the
``campaign-writer simulate`` flags, the TOML keys and the ``POST /__sim/control``
fields are all derived from its fields (name ``tps_limit`` is flag ``--tps-limit``,
TOML key ``tps_limit`` and control field ``tps_limit``), so they cannot drift apart.
A field whose metadata says ``runtime=False`` (listening address, TLS, files,
schemas, users) is fixed once the simulator has started.

Precedence: defaults, then the config file, then command-line flags; control
requests change the running value afterwards.

``profile`` says how faithful the faults are to what public sources show of
Campaign. ``default`` gives every refusal a code (some invented, see
:mod:`.codes`); ``strict`` emits no invented code (see :mod:`.refusals`), needs
a ``scope`` in IMS token requests, and refuses collections in Ingest/IngestExt.
Knobs left empty (``ingest_collections``, ``poison_style``) take the profile's
choice; set, they win over it.

The TOML file holds the keys at top level, or under a ``[simulator]`` table so one
file can also configure a writer. Tables and arrays::

    tps_limit = 20
    [[users]]                        # added to the default admin/admin
    login = "ops"
    password = "..."
    schemas = ["dem:sampleTableStg"] # what this operator may write; empty: all
    [[ims_clients]]                  # added to the default sim-client/sim-secret
    client_id = "ci"
    client_secret = "..."
    [[schedule]]                     # seconds from start; kinds: see faults.KINDS
    kind = "outage"
    start_s = 30
    end_s = 90
    [schemas."acme:event"]           # added to (or replacing) the built-in schemas
    keys = ["eventId"]
    auto_stg = true
    attributes = { eventId = { type = "string", length = 64 }, at = { type = "datetime" } }

``schema_files = ["acme-event.xml"]`` adds schemas from XML files as an instance
exports them (``xtk:srcSchema`` or ``xtk:schema``, or a data package of them; see
:mod:`.schemafiles`); a relative path is relative to the TOML file.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError
from ..logs import register_secret
from .configtables import only, schema_specs, strings, table_list, windows
from .faults import KINDS, FaultWindow
from .schemas import DEFAULT_SCHEMAS, SchemaSpec

# Every SOAP method the simulator answers, the names [method_limits] accepts.
SOAP_METHODS = (
    "Logon",
    "BearerTokenLogon",
    "Logoff",
    "GetUserInfo",
    "GetEntityIfMoreRecent",
    "Write",
    "WriteCollection",
    "Ingest",
    "IngestExt",
)

__all__ = [
    "DEFAULT_IMS_CLIENTS",
    "DEFAULT_USERS",
    "ImsClient",
    "SimulatorConfig",
    "User",
    "apply_changes",
    "knob_fields",
    "load_config",
]

T = TypeVar("T")


def _knob(
    default: T,
    help: str,
    *,
    kind: str = "",
    runtime: bool = True,
    choices: tuple[str, ...] = (),
    cli: bool = True,
    booleans: tuple[str, str] = ("", ""),
) -> T:
    """A field's default and metadata; ``booleans``: the choices a legacy true/false means."""
    meta = {
        "help": help,
        "kind": kind or type(default).__name__,
        "runtime": runtime,
        "choices": choices,
        "cli": cli,
        "booleans": booleans,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class User:
    """An operator who may Logon; ``schemas`` limits what it may write (empty: all)."""

    login: str
    password: str = field(repr=False)
    schemas: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImsClient:
    """An IMS technical account for client-credentials tokens."""

    client_id: str
    client_secret: str = field(repr=False)
    schemas: tuple[str, ...] = ()


DEFAULT_USERS = (User("admin", "admin"),)
DEFAULT_IMS_CLIENTS = (ImsClient("sim-client", "sim-secret"),)
LIMITERS = ("sliding", "fixed", "token_bucket")
PROFILES = ("default", "strict")
COLLECTION_MODES = ("", "accept", "refuse", "partial")
POISON_STYLES = ("", "coded", "duplicate", "masked")
# What an empty ingest_collections or poison_style means in each profile.
_PROFILE_CHOICES = {
    "default": {"ingest_collections": "accept", "poison_style": "coded"},
    "strict": {"ingest_collections": "refuse", "poison_style": "duplicate"},
}


@dataclass(frozen=True)
class SimulatorConfig:
    """Every simulator knob with its default. Build variants with :func:`apply_changes`."""

    host: str = _knob("127.0.0.1", "address to listen on", runtime=False)
    port: int = _knob(8081, "port to listen on; 0 picks a free one", runtime=False)
    tls_cert: str | None = _knob(None, "PEM certificate: serve HTTPS", kind="path", runtime=False)
    tls_key: str | None = _knob(None, "PEM private key for --tls-cert", kind="path", runtime=False)
    call_log: str | None = _knob(
        None, "append one NDJSON line per call to this file", kind="path", runtime=False
    )
    db: str | None = _knob(
        None, "SQLite file keeping stored records across restarts", kind="path", runtime=False
    )
    call_log_memory: int = _knob(
        100_000, "calls kept in memory for GET /__sim/calls", runtime=False
    )
    max_body_bytes: int = _knob(32 * 1024 * 1024, "largest request body accepted", runtime=False)
    seed: int | None = _knob(
        None, "seed of the fault and jitter draws (reproducible runs)", kind="int?", runtime=False
    )
    profile: str = _knob(
        "default",
        "fault wording: default (every refusal coded) or strict (no invented code, as public"
        " sources show Campaign; IMS needs a scope; Ingest refuses collections)",
        choices=PROFILES,
    )
    tps_limit: float = _knob(20.0, "calls per second over all SOAP methods; 0: no limit")
    method_limits: tuple[tuple[str, float], ...] = _knob(
        (),
        "calls per second of single SOAP methods, within tps_limit, e.g."
        " Ingest=12,WriteCollection=5 (a TOML or JSON table); 0 or absent: only tps_limit",
        kind="method_limits",
    )
    limiter: str = _knob("sliding", "TPS limiter model", choices=LIMITERS)
    burst: int = _knob(5, "token bucket capacity (limiter token_bucket)")
    latency_ms: float = _knob(50.0, "base latency of a SOAP call, ms")
    latency_per_record_ms: float = _knob(0.01, "added latency per record in the call, ms")
    latency_jitter: float = _knob(0.1, "sigma of the lognormal factor on latency; 0: none")
    max_concurrent: int = _knob(64, "SOAP calls processed at once; 0: no cap")
    overflow: str = _knob(
        "queue",
        "beyond max_concurrent: wait for a slot, or answer 503",
        choices=("queue", "reject"),
    )
    fault_status: int = _knob(500, "HTTP status of SOAP faults (500; older builds: 200)")
    session_expired_style: str = _knob(
        "fault",
        "expired session answer: SOAP fault, or raw XSV-350008 text",
        choices=("fault", "text"),
    )
    retry_after: bool = _knob(True, "send Retry-After with 429")
    retry_after_s: int = _knob(0, "Retry-After value, s; 0: time until the limiter frees a slot")
    throttle_body: bool = _knob(True, "send a JSON body with 429")
    ingest_collections: str = _knob(
        "",
        "collection documents in Ingest/IngestExt: accept, refuse (a collection fault),"
        " partial (only the first record stored, answered as a success); empty: the profile"
        " decides (default accept, strict refuse); true/false mean accept/refuse",
        choices=COLLECTION_MODES,
        booleans=("accept", "refuse"),
    )
    require_security_token: bool = _knob(
        True, "a session token sent as cookie/header needs its X-Security-Token"
    )
    session_timeout_s: float = _knob(86400.0, "session token lifetime, s")
    ims_token_ttl_s: float = _knob(86399.0, "IMS access token lifetime (expires_in), s")
    rate_500: float = _knob(0.0, "share of SOAP calls answered HTTP 500 (HTML page)")
    rate_502: float = _knob(0.0, "share of SOAP calls answered HTTP 502 (HTML page)")
    rate_503: float = _knob(0.0, "share of SOAP calls answered HTTP 503 (HTML page)")
    rate_timeout: float = _knob(0.0, "share of SOAP calls held open, then dropped")
    rate_reset: float = _knob(0.0, "share of SOAP calls whose connection is reset")
    rate_truncate: float = _knob(0.0, "share of SOAP calls processed, then answer cut short")
    rate_html: float = _knob(0.0, "share of SOAP calls answered 200 with an HTML page")
    rate_soap: float = _knob(0.0, "share of SOAP calls answered a transient server SOAP fault")
    rate_expire: float = _knob(0.0, "share of authenticated calls whose session expires")
    rate_revoke: float = _knob(0.0, "share of IMS-bearer calls whose token is revoked")
    rate_entity: float = _knob(0.0, "share of SOAP calls answered 200 with external entities (XXE)")
    rate_laughs: float = _knob(0.0, "share of SOAP calls answered 200 with a billion-laughs DTD")
    rate_huge: float = _knob(0.0, "share of SOAP calls answered 200 with huge_body_bytes of body")
    rate_drip: float = _knob(0.0, "share of SOAP calls processed, then answered a byte at a time")
    rate_masked: float = _knob(
        0.0,
        "share of SOAP calls answered HTTP 500 SOP-330023 under SOAP-ENV:Error, the cause masked"
        ", not processed (control: masked_s, masked_in_s)",
    )
    rate_badlogin: float = _knob(
        0.0,
        "share of SOAP calls answered 'Invalid login or password. Connection denied.' with no"
        " code, not processed (control: badlogin_s, badlogin_in_s)",
    )
    huge_body_bytes: int = _knob(64 * 1024 * 1024, "size of a 'huge' answer, bytes")
    drip_interval_s: float = _knob(1.0, "pause between the bytes of a 'drip' answer, s")
    hostile_encoding: str = _knob(
        "utf-8",
        "encoding of 'entity' and 'laughs' answers (UTF-16LE has no ASCII <!DOCTYPE)",
        choices=("utf-8", "utf-16-le"),
    )
    timeout_hold_s: float = _knob(30.0, "how long a 'timeout' call is held before the drop, s")
    outage_mode: str = _knob(
        "503", "answer during an outage window", choices=("503", "reset", "timeout")
    )
    poison_rate: float = _knob(0.0, "share of records refused as data faults (stable per record)")
    poison_marker: str = _knob("__POISON__", "a record with a value containing this is refused")
    poison_style: str = _knob(
        "",
        "how poisoned records are refused: coded (PGS-220000), duplicate (code-less duplicate"
        " key), masked (HTTP 500 SOP-330023); empty: the profile decides (default coded,"
        " strict duplicate)",
        choices=POISON_STYLES,
    )
    unique_keys: bool = _knob(
        False,
        "the schema key is a unique index: an insert meeting a stored key, or an earlier"
        " record of its call, fails the call with the code-less duplicate-key fault",
    )
    fault_methods: tuple[str, ...] = _knob(
        (), "methods the per-call faults apply to, comma-separated; empty: all", kind="methods"
    )
    schedule: tuple[FaultWindow, ...] = _knob((), "fault windows", kind="schedule", cli=False)
    users: tuple[User, ...] = _knob(
        DEFAULT_USERS, "operators", kind="users", runtime=False, cli=False
    )
    ims_clients: tuple[ImsClient, ...] = _knob(
        DEFAULT_IMS_CLIENTS, "IMS clients", kind="clients", runtime=False, cli=False
    )
    schemas: tuple[SchemaSpec, ...] = _knob(
        DEFAULT_SCHEMAS, "schemas", kind="schemas", runtime=False, cli=False
    )
    schema_files: tuple[str, ...] = _knob(
        (),
        "xtk:srcSchema or xtk:schema XML files, or packages of them (as exported from an"
        " instance), to serve"
        " besides the built-in schemas, comma-separated",
        kind="files",
        runtime=False,
    )
    replicate_interval_s: float = _knob(
        0.0,
        "copy staged rows to their source schema every N s, as the ffdaReplicateStagingData"
        " workflow does (hourly on a real instance); 0: never",
    )

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def strict(self) -> bool:
        return self.profile == "strict"

    @property
    def collections_mode(self) -> str:
        """``ingest_collections``, or the profile's choice when it is empty."""
        return self.ingest_collections or _PROFILE_CHOICES[self.profile]["ingest_collections"]

    @property
    def poison_mode(self) -> str:
        """``poison_style``, or the profile's choice when it is empty."""
        return self.poison_style or _PROFILE_CHOICES[self.profile]["poison_style"]


def knob_fields() -> list[dataclasses.Field[Any]]:
    """The fields of :class:`SimulatorConfig`, in declaration order."""
    return list(dataclasses.fields(SimulatorConfig))


_FIELDS = {f.name: f for f in dataclasses.fields(SimulatorConfig)}
_BUILT: dict[str, type] = {
    "schedule": FaultWindow,
    "users": User,
    "clients": ImsClient,
    "schemas": SchemaSpec,
}


_TRUE_WORDS = frozenset({"true", "1", "yes"})
_BOOLEAN_WORDS = _TRUE_WORDS | {"false", "0", "no"}


def _listed(choices: tuple[str, ...]) -> str:
    return ", ".join(choice or '""' for choice in choices)


def _truth(value: object) -> bool | None:
    """A boolean, or its spelling in a string (any case); None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
        return value.lower() in _TRUE_WORDS
    return None


def _coerce(path: str, value: object, meta: Mapping[str, Any]) -> object:
    kind = meta["kind"]
    if kind == "bool":
        truth = _truth(value)
        if truth is None:
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return truth
    if kind in ("int", "int?"):
        if value is None and kind == "int?":
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if kind in ("str", "path"):
        if value is None and kind == "path":
            return None
        true_means, false_means = meta["booleans"]
        truth = _truth(value) if true_means else None
        if truth is not None:
            return true_means if truth else false_means
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{path}: {value!r} is not one of {_listed(meta['choices'])}")
        return value
    if kind == "method_limits":
        return _method_limits(path, value)
    if kind in ("methods", "files"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{path}: expected a list of method names")
        return tuple(i.strip() for i in items if i.strip())
    built = _BUILT.get(kind)
    if built is not None and isinstance(value, tuple) and all(isinstance(v, built) for v in value):
        return value  # already typed, e.g. from load_config or a test fixture
    if kind == "schedule":
        return windows(path, value)
    if kind == "users":
        return _users(path, value)
    if kind == "clients":
        return _clients(path, value)
    if kind == "schemas":
        return schema_specs(path, value)
    raise ConfigError(f"{path}: cannot be set")  # pragma: no cover - every kind is handled


def _method_limits(path: str, value: object) -> tuple[tuple[str, float], ...]:
    """``{"Ingest": 12}``, ``"Ingest=12,Write=5"`` or pairs: sorted (method, limit) pairs."""
    if isinstance(value, str):
        table: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, text = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"{path}: expected METHOD=LIMIT items, got {item!r}")
            table[name.strip()] = text.strip()
    elif isinstance(value, Mapping):
        table = dict(value)
    elif isinstance(value, list | tuple) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 for pair in value
    ):
        table = {str(name): limit for name, limit in value}
    else:
        raise ConfigError(f"{path}: expected a table of method = calls per second")
    problems: list[str] = []
    pairs: list[tuple[str, float]] = []
    for name, raw in table.items():
        here = f"{path}.{name}"
        if name not in SOAP_METHODS:
            problems.append(f"{here}: unknown SOAP method (known: {', '.join(SOAP_METHODS)})")
            continue
        try:
            limit = _coerce(here, raw, {"kind": "float"})
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if not isinstance(limit, float) or not limit >= 0 or math.isinf(limit):
            problems.append(f"{here}: must be a finite number, not negative")
            continue
        pairs.append((name, limit))
    if problems:
        raise ConfigError(problems)
    return tuple(sorted(pairs))


def _users(path: str, value: object) -> tuple[User, ...]:
    users = []
    for i, table in enumerate(table_list(path, value)):
        here = f"{path}[{i}]"
        only(here, table, {"login", "password", "schemas"}, {"login", "password"})
        user = User(
            str(table["login"]),
            str(table["password"]),
            strings(f"{here}.schemas", table.get("schemas", [])),
        )
        register_secret(user.password)
        users.append(user)
    return tuple(users)


def _clients(path: str, value: object) -> tuple[ImsClient, ...]:
    clients = []
    for i, table in enumerate(table_list(path, value)):
        here = f"{path}[{i}]"
        only(here, table, {"client_id", "client_secret", "schemas"}, {"client_id", "client_secret"})
        client = ImsClient(
            str(table["client_id"]),
            str(table["client_secret"]),
            strings(f"{here}.schemas", table.get("schemas", [])),
        )
        register_secret(client.client_secret)
        clients.append(client)
    return tuple(clients)


def _validate(config: SimulatorConfig) -> None:
    problems = []
    for spec in _FIELDS.values():  # values given to the constructor are not coerced
        choices, value = spec.metadata["choices"], getattr(config, spec.name)
        if choices and value not in choices:
            problems.append(f"{spec.name}: {value!r} is not one of {_listed(choices)}")
    rates = {f"rate_{kind}": getattr(config, f"rate_{kind}") for kind in KINDS}
    for name, rate in [*rates.items(), ("poison_rate", config.poison_rate)]:
        if not 0.0 <= rate <= 1.0:
            problems.append(f"{name}: must be between 0 and 1")
    if sum(rates.values()) > 1.0 + 1e-9:
        problems.append("rate_*: the per-call fault rates add up to more than 1")
    for name in ("tps_limit", "latency_ms", "latency_per_record_ms", "latency_jitter"):
        if getattr(config, name) < 0:
            problems.append(f"{name}: must not be negative")
    for name in (
        "max_concurrent",
        "retry_after_s",
        "timeout_hold_s",
        "drip_interval_s",
        "replicate_interval_s",
    ):
        if getattr(config, name) < 0:
            problems.append(f"{name}: must not be negative")
    for name in (
        "session_timeout_s",
        "ims_token_ttl_s",
        "burst",
        "call_log_memory",
        "huge_body_bytes",
    ):
        if getattr(config, name) <= 0:
            problems.append(f"{name}: must be positive")
    if not 0 <= config.port <= 65535:
        problems.append("port: must be between 0 and 65535")
    if not 200 <= config.fault_status <= 599:
        problems.append("fault_status: must be an HTTP status between 200 and 599")
    if bool(config.tls_cert) != bool(config.tls_key):
        problems.append("tls_cert, tls_key: give both or neither")
    for i, window in enumerate(config.schedule):
        if window.end_s <= window.start_s or not 0.0 <= window.rate <= 1.0:
            problems.append(f"schedule[{i}]: needs start_s < end_s and 0 <= rate <= 1")
    logins = [u.login for u in config.users]
    if len(set(logins)) != len(logins):
        problems.append("users: a login appears twice")
    if problems:
        raise ConfigError(problems)


def apply_changes(
    config: SimulatorConfig,
    changes: Mapping[str, object],
    *,
    source: str = "config",
    runtime_only: bool = False,
) -> SimulatorConfig:
    """``config`` with ``changes`` (field name to raw value) coerced, checked and applied."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for name, raw in changes.items():
        spec = _FIELDS.get(name)
        if spec is None:
            problems.append(f"{source}.{name}: unknown key")
            continue
        if runtime_only and not spec.metadata["runtime"]:
            problems.append(f"{source}.{name}: fixed once the simulator has started")
            continue
        try:
            values[name] = _coerce(f"{source}.{name}", raw, spec.metadata)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    updated = dataclasses.replace(config, **values)  # type: ignore[arg-type]
    _validate(updated)
    return updated


def load_config(path: str | Path, base: SimulatorConfig | None = None) -> SimulatorConfig:
    """Read a TOML file onto ``base`` (the defaults); users, clients and schemas are added."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    section = data.get("simulator", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [simulator] must be a table")
    section = dict(section)
    config = base or SimulatorConfig()
    replace = section.pop("replace_default_schemas", False)
    changes: dict[str, object] = {}
    for name in ("users", "ims_clients"):
        if name in section:
            extra = _coerce(name, section.pop(name), _FIELDS[name].metadata)
            assert isinstance(extra, tuple)
            changes[name] = (*getattr(config, name), *extra)
    if "schemas" in section:
        extra_schemas = schema_specs("schemas", section.pop("schemas"))
        ids = {s.id for s in extra_schemas}
        kept = () if replace else tuple(s for s in config.schemas if s.id not in ids)
        changes["schemas"] = (*kept, *extra_schemas)
    if "schema_files" in section:
        # Relative to the config file, as a person writing it next to the XML expects.
        meta = _FIELDS["schema_files"].metadata
        files = _coerce("schema_files", section.pop("schema_files"), meta)
        assert isinstance(files, tuple)
        here = Path(path).parent
        changes["schema_files"] = (*config.schema_files, *(str(here / f) for f in files))
    changes.update(section)
    return apply_changes(config, changes, source=str(Path(path).name))
