"""Bucket operations through oss2."""

from __future__ import annotations

import oss2
import pytest
from oss2.exceptions import BucketNotEmpty, NoSuchBucket

from ossmount.server import RunningServer
from tests.conftest import TEST_REGION
from tests.server.conftest import RawClient, oss2_bucket_at


def test_create_info_location_delete(bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    fresh = oss2_bucket_at(bucket.endpoint, bucket.auth, "fresh-bucket")
    fresh.create_bucket(oss2.BUCKET_ACL_PUBLIC_READ)
    info = fresh.get_bucket_info()
    assert info.name == "fresh-bucket"
    assert info.acl.grant == "public-read"
    assert info.extranet_endpoint == f"127.0.0.1:{oss_server.port}"
    assert info.storage_class == "Standard"
    assert fresh.get_bucket_location().location == f"oss-{TEST_REGION}"
    assert fresh.get_bucket_acl().acl == "public-read"
    fresh.put_bucket_acl(oss2.BUCKET_ACL_PRIVATE)
    assert fresh.get_bucket_acl().acl == "private"
    fresh.put_object("k", b"v")
    with pytest.raises(BucketNotEmpty):
        fresh.delete_bucket()
    fresh.delete_object("k")
    upload_id = fresh.init_multipart_upload("pending").upload_id
    with pytest.raises(BucketNotEmpty):
        fresh.delete_bucket()
    fresh.abort_multipart_upload("pending", upload_id)
    assert fresh.delete_bucket().status == 204
    with pytest.raises(NoSuchBucket):
        fresh.get_bucket_info()
    with pytest.raises(NoSuchBucket):
        fresh.put_object("k", b"v")


def test_create_with_storage_class(bucket: oss2.Bucket) -> None:
    ia = oss2_bucket_at(bucket.endpoint, bucket.auth, "ia-bucket")
    ia.create_bucket(input=oss2.models.BucketCreateConfig(oss2.BUCKET_STORAGE_CLASS_IA))
    assert ia.get_bucket_info().storage_class == "IA"
    # Creating again is not an error for the owner.
    ia.create_bucket()


@pytest.mark.parametrize("name", ["ab", "Upper", "-dash", "dash-", "under_score", "a" * 64])
def test_invalid_bucket_names(raw: RawClient, name: str) -> None:
    # oss2 refuses these names itself, so they go out raw.
    response = raw.request("PUT", None, bucket=name)
    assert response.status_code == 400
    assert "<Code>InvalidBucketName</Code>" in response.text


def test_bucket_stat(bucket: oss2.Bucket) -> None:
    bucket.put_object("one", b"12345")
    bucket.put_object("two", b"123")
    stat = bucket.get_bucket_stat()
    assert stat.object_count == 2
    assert stat.storage_size_in_bytes == 8


def test_versioning_is_never_enabled(bucket: oss2.Bucket, raw: RawClient) -> None:
    assert bucket.get_bucket_versioning().status is None
    assert bucket.get_bucket_info().versioning_status in (None, "")
    config = oss2.models.BucketVersioningConfig(oss2.BUCKET_VERSIONING_ENABLE)
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.put_bucket_versioning(config)
    assert (caught.value.status, caught.value.code) == (501, "NotImplemented")
    assert "Versioning is never enabled here" in caught.value.message
    response = raw.request("GET", None, params={"versions": ""})
    assert response.status_code == 501
