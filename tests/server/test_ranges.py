"""Ranges exactly as the OSS documentation gives them, for a 1,000-byte object."""

from __future__ import annotations

import os

import oss2
import pytest
import requests
from oss2.exceptions import ServerError

from ossmount.oss.signer import Credentials, presign_v1
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_SK

DATA = os.urandom(1000)
STANDARD = {"x-oss-range-behavior": "standard"}


@pytest.fixture
def thousand(bucket: oss2.Bucket) -> oss2.Bucket:
    bucket.put_object("thousand", DATA)
    return bucket


@pytest.mark.parametrize(
    ("byte_range", "standard", "status", "expected"),
    [
        ((0, 999), False, 206, DATA),
        ((0, 999), True, 206, DATA),
        ((500, 2000), False, 200, DATA),
        ((1000, 2000), False, 200, DATA),
        ((500, 2000), True, 206, DATA[500:]),
        ((None, 199), False, 206, DATA[-199:]),
        ((None, 199), True, 206, DATA[-199:]),
        ((500, None), False, 206, DATA[500:]),
        ((500, None), True, 206, DATA[500:]),
        ((10, 19), False, 206, DATA[10:20]),
        ((999, 999), True, 206, DATA[999:]),
    ],
)
def test_ranges_of_a_1000_byte_object(
    thousand: oss2.Bucket,
    byte_range: tuple[int | None, int | None],
    standard: bool,
    status: int,
    expected: bytes,
) -> None:
    result = thousand.get_object(
        "thousand", byte_range=byte_range, headers=STANDARD if standard else None
    )
    assert result.status == status
    body = result.read()
    assert body == expected
    assert int(result.headers["Content-Length"]) == len(expected)
    if status == 206:
        first = 1000 - len(expected) if byte_range[0] is None else byte_range[0]
        assert result.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/1000"
    else:
        assert "Content-Range" not in result.headers


def test_start_beyond_the_end_with_standard_behaviour_is_416(thousand: oss2.Bucket) -> None:
    with pytest.raises(ServerError) as caught:
        thousand.get_object("thousand", byte_range=(1000, 2000), headers=STANDARD)
    assert caught.value.status == 416
    assert caught.value.code == "InvalidRange"
    assert caught.value.headers["Content-Range"] == "bytes */1000"


@pytest.mark.parametrize("header", ["bytes=-5-10", "bytes=abc", "bytes=0-1,5-6", "bytes=20-10"])
def test_malformed_ranges_are_ignored(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, header: str
) -> None:
    oss2_bucket.put_object("thousand", DATA)
    key = "thousand"
    for extra in ({}, STANDARD):
        # x-oss-* headers are signed, so the URL is signed for the header it is used with.
        url = presign_v1(
            Credentials(TEST_AK, TEST_SK), "GET", f"{oss_server.endpoint}/{TEST_BUCKET}/{key}",
            TEST_BUCKET, key, 2**31, headers=extra,
        )  # fmt: skip
        response = requests.get(url, headers={"Range": header, **extra}, timeout=10)
        assert response.status_code == 200
        assert response.content == DATA


def test_head_with_range_reports_the_range_length(thousand: oss2.Bucket) -> None:
    result = thousand.head_object("thousand", headers={"Range": "bytes=100-199"})
    assert result.status == 206
    assert result.content_length == 100
