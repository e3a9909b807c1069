"""Object operations through oss2 (V1 and V4): put/get/head/meta/delete, metadata, headers,
conditions, forbid-overwrite, copy, append, symlinks, batch delete, ACLs."""

from __future__ import annotations

import base64
import hashlib
import time
from email.utils import formatdate

import crcmod
import oss2
import pytest
from oss2.exceptions import (
    NoSuchKey,
    NotModified,
    ObjectNotAppendable,
    PositionNotEqualToLength,
    PreconditionFailed,
    ServerError,
)
from oss2.models import PartInfo

from ossmount.server import RunningServer
from ossmount.server.store import INLINE_LIMIT
from tests.conftest import TEST_BUCKET
from tests.server.conftest import RawClient

reference_crc = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


def test_put_get_head_delete(bucket: oss2.Bucket) -> None:
    data = b"hello world" * 1000
    put = bucket.put_object("dir/hello.txt", data, headers={"Content-Type": "text/plain"})
    assert put.status == 200
    assert put.etag == hashlib.md5(data).hexdigest().upper()
    assert put.crc == reference_crc(data)
    assert put.request_id
    got = bucket.get_object("dir/hello.txt")
    assert got.read() == data
    assert got.content_type == "text/plain"
    assert got.server_crc == reference_crc(data)
    assert got.headers["x-oss-object-type"] == "Normal"
    head = bucket.head_object("dir/hello.txt")
    assert head.content_length == len(data)
    assert head.etag == put.etag
    assert head.object_type == "Normal"
    meta = bucket.get_object_meta("dir/hello.txt")
    assert meta.content_length == len(data)
    assert meta.etag == put.etag
    assert bucket.object_exists("dir/hello.txt")
    assert bucket.delete_object("dir/hello.txt").status == 204
    assert not bucket.object_exists("dir/hello.txt")
    with pytest.raises(NoSuchKey):
        bucket.get_object("dir/hello.txt")
    with pytest.raises(NoSuchKey) as caught:
        bucket.head_object("dir/hello.txt")  # the error comes in the base64 x-oss-err header
    assert caught.value.details["Code"] == "NoSuchKey"
    # Deleting what is not there succeeds, as in OSS.
    assert bucket.delete_object("dir/hello.txt").status == 204


def test_empty_object_has_crc_zero(bucket: oss2.Bucket) -> None:
    put = bucket.put_object("empty", b"")
    assert put.crc == 0
    assert put.etag == "D41D8CD98F00B204E9800998ECF8427E"
    got = bucket.get_object("empty")
    assert got.read() == b""
    assert got.server_crc == 0


def test_overwrite_replaces(bucket: oss2.Bucket) -> None:
    bucket.put_object("k", b"first version")
    bucket.put_object("k", b"second")
    assert bucket.get_object("k").read() == b"second"


def test_user_metadata_and_standard_headers(bucket: oss2.Bucket) -> None:
    headers = {
        "x-oss-meta-Author": "Ada",
        "x-oss-meta-mode": "0644",
        "Content-Type": "application/json",
        "Content-Disposition": 'attachment; filename="a.json"',
        "Content-Encoding": "identity",
        "Cache-Control": "no-cache",
        "Expires": "Wed, 21 Oct 2037 07:28:00 GMT",
    }
    bucket.put_object("meta.json", b"{}", headers=headers)
    head = bucket.head_object("meta.json")
    assert head.headers["x-oss-meta-author"] == "Ada"
    assert head.headers["x-oss-meta-mode"] == "0644"
    assert head.headers["Content-Type"] == "application/json"
    assert head.headers["Content-Disposition"] == 'attachment; filename="a.json"'
    assert head.headers["Cache-Control"] == "no-cache"
    assert head.headers["Expires"] == "Wed, 21 Oct 2037 07:28:00 GMT"
    assert head.headers["Content-Encoding"] == "identity"


def test_metadata_limit_is_8_kb(bucket: oss2.Bucket) -> None:
    bucket.put_object("fits", b"x", headers={"x-oss-meta-big": "v" * 8000})
    with pytest.raises(ServerError) as caught:
        bucket.put_object("too-big", b"x", headers={"x-oss-meta-big": "v" * 8200})
    assert caught.value.status == 400
    assert caught.value.code == "InvalidArgument"
    with pytest.raises(ServerError) as caught:
        bucket.put_object("bad-name", b"x", headers={"x-oss-meta-bad_name": "v"})
    assert caught.value.status == 400
    assert not bucket.object_exists("too-big")


def test_response_overrides(bucket: oss2.Bucket) -> None:
    bucket.put_object("o", b"data", headers={"Content-Type": "text/plain"})
    params = {
        "response-content-type": "image/png",
        "response-content-disposition": "attachment",
        "response-cache-control": "max-age=60",
        "response-content-language": "fr",
        "response-expires": "Thu, 01 Jan 2037 00:00:00 GMT",
        "response-content-encoding": "identity",
    }
    got = bucket.get_object("o", params=params)
    assert got.read() == b"data"
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["Content-Disposition"] == "attachment"
    assert got.headers["Cache-Control"] == "max-age=60"
    assert got.headers["Content-Language"] == "fr"
    assert got.headers["Expires"] == "Thu, 01 Jan 2037 00:00:00 GMT"


def test_response_overrides_cannot_inject_headers(bucket: oss2.Bucket) -> None:
    bucket.put_object("o", b"data")
    with pytest.raises(ServerError) as caught:
        bucket.get_object("o", params={"response-content-type": "text/plain\r\nX-Evil: 1"})
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")


def test_conditional_requests(bucket: oss2.Bucket) -> None:
    etag = bucket.put_object("c", b"conditional").etag
    past = formatdate(time.time() - 3600, usegmt=True)
    future = formatdate(time.time() + 3600, usegmt=True)
    assert bucket.get_object("c", headers={"If-Match": f'"{etag}"'}).read() == b"conditional"
    with pytest.raises(PreconditionFailed):
        bucket.get_object("c", headers={"If-Match": '"0123456789ABCDEF0123456789ABCDEF"'})
    with pytest.raises(NotModified):
        bucket.get_object("c", headers={"If-None-Match": f'"{etag}"'})
    assert bucket.get_object("c", headers={"If-None-Match": '"other"'}).read() == b"conditional"
    with pytest.raises(NotModified):
        bucket.get_object("c", headers={"If-Modified-Since": future})
    assert bucket.get_object("c", headers={"If-Modified-Since": past}).read() == b"conditional"
    with pytest.raises(PreconditionFailed):
        bucket.get_object("c", headers={"If-Unmodified-Since": past})
    assert bucket.get_object("c", headers={"If-Unmodified-Since": future}).read()
    with pytest.raises(PreconditionFailed):
        bucket.head_object("c", headers={"If-Match": '"nope"'})
    with pytest.raises(NotModified):
        bucket.head_object("c", headers={"If-None-Match": "*"})


def test_forbid_overwrite(bucket: oss2.Bucket) -> None:
    forbid = {"x-oss-forbid-overwrite": "true"}
    bucket.put_object("once", b"first", headers=forbid)
    with pytest.raises(ServerError) as caught:
        bucket.put_object("once", b"second", headers=forbid)
    assert (caught.value.status, caught.value.code) == (409, "FileAlreadyExists")
    assert bucket.get_object("once").read() == b"first"
    bucket.put_object("once", b"third", headers={"x-oss-forbid-overwrite": "false"})
    assert bucket.get_object("once").read() == b"third"
    bucket.put_object("src", b"copy me")
    with pytest.raises(ServerError) as caught:
        bucket.copy_object(TEST_BUCKET, "src", "once", headers=forbid)
    assert caught.value.code == "FileAlreadyExists"


def test_copy_object_directives_and_conditions(bucket: oss2.Bucket) -> None:
    data = b"source data" * 100
    source = bucket.put_object(
        "src.bin", data, headers={"x-oss-meta-color": "red", "Content-Type": "text/x-src"}
    )
    copied = bucket.copy_object(TEST_BUCKET, "src.bin", "copy-same.bin")
    assert copied.etag == source.etag
    assert copied.crc == reference_crc(data)
    head = bucket.head_object("copy-same.bin")
    assert head.headers["x-oss-meta-color"] == "red"
    assert head.headers["Content-Type"] == "text/x-src"
    assert bucket.get_object("copy-same.bin").read() == data
    bucket.copy_object(
        TEST_BUCKET,
        "src.bin",
        "copy-replaced.bin",
        headers={
            "x-oss-metadata-directive": "REPLACE",
            "x-oss-meta-shape": "round",
            "Content-Type": "text/x-new",
        },
    )
    head = bucket.head_object("copy-replaced.bin")
    assert "x-oss-meta-color" not in head.headers
    assert head.headers["x-oss-meta-shape"] == "round"
    assert head.headers["Content-Type"] == "text/x-new"
    # update_object_meta is a copy onto itself with REPLACE.
    bucket.update_object_meta("src.bin", {"x-oss-meta-color": "blue"})
    assert bucket.head_object("src.bin").headers["x-oss-meta-color"] == "blue"
    assert bucket.get_object("src.bin").read() == data
    with pytest.raises(PreconditionFailed):
        bucket.copy_object(
            TEST_BUCKET, "src.bin", "x", headers={"x-oss-copy-source-if-match": '"nope"'}
        )
    bucket.copy_object(
        TEST_BUCKET, "src.bin", "x", headers={"x-oss-copy-source-if-match": source.etag}
    )
    with pytest.raises(NoSuchKey):
        bucket.copy_object(TEST_BUCKET, "missing", "y")


def test_append_object(bucket: oss2.Bucket) -> None:
    first = bucket.append_object("log", 0, b"line 1\n", headers={"x-oss-meta-kind": "log"})
    assert first.next_position == 7
    assert first.crc == reference_crc(b"line 1\n")
    second = bucket.append_object("log", first.next_position, b"line 2\n", init_crc=first.crc)
    assert second.next_position == 14
    assert second.crc == reference_crc(b"line 1\nline 2\n")
    got = bucket.get_object("log")
    assert got.read() == b"line 1\nline 2\n"
    assert got.headers["x-oss-object-type"] == "Appendable"
    assert got.headers["x-oss-meta-kind"] == "log"
    with pytest.raises(PositionNotEqualToLength) as caught:
        bucket.append_object("log", 3, b"wrong place")
    assert caught.value.headers["x-oss-next-append-position"] == "14"
    bucket.put_object("normal", b"not appendable")
    with pytest.raises(ObjectNotAppendable):
        bucket.append_object("normal", 14, b"more")
    with pytest.raises(PositionNotEqualToLength):
        bucket.append_object("new-log", 5, b"must start at 0")
    listing = {item.key: item for item in oss2.ObjectIterator(bucket)}
    assert listing["log"].type == "Appendable"
    assert listing["log"].size == 14


def test_symlinks(bucket: oss2.Bucket) -> None:
    bucket.put_object("target dir/real file", b"target data", headers={"x-oss-meta-t": "1"})
    bucket.put_symlink("target dir/real file", "link", headers={"x-oss-meta-l": "2"})
    assert bucket.get_symlink("link").target_key == "target dir/real file"
    got = bucket.get_object("link")
    assert got.read() == b"target data"
    assert got.headers["x-oss-object-type"] == "Symlink"
    assert bucket.head_object("link").content_length == len(b"target data")
    listing = {item.key: item for item in oss2.ObjectIterator(bucket)}
    assert listing["link"].type == "Symlink"
    with pytest.raises(ServerError) as caught:
        bucket.get_symlink("target dir/real file")
    assert caught.value.status == 400
    bucket.put_symlink("nowhere", "dangling")
    with pytest.raises(ServerError) as caught:
        bucket.get_object("dangling")
    assert caught.value.status == 404


def test_batch_delete(bucket: oss2.Bucket) -> None:
    keys = [f"batch/{number}" for number in range(20)] + ["batch/odd key &<>"]
    for key in keys:
        bucket.put_object(key, b"x")
    result = bucket.batch_delete_objects([*keys, "batch/not-there"])
    assert sorted(result.deleted_keys) == sorted([*keys, "batch/not-there"])
    assert list(oss2.ObjectIterator(bucket, prefix="batch/")) == []


def test_object_acl(bucket: oss2.Bucket) -> None:
    bucket.put_object("acl", b"x")
    assert bucket.get_object_acl("acl").acl == "default"
    bucket.put_object_acl("acl", oss2.OBJECT_ACL_PUBLIC_READ)
    assert bucket.get_object_acl("acl").acl == "public-read"


def test_request_ids_and_stats(bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    oss_server.stats.reset()
    first = bucket.put_object("r", b"1")
    second = bucket.put_object("r", b"2")
    assert first.request_id != second.request_id
    bucket.get_object("r").read()
    assert oss_server.stats.count("PutObject") == 2
    assert oss_server.stats.count("GetObject") == 1
    assert oss_server.stats.count() == 3


def test_stats_count_the_body_bytes_of_answers(
    bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    bucket.put_object("sized", b"0123456789" * 1000)
    oss_server.stats.reset()
    assert bucket.get_object("sized", byte_range=(100, 199)).read() == (b"0123456789" * 10)
    bucket.head_object("sized")
    assert bucket.get_object("sized").read() == b"0123456789" * 1000
    with pytest.raises(NoSuchKey):
        bucket.get_object("not-there")
    assert oss_server.stats.body_bytes("GetObject") == 100 + 10_000
    assert oss_server.stats.body_bytes("HeadObject") == 0
    assert oss_server.stats.body_bytes() == 100 + 10_000
    oss_server.stats.reset()
    assert oss_server.stats.body_bytes() == 0


def test_batch_delete_quiet_and_content_md5(oss2_bucket: oss2.Bucket, raw: RawClient) -> None:
    oss2_bucket.put_object("q1", b"x")
    oss2_bucket.put_object("q2", b"x")
    document = (
        b"<Delete><Quiet>true</Quiet><Object><Key>q1</Key></Object>"
        b"<Object><Key>q2</Key></Object></Delete>"
    )
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    response = raw.request(
        "POST", None, params={"delete": ""}, content=document, headers={"Content-MD5": wrong_md5}
    )
    assert response.status_code == 400
    assert oss2_bucket.object_exists("q1")
    right_md5 = base64.b64encode(hashlib.md5(document).digest()).decode()
    response = raw.request(
        "POST", None, params={"delete": ""}, content=document, headers={"Content-MD5": right_md5}
    )
    assert response.status_code == 200
    assert "<Deleted>" not in response.text
    assert not oss2_bucket.object_exists("q1")
    assert not oss2_bucket.object_exists("q2")


def test_batch_delete_of_keys_with_control_characters(bucket: oss2.Bucket) -> None:
    # oss2 writes these keys raw into the Delete document (a form feed is not XML 1.0); OSS
    # takes them, so the server does too.
    keys = ["中文!@#$%^&*()-=文件\x0c-2.txt", "bell\x07and\x01", "cr\rlf\n", "<hello>&"]
    for key in keys:
        bucket.put_object(key, b"x")
    result = bucket.batch_delete_objects(keys)
    assert sorted(result.deleted_keys) == sorted(keys)
    assert list(oss2.ObjectIteratorV2(bucket)) == []


def test_control_characters_do_not_relax_the_xml_parser(raw: RawClient) -> None:
    for body in (
        b'<!DOCTYPE d [<!ENTITY e "x">]><Delete><Object><Key>\x0c&e;</Key></Object></Delete>',
        b"<Delete><Object><Key>\x0c</Key></Object>",  # not closed
        b"<Delete><Object><Key>a\x0c<b></Key></Object></Delete>",
    ):
        response = raw.request("POST", None, params={"delete": ""}, content=body)
        assert response.status_code == 400, body
        assert "<Code>MalformedXML</Code>" in response.text


def test_keys_cannot_start_with_a_backslash(bucket: oss2.Bucket) -> None:
    with pytest.raises(oss2.exceptions.InvalidObjectName):
        bucket.put_object("\\invalid-object-name", b"x")


def test_gzip_for_clients_that_accept_it(bucket: oss2.Bucket, raw: RawClient) -> None:
    text = b"compressible text, " * 5000
    bucket.put_object("page.txt", text, headers={"Content-Type": "text/plain"})
    got = bucket.get_object("page.txt", headers={"Accept-Encoding": "gzip"})
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.headers["Transfer-Encoding"] == "chunked"
    assert got.content_length is None
    assert got.read() == text  # decoded by requests; oss2 checked the CRC-64 of the text
    assert bucket.get_object("page.txt").headers.get("Content-Encoding") is None
    # Raw: the bytes on the wire are gzip of the object.
    response = raw.request("GET", "page.txt", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == text  # httpx decodes gzip too
    for headers in (
        {"Accept-Encoding": "gzip", "Range": "bytes=0-9"},  # ranges are never compressed
        {"Accept-Encoding": "gzip;q=0, identity"},
        {"Accept-Encoding": "br"},
    ):
        assert "Content-Encoding" not in bucket.get_object("page.txt", headers=headers).headers
    bucket.put_object("small.txt", b"x" * 1023, headers={"Content-Type": "text/plain"})
    bucket.put_object("blob.bin", text)  # application/octet-stream
    for key in ("small.txt", "blob.bin"):
        plain = bucket.get_object(key, headers={"Accept-Encoding": "gzip"})
        assert "Content-Encoding" not in plain.headers


def test_small_bodies_kept_in_the_index(bucket: oss2.Bucket, raw: RawClient) -> None:
    # Bodies up to INLINE_LIMIT live in the index, larger ones in files: every read and copy
    # path gives the same bytes on both sides of the limit.
    for size in (INLINE_LIMIT - 1, INLINE_LIMIT, INLINE_LIMIT + 1):
        data = (b"compressible text, " * 1000)[:size]
        key = f"edge-{size}"
        put = bucket.put_object(key, data, headers={"Content-Type": "text/plain"})
        assert put.etag == hashlib.md5(data).hexdigest().upper()
        assert bucket.get_object(key).read() == data
        assert bucket.get_object(key, byte_range=(7, 1000)).read() == data[7:1001]
        assert bucket.head_object(key).content_length == size
        gzipped = raw.request("GET", key, headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers["content-encoding"] == "gzip"
        assert gzipped.content == data
        bucket.copy_object(bucket.bucket_name, key, f"{key}-copy")
        assert bucket.get_object(f"{key}-copy").read() == data
        upload_id = bucket.init_multipart_upload(f"{key}-parts").upload_id
        part = bucket.upload_part_copy(
            bucket.bucket_name, key, (100, size - 1), f"{key}-parts", upload_id, 1
        )
        bucket.complete_multipart_upload(f"{key}-parts", upload_id, [PartInfo(1, part.etag)])
        assert bucket.get_object(f"{key}-parts").read() == data[100:]
        bucket.delete_object(key)
        assert bucket.get_object(f"{key}-copy").read() == data
