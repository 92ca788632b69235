"""The wire protocol: every request spelling is accepted, answers have Campaign's exact shape."""

from __future__ import annotations

import pytest
from lxml import etree

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import AuthExpired, Fatal, Ok, Reject
from campaign_writer.simulator.codes import METHOD_UNKNOWN, SESSION_EXPIRED

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
ROUTER = "/nl/jsp/soaprouter.jsp"
ENTITY = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="{id}" testcol1="{v}"/>'


def envelope(method: str, urn: str, session: str, params: str, header: str = "") -> bytes:
    """A hand-written request, independent of soap.build_request."""
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
        f' xmlns:urn="urn:{urn}"><soapenv:Header>{header}</soapenv:Header><soapenv:Body>'
        f"<urn:{method}><urn:sessiontoken>{session}</urn:sessiontoken>{params}</urn:{method}>"
        "</soapenv:Body></soapenv:Envelope>"
    ).encode()


def doc_param(document: str) -> str:
    return f"<urn:domDoc>{document}</urn:domDoc>"


@pytest.mark.parametrize("urn", ["xtk:session", "xtk:persist", "xtk:persist|xtk:session"])
@pytest.mark.parametrize("method", ["Write", "WriteCollection", "Ingest", "IngestExt"])
async def test_every_urn_spelling_is_accepted_for_write_methods(simulator, urn, method) -> None:
    """Write, WriteCollection, Ingest and IngestExt answer under all three URN spellings."""
    creds = await simulator.logon()
    wire = soap.WireOptions(urns={method: urn})
    key = f"{method}-{urn}"
    reply = await simulator.write(method, ENTITY.format(id=key, v="x"), creds, wire)
    assert isinstance(reply.outcome(), Ok), reply.body
    rows = await simulator.records("dem:sampleTableStg")
    assert [r["testcol1"] for r in rows if r.get("id") == key] == ["x"]


@pytest.mark.parametrize(
    ("header_name", "quoted", "in_url", "content_type"),
    [
        ("SOAPAction", False, False, "text/xml; charset=utf-8"),
        ("SoapAction", False, True, "application/soap+xml;charset=UTF-8"),
        ("soapaction", True, False, "application/soap+xml"),
        ("SOAPAction", True, True, "text/xml"),
        (None, False, False, "text/xml"),
    ],
)
async def test_soapaction_forms_query_and_content_types(
    simulator, header_name, quoted, in_url, content_type
) -> None:
    """Quoted or bare SOAPAction in any header case (or none), ?soapAction= or not, both types."""
    creds = await simulator.logon()
    request = soap.build_request(
        "Ingest",
        [soap.Param("doc", "document", ENTITY.format(id="h1", v="y"))],
        creds,
        soap.WireOptions(soap_action_quoted=quoted, method_in_url=in_url),
    )
    headers = {k: v for k, v in request.headers.items() if k != "SOAPAction"}
    headers["Content-Type"] = content_type
    if header_name:
        headers[header_name] = request.headers["SOAPAction"]
    assert ("?soapAction=xtk%3Apersist%7Cxtk%3Asession%23Ingest" in request.path) == in_url
    reply = await simulator.post(request.path, request.body, headers)
    assert isinstance(reply.outcome(), Ok), reply.body


async def test_session_token_in_first_parameter_only(simulator) -> None:
    """Adobe's v8 sample: the token as the first parameter alone, no security token, works."""
    creds = await simulator.logon()
    body = envelope(
        "Ingest", "xtk:session", creds.session_token, doc_param(ENTITY.format(id="p", v="1"))
    )
    reply = await simulator.post(
        ROUTER, body, {"Content-Type": "text/xml", "SOAPAction": "xtk:session#Ingest"}
    )
    assert isinstance(reply.outcome(), Ok), reply.body


@pytest.mark.parametrize("where", ["cookie", "x-session-token", "soap-header"])
async def test_session_token_in_cookie_header_or_soap_header(simulator, where) -> None:
    """With an empty first parameter, the token is read from the cookie, header or SOAP header."""
    creds = await simulator.logon()
    headers = {"Content-Type": "text/xml", "X-Security-Token": creds.security_token}
    soap_header = ""
    if where == "cookie":
        headers["Cookie"] = f"other=1; __sessiontoken={creds.session_token}"
    elif where == "x-session-token":
        headers["X-Session-Token"] = creds.session_token
    else:
        del headers["X-Security-Token"]
        soap_header = (
            f"<Cookie>__sessiontoken={creds.session_token}</Cookie>"
            f"<X-Security-Token>{creds.security_token}</X-Security-Token>"
        )
    body = envelope(
        "Ingest",
        "xtk:persist|xtk:session",
        "",
        doc_param(ENTITY.format(id=where, v="1")),
        soap_header,
    )
    reply = await simulator.post(ROUTER, body, headers)
    assert isinstance(reply.outcome(), Ok), reply.body


async def test_cookie_session_needs_the_right_security_token(simulator) -> None:
    """A cookie session without its security token, or with another one, is refused (XSV-350008)."""
    creds = await simulator.logon()
    body = envelope("Ingest", "xtk:session", "", doc_param(ENTITY.format(id="c", v="1")))
    cookie = {"Content-Type": "text/xml", "Cookie": f"__sessiontoken={creds.session_token}"}
    for headers in (cookie, {**cookie, "X-Security-Token": "@forged=="}):
        reply = await simulator.post(ROUTER, body, headers)
        assert isinstance(reply.outcome(), AuthExpired)
        assert SESSION_EXPIRED in reply.body.decode()
    await simulator.control(require_security_token=False)
    reply = await simulator.post(ROUTER, body, cookie)
    assert isinstance(reply.outcome(), Ok)


async def test_logon_answer_has_the_sdk_shape(simulator) -> None:
    """LogonResponse: unprefixed, urn:xtk:session, outputs in order with exact xsi:types."""
    reply = await simulator.call(
        "Logon",
        [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "admin"),
            soap.Param("parameters", "element", ""),
        ],
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/xml")
    assert reply.body.startswith(b"<?xml version='1.0'?>")
    assert b'<SOAP-ENV:Body><LogonResponse xmlns="urn:xtk:session"' in reply.body
    root = etree.fromstring(reply.body)
    answer = root[0][0]
    assert answer.tag == "{urn:xtk:session}LogonResponse" and answer.prefix is None
    outputs = [(etree.QName(c).localname, c.get(XSI_TYPE)) for c in answer]
    assert outputs == [
        ("pstrSessionToken", "xsd:string"),
        ("pSessionInfo", "ns:Element"),
        ("pstrSecurityToken", "xsd:string"),
    ]
    assert answer[0].text.startswith("___") and answer[2].text.startswith("@")
    info = answer[1][0]
    assert (
        info.tag == "{urn:xtk:session}sessionInfo" or etree.QName(info).localname == "sessionInfo"
    )
    server = info[0]
    assert server.get("sessionTimeOut") == "86400" and server.get("buildNumber")
    assert etree.QName(info[1]).localname == "userInfo" and info[1].get("login") == "admin"


async def test_write_answers_are_empty_and_ingest_answers_in_wpp_default(simulator) -> None:
    """IngestResponse carries pstrSUuids (xsd:string) in urn:wpp:default; others are empty."""
    creds = await simulator.logon()
    ingest = await simulator.write(
        "Ingest", '<sampleTableStg xtkschema="dem:sampleTableStg" testcol1="a"/>', creds
    )
    root = etree.fromstring(ingest.body)
    answer = root[0][0]
    assert answer.tag == "{urn:wpp:default}IngestResponse"
    assert [(etree.QName(c).localname, c.get(XSI_TYPE)) for c in answer] == [
        ("pstrSUuids", "xsd:string")
    ]
    for method in ("IngestExt", "Write", "WriteCollection"):
        reply = await simulator.write(method, ENTITY.format(id="e", v="v"), creds)
        answer = etree.fromstring(reply.body)[0][0]
        assert answer.tag == f"{{urn:wpp:default}}{method}Response" and len(answer) == 0


async def test_unknown_method_and_wrong_urn_get_sop_330006(simulator) -> None:
    """A method the service does not define gets SOP-330006 with faultcode SOAP-ENV:Client."""
    creds = await simulator.logon()
    for method, urn in (
        ("GetOption", "xtk:session"),
        ("Logon", "xtk:persist"),
        ("Write", "nms:recipient"),
    ):
        body = envelope(method, urn, creds.session_token, "")
        reply = await simulator.post(ROUTER, body, {"Content-Type": "text/xml"})
        fault = reply.parsed()
        assert isinstance(fault, soap.SoapFault)
        assert fault.faultcode == "SOAP-ENV:Client" and fault.code == METHOD_UNKNOWN
        assert isinstance(reply.outcome(), Fatal)


async def test_malformed_and_hostile_requests_are_client_faults(simulator) -> None:
    """Broken XML, a non-SOAP root and a DTD (entity expansion) are refused, never parsed."""
    hostile = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<soapenv:Body><Logoff>&a;</Logoff></soapenv:Body></soapenv:Envelope>"
    )
    for body in (b"<soapenv:Envelope", b"<html><body>hi</body></html>", hostile, b""):
        reply = await simulator.post(ROUTER, body, {"Content-Type": "text/xml"})
        fault = reply.parsed()
        assert isinstance(fault, soap.SoapFault), body
        assert (
            fault.faultcode == "SOAP-ENV:Client" and "Malformed SOAP request" in fault.faultstring
        )
        assert isinstance(reply.outcome(), Reject)
    stats = await simulator.stats()
    assert stats["faults_by_kind"]["malformed"] == 4


async def test_latin1_bodies_and_soap12_envelopes(simulator) -> None:
    """ISO-8859-1 by declaration or by Content-Type charset, and SOAP 1.2 envelopes, are read."""
    creds = await simulator.logon()
    entity = ENTITY.format(id="latin", v="Zoë Ångström")
    declared = b"<?xml version='1.0' encoding='ISO-8859-1'?>" + envelope(
        "Ingest", "xtk:session", creds.session_token, doc_param(entity)
    ).decode().encode("latin-1")
    reply = await simulator.post(ROUTER, declared, {"Content-Type": "text/xml"})
    assert isinstance(reply.outcome(), Ok), reply.body
    by_header = (
        envelope(
            "IngestExt",
            "xtk:session",
            creds.session_token,
            doc_param(ENTITY.format(id="hdr", v="Café")),
        )
        .decode()
        .encode("latin-1")
    )
    reply = await simulator.post(
        ROUTER, by_header, {"Content-Type": "text/xml; charset=ISO-8859-1"}
    )
    assert isinstance(reply.outcome(), Ok), reply.body
    soap12 = envelope(
        "IngestExt", "xtk:session", creds.session_token, doc_param(ENTITY.format(id="s12", v="v12"))
    ).replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
    )
    reply = await simulator.post(ROUTER, soap12, {"Content-Type": "application/soap+xml"})
    assert isinstance(reply.outcome(), Ok), reply.body
    rows = {r["id"]: r["testcol1"] for r in await simulator.records("dem:sampleTableStg")}
    assert rows == {"latin": "Zoë Ångström", "hdr": "Café", "s12": "v12"}


async def test_health_endpoints(simulator) -> None:
    """/r/test answers anonymously; ping.jsp needs a live session or bearer token."""
    async with simulator.session.get(simulator.url + "/r/test") as answer:
        text = await answer.text()
    assert answer.status == 200 and text.startswith("<redir status='OK'") and "build='" in text
    async with simulator.session.get(simulator.url + "/nl/jsp/ping.jsp") as answer:
        assert answer.status == 500 and SESSION_EXPIRED in await answer.text()
    creds = await simulator.logon()
    headers = {"X-Session-Token": creds.session_token, "X-Security-Token": creds.security_token}
    async with simulator.session.get(simulator.url + "/nl/jsp/ping.jsp", headers=headers) as answer:
        lines = (await answer.text()).split("\n")
    assert answer.status == 200 and lines[0] == "OK" and lines[1].endswith("Z")
    token = await simulator.ims_token()
    bearer = {"Authorization": f"Bearer {token}"}
    async with simulator.session.get(simulator.url + "/nl/jsp/ping.jsp", headers=bearer) as answer:
        assert answer.status == 200
