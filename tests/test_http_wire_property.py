"""The HTTP intake over raw sockets on 127.0.0.1, driven by hypothesis.

Two properties, each over a bounded number of generated cases:

* a legal request never loses an event: whatever its framing (Content-Length or
  chunked, in any number of writes), encoding (identity, deflate, gzip of one or
  several members), body form (object, array, NDJSON), protocol version, Expect, or
  pipelining, every event is answered 202 and stored, in order;
* no request, legal or not, draws an answer larger than a bounded multiple of its own
  size.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
import zlib
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaign_writer.config import load
from campaign_writer.metrics import Metrics
from campaign_writer.queue import DurableQueue
from campaign_writer.router import Router
from campaign_writer.sources.http import HttpIntake

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.toml"
_ids = itertools.count()

# What a bounded answer means: at most this multiple of the request, plus a constant.
ANSWER_MULTIPLE = 64
ANSWER_CONSTANT = 4096

# Text XML can carry (no C0 controls, surrogates or U+FFFE/U+FFFF), which the
# route's string fields take.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    max_size=30,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One legal request: its events, and how its bytes are laid out on the wire."""
    count = draw(st.integers(1, 12))
    prefix = draw(st.uuids()).hex[:12]
    events = [
        {"type": "sample", "id": f"{prefix}-{i}", "testcol1": draw(texts)} for i in range(count)
    ]
    form = draw(st.sampled_from(["array", "ndjson"] + (["object"] if count == 1 else [])))
    if form == "ndjson":
        raw = b"".join(orjson.dumps(e) + b"\n" for e in events)
    elif form == "array":
        raw = orjson.dumps(events)
    else:
        raw = orjson.dumps(events[0])
    encoding = draw(st.sampled_from(["identity", "deflate", "gzip"]))
    if encoding == "deflate":
        body = zlib.compress(raw)
    elif encoding == "gzip":
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        body = b""
        for piece in pieces:
            packer = zlib.compressobj(wbits=31)
            body += packer.compress(piece) + packer.flush()
    else:
        body = raw
    return {
        "events": events,
        "form": form,
        "encoding": encoding,
        "body": body,
        "chunked": draw(st.booleans()),
        "version": draw(st.sampled_from(["1.1", "1.1", "1.0"])),
        "expect": draw(st.booleans()),
        "upper": draw(st.booleans()),
        "cuts": draw(st.lists(st.integers(1, 400), max_size=4)),
    }


def head_and_body(request: dict[str, Any], last: bool) -> tuple[bytes, bytes]:
    def name(text: str) -> str:
        return text.upper() if request["upper"] else text.lower()

    version = request["version"]
    lines = [f"POST /v1/events HTTP/{version}", f"{name('Host')}: x"]
    if request["form"] == "ndjson":
        lines.append(f"{name('Content-Type')}: application/x-ndjson")
    else:
        lines.append(f"{name('Content-Type')}: application/json")
    if request["encoding"] != "identity":
        lines.append(f"{name('Content-Encoding')}: {request['encoding']}")
    body = request["body"]
    chunked = request["chunked"] and version == "1.1"
    if chunked:
        lines.append(f"{name('Transfer-Encoding')}: chunked")
        size = max(1, len(body) // 3)
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        lines.append(f"{name('Content-Length')}: {len(body)}")
    if version == "1.0" and not last:
        lines.append(f"{name('Connection')}: keep-alive")
    if request["expect"] and version == "1.1":
        lines.append(f"{name('Expect')}: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, int]:
    """Status, body and the whole answer's size in bytes."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return status, body, len(head) + length


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, cuts: list[int]) -> None:
    position = 0
    for cut in cuts:
        piece = data[position : position + cut]
        if not piece:
            break
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)
        position += cut
    writer.write(data[position:])
    await writer.drain()


class Target:
    """An intake on a free port with a fresh queue file, for one generated case."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    async def __aenter__(self) -> Target:
        path = Path(self.directory) / f"q{next(_ids)}.sqlite3"
        config = load(EXAMPLE, overrides=["http.listen=127.0.0.1:0", f'queue.path="{path}"'])
        self.queue = await DurableQueue.open(path, max_bytes=1 << 30)
        self.intake = HttpIntake(config.http, Router.from_config(config), self.queue, Metrics())
        await self.intake.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.intake.close()
        await self.queue.close()

    def stored(self) -> list[tuple[str, dict[str, Any]]]:
        """Each stored record's key and the event it came from, in queue order."""
        connection = sqlite3.connect(self.queue.path)
        try:
            rows = connection.execute("SELECT key, event FROM records ORDER BY id")
            return [(key, orjson.loads(event)) for key, event in rows]
        finally:
            connection.close()


async def _legal(batch: list[dict[str, Any]], directory: str) -> None:
    async with Target(directory) as target:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.intake.port)
        try:
            for position, request in enumerate(batch):
                last = position == len(batch) - 1
                head, body = head_and_body(request, last)
                if request["expect"] and request["version"] == "1.1":
                    await send_in_pieces(writer, head, request["cuts"])
                    go = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    assert go.startswith(b"HTTP/1.1 100"), go
                    await send_in_pieces(writer, body, request["cuts"])
                else:
                    await send_in_pieces(writer, head + body, request["cuts"])
                status, answer, _ = await read_answer(reader)
                assert status == 202, (status, answer, request)
                accepted = orjson.loads(answer)
                assert accepted == {"accepted": len(request["events"]), "rejected": []}
                if request["version"] == "1.0" and last:
                    break
        finally:
            writer.close()
        sent = [e for request in batch for e in request["events"]]
        stored = target.stored()
        assert [key for key, _ in stored] == [e["id"] for e in sent]
        assert [event for _, event in stored] == sent


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(requests(), min_size=1, max_size=3))
def test_no_legal_request_loses_an_event(batch: list[dict[str, Any]]) -> None:
    """Pipelined or not, in any framing, encoding or number of writes, each legal
    request is answered 202 with every event accepted, and the queue holds them all."""
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_legal(batch, directory))


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Bytes from legal-looking to garbage: broken framing, broken bodies, many bad
    lines in a gzip body, or random bytes."""
    kind = draw(st.sampled_from(["garbage", "bad-lines", "gzip-lines", "bad-head"]))
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=2000)) + b"\r\n\r\n"
    if kind == "bad-head":
        junk = draw(st.binary(max_size=200)).replace(b"\r", b"").replace(b"\n", b"")
        return b"POST /v1/events HTTP/1.1\r\nX: " + junk + b"\r\nContent-Length: 3\r\n\r\n{x}"
    line = draw(st.sampled_from([b"[\n", b'{"type":"sample"}\n', b"\xff\n", b"1\n"]))
    body = line * draw(st.integers(1, 50_000))
    headers = b"Content-Type: application/x-ndjson\r\n"
    if kind == "gzip-lines":
        packer = zlib.compressobj(wbits=31)
        body = packer.compress(body) + packer.flush()
        headers += b"Content-Encoding: gzip\r\n"
    return (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def _bounded(request: bytes, directory: str) -> None:
    async with Target(directory) as target:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.intake.port)
        try:
            writer.write(request)
            await writer.drain()
            status, _, received = await read_answer(reader)
        finally:
            writer.close()
        assert status >= 400
        assert received <= ANSWER_MULTIPLE * len(request) + ANSWER_CONSTANT, (
            received,
            len(request),
        )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile())
def test_no_request_draws_an_answer_beyond_a_multiple_of_its_size(request: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_bounded(request, directory))
