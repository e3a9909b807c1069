"""The OSS REST API: routing a request to its operation, and the operations.

Routing follows OSS: the bucket comes from the Host header (virtual-host style,
``bucket.<base>``) or from the first path segment (path style); the rest of the path is the
key; sub-resource query parameters (``?uploads``, ``?append``, ``?symlink`` ...) pick the
operation. Every answer carries ``x-oss-request-id``; every failure is the OSS error XML (in
the base64 ``x-oss-err`` header for HEAD).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

import trio

from ossmount.oss.crc64 import crc64_combine
from ossmount.server import xmlio
from ossmount.server.auth import Principal, SignedRequest, Verifier
from ossmount.server.errors import (
    OssServerError,
    invalid_argument,
    malformed_xml,
    no_such_bucket,
    no_such_key,
)
from ossmount.server.faults import Faults
from ossmount.server.http import (
    Body,
    FileSegment,
    PeerGoneError,
    ProtocolError,
    Request,
    Response,
)
from ossmount.server.ingest import receive_blob
from ossmount.server.protocol import (
    BUCKET_ACLS,
    OBJECT_ACLS,
    OWNER_ID,
    RESPONSE_OVERRIDES,
    STORAGE_CLASSES,
    acl_xml,
    check_conditions,
    contents_xml,
    decode_token,
    encode_token,
    http_date,
    invalid_range,
    new_request_id,
    object_acl_and_class,
    object_attributes,
    object_headers,
    parse_range,
    set_header,
    url_encoder,
    write_headers,
    xml_response,
)
from ossmount.server.store import (
    Blob,
    BlobWriter,
    BucketRecord,
    ListEntry,
    ObjectRecord,
    PartRecord,
    Store,
    UploadRecord,
    copy_slices_to_writer,
    md5_digest,
    md5_etag,
)
from ossmount.server.xmlio import leaf, node

log = logging.getLogger(__name__)

MAX_OBJECT_SIZE = 5 << 30
MAX_PART_SIZE = 5 << 30
MIN_PART_SIZE = 100 * 1024
MAX_PART_NUMBER = 10000
MAX_KEY_BYTES = 1023
MAX_XML_BODY = 2 << 20
# Sub-resources this server does not implement: answered with NotImplemented, never mistaken
# for a plain GET/PUT of the bucket or object.
UNSUPPORTED_SUBRESOURCES = frozenset(
    {
        "cors",
        "lifecycle",
        "logging",
        "website",
        "referer",
        "policy",
        "replication",
        "encryption",
        "versioning",
        "versions",
        "versionId",
        "tagging",
        "restore",
        "worm",
        "inventory",
        "qos",
        "requestPayment",
        "live",
        "comp",
        "x-oss-process",
        "callback",
        "transferAcceleration",
        "cname",
        "metaQuery",
        "style",
        "resourceGroup",
        "select",
    }
)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


# --- request context ----------------------------------------------------------------------------


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


Operation = Callable[[Call], Awaitable[Response]]


@dataclass
class Stats:
    """Request counters: total and per operation (GetObject, PutObject ...)."""

    total: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)

    def record(self, operation: str) -> None:
        self.total += 1
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1

    def count(self, operation: str | None = None) -> int:
        if operation is None:
            return self.total
        return self.by_operation.get(operation, 0)

    def reset(self) -> None:
        self.total = 0
        self.by_operation = {}


class App:
    """The request handler of one server."""

    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        faults: Faults,
        stats: Stats,
        virtual_host_bases: tuple[str, ...],
        region: str = "cn-hangzhou",
        direct_io: bool = False,
    ) -> None:
        self.store = store
        self.direct_io = direct_io
        self.verifier = verifier
        self.faults = faults
        self.stats = stats
        self.virtual_host_bases = virtual_host_bases
        self.region = region
        self.endpoint_host = "127.0.0.1"
        self._append_locks: dict[tuple[str, str], trio.Lock] = {}
        self._operations: dict[str, Operation] = {
            "ListBuckets": self._op_list_buckets,
            "PutBucket": self._op_put_bucket,
            "DeleteBucket": self._op_delete_bucket,
            "HeadBucket": self._op_head_bucket,
            "GetBucketAcl": self._op_get_bucket_acl,
            "PutBucketAcl": self._op_put_bucket_acl,
            "GetBucketInfo": self._op_get_bucket_info,
            "GetBucketLocation": self._op_get_bucket_location,
            "GetBucketStat": self._op_get_bucket_stat,
            "ListObjects": self._op_list_objects,
            "ListObjectsV2": self._op_list_objects_v2,
            "GetObject": self._op_get_object,
            "HeadObject": self._op_head_object,
            "GetObjectMeta": self._op_get_object_meta,
            "PutObject": self._op_put_object,
            "DeleteObject": self._op_delete_object,
            "DeleteMultipleObjects": self._op_delete_multiple_objects,
            "CopyObject": self._op_copy_object,
            "AppendObject": self._op_append_object,
            "PutSymlink": self._op_put_symlink,
            "GetSymlink": self._op_get_symlink,
            "GetObjectAcl": self._op_get_object_acl,
            "PutObjectAcl": self._op_put_object_acl,
            "InitiateMultipartUpload": self._op_initiate_multipart_upload,
            "UploadPart": self._op_upload_part,
            "UploadPartCopy": self._op_upload_part_copy,
            "CompleteMultipartUpload": self._op_complete_multipart_upload,
            "AbortMultipartUpload": self._op_abort_multipart_upload,
            "ListParts": self._op_list_parts,
            "ListMultipartUploads": self._op_list_multipart_uploads,
        }

    # --- entry -----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        request.request_id = new_request_id()
        head = request.method == "HEAD"
        try:
            response = await self._handle_routed(self._route(request))
        except OssServerError as exc:
            response = self.error_response(exc, request.request_id, head)
        except (PeerGoneError, ProtocolError):
            raise
        except Exception:
            log.exception("internal error handling %s %s", request.method, request.raw_path)
            response = self.error_response(
                OssServerError(500, "InternalError", "We encountered an internal error."),
                request.request_id,
                head,
            )
        response.headers.append(("x-oss-request-id", request.request_id))
        response.headers.append(("Date", http_date(time.time())))
        response.headers.append(("Server", "AliyunOSS"))
        if head:
            response.head_only = True
        # The path only: a presigned URL's query holds a signature.
        log.debug("%s %s %s -> %d", request.peer, request.method, request.raw_path, response.status)
        return response

    async def _handle_routed(self, call: Call) -> Response:
        self.stats.record(call.operation)
        if self.faults.latency_ms > 0:
            await trio.sleep(self.faults.latency_ms / 1000)
        injected = self.faults.pick_error(call.operation)
        if injected is not None:
            raise _injected_error(*injected)
        self._authorize(call)
        length = call.request.body.declared_length
        if length:
            call.request.body.reset_after = self.faults.pick_reset(call.operation, length)
        response = await self._dispatch(call)
        if response.segments and call.request.method != "HEAD":
            response.reset_at = self.faults.pick_reset(call.operation, response.content_length)
        return response

    def error_response(self, exc: OssServerError, request_id: str, head: bool) -> Response:
        fields = [
            leaf("Code", exc.code),
            leaf("Message", exc.message),
            leaf("RequestId", request_id),
            leaf("HostId", self.endpoint_host),
        ]
        fields.extend(leaf(name, value) for name, value in exc.extra.items())
        fields.append(leaf("EC", exc.ec))
        body = xmlio.document(node("Error", *fields))
        headers = list(exc.headers.items())
        headers.append(("x-oss-ec", exc.ec))
        if exc.status == 304:
            return Response(304, headers)
        if head:
            headers.append(("x-oss-err", base64.b64encode(body).decode("ascii")))
            return Response(exc.status, headers, head_only=True)
        headers.append(("Content-Type", "application/xml"))
        return Response(exc.status, headers, body)

    def bad_request(self, status: int, message: str) -> Response:
        """The answer to a request that could not even be parsed."""
        code = {413: "EntityTooLarge", 431: "RequestHeaderFieldsTooLarge"}.get(status)
        code = code or ("NotImplemented" if status == 501 else "InvalidRequest")
        request_id = new_request_id()
        response = self.error_response(OssServerError(status, code, message), request_id, False)
        response.headers.append(("x-oss-request-id", request_id))
        response.headers.append(("Date", http_date(time.time())))
        return response

    # --- routing -------------------------------------------------------------------------

    def _split_target(self, request: Request) -> tuple[str | None, str | None]:
        host = request.header("host").lower()
        if host.startswith("["):
            hostname = host.split("]")[0] + "]"
        else:
            hostname = host.rsplit(":", 1)[0] if ":" in host else host
        for base in self.virtual_host_bases:
            if hostname.endswith("." + base) and len(hostname) > len(base) + 1:
                bucket = hostname[: -len(base) - 1]
                key = request.path[1:]
                return bucket, key
        path = request.path[1:]
        if not path:
            return None, None
        bucket, _, key = path.partition("/")
        return bucket, key

    def _route(self, request: Request) -> Call:
        bucket, key = self._split_target(request)
        params: dict[str, str | None] = dict(request.query)
        call = Call(request, bucket, key, params)
        method = request.method
        unsupported = UNSUPPORTED_SUBRESOURCES.intersection(params)
        if unsupported:
            raise OssServerError(
                501, "NotImplemented", f"This server does not implement ?{min(unsupported)}."
            )
        if bucket is None:
            if method == "GET":
                call.operation = "ListBuckets"
                return call
            raise _method_not_allowed(method)
        if key:
            if len(key.encode("utf-8", errors="surrogateescape")) > MAX_KEY_BYTES:
                raise OssServerError(
                    400, "InvalidObjectName", "The object name is too long.", ec="0016-00000014"
                )
            call.operation = self._object_operation(method, params, request.headers)
        else:
            call.key = None
            call.operation = self._bucket_operation(method, params)
        return call

    @staticmethod
    def _bucket_operation(method: str, params: dict[str, str | None]) -> str:
        table: dict[str, list[tuple[str, str]]] = {
            "GET": [
                ("acl", "GetBucketAcl"),
                ("bucketInfo", "GetBucketInfo"),
                ("location", "GetBucketLocation"),
                ("uploads", "ListMultipartUploads"),
                ("stat", "GetBucketStat"),
            ],
            "PUT": [("acl", "PutBucketAcl")],
            "POST": [("delete", "DeleteMultipleObjects")],
        }
        for name, operation in table.get(method, []):
            if name in params:
                return operation
        if method == "GET":
            return "ListObjectsV2" if params.get("list-type") == "2" else "ListObjects"
        plain = {"PUT": "PutBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}
        if method in plain:
            return plain[method]
        raise _method_not_allowed(method)

    @staticmethod
    def _object_operation(
        method: str, params: dict[str, str | None], headers: dict[str, str]
    ) -> str:
        if method == "GET":
            if "acl" in params:
                return "GetObjectAcl"
            if "symlink" in params:
                return "GetSymlink"
            if "uploadId" in params:
                return "ListParts"
            return "GetObject"
        if method == "HEAD":
            return "GetObjectMeta" if "objectMeta" in params else "HeadObject"
        if method == "PUT":
            if "acl" in params:
                return "PutObjectAcl"
            if "symlink" in params:
                return "PutSymlink"
            if "uploadId" in params or "partNumber" in params:
                return "UploadPartCopy" if "x-oss-copy-source" in headers else "UploadPart"
            if "x-oss-copy-source" in headers:
                return "CopyObject"
            return "PutObject"
        if method == "POST":
            if "uploads" in params:
                return "InitiateMultipartUpload"
            if "uploadId" in params:
                return "CompleteMultipartUpload"
            if "append" in params:
                return "AppendObject"
            raise invalid_argument("POST to an object needs ?uploads, ?uploadId or ?append.")
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
        raise _method_not_allowed(method)

    # --- authorization -----------------------------------------------------------------------

    _ANONYMOUS_READS = frozenset(
        {
            "GetObject",
            "HeadObject",
            "GetObjectMeta",
            "GetSymlink",
            "ListObjects",
            "ListObjectsV2",
            "ListParts",
            "ListMultipartUploads",
            "GetBucketLocation",
            "HeadBucket",
        }
    )
    _ANONYMOUS_WRITES = frozenset(
        {
            "PutObject",
            "AppendObject",
            "DeleteObject",
            "CopyObject",
            "PutSymlink",
            "UploadPart",
            "UploadPartCopy",
            "InitiateMultipartUpload",
            "CompleteMultipartUpload",
            "AbortMultipartUpload",
            "DeleteMultipleObjects",
        }
    )

    def _authorize(self, call: Call) -> None:
        signed = SignedRequest(
            method=call.request.method,
            bucket=call.bucket,
            key=call.key or "",
            params=call.params,
            headers=call.headers,
        )
        call.principal = self.verifier.verify(signed)
        if not call.principal.anonymous:
            return
        bucket = self.store.get_bucket(call.bucket) if call.bucket else None
        acl = bucket.acl if bucket else "private"
        if call.operation in self._ANONYMOUS_READS and acl in ("public-read", "public-read-write"):
            return
        if call.operation in self._ANONYMOUS_WRITES and acl == "public-read-write":
            return
        raise OssServerError(
            403, "AccessDenied", "You have no right to access this object because of bucket acl."
        )

    # --- dispatch --------------------------------------------------------------------------

    async def _dispatch(self, call: Call) -> Response:
        handler = self._operations[call.operation]
        if call.bucket is not None and call.operation not in ("PutBucket",):
            self._bucket(call.require_bucket())
        return await handler(call)

    def _bucket(self, name: str) -> BucketRecord:
        record = self.store.get_bucket(name)
        if record is None:
            raise no_such_bucket(name)
        return record

    def _object(self, bucket: str, key: str) -> ObjectRecord:
        record = self.store.get_object(bucket, key)
        if record is None:
            raise no_such_key(key)
        return record

    def _resolve_symlink(self, record: ObjectRecord) -> ObjectRecord:
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

    # --- buckets ----------------------------------------------------------------------------

    async def _op_list_buckets(self, call: Call) -> Response:
        prefix = call.param("prefix")
        marker = call.param("marker")
        max_keys = _int_param(call, "max-keys", 100, 1, 1000)
        buckets = self.store.list_buckets(prefix, marker, max_keys + 1)
        truncated = len(buckets) > max_keys
        buckets = buckets[:max_keys]
        items = [self._bucket_xml(bucket) for bucket in buckets]
        body = node(
            "ListAllMyBucketsResult",
            leaf("Prefix", prefix),
            leaf("Marker", marker),
            leaf("MaxKeys", max_keys),
            leaf("IsTruncated", truncated),
            leaf("NextMarker", buckets[-1].name if truncated else ""),
            node("Owner", leaf("ID", OWNER_ID), leaf("DisplayName", OWNER_ID)),
            node("Buckets", *items),
        )
        return xml_response(body)

    def _bucket_xml(self, bucket: BucketRecord) -> str:
        return node(
            "Bucket",
            leaf("CreationDate", xmlio.iso8601(bucket.created)),
            leaf("ExtranetEndpoint", self.endpoint_host),
            leaf("IntranetEndpoint", self.endpoint_host),
            leaf("Location", f"oss-{self.region}"),
            leaf("Name", bucket.name),
            leaf("Region", self.region),
            leaf("StorageClass", bucket.storage_class),
        )

    async def _op_put_bucket(self, call: Call) -> Response:
        name = call.require_bucket()
        if not _BUCKET_NAME.match(name):
            raise OssServerError(
                400,
                "InvalidBucketName",
                "The specified bucket is not valid.",
                extra={"BucketName": name},
            )
        acl = call.headers.get("x-oss-acl", "private")
        if acl not in BUCKET_ACLS:
            raise invalid_argument("no such bucket access control exists", "x-oss-acl", acl)
        storage_class = "Standard"
        body = await call.request.body.read_all(MAX_XML_BODY)
        if body.strip():
            root = xmlio.parse_body(body, "CreateBucketConfiguration")
            storage_class = xmlio.child_text(root, "StorageClass") or "Standard"
            if storage_class not in STORAGE_CLASSES:
                raise invalid_argument("invalid storage class", "StorageClass", storage_class)
        existing = self.store.get_bucket(name)
        if existing is None:
            self.store.create_bucket(name, acl, storage_class)
        elif "x-oss-acl" in call.headers:
            self.store.set_bucket_acl(name, acl)
        return Response(200, [("Location", f"/{name}")])

    async def _op_delete_bucket(self, call: Call) -> Response:
        name = call.require_bucket()
        if not self.store.bucket_is_empty(name):
            raise OssServerError(
                409,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty.",
                extra={"BucketName": name},
            )
        self.store.delete_bucket(name)
        return Response(204)

    async def _op_head_bucket(self, call: Call) -> Response:
        return Response(200)

    async def _op_get_bucket_acl(self, call: Call) -> Response:
        bucket = self._bucket(call.require_bucket())
        return xml_response(acl_xml(bucket.acl))

    async def _op_put_bucket_acl(self, call: Call) -> Response:
        acl = call.headers.get("x-oss-acl", "")
        if acl not in BUCKET_ACLS:
            raise invalid_argument("no such bucket access control exists", "x-oss-acl", acl)
        self.store.set_bucket_acl(call.require_bucket(), acl)
        return Response(200)

    async def _op_get_bucket_info(self, call: Call) -> Response:
        bucket = self._bucket(call.require_bucket())
        body = node(
            "BucketInfo",
            node(
                "Bucket",
                leaf("AccessMonitor", "Disabled"),
                leaf("CreationDate", xmlio.iso8601(bucket.created)),
                leaf("CrossRegionReplication", "Disabled"),
                leaf("DataRedundancyType", "LRS"),
                leaf("ExtranetEndpoint", self.endpoint_host),
                leaf("IntranetEndpoint", self.endpoint_host),
                leaf("Location", f"oss-{self.region}"),
                leaf("Name", bucket.name),
                leaf("Region", self.region),
                leaf("StorageClass", bucket.storage_class),
                leaf("TransferAcceleration", "Disabled"),
                leaf("Versioning", ""),
                node("Owner", leaf("DisplayName", OWNER_ID), leaf("ID", OWNER_ID)),
                node("AccessControlList", leaf("Grant", bucket.acl)),
                leaf("Comment", ""),
            ),
        )
        return xml_response(body)

    async def _op_get_bucket_location(self, call: Call) -> Response:
        return xml_response(leaf("LocationConstraint", f"oss-{self.region}"))

    async def _op_get_bucket_stat(self, call: Call) -> Response:
        count, total = self.store.bucket_usage(call.require_bucket())
        body = node(
            "BucketStat",
            leaf("Storage", total),
            leaf("ObjectCount", count),
            leaf("MultipartUploadCount", 0),
            leaf("LastModifiedTime", int(time.time())),
            leaf("StandardStorage", total),
            leaf("StandardObjectCount", count),
        )
        return xml_response(body)

    # --- listing -----------------------------------------------------------------------------

    async def _op_list_objects(self, call: Call) -> Response:
        return self._list_objects(call, version=1)

    async def _op_list_objects_v2(self, call: Call) -> Response:
        return self._list_objects(call, version=2)

    def _list_objects(self, call: Call, version: int) -> Response:
        bucket = call.require_bucket()
        prefix = call.param("prefix")
        delimiter = call.param("delimiter")
        max_keys = _int_param(call, "max-keys", 100, 0, 1000)
        encoding = call.param("encoding-type")
        if encoding not in ("", "url"):
            raise invalid_argument("encoding-type must be url", "encoding-type", encoding)
        encode = url_encoder(encoding == "url")
        token = call.params.get("continuation-token") or None
        if version == 1:
            after = call.param("marker")
        elif token is not None:
            after = decode_token(token)
        else:
            after = call.param("start-after")
        if max_keys == 0:
            entries: list[ListEntry] = []
            truncated = False
        else:
            entries, truncated = self.store.list_objects(bucket, prefix, delimiter, after, max_keys)
        fetch_owner = version == 1 or call.param("fetch-owner") == "true"
        contents: list[str] = []
        prefixes: list[str] = []
        for entry in entries:
            if entry.summary is None:
                prefixes.append(node("CommonPrefixes", leaf("Prefix", encode(entry.name))))
            else:
                contents.append(contents_xml(entry.summary, encode, fetch_owner))
        fields = [leaf("Name", bucket), leaf("Prefix", encode(prefix))]
        if version == 1:
            fields.append(leaf("Marker", encode(after)))
        else:
            if token is not None:
                fields.append(leaf("ContinuationToken", token))
            if "start-after" in call.params:
                fields.append(leaf("StartAfter", encode(call.param("start-after"))))
        fields.append(leaf("MaxKeys", max_keys))
        fields.append(leaf("Delimiter", encode(delimiter)))
        if encoding:
            fields.append(leaf("EncodingType", "url"))
        fields.append(leaf("IsTruncated", truncated))
        if truncated:
            last = entries[-1].name
            if version == 1:
                fields.append(leaf("NextMarker", encode(last)))
            else:
                fields.append(leaf("NextContinuationToken", encode_token(last)))
        if version == 2:
            fields.append(leaf("KeyCount", len(entries)))
        body = node("ListBucketResult", *fields, *contents, *prefixes)
        return xml_response(body)

    # --- objects: read -------------------------------------------------------------------------

    async def _op_get_object(self, call: Call) -> Response:
        return self._read_object(call, head=False)

    async def _op_head_object(self, call: Call) -> Response:
        return self._read_object(call, head=True)

    async def _op_get_object_meta(self, call: Call) -> Response:
        link = self._object(call.require_bucket(), call.require_key())
        record = self._resolve_symlink(link)
        headers = [
            ("ETag", record.etag),
            ("Last-Modified", http_date(max(record.mtime, link.mtime))),
            ("x-oss-last-access-time", http_date(record.mtime)),
            ("x-oss-hash-crc64ecma", str(record.crc64)),
        ]
        return Response(200, headers, declared_length=record.size)

    def _read_object(self, call: Call, head: bool) -> Response:
        link = self._object(call.require_bucket(), call.require_key())
        record = self._resolve_symlink(link)
        check_conditions(call.headers, record, read=True)
        standard = call.headers.get("x-oss-range-behavior", "").lower() == "standard"
        byte_range = None
        if "range" in call.headers:
            byte_range = parse_range(call.headers["range"], record.size, standard)
        headers = object_headers(link, record)
        for param, header in RESPONSE_OVERRIDES.items():
            if param in call.params and not call.principal.anonymous:
                value = call.param(param)
                if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
                    raise invalid_argument(f"{param} holds a control character", param, "")
                set_header(headers, header, value)
        if byte_range is None:
            status, offset, length = 200, 0, record.size
        else:
            first, last = byte_range
            status, offset, length = 206, first, last - first + 1
            headers.append(("Content-Range", f"bytes {first}-{last}/{record.size}"))
        if head or length == 0:
            return Response(status, headers, declared_length=length if head else None)
        # Lookup and pin happen with no checkpoint in between (see Store.pin).
        files = self.store.object_files(record)
        self.store.pin(files)
        segments = [
            FileSegment(path, first, count)
            for path, first, count in self.store.object_slices(record, offset, length)
        ]
        return Response(status, headers, segments=segments, release=lambda: self.store.unpin(files))

    # --- objects: write ------------------------------------------------------------------------

    async def receive_blob(self, body: Body, limit: int, writer: BlobWriter | None = None) -> Blob:
        """Receive a request body into a fsynced temp file (see ingest.py)."""
        return await receive_blob(self.store, body, limit, direct_io=self.direct_io, writer=writer)

    def _check_md5(self, call: Call, blob: Blob) -> None:
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

    def _check_forbid_overwrite(self, call: Call, bucket: str, key: str) -> None:
        if call.headers.get("x-oss-forbid-overwrite", "").lower() != "true":
            return
        if self.store.get_object(bucket, key) is not None:
            raise OssServerError(
                409,
                "FileAlreadyExists",
                "The object you specified already exists and can not be overwritten.",
            )

    async def _op_put_object(self, call: Call) -> Response:
        bucket, key = call.require_bucket(), call.require_key()
        headers, metadata = object_attributes(call.headers, key)
        acl, storage_class = object_acl_and_class(call.headers)
        self._check_forbid_overwrite(call, bucket, key)
        blob = await self.receive_blob(call.request.body, MAX_OBJECT_SIZE)
        try:
            self._check_md5(call, blob)
            data_file = await trio.to_thread.run_sync(
                self.store.install_object_file, blob.temp_path
            )
        except BaseException:
            blob.temp_path.unlink(missing_ok=True)
            raise
        record = ObjectRecord(
            bucket=bucket,
            key=key,
            data_file=data_file,
            size=blob.size,
            etag=md5_etag(blob.md5),
            crc64=blob.crc64,
            mtime=time.time(),
            object_type="Normal",
            headers=headers,
            metadata=metadata,
            acl=acl,
            storage_class=storage_class,
        )
        self._commit_new(call, record)
        return Response(200, write_headers(record, blob.md5))

    def _commit_new(self, call: Call, record: ObjectRecord) -> None:
        """Commit, re-checking x-oss-forbid-overwrite now that the body is in."""
        try:
            self._check_forbid_overwrite(call, record.bucket, record.key)
        except OssServerError:
            self.store.discard_files(record)
            raise
        self.store.commit_object(record)

    async def _op_delete_object(self, call: Call) -> Response:
        self.store.delete_object(call.require_bucket(), call.require_key())
        return Response(204)

    async def _op_delete_multiple_objects(self, call: Call) -> Response:
        bucket = call.require_bucket()
        body = await call.request.body.read_all(MAX_XML_BODY)
        content_md5 = call.headers.get("content-md5")
        if content_md5 is not None and base64.b64encode(md5_digest(body)).decode() != content_md5:
            raise OssServerError(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
        root = xmlio.parse_body(body, "Delete")
        quiet = (xmlio.child_text(root, "Quiet") or "false").strip().lower() == "true"
        keys = [xmlio.child_text(item, "Key") for item in root.findall("Object")]
        if len(keys) > 1000:
            raise malformed_xml("At most 1000 objects can be deleted in one request.")
        if not keys or any(not key for key in keys):
            raise malformed_xml("Every Object needs a non-empty Key.")
        encode = url_encoder(call.param("encoding-type") == "url")
        deleted: list[str] = []
        for key in keys:
            assert key is not None
            self.store.delete_object(bucket, key)
            if not quiet:
                deleted.append(node("Deleted", leaf("Key", encode(key))))
        fields = [leaf("EncodingType", "url")] if call.param("encoding-type") == "url" else []
        return xml_response(node("DeleteResult", *fields, *deleted))

    async def _op_copy_object(self, call: Call) -> Response:
        bucket, key = call.require_bucket(), call.require_key()
        source = self._copy_source(call)
        directive = call.headers.get("x-oss-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise invalid_argument(
                "x-oss-metadata-directive must be COPY or REPLACE",
                "x-oss-metadata-directive",
                directive,
            )
        if directive == "REPLACE":
            headers, metadata = object_attributes(call.headers, key)
        else:
            headers, metadata = dict(source.headers), dict(source.metadata)
        acl, storage_class = object_acl_and_class(call.headers)
        self._check_forbid_overwrite(call, bucket, key)
        data_file, segments = await self._copy_data(source)
        record = ObjectRecord(
            bucket=bucket,
            key=key,
            data_file=data_file,
            segments=segments,
            size=source.size,
            etag=source.etag,
            crc64=source.crc64,
            mtime=time.time(),
            object_type="Multipart" if source.object_type == "Multipart" else "Normal",
            headers=headers,
            metadata=metadata,
            acl=acl,
            storage_class=storage_class,
        )
        self._commit_new(call, record)
        body = node(
            "CopyObjectResult",
            leaf("ETag", record.etag),
            leaf("LastModified", xmlio.iso8601(record.mtime)),
        )
        response = xml_response(body)
        response.headers.append(("ETag", record.etag))
        response.headers.append(("x-oss-hash-crc64ecma", str(record.crc64)))
        return response

    async def _copy_data(
        self, source: ObjectRecord
    ) -> tuple[str | None, tuple[tuple[str, int], ...]]:
        """(data_file, segments) of a new copy of `source`'s data.

        Objects other than appendable ones never change their files, so a copy is a set of
        hard links (no data moves); an appendable object, or a file system without links,
        gets a real copy into one new file.
        """
        files = self.store.object_files(source)
        self.store.pin(files)
        try:
            if source.object_type != "Appendable":
                try:
                    return self.store.link_object_files(source)
                except OSError as exc:
                    log.debug("hard link failed (%s); copying the data", exc)
            temp_path = await trio.to_thread.run_sync(self.store.copy_object_file, source)
            try:
                data_file = await trio.to_thread.run_sync(self.store.install_object_file, temp_path)
            except BaseException:
                temp_path.unlink(missing_ok=True)
                raise
            return data_file, ()
        finally:
            self.store.unpin(files)

    def _copy_source(self, call: Call) -> ObjectRecord:
        """The (symlink-resolved) object named by x-oss-copy-source, its conditions checked."""
        raw = call.headers["x-oss-copy-source"]
        path, _, query = raw.partition("?")
        if query:
            raise OssServerError(501, "NotImplemented", "Versioned copy sources are not supported.")
        try:
            decoded = unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise invalid_argument("x-oss-copy-source is not UTF-8") from None
        source_bucket, _, source_key = decoded.lstrip("/").partition("/")
        if not source_bucket or not source_key:
            raise invalid_argument(
                "Copy Source must mention the source bucket and key: /sourcebucket/sourcekey.",
                "x-oss-copy-source",
                raw,
            )
        self._bucket(source_bucket)
        if call.principal.anonymous and source_bucket != call.bucket:
            bucket = self._bucket(source_bucket)
            if bucket.acl == "private":
                raise OssServerError(
                    403, "AccessDenied", "You have no right to read the copy source."
                )
        record = self._resolve_symlink(self._object(source_bucket, source_key))
        check_conditions(call.headers, record, read=True, prefix="x-oss-copy-source-")
        return record

    async def _op_append_object(self, call: Call) -> Response:
        bucket, key = call.require_bucket(), call.require_key()
        position_text = call.param("position")
        if not position_text.isdigit():
            raise invalid_argument(
                "position must be a non-negative integer", "position", position_text
            )
        position = int(position_text)
        lock = self._append_locks.setdefault((bucket, key), trio.Lock())
        try:
            async with lock:
                return await self._append(call, bucket, key, position)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._append_locks.pop((bucket, key), None)

    async def _append(self, call: Call, bucket: str, key: str, position: int) -> Response:
        current = self.store.get_object(bucket, key)
        if current is not None and current.object_type != "Appendable":
            raise OssServerError(409, "ObjectNotAppendable", "The object is not appendable")
        expected = current.size if current is not None else 0
        if position != expected:
            raise OssServerError(
                409,
                "PositionNotEqualToLength",
                "Position is not equal to file length",
                headers={"x-oss-next-append-position": str(expected)},
            )
        if current is None:
            headers, metadata = object_attributes(call.headers, key)
            acl, storage_class = object_acl_and_class(call.headers)
            data_file = self.store.new_append_file()
            previous_crc, previous_etag = 0, ""
        else:
            headers, metadata = current.headers, current.metadata
            acl, storage_class = current.acl, current.storage_class
            assert current.data_file is not None
            data_file = current.data_file
            previous_crc, previous_etag = current.crc64, current.etag
        writer = BlobWriter.for_append(self.store.object_path(data_file), position)
        try:
            blob = await self.receive_blob(call.request.body, MAX_OBJECT_SIZE - position, writer)
        except BaseException:
            if current is None:
                self.store.object_path(data_file).unlink(missing_ok=True)
            raise
        self._check_md5(call, blob)
        # Another writer (PUT, DELETE) may have replaced the object while the body came in.
        latest = self.store.get_object(bucket, key)
        if (latest is None) != (current is None) or (
            latest is not None
            and current is not None
            and (latest.data_file, latest.size) != (current.data_file, current.size)
        ):
            if current is None:
                self.store.object_path(data_file).unlink(missing_ok=True)
            raise OssServerError(
                409, "PositionNotEqualToLength", "The object changed during the append"
            )
        chained = md5_digest(previous_etag.encode() + blob.md5).hex().upper()
        record = ObjectRecord(
            bucket=bucket,
            key=key,
            data_file=data_file,
            size=position + blob.size,
            etag=f'"{chained}"',
            crc64=crc64_combine(previous_crc, blob.crc64, blob.size),
            mtime=time.time(),
            object_type="Appendable",
            headers=headers,
            metadata=metadata,
            acl=acl,
            storage_class=storage_class,
        )
        self.store.commit_object(record)
        response_headers = write_headers(record, None)
        response_headers.append(("x-oss-next-append-position", str(record.size)))
        return Response(200, response_headers)

    async def _op_put_symlink(self, call: Call) -> Response:
        bucket, key = call.require_bucket(), call.require_key()
        raw_target = call.headers.get("x-oss-symlink-target")
        if not raw_target:
            raise invalid_argument("x-oss-symlink-target is required", "x-oss-symlink-target")
        target = unquote(raw_target)
        if len(target.encode("utf-8", errors="surrogateescape")) > MAX_KEY_BYTES:
            raise OssServerError(400, "InvalidObjectName", "The symlink target is too long.")
        headers, metadata = object_attributes(call.headers, key)
        acl, storage_class = object_acl_and_class(call.headers)
        etag = md5_etag(md5_digest(target.encode("utf-8", errors="surrogateescape")))
        record = ObjectRecord(
            bucket=bucket,
            key=key,
            data_file=None,
            size=0,
            etag=etag,
            crc64=0,
            mtime=time.time(),
            object_type="Symlink",
            headers=headers,
            metadata=metadata,
            symlink_target=target,
            acl=acl,
            storage_class=storage_class,
        )
        self._commit_new(call, record)
        return Response(200, [("ETag", etag), ("x-oss-hash-crc64ecma", "0")])

    async def _op_get_symlink(self, call: Call) -> Response:
        record = self._object(call.require_bucket(), call.require_key())
        if record.object_type != "Symlink" or record.symlink_target is None:
            raise OssServerError(400, "NotSymlink", "The specified object is not a symlink.")
        headers = [
            ("x-oss-symlink-target", quote(record.symlink_target, safe="")),
            ("ETag", record.etag),
            ("Last-Modified", http_date(record.mtime)),
        ]
        headers.extend((f"x-oss-meta-{name}", value) for name, value in record.metadata.items())
        return Response(200, headers)

    async def _op_get_object_acl(self, call: Call) -> Response:
        record = self._object(call.require_bucket(), call.require_key())
        return xml_response(acl_xml(record.acl))

    async def _op_put_object_acl(self, call: Call) -> Response:
        record = self._object(call.require_bucket(), call.require_key())
        acl = call.headers.get("x-oss-object-acl", "")
        if acl not in OBJECT_ACLS:
            raise invalid_argument("no such object access control exists", "x-oss-object-acl", acl)
        self.store.commit_object(_replace(record, acl=acl))
        return Response(200)

    # --- multipart ----------------------------------------------------------------------------

    def _upload(self, call: Call) -> UploadRecord:
        upload_id = call.param("uploadId")
        upload = self.store.get_upload(upload_id)
        if upload is None or upload.bucket != call.bucket or upload.key != call.key:
            raise OssServerError(
                404,
                "NoSuchUpload",
                "The specified upload does not exist. "
                "The upload ID may be invalid, or the upload may have been "
                "aborted or completed.",
                extra={"UploadId": upload_id},
            )
        return upload

    async def _op_initiate_multipart_upload(self, call: Call) -> Response:
        bucket, key = call.require_bucket(), call.require_key()
        headers, metadata = object_attributes(call.headers, key)
        acl, storage_class = object_acl_and_class(call.headers)
        self._check_forbid_overwrite(call, bucket, key)
        headers["x-oss-object-acl"] = acl
        headers["x-oss-storage-class"] = storage_class
        if call.headers.get("x-oss-forbid-overwrite", "").lower() == "true":
            headers["x-oss-forbid-overwrite"] = "true"
        upload = self.store.create_upload(bucket, key, headers, metadata)
        encode = url_encoder(call.param("encoding-type") == "url")
        fields = [leaf("EncodingType", "url")] if call.param("encoding-type") == "url" else []
        body = node(
            "InitiateMultipartUploadResult",
            *fields,
            leaf("Bucket", bucket),
            leaf("Key", encode(key)),
            leaf("UploadId", upload.upload_id),
        )
        return xml_response(body)

    def _part_number(self, call: Call) -> int:
        text = call.param("partNumber")
        if not text.isdigit() or not 1 <= int(text) <= MAX_PART_NUMBER:
            raise invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive.", "partNumber", text
            )
        return int(text)

    async def _op_upload_part(self, call: Call) -> Response:
        upload = self._upload(call)
        part_number = self._part_number(call)
        blob = await self.receive_blob(call.request.body, MAX_PART_SIZE)
        return await self._commit_part(call, upload, part_number, blob)

    async def _commit_part(
        self, call: Call, upload: UploadRecord, part_number: int, blob: Blob
    ) -> Response:
        try:
            self._check_md5(call, blob)
            data_file = await trio.to_thread.run_sync(self.store.install_part_file, blob.temp_path)
        except BaseException:
            blob.temp_path.unlink(missing_ok=True)
            raise
        if self.store.get_upload(upload.upload_id) is None:  # aborted while receiving
            self.store.part_path(data_file).unlink(missing_ok=True)
            raise OssServerError(
                404,
                "NoSuchUpload",
                "The specified upload does not exist.",
                extra={"UploadId": upload.upload_id},
            )
        part = PartRecord(
            upload.upload_id,
            part_number,
            data_file,
            blob.size,
            md5_etag(blob.md5),
            blob.crc64,
            time.time(),
        )
        self.store.commit_part(part)
        return Response(
            200,
            [
                ("ETag", part.etag),
                ("Content-MD5", base64.b64encode(blob.md5).decode()),
                ("x-oss-hash-crc64ecma", str(part.crc64)),
            ],
        )

    async def _op_upload_part_copy(self, call: Call) -> Response:
        upload = self._upload(call)
        part_number = self._part_number(call)
        source = self._copy_source(call)
        first, last = 0, source.size - 1
        copy_range = call.headers.get("x-oss-copy-source-range")
        if copy_range:
            match = re.fullmatch(r"\s*bytes\s*=\s*(\d+)-(\d*)\s*", copy_range)
            if match is None:
                raise invalid_argument(
                    "x-oss-copy-source-range is malformed", "x-oss-copy-source-range", copy_range
                )
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) else source.size - 1
            if first > last or last >= source.size:
                raise invalid_range(source.size)
        length = last - first + 1
        if length > MAX_PART_SIZE:
            raise OssServerError(400, "EntityTooLarge", "The part is too large.")
        writer = self.store.new_writer()
        files = self.store.object_files(source)
        self.store.pin(files)
        try:
            slices = self.store.object_slices(source, first, length)
            await trio.to_thread.run_sync(copy_slices_to_writer, slices, writer)
            blob = await trio.to_thread.run_sync(writer.finish)
        except BaseException:
            writer.discard()
            raise
        finally:
            self.store.unpin(files)
        response = await self._commit_part(call, upload, part_number, blob)
        etag = dict(response.headers)["ETag"]
        body = node(
            "CopyPartResult", leaf("LastModified", xmlio.iso8601(time.time())), leaf("ETag", etag)
        )
        copy_response = xml_response(body)
        copy_response.headers.extend(
            (name, value) for name, value in response.headers if name != "Content-MD5"
        )
        return copy_response

    async def _op_complete_multipart_upload(self, call: Call) -> Response:
        self._upload(call)
        body = await call.request.body.read_all(MAX_XML_BODY)
        # From here on no checkpoint: the parts validated are the parts committed (a part
        # re-uploaded meanwhile would otherwise replace a file the object is made of).
        upload = self._upload(call)
        bucket, key = upload.bucket, upload.key
        all_parts = self.store.all_parts(upload.upload_id)
        if call.headers.get("x-oss-complete-all", "").lower() == "yes":
            if body.strip():
                raise invalid_argument("With x-oss-complete-all the body must be empty.")
            chosen = [all_parts[number] for number in sorted(all_parts)]
            if not chosen:
                raise invalid_argument("The upload has no parts.")
        else:
            chosen = self._chosen_parts(body, all_parts)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise OssServerError(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size.",
                    extra={"PartNumber": str(part.part_number)},
                )
        if upload.headers.get("x-oss-forbid-overwrite") == "true":
            self._check_forbid_overwrite(call, bucket, key)
        crc = 0
        md5s = b""
        size = 0
        for part in chosen:
            crc = crc64_combine(crc, part.crc64, part.size)
            md5s += bytes.fromhex(part.etag.strip('"'))
            size += part.size
        etag = f'"{md5_digest(md5s).hex().upper()}-{len(chosen)}"'
        headers = dict(upload.headers)
        acl = headers.pop("x-oss-object-acl", "default")
        storage_class = headers.pop("x-oss-storage-class", "Standard")
        headers.pop("x-oss-forbid-overwrite", None)
        record = ObjectRecord(
            bucket=bucket,
            key=key,
            data_file=None,
            segments=tuple(self.store.part_segment(part) for part in chosen),
            size=size,
            etag=etag,
            crc64=crc,
            mtime=time.time(),
            object_type="Multipart",
            headers=headers,
            metadata=dict(upload.metadata),
            acl=acl,
            storage_class=storage_class,
        )
        # The parts were fsynced as they arrived: completing moves no data, it is one index
        # transaction (object in, upload out).
        self.store.complete_upload(upload.upload_id, record)
        encoding = call.param("encoding-type") == "url"
        encode = url_encoder(encoding)
        fields = [leaf("EncodingType", "url")] if encoding else []
        result = node(
            "CompleteMultipartUploadResult",
            *fields,
            leaf("Location", f"http://{self.endpoint_host}/{bucket}/{quote(key)}"),
            leaf("Bucket", bucket),
            leaf("Key", encode(key)),
            leaf("ETag", etag),
        )
        response = xml_response(result)
        response.headers.append(("ETag", etag))
        response.headers.append(("x-oss-hash-crc64ecma", str(crc)))
        return response

    @staticmethod
    def _chosen_parts(body: bytes, all_parts: dict[int, PartRecord]) -> list[PartRecord]:
        root = xmlio.parse_body(body, "CompleteMultipartUpload")
        chosen: list[PartRecord] = []
        previous = 0
        for item in root.findall("Part"):
            number_text = (xmlio.child_text(item, "PartNumber") or "").strip()
            etag = (xmlio.child_text(item, "ETag") or "").strip()
            if not number_text.isdigit():
                raise malformed_xml("PartNumber must be a positive integer.")
            number = int(number_text)
            if number <= previous:
                raise OssServerError(
                    400,
                    "InvalidPartOrder",
                    "The list of parts was not in "
                    "ascending order. The parts list must be specified in "
                    "order by part number.",
                )
            previous = number
            part = all_parts.get(number)
            if part is None or part.etag.strip('"').upper() != etag.strip('"').upper():
                raise OssServerError(
                    400,
                    "InvalidPart",
                    "One or more of the specified parts "
                    "could not be found or the specified entity tag might not "
                    "have matched the part's entity tag.",
                    extra={"PartNumber": number_text, "ETag": etag},
                )
            chosen.append(part)
        if not chosen:
            raise malformed_xml("CompleteMultipartUpload lists no parts.")
        return chosen

    async def _op_abort_multipart_upload(self, call: Call) -> Response:
        upload = self._upload(call)
        self.store.delete_upload(upload.upload_id)
        return Response(204)

    async def _op_list_parts(self, call: Call) -> Response:
        upload = self._upload(call)
        marker = _int_param(call, "part-number-marker", 0, 0, MAX_PART_NUMBER)
        max_parts = _int_param(call, "max-parts", 1000, 1, 1000)
        parts = self.store.list_parts(upload.upload_id, marker, max_parts + 1)
        truncated = len(parts) > max_parts
        parts = parts[:max_parts]
        encode = url_encoder(call.param("encoding-type") == "url")
        items = [
            node(
                "Part",
                leaf("PartNumber", part.part_number),
                leaf("LastModified", xmlio.iso8601(part.mtime)),
                leaf("ETag", part.etag),
                leaf("HashCrc64ecma", part.crc64),
                leaf("Size", part.size),
            )
            for part in parts
        ]
        fields = [leaf("EncodingType", "url")] if call.param("encoding-type") == "url" else []
        body = node(
            "ListPartsResult",
            *fields,
            leaf("Bucket", upload.bucket),
            leaf("Key", encode(upload.key)),
            leaf("UploadId", upload.upload_id),
            leaf("StorageClass", upload.headers.get("x-oss-storage-class", "Standard")),
            leaf("PartNumberMarker", marker),
            leaf("NextPartNumberMarker", parts[-1].part_number if parts else marker),
            leaf("MaxParts", max_parts),
            leaf("IsTruncated", truncated),
            *items,
        )
        return xml_response(body)

    async def _op_list_multipart_uploads(self, call: Call) -> Response:
        bucket = call.require_bucket()
        prefix = call.param("prefix")
        delimiter = call.param("delimiter")
        key_marker = call.param("key-marker")
        upload_id_marker = call.param("upload-id-marker") if key_marker else ""
        max_uploads = _int_param(call, "max-uploads", 1000, 1, 1000)
        entries, truncated = self.store.list_uploads(
            bucket, prefix, delimiter, key_marker, upload_id_marker, max_uploads
        )
        encoding = call.param("encoding-type") == "url"
        encode = url_encoder(encoding)
        uploads: list[str] = []
        prefixes: list[str] = []
        next_key, next_id = "", ""
        for entry in entries:
            if isinstance(entry, str):
                prefixes.append(node("CommonPrefixes", leaf("Prefix", encode(entry))))
                next_key, next_id = entry, ""
            else:
                uploads.append(
                    node(
                        "Upload",
                        leaf("Key", encode(entry.key)),
                        leaf("UploadId", entry.upload_id),
                        leaf("StorageClass", entry.headers.get("x-oss-storage-class", "Standard")),
                        leaf("Initiated", xmlio.iso8601(entry.initiated)),
                    )
                )
                next_key, next_id = entry.key, entry.upload_id
        if not truncated:
            next_key, next_id = "", ""
        fields = [leaf("EncodingType", "url")] if encoding else []
        body = node(
            "ListMultipartUploadsResult",
            *fields,
            leaf("Bucket", bucket),
            leaf("KeyMarker", encode(key_marker)),
            leaf("UploadIdMarker", upload_id_marker),
            leaf("NextKeyMarker", encode(next_key)),
            leaf("NextUploadIdMarker", next_id),
            leaf("Delimiter", encode(delimiter)),
            leaf("Prefix", encode(prefix)),
            leaf("MaxUploads", max_uploads),
            leaf("IsTruncated", truncated),
            *uploads,
            *prefixes,
        )
        return xml_response(body)


# --- helpers ------------------------------------------------------------------------------------


def _injected_error(status: int, code: str) -> OssServerError:
    if code == "SlowDown":
        return OssServerError(status, code, "Injected fault: please reduce your request rate.")
    return OssServerError(status, code, "Injected fault: we encountered an internal error.")


def _method_not_allowed(method: str) -> OssServerError:
    return OssServerError(
        405,
        "MethodNotAllowed",
        f"The specified method ({method}) is not allowed against this resource.",
    )


def _int_param(call: Call, name: str, default: int, low: int, high: int) -> int:
    text = call.params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise invalid_argument(f"{name} must be an integer between {low} and {high}", name, text)
    return int(text)


def _replace(record: ObjectRecord, *, acl: str) -> ObjectRecord:
    return dataclasses.replace(record, acl=acl)
