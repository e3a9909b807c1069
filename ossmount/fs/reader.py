"""The read path: a block cache shared by the mount, and one prefetching reader per open handle.

How a read() is answered
------------------------
An object is cut into fixed blocks of ``block_size`` bytes (the last one shorter). ``read(offset,
size)`` needs the blocks that cover ``[offset, offset + size)``; each one comes from

1. the mount-wide LRU cache (:class:`ReadCache`), bounded in bytes, keyed by
   ``(key, etag, block index)`` so that two versions of an object can never meet in one handle;
2. or a fetch already in flight for that block (by this handle or any other): readers of the same
   missing block share one GET;
3. or a new ranged GET, started as a task in the mount's nursery.

A GET covers a *run* of consecutive missing blocks (up to ``part_size`` bytes). Its body is
iterated chunk by chunk as the socket delivers it; each block is published (put in the cache,
its waiters woken) as soon as its last byte arrives, so a reader waits for its block, not for the
whole GET. Where the client's endpoint allows it (plain http), the bodies are received by worker
threads (:mod:`ossmount.oss.bulk`) in pieces of exactly one block, so the trio thread, which also
answers FUSE, only files finished blocks; otherwise they come through the client (httpx).
Every GET carries ``If-Match: <etag>`` of the handle and ``x-oss-range-behavior: standard``:
a replaced object answers 412, the handle raises
:class:`PreconditionFailed` on that read and every later one (the mount answers EIO), and never
mixes versions.

Prefetch
--------
Each handle watches its own access pattern. A read that starts near the end of the previous ones
(within a small slack, for pages the kernel already had and for readahead batches) is
*sequential*: the prefetch window doubles (1, 2, 4 ... blocks, up to
``max_prefetch_bytes``) and the blocks ahead of the stream up to the window are fetched in the
background. To keep GETs large the window is topped up only when at least ``step`` blocks are
missing (half the window, at most ``part_size``), so a long sequential read keeps several GETs of
``part_size`` bytes in flight, like the checkpointed downloader's parallel part fetches. Any other
read is *random*: the window drops to zero and only the touched blocks are fetched.

The number of concurrent GETs of the whole mount is bounded by ``max_inflight``. A sequential
reader's lookups do not refresh a block's place in the LRU order, so blocks leave the cache in the
order they were fetched: the blocks a stream has read go before the ones prefetched ahead of it.
(If reads refreshed them, the blocks read since a prefetch would all be younger than it, and the
window could be at most half the cache.) The windows of all the handles streaming at once share
three quarters of the cache (:meth:`ReadCache.window_limit`; measured: four readers of a quarter
of one object each, with a window of three quarters each, made the server send 1.7-2.1 times
the object, as blocks prefetched for one were dropped for another); the rest is for other
handles' blocks. Memory is therefore about ``cache_bytes``, plus an eighth of it for random
readers' chunks, one partial block per GET in flight, and, with a data cache, at most
:data:`_MAX_DISK_BACKLOG` of fetched blocks waiting for the disk.

Random reads
------------
A random read (window zero) does not fetch blocks: it needs the chunks (16 KiB,
:data:`~ossmount.fs.datacache.CHUNK_SIZE`) that cover it, each from a cached block, the mount's
chunk cache (an eighth of ``cache_bytes`` more), the data cache, a GET of another reader in
flight, or one GET per run of missing chunks, made inline by the read. So a 4 KiB read of a
database page costs a 16 KiB GET, not a 1 MiB one.

Data cache
----------
With a :class:`~ossmount.fs.datacache.DataCache`, each handle of an object's own bytes (no
``source`` given) holds its :class:`~ossmount.fs.datacache.CachedObject`: a block or chunk is
looked up there after memory and before any GET, and whatever a GET brings is stored there.
Blocks on disk count as present for the prefetcher, so a re-read sends no request at all.

Fetch tasks belong to the handle that started them and are cancelled by :meth:`FileReader.close`;
waiters of another handle then find the block abandoned and fetch it themselves.

Whole-file check
----------------
The bytes a handle returns are checked against the object's CRC-64 when they cover the file from
0 to its end: contiguous replies extend a running CRC, replies that arrive ahead of it (out of
order) wait, by reference, until the gap is filled. A mismatch raises :class:`IntegrityError`
(EIO) from that read and every later one of the handle, is logged, and drops the object's
cached blocks.

Seam for writes
---------------
The bytes come from a :class:`RangeSource` (``open_range(start, end_inclusive)``): by default
:class:`ObjectRangeSource`, a ranged GET of one object version. ``ReadCache.open(..., source=)``
takes any other source, for example one that overlays staged writes; blocks are cached under the
``etag`` given to ``open``, so such a source must be opened with an etag of its own.
:meth:`ReadCache.invalidate` drops the cached blocks of a key after it changed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio
from cachetools import Cache, LRUCache

from ossmount.fs.datacache import CachedObject, DataCache, chunk_size_for
from ossmount.oss.bulk import BulkBody, BulkGetter
from ossmount.oss.crc64 import crc64
from ossmount.oss.errors import (
    IntegrityError,
    OssError,
    OssProtocolError,
    PreconditionFailed,
    is_transient,
)

if TYPE_CHECKING:
    from ossmount.oss.client import ObjectReader, OssClient

log = logging.getLogger(__name__)

DEFAULT_PART_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_PREFETCH_BYTES = 64 * 1024 * 1024
# A GET that fails transiently even after the client's own retries and resumes (reset, timeout,
# 503) is reopened from the byte it reached, this many times in a row without progress.
DEFAULT_RESUME_ATTEMPTS = 4
_RESUME_BACKOFF_S = 0.05
# How far before or after the end of the previous reads a read still counts as sequential.
_SEQUENTIAL_SLACK = 4 * 1024 * 1024
# A read this close to the end of the previous ones continues them, whatever its size; further
# off, only a large read of a running stream does.
_NEAR_STREAM = 128 * 1024
# Bytes of out-of-order replies the whole-file check holds before it gives up.
_MAX_CHECK_AHEAD_BYTES = 16 * 1024 * 1024
_MAX_CHECK_AHEAD_PIECES = 256
# Blocks a handle remembers having handed out whole (take_spare), at most.
_MAX_SPARED_BLOCKS = 65536
# A block handed out whole is offered again no sooner than this (see take_spare).
_RESPARE_AFTER_S = 1.0
# Bytes fetched and waiting to be written to the data cache, at most.
_MAX_DISK_BACKLOG = 16 * 1024 * 1024

BlockId = tuple[str, str, int]  # (key, etag, block index)
ChunkId = tuple[str, str, int]  # (key, etag, chunk index): what a random reader fetched


class RangeSource(Protocol):
    """Where the bytes of one version of one object come from."""

    def open_range(
        self, start: int, end_inclusive: int
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
        """Open a stream of exactly the bytes ``[start, end_inclusive]``, in order."""
        ...

    @property
    def object_crc64(self) -> int | None:
        """The whole object's CRC-64 if a response told it, else None."""
        ...


class ObjectRangeSource:
    """Ranged GETs of one object version (``If-Match: etag``): through ``bulk`` (bodies received
    by worker threads, in pieces of ``piece_size`` aligned in the object) when given, else through
    the client."""

    def __init__(
        self,
        client: OssClient,
        bucket: str,
        key: str,
        etag: str,
        *,
        bulk: BulkGetter | None = None,
        piece_size: int = 1024 * 1024,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._etag = etag
        self._bulk = bulk
        self._piece_size = piece_size
        self._object_crc64: int | None = None

    @property
    def object_crc64(self) -> int | None:
        return self._object_crc64

    @asynccontextmanager
    async def open_range(
        self, start: int, end_inclusive: int
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        body: BulkBody | ObjectReader
        async with contextlib.AsyncExitStack() as stack:
            if self._bulk is not None:
                body = await stack.enter_async_context(
                    self._bulk.open_range(
                        self._bucket,
                        self._key,
                        start,
                        end_inclusive,
                        if_match=self._etag,
                        piece_size=self._piece_size,
                    )
                )
            else:
                body = await stack.enter_async_context(
                    self._client.open_object(
                        self._bucket,
                        self._key,
                        byte_range=(start, end_inclusive),
                        if_match=self._etag,
                    )
                )
            if body.info.crc64 is not None:
                self._object_crc64 = body.info.crc64
            yield body


@dataclass(eq=False)
class _PendingBlock:
    """A block some GET is fetching. Exactly one of data / error is set when ``done`` fires,
    or neither when the fetch was abandoned (cancelled): waiters then fetch it again."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


@dataclass
class ReadStats:
    """Counters for tests and benchmarks."""

    gets: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    resumed_gets: int = 0


class ReadCache:
    """The mount's block cache, bounded in bytes and shared by all open handles.

    ``max_inflight`` bounds the concurrent range GETs of the whole mount. Fetch tasks run in
    ``nursery`` (the mount's); they never raise into it.
    """

    def __init__(
        self,
        client: OssClient | None,
        bucket: str,
        *,
        block_size: int,
        cache_bytes: int,
        max_inflight: int,
        nursery: trio.Nursery,
        part_size: int = DEFAULT_PART_SIZE,
        max_prefetch_bytes: int = DEFAULT_MAX_PREFETCH_BYTES,
        resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
        threaded_gets: bool = True,
        data_cache: DataCache | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        if max_inflight <= 0:
            raise ValueError("max_inflight must be positive")
        self._client = client
        self._bucket = bucket
        # Bodies received by worker threads, where the client's endpoint allows it (oss/bulk.py).
        self._bulk = (
            BulkGetter(client)
            if threaded_gets and client is not None and BulkGetter.supports(client)
            else None
        )
        self.block_size = block_size
        self.cache_bytes = cache_bytes
        self.part_blocks = max(1, part_size // block_size)
        # Room for the window and for other handles' blocks (see Prefetch).
        self.max_window_blocks = max(0, min(max_prefetch_bytes, cache_bytes * 3 // 4) // block_size)
        self.resume_attempts = resume_attempts
        self.nursery = nursery
        self.limiter = trio.CapacityLimiter(max_inflight)
        self.stats = ReadStats()
        self._blocks: LRUCache[BlockId, bytes] = LRUCache(
            maxsize=max(cache_bytes, 1), getsizeof=len
        )
        self._pending: dict[BlockId, _PendingBlock] = {}
        # Random readers fetch chunks, not blocks (see Random reads); kept apart, in an eighth
        # of the block cache's bytes.
        self.chunk_size = chunk_size_for(block_size)
        self._chunks: LRUCache[ChunkId, bytes] = LRUCache(
            maxsize=max(cache_bytes // 8, self.chunk_size), getsizeof=len
        )
        self._pending_chunks: dict[ChunkId, _PendingBlock] = {}
        # Handles reading sequentially now: they share the room for prefetch windows.
        self._streams: set[FileReader] = set()
        self.data_cache = data_cache
        self._disk_writers = trio.CapacityLimiter(2)
        # Writes to the data cache waiting (fetched, not written yet), at most.
        self._disk_backlog = trio.Semaphore(max(2, _MAX_DISK_BACKLOG // block_size))

    def open(
        self,
        key: str,
        size: int,
        etag: str,
        crc64: int | None,
        *,
        source: RangeSource | None = None,
    ) -> FileReader:
        """A reader for one open handle of version ``etag`` of ``key`` (``size`` bytes).

        The data cache, when the mount has one, is used only for the object's own bytes (no
        ``source`` given): another source's bytes are not the object's."""
        disk: CachedObject | None = None
        if source is None:
            if self._client is None:
                raise ValueError("ReadCache without a client needs an explicit source")
            source = ObjectRangeSource(
                self._client,
                self._bucket,
                key,
                etag,
                bulk=self._bulk,
                piece_size=self.block_size,
            )
            if self.data_cache is not None:
                disk = self.data_cache.open_object(key, etag, size)
        return FileReader(self, source, key=key, size=size, etag=etag, crc64=crc64, disk=disk)

    def window_limit(self) -> int:
        """The largest prefetch window (in blocks) of one sequential reader now: the room for
        windows shared by the readers streaming at once, so that blocks prefetched for one are
        not dropped before it reads them to make room for another's."""
        return max(1, self.max_window_blocks // max(1, len(self._streams)))

    def holds_object(self, key: str, etag: str, size: int) -> bool:
        """Whether the whole of version ``etag`` of ``key`` (``size`` bytes) can be read with
        no request: from memory, or from the data cache. No side effect."""
        blocks = max(1, math.ceil(size / self.block_size))
        if all((key, etag, index) in self._blocks for index in range(blocks)):
            return True
        return self.data_cache is not None and self.data_cache.holds(key, etag)

    def offer_object(self, key: str, etag: str, data: bytes) -> None:
        """Keep the whole body of version ``etag`` of ``key``, fetched by someone else (a small
        object read with GET where a HEAD was asked for), so that reads of it need no request."""
        for index in range(max(1, math.ceil(len(data) / self.block_size))):
            block = data[index * self.block_size : (index + 1) * self.block_size]
            if self._is_missing((key, etag, index)) and len(block) <= self._blocks.maxsize:
                self._blocks[(key, etag, index)] = block
        if self.data_cache is not None and data and not self.data_cache.holds(key, etag):
            disk = self.data_cache.open_object(key, etag, len(data))
            try:
                self._disk_backlog.acquire_nowait()
            except trio.WouldBlock:
                disk.store(0, data)  # the disk is behind already: write here, once
                self.data_cache.release(disk)
            else:
                # In a worker thread, as what GETs bring: an `ls -l` of many small files does
                # not write them one by one on the thread that answers.
                self.nursery.start_soon(self._store_in_thread, disk, 0, data)

    def invalidate(self, key: str, etag: str | None = None) -> None:
        """Drop the cached blocks of ``key`` (of one version only, if ``etag`` is given)."""
        stale = [b for b in self._blocks if b[0] == key and (etag is None or b[1] == etag)]
        for block_id in stale:
            self._blocks.pop(block_id, None)
        for chunk_id in [c for c in self._chunks if c[0] == key and (etag is None or c[1] == etag)]:
            self._chunks.pop(chunk_id, None)
        if self.data_cache is not None:
            self.data_cache.discard(key, etag)

    @property
    def cached_bytes(self) -> int:
        return int(self._blocks.currsize)

    @property
    def blocks_in_flight(self) -> int:
        return len(self._pending)

    # -- used by FileReader ---------------------------------------------------------------

    def _lookup(self, block_id: BlockId, *, refresh: bool = True) -> bytes | None:
        """The cached block, or None; ``refresh=False`` leaves its place in the LRU order (a
        sequential reader's lookups, see Prefetch)."""
        if refresh:
            data = self._blocks.get(block_id)
        else:
            # Cache.__getitem__ is the lookup without LRUCache's move to the young end.
            data = Cache.__getitem__(self._blocks, block_id) if block_id in self._blocks else None
        if data is None:
            self.stats.cache_misses += 1
        else:
            self.stats.cache_hits += 1
        return data

    def _is_missing(self, block_id: BlockId) -> bool:
        return block_id not in self._blocks and block_id not in self._pending

    async def _store_later(self, disk: CachedObject, offset: int, data: bytes) -> None:
        """Have ``data`` written to the data cache by a worker thread. When the disk falls
        behind the network, the fetch waits here (the GET's body is paused) until the writes
        waiting are fewer than ``_MAX_DISK_BACKLOG`` bytes' worth of blocks."""
        # Shielded: a block fetched and handed to its reader is stored even when the handle
        # closes or the mount unmounts meanwhile (the wait is for the disk, at most the backlog).
        with trio.CancelScope(shield=True):
            await self._disk_backlog.acquire()
        disk.readers += 1  # released by the task
        self.nursery.start_soon(self._store_in_thread, disk, offset, data)

    async def _store_in_thread(self, disk: CachedObject, offset: int, data: bytes) -> None:
        try:
            # Shielded: an unmount waits for the backlog rather than losing what was fetched.
            with trio.CancelScope(shield=True):
                async with self._disk_writers:
                    await disk.store_in_thread(offset, data)
        finally:
            self._disk_backlog.release()
            if self.data_cache is not None:
                self.data_cache.release(disk)

    def _keep(self, block_id: BlockId, data: bytes) -> None:
        if len(data) <= self._blocks.maxsize:
            self._blocks[block_id] = data

    def _settle(
        self,
        block_id: BlockId,
        pending: _PendingBlock,
        *,
        data: bytes | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End one fetch of a block: cache ``data`` and wake its waiters (with ``error``, or
        with neither when the fetch was abandoned)."""
        if data is not None and len(data) <= self._blocks.maxsize:
            self._blocks[block_id] = data
        if self._pending.get(block_id) is pending:
            del self._pending[block_id]
        pending.data = data
        pending.error = error
        pending.done.set()


class _WholeFileCheck:
    """CRC-64 over the replies of one handle, to check a read of the whole file.

    Replies arrive mostly in order; one that starts beyond the checked prefix is kept (by
    reference: usually it is a cached block anyway) until the gap before it is filled.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.checked_end = 0
        self.crc = 0
        self.gave_up = False
        self._ahead: dict[int, bytes] = {}
        self._ahead_bytes = 0

    def add(self, offset: int, data: bytes) -> bool:
        """Account for ``data`` returned at ``offset``; True once the whole file is covered."""
        if self.gave_up or self.checked_end >= self.size:
            return False
        end = offset + len(data)
        if offset > self.checked_end:
            previous = self._ahead.get(offset)
            if previous is None or len(previous) < len(data):
                self._ahead_bytes += len(data) - (len(previous) if previous else 0)
                self._ahead[offset] = data
            if (
                self._ahead_bytes > _MAX_CHECK_AHEAD_BYTES
                or len(self._ahead) > _MAX_CHECK_AHEAD_PIECES
            ):
                log.debug("whole-file check abandoned: too many out-of-order reads")
                self.gave_up = True
                self._ahead.clear()
            return False
        self._extend(offset, data, end)
        while self._ahead:
            overlapping = [o for o in self._ahead if o <= self.checked_end]
            if not overlapping:
                break
            for start in sorted(overlapping):
                piece = self._ahead.pop(start)
                self._ahead_bytes -= len(piece)
                self._extend(start, piece, start + len(piece))
        return self.checked_end >= self.size

    def _extend(self, offset: int, data: bytes, end: int) -> None:
        if end > self.checked_end:
            fresh = memoryview(data)[self.checked_end - offset :]
            self.crc = crc64(fresh, self.crc)
            self.checked_end = end


@dataclass(frozen=True)
class Spare:
    """Bytes of an object at ``offset`` (page-aligned): what ``load()`` returns (a disk read,
    safe to run in a worker thread; None if they could not be had)."""

    offset: int
    load: Callable[[], bytes | None]


class FileReader:
    """Reads of one open handle: block lookups, shared fetches, prefetch, whole-file CRC check."""

    def __init__(
        self,
        cache: ReadCache,
        source: RangeSource,
        *,
        key: str,
        size: int,
        etag: str,
        crc64: int | None,
        disk: CachedObject | None = None,
    ) -> None:
        self._cache = cache
        self._source = source
        self._disk = disk  # this version's bytes in the data cache
        self.key = key
        self.size = size
        self.etag = etag
        self.expected_crc64 = crc64  # of the whole object, when known
        self._block_size = cache.block_size
        self._block_count = math.ceil(size / self._block_size)
        # Sequential detection and the prefetch window (in blocks).
        self._stream_end = 0
        self._window_blocks = 0
        self._frontier = 0  # blocks below this were already requested by the prefetcher
        self._check = _WholeFileCheck(size)
        self._failure: OssError | None = None  # a 412 or a CRC mismatch poisons the handle
        self._task_scopes: set[trio.CancelScope] = set()
        self._tasks_done = trio.Event()
        self._tasks_done.set()
        self._closed = False
        # Bytes around the last random read that the caller may hand to the kernel's page
        # cache (see take_spare), and the blocks already handed out whole.
        self._spare: Spare | None = None
        self._spared_blocks: dict[int, float] = {}  # block: when it was handed out

    @property
    def prefetch_window_blocks(self) -> int:
        return self._window_blocks

    @property
    def tasks_in_flight(self) -> int:
        return len(self._task_scopes)

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file).

        Raises the client's :class:`OssError` subclasses: :class:`PreconditionFailed` when the
        object changed since open, :class:`IntegrityError` when a whole-file read does not match
        the object's CRC-64.
        """
        if self._closed:
            raise RuntimeError("read() on a closed FileReader")
        if self._failure is not None:
            raise self._failure
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        self._note_access(offset, end)
        if self._window_blocks == 0:
            data = await self._read_chunks(offset, end)
        else:
            data = await self._read_blocks(offset, end)
        if self._check.add(offset, data):
            self._verify_whole_file()
        return data

    async def close(self) -> None:
        """Cancel this handle's fetches and wait for them to stop."""
        if self._closed:
            return
        self._closed = True
        self._cache._streams.discard(self)
        for scope in list(self._task_scopes):
            scope.cancel()
        await self._tasks_done.wait()
        if self._disk is not None and self._cache.data_cache is not None:
            self._cache.data_cache.release(self._disk)

    def return_spare(self, spare: Spare) -> None:
        """``spare`` was not used: offer its block again at the next random read in it."""
        self._spared_blocks.pop(spare.offset // self._block_size, None)

    def take_spare(self) -> Spare | None:
        """Bytes of the object around the last read that are cheap to have and were not asked
        for: the whole block of a random read, the first time, when the data cache holds it;
        None otherwise. Handing them to the kernel's page cache spares the FUSE requests of the
        reads that follow there. (The rest of the chunks a read fetched from OSS are not
        offered: measured, pushing them cost more than the few reads they spared.)"""
        spare, self._spare = self._spare, None
        return spare

    async def _read_blocks(self, offset: int, end: int) -> bytes:
        """A sequential read: whole blocks, the prefetch window's GETs started."""
        first_block = offset // self._block_size
        last_block = (end - 1) // self._block_size
        self._schedule(first_block, last_block)
        pieces: list[bytes | memoryview] = []
        for index in range(first_block, last_block + 1):
            block = await self._block(index)
            block_start = index * self._block_size
            lo = max(offset, block_start) - block_start
            hi = min(end, block_start + len(block)) - block_start
            if lo == 0 and hi == len(block):
                pieces.append(block)
            else:
                pieces.append(memoryview(block)[lo:hi])
        # An aligned whole block goes out as it is: no copy.
        only = pieces[0]
        return only if len(pieces) == 1 and isinstance(only, bytes) else b"".join(pieces)

    async def _read_chunks(self, offset: int, end: int) -> bytes:
        """A random read: only the chunks it touches, each from a cached block, the chunk
        cache or the data cache, and the missing ones with one GET per run of them."""
        chunk_size = self._cache.chunk_size
        first = offset // chunk_size
        last = (end - 1) // chunk_size
        pieces: dict[int, bytes] = {}
        while len(pieces) < last - first + 1:
            missing: list[int] = []
            others: dict[int, _PendingBlock] = {}  # fetched by another reader
            for chunk in range(first, last + 1):
                if chunk in pieces:
                    continue
                data = self._cached_chunk(chunk)
                pending = self._cache._pending_chunks.get((self.key, self.etag, chunk))
                if data is not None:
                    pieces[chunk] = data
                elif pending is not None:
                    others[chunk] = pending
                else:
                    missing.append(chunk)
            run: list[int] = []
            for chunk in [*missing, -1]:
                if run and chunk != run[-1] + 1:
                    await self._fetch_chunks(run[0], run[-1], pieces)
                    run = []
                run.append(chunk)
            for chunk, pending in others.items():
                await pending.done.wait()
                if pending.error is not None:
                    raise pending.error
                if pending.data is not None:
                    pieces[chunk] = pending.data
                # Abandoned: the next round fetches it.
        joined = b"".join(pieces[chunk] for chunk in range(first, last + 1))
        self._spare = self._whole_block_on_disk(offset, end)
        return joined[offset - first * chunk_size : end - first * chunk_size]

    def _whole_block_on_disk(self, offset: int, end: int) -> Spare | None:
        """The block of a random read, to be read whole from the data cache (a random reader
        soon needs the whole cached file in the page cache). Handed out again when a read still
        falls in it a while after: the kernel dropped its pages since (memory pressure, an
        fadvise, attributes that changed), at most once per :data:`_RESPARE_AFTER_S`."""
        index = offset // self._block_size
        now = trio.current_time()
        if (
            self._disk is None
            or (end - 1) // self._block_size != index
            or now - self._spared_blocks.get(index, -math.inf) < _RESPARE_AFTER_S
            or not self._disk.has_block(index, self._block_size)
        ):
            return None
        load = self._disk.block_loader(index, self._block_size)
        if load is None:
            return None
        if len(self._spared_blocks) >= _MAX_SPARED_BLOCKS:
            self._spared_blocks.clear()
        self._spared_blocks[index] = now
        return Spare(index * self._block_size, load)

    # -- access pattern --------------------------------------------------------------------

    def _note_access(self, offset: int, end: int) -> None:
        """Classify this read as sequential or random and size the prefetch window."""
        # pyfuse3 calls read() in the order the kernel sent the requests, so a sequential
        # reader's next offset is the end of the previous read (give or take the read's own
        # size). Once a stream runs, its large reads may also land further off: ahead, past
        # pages the kernel already had cached, or back, for requests of a readahead batch
        # answered by an earlier read of ours. Small reads that far off are a random reader
        # (a database's pages, an archive's directory), which must not start a prefetch.
        distance = offset - self._stream_end
        near = max(end - offset, _NEAR_STREAM)
        back_slack = max(4 * self._block_size, _SEQUENTIAL_SLACK)
        ahead_slack = max(2 * self._block_size, _SEQUENTIAL_SLACK // 2)
        in_stream = -near <= distance <= near or (
            self._window_blocks > 0
            and end - offset >= _NEAR_STREAM
            and -back_slack <= distance <= ahead_slack
        )
        cache = self._cache
        if in_stream:
            self._stream_end = max(self._stream_end, end)
            if self._stream_end < self.size:
                cache._streams.add(self)
            else:
                cache._streams.discard(self)  # at the end: nothing more to prefetch
            self._window_blocks = min(max(1, self._window_blocks * 2), cache.window_limit())
        else:
            cache._streams.discard(self)
            self._window_blocks = 0
            self._frontier = 0
            self._stream_end = end

    def _schedule(self, first_block: int, last_block: int) -> None:
        """Start GETs for the missing blocks of this read and for the prefetch window."""
        cache = self._cache
        wanted = [i for i in range(first_block, last_block + 1) if self._is_missing(i)]
        if self._window_blocks:
            stream_block = (self._stream_end - 1) // self._block_size
            target = min(stream_block + 1 + self._window_blocks, self._block_count)
            start = max(self._frontier, last_block + 1)
            step = max(1, min(cache.part_blocks, self._window_blocks // 2))
            if target > start and (wanted or target - start >= step or target == self._block_count):
                wanted.extend(i for i in range(start, target) if self._is_missing(i))
                self._frontier = target
        run: list[int] = []
        for index in wanted:
            if run and (index != run[-1] + 1 or len(run) >= cache.part_blocks):
                self._start_fetch(run[0], run[-1])
                run = []
            run.append(index)
        if run:
            self._start_fetch(run[0], run[-1])

    # -- blocks and fetches ----------------------------------------------------------------

    def _id(self, index: int) -> BlockId:
        return (self.key, self.etag, index)

    def _is_missing(self, index: int) -> bool:
        """Whether block ``index`` is neither cached (in memory or on disk) nor being fetched."""
        if not self._cache._is_missing(self._id(index)):
            return False
        return self._disk is None or not self._disk.has_block(index, self._block_size)

    def _from_disk(self, start: int, end: int) -> bytes | None:
        if self._disk is None:
            return None
        return self._disk.read(start, end)

    def _cached_chunk(self, chunk: int) -> bytes | None:
        """Chunk ``chunk`` of the object if some cache holds it (without a request)."""
        chunk_size = self._cache.chunk_size
        start = chunk * chunk_size
        stop = min(start + chunk_size, self.size)
        index = start // self._block_size
        block = self._cache._lookup(self._id(index))
        if block is not None:
            base = index * self._block_size
            return block[start - base : stop - base]
        chunk_id = (self.key, self.etag, chunk)
        data = self._cache._chunks.get(chunk_id)
        if data is None:
            data = self._from_disk(start, stop)
            if data is not None:
                self._cache._chunks[chunk_id] = data
        return data

    async def _fetch_chunks(self, first: int, last: int, pieces: dict[int, bytes]) -> None:
        """GET chunks ``first..last`` (a random read's missing run) into ``pieces``, the chunk
        cache and the data cache."""
        cache = self._cache
        chunk_size = cache.chunk_size
        start = first * chunk_size
        stop = min((last + 1) * chunk_size, self.size)
        ids = [(self.key, self.etag, chunk) for chunk in range(first, last + 1)]
        pendings = [_PendingBlock() for _ in ids]
        cache._pending_chunks.update(zip(ids, pendings, strict=True))
        received: list[bytes | memoryview] = []
        error: BaseException | None = None

        async def take(piece: bytes | memoryview) -> None:
            received.append(piece)

        try:
            async with cache.limiter:
                await self._receive(start, stop, take)
        except PreconditionFailed as exc:
            self._failure = error = exc
            log.info("%s changed since it was opened (etag %s): %s", self.key, self.etag, exc)
            raise
        except OssError as exc:
            error = exc
            raise
        finally:
            data = b"".join(received) if error is None else b""
            for chunk_id, pending in zip(ids, pendings, strict=True):
                if cache._pending_chunks.get(chunk_id) is pending:
                    del cache._pending_chunks[chunk_id]
                offset = (chunk_id[2] - first) * chunk_size
                piece = data[offset : offset + chunk_size] if len(data) == stop - start else None
                if piece is not None:
                    pieces[chunk_id[2]] = piece
                    cache._chunks[chunk_id] = piece
                pending.data = piece
                pending.error = error
                pending.done.set()
        if self._disk is not None:
            await cache._store_later(self._disk, start, data)

    async def _block(self, index: int) -> bytes:
        block_id = self._id(index)
        while True:
            data = self._cache._lookup(block_id, refresh=self._window_blocks == 0)
            if data is not None:
                return data
            block_start = index * self._block_size
            data = self._from_disk(block_start, min(block_start + self._block_size, self.size))
            if data is not None:
                self._cache._keep(block_id, data)
                return data
            pending = self._cache._pending.get(block_id)
            if pending is None:
                self._start_fetch(index, index)
                pending = self._cache._pending[block_id]
            await pending.done.wait()
            if pending.error is not None:
                if isinstance(pending.error, PreconditionFailed):
                    self._failure = pending.error
                raise pending.error
            if pending.data is not None:
                return pending.data
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise trio.ClosedResourceError(f"reader of {self.key} closed during read()")
            if self._cache.nursery.cancel_scope.cancel_called:
                raise trio.ClosedResourceError("the mount is shutting down")
            # Abandoned (the fetching handle was closed): look again, fetch it ourselves.

    def _start_fetch(self, first: int, last: int) -> None:
        """Register blocks ``first..last`` as pending and fetch them in a task of this handle."""
        pendings = [_PendingBlock() for _ in range(first, last + 1)]
        for index, pending in enumerate(pendings, start=first):
            self._cache._pending[self._id(index)] = pending
        scope = trio.CancelScope()
        self._task_scopes.add(scope)
        self._tasks_done = trio.Event()
        self._cache.nursery.start_soon(self._run_task, scope, first, pendings)

    async def _run_task(
        self, scope: trio.CancelScope, first: int, pendings: list[_PendingBlock]
    ) -> None:
        try:
            with scope:
                await self._fetch_blocks(first, pendings)
        finally:
            self._task_scopes.discard(scope)
            if not self._task_scopes:
                self._tasks_done.set()

    async def _fetch_blocks(self, first: int, pendings: list[_PendingBlock]) -> None:
        """GET the blocks from ``first`` on and settle each as it completes; never raises but
        Cancelled. Whatever is not settled at the end is failed, or abandoned if cancelled."""
        cache = self._cache
        last = first + len(pendings) - 1
        error: BaseException | None = None
        try:
            async with cache.limiter:
                await self._stream_blocks(first, pendings)
        except OssError as exc:
            error = exc
            if isinstance(exc, PreconditionFailed):
                self._failure = exc
                log.info("%s changed since it was opened (etag %s): %s", self.key, self.etag, exc)
            else:
                log.warning("GET %s blocks %d-%d failed: %s", self.key, first, last, exc)
        except Exception as exc:
            # Not expected; handed to the waiting read() so it surfaces there, not in the nursery.
            log.exception("GET %s blocks %d-%d failed unexpectedly", self.key, first, last)
            error = exc
        finally:
            for index, pending in enumerate(pendings, start=first):
                if not pending.done.is_set():
                    cache._settle(self._id(index), pending, error=error)

    async def _stream_blocks(self, first: int, pendings: list[_PendingBlock]) -> None:
        """Fetch the blocks from ``first`` on and settle each as soon as its last byte is in."""
        cache = self._cache
        block_size = self._block_size
        end = min((first + len(pendings)) * block_size, self.size)  # exclusive
        position = first * block_size
        block = first
        block_end = min(position + block_size, end)
        parts: list[bytes | memoryview] = []

        async def take(piece: bytes | memoryview) -> None:
            nonlocal position, block, block_end, parts
            view = piece
            while view:
                length = min(len(view), block_end - position)
                parts.append(view if length == len(view) else memoryview(view)[:length])
                position += length
                view = memoryview(view)[length:] if length < len(view) else b""
                if position == block_end:
                    only = parts[0]
                    data = only if len(parts) == 1 and isinstance(only, bytes) else b"".join(parts)
                    parts = []
                    cache._settle(self._id(block), pendings[block - first], data=data)
                    if self._disk is not None:
                        await cache._store_later(self._disk, block * block_size, data)
                    block += 1
                    block_end = min(block_end + block_size, end)

        await self._receive(position, end, take)

    async def _receive(
        self, start: int, end: int, take: Callable[[bytes | memoryview], Awaitable[None]]
    ) -> None:
        """GET bytes ``[start, end)`` and hand the body to ``take`` piece by piece, in order;
        a GET that breaks off transiently is reopened from the byte it reached."""
        cache = self._cache
        position = start
        attempts_left = cache.resume_attempts
        while position < end:
            resume_from = position
            try:
                cache.stats.gets += 1
                async with self._source.open_range(position, end - 1) as stream:
                    async for piece in stream:
                        if position + len(piece) > end:
                            raise OssProtocolError(
                                f"GET {self.key}: more bytes than the range asked for", status=206
                            )
                        cache.stats.bytes_fetched += len(piece)
                        position += len(piece)
                        await take(piece)
                if position < end:
                    raise OssProtocolError(
                        f"GET {self.key}: body ended at {position}, expected {end}", status=206
                    )
            except OssError as exc:
                if not is_transient(exc) or attempts_left <= 0 or position == end:
                    raise
                attempts_left -= 1
                if position > resume_from:
                    attempts_left = cache.resume_attempts  # progress was made
                cache.stats.resumed_gets += 1
                log.info("GET %s broke off at byte %d (%s); resuming", self.key, position, exc)
                await trio.sleep(_RESUME_BACKOFF_S)

    def _verify_whole_file(self) -> None:
        expected = self.expected_crc64
        if expected is None:
            expected = self._source.object_crc64
        if expected is None:
            log.debug("%s read whole, but no CRC-64 is known to check it", self.key)
            return
        if self._check.crc == expected:
            log.debug("%s read whole, CRC-64 %016x matches", self.key, expected)
            return
        self._cache.invalidate(self.key, self.etag)
        message = (
            f"{self.key}: data read does not match the object's CRC-64 "
            f"(got {self._check.crc:016x}, expected {expected:016x})"
        )
        log.error("%s", message)
        # Every later read of this handle fails too: the kernel retries a failed readahead
        # page with a read of its own, which must not succeed quietly.
        self._failure = IntegrityError(message)
        raise self._failure
