"""Signals and readiness of ``campaign-writer run`` as a real process.

SIGHUP re-reads the config (routes, ``tps_limit`` and the log level apply live; the
rest is named as needing a restart) without dropping or duplicating an event; the
``--with-simulator`` child never outlives the writer, even one killed with SIGKILL;
``/readyz`` answers "can this instance take events", apart from Campaign's reachability.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from campaign_writer.daemon import Daemon
from campaign_writer.throttle import TenantThrottle
from tests.support.simulator import SimulatorHandle
from tests.support.writer import EXAMPLE, post_events, sample_events, wait_for, writer_config

SAMPLE = "dem:sampleTableStg"
LOCAL = Path(__file__).resolve().parents[1] / "config" / "local.toml"
EXTRA_ROUTE = """
[[routes]]
name = "extra"
match = { type = "extra" }
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["id"]

[routes.fields.id]
type = "string"
length = 64
required = true

[routes.fields.testcol1]
type = "string"
length = 255
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_text(*, tps: int, level: str, batch: int) -> str:
    """The example config with this test's settings written into the file itself."""
    text = EXAMPLE.read_text()
    lines = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else ""
        if section == "[campaign]" and key == "tps_limit":
            line = f"tps_limit = {tps}"
        elif section == "[log]" and key == "level":
            line = f'level = "{level}"'
        elif section == "[batch]" and key == "max_records":
            line = f"max_records = {batch}"
        lines.append(line)
    return "\n".join(lines) + "\n"


class Writer:
    """``campaign-writer run`` with its config in a file the test rewrites."""

    def __init__(self, simulator: SimulatorHandle, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.simulator = simulator
        self.config = tmp_path / "writer.toml"
        self.stderr = tmp_path / "writer.log"
        self.admin_port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.intake = ""

    def write(self, *, tps: int, level: str, batch: int, extra_route: bool = False) -> None:
        text = config_text(tps=tps, level=level, batch=batch)
        self.config.write_text(text + (EXTRA_ROUTE if extra_route else ""))

    async def start(self, *extra: str) -> None:
        url = self.simulator.url
        overrides = [
            f'campaign.url="{url}"',
            f'campaign.auth.ims_url="{url}/ims/token/v3"',
            f'queue.path="{self.tmp_path / "queue.sqlite3"}"',
            'http.listen="127.0.0.1:0"',
            f'admin.listen="127.0.0.1:{self.admin_port}"',
            "batch.linger_ms=20",
            'log.format="json"',
            *extra,
        ]
        with self.stderr.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "campaign_writer",
                "run",
                "--config",
                str(self.config),
                *(arg for item in overrides for arg in ("--set", item)),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode()
        assert line.startswith("campaign-writer ready: intake "), line
        self.intake = line.split("intake ", 1)[1].strip().removesuffix("/v1/events")

    async def get(self, path: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.admin_port}{path}") as answer,
        ):
            body = await answer.read()
            return answer.status, orjson.loads(body) if path != "/metrics" else body.decode()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.stderr.read_text().splitlines():
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue
        return lines

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 60)


async def test_sighup_applies_routes_tps_and_log_level_and_loses_nothing(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    writer = Writer(simulator, tmp_path)
    writer.write(tps=1000, level="INFO", batch=50)
    await writer.start()
    try:
        first = sample_events(300, prefix="before-")
        await post_events(writer.intake, first)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{writer.intake}/v1/events", json={"type": "extra", "id": "x-early"}
            ) as answer,
        ):
            assert answer.status == 400  # no such route yet
        writer.write(tps=40, level="DEBUG", batch=20, extra_route=True)
        assert writer.process is not None
        feeding = asyncio.create_task(
            post_events(writer.intake, sample_events(300, prefix="during-"))
        )
        writer.process.send_signal(signal.SIGHUP)
        await feeding
        extra = [{"type": "extra", "id": f"x{i}", "testcol1": "new"} for i in range(50)]

        async def routed() -> bool:
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{writer.intake}/v1/events", json=extra[:1]) as answer,
            ):
                return answer.status == 202

        await wait_for(routed, timeout=10, interval=0.1)
        await post_events(writer.intake, extra[1:])
        _, stats = await writer.get("/v1/stats")
        assert stats["delivery"]["rate_limit"] <= 40

        async def delivered() -> bool:
            _, stats = await writer.get("/v1/stats")
            return stats["queue"]["depth"] == 0 and not stats["delivery"]["records_in_memory"]

        await wait_for(delivered, timeout=60, interval=0.2)
        assert writer.process.returncode is None, "SIGHUP ended the daemon"
    finally:
        assert await writer.stop() == 0
    rows = await simulator.records(SAMPLE)
    ids = sorted(row["id"] for row in rows)
    wanted = sorted(
        [f"before-{i:06d}" for i in range(300)]
        + [f"during-{i:06d}" for i in range(300)]
        + [f"x{i}" for i in range(50)]
    )
    assert ids == wanted  # each exactly once
    lines = writer.log_lines()
    reread = [line for line in lines if "config re-read" in line.get("msg", "")]
    assert reread and set(reread[-1]["applied"]) == {"log.level", "campaign.tps_limit", "routes"}
    assert reread[-1]["needs_restart"] == ["batch"]
    assert any(line.get("level") == "debug" for line in lines), "log.level was not applied"


async def test_sighup_with_a_broken_config_changes_nothing(
    simulator: SimulatorHandle, tmp_path: Path
) -> None:
    writer = Writer(simulator, tmp_path)
    writer.write(tps=1000, level="INFO", batch=50)
    await writer.start()
    try:
        writer.config.write_text("[campaign\nthis is not toml")
        assert writer.process is not None
        writer.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "nothing was changed" in writer.stderr.read_text(), timeout=10)
        await post_events(writer.intake, sample_events(20, prefix="after-"))
        assert writer.process.returncode is None
    finally:
        assert await writer.stop() == 0


async def test_readyz_is_about_taking_events_not_about_campaign(tmp_path: Path) -> None:
    """Campaign down: /readyz stays 200 (the queue absorbs events), and /v1/stats and
    the campaign_reachable gauge say Campaign cannot be reached. A full queue: 503."""
    dead = f"http://127.0.0.1:{free_port()}"

    class Nowhere:
        url = dead

    writer = Writer(Nowhere(), tmp_path)  # type: ignore[arg-type]
    writer.write(tps=1000, level="WARNING", batch=50)
    await writer.start('queue.max_bytes="1MiB"')
    try:
        status, body = await writer.get("/readyz")
        assert status == 200, body
        _, stats = await writer.get("/v1/stats")
        assert stats["campaign"]["reachable"] is False
        assert "unreachable" in stats["campaign"]["problem"]
        _, metrics = await writer.get("/metrics")
        assert "campaign_writer_campaign_reachable 0.0" in metrics
        events = sample_events(200, prefix="fill-")
        for event in events:
            event["testcol1"] = "z" * 250
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.post(f"{writer.intake}/v1/events", json=events) as answer:
                    if answer.status == 503:
                        break
        status, body = await writer.get("/readyz")
        assert status == 503 and "full" in body["checks"]["queue"], body
    finally:
        assert await writer.stop() == 0


async def test_the_simulator_child_never_outlives_a_killed_writer(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "local.toml"
    config.write_bytes(LOCAL.read_bytes())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign_writer",
        "run",
        "--config",
        str(config),
        "--with-simulator",
        "--set",
        f'campaign.url="http://127.0.0.1:{port}"',
        "--set",
        f'campaign.auth.ims_url="http://127.0.0.1:{port}/ims/token/v3"',
        "--set",
        f'queue.path="{tmp_path / "queue.sqlite3"}"',
        "--set",
        'http.listen="127.0.0.1:0"',
        "--set",
        'admin.listen="127.0.0.1:0"',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    first = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    assert first.startswith("simulator listening on"), first
    proc = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    children = proc.read_text().split()  # noqa: ASYNC240 (procfs, no disk)
    assert children, "no simulator child"
    child = int(children[0])
    process.send_signal(signal.SIGKILL)
    await process.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie re-parented to init has exited too
            return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True
        return False

    try:
        await wait_for(gone, timeout=15, interval=0.1)
    finally:
        if not gone():
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize(("before", "after"), [(20, "auto"), ("auto", 20)])
def test_reload_between_a_number_and_auto_needs_a_restart(
    tmp_path: Path, before: Any, after: Any
) -> None:
    """tps_limit changed between a number and "auto" is not applied live (the learner is
    made at start; "auto" would pin the limit at its starting 5/s): it needs a restart,
    and the throttle keeps its limit."""
    url = "http://127.0.0.1:9"
    daemon = Daemon(writer_config(url, tmp_path, campaign__tps_limit=before))
    throttle = daemon.throttle = TenantThrottle(12.0)
    applied, restart = daemon.reload(writer_config(url, tmp_path, campaign__tps_limit=after))
    assert "campaign.tps_limit" not in applied and "campaign.tps_limit" in restart
    assert throttle.controller.limit == 12.0
