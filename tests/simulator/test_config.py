"""Configuration: defaults, the TOML file, overrides, and refusal of wrong settings."""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import pytest

from campaign_writer.campaign.outcome import Ok, Reject
from campaign_writer.errors import ConfigError
from campaign_writer.simulator import FaultWindow, SimulatorConfig, load_config
from campaign_writer.simulator.config import apply_changes

TOML = """
[simulator]
tps_limit = 7
limiter = "token_bucket"
burst = 2
latency_ms = 0
latency_per_record_ms = 0
fault_methods = ["Ingest"]

[[simulator.users]]
login = "etl"
password = "etl-password"
schemas = ["acme:eventStg"]

[[simulator.ims_clients]]
client_id = "pipeline"
client_secret = "pipeline-secret"

[[simulator.schedule]]
kind = "outage"
start_s = 30
end_s = 90

[simulator.schemas."acme:event"]
keys = ["eventId"]
auto_stg = true
label = "Events"
attributes = { eventId = { type = "string", length = 16 }, at = "datetime", n = "short" }
"""


def test_defaults_match_the_contract() -> None:
    """The documented defaults: 127.0.0.1:8081, 20 TPS sliding, 50 ms, admin and sim-client."""
    config = SimulatorConfig()
    assert (config.host, config.port, config.tps_limit, config.latency_ms) == (
        "127.0.0.1",
        8081,
        20,
        50,
    )
    assert config.limiter == "sliding" and config.fault_status == 500
    assert [(u.login, u.password) for u in config.users] == [("admin", "admin")]
    assert [(c.client_id, c.client_secret) for c in config.ims_clients] == [
        ("sim-client", "sim-secret")
    ]
    assert {s.id for s in config.schemas} == {
        "dem:sampleTable",
        "nms:recipient",
        "nms:subscriptionRcp",
        "nms:appSubscriptionRcp",
    }
    assert "sim-secret" not in repr(config)  # secrets stay out of reprs


def test_toml_file_adds_users_clients_schemas_and_windows(tmp_path) -> None:
    """A [simulator] table sets knobs and adds users, clients, schemas and schedule windows."""
    path = tmp_path / "sim.toml"
    path.write_text(TOML)
    config = load_config(path)
    assert config.tps_limit == 7.0 and config.limiter == "token_bucket" and config.burst == 2
    assert config.fault_methods == ("Ingest",)
    assert [u.login for u in config.users] == ["admin", "etl"]
    assert config.users[1].schemas == ("acme:eventStg",)
    assert [c.client_id for c in config.ims_clients] == ["sim-client", "pipeline"]
    assert config.schedule == (FaultWindow("outage", 30.0, 90.0, 1.0),)
    assert [s.id for s in config.schemas] == [
        "dem:sampleTable",
        "nms:recipient",
        "nms:subscriptionRcp",
        "nms:appSubscriptionRcp",
        "acme:event",
    ]
    assert "etl-password" not in repr(config)
    top_level = tmp_path / "top.toml"
    top_level.write_text("tps_limit = 3\nseed = 9\n")
    assert load_config(top_level).tps_limit == 3 and load_config(top_level).seed == 9


async def test_configured_schema_is_served_and_validated(simulator_factory, tmp_path) -> None:
    """A schema from the file gets its staging copy, its key and its type checks."""
    path = tmp_path / "sim.toml"
    path.write_text(TOML)
    # No limiter: the file's token bucket holds 2 tokens, and at 1,000/s three calls
    # within a millisecond (loopback round trips can be that fast) would draw a 429.
    sim = await simulator_factory(load_config(path), schedule=[], tps_limit=0)
    creds = await sim.logon("etl", "etl-password")
    ok = '<eventStg xtkschema="acme:eventStg" eventId="e1" at="2024-01-02 03:04:05Z" n="-3"/>'
    assert isinstance((await sim.write("IngestExt", ok, creds)).outcome(), Ok)
    bad = '<eventStg xtkschema="acme:eventStg" eventId="e2" n="40000"/>'
    assert isinstance((await sim.write("IngestExt", bad, creds)).outcome(), Reject)
    long_key = '<eventStg xtkschema="acme:eventStg" eventId="e23456789012345678"/>'
    assert isinstance((await sim.write("IngestExt", long_key, creds)).outcome(), Reject)
    rows = await sim.records("acme:eventStg")
    assert [(r["eventId"], r["n"]) for r in rows] == [("e1", "-3")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tps_limt = 3", "tps_limt: unknown key"),
        ("tps_limit = 'fast'", "tps_limit: expected a number"),
        ("limiter = 'leaky'", "limiter: 'leaky' is not one of"),
        ("rate_500 = 0.7\nrate_503 = 0.7", "add up to more than 1"),
        ("[[users]]\nlogin = 'x'", "users[0].password: required"),
        ("[[schedule]]\nkind = 'flood'\nstart_s = 0\nend_s = 1", "schedule[0].kind"),
        (
            "[[schedule]]\nkind = 'outage'\nstart_s = 5\nend_s = 1",
            "schedule[0]: needs start_s < end_s",
        ),
        ("[schemas.'bad id']\nattributes = {a = 'string'}", "not a schema id"),
        ("[schemas.'a:b']\nattributes = {a = 'text'}", "is not an XTK type"),
        ("[schemas.'a:b']\nkeys = ['z']\nattributes = {a = 'string'}", "'z' is not an attribute"),
        ("tls_cert = 'c.pem'", "tls_cert, tls_key: give both or neither"),
        ("tps_limit = 3\n[oops", "sim.toml"),
    ],
)
def test_wrong_settings_are_refused_with_their_path(tmp_path, text, message) -> None:
    """Unknown keys, wrong types and inconsistent values raise ConfigError naming the key."""
    path = tmp_path / "sim.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_direct_construction_and_overrides_are_validated() -> None:
    """SimulatorConfig(...) and apply_changes check values too; runtime_only guards fixed knobs."""
    with pytest.raises(ConfigError, match="rate_500"):
        SimulatorConfig(rate_500=1.5)
    config = apply_changes(SimulatorConfig(), {"tps_limit": "12.5", "retry_after": "false"})
    assert config.tps_limit == 12.5 and config.retry_after is False
    with pytest.raises(ConfigError, match="fixed once the simulator has started"):
        apply_changes(config, {"db": "x.sqlite3"}, runtime_only=True)


def test_the_shipped_example_lists_every_key_at_its_default(tmp_path, capsys) -> None:
    """example.toml (printed by --example-config) names every field and loads to the defaults."""
    from campaign_writer.cli import main

    assert main(["simulate", "--example-config"]) == 0
    text = capsys.readouterr().out
    assert text == (files("campaign_writer.simulator") / "example.toml").read_text()
    for field in dataclasses.fields(SimulatorConfig):
        assert (
            f"{field.name} =" in text
            or f"[[{field.name}]]" in text
            or (field.name == "schemas" and '[schemas."' in text)
        ), field.name
    path = tmp_path / "example.toml"
    path.write_text(text)
    assert load_config(path) == SimulatorConfig()
