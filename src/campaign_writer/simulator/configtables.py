"""The table and array values of the config: schedule windows and schemas, read and checked.

Each reader takes the path of the value (for the messages, e.g. ``schedule[2].kind``)
and the raw value as TOML or a control request gives it, and raises ConfigError
naming every key that is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lxml import etree

from ..errors import ConfigError
from .faults import WINDOW_KINDS, FaultWindow
from .schemas import AttributeSpec, SchemaSpec
from .xtktypes import XTK_TYPES

__all__ = ["only", "schema_specs", "strings", "table_list", "windows"]


def table_list(path: str, value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{path}: expected an array of tables")
    return list(value)


def only(path: str, table: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    problems = [f"{path}.{k}: unknown key" for k in table if k not in allowed]
    problems += [f"{path}.{k}: required" for k in sorted(required - set(table))]
    if problems:
        raise ConfigError(problems)


def strings(path: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: expected a list of strings")
    return tuple(value)


def windows(path: str, value: object) -> tuple[FaultWindow, ...]:
    found = []
    for i, table in enumerate(table_list(path, value)):
        here = f"{path}[{i}]"
        only(here, table, {"kind", "start_s", "end_s", "rate"}, {"kind", "start_s", "end_s"})
        kind = table["kind"]
        if kind not in WINDOW_KINDS:
            raise ConfigError(f"{here}.kind: {kind!r} is not one of {', '.join(WINDOW_KINDS)}")
        try:
            window = FaultWindow(
                str(kind),
                float(table["start_s"]),
                float(table["end_s"]),
                float(table.get("rate", 1.0)),
            )
        except (TypeError, ValueError):
            raise ConfigError(f"{here}: start_s, end_s and rate must be numbers") from None
        found.append(window)
    return tuple(found)


def _is_xml_name(name: str) -> bool:
    # An element name without a prefix: what lxml accepts as a tag (its own check,
    # not the writer's), so a schema the simulator takes can be written as XML.
    try:
        etree.Element(name)
    except ValueError:
        return False
    return True


def check_name(name: str, path: str) -> str:
    """``name`` if it is an XML name without a colon; else ConfigError naming ``path``."""
    if not _is_xml_name(name):
        raise ConfigError(f"{path}: {name!r} is not a valid XML name")
    return name


def check_qualified_name(name: str, path: str) -> str:
    """``name`` if it is a ``namespace:name`` schema id; else ConfigError naming ``path``."""
    namespace, colon, local = name.partition(":")
    if not (colon and _is_xml_name(namespace) and _is_xml_name(local)):
        raise ConfigError(f"{path}: {name!r} is not a schema id of the form 'namespace:name'")
    return name


def schema_specs(path: str, value: object) -> tuple[SchemaSpec, ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a table of schemas by id")
    specs = []
    for schema_id, table in value.items():
        here = f"{path}.{schema_id}"
        check_qualified_name(schema_id, here)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{here}: expected a table")
        only(here, table, {"attributes", "keys", "auto_stg", "label"}, {"attributes"})
        attributes = []
        attrs = table["attributes"]
        if not isinstance(attrs, Mapping) or not attrs:
            raise ConfigError(f"{here}.attributes: expected a non-empty table")
        for name, spec in attrs.items():
            where = f"{here}.attributes.{name}"
            check_name(name, where)
            spec = {"type": spec} if isinstance(spec, str) else spec
            if not isinstance(spec, Mapping):
                raise ConfigError(f"{where}: expected a type name or a table")
            only(where, spec, {"type", "length"}, set())
            type_name = spec.get("type", "string")
            if type_name not in XTK_TYPES:
                raise ConfigError(f"{where}.type: {type_name!r} is not an XTK type")
            length = spec.get("length")
            if length is not None and (not isinstance(length, int) or length < 1):
                raise ConfigError(f"{where}.length: expected a positive integer")
            attributes.append(AttributeSpec(name, type_name, length))
        keys = strings(f"{here}.keys", table.get("keys", []))
        for key in keys:
            if key not in attrs:
                raise ConfigError(f"{here}.keys: {key!r} is not an attribute of the schema")
        specs.append(
            SchemaSpec(
                schema_id,
                tuple(attributes),
                keys,
                bool(table.get("auto_stg", False)),
                str(table.get("label", "")),
            )
        )
    return tuple(specs)
