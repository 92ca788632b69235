"""``campaign-writer top``: a live terminal view of a running writer, like ``vector top``.

Every second it reads the admin listener's ``/v1/stats`` (state: queue, throttle,
in-flight, lanes, sources) and ``/metrics`` (the counters whose differences give
per-lane and per-source rates, 429s and calls per second), and redraws one screen
with rich. ``q`` or Ctrl-C ends it with exit code 0. An unreachable writer is said on
the screen, and the view keeps trying.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .status import format_age, format_size

if TYPE_CHECKING:
    import aiohttp
    from rich.console import RenderableType

__all__ = ["HELP", "Frame", "configure", "execute", "render"]

HELP = "Live view of a running writer: rates, throttle, in-flight, queue, lanes, sources."

DEFAULT_ADMIN = "http://127.0.0.1:9090"
# Counters read from /metrics: (name, label that keys the rate, or "" for a total).
_RATE_COUNTERS = (
    ("campaign_writer_records_delivered_total", "lane"),
    ("campaign_writer_calls_total", ""),
    ("campaign_writer_throttled_total", ""),
    ("campaign_writer_records_dead_lettered_total", ""),
    ("campaign_writer_events_accepted_total", "source"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url", metavar="URL", help=f"the writer's admin listener (default {DEFAULT_ADMIN})"
    )
    where.add_argument("--config", metavar="FILE", help="the writer's config (uses admin.listen)")
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes"
    )
    parser.add_argument("--once", action="store_true", help="print one screen and exit")


def execute(args: argparse.Namespace) -> Any:
    from ..config import load
    from ..errors import ConfigError

    url = args.url or DEFAULT_ADMIN
    if args.config:
        try:
            listen = load(args.config).admin.listen
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"{args.config}: {problem}", file=sys.stderr)
            return 2
        host, _, port = listen.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "") else host  # noqa: S104
        url = f"http://{host}:{port}"
    return _top(url.rstrip("/"), max(0.2, args.interval), args.once)


# --- reading ---------------------------------------------------------------------------


@dataclass
class Frame:
    """One reading of the writer, and the rates since the reading before it."""

    url: str
    stats: Mapping[str, Any] | None = None
    error: str | None = None
    counters: dict[str, float] = field(default_factory=dict)
    taken_at: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    elapsed_s: float | None = None  # since the reading before, when there was one

    def rate(self, key: str) -> str:
        """Per second since the reading before ("-" on the first reading)."""
        if self.elapsed_s is None:
            return "-"
        return f"{self.rates.get(key, 0.0):,.1f}"


def _counters(metrics_text: str) -> dict[str, float]:
    """The counters rates are computed from, keyed ``name`` or ``name|label``."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    wanted = dict(_RATE_COUNTERS)
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            by = wanted.get(sample.name)
            if by is None:
                continue
            key = sample.name
            if by == "lane":
                key += f"|{sample.labels.get('schema', '')}#{sample.labels.get('method', '')}"
            elif by:
                key += f"|{sample.labels.get(by, '')}"
            found[key] = found.get(key, 0.0) + sample.value
    return found


async def read_frame(session: aiohttp.ClientSession, url: str, before: Frame | None) -> Frame:
    """Read /v1/stats and /metrics; rates against ``before`` when it was readable."""
    import aiohttp

    frame = Frame(url, taken_at=time.monotonic())
    try:
        async with session.get(f"{url}/v1/stats") as answer:
            answer.raise_for_status()
            frame.stats = await answer.json()
        async with session.get(f"{url}/metrics") as answer:
            answer.raise_for_status()
            metrics_text = await answer.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        frame.error = f"cannot read {url}: {exc or type(exc).__name__}"
        return frame
    assert frame.stats is not None
    frame.counters = _counters(metrics_text)
    if before is not None and before.error is None and frame.taken_at > before.taken_at:
        frame.elapsed_s = frame.taken_at - before.taken_at
        for key, value in frame.counters.items():
            previous = before.counters.get(key, 0.0)
            frame.rates[key] = max(0.0, value - previous) / frame.elapsed_s
    return frame


# --- drawing ---------------------------------------------------------------------------


def _state(ok: bool, text: str) -> str:
    """``text`` (escaped: it may echo an error) in green when ok, else in bold red."""
    from rich.markup import escape

    return f"[green]{escape(text)}[/]" if ok else f"[bold red]{escape(text)}[/]"


def _plain(value: object) -> str:
    """A value from the writer as table text, never read as rich markup."""
    from rich.markup import escape

    return escape(str(value))


def render(frame: Frame) -> RenderableType:
    """The whole screen for one frame."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    title = f"campaign-writer top: {frame.url}  (q or Ctrl-C to quit)"
    stats = frame.stats
    if frame.error is not None or stats is None:
        return Panel(_state(False, f"{frame.error}") + "\nretrying every second", title=title)
    delivery = stats.get("delivery") or {}
    queue = stats.get("queue") or {}
    campaign = stats.get("campaign") or {}
    auth = stats.get("auth") or {}
    ready = stats.get("ready") or {}
    problems = [f"{name}: {problem}" for name, problem in ready.items() if problem]

    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    head.add_row(
        f"uptime {format_age(stats.get('uptime_s'))}",
        "ready " + _state(not problems, "yes" if not problems else "; ".join(problems)),
        f"auth {_plain(auth.get('mode', '-'))} "
        + _state(bool(auth.get("ready")), "ok" if auth.get("ready") else "not yet"),
        "campaign "
        + _state(
            bool(campaign.get("reachable")),
            "reachable"
            if campaign.get("reachable")
            else str(campaign.get("problem") or "unreachable"),
        ),
    )
    if delivery.get("fatal"):
        head.add_row(_state(False, f"delivery stopped: {delivery['fatal']}"), "", "", "")

    throttle = Table(title="delivery", expand=True, show_edge=False)
    for column in (
        "calls/s",
        "rate limit",
        "tps_limit",
        "429/s",
        "429 total",
        "paused",
        "in flight",
        "dead letters/s",
    ):
        throttle.add_column(column, justify="right")
    totals = delivery.get("totals") or {}
    throttle.add_row(
        frame.rate("campaign_writer_calls_total"),
        f"{delivery.get('rate_limit', 0):g}",
        f"{campaign.get('tps_limit', 0):g}",
        frame.rate("campaign_writer_throttled_total"),
        str(totals.get("throttled", 0)),
        format_age(delivery.get("paused_for_s")) if delivery.get("paused_for_s") else "no",
        f"{delivery.get('in_flight', 0)} / {delivery.get('in_flight_limit', 0)}",
        frame.rate("campaign_writer_records_dead_lettered_total"),
    )

    store = Table(title="queue", expand=True, show_edge=False)
    for column in ("depth", "leased", "bytes", "capacity", "oldest", "dead letters"):
        store.add_column(column, justify="right")
    by_reason = queue.get("dead_letters_by_reason") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]))
    store.add_row(
        f"{queue.get('depth', 0):,}",
        f"{queue.get('leased', 0):,}",
        format_size(queue.get("bytes") or 0),
        format_size(queue["max_bytes"]) if queue.get("max_bytes") else "-",
        format_age(queue.get("oldest_age_s")),
        f"{queue.get('dead_letters', 0):,}" + (f" ({_plain(reasons[:60])})" if reasons else ""),
    )

    lanes = Table(title="lanes", expand=True, show_edge=False)
    for column in ("lane", "delivered/s", "waiting", "held keys", "failures", "state"):
        lanes.add_column(column, justify="left" if column == "lane" else "right")
    for lane, lane_stats in sorted((delivery.get("lanes") or {}).items()):
        paused = bool(lane_stats.get("paused_on_fault"))
        state = "paused on a fault" if paused else "ok"
        if lane_stats.get("collection_fallback"):
            state += ", one per call"
        lanes.add_row(
            _plain(lane),
            frame.rate(f"campaign_writer_records_delivered_total|{lane}"),
            f"{lane_stats.get('pending_entries', 0):,}",
            str(lane_stats.get("held_keys", 0)),
            str(lane_stats.get("failures", 0)),
            _state(not paused, state),
        )

    sources = Table(title="sources", expand=True, show_edge=False)
    for column in ("source", "kind", "accepted/s", "accepted", "state", "last error"):
        sources.add_column(column, justify="right" if "accepted" in column else "left")
    http = {"name": "http", "kind": "http", "connected": True}
    http["accepted"] = int(frame.counters.get("campaign_writer_events_accepted_total|http", 0))
    for source in [http, *(stats.get("sources") or ())]:
        name = str(source.get("name"))
        if source.get("paused"):
            state = _state(False, "paused (queue full)")
        elif source.get("connected", True):
            state = _state(True, "up")
        else:
            state = _state(False, "down")
        sources.add_row(
            _plain(name),
            _plain(source.get("kind", "http")),
            frame.rate(f"campaign_writer_events_accepted_total|{name}"),
            f"{source.get('accepted', 0):,}",
            state,
            _plain(str(source.get("last_error") or "")[:50]),
        )
    return Panel(Group(head, throttle, store, lanes, sources), title=title)


# --- the loop --------------------------------------------------------------------------


@contextlib.contextmanager
def _keys(on_key: Any) -> Iterator[None]:
    """Read single keys from a terminal on stdin (nothing when stdin is not one)."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    try:
        tty.setcbreak(fd)  # keys one at a time; Ctrl-C still raises SIGINT
        loop.add_reader(fd, lambda: on_key(sys.stdin.read(1)))
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _top(url: str, interval_s: float, once: bool) -> int:
    import aiohttp
    from rich.console import Console
    from rich.live import Live

    console = Console()
    timeout = aiohttp.ClientTimeout(total=max(2.0, interval_s * 2))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if once:
            first = await read_frame(session, url, None)
            await asyncio.sleep(min(interval_s, 1.0))
            last = await read_frame(session, url, first)
            console.print(render(last))
            return 1 if last.error else 0
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, done.set)

        def on_key(key: str) -> None:
            if key in ("q", "Q", "\x03"):
                done.set()

        try:
            with _keys(on_key), Live(console=console, screen=True, auto_refresh=False) as live:
                frame: Frame | None = None
                while not done.is_set():
                    frame = await read_frame(session, url, frame)
                    live.update(render(frame), refresh=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), interval_s)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    return 0
