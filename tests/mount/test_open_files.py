"""Open handles keep the file they opened, and lookups stay true, across this mount's own
renames and unlinks: the reproductions of issue 15, on a real mount, as regression tests.

Each test is one sequence a differential test against a local directory found diverging (or
losing data); the assertions are what a local file system answers.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import oss2
import pytest

from ossmount.fs.journal import MODE_LOCAL, STATE_FLUSHING, Journal
from tests.mount.conftest import Mounted, MountFactory, object_bytes

MiB = 1024 * 1024


def test_rename_onto_a_file_open_for_writing_keeps_the_renamed_data(
    mounted: Mounted, oss2_bucket: oss2.Bucket
) -> None:
    a, b = mounted.path / "a", mounted.path / "b"
    a.write_bytes(b"new")
    fd = os.open(b, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"old data")
        os.rename(a, b)
        assert os.stat(b).st_size == 3
        # The old handle goes on with the file it opened, which has no name any more.
        assert os.fstat(fd).st_size == 8
        assert os.pread(fd, 100, 0) == b"old data"
        os.pwrite(fd, b"!", 8)
        assert os.pread(fd, 100, 0) == b"old data!"
    finally:
        os.close(fd)
    assert b.read_bytes() == b"new"
    assert object_bytes(oss2_bucket, "b") == b"new"
    assert object_bytes(oss2_bucket, "a") is None


def test_rename_onto_a_file_open_for_reading_keeps_its_handles_reading_it(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    # direct_io: every read reaches the mount (the page cache would hide the handle's path).
    mounted = mount_ossmount(["direct_io"])
    oss2_bucket.put_object("target", b"t" * 5000)
    oss2_bucket.put_object("source", b"s" * 10)
    first = os.open(mounted.path / "target", os.O_RDONLY)
    second = os.open(mounted.path / "target", os.O_RDONLY)
    try:
        assert os.pread(first, 10, 0) == b"t" * 10
        os.rename(mounted.path / "source", mounted.path / "target")
        assert os.stat(mounted.path / "target").st_size == 10
        assert os.fstat(second).st_size == 5000
        assert os.pread(second, 10000, 0) == b"t" * 5000
        assert os.pread(first, 10, 4990) == b"t" * 10
    finally:
        os.close(first)
        os.close(second)
    assert (mounted.path / "target").read_bytes() == b"s" * 10
    assert object_bytes(oss2_bucket, "target") == b"s" * 10


def test_a_pending_upload_never_lands_over_a_rename(
    mounted: Mounted, oss2_bucket: oss2.Bucket
) -> None:
    """A file still being written when another file is renamed onto it: its close() must not
    publish the old data over the renamed file."""
    target = mounted.path / "dst.txt"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"written before the rename")
        (mounted.path / "src.txt").write_bytes(b"renamed")
        os.rename(mounted.path / "src.txt", target)
        os.write(fd, b", and after")
        os.fsync(fd)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"renamed"
    assert object_bytes(oss2_bucket, "dst.txt") == b"renamed"


def test_open_reader_follows_a_rename(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("moving", b"payload " * 1000)
    fd = os.open(mounted.path / "moving", os.O_RDONLY)
    try:
        os.rename(mounted.path / "moving", mounted.path / "moved")
        assert os.pread(fd, 16, 0) == b"payload payload "
        assert os.fstat(fd).st_size == 8000
        # The old name taken by a new file changes nothing for the handle.
        (mounted.path / "moving").write_bytes(b"another file")
        assert os.pread(fd, 8, 7992) == b"payload "
    finally:
        os.close(fd)


def test_open_reader_follows_a_directory_rename(mounted: Mounted, oss2_bucket: oss2.Bucket) -> None:
    oss2_bucket.put_object("old-dir/file", b"x" * 3000)
    fd = os.open(mounted.path / "old-dir" / "file", os.O_RDONLY)
    try:
        os.rename(mounted.path / "old-dir", mounted.path / "new-dir")
        assert os.pread(fd, 5000, 0) == b"x" * 3000
    finally:
        os.close(fd)
    assert (mounted.path / "new-dir" / "file").read_bytes() == b"x" * 3000


def test_directory_rename_while_a_large_file_is_open_for_writing(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """The multipart upload at close() copies unchanged parts from the base object, which the
    directory rename moved: the copy must come from the new key (or the local bytes), and the
    bucket must stay mountable."""
    options = ["part_size=1M", "multipart_threshold=2M", f"state_dir={tmp_path / 'state'}"]
    mounted = mount_ossmount(options)
    data = bytearray(os.urandom(1024) * (5 * 1024))  # 5 MiB
    (mounted.path / "d0").mkdir()
    (mounted.path / "d0" / "big").write_bytes(data)
    fd = os.open(mounted.path / "d0" / "big", os.O_RDWR)
    try:
        os.pwrite(fd, b"A", 100)
        os.fsync(fd)
        os.rename(mounted.path / "d0", mounted.path / "d1")
        os.pwrite(fd, b"B", 3 * MiB + 7)
    finally:
        os.close(fd)  # raised EIO before: UploadPartCopy from d0/big, which was gone
    data[100:101] = b"A"
    data[3 * MiB + 7 : 3 * MiB + 8] = b"B"
    assert object_bytes(oss2_bucket, "d1/big") == bytes(data)
    assert object_bytes(oss2_bucket, "d0/big") is None
    mounted.unmount()
    again = mount_ossmount(options)
    assert (again.path / "d1" / "big").read_bytes() == bytes(data)
    assert "FAILED" not in again.log()


def test_recovery_quarantines_what_it_can_never_finish(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """A pending upload that can never be completed (its staging file is gone, as after a
    damaged disk) is moved aside and reported; it must not make the bucket unmountable."""
    state_dir = tmp_path / "state"
    (state_dir / "staging").mkdir(parents=True)
    journal = Journal(state_dir / "journal.sqlite")
    file_id = journal.add(
        "lost/file",
        state=STATE_FLUSHING,
        mode=MODE_LOCAL,
        size=5,
        metadata={},
        forbid_overwrite=False,
        part_size=MiB,
        base_key=None,
        base_etag=None,
        base_size=0,
        base_crc64=None,
    )
    journal.close()
    mounted = mount_ossmount([f"state_dir={state_dir}"])
    (mounted.path / "after").write_bytes(b"the mount works")
    assert object_bytes(oss2_bucket, "after") == b"the mount works"
    mounted.unmount()
    assert "recovery: QUARANTINED lost/file" in mounted.log()
    assert (state_dir / "quarantine" / str(file_id) / "key.txt").read_text().startswith("lost/file")
    assert object_bytes(oss2_bucket, "lost/file") is None
    # Forgotten by the journal: the next mount has nothing left to recover.
    again = mount_ossmount([f"state_dir={state_dir}"])
    assert (again.path / "after").read_bytes() == b"the mount works"
    assert "QUARANTINED" not in again.log()


def test_missing_name_cached_before_a_directory_rename_is_found_after(
    mount_ossmount: MountFactory,
) -> None:
    # Missing names are remembered long enough for the rename to meet the cached answer.
    root = mount_ossmount(["negative_timeout=30"]).path
    (root / "d0").mkdir()
    (root / "d1").mkdir()
    (root / "d1" / "x").touch()
    os.rename(root / "d1" / "x", root / "y")
    (root / "d0" / "g").touch()
    with pytest.raises(FileNotFoundError):
        os.stat(root / "d1" / "g")
    subprocess.run(["sleep", "1.2"], check=True)  # the kernel's entries (1 s) expire
    subprocess.run(["mv", "-T", str(root / "d0"), str(root / "d1")], check=True)
    assert os.stat(root / "d1" / "g").st_size == 0
    assert sorted(os.listdir(root / "d1")) == ["g"]


def test_a_moved_directory_is_not_seen_at_its_old_name(mounted: Mounted) -> None:
    root = mounted.path
    (root / "d0" / "e0").mkdir(parents=True)
    (root / "f6").touch()
    os.rename(root / "f6", root / "d0" / "g1")
    assert sorted(os.listdir(root / "d0")) == ["e0", "g1"]
    os.rename(root / "d0", root / "d1")
    (root / "d0").mkdir()
    (root / "d0" / "g1").touch()
    os.rename(root / "d0" / "g1", root / "f4")
    (root / "d0" / "e0").mkdir()  # EEXIST before: d0/e0/ was still cached as a directory
    assert os.listdir(root / "d0") == ["e0"]
    assert sorted(os.listdir(root / "d1")) == ["e0", "g1"]


def test_mkdir_refuses_a_name_a_directory_rename_moved_in(mounted: Mounted) -> None:
    root = mounted.path
    (root / "src" / "inner").mkdir(parents=True)
    (root / "dst").mkdir()
    assert os.listdir(root / "dst") == []
    os.rename(root / "src", root / "dst" / "moved")
    with pytest.raises(FileExistsError):
        (root / "dst" / "moved").mkdir()
    with pytest.raises(FileExistsError):
        (root / "dst" / "moved" / "inner").mkdir()
    with pytest.raises(OSError) as gone:
        (root / "src" / "inner").mkdir()
    assert gone.value.errno == errno.ENOENT


def test_renamed_file_then_new_file_at_old_name(mounted: Mounted) -> None:
    root = mounted.path
    (root / "one").write_bytes(b"1")
    os.rename(root / "one", root / "two")
    (root / "one").write_bytes(b"uno")
    assert (root / "one").read_bytes() == b"uno"
    assert (root / "two").read_bytes() == b"1"
    assert sorted(os.listdir(root)) == ["one", "two"]


def test_a_file_unlinked_while_open_stays_gone_after_its_directory_moves(
    mounted: Mounted, oss2_bucket: oss2.Bucket
) -> None:
    """The inode of a file unlinked while open must not come back under the directory's new
    name (its close() then listed a file the bucket does not have)."""
    root = mounted.path
    (root / "d1").mkdir()
    (root / "d1" / "f2").write_bytes(b"v" * 300_000)
    writer = os.open(root / "d1" / "f2", os.O_WRONLY)
    try:
        os.rename(root / "d1", root / "d0")
        os.pwrite(writer, b"w" * 1000, 1)
        os.unlink(root / "d0" / "f2")
        os.rename(root / "d0", root / "d1")
        assert os.listdir(root / "d1") == []
    finally:
        os.close(writer)
    assert os.listdir(root / "d1") == []
    assert object_bytes(oss2_bucket, "d1/f2") is None


def test_rename_keeps_the_mtime_of_a_file_with_none_stored(
    mounted: Mounted, oss2_bucket: oss2.Bucket
) -> None:
    """OSS gives the copy a new Last-Modified: the rename stores the old one as the mtime."""
    oss2_bucket.put_object("plain", b"no x-oss-meta-mtime", headers={"Content-Type": "text/x-a"})
    before = os.stat(mounted.path / "plain").st_mtime
    subprocess.run(["sleep", "1.5"], check=True)
    os.rename(mounted.path / "plain", mounted.path / "moved")
    head = oss2_bucket.head_object("moved")
    assert float(head.headers["x-oss-meta-mtime"]) == before
    assert head.headers["Content-Type"] == "text/x-a"
    subprocess.run(["sleep", "1.2"], check=True)  # the kernel's attributes expire
    assert os.stat(mounted.path / "moved").st_mtime == before


def test_a_replaced_open_file_truncated_to_zero_uploads_nothing(
    mounted: Mounted, oss2_bucket: oss2.Bucket
) -> None:
    """Found under faults by the differential test: the handle of a file replaced by a rename,
    truncated to 0 and written past a part, started a multipart upload to the name the other
    file now has (and, as an O_EXCL file, failed the write with EEXIST)."""
    root = mounted.path
    fd = os.open(root / "f0", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"first")
        (root / "f1").write_bytes(b"the renamed file")
        os.rename(root / "f1", root / "f0")
        os.ftruncate(fd, 0)
        big = os.urandom(20 * MiB)  # more than two parts of the default size
        assert os.pwrite(fd, big, 0) == len(big)
        assert os.pread(fd, 16, 10 * MiB) == big[10 * MiB : 10 * MiB + 16]
    finally:
        os.close(fd)
    assert object_bytes(oss2_bucket, "f0") == b"the renamed file"
    assert list(oss2_bucket.list_multipart_uploads().upload_list) == []
