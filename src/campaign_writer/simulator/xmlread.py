"""How the simulator reads an XML request body, and the SOAP names it needs.

The simulator stands in for Campaign, so it reads what it receives with code of its
own, not the writer's (``campaign.soap``): a parsing bug on one side must not be hidden
by the same bug on the other, and the fidelity tests then compare two independent
readings. The rules are the ones any server should apply to untrusted XML:

* a body over the size cap is refused before it is parsed;
* no entity is resolved, no DTD loaded, nothing fetched from the network, and
  libxml2's limits on depth and text size stay on (``huge_tree=False``);
* a document that declares a DTD at all is refused (its entities would mean nothing
  here, and a request never needs one);
* malformed XML is refused; a namespace URI that libxml2 only warns about (the
  ``urn:xtk:persist|xtk:session`` that Adobe's SDK sends) is not malformed.
"""

from __future__ import annotations

import threading
from typing import Final

from lxml import etree

__all__ = [
    "ENCODING_NS",
    "LITERAL_XML_NS",
    "SOAP12_ENV_NS",
    "SOAP_ENV_NS",
    "UnreadableXml",
    "read_xml",
]

SOAP_ENV_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV_NS: Final = "http://www.w3.org/2003/05/soap-envelope"
ENCODING_NS: Final = "http://schemas.xmlsoap.org/soap/encoding/"
LITERAL_XML_NS: Final = "http://xml.apache.org/xml-soap/literalxml"


class UnreadableXml(ValueError):
    """The body is too large, malformed, or declares a DTD; the message says which."""


# What libxml2 says of a namespace URI it finds odd but that Campaign takes, such as
# ``urn:xtk:persist|xtk:session``.
_DOUBTED_URI: Final = "WAR_NS_URI"
_parsers = threading.local()


def _parser() -> etree.XMLParser:
    # One parser per thread: an lxml parser must not be shared between threads.
    parser: etree.XMLParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        # Recovering, so that a namespace URI libxml2 merely doubts does not stop it;
        # every other complaint in its log refuses the body (read_xml).
        parser = _parsers.parser = etree.XMLParser(
            recover=True,
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            collect_ids=False,
        )
    return parser


def read_xml(body: bytes, max_bytes: int) -> etree._Element:
    """The root element of ``body``; :class:`UnreadableXml` if it may not be read."""
    if len(body) > max_bytes:
        raise UnreadableXml(f"the body is {len(body)} bytes, over the {max_bytes}-byte cap")
    if not body.strip():
        raise UnreadableXml("the body is empty")
    parser = _parser()
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise UnreadableXml(f"not well-formed XML: {exc}") from None
    for entry in parser.error_log:
        if entry.type_name != _DOUBTED_URI:
            raise UnreadableXml(f"not well-formed XML: {entry.message} (line {entry.line})")
    if root is None:
        raise UnreadableXml("the body holds no element")
    # Set by any DOCTYPE, with or without an internal subset, whatever the encoding.
    if root.getroottree().docinfo.internalDTD is not None:
        raise UnreadableXml("the body declares a DTD, which a request may not")
    return root
