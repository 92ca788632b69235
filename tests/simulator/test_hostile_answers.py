"""Hostile answers: external entities, billion laughs, gigantic and slow-drip bodies."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from campaign_writer.campaign import soap
from campaign_writer.errors import ConfigError
from campaign_writer.simulator import SimulatorConfig
from campaign_writer.simulator.config import apply_changes
from campaign_writer.simulator.faults import HOSTILE_KINDS, KINDS

STG = "dem:sampleTableStg"
DOC = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="{}" testcol1="v"/>'
ONLY_WRITES = {"fault_methods": "IngestExt"}


def test_hostile_kinds_come_after_the_older_kinds() -> None:
    """New kinds are appended, so a seeded draw of the older kinds replays as before."""
    assert KINDS[:10] == (
        "500",
        "502",
        "503",
        "timeout",
        "reset",
        "truncate",
        "html",
        "soap",
        "expire",
        "revoke",
    )
    assert KINDS[10:14] == HOSTILE_KINDS == ("entity", "laughs", "huge", "drip")
    assert KINDS[14:] == ("masked", "badlogin")


@pytest.mark.parametrize(
    ("kind", "marker"),
    [("entity", b'<!ENTITY file SYSTEM "file:///etc/passwd">'), ("laughs", b"&lol9;")],
)
async def test_entity_answers_carry_a_dtd_and_store_nothing(simulator, kind, marker) -> None:
    """rate_entity / rate_laughs: a 200 whose body declares a DTD and uses its entities;
    the call is not processed."""
    creds = await simulator.logon()
    await simulator.control(**{f"rate_{kind}": 1.0}, **ONLY_WRITES)
    reply = await simulator.write("IngestExt", DOC.format(1), creds)
    assert reply.status == 200
    assert reply.body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>\n<!DOCTYPE ")
    assert marker in reply.body
    assert b"<IngestExtResponse" in reply.body
    assert await simulator.records(STG) == []
    stats = await simulator.stats()
    assert stats["faults_by_kind"] == {f"inject:{kind}": 1}
    assert (await simulator.calls())[-1]["outcome"] == f"inject:{kind}"


async def test_hostile_encoding_utf16_hides_the_doctype_from_ascii_searches(simulator) -> None:
    """hostile_encoding=utf-16-le: the same DTD, in UTF-16LE without a byte-order mark."""
    creds = await simulator.logon()
    await simulator.control(rate_entity=1.0, hostile_encoding="utf-16-le", **ONLY_WRITES)
    reply = await simulator.write("IngestExt", DOC.format(1), creds)
    assert reply.status == 200
    assert b"<!DOCTYPE" not in reply.body
    assert reply.body[:2] == b"<\x00"  # no BOM: the parser must sniff it
    text = reply.body.decode("utf-16-le")
    assert text.startswith("<?xml version='1.0' encoding='UTF-16'?>\n<!DOCTYPE ")
    assert await simulator.records(STG) == []


async def test_huge_answer_streams_its_size_without_a_content_length(simulator) -> None:
    """rate_huge: a 200 of exactly huge_body_bytes, chunked (no Content-Length); nothing stored."""
    creds = await simulator.logon()
    await simulator.control(rate_huge=1.0, huge_body_bytes=3 * 65536 + 5, **ONLY_WRITES)
    reply = await simulator.write("IngestExt", DOC.format(1), creds)
    assert reply.status == 200
    assert "Content-Length" not in reply.headers
    assert reply.headers.get("Transfer-Encoding") == "chunked"
    assert len(reply.body) == 3 * 65536 + 5
    assert reply.body.startswith(b"<?xml version='1.0'?>\n<SOAP-ENV:Envelope")
    assert reply.body.endswith(b"aaaa")
    assert await simulator.records(STG) == []
    assert (await simulator.stats())["faults_by_kind"] == {"inject:huge": 1}


async def test_huge_answer_stops_when_the_client_hangs_up(simulator) -> None:
    """A client that stops reading a 1 GiB answer frees the simulator's handler at once."""
    creds = await simulator.logon()
    await simulator.control(rate_huge=1.0, huge_body_bytes=1 << 30, **ONLY_WRITES)
    request = soap.build_request(
        "IngestExt",
        [soap.Param("doc", "document", DOC.format(1))],
        creds,
        soap.WireOptions(),
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            simulator.url + request.path, data=request.body, headers=request.headers
        ) as answer,
    ):
        first = await answer.content.read(65536)
        assert first
    await asyncio.sleep(0.2)
    stats = await simulator.stats()
    assert stats["in_flight"] == 0


async def test_drip_stores_the_records_then_sends_the_answer_slowly(simulator) -> None:
    """rate_drip: the call is processed, and its real answer comes a byte per drip_interval_s."""
    creds = await simulator.logon()
    await simulator.control(rate_drip=1.0, drip_interval_s=0.002, **ONLY_WRITES)
    started = time.monotonic()
    reply = await simulator.write("IngestExt", DOC.format("dripped"), creds)
    elapsed = time.monotonic() - started
    assert reply.status == 200
    assert reply.parsed().method == "IngestExt"
    assert elapsed >= len(reply.body) * 0.002
    assert [r["id"] for r in await simulator.records(STG)] == ["dripped"]
    assert (await simulator.stats())["faults_by_kind"] == {"inject:drip": 1}


async def test_drip_outlasts_a_client_timeout(simulator) -> None:
    """A client with a 0.3 s timeout gives up on a drip at one byte per second."""
    creds = await simulator.logon()
    await simulator.control(rate_drip=1.0, drip_interval_s=1.0, **ONLY_WRITES)
    with pytest.raises(asyncio.TimeoutError):
        await simulator.call(
            "IngestExt",
            [soap.Param("doc", "document", DOC.format("slow"))],
            creds,
            client_timeout_s=0.3,
        )
    assert [r["id"] for r in await simulator.records(STG)] == ["slow"]


async def test_hostile_kinds_in_schedule_windows(simulator_factory) -> None:
    """A schedule window of a hostile kind applies it like any other kind."""
    sim = await simulator_factory(
        latency_ms=0,
        tps_limit=0,
        schedule=[{"kind": "laughs", "start_s": 0, "end_s": 600}],
    )
    reply = await sim.call("Logoff")
    assert reply.status == 200 and b"&lol9;" in reply.body


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"rate_entity": 0.6, "rate_drip": 0.6}, "rate_*"),
        ({"huge_body_bytes": 0}, "huge_body_bytes"),
        ({"drip_interval_s": -1}, "drip_interval_s"),
        ({"hostile_encoding": "latin-1"}, "hostile_encoding"),
    ],
)
def test_hostile_knobs_are_checked(changes, path) -> None:
    """Hostile rates count toward the sum of rates; sizes, pauses and encodings are checked."""
    with pytest.raises(ConfigError) as caught:
        apply_changes(SimulatorConfig(), changes)
    assert any(path in problem for problem in caught.value.problems)
