"""XTK attribute types and how the simulator checks a value against one.

A real instance stores staging records in PostgreSQL, so a value that does not fit
its column is refused by the database, not by Campaign: the simulator answers those
with ``PGS-220000`` (string over its length, number out of range, unparseable
date). Checks are built once per schema attribute and return an error text or
``None``; string columns, the common case, are checked with a bare ``len`` in the
hot loop instead of a function call (see :mod:`.staging`).

An empty value is always accepted: Campaign writes it as NULL (or 0 for integers).
Values are stored as sent; the simulator does not reformat them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

__all__ = [
    "INTEGER_RANGES",
    "STRING_TYPES",
    "TEXT_TYPES",
    "XTK_TYPES",
    "Check",
    "check_for",
]

Check = Callable[[str], str | None]

# Types whose values are free text; only "string" has a length limit.
STRING_TYPES = frozenset({"string", "primarykey"})
TEXT_TYPES = frozenset({"memo", "CDATA", "html"})

INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "byte": (-(2**7), 2**7 - 1),
    "short": (-(2**15), 2**15 - 1),
    "long": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

XTK_TYPES = frozenset(
    STRING_TYPES
    | TEXT_TYPES
    | set(INTEGER_RANGES)
    | {
        "uuid",
        "boolean",
        "float",
        "double",
        "date",
        "datetime",
        "datetimetz",
        "datetimenotz",
        "time",
        "timespan",
    }
)

_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_BOOLEANS = frozenset({"true", "false", "0", "1", "yes", "no"})
# Campaign writes ``2022-09-26 03:13:36.480Z``; the SDK sends ISO ``...T...Z``; v7
# documents ``YYYY/MM/DD HH:MM:SS`` as the internal XML form. All are accepted.
_DATETIME = re.compile(
    r"(\d{4})[-/](\d{2})[-/](\d{2})"
    r"(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?)?"
    r"\s*(?:Z|[+-]\d{2}(?::?\d{2})?)?"
)
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?")


def _integer(type_name: str) -> Check:
    low, high = INTEGER_RANGES[type_name]

    def check(value: str) -> str | None:
        if not value:
            return None
        if _INTEGER.fullmatch(value) is None:
            return f"invalid input syntax for type {type_name}: {value!r}"
        if not low <= int(value) <= high:
            return f"value {value} is out of range for type {type_name}"
        return None

    return check


def _decimal(type_name: str) -> Check:
    def check(value: str) -> str | None:
        if value and _DECIMAL.fullmatch(value) is None:
            return f"invalid input syntax for type {type_name}: {value!r}"
        return None

    return check


def _boolean(value: str) -> str | None:
    if value and value.lower() not in _BOOLEANS:
        return f"invalid input syntax for type boolean: {value!r}"
    return None


def _uuid(value: str) -> str | None:
    if value and _UUID.fullmatch(value) is None:
        return f"invalid input syntax for type uuid: {value!r}"
    return None


def _datetime(type_name: str) -> Check:
    def check(value: str) -> str | None:
        if not value:
            return None
        match = _DATETIME.fullmatch(value)
        if match is None:
            return f"invalid input syntax for type {type_name}: {value!r}"
        year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups()[:6])
        try:
            dt.datetime(year, month, day, hour, minute, second)
        except ValueError:
            return f"date/time field value out of range: {value!r}"
        return None

    return check


def _time(value: str) -> str | None:
    if not value:
        return None
    match = _TIME.fullmatch(value)
    if match is None or int(match[1]) > 23 or int(match[2]) > 59 or int(match[3] or 0) > 59:
        return f"invalid input syntax for type time: {value!r}"
    return None


def _string(length: int) -> Check:
    def check(value: str) -> str | None:
        if len(value) > length:
            return f"value too long for type character varying({length})"
        return None

    return check


def check_for(type_name: str, length: int | None) -> Check | None:
    """The check for one attribute, or ``None`` when any text is valid."""
    if type_name in STRING_TYPES:
        return _string(length) if length else None
    if type_name in TEXT_TYPES:
        return None
    if type_name in INTEGER_RANGES:
        return _integer(type_name)
    if type_name in ("float", "double", "timespan"):
        return _decimal(type_name)
    if type_name == "boolean":
        return _boolean
    if type_name == "uuid":
        return _uuid
    if type_name in ("date", "datetime", "datetimetz", "datetimenotz"):
        return _datetime(type_name)
    if type_name == "time":
        return _time
    raise ValueError(f"unknown XTK type {type_name!r}")
