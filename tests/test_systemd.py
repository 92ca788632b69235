"""systemd integration: sd_notify readiness, stopping and watchdog, and the unit file.

The notifications are read from a real AF_UNIX datagram socket the test binds, as
systemd would, from a real ``campaign-writer run`` process.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from campaign_writer.systemd import Notifier
from tests.support.services import missing
from tests.support.simulator import SimulatorHandle
from tests.support.writer import WriterProcess, post_events, sample_events, wait_for

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "campaign-writer.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where systemd's NOTIFY_SOCKET would be."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    yield receiver, str(path)
    receiver.close()


async def receive_until(receiver: socket.socket, wanted: str, timeout: float = 30.0) -> list[str]:
    """Every datagram received up to and including the first holding line ``wanted``."""
    loop = asyncio.get_running_loop()
    got: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            datagram = (await loop.sock_recv(receiver, 4096)).decode()
            got.append(datagram)
            if wanted in datagram.splitlines():
                return got


async def test_a_writer_notifies_ready_watchdog_and_stopping(
    simulator: SimulatorHandle, tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """READY=1 once intake takes events, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1 on drain."""
    receiver, path = notify_socket
    writer = WriterProcess(simulator.url, tmp_path)
    intake = await writer.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    assert writer.process is not None
    try:
        first = await receive_until(receiver, "READY=1")
        ready = first[-1].splitlines()
        assert f"MAINPID={writer.process.pid}" in ready
        assert any(line.startswith("STATUS=taking events on ") for line in ready)
        assert await post_events(intake, sample_events(1)) == 1
        pings = [await receive_until(receiver, "WATCHDOG=1", timeout=5) for _ in range(3)]
        assert all(batch == ["WATCHDOG=1"] for batch in pings)
    finally:
        code = await writer.terminate()
    rest = await receive_until(receiver, "STOPPING=1")
    assert "STATUS=draining" in rest[-1].splitlines()
    assert code == 0


async def test_abstract_sockets_and_foreign_watchdogs() -> None:
    """'@name' reaches an abstract socket; a WATCHDOG_PID of another process is not ours;
    a socket nobody listens on does not stop the writer."""
    name = f"campaign-writer-test-{secrets.token_hex(6)}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.setblocking(False)
    environ = {
        "NOTIFY_SOCKET": "@" + name,
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
        "OTHER": "kept",
    }
    notifier = Notifier.from_environment(environ)
    try:
        assert environ == {"OTHER": "kept"}
        assert notifier.watchdog_s is None
        notifier.ready("up")
        got = await receive_until(receiver, "READY=1", timeout=5)
        assert got[-1].splitlines()[:2] == ["READY=1", "STATUS=up"]
        ours = Notifier.from_environment(
            {
                "NOTIFY_SOCKET": "@" + name,
                "WATCHDOG_USEC": "1000000",
                "WATCHDOG_PID": str(os.getpid()),
            }
        )
        assert ours.watchdog_s == 1.0
        nowhere = Notifier("@campaign-writer-test-nobody-listens-" + secrets.token_hex(6))
        nowhere.notify("READY=1")  # logged once; the writer goes on
        nowhere.notify("READY=1")
        await nowhere.close()
    finally:
        await notifier.close()
        receiver.close()


# prctl(2): the kernel's refusal of writable-and-executable memory (Linux 6.3+), what
# the unit's MemoryDenyWriteExecute=yes enforces. Inherited across fork and exec.
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

# Loaded first by the writer's interpreter (PYTHONPATH): turns the refusal on before any
# extension module (uvloop, lxml, orjson, hiredis) loads, and records that it holds.
MDWE_SITECUSTOMIZE = f"""
import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    raise SystemExit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    result = "allowed"
except OSError:
    result = "refused"
with open(os.environ["MDWE_PROBE"], "w") as probe:
    probe.write(result)
"""


async def test_a_writer_delivers_without_writable_executable_memory(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """Under the kernel's MemoryDenyWriteExecute (PR_SET_MDWE) a writer starts, takes
    events and delivers them: the unit's hardening leaves uvloop, lxml and the rest whole.
    On a kernel without PR_SET_MDWE (before 6.3) it skips, saying so, and fails under CI."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) < 0:
        missing("this kernel has no PR_SET_MDWE (Linux 6.3+): nothing to check it with")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(MDWE_SITECUSTOMIZE, encoding="utf-8")
    probe = tmp_path / "mdwe-probe"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    writer = WriterProcess(simulator.url, tmp_path)
    intake = await writer.start(env={"PYTHONPATH": path, "MDWE_PROBE": str(probe)})
    try:
        assert probe.read_text(encoding="utf-8") == "refused"
        assert await post_events(intake, sample_events(20, prefix="mdwe")) == 20

        async def delivered() -> bool:
            return len(await simulator.records("dem:sampleTableStg")) == 20

        await wait_for(delivered, timeout=30)
    finally:
        code = await writer.terminate()
    assert code == 0


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """deploy/systemd/campaign-writer.service is a valid, hardened Type=notify unit."""
    text = UNIT.read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "DynamicUser=yes",
        "StateDirectory=campaign-writer",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "LoadCredential=",
        "KillSignal=SIGTERM",
    ):
        assert any(row.startswith(line) for row in text.splitlines()), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze (package systemd) is not installed")
    # verify resolves ExecStart: point it at an executable that exists here.
    binary = tmp_path / "campaign-writer"
    binary.write_text("#!/bin/sh\n", encoding="utf-8")
    binary.chmod(0o755)
    unit = tmp_path / "campaign-writer.service"
    unit.write_text(
        text.replace("/opt/campaign-writer/bin/campaign-writer", str(binary)), encoding="utf-8"
    )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "campaign-writer.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
