"""The service and bucket operations: ListBuckets, Put/Delete/HeadBucket, the bucket ACL,
GetBucketInfo, GetBucketLocation and GetBucketStat."""

from __future__ import annotations

import re
import time

from ossmount.server import xmlio
from ossmount.server.errors import OssServerError, invalid_argument
from ossmount.server.http import Response
from ossmount.server.operations.common import MAX_XML_BODY, Call, ServerContext, int_param
from ossmount.server.protocol import BUCKET_ACLS, OWNER_ID, STORAGE_CLASSES, acl_xml, xml_response
from ossmount.server.store import BucketRecord
from ossmount.server.xmlio import leaf, node

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


async def list_buckets(server: ServerContext, call: Call) -> Response:
    prefix = call.param("prefix")
    marker = call.param("marker")
    max_keys = int_param(call, "max-keys", 100, 1, 1000)
    buckets = server.store.list_buckets(prefix, marker, max_keys + 1)
    truncated = len(buckets) > max_keys
    buckets = buckets[:max_keys]
    items = [_bucket_xml(server, bucket) for bucket in buckets]
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


def _bucket_xml(server: ServerContext, bucket: BucketRecord) -> str:
    return node(
        "Bucket",
        leaf("CreationDate", xmlio.iso8601(bucket.created)),
        leaf("ExtranetEndpoint", server.endpoint_host),
        leaf("IntranetEndpoint", server.endpoint_host),
        leaf("Location", f"oss-{server.region}"),
        leaf("Name", bucket.name),
        leaf("Region", server.region),
        leaf("StorageClass", bucket.storage_class),
    )


async def put_bucket(server: ServerContext, call: Call) -> Response:
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
    existing = server.store.get_bucket(name)
    if existing is None:
        server.store.create_bucket(name, acl, storage_class)
    elif "x-oss-acl" in call.headers:
        server.store.set_bucket_acl(name, acl)
    return Response(200, [("Location", f"/{name}")])


async def delete_bucket(server: ServerContext, call: Call) -> Response:
    name = call.require_bucket()
    if not server.store.bucket_is_empty(name):
        raise OssServerError(
            409,
            "BucketNotEmpty",
            "The bucket you tried to delete is not empty.",
            extra={"BucketName": name},
        )
    server.store.delete_bucket(name)
    return Response(204)


async def head_bucket(server: ServerContext, call: Call) -> Response:
    return Response(200)


async def get_bucket_acl(server: ServerContext, call: Call) -> Response:
    bucket = server.bucket(call.require_bucket())
    return xml_response(acl_xml(bucket.acl))


async def put_bucket_acl(server: ServerContext, call: Call) -> Response:
    acl = call.headers.get("x-oss-acl", "")
    if acl not in BUCKET_ACLS:
        raise invalid_argument("no such bucket access control exists", "x-oss-acl", acl)
    server.store.set_bucket_acl(call.require_bucket(), acl)
    return Response(200)


async def get_bucket_info(server: ServerContext, call: Call) -> Response:
    bucket = server.bucket(call.require_bucket())
    body = node(
        "BucketInfo",
        node(
            "Bucket",
            leaf("AccessMonitor", "Disabled"),
            leaf("CreationDate", xmlio.iso8601(bucket.created)),
            leaf("CrossRegionReplication", "Disabled"),
            leaf("DataRedundancyType", "LRS"),
            leaf("ExtranetEndpoint", server.endpoint_host),
            leaf("IntranetEndpoint", server.endpoint_host),
            leaf("Location", f"oss-{server.region}"),
            leaf("Name", bucket.name),
            leaf("Region", server.region),
            leaf("StorageClass", bucket.storage_class),
            leaf("TransferAcceleration", "Disabled"),
            leaf("Versioning", ""),
            node("Owner", leaf("DisplayName", OWNER_ID), leaf("ID", OWNER_ID)),
            node("AccessControlList", leaf("Grant", bucket.acl)),
            leaf("Comment", ""),
        ),
    )
    return xml_response(body)


async def get_bucket_location(server: ServerContext, call: Call) -> Response:
    return xml_response(leaf("LocationConstraint", f"oss-{server.region}"))


async def get_bucket_stat(server: ServerContext, call: Call) -> Response:
    count, total = server.store.bucket_usage(call.require_bucket())
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


async def get_bucket_versioning(server: ServerContext, call: Call) -> Response:
    """Versioning is never enabled here: the configuration has no Status (as for a bucket
    whose versioning was never switched on)."""
    return xml_response(node("VersioningConfiguration"))
