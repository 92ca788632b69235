"""Instance-wide faults without a cause: the masked SOP-330023 and the code-less bad login."""

from __future__ import annotations

import pytest

from campaign_writer.campaign import soap
from tests.support.simulator import FAST, FakeClock

STG = "dem:sampleTableStg"
DOC = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="{}" testcol1="v"/>'
# The texts as campaign-protocol.md section 5.4a quotes them (ISSUE#112, V8 event page).
MASKED = (
    "SOP-330023 An error occurred during the SOAP call."
    " You don't have the required rights to view the detail."
)
BAD_LOGIN_DETAIL = "Invalid login or password. Connection denied."
LOGON = [
    soap.Param("login", "string", "admin"),
    soap.Param("password", "string", "admin"),
    soap.Param("parameters", "element", ""),
]


def assert_masked(reply) -> None:
    assert reply.status == 500
    fault = reply.fault()
    assert (fault.faultcode, fault.faultstring, fault.detail) == ("SOAP-ENV:Error", MASKED, "")
    assert b"<faultcode>SOAP-ENV:Error</faultcode>" in reply.body
    assert b"<detail" not in reply.body


def assert_bad_login(reply, method: str, urn: str, status: int = 500) -> None:
    assert reply.status == status
    fault = reply.fault()
    assert fault.faultcode == "SOAP-ENV:Client"
    assert (
        fault.faultstring
        == f"Error while reading parameters of method '{method}' of service '{urn}'."
    )
    assert fault.detail == BAD_LOGIN_DETAIL
    assert fault.codes == ()


async def test_masked_window_answers_every_call_then_recovers(simulator_factory) -> None:
    """masked_s: every call, Logon too, gets the masked fault on HTTP 500 until the window ends."""
    clock = FakeClock()
    sim = await simulator_factory(**FAST, clock=clock, fault_status=200)
    creds = await sim.logon()
    answer = await sim.control(masked_s=60)
    assert answer["windows"] == [
        {"kind": "masked", "start_in_s": 0.0, "end_in_s": 60.0, "rate": 1.0}
    ]
    assert_masked(await sim.write("IngestExt", DOC.format("a"), creds))
    assert_masked(await sim.write("Ingest", DOC.format("b"), creds))
    assert_masked(await sim.call("Logon", LOGON))
    clock.advance(59.9)
    assert_masked(await sim.write("Write", DOC.format("c"), creds))
    clock.advance(0.1)
    reply = await sim.write("IngestExt", DOC.format("after"), creds)
    assert reply.status == 200 and reply.response().method == "IngestExt"
    assert [r["id"] for r in await sim.records(STG)] == ["after"]
    stats = await sim.stats()
    assert stats["faults_by_kind"] == {"inject:masked": 4}
    assert stats["windows"] == []
    outcomes = [c["outcome"] for c in await sim.calls()]
    assert outcomes == ["ok", *["inject:masked"] * 4, "ok"]


async def test_masked_in_s_delays_the_window_and_zero_ends_only_masked(simulator_factory) -> None:
    """masked_in_s starts the window later; masked_s=0 ends masked windows, not outages."""
    clock = FakeClock()
    sim = await simulator_factory(**FAST, clock=clock)
    await sim.control(masked_s=30, masked_in_s=10)
    assert (await sim.call("Logoff")).status == 200
    clock.advance(10)
    assert_masked(await sim.call("Logoff"))
    await sim.control(outage_s=600, outage_in_s=300)
    answer = await sim.control(masked_s=0)
    assert [w["kind"] for w in answer["windows"]] == ["outage"]
    assert (await sim.call("Logoff")).status == 200


async def test_masked_by_rate_and_schedule_respect_fault_methods(simulator_factory) -> None:
    """rate_masked and a masked schedule window hit only the fault_methods calls."""
    clock = FakeClock()
    sim = await simulator_factory(
        **FAST,
        clock=clock,
        fault_methods="Ingest",
        schedule=[{"kind": "masked", "start_s": 0, "end_s": 30}],
    )
    creds = await sim.logon()
    assert_masked(await sim.write("Ingest", DOC.format(1), creds))
    reply = await sim.write("IngestExt", DOC.format(2), creds)
    assert reply.status == 200
    clock.advance(30)
    assert (await sim.write("Ingest", DOC.format(3), creds)).status == 200
    await sim.control(rate_masked=1.0)
    assert_masked(await sim.write("Ingest", DOC.format(4), creds))
    assert (await sim.write("IngestExt", DOC.format(5), creds)).status == 200
    assert sorted(r["id"] for r in await sim.records(STG)) == ["2", "3", "5"]


async def test_badlogin_window_refuses_every_call_without_a_code(simulator_factory) -> None:
    """badlogin_s: every call gets the code-less bad-login fault on fault_status; nothing stored."""
    clock = FakeClock()
    sim = await simulator_factory(**FAST, clock=clock)
    creds = await sim.logon()
    answer = await sim.control(badlogin_s=30)
    assert [w["kind"] for w in answer["windows"]] == ["badlogin"]
    reply = await sim.write("Ingest", DOC.format(1), creds)
    assert_bad_login(reply, "Ingest", "xtk:persist|xtk:session")
    # The service is the URN the call came under, as Adobe's sample spells it here.
    wire = soap.WireOptions(urns={"IngestExt": "xtk:session"})
    reply = await sim.write("IngestExt", DOC.format(2), creds, wire)
    assert_bad_login(reply, "IngestExt", "xtk:session")
    await sim.control(fault_status=200)
    assert_bad_login(await sim.call("Logon", LOGON), "Logon", "xtk:session", status=200)
    await sim.control(badlogin_s=0)
    assert (await sim.write("Ingest", DOC.format(3), creds)).status == 200
    assert [r["id"] for r in await sim.records(STG)] == ["3"]
    assert (await sim.stats())["faults_by_kind"] == {"inject:badlogin": 3}


async def test_badlogin_by_rate_and_delayed_window(simulator_factory) -> None:
    """rate_badlogin follows fault_methods; badlogin_in_s delays a badlogin_s window."""
    clock = FakeClock()
    sim = await simulator_factory(**FAST, clock=clock)
    creds = await sim.logon()
    await sim.control(rate_badlogin=1.0, fault_methods=["IngestExt"])
    assert_bad_login(
        await sim.write("IngestExt", DOC.format(1), creds), "IngestExt", "xtk:persist|xtk:session"
    )
    assert (await sim.write("Ingest", DOC.format(2), creds)).status == 200
    await sim.control(rate_badlogin=0.0, fault_methods=[], badlogin_s=5, badlogin_in_s=20)
    assert (await sim.call("Logoff")).status == 200
    clock.advance(20)
    assert_bad_login(await sim.call("Logoff"), "Logoff", "xtk:session")
    clock.advance(5)
    assert (await sim.call("Logoff")).status == 200


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"masked_s": -1}, "control.masked_s"),
        ({"masked_s": "soon"}, "control.masked_s"),
        ({"masked_s": 10, "masked_in_s": True}, "control.masked_in_s"),
        ({"badlogin_s": -5}, "control.badlogin_s"),
        ({"badlogin_in_s": "later"}, "control.badlogin_in_s"),
    ],
)
async def test_window_actions_refuse_bad_durations(simulator, changes, message) -> None:
    """A negative or non-numeric masked_s / badlogin_s (or delay) is a 400 and opens nothing."""
    async with simulator.session.post(f"{simulator.url}/__sim/control", json=changes) as answer:
        assert answer.status == 400
        errors = (await answer.json())["errors"]
    assert any(message in error for error in errors), errors
    assert (await simulator.stats())["windows"] == []
