"""Authentication: Logon sessions, their expiry, security tokens and IMS bearer tokens."""

from __future__ import annotations

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import AuthExpired, Fatal, Ok
from campaign_writer.simulator.codes import INVALID_LOGIN, SESSION_EXPIRED
from tests.support.simulator import FakeClock

DOC = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="{}" testcol1="v"/>'


async def test_bad_login_is_fatal(simulator) -> None:
    """A wrong password gets XSV-350012 under SOP-330011, classified Fatal; no token leaks."""
    reply = await simulator.call(
        "Logon",
        [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "nope"),
            soap.Param("parameters", "element", ""),
        ],
    )
    outcome = reply.outcome()
    assert isinstance(outcome, Fatal) and outcome.code == INVALID_LOGIN
    assert (await simulator.stats())["sessions"] == 0


async def test_sessions_expire_after_the_timeout(simulator_factory) -> None:
    """After session_timeout_s a session token gets XSV-350008 (AuthExpired); a new Logon works."""
    clock = FakeClock()
    sim = await simulator_factory(latency_ms=0, session_timeout_s=600, clock=clock)
    creds = await sim.logon()
    clock.advance(599.9)
    assert isinstance((await sim.write("IngestExt", DOC.format(1), creds)).outcome(), Ok)
    clock.advance(0.1)
    reply = await sim.write("IngestExt", DOC.format(2), creds)
    assert isinstance(reply.outcome(), AuthExpired)
    fault = reply.parsed()
    assert isinstance(fault, soap.SoapFault) and fault.code == SESSION_EXPIRED
    fresh = await sim.logon()
    assert isinstance((await sim.write("IngestExt", DOC.format(3), fresh)).outcome(), Ok)
    assert [r["id"] for r in await sim.records("dem:sampleTableStg")] == ["1", "3"]


async def test_expiry_as_raw_text_and_faults_on_http_200(simulator) -> None:
    """The XSV-350008 text body and faults on HTTP 200 (older builds) still classify right."""
    creds = await simulator.logon()
    await simulator.control(expire_sessions=True, session_expired_style="text")
    reply = await simulator.write("IngestExt", DOC.format(1), creds)
    assert reply.status == 500 and reply.body.startswith(SESSION_EXPIRED.encode())
    assert isinstance(reply.outcome(), AuthExpired)
    await simulator.control(fault_status=200, session_expired_style="fault")
    reply = await simulator.write("IngestExt", DOC.format(1), creds)
    assert reply.status == 200 and isinstance(reply.outcome(), AuthExpired)


async def test_control_expires_every_session(simulator) -> None:
    """expire_sessions invalidates all live sessions at once."""
    first, second = await simulator.logon(), await simulator.logon()
    answer = await simulator.control(expire_sessions=True)
    assert answer["done"]["expired_sessions"] == 2
    for creds in (first, second):
        reply = await simulator.write("IngestExt", DOC.format(1), creds)
        assert isinstance(reply.outcome(), AuthExpired)


async def test_ims_tokens_authorise_bearer_calls(simulator) -> None:
    """A client-credentials token from /ims/token/v3 works as Authorization: Bearer, no Logon."""
    form = {
        "grant_type": "client_credentials",
        "client_id": "sim-client",
        "client_secret": "sim-secret",
        "scope": "openid",
    }
    async with simulator.session.post(simulator.ims_url, data=form) as answer:
        assert answer.status == 200
        grant = await answer.json()
    assert grant["token_type"] == "bearer" and grant["expires_in"] == 86399
    creds = soap.Credentials(bearer_token=grant["access_token"])
    request = soap.build_request(
        "Ingest", [soap.Param("doc", "document", DOC.format("b"))], creds, soap.WireOptions()
    )
    assert (
        "X-Security-Token" not in request.headers
        and b'<sessiontoken xsi:type="xsd:string"></sessiontoken>' in request.body
    )
    reply = await simulator.post(request.path, request.body, request.headers)
    assert isinstance(reply.outcome(), Ok)
    reply = await simulator.call("GetUserInfo", [], creds)
    assert reply.outcome().response.outputs[0].element.get("login") == "sim-client"


async def test_ims_endpoint_refuses_bad_requests(simulator) -> None:
    """Wrong grant, unknown client and wrong secret get OAuth errors; no token is issued."""
    cases = [
        (
            {"grant_type": "password", "client_id": "sim-client", "client_secret": "sim-secret"},
            400,
            "unsupported_grant_type",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "who", "client_secret": "x"},
            400,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "x"},
            401,
            "invalid_client",
        ),
    ]
    for form, status, error in cases:
        async with simulator.session.post(simulator.ims_url, data=form) as answer:
            assert answer.status == status
            assert (await answer.json())["error"] == error
    assert (await simulator.stats())["ims_tokens"] == 0


async def test_ims_tokens_expire_and_can_be_revoked(simulator_factory) -> None:
    """Bearer tokens stop working after ims_token_ttl_s, or at once when revoked."""
    clock = FakeClock()
    sim = await simulator_factory(latency_ms=0, ims_token_ttl_s=300, clock=clock)
    expiring = soap.Credentials(bearer_token=await sim.ims_token())
    clock.advance(299)
    assert isinstance((await sim.write("Ingest", DOC.format(1), expiring)).outcome(), Ok)
    clock.advance(1)
    assert isinstance((await sim.write("Ingest", DOC.format(2), expiring)).outcome(), AuthExpired)
    await sim.control(ims_token_ttl_s=3600)
    revoked = soap.Credentials(bearer_token=await sim.ims_token())
    assert (await sim.control(revoke_tokens=True))["done"]["revoked_tokens"] == 1
    assert isinstance((await sim.write("Ingest", DOC.format(3), revoked)).outcome(), AuthExpired)
    renewed = soap.Credentials(bearer_token=await sim.ims_token())
    assert isinstance((await sim.write("Ingest", DOC.format(4), renewed)).outcome(), Ok)


async def test_bearer_token_logon_swaps_an_ims_token_for_a_session(simulator) -> None:
    """BearerTokenLogon takes an IMS token and answers like Logon; a bad token is AuthExpired."""
    token = await simulator.ims_token()
    reply = await simulator.call("BearerTokenLogon", [soap.Param("bearerToken", "string", token)])
    outcome = reply.outcome()
    assert isinstance(outcome, Ok) and outcome.response.method == "BearerTokenLogon"
    result = soap.parse_logon(outcome.response)
    creds = soap.Credentials(result.session_token, result.security_token)
    assert isinstance((await simulator.write("IngestExt", DOC.format(1), creds)).outcome(), Ok)
    reply = await simulator.call(
        "BearerTokenLogon", [soap.Param("bearerToken", "string", "forged")]
    )
    assert isinstance(reply.outcome(), AuthExpired)


async def test_users_and_clients_given_as_overrides_replace_the_defaults(simulator_factory) -> None:
    """Overriding users and IMS clients replaces admin and sim-client (a config file adds)."""
    sim = await simulator_factory(
        latency_ms=0,
        users=[{"login": "etl", "password": "etl-pass-1"}],
        ims_clients=[{"client_id": "ci", "client_secret": "ci-secret-1"}],
    )
    assert (await sim.logon("etl", "etl-pass-1")).session_token
    assert await sim.ims_token("ci", "ci-secret-1")
    reply = await sim.call(
        "Logon",
        [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "admin"),
            soap.Param("parameters", "element", ""),
        ],
    )
    assert isinstance(reply.outcome(), Fatal)
