"""A route for the config, written from a schema: ``campaign-writer scaffold``.

:func:`scaffold_route` turns an :class:`~.campaign.schemas.InstanceSchema` into a
``[[routes]]`` block in TOML, ready to paste: the schema's key as the route's key,
each attribute's XTK type mapped to the route type that holds it (with the length
and the enumeration's values where the schema has them), and comments for what a
person must decide (which events the route takes, where each value is in them, which
attributes to leave out). A staging twin gets IngestExt when it has a key (an update
or insert that a resend cannot duplicate), Ingest otherwise; any other schema gets
WriteCollection, with a note when it is staged and its twin is the better target.
"""

from __future__ import annotations

import json
import re
from typing import Final

from ..campaign.schemas import InstanceSchema, SchemaAttribute

__all__ = ["ROUTE_TYPE_OF", "scaffold_route"]

# Schema type -> the route type that holds its values.
ROUTE_TYPE_OF: Final = {
    "string": "string",
    "primarykey": "string",
    "memo": "memo",
    "CDATA": "memo",
    "html": "memo",
    "byte": "byte",
    "short": "short",
    "long": "long",
    "int": "long",
    "int64": "int64",
    "float": "float",
    "double": "double",
    "money": "double",
    "percent": "double",
    "boolean": "boolean",
    "date": "date",
    "datetime": "datetime",
    "datetimetz": "datetime",
    "datetimenotz": "datetime",
    "uuid": "uuid",
}
_INTEGER_TYPES = frozenset({"byte", "short", "long", "int64"})
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes
_INTEGER = re.compile(r"-?[0-9]+")


def _toml(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string


def _key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, quoted otherwise."""
    return name if _BARE_KEY.fullmatch(name) else _toml(name)


def _comment(text: str) -> str:
    """``text`` (a label, a file name: what the schema or its origin says) fit for one
    comment line: whitespace runs become one space, control characters go."""
    return "".join(c for c in " ".join(text.split()) if c >= " " and c != "\x7f")


def _enum(attribute: SchemaAttribute, route_type: str) -> str:
    if route_type in _INTEGER_TYPES and all(_INTEGER.fullmatch(v) for v in attribute.enum):
        return ", ".join(attribute.enum)
    return ", ".join(_toml(v) for v in attribute.enum)


def _field(attribute: SchemaAttribute, key: bool) -> list[str]:
    name = attribute.name
    route_type = ROUTE_TYPE_OF.get(attribute.type)
    if route_type is None:
        return [
            f"# [routes.fields.{_comment(_key(name))}]: schema type"
            f" {_comment(repr(attribute.type))} has no route type;"
            " leave it out, or map it as a string yourself",
            "",
        ]
    lines = [f"[routes.fields.{_key(name)}]"]
    lines.append(f"# path = {_toml(name)}   # where the value is in the event (default: the name)")
    lines.append(f"type = {_toml(route_type)}")
    if attribute.type == "string":
        lines.append(f"length = {attribute.length or 255}")
    if attribute.enum:
        lines.append(f"enum = [{_enum(attribute, route_type)}]   # the schema's enumeration")
    if key:
        lines.append("# a key field: always required")
    else:
        lines.append("# required = true   # decide: refuse events without it?")
    lines.append("")
    return lines


def scaffold_route(schema: InstanceSchema, origin: str) -> str:
    """The ``[[routes]]`` block for ``schema``; ``origin`` says where it was read."""
    namespace, _, name = schema.id.partition(":")
    keys = [k for k in schema.keys if k in schema.attributes]
    lines = [
        f"# A route for {_comment(schema.id)}"
        f"{f' ({_comment(schema.label)})' if schema.label else ''},"
        f" scaffolded from {_comment(origin)}.",
        "# Decide: which events it takes (match), where each value is in them (path), and",
        "# which attributes to leave out (an attribute the events never carry is harmless).",
        "# Then check it: campaign-writer validate --config FILE --remote",
    ]
    if schema.staging:
        method = "IngestExt" if keys else "Ingest"
        why = (
            "updates or inserts on the key; a resent call cannot duplicate"
            if keys
            else "inserts only; without a key a resent call stores records twice"
        )
    else:
        method = "WriteCollection"
        why = "a classic write, straight to the table"
        if schema.auto_stg:
            lines.append(
                f"# {_comment(schema.id)} is staged (autoStg): scaffold {_comment(schema.id)}Stg"
                " instead for Ingest/IngestExt, the path Adobe recommends for volume."
            )
    lines += [
        "[[routes]]",
        f"name = {_toml(name)}",
        'match = { type = "CHANGE-ME" }   # decide: the events this route takes',
        f"schema = {_toml(f'{namespace}:{name}')}",
        f"method = {_toml(method)}   # {why}",
    ]
    if keys:
        lines.append(f"key = [{', '.join(_toml(k) for k in keys)}]   # the schema's key")
    elif schema.staging:
        lines.append("# key = [...]   # decide: the schema declares no key")
    lines.append("")
    for attribute in schema.attributes.values():
        lines += _field(attribute, attribute.name in keys)
    return "\n".join(lines).rstrip() + "\n"
