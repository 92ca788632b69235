"""A short-lived connection to Campaign for the commands that only read from it.

``validate --remote`` and ``scaffold --remote`` need what the daemon wires for delivery
-- a transport, the tenant throttle, a client and the configured authentication --
for a handful of schema reads. :func:`schema_reader` opens them as the daemon does
(same TLS policy, same wire options, same auth mode, the shared tenant budget if one
is set), yields a :class:`~.schemas.SchemaReader`, and closes everything (logging off)
at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..errors import AuthError
from ..throttle import TenantThrottle
from ..throttle.budget import SharedBudget
from .auth import create_authenticator
from .client import CampaignClient
from .schemas import SchemaLookupError, SchemaReader
from .transport import HttpTransport, TlsPolicy

if TYPE_CHECKING:
    from ..config import CampaignConfig

__all__ = ["schema_reader"]


@contextlib.asynccontextmanager
async def schema_reader(campaign: CampaignConfig, timeout_s: float) -> AsyncIterator[SchemaReader]:
    """A reader of the instance's schemas with the configured auth; closed on exit."""
    transport = HttpTransport(
        timeout_s=timeout_s,
        max_response_bytes=campaign.max_response_bytes,
        tls=TlsPolicy(campaign.tls.verify, campaign.tls.ca_bundle),
        max_connections=4,
    )
    await transport.start()
    budget = None
    try:
        if campaign.budget.redis_url:
            # Writers sharing the tenant's budget count these calls too: take their times
            # from the same schedule in Redis (or a share of the limit if it is lost).
            budget = SharedBudget(campaign.budget.redis_url, campaign.budget.name)
            await budget.start()
        client = CampaignClient(
            campaign.url,
            transport,
            TenantThrottle(campaign.tps_limit, headroom=campaign.headroom, budget=budget),
            wire=campaign.wire,
            max_response_bytes=campaign.max_response_bytes,
        )
        try:
            auth = create_authenticator(campaign.auth, client, transport)
        except AuthError as exc:
            raise SchemaLookupError(str(exc), "auth") from None
        try:
            yield SchemaReader(client, auth)
        finally:
            with contextlib.suppress(Exception):  # a failed logoff changes nothing read
                await auth.close()
    finally:
        await transport.close()
        if budget is not None:
            await budget.close()
