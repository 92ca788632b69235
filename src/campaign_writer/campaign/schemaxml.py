"""Reading a schema document: the main element, its key and its enumerations.

Both readers of schema XML use these: the writer's (:mod:`.schemas`, the compiled
``<schema>`` an instance serves) and the simulator's (its ``schema_files``, an
exported ``<srcSchema>`` or ``<schema>``). The document must already come from the
hardened parser (:func:`.soap.parse_xml`).

An attribute names its enumeration either by the short name of an ``<enumeration>``
of the same document (``enum="channel"``, as a developer writes a source schema) or
qualified by the schema's id (``enum="nms:recipient:gender"``, as Campaign's compiled
schemas and Adobe's SDK spell it). :func:`enumeration_values` accepts both; one of
another schema resolves to no values (its values are in that schema's document).
"""

from __future__ import annotations

from collections.abc import Mapping

from lxml import etree

__all__ = [
    "MAX_SCHEMA_FILE_BYTES",
    "SCHEMA_ROOTS",
    "children",
    "enumeration_values",
    "enumerations",
    "is_true",
    "key_fields",
    "local_name",
    "main_element",
    "schema_documents",
]

# An exported schema file larger than this is refused (the biggest built-ins are far smaller).
MAX_SCHEMA_FILE_BYTES = 8 * 1024 * 1024
# The roots of a schema document: the source a developer edits, or the compiled form.
SCHEMA_ROOTS = frozenset({"srcSchema", "schema"})
_TRUE = frozenset({"true", "1", "yes"})


def is_true(value: str | None) -> bool:
    """An XTK boolean attribute's value (``autoStg="true"``, ``internal="1"``)."""
    return (value or "").lower() in _TRUE


def local_name(node: etree._Element) -> str:
    """The element's name without its namespace; empty for comments and the like."""
    return etree.QName(node).localname if isinstance(node.tag, str) else ""


def children(node: etree._Element, name: str) -> list[etree._Element]:
    """The direct children called ``name`` (any namespace)."""
    return [child for child in node if local_name(child) == name]


def schema_documents(root: etree._Element) -> list[etree._Element]:
    """The schema documents a file holds: the root itself when it is one, or those in a
    data package as Campaign exports it (``<package><entities schema="xtk:srcSchema">
    <srcSchema .../></entities></package>``); none when it is neither."""
    if local_name(root) in SCHEMA_ROOTS:
        return [root]
    if local_name(root) != "package":
        return []
    return [
        document
        for entities in children(root, "entities")
        for document in entities
        if local_name(document) in SCHEMA_ROOTS
    ]


def main_element(root: etree._Element, schema_name: str) -> etree._Element | None:
    """The schema's main ``<element>``: the one named like the schema, else the first."""
    elements = children(root, "element")
    return next(
        (e for e in elements if e.get("name") == schema_name), elements[0] if elements else None
    )


def key_fields(element: etree._Element) -> tuple[str, ...]:
    """The attributes of the element's key: the ``internal`` one, else the first."""
    keys = children(element, "key")
    if not keys:
        return ()
    chosen = next((k for k in keys if is_true(k.get("internal"))), keys[0])
    xpaths = [f.get("xpath", "") for f in children(chosen, "keyfield")]
    return tuple(xpath[1:] for xpath in xpaths if xpath.startswith("@"))


def enumerations(root: etree._Element) -> dict[str, tuple[str, ...]]:
    """The document's enumerations by short name, each with its values in order."""
    found: dict[str, tuple[str, ...]] = {}
    for enumeration in children(root, "enumeration"):
        values = (v.get("value", v.get("name", "")) for v in children(enumeration, "value"))
        found[enumeration.get("name", "")] = tuple(v for v in values if v)
    return found


def enumeration_values(
    found: Mapping[str, tuple[str, ...]], reference: str, owners: tuple[str, ...]
) -> tuple[str, ...]:
    """The values of the enumeration an ``enum`` attribute names, by its short name or
    qualified by one of ``owners`` (the schema's id; for a staging twin, its source's
    too); none for an enumeration of another schema."""
    owner, _, short = reference.rpartition(":")
    return found.get(short, ()) if not owner or owner in owners else ()
