"""Real parts for the reliability suite: writer processes, config files, certificates.

* :class:`WriterProc` runs ``campaign-writer run --config FILE`` as a child process
  (killable with SIGKILL), with stdout and stderr going to files so nothing can block
  on a full pipe and every line can be searched afterwards. Its intake and admin
  ports are chosen before it starts, so a restarted writer answers on the same URL.
* :func:`write_config` turns a config tree (``config/example.toml`` plus changes) into
  a TOML file, the way an operator would deploy it: secrets included.
* :func:`self_signed` makes a certificate for 127.0.0.1 with the ``openssl`` command.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from campaign_writer.simulator import DEFAULT_SCHEMAS, AttributeSpec, SchemaSpec
from tests.support.writer import EXAMPLE

__all__ = [
    "UNKEYED_ROUTE",
    "UNKEYED_SCHEMA",
    "WriterProc",
    "base_tree",
    "free_port",
    "peak_rss_kib",
    "sample_only_tree",
    "self_signed",
    "simulator_schemas",
    "to_toml",
    "write_config",
]

# Events of type "event" go to a staging table of their own by Ingest without a key,
# so each delivery inserts a new row: at-least-once duplicates show up as extra rows.
UNKEYED_SCHEMA = "cus:eventStg"
UNKEYED_ROUTE: dict[str, Any] = {
    "name": "unkeyed",
    "match": {"type": "event"},
    "schema": UNKEYED_SCHEMA,
    "method": "Ingest",
    "fields": {
        "id": {"type": "string", "length": 64, "required": True},
        "testcol1": {"type": "string", "length": 255},
    },
}


def simulator_schemas() -> tuple[SchemaSpec, ...]:
    """The simulator's built-in schemas plus ``cus:event`` (staged), for the unkeyed route."""
    event = SchemaSpec(
        "cus:event",
        (AttributeSpec("id", "string", 64), AttributeSpec("testcol1", "string", 255)),
        keys=("id",),
        auto_stg=True,
    )
    return (*DEFAULT_SCHEMAS, event)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_tree(campaign_url: str, queue_path: Path, **changes: Any) -> dict[str, Any]:
    """config/example.toml aimed at ``campaign_url`` with fast test settings.

    ``changes`` are dotted keys with ``__`` for dots (``sender__timeout_s=2``).
    """
    tree: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    settings: dict[str, Any] = {
        "campaign.url": campaign_url,
        "campaign.auth": {"mode": "session", "login": "admin", "password": "admin"},
        "campaign.tps_limit": 1000,
        "queue.path": str(queue_path),
        "batch.linger_ms": 20,
        "log.level": "WARNING",
        "log.format": "json",
        "retry.initial_backoff_s": 0.05,
        "retry.max_backoff_s": 0.5,
        "retry.fault_pause_max_s": 5,
        "daemon.shutdown_timeout_s": 5,
    }
    settings.update({key.replace("__", "."): value for key, value in changes.items()})
    for dotted, value in settings.items():
        node = tree
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def sample_only_tree(campaign_url: str, queue_path: Path | str, **changes: Any) -> dict[str, Any]:
    """:func:`base_tree` with only the ``sample`` route (the one the intake oracle models)."""
    tree = base_tree(campaign_url, Path(queue_path), **changes)
    tree["routes"] = [route for route in tree["routes"] if route["name"] == "sample"]
    return tree


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(tree: Mapping[str, Any]) -> str:
    """A TOML document for a config tree: tables, arrays of tables, inline tables below."""
    lines: list[str] = []

    def table(prefix: str, node: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in node.items() if not isinstance(v, Mapping)}
        plain = {
            k: v
            for k, v in plain.items()
            if not (isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v))
        }
        if prefix and plain:
            lines.append(f"[{prefix}]")
        for key, value in plain.items():
            lines.append(f"{json.dumps(key)} = {_value(value)}")
        for key, value in node.items():
            name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
            if isinstance(value, Mapping):
                table(name, value)
            elif isinstance(value, list) and value and all(isinstance(i, Mapping) for i in value):
                for item in value:
                    lines.append(f"[[{name}]]")
                    for k, v in item.items():
                        lines.append(f"{json.dumps(k)} = {_value(v)}")

    table("", tree)
    return "\n".join(lines) + "\n"


def write_config(path: Path, tree: Mapping[str, Any]) -> Path:
    text = to_toml(tree)
    tomllib.loads(text)  # fail here, not in the child, if the writer above is wrong
    path.write_text(text, encoding="utf-8")
    return path


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM) from /proc, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def self_signed(directory: Path, name: str = "campaign") -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 and localhost, made with openssl."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class WriterProc:
    """``campaign-writer run`` as a child process with fixed ports and logged output."""

    def __init__(
        self,
        directory: Path,
        tree: Mapping[str, Any],
        name: str = "writer",
        *,
        admin_listen: str | None = "",
    ) -> None:
        """``admin_listen``: '' picks a free port on 127.0.0.1; None leaves the key out."""
        self.directory = directory
        self.name = name
        self.intake_port = free_port()
        tree = dict(tree)
        http = dict(tree.get("http", {}))
        http["listen"] = f"127.0.0.1:{self.intake_port}"
        admin = dict(tree.get("admin", {}))
        admin.pop("listen", None)
        if admin_listen is not None:
            admin["listen"] = admin_listen or f"127.0.0.1:{free_port()}"
        tree["http"], tree["admin"] = http, admin
        self.config = write_config(directory / f"{name}.toml", tree)
        self.intake_url = f"http://127.0.0.1:{self.intake_port}"
        self.admin_url = f"http://{admin.get('listen', '127.0.0.1:9090')}"
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.killed = 0
        self.unexpected_exits: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def stdout_path(self) -> Path:
        return self.directory / f"{self.name}.{self.runs}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.directory / f"{self.name}.{self.runs}.stderr"

    def spawn(self, env: Mapping[str, str] | None = None) -> None:
        """Start the process and return at once (it may not be ready yet)."""
        self.runs += 1
        child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "campaign_writer", "run", "--config", str(self.config)],
                stdout=out,
                stderr=err,
                env=child_env,
                cwd=self.directory,
            )

    async def start(self, timeout: float = 60.0, env: Mapping[str, str] | None = None) -> str:
        """Start the process and wait for its ready line; returns the intake URL."""
        self.spawn(env)
        await self.ready(timeout)
        return self.intake_url

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stdout_path.read_bytes().startswith(b"campaign-writer ready: intake "):
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}: {self.tail()}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.name} not ready within {timeout} s: {self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Record (and fail on) an exit nobody asked for: a crash."""
        if self.process is not None and self.process.poll() is not None:
            note = f"run {self.runs} exited {self.process.returncode}: {self.tail()}"
            if note not in self.unexpected_exits:
                self.unexpected_exits.append(note)
            raise AssertionError(f"{self.name} crashed: {note}")

    def kill(self) -> None:
        """SIGKILL, for real; a process that had already died counts as a crash."""
        assert self.process is not None
        self.check_alive()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.killed += 1

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"{self.name} ignored SIGTERM for {timeout} s")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    def close(self) -> None:
        """Teardown: make sure no child outlives the test."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 15) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def output(self) -> bytes:
        """Everything every run wrote to stdout and stderr."""
        chunks = []
        for run in range(1, self.runs + 1):
            for stream in ("stdout", "stderr"):
                path = self.directory / f"{self.name}.{run}.{stream}"
                if path.exists():
                    chunks.append(path.read_bytes())
        return b"\n".join(chunks)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET on the admin listener."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.admin_url + path, timeout=aiohttp.ClientTimeout(total=10)) as answer,
        ):
            return answer.status, await answer.read()

    async def stats(self) -> dict[str, Any]:
        status, body = await self.get("/v1/stats")
        assert status == 200, body[:300]
        data: dict[str, Any] = json.loads(body)
        return data

    async def metric(self, name: str, labels: str = "") -> float:
        """The sum of one metric's samples in /metrics, optionally one label set."""
        status, body = await self.get("/metrics")
        assert status == 200
        wanted = f"{name}{{{labels}}}" if labels else name
        total = 0.0
        found = False
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == wanted or (not labels and sample.startswith(name + "{")):
                total += float(value)
                found = True
        return total if found else 0.0
