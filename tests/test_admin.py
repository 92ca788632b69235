"""The admin listener's metrics of intake and queue, read from a running daemon's /metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from campaign_writer import __version__
from tests.support.writer import post_events, running_writer, sample_events, wait_for, writer_config

# Nothing listens there: delivery keeps failing, so what was posted stays queued.
NOWHERE = "http://127.0.0.1:9"


async def scrape(session: aiohttp.ClientSession, admin_url: str) -> dict[tuple[str, str], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    async with session.get(f"{admin_url}/metrics") as answer:
        text = await answer.text()
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_intake_answers_queue_age_and_capacity_are_exported(tmp_path: Path) -> None:
    """/metrics counts intake answers by status, and shows the oldest record's age, the
    queue's capacity, readiness, auth, the build and the process."""
    config = writer_config(NOWHERE, tmp_path, queue__max_bytes="64MiB")
    async with running_writer(config) as writer, aiohttp.ClientSession() as session:
        assert writer.http is not None and writer.admin is not None
        await post_events(writer.http.url, sample_events(3))
        async with session.post(f"{writer.http.url}/v1/events", data=b"{nope") as answer:
            assert answer.status == 400
        async with session.get(f"{writer.http.url}/v1/events") as answer:
            assert answer.status == 405

        async def aged() -> dict[tuple[str, str], float] | None:
            samples = await scrape(session, writer.admin.url)  # type: ignore[union-attr]
            return samples if samples[("campaign_writer_queue_oldest_age_seconds", "")] else None

        samples = await wait_for(aged, timeout=30)
    answers = "campaign_writer_intake_responses_total"
    assert samples[(answers, "source=http,status=202")] == 1
    assert samples[(answers, "source=http,status=400")] == 1
    assert samples[(answers, "source=http,status=405")] == 1
    assert samples[("campaign_writer_queue_max_bytes", "")] == 64 * 1024**2
    assert samples[("campaign_writer_queue_oldest_age_seconds", "")] > 0
    assert samples[("campaign_writer_build_info", f"version={__version__}")] == 1
    assert samples[("process_resident_memory_bytes", "")] > 0
    # Campaign is unreachable, which does not fail readiness; no credentials yet.
    for check in ("queue", "auth", "delivery"):
        assert samples[("campaign_writer_readiness", f"check={check}")] == 1
    assert samples[("campaign_writer_auth_ready", "")] == 0
