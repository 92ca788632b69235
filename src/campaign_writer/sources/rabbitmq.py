"""RabbitMQ intake through aiormq: one queue, manual acks after the local commit.

* The connection is aiormq's (the AMQP 0-9-1 client under aio-pika; frames are pamqp's).
  We consume with aiormq directly, not through aio-pika: aio-pika builds an
  ``IncomingMessage`` (every property decoded into attributes) and runs a callback task
  per delivery on top of aiormq's own: 58 instead of 41 µs of CPU per message consuming
  alone, about 15,000 messages/s, which is the whole intake target before any routing
  or commit. Nor through aiormq's consumer callback, which it runs as a task per
  delivery (about 11 of those 41 µs): :class:`_DeliveringChannel` hands each delivery
  to us in the channel's reader task. So the source takes ~17,000 one-event messages/s
  into the local queue at ~38 µs of CPU each (``bench/intake_brokers.py``).
* The queue is either declared by us (``declare = true``: durable, ``queue_type``
  classic or quorum) or must exist already (checked with a passive declare).
* ``prefetch`` (default twice ``batch_size``) caps the unacked messages the broker
  sends us: while the local queue is full we stop acking, so the broker stops
  sending, and memory stays bounded.
* A batch is acked with one ``basic.ack(multiple=True)`` on its last delivery tag:
  one consumer on one channel receives tags in order, so "this tag and every one
  before it" is exactly the batch.
* A lost connection (or a closed channel), or the broker cancelling the consumer (its
  queue was deleted; aiormq drops the consumer from ``channel.consumers``), ends the
  consume loop with the reason; :class:`~.base.BrokerSource` reconnects with capped
  backoff, and RabbitMQ redelivers what was not acked.
* Deliveries with the ``redelivered`` flag (RabbitMQ sent them before, to us or another
  consumer, and they were not acked) are counted:
  ``campaign_writer_source_redeliveries_total{source}`` and ``redeliveries`` in stats.

The URL
-------

``amqp://user:password@host:port/vhost`` or ``amqps://...`` (TLS), with aiormq's query
parameters, which this module checks when the config is read (a problem names the
parameter, never the password):

* ``heartbeat`` (seconds, default 60; 0: none; a broker silent for (heartbeat + 1) x 3 s
  is lost, aiormq's grace), ``name`` (the connection's name in the
  management UI; default ``campaign-writer:<source name>``), ``timeout`` (seconds allowed
  to connect, log in and subscribe; default 10);
* TLS, ``amqps`` only: ``cafile``, ``capath`` or ``cadata`` (base64 of DER certificates) to trust a
  private CA instead of the system's; ``certfile`` and ``keyfile`` (PEM; the key
  unencrypted) for a client certificate; ``no_verify_ssl=1`` to skip checking the
  broker's certificate and host name (tests only);
* ``auth=external``: log in with the SASL EXTERNAL mechanism, the broker taking the user
  from the client certificate (RabbitMQ's ``rabbitmq_auth_mechanism_ssl`` plugin); needs
  ``amqps`` and ``certfile``; the URL's user and password are then not sent.
  ``auth=plain`` (user and password) is the default.

We build the TLS context ourselves from those parameters, with the same meaning aiormq
gives them, and hand it to aiormq (``context=``): a certificate or key that cannot be read
is then a config problem (or, if it changes later, a :class:`SourceError` naming the
file) rather than an exception in aiormq's executor, and ``no_verify_ssl`` accepts only 0
or 1 (aiormq reads anything but "0", "false" included, as "do not verify").

Messages whose properties cannot be decoded
-------------------------------------------

pamqp decodes a delivery's content header (its properties, the ``headers`` table among
them) inside aiormq's frame reader, before any callback of ours. A header pamqp cannot
decode (a table nested thousands deep is a RecursionError; a key that is not UTF-8, a
timestamp past year 9999) would raise there, end aiormq's reader and the connection,
and RabbitMQ would redeliver the message to the next connection: a reconnect loop that
never dead-letters it. So :func:`install_lenient_properties` (called once, before the
first connection) wraps pamqp's ``ContentHeader.unmarshal``, the documented method that
decodes one content header frame, and changes nothing else: when decoding the
properties fails, the header keeps its class, weight and body size (the fixed 12 bytes
before the properties, which must still decode) and gets :class:`UndecodableProperties`
(every property unset, plus the raw property bytes and the error) instead of raising.
aiormq then reads the body as usual and hands us the delivery; we dead-letter it with
its body, the reason and the raw property bytes (base64, in the dead letter's
``amqp_properties_base64`` header), and ack it like any poison message. We wrap that one
method rather than replace aiormq's frame reader or patch private functions: it is
pamqp's public API, its signature and results for decodable headers are untouched, and
aiormq pins pamqp's exact version (``pamqp==3.3.0`` for aiormq 6.9), which the tests
exercise. Any other aiormq/pamqp user in the process gets the same marker instead of a
dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ssl
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NoReturn

import aiormq
import aiormq.exceptions
import pamqp.exceptions
from aiormq.abc import DeliveredMessage
from aiormq.connection import TCPTransportFactory, TLSTransportFactory
from pamqp import commands as spec
from pamqp.common import FieldValue
from pamqp.header import ContentHeader
from yarl import URL

from ..errors import SourceError
from ..logs import Secret, get_logger
from ..settings import Section
from . import SourceKind
from .base import POLL_S, BrokerSource, CommonSettings, Message
from .base import headers_text as _headers_text
from .options import broker_url, safe_url

__all__ = [
    "KIND",
    "SOURCE",
    "Endpoint",
    "RabbitMQSettings",
    "RabbitMQSource",
    "UndecodableProperties",
    "install_lenient_properties",
    "parse_options",
    "read_settings",
]

KIND = "rabbitmq"
log = get_logger("sources.rabbitmq")

# The query parameters aiormq reads (aiormq/connection.py), all of which we check.
URL_PARAMETERS: Final = (
    "auth",
    "cafile",
    "capath",
    "cadata",
    "certfile",
    "keyfile",
    "no_verify_ssl",
    "heartbeat",
    "timeout",
    "name",
)
_TLS_PARAMETERS: Final = ("cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl")
DEFAULT_HEARTBEAT_S: Final = 60
DEFAULT_TIMEOUT_S: Final = 10.0
# How long one basic.ack may take to reach the socket before the link counts as lost.
ACK_TIMEOUT_S: Final = 10.0
# The dead letter's header holding the raw bytes of properties that could not be decoded.
RAW_PROPERTIES_HEADER: Final = "amqp_properties_base64"
# Errors of a connection, a channel or the TLS set-up, translated into SourceError.
_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    # aiormq lets pamqp's errors through: AMQPInternalError for an unexpected reply
    # (connection.close instead of open-ok when the vhost does not exist), frame errors.
    pamqp.exceptions.PAMQPException,
    OSError,  # ssl.SSLError and ConnectionError included
    EOFError,
    TimeoutError,
    # aiormq: "connection closed" when a channel is asked of a closing connection;
    # uvloop: a write to a transport that has just closed.
    RuntimeError,
)


# --- the URL ----------------------------------------------------------------------------


class UrlError(ValueError):
    """The URL, or a file it names, is unusable; the text names the fault, never the password."""


@dataclass(frozen=True)
class Endpoint:
    """What an ``amqp://`` or ``amqps://`` URL asks for, checked as aiormq will read it."""

    host: str
    port: int
    vhost: str
    tls: bool
    auth: str  # "PLAIN" or "EXTERNAL", as aiormq names its mechanisms
    heartbeat_s: int
    timeout_s: float
    name: str | None
    cafile: str | None = None
    capath: str | None = None
    cadata: bytes | None = field(default=None, repr=False)
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        try:
            parsed = URL(url)
            port = parsed.port
        except ValueError as exc:
            raise UrlError(f"bad AMQP URL: {exc}") from None
        if parsed.scheme not in ("amqp", "amqps"):
            raise UrlError(f"not an AMQP URL (scheme {parsed.scheme!r}; amqp or amqps)")
        query = parsed.query
        for key in query:
            if key not in URL_PARAMETERS:
                raise UrlError(
                    f"unknown URL parameter {key!r} (aiormq reads {', '.join(URL_PARAMETERS)})"
                )
            if len(query.getall(key)) > 1:
                raise UrlError(f"URL parameter {key!r} is given more than once")
        tls = parsed.scheme == "amqps"
        if not tls:
            given = [key for key in _TLS_PARAMETERS if key in query]
            if given:
                raise UrlError(f"{', '.join(given)}: TLS parameters need an amqps:// URL")
        heartbeat = _whole(query, "heartbeat", DEFAULT_HEARTBEAT_S)
        # aiormq reads 65535 and above as "no heartbeat" (connection.parse_heartbeat).
        if not 0 <= heartbeat <= 65_534:
            raise UrlError("heartbeat must be between 0 and 65534 seconds")
        try:
            timeout = float(query.get("timeout", DEFAULT_TIMEOUT_S))
        except ValueError:
            raise UrlError("bad AMQP URL: timeout must be a number of seconds") from None
        if not timeout > 0:
            raise UrlError("timeout must be above 0 seconds")
        auth = query.get("auth", "plain").upper()
        if auth not in ("PLAIN", "EXTERNAL"):
            raise UrlError(f"auth must be plain or external, got {query['auth']!r}")
        if auth == "EXTERNAL" and not (tls and "certfile" in query):
            raise UrlError("auth=external needs an amqps:// URL and a client certfile")
        if "keyfile" in query and "certfile" not in query:
            raise UrlError("keyfile without certfile")
        verify = query.get("no_verify_ssl", "0")
        if verify not in ("0", "1"):
            raise UrlError(f"no_verify_ssl must be 0 or 1, got {verify!r}")
        cadata = None
        if "cadata" in query:
            try:
                cadata = base64.b64decode(query["cadata"], validate=True)
            except binascii.Error:
                raise UrlError("cadata must be base64 (a CA certificate)") from None
        path = parsed.path
        return cls(
            host=parsed.host or "localhost",
            port=port or (5671 if tls else 5672),
            # As aiormq reads it: the path without its first slash ("/" when empty).
            vhost=path[1:].replace("%2F", "/") if path not in ("", "/") else "/",
            tls=tls,
            auth=auth,
            heartbeat_s=heartbeat,
            timeout_s=timeout,
            name=query.get("name"),
            cafile=query.get("cafile"),
            capath=query.get("capath"),
            cadata=cadata,
            certfile=query.get("certfile"),
            keyfile=query.get("keyfile"),
            verify=verify == "0",
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for amqps (None for amqp), as aiormq would build it from the
        same parameters; raises :class:`UrlError` naming the file that does not load."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=self.cafile, capath=self.capath, cadata=self.cadata
            )
        except (OSError, ssl.SSLError) as exc:
            names = [f"{k} {v!r}" for k, v in (("cafile", self.cafile), ("capath", self.capath))]
            raise UrlError(f"cannot load the CA ({', '.join(names)}): {_os_reason(exc)}") from None
        if self.certfile is not None:
            what = f"certfile {self.certfile!r}" + (
                f" with keyfile {self.keyfile!r}" if self.keyfile else ""
            )
            try:
                context.load_cert_chain(self.certfile, self.keyfile, password=_no_key_password)
            except (OSError, ssl.SSLError, _EncryptedKey) as exc:
                raise UrlError(
                    f"cannot load the client certificate ({what}): {_os_reason(exc)}"
                ) from None
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _whole(query: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(query.get(key, default))
    except ValueError:
        raise UrlError(f"bad AMQP URL: {key} must be a whole number") from None


class _EncryptedKey(Exception):
    def __str__(self) -> str:
        return "the key is encrypted; give an unencrypted keyfile (aiormq takes no key password)"


def _no_key_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal and block the writer.
    raise _EncryptedKey


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- undecodable properties -------------------------------------------------------------


class UndecodableProperties(spec.Basic.Properties):
    """Properties of a content header pamqp could not decode: every property unset, plus
    ``raw`` (the property flags and values as received) and ``problem`` (why)."""

    def __init__(self, raw: bytes, problem: str) -> None:
        super().__init__()
        self.raw = raw
        self.problem = problem


_CONTENT_FIXED = struct.Struct(">HHQ")  # class id, weight, body size
_original_unmarshal: Callable[[ContentHeader, bytes], None] | None = None


def install_lenient_properties() -> None:
    """Wrap ``pamqp.header.ContentHeader.unmarshal`` so that properties which do not
    decode give :class:`UndecodableProperties` instead of an exception (see the module
    docstring). Idempotent."""
    global _original_unmarshal
    if _original_unmarshal is not None:
        return
    original = ContentHeader.unmarshal

    def unmarshal(self: ContentHeader, data: bytes) -> None:
        try:
            original(self, data)
        except Exception as exc:
            if len(data) < _CONTENT_FIXED.size + 2:
                raise  # not even the body size: the stream itself is broken
            self.class_id, self.weight, self.body_size = _CONTENT_FIXED.unpack_from(data)
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.properties = UndecodableProperties(bytes(data[_CONTENT_FIXED.size :]), problem)

    unmarshal.__wrapped__ = original  # type: ignore[attr-defined]
    unmarshal.__doc__ = original.__doc__
    _original_unmarshal = original
    ContentHeader.unmarshal = unmarshal  # type: ignore[method-assign]


# --- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RabbitMQSettings:
    url: Secret
    queue: str
    declare: bool = False
    queue_type: str = "classic"
    prefetch: int = 0
    common: CommonSettings = field(default_factory=CommonSettings)


def parse_options(options: Mapping[str, Any], path: str, problems: list[str]) -> RabbitMQSettings:
    """Read one ``kind = "rabbitmq"`` block; problems are appended with their key path."""
    section = Section(options, path, problems)
    common = CommonSettings.read(section)
    settings = RabbitMQSettings(
        url=broker_url(section, "url", "amqp://guest:guest@127.0.0.1:5672/"),
        queue=section.string("queue"),
        declare=section.boolean("declare", False),
        queue_type=section.string("queue_type", "classic", choices=("classic", "quorum")),
        prefetch=section.integer("prefetch", 2 * common.batch_size, minimum=1, maximum=65_535),
        common=common,
    )
    if settings.prefetch < common.batch_size:
        section.problem("prefetch", f"must be at least batch_size ({common.batch_size})")
    try:
        # Loading the certificate now makes a wrong path a config problem, not a
        # source that retries forever.
        Endpoint.from_url(settings.url.reveal()).ssl_context()
    except UrlError as exc:  # its text names the fault, never the password
        section.problem("url", str(exc))
    section.finish()
    return settings


# --- the source -------------------------------------------------------------------------


class _KeptTransport(aiormq.TransportFactory):
    """aiormq's own TCP or TLS transport factory, keeping the stream it opened.

    When the broker closes the connection, aiormq answers close-ok and ends its writer
    without closing the stream (aiormq 6.9), which leaks the socket until garbage
    collection; :meth:`RabbitMQSource._shutdown` closes it through this.
    """

    def __init__(self, tls: bool) -> None:
        self._inner = TLSTransportFactory() if tls else TCPTransportFactory()
        self.writer: asyncio.StreamWriter | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, self.writer = await self._inner.create(url, **kwargs)
        return reader, self.writer

    def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()


def describe(exc: BaseException) -> str:
    """An aiormq, pamqp or socket error as one line: its class and the broker's words."""
    if isinstance(exc, aiormq.exceptions.AuthenticationError) and len(exc.args) == 2:
        offered, ours = exc.args
        offered = offered.decode() if isinstance(offered, bytes) else offered
        return f"the broker offers the login mechanisms {offered!r}; we asked for {ours}"
    name = type(exc).__name__
    for arg in exc.args:
        # aiormq reports a close that came instead of the reply it waited for (a missing
        # vhost answers connection.open so) with the close frame itself.
        if isinstance(arg, spec.Connection.Close | spec.Channel.Close):
            return f"{name}: the broker closed the connection: {arg.reply_code} {arg.reply_text}"
    words = " ".join(str(arg) for arg in exc.args if arg is not None)
    return f"{name}: {words}" if words else name


class _DeliveringChannel(aiormq.Channel):
    """aiormq's channel, handing each delivery to ``on_delivery`` in the channel's own
    reader task.

    aiormq's ``Channel._on_deliver_frame`` reads the content header and body frames and
    then starts a task per delivery to run the consumer callback. That task (and aiormq's
    bookkeeping of it) cost about 11 of the 43 µs of CPU aiormq spent per message; this
    override reads the frames the same way, with aiormq's own ``_get_frame`` and
    ``_read_content``, and calls ``on_delivery`` directly (it only appends to a deque, so
    it cannot block the reader). Frames are still read by aiormq and decoded by pamqp.
    """

    NUMBER: ClassVar[int] = 1  # the connection's only channel

    on_delivery: Callable[[DeliveredMessage], None] = staticmethod(lambda message: None)

    @classmethod
    async def open_on(cls, connection: aiormq.Connection) -> _DeliveringChannel:
        """Open channel 1 on a new connection, as ``Connection.channel()`` opens one of
        aiormq's own: registered in ``connection.channels``, unregistered if it fails."""
        await connection.connected.wait()
        if connection.is_closed:
            raise RuntimeError(f"{connection!r} closed")  # as Connection.channel()
        # No frame buffer limit: the prefetch bounds what the broker sends, and a bounded
        # buffer only makes aiormq's connection reader wait for this channel's reader.
        channel = cls(connection, cls.NUMBER, publisher_confirms=False, frame_buffer=0)
        connection.channels[cls.NUMBER] = channel
        try:
            await channel.open()
        except BaseException:
            connection.channels[cls.NUMBER] = None
            raise
        return channel

    async def _on_deliver_frame(self, frame: spec.Basic.Deliver) -> None:
        header = await self._get_frame()
        if not isinstance(header, ContentHeader):
            # As aiormq's: ends the channel's reader, and so the channel.
            raise ValueError(f"Unexpected frame {header!r} instead of ContentHeader", header)
        message = await self._read_content(frame, header)
        if frame.consumer_tag in self.consumers:
            self.on_delivery(message)


async def _unused(message: DeliveredMessage) -> None:
    raise AssertionError("_DeliveringChannel hands deliveries to on_delivery")


class RabbitMQSource(BrokerSource[RabbitMQSettings]):
    """Consume one RabbitMQ queue into the local queue."""

    kind: ClassVar[str] = KIND

    def _setup(self) -> None:
        self._redeliveries = self.metrics.source_redeliveries.labels(self.name)
        self._connection: aiormq.Connection | None = None
        self._transport: _KeptTransport | None = None
        self._channel: aiormq.Channel | None = None
        self._consumer_tag: str | None = None
        self._pending: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._lost: str | None = None

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "redeliveries": self._redeliveries.value}

    async def _open(self) -> None:
        settings = self.settings
        self._pending.clear()
        self._lost = None
        install_lenient_properties()
        url = settings.url.reveal()
        where = f"RabbitMQ {safe_url(settings.url)} queue {settings.queue!r}"
        try:
            endpoint = Endpoint.from_url(url)
            context = endpoint.ssl_context()
        except UrlError as exc:
            raise SourceError(f"{where}: {exc}") from exc
        self._transport = transport = _KeptTransport(endpoint.tls)
        connection = aiormq.Connection(url, context=context, transport_factory=transport)
        self._connection = connection
        properties = {} if endpoint.name else {"connection_name": f"campaign-writer:{self.name}"}
        try:
            async with asyncio.timeout(endpoint.timeout_s):
                await connection.connect(properties)
                channel = await _DeliveringChannel.open_on(connection)
                channel.on_delivery = self._deliveries(channel)
                self._channel = channel
                if settings.declare:
                    arguments: dict[str, FieldValue] = {"x-queue-type": settings.queue_type}
                    await channel.queue_declare(settings.queue, durable=True, arguments=arguments)
                else:
                    await channel.queue_declare(settings.queue, passive=True)
                await channel.basic_qos(prefetch_count=settings.prefetch)
                # The callback aiormq would run as a task per delivery is never called:
                # the channel hands deliveries to on_delivery itself.
                consume_ok = await channel.basic_consume(settings.queue, _unused, no_ack=False)
        except TimeoutError:
            raise SourceError(
                f"{where}: no answer from the broker within {endpoint.timeout_s:g} s"
            ) from None
        except _ERRORS as exc:
            raise SourceError(f"{where}: {describe(exc)}") from exc
        self._consumer_tag = consume_ok.consumer_tag

        def on_closing(what: str) -> Callable[[asyncio.Future[Any]], None]:
            def closed(future: asyncio.Future[Any]) -> None:
                if connection is self._connection:  # not one we closed, nor an earlier one
                    self._on_closing(connection, what, future)

            return closed

        connection.closing.add_done_callback(on_closing("connection lost"))
        channel.closing.add_done_callback(on_closing("channel closed"))

    def _deliveries(self, channel: aiormq.Channel) -> Callable[[DeliveredMessage], None]:
        """What ``channel`` calls for each delivery, in order; deliveries of an earlier
        connection are ignored (their tags mean nothing to the new channel)."""
        pending = self._pending
        arrived = self._arrived

        def on_delivery(message: DeliveredMessage) -> None:
            if channel is not self._channel:
                return
            delivery: spec.Basic.Deliver = message.delivery  # type: ignore[assignment]
            properties = message.header.properties
            if isinstance(properties, UndecodableProperties):
                pending.append(self._undecodable(message, properties))
            else:
                headers = properties.headers
                pending.append(
                    Message(
                        message.body,
                        _headers_text(headers) if headers else {},
                        delivery.delivery_tag,
                    )
                )
            if delivery.redelivered:
                self._redeliveries.inc()
            arrived.set()

        return on_delivery

    def _undecodable(self, message: DeliveredMessage, properties: UndecodableProperties) -> Message:
        log.warning(
            "message properties could not be decoded: dead-lettered",
            extra={"source": self.name, "error": properties.problem},
        )
        return Message(
            message.body,
            {RAW_PROPERTIES_HEADER: base64.b64encode(properties.raw).decode("ascii")},
            message.delivery_tag,
            problem=(
                f"undecodable AMQP message properties ({len(properties.raw)} bytes): "
                f"{properties.problem}"
            ),
        )

    def _on_closing(
        self, connection: aiormq.Connection, what: str, future: asyncio.Future[Any]
    ) -> None:
        if self._lost is not None:
            return
        error = None if future.cancelled() else future.exception()
        if error is None or isinstance(error, asyncio.CancelledError):
            reason = "closed"
        else:
            reason = describe(error)
        if connection.is_connection_was_stuck:
            reason = "no frame from the broker within the heartbeat grace (heartbeat missed)"
        self._lost = f"{what}: {reason}"
        self._arrived.set()

    def _wake(self) -> None:
        self._arrived.set()

    def _check(self) -> None:
        if self._lost is None:
            channel = self._channel
            if channel is not None and self._consumer_tag not in channel.consumers:
                self._lost = "the broker cancelled the consumer (was the queue deleted?)"
        if self._lost is not None:
            raise SourceError(f"RabbitMQ queue {self.settings.queue!r}: {self._lost}")

    async def _receive(self, max_count: int, wait_s: float) -> list[Message]:
        pending = self._pending
        if not pending:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), POLL_S)
            self._check()
            if not pending:
                return []
        if len(pending) < max_count and wait_s > 0:
            # Let the rest of a burst arrive so one commit carries it.
            await asyncio.sleep(wait_s)
        count = min(max_count, len(pending))
        return [pending.popleft() for _ in range(count)]

    async def _ack(self, batch: list[Message]) -> bool:
        self._check()
        channel = self._channel
        assert channel is not None
        try:
            # Waits until the frame is written (aiormq's drain), so a close right after
            # cannot lose it.
            async with asyncio.timeout(ACK_TIMEOUT_S):
                await channel.basic_ack(batch[-1].handle, multiple=True)
        except TimeoutError:
            raise SourceError(f"RabbitMQ ack not sent within {ACK_TIMEOUT_S:g} s") from None
        except _ERRORS as exc:
            raise SourceError(f"RabbitMQ ack failed: {describe(exc)}") from exc
        return True

    async def _idle(self, batch: Any) -> None:
        # A connection lost while we wait for room invalidates the batch's tags:
        # give it up now (RabbitMQ redelivers it) rather than commit it and fail the ack.
        self._check()

    async def _shutdown(self) -> None:
        connection, self._connection = self._connection, None
        transport, self._transport = self._transport, None
        self._channel = None
        self._consumer_tag = None
        self._pending.clear()
        if connection is None:
            return
        # Sends connection.close: unacked messages go back to the queue.
        try:
            async with asyncio.timeout(POLL_S * 4):
                await connection.close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled, not just aiormq's tasks
        except Exception:  # noqa: S110 - must not raise; the connection is dropped anyway
            pass
        finally:
            if transport is not None:
                transport.close()


SOURCE: Final = SourceKind.of(RabbitMQSource, RabbitMQSettings, parse_options)
read_settings = SOURCE.read_settings
