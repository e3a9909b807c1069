"""Real mounts, real tools: the namespace (ls, stat, find, readlink) on data uploaded by oss2."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import oss2

from tests.mount.conftest import Mounted, MountFactory

OSSFS_FILE_0600 = {
    "x-oss-meta-mode": str(stat.S_IFREG | 0o600),
    "x-oss-meta-uid": "1234",
    "x-oss-meta-gid": "4321",
    "x-oss-meta-mtime": "1600000000",
}


def upload_tree(bucket: oss2.Bucket) -> None:
    bucket.put_object("top.txt", b"top\n")
    bucket.put_object("a/b/c/deep.txt", b"deep\n")
    bucket.put_object("a/one.txt", b"one\n")
    bucket.put_object("private.txt", b"secret\n", headers=OSSFS_FILE_0600)
    bucket.put_object("marker-dir/", b"")
    bucket.put_object("ossfs-old_$folder$", b"")
    bucket.put_object("conflict", b"file\n")
    bucket.put_object("conflict/inside.txt", b"inside\n")
    bucket.put_object("bad//name", b"x")
    bucket.put_object("a/../escape", b"x")
    bucket.put_symlink("a/one.txt", "native-link")
    bucket.put_object(
        "ossfs-link", b"top.txt", headers={"x-oss-meta-mode": str(stat.S_IFLNK | 0o777)}
    )
    bucket.put_object(
        "ossfs-link-meta",
        b"",
        headers={
            "x-oss-meta-mode": str(stat.S_IFLNK | 0o777),
            "x-oss-meta-symlink-target": "a/b/c/deep.txt",
        },
    )


def run(*command: str, cwd: Path) -> str:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ls_la_shows_tree_with_ossfs_metadata(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload_tree(oss2_bucket)
    root = mounted.path
    names = sorted(os.listdir(root))
    assert names == sorted(
        [
            "top.txt",
            "a",
            "private.txt",
            "marker-dir",
            "ossfs-old",
            "conflict",
            "native-link",
            "ossfs-link",
            "ossfs-link-meta",
            "bad",  # from "bad//name": the directory is there, the empty segment is not
        ]
    ), names
    listing = run("ls", "-la", str(root), cwd=root)
    assert listing.splitlines()[1].endswith(" .")
    assert any(line.endswith(" ..") for line in listing.splitlines())
    private = os.stat(root / "private.txt")
    assert stat.S_IMODE(private.st_mode) == 0o600
    assert (private.st_uid, private.st_gid) == (1234, 4321)
    assert private.st_mtime == 1600000000
    assert private.st_size == 7
    assert re.search(r"^-rw------- 1 1234 4321 +7 .* private.txt$", listing, re.MULTILINE)
    top = os.stat(root / "top.txt")
    assert stat.S_ISREG(top.st_mode)
    assert stat.S_IMODE(top.st_mode) == 0o644
    assert top.st_uid == os.getuid()
    for directory in ("a", "marker-dir", "ossfs-old", "conflict"):
        assert stat.S_ISDIR(os.stat(root / directory).st_mode), directory
    assert os.listdir(root / "conflict") == ["inside.txt"]
    assert os.listdir(root / "marker-dir") == []
    assert mounted.log().count("object 'conflict' is hidden") == 1
    assert os.listdir(root / "bad") == []
    assert ".." not in os.listdir(root / "a")
    log = mounted.log()
    assert "'bad//': empty path segment" in log
    assert "'a/../': '..' segment" in log
    assert mounted.log().count("object 'conflict' is hidden") == 1
    assert os.listdir(root / "bad") == []
    assert ".." not in os.listdir(root / "a")
    log = mounted.log()
    assert "'bad//': empty path segment" in log
    assert "'a/../': '..' segment" in log


def test_symlinks_native_and_ossfs(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload_tree(oss2_bucket)
    root = mounted.path
    assert os.readlink(root / "native-link") == "a/one.txt"
    assert os.readlink(root / "ossfs-link") == "top.txt"
    assert os.readlink(root / "ossfs-link-meta") == "a/b/c/deep.txt"
    assert run("readlink", "native-link", cwd=root).strip() == "a/one.txt"
    assert (root / "native-link").read_bytes() == b"one\n"
    assert (root / "ossfs-link").read_bytes() == b"top\n"
    assert stat.S_ISLNK(os.lstat(root / "ossfs-link").st_mode)


def test_find_and_stat_cold_paths(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload_tree(oss2_bucket)
    root = mounted.path
    # A cold lookup of a deep path (no listing first).
    deep = os.stat(root / "a" / "b" / "c" / "deep.txt")
    assert deep.st_size == 5
    found = run("find", ".", "-type", "f", cwd=root).split()
    assert sorted(found) == sorted(
        ["./top.txt", "./a/b/c/deep.txt", "./a/one.txt", "./private.txt", "./conflict/inside.txt"]
    )
    assert sorted(run("find", ".", "-type", "l", cwd=root).split()) == [
        "./native-link",
        "./ossfs-link",
        "./ossfs-link-meta",
    ]
    out = run("stat", "-c", "%a %u %g %s %F", "private.txt", cwd=root)
    assert out.strip() == "600 1234 4321 7 regular file"
    missing = subprocess.run(
        ["stat", "nope"], cwd=root, capture_output=True, text=True, check=False
    )
    assert missing.returncode != 0
    assert "No such file" in missing.stderr


def test_readdir_optimize_skips_heads(
    oss2_bucket: oss2.Bucket, oss_server: object, mount_ossmount: MountFactory
) -> None:
    for index in range(50):
        oss2_bucket.put_object(f"many/f{index:03d}", b"x", headers=OSSFS_FILE_0600)
    optimized = mount_ossmount(["readdir_optimize"])
    stats = oss_server.stats  # type: ignore[attr-defined]
    stats.reset()
    entries = run("ls", "-l", "many", cwd=optimized.path).splitlines()[1:]
    assert len(entries) == 50
    assert all(line.startswith("-rw-r--r--") for line in entries)  # the defaults
    assert stats.count("HeadObject") <= 2
    exact = mount_ossmount()
    stats.reset()
    entries = run("ls", "-l", "many", cwd=exact.path).splitlines()[1:]
    assert all(line.startswith("-rw-------") for line in entries)
    # A request per object for its metadata: a GET, since each is small (small_file_get).
    assert stats.count("HeadObject") + stats.count("GetObject") >= 50
    # Listed again after the listing cache is gone: HEAD results are reused per version.


def test_prefix_mount(oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory) -> None:
    upload_tree(oss2_bucket)
    sub = mount_ossmount(prefix="a")
    assert sorted(os.listdir(sub.path)) == ["b", "one.txt"]
    assert (sub.path / "one.txt").read_bytes() == b"one\n"
    assert os.listdir(sub.path / "b" / "c") == ["deep.txt"]


def test_read_only_option(oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory) -> None:
    mounted = mount_ossmount(["ro"])
    oss2_bucket.put_object("f.txt", b"x")
    result = subprocess.run(
        ["sh", "-c", "echo hi > new.txt"],
        cwd=mounted.path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


def test_disk_metadata_cache_saves_heads_across_mounts(
    oss2_bucket: oss2.Bucket, oss_server: Any, mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    for index in range(20):
        oss2_bucket.put_object(f"many/f{index:02d}", b"x", headers=OSSFS_FILE_0600)
    options = [f"metadata_cache,cache_dir={tmp_path / 'cache'}"]
    stats = oss_server.stats
    first = mount_ossmount(options)
    stats.reset()
    entries = run("ls", "-l", "many", cwd=first.path).splitlines()[1:]
    assert all(line.startswith("-rw------- 1 1234 4321") for line in entries)
    # A GET per (small) object; the HEAD is the cold lookup of "many" (its marker many/).
    assert stats.count("GetObject") == 20
    assert stats.count("HeadObject") == 1
    first.unmount()
    oss2_bucket.put_object("many/f00", b"new", headers={"x-oss-meta-mode": "33216"})  # 0700
    second = mount_ossmount(options)
    stats.reset()
    entries = run("ls", "-l", "many", cwd=second.path).splitlines()[1:]
    assert stats.count("GetObject") == 1  # only the replaced object
    assert stats.count("HeadObject") == 1  # and the lookup of "many"
    assert entries[0].startswith("-rwx------")
    assert all(line.startswith("-rw------- 1 1234 4321") for line in entries[1:])


def test_owner_and_mode_options_for_objects_without_metadata(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    upload_tree(oss2_bucket)
    mounted = mount_ossmount(["uid=4242,gid=4343,umask=077,mp_umask=022"])
    root = mounted.path
    top = os.stat(root / "top.txt")
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (4242, 4343, 0o600)
    directory = os.stat(root / "a")
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (4242, 0o700)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o755  # mp_umask
    private = os.stat(root / "private.txt")  # its own metadata wins
    assert (private.st_uid, private.st_gid, stat.S_IMODE(private.st_mode)) == (1234, 4321, 0o600)


def test_kernel_forgets_least_recent_files_beyond_inode_cache_entries(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    for n in range(150):
        oss2_bucket.put_object(f"many/f{n:03d}", f"file {n}\n".encode())
    mount = mount_ossmount(options=["inode_cache_entries=50"], debug=True)
    many = mount.path / "many"
    first_ino = os.stat(many / "f000").st_ino
    # A shell whose working directory is inside the mount walks all 150 files: well over the
    # bound, so the oldest are dropped from the kernel's cache; directories never are, so its
    # getcwd() keeps working.
    script = 'for f in f*; do cat "$f" >/dev/null; done; pwd -P; cat f000'
    out = run("sh", "-c", script, cwd=many)
    assert out == f"{many}\nfile 0\n"
    # The kernel forgot the dropped files: the mount's table stays near the bound (50 files,
    # 1% below it once over, plus the root and "many").
    deadline = time.monotonic() + 10
    while True:
        known = [int(n) for n in re.findall(r"kernel forgot \d+ inodes; (\d+) known", mount.log())]
        if known and known[-1] <= 52:
            break
        assert time.monotonic() < deadline, f"inodes known after the walk: {known[-3:]}"
        time.sleep(0.1)
    assert "asking the kernel to drop" in mount.log()
    # Looked up again, a forgotten file keeps its inode number (it comes from its key) and
    # its content.
    assert os.stat(many / "f000").st_ino == first_ino
    assert (many / "f000").read_bytes() == b"file 0\n"
    assert sorted(os.listdir(many)) == [f"f{n:03d}" for n in range(150)]


def test_inode_numbers_are_the_same_across_mounts(
    oss2_bucket: oss2.Bucket, mount_ossmount: MountFactory
) -> None:
    for key in ("a.txt", "d/b.txt", "d/e/c.txt"):
        oss2_bucket.put_object(key, b"x")
    names = ["a.txt", "d", "d/b.txt", "d/e", "d/e/c.txt"]
    first, second = mount_ossmount(), mount_ossmount()
    numbers = [os.stat(first.path / name).st_ino for name in names]
    # The second mount meets the names in another order: their numbers do not depend on it.
    again = {name: os.stat(second.path / name).st_ino for name in reversed(names)}
    assert numbers == [again[name] for name in names]
    assert len(set(numbers)) == len(numbers)
    assert all(1 < number < 2**32 for number in numbers)
