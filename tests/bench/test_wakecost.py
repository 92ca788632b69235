"""The wake-cost probes: the do-nothing responder answers every request, however the
bytes arrive, and both probes give a CPU figure."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from bench.wakecost import _Responder, responder_cpu_per_post, sleep_cpu_per_wake


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
    long_wake = await sleep_cpu_per_wake(0.005, 40, tmp_path / "sleep.log")
    per_post = await responder_cpu_per_post(0.005, 40, tmp_path / "responder.log")
    assert 0 < long_wake < 0.05
    assert 0 < per_post < 0.05
