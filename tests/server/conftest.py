"""Fixtures of the server tests: oss2 buckets with either signature version, raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import oss2
import pytest

from ossmount.oss.signer import Credentials, OssV4Auth
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK, over_both_schemes


def oss2_bucket_at(
    endpoint: str, auth: oss2.AuthBase | None = None, name: str = TEST_BUCKET
) -> oss2.Bucket:
    """An oss2 bucket on the server at `endpoint`: V4 with the test key unless `auth` is given."""
    if auth is None:
        auth = oss2.AuthV4(TEST_AK, TEST_SK)
    return oss2.Bucket(auth, endpoint, name, region=TEST_REGION)


def oss2_auth(version: str) -> oss2.AuthBase:
    """oss2's signer for the test key: "v1" or "v4"."""
    if version == "v1":
        return oss2.Auth(TEST_AK, TEST_SK)
    return oss2.AuthV4(TEST_AK, TEST_SK)


@pytest.fixture(params=["v1", "v4"])
def bucket(request: pytest.FixtureRequest, oss_server: RunningServer) -> oss2.Bucket:
    """TEST_BUCKET through oss2, once with V1 and once with V4 signatures."""
    return oss2_bucket_at(oss_server.endpoint, oss2_auth(request.param))


@pytest.fixture(params=["v1", "v4"])
def service(request: pytest.FixtureRequest, oss_server: RunningServer) -> oss2.Service:
    """The oss2 service (ListBuckets) with V1 and with V4 signatures."""
    return oss2.Service(oss2_auth(request.param), oss_server.endpoint, region=TEST_REGION)


class RawClient:
    """Signed (V4) raw HTTP requests, for what oss2 will not send: bad XML, odd orders."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.http = httpx.Client(
            base_url=endpoint, auth=OssV4Auth(Credentials(TEST_AK, TEST_SK), TEST_REGION)
        )

    def request(
        self,
        method: str,
        key: str | None,
        *,
        bucket: str = TEST_BUCKET,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        path = f"/{bucket}/" + (quote(key, safe="") if key else "")
        return self.http.request(
            method,
            path,
            params=params,
            content=content,
            headers=headers,
            extensions={"oss_bucket": bucket, "oss_key": key or ""},
        )


@pytest.fixture
def raw(oss_server: RunningServer) -> Iterator[RawClient]:
    client = RawClient(oss_server.endpoint)
    yield client
    client.http.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    over_both_schemes(metafunc, PLAIN_HTTP_ONLY)


# Tests of plain-HTTP framing on raw sockets.
PLAIN_HTTP_ONLY = frozenset({"tests.server.test_http", "tests.server.test_hostile"})
