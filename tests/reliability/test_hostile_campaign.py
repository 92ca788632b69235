"""Hostile Campaign: answers with external entities, billion laughs, gigantic bodies, or
bodies that drip in slowly. Each is refused within bounded memory and time.

"Refused" is checked where it matters: the simulator answers ``entity``, ``laughs``
and ``huge`` before storing anything, so a writer that took one for a success would
acknowledge records Campaign never kept, and they would be missing at the end.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import Retry
from tests.reliability.conftest import Figures
from tests.reliability.support import WriterProc, base_tree, peak_rss_kib
from tests.support.stack import Stack, auth_fields
from tests.support.writer import post_events, sample_events, wait_for

SAMPLE = "dem:sampleTableStg"
CAP = 1 << 20  # campaign.max_response_bytes for these tests
TIMEOUT_S = 2.0  # sender.timeout_s
HUGE = 256 << 20  # what a writer reading the whole 'huge' answer would hold
DRIP_INTERVAL_S = 0.5
# (simulator kind, hostile_encoding): the DTD kinds also in UTF-16LE without a BOM,
# where no ASCII "<!DOCTYPE" appears for a byte search to find.
CASES = [
    ("entity", "utf-8"),
    ("entity", "utf-16-le"),
    ("laughs", "utf-8"),
    ("laughs", "utf-16-le"),
    ("huge", "utf-8"),
    ("drip", "utf-8"),
]
KNOBS = {"huge_body_bytes": HUGE, "drip_interval_s": DRIP_INTERVAL_S, "fault_methods": "Ingest"}
DOC = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="h1" testcol1="v"/>'


@pytest.mark.parametrize(("kind", "encoding"), CASES)
async def test_client_refuses_a_hostile_answer_in_bounded_memory_and_time(
    simulator, kind: str, encoding: str
) -> None:
    """One call through the writer's own client (transport, throttle, classifier): the
    hostile answer is a Retry, read in at most the 2 s call timeout plus a second, with at
    most a few times the response cap allocated (tracemalloc)."""
    await simulator.control(**{f"rate_{kind}": 1.0}, hostile_encoding=encoding, **KNOBS)
    fields = auth_fields("session", simulator.ims_url)
    async with Stack(simulator.url, fields, timeout_s=TIMEOUT_S) as stack:
        stack.transport.max_response_bytes = CAP
        credentials = await stack.auth.credentials()
        params = [soap.Param("doc", "document", DOC)]
        tracemalloc.start()
        try:
            started = time.monotonic()
            result = await asyncio.wait_for(
                stack.client.call("Ingest", params, credentials), timeout=60
            )
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(result.outcome, Retry), result.outcome
    assert peak < 8 * CAP, f"{peak} bytes allocated for one {kind} answer"
    # The transport's total timeout bounds a drip; the others end on their own.
    assert elapsed < stack.transport.timeout_s + 1.0
    if kind != "drip":
        assert await simulator.records(SAMPLE) == []


async def test_writer_process_refuses_hostile_answers_and_loses_nothing(
    simulator_factory, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    """A real writer process meets each hostile answer several times (3; 10 in the soak):
    it stays up, acknowledges nothing it was not sure of, its peak RSS grows by far less
    than a 256 MiB answer, each hostile call ends within the sender timeout, and once
    Campaign behaves every event is delivered exactly."""
    rounds = 10 if soak else 3
    simulator = await simulator_factory(tps_limit=0, latency_ms=0, latency_jitter=0)
    tree = base_tree(
        simulator.url,
        tmp_path / "queue.sqlite3",
        campaign__max_response_bytes=CAP,
        sender__timeout_s=TIMEOUT_S,
        batch__max_records=10,
    )
    writer = WriterProc(tmp_path, tree)
    url = await writer.start()
    try:
        await post_events(url, sample_events(100, prefix="base"))
        await wait_for(lambda: _stored(simulator, 100), timeout=60)
        baseline = peak_rss_kib(writer.pid)
        sent = 100
        for kind, encoding in CASES:
            await simulator.control(reset_stats=True)
            since = (await simulator.stats())["last_call_seq"]
            await simulator.control(**{f"rate_{kind}": 1.0}, hostile_encoding=encoding, **KNOBS)
            await post_events(url, sample_events(20, prefix=f"{kind}-{encoding}-"))
            sent += 20

            async def met(kind: str = kind) -> bool:
                writer.check_alive()
                faults = (await simulator.stats())["faults_by_kind"]
                return int(faults.get(f"inject:{kind}", 0)) >= rounds

            await wait_for(met, timeout=120, interval=0.2)
            await simulator.control(**{f"rate_{kind}": 0.0})
            await wait_for(lambda n=sent: _stored(simulator, n), timeout=120, interval=0.2)
            injected = int((await simulator.stats())["faults_by_kind"][f"inject:{kind}"])
            hostile: list[dict[str, Any]] = []

            # The simulator counts an injection when it starts and logs the call when it
            # ends; a drip or huge answer the writer hung up on ends only when the
            # simulator next writes to the closed socket, which may come after the retry
            # already stored the events. Wait for every injected call to be logged.
            async def logged(
                kind: str = kind,
                injected: int = injected,
                since: int = since,
                hostile: list[dict[str, Any]] = hostile,
            ) -> bool:
                calls = await simulator.calls(since)
                hostile[:] = [c for c in calls if c["outcome"] == f"inject:{kind}"]
                return len(hostile) >= injected

            await wait_for(logged, timeout=60, interval=0.2)
            figures.faults[f"hostile {kind} ({encoding})"] += len(hostile)
            # The simulator logs a call when it ends: for huge and drip that is when the
            # writer hung up, so the latency bounds how long the writer held on.
            slowest = max(c["latency_ms"] for c in hostile) / 1000
            assert slowest < TIMEOUT_S + DRIP_INTERVAL_S + 2.0, (kind, slowest)
        grown_kib = peak_rss_kib(writer.pid) - baseline
        rows = await simulator.records(SAMPLE)
        assert await writer.stop() == 0
    finally:
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)
    figures.acknowledged += sent
    ids = [row["id"] for row in rows]
    expected = {e["id"]: e for e in sample_events(100, prefix="base")}
    for kind, encoding in CASES:
        expected.update({e["id"]: e for e in sample_events(20, prefix=f"{kind}-{encoding}-")})
    missing = set(expected) - set(ids)
    figures.lost += len(missing)
    assert not missing, f"acknowledged but never stored: {sorted(missing)[:5]}"
    for row in rows:
        event = expected[row["id"]]
        assert (row["testcol1"], row["testcol2"]) == (event["testcol1"], event["testcol2"])
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"


async def _stored(simulator, count: int) -> bool:
    return len(await simulator.records(SAMPLE)) >= count
