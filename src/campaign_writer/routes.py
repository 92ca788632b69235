"""The ``[[routes]]`` config: what a route says, read and checked before anything runs.

:func:`read_routes` turns the config's ``[[routes]]`` tables into :class:`RouteConfig`
values: a name, what it matches, the target schema and method, the key, the operation,
and a :class:`FieldConfig` per attribute (dotted path in the event, XTK type, length,
required flag, default, and the values an enumeration allows, ``enum = [...]``). A
route may start from a ``preset`` (:mod:`.presets`) and override what it sets. Every
problem is reported with its key path, all at once; a default and the values of an
enumeration are cast here, as an event's value would be, so that intake compares them
exactly. :mod:`.router` compiles these values into the mapping of events.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal

from .campaign.documents import OPERATIONS
from .campaign.xmltext import XmlTextPolicy, check_name, check_qualified_name
from .campaign.xtktypes import TEXT_TYPES, XTK_TYPES, caster
from .datamodel.presets import PRESETS
from .errors import ConfigError, RecordError
from .records import LaneId
from .settings import MISSING, Section, describe

__all__ = [
    "ROUTE_METHODS",
    "CollectionMode",
    "FieldConfig",
    "Method",
    "RouteConfig",
    "read_routes",
]

Method = Literal["Ingest", "IngestExt", "WriteCollection"]
CollectionMode = Literal["auto", "always", "never"]
ROUTE_METHODS: Final = ("Ingest", "IngestExt", "WriteCollection")
_RESERVED_ATTRIBUTES: Final = frozenset({"xtkschema"})


@dataclass(frozen=True)
class FieldConfig:
    """One target attribute: where its value is in the event and what it must be."""

    attribute: str
    path: str
    type: str = "string"
    length: int | None = None
    required: bool = False
    default: str | None = None  # already cast to Campaign text
    enum: tuple[str, ...] = ()  # the values allowed, as Campaign text; empty: any


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` block."""

    name: str
    schema: str
    method: Method
    fields: tuple[FieldConfig, ...]
    match: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    key: tuple[str, ...] = ()
    operation: str | None = None
    operation_field: str | None = None
    collection: CollectionMode = "auto"

    @property
    def lane_id(self) -> LaneId:
        return LaneId(self.schema, self.method)

    @property
    def lane(self) -> str:
        """The lane as the queue stores it (:attr:`LaneId.text`)."""
        return self.lane_id.text

    @property
    def key_spec(self) -> str | None:
        """The ``_key`` attribute: ``@id``, or ``@a, @b`` for a compound key."""
        return ", ".join(f"@{name}" for name in self.key) or None


def _dotted(section: Section, key: str) -> str | None:
    path = section.optional_string(key)
    if path is not None and not all(path.split(".")):
        section.problem(key, f"{path!r} is not a dotted path like 'a.b.c'")
    return path


def _read_field(section: Section, attribute: str, policy: XmlTextPolicy) -> FieldConfig:
    path = _dotted(section, "path") or attribute
    type_name = section.string("type", "string")
    if type_name not in XTK_TYPES:
        hint = difflib.get_close_matches(type_name, XTK_TYPES, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(XTK_TYPES)}"
        section.problem("type", f"unknown type {type_name!r}{suffix}")
    length: int | None = None
    if section.has("length"):
        length = section.integer("length", minimum=1)
        if type_name in XTK_TYPES and type_name not in TEXT_TYPES:
            section.problem("length", f"applies to string and memo, not {type_name}")
    required = section.boolean("required", False)
    enum = _read_enum(section, attribute, type_name, length, policy)
    default: str | None = None
    raw_default = section.take("default")
    if raw_default is not MISSING and type_name in XTK_TYPES:
        try:
            default = caster(type_name, length, policy)(raw_default, attribute)
        except RecordError as exc:
            message = str(exc).removeprefix(f"{attribute}: ")
            section.problem("default", message)
        if default and enum and default not in enum:
            section.problem("default", f"{default!r} is not one of enum")
    section.finish()
    return FieldConfig(attribute, path, type_name, length, required, default, enum)


def _read_enum(
    section: Section, attribute: str, type_name: str, length: int | None, policy: XmlTextPolicy
) -> tuple[str, ...]:
    """``enum = [...]``: the values a field may take (as the schema's enumeration lists
    them), each cast like an event value so that comparing is exact."""
    raw = section.take("enum")
    if raw is MISSING:
        return ()
    if not isinstance(raw, list) or not raw:
        got = "an empty array" if raw == [] else describe(raw)
        section.problem("enum", f"expected a non-empty array of values, got {got}")
        return ()
    if type_name not in XTK_TYPES:
        return ()
    cast = caster(type_name, length, policy)
    values: list[str] = []
    for index, value in enumerate(raw):
        try:
            values.append(cast(value, attribute))
        except RecordError as exc:
            section.problem(f"enum[{index}]", str(exc).removeprefix(f"{attribute}: "))
    return tuple(dict.fromkeys(values))


def _read_fields(section: Section, policy: XmlTextPolicy) -> tuple[FieldConfig, ...]:
    fields: list[FieldConfig] = []
    table = section.section("fields")
    for attribute, spec in table.rest().items():
        try:
            check_name(attribute, table.key_path(attribute))
        except ConfigError as exc:
            table.problems.extend(exc.problems)
            continue
        if attribute.startswith("_") or attribute in _RESERVED_ATTRIBUTES:
            table.problem(attribute, "is reserved for Campaign's own use")
            continue
        fields.append(
            _read_field(Section(spec, table.key_path(attribute), table.problems), attribute, policy)
        )
    if not fields and not section.problems_for("fields"):
        section.problem("fields", "at least one field is needed")
    return tuple(fields)


def _read_match(section: Section) -> Mapping[str, Any]:
    table = section.section("match")
    match: dict[str, Any] = {}
    for name, value in table.rest().items():
        if "." in name:
            table.problem(name, "match on top-level fields only")
        elif not isinstance(value, str | int | float | bool):
            table.problem(name, f"expected a string, number or boolean, got {describe(value)}")
        else:
            match[name] = value
    return MappingProxyType(match)


def _read_route(section: Section, policy: XmlTextPolicy) -> RouteConfig | None:
    if section.has("preset"):
        preset = section.string("preset", choices=PRESETS)
        if preset in PRESETS:
            section.underlay(PRESETS[preset])
    name = section.string("name")
    match = _read_match(section)
    schema = section.string("schema")
    if schema:
        try:
            check_qualified_name(schema, section.key_path("schema"))
        except ConfigError as exc:
            section.problems.extend(exc.problems)
    method = section.string("method", choices=ROUTE_METHODS)
    keys = section.string_list("key")
    default_operation = "insertOrUpdate" if method == "WriteCollection" else None
    operation = section.optional_string("operation")
    if operation is not None and operation not in OPERATIONS:
        section.problem(
            "operation", f"must be one of {', '.join(sorted(OPERATIONS))}, got {operation!r}"
        )
    operation_field = _dotted(section, "operation_field")
    collection = section.string("collection", "auto", choices=("auto", "always", "never"))
    fields = _read_fields(section, policy)
    names = {f.attribute for f in fields}
    for key in keys:
        if key not in names:
            section.problem("key", f"{key!r} is not one of this route's fields")
    # A key field must always have a value, or the record cannot be reconciled.
    fields = tuple(replace(f, required=True) if f.attribute in keys else f for f in fields)
    section.finish()
    if method not in ROUTE_METHODS:
        return None
    return RouteConfig(
        name=name,
        schema=schema,
        method=method,  # type: ignore[arg-type]  # checked against ROUTE_METHODS
        fields=fields,
        match=match,
        key=tuple(keys),
        operation=operation or default_operation,
        operation_field=operation_field,
        collection=collection,  # type: ignore[arg-type]  # checked by choices
    )


def read_routes(sections: list[Section], policy: XmlTextPolicy) -> tuple[RouteConfig, ...]:
    """Every ``[[routes]]`` block; lanes shared by several routes must agree."""
    routes: list[RouteConfig] = []
    names: dict[str, str] = {}
    lanes: dict[str, tuple[str, RouteConfig]] = {}
    for section in sections:
        route = _read_route(section, policy)
        if route is None:
            continue
        if route.name in names:
            section.problem("name", f"{route.name!r} is already the name of {names[route.name]}")
        names.setdefault(route.name, section.path)
        first = lanes.setdefault(route.lane, (section.path, route))
        if first[1] is not route:
            where, other = first
            if other.collection != route.collection:
                section.problem("collection", f"differs from {where} on the same schema and method")
            if other.key != route.key:
                section.problem("key", f"differs from {where} on the same schema and method")
        routes.append(route)
    return tuple(routes)
