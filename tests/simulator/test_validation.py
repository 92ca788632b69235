"""Validation like a database: each bad input gets a Campaign-style fault the writer classifies."""

from __future__ import annotations

import pytest

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import Fatal, Ok, Reject
from campaign_writer.simulator.codes import (
    ACCESS_DENIED,
    BAD_VALUE,
    EXECUTION_ERROR,
    MISSING_KEY,
    PG_ERROR,
    SAVE_FAILED,
    UNKNOWN_ATTRIBUTE,
    UNKNOWN_SCHEMA,
)

STG = "dem:sampleTableStg"


def rec(**attrs: str) -> str:
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<recipientStg xtkschema="nms:recipientStg" {body}/>'


def fault_of(reply) -> soap.SoapFault:
    fault = reply.parsed()
    assert isinstance(fault, soap.SoapFault), reply.body
    return fault


@pytest.mark.parametrize(
    ("method", "document", "text"),
    [
        ("Ingest", '<x xtkschema="cus:unknown"/>', "'cus:unknown' is unknown"),
        ("Ingest", '<sampleTable xtkschema="dem:sampleTable" id="1"/>', "not a staging schema"),
        ("Write", '<sampleTableStg id="1"/>', "no 'xtkschema'"),
        ("Write", '<other xtkschema="dem:sampleTableStg" id="1"/>', "not an entity of schema"),
    ],
)
async def test_schema_faults_reject_the_whole_batch(simulator, method, document, text) -> None:
    """Unknown or wrong schemas get (invented) XSV-350101 under SOP-330011; to the writer
    that cause is unknown, for delivery to judge from the other records."""
    creds = await simulator.logon()
    reply = await simulator.write(method, document, creds)
    assert reply.status == 500
    fault = fault_of(reply)
    assert fault.faultcode == "SOAP-ENV:Server"
    assert fault.codes[:2] == (EXECUTION_ERROR, UNKNOWN_SCHEMA)
    assert text in fault.detail
    outcome = reply.outcome()
    assert isinstance(outcome, Reject) and outcome.scope == "unknown"


@pytest.mark.parametrize(
    ("attrs", "code", "text"),
    [
        (
            {"email": "a@x", "nickname": "z"},
            UNKNOWN_ATTRIBUTE,
            "Attribute 'nickname' is not defined",
        ),
        ({"email": "a@x", "points": "ten"}, BAD_VALUE, "type long"),
        ({"email": "a@x", "points": "2147483648"}, BAD_VALUE, "out of range for type long"),
        ({"email": "a@x", "gender": "300"}, BAD_VALUE, "out of range for type byte"),
        ({"email": "a@x", "birthDate": "1990-02-30"}, BAD_VALUE, "out of range"),
        ({"email": "a@x", "birthDate": "30/02/1990"}, BAD_VALUE, "type date"),
        ({"email": "a@x", "blackList": "maybe"}, BAD_VALUE, "type boolean"),
        ({"email": "a@x", "score": "1,5"}, BAD_VALUE, "type double"),
        ({"email": "a@x", "lastModified": "yesterday"}, BAD_VALUE, "type datetime"),
        ({"email": "a@x", "firstName": "n" * 65}, PG_ERROR, "character varying(64)"),
        ({"firstName": "no key"}, MISSING_KEY, "@email"),
    ],
)
async def test_record_faults_name_the_record_and_reject_it(simulator, attrs, code, text) -> None:
    """Unknown attribute, wrong type, too long and missing key: a data fault, record scope."""
    creds = await simulator.logon()
    children = [{"email": "ok@x", "points": "1"}, attrs]
    document = (
        '<recipientStg-collection xtkschema="nms:recipientStg">'
        + "".join(
            "<recipientStg " + " ".join(f'{k}="{v}"' for k, v in c.items()) + "/>" for c in children
        )
        + "</recipientStg-collection>"
    )
    reply = await simulator.write("IngestExt", document, creds)
    fault = fault_of(reply)
    assert fault.codes == (EXECUTION_ERROR, code, SAVE_FAILED)
    assert text in fault.detail and "record 2 of 2" in fault.detail
    outcome = reply.outcome()
    # The invented cause means nothing to the writer; the seen XSV-350023 after it
    # points at the data.
    assert isinstance(outcome, Reject) and outcome.scope == "record"
    assert outcome.code == SAVE_FAILED
    # A transaction: the good first record was not stored either.
    assert await simulator.records("nms:recipientStg") == []


async def test_valid_values_of_every_type_are_stored_as_sent(simulator) -> None:
    """Each XTK type accepts its documented formats; values are stored as sent."""
    creds = await simulator.logon()
    values = {
        "email": "t@x",
        "points": "-2147483648",
        "gender": "1",
        "externalId": "9223372036854775807",
        "birthDate": "1956/05/04",
        "blackList": "true",
        "score": "1.5e3",
        "lastModified": "2022-09-26 03:13:36.480Z",
        "firstName": "",
    }
    reply = await simulator.write("Write", rec(**values), creds)
    assert isinstance(reply.outcome(), Ok), reply.body
    for date in ("2020-12-31T00:00:00.000Z", "2020-12-31"):
        reply = await simulator.write("Write", rec(email="t@x", birthDate=date), creds)
        assert isinstance(reply.outcome(), Ok), reply.body
    row = (await simulator.records("nms:recipientStg"))[0]
    assert row["birthDate"] == "2020-12-31" and row["points"] == "-2147483648"


@pytest.mark.parametrize(
    ("method", "attrs", "code"),
    [
        ("Ingest", {"_key": "@id", "testcol1": "x"}, MISSING_KEY),
        ("Write", {"_operation": "update", "testcol1": "x"}, MISSING_KEY),
        ("Write", {"_operation": "delete", "id": ""}, MISSING_KEY),
        ("Write", {"_operation": "upsert", "id": "1"}, BAD_VALUE),
        ("Ingest", {"_operation": "delete", "id": "1"}, BAD_VALUE),
        ("Write", {"_key": "@nope", "id": "1"}, UNKNOWN_ATTRIBUTE),
        ("Write", {"_key": "[folder/@name]", "id": "1"}, BAD_VALUE),
    ],
)
async def test_keys_and_operations_are_checked(simulator, method, attrs, code) -> None:
    """A missing key value, an unknown _operation or an unusable _key is refused."""
    creds = await simulator.logon()
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    reply = await simulator.write(method, f'<sampleTableStg xtkschema="{STG}" {body}/>', creds)
    fault = fault_of(reply)
    assert code in fault.codes
    assert isinstance(reply.outcome(), Reject)


async def test_poison_marker_refuses_exactly_the_marked_record(simulator) -> None:
    """A value containing the marker is refused; splitting the batch isolates that record."""
    creds = await simulator.logon()
    rows = [f'<sampleTableStg _key="@id" id="{i}" testcol1="v{i}"/>' for i in range(8)]
    rows[5] = '<sampleTableStg _key="@id" id="5" testcol1="x__POISON__y"/>'

    def doc(part: list[str]) -> str:
        root = "sampleTableStg-collection"
        return f'<{root} xtkschema="{STG}">{"".join(part)}</{root}>'

    reply = await simulator.write("IngestExt", doc(rows), creds)
    outcome = reply.outcome()
    assert isinstance(outcome, Reject) and outcome.scope == "record"
    assert PG_ERROR in fault_of(reply).codes
    assert "record 6 of 8, id='5'" in fault_of(reply).detail
    # Bisect as a writer would: the good half passes, the bad half fails again.
    assert isinstance((await simulator.write("IngestExt", doc(rows[:4]), creds)).outcome(), Ok)
    assert isinstance((await simulator.write("IngestExt", doc(rows[4:]), creds)).outcome(), Reject)
    await simulator.control(poison_marker="")
    assert isinstance((await simulator.write("IngestExt", doc(rows[4:]), creds)).outcome(), Ok)


async def test_poison_rate_is_stable_per_record(simulator) -> None:
    """poison_rate refuses a stable subset of keys: the same records fail on every attempt."""
    creds = await simulator.logon()
    await simulator.control(poison_rate=0.3)

    async def refused() -> set[int]:
        bad = set()
        for i in range(60):
            document = f'<sampleTableStg xtkschema="{STG}" _key="@id" id="key-{i}" testcol1="{i}"/>'
            if isinstance((await simulator.write("IngestExt", document, creds)).outcome(), Reject):
                bad.add(i)
        return bad

    first = await refused()
    assert 6 <= len(first) <= 30
    assert await refused() == first
    stored = {r["id"] for r in await simulator.records(STG)}
    assert stored == {f"key-{i}" for i in range(60) if i not in first}


async def test_operators_limited_to_schemas_get_access_denied(simulator_factory) -> None:
    """An operator allowed only some schemas gets "Access denied" elsewhere: Fatal."""
    sim = await simulator_factory(
        latency_ms=0, users=[{"login": "ops", "password": "pw-ops", "schemas": [STG]}]
    )
    creds = await sim.logon("ops", "pw-ops")
    ok = await sim.write("Ingest", f'<sampleTableStg xtkschema="{STG}" id="1"/>', creds)
    assert isinstance(ok.outcome(), Ok)
    denied = await sim.write("Ingest", rec(email="a@x"), creds)
    outcome = denied.outcome()
    assert isinstance(outcome, Fatal) and outcome.code == "access-denied"
    assert ACCESS_DENIED in fault_of(denied).codes
