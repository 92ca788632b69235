"""Coverage-guided fuzzing of intake with atheris (libFuzzer), run as its own process.

    python -m tests.reliability.fuzz_intake -runs=5000 -seed=1 CORPUS_DIR

Each input becomes an HTTP body (:func:`body_from`: raw bytes, NDJSON, a JSON array
or object, deep nesting; events with fuzzed ids and values: strings with control
characters, lone surrogates and XML metacharacters, numbers, booleans, nulls, nested
values). The body goes through the writer's own routing (the router, casters and
fragment rendering, instrumented for coverage) and the result must agree with
:mod:`tests.reliability.oracle`: the same events accepted, each accepted record a
well-formed XML entity carrying exactly the expected values. Any disagreement or
unexpected exception is a crash, which libFuzzer reports and saves.

libFuzzer keeps the inputs that reached new code in CORPUS_DIR; the reliability test
then posts those bodies to a real writer process (``test_bad_input.py``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import atheris
import orjson

with atheris.instrument_imports():
    from lxml import etree

    from campaign_writer import router
    from campaign_writer.campaign import documents, xmltext, xtktypes  # noqa: F401
    from campaign_writer.config import from_mapping

from tests.reliability.oracle import JSON, NDJSON, judge_body
from tests.reliability.support import sample_only_tree

SCHEMA = "dem:sampleTableStg"
MAX_BODY = 16 * 1024 * 1024
INJECTIONS = [
    '"/><x',
    "]]>",
    "<![CDATA[x]]>",
    "&amp;",
    "&lt;x&gt;",
    "&#0;",
    "&#x41;",
    "&xxe;",
    '<!DOCTYPE x [<!ENTITY a "b">]>',
    "<!--",
    "'\"",
    "\r\n",
    "\t",
    "\x00",
    "\x1f",
    "\x7f",
    "\ufffe",
    "\uffff",
    "\ud800",
    "\udfff",
    "\U0001f600",
    "\u2028",
    "__POISON__",
]
TYPES = ["sample", "sample", "sample", "sampleX", "", "recipient", 1, None, True, ["sample"]]
_STRICT = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _value(fdp: atheris.FuzzedDataProvider, length_hint: int) -> Any:
    choice = fdp.ConsumeIntInRange(0, 11)
    if choice == 0:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))
    if choice == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if choice == 2:
        return fdp.ConsumeInt(8)
    if choice == 3:
        return fdp.ConsumeFloat()
    if choice == 4:
        return fdp.ConsumeBool()
    if choice == 5:
        return None
    if choice == 6:
        return [fdp.ConsumeUnicodeNoSurrogates(4)]
    if choice == 7:
        return {"v": fdp.ConsumeUnicodeNoSurrogates(4)}
    if choice == 8:
        # Around the field's length limit, in code points that may be astral.
        filler = fdp.PickValueInList(["x", "é", "\U0001f600"])
        return filler * fdp.ConsumeIntInRange(length_hint - 2, length_hint + 2)
    picked = [fdp.PickValueInList(INJECTIONS) for _ in range(fdp.ConsumeIntInRange(1, 4))]
    return fdp.ConsumeUnicodeNoSurrogates(3).join(picked)


def _event(fdp: atheris.FuzzedDataProvider) -> Any:
    if fdp.ConsumeIntInRange(0, 15) == 0:
        return _value(fdp, 8)  # not an object at all
    event: dict[str, Any] = {"type": fdp.PickValueInList(TYPES)}
    for name, length in (("id", 64), ("testcol1", 255), ("testcol2", 255)):
        if fdp.ConsumeIntInRange(0, 7):
            event[name] = _value(fdp, length)
    if fdp.ConsumeBool():
        event[fdp.ConsumeUnicodeNoSurrogates(6)] = _value(fdp, 8)
    return event


def _encode(fdp: atheris.FuzzedDataProvider, event: Any) -> bytes:
    text = json.dumps(event, ensure_ascii=fdp.ConsumeBool(), allow_nan=True)
    encoded = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8
    if fdp.ConsumeIntInRange(0, 9) == 0:
        encoded = encoded[: fdp.ConsumeIntInRange(0, len(encoded))]  # cut short
    return encoded


def body_from(data: bytes) -> tuple[bytes, str]:
    """The HTTP body and Content-Type one fuzz input stands for."""
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, 4)
    content_type = NDJSON if shape in (0, 1) and fdp.ConsumeBool() else JSON
    if shape == 0:
        return fdp.ConsumeBytes(fdp.remaining_bytes()), content_type
    if shape == 4:
        depth = fdp.ConsumeIntInRange(1, 5000)
        opener, closer = fdp.PickValueInList([("[", "]"), ('{"a":', "}")])
        return (opener * depth + "1" + closer * depth).encode(), content_type
    events = [_event(fdp) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    if shape == 1:
        lines = [_encode(fdp, e) for e in events]
        return b"\n".join(lines), NDJSON
    if shape == 2:
        return _encode(fdp, events), JSON
    return _encode(fdp, events[0] if events else {}), JSON


class Intake:
    """The writer's routing of an HTTP body, as ``sources/http.py`` dispatches it."""

    def __init__(self) -> None:
        config = from_mapping(sample_only_tree("http://127.0.0.1:9", "/nonexistent"))
        self.router = router.Router.from_config(config)

    def route(self, body: bytes, content_type: str) -> Any:
        now = time.time()
        if content_type == NDJSON:
            return self.router.route_lines(body.split(b"\n"), source="fuzz", created_at=now)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(document, dict):
            document = [document]
        if not isinstance(document, list):
            return None
        return self.router.route_events(document, source="fuzz", created_at=now)


def check(intake: Intake, body: bytes, content_type: str) -> None:
    """Raise AssertionError when the writer's routing and the oracle disagree."""
    expected = judge_body(body, content_type, MAX_BODY)
    routing = intake.route(body, content_type)
    if expected.body_error or expected.status == 413:
        assert routing is None or not routing.items, (expected, routing)
        return
    assert routing is not None
    rejected = {index for index, _ in routing.rejected}
    wanted = sorted(i for i, v in expected.events.items() if v.attrs is not None)
    accepted = sorted(set(expected.events) - rejected)
    assert accepted == wanted, (accepted, wanted, routing.rejected, expected.events)
    for index, why in routing.rejected:
        verdict = expected.events[index]
        assert verdict.attrs is None and why.strip(), (index, why)
        assert not verdict.field or verdict.field in why, (verdict, why)
    assert len(routing.items) == len(wanted)
    for index, item in zip(wanted, routing.items, strict=True):
        attrs = expected.events[index].attrs
        assert attrs is not None
        fragment = item.record.decode()
        document = documents.fragments_document(SCHEMA, [fragment], collection=False)
        root = etree.fromstring(document.encode(), _STRICT)  # strict: no recovery
        got = dict(root.attrib)
        assert got == {"xtkschema": SCHEMA, "_key": "@id", **attrs}, (got, attrs)
        assert item.key == attrs["id"]


def main() -> None:
    intake = Intake()

    def test_one_input(data: bytes) -> None:
        body, content_type = body_from(data)
        check(intake, body, content_type)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
