"""Multipart uploads: Initiate, UploadPart, UploadPartCopy, Complete, Abort, ListParts and
ListMultipartUploads. Parts are files of their own; completing an upload makes the object of
its part files in one index transaction and moves no data."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import quote

import trio

from ossmount.oss.crc64 import crc64_combine
from ossmount.server import xmlio
from ossmount.server.errors import OssServerError, invalid_argument, malformed_xml
from ossmount.server.http import Response
from ossmount.server.operations.common import (
    MAX_PART_NUMBER,
    MAX_PART_SIZE,
    MAX_XML_BODY,
    MIN_PART_SIZE,
    Call,
    ServerContext,
    check_md5,
    int_param,
    url_encoding,
)
from ossmount.server.operations.copy import copy_source
from ossmount.server.protocol import (
    invalid_range,
    object_acl_and_class,
    object_attributes,
    tags_from_header,
    xml_response,
)
from ossmount.server.store import (
    Blob,
    ObjectRecord,
    PartRecord,
    UploadRecord,
    copy_slices_to_writer,
    md5_digest,
    md5_etag,
)
from ossmount.server.xmlio import leaf, node


def _upload(server: ServerContext, call: Call) -> UploadRecord:
    upload_id = call.param("uploadId")
    upload = server.store.get_upload(upload_id)
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


async def initiate_multipart_upload(server: ServerContext, call: Call) -> Response:
    bucket, key = call.require_bucket(), call.require_key()
    headers, metadata = object_attributes(call.headers, key)
    acl, storage_class = object_acl_and_class(call.headers)
    server.check_forbid_overwrite(call, bucket, key)
    headers["x-oss-object-acl"] = acl
    headers["x-oss-storage-class"] = storage_class
    tags = tags_from_header(call.headers)
    if tags:
        headers["x-oss-tagging"] = json.dumps(tags)
    if call.headers.get("x-oss-forbid-overwrite", "").lower() == "true":
        headers["x-oss-forbid-overwrite"] = "true"
    upload = server.store.create_upload(bucket, key, headers, metadata)
    encode, fields = url_encoding(call)
    body = node(
        "InitiateMultipartUploadResult",
        *fields,
        leaf("Bucket", bucket),
        leaf("Key", encode(key)),
        leaf("UploadId", upload.upload_id),
    )
    return xml_response(body)


# --- parts ---------------------------------------------------------------------------------------


def _part_number(call: Call) -> int:
    text = call.param("partNumber")
    if not text.isdigit() or not 1 <= int(text) <= MAX_PART_NUMBER:
        raise invalid_argument(
            "Part number must be an integer between 1 and 10000, inclusive.", "partNumber", text
        )
    return int(text)


async def upload_part(server: ServerContext, call: Call) -> Response:
    upload = _upload(server, call)
    part_number = _part_number(call)
    blob = await server.receive_blob(call.request.body, MAX_PART_SIZE)
    return await _commit_part(server, call, upload, part_number, blob)


async def _commit_part(
    server: ServerContext, call: Call, upload: UploadRecord, part_number: int, blob: Blob
) -> Response:
    store = server.store
    try:
        check_md5(call, blob)
        data_file = await trio.to_thread.run_sync(store.install_part_file, blob.temp_path)
    except BaseException:
        blob.temp_path.unlink(missing_ok=True)
        raise
    if store.get_upload(upload.upload_id) is None:  # aborted while receiving
        store.part_path(data_file).unlink(missing_ok=True)
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
    store.commit_part(part)
    return Response(
        200,
        [
            ("ETag", part.etag),
            ("Content-MD5", base64.b64encode(blob.md5).decode()),
            ("x-oss-hash-crc64ecma", str(part.crc64)),
        ],
    )


async def upload_part_copy(server: ServerContext, call: Call) -> Response:
    upload = _upload(server, call)
    part_number = _part_number(call)
    source = copy_source(server, call)
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
    store = server.store
    writer = store.new_writer()
    files = store.object_files(source)
    store.pin(files)
    try:
        if source.body_id is not None:
            data = store.read_body(source)[first : first + length]
            await trio.to_thread.run_sync(writer.write, data)
        else:
            slices = store.object_slices(source, first, length)
            await trio.to_thread.run_sync(copy_slices_to_writer, slices, writer)
        blob = await trio.to_thread.run_sync(writer.finish)
    except BaseException:
        writer.discard()
        raise
    finally:
        store.unpin(files)
    response = await _commit_part(server, call, upload, part_number, blob)
    etag = dict(response.headers)["ETag"]
    body = node(
        "CopyPartResult", leaf("LastModified", xmlio.iso8601(time.time())), leaf("ETag", etag)
    )
    copy_response = xml_response(body)
    copy_response.headers.extend(
        (name, value) for name, value in response.headers if name != "Content-MD5"
    )
    return copy_response


# --- complete and abort --------------------------------------------------------------------------


async def complete_multipart_upload(server: ServerContext, call: Call) -> Response:
    _upload(server, call)
    body = await call.request.body.read_all(MAX_XML_BODY)
    # From here on no checkpoint: the parts validated are the parts committed (a part
    # re-uploaded meanwhile would otherwise replace a file the object is made of).
    upload = _upload(server, call)
    bucket, key = upload.bucket, upload.key
    all_parts = server.store.all_parts(upload.upload_id)
    if call.headers.get("x-oss-complete-all", "").lower() == "yes":
        if body.strip():
            raise invalid_argument("With x-oss-complete-all the body must be empty.")
        chosen = [all_parts[number] for number in sorted(all_parts)]
        if not chosen:
            raise invalid_argument("The upload has no parts.")
    else:
        chosen = _chosen_parts(body, all_parts)
    for part in chosen[:-1]:
        if part.size < MIN_PART_SIZE:
            raise OssServerError(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size.",
                extra={"PartNumber": str(part.part_number)},
            )
    if upload.headers.get("x-oss-forbid-overwrite") == "true":
        server.check_forbid_overwrite(call, bucket, key)
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
    tags = json.loads(headers.pop("x-oss-tagging", "{}"))
    headers.pop("x-oss-forbid-overwrite", None)
    record = ObjectRecord(
        bucket=bucket,
        key=key,
        data_file=None,
        segments=tuple(server.store.part_segment(part) for part in chosen),
        size=size,
        etag=etag,
        crc64=crc,
        mtime=time.time(),
        object_type="Multipart",
        headers=headers,
        metadata=dict(upload.metadata),
        acl=acl,
        storage_class=storage_class,
        tags=tags,
    )
    # The parts were fsynced as they arrived: completing moves no data, it is one index
    # transaction (object in, upload out).
    server.store.complete_upload(upload.upload_id, record)
    encode, fields = url_encoding(call)
    result = node(
        "CompleteMultipartUploadResult",
        *fields,
        leaf("Location", f"http://{server.endpoint_host}/{bucket}/{quote(key)}"),
        leaf("Bucket", bucket),
        leaf("Key", encode(key)),
        leaf("ETag", etag),
    )
    response = xml_response(result)
    response.headers.append(("ETag", etag))
    response.headers.append(("x-oss-hash-crc64ecma", str(crc)))
    return response


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


async def abort_multipart_upload(server: ServerContext, call: Call) -> Response:
    upload = _upload(server, call)
    server.store.delete_upload(upload.upload_id)
    return Response(204)


# --- listings ------------------------------------------------------------------------------------


async def list_parts(server: ServerContext, call: Call) -> Response:
    upload = _upload(server, call)
    marker = int_param(call, "part-number-marker", 0, 0, MAX_PART_NUMBER)
    max_parts = int_param(call, "max-parts", 1000, 1, 1000)
    parts = server.store.list_parts(upload.upload_id, marker, max_parts + 1)
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    encode, fields = url_encoding(call)
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


async def list_multipart_uploads(server: ServerContext, call: Call) -> Response:
    bucket = call.require_bucket()
    prefix = call.param("prefix")
    delimiter = call.param("delimiter")
    key_marker = call.param("key-marker")
    upload_id_marker = call.param("upload-id-marker") if key_marker else ""
    max_uploads = int_param(call, "max-uploads", 1000, 1, 1000)
    entries, truncated = server.store.list_uploads(
        bucket, prefix, delimiter, key_marker, upload_id_marker, max_uploads
    )
    encode, fields = url_encoding(call)
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
