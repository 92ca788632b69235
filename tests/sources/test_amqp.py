"""The lean AMQP consumer (sources/amqp.py): its wire handling against the real RabbitMQ on
127.0.0.1:5672, and its encoders and frame parser on their own."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from campaign_writer.sources.amqp import (
    AmqpConsumer,
    AmqpError,
    Endpoint,
    decode_table,
    encode_table,
)
from tests.sources.conftest import eventually
from tests.sources.proxy import TcpProxy


class Received:
    """What a consumer was handed, and why it ended, if it did."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes, dict[str, Any] | None]] = []
        self.lost: list[str] = []

    def deliver(self, tag: int, body: bytes, headers: dict[str, Any] | None) -> None:
        self.messages.append((tag, body, headers))

    async def open(
        self,
        queue: str,
        port: int = 5672,
        query: str = "",
        prefetch: int = 100,
        declare: dict[str, Any] | None = None,
    ) -> AmqpConsumer:
        endpoint = Endpoint.from_url(f"amqp://guest:guest@127.0.0.1:{port}/{query}")
        return await AmqpConsumer.open(
            endpoint,
            queue=queue,
            prefetch=prefetch,
            name=f"test:{queue}",
            on_delivery=self.deliver,
            on_lost=self.lost.append,
            declare=declare,
        )


@pytest.fixture
async def channel(rabbitmq_port: int, unique: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A publishing channel and a durable queue named ``unique``, deleted at teardown."""
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{rabbitmq_port}/")
    channel = await connection.channel()
    await channel.declare_queue(unique, durable=True)
    yield channel
    await channel.queue_delete(unique)
    await connection.close()


async def publish(channel: aio_pika.abc.AbstractChannel, queue: str, *messages: Any) -> None:
    for message in messages:
        await channel.default_exchange.publish(message, routing_key=queue)


@pytest.mark.services
async def test_headers_of_every_field_type_are_decoded(channel, unique: str) -> None:
    """Headers as aio-pika encodes them come back with their values. (pamqp sends no byte
    arrays; the table round trip below covers them.)"""
    headers = {
        "text": "héllo",
        "int": 7,
        "big": 2**40,
        "negative": -70_000,
        "float": 1.5,
        "yes": True,
        "no": False,
        "decimal": Decimal("12.34"),
        "when": datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC),
        "none": None,
        "list": [1, "two", [3]],
        "table": {"inner": "x", "n": 2},
    }
    await publish(channel, unique, aio_pika.Message(b"{}", headers=headers))
    received = Received()
    consumer = await received.open(unique)
    try:
        await eventually(lambda: received.messages, what="the delivery")
    finally:
        await consumer.close()
    got = received.messages[0][2]
    assert got is not None
    assert got["text"] == "héllo".encode()
    assert (got["int"], got["big"], got["negative"]) == (7, 2**40, -70_000)
    assert got["float"] == 1.5
    assert (got["yes"], got["no"]) == (True, False)
    assert got["decimal"] == Decimal("12.34")
    assert got["when"] == int(headers["when"].timestamp())  # type: ignore[attr-defined]
    assert got["none"] is None
    assert got["list"] == [1, b"two", [3]]
    assert got["table"] == {"inner": b"x", "n": 2}


@pytest.mark.services
async def test_bodies_of_many_frames_and_empty_bodies_arrive_whole(channel, unique: str) -> None:
    """A body over frame_max (131,072 bytes) comes in several body frames; none are lost or
    reordered, and an empty body is delivered too."""
    big = bytes(range(256)) * 1_600  # 409,600 bytes: four frames
    bodies = [b"first", big, b"", b"last"]
    await publish(channel, unique, *(aio_pika.Message(body) for body in bodies))
    received = Received()
    consumer = await received.open(unique)
    try:
        await eventually(lambda: len(received.messages) == 4, what="four deliveries")
        assert [body for _, body, _ in received.messages] == bodies
        tags = [tag for tag, _, _ in received.messages]
        assert tags == sorted(tags) and len(set(tags)) == 4
        consumer.ack(tags[-1], multiple=True)
    finally:
        await consumer.close()
    assert received.lost == []  # our own close is not reported as a loss


@pytest.mark.services
async def test_unacked_messages_return_to_the_queue_and_acked_ones_do_not(
    channel, unique: str
) -> None:
    """Acking tag 3 with multiple settles 1-3; 4 and 5 come again to the next consumer."""
    await publish(channel, unique, *(aio_pika.Message(b"%d" % i) for i in range(5)))
    first = Received()
    consumer = await first.open(unique)
    await eventually(lambda: len(first.messages) == 5, what="five deliveries")
    consumer.ack(first.messages[2][0], multiple=True)
    await consumer.close()
    second = Received()
    consumer = await second.open(unique)
    try:
        await eventually(lambda: len(second.messages) == 2, what="the two unacked again")
        await asyncio.sleep(0.2)
        assert [body for _, body, _ in second.messages] == [b"3", b"4"]
    finally:
        await consumer.close()


@pytest.mark.services
async def test_prefetch_bounds_what_the_broker_sends_before_an_ack(channel, unique: str) -> None:
    await publish(channel, unique, *(aio_pika.Message(b"x") for _ in range(50)))
    received = Received()
    consumer = await received.open(unique, prefetch=10)
    try:
        await eventually(lambda: len(received.messages) == 10, what="one prefetch window")
        await asyncio.sleep(0.3)
        assert len(received.messages) == 10
        consumer.ack(received.messages[-1][0])
        await eventually(lambda: len(received.messages) == 20, what="the next window")
    finally:
        await consumer.close()


@pytest.mark.services
async def test_heartbeats_keep_an_idle_connection_open(channel, unique: str) -> None:
    """With a 1 s heartbeat RabbitMQ closes a client that stays silent for about 2 s; ours
    sends heartbeats, so after 3.5 s idle it still receives."""
    received = Received()
    consumer = await received.open(unique, query="?heartbeat=1")
    try:
        assert consumer.heartbeat_s == 1
        await asyncio.sleep(3.5)
        await publish(channel, unique, aio_pika.Message(b"after the wait"))
        await eventually(lambda: received.messages, what="the delivery after idling")
        assert received.lost == [] and consumer.lost is None
    finally:
        await consumer.close()


@pytest.mark.services
async def test_a_silent_broker_is_noticed_by_the_heartbeat(
    channel, unique: str, proxy_factory: Any
) -> None:
    """Frames stop arriving but the socket stays open (a partition): lost within about two
    heartbeat intervals, with the reason."""
    proxy: TcpProxy = await proxy_factory(5672)
    received = Received()
    consumer = await received.open(unique, port=proxy.port, query="?heartbeat=1")
    proxy.freeze()
    await eventually(lambda: received.lost, timeout=10, what="the missed heartbeat")
    assert "heartbeat" in received.lost[0]
    with pytest.raises(AmqpError, match="heartbeat"):
        consumer.ack(1)
    await consumer.close()


@pytest.mark.services
async def test_a_deleted_queue_cancels_the_consumer(channel, unique: str) -> None:
    received = Received()
    consumer = await received.open(unique)
    await channel.queue_delete(unique)
    await eventually(lambda: received.lost, what="the cancel")
    assert "cancelled" in received.lost[0]
    await consumer.close()
    await channel.declare_queue(unique, durable=True)  # for the fixture's teardown


@pytest.mark.services
async def test_refusals_are_clear_errors(channel, rabbitmq_port: int, unique: str) -> None:
    """A wrong password, a missing queue, a queue declared with other arguments and a
    missing vhost each fail the open, naming the broker's reason; nothing hangs."""
    received = Received()
    wrong = Endpoint.from_url(f"amqp://guest:nope@127.0.0.1:{rabbitmq_port}/")
    with pytest.raises(AmqpError, match="ACCESS_REFUSED"):
        await AmqpConsumer.open(
            wrong,
            queue=unique,
            prefetch=1,
            name="t",
            on_delivery=received.deliver,
            on_lost=received.lost.append,
        )
    with pytest.raises(AmqpError, match="NOT_FOUND"):
        await received.open(f"{unique}-absent", port=rabbitmq_port)
    with pytest.raises(AmqpError, match=r"PRECONDITION_FAILED.*x-queue-type"):
        await received.open(unique, port=rabbitmq_port, declare={"x-queue-type": "quorum"})
    with pytest.raises(AmqpError, match=r"NOT_ALLOWED.*vhost"):
        await received.open(unique, port=rabbitmq_port, query=f"{unique}-vhost")
    with pytest.raises(AmqpError, match="cannot connect"):
        await received.open(unique, port=1)


@pytest.mark.services
def test_the_consumer_runs_under_uvloop(rabbitmq_port: int, unique: str) -> None:
    """The daemon runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> list[bytes]:
        url = f"amqp://guest:guest@127.0.0.1:{rabbitmq_port}/"
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.declare_queue(unique, durable=True)
        await publish(channel, unique, *(aio_pika.Message(b"%d" % i) for i in range(100)))
        received = Received()
        consumer = await received.open(unique, port=rabbitmq_port)
        try:
            await eventually(lambda: len(received.messages) == 100, what="100 deliveries")
            consumer.ack(received.messages[-1][0])
        finally:
            await consumer.close()
            await channel.queue_delete(unique)
            await connection.close()
        return [body for _, body, _ in received.messages]

    assert uvloop.run(scenario()) == [b"%d" % i for i in range(100)]


# --- without a broker -------------------------------------------------------------------

_VALUES = st.recursive(
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=10), _VALUES, max_size=6))
def test_tables_round_trip(table: dict[str, Any]) -> None:
    """What encode_table writes, decode_table reads back (text comes back as UTF-8 bytes,
    as a broker's long strings do)."""

    def as_read(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return {key: as_read(inner) for key, inner in value.items()}
        return value

    assert decode_table(encode_table(table)) == as_read(table)


def test_malformed_tables_and_unsendable_values_are_errors() -> None:
    with pytest.raises(AmqpError, match="runs past"):
        decode_table(b"\x00\x00\x00\x14\x01kt\x01")  # says 20 bytes, holds 4
    with pytest.raises(AmqpError, match="unknown field type"):
        decode_table(b"\x00\x00\x00\x03\x01kZ")
    with pytest.raises(AmqpError, match="cannot encode"):
        encode_table({"f": 1.5})


def test_a_stream_out_of_step_ends_the_connection_with_a_reason() -> None:
    """A frame whose end marker is wrong: lost, with the reason, and nothing delivered."""
    received = Received()
    consumer = AmqpConsumer(received.deliver, received.lost.append)
    consumer.data_received(b"\x03\x00\x01\x00\x00\x00\x02ab\x00")
    assert received.lost and "end marker" in received.lost[0]
    assert consumer.lost == received.lost[0]
    assert received.messages == []


def test_a_frame_over_frame_max_is_refused_before_it_is_buffered() -> None:
    """A length field of 1 GiB ends the connection at once instead of waiting for it."""
    received = Received()
    consumer = AmqpConsumer(received.deliver, received.lost.append)
    consumer.data_received(b"\x03\x00\x01" + (1 << 30).to_bytes(4, "big") + b"x" * 100)
    assert received.lost and "over frame_max" in received.lost[0]


def test_a_body_without_its_delivery_is_a_protocol_error() -> None:
    received = Received()
    consumer = AmqpConsumer(received.deliver, received.lost.append)
    consumer.data_received(b"\x03\x00\x01\x00\x00\x00\x02ab\xce")
    assert received.lost and "body frame without a delivery" in received.lost[0]


def test_frames_split_anywhere_are_reassembled() -> None:
    """A delivery (method, header, body) fed one byte at a time is delivered once, whole."""
    received = Received()
    consumer = AmqpConsumer(received.deliver, received.lost.append)
    deliver = (
        b"\x00\x3c\x00\x3c"  # basic.deliver
        + b"\x03ctg"  # consumer tag
        + (42).to_bytes(8, "big")  # delivery tag
        + b"\x00"  # redelivered
        + b"\x00"  # exchange ""
        + b"\x01q"  # routing key
    )
    headers = encode_table({"h": "v"})
    header = b"\x00\x3c\x00\x00" + (5).to_bytes(8, "big") + (1 << 13).to_bytes(2, "big") + headers
    stream = b""
    for kind, payload in ((1, deliver), (2, header), (3, b"he"), (3, b"llo")):
        stream += bytes([kind]) + b"\x00\x01" + len(payload).to_bytes(4, "big") + payload + b"\xce"
    for i in range(len(stream)):
        consumer.data_received(stream[i : i + 1])
    assert received.lost == []
    assert received.messages == [(42, b"hello", {"h": b"v"})]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", ("127.0.0.1", 5672, "guest", "/", False)),
        ("amqp://u:p%40ss@host/", ("host", 5672, "u", "/", False)),
        ("amqps://u:p@host/%2Fprod", ("host", 5671, "u", "/prod", True)),
        ("amqp://host/staging?heartbeat=5&name=n", ("host", 5672, "guest", "staging", False)),
    ],
)
def test_endpoints_are_read_from_urls(url: str, expected: tuple[Any, ...]) -> None:
    endpoint = Endpoint.from_url(url)
    assert (
        endpoint.host,
        endpoint.port,
        endpoint.login,
        endpoint.vhost,
        endpoint.tls,
    ) == expected


def test_endpoint_details_and_bad_urls() -> None:
    endpoint = Endpoint.from_url("amqp://u:p%40ss@host/?heartbeat=5&name=n")
    assert (endpoint.password, endpoint.heartbeat_s, endpoint.name) == ("p@ss", 5, "n")
    assert "p@ss" not in repr(endpoint) and "p@ss" not in str(endpoint)
    with pytest.raises(AmqpError, match="scheme"):
        Endpoint.from_url("http://host/")
    with pytest.raises(AmqpError, match="heartbeat"):
        Endpoint.from_url("amqp://host/?heartbeat=99999")
    with pytest.raises(AmqpError, match="bad AMQP URL"):
        Endpoint.from_url("amqp://host:port/")
