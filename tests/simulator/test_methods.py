"""Each method's semantics: what Ingest, IngestExt, Write and WriteCollection do to the tables."""

from __future__ import annotations

import re

from lxml import etree

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import Ok, Reject
from campaign_writer.simulator.codes import COLLECTION_UNSUPPORTED

STG = "dem:sampleTableStg"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def entity(**attrs: str) -> str:
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<sampleTableStg xtkschema="{STG}" {body}/>'


def collection(*rows: dict[str, str], root: str = "sampleTableStg-collection") -> str:
    children = "".join(
        "<sampleTableStg " + " ".join(f'{k}="{v}"' for k, v in row.items()) + "/>" for row in rows
    )
    return f'<{root} xtkschema="{STG}">{children}</{root}>'


def uuids(reply) -> list[str]:
    outcome = reply.outcome()
    assert isinstance(outcome, Ok), reply.body
    return soap.parse_uuids(outcome.response)


def data(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows without the simulator's own __ fields."""
    return [{k: v for k, v in row.items() if not k.startswith("__")} for row in rows]


async def test_ingest_inserts_and_returns_the_new_uuid(simulator) -> None:
    """Ingest without _key inserts every time and returns the row's UUID."""
    creds = await simulator.logon()
    first = uuids(await simulator.write("Ingest", entity(testcol1="a"), creds))
    second = uuids(await simulator.write("Ingest", entity(testcol1="a"), creds))
    assert len(first) == len(second) == 1 and first != second
    assert UUID.fullmatch(first[0])
    rows = await simulator.records(STG)
    assert [r["__uuid"] for r in rows] == first + second
    assert data(rows) == [{"testcol1": "a"}, {"testcol1": "a"}]


async def test_ingest_with_key_upserts_and_returns_no_uuid(simulator) -> None:
    """Ingest with _key reconciles on it: the second call updates, pstrSUuids is empty."""
    creds = await simulator.logon()
    for value in ("v1", "v2"):
        reply = await simulator.write("Ingest", entity(_key="@id", id="K1", testcol1=value), creds)
        assert uuids(reply) == []
        assert b'<pstrSUuids xsi:type="xsd:string"/>' in reply.body
    assert data(await simulator.records(STG)) == [{"id": "K1", "testcol1": "v2"}]


async def test_ingest_collection_returns_comma_separated_uuids(simulator) -> None:
    """A collection Ingest stores every record; its UUIDs come back comma-separated, in order."""
    creds = await simulator.logon()
    rows = [{"testcol1": f"r{i}"} for i in range(5)]
    got = uuids(await simulator.write("Ingest", collection(*rows), creds))
    assert len(got) == 5 and len(set(got)) == 5
    stored = await simulator.records(STG)
    assert [r["__uuid"] for r in stored] == got
    assert [r["testcol1"] for r in stored] == ["r0", "r1", "r2", "r3", "r4"]


async def test_ingest_collections_can_be_refused(simulator) -> None:
    """With ingest_collections off a collection gets (invented) XSV-350105, of unknown cause
    to the writer: its delivery learns the refusal from the evidence."""
    creds = await simulator.logon()
    await simulator.control(ingest_collections=False)
    for method in ("Ingest", "IngestExt"):
        for document in (
            collection({"id": "1", "_key": "@id"}),
            collection({"id": "2", "_key": "@id"}, root="sampleTableStg"),
        ):
            reply = await simulator.write(method, document, creds)
            outcome = reply.outcome()
            assert isinstance(outcome, Reject) and outcome.scope == "unknown"
            assert COLLECTION_UNSUPPORTED in reply.parsed().codes
    assert await simulator.records(STG) == []
    reply = await simulator.write("IngestExt", entity(_key="@id", id="3"), creds)
    assert isinstance(reply.outcome(), Ok)
    # Write and WriteCollection are not affected by the switch.
    reply = await simulator.write("WriteCollection", collection({"id": "4"}), creds)
    assert isinstance(reply.outcome(), Ok)


async def test_ingest_ext_upserts_and_deletes(simulator) -> None:
    """IngestExt inserts a missing key, updates an existing one, deletes on _operation=delete."""
    creds = await simulator.logon()
    doc = collection(
        {"_key": "@id", "id": "A", "testcol1": "a1"},
        {"_key": "@id", "id": "B", "testcol1": "b1"},
        {"_key": "@id", "id": "A", "testcol2": "a2"},
    )
    assert isinstance((await simulator.write("IngestExt", doc, creds)).outcome(), Ok)
    assert data(await simulator.records(STG)) == [
        {"id": "A", "testcol1": "a1", "testcol2": "a2"},
        {"id": "B", "testcol1": "b1"},
    ]
    doc = entity(_key="@id", _operation="delete", id="A")
    assert isinstance((await simulator.write("IngestExt", doc, creds)).outcome(), Ok)
    # Without _key, the schema's key (@id) is used.
    assert isinstance(
        (await simulator.write("IngestExt", entity(id="B", testcol1="b2"), creds)).outcome(), Ok
    )
    assert data(await simulator.records(STG)) == [{"id": "B", "testcol1": "b2"}]


async def test_write_follows_each_operation(simulator) -> None:
    """Write: insertOrUpdate by default, insert always adds, update skips missing, delete, none."""
    creds = await simulator.logon()
    steps = [
        entity(id="1", testcol1="a"),  # insertOrUpdate (default), keyed on @id
        entity(id="1", testcol1="b"),  # updates it
        entity(_operation="insert", id="1", testcol1="dup"),  # insert: key not used
        entity(_operation="update", id="404", testcol1="x"),  # missing: nothing
        entity(_operation="update", _key="@testcol1", id="1", testcol1="dup", testcol2="u"),
        entity(_operation="none", id="9", testcol1="ignored"),
        entity(_operation="insertOrUpdate", _key="@id", id="2", testcol1="c"),
    ]
    for document in steps:
        assert isinstance((await simulator.write("Write", document, creds)).outcome(), Ok)
    assert data(await simulator.records(STG)) == [
        {"id": "1", "testcol1": "b"},
        {"id": "1", "testcol1": "dup", "testcol2": "u"},
        {"id": "2", "testcol1": "c"},
    ]
    assert isinstance(
        (await simulator.write("Write", entity(_operation="delete", id="2"), creds)).outcome(), Ok
    )
    assert [r["id"] for r in await simulator.records(STG)] == ["1", "1"]


async def test_write_collection_accepts_both_roots(simulator) -> None:
    """WriteCollection takes the -collection root and the SDK's entity root with entity children."""
    creds = await simulator.logon()
    docs = [
        collection({"id": "1", "testcol1": "a"}, {"id": "2", "_operation": "insert"}),
        collection({"id": "3"}, {"id": "1", "testcol1": "z"}, root="sampleTableStg"),
    ]
    for document in docs:
        assert isinstance((await simulator.write("WriteCollection", document, creds)).outcome(), Ok)
    assert data(await simulator.records(STG)) == [
        {"id": "1", "testcol1": "z"},
        {"id": "2"},
        {"id": "3"},
    ]
    rec = (
        '<recipient-collection xtkschema="nms:recipient">'
        '<recipient _key="@email" email="a@example.com" points="3"/>'
        '<recipient email="b@example.com" _operation="insert"/></recipient-collection>'
    )
    assert isinstance((await simulator.write("Write", rec, creds)).outcome(), Ok)
    assert len(await simulator.records("nms:recipient")) == 2


async def test_memo_values_as_child_elements(simulator) -> None:
    """An attribute can come as a child element's text (long text, CDATA)."""
    creds = await simulator.logon()
    doc = (
        '<recipientStg xtkschema="nms:recipientStg" _key="@email" email="m@example.com">'
        "<comment><![CDATA[line 1 <b>&</b>]]></comment></recipientStg>"
    )
    assert isinstance((await simulator.write("IngestExt", doc, creds)).outcome(), Ok)
    rows = data(await simulator.records("nms:recipientStg"))
    assert rows == [{"email": "m@example.com", "comment": "line 1 <b>&</b>"}]


async def test_get_entity_serves_the_session_schema_and_known_schemas(simulator) -> None:
    """GetEntityIfMoreRecent serves xtk:session (persist interface), known schemas, or empty."""
    creds = await simulator.logon()

    async def entity_of(pk: str) -> etree._Element | None:
        reply = await simulator.call(
            "GetEntityIfMoreRecent",
            [
                soap.Param("pk", "string", pk),
                soap.Param("md5", "string", ""),
                soap.Param("mustExist", "boolean", "false"),
            ],
            creds,
        )
        outcome = reply.outcome()
        assert isinstance(outcome, Ok) and outcome.response.namespace == "urn:wpp:default"
        out = outcome.response.outputs[0]
        assert out.name == "pdomDoc" and out.xsi_type == "ns:Element"
        return out.element

    session = await entity_of("xtk:schema|xtk:session")
    assert session is not None and session.get("implements") == "xtk:persist"
    persist = session.find("{urn:wpp:default}interface")
    names = [m.get("name") for m in persist]
    assert {"Write", "WriteCollection", "Ingest", "IngestExt"} <= set(names)
    staged = await entity_of("xtk:schema|dem:sampleTable")
    element = staged.find("{urn:wpp:default}element")
    assert element.get("autoStg") == "true"
    attrs = {a.get("name"): a.get("length") for a in element.iter("{urn:wpp:default}attribute")}
    assert attrs == {"id": "64", "testcol1": "255", "testcol2": "255"}
    assert await entity_of("xtk:schema|cus:nothing") is None


async def test_user_info_and_logoff(simulator) -> None:
    """GetUserInfo returns the operator; after Logoff the session no longer works."""
    creds = await simulator.logon()
    reply = await simulator.call("GetUserInfo", [], creds)
    outcome = reply.outcome()
    assert isinstance(outcome, Ok)
    assert outcome.response.outputs[0].element.get("login") == "admin"
    assert isinstance((await simulator.call("Logoff", [], creds)).outcome(), Ok)
    reply = await simulator.call("GetUserInfo", [], creds)
    assert not isinstance(reply.outcome(), Ok)
