"""What the operations share: the request as routed (`Call`), the server they act on
(`ServerContext`: the store and how the server names itself), the limits of the protocol, and
the lookups and checks that several operations make."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ossmount.server.auth import Principal
from ossmount.server.errors import OssServerError, invalid_argument, no_such_bucket, no_such_key
from ossmount.server.http import Body, Request, Response
from ossmount.server.ingest import BufferPool, ObjectBody, receive_blob, receive_object_body
from ossmount.server.protocol import url_encoder
from ossmount.server.store import Blob, BlobWriter, BucketRecord, ObjectRecord, Store
from ossmount.server.xmlio import leaf

MAX_OBJECT_SIZE = 5 << 30
MAX_PART_SIZE = 5 << 30
MIN_PART_SIZE = 100 * 1024
MAX_PART_NUMBER = 10000
MAX_KEY_BYTES = 1023
MAX_XML_BODY = 2 << 20


@dataclass
class Call:
    """One request as routed: bucket, key, parameters, operation name, principal."""

    request: Request
    bucket: str | None
    key: str | None
    params: dict[str, str | None]
    operation: str = ""
    principal: Principal = field(default_factory=lambda: Principal(None))

    @property
    def headers(self) -> dict[str, str]:
        return self.request.headers

    def param(self, name: str, default: str = "") -> str:
        value = self.params.get(name, default)
        return default if value is None else value

    def require_bucket(self) -> str:
        assert self.bucket is not None
        return self.bucket

    def require_key(self) -> str:
        assert self.key is not None
        return self.key


class ServerContext:
    """The server as its operations see it: the store, the region and the `host:port` it
    reports, how bodies are written, and the per-object locks that serialize appends."""

    def __init__(self, store: Store, region: str, endpoint_host: str, direct_io: bool) -> None:
        self.store = store
        self.region = region
        self.endpoint_host = endpoint_host
        self.direct_io = direct_io
        self.append_locks: dict[tuple[str, str], trio.Lock] = {}
        self.buffers = BufferPool()

    def bucket(self, name: str) -> BucketRecord:
        record = self.store.get_bucket(name)
        if record is None:
            raise no_such_bucket(name)
        return record

    def object(self, bucket: str, key: str) -> ObjectRecord:
        record = self.store.get_object(bucket, key)
        if record is None:
            raise no_such_key(key)
        return record

    def resolve_symlink(self, record: ObjectRecord) -> ObjectRecord:
        """The object a symlink points at (following chains up to 8 deep)."""
        seen = 0
        while record.object_type == "Symlink" and record.symlink_target is not None:
            seen += 1
            target = self.store.get_object(record.bucket, record.symlink_target)
            if target is None or seen > 8:
                raise OssServerError(
                    404,
                    "SymlinkTargetNotExist",
                    "The symlink target object does not exist.",
                    extra={"Key": record.key},
                )
            record = target
        return record

    async def receive_blob(self, body: Body, limit: int, writer: BlobWriter | None = None) -> Blob:
        """Receive a request body into a fsynced temp file (see ingest.py)."""
        return await receive_blob(
            self.store, body, limit, direct_io=self.direct_io, buffers=self.buffers, writer=writer
        )

    async def receive_object_body(self, body: Body, limit: int) -> ObjectBody:
        """Receive a request body into a fsynced file in data/, or, if small, into memory for
        the index (see ingest.py)."""
        return await receive_object_body(
            self.store, body, limit, direct_io=self.direct_io, buffers=self.buffers
        )

    def check_forbid_overwrite(self, call: Call, bucket: str, key: str) -> None:
        if call.headers.get("x-oss-forbid-overwrite", "").lower() != "true":
            return
        if self.store.get_object(bucket, key) is not None:
            raise OssServerError(
                409,
                "FileAlreadyExists",
                "The object you specified already exists and can not be overwritten.",
            )

    def commit_new(self, call: Call, record: ObjectRecord, inline: bytes | None = None) -> None:
        """Commit (with `inline`, the data of a body kept in the index), re-checking
        x-oss-forbid-overwrite now that the body is in."""
        try:
            self.check_forbid_overwrite(call, record.bucket, record.key)
        except OssServerError:
            self.store.discard_files(record)
            raise
        self.store.commit_object(record, inline)


Operation = Callable[[ServerContext, Call], Awaitable[Response]]


def check_md5(call: Call, blob: Blob | ObjectBody) -> None:
    content_md5 = call.headers.get("content-md5")
    if content_md5 is None:
        return
    try:
        expected = base64.b64decode(content_md5, validate=True)
    except binascii.Error:
        expected = b""
    if expected != blob.md5:
        raise OssServerError(
            400,
            "InvalidDigest",
            "The Content-MD5 you specified was invalid.",
            extra={"Content-MD5": content_md5},
        )


def int_param(call: Call, name: str, default: int, low: int, high: int) -> int:
    text = call.params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise invalid_argument(f"{name} must be an integer between {low} and {high}", name, text)
    return int(text)


def url_encoding(call: Call) -> tuple[Callable[[str], str], list[str]]:
    """What `encoding-type=url` asks of an answer: the function that encodes its keys, and
    the EncodingType field that says so (no field without it)."""
    enabled = call.param("encoding-type") == "url"
    return url_encoder(enabled), [leaf("EncodingType", "url")] if enabled else []
