"""Routing and mapping events to staging records: matches, paths, keys, operations, errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from campaign_writer.config import Config, from_mapping, load
from campaign_writer.errors import ConfigError, RecordError
from campaign_writer.router import Router
from tests.support.documents import build_entity, decode_record

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example.toml"

BASE = """
[campaign]
url = "http://127.0.0.1:8081"
[campaign.auth]
login = "admin"
password = "admin"
"""


def config_with(routes: str, extra: str = "") -> Config:
    return from_mapping(tomllib.loads(BASE + extra + routes))


def record_of(router: Router, event: dict[str, Any]) -> tuple[str, str | None, Any]:
    routed = router.route(event)
    record = decode_record(routed.record)
    return routed.lane, routed.key, record


@pytest.fixture(scope="module")
def example() -> Router:
    return Router.from_config(load(EXAMPLE))


def test_example_routes_sample_events_to_staging_by_ingest(example: Router) -> None:
    """The issue's sample event goes to dem:sampleTableStg by Ingest with _key @id."""
    lane, key, record = record_of(
        example, {"type": "sample", "id": "A1", "testcol1": "x", "testcol2": "y", "extra": 1}
    )
    assert lane == "dem:sampleTableStg#Ingest"
    assert key == "A1"
    assert record.attrs == {"id": "A1", "testcol1": "x", "testcol2": "y"}
    assert record.key == "@id"
    assert record.operation is None
    assert build_entity("dem:sampleTableStg", record) == (
        '<sampleTableStg xtkschema="dem:sampleTableStg" _key="@id" id="A1" testcol1="x" '
        'testcol2="y"/>'
    )


def test_example_routes_recipients_by_writecollection_insert_or_update(example: Router) -> None:
    """The issue's recipient event goes to nms:recipient, insertOrUpdate keyed on @email."""
    lane, key, record = record_of(
        example, {"type": "recipient", "email": "a@b.c", "firstName": "Ann", "lastName": "Lee"}
    )
    assert lane == "nms:recipient#WriteCollection"
    assert key == "a@b.c"
    assert record.operation == "insertOrUpdate"
    assert record.key == "@email"
    assert record.attrs == {"email": "a@b.c", "firstName": "Ann", "lastName": "Lee"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "sample"}, "id: is required"),
        ({"type": "sample", "id": None}, "id: is required, got null"),
        ({"type": "sample", "id": ""}, "id: is required and must not be empty"),
        ({"type": "sample", "id": "x" * 65}, "id: is 65 characters long; string(64)"),
        ({"type": "sample", "id": "1", "testcol1": [1]}, "testcol1: expected a string, got array"),
        ({"type": "order", "id": "1"}, "type: 'order' matches no route"),
        ({"id": "1"}, "type: is missing; routes match it against 'sample', 'recipient'"),
        ({"type": 7}, "type: number 7 matches no route"),
        ({"type": ["sample"]}, "type: an array matches no route"),
        ({"type": "sample", "id": "a\u0000b"}, "id: character U+0000 at position 1"),
    ],
)
def test_rejections_name_the_field_and_what_was_wrong(
    example: Router, event: dict[str, Any], message: str
) -> None:
    """Every refusal says which field and what is wrong with it."""
    with pytest.raises(RecordError) as caught:
        example.route(event)
    assert message in str(caught.value)


def test_fields_come_from_dotted_paths_with_types_defaults_and_nulls() -> None:
    """Dotted paths reach nested values; defaults fill gaps; null clears; absent is left out."""
    router = Router.from_config(
        config_with("""
[[routes]]
name = "profiles"
match = { kind = "profile", version = 2 }
schema = "acme:profileStg"
method = "IngestExt"
key = ["account", "region"]
[routes.fields]
account = { path = "user.account.id", type = "int64" }
region = { path = "user.region", default = "eu" }
points = { path = "stats.points", type = "long", default = 0 }
vip = { path = "flags.vip", type = "boolean" }
seen = { path = "seenAt", type = "datetime" }
note = { type = "memo" }
""")
    )
    lane, key, record = record_of(
        router,
        {
            "kind": "profile",
            "version": 2,
            "user": {"account": {"id": 12}},
            "stats": {"points": None},
            "flags": {"vip": "yes"},
            "seenAt": "2024-05-01T12:00:00+02:00",
            "note": None,
        },
    )
    assert lane == "acme:profileStg#IngestExt"
    assert key == "12\x1feu"
    assert record.key == "@account, @region"
    assert record.attrs == {
        "account": "12",
        "region": "eu",
        "points": "0",
        "vip": "true",
        "seen": "2024-05-01 10:00:00.000Z",
        "note": "",
    }
    with pytest.raises(
        RecordError, match=r"matches no route \(routes take profiles: kind='profile', version=2\)"
    ):
        router.route({"kind": "profile", "version": 2.0, "user": {"account": {"id": 1}}})
    with pytest.raises(RecordError, match=r"user\.account\.id: is required"):
        router.route({"kind": "profile", "version": 2, "user": {"account": 5}})


def test_first_matching_route_wins_and_empty_match_takes_the_rest() -> None:
    """Routes are tried in order; a route without match is a catch-all."""
    router = Router.from_config(
        config_with("""
[[routes]]
name = "vip"
match = { type = "sample", vip = true }
schema = "dem:vipStg"
method = "Ingest"
fields.id = {}
[[routes]]
name = "rest"
schema = "dem:sampleTableStg"
method = "Ingest"
fields.id = {}
""")
    )
    assert router.route({"type": "sample", "vip": True, "id": "1"}).route == "vip"
    assert router.route({"type": "sample", "vip": 1, "id": "1"}).route == "rest"
    assert router.route({"anything": 1, "id": "2"}).route == "rest"


def test_operation_field_sets_delete_which_carries_only_the_key() -> None:
    """An IngestExt delete taken from the event sends the key fields alone."""
    router = Router.from_config(
        config_with("""
[[routes]]
name = "sample"
match = { type = "sample" }
schema = "dem:sampleTableStg"
method = "IngestExt"
key = ["id"]
operation_field = "meta.op"
fields.id = { length = 64 }
fields.testcol1 = { required = true }
""")
    )
    _, key, record = record_of(router, {"type": "sample", "id": "9", "meta": {"op": "delete"}})
    assert (key, record.operation, record.attrs) == ("9", "delete", {"id": "9"})
    _, _, upsert = record_of(router, {"type": "sample", "id": "9", "testcol1": "v"})
    assert upsert.operation is None
    assert upsert.attrs == {"id": "9", "testcol1": "v"}
    with pytest.raises(RecordError, match=r"meta\.op: 'drop' is not an operation"):
        router.route({"type": "sample", "id": "9", "meta": {"op": "drop"}})


def test_an_enumerated_field_refuses_other_values_at_intake() -> None:
    """enum = [...] lets the listed values (and a clearing null) through and refuses the rest,
    naming the field and the allowed values; numbers compare as Campaign text."""
    router = Router.from_config(
        config_with("""
[[routes]]
name = "shop"
schema = "acme:eventStg"
method = "IngestExt"
key = ["id"]
fields.id = {}
fields.channel = { length = 8, enum = ["web", "store"] }
fields.gender = { type = "byte", enum = [0, 1, 2] }
""")
    )
    _, _, record = record_of(router, {"id": "1", "channel": "web", "gender": "2"})
    assert record.attrs == {"id": "1", "channel": "web", "gender": "2"}
    _, _, cleared = record_of(router, {"id": "1", "channel": None})
    assert cleared.attrs == {"id": "1", "channel": ""}
    with pytest.raises(RecordError, match=r"channel: 'mail' is not one of the allowed values"):
        router.route({"id": "1", "channel": "mail"})
    with pytest.raises(RecordError, match=r"gender: '7' is not one of the allowed values \('0'"):
        router.route({"id": "1", "gender": 7})


def test_enum_values_and_defaults_are_checked_in_the_config() -> None:
    """An enum value the field's type cannot hold, or a default outside the enum, is a
    config problem with its key path."""
    with pytest.raises(ConfigError) as caught:
        config_with("""
[[routes]]
name = "shop"
schema = "acme:eventStg"
method = "IngestExt"
key = ["id"]
fields.id = {}
fields.channel = { length = 4, enum = ["web", "storefront"], default = "app" }
fields.items = { type = "short", enum = "1" }
""")
    assert sorted(caught.value.problems) == [
        "routes[0].fields.channel.default: 'app' is not one of enum",
        "routes[0].fields.channel.enum[1]: is 10 characters long; string(4) holds at most 4",
        "routes[0].fields.items.enum: expected a non-empty array of values, got string '1'",
    ]


def test_an_empty_enum_is_named_as_such() -> None:
    """enum = [] would refuse every value: a config problem that says the array is empty."""
    with pytest.raises(ConfigError) as caught:
        config_with("""
[[routes]]
name = "shop"
schema = "acme:eventStg"
method = "Ingest"
fields.channel = { enum = [] }
""")
    assert caught.value.problems == [
        "routes[0].fields.channel.enum: expected a non-empty array of values, got an empty array"
    ]


def test_a_preset_is_a_route_overridden_key_by_key() -> None:
    """preset = "recipient" gives schema, method, key and fields; the route's own keys win,
    a field's settings are overridden one by one, and new fields are added."""
    (route,) = config_with("""
[[routes]]
name = "people"
preset = "recipient"
match = { type = "person" }
fields.email = { path = "contact.email" }
fields.points = { type = "long" }
""").routes
    assert (route.schema, route.method, route.key) == ("nms:recipientStg", "IngestExt", ("email",))
    fields = {f.attribute: f for f in route.fields}
    assert (fields["email"].path, fields["email"].length, fields["email"].required) == (
        "contact.email",
        128,
        True,
    )
    assert "birthDate" in fields and fields["points"].type == "long"
    (unsubscribe,) = config_with("""
[[routes]]
name = "unsubscribe"
preset = "subscription"
operation = "delete"
""").routes
    assert (unsubscribe.schema, unsubscribe.key, unsubscribe.operation) == (
        "nms:subscriptionRcpStg",
        ("recipient-id", "service-id"),
        "delete",
    )
    with pytest.raises(ConfigError, match=r"routes\[0\]\.preset: must be one of"):
        config_with('[[routes]]\nname = "x"\npreset = "recipients"\n')


def test_strip_policy_removes_forbidden_characters_instead_of_refusing() -> None:
    """intake.invalid_xml_chars = 'strip' keeps the event and drops the bad characters."""
    routes = """
[[routes]]
name = "s"
schema = "dem:sampleTableStg"
method = "Ingest"
fields.id = {}
"""
    router = Router.from_config(config_with(routes, '[intake]\ninvalid_xml_chars = "strip"\n'))
    assert decode_record(router.route({"id": "a\x0bb\ufffe"}).record).attrs == {"id": "ab"}


def test_route_lines_keeps_good_lines_around_broken_ones(example: Router) -> None:
    """In a batch of raw lines, each bad line is rejected with its index; the rest pass."""
    lines = [
        b'{"type":"sample","id":"1"}',
        b"{not json",
        b"",
        b'{"type":"sample"}',
        b"[1,2]",
        b'{"type":"sample","id":"2"}\r',
        b"\xff\xfe",
    ]
    routing = example.route_lines(lines, source="test", created_at=5.0)
    assert [item.key for item in routing.items] == ["1", "2"]
    assert [item.event for item in routing.items] == [lines[0], lines[5]]
    assert {item.source for item in routing.items} == {"test"}
    rejected = dict(routing.rejected)
    assert sorted(rejected) == [1, 3, 4, 6]
    assert rejected[1].startswith("invalid JSON")
    assert rejected[3] == "id: is required"
    assert rejected[4] == "an event must be a JSON object, got array"
    assert "UTF-8" in rejected[6]
    strict = example.route_lines([b" "], source="broker", created_at=0, skip_blank=False)
    assert strict.rejected == [(0, "empty event")]


def test_route_events_keeps_each_original_event_as_json(example: Router) -> None:
    """Decoded events (a JSON array) are re-encoded as their own event bytes."""
    events = [{"type": "sample", "id": "é"}, 3]
    routing = example.route_events(events, source="http", created_at=1.0)
    assert orjson.loads(routing.items[0].event) == events[0]
    assert routing.rejected == [(1, "an event must be a JSON object, got number")]


@given(
    st.text(min_size=1, max_size=64).filter(lambda s: s.strip()),
    st.text(max_size=80),
)
def test_any_accepted_value_reaches_the_document_intact(identifier: str, text: str) -> None:
    """Whatever the router accepts parses back from the staging document unchanged."""
    router = Router.from_config(load(EXAMPLE))
    try:
        routed = router.route({"type": "sample", "id": identifier, "testcol1": text})
    except RecordError as exc:
        assert exc.field in {"id", "testcol1"}
        return
    xml = build_entity("dem:sampleTableStg", decode_record(routed.record))
    element = etree.fromstring(xml.encode("utf-8"))
    assert element.get("id") == identifier
    assert element.get("testcol1") == text


# --- generated fillers against the rules written plainly ----------------------------

WIDE_ROUTE = """
[[routes]]
name = "wide"
match = { type = "w" }
schema = "acme:wideStg"
method = "IngestExt"
key = ["id", "region"]
operation_field = "op"
[routes.fields]
id = { length = 8 }
region = { path = "where.region", default = "eu" }
label = {}
note = { type = "memo", length = 12 }
plain = { type = "memo" }
count = { type = "long", default = 0 }
flag = { path = "a.b.flag", type = "boolean" }
must = { required = true, default = "x" }
"""


def plain_map(router: Router, event: dict[str, Any]) -> tuple[str | None, str]:
    """The field rules of the module docstring, one step at a time, for comparison."""
    from campaign_writer.campaign.documents import render_fragment
    from campaign_writer.campaign.xtktypes import cast

    config = router.routes[0]
    operation = event.get("op") or None
    attrs: dict[str, str] = {}
    specs = {
        "id": ("string", 8, "id"),
        "region": ("string", None, "where.region"),
        "label": ("string", None, "label"),
        "note": ("memo", 12, "note"),
        "plain": ("memo", None, "plain"),
        "count": ("long", None, "count"),
        "flag": ("boolean", None, "a.b.flag"),
        "must": ("string", None, "must"),
    }
    defaults = {"region": "eu", "count": "0", "must": "x"}
    required = {"id", "region", "must"}
    for attribute, (type_name, length, path) in specs.items():
        if operation == "delete" and attribute not in ("id", "region"):
            continue
        node: Any = event
        for step in path.split("."):
            node = node.get(step, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError or node is None:
            if attribute in defaults:
                attrs[attribute] = defaults[attribute]
            elif attribute in required:
                raise RecordError("is required" + (", got null" if node is None else ""), path)
            elif node is None:
                attrs[attribute] = ""
            continue
        text = cast(type_name, node, path, length)
        if not text and attribute in required:
            raise RecordError("is required and must not be empty", path)
        attrs[attribute] = text
    assert config.key == ("id", "region")
    key = attrs["id"] + "\x1f" + attrs["region"]
    return key, render_fragment(attrs, operation, "@id, @region")


VALUES = st.one_of(
    st.none(),
    st.text(max_size=14),
    st.sampled_from(["", "a&b", 'q"', "<x>", "tab\there", "\x00", "\ufffe", "caf\u00e9"]),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


TEXTS = st.one_of(
    st.text(max_size=14), st.sampled_from(["a&b", 'q"', "<x>", "tab\there", "caf\u00e9", "ok"])
)


def valid_or_not(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly values the field takes, so that accepted records are compared too."""
    return st.one_of(good, good, good, VALUES)


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        {"type": st.just("w")},
        optional={
            "id": valid_or_not(TEXTS),
            "where": st.one_of(
                VALUES, st.fixed_dictionaries({}, optional={"region": valid_or_not(TEXTS)})
            ),
            "label": valid_or_not(TEXTS),
            "note": valid_or_not(TEXTS),
            "plain": valid_or_not(TEXTS),
            "count": valid_or_not(st.integers(min_value=-(2**31), max_value=2**31 - 1)),
            "a": st.fixed_dictionaries(
                {}, optional={"b": st.fixed_dictionaries({}, optional={"flag": VALUES})}
            ),
            "must": valid_or_not(TEXTS),
            "op": st.sampled_from(["delete", "update", "insert"]),
        },
    )
)
def test_generated_filler_follows_the_field_rules(event: dict[str, Any]) -> None:
    """Every field kind (text with and without a limit, typed, nested, default, required,
    optional, a compound key, a delete) maps as the rules say, errors included."""
    router = WIDE
    try:
        expected: tuple[str | None, str] | RecordError = plain_map(router, event)
    except RecordError as exc:
        expected = exc
    try:
        routed = router.route(event)
    except RecordError as exc:
        assert isinstance(expected, RecordError), f"refused: {exc}"
        assert (exc.field, str(exc)) == (expected.field, str(expected))
        return
    assert not isinstance(expected, RecordError), f"accepted, but the rules say: {expected}"
    assert (routed.key, routed.record.decode()) == expected


WIDE = Router.from_config(config_with(WIDE_ROUTE))


def test_generated_filler_keeps_config_text_out_of_its_code() -> None:
    """Attribute names and paths reach the generated source as constants only."""
    router = Router.from_config(
        config_with("""
[[routes]]
name = "n'{x}\\\\"
schema = "dem:sampleTableStg"
method = "Ingest"
fields.a = { path = "it's.{x}\\\"" }
""")
    )
    routed = router.route({"it's": {'{x}"': "v"}})
    assert routed.record == b' a="v"'


def test_repr_names_the_routes() -> None:
    """A router's repr lists its routes by name, in order."""
    router = Router.from_config(load(EXAMPLE))
    assert repr(router) == f"Router(routes={[route.name for route in router.routes]!r})"
    assert "sample" in repr(router)
