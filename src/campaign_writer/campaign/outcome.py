"""The retry decision: a pure function from what Campaign answered to what to do next.

``classify(status, headers, body, error)`` returns one of

* :class:`Ok` -- the call succeeded; the parsed response is attached;
* :class:`Throttled` -- HTTP 429; ``retry_after`` in seconds when the server said;
* :class:`Retry` -- transient and not Campaign's answer: timeouts, resets, proxy
  pages, unreadable or cut bodies;
* :class:`AuthExpired` -- HTTP 401, XSV-350008 or its words: renew once and resend;
* :class:`Reject` -- Campaign refused the call with a fault. ``scope`` says what the
  fault suggests: ``record`` when its code or words point at the data (a database
  refusal, a duplicate key), ``unknown`` when nothing places it (no code, a masked
  SOP-330023, a bare "Error while executing the method", a code no table lists).
  Neither proves a record bad: delivery decides that from what happens to records
  sent the same way, so a fault every record meets dead-letters nothing;
* :class:`Fatal` -- nothing works until an operator acts: bad credentials, an IP
  not allowed, access denied, an unknown method or URL, with or without a code.

A fault is read for everything it carries: its codes, then the words of faultstring
and detail (:mod:`campaign_writer.campaign.codes`), then the HTTP status. Campaign faults
arrive with HTTP 200, 500, 403 or 401, so the body is always read first. Backoff
timing lives elsewhere; nothing here sleeps or touches the network.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..errors import CampaignWriterError, ResponseError
from .codes import CODES, CodeClass, text_class
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
    scope: Literal["record", "unknown"] = "unknown"


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


def _decide(codes: tuple[str, ...], text: str) -> tuple[CodeClass | None, str]:
    """What a fault's codes and words suggest, and the code or short name to report.

    Credentials and access decide first, wherever they appear: a bad login arrives
    wrapped in a parameter error. Then anything that points at the data. A wrapper
    or a masked code alone decides nothing (``None``): the cause is unknown.
    """
    known = [(code, CODES[code]) for code in codes if code in CODES]
    by_text = text_class(text)
    for wanted in (CodeClass.AUTH, CodeClass.FATAL):
        for code, kind in known:
            if kind is wanted:
                return kind, code
        if by_text is not None and by_text[0] is wanted:
            return by_text
    for code, kind in known:
        if kind is CodeClass.DATA:
            return kind, code
    if by_text is not None and by_text[0] is CodeClass.DATA:
        return by_text
    # Unknown cause: report the first code (SOP-330023, SOP-330011 or one no table
    # lists), else the words' short name.
    if codes:
        return None, codes[0]
    return None, by_text[1] if by_text is not None else ""


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
        kind, code = _decide(parsed.codes, parsed.text())
        if kind is CodeClass.AUTH:
            return AuthExpired(reason)
        if kind is CodeClass.FATAL:
            return Fatal(reason, code)
        if kind is CodeClass.DATA:
            return Reject(reason, code, "record")
        if status in (401, 403):
            return _from_status(status, reason)
        return Reject(reason, code, "unknown")
    if isinstance(parsed, NotSoap):
        reason = f"HTTP {status}: {parsed.snippet}" if parsed.snippet else f"HTTP {status}"
        kind, code = _decide(parsed.codes, parsed.snippet)
        if kind is CodeClass.AUTH:
            return AuthExpired(reason)
        if kind is CodeClass.FATAL:
            return Fatal(reason, code)
        if 200 <= status < 300:
            return Retry(f"unreadable response to a successful call: {reason}")
        return _from_status(status, reason)
    if 200 <= status < 300:
        return Ok(parsed)
    return _from_status(status, f"HTTP {status} with a {parsed.method}Response body")
