"""Broker URLs carry passwords: none may reach a log line, an error or the stats."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from campaign_writer.logs import JsonFormatter
from campaign_writer.sources.base import BrokerSource
from campaign_writer.sources.nats import NatsSource
from campaign_writer.sources.nats import read_settings as nats_settings
from campaign_writer.sources.rabbitmq import RabbitMQSource
from campaign_writer.sources.rabbitmq import read_settings as rabbitmq_settings
from campaign_writer.sources.redis_streams import RedisStreamsSource
from campaign_writer.sources.redis_streams import read_settings as redis_settings
from tests.sources.conftest import IntakeFactory

PASSWORD = "pw-4f1e9c-never-shown"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def build(kind: str, intake: Any) -> BrokerSource:
    port = closed_port()
    common = {"reconnect_initial_s": 0.05}
    if kind == "rabbitmq":
        url = f"amqp://writer:{PASSWORD}@127.0.0.1:{port}/"
        settings = rabbitmq_settings({"url": url, "queue": "q", **common}, "sources[0]")
        return RabbitMQSource(kind, settings, intake.router, intake.queue, intake.metrics)
    if kind == "redis_streams":
        url = f"redis://writer:{PASSWORD}@127.0.0.1:{port}/0"
        settings = redis_settings({"url": url, "stream": "s", "group": "g", **common}, "s[0]")
        return RedisStreamsSource(kind, settings, intake.router, intake.queue, intake.metrics)
    url = f"nats://writer:{PASSWORD}@127.0.0.1:{port}"
    settings = nats_settings({"url": url, "stream": "s", "durable": "d", **common}, "s[0]")
    return NatsSource(kind, settings, intake.router, intake.queue, intake.metrics)


@pytest.mark.parametrize("kind", ["rabbitmq", "redis_streams", "nats"])
async def test_failed_connections_never_show_the_url_password(
    kind: str,
    intake_factory: IntakeFactory,
    sources: list,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection errors are logged and kept with the password masked, in every field."""
    caplog.set_level(logging.DEBUG)
    intake = await intake_factory()
    source = build(kind, intake)
    sources.append(source)
    await source.start()
    assert not source.connected and source.last_error
    assert "127.0.0.1" in source.last_error
    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert any("will reconnect" in line for line in lines)
    shown = "\n".join([*lines, str(source.stats()), repr(source.settings)])
    assert PASSWORD not in shown
