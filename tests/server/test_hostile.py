"""Hostile input: odd keys, malformed XML, broken HTTP, unknown requests."""

from __future__ import annotations

import base64
import logging
import os
import socket
from pathlib import Path

import oss2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oss2.exceptions import ServerError

from ossmount.server import RunningServer
from tests.conftest import TEST_BUCKET
from tests.server.conftest import RawClient

HOSTILE_KEYS = [
    "../escape",
    "../../../../../../tmp/escape",
    "a/../../b",
    "../",
    "./.",
    "/leading-slash",
    "double//slash",
    "percent%2Fslash",
    "%00%zz%",
    "spaces in  key ",
    "new\nline",
    "tab\tand\rreturn",
    "quote'\"<xml>&amp;",
    "ünïcödé/日本語/😀",
    "question?mark#hash",
    "plus+and=equals&amp",
    "back\\slash",
    "k" * 1023,
    "é" * 511 + "x",  # 1023 bytes of UTF-8
]


def _files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_hostile_keys_round_trip_and_stay_inside_root(
    oss2_bucket: oss2.Bucket, oss_server: RunningServer, tmp_path: Path
) -> None:
    outside_before = _files_under(tmp_path.parent)
    for number, key in enumerate(HOSTILE_KEYS):
        payload = f"{number}:{key}".encode()
        oss2_bucket.put_object(key, payload)
        assert oss2_bucket.get_object(key).read() == payload, key
        assert oss2_bucket.head_object(key).content_length == len(payload)
    listed = [item.key for item in oss2.ObjectIteratorV2(oss2_bucket, max_keys=7)]
    assert listed == sorted(HOSTILE_KEYS, key=lambda key: key.encode())
    # Data lives in id-named files only; nothing was created outside the root.
    names = _files_under(oss_server.root)
    for name in names:
        assert name.split("/")[0] in {"data", "parts", "tmp"} or name.startswith("index.sqlite3")
    assert _files_under(tmp_path.parent) - outside_before <= {
        str((oss_server.root / name).relative_to(tmp_path.parent)) for name in names
    }
    oss2_bucket.batch_delete_objects(HOSTILE_KEYS[:10])
    for key in HOSTILE_KEYS[10:]:
        oss2_bucket.delete_object(key)
    assert list(oss2.ObjectIteratorV2(oss2_bucket)) == []
    assert not any((oss_server.root / "data").rglob("*/*"))


def test_keys_longer_than_1023_bytes_are_refused(oss2_bucket: oss2.Bucket) -> None:
    with pytest.raises(ServerError) as caught:
        oss2_bucket.put_object("k" * 1024, b"x")
    assert (caught.value.status, caught.value.code) == (400, "InvalidObjectName")


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<CompleteMultipartUpload><Part>",
        b"<Wrong/>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">'
        b"]><CompleteMultipartUpload>&b;</CompleteMultipartUpload>",
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><CompleteMultipartUpload>&e;'
        b"</CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part>"
        b"</CompleteMultipartUpload>",
        b"<CompleteMultipartUpload></CompleteMultipartUpload>",
    ],
)
def test_malformed_complete_bodies(oss2_bucket: oss2.Bucket, raw: RawClient, body: bytes) -> None:
    upload_id = oss2_bucket.init_multipart_upload("mx").upload_id
    oss2_bucket.upload_part("mx", upload_id, 1, b"part")
    response = raw.request("POST", "mx", params={"uploadId": upload_id}, content=body)
    assert response.status_code == 400
    assert "<Code>MalformedXML</Code>" in response.text
    assert not oss2_bucket.object_exists("mx")


def test_malformed_delete_and_create_bodies(raw: RawClient) -> None:
    for body in (b"garbage", b"<Delete><Object></Object></Delete>", b"<Other/>"):
        response = raw.request("POST", None, params={"delete": ""}, content=body)
        assert response.status_code == 400, body
        assert "<Code>MalformedXML</Code>" in response.text
    response = raw.request("PUT", None, bucket="new-bucket", content=b"<CreateBucket")
    assert response.status_code == 400
    assert raw.request("GET", None, bucket="new-bucket").status_code == 404


def test_head_errors_come_in_x_oss_err(raw: RawClient) -> None:
    response = raw.request("HEAD", "missing")
    assert response.status_code == 404
    assert response.content == b""
    details = base64.b64decode(response.headers["x-oss-err"]).decode()
    assert "<Code>NoSuchKey</Code>" in details
    assert response.headers["x-oss-request-id"] in details


def test_unknown_requests_get_clean_errors(raw: RawClient) -> None:
    response = raw.request("GET", None, params={"website": ""})
    assert response.status_code == 501
    assert "<Code>NotImplemented</Code>" in response.text
    response = raw.request("PATCH", "k")
    assert response.status_code == 405
    assert "<Code>MethodNotAllowed</Code>" in response.text
    response = raw.request("POST", "k")
    assert response.status_code == 400
    assert "x-oss-request-id" in response.headers


def _raw_exchange(server: RunningServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"GET /test-bucket/%FF HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
        (
            b"PUT /test-bucket/k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"400",
        ),
        (b"PUT /test-bucket/k HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (b"PUT /test-bucket/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
    ],
)
def test_broken_http_is_answered_and_closed(
    oss_server: RunningServer, request_bytes: bytes, status: bytes
) -> None:
    oss_server.store.set_bucket_acl(
        TEST_BUCKET, "public-read-write"
    )  # unsigned writes reach the body
    answer = _raw_exchange(oss_server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"<Error>" in answer
    assert b"Connection: close" in answer


def test_truncated_upload_stores_nothing(oss_server: RunningServer) -> None:
    # A body cut short by the client: the connection ends, no object appears.
    oss_server.store.set_bucket_acl(TEST_BUCKET, "public-read-write")
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /test-bucket/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
            + os.urandom(1000)
        )
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""  # no answer: the server drops the connection
    assert oss_server.stats.count("PutObject") == 1
    assert oss_server.store.get_object(TEST_BUCKET, "cut") is None
    assert not any((oss_server.root / "tmp").iterdir())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda method, target, extra: method + b" " + target + b" HTTP/1.1\r\n" + extra,
            st.sampled_from([b"GET", b"PUT", b"POST", b"HEAD", b"DELETE", b"\x00", b""]),
            st.binary(max_size=40),
            st.binary(max_size=200),
        ),
    )
)
def test_random_bytes_never_hurt_the_server(
    oss_server: RunningServer,
    oss2_bucket: oss2.Bucket,
    caplog: pytest.LogCaptureFixture,
    garbage: bytes,
) -> None:
    with socket.create_connection(("127.0.0.1", oss_server.port), timeout=10) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    assert oss2_bucket.get_bucket_info().name == TEST_BUCKET
    # Answered or closed, but never an internal error (those are logged as errors).
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
