"""The HTTP layer with real tools: curl (chunked uploads, 100-continue, keep-alive), HTTP/1.0,
pipelining, and the server running in the test's own trio loop."""

from __future__ import annotations

import gzip
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


def _read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def test_presigned_get_with_a_declared_body_that_never_comes(
    bucket: oss2.Bucket,
) -> None:
    # The URL is signed with Content-Length: 9 among its headers; requests sends that header
    # with a GET and no body. The server must not wait for the 9 bytes (the client would time
    # out: 5 s here, where OSS answers at once).
    bucket.timeout = 5  # seconds, for connecting and for each read
    bucket.put_object("k", b"Hello OSS")
    headers = {"Content-Length": "9", "custom-header": "abc"}
    url = bucket.sign_url("GET", "k", 600, slash_safe=True, headers=headers)
    result = bucket.get_object_with_url(url, byte_range=(1, 3), headers=headers)
    assert result.read() == b"ell"
    # ... and the connection is closed after the answer, not kept to swallow the next request.
    assert result.resp.response.headers["Connection"] == "close"
    assert bucket.get_object("k").read() == b"Hello OSS"


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"DELETE"])
def test_bodiless_methods_are_answered_without_their_declared_body(
    oss_server: RunningServer, method: bytes
) -> None:
    oss_server.store.set_bucket_acl(TEST_BUCKET, "public-read-write")
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(
            method + b" /test-bucket/absent HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"
        )
        head, _ = _read_answer(sock) if method != b"HEAD" else (sock.recv(65536), b"")
        assert head.startswith(b"HTTP/1.1 404" if method != b"DELETE" else b"HTTP/1.1 204"), head
        assert b"Connection: close" in head
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""  # the server closed its side


def test_rejected_put_is_answered_before_its_body_and_keeps_the_connection(
    oss_server: RunningServer,
) -> None:
    # Unsigned PUT to a private bucket: refused before the body is needed, so answered before
    # it comes; the small body that follows is drained and the connection serves on.
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /test-bucket/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        head, body = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 403"), head
        assert b"AccessDenied" in body and b"Connection: close" not in head
        sock.sendall(b"hello" + b"GET /test-bucket/k HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 403"), head
    assert oss_server.store.get_object(TEST_BUCKET, "k") is None


def test_rejected_put_whose_body_never_comes_is_answered(oss_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /missing-bucket/k HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
        head, body = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 40"), head
        assert b"<Error>" in body


def test_a_large_rejected_body_closes_the_connection(oss_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /test-bucket/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        head, _ = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 403") and b"Connection: close" in head
        sock.sendall(os.urandom(1 << 16))  # still sending: read and dropped, no reset
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def test_gzip_stream_is_gzip_on_the_wire(oss_server: RunningServer, bucket: oss2.Bucket) -> None:
    data = os.urandom(1 << 20).hex().encode()  # 2 MiB of text, several compressed chunks
    bucket.put_object("big.json", data, headers={"Content-Type": "application/json"})
    oss_server.store.set_bucket_acl(TEST_BUCKET, "public-read")
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=30) as sock:
        sock.sendall(
            b"GET /test-bucket/big.json HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    head, _, framed = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    body = b""
    while True:
        size_line, _, framed = framed.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, framed = body + framed[:size], framed[size + 2 :]
    assert gzip.decompress(body) == data
