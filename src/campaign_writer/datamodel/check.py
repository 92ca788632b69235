"""Routes checked against the instance's own schemas, before a record is sent.

:func:`check_routes` is pure: given the routes and what the instance said of each
schema they need (:func:`schemas_needed`), it lists :class:`Finding` values, each an
error or a warning naming the route and, where it is one field's, the field:

errors
    an attribute the schema does not have (a key field said as such); a type the
    schema's attribute cannot hold; a declared length shorter than the route lets
    through; an Ingest/IngestExt route aimed at a schema without a staging twin, or
    at the twin's source; a schema the instance does not have.
warnings
    a WriteCollection route aimed at a staged schema (Ingest into its twin is the
    path Adobe recommends for volume); a lossy type (a datetime into a date); an
    enumeration the route does not enforce, or route values outside it; a schema
    that could not be read (the lookup itself refused, as in acc-js-sdk #112).

:func:`read_schemas` fetches them through a :class:`~.campaign.schemas.SchemaReader`.
A refused lookup becomes a warning; an unreachable instance or refused credentials
raise :class:`~.campaign.schemas.SchemaLookupError` for the caller to decide
(``validate --remote`` exits 2; the daemon's start-up check logs and starts).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..campaign.schemas import InstanceSchema, SchemaLookupError, staging_source
from ..campaign.xtktypes import DEFAULT_STRING_LENGTH, text_length
from ..routes import FieldConfig, RouteConfig

__all__ = [
    "Finding",
    "Lookup",
    "LookupFailed",
    "check_routes",
    "read_schemas",
    "report",
    "schemas_needed",
]

Severity = Literal["error", "warning"]
# Records one finding of the route being checked: severity, message, field (or None).
_Add = Callable[[Severity, str, "str | None"], None]

# Schema type -> route types it holds exactly, and route types it holds with a loss.
_INTEGERS = ("byte", "short", "long", "int64")
_ALL_ROUTE_TYPES = frozenset(
    {"string", "memo", "uuid", "boolean", "date", "datetime", "float", "double", *_INTEGERS}
)
_HOLDS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    **{
        text: (_ALL_ROUTE_TYPES, frozenset())
        for text in ("string", "memo", "CDATA", "html", "primarykey")
    },
    "byte": (frozenset({"byte"}), frozenset()),
    "short": (frozenset({"byte", "short"}), frozenset()),
    "long": (frozenset({"byte", "short", "long"}), frozenset()),
    "int": (frozenset({"byte", "short", "long"}), frozenset()),
    "int64": (frozenset(_INTEGERS), frozenset()),
    "float": (frozenset({"float", "byte", "short"}), frozenset({"double", "long", "int64"})),
    "double": (frozenset({"float", "double", "byte", "short", "long"}), frozenset({"int64"})),
    "money": (frozenset({"float", "double", "byte", "short", "long"}), frozenset({"int64"})),
    "percent": (frozenset({"float", "double", "byte", "short", "long"}), frozenset({"int64"})),
    "boolean": (frozenset({"boolean"}), frozenset()),
    "date": (frozenset({"date"}), frozenset({"datetime"})),
    "datetime": (frozenset({"datetime", "date"}), frozenset()),
    "datetimetz": (frozenset({"datetime", "date"}), frozenset()),
    "datetimenotz": (frozenset({"datetime", "date"}), frozenset()),
    "uuid": (frozenset({"uuid"}), frozenset({"string"})),
}
_LENGTHED = frozenset({"string"})
_STAGING_METHODS = frozenset({"Ingest", "IngestExt"})


@dataclass(frozen=True)
class Finding:
    """One problem of one route: ``field`` is the attribute at fault, or None."""

    severity: Severity
    route: str
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class LookupFailed:
    """The instance refused to describe a schema (the method, not the schema, is at fault)."""

    reason: str


Lookup = InstanceSchema | LookupFailed | None  # None: the instance has no such schema


def schemas_needed(routes: Iterable[RouteConfig]) -> list[str]:
    """Every schema a check reads: each target, and for a twin its source (``autoStg``)."""
    needed: dict[str, None] = {}
    for route in routes:
        needed[route.schema] = None
        source = staging_source(route.schema)
        if source is not None:
            needed[source] = None
    return list(needed)


class _Reader(Protocol):
    async def read(self, schema_id: str) -> InstanceSchema | None: ...


async def read_schemas(routes: Sequence[RouteConfig], reader: _Reader) -> dict[str, Lookup]:
    """What the instance says of each schema the routes need.

    A refused lookup is kept as :class:`LookupFailed`; SchemaLookupError escapes for
    an unreachable instance or refused credentials.
    """
    found: dict[str, Lookup] = {}
    for schema_id in schemas_needed(routes):
        try:
            found[schema_id] = await reader.read(schema_id)
        except SchemaLookupError as exc:
            if exc.kind != "refused":
                raise
            found[schema_id] = LookupFailed(str(exc))
    return found


def check_routes(routes: Iterable[RouteConfig], schemas: Mapping[str, Lookup]) -> list[Finding]:
    """Every finding of every route, in route order."""
    findings: list[Finding] = []
    for route in routes:
        findings.extend(_check_route(route, schemas))
    return findings


def _check_route(route: RouteConfig, schemas: Mapping[str, Lookup]) -> list[Finding]:
    found: list[Finding] = []

    def add(severity: Severity, message: str, field: str | None) -> None:
        found.append(Finding(severity, route.name, field, message))

    schema = schemas.get(route.schema)
    if isinstance(schema, LookupFailed):
        add("warning", f"could not read schema {route.schema}, not checked: {schema.reason}", None)
        return found
    if schema is None:
        add("error", f"the instance has no schema {route.schema}", None)
        twin = f"{route.schema}Stg"
        if route.method in _STAGING_METHODS and isinstance(schemas.get(twin), InstanceSchema):
            add("error", f"{route.method} writes staging schemas: use schema = {twin!r}", None)
        return found
    _check_method(route, schema, schemas, add)
    for spec in route.fields:
        _check_field(route, spec, schema, add)
    return found


def _check_method(
    route: RouteConfig, schema: InstanceSchema, schemas: Mapping[str, Lookup], add: _Add
) -> None:
    source_id = staging_source(schema.id)
    source = schemas.get(source_id) if source_id else None
    twin = source_id is not None and (
        isinstance(source, LookupFailed) or (source is not None and source.auto_stg)
    )
    if route.method in _STAGING_METHODS:
        if twin:
            return
        if schema.auto_stg:
            add(
                "error",
                f"{schema.id} is the source of a staging twin; {route.method} writes only"
                f" staging schemas: use schema = '{schema.id}Stg'",
                None,
            )
        else:
            add(
                "error",
                f"{schema.id} has no staging twin ({route.method} writes only <ns>:<name>Stg"
                ' schemas of a source with autoStg="true"): set autoStg on the source'
                " schema, or write with WriteCollection",
                None,
            )
    elif schema.auto_stg or twin:
        target = f"{schema.id}Stg" if schema.auto_stg else schema.id
        add(
            "warning",
            f"{schema.id} is staged: WriteCollection writes one call per batch straight"
            f" to {'the Cloud DB' if schema.auto_stg else 'the staging table'}; Adobe"
            f" recommends Ingest/IngestExt into {target} for volume",
            None,
        )


def _check_field(route: RouteConfig, spec: FieldConfig, schema: InstanceSchema, add: _Add) -> None:
    name = spec.attribute
    attribute = schema.attributes.get(name)
    if attribute is None:
        hint = difflib.get_close_matches(name, list(schema.attributes), n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        what = "key field" if name in route.key else "attribute"
        add("error", f"{what} {name!r} is not in schema {schema.id}{suffix}", name)
        return
    holds = _HOLDS.get(attribute.type)
    if holds is None:
        add("warning", f"schema type {attribute.type!r} is not checked against {spec.type}", name)
    elif spec.type in holds[1]:
        add("warning", f"{attribute.type} keeps less than a {spec.type} value holds", name)
    elif spec.type not in holds[0]:
        add("error", f"{attribute.type} cannot hold the route's {spec.type} values", name)
    if attribute.type in _LENGTHED:
        declared = attribute.length or DEFAULT_STRING_LENGTH
        allowed = text_length(spec.type, spec.length) if spec.type in ("string", "memo") else None
        if spec.type in ("string", "memo") and (allowed is None or allowed > declared):
            shown = "any length" if allowed is None else f"up to {allowed} characters"
            add(
                "error",
                f"{schema.id} declares length {declared}, the route lets {shown} through:"
                f" set length = {declared} to refuse longer values at intake",
                name,
            )
    if attribute.enum:
        if not spec.enum:
            values = ", ".join(f'"{v}"' for v in attribute.enum[:20])
            add(
                "warning",
                f"{schema.id} enumerates its values; enum = [{values}] would refuse others"
                " at intake",
                name,
            )
        elif outside := [v for v in spec.enum if v not in attribute.enum]:
            add("warning", f"enum values {outside} are not in the schema's enumeration", name)


def report(
    routes: Sequence[RouteConfig], findings: Sequence[Finding]
) -> tuple[list[str], dict[str, Any]]:
    """The findings as terminal lines and as a JSON-ready dictionary."""
    lines: list[str] = []
    by_route: dict[str, list[Finding]] = {}
    for finding in findings:
        by_route.setdefault(finding.route, []).append(finding)
    for route in routes:
        mine = by_route.get(route.name, [])
        head = f"route {route.name!r} -> {route.schema} ({route.method})"
        lines.append(f"{head}: OK" if not mine else f"{head}:")
        for finding in mine:
            where = f"field {finding.field!r}: " if finding.field else ""
            lines.append(f"  {finding.severity}: {where}{finding.message}")
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    data = {
        "ok": errors == 0,
        "errors": errors,
        "warnings": warnings,
        "routes": [
            {
                "name": route.name,
                "schema": route.schema,
                "method": route.method,
                "findings": [f.as_dict() for f in by_route.get(route.name, [])],
            }
            for route in routes
        ],
    }
    return lines, data
