"""``campaign-writer validate``: check a config file, print every problem with its path."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["HELP", "configure", "execute"]

HELP = "Check a config file; print every problem with its key path (exit 1 if any)."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="check with this override applied, as `run --set` would (repeatable)",
    )


def execute(args: argparse.Namespace) -> int:
    from ..config import load
    from ..errors import ConfigError

    try:
        config = load(args.config, overrides=args.set)
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"{args.config}: {count} problem{'s' if count != 1 else ''}")
        for problem in exc.problems:
            print(problem)
        return 1
    routes = ", ".join(f"{r.name} -> {r.schema} ({r.method})" for r in config.routes)
    print(f"{args.config}: OK")
    tps = "auto" if config.campaign.auto_limit else f"{config.campaign.tps_limit:g}"
    print(f"  campaign  {config.campaign.url} (auth {config.campaign.auth.mode}, tps_limit {tps})")
    print(
        f"  intake    http://{config.http.listen}/v1/events"
        f"{' (token required)' if config.http.token else ''}"
    )
    print(
        f"  queue     {config.queue.path} (max {config.queue.max_bytes} bytes, "
        f"synchronous {config.queue.synchronous}, "
        f"commit window {config.queue.commit_window_ms:g} ms)"
    )
    print(f"  routes    {routes}")
    if config.sources:
        print(f"  sources   {', '.join(f'{s.name} ({s.kind})' for s in config.sources)}")
    for warning in warnings(config):
        print(f"warning: {warning}")
    return 0


def warnings(config: Config) -> list[str]:
    """What is legal but likely to surprise: each a sentence that names the route."""
    found = []
    for route in config.routes:
        if route.method == "Ingest" and not route.key_spec:
            found.append(
                f"route {route.name!r}: Ingest without a key inserts every record it is"
                " sent; delivery is at least once, so a call resent after a lost answer"
                " stores its records twice. Give the route a key (key = [...]) to make a"
                " resend harmless."
            )
    return found
