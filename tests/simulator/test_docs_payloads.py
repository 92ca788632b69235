"""Adobe's v8 "new APIs" page: its exact Ingest and IngestExt payloads get its documented answers.

The files under ``new_apis/`` hold the page's SOAP payloads and responses verbatim
(help/v8/architecture/new-apis.md in AdobeDocs/campaign.en), except that the session
token placeholder reads ``TOKEN``, replaced by a live token here.
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

SAMPLES = Path(__file__).parent / "new_apis"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def shape(element: etree._Element) -> tuple[object, ...]:
    """Tag, namespace declarations, attributes, text (UUIDs masked) and children, recursively."""
    text = UUID.sub("<uuid>", (element.text or "").strip())
    return (
        element.tag,
        element.prefix,
        sorted(element.nsmap.items(), key=lambda kv: kv[0] or ""),
        sorted(element.attrib.items()),
        text,
        [shape(child) for child in element],
    )


def parsed(text: str | bytes) -> etree._Element:
    data = text.encode() if isinstance(text, str) else text
    return etree.fromstring(data, etree.XMLParser(remove_blank_text=True))


async def post(simulator, payload: str, token: str, action: str) -> bytes:
    body = payload.replace("TOKEN", token).encode()
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": action}
    reply = await simulator.post("/nl/jsp/soaprouter.jsp", body, headers)
    assert reply.status == 200, reply.body
    return reply.body


async def test_ingest_without_reconciliation_returns_a_uuid(simulator) -> None:
    """The documented Ingest stores the row and answers IngestResponse with its UUID."""
    token = (await simulator.logon()).session_token
    answer = await post(simulator, sample("ingest.request.xml"), token, "xtk:session#Ingest")
    assert shape(parsed(answer)) == shape(parsed(sample("ingest.response.xml")))
    uuid = parsed(answer)[0][0][0].text
    rows = await simulator.records("dem:sampleTableStg")
    assert len(rows) == 1 and rows[0]["__uuid"] == uuid
    assert rows[0]["testcol1"] == "Test Value 1 (from SOAP)"
    assert rows[0]["testcol2"] == "Test Value 2 (from SOAP)"


async def test_ingest_with_reconciliation_then_ingest_ext(simulator) -> None:
    """Ingest with _key answers an empty pstrSUuids; IngestExt updates the row, empty answer."""
    token = (await simulator.logon()).session_token
    answer = await post(
        simulator, sample("ingest-reconciled.request.xml"), token, '"xtk:session#Ingest"'
    )
    assert shape(parsed(answer)) == shape(parsed(sample("ingest-reconciled.response.xml")))
    answer = await post(simulator, sample("ingest-ext.request.xml"), token, "xtk:session#IngestExt")
    assert shape(parsed(answer)) == shape(parsed(sample("ingest-ext.response.xml")))
    rows = await simulator.records("dem:sampleTableStg")
    assert [{k: v for k, v in r.items() if not k.startswith("__")} for r in rows] == [
        {
            "id": "ABDCD321",
            "testcol1": "Test Value E (from SOAP)",
            "testcol2": "Test Value F (from SOAP)",
        }
    ]
