"""XML character policy, attribute escaping and name checks."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from lxml import etree

from campaign_writer.campaign.documents import StagingRecord
from campaign_writer.campaign.xmltext import (
    _FORBIDDEN,
    _NEEDS_WORK,
    check_name,
    check_qualified_name,
    clean_text,
    is_name,
    quote_attribute,
)
from campaign_writer.errors import ConfigError, XmlTextError
from tests.support.documents import build_entity

# Every code point, surrogates included: Python strings can hold lone surrogates
# (from JSON "\ud800" escapes, for instance), and those must be handled too.
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)


def _parse_back(value: str) -> str:
    """Build a one-entity document holding ``value`` and read it with plain lxml."""
    xml = build_entity("dem:sampleTableStg", StagingRecord({"v": value}))
    return etree.fromstring(xml.encode("utf-8")).get("v")


@given(ANY_TEXT)
@example('"/><x a="')
@example("]]>&amp;&lt;&#0;")
@example("\t\n\r  leading and trailing \r\n")
@example("\ud800")
@example("\ufffe\uffff")
def test_every_string_round_trips_or_is_refused_naming_the_field(value: str) -> None:
    """Any Unicode string either parses back identical or raises an error naming the field."""
    try:
        xml = build_entity("dem:sampleTableStg", StagingRecord({"v": value}))
    except XmlTextError as exc:
        assert exc.field == "v"
        assert "not allowed in XML" in str(exc)
        with pytest.raises(XmlTextError):
            clean_text(value, "v")
        return
    assert etree.fromstring(xml.encode("utf-8")).get("v") == value


@given(ANY_TEXT)
def test_strip_policy_keeps_everything_xml_can_carry(value: str) -> None:
    """With policy 'strip', forbidden characters go and the rest round-trips exactly."""
    cleaned = clean_text(value, "v", "strip")
    assert _parse_back(cleaned) == cleaned
    allowed = [
        c
        for c in value
        if c in "\t\n\r"
        or 0x20 <= ord(c) <= 0xD7FF
        or 0xE000 <= ord(c) <= 0xFFFD
        or ord(c) >= 0x10000
    ]
    assert cleaned == "".join(allowed)


@pytest.mark.parametrize(
    ("value", "position"),
    [("a\x00b", 1), ("\x1f", 0), ("ok\ud800", 2), ("x\ufffe", 1), ("\uffff", 0), ("\x0b", 0)],
)
def test_reject_policy_names_the_character_and_position(value: str, position: int) -> None:
    """The default policy refuses a forbidden character and says which and where."""
    with pytest.raises(XmlTextError) as info:
        clean_text(value, "firstName")
    message = str(info.value)
    assert message.startswith("firstName: character U+")
    assert f"at position {position}" in message


def test_quote_attribute_escapes_markup_and_whitespace() -> None:
    """Markup characters and tab/LF/CR are escaped so attribute normalisation keeps them."""
    assert quote_attribute('a&b<c>d"e\tf\ng\rh', "f") == (
        "a&amp;b&lt;c&gt;d&quot;e&#9;f&#10;g&#13;h"
    )
    assert quote_attribute("plain text", "f") == "plain text"


def test_the_fast_path_passes_only_characters_the_exact_scan_passes() -> None:
    """clean_text and quote_attribute skip their regex when str.isprintable() holds;
    checked on every code point, so a Unicode update that broke the premise fails here."""
    for code in range(0x110000):
        char = chr(code)
        if char.isprintable():
            assert _FORBIDDEN.search(char) is None, f"U+{code:04X}"
            if char not in '&<>"':
                assert _NEEDS_WORK.search(char) is None, f"U+{code:04X}"
                assert quote_attribute(f"a{char}b", "f") == f"a{char}b"


def _lxml_accepts_attribute_name(name: str) -> bool:
    if name.startswith("{"):
        # lxml reads "{uri}local" as Clark notation (a namespace and a local name), so it
        # accepts "{}A" as the name "A"; such text is not an XML name.
        return False
    try:
        etree.Element("e").set(name, "v")
    except ValueError:
        return False
    return True


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x3000), max_size=8))
@example("firstName")
@example("test-col.1")
@example("1abc")
@example("a b")
@example("ns:name")
@example("{}A")
def test_is_name_agrees_with_lxml_on_attribute_names(name: str) -> None:
    """Our NCName check accepts exactly the attribute names lxml accepts."""
    assert is_name(name) == _lxml_accepts_attribute_name(name)


def test_config_name_checks_name_the_key_path() -> None:
    """Invalid names from config raise ConfigError carrying the key path."""
    assert check_name("email", "routes[0].fields.email") == "email"
    with pytest.raises(ConfigError, match=r"routes\[0\]\.fields\.1x: '1x' is not a valid XML name"):
        check_name("1x", "routes[0].fields.1x")
    assert check_qualified_name("dem:sampleTableStg", "routes[0].schema") == "dem:sampleTableStg"
    for bad in ("sampleTable", "dem:", ":x", "a:b:c", "dem:sample Table"):
        with pytest.raises(ConfigError, match=r"routes\[0\]\.schema"):
            check_qualified_name(bad, "routes[0].schema")
