"""Campaign faults: the simulator's whole fault mix against two real writer processes.

One writer logs on with a session (so injected session expiry hits it), the other
sends IMS bearer tokens (so token revocation hits it). Both are set above the
tenant's TPS limit, which is cut further for a while (429 storms); Campaign also
goes down for outage windows, and answers 5xx pages, resets, timeouts, truncated
bodies, 200 HTML pages and transient SOAP faults at random. A few events carry a
poison value the simulator refuses as a data fault.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from campaign_writer.campaign.codes import CODES, CodeClass
from campaign_writer.deadletter import DeadLetterStore
from tests.reliability.conftest import Figures
from tests.reliability.support import WriterProc, base_tree
from tests.support.writer import post_events, sample_events, wait_for

SAMPLE = "dem:sampleTableStg"
RATES = {
    "rate_500": 0.03,
    "rate_502": 0.03,
    "rate_503": 0.03,
    "rate_timeout": 0.02,
    "rate_reset": 0.03,
    "rate_truncate": 0.03,
    "rate_html": 0.03,
    "rate_soap": 0.03,
    "rate_expire": 0.04,
    "rate_revoke": 0.04,
}
TENANT_TPS = 40


def _events(prefix: str, count: int, rng: random.Random) -> tuple[list[dict[str, Any]], set[str]]:
    events = sample_events(count, prefix=prefix)
    poisoned = set()
    for event in events:
        if rng.random() < 0.01:
            event["testcol2"] = "__POISON__"
            poisoned.add(event["id"])
    return events, poisoned


async def _feed(url: str, events: list[dict[str, Any]], pause: float) -> None:
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(events), 250):
            await post_events(url, events[start : start + 250], session=session)
            await asyncio.sleep(pause)


async def _weather(simulator, rounds: int) -> None:
    """429 storms (the tenant's limit cut to a quarter) and outage windows, in turn."""
    for _ in range(rounds):
        await asyncio.sleep(1.0)
        await simulator.control(tps_limit=TENANT_TPS // 4)
        await asyncio.sleep(2.0)
        await simulator.control(tps_limit=TENANT_TPS)
        await asyncio.sleep(1.0)
        await simulator.control(outage_s=2.0)
        await asyncio.sleep(2.5)


# Bad records are judged only beside records that pass, under a quarter of calls
# failing: the drain takes one to two minutes on a 2-core machine.
@pytest.mark.timeout(300)
async def test_full_fault_mix_delivered_plus_dead_lettered_equals_sent(
    simulator_factory, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    """Under the full fault mix (session and IMS writers, 429 storms, 5xx, timeouts,
    resets, truncated bodies, HTML pages, SOAP faults, expiry, revocation, outages),
    every event is either stored with its values or dead-lettered, never both, and only
    the poisoned ones (data faults) are dead-lettered."""
    per_writer = 12_000 if soak else 1_500
    rounds = 6 if soak else 1
    rng = random.Random(5)
    simulator = await simulator_factory(
        seed=11,
        tps_limit=TENANT_TPS,
        latency_ms=10,
        latency_jitter=0.3,
        timeout_hold_s=8,
        **RATES,
    )
    common = {
        "campaign__tps_limit": 60,
        "sender__timeout_s": 2,
        "batch__max_records": 100,
        "batch__linger_ms": 50,
    }
    session = WriterProc(
        tmp_path, base_tree(simulator.url, tmp_path / "session.sqlite3", **common), "session"
    )
    ims_tree = base_tree(simulator.url, tmp_path / "ims.sqlite3", **common)
    ims_tree["campaign"]["auth"] = {
        "mode": "ims",
        "ims_url": simulator.ims_url,
        "client_id": "sim-client",
        "client_secret": "sim-secret",
        "scope": "openid,AdobeID",
    }
    ims = WriterProc(tmp_path, ims_tree, "ims")
    writers = (session, ims)
    sent: dict[str, dict[str, Any]] = {}
    poisoned: set[str] = set()
    try:
        for writer in writers:
            await writer.start()
        feeds = []
        for writer in writers:
            events, bad = _events(f"{writer.name}-", per_writer, rng)
            sent.update({e["id"]: e for e in events})
            poisoned |= bad
            feeds.append(_feed(writer.intake_url, events, pause=0.3))
        await asyncio.gather(*feeds, _weather(simulator, rounds))

        async def drained() -> bool:
            for writer in writers:
                writer.check_alive()
                stats = await writer.stats()
                if stats["queue"]["depth"] or stats["delivery"]["records_in_memory"]:
                    return False
            return True

        await wait_for(drained, timeout=600 if soak else 240, interval=0.5)
        lanes = [(await writer.stats())["delivery"]["lanes"] for writer in writers]
        stats = await simulator.stats()
        rows = await simulator.records(SAMPLE, page=100_000)
        for writer in writers:
            assert await writer.stop() == 0, writer.tail()
    finally:
        for writer in writers:
            writer.close()
            figures.writer_crashes += len(writer.unexpected_exits)

    letters = []
    for name in ("session", "ims"):
        with DeadLetterStore(tmp_path / f"{name}.sqlite3") as store:
            letters += store.page(limit=100_000)
    dead = Counter(letter.key for letter in letters)
    stored = {row["id"]: row for row in rows}
    for kind, count in stats["faults_by_kind"].items():
        if kind.startswith("inject:"):
            figures.faults[kind.removeprefix("inject:")] += count
    figures.faults["429"] += stats["responses_by_status"].get("429", 0)
    calls = await simulator.calls(0)
    figures.faults["outage"] += sum(1 for c in calls if c["outcome"] == "outage")
    figures.acknowledged += len(sent)
    lost = set(sent) - set(stored) - set(dead)
    figures.lost += len(lost)

    assert not lost, f"{len(lost)} events neither stored nor dead-lettered: {sorted(lost)[:5]}"
    assert not set(stored) & set(dead), "dead-lettered and stored"
    assert set(stored) | set(dead) == set(sent)
    assert set(dead) == poisoned, f"dead letters that were not data faults: {set(dead) ^ poisoned}"
    assert max(dead.values(), default=1) == 1, "an event dead-lettered twice"
    for letter in letters:
        assert CODES.get(letter.code) is CodeClass.DATA, (letter.code, letter.reason)
    for key, row in stored.items():
        event = sent[key]
        assert (row["testcol1"], row["testcol2"]) == (event["testcol1"], event["testcol2"])
    # Campaign takes collections all along: transient faults met while a poisoned
    # batch was split must not make a lane fall back to one record per call.
    for lane in (lane for by_name in lanes for lane in by_name.values()):
        assert lane["collections"] and lane["collection_fallback"] is None, lane
    # The mix really happened: every kind was drawn, the storms and outages hit.
    injected = {k.removeprefix("inject:") for k in stats["faults_by_kind"]}
    wanted = {k.removeprefix("rate_") for k in RATES}
    assert wanted <= injected, f"never injected: {wanted - injected}"
    assert stats["responses_by_status"].get("429", 0) > 0
    assert any(c["outcome"] == "outage" for c in calls)


async def test_a_long_outage_does_not_end_the_writer(
    simulator_factory, tmp_path: Path, figures: Figures
) -> None:
    """More than 1,100 failed calls in a row on one lane (a long outage, compressed here
    with millisecond backoffs): the writer process stays up, and delivers everything once
    Campaign is back."""
    simulator = await simulator_factory(tps_limit=0, latency_ms=0, latency_jitter=0)
    await simulator.control(outage_s=3600)
    tree = base_tree(
        simulator.url,
        tmp_path / "queue.sqlite3",
        retry__initial_backoff_s=0.001,
        retry__max_backoff_s=0.002,
    )
    writer = WriterProc(tmp_path, tree)
    try:
        url = await writer.start()
        await post_events(url, sample_events(50, prefix="outage-"))

        async def failed_enough() -> bool:
            writer.check_alive()
            # Logon attempts and Ingest calls alike: each failure counts on the lane.
            return int((await simulator.stats())["calls_total"]) > 1_100

        await wait_for(failed_enough, timeout=90, interval=0.2)
        outage_calls = (await simulator.stats())["calls_total"]
        await simulator.control(outage_s=0)
        await wait_for(lambda: _stored(simulator, 50), timeout=60, interval=0.2)
        writer.check_alive()
        assert await writer.stop() == 0
    finally:
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)
    figures.faults["outage"] += outage_calls
    figures.acknowledged += 50


async def _stored(simulator, count: int) -> bool:
    return len(await simulator.records(SAMPLE)) >= count
