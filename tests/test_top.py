"""``campaign-writer top`` in a real pseudo-terminal, against a live writer process."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.support.simulator import SimulatorHandle
from tests.support.writer import WriterProcess, post_events, sample_events


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn_top(admin_url: str) -> pexpect.spawn:
    """`top` on a 120x40 terminal, as an operator would run it."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "campaign_writer", "top", "--url", admin_url],
        dimensions=(40, 120),
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        encoding="utf-8",
        timeout=30,
    )


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _read_until(child: pexpect.spawn, pattern: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen += child.read_nonblocking(65536, timeout=0.5)
        except pexpect.TIMEOUT:
            continue
        text = ESCAPES.sub("", seen)
        if re.search(pattern, text):
            return text
    raise AssertionError(f"{pattern!r} not on the screen within {timeout} s: {seen[-3000:]!r}")


async def screen_until(child: pexpect.spawn, pattern: str, timeout: float = 30) -> str:
    """What the terminal showed (escape sequences left out) until ``pattern`` appeared;
    read off the event loop, which serves the simulator."""
    return await asyncio.to_thread(_read_until, child, pattern, timeout)


@pytest.mark.parametrize(("key", "how"), [("q", "q"), ("\x03", "Ctrl-C")])
async def test_top_shows_the_writer_live_and_quits_cleanly(
    simulator: SimulatorHandle, tmp_path: Path, key: str, how: str
) -> None:
    """The screen shows readiness, throttle, queue, the lane and the HTTP source with its
    accepted count, refreshed; q or Ctrl-C leaves with exit code 0."""
    admin = f"http://127.0.0.1:{free_port()}"
    writer = WriterProcess(simulator.url, tmp_path, f'admin.listen="{admin[7:]}"')
    intake = await writer.start()
    child = spawn_top(admin)
    try:
        first = await screen_until(child, "sources")
        assert "campaign-writer top" in first and "ready yes" in first
        assert "tps_limit" in first and "in flight" in first
        await post_events(intake, sample_events(25))
        # A later screen: the lane exists and the HTTP source counts what was posted.
        later = await screen_until(child, r"http\s+│\s+http\s+│\s+[\d.,-]+\s+│\s+25\s")
        assert "dem:sampleTableStg#Ingest" in later
        child.send(key)
        await asyncio.to_thread(child.expect, pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, how
    finally:
        if child.isalive():
            child.terminate(force=True)
        await writer.terminate()


def test_the_screen_shows_what_the_writer_says_as_it_is() -> None:
    """Error texts from /v1/stats are shown verbatim, never read as rich markup."""
    from rich.console import Console

    from campaign_writer.commands.top import Frame, render

    source = {"name": "r", "kind": "redis_streams", "connected": False}
    source["last_error"] = "[Errno 111] [/x] refused"
    stats = {"sources": [source], "delivery": {"fatal": "[/bad] [bold]"}, "ready": {}}
    console = Console(width=140, record=True)
    console.print(render(Frame("http://127.0.0.1:9090", stats=stats, elapsed_s=1.0)))
    screen = console.export_text()
    assert "delivery stopped: [/bad] [bold]" in screen
    assert "[Errno 111] [/x] refused" in screen
