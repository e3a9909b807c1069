"""FileReader/ReadCache against the bundled server through the real client (loopback sockets).

Objects are uploaded with oss2 (an independent client); requests are counted at the server.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import oss2
import pytest
import trio

from ossmount.fs.reader import FileReader, ReadCache
from ossmount.oss.client import OssClient
from ossmount.oss.crc64 import crc64
from ossmount.oss.errors import IntegrityError, PreconditionFailed
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_SK

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
async def client(oss_server: Any) -> AsyncIterator[OssClient]:
    async with OssClient(oss_server.endpoint, Credentials(TEST_AK, TEST_SK)) as oss_client:
        yield oss_client


def make_cache(
    client: OssClient,
    nursery: trio.Nursery,
    *,
    block_size: int = MIB,
    cache_bytes: int = 32 * MIB,
    max_inflight: int = 4,
    threaded_gets: bool = True,
    **options: Any,
) -> ReadCache:
    return ReadCache(
        client,
        TEST_BUCKET,
        block_size=block_size,
        cache_bytes=cache_bytes,
        max_inflight=max_inflight,
        nursery=nursery,
        threaded_gets=threaded_gets,
        **options,
    )


async def open_object(cache: ReadCache, client: OssClient, key: str) -> FileReader:
    info = await client.head_object(TEST_BUCKET, key)
    return cache.open(key, info.size, info.etag, info.crc64)


async def read_all(reader: FileReader, request_size: int = MIB) -> bytes:
    out = bytearray()
    while True:
        data = await reader.read(len(out), request_size)
        if not data:
            return bytes(out)
        out += data


def gets(oss_server: Any) -> int:
    return int(oss_server.stats.count("GetObject"))


# Bodies received by worker threads (oss/bulk.py, the default for an http endpoint), or through
# the client (httpx), as for https endpoints.
BODY_PATHS = pytest.mark.parametrize("threaded_gets", [True, False], ids=["threads", "client"])


@BODY_PATHS
async def test_sequential_whole_read(
    client: OssClient,
    oss2_bucket: oss2.Bucket,
    oss_server: Any,
    nursery: trio.Nursery,
    threaded_gets: bool,
) -> None:
    data = os.urandom(24 * MIB + 333)
    oss2_bucket.put_object("seq.bin", data)
    cache = make_cache(client, nursery, part_size=4 * MIB, threaded_gets=threaded_gets)
    reader = await open_object(cache, client, "seq.bin")
    oss_server.stats.reset()
    assert await read_all(reader) == data
    assert cache.stats.bytes_fetched == len(data)  # every byte once
    assert gets(oss_server) <= 12  # ramp-up 1, 2, 4 blocks, then 4 MiB parts
    await reader.close()


async def test_random_reads_fetch_only_touched_blocks(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: Any, nursery: trio.Nursery
) -> None:
    data = os.urandom(64 * MIB)
    oss2_bucket.put_object("random.bin", data)
    cache = make_cache(client, nursery, cache_bytes=64 * MIB)
    reader = await open_object(cache, client, "random.bin")
    rng = random.Random(5)
    oss_server.stats.reset()
    offsets = [rng.randrange(len(data) - 4 * KIB) for _ in range(12)]
    for offset in offsets:
        assert await reader.read(offset, 4 * KIB) == data[offset : offset + 4 * KIB]
    touched = {o // MIB for o in offsets} | {(o + 4 * KIB - 1) // MIB for o in offsets}
    assert cache.stats.bytes_fetched <= (len(touched) + 4) * MIB
    assert gets(oss_server) <= len(touched) + 4
    await reader.close()


async def test_concurrent_readers_share_one_fetch(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: Any, nursery: trio.Nursery
) -> None:
    data = os.urandom(8 * MIB)
    oss2_bucket.put_object("shared.bin", data)
    cache = make_cache(client, nursery)
    readers = [await open_object(cache, client, "shared.bin") for _ in range(6)]
    oss_server.faults.latency_ms = 50
    oss_server.stats.reset()
    results: list[bytes] = []

    async def read_one(reader: FileReader) -> None:
        results.append(await reader.read(5 * MIB + 1, 10_000))

    async with trio.open_nursery() as inner:
        for reader in readers:
            inner.start_soon(read_one, reader)
    assert results == [data[5 * MIB + 1 : 5 * MIB + 10_001]] * 6
    assert gets(oss_server) == 1  # a random read: the chunk it touches, fetched once for all
    oss_server.faults.latency_ms = 0
    for reader in readers:
        await reader.close()


@BODY_PATHS
async def test_replaced_object_fails_the_handle(
    client: OssClient, oss2_bucket: oss2.Bucket, nursery: trio.Nursery, threaded_gets: bool
) -> None:
    old = os.urandom(16 * MIB)
    new = os.urandom(16 * MIB)
    oss2_bucket.put_object("replaced.bin", old)
    cache = make_cache(
        client, nursery, block_size=256 * KIB, cache_bytes=4 * MIB, threaded_gets=threaded_gets
    )
    reader = await open_object(cache, client, "replaced.bin")
    assert await reader.read(0, 256 * KIB) == old[: 256 * KIB]
    oss2_bucket.put_object("replaced.bin", new)
    seen = bytearray(old[: 256 * KIB])
    with pytest.raises(PreconditionFailed):
        while len(seen) < len(old):
            seen += await reader.read(len(seen), 256 * KIB)
    assert bytes(seen) == old[: len(seen)]  # never a byte of the new version
    with pytest.raises(PreconditionFailed):
        await reader.read(0, 10)
    await reader.close()
    fresh = await open_object(cache, client, "replaced.bin")
    assert await read_all(fresh) == new
    await fresh.close()


def corrupt_stored_copy(root: Path, data: bytes, offset: int) -> None:
    """Flip one byte of the server's stored copy of ``data`` (its index keeps the old CRC-64)."""
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size == len(data):
            with path.open("r+b") as stored:
                if stored.read(4096) != data[:4096]:
                    continue
                stored.seek(offset)
                stored.write(bytes([data[offset] ^ 0x01]))
            return
    raise AssertionError("stored copy not found")


async def test_damaged_data_is_integrity_error(
    client: OssClient,
    oss2_bucket: oss2.Bucket,
    oss_server: Any,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Read in many GETs: no single GET covers the object, so only the reader's whole-file
    # check (not the client's per-GET one) can notice.
    data = os.urandom(12 * MIB + 5)
    oss2_bucket.put_object("damaged.bin", data)
    corrupt_stored_copy(oss_server.root, data, 7 * MIB + 3)
    cache = make_cache(client, nursery, block_size=256 * KIB, part_size=MIB)
    reader = await open_object(cache, client, "damaged.bin")
    with pytest.raises(IntegrityError):
        await read_all(reader, 256 * KIB)
    assert "does not match the object's CRC-64" in caplog.text
    await reader.close()


async def test_crc_mismatch_is_integrity_error(
    client: OssClient,
    oss2_bucket: oss2.Bucket,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The handle was opened with a CRC-64 (from a HEAD) that the data does not have: as if the
    # bytes were damaged on the way. The server's own header is right, so only our check fails.
    data = os.urandom(3 * MIB + 5)
    oss2_bucket.put_object("crc.bin", data)
    info = await client.head_object(TEST_BUCKET, "crc.bin")
    assert info.crc64 == crc64(data)
    cache = make_cache(client, nursery)
    reader = cache.open("crc.bin", info.size, info.etag, info.crc64 ^ 0x10)
    with pytest.raises(IntegrityError) as raised:
        await read_all(reader)
    assert raised.value.errno == 5  # EIO
    assert "CRC-64" in caplog.text
    await reader.close()
    good = await open_object(cache, client, "crc.bin")
    assert await read_all(good) == data
    await good.close()


async def test_crc_learned_from_response_when_not_given(
    client: OssClient, oss2_bucket: oss2.Bucket, nursery: trio.Nursery
) -> None:
    data = os.urandom(5 * MIB)
    oss2_bucket.put_object("nocrc.bin", data)
    info = await client.head_object(TEST_BUCKET, "nocrc.bin")
    cache = make_cache(client, nursery)
    reader = cache.open("nocrc.bin", info.size, info.etag, None)
    assert await read_all(reader) == data
    await reader.close()


async def test_zero_byte_object(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: Any, nursery: trio.Nursery
) -> None:
    oss2_bucket.put_object("empty", b"")
    cache = make_cache(client, nursery)
    reader = await open_object(cache, client, "empty")
    oss_server.stats.reset()
    assert await reader.read(0, 4096) == b""
    assert gets(oss_server) == 0
    await reader.close()


async def test_multipart_object(
    client: OssClient, oss2_bucket: oss2.Bucket, nursery: trio.Nursery
) -> None:
    parts = [os.urandom(size) for size in (1 * MIB, 1 * MIB, 300 * KIB + 17)]
    upload_id = oss2_bucket.init_multipart_upload("multi.bin").upload_id
    uploaded = [
        oss2.models.PartInfo(
            number, oss2_bucket.upload_part("multi.bin", upload_id, number, body).etag
        )
        for number, body in enumerate(parts, start=1)
    ]
    oss2_bucket.complete_multipart_upload("multi.bin", upload_id, uploaded)
    info = await client.head_object(TEST_BUCKET, "multi.bin")
    assert info.object_type == "Multipart"
    cache = make_cache(client, nursery, block_size=256 * KIB)
    reader = cache.open("multi.bin", info.size, info.etag, info.crc64)
    assert await read_all(reader, 100 * KIB) == b"".join(parts)
    await reader.close()


async def test_appendable_object(
    client: OssClient, oss2_bucket: oss2.Bucket, nursery: trio.Nursery
) -> None:
    first = os.urandom(700 * KIB)
    second = os.urandom(900 * KIB + 3)
    result = oss2_bucket.append_object("append.bin", 0, first)
    oss2_bucket.append_object("append.bin", result.next_position, second)
    info = await client.head_object(TEST_BUCKET, "append.bin")
    assert info.object_type == "Appendable"
    cache = make_cache(client, nursery, block_size=256 * KIB)
    reader = cache.open("append.bin", info.size, info.etag, info.crc64)
    assert await read_all(reader, 128 * KIB) == first + second
    await reader.close()


async def test_cache_bound_and_prefetch_cancelled_on_close(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: Any, nursery: trio.Nursery
) -> None:
    data = os.urandom(48 * MIB)
    oss2_bucket.put_object("bound.bin", data)
    cache = make_cache(client, nursery, cache_bytes=8 * MIB, part_size=2 * MIB)
    reader = await open_object(cache, client, "bound.bin")
    highest = 0
    for offset in range(0, 24 * MIB, MIB):
        assert await reader.read(offset, MIB) == data[offset : offset + MIB]
        highest = max(highest, cache.cached_bytes)
    assert highest <= 8 * MIB
    oss_server.faults.bandwidth_bytes_per_s = 4 * MIB  # keep the next GETs in flight
    await reader.read(24 * MIB, MIB)
    assert reader.tasks_in_flight > 0
    with trio.fail_after(5):
        await reader.close()
    assert reader.tasks_in_flight == 0
    assert cache.blocks_in_flight == 0
    oss_server.faults.bandwidth_bytes_per_s = 0


@BODY_PATHS
async def test_reads_survive_errors_and_resets(
    oss2_bucket: oss2.Bucket, oss_server: Any, nursery: trio.Nursery, threaded_gets: bool
) -> None:
    data = os.urandom(32 * MIB + 99)
    oss2_bucket.put_object("flaky.bin", data)
    fast_retry = RetryPolicy(max_attempts=10, base_delay_s=0.005, max_delay_s=0.05, deadline_s=60)
    async with OssClient(
        oss_server.endpoint, Credentials(TEST_AK, TEST_SK), retry=fast_retry
    ) as flaky_client:
        cache = make_cache(
            flaky_client,
            nursery,
            cache_bytes=16 * MIB,
            part_size=2 * MIB,
            threaded_gets=threaded_gets,
        )
        oss_server.faults.only_operations = frozenset({"GetObject"})
        oss_server.faults.error_rate = 0.1
        oss_server.faults.reset_rate = 0.2
        reader = await open_object(cache, flaky_client, "flaky.bin")
        assert await read_all(reader, 128 * KIB) == data
        rng = random.Random(9)
        for _ in range(20):
            offset = rng.randrange(len(data))
            assert await reader.read(offset, 300_000) == data[offset : offset + 300_000]
        await reader.close()
        oss_server.faults.error_rate = 0
        oss_server.faults.reset_rate = 0
    # Retried and resumed GETs reached the server beside the reader's own.
    assert oss_server.stats.count("GetObject") > cache.stats.gets
