"""Reading TOML tables into typed values, collecting every problem with its key path.

:class:`Section` wraps one table of a parsed TOML document. Each accessor takes a key
out of the table, checks its type and range, and returns the value or a default; a
wrong value is recorded as ``path.to.key: what is wrong`` and reading goes on, so
one pass reports every problem in a file. :meth:`Section.finish` reports the keys
nobody asked for, with a suggestion when one is close to a known key.

:mod:`campaign_writer.config` reads the whole file with it, and source modules use
it for the options of their ``[[sources]]`` block, so messages look the same
everywhere. Secret values never appear in a message.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from .logs import Secret

__all__ = [
    "MISSING",
    "SECRET_KEYS",
    "Section",
    "describe",
    "parse_duration",
    "parse_size",
    "split_listen",
]

T = TypeVar("T")


class _Missing:
    """The marker for 'this key has no default: it is required'."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

# Keys that hold a secret wherever they appear: they may come from the file, an
# environment variable (``<key>_env``) or a file (``<key>_file``), never from --set.
SECRET_KEYS: Final = frozenset({"password", "client_secret", "token", "secret"})

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def describe(value: object) -> str:
    """A short description of a TOML value for an error message."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as ``"512MiB"`` or ``"16 MB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is not None:
            unit = (match.group(2) or "B").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size in bytes or a string like '512MiB', got {describe(value)}")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"3h"``, ``"90m"``, ``"1h30m"``, ``"45s"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if parts and "".join(number + unit for number, unit in parts) == text:
            return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    raise ValueError(
        f"expected seconds or a duration like '3h', '90m', '45s', got {describe(value)}"
    )


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as a host and a port number."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets, as [{host}]:{port}")
    return host, port


def _underlaid(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in data.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _underlaid(value, below)
        else:
            merged[key] = value
    return merged


class Section:
    """One TOML table being read; problems go to a shared list as ``path: message``."""

    def __init__(
        self, data: object, path: str, problems: list[str], taken: list[str] | None = None
    ) -> None:
        self.path = path
        self.problems = problems
        # Every key path asked for, in order, shared with nested sections: what
        # `validate` lists with where each value came from.
        self.taken: list[str] = [] if taken is None else taken
        if isinstance(data, Mapping):
            self._data: dict[str, Any] = dict(data)
        else:
            if data is not None:
                self.problems.append(f"{path}: expected a table, got {describe(data)}")
            self._data = {}
        self._known: list[str] = []

    # --- plumbing ------------------------------------------------------------------

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str | None, message: str) -> None:
        where = self.key_path(key) if key is not None else self.path
        self.problems.append(f"{where}: {message}")

    def problems_for(self, key: str) -> bool:
        """True when a problem was already recorded for ``key`` (or ``key_env``...)."""
        prefix = self.key_path(key)
        return any(p.startswith(prefix) for p in self.problems)

    def has(self, key: str) -> bool:
        return key in self._data

    def peek(self, key: str) -> object:
        """The raw value of ``key`` (MISSING when absent), left for an accessor to take."""
        return self._data.get(key, MISSING)

    def keys(self) -> list[str]:
        """The keys not taken yet (for tables whose keys are names, like method limits)."""
        return list(self._data)

    def take(self, key: str) -> object:
        """The raw value of ``key`` (MISSING when absent), marking the key as known."""
        self._known.append(key)
        self.taken.append(self.key_path(key))
        return self._data.pop(key, MISSING)

    def underlay(self, defaults: Mapping[str, Any]) -> None:
        """Fill keys this table does not set from ``defaults`` (a preset); where both hold
        a table, the same rule applies inside it, so a preset's field is overridden key by
        key."""
        self._data = _underlaid(self._data, defaults)

    def rest(self) -> dict[str, Any]:
        """Every key not taken yet; the caller owns their validation from now on."""
        remaining, self._data = self._data, {}
        return remaining

    def finish(self) -> None:
        """Report every key that no accessor took."""
        for key in self._data:
            hint = difflib.get_close_matches(key, self._known, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.problem(key, f"unknown key{suffix}")
        self._data = {}

    def _absent(self, key: str, default: T | _Missing, fallback: T) -> T:
        """The value of a key that is not there: its default, or a problem if required."""
        if isinstance(default, _Missing):
            self.problem(key, "is required")
            return fallback
        return default

    # --- scalars -------------------------------------------------------------------

    def string(
        self,
        key: str,
        default: str | _Missing = MISSING,
        *,
        choices: Iterable[str] = (),
        allow_empty: bool = False,
    ) -> str:
        value = self.take(key)
        if value is MISSING:
            return self._absent(key, default, "")
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {describe(value)}")
            return default if isinstance(default, str) else ""
        options = tuple(choices)
        if options and value not in options:
            listed = ", ".join(repr(c) for c in options)
            self.problem(key, f"must be one of {listed}, got {value!r}")
            return default if isinstance(default, str) else options[0]
        if not value and not allow_empty:
            self.problem(key, "must not be empty")
        return value

    def optional_string(self, key: str) -> str | None:
        if not self.has(key):
            self._known.append(key)
            self.taken.append(self.key_path(key))
            return None
        return self.string(key)

    def integer(
        self,
        key: str,
        default: int | _Missing = MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self.take(key)
        if value is MISSING:
            return self._absent(key, default, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"expected an integer, got {describe(value)}")
            return default if isinstance(default, int) else 0
        self._in_range(key, value, minimum, maximum)
        return value

    def number(
        self,
        key: str,
        default: float | _Missing = MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float:
        value = self.take(key)
        if value is MISSING:
            return self._absent(key, default, 0.0)
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.problem(key, f"expected a number, got {describe(value)}")
            return default if isinstance(default, float | int) else 0.0
        if positive and not value > 0:
            self.problem(key, f"must be greater than 0, got {value}")
        self._in_range(key, value, minimum, maximum)
        return float(value)

    def _in_range(
        self, key: str, value: float, minimum: float | None, maximum: float | None
    ) -> None:
        if value != value or value in (float("inf"), float("-inf")):
            self.problem(key, "must be a finite number")
        elif minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum:g}, got {value}")
        elif maximum is not None and value > maximum:
            self.problem(key, f"must be at most {maximum:g}, got {value}")

    def boolean(self, key: str, default: bool | _Missing = MISSING) -> bool:
        value = self.take(key)
        if value is MISSING:
            return self._absent(key, default, False)
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {describe(value)}")
            return default if isinstance(default, bool) else False
        return value

    def size(self, key: str, default: int, *, minimum: int = 1) -> int:
        """Bytes: an integer or a string with a unit (``"1GiB"``)."""
        value = self.take(key)
        if value is MISSING:
            return default
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default
        if size < minimum:
            self.problem(key, f"must be at least {minimum} bytes, got {size}")
        return size

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        """Seconds: a number or a string with units (``"3h"``, ``"90m"``, ``"1h30m"``)."""
        value = self.take(key)
        if value is MISSING:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default
        if positive and seconds <= 0:
            self.problem(key, "must be longer than 0 s")
        return seconds

    def listen(self, key: str, default: str) -> str:
        """A ``host:port`` to listen on; port 0 picks a free port."""
        value = self.string(key, default)
        try:
            split_listen(value)
        except ValueError as exc:
            self.problem(key, str(exc))
        return value

    def path_value(self, key: str, *, must_exist: bool = False) -> Path | None:
        text = self.optional_string(key)
        if text is None:
            return None
        path = Path(text).expanduser()
        if must_exist and not path.exists():
            self.problem(key, f"no such file: {text}")
        return path

    def secret(self, key: str) -> Secret | None:
        """``key`` itself, or the variable named by ``<key>_env``, or ``<key>_file``.

        At most one of the three may be given. Values are never echoed in problems.
        """
        inline = self.take(key)
        env_name = self.take(f"{key}_env")
        file_name = self.take(f"{key}_file")
        given = [
            k
            for k, v in ((key, inline), (f"{key}_env", env_name), (f"{key}_file", file_name))
            if v is not MISSING
        ]
        if len(given) > 1:
            self.problem(key, f"give only one of {', '.join(given)}")
            return None
        if inline is not MISSING:
            if not isinstance(inline, str) or not inline:
                self.problem(key, "must be a non-empty string")
                return None
            return Secret(inline)
        if env_name is not MISSING:
            return self._secret_from_env(f"{key}_env", env_name)
        if file_name is not MISSING:
            return self._secret_from_file(f"{key}_file", file_name)
        return None

    def _secret_from_env(self, key: str, name: object) -> Secret | None:
        if not isinstance(name, str) or not name:
            self.problem(key, f"expected the name of an environment variable, got {describe(name)}")
            return None
        value = os.environ.get(name)
        if not value:
            self.problem(key, f"environment variable {name} is not set or empty")
            return None
        return Secret(value)

    def _secret_from_file(self, key: str, name: object) -> Secret | None:
        if not isinstance(name, str) or not name:
            self.problem(key, f"expected a file path, got {describe(name)}")
            return None
        try:
            text = Path(name).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            self.problem(key, f"cannot read {name}: {reason}")
            return None
        # Files written by editors and secret stores usually end with a newline.
        value = text.removesuffix("\n").removesuffix("\r")
        if not value:
            self.problem(key, f"{name} is empty")
            return None
        return Secret(value)

    # --- nesting -------------------------------------------------------------------

    def section(self, key: str) -> Section:
        value = self.take(key)
        data = None if value is MISSING else value
        return Section(data, self.key_path(key), self.problems, self.taken)

    def sections(self, key: str) -> list[Section]:
        """An array of tables (``[[key]]``), each as a Section named ``key[i]``."""
        value = self.take(key)
        if value is MISSING:
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected an array of tables ([[{key}]]), got {describe(value)}")
            return []
        base = self.key_path(key)
        return [
            Section(item, f"{base}[{i}]", self.problems, self.taken) for i, item in enumerate(value)
        ]

    def string_list(self, key: str) -> list[str]:
        """A string or an array of strings."""
        value = self.take(key)
        if value is MISSING:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, f"expected a string or an array of strings, got {describe(value)}")
            return []
        return [str(v) for v in value]
