"""Objects on disk and their index in SQLite.

Layout under the root directory::

    index.sqlite3        buckets, objects, multipart uploads and parts (WAL mode), and the
                         bodies of small objects (up to INLINE_LIMIT bytes)
    data/ab/<32 hex>     object data, one file per object version, named by a random id
    parts/ab/<32 hex>    uploaded parts, named the same way (and, once an upload is complete,
                         the data of its object: a multipart object is its list of part files)
    tmp/<32 hex>         bodies being received

A key never becomes a path: files are named by random ids and the index maps keys to them, so no
key (``../``, ``%2F``, NUL, 1023 bytes of anything) can reach outside the root.

A write is atomic: the body goes to a file in tmp/, which is fsynced and renamed into data/;
only then does the index row change (one SQLite transaction), and only after that commit is the
previous version's file removed. A process killed at any point leaves the old object or the new
one. Files the index does not name (a kill between rename and commit) are removed at start-up.

A body of at most INLINE_LIMIT bytes (a PUT with a Content-Length) is not a file: it goes into
the `bodies` table in the same transaction as its object row, so a small PUT costs one index
commit instead of a file created, written, fsynced and renamed (1.8 ms of server CPU per 4 KiB
PUT before, see docs/benchmarks.md). Its durability is the index's: a killed process loses no
commit (WAL), and a power cut can lose the last commits, never consistency, as docs/server.md
says of the index. Copies copy the bytes; a GET sends them with the answer's head.
Completing a multipart upload moves no data: the object row (naming the part files) goes in and
the upload's rows go out in one transaction. Copies of immutable objects are hard links.

Appendable objects are the one exception to "files never change": an append truncates the file
to the indexed size (dropping what a killed append may have left), writes, fsyncs, and then
commits the new size; readers never look past the indexed size.

All index access happens on the trio thread (SQLite calls take microseconds); file data moves in
worker threads. A reader pins the files it found in the same step as the lookup (no checkpoint
in between); files that stop being indexed while pinned are removed when the last pin goes, so
an overwrite or delete never pulls the data from under a response being sent.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ossmount.oss.crc64 import crc64

log = logging.getLogger(__name__)

COPY_CHUNK = 8 << 20
WRITEBACK_CHUNK = 1 << 20
DIRECT_ALIGNMENT = 4096
# Bodies up to this size are kept in the index (see the module's doc).
INLINE_LIMIT = 16 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    acl TEXT NOT NULL,
    storage_class TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    data_file TEXT,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    crc64 TEXT NOT NULL,
    mtime REAL NOT NULL,
    object_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    metadata TEXT NOT NULL,
    symlink_target TEXT,
    acl TEXT NOT NULL,
    storage_class TEXT NOT NULL,
    segments TEXT,
    tags TEXT,
    body_id INTEGER,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    initiated REAL NOT NULL,
    headers TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (bucket, key, upload_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS uploads_by_id ON uploads (upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    data_file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    crc64 TEXT NOT NULL,
    mtime REAL NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_channels (
    bucket TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    target_type TEXT NOT NULL,
    frag_duration INTEGER NOT NULL,
    frag_count INTEGER NOT NULL,
    playlist_name TEXT NOT NULL,
    mtime REAL NOT NULL,
    PRIMARY KEY (bucket, name)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class BucketRecord:
    name: str
    created: float
    acl: str
    storage_class: str


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One object as indexed. `headers` holds the standard headers (Content-Type ...)."""

    bucket: str
    key: str
    data_file: str | None
    size: int
    etag: str  # with quotes, as sent
    crc64: int
    mtime: float
    object_type: str  # Normal | Appendable | Multipart | Symlink
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    symlink_target: str | None = None
    acl: str = "default"
    storage_class: str = "Standard"
    # A multipart object's data: its part files in order, as (path under the root, size);
    # data_file is None then.
    segments: tuple[tuple[str, int], ...] = ()
    # Object tagging (PutObjectTagging, x-oss-tagging): tag key -> value, in order.
    tags: dict[str, str] = field(default_factory=dict)
    # A small object's data: its row in the `bodies` table (data_file is None then).
    body_id: int | None = None


@dataclass(frozen=True, slots=True)
class UploadRecord:
    bucket: str
    key: str
    upload_id: str
    initiated: float
    headers: dict[str, str]
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartRecord:
    upload_id: str
    part_number: int
    data_file: str
    size: int
    etag: str
    crc64: int
    mtime: float


@dataclass(frozen=True, slots=True)
class LiveChannelRecord:
    """A live channel's configuration (RTMP ingest is not implemented: it stays Idle)."""

    bucket: str
    name: str
    description: str
    status: str  # enabled | disabled
    target_type: str  # HLS
    frag_duration: int
    frag_count: int
    playlist_name: str
    mtime: float


@dataclass(frozen=True, slots=True)
class Blob:
    """A finished body in tmp/: its checksums, ready to be committed."""

    temp_path: Path
    size: int
    md5: bytes
    crc64: int


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now (Linux sync_file_range), without
    waiting: the fsync at the end of a large body then finds most of it already written."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class BlobWriter:
    """Receives one body into tmp/: write() and finish() block, so run them in a worker thread.

    A writer created with `direct=True` writes whole buffers with O_DIRECT: the data goes from
    the buffer to the disk without a copy into the page cache, and leaves little for the final
    fsync. Such buffers must be page-aligned (mmap) and all but the last one full; the last one
    is padded to the block size and the file truncated back. Where the file system refuses
    O_DIRECT, writes are buffered.
    """

    def __init__(
        self, path: Path, fd: int, append_offset: int | None = None, direct: bool = False
    ) -> None:
        self.path = path
        self._fd = fd
        self._append_offset = append_offset
        self._direct = direct
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._crc = 0
        self.size = 0

    @classmethod
    def create(cls, tmp_dir: Path, direct: bool = False) -> BlobWriter:
        """A writer of a new temp file."""
        path = tmp_dir / uuid.uuid4().hex
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        if direct:
            try:
                return cls(path, os.open(path, flags | os.O_DIRECT, 0o600), direct=True)
            except OSError:
                path.unlink(missing_ok=True)
        return cls(path, os.open(path, flags, 0o600))

    @classmethod
    def for_append(cls, path: Path, offset: int) -> BlobWriter:
        """A writer that appends to the data file at `offset`, dropping anything beyond it.

        The checksums cover only the appended bytes; discard() truncates back to `offset`.
        """
        fd = os.open(path, os.O_WRONLY)
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        return cls(path, fd, append_offset=offset)

    def write(self, data: bytes | memoryview) -> None:
        self.hash_md5(memoryview(data))
        self.write_data([data])

    # The work of a write in two halves that may run at the same time in two threads (MD5 is
    # the slowest step of a PUT; hashlib and os.write both release the GIL).

    def hash_md5(self, data: bytes | memoryview) -> None:
        self._md5.update(data)

    def write_buffer(self, buffer: mmap.mmap, length: int) -> None:
        """CRC-64 and write the first `length` bytes of a page-aligned buffer."""
        view = memoryview(buffer)
        if self._direct:
            self._crc = crc64(view[:length], self._crc)
            padded = -(-length // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
            try:
                _write_all(self._fd, view[:padded])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._stop_direct(self.size)
                _write_all(self._fd, view[:length])
            else:
                if padded != length:  # the last buffer: later writes (if any) go buffered
                    self._stop_direct(self.size + length)
            self.size += length
        else:
            self.write_data([view[:length]])

    def _stop_direct(self, position: int) -> None:
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self._direct = False
        os.ftruncate(self._fd, position)
        os.lseek(self._fd, position, os.SEEK_SET)

    def write_data(self, pieces: Sequence[bytes | memoryview]) -> None:
        """CRC-64 and a buffered write; starts writeback early so that finish() has little left."""
        length = 0
        for piece in pieces:
            self._crc = crc64(piece, self._crc)
            length += len(piece)
        views = [memoryview(piece) for piece in pieces]
        while views:
            written = os.writev(self._fd, views)
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]
        start = self.size + (self._append_offset or 0)
        self.size += length
        if length >= WRITEBACK_CHUNK:
            start_writeback(self._fd, start, length)

    def finish(self) -> Blob:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        return Blob(self.path, self.size, self._md5.digest(), self._crc)

    def discard(self) -> None:
        if self._append_offset is not None and self._fd >= 0:
            os.ftruncate(self._fd, self._append_offset)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._append_offset is None:
            self.path.unlink(missing_ok=True)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def md5_digest(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def md5_etag(md5: bytes) -> str:
    return f'"{md5.hex().upper()}"'


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so raising the last
    code point (stepping over the surrogates, which UTF-8 cannot hold) gives the bound.
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = 0xE000 if last == 0xD7FF else last + 1
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


@dataclass(frozen=True, slots=True)
class ObjectSummary:
    """What a listing shows of an object."""

    key: str
    size: int
    etag: str
    mtime: float
    object_type: str
    storage_class: str


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One listing entry: an object summary, or a common prefix (summary is None)."""

    name: str
    summary: ObjectSummary | None


class Store:
    """The index and the data files under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.parts_dir = root / "parts"
        self.tmp_dir = root / "tmp"
        for directory in (self.data_dir, self.parts_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            root / "index.sqlite3", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a killed process (it is in the WAL file);
        # only a power cut can lose the latest commits, never consistency.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages: listings stay in memory
        self._db.execute("PRAGMA mmap_size=268435456")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(objects)")}
        if "segments" not in columns:  # an index written before multipart segments
            self._db.execute("ALTER TABLE objects ADD COLUMN segments TEXT")
        if "tags" not in columns:  # an index written before object tagging
            self._db.execute("ALTER TABLE objects ADD COLUMN tags TEXT")
        if "body_id" not in columns:  # an index written before small bodies were kept in it
            self._db.execute("ALTER TABLE objects ADD COLUMN body_id INTEGER")
        # Files that a response is still reading (path -> readers), and those among them that
        # are no longer indexed and go once the last reader is done.
        self._pins: dict[str, int] = {}
        self._doomed: set[str] = set()
        self._buckets: dict[str, BucketRecord] = {}
        self._remove_orphans()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """The statements of the block commit together, or not at all if it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- files ---------------------------------------------------------------------------

    def new_writer(self, direct: bool = False) -> BlobWriter:
        return BlobWriter.create(self.tmp_dir, direct)

    def _data_path(self, directory: Path, name: str) -> Path:
        return directory / name[:2] / name

    def object_path(self, data_file: str) -> Path:
        return self._data_path(self.data_dir, data_file)

    def part_path(self, data_file: str) -> Path:
        return self._data_path(self.parts_dir, data_file)

    def _install(self, temp_path: Path, directory: Path) -> str:
        """Rename a finished temp file into `directory` under a fresh id; returns the id."""
        name = uuid.uuid4().hex
        target = self._data_path(directory, name)
        target.parent.mkdir(exist_ok=True)
        os.rename(temp_path, target)
        return name

    def _relative(self, directory: Path, name: str) -> str:
        return f"{directory.name}/{name[:2]}/{name}"

    def object_files(self, record: ObjectRecord) -> list[str]:
        """The files holding the record's data, as paths relative to the root."""
        if record.data_file is not None:
            return [self._relative(self.data_dir, record.data_file)]
        return [path for path, _ in record.segments]

    def object_slices(
        self, record: ObjectRecord, offset: int, length: int
    ) -> list[tuple[str, int, int]]:
        """(absolute path, offset, length) of the files holding `length` bytes from `offset`
        (an object whose body is in the index has none: see read_body)."""
        assert record.body_id is None, "a body kept in the index has no files"
        if record.data_file is not None:
            pieces = [(self._relative(self.data_dir, record.data_file), record.size)]
        else:
            pieces = list(record.segments)
        slices = []
        start = 0
        for path, size in pieces:
            first = max(offset, start)
            last = min(offset + length, start + size)
            if first < last:
                slices.append((str(self.root / path), first - start, last - first))
            start += size
        return slices

    def pin(self, paths: list[str]) -> None:
        """Keep these files (see object_files) until unpin(), even if their object goes.

        Call it right after the lookup that found them, with no checkpoint in between.
        """
        for path in paths:
            self._pins[path] = self._pins.get(path, 0) + 1

    def unpin(self, paths: list[str]) -> None:
        for path in paths:
            count = self._pins[path] - 1
            if count:
                self._pins[path] = count
                continue
            del self._pins[path]
            if path in self._doomed:
                self._doomed.discard(path)
                (self.root / path).unlink(missing_ok=True)

    def discard_files(self, record: ObjectRecord) -> None:
        """Remove the files of a record that was never committed."""
        self._release(self.object_files(record))

    def _release(self, paths: list[str]) -> None:
        """Remove files no index entry names any more (later, if a response still reads them)."""
        for path in paths:
            if path in self._pins:
                self._doomed.add(path)
            else:
                (self.root / path).unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._db.execute(
            "DELETE FROM bodies WHERE id NOT IN"
            " (SELECT body_id FROM objects WHERE body_id IS NOT NULL)"
        )
        known: set[str] = set()
        for data_file, segments in self._db.execute("SELECT data_file, segments FROM objects"):
            if data_file is not None:
                known.add(self._relative(self.data_dir, data_file))
            if segments:
                known.update(path for path, _ in json.loads(segments))
        known.update(
            self._relative(self.parts_dir, row[0])
            for row in self._db.execute("SELECT data_file FROM parts")
        )
        removed = 0
        for directory in (self.data_dir, self.parts_dir):
            for path in directory.glob("*/*"):
                if str(path.relative_to(self.root)) not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed %d data files that no index entry named", removed)

    # --- buckets -------------------------------------------------------------------------

    def create_bucket(
        self, name: str, acl: str = "private", storage_class: str = "Standard"
    ) -> bool:
        """Create the bucket; False if it already exists."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO buckets (name, created, acl, storage_class) VALUES (?,?,?,?)",
            (name, time.time(), acl, storage_class),
        )
        self._buckets.pop(name, None)
        return cursor.rowcount == 1

    def get_bucket(self, name: str) -> BucketRecord | None:
        # Every request looks its bucket up; buckets change only through this class, which
        # forgets its copy of one whenever it writes it.
        if name in self._buckets:
            return self._buckets[name]
        row = self._db.execute(
            "SELECT name, created, acl, storage_class FROM buckets WHERE name = ?", (name,)
        ).fetchone()
        record = BucketRecord(*row) if row else None
        if record is not None:
            self._buckets[name] = record
        return record

    def set_bucket_acl(self, name: str, acl: str) -> None:
        self._db.execute("UPDATE buckets SET acl = ? WHERE name = ?", (acl, name))
        self._buckets.pop(name, None)

    def list_buckets(self, prefix: str, marker: str, limit: int) -> list[BucketRecord]:
        upper = prefix_upper_bound(prefix)
        bound_sql, bound = _below("name", upper)
        rows = self._db.execute(
            "SELECT name, created, acl, storage_class FROM buckets"  # noqa: S608
            f" WHERE name > ? AND name >= ? {bound_sql} ORDER BY name LIMIT ?",
            (marker, prefix, *bound, limit),
        ).fetchall()
        return [BucketRecord(*row) for row in rows]

    def bucket_is_empty(self, name: str) -> bool:
        has_object = self._db.execute(
            "SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)
        ).fetchone()
        has_upload = self._db.execute(
            "SELECT 1 FROM uploads WHERE bucket = ? LIMIT 1", (name,)
        ).fetchone()
        return has_object is None and has_upload is None

    def delete_bucket(self, name: str) -> None:
        """Delete the bucket and its live channels (they hold no data)."""
        with self._transaction():
            self._db.execute("DELETE FROM live_channels WHERE bucket = ?", (name,))
            self._db.execute("DELETE FROM buckets WHERE name = ?", (name,))
        self._buckets.pop(name, None)

    def bucket_usage(self, name: str) -> tuple[int, int]:
        """(object count, total bytes)."""
        count, total = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE bucket = ?", (name,)
        ).fetchone()
        return int(count), int(total)

    # --- objects -------------------------------------------------------------------------

    _OBJECT_COLUMNS = (
        "bucket, key, data_file, size, etag, crc64, mtime, object_type, headers, metadata,"
        " symlink_target, acl, storage_class, segments, tags, body_id"
    )

    @staticmethod
    def _object_from_row(row: tuple[object, ...]) -> ObjectRecord:
        (
            bucket,
            key,
            data_file,
            size,
            etag,
            crc,
            mtime,
            object_type,
            headers,
            metadata,
            symlink_target,
            acl,
            storage_class,
            segments,
            tags,
            body_id,
        ) = row
        return ObjectRecord(
            bucket=str(bucket),
            key=str(key),
            data_file=None if data_file is None else str(data_file),
            size=int(size),  # type: ignore[call-overload]
            etag=str(etag),
            crc64=int(str(crc)),
            mtime=float(mtime),  # type: ignore[arg-type]
            object_type=str(object_type),
            headers=json.loads(str(headers)),
            metadata=json.loads(str(metadata)),
            symlink_target=None if symlink_target is None else str(symlink_target),
            acl=str(acl),
            storage_class=str(storage_class),
            segments=tuple((str(path), int(size)) for path, size in json.loads(str(segments)))
            if segments
            else (),
            tags=json.loads(str(tags)) if tags else {},
            body_id=None if body_id is None else int(body_id),  # type: ignore[call-overload]
        )

    def get_object(self, bucket: str, key: str) -> ObjectRecord | None:
        row = self._db.execute(
            f"SELECT {self._OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",  # noqa: S608
            (bucket, key),
        ).fetchone()
        return self._object_from_row(row) if row else None

    def install_object_file(self, temp_path: Path) -> str:
        """Rename a finished temp file into data/ (blocking: run in a worker thread)."""
        return self._install(temp_path, self.data_dir)

    def read_body(self, record: ObjectRecord) -> bytes:
        """The data of an object whose body is kept in the index."""
        assert record.body_id is not None
        row = self._db.execute("SELECT data FROM bodies WHERE id = ?", (record.body_id,)).fetchone()
        if row is None:
            raise LookupError(f"{record.bucket}/{record.key}: body {record.body_id} is missing")
        return bytes(row[0])

    def _replace_object(self, record: ObjectRecord) -> ObjectRecord | None:
        """Write the row (inside a transaction, when the replaced version's body row goes)."""
        previous = self.get_object(record.bucket, record.key)
        if previous is not None and previous.body_id not in (None, record.body_id):
            self._db.execute("DELETE FROM bodies WHERE id = ?", (previous.body_id,))
        self._db.execute(
            f"INSERT OR REPLACE INTO objects ({self._OBJECT_COLUMNS})"  # noqa: S608
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.bucket,
                record.key,
                record.data_file,
                record.size,
                record.etag,
                str(record.crc64),
                record.mtime,
                record.object_type,
                json.dumps(record.headers),
                json.dumps(record.metadata),
                record.symlink_target,
                record.acl,
                record.storage_class,
                json.dumps(record.segments) if record.segments else None,
                json.dumps(record.tags) if record.tags else None,
                record.body_id,
            ),
        )
        return previous

    def _release_replaced(self, previous: ObjectRecord | None, record: ObjectRecord) -> None:
        if previous is not None:
            kept = set(self.object_files(record))
            self._release([path for path in self.object_files(previous) if path not in kept])

    def commit_object(
        self, record: ObjectRecord, inline: bytes | None = None
    ) -> ObjectRecord | None:
        """Make `record` the current version of its key; returns the version it replaced.
        `inline`: the data of a record with no files, kept in the index (see the module's doc),
        committed in the same transaction.

        The replaced version's files are removed after the commit.
        """
        with self._transaction():
            if inline is not None:
                assert record.data_file is None and not record.segments
                cursor = self._db.execute("INSERT INTO bodies (data) VALUES (?)", (inline,))
                record = dataclasses.replace(record, body_id=cursor.lastrowid)
            previous = self._replace_object(record)
        self._release_replaced(previous, record)
        return previous

    def commit_objects(self, records: Iterable[ObjectRecord]) -> int:
        """Commit many records in one transaction (seeding a large bucket: a million objects
        take seconds, not the hours of a commit each); -> how many. Replaced versions' files are
        removed after the commit, as by :meth:`commit_object`."""
        replaced: list[tuple[ObjectRecord, ObjectRecord]] = []
        count = 0
        with self._transaction():
            for record in records:
                previous = self._replace_object(record)
                if previous is not None:
                    replaced.append((previous, record))
                count += 1
        for previous, record in replaced:
            self._release_replaced(previous, record)
        return count

    def delete_object(self, bucket: str, key: str) -> bool:
        previous = self.get_object(bucket, key)
        if previous is None:
            return False
        with self._transaction():
            self._db.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
            if previous.body_id is not None:
                self._db.execute("DELETE FROM bodies WHERE id = ?", (previous.body_id,))
        self._release(self.object_files(previous))
        return True

    def list_objects(
        self, bucket: str, prefix: str, delimiter: str, after: str, limit: int
    ) -> tuple[list[ListEntry], bool]:
        """Up to `limit` entries (keys and common prefixes) after `after`, and is-truncated.

        Common prefixes are collapsed in SQL: after emitting one, the scan jumps past every key
        that starts with it, so a page costs O(page) index reads however large the prefixes are.
        """
        upper = prefix_upper_bound(prefix)
        bound_sql, bound = _below("key", upper)
        entries: list[ListEntry] = []
        lower, inclusive = (after, False) if after >= prefix else (prefix, True)
        while True:
            want = limit + 1 - len(entries)
            lower_op = ">=" if inclusive else ">"
            rows = self._db.execute(
                "SELECT key, size, etag, mtime, object_type, storage_class FROM objects"  # noqa: S608
                f" WHERE bucket = ? AND key {lower_op} ? {bound_sql} ORDER BY key LIMIT ?",
                (bucket, lower, *bound, want),
            )
            # Iterated lazily: after a jump the rest of this batch is never read.
            jumped = False
            seen = 0
            for row in rows:
                seen += 1
                key = row[0]
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    entries.append(ListEntry(key, ObjectSummary(*row)))
                    lower, inclusive = key, False
                else:
                    common = key[: cut + len(delimiter)]
                    if common > after:
                        entries.append(ListEntry(common, None))
                    skip_to = prefix_upper_bound(common)
                    if skip_to is None:
                        return entries[:limit], False
                    lower, inclusive, jumped = skip_to, True, True
                if len(entries) > limit:
                    return entries[:limit], True
                if jumped:
                    break
            if not jumped and seen < want:
                return entries, False

    # --- live channels -------------------------------------------------------------------

    _CHANNEL_COLUMNS = (
        "bucket, name, description, status, target_type, frag_duration, frag_count,"
        " playlist_name, mtime"
    )

    def put_live_channel(self, channel: LiveChannelRecord) -> None:
        """Create the channel, or replace its configuration."""
        self._db.execute(
            f"INSERT OR REPLACE INTO live_channels ({self._CHANNEL_COLUMNS})"  # noqa: S608
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (
                channel.bucket,
                channel.name,
                channel.description,
                channel.status,
                channel.target_type,
                channel.frag_duration,
                channel.frag_count,
                channel.playlist_name,
                channel.mtime,
            ),
        )

    def get_live_channel(self, bucket: str, name: str) -> LiveChannelRecord | None:
        row = self._db.execute(
            f"SELECT {self._CHANNEL_COLUMNS} FROM live_channels"  # noqa: S608
            " WHERE bucket = ? AND name = ?",
            (bucket, name),
        ).fetchone()
        return LiveChannelRecord(*row) if row else None

    def list_live_channels(
        self, bucket: str, prefix: str, marker: str, limit: int
    ) -> list[LiveChannelRecord]:
        """Up to `limit` channels whose names start with `prefix` and sort after `marker`."""
        bound_sql, bound = _below("name", prefix_upper_bound(prefix))
        rows = self._db.execute(
            f"SELECT {self._CHANNEL_COLUMNS} FROM live_channels"  # noqa: S608
            f" WHERE bucket = ? AND name > ? AND name >= ? {bound_sql} ORDER BY name LIMIT ?",
            (bucket, marker, prefix, *bound, limit),
        ).fetchall()
        return [LiveChannelRecord(*row) for row in rows]

    def delete_live_channel(self, bucket: str, name: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM live_channels WHERE bucket = ? AND name = ?", (bucket, name)
        )
        return cursor.rowcount == 1

    # --- appends -------------------------------------------------------------------------

    def new_append_file(self) -> str:
        name = uuid.uuid4().hex
        path = self.object_path(name)
        path.parent.mkdir(exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return name

    # --- multipart -----------------------------------------------------------------------

    def create_upload(
        self, bucket: str, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> UploadRecord:
        # Upload ids sort by creation time, so listings show them in initiation order.
        upload_id = f"{time.time_ns():x}".upper() + uuid.uuid4().hex.upper()[:16]
        record = UploadRecord(bucket, key, upload_id, time.time(), headers, metadata)
        self._db.execute(
            "INSERT INTO uploads (bucket, key, upload_id, initiated, headers, metadata)"
            " VALUES (?,?,?,?,?,?)",
            (bucket, key, upload_id, record.initiated, json.dumps(headers), json.dumps(metadata)),
        )
        return record

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = self._db.execute(
            "SELECT bucket, key, upload_id, initiated, headers, metadata FROM uploads"
            " WHERE upload_id = ?",
            (upload_id,),
        ).fetchone()
        if row is None:
            return None
        return UploadRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]))

    def install_part_file(self, temp_path: Path) -> str:
        return self._install(temp_path, self.parts_dir)

    def commit_part(self, part: PartRecord) -> None:
        previous = self._db.execute(
            "SELECT data_file FROM parts WHERE upload_id = ? AND part_number = ?",
            (part.upload_id, part.part_number),
        ).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO parts"
            " (upload_id, part_number, data_file, size, etag, crc64, mtime)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                part.upload_id,
                part.part_number,
                part.data_file,
                part.size,
                part.etag,
                str(part.crc64),
                part.mtime,
            ),
        )
        if previous is not None and previous[0] != part.data_file:
            self._release([self._relative(self.parts_dir, previous[0])])

    def list_parts(self, upload_id: str, after_part: int, limit: int) -> list[PartRecord]:
        rows = self._db.execute(
            "SELECT upload_id, part_number, data_file, size, etag, crc64, mtime FROM parts"
            " WHERE upload_id = ? AND part_number > ? ORDER BY part_number LIMIT ?",
            (upload_id, after_part, limit),
        ).fetchall()
        return [
            PartRecord(row[0], row[1], row[2], row[3], row[4], int(row[5]), row[6]) for row in rows
        ]

    def all_parts(self, upload_id: str) -> dict[int, PartRecord]:
        return {part.part_number: part for part in self.list_parts(upload_id, 0, 1 << 31)}

    def list_uploads(
        self,
        bucket: str,
        prefix: str,
        delimiter: str,
        key_marker: str,
        upload_id_marker: str,
        limit: int,
    ) -> tuple[list[UploadRecord | str], bool]:
        """Uploads (and common prefixes) after the markers, ordered by key then upload id."""
        upper = prefix_upper_bound(prefix)
        bound_sql, bound = _below("key", upper)
        rows: Iterator[tuple[str, str, str, float, str, str]] = self._db.execute(
            "SELECT bucket, key, upload_id, initiated, headers, metadata FROM uploads"  # noqa: S608
            f" WHERE bucket = ? AND key >= ? {bound_sql}"
            " AND (key > ? OR (key = ? AND ? != '' AND upload_id > ?))"
            " ORDER BY key, upload_id",
            (bucket, prefix, *bound, key_marker, key_marker, upload_id_marker, upload_id_marker),
        )
        entries: list[UploadRecord | str] = []
        seen_prefixes: set[str] = set()
        for row in rows:
            key = row[1]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if common in seen_prefixes or common <= key_marker:
                    continue
                seen_prefixes.add(common)
                entry: UploadRecord | str = common
            else:
                entry = UploadRecord(
                    row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5])
                )
            if len(entries) == limit:
                return entries, True
            entries.append(entry)
        return entries, False

    def delete_upload(self, upload_id: str) -> None:
        files = [
            self._relative(self.parts_dir, row[0])
            for row in self._db.execute(
                "SELECT data_file FROM parts WHERE upload_id = ?", (upload_id,)
            )
        ]
        self._db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        self._db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        self._release(files)

    def part_segment(self, part: PartRecord) -> tuple[str, int]:
        return (self._relative(self.parts_dir, part.data_file), part.size)

    def complete_upload(self, upload_id: str, record: ObjectRecord) -> ObjectRecord | None:
        """In one transaction: the object (whose segments are part files of the upload) is
        committed and the upload is gone. No data moves: the chosen part files become the
        object's; the other parts and the replaced version's files are removed."""
        files = [
            self._relative(self.parts_dir, row[0])
            for row in self._db.execute(
                "SELECT data_file FROM parts WHERE upload_id = ?", (upload_id,)
            )
        ]
        with self._transaction():
            previous = self._replace_object(record)
            self._db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            self._db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        self._release_replaced(previous, record)
        chosen = set(self.object_files(record))
        self._release([path for path in files if path not in chosen])
        return previous

    def link_object_files(
        self, record: ObjectRecord
    ) -> tuple[str | None, tuple[tuple[str, int], ...]]:
        """New names (hard links) for an immutable object's files: (data_file, segments) of a
        copy that costs no data movement. Raises OSError where links are not possible."""
        if record.data_file is not None:
            name = uuid.uuid4().hex
            target = self.object_path(name)
            target.parent.mkdir(exist_ok=True)
            os.link(self.object_path(record.data_file), target)
            return name, ()
        segments = []
        for path, size in record.segments:
            name = uuid.uuid4().hex
            target = self.object_path(name)
            target.parent.mkdir(exist_ok=True)
            os.link(self.root / path, target)
            segments.append((self._relative(self.data_dir, name), size))
        return None, tuple(segments)

    def copy_object_file(self, record: ObjectRecord) -> Path:
        """A fsynced temp copy of an object's data, in one file. Blocking."""
        temp_path = self.tmp_dir / uuid.uuid4().hex
        out_fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for path, offset, length in self.object_slices(record, 0, record.size):
                in_fd = os.open(path, os.O_RDONLY)
                try:
                    _copy_fd(in_fd, out_fd, offset, length)
                finally:
                    os.close(in_fd)
            os.fsync(out_fd)
        except BaseException:
            os.close(out_fd)
            temp_path.unlink(missing_ok=True)
            raise
        os.close(out_fd)
        return temp_path


def copy_slices_to_writer(slices: list[tuple[str, int, int]], writer: BlobWriter) -> None:
    """Copy file slices (see Store.object_slices) into `writer`, hashing them. Blocking."""
    for path, start, length in slices:
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, end = start, start + length
            while offset < end:
                chunk = os.pread(fd, min(end - offset, COPY_CHUNK), offset)
                if not chunk:
                    raise OSError("source file shorter than its index entry")
                writer.write(chunk)
                offset += len(chunk)
        finally:
            os.close(fd)


def _below(column: str, upper: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL (and parameter) for `column < upper`; nothing without a bound. Spelled out rather
    than `(? IS NULL OR col < ?)`, which keeps SQLite from using the bound to end its scan."""
    if upper is None:
        return "", ()
    return f"AND {column} < ?", (upper,)


def _copy_fd(in_fd: int, out_fd: int, offset: int, length: int) -> None:
    """Copy `length` bytes of `in_fd` from `offset` to the current end of `out_fd`."""
    end = offset + length
    while offset < end:
        try:
            copied = os.copy_file_range(in_fd, out_fd, min(end - offset, 1 << 30), offset)
        except OSError:
            copied = 0
        if copied == 0:
            chunk = os.pread(in_fd, min(end - offset, COPY_CHUNK), offset)
            if not chunk:
                raise OSError("source file shorter than its index entry")
            view = memoryview(chunk)
            while view:
                view = view[os.write(out_fd, view) :]
            copied = len(chunk)
        offset += copied
