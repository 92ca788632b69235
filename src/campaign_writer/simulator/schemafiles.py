"""A user's own schema, read from the XML an instance exports, as the simulator serves it.

``schema_files = ["acme-event.xml"]`` in the simulator's config makes it a stand-in
for *their* instance: each file holds one ``xtk:srcSchema`` (what a developer edits
and exports from the console) or ``xtk:schema`` (the compiled form that
GetEntityIfMoreRecent returns). What the simulator keeps of it:

* the id, ``namespace:name`` of the root, and its ``label``;
* the main ``<element>`` (the one named like the schema, else the first): its
  ``autoStg``, its ``<attribute>`` children (``name``, ``type``, ``length``,
  ``enum``) and its key: the ``internal`` ``<key>``, else the first, each
  ``<keyfield xpath="@x"/>`` giving a key field;
* the ``<enumeration>`` an attribute's ``enum`` names (in this file; an enumeration
  of another schema, ``enum="nms:recipient:gender"``, keeps the attribute but not
  its values).

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

__all__ = ["MAX_SCHEMA_FILE_BYTES", "load_schema_files", "parse_schema_xml"]

MAX_SCHEMA_FILE_BYTES = 8 * 1024 * 1024
_ROOTS = frozenset({"srcSchema", "schema"})
_TRUE = frozenset({"true", "1", "yes"})


def _local(node: etree._Element) -> str:
    return etree.QName(node).localname if isinstance(node.tag, str) else ""


def _children(node: etree._Element, name: str) -> list[etree._Element]:
    return [child for child in node if _local(child) == name]


def _enumerations(root: etree._Element) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    for enumeration in _children(root, "enumeration"):
        values = tuple(
            value.get("value", value.get("name", "")) for value in _children(enumeration, "value")
        )
        found[enumeration.get("name", "")] = tuple(v for v in values if v)
    return found


def _key(element: etree._Element) -> tuple[str, ...]:
    keys = _children(element, "key")
    if not keys:
        return ()
    chosen = next((k for k in keys if k.get("internal", "").lower() in _TRUE), keys[0])
    fields = [f.get("xpath", "") for f in _children(chosen, "keyfield")]
    return tuple(xpath[1:] for xpath in fields if xpath.startswith("@"))


def parse_schema_xml(data: bytes, where: str) -> SchemaSpec:
    """The schema of one ``xtk:srcSchema`` or ``xtk:schema`` document; ConfigError if not one."""
    try:
        root = read_xml(data, MAX_SCHEMA_FILE_BYTES)
    except UnreadableXml as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if _local(root) not in _ROOTS:
        raise ConfigError(f"{where}: expected a <srcSchema> or <schema> root, got <{_local(root)}>")
    namespace, name = root.get("namespace", ""), root.get("name", "")
    schema_id = f"{namespace}:{name}"
    check_qualified_name(schema_id, f"{where}: namespace and name")
    elements = _children(root, "element")
    if not elements:
        raise ConfigError(f"{where}: {schema_id} has no <element>")
    main = next((e for e in elements if e.get("name") == name), elements[0])
    enumerations = _enumerations(root)
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
        enum_name = node.get("enum", "")
        enum = enumerations.get(enum_name, ())
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
        main.get("autoStg", "").lower() in _TRUE,
        root.get("label", ""),
    )


def load_schema_files(paths: Iterable[str]) -> tuple[SchemaSpec, ...]:
    """Every file's schema, in order; ConfigError names the file that cannot be used."""
    specs = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"schema_files: cannot read {path}: {exc.strerror}") from None
        specs.append(parse_schema_xml(data, f"schema_files: {path}"))
    return tuple(specs)
