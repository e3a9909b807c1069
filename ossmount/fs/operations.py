"""OssFs: the FUSE operations, kept thin, and the file system's one errno boundary.

Every handler runs inside :func:`_errno_boundary`: an :class:`OssError` becomes
``pyfuse3.FUSEError(exc.errno)`` (the errno table lives in ossmount/oss/errors.py), a
``FUSEError`` passes through, and anything else is logged with its traceback and reported as
EIO, because an exception escaping a handler would stop pyfuse3's main loop.

The namespace (what is at a key, what is in a directory) comes from :mod:`dircache`; inode
numbers and lookup counts from :mod:`inodes`; file data from :mod:`reader`.

Part 1 is read-only: the mount is made with the kernel's ``ro`` option, and open() refuses
write access with EROFS.

Where part 2 (writes) plugs in:

* a :class:`FileHandle` gains a writer (fs/writer.py) beside its reader; read() of a handle
  (or of an inode) with staged data reads the staged file, so one mount reads its own writes;
* create/mkdir/symlink upsert the new inode and call ``Namespace.invalidate`` on the new key
  (which drops the parent's cached listing and the negative entry); unlink/rmdir call
  ``InodeTable.detach`` (an open file keeps its inode through ``open_count``) and invalidate;
* rename calls ``InodeTable.rename`` (which moves every known inode below a directory) and
  invalidates both parents' listings;
* setattr writes mode/uid/gid/mtime with ``attrs.posix_metadata`` (ossfs's names) and replaces
  the inode's attributes, which then stay valid by ETag in the stat cache.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3

from ossmount.fs.attrs import Kind
from ossmount.fs.dircache import DirSnapshot, Namespace
from ossmount.fs.inodes import Inode, InodeTable
from ossmount.fs.reader import FileReader, ReadCache
from ossmount.oss.errors import OssError, PreconditionFailed

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
SelfT = TypeVar("SelfT", bound="OssFs")

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
STATFS_BLOCKS = 1 << 40
STATFS_FILES = 1 << 32


def _errno_boundary(
    handler: Callable[Concatenate[SelfT, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SelfT, P], Coroutine[Any, Any, T]]:
    async def wrapper(self: SelfT, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OssError as exc:
            log.debug("%s%r failed: %s", handler.__name__, args, exc)
            if exc.errno == errno.EIO:
                log.warning("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from exc
        except Exception:
            log.exception("internal error in %s%r", handler.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

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


@dataclass(slots=True)
class DirHandle:
    inode: Inode
    snapshot: DirSnapshot


@dataclass(slots=True)
class FileHandle:
    """An open file. Part 2 adds a writer beside the reader."""

    inode: Inode
    reader: FileReader
    etag: str


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.inodes = inodes
        self.read_cache = read_cache
        self.options = options
        self._clock = clock
        self._dir_handles: dict[int, DirHandle] = {}
        self._file_handles: dict[int, FileHandle] = {}
        self._next_fh = 1
        # Per inode: the ETag whose data the kernel page cache may hold (keep_cache on open).
        self._kernel_cached_etag: dict[int, str] = {}

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
        # 1 for directories: "unknown number of subdirectories" to find/fts.
        entry.st_nlink = 1
        entry.st_uid = attrs.uid
        entry.st_gid = attrs.gid
        entry.st_rdev = 0
        entry.st_size = attrs.size
        entry.st_blksize = self.options.block_size
        entry.st_blocks = attrs.st_blocks
        entry.st_atime_ns = attrs.mtime_ns
        entry.st_mtime_ns = attrs.mtime_ns
        entry.st_ctime_ns = attrs.mtime_ns
        return entry

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    async def _refresh(self, inode: Inode) -> Inode:
        """Re-read a file's attributes from OSS when they expired or the object changed."""
        if inode.is_dir or inode.attrs_fresh(self._clock()):
            return inode
        attrs = await self.namespace.stat_file(inode.key)
        if attrs is None:
            self.inodes.detach(inode.key)
            raise _fuse_error(errno.ENOENT)
        inode.attrs = attrs
        inode.attrs_expire_at = self._clock() + self.options.stat_cache_ttl_s
        inode.stale = False
        return inode

    # -- namespace -----------------------------------------------------------------------

    @_errno_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if not parent.is_dir:
            raise _fuse_error(errno.ENOTDIR)
        attrs = await self.namespace.lookup(parent.key, os.fsdecode(name))
        if attrs is None:
            if self.options.negative_timeout_s > 0:
                # Inode 0 is a negative entry: the kernel itself remembers that the name is
                # missing for the timeout, so repeated probes never reach this process.
                negative = pyfuse3.EntryAttributes()
                negative.st_ino = 0
                negative.entry_timeout = self.options.negative_timeout_s
                return negative
            raise _fuse_error(errno.ENOENT)
        inode = self.inodes.upsert(parent, os.fsdecode(name), attrs, self.options.stat_cache_ttl_s)
        self.inodes.remember(inode)
        return self._entry(inode)

    @_errno_boundary
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)
            if self.inodes.get(ino) is None:
                self._kernel_cached_etag.pop(ino, None)

    @_errno_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._refresh(self._inode(inode)))

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
        snapshot = await self.namespace.list_directory(node.key)
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
        if flags & WRITE_FLAGS:
            raise _fuse_error(errno.EROFS)
        node = self._inode(inode)
        if node.is_dir:
            raise _fuse_error(errno.EISDIR)
        if node.kind is Kind.SYMLINK:
            # The kernel follows symlinks before open; only O_PATH|O_NOFOLLOW lands here.
            raise _fuse_error(errno.ELOOP)
        node = await self._refresh(node)
        etag = node.attrs.etag
        if etag is None:
            node.attrs_expire_at = 0.0
            node = await self._refresh(node)
            etag = node.attrs.etag
        assert etag is not None
        reader = self.read_cache.open(node.key, node.attrs.size, etag, node.attrs.crc64)
        fh = self._new_fh()
        self._file_handles[fh] = FileHandle(node, reader, etag)
        self.inodes.open(node)
        keep_cache = self._kernel_cached_etag.get(node.ino) == etag
        self._kernel_cached_etag[node.ino] = etag
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    @_errno_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._file_handles.get(fh)
        if handle is None:
            raise _fuse_error(errno.EBADF)
        try:
            return await handle.reader.read(off, size)
        except PreconditionFailed:
            # The object was replaced while open: this handle fails, the next open sees the
            # new version (never a mix of two versions in one read stream).
            inode = handle.inode
            log.warning(
                "%s changed while open (ETag %s): read fails with EIO", inode.key, handle.etag
            )
            inode.stale = True
            self._kernel_cached_etag.pop(inode.ino, None)
            self.namespace.invalidate(inode.key)
            self.read_cache.invalidate(inode.key, handle.etag)
            raise _fuse_error(errno.EIO) from None

    @_errno_boundary
    async def release(self, fh: int) -> None:
        handle = self._file_handles.pop(fh, None)
        if handle is None:
            return
        try:
            await handle.reader.close()
        finally:
            self.inodes.close(handle.inode)
