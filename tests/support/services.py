"""Checks for the real services some tests use.

Under CI (``CI=true``) a missing service fails the test: CI starts every service
first (``.ci/run``), so a skip there would hide a broken environment. Elsewhere the
test skips with a message naming the service.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SERVICES = {
    "redis": 6379,
    "rabbitmq": 5672,
    "nats": 4222,
}


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def missing(what: str) -> NoReturn:
    """Fail under CI, where ``.ci/run`` provides everything; elsewhere skip saying ``what``."""
    if not IN_CI:
        pytest.skip(what)
    pytest.fail(f"{what} (CI=true: tests that need a service or tool never skip)")


def require_command(name: str, package: str) -> str:
    """Return the path of the command ``name``, or skip/fail naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        missing(f"the {name} command (package {package}) is not installed")
    return path


def require_service(name: str) -> int:
    """Return the service's port on 127.0.0.1, or skip/fail naming the service."""
    port = SERVICES[name]
    if not port_open(port):
        missing(f"{name} is not running on 127.0.0.1:{port}")
    return port


def require_node() -> str:
    """Return the path of ``node``, or skip/fail saying Node.js is missing."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        missing("Node.js and npm (node service for the SDK tests) are not installed")
    return node
