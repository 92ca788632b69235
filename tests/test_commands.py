"""The operator commands: validate, send, status and dlq, on real files and real HTTP."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from campaign_writer.cli import build_parser, main
from campaign_writer.commands import send
from campaign_writer.config import load
from campaign_writer.deadletter import DeadLetterStore
from campaign_writer.metrics import Metrics
from campaign_writer.queue import DurableQueue
from campaign_writer.router import Router
from campaign_writer.sources import http as http_module
from campaign_writer.sources.http import HttpIntake
from tests.support.documents import decode_record

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.toml"

# Before the fix the sample route writes the id into an attribute Campaign does not
# have, so delivery dead-letters every sample; there is no route for orders at all.
BROKEN_ROUTES = """
[[routes]]
name = "sample"
match = { type = "sample" }
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["ident"]
fields.ident = { path = "id", length = 64 }
fields.testcol1 = {}
"""
FIXED_ROUTES = """
[[routes]]
name = "sample"
match = { type = "sample" }
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["id"]
fields.id = { length = 64 }
fields.testcol1 = {}

[[routes]]
name = "order"
match = { type = "order" }
schema = "acme:orderStg"
method = "IngestExt"
key = ["orderId"]
fields.orderId = { type = "long" }
"""


def write_config(directory: Path, name: str, routes: str, extra: str = "") -> Path:
    path = directory / name
    path.write_text(
        f"""
[campaign]
url = "http://127.0.0.1:8081"
[campaign.auth]
login = "admin"
password = "admin"
[queue]
path = "{directory / "queue.sqlite3"}"
max_bytes = "64MiB"
[http]
listen = "127.0.0.1:0"
{extra}
{routes}
""",
        encoding="utf-8",
    )
    return path


async def dead_lettered_by_delivery(config_path: Path) -> Path:
    """Intake three samples with the broken routes, then dead-letter them as delivery would."""
    config = load(config_path)
    router = Router.from_config(config)
    queue = await DurableQueue.open(config.queue.path)
    try:
        events = [
            orjson.dumps({"type": "sample", "id": f"s{i}", "testcol1": "v"}) for i in range(3)
        ]
        routing = router.route_lines(events, source="http", created_at=1.0)
        await queue.append(routing.items)
        leased = await queue.lease(10)
        fault = "SOP-330011 Error while executing the method 'Ingest': unknown attribute 'ident'"
        await queue.dead_letter([(r.id, fault, 500, "SOP-330011") for r in leased])
        await queue.dead_letter_raw(
            "orders-rabbit",
            b'{"type": "order", "orderId": 12}',
            {"delivery-tag": "7"},
            "type: 'order' matches no route (routes take 'sample')",
        )
    finally:
        await queue.close()
    return config.queue.path


# --- validate ---------------------------------------------------------------------------


def test_validate_accepts_the_example_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """`validate` on a good file prints OK with a summary and exits 0."""
    assert main(["validate", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert f"{EXAMPLE}: OK" in out
    assert "sample -> dem:sampleTableStg (Ingest)" in out


def test_validate_shows_where_each_value_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`validate` lists each key with its value and origin: file, env, --set or default."""
    path = write_config(tmp_path, "origins.toml", FIXED_ROUTES)
    monkeypatch.setenv("CAMPAIGN_WRITER__BATCH__LINGER_MS", "75")
    assert main(["validate", "--config", str(path), "--set", "sender.max_in_flight=8"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "campaign.url = 'http://127.0.0.1:8081'  (file)" in lines
    assert "batch.linger_ms = 75  (env CAMPAIGN_WRITER__BATCH__LINGER_MS)" in lines
    assert "sender.max_in_flight = 8  (--set)" in lines
    assert "batch.max_records = 500  (default)" in lines
    assert "campaign.auth.password = (secret)  (file)" in lines
    assert "admin" not in "".join(line for line in lines if "password" in line)


BROKER_SECRETS = """
[[sources]]
kind = "rabbitmq"
name = "events-rmq"
url = "amqp://writer:rmq-pass-4417@127.0.0.1:5672/"
queue = "campaign-events"

[[sources]]
kind = "kafka"
name = "events-kafka"
bootstrap_servers = ["127.0.0.1:9092"]
topics = ["campaign-events"]
group = "campaign-writer"
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "PLAIN"
sasl_username = "writer"
sasl_password = "kafka-pass-9921"
"""


def test_validate_never_shows_a_secret_read_under_another_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker URL with its password and a Kafka SASL password are secrets too: `validate`
    lists their keys as (secret), never their values."""
    path = write_config(tmp_path, "brokers.toml", FIXED_ROUTES + BROKER_SECRETS)
    assert main(["validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rmq-pass-4417" not in out and "kafka-pass-9921" not in out
    lines = [line.strip() for line in out.splitlines()]
    assert "sources[0].url = (secret)  (file)" in lines
    assert "sources[1].sasl_password = (secret)  (file)" in lines
    assert "sources[1].sasl_username = 'writer'  (file)" in lines


def test_validate_warns_about_an_ingest_route_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unkeyed Ingest route is legal but stores resends twice: a warning, exit 0."""
    assert main(["validate", "--config", str(EXAMPLE)]) == 0
    assert "warning:" not in capsys.readouterr().out
    text = EXAMPLE.read_text(encoding="utf-8").replace('key = ["id"]\n', "", 1)
    assert text != EXAMPLE.read_text(encoding="utf-8")
    unkeyed = tmp_path / "unkeyed.toml"
    unkeyed.write_text(text, encoding="utf-8")
    assert main(["validate", "--config", str(unkeyed)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "route 'sample'" in warnings[0] and "twice" in warnings[0]


def test_validate_prints_every_problem_with_its_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`validate` lists each problem on its own line, path first, and exits 1."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace(
        '[routes.fields.email]\ntype = "string"', '[routes.fields.email]\ntype = "strng"'
    )
    text = text.replace("tps_limit = 20", "tps_limit = -1")
    broken = tmp_path / "broken.toml"
    broken.write_text(text, encoding="utf-8")
    assert main(["validate", "--config", str(broken), "--set", "queue.synchronous=OFF"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{broken}: 3 problems"
    assert sorted(lines[1:]) == [
        "campaign.tps_limit: must be greater than 0, got -1",
        "queue.synchronous: must be one of 'FULL', 'NORMAL', got 'OFF'",
        "routes[1].fields.email.type: unknown type 'strng' (did you mean 'string'?)",
    ]


# --- status -----------------------------------------------------------------------------


def test_status_shows_depth_bytes_age_and_dead_letters_by_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` prints a table, or with --json the same figures, straight from the file."""
    config_path = write_config(tmp_path, "broken.toml", BROKEN_ROUTES)
    queue_path = asyncio.run(dead_lettered_by_delivery(config_path))
    assert main(["status", "--config", str(config_path)]) == 0
    table = capsys.readouterr().out
    for text in ("records waiting", "oldest event age", "dead letters", "SOP-330011", "INTAKE"):
        assert text in table
    assert main(["status", "--queue", str(queue_path), "--json"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    assert figures["depth"] == 0
    assert figures["dead_letters"] == 4
    assert figures["dead_letters_by_reason"] == {"SOP-330011": 3, "INTAKE": 1}
    assert figures["path"] == str(queue_path)
    assert main(["status", "--queue", str(tmp_path / "missing.sqlite3")]) == 1
    assert "no queue file" in capsys.readouterr().err


def test_status_and_dlq_default_to_the_default_queue_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config or --queue, `status` and `dlq list` read var/queue.sqlite3."""
    monkeypatch.chdir(tmp_path)
    assert main(["status"]) == 1
    assert "no queue file at var/queue.sqlite3" in capsys.readouterr().err
    config_path = write_config(tmp_path, "broken.toml", BROKEN_ROUTES)
    queue_path = asyncio.run(dead_lettered_by_delivery(config_path))
    (tmp_path / "var").mkdir()
    queue_path.rename(tmp_path / "var" / "queue.sqlite3")
    assert main(["status", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["dead_letters"] == 4
    assert main(["dlq", "list", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


# --- dlq --------------------------------------------------------------------------------


def test_dlq_list_and_show_give_the_reason_and_the_original_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dlq list` shows entries by reason; `dlq show` gives one in full with its event."""
    monkeypatch.setenv("COLUMNS", "300")  # a wide terminal, so no reason is folded
    config_path = write_config(tmp_path, "broken.toml", BROKEN_ROUTES)
    asyncio.run(dead_lettered_by_delivery(config_path))
    assert main(["dlq", "list", "--config", str(config_path), "--json", "--code", "INTAKE"]) == 0
    (entry,) = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert entry["source"] == "orders-rabbit"
    assert entry["headers"] == {"delivery-tag": "7"}
    assert main(["dlq", "list", "--config", str(config_path)]) == 0
    assert "unknown attribute 'ident'" in capsys.readouterr().out
    assert main(["dlq", "show", "--config", str(config_path), "1"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert orjson.loads(shown["event"]) == {"type": "sample", "id": "s0", "testcol1": "v"}
    assert (shown["status"], shown["code"]) == (500, "SOP-330011")
    assert main(["dlq", "show", "--config", str(config_path), "99"]) == 1


def test_dlq_replay_after_a_config_fix_requeues_the_remapped_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the routes are fixed, `dlq replay` maps the original events anew and queues them."""
    broken = write_config(tmp_path, "broken.toml", BROKEN_ROUTES)
    queue_path = asyncio.run(dead_lettered_by_delivery(broken))
    assert main(["dlq", "replay", "--config", str(broken)]) == 1  # nothing fixed yet
    output = capsys.readouterr().out
    assert "replayed 3 of 4" in output  # the samples map (wrongly) again; the order cannot
    assert "type: 'order' matches no route" in output
    with DeadLetterStore(queue_path) as store:
        assert store.count() == 1
        store.purge()  # start the scenario again from the broken state
    asyncio.run(_drain(queue_path))
    asyncio.run(dead_lettered_by_delivery(broken))

    fixed = write_config(tmp_path, "fixed.toml", FIXED_ROUTES)
    assert main(["dlq", "replay", "--config", str(fixed)]) == 0
    assert "replayed 4 of 4 dead letters" in capsys.readouterr().out
    records = asyncio.run(_drain(queue_path))
    assert sorted(
        ((lane, record.key, dict(record.attrs)) for lane, record in records),
        key=lambda row: (row[0], sorted(row[2].items())),
    ) == [
        ("acme:orderStg#IngestExt", "@orderId", {"orderId": "12"}),
        ("dem:sampleTableStg#Ingest", "@id", {"id": "s0", "testcol1": "v"}),
        ("dem:sampleTableStg#Ingest", "@id", {"id": "s1", "testcol1": "v"}),
        ("dem:sampleTableStg#Ingest", "@id", {"id": "s2", "testcol1": "v"}),
    ]
    with DeadLetterStore(queue_path) as store:
        assert store.count() == 0


async def _drain(queue_path: Path) -> list[tuple[str, Any]]:
    queue = await DurableQueue.open(queue_path)
    try:
        leased = await queue.lease(100)
        await queue.ack([r.id for r in leased])
        return [(r.lane, decode_record(r.record)) for r in leased]
    finally:
        await queue.close()


def test_dlq_purge_asks_first_or_takes_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dlq purge` refuses without a terminal to ask, and deletes with --yes."""
    config_path = write_config(tmp_path, "broken.toml", BROKEN_ROUTES)
    queue_path = asyncio.run(dead_lettered_by_delivery(config_path))
    assert main(["dlq", "purge", "--config", str(config_path)]) == 1
    assert "without --yes" in capsys.readouterr().err
    assert main(["dlq", "purge", "--queue", str(queue_path), "--code", "INTAKE", "--yes"]) == 0
    assert "purged 1 dead letters" in capsys.readouterr().out
    assert main(["dlq", "purge", "--queue", str(queue_path), "--yes"]) == 0
    assert main(["status", "--queue", str(queue_path), "--json"]) == 0
    capsys.readouterr()
    with DeadLetterStore(queue_path) as store:
        assert store.count() == 0


# --- send -------------------------------------------------------------------------------


@pytest.fixture
async def running_intake(tmp_path: Path) -> AsyncIterator[tuple[HttpIntake, DurableQueue, Path]]:
    """The HTTP intake on a free port with a token, as a running daemon would have it."""
    token_file = tmp_path / "token"
    token_file.write_text("send-token-42\n", encoding="utf-8")
    config_path = write_config(
        tmp_path, "intake.toml", FIXED_ROUTES, f'[http]\ntoken_file = "{token_file}"\n'
    )
    config_path.write_text(
        config_path.read_text(encoding="utf-8").replace('[http]\nlisten = "127.0.0.1:0"\n', ""),
        encoding="utf-8",
    )
    config = load(config_path, overrides=["http.listen=127.0.0.1:0"])
    queue = await DurableQueue.open(config.queue.path, max_bytes=config.queue.max_bytes)
    intake = HttpIntake(config.http, Router.from_config(config), queue, Metrics())
    await intake.start()
    yield intake, queue, token_file
    await intake.close()
    await queue.close()


async def run_send(*argv: str) -> int:
    args = build_parser().parse_args(["send", *argv])
    result = args._execute(args)
    return int(await result) if asyncio.iscoroutine(result) else int(result)


async def test_send_posts_batches_and_reports_rejected_lines(
    running_intake: tuple[HttpIntake, DurableQueue, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`send FILE` posts 1,000-line batches in order, names bad lines, and exits 1 for them."""
    intake, queue, token_file = running_intake
    lines = [orjson.dumps({"type": "sample", "id": f"e{i}"}) for i in range(2500)]
    lines[1200] = b'{"type": "sample", "id": '
    lines[2499] = orjson.dumps({"type": "sample", "id": "x" * 70})
    events = tmp_path / "events.ndjson"
    events.write_bytes(b"\n".join(lines) + b"\n")
    code = await run_send(str(events), "--url", intake.url, "--token-file", str(token_file))
    assert code == 1
    captured = capsys.readouterr()
    assert "2498 accepted, 2 rejected, 0 failed" in captured.out
    assert "line 1201: invalid JSON" in captured.err
    assert "line 2500: id: is 70 characters long" in captured.err
    leased = await queue.lease(5000)
    expected = [f"e{i}" for i in range(2499) if i != 1200]
    assert [r.key for r in leased] == expected


async def test_send_reads_stdin_and_the_token_from_the_environment(
    running_intake: tuple[HttpIntake, DurableQueue, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`send -` reads stdin; the token comes from CAMPAIGN_WRITER_TOKEN; all good exits 0."""
    intake, queue, _ = running_intake
    data = b"".join(orjson.dumps({"type": "order", "orderId": i}) + b"\n" for i in range(30))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.setenv(send.TOKEN_ENV, "send-token-42")
    assert await run_send("-", "--url", intake.url, "--batch", "7") == 0
    assert "30 accepted, 0 rejected, 0 failed" in capsys.readouterr().out
    assert queue.stats().depth == 30


async def test_send_stops_on_a_refused_token(
    running_intake: tuple[HttpIntake, DurableQueue, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without the right token the first batch gets 401 and nothing more is sent."""
    intake, queue, _ = running_intake
    events = tmp_path / "events.ndjson"
    events.write_bytes(b'{"type": "order", "orderId": 1}\n' * 5)
    assert await run_send(str(events), "--url", intake.url) == 1
    captured = capsys.readouterr()
    assert "HTTP 401" in captured.err
    assert "0 accepted, 0 rejected, 5 failed" in captured.out
    assert queue.stats().depth == 0


async def test_send_waits_out_a_full_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On 503 `send` waits as Retry-After says and resends until delivery has made room."""
    monkeypatch.setattr(http_module, "RETRY_AFTER_S", 0)
    config = load(write_config(tmp_path, "small.toml", FIXED_ROUTES))
    queue = await DurableQueue.open(config.queue.path, max_bytes=96 * 1024)
    intake = HttpIntake(config.http, Router.from_config(config), queue, Metrics())
    await intake.start()

    async def deliver() -> None:
        while True:
            leased = await queue.lease(100)
            await asyncio.sleep(0.02)
            await queue.ack([r.id for r in leased])

    delivery = asyncio.create_task(deliver())
    try:
        events = tmp_path / "events.ndjson"
        events.write_bytes(
            b"".join(
                orjson.dumps({"type": "sample", "id": f"e{i}", "testcol1": "p" * 150}) + b"\n"
                for i in range(3000)
            )
        )
        assert await run_send(str(events), "--url", intake.url, "--batch", "100") == 0
        assert "3000 accepted" in capsys.readouterr().out
        assert intake.totals["refused_full"] > 0
    finally:
        delivery.cancel()
        await asyncio.gather(delivery, return_exceptions=True)
        await intake.close()
        await queue.close()


# --- broker clients are extras -----------------------------------------------------------

KAFKA_SOURCE = """
[[sources]]
kind = "kafka"
name = "events-kafka"
bootstrap_servers = ["127.0.0.1:9092"]
topics = ["campaign-events"]
group = "campaign-writer"
"""

# Runs the CLI with the Kafka client made unimportable, as on an install without the extra.
WITHOUT_AIOKAFKA = (
    "import sys; sys.modules['aiokafka'] = None; "
    "from campaign_writer.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_source_whose_client_is_missing_names_the_extra(tmp_path: Path, command: str) -> None:
    """A config with a Kafka source, without aiokafka, is refused naming the 'kafka' extra."""
    path = write_config(tmp_path, "kafka.toml", FIXED_ROUTES + KAFKA_SOURCE)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOKAFKA, command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "sources[0].kind: 'kafka' sources need the 'kafka' extra" in output
    assert "pip install 'campaign-writer[kafka]'" in output
    assert "Traceback" not in output
