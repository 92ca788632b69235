"""HTTP client transport: the seam, and one aiohttp session behind it.

:class:`Transport` is the seam, as httpx has one: the four calls that delivery, auth
and the daemon make. :class:`HttpTransport` is the real one;
:class:`campaign_writer.testing.FakeTransport` answers in memory, for tests.

This is the one module that calls aiohttp's client; its exceptions become
:class:`~campaign_writer.errors.TransportError` (refused, reset, timed out) or
:class:`~campaign_writer.errors.ResponseError` (a body over the size cap) here, and
nowhere else. Bodies are read in chunks against the cap, so a gigantic answer costs
at most the cap in memory; the total timeout bounds a body that drips in slowly.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import aiohttp

from ..errors import ResponseError, TransportError
from ..logs import get_logger

__all__ = ["HttpResponse", "HttpTransport", "TlsPolicy", "Transport", "ssl_context"]

log = get_logger("transport")


@dataclass(frozen=True)
class TlsPolicy:
    """Certificate verification is on unless an operator turns it off."""

    verify: bool = True
    ca_bundle: str | None = None


class HttpResponse(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """What the writer needs from HTTP: start, POST, GET, close.

    ``post`` and ``get`` return the whole answer, whatever its status. A failed
    exchange (refused, reset, timed out) raises
    :class:`~campaign_writer.errors.TransportError`; a body the transport refuses (over
    its size cap) raises :class:`~campaign_writer.errors.ResponseError`. Nothing else
    escapes.
    """

    async def start(self) -> None:
        """Open what the transport needs (a session, a pool); idempotent."""

    async def close(self) -> None:
        """Release it; idempotent."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST ``body`` to ``url`` and read the whole answer."""

    async def get(self, url: str) -> HttpResponse:
        """GET ``url`` (health probes) and read the whole answer."""


def ssl_context(policy: TlsPolicy) -> ssl.SSLContext | bool:
    """The ``ssl`` argument for aiohttp: a verifying context, or False when disabled."""
    if not policy.verify:
        log.warning("TLS certificate verification is OFF (campaign.tls.verify = false)")
        return False
    # The system's CAs stay trusted: the bundle adds a private CA (Campaign's, say)
    # without breaking IMS, which shares this transport and has a public certificate.
    context = ssl.create_default_context()
    if policy.ca_bundle:
        context.load_verify_locations(cafile=policy.ca_bundle)
    return context


class HttpTransport:
    """A keep-alive aiohttp session with sensible timeouts; start() before use."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_response_bytes: int,
        tls: TlsPolicy | None = None,
        max_connections: int = 64,
        user_agent: str = "campaign-writer",
    ) -> None:
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._tls = tls or TlsPolicy()
        self._max_connections = max_connections
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            ssl=ssl_context(self._tls),
            keepalive_timeout=30.0,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.timeout_s,
            connect=min(10.0, self.timeout_s),
            sock_read=self.timeout_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self._user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),  # tokens are sent explicitly, never stored
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        """POST and read the whole answer (up to the cap); errors become ours."""
        return await self._request("POST", url, body, headers)

    async def _request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> HttpResponse:
        if self._session is None:
            raise RuntimeError("HttpTransport.start() was not called")
        try:
            async with self._session.request(
                method, url, data=body, headers=dict(headers)
            ) as response:
                length = response.content_length
                if length is not None and length > self.max_response_bytes:
                    raise ResponseError(
                        f"response of {length} bytes is over the {self.max_response_bytes}-byte cap"
                    )
                data = await self._read_capped(response)
                return HttpResponse(response.status, response.headers, data)
        except (ResponseError, TransportError):
            raise
        except TimeoutError:
            raise TransportError(f"no complete answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientPayloadError as exc:
            raise TransportError(f"response body cut short: {exc}") from None
        except aiohttp.ClientSSLError as exc:
            raise TransportError(f"TLS failure: {exc}") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise TransportError(f"connection failed: {exc}") from None

    async def get(self, url: str) -> HttpResponse:
        """GET (health probes); same error translation and cap as :meth:`post`."""
        return await self._request("GET", url, None, {})

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > self.max_response_bytes:
                response.close()
                raise ResponseError(
                    f"response over the {self.max_response_bytes}-byte cap; refused"
                )
            chunks.append(chunk)
        return b"".join(chunks)
