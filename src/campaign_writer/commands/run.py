"""``campaign-writer run``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HELP", "configure", "execute"]

HELP = "Run the writer daemon: HTTP and broker intake, durable queue, delivery to Campaign."

SAMPLE_EVENT = '{"type":"sample","id":"demo-1","testcol1":"hello","testcol2":"world"}'


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (repeatable; secrets cannot be set here)",
    )
    parser.add_argument(
        "--with-simulator",
        action="store_true",
        help="also start the Campaign simulator at campaign.url (for `make run` and demos)",
    )


def execute(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    return _run(args)


async def _start_simulator(url: str) -> asyncio.subprocess.Process:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 8081
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign_writer",
        "simulate",
        "--host",
        host,
        "--port",
        str(port),
        "--exit-with-stdin",
        # The pipe's other end is ours and is never written: when this process ends,
        # however it ends, the simulator reads the end of its input and stops.
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
    except TimeoutError:
        line = b""
    if not line.startswith(b"simulator listening on"):
        process.kill()
        await process.wait()
        raise RuntimeError(f"the simulator did not start on {host}:{port}")
    print(line.decode().strip(), flush=True)
    return process


async def _stop_simulator(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def _reload(daemon: Any, args: argparse.Namespace) -> None:
    """SIGHUP: re-read the config file; apply what can change live, name the rest."""
    from ..config import load
    from ..errors import ConfigError
    from ..logs import get_logger

    log = get_logger("reload")
    try:
        config = load(args.config, overrides=args.set)
    except ConfigError as exc:
        log.error(
            "SIGHUP: the config file has problems; nothing was changed",
            extra={"problems": list(exc.problems)[:20]},
        )
        return
    applied, restart = daemon.reload(config)
    log.info(
        "SIGHUP: config re-read",
        extra={"applied": applied or ["nothing changed"], "needs_restart": restart},
    )
    if restart:
        log.warning(
            "SIGHUP: these sections changed but take effect only after a restart",
            extra={"sections": restart},
        )


async def _run(args: argparse.Namespace) -> int:
    from ..config import load
    from ..daemon import Daemon
    from ..errors import CampaignWriterError, ConfigError
    from ..logs import setup_logging
    from ..systemd import Notifier

    # Read (and taken out of the environment) before any child starts.
    notifier = Notifier.from_environment()
    try:
        config = load(args.config, overrides=args.set)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}: {problem}", file=sys.stderr)
        return 2
    fmt = config.log.format
    setup_logging(config.log.level, json=None if fmt == "auto" else fmt == "json")
    simulator = await _start_simulator(config.campaign.url) if args.with_simulator else None
    daemon = Daemon(config)
    try:
        try:
            await daemon.start()
        except ConfigError as exc:
            # Several problems (campaign.check_schemas gives one per route and field):
            # one line each, as a config file's problems are printed.
            print("campaign-writer: cannot start:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        except CampaignWriterError as exc:
            print(f"campaign-writer: cannot start: {exc}", file=sys.stderr)
            return 1
        # What the start made (sessions, listeners, metrics, compiled routes) lives as long
        # as the daemon: out of the collector's sight, it is not walked by every full
        # collection. Worth about 10% of the writer's CPU under steady load (bench steady).
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.stop)
        loop.add_signal_handler(signal.SIGHUP, _reload, daemon, args)
        assert daemon.http is not None
        print(f"campaign-writer ready: intake {daemon.http.url}/v1/events", flush=True)
        notifier.ready(f"taking events on {daemon.http.url}/v1/events")
        if simulator is not None:
            print(
                "try: curl -sS -X POST "
                f"{daemon.http.url}/v1/events -H 'Content-Type: application/json' "
                f"-d '{SAMPLE_EVENT}'\n"
                f"then: curl -sS '{config.campaign.url.rstrip('/')}"
                "/__sim/records?schema=dem:sampleTableStg'",
                flush=True,
            )
        return await daemon.wait()
    finally:
        notifier.stopping()
        await daemon.close()
        await notifier.close()
        if simulator is not None:
            await _stop_simulator(simulator)
