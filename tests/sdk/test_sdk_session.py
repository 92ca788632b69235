"""Fidelity: Adobe's JavaScript SDK (npm @adobe/acc-js-sdk 1.2.0) works against the simulator.

``session.js`` logs on with a login and password and with an IMS token from the
simulator's token endpoint, calls write, writeCollection, ingest and ingestExt
through ``NLWS.xtkSession``, lets a session expire, and provokes a fault; this test
checks what the SDK returned and reads the records back through /__sim/records.
The SDK parses answers strictly, so every step passing is the fidelity check.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import require_node

SDK_DIR = Path(__file__).parent
STG = "dem:sampleTableStg"
ACME = SDK_DIR.parent / "simulator" / "schemas" / "acme-event.xml"
FAST = {"tps_limit": 1000, "latency_ms": 0, "latency_per_record_ms": 0, "latency_jitter": 0}

pytestmark = pytest.mark.node


@pytest.fixture(scope="session")
def node() -> str:
    """Node.js, with the pinned SDK installed from package-lock.json when missing."""
    node = require_node()
    if not (SDK_DIR / "node_modules" / "@adobe" / "acc-js-sdk" / "package.json").exists():
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SDK_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci failed in {SDK_DIR}:\n{result.stdout}\n{result.stderr}")
    return node


async def run_session(
    node: str, url: str, *steps: str, schemas: tuple[str, ...] = ()
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "url": url,
        "login": "admin",
        "password": "admin",
        "clientId": "sim-client",
        "clientSecret": "sim-secret",
        "steps": list(steps) or None,
        "schemas": list(schemas),
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(SDK_DIR / "session.js"),
        json.dumps(settings),
        cwd=SDK_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


def by_id(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in rows if "id" in row}


async def test_sdk_session_against_the_simulator(node, simulator) -> None:
    """The SDK logs on both ways, writes with all four methods, renews an expired session."""
    result = await run_session(node, simulator.url, "userPassword", "ims", "expiry")
    rows = await simulator.records(STG)
    keyed = by_id(rows)
    uuids = {row["__uuid"]: row for row in rows}

    for mode, prefix in (("userPassword", "pw"), ("ims", "ims")):
        done = result[mode]
        # write, then ingestExt updated the same key
        assert keyed[f"{prefix}-write"]["testcol1"] == "written"
        assert keyed[f"{prefix}-write"]["testcol2"] == "updated by ingestExt"
        # writeCollection stored both; ingestExt deleted the second
        assert keyed[f"{prefix}-coll-1"]["testcol1"] == "first"
        assert f"{prefix}-coll-2" not in keyed
        # ingest returned the new row's UUID; with _key it returned an empty string
        assert uuids[done["uuid"]]["testcol1"] == f"{prefix}-ingested"
        assert done["keyedUuid"] == ""
        assert keyed[f"{prefix}-ingest-keyed"]["testcol1"] == "keyed"
        assert done["ingestExt"] is None

    assert result["userPassword"]["login"] == "admin"
    assert result["userPassword"]["ping"]["status"] == "OK"
    ims = result["ims"]
    assert ims["expiresIn"] == 86399
    assert ims["instanceName"] == "campaign-sim" and ims["buildNumber"] == "9236"

    expiry = result["expiry"]
    assert expiry["plain"]["statusCode"] == 401 and expiry["plain"]["errorCode"] == "SDK-000012"
    assert expiry["refreshed"] == 1
    assert keyed["after-refresh"]["testcol1"] == "retried"
    assert "expired" not in keyed

    stats = await simulator.stats()
    methods = stats["calls_by_method"]
    assert methods["Write"] >= 3 and methods["WriteCollection"] == 2
    assert methods["Ingest"] == 4 and methods["IngestExt"] == 4
    assert methods["GetEntityIfMoreRecent"] >= 1 and methods["GetUserInfo"] >= 1


async def test_sdk_reads_simulator_faults(node, simulator) -> None:
    """A fault on HTTP 200 is parsed by the SDK (errorCode, detail); on 500 it sees the status."""
    result = await run_session(node, simulator.url, "faults")
    on_200, on_500 = result["faults"]["200"], result["faults"]["500"]
    assert on_200["name"] == "CampaignException"
    assert on_200["errorCode"] == "SOP-330011" and on_200["faultCode"] == "SOAP-ENV:Server"
    assert "XSV-350102" in on_200["detail"] and "bogus" in on_200["detail"]
    assert on_500["statusCode"] == 500 and on_500["errorCode"] == ""
    assert "SOP-330011" in on_500["detail"]
    assert "bad" not in by_id(await simulator.records(STG))


async def test_sdk_reads_the_staged_built_ins_and_a_loaded_xml_schema(node, simulator_factory):
    """getSchema reads each staged built-in, its twin and a schema loaded from an XML file, in
    XML and both JSON representations; the SDK's XtkSchema sees types, lengths, enums and keys;
    an unknown schema is null."""
    simulator = await simulator_factory(schema_files=[str(ACME)], **FAST)
    ids = (
        "nms:recipient",
        "nms:recipientStg",
        "nms:subscriptionRcp",
        "nms:subscriptionRcpStg",
        "nms:appSubscriptionRcp",
        "nms:appSubscriptionRcpStg",
        "acme:event",
        "acme:eventStg",
        "acme:nothing",
    )
    result = (await run_session(node, simulator.url, "schemas", schemas=ids))["schemas"]
    assert result["acme:nothing"] is None
    for schema_id in ids[:-1]:
        namespace, name = schema_id.split(":")
        got = result[schema_id]
        assert f'namespace="{namespace}"' in got["xml"] and f'name="{name}"' in got["xml"]
        assert got["simpleJson"]["namespace"] == namespace
        assert got["simpleJson"]["name"] == name
        assert got["badgerFish"]["@name"] == name
        assert got["keys"], schema_id
    assert result["nms:recipient"]["simpleJson"]["element"]["autoStg"] == "true"
    assert result["nms:subscriptionRcpStg"]["keys"] == ["@recipient-id", "@service-id"]
    acme = result["acme:eventStg"]
    assert acme["keys"] == ["@eventId"]
    assert acme["attributes"]["@email"] == {"type": "string", "length": 128, "enum": ""}
    assert acme["attributes"]["@channel"]["enum"] == "channel"
    assert acme["attributes"]["@items"]["type"] == "short"
    assert acme["badgerFish"]["enumeration"]["@name"] == "channel"
