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


# Control characters OSS takes raw in request documents (SDKs send keys holding them as they
# are), although XML 1.0 has no place for them; and CR, which a parser would turn into LF.
_RAW_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f]")
_RAW_CONTROL_COUNT = 0x20
# Where their stand-ins are looked for: supplementary private use planes 15 and 16.
_STAND_IN_PLANES = range(0xF0000, 0x10FFFF - _RAW_CONTROL_COUNT, _RAW_CONTROL_COUNT)


def _stand_in_base(text: str) -> int | None:
    """The first code point of 32 in a row that `text` does not hold, or None."""
    used = {ord(char) & ~(_RAW_CONTROL_COUNT - 1) for char in text if ord(char) >= 0xF0000}
    return next((base for base in _STAND_IN_PLANES if base not in used), None)


def _restore(root: Element, base: int) -> None:
    stand_ins = re.compile(f"[{chr(base)}-{chr(base + _RAW_CONTROL_COUNT - 1)}]")

    def restore(text: str) -> str:
        return stand_ins.sub(lambda match: chr(ord(match.group()) - base), text)

    for element in root.iter():
        if element.text:
            element.text = restore(element.text)
        if element.tail:
            element.tail = restore(element.tail)
        for name, value in element.attrib.items():
            element.attrib[name] = restore(value)


def parse_body(body: bytes, root_tag: str) -> Element:
    """Parse a request body (entities and DTDs refused); MalformedXML if it is not `root_tag`.

    Raw control characters and CRs are taken as OSS takes them: each is swapped for a stand-in
    from a private-use block the body does not use, the parser (defusedxml, unchanged) runs,
    and the stand-ins become the characters again in the parsed text. Nothing else is relaxed.
    """
    base: int | None = None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # left to the parser, which says what is wrong with it
    if text and _RAW_CONTROL.search(text):
        base = _stand_in_base(text)
        if base is not None:
            stand_in = base
            body = _RAW_CONTROL.sub(lambda match: chr(stand_in + ord(match.group())), text).encode(
                "utf-8"
            )
    try:
        root = fromstring(body)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        raise malformed_xml(f"The XML you provided was not well-formed: {exc}") from None
    if root.tag != root_tag:
        raise malformed_xml(f"expected a {root_tag} document, got {root.tag}")
    if base is not None:
        _restore(root, base)
    return root


def child_text(parent: Element, tag: str) -> str | None:
    child = parent.find(tag)
    if child is None:
        return None
    return child.text or ""
