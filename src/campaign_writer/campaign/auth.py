"""Authentication to Campaign: three modes behind one small interface.

* ``session`` -- ``xtk:session#Logon`` with login and password. Calls carry the
  session token (``__sessiontoken`` cookie, ``X-Session-Token``, first parameter)
  and the security token (``X-Security-Token``).
* ``bearer_logon`` -- an IMS access token exchanged for session and security tokens
  through ``xtk:session#BearerTokenLogon`` (the legacy technical-account path).
* ``ims`` -- OAuth server-to-server: an IMS access token from client credentials,
  sent as ``Authorization: Bearer`` with an empty session token; no Logon at all.

Every authenticator renews ahead of expiry (``sessionTimeOut``/``securityTimeOut``
or ``expires_in``, minus a margin) and on demand when a call comes back
AuthExpired. Renewal is single-flight: however many senders ask at once, one
request goes out and all of them get its result. Tokens are registered with
:func:`campaign_writer.logs.register_secret` the moment they arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol
from urllib.parse import urlencode

import orjson

from ..errors import AuthError, TransportError
from ..logs import Secret, get_logger, register_secret
from ..metrics import Metrics
from .client import CampaignClient
from .outcome import Fatal, Ok, Reject, Retry, Throttled
from .soap import Credentials, Param, parse_logon
from .transport import Transport

__all__ = [
    "AuthSettings",
    "Authenticator",
    "BearerLogonAuth",
    "ImsAuth",
    "ImsTokenSource",
    "SessionAuth",
    "create_authenticator",
]

log = get_logger("auth")

DEFAULT_LIFETIME_S = 86400.0  # both Campaign tokens live 24 h by default (serverConf.xml)
Clock = Callable[[], float]


class AuthSettings(Protocol):
    """The ``[campaign.auth]`` section, as config.AuthConfig provides it.

    Members are read-only properties so that a frozen dataclass satisfies it.
    """

    @property
    def mode(self) -> Literal["session", "bearer_logon", "ims"]: ...
    @property
    def login(self) -> str: ...
    @property
    def password(self) -> Secret | None: ...
    @property
    def ims_url(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> Secret | None: ...
    @property
    def scope(self) -> str: ...
    @property
    def refresh_margin_s(self) -> float: ...


class Authenticator:
    """Hands out current credentials; renews them ahead of expiry and on demand."""

    mode = "none"

    def __init__(self, *, refresh_margin_s: float, clock: Clock, metrics: Metrics | None) -> None:
        self.refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._current: Credentials | None = None
        self._renew_at = 0.0
        self.last_error: str | None = None
        # Campaign refused the credentials themselves (not a network failure): this
        # instance cannot deliver until the configuration changes.
        self.refused: str | None = None

    @property
    def ready(self) -> bool:
        """True when the last attempt to authenticate succeeded."""
        return self._current is not None and self.last_error is None

    async def credentials(self) -> Credentials:
        """Current credentials, obtaining or refreshing them first when due."""
        current = self._current
        if current is not None and self._clock() < self._renew_at:
            return current
        return await self._obtain(stale=current)

    async def renew(self, stale: Credentials) -> Credentials:
        """Campaign refused ``stale``: get new credentials unless someone already did."""
        return await self._obtain(stale=stale, force=True)

    async def close(self) -> None:
        """Release server-side state (Logoff for session modes); best effort."""

    async def _obtain(self, *, stale: Credentials | None, force: bool = False) -> Credentials:
        async with self._lock:
            current = self._current
            if current is not None and current is not stale:
                return current  # another sender renewed while we waited for the lock
            if current is not None and not force and self._clock() < self._renew_at:
                return current
            try:
                fresh, lifetime = await self._authenticate()
            except AuthError as exc:
                self.last_error = self.refused = str(exc)
                raise
            except TransportError as exc:
                self.last_error = str(exc)
                raise
            self.last_error = self.refused = None
            margin = min(self.refresh_margin_s, lifetime / 2)
            self._renew_at = self._clock() + lifetime - margin
            self._current = fresh
            if self._metrics is not None:
                self._metrics.auth_renewals.labels(self.mode).inc()
            log.info(
                "authenticated",
                extra={"mode": self.mode, "renew_in_s": round(lifetime - margin)},
            )
            return fresh

    async def _authenticate(self) -> tuple[Credentials, float]:
        raise NotImplementedError


class ImsTokenSource:
    """Client-credentials tokens from Adobe IMS (or the simulator's IMS endpoint)."""

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        client_id: str,
        client_secret: Secret,
        scope: str,
    ) -> None:
        self._transport = transport
        self.url = url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope

    async def fetch(self) -> tuple[str, float]:
        """A new access token and its lifetime in seconds (there is no refresh token)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret.reveal(),
        }
        if self.scope:
            form["scope"] = self.scope
        response = await self._transport.post(
            self.url,
            urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        if response.status >= 500 or response.status == 429:
            raise TransportError(f"IMS token endpoint answered HTTP {response.status}")
        try:
            payload = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            payload = None
        if response.status != 200 or not isinstance(payload, dict):
            reason = payload.get("error") if isinstance(payload, dict) else None
            raise AuthError(
                f"IMS refused client {self.client_id!r}: HTTP {response.status}"
                + (f" ({reason})" if reason else "")
            )
        token = payload.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError("IMS answered without an access_token")
        register_secret(token)
        expires_in = payload.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 86399.0
        return token, max(1.0, lifetime)


class ImsAuth(Authenticator):
    """``ims`` mode: bearer token on every call, empty session token."""

    mode = "ims"

    def __init__(
        self,
        source: ImsTokenSource,
        *,
        refresh_margin_s: float,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(refresh_margin_s=refresh_margin_s, clock=clock, metrics=metrics)
        self._source = source

    async def _authenticate(self) -> tuple[Credentials, float]:
        token, lifetime = await self._source.fetch()
        return Credentials(bearer_token=token), lifetime


class _LogonAuth(Authenticator):
    """Shared by the two modes that end with Campaign session and security tokens."""

    def __init__(
        self,
        client: CampaignClient,
        *,
        refresh_margin_s: float,
        clock: Clock,
        metrics: Metrics | None,
    ) -> None:
        super().__init__(refresh_margin_s=refresh_margin_s, clock=clock, metrics=metrics)
        self._client = client

    async def _logon_call(self, method: str, params: list[Param]) -> tuple[Credentials, float]:
        result = await self._client.call(method, params, Credentials())
        outcome = result.outcome
        if isinstance(outcome, Ok):
            logon = parse_logon(outcome.response)
            register_secret(logon.session_token)
            register_secret(logon.security_token)
            timeouts = [t for t in (logon.session_timeout_s, logon.security_timeout_s) if t]
            return (
                Credentials(logon.session_token, logon.security_token),
                min(timeouts) if timeouts else DEFAULT_LIFETIME_S,
            )
        if isinstance(outcome, Throttled):
            raise TransportError(f"{method} was throttled (HTTP 429)")
        if isinstance(outcome, Fatal):
            raise AuthError(f"{method} refused: {outcome.reason}")
        reason = getattr(outcome, "reason", type(outcome).__name__)
        # Only a fault about credentials or access (Fatal, above) condemns the login: an
        # unreadable answer (a proxy page on HTTP 200) or a fault nothing places is
        # transient, and a login retried later may pass.
        if isinstance(outcome, Retry | Reject) or result.status is None or result.status >= 500:
            raise TransportError(f"{method} failed: {reason}")
        raise AuthError(f"{method} refused: {reason}")

    async def close(self) -> None:
        current = self._current
        if current is None:
            return
        self._current = None
        try:
            await self._client.call("Logoff", [], current)
        except Exception as exc:  # closing must never fail the shutdown
            log.debug("logoff failed", extra={"error": type(exc).__name__})


class SessionAuth(_LogonAuth):
    """``session`` mode: Logon with login and password."""

    mode = "session"

    def __init__(
        self,
        client: CampaignClient,
        *,
        login: str,
        password: Secret,
        refresh_margin_s: float,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(client, refresh_margin_s=refresh_margin_s, clock=clock, metrics=metrics)
        self.login = login
        self._password = password

    async def _authenticate(self) -> tuple[Credentials, float]:
        return await self._logon_call(
            "Logon",
            [
                Param("login", "string", self.login),
                Param("password", "string", self._password.reveal()),
                Param("parameters", "element", ""),
            ],
        )


class BearerLogonAuth(_LogonAuth):
    """``bearer_logon`` mode: an IMS token exchanged through BearerTokenLogon."""

    mode = "bearer_logon"

    def __init__(
        self,
        client: CampaignClient,
        source: ImsTokenSource,
        *,
        refresh_margin_s: float,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(client, refresh_margin_s=refresh_margin_s, clock=clock, metrics=metrics)
        self._source = source

    async def _authenticate(self) -> tuple[Credentials, float]:
        token, token_lifetime = await self._source.fetch()
        credentials, lifetime = await self._logon_call(
            "BearerTokenLogon", [Param("bearerToken", "string", token)]
        )
        return credentials, min(lifetime, token_lifetime)


def create_authenticator(
    settings: AuthSettings,
    client: CampaignClient,
    transport: Transport,
    *,
    metrics: Metrics | None = None,
    clock: Clock = time.monotonic,
) -> Authenticator:
    """The authenticator for ``settings.mode``; missing secrets are an AuthError."""
    margin = settings.refresh_margin_s
    if settings.mode == "session":
        if not settings.login or settings.password is None:
            raise AuthError("campaign.auth: mode 'session' needs login and password")
        return SessionAuth(
            client,
            login=settings.login,
            password=settings.password,
            refresh_margin_s=margin,
            clock=clock,
            metrics=metrics,
        )
    if not settings.client_id or settings.client_secret is None:
        raise AuthError(f"campaign.auth: mode {settings.mode!r} needs client_id and client_secret")
    source = ImsTokenSource(
        transport,
        url=settings.ims_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scope=settings.scope,
    )
    if settings.mode == "ims":
        return ImsAuth(source, refresh_margin_s=margin, clock=clock, metrics=metrics)
    if settings.mode == "bearer_logon":
        return BearerLogonAuth(
            client, source, refresh_margin_s=margin, clock=clock, metrics=metrics
        )
    raise AuthError(f"campaign.auth.mode: unknown mode {settings.mode!r}")
