"""Unmount what an earlier, finished run of the test suite left mounted, and nothing else.

A mount is the suite's leftover when all three hold:
- it is an ossmount mount (fsname ``ossmount:BUCKET``, type ``fuse.ossmount``);
- it lies under pytest's temporary root of this user (``/tmp/pytest-of-USER``), where every
  mount of the suite is made (tests/mount/conftest.py mounts at ``tmp_path/mntN``);
- the pytest run that made it is over: its ``pytest-N`` directory holds the lock file that
  tests/conftest.py keeps locked (shared) for the whole session, and nobody holds it now. A
  ``pytest-N`` without the lock file (a run of a checkout older than the lock) counts as over
  only if its mount no longer answers (ENOTCONN: the process serving it is gone).

So sshfs, rclone or gvfs mounts, other programs' FUSE mounts, ossmount mounts made by hand, and
the mounts of a test run still going on (another checkout's, on a shared machine) stay mounted.

    python scripts/clear_test_mounts.py [--temp-root DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import getpass
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ossmount.mount import unescape_mount_path

# tests/conftest.py locks this file (the same name there) for the whole session.
SUITE_LOCK_NAME = "ossmount-suite.lock"
OSSMOUNT_FSTYPE = "fuse.ossmount"


@dataclass(frozen=True, slots=True)
class FuseMount:
    path: Path
    fstype: str
    source: str


def pytest_temp_root() -> Path:
    """The directory pytest makes its ``pytest-N`` run directories in, as pytest computes it."""
    override = os.environ.get("PYTEST_DEBUG_TEMPROOT")
    base = Path(override or tempfile.gettempdir()).resolve()
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return base / f"pytest-of-{user}"


def _unescape(field: str) -> str:
    return os.fsdecode(unescape_mount_path(field))


def parse_mountinfo(text: str) -> list[FuseMount]:
    """Every mount of a mountinfo text, with its path, type and source."""
    mounts = []
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) > 4 and len(tail) >= 2:
            mounts.append(FuseMount(Path(_unescape(fields[4])), tail[0], _unescape(tail[1])))
    return mounts


def _is_dead(path: Path) -> bool:
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def run_is_over(run_dir: Path) -> bool:
    """Whether the pytest run of ``run_dir`` (a ``pytest-N`` directory) has ended."""
    try:
        lock = os.open(run_dir / SUITE_LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(lock)  # (closing releases the lock taken)
    return True


def leftovers(mounts: list[FuseMount], temp_root: Path) -> list[Path]:
    """The mounts among ``mounts`` that a finished run of the suite left (see module doc)."""
    found = []
    for mount in mounts:
        if mount.fstype != OSSMOUNT_FSTYPE or not mount.source.startswith("ossmount:"):
            continue
        try:
            relative = mount.path.relative_to(temp_root)
        except ValueError:
            continue
        if len(relative.parts) < 2 or not relative.parts[0].startswith("pytest-"):
            continue
        run_dir = temp_root / relative.parts[0]
        if run_is_over(run_dir) or (
            not (run_dir / SUITE_LOCK_NAME).exists() and _is_dead(mount.path)
        ):
            found.append(mount.path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temp-root", type=Path, help="pytest's root (default: as pytest's)")
    parser.add_argument("--dry-run", action="store_true", help="only print what would go")
    args = parser.parse_args(argv)
    temp_root = (args.temp_root or pytest_temp_root()).resolve()
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text(encoding="utf-8"))
    for path in leftovers(mounts, temp_root):
        print(f"clearing a mount a finished test run left: {path}")
        if args.dry_run:
            continue
        result = subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
