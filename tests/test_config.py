"""Loading the TOML config: defaults, every problem with its path, overrides, secrets."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from campaign_writer import sources
from campaign_writer.campaign.soap import DEFAULT_URNS, METHODS
from campaign_writer.config import Config, from_mapping, load
from campaign_writer.errors import ConfigError
from campaign_writer.logs import Secret, redact
from campaign_writer.settings import parse_duration, parse_size, split_listen

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.toml"
LOCAL = ROOT / "config" / "local.toml"

MINIMAL = """
[campaign]
url = "https://tenant.campaign.adobe.com"
[campaign.auth]
login = "ops"
password = "s3cret-pass"
[[routes]]
name = "sample"
schema = "dem:sampleTableStg"
method = "Ingest"
fields.id = {}
"""

# Every key operators may set; example.toml must document each one.
DOCUMENTED_KEYS = [
    "campaign.url", "campaign.tps_limit", "campaign.max_response_bytes",
    "campaign.retry_after_cap_s", "campaign.check_schemas", "campaign.budget.redis_url",
    "campaign.budget.name", "campaign.limits", "campaign.auth.mode", "campaign.auth.login",
    "campaign.auth.password", "campaign.auth.password_env", "campaign.auth.password_file",
    "campaign.auth.ims_url", "campaign.auth.client_id", "campaign.auth.client_secret",
    "campaign.auth.scope", "campaign.auth.refresh_margin_s", "campaign.tls.verify",
    "campaign.tls.ca_bundle", "campaign.wire.content_type", "campaign.wire.soap_action_quoted",
    "campaign.wire.method_in_url", "campaign.wire.urns", "queue.path", "queue.max_bytes",
    "queue.synchronous", "queue.commit_window_ms", "http.listen", "http.token",
    "http.max_body_bytes", "admin.listen",
    "batch.max_records", "batch.max_bytes", "batch.linger_ms", "sender.max_in_flight",
    "sender.timeout_s", "retry.max_age", "retry.initial_backoff_s", "retry.max_backoff_s",
    "retry.record_failures", "retry.suspect_after", "retry.fault_pause_initial_s",
    "retry.fault_pause_max_s",
    "daemon.shutdown_timeout_s", "log.level", "log.format", "intake.invalid_xml_chars",
    "routes.name", "routes.match", "routes.schema", "routes.method", "routes.key",
    "routes.operation", "routes.operation_field", "routes.collection", "routes.fields.path",
    "routes.fields.type", "routes.fields.length", "routes.fields.required",
    "routes.fields.default", "routes.fields.enum", "routes.preset", "sources.kind",
    "sources.name",
]  # fmt: skip


def minimal(**changes: Any) -> dict[str, Any]:
    data = tomllib.loads(MINIMAL)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def problems_of(data: dict[str, Any], overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        from_mapping(data, overrides or [])
    return caught.value.problems


def test_example_loads_with_the_issue_routes_and_ims_auth() -> None:
    """config/example.toml is valid: IMS auth (the simulator's account) and the two routes."""
    config = load(EXAMPLE)
    assert config.campaign.auth.mode == "ims"
    assert config.campaign.auth.client_id == "sim-client"
    assert config.campaign.auth.client_secret == Secret("sim-secret")
    assert config.campaign.auth.scope
    sample, recipient = config.routes
    assert (sample.schema, sample.method, sample.key_spec) == (
        "dem:sampleTableStg",
        "Ingest",
        "@id",
    )
    assert [(f.attribute, f.length, f.required) for f in sample.fields] == [
        ("id", 64, True),
        ("testcol1", 255, False),
        ("testcol2", 255, False),
    ]
    assert (recipient.schema, recipient.method, recipient.operation, recipient.key_spec) == (
        "nms:recipient",
        "WriteCollection",
        "insertOrUpdate",
        "@email",
    )


def test_example_documents_every_key_with_a_comment() -> None:
    """Each operator-facing key appears in example.toml, right after a comment line."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for dotted in DOCUMENTED_KEYS:
        name = dotted.rsplit(".", 1)[-1]
        # `key = ...` (maybe commented out), a `[table]` header, or a `#   key   what` line
        # of the table documenting the [[routes]] keys.
        pattern = re.compile(
            rf"^\s*(#\s*)?{re.escape(name)}\s*=|^\[{re.escape(dotted)}\]|^#\s+{re.escape(name)}\s{{2,}}"
        )
        hits = [i for i, line in enumerate(lines) if pattern.search(line)]
        assert hits, f"{dotted} is not in example.toml"
        assert any(_commented(lines, i) for i in hits), f"{dotted} has no comment"


def _commented(lines: list[str], index: int) -> bool:
    """A comment documents the line: above its group of keys, or under a table header."""
    if lines[index].startswith("[") and lines[index + 1].lstrip().startswith("#"):
        return True
    while index >= 0:
        line = lines[index].strip()
        if line.startswith("#"):
            return True
        if not line or line.startswith("["):
            return False
        index -= 1
    return False


def test_local_config_is_the_make_run_setup() -> None:
    """config/local.toml: intake on 127.0.0.1:8080, simulator on :8081, queue under ./var/."""
    config = load(LOCAL)
    assert config.http.listen == "127.0.0.1:8080"
    assert config.campaign.url == "http://127.0.0.1:8081"
    auth = config.campaign.auth
    assert (auth.mode, auth.ims_url) == ("ims", "http://127.0.0.1:8081/ims/token/v3")
    assert (auth.client_id, auth.client_secret) == ("sim-client", Secret("sim-secret"))
    assert config.queue.path.parts[0] == "var"
    assert [r.name for r in config.routes] == ["sample", "recipient"]


def test_defaults_fill_every_section_not_written() -> None:
    """A minimal file gets the documented defaults everywhere else."""
    config = from_mapping(minimal())
    assert config.campaign.tps_limit == 20
    assert config.campaign.retry_after_cap_s == 60
    assert config.campaign.auth.ims_url == "https://ims-na1.adobelogin.com/ims/token/v3"
    assert config.campaign.auth.refresh_margin_s == 300
    assert config.campaign.tls.verify is True and config.campaign.tls.ca_bundle is None
    assert dict(config.campaign.wire.urns) == dict(DEFAULT_URNS)
    queue = config.queue
    assert (str(queue.path), queue.max_bytes, queue.synchronous, queue.commit_window_ms) == (
        "var/queue.sqlite3",
        1 << 30,
        "FULL",
        40.0,
    )
    assert (config.http.listen, config.http.token, config.http.max_body_bytes) == (
        "127.0.0.1:8080",
        None,
        16 << 20,
    )
    assert config.admin.listen == "127.0.0.1:9090"
    assert (config.batch.max_records, config.batch.max_bytes, config.batch.linger_ms) == (
        500,
        4 << 20,
        200,
    )
    assert (config.sender.max_in_flight, config.sender.timeout_s) == (32, 30)
    assert (config.retry.max_age_s, config.retry.initial_backoff_s) == (3 * 3600, 0.5)
    assert config.retry.max_backoff_s == 10
    assert config.daemon.shutdown_timeout_s == 30
    assert (config.log.level, config.log.format) == ("INFO", "auto")
    assert config.intake.invalid_xml_chars == "reject"
    assert config.routes[0].collection == "auto"
    assert config.sources == ()


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    """One load lists all faults, each as `path: message`, unknown keys with a suggestion."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["campaign"]["tps_limt"] = 5
    data["campaign"]["url"] = "ftp://x"
    data["queue"]["max_bytes"] = "lots"
    data["retry"]["max_age"] = "3 days"
    data["http"]["listen"] = "localhost"
    data["log"]["level"] = "LOUD"
    data["routes"].append(dict(data["routes"][1]))
    data["routes"][2]["fields"] = {
        "email": {"type": "strng"},
        "bad name": {},
        "_key": {},
        "age": {"type": "long", "length": 3, "default": "old"},
    }
    data["routes"][2]["schema"] = "recipient"
    data["routes"][2]["key"] = ["mail"]
    problems = problems_of(data)
    expected = [
        "campaign.tps_limt: unknown key (did you mean 'tps_limit'?)",
        "campaign.url: expected an http:// or https:// URL, got 'ftp://x'",
        "queue.max_bytes: expected a size in bytes or a string like '512MiB', got string 'lots'",
        "retry.max_age: expected seconds or a duration like '3h', '90m', '45s', got string "
        "'3 days'",
        "http.listen: expected host:port, got 'localhost'",
        "log.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'",
        "routes[2].fields.email.type: unknown type 'strng' (did you mean 'string'?)",
        "routes[2].fields.bad name: 'bad name' is not a valid XML name",
        "routes[2].fields._key: is reserved for Campaign's own use",
        "routes[2].fields.age.length: applies to string and memo, not long",
        "routes[2].fields.age.default: 'old' is not an integer (long)",
        "routes[2].schema: 'recipient' is not a schema id of the form 'namespace:name'",
        "routes[2].key: 'mail' is not one of this route's fields",
        "routes[2].name: 'recipient' is already the name of routes[1]",
    ]
    for line in expected:
        assert line in problems
    assert len(problems) == len(expected)


def test_missing_required_keys_and_auth_needs_are_reported() -> None:
    """No url, no routes, no password: each is named; ims mode wants client id and secret."""
    problems = problems_of({"campaign": {"auth": {"login": "x"}}})
    assert "campaign.url: is required" in problems
    assert any(
        p.startswith("campaign.auth.password: is required for mode 'session'") for p in problems
    )
    assert "routes: at least one [[routes]] block is needed" in problems
    ims = problems_of(minimal(campaign__auth={"mode": "ims"}))
    assert "campaign.auth.client_id: is required for mode 'ims'" in ims
    assert any(p.startswith("campaign.auth.client_secret: is required") for p in ims)


def test_budget_keys_default_to_a_local_budget() -> None:
    """Without [campaign.budget] or [campaign.limits], the budget is this instance's own
    and no method has a limit of its own."""
    campaign = from_mapping(minimal()).campaign
    assert (campaign.budget.redis_url, campaign.budget.name) == ("", "default")
    assert campaign.limits == ()
    assert not campaign.auto_limit


def test_shared_budget_per_method_limits_and_auto_are_read() -> None:
    """A Redis URL and name, method limits and tps_limit = "auto" are read as written."""
    config = from_mapping(
        minimal(
            campaign__tps_limit="auto",
            campaign__budget={"redis_url": "redis://127.0.0.1:6379/3", "name": "tenant-a"},
            campaign__limits={"WriteCollection": 5, "Ingest": 12.5},
        )
    )
    campaign = config.campaign
    assert campaign.auto_limit and campaign.tps_limit == 5.0
    assert (campaign.budget.redis_url, campaign.budget.name) == (
        "redis://127.0.0.1:6379/3",
        "tenant-a",
    )
    assert campaign.limits == (("Ingest", 12.5), ("WriteCollection", 5.0))


def test_a_redis_url_redis_py_cannot_read_is_refused_and_its_password_kept_secret() -> None:
    """A Redis URL with a port that is no number is reported at load (not at start, by a
    ValueError), without echoing it; a good one's password is masked in log lines and
    left out of the config's repr."""
    problems = problems_of(minimal(campaign__budget={"redis_url": "redis://:s3cret-pw@h:x/0"}))
    assert problems == [
        "campaign.budget.redis_url: not a Redis URL: check its port, database number and "
        "query options"
    ]
    url = "redis://writer:an0ther-s3cret@127.0.0.1:6379/2"
    config = from_mapping(minimal(campaign__budget={"redis_url": url}))
    assert config.campaign.budget.redis_url == url
    assert "an0ther-s3cret" not in repr(config)
    assert "an0ther-s3cret" not in redact(f"connecting to {url}")


def test_budget_and_limit_mistakes_name_their_key() -> None:
    """A bad tps_limit word, a non-Redis URL, a bad name, an unknown method, a limit that is
    not a positive number and an unknown budget key are each reported with their path; the
    URL itself is not echoed (it may carry a password)."""
    problems = problems_of(
        minimal(
            campaign__tps_limit="fast",
            campaign__budget={"redis_url": "http://u:pw@x", "name": "a b", "ttl": 3},
            campaign__limits={"Ingets": 5, "Write": 0, "Ingest": "many"},
        )
    )
    assert problems == [
        'campaign.tps_limit: expected a number of calls per second or "auto"',
        "campaign.budget.redis_url: expected a redis://, rediss:// or unix:// URL, got scheme "
        "'http'",
        "campaign.budget.name: expected 1-64 letters, digits, '_', '.' or '-'",
        "campaign.budget.ttl: unknown key",
        "campaign.limits.Ingest: expected a number, got string 'many'",
        "campaign.limits.Ingets: unknown method; known: " + ", ".join(sorted(METHODS)),
        "campaign.limits.Write: must be greater than 0, got 0",
    ]
    assert not [p for p in problems if "pw" in p]


def test_headroom_defaults_to_98_percent_and_is_bounded() -> None:
    """campaign.headroom: 0.98 unless set, any share from 0.5 to 1, and it reaches the
    throttle the daemon builds (the pace is tps_limit x headroom)."""
    assert from_mapping(minimal()).campaign.headroom == 0.98
    config = from_mapping(minimal(campaign__headroom=0.99))
    assert config.campaign.headroom == 0.99
    assert problems_of(minimal(campaign__headroom=1.2)) == [
        "campaign.headroom: must be at most 1, got 1.2"
    ]
    assert problems_of(minimal(campaign__headroom=0.2)) == [
        "campaign.headroom: must be at least 0.5, got 0.2"
    ]


def test_fault_judgement_keys_have_defaults_and_bounds() -> None:
    """retry.record_failures and friends default sensibly and refuse nonsense, by path."""
    retry = from_mapping(minimal()).retry
    assert (retry.record_failures, retry.suspect_after) == (3, 4)
    assert (retry.fault_pause_initial_s, retry.fault_pause_max_s) == (1.0, 60.0)
    problems = problems_of(
        minimal(retry={"record_failures": 0, "fault_pause_initial_s": 9, "fault_pause_max_s": 2})
    )
    assert any(p.startswith("retry.record_failures:") for p in problems)
    assert any(p.startswith("retry.fault_pause_max_s: must not be shorter") for p in problems)


@pytest.mark.parametrize("mode", ["ims", "bearer_logon"])
def test_scope_is_required_for_ims_modes(mode: str) -> None:
    """IMS needs a scope in every token request: a config without one names the key."""
    auth = {"mode": mode, "client_id": "c", "client_secret": "s"}
    problems = problems_of(minimal(campaign__auth=auth))
    assert [p for p in problems if p.startswith("campaign.auth.scope: is required")] == problems
    assert from_mapping(minimal(campaign__auth={**auth, "scope": "openid"}))


def test_set_overrides_any_key_with_toml_literals_or_text() -> None:
    """--set parses numbers, booleans and arrays as TOML and anything else as a string."""
    config = from_mapping(
        minimal(),
        [
            "campaign.tps_limit=35.5",
            "campaign.tls.verify=false",
            "http.listen=127.0.0.1:0",
            "log.level=debug",
            "retry.max_age=90m",
            "routes[0].fields.id.length=12",
            'routes[0].key=["id"]',
            "campaign.wire.urns.Ingest=xtk:session",
            'queue.path="/data/q.sqlite3"',
        ],
    )
    assert config.campaign.tps_limit == 35.5
    assert config.campaign.tls.verify is False
    assert config.http.listen == "127.0.0.1:0"
    assert config.log.level == "DEBUG"
    assert config.retry.max_age_s == 5400
    assert config.routes[0].fields[0].length == 12
    assert config.routes[0].key_spec == "@id"
    assert config.campaign.wire.urn("Ingest") == "xtk:session"
    assert str(config.queue.path) == "/data/q.sqlite3"


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("campaign.auth.password=hunter22", "--set campaign.auth.password: secrets cannot be set"),
        ("http.token=abcd1234", "--set http.token: secrets cannot be set"),
        ("campaign.auth.client_secret=x", "--set campaign.auth.client_secret: secrets cannot"),
        ("campaign.tps_limit", "--set campaign.tps_limit: expected section.key=value"),
        ("routes[3].name=x", "--set routes[3].name: there is no element [3]"),
        ("a..b=1", "--set a..b: not a key path"),
        ("campaign.nope=1", "campaign.nope: unknown key"),
    ],
)
def test_set_refuses_secrets_and_bad_paths(override: str, problem: str) -> None:
    """Secrets never come from the command line; a bad --set is a named problem."""
    problems = problems_of(minimal(), [override])
    assert any(p.startswith(problem) for p in problems), problems
    assert all("hunter22" not in p and "abcd1234" not in p for p in problems)


def test_environment_overrides_any_key_and_set_overrides_the_environment(
    tmp_path: Path,
) -> None:
    """CAMPAIGN_WRITER__SECTION__KEY sets any key (TOML literal or text), matching the
    file's spelling of a key (userId); --set wins."""
    path = tmp_path / "writer.toml"
    path.write_text(MINIMAL + "fields.userId = {}\n", encoding="utf-8")
    environ = {
        "CAMPAIGN_WRITER__BATCH__LINGER_MS": "100",
        "CAMPAIGN_WRITER__CAMPAIGN__TLS__VERIFY": "false",
        "CAMPAIGN_WRITER__HTTP__LISTEN": "0.0.0.0:8080",
        "CAMPAIGN_WRITER__QUEUE__MAX_BYTES": "512MiB",
        "CAMPAIGN_WRITER__ROUTES__0__KEY": '["id"]',
        "CAMPAIGN_WRITER__ROUTES__0__FIELDS__USERID__LENGTH": "12",
        "campaign_writer__log__level": "debug",
        "CAMPAIGN_WRITER__SENDER__MAX_IN_FLIGHT": "8",
        "UNRELATED": "1",
    }
    config = load(path, ["sender.max_in_flight=4"], environ=environ)
    assert config.batch.linger_ms == 100
    assert config.campaign.tls.verify is False
    assert config.http.listen == "0.0.0.0:8080"
    assert config.queue.max_bytes == 512 * 1024**2
    assert config.routes[0].key_spec == "@id"
    assert {f.attribute: f.length for f in config.routes[0].fields}["userId"] == 12
    assert config.log.level == "DEBUG"
    assert config.sender.max_in_flight == 4
    assert load(path, environ={}).batch.linger_ms == 200


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (
            "CAMPAIGN_WRITER__BATCH__LINGR_MS",
            "batch.lingr_ms: unknown key (did you mean 'linger_ms'?)"
            " (from env CAMPAIGN_WRITER__BATCH__LINGR_MS)",
        ),
        (
            "CAMPAIGN_WRITER__CAMPAIGN__AUTH__PASSWORD",
            "CAMPAIGN_WRITER__CAMPAIGN__AUTH__PASSWORD: secrets are not read from",
        ),
        ("CAMPAIGN_WRITER__HTTP__TOKEN", "CAMPAIGN_WRITER__HTTP__TOKEN: secrets are not read"),
        ("CAMPAIGN_WRITER__BATCH___X", "CAMPAIGN_WRITER__BATCH___X: not a key path"),
        ("CAMPAIGN_WRITER__ROUTES__5__NAME", "routes[5].name: there is no element [5]"),
        ("CAMPAIGN_WRITER__SENDER__TIMEOUT_S", "sender.timeout_s: expected seconds"),
    ],
)
def test_environment_overrides_are_checked_like_the_file(name: str, problem: str) -> None:
    """A bad variable is a named problem; a secret's value is never echoed."""
    with pytest.raises(ConfigError) as caught:
        from_mapping(minimal(), environ={name: "hunter22-x"})
    problems = caught.value.problems
    assert any(p.startswith(problem) for p in problems), problems
    secret = name.endswith(("PASSWORD", "TOKEN"))
    assert not secret or all("hunter22" not in p for p in problems)


def test_secret_files_can_be_named_by_the_environment(tmp_path: Path) -> None:
    """A secret's *_file form comes from a variable, as a systemd credential would."""
    secret = tmp_path / "password"
    secret.write_text("from-credential-789\n", encoding="utf-8")
    data = minimal(campaign__auth={"login": "ops"})
    environ = {"CAMPAIGN_WRITER__CAMPAIGN__AUTH__PASSWORD_FILE": str(secret)}
    config = from_mapping(data, environ=environ)
    assert config.campaign.auth.password == Secret("from-credential-789")


def test_commit_window_is_bounded() -> None:
    """0 turns the window off; it may not be negative or longer than a second."""
    assert from_mapping(minimal(), ["queue.commit_window_ms=0"]).queue.commit_window_ms == 0
    assert from_mapping(minimal(), ["queue.commit_window_ms=2.5"]).queue.commit_window_ms == 2.5
    assert problems_of(minimal(), ["queue.commit_window_ms=-1"]) == [
        "queue.commit_window_ms: must be at least 0, got -1"
    ]
    assert problems_of(minimal(), ["queue.commit_window_ms=1001"]) == [
        "queue.commit_window_ms: must be at most 1000, got 1001"
    ]


def test_secrets_come_from_env_or_file_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """password_env and token_file fill Secrets; repr and errors never carry the values."""
    monkeypatch.setenv("CW_TEST_PASSWORD", "pw-from-env-123")
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file-456\n", encoding="utf-8")
    data = minimal(campaign__auth={"login": "ops", "password_env": "CW_TEST_PASSWORD"})
    data["http"] = {"token_file": str(token_file)}
    config = from_mapping(data)
    assert config.campaign.auth.password == Secret("pw-from-env-123")
    assert config.http.token is not None and config.http.token.reveal() == "tok-from-file-456"
    shown = repr(config)
    assert "pw-from-env-123" not in shown and "tok-from-file-456" not in shown
    bad = minimal(campaign__auth={"login": "x", "password": "inline-999", "password_env": "X"})
    bad["http"] = {"token_env": "CW_TEST_UNSET_VARIABLE", "token_file": str(tmp_path / "none")}
    problems = problems_of(bad)
    assert "campaign.auth.password: give only one of password, password_env" in problems
    assert "http.token: give only one of token_env, token_file" in problems
    assert all("inline-999" not in p for p in problems)
    alone = minimal()
    alone["http"] = {"token_env": "CW_TEST_UNSET_VARIABLE"}
    assert problems_of(alone) == [
        "http.token_env: environment variable CW_TEST_UNSET_VARIABLE is not set or empty"
    ]


def test_wire_urns_and_tls_bundle_are_checked(tmp_path: Path) -> None:
    """URN spellings and method names are checked; the CA bundle must exist."""
    data = minimal(campaign__wire={"urns": {"Ingest": "xtk:nope", "Frobnicate": "xtk:session"}})
    data["campaign"]["tls"] = {"ca_bundle": str(tmp_path / "missing.pem")}
    problems = problems_of(data)
    assert any(p.startswith("campaign.wire.urns.Ingest: URN must be one of") for p in problems)
    assert any(p.startswith("campaign.wire.urns.Frobnicate: unknown method") for p in problems)
    assert f"campaign.tls.ca_bundle: no such file: {tmp_path / 'missing.pem'}" in problems


def test_routes_sharing_a_lane_must_agree() -> None:
    """Two routes to one schema and method must use the same key and collection mode."""
    data = minimal()
    data["routes"].append(
        {
            "name": "other",
            "schema": "dem:sampleTableStg",
            "method": "Ingest",
            "collection": "never",
            "key": ["id"],
            "fields": {"id": {}},
        }
    )
    problems = problems_of(data)
    assert "routes[1].collection: differs from routes[0] on the same schema and method" in problems
    assert "routes[1].key: differs from routes[0] on the same schema and method" in problems


def test_sources_are_checked_by_their_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """[[sources]] need a known kind and a unique name; the kind's hook checks the rest."""
    seen: list[tuple[dict[str, Any], str]] = []

    def parse(options: Any, path: str, problems: list[str]) -> str:
        seen.append((dict(options), path))
        if "queue" not in options:
            problems.append(f"{path}.queue: is required")
        return "parsed"

    monkeypatch.setitem(
        sources._KINDS,
        "file",
        sources.SourceKind(create=lambda *a: None, parse_options=parse),  # type: ignore[arg-type,return-value]
    )
    data = minimal()
    data["sources"] = [
        {"kind": "file", "name": "one", "queue": "q"},
        {"kind": "file", "name": "one"},
        {"kind": "carrier-pigeon", "name": "http"},
    ]
    problems = problems_of(data)
    assert seen == [({"queue": "q"}, "sources[0]"), ({}, "sources[1]")]
    assert "sources[1].name: 'one' is already the name of sources[0]" in problems
    assert "sources[1].queue: is required" in problems
    assert any(p.startswith("sources[2].kind: must be one of 'rabbitmq'") for p in problems)
    assert "sources[2].name: 'http' is the HTTP intake's own name" in problems
    data["sources"] = data["sources"][:1]
    config: Config = from_mapping(data)
    assert (config.sources[0].name, config.sources[0].settings) == ("one", "parsed")
    assert dict(config.sources[0].options) == {"queue": "q"}


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    """A missing file or broken TOML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[campaign\nurl = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load(broken)


@pytest.mark.parametrize(
    ("text", "seconds"), [(45, 45.0), ("45s", 45.0), ("90m", 5400.0), ("3h", 10800.0),
                          ("1h30m", 5400.0), ("250ms", 0.25)]
)  # fmt: skip
def test_durations_take_seconds_or_units(text: object, seconds: float) -> None:
    """retry.max_age and friends accept plain seconds or 'h', 'm', 's', 'ms' units."""
    assert parse_duration(text) == seconds


def test_sizes_and_listen_addresses_parse() -> None:
    """Sizes take binary and decimal units; listen takes host:port and [v6]:port."""
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("16 MB") == 16_000_000
    assert parse_size(4096) == 4096
    assert split_listen("[::1]:8080") == ("::1", 8080)
    assert split_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    with pytest.raises(ValueError, match="brackets"):
        split_listen("::1:8080")


def test_campaign_and_ims_urls_with_credentials_are_refused_without_echoing_them() -> None:
    """A campaign.url or ims_url carrying user:password@ is refused at load, naming the key
    and where credentials belong, and the password never appears in the message (URLs are
    printed by validate and logged at start)."""
    problems = problems_of(
        minimal(
            campaign__url="https://admin:pa55-in-url@acme.campaign.adobe.com",
            campaign__auth={
                "mode": "ims",
                "client_id": "c",
                "client_secret": "s",
                "scope": "openid",
                "ims_url": "https://u:ims-pa55@ims.example.com/token",
            },
        )
    )
    assert any(p.startswith("campaign.url: a URL with credentials") for p in problems)
    assert any(p.startswith("campaign.auth.ims_url: a URL with credentials") for p in problems)
    assert not [p for p in problems if "pa55" in p]
