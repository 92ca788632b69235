"""Staging documents: the XML that Write, WriteCollection, Ingest and IngestExt carry.

One entity::

    <sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="1" testcol1="a"/>

A collection (each entity may carry its own ``_operation`` and ``_key``)::

    <sampleTableStg-collection xtkschema="dem:sampleTableStg">
      <sampleTableStg _key="@id" id="1"/><sampleTableStg _key="@id" id="2"/>
    </sampleTableStg-collection>

A record travels through the queue as its **fragment**: the entity's attributes,
rendered and escaped once at intake (`` _key="@id" id="1" testcol1="a &amp; b"``).
Building a batch is then only joining fragments between element tags; a record is
parsed back (:func:`parse_fragment`) only when two records of one key merge. The
micro-benchmark in ``bench/serialise.py`` compares string building with lxml's tree
builder and incremental writer; string building was the fastest correct one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from .xmltext import quote_attribute

__all__ = [
    "OPERATIONS",
    "StagingRecord",
    "element_name",
    "fragments_document",
    "parse_fragment",
    "render_fragment",
]

OPERATIONS = frozenset({"insert", "insertOrUpdate", "update", "delete", "none"})

# One rendered attribute: names are XML names (checked at config load) and values are
# escaped, so neither holds a space, '=' or '"'.
_ATTRIBUTE = re.compile(r' ([^\s="]+)="([^"]*)"')


class StagingRecord(NamedTuple):
    """One entity to write: its attributes (already cast to Campaign text) and options."""

    attrs: Mapping[str, str]
    operation: str | None = None
    key: str | None = None


def render_fragment(
    attrs: Mapping[str, str], operation: str | None = None, key: str | None = None
) -> str:
    """The entity's attributes as XML text; refuses characters XML cannot carry."""
    parts = []
    if operation is not None:
        parts.append(f' _operation="{operation}"')
    if key is not None:
        parts.append(f' _key="{quote_attribute(key, "_key")}"')
    for name, value in attrs.items():
        parts.append(f' {name}="{quote_attribute(value, name)}"')
    return "".join(parts)


def _unescape(value: str) -> str:
    if "&" not in value:
        return value
    return (
        value.replace("&quot;", '"')
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#9;", "\t")
        .replace("&#10;", "\n")
        .replace("&#13;", "\r")
        .replace("&amp;", "&")  # last, so "&amp;lt;" becomes "&lt;" and no further
    )


def parse_fragment(fragment: str) -> StagingRecord:
    """The record a fragment was rendered from (the inverse of :func:`render_fragment`)."""
    attrs: dict[str, str] = {}
    operation = key = None
    for name, raw in _ATTRIBUTE.findall(fragment):
        value = _unescape(raw)
        if name == "_operation":
            operation = value
        elif name == "_key":
            key = value
        else:
            attrs[name] = value
    return StagingRecord(attrs, operation, key)


def element_name(schema_id: str) -> str:
    """The entity element of a schema: ``dem:sampleTableStg`` gives ``sampleTableStg``."""
    return schema_id.rpartition(":")[2]


def fragments_document(schema_id: str, fragments: list[str], *, collection: bool) -> str:
    """A document from rendered fragments: one entity, or a ``-collection`` of them."""
    element = element_name(schema_id)
    if not collection:
        if len(fragments) != 1:
            raise ValueError(f"a single-entity document holds one record, not {len(fragments)}")
        return f'<{element} xtkschema="{schema_id}"{fragments[0]}/>'
    root = f"{element}-collection"
    head = f"<{element}"
    tail = "/>" + head
    return (
        f'<{root} xtkschema="{schema_id}">{head}{tail.join(fragments)}/></{root}>'
        if fragments
        else f'<{root} xtkschema="{schema_id}"></{root}>'
    )
