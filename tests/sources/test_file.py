"""NDJSON file source: a real file in tmp_path into a real queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaign_writer.errors import ConfigError
from campaign_writer.sources.file import FileSource, read_settings
from tests.sources.conftest import POISON, IntakeFactory, collect, eventually, sample_events


def make_source(path: Path, intake: object, **keys: object) -> FileSource:
    settings = read_settings({"path": str(path), **keys}, "sources[0]")
    return FileSource("backfill", settings, intake.router, intake.queue, intake.metrics)  # type: ignore[attr-defined]


async def test_lines_are_committed_and_bad_lines_dead_lettered_with_their_line(
    tmp_path: Path, intake_factory: IntakeFactory, sources: list
) -> None:
    """Good lines reach the queue, blank lines are skipped, bad ones go to the DLQ."""
    events = sample_events("file", 2_000)
    lines = [body for _, body in events[:1_000]] + [b"", *POISON] + [b for _, b in events[1_000:]]
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    intake = await intake_factory()
    source = make_source(path, intake, batch_size=300)
    sources.append(source)
    await source.start()
    keys = await collect([intake], [key for key, _ in events])
    assert sorted(keys) == sorted(key for key, _ in events)
    await eventually(lambda: source.stats()["finished"], what="the end of the file")
    letters = await intake.dead_letters()
    poison_lines = {body: str(1_002 + index) for index, body in enumerate(POISON)}
    blank = b"   "  # a line of spaces is skipped like an empty one
    assert {letter.event for letter in letters} == set(POISON) - {blank}
    for letter in letters:
        assert letter.headers == {"path": str(path), "line": poison_lines[letter.event]}
    # Counted once: the stats, the metrics and the repr read the same figures.
    stats = source.stats()
    assert stats["accepted"] == 2_000 and stats["dead_lettered"] == len(letters)
    assert intake.metrics.events_accepted.labels("backfill").value == 2_000
    assert f"accepted=2000 acked={stats['acked']} dead_lettered={len(letters)}" in repr(source)


async def test_follow_reads_lines_appended_later(
    tmp_path: Path, intake_factory: IntakeFactory, sources: list
) -> None:
    """follow = true picks up lines written after the start, whole lines only."""
    path = tmp_path / "growing.ndjson"
    first, second = sample_events("early", 10), sample_events("late", 10)
    path.write_bytes(b"".join(body + b"\n" for _, body in first))
    intake = await intake_factory()
    source = make_source(path, intake, follow=True)
    sources.append(source)
    await source.start()
    await collect([intake], [key for key, _ in first])
    with path.open("ab") as stream:
        stream.write(b"".join(body + b"\n" for _, body in second[:-1]))
        stream.write(second[-1][1][:10])  # half a line: not read until it ends
        stream.flush()
        await collect([intake], [key for key, _ in second[:-1]])
        stream.write(second[-1][1][10:] + b"\n")
    keys = await collect([intake], [key for key, _ in first + second])
    assert sorted(keys) == sorted(key for key, _ in first + second)
    assert not await intake.dead_letters()


def test_settings_reject_follow_on_stdin() -> None:
    """follow applies to a file only; path is required."""
    with pytest.raises(ConfigError) as caught:
        read_settings({"path": "-", "follow": True}, "sources[5]")
    assert caught.value.problems == ["sources[5].follow: applies to a file, not to standard input"]
    with pytest.raises(ConfigError, match=r"sources\[5\]\.path: is required"):
        read_settings({}, "sources[5]")
