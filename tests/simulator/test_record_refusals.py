"""Records refused as real instances word it: poison styles, unique keys, partial collections."""

from __future__ import annotations

import re

from campaign_writer.campaign import soap

STG = "dem:sampleTableStg"
EXECUTING = "Error while executing the method '{}' of service 'xtk:persist|xtk:session'."
MASKED = (
    "SOP-330023 An error occurred during the SOAP call."
    " You don't have the required rights to view the detail."
)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def duplicate(constraint: str, label: str) -> str:
    """The detail of campaign-protocol.md 5.4a: no space before 'Impossible', as quoted."""
    return (
        f'PostgreSQL error: ERROR:  duplicate key violates unique constraint "{constraint}"'
        f"Impossible to save document of type '{label}'"
    )


def rows(*attrs: dict[str, str], element: str = "sampleTableStg", schema: str = STG) -> str:
    children = "".join(
        f"<{element} " + " ".join(f'{k}="{v}"' for k, v in a.items()) + "/>" for a in attrs
    )
    return f'<{element}-collection xtkschema="{schema}">{children}</{element}-collection>'


def recipient(**attrs: str) -> str:
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<recipient xtkschema="nms:recipient" {body}/>'


def assert_duplicate(reply, method: str, constraint: str, label: str) -> None:
    assert reply.status == 500
    fault = reply.fault()
    assert fault.faultcode == "SOAP-ENV:Server"
    assert fault.faultstring == EXECUTING.format(method)
    assert fault.detail == duplicate(constraint, label)
    assert fault.codes == ()


async def test_poison_style_masked_hides_the_cause_of_the_marked_record(simulator) -> None:
    """poison_style=masked: a poisoned record's call gets SOP-330023 on HTTP 500, stores none."""
    creds = await simulator.logon()
    await simulator.control(poison_style="masked", fault_status=200)
    good = [{"_key": "@id", "id": str(i)} for i in range(4)]
    bad = {"_key": "@id", "id": "bad", "testcol1": "x__POISON__"}
    reply = await simulator.write("IngestExt", rows(*good[:2], bad, *good[2:]), creds)
    assert reply.status == 500
    fault = reply.fault()
    assert (fault.faultcode, fault.faultstring, fault.detail) == ("SOAP-ENV:Error", MASKED, "")
    assert b"<detail" not in reply.body
    assert await simulator.records(STG) == []
    assert (await simulator.write("IngestExt", rows(*good), creds)).status == 200
    assert len(await simulator.records(STG)) == 4
    assert (await simulator.stats())["faults_by_kind"] == {"data": 1}


async def test_poison_style_duplicate_is_the_code_less_database_refusal(simulator) -> None:
    """poison_style=duplicate: a poisoned record's call gets the exact code-less duplicate key."""
    creds = await simulator.logon()
    await simulator.control(poison_style="duplicate")
    reply = await simulator.write("Write", recipient(email="a@x", firstName="__POISON__"), creds)
    assert_duplicate(reply, "Write", "nmsrecipient_email", "Recipients (nms:recipient)")
    reply = await simulator.write("IngestExt", rows({"id": "1", "testcol2": "__POISON__"}), creds)
    assert_duplicate(
        reply, "IngestExt", "demsampletablestg_id", "Sample table (dem:sampleTableStg)"
    )
    assert await simulator.records("nms:recipient") == []
    assert await simulator.records(STG) == []


async def test_poison_rate_with_duplicate_style_is_stable_per_record(simulator) -> None:
    """poison_rate under poison_style=duplicate refuses the same keys on every attempt."""
    creds = await simulator.logon()
    await simulator.control(poison_style="duplicate", poison_rate=0.3)

    async def refused() -> set[int]:
        bad = set()
        for i in range(40):
            reply = await simulator.write("IngestExt", rows({"_key": "@id", "id": f"k{i}"}), creds)
            if reply.status != 200:
                assert reply.fault().detail == duplicate(
                    "demsampletablestg_id", "Sample table (dem:sampleTableStg)"
                )
                bad.add(i)
        return bad

    first = await refused()
    assert 3 <= len(first) <= 25
    assert await refused() == first


async def test_poison_style_coded_keeps_todays_text(simulator) -> None:
    """poison_style=coded (the default profile's choice) answers the PGS-220000 record fault."""
    creds = await simulator.logon()
    for style in ("", "coded"):
        await simulator.control(poison_style=style)
        reply = await simulator.write(
            "IngestExt", rows({"id": "1", "testcol1": "__POISON__"}), creds
        )
        fault = reply.fault()
        assert fault.faultstring == "SOP-330011 " + EXECUTING.format("IngestExt")
        assert fault.codes == ("SOP-330011", "PGS-220000", "XSV-350023")
        assert "simulated poison record: marker" in fault.detail


async def test_unique_keys_refuse_an_insert_meeting_a_stored_key(simulator) -> None:
    """unique_keys: inserting a stored schema key fails as a duplicate; upserts reconcile."""
    creds = await simulator.logon()
    insert = recipient(_operation="insert", email="a@x", firstName="again")
    assert (await simulator.write("Write", recipient(email="a@x"), creds)).status == 200
    assert (await simulator.write("Write", insert, creds)).status == 200  # knob off: a second row
    assert len(await simulator.records("nms:recipient")) == 2
    await simulator.control(clear_records=True, unique_keys=True)
    assert (await simulator.write("Write", recipient(email="a@x"), creds)).status == 200
    reply = await simulator.write("Write", insert, creds)
    assert_duplicate(reply, "Write", "nmsrecipient_email", "Recipients (nms:recipient)")
    upsert = recipient(email="a@x", firstName="updated")
    assert (await simulator.write("Write", upsert, creds)).status == 200
    stored = await simulator.records("nms:recipient")
    assert [(r["email"], r.get("firstName")) for r in stored] == [("a@x", "updated")]

    staged = '<sampleTableStg xtkschema="dem:sampleTableStg" id="{}" testcol1="{}"/>'
    assert (await simulator.write("Ingest", staged.format("s1", "first"), creds)).status == 200
    reply = await simulator.write("Ingest", staged.format("s1", "second"), creds)
    assert_duplicate(reply, "Ingest", "demsampletablestg_id", "Sample table (dem:sampleTableStg)")
    keyed = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="s1" testcol1="k"/>'
    assert (await simulator.write("Ingest", keyed, creds)).status == 200
    assert [(r["id"], r["testcol1"]) for r in await simulator.records(STG)] == [("s1", "k")]
    assert (await simulator.stats())["faults_by_kind"] == {"duplicate": 2}


async def test_unique_keys_refuse_a_repeat_within_one_call(simulator) -> None:
    """unique_keys: a key inserted twice in one call fails it; delete-then-insert passes."""
    creds = await simulator.logon()
    await simulator.control(unique_keys=True)
    twice = rows(
        {"_operation": "insert", "id": "1"},
        {"_operation": "insert", "id": "2"},
        {"_operation": "insert", "id": "1"},
    )
    reply = await simulator.write("WriteCollection", twice, creds)
    assert_duplicate(
        reply, "WriteCollection", "demsampletablestg_id", "Sample table (dem:sampleTableStg)"
    )
    unkeyed = rows({"testcol1": "a"}, {"id": "9"}, {"id": "9"})
    reply = await simulator.write("Ingest", unkeyed, creds)
    assert_duplicate(reply, "Ingest", "demsampletablestg_id", "Sample table (dem:sampleTableStg)")
    assert await simulator.records(STG) == []
    assert (
        await simulator.write("Write", rows({"id": "3", "testcol1": "old"}), creds)
    ).status == 200
    replace = rows(
        {"_operation": "delete", "id": "3"},
        {"_operation": "insert", "id": "3", "testcol1": "new"},
        {"_operation": "insert", "testcol1": "no key"},
        {"_operation": "insert", "testcol1": "no key"},
    )
    assert (await simulator.write("WriteCollection", replace, creds)).status == 200
    stored = [(r.get("id"), r["testcol1"]) for r in await simulator.records(STG)]
    assert stored == [("3", "new"), (None, "no key"), (None, "no key")]


async def test_unique_constraint_names_a_composite_key_and_falls_back_to_the_name(
    simulator_factory,
) -> None:
    """A schema without a label is named by its name; a two-field key joins both fields."""
    sim = await simulator_factory(
        tps_limit=0,
        latency_ms=0,
        unique_keys=True,
        schemas={
            "acme:Event": {
                "keys": ["eventId", "Kind"],
                "attributes": {"eventId": "string", "Kind": "string", "n": "long"},
            }
        },
    )
    creds = await sim.logon()
    event = '<Event xtkschema="acme:Event" _operation="insert" eventId="e1" Kind="{}"/>'
    assert (await sim.write("Write", event.format("a"), creds)).status == 200
    assert (await sim.write("Write", event.format("b"), creds)).status == 200
    reply = await sim.write("Write", event.format("a"), creds)
    assert_duplicate(reply, "Write", "acmeevent_eventid_kind", "Event (acme:Event)")


async def test_partial_collections_store_only_the_first_record(simulator) -> None:
    """ingest_collections=partial: a collection answers success, stores its first record only."""
    creds = await simulator.logon()
    answer = await simulator.control(ingest_collections="partial")
    assert answer["config"]["ingest_collections"] == "partial"
    reply = await simulator.write("Ingest", rows(*({"testcol1": f"u{i}"} for i in range(3))), creds)
    assert reply.status == 200
    uuids = soap.parse_uuids(reply.response())
    assert len(uuids) == 1 and UUID.fullmatch(uuids[0])
    stored = await simulator.records(STG)
    assert [(r["testcol1"], r["__uuid"]) for r in stored] == [("u0", uuids[0])]

    keyed = [{"_key": "@id", "id": f"k{i}"} for i in range(3)]
    sdk_root = rows(*keyed).replace("sampleTableStg-collection", "sampleTableStg")
    reply = await simulator.write("Ingest", sdk_root, creds)
    assert reply.status == 200 and soap.parse_uuids(reply.response()) == []
    assert b'<pstrSUuids xsi:type="xsd:string"/>' in reply.body
    reply = await simulator.write("IngestExt", rows(*keyed[1:]), creds)
    assert reply.status == 200
    assert b'<IngestExtResponse xmlns="urn:wpp:default"' in reply.body
    assert reply.response().outputs == ()
    # Records after the first are not read at all, even a bad one.
    reply = await simulator.write("IngestExt", rows({"id": "k9"}, {"id": "x", "nope": "1"}), creds)
    assert reply.status == 200
    assert [r.get("id") for r in await simulator.records(STG)] == [None, "k0", "k1", "k9"]
    # Write and WriteCollection do not follow the switch.
    reply = await simulator.write("WriteCollection", rows({"id": "w1"}, {"id": "w2"}), creds)
    assert reply.status == 200
    assert len(await simulator.records(STG)) == 6
    assert (await simulator.stats())["faults_by_kind"] == {"collection_partial": 4}
