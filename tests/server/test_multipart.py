"""Multipart uploads through oss2: parts, completion rules, UploadPartCopy, abort."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import crcmod
import oss2
import pytest
from oss2.exceptions import InvalidDigest, NoSuchUpload, ServerError
from oss2.models import PartInfo

from ossmount.server import RunningServer
from tests.server.conftest import RawClient

reference_crc = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
PART = 100 * 1024


def test_complete_gives_md5_of_md5s_etag_and_combined_crc(bucket: oss2.Bucket) -> None:
    pieces = [os.urandom(PART), os.urandom(PART + 5), os.urandom(77)]
    upload_id = bucket.init_multipart_upload(
        "mp.bin", headers={"x-oss-meta-origin": "parts", "Content-Type": "application/x-mp"}
    ).upload_id
    parts = []
    for number, piece in enumerate(pieces, start=1):
        result = bucket.upload_part("mp.bin", upload_id, number, piece)
        assert result.etag == hashlib.md5(piece).hexdigest().upper()
        assert result.crc == reference_crc(piece)
        parts.append(PartInfo(number, result.etag))
    listed = bucket.list_parts("mp.bin", upload_id)
    assert [part.size for part in listed.parts] == [len(piece) for piece in pieces]
    done = bucket.complete_multipart_upload("mp.bin", upload_id, parts)
    whole = b"".join(pieces)
    assert done.crc == reference_crc(whole)
    md5s = b"".join(hashlib.md5(piece).digest() for piece in pieces)
    assert done.etag == f"{hashlib.md5(md5s).hexdigest().upper()}-3"
    got = bucket.get_object("mp.bin")
    assert got.read() == whole
    assert got.headers["x-oss-object-type"] == "Multipart"
    assert got.headers["x-oss-meta-origin"] == "parts"
    assert got.headers["Content-Type"] == "application/x-mp"
    with pytest.raises(NoSuchUpload):
        bucket.list_parts("mp.bin", upload_id)


def test_parts_below_100_kb_except_the_last_are_refused(bucket: oss2.Bucket) -> None:
    upload_id = bucket.init_multipart_upload("small").upload_id
    first = bucket.upload_part("small", upload_id, 1, b"tiny")
    second = bucket.upload_part("small", upload_id, 2, b"tiny too")
    with pytest.raises(ServerError) as caught:
        bucket.complete_multipart_upload(
            "small", upload_id, [PartInfo(1, first.etag), PartInfo(2, second.etag)]
        )
    assert (caught.value.status, caught.value.code) == (400, "EntityTooSmall")
    # One small part alone is fine (it is the last one).
    bucket.complete_multipart_upload("small", upload_id, [PartInfo(1, first.etag)])
    assert bucket.get_object("small").read() == b"tiny"


def test_part_list_is_validated(bucket: oss2.Bucket, raw: RawClient) -> None:
    upload_id = bucket.init_multipart_upload("v").upload_id
    one = bucket.upload_part("v", upload_id, 1, os.urandom(PART))
    two = bucket.upload_part("v", upload_id, 2, b"end")
    # oss2 sorts the list itself, so the wrong order goes out raw.
    body = (
        f'<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>"{two.etag}"</ETag>'
        f'</Part><Part><PartNumber>1</PartNumber><ETag>"{one.etag}"</ETag></Part>'
        "</CompleteMultipartUpload>"
    )
    response = raw.request("POST", "v", params={"uploadId": upload_id}, content=body.encode())
    assert response.status_code == 400
    assert "<Code>InvalidPartOrder</Code>" in response.text
    with pytest.raises(ServerError) as caught:
        bucket.complete_multipart_upload("v", upload_id, [PartInfo(1, two.etag)])
    assert caught.value.code == "InvalidPart"
    with pytest.raises(ServerError) as caught:
        bucket.complete_multipart_upload("v", upload_id, [PartInfo(3, two.etag)])
    assert caught.value.code == "InvalidPart"
    with pytest.raises(NoSuchUpload):
        bucket.complete_multipart_upload("v", "no-such-upload", [PartInfo(1, one.etag)])


def test_complete_all(bucket: oss2.Bucket) -> None:
    upload_id = bucket.init_multipart_upload("all").upload_id
    bucket.upload_part("all", upload_id, 2, b"B" * PART)
    bucket.upload_part("all", upload_id, 1, b"A" * PART)
    bucket.upload_part("all", upload_id, 3, b"C")
    bucket.complete_multipart_upload("all", upload_id, None, headers={"x-oss-complete-all": "yes"})
    assert bucket.get_object("all").read() == b"A" * PART + b"B" * PART + b"C"


def test_reuploaded_part_replaces_the_old_one(bucket: oss2.Bucket) -> None:
    upload_id = bucket.init_multipart_upload("re").upload_id
    bucket.upload_part("re", upload_id, 1, b"old")
    new = bucket.upload_part("re", upload_id, 1, b"new!")
    bucket.complete_multipart_upload("re", upload_id, [PartInfo(1, new.etag)])
    assert bucket.get_object("re").read() == b"new!"


def test_content_md5_is_checked(bucket: oss2.Bucket) -> None:
    upload_id = bucket.init_multipart_upload("md5").upload_id
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(InvalidDigest):
        bucket.upload_part("md5", upload_id, 1, b"data", headers={"Content-MD5": wrong})
    right = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    bucket.upload_part("md5", upload_id, 1, b"data", headers={"Content-MD5": right})
    with pytest.raises(InvalidDigest):
        bucket.put_object("md5-put", b"data", headers={"Content-MD5": wrong})
    assert not bucket.object_exists("md5-put")


def test_upload_part_copy_with_ranges(bucket: oss2.Bucket) -> None:
    source = os.urandom(3 * PART)
    bucket.put_object("copy-source", source)
    upload_id = bucket.init_multipart_upload("assembled").upload_id
    first = bucket.upload_part_copy(
        bucket.bucket_name, "copy-source", (PART, 2 * PART - 1), "assembled", upload_id, 1
    )
    assert first.etag == hashlib.md5(source[PART : 2 * PART]).hexdigest().upper()
    second = bucket.upload_part_copy(
        bucket.bucket_name, "copy-source", (0, 9), "assembled", upload_id, 2
    )
    done = bucket.complete_multipart_upload(
        "assembled", upload_id, [PartInfo(1, first.etag), PartInfo(2, second.etag)]
    )
    expected = source[PART : 2 * PART] + source[:10]
    assert done.crc == reference_crc(expected)
    assert bucket.get_object("assembled").read() == expected
    with pytest.raises(ServerError) as caught:
        bucket.upload_part_copy(
            bucket.bucket_name, "copy-source", (0, 3 * PART), "assembled", upload_id, 3
        )
    assert caught.value.status in (400, 416, 404)


def test_abort(bucket: oss2.Bucket) -> None:
    upload_id = bucket.init_multipart_upload("gone").upload_id
    bucket.upload_part("gone", upload_id, 1, b"x")
    assert bucket.abort_multipart_upload("gone", upload_id).status == 204
    with pytest.raises(NoSuchUpload):
        bucket.upload_part("gone", upload_id, 2, b"y")
    with pytest.raises(NoSuchUpload):
        bucket.abort_multipart_upload("gone", upload_id)
    assert not bucket.object_exists("gone")


def test_part_number_range(bucket: oss2.Bucket) -> None:
    upload_id = bucket.init_multipart_upload("pn").upload_id
    for number in (0, 10001):
        with pytest.raises(ServerError) as caught:
            bucket.upload_part("pn", upload_id, number, b"x")
        assert caught.value.code == "InvalidArgument"


def _three_part_object(bucket: oss2.Bucket, key: str) -> bytes:
    pieces = [os.urandom(PART + 11), os.urandom(PART - 5 + PART), os.urandom(999)]
    upload_id = bucket.init_multipart_upload(key).upload_id
    parts = [
        PartInfo(number, bucket.upload_part(key, upload_id, number, piece).etag)
        for number, piece in enumerate(pieces, start=1)
    ]
    bucket.complete_multipart_upload(key, upload_id, parts)
    return b"".join(pieces)


def test_ranges_across_part_boundaries(bucket: oss2.Bucket) -> None:
    data = _three_part_object(bucket, "spans")
    boundary = PART + 11
    standard = {"x-oss-range-behavior": "standard"}
    for first, last in [
        (0, boundary),
        (boundary - 1, boundary),
        (boundary - 10, len(data) - 1),
        (len(data) - 1000, len(data) - 1),
        (5, 5),
    ]:
        got = bucket.get_object("spans", byte_range=(first, last), headers=standard).read()
        assert got == data[first : last + 1], (first, last)


def test_completion_keeps_only_the_chosen_parts(
    bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    upload_id = bucket.init_multipart_upload("chosen").upload_id
    one = bucket.upload_part("chosen", upload_id, 1, b"1" * PART)
    bucket.upload_part("chosen", upload_id, 2, b"not used")
    three = bucket.upload_part("chosen", upload_id, 3, b"3")
    bucket.complete_multipart_upload(
        "chosen", upload_id, [PartInfo(1, one.etag), PartInfo(3, three.etag)]
    )
    assert bucket.get_object("chosen").read() == b"1" * PART + b"3"
    assert len(list((oss_server.root / "parts").glob("*/*"))) == 2
    bucket.delete_object("chosen")
    assert list((oss_server.root / "parts").glob("*/*")) == []


def test_a_read_in_progress_survives_overwrite_and_delete(
    bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    # Parts larger than the socket buffers, so that the server is still sending when the
    # object is replaced and deleted.
    pieces = [os.urandom(8 << 20) for _ in range(3)]
    upload_id = bucket.init_multipart_upload("busy").upload_id
    parts = [
        PartInfo(number, bucket.upload_part("busy", upload_id, number, piece).etag)
        for number, piece in enumerate(pieces, start=1)
    ]
    bucket.complete_multipart_upload("busy", upload_id, parts)
    reading = bucket.get_object("busy")
    first = reading.read(1000)
    bucket.put_object("busy", b"replaced")
    bucket.delete_object("busy")
    assert len(list((oss_server.root / "parts").glob("*/*"))) == 3  # kept for the reader
    assert first + reading.read() == b"".join(pieces)
    assert reading.client_crc == reading.server_crc
    # Once the reader is done, the replaced version's files go.
    deadline = time.monotonic() + 5
    while list((oss_server.root / "parts").glob("*/*")):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_copies_of_multipart_objects(bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    data = _three_part_object(bucket, "original")
    source_etag = bucket.head_object("original").etag
    copied = bucket.copy_object(bucket.bucket_name, "original", "copy")
    assert copied.etag == source_etag
    bucket.delete_object("original")
    got = bucket.get_object("copy")
    assert got.read() == data
    assert got.headers["x-oss-object-type"] == "Multipart"
    assert bucket.get_object("copy", byte_range=(PART, PART + 20)).read() == data[PART : PART + 21]


def test_upload_part_copy_across_the_parts_of_a_multipart_source(bucket: oss2.Bucket) -> None:
    data = _three_part_object(bucket, "segmented")
    first, last = PART, 2 * PART + 500  # runs over the first part boundary (PART + 11)
    upload_id = bucket.init_multipart_upload("from-segments").upload_id
    part = bucket.upload_part_copy(
        bucket.bucket_name, "segmented", (first, last), "from-segments", upload_id, 1
    )
    assert part.etag == hashlib.md5(data[first : last + 1]).hexdigest().upper()
    bucket.complete_multipart_upload("from-segments", upload_id, [PartInfo(1, part.etag)])
    assert bucket.get_object("from-segments").read() == data[first : last + 1]
