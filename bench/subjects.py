"""The subjects of a run: the writer and its peers, each a real process.

* ``writer``: ``campaign-writer run`` with ``config/example.toml`` and ``--set``
  overrides, fed over HTTP, watched through its admin ``/v1/stats``;
* ``cubic``: the same daemon with botocore's adaptive rate limiter as its throttle
  (:mod:`bench.peers.cubic`), fed and watched the same way;
* ``unitary`` and ``sdk``: peers fed NDJSON on stdin that print status lines
  (:mod:`bench.peers`).

Every subject answers :meth:`Subject.sample` with the same keys, so timelines and
reports treat them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from campaign_writer.errors import CampaignWriterError
from campaign_writer.queue import read_stats

from .load import Events, Feeder, HttpSink, PipeSink
from .procs import REPO, Child

__all__ = [
    "PeerSubject",
    "Subject",
    "SubjectUnavailable",
    "WriterSubject",
    "ensure_sdk",
    "make_subject",
    "writer_settings",
]

EXAMPLE_CONFIG = REPO / "config" / "example.toml"
SDK_DIR = REPO / "bench" / "peers" / "sdk"
READY = "campaign-writer ready: intake "


class SubjectUnavailable(RuntimeError):
    """A subject cannot run on this machine (e.g. no Node.js); the report says why."""


def writer_settings(
    campaign_url: str, queue_path: Path, tps: float, max_records: int, linger_ms: int
) -> list[str]:
    """The ``--set`` overrides every writer-like subject runs with."""
    return [
        f'campaign.url="{campaign_url}"',
        # The example logs on with IMS (as v8.6+ requires); the simulator issues the tokens.
        f'campaign.auth.ims_url="{campaign_url}/ims/token/v3"',
        f"campaign.tps_limit={tps:g}",
        f'queue.path="{queue_path}"',
        'http.listen="127.0.0.1:0"',
        'admin.listen="127.0.0.1:0"',
        f"batch.max_records={max_records}",
        f"batch.linger_ms={linger_ms}",
        "daemon.shutdown_timeout_s=5",
        'log.format="json"',
        'log.level="INFO"',
    ]


class Subject:
    """What the harness needs from a subject; see the two implementations below."""

    name: str
    child: Child
    fed_over_http = False

    async def start(self) -> None:
        raise NotImplementedError

    def feeder(self, events: Events) -> Feeder:
        raise NotImplementedError

    async def sample(self) -> dict[str, Any] | None:
        raise NotImplementedError

    async def stop(self) -> dict[str, Any]:
        raise NotImplementedError


class WriterSubject(Subject):
    """The writer daemon (or the cubic peer, the same daemon with another throttle)."""

    fed_over_http = True

    def __init__(self, name: str, settings: list[str], log_path: Path, queue_path: Path) -> None:
        self.name = name
        self.queue_path = queue_path
        entry = (
            ["-m", "campaign_writer", "run"] if name == "writer" else ["-m", "bench.peers.cubic"]
        )
        argv = [sys.executable, *entry, "--config", str(EXAMPLE_CONFIG)]
        for item in settings:
            argv += ["--set", item]
        self.child = Child(name, argv, log_path)
        self.intake_url = ""
        self.admin_url = ""
        self._session: aiohttp.ClientSession | None = None
        self._sinks: list[HttpSink] = []
        self.last: dict[str, Any] | None = None

    async def start(self) -> None:
        line = await self.child.start(READY)
        self.intake_url = line.removeprefix(READY).removesuffix("/v1/events").strip()
        self.admin_url = await self._admin_url()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def _admin_url(self) -> str:
        # The admin listener binds port 0; its address is in the JSON log on stderr.
        for _ in range(100):
            with contextlib.suppress(OSError):
                for line in reversed(self.child.log_path.read_bytes().splitlines()):
                    if b'"admin listening"' in line:
                        url: str = orjson.loads(line)["url"]
                        return url
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name}: no 'admin listening' line in {self.child.log_path}")

    def feeder(self, events: Events) -> Feeder:
        sink = HttpSink(self.intake_url)
        self._sinks.append(sink)
        return Feeder(sink, events, concurrency=8)

    async def stats(self) -> dict[str, Any] | None:
        if self._session is None or not self.child.running:
            return None
        try:
            async with self._session.get(self.admin_url + "/v1/stats") as answer:
                data: dict[str, Any] = await answer.json(loads=orjson.loads)
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def sample(self) -> dict[str, Any] | None:
        stats = await self.stats()
        if stats is None:
            return self.last
        delivery = stats.get("delivery") or {}
        totals = delivery.get("totals") or {}
        queue = stats.get("queue") or {}
        self.last = {
            "in_flight": delivery.get("in_flight"),
            "in_flight_limit": delivery.get("in_flight_limit"),
            "rate": delivery.get("rate_limit"),
            "queue_depth": queue.get("depth"),
            "delivered": totals.get("delivered"),
            "dead": totals.get("dead_lettered"),
            "retried": totals.get("retried"),
            "throttled": totals.get("throttled"),
            "calls": totals.get("calls"),
        }
        return self.last

    async def stop(self) -> dict[str, Any]:
        """Stop the daemon; its final counters, with what is left in its queue file."""
        final = await self.sample() or {}
        for sink in self._sinks:
            await sink.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        code = await self.child.stop()
        # The daemon finishes its in-flight calls on SIGTERM, after the last sample: the
        # queue file is the exact account of what is still waiting and what was given up.
        with contextlib.suppress(CampaignWriterError, OSError):
            left = read_stats(self.queue_path)
            final.update(queue_depth=left.depth, dead=left.dead_letters)
        return {**final, "exit_code": code}


class PeerSubject(Subject):
    """A peer process fed on stdin that reports JSON status lines on stdout."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.child = Child(name, argv, log_path)
        self.child.on_line = self._status_line
        self.status: dict[str, Any] = {}

    def _status_line(self, line: bytes) -> None:
        with contextlib.suppress(ValueError):
            self.status = orjson.loads(line)

    async def start(self) -> None:
        await self.child.start(f"{self.name} ready", stdin=True)

    def feeder(self, events: Events) -> Feeder:
        return Feeder(PipeSink(self.child.write), events, concurrency=1)

    async def sample(self) -> dict[str, Any] | None:
        status = self.status
        if not status:
            return None
        return {
            "received": status.get("received"),
            "in_flight": status.get("in_flight"),
            "in_flight_limit": None,
            "rate": status.get("rate"),
            "queue_depth": status.get("pending"),
            "delivered": status.get("delivered"),
            "dead": status.get("dead"),
            "retried": status.get("retried"),
            "throttled": status.get("throttled"),
            "calls": status.get("calls"),
        }

    async def stop(self) -> dict[str, Any]:
        code = await self.child.stop()
        final = await self.sample() or {}
        return {**final, "exit_code": code}


def ensure_sdk() -> str:
    """Node.js, with the pinned SDK installed (npm ci) into bench/peers/sdk on first use."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise SubjectUnavailable("Node.js and npm are not installed (the sdk peer needs them)")
    if not (SDK_DIR / "node_modules" / "@adobe" / "acc-js-sdk" / "package.json").exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SDK_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise SubjectUnavailable(f"npm ci failed in {SDK_DIR}: {result.stderr[-500:]}")
    return node


def make_subject(
    name: str,
    *,
    campaign_url: str,
    queue_path: Path,
    log_path: Path,
    tps: float,
    max_records: int,
    linger_ms: int,
    extra_sets: tuple[str, ...] = (),
) -> Subject:
    if name in ("writer", "cubic"):
        settings = writer_settings(campaign_url, queue_path, tps, max_records, linger_ms)
        return WriterSubject(name, [*settings, *extra_sets], log_path, queue_path)
    if name == "unitary":
        argv = [sys.executable, "-m", "bench.peers.unitary", "--url", campaign_url]
        return PeerSubject(name, [*argv, "--tps", f"{tps:g}"], log_path)
    if name == "sdk":
        node = ensure_sdk()
        settings = {
            "url": campaign_url,
            "login": "admin",
            "password": "admin",
            "tps": tps,
            "batch": max_records,
            "attempts": 5,
            "timeoutMs": 30000,
        }
        argv = [node, str(SDK_DIR / "peer.js"), orjson.dumps(settings).decode()]
        return PeerSubject(name, argv, log_path)
    raise ValueError(f"unknown subject {name!r}")
