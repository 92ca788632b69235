"""The unitary peer: one Ingest call per event, through asyncio-throttle at the tenant limit.

This is the approach Adobe warns against, written the way a first integration
usually is: every event becomes its own SOAP call, and an
``asyncio_throttle.Throttler(rate_limit=tps, period=1)`` keeps the calls under the
limit. Envelopes come from :mod:`campaign_writer.campaign.soap` and answers are read with
:func:`campaign_writer.campaign.outcome.classify`, so the peer speaks the protocol exactly as
well as the writer does; only the batching and the rate control differ.

On 429 the worker waits for ``Retry-After`` (1 s without one) and tries again; a
transient failure is retried with exponential backoff up to ``--max-attempts``; a
data fault gives the event up ("dead"). Several workers share the throttler so slow
calls do not starve the budget.

Usage: ``python -m bench.peers.unitary --url URL --tps 20 [--workers 32]``; events
on stdin as NDJSON; ``unitary ready`` on stdout once logged on, then status lines
(:data:`bench.peers.STATUS_FIELDS`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson
from asyncio_throttle import Throttler

from campaign_writer.campaign import soap
from campaign_writer.campaign.documents import fragments_document, render_fragment
from campaign_writer.campaign.outcome import AuthExpired, Ok, Retry, Throttled, classify

__all__ = ["main"]

SCHEMA = "dem:sampleTableStg"
FIELDS = ("id", "testcol1", "testcol2")


class UnitaryPeer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = args.url.rstrip("/")
        self.tps = args.tps
        self.max_attempts = args.max_attempts
        self.throttler = Throttler(rate_limit=max(1, int(args.tps)), period=1.0)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout))
        self.queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
        self.wire = soap.WireOptions()
        self.credentials = soap.Credentials()
        self.stopping = False
        self.counts = dict.fromkeys(
            ("received", "in_flight", "delivered", "dead", "retried", "throttled", "calls"), 0
        )

    async def post(self, method: str, params: list[soap.Param]) -> Any:
        """One call through the throttler; returns the classified outcome."""
        request = soap.build_request(method, params, self.credentials, self.wire)
        async with self.throttler:
            if self.stopping:
                return None
            self.counts["calls"] += 1
            self.counts["in_flight"] += 1
            try:
                async with self.session.post(
                    self.url + request.path, data=request.body, headers=request.headers
                ) as answer:
                    body = await answer.read()
                    return classify(answer.status, answer.headers, body)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return Retry(f"{type(exc).__name__}: {exc}")
            finally:
                self.counts["in_flight"] -= 1

    async def logon(self) -> None:
        params = [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "admin"),
            soap.Param("parameters", "element", ""),
        ]
        while True:
            outcome = await self.post("Logon", params)
            if isinstance(outcome, Ok):
                result = soap.parse_logon(outcome.response)
                self.credentials = soap.Credentials(result.session_token, result.security_token)
                return
            await asyncio.sleep(1.0)

    async def read_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            self.counts["received"] += 1
            self.queue.put_nowait((line, 0))

    async def worker(self) -> None:
        while True:
            line, attempts = await self.queue.get()
            event = orjson.loads(line)
            attrs = {name: str(event[name]) for name in FIELDS if name in event}
            document = fragments_document(
                SCHEMA, [render_fragment(attrs, None, "@id")], collection=False
            )
            outcome = await self.post("Ingest", [soap.Param("doc", "document", document)])
            if outcome is None:  # stopping: the event stays pending
                return
            if isinstance(outcome, Ok):
                self.counts["delivered"] += 1
            elif isinstance(outcome, Throttled):
                self.counts["throttled"] += 1
                await asyncio.sleep(outcome.retry_after or 1.0)
                self.queue.put_nowait((line, attempts))
            elif isinstance(outcome, AuthExpired):
                await self.logon()
                self.queue.put_nowait((line, attempts))
            elif isinstance(outcome, Retry) and attempts + 1 < self.max_attempts:
                self.counts["retried"] += 1
                await asyncio.sleep(min(30.0, 0.5 * 2**attempts))
                self.queue.put_nowait((line, attempts + 1))
            else:  # a data fault, a fatal answer, or out of attempts
                self.counts["dead"] += 1

    def status(self) -> bytes:
        counts = self.counts
        pending = counts["received"] - counts["delivered"] - counts["dead"]
        return orjson.dumps({"t": time.time(), "pending": pending, "rate": self.tps, **counts})

    async def report(self) -> None:
        while True:
            sys.stdout.buffer.write(self.status() + b"\n")
            sys.stdout.flush()
            await asyncio.sleep(0.25)


async def run(args: argparse.Namespace) -> int:
    peer = UnitaryPeer(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await peer.logon()
    print("unitary ready", flush=True)
    tasks = [asyncio.create_task(peer.read_stdin()), asyncio.create_task(peer.report())]
    tasks += [asyncio.create_task(peer.worker()) for _ in range(args.workers)]
    await stop.wait()
    # Let the calls under way finish so the final counts match what Campaign stored.
    peer.stopping = True
    deadline = time.monotonic() + 10.0
    while peer.counts["in_flight"] and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.02)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    sys.stdout.buffer.write(peer.status() + b"\n")
    sys.stdout.flush()
    await peer.session.close()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Campaign (simulator) base URL")
    parser.add_argument("--tps", type=float, default=20.0, help="the tenant's calls/s limit")
    parser.add_argument("--workers", type=int, default=32, help="concurrent callers")
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0, help="timeout of one call, s")
    import uvloop

    raise SystemExit(uvloop.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
