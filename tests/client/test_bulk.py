"""BulkGetter (oss/bulk.py): ranged GETs received by worker threads, against the bundled server
(over http and https).

Objects are uploaded with oss2 (an independent client); faults are injected by the server.
"""

from __future__ import annotations

import os
import socket

import httpx
import oss2
import pytest
import trio

from ossmount.oss.bulk import BulkBody, BulkGetter
from ossmount.oss.client import OssClient
from ossmount.oss.crc64 import crc64
from ossmount.oss.errors import (
    InvalidRange,
    NoSuchKey,
    OssConnectionError,
    PreconditionFailed,
    ServerError,
)
from ossmount.oss.http1 import Connection
from ossmount.oss.retry import NO_RETRY
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer
from tests.client.conftest import FAST_RETRY
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK

MIB = 1024 * 1024


def idle_connections(client: OssClient) -> list[Connection]:
    """The kept connections of the client's pool for its endpoint (path-style URLs)."""
    assert client.pools is not None
    return client.pools.for_url(httpx.URL(client.endpoint))._idle


async def collect(body: BulkBody) -> list[bytes]:
    return [piece async for piece in body]


async def test_range_arrives_in_aligned_pieces(client: OssClient, oss2_bucket: oss2.Bucket) -> None:
    data = os.urandom(5 * MIB + 123)
    result = oss2_bucket.put_object("big.bin", data)
    getter = BulkGetter(client)
    start, end = 100, 3 * MIB + 4
    async with getter.open_range(
        TEST_BUCKET, "big.bin", start, end, if_match=f'"{result.etag}"',
        piece_size=MIB,
    ) as body:  # fmt: skip
        pieces = await collect(body)
    assert b"".join(pieces) == data[start : end + 1]
    # Each piece ends at a multiple of the piece size, or at the end of the range.
    assert [len(p) for p in pieces] == [MIB - 100, MIB, MIB, 5]
    assert body.info.size == len(data)
    assert body.info.etag.strip('"') == result.etag
    getter.close()


async def test_a_slow_consumer_holds_the_body_back(
    client: OssClient, oss2_bucket: oss2.Bucket
) -> None:
    data = os.urandom(24 * MIB)
    oss2_bucket.put_object("held.bin", data)
    getter = BulkGetter(client)
    async with getter.open_range(
        TEST_BUCKET, "held.bin", 0, len(data) - 1, if_match=None, piece_size=MIB
    ) as body:
        await trio.sleep(1.0)  # the consumer does not take anything yet
        # The receiving thread stopped after a few pieces (the socket holds back the rest)
        # instead of reading all 24 MiB into memory.
        queued = body._receive.statistics().current_buffer_used
        assert 1 <= queued <= 4 + 1  # the pieces ahead, and the head's event
        assert b"".join(await collect(body)) == data
    getter.close()


async def test_whole_object_is_crc_checked(client: OssClient, oss2_bucket: oss2.Bucket) -> None:
    data = os.urandom(2 * MIB + 7)
    oss2_bucket.put_object("whole.bin", data)
    getter = BulkGetter(client)
    async with getter.open_range(
        TEST_BUCKET, "whole.bin", 0, len(data) - 1, if_match=None, piece_size=MIB
    ) as body:
        assert b"".join(await collect(body)) == data
    assert body.info.crc64 == crc64(data)
    getter.close()


async def test_error_answers_are_the_clients_exceptions(
    client: OssClient, oss2_bucket: oss2.Bucket
) -> None:
    oss2_bucket.put_object("small.bin", b"x" * 1000)
    getter = BulkGetter(client)
    with pytest.raises(PreconditionFailed):
        async with getter.open_range(
            TEST_BUCKET, "small.bin", 0, 9, if_match='"not-the-etag"', piece_size=MIB
        ):
            pass
    with pytest.raises(NoSuchKey):
        async with getter.open_range(TEST_BUCKET, "absent", 0, 9, if_match=None, piece_size=MIB):
            pass
    with pytest.raises(InvalidRange):
        async with getter.open_range(
            TEST_BUCKET, "small.bin", 5000, 5009, if_match=None, piece_size=MIB
        ):
            pass
    # Error answers are read whole: their connection is kept for the next GET.
    assert len(idle_connections(client)) == 1
    async with getter.open_range(
        TEST_BUCKET, "small.bin", 0, 999, if_match=None, piece_size=MIB
    ) as body:
        assert b"".join(await collect(body)) == b"x" * 1000
    getter.close()


async def test_connections_are_kept_and_dead_ones_replaced(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    data = os.urandom(300_000)
    oss2_bucket.put_object("reuse.bin", data)
    getter = BulkGetter(client)
    for _ in range(5):
        async with getter.open_range(
            TEST_BUCKET, "reuse.bin", 0, 99_999, if_match=None, piece_size=MIB
        ) as body:
            assert b"".join(await collect(body)) == data[:100_000]
    idle = idle_connections(client)
    assert len(idle) == 1  # one connection served the five GETs one after another
    # The server closes a kept connection (here: after the client half-closed it): the next GET
    # notices before sending and connects anew.
    socket.socket.shutdown(idle[0].sock, socket.SHUT_WR)
    await trio.sleep(0.2)
    async with getter.open_range(
        TEST_BUCKET, "reuse.bin", 5, 9, if_match=None, piece_size=MIB
    ) as body:
        assert b"".join(await collect(body)) == data[5:10]
    assert len(idle_connections(client)) == 1
    await client.aclose()
    assert not idle_connections(client)


async def test_server_errors_are_retried_by_the_client_policy(
    oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    data = os.urandom(MIB)
    oss2_bucket.put_object("flaky.bin", data)
    async with OssClient(
        oss_server.endpoint, Credentials(TEST_AK, TEST_SK), region=TEST_REGION, retry=FAST_RETRY
    ) as retrying, OssClient(
        oss_server.endpoint, Credentials(TEST_AK, TEST_SK), region=TEST_REGION, retry=NO_RETRY
    ) as single:  # fmt: skip
        oss_server.faults.only_operations = frozenset({"GetObject"})
        oss_server.faults.error_rate = 0.5
        oss_server.faults.reseed(3)
        getter = BulkGetter(retrying)
        for _ in range(5):
            async with getter.open_range(
                TEST_BUCKET, "flaky.bin", 0, MIB - 1, if_match=None, piece_size=MIB
            ) as body:
                assert b"".join(await collect(body)) == data
        getter.close()
        oss_server.faults.error_rate = 1.0
        once = BulkGetter(single)
        before = oss_server.stats.count("GetObject")
        with pytest.raises(ServerError):
            async with once.open_range(
                TEST_BUCKET, "flaky.bin", 0, 9, if_match=None, piece_size=MIB
            ):
                pass
        assert oss_server.stats.count("GetObject") == before + 1
        once.close()
        oss_server.faults.clear()


async def test_broken_body_raises_connection_error(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    data = os.urandom(4 * MIB)
    oss2_bucket.put_object("cut.bin", data)
    getter = BulkGetter(client)
    oss_server.faults.only_operations = frozenset({"GetObject"})
    oss_server.faults.reset_rate = 1.0
    received = 0
    with pytest.raises(OssConnectionError):
        async with getter.open_range(
            TEST_BUCKET, "cut.bin", 0, len(data) - 1, if_match=None, piece_size=MIB
        ) as body:
            async for piece in body:
                received += len(piece)
    oss_server.faults.clear()
    assert received < len(data)
    getter.close()


async def test_leaving_early_stops_the_receiving_thread(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    data = os.urandom(8 * MIB)
    oss2_bucket.put_object("slow.bin", data)
    oss_server.faults.bandwidth_bytes_per_s = 2 * MIB
    getter = BulkGetter(client)
    with trio.fail_after(10):
        async with getter.open_range(
            TEST_BUCKET, "slow.bin", 0, len(data) - 1, if_match=None, piece_size=MIB
        ) as body:
            async for piece in body:
                assert piece == data[:MIB]
                break
        with trio.move_on_after(0.2) as scope:
            async with getter.open_range(
                TEST_BUCKET, "slow.bin", 0, len(data) - 1, if_match=None, piece_size=MIB
            ) as body:
                await collect(body)
        assert scope.cancelled_caught
    oss_server.faults.bandwidth_bytes_per_s = 0
    # Neither stopped GET left its connection to be reused half-read.
    assert not idle_connections(client)
    async with getter.open_range(
        TEST_BUCKET, "slow.bin", 0, 9, if_match=None, piece_size=MIB
    ) as body:
        assert b"".join(await collect(body)) == data[:10]
    getter.close()


async def test_supports_every_client_on_the_network(oss_server: RunningServer) -> None:
    credentials = Credentials(TEST_AK, TEST_SK)
    async with OssClient(oss_server.endpoint, credentials) as plain:
        assert BulkGetter.supports(plain)
    async with OssClient("https://oss-cn-hangzhou.aliyuncs.com", credentials) as tls:
        assert BulkGetter.supports(tls)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    async with OssClient(oss_server.endpoint, credentials, transport=mock) as mocked:
        assert not BulkGetter.supports(mocked)
        with pytest.raises(ValueError, match="uses the network"):
            BulkGetter(mocked)
