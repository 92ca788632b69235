"""Ready-made routes for the schemas Campaign v8 stages out of the box.

A route that says ``preset = "recipient"`` starts from the table below and overrides
what it sets itself: ``match`` and ``name`` always, any other route key, and fields key
by key (``[routes.fields.email] length = 255`` keeps the preset's path and type).
So a consent pipeline is two short routes::

    [[routes]]
    name = "subscribe"
    preset = "subscription"
    match = { type = "subscribe" }

    [[routes]]
    name = "unsubscribe"
    preset = "subscription"
    match = { type = "unsubscribe" }
    operation = "delete"

Each preset writes the staging twin (``<ns>:<name>Stg``) through IngestExt, keyed,
so a resent call is harmless and a record can be updated or deleted. Adobe's
staging page names the three staged built-ins (nmsRecipient, nmsSubscriptionRcp,
nmsAppSubscriptionRcp) but no public source lists the v8 attributes of the two
subscription schemas: their fields here are INFERRED from the v7 schemas (the links
to the recipient, the service or the mobile application, as ``<link>-id``
attributes) and match the simulator's built-ins. Check them against your instance
with ``campaign-writer validate --remote`` before relying on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = ["PRESETS"]


def _fields(**fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # Attribute names with a dash (recipient-id) cannot be Python keywords: spelled "_".
    return {name.replace("_", "-"): spec for name, spec in fields.items()}


PRESETS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        # Profiles: upsert on email, as the simulator's and most instances' key.
        "recipient": {
            "schema": "nms:recipientStg",
            "method": "IngestExt",
            "key": ["email"],
            "fields": _fields(
                email={"type": "string", "length": 128},
                firstName={"type": "string", "length": 64},
                lastName={"type": "string", "length": 64},
                mobilePhone={"type": "string", "length": 32},
                birthDate={"type": "date"},
                blackList={"type": "boolean"},
            ),
        },
        # Subscriptions to a service (newsletter, topic); delete to unsubscribe.
        "subscription": {
            "schema": "nms:subscriptionRcpStg",
            "method": "IngestExt",
            "key": ["recipient-id", "service-id"],
            "fields": _fields(
                recipient_id={"type": "int64", "path": "recipientId"},
                service_id={"type": "int64", "path": "serviceId"},
                created={"type": "datetime"},
                expirationDate={"type": "date"},
                origin={"type": "string", "length": 64},
            ),
        },
        # Mobile-app subscriptions (push opt-in); delete, or disabled = true, to opt out.
        "app_subscription": {
            "schema": "nms:appSubscriptionRcpStg",
            "method": "IngestExt",
            "key": ["mobileApp-id", "registrationToken"],
            "fields": _fields(
                mobileApp_id={"type": "int64", "path": "mobileAppId"},
                registrationToken={"type": "string", "length": 255},
                userKey={"type": "string", "length": 255},
                deviceName={"type": "string", "length": 128},
                platform={"type": "string", "length": 16, "enum": ["ios", "android", "web"]},
                disabled={"type": "boolean"},
                created={"type": "datetime"},
            ),
        },
    }
)
