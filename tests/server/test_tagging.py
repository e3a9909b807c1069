"""Object tagging through oss2 (V1 and V4): Put/Get/DeleteObjectTagging, `x-oss-tagging` on
PUT, append, symlink, copy and multipart initiate, `x-oss-tagging-count` on GET and HEAD, and
the tag rules (InvalidTag)."""

from __future__ import annotations

from urllib.parse import quote

import oss2
import pytest
from oss2.exceptions import NoSuchKey, ServerError
from oss2.headers import OSS_OBJECT_TAGGING, OSS_OBJECT_TAGGING_COPY_DIRECTIVE
from oss2.models import Tagging, TaggingRule

from tests.server.conftest import RawClient


def _tags(bucket: oss2.Bucket, key: str) -> dict[str, str]:
    return dict(bucket.get_object_tagging(key).tag_set.tagging_rule)


def _tagging(pairs: dict[str, str]) -> Tagging:
    rule = TaggingRule()
    for key, value in pairs.items():
        rule.add(key, value)
    return Tagging(rule)


def test_put_get_delete_tagging(bucket: oss2.Bucket) -> None:
    put = bucket.put_object("k", b"data")
    assert _tags(bucket, "k") == {}
    assert "x-oss-tagging-count" not in bucket.head_object("k").headers
    pairs = {"a" * 128: "b" * 256, "+-.:": "_/", "中文": "值 value", "empty": ""}
    assert bucket.put_object_tagging("k", _tagging(pairs)).status == 200
    assert _tags(bucket, "k") == pairs
    assert bucket.head_object("k").headers["x-oss-tagging-count"] == "4"
    assert bucket.get_object("k").headers["x-oss-tagging-count"] == "4"
    # Tags are no new version: data, ETag and CRC stay.
    head = bucket.head_object("k")
    assert (head.etag, head.server_crc) == (put.etag, put.crc)
    assert bucket.get_object("k").read() == b"data"
    # A new set replaces the old one.
    bucket.put_object_tagging("k", _tagging({"only": "one"}))
    assert _tags(bucket, "k") == {"only": "one"}
    assert bucket.delete_object_tagging("k").status == 204
    assert _tags(bucket, "k") == {}
    with pytest.raises(NoSuchKey):
        bucket.get_object_tagging("missing")
    with pytest.raises(NoSuchKey):
        bucket.put_object_tagging("missing", _tagging({"a": "b"}))


def test_tagging_header_on_writes(bucket: oss2.Bucket) -> None:
    header = {OSS_OBJECT_TAGGING: "k1=v1&k2=v2&" + quote(" +/ ") + "=" + quote("中文")}
    expected = {"k1": "v1", "k2": "v2", " +/ ": "中文"}
    bucket.put_object("put", b"x", headers=header)
    assert _tags(bucket, "put") == expected

    bucket.put_symlink("put", "link", headers=header)
    assert _tags(bucket, "link") == expected

    # The first append sets the tags; later appends ignore theirs.
    first = bucket.append_object("appended", 0, b"one", headers=header)
    bucket.append_object(
        "appended", first.next_position, b"two", headers={OSS_OBJECT_TAGGING: "x=y"}
    )
    assert _tags(bucket, "appended") == expected

    upload_id = bucket.init_multipart_upload("multi", headers=header).upload_id
    part = bucket.upload_part("multi", upload_id, 1, b"part")
    bucket.complete_multipart_upload("multi", upload_id, [oss2.models.PartInfo(1, part.etag)])
    assert _tags(bucket, "multi") == expected


def test_copy_keeps_or_replaces_tags(bucket: oss2.Bucket) -> None:
    bucket.put_object("source", b"x", headers={OSS_OBJECT_TAGGING: "k1=v1"})
    bucket.copy_object(bucket.bucket_name, "source", "kept")
    assert _tags(bucket, "kept") == {"k1": "v1"}
    bucket.copy_object(
        bucket.bucket_name,
        "source",
        "replaced",
        headers={OSS_OBJECT_TAGGING_COPY_DIRECTIVE: "REPLACE", OSS_OBJECT_TAGGING: "k2=v2"},
    )
    assert _tags(bucket, "replaced") == {"k2": "v2"}
    bucket.copy_object(
        bucket.bucket_name,
        "source",
        "cleared",
        headers={OSS_OBJECT_TAGGING_COPY_DIRECTIVE: "REPLACE"},
    )
    assert _tags(bucket, "cleared") == {}


@pytest.mark.parametrize(
    "header",
    [
        "=a&b=a",  # empty key
        "a" * 129 + "=b",  # key too long
        "a=" + "b" * 257,  # value too long
        "a=b&a=b",  # the same key twice
        "&".join(f"k{number}=v" for number in range(11)),  # 11 tags
        quote("%@abc") + "=v",  # characters tags cannot hold
        "k=" + quote("%abc"),
    ],
)
def test_bad_tags_are_refused(bucket: oss2.Bucket, header: str) -> None:
    with pytest.raises(ServerError) as caught:
        bucket.put_object("k", b"x", headers={OSS_OBJECT_TAGGING: header})
    assert (caught.value.status, caught.value.code) == (400, "InvalidTag")
    assert not bucket.object_exists("k")
    with pytest.raises(ServerError) as caught:
        bucket.init_multipart_upload("k", headers={OSS_OBJECT_TAGGING: header})
    assert caught.value.code == "InvalidTag"


def test_bad_tag_documents_are_refused(bucket: oss2.Bucket, raw: RawClient) -> None:
    bucket.put_object("k", b"x")
    too_many = Tagging(TaggingRule())
    for number in range(11):
        too_many.tag_set.add(f"k{number}", "v")
    with pytest.raises(ServerError) as caught:
        bucket.put_object_tagging("k", too_many)
    assert caught.value.code == "InvalidTag"
    response = raw.request("PUT", "k", params={"tagging": ""}, content=b"<Tagging/>")
    assert response.status_code == 400
    assert "<Code>MalformedXML</Code>" in response.text
    assert _tags(bucket, "k") == {}


def test_bucket_tagging_stays_not_implemented(raw: RawClient) -> None:
    response = raw.request("GET", None, params={"tagging": ""})
    assert response.status_code == 501
    assert "<Code>NotImplemented</Code>" in response.text
