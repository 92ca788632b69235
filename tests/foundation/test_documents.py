"""Rendered record fragments and the documents built from them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from campaign_writer.campaign.documents import (
    StagingRecord,
    fragments_document,
    parse_fragment,
    render_fragment,
)
from campaign_writer.errors import XmlTextError
from tests.support.documents import build_collection, decode_record, encode_record

XML_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff"),
    max_size=30,
).map(lambda s: "".join(c for c in s if c in "\t\n\r" or ord(c) >= 0x20))
NAMES = st.sampled_from(["id", "testcol1", "testcol2", "email", "first-name", "x.y"])


@given(
    st.dictionaries(NAMES, XML_TEXT, max_size=6),
    st.sampled_from([None, "insert", "insertOrUpdate", "update", "delete"]),
    st.sampled_from([None, "@id", "@email, [@folder-id]"]),
)
def test_fragment_round_trips_through_parse_and_xml(
    attrs: dict[str, str], operation: str | None, key: str | None
) -> None:
    """A record rendered to a fragment parses back identical, and so does the XML."""
    record = StagingRecord(attrs, operation, key)
    assert decode_record(encode_record(record)) == record
    fragment = render_fragment(attrs, operation, key)
    assert parse_fragment(fragment) == record
    element = etree.fromstring(
        fragments_document("dem:sampleTableStg", [fragment], collection=False).encode()
    )
    expected = dict(attrs)
    if operation is not None:
        expected["_operation"] = operation
    if key is not None:
        expected["_key"] = key
    expected["xtkschema"] = "dem:sampleTableStg"
    assert dict(element.attrib) == expected


def test_escaped_entity_texts_stay_literal() -> None:
    """Text that looks like an escape ("&amp;", "&#10;") comes back as written."""
    record = StagingRecord({"v": "&amp; &lt; &#10; &quot;x&quot;"})
    assert parse_fragment(render_fragment(record.attrs)) == record


def test_collection_of_fragments_equals_collection_of_records() -> None:
    """Joining fragments gives the same document as building from records."""
    records = [StagingRecord({"id": str(i), "t": f"a&b<{i}>"}, None, "@id") for i in range(3)]
    fragments = [render_fragment(r.attrs, r.operation, r.key) for r in records]
    built = fragments_document("dem:sampleTableStg", fragments, collection=True)
    assert built == build_collection("dem:sampleTableStg", records)
    root = etree.fromstring(built.encode())
    assert root.tag == "sampleTableStg-collection"
    assert [child.get("t") for child in root] == ["a&b<0>", "a&b<1>", "a&b<2>"]


def test_single_entity_document_takes_exactly_one_fragment() -> None:
    """A single-entity document refuses zero or several records."""
    with pytest.raises(ValueError, match="holds one record"):
        fragments_document("dem:sampleTableStg", ["", ""], collection=False)


def test_rendering_refuses_characters_xml_cannot_carry() -> None:
    """A forbidden character is refused at rendering, naming its attribute."""
    with pytest.raises(XmlTextError, match="testcol1"):
        render_fragment({"testcol1": "bad\x00"})
