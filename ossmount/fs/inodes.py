"""The inode table: inode numbers <-> keys, kernel lookup counts, attributes with expiry.

An inode exists while the kernel holds a reference to it (its lookup count, raised by every
entry we hand out through lookup or readdirplus and lowered by forget) or while a file handle
is open on it. Memory therefore follows the kernel's dentry cache, not the bucket's size, and
the kernel keeps dentries for as long as it has memory to spare: a ``find`` over a million
objects left a million inodes here (800-900 bytes each, docs/benchmarks.md). So the table
bounds the files and symlinks the kernel holds (``max_remembered``): beyond it, the least
recently handed-out ones that are not open are passed to ``evict`` (in batches of 1% of the
bound), which asks the kernel to drop their entries; its forget then frees them, and a later
access looks the name up again. Directories are never evicted: a directory entry dropped from
the kernel's cache while it is a process's working directory would make getcwd() fail.

Inode numbers come from a hash of the key (32 bits, below 2**32 so that 32-bit programs can
stat them), so a name keeps its number when the kernel forgets and looks it up again, and across
mounts: programs that compare inode numbers between runs (git's index) see no change. A number
still held by another inode (a hash collision, or the old inode of a replaced or renamed name)
moves on to the next free one. A number is only given again once the kernel forgot its previous
holder, and nothing exports the mount over NFS, so the FUSE generation number can stay 0.

Keys: a file's key is its object key; a directory's key is its prefix with the trailing
slash ("" for the bucket root, "PREFIX/" for a mount of a prefix). A name that changes kind
(a file replaced by a directory) gets a new inode; the old one lives on, detached from the
key, until the kernel forgets it.

Part 2 (writes) hangs its per-file state off :class:`Inode` (``open_count`` keeps an
unlinked-but-open file alive; a writer's staging state will sit beside ``attrs``) and uses
:meth:`InodeTable.rename` and :meth:`InodeTable.detach` for rename and unlink.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ossmount.fs.attrs import Attributes, Kind

log = logging.getLogger(__name__)

ROOT_INODE = 1
# Inode numbers of names: ROOT_INODE + 1 up to 2**32 - 1.
_FIRST_INO = ROOT_INODE + 1
_INO_COUNT = 2**32 - _FIRST_INO


def key_inode_number(key: str) -> int:
    """The inode number a key asks for (the table takes the next free one on a collision)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return _FIRST_INO + int.from_bytes(digest, "little") % _INO_COUNT


@dataclass(slots=True)
class Inode:
    """One file, directory or symlink the kernel knows about."""

    ino: int
    parent: int
    name: str
    key: str
    attrs: Attributes
    # time.monotonic() after which attrs must be read again from OSS.
    attrs_expire_at: float
    lookup_count: int = 0
    open_count: int = 0
    # Set when a read met a newer object version (If-Match failed): the next open refreshes.
    stale: bool = False

    @property
    def kind(self) -> Kind:
        return self.attrs.kind

    @property
    def is_dir(self) -> bool:
        return self.attrs.kind is Kind.DIR

    def attrs_fresh(self, now: float) -> bool:
        return not self.stale and now < self.attrs_expire_at


def child_key(parent_key: str, name: str, kind: Kind) -> str:
    """The key of ``name`` inside the directory whose prefix is ``parent_key``."""
    return parent_key + name + "/" if kind is Kind.DIR else parent_key + name


class InodeTable:
    """Inode number <-> key, with the kernel's lookup counts. Not thread-safe (one trio loop)."""

    def __init__(
        self,
        root_key: str,
        root_attrs: Attributes,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_remembered: int | None = None,
        evict: Callable[[list[Inode]], None] | None = None,
    ) -> None:
        self._clock = clock
        self._by_ino: dict[int, Inode] = {}
        self._by_key: dict[str, int] = {}
        # Files and symlinks the kernel holds, least recently handed out first.
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._max_remembered = max_remembered
        self._evict = evict
        root = Inode(ROOT_INODE, ROOT_INODE, "", root_key, root_attrs, float("inf"), 1)
        self._by_ino[ROOT_INODE] = root
        self._by_key[root_key] = ROOT_INODE

    def __len__(self) -> int:
        return len(self._by_ino)

    def __iter__(self) -> Iterator[Inode]:
        return iter(self._by_ino.values())

    @property
    def root(self) -> Inode:
        return self._by_ino[ROOT_INODE]

    def get(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def by_key(self, key: str) -> Inode | None:
        ino = self._by_key.get(key)
        return None if ino is None else self._by_ino.get(ino)

    def upsert(self, parent: Inode, name: str, attrs: Attributes, ttl_s: float) -> Inode:
        """The inode for ``name`` in ``parent`` with fresh ``attrs``; created if new.

        Does not change the lookup count: call :meth:`remember` once the kernel has the entry.
        """
        key = child_key(parent.key, name, attrs.kind)
        expire_at = self._clock() + ttl_s
        inode = self.by_key(key)
        # (A file that turns out to be a FIFO, say, keeps its key and number; only the kind
        # changes, as when a listing's guess is replaced by a HEAD's answer.)
        if inode is not None and inode.is_dir == (attrs.kind is Kind.DIR):
            if (
                inode.attrs.etag is not None
                and attrs.etag is not None
                and inode.attrs.etag != attrs.etag
            ):
                log.debug("%s changed: etag %s -> %s", key, inode.attrs.etag, attrs.etag)
            inode.attrs = attrs
            inode.attrs_expire_at = expire_at
            inode.stale = False
            inode.parent = parent.ino
            inode.name = name
            return inode
        # A file key "a" and a directory key "a/" differ, so a kind change always lands here;
        # detach any inode still holding the other kind's key for this name.
        other_kind_key = child_key(
            parent.key, name, Kind.FILE if attrs.kind is Kind.DIR else Kind.DIR
        )
        self.detach(other_kind_key)
        ino = key_inode_number(key)
        while ino in self._by_ino:
            ino = _FIRST_INO + (ino + 1 - _FIRST_INO) % _INO_COUNT
        inode = Inode(ino, parent.ino, name, key, attrs, expire_at)
        self._by_ino[ino] = inode
        self._by_key[key] = ino
        return inode

    def remember(self, inode: Inode, count: int = 1) -> None:
        """The kernel now holds ``count`` more references (an entry reply it accepted)."""
        inode.lookup_count += count
        if inode.is_dir or self._max_remembered is None:
            return
        self._recent[inode.ino] = None
        self._recent.move_to_end(inode.ino)
        if len(self._recent) > self._max_remembered:
            self._evict_least_recent()

    @property
    def remembered_files(self) -> int:
        """Files and symlinks counted against ``max_remembered``."""
        return len(self._recent)

    def _evict_least_recent(self) -> None:
        """Hand the oldest files over the bound (and 1% more, so that this runs once per batch,
        not once per entry) to ``evict``. They leave the order now; an open one is skipped, and
        one the kernel keeps anyway comes back at its next lookup."""
        assert self._max_remembered is not None
        target = self._max_remembered - self._max_remembered // 100
        evicted: list[Inode] = []
        while len(self._recent) > target:
            ino, _ = self._recent.popitem(last=False)
            inode = self._by_ino.get(ino)
            if inode is not None and inode.open_count == 0 and inode.lookup_count > 0:
                evicted.append(inode)
        if evicted and self._evict is not None:
            self._evict(evicted)

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` references; the inode goes when nothing holds it."""
        inode = self._by_ino.get(ino)
        if inode is None or ino == ROOT_INODE:
            return
        inode.lookup_count = max(0, inode.lookup_count - count)
        self._drop_if_unused(inode)

    def release_unreferenced(self, inode: Inode) -> None:
        """Drop an inode that was created for an entry the kernel did not take."""
        self._drop_if_unused(inode)

    def open(self, inode: Inode) -> None:
        inode.open_count += 1

    def close(self, inode: Inode) -> None:
        inode.open_count = max(0, inode.open_count - 1)
        self._drop_if_unused(inode)

    def detach(self, key: str) -> Inode | None:
        """Unhook ``key`` from its inode (object deleted or replaced by another kind)."""
        ino = self._by_key.pop(key, None)
        if ino is None:
            return None
        inode = self._by_ino.get(ino)
        if inode is not None:
            self._drop_if_unused(inode)
        return inode

    def rename(self, inode: Inode, new_parent: Inode, new_name: str) -> None:
        """Move ``inode`` (and, for a directory, every known inode below it) to a new key."""
        old_key = inode.key
        new_key = child_key(new_parent.key, new_name, inode.kind)
        self.detach(new_key)
        moved = [inode]
        if inode.is_dir:
            # Only inodes that still own their key: one unlinked while open (detached) must
            # not come back under the new name.
            moved += [
                other
                for other in self._by_ino.values()
                if other is not inode
                and other.key.startswith(old_key)
                and self._by_key.get(other.key) == other.ino
            ]
        for item in moved:
            if self._by_key.get(item.key) == item.ino:
                del self._by_key[item.key]
            item.key = new_key + item.key[len(old_key) :]
            self._by_key[item.key] = item.ino
        inode.parent = new_parent.ino
        inode.name = new_name

    def _drop_if_unused(self, inode: Inode) -> None:
        if inode.ino == ROOT_INODE or inode.lookup_count > 0 or inode.open_count > 0:
            return
        del self._by_ino[inode.ino]
        self._recent.pop(inode.ino, None)
        if self._by_key.get(inode.key) == inode.ino:
            del self._by_key[inode.key]
