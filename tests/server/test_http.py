"""The HTTP layer with real tools: curl (chunked uploads, 100-continue, keep-alive), HTTP/1.0,
pipelining, and the server running in the test's own trio loop."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path

import httpx
import oss2
import pytest

from ossmount.oss.signer import Credentials, OssV4Auth
from ossmount.server import RunningServer, open_server
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK, server_config


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "-f", *args], capture_output=True, timeout=60, check=True)


def test_curl_chunked_and_expect_continue_uploads(oss2_bucket: oss2.Bucket, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    chunked_url = oss2_bucket.sign_url("PUT", "chunked.bin", 60)
    _curl("-T", str(source), "-H", "Transfer-Encoding: chunked", "-H", "Content-Type:", chunked_url)
    assert oss2_bucket.get_object("chunked.bin").read() == data
    # curl asks "Expect: 100-continue" for a body this large and waits for the go-ahead.
    expect_url = oss2_bucket.sign_url("PUT", "expect.bin", 60)
    result = _curl("-v", "-T", str(source), "-H", "Content-Type:", expect_url)
    assert b"100 Continue" in result.stderr
    head = oss2_bucket.head_object("expect.bin")
    assert head.etag == hashlib.md5(data).hexdigest().upper()


def test_curl_reuses_the_connection(oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("a", b"first")
    oss2_bucket.put_object("b", b"second")
    first = oss2_bucket.sign_url("GET", "a", 60)
    second = oss2_bucket.sign_url("GET", "b", 60)
    result = _curl("-v", first, second)
    assert result.stdout == b"firstsecond"
    assert b"Re-using existing connection" in result.stderr or b"left intact" in result.stderr


def test_http_1_0_and_pipelined_requests(
    oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    oss2_bucket.put_bucket_acl(oss2.BUCKET_ACL_PUBLIC_READ)
    oss2_bucket.put_object("p", b"pipelined")
    request = f"GET /{TEST_BUCKET}/p HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    closing = f"GET /{TEST_BUCKET}/p HTTP/1.0\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(request + request + closing)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.count(b"pipelined") == 3


async def test_open_server_in_the_callers_trio_loop(tmp_path: Path) -> None:
    async with open_server(server_config(tmp_path / "root")) as server:
        auth = OssV4Auth(Credentials(TEST_AK, TEST_SK), TEST_REGION)
        async with httpx.AsyncClient(base_url=server.endpoint, auth=auth) as client:
            extensions = {"oss_bucket": TEST_BUCKET, "oss_key": "async"}
            put = await client.put(
                f"/{TEST_BUCKET}/async", content=b"in loop", extensions=extensions
            )
            assert put.status_code == 200
            assert put.headers["x-oss-hash-crc64ecma"]
            got = await client.get(f"/{TEST_BUCKET}/async", extensions=extensions)
            assert got.content == b"in loop"
        assert server.stats.count("PutObject") == 1


async def test_open_server_lets_the_callers_exception_through(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with open_server(server_config(tmp_path / "root")):
            raise KeyError("from the caller")
