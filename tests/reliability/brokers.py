"""Publishers for the real brokers on 127.0.0.1, and restarts with the documented commands.

A publisher counts a message as acknowledged by the broker only once the broker has
confirmed it (RabbitMQ publisher confirms, Redis XADD's reply, the JetStream PubAck),
so "every acknowledged event reached Campaign" is checked against exactly those.

:func:`restart` stops a broker and starts it again with the command DEVELOPERS.md and
``.ci/run`` give, then waits until it accepts connections. It always leaves the broker
running. Only the soak form restarts brokers: other runs share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import aio_pika
import nats
import redis.asyncio as aioredis
from nats.js.api import StorageType

from tests.support.services import port_open

__all__ = [
    "NatsPublisher",
    "RabbitPublisher",
    "RedisPublisher",
    "restart",
    "wait_port",
]

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]
RABBITMQ_START = ["rabbitmq-server", "-detached"]
NATS_START = [
    "start-stop-daemon",
    "--start",
    "--oknodo",
    "--background",
    "--exec",
    "/usr/sbin/nats-server",
    "--",
    "-a",
    "127.0.0.1",
    "-p",
    "4222",
    "-js",
    "-sd",
    "/var/lib/nats-server",
    "-l",
    "/var/log/nats-server.log",
]
REDIS_DUMP = Path("/var/lib/redis/dump.rdb")
PORTS = {"redis": 6379, "rabbitmq": 5672, "nats": 4222}
START_WAIT_S = {"redis": 30, "rabbitmq": 90, "nats": 30}


async def wait_port(port: int, timeout: float, *, is_open: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port, timeout=0.5) != is_open:
        if time.monotonic() > deadline:
            state = "open" if is_open else "close"
            raise AssertionError(f"127.0.0.1:{port} did not {state} within {timeout} s")
        await asyncio.sleep(0.1)


def _listener_pid(port: int) -> int:
    """The pid of the process listening on 127.0.0.1:``port`` (read from ``ss``)."""
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    raise AssertionError(f"nothing listens on :{port}")


def _wait_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _redis_folders() -> None:
    for folder in ("/var/lib/redis", "/var/log/redis"):
        Path(folder).mkdir(parents=True, exist_ok=True)


async def _run(command: Sequence[str]) -> None:
    result = await asyncio.to_thread(
        subprocess.run, list(command), capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{command[0]} failed: {result.stderr.strip() or result.stdout}")


async def restart(name: str) -> float:
    """Stop broker ``name`` and start it again as the CI does; returns the seconds it was down.

    Redis is stopped with ``SHUTDOWN SAVE`` so the stream it holds survives the
    restart (the CI command disables periodic snapshots, not loading one); RabbitMQ
    with ``rabbitmqctl stop``; NATS with SIGTERM to the pid listening on its port,
    which flushes JetStream's file store.
    """
    port = PORTS[name]
    had_dump = await asyncio.to_thread(REDIS_DUMP.exists)
    stopped = time.monotonic()
    try:
        if name == "redis":
            client = aioredis.Redis(port=port)
            with contextlib.suppress(aioredis.ConnectionError):
                await client.shutdown(save=True)
            with contextlib.suppress(Exception):
                await client.aclose()
        elif name == "rabbitmq":
            await _run(["rabbitmqctl", "stop"])
        else:
            pid = _listener_pid(port)
            os.kill(pid, signal.SIGTERM)
            await asyncio.to_thread(_wait_exit, pid, 30.0)
        await wait_port(port, 60, is_open=False)
    finally:
        # Whatever happened above, the broker must be running again afterwards.
        if not port_open(port):
            command = {"redis": REDIS_START, "rabbitmq": RABBITMQ_START, "nats": NATS_START}[name]
            if name == "redis":
                await asyncio.to_thread(_redis_folders)
            await _run(command)
        await wait_port(port, START_WAIT_S[name])
        if name == "redis" and not had_dump:
            # Loaded by now; without the file the next start is as empty as the CI's.
            await asyncio.to_thread(REDIS_DUMP.unlink, missing_ok=True)
    return time.monotonic() - stopped


class RabbitPublisher:
    """Persistent messages to a durable queue, each one confirmed by the broker."""

    def __init__(self, port: int, queue: str) -> None:
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.queue = queue
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> RabbitPublisher:
        self.connection = await aio_pika.connect_robust(self.url, reconnect_interval=0.5)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.declare_queue(self.queue, durable=True)
        return self

    async def publish(self, bodies: Sequence[bytes]) -> None:
        """Return once every body is confirmed; raise if any is not."""
        assert self.channel is not None
        exchange = self.channel.default_exchange
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.queue,
                    timeout=10,
                )
                for body in bodies
            )
        )

    async def ready_count(self) -> int:
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(self.queue, passive=True)
            return declared.declaration_result.message_count or 0
        finally:
            await channel.close()

    async def reopen(self) -> RabbitPublisher:
        return await RabbitPublisher(int(self.url.rsplit(":", 1)[1].strip("/")), self.queue).open()

    async def close(self, delete: bool = True) -> None:
        if self.connection is None:
            return
        with contextlib.suppress(Exception):
            if delete:
                channel = await self.connection.channel()
                await channel.queue_delete(self.queue)
        with contextlib.suppress(Exception):
            await self.connection.close()


class RedisPublisher:
    """XADD to a stream: the reply is Redis's acknowledgement."""

    def __init__(self, port: int, stream: str, field: str = "event") -> None:
        self.client = aioredis.Redis(port=port, socket_timeout=5, socket_connect_timeout=2)
        self.stream = stream
        self.field = field

    async def open(self) -> RedisPublisher:
        return self

    async def publish(self, bodies: Sequence[bytes]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for body in bodies:
                pipe.xadd(self.stream, {self.field: body})
            await pipe.execute()

    async def reopen(self) -> RedisPublisher:
        port = self.client.connection_pool.connection_kwargs["port"]
        return await RedisPublisher(port, self.stream, self.field).open()

    async def close(self, delete: bool = True) -> None:
        with contextlib.suppress(Exception):
            if delete:
                await self.client.delete(self.stream)
        with contextlib.suppress(Exception):
            await self.client.aclose()


class NatsPublisher:
    """JetStream publishes on a file-backed stream; each PubAck is the acknowledgement."""

    def __init__(self, port: int, stream: str) -> None:
        self.url = f"nats://127.0.0.1:{port}"
        self.stream = stream
        self.subject = f"{stream}.events"
        self.client: nats.NATS | None = None

    async def open(self) -> NatsPublisher:
        self.client = await nats.connect(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        await self.client.jetstream().add_stream(
            name=self.stream, subjects=[self.subject], storage=StorageType.FILE
        )
        return self

    async def publish(self, bodies: Sequence[bytes]) -> None:
        assert self.client is not None
        js = self.client.jetstream(timeout=10)
        await asyncio.gather(*(js.publish(self.subject, body) for body in bodies))

    async def reopen(self) -> NatsPublisher:
        return await NatsPublisher(int(self.url.rsplit(":", 1)[1]), self.stream).open()

    async def close(self, delete: bool = True) -> None:
        if self.client is None:
            return
        with contextlib.suppress(Exception):
            if delete:
                await self.client.jetstream().delete_stream(self.stream)
        with contextlib.suppress(Exception):
            await self.client.close()
