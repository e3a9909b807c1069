"""Listing a bucket's objects: ListObjects (marker) and ListObjectsV2 (continuation token),
both from the index (see Store.list_objects)."""

from __future__ import annotations

from ossmount.server.errors import invalid_argument
from ossmount.server.http import Response
from ossmount.server.operations.common import Call, ServerContext, int_param
from ossmount.server.protocol import (
    contents_xml,
    decode_token,
    encode_token,
    url_encoder,
    xml_response,
)
from ossmount.server.store import ListEntry
from ossmount.server.xmlio import leaf, node


async def list_objects(server: ServerContext, call: Call) -> Response:
    return _list_objects(server, call, version=1)


async def list_objects_v2(server: ServerContext, call: Call) -> Response:
    return _list_objects(server, call, version=2)


def _list_objects(server: ServerContext, call: Call, version: int) -> Response:
    bucket = call.require_bucket()
    prefix = call.param("prefix")
    delimiter = call.param("delimiter")
    max_keys = int_param(call, "max-keys", 100, 0, 1000)
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
        entries, truncated = server.store.list_objects(bucket, prefix, delimiter, after, max_keys)
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
