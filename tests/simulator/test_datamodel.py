"""The simulator's datamodel: staged built-ins, a user's XML schema, and the replication model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lxml import etree

from campaign_writer.campaign import soap
from campaign_writer.campaign.outcome import Ok
from campaign_writer.errors import ConfigError
from campaign_writer.simulator.config import load_config
from campaign_writer.simulator.schemafiles import load_schema_files, parse_schema_file
from campaign_writer.simulator.schemas import Catalog

SCHEMAS = Path(__file__).parent / "schemas"
ACME = SCHEMAS / "acme-event.xml"


async def read_schema(simulator, schema_id: str) -> soap.Output:
    creds = await simulator.logon()
    reply = await simulator.call(
        "GetEntityIfMoreRecent",
        [
            soap.Param("pk", "string", f"xtk:schema|{schema_id}"),
            soap.Param("md5", "string", ""),
            soap.Param("mustExist", "boolean", "false"),
        ],
        creds,
    )
    output = reply.response().output("pdomDoc")
    assert output is not None
    return output


@pytest.mark.parametrize(
    ("schema_id", "key"),
    [
        ("nms:recipientStg", ["@email"]),
        ("nms:subscriptionRcpStg", ["@recipient-id", "@service-id"]),
        ("nms:appSubscriptionRcpStg", ["@mobileApp-id", "@registrationToken"]),
    ],
)
async def test_staged_built_ins_are_served_with_their_twins(simulator, schema_id, key) -> None:
    """The three schemas v8 stages out of the box exist with their key; the source says autoStg."""
    staged = (await read_schema(simulator, schema_id)).element
    assert staged is not None and staged.get("name") == schema_id.partition(":")[2]
    assert [k.get("xpath") for k in staged.iter("{*}keyfield")] == key
    source = (await read_schema(simulator, schema_id.removesuffix("Stg"))).element
    assert source is not None
    assert source.find("{*}element").get("autoStg") == "true"
    assert staged.find("{*}element").get("autoStg") is None


async def test_an_xml_schema_file_is_served_as_the_instance_would(simulator_factory) -> None:
    """A loaded xtk:srcSchema gives its schema and staging twin: attributes, lengths, enum, key."""
    simulator = await simulator_factory(schema_files=[str(ACME)])
    for schema_id in ("acme:event", "acme:eventStg"):
        schema = (await read_schema(simulator, schema_id)).element
        assert schema is not None
        attributes = {a.get("name"): a for a in schema.iter("{*}attribute")}
        assert list(attributes) == ["eventId", "email", "channel", "amount", "items", "at"]
        assert attributes["email"].get("length") == "128"
        assert attributes["items"].get("type") == "short"
        enum = attributes["channel"].get("enum")
        values = [
            v.get("value")
            for e in schema.iter("{*}enumeration")
            if e.get("name") == enum
            for v in e
        ]
        assert values == ["web", "store", "app"]
        assert [k.get("xpath") for k in schema.iter("{*}keyfield")] == ["@eventId"]
    creds = await simulator.logon()
    reply = await simulator.write(
        "Ingest", '<eventStg xtkschema="acme:eventStg" eventId="e1" channel="web"/>', creds
    )
    assert isinstance(reply.outcome(), Ok)
    assert (await simulator.records("acme:eventStg"))[0]["eventId"] == "e1"


async def test_an_unknown_schema_gets_an_empty_document(simulator) -> None:
    """As Campaign answers, a schema the instance lacks is an empty pdomDoc, not a fault."""
    output = await read_schema(simulator, "acme:nothingStg")
    assert output.element is None and not output.text.strip()


def test_schema_files_are_relative_to_the_config_file(tmp_path) -> None:
    """schema_files in a TOML file name files next to it, and a bad file is named in the error."""
    (tmp_path / "acme.xml").write_bytes(ACME.read_bytes())
    (tmp_path / "sim.toml").write_text('schema_files = ["acme.xml"]\n')
    config = load_config(tmp_path / "sim.toml")
    assert config.schema_files == (str(tmp_path / "acme.xml"),)
    assert [s.id for s in load_schema_files(config.schema_files)] == ["acme:event"]
    (tmp_path / "bad.toml").write_text('schema_files = ["missing.xml"]\n')
    with pytest.raises(ConfigError, match=r"missing\.xml"):
        load_schema_files(load_config(tmp_path / "bad.toml").schema_files)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"<schema/>", "namespace and name"),
        (b'<form namespace="a" name="b"/>', "expected a <srcSchema> or <schema> root"),
        (b'<srcSchema namespace="a" name="b"/>', "has no <element>"),
        (
            b'<srcSchema namespace="a" name="b"><element name="b">'
            b'<attribute name="x" type="link"/></element></srcSchema>',
            "not XTK",
        ),
        (
            b'<srcSchema namespace="a" name="b"><element name="b"><key><keyfield xpath="@y"/>'
            b'</key><attribute name="x"/></element></srcSchema>',
            "key field 'y'",
        ),
        (b'<!DOCTYPE x [<!ENTITY e "e">]><srcSchema/>', "DTD"),
    ],
)
def test_a_schema_file_that_is_not_a_schema_is_refused(document, message) -> None:
    """Each kind of unusable schema file gets a clear ConfigError naming what is wrong."""
    with pytest.raises(ConfigError, match=message):
        parse_schema_file(document, "schema_files: x.xml")


def test_a_package_of_schemas_is_loaded_whole() -> None:
    """A data package as the console exports it (<package><entities schema=
    "xtk:srcSchema">) gives each schema it holds; other entities are passed over."""
    (first, second) = parse_schema_file(
        b'<package><entities schema="nms:recipient"><recipient email="a@b.c"/></entities>'
        b'<entities schema="xtk:srcSchema">'
        b'<srcSchema namespace="a" name="b"><element name="b"><attribute name="x"/>'
        b"</element></srcSchema>"
        b'<srcSchema namespace="a" name="c"><element name="c" autoStg="true">'
        b'<attribute name="y" type="long"/></element></srcSchema>'
        b"</entities></package>",
        "schema_files: pkg.xml",
    )
    assert (first.id, second.id, second.auto_stg) == ("a:b", "a:c", True)
    with pytest.raises(ConfigError, match="expected a <srcSchema> or <schema> root"):
        parse_schema_file(b"<package/>", "schema_files: empty.xml")


def test_a_qualified_enumeration_in_a_schema_file_keeps_its_values() -> None:
    """enum="<ns>:<name>:<enum>" (the compiled spelling) finds the file's enumeration, served
    under its short name; another schema's enumeration keeps the attribute only."""
    (spec,) = parse_schema_file(
        b'<schema namespace="a" name="b"><enumeration name="c"><value name="x" value="x"/>'
        b'</enumeration><element name="b"><attribute name="c" enum="a:b:c"/>'
        b'<attribute name="g" type="byte" enum="nms:recipient:c"/></element></schema>',
        "schema_files: b.xml",
    )
    channel, gender = spec.attributes
    assert (channel.enum, channel.enum_name) == (("x",), "c")
    assert (gender.enum, gender.enum_name) == ((), "")


def test_an_enumeration_is_served_once_before_the_element() -> None:
    """Two attributes sharing an enumeration: the served document lists it once, ahead of
    the main element, as Campaign's compiled schemas do."""
    (spec,) = parse_schema_file(
        b'<srcSchema namespace="a" name="b"><element name="b">'
        b'<attribute name="home" enum="c"/><attribute name="work" enum="c"/></element>'
        b'<enumeration name="c"><value name="x" value="x"/></enumeration></srcSchema>',
        "schema_files: b.xml",
    )
    root = etree.fromstring(Catalog((spec,)).get("a:b").xml())
    assert [child.tag for child in root] == ["enumeration", "element"]


async def test_replication_moves_staged_rows_to_their_source(simulator) -> None:
    """On demand, staged rows reach the source schema, merged on its key, stamped, staging empty."""
    creds = await simulator.logon()
    for first in ("Ann", "Anna"):
        reply = await simulator.write(
            "IngestExt",
            f'<recipientStg xtkschema="nms:recipientStg" _key="@email" email="a@x.org"'
            f' firstName="{first}"/>',
            creds,
        )
        assert isinstance(reply.outcome(), Ok)
        done = await simulator.control(replicate_now=True)
        assert done["done"]["replicated"] == 1
    assert await simulator.records("nms:recipientStg") == []
    (row,) = await simulator.records("nms:recipient")
    assert row["firstName"] == "Anna" and float(row["__replicated_at"]) > 0
    stats = await simulator.stats()
    assert stats["replicated_total"] == 2 and stats["last_replication_at"] is not None
    assert 0 <= stats["last_replication_max_lag_s"] < 60


async def test_replication_runs_on_its_interval(simulator_factory) -> None:
    """With replicate_interval_s set, staged rows reach the source without being asked."""
    simulator = await simulator_factory(replicate_interval_s=0.05)
    creds = await simulator.logon()
    reply = await simulator.write(
        "Ingest", '<sampleTableStg xtkschema="dem:sampleTableStg" id="r1"/>', creds
    )
    assert isinstance(reply.outcome(), Ok)
    for _ in range(200):
        if await simulator.records("dem:sampleTable"):
            break
        await asyncio.sleep(0.02)
    assert [r["id"] for r in await simulator.records("dem:sampleTable")] == ["r1"]


async def test_a_new_replication_interval_applies_at_once(simulator_factory) -> None:
    """replicate_interval_s changed at runtime from an hour to 50 ms: rows move without
    waiting for the hour to run out."""
    simulator = await simulator_factory(replicate_interval_s=3600.0)
    await simulator.control(replicate_interval_s=0.05)
    creds = await simulator.logon()
    reply = await simulator.write(
        "Ingest", '<sampleTableStg xtkschema="dem:sampleTableStg" id="r2"/>', creds
    )
    assert isinstance(reply.outcome(), Ok)
    for _ in range(250):
        if await simulator.records("dem:sampleTable"):
            break
        await asyncio.sleep(0.02)
    assert [r["id"] for r in await simulator.records("dem:sampleTable")] == ["r2"]


def test_schema_files_and_replication_are_flags_too() -> None:
    """`simulate --schema-files A,B --replicate-interval-s N` sets both knobs."""
    from campaign_writer.cli import build_parser
    from campaign_writer.commands.simulate import build_config

    args = build_parser().parse_args(
        ["simulate", "--schema-files", f"{ACME},{ACME}", "--replicate-interval-s", "5"]
    )
    config = build_config(args)
    assert config.schema_files == (str(ACME), str(ACME))
    assert config.replicate_interval_s == 5.0
