"""Reading the instance's schemas: GetEntityIfMoreRecent parsed, cached, and each failure kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from campaign_writer.campaign.auth import SessionAuth
from campaign_writer.campaign.client import CampaignClient
from campaign_writer.campaign.schemas import SchemaLookupError, SchemaReader, staging_source
from campaign_writer.logs import Secret
from campaign_writer.testing import FakeTransport, fault, ok, reset, session_expired
from campaign_writer.throttle import TenantThrottle

# A compiled schema as the instance returns it: attributes on the main element, an
# enumeration at schema level, a key among others, a link to skip.
EVENT = (
    '<pdomDoc xsi:type="ns:Element" SOAP-ENV:encodingStyle='
    '"http://xml.apache.org/xml-soap/literalxml">'
    '<schema namespace="acme" name="event" label="Shop events" xtkschema="xtk:schema">'
    '<enumeration name="channel" basetype="string">'
    '<value name="web" value="web"/><value name="store" value="store"/></enumeration>'
    '<element name="event" autoStg="true">'
    '<key name="byEmail"><keyfield xpath="@email"/></key>'
    '<key name="id" internal="true"><keyfield xpath="@eventId"/></key>'
    '<attribute name="eventId" type="string" length="36"/>'
    '<attribute name="email" length="128"/>'
    '<attribute name="channel" type="string" length="8" enum="channel"/>'
    '<attribute name="gender" type="byte" enum="nms:recipient:gender"/>'
    '<element name="recipient" type="link" target="nms:recipient"/>'
    "</element></schema></pdomDoc>"
)


def entity(outputs: str) -> object:
    return ok("GetEntityIfMoreRecent", outputs, namespace="urn:wpp:default")


@contextlib.asynccontextmanager
async def reader(transport: FakeTransport) -> AsyncIterator[SchemaReader]:
    await transport.start()
    client = CampaignClient("https://campaign.test", transport, TenantThrottle(1000))
    auth = SessionAuth(client, login="ops", password=Secret("pw"), refresh_margin_s=60.0)
    try:
        yield SchemaReader(client, auth)
    finally:
        await auth.close()
        await transport.close()


async def test_a_schema_is_parsed_and_read_once() -> None:
    """Attributes with type (string by default), length and the values of a local
    enumeration, the internal key, autoStg; a second read is served from the cache."""
    transport = FakeTransport()
    transport.script("GetEntityIfMoreRecent", entity(EVENT))
    async with reader(transport) as schemas:
        schema = await schemas.read("acme:event")
        assert schema is not None and await schemas.read("acme:event") is schema
    assert schema.keys == ("eventId",) and schema.auto_stg and not schema.staging
    assert list(schema.attributes) == ["eventId", "email", "channel", "gender"]
    assert schema.attributes["email"].type == "string"
    assert schema.attributes["email"].length == 128
    assert schema.attributes["channel"].enum == ("web", "store")
    assert schema.attributes["gender"].enum == ()  # another schema's enumeration
    assert [r.method for r in transport.requests] == ["Logon", "GetEntityIfMoreRecent", "Logoff"]
    body = transport.requests[1].body
    assert b"xtk:schema|acme:event" in body


async def test_an_empty_document_means_no_such_schema() -> None:
    """An empty pdomDoc (Campaign's answer for an unknown schema) reads as None."""
    transport = FakeTransport()
    transport.script("GetEntityIfMoreRecent", entity('<pdomDoc xsi:type="ns:Element"/>'))
    async with reader(transport) as schemas:
        assert await schemas.read("acme:nothing") is None


async def test_an_expired_session_is_renewed_once() -> None:
    """XSV-350008 on the lookup: one new Logon, the lookup made again."""
    transport = FakeTransport()
    transport.script("GetEntityIfMoreRecent", session_expired(), entity(EVENT))
    async with reader(transport) as schemas:
        assert await schemas.read("acme:event") is not None
    assert [r.method for r in transport.requests] == [
        "Logon",
        "GetEntityIfMoreRecent",
        "Logon",
        "GetEntityIfMoreRecent",
        "Logoff",
    ]


@pytest.mark.parametrize(
    ("method", "reply", "kind"),
    [
        ("GetEntityIfMoreRecent", reset(), "unreachable"),
        (
            "GetEntityIfMoreRecent",
            fault(
                "SOP-330023 An error occurred during the SOAP call. You don't have the"
                " required rights to view the detail.",
                faultcode="SOAP-ENV:Error",
            ),
            "refused",
        ),
        (
            "GetEntityIfMoreRecent",
            fault("SOP-330006 The method 'GetEntityIfMoreRecent' is not defined"),
            "refused",
        ),
        ("Logon", fault("XSV-350012 Invalid login or password."), "auth"),
        ("Logon", reset(), "unreachable"),
    ],
)
async def test_each_failure_says_its_kind(method: str, reply: object, kind: str) -> None:
    """Out of reach, credentials refused, or the lookup itself refused: the kind tells
    validate (exit 2, or a warning) and the start-up check what happened."""
    transport = FakeTransport()
    for _ in range(4):
        transport.script(method, reply)
    async with reader(transport) as schemas:
        with pytest.raises(SchemaLookupError) as caught:
            await schemas.read("acme:event")
    assert caught.value.kind == kind
    assert "pw" not in str(caught.value)


# Enumerations named as Campaign's compiled schemas and Adobe's SDK spell them:
# qualified by the schema's id (for a twin, its source's), besides another schema's.
QUALIFIED = (
    '<pdomDoc xsi:type="ns:Element">'
    '<schema namespace="acme" name="eventStg" xtkschema="xtk:schema">'
    '<enumeration name="channel" basetype="string"><value name="web" value="web"/></enumeration>'
    '<enumeration name="kind" basetype="byte"><value name="a" value="1"/></enumeration>'
    '<element name="eventStg">'
    '<attribute name="channel" type="string" length="8" enum="acme:event:channel"/>'
    '<attribute name="kind" type="byte" enum="acme:eventStg:kind"/>'
    '<attribute name="gender" type="byte" enum="nms:recipient:kind"/>'
    "</element></schema></pdomDoc>"
)


async def test_qualified_enumeration_names_resolve_in_the_document() -> None:
    """enum="<schema id>:<name>" (the compiled form) gets the document's values, for the
    schema's own id and a twin's source; another schema's enumeration gets none."""
    transport = FakeTransport()
    transport.script("GetEntityIfMoreRecent", entity(QUALIFIED))
    async with reader(transport) as schemas:
        schema = await schemas.read("acme:eventStg")
    assert schema is not None
    assert schema.attributes["channel"].enum == ("web",)
    assert schema.attributes["kind"].enum == ("1",)
    assert schema.attributes["gender"].enum == ()


def test_staging_source_names_a_twins_source() -> None:
    """Only <ns>:<name>Stg names a twin; its source drops the suffix."""
    assert staging_source("nms:recipientStg") == "nms:recipient"
    assert staging_source("nms:recipient") is None
    assert staging_source("acme:Stg") is None
