"""Reads through a real mount, checked with real tools against data uploaded with oss2."""

from __future__ import annotations

import errno
import filecmp
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import oss2
import pytest

from ossmount.oss.crc64 import crc64, crc64_combine
from ossmount.server.store import ObjectRecord
from tests.conftest import TEST_BUCKET
from tests.fs.test_reader import corrupt_stored_copy
from tests.mount.conftest import MountFactory

pytestmark = pytest.mark.mount

MIB = 1024 * 1024


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_sha256sum_of_large_object(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    source = tmp_path / "large.bin"
    data = random_file(source, 96 * MIB + 12345)
    oss2_bucket.put_object_from_file("dir/large.bin", str(source))
    mount = mount_ossmount()
    result = subprocess.run(
        ["sha256sum", str(mount.path / "dir" / "large.bin")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert "CRC-64" not in mount.log()


def test_cp_big_file_and_multipart_object(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    random_file(source, 40 * MIB + 7)
    oss2_bucket.put_object_from_file("big.bin", str(source))
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(123_457)]
    upload_id = oss2_bucket.init_multipart_upload("multi.bin").upload_id
    done = [
        oss2.models.PartInfo(n, oss2_bucket.upload_part("multi.bin", upload_id, n, body).etag)
        for n, body in enumerate(parts, start=1)
    ]
    oss2_bucket.complete_multipart_upload("multi.bin", upload_id, done)
    mount = mount_ossmount()
    copy = tmp_path / "copy.bin"
    subprocess.run(["cp", str(mount.path / "big.bin"), str(copy)], check=True)
    assert filecmp.cmp(source, copy, shallow=False)
    assert (mount.path / "multi.bin").read_bytes() == b"".join(parts)


def test_appendable_and_zero_byte_objects(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    oss2_bucket.put_object("empty", b"")
    first, second = os.urandom(3 * MIB + 1), os.urandom(2 * MIB + 2)
    position = oss2_bucket.append_object("log.bin", 0, first).next_position
    oss2_bucket.append_object("log.bin", position, second)
    mount = mount_ossmount()
    result = subprocess.run(["cat", str(mount.path / "empty")], capture_output=True, check=True)
    assert result.stdout == b""
    assert os.stat(mount.path / "empty").st_size == 0
    assert (mount.path / "log.bin").read_bytes() == first + second


def test_object_replaced_during_read_fails_that_handle(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any
) -> None:
    old = os.urandom(48 * MIB)
    new = os.urandom(48 * MIB)
    oss2_bucket.put_object("changing.bin", old)
    mount = mount_ossmount()
    path = mount.path / "changing.bin"
    seen = bytearray()
    with open(path, "rb", buffering=0) as handle:
        seen += handle.read(MIB)
        oss2_bucket.put_object("changing.bin", new)
        with pytest.raises(OSError) as raised:
            while chunk := handle.read(MIB):
                seen += chunk
    assert raised.value.errno == errno.EIO
    assert bytes(seen) == old[: len(seen)]
    assert len(seen) < len(old)
    # A new open sees the new version.
    assert path.read_bytes() == new


def test_damaged_object_read_whole_is_eio(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any
) -> None:
    data = os.urandom(30 * MIB + 11)
    oss2_bucket.put_object("damaged.bin", data)
    corrupt_stored_copy(oss_server.root, data, 21 * MIB)
    mount = mount_ossmount()
    result = subprocess.run(
        ["cat", str(mount.path / "damaged.bin")], capture_output=True, check=False
    )
    assert result.returncode != 0
    assert b"Input/output error" in result.stderr
    assert "CRC-64" in mount.log()


def test_read_at_offsets_and_tail(oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory) -> None:
    data = os.urandom(9 * MIB + 3)
    oss2_bucket.put_object("seek.bin", data)
    mount = mount_ossmount()
    with open(mount.path / "seek.bin", "rb", buffering=0) as handle:
        for offset, size in ((5 * MIB - 3, 10), (0, 4096), (9 * MIB, MIB), (MIB + 17, 2 * MIB)):
            handle.seek(offset)
            assert handle.read(size) == data[offset : offset + size]


def test_copy_out_through_server_errors_and_resets(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    files = {f"flaky/f{i}.bin": os.urandom(50_000 + i * 997) for i in range(20)}
    files["flaky/big.bin"] = os.urandom(24 * MIB + 5)
    for key, body in files.items():
        oss2_bucket.put_object(key, body)
    mount = mount_ossmount()
    oss_server.faults.only_operations = frozenset({"GetObject"})
    oss_server.faults.error_rate = 0.05
    oss_server.faults.reset_rate = 0.05
    try:
        out = tmp_path / "out"
        subprocess.run(["cp", "-r", str(mount.path / "flaky"), str(out)], check=True, timeout=120)
    finally:
        oss_server.faults.error_rate = 0
        oss_server.faults.reset_rate = 0
    for key, body in files.items():
        assert (out / key.removeprefix("flaky/")).read_bytes() == body, key


def test_direct_io_reads_whole_files_right(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    source = tmp_path / "direct.bin"
    data = random_file(source, 20 * MIB + 4321)
    oss2_bucket.put_object_from_file("direct.bin", str(source))
    mount = mount_ossmount(options=["direct_io"])
    copy = tmp_path / "copy.bin"
    subprocess.run(
        ["dd", f"if={mount.path / 'direct.bin'}", f"of={copy}", "bs=1M", "status=none"],
        check=True,
    )
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(data).digest()
    with (mount.path / "direct.bin").open("rb") as handle:
        handle.seek(20 * MIB)
        assert handle.read() == data[20 * MIB :]


# Maps a file and prints the SHA-256 of a private and of a shared read-only mapping (or the
# errno that refused the mapping). A child process: the test server runs in pytest's process,
# and a page fault on the mount taken while holding its GIL would wait for the server forever.
MMAP_PROBE = """
import hashlib, mmap, sys
with open(sys.argv[1], "rb") as handle:
    for flags in (mmap.MAP_PRIVATE, mmap.MAP_SHARED):
        try:
            with mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as view:
                print(hashlib.sha256(view).hexdigest())
        except OSError as exc:
            print(f"errno {exc.errno}")
"""


@pytest.mark.parametrize("direct_io", [False, True], ids=["page-cache", "direct-io"])
def test_mmap_of_a_file(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, direct_io: bool
) -> None:
    data = os.urandom(3 * MIB + 17)
    oss2_bucket.put_object("mapped.bin", data)
    mount = mount_ossmount(options=["direct_io"] if direct_io else [])
    probe = [sys.executable, "-c", MMAP_PROBE, str(mount.path / "mapped.bin")]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
    private, shared = result.stdout.split()[:1], result.stdout.split()[1:]
    digest = hashlib.sha256(data).hexdigest()
    assert private == [digest]
    # The kernel refuses shared mappings of FOPEN_DIRECT_IO files unless the file system
    # negotiates FUSE_DIRECT_IO_ALLOW_MMAP, which libfuse 3.14 cannot (docs/configuration.md).
    assert shared == (["errno", str(errno.ENODEV)] if direct_io else [digest])


def zeros_crc64(length: int) -> int:
    """CRC-64 of ``length`` zero bytes, by doubling with crc64_combine (no 6 GiB buffer)."""
    piece_crc, piece = crc64(bytes(MIB)), MIB
    crc = crc64(bytes(length % MIB))
    whole = length // MIB
    total = 0
    while whole:
        if whole & 1:
            crc = crc64_combine(piece_crc, crc, total + length % MIB)
            total += piece
        piece_crc = crc64_combine(piece_crc, piece_crc, piece)
        piece *= 2
        whole >>= 1
    return crc


def test_zeros_crc64_matches_hashing() -> None:
    for length in (0, 5, MIB, 3 * MIB + 7, 5 * MIB):
        assert zeros_crc64(length) == crc64(bytes(length)), length


def test_object_over_5_gib_reads_right_at_any_offset(
    oss_server: Any, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    # A 6 GiB object as a sparse data file put straight into the server's index: no 6 GiB of
    # upload, no disk. It is zero but for marks on both sides of 4 GiB and 5 GiB and at the end.
    size = 6 * 1024 * MIB + 12345
    marks = {
        4 * 1024 * MIB - 3: b"<4GiB>",
        5 * 1024 * MIB - 3: b"<5GiB>",
        5 * 1024 * MIB + MIB + 7: b"beyond 5 GiB",
        size - 4: b"end!",
    }
    store = oss_server.store
    sparse = store.tmp_dir / "sparse.bin"
    with sparse.open("wb") as out:
        out.truncate(size)
        for offset, mark in marks.items():
            out.seek(offset)
            out.write(mark)
    crc, position = 0, 0
    for offset, mark in sorted(marks.items()):
        crc = crc64_combine(crc, zeros_crc64(offset - position), offset - position)
        crc = crc64_combine(crc, crc64(mark), len(mark))
        position = offset + len(mark)
    store.commit_object(
        ObjectRecord(TEST_BUCKET, "huge.bin", store.install_object_file(sparse), size,
                     '"6D5B0F2A6C3E4E8E9C0B7F1A2D3C4B5A-2"', crc, time.time(), "Multipart")
    )  # fmt: skip
    mount = mount_ossmount()
    path = mount.path / "huge.bin"
    assert path.stat().st_size == size
    # Read whole first (nothing cached yet), the object is checked against its CRC-64: a
    # mismatch would be an EIO, and fail dd.
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True)

    def expected(offset: int, length: int) -> bytes:
        data = bytearray(max(0, min(length, size - offset)))
        for at, mark in marks.items():
            for index, byte in enumerate(mark):
                if 0 <= at + index - offset < len(data):
                    data[at + index - offset] = byte
        return bytes(data)

    for offset, mark in marks.items():
        # dd with a byte offset beyond 5 GiB: iflag=skip_bytes,count_bytes
        result = subprocess.run(
            ["dd", f"if={path}", "bs=64K", f"skip={offset - 10}", f"count={len(mark) + 20}",
             "iflag=skip_bytes,count_bytes", "status=none"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        assert result.stdout == expected(offset - 10, len(mark) + 20), offset
    with path.open("rb") as handle:
        handle.seek(-4, os.SEEK_END)
        assert handle.read() == b"end!"
        handle.seek(5 * 1024 * MIB - 2 * MIB)
        assert handle.read(4 * MIB) == expected(5 * 1024 * MIB - 2 * MIB, 4 * MIB)
