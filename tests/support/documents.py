"""Test helpers over the staging documents: a record's queue form and whole documents.

The writer itself renders a record once at intake and joins fragments per batch
(``campaign.documents``); tests want to build from and read back whole records.
"""

from __future__ import annotations

from collections.abc import Iterable

from campaign_writer.campaign.documents import (
    StagingRecord,
    fragments_document,
    parse_fragment,
    render_fragment,
)

__all__ = ["build_collection", "build_entity", "decode_record", "encode_record"]


def encode_record(record: StagingRecord) -> bytes:
    """The queue's on-disk form of a record: its rendered fragment, UTF-8."""
    return render_fragment(record.attrs, record.operation, record.key).encode()


def decode_record(data: bytes) -> StagingRecord:
    """The record a queued fragment holds."""
    return parse_fragment(data.decode())


def build_entity(schema_id: str, record: StagingRecord) -> str:
    """A one-entity document whose root carries ``xtkschema``."""
    return fragments_document(schema_id, [encode_record(record).decode()], collection=False)


def build_collection(schema_id: str, records: Iterable[StagingRecord]) -> str:
    """A ``<element>-collection`` document of ``records``."""
    fragments = [render_fragment(r.attrs, r.operation, r.key) for r in records]
    return fragments_document(schema_id, fragments, collection=True)
