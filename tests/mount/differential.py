"""Differential tester: the same seeded random operations on an ossmount mount and on local disk.

A :class:`Differential` drives two :class:`Side` objects (the "mount" side and the "local"
side, or two local directories for the self-check) through one list of :class:`Op`, step by
step, and after every step compares:

- the op's result on each side: return value or errno (bytes read in full);
- the tree under the trial directory: names, kinds, file sizes, modes and link counts, and
  file mtimes (the mount's no older than local disk's, to within ``MTIME_SLACK_S``);
- ``fstat`` sizes of every open handle;
- all of it again after a ``sleep`` past the mount's cache times;
- whole contents of the file at every ``close`` (through the closing handle before, and by
  name after), and of every file after a ``remount``.

Left out of the comparison by design, each documented in docs/semantics.md:
- directory mtime ("kept in memory ...: after a remount ... a directory shows its marker's
  `x-oss-meta-mtime` ... or, without one, the mount time"),
- directory st_nlink ("2 plus its subdirectories while the mount holds its complete listing
  ... and otherwise 1"),
- atime and ctime ("noatime"; ctime is stored only with metadata changes, "Renames move ctime
  in memory"),
- st_nlink of an open handle (fstat): only sizes are compared there ("0 in `fstat` of a file
  that is open and was unlinked" is checked by tests/mount/test_posix.py).

Streamed new files (docs/semantics.md, "Writing": "a write into a part already sent and dropped
fails with EIO"): the generator keeps writes into such parts out of the mix. It models each
file's write mode exactly as ossmount/fs/writer.py documents it (see :class:`StreamModel`);
the model only steers generation and never excuses a result. Reads and truncates of those
parts fail with EIO as well, which docs/semantics.md does not say (it names writes only):
``probe_streamed_gaps=True`` keeps them in the mix to show that; by default they are kept out
too, so that a run can get past them to other differences.

Replays: an op list is data (JSON via :func:`ops_to_json`), printed as Python-like calls; a
divergence carries the seed, the step and the ops so far. :func:`shrink` cuts an op list to a
shortest one that still diverges the same way (by delta debugging over whole trials).

Used by tests/mount/test_differential.py (short, in CI) and scripts/differential.py (long runs,
faults, replay and shrinking).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
# Small parts (the smallest allowed is 100 KiB) keep files above the multipart threshold cheap.
PART_SIZE = 128 * KiB
MULTIPART_THRESHOLD = 256 * KiB
MOUNT_OPTIONS = (f"part_size={PART_SIZE}", f"multipart_threshold={MULTIPART_THRESHOLD}")
MAX_FILE_SIZE = 3 * MiB
# Past the default cache times (attr_timeout, entry_timeout, list_cache_ttl ...: 1 s).
SLEEP_MS = 1200
MTIME_SLACK_S = 3.0
FILE_MODE = 0o644
DIR_MODE = 0o755

# A small namespace, so that operations collide.
DIR_PATHS = ("d0", "d1", "d2", "d0/e0", "d1/e0")
FILE_PATHS = (
    "f0",
    "f1",
    "f2",
    "f3",
    "d0/f0",
    "d0/f1",
    "d1/f0",
    "d1/f1",
    "d0/e0/f0",
    "d1/e0/f0",
)
FILE_NAMES = ("f0", "f1", "f2", "f3")
MAX_OPEN_HANDLES = 5

ACCESS_FLAGS = {"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR}
EXTRA_FLAGS = {
    "O_CREAT": os.O_CREAT,
    "O_TRUNC": os.O_TRUNC,
    "O_APPEND": os.O_APPEND,
    "O_EXCL": os.O_EXCL,
}

# The parameters of each op, in call order.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "open": ("h", "path", "flags"),
    "close": ("h",),
    "pwrite": ("h", "offset", "length", "seed"),
    "pread": ("h", "offset", "length"),
    "ftruncate": ("h", "size"),
    "fsync": ("h",),
    "fstat": ("h",),
    "truncate": ("path", "size"),
    "unlink": ("path",),
    "rename": ("src", "dst"),
    "mkdir": ("path",),
    "rmdir": ("path",),
    "stat": ("path",),
    "listdir": ("path",),
    "read_file": ("path",),
    "remount": (),
    "sleep": ("ms",),  # lets the mount's caches expire (1 s by default)
}

OpArg = int | str


@dataclass(frozen=True)
class Op:
    """One operation; ``args`` follow ``SIGNATURES[kind]``. Handles are small integers ``h``
    that name the open() that made them; paths are relative to the trial directory."""

    kind: str
    args: tuple[OpArg, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SIGNATURES:
            raise ValueError(f"unknown op {self.kind!r}")
        if len(self.args) != len(SIGNATURES[self.kind]):
            raise ValueError(f"{self.kind} takes {SIGNATURES[self.kind]}, got {self.args!r}")

    def arg(self, name: str) -> Any:
        return self.args[SIGNATURES[self.kind].index(name)]

    def __str__(self) -> str:
        shown = []
        for name, value in zip(SIGNATURES[self.kind], self.args, strict=True):
            if name == "h":
                shown.append(f"h{value}")
            elif name == "flags" or name in ("offset", "length", "size", "seed", "ms"):
                shown.append(f"{name}={value}" if name != "flags" else str(value))
            else:
                shown.append(repr(value))
        return f"{self.kind}({', '.join(shown)})"


def ops_to_json(ops: Sequence[Op], **extra: Any) -> str:
    """An op list as JSON (``{"ops": [[kind, *args], ...], **extra}``), for replays."""
    return json.dumps({**extra, "ops": [[op.kind, *op.args] for op in ops]}, indent=None)


def ops_from_json(text: str) -> list[Op]:
    return [Op(item[0], tuple(item[1:])) for item in json.loads(text)["ops"]]


def parse_flags(text: str) -> int:
    flags = 0
    for name in text.split("|"):
        table = ACCESS_FLAGS if name in ACCESS_FLAGS else EXTRA_FLAGS
        if name not in table:
            raise ValueError(f"unknown open flag {name!r}")
        flags |= table[name]
    return flags


def make_data(length: int, seed: int) -> bytes:
    """``length`` bytes determined by ``seed`` (the same on both sides and in replays)."""
    return random.Random(seed).randbytes(length)


# --- sides -------------------------------------------------------------------------------


@dataclass
class Side:
    """One directory tree the ops run in. ``base`` gives the current directory (a remount may
    move it); ``remount`` unmounts and mounts again (None: nothing to do, local disk);
    ``abort`` ends a hung mount so that a blocked call returns."""

    name: str
    base: Callable[[], Path]
    remount: Callable[[], None] | None = None
    abort: Callable[[], None] | None = None
    log_tail: Callable[[], str] | None = None
    trial: str = ""
    fds: dict[int, int] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.base() / self.trial

    def path(self, relative: str) -> Path:
        return self.root / relative

    def close_all(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


Outcome = tuple[str, Any]  # ("ok", value) or ("err", "ENOENT")


def _error(exc: OSError) -> Outcome:
    code = exc.errno if exc.errno is not None else 0
    return ("err", errno.errorcode.get(code, str(code)))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return f"other({stat.S_IFMT(mode):o})"


def read_all(fd: int, size: int) -> bytes:
    pieces = []
    offset = 0
    while offset < size:
        piece = os.pread(fd, min(4 * MiB, size - offset), offset)
        if not piece:
            break
        pieces.append(piece)
        offset += len(piece)
    return b"".join(pieces)


def execute(side: Side, op: Op) -> Outcome:
    """Run one op (not ``remount``) on one side; -> its outcome."""
    try:
        return _execute(side, op)
    except OSError as exc:
        return _error(exc)


def _execute(side: Side, op: Op) -> Outcome:
    kind = op.kind
    if kind == "open":
        fd = os.open(side.path(op.arg("path")), parse_flags(op.arg("flags")), FILE_MODE)
        side.fds[op.arg("h")] = fd
        return ("ok", None)
    if "h" in SIGNATURES[kind]:
        fd_or_none = side.fds.get(op.arg("h"))
        if fd_or_none is None:
            return ("err", "EBADF")  # a handle whose open failed (on both sides) or was cut
        fd = fd_or_none
        if kind == "close":
            del side.fds[op.arg("h")]
            os.close(fd)
            return ("ok", None)
        if kind == "pwrite":
            return (
                "ok",
                os.pwrite(fd, make_data(op.arg("length"), op.arg("seed")), op.arg("offset")),
            )
        if kind == "pread":
            return ("ok", os.pread(fd, op.arg("length"), op.arg("offset")))
        if kind == "ftruncate":
            os.ftruncate(fd, op.arg("size"))
            return ("ok", None)
        if kind == "fsync":
            os.fsync(fd)
            return ("ok", None)
        if kind == "fstat":
            return ("ok", os.fstat(fd).st_size)
        raise AssertionError(kind)
    path = side.path(op.arg("path") if "path" in SIGNATURES[kind] else op.arg("src"))
    if kind == "truncate":
        os.truncate(path, op.arg("size"))
        return ("ok", None)
    if kind == "unlink":
        os.unlink(path)
        return ("ok", None)
    if kind == "rename":
        os.rename(path, side.path(op.arg("dst")))
        return ("ok", None)
    if kind == "mkdir":
        os.mkdir(path, DIR_MODE)
        return ("ok", None)
    if kind == "rmdir":
        os.rmdir(path)
        return ("ok", None)
    if kind == "stat":
        info = os.lstat(path)
        return ("ok", (_kind(info.st_mode), info.st_size if stat.S_ISREG(info.st_mode) else None))
    if kind == "listdir":
        return ("ok", sorted(os.listdir(path)))
    if kind == "read_file":
        fd = os.open(path, os.O_RDONLY)
        try:
            return ("ok", read_all(fd, os.fstat(fd).st_size + 1))
        finally:
            os.close(fd)
    raise AssertionError(kind)


@dataclass(frozen=True)
class EntryState:
    kind: str
    size: int | None
    mode: int
    nlink: int | None
    mtime: float | None

    def differs(self, other: EntryState) -> str | None:
        """Why two entries differ, or None. Directory mtime and st_nlink, and atime/ctime of
        everything, are not compared (by design: docs/semantics.md, "Directories" and "Files
        and attributes"; see the module docstring)."""
        if self.kind != other.kind:
            return f"kind {self.kind} != {other.kind}"
        if self.size != other.size:
            return f"size {self.size} != {other.size}"
        if self.mode != other.mode:
            return f"mode {self.mode:o} != {other.mode:o}"
        if self.nlink != other.nlink:
            return f"st_nlink {self.nlink} != {other.nlink}"
        if self.mtime is not None and other.mtime is not None:
            # A file's mtime on the mount is its Last-Modified (whole seconds) where no
            # x-oss-meta-mtime was set (docs/semantics.md, "Files and attributes"), so its
            # upload time: never before the last change, but maybe well after it (a file
            # closed long after its last write). Hence a bound, not equality.
            if self.mtime < other.mtime - MTIME_SLACK_S:
                return f"mtime {self.mtime:.3f} older than {other.mtime:.3f}"
            if self.mtime > time.time() + MTIME_SLACK_S:
                return f"mtime {self.mtime:.3f} in the future"
        return None


def tree_state(root: Path) -> dict[str, EntryState]:
    """Every entry under ``root`` by relative path."""
    entries: dict[str, EntryState] = {}

    def visit(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            relative = prefix + name
            info = os.lstat(directory / name)
            is_file = stat.S_ISREG(info.st_mode)
            entries[relative] = EntryState(
                kind=_kind(info.st_mode),
                size=info.st_size if is_file else None,
                mode=stat.S_IMODE(info.st_mode),
                nlink=info.st_nlink if is_file else None,
                mtime=info.st_mtime if is_file else None,
            )
            if stat.S_ISDIR(info.st_mode):
                visit(directory / name, relative + "/")

    visit(root, "")
    return entries


# --- the model that steers generation -----------------------------------------------------

STREAM, LOCAL, REMOTE = "stream", "local", "remote"


@dataclass
class FileModel:
    """ossmount's write mode of one file (fs/writer.py: stream, local, remote), as far as
    it decides which ranges of a streamed new file are gone from the staging disk."""

    mode: str = REMOTE
    size: int = 0
    stream_base: int = 0  # bytes below are in sealed parts

    def gone(self) -> tuple[int, int]:
        """[start, end) of the parts already uploaded and dropped (empty: (0, 0)). Part 1 is
        kept on disk; parts 2 .. stream_base/part_size are gone once sealed."""
        if self.mode == STREAM and self.stream_base > PART_SIZE:
            return (PART_SIZE, self.stream_base)
        return (0, 0)

    def reset_to_empty(self) -> None:
        self.mode, self.size, self.stream_base = STREAM, 0, 0

    def write(self, offset: int, length: int) -> None:
        if self.mode == REMOTE:
            if self.size == 0:
                self.reset_to_empty()
            else:
                self.mode = LOCAL
        if self.mode == STREAM and self.stream_base <= PART_SIZE:
            # A hole across a part boundary turns the file into a local one while no part has
            # left the disk. So would any write that is not in place (below the last part and
            # not within part 1), but the kernel splits a write at page boundaries and may send
            # the piece up to the end of part 1 alone, and then every piece is in place: the
            # file may go on streaming. Assumed so, the cautious reading (its parts may be
            # gone, so fewer ops count as safe).
            hole_across = offset > self.size and offset // PART_SIZE != self.size // PART_SIZE
            if hole_across:
                self.mode = LOCAL
        self.size = max(self.size, offset + length)
        if self.mode == STREAM:
            self.stream_base = (self.size // PART_SIZE) * PART_SIZE

    def truncate(self, size: int) -> None:
        if size == 0:
            self.reset_to_empty()
        elif size != self.size:
            self.mode = LOCAL
        self.size = size

    def flushed(self) -> None:
        self.mode, self.stream_base = REMOTE, 0


def overlaps(start: int, end: int, span: tuple[int, int]) -> bool:
    return start < span[1] and span[0] < end


# --- divergences -------------------------------------------------------------------------


class DivergenceError(Exception):
    """The two sides answered differently. ``signature`` identifies the kind of difference
    (for the shrinker): the op kind and what differed."""

    def __init__(self, step: int, op: Op | None, what: str, detail: str) -> None:
        super().__init__(f"step {step}: {op}: {what}: {detail}")
        self.step = step
        self.op = op
        self.what = what
        self.detail = detail
        self.ops: list[Op] = []
        self.seed: int | None = None
        self.log_tail = ""

    @property
    def signature(self) -> tuple[str, str]:
        return (self.op.kind if self.op else "", self.what)

    def report(self) -> str:
        lines = [
            f"DIVERGENCE (seed {self.seed}) at step {self.step}: {self.what}",
            f"  op: {self.op}",
            f"  {self.detail}",
            "  ops so far (replay with scripts/differential.py --replay FILE):",
        ]
        lines += [f"    {index:4d}: {op}" for index, op in enumerate(self.ops)]
        if self.log_tail:
            lines += ["  mount log (tail):", self.log_tail]
        return "\n".join(lines)


def show(outcome: Outcome) -> str:
    status, value = outcome
    if status == "err":
        return str(value)
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return repr(value)


def first_difference(left: bytes, right: bytes) -> str:
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return f"first differing byte at {index} ({a:#04x} != {b:#04x})"
    return f"lengths {len(left)} != {len(right)}"


# --- the driver --------------------------------------------------------------------------


@dataclass(frozen=True)
class DriverOptions:
    """- flush_eio_documented: an EIO from close()/fsync() on the mount is accepted
      (docs/semantics.md: "close()/fsync() whose upload failed after retries | EIO; the data
      stays staged"), for runs against a server injecting faults.
    - probe_streamed_gaps: read and truncate parts of streamed new files that were already
      uploaded (see the module docstring).
    - avoid_renaming_open: no renames of open files or of directories holding one, nor over
      them (to look for other differences while those known ones are unfixed; issue 15).
    - walk_every: compare the whole tree after every n-th step only (always at a remount).
      The walk lists every directory and looks up every name, which refreshes the mount's
      caches (readdirplus hands the kernel every entry): fewer walks let stale lookups show.
    - sleep_ms: how long the ``sleep`` ops wait (past the mount's cache times by default).
    - op_timeout_s: an op that takes longer is a divergence ("hang"); the mount is aborted.
    """

    flush_eio_documented: bool = False
    probe_streamed_gaps: bool = False
    op_timeout_s: float = 180.0
    avoid_renaming_open: bool = False
    sleep_ms: int = SLEEP_MS
    walk_every: int = 1


class Differential:
    """Runs ops on ``mount`` and ``local`` and raises :class:`DivergenceError` at the first
    difference."""

    def __init__(self, mount: Side, local: Side, options: DriverOptions | None = None) -> None:
        self.mount = mount
        self.local = local
        self.options = options or DriverOptions()
        self.flush_eio_documented = self.options.flush_eio_documented
        self.probe_streamed_gaps = self.options.probe_streamed_gaps
        self.op_timeout_s = self.options.op_timeout_s
        self.files: dict[int, FileModel] = {}  # by local inode number
        self.handle_flags: dict[int, int] = {}
        self.done: list[Op] = []
        self.documented_eios = 0

    # -- running ------------------------------------------------------------------------

    def run(self, ops: Iterable[Op]) -> None:
        for op in ops:
            self.step(op)
        if self.done:
            try:
                self._compare_trees(len(self.done) - 1, None)
            except DivergenceError as divergence:
                divergence.ops = list(self.done)
                raise

    def step(self, op: Op) -> None:
        index = len(self.done)
        self.done.append(op)
        try:
            with self._watchdog(index, op):
                self._step(index, op)
        except DivergenceError as divergence:
            divergence.ops = list(self.done)
            if self.mount.log_tail is not None:
                divergence.log_tail = self.mount.log_tail()
            raise

    @contextlib.contextmanager
    def _watchdog(self, index: int, op: Op) -> Iterator[None]:
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            if self.mount.abort is not None:
                self.mount.abort()

        timer = threading.Timer(self.op_timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
        if fired.is_set():
            raise DivergenceError(index, op, "hang", f"no answer within {self.op_timeout_s} s")

    def _step(self, index: int, op: Op) -> None:
        if op.kind == "remount":
            self._remount(index, op)
            return
        if op.kind == "sleep":
            time.sleep(op.arg("ms") / 1000)
            self._compare_trees(index, op)
            self._compare_open_handles(index, op)
            return
        reason = self.excluded(op)
        if reason is not None:
            # Only a replayed (or shrunk) op list gets here: generation leaves these out.
            raise DivergenceError(index, op, "outside the mix", reason)
        before = self._local_identity(op)
        if op.kind == "close":
            self._compare_handle_contents(index, op, op.arg("h"))
        # rename(a, b) where both name one file does nothing, and the kernel does not even
        # ask the file system (so nothing is uploaded either).
        self_rename = op.kind == "rename" and self._same_local_file(op.arg("src"), op.arg("dst"))
        mount_outcome = execute(self.mount, op)
        local_outcome = execute(self.local, op)
        self._compare_outcomes(index, op, mount_outcome, local_outcome)
        if local_outcome[0] == "ok" and not self_rename:
            self._update_model(op, before, uploaded=mount_outcome[0] == "ok")
        if op.kind == "close" and before is not None:
            self._compare_file_by_identity(index, op, before)
        if (index + 1) % self.options.walk_every == 0:
            self._compare_trees(index, op)
        self._compare_open_handles(index, op)

    def _compare_outcomes(
        self, index: int, op: Op, mount_outcome: Outcome, local_outcome: Outcome
    ) -> None:
        if mount_outcome == local_outcome:
            return
        if (
            self.flush_eio_documented
            and op.kind in ("close", "fsync")
            and mount_outcome == ("err", "EIO")
            and local_outcome[0] == "ok"
        ):
            self.documented_eios += 1
            return
        detail = f"mount: {show(mount_outcome)}, local: {show(local_outcome)}"
        if isinstance(mount_outcome[1], bytes) and isinstance(local_outcome[1], bytes):
            detail += "; " + first_difference(mount_outcome[1], local_outcome[1])
        raise DivergenceError(index, op, "result", detail)

    def _compare_trees(self, index: int, op: Op | None) -> None:
        try:
            mount_tree = tree_state(self.mount.root)
        except OSError as exc:
            raise DivergenceError(index, op, "tree", f"walking the mount: {exc!r}") from exc
        local_tree = tree_state(self.local.root)
        for name in sorted(set(mount_tree) | set(local_tree)):
            mine, theirs = mount_tree.get(name), local_tree.get(name)
            if mine is None or theirs is None:
                where = "mount" if mine is None else "local"
                raise DivergenceError(index, op, "tree", f"{name!r} missing on the {where} side")
            why = mine.differs(theirs)
            if why is not None:
                # (mtime differences depend on time passing: a kind of their own for shrink.)
                what = "mtime" if why.startswith("mtime") else "tree"
                raise DivergenceError(index, op, what, f"{name!r}: {why} (mount != local)")

    def _compare_open_handles(self, index: int, op: Op) -> None:
        for handle in sorted(self.local.fds):
            local_info = os.fstat(self.local.fds[handle])
            if stat.S_ISDIR(local_info.st_mode):
                # A handle opened on a name that is a directory: directory sizes differ by
                # design (docs/semantics.md, Directories: st_size 0 in the mount).
                continue
            local_size = local_info.st_size
            mount_fd = self.mount.fds.get(handle)
            if mount_fd is None:
                raise DivergenceError(
                    index, op, "fstat", f"h{handle} is open only on the local side"
                )
            try:
                mount_size = os.fstat(mount_fd).st_size
            except OSError as exc:
                raise DivergenceError(index, op, "fstat", f"h{handle}: mount {exc!r}") from exc
            if mount_size != local_size:
                raise DivergenceError(
                    index, op, "fstat", f"h{handle}: size mount {mount_size} != local {local_size}"
                )

    def _readable_spans(self, ino: int, size: int) -> list[tuple[int, int]]:
        """[start, end) ranges of a file that reads can compare (all of it, but the parts of
        a streamed new file already uploaded: see the module docstring)."""
        model = self.files.get(ino)
        gone = model.gone() if model is not None else (0, 0)
        if gone == (0, 0) or self.probe_streamed_gaps:
            return [(0, size)]
        return [(0, min(size, gone[0])), (min(size, gone[1]), size)]

    def _compare_spans(
        self, index: int, op: Op, what: str, mount_fd: int, local_fd: int, ino: int
    ) -> None:
        size = os.fstat(local_fd).st_size
        for start, end in self._readable_spans(ino, size):
            if end <= start:
                continue
            try:
                mine = _read_range(mount_fd, start, end)
            except OSError as exc:
                raise DivergenceError(index, op, "contents", f"{what}: mount read {exc!r}") from exc
            theirs = _read_range(local_fd, start, end)
            if mine != theirs:
                raise DivergenceError(
                    index,
                    op,
                    "contents",
                    f"{what} [{start}, {end}): {first_difference(mine, theirs)}",
                )

    def _compare_handle_contents(self, index: int, op: Op, handle: int) -> None:
        """Before a close: the whole file through the handle, if it can read."""
        local_fd = self.local.fds.get(handle)
        mount_fd = self.mount.fds.get(handle)
        if local_fd is None or mount_fd is None:
            return
        if self.handle_flags.get(handle, 0) & os.O_ACCMODE == os.O_WRONLY:
            return
        ino = os.fstat(local_fd).st_ino
        self._compare_spans(index, op, f"h{handle} before close", mount_fd, local_fd, ino)

    def _compare_file_by_identity(self, index: int, op: Op, ino: int) -> None:
        """After a close: the file's contents through every name it has (none if unlinked)."""
        for name, entry in tree_state(self.local.root).items():
            if entry.kind != "file" or os.lstat(self.local.path(name)).st_ino != ino:
                continue
            self._compare_path_contents(index, op, name, ino)

    def _compare_path_contents(self, index: int, op: Op, name: str, ino: int) -> None:
        local_fd = os.open(self.local.path(name), os.O_RDONLY)
        try:
            try:
                mount_fd = os.open(self.mount.path(name), os.O_RDONLY)
            except OSError as exc:
                raise DivergenceError(
                    index, op, "contents", f"{name!r}: mount open {exc!r}"
                ) from exc
            try:
                self._compare_spans(index, op, repr(name), mount_fd, local_fd, ino)
            finally:
                os.close(mount_fd)
        finally:
            os.close(local_fd)

    def _remount(self, index: int, op: Op) -> None:
        for handle in sorted(self.local.fds.keys() | self.mount.fds.keys()):
            self._step(index, Op("close", (handle,)))
        if self.mount.remount is not None:
            self.mount.remount()
        if self.local.remount is not None:
            self.local.remount()
        self._compare_trees(index, op)
        for name, entry in tree_state(self.local.root).items():
            if entry.kind == "file":
                ino = os.lstat(self.local.path(name)).st_ino
                self._compare_path_contents(index, op, name, ino)

    # -- the model ----------------------------------------------------------------------

    def _local_identity(self, op: Op) -> int | None:
        """The local inode number the op is about (before it runs), if any."""
        try:
            if "h" in SIGNATURES[op.kind] and op.kind != "open":
                fd = self.local.fds.get(op.arg("h"))
                return None if fd is None else os.fstat(fd).st_ino
            name = op.arg("src") if op.kind == "rename" else op.arg("path")
            return os.lstat(self.local.path(name)).st_ino
        except (OSError, ValueError):
            return None

    def _same_local_file(self, first: str, second: str) -> bool:
        try:
            return os.path.samefile(self.local.path(first), self.local.path(second))
        except OSError:
            return False

    def _has_name(self, ino: int) -> bool:
        return any(
            entry.kind == "file" and os.lstat(self.local.path(name)).st_ino == ino
            for name, entry in tree_state(self.local.root).items()
        )

    def model(self, ino: int) -> FileModel:
        return self.files.setdefault(ino, FileModel())

    def _open_writers(self, ino: int, other_than: int) -> bool:
        for handle, fd in self.local.fds.items():
            if handle == other_than or handle not in self.handle_flags:
                continue
            if _flushes(self.handle_flags[handle]) and os.fstat(fd).st_ino == ino:
                return True
        return False

    def _update_model(self, op: Op, before: int | None, *, uploaded: bool) -> None:
        """After ``op`` succeeded on local disk (``uploaded``: and on the mount; a close or
        fsync whose upload failed leaves the file staged as it was)."""
        kind = op.kind
        if kind == "open":
            handle = op.arg("h")
            flags = parse_flags(op.arg("flags"))
            fd = self.local.fds[handle]
            info = os.fstat(fd)
            created = before is None and flags & os.O_CREAT
            # (O_CREAT kept only where this open made the file: its handle then uploads.)
            self.handle_flags[handle] = (flags & ~os.O_CREAT) | (os.O_CREAT if created else 0)
            if created:
                self.files[info.st_ino] = FileModel()
                self.files[info.st_ino].reset_to_empty()
            elif flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                self.model(info.st_ino).reset_to_empty()
            elif flags & os.O_ACCMODE != os.O_RDONLY and not self._open_writers(
                info.st_ino, handle
            ):
                self.files[info.st_ino] = FileModel(REMOTE, info.st_size)
            return
        if before is None:
            return
        if kind == "pwrite":
            model = self.model(before)
            length = op.arg("length")
            size_after = os.fstat(self.local.fds[op.arg("h")]).st_size
            append = self.handle_flags.get(op.arg("h"), 0) & os.O_APPEND
            offset = size_after - length if append else op.arg("offset")
            model.write(offset, length)
            model.size = size_after
        elif kind in ("ftruncate", "truncate"):
            self.model(before).truncate(op.arg("size"))
        elif kind in ("fsync", "close"):
            flags = self.handle_flags.get(op.arg("h"), 0)
            if kind == "close":
                self.handle_flags.pop(op.arg("h"), None)
            # A file unlinked (or replaced) while open is never uploaded again.
            if _flushes(flags) and uploaded and self._has_name(before):
                self.model(before).flushed()
        elif kind == "rename":
            # A staged file is uploaded before it moves (docs/semantics.md), also under a
            # directory that moves.
            destination = self.local.path(op.arg("dst"))
            if destination.is_dir():
                for path in destination.rglob("*"):
                    if path.is_file():
                        self.model(path.stat().st_ino).flushed()
            else:
                self.model(before).flushed()
        elif kind == "unlink":
            model = self.model(before)
            # Unlinked while open: a full local copy, where the parts are still on disk.
            if model.mode == REMOTE or (model.mode == STREAM and model.stream_base <= PART_SIZE):
                model.mode = LOCAL

    # -- generation ---------------------------------------------------------------------

    def excluded(self, op: Op) -> str | None:
        """Why ``op`` is kept out of the mix (None: it is not). Streamed new files: a write into
        a part already uploaded fails with EIO by design (docs/semantics.md, "Writing"); reads
        and truncates of those parts too (not in docs/semantics.md: see the module docstring),
        unless ``probe_streamed_gaps``. Decided on the model, before the op runs."""
        if op.kind not in ("pwrite", "pread", "ftruncate", "truncate", "read_file"):
            return None
        ino = self._local_identity(op)
        model = self.files.get(ino) if ino is not None else None
        if model is None:
            return None
        gone = model.gone()
        if gone[1] == 0:
            return None
        if op.kind == "pwrite":
            append = self.handle_flags.get(op.arg("h"), 0) & os.O_APPEND
            start = model.size if append else op.arg("offset")
            if start < gone[1] and start + op.arg("length") > PART_SIZE:
                return f"a write into parts {gone} of a streamed new file, already uploaded"
            return None
        if self.probe_streamed_gaps:
            return None
        if op.kind == "pread" and overlaps(
            op.arg("offset"), op.arg("offset") + op.arg("length"), gone
        ):
            return f"a read of parts {gone} of a streamed new file, already uploaded"
        if op.kind in ("ftruncate", "truncate") and op.arg("size") not in (0, model.size):
            return f"a truncate of a streamed new file whose parts {gone} were uploaded"
        if op.kind == "read_file":
            return f"a read of parts {gone} of a streamed new file, already uploaded"
        return None

    def _touches_open_file(self, op: Op) -> bool:
        """Whether a rename moves or replaces an open file (or a directory holding one)."""
        open_files = {os.fstat(fd).st_ino for fd in self.local.fds.values()}
        for name in (op.arg("src"), op.arg("dst")):
            path = self.local.path(name)
            if not path.exists():
                continue
            paths = [path, *path.rglob("*")] if path.is_dir() else [path]
            if any(item.stat().st_ino in open_files for item in paths):
                return True
        return False

    def generate(self, rng: random.Random, count: int, remount_every: int = 0) -> Iterator[Op]:
        """Yield ``count`` ops chosen from the current state (run each before the next is
        made): a remount every ``remount_every`` ops (0: never)."""
        next_handle = 0
        for number in range(1, count + 1):
            if remount_every and number % remount_every == 0:
                yield Op("remount")
                continue
            op = self._choose(rng, next_handle)
            if op.kind == "open":
                next_handle += 1
            yield op

    def _choose(self, rng: random.Random, next_handle: int) -> Op:
        local_tree = tree_state(self.local.root)
        files = [name for name, entry in local_tree.items() if entry.kind == "file"]
        dirs = [name for name, entry in local_tree.items() if entry.kind == "dir"]
        handles = sorted(self.local.fds)

        def file_path() -> str:
            if files and rng.random() < 0.6:
                return rng.choice(files)
            if rng.random() < 0.7:
                # A new name in a directory that exists.
                parent = rng.choice(["", *[name + "/" for name in dirs]])
                return parent + rng.choice(FILE_NAMES)
            return rng.choice(FILE_PATHS)

        def dir_path() -> str:
            if dirs and rng.random() < 0.7:
                return rng.choice(dirs)
            return rng.choice(DIR_PATHS)

        weights: list[tuple[str, float]] = [
            ("open", 3.0 if len(handles) < MAX_OPEN_HANDLES else 0.3),
            ("pwrite", 6.0 if handles else 0.0),
            ("pread", 3.0 if handles else 0.0),
            ("ftruncate", 1.0 if handles else 0.0),
            ("fsync", 1.0 if handles else 0.0),
            ("fstat", 0.5 if handles else 0.0),
            ("close", 2.5 if handles else 0.0),
            ("truncate", 0.5),
            ("unlink", 1.0),
            ("rename", 2.0),
            ("mkdir", 1.0),
            ("rmdir", 0.7),
            ("stat", 0.5),
            ("listdir", 0.5),
            ("read_file", 0.7),
            ("sleep", 0.3),
        ]
        for _ in range(100):
            kind = rng.choices([k for k, _ in weights], [w for _, w in weights])[0]
            op = self._choose_args(rng, kind, next_handle, handles, file_path, dir_path)
            if op is not None and self.excluded(op) is None:
                return op
        return Op("stat", (file_path(),))

    def _choose_args(
        self,
        rng: random.Random,
        kind: str,
        next_handle: int,
        handles: list[int],
        file_path: Callable[[], str],
        dir_path: Callable[[], str],
    ) -> Op | None:
        if kind == "open":
            access = rng.choices(["O_RDONLY", "O_WRONLY", "O_RDWR"], [2, 2, 4])[0]
            flags = [access]
            if rng.random() < 0.6:
                flags.append("O_CREAT")
                if rng.random() < 0.08:
                    flags.append("O_EXCL")
            # (O_TRUNC with O_RDONLY is unspecified by POSIX: left out.)
            if access != "O_RDONLY" and rng.random() < 0.2:
                flags.append("O_TRUNC")
            if access != "O_RDONLY" and rng.random() < 0.15:
                flags.append("O_APPEND")
            return Op("open", (next_handle, file_path(), "|".join(flags)))
        if kind in ("pwrite", "pread", "ftruncate", "fsync", "fstat", "close"):
            handle = rng.choice(handles)
            writers = [h for h in handles if _writable(self.handle_flags.get(h, 0))]
            if kind in ("pwrite", "ftruncate") and writers and rng.random() < 0.85:
                handle = rng.choice(writers)  # (some writes through read-only handles: EBADF)
            size = os.fstat(self.local.fds[handle]).st_size
            if kind == "pwrite":
                length = _write_length(rng)
                offset = _offset(rng, size)
                if offset + length > MAX_FILE_SIZE:
                    offset = max(0, MAX_FILE_SIZE - length - rng.randrange(PART_SIZE))
                return Op("pwrite", (handle, offset, length, rng.randrange(1 << 30)))
            if kind == "pread":
                length = rng.choice([1, 4096, MiB, PART_SIZE, rng.randrange(1, 2 * PART_SIZE)])
                return Op("pread", (handle, _offset(rng, size), length))
            if kind == "ftruncate":
                return Op("ftruncate", (handle, _truncate_size(rng, size)))
            return Op(kind, (handle,))
        if kind == "read_file":
            return Op("read_file", (file_path(),))
        if kind == "truncate":
            path = file_path()
            size = 0
            with contextlib.suppress(OSError):
                size = os.lstat(self.local.path(path)).st_size
            return Op("truncate", (path, _truncate_size(rng, size)))
        if kind == "sleep":
            return Op("sleep", (self.options.sleep_ms,))
        if kind == "unlink":
            return Op("unlink", (file_path(),))
        if kind == "rename":
            roll = rng.random()
            if roll < 0.55:
                op = Op("rename", (file_path(), file_path()))
            elif roll < 0.9:
                op = Op("rename", (dir_path(), dir_path()))
            else:
                either = [file_path, dir_path]
                op = Op("rename", (rng.choice(either)(), rng.choice(either)()))
            if self.options.avoid_renaming_open and self._touches_open_file(op):
                return None
            return op
        if kind in ("mkdir", "rmdir", "listdir"):
            return Op(kind, (dir_path(),))
        if kind == "stat":
            return Op("stat", (rng.choice([file_path, dir_path])(),))
        raise AssertionError(kind)


def _writable(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY


def _flushes(flags: int) -> bool:
    """Whether close()/fsync() of a handle opened with ``flags`` uploads (opened for writing,
    or the open created the file: its handle holds the new staged file)."""
    return bool(flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_CREAT)


def _read_range(fd: int, start: int, end: int) -> bytes:
    pieces = []
    position = start
    while position < end:
        piece = os.pread(fd, min(4 * MiB, end - position), position)
        if not piece:
            break
        pieces.append(piece)
        position += len(piece)
    return b"".join(pieces)


def _write_length(rng: random.Random) -> int:
    return rng.choice(
        [
            1,
            1,
            4096,
            4096,
            MiB,
            PART_SIZE,
            PART_SIZE - 1,
            PART_SIZE + 1,
            rng.randrange(1, 300),
            rng.randrange(1, 2 * PART_SIZE),
        ]
    )


def _offset(rng: random.Random, size: int) -> int:
    part_boundary = rng.randrange(0, max(1, size // PART_SIZE + 2)) * PART_SIZE
    return rng.choice(
        [
            0,
            size,  # appends
            size + rng.randrange(1, 5000),  # a small hole
            size + rng.randrange(1, 2 * PART_SIZE),  # a hole across a part boundary
            rng.randrange(0, size + 1),
            rng.randrange(0, size + 1),
            part_boundary,
            max(0, part_boundary - 1),
            part_boundary + 1,
        ]
    )


def _truncate_size(rng: random.Random, size: int) -> int:
    return rng.choice(
        [
            0,
            rng.randrange(0, size + 1),  # down
            size + rng.randrange(1, 3 * PART_SIZE),  # up
            size,
            PART_SIZE,
            PART_SIZE + 1,
        ]
    )


# --- trials, replays and shrinking ----------------------------------------------------------


def start_trial(sides: Sequence[Side], trial: str) -> None:
    """Point every side at a fresh, empty directory ``trial`` under its base."""
    for side in sides:
        side.close_all()
        side.trial = trial
        os.mkdir(side.root)


def run_trial(
    mount: Side,
    local: Side,
    trial: str,
    *,
    seed: int,
    count: int = 0,
    remount_every: int = 0,
    ops: Sequence[Op] | None = None,
    options: DriverOptions | None = None,
) -> Differential:
    """One trial in fresh directories: ``ops`` if given, else ``count`` ops generated from
    ``seed``. Raises :class:`DivergenceError` (with ``seed`` and the ops so far); every handle is
    closed at the end either way."""
    start_trial((mount, local), trial)
    driver = Differential(mount, local, options)
    try:
        if ops is None:
            driver.run(driver.generate(random.Random(seed), count, remount_every))
        else:
            driver.run(ops)
    except DivergenceError as divergence:
        divergence.seed = seed
        raise
    finally:
        mount.close_all()
        local.close_all()
    return driver


def shrink(
    ops: Sequence[Op],
    signature: tuple[str, str],
    replay: Callable[[list[Op]], DivergenceError | None],
    *,
    deadline_s: float = 600.0,
) -> list[Op]:
    """A shorter op list whose replay still diverges with ``signature`` (delta debugging: drop
    chunks of halving size while the divergence stays, then shrink write lengths). ``replay``
    runs a list in a fresh trial and returns its divergence or None. Bounded by ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    best = list(ops)

    def still_fails(candidate: list[Op]) -> list[Op] | None:
        if time.monotonic() > deadline:
            return None
        divergence = replay(candidate)
        if divergence is None or divergence.signature != signature:
            return None
        return candidate[: divergence.step + 1]

    chunk = max(1, len(best) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        removed_any = False
        start = 0
        while start < len(best) and time.monotonic() < deadline:
            shorter = still_fails(best[:start] + best[start + chunk :])
            if shorter is not None:
                best = shorter
                removed_any = True
            else:
                start += chunk
        if not removed_any:
            if chunk == 1:
                break
            chunk //= 2
    # Smaller writes read better: try 1 byte, then the part size, for each write.
    for index, op in enumerate(best):
        if op.kind != "pwrite" or time.monotonic() > deadline:
            continue
        for length in (1, 4096, PART_SIZE):
            if length >= op.arg("length"):
                break
            smaller = Op("pwrite", (op.args[0], op.args[1], length, op.args[3]))
            candidate = [*best[:index], smaller, *best[index + 1 :]]
            if still_fails(candidate) is not None and len(candidate) == len(best):
                best = candidate
                break
    return best
