"""Known answers: the requests OssClient sends are the requests oss2 sends, signed alike.

Each case runs one operation twice at a frozen clock: through oss2.Bucket (a session that keeps
the request instead of sending it) and through OssClient (an httpx transport that does the
same). The two requests must have the same URL, the same query parameters, the same signed
headers and the same Authorization, for V1, V4 and STS credentials, for path-style and
virtual-host endpoints, and for keys with spaces, unicode, ``+``, ``%``, ``?``, ``#`` and ``//``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import oss2
import oss2.auth
import oss2.http
import pytest

from ossmount.oss.client import OssClient
from ossmount.oss.signer import Credentials

AK, SK, TOKEN = "LTAI-test-key", "secret/with+chars=", "sts-token/+value"
REGION = "cn-hangzhou"
BUCKET = "test-bucket"
FROZEN_EPOCH_S = 1_767_323_045.0  # 2026-01-02T03:04:05Z
KEYS = [
    "plain.bin",
    "dir/sub/file.bin",
    "with space.bin",
    "ünïcødé/文件.bin",
    "a+b%c?d#e.bin",
    "a//b/.bin",
    "trailing/",
]
ENDPOINTS = ["http://127.0.0.1:9000", "https://oss-cn-hangzhou.aliyuncs.com"]
CONTENT_TYPE = {"Content-Type": "application/octet-stream"}
SIGNED_PREFIXES = ("x-oss-", "content-type", "content-md5")


class CapturedError(Exception):
    pass


class CapturingSession:
    """Stands in for oss2.Session: keeps the signed request and sends nothing."""

    def __init__(self) -> None:
        self.requests: list[oss2.http.Request] = []

    def do_request(self, req: oss2.http.Request, timeout: float) -> None:
        self.requests.append(req)
        raise CapturedError


class FrozenDatetime(dt.datetime):
    @classmethod
    def utcnow(cls) -> FrozenDatetime:
        moment = dt.datetime.fromtimestamp(FROZEN_EPOCH_S, dt.UTC).replace(tzinfo=None)
        return cls(*moment.timetuple()[:6])


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: FROZEN_EPOCH_S)
    monkeypatch.setattr(oss2.auth, "datetime", FrozenDatetime)


# (name, oss2 call, ossmount call); each is given the key.
Oss2Call = Callable[[oss2.Bucket, str], Any]
OurCall = Callable[[OssClient, str], Awaitable[Any]]
OPERATIONS: list[tuple[str, Oss2Call, OurCall]] = [
    (
        "PutObject",
        lambda b, k: b.put_object(k, b"data", headers=CONTENT_TYPE),
        lambda c, k: c.put_object(BUCKET, k, b"data", headers=CONTENT_TYPE),
    ),
    (
        "PutObject forbid-overwrite + meta",
        lambda b, k: b.put_object(
            k,
            b"data",
            headers={**CONTENT_TYPE, "x-oss-forbid-overwrite": "true", "x-oss-meta-mode": "33188"},
        ),
        lambda c, k: c.put_object(
            BUCKET,
            k,
            b"data",
            headers=CONTENT_TYPE,
            metadata={"mode": "33188"},
            forbid_overwrite=True,
        ),
    ),
    (
        "GetObject range",
        lambda b, k: b.get_object(
            k, byte_range=(0, 99), headers={"x-oss-range-behavior": "standard"}
        ),
        lambda c, k: c.get_object(BUCKET, k, byte_range=(0, 99)),
    ),
    (
        "HeadObject",
        lambda b, k: b.head_object(k),
        lambda c, k: c.head_object(BUCKET, k),
    ),
    (
        "GetObjectMeta (?objectMeta)",
        lambda b, k: b.get_object_meta(k),
        lambda c, k: c.get_object_meta(BUCKET, k),
    ),
    (
        "InitiateMultipartUpload (?uploads)",
        lambda b, k: b.init_multipart_upload(k, headers=CONTENT_TYPE),
        lambda c, k: c.init_multipart_upload(BUCKET, k, headers=CONTENT_TYPE),
    ),
    (
        "UploadPart (?partNumber=&uploadId=)",
        lambda b, k: b.upload_part(k, "0004B999EF5A239BB9138C6227D6", 3, b"part"),
        lambda c, k: c.upload_part(BUCKET, k, "0004B999EF5A239BB9138C6227D6", 3, b"part"),
    ),
    (
        "AbortMultipartUpload (?uploadId=)",
        lambda b, k: b.abort_multipart_upload(k, "0004B999EF5A239BB9138C6227D6"),
        lambda c, k: c.abort_multipart_upload(BUCKET, k, "0004B999EF5A239BB9138C6227D6"),
    ),
    (
        "PutSymlink (?symlink)",
        lambda b, k: b.put_symlink("target dir/ü+%.bin", k),
        lambda c, k: c.put_symlink(BUCKET, k, "target dir/ü+%.bin"),
    ),
    (
        "GetSymlink (?symlink)",
        lambda b, k: b.get_symlink(k),
        lambda c, k: c.get_symlink(BUCKET, k),
    ),
    (
        "AppendObject (?append&position=)",
        lambda b, k: b.append_object(k, 1024, b"more", headers=CONTENT_TYPE),
        lambda c, k: c.append_object(BUCKET, k, 1024, b"more", headers=CONTENT_TYPE),
    ),
    (
        "DeleteObject",
        lambda b, k: b.delete_object(k),
        lambda c, k: c.delete_object(BUCKET, k),
    ),
]


def oss2_request(endpoint: str, auth: Any, call: Oss2Call, key: str) -> oss2.http.Request:
    session = CapturingSession()
    bucket = oss2.Bucket(auth, endpoint, BUCKET, session=session, region=REGION)
    with pytest.raises(CapturedError):
        call(bucket, key)
    assert len(session.requests) == 1
    return session.requests[0]


async def ossmount_request(
    endpoint: str, credentials: Credentials, version: int, call: OurCall, key: str
) -> httpx.Request:
    requests: list[httpx.Request] = []

    def keep(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise CapturedError

    client = OssClient(
        endpoint,
        credentials,
        region=REGION,
        signature_version=version,
        transport=httpx.MockTransport(keep),
    )
    async with client:
        with pytest.raises(CapturedError):
            await call(client, key)
    assert len(requests) == 1
    return requests[0]


def signed_headers(headers: Any) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in headers.items()
        if value is not None and name.lower().startswith(SIGNED_PREFIXES)
    }


def oss2_auth(version: int, token: str | None) -> Any:
    if version == 1:
        return oss2.StsAuth(AK, SK, token) if token else oss2.Auth(AK, SK)
    provider = (
        oss2.credentials.StaticCredentialsProvider(AK, SK, token)
        if token
        else oss2.credentials.StaticCredentialsProvider(AK, SK)
    )
    return oss2.ProviderAuthV4(provider)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    ("name", "oss2_call", "our_call"), OPERATIONS, ids=[o[0] for o in OPERATIONS]
)
@pytest.mark.parametrize(("version", "token"), [(1, None), (4, None), (1, TOKEN), (4, TOKEN)])
async def test_requests_and_signatures_match_oss2(
    endpoint: str,
    key: str,
    name: str,
    oss2_call: Oss2Call,
    our_call: OurCall,
    version: int,
    token: str | None,
) -> None:
    theirs = oss2_request(endpoint, oss2_auth(version, token), oss2_call, key)
    ours = await ossmount_request(endpoint, Credentials(AK, SK, token), version, our_call, key)

    assert ours.method == theirs.method
    our_url, _, our_query = str(ours.url).partition("?")
    assert our_url == theirs.url
    assert dict(parse_qsl(our_query, keep_blank_values=True)) == {
        k: v or "" for k, v in theirs.params.items()
    }
    assert signed_headers(ours.headers) == signed_headers(theirs.headers)
    if version == 1:
        assert ours.headers["date"] == theirs.headers["date"]
    assert ours.headers["authorization"] == theirs.headers["authorization"]


async def test_anonymous_requests_are_not_signed() -> None:
    requests: list[httpx.Request] = []

    def keep(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise CapturedError

    async with OssClient(ENDPOINTS[0], None, transport=httpx.MockTransport(keep)) as client:
        with pytest.raises(CapturedError):
            await client.head_object(BUCKET, "k")
    assert "authorization" not in requests[0].headers
