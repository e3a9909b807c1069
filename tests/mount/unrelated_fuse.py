"""A tiny FUSE file system that is not ossmount (an empty directory), to stand for a user's
sshfs or rclone mount in tests: ``python -m tests.mount.unrelated_fuse MOUNTPOINT``."""

from __future__ import annotations

import stat
import sys

import pyfuse3
import trio

FSNAME = "unrelated-test-fs"


class EmptyDirectory(pyfuse3.Operations):
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(2)
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        attributes.st_mode = stat.S_IFDIR | 0o755
        attributes.st_nlink = 2
        return attributes

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        return pyfuse3.StatvfsData()


def main(mountpoint: str) -> None:
    pyfuse3.init(EmptyDirectory(), mountpoint, {f"fsname={FSNAME}", "subtype=unrelated"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1])
