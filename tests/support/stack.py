"""The writer's Campaign-facing stack (transport, throttle, client, auth) for tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from campaign_writer.campaign.auth import Authenticator, create_authenticator
from campaign_writer.campaign.client import CampaignClient
from campaign_writer.campaign.transport import HttpTransport, TlsPolicy
from campaign_writer.logs import Secret
from campaign_writer.metrics import Metrics
from campaign_writer.throttle import TenantThrottle


@dataclass
class AuthFields:
    """Stands in for config.AuthConfig: the fields the authenticators read."""

    mode: Literal["session", "bearer_logon", "ims"] = "session"
    login: str = "admin"
    password: Secret | None = None
    ims_url: str = ""
    client_id: str = "sim-client"
    client_secret: Secret | None = None
    scope: str = "openid,AdobeID"
    refresh_margin_s: float = 300.0


def auth_fields(mode: str, ims_url: str, **changes: object) -> AuthFields:
    fields = AuthFields(
        mode=mode,
        password=Secret("admin"),
        ims_url=ims_url,
        client_secret=Secret("sim-secret"),
    )
    for name, value in changes.items():
        setattr(fields, name, value)
    return fields


class Stack:
    """Transport, throttle, client and authenticator wired as the daemon wires them."""

    def __init__(
        self,
        url: str,
        fields: AuthFields,
        *,
        tps: float = 1000,
        timeout_s: float = 10.0,
        tls: TlsPolicy | None = None,
        clock: object = None,
    ) -> None:
        self.metrics = Metrics()
        self.transport = HttpTransport(timeout_s=timeout_s, max_response_bytes=1 << 20, tls=tls)
        self.throttle = TenantThrottle(tps)
        self.client = CampaignClient(url, self.transport, self.throttle, metrics=self.metrics)
        extra = {} if clock is None else {"clock": clock}
        self.auth: Authenticator = create_authenticator(
            fields,
            self.client,
            self.transport,
            metrics=self.metrics,
            **extra,
        )

    async def __aenter__(self) -> Stack:
        await self.transport.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.auth.close()
        await self.transport.close()
