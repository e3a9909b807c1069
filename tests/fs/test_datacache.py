"""The persistent data cache on its own: real files and SQLite in a temporary directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ossmount.fs.datacache import CHUNK_SIZE, DataCache, DataCacheError

MIB = 1024 * 1024
BLOCK = MIB


def open_cache(root: Path, capacity: int = 64 * MIB, **options: bool) -> DataCache:
    return DataCache(root, capacity=capacity, block_size=BLOCK, **options)


def disk_usage(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in (root / "data").rglob("*") if p.is_file())


def test_stored_bytes_come_back_after_reopening(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 1000)
    cache = open_cache(tmp_path)
    obj = cache.open_object("dir/a.bin", '"e1"', len(data))
    assert obj.read(0, 100) is None
    obj.store(0, data[:BLOCK])
    obj.store(2 * BLOCK, data[2 * BLOCK :])  # the short tail
    assert obj.read(10, 20_000) == data[10:20_000]
    assert obj.read(BLOCK - 5, BLOCK + 5) is None  # block 1 was never stored
    cache.release(obj)
    cache.close()

    cache = open_cache(tmp_path)
    obj = cache.open_object("dir/a.bin", '"e1"', len(data))
    assert obj.has_block(0, BLOCK) and obj.has_block(2, BLOCK) and not obj.has_block(1, BLOCK)
    assert obj.read(2 * BLOCK, len(data)) == data[2 * BLOCK :]
    assert cache.cached_bytes == BLOCK + len(data) - 2 * BLOCK
    cache.release(obj)
    cache.close()


def test_another_version_replaces_the_cached_one(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    old = cache.open_object("k", '"v1"', CHUNK_SIZE)
    old.store(0, b"a" * CHUNK_SIZE)
    new = cache.open_object("k", '"v2"', CHUNK_SIZE)
    assert not old.valid and old.read(0, 10) is None  # a handle on v1 goes to OSS now
    assert new.read(0, 10) is None
    new.store(0, b"b" * CHUNK_SIZE)
    assert new.read(0, 3) == b"bbb"
    cache.release(old)
    cache.release(new)
    assert cache.cached_bytes == CHUNK_SIZE
    cache.close()


def test_a_corrupted_chunk_is_detected_dropped_and_not_served(tmp_path: Path) -> None:
    data = os.urandom(BLOCK)
    cache = open_cache(tmp_path)
    obj = cache.open_object("k", '"e"', len(data))
    obj.store(0, data)
    path = obj.path
    cache.release(obj)
    cache.close()
    with path.open("r+b") as file:
        file.seek(5 * CHUNK_SIZE + 7)
        file.write(bytes([data[5 * CHUNK_SIZE + 7] ^ 0xFF]))

    cache = open_cache(tmp_path)
    obj = cache.open_object("k", '"e"', len(data))
    assert obj.read(0, CHUNK_SIZE) == data[:CHUNK_SIZE]  # other chunks are fine
    assert obj.read(5 * CHUNK_SIZE, 5 * CHUNK_SIZE + 10) is None
    assert cache.stats.corrupt_chunks == 1
    assert not obj.has_block(0, BLOCK)  # that chunk is no longer cached
    obj.store(5 * CHUNK_SIZE, data[5 * CHUNK_SIZE : 6 * CHUNK_SIZE])
    assert obj.read(0, BLOCK) == data
    cache.release(obj)
    cache.close()


def test_the_bound_is_kept_by_evicting_least_recently_used_blocks(tmp_path: Path) -> None:
    cache = open_cache(tmp_path, capacity=4 * MIB)
    data = os.urandom(BLOCK)
    objects = [cache.open_object(f"f{i}", '"e"', 3 * BLOCK) for i in range(3)]
    for obj in objects:
        for index in range(3):
            obj.store(index * BLOCK, data)
        assert cache.cached_bytes <= 4 * MIB
    assert disk_usage(tmp_path) <= 4 * MIB
    # f2 was stored last: it is all there; f0's blocks went first.
    assert all(objects[2].has_block(i, BLOCK) for i in range(3))
    assert not any(objects[0].has_block(i, BLOCK) for i in range(3))
    for obj in objects:
        cache.release(obj)
    cache.close()
    cache = open_cache(tmp_path, capacity=2 * MIB)  # a smaller bound applies at once
    assert cache.cached_bytes <= 2 * MIB
    assert disk_usage(tmp_path) <= 2 * MIB
    cache.close()


def test_data_orphaned_by_a_crash_is_removed_at_the_next_start(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    obj = cache.open_object("k", '"e"', 4 * BLOCK)
    obj.store(0, os.urandom(BLOCK))
    cache.flush()
    obj.store(BLOCK, os.urandom(3 * BLOCK))  # rows not written yet when the process "dies"
    path = obj.path
    # The process dies: no close(), so no flush and the index stays marked unclean.
    os.close(obj.fd())
    cache._db.close()
    cache._lock_file.close()
    assert path.stat().st_blocks * 512 >= 4 * BLOCK

    cache = open_cache(tmp_path)
    assert cache.stats.repaired_bytes == 3 * BLOCK
    assert path.stat().st_blocks * 512 <= BLOCK + CHUNK_SIZE
    obj = cache.open_object("k", '"e"', 4 * BLOCK)
    assert obj.has_block(0, BLOCK) and not obj.has_block(1, BLOCK)
    cache.release(obj)
    cache.close()


def test_a_second_user_of_the_directory_is_refused(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    with pytest.raises(DataCacheError, match="in use by another ossmount process"):
        open_cache(tmp_path)
    cache.close()
    open_cache(tmp_path).close()


def test_an_unreadable_index_or_another_layout_starts_empty(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    obj = cache.open_object("k", '"e"', CHUNK_SIZE)
    obj.store(0, os.urandom(CHUNK_SIZE))
    cache.release(obj)
    cache.close()
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    cache = open_cache(tmp_path)
    assert cache.cached_bytes == 0 and not any((tmp_path / "data").rglob("*"))
    obj = cache.open_object("k", '"e"', CHUNK_SIZE)
    obj.store(0, b"x" * CHUNK_SIZE)
    cache.release(obj)
    cache.close()
    other = DataCache(tmp_path, capacity=MIB, block_size=2 * MIB)
    assert other.cached_bytes == 0
    other.close()


def test_del_cache_empties_it(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    obj = cache.open_object("k", '"e"', CHUNK_SIZE)
    obj.store(0, os.urandom(CHUNK_SIZE))
    cache.release(obj)
    cache.close()
    cache = open_cache(tmp_path, clear=True)
    assert cache.cached_bytes == 0
    cache.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (mounting needs root; skipped otherwise)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_disk_stops_storing_and_serves_nothing_torn(small_disk: Path) -> None:
    cache = open_cache(small_disk / "cache", capacity=64 * MIB)  # more than the disk holds
    data = os.urandom(BLOCK)
    obj = cache.open_object("big", '"e"', 8 * BLOCK)
    for index in range(8):
        obj.store(index * BLOCK, data)  # never raises
    stored = [index for index in range(8) if obj.has_block(index, BLOCK)]
    assert 0 < len(stored) < 8
    for index in range(8):
        expected = data if index in stored else None
        assert obj.read(index * BLOCK, (index + 1) * BLOCK) == expected
    assert cache.cached_bytes == len(stored) * BLOCK
    cache.release(obj)
    cache.close()
    cache = open_cache(small_disk / "cache", capacity=64 * MIB)
    obj = cache.open_object("big", '"e"', 8 * BLOCK)
    assert [index for index in range(8) if obj.has_block(index, BLOCK)] == stored
    cache.release(obj)
    cache.close()


def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(DataCacheError, match=r"data cache .*file/cache"):
        open_cache(tmp_path / "file" / "cache")


def test_an_index_that_fails_mid_mount_turns_the_cache_off_without_raising(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = open_cache(tmp_path)
    data = os.urandom(BLOCK)
    obj = cache.open_object("k", '"e"', 2 * BLOCK)
    obj.store(0, data)
    cache._db.close()  # from now on every index call raises sqlite3.ProgrammingError
    other = cache.open_object("other", '"e"', 10)  # looks its rows up: fails
    assert cache.broken and not other.valid and not obj.valid
    assert obj.read(0, 100) is None  # nothing is served any more
    obj.store(BLOCK, data)
    other.store(0, b"0123456789")
    assert not obj.has_block(1, BLOCK)
    cache.discard("k")
    cache.release(other)
    cache.release(obj)
    assert "not used until the next mount" in caplog.text
    cache._lock_file.close()
