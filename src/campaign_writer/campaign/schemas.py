"""The instance's own schemas, read as Adobe's SDK reads them: ``GetEntityIfMoreRecent``.

Campaign describes every schema through ``xtk:persist#GetEntityIfMoreRecent`` on
``xtk:schema|<ns>:<name>`` (``campaign-protocol.md`` §6.1): the answer's ``pdomDoc``
holds the compiled ``<schema>``, or nothing when the instance has no such schema.
:func:`parse_schema` keeps what a route is checked against -- the main element's
attributes with their XTK type, length and enumeration, its key, and ``autoStg`` --
from the document parsed by the hardened parser (:func:`.soap.parse_body`).

:class:`SchemaReader` makes the calls through the :class:`~.client.CampaignClient`
(so through the tenant throttle) with the configured authentication, renews an
expired session once, and keeps what it read in memory for the life of the reader
(one per ``validate --remote`` run, one per daemon start). It never writes.

A lookup that cannot be made ends in :class:`SchemaLookupError`: ``kind`` says
whether Campaign was out of reach (``unreachable``), refused the credentials
(``auth``), or refused the lookup itself (``refused``: a fault such as
SOP-330006 or the masked SOP-330023 of acc-js-sdk issue #112, where the schema may
well exist).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol

from lxml import etree

from ..errors import AuthError, CampaignWriterError, TransportError
from .codes import INVALID_LOGIN, IP_NOT_ALLOWED
from .outcome import AuthExpired, Fatal, Ok, Reject, Retry, Throttled
from .schemaxml import children, enumeration_values, enumerations, is_true, key_fields, main_element
from .soap import Credentials, SoapResponse

__all__ = [
    "InstanceSchema",
    "LookupKind",
    "SchemaAttribute",
    "SchemaLookupError",
    "SchemaReader",
    "parse_schema",
    "staging_source",
]

LookupKind = Literal["unreachable", "auth", "refused"]
# Fatal answers that mean the credentials, not the lookup, were refused; and those that
# mean the URL reaches no Campaign at all.
_AUTH_CODES = frozenset(
    {INVALID_LOGIN, IP_NOT_ALLOWED, "invalid-login", "connection-denied", "ip-not-allowed"}
    | {"HTTP-401", "HTTP-403"}
)
_NOT_CAMPAIGN = frozenset({"HTTP-404", "HTTP-405"})


@dataclass(frozen=True)
class SchemaAttribute:
    """One attribute of a schema's main element, as the instance declares it."""

    name: str
    type: str = "string"
    length: int | None = None
    enum: tuple[str, ...] = ()  # the values of its enumeration, when the schema holds it


@dataclass(frozen=True)
class InstanceSchema:
    """A schema of the instance: its attributes by name, key fields and ``autoStg``."""

    id: str
    label: str = ""
    attributes: Mapping[str, SchemaAttribute] = field(default_factory=lambda: MappingProxyType({}))
    keys: tuple[str, ...] = ()
    auto_stg: bool = False

    @property
    def staging(self) -> bool:
        """Whether this is a staging twin (``<ns>:<name>Stg``) that Ingest writes into."""
        return staging_source(self.id) is not None


def staging_source(schema_id: str) -> str | None:
    """``nms:recipient`` for ``nms:recipientStg``; None when the id is not a twin's."""
    namespace, _, name = schema_id.partition(":")
    if name.endswith("Stg") and len(name) > 3:
        return f"{namespace}:{name[:-3]}"
    return None


def parse_schema(schema_id: str, root: etree._Element) -> InstanceSchema:
    """The parts of a compiled ``<schema>`` a route is checked against.

    The main element is the one named like the schema (else the first); only its
    own ``<attribute>`` children count, since a staging record is flat. An
    ``enum`` naming an enumeration of this document (short, or qualified by this
    schema's id or, for a twin, its source's) gets its values; one of another
    schema keeps the attribute without values.
    """
    main = main_element(root, schema_id.partition(":")[2])
    if main is None:
        return InstanceSchema(schema_id, root.get("label", ""))
    source = staging_source(schema_id)
    owners = (schema_id,) if source is None else (schema_id, source)
    found = enumerations(root)
    attributes: dict[str, SchemaAttribute] = {}
    for node in children(main, "attribute"):
        raw_length = node.get("length", "")
        attributes[node.get("name", "")] = SchemaAttribute(
            node.get("name", ""),
            node.get("type", "string"),
            int(raw_length) if raw_length.isdigit() else None,
            enumeration_values(found, node.get("enum", ""), owners),
        )
    return InstanceSchema(
        schema_id,
        root.get("label", ""),
        MappingProxyType(attributes),
        key_fields(main),
        is_true(main.get("autoStg")),
    )


class SchemaLookupError(CampaignWriterError):
    """A schema could not be read; ``kind`` says why (see the module docstring)."""

    def __init__(self, message: str, kind: LookupKind) -> None:
        super().__init__(message)
        self.kind = kind
        self.retriable = kind == "unreachable"


class _Reads(Protocol):
    """What the reader needs of :class:`~.client.CampaignClient`."""

    async def read_schema(self, schema: str, credentials: Credentials) -> _Result: ...


class _Result(Protocol):
    @property
    def outcome(self) -> object: ...


class _Credentialed(Protocol):
    async def credentials(self) -> Credentials: ...
    async def renew(self, stale: Credentials) -> Credentials: ...


class SchemaReader:
    """Reads schemas from the instance, each at most once per reader (a cache in memory)."""

    def __init__(self, client: _Reads, auth: _Credentialed) -> None:
        self._client = client
        self._auth = auth
        self._read: dict[str, InstanceSchema | None] = {}

    async def read(self, schema_id: str) -> InstanceSchema | None:
        """The schema, or None when the instance has none of that name."""
        if schema_id in self._read:
            return self._read[schema_id]
        credentials = await self._credentials(None)
        outcome = (await self._client.read_schema(schema_id, credentials)).outcome
        if isinstance(outcome, AuthExpired):
            credentials = await self._credentials(credentials)
            outcome = (await self._client.read_schema(schema_id, credentials)).outcome
        schema = self._settle(schema_id, outcome)
        self._read[schema_id] = schema
        return schema

    async def _credentials(self, stale: Credentials | None) -> Credentials:
        try:
            if stale is None:
                return await self._auth.credentials()
            return await self._auth.renew(stale)
        except AuthError as exc:
            raise SchemaLookupError(f"authentication failed: {exc}", "auth") from None
        except TransportError as exc:
            raise SchemaLookupError(f"cannot reach Campaign: {exc}", "unreachable") from None

    @staticmethod
    def _settle(schema_id: str, outcome: object) -> InstanceSchema | None:
        where = f"reading schema {schema_id}"
        if isinstance(outcome, Ok):
            return _schema_of(schema_id, outcome.response)
        if isinstance(outcome, AuthExpired):
            raise SchemaLookupError(f"{where}: still refused after re-authentication", "auth")
        if isinstance(outcome, Throttled):
            raise SchemaLookupError(f"{where}: throttled (HTTP 429)", "unreachable")
        if isinstance(outcome, Retry):
            raise SchemaLookupError(f"{where}: {outcome.reason}", "unreachable")
        if isinstance(outcome, Fatal) and outcome.code in _AUTH_CODES:
            raise SchemaLookupError(f"{where}: {outcome.reason}", "auth")
        if isinstance(outcome, Fatal) and outcome.code in _NOT_CAMPAIGN:
            raise SchemaLookupError(f"{where}: {outcome.reason}", "unreachable")
        if isinstance(outcome, Reject | Fatal):
            raise SchemaLookupError(f"{where}: {outcome.reason}", "refused")
        raise SchemaLookupError(f"{where}: unexpected answer {outcome!r}", "refused")


def _schema_of(schema_id: str, response: SoapResponse) -> InstanceSchema | None:
    output = response.output("pdomDoc") or (response.outputs[0] if response.outputs else None)
    if output is None or output.element is None:
        return None  # an empty pdomDoc: the instance has no such schema
    return parse_schema(schema_id, output.element)
