"""HTTP intake over real HTTP on 127.0.0.1 into a real queue file: every status code."""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from campaign_writer.config import load
from campaign_writer.metrics import Metrics
from campaign_writer.queue import DurableQueue
from campaign_writer.router import Router
from campaign_writer.sources import http as http_module
from campaign_writer.sources.http import HttpIntake

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.toml"
NDJSON = {"Content-Type": "application/x-ndjson"}


class Intake:
    """A started HttpIntake on a free port, its queue file and a client session."""

    def __init__(self, intake: HttpIntake, queue: DurableQueue, metrics: Metrics) -> None:
        self.intake = intake
        self.queue = queue
        self.metrics = metrics
        self.session = aiohttp.ClientSession()

    async def post(
        self, body: bytes | Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(
            f"{self.intake.url}/v1/events", data=data, headers=headers or {}
        ) as response:
            return response.status, orjson.loads(await response.read()), response.headers

    def stored_keys(self) -> list[str]:
        """The keys committed to the file, read through a separate connection."""
        connection = sqlite3.connect(self.queue.path)
        try:
            return [row[0] for row in connection.execute("SELECT key FROM records ORDER BY id")]
        finally:
            connection.close()

    def counted(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(
            f"campaign_writer_events_{name}_total", {"source": "http"}
        )
        return value or 0.0


IntakeFactory = Callable[..., Awaitable[Intake]]


@pytest.fixture
async def start_intake(tmp_path: Path) -> AsyncIterator[IntakeFactory]:
    started: list[Intake] = []

    async def start(*overrides: str, max_bytes: int = 1 << 30) -> Intake:
        config = load(
            EXAMPLE,
            overrides=[
                "http.listen=127.0.0.1:0",
                f'queue.path="{tmp_path / f"queue{len(started)}.sqlite3"}"',
                *overrides,
            ],
        )
        queue = await DurableQueue.open(config.queue.path, max_bytes=max_bytes)
        metrics = Metrics()
        intake = HttpIntake(config.http, Router.from_config(config), queue, metrics)
        await intake.start()
        started.append(Intake(intake, queue, metrics))
        return started[-1]

    yield start
    for one in started:
        await one.session.close()
        await one.intake.close()
        await one.queue.close()


def sample(key: str, **fields: Any) -> dict[str, Any]:
    return {"type": "sample", "id": key, **fields}


async def test_202_comes_after_the_events_are_committed(start_intake: IntakeFactory) -> None:
    """A JSON object, an array and NDJSON each get 202 once their events are on disk."""
    intake = await start_intake()
    status, body, _ = await intake.post(sample("one", testcol1="x"))
    assert (status, body) == (202, {"accepted": 1, "rejected": []})
    assert intake.stored_keys() == ["one"]
    status, body, _ = await intake.post([sample("two"), {"type": "recipient", "email": "a@b.c"}])
    assert (status, body) == (202, {"accepted": 2, "rejected": []})
    lines = b"\n".join(orjson.dumps(sample(f"n{i}")) for i in range(1000)) + b"\n"
    status, body, _ = await intake.post(lines, NDJSON)
    assert (status, body["accepted"]) == (202, 1000)
    assert intake.stored_keys() == ["one", "two", "a@b.c", *(f"n{i}" for i in range(1000))]
    assert (intake.counted("received"), intake.counted("accepted")) == (1003, 1003)


async def test_202_lists_each_broken_line_and_keeps_the_good_ones(
    start_intake: IntakeFactory,
) -> None:
    """Broken NDJSON lines are rejected by index with the field and fault; the rest is queued."""
    intake = await start_intake()
    body = b"\n".join(
        [
            orjson.dumps(sample("good-1")),
            b'{"type": "sample", "id": ',
            b"",
            orjson.dumps(sample("x" * 65)),
            orjson.dumps({"type": "order", "id": "1"}),
            orjson.dumps(sample("good-2", testcol2=["not", "text"])),
            b"\xff\xfe",
            orjson.dumps(sample("good-3")),
        ]
    )
    status, answer, _ = await intake.post(body, NDJSON)
    assert status == 202
    assert answer["accepted"] == 2
    errors = {entry["index"]: entry["error"] for entry in answer["rejected"]}
    assert sorted(errors) == [1, 3, 4, 5, 6]
    assert errors[1].startswith("invalid JSON:")
    assert errors[3] == "id: is 65 characters long; string(64) holds at most 64"
    assert errors[4].startswith("type: 'order' matches no route")
    assert errors[5] == "testcol2: expected a string, got array"
    assert "UTF-8" in errors[6]
    assert intake.stored_keys() == ["good-1", "good-3"]
    assert intake.counted("rejected") == 5


@pytest.mark.parametrize(
    ("body", "headers", "error"),
    [
        (b"{not json", {}, "the body is not valid JSON"),
        (b"\xff\xfe{}", {"Content-Type": "application/json"}, "not valid UTF-8"),
        (b"", {}, "the body is not valid JSON"),
        (b"42", {}, "the body must be a JSON object or an array of objects"),
        (b"[]", {}, "no events in body"),
        (b"\n\n", NDJSON, "no events in body"),
    ],
)
async def test_400_when_the_body_itself_is_unusable(
    start_intake: IntakeFactory, body: bytes, headers: dict[str, str], error: str
) -> None:
    """Bad JSON, bad UTF-8, no events: 400 with the usual body and the reason."""
    intake = await start_intake()
    status, answer, _ = await intake.post(body, headers)
    assert status == 400
    assert answer["accepted"] == 0
    assert answer["rejected"][0]["index"] is None
    assert error in answer["rejected"][0]["error"]
    assert intake.stored_keys() == []


async def test_400_when_every_event_is_rejected(start_intake: IntakeFactory) -> None:
    """When no event maps, the answer is 400 with each rejection, and nothing is stored."""
    intake = await start_intake()
    status, answer, _ = await intake.post([{"type": "sample"}, "text", sample("")])
    assert status == 400
    assert answer == {
        "accepted": 0,
        "rejected": [
            {"index": 0, "error": "id: is required"},
            {"index": 1, "error": "an event must be a JSON object, got string"},
            {"index": 2, "error": "id: is required and must not be empty"},
        ],
        "rejected_total": 3,
        "rejected_by_reason": {
            "id: is required": 1,
            "an event must be a JSON object, got string": 1,
            "id: is required and must not be empty": 1,
        },
    }
    assert intake.stored_keys() == []


async def test_stats_metrics_and_repr_read_one_count(start_intake: IntakeFactory) -> None:
    """The intake counts each event once: /v1/stats, the metrics and its repr agree,
    rejections in a 400 answer included."""
    intake = await start_intake()
    await intake.post([sample("a"), sample("b"), {"type": "sample"}])
    await intake.post([{"type": "sample"}, "text"])
    stats = intake.intake.stats()
    assert (stats["requests"], stats["accepted"], stats["rejected"]) == (2, 2, 3)
    assert (intake.counted("accepted"), intake.counted("rejected")) == (2, 3)
    assert "requests=2 accepted=2 rejected=3" in repr(intake.intake)


async def test_401_without_the_token_compared_in_constant_time(
    start_intake: IntakeFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With http.token set, a missing or wrong bearer token gets 401; comparison is hmac's."""
    token_file = tmp_path / "token"
    token_file.write_text("intake-token-0123\n", encoding="utf-8")
    compared: list[tuple[bytes, bytes]] = []
    real = http_module.hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(http_module.hmac, "compare_digest", spy)
    intake = await start_intake(f'http.token_file="{token_file}"')
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        status, _, response_headers = await intake.post(sample("a"), headers)
        assert status == 401
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = await intake.post(sample("a"), {"Authorization": "Bearer intake-token-0123"})
    assert status == 202
    assert compared[-1] == (b"intake-token-0123", b"intake-token-0123")
    assert (b"wrong", b"intake-token-0123") in compared
    assert intake.stored_keys() == ["a"]


async def test_413_over_max_body_bytes_declared_or_streamed(start_intake: IntakeFactory) -> None:
    """A body over http.max_body_bytes gets 413 whether its length is declared or chunked."""
    intake = await start_intake("http.max_body_bytes=2048")
    big = b"\n".join(orjson.dumps(sample(f"k{i}", testcol1="y" * 50)) for i in range(60))
    status, answer, _ = await intake.post(big, NDJSON)
    assert status == 413
    assert "2048 bytes" in answer["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    async with intake.session.post(
        f"{intake.intake.url}/v1/events", data=chunks(), headers=NDJSON
    ) as response:
        assert response.status == 413
    assert intake.stored_keys() == []
    status, _, _ = await intake.post(big[:1500], NDJSON)
    assert status == 202


async def test_503_with_retry_after_when_the_queue_is_full(start_intake: IntakeFactory) -> None:
    """A full queue answers 503 with Retry-After and keeps nothing of the refused request."""
    intake = await start_intake(max_bytes=64 * 1024)
    batch = b"\n".join(orjson.dumps(sample(f"a{i}", testcol1="z" * 200)) for i in range(60))
    refused = None
    for _ in range(20):
        status, answer, headers = await intake.post(batch, NDJSON)
        if status == 503:
            refused = (answer, headers)
            break
        assert status == 202
    assert refused is not None, "the queue never filled"
    answer, headers = refused
    assert headers["Retry-After"] == str(http_module.RETRY_AFTER_S)
    assert "full" in answer["error"]
    stored = len(intake.stored_keys())
    assert stored % 60 == 0  # whole requests only: nothing half-written
    assert stored == intake.queue.stats().depth
    small = orjson.dumps(sample("small"))
    while (await intake.post(small))[0] == 202:
        pass  # top up until even a small request is refused by the exact check
    assert intake.stored_keys()[-1] == "small"
    assert intake.queue.stats().depth == len(intake.stored_keys())


async def test_500_when_the_queue_fails_and_nothing_is_acknowledged(
    start_intake: IntakeFactory,
) -> None:
    """If the queue cannot store events the client gets 500, never a 202."""
    intake = await start_intake()
    await intake.queue.close()
    status, answer, _ = await intake.post(sample("lost"))
    assert status == 500
    assert "nothing was kept" in answer["error"]


# --- HTTP/1.1 on the wire: raw sockets, so nothing a client library smooths over -------


class Wire:
    """A raw TCP connection to the intake that reads whole HTTP answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, intake: Intake) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", intake.intake.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """One answer: status, headers (names lowercased) and body (Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def closed_by_server(self) -> bool:
        """True when the server ends the connection (EOF) with nothing more to read."""
        try:
            return await asyncio.wait_for(self.reader.read(), 10) == b""
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()


def post_bytes(body: bytes, *extra: str, version: str = "1.1", path: str = "/v1/events") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: x", "Content-Type: application/x-ndjson"]
    head += [*extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def event_line(key: str) -> bytes:
    return orjson.dumps(sample(key)) + b"\n"


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    start_intake: IntakeFactory,
) -> None:
    """Several requests on one connection, some sent in one write before any answer:
    each is answered, in the order sent, and the connection stays open."""
    intake = await start_intake()
    wire = await Wire.open(intake)
    await wire.send(post_bytes(event_line("k0")))
    status, headers, body = await wire.answer()
    assert (status, orjson.loads(body)) == (202, {"accepted": 1, "rejected": []})
    assert "connection" not in headers and headers["content-type"] == "application/json"
    assert "date" in headers
    pipelined = [
        post_bytes(event_line("k1") + event_line("k2")),
        post_bytes(b"{broken\n"),
        post_bytes(event_line("k3"), path="/elsewhere"),
        post_bytes(event_line("k4")),
    ]
    await wire.send(b"".join(pipelined))
    answers = [await wire.answer() for _ in pipelined]
    assert [a[0] for a in answers] == [202, 400, 404, 202]
    assert orjson.loads(answers[0][2])["accepted"] == 2
    assert orjson.loads(answers[3][2])["accepted"] == 1
    assert intake.stored_keys() == ["k0", "k1", "k2", "k4"]
    wire.close()


async def test_chunked_bodies_and_expect_100_continue(start_intake: IntakeFactory) -> None:
    """A chunked body is reassembled; Expect: 100-continue gets its go-ahead before the
    body, and a declared body over the limit is refused without being sent."""
    intake = await start_intake("http.max_body_bytes=4096")
    wire = await Wire.open(intake)
    body = event_line("c1") + event_line("c2")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    await wire.send(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    status, _, answer = await wire.answer()
    assert (status, orjson.loads(answer)["accepted"]) == (202, 2)

    request = post_bytes(event_line("e1"), "Expect: 100-continue")
    head, _, payload = request.partition(b"\r\n\r\n")
    await wire.send(head + b"\r\n\r\n")
    assert await asyncio.wait_for(wire.reader.readuntil(b"\r\n\r\n"), 10) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    await wire.send(payload)
    assert (await wire.answer())[0] == 202

    await wire.send(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 999999\r\n\r\n"
    )
    status, headers, answer = await wire.answer()
    assert status == 413 and headers["connection"] == "close"
    assert "4096 bytes" in orjson.loads(answer)["error"]
    assert await wire.closed_by_server()
    assert intake.stored_keys() == ["c1", "c2", "e1"]


async def test_http_1_0_and_a_half_closed_client_get_their_answer_then_close(
    start_intake: IntakeFactory,
) -> None:
    """An HTTP/1.0 request is answered and the connection ends, unless it asked to be
    kept alive; a client that half-closes after its request still gets the answer."""
    intake = await start_intake()
    wire = await Wire.open(intake)
    await wire.send(post_bytes(event_line("old"), version="1.0"))
    status, headers, _ = await wire.answer()
    assert status == 202 and headers.get("connection", "close").lower() == "close"
    assert await wire.closed_by_server()

    wire = await Wire.open(intake)
    for key in ("alive1", "alive2"):
        await wire.send(post_bytes(event_line(key), "Connection: keep-alive", version="1.0"))
        status, headers, _ = await wire.answer()
        assert (status, headers["connection"].lower()) == (202, "keep-alive")
    wire.close()

    wire = await Wire.open(intake)
    await wire.send(post_bytes(event_line("half")))
    wire.writer.write_eof()  # the client is done sending, and waits for the answer
    status, headers, _ = await wire.answer()
    assert status == 202
    assert await wire.closed_by_server()
    assert intake.stored_keys() == ["old", "alive1", "alive2", "half"]


@pytest.mark.parametrize(
    ("request_bytes", "status", "fragment"),
    [
        (b"GARBAGE\r\n\r\n", 400, "not a valid HTTP/1.1 request"),
        (
            b"POST /v1/events HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "not a valid HTTP/1.1 request",
        ),
        (
            b"POST /v1/events HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
            431,
            "headers",
        ),
        (
            b"POST /v1/events HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
            431,
            "headers",
        ),
    ],
)
async def test_broken_or_oversized_requests_get_an_answer_and_the_connection_ends(
    start_intake: IntakeFactory, request_bytes: bytes, status: int, fragment: str
) -> None:
    intake = await start_intake()
    wire = await Wire.open(intake)
    await wire.send(request_bytes)
    got, headers, body = await wire.answer()
    assert (got, headers["connection"]) == (status, "close")
    assert fragment in orjson.loads(body)["error"]
    assert await wire.closed_by_server()


async def test_wrong_method_is_405_and_the_connection_stays_usable(
    start_intake: IntakeFactory,
) -> None:
    intake = await start_intake()
    wire = await Wire.open(intake)
    await wire.send(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await wire.answer()
    assert (status, headers["allow"]) == (405, "POST")
    await wire.send(post_bytes(event_line("after")))
    assert (await wire.answer())[0] == 202
    wire.close()


async def test_idle_and_stalled_connections_are_closed(
    start_intake: IntakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle keep-alive connection is closed; a request that stops arriving gets 408."""
    monkeypatch.setattr(http_module, "IDLE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(http_module, "READ_TIMEOUT_S", 0.3)
    intake = await start_intake()
    idle = await Wire.open(intake)
    await idle.send(post_bytes(event_line("i")))
    assert (await idle.answer())[0] == 202
    assert await idle.closed_by_server()

    stalled = await Wire.open(intake)
    await stalled.send(post_bytes(event_line("never-finished"))[:-5])
    status, headers, _ = await stalled.answer()
    assert (status, headers["connection"]) == (408, "close")
    assert await stalled.closed_by_server()
    assert intake.stored_keys() == ["i"]


async def test_close_lets_a_request_under_way_finish(start_intake: IntakeFactory) -> None:
    """close() stops the listener but a request whose events are being committed still
    gets its 202; idle connections are closed."""
    intake = await start_intake()
    idle = await Wire.open(intake)
    busy = await Wire.open(intake)
    await asyncio.sleep(0.05)  # both accepted
    request = post_bytes(event_line("in-flight"))
    await busy.send(request[:-3])
    await asyncio.sleep(0.05)  # its headers have arrived: the request is under way
    closing = asyncio.create_task(intake.intake.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waiting for the request under way
    await busy.send(request[-3:])
    assert (await busy.answer())[0] == 202
    await asyncio.wait_for(closing, 10)
    assert await idle.closed_by_server()
    assert intake.stored_keys() == ["in-flight"]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", intake.intake.port)
    busy.close()


async def test_gzip_and_deflate_bodies_are_inflated_within_the_limit(
    start_intake: IntakeFactory,
) -> None:
    """Compressed bodies are accepted; the size limit holds once inflated (a small
    bomb is refused with 413); an unknown encoding gets 415 and nothing is stored."""
    intake = await start_intake("http.max_body_bytes=4096")
    lines = event_line("g1") + event_line("g2")
    gz = zlib.compressobj(wbits=31)
    status, answer, _ = await intake.post(
        gz.compress(lines) + gz.flush(), {**NDJSON, "Content-Encoding": "gzip"}
    )
    assert (status, answer["accepted"]) == (202, 2)
    status, answer, _ = await intake.post(
        zlib.compress(event_line("d1")), {**NDJSON, "Content-Encoding": "deflate"}
    )
    assert (status, answer["accepted"]) == (202, 1)
    bomb = zlib.compress(b"\n" * 100_000)
    assert len(bomb) < 4096
    status, answer, _ = await intake.post(bomb, {**NDJSON, "Content-Encoding": "deflate"})
    assert (status, "once decompressed" in answer["error"]) == (413, True)
    status, answer, _ = await intake.post(b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"})
    assert status == 400 and "decompressed" in answer["rejected"][0]["error"]
    status, answer, _ = await intake.post(lines, {**NDJSON, "Content-Encoding": "br"})
    assert status == 415 and "'br'" in answer["error"]
    assert intake.stored_keys() == ["g1", "g2", "d1"]


async def test_head_is_refused_without_a_body_and_the_connection_stays_usable(
    start_intake: IntakeFactory,
) -> None:
    """HEAD gets 405 with its headers only (no body follows a HEAD answer), and the
    connection goes on."""
    intake = await start_intake()
    wire = await Wire.open(intake)
    await wire.send(b"HEAD /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(wire.reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: POST" in head
    await wire.send(post_bytes(event_line("after-head")))
    assert (await wire.answer())[0] == 202
    wire.close()
    assert intake.stored_keys() == ["after-head"]


# --- hardening: each of these failed on the hand-written server ------------------------


def gzip_member(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=31)
    return packer.compress(data) + packer.flush()


async def test_a_gzip_body_of_several_members_is_read_whole(start_intake: IntakeFactory) -> None:
    """``cat a.gz b.gz`` is one legal gzip body (RFC 1952): every member's events are
    stored. Bytes after a deflate stream, or a broken later member, are a 400 that says
    why, and nothing of that body is kept."""
    intake = await start_intake()
    body = gzip_member(event_line("m1")) + gzip_member(event_line("m2") + event_line("m3"))
    status, answer, _ = await intake.post(body, {**NDJSON, "Content-Encoding": "gzip"})
    assert (status, answer["accepted"]) == (202, 3)
    padded = gzip_member(event_line("m4")) + b"\0" * 8  # zero padding, as some tools add
    status, answer, _ = await intake.post(padded, {**NDJSON, "Content-Encoding": "gzip"})
    assert (status, answer["accepted"]) == (202, 1)
    broken = gzip_member(event_line("lost1")) + b"\x1f\x8bjunk"
    status, answer, _ = await intake.post(broken, {**NDJSON, "Content-Encoding": "gzip"})
    assert status == 400 and "member 2" in answer["rejected"][0]["error"]
    trailing = zlib.compress(event_line("lost2")) + b"more"
    status, answer, _ = await intake.post(trailing, {**NDJSON, "Content-Encoding": "deflate"})
    assert status == 400 and "after the end" in answer["rejected"][0]["error"]
    assert intake.stored_keys() == ["m1", "m2", "m3", "m4"]


async def test_a_bomb_spread_over_many_members_is_held_to_the_limit(
    start_intake: IntakeFactory,
) -> None:
    intake = await start_intake("http.max_body_bytes=4096")
    member = gzip_member(b"\n" * 3000)
    status, answer, _ = await intake.post(member * 3, {**NDJSON, "Content-Encoding": "gzip"})
    assert status == 413 and "once decompressed" in answer["error"]


async def test_the_answer_to_a_bad_body_is_bounded(start_intake: IntakeFactory) -> None:
    """200,000 broken lines in a 1 KB gzip body: the answer lists the first 100, counts
    them all, and counts them by reason, in a few kilobytes."""
    intake = await start_intake("http.max_body_bytes=64MiB")
    lines = b'{"type":"sample"}\n' * 150_000 + b'{"type":"sample","id":"' + b"x" * 70 + b'"}\n'
    lines += b"[broken\n" * 50_000
    body = gzip_member(lines)
    assert len(body) < 20_000
    async with intake.session.post(
        f"{intake.intake.url}/v1/events",
        data=body,
        headers={**NDJSON, "Content-Encoding": "gzip"},
    ) as response:
        raw = await response.read()
        assert response.status == 400
    assert len(raw) < 16 * 1024, len(raw)
    answer = orjson.loads(raw)
    assert len(answer["rejected"]) == http_module.MAX_REJECTIONS_SHOWN
    assert answer["rejected"][0] == {"index": 0, "error": "id: is required"}
    assert answer["rejected_total"] == 200_001
    reasons = answer["rejected_by_reason"]
    assert reasons["id: is required"] == 150_000
    assert sum(reasons.values()) == 200_001
    assert len(reasons) <= http_module.MAX_REASONS + 1
    assert intake.stored_keys() == []


async def test_token_and_queue_room_are_checked_before_the_body_and_100_continue(
    start_intake: IntakeFactory, tmp_path: Path
) -> None:
    """A request with a wrong token, or sent while the queue is full, is answered from its
    headers: no 100 Continue, no wait for a body that was never sent."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n", encoding="utf-8")
    intake = await start_intake(f'http.token_file="{token_file}"')
    wire = await Wire.open(intake)
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Type: application/x-ndjson\r\nContent-Length: 5000\r\n"
    )
    await wire.send(head + b"Expect: 100-continue\r\n\r\n")
    status, headers, _ = await wire.answer()  # a 100 Continue would come first
    assert status == 401 and "www-authenticate" in headers
    wire.close()
    wire = await Wire.open(intake)
    await wire.send(head + b"\r\n")  # no Expect, and no body sent either
    assert (await wire.answer())[0] == 401
    wire.close()

    full = await start_intake(max_bytes=16 * 1024)
    filler = b"\n".join(orjson.dumps(sample(f"f{i}", testcol1="z" * 200)) for i in range(60))
    while (await full.post(filler, NDJSON))[0] == 202:
        pass
    while (await full.post(orjson.dumps(sample("small"))))[0] == 202:
        pass  # until even a small request is refused
    wire = await Wire.open(full)
    await wire.send(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    status, headers, _ = await wire.answer()
    assert status == 503 and headers["retry-after"] == str(http_module.RETRY_AFTER_S)
    wire.close()


async def test_connections_over_the_cap_get_503_and_the_cap_frees_up(
    start_intake: IntakeFactory,
) -> None:
    intake = await start_intake("http.max_connections=2")
    first, second = await Wire.open(intake), await Wire.open(intake)
    await asyncio.sleep(0.05)
    third = await Wire.open(intake)
    status, headers, body = await third.answer()
    assert (status, headers["connection"]) == (503, "close")
    assert "too many connections" in orjson.loads(body)["error"]
    assert await third.closed_by_server()
    await first.send(post_bytes(event_line("one")))
    assert (await first.answer())[0] == 202
    first.close()
    await asyncio.sleep(0.1)
    fourth = await Wire.open(intake)
    await fourth.send(post_bytes(event_line("four")))
    assert (await fourth.answer())[0] == 202
    assert intake.intake.stats()["refused_connections"] == 1
    second.close()
    fourth.close()


async def test_a_huge_header_is_refused_while_it_streams_in(start_intake: IntakeFactory) -> None:
    """An 8 MiB header value is refused once it passes the field limit: the server does
    not buffer it to its end (the answer comes while most of it is unsent)."""
    intake = await start_intake()
    wire = await Wire.open(intake)
    await wire.send(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Huge: ")
    sent = 0
    answer = None
    while sent < 8 * 1024 * 1024:
        try:
            await wire.send(b"h" * 65536)
        except ConnectionError:
            break
        sent += 65536
        try:
            answer = await asyncio.wait_for(wire.answer(), 0.05)
            break
        except TimeoutError:
            continue
    assert answer is not None and answer[0] == 431, (sent, answer)
    assert sent < 1024 * 1024
    wire.close()


async def test_slow_headers_are_cut_off(
    start_intake: IntakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends its headers a byte at a time is disconnected after the idle
    timeout, counted from the connection's start: it cannot hold a connection forever."""
    monkeypatch.setattr(http_module, "IDLE_TIMEOUT_S", 0.5)
    intake = await start_intake()
    wire = await Wire.open(intake)
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed = False
    for byte in b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200:
        try:
            await wire.send(bytes([byte]))
        except ConnectionError:
            closed = True
            break
        if wire.reader.at_eof():
            closed = True
            break
        await asyncio.sleep(0.02)
        if loop.time() - started > 3:
            break
    closed = closed or await wire.closed_by_server()
    wire.close()
    assert closed and loop.time() - started < 3


async def test_answers_a_client_does_not_read_stay_bounded(start_intake: IntakeFactory) -> None:
    """A client pipelines thousands of requests and reads nothing: the server stops
    answering (and reading) once its socket is full, rather than pile answers up in
    memory; once the client reads, every answer comes, in order."""
    intake = await start_intake()
    reader, writer = await asyncio.open_connection("127.0.0.1", intake.intake.port)
    count = 3000
    # 100 broken lines: a 400 listing 100 rejections, some 7 KB, to a 300-byte request.
    request = post_bytes(b"[\n" * 100)

    async def send_all() -> None:
        for _ in range(count):
            writer.write(request)
            await writer.drain()

    sending = asyncio.create_task(send_all())
    largest = 0
    for _ in range(30):
        await asyncio.sleep(0.05)
        for connection in intake.intake._server.connections:
            assert connection.transport is not None
            largest = max(largest, connection.transport.get_write_buffer_size())
    answered = intake.intake.totals["requests"]
    assert largest < 1024 * 1024, largest
    assert answered < count // 2, f"{answered} answered while the client read nothing"
    wire = Wire(reader, writer)
    statuses = [(await wire.answer())[0] for _ in range(count)]
    await sending
    assert statuses == [400] * count
    wire.close()
