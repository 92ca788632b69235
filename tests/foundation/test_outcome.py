"""The retry decision as a pure function: every fault code, status and failure kind."""

from __future__ import annotations

import email.utils

import pytest

from campaign_writer.campaign.outcome import (
    AuthExpired,
    Fatal,
    Ok,
    Reject,
    Retry,
    Throttled,
    classify,
    parse_retry_after,
)
from campaign_writer.errors import AuthError, ResponseError, TransportError

from . import samples

WRAP = "SOP-330011 Error while executing the method 'Write' of service 'xtk:persist|xtk:session'."

# (faultcode, faultstring, detail) -> expected outcome type and code. Every code of the
# protocol facts' fault table (section 5.3) appears here; none of the codes only our
# simulator invents does.
FAULT_TABLE = [
    (
        "SOAP-ENV:Client",
        "XSV-350008 Session has expired or is invalid. Please reconnect.",
        "",
        AuthExpired,
        None,
    ),
    ("SOAP-ENV:Client", "XSV-350012 Invalid login or password", "", Fatal, "XSV-350012"),
    (
        "SOAP-ENV:Client",
        "XSV-350013 The '10.0.0.1' IP address via which you are connecting is not allowed",
        "",
        Fatal,
        "XSV-350013",
    ),
    (
        "SOAP-ENV:Server",
        WRAP,
        "XSV-350023 Unable to save document of type 'nms:recipient'.",
        Reject,
        "XSV-350023",
    ),
    (
        "SOAP-ENV:Client",
        "SOP-330006 The method 'Ingest' is not defined in SOAP service 'xtk:session'.",
        "",
        Fatal,
        "SOP-330006",
    ),
    ("SOAP-ENV:Server", "SOP-330024 Unspecified function library", "", Fatal, "SOP-330024"),
    (
        "SOAP-ENV:Server",
        WRAP,
        "ODB-240000 ODBC error: value too large. XSV-350023 Unable "
        "to save document of type 'dem:sampleTableStg'.",
        Reject,
        "ODB-240000",
    ),
]

# The faults of protocol facts section 5.4a, byte for byte as the sources quote them.
DUPLICATE_KEY = (
    "SOAP-ENV:Server",
    "Error while executing the method 'Write' of service 'xtk:persist'.",
    'PostgreSQL error: ERROR:  duplicate key violates unique constraint "nmsrecipient_id"'
    "Impossible to save document of type 'Recipients (nms:recipient)'",
)
BAD_LOGIN = (
    "SOAP-ENV:Client",
    "Error while reading parameters of method 'PushEvent' of service 'nms:rtEvent'.",
    "Invalid login or password. Connection denied.",
)
MASKED = (
    "SOAP-ENV:Error",
    "SOP-330023 An error occurred during the SOAP call. You don't have the required rights"
    " to view the detail.",
    "",
)


@pytest.mark.parametrize("status", [200, 500, 403, 401])
@pytest.mark.parametrize(("faultcode", "faultstring", "detail", "kind", "code"), FAULT_TABLE)
def test_fault_codes_decide_whatever_the_status(
    status: int, faultcode: str, faultstring: str, detail: str, kind: type, code: str | None
) -> None:
    """A Campaign code in a fault decides the outcome with HTTP 200, 500, 403 or 401 alike."""
    outcome = classify(status, {}, samples.fault(faultcode, faultstring, detail))
    assert isinstance(outcome, kind), outcome
    if code is not None:
        assert getattr(outcome, "code") == code  # noqa: B009
    assert faultstring.split()[0] in getattr(outcome, "reason", faultstring)


@pytest.mark.parametrize("status", [200, 500])
def test_codeless_duplicate_key_points_at_the_record(status: int) -> None:
    """The code-less database refusal of the sources suggests a record, by its words."""
    outcome = classify(status, {}, samples.fault(*DUPLICATE_KEY))
    assert outcome == Reject(
        f"HTTP {status} {DUPLICATE_KEY[0]}: {DUPLICATE_KEY[1]} {DUPLICATE_KEY[2]}",
        "duplicate-key",
        "record",
    )


@pytest.mark.parametrize("status", [200, 500, 401, 403])
def test_codeless_bad_login_on_a_business_call_is_fatal(status: int) -> None:
    """The code-less bad login, wrapped in a parameter error, is fatal: no record at fault."""
    outcome = classify(status, {}, samples.fault(*BAD_LOGIN))
    assert isinstance(outcome, Fatal), outcome
    assert outcome.code == "invalid-login"
    assert "Connection denied" in outcome.reason


def test_masked_fault_is_unknown_not_a_data_fault() -> None:
    """SOP-330023 hides its cause: unknown, for delivery to judge by the other records."""
    outcome = classify(500, {}, samples.fault(*MASKED))
    assert outcome == Reject(f"HTTP 500 {MASKED[0]}: {MASKED[1]}", "SOP-330023", "unknown")


@pytest.mark.parametrize(
    ("faultcode", "faultstring", "detail", "scope", "code"),
    [
        ("SOAP-ENV:Server", WRAP, "", "unknown", "SOP-330011"),
        ("SOAP-ENV:Server", "Internal error", "", "unknown", ""),
        ("SOAP-ENV:Client", "Bad request without code", "", "unknown", ""),
        ("SOAP-ENV:Server", WRAP, "QRY-120003 something no table lists", "unknown", "SOP-330011"),
        # A code our simulator invents means nothing to the writer; its words may.
        ("SOAP-ENV:Server", WRAP, "XSV-350101 Schema 'dem:nope' is unknown.", "unknown", ""),
        (
            "SOAP-ENV:Server",
            WRAP,
            "PGS-220000 PostgreSQL error: ERROR:  value too long for type character varying(64)",
            "record",
            "value-too-long",
        ),
        (
            "SOAP-ENV:Server",
            "Error while executing the method 'Ingest' of service 'xtk:persist|xtk:session'.",
            "",
            "unknown",
            "execution",
        ),
    ],
)
def test_faults_nothing_places_are_unknown(
    faultcode: str, faultstring: str, detail: str, scope: str, code: str
) -> None:
    """Without a known code or words, a fault is unknown: neither data nor transient."""
    outcome = classify(500, {}, samples.fault(faultcode, faultstring, detail))
    assert isinstance(outcome, Reject), outcome
    assert outcome.scope == scope
    if code:
        assert outcome.code == code
    assert not isinstance(outcome, Retry)


@pytest.mark.parametrize(
    ("faultstring", "code"),
    [
        ("Access denied for operator 'ops' on schema 'nms:recipient'", "access-denied"),
        ("The '192.0.2.7' IP address via which you connect is not allowed", "ip-not-allowed"),
        ("XSV-350106 Access denied", "access-denied"),
    ],
)
def test_codeless_access_faults_are_fatal(faultstring: str, code: str) -> None:
    """Access denied and IP refusals are fatal by their words, with or without a code."""
    outcome = classify(500, {}, samples.fault("SOAP-ENV:Client", faultstring, ""))
    assert isinstance(outcome, Fatal)
    assert outcome.code == code


@pytest.mark.parametrize(("status", "kind"), [(401, AuthExpired), (403, Fatal)])
def test_an_unplaced_fault_on_401_or_403_follows_the_status(status: int, kind: type) -> None:
    """A fault nothing places, answered 401 or 403, is about access: renew or stop."""
    assert isinstance(classify(status, {}, samples.fault(*MASKED)), kind)


@pytest.mark.parametrize("status", [200, 401, 500])
def test_session_expiry_as_raw_text_is_auth_expired(status: int) -> None:
    """The XSV-350008 text body means renew the session, on any status."""
    assert isinstance(classify(status, {}, samples.SESSION_EXPIRED_TEXT), AuthExpired)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (502, Retry),
        (503, Retry),
        (504, Retry),
        (500, Retry),
        (200, Retry),
        (401, AuthExpired),
        (403, Fatal),
        (404, Fatal),
        (408, Retry),
        (413, Reject),
        (400, Fatal),
    ],
)
def test_proxy_html_pages_follow_the_status(status: int, kind: type) -> None:
    """An HTML error page is judged by its status; a 2xx with HTML is unreadable, so retried."""
    assert isinstance(classify(status, {"Content-Type": "text/html"}, samples.PROXY_HTML), kind)


def test_success_carries_the_parsed_response() -> None:
    """A 2xx SOAP response is Ok with its outputs."""
    outcome = classify(200, {}, samples.ingest_response("u-1,u-2"))
    assert isinstance(outcome, Ok)
    assert outcome.response.method == "Ingest"


def test_truncated_success_body_is_retried() -> None:
    """A response cut short cannot be trusted as a success: retry."""
    outcome = classify(200, {}, samples.ingest_response("u-1")[:50])
    assert isinstance(outcome, Retry)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        (None, None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_throttled_reads_retry_after_seconds(header: str | None, expected: float | None) -> None:
    """HTTP 429 is Throttled, with Retry-After in seconds when present and sane."""
    headers = {} if header is None else {"retry-after": header}
    outcome = classify(429, headers, b"")
    assert outcome == Throttled(expected)


def test_retry_after_http_date_is_relative_to_now() -> None:
    """An HTTP-date Retry-After becomes seconds from the given clock."""
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_transport_failures_and_refused_bodies_are_retried() -> None:
    """Timeouts, resets and hostile bodies are transient; non-retriable errors are fatal."""
    assert isinstance(classify(None, None, None, TransportError("timed out")), Retry)
    assert isinstance(classify(None, None, None, ResponseError("too big")), Retry)
    assert isinstance(classify(None, None, None, AuthError("bad secret")), Fatal)
    assert isinstance(classify(200, {}, samples.BILLION_LAUGHS), Retry)
    assert isinstance(classify(None, None, None), Retry)


def test_classify_is_pure() -> None:
    """The same inputs always give equal outcomes."""
    body = samples.fault("SOAP-ENV:Server", WRAP, "XSV-350023 Unable to save document.")
    assert classify(500, {}, body) == classify(500, {}, body)
