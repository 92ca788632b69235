"""Structured logs that never carry a secret.

* :class:`Secret` wraps a password, client secret or token: ``repr`` and ``str`` show
  ``'***'``; only :meth:`Secret.reveal` gives the value, at the point of use.
* Every secret and every token obtained at run time is registered with
  :func:`register_secret`; the formatter replaces any registered value it meets in a
  finished log line, so a value leaked by a third-party message is still masked.
* Lines are JSON objects when stderr is not a terminal and short readable lines
  when it is.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Final

import orjson

__all__ = [
    "MASK",
    "Secret",
    "get_logger",
    "redact",
    "register_secret",
    "setup_logging",
]

MASK: Final = "***"
# Shorter values would mask ordinary words in every line (a demo password "admin"
# would hide the admin listener); they are still never logged, being Secret values.
_MIN_SECRET_LENGTH = 6
_MAX_REMEMBERED = 256

_lock = threading.Lock()
_secrets: dict[str, None] = {}


class Secret:
    """A secret string that does not show itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def register_secret(value: str) -> None:
    """Remember ``value`` so no log line ever shows it (the newest 256 are kept)."""
    if len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets.pop(value, None)
        _secrets[value] = None
        while len(_secrets) > _MAX_REMEMBERED:
            del _secrets[next(iter(_secrets))]


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by the mask."""
    with _lock:
        values = list(_secrets)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(payload, default=str).decode()
        return redact(line)


class ConsoleFormatter(logging.Formatter):
    """Readable lines for a terminal, extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return redact(line)


def setup_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure the root logger once, for the CLI; tests use caplog instead."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log lines would double our own request metrics.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"campaign_writer.{name}")
