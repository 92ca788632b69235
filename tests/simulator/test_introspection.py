"""The /__sim contract: stats, records, the call log (memory and NDJSON) and control."""

from __future__ import annotations

import orjson

from campaign_writer.campaign.outcome import Ok

STG = "dem:sampleTableStg"


def collection(start: int, count: int) -> str:
    rows = "".join(
        f'<sampleTableStg _key="@id" id="r{i:05d}" testcol1="{i}"/>'
        for i in range(start, start + count)
    )
    return f'<sampleTableStg-collection xtkschema="{STG}">{rows}</sampleTableStg-collection>'


async def test_stats_contract(simulator) -> None:
    """/__sim/stats has the documented keys, counting calls, statuses and stored records."""
    creds = await simulator.logon()
    await simulator.write("IngestExt", collection(0, 3), creds)
    await simulator.write("IngestExt", '<nope xtkschema="x:y"/>', creds)
    stats = await simulator.stats()
    assert stats["calls_total"] == 3
    assert stats["calls_by_method"] == {"Logon": 1, "IngestExt": 2}
    assert stats["responses_by_status"] == {"200": 2, "500": 1}
    assert stats["records_by_schema"][STG] == 3
    assert set(stats["records_by_schema"]) == {
        "dem:sampleTable",
        STG,
        "nms:recipient",
        "nms:recipientStg",
        "nms:subscriptionRcp",
        "nms:subscriptionRcpStg",
        "nms:appSubscriptionRcp",
        "nms:appSubscriptionRcpStg",
    }
    assert stats["records_received"] == 3
    assert stats["faults_by_kind"] == {"schema": 1}
    refused = (await simulator.calls())[-1]
    assert refused["schema"] == "x:y" and refused["outcome"] == "fault:schema"
    assert stats["tps_limit"] == 1000 and stats["limiter"] == "sliding"
    assert stats["in_flight"] == 0 and stats["sessions"] == 1
    await simulator.control(reset_stats=True)
    stats = await simulator.stats()
    assert stats["calls_total"] == 0 and stats["records_by_schema"][STG] == 3


async def test_records_are_paged(simulator) -> None:
    """/__sim/records pages with offset/limit in insertion order and reports the total."""
    creds = await simulator.logon()
    for start in range(0, 2500, 1000):
        reply = await simulator.write(
            "IngestExt", collection(start, min(1000, 2500 - start)), creds
        )
        assert isinstance(reply.outcome(), Ok)
    rows = await simulator.records(STG, page=700)
    assert [r["id"] for r in rows] == [f"r{i:05d}" for i in range(2500)]
    params = {"schema": STG, "offset": "2499", "limit": "10"}
    async with simulator.session.get(simulator.url + "/__sim/records", params=params) as answer:
        page = await answer.json()
    assert page["total"] == 2500 and [r["id"] for r in page["records"]] == ["r02499"]
    for bad, status in (({"schema": "x:y"}, 404), ({"schema": STG, "limit": "-1"}, 400)):
        async with simulator.session.get(simulator.url + "/__sim/records", params=bad) as answer:
            assert answer.status == status
    await simulator.control(clear_records=True)
    assert await simulator.records(STG) == []


async def test_call_log_in_memory_and_ndjson(simulator_factory, tmp_path) -> None:
    """Each call is logged with arrival, method, records, status, latency, commit time."""
    path = tmp_path / "calls.ndjson"
    sim = await simulator_factory(latency_ms=0, tps_limit=1000, call_log=str(path))
    creds = await sim.logon()
    await sim.write("Ingest", collection(0, 4), creds)
    await sim.control(tps_limit=1)
    await sim.call("Logoff")  # throttled: the logon and the write used this second
    calls = await sim.calls()
    assert [c["seq"] for c in calls] == [1, 2, 3]
    logon, ingest, throttled = calls
    assert logon["method"] == "Logon" and logon["committed_at"] is None
    assert ingest["method"] == "Ingest" and ingest["schema"] == STG and ingest["records"] == 4
    assert ingest["status"] == 200 and ingest["outcome"] == "ok"
    assert logon["t"] <= ingest["t"] <= ingest["committed_at"] <= throttled["t"]
    assert ingest["latency_ms"] >= 0
    assert throttled["status"] == 429 and throttled["outcome"] == "throttled"
    assert throttled["method"] == "Logoff" and throttled["records"] == 0
    assert [c["seq"] for c in await sim.calls(since=2)] == [3]
    rows = await sim.records(STG)
    assert {float(r["__committed_at"]) for r in rows} == {ingest["committed_at"]}
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == calls


async def test_control_refuses_bad_requests_and_changes_nothing(simulator) -> None:
    """Unknown fields, fixed fields and bad values get 400 with the reasons; nothing changes."""
    before = (await simulator.control())["config"]
    for body in (
        {"tps_limt": 5},
        {"port": 9},
        {"rate_500": 2},
        {"limiter": "leaky"},
        {"tps_limit": 5, "rate_500": 0.8, "rate_502": 0.8},
        {"outage_s": -1},
        [1, 2],
    ):
        async with simulator.session.post(simulator.url + "/__sim/control", json=body) as answer:
            assert answer.status == 400, body
            assert (await answer.json())["errors"]
    async with simulator.session.post(
        simulator.url + "/__sim/control",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    ) as answer:
        assert answer.status == 400
    async with simulator.session.get(simulator.url + "/__sim/control") as answer:
        assert (await answer.json())["config"] == before
    assert before["tps_limit"] == 1000 and "port" not in before
