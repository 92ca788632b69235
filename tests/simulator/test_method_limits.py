"""Per-method limits inside the tenant's: configured, changed at run time, over real HTTP."""

from __future__ import annotations

import asyncio

import pytest

from campaign_writer.campaign.outcome import Throttled
from campaign_writer.errors import ConfigError
from campaign_writer.simulator.config import (
    SOAP_METHODS,
    SimulatorConfig,
    apply_changes,
    load_config,
)
from campaign_writer.simulator.protocol import SESSION_METHODS
from campaign_writer.simulator.staging import WRITE_METHODS
from tests.support.simulator import FakeClock

QUIET = {"latency_ms": 0, "latency_per_record_ms": 0, "latency_jitter": 0}


def statuses(replies: list) -> list[int]:
    return sorted(reply.status for reply in replies)


def test_every_method_the_simulator_answers_may_be_limited() -> None:
    """The names [method_limits] accepts are exactly the SOAP methods the simulator serves."""
    served = SESSION_METHODS | WRITE_METHODS | {"GetEntityIfMoreRecent"}
    assert set(SOAP_METHODS) == served


def test_method_limits_from_toml_flags_and_control_spellings(tmp_path) -> None:
    """A TOML table, a METHOD=N,... flag and a JSON object all give the same sorted pairs."""
    path = tmp_path / "sim.toml"
    path.write_text("tps_limit = 20\n[method_limits]\nWriteCollection = 5\nIngest = 12\n")
    expected = (("Ingest", 12.0), ("WriteCollection", 5.0))
    assert load_config(path).method_limits == expected
    base = SimulatorConfig()
    flag = apply_changes(base, {"method_limits": "WriteCollection=5, Ingest=12"}, source="flags")
    assert flag.method_limits == expected
    control = apply_changes(base, {"method_limits": {"Ingest": "12", "WriteCollection": 5}})
    assert control.method_limits == expected
    assert apply_changes(control, {"method_limits": {}}).method_limits == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Ingets": 12}, "control.method_limits.Ingets: unknown SOAP method"),
        ({"Ingest": -1}, "control.method_limits.Ingest: must be a finite number, not negative"),
        ({"Ingest": "fast"}, "control.method_limits.Ingest: expected a number"),
        ("Ingest:12", "control.method_limits: expected METHOD=LIMIT items"),
        (12, "control.method_limits: expected a table of method = calls per second"),
    ],
)
def test_wrong_method_limits_are_refused_naming_the_key(value, message) -> None:
    """A misspelt method, a negative or non-numeric limit, or a wrong shape names its path."""
    with pytest.raises(ConfigError) as caught:
        apply_changes(SimulatorConfig(), {"method_limits": value}, source="control")
    assert message in str(caught.value)


async def test_a_method_stays_within_its_own_limit_and_the_tenants(simulator_factory) -> None:
    """Logoff is held to its 2/s while Logon uses the rest of the tenant's 5/s; a call a
    method limit refuses does not eat the tenant's budget."""
    clock = FakeClock(1000.5)
    sim = await simulator_factory(tps_limit=5, method_limits={"Logoff": 2}, clock=clock, **QUIET)
    logoffs = await asyncio.gather(*(sim.call("Logoff") for _ in range(4)))
    assert statuses(logoffs) == [200, 200, 429, 429]
    for _ in range(3):  # the two refused Logoffs left the tenant 3 calls this second
        await sim.logon()
    late = await sim.call("Logoff")
    assert late.status == 429
    with pytest.raises(AssertionError):
        await sim.logon()  # the tenant's 5 are used: Logon is refused too
    clock.advance(1.0)
    assert (await sim.call("Logoff")).status == 200
    stats = await sim.stats()
    assert stats["method_limits"] == {"Logoff": 2.0}
    assert stats["responses_by_status"] == {"200": 6, "429": 4}


async def test_a_method_limit_429_is_the_tenants_429(simulator_factory) -> None:
    """The 429 of a method limit has the tenant's status, Retry-After and body: nothing says
    which limit refused the call."""
    clock = FakeClock(1000.5)
    sim = await simulator_factory(tps_limit=1, clock=clock, **QUIET)
    await sim.call("Logoff")
    tenant = await sim.call("Logoff")
    clock.advance(1.0)
    await sim.control(tps_limit=10, method_limits={"Logoff": 1})
    await sim.call("Logoff")
    method = await sim.call("Logoff")
    assert tenant.status == method.status == 429
    assert method.outcome() == tenant.outcome() == Throttled(1.0)
    assert method.headers["Retry-After"] == tenant.headers["Retry-After"]
    assert method.headers["Content-Type"] == tenant.headers["Content-Type"]
    assert method.body.replace(b"10", b"1") == tenant.body  # the message names tps_limit


@pytest.mark.parametrize("model", ["sliding", "fixed", "token_bucket"])
async def test_method_limits_follow_the_limiter_model(simulator_factory, model: str) -> None:
    """Each limiter model counts a method's calls as it counts the tenant's."""
    clock = FakeClock(1000.5)
    sim = await simulator_factory(
        tps_limit=50, limiter=model, burst=2, method_limits={"Logoff": 2}, clock=clock, **QUIET
    )
    assert statuses(await asyncio.gather(*(sim.call("Logoff") for _ in range(5)))) == [
        200,
        200,
        429,
        429,
        429,
    ]
    clock.advance(0.5)  # a fixed window resets at 1001; a bucket refills one token
    second = statuses(await asyncio.gather(*(sim.call("Logoff") for _ in range(5))))
    assert second.count(200) == {"sliding": 0, "fixed": 2, "token_bucket": 1}[model]


async def test_control_changes_method_limits_mid_run(simulator_factory) -> None:
    """POST /__sim/control sets, lowers (keeping the window history) and removes a method
    limit while the simulator runs; GET shows the table; a bad one changes nothing."""
    clock = FakeClock(1000.5)
    sim = await simulator_factory(tps_limit=100, clock=clock, **QUIET)
    answer = await sim.control(method_limits={"Logoff": 6})
    assert answer["config"]["method_limits"] == {"Logoff": 6.0}
    assert statuses(await asyncio.gather(*(sim.call("Logoff") for _ in range(4)))) == [200] * 4
    await sim.control(method_limits={"Logoff": 4})  # the 4 already used still count
    assert (await sim.call("Logoff")).status == 429
    async with sim.session.post(
        f"{sim.url}/__sim/control", json={"method_limits": {"Logof": 1}}
    ) as reply:
        assert reply.status == 400
        assert "control.method_limits.Logof: unknown SOAP method" in (await reply.text())
    async with sim.session.get(f"{sim.url}/__sim/control") as reply:
        assert (await reply.json())["config"]["method_limits"] == {"Logoff": 4.0}
    await sim.control(method_limits={})
    assert (await sim.call("Logoff")).status == 200
