"""Shared fixtures for every layer: a real ossmount server on loopback, and oss2 against it.

- TEST_AK / TEST_SK / TEST_BUCKET / TEST_REGION: the credentials and bucket of `oss_server`.
- `oss_server` (function scope): a fresh server (root in tmp_path, TEST_BUCKET created), run in
  a thread of its own, so it serves sync (oss2) and async (trio) tests alike -> RunningServer
  (.endpoint, .faults, .stats, .port, .root).
- `oss2_bucket`: an oss2.Bucket for TEST_BUCKET on that server, V4 auth, region TEST_REGION.
- `oss2_bucket_v1`: the same with V1 auth (oss2.Auth).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest

from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer, ServerConfig, run_server_in_thread

TEST_AK = "test-ak"
TEST_SK = "test-secret"
TEST_BUCKET = "test-bucket"
TEST_REGION = "cn-hangzhou"


def server_config(root: Path, **overrides: object) -> ServerConfig:
    """The configuration `oss_server` uses, for tests that start servers of their own."""
    config = ServerConfig(
        root=root,
        credentials=[Credentials(TEST_AK, TEST_SK)],
        buckets=[TEST_BUCKET],
        region=TEST_REGION,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def oss_server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server_in_thread(server_config(tmp_path / "oss-server-root")) as server:
        yield server


@pytest.fixture
def oss2_bucket(oss_server: RunningServer) -> oss2.Bucket:
    auth = oss2.AuthV4(TEST_AK, TEST_SK)
    return oss2.Bucket(auth, oss_server.endpoint, TEST_BUCKET, region=TEST_REGION)


@pytest.fixture
def oss2_bucket_v1(oss_server: RunningServer) -> oss2.Bucket:
    return oss2.Bucket(oss2.Auth(TEST_AK, TEST_SK), oss_server.endpoint, TEST_BUCKET)
