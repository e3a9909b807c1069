"""POSIX behaviour of writes in one mount: read-your-writes before close, two handles on one
file, a file unlinked while open, O_EXCL, O_APPEND, a failed upload reported by close()."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
import threading
from pathlib import Path

import oss2
import pytest

from ossmount.server import RunningServer
from tests.mount.conftest import Mounted, MountFactory, object_bytes

MiB = 1024 * 1024


def test_read_your_writes_before_close(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    path = mounted.path / "fresh.txt"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first line\n")
        # Not closed, so not in OSS yet; but this mount shows it: name, size, bytes.
        assert object_bytes(oss2_bucket, "fresh.txt") is None
        assert "fresh.txt" in os.listdir(mounted.path)
        assert os.stat(path).st_size == 11
        assert path.read_bytes() == b"first line\n"
        cat = subprocess.run(["cat", str(path)], capture_output=True, check=True)
        assert cat.stdout == b"first line\n"
        os.write(fd, b"second\n")
        assert path.read_bytes() == b"first line\nsecond\n"
    finally:
        os.close(fd)
    assert object_bytes(oss2_bucket, "fresh.txt") == b"first line\nsecond\n"


def test_existing_object_rewritten_in_the_middle(
    mounted: Mounted, oss2_bucket: oss2.Bucket
) -> None:
    original = os.urandom(3 * MiB)
    oss2_bucket.put_object("data.bin", original)
    path = mounted.path / "data.bin"
    with path.open("r+b") as file:
        file.seek(MiB)
        file.write(b"X" * 1000)
        file.flush()
        expected = original[:MiB] + b"X" * 1000 + original[MiB + 1000 :]
        assert path.read_bytes() == expected  # another handle sees it at once
    assert object_bytes(oss2_bucket, "data.bin") == expected


def test_two_handles_on_one_file(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    path = mounted.path / "shared.bin"
    first = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    second = os.open(path, os.O_RDWR)
    try:
        os.pwrite(first, b"A" * 100, 0)
        os.pwrite(second, b"B" * 50, 100)
        os.pwrite(first, b"C" * 10, 20)
        expected = b"A" * 20 + b"C" * 10 + b"A" * 70 + b"B" * 50
        assert os.pread(first, 1000, 0) == expected
        assert os.pread(second, 1000, 0) == expected
        assert os.fstat(second).st_size == 150
        os.fsync(first)  # publishes both handles' writes (one staged file)
        assert object_bytes(oss2_bucket, "shared.bin") == expected
        os.pwrite(second, b"D", 149)
    finally:
        os.close(first)
        os.close(second)
    assert object_bytes(oss2_bucket, "shared.bin") == expected[:149] + b"D"


def test_unlinked_while_open_keeps_working(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("victim.txt", b"still here\n")
    reader = os.open(mounted.path / "victim.txt", os.O_RDONLY)
    writer_path = mounted.path / "scratch.bin"
    writer = os.open(writer_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(writer, b"scratch data")
        os.unlink(mounted.path / "victim.txt")
        os.unlink(writer_path)
        assert "victim.txt" not in os.listdir(mounted.path)
        assert "scratch.bin" not in os.listdir(mounted.path)
        assert object_bytes(oss2_bucket, "victim.txt") is None
        assert os.pread(reader, 100, 0) == b"still here\n"
        os.write(writer, b" and more")
        os.ftruncate(writer, 20)
        assert os.pread(writer, 100, 0) == b"scratch data and mor"
        assert os.fstat(writer).st_size == 20
        # A new file of the same name is another file.
        (mounted.path / "scratch.bin").write_bytes(b"new")
        assert os.pread(writer, 100, 0) == b"scratch data and mor"
    finally:
        os.close(reader)
        os.close(writer)
    assert object_bytes(oss2_bucket, "scratch.bin") == b"new"
    assert object_bytes(oss2_bucket, "victim.txt") is None


def test_o_excl_and_o_append(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    path = mounted.path / "lock"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    oss2_bucket.put_object("log", b"one\n")
    fd = os.open(mounted.path / "log", os.O_WRONLY | os.O_APPEND)
    try:
        os.pwrite(fd, b"x", 0)  # ignored offset: O_APPEND writes at the end
        os.write(fd, b"two\n")
    finally:
        os.close(fd)
    assert object_bytes(oss2_bucket, "log") == b"one\nxtwo\n"


def test_metadata_persisted_ossfs_names(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    path = mounted.path / "meta.txt"
    path.write_text("x")
    os.chmod(path, 0o640)
    os.chown(path, 1234, 4321)
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    headers = oss2_bucket.head_object("meta.txt").headers
    assert headers["x-oss-meta-mode"] == str(stat.S_IFREG | 0o640)
    assert (headers["x-oss-meta-uid"], headers["x-oss-meta-gid"]) == ("1234", "4321")
    assert headers["x-oss-meta-mtime"] == "1500000000.123456789"
    (mounted.path / "sub").mkdir(mode=0o750)
    os.utime(mounted.path / "sub", (1_400_000_000, 1_400_000_000))
    marker = oss2_bucket.head_object("sub/").headers
    assert marker["x-oss-meta-mode"] == str(stat.S_IFDIR | 0o750)
    assert marker["x-oss-meta-mtime"] == "1400000000"
    with pytest.raises(OSError) as raised:
        os.rmdir(mounted.path)  # the mountpoint itself
    assert raised.value.errno in (errno.EBUSY, errno.EINVAL, errno.EPERM)
    (mounted.path / "sub" / "inner").write_bytes(b"1")
    with pytest.raises(OSError) as not_empty:
        os.rmdir(mounted.path / "sub")
    assert not_empty.value.errno == errno.ENOTEMPTY
    os.unlink(mounted.path / "sub" / "inner")
    os.rmdir(mounted.path / "sub")
    assert not (mounted.path / "sub").exists()
    assert object_bytes(oss2_bucket, "sub/") is None


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    result = libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_noreplace(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    rename_noreplace = 1
    (mounted.path / "a").write_bytes(b"a")
    (mounted.path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        renameat2(mounted.path / "a", mounted.path / "b", rename_noreplace)
    assert (mounted.path / "b").read_bytes() == b"b"
    renameat2(mounted.path / "a", mounted.path / "c", rename_noreplace)
    assert (mounted.path / "c").read_bytes() == b"a"
    assert object_bytes(oss2_bucket, "c") == b"a"
    assert object_bytes(oss2_bucket, "a") is None
    os.rename(mounted.path / "c", mounted.path / "b")  # over an existing file
    assert object_bytes(oss2_bucket, "b") == b"a"


def test_failed_upload_is_eio_at_close_then_retried(
    mount_ossmount: MountFactory, oss_server: RunningServer, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount()
    path = mounted.path / "unlucky.txt"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"precious")
    oss_server.faults.only_operations = frozenset({"PutObject"})
    oss_server.faults.error_rate = 1.0
    try:
        with pytest.raises(OSError) as raised:
            os.close(fd)
        assert raised.value.errno == errno.EIO
        assert path.read_bytes() == b"precious"  # still staged, still readable
    finally:
        oss_server.faults.clear()
    # The background task retries until it succeeds.
    for _ in range(200):
        if object_bytes(oss2_bucket, "unlucky.txt") == b"precious":
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert object_bytes(oss2_bucket, "unlucky.txt") == b"precious"
    assert "unlucky.txt" in mounted.log()


def test_streamed_dd_stays_within_the_staging_budget(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """Uploaded parts of a streamed file stay on disk only while the budget has room: a file
    six times the budget goes through, dropping the oldest uploaded parts."""
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(48 * MiB))
    state_dir = tmp_path / "streamed-state"
    mounted = mount_ossmount(
        [f"state_dir={state_dir},part_size=1m,upload_concurrency=2,staging_budget=8m"]
    )
    peak = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            used = 0
            for path in list((state_dir / "staging").glob("*")):
                with contextlib.suppress(FileNotFoundError):
                    used += path.stat().st_blocks * 512
            peak = max(peak, used)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        subprocess.run(
            ["dd", f"if={source}", f"of={mounted.path / 'dd.bin'}", "bs=1M", "conv=fsync"],
            check=True,
            capture_output=True,
        )
    finally:
        stop.set()
        poller.join()
    assert 0 < peak <= 8 * MiB, peak
    assert object_bytes(oss2_bucket, "dd.bin") == source.read_bytes()


def test_reader_opened_before_a_write_sees_it(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("doc.txt", b"old content, long enough")
    path = mounted.path / "doc.txt"
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, 100, 0) == b"old content, long enough"
        with path.open("r+b") as writer:
            writer.write(b"NEW")
            writer.flush()
            assert os.pread(reader, 100, 0) == b"NEW content, long enough"  # staged
        assert os.pread(reader, 100, 0) == b"NEW content, long enough"  # uploaded
        path.write_bytes(b"short")
        assert os.pread(reader, 100, 0) == b"short"
    finally:
        os.close(reader)
    assert object_bytes(oss2_bucket, "doc.txt") == b"short"


def test_staging_budget_used_up_is_enospc_and_nothing_changes(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    original = os.urandom(3 * MiB)
    oss2_bucket.put_object("large.bin", original)
    mounted = mount_ossmount(["staging_budget=1m"])
    fd = os.open(mounted.path / "large.bin", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as raised:
            os.pwrite(fd, b"x", 10)  # needs a full local copy: 3 MiB of a 1 MiB budget
        assert raised.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert object_bytes(oss2_bucket, "large.bin") == original
    assert (mounted.path / "large.bin").read_bytes() == original
    (mounted.path / "small.txt").write_bytes(b"fits")  # small writes still work
    assert object_bytes(oss2_bucket, "small.txt") == b"fits"


def test_writes_in_a_prefix_mount_land_under_the_prefix(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    oss2_bucket.put_object("outside.txt", b"not mine")
    mounted = mount_ossmount(prefix="team/data")
    root = mounted.path
    (root / "dir").mkdir()
    (root / "dir" / "a.txt").write_bytes(b"alpha")
    (root / "dir" / "link").symlink_to("a.txt")
    os.rename(root / "dir", root / "moved")
    (root / "moved" / "a.txt").chmod(0o600)
    keys = sorted(item.key for item in oss2.ObjectIteratorV2(oss2_bucket))
    assert keys == [
        "outside.txt",
        "team/data/moved/",
        "team/data/moved/a.txt",
        "team/data/moved/link",
    ]
    assert os.readlink(root / "moved" / "link") == "a.txt"
    assert (root / "moved" / "link").read_bytes() == b"alpha"
    headers = oss2_bucket.head_object("team/data/moved/a.txt").headers
    assert headers["x-oss-meta-mode"] == str(stat.S_IFREG | 0o600)


def test_second_mount_of_one_state_dir_is_refused_with_a_reason(
    mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    state = f"state_dir={tmp_path / 'shared-state'}"
    mount_ossmount([state])
    with pytest.raises(AssertionError) as refused:
        mount_ossmount([state], daemon=True)
    assert "is in use by another ossmount process" in str(refused.value)
    assert "state_dir" in str(refused.value)
