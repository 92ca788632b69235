"""Bad input: a fuzz corpus of events, built with hypothesis and atheris, and 10 MB bodies,
posted to a real writer process that delivers to the simulator.

Each body is answered as :mod:`tests.reliability.oracle` says it must be (202 with the
right events accepted, or 400/413 with a reason naming the event and field); every
accepted event ends in Campaign with exactly its values (merged by key in arrival
order); the writer never crashes; and the simulator never refuses a call: it answers
malformed XML with a ``malformed`` fault and a bad value with a data fault, and its
counters show neither.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import ROOT, Figures
from tests.reliability.oracle import JSON, NDJSON, Model, check_answer, judge_body
from tests.reliability.support import WriterProc, sample_only_tree
from tests.support.services import missing
from tests.support.writer import wait_for

SAMPLE = "dem:sampleTableStg"
MAX_BODY = 16 * 1024 * 1024
TEN_MB = 10 * 1024 * 1024
SPECIALS = [
    '"/><x',
    "]]>",
    "<![CDATA[",
    "&amp;",
    "&lt;x&gt;",
    "&#0;",
    "&#13;",
    "&xxe;",
    '<!ENTITY a "b">',
    "'",
    '"',
    "\r\n",
    "\t",
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\ufffe",
    "\ud800",
    "\udfff",
    "\U0001f600",
    "\u2028",
]


class Target:
    """A writer process and the simulator it writes to, and what they must end up with."""

    def __init__(self, simulator, writer: WriterProc) -> None:
        self.simulator = simulator
        self.writer = writer
        self.model = Model()
        self.problems: list[str] = []
        self.posted = 0
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))

    async def post(self, body: bytes, content_type: str) -> int:
        """Post one body; compare the answer with the oracle; fold the accepted events in."""
        expectation = judge_body(body, content_type, MAX_BODY)
        url = f"{self.writer.intake_url}/v1/events"
        # aiohttp wants big bodies as a stream (it warns about raw bytes over 1 MiB).
        data = io.BytesIO(body) if len(body) > 1 << 20 else body
        async with self.session.post(
            url, data=data, headers={"Content-Type": content_type}
        ) as answer:
            raw = await answer.read()
            status = answer.status
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = raw[:200]
        self.posted += 1
        problems = check_answer(expectation, status, payload)
        if problems:
            shown = body[:160]
            self.problems.extend(f"{p} -- body {shown!r} ({content_type})" for p in problems)
        elif status == 202:
            self.model.take(expectation)
        return status

    async def verify(self) -> None:
        """Wait for delivery, then compare Campaign's rows with the model, value by value."""
        assert not self.problems, "\n".join(self.problems[:10])
        writer = self.writer

        async def drained() -> bool:
            writer.check_alive()
            stats = await writer.stats()
            return not stats["queue"]["depth"] and not stats["delivery"]["records_in_memory"]

        await wait_for(drained, timeout=300, interval=0.3)
        stats = await writer.stats()
        assert stats["queue"]["dead_letters"] == 0, stats["queue"]
        sim = await self.simulator.stats()
        assert "malformed" not in sim["faults_by_kind"], sim["faults_by_kind"]
        assert not sim["faults_by_kind"], sim["faults_by_kind"]  # no data faults either
        rows = await self.simulator.records(SAMPLE, page=100_000)
        stored = {row["id"]: row for row in rows}
        assert set(stored) == set(self.model.rows), set(stored) ^ set(self.model.rows)
        wrong = [
            (key, name, value, stored[key].get(name))
            for key, attrs in self.model.rows.items()
            for name, value in attrs.items()
            if stored[key].get(name) != value
        ]
        assert not wrong, f"{len(wrong)} values changed on the way, e.g. {wrong[:3]!r}"

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def target(simulator_factory, tmp_path: Path, figures: Figures) -> AsyncIterator[Target]:
    simulator = await simulator_factory(tps_limit=0, latency_ms=0, poison_marker="")
    tree = sample_only_tree(simulator.url, tmp_path / "queue.sqlite3", batch__max_records=200)
    writer = WriterProc(tmp_path, tree)
    await writer.start()
    target = Target(simulator, writer)
    try:
        yield target
        assert await writer.stop() == 0
    finally:
        await target.close()
        writer.close()
        figures.writer_crashes += len(writer.unexpected_exits)
        figures.bad_inputs_http += target.posted
        figures.acknowledged += target.model.accepted


# --- hypothesis -------------------------------------------------------------------------

# XML metacharacters and injection attempts that a value may carry and must keep.
_CARRIED = [
    s for s in SPECIALS if not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\ud800-\udfff]", s)
]
_safe_text = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(_CARRIED)), max_size=5).map(
    "".join
)
_any_text = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPECIALS)), max_size=5).map(
    "".join
)
_wrong = st.one_of(
    _any_text,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(alphabet="xé\U0001f600", min_size=250, max_size=260),
)


@st.composite
def _value(draw: st.DrawFn) -> Any:
    """Mostly a value that must be carried exactly; often something wrong or borderline."""
    return draw(_wrong) if draw(st.integers(0, 3)) == 0 else draw(_safe_text)


@st.composite
def _event(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(_wrong)
    event: dict[str, Any] = {"type": "sample"}
    if draw(st.integers(0, 9)) == 0:
        event["type"] = draw(st.sampled_from(["Sample", "recipient", "", 1, None]))
    if draw(st.integers(0, 9)):
        # Ids come back often, so merges of one key (in a batch and across) happen.
        event["id"] = f"id{draw(st.integers(0, 60))}" if draw(st.integers(0, 4)) else draw(_wrong)
    for name in ("testcol1", "testcol2", "other"):
        if draw(st.integers(0, 5)):
            event[name] = draw(_value())
    return event


def _encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    shape = ["ndjson", "ndjson", "ndjson", "array", "array", "object", "bytes", "nesting"][
        draw(st.integers(0, 7))
    ]
    ascii_only = draw(st.booleans())
    if shape == "bytes":
        return draw(st.binary(max_size=300)), draw(st.sampled_from([JSON, NDJSON]))
    if shape == "nesting":
        depth = draw(st.integers(1, 3000))
        return b"[" * depth + b"1" + b"]" * draw(st.integers(0, depth)), JSON
    events = draw(st.lists(_event(), min_size=1, max_size=8))
    if shape == "ndjson":
        lines = [_encode(e, ascii_only) for e in events]
        garbage = draw(st.lists(st.binary(max_size=40), max_size=1))
        return b"\n".join(lines + garbage), NDJSON
    if shape == "array":
        return _encode(events, ascii_only), JSON
    return _encode(events[0] if events else {}, ascii_only), JSON


def hypothesis_corpus(count: int) -> list[tuple[bytes, str]]:
    """``count`` bodies generated by hypothesis (derandomized: the same every run)."""
    corpus: list[tuple[bytes, str]] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(_bodies())
    def collect(body: tuple[bytes, str]) -> None:
        if body not in seen:  # hypothesis often tries near-copies of a body
            seen.add(body)
            corpus.append(body)

    seen: set[tuple[bytes, str]] = set()
    collect()
    return corpus


async def test_hypothesis_corpus_is_answered_clearly_or_delivered_exactly(
    target: Target, soak: bool, figures: Figures
) -> None:
    """Hypothesis-built bodies (broken JSON, deep nesting, wrong types, control characters,
    lone surrogates, XML metacharacters and entity references, values at their length
    limits, ids that repeat): each answer matches the oracle, every accepted event is in
    Campaign exactly, nothing is dead-lettered or refused by the simulator."""
    corpus = hypothesis_corpus(2000 if soak else 200)
    for body, content_type in corpus:
        await target.post(body, content_type)
    figures.bad_inputs += len(corpus)
    assert target.model.accepted > len(corpus) // 4, "the corpus hardly reached delivery"
    await target.verify()


# --- atheris ------------------------------------------------------------------------------


def _atheris_available() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        missing("atheris is not installed (pip install -e '.[test]')")


async def test_atheris_corpus_is_answered_clearly_or_delivered_exactly(
    target: Target, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    """atheris fuzzes intake's routing in its own process (every input checked against the
    oracle, well-formed XML, exact values; no crash in 5,000 runs, 200,000 in the soak),
    then every corpus input it kept is posted to the real writer and checked end to end."""
    _atheris_available()
    from tests.reliability.fuzz_intake import body_from

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    runs = 200_000 if soak else 5_000
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "tests.reliability.fuzz_intake",
            f"-runs={runs}",
            "-seed=8",
            "-max_len=4096",
            "-len_control=0",
            f"-max_total_time={900 if soak else 60}",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200 if soak else 100,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    done = re.search(r"Done (\d+) runs", log)
    assert done is not None, log[-2000:]
    figures.bad_inputs += int(done.group(1))
    inputs = sorted(corpus.iterdir())
    assert len(inputs) > 20, "atheris kept almost nothing"
    for path in inputs:
        body, content_type = body_from(path.read_bytes())
        await target.post(body, content_type)
    await target.verify()


# --- 10 MB bodies ---------------------------------------------------------------------------


def _ndjson(size: int, prefix: str) -> bytes:
    lines = []
    total = 0
    i = 0
    while total < size:
        line = orjson.dumps(
            {"type": "sample", "id": f"{prefix}{i}", "testcol1": f"<&>\"'{i}", "testcol2": "é"}
        )
        lines.append(line)
        total += len(line) + 1
        i += 1
    return b"\n".join(lines)


async def test_ten_megabyte_bodies(target: Target, soak: bool, figures: Figures) -> None:
    """10 MB bodies: one 10 MB value (400 naming the field), 10 MB of nesting and of random
    bytes (400), 17 MB (413), and 10 MB of valid NDJSON (1 MB in the quick form): every
    event of it delivered exactly; the writer stays up throughout."""
    huge_value = (
        b'{"type": "sample", "id": "big", "testcol1": "' + b"x" * TEN_MB + b'"}',
        JSON,
    )
    bodies = [
        huge_value,
        (b"[" * TEN_MB, JSON),
        (os.urandom(TEN_MB), NDJSON),
        (b" " * (17 * 1024 * 1024), JSON),
        (_ndjson(TEN_MB if soak else TEN_MB // 10, "ten-"), NDJSON),
    ]
    statuses = [await target.post(body, content_type) for body, content_type in bodies]
    target.writer.check_alive()
    figures.bad_inputs += len(bodies)
    assert statuses[:4] == [400, 400, 400, 413], statuses
    assert statuses[4] == 202
    await target.verify()


async def test_integers_beyond_64_bits_are_refused_or_kept_digit_for_digit(
    target: Target,
) -> None:
    """Two ids written as JSON integers of 23 digits: each is either refused naming the
    field, or stored with exactly its digits, as two records."""
    body = (
        b'[{"type": "sample", "id": 12345678901234567890123, "testcol1": "a"},'
        b' {"type": "sample", "id": 12345678901234567890124, "testcol1": "b"}]'
    )
    url = f"{target.writer.intake_url}/v1/events"
    async with target.session.post(url, data=body, headers={"Content-Type": JSON}) as answer:
        payload = await answer.json()
    target.posted += 1
    refused = {entry["index"]: entry["error"] for entry in payload["rejected"]}
    assert all("id" in error for error in refused.values()), refused

    async def drained() -> bool:
        stats = await target.writer.stats()
        return not stats["queue"]["depth"] and not stats["delivery"]["records_in_memory"]

    await wait_for(drained, timeout=30)
    stored = {row["id"]: row["testcol1"] for row in await target.simulator.records(SAMPLE)}
    expected = {
        digits: value
        for index, (digits, value) in enumerate(
            [("12345678901234567890123", "a"), ("12345678901234567890124", "b")]
        )
        if index not in refused
    }
    assert stored == expected
