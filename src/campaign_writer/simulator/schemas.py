"""The schemas a simulated tenant knows, and the XML it serves for them.

A :class:`SchemaSpec` comes from the config (or the built-in defaults): a schema id,
its attributes with XTK types and lengths, its keys, and ``auto_stg``. As in Campaign
v8, ``auto_stg`` adds a staging copy ``<ns>:<name>Stg`` with the same attributes and
keys (``dem:sampleTable`` gives ``dem:sampleTableStg``); only staging schemas take
Ingest and IngestExt.

:class:`Catalog` compiles the specs once into :class:`Schema` objects holding what
the hot path needs (allowed names, string lengths, other checks), and renders the
``xtk:schema`` documents that GetEntityIfMoreRecent returns, including the
``xtk:session`` schema from which Adobe's SDK learns the URN of every method.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from xml.sax.saxutils import quoteattr

from .xtktypes import STRING_TYPES, Check, check_for

__all__ = [
    "DEFAULT_SCHEMAS",
    "AttributeSpec",
    "Catalog",
    "Schema",
    "SchemaSpec",
    "session_schema_xml",
]

DEFAULT_STRING_LENGTH = 255  # Campaign's default for a string attribute without length


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute: its name, XTK type, for strings a maximum length, and the values
    of its enumeration if it has one (served as an ``<enumeration>``; Campaign does not
    refuse a value outside one, so neither does the simulator)."""

    name: str
    type: str = "string"
    length: int | None = None
    enum: tuple[str, ...] = ()
    enum_name: str = ""  # as the schema file names it; empty: <name>Enum


@dataclass(frozen=True)
class SchemaSpec:
    """A schema as configured; ``keys`` are the fields of its primary key (often one)."""

    id: str
    attributes: tuple[AttributeSpec, ...]
    keys: tuple[str, ...] = ()
    auto_stg: bool = False
    label: str = ""


DEFAULT_SCHEMAS: tuple[SchemaSpec, ...] = (
    # The sample of Adobe's v8 "new APIs" page.
    SchemaSpec(
        "dem:sampleTable",
        (
            AttributeSpec("id", "string", 64),
            AttributeSpec("testcol1", "string", 255),
            AttributeSpec("testcol2", "string", 255),
        ),
        keys=("id",),
        auto_stg=True,
        label="Sample table",
    ),
    # Recipients, keyed on email for our examples; staged out of the box in v8.
    SchemaSpec(
        "nms:recipient",
        (
            AttributeSpec("email", "string", 128),
            AttributeSpec("firstName", "string", 64),
            AttributeSpec("lastName", "string", 64),
            AttributeSpec("birthDate", "date"),
            AttributeSpec("points", "long"),
            AttributeSpec("gender", "byte"),
            AttributeSpec("blackList", "boolean"),
            AttributeSpec("mobilePhone", "string", 32),
            AttributeSpec("account", "string", 30),
            AttributeSpec("externalId", "int64"),
            AttributeSpec("score", "double"),
            AttributeSpec("lastModified", "datetime"),
            AttributeSpec("comment", "memo"),
        ),
        keys=("email",),
        auto_stg=True,
        label="Recipients",
    ),
    # The two other schemas v8 stages out of the box (Adobe's staging page names
    # nmsSubscriptionRcp and nmsAppSubscriptionRcp). No public source lists their v8
    # attributes: these small sets are INFERRED from the v7 subscription and
    # application-subscription schemas (links to the recipient and the service or
    # mobile application, creation and expiry dates), to be checked on a real instance.
    SchemaSpec(
        "nms:subscriptionRcp",
        (
            AttributeSpec("recipient-id", "int64"),
            AttributeSpec("service-id", "int64"),
            AttributeSpec("created", "datetime"),
            AttributeSpec("expirationDate", "date"),
            AttributeSpec("origin", "string", 64),
        ),
        keys=("recipient-id", "service-id"),
        auto_stg=True,
        label="Recipient subscriptions",
    ),
    SchemaSpec(
        "nms:appSubscriptionRcp",
        (
            AttributeSpec("mobileApp-id", "int64"),
            AttributeSpec("userKey", "string", 255),
            AttributeSpec("registrationToken", "string", 255),
            AttributeSpec("deviceName", "string", 128),
            AttributeSpec("platform", "string", 16, ("ios", "android", "web")),
            AttributeSpec("disabled", "boolean"),
            AttributeSpec("created", "datetime"),
            AttributeSpec("lastModified", "datetime"),
        ),
        keys=("mobileApp-id", "registrationToken"),
        auto_stg=True,
        label="Application subscriptions",
    ),
)


@dataclass(frozen=True)
class Schema:
    """A compiled schema: what validation and storage need, computed once."""

    id: str
    element: str
    attributes: Mapping[str, AttributeSpec]
    keys: tuple[str, ...]
    staging: bool
    auto_stg: bool
    label: str
    allowed: frozenset[str] = field(init=False)
    string_lengths: tuple[tuple[str, int], ...] = field(init=False)
    checks: tuple[tuple[str, Check], ...] = field(init=False)

    def __post_init__(self) -> None:
        lengths: list[tuple[str, int]] = []
        checks: list[tuple[str, Check]] = []
        for spec in self.attributes.values():
            if spec.type in STRING_TYPES:
                if spec.length:
                    lengths.append((spec.name, spec.length))
                continue
            check = check_for(spec.type, spec.length)
            if check is not None:
                checks.append((spec.name, check))
        object.__setattr__(self, "allowed", frozenset(self.attributes))
        object.__setattr__(self, "string_lengths", tuple(lengths))
        object.__setattr__(self, "checks", tuple(checks))

    def xml(self) -> str:
        """The compiled ``xtk:schema`` document, as GetEntityIfMoreRecent returns it."""
        namespace, _, name = self.id.partition(":")
        parts = [
            f"<schema namespace={quoteattr(namespace)} name={quoteattr(name)}"
            f' label={quoteattr(self.label or name)} mappingType="sql" xtkschema="xtk:schema">'
        ]
        # Enumerations are children of the schema, before its elements (as Campaign's
        # compiled schemas list them), each once however many attributes use it.
        enumerations = {_enum_name(spec): spec for spec in self.attributes.values() if spec.enum}
        for enum_name, spec in enumerations.items():
            parts.append(
                f"<enumeration name={quoteattr(enum_name)} basetype={quoteattr(spec.type)}>"
            )
            parts.extend(
                f"<value name={quoteattr(value)} value={quoteattr(value)}/>" for value in spec.enum
            )
            parts.append("</enumeration>")
        parts.append(
            f"<element name={quoteattr(self.element)} label={quoteattr(self.label or name)}"
        )
        if self.auto_stg:
            parts.append(' autoStg="true"')
        parts.append(">")
        if self.keys:
            parts.append(f'<key name={quoteattr(self.keys[0])} internal="true">')
            parts.extend(f"<keyfield xpath={quoteattr('@' + key)}/>" for key in self.keys)
            parts.append("</key>")
        for spec in self.attributes.values():
            parts.append(f"<attribute name={quoteattr(spec.name)} type={quoteattr(spec.type)}")
            if spec.type == "string":
                parts.append(f' length="{spec.length or DEFAULT_STRING_LENGTH}"')
            if spec.enum:
                parts.append(f" enum={quoteattr(_enum_name(spec))}")
            parts.append("/>")
        parts.append("</element></schema>")
        return "".join(parts)


def _enum_name(spec: AttributeSpec) -> str:
    return spec.enum_name or f"{spec.name.replace('-', '')}Enum"


def _compile(spec: SchemaSpec, schema_id: str, staging: bool, auto_stg: bool) -> Schema:
    # A string without a length gets Campaign's default; its enumeration, if any, stays.
    attributes = {
        a.name: a if a.type != "string" or a.length else replace(a, length=DEFAULT_STRING_LENGTH)
        for a in spec.attributes
    }
    return Schema(
        id=schema_id,
        element=schema_id.partition(":")[2],
        attributes=attributes,
        keys=spec.keys,
        staging=staging,
        auto_stg=auto_stg,
        label=spec.label,
    )


class Catalog:
    """Every schema of the tenant by id, the staging copies included."""

    def __init__(self, specs: Iterable[SchemaSpec]) -> None:
        self._schemas: dict[str, Schema] = {}
        for spec in specs:
            self._schemas[spec.id] = _compile(spec, spec.id, spec.id.endswith("Stg"), spec.auto_stg)
            if spec.auto_stg:
                staging_id = f"{spec.id}Stg"
                self._schemas[staging_id] = _compile(spec, staging_id, True, False)

    def get(self, schema_id: str) -> Schema | None:
        """The schema ``schema_id``, or None when the instance has none by that name."""
        return self._schemas.get(schema_id)

    def ids(self) -> list[str]:
        return list(self._schemas)

    def __iter__(self) -> Iterator[Schema]:
        return iter(self._schemas.values())

    def __contains__(self, schema_id: object) -> bool:
        return schema_id in self._schemas


def _method(name: str, params: str = "") -> str:
    inner = f"<parameters>{params}</parameters>" if params else ""
    return f'<method name="{name}" static="true">{inner}</method>'


def _param(name: str, type_name: str, inout: str = "") -> str:
    direction = f' inout="{inout}"' if inout else ""
    return f'<param name="{name}" type="{type_name}"{direction}/>'


def session_schema_xml() -> str:
    """``xtk:schema|xtk:session``: the methods the simulator serves, as Campaign declares them.

    The write methods sit in ``<interface name="persist">`` and the schema says
    ``implements="xtk:persist"``, so Adobe's SDK calls them under the URN
    ``xtk:persist|xtk:session``, as it does against a real instance.
    """
    doc = _param("doc", "DOMDocument")
    persist = "".join(
        (
            _method("Write", doc),
            _method("WriteCollection", doc),
            _method("Ingest", doc + _param("sUuids", "string", "out")),
            _method("IngestExt", doc),
            _method(
                "GetEntityIfMoreRecent",
                _param("pk", "string")
                + _param("md5", "string")
                + _param("doc", "DOMDocument", "out")
                + _param("mustExist", "boolean"),
            ),
        )
    )
    session = "".join(
        (
            _method(
                "Logon",
                _param("login", "string")
                + _param("password", "string")
                + _param("parameters", "DOMElement")
                + _param("sessionToken", "string", "out")
                + _param("sessionInfo", "DOMDocument", "out")
                + _param("securityToken", "string", "out"),
            ),
            _method(
                "BearerTokenLogon",
                _param("bearerToken", "string")
                + _param("sessionToken", "string", "out")
                + _param("sessionInfo", "DOMDocument", "out")
                + _param("securityToken", "string", "out"),
            ),
            _method("Logoff"),
            _method("GetUserInfo", _param("userInfo", "sessionUserInfo", "out")),
        )
    )
    return (
        '<schema namespace="xtk" name="session" implements="xtk:persist"'
        ' label="Session" xtkschema="xtk:schema">'
        f'<interface name="persist">{persist}</interface>'
        '<element name="sessionInfo"/><element name="userInfo"/><element name="session"/>'
        f"<methods>{session}</methods></schema>"
    )
