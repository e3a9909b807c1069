"""FileReader/ReadCache logic through an injected RangeSource (the seam staged writes will use).

These tests pin down block arithmetic, prefetch, sharing, cancellation and the whole-file check
deterministically; tests/fs/test_reader.py runs the same reader against the real server.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmount.fs.datacache import CHUNK_SIZE
from ossmount.fs.reader import FileReader, ReadCache, _WholeFileCheck
from ossmount.oss.crc64 import crc64
from ossmount.oss.errors import (
    IntegrityError,
    OssConnectionError,
    OssProtocolError,
    PreconditionFailed,
)

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB


class PatternData:
    """Virtual object content: byte p is PATTERN[p % len(PATTERN)], so any size costs nothing."""

    PATTERN = bytes(random.Random(7).randrange(256) for _ in range(4093))  # prime length

    def __init__(self, size: int) -> None:
        self.size = size

    def __getitem__(self, item: slice) -> bytes:
        start, stop, _ = item.indices(self.size)
        if start >= stop:
            return b""
        n = len(self.PATTERN)
        reps = (stop - start) // n + 2
        offset = start % n
        return (self.PATTERN * reps)[offset : offset + stop - start]


class MemorySource:
    """Serves ranges of ``data`` in chunks, records every request, injects failures on demand."""

    def __init__(
        self,
        data: bytes | PatternData,
        *,
        chunk_delay_s: float = 0.0,
        crc: int | None = None,
    ) -> None:
        self.data = data
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[tuple[int, int]] = []
        self.open_streams = 0
        self.replaced = False  # every later request answers 412
        self.break_after_bytes: int | None = None  # one reset after this many body bytes
        self.corrupt_at: int | None = None  # flip the byte at this offset
        self.fail_after_bytes: int | None = None  # one non-transient error after this many bytes
        self._crc = crc

    @property
    def object_crc64(self) -> int | None:
        return self._crc

    @asynccontextmanager
    async def open_range(
        self, start: int, end_inclusive: int
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        self.requests.append((start, end_inclusive))
        if self.replaced:
            raise PreconditionFailed("changed", status=412, code="PreconditionFailed")
        self.open_streams += 1
        try:
            yield self._chunks(start, end_inclusive + 1)
        finally:
            self.open_streams -= 1

    async def _chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        sent = 0
        for position in range(start, end, CHUNK):
            if self.chunk_delay_s:
                await trio.sleep(self.chunk_delay_s)
            else:
                await trio.lowlevel.checkpoint()
            chunk = self.data[position : min(position + CHUNK, end)]
            if self.corrupt_at is not None and position <= self.corrupt_at < position + len(chunk):
                i = self.corrupt_at - position
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            if self.break_after_bytes is not None and sent + len(chunk) > self.break_after_bytes:
                cut = self.break_after_bytes - sent
                self.break_after_bytes = None
                if cut:
                    yield chunk[:cut]
                raise OssConnectionError("connection reset (injected)")
            if self.fail_after_bytes is not None and sent + len(chunk) > self.fail_after_bytes:
                self.fail_after_bytes = None
                raise OssProtocolError("garbled body (injected)")
            sent += len(chunk)
            yield chunk


def make_cache(
    nursery: trio.Nursery,
    *,
    block_size: int = MIB,
    cache_bytes: int = 32 * MIB,
    max_inflight: int = 4,
    **options: Any,
) -> ReadCache:
    return ReadCache(
        None,
        "bucket",
        block_size=block_size,
        cache_bytes=cache_bytes,
        max_inflight=max_inflight,
        nursery=nursery,
        threaded_gets=False,  # no client: every source is given to open()
        **options,
    )


def open_reader(cache: ReadCache, source: MemorySource, *, etag: str = '"v1"') -> FileReader:
    size = source.data.size if isinstance(source.data, PatternData) else len(source.data)
    return cache.open("obj", size, etag, source.object_crc64, source=source)


async def read_all(reader: FileReader, request_size: int = 128 * KIB) -> bytes:
    out = bytearray()
    while True:
        data = await reader.read(len(out), request_size)
        if not data:
            return bytes(out)
        out += data


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_sequential_read_grows_window_and_uses_large_gets(nursery: trio.Nursery) -> None:
    data = payload(40 * MIB + 123)
    source = MemorySource(data, crc=crc64(data))
    cache = make_cache(nursery, cache_bytes=64 * MIB, part_size=8 * MIB)
    reader = open_reader(cache, source)
    assert await read_all(reader, MIB) == data
    assert reader.prefetch_window_blocks == 48  # min(64 MiB default, 3/4 cache) in 1 MiB blocks
    # Ramp-up 1, 2, 4 ... then parts of 8 MiB: a handful of GETs, every byte fetched once.
    assert len(source.requests) <= 12
    assert sum(e - s + 1 for s, e in source.requests) == len(data)
    assert max(e - s + 1 for s, e in source.requests) == 8 * MIB
    await reader.close()


async def test_sequential_keeps_several_gets_in_flight(nursery: trio.Nursery) -> None:
    data = payload(48 * MIB)
    source = MemorySource(data, chunk_delay_s=0.001)
    cache = make_cache(nursery, cache_bytes=64 * MIB, part_size=4 * MIB, max_inflight=4)
    reader = open_reader(cache, source)
    most_streams = 0
    for offset in range(0, len(data), MIB):
        assert await reader.read(offset, MIB) == data[offset : offset + MIB]
        most_streams = max(most_streams, source.open_streams)
    assert most_streams == 4
    await reader.close()


async def test_random_reads_fetch_only_touched_blocks(nursery: trio.Nursery) -> None:
    data = payload(64 * MIB)
    source = MemorySource(data)
    cache = make_cache(nursery, cache_bytes=64 * MIB)
    reader = open_reader(cache, source)
    rng = random.Random(3)
    touched: set[int] = set()
    for _ in range(20):
        offset = rng.randrange(len(data) - 4 * KIB)
        assert await reader.read(offset, 4 * KIB) == data[offset : offset + 4 * KIB]
        touched.update({offset // MIB, (offset + 4 * KIB - 1) // MIB})
    fetched = {s // MIB for s, e in source.requests for s in range(s, e + 1, MIB)}
    # Prefetch may add at most a few blocks where two random reads happen to land close.
    assert touched <= fetched
    assert len(fetched) <= len(touched) + 6
    await reader.close()


async def test_read_spanning_blocks_and_eof(nursery: trio.Nursery) -> None:
    data = payload(3 * 256 * KIB + 100)
    source = MemorySource(data, crc=crc64(data))
    cache = make_cache(nursery, block_size=256 * KIB)
    reader = open_reader(cache, source)
    assert await reader.read(200 * KIB, 400 * KIB) == data[200 * KIB : 600 * KIB]
    assert await reader.read(len(data) - 50, 4096) == data[-50:]
    assert await reader.read(len(data), 4096) == b""
    assert await reader.read(len(data) + 10, 4096) == b""
    await reader.close()


async def test_concurrent_readers_share_one_fetch(nursery: trio.Nursery) -> None:
    data = payload(4 * MIB)
    source = MemorySource(data, chunk_delay_s=0.002)
    cache = make_cache(nursery)
    readers = [open_reader(cache, source) for _ in range(5)]
    results: dict[int, bytes] = {}

    async def read_one(i: int) -> None:
        results[i] = await readers[i].read(2 * MIB + 10, 1000)

    async with trio.open_nursery() as inner:
        for i in range(5):
            inner.start_soon(read_one, i)
    assert all(r == data[2 * MIB + 10 : 2 * MIB + 1010] for r in results.values())
    # A random read: one GET of the chunk it touches, shared by the five readers.
    assert source.requests == [(2 * MIB, 2 * MIB + CHUNK_SIZE - 1)]
    for reader in readers:
        await reader.close()


async def test_replaced_object_raises_precondition_failed_and_stays_failed(
    nursery: trio.Nursery,
) -> None:
    data = payload(8 * MIB)
    source = MemorySource(data)
    cache = make_cache(nursery, cache_bytes=64 * MIB)
    reader = open_reader(cache, source)
    assert await reader.read(0, MIB) == data[:MIB]
    source.replaced = True
    with pytest.raises(PreconditionFailed):
        for offset in range(MIB, len(data), MIB):
            await reader.read(offset, MIB)
    with pytest.raises(PreconditionFailed):
        await reader.read(0, MIB)  # even a cached block: the handle is stale
    await reader.close()
    # A new handle of the new version does not see the old version's blocks.
    source.replaced = False
    fresh = open_reader(cache, source, etag='"v2"')
    before = len(source.requests)
    await fresh.read(0, 10)
    assert len(source.requests) > before
    await fresh.close()


async def test_whole_file_crc_mismatch_raises_integrity_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(5 * MIB + 7)
    source = MemorySource(data, crc=crc64(data))
    source.corrupt_at = 3 * MIB + 5
    cache = make_cache(nursery)
    reader = open_reader(cache, source)
    with pytest.raises(IntegrityError):
        await read_all(reader)
    assert "CRC-64" in caplog.text
    assert cache.cached_bytes == 0  # the corrupt blocks are not served again
    with pytest.raises(IntegrityError):
        await reader.read(len(data) - 1, 1)  # the handle stays failed
    await reader.close()
    # The same content with a correct CRC passes.
    source.corrupt_at = None
    reader = open_reader(cache, source)
    assert await read_all(reader) == data
    await reader.close()


async def test_whole_file_check_accepts_out_of_order_replies(nursery: trio.Nursery) -> None:
    data = payload(6 * MIB)
    good = MemorySource(data, crc=crc64(data))
    bad = MemorySource(data, crc=crc64(data) ^ 1)
    for source, should_fail in ((good, False), (bad, True)):
        cache = make_cache(nursery)
        reader = open_reader(cache, source)
        offsets = list(range(0, len(data), 512 * KIB))
        order = offsets[2:8] + offsets[:2] + offsets[8:]  # a reordered readahead batch
        if should_fail:
            with pytest.raises(IntegrityError):
                for offset in order:
                    await reader.read(offset, 512 * KIB)
        else:
            for offset in order:
                assert await reader.read(offset, 512 * KIB) == data[offset : offset + 512 * KIB]
        await reader.close()


async def test_zero_byte_object(nursery: trio.Nursery) -> None:
    source = MemorySource(b"", crc=0)
    cache = make_cache(nursery)
    reader = open_reader(cache, source)
    assert await reader.read(0, 4096) == b""
    assert source.requests == []
    await reader.close()


async def test_cache_bound_respected(nursery: trio.Nursery) -> None:
    data = payload(40 * MIB)
    source = MemorySource(data)
    cache = make_cache(nursery, cache_bytes=8 * MIB)
    reader = open_reader(cache, source)
    highest = 0
    for offset in range(0, len(data), 256 * KIB):
        await reader.read(offset, 256 * KIB)
        highest = max(highest, cache.cached_bytes)
    assert highest <= 8 * MIB
    assert reader.prefetch_window_blocks == 6  # three quarters of the cache
    # No prefetched block was evicted before it was read: the blocks already read go first.
    assert cache.stats.bytes_fetched == len(data)
    await reader.close()


async def test_prefetch_cancelled_on_close(nursery: trio.Nursery) -> None:
    data = payload(64 * MIB)
    source = MemorySource(data, chunk_delay_s=0.01)
    cache = make_cache(nursery, cache_bytes=64 * MIB)
    reader = open_reader(cache, source)
    for offset in range(0, 4 * MIB, MIB):
        await reader.read(offset, MIB)
    assert reader.tasks_in_flight > 0
    assert source.open_streams > 0
    with trio.fail_after(2):
        await reader.close()
    assert reader.tasks_in_flight == 0
    assert source.open_streams == 0
    assert cache.blocks_in_flight == 0


async def test_other_handle_refetches_block_abandoned_by_closed_handle(
    nursery: trio.Nursery,
) -> None:
    data = payload(4 * MIB)
    source = MemorySource(data, chunk_delay_s=0.005)
    cache = make_cache(nursery)
    first = open_reader(cache, source)
    second = open_reader(cache, source)
    await first.read(0, 10)  # fetches block 0 and prefetches block 1 (slowly)
    assert cache.blocks_in_flight > 0
    got: list[bytes] = []

    async def second_reads() -> None:
        got.append(await second.read(MIB, MIB))

    async with trio.open_nursery() as inner:
        inner.start_soon(second_reads)
        await trio.sleep(0.02)  # second now waits on first's GET of block 1
        await first.close()
    assert got == [data[MIB : 2 * MIB]]
    # Block 1 was in first's GET, then fetched again by second.
    assert sum(1 for start, end in source.requests if start <= MIB <= end) == 2
    await second.close()


async def test_broken_body_is_resumed(nursery: trio.Nursery) -> None:
    data = payload(10 * MIB)
    source = MemorySource(data, crc=crc64(data))
    source.break_after_bytes = 300 * KIB + 5  # within the first GET
    cache = make_cache(nursery)
    reader = open_reader(cache, source)
    assert await read_all(reader, MIB) == data
    assert cache.stats.resumed_gets == 1
    assert any(start == 300 * KIB + 5 for start, _ in source.requests)
    await reader.close()


async def test_failed_get_keeps_the_blocks_it_completed(nursery: trio.Nursery) -> None:
    data = payload(8 * MIB)
    source = MemorySource(data)
    source.fail_after_bytes = 2 * MIB + 10
    cache = make_cache(nursery, part_size=4 * MIB)
    reader = open_reader(cache, source)
    # Blocks 0-1 and a one-block prefetch in one GET, which breaks inside block 2.
    assert await reader.read(0, 2 * MIB) == data[: 2 * MIB]
    assert source.requests == [(0, 3 * MIB - 1)]
    with trio.fail_after(2):
        while reader.tasks_in_flight:
            await trio.sleep(0.001)
    assert cache.blocks_in_flight == 0
    assert await reader.read(0, 2 * MIB) == data[: 2 * MIB]  # still cached
    assert len(source.requests) == 1
    assert await reader.read(2 * MIB, MIB) == data[2 * MIB : 3 * MIB]
    # The failed block is fetched again (beside prefetches further on); blocks 0-1 are not.
    assert any(start == 2 * MIB for start, _ in source.requests[1:])
    assert all(start >= 2 * MIB for start, _ in source.requests[1:])
    await reader.close()


async def test_offsets_beyond_5_gib(nursery: trio.Nursery) -> None:
    size = 6 * 1024 * MIB + 12345
    virtual = PatternData(size)
    source = MemorySource(virtual)
    cache = make_cache(nursery, block_size=4 * MIB, cache_bytes=32 * MIB)
    reader = open_reader(cache, source)
    for offset in (5 * 1024 * MIB - 10, 5 * 1024 * MIB + 4 * MIB - 1, size - 100):
        assert await reader.read(offset, 200_000) == virtual[offset : offset + 200_000]
    block_index = (size - 1) // (4 * MIB)
    assert (block_index * 4 * MIB, size - 1) in source.requests
    await reader.close()


@pytest.mark.parametrize("reader_count", [1, 3])
async def test_interleaved_handles_read_right(nursery: trio.Nursery, reader_count: int) -> None:
    data = payload(12 * MIB + 5)
    source = MemorySource(data, crc=crc64(data))
    cache = make_cache(nursery, block_size=512 * KIB, cache_bytes=8 * MIB)
    results: list[bytes] = []

    async def whole(make: Callable[[], FileReader]) -> None:
        reader = make()
        results.append(await read_all(reader, 128 * KIB))
        await reader.close()

    async with trio.open_nursery() as inner:
        for _ in range(reader_count):
            inner.start_soon(whole, lambda: open_reader(cache, source))
    assert results == [data] * reader_count


def test_whole_file_check_gives_up_on_scattered_reads() -> None:
    check = _WholeFileCheck(100 * MIB)
    for i in range(300):
        assert not check.add((i + 1) * 300 * KIB, b"x" * 10)
    assert check.gave_up
    assert not check.add(0, b"y" * 100)  # no longer accounted


def test_whole_file_check_in_and_out_of_order() -> None:
    data = payload(3 * MIB + 3)
    check = _WholeFileCheck(len(data))
    pieces = [(o, data[o : o + 256 * KIB]) for o in range(0, len(data), 256 * KIB)]
    pieces[3], pieces[5] = pieces[5], pieces[3]
    done = [check.add(o, piece) for o, piece in pieces]
    assert done[-1] and not any(done[:-1])
    assert check.crc == crc64(data)


@settings(max_examples=80, deadline=None)
@given(
    size=st.one_of(
        st.integers(0, 3 * MIB), st.integers(5 * 1024 * MIB - MIB, 5 * 1024 * MIB + 3 * MIB)
    ),
    block_size=st.sampled_from([4 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB]),
    reads=st.lists(st.tuples(st.floats(0, 1.05), st.integers(0, 2 * MIB)), min_size=1, max_size=8),
)
def test_any_reads_return_the_right_bytes(
    size: int, block_size: int, reads: list[tuple[float, int]]
) -> None:
    virtual = PatternData(size)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            cache = make_cache(nursery, block_size=block_size, cache_bytes=8 * MIB)
            reader = open_reader(cache, MemorySource(virtual))
            for fraction, length in reads:
                offset = int(size * fraction)
                assert await reader.read(offset, length) == virtual[offset : offset + length]
            await reader.close()

    trio.run(run)
