"""How many records per second the Campaign simulator accepts, latency model off.

Target (issue 3): at least 50,000 records/s on one core, in 1,000-record
collections, so the simulator is never the bottleneck of a benchmark.

The simulator runs as its own process (``campaign-writer simulate``, as ops and the
benchmark run it) with no TPS limit, no latency and no concurrency cap; this script
logs on, then sends pre-built collection documents over keep-alive HTTP with a few
calls in flight. It prints:

* records/s by wall clock: what a client saw (on a shared 2-core machine the load
  generator competes with the simulator for CPU, so this understates it);
* records per CPU-second of the simulator process (from /proc): the throughput of
  one core fully given to the simulator, the figure the target is about.

Usage: ``python bench/simulator_speed.py [--calls 300] [--records 1000]
[--concurrency 4] [--method Ingest|IngestExt|WriteCollection]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time

import aiohttp

from campaign_writer.campaign import soap

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(rb"simulator listening on (\S+)")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def document(call: int, records: int, method: str) -> str:
    """A collection of ``records`` staging rows with distinct keys and realistic values."""
    key = ' _key="@id"' if method != "Ingest" else ""
    rows = "".join(
        f'<sampleTableStg{key} id="c{call:05d}-r{i:05d}" testcol1="event-{call}-{i}'
        f'@example.com" testcol2="2024-05-01T12:{i % 60:02d}:00Z|campaign-{i % 17}"/>'
        for i in range(records)
    )
    root = "sampleTableStg-collection"
    return f'<{root} xtkschema="dem:sampleTableStg">{rows}</{root}>'


async def start_simulator() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign_writer",
        "simulate",
        "--port",
        "0",
        "--tps-limit",
        "0",
        "--latency-ms",
        "0",
        "--latency-per-record-ms",
        "0",
        "--latency-jitter",
        "0",
        "--max-concurrent",
        "0",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    match = LISTENING.search(line)
    if match is None:
        raise SystemExit(f"the simulator did not start: {line!r}")
    return process, match.group(1).decode()


async def logon(session: aiohttp.ClientSession, url: str) -> soap.Credentials:
    request = soap.build_request(
        "Logon",
        [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "admin"),
            soap.Param("parameters", "element", ""),
        ],
        soap.Credentials(),
        soap.WireOptions(),
    )
    async with session.post(url + request.path, data=request.body, headers=request.headers) as r:
        parsed = soap.parse_body(await r.read())
    assert isinstance(parsed, soap.SoapResponse), parsed
    result = soap.parse_logon(parsed)
    return soap.Credentials(result.session_token, result.security_token)


async def run(args: argparse.Namespace) -> None:
    process, url = await start_simulator()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            credentials = await logon(session, url)
            wire = soap.WireOptions()
            requests = [
                soap.build_request(
                    args.method,
                    [soap.Param("doc", "document", document(i, args.records, args.method))],
                    credentials,
                    wire,
                )
                for i in range(args.calls + args.warmup)
            ]
            body_kib = len(requests[0].body) / 1024
            pending = iter(requests)

            async def worker() -> int:
                failures = 0
                for request in pending:
                    async with session.post(
                        url + request.path, data=request.body, headers=request.headers
                    ) as answer:
                        await answer.read()
                        failures += answer.status != 200
                return failures

            warm = [next(pending) for _ in range(args.warmup)]
            for request in warm:
                async with session.post(
                    url + request.path, data=request.body, headers=request.headers
                ) as a:
                    assert a.status == 200, await a.text()

            cpu_before, client_before = cpu_seconds(process.pid), time.process_time()
            started = time.perf_counter()
            failures = sum(await asyncio.gather(*(worker() for _ in range(args.concurrency))))
            elapsed = time.perf_counter() - started
            cpu_used = cpu_seconds(process.pid) - cpu_before
            client_cpu = time.process_time() - client_before
            async with session.get(url + "/__sim/stats") as answer:
                stats = await answer.json()
    finally:
        process.terminate()
        await process.wait()

    records = args.calls * args.records
    stored = stats["records_by_schema"]["dem:sampleTableStg"]
    print(
        f"method {args.method}, {args.calls} calls of {args.records} records "
        f"({body_kib:.0f} KiB each), {args.concurrency} in flight, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(f"failed calls:                        {failures}")
    print(f"records stored:                      {stored}")
    print(f"wall time:                           {elapsed:.2f} s")
    print(f"records/s (wall clock):              {records / elapsed:,.0f}")
    print(f"simulator CPU:                       {cpu_used:.2f} s")
    print(f"records per simulator CPU-second:    {records / cpu_used:,.0f}  (target >= 50,000)")
    print(f"load generator CPU:                  {client_cpu:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="measured calls (default 300)")
    parser.add_argument("--records", type=int, default=1000, help="records per call (default 1000)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured first calls")
    parser.add_argument(
        "--method", default="Ingest", choices=("Ingest", "IngestExt", "WriteCollection")
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
