"""Object tagging: PutObjectTagging, GetObjectTagging and DeleteObjectTagging. (Tags given
with a write, `x-oss-tagging`, are read where the object is written; GET and HEAD report
their number in `x-oss-tagging-count`.) A tag change leaves the object's data, ETag and
Last-Modified as they are."""

from __future__ import annotations

import dataclasses

from ossmount.server import xmlio
from ossmount.server.errors import malformed_xml
from ossmount.server.http import Response
from ossmount.server.operations.common import MAX_XML_BODY, Call, ServerContext
from ossmount.server.protocol import check_tags, xml_response
from ossmount.server.xmlio import leaf, node


async def get_object_tagging(server: ServerContext, call: Call) -> Response:
    record = server.object(call.require_bucket(), call.require_key())
    tags = [
        node("Tag", leaf("Key", key), leaf("Value", value)) for key, value in record.tags.items()
    ]
    return xml_response(node("Tagging", node("TagSet", *tags)))


async def put_object_tagging(server: ServerContext, call: Call) -> Response:
    bucket, key = call.require_bucket(), call.require_key()
    root = xmlio.parse_body(await call.request.body.read_all(MAX_XML_BODY), "Tagging")
    tag_set = root.find("TagSet")
    if tag_set is None:
        raise malformed_xml("A Tagging document needs a TagSet.")
    pairs = []
    for tag in tag_set.findall("Tag"):
        tag_key = xmlio.child_text(tag, "Key")
        if tag_key is None:
            raise malformed_xml("Every Tag needs a Key.")
        pairs.append((tag_key, xmlio.child_text(tag, "Value") or ""))
    tags = check_tags(pairs)
    # Looked up after the body is in: the object may have changed while it came.
    record = server.object(bucket, key)
    server.store.commit_object(dataclasses.replace(record, tags=tags))
    return Response(200)


async def delete_object_tagging(server: ServerContext, call: Call) -> Response:
    record = server.object(call.require_bucket(), call.require_key())
    if record.tags:
        server.store.commit_object(dataclasses.replace(record, tags={}))
    return Response(204)
