"""The replication of staged rows to the Cloud DB, as ``ffdaReplicateStagingData`` does it.

On a v8 instance, Ingest and IngestExt write into the local staging table
(``<ns>:<name>Stg``); the rows reach the source schema in the Cloud DB only when the
``ffdaReplicateStagingData`` workflow runs (hourly) or on demand
(``nms.replicationStrategy.StartReplicateStagingData``). A campaign reading the
source schema sees a record only after that (``campaign-protocol.md`` §4.2).

:func:`replicate` plays one run: every row of every staging table is merged into its
source schema on the source's key (inserted when the source has no key or no row
with it), stamped ``__replicated_at``, and removed from staging. Rows without a key
value are inserted. The simulator runs it every ``replicate_interval_s`` seconds
(0: never) and on the control action ``replicate_now``, and reports in its stats how
long the oldest row moved had waited in staging (``last_replication_max_lag_s``).
How Adobe's workflow batches, orders or retains rows is not public, so this model
keeps only the lag. Nor is how a delete sent to staging (IngestExt with
``_operation="delete"``, itself INFERRED) reaches the Cloud DB: here it removes the
staged row only, so a row already replicated stays in the source schema.
"""

from __future__ import annotations

from typing import NamedTuple

from .tables import COMMITTED_AT, UUID, Store

__all__ = ["REPLICATED_AT", "Replicated", "replicate"]

REPLICATED_AT = "__replicated_at"


class Replicated(NamedTuple):
    """One run: rows moved, and the longest a moved row had waited in staging (seconds
    from the call that last wrote it; None when no row moved)."""

    moved: int
    max_lag_s: float | None


def replicate(store: Store, now: float) -> Replicated:
    """Move every staged row to its source schema."""
    moved = 0
    oldest: float | None = None
    for schema_id, staging in store.tables.items():
        source_id = schema_id.removesuffix("Stg")
        if source_id == schema_id or not staging.rows:
            continue
        source = store.table(source_id)
        if source is None or not source.schema.auto_stg:
            continue
        keys = source.schema.keys
        for rowid, row in list(staging.rows.items()):
            attrs = {name: value for name, value in row.items() if name in source.schema.allowed}
            committed = row.get(COMMITTED_AT, "")
            attrs[COMMITTED_AT] = committed
            if committed:
                oldest = float(committed) if oldest is None else min(oldest, float(committed))
            attrs[REPLICATED_AT] = f"{now:.6f}"
            values = tuple(attrs.get(k, "") for k in keys)
            found = source.find(keys, values) if keys and all(values) else None
            if found is None:
                if UUID in row:
                    attrs[UUID] = row[UUID]
                source.insert(attrs)
            else:
                source.merge(found, attrs)
            staging.delete(rowid)
            moved += 1
        staging.changed()
        source.changed()
    store.commit()
    return Replicated(moved, None if oldest is None else max(0.0, now - oldest))
