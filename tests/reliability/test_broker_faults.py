"""Broker faults: RabbitMQ, Redis and NATS fail mid-stream under one writer process.

The soak form restarts each real broker on 127.0.0.1 with the commands DEVELOPERS.md
and ``.ci/run`` use (see :mod:`tests.reliability.brokers`), one after the other while
the writer consumes from all three. The quick form, which runs while other suites
share the brokers, cuts the writer's connections instead: each goes through a TCP
proxy that resets them and refuses new ones for a second, as a restarting broker does.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from tests.reliability.brokers import NatsPublisher, RabbitPublisher, RedisPublisher, restart
from tests.reliability.conftest import Figures
from tests.reliability.support import WriterProc, base_tree
from tests.sources.proxy import TcpProxy
from tests.support.services import port_open
from tests.support.writer import wait_for

pytestmark = pytest.mark.services

SAMPLE = "dem:sampleTableStg"
SOURCES = {"rabbitmq": "from-rabbitmq", "redis": "from-redis", "nats": "from-nats"}


def _bodies(prefix: str, start: int, count: int) -> tuple[list[str], list[bytes]]:
    ids = [f"{prefix}{i}" for i in range(start, start + count)]
    events = [{"type": "sample", "id": i, "testcol1": prefix, "testcol2": i} for i in ids]
    return ids, [orjson.dumps(e) for e in events]


async def test_brokers_fail_mid_stream_and_nothing_is_lost(
    simulator_factory,
    rabbitmq_port: int,
    redis_port: int,
    nats_port: int,
    tmp_path: Path,
    soak: bool,
    figures: Figures,
) -> None:
    """With the writer consuming from RabbitMQ, Redis Streams and NATS JetStream at once,
    each broker fails mid-stream (the soak restarts the real brokers; the quick form cuts
    the connections): every event the brokers acknowledged reaches Campaign, and each
    source reconnected."""
    half = 10_000 if soak else 2_000
    run = uuid.uuid4().hex[:10]
    simulator = await simulator_factory(tps_limit=0, latency_ms=2, poison_marker="")
    ports = {"rabbitmq": rabbitmq_port, "redis": redis_port, "nats": nats_port}
    proxies: dict[str, TcpProxy] = {}
    if not soak:
        for name, port in ports.items():
            proxies[name] = await TcpProxy(port).start()
    reach = {
        name: (proxies[name].port if name in proxies else port) for name, port in ports.items()
    }
    publishers = {
        "rabbitmq": await RabbitPublisher(rabbitmq_port, f"cw-faults-{run}").open(),
        "redis": await RedisPublisher(redis_port, f"cw-faults-{run}").open(),
        "nats": await NatsPublisher(nats_port, f"CWFAULTS{run.upper()}").open(),
    }
    common = {"reconnect_initial_s": 0.05, "reconnect_max_s": 2.0, "batch_size": 200}
    tree = base_tree(simulator.url, tmp_path / "queue.sqlite3", batch__max_records=500)
    tree["sources"] = [
        {
            "kind": "rabbitmq",
            "name": SOURCES["rabbitmq"],
            "url": f"amqp://guest:guest@127.0.0.1:{reach['rabbitmq']}/",
            "queue": publishers["rabbitmq"].queue,
            **common,
        },
        {
            "kind": "redis_streams",
            "name": SOURCES["redis"],
            "url": f"redis://127.0.0.1:{reach['redis']}/0",
            "stream": publishers["redis"].stream,
            "group": "writers",
            **common,
        },
        {
            "kind": "nats",
            "name": SOURCES["nats"],
            "url": f"nats://127.0.0.1:{reach['nats']}",
            "stream": publishers["nats"].stream,
            "durable": "writers",
            "ack_wait_s": 2.0,
            **common,
        },
    ]
    writer = WriterProc(tmp_path, tree)
    acknowledged: set[str] = set()
    try:
        await writer.start()
        for name, publisher in publishers.items():
            ids, bodies = _bodies(f"{name}-", 0, half)
            await publisher.publish(bodies)
            acknowledged.update(ids)
        for name, source in SOURCES.items():
            labels = f'source="{source}"'

            async def mid_stream(labels: str = labels) -> bool:
                acked = await writer.metric("campaign_writer_source_acked_total", labels)
                return acked >= 200

            await wait_for(mid_stream, timeout=60)
            if soak:
                # The test's own publisher steps aside so only the writer meets the restart.
                publisher = publishers[name]
                await publisher.close(delete=False)
                down = await restart(name)
                publishers[name] = await publisher.reopen()
                figures.faults[f"{name} restart"] += 1
                print(f"{name} restarted, down {down:.1f} s")
            else:
                assert proxies[name].cut() >= 1, name
                proxies[name].refuse(1.0)
                figures.faults[f"{name} connection cut"] += 1
            writer.check_alive()
        for name, publisher in publishers.items():
            ids, bodies = _bodies(f"{name}-", half, half)
            await publisher.publish(bodies)
            acknowledged.update(ids)

        async def all_in_campaign() -> bool:
            writer.check_alive()
            stored = {row["id"] for row in await simulator.records(SAMPLE, page=100_000)}
            return acknowledged <= stored

        await wait_for(all_in_campaign, timeout=300 if soak else 90, interval=0.5)
        if soak:
            assert all(port_open(port) for port in ports.values())  # left running
        for source in SOURCES.values():
            reconnects = await writer.metric(
                "campaign_writer_source_reconnects_total", f'source="{source}"'
            )
            assert reconnects >= 1, source
        rows = await simulator.records(SAMPLE, page=100_000)
        assert await writer.stop() == 0
    finally:
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)
        for publisher in publishers.values():
            await publisher.close()
        for proxy in proxies.values():
            await proxy.close()
    stored = {row["id"]: row for row in rows}
    missing = acknowledged - set(stored)
    figures.acknowledged += len(acknowledged)
    figures.lost += len(missing)
    assert not missing, f"{len(missing)} broker-acknowledged events lost: {sorted(missing)[:5]}"
    for key in acknowledged:
        assert stored[key]["testcol2"] == key
