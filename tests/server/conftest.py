"""Fixtures of the server tests: oss2 buckets with either signature version, raw HTTP."""

from __future__ import annotations

import oss2
import pytest

from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK


@pytest.fixture(params=["v1", "v4"])
def bucket(request: pytest.FixtureRequest, oss_server: RunningServer) -> oss2.Bucket:
    """TEST_BUCKET through oss2, once with V1 and once with V4 signatures."""
    if request.param == "v1":
        auth: oss2.AuthBase = oss2.Auth(TEST_AK, TEST_SK)
    else:
        auth = oss2.AuthV4(TEST_AK, TEST_SK)
    return oss2.Bucket(auth, oss_server.endpoint, TEST_BUCKET, region=TEST_REGION)


@pytest.fixture
def service(oss_server: RunningServer) -> oss2.Service:
    return oss2.Service(oss2.AuthV4(TEST_AK, TEST_SK), oss_server.endpoint, region=TEST_REGION)
