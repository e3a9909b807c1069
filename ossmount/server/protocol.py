"""The OSS protocol rules the operations share: ranges, conditional requests, object headers
and metadata, listing tokens, and small XML answers. Pure functions, tested through the API."""

from __future__ import annotations

import base64
import calendar
import functools
import itertools
import os
import re
from collections.abc import Callable
from email.utils import formatdate, parsedate_tz
from urllib.parse import quote, unquote

from ossmount.server import xmlio
from ossmount.server.errors import OssServerError, invalid_argument
from ossmount.server.http import Response
from ossmount.server.store import ObjectRecord, ObjectSummary
from ossmount.server.xmlio import leaf, node

MAX_USER_META_BYTES = 8 * 1024


OWNER_ID = "ossmount"


STANDARD_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Cache-Control",
    "Expires",
)


RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


BUCKET_ACLS = frozenset({"private", "public-read", "public-read-write"})


OBJECT_ACLS = BUCKET_ACLS | {"default"}


STORAGE_CLASSES = frozenset({"Standard", "IA", "Archive", "ColdArchive", "DeepColdArchive"})


META_NAME = re.compile(r"^[a-z0-9-]+$")


# HTTP compression, as OSS does it: a whole GET (no Range) of an object of at least 1 KiB
# whose Content-Type is text or one of these, to a client that accepts gzip, goes out
# gzip-compressed with chunked transfer coding.
GZIP_MIN_SIZE = 1024
GZIP_APPLICATION_TYPES = frozenset(
    {
        "application/javascript",
        "application/x-javascript",
        "application/json",
        "application/xml",
        "application/rss+xml",
    }
)


def accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, parameters = item.partition(";")
        if coding.strip().lower() != "gzip":
            continue
        quality = parameters.strip().lower()
        return not (quality.startswith("q=") and quality[2:].strip("0. ") == "")
    return False


def should_gzip(
    request_headers: dict[str, str], response_headers: list[tuple[str, str]], size: int
) -> bool:
    """Whether a GET answer of `size` bytes with `response_headers` goes out gzip-compressed."""
    if size < GZIP_MIN_SIZE or "range" in request_headers:
        return False
    if not accepts_gzip(request_headers.get("accept-encoding", "")):
        return False
    fields = {name.lower(): value for name, value in response_headers}
    if fields.get("content-encoding", "").strip():
        return False  # stored already encoded
    media_type = fields.get("content-type", "").split(";")[0].strip().lower()
    return media_type.startswith("text/") or media_type in GZIP_APPLICATION_TYPES


MAX_TAGS = 10
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
_TAG_PUNCTUATION = frozenset(" +-=._:/")


def _tag_text_ok(text: str) -> bool:
    return all(char.isalnum() or char in _TAG_PUNCTUATION for char in text)


def check_tags(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The tag set of `pairs` as OSS allows it: at most 10 tags, distinct keys of 1-128 and
    values of 0-256 characters, each letters, digits, spaces and ``+ - = . _ : /``.
    InvalidTag otherwise."""
    if len(pairs) > MAX_TAGS:
        raise invalid_tag(f"An object can have at most {MAX_TAGS} tags.")
    tags: dict[str, str] = {}
    for key, value in pairs:
        if not 1 <= len(key) <= MAX_TAG_KEY_CHARS or not _tag_text_ok(key):
            raise invalid_tag(
                "A tag key holds 1 to 128 letters, digits, spaces or + - = . _ : / characters."
            )
        if len(value) > MAX_TAG_VALUE_CHARS or not _tag_text_ok(value):
            raise invalid_tag(
                "A tag value holds 0 to 256 letters, digits, spaces or + - = . _ : / characters."
            )
        if key in tags:
            raise invalid_tag(f"The tag key {key!r} is given twice.")
        tags[key] = value
    return tags


def invalid_tag(message: str) -> OssServerError:
    return OssServerError(400, "InvalidTag", message)


def tags_from_header(headers: dict[str, str]) -> dict[str, str]:
    """The tags of an `x-oss-tagging: k1=v1&k2=v2` header (percent-encoded); {} without it."""
    value = headers.get("x-oss-tagging", "")
    pairs: list[tuple[str, str]] = []
    for item in value.split("&"):
        if not item:
            continue
        key, _, tag_value = item.partition("=")
        try:
            pairs.append((unquote(key, errors="strict"), unquote(tag_value, errors="strict")))
        except UnicodeDecodeError:
            raise invalid_tag("x-oss-tagging is not percent-encoded UTF-8.") from None
    return check_tags(pairs)


def http_date(epoch_s: float) -> str:
    return _http_date_second(int(epoch_s))


@functools.lru_cache(maxsize=256)
def _http_date_second(epoch_s: int) -> str:
    return formatdate(epoch_s, usegmt=True)


def parse_http_date(value: str) -> float | None:
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    return float(calendar.timegm(parsed[:9]) - (parsed[9] or 0))


# Request ids: 24 hex digits as OSS gives, a random prefix per process and a counter (a uuid4
# per request cost 2-3% of a small GET's CPU).
_REQUEST_ID_PREFIX = os.urandom(8).hex().upper()
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers) & 0xFFFFFFFF:08X}"


def parse_range(header: str, size: int, standard: bool) -> tuple[int, int] | None:
    """The inclusive byte range a Range header selects, or None for the whole object.

    OSS by default ignores any range it cannot satisfy in full (200 with the whole object);
    with ``x-oss-range-behavior: standard`` it clips the end to the object and answers 416
    InvalidRange only when the start lies beyond it. Syntactically invalid ranges and
    multi-range requests are ignored either way.
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # suffix: the last N bytes
        suffix = int(last_text)
        if suffix == 0:
            if standard:
                raise invalid_range(size)
            return None
        if suffix > size and not standard:
            return None
        return max(0, size - suffix), size - 1 if size else -1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        if standard:
            raise invalid_range(size)
        return None
    if last >= size:
        if not standard:
            return None
        last = size - 1
    return first, last


def invalid_range(size: int) -> OssServerError:
    return OssServerError(
        416,
        "InvalidRange",
        "The requested range cannot be satisfied",
        headers={"Content-Range": f"bytes */{size}"},
    )


def etag_matches(condition: str, etag: str) -> bool:
    bare = etag.strip('"').upper()
    for item in condition.split(","):
        candidate = item.strip()
        if candidate == "*" or candidate.removeprefix("W/").strip('"').upper() == bare:
            return True
    return False


def check_conditions(
    headers: dict[str, str], record: ObjectRecord, *, read: bool, prefix: str = ""
) -> None:
    """If-Match / If-Unmodified-Since fail with 412; If-None-Match / If-Modified-Since with 304
    (412 for writes). `prefix` selects the copy-source variants (x-oss-copy-source-if-...)."""
    mtime = int(record.mtime)
    if_match = headers.get(prefix + "if-match")
    if if_match is not None and not etag_matches(if_match, record.etag):
        raise OssServerError(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
            extra={"Condition": "If-Match"},
        )
    if if_match is None:
        since = headers.get(prefix + "if-unmodified-since")
        since_epoch = parse_http_date(since) if since else None
        if since_epoch is not None and mtime > since_epoch:
            raise OssServerError(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold.",
                extra={"Condition": "If-Unmodified-Since"},
            )
    if_none_match = headers.get(prefix + "if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, record.etag):
        raise not_modified(record, read)
    if if_none_match is None:
        since = headers.get(prefix + "if-modified-since")
        since_epoch = parse_http_date(since) if since else None
        if since_epoch is not None and mtime <= since_epoch:
            raise not_modified(record, read)


def not_modified(record: ObjectRecord, read: bool) -> OssServerError:
    if not read:
        return OssServerError(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
        )
    return OssServerError(
        304,
        "NotModified",
        "Not Modified",
        headers={"ETag": record.etag, "Last-Modified": http_date(record.mtime)},
    )


def url_encoder(enabled: bool) -> Callable[[str], str]:
    if not enabled:
        return lambda text: text
    return lambda text: quote(text, safe="/", errors="surrogateescape")


def encode_token(key: str) -> str:
    raw = key.encode("utf-8", errors="surrogateescape")
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise invalid_argument(
            "The continuation token is not valid.", "continuation-token", token
        ) from None


def xml_response(root: str) -> Response:
    return Response(200, [("Content-Type", "application/xml")], xmlio.document(root))


def acl_xml(acl: str) -> str:
    return node(
        "AccessControlPolicy",
        node("Owner", leaf("ID", OWNER_ID), leaf("DisplayName", OWNER_ID)),
        node("AccessControlList", leaf("Grant", acl)),
    )


OWNER_XML = node("Owner", leaf("ID", OWNER_ID), leaf("DisplayName", OWNER_ID))


def contents_xml(summary: ObjectSummary, encode: Callable[[str], str], owner: bool) -> str:
    # Written out by hand: this runs a thousand times per listing page.
    return (
        f"<Contents><Key>{xmlio.escape(encode(summary.key))}</Key>"
        f"<LastModified>{xmlio.iso8601(summary.mtime)}</LastModified>"
        f"<ETag>{xmlio.escape(summary.etag)}</ETag><Type>{summary.object_type}</Type>"
        f"<Size>{summary.size}</Size><StorageClass>{summary.storage_class}</StorageClass>"
        f"{OWNER_XML if owner else ''}</Contents>"
    )


def object_attributes(headers: dict[str, str], key: str) -> tuple[dict[str, str], dict[str, str]]:
    """The standard headers and the user metadata of a write request (metadata checked)."""
    standard: dict[str, str] = {}
    for name in STANDARD_HEADERS:
        value = headers.get(name.lower())
        if value is not None:
            standard[name] = value
    standard.setdefault("Content-Type", "application/octet-stream")
    metadata: dict[str, str] = {}
    total = 0
    for name, value in headers.items():
        if not name.startswith("x-oss-meta-"):
            continue
        short = name[len("x-oss-meta-") :]
        if not short or not META_NAME.match(short):
            raise OssServerError(
                400,
                "InvalidArgument",
                "User metadata names may hold only letters, digits and hyphens.",
                extra={"ArgumentName": name},
                ec="0011-00000004",
            )
        metadata[short] = value
        total += len(name) + len(value.encode("utf-8", errors="surrogateescape"))
    if total > MAX_USER_META_BYTES:
        raise OssServerError(
            400,
            "InvalidArgument",
            "The user metadata exceeds the 8 KB limit.",
            extra={"ArgumentName": "x-oss-meta-*"},
            ec="0011-00000002",
        )
    return standard, metadata


def object_acl_and_class(headers: dict[str, str]) -> tuple[str, str]:
    acl = headers.get("x-oss-object-acl", "default")
    if acl not in OBJECT_ACLS:
        raise invalid_argument("no such object access control exists", "x-oss-object-acl", acl)
    storage_class = headers.get("x-oss-storage-class", "Standard")
    if storage_class not in STORAGE_CLASSES:
        raise invalid_argument("invalid storage class", "x-oss-storage-class", storage_class)
    return acl, storage_class


def object_headers(link: ObjectRecord, record: ObjectRecord) -> list[tuple[str, str]]:
    headers = list(record.headers.items())
    headers.extend(
        [
            ("ETag", record.etag),
            ("Last-Modified", http_date(max(record.mtime, link.mtime))),
            ("Accept-Ranges", "bytes"),
            ("x-oss-object-type", link.object_type),
            ("x-oss-storage-class", record.storage_class),
            ("x-oss-hash-crc64ecma", str(record.crc64)),
        ]
    )
    if record.object_type == "Appendable":
        headers.append(("x-oss-next-append-position", str(record.size)))
    if link.tags:
        headers.append(("x-oss-tagging-count", str(len(link.tags))))
    headers.extend((f"x-oss-meta-{name}", value) for name, value in link.metadata.items())
    return headers


def set_header(headers: list[tuple[str, str]], name: str, value: str) -> None:
    lower = name.lower()
    headers[:] = [(key, val) for key, val in headers if key.lower() != lower]
    headers.append((name, value))


def write_headers(record: ObjectRecord, md5: bytes | None) -> list[tuple[str, str]]:
    headers = [("ETag", record.etag), ("x-oss-hash-crc64ecma", str(record.crc64))]
    if md5 is not None:
        headers.append(("Content-MD5", base64.b64encode(md5).decode()))
    return headers
