"""What Write, WriteCollection, Ingest and IngestExt do to the tables.

Semantics (``campaign-protocol.md`` section 4):

* **Ingest** inserts and returns the new row's UUID in ``pstrSUuids``; a record
  with ``_key`` is upserted on that key instead and adds no UUID. Several UUIDs
  (collections) are comma-separated, in record order.
* **IngestExt** upserts on ``_key`` (or the schema key); ``_operation="delete"``
  deletes, ``none`` skips.
* **Write / WriteCollection** follow ``_operation``: ``insert`` (key unused),
  ``insertOrUpdate`` (the default), ``update`` (nothing if missing), ``delete``,
  ``none``; the key is ``_key`` or else the schema's key.

A document is one entity (``<sampleTableStg xtkschema=.../>``), a
``<name>-collection`` root, or, as Adobe's SDK writes collections, an entity root
whose children are entities. What Ingest and IngestExt do with a collection is
not established for a real instance, so ``ingest_collections`` plays each guess:
``accept`` (every record), ``refuse`` (a collection fault) or ``partial`` (only the
first record is read and stored, the rest dropped unseen, and the call answers as a
success: an unkeyed Ingest returns that one record's UUID).

Each call is a transaction: every record is checked first, and the first bad one
fails the call with a fault naming it (``record 3 of 10, id='A3'``; the ``strict``
profile names none, see :mod:`.refusals`); only then are the changes applied.
Nothing awaits in between, so concurrent calls never see each other half-done.
Per-record work is one dict copy of the attributes, set checks and the type checks
of non-string attributes.

With ``unique_keys`` on, the schema key is a unique index, as on a local PostgreSQL
table: an insert (``_operation="insert"``, or Ingest without ``_key``) whose key
values are already stored, or repeat an earlier record of the call, fails the call
with the code-less duplicate-key fault.
"""

from __future__ import annotations

from typing import NamedTuple

from lxml import etree

from .auth import Principal
from .codes import BAD_VALUE, MISSING_KEY, UNKNOWN_ATTRIBUTE, UNKNOWN_SCHEMA
from .faults import SimFault, poisoned
from .refusals import Refusals
from .schemas import Catalog, Schema
from .tables import COMMITTED_AT, UUID, Store, Table, new_uuids

__all__ = ["WRITE_METHODS", "Knobs", "Written", "count_entities", "write"]

WRITE_METHODS = frozenset({"Write", "WriteCollection", "Ingest", "IngestExt"})
_INGEST = frozenset({"Ingest", "IngestExt"})
_OPERATIONS = frozenset({"insert", "insertOrUpdate", "update", "delete", "none"})
_SEPARATOR = "\x1f"


class Knobs(NamedTuple):
    """The config values a write depends on, the profile's choices already made."""

    collections: str  # accept, refuse or partial
    poison_rate: float
    poison_marker: str
    poison_style: str  # coded, duplicate or masked
    unique_keys: bool
    strict: bool


class Written(NamedTuple):
    """What a successful write call did; ``partial``: a collection lost all but one record."""

    schema_id: str
    records: int
    uuids: list[str]
    partial: bool = False


class _Change(NamedTuple):
    operation: str  # insert, upsert, update, delete
    names: tuple[str, ...]
    values: tuple[str, ...]
    attrs: dict[str, str]
    want_uuid: bool


def _local(tag: object) -> str:
    text = str(tag)
    return text.rpartition("}")[2] if text.startswith("{") else text


def count_entities(doc: etree._Element | None) -> int:
    """How many records a document carries, without checking them (for latency)."""
    if doc is None:
        return 0
    root = _local(doc.tag)
    if root.endswith("-collection") or (len(doc) and _local(doc[0].tag) == root):
        return len(doc)
    return 1


def _schema_of(call: Refusals, doc: etree._Element, catalog: Catalog, method: str) -> Schema:
    schema_id = doc.get("xtkschema")
    if not schema_id and len(doc) and isinstance(doc[0].tag, str):
        schema_id = doc[0].get("xtkschema")
    if not schema_id:
        raise call.schema_fault(UNKNOWN_SCHEMA, "The document has no 'xtkschema' attribute.")
    call.schema_id = schema_id
    schema = catalog.get(schema_id)
    if schema is None:
        raise call.schema_fault(UNKNOWN_SCHEMA, f"The schema '{schema_id}' is unknown.")
    call.schema = schema
    if method in _INGEST and not schema.staging:
        raise call.schema_fault(
            UNKNOWN_SCHEMA,
            f"The schema '{schema_id}' is not a staging schema; {method} needs '{schema_id}Stg'.",
        )
    return schema


def _entities(
    call: Refusals, doc: etree._Element, schema: Schema, method: str, collections: str
) -> tuple[list[etree._Element], bool]:
    """The entities of ``doc``, and whether it is a collection."""
    element = schema.element
    root = _local(doc.tag)
    if root == f"{element}-collection":
        collection = True
    elif root == element:
        collection = any(_local(child.tag) == element for child in doc)
    else:
        raise call.schema_fault(
            UNKNOWN_SCHEMA, f"Element '{root}' is not an entity of schema '{schema.id}'."
        )
    if not collection:
        return [doc], False
    if method in _INGEST and collections == "refuse":
        raise call.collection(
            f"{method} does not accept a collection document ('{root}'); send one entity per call."
        )
    entities: list[etree._Element] = doc.findall(element)  # in C: the common case
    if len(entities) == len(doc):
        return entities, True
    entities = []  # namespaced entities, or a stray element to name in the fault
    for child in doc:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        if tag != element and _local(tag) != element:
            raise call.schema_fault(
                UNKNOWN_ATTRIBUTE, f"Element '{_local(tag)}' is not defined in '{root}'."
            )
        entities.append(child)
    return entities, True


def _key_names(
    call: Refusals, spec: str, schema: Schema, cache: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    names = cache.get(spec)
    if names is not None:
        return names
    parsed = []
    for part in spec.split(","):
        path = part.strip().removeprefix("[").removesuffix("]").strip()
        name = path.removeprefix("@")
        if not path.startswith("@") or not name or "/" in name:
            raise call.schema_fault(BAD_VALUE, f"Unsupported reconciliation key _key='{spec}'.")
        if name not in schema.allowed:
            raise call.schema_fault(
                UNKNOWN_ATTRIBUTE, f"Key attribute '{name}' is not defined in schema '{schema.id}'."
            )
        parsed.append(name)
    cache[spec] = names = tuple(parsed)
    return names


def _check_access(call: Refusals, principal: Principal, schema: Schema) -> None:
    if principal.schemas and schema.id not in principal.schemas:
        raise call.access(
            f"Access denied: operator '{principal.login}' may not write to schema '{schema.id}'."
        )


def write(
    method: str,
    service: str,
    doc: etree._Element | None,
    *,
    catalog: Catalog,
    store: Store,
    principal: Principal,
    knobs: Knobs,
    marker_in_body: bool,
    stamp: str,
) -> Written:
    """Check every record of ``doc``, then apply them; raises SimFault on the first bad one."""
    call = Refusals(method, service, strict=knobs.strict)
    if doc is None:
        raise call.schema_fault(BAD_VALUE, f"{method} needs a document as its first parameter.")
    try:
        schema = _schema_of(call, doc, catalog, method)
        _check_access(call, principal, schema)
        entities, collection = _entities(call, doc, schema, method, knobs.collections)
        received = len(entities)
        partial = collection and method in _INGEST and knobs.collections == "partial"
        if partial:
            del entities[1:]
        changes = _check(call, schema, entities, method, knobs, marker_in_body)
        table = store.table(schema.id)
        assert table is not None
        if knobs.unique_keys and schema.keys:
            _check_unique(call, table, schema.keys, changes)
    except SimFault as fault:
        fault.schema = call.schema_id
        raise
    uuids = _apply(table, changes, stamp)
    store.commit()
    return Written(schema.id, received, uuids, partial and received > 1)


def _check(
    call: Refusals,
    schema: Schema,
    entities: list[etree._Element],
    method: str,
    knobs: Knobs,
    marker_in_body: bool,
) -> list[_Change]:
    allowed = schema.allowed
    lengths = schema.string_lengths
    checks = schema.checks
    default_keys = schema.keys
    ingest = method == "Ingest"
    ingest_ext = method == "IngestExt"
    marker = knobs.poison_marker if marker_in_body else ""
    rate = knobs.poison_rate
    key_cache: dict[str, tuple[str, ...]] = {}
    count = len(entities)
    changes: list[_Change] = []
    append = changes.append
    for index, entity in enumerate(entities):
        # dict(items()) is twice as fast as dict(attrib); names and values are str here.
        attrs: dict[str, str] = dict(entity.items())  # type: ignore[arg-type]
        operation = attrs.pop("_operation", None)
        key_spec = attrs.pop("_key", None)
        attrs.pop("xtkschema", None)
        if len(entity):
            for child in entity:
                if isinstance(child.tag, str):
                    attrs[_local(child.tag)] = child.text or ""
        if key_spec:
            names = key_cache.get(key_spec) or _key_names(call, key_spec, schema, key_cache)
        else:
            names = default_keys
        if not allowed.issuperset(attrs):
            for name in list(attrs):
                if name not in allowed:
                    if name.startswith("_"):
                        del attrs[name]  # a directive the simulator does not model
                        continue
                    raise call.record(
                        UNKNOWN_ATTRIBUTE,
                        f"Attribute '{name}' is not defined in schema '{schema.id}'.",
                        index,
                        count,
                        attrs,
                        names,
                    )
        for name, limit in lengths:
            value = attrs.get(name)
            if value is not None and len(value) > limit:
                pg_error = f"value too long for type character varying({limit})"
                raise call.database(
                    pg_error,
                    f"PostgreSQL error: ERROR:  {pg_error} (attribute '{name}').",
                    index,
                    count,
                    attrs,
                    names,
                )
        for name, check in checks:
            value = attrs.get(name)
            if value:
                problem = check(value)
                if problem is not None:
                    raise call.record(
                        BAD_VALUE,
                        f"Invalid value for attribute '{name}': {problem}.",
                        index,
                        count,
                        attrs,
                        names,
                    )
        # What the record asks for, per method.
        if ingest:
            if operation not in (None, "insert", "insertOrUpdate"):
                raise call.record(
                    BAD_VALUE,
                    f"Ingest only inserts; _operation='{operation}' is not allowed.",
                    index,
                    count,
                    attrs,
                    names,
                )
            kind = "upsert" if key_spec else "insert"
        elif operation is None:
            kind = "upsert"
        elif operation not in _OPERATIONS:
            raise call.record(
                BAD_VALUE, f"Invalid _operation '{operation}'.", index, count, attrs, names
            )
        elif operation == "none":
            continue
        elif operation == "insertOrUpdate" or (ingest_ext and operation != "delete"):
            kind = "upsert"
        else:
            kind = operation
        values: tuple[str, ...] = ()
        if kind != "insert":
            try:
                values = tuple([attrs[n] for n in names])
            except KeyError:
                values = ("",)
            if not values or "" in values:
                missing = [n for n in names if not attrs.get(n)] or ["(no key defined)"]
                raise call.record(
                    MISSING_KEY,
                    f"No value for key '{', '.join('@' + m for m in missing)}' of schema"
                    f" '{schema.id}'; cannot reconcile the record.",
                    index,
                    count,
                    attrs,
                    names,
                )
        if marker and any(marker in v for v in attrs.values()):
            raise call.poison(knobs.poison_style, "marker", index, count, attrs, names)
        if rate:
            text = (
                _SEPARATOR.join(values)
                if values
                else _SEPARATOR.join(f"{k}={v}" for k, v in sorted(attrs.items()))
            )
            if poisoned(text, rate):
                raise call.poison(knobs.poison_style, "rate", index, count, attrs, names)
        append(_Change(kind, names, values, attrs, ingest and not key_spec))
    return changes


def _check_unique(
    call: Refusals, table: Table, keys: tuple[str, ...], changes: list[_Change]
) -> None:
    """Refuse the call if one of its inserts meets a stored key or an earlier record's."""
    stored = table.index(keys)
    present: dict[tuple[str, ...], bool] = {}  # key values this call creates or deletes
    for change in changes:
        values = tuple([change.attrs.get(k, "") for k in keys])
        if "" in values:
            continue  # NULL never meets a unique index
        exists = present.get(values)
        if exists is None:
            exists = values in stored
        if change.operation == "insert":
            if exists:
                raise call.duplicate()
            present[values] = True
        elif change.operation == "delete" and change.names == keys:
            present[values] = False
        elif change.operation == "upsert":
            present[values] = True
    # Not tracked, being rare within one call: an update, which gives a row these key
    # values only if its row exists, and a delete reconciled on another key.


def _apply(table: Table, changes: list[_Change], stamp: str) -> list[str]:
    uuids = new_uuids(len(changes))
    returned: list[str] = []
    last_names: tuple[str, ...] = ()
    index: dict[tuple[str, ...], int] = {}
    for change in changes:
        attrs = change.attrs
        attrs[COMMITTED_AT] = stamp
        kind = change.operation
        if kind == "insert":
            attrs[UUID] = row_uuid = next(uuids)
            table.insert(attrs)
            if change.want_uuid:
                returned.append(row_uuid)
            continue
        if change.names is not last_names:  # records of a call almost always share a key
            last_names = change.names
            index = table.index(last_names)
        rowid = index.get(change.values)
        if rowid is None:
            if kind == "upsert":
                attrs[UUID] = next(uuids)
                table.insert(attrs)
        elif kind == "delete":
            table.delete(rowid)
        else:
            table.merge(rowid, attrs)
    table.changed()
    return returned
