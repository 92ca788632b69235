"""Casting event values to Campaign's text for every XTK type, and the errors when not."""

from __future__ import annotations

import datetime as dt
import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaign_writer.campaign.xtktypes import (
    INTEGER_RANGES,
    XTK_TYPES,
    cast,
    caster,
    format_datetime,
)
from campaign_writer.errors import RecordError, XmlTextError
from campaign_writer.simulator.xtktypes import check_for

ACCEPTED = [
    ("string", "hello", "hello"),
    ("string", 42, "42"),
    ("string", 1.5, "1.5"),
    ("string", "", ""),
    ("memo", "x" * 10_000, "x" * 10_000),
    ("memo", 7, "7"),
    ("byte", -128, "-128"),
    ("short", "32767", "32767"),
    ("long", 2**31 - 1, "2147483647"),
    ("long", "-2147483648", "-2147483648"),
    ("long", 12.0, "12"),
    ("int64", 2**63 - 1, "9223372036854775807"),
    ("int64", "-9223372036854775808", "-9223372036854775808"),
    ("double", 0.1, "0.1"),
    ("double", 10, "10"),
    ("double", "1e3", "1000.0"),
    ("double", -2.5e-300, "-2.5e-300"),
    ("float", 3.25, "3.25"),
    ("boolean", True, "true"),
    ("boolean", False, "false"),
    ("boolean", 1, "true"),
    ("boolean", "No", "false"),
    ("boolean", "YES", "true"),
    ("date", "2024-02-29", "2024-02-29"),
    ("date", "1956/05/04", "1956-05-04"),
    ("datetime", "2022-09-26 03:13:36.480Z", "2022-09-26 03:13:36.480Z"),
    ("datetime", "2024-05-01T12:34:56.789+02:00", "2024-05-01 10:34:56.789Z"),
    ("datetime", "2024-05-01T00:30:00-01:00", "2024-05-01 01:30:00.000Z"),
    ("datetime", "2024-05-01T23:59:59.999999Z", "2024-05-01 23:59:59.999Z"),
    ("datetime", "2020/12/31 12:34:56Z", "2020-12-31 12:34:56.000Z"),
    ("uuid", "E1E7C8B3-6F79-44DA-A72D-49ED0F73DB2C", "e1e7c8b3-6f79-44da-a72d-49ed0f73db2c"),
    ("uuid", "e1e7c8b36f7944daa72d49ed0f73db2c", "e1e7c8b3-6f79-44da-a72d-49ed0f73db2c"),
]

REFUSED = [
    ("string", True, "expected a string, got boolean"),
    ("string", {"a": 1}, "expected a string, got object"),
    ("string", "x" * 256, "is 256 characters long; string(255) holds at most 255"),
    ("memo", [1], "expected a string, got array"),
    ("byte", 128, "128 is out of range for byte (-128 to 127)"),
    ("short", -32769, "out of range for short"),
    ("long", 2**31, "2147483648 is out of range for long (-2147483648 to 2147483647)"),
    ("long", "12a", "'12a' is not an integer (long)"),
    ("long", 1.5, "1.5 is not a whole number (long)"),
    ("long", True, "expected an integer (long), got boolean"),
    ("long", "9" * 5000, "is not an integer"),
    ("int64", 2**63, "out of range for int64"),
    ("double", "abc", "'abc' is not a number (double)"),
    ("double", "NaN", "is not a number"),
    ("double", 10**400, "is out of range for double"),
    ("double", None, "expected a number (double), got null"),
    ("float", 1e39, "is out of range for float"),
    ("boolean", "maybe", "expected a boolean (true/false, 0/1, yes/no), got 'maybe'"),
    ("boolean", 2, "expected a boolean (true/false, 0/1, yes/no), got number"),
    ("date", "2023-02-29", "is not a valid date (day is out of range for month)"),
    ("date", "29/02/2024", "is not a date of the form YYYY-MM-DD"),
    ("date", 20240229, "expected a date string YYYY-MM-DD, got number"),
    ("datetime", "2024-05-01T12:00:00", "has no UTC offset; add 'Z' or '+HH:MM'"),
    ("datetime", "yesterday", "'yesterday' is not an ISO 8601 date-time"),
    ("datetime", "2024-13-01T00:00:00Z", "is not an ISO 8601 date-time"),
    ("datetime", 1714560000, "expected an ISO 8601 date-time string, got number"),
    ("datetime", "0001-01-01T00:00:00+01:00", "is out of range in UTC"),
    ("uuid", "not-a-uuid", "'not-a-uuid' is not a UUID"),
    ("uuid", 5, "expected a UUID string, got number"),
]


@pytest.mark.parametrize(("type_name", "value", "expected"), ACCEPTED)
def test_each_type_casts_to_campaign_text(type_name: str, value: object, expected: str) -> None:
    """Every XTK type turns the JSON values it accepts into Campaign's text form."""
    assert cast(type_name, value, "f") == expected


@pytest.mark.parametrize(("type_name", "value", "message"), REFUSED)
def test_each_type_refuses_with_the_field_and_the_fault(
    type_name: str, value: object, message: str
) -> None:
    """A value a type cannot take is refused with the field's name and what was wrong."""
    with pytest.raises(RecordError) as caught:
        cast(type_name, value, "user.age")
    assert caught.value.field == "user.age"
    assert message in str(caught.value)
    assert str(caught.value).startswith("user.age: ")


def test_every_type_is_covered_by_the_tables_above() -> None:
    """The accepted and refused tables exercise every type the module offers."""
    assert {row[0] for row in ACCEPTED} == set(XTK_TYPES)
    assert {row[0] for row in REFUSED} == set(XTK_TYPES)


def test_string_length_is_configurable_and_counts_characters() -> None:
    """string(n) allows n characters, whatever their UTF-8 size."""
    cast_64 = caster("string", 64)
    assert cast_64("é" * 64, "id") == "é" * 64
    with pytest.raises(RecordError, match=r"id: is 65 characters long; string\(64\)"):
        cast_64("é" * 65, "id")


def test_text_types_follow_the_invalid_character_policy() -> None:
    """Control characters are refused by 'reject' and removed by 'strip', for text types."""
    with pytest.raises(XmlTextError, match="U\\+0001"):
        caster("string", 10, "reject")("a\x01b", "name")
    assert caster("string", 10, "strip")("a\x01b", "name") == "ab"
    assert caster("memo", None, "strip")("\ud800ok", "note") == "ok"


def test_unknown_type_is_a_value_error() -> None:
    """Asking for a type the module does not know fails loudly (config reports it)."""
    with pytest.raises(ValueError, match="unknown type 'strng'"):
        caster("strng")


@given(st.sampled_from(sorted(INTEGER_RANGES)), st.integers(min_value=-(2**70), max_value=2**70))
def test_integers_cast_exactly_or_are_refused_by_range(type_name: str, value: int) -> None:
    """An integer is written exactly when it fits the type and refused when it does not."""
    low, high = INTEGER_RANGES[type_name]
    if low <= value <= high:
        assert cast(type_name, value, "n") == str(value)
        assert cast(type_name, str(value), "n") == str(value)
    else:
        with pytest.raises(RecordError, match="out of range"):
            cast(type_name, value, "n")


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_doubles_round_trip_exactly(value: float) -> None:
    """A finite double's text reads back as the same double."""
    assert float(cast("double", value, "x")) == value


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-7, minutes=-30))]),
    )
)
def test_datetimes_become_the_same_instant_in_utc(moment: dt.datetime) -> None:
    """Any ISO 8601 date-time with an offset is written as the same instant (to the ms) in UTC."""
    text = cast("datetime", moment.isoformat(), "at")
    parsed = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs((parsed - moment).total_seconds()) < 0.001
    assert text == format_datetime(moment)


@pytest.mark.parametrize(("type_name", "value", "expected"), ACCEPTED)
def test_every_cast_value_passes_the_simulators_column_check(
    type_name: str, value: object, expected: str
) -> None:
    """What the writer sends is what the simulator's PostgreSQL-like checks accept."""
    check = check_for(type_name, 10_000 if type_name == "string" else None)
    assert check is None or check(expected) is None
    assert not (type_name == "double" and not math.isfinite(float(expected)))


def test_integers_beyond_64_bits_are_refused_not_rounded() -> None:
    """JSON decodes a 23-digit integer as a double; string and integer fields refuse it
    (saying to send a string) instead of storing rounded digits."""
    value = orjson.loads(b"12345678901234567890123")
    assert type(value) is float
    for type_name in ("string", "int64"):
        with pytest.raises(RecordError, match="send it as a string"):
            caster(type_name)(value, "id")
    assert caster("string")(orjson.loads(b"18446744073709551615"), "id") == "18446744073709551615"
    assert caster("double")(value, "d") == "1.2345678901234568e+22"  # doubles are approximate
