"""Micro-benchmark: build a 1,000-record staging collection, 8 attributes per record.

Compares three ways of building the document and checks that each one is correct
(the parsed result equals the input) before timing it:

* ``lxml-tree``: lxml's element tree (``SubElement`` per record, then ``tostring``);
* ``lxml-incremental``: lxml's incremental writer (``etree.xmlfile``);
* ``string``: string building with our escaping (``documents.render_fragment``
  joined by ``documents.fragments_document``),
  the one the writer uses.

Run: ``.venv/bin/python -m bench.serialise [--records 1000] [--repeat 30]``.
Prints microseconds per record (median and best of the repeats) for each.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import string
import time
from collections.abc import Callable

from lxml import etree

from campaign_writer.campaign.documents import (
    StagingRecord,
    element_name,
    fragments_document,
    render_fragment,
)

SCHEMA = "dem:sampleTableStg"
ATTRS = ("id", "testcol1", "testcol2", "email", "firstName", "lastName", "points", "birthDate")


def make_records(count: int, seed: int = 7) -> list[StagingRecord]:
    """Realistic values; one record in ten carries characters that need escaping."""
    rng = random.Random(seed)
    letters = string.ascii_letters + string.digits
    records = []
    for i in range(count):
        attrs = {
            "id": f"evt-{i:08d}",
            "testcol1": "".join(rng.choices(letters, k=24)),
            "testcol2": "".join(rng.choices(letters, k=40)),
            "email": f"user{i}@example.com",
            "firstName": rng.choice(["Ana", "Björn", "Zoë", "Łukasz", "Søren"]),
            "lastName": rng.choice(["O'Brien", "Smith & Sons", "<Lee>", 'Say "hi"', "Nguyễn"]),
            "points": str(rng.randint(0, 100_000)),
            "birthDate": f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
        }
        if i % 10 == 0:
            attrs["testcol1"] = 'line one\nline two\ttabbed & <tagged> "quoted"'
        records.append(StagingRecord(attrs, None, "@id"))
    return records


def build_lxml_tree(records: list[StagingRecord]) -> bytes:
    element = element_name(SCHEMA)
    root = etree.Element(f"{element}-collection", xtkschema=SCHEMA)
    sub = etree.SubElement
    for record in records:
        node = sub(root, element, _key=record.key or "")
        for name, value in record.attrs.items():
            node.set(name, value)
    return etree.tostring(root, encoding="utf-8")


def build_lxml_incremental(records: list[StagingRecord]) -> bytes:
    element = element_name(SCHEMA)
    out = io.BytesIO()
    with (
        etree.xmlfile(out, encoding="utf-8") as xf,
        xf.element(f"{element}-collection", xtkschema=SCHEMA),
    ):
        for record in records:
            attrs = {"_key": record.key or ""}
            attrs.update(record.attrs)
            xf.write(etree.Element(element, attrs))
    return out.getvalue()


def build_string(records: list[StagingRecord]) -> bytes:
    fragments = [render_fragment(r.attrs, r.operation, r.key) for r in records]
    return fragments_document(SCHEMA, fragments, collection=True).encode("utf-8")


BUILDERS: dict[str, Callable[[list[StagingRecord]], bytes]] = {
    "lxml-tree": build_lxml_tree,
    "lxml-incremental": build_lxml_incremental,
    "string": build_string,
}


def check(builder: Callable[[list[StagingRecord]], bytes], records: list[StagingRecord]) -> None:
    """Parse the builder's output and compare every attribute with the input."""
    root = etree.fromstring(builder(records))
    assert root.get("xtkschema") == SCHEMA
    assert len(root) == len(records)
    for node, record in zip(root, records, strict=True):
        got = dict(node.attrib)
        assert got.pop("_key") == record.key
        assert got == dict(record.attrs), (got, record.attrs)


def measure(
    builder: Callable[[list[StagingRecord]], bytes], records: list[StagingRecord], repeat: int
) -> list[float]:
    """Microseconds per record, one figure per repeat."""
    figures = []
    for _ in range(repeat):
        started = time.perf_counter()
        builder(records)
        figures.append((time.perf_counter() - started) * 1e6 / len(records))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    records = make_records(args.records)
    print(f"{args.records} records x {len(ATTRS)} attributes, {args.repeat} repeats")
    print(f"{'builder':<18} {'median us/rec':>14} {'best us/rec':>12}")
    for name, builder in BUILDERS.items():
        check(builder, records)
        figures = measure(builder, records, args.repeat)
        print(f"{name:<18} {statistics.median(figures):>14.2f} {min(figures):>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
