"""The server's XML: builders for response bodies and a safe parser for request bodies."""

from __future__ import annotations

import functools
import re
import time
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ossmount.server.errors import malformed_xml

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
# Characters XML 1.0 cannot carry even escaped; keys holding them need encoding-type=url.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


_NEEDS_ESCAPE = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def escape(value: object) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if not _NEEDS_ESCAPE.search(text):
        return text
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\r", "&#13;")
    return _FORBIDDEN.sub(lambda match: f"&#{ord(match.group())};", text)


def leaf(tag: str, value: object) -> str:
    return f"<{tag}>{escape(value)}</{tag}>"


def node(tag: str, *children: str) -> str:
    return f"<{tag}>{''.join(children)}</{tag}>"


def document(root: str) -> bytes:
    return (XML_DECLARATION + root).encode("utf-8", errors="surrogateescape")


@functools.lru_cache(maxsize=4096)
def _iso8601_second(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + ".000Z"


def iso8601(epoch_s: float) -> str:
    """2012-02-24T06:07:48.000Z, as OSS writes times in XML."""
    return _iso8601_second(int(epoch_s))


def parse_body(body: bytes, root_tag: str) -> Element:
    """Parse a request body (entities and DTDs refused); MalformedXML if it is not `root_tag`."""
    try:
        root = fromstring(body)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise malformed_xml(f"The XML you provided was not well-formed: {exc}") from None
    if root.tag != root_tag:
        raise malformed_xml(f"expected a {root_tag} document, got {root.tag}")
    return root


def child_text(parent: Element, tag: str) -> str | None:
    child = parent.find(tag)
    if child is None:
        return None
    return child.text or ""
