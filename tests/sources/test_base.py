"""The shared source loop: backoff, and a failure that is not the broker's."""

from __future__ import annotations

from pathlib import Path

from campaign_writer.backoff import Backoff
from campaign_writer.errors import QueueError
from tests.sources.conftest import IntakeFactory, eventually, sample_events
from tests.sources.test_file import make_source


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    """Reconnect delays double from the first one, never pass the cap, restart at reset."""
    backoff = Backoff(0.2, 3.0, "half")  # what sources reconnect with
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [min(3.0, 0.2 * 2**n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 3.0
    backoff.reset()
    assert 0.1 <= backoff.next_delay() <= 0.2


async def test_a_queue_failure_stops_the_source_loudly(
    tmp_path: Path, intake_factory: IntakeFactory, sources: list
) -> None:
    """A failure other than the broker's is not retried: the source keeps it in crashed."""
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(body for _, body in sample_events("crash", 10)) + b"\n")
    intake = await intake_factory()
    await intake.queue.close()
    source = make_source(path, intake)
    sources.append(source)
    await source.start()
    await eventually(lambda: source.crashed is not None, what="the source to crash")
    assert isinstance(source.crashed, QueueError)
    assert source.stats()["acked"] == 0
