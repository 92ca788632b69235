"""The writer daemon for tests: a config from config/example.toml, run in-process or as a
real subprocess (for SIGKILL and SIGTERM tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from campaign_writer.config import Config, from_mapping
from campaign_writer.daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"


def _merge(tree: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for dotted, value in changes.items():
        node = tree
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value


def config_tree(campaign_url: str, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """config/example.toml aimed at ``campaign_url``, with a queue in ``tmp_path`` and both
    listeners on free ports; ``changes`` are dotted keys (``batch.max_records=100``)."""
    tree = tomllib.loads(EXAMPLE.read_text())
    _merge(
        tree,
        {
            "campaign.url": campaign_url,
            # The example leads with IMS; most tests log on with a session, which the
            # simulator's session faults (expiry) reach.
            "campaign.auth": {"mode": "session", "login": "admin", "password": "admin"},
            "campaign.tps_limit": 1000,
            "queue.path": str(tmp_path / "queue.sqlite3"),
            "http.listen": "127.0.0.1:0",
            "admin.listen": "127.0.0.1:0",
            "batch.linger_ms": 20,
            "log.level": "WARNING",
        },
    )
    _merge(tree, {key.replace("__", "."): value for key, value in changes.items()})
    return tree


def writer_config(campaign_url: str, tmp_path: Path, **changes: Any) -> Config:
    return from_mapping(config_tree(campaign_url, tmp_path, **changes))


@contextlib.asynccontextmanager
async def running_writer(config: Config) -> AsyncIterator[Daemon]:
    """A started daemon, closed (drained) at the end."""
    daemon = Daemon(config)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()


def sample_events(count: int, start: int = 0, prefix: str = "s") -> list[dict[str, Any]]:
    """Sample-table events with values that need escaping and non-ASCII text."""
    return [
        {
            "type": "sample",
            "id": f"{prefix}{i:06d}",
            "testcol1": f'v{i} & <ü> "q"',
            "testcol2": f"line {i}\nnext\tcol",
        }
        for i in range(start, start + count)
    ]


def recipient_events(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "type": "recipient",
            "email": f"user{i}@example.com",
            "firstName": f"Zoë{i}",
            "lastName": f"O'Brien-{i}",
        }
        for i in range(start, start + count)
    ]


async def post_events(
    url: str,
    events: Iterable[Mapping[str, Any]],
    *,
    chunk: int = 1000,
    session: aiohttp.ClientSession | None = None,
    token: str | None = None,
) -> int:
    """POST events as NDJSON in chunks; returns how many got accepted (asserts 202s)."""
    accepted = 0
    owned = session is None
    session = session or aiohttp.ClientSession()
    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        batch: list[bytes] = []
        items = list(events)
        for start in range(0, len(items), chunk):
            batch = [orjson.dumps(e) for e in items[start : start + chunk]]
            async with session.post(
                f"{url}/v1/events", data=b"\n".join(batch), headers=headers
            ) as answer:
                body = await answer.json()
                assert answer.status == 202, body
                accepted += body["accepted"]
    finally:
        if owned:
            await session.close()
    return accepted


async def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; fail with its last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")


class WriterProcess:
    """``campaign-writer run`` as a real child process, for kill -9 and SIGTERM tests."""

    def __init__(self, campaign_url: str, tmp_path: Path, *overrides: str) -> None:
        self.config_file = EXAMPLE
        self.overrides = [
            f'campaign.url="{campaign_url}"',
            f'campaign.auth.ims_url="{campaign_url}/ims/token/v3"',
            "campaign.tps_limit=1000",
            f'queue.path="{tmp_path / "queue.sqlite3"}"',
            'http.listen="127.0.0.1:0"',
            'admin.listen="127.0.0.1:0"',
            "batch.linger_ms=20",
            'log.level="WARNING"',
            *overrides,
        ]
        self.process: asyncio.subprocess.Process | None = None
        self.intake_url = ""

    async def start(self, env: Mapping[str, str] | None = None) -> str:
        """Start it (with ``env`` added to this process's environment) until ready."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "campaign_writer",
            "run",
            "--config",
            str(self.config_file),
            *(arg for item in self.overrides for arg in ("--set", item)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        text = line.decode()
        assert text.startswith("campaign-writer ready: intake "), text
        self.intake_url = text.split("intake ", 1)[1].strip().removesuffix("/v1/events")
        return self.intake_url

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()
