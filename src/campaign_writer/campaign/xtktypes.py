"""Casting event values (JSON) to the text Campaign expects for an XTK type.

A :class:`Caster` is built once per route field (``caster(type, length, policy)``)
and called for every event: ``cast(value, field) -> str``. It either returns the
attribute text or raises :class:`~campaign_writer.errors.RecordError` naming the
field and saying what was wrong, so a rejection can be shown to whoever sent it.

==========  ====================================  ==================================
type        accepts                               writes
==========  ====================================  ==================================
string      string, number; at most ``length``    the text (numbers in JSON form)
memo        string, number; no length limit      the text
byte        integer -128..127 (number or string)  decimal
short       16-bit integer                        decimal
long        32-bit integer                        decimal
int64       64-bit integer                        decimal
float       finite number (single precision)      shortest round-trip decimal
double      finite number                         shortest round-trip decimal
boolean     true/false, 0/1, "yes"/"no"           ``true`` / ``false``
date        ``YYYY-MM-DD`` (or ``YYYY/MM/DD``)    ``YYYY-MM-DD``
datetime    ISO 8601 with an offset or ``Z``      ``YYYY-MM-DD HH:MM:SS.mmmZ`` in UTC
uuid        any form Python's uuid takes          lower case with hyphens
==========  ====================================  ==================================

Text types are also checked for characters XML 1.0 cannot carry, per the intake
policy (``reject`` or ``strip``); other types only ever produce ASCII. A datetime
without an offset is refused rather than guessed: Campaign stores UTC, and a wrong
guess would shift every value silently.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Callable
from typing import Final

from ..errors import RecordError
from .xmltext import XmlTextPolicy, clean_text

__all__ = [
    "DEFAULT_STRING_LENGTH",
    "INTEGER_RANGES",
    "TEXT_TYPES",
    "XTK_TYPES",
    "Caster",
    "cast",
    "caster",
    "format_datetime",
    "json_type",
    "text_length",
]

Caster = Callable[[object, str], str]

DEFAULT_STRING_LENGTH: Final = 255  # Campaign's length for a string attribute without one

INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    "byte": (-(2**7), 2**7 - 1),
    "short": (-(2**15), 2**15 - 1),
    "long": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
TEXT_TYPES: Final = frozenset({"string", "memo"})
XTK_TYPES: Final = (
    "string",
    "memo",
    "byte",
    "short",
    "long",
    "int64",
    "float",
    "double",
    "boolean",
    "date",
    "datetime",
    "uuid",
)

_FLOAT_MAX = 3.4028234663852886e38
# At most 20 digits: every 64-bit value fits, and int() never meets a giant string.
_INTEGER_TEXT = re.compile(r"[+-]?\d{1,20}")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATE_TEXT = re.compile(r"(\d{4})[-/](\d{2})[-/](\d{2})")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_UTC = dt.UTC


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


# JSON decoding gives a double for an integer beyond 64 bits; from 2**53 on a double
# no longer holds every integer, so its digits are not the ones that were sent.
_EXACT_LIMIT = 2.0**53


def _inexact(value: float, field: str) -> RecordError:
    return RecordError(
        f"the number {value:.17g} is too large to keep digit for digit; send it as a string",
        field,
    )


def _number_text(value: float) -> str:
    # repr is the shortest text that reads back as the same double, e.g. 0.1 -> "0.1".
    return repr(value) if isinstance(value, float) else str(value)


def _text(length: int | None, policy: XmlTextPolicy) -> Caster:
    def cast_text(value: object, field: str) -> str:
        if type(value) is str:
            text = value
        elif type(value) is int or type(value) is float:
            if type(value) is float and abs(value) >= _EXACT_LIMIT and value.is_integer():
                # Text keeps digits: a double standing for a huge integer has lost some.
                raise _inexact(value, field)
            text = _number_text(value)
        else:
            raise RecordError(f"expected a string, got {json_type(value)}", field)
        text = clean_text(text, field, policy)
        if length is not None and len(text) > length:
            raise RecordError(
                f"is {len(text)} characters long; string({length}) holds at most {length}",
                field,
            )
        return text

    return cast_text


def _integer(type_name: str) -> Caster:
    low, high = INTEGER_RANGES[type_name]

    def cast_integer(value: object, field: str) -> str:
        if type(value) is int:
            number = value
        elif type(value) is str:
            if _INTEGER_TEXT.fullmatch(value) is None:
                raise RecordError(f"{_shown(value)} is not an integer ({type_name})", field)
            number = int(value)
        elif type(value) is float:
            if not value.is_integer():
                raise RecordError(f"{value} is not a whole number ({type_name})", field)
            if abs(value) >= _EXACT_LIMIT:
                raise _inexact(value, field)
            number = int(value)
        else:
            raise RecordError(f"expected an integer ({type_name}), got {json_type(value)}", field)
        if not low <= number <= high:
            raise RecordError(f"{number} is out of range for {type_name} ({low} to {high})", field)
        return str(number)

    return cast_integer


def _decimal(type_name: str) -> Caster:
    limit = _FLOAT_MAX if type_name == "float" else math.inf

    def cast_decimal(value: object, field: str) -> str:
        if type(value) is int or type(value) is float:
            number: float = value
        elif type(value) is str:
            if _DECIMAL_TEXT.fullmatch(value) is None:
                raise RecordError(f"{_shown(value)} is not a number ({type_name})", field)
            number = float(value)
        else:
            raise RecordError(f"expected a number ({type_name}), got {json_type(value)}", field)
        try:
            magnitude = abs(float(number))
        except OverflowError:  # an integer beyond any double
            magnitude = math.inf
        if not magnitude <= limit or magnitude == math.inf:
            raise RecordError(f"{_shown(str(value))} is out of range for {type_name}", field)
        return _number_text(number)

    return cast_decimal


def _boolean(value: object, field: str) -> str:
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int and value in (0, 1):
        return "true" if value else "false"
    if type(value) is str:
        lowered = value.lower()
        if lowered in _TRUE:
            return "true"
        if lowered in _FALSE:
            return "false"
        raise RecordError(
            f"expected a boolean (true/false, 0/1, yes/no), got {_shown(value)}", field
        )
    raise RecordError(
        f"expected a boolean (true/false, 0/1, yes/no), got {json_type(value)}", field
    )


def _date(value: object, field: str) -> str:
    if type(value) is not str:
        raise RecordError(f"expected a date string YYYY-MM-DD, got {json_type(value)}", field)
    match = _DATE_TEXT.fullmatch(value)
    if match is None:
        raise RecordError(f"{_shown(value)} is not a date of the form YYYY-MM-DD", field)
    year, month, day = int(match[1]), int(match[2]), int(match[3])
    try:
        dt.date(year, month, day)
    except ValueError as exc:
        raise RecordError(f"{_shown(value)} is not a valid date ({exc})", field) from None
    return f"{year:04d}-{month:02d}-{day:02d}"


def format_datetime(moment: dt.datetime) -> str:
    """Campaign's datetime text: UTC, milliseconds, ``Z`` (``2022-09-26 03:13:36.480Z``)."""
    utc = moment.astimezone(_UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def _datetime(value: object, field: str) -> str:
    if type(value) is not str:
        raise RecordError(f"expected an ISO 8601 date-time string, got {json_type(value)}", field)
    text = value
    if len(text) >= 10 and text[4] == "/" and text[7] == "/":
        text = f"{text[:4]}-{text[5:7]}-{text[8:]}"  # Campaign v7's YYYY/MM/DD form
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"{_shown(value)} is not an ISO 8601 date-time", field) from None
    if moment.tzinfo is None:
        raise RecordError(
            f"{_shown(value)} has no UTC offset; add 'Z' or '+HH:MM' so it is not guessed",
            field,
        )
    try:
        return format_datetime(moment)
    except OverflowError:
        raise RecordError(f"{_shown(value)} is out of range in UTC", field) from None


def _uuid(value: object, field: str) -> str:
    if type(value) is not str:
        raise RecordError(f"expected a UUID string, got {json_type(value)}", field)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise RecordError(f"{_shown(value)} is not a UUID", field) from None


def text_length(type_name: str, length: int | None) -> int | None:
    """The most characters a value of this type may have: string and memo only."""
    if type_name == "string":
        return length or DEFAULT_STRING_LENGTH
    return length if type_name == "memo" else None


def caster(type_name: str, length: int | None = None, policy: XmlTextPolicy = "reject") -> Caster:
    """The cast function for one field; ValueError for a type this module does not know."""
    if type_name in TEXT_TYPES:
        return _text(text_length(type_name, length), policy)
    if type_name in INTEGER_RANGES:
        return _integer(type_name)
    if type_name in ("float", "double"):
        return _decimal(type_name)
    if type_name == "boolean":
        return _boolean
    if type_name == "date":
        return _date
    if type_name == "datetime":
        return _datetime
    if type_name == "uuid":
        return _uuid
    raise ValueError(f"unknown type {type_name!r}")


def cast(
    type_name: str,
    value: object,
    field: str,
    length: int | None = None,
    policy: XmlTextPolicy = "reject",
) -> str:
    """Cast one value (convenience for tests and one-off use; routes keep their casters)."""
    return caster(type_name, length, policy)(value, field)
