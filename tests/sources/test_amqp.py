"""The RabbitMQ source's AMQP side, now aiormq's: URLs, TLS and EXTERNAL login, messages
whose properties do not decode, redeliveries, heartbeats and refusals.

Against the real RabbitMQ on 127.0.0.1:5672 where a broker is needed; TLS against a
login recorder (:mod:`tests.sources.amqp_tls`) and against a RabbitMQ node of our own
with a TLS listener and the EXTERNAL mechanism.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import struct
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import pytest
import uvloop
from pamqp import commands as spec
from pamqp.header import ContentHeader

from campaign_writer.errors import ConfigError
from campaign_writer.metrics import Metrics
from campaign_writer.sources import rabbitmq
from campaign_writer.sources.rabbitmq import (
    RAW_PROPERTIES_HEADER,
    Endpoint,
    RabbitMQSource,
    UndecodableProperties,
    install_lenient_properties,
    read_settings,
)
from tests.sources.amqp_tls import CLIENT_CN, Certs, LoginRecorder, TlsRabbit, make_certs
from tests.sources.conftest import IntakeFactory, collect, eventually, sample_event, sample_events
from tests.sources.proxy import TcpProxy
from tests.sources.test_rabbitmq import Broker, broker, make_source  # noqa: F401
from tests.support.services import missing, require_command

PASSWORD = "pw-7c1d-never-shown"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require_command("openssl", "openssl")
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_url(port: int, certs: Certs, query: str = "", user: str = "writer") -> str:
    return f"amqps://{user}:{PASSWORD}@127.0.0.1:{port}/?cafile={certs.ca}{query}"


def settings_for(url: str, **keys: Any) -> rabbitmq.RabbitMQSettings:
    return read_settings({"url": url, "queue": "q", **keys}, "sources[0]")


def url_problems(url: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_for(url)
    assert PASSWORD not in str(caught.value)
    return caught.value.problems


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", ("127.0.0.1", 5672, "/", False, "PLAIN")),
        ("amqp://u:p%40ss@host/", ("host", 5672, "/", False, "PLAIN")),
        ("amqps://u:p@host/%2Fprod", ("host", 5671, "/prod", True, "PLAIN")),
        ("amqp://host/staging?heartbeat=5&name=n", ("host", 5672, "staging", False, "PLAIN")),
        (
            "amqps://host:5999/?auth=EXTERNAL&certfile=/c.pem&keyfile=/k.pem",
            ("host", 5999, "/", True, "EXTERNAL"),
        ),
    ],
)
def test_endpoints_are_read_from_urls(url: str, expected: tuple[Any, ...]) -> None:
    endpoint = Endpoint.from_url(url)
    assert (endpoint.host, endpoint.port, endpoint.vhost, endpoint.tls, endpoint.auth) == expected


def test_endpoint_details() -> None:
    endpoint = Endpoint.from_url(
        "amqps://u:p%40ss@host/?heartbeat=5&name=n&timeout=2.5&cafile=/ca.pem&no_verify_ssl=1"
    )
    assert (endpoint.heartbeat_s, endpoint.name, endpoint.timeout_s) == (5, "n", 2.5)
    assert (endpoint.cafile, endpoint.verify) == ("/ca.pem", False)
    assert "p@ss" not in repr(endpoint)
    default = Endpoint.from_url("amqp://host/")
    assert (default.heartbeat_s, default.timeout_s, default.verify) == (60, 10.0, True)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("http://u:{pw}@host/", "not an AMQP URL"),
        ("amqp://u:{pw}@host:port/", "bad AMQP URL"),
        ("amqp://u:{pw}@host/?heartbeat=x", "bad AMQP URL: heartbeat must be a whole number"),
        ("amqp://u:{pw}@host/?heartbeat=70000", "heartbeat must be between 0 and 65534"),
        ("amqp://u:{pw}@host/?timeout=0", "timeout must be above 0"),
        ("amqp://u:{pw}@host/?auth=kerberos", "auth must be plain or external"),
        ("amqp://u:{pw}@host/?auth=external", "auth=external needs an amqps:// URL"),
        ("amqps://u:{pw}@host/?auth=external", "auth=external needs an amqps:// URL"),
        ("amqp://u:{pw}@host/?cafile=/ca.pem", "cafile: TLS parameters need an amqps:// URL"),
        ("amqps://u:{pw}@host/?keyfile=/k.pem", "keyfile without certfile"),
        ("amqps://u:{pw}@host/?no_verify_ssl=false", "no_verify_ssl must be 0 or 1"),
        ("amqps://u:{pw}@host/?cadata=%%%", "cadata must be base64"),
        ("amqp://u:{pw}@host/?certfle=/c.pem", "unknown URL parameter 'certfle'"),
        ("amqp://u:{pw}@host/?heartbeat=1&heartbeat=2", "'heartbeat' is given more than once"),
    ],
)
def test_bad_urls_are_config_problems_naming_the_fault(query: str, problem: str) -> None:
    """Each fault is a problem of sources[0].url, and the password is never shown."""
    problems = url_problems(query.format(pw=PASSWORD))
    assert any(p.startswith("sources[0].url: ") and problem in p for p in problems), problems


# --- TLS ----------------------------------------------------------------------------------


def test_the_tls_context_follows_the_url(certs: Certs) -> None:
    """cafile (or cadata) is the trust; certificates and host names are checked unless
    no_verify_ssl=1; amqp has no context at all."""
    context = Endpoint.from_url(tls_url(5671, certs)).ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [{k: v for rdn in ca["subject"] for k, v in rdn} for ca in context.get_ca_certs()]
    assert subjects == [{"commonName": "cw-test-ca"}]
    der = ssl.PEM_cert_to_DER_cert(certs.ca.read_text())
    cadata = quote(base64.b64encode(der).decode(), safe="")
    context = Endpoint.from_url(f"amqps://h/?cadata={cadata}").ssl_context()
    assert context is not None and len(context.get_ca_certs()) == 1
    context = Endpoint.from_url("amqps://h/?no_verify_ssl=1").ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert Endpoint.from_url("amqp://h/").ssl_context() is None


def test_certificates_that_do_not_load_are_config_problems_naming_the_file(
    certs: Certs, tmp_path: Path
) -> None:
    """A missing file, an encrypted key (no terminal prompt: the writer would hang) and a
    key of another certificate are each a problem naming the file."""
    absent = tmp_path / "absent.pem"
    (problem,) = url_problems(tls_url(5671, certs, f"&certfile={absent}"))
    assert f"certfile '{absent}'" in problem and "No such file or directory" in problem
    (problem,) = url_problems(
        tls_url(5671, certs, f"&certfile={certs.client}&keyfile={certs.client_key_encrypted}")
    )
    assert "keyfile" in problem and "the key is encrypted" in problem
    (problem,) = url_problems(
        tls_url(5671, certs, f"&certfile={certs.client}&keyfile={certs.server_key}")
    )
    assert "cannot load the client certificate" in problem and "KEY_VALUES_MISMATCH" in problem
    (problem,) = url_problems(f"amqps://u:{PASSWORD}@h/?cafile={absent}")
    assert f"cannot load the CA (cafile '{absent}'" in problem


async def test_a_certificate_gone_after_the_config_was_read_is_a_source_error(
    certs: Certs, tmp_path: Path, intake_factory: IntakeFactory, sources: list
) -> None:
    """The certificate is read again at each connection: gone, the source reports the
    file and keeps retrying; it does not crash."""
    client = tmp_path / "client.pem"
    client.write_bytes(certs.client.read_bytes())
    url = tls_url(1, certs, f"&certfile={client}&keyfile={certs.client_key}")
    settings = settings_for(url, reconnect_initial_s=0.05)
    client.unlink()
    intake = await intake_factory()
    source = RabbitMQSource("tls", settings, intake.router, intake.queue, intake.metrics)
    sources.append(source)
    await source.start()
    assert source.last_error is not None and f"certfile '{client}'" in source.last_error
    await asyncio.sleep(0.3)  # several more attempts
    assert source.crashed is None and not source.connected
    assert PASSWORD not in str(source.stats())


@pytest.fixture
async def recorder(certs: Certs) -> AsyncIterator[LoginRecorder]:
    recorder = await LoginRecorder(certs).start()
    yield recorder
    await recorder.close()


async def start_tls_source(
    url: str, intake_factory: IntakeFactory, sources: list
) -> RabbitMQSource:
    intake = await intake_factory()
    settings = settings_for(url, reconnect_initial_s=5)
    source = RabbitMQSource("tls", settings, intake.router, intake.queue, intake.metrics)
    sources.append(source)
    await source.start()
    return source


async def test_external_login_presents_the_client_certificate(
    certs: Certs, recorder: LoginRecorder, intake_factory: IntakeFactory, sources: list
) -> None:
    """auth=external with a client certificate: the broker sees that certificate in the
    TLS handshake and the EXTERNAL mechanism with an empty response (no password)."""
    query = f"&auth=external&certfile={certs.client}&keyfile={certs.client_key}"
    source = await start_tls_source(tls_url(recorder.port, certs, query), intake_factory, sources)
    (login,) = recorder.logins
    assert login.mechanism == "EXTERNAL" and login.response == ""
    assert login.peer_subject == {"commonName": CLIENT_CN}
    assert (
        source.last_error is not None and "ACCESS_REFUSED - the login recorder" in source.last_error
    )


async def test_plain_login_over_tls_checks_the_broker_certificate(
    certs: Certs, recorder: LoginRecorder, intake_factory: IntakeFactory, sources: list
) -> None:
    """amqps with the right CA: PLAIN login with the URL's user and password, no client
    certificate unless asked; with another CA the handshake fails with the reason; with
    no_verify_ssl=1 it goes through without any CA."""
    await start_tls_source(tls_url(recorder.port, certs), intake_factory, sources)
    (login,) = recorder.logins
    assert (login.mechanism, login.response, login.peer_subject) == (
        "PLAIN",
        f"\x00writer\x00{PASSWORD}",
        {},
    )
    url = f"amqps://writer:{PASSWORD}@127.0.0.1:{recorder.port}/?cafile={certs.other_ca}"
    source = await start_tls_source(url, intake_factory, sources)
    assert source.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in source.last_error
    assert len(recorder.logins) == 1
    url = f"amqps://writer:{PASSWORD}@127.0.0.1:{recorder.port}/?no_verify_ssl=1"
    await start_tls_source(url, intake_factory, sources)
    assert len(recorder.logins) == 2


@pytest.fixture(scope="module")
def tls_rabbit(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRabbit]:
    if not TlsRabbit.available():
        missing("rabbitmq-server with the rabbitmq_auth_mechanism_ssl plugin is not installed")
    node = TlsRabbit(tmp_path_factory.mktemp("tls-rabbit"), certs)
    node.start()
    yield node
    node.stop()


@pytest.mark.slow
@pytest.mark.services
async def test_consumes_over_tls_with_the_external_login_of_a_real_broker(
    tls_rabbit: TlsRabbit, certs: Certs, intake_factory: IntakeFactory, sources: list, unique: str
) -> None:
    """A RabbitMQ node that listens only on TLS, verifies client certificates and logs in
    with EXTERNAL only: the source declares its queue and commits what is published; the
    broker lists the connection as TLS, EXTERNAL, user = the certificate's CN."""
    query = f"&auth=external&certfile={certs.client}&keyfile={certs.client_key}"
    url = f"amqps://127.0.0.1:{tls_rabbit.port}/?cafile={certs.ca}{query}"
    intake = await intake_factory()
    settings = read_settings({"url": url, "queue": unique, "declare": True}, "sources[0]")
    source = RabbitMQSource("tls", settings, intake.router, intake.queue, intake.metrics)
    sources.append(source)
    await source.start()
    assert source.connected, source.last_error
    publisher = await aiormq.connect(url)
    channel = await publisher.channel()
    events = sample_events(unique, 100)
    for _, body in events:
        await channel.basic_publish(body, routing_key=unique)
    assert sorted(await collect([intake], 100)) == sorted(key for key, _ in events)
    listed = await asyncio.to_thread(
        tls_rabbit.ctl, "list_connections", "ssl", "auth_mechanism", "user", "client_properties"
    )
    ours = [line.split("\t") for line in listed.splitlines() if "campaign-writer:tls" in line]
    assert [row[:3] for row in ours] == [["true", "EXTERNAL", CLIENT_CN]]
    await publisher.close()


# --- properties that do not decode ------------------------------------------------------


def _table(content: bytes) -> bytes:
    return struct.pack(">I", len(content)) + content


def _nested_headers(depth: int) -> bytes:
    encoded = _table(b"")
    for _ in range(depth):  # {"n": {"n": ... {}}}, built without recursion
        encoded = _table(b"\x01nF" + encoded)
    return encoded


HEADERS_FLAG = 1 << 13
TIMESTAMP_FLAG = 1 << 6
# Property flags and values as they go on the wire: each makes pamqp raise.
UNDECODABLE = {
    "nested-5000-deep": (struct.pack(">H", HEADERS_FLAG) + _nested_headers(5000), "RecursionError"),
    "key-not-utf8": (
        struct.pack(">H", HEADERS_FLAG) + _table(b"\x02\xff\xfet\x01"),
        "UnicodeDecodeError",
    ),
    "timestamp-past-9999": (
        struct.pack(">H", TIMESTAMP_FLAG) + struct.pack(">Q", 2**64 - 1),
        "ValueError",
    ),
}


def _content_header(raw_properties: bytes, body_size: int = 5) -> bytes:
    return struct.pack(">HHQ", 60, 0, body_size) + raw_properties


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_undecodable_properties_become_a_marker_instead_of_an_exception(kind: str) -> None:
    """pamqp alone raises on these content headers (inside aiormq's frame reader, which
    would drop the connection); wrapped, the header keeps its body size and gets
    UndecodableProperties with the raw bytes and the error."""
    raw, error = UNDECODABLE[kind]
    install_lenient_properties()
    original = ContentHeader.unmarshal.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each kind raises its own
        original(ContentHeader(), _content_header(raw))
    assert type(caught.value).__name__ == error
    header = ContentHeader()
    header.unmarshal(_content_header(raw, body_size=1234))
    assert header.body_size == 1234 and header.class_id == 60
    assert isinstance(header.properties, UndecodableProperties)
    assert header.properties.raw == raw and header.properties.problem.startswith(error)
    assert header.properties.headers is None and header.properties.timestamp is None


def test_decodable_headers_are_decoded_as_before_and_the_wrapper_is_installed_once() -> None:
    install_lenient_properties()
    wrapper = ContentHeader.unmarshal
    install_lenient_properties()
    assert ContentHeader.unmarshal is wrapper
    properties = spec.Basic.Properties(
        content_type="application/json",
        headers={"a": "b", "n": 7, "t": {"x": [1, 2]}},
        delivery_mode=2,
        timestamp=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
        message_id="m1",
    )
    data = ContentHeader(body_size=42, properties=properties).marshal()
    ours, theirs = ContentHeader(), ContentHeader()
    ours.unmarshal(data)
    wrapper.__wrapped__(theirs, data)  # type: ignore[attr-defined]
    assert type(ours.properties) is spec.Basic.Properties
    assert ours.properties == theirs.properties == properties and ours.body_size == 42
    with pytest.raises(struct.error):
        ContentHeader().unmarshal(b"\x00\x3c\x00")  # not even a body size: still an error


class RawProperties(spec.Basic.Properties):
    """Properties that marshal to the given bytes: how a test publishes what pamqp
    itself could not encode or decode."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(message_id="raw")  # so aiormq does not add one
        self.raw = raw

    def marshal(self) -> bytes:
        return self.raw


async def publish_raw(port: int, queue: str, body: bytes, raw_properties: bytes) -> None:
    connection = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{port}/")
    try:
        channel = await connection.channel()  # with confirms: the broker has it
        await channel.basic_publish(
            body, routing_key=queue, properties=RawProperties(raw_properties)
        )
    finally:
        await connection.close()


@pytest.mark.services
@pytest.mark.parametrize("kind", UNDECODABLE)
async def test_a_message_whose_properties_do_not_decode_is_dead_lettered_and_acked(
    kind: str,
    broker: Broker,  # noqa: F811
    rabbitmq_port: int,
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """Between good messages, one whose properties pamqp cannot decode: it is dead-lettered
    with its body, the reason and its raw property bytes, then acked; the connection is
    never dropped, so nothing is redelivered and the good messages all arrive."""
    raw, error = UNDECODABLE[kind]
    await broker.declare(unique)
    good = sample_events(unique, 20)
    await broker.publish(unique, [body for _, body in good[:10]])
    bad = b'{"type": "sample", "id": "%s-bad"}' % unique.encode()
    await publish_raw(rabbitmq_port, unique, bad, raw)
    await broker.publish(unique, [body for _, body in good[10:]])
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, reconnect_initial_s=0.05)
    sources.append(source)
    await source.start()
    assert sorted(await collect([intake], 20)) == sorted(key for key, _ in good)
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") == 21)
    (letter,) = await intake.dead_letters()
    assert letter.event == bad and letter.source == "rabbit"
    assert "undecodable AMQP message properties" in letter.reason and error in letter.reason
    assert base64.b64decode(letter.headers[RAW_PROPERTIES_HEADER]) == raw
    assert intake.sample("source_dead_lettered_total", "rabbit") == 1
    assert source.stats()["reconnects"] == 0 and source.stats()["redeliveries"] == 0
    await source.close()
    assert await broker.counts(unique) == (0, 0)


# --- redeliveries -----------------------------------------------------------------------


@pytest.mark.services
async def test_redeliveries_are_counted(
    broker: Broker,  # noqa: F811
    proxy_factory: Any,
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """20 messages taken by a consumer that never acks, whose connection is then broken:
    RabbitMQ delivers them again, flagged redelivered, and the source counts 20 (metric
    and stats); 5 new messages after them are not counted."""
    await broker.declare(unique)
    events = sample_events(unique, 25)
    await broker.publish(unique, [body for _, body in events[:20]])
    proxy: TcpProxy = await proxy_factory(5672)
    first = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    channel = await first.channel()
    taken: list[int] = []

    async def take(message: aiormq.abc.DeliveredMessage) -> None:
        taken.append(message.delivery_tag or 0)

    await channel.basic_consume(unique, take, no_ack=False)
    await eventually(lambda: len(taken) == 20, what="20 deliveries to the first consumer")
    assert proxy.cut() == 1
    await eventually(lambda: first.is_closed, what="the first consumer's connection to drop")
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake)
    sources.append(source)
    await source.start()
    await collect([intake], [key for key, _ in events[:20]])
    await broker.publish(unique, [body for _, body in events[20:]])
    await collect([intake], [key for key, _ in events])
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") == 25)
    assert intake.sample("source_redeliveries_total", "rabbit") == 20
    assert source.stats()["redeliveries"] == 20


def test_the_redelivery_counter_has_its_fixed_name() -> None:
    metrics = Metrics()
    metrics.source_redeliveries.labels("r").inc(3)
    assert 'campaign_writer_source_redeliveries_total{source="r"} 3.0' in (
        metrics.exposition().decode()
    )


# --- the wire through aiormq ------------------------------------------------------------


@pytest.mark.services
async def test_headers_of_every_field_type_reach_the_dead_letter_as_text(
    broker: Broker,  # noqa: F811
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """A poison message's headers, of every type aio-pika encodes, are kept as text."""
    await broker.declare(unique)
    headers = {
        "text": "héllo",
        "int": 7,
        "big": 2**40,
        "negative": -70_000,
        "float": 1.5,
        "yes": True,
        "decimal": Decimal("12.34"),
        "when": datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC),
        "none": None,
        "list": [1, "two"],
        "table": {"inner": "x"},
    }
    assert broker.channel is not None
    message = aio_pika.Message(b"{not json", headers=headers)
    await broker.channel.default_exchange.publish(message, routing_key=unique)
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake)
    sources.append(source)
    await source.start()
    await eventually(lambda: intake.sample("source_dead_lettered_total", "rabbit") == 1)
    (letter,) = await intake.dead_letters()
    got = letter.headers
    assert (got["text"], got["int"], got["big"], got["negative"]) == (
        "héllo",
        "7",
        "1099511627776",
        "-70000",
    )
    assert (got["float"], got["yes"], got["decimal"], got["none"]) == (
        "1.5",
        "True",
        "12.34",
        "None",
    )
    assert got["when"].startswith("2026-11-23 12:00:00")
    assert got["list"] == "[1, 'two']" and got["table"] == "{'inner': 'x'}"


@pytest.mark.services
async def test_bodies_of_many_frames_and_empty_bodies_arrive_whole(
    broker: Broker,  # noqa: F811
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """An ndjson body of 5,000 events (over 400 kB: several body frames) arrives whole; an
    empty body is dead-lettered as such; both are acked."""
    await broker.declare(unique)
    events = sample_events(unique, 5_000)
    big = b"\n".join(body for _, body in events)
    assert len(big) > 3 * 131_072
    await broker.publish(unique, [big, b""])
    intake = await intake_factory()
    source = make_source("rabbit", unique, intake, format="ndjson")
    sources.append(source)
    await source.start()
    assert sorted(await collect([intake], 5_000)) == sorted(key for key, _ in events)
    await eventually(lambda: intake.sample("source_acked_total", "rabbit") == 2)
    (letter,) = await intake.dead_letters()
    assert (letter.event, letter.reason) == (b"", "empty message")


@pytest.mark.services
async def test_heartbeats_keep_an_idle_connection_open(
    broker: Broker,  # noqa: F811
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """With a 1 s heartbeat RabbitMQ closes a client silent for about 2 s; aiormq sends
    heartbeats, so after 3.5 s idle the source still receives on its first connection."""
    await broker.declare(unique)
    intake = await intake_factory()
    url = "amqp://guest:guest@127.0.0.1:5672/?heartbeat=1"
    settings = read_settings({"url": url, "queue": unique}, "sources[0]")
    source = RabbitMQSource("rabbit", settings, intake.router, intake.queue, intake.metrics)
    sources.append(source)
    await source.start()
    await asyncio.sleep(3.5)
    await broker.publish(unique, [sample_event(f"{unique}-late")])
    assert await collect([intake], 1) == [f"{unique}-late"]
    assert source.connected and source.stats()["reconnects"] == 0


@pytest.mark.services
async def test_a_silent_broker_is_noticed_by_the_heartbeat(
    broker: Broker,  # noqa: F811
    proxy_factory: Any,
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """Frames stop arriving but the socket stays open (a partition): noticed within
    aiormq's heartbeat grace ((1 + 1) x 3 s), and said so."""
    await broker.declare(unique)
    proxy: TcpProxy = await proxy_factory(5672)
    intake = await intake_factory()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=1&timeout=2"
    settings = read_settings({"url": url, "queue": unique, "reconnect_initial_s": 5}, "s[0]")
    source = RabbitMQSource("rabbit", settings, intake.router, intake.queue, intake.metrics)
    sources.append(source)
    await source.start()
    assert source.connected
    proxy.freeze()
    await eventually(lambda: not source.connected, timeout=15, what="the missed heartbeat")
    assert source.last_error is not None and "heartbeat" in source.last_error


@pytest.mark.services
async def test_refusals_are_clear_errors(
    broker: Broker,  # noqa: F811
    rabbitmq_port: int,
    intake_factory: IntakeFactory,
    sources: list,
    unique: str,
) -> None:
    """A wrong password, a missing queue, a queue declared with other arguments, a missing
    vhost and a closed port each fail the connection with the broker's reason; nothing
    hangs and the password is never shown."""
    await broker.declare(unique)
    intake = await intake_factory()
    base = f"127.0.0.1:{rabbitmq_port}"
    cases = [
        ({"url": f"amqp://guest:{PASSWORD}@{base}/"}, "ACCESS_REFUSED"),
        ({"queue": f"{unique}-absent"}, "NOT_FOUND"),
        ({"declare": True, "queue_type": "quorum"}, "PRECONDITION_FAILED"),
        ({"url": f"amqp://guest:guest@{base}/{unique}-vhost"}, "NOT_ALLOWED"),
        ({"url": "amqp://guest:guest@127.0.0.1:1/"}, "Connect call failed"),
    ]
    for keys, reason in cases:
        options = {"url": f"amqp://guest:guest@{base}/", "queue": unique, "reconnect_initial_s": 5}
        settings = read_settings({**options, **keys}, "sources[0]")
        source = RabbitMQSource("rabbit", settings, intake.router, intake.queue, intake.metrics)
        sources.append(source)
        async with asyncio.timeout(15):
            await source.start()
        assert not source.connected
        assert source.last_error is not None and reason in source.last_error, source.last_error
        assert PASSWORD not in source.last_error
        await source.close()
    assert "x-queue-type" in str(sources[2].last_error)


@pytest.mark.services
def test_the_source_runs_under_uvloop(rabbitmq_port: int, tmp_path: Path, unique: str) -> None:
    """The daemon runs on uvloop, whose transports are not asyncio's classes."""
    from campaign_writer.config import load
    from campaign_writer.queue import DurableQueue
    from campaign_writer.router import Router
    from tests.sources.conftest import write_config

    async def scenario() -> tuple[int, int]:
        publisher = await Broker(rabbitmq_port).open()
        try:
            await publisher.declare(unique)
            await publisher.publish(unique, [body for _, body in sample_events(unique, 100)])
            config = load(write_config(tmp_path, queue_path=tmp_path / "q.sqlite3"))
            queue = await DurableQueue.open(config.queue.path)
            metrics = Metrics()
            settings = read_settings({"url": publisher.url, "queue": unique}, "sources[0]")
            source = RabbitMQSource("rabbit", settings, Router.from_config(config), queue, metrics)
            await source.start()
            try:
                await eventually(lambda: source.stats()["acked"] == 100, what="100 acks")
            finally:
                await source.close()
                await queue.close()
            return source.stats()["accepted"], source.stats()["reconnects"]
        finally:
            await publisher.close()

    assert uvloop.run(scenario()) == (100, 0)
