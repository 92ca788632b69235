"""The transport seam: the shipped FakeTransport answers as its documentation says, and
the daemon, the client and the authenticators run over it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from campaign_writer.campaign.auth import ImsAuth, ImsTokenSource
from campaign_writer.campaign.client import CampaignClient
from campaign_writer.campaign.outcome import AuthExpired, Ok, Reject, Retry, Throttled
from campaign_writer.campaign.soap import Credentials, Param, parse_uuids
from campaign_writer.campaign.transport import HttpTransport, Transport
from campaign_writer.daemon import Daemon
from campaign_writer.errors import TransportError
from campaign_writer.logs import Secret
from campaign_writer.testing import (
    ANY,
    FakeRequest,
    FakeTransport,
    Reply,
    fault,
    http,
    ims_token,
    reset,
    session_expired,
    throttled,
    timeout,
)
from campaign_writer.throttle import TenantThrottle
from tests.support.clock import FakeClock
from tests.support.writer import post_events, sample_events, wait_for, writer_config

URL = "https://campaign.test"
DOC = (
    '<sampleTableStg-collection xtkschema="dem:sampleTableStg">'
    '<sampleTableStg _key="@id" id="a"/><sampleTableStg _key="@id" id="b"/>'
    '<sampleTableStg _key="@id" id="c"/></sampleTableStg-collection>'
)


async def _client(transport: FakeTransport) -> CampaignClient:
    await transport.start()
    clock = FakeClock()  # a 429's pause passes at once
    return CampaignClient(URL, transport, TenantThrottle(1000, clock=clock, sleep=clock.sleep))


def test_both_transports_satisfy_the_protocol() -> None:
    """HttpTransport and FakeTransport both have the four calls of the seam."""
    transports: list[Transport] = [
        HttpTransport(timeout_s=1.0, max_response_bytes=1024),
        FakeTransport(),
    ]
    for transport in transports:
        for name in ("start", "close", "post", "get"):
            assert asyncio.iscoroutinefunction(getattr(transport, name)), name


async def test_scripts_come_first_by_method_then_any_then_the_default() -> None:
    """A method's script answers its calls in order, ANY's answers whatever comes next,
    and once both are used up the fake accepts (Ingest: one UUID per record)."""
    transport = FakeTransport()
    transport.script("Ingest", throttled(retry_after=3.0), session_expired())
    transport.script(ANY, reset())
    client = await _client(transport)
    doc = [Param("doc", "document", DOC)]
    outcomes = [(await client.call("Ingest", doc, Credentials())).outcome for _ in range(4)]
    assert isinstance(outcomes[0], Throttled) and outcomes[0].retry_after == 3.0
    assert isinstance(outcomes[1], AuthExpired)
    assert isinstance(outcomes[2], Retry) and "TransportError" in outcomes[2].reason
    assert isinstance(outcomes[3], Ok)
    assert len(parse_uuids(outcomes[3].response)) == 3
    assert transport.unused() == {}
    assert [r.method for r in transport.requests] == ["Ingest"] * 4
    assert transport.requests[0].action == "xtk:persist|xtk:session#Ingest"
    assert transport.requests[0].records == 3


async def test_a_handler_answers_from_what_was_sent_or_falls_through() -> None:
    """The handler sees each request; None lets the default answer, a reply or an
    exception it returns is used, and it may be a coroutine function."""
    seen: list[FakeRequest] = []

    async def handler(request: FakeRequest) -> Reply | None:
        seen.append(request)
        if b'id="bad"' in request.body:
            return fault("PostgreSQL error: duplicate key violates unique constraint")
        if b'id="gone"' in request.body:
            return timeout(5.0)
        return None

    transport = FakeTransport(handler=handler)
    client = await _client(transport)

    async def send(key: str) -> object:
        entity = f'<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="{key}"/>'
        result = await client.call("Ingest", [Param("doc", "document", entity)], Credentials())
        return result.outcome

    bad, gone, good = await send("bad"), await send("gone"), await send("good")
    assert isinstance(bad, Reject) and bad.scope == "record"
    assert isinstance(gone, Retry) and "no complete answer within 5 s" in gone.reason
    assert isinstance(good, Ok)
    assert [r.records for r in seen] == [1, 1, 1]


async def test_requests_are_recorded_and_calls_outside_start_close_refused() -> None:
    """Every request is kept with its headers, body and the clock's time; like
    HttpTransport, the fake refuses calls before start() and after close()."""
    now = [5.0]
    transport = FakeTransport(clock=lambda: now[0])
    with pytest.raises(RuntimeError):
        await transport.post(URL, b"x", {})
    await transport.start()
    answer = await transport.post(URL, b"body", {"SOAPAction": '"xtk:session#Logon"'})
    now[0] = 7.5
    probe = await transport.get(URL + "/r/test")
    assert answer.status == 200 and probe.status == 200
    logon, get = transport.requests
    assert (logon.verb, logon.method, logon.body, logon.at) == ("POST", "Logon", b"body", 5.0)
    assert (get.verb, get.method, get.at) == ("GET", "", 7.5)
    assert transport.calls() == [logon]  # GETs and IMS posts are not SOAP calls
    await transport.post(URL + "/nl/jsp/soaprouter.jsp?soapAction=xtk%3Asession%23Logoff", b"", {})
    assert transport.requests[-1].method == "Logoff"  # named in the URL, as the SDK does
    await transport.close()
    with pytest.raises(RuntimeError):
        await transport.get(URL)


async def test_the_default_logon_gives_fresh_tokens_each_time() -> None:
    """Each Logon the fake accepts hands out new tokens, so a renewal can be told apart."""
    transport = FakeTransport()
    client = await _client(transport)
    first = (await client.call("Logon", [], Credentials())).outcome
    second = (await client.call("Logon", [], Credentials())).outcome
    assert isinstance(first, Ok) and isinstance(second, Ok)
    assert first.response.outputs[0].text == "fake-session-1"
    assert second.response.outputs[0].text == "fake-session-2"
    assert transport.logons == 2


async def test_ims_auth_runs_over_the_fake() -> None:
    """The IMS token source posts to the fake, which answers as IMS; a reset, or IMS
    answering HTTP 503, reaches the authenticator as a TransportError (try again)."""
    transport = FakeTransport()
    await transport.start()
    transport.script("", reset(), http(503), ims_token("tok-2", expires_in=600))
    source = ImsTokenSource(
        transport, url=URL + "/ims", client_id="c", client_secret=Secret("s"), scope=""
    )
    auth = ImsAuth(source, refresh_margin_s=60.0)
    for _ in range(2):
        with pytest.raises(TransportError):
            await auth.credentials()
        assert auth.refused is None
    credentials = await auth.credentials()
    assert credentials.bearer_token == "tok-2"
    assert b"grant_type=client_credentials" in transport.requests[-1].body


async def test_the_daemon_delivers_through_the_transport_it_is_given(tmp_path: Path) -> None:
    """Daemon(config, transport=FakeTransport()): events posted to its intake reach the
    fake as Ingest calls (a 429 among them), and nothing is left queued."""
    transport = FakeTransport()
    transport.script("Ingest", throttled(retry_after=0.1))
    config = writer_config(URL, tmp_path)
    daemon = Daemon(config, transport=transport)
    await daemon.start()
    try:
        assert daemon.http is not None and daemon.dispatcher is not None
        await post_events(daemon.http.url, sample_events(50))
        dispatcher = daemon.dispatcher
        await wait_for(lambda: dispatcher.totals["delivered"] == 50, timeout=20)
        assert dispatcher.totals["throttled"] == 1
        assert sum(r.records for r in transport.calls("Ingest")[1:]) == 50
        assert transport.calls()[0].method == "Logon"
        assert transport.started
    finally:
        await daemon.close()
    assert not transport.started  # the daemon closes the transport it was given


def test_http_reply_keeps_status_headers_and_body() -> None:
    """http() builds any raw answer."""
    answer = http(503, b"busy", {"Retry-After": "1"})
    assert (answer.status, dict(answer.headers), answer.body) == (
        503,
        {"Retry-After": "1"},
        b"busy",
    )
