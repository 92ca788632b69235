"""The presets for the staged built-ins, end to end: intake -> queue -> IngestExt -> staging."""

from __future__ import annotations

import tomllib
from typing import Any

import aiohttp

from campaign_writer.config import Config, from_mapping
from tests.support.simulator import SimulatorHandle
from tests.support.writer import config_tree, post_events, running_writer, wait_for

# The consent pipeline of the README: a few lines of config.
PIPELINE = """
[[routes]]
name = "people"
preset = "recipient"
match = { type = "person" }

[[routes]]
name = "subscribe"
preset = "subscription"
match = { type = "subscribe" }

[[routes]]
name = "unsubscribe"
preset = "subscription"
match = { type = "unsubscribe" }
operation = "delete"

[[routes]]
name = "push"
preset = "app_subscription"
match = { type = "push" }
"""


def pipeline_config(url: str, tmp_path: Any) -> Config:
    tree = config_tree(url, tmp_path)
    tree["routes"] = tomllib.loads(PIPELINE)["routes"]
    return from_mapping(tree)


async def test_recipient_preset_upserts_profiles_in_staging(
    simulator: SimulatorHandle, tmp_path
) -> None:
    """Profiles go to nms:recipientStg by IngestExt keyed on email; a later event updates."""
    people = [
        {"type": "person", "email": f"p{i}@example.com", "firstName": f"P{i}", "blackList": False}
        for i in range(50)
    ]
    update = {"type": "person", "email": "p7@example.com", "lastName": "Later"}
    async with running_writer(pipeline_config(simulator.url, tmp_path)) as writer:
        assert writer.http is not None
        assert await post_events(writer.http.url, people) == 50
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 50)
        assert await post_events(writer.http.url, [update]) == 1
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 51)
        # The lane's delivery age, in /v1/stats and as a gauge (enqueue time: seconds).
        lane = writer.stats()["delivery"]["lanes"]["nms:recipientStg#IngestExt"]
        assert 0 <= lane["newest_delivered_age_s"] < 60
        assert writer.admin is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{writer.admin.url}/metrics") as answer,
        ):
            exposition = await answer.text()
        assert (
            'campaign_writer_lane_newest_delivered_age_seconds{method="IngestExt",'
            'schema="nms:recipientStg"}' in exposition
        )
    rows = {row["email"]: row for row in await simulator.records("nms:recipientStg")}
    assert len(rows) == 50
    assert rows["p7@example.com"]["firstName"] == "P7"
    assert rows["p7@example.com"]["lastName"] == "Later"
    assert rows["p3@example.com"]["blackList"] == "false"
    assert (await simulator.stats())["calls_by_method"]["IngestExt"] >= 2


async def test_subscription_preset_subscribes_and_unsubscribes(
    simulator: SimulatorHandle, tmp_path
) -> None:
    """subscribe events store (recipient-id, service-id) rows; unsubscribe deletes one."""
    subscribe = [
        {"type": "subscribe", "recipientId": r, "serviceId": s, "created": "2026-12-01T10:00:00Z"}
        for r in (12, 13)
        for s in (3, 4)
    ]
    async with running_writer(pipeline_config(simulator.url, tmp_path)) as writer:
        assert writer.http is not None
        assert await post_events(writer.http.url, subscribe) == 4
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 4)
        unsubscribe = {"type": "unsubscribe", "recipientId": 12, "serviceId": 3}
        assert await post_events(writer.http.url, [unsubscribe]) == 1
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 5)
    rows = await simulator.records("nms:subscriptionRcpStg")
    assert sorted((row["recipient-id"], row["service-id"]) for row in rows) == [
        ("12", "4"),
        ("13", "3"),
        ("13", "4"),
    ]
    assert {row["created"] for row in rows} == {"2026-12-01 10:00:00.000Z"}


async def test_app_subscription_preset_enforces_its_enumeration(
    simulator: SimulatorHandle, tmp_path
) -> None:
    """Push registrations reach nms:appSubscriptionRcpStg; an unknown platform is refused at
    intake with the field named, and never reaches Campaign."""
    events = [
        {"type": "push", "mobileAppId": 5, "registrationToken": "tok-1", "platform": "ios"},
        {"type": "push", "mobileAppId": 5, "registrationToken": "tok-2", "platform": "symbian"},
    ]
    async with running_writer(pipeline_config(simulator.url, tmp_path)) as writer:
        assert writer.http is not None
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{writer.http.url}/v1/events", json=events) as answer,
        ):
            body = await answer.json()
        assert body["accepted"] == 1
        (rejected,) = body["rejected"]
        assert rejected["index"] == 1
        assert rejected["error"].startswith("platform: 'symbian' is not one of the allowed")
        await wait_for(lambda: writer.dispatcher.totals["delivered"] == 1)
    (row,) = await simulator.records("nms:appSubscriptionRcpStg")
    assert (row["mobileApp-id"], row["registrationToken"], row["platform"]) == (
        "5",
        "tok-1",
        "ios",
    )
