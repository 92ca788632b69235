"""Authentication against the simulator: three modes, renewal, single flight, no leaks."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from campaign_writer.campaign.outcome import AuthExpired, Ok
from campaign_writer.campaign.soap import Credentials, Param
from campaign_writer.errors import AuthError, TransportError
from campaign_writer.logs import JsonFormatter, Secret
from tests.support.clock import FakeClock
from tests.support.simulator import SimulatorHandle
from tests.support.stack import Stack, auth_fields

MODES = ["session", "bearer_logon", "ims"]
DOC = '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="a1" testcol1="x"/>'


async def ingest(stack: Stack, credentials: Credentials) -> object:
    result = await stack.client.call("Ingest", [Param("doc", "document", DOC)], credentials)
    return result.outcome


@pytest.mark.parametrize("mode", MODES)
async def test_each_mode_authenticates_and_its_calls_are_accepted(
    simulator: SimulatorHandle, mode: str
) -> None:
    """Logon, IMS bearer and BearerTokenLogon each yield credentials Campaign accepts."""
    async with Stack(simulator.url, auth_fields(mode, simulator.ims_url)) as stack:
        credentials = await stack.auth.credentials()
        if mode == "ims":
            assert credentials.bearer_token
            assert not credentials.session_token
        else:
            assert credentials.session_token
            assert credentials.security_token
            assert not credentials.bearer_token
        assert isinstance(await ingest(stack, credentials), Ok)
        assert stack.auth.ready
    rows = await simulator.records("dem:sampleTableStg")
    assert [r["id"] for r in rows] == ["a1"]


@pytest.mark.parametrize("mode", MODES)
async def test_renewal_is_single_flight(simulator: SimulatorHandle, mode: str) -> None:
    """Fifty senders asking at once cause one logon; fifty renewals of one stale set cause one."""
    async with Stack(simulator.url, auth_fields(mode, simulator.ims_url)) as stack:
        first = await asyncio.gather(*(stack.auth.credentials() for _ in range(50)))
        assert len({id(c) for c in first}) == 1
        renewed = await asyncio.gather(*(stack.auth.renew(first[0]) for _ in range(50)))
        assert len({id(c) for c in renewed}) == 1
        assert renewed[0] is not first[0]
    stats = await simulator.stats()
    logon = {"session": "Logon", "bearer_logon": "BearerTokenLogon"}.get(mode)
    if logon:
        assert stats["calls_by_method"][logon] == 2
    assert stack.metrics.auth_renewals.labels(mode).value == 2


@pytest.mark.parametrize(
    ("mode", "action"),
    [("session", "expire_sessions"), ("bearer_logon", "expire_sessions"), ("ims", "revoke_tokens")],
)
async def test_expired_credentials_are_renewed_and_work_again(
    simulator: SimulatorHandle, mode: str, action: str
) -> None:
    """After forced expiry or revocation, a call is AuthExpired; renew() gives working ones."""
    async with Stack(simulator.url, auth_fields(mode, simulator.ims_url)) as stack:
        old = await stack.auth.credentials()
        await simulator.control(**{action: True})
        assert isinstance(await ingest(stack, old), AuthExpired)
        new = await stack.auth.renew(old)
        assert new != old
        assert isinstance(await ingest(stack, new), Ok)


async def test_session_is_renewed_ahead_of_its_timeout(
    simulator_factory,
) -> None:
    """With sessionTimeOut 600 s and a 60 s margin, credentials() logs on again after 540 s."""
    simulator = await simulator_factory(tps_limit=1000, latency_ms=0, session_timeout_s=600)
    clock = FakeClock()
    fields = auth_fields("session", simulator.ims_url, refresh_margin_s=60.0)
    async with Stack(simulator.url, fields, clock=clock) as stack:
        first = await stack.auth.credentials()
        clock.advance(539)
        assert await stack.auth.credentials() is first
        clock.advance(2)
        second = await stack.auth.credentials()
        assert second is not first
        assert isinstance(await ingest(stack, second), Ok)


async def test_ims_token_is_refreshed_before_expires_in(
    simulator_factory,
) -> None:
    """An IMS token living 100 s is replaced once half of it has gone (margin capped at ttl/2)."""
    simulator = await simulator_factory(tps_limit=1000, latency_ms=0, ims_token_ttl_s=100)
    clock = FakeClock()
    async with Stack(simulator.url, auth_fields("ims", simulator.ims_url), clock=clock) as stack:
        first = await stack.auth.credentials()
        clock.advance(49)
        assert await stack.auth.credentials() is first
        clock.advance(2)
        assert (await stack.auth.credentials()).bearer_token != first.bearer_token


@pytest.mark.parametrize(
    ("mode", "changes"),
    [
        ("session", {"password": Secret("wrong-password")}),
        ("ims", {"client_secret": Secret("wrong-secret")}),
        ("bearer_logon", {"client_id": "nobody"}),
    ],
)
async def test_bad_credentials_are_an_auth_error_and_not_ready(
    simulator: SimulatorHandle, mode: str, changes: dict[str, object]
) -> None:
    """Refused credentials raise AuthError (not retriable) and leave the authenticator unready."""
    fields = auth_fields(mode, simulator.ims_url, **changes)
    async with Stack(simulator.url, fields) as stack:
        with pytest.raises(AuthError) as info:
            await stack.auth.credentials()
        assert not info.value.retriable
        assert not stack.auth.ready
        assert stack.auth.last_error


@pytest.mark.parametrize("kind", ["html", "masked", "soap"])
async def test_a_logon_answered_by_a_proxy_page_or_an_unplaced_fault_is_transient(
    simulator: SimulatorHandle, kind: str
) -> None:
    """A Logon met by a 200 HTML page or a fault nothing places is retriable, not fatal:
    credentials are condemned only by a fault about credentials."""
    await simulator.control(**{f"rate_{kind}": 1.0}, fault_methods=["Logon"])
    fields = auth_fields("session", simulator.ims_url)
    async with Stack(simulator.url, fields) as stack:
        with pytest.raises(TransportError) as info:
            await stack.auth.credentials()
        assert info.value.retriable
        await simulator.control(**{f"rate_{kind}": 0.0})
        assert (await stack.auth.credentials()).session_token


def test_missing_secrets_are_refused_when_wiring() -> None:
    """A session mode without a password or an IMS mode without a secret cannot start."""
    with pytest.raises(AuthError, match="needs login and password"):
        Stack("http://127.0.0.1:9", auth_fields("session", "", password=None))
    with pytest.raises(AuthError, match="needs client_id and client_secret"):
        Stack("http://127.0.0.1:9", auth_fields("ims", "", client_secret=None))


@pytest.mark.parametrize("mode", MODES)
async def test_no_secret_or_token_appears_in_debug_logs(
    simulator_factory,
    mode: str,
) -> None:
    """A full auth cycle logged at DEBUG shows no password, client secret or token."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    seen: list[str] = ["admin-password-x", "sim-secret-x"]
    try:
        simulator = await simulator_factory(
            tps_limit=1000,
            latency_ms=0,
            users=[{"login": "admin", "password": "admin-password-x"}],
            ims_clients=[{"client_id": "sim-client", "client_secret": "sim-secret-x"}],
        )
        fields = auth_fields(
            mode,
            simulator.ims_url,
            password=Secret("admin-password-x"),
            client_secret=Secret("sim-secret-x"),
        )
        async with Stack(simulator.url, fields) as stack:
            credentials = await stack.auth.credentials()
            seen += [
                credentials.session_token,
                credentials.security_token,
                credentials.bearer_token,
            ]
            logging.getLogger("test").debug("credentials %r fields %r", credentials, fields)
            await simulator.control(expire_sessions=True, revoke_tokens=True)
            assert isinstance(await ingest(stack, credentials), AuthExpired)
            renewed = await stack.auth.renew(credentials)
            seen += [renewed.session_token, renewed.security_token, renewed.bearer_token]
            assert isinstance(await ingest(stack, renewed), Ok)
            # Even a careless message that interpolates a token is masked.
            logging.getLogger("test").warning(
                "token was %s", renewed.bearer_token or renewed.session_token
            )
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    assert "authenticated" in output  # the cycle was logged
    secrets = [s for s in seen if s]
    assert len(secrets) >= 4
    for secret in secrets:
        assert secret not in output, f"a secret leaked into the logs: {secret[:4]}..."
