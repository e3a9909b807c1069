"""The object operations: Get/Head/GetObjectMeta, PutObject, AppendObject, Delete and
DeleteMultipleObjects, Put/GetSymlink and the object ACL. (CopyObject is in copy.py.)"""

from __future__ import annotations

import base64
import dataclasses
import os
import time
import zlib
from collections.abc import AsyncGenerator
from urllib.parse import quote, unquote

import trio

from ossmount.oss.crc64 import crc64_combine
from ossmount.server import xmlio
from ossmount.server.errors import OssServerError, invalid_argument, malformed_xml
from ossmount.server.http import FileSegment, Response
from ossmount.server.operations.common import (
    MAX_KEY_BYTES,
    MAX_OBJECT_SIZE,
    MAX_XML_BODY,
    Call,
    ServerContext,
    check_md5,
    url_encoding,
)
from ossmount.server.protocol import (
    OBJECT_ACLS,
    RESPONSE_OVERRIDES,
    acl_xml,
    check_conditions,
    http_date,
    object_acl_and_class,
    object_attributes,
    object_headers,
    parse_range,
    set_header,
    should_gzip,
    tags_from_header,
    write_headers,
    xml_response,
)
from ossmount.server.store import BlobWriter, ObjectRecord, md5_digest, md5_etag
from ossmount.server.xmlio import leaf, node

# --- read ----------------------------------------------------------------------------------------


async def get_object(server: ServerContext, call: Call) -> Response:
    return _read_object(server, call, head=False)


async def head_object(server: ServerContext, call: Call) -> Response:
    return _read_object(server, call, head=True)


async def get_object_meta(server: ServerContext, call: Call) -> Response:
    link = server.object(call.require_bucket(), call.require_key())
    record = server.resolve_symlink(link)
    headers = [
        ("ETag", record.etag),
        ("Last-Modified", http_date(max(record.mtime, link.mtime))),
        ("x-oss-last-access-time", http_date(record.mtime)),
        ("x-oss-hash-crc64ecma", str(record.crc64)),
    ]
    return Response(200, headers, declared_length=record.size)


def _read_object(server: ServerContext, call: Call, head: bool) -> Response:
    link = server.object(call.require_bucket(), call.require_key())
    record = server.resolve_symlink(link)
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
    store = server.store
    if record.body_id is not None:
        data = store.read_body(record)[offset : offset + length]
        if status == 200 and should_gzip(call.headers, headers, length):
            headers.append(("Content-Encoding", "gzip"))
            return Response(200, headers, chunks=_gzipped_bytes(data))
        return Response(status, headers, body=data, object_data=True)
    # Lookup and pin happen with no checkpoint in between (see Store.pin).
    files = store.object_files(record)
    store.pin(files)
    slices = store.object_slices(record, offset, length)
    if status == 200 and should_gzip(call.headers, headers, length):
        headers.append(("Content-Encoding", "gzip"))
        return Response(200, headers, chunks=_gzipped(slices), release=lambda: store.unpin(files))
    segments = [FileSegment(path, first, count) for path, first, count in slices]
    return Response(status, headers, segments=segments, release=lambda: store.unpin(files))


GZIP_READ = 1 << 20


async def _gzipped_bytes(data: bytes) -> AsyncGenerator[bytes, None]:
    """The gzip stream of a small body (at most INLINE_LIMIT bytes: compressed in place)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
    yield compressor.compress(data) + compressor.flush()


async def _gzipped(slices: list[tuple[str, int, int]]) -> AsyncGenerator[bytes, None]:
    """The gzip stream of the file slices, read and compressed a MiB at a time in a worker
    thread."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing

    def compress(path: str, offset: int, count: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, count, offset)
        finally:
            os.close(fd)
        if len(data) != count:
            raise OSError(f"{path} shrank while being sent")
        return compressor.compress(data)

    for path, first, count in slices:
        for start in range(first, first + count, GZIP_READ):
            size = min(GZIP_READ, first + count - start)
            yield await trio.to_thread.run_sync(compress, path, start, size)
    yield compressor.flush()


# --- write ---------------------------------------------------------------------------------------


async def put_object(server: ServerContext, call: Call) -> Response:
    bucket, key = call.require_bucket(), call.require_key()
    headers, metadata = object_attributes(call.headers, key)
    acl, storage_class = object_acl_and_class(call.headers)
    tags = tags_from_header(call.headers)
    server.check_forbid_overwrite(call, bucket, key)
    blob = await server.receive_object_body(call.request.body, MAX_OBJECT_SIZE)
    record = ObjectRecord(
        bucket=bucket,
        key=key,
        data_file=blob.data_file,
        size=blob.size,
        etag=md5_etag(blob.md5),
        crc64=blob.crc64,
        mtime=time.time(),
        object_type="Normal",
        headers=headers,
        metadata=metadata,
        acl=acl,
        storage_class=storage_class,
        tags=tags,
    )
    try:
        check_md5(call, blob)
    except OssServerError:
        server.store.discard_files(record)
        raise
    server.commit_new(call, record, blob.inline)
    return Response(200, write_headers(record, blob.md5))


async def append_object(server: ServerContext, call: Call) -> Response:
    bucket, key = call.require_bucket(), call.require_key()
    position_text = call.param("position")
    if not position_text.isdigit():
        raise invalid_argument("position must be a non-negative integer", "position", position_text)
    position = int(position_text)
    lock = server.append_locks.setdefault((bucket, key), trio.Lock())
    try:
        async with lock:
            return await _append(server, call, bucket, key, position)
    finally:
        if not lock.locked() and not lock.statistics().tasks_waiting:
            server.append_locks.pop((bucket, key), None)


async def _append(
    server: ServerContext, call: Call, bucket: str, key: str, position: int
) -> Response:
    store = server.store
    current = store.get_object(bucket, key)
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
    # The first append creates the object with its attributes and tags; later appends keep
    # them and ignore those they carry (as OSS does).
    if current is None:
        headers, metadata = object_attributes(call.headers, key)
        acl, storage_class = object_acl_and_class(call.headers)
        tags = tags_from_header(call.headers)
        data_file = store.new_append_file()
        previous_crc, previous_etag = 0, ""
    else:
        headers, metadata = current.headers, current.metadata
        acl, storage_class = current.acl, current.storage_class
        tags = current.tags
        assert current.data_file is not None
        data_file = current.data_file
        previous_crc, previous_etag = current.crc64, current.etag
    writer = BlobWriter.for_append(store.object_path(data_file), position)
    try:
        blob = await server.receive_blob(call.request.body, MAX_OBJECT_SIZE - position, writer)
    except BaseException:
        if current is None:
            store.object_path(data_file).unlink(missing_ok=True)
        raise
    check_md5(call, blob)
    # Another writer (PUT, DELETE) may have replaced the object while the body came in.
    latest = store.get_object(bucket, key)
    if (latest is None) != (current is None) or (
        latest is not None
        and current is not None
        and (latest.data_file, latest.size) != (current.data_file, current.size)
    ):
        if current is None:
            store.object_path(data_file).unlink(missing_ok=True)
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
        tags=tags,
    )
    store.commit_object(record)
    response_headers = write_headers(record, None)
    response_headers.append(("x-oss-next-append-position", str(record.size)))
    return Response(200, response_headers)


# --- delete --------------------------------------------------------------------------------------


async def delete_object(server: ServerContext, call: Call) -> Response:
    server.store.delete_object(call.require_bucket(), call.require_key())
    return Response(204)


async def delete_multiple_objects(server: ServerContext, call: Call) -> Response:
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
    encode, fields = url_encoding(call)
    deleted: list[str] = []
    for key in keys:
        assert key is not None
        server.store.delete_object(bucket, key)
        if not quiet:
            deleted.append(node("Deleted", leaf("Key", encode(key))))
    return xml_response(node("DeleteResult", *fields, *deleted))


# --- symlinks and ACLs ---------------------------------------------------------------------------


async def put_symlink(server: ServerContext, call: Call) -> Response:
    bucket, key = call.require_bucket(), call.require_key()
    raw_target = call.headers.get("x-oss-symlink-target")
    if not raw_target:
        raise invalid_argument("x-oss-symlink-target is required", "x-oss-symlink-target")
    target = unquote(raw_target)
    if len(target.encode("utf-8", errors="surrogateescape")) > MAX_KEY_BYTES:
        raise OssServerError(400, "InvalidObjectName", "The symlink target is too long.")
    headers, metadata = object_attributes(call.headers, key)
    acl, storage_class = object_acl_and_class(call.headers)
    tags = tags_from_header(call.headers)
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
        tags=tags,
    )
    server.commit_new(call, record)
    return Response(200, [("ETag", etag), ("x-oss-hash-crc64ecma", "0")])


async def get_symlink(server: ServerContext, call: Call) -> Response:
    record = server.object(call.require_bucket(), call.require_key())
    if record.object_type != "Symlink" or record.symlink_target is None:
        raise OssServerError(400, "NotSymlink", "The specified object is not a symlink.")
    headers = [
        ("x-oss-symlink-target", quote(record.symlink_target, safe="")),
        ("ETag", record.etag),
        ("Last-Modified", http_date(record.mtime)),
    ]
    headers.extend((f"x-oss-meta-{name}", value) for name, value in record.metadata.items())
    return Response(200, headers)


async def get_object_acl(server: ServerContext, call: Call) -> Response:
    record = server.object(call.require_bucket(), call.require_key())
    return xml_response(acl_xml(record.acl))


async def put_object_acl(server: ServerContext, call: Call) -> Response:
    record = server.object(call.require_bucket(), call.require_key())
    acl = call.headers.get("x-oss-object-acl", "")
    if acl not in OBJECT_ACLS:
        raise invalid_argument("no such object access control exists", "x-oss-object-acl", acl)
    server.store.commit_object(dataclasses.replace(record, acl=acl))
    return Response(200)
