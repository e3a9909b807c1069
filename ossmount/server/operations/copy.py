"""Server-side copy: CopyObject, and the copy source that UploadPartCopy shares with it."""

from __future__ import annotations

import logging
import time
from urllib.parse import unquote

import trio

from ossmount.server import xmlio
from ossmount.server.errors import OssServerError, invalid_argument
from ossmount.server.http import Response
from ossmount.server.operations.common import Call, ServerContext
from ossmount.server.protocol import (
    check_conditions,
    object_acl_and_class,
    object_attributes,
    tags_from_header,
    xml_response,
)
from ossmount.server.store import ObjectRecord
from ossmount.server.xmlio import leaf, node

log = logging.getLogger(__name__)


async def copy_object(server: ServerContext, call: Call) -> Response:
    bucket, key = call.require_bucket(), call.require_key()
    source = copy_source(server, call)
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
    tag_directive = call.headers.get("x-oss-tagging-directive", "COPY").upper()
    if tag_directive not in ("COPY", "REPLACE"):
        raise invalid_argument(
            "x-oss-tagging-directive must be COPY or REPLACE",
            "x-oss-tagging-directive",
            tag_directive,
        )
    tags = tags_from_header(call.headers) if tag_directive == "REPLACE" else dict(source.tags)
    acl, storage_class = object_acl_and_class(call.headers)
    server.check_forbid_overwrite(call, bucket, key)
    inline = server.store.read_body(source) if source.body_id is not None else None
    data_file, segments = (None, ()) if inline is not None else await _copy_data(server, source)
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
        tags=tags,
    )
    server.commit_new(call, record, inline)
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
    server: ServerContext, source: ObjectRecord
) -> tuple[str | None, tuple[tuple[str, int], ...]]:
    """(data_file, segments) of a new copy of `source`'s data.

    Objects other than appendable ones never change their files, so a copy is a set of
    hard links (no data moves); an appendable object, or a file system without links,
    gets a real copy into one new file.
    """
    store = server.store
    files = store.object_files(source)
    store.pin(files)
    try:
        if source.object_type != "Appendable":
            try:
                return store.link_object_files(source)
            except OSError as exc:
                log.debug("hard link failed (%s); copying the data", exc)
        temp_path = await trio.to_thread.run_sync(store.copy_object_file, source)
        try:
            data_file = await trio.to_thread.run_sync(store.install_object_file, temp_path)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        return data_file, ()
    finally:
        store.unpin(files)


def copy_source(server: ServerContext, call: Call) -> ObjectRecord:
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
    server.bucket(source_bucket)
    if call.principal.anonymous and source_bucket != call.bucket:
        bucket = server.bucket(source_bucket)
        if bucket.acl == "private":
            raise OssServerError(403, "AccessDenied", "You have no right to read the copy source.")
    record = server.resolve_symlink(server.object(source_bucket, source_key))
    check_conditions(call.headers, record, read=True, prefix="x-oss-copy-source-")
    return record
