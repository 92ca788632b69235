"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from tests.support.services import require_service
from tests.support.simulator import simulator, simulator_factory  # noqa: F401


@pytest.fixture
def redis_port() -> int:
    return require_service("redis")


@pytest.fixture
def rabbitmq_port() -> int:
    return require_service("rabbitmq")


@pytest.fixture
def nats_port() -> int:
    return require_service("nats")
