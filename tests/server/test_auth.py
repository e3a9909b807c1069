"""Authentication: V1/V4 headers and presigned URLs, STS tokens, anonymous access, skew,
virtual-host style addressing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import oss2
import pytest
import requests
from oss2.exceptions import AccessDenied, ServerError, SignatureDoesNotMatch

from ossmount.oss.signer import (
    Credentials,
    OssV4Auth,
    canonical_resource_v1,
    presign_v1,
    presign_v4,
    v1_signature,
    v1_string_to_sign,
)
from ossmount.server import RunningServer, run_server_in_thread
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK, server_config
from tests.server.conftest import oss2_bucket_at

STS = Credentials("sts-ak", "sts-secret", "sts-token-value")


@pytest.mark.parametrize("auth_class", [oss2.Auth, oss2.AuthV4])
def test_wrong_secret_and_unknown_key(oss_server: RunningServer, auth_class: type) -> None:
    wrong_secret = oss2_bucket_at(oss_server.endpoint, auth_class(TEST_AK, "wrong-secret"))
    with pytest.raises(SignatureDoesNotMatch):
        wrong_secret.put_object("k", b"v")
    with pytest.raises(ServerError) as caught:
        oss2_bucket_at(oss_server.endpoint, auth_class("nobody", TEST_SK)).get_object("k")
    assert (caught.value.status, caught.value.code) == (403, "InvalidAccessKeyId")
    assert oss_server.store.get_object(TEST_BUCKET, "k") is None


def test_presigned_urls_v1_and_v4(oss_server: RunningServer) -> None:
    for auth in (oss2.Auth(TEST_AK, TEST_SK), oss2.AuthV4(TEST_AK, TEST_SK)):
        bucket = oss2_bucket_at(oss_server.endpoint, auth)
        put_url = bucket.sign_url("PUT", "signed/key name+ü", 60)
        assert requests.put(put_url, data=b"via url", timeout=10).status_code == 200
        get_url = bucket.sign_url("GET", "signed/key name+ü", 60)
        response = requests.get(get_url, timeout=10)
        assert response.status_code == 200
        assert response.content == b"via url"
        # The URL signs its key: the same query on another key does not verify.
        other = get_url.replace("signed%2F", "other%2F", 1)
        assert other != get_url
        assert requests.get(other, timeout=10).status_code == 403


def test_expired_urls_are_refused(oss_server: RunningServer, oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("e", b"x")
    credentials = Credentials(TEST_AK, TEST_SK)
    base = f"{oss_server.endpoint}/{TEST_BUCKET}/e"
    v1 = presign_v1(credentials, "GET", base, TEST_BUCKET, "e", int(time.time()) - 10)
    v4 = presign_v4(
        credentials, "GET", base, TEST_BUCKET, "e", 60, TEST_REGION,
        now_epoch_s=time.time() - 3600,
    )  # fmt: skip
    for url in (v1, v4):
        response = requests.get(url, timeout=10)
        assert response.status_code == 403
        assert "<Code>AccessDenied</Code>" in response.text
        assert "expired" in response.text
    fresh = presign_v4(credentials, "GET", base, TEST_BUCKET, "e", 60, TEST_REGION)
    assert requests.get(fresh, timeout=10).content == b"x"


def test_tampered_signature(oss_server: RunningServer, oss2_bucket: oss2.Bucket) -> None:
    url = oss2_bucket.sign_url("GET", "k", 60)
    tampered = url.replace("x-oss-signature=", "x-oss-signature=0", 1)
    response = requests.get(tampered, timeout=10)
    assert response.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text


def test_clock_skew(oss_server: RunningServer) -> None:
    date = formatdate(time.time() - 3600, usegmt=True)
    resource = canonical_resource_v1(TEST_BUCKET, "", {})
    signature = v1_signature(TEST_SK, v1_string_to_sign("GET", {"Date": date}, resource))
    response = requests.get(
        f"{oss_server.endpoint}/{TEST_BUCKET}/",
        headers={"Date": date, "Authorization": f"OSS {TEST_AK}:{signature}"},
        timeout=10,
    )
    assert response.status_code == 403
    assert "<Code>RequestTimeTooSkewed</Code>" in response.text


def test_malformed_authorization(oss_server: RunningServer) -> None:
    for value in ("Basic abc", "OSS no-colon", "OSS4-HMAC-SHA256 Credential=x"):
        response = requests.get(
            f"{oss_server.endpoint}/{TEST_BUCKET}/", headers={"Authorization": value}, timeout=10
        )
        assert response.status_code in (400, 403), value
        assert "<Error>" in response.text


@pytest.fixture
def sts_server(tmp_path: Path) -> Iterator[RunningServer]:
    config = server_config(tmp_path / "sts", credentials=[STS])
    with run_server_in_thread(config) as server:
        yield server


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_sts_token(sts_server: RunningServer, version: str) -> None:
    auth = oss2.StsAuth(STS.access_key_id, STS.access_key_secret, STS.security_token, version)
    bucket = oss2_bucket_at(sts_server.endpoint, auth)
    bucket.put_object("sts", b"temporary")
    assert bucket.get_object("sts").read() == b"temporary"
    url = bucket.sign_url("GET", "sts", 60)
    assert requests.get(url, timeout=10).content == b"temporary"
    wrong = oss2.StsAuth(STS.access_key_id, STS.access_key_secret, "wrong-token", version)
    with pytest.raises(ServerError) as caught:
        oss2_bucket_at(sts_server.endpoint, wrong).get_object("sts")
    assert caught.value.status == 403
    without = oss2.Auth(STS.access_key_id, STS.access_key_secret)
    with pytest.raises(ServerError):
        oss2_bucket_at(sts_server.endpoint, without).get_object("sts")


def test_anonymous_access_follows_the_bucket_acl(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket
) -> None:
    oss2_bucket.put_object("public?", b"data")
    anonymous = oss2_bucket_at(oss_server.endpoint, oss2.AnonymousAuth())
    with pytest.raises(AccessDenied):
        anonymous.get_object("public?")
    oss2_bucket.put_bucket_acl(oss2.BUCKET_ACL_PUBLIC_READ)
    assert anonymous.get_object("public?").read() == b"data"
    assert [item.key for item in oss2.ObjectIterator(anonymous)] == ["public?"]
    with pytest.raises(AccessDenied):
        anonymous.put_object("anon", b"write")
    with pytest.raises(AccessDenied):
        anonymous.delete_object("public?")
    with pytest.raises(AccessDenied):
        anonymous.put_bucket_acl(oss2.BUCKET_ACL_PUBLIC_READ_WRITE)
    oss2_bucket.put_bucket_acl(oss2.BUCKET_ACL_PUBLIC_READ_WRITE)
    anonymous.put_object("anon", b"write")
    assert oss2_bucket.get_object("anon").read() == b"write"
    service = oss2.Service(oss2.AnonymousAuth(), oss_server.endpoint)
    with pytest.raises(AccessDenied):
        service.list_buckets()


def test_virtual_host_style(oss_server: RunningServer, oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("dir/vhost key", b"virtual")
    auth = OssV4Auth(Credentials(TEST_AK, TEST_SK), TEST_REGION)
    host = oss_server.virtual_host(TEST_BUCKET)
    assert host == f"{TEST_BUCKET}.localhost:{oss_server.port}"
    with httpx.Client(base_url=oss_server.endpoint, auth=auth, headers={"Host": host}) as client:
        extensions = {"oss_bucket": TEST_BUCKET, "oss_key": "dir/vhost key"}
        response = client.get("/dir/vhost%20key", extensions=extensions)
        assert response.status_code == 200
        assert response.content == b"virtual"
        response = client.put("/new", content=b"put vhost", extensions={
            "oss_bucket": TEST_BUCKET, "oss_key": "new"})  # fmt: skip
        assert response.status_code == 200
        response = client.get(
            "/", params={"prefix": "dir/"}, extensions={"oss_bucket": TEST_BUCKET, "oss_key": ""}
        )
        assert response.status_code == 200
        assert "<Key>dir/vhost key</Key>" in response.text
    assert oss2_bucket.get_object("new").read() == b"put vhost"


@pytest.mark.parametrize("auth_class", [oss2.Auth, oss2.AuthV4])
def test_presigned_url_signs_the_headers_it_was_made_for(
    oss_server: RunningServer, auth_class: type
) -> None:
    bucket = oss2_bucket_at(oss_server.endpoint, auth_class(TEST_AK, TEST_SK))
    headers = {"Content-Type": "text/x-signed", "x-oss-meta-origin": "presigned"}
    url = bucket.sign_url("PUT", "signed-headers", 60, headers=headers)
    assert requests.put(url, data=b"a", timeout=10).status_code == 403
    assert requests.put(url, data=b"b", headers=headers, timeout=10).status_code == 200
    head = bucket.head_object("signed-headers")
    assert head.headers["Content-Type"] == "text/x-signed"
    assert head.headers["x-oss-meta-origin"] == "presigned"


def test_presigned_v4_put_without_a_region(oss_server: RunningServer) -> None:
    # oss2 signs a URL with an empty region when the bucket has none; OSS refuses it at once.
    no_region = oss2.Bucket(oss2.AuthV4(TEST_AK, TEST_SK), oss_server.endpoint, TEST_BUCKET)
    headers = {"Content-Length": "9"}
    url = no_region.sign_url("PUT", "v4.txt", 600, slash_safe=True, headers=headers)
    with pytest.raises(AccessDenied) as caught:
        no_region.put_object_with_url(url, "Hello OSS", headers=headers)
    assert caught.value.status == 403
    assert caught.value.message == "The signing region in credential is invalid."
    assert oss_server.store.get_object(TEST_BUCKET, "v4.txt") is None


@pytest.mark.parametrize("region", ["cn-hangzhou-test-1", "cn-shanghai"])
def test_v4_signatures_of_another_region(oss_server: RunningServer, region: str) -> None:
    elsewhere = oss2.Bucket(
        oss2.AuthV4(TEST_AK, TEST_SK), oss_server.endpoint, TEST_BUCKET, region=region
    )
    with pytest.raises(ServerError) as caught:
        elsewhere.put_object("k", b"x")
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")
    assert caught.value.message == "Invalid signing region in Authorization header."
    assert caught.value.ec == "0002-00000226"
    with pytest.raises(ServerError) as caught:
        elsewhere.head_object("k")  # HEAD: the error comes in x-oss-err
    assert caught.value.ec == "0002-00000226"
    url = elsewhere.sign_url("GET", "k", 600)
    with pytest.raises(AccessDenied) as caught:
        elsewhere.get_object_with_url(url)
    assert caught.value.message == "The signing region in credential is invalid."


def test_v2_signatures_headers_and_urls(oss_server: RunningServer) -> None:
    bucket = oss2.Bucket(oss2.AuthV2(TEST_AK, TEST_SK), oss_server.endpoint, TEST_BUCKET)
    bucket.put_object("v2/key with spaces+plus", b"v2 data", headers={"x-oss-meta-a": "b"})
    assert bucket.get_object("v2/key with spaces+plus", byte_range=(0, 1)).read() == b"v2"
    listed = bucket.list_objects(prefix="v2/", delimiter="/", max_keys=10)
    assert [item.key for item in listed.object_list] == ["v2/key with spaces+plus"]
    bucket.put_object_acl("v2/key with spaces+plus", oss2.OBJECT_ACL_PUBLIC_READ)  # ?acl
    headers = {"Content-Length": "7", "custom-header": "abc"}
    url = bucket.sign_url(
        "PUT", "v2/url", 600, headers=headers, additional_headers={"custom-header"}
    )
    assert "x-oss-signature-version=OSS2" in url
    bucket.put_object_with_url(url, b"by url!", headers=headers)
    get_url = bucket.sign_url("GET", "v2/url", 600)
    assert bucket.get_object_with_url(get_url).read() == b"by url!"
    # A header the URL was signed with must come with the same value.
    with pytest.raises(SignatureDoesNotMatch):
        bucket.put_object_with_url(url, b"by url!", headers={**headers, "custom-header": "x"})

    wrong = oss2.Bucket(oss2.AuthV2(TEST_AK, "wrong"), oss_server.endpoint, TEST_BUCKET)
    with pytest.raises(SignatureDoesNotMatch):
        wrong.get_object("v2/url")
    stale = bucket.sign_url("GET", "v2/url", -10)
    with pytest.raises(AccessDenied) as caught:
        bucket.get_object_with_url(stale)
    assert caught.value.message == "Request has expired."
