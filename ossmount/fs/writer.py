"""The write path: staging files, uploads at flush, the crash journal and recovery.

One :class:`WriteStaging` per mount owns the state directory (``journal.sqlite``, ``staging/``,
``downloads/``), the disk budget, the upload concurrency limit and the background retry task.
Each object being written has one :class:`StagedFile`, shared by every handle of its inode.

A staged file is in one of three modes:

``stream``
    A new (or truncated) file written from the start. Its bytes live in part files of
    ``part_size`` (``<id>.part<N>``). When part N >= 2 fills, it is sent with UploadPart at once
    (at most ``upload_concurrency`` parts in flight per file and across the mount; a writer
    waits for a free slot). Its file stays on disk while the staging budget has room; uploaded
    part files are dropped, oldest first, when a reservation needs the room, so a huge
    sequential write needs no more disk than the budget. Part 1 is sent as well but its file
    is kept until the end, so that a program that rewrites a header at the start of the file
    (zip, mp4 muxers) still can (part 1 is then sent again at flush). close() sends the last
    part and completes the upload. Writes into part 1 or the last part are made in place. A
    write anywhere else (random writes, a truncate) turns the file into a ``local`` one while
    every part is still on disk; once a part was dropped, a write or read into it fails with
    :class:`StreamedRangeGoneError` (EIO), as out-of-order writes do in mountpoint-s3.
``local``
    A full staging file ``<id>.data``. For an existing object it is first a complete copy made
    by the checkpointed downloader (``transfer.download_file``; an interrupted copy resumes),
    and the changed byte ranges are tracked. At flush a file below ``multipart_threshold`` is
    one PutObject; above it a multipart upload whose unchanged runs of >= 100 KB are copied
    server-side from the base object (UploadPartCopy, If-Match on its ETag; a 412 sends those
    bytes from the local copy instead), and the rest is sent from the staging file.
``remote``
    Nothing staged: an existing object opened without O_TRUNC and not written yet, or a
    streamed file after its upload completed. ``read`` returns None: the reader serves the range
    from the object (``remote_etag``). The first write or truncate fetches the full copy.

Every upload is checked by CRC-64: PutObject and each part by the client, the completed object
by combining the parts' CRCs (for copied parts, the CRC of the same bytes of the local copy).

Journal and crash (see journal.py): a file is ``dirty`` while written, ``flushing`` from the
moment flush() begins until the upload is confirmed, ``clean`` after. The next start (mount or
``ossmount recover``) finishes ``flushing`` files (resuming the multipart upload with ListParts)
and discards the others, aborting their multipart uploads, so a file that was never closed is
never published: the old object stays.

A flush that fails after the client's retries raises :class:`UploadFailedError` (EIO) for
transient failures, or the OssError itself (EACCES, EEXIST ...); the data stays staged, the file
stays ``flushing`` and the task started by :meth:`WriteStaging.run` retries it with growing
delays, even after the last handle is closed, until it succeeds.

How the FUSE operations use it (keys are full object keys; OSError subclasses raised here carry
their errno: ENOSPC, EIO, EBUSY):

- mount: ``WriteStaging(...)`` before ``pyfuse3.init`` (it loads the journal: pending keys read
  as their staged data at once), ``await nursery.start(staging.run)``, ``recover()`` in the
  background, ``staging.close()`` after the nursery ended.
- create: ``staging.open(key, None, truncate=True, exclusive=O_EXCL)``, then ``set_metadata``
  with mode/uid/gid. open for writing: ``staging.open(key, head_object(key), truncate=O_TRUNC,
  append=O_APPEND)``. One StagedFile per key, shared by every handle; one ``release()`` per open.
- write: ``staged.write(off, buf)``; getattr of a key with ``staging.staged(key)``: ``size``.
- read: ``staged.read(off, size)``; None means "read the object at ``remote_etag``".
- flush and fsync of a handle opened for writing: ``staged.flush()``, then the inode takes
  ``size`` and ``remote_etag``. (Not for read-only handles: that would publish another handle's
  unfinished writes.) release: ``staged.release()``.
- truncate / chmod / chown / utimens: ``staged.truncate(size)`` / ``staged.set_metadata(...)``
  on the open StagedFile, or on one opened for the call and flushed and released at once
  (metadata alone is a CopyObject onto itself).
- unlink: if the file is open, ``staged.make_private()`` first; then the DeleteObject inside
  ``async with staging.removing(key)``. rename: ``rename_file`` / ``rename_directory``
  (journalled; they flush staged data first, detach a replaced target through ``removing`` and
  move the staged state).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import posixpath
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import trio

from ossmount.fs.attrs import format_time_ns, native_symlink_path
from ossmount.fs.journal import (
    MODE_LOCAL,
    MODE_REMOTE,
    MODE_STREAM,
    STATE_CLEAN,
    STATE_DIRTY,
    STATE_FLUSHING,
    Journal,
    JournalEntry,
    PlannedPart,
)
from ossmount.fs.staging import DiskBudget, RangeSet, plan_parts
from ossmount.oss import transfer
from ossmount.oss.client import FileSlice, OssClient
from ossmount.oss.crc64 import Crc64, crc64, crc64_combine
from ossmount.oss.errors import (
    FileAlreadyExists,
    IntegrityError,
    NoSuchKey,
    NoSuchUpload,
    NotFound,
    OssError,
    PreconditionFailed,
    first_failure,
    is_transient,
)
from ossmount.oss.model import ObjectInfo, PartInfo, PutResult

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# CopyObject handles objects up to 1 GB; above, a metadata change is a multipart copy.
COPY_OBJECT_LIMIT = 1024 * MiB
FORBID_OVERWRITE_HEADER = {"x-oss-forbid-overwrite": "true"}
# Window in which an upload initiated just before a crash is recognised as ours.
UPLOAD_INTENT_SLACK_S = 300.0
READ_CHUNK = 4 * MiB
# ossfs marks a directory "d/" with an object "d_$folder$" too.
FOLDER_MARKER_SUFFIX = "_$folder$"
# Keys moved at once by a directory rename.
RENAME_CONCURRENCY = 16
ABORT_TIMEOUT_S = 10.0
# Bodies up to this size are read into memory before a PUT (cheaper than threaded file reads).
SMALL_BODY = 1 * MiB


class StreamedRangeGoneError(OSError):
    """A write or read below the last part of a streamed new file, in a part already uploaded
    and dropped from the staging disk (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class UploadFailedError(OSError):
    """An upload failed after the client's retries (EIO); the data stays staged and the
    background task retries it. ``__cause__`` is the last OssError."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class StateDirBusyError(OSError):
    """Another process (a mount or `ossmount recover`) holds the state directory."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EBUSY, message)


def default_state_dir(bucket: str, prefix: str) -> Path:
    """$XDG_CACHE_HOME/ossmount/<bucket>-<hash of bucket and prefix> (~/.cache/ossmount/...)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    digest = hashlib.sha256(f"{bucket}\0{prefix}".encode()).hexdigest()[:16]
    return Path(cache) / "ossmount" / f"{bucket}-{digest}"


@dataclass
class RecoveryReport:
    """What :meth:`WriteStaging.recover` did."""

    completed: list[str] = field(default_factory=list)  # uploads finished, by key
    discarded: list[str] = field(default_factory=list)  # staged files never closed, by key
    aborted_uploads: list[str] = field(default_factory=list)  # "key (upload id)"
    renames: list[str] = field(default_factory=list)  # directory renames finished
    failed: list[str] = field(default_factory=list)  # "key: reason"; still staged
    # "key: reason -> directory": could never be finished; the data was moved aside.
    quarantined: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per action, for the log and `ossmount recover`."""
        return (
            [f"completed upload of {key}" for key in self.completed]
            + [f"discarded unclosed writes to {key} (old object kept)" for key in self.discarded]
            + [f"aborted multipart upload {item}" for item in self.aborted_uploads]
            + [f"finished directory rename {item}" for item in self.renames]
            + [f"FAILED to finish {item} (still staged, will retry)" for item in self.failed]
            + [
                f"QUARANTINED {item} (not uploaded; the data is kept there)"
                for item in self.quarantined
            ]
        )

    @property
    def ok(self) -> bool:
        return not self.failed and not self.quarantined


def moved_symlink_target(old_key: str, new_key: str, target_key: str) -> str:
    """The target key of an OSS symlink moved from ``old_key`` to ``new_key`` such that it
    reads back (relative to its directory) as the same POSIX path text, as a moved symlink
    does in a file system; the old target key where that path would leave the bucket."""
    text = native_symlink_path(old_key, target_key)
    moved = posixpath.normpath(posixpath.join(posixpath.dirname(new_key), text))
    if moved in (".", "..") or moved.startswith("../"):
        return target_key
    return moved


def _pread_exact(path: Path, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset``; bytes past the end of the file read as zeros."""
    with open(path, "rb", buffering=0) as file:
        data = os.pread(file.fileno(), size, offset)
    if len(data) < size:
        data += bytes(size - len(data))
    return data


def _crc_of_file_range(path: Path, offset: int, size: int) -> int:
    crc = 0
    with open(path, "rb", buffering=0) as file:
        fd = file.fileno()
        position = offset
        end = offset + size
        while position < end:
            chunk = os.pread(fd, min(READ_CHUNK, end - position), position)
            if not chunk:
                # A sparse tail past the file's end reads as zeros.
                chunk = bytes(min(READ_CHUNK, end - position))
            crc = crc64(chunk, crc)
            position += len(chunk)
    return crc


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class StagedFile:
    """The staged state of one object being written, shared by all handles of its inode.

    ``size`` is the file's current size as the writer sees it (use it for getattr while the file
    is staged). All methods may raise OssError (errno from the error table) or OSError
    (ENOSPC for a full staging budget, EIO for :class:`StreamedRangeGoneError`).
    """

    def __init__(
        self,
        staging: WriteStaging,
        entry: JournalEntry,
        *,
        remote_etag: str | None,
        dirty: bool,
    ) -> None:
        self._staging = staging
        self._file_id = entry.file_id
        self.key = entry.key
        self.size = entry.size
        self._mode = entry.mode
        self._state = entry.state
        self._base_key = entry.base_key
        self._base_etag = entry.base_etag
        self._base_size = entry.base_size
        self._base_crc64 = entry.base_crc64
        self._upload_id = entry.upload_id
        self._plan = entry.plan
        self._metadata: dict[str, str] = dict(entry.metadata)
        self._forbid_overwrite = entry.forbid_overwrite
        self.remote_etag = remote_etag
        # Bytes of the local staging file that differ from the base object.
        self._changed = RangeSet()
        # Local mode: holes of the staging file (truncate up, writes past the end), which take
        # no disk and so no budget until written into.
        self._holes = RangeSet()
        # True while the staged data or metadata differ from the object in OSS.
        self._dirty = dirty
        self._handles = 0
        self._unlinked = False
        self._lock = trio.Lock()
        # Stream mode: bytes below _stream_base are in sealed parts (1 .. _stream_base/part_size).
        # The part size of this file's stream, fixed when it was opened (journalled, so that a
        # later start with another part_size option still numbers the part files right).
        self._part_size = entry.part_size or staging.part_size
        self._stream_base = (entry.size // self._part_size) * self._part_size
        self._uploaded_parts: dict[int, PartInfo] = {}
        self._failed_parts: dict[int, BaseException] = {}
        # CRC-64 of a streamed file written only by appends (None once any other write came):
        # the end-to-end check of the completed object, without combining every part's CRC.
        self._append_crc: Crc64 | None = Crc64() if entry.size == 0 else None
        # Per part: CRC-64 of the bytes written into it, while they were appends.
        self._part_crcs: dict[int, Crc64] = {}
        # Writes into each part so far: an upload that raced a rewrite is not recorded.
        self._part_versions: dict[int, int] = {}
        self._parts_in_flight = 0
        # The highest part file this process made for this file, when it knows every one it
        # made (a file opened here, not recovered): deleting them then needs no directory scan.
        self._part_files_made: int | None = None
        self._parts_changed = trio.Event()
        self._upload_init_lock = trio.Lock()
        # Background retry of a failed flush.
        self._retry_due_s: float | None = None
        self._retry_delay_s = staging.retry_initial_s
        self._retrying = False
        self.last_error: BaseException | None = None
        # Set for files rebuilt from the journal at start: their parts are checked by ListParts.
        self._resumed = False
        # The metadata the current multipart upload was initiated with (None: not known).
        self._upload_metadata: dict[str, str] | None = None
        # When the data last changed, and whether mtime was set explicitly since (utimens).
        self._data_changed_ns: int | None = None
        self._mtime_explicit = False

    def __repr__(self) -> str:
        return f"StagedFile({self.key!r}, mode={self._mode}, size={self.size}, dirty={self._dirty})"

    # --- paths and accounting ------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True while the staged data or metadata are not (yet) in OSS."""
        return self._dirty

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def open_handles(self) -> int:
        """How many opens of this file are not released yet."""
        return self._handles

    @property
    def upload_state(self) -> str:
        """Where the data of a dirty file stands, for `ossmount status`: "failed, retrying"
        (an upload failed, ``last_error`` says why, the background retries it), "uploading"
        (a flush or close is sending it) or "staged" (written, not flushed yet)."""
        if self.last_error is not None:
            return "failed, retrying"
        return "uploading" if self._state == STATE_FLUSHING else "staged"

    @property
    def retry_due_s(self) -> float | None:
        """trio time of the next background retry of a failed upload (None: none planned)."""
        return self._retry_due_s

    @property
    def remote_crc64(self) -> int | None:
        """CRC-64 of the object at ``remote_etag`` when known (after an upload), else None."""
        return None if self._dirty else self._base_crc64

    @property
    def metadata(self) -> Mapping[str, str]:
        return dict(self._metadata)

    def _data_path(self) -> Path:
        return self._staging.staging_dir / f"{self._file_id}.data"

    def _part_path(self, number: int) -> Path:
        return self._staging.staging_dir / f"{self._file_id}.part{number}"

    def _part_number_at(self, offset: int) -> int:
        return offset // self._part_size + 1

    def _journal(self, **fields: object) -> None:
        self._staging.journal.update(self._file_id, **fields)

    def _data_changed(self) -> None:
        self._data_changed_ns = time.time_ns()
        self._mtime_explicit = False
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        """Data changed: a crash from now on discards the staged file (old object stays), and a
        planned upload of older content is no longer valid."""
        self._dirty = True
        if self._state != STATE_DIRTY:
            self._state = STATE_DIRTY
            self._journal(state=STATE_DIRTY)
        if self._plan is not None:
            self._plan = None
            self._journal(plan=None)

    # --- public operations ---------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` (past the end leaves a hole of zeros); -> bytes written."""
        if not data:
            return 0
        async with self._lock:
            if self._mode == MODE_REMOTE and self.size == 0:
                # An empty object (such as one a close() right after create published, as dd
                # does with its dup2): nothing to fetch, stream again from the start.
                await self._reset_to_empty()
            elif self._mode == MODE_REMOTE:
                await self._make_local()
            if self._mode == MODE_STREAM:
                in_place = offset >= self._stream_base or self._in_part_one(offset, len(data))
                # A hole over a part boundary looks like random writes: go local while possible.
                hole_across_parts = offset > self.size and self._part_number_at(
                    offset
                ) != self._part_number_at(self.size)
                if hole_across_parts or not in_place:
                    converted = await self._stream_to_local()
                    if not converted and not in_place:
                        raise StreamedRangeGoneError(
                            f"{self.key}: write at {offset} into a part of a streamed new file "
                            "that was already uploaded; only part 1 and the last part can be "
                            "rewritten once the file is past its second part"
                        )
                if self._mode == MODE_STREAM:
                    await self._stream_write(offset, data)
                    return len(data)
            await self._local_write(offset, data)
            return len(data)

    async def read(self, offset: int, size: int) -> bytes | None:
        """Read-your-writes: the staged bytes of [offset, offset+size) (short at the end of the
        file), or None when nothing is staged (mode remote): read the object ``key`` at ETag
        ``remote_etag`` instead."""
        # Under the lock: a concurrent write may move or drop staging files (mode changes).
        async with self._lock:
            return await self._read_locked(offset, size)

    async def _read_locked(self, offset: int, size: int) -> bytes | None:
        if self._mode == MODE_REMOTE:
            return None
        end = min(offset + size, self.size)
        if end <= offset:
            return b""
        if self._mode == MODE_LOCAL:
            return await trio.to_thread.run_sync(
                _pread_exact, self._data_path(), offset, end - offset
            )
        pieces = []
        position = offset
        while position < end:
            number = self._part_number_at(position)
            part_start = (number - 1) * self._part_size
            part_end = min(part_start + self._part_size, end)
            path = self._part_path(number)
            if not path.exists():
                raise StreamedRangeGoneError(
                    f"{self.key}: read at {position} of a streamed new file, in a part that was "
                    "already uploaded"
                )
            pieces.append(
                await trio.to_thread.run_sync(
                    _pread_exact, path, position - part_start, part_end - position
                )
            )
            position = part_end
        return b"".join(pieces)

    async def truncate(self, size: int) -> None:
        """Set the file's size (cut, or extend with zeros)."""
        async with self._lock:
            if size == self.size and self._mode != MODE_REMOTE:
                return
            if size == 0:
                await self._reset_to_empty()
                return
            if self._mode == MODE_REMOTE:
                if size == self.size:
                    return
                await self._make_local()
            if self._mode == MODE_STREAM and not await self._stream_to_local():
                raise StreamedRangeGoneError(
                    f"{self.key}: truncate to {size} of a streamed new file whose earlier parts "
                    "were already uploaded"
                )
            await self._local_truncate(size)

    def set_metadata(self, metadata: Mapping[str, str]) -> None:
        """Set the x-oss-meta-* values (names without the prefix; ossfs's mode/uid/gid/mtime)
        that the next upload carries; a flush with no data change sends them alone."""
        updated = {**self._metadata, **metadata}
        if "mtime" in metadata:
            self._mtime_explicit = True
        if updated == self._metadata:
            return
        self._metadata = updated
        self._journal(metadata=updated)
        self._mark_dirty()

    async def flush(self) -> None:
        """Upload if dirty; return only once OSS has it, CRC-64 checked.

        Raises the OssError when the upload fails after the client's retries (EIO, or EEXIST for
        an O_EXCL file that appeared meanwhile); the data stays staged and the background task
        retries. A file unlinked while open is never uploaded.
        """
        async with self._lock:
            await self._flush_locked()

    async def release(self) -> None:
        """The last of the handles that opened this file was closed (call once per open)."""
        await self._staging._release(self)

    async def make_private(self) -> None:
        """Put every byte of the file on the staging disk (fetching the object if nothing is
        staged), so that its open handles can go on without the object: before it is deleted
        or replaced by a rename."""
        async with self._lock:
            await self._make_private_locked()

    async def _make_private_locked(self) -> None:
        if self._mode == MODE_REMOTE:
            await self._make_local()
        if self._mode == MODE_STREAM and not await self._stream_to_local():
            # Parts already left the disk: what is still staged is all that can be read.
            log.warning(
                "%s: unlinked or replaced while open; its earlier parts are no longer readable",
                self.key,
            )

    async def _detach_locked(self) -> None:
        """The file leaves its key for good (unlinked, or replaced by a rename): never uploaded
        again; open handles go on with its local copy; dropped at the last release."""
        self._unlinked = True
        self._dirty = False
        self._retry_due_s = None
        self._state = STATE_DIRTY
        self._journal(state=STATE_DIRTY, plan=None)
        await self._abort_upload()

    # --- stream mode ---------------------------------------------------------------------

    def _in_part_one(self, offset: int, length: int) -> bool:
        return offset + length <= self._part_size

    async def _stream_write(self, offset: int, data: bytes) -> None:
        part_size = self._part_size
        end = offset + len(data)
        if offset > self.size:
            # A hole: written as zeros, keeping the parts contiguous.
            await self._stream_write(self.size, bytes(offset - self.size))
        grow = max(0, end - self.size)
        await self._staging.budget.reserve(grow)
        if self._append_crc is not None:
            if offset == self.size:
                self._append_crc.update(data)
            else:
                self._append_crc = None
        try:
            position = offset
            view = memoryview(data)
            while view:
                number = self._part_number_at(position)
                part_start = (number - 1) * part_size
                take = min(len(view), part_start + part_size - position)
                self._part_versions[number] = self._part_versions.get(number, 0) + 1
                self._track_part_crc(number, position - part_start, view[:take])
                if self._uploaded_parts.pop(number, None) is not None:
                    # Sent by an earlier flush (part 1 or the last part): it must go again.
                    self._staging.journal.forget_part(self._file_id, number)
                if self._part_files_made is not None:
                    self._part_files_made = max(self._part_files_made, number)
                fd = os.open(self._part_path(number), os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    _pwrite_all(fd, view[:take], position - part_start)
                finally:
                    os.close(fd)
                view = view[take:]
                position += take
                self.size = max(self.size, position)
        except BaseException:
            self._staging.budget.release(grow)
            raise
        self._data_changed()
        # Seal every part that is now full.
        while self.size >= self._stream_base + part_size:
            number = self._part_number_at(self._stream_base)
            self._stream_base += part_size
            if number >= 2:
                await self._start_part_upload(number)
            if number == 2 and 1 not in self._uploaded_parts:
                # Part 1 goes up now too (so that close() need not send it) but stays on
                # disk: a rewrite of the file's header only means sending it again.
                await self._start_part_upload(1, keep_file=True)

    def _track_part_crc(self, number: int, offset_in_part: int, piece: memoryview) -> None:
        """Keep the CRC-64 of what the program wrote into each part while it only appended
        there, to check the part files before an upload is completed (they sit on disk)."""
        known = self._part_crcs.get(number)
        if offset_in_part == 0 and (known is None or known.length <= len(piece)):
            known = self._part_crcs[number] = Crc64()
        if known is not None and known.length == offset_in_part:
            known.update(piece)
        else:
            self._part_crcs.pop(number, None)

    def _check_parts_against_writes(self, parts: list[PartInfo]) -> None:
        for part in parts:
            known = self._part_crcs.get(part.part_number)
            if known is None or part.crc64 is None or known.length != part.size:
                continue
            if known.value != part.crc64:
                raise IntegrityError(
                    f"{self.key}: part {part.part_number} as sent differs from what was written "
                    "(the staging file changed on disk); the upload is not completed"
                )

    async def _start_part_upload(self, number: int, *, keep_file: bool = False) -> None:
        staging = self._staging
        assert not self._unlinked, "a file unlinked while open never uploads"
        while self._parts_in_flight >= staging.max_parts_in_flight:
            await self._wait_parts_changed()
        await self._ensure_upload()
        self._parts_in_flight += 1
        if not keep_file:
            staging.budget.expect_release()
        staging.nursery().start_soon(self._upload_stream_part, number, keep_file)

    async def _wait_parts_changed(self) -> None:
        await self._parts_changed.wait()

    def _notify_parts_changed(self) -> None:
        self._parts_changed.set()
        self._parts_changed = trio.Event()

    async def _upload_stream_part(self, number: int, keep_file: bool) -> None:
        """Background: send sealed part ``number``; its file stays until the budget needs the
        room (unless ``keep_file``: part 1 always stays)."""
        path = self._part_path(number)
        version = self._part_versions.get(number, 0)
        try:
            part = await self._send_part_file(number, path)
        except Exception as exc:
            log.warning("%s: upload of part %d failed (%s); it stays staged", self.key, number, exc)
            self._failed_parts[number] = exc
        else:
            self._failed_parts.pop(number, None)
            if self._part_versions.get(number, 0) == version:
                # (Else part 1 was rewritten meanwhile: the flush sends it again.)
                self._uploaded_parts[number] = part
                self._staging.journal.record_part(self._file_id, part)
                if not keep_file:
                    self._staging.keep_uploaded_part(self, number)
        finally:
            self._parts_in_flight -= 1
            if not keep_file:
                self._staging.budget.release_expected()
            self._notify_parts_changed()

    async def _send_part_file(self, number: int, path: Path) -> PartInfo:
        assert self._upload_id is not None
        async with self._staging.upload_limiter:
            return await self._staging.client.upload_part(
                self._staging.bucket, self.key, self._upload_id, number, FileSlice(path)
            )

    async def _ensure_upload(self) -> str:
        """The multipart upload of this file, initiated (and journalled) on first need."""
        async with self._upload_init_lock:
            if self._upload_id is None:
                self._journal(upload_intent_s=time.time(), upload_key=self.key)
                self._prepare_metadata()
                self._upload_metadata = dict(self._metadata)
                self._upload_id = await self._staging.client.init_multipart_upload(
                    self._staging.bucket,
                    self.key,
                    metadata=self._upload_metadata,
                    forbid_overwrite=self._forbid_overwrite,
                )
                self._journal(upload_id=self._upload_id)
                self._staging.journal.clear_parts(self._file_id)
                self._uploaded_parts.clear()
            return self._upload_id

    async def _wait_stream_parts(self) -> None:
        while self._parts_in_flight:
            await self._wait_parts_changed()

    async def _stream_to_local(self) -> bool:
        """Turn a streamed file into a local one, if no part left the disk yet; -> done."""
        await self._wait_stream_parts()
        numbers = range(1, self._part_number_at(max(0, self.size - 1)) + 1)
        if any(not self._part_path(n).exists() for n in numbers if self.size > 0):
            return False
        data_path = self._data_path()
        part_one = self._part_path(1)
        if part_one.exists():
            os.replace(part_one, data_path)
        else:
            data_path.touch()
        with open(data_path, "r+b") as target:
            for number in numbers:
                if number == 1:
                    continue
                path = self._part_path(number)
                with open(path, "rb") as source:
                    target.seek((number - 1) * self._part_size)
                    shutil.copyfileobj(source, target)
                path.unlink()
            target.truncate(self.size)
        self._staging.forget_uploaded_parts(self)
        await self._abort_upload()
        self._mode = MODE_LOCAL
        self._base_key = self._base_etag = None
        self._base_size = 0
        self._changed = RangeSet([(0, self.size)])
        self._journal(mode=MODE_LOCAL, base_key=None, base_etag=None, base_size=0)
        return True

    async def _abort_upload(self) -> None:
        await self._wait_stream_parts()
        upload_id = self._upload_id
        if upload_id is None:
            return
        try:
            await self._staging.client.abort_multipart_upload(
                self._staging.bucket, self.key, upload_id
            )
        except OssError as exc:
            # Left in the journal (state dirty): the next start aborts it.
            log.warning("%s: could not abort upload %s: %s", self.key, upload_id, exc)
            return
        self._upload_id = None
        self._uploaded_parts.clear()
        self._failed_parts.clear()
        self._staging.journal.clear_parts(self._file_id)
        self._journal(upload_id=None, upload_intent_s=None)

    async def _reset_to_empty(self) -> None:
        """Truncate to 0: whatever was staged goes; the file streams again from the start. A
        file unlinked or replaced while open never uploads again: it goes on as an empty local
        copy instead (a stream would send its parts to the key another file now has)."""
        await self._abort_upload()
        released = self._staged_bytes_accounted
        self._delete_staging_files()
        self._staging.budget.release(released)
        self.size = 0
        self._stream_base = 0
        self._append_crc = Crc64()
        self._part_crcs.clear()
        self._mode = MODE_LOCAL if self._unlinked else MODE_STREAM
        if self._unlinked:
            self._data_path().touch()
        self._holes = RangeSet()
        self._changed = RangeSet()
        self._journal(mode=self._mode, size=0, base_key=None, base_etag=None, base_size=0)
        self._data_changed()

    # --- local mode ----------------------------------------------------------------------

    @property
    def _staged_bytes_accounted(self) -> int:
        """Budget bytes this file holds: its local copy, or its part files on disk."""
        if self._mode == MODE_LOCAL:
            return self.size - self._holes.total()
        if self._mode == MODE_STREAM:
            return sum(
                min(self._part_size, self.size - (n - 1) * self._part_size)
                for n in range(1, self._part_number_at(max(0, self.size - 1)) + 1)
                if self._part_path(n).exists()
            )
        return 0

    async def _make_local(self) -> None:
        """Fetch the full copy of the object (checkpointed, resumable) to write into."""
        staging = self._staging
        await staging.budget.reserve(self.size)
        checkpoint_dir = staging.download_dir / str(self._file_id)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        try:
            info = await transfer.download_file(
                staging.client,
                staging.bucket,
                self.key,
                self._data_path(),
                part_size=staging.part_size,
                concurrency=staging.upload_concurrency,
                checkpoint_dir=checkpoint_dir,
            )
        except BaseException:
            staging.budget.release(self.size)
            raise
        if info.size != self.size:
            staging.budget.release(self.size)
            staging.budget.force(info.size)
        if self.remote_etag is not None and info.etag != self.remote_etag:
            log.info("%s changed since it was opened; writing into the new version", self.key)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        self.size = info.size
        self.remote_etag = info.etag
        self._mode = MODE_LOCAL
        self._holes = RangeSet()
        self._base_key = self.key
        self._base_etag = info.etag
        self._base_size = info.size
        self._base_crc64 = info.crc64
        self._changed = RangeSet()
        self._journal(
            mode=MODE_LOCAL,
            size=info.size,
            base_key=self.key,
            base_etag=info.etag,
            base_size=info.size,
            base_crc64=info.crc64,
        )

    async def _local_write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        # Budget: the bytes past the end, and those that fill holes; a gap stays a hole.
        filled = _overlap(self._holes, offset, end)
        grow = max(0, end - max(offset, self.size)) + filled
        await self._staging.budget.reserve(grow)
        try:
            fd = os.open(self._data_path(), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _pwrite_all(fd, data, offset)
            finally:
                os.close(fd)
        except BaseException:
            self._staging.budget.release(grow)
            raise
        self._holes.remove(offset, end)
        if offset > self.size:
            self._changed.add(self.size, offset)  # the hole reads as zeros
            self._holes.add(self.size, offset)
        self._changed.add(offset, end)
        self.size = max(self.size, end)
        self._data_changed()

    async def _local_truncate(self, size: int) -> None:
        # Growing makes a hole (sparse on disk): nothing to reserve until it is written.
        with open(self._data_path(), "r+b") as file:
            file.truncate(size)
        if size > self.size:
            self._holes.add(self.size, size)
        if size < self.size:
            self._staging.budget.release(self.size - size - _overlap(self._holes, size, self.size))
            self._holes.remove(size, self.size)
            # Bytes past the cut no longer match the base, should the file grow again.
            self._changed.add(size, max(self.size, self._base_size))
        else:
            self._changed.add(self.size, size)
        self.size = size
        self._data_changed()

    # --- flush ---------------------------------------------------------------------------

    async def _upload_by_mode(self) -> PutResult:
        try:
            if self._mode == MODE_STREAM:
                return await self._flush_stream()
            if self._mode == MODE_LOCAL:
                return await self._flush_local()
            return await self._flush_metadata_only()
        except NoSuchUpload:
            # The upload id is gone: completed by a CompleteMultipartUpload whose answer was
            # lost (a crash or a broken connection), or aborted by someone else.
            completed = await self._completed_meanwhile()
            if completed is not None:
                log.info("%s: the upload had been completed already", self.key)
                return completed
            self._upload_id = None
            self._plan = None
            self._uploaded_parts.clear()
            self._staging.journal.clear_parts(self._file_id)
            self._journal(upload_id=None, upload_intent_s=None, plan=None)
            if self._mode == MODE_STREAM:
                log.error(  # noqa: TRY400 (the reason is the message; no traceback)
                    "%s: its multipart upload was aborted by someone else; the parts already "
                    "sent are lost, only what is still staged can be uploaded",
                    self.key,
                )
            raise

    async def _completed_meanwhile(self) -> PutResult | None:
        """The object, if it is exactly the staged data (size and CRC-64), else None."""
        expected = await self._expected_crc()
        if expected is None:
            return None
        try:
            info = await self._staging.client.head_object(self._staging.bucket, self.key)
        except NotFound:
            return None
        if info.size != self.size or info.crc64 != expected:
            return None
        return PutResult(info.etag, info.crc64)

    async def _expected_crc(self) -> int | None:
        """The CRC-64 the uploaded object must have, when it can be known."""
        if self._mode == MODE_LOCAL:
            return await trio.to_thread.run_sync(
                _crc_of_file_range, self._data_path(), 0, self.size
            )
        if self._mode != MODE_STREAM:
            return self._base_crc64
        if self._append_crc is not None and self._append_crc.length == self.size:
            return self._append_crc.value
        recorded = self._staging.journal.parts(self._file_id)
        last_part = self._part_number_at(max(0, self.size - 1))
        if sorted(recorded) != list(range(1, last_part + 1)):
            return None
        return _combined_crc(list(recorded.values()))

    def _prepare_metadata(self) -> None:
        """After a data change, a stale x-oss-meta-mtime goes (the object's Last-Modified is
        then the mtime), unless utimens set one since."""
        stale = self._data_changed_ns is not None and not self._mtime_explicit
        if stale and ("mtime" in self._metadata or "ctime" in self._metadata):
            # (ctime too: the data change is the newer change of the two.)
            self._metadata.pop("mtime", None)
            self._metadata.pop("ctime", None)
            self._journal(metadata=self._metadata)

    async def _flush_locked(self) -> None:
        if self._unlinked or not self._dirty:
            return
        self._prepare_metadata()
        if self._state != STATE_FLUSHING:
            self._state = STATE_FLUSHING
            self._journal(state=STATE_FLUSHING, size=self.size, metadata=self._metadata)
        try:
            result = await self._upload_by_mode()
        except FileAlreadyExists:
            # O_EXCL lost a race: the other writer's object stays, and this one is dropped.
            log.error(  # noqa: TRY400 (the reason is the message; no traceback)
                "%s: created meanwhile by another writer (O_EXCL); not uploaded", self.key
            )
            self._unlinked = True
            self._dirty = False
            self._state = STATE_DIRTY
            self._journal(state=STATE_DIRTY, plan=None)
            raise
        except BaseException as exc:
            self.last_error = exc
            if isinstance(exc, Exception):
                self._staging._schedule_retry(self)
                log.error(  # noqa: TRY400 (the reason is the message; no traceback)
                    "%s: upload of %d bytes failed; the data stays staged and is retried in the "
                    "background: %s",
                    self.key,
                    self.size,
                    exc,
                )
                if is_transient(exc):
                    # Throttling or an unreachable server after every retry: EIO, not EAGAIN.
                    raise UploadFailedError(f"{self.key}: upload failed: {exc}") from exc
            raise
        await self._published(result)

    async def _published(self, result: PutResult) -> None:
        """The upload is in OSS and checked: the staged copy is now clean."""
        self._dirty = False
        self._forbid_overwrite = False
        self._retry_due_s = None
        self._retry_delay_s = self._staging.retry_initial_s
        self.last_error = None
        self.remote_etag = result.etag
        self._upload_id = None
        self._plan = None
        self._uploaded_parts.clear()
        self._staging.journal.clear_parts(self._file_id)
        if self._mode == MODE_STREAM:
            # The parts are in OSS; the remaining part files are no longer needed.
            released = self._staged_bytes_accounted
            self._delete_staging_files()
            self._staging.budget.release(released)
            self._mode = MODE_REMOTE
        self._base_key = self.key
        self._base_etag = result.etag
        self._base_size = self.size
        self._base_crc64 = result.crc64
        self._changed = RangeSet()
        self._state = STATE_CLEAN
        self._journal(
            state=STATE_CLEAN,
            mode=self._mode,
            size=self.size,
            base_key=self.key,
            base_etag=result.etag,
            base_size=self.size,
            base_crc64=result.crc64,
            upload_id=None,
            upload_intent_s=None,
            plan=None,
            forbid_overwrite=False,
        )
        log.debug("%s: uploaded %d bytes (etag %s)", self.key, self.size, result.etag)

    def _overwrite_headers(self) -> dict[str, str]:
        return dict(FORBID_OVERWRITE_HEADER) if self._forbid_overwrite else {}

    async def _flush_stream(self) -> PutResult:
        staging = self._staging
        client = staging.client
        await self._wait_stream_parts()
        last_part = self._part_number_at(max(0, self.size - 1))
        if self._upload_id is None:
            # No part sent yet: at most part 1 and part 2 are on disk.
            numbers = [n for n in range(1, last_part + 1) if self._part_path(n).exists()]
            on_disk = self.size == 0 or len(numbers) == last_part
            if on_disk and (
                last_part == 1 or (last_part == 2 and self.size < staging.multipart_threshold)
            ):
                body: bytes | FileSlice
                if self.size == 0:
                    body = b""
                elif last_part == 1 and self.size > SMALL_BODY:
                    body = FileSlice(self._part_path(1), 0, self.size)
                elif last_part == 1:
                    # Small: read here rather than in a worker thread per chunk.
                    body = self._part_path(1).read_bytes()[: self.size]
                else:
                    body = b"".join(self._part_path(n).read_bytes() for n in numbers)
                async with staging.upload_limiter:
                    return await client.put_object(
                        staging.bucket,
                        self.key,
                        body,
                        metadata=self._metadata,
                        forbid_overwrite=self._forbid_overwrite,
                    )
            await self._ensure_upload()
        upload_id = self._upload_id
        assert upload_id is not None
        if self._resumed:
            # After a restart: trust only the parts the server still lists.
            self._uploaded_parts.clear()
            await self._confirmed_parts(upload_id)
        # Everything still on disk: part 1, failed parts, the last part.
        pending = [
            n
            for n in range(1, last_part + 1)
            if n not in self._uploaded_parts and self._part_path(n).exists()
        ]
        with first_failure():
            async with trio.open_nursery() as nursery:
                for number in pending:
                    nursery.start_soon(self._send_and_record, number)
        missing = [n for n in range(1, last_part + 1) if n not in self._uploaded_parts]
        if missing:
            raise OssError(f"{self.key}: parts {missing} are neither uploaded nor staged")
        parts = [self._uploaded_parts[n] for n in range(1, last_part + 1)]
        self._check_parts_against_writes(parts)
        append_crc = self._append_crc
        expected = append_crc.value if append_crc and append_crc.length == self.size else None
        result = await self._complete(upload_id, parts, expected_crc=expected)
        if self._upload_metadata is not None and self._upload_metadata != self._metadata:
            # The metadata changed after the upload began (chmod while writing): apply it.
            self._upload_id = None
            self._uploaded_parts.clear()
            self._staging.journal.clear_parts(self._file_id)
            self._journal(upload_id=None, upload_intent_s=None)
            self.remote_etag = result.etag
            self._base_crc64 = result.crc64
            self._forbid_overwrite = False
            result = await self._flush_metadata_only()
        return result

    async def _send_and_record(self, number: int) -> None:
        part = await self._send_part_file(number, self._part_path(number))
        self._uploaded_parts[number] = part
        self._failed_parts.pop(number, None)
        self._staging.journal.record_part(self._file_id, part)

    async def _complete(
        self, upload_id: str, parts: list[PartInfo], *, expected_crc: int | None = None
    ) -> PutResult:
        """CompleteMultipartUpload, CRC-64 checked: against ``expected_crc`` (the whole file's,
        when known), else by the client against the combination of the parts' CRCs (each
        combine costs milliseconds, so a known whole-file CRC is preferred)."""
        staging = self._staging
        sent = parts
        if expected_crc is not None:
            sent = [PartInfo(part.part_number, part.etag, part.size) for part in parts]
        # (NoSuchUpload, when an earlier attempt did complete it: see _upload_by_mode.)
        result = await staging.client.complete_multipart_upload(
            staging.bucket, self.key, upload_id, sent, headers=self._overwrite_headers()
        )
        if expected_crc is not None and result.crc64 != expected_crc:
            raise IntegrityError(
                f"CompleteMultipartUpload {self.key}: CRC-64 {expected_crc} of the written data "
                f"!= server's {result.crc64}"
            )
        return result

    async def _flush_local(self) -> PutResult:
        staging = self._staging
        if self.size < staging.multipart_threshold and self._upload_id is None:
            async with staging.upload_limiter:
                return await staging.client.put_object(
                    staging.bucket,
                    self.key,
                    FileSlice(self._data_path(), 0, self.size),
                    metadata=self._metadata,
                    forbid_overwrite=self._forbid_overwrite,
                )
        if self._plan is None:
            can_copy = self._base_key is not None and self._base_etag is not None
            self._plan = plan_parts(
                self.size,
                self._changed if can_copy else RangeSet([(0, self.size)]),
                self._base_size if can_copy else 0,
                part_size=staging.part_size,
            )
            # A new plan needs a new upload: parts of an older one may hold other bytes.
            await self._abort_upload()
            self._journal(plan=self._plan)
        return await self._run_plan(self._plan, have_local=True)

    async def _flush_metadata_only(self) -> PutResult:
        """Mode remote: only the metadata changed; copy the object onto itself with it."""
        staging = self._staging
        if self.size <= COPY_OBJECT_LIMIT:
            result = await staging.client.copy_object(
                staging.bucket,
                self.key,
                staging.bucket,
                self.key,
                metadata=self._metadata,
                if_match=self.remote_etag,
            )
            return result
        if self._plan is None:
            self._plan = plan_parts(self.size, RangeSet(), self.size, part_size=staging.part_size)
            self._journal(plan=self._plan)
        return await self._run_plan(self._plan, have_local=False)

    async def _run_plan(self, plan: list[PlannedPart], *, have_local: bool) -> PutResult:
        """Run (or resume) a planned multipart upload; -> the completed object, CRC-checked."""
        staging = self._staging
        upload_id = await self._ensure_upload()
        done = await self._confirmed_parts(upload_id)
        crcs: dict[int, int | None] = {}

        async def run_part(part: PlannedPart) -> None:
            if part.part_number in done:
                return
            info = await self._send_planned_part(upload_id, part, have_local)
            self._uploaded_parts[part.part_number] = info
            self._staging.journal.record_part(self._file_id, info)

        with first_failure():
            async with trio.open_nursery() as nursery:
                for part in plan:
                    nursery.start_soon(run_part, part)
        parts: list[PartInfo] = []
        for part in plan:
            info = self._uploaded_parts[part.part_number]
            crc = info.crc64
            if part.copy and have_local:
                # The copy's bytes must equal the local copy's: check them by CRC.
                crc = await trio.to_thread.run_sync(
                    _crc_of_file_range, self._data_path(), part.offset, part.size
                )
            elif part.copy:
                crc = None
            crcs[part.part_number] = crc
            parts.append(PartInfo(part.part_number, info.etag, part.size, crc64=crc))
        result = await self._complete(upload_id, parts)
        if not have_local and self._base_crc64 is not None and result.crc64 != self._base_crc64:
            raise IntegrityError(f"{self.key}: CRC-64 of the copied object differs")
        del staging
        return result

    async def _confirmed_parts(self, upload_id: str) -> dict[int, PartInfo]:
        """Parts of the upload the journal recorded and the server still lists (same ETag)."""
        recorded = self._staging.journal.parts(self._file_id)
        if not recorded:
            return {}
        listed: dict[int, PartInfo] = {}
        async for part in self._staging.client.iter_parts(
            self._staging.bucket, self.key, upload_id
        ):
            listed[part.part_number] = part
        confirmed = {
            number: part
            for number, part in recorded.items()
            if number in listed and listed[number].etag == part.etag
        }
        self._uploaded_parts.update(confirmed)
        return confirmed

    async def _send_planned_part(
        self, upload_id: str, part: PlannedPart, have_local: bool
    ) -> PartInfo:
        staging = self._staging
        async with staging.upload_limiter:
            if part.copy:
                assert self._base_key is not None
                try:
                    return await staging.client.upload_part_copy(
                        staging.bucket,
                        self.key,
                        upload_id,
                        part.part_number,
                        staging.bucket,
                        self._base_key,
                        byte_range=(part.offset, part.offset + part.size - 1),
                        if_match=self._base_etag,
                    )
                except (PreconditionFailed, NotFound) as exc:
                    # The base object changed (412) or is gone (404: renamed or deleted since
                    # the copy was made): every byte is in the local copy.
                    if not have_local:
                        raise
                    log.info(
                        "%s: base object %s %s; sending bytes %d-%d from the local copy",
                        self.key,
                        self._base_key,
                        "changed" if isinstance(exc, PreconditionFailed) else "is gone",
                        part.offset,
                        part.offset + part.size - 1,
                    )
            return await staging.client.upload_part(
                staging.bucket,
                self.key,
                upload_id,
                part.part_number,
                FileSlice(self._data_path(), part.offset, part.size),
            )

    # --- end of life ---------------------------------------------------------------------

    def _delete_staging_files(self) -> None:
        self._staging.forget_uploaded_parts(self)
        if self._part_files_made is None:
            paths = list(self._staging.staging_dir.glob(f"{self._file_id}.*"))
        else:
            paths = [self._data_path()]
            paths += [self._part_path(n) for n in range(1, self._part_files_made + 1)]
        for path in paths:
            path.unlink(missing_ok=True)
        shutil.rmtree(self._staging.download_dir / str(self._file_id), ignore_errors=True)


def _overlap(ranges: RangeSet, start: int, end: int) -> int:
    """How many bytes of [start, end) are in ``ranges``."""
    return max(0, end - start) - sum(high - low for low, high in ranges.gaps(start, end))


def _combined_crc(parts: list[PartInfo]) -> int | None:
    combined = 0
    for part in sorted(parts, key=lambda item: item.part_number):
        if part.crc64 is None:
            return None
        combined = crc64_combine(combined, part.crc64, part.size)
    return combined


class WriteStaging:
    """The write path of one mount: state directory, disk budget, journal, background retries.

    Keys are full object keys (the mount's prefix included). Use as::

        staging = WriteStaging(client, bucket, state_dir=..., prefix=..., ...)
        report = await staging.recover()          # before serving
        await nursery.start(staging.run)          # background uploads and retries
        ...
        staging.close()                           # after the nursery ended
    """

    def __init__(
        self,
        client: OssClient,
        bucket: str,
        *,
        state_dir: Path,
        prefix: str,
        disk_budget_bytes: int,
        part_size: int,
        multipart_threshold: int,
        upload_concurrency: int,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.state_dir = state_dir
        self.part_size = max(part_size, 100 * 1024)
        self.multipart_threshold = multipart_threshold
        self.upload_concurrency = max(1, upload_concurrency)
        # Sealed stream parts waiting or being sent, per file: bounds the staging disk.
        self.max_parts_in_flight = self.upload_concurrency
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.staging_dir = state_dir / "staging"
        self.download_dir = state_dir / "downloads"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.download_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] = open(state_dir / "lock", "a")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StateDirBusyError(
                f"state directory {state_dir} is in use by another ossmount process"
            ) from None
        self.journal = Journal(state_dir / "journal.sqlite")
        self.budget = DiskBudget(disk_budget_bytes, evict=self._evict_uploaded_parts)
        # Part files of streamed files that are already uploaded, oldest first: kept while the
        # budget allows (reads and writes anywhere in the file still work), dropped when it
        # needs the room.
        self._uploaded_part_files: OrderedDict[tuple[int, int], StagedFile] = OrderedDict()
        self.upload_limiter = trio.CapacityLimiter(self.upload_concurrency)
        self._files: dict[str, StagedFile] = {}
        self._nursery: trio.Nursery | None = None
        self._retry_wakeup = trio.Event()
        self._recovery_uploads: list[StagedFile] = []
        self._recovery_discards: list[JournalEntry] = []
        self._load_journal()

    def close(self) -> None:
        """Release the journal and the state directory lock (after run() ended)."""
        self.journal.close()
        self._lock_file.close()

    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("WriteStaging.run() must be started before files are written")
        return self._nursery

    def keep_uploaded_part(self, staged: StagedFile, number: int) -> None:
        self._uploaded_part_files[(staged._file_id, number)] = staged

    def forget_uploaded_parts(self, staged: StagedFile) -> None:
        """``staged`` has no uploaded part files any more (published, dropped, or merged)."""
        for number in range(1, staged._part_number_at(max(0, staged.size - 1)) + 2):
            self._uploaded_part_files.pop((staged._file_id, number), None)

    def _evict_uploaded_parts(self, needed: int) -> None:
        """Drop uploaded part files, oldest first, until ``needed`` bytes are free. Files that
        another task is reading or writing (their lock is held) are passed over; the current
        task's own file (a write that needs the room) is not."""
        freed = 0
        current = trio.lowlevel.current_task()
        for part_id, staged in list(self._uploaded_part_files.items()):
            if freed >= needed:
                return
            owner = staged._lock.statistics().owner
            if owner is not None and owner is not current:
                continue
            del self._uploaded_part_files[part_id]
            number = part_id[1]
            if staged._mode != MODE_STREAM or number not in staged._uploaded_parts:
                continue
            path = staged._part_path(number)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            freed += size
            self.budget.release(size)

    def staged(self, key: str) -> StagedFile | None:
        """The staged file of ``key`` (open, or closed with an upload pending), if any."""
        return self._files.get(key)

    def staged_under(self, prefix: str, *, direct: bool = False) -> list[StagedFile]:
        """Staged files whose keys are under ``prefix`` (only its direct children if
        ``direct``): a directory's entries that may not be in OSS yet."""
        return [
            staged
            for key, staged in self._files.items()
            if key.startswith(prefix)
            and key != prefix
            and not (direct and "/" in key[len(prefix) :])
        ]

    def pending_keys(self) -> list[str]:
        """Keys whose data is staged but not yet in OSS."""
        return [key for key, staged in self._files.items() if staged.dirty]

    # --- opening -------------------------------------------------------------------------

    async def open(
        self,
        key: str,
        existing: ObjectInfo | None,
        *,
        truncate: bool,
        append: bool = False,
        exclusive: bool = False,
    ) -> StagedFile:
        """Open ``key`` for writing: one more handle on its StagedFile (created if needed).

        ``existing`` is the object's current info (None for a new file). ``truncate`` is O_TRUNC
        (and O_CREAT of a new file); ``exclusive`` is O_EXCL: the first upload carries
        x-oss-forbid-overwrite, so a file created meanwhile by someone else gives EEXIST.
        ``append`` (O_APPEND) needs nothing here: the caller writes at ``size``.
        """
        del append
        staged = self._files.get(key)
        if staged is None:
            if existing is None or truncate:
                entry_mode, size, dirty = MODE_STREAM, 0, True
                state = STATE_DIRTY
            else:
                entry_mode, size, dirty = MODE_REMOTE, existing.size, False
                state = STATE_CLEAN
            metadata = dict(existing.metadata) if existing is not None else {}
            file_id = self.journal.add(
                key,
                state=state,
                mode=entry_mode,
                size=size,
                metadata=metadata,
                forbid_overwrite=exclusive,
                part_size=self.part_size,
                base_key=key if existing is not None else None,
                base_etag=existing.etag if existing is not None else None,
                base_size=existing.size if existing is not None else 0,
                base_crc64=existing.crc64 if existing is not None else None,
            )
            entry = self.journal.get(file_id)
            assert entry is not None
            staged = StagedFile(
                self,
                entry,
                remote_etag=existing.etag if existing is not None and not truncate else None,
                dirty=dirty,
            )
            staged._part_files_made = 0  # a new journal entry: no files of it exist yet
            if dirty:
                staged._data_changed_ns = time.time_ns()
            self._files[key] = staged
        elif truncate:
            await staged.truncate(0)
        staged._handles += 1
        return staged

    @contextlib.asynccontextmanager
    async def removing(self, key: str) -> AsyncIterator[None]:
        """Around the request that removes the object at ``key``: its DeleteObject, or the
        copy of a rename onto it.

        While the request runs, no upload of the key's staged file (an open file, or a closed
        one whose upload is pending) can start, so none can publish old data over the change;
        the journal already says "discard" should the process die meanwhile. When the request
        succeeds the staged file leaves the key for good: handles still open on it keep
        working on their local copy (make it beforehand with :meth:`StagedFile.make_private`)
        and it is never uploaded; without open handles it is dropped. When the request fails,
        nothing changed.
        """
        staged = self._files.get(key)
        if staged is None:
            yield
            return
        async with staged._lock:
            if staged._state == STATE_FLUSHING:
                staged._journal(state=STATE_DIRTY)
            try:
                yield
            except BaseException:
                if staged._state == STATE_FLUSHING:
                    staged._journal(state=STATE_FLUSHING)
                raise
            await staged._detach_locked()
        if self._files.get(key) is staged:
            del self._files[key]
        if staged._handles == 0:
            await self._discard(staged)

    def rename(self, old_key: str, new_key: str, new_etag: str | None) -> None:
        """The object at ``old_key`` is now ``new_key`` (the caller moved it, after a flush) with
        ETag ``new_etag`` (None: not known): its staged state follows, and the moved object is
        the base that later uploads copy unchanged ranges from."""
        staged = self._files.pop(old_key, None)
        if staged is None:
            return
        staged.key = new_key
        fields: dict[str, object] = {"key": new_key}
        if staged._base_key is not None:
            staged._base_key = new_key
            fields["base_key"] = new_key
            if new_etag is not None:
                staged._base_etag = new_etag
                fields["base_etag"] = new_etag
        if new_etag is not None and staged.remote_etag is not None:
            staged.remote_etag = new_etag
        self.journal.update(staged._file_id, **fields)
        self._files[new_key] = staged

    # --- renames -------------------------------------------------------------------------

    async def rename_file(
        self, old_key: str, new_key: str, *, no_replace: bool = False, symlink: bool = False
    ) -> ObjectInfo | None:
        """Rename one object: a staged version is flushed first, then the object is copied
        (CopyObject up to 1 GB, UploadPartCopy above, If-Match on the source; ``no_replace`` =
        RENAME_NOREPLACE: x-oss-forbid-overwrite, FileAlreadyExists/EEXIST if the target
        exists), the old key deleted, and the staged state moved to the new key. A staged
        file of the replaced target is detached (see :meth:`removing`). An OSS-native symlink
        (``symlink``; HEAD would follow it) is re-created by PutSymlink.
        -> the new object's info (None for a symlink)."""
        staged = self._files.get(old_key)
        if staged is not None and staged.dirty:
            await staged.flush()
        new_info: ObjectInfo | None = None
        async with self.removing(new_key):
            if symlink:
                await self._move_key(old_key, new_key, 0, "", "Symlink", no_replace=no_replace)
            else:
                info = await self.client.head_object(self.bucket, old_key)
                await self._move_key(
                    old_key,
                    new_key,
                    info.size,
                    info.etag,
                    info.object_type,
                    no_replace=no_replace,
                    keep_mtime_of=info,
                )
                new_info = await self.client.head_object(self.bucket, new_key)
        self.rename(old_key, new_key, new_info.etag if new_info is not None else None)
        return new_info

    async def rename_directory(self, old_prefix: str, new_prefix: str) -> int:
        """Move every key under ``old_prefix`` (ending in "/") to ``new_prefix``, in parallel,
        journalled: a crash in the middle is finished by the next start. Staged files under the
        old prefix are flushed first and follow the rename. ossfs's ``<dir>_$folder$`` marker
        of the directory itself moves too. The caller checked that the target may be replaced
        (POSIX: an empty directory or none). -> number of keys moved."""
        rename_id = self.journal.add_rename(old_prefix, new_prefix)
        moved = await self._move_prefix(old_prefix, new_prefix)
        self.journal.remove_rename(rename_id)
        return moved

    async def _move_prefix(self, old_prefix: str, new_prefix: str) -> int:
        pending = [
            staged
            for key, staged in self._files.items()
            if key.startswith(old_prefix) and staged.dirty
        ]
        for staged in pending:
            await staged.flush()
        entries = [
            (item.key, item.size, item.etag, item.object_type)
            async for item in self.client.iter_objects(self.bucket, prefix=old_prefix)
            if not isinstance(item, str)
        ]
        folder_marker = old_prefix.rstrip("/") + FOLDER_MARKER_SUFFIX
        with contextlib.suppress(NotFound):
            info = await self.client.head_object(self.bucket, folder_marker)
            entries.append((folder_marker, info.size, info.etag, info.object_type))
        limiter = trio.CapacityLimiter(RENAME_CONCURRENCY)
        new_etags: dict[str, str | None] = {}

        async def move(key: str, size: int, etag: str, object_type: str) -> None:
            if key == folder_marker:
                new_key = new_prefix.rstrip("/") + FOLDER_MARKER_SUFFIX
            else:
                new_key = new_prefix + key[len(old_prefix) :]
            async with limiter:
                new_etags[key] = await self._move_key(key, new_key, size, etag, object_type)

        with first_failure():
            async with trio.open_nursery() as nursery:
                for entry in entries:
                    nursery.start_soon(move, *entry)
        for key in [key for key in self._files if key.startswith(old_prefix)]:
            self.rename(key, new_prefix + key[len(old_prefix) :], new_etags.get(key))
        return len(entries)

    async def _move_key(
        self,
        old_key: str,
        new_key: str,
        size: int,
        etag: str,
        object_type: str,
        *,
        no_replace: bool = False,
        keep_mtime_of: ObjectInfo | None = None,
    ) -> str | None:
        """Copy one object to ``new_key`` (checked by CRC-64 where the server says), then
        delete it; -> the copy's ETag (None for a symlink). A source that vanished meanwhile
        (moved by an earlier attempt) is skipped (None); one that changed since it was listed
        is copied as it is now. ``keep_mtime_of``: the source's HEAD; when it stores no mtime,
        the copy stores the source's Last-Modified as its mtime (a rename does not change a
        file's mtime, but OSS gives the copy a new Last-Modified)."""
        client = self.client
        new_etag: str | None = None
        metadata: dict[str, str] | None = None
        headers: dict[str, str] = {}
        if keep_mtime_of is not None and "mtime" not in keep_mtime_of.metadata:
            mtime_ns = int(keep_mtime_of.last_modified * 1_000_000_000)
            metadata = {**keep_mtime_of.metadata, "mtime": format_time_ns(mtime_ns)}
            if keep_mtime_of.content_type:
                headers["Content-Type"] = keep_mtime_of.content_type
        try:
            if object_type == "Symlink":
                # (A HEAD would describe the target; GetSymlink gives the link's own metadata.)
                link = await client.get_symlink_info(self.bucket, old_key)
                target = moved_symlink_target(old_key, new_key, link.symlink_target or "")
                await client.put_symlink(
                    self.bucket,
                    new_key,
                    target,
                    metadata=link.metadata,
                    forbid_overwrite=no_replace,
                )
            elif size <= COPY_OBJECT_LIMIT:
                try:
                    result = await client.copy_object(
                        self.bucket,
                        old_key,
                        self.bucket,
                        new_key,
                        metadata=metadata,
                        headers=headers,
                        if_match=etag or None,
                        forbid_overwrite=no_replace,
                    )
                except PreconditionFailed:
                    # Replaced since it was listed: the rename moves what is there now.
                    current = await client.head_object(self.bucket, old_key)
                    return await self._move_key(
                        old_key,
                        new_key,
                        current.size,
                        current.etag,
                        current.object_type,
                        no_replace=no_replace,
                    )
                new_etag = result.etag
            else:
                new_etag = await self._multipart_copy(old_key, new_key, no_replace=no_replace)
        except NoSuchKey:
            log.info("rename: %s is gone already (moved before?)", old_key)
            return None
        await client.delete_object(self.bucket, old_key)
        return new_etag

    async def _multipart_copy(self, old_key: str, new_key: str, *, no_replace: bool) -> str:
        """Copy an object over 1 GB with UploadPartCopy (same metadata, CRC-64 checked);
        -> the copy's ETag."""
        client = self.client
        info = await client.head_object(self.bucket, old_key)
        plan = plan_parts(info.size, RangeSet(), info.size, part_size=self.part_size)
        upload_id = await client.init_multipart_upload(
            self.bucket, new_key, metadata=info.metadata, forbid_overwrite=no_replace
        )
        parts: dict[int, PartInfo] = {}
        try:

            async def copy_part(part: PlannedPart) -> None:
                async with self.upload_limiter:
                    parts[part.part_number] = await client.upload_part_copy(
                        self.bucket,
                        new_key,
                        upload_id,
                        part.part_number,
                        self.bucket,
                        old_key,
                        byte_range=(part.offset, part.offset + part.size - 1),
                        if_match=info.etag,
                    )

            with first_failure():
                async with trio.open_nursery() as nursery:
                    for part in plan:
                        nursery.start_soon(copy_part, part)
            ordered = [
                PartInfo(n, parts[n].etag, parts[n].size) for n in sorted(parts)
            ]  # CRCs of copied parts are not all known: the whole object is checked below
            result = await client.complete_multipart_upload(
                self.bucket,
                new_key,
                upload_id,
                ordered,
                headers=FORBID_OVERWRITE_HEADER if no_replace else None,
            )
        except BaseException:
            with trio.move_on_after(ABORT_TIMEOUT_S) as scope, contextlib.suppress(OssError):
                scope.shield = True  # also when cancelled: leave no upload behind
                await client.abort_multipart_upload(self.bucket, new_key, upload_id)
            raise
        if info.crc64 is not None and result.crc64 is not None and result.crc64 != info.crc64:
            raise IntegrityError(f"copy of {old_key} to {new_key}: CRC-64 differs")
        return result.etag

    async def _release(self, staged: StagedFile) -> None:
        staged._handles -= 1
        if staged._handles > 0:
            return
        if staged.dirty and not staged._unlinked:
            # Closed without a successful flush: the background task keeps trying.
            if staged._state != STATE_FLUSHING:
                staged._state = STATE_FLUSHING
                self.journal.update(staged._file_id, state=STATE_FLUSHING, size=staged.size)
            self._schedule_retry(staged, now=True)
            return
        await self._discard(staged)

    async def _discard(self, staged: StagedFile) -> None:
        async with staged._lock:
            if staged._handles > 0 or (staged.dirty and not staged._unlinked):
                return
            await staged._abort_upload()
            released = staged._staged_bytes_accounted
            staged._delete_staging_files()
            self.budget.release(released)
            if staged._upload_id is None:
                self.journal.remove(staged._file_id)
            if self._files.get(staged.key) is staged:
                del self._files[staged.key]

    # --- background retries --------------------------------------------------------------

    def _schedule_retry(self, staged: StagedFile, *, now: bool = False) -> None:
        if now:
            staged._retry_due_s = trio.current_time()
        elif staged._retry_due_s is None or staged._retry_due_s <= trio.current_time():
            staged._retry_due_s = trio.current_time() + staged._retry_delay_s
            staged._retry_delay_s = min(self.retry_max_s, staged._retry_delay_s * 2)
        self._retry_wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work of the mount: streamed part uploads and retries of failed flushes.

        Runs until cancelled (the mount's nursery ends at unmount)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    # A new event first, so that a retry scheduled during the scan wakes us.
                    self._retry_wakeup = trio.Event()
                    now = trio.current_time()
                    next_due: float | None = None
                    for staged in list(self._files.values()):
                        due = staged._retry_due_s
                        if due is None or staged._retrying:
                            continue
                        if due <= now:
                            staged._retrying = True
                            nursery.start_soon(self._retry, staged)
                        elif next_due is None or due < next_due:
                            next_due = due
                    timeout = (next_due - now) if next_due is not None else float("inf")
                    with trio.move_on_after(max(0.0, timeout)):
                        await self._retry_wakeup.wait()
            finally:
                self._nursery = None

    async def _retry(self, staged: StagedFile) -> None:
        try:
            staged._retry_due_s = None
            try:
                await staged.flush()
            except Exception as exc:
                log.warning("%s: background upload failed again: %s", staged.key, exc)
                return
            log.info("%s: background upload succeeded", staged.key)
            if staged._handles == 0:
                await self._discard(staged)
        finally:
            staged._retrying = False
            self._retry_wakeup.set()

    async def wait_idle(self) -> None:
        """Wait until no file has an upload pending (for tests and unmount)."""
        while any(staged.dirty and staged._handles == 0 for staged in self._files.values()):
            await trio.sleep(0.05)

    # --- recovery ------------------------------------------------------------------------

    def _load_journal(self) -> None:
        """At start: files whose flush had begun are registered at once (an open() of their key
        gets them, with the newest data); the rest is left for recover() to discard."""
        for entry in self.journal.entries():
            if entry.state != STATE_FLUSHING:
                self._recovery_discards.append(entry)
                continue
            staged = StagedFile(self, entry, remote_etag=entry.base_etag, dirty=True)
            staged._state = STATE_FLUSHING
            staged._resumed = True
            if entry.mode == MODE_LOCAL:
                staged._changed = RangeSet([(0, entry.size)])
            older = self._files.get(entry.key)
            if older is not None:
                # Two pending versions of one key: the newer (higher id) wins.
                self._recovery_uploads.remove(older)
                older_entry = self.journal.get(older._file_id)
                if older_entry is not None:
                    self._recovery_discards.append(older_entry)
            self.budget.force(staged._staged_bytes_accounted)
            self._files[entry.key] = staged
            self._recovery_uploads.append(staged)

    async def recover(self) -> RecoveryReport:
        """Finish what a crash interrupted, as the journal found at start says.

        ``flushing`` files are uploaded (resuming their multipart upload; an upload completed
        just before the crash is recognised by size and CRC-64); ``dirty`` and ``clean`` ones
        are discarded and their multipart uploads aborted. Staging files no journal row refers
        to are deleted. Files that cannot be finished now stay staged (in a mount, run() keeps
        retrying them; their keys already read as the staged data). May run while the mount
        serves, in the background.
        """
        report = RecoveryReport()
        discards, self._recovery_discards = self._recovery_discards, []
        uploads, self._recovery_uploads = self._recovery_uploads, []
        for entry in discards:
            await self._recover_discard(entry, report)
        for staged in uploads:
            await self._recover_upload(staged, report)
        for rename_id, old_prefix, new_prefix in self.journal.renames():
            try:
                moved = await self._move_prefix(old_prefix, new_prefix)
            except Exception as exc:  # reported; the next start tries again
                report.failed.append(f"rename of {old_prefix} to {new_prefix}: {exc!r}")
                continue
            self.journal.remove_rename(rename_id)
            report.renames.append(f"{old_prefix} -> {new_prefix} ({moved} keys moved)")
        self._delete_orphan_files()
        for line in report.lines():
            log.warning("recovery: %s", line)
        return report

    async def _recover_upload(self, staged: StagedFile, report: RecoveryReport) -> None:
        entry = self.journal.get(staged._file_id)
        if entry is None or not staged.dirty:
            return  # finished meanwhile (an open() and flush() of the same key)
        try:
            if entry.upload_id is None and entry.upload_intent_s is not None:
                await self._abort_orphans(entry, report)
            await staged.flush()
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, UploadFailedError) else exc
            if cause is not None and is_transient(cause):
                report.failed.append(f"{entry.key}: {exc}")  # still staged, retried
            else:
                # It would fail the same way at every start: move it aside, never block a mount.
                report.quarantined.append(f"{entry.key}: {exc!r} -> {self._quarantine(staged)}")
            return
        report.completed.append(entry.key)
        if staged._handles == 0:
            await self._discard(staged)

    def _quarantine(self, staged: StagedFile) -> Path:
        """Move the staging files of ``staged`` to ``quarantine/<id>/`` in the state directory,
        with a note of its key, and forget it: it is not uploaded, and no later start tries."""
        target = self.state_dir / "quarantine" / str(staged._file_id)
        target.mkdir(parents=True, exist_ok=True)
        for path in self.staging_dir.glob(f"{staged._file_id}.*"):
            os.replace(path, target / path.name)
        (target / "key.txt").write_text(f"{staged.key}\n{staged.size} bytes\n")
        self.budget.release(staged._staged_bytes_accounted)
        staged._unlinked = True
        staged._dirty = False
        staged._retry_due_s = None
        self.journal.remove(staged._file_id)
        if self._files.get(staged.key) is staged:
            del self._files[staged.key]
        return target

    async def _recover_discard(self, entry: JournalEntry, report: RecoveryReport) -> None:
        if entry.state == STATE_DIRTY:
            report.discarded.append(entry.key)
        upload_key = entry.upload_key or entry.key
        try:
            if entry.upload_id is not None:
                with contextlib.suppress(NoSuchUpload):
                    await self.client.abort_multipart_upload(
                        self.bucket, upload_key, entry.upload_id
                    )
                report.aborted_uploads.append(f"{upload_key} ({entry.upload_id})")
            elif entry.upload_intent_s is not None:
                await self._abort_orphans(entry, report)
        except Exception as exc:  # reported; the next start tries again
            report.failed.append(f"{entry.key}: abort of its multipart upload: {exc!r}")
            return
        for path in self.staging_dir.glob(f"{entry.file_id}.*"):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.download_dir / str(entry.file_id), ignore_errors=True)
        self.journal.remove(entry.file_id)

    async def _abort_orphans(self, entry: JournalEntry, report: RecoveryReport) -> None:
        """An InitiateMultipartUpload was sent but its id never recorded: abort the uploads of
        the key started since (they can only be ours or another writer's brand-new one)."""
        assert entry.upload_intent_s is not None
        key = entry.upload_key or entry.key
        since = entry.upload_intent_s - UPLOAD_INTENT_SLACK_S
        async for upload in self.client.iter_object_uploads(self.bucket, key):
            if upload.initiated >= since:
                try:
                    await self.client.abort_multipart_upload(self.bucket, key, upload.upload_id)
                except NoSuchUpload:
                    continue
                report.aborted_uploads.append(f"{key} ({upload.upload_id})")
        self.journal.update(entry.file_id, upload_intent_s=None)

    def _delete_orphan_files(self) -> None:
        known = {str(entry.file_id) for entry in self.journal.entries()}
        for path in self.staging_dir.iterdir():
            if path.name.lstrip(".").split(".", 1)[0] not in known:
                path.unlink(missing_ok=True)
        for path in self.download_dir.iterdir():
            if path.name not in known:
                shutil.rmtree(path, ignore_errors=True)


async def recover_state_dir(
    client: OssClient,
    bucket: str,
    prefix: str,
    state_dir: Path,
    *,
    upload_concurrency: int = 4,
) -> RecoveryReport:
    """`ossmount recover`: finish the interrupted uploads of one state directory, unmounted.

    Raises StateDirBusyError when a mount of the same bucket and prefix holds the directory.
    """
    staging = WriteStaging(
        client,
        bucket,
        state_dir=state_dir,
        prefix=prefix,
        # Recovery writes nothing new: the files it resumes are already on disk.
        disk_budget_bytes=2**63,
        part_size=transfer.DEFAULT_PART_SIZE,
        multipart_threshold=transfer.DEFAULT_MULTIPART_THRESHOLD,
        upload_concurrency=upload_concurrency,
    )
    try:
        return await staging.recover()
    finally:
        staging.close()
