"""Fixtures of the client layer: an OssClient (V4) on the `oss_server` of tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ossmount.oss.client import OssClient
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_REGION, TEST_SK, over_both_schemes

# Fast retries: the server's injected faults are immediate, so long pauses only slow tests.
FAST_RETRY = RetryPolicy(max_attempts=10, base_delay_s=0.005, max_delay_s=0.05, deadline_s=60)


@pytest.fixture
async def client(oss_server: RunningServer) -> AsyncIterator[OssClient]:
    async with OssClient(
        oss_server.endpoint,
        Credentials(TEST_AK, TEST_SK),
        region=TEST_REGION,
        retry=FAST_RETRY,
    ) as oss_client:
        yield oss_client


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    over_both_schemes(metafunc)
