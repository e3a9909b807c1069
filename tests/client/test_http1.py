"""oss/http1.py, the client's fast transport: response heads, and small exchanges on kept
connections in worker threads, against scripted servers (to break connections on purpose) and
through OssClient against the bundled server (over http and https)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import oss2
import pytest
import trio

from ossmount.oss.client import OssClient
from ossmount.oss.errors import Forbidden, NoSuchKey, OssConnectionError, OssProtocolError
from ossmount.oss.http1 import BodyError, Exchanges, Pools, parse_response_head, request_bytes
from ossmount.oss.retry import NO_RETRY
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION

OK = b'HTTP/1.1 200 OK\r\nETag: "x"\r\nContent-Length: 7\r\n\r\n'


def test_parse_response_head() -> None:
    head = parse_response_head(b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0")
    assert (head.status, head.headers, head.keep_alive) == (
        404,
        {"x-a": "1, 2", "content-length": "0"},
        True,
    )
    assert not parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close").keep_alive
    assert not parse_response_head(b"HTTP/1.0 200 OK").keep_alive
    assert parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive").keep_alive
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc", b"HTTP/1.1 200 OK\r\nno colon"):
        with pytest.raises(OssProtocolError):
            parse_response_head(bad)


def test_request_bytes() -> None:
    request = httpx.Request("HEAD", "http://h:1/b/a%20b?x=1", headers={"X-Oss-A": "v"})
    assert request_bytes(request) == (
        b"HEAD /b/a%20b?x=1 HTTP/1.1\r\nHost: h:1\r\nX-Oss-A: v\r\n\r\n"
    )
    assert request_bytes(request, absolute_form=True).startswith(
        b"HEAD http://h:1/b/a%20b?x=1 HTTP/1.1\r\n"
    )


def small_exchanges(timeout_s: float = 5) -> Exchanges:
    return Exchanges(
        Pools(tls=None, proxy=None, timeout_s=timeout_s, max_idle=4), answer_limit=1 << 20
    )


@asynccontextmanager
async def scripted_server(
    answer: Callable[[trio.SocketStream, int, int], object],
) -> AsyncIterator[tuple[int, list[int]]]:
    """A loopback server whose ``answer(stream, connection_no, request_no)`` coroutine answers
    each request head it reads; yields (port, requests per connection)."""
    counts: list[int] = []

    async def serve(stream: trio.SocketStream) -> None:
        number = len(counts)
        counts.append(0)
        buffer = b""
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    counts[number] += 1
                    if await answer(stream, number, counts[number]) is False:  # type: ignore[misc]
                        return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1], counts
        nursery.cancel_scope.cancel()


def head_request(port: int) -> httpx.Request:
    return httpx.Request("HEAD", f"http://127.0.0.1:{port}/b/k")


async def test_one_kept_connection_serves_requests_in_turn() -> None:
    async def answer(stream: trio.SocketStream, _c: int, _r: int) -> None:
        await stream.send_all(OK)

    async with scripted_server(answer) as (port, counts):
        heads = small_exchanges()
        for _ in range(3):
            head = (await heads.exchange(head_request(port))).head
            assert (head.status, head.headers["etag"]) == (200, '"x"')
        assert counts == [3]


async def test_a_connection_the_server_closed_is_replaced() -> None:
    async def answer(stream: trio.SocketStream, _c: int, _r: int) -> bool:
        await stream.send_all(OK)
        return False  # then close the connection, as an idle timeout would

    async with scripted_server(answer) as (port, counts):
        heads = small_exchanges()
        for _ in range(3):
            assert ((await heads.exchange(head_request(port))).head).status == 200
            await trio.sleep(0.05)  # the close reaches the client's kept connection
        assert counts == [1, 1, 1]


async def test_an_answer_with_a_body_or_close_is_not_kept() -> None:
    async def answer(stream: trio.SocketStream, connection: int, _r: int) -> None:
        extra = b"body!" if connection == 0 else b""
        close = b"Connection: close\r\n" if connection == 1 else b""
        await stream.send_all(b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 5\r\n\r\n" + extra)

    async with scripted_server(answer) as (port, counts):
        heads = small_exchanges()
        for _ in range(3):
            assert ((await heads.exchange(head_request(port))).head).status == 200
        assert counts == [1, 1, 1]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-", ConnectionResetError),  # closed within the head
        (b"", ConnectionResetError),  # closed before any byte, on a new connection
        (b"garbage\r\n\r\n", OssProtocolError),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, OssProtocolError),  # head too long
    ],
)
async def test_broken_answers(reply: bytes, error: type[Exception]) -> None:
    async def answer(stream: trio.SocketStream, _c: int, _r: int) -> bool:
        await stream.send_all(reply)
        return False

    async with scripted_server(answer) as (port, _):
        heads = small_exchanges()
        with pytest.raises(error):
            await heads.exchange(head_request(port))


async def test_a_silent_server_times_out() -> None:
    async def answer(_s: trio.SocketStream, _c: int, _r: int) -> None:
        await trio.sleep_forever()

    async with scripted_server(answer) as (port, _):
        heads = small_exchanges(timeout_s=0.2)
        with pytest.raises(OSError):  # the socket's timeout
            await heads.exchange(head_request(port))


async def test_client_heads_go_through_http1_against_the_server(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    assert client.pools is not None  # HEADs take the fast transport, over http and https
    oss2_bucket.put_object("h.txt", b"hello", headers={"x-oss-meta-mode": "33152"})
    info = await client.head_object(TEST_BUCKET, "h.txt")
    assert (info.size, info.metadata["mode"]) == (5, "33152")
    with pytest.raises(NoSuchKey):
        await client.head_object(TEST_BUCKET, "missing")
    async with OssClient(
        oss_server.endpoint, Credentials(TEST_AK, "wrong"), region=TEST_REGION, retry=NO_RETRY
    ) as wrong:
        with pytest.raises(Forbidden):
            await wrong.head_object(TEST_BUCKET, "h.txt")
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with OssClient(
        f"http://127.0.0.1:{port}", Credentials(TEST_AK, "x"), region=TEST_REGION, retry=NO_RETRY
    ) as nobody_listens:
        with pytest.raises(OssConnectionError):
            await nobody_listens.head_object(TEST_BUCKET, "h.txt")


async def test_cancelling_stops_the_worker_at_once() -> None:
    async def answer(_s: trio.SocketStream, _c: int, _r: int) -> None:
        await trio.sleep_forever()

    async with scripted_server(answer) as (port, _):
        heads = small_exchanges(timeout_s=60)
        with trio.fail_after(10), trio.move_on_after(0.2) as scope:
            await heads.exchange(head_request(port))
        assert scope.cancelled_caught


async def test_bodies_both_ways() -> None:
    received: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 5:
            data += await stream.receive_some(65536)
        received.append(data.split(b"\r\n\r\n", 1)[1])
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        request = httpx.Request(
            "PUT", f"http://127.0.0.1:{port}/b/k", headers={"Content-Length": "5"}
        )
        answer = await small_exchanges().exchange(request, b"hello")
        assert (answer.head.status, answer.body, received) == (200, b"abc", [b"hello"])
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
         b"2;x=y\r\nde\r\n0\r\nTrailer: t\r\n\r\n", b"abcde"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end", b"to the end"),
    ],
)  # fmt: skip
async def test_answers_without_content_length(reply: bytes, body: bytes) -> None:
    async def answer(stream: trio.SocketStream, _c: int, _r: int) -> bool:
        await stream.send_all(reply)
        return False

    async with scripted_server(answer) as (port, _):
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/b?list-type=2")
        assert (await small_exchanges().exchange(request)).body == body


async def test_a_body_read_from_a_file_as_it_is_sent(tmp_path: Path) -> None:
    received: list[bytes] = []
    data = os.urandom(3 * 1024 * 1024 + 5)

    async def serve(stream: trio.SocketStream) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer or len(buffer.split(b"\r\n\r\n", 1)[1]) < len(data):
            buffer += await stream.receive_some(1 << 20)
        received.append(buffer.split(b"\r\n\r\n", 1)[1])
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 1 << 20):
            yield data[start : start + (1 << 20)]

    def unreadable() -> Iterator[bytes]:
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "gone"))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        request = httpx.Request(
            "PUT", f"http://127.0.0.1:{port}/b/k", headers={"Content-Length": str(len(data))}
        )
        exchanges = small_exchanges()
        assert (await exchanges.exchange(request, pieces)).head.status == 200
        assert received == [data]
        # The body's own failure is told apart from the network's.
        with pytest.raises(BodyError) as caught:
            await exchanges.exchange(request, unreadable)
        assert isinstance(caught.value.error, FileNotFoundError)
        nursery.cancel_scope.cancel()
