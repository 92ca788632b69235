"""Invariants under any sequence of operations: every record is acked or dead-lettered once."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from campaign_writer.deadletter import DeadLetterStore
from campaign_writer.queue import DurableQueue, read_stats
from tests.queue.support import WallClock, append_elsewhere, items

T = TypeVar("T")


class QueueMachine(RuleBasedStateMachine):
    """Drives a real queue file and a model of where every record should be."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "queue.sqlite3"
        self.loop = asyncio.new_event_loop()
        self.clock = WallClock()
        self.queue = self.run(DurableQueue.open(self.path, clock=self.clock))
        self.ready: set[str] = set()
        self.waiting: dict[str, float] = {}  # key -> retry_at
        self.leased: dict[str, int] = {}  # key -> queue id
        self.attempts: dict[str, int] = {}
        self.acked: set[str] = set()
        self.dead: set[str] = set()
        self.appended = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def take(self, count: int) -> tuple[list[str], list[int]]:
        chosen = sorted(self.leased)[:count]
        return chosen, [self.leased.pop(key) for key in chosen]

    @rule(count=st.integers(1, 30))
    def append(self, count: int) -> None:
        new = items(f"k{self.appended}-", count, created_at=1000.0 + self.appended)
        self.appended += count
        self.run(self.queue.append(new))
        self.ready.update(str(i.key) for i in new)

    @rule(count=st.integers(1, 30))
    def append_from_another_process(self, count: int) -> None:
        """Rows another process commits between ours; refresh() makes the queue look now
        (the queue thread's idle poll would, within a quarter of a second)."""
        new = items(f"k{self.appended}-", count, created_at=1000.0 + self.appended)
        self.appended += count
        append_elsewhere(self.path, new)
        self.run(self.queue.refresh())
        self.ready.update(str(i.key) for i in new)

    @rule(count=st.integers(1, 40))
    def lease(self, count: int) -> None:
        due = {key for key, at in self.waiting.items() if at <= self.clock.now}
        leased = self.run(self.queue.lease(count))
        keys = [str(record.key) for record in leased]
        assert len(keys) == len(set(keys)), "a record was leased twice"
        assert set(keys) <= self.ready | due, "leased a record that was not ready"
        assert len(keys) == min(count, len(self.ready | due)), "a ready record was not leased"
        for record in leased:
            key = str(record.key)
            assert record.attempts == self.attempts.get(key, 0)
            self.ready.discard(key)
            self.waiting.pop(key, None)
            self.leased[key] = record.id

    @precondition(lambda self: self.leased)
    @rule(count=st.integers(1, 20))
    def ack(self, count: int) -> None:
        keys, ids = self.take(count)
        self.run(self.queue.ack(ids))
        self.acked.update(keys)

    @precondition(lambda self: self.leased)
    @rule(count=st.integers(1, 10), delay=st.integers(0, 90))
    def retry(self, count: int, delay: int) -> None:
        keys, ids = self.take(count)
        self.run(self.queue.retry(ids, self.clock.now + delay, "transient"))
        for key in keys:
            self.waiting[key] = self.clock.now + delay
            self.attempts[key] = self.attempts.get(key, 0) + 1

    @precondition(lambda self: self.leased)
    @rule(count=st.integers(1, 10))
    def release(self, count: int) -> None:
        keys, ids = self.take(count)
        self.run(self.queue.release(ids))
        self.ready.update(keys)

    @precondition(lambda self: self.leased)
    @rule(count=st.integers(1, 5))
    def dead_letter(self, count: int) -> None:
        keys, ids = self.take(count)
        # An id listed twice must still move once.
        self.run(self.queue.dead_letter([(i, "refused", 400, "XSV-350023") for i in ids + ids]))
        self.dead.update(keys)

    @rule(seconds=st.integers(1, 120))
    def advance(self, seconds: int) -> None:
        self.clock.now += seconds

    @rule()
    def reopen(self) -> None:
        self.run(self.queue.close())
        self.queue = self.run(DurableQueue.open(self.path, clock=self.clock))
        self.ready.update(self.leased)
        self.leased.clear()

    @invariant()
    def totals_match_the_model(self) -> None:
        stats = self.queue.stats()
        assert stats.depth == len(self.ready) + len(self.waiting) + len(self.leased)
        assert stats.dead_letters == len(self.dead)
        assert stats.leased == len(self.leased)
        # The figures the queue keeps in memory (read back only when another process
        # writes) are the file's own.
        on_file = read_stats(self.path)
        assert (
            stats.depth,
            stats.bytes,
            stats.dead_letters,
            stats.dead_letter_bytes,
            dict(stats.dead_letters_by_reason),
            stats.oldest_created_at,
        ) == (
            on_file.depth,
            on_file.bytes,
            on_file.dead_letters,
            on_file.dead_letter_bytes,
            dict(on_file.dead_letters_by_reason),
            on_file.oldest_created_at,
        )

    def teardown(self) -> None:
        try:
            self.clock.now += 10_000
            self.run(self.queue.ack(list(self.leased.values())))
            self.acked.update(self.leased)
            while leased := self.run(self.queue.lease(1000)):
                self.run(self.queue.ack([record.id for record in leased]))
                self.acked.update(str(record.key) for record in leased)
            assert (self.queue.stats().depth, self.queue.stats().bytes) == (0, 0)
            self.run(self.queue.close())
            assert not self.acked & self.dead
            assert len(self.acked) + len(self.dead) == self.appended
            with DeadLetterStore(self.path) as store:
                entries = [entry for page in store.iter_entries() for entry in page]
            assert sorted(str(entry.key) for entry in entries) == sorted(self.dead)
            assert all(entry.event.startswith(b'{"type":"sample","id":"k') for entry in entries)
        finally:
            self.run(self.queue.close())
            self.loop.close()
            self.directory.cleanup()


def test_invariants_every_record_is_acked_or_dead_lettered_exactly_once() -> None:
    """Any mix of append (here or by another process), lease, ack, retry, release,
    dead-letter, time and restarts keeps it."""
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
