"""The commit window: appends close together share a commit; nobody else is kept waiting.

The policy (:class:`GroupCommit`) is driven with given times; the queue tests run the
real queue thread on a real file.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from campaign_writer.errors import QueueError
from campaign_writer.queue import DurableQueue
from campaign_writer.queue.window import ENOUGH_ROWS, GroupCommit
from tests.queue.support import items, rows

WINDOW = 0.02


def test_no_window_never_waits() -> None:
    policy = GroupCommit(0.0)
    assert [policy.wait_s(t / 1000) for t in range(10)] == [0.0] * 10


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        GroupCommit(-0.001)


def test_sparse_appends_never_wait() -> None:
    """Appends further apart than the window: nobody would join, so no wait."""
    policy = GroupCommit(WINDOW)
    policy.credit = GroupCommit.CREDIT
    for n in range(20):
        now = n * (WINDOW * 2)
        assert policy.wait_s(now) == 0.0
        policy.done(1, False, now)


def test_concurrent_producers_keep_the_window() -> None:
    """Every wait finds company: the first append of each round keeps waiting."""
    policy = GroupCommit(WINDOW)
    policy.wait_s(0.0)
    policy.done(1, False, 0.0)  # the very first append has nobody before it
    now = 0.005
    waits = 0
    for _ in range(50):
        wait = policy.wait_s(now)
        assert wait == WINDOW
        waits += 1
        # Two more appends joined during the window; the next round starts 5 ms after.
        policy.done(3, True, now + WINDOW)
        now += WINDOW + 0.005
    assert policy.waits == policy.joined == waits == 50
    assert policy.credit == GroupCommit.CREDIT


def test_a_wait_cut_short_by_another_job_spends_no_credit() -> None:
    policy = GroupCommit(WINDOW)
    policy.credit = 3
    policy.wait_s(0.0)
    assert policy.wait_s(0.005) == WINDOW
    policy.done(1, True, 0.006, cut=True)  # a lease came 1 ms in: nobody had time to join
    assert policy.credit == 3
    assert policy.wait_s(0.008) == WINDOW
    policy.done(1, True, 0.028)  # this one ran its course alone
    assert policy.credit == 2


def test_long_windows_are_probed_rarely() -> None:
    """A serial producer spends about 2% of its time in probes whatever the window."""
    for window in (0.02, 0.2, 1.0):
        policy = GroupCommit(window)
        assert policy.probe_s == max(GroupCommit.PROBE_S, 50 * window)
        now = waited = 0.0
        while now < 120.0:
            wait = policy.wait_s(now)
            waited += wait
            policy.done(1, wait > 0, now + wait)
            now += wait + 0.003  # the commit and the next post
        assert waited / now <= 0.025, (window, waited / now)


def test_a_serial_producer_is_probed_once_a_second() -> None:
    """Each append comes 2 ms after the previous answer and nobody ever joins: after the
    first lonely wait, only one append a second waits (a probe)."""
    policy = GroupCommit(WINDOW)
    now = 0.0
    waited_at: list[float] = []
    while now < 3.0:
        wait = policy.wait_s(now)
        if wait:
            waited_at.append(now)
        policy.done(1, wait > 0, now + wait)
        now += wait + 0.002
    assert len(waited_at) == 3  # at about 0 s, 1 s and 2 s
    assert all(b - a >= GroupCommit.PROBE_S for a, b in itertools.pairwise(waited_at))
    assert policy.joined == 0


def test_credit_runs_out_after_lonely_waits() -> None:
    """Company restores CREDIT waits; each wait that ends alone spends one. Then one
    probe (none has been made yet), then nothing until a second after it ended."""
    policy = GroupCommit(WINDOW)
    policy.wait_s(0.0)
    policy.done(4, False, 0.0)  # appends were already queued: concurrency is evident
    assert policy.credit == GroupCommit.CREDIT
    now = 0.005
    lonely = 0
    for _ in range(100):  # bounded, so a policy that never stops fails rather than hangs
        if not policy.wait_s(now):
            break
        lonely += 1
        policy.done(1, True, now + WINDOW)
        now += WINDOW + 0.002
    assert lonely == GroupCommit.CREDIT + 1
    assert policy.credit == 0
    probe_ended = now - 0.002  # the last wait (the probe) ended there
    while now < probe_ended + GroupCommit.PROBE_S:
        assert policy.wait_s(now) == 0.0
        policy.done(1, False, now)
        now += 0.002
    assert policy.wait_s(now) == WINDOW


async def test_appends_close_together_share_commits(tmp_path: Path) -> None:
    """Forty appends started 5 ms apart, none waiting for another's answer: with a
    100 ms window they go to disk in a handful of commits, and every record is kept."""
    path = tmp_path / "queue.sqlite3"
    # NORMAL: commits as quick as the disk allows none to be, so they never group of
    # themselves (appends queued behind a slow commit share it without waiting).
    queue = await DurableQueue.open(path, synchronous="NORMAL", commit_window_s=0.1)
    try:
        before = queue.commits
        tasks = []
        for n in range(40):
            tasks.append(asyncio.create_task(queue.append(items(f"a{n}-", 5))))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        commits = queue.commits - before
        stats = queue.commit_stats()
    finally:
        await queue.close()
    assert commits <= 10, commits
    assert stats["window_joined"] >= 1
    assert stats["commit_window_ms"] == 100
    assert rows(path, "SELECT count(*) FROM records") == [(200,)]


async def test_a_serial_producer_is_not_kept_waiting(tmp_path: Path) -> None:
    """Appends awaited one after another: nobody joins, so after the first lonely wait
    only a probe a second waits, however long the window."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", commit_window_s=0.3)
    try:
        started = time.monotonic()
        for n in range(60):
            await queue.append(items(f"s{n}-", 2))
        elapsed = time.monotonic() - started
        stats = queue.commit_stats()
    finally:
        await queue.close()
    assert stats["window_joined"] == 0
    assert queue.grouping.probe_s == 15.0  # 50 windows
    assert 1 <= stats["window_waits"] <= 1 + elapsed / queue.grouping.probe_s, (stats, elapsed)


async def _waiting_append(queue: DurableQueue) -> asyncio.Task[None]:
    """An append that is waiting out the window (a probe: it follows another closely)."""
    await queue.append(items("first-", 1))
    task = asyncio.create_task(queue.append(items("second-", 1)))
    # Until the queue thread has taken it (and a little longer, to be inside the wait).
    for _ in range(1000):
        await asyncio.sleep(0.01)
        if queue._jobs.empty():
            break
    await asyncio.sleep(0.05)
    assert queue.grouping.waits == 0  # the round counts its wait once it ends
    assert not task.done()
    return task


async def test_another_job_ends_the_window(tmp_path: Path) -> None:
    """A lease arriving during a long window is not made to sit it out: the round
    commits at once, with the waiting append in it, and spends no credit."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", commit_window_s=20.0)
    try:
        queue.grouping.credit = 3
        task = await _waiting_append(queue)
        await asyncio.sleep(0.05)
        leased = await asyncio.wait_for(queue.refresh(), 10)
        await asyncio.wait_for(task, 10)
        assert leased is None
        assert queue.grouping.waits == 1
        assert queue.grouping.credit == 3  # cut short: nobody had time to join, none spent
    finally:
        await queue.close()


async def test_close_during_the_window_keeps_the_waiting_append(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    queue = await DurableQueue.open(path, commit_window_s=20.0)
    try:
        task = await _waiting_append(queue)
    finally:
        await asyncio.wait_for(queue.close(), 10)
    await asyncio.wait_for(task, 1)
    assert sorted(r[0] for r in rows(path, "SELECT key FROM records")) == ["first-0", "second-0"]


async def test_large_appends_do_not_wait(tmp_path: Path) -> None:
    """Appends that already hold enough rows commit at once, however close together."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", commit_window_s=20.0)
    try:
        for n in range(5):
            await asyncio.wait_for(queue.append(items(f"big{n}-", ENOUGH_ROWS)), 10)
        assert queue.grouping.waits == 0
    finally:
        await queue.close()


async def test_a_large_append_ends_the_window(tmp_path: Path) -> None:
    """A large append arriving during a window joins the round and ends it at once."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", commit_window_s=20.0)
    try:
        small = await _waiting_append(queue)
        await asyncio.sleep(0.05)
        big = asyncio.create_task(queue.append(items("joins-", ENOUGH_ROWS)))
        await asyncio.wait_for(asyncio.gather(small, big), 10)
        assert (queue.grouping.waits, queue.grouping.joined) == (1, 1)
    finally:
        await queue.close()


async def test_a_failure_while_gathering_fails_the_round_not_the_thread(tmp_path: Path) -> None:
    """A bug in the window's code answers the appends of that round with an error; the
    queue thread carries on with the next ones."""
    queue = await DurableQueue.open(tmp_path / "queue.sqlite3", commit_window_s=0.05)
    try:

        def broken(now: float) -> float:
            raise RuntimeError("broken policy")

        queue.grouping.wait_s = broken  # type: ignore[method-assign]
        with pytest.raises(QueueError, match="internal queue error"):
            await asyncio.wait_for(queue.append(items("lost-", 1)), 10)
        del queue.grouping.wait_s
        await asyncio.wait_for(queue.append(items("kept-", 1)), 10)
    finally:
        await asyncio.wait_for(queue.close(), 10)
    assert rows(tmp_path / "queue.sqlite3", "SELECT key FROM records") == [("kept-0",)]
