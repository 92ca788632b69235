"""The tenant's weather: injected failures by rate and schedule, outages, latency, the cap."""

from __future__ import annotations

import asyncio
import errno
import time

import aiohttp
import pytest

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import AuthExpired, Fatal, Ok, Reject, Retry, Throttled
from tests.support.simulator import FakeClock

STG = "dem:sampleTableStg"
DOC = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="{}" testcol1="v"/>'
ONLY_WRITES = {"fault_methods": "IngestExt"}


@pytest.mark.parametrize(
    ("kind", "status", "html"),
    [
        ("500", 500, True),
        ("502", 502, True),
        ("503", 503, True),
        ("html", 200, True),
        ("soap", 500, False),
    ],
)
async def test_injected_error_answers_are_retried_and_store_nothing(
    simulator, kind, status, html
) -> None:
    """5xx pages and a 200 HTML page are Retry; a code-less transient SOAP fault is a
    refusal of unknown cause (delivery judges it by the other records); nothing is stored."""
    creds = await simulator.logon()
    await simulator.control(**{f"rate_{kind}": 1.0}, **ONLY_WRITES)
    reply = await simulator.write("IngestExt", DOC.format(1), creds)
    assert reply.status == status
    assert reply.body.lstrip().lower().startswith(b"<!doctype html") == html
    outcome = reply.outcome()
    if html:
        assert isinstance(outcome, Retry)
    else:
        assert isinstance(outcome, Reject) and outcome.scope == "unknown"
    assert await simulator.records(STG) == []
    stats = await simulator.stats()
    assert stats["faults_by_kind"] == {f"inject:{kind}": 1}
    assert (await simulator.calls())[-1]["outcome"] == f"inject:{kind}"


async def test_reset_drops_the_connection_before_processing(simulator) -> None:
    """rate_reset: the connection is reset (TCP RST) with no answer and nothing is stored."""
    creds = await simulator.logon()
    await simulator.control(rate_reset=1.0, **ONLY_WRITES)
    with pytest.raises(aiohttp.ClientOSError) as caught:
        await simulator.write("IngestExt", DOC.format(1), creds)
    assert caught.value.errno == errno.ECONNRESET
    assert await simulator.records(STG) == []
    calls = await simulator.calls()
    assert calls[-1]["status"] == 0 and calls[-1]["outcome"] == "inject:reset"


async def test_timeout_holds_the_connection_open(simulator) -> None:
    """rate_timeout: the call hangs for timeout_hold_s (the client times out) and stores nothing."""
    creds = await simulator.logon()
    await simulator.control(rate_timeout=1.0, timeout_hold_s=30, **ONLY_WRITES)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await simulator.call(
            "IngestExt", [soap.Param("doc", "document", DOC.format(1))], creds, client_timeout_s=0.3
        )
    assert time.monotonic() - started >= 0.3
    stats = await simulator.stats()
    assert stats["in_flight"] == 1  # still held by the simulator
    assert await simulator.records(STG) == []


async def test_truncate_commits_then_cuts_the_answer(simulator) -> None:
    """rate_truncate: the records are stored but the answer is cut short (at-least-once case)."""
    creds = await simulator.logon()
    await simulator.control(rate_truncate=1.0, **ONLY_WRITES)
    with pytest.raises(aiohttp.ClientPayloadError):
        await simulator.write("IngestExt", DOC.format("kept"), creds)
    assert [r["id"] for r in await simulator.records(STG)] == ["kept"]


async def test_injected_session_expiry_and_token_revocation(simulator) -> None:
    """rate_expire kills the call's session; rate_revoke its IMS token; both are AuthExpired."""
    creds = await simulator.logon()
    await simulator.control(rate_expire=1.0)
    assert isinstance(
        (await simulator.write("IngestExt", DOC.format(1), creds)).outcome(), AuthExpired
    )
    await simulator.control(rate_expire=0.0, rate_revoke=1.0)
    # The session stays dead after the fault is gone.
    assert isinstance(
        (await simulator.write("IngestExt", DOC.format(1), creds)).outcome(), AuthExpired
    )
    bearer = soap.Credentials(bearer_token=await simulator.ims_token())
    assert isinstance(
        (await simulator.write("IngestExt", DOC.format(2), bearer)).outcome(), AuthExpired
    )
    await simulator.control(rate_revoke=0.0)
    assert isinstance(
        (await simulator.write("IngestExt", DOC.format(3), bearer)).outcome(), AuthExpired
    )
    stats = await simulator.stats()
    assert stats["faults_by_kind"]["inject:expire"] == 1
    assert stats["faults_by_kind"]["inject:revoke"] == 1
    assert await simulator.records(STG) == []


async def test_fault_rates_are_shares_and_reproducible_with_a_seed(simulator_factory) -> None:
    """rate_500=0.5 fails about half the calls; the same seed replays the same sequence."""

    async def run() -> list[int]:
        sim = await simulator_factory(
            latency_ms=0, tps_limit=0, seed=42, rate_500=0.5, rate_503=0.25
        )
        return [(await sim.call("Logoff")).status for _ in range(40)]

    first, second = await run(), await run()
    assert first == second
    assert 10 <= first.count(500) <= 30 and 3 <= first.count(503) <= 18
    assert first.count(200) == 40 - first.count(500) - first.count(503)


async def test_scheduled_windows_from_config_and_control(simulator_factory) -> None:
    """Schedule windows apply their kind between start_s and end_s only."""
    clock = FakeClock()
    sim = await simulator_factory(
        latency_ms=0,
        tps_limit=0,
        clock=clock,
        schedule=[{"kind": "502", "start_s": 0, "end_s": 30}],
    )
    assert (await sim.call("Logoff")).status == 502
    clock.advance(30)
    assert (await sim.call("Logoff")).status == 200
    answer = await sim.control(schedule=[{"kind": "503", "start_s": 10, "end_s": 20, "rate": 1}])
    assert answer["windows"] == [{"kind": "503", "start_in_s": 10.0, "end_in_s": 20.0, "rate": 1.0}]
    assert (await sim.call("Logoff")).status == 200
    clock.advance(10)
    assert (await sim.call("Logoff")).status == 503
    clock.advance(10)
    assert (await sim.call("Logoff")).status == 200


async def test_outage_windows_take_campaign_down(simulator_factory) -> None:
    """outage_s: SOAP and /r/test answer 503 for that long; outage_s=0 ends it early."""
    clock = FakeClock()
    sim = await simulator_factory(latency_ms=0, tps_limit=0, clock=clock)
    answer = await sim.control(outage_s=60)
    assert answer["windows"][0]["kind"] == "outage"
    reply = await sim.call("Logoff")
    assert reply.status == 503 and isinstance(reply.outcome(), Retry)
    async with sim.session.get(sim.url + "/r/test") as test:
        assert test.status == 503
    clock.advance(60)
    assert (await sim.call("Logoff")).status == 200
    await sim.control(outage_s=60, outage_in_s=30)
    assert (await sim.call("Logoff")).status == 200
    clock.advance(30)
    assert (await sim.call("Logoff")).status == 503
    await sim.control(outage_s=0)
    assert (await sim.call("Logoff")).status == 200
    calls = await sim.calls()
    assert [c["outcome"] for c in calls].count("outage") == 2


async def test_outage_window_from_the_config(simulator_factory) -> None:
    """An outage in the config schedule (e.g. 30 s to 90 s after start) takes effect on time."""
    clock = FakeClock()
    sim = await simulator_factory(
        latency_ms=0, clock=clock, schedule=[{"kind": "outage", "start_s": 30, "end_s": 90}]
    )
    statuses = []
    for step in (29.9, 0.1, 59.9, 0.1):
        clock.advance(step)
        statuses.append((await sim.call("Logoff")).status)
    assert statuses == [200, 503, 503, 200]


async def test_outage_modes_reset_and_timeout(simulator) -> None:
    """During an outage, outage_mode reset drops connections and timeout holds them."""
    await simulator.control(outage_s=30, outage_mode="reset")
    with pytest.raises(aiohttp.ClientError):
        await simulator.call("Logoff")
    await simulator.control(outage_mode="timeout", timeout_hold_s=30)
    with pytest.raises(asyncio.TimeoutError):
        await simulator.call("Logoff", client_timeout_s=0.2)


async def test_latency_model_base_and_per_record(simulator_factory) -> None:
    """A call takes latency_ms plus latency_per_record_ms per record (no jitter: exact floor)."""
    sim = await simulator_factory(latency_ms=60, latency_per_record_ms=0.5, latency_jitter=0)
    creds = await sim.logon()
    rows = "".join(f'<sampleTableStg _key="@id" id="{i}"/>' for i in range(200))
    document = f'<sampleTableStg-collection xtkschema="{STG}">{rows}</sampleTableStg-collection>'
    assert isinstance((await sim.write("IngestExt", document, creds)).outcome(), Ok)
    calls = await sim.calls()
    logon, write = calls[-2], calls[-1]
    assert 60 <= logon["latency_ms"] < 60 + 150
    assert write["records"] == 200
    assert 160 <= write["latency_ms"] < 160 + 150


async def test_jitter_spreads_latency(simulator_factory) -> None:
    """latency_jitter draws a lognormal factor: latencies differ around the base."""
    sim = await simulator_factory(
        latency_ms=20, latency_per_record_ms=0, latency_jitter=0.5, seed=3
    )
    for _ in range(8):
        await sim.call("Logoff")
    latencies = [c["latency_ms"] for c in await sim.calls()]
    assert len({round(x) for x in latencies}) > 3
    assert min(latencies) < 20 < max(latencies)


@pytest.mark.parametrize(
    ("overflow", "expected"), [("queue", [200] * 4), ("reject", [200, 200, 503, 503])]
)
async def test_concurrency_cap_queues_or_rejects(simulator_factory, overflow, expected) -> None:
    """Beyond max_concurrent, calls wait for a slot (queue) or get 503 at once (reject)."""
    sim = await simulator_factory(
        latency_ms=150, latency_jitter=0, tps_limit=0, max_concurrent=2, overflow=overflow
    )
    started = time.monotonic()
    replies = await asyncio.gather(*(sim.call("Logoff") for _ in range(4)))
    elapsed = time.monotonic() - started
    assert sorted(r.status for r in replies) == expected
    stats = await sim.stats()
    assert stats["peak_in_flight"] == 2
    if overflow == "queue":
        assert elapsed >= 0.3  # two waves of 150 ms
    else:
        assert all(isinstance(r.outcome(), Retry) for r in replies if r.status == 503)


@pytest.mark.parametrize("fault_status", [500, 200])
async def test_each_simulator_answer_classifies_as_intended(
    simulator_factory, fault_status
) -> None:
    """Every kind of simulator answer gets its intended outcome, on HTTP 500 and 200 faults."""
    sim = await simulator_factory(latency_ms=0, tps_limit=1000, fault_status=fault_status)
    creds = await sim.logon()

    async def outcome_of(method: str, document: str) -> object:
        return (await sim.write(method, document, creds)).outcome()

    data = await outcome_of(
        "IngestExt", '<sampleTableStg xtkschema="dem:sampleTableStg" id="1" x="1"/>'
    )
    assert isinstance(data, Reject) and data.scope == "record"
    schema = await outcome_of("IngestExt", '<a xtkschema="cus:a" id="1"/>')
    assert isinstance(schema, Reject) and schema.scope == "unknown"
    await sim.control(ingest_collections=False)
    collection = await outcome_of(
        "Ingest",
        f'<sampleTableStg xtkschema="{STG}"><sampleTableStg/><sampleTableStg/></sampleTableStg>',
    )
    assert isinstance(collection, Reject) and collection.scope == "unknown"
    bad_login = await sim.call(
        "Logon",
        [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "x"),
            soap.Param("parameters", "element", ""),
        ],
    )
    assert isinstance(bad_login.outcome(), Fatal)
    await sim.control(rate_503=1.0, fault_methods="Ingest")
    assert isinstance(await outcome_of("Ingest", DOC.format(1)), Retry)
    await sim.control(rate_503=0.0, expire_sessions=True)
    assert isinstance(await outcome_of("IngestExt", DOC.format(1)), AuthExpired)
    await sim.control(tps_limit=1)
    replies = [await sim.call("Logoff") for _ in range(2)]
    assert isinstance(replies[1].outcome(), Throttled)
