"""Secrets: a full session in each auth mode with DEBUG logs, then a search of everything
the writer showed for every secret and token it held.

Searched: the writer process's stdout and stderr (JSON or console log lines), /metrics,
/v1/stats, /readyz and /healthz, the output of ``campaign-writer dlq list``, ``dlq list
--json``, ``dlq show`` and ``status``, and the queue file's bytes and every row of every
table. Sought: the operator password, the IMS client secret, the intake token, and
each session, security and IMS token the simulator issued (recorded as it issued them),
as written, JSON-escaped, URL-encoded and XML-escaped.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus
from xml.sax.saxutils import escape as xml_escape

import aiohttp
import pytest

from campaign_writer.simulator import DEFAULT_IMS_CLIENTS, DEFAULT_USERS, ImsClient, User
from tests.reliability.conftest import Figures
from tests.reliability.support import WriterProc, base_tree
from tests.support.writer import post_events, sample_events, wait_for

SAMPLE = "dem:sampleTableStg"
# The password holds characters JSON and XML escape, so an escaped leak is sought too.
LOGIN, PASSWORD = "ops-writer", 'Pw9x"Q7z\\Lm<Tq&R'
CLIENT_ID, CLIENT_SECRET = "cw-client-k2", "Cs8fK2pWq9Zr4"
TOKEN = "tk-H7m2Qx9PzWv4"
# One mode logs in the console format, so both formatters are searched.
MODES = [("session", "json"), ("bearer_logon", "console"), ("ims", "json")]


def _record_tokens(simulator) -> list[str]:
    """Every session, security and IMS token the simulator issues from now on."""
    auth = simulator.simulator.tenant.auth
    issued: list[str] = []
    open_session, issue_token = auth.open_session, auth.issue_token

    def recording_open_session(*args: Any, **kwargs: Any) -> Any:
        session = open_session(*args, **kwargs)
        issued.extend((session.token, session.security))
        return session

    def recording_issue_token(*args: Any, **kwargs: Any) -> str:
        token: str = issue_token(*args, **kwargs)
        issued.append(token)
        return token

    auth.open_session = recording_open_session
    auth.issue_token = recording_issue_token
    return issued


def _cli(*args: str) -> bytes:
    result = subprocess.run(
        [sys.executable, "-m", "campaign_writer", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def _queue_file(path: Path) -> bytes:
    """The queue file's raw bytes and every row of every table, as text."""
    chunks = [p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file()]
    with sqlite3.connect(path) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            if table.startswith("sqlite_"):
                continue
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                chunks.append(repr(row).encode())
                chunks.extend(v for v in row if isinstance(v, bytes))
    return b"\n".join(chunks)


def _forms(secret: str) -> set[bytes]:
    return {
        secret.encode(),
        json.dumps(secret)[1:-1].encode(),
        quote_plus(secret).encode(),
        xml_escape(secret, {'"': "&quot;"}).encode(),
    }


@pytest.mark.parametrize(("mode", "log_format"), MODES)
async def test_no_secret_or_token_shows_anywhere(
    simulator_factory, tmp_path: Path, mode: str, log_format: str, figures: Figures
) -> None:
    """A full session with DEBUG logs (logon or token, deliveries, a dead letter, renewals
    after expiry or revocation, transient faults, a 401, SIGTERM with logoff): no
    password, client secret, intake token, session, security or IMS token appears in
    any output, endpoint, DLQ listing or the queue file."""
    simulator = await simulator_factory(
        tps_limit=1000,
        latency_ms=1,
        users=(*DEFAULT_USERS, User(LOGIN, PASSWORD)),
        ims_clients=(*DEFAULT_IMS_CLIENTS, ImsClient(CLIENT_ID, CLIENT_SECRET)),
    )
    issued = _record_tokens(simulator)
    tree = base_tree(
        simulator.url,
        tmp_path / "queue.sqlite3",
        log__level="DEBUG",
        log__format=log_format,
        batch__max_records=50,
    )
    auth: dict[str, Any] = {"mode": mode}
    if mode == "session":
        auth.update(login=LOGIN, password=PASSWORD)
    else:
        auth.update(
            ims_url=simulator.ims_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scope="openid,AdobeID",
        )
    tree["campaign"]["auth"] = auth
    tree["http"]["token"] = TOKEN
    writer = WriterProc(tmp_path, tree)
    url = await writer.start()
    seen: list[bytes] = []
    try:
        events = sample_events(200, prefix=f"{mode}-")
        events[7]["testcol1"] = "__POISON__ canary-dead-letter"
        await post_events(url, events, token=TOKEN)
        await wait_for(lambda: _count(simulator, 199), timeout=60)
        # Renewals: every session expires, every IMS token is revoked, calls fail a while.
        await simulator.control(expire_sessions=True, revoke_tokens=True, rate_500=0.3)
        await post_events(url, sample_events(100, start=200, prefix=f"{mode}-"), token=TOKEN)
        await asyncio.sleep(1.0)
        await simulator.control(rate_500=0.0)
        await wait_for(lambda: _count(simulator, 299), timeout=60)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{url}/v1/events", json={"type": "sample"}, headers={"Authorization": "Bearer x"}
            ) as answer:
                assert answer.status == 401
            async with session.post(
                f"{url}/v1/events",
                json=[{"type": "sample", "id": "ok-1"}, {"type": "sample"}],
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as answer:
                seen.append(await answer.read())
        for path in ("/metrics", "/v1/stats", "/readyz", "/healthz"):
            status, body = await writer.get(path)
            assert status == 200, (path, body[:300])
            seen.append(body)
        assert await writer.stop() == 0
    finally:
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)
    config = str(writer.config)
    seen.append(_cli("dlq", "list", "--config", config))
    listing = _cli("dlq", "list", "--json", "--config", config)
    seen.append(listing)
    for line in listing.decode().splitlines():
        if line.startswith("{"):
            seen.append(_cli("dlq", "show", str(json.loads(line)["id"]), "--config", config))
    seen.append(_cli("status", "--config", config))
    seen.append(_queue_file(tmp_path / "queue.sqlite3"))
    output = writer.output()
    haystack = b"\n".join([output, *seen])

    # The search covers real material: logs at DEBUG, the dead letter, the endpoints.
    assert b"authenticated" in output
    assert b"canary-dead-letter" in haystack
    assert b"campaign_writer_records_delivered_total" in haystack
    assert len(issued) >= (2 if mode == "ims" else 4), "no renewal happened"
    secrets = {PASSWORD, CLIENT_SECRET, TOKEN, *issued}
    found = sorted(
        secret[:6] + "..."
        for secret in secrets
        if len(secret) >= 6 and any(form in haystack for form in _forms(secret))
    )
    figures.secrets_found += len(found)
    figures.faults["expiry+revocation (secrets runs)"] += 1
    assert not found, f"secrets found in the writer's output or files: {found}"


async def _count(simulator, count: int) -> bool:
    return len(await simulator.records(SAMPLE)) >= count
