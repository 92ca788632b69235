"""Wakeup: the event the feeder and dispatcher wait on, with a timeout and no task per wait."""

from __future__ import annotations

import asyncio

import pytest

from campaign_writer.wakeup import Wakeup


async def test_set_wakes_every_waiter_with_true() -> None:
    wakeup = Wakeup()
    waiters = [asyncio.create_task(wakeup.wait(30.0)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiters)
    wakeup.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert wakeup._waiters == []


async def test_a_set_flag_returns_at_once_until_cleared() -> None:
    wakeup = Wakeup()
    wakeup.set()
    assert wakeup.is_set()
    assert await wakeup.wait(0) is True
    wakeup.clear()
    assert not wakeup.is_set()
    assert await wakeup.wait(0) is False


async def test_a_timeout_returns_false_and_forgets_the_waiter() -> None:
    wakeup = Wakeup()
    assert await wakeup.wait(0.01) is False
    assert wakeup._waiters == []
    # A later set() still works for new waiters; the expired one is not woken twice.
    task = asyncio.create_task(wakeup.wait(None))
    await asyncio.sleep(0)
    wakeup.set()
    assert await task is True


async def test_a_cancelled_wait_forgets_the_waiter() -> None:
    wakeup = Wakeup()
    task = asyncio.create_task(wakeup.wait(30.0))
    await asyncio.sleep(0)
    assert len(wakeup._waiters) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wakeup._waiters == []
    wakeup.set()  # nothing left to wake, nothing raised


async def test_set_before_wait_and_set_twice_are_harmless() -> None:
    wakeup = Wakeup()
    wakeup.set()
    wakeup.set()
    assert await wakeup.wait(None) is True
