"""OssClient logic that needs no server: URLs, regions, retries with re-sent bodies, CRC checks,
body resume. The network is httpx.MockTransport; everything else is the real client. Real-server
tests are in tests/client/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import trio.testing

from ossmount.oss import errors
from ossmount.oss.client import FileSlice, OssClient, quote_key
from ossmount.oss.crc64 import crc64
from ossmount.oss.model import PartInfo
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials

CREDS = Credentials("AKID", "very-secret-value", "token-value")


class Body(httpx.AsyncByteStream):
    """A response body delivered in the given pieces, optionally failing after them."""

    def __init__(self, *pieces: bytes, fail: bool = False) -> None:
        self.pieces = pieces
        self.fail = fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail:
            raise httpx.ReadError("connection reset by peer")


def client_for(
    handler: Callable[[httpx.Request], httpx.Response], max_attempts: int = 8
) -> OssClient:
    return OssClient(
        "http://127.0.0.1:9000",
        CREDS,
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=max_attempts, base_delay_s=0.01),
    )


def test_url_styles_and_regions() -> None:
    local = OssClient("http://127.0.0.1:9000", CREDS)
    assert local.path_style and local.url("b", "a/b c") == "http://127.0.0.1:9000/b/a%2Fb%20c"
    assert OssClient("http://localhost:1", CREDS).path_style
    cloud = OssClient("oss-cn-shanghai.aliyuncs.com", CREDS)
    assert not cloud.path_style and cloud.region == "cn-shanghai"
    assert cloud.url("b", "k") == "https://b.oss-cn-shanghai.aliyuncs.com/k"
    internal = OssClient("http://oss-cn-beijing-internal.aliyuncs.com", CREDS)
    assert internal.region == "cn-beijing"
    assert OssClient("https://example.com", CREDS, region="eu-west-1").region == "eu-west-1"
    with pytest.raises(ValueError, match="region"):
        OssClient("https://example.com", CREDS)
    assert OssClient("https://example.com", CREDS, signature_version=1).url("b", "") == (
        "https://b.example.com/"
    )
    with pytest.raises(ValueError, match="endpoint"):
        OssClient("ftp://host", CREDS)


def test_dot_keys_survive_url_normalisation() -> None:
    assert quote_key("..") == "%2E%2E"
    assert quote_key("a/../b") == "a%2F..%2Fb"


def test_secrets_stay_out_of_reprs() -> None:
    assert "very-secret-value" not in repr(CREDS) and "token-value" not in repr(CREDS)
    assert "very-secret-value" not in repr(OssClient("http://127.0.0.1:1", CREDS))


async def test_get_sends_range_behavior_and_checks_whole_object_crc(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[httpx.Request] = []
    data = b"hello world"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            headers={"x-oss-hash-crc64ecma": str(crc64(data) ^ 1), "Content-Length": "11"},
            stream=Body(data),
        )

    async with client_for(handler) as client:
        with pytest.raises(errors.IntegrityError, match="CRC-64"):
            await client.get_object("b", "k")
    assert seen[0].headers["x-oss-range-behavior"] == "standard"


async def test_body_cut_mid_way_is_resumed_with_range_and_if_match(
    autojump_clock: trio.testing.MockClock,
) -> None:
    data = bytes(range(256)) * 40
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        common = {"ETag": '"E1"', "x-oss-hash-crc64ecma": str(crc64(data))}
        if "range" not in request.headers:
            return httpx.Response(
                200,
                headers={**common, "Content-Length": str(len(data))},
                stream=Body(data[:1000], data[1000:3000], fail=True),
            )
        first = int(request.headers["range"].removeprefix("bytes=").split("-")[0])
        return httpx.Response(
            206,
            headers={
                **common,
                "Content-Length": str(len(data) - first),
                "Content-Range": f"bytes {first}-{len(data) - 1}/{len(data)}",
            },
            stream=Body(data[first:]),
        )

    async with client_for(handler) as client:
        assert await client.get_object("b", "k") == data
    assert len(seen) == 2
    assert seen[1].headers["range"] == "bytes=3000-10239"
    assert seen[1].headers["if-match"] == '"E1"'


async def test_failed_put_is_resent_from_the_file_slice_start(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"0123456789" * 300_000)  # 3 MB: several read chunks
    expected = source.read_bytes()[5:2_500_005]
    bodies: list[bytes] = []

    async def handler_async(request: httpx.Request) -> httpx.Response:
        bodies.append(await request.aread())
        if len(bodies) < 3:
            return httpx.Response(503, content=b"<Error><Code>ServiceUnavailable</Code></Error>")
        return httpx.Response(
            200, headers={"ETag": '"X"', "x-oss-hash-crc64ecma": str(crc64(bodies[-1]))}
        )

    client = OssClient(
        "http://127.0.0.1:9000",
        CREDS,
        transport=httpx.MockTransport(handler_async),
        retry=RetryPolicy(base_delay_s=0.01),
    )
    async with client:
        result = await client.put_object("b", "k", FileSlice(source, 5, 2_500_000))
    assert bodies == [expected, expected, expected]
    assert result.crc64 == crc64(expected)


async def test_put_crc_mismatch_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"ETag": '"X"', "x-oss-hash-crc64ecma": "12345"})

    async with client_for(handler) as client:
        with pytest.raises(errors.IntegrityError):
            await client.put_object("b", "k", b"data")


async def test_one_shot_stream_gets_one_attempt(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await request.aread()
        return httpx.Response(503, content=b"<Error><Code>SlowDown</Code></Error>")

    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"

    client = OssClient("http://127.0.0.1:9000", CREDS, transport=httpx.MockTransport(handler))
    async with client:
        with pytest.raises(errors.SlowDown):
            await client.put_object("b", "k", stream(), size=3)
    assert calls == 1


async def test_non_xml_success_body_is_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>proxy login</html>")

    async with client_for(handler) as client:
        with pytest.raises(errors.OssProtocolError, match="ListObjectsV2"):
            await client.list_objects_page("b")


async def test_connection_errors_become_oss_connection_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused")

    async with client_for(handler, max_attempts=3) as client:
        with pytest.raises(errors.OssConnectionError) as info:
            await client.head_object("b", "k")
    assert calls == 3
    assert info.value.errno == 5  # EIO
    assert "very-secret-value" not in str(info.value)


async def test_complete_whose_answer_was_lost_is_recognised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    part_data = b"part one"
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "POST" and len(calls) == 1:
            raise httpx.ReadError("connection reset after the server completed the upload")
        if request.method == "POST":
            return httpx.Response(
                404, content=b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
            )
        return httpx.Response(
            200,
            headers={
                "ETag": '"DONE-1"',
                "Content-Length": str(len(part_data)),
                "x-oss-hash-crc64ecma": str(crc64(part_data)),
            },
        )

    part = PartInfo(1, '"P1"', len(part_data), crc64=crc64(part_data))
    async with client_for(handler) as client:
        result = await client.complete_multipart_upload("b", "k", "U1", [part])
        assert (result.etag, result.crc64) == ('"DONE-1"', crc64(part_data))
        assert calls == ["POST", "POST", "HEAD"]
        calls.clear()
        other = PartInfo(1, '"P1"', len(part_data), crc64=crc64(b"other data"))
        with pytest.raises(errors.NoSuchUpload):  # the object there is not ours
            await client.complete_multipart_upload("b", "k", "U1", [other])


async def test_a_range_answered_with_the_whole_object_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "5"}, stream=Body(b"whole"))

    async with client_for(handler) as client:
        with pytest.raises(errors.OssProtocolError, match="Content-Range"):
            await client.get_object("b", "k", byte_range=(1, 2))
