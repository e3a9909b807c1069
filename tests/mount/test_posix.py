"""POSIX conformance on real mounts (issue 9), cause by cause, with real tools: each test also
checks the stored headers through oss2 and that what it set survives a remount.

The mounts use allow_other (and the default default_permissions), as the conformance suite
does; steps that must run as an unprivileged user run under setpriv as nobody.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

import oss2
import pytest

from tests.mount.conftest import Mounted, MountFactory

NOBODY = 65534


def attempt(*command: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (as ``user`` via setpriv when given), whatever its exit status."""
    if user is not None:
        command = ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def run(*command: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (as ``user`` when given); fails the test on a non-zero exit."""
    result = attempt(*command, user=user)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result


def let_others_reach(path: Path) -> None:
    """Give others search (x) permission on ``path``'s ancestors up to the filesystem root, so an
    unprivileged user can reach a mount made under pytest's private tmp_path (pytest resets its
    own base directory to 0700 on its next run)."""
    for ancestor in path.parents:
        mode = stat.S_IMODE(ancestor.stat().st_mode)
        if mode & 0o001 == 0:
            ancestor.chmod(mode | 0o011)


def remount(mount_ossmount: MountFactory, mounted: Mounted) -> Mounted:
    """Unmount ``mounted`` and mount the bucket again (nothing cached survives)."""
    mounted.unmount()
    return mount_ossmount(["allow_other"])


def stored_meta(bucket: oss2.Bucket, key: str) -> dict[str, str]:
    """The x-oss-meta-* headers of ``key`` (names without the prefix), as oss2 sees them."""
    headers = bucket.head_object(key).headers
    prefix = "x-oss-meta-"
    return {
        name[len(prefix) :].lower(): value
        for name, value in headers.items()
        if name.lower().startswith(prefix)
    }


# -- 1. special files ------------------------------------------------------------------------


def test_fifo_between_a_reader_and_a_writer(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    fifo = mounted.path / "pipe"
    run("mkfifo", "-m", "0640", str(fifo))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    run("sh", "-c", f"echo through the pipe > {fifo}")
    out, _ = reader.communicate(timeout=30)
    assert out == b"through the pipe\n"
    meta = stored_meta(oss2_bucket, "pipe")
    assert int(meta["mode"]) == stat.S_IFIFO | 0o640
    assert oss2_bucket.get_object("pipe").read() == b""  # the data never reached OSS
    again = remount(mount_ossmount, mounted)
    st = os.stat(again.path / "pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert run("ls", "-l", str(again.path)).stdout.splitlines()[1][0] == "p"


def test_devices_keep_type_and_rdev_and_behave_like_files(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    root = mounted.path
    run("mknod", "-m", "0600", str(root / "null"), "c", "1", "3")
    run("mknod", str(root / "loop"), "b", "7", "9")
    run("chmod", "0604", str(root / "null"))
    run("chown", "123:456", str(root / "null"))
    run("mv", str(root / "loop"), str(root / "loop9"))
    st = os.stat(root / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 123, 456)
    meta = stored_meta(oss2_bucket, "null")
    assert int(meta["mode"]) == stat.S_IFCHR | 0o604
    assert (meta["uid"], meta["gid"]) == ("123", "456")
    assert int(meta["rdev"]) == os.makedev(1, 3)
    assert int(stored_meta(oss2_bucket, "loop9")["rdev"]) == os.makedev(7, 9)
    again = remount(mount_ossmount, mounted)
    st = os.stat(again.path / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 123, 456)
    blk = os.stat(again.path / "loop9")
    assert stat.S_ISBLK(blk.st_mode) and blk.st_rdev == os.makedev(7, 9)
    assert sorted(os.listdir(again.path)) == ["loop9", "null"]
    os.unlink(again.path / "null")
    assert not oss2_bucket.object_exists("null")


def test_unix_socket_bound_in_the_mount(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    path = str(mounted.path / "server.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        received: list[bytes] = []

        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                received.append(connection.recv(100))

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            client.sendall(b"hello socket")
        thread.join(timeout=30)
    assert received == [b"hello socket"]
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IFMT(int(stored_meta(oss2_bucket, "server.sock")["mode"])) == stat.S_IFSOCK
    again = remount(mount_ossmount, mounted)
    assert stat.S_ISSOCK(os.lstat(again.path / "server.sock").st_mode)


def test_special_files_that_ossfs_made(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    # ossfs stores no rdev: a device without one reads as 0.
    oss2_bucket.put_object("old-fifo", b"", headers={"x-oss-meta-mode": str(stat.S_IFIFO | 0o644)})
    oss2_bucket.put_object("old-chr", b"", headers={"x-oss-meta-mode": str(stat.S_IFCHR | 0o600)})
    mounted = mount_ossmount(["allow_other"])
    fifo = os.stat(mounted.path / "old-fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o644
    chr_dev = os.stat(mounted.path / "old-chr")
    assert stat.S_ISCHR(chr_dev.st_mode) and chr_dev.st_rdev == 0


def test_unprivileged_mkfifo_obeys_directory_permissions(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    let_others_reach(mounted.path)
    shared = mounted.path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    run("mkfifo", str(shared / "mine"), user=NOBODY)
    st = os.stat(shared / "mine")
    assert stat.S_ISFIFO(st.st_mode) and (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    os.chmod(shared, 0o755)
    refused = attempt("mkfifo", str(shared / "theirs"), user=NOBODY)

    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert stored_meta(oss2_bucket, "shared/mine")["uid"] == str(NOBODY)


# -- 2. name limits --------------------------------------------------------------------------


def expect_errno(code: int, call: Callable[[], object]) -> None:
    try:
        call()
    except OSError as exc:
        assert exc.errno == code, f"{exc} (wanted {errno.errorcode[code]})"
    else:
        raise AssertionError(f"no error (wanted {errno.errorcode[code]})")


def test_names_of_255_bytes_work_and_256_are_enametoolong(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    root = mounted.path
    longest, too_long = "é" * 127 + "x", "n" * 256  # 255 bytes (UTF-8), 256 bytes
    run("touch", str(root / longest))
    run("mkdir", str(root / ("d" * 255)))
    assert oss2_bucket.object_exists(longest)
    for call in (
        lambda: os.stat(root / too_long),
        lambda: open(root / too_long, "w").close(),
        lambda: os.mkdir(root / too_long),
        lambda: os.mkfifo(root / too_long),
        lambda: os.mknod(root / too_long, stat.S_IFCHR | 0o600, os.makedev(1, 3)),
        lambda: os.symlink("target", root / too_long),
        lambda: os.link(root / longest, root / too_long),
        lambda: os.rename(root / longest, root / too_long),
        lambda: os.rmdir(root / too_long),
        lambda: os.unlink(root / too_long),
    ):
        expect_errno(errno.ENAMETOOLONG, call)
    result = subprocess.run(
        ["touch", str(root / too_long)], capture_output=True, text=True, check=False
    )
    assert "File name too long" in result.stderr
    assert os.statvfs(root).f_namemax == 255
    # Nothing hidden was created: the directory is empty once the two names go.
    os.unlink(root / longest)
    os.rmdir(root / ("d" * 255))
    assert os.listdir(root) == []
    assert [item.key for item in oss2.ObjectIterator(oss2_bucket)] == []


def test_keys_over_1023_bytes_are_enametoolong(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    deep = mounted.path / ("a" * 255) / ("b" * 255) / ("c" * 255)
    deep.mkdir(parents=True)  # key of 3 x 256 = 768 bytes
    expect_errno(errno.ENAMETOOLONG, lambda: os.mkdir(deep / ("d" * 255)))  # 1,024 bytes
    expect_errno(errno.ENAMETOOLONG, lambda: open(deep / ("f" * 256), "w").close())
    (deep / ("f" * 255)).write_bytes(b"fits")  # 1,023 bytes: the longest key OSS takes
    key = "/".join(("a" * 255, "b" * 255, "c" * 255, "f" * 255))
    assert oss2_bucket.get_object(key).read() == b"fits"
    # A symlink target too long for an OSS symlink is kept in the ossfs form.
    target = "x/" * 600
    os.symlink(target, mounted.path / "far")
    again = remount(mount_ossmount, mounted)
    assert os.readlink(again.path / "far") == target
    assert (again.path / key).read_bytes() == b"fits"


def test_long_keys_in_the_bucket_are_skipped_with_a_warning(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    oss2_bucket.put_object("ok", b"1")
    oss2_bucket.put_object("L" * 300, b"2")
    mounted = mount_ossmount(["allow_other"])
    assert os.listdir(mounted.path) == ["ok"]
    assert "longer than 255 bytes" in mounted.log()


# -- 3. owner, mode and times of symlinks ----------------------------------------------------


def test_lchown_and_times_of_both_kinds_of_symlink_survive_a_remount(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    root = mounted.path
    (root / "target").write_text("t")
    os.symlink("target", root / "native")  # an OSS symlink
    os.symlink("/etc/hostname", root / "absolute")  # an ossfs symlink (outside the bucket)
    assert oss2_bucket.head_object("native").headers["x-oss-object-type"] == "Symlink"
    for name in ("native", "absolute"):
        run("chown", "-h", "123:456", str(root / name))
        run("touch", "-h", "-m", "-d", "2001-02-03 04:05:06 UTC", str(root / name))
    for name in ("native", "absolute"):
        meta = (
            stored_meta(oss2_bucket, name)
            if name == "absolute"
            else symlink_meta(oss2_bucket, name)
        )
        assert (meta["uid"], meta["gid"]) == ("123", "456"), name
        assert stat.S_ISLNK(int(meta["mode"])), name
        assert int(float(meta["mtime"])) == 981173106, name
    os.rename(root / "native", root / "moved")  # a rename keeps the link's own metadata
    again = remount(mount_ossmount, mounted)
    for name, target in (("moved", "target"), ("absolute", "/etc/hostname")):
        st = os.lstat(again.path / name)
        assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (123, 456), name
        assert st.st_mtime == 981173106, name
        assert os.readlink(again.path / name) == target


def test_symlinks_to_a_directory_or_nothing_after_cache_expiry(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    # With every cache off, each stat asks OSS again: a HEAD of such a link finds no object.
    no_caches = (
        "attr_timeout=0,entry_timeout=0,negative_timeout=0,list_cache_ttl=0,stat_cache_ttl=0"
    )
    mounted = mount_ossmount(["allow_other", no_caches])
    root = mounted.path
    (root / "dir").mkdir()
    os.symlink("dir", root / "to-dir")
    os.symlink("nothing", root / "dangling")
    for name in ("to-dir", "dangling"):
        os.lchown(root / name, 12, 34)
        st = os.lstat(root / name)
        assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (12, 34), name
    assert os.path.isdir(root / "to-dir")
    assert symlink_meta(oss2_bucket, "dangling")["uid"] == "12"


def test_names_made_in_a_set_group_id_directory_take_its_group(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    shared = mounted.path / "shared"
    shared.mkdir()
    os.chown(shared, 0, 123)
    os.chmod(shared, 0o2775)
    (shared / "file").write_bytes(b"")
    (shared / "dir").mkdir(mode=0o755)
    os.mkfifo(shared / "fifo")
    os.symlink("file", shared / "link")
    expected = {"file": 0o644, "dir": 0o2755, "fifo": 0o644, "link": 0o777}
    again = remount(mount_ossmount, mounted)
    for name, mode in expected.items():
        st = os.lstat(again.path / "shared" / name)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (123, mode), name
    assert stored_meta(oss2_bucket, "shared/dir/")["gid"] == "123"


def symlink_meta(bucket: oss2.Bucket, key: str) -> dict[str, str]:
    """The x-oss-meta-* of an OSS symlink itself (GetSymlink; a HEAD describes its target)."""
    headers = bucket.get_symlink(key).headers
    prefix = "x-oss-meta-"
    return {
        name[len(prefix) :].lower(): value
        for name, value in headers.items()
        if name.lower().startswith(prefix)
    }


def test_rename_of_own_symlink_in_a_sticky_directory_after_remount(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    let_others_reach(mounted.path)
    sticky = mounted.path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    run("ln", "-s", "somewhere", str(sticky / "link"), user=NOBODY)
    run("ln", "-s", "/elsewhere", str(sticky / "abs"), user=NOBODY)
    again = remount(mount_ossmount, mounted)
    let_others_reach(again.path)
    for name in ("link", "abs"):
        assert os.lstat(again.path / "tmp" / name).st_uid == NOBODY
        run(
            "mv",
            str(again.path / "tmp" / name),
            str(again.path / "tmp" / (name + "2")),
            user=NOBODY,
        )
    assert sorted(os.listdir(again.path / "tmp")) == ["abs2", "link2"]
    assert symlink_meta(oss2_bucket, "tmp/link2")["uid"] == str(NOBODY)


# -- 4. times --------------------------------------------------------------------------------

Y2001 = 978310861  # 2001-01-01 01:01:01 UTC
Y2002 = 1009846862  # 2002-01-01 01:01:02 UTC


def times(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def test_touch_a_and_m_store_atime_mtime_and_ctime(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    path = mounted.path / "f"
    path.write_bytes(b"data")
    run("touch", "-a", "-d", "2001-01-01 01:01:01 UTC", str(path))
    atime, mtime, ctime = times(path)
    assert atime == Y2001 * 10**9 and mtime > atime and ctime >= mtime
    run("touch", "-m", "-d", "2002-01-01 01:01:02.25 UTC", str(path))  # atime is UTIME_OMIT
    atime, mtime, ctime = times(path)
    assert (atime, mtime) == (Y2001 * 10**9, Y2002 * 10**9 + 250_000_000)
    assert ctime > mtime
    meta = stored_meta(oss2_bucket, "f")
    assert meta["atime"] == str(Y2001) and meta["mtime"] == f"{Y2002}.250000000"
    assert parse_seconds(meta["ctime"]) * 10**9 == pytest.approx(ctime, abs=10**6)
    with path.open("rb") as reader:
        reader.read()  # noatime: a read leaves atime alone
    assert times(path)[0] == Y2001 * 10**9
    again = remount(mount_ossmount, mounted)
    assert times(again.path / "f")[:2] == (Y2001 * 10**9, Y2002 * 10**9 + 250_000_000)
    assert times(again.path / "f")[2] == pytest.approx(ctime, abs=10**6)


def parse_seconds(value: str) -> float:
    return float(value)


def test_chown_chmod_truncate_move_ctime_and_only_truncate_moves_mtime(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    path = mounted.path / "f"
    path.write_bytes(b"0123456789")
    os.utime(path, ns=(Y2001 * 10**9, Y2001 * 10**9))
    before = times(path)
    run("chown", "12:34", str(path))
    after_chown = times(path)
    assert after_chown[:2] == before[:2] and after_chown[2] > before[2]
    run("chmod", "0600", str(path))
    after_chmod = times(path)
    assert after_chmod[:2] == before[:2] and after_chmod[2] >= after_chown[2]
    meta = stored_meta(oss2_bucket, "f")
    assert meta["mtime"] == str(Y2001) and meta["atime"] == str(Y2001)
    run("truncate", "-s", "4", str(path))
    after_truncate = times(path)
    assert after_truncate[0] == Y2001 * 10**9
    assert after_truncate[1] > before[1] and after_truncate[2] >= after_chmod[2]
    assert oss2_bucket.get_object("f").read() == b"0123"
    again = remount(mount_ossmount, mounted)
    st = os.stat(again.path / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_size) == (12, 34, 0o600, 4)
    assert st.st_atime_ns == Y2001 * 10**9 and st.st_mtime_ns > Y2001 * 10**9


def test_directory_times_advance_when_entries_change(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    directory = mounted.path / "d"
    directory.mkdir()
    os.utime(directory, ns=(Y2001 * 10**9, Y2001 * 10**9))
    assert times(directory)[1] == Y2001 * 10**9
    steps: list[Callable[[], object]] = [
        lambda: (directory / "new").write_bytes(b""),
        lambda: os.mkfifo(directory / "fifo"),
        lambda: os.rename(directory / "new", directory / "renamed"),
        lambda: os.unlink(directory / "renamed"),
        lambda: os.mkdir(directory / "sub"),
        lambda: os.rmdir(directory / "sub"),
    ]
    last = times(directory)
    for step in steps:
        step()
        now = times(directory)
        assert now[1] > last[1] and now[2] >= now[1], step
        last = now
    # Kept in memory: OSS still has the time utimensat stored in the marker.
    assert stored_meta(oss2_bucket, "d/")["mtime"] == str(Y2001)


def test_unprivileged_touch_needs_ownership_for_explicit_times(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    let_others_reach(mounted.path)
    path = mounted.path / "shared"
    path.write_bytes(b"")
    os.chmod(path, 0o666)
    os.utime(path, ns=(Y2001 * 10**9, Y2001 * 10**9))
    run("touch", str(path), user=NOBODY)  # UTIME_NOW: write permission is enough
    assert times(path)[1] > Y2001 * 10**9
    refused = attempt("touch", "-d", "2001-01-01", str(path), user=NOBODY)

    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr


# -- 5. link counts --------------------------------------------------------------------------


def test_link_counts(mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket) -> None:
    mounted = mount_ossmount(["allow_other"])
    root = mounted.path
    (root / "d" / "a").mkdir(parents=True)
    (root / "d" / "b").mkdir()
    (root / "d" / "file").write_bytes(b"")
    os.listdir(root / "d")
    assert os.stat(root / "d").st_nlink == 4  # 2 + two subdirectories
    assert os.stat(root / "d" / "a").st_nlink == 2
    assert os.stat(root / "d" / "file").st_nlink == 1
    os.rmdir(root / "d" / "b")
    assert os.stat(root / "d").st_nlink == 3
    with (root / "d" / "file").open("wb") as handle:
        handle.write(b"open")
        os.unlink(root / "d" / "file")
        assert os.fstat(handle.fileno()).st_nlink == 0
    expect_errno(errno.EPERM, lambda: os.link(root / "d" / "a", root / "d" / "c"))
    (root / "x").write_bytes(b"")
    expect_errno(errno.EPERM, lambda: os.link(root / "x", root / "y"))
    assert not oss2_bucket.object_exists("y")


# -- 7. suid and sgid ------------------------------------------------------------------------


def test_write_and_chown_clear_suid_and_sgid(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    let_others_reach(mounted.path)
    root = mounted.path
    for name in ("written", "chowned", "truncated", "kept"):
        (root / name).write_bytes(b"#!/bin/sh\n")
        os.chmod(root / name, 0o6777)
    run("sh", "-c", f"echo more >> {root / 'written'}", user=NOBODY)
    run("chown", "5:5", str(root / "chowned"))
    run("truncate", "-s", "100", str(root / "truncated"), user=NOBODY)
    run("sh", "-c", f"echo by root >> {root / 'kept'}")  # CAP_FSETID: the owner's bits stay
    expected = {"written": 0o777, "chowned": 0o777, "truncated": 0o777, "kept": 0o6777}
    for name, mode in expected.items():
        assert stat.S_IMODE(os.stat(root / name).st_mode) == mode, name
        assert int(stored_meta(oss2_bucket, name)["mode"]) == stat.S_IFREG | mode, name
    again = remount(mount_ossmount, mounted)
    for name, mode in expected.items():
        assert stat.S_IMODE(os.stat(again.path / name).st_mode) == mode, name


# -- 8. extended attributes ------------------------------------------------------------------


def test_setfattr_getfattr_in_ossfs_format(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    root = mounted.path
    (root / "f").write_bytes(b"data")
    (root / "d").mkdir()
    run("setfattr", "-n", "user.color", "-v", "blue", str(root / "f"))
    run("setfattr", "-n", "user.bin", "-v", "0x00ff10", str(root / "f"))
    run("setfattr", "-n", "user.dir", "-v", "yes", str(root / "d"))
    assert "user.color" in run("getfattr", "-d", str(root / "f")).stdout
    stored = unquote(stored_meta(oss2_bucket, "f")["xattr"])
    assert json.loads(stored) == {"user.bin": "AP8Q", "user.color": "Ymx1ZQ=="}
    assert json.loads(unquote(stored_meta(oss2_bucket, "d/")["xattr"])) == {"user.dir": "eWVz"}
    # XATTR_CREATE / XATTR_REPLACE, removal, a missing name
    expect_errno(errno.EEXIST, lambda: os.setxattr(root / "f", "user.color", b"x", os.XATTR_CREATE))
    expect_errno(errno.ENODATA, lambda: os.setxattr(root / "f", "user.no", b"x", os.XATTR_REPLACE))
    os.setxattr(root / "f", "user.color", b"red", os.XATTR_REPLACE)
    run("setfattr", "-x", "user.bin", str(root / "f"))
    expect_errno(errno.ENODATA, lambda: os.getxattr(root / "f", "user.bin"))
    expect_errno(errno.ENODATA, lambda: os.removexattr(root / "f", "user.bin"))
    # Past OSS's 8 KB of user metadata: ENOSPC, and nothing changes.
    expect_errno(errno.ENOSPC, lambda: os.setxattr(root / "f", "user.big", b"v" * 7000))
    assert "over OSS's limit" in mounted.log()
    # POSIX ACLs and SELinux labels are not kept.
    refused = attempt("setfacl", "-m", "u:nobody:r", str(root / "f"))
    assert refused.returncode != 0 and "Operation not supported" in refused.stderr
    expect_errno(errno.EOPNOTSUPP, lambda: os.getxattr(root / "f", "security.selinux"))
    expect_errno(errno.EOPNOTSUPP, lambda: os.setxattr(root / "f", "security.selinux", b"x"))
    # `ls -l` learns that from its first name and asks no more (one call per mount, not per
    # name: each would be a round trip through FUSE).
    traced = attempt("strace", "-f", "-e", "trace=lgetxattr,getxattr", "ls", "-l", str(root))
    assert traced.stderr.count("security.selinux") == 1, traced.stderr
    again = remount(mount_ossmount, mounted)
    assert os.listxattr(again.path / "f") == ["user.color"]
    assert os.getxattr(again.path / "f", "user.color") == b"red"
    assert os.getxattr(again.path / "d", "user.dir") == b"yes"
    assert (again.path / "f").read_bytes() == b"data"


def test_noxattr_turns_them_off(mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket) -> None:
    mounted = mount_ossmount(["allow_other", "noxattr"])
    (mounted.path / "f").write_bytes(b"")
    expect_errno(errno.EOPNOTSUPP, lambda: os.setxattr(mounted.path / "f", "user.a", b"1"))
    expect_errno(errno.EOPNOTSUPP, lambda: os.getxattr(mounted.path / "f", "user.a"))
    assert "xattr" not in stored_meta(oss2_bucket, "f")


def test_xattrs_that_ossfs_wrote(mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket) -> None:
    # ossfs puts the name unescaped in the JSON and URL-encodes the whole document.
    ossfs_value = quote('{"user.from":"b3NzZnM="}', safe="")
    oss2_bucket.put_object("old", b"x", headers={"x-oss-meta-xattr": ossfs_value})
    mounted = mount_ossmount(["allow_other"])
    assert os.getxattr(mounted.path / "old", "user.from") == b"ossfs"


def test_rsync_ax_twice_and_cp_preserve_all(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "a").write_text("one\n")
    (source / "sub" / "b").write_text("two\n")
    os.symlink("a", source / "link")
    os.mkfifo(source / "fifo")
    os.setxattr(source / "a", "user.tag", b"hello")
    os.setxattr(source / "sub", "user.dir", b"x")
    os.chmod(source / "a", 0o640)
    os.utime(source / "a", ns=(Y2001 * 10**9, Y2001 * 10**9))
    mounted = mount_ossmount(["allow_other"])
    target = f"{mounted.path}/copy/"
    first = run("rsync", "-aXi", f"{source}/", target).stdout
    assert ">f+++++++++ a" in first and "cS+++++++++ fifo" in first
    assert run("rsync", "-aXi", f"{source}/", target).stdout == ""
    again = remount(mount_ossmount, mounted)
    assert run("rsync", "-aXi", f"{source}/", f"{again.path}/copy/").stdout == ""
    assert os.getxattr(again.path / "copy" / "a", "user.tag") == b"hello"
    run("cp", "-a", "--preserve=all", str(source), str(again.path / "cp"))
    copied = os.stat(again.path / "cp" / "a")
    assert stat.S_IMODE(copied.st_mode) == 0o640 and copied.st_mtime_ns == Y2001 * 10**9
    assert os.getxattr(again.path / "cp" / "sub", "user.dir") == b"x"
    assert json.loads(unquote(stored_meta(oss2_bucket, "cp/a")["xattr"])) == {
        "user.tag": "aGVsbG8="
    }


def test_unprivileged_xattrs_follow_permissions(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket
) -> None:
    mounted = mount_ossmount(["allow_other"])
    let_others_reach(mounted.path)
    (mounted.path / "open").write_bytes(b"")
    os.chmod(mounted.path / "open", 0o666)
    (mounted.path / "closed").write_bytes(b"")
    os.chmod(mounted.path / "closed", 0o644)
    run("setfattr", "-n", "user.by", "-v", "nobody", str(mounted.path / "open"), user=NOBODY)
    refused = attempt(
        "setfattr", "-n", "user.by", "-v", "x", str(mounted.path / "closed"), user=NOBODY
    )
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert "user.by" in run("getfattr", "-d", str(mounted.path / "open"), user=NOBODY).stdout


# -- 6. truncate and sizes -------------------------------------------------------------------


def test_truncate_to_huge_sizes(mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket) -> None:
    mounted = mount_ossmount(["allow_other", "staging_budget=32m"])
    path = mounted.path / "sparse"
    path.write_bytes(b"head")
    refused = attempt("truncate", "-s", "999999999999999", str(path))
    assert refused.returncode != 0 and "File too large" in refused.stderr
    expect_errno(errno.EFBIG, lambda: os.truncate(path, 49 * 2**40))  # past OSS's 48.8 TiB
    # Holes take no staging budget: files of 128 MiB through a 32 MiB budget.
    run("truncate", "-s", "128M", str(mounted.path / "by-path"))
    assert oss2_bucket.head_object("by-path").content_length == 128 * 2**20
    with path.open("r+b") as handle:
        os.ftruncate(handle.fileno(), 128 * 2**20)
        handle.seek(100 * 2**20)
        handle.write(b"middle")
        handle.flush()
        assert os.fstat(handle.fileno()).st_size == 128 * 2**20
        os.ftruncate(handle.fileno(), 120 * 2**20)
    assert os.stat(path).st_size == 120 * 2**20
    assert oss2_bucket.head_object("sparse").content_length == 120 * 2**20
    ranged = oss2_bucket.get_object("sparse", byte_range=(100 * 2**20 - 2, 100 * 2**20 + 7))
    assert ranged.read() == b"\0\0middle\0\0"
    assert oss2_bucket.get_object("sparse", byte_range=(0, 5)).read() == b"head\0\0"
    again = remount(mount_ossmount, mounted)
    with (again.path / "sparse").open("rb") as handle:
        handle.seek(100 * 2**20)
        assert handle.read(6) == b"middle"
