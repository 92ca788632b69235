"""The retry decision: a pure function from what Campaign answered to what to do next.

``classify(status, headers, body, error)`` returns one of

* :class:`Ok` -- the call succeeded; the parsed response is attached;
* :class:`Throttled` -- HTTP 429; ``retry_after`` in seconds when the server said;
* :class:`Retry` -- transient: 5xx without a data fault, timeouts, resets, unreadable
  bodies;
* :class:`AuthExpired` -- HTTP 401 or XSV-350008: renew the session or token once;
* :class:`Reject` -- a data fault on the records; ``scope`` says whether bisection can
  isolate it (``record``), every record of the lane would fail (``batch``), or the
  method refuses collection documents (``collection``);
* :class:`Fatal` -- nothing works until an operator acts: bad credentials, access
  denied, unknown method or URL.

Campaign faults arrive with HTTP 200, 500, 403 or 401, so the body is always read
first and the status only decides what the body does not. Backoff timing lives in
the dispatcher; nothing here sleeps or touches the network.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .codes import CODES, EXECUTION_ERROR, CodeClass
from .errors import CampaignWriterError, ResponseError
from .soap import DEFAULT_MAX_RESPONSE_BYTES, NotSoap, SoapFault, SoapResponse, parse_body

__all__ = [
    "AuthExpired",
    "Fatal",
    "Ok",
    "Outcome",
    "Reject",
    "Retry",
    "Throttled",
    "classify",
    "parse_retry_after",
]


@dataclass(frozen=True, slots=True)
class Ok:
    response: SoapResponse


@dataclass(frozen=True, slots=True)
class Throttled:
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str


@dataclass(frozen=True, slots=True)
class AuthExpired:
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    code: str
    scope: Literal["record", "batch", "collection"] = "record"


@dataclass(frozen=True, slots=True)
class Fatal:
    reason: str
    code: str = ""


Outcome = Ok | Throttled | Retry | AuthExpired | Reject | Fatal


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _from_codes(codes: tuple[str, ...], reason: str) -> Outcome | None:
    """The first code with a decisive class decides; wrappers defer to their cause."""
    wrapped = False
    for code in codes:
        kind = CODES.get(code)
        if kind is None:
            continue
        if kind is CodeClass.WRAPPER:
            wrapped = True
        elif kind is CodeClass.AUTH:
            return AuthExpired(reason)
        elif kind is CodeClass.FATAL:
            return Fatal(reason, code)
        elif kind is CodeClass.DATA:
            return Reject(reason, code, "record")
        elif kind is CodeClass.SCHEMA:
            return Reject(reason, code, "batch")
        else:
            return Reject(reason, code, "collection")
    if wrapped:
        # "Error while executing the method" with no known cause after it: the
        # method ran and failed on what we sent, so treat it as a data fault.
        return Reject(reason, EXECUTION_ERROR, "record")
    return None


def _from_status(status: int, reason: str) -> Outcome:
    if status == 401:
        return AuthExpired(reason)
    if status in (403, 404, 405):
        return Fatal(reason, f"HTTP-{status}")
    if status == 413:
        return Reject(reason, "HTTP-413", "record")
    if status == 408 or status >= 500 or 200 <= status < 300:
        return Retry(reason)
    return Fatal(reason, f"HTTP-{status}")


def classify(
    status: int | None,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    error: BaseException | None = None,
    *,
    now: float | None = None,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> Outcome:
    """Decide what a call's result means. Pure: no I/O, no sleeping, no logging."""
    if error is not None:
        retriable = isinstance(error, CampaignWriterError) and error.retriable
        reason = f"{type(error).__name__}: {error}"
        return Retry(reason) if retriable else Fatal(reason)
    if status is None:
        return Retry("no response")
    if status == 429:
        return Throttled(parse_retry_after(_header(headers, "Retry-After"), now))
    try:
        parsed = parse_body(body or b"", max_bytes)
    except ResponseError as exc:
        return Retry(f"HTTP {status}: {exc}")
    if isinstance(parsed, SoapFault):
        reason = f"HTTP {status} {parsed.faultcode}: {parsed.text()}"
        decided = _from_codes(parsed.codes, reason)
        if decided is not None:
            return decided
        if status in (401, 403):
            return _from_status(status, reason)
        if parsed.faultcode.endswith("Client"):
            return Reject(reason, "", "record")
        return Retry(reason)
    if isinstance(parsed, NotSoap):
        reason = f"HTTP {status}: {parsed.snippet}" if parsed.snippet else f"HTTP {status}"
        decided = _from_codes(parsed.codes, reason)
        if isinstance(decided, (AuthExpired, Fatal)):
            return decided
        if 200 <= status < 300:
            return Retry(f"unreadable response to a successful call: {reason}")
        return _from_status(status, reason)
    if 200 <= status < 300:
        return Ok(parsed)
    return _from_status(status, f"HTTP {status} with a {parsed.method}Response body")
