"""Listings through oss2's iterators, across several pages (V1 and V4)."""

from __future__ import annotations

import oss2
import pytest
from oss2.exceptions import ServerError

from ossmount.server import RunningServer
from tests.server.conftest import oss2_bucket_at

KEYS = sorted(
    [f"a/{number:02d}.txt" for number in range(12)]
    + [f"b/sub{number}/x" for number in range(5)]
    + ["c", "d e/f", "ü/ß", "plus+sign", "z%2Fslash"]
)


@pytest.fixture
def filled(bucket: oss2.Bucket) -> oss2.Bucket:
    for key in KEYS:
        bucket.put_object(key, key.encode())
    return bucket


def test_object_iterator_pages(filled: oss2.Bucket, oss_server: RunningServer) -> None:
    oss_server.stats.reset()
    listed = [item.key for item in oss2.ObjectIterator(filled, max_keys=5)]
    assert listed == KEYS
    assert oss_server.stats.count("ListObjects") == -(-len(KEYS) // 5)
    sizes = {item.key: item.size for item in oss2.ObjectIterator(filled)}
    assert sizes["d e/f"] == len(b"d e/f")


def test_object_iterator_v2_pages(filled: oss2.Bucket, oss_server: RunningServer) -> None:
    oss_server.stats.reset()
    listed = [item.key for item in oss2.ObjectIteratorV2(filled, max_keys=4)]
    assert listed == KEYS
    assert oss_server.stats.count("ListObjectsV2") == -(-len(KEYS) // 4)
    with_owner = list(oss2.ObjectIteratorV2(filled, fetch_owner=True, max_keys=3))
    assert all(item.owner is not None for item in with_owner)
    after = [item.key for item in oss2.ObjectIteratorV2(filled, start_after="b/", max_keys=2)]
    assert after == [key for key in KEYS if key > "b/"]


@pytest.mark.parametrize("iterator", [oss2.ObjectIterator, oss2.ObjectIteratorV2])
def test_delimiter_and_prefix(filled: oss2.Bucket, iterator: type) -> None:
    top = list(iterator(filled, delimiter="/", max_keys=2))
    prefixes = [item.key for item in top if item.is_prefix()]
    files = [item.key for item in top if not item.is_prefix()]
    assert prefixes == ["a/", "b/", "d e/", "ü/"]
    assert files == ["c", "plus+sign", "z%2Fslash"]
    below_b = [item.key for item in iterator(filled, prefix="b/", delimiter="/", max_keys=2)]
    assert below_b == [f"b/sub{number}/" for number in range(5)]
    under_a = [item.key for item in iterator(filled, prefix="a/", max_keys=5)]
    assert under_a == [key for key in KEYS if key.startswith("a/")]


def test_list_page_fields(filled: oss2.Bucket) -> None:
    page = filled.list_objects_v2(prefix="a/", max_keys=3)
    assert page.is_truncated
    assert page.next_continuation_token
    assert [item.key for item in page.object_list] == KEYS[:3]
    item = page.object_list[0]
    assert item.type == "Normal"
    assert item.storage_class == "Standard"
    assert item.etag == filled.head_object(item.key).etag
    assert item.last_modified > 0
    page = filled.list_objects(marker="a/11.txt", max_keys=1000)
    assert not page.is_truncated
    assert page.object_list[0].key == "b/sub0/x"


def test_max_keys_above_1000_is_rejected(filled: oss2.Bucket) -> None:
    with pytest.raises(ServerError) as caught:
        filled.list_objects(max_keys=1001)
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")


def test_bucket_iterator_pages(service: oss2.Service, bucket: oss2.Bucket) -> None:
    names = [f"bucket-{number:02d}" for number in range(7)]
    for name in names:
        oss2_bucket_at(bucket.endpoint, bucket.auth, name).create_bucket()
    listed = [item.name for item in oss2.BucketIterator(service, max_keys=3)]
    assert listed == sorted([*names, "test-bucket"])
    only = [item.name for item in oss2.BucketIterator(service, prefix="bucket-0", max_keys=2)]
    assert only == names
    info = service.list_buckets(max_keys=1)
    assert info.is_truncated
    assert info.buckets[0].extranet_endpoint == bucket.endpoint.split("://", 1)[1]


def test_multipart_upload_and_part_iterators(bucket: oss2.Bucket) -> None:
    upload_ids: dict[str, list[str]] = {}
    for key in ["m/one", "m/two", "m/two", "n/three", "top"]:
        upload_ids.setdefault(key, []).append(bucket.init_multipart_upload(key).upload_id)
    uploads = list(oss2.MultipartUploadIterator(bucket, max_uploads=2))
    assert [(item.key, item.upload_id) for item in uploads] == [
        (key, upload_id) for key in sorted(upload_ids) for upload_id in upload_ids[key]
    ]
    grouped = list(oss2.MultipartUploadIterator(bucket, delimiter="/", max_uploads=1))
    assert [item.key for item in grouped if item.is_prefix()] == ["m/", "n/"]
    assert [item.key for item in grouped if not item.is_prefix()] == ["top"]
    twos = list(oss2.ObjectUploadIterator(bucket, "m/two", max_uploads=1))
    assert [item.upload_id for item in twos] == upload_ids["m/two"]
    upload_id = upload_ids["top"][0]
    for number in range(1, 8):
        bucket.upload_part("top", upload_id, number, f"part {number}".encode())
    parts = list(oss2.PartIterator(bucket, "top", upload_id, max_parts=3))
    assert [part.part_number for part in parts] == list(range(1, 8))
    assert parts[0].size == len(b"part 1")
