"""OssFs: the FUSE operations, kept thin, and the file system's one errno boundary.

Every handler runs inside :func:`_errno_boundary`: an :class:`OssError` becomes
``pyfuse3.FUSEError(exc.errno)`` (the errno table lives in ossmount/oss/errors.py), a
``FUSEError`` passes through, and anything else is logged with its traceback and reported as
EIO, because an exception escaping a handler would stop pyfuse3's main loop.

The namespace (what is at a key, what is in a directory) comes from :mod:`dircache`; inode
numbers and lookup counts from :mod:`inodes`; file data from :mod:`reader`.

Writes (the "writes" section of :class:`OssFs`) go through :mod:`writer`: one
:class:`StagedFile` per key being written, shared by every handle. A key with staged data is
answered from it (size in lookup/getattr/readdir, bytes in read) until the upload is done, so
one mount reads its own writes at once, even of files not in OSS yet. flush/fsync of a handle
opened for writing uploads and returns only once OSS has the data (CRC-64 checked).
create/mkdir/symlink upsert the new inode and invalidate the new key's cached listing and
negative entry; unlink/rmdir detach the key (an open file keeps its inode, and its data through
a private staged copy, until closed); rename moves the objects (writer.py) and then the inodes.
chmod/chown/utimens are stored as ossfs's x-oss-meta-mode/uid/gid/mtime. A mount with ``-o ro``
has no write path: the kernel refuses changes with EROFS.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio
from cachetools import LRUCache

from ossmount.fs.attrs import (
    KEY_MAX,
    META_ATIME,
    META_CTIME,
    META_GID,
    META_MODE,
    META_MTIME,
    META_SYMLINK_TARGET,
    META_UID,
    META_XATTR,
    NAME_MAX,
    USER_METADATA_MAX,
    Attributes,
    Kind,
    attributes_from_info,
    decode_xattrs,
    encode_xattrs,
    kind_of_mode,
    native_symlink_path,
    parse_mtime_ns,
    posix_metadata,
    user_metadata_bytes,
)
from ossmount.fs.dircache import FOLDER_SUFFIX, DirEntry, DirSnapshot, Namespace
from ossmount.fs.inodes import Inode, InodeTable
from ossmount.fs.reader import FileReader, ReadCache, Spare
from ossmount.fs.writer import StagedFile, WriteStaging
from ossmount.oss.errors import NotFound, OssError, PreconditionFailed, group_failures
from ossmount.oss.model import ObjectInfo
from ossmount.oss.transfer import MAX_PART_SIZE, MAX_PARTS

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
SelfT = TypeVar("SelfT", bound="OssFs")

STATFS_BLOCKS = 1 << 40
STATFS_FILES = 1 << 32
# OSS's largest object (10,000 parts of 5 GiB, 48.8 TiB): a larger file is EFBIG.
MAX_FILE_SIZE = MAX_PARTS * MAX_PART_SIZE
# Directories whose in-memory mtime/ctime (entries changed through this mount) are remembered.
DIRECTORY_TIMES_KEPT = 100_000
# Page-cache pushes in flight for the whole mount; more spare bytes are dropped, not queued.
MAX_PAGE_PUSHES = 8


def _fuse_error_for(
    operation: str, args: tuple[object, ...], exc: Exception, target: str = ""
) -> pyfuse3.FUSEError:
    """The errno a failure of a handler reports: the one decision, for every handler.
    ``target`` names the key(s) the request was about, for the log line of an EIO."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    on = f" of {target!r}" if target else ""
    if isinstance(exc, OssError):
        log.debug("%s%r failed: %s", operation, args, exc)
        if exc.errno == errno.EIO:
            log.warning("%s%s failed (EIO): %s", operation, on, exc)
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, OSError):
        # The write path's own failures carry their errno: ENOSPC (staging budget), EIO
        # (upload failed after retries, data kept staged), EBUSY.
        log.warning("%s%s failed: %s", operation, on, exc)
        return pyfuse3.FUSEError(exc.errno or errno.EIO)
    log.error("internal error in %s%r", operation, args, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def _errno_boundary(
    handler: Callable[Concatenate[SelfT, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SelfT, P], Coroutine[Any, Any, T]]:
    async def wrapper(self: SelfT, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            # Concurrent requests fail as a group: its first failure decides (the others are
            # the same outage, or the Cancelled it caused).
            failures = group_failures(exc)
            first = failures[0] if failures else exc
            cause = first if isinstance(first, Exception) else exc
            target = self.request_target(handler.__name__, args)
            raise _fuse_error_for(handler.__name__, args, cause, target) from None

    wrapper.__name__ = handler.__name__
    wrapper.__qualname__ = handler.__qualname__
    wrapper.__doc__ = handler.__doc__
    return wrapper


@dataclass(frozen=True, slots=True)
class FsOptions:
    """Kernel-facing settings of the file system."""

    entry_timeout_s: float = 1.0
    attr_timeout_s: float = 1.0
    negative_timeout_s: float = 1.0
    stat_cache_ttl_s: float = 60.0
    block_size: int = 1024 * 1024
    direct_io: bool = False  # read-only opens bypass the page cache
    xattrs: bool = True  # False (-o noxattr): the xattr calls give ENOSYS


@dataclass(slots=True)
class DirHandle:
    inode: Inode
    snapshot: DirSnapshot


@dataclass(slots=True)
class FileHandle:
    """An open file: a reader of one object version (opened on first need for handles of
    staged files), and for handles opened for writing the shared staged file."""

    inode: Inode
    reader: FileReader | None
    etag: str | None
    staged: StagedFile | None = None
    append: bool = False
    # Readers of older versions, closed at release (a concurrent read may still use one).
    retired: list[FileReader] = field(default_factory=list)


def _new_attributes(
    kind: Kind,
    permissions: int,
    ctx: pyfuse3.RequestContext,
    parent: Inode,
    *,
    symlink_target: str | None = None,
) -> Attributes:
    """Attributes of a name the caller creates now in ``parent``: owned by the caller, exact,
    and empty (a symlink's size is its target's length). In a set-group-ID directory the
    group is the directory's, and a new directory is set-group-ID too (as on Linux disks)."""
    gid = ctx.gid
    if parent.attrs.permissions & stat.S_ISGID:
        gid = parent.attrs.gid
        if kind is Kind.DIR:
            permissions |= stat.S_ISGID
    return Attributes(
        kind=kind,
        size=len(os.fsencode(symlink_target)) if symlink_target is not None else 0,
        mtime_ns=time.time_ns(),
        permissions=permissions,
        uid=ctx.uid,
        gid=gid,
        symlink_target=symlink_target,
        exact=True,
    )


def _changed_attributes(
    current: Attributes, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
) -> Attributes:
    """``current`` with what a setattr sets, and ctime now. A time not set keeps its value:
    an atime that was reading as mtime is pinned before mtime moves, and the reverse."""
    now = time.time_ns()
    return replace(
        current,
        permissions=stat.S_IMODE(attr.st_mode) if fields.update_mode else current.permissions,
        uid=attr.st_uid if fields.update_uid else current.uid,
        gid=attr.st_gid if fields.update_gid else current.gid,
        mtime_ns=attr.st_mtime_ns if fields.update_mtime else current.mtime_ns,
        atime_ns=(
            attr.st_atime_ns
            if fields.update_atime
            else current.st_atime_ns
            if fields.update_mtime
            else current.atime_ns
        ),
        ctime_ns=now,
    )


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _checked_name(parent: Inode, name: bytes, *, directory: bool = False) -> str:
    """``name`` as text, or ENAMETOOLONG when it is over NAME_MAX bytes or its key (with the
    trailing "/" of a directory) would be over OSS's 1,023-byte limit: such a key could not be
    created, and a longer segment could never be listed."""
    key_bytes = len(parent.key.encode("utf-8", "surrogateescape")) + len(name) + int(directory)
    if len(name) > NAME_MAX or key_bytes > KEY_MAX:
        raise _fuse_error(errno.ENAMETOOLONG)
    return os.fsdecode(name)


class OssFs(pyfuse3.Operations):
    """The FUSE operations of one mount."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        namespace: Namespace,
        inodes: InodeTable,
        read_cache: ReadCache,
        options: FsOptions,
        *,
        staging: WriteStaging | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.inodes = inodes
        self.read_cache = read_cache
        self.options = options
        # The write path; None for a read-only mount.
        self.staging = staging
        # Inodes unlinked while open: the staged private copy their handles read, held by one
        # extra open that is released with the inode's last handle.
        self._detached: dict[int, StagedFile] = {}
        self._clock = clock
        self._dir_handles: dict[int, DirHandle] = {}
        self._file_handles: dict[int, FileHandle] = {}
        self._next_fh = 1
        # Per inode: the ETag whose data the kernel page cache may hold (keep_cache on open).
        self._kernel_cached_etag: dict[int, str] = {}
        # Page-cache pushes (see _push_spare_pages) in flight, per inode, and their waiters.
        self._page_pushes_enabled = not options.direct_io
        self._page_pushes: dict[int, int] = {}
        self._page_pushes_done: dict[int, trio.Event] = {}
        # Per directory key: when an entry of it last changed through this mount.
        self._directory_changed_ns: LRUCache[str, int] = LRUCache(maxsize=DIRECTORY_TIMES_KEPT)

    # -- helpers -------------------------------------------------------------------------

    def _inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise _fuse_error(errno.ENOENT)
        return inode

    def _entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attrs = inode.attrs
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode.ino
        entry.generation = 0
        entry.entry_timeout = self.options.entry_timeout_s
        entry.attr_timeout = self.options.attr_timeout_s
        entry.st_mode = attrs.st_mode
        entry.st_nlink = self._link_count(inode)
        entry.st_uid = attrs.uid
        entry.st_gid = attrs.gid
        entry.st_rdev = attrs.rdev
        entry.st_size = attrs.size
        entry.st_blksize = self.options.block_size
        entry.st_blocks = attrs.st_blocks
        entry.st_atime_ns = attrs.st_atime_ns
        entry.st_mtime_ns = attrs.mtime_ns
        entry.st_ctime_ns = attrs.st_ctime_ns
        if inode.is_dir:
            changed_ns = self._directory_changed_ns.get(inode.key)
            if changed_ns is not None and changed_ns > attrs.mtime_ns:
                entry.st_mtime_ns = changed_ns
                entry.st_ctime_ns = max(changed_ns, attrs.st_ctime_ns)
        return entry

    def _link_count(self, inode: Inode) -> int:
        """0 for a file unlinked while open; 2 plus its subdirectories for a directory whose
        complete listing is cached, else 1 ("unknown" to find/fts); 1 for everything else."""
        if self.inodes.by_key(inode.key) is not inode:
            return 0
        if not inode.is_dir:
            return 1
        listing = self.namespace.cached_listing(inode.key)
        return 1 if listing is None else 2 + listing.subdirectories

    def _directory_changed(self, directory: Inode) -> None:
        """An entry of ``directory`` was created, removed or renamed: its mtime and ctime are
        now. Kept in memory only (a marker put per create would cost a request), so that a
        refresh of the directory's attributes from a listing does not move them back."""
        now = time.time_ns()
        self._directory_changed_ns[directory.key] = now
        directory.attrs = replace(directory.attrs, mtime_ns=now, ctime_ns=now)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def _refresh(self, inode: Inode, *, reading: bool = False) -> Inode:
        """Re-read a file's attributes from OSS when they expired or the object changed;
        ``reading``: for an open to read, so a small file's body may come along (stat_file)."""
        if inode.is_dir or inode.attrs_fresh(self._clock()):
            return inode
        read_size = inode.attrs.size if reading else None
        read_etag = inode.attrs.etag if reading else None
        attrs = await self.namespace.stat_file(inode.key, read_size, read_etag)
        if attrs is None:
            self.inodes.detach(inode.key)
            raise _fuse_error(errno.ENOENT)
        inode.attrs = attrs
        inode.attrs_expire_at = self._clock() + self.options.stat_cache_ttl_s
        inode.stale = False
        return inode

    # Handlers whose first argument is a file or directory handle, not an inode.
    _HANDLE_OPERATIONS = frozenset(
        {"read", "write", "flush", "fsync", "release", "readdir", "releasedir", "fsyncdir"}
    )

    def request_target(self, operation: str, args: tuple[object, ...]) -> str:
        """The key a request is about (its first inode or handle, then a name if it has
        one), for log lines; "" when unknown."""
        if not args or not isinstance(args[0], int):
            return ""
        first = args[0]
        inode: Inode | None
        if operation in self._HANDLE_OPERATIONS:
            handle = self._file_handles.get(first) or self._dir_handles.get(first)
            inode = handle.inode if handle is not None else None
        else:
            inode = self.inodes.get(first)
        if inode is None:
            return ""
        target = inode.key
        if len(args) > 1 and isinstance(args[1], bytes):
            name = os.fsdecode(args[1])
            target = f"{target.rstrip('/')}/{name}" if target else name
        return target

    # -- namespace -----------------------------------------------------------------------

    @_errno_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if not parent.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        text = _checked_name(parent, name)
        staged = self._staged_key(parent.key + text)
        if staged is not None:
            known = self.inodes.by_key(staged.key)
            attrs: Attributes | None = self._staged_attrs(staged, known.attrs if known else None)
        else:
            attrs = await self.namespace.lookup(parent.key, text)
        if attrs is None:
            if self.options.negative_timeout_s > 0:
                # Inode 0 is a negative entry: the kernel itself remembers that the name is
                # missing for the timeout, so repeated probes never reach this process.
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = self.options.negative_timeout_s
                return negative
            raise _fuse_error(errno.ENOENT)
        inode = self.inodes.upsert(parent, text, attrs, self.options.stat_cache_ttl_s)
        self.inodes.remember(inode)
        return self._entry(inode)

    @_errno_boundary
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)
            if self.inodes.get(ino) is None:
                self._kernel_cached_etag.pop(ino, None)
        log.debug("kernel forgot %d inodes; %d known", len(inode_list), len(self.inodes))

    @_errno_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        staged = self._staged_of(node)
        if staged is not None:
            node.attrs = self._staged_attrs(staged, node.attrs)
            return self._entry(node)
        return self._entry(await self._refresh(node))

    @_errno_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._inode(inode)
        if node.kind is not Kind.SYMLINK:
            raise _fuse_error(errno.EINVAL)
        target = await self.namespace.read_symlink(node.key, node.attrs)
        if node.attrs.symlink_target is None:
            node.attrs = replace(node.attrs, symlink_target=target, size=len(os.fsencode(target)))
        return os.fsencode(target)

    @_errno_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._inode(inode)
        if not node.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        snapshot = self._with_staged_entries(await self.namespace.list_directory(node.key))
        fh = self._new_fh()
        self._dir_handles[fh] = DirHandle(node, snapshot)
        self.inodes.open(node)
        return fh

    @_errno_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets: 0 is ".", 1 is "..", 2 + i is snapshot entry i; next_id is offset + 1.
        handle = self._dir_handles.get(fh)
        if handle is None:
            raise _fuse_error(errno.EBADF)
        directory = handle.inode
        entries = handle.snapshot.entries
        for offset in range(start_id, len(entries) + 2):
            if offset < 2:
                dot_inode = directory
                if offset == 1:
                    dot_inode = self.inodes.get(directory.parent) or directory
                # The kernel takes no lookup reference for "." and "..".
                if not pyfuse3.readdir_reply(
                    token, b"." * (offset + 1), self._entry(dot_inode), offset + 1
                ):
                    return
                continue
            entry = entries[offset - 2]
            inode = self.inodes.upsert(
                directory, entry.name, entry.attrs, self.options.stat_cache_ttl_s
            )
            if not pyfuse3.readdir_reply(
                token, os.fsencode(entry.name), self._entry(inode), offset + 1
            ):
                self.inodes.release_unreferenced(inode)
                return
            self.inodes.remember(inode)

    @_errno_boundary
    async def releasedir(self, fh: int) -> None:
        handle = self._dir_handles.pop(fh, None)
        if handle is not None:
            self.inodes.close(handle.inode)

    @_errno_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = self.options.block_size
        data.f_frsize = 4096
        data.f_blocks = STATFS_BLOCKS
        data.f_bfree = STATFS_BLOCKS
        data.f_bavail = STATFS_BLOCKS
        data.f_files = STATFS_FILES
        data.f_ffree = STATFS_FILES
        data.f_favail = STATFS_FILES
        data.f_namemax = 255
        return data

    # -- files ---------------------------------------------------------------------------

    @_errno_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        info = await self._open(inode, flags)
        # The kernel drops the file's pages when it gets this reply (keep_cache off): no
        # page-cache push of older data may land after that.
        await self._drain_page_pushes(inode)
        return info

    async def _open(self, inode: int, flags: int) -> pyfuse3.FileInfo:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable and self.staging is None:
            raise _fuse_error(errno.EROFS)
        node = self._inode(inode)
        if node.is_dir:
            raise _fuse_error(errno.EISDIR)
        if node.kind is Kind.SYMLINK:
            # The kernel follows symlinks before open; only O_PATH|O_NOFOLLOW lands here.
            raise _fuse_error(errno.ELOOP)
        if writable or self._staged_of(node) is not None:
            return await self._open_staged(node, flags, writable=writable)
        node = await self._refresh(node, reading=True)
        etag = node.attrs.etag
        if etag is None:
            node.attrs_expire_at = 0.0
            node = await self._refresh(node, reading=True)
            etag = node.attrs.etag
        assert etag is not None
        reader = self.read_cache.open(node.key, node.attrs.size, etag, node.attrs.crc64)
        fh = self._new_fh()
        self._file_handles[fh] = FileHandle(node, reader, etag)
        self.inodes.open(node)
        keep_cache = self._kernel_cached_etag.get(node.ino) == etag
        self._kernel_cached_etag[node.ino] = etag
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=self.options.direct_io)

    @_errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._file_handles.get(fh)
        if handle is None:
            raise _fuse_error(errno.EBADF)
        staged = handle.staged or self._staged_of(handle.inode)
        if staged is not None:
            data = await staged.read(off, size)
            if data is not None:
                return data
            # Nothing staged yet: the object itself, at the version the staged file is based on.
            reader = await self._reader_at(handle, staged.remote_etag, staged.size)
        elif handle.reader is None:
            # A handle opened while the file was staged, now uploaded: the current version.
            node = await self._refresh(handle.inode)
            reader = await self._reader_at(handle, node.attrs.etag, node.attrs.size)
        else:
            reader = handle.reader
        try:
            data = await reader.read(off, size)
        except (NotFound, PreconditionFailed) as exc:
            # A file this mount renamed (or whose directory it renamed) is read at its new key.
            moved = await self._follow_rename(handle, reader)
            if moved is not None:
                return await moved.read(off, size)
            if isinstance(exc, PreconditionFailed):
                self._changed_while_open(handle)
            raise
        self._push_spare_pages(handle, reader)
        return data

    # Page-cache pushes
    # -----------------
    # A random read of a file in the data cache offers its whole 1 MiB block (FileReader.
    # take_spare). Handing it to the kernel's page cache (FUSE_NOTIFY_STORE) answers the next
    # reads there without a FUSE request: once a random reader touched every block, it reads
    # at page-cache speed. The kernel locks each page it stores, and pages of reads it sent
    # and we have not answered yet are locked until we answer: so the push (and its disk read)
    # runs in a worker thread, never on the trio thread that answers. It is only made while the
    # page cache may hold this version (_kernel_cached_etag, no staged data), checked again in
    # the thread; a handler after whose reply the kernel drops or cuts the pages (open, create,
    # truncate) first waits for the pushes in flight, so none lands after the drop with older
    # data.

    def _push_spare_pages(self, handle: FileHandle, reader: FileReader) -> None:
        spare = reader.take_spare()
        if spare is None:
            return
        node = handle.inode
        if (
            not self._page_pushes_enabled
            or self._kernel_cached_etag.get(node.ino) != reader.etag
            or handle.staged is not None
            or self._staged_of(node) is not None
            or sum(self._page_pushes.values()) >= MAX_PAGE_PUSHES
        ):
            reader.return_spare(spare)
            return
        self._page_pushes[node.ino] = self._page_pushes.get(node.ino, 0) + 1
        self.read_cache.nursery.start_soon(self._push_pages, node.ino, reader.etag, spare)

    async def _push_pages(self, ino: int, etag: str, spare: Spare) -> None:
        try:
            await trio.to_thread.run_sync(self._notify_store, ino, etag, spare)
        finally:
            left = self._page_pushes[ino] - 1
            if left:
                self._page_pushes[ino] = left
            else:
                del self._page_pushes[ino]
                done = self._page_pushes_done.pop(ino, None)
                if done is not None:
                    done.set()

    def _notify_store(self, ino: int, etag: str, spare: Spare) -> None:
        """In a worker thread: store ``spare`` in the page cache of ``ino`` if still allowed."""
        data = spare.load()
        if data is None or self._kernel_cached_etag.get(ino) != etag:
            return
        try:
            pyfuse3.notify_store(ino, spare.offset, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
                self._page_pushes_enabled = False
            log.debug("page cache push to inode %d failed: %s", ino, exc)

    async def _drain_page_pushes(self, ino: int) -> None:
        while self._page_pushes.get(ino):
            done = self._page_pushes_done.setdefault(ino, trio.Event())
            await done.wait()

    async def _follow_rename(self, handle: FileHandle, reader: FileReader) -> FileReader | None:
        """The handle's reader at the key its inode has now, when this mount renamed the file
        since the reader was opened and the object there is the same version (ETag, or size and
        CRC-64, which a copy keeps); else None."""
        node = handle.inode
        if reader.key == node.key:
            return None
        info = await self._head_or_none(node.key)
        if info is None or info.size != reader.size:
            return None
        same_crc = info.crc64 is not None and info.crc64 == reader.expected_crc64
        if info.etag != reader.etag and not same_crc:
            return None
        log.debug("%s: open handle follows its rename to %s", reader.key, node.key)
        handle.retired.append(reader)
        handle.reader = self.read_cache.open(node.key, info.size, info.etag, info.crc64)
        handle.etag = info.etag
        return handle.reader

    def _changed_while_open(self, handle: FileHandle) -> None:
        """The object was replaced while open: this handle fails with EIO, the next open sees
        the new version (never a mix of two versions in one read stream)."""
        inode = handle.inode
        log.warning("%s changed while open (ETag %s): read fails with EIO", inode.key, handle.etag)
        inode.stale = True
        self._kernel_cached_etag.pop(inode.ino, None)
        self.namespace.invalidate(inode.key)
        self.read_cache.invalidate(inode.key, handle.etag)
        raise _fuse_error(errno.EIO)

    @_errno_boundary
    async def release(self, fh: int) -> None:
        handle = self._file_handles.pop(fh, None)
        if handle is None:
            return
        try:
            for reader in [*handle.retired, handle.reader]:
                if reader is not None:
                    await reader.close()
            if handle.staged is not None:
                await handle.staged.release()
        finally:
            self.inodes.close(handle.inode)
            if handle.inode.open_count == 0:
                detached = self._detached.pop(handle.inode.ino, None)
                if detached is not None:
                    await detached.release()

    # -- writes --------------------------------------------------------------------------
    # Everything that changes the bucket. Decisions about data (staging, uploads, journal,
    # renames of objects) are in writer.py; these handlers translate and keep the inode table
    # and the caches in step.

    def _writable(self) -> WriteStaging:
        if self.staging is None:
            raise _fuse_error(errno.EROFS)
        return self.staging

    def _dir_inode(self, ino: int) -> Inode:
        inode = self._inode(ino)
        if not inode.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        return inode

    def _staged_key(self, key: str) -> StagedFile | None:
        return None if self.staging is None else self.staging.staged(key)

    def _staged_of(self, inode: Inode) -> StagedFile | None:
        """The staged data an inode reads as: its private copy if it was unlinked while open,
        else the staged file of its key while the inode still owns that key."""
        detached = self._detached.get(inode.ino)
        if detached is not None:
            return detached
        if self.staging is None or inode.kind is not Kind.FILE:
            return None
        if self.inodes.by_key(inode.key) is not inode:
            return None
        return self.staging.staged(inode.key)

    def _staged_attrs(self, staged: StagedFile, base: Attributes | None) -> Attributes:
        """Attributes of a staged file: those known (or its staged metadata) with its size."""
        if base is None or base.kind is Kind.DIR:
            # (An ossfs symlink is a staged object too while its metadata changes.)
            info = ObjectInfo(
                staged.key, staged.size, "", time.time(), "Normal", metadata=staged.metadata
            )
            base = replace(attributes_from_info(info, self.namespace.defaults), etag=None)
        return replace(base, size=staged.size)

    def _with_staged_entries(self, snapshot: DirSnapshot) -> DirSnapshot:
        """A listing with the staged files of the directory: new ones (not in OSS yet) added,
        listed ones with their staged size."""
        if self.staging is None:
            return snapshot
        staged_files = self.staging.staged_under(snapshot.prefix, direct=True)
        if not staged_files:
            return snapshot
        entries = {entry.name: entry for entry in snapshot.entries}
        for staged in staged_files:
            name = staged.key[len(snapshot.prefix) :]
            listed = entries.get(name)
            if listed is not None and listed.attrs.kind is Kind.DIR:
                continue
            known = self.inodes.by_key(staged.key)
            base = known.attrs if known is not None else listed.attrs if listed else None
            entries[name] = DirEntry(name, self._staged_attrs(staged, base))
        ordered = tuple(entries[name] for name in sorted(entries))
        return DirSnapshot(snapshot.prefix, ordered, snapshot.taken_at)

    async def _head_or_none(self, key: str) -> ObjectInfo | None:
        try:
            return await self.namespace.client.head_object(self.namespace.bucket, key)
        except NotFound:
            return None

    async def _reader_at(self, handle: FileHandle, etag: str | None, size: int) -> FileReader:
        """The handle's reader of version ``etag`` (reopened when the version changed)."""
        if etag is None:
            raise _fuse_error(errno.EIO)
        reader = handle.reader
        if reader is not None and reader.etag == etag and reader.size == size:
            return reader
        if reader is not None:
            handle.retired.append(reader)
        node = handle.inode
        crc64 = node.attrs.crc64 if node.attrs.etag == etag else None
        handle.reader = self.read_cache.open(node.key, size, etag, crc64)
        handle.etag = etag
        return handle.reader

    def _published(self, node: Inode, staged: StagedFile) -> None:
        """After a successful flush: the inode describes the uploaded object."""
        if staged.dirty or staged.remote_etag is None or self.inodes.by_key(node.key) is not node:
            return  # unlinked meanwhile, or nothing was uploaded
        mtime_ns = parse_mtime_ns(staged.metadata.get(META_MTIME)) or node.attrs.mtime_ns
        node.attrs = replace(
            node.attrs,
            size=staged.size,
            etag=staged.remote_etag,
            crc64=staged.remote_crc64,
            mtime_ns=mtime_ns,
            exact=True,
        )
        node.attrs_expire_at = self._clock() + self.options.stat_cache_ttl_s
        node.stale = False
        self.namespace.note_entry(node.key, node.attrs)
        self.read_cache.invalidate(node.key)
        self._kernel_cached_etag.pop(node.ino, None)
        # Read-only handles of this file read the new version from now on (written by this
        # mount, so no mix: until now they read the staged data).
        for handle in self._file_handles.values():
            if handle.inode is node and handle.staged is None and handle.reader is not None:
                handle.retired.append(handle.reader)
                handle.reader = None

    def _new_file_handle(self, node: Inode, handle: FileHandle) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self._file_handles[fh] = handle
        self.inodes.open(node)
        # The kernel's pages of this file may differ from any object version from now on.
        self._kernel_cached_etag.pop(node.ino, None)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    async def _open_staged(self, node: Inode, flags: int, *, writable: bool) -> pyfuse3.FileInfo:
        """open() of a file that is (or will now be) staged."""
        staged = self._staged_of(node)
        if writable:
            if node.ino in self._detached:
                raise _fuse_error(errno.ENOENT)  # unlinked: cannot be opened for writing again
            staging = self._writable()
            existing = None if staged is not None else await self._head_or_none(node.key)
            truncate = bool(flags & os.O_TRUNC)
            staged = await staging.open(
                node.key, existing, truncate=truncate, append=bool(flags & os.O_APPEND)
            )
            if truncate:
                node.attrs = replace(node.attrs, size=0, mtime_ns=time.time_ns(), ctime_ns=None)
        handle = FileHandle(
            node,
            None,
            staged.remote_etag if staged is not None else None,
            staged=staged if writable else None,
            append=bool(flags & os.O_APPEND),
        )
        return self._new_file_handle(node, handle)

    @_errno_boundary
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        info, entry = await self._create(parent_inode, name, mode, flags, ctx)
        await self._drain_page_pushes(entry.st_ino)
        return info, entry

    async def _create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._dir_inode(parent_inode)
        staging = self._writable()
        text = _checked_name(parent, name)
        key = parent.key + text
        attrs = _new_attributes(Kind.FILE, stat.S_IMODE(mode) & ~ctx.umask, ctx, parent)
        staged = await staging.open(key, None, truncate=True, exclusive=bool(flags & os.O_EXCL))
        metadata = posix_metadata(attrs)
        staged.set_metadata({field: metadata[field] for field in (META_MODE, META_UID, META_GID)})
        inode = self.inodes.upsert(parent, text, attrs, self.options.stat_cache_ttl_s)
        self._directory_changed(parent)
        self.inodes.remember(inode)
        self.namespace.note_entry(key, inode.attrs)
        handle = FileHandle(inode, None, None, staged=staged, append=bool(flags & os.O_APPEND))
        return self._new_file_handle(inode, handle), self._entry(inode)

    @_errno_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._file_handles.get(fh)
        if handle is None or handle.staged is None:
            raise _fuse_error(errno.EBADF)
        staged = handle.staged
        # O_APPEND: at the end as the writer knows it (the kernel's idea of the size may lag).
        offset = staged.size if handle.append else off
        if offset + len(buf) > MAX_FILE_SIZE:
            raise _fuse_error(errno.EFBIG)
        written = await staged.write(offset, buf)
        node = handle.inode
        node.attrs = replace(node.attrs, size=staged.size, mtime_ns=time.time_ns(), ctime_ns=None)
        return written

    @_errno_boundary
    async def flush(self, fh: int) -> None:
        # close(): a handle opened for writing uploads; a read-only one must not publish
        # another handle's unfinished writes.
        await self._upload_staged(fh)

    @_errno_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._upload_staged(fh)

    async def _upload_staged(self, fh: int) -> None:
        """Upload what the handle wrote (close and fsync wait for this), if it wrote."""
        handle = self._file_handles.get(fh)
        if handle is None or handle.staged is None:
            return
        await handle.staged.flush()
        self._published(handle.inode, handle.staged)

    @_errno_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            # The kernel cuts the file's pages to the new size on this reply: the pages kept
            # belong to no object version, and no push may land after the cut.
            self._kernel_cached_etag.pop(inode, None)
        entry = await self._setattr(inode, attr, fields, fh, ctx)
        await self._drain_page_pushes(inode)
        return entry

    async def _setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._inode(inode)
        staging = self._writable()
        if fields.update_size and attr.st_size > MAX_FILE_SIZE:
            raise _fuse_error(errno.EFBIG)
        current = node.attrs
        changed = _changed_attributes(current, attr, fields)
        names = [
            name
            for name, wanted in (
                (META_MODE, fields.update_mode),
                (META_UID, fields.update_uid),
                (META_GID, fields.update_gid),
            )
            if wanted
        ]
        if fields.update_size and attr.st_size == current.size and not fields.update_mtime:
            # truncate(2) to the same size still moves mtime and ctime (as Linux file systems
            # do) but uploads no data: store the times.
            now_ns = time.time_ns()
            changed = replace(changed, mtime_ns=now_ns, ctime_ns=now_ns)
            changed = replace(changed, atime_ns=current.st_atime_ns)
            names += [META_MTIME, META_CTIME]
        elif fields.update_size:
            # Data changes: the upload's Last-Modified is the new mtime and ctime. (truncate(2)
            # sends no time: the file system moves mtime when the size changes.)
            if not fields.update_mtime:
                changed = replace(changed, mtime_ns=time.time_ns(), atime_ns=current.st_atime_ns)
            changed = replace(changed, ctime_ns=None)
        elif names or fields.update_mtime or fields.update_atime:
            # Every change of metadata stores mtime too (else the copy's new Last-Modified
            # would move it: chown must not), and the ctime of the change.
            names += [META_MTIME, META_CTIME]
            if changed.atime_ns is not None:
                names.append(META_ATIME)
        if node.is_dir:
            if fields.update_mtime:
                self._directory_changed_ns.pop(node.key, None)
            await self._set_directory_attributes(node, changed, bool(names))
        elif node.kind is Kind.SYMLINK and current.object_type == "Symlink":
            if names:
                await self._set_native_symlink_attributes(node, changed)
        elif names or fields.update_size:
            metadata = {name: posix_metadata(changed)[name] for name in names}
            size = attr.st_size if fields.update_size else None
            await self._set_file_attributes(node, staging, fh, size, metadata)
            node.attrs = replace(
                node.attrs,
                permissions=changed.permissions,
                uid=changed.uid,
                gid=changed.gid,
                mtime_ns=changed.mtime_ns,
                atime_ns=changed.atime_ns,
                ctime_ns=changed.ctime_ns,
            )
            if self.inodes.by_key(node.key) is node:
                # The cached listing too: readdirplus hands its attributes to the kernel.
                self.namespace.note_entry(node.key, node.attrs)
        return self._entry(node)

    # -- extended attributes -------------------------------------------------------------
    # Stored as ossfs does, in one x-oss-meta-xattr header; read from the attributes a HEAD
    # (or a listing's HEADs) brought, so getxattr and listxattr after `ls -l` cost no request.

    def _check_xattrs(self, name: bytes) -> None:
        """ENOSYS with -o noxattr (the kernel then stops sending the call). EOPNOTSUPP for
        POSIX ACLs, which are not implemented (not "no such attribute", which would claim the
        ACL is empty), and for SELinux labels, which are not kept: `ls -l` asks for one per
        name until told they are unsupported, which it remembers for the whole mount."""
        if not self.options.xattrs:
            raise _fuse_error(errno.ENOSYS)
        if name.startswith(b"system.posix_acl_") or name == b"security.selinux":
            raise _fuse_error(errno.EOPNOTSUPP)

    async def _exact_attributes(self, node: Inode) -> Attributes:
        """The node's attributes with its user metadata known (a HEAD if only listed)."""
        if node.is_dir or self._staged_of(node) is not None:
            return node.attrs
        node = await self._refresh(node)
        if not node.attrs.exact:
            node.attrs_expire_at = 0.0
            node = await self._refresh(node)
        return node.attrs

    @_errno_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._check_xattrs(name)
        node = self._inode(inode)
        if name.startswith(b"security."):
            # Asked by `ls -l` for every name (security.selinux) and by the kernel before
            # every write (security.capability): answered from the attributes at hand, so
            # neither costs a request, also where a listing brought no user metadata.
            attrs = node.attrs
        else:
            attrs = await self._exact_attributes(node)
        value = decode_xattrs(attrs.xattrs).get(os.fsdecode(name))
        if value is None:
            raise _fuse_error(errno.ENODATA)
        return value

    @_errno_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        self._check_xattrs(b"")
        node = self._inode(inode)
        return [
            os.fsencode(name) for name in decode_xattrs((await self._exact_attributes(node)).xattrs)
        ]

    @_errno_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        # (pyfuse3 checks XATTR_CREATE and XATTR_REPLACE through getxattr before this.)
        self._check_xattrs(name)
        node = self._inode(inode)
        xattrs = decode_xattrs((await self._exact_attributes(node)).xattrs)
        xattrs[os.fsdecode(name)] = value
        await self._store_xattrs(node, xattrs)

    @_errno_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_xattrs(name)
        node = self._inode(inode)
        xattrs = decode_xattrs((await self._exact_attributes(node)).xattrs)
        if xattrs.pop(os.fsdecode(name), None) is None:
            raise _fuse_error(errno.ENODATA)
        await self._store_xattrs(node, xattrs)

    async def _store_xattrs(self, node: Inode, xattrs: dict[str, bytes]) -> None:
        """Store the node's whole set of extended attributes (and the ctime of the change)."""
        staging = self._writable()
        now = time.time_ns()
        changed = replace(node.attrs, xattrs=encode_xattrs(xattrs), ctime_ns=now)
        metadata = posix_metadata(changed)
        if user_metadata_bytes(metadata) > USER_METADATA_MAX:
            log.warning(
                "setxattr on %r refused: its user metadata would be %d bytes, over OSS's limit "
                "of %d (ENOSPC)",
                node.key,
                user_metadata_bytes(metadata),
                USER_METADATA_MAX,
            )
            raise _fuse_error(errno.ENOSPC)
        if node.is_dir:
            await self._set_directory_attributes(node, changed, True)
        elif node.kind is Kind.SYMLINK and changed.object_type == "Symlink":
            await self._set_native_symlink_attributes(node, changed)
        else:
            stored = {name: metadata[name] for name in (META_XATTR, META_MTIME, META_CTIME)}
            await self._set_file_attributes(node, staging, None, None, stored)
            node.attrs = replace(node.attrs, xattrs=changed.xattrs, ctime_ns=now)

    async def _set_native_symlink_attributes(self, node: Inode, changed: Attributes) -> None:
        """An OSS symlink keeps its owner, mode and times in its own x-oss-meta-*: PutSymlink
        again, same target, new metadata (a symlink cannot be copied onto itself)."""
        client, bucket = self.namespace.client, self.namespace.bucket
        link = await client.get_symlink_info(bucket, node.key)
        metadata = {**link.metadata, **posix_metadata(changed)}
        metadata.pop(META_SYMLINK_TARGET, None)
        put = await client.put_symlink(
            bucket, node.key, link.symlink_target or "", metadata=metadata
        )
        node.attrs = replace(changed, etag=put.etag)
        self.namespace.note_entry(node.key, node.attrs)

    async def _set_directory_attributes(
        self, node: Inode, changed: Attributes, store: bool
    ) -> None:
        if store and node.key:
            # The directory's marker object carries its metadata (created if it was implicit).
            await self.namespace.client.put_object(
                self.namespace.bucket, node.key, b"", metadata=posix_metadata(changed)
            )
            self.namespace.invalidate(node.key)
        # (The bucket's root has no marker: its attributes hold until unmount.)
        node.attrs = changed

    async def _set_file_attributes(
        self,
        node: Inode,
        staging: WriteStaging,
        fh: int | None,
        size: int | None,
        metadata: dict[str, str],
    ) -> None:
        """truncate and chmod/chown/utimens of a file: on its staged file, published at once
        unless a handle has it open for writing (then its close() publishes)."""
        handle = self._file_handles.get(fh) if fh is not None else None
        staged = handle.staged if handle is not None else None
        held = False
        if staged is None:
            staged = self._detached.get(node.ino)
        if staged is None:
            existing_staged = self._staged_of(node)
            existing = None if existing_staged is not None else await self._head_or_none(node.key)
            if existing_staged is None and existing is None:
                raise _fuse_error(errno.ENOENT)
            staged = await staging.open(node.key, existing, truncate=False)
            held = True
        try:
            if size is not None:
                await staged.truncate(size)
            if metadata:
                staged.set_metadata(metadata)
            if held and staged.open_handles == 1:
                await staged.flush()
                self._published(node, staged)
        finally:
            if held:
                await staged.release()
        node.attrs = replace(node.attrs, size=staged.size)

    @_errno_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._dir_inode(parent_inode)
        self._writable()
        text = _checked_name(parent, name, directory=True)
        key = parent.key + text + "/"
        attrs = _new_attributes(Kind.DIR, stat.S_IMODE(mode) & ~ctx.umask, ctx, parent)
        await self.namespace.client.put_object(
            self.namespace.bucket, key, b"", metadata=posix_metadata(attrs)
        )
        self.namespace.note_entry(key, attrs)
        self.namespace.note_empty_directory(key)
        inode = self.inodes.upsert(parent, text, attrs, self.options.stat_cache_ttl_s)
        self._directory_changed(parent)
        self.inodes.remember(inode)
        return self._entry(inode)

    @_errno_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """mkfifo, mknod and bind() of a Unix socket: a zero-byte object whose x-oss-meta-mode
        carries the file type (ossfs's form), plus x-oss-meta-rdev for devices. A FIFO or a
        socket works between local processes through the kernel; nothing of it is in OSS."""
        parent = self._dir_inode(parent_inode)
        self._writable()
        kind = kind_of_mode(mode)
        if kind is None or kind is Kind.DIR or kind is Kind.SYMLINK:
            raise _fuse_error(errno.EINVAL)
        text = _checked_name(parent, name)
        key = parent.key + text
        attrs = replace(
            _new_attributes(kind, stat.S_IMODE(mode) & ~ctx.umask, ctx, parent),
            rdev=rdev if kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE) else 0,
        )
        put = await self.namespace.client.put_object(
            self.namespace.bucket, key, b"", metadata=posix_metadata(attrs)
        )
        attrs = replace(attrs, etag=put.etag, crc64=put.crc64)
        self.namespace.note_entry(key, attrs)
        inode = self.inodes.upsert(parent, text, attrs, self.options.stat_cache_ttl_s)
        self._directory_changed(parent)
        self.inodes.remember(inode)
        return self._entry(inode)

    @_errno_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """Hard links cannot exist in OSS: EPERM, what POSIX gives a file system without them
        (after ENAMETOOLONG for a name that could not exist either)."""
        _checked_name(self._dir_inode(new_parent_inode), new_name)
        raise _fuse_error(errno.EPERM)

    async def _directory_is_empty(self, prefix: str) -> bool:
        """True when nothing but the directory's own marker is under ``prefix``."""
        if self._writable().staged_under(prefix):
            return False
        page = await self.namespace.client.list_objects_page(
            self.namespace.bucket, prefix=prefix, max_keys=2
        )
        return not page.prefixes and all(item.key == prefix for item in page.objects)

    @_errno_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._dir_inode(parent_inode)
        self._writable()
        key = parent.key + os.fsdecode(name) + "/"
        if not await self._directory_is_empty(key):
            raise _fuse_error(errno.ENOTEMPTY)
        client, bucket = self.namespace.client, self.namespace.bucket
        await client.delete_object(bucket, key)
        await client.delete_object(bucket, key[:-1] + FOLDER_SUFFIX)
        self.inodes.detach(key)
        self._directory_changed(parent)
        self.namespace.note_entry(key, None)
        self.namespace.forget_listing(key)

    @_errno_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._dir_inode(parent_inode)
        staging = self._writable()
        key = parent.key + os.fsdecode(name)
        await self._keep_open_handles_working(key)
        async with staging.removing(key):
            await self.namespace.client.delete_object(self.namespace.bucket, key)
        self.inodes.detach(key)
        self._directory_changed(parent)
        self.namespace.note_entry(key, None)
        self.read_cache.invalidate(key)

    async def _keep_open_handles_working(self, key: str) -> None:
        """Before the object at ``key`` is deleted or replaced by a rename: if the file is open
        here, its handles get a private local copy to go on with (read, write, fstat) until
        the last of them is closed; it is never uploaded (see WriteStaging.removing)."""
        node = self.inodes.by_key(key)
        if node is None or node.kind is not Kind.FILE or node.open_count == 0:
            return
        if node.ino in self._detached:
            return
        staging = self._writable()
        staged = staging.staged(key)
        existing = None if staged is not None else await self._head_or_none(key)
        if staged is None and existing is None:
            return
        private = await staging.open(key, existing, truncate=False)
        self._detached[node.ino] = private
        await private.make_private()

    @staticmethod
    def _native_symlink_key(link_key: str, target: str) -> str | None:
        """The key an OSS symlink at ``link_key`` must point to for ``readlink`` to give back
        exactly ``target``; None when no key can (absolute, outside the bucket, not normal)."""
        if not target or target.startswith("/"):
            return None
        key = posixpath.normpath(posixpath.join(posixpath.dirname(link_key), target))
        if key in (".", "..") or key.startswith("../"):
            return None
        if len(key.encode("utf-8", "surrogateescape")) > KEY_MAX:
            return None  # (stored as an ossfs symlink instead, the target in the body)
        return key if native_symlink_path(link_key, key) == target else None

    @_errno_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._dir_inode(parent_inode)
        self._writable()
        text = _checked_name(parent, name)
        key = parent.key + text
        target_text = os.fsdecode(target)
        attrs = _new_attributes(Kind.SYMLINK, 0o777, ctx, parent, symlink_target=target_text)
        metadata = posix_metadata(attrs)
        del metadata[META_SYMLINK_TARGET]  # in the object itself (the target key or the body)
        client, bucket = self.namespace.client, self.namespace.bucket
        target_key = self._native_symlink_key(key, target_text)
        if target_key is not None:
            result = await client.put_symlink(bucket, key, target_key, metadata=metadata)
            attrs = replace(attrs, object_type="Symlink", etag=result.etag)
        else:
            # Absolute or outside the bucket: an ossfs symlink (S_IFLNK, the target as body).
            put = await client.put_object(bucket, key, target, metadata=metadata)
            attrs = replace(attrs, etag=put.etag)
        self.namespace.note_entry(key, attrs)
        inode = self.inodes.upsert(parent, text, attrs, self.options.stat_cache_ttl_s)
        self._directory_changed(parent)
        self.inodes.remember(inode)
        return self._entry(inode)

    async def _attributes_at(self, parent: Inode, name: str) -> Attributes | None:
        staged = self._staged_key(parent.key + name)
        if staged is not None:
            known = self.inodes.by_key(staged.key)
            return self._staged_attrs(staged, known.attrs if known else None)
        return await self.namespace.lookup(parent.key, name)

    @_errno_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse_error(errno.EINVAL)
        staging = self._writable()
        old_parent = self._dir_inode(parent_inode_old)
        new_parent = self._dir_inode(parent_inode_new)
        old_name = os.fsdecode(name_old)
        new_name = _checked_name(new_parent, name_new)
        source = await self._attributes_at(old_parent, old_name)
        if source is None:
            raise _fuse_error(errno.ENOENT)
        target = await self._attributes_at(new_parent, new_name)
        if target is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise _fuse_error(errno.EEXIST)
        if source.kind is Kind.DIR:
            old_key = old_parent.key + old_name + "/"
            new_key = new_parent.key + new_name + "/"
            if new_key.startswith(old_key):
                raise _fuse_error(errno.EINVAL)
            _checked_name(new_parent, name_new, directory=True)
            if target is not None and target.kind is not Kind.DIR:
                raise _fuse_error(errno.ENOTDIR)
            if target is not None and not await self._directory_is_empty(new_key):
                raise _fuse_error(errno.ENOTEMPTY)
            await staging.rename_directory(old_key, new_key)
            # Listings, HEAD results and missing names at or below either prefix are all
            # out of date now.
            self.namespace.forget_tree(old_key)
            self.namespace.forget_tree(new_key)
            moved_attrs = source
        else:
            old_key = old_parent.key + old_name
            new_key = new_parent.key + new_name
            if target is not None and target.kind is Kind.DIR:
                raise _fuse_error(errno.EISDIR)
            if target is not None:
                await self._keep_open_handles_working(new_key)
            new_info = await staging.rename_file(
                old_key,
                new_key,
                no_replace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                symlink=source.object_type == "Symlink",
            )
            moved_attrs = source
            if new_info is not None:
                moved_attrs = replace(
                    source,
                    etag=new_info.etag,
                    crc64=new_info.crc64,
                    last_modified=new_info.last_modified,
                )
            for key in (old_key, new_key):
                self.read_cache.invalidate(key)
        self._directory_changed(old_parent)
        self._directory_changed(new_parent)
        # The replaced file's inode (open handles keep it) leaves the name even when the kernel
        # does not know the moved one: a lookup of the name must not find the old file.
        self.inodes.detach(new_key)
        inode = self.inodes.by_key(old_key)
        if inode is not None:
            inode.attrs = replace(inode.attrs, ctime_ns=time.time_ns())
            if inode.kind is Kind.FILE:
                inode.attrs = replace(
                    inode.attrs,
                    etag=moved_attrs.etag,
                    crc64=moved_attrs.crc64,
                    last_modified=moved_attrs.last_modified,
                )
            self.inodes.rename(inode, new_parent, new_name)
            self._kernel_cached_etag.pop(inode.ino, None)
            moved_attrs = inode.attrs
        self.namespace.note_entry(old_key, None)
        self.namespace.note_entry(new_key, moved_attrs)
