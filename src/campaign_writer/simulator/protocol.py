"""Reading SOAP requests the way Campaign does, and writing its exact answers.

Requests (``campaign-protocol.md`` sections 1-3) are accepted in every spelling a
client may use:

* the method and its URN come from the body's method element (its namespace is
  ``urn:`` + URN); ``SOAPAction`` (any header case, quoted or not) and the
  ``?soapAction=`` query are only a fallback, since Adobe's samples and SDK differ
  on them;
* SOAP 1.1 or 1.2 envelope namespace, ``text/xml`` or ``application/soap+xml``,
  UTF-8 or the charset the Content-Type names;
* parameters are read by position; the first is always the session token;
* the session token is read from that parameter, ``X-Session-Token``, the
  ``__sessiontoken`` cookie or ``<Cookie>`` in the SOAP header; the security
  token from ``X-Security-Token`` (HTTP or SOAP header); an IMS token from
  ``Authorization: Bearer``.

Answers follow what Adobe's SDK parses strictly: the unprefixed ``<Method>Response``
in the right namespace (``urn:xtk:session`` for the session methods,
``urn:wpp:default`` for the persist ones), ``SOAP-ENV`` as the envelope prefix,
outputs in order with exact ``xsi:type`` values.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from .faults import SimFault
from .xmlread import (
    ENCODING_NS,
    LITERAL_XML_NS,
    SOAP12_ENV_NS,
    SOAP_ENV_NS,
    UnreadableXml,
    read_xml,
)

__all__ = [
    "SESSION_METHODS",
    "Call",
    "action_of",
    "campaign_time",
    "out_element",
    "out_string",
    "parse_call",
    "response",
    "session_info",
    "user_info",
]

_ENVELOPES = (f"{{{SOAP_ENV_NS}}}Envelope", f"{{{SOAP12_ENV_NS}}}Envelope")

SESSION_METHODS = frozenset({"Logon", "BearerTokenLogon", "Logoff", "GetUserInfo"})
_CHARSET = re.compile(r"charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)

BUILD = "9236"
INSTANCE = "campaign-sim"


class Call(NamedTuple):
    """One parsed SOAP call: method, URN, positional parameters and the credentials."""

    method: str
    urn: str
    params: list[etree._Element]
    session: str
    session_in_param: bool
    security: str
    bearer: str

    def text(self, position: int) -> str:
        """The text of parameter ``position`` (0 is the session token), or ''."""
        if position >= len(self.params):
            return ""
        return (self.params[position].text or "").strip()

    def document(self, position: int) -> etree._Element | None:
        """The root element of DOM parameter ``position``, if it holds one."""
        if position >= len(self.params):
            return None
        for child in self.params[position]:
            if isinstance(child.tag, str):
                return child
        return None


def action_of(headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[str, str]:
    """``(urn, method)`` from SOAPAction or ``?soapAction=``; empty strings if neither."""
    action = headers.get("SOAPAction") or query.get("soapAction") or ""
    action = unquote(action.strip().strip('"').strip("'"))
    urn, _, method = action.rpartition("#")
    return urn, method


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _transcode(body: bytes, content_type: str) -> bytes:
    # With an XML declaration the parser follows its encoding; without one it assumes
    # UTF-8, so a body in the charset its Content-Type names is re-encoded first.
    match = _CHARSET.search(content_type)
    if match is None or body.lstrip()[:5] == b"<?xml":
        return body
    charset = match.group(1).lower()
    if charset in ("utf-8", "utf8"):
        return body
    try:
        return body.decode(charset).encode("utf-8")
    except (LookupError, UnicodeDecodeError):
        return body


def _malformed(reason: str) -> SimFault:
    return SimFault("SOAP-ENV:Client", f"Malformed SOAP request: {reason}", kind="malformed")


def _cookie_token(cookie: str) -> str:
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "__sessiontoken":
            return value.strip()
    return ""


def parse_call(
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    max_bytes: int,
) -> Call:
    """Parse one request (:func:`~.xmlread.read_xml`); a body that is not SOAP is a Client fault."""
    try:
        root = read_xml(_transcode(body, headers.get("Content-Type", "")), max_bytes)
    except UnreadableXml as exc:
        raise _malformed(str(exc)) from None
    if root.tag not in _ENVELOPES:
        raise _malformed("the root element is not a SOAP Envelope")
    ns = str(root.tag)[1:].partition("}")[0]
    soap_body = root.find(f"{{{ns}}}Body")
    method_el = None
    if soap_body is not None:
        method_el = next((c for c in soap_body if isinstance(c.tag, str)), None)
    if method_el is None:
        raise _malformed("the SOAP Body holds no method element")
    tag = etree.QName(method_el)
    action_urn, _ = action_of(headers, query)
    urn = (tag.namespace or "").removeprefix("urn:") or action_urn
    params = [child for child in method_el if isinstance(child.tag, str)]

    soap_cookie = soap_security = ""
    header = root.find(f"{{{ns}}}Header")
    if header is not None:
        for child in header:
            if isinstance(child.tag, str):
                name = _local(child.tag)
                if name == "Cookie":
                    soap_cookie = _cookie_token(child.text or "")
                elif name == "X-Security-Token":
                    soap_security = (child.text or "").strip()
    in_param = (params[0].text or "").strip() if params else ""
    session = (
        in_param
        or headers.get("X-Session-Token", "").strip()
        or _cookie_token(headers.get("Cookie", ""))
        or soap_cookie
    )
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    return Call(
        method=tag.localname,
        urn=urn,
        params=params,
        session=session,
        session_in_param=bool(in_param),
        security=headers.get("X-Security-Token", "").strip() or soap_security,
        bearer=bearer,
    )


def out_string(name: str, value: str) -> str:
    if not value:
        return f'<{name} xsi:type="xsd:string"/>'
    return f'<{name} xsi:type="xsd:string">{escape(value)}</{name}>'


def out_element(name: str, xml: str) -> str:
    return f'<{name} xsi:type="ns:Element" SOAP-ENV:encodingStyle="{LITERAL_XML_NS}">{xml}</{name}>'


def response(method: str, namespace: str, outputs: str = "") -> bytes:
    """A ``<Method>Response`` envelope; no outputs gives the empty element Campaign sends."""
    opening = f'<{method}Response xmlns="{namespace}" SOAP-ENV:encodingStyle="{ENCODING_NS}"'
    inner = f"{opening}>{outputs}</{method}Response>" if outputs else f"{opening}/>"
    return (
        "<?xml version='1.0'?>\n"
        '<SOAP-ENV:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        f' xmlns:ns="{namespace}" xmlns:SOAP-ENV="{SOAP_ENV_NS}">'
        f"<SOAP-ENV:Body>{inner}</SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


def campaign_time(when: dt.datetime | None = None) -> str:
    """UTC time as Campaign writes it: ``2022-09-26 03:13:36.480Z``."""
    when = when or dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def user_info(login: str) -> str:
    """``<userInfo>`` as Logon and GetUserInfo return it."""
    return (
        f'<userInfo login={quoteattr(login)} loginCS={quoteattr(login)} loginId="1059"'
        ' timezone="UTC" locale="en" instanceLocale="en" homeDir="" orgUnitId="0"'
        ' datakitInDatabase="true" noConsoleCnx="false" theme="">'
        '<login-group id="1060"/><login-right right="admin"/>'
        '<installed-package name="core" namespace="nms"/>'
        '<installed-package name="campaign" namespace="nms"/>'
        "</userInfo>"
    )


def session_info(login: str, session_timeout_s: float) -> str:
    """``<sessionInfo>``: server facts (timeouts in seconds) and the user's info."""
    timeout = max(1, round(session_timeout_s))
    return (
        f'<sessionInfo><serverInfo advisedClientBuildNumber="0" allowSQL="false"'
        f' buildNumber="{BUILD}" commitId="0000000" databaseId="uSIMULATOR"'
        f' defaultNameSpace="cus" fohVersion="2" instanceName="{INSTANCE}" majNumber="8"'
        f' minClientBuildNumber="{BUILD}" minNumber="7" minNumberTechnical="0"'
        f' releaseName="8.7" securityTimeOut="{timeout}" serverDate="{campaign_time()}"'
        f' servicePack="0" sessionTimeOut="{timeout}" useVault="false"/>'
        f"{user_info(login)}</sessionInfo>"
    )
