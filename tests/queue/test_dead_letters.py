"""The dead-letter queue: original events kept, reasons counted, other processes' changes seen."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import orjson

from campaign_writer.config import load
from campaign_writer.deadletter import DeadLetterStore
from campaign_writer.queue import DurableQueue, read_stats
from campaign_writer.router import Router
from tests.queue.support import items

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"


async def test_dead_letter_keeps_the_original_event_reason_status_and_code(
    tmp_path: Path,
) -> None:
    """A dead-lettered record keeps its event bytes, and the DLQ counts entries by code."""
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path)
    try:
        await queue.append(items("a", 3, size=10))
        leased = await queue.lease(3)
        await queue.dead_letter([(leased[0].id, "SOP-330011 bad value", 500, "PGS-220000")])
        await queue.dead_letter([(leased[1].id, "gave up", None, "")])
        await queue.dead_letter_raw(
            "orders", b"\xffnot json", {"x-retry": "3"}, "invalid JSON: ...", code="INTAKE"
        )
        stats = queue.stats()
        assert (stats.depth, stats.dead_letters) == (1, 3)
        assert stats.dead_letters_by_reason == {"PGS-220000": 1, "error": 1, "INTAKE": 1}
    finally:
        await queue.close()
    with DeadLetterStore(path) as store:
        first, second, raw = store.page()
    assert orjson.loads(first.event) == {"type": "sample", "id": "a0", "pad": "x" * 10}
    assert (first.reason, first.status, first.code, first.key) == (
        "SOP-330011 bad value",
        500,
        "PGS-220000",
        "a0",
    )
    assert first.record is not None and first.lane == "dem:sampleTableStg#Ingest"
    assert (second.status, second.code) == (None, "error")
    assert (raw.source, raw.event, raw.headers, raw.record) == (
        "orders",
        b"\xffnot json",
        {"x-retry": "3"},
        None,
    )


def _replay_in_another_process(path: str, config: str) -> None:
    with DeadLetterStore(path) as store:
        store.replay(Router.from_config(load(config)))


async def test_replay_by_another_process_reaches_the_running_queue(tmp_path: Path) -> None:
    """Records a CLI process re-queues from the DLQ are leased by the daemon's open queue."""
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path)
    try:
        await queue.append(items("a", 4))
        leased = await queue.lease(4)
        await queue.ack([r.id for r in leased[2:]])
        await queue.dead_letter([(r.id, "refused", 400, "XSV-350023") for r in leased[:2]])
        assert await queue.lease(10) == []
        process = multiprocessing.get_context("spawn").Process(
            target=_replay_in_another_process, args=(str(path), str(EXAMPLE))
        )
        process.start()
        await asyncio.to_thread(process.join, 60)
        assert process.exitcode == 0
        assert await queue.wait_for_records(5.0)
        replayed = await queue.lease(10)
        assert sorted(str(r.key) for r in replayed) == ["a0", "a1"]
        # The totals were re-read when the other process's commit was noticed (the same
        # wake-up that delivered the records above).
        assert queue.stats().dead_letters == 0
        assert queue.stats().dead_letters_by_reason.get("XSV-350023", 0) == 0
    finally:
        await queue.close()
    assert read_stats(path).depth == 2
