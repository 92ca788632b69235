"""A user's own schema, read from the XML an instance exports, as the simulator serves it.

``schema_files = ["acme-event.xml"]`` in the simulator's config makes it a stand-in
for *their* instance: each file holds one ``xtk:srcSchema`` (what a developer edits
in the console) or ``xtk:schema`` (the compiled form that GetEntityIfMoreRecent
returns), or a data package of them as the console exports it (``<package>`` with
``<entities schema="xtk:srcSchema">``). What the simulator keeps of each:

* the id, ``namespace:name`` of the root, and its ``label``;
* the main ``<element>`` (the one named like the schema, else the first): its
  ``autoStg``, its ``<attribute>`` children (``name``, ``type``, ``length``,
  ``enum``) and its key: the ``internal`` ``<key>``, else the first, each
  ``<keyfield xpath="@x"/>`` giving a key field;
* the ``<enumeration>`` an attribute's ``enum`` names (in this file, by its short
  name or qualified by the schema's id; an enumeration of another schema,
  ``enum="nms:recipient:gender"``, keeps the attribute but not its values).

Links, nested elements, SQL names and everything else are left out: the simulator
stores records flat, as a staging table holds them. Files are parsed with the
hardened parser (no DTD, no entities, bounded size).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lxml import etree

from ..errors import ConfigError
from .configtables import check_name, check_qualified_name
from .schemas import AttributeSpec, SchemaSpec
from .xmlread import UnreadableXml, read_xml
from .xtktypes import XTK_TYPES

__all__ = ["MAX_SCHEMA_FILE_BYTES", "load_schema_files", "parse_schema_file"]

# The simulator reads these documents with code of its own, as it reads requests
# (see :mod:`.xmlread`): the writer's reader (campaign/schemaxml.py) follows the same
# rules, and the fidelity tests compare the two readings.
MAX_SCHEMA_FILE_BYTES = 8 * 1024 * 1024
_ROOTS = frozenset({"srcSchema", "schema"})
_TRUE = frozenset({"true", "1", "yes"})


def _is_true(value: str | None) -> bool:
    return (value or "").lower() in _TRUE


def _local(node: etree._Element) -> str:
    return etree.QName(node).localname if isinstance(node.tag, str) else ""


def _children(node: etree._Element, name: str) -> list[etree._Element]:
    return [child for child in node if _local(child) == name]


def _documents(root: etree._Element) -> list[etree._Element]:
    """The root when it is a schema; the schemas of a ``<package>`` export; else none."""
    if _local(root) in _ROOTS:
        return [root]
    if _local(root) != "package":
        return []
    return [
        document
        for entities in _children(root, "entities")
        for document in entities
        if _local(document) in _ROOTS
    ]


def _enumerations(root: etree._Element) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for enumeration in _children(root, "enumeration"):
        values = (v.get("value", v.get("name", "")) for v in _children(enumeration, "value"))
        found[enumeration.get("name", "")] = tuple(v for v in values if v)
    return found


def _enum_values(
    found: dict[str, tuple[str, ...]], reference: str, schema_id: str
) -> tuple[str, ...]:
    """An ``enum`` reference's values: by short name, or qualified by this schema's id."""
    owner, _, short = reference.rpartition(":")
    return found.get(short, ()) if owner in ("", schema_id) else ()


def _key(element: etree._Element) -> tuple[str, ...]:
    keys = _children(element, "key")
    if not keys:
        return ()
    chosen = next((k for k in keys if _is_true(k.get("internal"))), keys[0])
    fields = [f.get("xpath", "") for f in _children(chosen, "keyfield")]
    return tuple(xpath[1:] for xpath in fields if xpath.startswith("@"))


def parse_schema_file(data: bytes, where: str) -> tuple[SchemaSpec, ...]:
    """Every schema of a file: one document, or a data package of them, as exported."""
    try:
        root = read_xml(data, MAX_SCHEMA_FILE_BYTES)
    except UnreadableXml as exc:
        raise ConfigError(f"{where}: {exc}") from None
    documents = _documents(root)
    if not documents:
        raise ConfigError(
            f"{where}: expected a <srcSchema> or <schema> root (or a <package> of them),"
            f" got <{_local(root)}>"
        )
    return tuple(_spec(document, where) for document in documents)


def _spec(root: etree._Element, where: str) -> SchemaSpec:
    namespace, name = root.get("namespace", ""), root.get("name", "")
    schema_id = f"{namespace}:{name}"
    check_qualified_name(schema_id, f"{where}: namespace and name")
    elements = _children(root, "element")
    if not elements:
        raise ConfigError(f"{where}: {schema_id} has no <element>")
    main = next((e for e in elements if e.get("name") == name), elements[0])
    found = _enumerations(root)
    attributes = []
    for node in _children(main, "attribute"):
        attribute = node.get("name", "")
        check_name(attribute, f"{where}: attribute")
        type_name = node.get("type", "string")
        if type_name not in XTK_TYPES:
            raise ConfigError(f"{where}: attribute {attribute!r} has type {type_name!r}, not XTK")
        raw_length = node.get("length")
        length: int | None = None
        if raw_length is not None:
            if not raw_length.isdigit() or int(raw_length) < 1:
                raise ConfigError(f"{where}: attribute {attribute!r}: length {raw_length!r}")
            length = int(raw_length)
        # Served under its short name, whichever way the file spells it.
        enum_name = node.get("enum", "").rpartition(":")[2]
        enum = _enum_values(found, node.get("enum", ""), schema_id)
        attributes.append(
            AttributeSpec(attribute, type_name, length, enum, enum_name if enum else "")
        )
    if not attributes:
        raise ConfigError(f"{where}: {schema_id} has no attribute on its main element")
    names = {a.name for a in attributes}
    keys = _key(main)
    for key in keys:
        if key not in names:
            raise ConfigError(f"{where}: key field {key!r} is not an attribute of {schema_id}")
    return SchemaSpec(
        schema_id,
        tuple(attributes),
        keys,
        _is_true(main.get("autoStg")),
        root.get("label", ""),
    )


def load_schema_files(paths: Iterable[str]) -> tuple[SchemaSpec, ...]:
    """Every file's schema, in order; ConfigError names the file that cannot be used."""
    specs: list[SchemaSpec] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"schema_files: cannot read {path}: {exc.strerror}") from None
        specs.extend(parse_schema_file(data, f"schema_files: {path}"))
    return tuple(specs)
