"""The simulator reads requests with a parser of its own, hardened, and imports no writer code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from campaign_writer import simulator
from campaign_writer.errors import ConfigError
from campaign_writer.simulator.configtables import schema_specs
from campaign_writer.simulator.xmlread import SOAP_ENV_NS, UnreadableXml, read_xml

LAUGHS = (
    b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><l>&c;</l>'
)
EXTERNAL = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
UTF16_DTD = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (LAUGHS, "declares a DTD"),
        (EXTERNAL, "declares a DTD"),
        (UTF16_DTD.encode("utf-16"), "declares a DTD"),
        (b"<!DOCTYPE x><x/>", "declares a DTD"),
        (b"<a", "not well-formed"),
        (b"<a>x</a>junk", "not well-formed"),
        (b"<p:a/>", "not well-formed"),
        (b"<a>" * 300 + b"</a>" * 300, "not well-formed"),
        (b"", "empty"),
        (b"<a/>" + b" " * 100, "over the 100-byte cap"),
    ],
    ids=[
        "laughs",
        "external",
        "utf16-dtd",
        "doctype",
        "broken",
        "trailing",
        "prefix",
        "deep",
        "empty",
        "too-big",
    ],
)
def test_hostile_or_broken_bodies_are_refused(body: bytes, why: str) -> None:
    """A DTD (in any encoding), malformed XML, a deep tree, an empty or oversized body:
    refused with the reason, nothing expanded or fetched."""
    with pytest.raises(UnreadableXml, match=why):
        read_xml(body, 100 if why.startswith("over") else 1 << 20)


def test_the_sdk_namespace_uri_is_read() -> None:
    """The method namespace Adobe's SDK sends (``urn:xtk:persist|xtk:session``), which
    libxml2 doubts, is read like any other."""
    body = (
        f'<s:Envelope xmlns:s="{SOAP_ENV_NS}"><s:Body>'
        '<m:Logon xmlns:m="urn:xtk:persist|xtk:session"><sessiontoken/></m:Logon>'
        "</s:Body></s:Envelope>"
    ).encode()
    root = read_xml(body, 1 << 20)
    (method,) = root[0]
    assert method.tag == "{urn:xtk:persist|xtk:session}Logon"


def test_the_simulator_imports_no_writer_module() -> None:
    """Nothing under simulator/ imports the writer's modules (the Campaign wire code,
    delivery, config); only the generic errors and logs are shared."""
    allowed = {"errors", "logs"}
    folder = Path(simulator.__file__).parent
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                top = (node.module or "").split(".")[0]
                if top not in allowed:
                    found.append(f"{path.name}: from {'.' * node.level}{node.module}")
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                for name in names:
                    head, _, rest = name.partition(".")
                    below = rest.split(".")[0]
                    if head == "campaign_writer" and below not in {"simulator", *allowed}:
                        found.append(f"{path.name}: {name}")
    assert found == []


@pytest.mark.parametrize(
    ("schema_id", "attribute", "message"),
    [
        ("dem", "id", "is not a schema id of the form 'namespace:name'"),
        ("dem:a:b", "id", "is not a schema id of the form 'namespace:name'"),
        ("1dem:x", "id", "is not a schema id of the form 'namespace:name'"),
        ("dem:x", "1id", "'1id' is not a valid XML name"),
        ("dem:x", "a b", "'a b' is not a valid XML name"),
        ("dem:x", "p:id", "'p:id' is not a valid XML name"),
    ],
)
def test_schema_names_are_checked_by_the_simulator_itself(
    schema_id: str, attribute: str, message: str
) -> None:
    """A schema id or attribute name XML cannot carry is refused with its path."""
    with pytest.raises(ConfigError, match=message):
        schema_specs("schemas", {schema_id: {"attributes": {attribute: "string"}}})
    (spec,) = schema_specs("schemas", {"dem:x": {"attributes": {"id-é.1": "string"}}})
    assert spec.attributes[0].name == "id-é.1"
