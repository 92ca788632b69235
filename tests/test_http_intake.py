"""HTTP intake over real HTTP on 127.0.0.1 into a real queue file: every status code."""

from __future__ import annotations

import sqlite3
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
        intake = HttpIntake(config, Router(config), queue, metrics)
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
    }
    assert intake.stored_keys() == []


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
