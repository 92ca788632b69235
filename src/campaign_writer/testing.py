"""An in-memory Campaign for tests: :class:`FakeTransport` and the replies that script it.

The writer reaches Campaign, and IMS, only through a
:class:`~campaign_writer.campaign.transport.Transport`. ``FakeTransport`` is one that never
touches the network. It answers each request with the first of:

1. the next reply scripted for the request's SOAP method (``script("Ingest", ...)``),
   else the next one scripted for any method (``script(ANY, ...)``); each is used once;
2. what ``handler`` returns, when one is given: a function (or coroutine function) of
   the :class:`FakeRequest` returning a reply, or None to fall through;
3. :meth:`FakeTransport.accept`: a Campaign that takes everything (Logon gives fresh
   tokens, Ingest one UUID per record, IMS a token, a GET an HTTP 200).

A reply is an :class:`~campaign_writer.campaign.transport.HttpResponse` (built with
:func:`ok`, :func:`fault`, :func:`throttled`, :func:`session_expired`, :func:`http`...)
or an exception, raised instead of answering: :func:`reset` and :func:`timeout` give
the :class:`~campaign_writer.errors.TransportError` that ``HttpTransport`` raises when
a connection is reset or an answer does not come in time. Every request is kept, in
order, in :attr:`FakeTransport.requests`, with its SOAP method (from SOAPAction), its
headers and its body.

Testing a setup: the daemon, :class:`~campaign_writer.campaign.client.CampaignClient` and the
authenticators all take a transport. For instance::

    from campaign_writer.daemon import Daemon
    from campaign_writer.testing import FakeTransport, fault, throttled

    transport = FakeTransport()
    transport.script("Ingest", throttled(retry_after=1.0))  # the first Ingest: HTTP 429
    transport.script(
        "Ingest", fault("PostgreSQL error: duplicate key violates unique constraint")
    )
    daemon = Daemon(config, transport=transport)
    await daemon.start()
    ...  # post events to daemon.http.url, wait for them to be delivered
    assert [r.method for r in transport.requests][:2] == ["Logon", "Ingest"]

A handler decides from what was sent; refusing one record, whichever call holds it::

    def refuse_bad(request: FakeRequest) -> HttpResponse | None:
        if b'id="bad"' in request.body:
            return fault("Error while executing the method 'Ingest'", detail="...")
        return None  # the rest is accepted

    transport = FakeTransport(handler=refuse_bad)

Nothing here sleeps unless ``latency_s`` asks it to (``asyncio.sleep``, so a test loop
with a virtual clock does not wait for it either).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import orjson

from .campaign.transport import HttpResponse
from .errors import TransportError

__all__ = [
    "ANY",
    "FakeRequest",
    "FakeTransport",
    "Handler",
    "Reply",
    "fault",
    "http",
    "ims_token",
    "ingest",
    "logon",
    "ok",
    "proxy_page",
    "reset",
    "session_expired",
    "throttled",
    "timeout",
]

ANY = "*"  # script(ANY, ...): replies for whichever call comes next

_XML = {"Content-Type": "text/xml;charset=utf-8"}
_ENVELOPE = (
    "<?xml version='1.0'?>"
    '<SOAP-ENV:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xmlns:ns="{ns}" xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/">'
    "<SOAP-ENV:Body>{inner}</SOAP-ENV:Body></SOAP-ENV:Envelope>"
)
_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"
_LITERAL = "http://xml.apache.org/xml-soap/literalxml"
_COLLECTION = re.compile(rb"<([A-Za-z_][\w.-]*)-collection[\s>]")
_ENTITY = re.compile(rb'<[A-Za-z_][\w.-]*\s+xtkschema="')

Reply = HttpResponse | BaseException
Handler = Callable[["FakeRequest"], Reply | Awaitable[Reply | None] | None]


class FakeRequest(NamedTuple):
    """One request the fake received."""

    verb: str  # "POST" or "GET"
    url: str
    headers: Mapping[str, str]
    body: bytes
    at: float  # the fake's clock when it arrived

    @property
    def action(self) -> str:
        """The SOAPAction (``xtk:persist|xtk:session#Ingest``), unquoted; "" if none."""
        action = self.headers.get("SOAPAction")
        if action is None:
            query = parse_qs(urlsplit(self.url).query)
            action = query.get("soapAction", [""])[0]
        return unquote(action.strip().strip('"'))

    @property
    def method(self) -> str:
        """The SOAP method called (``Ingest``, ``Logon``...); "" for IMS and GETs."""
        return self.action.rpartition("#")[2]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def records(self) -> int:
        """Entities in the call's document: one, a collection's count, or 0 (no document)."""
        collection = _COLLECTION.search(self.body)
        if collection is None:
            return 1 if _ENTITY.search(self.body) else 0
        name = re.escape(collection.group(1))
        return len(re.findall(rb"<" + name + rb"[\s/]", self.body))


# --- replies -------------------------------------------------------------------------


def http(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> HttpResponse:
    """Any raw answer."""
    return HttpResponse(status, dict(headers or {}), body)


def ok(method: str, outputs: str = "", *, namespace: str = "urn:xtk:session") -> HttpResponse:
    """HTTP 200 with ``<MethodResponse>``; ``outputs`` is its inner XML (none: empty)."""
    opening = f'<{method}Response xmlns="{namespace}" SOAP-ENV:encodingStyle="{_ENCODING}"'
    inner = f"{opening}>{outputs}</{method}Response>" if outputs else f"{opening}/>"
    return http(200, _ENVELOPE.format(ns=namespace, inner=inner).encode(), _XML)


def logon(
    session_token: str = "fake-session",  # noqa: S107 (a fake token)
    security_token: str = "fake-security",  # noqa: S107
    *,
    timeout_s: float = 86400.0,
    method: str = "Logon",
) -> HttpResponse:
    """A Logon (or ``method="BearerTokenLogon"``) answer with these tokens and timeouts."""
    timeout = max(1, round(timeout_s))
    info = (
        f'<sessionInfo><serverInfo sessionTimeOut="{timeout}" securityTimeOut="{timeout}"/>'
        '<userInfo login="fake" loginId="1"/></sessionInfo>'
    )
    return ok(
        method,
        f'<pstrSessionToken xsi:type="xsd:string">{escape(session_token)}</pstrSessionToken>'
        f'<pSessionInfo xsi:type="ns:Element" SOAP-ENV:encodingStyle="{_LITERAL}">'
        f"{info}</pSessionInfo>"
        f'<pstrSecurityToken xsi:type="xsd:string">{escape(security_token)}</pstrSecurityToken>',
    )


def ingest(uuids: Sequence[str], *, method: str = "Ingest") -> HttpResponse:
    """An Ingest (or IngestExt) answer listing the stored records' UUIDs."""
    text = ",".join(uuids)
    output = (
        f'<pstrSUuids xsi:type="xsd:string">{escape(text)}</pstrSUuids>'
        if text
        else '<pstrSUuids xsi:type="xsd:string"/>'
    )
    return ok(method, output, namespace="urn:wpp:default")


def fault(
    faultstring: str,
    *,
    detail: str = "",
    faultcode: str = "SOAP-ENV:Server",
    status: int = 500,
) -> HttpResponse:
    """A SOAP fault, shaped as Campaign sends them (``campaign-protocol.md`` 5.4a)."""
    detail_xml = f'<detail xsi:type="xsd:string">{escape(detail)}</detail>' if detail else ""
    inner = (
        f"<SOAP-ENV:Fault><faultcode>{escape(faultcode)}</faultcode>"
        f'<faultstring xsi:type="xsd:string">{escape(faultstring)}</faultstring>'
        f"{detail_xml}</SOAP-ENV:Fault>"
    )
    return http(status, _ENVELOPE.format(ns="urn:xtk:session", inner=inner).encode(), _XML)


def session_expired() -> HttpResponse:
    """XSV-350008, as Campaign answers a call with a session it no longer knows."""
    return fault(
        "XSV-350008 Session has expired or is invalid. Please reconnect.",
        faultcode="SOAP-ENV:Client",
    )


def throttled(retry_after: float | None = None) -> HttpResponse:
    """HTTP 429, with a ``Retry-After`` in seconds when given."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return http(429, b"", headers)


def proxy_page(status: int = 502) -> HttpResponse:
    """The HTML page a proxy answers when Campaign behind it does not."""
    body = (
        f"<!DOCTYPE html><html><head><title>{status} Bad Gateway</title></head>"
        f"<body><h1>{status} Bad Gateway</h1></body></html>"
    )
    return http(status, body.encode(), {"Content-Type": "text/html"})


def ims_token(token: str = "fake-ims-token", expires_in: float = 86399.0) -> HttpResponse:  # noqa: S107
    """IMS's answer to a client-credentials request."""
    payload = {"access_token": token, "token_type": "bearer", "expires_in": expires_in}
    return http(200, orjson.dumps(payload), {"Content-Type": "application/json"})


def reset() -> TransportError:
    """The error HttpTransport raises when the connection is reset mid-call."""
    return TransportError("ServerDisconnectedError: Server disconnected")


def timeout(seconds: float = 30.0) -> TransportError:
    """The error HttpTransport raises when no complete answer comes in time."""
    return TransportError(f"no complete answer within {seconds:g} s")


# --- the transport -------------------------------------------------------------------


class FakeTransport:
    """A :class:`~campaign_writer.campaign.transport.Transport` that answers in memory.

    ``handler`` answers what no script does (see the module docstring); ``clock``
    stamps each request's ``at``; ``latency_s`` is slept (``asyncio.sleep``) before
    each answer. As with ``HttpTransport``, calls before :meth:`start` or after
    :meth:`close` raise RuntimeError.
    """

    def __init__(
        self,
        *,
        handler: Handler | None = None,
        clock: Callable[[], float] = time.monotonic,
        latency_s: float = 0.0,
    ) -> None:
        self.handler = handler
        self.latency_s = latency_s
        self._clock = clock
        self._scripts: dict[str, deque[Reply]] = {}
        self.requests: list[FakeRequest] = []
        self.started = False
        self.logons = 0  # Logon and BearerTokenLogon calls accept() answered

    # --- scripting and reading back ----------------------------------------------------

    def script(self, method: str, *replies: Reply) -> None:
        """Queue replies for the next calls of ``method`` (a SOAP method, or ANY)."""
        self._scripts.setdefault(method, deque()).extend(replies)

    def unused(self) -> dict[str, int]:
        """Scripted replies not used yet, by method (empty when all were)."""
        return {method: len(left) for method, left in self._scripts.items() if left}

    def calls(self, method: str | None = None) -> list[FakeRequest]:
        """The SOAP calls received, in order; only those of ``method`` when given."""
        return [r for r in self.requests if r.method and (method is None or r.method == method)]

    # --- Transport -----------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        return await self._answer(FakeRequest("POST", url, dict(headers), body, self._clock()))

    async def get(self, url: str) -> HttpResponse:
        return await self._answer(FakeRequest("GET", url, {}, b"", self._clock()))

    async def _answer(self, request: FakeRequest) -> HttpResponse:
        if not self.started:
            raise RuntimeError("FakeTransport.start() was not called")
        self.requests.append(request)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        reply = self._scripted(request.method)
        if reply is None and self.handler is not None:
            answer = self.handler(request)
            reply = await answer if inspect.isawaitable(answer) else answer
        if reply is None:
            reply = self.accept(request)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _scripted(self, method: str) -> Reply | None:
        for name in (method, ANY):
            left = self._scripts.get(name)
            if left:
                return left.popleft()
        return None

    def accept(self, request: FakeRequest) -> HttpResponse:
        """What a Campaign that takes everything answers: the fake's default."""
        method = request.method
        if request.verb == "GET":
            return http(200, b"OK\n", {"Content-Type": "text/plain"})
        if not method:
            return ims_token()  # a POST without SOAPAction: the IMS token endpoint
        if method in ("Logon", "BearerTokenLogon"):
            self.logons += 1
            number = self.logons
            return logon(f"fake-session-{number}", f"fake-security-{number}", method=method)
        if method in ("Ingest", "IngestExt"):
            first = len(self.requests)
            uuids = [f"fake-{first}-{i}" for i in range(request.records)]
            return ingest(uuids, method=method)
        return ok(method)
