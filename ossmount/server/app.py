"""The OSS REST API: routing a request to its operation (the operations are in operations/).

Routing follows OSS: the bucket comes from the Host header (virtual-host style,
``bucket.<base>``) or from the first path segment (path style); the rest of the path is the
key; sub-resource query parameters (``?uploads``, ``?append``, ``?symlink`` ...) pick the
operation. Every answer carries ``x-oss-request-id``; every failure is the OSS error XML (in
the base64 ``x-oss-err`` header for HEAD).
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field

import trio

from ossmount.server import xmlio
from ossmount.server.auth import SignedRequest, Verifier
from ossmount.server.errors import OssServerError, invalid_argument
from ossmount.server.faults import Faults
from ossmount.server.http import PeerGoneError, ProtocolError, Request, Response
from ossmount.server.operations import OPERATIONS, Call, ServerContext
from ossmount.server.operations.common import MAX_KEY_BYTES
from ossmount.server.protocol import http_date, new_request_id
from ossmount.server.store import Store
from ossmount.server.xmlio import leaf, node

log = logging.getLogger(__name__)

# Sub-resources this server does not implement: answered with NotImplemented, never mistaken
# for a plain GET/PUT of the bucket or object. Some are implemented in one place only
# (IMPLEMENTED_SUBRESOURCES), and stay NotImplemented elsewhere.
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
        "vod",
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
# (sub-resource, on an object?, method or None for any) -> implemented there, with the
# sub-resources it brings along (live channels take ?comp=stat and ?comp=history).
IMPLEMENTED_SUBRESOURCES: dict[tuple[str, bool, str | None], frozenset[str]] = {
    ("live", False, "GET"): frozenset({"live"}),
    ("live", True, None): frozenset({"live", "comp"}),
    ("vod", True, "GET"): frozenset({"vod"}),
    ("vod", True, "POST"): frozenset({"vod"}),
    ("tagging", True, None): frozenset({"tagging"}),
    ("versioning", False, "GET"): frozenset({"versioning"}),
}
SUBRESOURCE_NOTES = {
    "versioning": " Versioning is never enabled here (GetBucketVersioning answers so).",
    "live": " Live channels are stored and listed, but RTMP ingest is not implemented.",
}


def unsupported_subresource(params: dict[str, str | None], on_object: bool, method: str) -> str:
    """The first sub-resource of the request this server does not implement there, or ""."""
    unsupported = set(UNSUPPORTED_SUBRESOURCES.intersection(params))
    for name in list(unsupported):
        implemented = IMPLEMENTED_SUBRESOURCES.get(
            (name, on_object, method)
        ) or IMPLEMENTED_SUBRESOURCES.get((name, on_object, None))
        if implemented:
            unsupported -= implemented
    return min(unsupported) if unsupported else ""


@dataclass
class Stats:
    """Request counters: total and per operation (GetObject, PutObject ...), and the bytes of
    the answers' bodies per operation (the Content-Length of each successful non-HEAD answer:
    what the client asked for, whether or not it read it all)."""

    total: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    body_bytes_by_operation: dict[str, int] = field(default_factory=dict)

    def record(self, operation: str) -> None:
        self.total += 1
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1

    def record_body(self, operation: str, length: int) -> None:
        if length:
            counts = self.body_bytes_by_operation
            counts[operation] = counts.get(operation, 0) + length

    def body_bytes(self, operation: str | None = None) -> int:
        if operation is None:
            return sum(self.body_bytes_by_operation.values())
        return self.body_bytes_by_operation.get(operation, 0)

    def count(self, operation: str | None = None) -> int:
        if operation is None:
            return self.total
        return self.by_operation.get(operation, 0)

    def reset(self) -> None:
        self.total = 0
        self.by_operation = {}
        self.body_bytes_by_operation = {}


class App:
    """The request handler of one server: routes a request to its operation (operations/),
    applies the injected faults, checks who may call it, and answers failures with the OSS
    error XML."""

    def __init__(
        self,
        store: Store,
        verifier: Verifier,
        faults: Faults,
        stats: Stats,
        virtual_host_bases: tuple[str, ...],
        endpoint_host: str,
        region: str = "cn-hangzhou",
        direct_io: bool = False,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.faults = faults
        self.stats = stats
        self.virtual_host_bases = virtual_host_bases
        self.server = ServerContext(store, region, endpoint_host, direct_io)

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
        if call.request.method != "HEAD":
            self.stats.record_body(call.operation, response.content_length)
            if response.segments or response.object_data:
                response.reset_at = self.faults.pick_reset(call.operation, response.content_length)
        return response

    def error_response(self, exc: OssServerError, request_id: str, head: bool) -> Response:
        fields = [
            leaf("Code", exc.code),
            leaf("Message", exc.message),
            leaf("RequestId", request_id),
            leaf("HostId", self.server.endpoint_host),
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
        unsupported = unsupported_subresource(params, bool(key), method)
        if unsupported:
            where = "an object" if key else "a bucket"
            raise OssServerError(
                501,
                "NotImplemented",
                f"This server does not implement {method} ?{unsupported} on {where}."
                + SUBRESOURCE_NOTES.get(unsupported, ""),
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
            if key.startswith("\\"):
                raise OssServerError(
                    400, "InvalidObjectName", "The object name cannot start with a backslash."
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
                ("live", "ListLiveChannel"),
                ("versioning", "GetBucketVersioning"),
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
        if "live" in params:
            return App._live_channel_operation(method, params)
        if "tagging" in params:
            tagging = {
                "GET": "GetObjectTagging",
                "PUT": "PutObjectTagging",
                "DELETE": "DeleteObjectTagging",
            }
            if method not in tagging:
                raise _method_not_allowed(method)
            return tagging[method]
        if "vod" in params:
            return "GetVodPlaylist" if method == "GET" else "PostVodPlaylist"
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

    @staticmethod
    def _live_channel_operation(method: str, params: dict[str, str | None]) -> str:
        if method == "PUT":
            return "PutLiveChannelStatus" if "status" in params else "PutLiveChannel"
        if method == "DELETE":
            return "DeleteLiveChannel"
        if method == "GET":
            comp = params.get("comp")
            if comp is None:
                return "GetLiveChannelInfo"
            by_comp = {"stat": "GetLiveChannelStat", "history": "GetLiveChannelHistory"}
            if comp in by_comp:
                return by_comp[comp]
            raise invalid_argument("comp must be stat or history", "comp", comp)
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
        call.principal = self.verifier.verify(signed, region=self.server.region)
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
        handler = OPERATIONS[call.operation]
        if call.bucket is not None and call.operation not in ("PutBucket",):
            self.server.bucket(call.require_bucket())
        return await handler(self.server, call)


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
