"""A lean AMQP 0-9-1 consuming connection: the RabbitMQ source's delivery path.

Why not aiormq for this part: it decodes every frame into pamqp's general objects,
passes each frame through an ``asyncio.Queue`` to a channel task and starts a task per
delivery. Measured with ``bench/intake_brokers.py``, that was about 40 µs of CPU per
message, which held one source near 16,000 messages/s (the target is 20,000 events/s).
Consuming needs a small part of the protocol, and this module does only that part,
reading frames straight out of the receive buffer:

* the handshake: PLAIN login, virtual host, negotiated ``frame_max`` and heartbeat;
* one channel with ``queue.declare`` (or a passive check), ``basic.qos`` (the
  prefetch), one ``basic.consume`` with manual acks, and ``basic.ack`` (``multiple``)
  to settle;
* heartbeats both ways: a peer silent for two intervals counts as lost;
* the server's ``connection.close``, ``channel.close`` and ``basic.cancel`` (sent when
  the queue is deleted, because we announce ``consumer_cancel_notify``) end the
  connection with the server's reason in :attr:`AmqpConsumer.lost`.

It also declares the queue (durable, with the given arguments) or checks that it
exists (a passive declare) before consuming. It never publishes. Any frame it does
not expect ends the connection with an error rather than being guessed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

from .. import __version__

__all__ = ["AmqpConsumer", "AmqpError", "Endpoint", "decode_table", "encode_table"]

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
CHANNEL: Final = 1  # the one channel we open
DEFAULT_HEARTBEAT_S: Final = 60
CLIENT_FRAME_MAX: Final = 131_072

# (class, method) ids of the methods we send or handle.
CONNECTION_START: Final = (10, 10)
CONNECTION_START_OK: Final = (10, 11)
CONNECTION_TUNE: Final = (10, 30)
CONNECTION_TUNE_OK: Final = (10, 31)
CONNECTION_OPEN: Final = (10, 40)
CONNECTION_OPEN_OK: Final = (10, 41)
CONNECTION_CLOSE: Final = (10, 50)
CONNECTION_CLOSE_OK: Final = (10, 51)
CONNECTION_BLOCKED: Final = (10, 60)
CONNECTION_UNBLOCKED: Final = (10, 61)
CHANNEL_OPEN: Final = (20, 10)
CHANNEL_OPEN_OK: Final = (20, 11)
CHANNEL_FLOW: Final = (20, 20)
CHANNEL_FLOW_OK: Final = (20, 21)
CHANNEL_CLOSE: Final = (20, 40)
CHANNEL_CLOSE_OK: Final = (20, 41)
QUEUE_DECLARE: Final = (50, 10)
QUEUE_DECLARE_OK: Final = (50, 11)
BASIC_QOS: Final = (60, 10)
BASIC_QOS_OK: Final = (60, 11)
BASIC_CONSUME: Final = (60, 20)
BASIC_CONSUME_OK: Final = (60, 21)
BASIC_CANCEL: Final = (60, 30)
BASIC_CANCEL_OK: Final = (60, 31)
BASIC_DELIVER: Final = (60, 60)
BASIC_ACK: Final = (60, 80)

_FRAME_HEAD = struct.Struct(">BHI")
_IDS = struct.Struct(">HH")
_CONTENT_HEAD = struct.Struct(">HHQH")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEARTBEAT_FRAME: Final = _FRAME_HEAD.pack(FRAME_HEARTBEAT, 0, 0) + bytes([FRAME_END])
_PROPERTY_HEADERS: Final = 1 << 13  # bit 13 of the basic class's property flags
_SHORTSTR_PROPERTIES_BEFORE_HEADERS: Final = (1 << 15, 1 << 14)  # content type, encoding


class AmqpError(Exception):
    """The connection could not be opened, or the broker ended it; the text says why."""


# --- the URL --------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, read from an ``amqp://`` or ``amqps://`` URL."""

    host: str
    port: int
    login: str
    password: str = field(repr=False)  # never in a log line or an error
    vhost: str
    tls: bool
    heartbeat_s: int
    name: str | None
    cafile: str | None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise AmqpError(f"not an AMQP URL (scheme {parts.scheme!r}; amqp or amqps)")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        try:
            heartbeat = int(query.get("heartbeat", DEFAULT_HEARTBEAT_S))
            port = parts.port
        except ValueError as exc:
            raise AmqpError(f"bad AMQP URL: {exc}") from None
        if not 0 <= heartbeat <= 65_535:
            raise AmqpError("heartbeat must be between 0 and 65535 seconds")
        tls = parts.scheme == "amqps"
        return cls(
            host=parts.hostname or "localhost",
            port=port or (5671 if tls else 5672),
            login=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(parts.path[1:]) or "/",
            tls=tls,
            heartbeat_s=heartbeat,
            name=query.get("name"),
            cafile=query.get("cafile"),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.cafile)


# --- encoding ---------------------------------------------------------------------------


def _shortstr(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 255:
        raise AmqpError(f"short string over 255 bytes: {text[:40]!r}...")
    return _U8.pack(len(data)) + data


def _longstr(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def encode_table(table: dict[str, Any]) -> bytes:
    """A field table of the value types we send: bool, int, str, bytes and tables."""
    out = bytearray()
    for key, value in table.items():
        out += _shortstr(key)
        if isinstance(value, bool):
            out += b"t" + _U8.pack(int(value))
        elif isinstance(value, int):
            out += b"l" + struct.pack(">q", value)
        elif isinstance(value, str):
            out += b"S" + _longstr(value.encode("utf-8"))
        elif isinstance(value, bytes):
            out += b"x" + _longstr(value)
        elif isinstance(value, dict):
            out += b"F" + encode_table(value)
        else:
            raise AmqpError(f"cannot encode field {key!r} of type {type(value).__name__}")
    return _longstr(bytes(out))


def _method(channel: int, ids: tuple[int, int], arguments: bytes = b"") -> bytes:
    payload = _IDS.pack(*ids) + arguments
    return _FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + bytes([FRAME_END])


def _close_arguments(code: int, text: str) -> bytes:
    return _U16.pack(code) + _shortstr(text) + _IDS.pack(0, 0)


# --- decoding ---------------------------------------------------------------------------

# Fixed-size field values: type letter -> its struct. RabbitMQ's letters, which
# differ from the 0-9-1 specification's for the signed 16- and 64-bit integers.
_FIXED: Final[dict[int, struct.Struct]] = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"),
    ord("L"): struct.Struct(">Q"),
    ord("f"): struct.Struct(">f"),
    ord("d"): struct.Struct(">d"),
    ord("T"): struct.Struct(">Q"),
}


def _read_shortstr(data: bytes | bytearray, at: int) -> tuple[str, int]:
    size = data[at]
    end = at + 1 + size
    if end > len(data):
        raise AmqpError("short string runs past the end of its frame")
    return bytes(data[at + 1 : end]).decode("utf-8", "replace"), end


def _read_longstr(data: bytes | bytearray, at: int) -> tuple[bytes, int]:
    (size,) = _U32.unpack_from(data, at)
    end = at + 4 + size
    if end > len(data):
        raise AmqpError("long string runs past the end of its frame")
    return bytes(data[at + 4 : end]), end


def _read_value(data: bytes | bytearray, at: int) -> tuple[Any, int]:
    kind = data[at]
    at += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed.unpack_from(data, at)[0], at + fixed.size
    if kind == ord("S") or kind == ord("x"):
        return _read_longstr(data, at)
    if kind == ord("t"):
        return bool(data[at]), at + 1
    if kind == ord("F"):
        return _read_table(data, at)
    if kind == ord("A"):
        (size,) = _U32.unpack_from(data, at)
        at += 4
        end = at + size
        items = []
        while at < end:
            item, at = _read_value(data, at)
            items.append(item)
        return items, end
    if kind == ord("D"):
        scale = data[at]
        (digits,) = struct.unpack_from(">i", data, at + 1)
        return Decimal(digits).scaleb(-scale), at + 5
    if kind == ord("V"):
        return None, at
    raise AmqpError(f"unknown field type {chr(kind)!r} in a field table")


def _read_table(data: bytes | bytearray, at: int) -> tuple[dict[str, Any], int]:
    (size,) = _U32.unpack_from(data, at)
    at += 4
    end = at + size
    if end > len(data):
        raise AmqpError("field table runs past the end of its frame")
    table: dict[str, Any] = {}
    while at < end:
        key, at = _read_shortstr(data, at)
        table[key], at = _read_value(data, at)
    return table, end


def decode_table(data: bytes) -> dict[str, Any]:
    """A whole encoded field table (its length prefix included)."""
    try:
        return _read_table(data, 0)[0]
    except (IndexError, struct.error) as exc:
        raise AmqpError(f"malformed field table: {exc}") from None


# --- the connection ---------------------------------------------------------------------

OnDelivery = Callable[[int, bytes, "dict[str, Any] | None"], None]


class AmqpConsumer(asyncio.Protocol):
    """One connection, one channel, one consumer. Open it with :meth:`open`.

    ``on_delivery(tag, body, headers)`` is called, from the event loop, for each message
    in the order the broker sent them. ``on_lost(reason)`` is called once when the
    connection ends for any reason but our own :meth:`close`.
    """

    def __init__(self, on_delivery: OnDelivery, on_lost: Callable[[str], None]) -> None:
        self._on_delivery = on_delivery
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: asyncio.Queue[tuple[tuple[int, int], bytes] | str] = asyncio.Queue()
        self.lost: str | None = None
        self._closing = False
        self.consumer_tag = ""
        self.frame_max = CLIENT_FRAME_MAX
        self.heartbeat_s = 0
        self._last_received = time.monotonic()
        self._heartbeat: asyncio.TimerHandle | None = None
        # The delivery being assembled: tag, headers, body size, body parts.
        self._tag = 0
        self._headers: dict[str, Any] | None = None
        self._expect_header = False
        self._remaining = 0
        self._parts: list[bytes] = []

    # --- opening ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        *,
        queue: str,
        prefetch: int,
        name: str,
        on_delivery: OnDelivery,
        on_lost: Callable[[str], None],
        declare: dict[str, Any] | None = None,
        timeout_s: float = 10.0,
    ) -> AmqpConsumer:
        """Connect, log in, open the channel, check the queue (or, given ``declare``, its
        arguments, declare it durable), set the prefetch and start consuming."""
        consumer = cls(on_delivery, on_lost)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(
                    lambda: consumer,
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.ssl_context(),
                )
                await consumer._handshake(endpoint, name)
                await consumer._start(queue, prefetch, declare)
        except TimeoutError:
            consumer.abort()
            raise AmqpError(f"no answer from the broker within {timeout_s:g} s") from None
        except OSError as exc:
            consumer.abort()
            raise AmqpError(f"cannot connect: {exc.strerror or exc!r}") from None
        except BaseException:
            consumer.abort()
            raise
        return consumer

    async def _handshake(self, endpoint: Endpoint, name: str) -> None:
        assert self._transport is not None
        self._transport.write(PROTOCOL_HEADER)
        start = await self._expect(CONNECTION_START)
        mechanisms, _ = _read_longstr(start, _skip_start_head(start))
        if b"PLAIN" not in mechanisms.split():
            raise AmqpError(f"the broker offers no PLAIN login ({mechanisms.decode()!r})")
        properties = {
            "product": "campaign-writer",
            "version": __version__,
            "connection_name": endpoint.name or name,
            "capabilities": {
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "authentication_failure_close": True,
            },
        }
        login = b"\x00" + endpoint.login.encode() + b"\x00" + endpoint.password.encode()
        self._send(
            0,
            CONNECTION_START_OK,
            encode_table(properties) + _shortstr("PLAIN") + _longstr(login) + _shortstr("en_US"),
        )
        tune = await self._expect(CONNECTION_TUNE)
        channel_max, frame_max, heartbeat = struct.unpack_from(">HIH", tune)
        self.frame_max = min(frame_max or CLIENT_FRAME_MAX, CLIENT_FRAME_MAX)
        if heartbeat and endpoint.heartbeat_s:
            self.heartbeat_s = min(heartbeat, endpoint.heartbeat_s)
        else:
            self.heartbeat_s = heartbeat or endpoint.heartbeat_s
        tune_ok = struct.pack(">HIH", channel_max, self.frame_max, self.heartbeat_s)
        self._send(0, CONNECTION_TUNE_OK, tune_ok)
        self._send(0, CONNECTION_OPEN, _shortstr(endpoint.vhost) + _shortstr("") + b"\x00")
        await self._expect(CONNECTION_OPEN_OK)
        if self.heartbeat_s:
            self._schedule_heartbeat()

    async def _start(self, queue: str, prefetch: int, declare: dict[str, Any] | None) -> None:
        self._send(CHANNEL, CHANNEL_OPEN, _shortstr(""))
        await self._expect(CHANNEL_OPEN_OK)
        # reserved, queue, flags (bit 0 passive: only check it exists; bit 1 durable),
        # arguments. A missing queue, or one declared with other arguments, makes the
        # broker close the channel with its reason (404, 406).
        if declare is None:
            flags, arguments = b"\x01", encode_table({})
        else:
            flags, arguments = b"\x02", encode_table(declare)
        self._send(CHANNEL, QUEUE_DECLARE, _U16.pack(0) + _shortstr(queue) + flags + arguments)
        await self._expect(QUEUE_DECLARE_OK)
        self._send(CHANNEL, BASIC_QOS, struct.pack(">IH", 0, prefetch) + b"\x00")
        await self._expect(BASIC_QOS_OK)
        # reserved, queue, consumer tag (the server picks), no-local/no-ack/exclusive/
        # no-wait all off, no arguments.
        arguments = _U16.pack(0) + _shortstr(queue) + _shortstr("") + b"\x00" + _U32.pack(0)
        self._send(CHANNEL, BASIC_CONSUME, arguments)
        consume_ok = await self._expect(BASIC_CONSUME_OK)
        self.consumer_tag, _ = _read_shortstr(consume_ok, 0)

    async def _expect(self, ids: tuple[int, int]) -> bytes:
        """The next synchronous reply, which must be ``ids``; its arguments."""
        reply = await self._replies.get()
        if isinstance(reply, str):
            raise AmqpError(reply)
        got, arguments = reply
        if got != ids:
            raise AmqpError(f"the broker answered method {got} where {ids} was due")
        return arguments

    # --- using it -----------------------------------------------------------------------

    def ack(self, tag: int, *, multiple: bool = True) -> None:
        """Acknowledge ``tag`` (and, with ``multiple``, every earlier unacked tag)."""
        if self.lost is not None or self._transport is None or self._closing:
            raise AmqpError(f"cannot ack: {self.lost or 'the connection is closed'}")
        self._send(CHANNEL, BASIC_ACK, _U64.pack(tag) + (b"\x01" if multiple else b"\x00"))

    async def close(self, timeout_s: float = 2.0) -> None:
        """Close politely (unacked messages go back to the queue), then drop the socket."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.lost is None and not self._closing:
            self._closing = True
            self._send(0, CONNECTION_CLOSE, _close_arguments(200, "campaign-writer closing"))
            with contextlib.suppress(TimeoutError, AmqpError):
                async with asyncio.timeout(timeout_s):
                    await self._expect(CONNECTION_CLOSE_OK)
        transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _send(self, channel: int, ids: tuple[int, int], arguments: bytes = b"") -> None:
        assert self._transport is not None
        self._transport.write(_method(channel, ids, arguments))

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        reason = f"connection lost: {exc!r}" if exc is not None else "connection closed"
        self._end(reason)

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        buffer = self._buffer
        buffer += data
        at = 0
        size = len(buffer)
        try:
            while size - at >= 8 and self.lost is None:
                kind, channel, length = _FRAME_HEAD.unpack_from(buffer, at)
                if length > self.frame_max:
                    raise AmqpError(f"a frame of {length} bytes, over frame_max {self.frame_max}")
                end = at + 7 + length
                if end >= size:
                    break
                if buffer[end] != FRAME_END:
                    raise AmqpError("frame without its end marker: the stream is out of step")
                start = at + 7
                if kind == FRAME_BODY:
                    self._body(bytes(buffer[start:end]))
                elif kind == FRAME_METHOD:
                    self._method(channel, buffer, start, end)
                elif kind == FRAME_HEADER:
                    self._content_header(buffer, start)
                elif kind != FRAME_HEARTBEAT:
                    raise AmqpError(f"unknown frame type {kind}")
                at = end + 1
        except (AmqpError, IndexError, struct.error) as exc:
            self._fail(f"protocol error: {exc}")
            return
        finally:
            del buffer[:at]

    # --- frames -----------------------------------------------------------------------

    def _method(self, channel: int, buffer: bytearray, start: int, end: int) -> None:
        ids = _IDS.unpack_from(buffer, start)
        at = start + 4
        if ids == BASIC_DELIVER:
            if self._expect_header or self._remaining:
                raise AmqpError("a delivery began before the previous one was complete")
            # consumer tag, delivery tag, redelivered, exchange, routing key: only the
            # delivery tag matters here.
            at += 1 + buffer[at]
            (self._tag,) = _U64.unpack_from(buffer, at)
            self._expect_header = True
            return
        arguments = bytes(buffer[at:end])
        if ids in (CONNECTION_CLOSE, CHANNEL_CLOSE):
            code, text = _close_reason(arguments)
            if ids == CONNECTION_CLOSE:
                self._send(0, CONNECTION_CLOSE_OK)
                self._end(f"the broker closed the connection: {code} {text}")
            else:
                self._send(CHANNEL, CHANNEL_CLOSE_OK)
                self._end(f"the broker closed the channel: {code} {text}")
            if self._transport is not None:
                self._transport.close()
        elif ids == BASIC_CANCEL:
            tag, after = _read_shortstr(arguments, 0)
            if not arguments[after] & 1:  # no-wait unset: the server waits for our reply
                self._send(CHANNEL, BASIC_CANCEL_OK, _shortstr(tag))
            self._end("the broker cancelled the consumer (was the queue deleted?)")
            if self._transport is not None:
                self._transport.close()
        elif ids == CHANNEL_FLOW:
            self._send(CHANNEL, CHANNEL_FLOW_OK, arguments[:1])
        elif ids in (CONNECTION_BLOCKED, CONNECTION_UNBLOCKED):
            pass  # about publishing, which we never do
        else:
            self._replies.put_nowait((ids, arguments))

    def _content_header(self, buffer: bytearray, start: int) -> None:
        if not self._expect_header:
            raise AmqpError("content header without a delivery")
        self._expect_header = False
        _, _, body_size, flags = _CONTENT_HEAD.unpack_from(buffer, start)
        headers = None
        if flags & _PROPERTY_HEADERS:
            at = start + _CONTENT_HEAD.size
            more = flags
            while more & 1:  # continued flag words (none are defined for basic): skipped
                (more,) = _U16.unpack_from(buffer, at)
                at += 2
            for bit in _SHORTSTR_PROPERTIES_BEFORE_HEADERS:
                if flags & bit:
                    at += 1 + buffer[at]
            headers, _ = _read_table(buffer, at)
        self._headers = headers
        self._remaining = body_size
        self._parts = []
        if body_size == 0:
            self._deliver(b"")

    def _body(self, part: bytes) -> None:
        if self._remaining <= 0:
            raise AmqpError("body frame without a delivery")
        self._remaining -= len(part)
        if self._remaining < 0:
            raise AmqpError("body longer than its content header said")
        if self._remaining == 0:
            if self._parts:
                self._parts.append(part)
                part = b"".join(self._parts)
                self._parts = []
            self._deliver(part)
        else:
            self._parts.append(part)

    def _deliver(self, body: bytes) -> None:
        headers, self._headers = self._headers, None
        self._on_delivery(self._tag, body, headers)

    # --- heartbeats and endings -------------------------------------------------------

    def _schedule_heartbeat(self) -> None:
        interval = self.heartbeat_s / 2
        self._heartbeat = asyncio.get_running_loop().call_later(interval, self._beat)

    def _beat(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self.lost is not None:
            return
        silent = time.monotonic() - self._last_received
        if silent > 2 * self.heartbeat_s:
            self._fail(f"no frame from the broker for {silent:.0f} s (heartbeat missed)")
            return
        transport.write(_HEARTBEAT_FRAME)
        self._schedule_heartbeat()

    def _fail(self, reason: str) -> None:
        self._end(reason)
        if self._transport is not None:
            self._transport.abort()

    def _end(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self._replies.put_nowait(reason)  # wakes a handshake step waiting for a reply
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if not self._closing:
            self._on_lost(reason)


def _skip_start_head(start: bytes) -> int:
    """Offset of connection.start's mechanisms: after the version octets and the
    server's property table."""
    size: int = _U32.unpack_from(start, 2)[0]
    return 2 + 4 + size


def _close_reason(arguments: bytes) -> tuple[int, str]:
    (code,) = _U16.unpack_from(arguments, 0)
    text, _ = _read_shortstr(arguments, 2)
    return code, text
