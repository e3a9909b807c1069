"""Parse and build the XML bodies of the OSS REST API.

Parsing goes through defusedxml (no entity expansion, no external entities): every body comes from
the network. Any malformed document raises :class:`XmlError`; the client turns it into
``OssProtocolError``. Keys in listings sent with ``encoding-type=url`` are URL-decoded here.
"""

from __future__ import annotations

import calendar
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from ossmount.oss.model import (
    BucketInfo,
    BucketSummary,
    DeleteResult,
    ListPage,
    MultipartUploadInfo,
    ObjectSummary,
    PartInfo,
)


class XmlError(ValueError):
    """A body is not the XML document expected."""


def _parse(body: bytes, root_tag: str | None = None) -> ET.Element:
    try:
        root: ET.Element = SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise XmlError(f"not valid XML: {exc}") from None
    if root_tag is not None and root.tag != root_tag:
        raise XmlError(f"expected <{root_tag}>, got <{root.tag}>")
    return root


def _text(node: ET.Element, path: str, default: str | None = None) -> str:
    child = node.find(path)
    if child is None:
        if default is None:
            raise XmlError(f"<{path}> missing under <{node.tag}>")
        return default
    return child.text or ""


def _int(node: ET.Element, path: str, default: int | None = None) -> int:
    text = _text(node, path, None if default is None else str(default))
    try:
        return int(text)
    except ValueError:
        raise XmlError(f"<{path}> is not an integer: {text!r}") from None


def _bool(node: ET.Element, path: str) -> bool:
    return _text(node, path, "false").strip().lower() == "true"


def parse_iso8601(text: str) -> float:
    """'2024-01-02T03:04:05.000Z' -> epoch seconds."""
    text = text.strip()
    try:
        base, _, fraction = text.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        raise XmlError(f"bad timestamp {text!r}") from None
    return seconds + (float("0." + fraction) if fraction.isdigit() else 0.0)


def parse_http_date(text: str) -> float:
    """An RFC 1123 date header -> epoch seconds (0.0 if unparsable)."""
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


def format_iso8601(epoch_s: float) -> str:
    whole = int(epoch_s)
    millis = min(999, round((epoch_s - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def parse_error(body: bytes) -> dict[str, str]:
    """An <Error> document -> {child tag: text} (Code, Message, RequestId, HostId, ...)."""
    root = _parse(body, "Error")
    return {child.tag: child.text or "" for child in root}


def _key_decoder(root: ET.Element) -> Callable[[str], str]:
    """How to read the keys of an answer: URL-decoded when it says ``EncodingType`` url."""
    if _text(root, "EncodingType", "").lower() == "url":
        return unquote
    return lambda text: text


def _common_prefixes(root: ET.Element, decode: Callable[[str], str]) -> tuple[str, ...]:
    return tuple(decode(_text(node, "Prefix")) for node in root.findall("CommonPrefixes"))


def parse_list_objects_v2(body: bytes) -> ListPage:
    root = _parse(body, "ListBucketResult")
    decode = _key_decoder(root)
    objects = tuple(
        ObjectSummary(
            key=decode(_text(node, "Key")),
            size=_int(node, "Size"),
            etag=_text(node, "ETag", ""),
            last_modified=parse_iso8601(_text(node, "LastModified")),
            object_type=_text(node, "Type", "Normal"),
            storage_class=_text(node, "StorageClass", "Standard"),
        )
        for node in root.findall("Contents")
    )
    prefixes = _common_prefixes(root, decode)
    is_truncated = _bool(root, "IsTruncated")
    token = _text(root, "NextContinuationToken", "") if is_truncated else ""
    # OSS URL-encodes the continuation token too when encoding-type=url is asked for.
    token = decode(token)
    return ListPage(objects, prefixes, is_truncated, token or None)


@dataclass(frozen=True, slots=True)
class BucketListPage:
    buckets: tuple[BucketSummary, ...]
    is_truncated: bool
    next_marker: str | None


def parse_list_buckets(body: bytes) -> BucketListPage:
    root = _parse(body, "ListAllMyBucketsResult")
    buckets = tuple(
        BucketSummary(
            name=_text(node, "Name"),
            location=_text(node, "Location", ""),
            creation_date=parse_iso8601(_text(node, "CreationDate")),
            storage_class=_text(node, "StorageClass", "Standard"),
        )
        for node in root.findall("Buckets/Bucket")
    )
    is_truncated = _bool(root, "IsTruncated")
    marker = _text(root, "NextMarker", "") if is_truncated else ""
    return BucketListPage(buckets, is_truncated, marker or None)


def parse_bucket_info(body: bytes) -> BucketInfo:
    root = _parse(body, "BucketInfo")
    bucket = root.find("Bucket")
    if bucket is None:
        raise XmlError("<Bucket> missing under <BucketInfo>")
    return BucketInfo(
        name=_text(bucket, "Name"),
        location=_text(bucket, "Location", ""),
        creation_date=parse_iso8601(_text(bucket, "CreationDate")),
        storage_class=_text(bucket, "StorageClass", "Standard"),
        extranet_endpoint=_text(bucket, "ExtranetEndpoint", ""),
        intranet_endpoint=_text(bucket, "IntranetEndpoint", ""),
    )


def parse_initiate_multipart_upload(body: bytes) -> str:
    """-> the upload id."""
    return _text(_parse(body, "InitiateMultipartUploadResult"), "UploadId")


@dataclass(frozen=True, slots=True)
class PartListPage:
    parts: tuple[PartInfo, ...]
    is_truncated: bool
    next_part_number_marker: int


def parse_list_parts(body: bytes) -> PartListPage:
    root = _parse(body, "ListPartsResult")
    parts = tuple(
        PartInfo(
            part_number=_int(node, "PartNumber"),
            etag=_text(node, "ETag"),
            size=_int(node, "Size"),
            last_modified=parse_iso8601(_text(node, "LastModified", "1970-01-01T00:00:00.000Z")),
            crc64=int(crc) if (crc := _text(node, "HashCrc64ecma", "")) else None,
        )
        for node in root.findall("Part")
    )
    return PartListPage(
        parts, _bool(root, "IsTruncated"), _int(root, "NextPartNumberMarker", 0) or 0
    )


@dataclass(frozen=True, slots=True)
class UploadListPage:
    uploads: tuple[MultipartUploadInfo, ...]
    prefixes: tuple[str, ...]
    is_truncated: bool
    next_key_marker: str
    next_upload_id_marker: str


def parse_list_multipart_uploads(body: bytes) -> UploadListPage:
    root = _parse(body, "ListMultipartUploadsResult")
    decode = _key_decoder(root)
    uploads = tuple(
        MultipartUploadInfo(
            key=decode(_text(node, "Key")),
            upload_id=_text(node, "UploadId"),
            initiated=parse_iso8601(_text(node, "Initiated")),
        )
        for node in root.findall("Upload")
    )
    prefixes = _common_prefixes(root, decode)
    return UploadListPage(
        uploads,
        prefixes,
        _bool(root, "IsTruncated"),
        decode(_text(root, "NextKeyMarker", "")),
        _text(root, "NextUploadIdMarker", ""),
    )


def parse_complete_multipart_upload(body: bytes) -> str:
    """-> the ETag of the completed object (as sent, with quotes)."""
    return _text(_parse(body, "CompleteMultipartUploadResult"), "ETag", "")


def parse_copy_result(body: bytes) -> str:
    """CopyObject (<CopyObjectResult>) or UploadPartCopy (<CopyPartResult>) -> the ETag."""
    root = _parse(body)
    if root.tag not in ("CopyObjectResult", "CopyPartResult"):
        raise XmlError(f"expected a copy result, got <{root.tag}>")
    return _text(root, "ETag")


def parse_delete_result(body: bytes) -> DeleteResult:
    if not body.strip():
        return DeleteResult(())
    root = _parse(body, "DeleteResult")
    decode = _key_decoder(root)
    deleted = tuple(decode(_text(node, "Key")) for node in root.findall("Deleted"))
    errors = {
        decode(_text(node, "Key")): (
            _text(node, "Code", ""),
            _text(node, "Message", ""),
        )
        for node in root.findall("Error")
    }
    return DeleteResult(deleted, errors)


def _to_bytes(root: ET.Element) -> bytes:
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def build_complete_multipart_upload(parts: Iterable[tuple[int, str]]) -> bytes:
    """(part number, etag as sent) pairs -> the CompleteMultipartUpload body."""
    root = ET.Element("CompleteMultipartUpload")
    for number, etag in parts:
        part = ET.SubElement(root, "Part")
        ET.SubElement(part, "PartNumber").text = str(number)
        ET.SubElement(part, "ETag").text = etag
    return _to_bytes(root)


def build_delete_objects(keys: Iterable[str], *, quiet: bool) -> bytes:
    root = ET.Element("Delete")
    ET.SubElement(root, "Quiet").text = "true" if quiet else "false"
    for key in keys:
        node = ET.SubElement(root, "Object")
        ET.SubElement(node, "Key").text = key
    return _to_bytes(root)
