"""The data cache (`-o use_cache=DIR`) and random reads, on real mounts with real tools.

Requests are counted at the server; bytes received by the mount come from `ossmount status`.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import oss2
import pytest

from tests.mount.conftest import (
    Mounted,
    MountFactory,
    force_unmount,
    mount_command,
    ossmount_env,
)
from tests.mount.test_status import status_of, status_text

pytestmark = pytest.mark.mount

MIB = 1024 * 1024
# Every metadata cache off: a change made behind the mount's back shows at the next open.
NO_METADATA_CACHES = (
    "attr_timeout=0,entry_timeout=0,negative_timeout=0,stat_cache_ttl=0,list_cache_ttl=0"
)


def gets(oss_server: Any) -> int:
    return int(oss_server.stats.count("GetObject"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_data_bytes(cache_dir: Path) -> int:
    """Disk space the cached object data takes (sparse files count their data only)."""
    return sum(p.stat().st_blocks * 512 for p in cache_dir.rglob("data/*/*") if p.is_file())


def mount_cached(
    mount_ossmount: MountFactory, cache_dir: Path, *options: str, state: str = "state"
) -> Mounted:
    return mount_ossmount([f"use_cache={cache_dir}", *options])


def test_a_remount_reads_from_the_cache_without_a_get(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    data = os.urandom(8 * MIB + 12345)
    oss2_bucket.put_object("dir/data.bin", data)
    cache_dir = tmp_path / "cache"
    first = mount_cached(mount_ossmount, cache_dir)
    assert (first.path / "dir" / "data.bin").read_bytes() == data
    first.unmount()
    assert cache_data_bytes(cache_dir) >= len(data)

    oss_server.stats.reset()
    second = mount_cached(mount_ossmount, cache_dir)
    assert sha256_of(second.path / "dir" / "data.bin") == hashlib.sha256(data).hexdigest()
    assert gets(oss_server) == 0
    status = status_of(second)["caches"]["data"]
    assert status["hits"] > 0 and status["corrupt_chunks"] == 0
    assert status["cached_bytes"] == len(data)
    assert f"data cache 8.0 MiB of 10.0 GiB in {cache_dir}" in status_text(second)


def test_an_object_changed_in_oss_is_read_anew(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    old, new = os.urandom(2 * MIB), os.urandom(2 * MIB)
    oss2_bucket.put_object("changing.bin", old)
    cache_dir = tmp_path / "cache"
    mounted = mount_cached(mount_ossmount, cache_dir, NO_METADATA_CACHES)
    path = mounted.path / "changing.bin"
    assert path.read_bytes() == old
    oss2_bucket.put_object("changing.bin", new)  # same size, another ETag
    assert path.read_bytes() == new
    mounted.unmount()
    remounted = mount_cached(mount_ossmount, cache_dir, NO_METADATA_CACHES)
    oss_server.stats.reset()
    assert (remounted.path / "changing.bin").read_bytes() == new
    assert gets(oss_server) == 0  # the new version is the one cached
    assert cache_data_bytes(cache_dir) < 2 * len(new)  # the old one is gone


def test_a_corrupted_cache_file_is_detected_and_refetched(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB)
    oss2_bucket.put_object("victim.bin", data)
    cache_dir = tmp_path / "cache"
    first = mount_cached(mount_ossmount, cache_dir)
    assert (first.path / "victim.bin").read_bytes() == data
    first.unmount()
    [cached] = [p for p in cache_dir.rglob("data/*/*") if p.is_file()]
    with cached.open("r+b") as file:
        file.seek(MIB + 100)
        file.write(b"\0" * 10)

    oss_server.stats.reset()
    second = mount_cached(mount_ossmount, cache_dir)
    assert (second.path / "victim.bin").read_bytes() == data
    assert gets(oss_server) >= 1
    assert status_of(second)["caches"]["data"]["corrupt_chunks"] >= 1
    assert "do not match their CRC-64" in second.log()


def test_a_small_cache_stays_within_its_bound(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    contents = {f"f{i}.bin": os.urandom(3 * MIB) for i in range(4)}
    for key, data in contents.items():
        oss2_bucket.put_object(key, data)
    cache_dir = tmp_path / "cache"
    mounted = mount_cached(mount_ossmount, cache_dir, "cache_size=4M")
    for _ in range(2):
        for key, data in contents.items():
            assert (mounted.path / key).read_bytes() == data
            # One block beyond the bound at most, for the one reader.
            assert cache_data_bytes(cache_dir) <= 5 * MIB
    assert status_of(mounted)["caches"]["data"]["bytes_evicted"] > 0


def test_a_mount_killed_while_filling_the_cache(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    data = os.urandom(48 * MIB)
    oss2_bucket.put_object("big.bin", data)
    cache_dir = tmp_path / "cache"
    first = mount_cached(mount_ossmount, cache_dir, "cache_size=32M")
    oss_server.faults.latency_ms = 30
    reader = subprocess.Popen(
        ["dd", f"if={first.path / 'big.bin'}", "of=/dev/null", "bs=1M"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while cache_data_bytes(cache_dir) < 4 * MIB and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    force_unmount(first.path)
    reader.kill()
    reader.wait()
    oss_server.faults.latency_ms = 0

    second = mount_cached(mount_ossmount, cache_dir, "cache_size=32M")
    assert "did not end cleanly" in second.log()
    assert sha256_of(second.path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert status_of(second)["caches"]["data"]["corrupt_chunks"] == 0
    assert cache_data_bytes(cache_dir) <= 33 * MIB


def test_two_handles_of_one_file_share_what_was_fetched(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    data = os.urandom(16 * MIB)
    oss2_bucket.put_object("shared.bin", data)
    mounted = mount_cached(mount_ossmount, tmp_path / "cache")
    path = mounted.path / "shared.bin"
    offsets = random.Random(7).sample(range(0, len(data) - 4096, 4096), 40)
    one = os.open(path, os.O_RDONLY)
    two = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            assert os.pread(one, 4096, offset) == data[offset : offset + 4096]
        oss_server.stats.reset()
        # The second handle reads the same data: from the page cache or the data cache.
        for offset in offsets:
            assert os.pread(two, 4096, offset) == data[offset : offset + 4096]
        assert gets(oss_server) == 0
        # Sequential reads through one while the other reads at random.
        for position in range(0, 4 * MIB, 256 * 1024):
            assert os.pread(one, 256 * 1024, position) == data[position : position + 256 * 1024]
            offset = offsets[position // (256 * 1024) % len(offsets)] + 100
            assert os.pread(two, 1000, offset) == data[offset : offset + 1000]
    finally:
        os.close(one)
        os.close(two)


def test_a_second_mount_of_the_same_cache_directory_is_refused(
    mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    mount_cached(mount_ossmount, cache_dir)
    second = tmp_path / "second"
    second.mkdir()
    command = mount_command(oss_server.endpoint, "test-bucket", second)
    command += ["-o", f"use_cache={cache_dir},state_dir={tmp_path / 'state-second'}"]
    if oss_server.ca_file is not None:
        command += ["-o", f"ssl_ca_file={oss_server.ca_file}"]
    result = subprocess.run(
        command, env=ossmount_env(), capture_output=True, text=True, timeout=90, check=False
    )
    force_unmount(second)
    assert result.returncode != 0
    assert "in use by another ossmount process" in result.stderr


def test_random_reads_fetch_what_they_touch(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any
) -> None:
    data = os.urandom(64 * MIB)
    oss2_bucket.put_object("random.bin", data)
    mounted = mount_ossmount()
    offsets = random.Random(3).sample(range(0, len(data) - 4096, 4096), 30)
    before = status_of(mounted)["bytes_in"]
    oss_server.stats.reset()
    descriptor = os.open(mounted.path / "random.bin", os.O_RDONLY)
    try:
        for offset in offsets:
            assert os.pread(descriptor, 4096, offset) == data[offset : offset + 4096]
    finally:
        os.close(descriptor)
    received = status_of(mounted)["bytes_in"] - before
    assert gets(oss_server) <= len(offsets) + 2
    assert received <= len(offsets) * 64 * 1024  # not a 1 MiB block per read


def test_sqlite_reads_a_database_through_the_mount(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    local = tmp_path / "local.db"
    with sqlite3.connect(local) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            ((i, f"name-{i}", os.urandom(200)) for i in range(80_000)),
        )
    db_size = local.stat().st_size
    oss2_bucket.put_object_from_file("db/app.db", str(local))
    query = "SELECT name, hex(blob) FROM t WHERE id IN (7, 12345, 79999)"
    expected = subprocess.run(
        ["sqlite3", str(local), query], capture_output=True, text=True, check=True
    ).stdout
    mounted = mount_cached(mount_ossmount, tmp_path / "cache")
    before = status_of(mounted)["bytes_in"]
    uri = f"file:{mounted.path / 'db' / 'app.db'}?mode=ro"
    result = subprocess.run(["sqlite3", uri, query], capture_output=True, text=True, check=True)
    assert result.stdout == expected and expected.count("\n") == 3
    received = status_of(mounted)["bytes_in"] - before
    assert received < db_size // 4, (received, db_size)  # the pages it needs, not the file


def test_unzip_lists_a_large_zip_reading_little_of_it(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, oss_server: Any, tmp_path: Path
) -> None:
    local = tmp_path / "archive.zip"
    with zipfile.ZipFile(local, "w", zipfile.ZIP_STORED) as archive:
        for i in range(120):
            archive.writestr(f"member-{i:03}.bin", os.urandom(300 * 1024 + i))
    oss2_bucket.put_object_from_file("archive.zip", str(local))
    expected = subprocess.run(
        ["unzip", "-l", str(local)], capture_output=True, text=True, check=True
    ).stdout
    mounted = mount_cached(mount_ossmount, tmp_path / "cache")
    before = status_of(mounted)["bytes_in"]
    oss_server.stats.reset()
    result = subprocess.run(
        ["unzip", "-l", str(mounted.path / "archive.zip")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.replace(str(mounted.path / "archive.zip"), str(local)) == expected
    received = status_of(mounted)["bytes_in"] - before
    assert received < 2 * MIB, received  # the central directory, not 36 MiB of members
    assert gets(oss_server) <= 10


def random_reads_one_per_block(path: Path, data: bytes, at: int) -> None:
    """A 4 KiB read at ``at`` in every 1 MiB block, last block first (so none continues the
    previous one: they are random reads)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        for block in reversed(range(len(data) // MIB)):
            offset = block * MIB + at
            assert os.pread(descriptor, 4096, offset) == data[offset : offset + 4096]
    finally:
        os.close(descriptor)


def wait_for_quiet_data_cache(mounted: Mounted) -> int:
    """The data cache's hit count once it stopped moving (page-cache pushes run behind)."""
    hits = status_of(mounted)["caches"]["data"]["hits"]
    for _ in range(50):
        time.sleep(0.1)
        now = status_of(mounted)["caches"]["data"]["hits"]
        if now == hits:
            return int(now)
        hits = now
    return int(hits)


def test_random_reads_of_cached_blocks_are_then_served_by_the_page_cache(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    data = os.urandom(8 * MIB)
    oss2_bucket.put_object("pages.bin", data)
    cache_dir = tmp_path / "cache"
    first = mount_cached(mount_ossmount, cache_dir)
    assert (first.path / "pages.bin").read_bytes() == data
    first.unmount()

    second = mount_cached(mount_ossmount, cache_dir)
    random_reads_one_per_block(second.path / "pages.bin", data, at=8192)
    hits = wait_for_quiet_data_cache(second)
    # Elsewhere in the same blocks: the kernel has the pages, no read reaches the mount.
    random_reads_one_per_block(second.path / "pages.bin", data, at=600_000)
    assert status_of(second)["caches"]["data"]["hits"] == hits


def test_pages_pushed_for_an_old_version_never_show_after_a_change(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    old, new = os.urandom(8 * MIB), os.urandom(8 * MIB)
    oss2_bucket.put_object("versions.bin", old)
    cache_dir = tmp_path / "cache"
    first = mount_cached(mount_ossmount, cache_dir, NO_METADATA_CACHES)
    assert (first.path / "versions.bin").read_bytes() == old
    first.unmount()
    second = mount_cached(mount_ossmount, cache_dir, NO_METADATA_CACHES)
    path = second.path / "versions.bin"
    for round_number in range(3):
        random_reads_one_per_block(path, old if round_number == 0 else new, at=4096)
        if round_number == 0:
            oss2_bucket.put_object("versions.bin", new)  # same size, another ETag
        assert path.read_bytes() == new


def test_writes_after_page_cache_pushes_read_back_as_written(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    data = bytearray(os.urandom(6 * MIB))
    oss2_bucket.put_object("edited.bin", bytes(data))
    cache_dir = tmp_path / "cache"
    first = mount_cached(mount_ossmount, cache_dir)
    assert (first.path / "edited.bin").read_bytes() == data
    first.unmount()
    second = mount_cached(mount_ossmount, cache_dir)
    path = second.path / "edited.bin"
    reader = os.open(path, os.O_RDONLY)
    try:
        random_reads_one_per_block(path, bytes(data), at=4096)  # pushes whole blocks
        writer = os.open(path, os.O_RDWR)
        try:
            patch = os.urandom(300_000)
            os.pwrite(writer, patch, 2 * MIB + 1000)
            data[2 * MIB + 1000 : 2 * MIB + 1000 + len(patch)] = patch
            os.ftruncate(writer, 5 * MIB + 7)
            del data[5 * MIB + 7 :]
            # Random reads through the older read-only handle meanwhile.
            for block in reversed(range(5)):
                offset = block * MIB + 2 * 4096
                assert os.pread(reader, 4096, offset) == data[offset : offset + 4096]
        finally:
            os.close(writer)
        assert path.read_bytes() == data
    finally:
        os.close(reader)
    second.unmount()
    third = mount_cached(mount_ossmount, cache_dir)
    random_reads_one_per_block(third.path / "edited.bin", bytes(data[: 5 * MIB]), at=8192)
    assert (third.path / "edited.bin").read_bytes() == data
    assert bytes(data) == oss2_bucket.get_object("edited.bin").read()
