"""What XML 1.0 can carry: names, characters, and attribute escaping.

Policy for characters that XML 1.0 forbids (C0 controls other than tab, LF and CR,
lone surrogates, U+FFFE and U+FFFF):

* ``reject`` (the default): the value is refused with an error naming the field, so
  the record is rejected at intake and never reaches Campaign half-written;
* ``strip``: those characters are removed and the rest of the value is kept.

Every value that passes either policy round-trips exactly through
:func:`quote_attribute`: parsing ``name="<quoted>"`` with any conforming XML parser
gives back the same string (tab, LF and CR are written as character references so
attribute-value normalisation cannot fold them into spaces).
"""

from __future__ import annotations

import re
from typing import Literal

from ..errors import ConfigError, XmlTextError

__all__ = [
    "XmlTextPolicy",
    "check_name",
    "check_qualified_name",
    "clean_text",
    "is_name",
    "quote_attribute",
]

XmlTextPolicy = Literal["reject", "strip"]

# XML 1.0 (fifth edition) Char production, inverted: everything that may not appear.
_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# Characters that need escaping inside a double-quoted attribute, plus the forbidden
# ones, so the common clean value costs a single scan.
_NEEDS_WORK = re.compile('[&<>"\t\n\r]|' + _FORBIDDEN.pattern)

_NAME_START = (
    "A-Z_a-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u1fff"
    "\u200c-\u200d\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd"
    "\U00010000-\U000effff"
)
_NAME_CHAR = _NAME_START + r"\-.0-9\u00b7\u0300-\u036f\u203f-\u2040"
# NCName: an XML name without a colon (attribute and element local names).
_NCNAME = re.compile(f"[{_NAME_START}][{_NAME_CHAR}]*")
# A Campaign schema id such as ``dem:sampleTableStg``: namespace, colon, name.
_QNAME = re.compile(f"[{_NAME_START}][{_NAME_CHAR}]*:[{_NAME_START}][{_NAME_CHAR}]*")


# A fast sufficient test first: every character XML forbids (C0 controls, surrogates,
# U+FFFE, U+FFFF) is one str.isprintable() refuses, and that C loop costs a third of
# the regex scan. Tab, LF, CR and many allowed characters are not "printable" either;
# those values take the regex, which decides exactly.


def clean_text(value: str, field: str, policy: XmlTextPolicy = "reject") -> str:
    """Return ``value`` if XML can carry it, else strip or refuse per ``policy``."""
    if value.isprintable():
        return value
    bad = _FORBIDDEN.search(value)
    if bad is None:
        return value
    if policy == "strip":
        return _FORBIDDEN.sub("", value)
    raise XmlTextError(
        f"character U+{ord(bad.group()):04X} at position {bad.start()} is not allowed in XML",
        field=field,
    )


def quote_attribute(value: str, field: str) -> str:
    """Escape ``value`` for a double-quoted attribute; refuse characters XML forbids."""
    if (
        value.isprintable()
        and '"' not in value
        and "&" not in value
        and "<" not in value
        and ">" not in value
    ) or _NEEDS_WORK.search(value) is None:
        return value
    clean_text(value, field, "reject")
    # Seven C-level scans beat one regex substitution calling back into Python per match.
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def is_name(name: str) -> bool:
    """True if ``name`` is an XML NCName (usable as an element or attribute name)."""
    return _NCNAME.fullmatch(name) is not None


def check_name(name: str, path: str) -> str:
    """Return ``name`` or raise ConfigError naming ``path``; for config-load checks."""
    if not is_name(name):
        raise ConfigError(f"{path}: {name!r} is not a valid XML name")
    return name


def check_qualified_name(name: str, path: str) -> str:
    """Return a ``namespace:name`` schema id or raise ConfigError naming ``path``."""
    if _QNAME.fullmatch(name) is None:
        raise ConfigError(f"{path}: {name!r} is not a schema id of the form 'namespace:name'")
    return name
