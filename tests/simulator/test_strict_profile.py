"""The strict profile (no invented code, IMS scope, no collections) and the new knobs' checks."""

from __future__ import annotations

import argparse

import pytest

from campaign_writer.campaign import soap
from campaign_writer.commands import simulate
from campaign_writer.errors import ConfigError
from campaign_writer.simulator import SimulatorConfig, load_config
from campaign_writer.simulator.codes import INVENTED
from campaign_writer.simulator.config import apply_changes
from tests.support.simulator import FAST

STG = "dem:sampleTableStg"
RECIPIENT = "nms:recipientStg"
SERVICE = "xtk:persist|xtk:session"
PG = "PostgreSQL error: ERROR:  "
SAVING = "Impossible to save document of type '{}'"


def stg(**attrs: str) -> str:
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<sampleTableStg xtkschema="{STG}" {body}/>'


def rec(**attrs: str) -> str:
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<recipientStg xtkschema="{RECIPIENT}" {body}/>'


def collection(*children: str, root: str = "sampleTableStg-collection") -> str:
    return f'<{root} xtkschema="{STG}">{"".join(children)}</{root}>'


# Every refusal of a record, a schema or a document the write path has, one case each.
PLAIN_FAULTS = [
    ("Write", "", "needs a document"),
    ("Write", '<sampleTableStg id="1"/>', "no 'xtkschema'"),
    ("Ingest", '<x xtkschema="cus:unknown"/>', "'cus:unknown' is unknown"),
    ("Ingest", '<sampleTable xtkschema="dem:sampleTable" id="1"/>', "not a staging schema"),
    ("Write", f'<other xtkschema="{STG}" id="1"/>', "not an entity of schema"),
    ("WriteCollection", collection(stg(id="1"), "<stray/>"), "Element 'stray' is not defined"),
    ("Write", stg(_key="[folder/@name]", id="1"), "Unsupported reconciliation key"),
    ("Write", stg(_key="@nope", id="1"), "Key attribute 'nope' is not defined"),
    ("IngestExt", rec(email="a@x", nickname="z"), "Attribute 'nickname' is not defined"),
    ("IngestExt", rec(email="a@x", points="ten"), "type long"),
    ("IngestExt", rec(email="a@x", gender="300"), "out of range for type byte"),
    ("IngestExt", rec(email="a@x", birthDate="1990-02-30"), "out of range"),
    ("IngestExt", rec(firstName="no key"), "@email"),
    ("Ingest", stg(_key="@id", testcol1="x"), "@id"),
    ("Ingest", stg(_operation="delete", id="1"), "Ingest only inserts"),
    ("Write", stg(_operation="upsert", id="1"), "Invalid _operation 'upsert'"),
    ("Ingest", collection(stg(id="1"), stg(id="2")), "does not accept a collection"),
    ("IngestExt", collection(stg(id="1"), root="sampleTableStg"), "does not accept a collection"),
]


def assert_code_less(reply, method: str) -> soap.SoapFault:
    assert reply.status == 500
    fault = reply.fault()
    assert fault.faultcode == "SOAP-ENV:Server"
    assert (
        fault.faultstring == f"Error while executing the method '{method}' of service '{SERVICE}'."
    )
    assert fault.codes == ()
    return fault


@pytest.mark.parametrize(("method", "document", "cause"), PLAIN_FAULTS)
async def test_strict_refusals_carry_no_code(simulator_factory, method, document, cause) -> None:
    """strict: every schema, record and collection refusal is code-less, its detail the cause."""
    sim = await simulator_factory(**FAST, profile="strict")
    creds = await sim.logon()
    fault = assert_code_less(await sim.write(method, document, creds), method)
    assert cause in fault.detail
    assert not fault.detail.startswith(PG)
    assert "record 1 of" not in fault.detail  # a real instance names no record
    assert await sim.records(STG) == [] and await sim.records(RECIPIENT) == []


@pytest.mark.parametrize(
    ("knobs", "document", "detail"),
    [
        (
            {},
            rec(email="a@x", firstName="n" * 65),
            f"{PG}value too long for type character varying(64)"
            + SAVING.format("Recipients (nms:recipientStg)"),
        ),
        (
            {},
            rec(email="a@x", lastName="__POISON__"),
            f'{PG}duplicate key violates unique constraint "nmsrecipientstg_email"'
            + SAVING.format("Recipients (nms:recipientStg)"),
        ),
        (
            {"poison_style": "coded"},
            rec(email="a@x", lastName="__POISON__"),
            f'{PG}new row for relation "nmsrecipientstg" violates check constraint'
            ' "nmsrecipientstg_check"' + SAVING.format("Recipients (nms:recipientStg)"),
        ),
        (
            {"poison_style": "coded", "poison_marker": "", "poison_rate": 1.0},
            stg(id="1"),
            f'{PG}new row for relation "demsampletablestg" violates check constraint'
            ' "demsampletablestg_check"' + SAVING.format("Sample table (dem:sampleTableStg)"),
        ),
    ],
)
async def test_strict_database_refusals_read_as_postgresql(
    simulator_factory, knobs, document, detail
) -> None:
    """strict: database refusals read 'PostgreSQL error: ERROR:  ...Impossible to save ...'."""
    sim = await simulator_factory(**FAST, profile="strict", **knobs)
    creds = await sim.logon()
    fault = assert_code_less(await sim.write("IngestExt", document, creds), "IngestExt")
    assert fault.detail == detail


async def test_strict_access_denied_carries_no_code(simulator_factory) -> None:
    """strict: an operator writing outside its schemas gets a code-less access fault."""
    sim = await simulator_factory(
        **FAST, profile="strict", users=[{"login": "ops", "password": "pw", "schemas": [STG]}]
    )
    creds = await sim.logon("ops", "pw")
    fault = assert_code_less(await sim.write("Ingest", rec(email="a@x"), creds), "Ingest")
    assert (
        fault.detail == "Access denied: operator 'ops' may not write to schema 'nms:recipientStg'."
    )
    assert (await sim.stats())["faults_by_kind"] == {"access": 1}


async def test_strict_keeps_only_seen_codes_elsewhere(simulator_factory) -> None:
    """strict: bad login, expiry and unknown method keep their seen codes, none invented."""
    sim = await simulator_factory(**FAST, profile="strict")
    login = await sim.call(
        "Logon",
        [
            soap.Param("login", "string", "admin"),
            soap.Param("password", "string", "wrong"),
            soap.Param("parameters", "element", ""),
        ],
    )
    assert login.fault().codes == ("SOP-330011", "XSV-350012")
    creds = await sim.logon()
    wire = soap.WireOptions(urns={"Ingest": "xtk:nothing"})
    unknown = await sim.write("Ingest", stg(id="1"), creds, wire)
    assert unknown.fault().codes == ("SOP-330006",)
    await sim.control(expire_sessions=True)
    expired = await sim.write("Ingest", stg(id="1"), creds)
    assert expired.fault().codes == ("XSV-350008",)
    for reply in (login, unknown, expired):
        assert not set(reply.fault().codes) & INVENTED


async def test_default_profile_still_uses_the_invented_codes(simulator) -> None:
    """The default profile is unchanged: a refused collection says XSV-350105 under SOP-330011."""
    creds = await simulator.logon()
    await simulator.control(ingest_collections="refuse")
    reply = await simulator.write("Ingest", collection(stg(id="1"), stg(id="2")), creds)
    assert reply.fault().codes == ("SOP-330011", "XSV-350105")


async def test_strict_ims_token_needs_a_scope(simulator_factory) -> None:
    """strict: /ims/token/v3 needs a non-empty scope (400 invalid_scope); default does not."""
    form = {"grant_type": "client_credentials", "client_id": "sim-client"}
    form["client_secret"] = "sim-secret"
    for profile, scope, status in [
        ("strict", None, 400),
        ("strict", " ", 400),
        ("strict", "openid,AdobeID", 200),
        ("default", None, 200),
    ]:
        sim = await simulator_factory(**FAST, profile=profile)
        data = form if scope is None else {**form, "scope": scope}
        async with sim.session.post(sim.ims_url, data=data) as answer:
            assert answer.status == status, (profile, scope)
            body = await answer.json()
        if status == 400:
            assert body == {"error": "invalid_scope", "error_description": "scope is required"}
        else:
            assert body["token_type"] == "bearer" and body["access_token"]


async def test_strict_collections_are_refused_unless_asked_for(simulator_factory) -> None:
    """strict: Ingest refuses collections until ingest_collections says accept or partial."""
    sim = await simulator_factory(**FAST, profile="strict")
    creds = await sim.logon()
    doc = collection(stg(_key="@id", id="1"), stg(_key="@id", id="2"))
    assert (await sim.control())["config"]["ingest_collections"] == ""
    assert_code_less(await sim.write("IngestExt", doc, creds), "IngestExt")
    assert (await sim.write("WriteCollection", doc, creds)).status == 200
    await sim.control(clear_records=True, ingest_collections="accept")
    assert (await sim.write("IngestExt", doc, creds)).status == 200
    assert [r["id"] for r in await sim.records(STG)] == ["1", "2"]
    await sim.control(clear_records=True, ingest_collections="partial")
    assert (await sim.write("IngestExt", doc, creds)).status == 200
    assert [r["id"] for r in await sim.records(STG)] == ["1"]
    stats = await sim.stats()
    assert stats["faults_by_kind"] == {"collection": 1, "collection_partial": 1}


@pytest.mark.parametrize(
    ("value", "mode"), [(False, "refuse"), (True, "accept"), ("false", "refuse"), ("Yes", "accept")]
)
async def test_legacy_boolean_ingest_collections_in_control(simulator, value, mode) -> None:
    """ingest_collections true/false (JSON or text) still work: accept and refuse."""
    creds = await simulator.logon()
    answer = await simulator.control(ingest_collections=value)
    assert answer["config"]["ingest_collections"] == mode
    reply = await simulator.write("Ingest", collection(stg(id="1"), stg(id="2")), creds)
    assert (reply.status == 200) == (mode == "accept")
    assert len(await simulator.records(STG)) == (2 if mode == "accept" else 0)


def test_legacy_boolean_ingest_collections_in_toml_and_flags(tmp_path) -> None:
    """TOML ingest_collections = false and --ingest-collections true map to refuse and accept."""
    path = tmp_path / "sim.toml"
    path.write_text("ingest_collections = false\nprofile = 'strict'\n")
    assert load_config(path).ingest_collections == "refuse"
    parser = argparse.ArgumentParser()
    simulate.configure(parser)
    for flag, mode in [("true", "accept"), ("false", "refuse"), ("partial", "partial")]:
        args = parser.parse_args(["--ingest-collections", flag, "--config", str(path)])
        config = simulate.build_config(args)
        assert (config.ingest_collections, config.collections_mode) == (mode, mode)
    args = parser.parse_args(["--profile", "strict", "--poison-style", "masked", "--unique-keys"])
    config = simulate.build_config(args)
    assert (config.profile, config.poison_mode, config.unique_keys) == ("strict", "masked", True)


def test_profile_decides_empty_knobs() -> None:
    """Empty ingest_collections and poison_style follow the profile; set, they win over it."""
    default, strict = SimulatorConfig(), SimulatorConfig(profile="strict")
    assert (default.collections_mode, default.poison_mode) == ("accept", "coded")
    assert (strict.collections_mode, strict.poison_mode) == ("refuse", "duplicate")
    chosen = apply_changes(strict, {"ingest_collections": "accept", "poison_style": "coded"})
    assert (chosen.collections_mode, chosen.poison_mode) == ("accept", "coded")


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"profile": "lenient"}, "profile"),
        ({"ingest_collections": "some"}, "ingest_collections"),
        ({"ingest_collections": 3}, "ingest_collections"),
        ({"poison_style": "loud"}, "poison_style"),
        ({"unique_keys": "maybe"}, "unique_keys"),
        ({"rate_masked": 1.5}, "rate_masked"),
        ({"rate_badlogin": -0.1}, "rate_badlogin"),
        ({"rate_masked": 0.6, "rate_badlogin": 0.6}, "rate_*"),
        ({"schedule": [{"kind": "masks", "start_s": 0, "end_s": 1}]}, "schedule[0].kind"),
    ],
)
def test_new_knobs_refuse_bad_values(changes, path) -> None:
    """A bad profile, collection mode, poison style, unique_keys or new rate is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        apply_changes(SimulatorConfig(), changes)
    assert any(path in problem for problem in caught.value.problems), caught.value.problems


def test_direct_construction_checks_the_choices() -> None:
    """SimulatorConfig(...) built without coercion still refuses a value outside the choices."""
    with pytest.raises(ConfigError, match="profile"):
        SimulatorConfig(profile="lenient")
    with pytest.raises(ConfigError, match="poison_style"):
        SimulatorConfig(poison_style="loud")


async def test_control_refuses_bad_new_knobs_and_changes_nothing(simulator) -> None:
    """POST /__sim/control with a bad profile is a 400 listing it; the running knobs stay."""
    changes = {"profile": "lenient", "unique_keys": True}
    async with simulator.session.post(f"{simulator.url}/__sim/control", json=changes) as answer:
        assert answer.status == 400
        errors = (await answer.json())["errors"]
    assert any("control.profile" in error for error in errors), errors
    config = (await simulator.control())["config"]
    assert (config["profile"], config["unique_keys"]) == ("default", False)
