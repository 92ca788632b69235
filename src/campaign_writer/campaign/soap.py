"""The Campaign SOAP wire format: request envelopes out, hardened parsing in.

Requests follow what Adobe's JavaScript SDK sends (see ``campaign-protocol.md``):
the session token is always the first parameter (empty with an IMS bearer), the
others follow by position, DOM documents travel as literal XML. The URN of each
method, the SOAPAction quoting, the ``?soapAction=`` query and the Content-Type are
:class:`WireOptions`, because real instances differ and no source settles them.

Responses are parsed with an lxml parser that resolves no entities, loads no DTD,
never touches the network, and refuses any document that declares a DTD at all
(SOAP 1.1 forbids them) or exceeds a size cap. Parsing never raises lxml's errors:
a body that is not SOAP comes back as :class:`NotSoap` for the classifier to judge.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple
from urllib.parse import quote

from lxml import etree

from ..errors import AuthError, ResponseError

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_URNS",
    "ENCODING_NS",
    "LITERAL_XML_NS",
    "METHODS",
    "SOAP_ENV_NS",
    "Credentials",
    "LogonResult",
    "NotSoap",
    "Output",
    "Param",
    "SoapFault",
    "SoapRequest",
    "SoapResponse",
    "WireOptions",
    "build_request",
    "campaign_codes",
    "envelope",
    "escape_text",
    "parse_body",
    "parse_logon",
    "parse_uuids",
    "parse_xml",
    "soap_action",
]

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
ENCODING_NS = "http://schemas.xmlsoap.org/soap/encoding/"
LITERAL_XML_NS = "http://xml.apache.org/xml-soap/literalxml"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

# Default URN per method. Write/WriteCollection/Ingest/IngestExt live in the persist
# interface of xtk:session, which the SDK calls as ``xtk:persist|xtk:session``;
# GetEntityIfMoreRecent is reached through ``xtk:persist`` as the SDK does.
DEFAULT_URNS: Mapping[str, str] = MappingProxyType(
    {
        "Logon": "xtk:session",
        "BearerTokenLogon": "xtk:session",
        "Logoff": "xtk:session",
        "GetUserInfo": "xtk:session",
        "GetEntityIfMoreRecent": "xtk:persist",
        "Write": "xtk:persist|xtk:session",
        "WriteCollection": "xtk:persist|xtk:session",
        "Ingest": "xtk:persist|xtk:session",
        "IngestExt": "xtk:persist|xtk:session",
    }
)
METHODS = frozenset(DEFAULT_URNS)
URN_SPELLINGS = frozenset({"xtk:session", "xtk:persist", "xtk:persist|xtk:session"})

ParamKind = Literal["string", "boolean", "int", "long", "element", "document"]
_XSI_TYPES: Mapping[str, str] = {
    "string": "xsd:string",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "long": "xsd:long",
}

_CODE = re.compile(r"\b[A-Za-z]{3}-\d{6}\b")


@dataclass(frozen=True)
class WireOptions:
    """How requests are spelled on the wire; every field matches a real variant."""

    urns: Mapping[str, str] = field(default_factory=lambda: DEFAULT_URNS)
    content_type: str = "application/soap+xml;charset=UTF-8"
    soap_action_quoted: bool = False
    method_in_url: bool = False

    def urn(self, method: str) -> str:
        return self.urns.get(method) or DEFAULT_URNS[method]


@dataclass(frozen=True)
class Credentials:
    """What one call carries to authenticate. ``repr`` never shows the values."""

    session_token: str = field(default="", repr=False)
    security_token: str = field(default="", repr=False)
    bearer_token: str = field(default="", repr=False)


class Param(NamedTuple):
    """A positional method parameter; the name is informative, Campaign reads order."""

    name: str
    kind: ParamKind
    value: str


class SoapRequest(NamedTuple):
    """Everything needed to POST one call: path and query, headers, body."""

    path: str
    headers: dict[str, str]
    body: bytes


def escape_text(value: str) -> str:
    """Escape element text content."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def soap_action(method: str, wire: WireOptions) -> str:
    return f"{wire.urn(method)}#{method}"


def _param_xml(param: Param) -> str:
    if param.kind == "document":
        return (
            f'<{param.name} xsi:type="" SOAP-ENV:encodingStyle="{LITERAL_XML_NS}">'
            f"{param.value}</{param.name}>"
        )
    if param.kind == "element":
        return (
            f'<{param.name} xsi:type="ns:Element" SOAP-ENV:encodingStyle="{LITERAL_XML_NS}">'
            f"{param.value}</{param.name}>"
        )
    return (
        f'<{param.name} xsi:type="{_XSI_TYPES[param.kind]}">'
        f"{escape_text(param.value)}</{param.name}>"
    )


def envelope(method: str, urn: str, credentials: Credentials, params: Sequence[Param]) -> bytes:
    """The SOAP envelope for one call, UTF-8 encoded, without an XML declaration."""
    session = escape_text(credentials.session_token)
    header = ""
    if session:
        header += f"<Cookie>__sessiontoken={session}</Cookie>"
    header += f"<X-Security-Token>{escape_text(credentials.security_token)}</X-Security-Token>"
    body_params = "".join(_param_xml(p) for p in params)
    text = (
        '<SOAP-ENV:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
        f' xmlns:xsi="{XSI_NS}" xmlns:SOAP-ENV="{SOAP_ENV_NS}"'
        ' xmlns:ns="http://xml.apache.org/xml-soap">'
        f"<SOAP-ENV:Header>{header}</SOAP-ENV:Header><SOAP-ENV:Body>"
        f'<m:{method} xmlns:m="urn:{urn}" SOAP-ENV:encodingStyle="{ENCODING_NS}">'
        f'<sessiontoken xsi:type="xsd:string">{session}</sessiontoken>{body_params}'
        f"</m:{method}></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    )
    return text.encode("utf-8")


def build_request(
    method: str,
    params: Sequence[Param],
    credentials: Credentials,
    wire: WireOptions,
) -> SoapRequest:
    """Path, headers and body for ``method``; tokens go where each auth mode needs them."""
    action = soap_action(method, wire)
    headers = {
        "Content-Type": wire.content_type,
        "SOAPAction": f'"{action}"' if wire.soap_action_quoted else action,
    }
    if credentials.bearer_token:
        headers["Authorization"] = f"Bearer {credentials.bearer_token}"
    else:
        headers["X-Security-Token"] = credentials.security_token
        if credentials.session_token:
            headers["X-Session-Token"] = credentials.session_token
            headers["Cookie"] = f"__sessiontoken={credentials.session_token}"
    path = "/nl/jsp/soaprouter.jsp"
    if wire.method_in_url:
        path += "?soapAction=" + quote(action, safe="")
    return SoapRequest(path, headers, envelope(method, wire.urn(method), credentials, params))


# --- parsing -------------------------------------------------------------------------


# libxml2 reports a namespace URI it finds invalid (``urn:xtk:persist|xtk:session``,
# which Campaign and Adobe's SDK use) as an error. The parser therefore runs in
# recover mode and we then refuse the document on any logged error but that one, so
# malformed XML is still refused.
_TOLERATED_ERRORS = frozenset({99})  # XML_WAR_NS_URI
_local_parsers = threading.local()


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_local_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            recover=True,
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
        _local_parsers.parser = parser
    return parser


def parse_xml(body: bytes, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> etree._Element:
    """Parse untrusted XML safely: no DTD, no entities, no network, bounded size.

    Oversize bodies, DTDs and malformed XML all raise ResponseError.
    """
    _refuse_hostile(body, max_bytes)
    root = _parse_checked(body)
    _refuse_dtd(root)
    return root


def _refuse_hostile(body: bytes, max_bytes: int) -> None:
    if len(body) > max_bytes:
        raise ResponseError(f"body of {len(body)} bytes is over the {max_bytes}-byte cap")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ResponseError("body declares a DTD or entities; refused")


def _parse_checked(body: bytes) -> etree._Element:
    parser = _parser()
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise ResponseError(f"malformed XML: {exc}") from None
    for entry in parser.error_log:
        if entry.type not in _TOLERATED_ERRORS:
            raise ResponseError(f"malformed XML: {entry.message} (line {entry.line})")
    if root is None:
        raise ResponseError("empty XML document")
    return root


def _refuse_dtd(root: etree._Element) -> None:
    # The byte search in _refuse_hostile cannot see a DTD in UTF-16 (libxml2 detects
    # that encoding itself), so the parsed document is asked as well.
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None:  # set by any DOCTYPE, with or without a subset
        raise ResponseError("body declares a DTD or entities; refused")


class Output(NamedTuple):
    """One output of a response, in order: its element name, xsi:type and content."""

    name: str
    xsi_type: str
    text: str
    element: etree._Element | None


@dataclass(frozen=True)
class SoapResponse:
    """A successful ``<Method>Response``; outputs are positional, as Campaign sends them."""

    method: str
    namespace: str
    outputs: tuple[Output, ...]

    def output(self, name: str) -> Output | None:
        for out in self.outputs:
            if out.name == name:
                return out
        return None


@dataclass(frozen=True)
class SoapFault:
    """A SOAP fault; ``codes`` lists every Campaign code in faultstring then detail."""

    faultcode: str
    faultstring: str
    detail: str
    codes: tuple[str, ...]

    @property
    def code(self) -> str:
        return self.codes[0] if self.codes else ""

    def text(self) -> str:
        return f"{self.faultstring} {self.detail}".strip()


@dataclass(frozen=True)
class NotSoap:
    """A body that is not a SOAP envelope (proxy HTML, raw text, truncated XML)."""

    snippet: str
    codes: tuple[str, ...]


def campaign_codes(text: str) -> tuple[str, ...]:
    """Every ``AAA-NNNNNN`` code in ``text``, in order, without repeats."""
    return tuple(dict.fromkeys(m.upper() for m in _CODE.findall(text)))


def _local(tag: object) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return " ".join(text.split())


def parse_body(
    body: bytes, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
) -> SoapResponse | SoapFault | NotSoap:
    """Read a response body. Hostile bodies (DTD, oversize) raise ResponseError."""
    head = body.lstrip()[:200].lower()
    if not head.startswith(b"<") or b"<html" in head or b"<!doctype html" in head:
        if len(body) > max_bytes:
            raise ResponseError(f"body of {len(body)} bytes is over the {max_bytes}-byte cap")
        return NotSoap(_snippet(body), campaign_codes(body[:4096].decode("utf-8", "replace")))
    _refuse_hostile(body, max_bytes)
    try:
        root = _parse_checked(body)
    except ResponseError:
        return NotSoap(_snippet(body), campaign_codes(body[:4096].decode("utf-8", "replace")))
    _refuse_dtd(root)
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        return NotSoap(_snippet(body), ())
    soap_body = root.find(f"{{{SOAP_ENV_NS}}}Body")
    if soap_body is None or len(soap_body) == 0:
        return NotSoap(_snippet(body), ())
    first = soap_body[0]
    if first.tag == f"{{{SOAP_ENV_NS}}}Fault":
        return _fault(first)
    tag = etree.QName(first)
    method = tag.localname.removesuffix("Response")
    outputs = []
    for child in first:
        if not isinstance(child.tag, str):
            continue
        xsi_type = child.get(f"{{{XSI_NS}}}type", "")
        element = None
        if xsi_type == "ns:Element" or (len(child) and not (child.text or "").strip()):
            element = child[0] if len(child) else None
        outputs.append(Output(_local(child.tag), xsi_type, child.text or "", element))
    return SoapResponse(method, tag.namespace or "", tuple(outputs))


def _fault(node: etree._Element) -> SoapFault:
    def text_of(name: str) -> str:
        for child in node:
            if _local(child.tag) == name:
                return "".join(str(part) for part in child.itertext()).strip()
        return ""

    faultcode = text_of("faultcode")
    faultstring = text_of("faultstring")
    detail = text_of("detail")
    return SoapFault(faultcode, faultstring, detail, campaign_codes(f"{faultstring}\n{detail}"))


class LogonResult(NamedTuple):
    """Tokens and timeouts from Logon or BearerTokenLogon. ``repr`` hides the tokens."""

    session_token: str
    security_token: str
    session_timeout_s: float | None
    security_timeout_s: float | None
    login: str

    def __repr__(self) -> str:
        return (
            f"LogonResult(login={self.login!r}, session_timeout_s={self.session_timeout_s}, "
            f"security_timeout_s={self.security_timeout_s})"
        )


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def parse_logon(response: SoapResponse) -> LogonResult:
    """Tokens from a Logon/BearerTokenLogon response, read by position as the SDK does."""
    outs = response.outputs
    session = outs[0].text if outs else ""
    info = outs[1].element if len(outs) > 1 else None
    security = outs[2].text if len(outs) > 2 else ""
    if not session:
        raise AuthError(f"{response.method} answered without a session token")
    session_timeout = security_timeout = None
    login = ""
    if info is not None:
        server = info.find("{*}serverInfo")
        if server is not None:
            session_timeout = _seconds(server.get("sessionTimeOut"))
            security_timeout = _seconds(server.get("securityTimeOut"))
        user = info.find("{*}userInfo")
        if user is not None:
            login = user.get("login", "")
    return LogonResult(session, security, session_timeout, security_timeout, login)


def parse_uuids(response: SoapResponse) -> list[str]:
    """UUIDs from an IngestResponse: ``pstrSUuids`` split on commas; empty is valid."""
    out = response.output("pstrSUuids")
    if out is None or not out.text.strip():
        return []
    return [part.strip() for part in out.text.split(",") if part.strip()]
