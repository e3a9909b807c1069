"""The persistent data cache (``-o use_cache=DIR``): object bytes on local disk, across mounts.

Layout
------
One directory per endpoint, bucket and prefix under ``DIR`` (:func:`cache_namespace`)::

    lock            flock()ed by the mount that uses the directory: a second one is refused
    index.sqlite    objects (id, key, etag, size) and their cached blocks (crcs, bytes, used)
    data/XX/ID      a sparse file per object version: its bytes at their own offsets

An object is cut into the read path's blocks (``block_size``, 1 MiB by default): the unit of the
LRU order and of eviction. A block is cut into chunks of :data:`CHUNK_SIZE` (or is one chunk,
where it is not a multiple of it): the unit of presence
and of the CRC-64 check, and what a random reader fetches. A block's row holds one CRC-64 per
chunk, 0 for a chunk that is not cached (a chunk whose CRC happens to be 0 is simply never kept).

Versions
--------
Only one version per key is kept, the one last opened: opening another ETag or size of the key
drops the old rows and the old file. A handle still reading the old version then misses on
disk (its :class:`CachedObject` is no longer ``valid``) and reads from OSS with ``If-Match``, as
without the cache. So the cache can never serve another version than the one the mount's metadata
names; how old that metadata may be is the metadata TTLs' business (docs/semantics.md).

Never serving torn data
-----------------------
Every chunk read back from disk is checked against its CRC-64 before it is used. A chunk that
does not match (a torn write after a crash or a full disk, a bit flip, someone editing the file)
is dropped from the index, counted, logged, and fetched from OSS again. Data is written before its
row, and rows are written in batches (every :data:`_FLUSH_INTERVAL_S` seconds or
:data:`_FLUSH_ROWS` rows, and at unmount), so a process that dies loses at most its last batch
of rows; the data those rows described is then on disk but unknown (orphaned). The index has a
``clean`` flag that is cleared while a mount uses it: the next mount after one that did not end
cleanly scans the data files and removes what no row covers, so the size bound stays true. An
index SQLite cannot read is thrown away with the data.

Size bound
----------
``capacity`` bounds the bytes of cached chunks. Room is made before a write: the least recently
used blocks are punched out of their files (``fallocate
PUNCH_HOLE``, or the whole file goes where the file system cannot punch). The index itself is
small (a row of ``block_size / CHUNK_SIZE`` CRCs per cached block, its log at most 1 MiB) and
counted in the bound: the data gets what the index leaves.
"Recently" is counted in index flushes: a block's ``used`` is the number of the flush period it
was last read or written in, so that reading from the cache costs an index write per block and
period, not per read (the order within a period is the blocks' order in their objects).
Memory holds the rows of the objects in use plus a few recently used ones: it depends on what is
open, never on how much is cached or how big the bucket is.

Threads
-------
Lookups, reads back (local preads of at most a block) and the bookkeeping run on the trio thread;
SQLite writes are batched as above. What a GET brought is written, and its CRC-64s computed, in a
worker thread (:meth:`CachedObject.store_in_thread`): a cold read that fills the cache is not
slowed by the disk. A full or failing disk never fails a read: the cache stops storing for a
while (:data:`_DISK_TROUBLE_PAUSE_S`) and reads go to OSS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import logging
import math
import os
import shutil
import sqlite3
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import trio

from ossmount.oss.crc64 import crc64

log = logging.getLogger(__name__)

CHUNK_SIZE = 16 * 1024
_SCHEMA_VERSION = 1
_FLUSH_INTERVAL_S = 2.0
_FLUSH_ROWS = 512
_DISK_TROUBLE_PAUSE_S = 30.0
# Objects whose rows stay in memory after their last reader closed.
_RECENT_OBJECTS = 64
_EVICT_BATCH = 64
# What makes the cache unusable for the rest of a mount (see DataCache._broke).
_CACHE_FAILURES = (OSError, sqlite3.Error)
_WAL_LIMIT = 1024 * 1024

_NO_ROW = -1  # a CachedObject with nothing stored yet has no row
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class DataCacheError(OSError):
    """The cache directory cannot be used (in use by another mount, not writable)."""


def chunk_size_for(block_size: int) -> int:
    """The chunk size used with ``block_size``: :data:`CHUNK_SIZE`, or the block where the
    block is not a multiple of it."""
    return CHUNK_SIZE if block_size % CHUNK_SIZE == 0 else block_size


def cache_namespace(endpoint: str, bucket: str, prefix: str) -> str:
    """The directory name under ``use_cache=DIR`` of one endpoint, bucket and prefix."""
    identity = f"{endpoint}\n{bucket}\n{prefix}".encode()
    return f"{bucket}-{hashlib.sha256(identity).hexdigest()[:16]}"


@dataclass
class DataCacheStats:
    """Counters for `ossmount status`, tests and benchmarks."""

    hits: int = 0  # reads answered from disk
    misses: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0
    bytes_evicted: int = 0
    corrupt_chunks: int = 0  # chunks whose CRC-64 did not match: dropped and fetched again
    repaired_bytes: int = 0  # orphaned data removed at start after an unclean end


@dataclass(eq=False)
class _Block:
    crcs: array[int]  # one CRC-64 per chunk ('Q'); 0: not cached
    used: int
    bytes: int = 0


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``[offset, offset + length)`` of a file, keeping its size; False if not supported."""
    if _fallocate is None or length <= 0:
        return False
    result = _fallocate(
        fd,
        _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
        ctypes.c_longlong(offset),
        ctypes.c_longlong(length),
    )
    return bool(result == 0)


def _load_fallocate() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    function.restype = ctypes.c_int
    return function


_fallocate = _load_fallocate()


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no progress writing")
        view = view[written:]
        offset += written


def _connect_index(path: Path) -> sqlite3.Connection:
    """Open (creating) the index; sqlite3.DatabaseError if it is not a usable database."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # A small write-ahead log, emptied often: the directory's bound counts it.
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        db.executescript(
            """
            BEGIN;
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS objects (
                id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
                etag TEXT NOT NULL, size INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS blocks (
                object_id INTEGER NOT NULL, block INTEGER NOT NULL, crcs BLOB NOT NULL,
                bytes INTEGER NOT NULL, used INTEGER NOT NULL,
                PRIMARY KEY (object_id, block)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS blocks_by_use ON blocks (used);
            COMMIT;
            """
        )
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError:
        db.close()
        raise
    if check != "ok":
        db.close()
        raise sqlite3.DatabaseError(f"quick_check: {check}")
    return db


def write_chunks(
    fd: int, offset: int, data: bytes | memoryview, chunk_size: int
) -> list[int] | OSError:
    """Write ``data`` at ``offset`` and return the CRC-64 of each chunk, or the error; touches
    nothing shared, so it may run in a worker thread."""
    try:
        _write_all(fd, data, offset)
    except OSError as exc:
        return exc
    view = memoryview(data)
    return [crc64(view[start : start + chunk_size]) for start in range(0, len(view), chunk_size)]


class CachedObject:
    """The cached bytes of one object version, shared by every reader of it."""

    def __init__(
        self,
        cache: DataCache,
        object_id: int,
        key: str,
        etag: str,
        size: int,
        blocks: dict[int, _Block],
    ) -> None:
        self._cache = cache
        self.object_id = object_id
        self.key = key
        self.etag = etag
        self.size = size
        self.blocks = blocks
        self.valid = True
        self.readers = 0
        self._fd: int | None = None

    @property
    def chunk_size(self) -> int:
        return self._cache.chunk_size

    @property
    def path(self) -> Path:
        return self._cache.data_path(self.object_id)

    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _chunk_length(self, chunk: int) -> int:
        return min(self.chunk_size, self.size - chunk * self.chunk_size)

    def _chunk_crc(self, chunk: int) -> int:
        block = self.blocks.get(chunk // self._cache.chunks_per_block)
        return 0 if block is None else block.crcs[chunk % self._cache.chunks_per_block]

    def has_range(self, start: int, end: int) -> bool:
        """Whether every chunk covering ``[start, end)`` is cached."""
        if not self.valid or start >= end:
            return False
        return all(
            self._chunk_crc(chunk) != 0
            for chunk in range(start // self.chunk_size, (end - 1) // self.chunk_size + 1)
        )

    def has_block(self, index: int, block_size: int) -> bool:
        """Whether block ``index`` is all cached: O(1), from the block's byte count (the
        prefetcher asks this of every block of its window at every read)."""
        block = self.blocks.get(index)
        start = index * block_size
        return (
            self.valid
            and block is not None
            and start < self.size
            and block.bytes == min(block_size, self.size - start)
        )

    def read(self, start: int, end: int) -> bytes | None:
        """The bytes ``[start, end)`` if every chunk covering them is cached and intact."""
        if not self.has_range(start, end):
            self._cache.stats.misses += 1
            return None
        first = start // self.chunk_size
        last = (end - 1) // self.chunk_size
        lo = first * self.chunk_size
        hi = min((last + 1) * self.chunk_size, self.size)
        try:
            data = os.pread(self.fd(), hi - lo, lo)
        except OSError as exc:
            log.warning("data cache: reading %s failed: %s", self.path, exc)
            self._cache.stats.misses += 1
            return None
        view = memoryview(data)
        for chunk in range(first, last + 1):
            offset = chunk * self.chunk_size - lo
            piece = view[offset : offset + self._chunk_length(chunk)]
            if len(piece) != self._chunk_length(chunk) or crc64(piece) != self._chunk_crc(chunk):
                self._cache.stats.corrupt_chunks += 1
                log.warning(
                    "data cache: %s bytes %d-%d do not match their CRC-64: dropped, refetching",
                    self.key,
                    chunk * self.chunk_size,
                    chunk * self.chunk_size + self._chunk_length(chunk) - 1,
                )
                self._cache._forget_chunk(self, chunk)
                self._cache.stats.misses += 1
                return None
        self._cache._touch(self, first, last)
        self._cache.stats.hits += 1
        self._cache.stats.bytes_read += end - start
        if lo == start and hi == end:
            return data
        return data[start - lo : end - lo]

    def block_loader(self, index: int, block_size: int) -> Callable[[], bytes | None] | None:
        """A function, safe to call in any thread, that reads block ``index`` back whole and
        returns it if every chunk still matches its CRC-64 as of now (None otherwise); None if
        the block is not all cached."""
        if not self.has_block(index, block_size):
            return None
        start = index * block_size
        end = min(start + block_size, self.size)
        crcs = array("Q", self.blocks[index].crcs)  # a copy: the rows change on this thread
        path = self.path  # not the fd, which may be closed by then (ids are never reused)
        chunk_size = self.chunk_size

        def load() -> bytes | None:
            try:
                with open(path, "rb", buffering=0) as file:
                    data = os.pread(file.fileno(), end - start, start)
            except OSError:
                return None
            view = memoryview(data)
            for slot, crc in enumerate(crcs[: math.ceil((end - start) / chunk_size)]):
                if crc64(view[slot * chunk_size : (slot + 1) * chunk_size]) != crc:
                    return None
            return data

        return load

    def store(self, offset: int, data: bytes | memoryview) -> None:
        """Keep ``data``, read at ``offset``: whole chunks, the last one possibly the object's
        short tail. Failures are logged, never raised: the cache only loses the data."""
        self._cache._store(self, offset, data)

    async def store_in_thread(self, offset: int, data: bytes | memoryview) -> None:
        """:meth:`store`, with the write and the checksums in a worker thread."""
        fd = self._cache._reserve(self, offset, len(data))
        if fd is None:
            return
        self.readers += 1  # keeps the file open
        try:
            crcs = await trio.to_thread.run_sync(
                write_chunks, fd, offset, data, self._cache.chunk_size
            )
            self._cache._record(self, offset, len(data), crcs)
        finally:
            self._cache.release(self)


class DataCache:
    """The cache directory of one mount (see the module docstring)."""

    def __init__(self, root: Path, *, capacity: int, block_size: int, clear: bool = False) -> None:
        self.root = root
        self.capacity = capacity
        self.block_size = block_size
        self.chunk_size = chunk_size_for(block_size)
        self.chunks_per_block = block_size // self.chunk_size
        self.stats = DataCacheStats()
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._lock_file: IO[str] = open(root / "lock", "a")  # noqa: SIM115 (held until close)
        except OSError as exc:
            raise DataCacheError(
                exc.errno or errno.EIO, f"data cache {root}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise DataCacheError(
                errno.EBUSY,
                f"data cache {root} is in use by another ossmount process "
                "(give each mount of the same bucket its own use_cache=DIR)",
            ) from None
        self._objects: dict[str, CachedObject] = {}
        self._recent: OrderedDict[str, CachedObject] = OrderedDict()  # no reader left
        self._dirty: dict[tuple[int, int], _Block | None] = {}  # None: row to delete
        self._touched: dict[tuple[int, int], int] = {}  # rows read since the last flush: used
        self._last_flush = time.monotonic()
        self._paused_until = 0.0
        self._reservations: dict[tuple[int, int], int] = {}  # (id of object, offset): bytes
        self._reserved_bytes = 0
        self.broken = False
        try:
            if clear:
                self._wipe("del_cache asked for it")
            self._db = self._open_index()
            self._clock = int(
                self._db.execute("SELECT COALESCE(MAX(used), 0) FROM blocks").fetchone()[0]
            )
            self.cached_bytes = int(
                self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM blocks").fetchone()[0]
            )
            self._index_bytes = self._measure_index()
            if self._meta("clean") != "1":
                self._repair()
            self._set_meta("clean", "0")
            self._make_room(0)  # capacity may have shrunk since the last mount
        except (OSError, sqlite3.Error) as exc:
            self._lock_file.close()
            errno_value = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            raise DataCacheError(errno_value, f"data cache {root}: {exc}") from None

    # -- public -------------------------------------------------------------------------------

    def data_path(self, object_id: int) -> Path:
        return self.root / "data" / f"{object_id % 256:02x}" / str(object_id)

    def open_object(self, key: str, etag: str, size: int) -> CachedObject:
        """The cached bytes of version ``etag`` of ``key`` (empty if not cached yet); pair with
        :meth:`release`. Another version of the key that is cached is dropped."""
        try:
            obj = self._objects.get(key) or self._recent.pop(key, None)
            if obj is not None and (obj.etag != etag or obj.size != size):
                self._drop_object(obj)
                obj = None
            if obj is None:
                obj = self._load_object(key, etag, size)
        except _CACHE_FAILURES as exc:
            self._broke(f"opening {key}", exc)
            obj = CachedObject(self, _NO_ROW, key, etag, size, {})  # never cached
            obj.valid = False
        else:
            self._objects[key] = obj
        obj.readers += 1
        return obj

    def release(self, obj: CachedObject) -> None:
        try:
            self._release(obj)
        except _CACHE_FAILURES as exc:
            self._broke(f"closing {obj.key}", exc)

    def _release(self, obj: CachedObject) -> None:
        obj.readers -= 1
        if obj.readers > 0:
            return
        if self._objects.get(obj.key) is obj:
            del self._objects[obj.key]
            if obj.valid:
                self._recent[obj.key] = obj
                while len(self._recent) > _RECENT_OBJECTS:
                    _, old = self._recent.popitem(last=False)
                    if old.readers <= 0:
                        old.close_file()
                self._maybe_flush()
                return
        if self._recent.get(obj.key) is not obj:
            obj.close_file()

    def holds(self, key: str, etag: str) -> bool:
        """Whether every byte of version ``etag`` of ``key`` is cached (no side effect)."""
        if self.broken:
            return False
        obj = self._objects.get(key) or self._recent.get(key)
        if obj is not None:
            return obj.valid and obj.etag == etag and obj.has_range(0, obj.size)
        try:
            row = self._db.execute(
                "SELECT o.size, COALESCE(SUM(b.bytes), 0) FROM objects o "
                "LEFT JOIN blocks b ON b.object_id = o.id WHERE o.key = ? AND o.etag = ?",
                (key, etag),
            ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] is not None and row[0] > 0 and row[1] == row[0]

    def discard(self, key: str, etag: str | None = None) -> None:
        """Drop the cached bytes of ``key`` (of one version only, if ``etag`` is given)."""
        try:
            self._discard(key, etag)
        except _CACHE_FAILURES as exc:
            self._broke(f"dropping {key}", exc)

    def _discard(self, key: str, etag: str | None) -> None:
        obj = self._objects.get(key) or self._recent.get(key)
        if obj is not None:
            if etag is None or obj.etag == etag:
                self._drop_object(obj)
            return
        row = self._db.execute("SELECT id, etag FROM objects WHERE key = ?", (key,)).fetchone()
        if row is not None and (etag is None or row[1] == etag):
            self._delete_object_row(int(row[0]))

    def flush(self) -> None:
        """Write the pending index rows (one transaction)."""
        if not self._dirty and not self._touched:
            self._last_flush = time.monotonic()
            return
        touches = [
            (used, object_id, index)
            for (object_id, index), used in self._touched.items()
            if (object_id, index) not in self._dirty
        ]
        upserts = [
            (object_id, index, block.crcs.tobytes(), block.bytes, block.used)
            for (object_id, index), block in self._dirty.items()
            if block is not None
        ]
        deletes = [ident for ident, block in self._dirty.items() if block is None]
        try:
            with self._db:
                self._db.executemany(
                    "DELETE FROM blocks WHERE object_id = ? AND block = ?", deletes
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)", upserts
                )
                self._db.executemany(
                    "UPDATE blocks SET used = ? WHERE object_id = ? AND block = ?", touches
                )
        except sqlite3.Error as exc:
            log.warning("data cache: writing the index failed (%s); rows kept for later", exc)
            self._paused_until = time.monotonic() + _DISK_TROUBLE_PAUSE_S
            return
        self._dirty.clear()
        self._touched.clear()
        self._last_flush = time.monotonic()
        self._index_bytes = self._measure_index()
        self._clock += 1

    def _measure_index(self) -> int:
        total = 0
        for name in ("index.sqlite", "index.sqlite-wal"):
            with contextlib.suppress(OSError):
                total += (self.root / name).stat().st_blocks * 512
        return total

    def close(self) -> None:
        """Write the index and mark it clean; release the directory."""
        try:
            self.flush()
            if not self._dirty and not self.broken:
                self._set_meta("clean", "1")
            self._db.close()
        except sqlite3.Error as exc:
            log.warning("data cache: closing the index failed: %s", exc)
        for obj in [*self._objects.values(), *self._recent.values()]:
            obj.close_file()
        self._objects.clear()
        self._recent.clear()
        self._lock_file.close()

    # -- index ------------------------------------------------------------------------------

    def _open_index(self) -> sqlite3.Connection:
        path = self.root / "index.sqlite"
        try:
            db = _connect_index(path)
        except sqlite3.DatabaseError as exc:
            self._wipe(f"its index is unreadable ({exc})")
            db = _connect_index(path)
        layout = f"{_SCHEMA_VERSION}/{self.block_size}/{self.chunk_size}"
        stored = db.execute("SELECT value FROM meta WHERE name = 'layout'").fetchone()
        if stored is not None and stored[0] != layout:
            db.close()
            self._wipe(f"made with another block layout ({stored[0]}, now {layout})")
            db = _connect_index(path)
            stored = None
        if stored is None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('layout', ?)", (layout,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
        return db

    def _wipe(self, reason: str) -> None:
        log.warning("data cache %s: starting empty, %s", self.root, reason)
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        shutil.rmtree(self.root / "data", ignore_errors=True)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def _load_object(self, key: str, etag: str, size: int) -> CachedObject:
        row = self._db.execute(
            "SELECT id, etag, size FROM objects WHERE key = ?", (key,)
        ).fetchone()
        if row is not None and (row[1] != etag or row[2] != size):
            self._delete_object_row(int(row[0]))
            row = None
        if row is None:
            return CachedObject(self, _NO_ROW, key, etag, size, {})
        object_id = int(row[0])
        blocks: dict[int, _Block] = {}
        for index, crcs, nbytes, used in self._db.execute(
            "SELECT block, crcs, bytes, used FROM blocks WHERE object_id = ?", (object_id,)
        ):
            values = array("Q")
            values.frombytes(crcs)
            blocks[int(index)] = _Block(values, int(used), int(nbytes))
        for (dirty_id, index), block in self._dirty.items():
            if dirty_id == object_id:
                if block is None:
                    blocks.pop(index, None)
                else:
                    blocks[index] = block
        return CachedObject(self, object_id, key, etag, size, blocks)

    def _drop_object(self, obj: CachedObject) -> None:
        obj.valid = False
        if self._objects.get(obj.key) is obj:
            del self._objects[obj.key]
        if self._recent.get(obj.key) is obj:
            del self._recent[obj.key]
        if obj.readers <= 0:
            obj.close_file()
        if obj.object_id != _NO_ROW:
            self._delete_object_row(obj.object_id)
        obj.blocks = {}

    def _delete_object_row(self, object_id: int) -> None:
        self.flush()
        freed = self._db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM blocks WHERE object_id = ?", (object_id,)
        ).fetchone()[0]
        with self._db:
            self._db.execute("DELETE FROM blocks WHERE object_id = ?", (object_id,))
            self._db.execute("DELETE FROM objects WHERE id = ?", (object_id,))
        self.cached_bytes -= int(freed)
        with contextlib.suppress(FileNotFoundError):
            self.data_path(object_id).unlink()

    def _create_row(self, obj: CachedObject) -> None:
        """Give ``obj`` its row and an empty data file, at its first store."""
        obj.object_id = int(
            self._db.execute(
                "INSERT INTO objects (key, etag, size) VALUES (?, ?, ?) RETURNING id",
                (obj.key, obj.etag, obj.size),
            ).fetchone()[0]
        )
        path = self.data_path(obj.object_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a crash between an object's row and its file going

    def _mark(self, obj: CachedObject, index: int) -> None:
        self._dirty[(obj.object_id, index)] = obj.blocks.get(index)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (
            len(self._dirty) + len(self._touched) >= _FLUSH_ROWS
            or time.monotonic() - self._last_flush >= _FLUSH_INTERVAL_S
        ):
            self.flush()

    def _touch(self, obj: CachedObject, first_chunk: int, last_chunk: int) -> None:
        per_block = self.chunks_per_block
        for index in range(first_chunk // per_block, last_chunk // per_block + 1):
            block = obj.blocks.get(index)
            if block is not None and block.used != self._clock:
                block.used = self._clock
                self._touched[(obj.object_id, index)] = self._clock
        self._maybe_flush()

    def _forget_chunk(self, obj: CachedObject, chunk: int) -> None:
        index, slot = divmod(chunk, self.chunks_per_block)
        block = obj.blocks.get(index)
        if block is None or block.crcs[slot] == 0:
            return
        block.crcs[slot] = 0
        length = obj._chunk_length(chunk)
        block.bytes -= length
        self.cached_bytes -= length
        with contextlib.suppress(OSError):
            _punch_hole(obj.fd(), chunk * self.chunk_size, length)
        if block.bytes <= 0:
            del obj.blocks[index]
        self._mark(obj, index)

    # -- storing and eviction -----------------------------------------------------------------

    def _broke(self, what: str, exc: OSError | sqlite3.Error) -> None:
        """Where the index or the disk fails beyond what the callers handle (a SQLite error,
        a directory gone): the cache stops being used for the rest of the mount, loudly, and
        the reads go on from OSS."""
        if not self.broken:
            log.error(
                "data cache %s: %s failed (%s); not used until the next mount", self.root, what, exc
            )
        self.broken = True
        self._paused_until = math.inf
        for obj in [*self._objects.values(), *self._recent.values()]:
            obj.valid = False

    def _store(self, obj: CachedObject, offset: int, data: bytes | memoryview) -> None:
        fd = self._reserve(obj, offset, len(data))
        if fd is not None:
            self._record(obj, offset, len(data), write_chunks(fd, offset, data, self.chunk_size))

    def _reserve(self, obj: CachedObject, offset: int, length: int) -> int | None:
        """Make room for ``length`` bytes at ``offset`` of ``obj``: the file descriptor to write
        them to, or None when they need not or cannot be stored."""
        try:
            return self._reserve_unguarded(obj, offset, length)
        except _CACHE_FAILURES as exc:
            self._broke(f"storing into {obj.key}", exc)
            return None

    def _reserve_unguarded(self, obj: CachedObject, offset: int, length: int) -> int | None:
        if not obj.valid or not length or time.monotonic() < self._paused_until:
            return None
        chunk_size = self.chunk_size
        if offset % chunk_size or (length % chunk_size and offset + length != obj.size):
            raise ValueError(f"data cache: unaligned store at {offset} of {length} bytes")
        new_bytes = sum(
            obj._chunk_length(chunk)
            for chunk in range(offset // chunk_size, (offset + length - 1) // chunk_size + 1)
            if obj._chunk_crc(chunk) == 0
        )
        if new_bytes == 0 or not self._make_room(new_bytes, keep=obj):
            return None
        try:
            if obj.object_id == _NO_ROW:
                self._create_row(obj)
            fd = obj.fd()
        except OSError as exc:
            self._disk_trouble(obj, exc)
            return None
        # Counted against the bound until _record: writes in flight take room too.
        self._reservations[(id(obj), offset)] = new_bytes
        self._reserved_bytes += new_bytes
        return fd

    def _record(
        self, obj: CachedObject, offset: int, length: int, crcs: list[int] | OSError
    ) -> None:
        """Account for chunks written at ``offset`` by :func:`write_chunks`."""
        self._reserved_bytes -= self._reservations.pop((id(obj), offset), 0)
        try:
            self._record_unguarded(obj, offset, length, crcs)
        except _CACHE_FAILURES as exc:
            self._broke(f"storing into {obj.key}", exc)

    def _record_unguarded(
        self, obj: CachedObject, offset: int, length: int, crcs: list[int] | OSError
    ) -> None:
        if isinstance(crcs, OSError):
            self._disk_trouble(obj, crcs)
            with contextlib.suppress(OSError):
                _punch_hole(obj.fd(), offset, length)
            return
        if not obj.valid:
            return
        first = offset // self.chunk_size
        last = first + len(crcs) - 1
        for chunk, crc in enumerate(crcs, start=first):
            index, slot = divmod(chunk, self.chunks_per_block)
            block = obj.blocks.get(index)
            if block is None:
                block = _Block(array("Q", bytes(8 * self.chunks_per_block)), self._clock)
                obj.blocks[index] = block
            length = obj._chunk_length(chunk)
            if block.crcs[slot] == 0 and crc != 0:
                block.bytes += length
                self.cached_bytes += length
                self.stats.bytes_stored += length
            block.crcs[slot] = crc
            block.used = self._clock
            if chunk == last or slot == self.chunks_per_block - 1:
                if block.bytes == 0:
                    del obj.blocks[index]
                self._mark(obj, index)

    def _disk_trouble(self, obj: CachedObject, exc: OSError) -> None:
        self._paused_until = time.monotonic() + _DISK_TROUBLE_PAUSE_S
        log.warning(
            "data cache: writing %s failed (%s); not storing for %d s",
            obj.path,
            exc.strerror or exc,
            _DISK_TROUBLE_PAUSE_S,
        )

    def _make_room(self, nbytes: int, keep: CachedObject | None = None) -> bool:
        """Evict least recently used blocks until ``nbytes`` more fit; False if they cannot."""
        # The index takes its room from the bound too, with a log of at most _WAL_LIMIT.
        capacity = self.capacity - max(self._index_bytes, _WAL_LIMIT)
        if nbytes > capacity:
            return False
        while self.cached_bytes + self._reserved_bytes + nbytes > capacity:
            self.flush()
            victims = self._db.execute(
                "SELECT object_id, block, bytes FROM blocks ORDER BY used LIMIT ?",
                (_EVICT_BATCH,),
            ).fetchall()
            if not victims:
                if self.cached_bytes:
                    log.warning(
                        "data cache: %d bytes accounted with nothing left to evict; recounting",
                        self.cached_bytes,
                    )
                    self.cached_bytes = 0
                # What is left is writes in flight: this one waits for a later chance.
                return self._reserved_bytes + nbytes <= capacity
            for object_id, index, nbytes_row in victims:
                self._evict_block(int(object_id), int(index), int(nbytes_row), keep)
                if self.cached_bytes + self._reserved_bytes + nbytes <= capacity:
                    break
        return True

    def _evict_block(
        self, object_id: int, index: int, nbytes: int, keep: CachedObject | None
    ) -> None:
        loaded = next(
            (
                obj
                for obj in (*self._objects.values(), *self._recent.values())
                if obj.object_id == object_id
            ),
            None,
        )
        with self._db:
            self._db.execute(
                "DELETE FROM blocks WHERE object_id = ? AND block = ?", (object_id, index)
            )
        self.cached_bytes -= nbytes
        self.stats.bytes_evicted += nbytes
        start = index * self.block_size
        if loaded is not None:
            loaded.blocks.pop(index, None)
            self._dirty.pop((object_id, index), None)
            self._touched.pop((object_id, index), None)
            punched = _punch_hole(loaded.fd(), start, self.block_size)
        else:
            try:
                fd = os.open(self.data_path(object_id), os.O_RDWR)
            except OSError:
                punched = True  # no file, nothing to free
            else:
                try:
                    punched = _punch_hole(fd, start, self.block_size)
                finally:
                    os.close(fd)
        remaining = self._db.execute(
            "SELECT 1 FROM blocks WHERE object_id = ? LIMIT 1", (object_id,)
        ).fetchone()
        if (remaining is None or not punched) and loaded is not keep:
            if loaded is not None:
                self._drop_object(loaded)
            else:
                self._delete_object_row(object_id)

    # -- repair after an unclean end ----------------------------------------------------------

    def _repair(self) -> None:
        """Remove data no row describes (see the module docstring); runs at start."""
        known = {
            int(object_id): (str(key), int(size))
            for object_id, key, size in self._db.execute("SELECT id, key, size FROM objects")
        }
        data_dir = self.root / "data"
        removed = 0
        for directory in data_dir.iterdir() if data_dir.is_dir() else []:
            for path in directory.iterdir():
                object_id = int(path.name) if path.name.isdigit() else -1
                if object_id not in known:
                    removed += path.stat().st_size
                    path.unlink()
                    continue
                removed += self._punch_unknown(path, object_id)
        # Rows of objects whose file is gone describe nothing.
        for object_id in known:
            if not self.data_path(object_id).exists():
                self._delete_object_row(object_id)
        self.stats.repaired_bytes = removed
        log.info(
            "data cache %s: the last mount did not end cleanly; %d bytes of unknown data removed",
            self.root,
            removed,
        )

    def _punch_unknown(self, path: Path, object_id: int) -> int:
        """Punch the chunks of ``path`` that hold data but have no row; the bytes freed."""
        present: set[int] = set()
        for index, crcs in self._db.execute(
            "SELECT block, crcs FROM blocks WHERE object_id = ?", (object_id,)
        ):
            values = array("Q")
            values.frombytes(crcs)
            base = int(index) * self.chunks_per_block
            present.update(base + slot for slot, crc in enumerate(values) if crc)
        freed = 0
        with open(path, "r+b") as file:
            fd = file.fileno()
            size = os.fstat(fd).st_size
            offset = 0
            while offset < size:
                try:
                    data_start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # only a hole left
                    raise
                data_end = os.lseek(fd, data_start, os.SEEK_HOLE)
                for chunk in range(
                    data_start // self.chunk_size, (data_end - 1) // self.chunk_size + 1
                ):
                    if chunk not in present:
                        start = chunk * self.chunk_size
                        length = min(self.chunk_size, size - start)
                        if _punch_hole(fd, start, length):
                            freed += length
                offset = data_end
        return freed
