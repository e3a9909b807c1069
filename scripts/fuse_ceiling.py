#!/usr/bin/env python3
"""The ceiling of a pyfuse3 file system on this machine: one file served from memory.

Usage: .venv/bin/python scripts/fuse_ceiling.py MOUNTPOINT [--size-mib 1024] [--direct-io]

Mounts (in the foreground, until SIGINT/SIGTERM or ``fusermount3 -u``) a file system holding one
file, ``MOUNTPOINT/data``, of --size-mib bytes, every 1 MiB block of which is the same random
megabyte: no network, no cache, no checksum, so a ``dd`` of it measures only what FUSE costs
(pyfuse3 on trio, libfuse, the kernel's request round trips and copies) with the mount's own
settings: 1 MiB requests, readahead raised to ``read_ahead_kb`` 4096, and the page cache, or
FOPEN_DIRECT_IO with --direct-io. ``scripts/bench_read.py --ceiling`` runs it beside the real
mount, so that both are measured against the same curl in one run.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

from ossmount.mount import raise_read_ahead

MIB = 1024 * 1024
FILE_NAME = b"data"
FILE_INODE = pyfuse3.ROOT_INODE + 1


class MemoryFile(pyfuse3.Operations):
    """A root directory holding one read-only file of ``size`` bytes."""

    def __init__(self, size: int, direct_io: bool) -> None:
        super().__init__()
        self.size = size
        self.direct_io = direct_io
        self.block = os.urandom(MIB)

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode = stat.S_IFDIR | 0o755
        elif inode == FILE_INODE:
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_size = self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attrs.attr_timeout = attrs.entry_timeout = 60
        return attrs

    async def lookup(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext | None = None,
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode))
        info.direct_io = self.direct_io
        return info

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        # The reply is sliced from the one block: an aligned 1 MiB read returns it without a
        # copy, as the mount does with a cached block.
        end = min(off + size, self.size)
        if end <= off:
            return b""
        if off % MIB == 0 and end - off == MIB:
            return self.block
        pieces = []
        while off < end:
            take = min(MIB - off % MIB, end - off)
            pieces.append(self.block[off % MIB : off % MIB + take])
            off += take
        return b"".join(pieces)


async def serve(mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        await trio.to_thread.run_sync(raise_read_ahead, mountpoint, 4096)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--direct-io", action="store_true")
    args = parser.parse_args()
    operations = MemoryFile(args.size_mib * MIB, args.direct_io)
    options = set(pyfuse3.default_options) | {"fsname=fuse-ceiling", "ro"}
    pyfuse3.init(operations, str(args.mountpoint), options)
    try:
        trio.run(serve, args.mountpoint)
    except KeyboardInterrupt:
        pass
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
