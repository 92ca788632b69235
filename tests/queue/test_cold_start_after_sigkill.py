"""Cold start after SIGKILL: acknowledged appends survive, leases come back, nothing doubles."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import pytest

from campaign_writer.queue import DurableQueue

CHILD = Path(__file__).with_name("appender.py")


class Report:
    """What the child said it did; only whole lines count (a cut line proves nothing)."""

    def __init__(self) -> None:
        self.appended: set[str] = set()
        self.acked: set[str] = set()
        self.acking: set[str] = set()  # an ack had started; the kill may have come before
        self.leased: set[str] = set()

    def read(self, line: bytes) -> int:
        """Fold one line in; returns 1 for an append."""
        if not line.endswith(b"\n"):
            return 0
        kind, *keys = line.decode().split()
        sets = {"A": self.appended, "K": self.acked, "k": self.acking, "L": self.leased}
        sets.get(kind, set()).update(keys)
        return 1 if kind == "A" else 0


@pytest.mark.parametrize("appends_before_kill", [2, 40, 160])
async def test_cold_start_after_sigkill_keeps_every_acknowledged_append(
    tmp_path: Path, appends_before_kill: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed mid-append, the queue reopens with every append that returned and no acked record."""
    path = tmp_path / "queue.sqlite3"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    report = Report()
    seen = 0
    try:
        async with asyncio.timeout(60):
            while seen < appends_before_kill:
                line = await child.stdout.readline()
                if not line:
                    raise AssertionError(f"the child stopped: {(await child.stderr.read())!r}")
                seen += report.read(line)
    finally:
        # Four writers append all the time, so the kill lands in the middle of appends.
        child.send_signal(signal.SIGKILL)
        await child.wait()
    for line in (await child.stdout.read()).splitlines(keepends=True):
        report.read(line)
    assert child.returncode == -signal.SIGKILL

    with caplog.at_level(logging.WARNING, logger="campaign_writer.queue"):
        queue = await DurableQueue.open(path)
    try:
        assert "not closed cleanly" in caplog.text
        found: list[str] = []
        while batch := await queue.lease(10_000):
            found.extend(str(record.key) for record in batch)
        assert queue.stats().depth == len(found)
    finally:
        await queue.close()
    present = set(found)
    assert len(found) == len(present), "a record came back twice"
    kept = report.appended - report.acking
    assert kept <= present, f"lost: {sorted(kept - present)[:5]}"
    assert not report.acked & present, "an acknowledged record came back"
    assert report.leased - report.acking <= present, "a lease of the killed run was not freed"
    # Appends that committed just before the kill, their line never printed, are whole.
    strays = present - report.appended
    for batch in {key.rsplit("-", 1)[0] for key in strays}:
        members = {f"{batch}-{i}" for i in range(25)}
        assert members - report.acking <= present, f"append {batch} is only partly there"
