"""Request envelopes and hardened response parsing."""

from __future__ import annotations

import time
import tracemalloc
from urllib.parse import unquote

import pytest
from lxml import etree

from campaign_writer.campaign.documents import StagingRecord
from campaign_writer.campaign.soap import (
    DEFAULT_URNS,
    LITERAL_XML_NS,
    METHODS,
    SOAP_ENV_NS,
    XSI_NS,
    Credentials,
    NotSoap,
    Param,
    SoapFault,
    SoapResponse,
    WireOptions,
    build_request,
    parse_body,
    parse_logon,
    parse_uuids,
    parse_xml,
)
from campaign_writer.errors import AuthError, ResponseError
from tests.support.documents import build_collection

from . import samples

SESSION = Credentials(session_token="___5c0a1b2c-3d4e", security_token="@sec+tok==")
BEARER = Credentials(bearer_token="eyJhbGciOi.bearer")
DOC = build_collection("dem:sampleTableStg", [StagingRecord({"id": "1"}, key="@id")])


def _method_element(body: bytes) -> etree._Element:
    root = parse_xml(body)
    assert root.tag == f"{{{SOAP_ENV_NS}}}Envelope"
    soap_body = root.find(f"{{{SOAP_ENV_NS}}}Body")
    assert soap_body is not None and len(soap_body) == 1
    return soap_body[0]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_puts_session_token_first_in_its_urn(method: str) -> None:
    """Each method's envelope uses its default URN and the session token as parameter one."""
    request = build_request(method, [Param("doc", "document", DOC)], SESSION, WireOptions())
    element = _method_element(request.body)
    urn = DEFAULT_URNS[method]
    assert element.tag == f"{{urn:{urn}}}{method}"
    assert request.headers["SOAPAction"] == f"{urn}#{method}"
    first = element[0]
    assert first.tag == "sessiontoken"
    assert first.text == SESSION.session_token
    assert first.get(f"{{{XSI_NS}}}type") == "xsd:string"


def test_parameters_keep_their_order_and_types() -> None:
    """Positional parameters appear in the given order with the SDK's xsi:types."""
    params = [
        Param("pk", "string", "xtk:schema|xtk:session"),
        Param("md5", "string", ""),
        Param("mustExist", "boolean", "false"),
        Param("count", "int", "7"),
        Param("big", "long", "9007199254740993"),
        Param("parameters", "element", '<parameters rememberMe="true"/>'),
        Param("doc", "document", DOC),
    ]
    request = build_request("GetEntityIfMoreRecent", params, SESSION, WireOptions())
    children = list(_method_element(request.body))
    assert [c.tag for c in children] == ["sessiontoken", *(p.name for p in params)]
    types = [c.get(f"{{{XSI_NS}}}type") for c in children[1:]]
    assert types == [
        "xsd:string",
        "xsd:string",
        "xsd:boolean",
        "xsd:int",
        "xsd:long",
        "ns:Element",
        "",
    ]
    assert children[6].get(f"{{{SOAP_ENV_NS}}}encodingStyle") == LITERAL_XML_NS
    assert children[7][0].tag == "sampleTableStg-collection"
    assert children[7][0][0].get("_key") == "@id"


def test_session_mode_carries_tokens_in_cookie_headers_and_soap_header() -> None:
    """Session tokens travel as cookie, X-Session-Token, X-Security-Token and SOAP header."""
    request = build_request("Ingest", [Param("doc", "document", DOC)], SESSION, WireOptions())
    assert request.headers["Cookie"] == f"__sessiontoken={SESSION.session_token}"
    assert request.headers["X-Security-Token"] == SESSION.security_token
    assert request.headers["X-Session-Token"] == SESSION.session_token
    assert "Authorization" not in request.headers
    header = parse_xml(request.body).find(f"{{{SOAP_ENV_NS}}}Header")
    assert header is not None
    assert header.findtext("Cookie") == f"__sessiontoken={SESSION.session_token}"
    assert header.findtext("X-Security-Token") == SESSION.security_token


def test_ims_mode_sends_bearer_and_empty_session_token() -> None:
    """With an IMS token: Authorization Bearer, empty sessiontoken, no cookie or token headers."""
    request = build_request("Ingest", [Param("doc", "document", DOC)], BEARER, WireOptions())
    assert request.headers["Authorization"] == f"Bearer {BEARER.bearer_token}"
    for name in ("Cookie", "X-Security-Token", "X-Session-Token"):
        assert name not in request.headers
    element = _method_element(request.body)
    assert element[0].tag == "sessiontoken" and not element[0].text
    header = parse_xml(request.body).find(f"{{{SOAP_ENV_NS}}}Header")
    assert header is not None and header.find("Cookie") is None
    assert header.findtext("X-Security-Token") == ""


def test_wire_options_change_urn_quoting_query_and_content_type() -> None:
    """URN per method, quoted SOAPAction, ?soapAction= and Content-Type follow WireOptions."""
    wire = WireOptions(
        urns={"Ingest": "xtk:session"},
        content_type="text/xml; charset=utf-8",
        soap_action_quoted=True,
        method_in_url=True,
    )
    request = build_request("Ingest", [Param("doc", "document", DOC)], SESSION, wire)
    assert request.headers["SOAPAction"] == '"xtk:session#Ingest"'
    assert request.headers["Content-Type"] == "text/xml; charset=utf-8"
    path, _, query = request.path.partition("?")
    assert path == "/nl/jsp/soaprouter.jsp"
    assert query == "soapAction=xtk%3Asession%23Ingest"
    assert unquote(query.split("=", 1)[1]) == "xtk:session#Ingest"
    assert _method_element(request.body).tag == "{urn:xtk:session}Ingest"


def test_tokens_with_markup_characters_are_escaped() -> None:
    """A token holding & or < cannot break the envelope."""
    creds = Credentials(session_token="a&b<c", security_token="x>y&")
    element = _method_element(build_request("Logoff", [], creds, WireOptions()).body)
    assert element[0].text == "a&b<c"


def test_logon_response_gives_tokens_timeouts_and_login() -> None:
    """LogonResponse outputs are read by position: session, session info, security token."""
    parsed = parse_body(samples.logon_response("___abc-123", "@sec==", "3600"))
    assert isinstance(parsed, SoapResponse)
    assert parsed.method == "Logon" and parsed.namespace == "urn:xtk:session"
    result = parse_logon(parsed)
    assert result.session_token == "___abc-123"
    assert result.security_token == "@sec=="
    assert result.session_timeout_s == 3600.0
    assert result.security_timeout_s == 3600.0
    assert result.login == "admin"
    assert "___abc-123" not in repr(result) and "@sec==" not in repr(result)


def test_logon_response_without_session_token_is_an_auth_error() -> None:
    """A logon answer with an empty session token cannot be used."""
    parsed = parse_body(samples.logon_response("", "@sec=="))
    assert isinstance(parsed, SoapResponse)
    with pytest.raises(AuthError, match="without a session token"):
        parse_logon(parsed)


@pytest.mark.parametrize(
    ("uuids", "expected"),
    [
        ("e1e7c8b3-6f79-44da-a72d-49ed0f73db2c", ["e1e7c8b3-6f79-44da-a72d-49ed0f73db2c"]),
        ("a-1, b-2,c-3", ["a-1", "b-2", "c-3"]),
        ("", []),
    ],
)
def test_ingest_uuids_are_split_and_empty_is_valid(uuids: str, expected: list[str]) -> None:
    """pstrSUuids gives a list of UUIDs; the empty answer of a reconciled Ingest is valid."""
    parsed = parse_body(samples.ingest_response(uuids))
    assert isinstance(parsed, SoapResponse)
    assert parse_uuids(parsed) == expected


def test_empty_response_element_is_a_success() -> None:
    """<IngestExtResponse/> with no outputs parses as a response with no outputs."""
    parsed = parse_body(samples.response("IngestExt", ""))
    assert isinstance(parsed, SoapResponse)
    assert parsed.method == "IngestExt" and parsed.outputs == ()


def test_fault_fields_and_code_chain_are_extracted() -> None:
    """faultcode, faultstring, detail and every Campaign code in order are read."""
    body = samples.fault(
        "SOAP-ENV:Server",
        "SOP-330011 Error while executing the method 'Write' of service 'xtk:persist|xtk:session'.",
        "ODB-240000 ODBC error: duplicate key. XSV-350023 Unable to save document of type "
        "'nms:recipient'.",
    )
    parsed = parse_body(body)
    assert isinstance(parsed, SoapFault)
    assert parsed.faultcode == "SOAP-ENV:Server"
    assert parsed.faultstring.startswith("SOP-330011 Error while executing")
    assert "duplicate key" in parsed.detail
    assert parsed.codes == ("SOP-330011", "ODB-240000", "XSV-350023")
    assert parsed.code == "SOP-330011"


def test_raw_text_and_html_bodies_are_not_soap() -> None:
    """The XSV-350008 text body and a proxy's HTML page come back as NotSoap with codes."""
    text = parse_body(samples.SESSION_EXPIRED_TEXT)
    assert isinstance(text, NotSoap) and text.codes == ("XSV-350008",)
    html = parse_body(samples.PROXY_HTML)
    assert isinstance(html, NotSoap) and "502 Bad Gateway" in html.snippet
    truncated = parse_body(samples.ingest_response("abc")[:-40])
    assert isinstance(truncated, NotSoap)


def test_billion_laughs_is_refused_without_expansion() -> None:
    """An entity bomb is refused before any expansion: fast and with little memory."""
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ResponseError, match="DTD"):
        parse_body(samples.BILLION_LAUGHS)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Expanded, this document is 3 GB of "lol": the bounds only show it was not expanded.
    assert peak < 10_000_000
    assert elapsed < 1.0


def test_external_entity_is_refused_and_file_never_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An external entity pointing at a local file is refused; its content never appears."""
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("TOP-SECRET-CONTENT")
    with pytest.raises(ResponseError, match="DTD"):
        parse_body(samples.external_entity(str(secret_file)))
    with pytest.raises(ResponseError, match="DTD"):
        parse_xml(samples.external_entity(str(secret_file)))


def test_entity_reference_without_dtd_is_malformed() -> None:
    """An undeclared entity reference is refused, not silently dropped."""
    with pytest.raises(ResponseError, match="malformed"):
        parse_xml(b"<a>&xxe;</a>")


def test_oversize_body_is_refused_before_parsing() -> None:
    """A body over the cap is refused whatever it holds."""
    body = samples.ingest_response("x" * 5000)
    with pytest.raises(ResponseError, match="over the 1000-byte cap"):
        parse_body(body, max_bytes=1000)
    with pytest.raises(ResponseError, match="cap"):
        parse_body(b"<html>" + b"x" * 2000, max_bytes=1000)
