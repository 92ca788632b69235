"""Fixtures that run the real Campaign simulator in the test's event loop.

* ``simulator_factory(config=None, *, clock=None, **overrides)`` starts a simulator
  on 127.0.0.1, port 0, with ``config`` (default: :class:`SimulatorConfig`
  defaults) plus ``overrides`` (any config field: raw values as in TOML, or typed
  ones), optionally on a :class:`FakeClock`, and returns a
  :class:`SimulatorHandle`. Every simulator it started is closed at teardown.
* ``simulator``: one with the default config but ``tps_limit=1000`` and no latency,
  for functional tests.

Tests talk to it over real HTTP: the handle's helpers use an aiohttp session (which
trusts the simulator's certificate when it serves TLS).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import Outcome, classify
from campaign_writer.simulator import Simulator, SimulatorConfig
from campaign_writer.simulator.config import apply_changes

__all__ = ["FakeClock", "SimulatorHandle", "simulator", "simulator_factory"]

FAST = {"tps_limit": 1000, "latency_ms": 0, "latency_per_record_ms": 0, "latency_jitter": 0}


class FakeClock:
    """A monotonic clock that moves only when told: pass it as ``clock=`` to the factory.

    The simulator times its limiter, sessions, IMS tokens and fault windows on it, so
    tests of expiry and schedules advance it instead of sleeping.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Reply:
    """One raw HTTP answer, with the classifier's verdict on it."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def outcome(self) -> Outcome:
        return classify(self.status, self.headers, self.body)

    def parsed(self) -> soap.SoapResponse | soap.SoapFault | soap.NotSoap:
        return soap.parse_body(self.body)

    def fault(self) -> soap.SoapFault:
        """The SOAP fault of the body; fails the test if the body is anything else."""
        parsed = self.parsed()
        assert isinstance(parsed, soap.SoapFault), self.body[:500]
        return parsed

    def response(self) -> soap.SoapResponse:
        """The SOAP answer of the body; fails the test if it is not a success."""
        parsed = self.parsed()
        assert isinstance(parsed, soap.SoapResponse), (self.status, self.body[:500])
        return parsed


class SimulatorHandle:
    """A running simulator and the calls tests make to it."""

    def __init__(self, simulator: Simulator, session: aiohttp.ClientSession) -> None:
        self.simulator = simulator
        self.session = session
        self.url = simulator.url
        self.ims_url = f"{simulator.url}/ims/token/v3"

    async def control(self, **changes: Any) -> dict[str, Any]:
        """POST /__sim/control; fails the test if the simulator refuses the change."""
        async with self.session.post(f"{self.url}/__sim/control", json=changes) as answer:
            data: dict[str, Any] = await answer.json()
            assert answer.status == 200, data
            return data

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/__sim/stats") as answer:
            assert answer.status == 200
            data: dict[str, Any] = await answer.json()
            return data

    async def records(self, schema: str, page: int = 1000) -> list[dict[str, str]]:
        """Every stored record of ``schema``, read page by page from /__sim/records."""
        rows: list[dict[str, str]] = []
        while True:
            params = {"schema": schema, "offset": str(len(rows)), "limit": str(page)}
            async with self.session.get(f"{self.url}/__sim/records", params=params) as answer:
                assert answer.status == 200, await answer.text()
                data = await answer.json()
            rows.extend(data["records"])
            if not data["records"] or len(rows) >= data["total"]:
                return rows

    async def calls(self, since: int = 0) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/__sim/calls", params={"since": since}) as answer:
            data = await answer.json()
            calls: list[dict[str, Any]] = data["calls"]
            return calls

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        client_timeout_s: float = 10.0,
    ) -> Reply:
        """POST raw bytes and read the whole answer."""
        async with self.session.post(
            self.url + path,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=client_timeout_s),
        ) as answer:
            return Reply(answer.status, dict(answer.headers), await answer.read())

    async def call(
        self,
        method: str,
        params: Sequence[soap.Param] = (),
        credentials: soap.Credentials | None = None,
        wire: soap.WireOptions | None = None,
        client_timeout_s: float = 10.0,
    ) -> Reply:
        """One SOAP call exactly as the writer builds it (``soap.build_request``)."""
        request = soap.build_request(
            method, params, credentials or soap.Credentials(), wire or soap.WireOptions()
        )
        return await self.post(request.path, request.body, request.headers, client_timeout_s)

    async def logon(self, login: str = "admin", password: str = "admin") -> soap.Credentials:
        """Logon and return the session and security tokens."""
        reply = await self.call(
            "Logon",
            [
                soap.Param("login", "string", login),
                soap.Param("password", "string", password),
                soap.Param("parameters", "element", ""),
            ],
        )
        parsed = reply.parsed()
        assert isinstance(parsed, soap.SoapResponse), reply.body[:500]
        result = soap.parse_logon(parsed)
        return soap.Credentials(result.session_token, result.security_token)

    async def ims_token(
        self, client_id: str = "sim-client", client_secret: str = "sim-secret"
    ) -> str:
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "scope": "openid,AdobeID",
        }
        async with self.session.post(self.ims_url, data=form) as answer:
            data = await answer.json()
            assert answer.status == 200, data
            token: str = data["access_token"]
            return token

    async def write(
        self,
        method: str,
        document: str,
        credentials: soap.Credentials,
        wire: soap.WireOptions | None = None,
    ) -> Reply:
        """Write, WriteCollection, Ingest or IngestExt with ``document`` as its one parameter."""
        return await self.call(method, [soap.Param("doc", "document", document)], credentials, wire)

    async def close(self) -> None:
        await self.session.close()
        await self.simulator.close()


SimulatorFactory = Callable[..., Awaitable[SimulatorHandle]]


@pytest.fixture
async def simulator_factory() -> AsyncIterator[SimulatorFactory]:
    """Start simulators with config overrides; all are closed at teardown."""
    handles: list[SimulatorHandle] = []

    async def start(
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> SimulatorHandle:
        base = config or SimulatorConfig()
        overrides.setdefault("port", 0)
        config = apply_changes(base, overrides, source="simulator_factory")
        simulator = Simulator(config, clock=clock) if clock else Simulator(config)
        await simulator.start()
        ssl_context: ssl.SSLContext | bool = True
        if config.tls_cert:
            ssl_context = ssl.create_default_context(cafile=config.tls_cert)
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        handle = SimulatorHandle(simulator, aiohttp.ClientSession(connector=connector))
        handles.append(handle)
        return handle

    yield start
    for handle in reversed(handles):
        await handle.close()


@pytest.fixture
async def simulator(simulator_factory: SimulatorFactory) -> SimulatorHandle:
    """A simulator with default settings but a high TPS limit and no latency."""
    return await simulator_factory(**FAST)
