"""Small files through a real mount: the GET that replaces the exact-metadata HEAD brings the
body too, so reading after `ls -l` needs no request; requests counted at the server."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import oss2
import pytest

from tests.mount.conftest import MountFactory

pytestmark = pytest.mark.mount

MODE_0640 = {"x-oss-meta-mode": str(stat.S_IFREG | 0o640)}


def ls_l(path: os.PathLike[str]) -> list[str]:
    listing = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, check=True)
    return listing.stdout.splitlines()[1:]


def cat(*paths: os.PathLike[str]) -> bytes:
    return subprocess.run(["cat", *map(str, paths)], capture_output=True, check=True).stdout


def put_small_files(bucket: oss2.Bucket, count: int) -> list[bytes]:
    bodies = [os.urandom(4096) for _ in range(count)]
    for index, body in enumerate(bodies):
        bucket.put_object(f"small/s{index:03d}", body, headers=MODE_0640)
    return bodies


@pytest.mark.parametrize("data_cache", [False, True], ids=["memory", "use_cache"])
def test_cat_after_ls_l_sends_no_get(
    oss2_bucket: oss2.Bucket,
    oss_server: Any,
    mount_ossmount: MountFactory,
    tmp_path: Path,
    data_cache: bool,
) -> None:
    bodies = put_small_files(oss2_bucket, 30)
    large = os.urandom(100 * 1024)  # over the 64 KiB default: HEADed, read by GET
    oss2_bucket.put_object("small/zz-large", large, headers=MODE_0640)
    mounted = mount_ossmount([f"use_cache={tmp_path / 'cache'}"] if data_cache else [])
    stats = oss_server.stats
    stats.reset()
    lines = ls_l(mounted.path / "small")
    assert len(lines) == 31 and all(line.startswith("-rw-r-----") for line in lines)
    # A GET per small file where a HEAD gave the metadata before; the large one is HEADed.
    assert stats.count("GetObject") == 30
    assert stats.count("HeadObject") <= 2  # the large file, the directory's marker
    stats.reset()
    paths = [mounted.path / "small" / f"s{index:03d}" for index in range(30)]
    assert cat(*paths) == b"".join(bodies)
    assert stats.total == 0, stats.by_operation
    assert cat(mounted.path / "small" / "zz-large") == large
    assert stats.by_operation == {"GetObject": 1}


def test_small_file_get_zero_keeps_heads(
    oss2_bucket: oss2.Bucket, oss_server: Any, mount_ossmount: MountFactory
) -> None:
    bodies = put_small_files(oss2_bucket, 10)
    mounted = mount_ossmount(["small_file_get=0"])
    stats = oss_server.stats
    stats.reset()
    ls_l(mounted.path / "small")
    assert stats.count("HeadObject") >= 10 and stats.count("GetObject") == 0
    stats.reset()
    assert cat(*sorted((mounted.path / "small").iterdir())) == b"".join(bodies)
    assert stats.count("GetObject") == 10


def test_file_replaced_after_the_listing_is_read_new_after_the_ttls(
    oss2_bucket: oss2.Bucket, oss_server: Any, mount_ossmount: MountFactory
) -> None:
    ttls = "stat_cache_ttl=1,list_cache_ttl=1,attr_timeout=1,entry_timeout=1,negative_timeout=1"
    oss2_bucket.put_object("small/f", b"version one", headers=MODE_0640)
    mounted = mount_ossmount([ttls])
    path = mounted.path / "small" / "f"
    ls_l(path.parent)
    assert cat(path) == b"version one"  # the body the listing's GET brought
    oss2_bucket.put_object("small/f", b"version two", headers=MODE_0640)  # same size
    time.sleep(2.5)  # past every TTL above
    stats = oss_server.stats
    stats.reset()
    assert cat(path) == b"version two"
    # The new version's metadata and body came in one GET (a new ETag, so a new body); the
    # directory "small" was looked up again too (its listing and its marker's HEAD).
    assert stats.count("GetObject") == 1
    assert stats.count("HeadObject") <= 1


def test_after_a_remount_the_data_cache_spares_the_small_gets(
    oss2_bucket: oss2.Bucket, oss_server: Any, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    bodies = put_small_files(oss2_bucket, 20)
    paths = [Path("small") / f"s{index:03d}" for index in range(20)]
    options = [f"use_cache={tmp_path / 'cache'}"]
    first = mount_ossmount(options)
    ls_l(first.path / "small")  # the GETs bring the bodies, kept in the data cache
    first.unmount()
    second = mount_ossmount(options)
    oss_server.stats.reset()
    ls_l(second.path / "small")
    # The bodies of these versions are on disk: a HEAD proves each version, no GET.
    assert oss_server.stats.count("GetObject") == 0
    assert oss_server.stats.count("HeadObject") >= 20
    assert cat(*(second.path / path for path in paths)) == b"".join(bodies)
    assert oss_server.stats.count("GetObject") == 0
