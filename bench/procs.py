"""Child processes of the benchmark and what /proc says about them.

Everything the harness measures runs as its own process, as in production: the
Campaign simulator (``campaign-writer simulate``), the writer (``campaign-writer
run``) and each peer. This module starts them, waits for the line each prints once
it is ready, stops them (SIGTERM, then SIGKILL after a grace period), and reads CPU
time and resident memory from ``/proc/<pid>``. Nothing here targets anything but
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

__all__ = [
    "REPO",
    "Child",
    "MachineSampler",
    "ProcSample",
    "SimulatorProcess",
    "free_port",
    "machine_info",
    "proc_sample",
]

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system) and memory of one process at one instant."""

    t: float
    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


def proc_sample(pid: int) -> ProcSample | None:
    """Read /proc/<pid>/stat and /proc/<pid>/status; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        with open(f"/proc/{pid}/status", "rb") as status:
            lines = status.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    memory = {}
    for line in lines:
        if line.startswith((b"VmRSS:", b"VmHWM:")):
            name, value = line.split(b":", 1)
            memory[name] = int(value.split()[0]) / 1024.0
    # Fields after the command name: utime and stime are the 12th and 13th.
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return ProcSample(time.time(), cpu, memory.get(b"VmRSS", 0.0), memory.get(b"VmHWM", 0.0))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info() -> dict[str, Any]:
    """What the report says about the machine: cores, CPU model, load, memory."""
    meminfo: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            meminfo[name] = int(rest.split()[0])
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "memory_mb": round(meminfo.get("MemTotal", 0) / 1024),
        "available_mb": round(meminfo.get("MemAvailable", 0) / 1024),
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }


class MachineSampler:
    """Busy CPU of the whole machine between two readings of /proc/stat.

    Subtracting the CPU of the processes we started leaves what everything else on
    the machine used meanwhile: on a shared box that is the noise to report.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values) / CLOCK_TICKS, idle / CLOCK_TICKS

    def busy_cores(self) -> float:
        """Average number of busy cores since construction."""
        total0, idle0 = self._start
        total1, idle1 = self._read()
        elapsed = total1 - total0
        cores = os.cpu_count() or 1
        if elapsed <= 0:
            return 0.0
        return cores * (elapsed - (idle1 - idle0)) / elapsed


class Child:
    """One child process: started with a command, ready when a line appears on stdout.

    stderr goes to ``log_path``; stdout lines after the ready line are handed to
    ``on_line`` (peers report their counters there).
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None
    ):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.ready_line = ""
        self.started_at = 0.0
        self._log: IO[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.on_line: Any = None
        self.last_sample: ProcSample | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(
        self, ready_prefix: str, *, timeout_s: float = 60.0, stdin: bool = False
    ) -> str:
        """Start and wait for the line starting with ``ready_prefix``; return it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230 - lives as long as the child
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env=env,
            limit=1 << 20,
        )
        self.started_at = time.time()
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), max(0.1, remaining))
            except TimeoutError:
                line = b""
            if not line:
                await self.stop()
                raise RuntimeError(
                    f"{self.name} did not become ready (see {self.log_path}): {self._tail_of_log()}"
                )
            text = line.decode(errors="replace").strip()
            if text.startswith(ready_prefix):
                self.ready_line = text
                break
        self._reader = asyncio.create_task(self._read_lines())
        return self.ready_line

    def _tail_of_log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-800:]
        return ""

    async def _read_lines(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                return
            if self.on_line is not None:
                self.on_line(line)

    def sample(self) -> ProcSample | None:
        """CPU and memory now (or as last seen, once the process has exited)."""
        if self.process is not None and self.process.returncode is None:
            sample = proc_sample(self.process.pid)
            if sample is not None:
                self.last_sample = sample
        return self.last_sample

    async def write(self, data: bytes) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
        process = self.process
        if process is None:
            return None
        self.sample()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5.0)
            self._reader.cancel()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode


class SimulatorProcess:
    """``campaign-writer simulate`` on 127.0.0.1 and its ``/__sim`` endpoints."""

    def __init__(self, log_path: Path, knobs: dict[str, Any]) -> None:
        argv = [sys.executable, "-m", "campaign_writer", "simulate", "--port", "0"]
        argv += ["--log-level", "WARNING", "--call-log-memory", "400000"]
        for name, value in knobs.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.child = Child("simulator", argv, log_path)
        self.url = ""
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        line = await self.child.start("simulator listening on ")
        self.url = line.removeprefix("simulator listening on ").strip()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.child.stop()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    async def control(self, **changes: Any) -> dict[str, Any]:
        async with self.session.post(f"{self.url}/__sim/control", json=changes) as answer:
            data: dict[str, Any] = await answer.json(loads=orjson.loads)
            if answer.status != 200:
                raise RuntimeError(f"the simulator refused {changes}: {data}")
            return data

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/__sim/stats") as answer:
            data: dict[str, Any] = await answer.json(loads=orjson.loads)
            return data

    async def calls(self, since: int) -> list[dict[str, Any]]:
        """Every call-log entry after ``since``, paged."""
        calls: list[dict[str, Any]] = []
        while True:
            params = {"since": str(since), "limit": "100000"}
            async with self.session.get(f"{self.url}/__sim/calls", params=params) as answer:
                data = await answer.json(loads=orjson.loads)
            page = data["calls"]
            calls.extend(page)
            if not page or since + len(page) >= data["last_seq"]:
                return calls
            since = page[-1]["seq"]

    async def records(self, schema: str) -> list[dict[str, str]]:
        """Every stored record of ``schema``, paged."""
        rows: list[dict[str, str]] = []
        while True:
            params = {"schema": schema, "offset": str(len(rows)), "limit": "100000"}
            async with self.session.get(f"{self.url}/__sim/records", params=params) as answer:
                data = await answer.json(loads=orjson.loads)
            rows.extend(data["records"])
            if not data["records"] or len(rows) >= data["total"]:
                return rows
