"""The wake-cost probes: the do-nothing responder answers every request, however the
bytes arrive, and both probes give a CPU figure."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.markdown import render
from bench.runner import measure_wake_cost
from bench.wakecost import _cpu_s, _Responder, responder_cpu_per_post, sleep_cpu_per_wake

from bench import wakecost


def request(body: bytes) -> bytes:
    head = f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def test_responder_answers_each_request_once_whatever_the_packets() -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Two requests in one write: both answered without waiting for more bytes.
        writer.write(request(b"x" * 10) + request(b""))
        assert await answers(reader, 2) == 2
        # One cut inside its headers and inside its body, whose blank line is not the end
        # of the headers: answered once, when the last byte is in.
        third = request(b'{"a":1}\r\n\r\n{"b":2}\n')
        for piece in (third[:20], third[20:70]):
            writer.write(piece)
            assert await answers(reader, 0) == 0
        writer.write(third[70:])
        assert await answers(reader, 1) == 1
        assert await answers(reader, 0) == 0
    finally:
        writer.close()
        server.close()


async def answers(reader: asyncio.StreamReader, expected: int) -> int:
    """How many 202s arrive: until ``expected`` have, then 0.3 s more for any extra."""
    received = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while received.count(b"HTTP/1.1 202 Accepted") < expected:
                received += await reader.read(4096)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3):
            received += await reader.read(4096)
    return received.count(b"HTTP/1.1 202 Accepted")


async def test_probes_measure_cpu_per_wake_and_per_post(tmp_path: Path) -> None:
    cpu, wall = await sleep_cpu_per_wake(0.005, 40, tmp_path / "sleep.log")
    assert 0 < cpu < wall
    assert wall >= 0.005
    per_post = await responder_cpu_per_post(0.005, 40, tmp_path / "responder.log")
    assert 0 < per_post < 0.05


async def test_a_sleep_too_short_to_happen_is_refused(tmp_path: Path) -> None:
    # uvloop runs a sleep under half a millisecond at once: that is no wake at all.
    with pytest.raises(ValueError, match=r"asked to sleep 0\.0001 s, woke after"):
        await sleep_cpu_per_wake(0.0001, 40, tmp_path / "sleep.log")


def test_cpu_time_counts_every_thread() -> None:
    # The main thread waits while a second one spins for 0.3 s of CPU, then idles.
    code = (
        "import threading, time\n"
        "spun = threading.Event()\n"
        "def spin():\n"
        "    end = time.thread_time() + 0.3\n"
        "    while time.thread_time() < end: pass\n"
        "    spun.set(); time.sleep(30)\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
        "spun.wait(); print('spun', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "spun\n"
        assert _cpu_s(child.pid) >= 0.29
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


async def test_responder_refuses_chunked_bodies() -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        async with asyncio.timeout(5):
            assert await reader.read(4096) == b""  # closed, nothing answered
    finally:
        writer.close()
        server.close()


def report_with(wake: dict[str, Any] | None) -> dict[str, Any]:
    """The least report.json that bench.markdown.render takes."""
    return {
        "machine": {"cores": 2, "cpu_model": "test", "memory_mb": 1024},
        "settings": {
            "tps_limit": 20,
            "max_records": 500,
            "linger_ms": 200,
            "campaign_latency_ms": 50,
            "capacity_records_per_s": 10_000,
        },
        "mode": "quick",
        "started_at": "2026-11-23T00:00:00",
        "duration_s": 1.0,
        "git_commit": "0" * 7,
        "repeats": 1,
        "scale": 1.0,
        "subjects": ["writer"],
        "wake_cost": wake,
        "targets": [],
        "cases": {},
    }


def test_report_prints_the_probe_figures_or_why_they_are_missing() -> None:
    figures = {
        "tick_ms": 10.0,
        "short_ms": 1.0,
        "count": 300,
        "wake_us": 201.5,
        "short_wake_us": 6.25,
        "responder_us_per_post": 1234.5,
    }
    shown = render(report_with(figures))
    assert "a process that sleeps 10 ms spends 201.5 µs of CPU per wake" in shown
    assert "(6.2 µs after 1 ms)" in shown
    assert "spends 1,234.5 µs per post, posted every 10 ms" in shown
    failed = render(report_with({"error": "RuntimeError('no port')"}))
    assert "What waking costs on this machine: not measured (RuntimeError('no port'))." in failed
    assert "What waking costs" not in render(report_with(None))


async def test_a_failed_probe_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(logs: Path, *, posts: int) -> dict[str, Any]:
        raise RuntimeError(f"no responder ({posts} posts)")

    monkeypatch.setattr(wakecost, "measure", broken)
    assert await measure_wake_cost(tmp_path, 0.5) == {
        "error": "RuntimeError('no responder (150 posts)')"
    }
