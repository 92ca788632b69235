"""Stored records: one in-memory table per schema, optionally kept in SQLite.

A row is a dict of attribute name to the value as sent (a string), plus two
simulator fields that are not Campaign attributes and are never sent in a SOAP
answer:

* ``__uuid``: the UUID the row got when it was created (Ingest returns it);
* ``__committed_at``: unix time (seconds, as a decimal string) of the call that last
  wrote the row, for end-to-end latency measurements.

Rows are found by key through indexes built on first use for each key (each
``_key`` a writer sends can name different attributes) and kept up to date after.
If several rows share a key value (Ingest inserts do not reconcile), the newest one
is the one a keyed write finds.

With a database file, each call's changes are written in one SQLite transaction
before the call is answered, so a restarted simulator has every record it
acknowledged (WAL, ``synchronous=NORMAL``: safe against a process crash).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator

import orjson

from ..errors import ConfigError
from .schemas import Catalog, Schema

__all__ = ["COMMITTED_AT", "UUID", "Store", "Table", "new_uuids"]

UUID = "__uuid"
COMMITTED_AT = "__committed_at"

Row = dict[str, str]
KeyNames = tuple[str, ...]
KeyValues = tuple[str, ...]


def new_uuids(count: int) -> Iterator[str]:
    """``count`` random version-4 UUIDs, lower-case with hyphens (one urandom call)."""
    data = os.urandom(16 * count).hex()
    for i in range(0, 32 * count, 32):
        h = data[i : i + 32]
        yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class Table:
    """The rows of one schema, by row id, with lazily built key indexes."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows: dict[int, Row] = {}
        self._indexes: dict[KeyNames, dict[KeyValues, int]] = {}
        self._next = 1
        self.version = 0
        self._snapshot: tuple[int, list[Row]] | None = None
        self.dirty: set[int] | None = None  # row ids to persist; None when not persisted

    def __len__(self) -> int:
        return len(self.rows)

    def index(self, names: KeyNames) -> dict[KeyValues, int]:
        index = self._indexes.get(names)
        if index is None:
            index = {}
            for rowid, row in self.rows.items():
                index[tuple([row.get(n, "") for n in names])] = rowid
            self._indexes[names] = index
        return index

    def find(self, names: KeyNames, values: KeyValues) -> int | None:
        return self.index(names).get(values)

    def _touch(self, rowid: int) -> None:
        if self.dirty is not None:
            self.dirty.add(rowid)

    def insert(self, row: Row) -> int:
        """Add ``row`` (which already carries its meta fields); returns its row id."""
        rowid = self._next
        self._next += 1
        self.rows[rowid] = row
        for names, index in self._indexes.items():
            index[tuple([row.get(n, "") for n in names])] = rowid
        self._touch(rowid)
        return rowid

    def merge(self, rowid: int, attrs: Row) -> None:
        """Update the given attributes of a row (others keep their values)."""
        row = self.rows[rowid]
        moved = [
            (names, index, tuple(row.get(n, "") for n in names))
            for names, index in self._indexes.items()
            if any(n in attrs for n in names)
        ]
        row.update(attrs)
        for names, index, old in moved:
            if index.get(old) == rowid:
                del index[old]
            index[tuple([row.get(n, "") for n in names])] = rowid
        self._touch(rowid)

    def delete(self, rowid: int) -> None:
        row = self.rows.pop(rowid)
        for names, index in self._indexes.items():
            key = tuple(row.get(n, "") for n in names)
            if index.get(key) == rowid:
                del index[key]
        self._touch(rowid)

    def changed(self) -> None:
        self.version += 1

    def page(self, offset: int, limit: int) -> list[Row]:
        """Rows in insertion order; the list is rebuilt only after a change."""
        if self._snapshot is None or self._snapshot[0] != self.version:
            self._snapshot = (self.version, list(self.rows.values()))
        return self._snapshot[1][offset : offset + limit]

    def clear(self) -> None:
        if self.dirty is not None:
            self.dirty.update(self.rows)
        self.rows.clear()
        self._indexes.clear()
        self.changed()

    def load(self, rowid: int, row: Row) -> None:
        self.rows[rowid] = row
        self._next = max(self._next, rowid + 1)


class Store:
    """Every table of the tenant, and the optional SQLite file behind them."""

    def __init__(self, catalog: Catalog, db_path: str | None = None) -> None:
        self.tables = {schema.id: Table(schema) for schema in catalog}
        self._db: sqlite3.Connection | None = None
        if db_path:
            self._open(db_path)

    def _open(self, path: str) -> None:
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS records (schema TEXT NOT NULL, rowid INTEGER NOT NULL,"
                " data BLOB NOT NULL, PRIMARY KEY (schema, rowid)) WITHOUT ROWID"
            )
            rows = db.execute("SELECT schema, rowid, data FROM records ORDER BY schema, rowid")
            for schema_id, rowid, data in rows:
                table = self.tables.get(schema_id)
                if table is not None:  # a schema dropped from the config is left on disk
                    table.load(rowid, orjson.loads(data))
        except sqlite3.Error as exc:
            raise ConfigError(f"db: cannot use {path}: {exc}") from None
        for table in self.tables.values():
            table.dirty = set()
            table.changed()
        self._db = db

    def table(self, schema_id: str) -> Table | None:
        return self.tables.get(schema_id)

    def commit(self) -> None:
        """Write the rows changed since the last commit to the database, if there is one."""
        db = self._db
        if db is None:
            return
        upserts: list[tuple[str, int, bytes]] = []
        deletes: list[tuple[str, int]] = []
        for schema_id, table in self.tables.items():
            if not table.dirty:
                continue
            for rowid in table.dirty:
                row = table.rows.get(rowid)
                if row is None:
                    deletes.append((schema_id, rowid))
                else:
                    upserts.append((schema_id, rowid, orjson.dumps(row)))
            table.dirty.clear()
        if not upserts and not deletes:
            return
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", upserts)
            db.executemany("DELETE FROM records WHERE schema = ? AND rowid = ?", deletes)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def counts(self) -> dict[str, int]:
        return {schema_id: len(table) for schema_id, table in self.tables.items()}

    def clear(self) -> None:
        for table in self.tables.values():
            table.clear()
        self.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
