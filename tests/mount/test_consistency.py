"""Changes made in the bucket by others, seen through a mount with its caches turned off."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from typing import Any

import oss2
import pytest
import trio

from ossmount.oss.client import OssClient
from ossmount.oss.signer import Credentials
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK
from tests.mount.conftest import MountFactory

STRICT = "attr_timeout=0,entry_timeout=0,negative_timeout=0,list_cache_ttl=0,stat_cache_ttl=0"


def test_strict_mount_sees_every_change(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    oss2_bucket.put_object("d/a.txt", b"a")
    mounted = mount_ossmount([STRICT])
    root = mounted.path
    assert os.listdir(root / "d") == ["a.txt"]
    with pytest.raises(FileNotFoundError):
        os.stat(root / "d" / "b.txt")
    oss2_bucket.put_object("d/b.txt", b"bb")  # appears
    assert sorted(os.listdir(root / "d")) == ["a.txt", "b.txt"]
    assert os.stat(root / "d" / "b.txt").st_size == 2
    oss2_bucket.delete_object("d/a.txt")  # disappears
    assert os.listdir(root / "d") == ["b.txt"]
    with pytest.raises(FileNotFoundError):
        os.stat(root / "d" / "a.txt")
    oss2_bucket.put_object("d/b.txt", b"changed", headers={"x-oss-meta-mode": "33152"})
    changed = os.stat(root / "d" / "b.txt")
    assert changed.st_size == 7
    assert stat.S_IMODE(changed.st_mode) == 0o600
    assert (root / "d" / "b.txt").read_bytes() == b"changed"
    # A file replaced by a directory of the same name.
    oss2_bucket.delete_object("d/b.txt")
    oss2_bucket.put_object("d/b.txt/inner", b"i")
    assert stat.S_ISDIR(os.stat(root / "d" / "b.txt").st_mode)
    assert os.listdir(root / "d" / "b.txt") == ["inner"]


def test_default_caches_hide_changes_until_they_expire(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    oss2_bucket.put_object("d/a.txt", b"a")
    mounted = mount_ossmount(["list_cache_ttl=3600,entry_timeout=3600"])
    assert os.listdir(mounted.path / "d") == ["a.txt"]
    oss2_bucket.put_object("d/new.txt", b"n")
    # The listing is cached for an hour: the documented consistency window.
    assert os.listdir(mounted.path / "d") == ["a.txt"]


def test_concurrent_tools_on_one_mount(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    for directory in range(5):
        for index in range(40):
            oss2_bucket.put_object(
                f"t/d{directory}/f{index:02d}", f"{directory}-{index}\n".encode()
            )
    mounted = mount_ossmount()
    errors: list[str] = []

    def run(command: list[str]) -> None:
        result = subprocess.run(
            command, cwd=mounted.path, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            errors.append(f"{command}: {result.stderr}")

    commands = [
        ["ls", "-lR", "t"],
        ["find", "t", "-type", "f"],
        ["grep", "-r", "-c", "-", "t"],
        ["du", "-a", "t"],
        ["sh", "-c", "cat t/d0/* t/d1/* > /dev/null"],
    ] * 2
    threads = [threading.Thread(target=run, args=(command,)) for command in commands]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    found = subprocess.run(
        ["find", "t", "-type", "f"], cwd=mounted.path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(found) == 200


def test_object_deleted_after_listing_reads_as_enoent(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    oss2_bucket.put_object("d/gone.txt", b"soon gone")
    mounted = mount_ossmount(["readdir_optimize"])
    assert os.listdir(mounted.path / "d") == ["gone.txt"]
    oss2_bucket.delete_object("d/gone.txt")
    with pytest.raises(FileNotFoundError):
        (mounted.path / "d" / "gone.txt").read_bytes()
    assert "Traceback" not in mounted.log()


async def test_listing_is_a_stable_snapshot_while_open(
    oss_server: Any, mount_ossmount: MountFactory
) -> None:
    async with OssClient(
        oss_server.endpoint, Credentials(TEST_AK, TEST_SK), region=TEST_REGION
    ) as client:

        async def put_many(names: list[str]) -> None:
            limiter = trio.CapacityLimiter(16)

            async def put(name: str) -> None:
                async with limiter:
                    await client.put_object(TEST_BUCKET, f"big/{name}", b"")

            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(put, name)

        original = [f"f{index:04d}" for index in range(1500)]
        await put_many(original)
        mounted = mount_ossmount([STRICT + ",readdir_optimize"])
        seen: list[str] = []
        with os.scandir(mounted.path / "big") as entries:
            iterator = iter(entries)
            seen.append(next(iterator).name)
            # Changes while the directory is open: the open handle keeps its snapshot.
            await put_many([f"new{index}" for index in range(50)])
            await client.delete_object(TEST_BUCKET, "big/f0700")
            seen.extend(entry.name for entry in iterator)
        assert sorted(seen) == original
        assert len(os.listdir(mounted.path / "big")) == 1500 + 50 - 1  # a new handle: new state


def test_negative_lookups_are_cached_unless_turned_off(
    oss2_bucket: oss2.Bucket, oss_server: Any, mount_ossmount: MountFactory
) -> None:
    oss2_bucket.put_object("present", b"x")
    cached = mount_ossmount(["negative_timeout=30"])
    strict = mount_ossmount(["negative_timeout=0"])
    # The first lookup lists the root once (1 request, for the lookups of names it shows) and
    # probes the missing name (3 requests); a second probe only with negative_timeout=0.
    for mounted, expected in ((cached, 1 + 3), (strict, 1 + 3 + 3)):
        oss_server.stats.reset()
        for _ in range(2):
            assert not (mounted.path / "absent").exists()
        assert oss_server.stats.total == expected, oss_server.stats.by_operation
    oss2_bucket.put_object("absent", b"now here")
    assert (strict.path / "absent").exists()
    assert not (cached.path / "absent").exists()  # for negative_timeout, as documented
