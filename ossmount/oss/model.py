"""Plain, immutable results of OSS calls (frozen, slotted dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object's metadata, from HeadObject, GetObject or GetObjectMeta.

    ``etag`` is as the server sent it, quotes included (use it for If-Match). ``metadata`` holds the
    ``x-oss-meta-*`` headers without the prefix, names lower-cased. ``object_type`` is one of
    "Normal", "Appendable", "Multipart", "Symlink", or "" when the call does not say
    (GetObjectMeta).
    """

    key: str
    size: int
    etag: str
    last_modified: float
    object_type: str
    crc64: int | None = None
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    symlink_target: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectSummary:
    """One entry of a listing; ``etag`` as sent (with quotes)."""

    key: str
    size: int
    etag: str
    last_modified: float
    object_type: str
    storage_class: str


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of ListObjectsV2: objects, common prefixes, and the token for the next page."""

    objects: tuple[ObjectSummary, ...]
    prefixes: tuple[str, ...]
    is_truncated: bool
    next_token: str | None


@dataclass(frozen=True, slots=True)
class PutResult:
    """Result of PutObject, UploadPart, CompleteMultipartUpload, CopyObject, AppendObject."""

    etag: str
    crc64: int | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    etag: str
    crc64: int | None
    next_position: int


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    location: str
    creation_date: float
    storage_class: str
    extranet_endpoint: str = ""
    intranet_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class BucketSummary:
    name: str
    location: str
    creation_date: float
    storage_class: str


@dataclass(frozen=True, slots=True)
class PartInfo:
    """A part of a multipart upload: as listed by ListParts, or as uploaded."""

    part_number: int
    etag: str
    size: int
    last_modified: float = 0.0
    crc64: int | None = None


@dataclass(frozen=True, slots=True)
class MultipartUploadInfo:
    """An upload in progress, as listed by ListMultipartUploads."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """DeleteMultipleObjects: the keys deleted and, per failed key, (code, message)."""

    deleted: tuple[str, ...]
    errors: Mapping[str, tuple[str, str]] = field(default_factory=dict)
