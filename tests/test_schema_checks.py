"""Routes checked against the instance's own schemas: validate --remote, scaffold, start-up.

Every check runs against the real simulator over HTTP, which serves its built-ins and
a schema loaded from an exported XML file (tests/simulator/schemas/acme-event.xml).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from campaign_writer.cli import build_parser
from campaign_writer.config import from_mapping
from campaign_writer.daemon import Daemon
from campaign_writer.errors import ConfigError
from campaign_writer.simulator import DEFAULT_SCHEMAS, AttributeSpec, SchemaSpec
from tests.delivery.test_budget import record_reservations
from tests.support.writer import config_tree

ACME = Path(__file__).parent / "simulator" / "schemas" / "acme-event.xml"
FAST = {"tps_limit": 1000, "latency_ms": 0, "latency_per_record_ms": 0, "latency_jitter": 0}
# A schema with no staging twin (no autoStg), next to the built-ins.
PLAIN = SchemaSpec("acme:plain", (AttributeSpec("code", "string", 16),), keys=("code",))

GOOD_ROUTES = """
[[routes]]
name = "sample"
match = { type = "sample" }
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["id"]
fields.id = { length = 64 }
fields.testcol1 = {}

[[routes]]
name = "people"
match = { type = "person" }
preset = "recipient"

[[routes]]
name = "subscribe"
match = { type = "subscribe" }
preset = "subscription"

[[routes]]
name = "push"
match = { type = "push" }
preset = "app_subscription"

[[routes]]
name = "shop"
match = { type = "shop" }
schema = "acme:eventStg"
method = "IngestExt"
key = ["eventId"]
fields.eventId = { length = 36 }
fields.channel = { length = 8, enum = ["web", "store", "app"] }
fields.amount = { type = "double" }
fields.at = { type = "datetime" }
"""

# One mistake per route (and two lossless but debatable choices as warnings).
MISTAKES = """
[[routes]]
name = "misspelled"
match = { type = "a" }
schema = "nms:recipientStg"
method = "IngestExt"
key = ["email"]
fields.email = { length = 128 }
fields.firstNmae = { length = 64 }

[[routes]]
name = "wrong-type"
match = { type = "b" }
schema = "nms:recipientStg"
method = "IngestExt"
key = ["email"]
fields.email = { length = 128 }
fields.points = { type = "string", length = 10 }

[[routes]]
name = "too-long"
match = { type = "c" }
schema = "acme:eventStg"
method = "IngestExt"
key = ["eventId"]
fields.eventId = { length = 36 }
fields.email = { length = 255 }

[[routes]]
name = "bad-key"
match = { type = "d" }
schema = "dem:sampleTableStg"
method = "Ingest"
key = ["ident"]
fields.ident = { length = 64 }

[[routes]]
name = "source-not-twin"
match = { type = "e" }
schema = "dem:sampleTable"
method = "IngestExt"
key = ["id"]
fields.id = { length = 64 }

[[routes]]
name = "no-twin"
match = { type = "f" }
schema = "acme:plain"
method = "Ingest"
key = ["code"]
fields.code = { length = 16 }

[[routes]]
name = "missing"
match = { type = "g" }
schema = "acme:nothingStg"
method = "Ingest"
key = ["id"]
fields.id = {}

[[routes]]
name = "classic"
match = { type = "h" }
schema = "nms:recipient"
method = "WriteCollection"
key = ["email"]
fields.email = { length = 128 }
fields.birthDate = { type = "datetime" }
"""


def write_config(directory: Path, url: str, routes: str, auth: str = "") -> Path:
    path = directory / "writer.toml"
    path.write_text(
        f"""
[campaign]
url = "{url}"
[campaign.auth]
mode = "session"
login = "admin"
password = "{auth or "admin"}"
[queue]
path = "{directory / "queue.sqlite3"}"
{routes}
""",
        encoding="utf-8",
    )
    return path


async def run(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    result = args._execute(args)
    return int(await result) if asyncio.iscoroutine(result) else int(result)


@pytest.fixture
async def instance(simulator_factory: Any) -> Any:
    """The simulator as the user's instance: the built-ins, an XML schema and acme:plain."""
    return await simulator_factory(
        schema_files=[str(ACME)], schemas=(*DEFAULT_SCHEMAS, PLAIN), **FAST
    )


def findings_by_route(data: dict[str, Any]) -> dict[str, list[tuple[str, str | None, str]]]:
    return {
        route["name"]: [(f["severity"], f["field"], f["message"]) for f in route["findings"]]
        for route in data["routes"]
    }


async def test_good_routes_pass_against_the_instance(instance, tmp_path, capsys) -> None:
    """Routes that fit the instance's schemas (presets and an XML-loaded schema) exit 0."""
    path = write_config(tmp_path, instance.url, GOOD_ROUTES)
    assert await run("validate", "--config", str(path), "--remote") == 0
    out = capsys.readouterr().out
    assert "route 'shop' -> acme:eventStg (IngestExt): OK" in out
    assert "0 errors, 0 warnings" in out
    stats = await instance.stats()
    assert set(stats["calls_by_method"]) == {"Logon", "GetEntityIfMoreRecent", "Logoff"}
    assert sum(stats["records_by_schema"].values()) == 0  # it never writes


@pytest.mark.services
async def test_remote_reads_pass_the_shared_budget(
    instance, tmp_path, capsys, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a shared budget set, every call validate --remote makes (Logon, the schema
    reads, Logoff) takes its time from the writers' one schedule in Redis."""
    reserved = record_reservations(monkeypatch)
    budget = f"""
[campaign.budget]
redis_url = "redis://127.0.0.1:{redis_port}/0"
name = "{uuid.uuid4().hex}"
"""
    path = write_config(tmp_path, instance.url, GOOD_ROUTES + budget)
    assert await run("validate", "--config", str(path), "--remote") == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    calls = sum((await instance.stats())["calls_by_method"].values())
    assert calls >= 3 and len(reserved) >= calls


async def test_each_kind_of_mistake_is_reported_per_route_and_field(
    instance, tmp_path, capsys
) -> None:
    """Each mistake the issue lists is an error on its route (and field), in text and JSON."""
    path = write_config(tmp_path, instance.url, MISTAKES)
    assert await run("validate", "--config", str(path), "--remote", "--json") == 1
    data = orjson.loads(capsys.readouterr().out)
    found = findings_by_route(data)
    assert data["ok"] is False and data["errors"] == 7 and data["warnings"] == 2
    ((severity, field, message),) = found["misspelled"]
    assert (severity, field) == ("error", "firstNmae") and "did you mean 'firstName'" in message
    ((severity, field, message),) = found["wrong-type"]
    assert (severity, field) == ("error", "points") and "long cannot hold" in message
    ((severity, field, message),) = found["too-long"]
    assert (severity, field) == ("error", "email") and "declares length 128" in message
    ((severity, field, message),) = found["bad-key"]
    assert (severity, field) == ("error", "ident") and message.startswith("key field 'ident'")
    ((severity, field, message),) = found["source-not-twin"]
    assert severity == "error" and "use schema = 'dem:sampleTableStg'" in message
    ((severity, field, message),) = found["no-twin"]
    assert severity == "error" and "acme:plain has no staging twin" in message
    ((severity, field, message),) = found["missing"]
    assert severity == "error" and "no schema acme:nothingStg" in message
    assert [(s, f) for s, f, _ in found["classic"]] == [
        ("warning", None),
        ("warning", "birthDate"),
    ]
    assert "Ingest/IngestExt into nms:recipientStg" in found["classic"][0][2]
    assert await run("validate", "--config", str(path), "--remote") == 1
    out = capsys.readouterr().out
    assert "route 'misspelled' -> nms:recipientStg (IngestExt):" in out
    assert "  error: field 'firstNmae': attribute 'firstNmae' is not in schema" in out
    assert "7 errors, 2 warnings" in out


async def test_warnings_alone_exit_zero(instance, tmp_path, capsys) -> None:
    """A WriteCollection route into a staged schema is only a warning: exit 0."""
    classic = MISTAKES[MISTAKES.index('[[routes]]\nname = "classic"') :]
    path = write_config(tmp_path, instance.url, classic)
    assert await run("validate", "--config", str(path), "--remote") == 0
    assert "0 errors, 2 warnings" in capsys.readouterr().out


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_or_refusing_instance_exits_two(instance, tmp_path, capsys) -> None:
    """No Campaign at the URL, or credentials it refuses: exit 2, saying which."""
    path = write_config(tmp_path, f"http://127.0.0.1:{closed_port()}", GOOD_ROUTES)
    assert await run("validate", "--config", str(path), "--remote") == 2
    assert "cannot check the routes (unreachable)" in capsys.readouterr().out
    path = write_config(tmp_path, instance.url, GOOD_ROUTES, auth="wrong")
    assert await run("validate", "--config", str(path), "--remote", "--json") == 2
    data = orjson.loads(capsys.readouterr().out)
    assert data["unreachable"] == "auth" and "wrong" not in data["reason"]


async def test_a_refused_lookup_is_a_warning(simulator_factory, tmp_path, capsys) -> None:
    """When the instance refuses GetEntityIfMoreRecent itself (SOP-330023, as in acc-js-sdk
    #112), each route is reported unchecked as a warning, never an error."""
    masked = await simulator_factory(
        rate_masked=1.0, fault_methods=["GetEntityIfMoreRecent"], **FAST
    )
    path = write_config(tmp_path, masked.url, GOOD_ROUTES)
    assert await run("validate", "--config", str(path), "--remote", "--json") == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["errors"] == 0 and data["warnings"] == 5
    for findings in findings_by_route(data).values():
        ((severity, _, message),) = findings
        assert severity == "warning" and "SOP-330023" in message


# --- scaffold -------------------------------------------------------------------------------


def pasted(route_text: str, directory: Path, url: str) -> Path:
    """A config holding the scaffolded route, with its one placeholder decided."""
    directory.mkdir(exist_ok=True)
    return write_config(directory, url, route_text.replace("CHANGE-ME", "event"))


async def test_scaffold_remote_prints_a_route_that_passes_validate(
    instance, tmp_path, capsys
) -> None:
    """A scaffolded route for each staged built-in is valid TOML, keyed on the schema's key,
    and passes validate --remote as pasted."""
    config = write_config(tmp_path, instance.url, GOOD_ROUTES)
    for schema_id, key in (
        ("nms:recipientStg", ["email"]),
        ("nms:subscriptionRcpStg", ["recipient-id", "service-id"]),
        ("nms:appSubscriptionRcpStg", ["mobileApp-id", "registrationToken"]),
    ):
        assert await run("scaffold", schema_id, "--remote", "--config", str(config)) == 0
        text = capsys.readouterr().out
        (route,) = tomllib.loads(text)["routes"]
        assert (route["schema"], route["method"], route["key"]) == (schema_id, "IngestExt", key)
        assert "# decide" in text
        checked = pasted(text, tmp_path / schema_id.replace(":", "_"), instance.url)
        assert await run("validate", "--config", str(checked), "--remote") == 0, capsys.readouterr()
        assert "0 errors, 0 warnings" in capsys.readouterr().out


async def test_scaffold_maps_types_lengths_and_enums_from_a_file(
    instance, tmp_path, capsys
) -> None:
    """From an exported XML file: each attribute's type mapped, lengths and the enumeration
    carried, the twin's route keyed; pasted, it passes against the instance."""
    assert await run("scaffold", "acme:eventStg", "--file", str(ACME)) == 0
    text = capsys.readouterr().out
    (route,) = tomllib.loads(text)["routes"]
    fields = route["fields"]
    assert route["key"] == ["eventId"] and route["method"] == "IngestExt"
    assert fields["channel"] == {"type": "string", "length": 8, "enum": ["web", "store", "app"]}
    assert fields["items"] == {"type": "short"} and fields["at"] == {"type": "datetime"}
    assert "recipient" not in fields  # a link, not an attribute
    checked = pasted(text, tmp_path / "pasted", instance.url)
    assert await run("validate", "--config", str(checked), "--remote") == 0


async def test_scaffold_refuses_what_it_cannot_read(instance, tmp_path, capsys) -> None:
    """An unknown schema, a file holding another schema, no twin: exit 1 with the reason."""
    config = write_config(tmp_path, instance.url, GOOD_ROUTES)
    assert await run("scaffold", "acme:nothingStg", "--remote", "--config", str(config)) == 1
    assert "has no schema acme:nothingStg" in capsys.readouterr().err
    assert await run("scaffold", "nms:recipient", "--file", str(ACME)) == 1
    assert "holds acme:event, not nms:recipient" in capsys.readouterr().err
    form = tmp_path / "form.xml"
    form.write_text('<form namespace="a" name="b"/>')
    assert await run("scaffold", "a:b", "--file", str(form)) == 1
    assert "not an exported schema" in capsys.readouterr().err
    plain = tmp_path / "plain.xml"
    plain.write_text('<srcSchema namespace="a" name="b"><element name="b"/></srcSchema>')
    assert await run("scaffold", "a:bStg", "--file", str(plain)) == 1
    assert "no staging twin" in capsys.readouterr().err


async def test_scaffold_takes_its_schema_from_an_exported_package(tmp_path, capsys) -> None:
    """--file may be a data package: the schema named (or its twin's source) is the one
    scaffolded; a schema the package lacks is refused, listing what it holds."""
    package = tmp_path / "package.xml"
    package.write_text(
        '<package><entities schema="xtk:srcSchema">'
        + ACME.read_text(encoding="utf-8").split("?>", 1)[1]
        + '<srcSchema namespace="a" name="b"><element name="b"><attribute name="x"/>'
        "</element></srcSchema></entities></package>",
        encoding="utf-8",
    )
    assert await run("scaffold", "acme:eventStg", "--file", str(package)) == 0
    (route,) = tomllib.loads(capsys.readouterr().out)["routes"]
    assert (route["schema"], route["method"], route["key"]) == (
        "acme:eventStg",
        "IngestExt",
        ["eventId"],
    )
    assert await run("scaffold", "a:z", "--file", str(package)) == 1
    assert "holds acme:event, a:b, not a:z" in capsys.readouterr().err


async def test_scaffold_reads_a_file_with_the_hardened_parser(tmp_path, capsys) -> None:
    """A schema file declaring entities (a billion-laughs shape) is refused, not expanded."""
    laughs = tmp_path / "laughs.xml"
    laughs.write_text(
        '<!DOCTYPE s [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<srcSchema namespace="a" name="b" label="&b;"><element name="b">'
        '<attribute name="x"/></element></srcSchema>'
    )
    assert await run("scaffold", "a:b", "--file", str(laughs)) == 1
    captured = capsys.readouterr()
    assert "DTD or entities" in captured.err and "aaaaaaaaaa" not in captured.out


async def test_scaffold_output_stays_toml_whatever_the_schema_says(tmp_path, capsys) -> None:
    """A label with a line break, an attribute name TOML cannot take bare, quotes in an
    enumeration value: the printed route is still valid TOML, with no key smuggled in."""
    odd = tmp_path / "odd.xml"
    odd.write_text(
        '<srcSchema namespace="a" name="b" label="Shop&#10;name = &quot;x&quot;">'
        '<enumeration name="c"><value name="q" value="v&quot;1"/></enumeration>'
        '<element name="b"><attribute name="x y" enum="c"/>'
        '<attribute name="n" type="long" enum="d"/></element>'
        '<enumeration name="d"><value name="sq" value="\u00b2"/></enumeration></srcSchema>'
    )
    assert await run("scaffold", "a:b", "--file", str(odd)) == 0
    (route,) = tomllib.loads(capsys.readouterr().out)["routes"]
    assert route["name"] == "b"
    assert route["fields"]["x y"]["enum"] == ['v"1']
    assert route["fields"]["n"]["enum"] == ["\u00b2"]


# --- the start-up check ---------------------------------------------------------------------


def checked_config(url: str, tmp_path: Path, routes: str) -> Any:
    tree = config_tree(url, tmp_path, campaign__check_schemas=True)
    tree["routes"] = tomllib.loads(routes)["routes"]
    return from_mapping(tree)


async def test_start_up_check_refuses_routes_that_do_not_fit(instance, tmp_path) -> None:
    """campaign.check_schemas: a route with errors stops the start, naming route and field."""
    daemon = Daemon(checked_config(instance.url, tmp_path, MISTAKES))
    with pytest.raises(ConfigError) as caught:
        await daemon.start()
    problems = caught.value.problems
    assert "routes 'misspelled' field 'firstNmae': attribute 'firstNmae'" in problems[0]
    assert len(problems) == 8 and problems[-1].startswith("campaign.check_schemas")
    assert daemon.http is None  # intake never opened


async def test_run_prints_each_start_up_problem_on_its_own_line(instance, tmp_path) -> None:
    """`run` with campaign.check_schemas and misfitting routes exits 1, one problem a line."""
    path = write_config(tmp_path, instance.url, MISTAKES)
    path.write_text(
        path.read_text().replace("[campaign]\n", "[campaign]\ncheck_schemas = true\n", 1)
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campaign_writer",
        "run",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    lines = stderr.decode().splitlines()
    assert process.returncode == 1, lines
    start = lines.index("campaign-writer: cannot start:")
    problems = [line for line in lines[start + 1 :] if line.startswith("  ")]
    assert len(problems) == 8, lines
    assert problems[0].startswith("  routes 'misspelled' field 'firstNmae'")
    assert problems[-1].startswith("  campaign.check_schemas")


async def test_start_up_check_logs_warnings_and_keeps_what_it_read(
    instance, tmp_path, caplog
) -> None:
    """Warnings are logged and the daemon starts; /v1/stats shows what the check found."""
    classic = MISTAKES[MISTAKES.index('[[routes]]\nname = "classic"') :]
    daemon = Daemon(checked_config(instance.url, tmp_path, GOOD_ROUTES + classic))
    await daemon.start()
    try:
        check = daemon.stats()["schema_check"]
        assert check["schemas_read"] == 10
        assert [f["route"] for f in check["findings"]] == ["classic", "classic"]
        assert "route does not quite fit its schema" in caplog.text
    finally:
        await daemon.close()


async def test_start_up_check_survives_a_refused_lookup(simulator_factory, tmp_path) -> None:
    """A lookup the instance refuses is a warning: the daemon starts and delivers."""
    masked = await simulator_factory(
        rate_masked=1.0, fault_methods=["GetEntityIfMoreRecent"], **FAST
    )
    daemon = Daemon(checked_config(masked.url, tmp_path, MISTAKES))
    await daemon.start()
    try:
        findings = daemon.stats()["schema_check"]["findings"]
        assert {f["severity"] for f in findings} == {"warning"}
        assert len(findings) == 8
    finally:
        await daemon.close()
