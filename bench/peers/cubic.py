"""The cubic peer: the writer, with botocore's adaptive client rate limiter as its throttle.

Everything is the writer's own (HTTP intake, durable queue, batcher, dispatcher,
Little's-law in-flight cap, retries) except the one component under comparison:
the tenant throttle becomes :class:`CubicThrottle`, which hands admission and rate
control to botocore's ``ClientRateLimiter``, wired exactly as botocore's adaptive
retry mode wires it (``CubicCalculator``, ``RateClocker``, ``TokenBucket``). That
limiter is AWS's client-side answer to the same problem: CUBIC congestion control
applied to a request rate.

Behaviour inherited from botocore, on purpose: nothing is rate-limited until the
first throttling answer, there is no sink-wide pause and no ``Retry-After``; a
throttled batch goes back to the batcher and waits for a token like any other.

Run it like ``campaign-writer run`` (same ``--config`` and ``--set``; prints the same
``campaign-writer ready: intake URL/v1/events`` line)::

    python -m bench.peers.cubic --config config/example.toml --set ...
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from botocore.exceptions import CapacityNotAvailableError
from botocore.retries import adaptive, bucket, throttling

from campaign_writer.config import Config
from campaign_writer.metrics import Metrics
from campaign_writer.throttle import TenantThrottle

__all__ = ["CubicThrottle", "main"]


class _Verdict:
    """The throttling detector botocore's limiter consults; we pass the verdict in."""

    def is_throttling_error(self, **kwargs: object) -> bool:
        return bool(kwargs.get("throttled"))


class CubicThrottle(TenantThrottle):
    """The writer's throttle interface over botocore's ``ClientRateLimiter``."""

    def __init__(self, tps_limit: float, metrics: Metrics) -> None:
        super().__init__(tps_limit, on_rate_change=metrics.rate_limit.set)
        self.tps_limit = tps_limit
        clock = bucket.Clock()
        self._bucket = bucket.TokenBucket(max_rate=1, clock=clock)
        self._limiter = adaptive.ClientRateLimiter(
            rate_adjustor=throttling.CubicCalculator(
                starting_max_rate=0, start_time=clock.current_time()
            ),
            rate_clocker=adaptive.RateClocker(clock),
            token_bucket=self._bucket,
            throttling_detector=_Verdict(),
            clock=clock,
        )
        self._gauge = metrics.rate_limit.set

    @property
    def limiting(self) -> bool:
        # botocore turns its limiter on at the first throttling answer and never off.
        return bool(getattr(self._limiter, "_enabled", True))

    async def acquire(self, method: str | None = None) -> None:
        while self.limiting:
            try:
                self._bucket.acquire(block=False)  # botocore's blocking wait would stall the loop
                return
            except CapacityNotAvailableError:
                shortfall = 1.0 - self._bucket.available_capacity
                await asyncio.sleep(max(0.001, shortfall / self._bucket.max_rate))

    def on_accepted(self, method: str | None = None) -> None:
        self._limiter.on_receiving_response(throttled=False)

    def on_throttled(self, retry_after: float | None, method: str | None = None) -> float:
        self._limiter.on_receiving_response(throttled=True)
        self.rate()
        return 0.0

    def rate(self, now: float | None = None) -> float:
        rate = float(self._bucket.max_rate) if self.limiting else self.tps_limit
        self._gauge(rate)
        return rate

    @property
    def paused_for(self) -> float:
        return 0.0


def cubic_throttle(config: Config, metrics: Metrics) -> TenantThrottle:
    return CubicThrottle(config.campaign.tps_limit, metrics)


async def run(args: argparse.Namespace) -> int:
    from campaign_writer.config import load
    from campaign_writer.daemon import Daemon
    from campaign_writer.errors import CampaignWriterError, ConfigError
    from campaign_writer.logs import setup_logging

    try:
        config = load(args.config, overrides=args.set)
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, json=config.log.format == "json")
    daemon = Daemon(config, throttle_factory=cubic_throttle)
    try:
        try:
            await daemon.start()
        except CampaignWriterError as exc:
            print(f"cubic peer: cannot start: {exc}", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.stop)
        assert daemon.http is not None
        print(f"campaign-writer ready: intake {daemon.http.url}/v1/events", flush=True)
        return await daemon.wait()
    finally:
        await daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    import uvloop

    raise SystemExit(uvloop.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
