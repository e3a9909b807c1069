"""Writes through a real mount with real tools; every result is checked against the same
commands run on a local directory (content, file types, permission bits, symlink targets and,
where the tool keeps them, mtimes), and against the bucket itself through oss2 where it matters.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import oss2

from ossmount.server import RunningServer
from tests.mount.conftest import Mounted, MountFactory

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
    "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


def tree(root: Path, *, mtimes: bool, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` -> (type, permission bits, content or target[, mtime s])."""
    found: dict[str, tuple[object, ...]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            item: tuple[object, ...]
            if stat.S_ISLNK(info.st_mode):
                item = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                item = ("dir", mode)
            else:
                item = ("file", mode, path.read_bytes())
            keep_time = dir_mtimes or not stat.S_ISDIR(info.st_mode)
            if mtimes and keep_time and not stat.S_ISLNK(info.st_mode):
                item += (int(info.st_mtime),)
            found[relative] = item
    return found


def assert_same_tree(
    mounted_root: Path, local_root: Path, *, mtimes: bool = False, dir_mtimes: bool = True
) -> None:
    got = tree(mounted_root, mtimes=mtimes, dir_mtimes=dir_mtimes)
    want = tree(local_root, mtimes=mtimes, dir_mtimes=dir_mtimes)
    assert sorted(got) == sorted(want)
    for relative, item in want.items():
        assert got[relative] == item, relative


def make_source(root: Path) -> Path:
    """A small tree: nested directories, files of assorted sizes and modes, symlinks."""
    source = root / "source"
    (source / "docs" / "deep" / "deeper").mkdir(parents=True)
    (source / "empty-dir").mkdir()
    (source / "bin").mkdir()
    for index in range(30):
        (source / "docs" / f"note{index:02d}.txt").write_bytes(os.urandom(index * 997))
    (source / "docs" / "deep" / "deeper" / "leaf.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (source / "empty.txt").write_bytes(b"")
    script = source / "bin" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    secret = source / "docs" / "secret.txt"
    secret.write_text("private\n")
    secret.chmod(0o600)
    (source / "link-to-note").symlink_to("docs/note01.txt")
    (source / "docs" / "deep" / "up").symlink_to("../note02.txt")
    (source / "docs" / "dir-link").symlink_to("deep")
    (source / "absolute").symlink_to("/etc/hostname")
    (source / "dangling").symlink_to("no/such/file")
    old = 1_600_000_000
    for path in sorted(source.rglob("*"), reverse=True):
        if not path.is_symlink():
            os.utime(path, (old, old))
    return source


def test_cp_r(mounted: Mounted, tmp_path: Path, oss2_bucket: oss2.Bucket) -> None:
    source = make_source(tmp_path)
    run("cp", "-r", str(source), str(mounted.path / "copy"), cwd=tmp_path)
    run("cp", "-r", str(source), str(tmp_path / "local"), cwd=tmp_path)
    assert_same_tree(mounted.path / "copy", tmp_path / "local")
    # In the bucket itself (not only in this mount's caches).
    leaf = source / "docs" / "deep" / "deeper" / "leaf.bin"
    assert oss2_bucket.get_object("copy/docs/deep/deeper/leaf.bin").read() == leaf.read_bytes()
    assert oss2_bucket.head_object("copy/docs/secret.txt").headers["x-oss-meta-mode"] == str(
        stat.S_IFREG | 0o600
    )


def test_rsync_twice_second_transfers_nothing(mounted: Mounted, tmp_path: Path) -> None:
    source = make_source(tmp_path)
    target = mounted.path / "mirror"
    run("rsync", "-a", f"{source}/", f"{target}/", cwd=tmp_path)
    assert_same_tree(target, source, mtimes=True)
    second = run(
        "rsync", "-a", "--itemize-changes", "--stats", f"{source}/", f"{target}/", cwd=tmp_path
    )
    assert "Number of regular files transferred: 0" in second
    itemized = [line for line in second.splitlines() if line[:1] in (">", "c", ".", "h", "*")]
    # Nothing for files and directories. (The times of OSS symlinks are not stored: rsync may
    # set them again, ".L..t......", which transfers nothing.)
    assert [line for line in itemized if not line.startswith(".L..t")] == [], itemized


def test_rsync_twice_after_remount(
    mount_ossmount: MountFactory, mounted: Mounted, tmp_path: Path
) -> None:
    """Modes and mtimes are in OSS, not only in the mount: a new mount agrees with rsync."""
    source = make_source(tmp_path)
    run("rsync", "-a", f"{source}/", f"{mounted.path / 'mirror'}/", cwd=tmp_path)
    mounted.unmount()
    again = mount_ossmount()
    second = run("rsync", "-a", "--stats", f"{source}/", f"{again.path / 'mirror'}/", cwd=tmp_path)
    assert "Number of regular files transferred: 0" in second
    assert_same_tree(again.path / "mirror", source, mtimes=True)


def test_tar_x_with_symlinks(mounted: Mounted, tmp_path: Path) -> None:
    source = make_source(tmp_path)
    archive = tmp_path / "tree.tar"
    run("tar", "-C", str(source), "-cf", str(archive), ".", cwd=tmp_path)
    (mounted.path / "unpacked").mkdir()
    (tmp_path / "unpacked").mkdir()
    run("tar", "-C", str(mounted.path / "unpacked"), "-xf", str(archive), cwd=tmp_path)
    run("tar", "-C", str(tmp_path / "unpacked"), "-xf", str(archive), cwd=tmp_path)
    assert_same_tree(mounted.path / "unpacked", tmp_path / "unpacked", mtimes=True)
    # Relative links resolve through the mount.
    linked = mounted.path / "unpacked" / "docs" / "deep" / "up"
    assert linked.read_bytes() == (source / "docs" / "note02.txt").read_bytes()
    assert sorted(os.listdir(mounted.path / "unpacked" / "docs" / "dir-link")) == ["deeper", "up"]


def _mv_script(root: Path) -> None:
    run("mv", "docs/note01.txt", "moved.txt", cwd=root)  # a file to another directory
    run("mv", "docs/note02.txt", "docs/note03.txt", cwd=root)  # over an existing file
    run("mv", "docs/deep", "relocated", cwd=root)  # a directory (and its symlinks) elsewhere
    run("mv", "bin", "docs/", cwd=root)  # a directory into another one
    run("mv", "relocated", "empty-dir", cwd=root)  # into an existing empty directory


def test_mv_files_and_directories(
    mounted: Mounted, tmp_path: Path, oss2_bucket: oss2.Bucket
) -> None:
    source = make_source(tmp_path)
    shutil.copytree(source, tmp_path / "local", symlinks=True)
    run("cp", "-a", str(source), str(mounted.path / "tree"), cwd=tmp_path)
    _mv_script(tmp_path / "local")
    _mv_script(mounted.path / "tree")
    # (A directory's mtime does not follow entries moving in or out: see docs/semantics.md.)
    assert_same_tree(mounted.path / "tree", tmp_path / "local", mtimes=True, dir_mtimes=False)
    keys = {item.key for item in oss2.ObjectIteratorV2(oss2_bucket, prefix="tree/")}
    assert not any(
        key.startswith(("tree/docs/deep/", "tree/bin/", "tree/relocated")) for key in keys
    )
    assert "tree/empty-dir/relocated/deeper/leaf.bin" in keys


def _edit_script(root: Path) -> None:
    (root / "text.txt").write_text("alpha\nbeta\ngamma\n")
    run("sed", "-i", "s/beta/BETA/", "text.txt", cwd=root)
    run("sh", "-c", "echo delta >> text.txt && printf 'x%.0s' $(seq 1 5000) >> text.txt", cwd=root)
    run("sh", "-c", "echo one > log.txt; echo two >> log.txt; echo three >> log.txt", cwd=root)
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)
    run("truncate", "-s", "1000", "big.bin", cwd=root)  # down
    run("truncate", "-s", "300000", "big.bin", cwd=root)  # up: a hole of zeros
    run("truncate", "-s", "0", "log2.txt", cwd=root)  # creates an empty file
    run("sh", "-c", "echo appended >> log2.txt", cwd=root)


def test_sed_i_echo_append_truncate(
    mounted: Mounted, tmp_path: Path, oss2_bucket: oss2.Bucket
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (mounted.path / "edits").mkdir()
    _edit_script(local)
    _edit_script(mounted.path / "edits")
    assert_same_tree(mounted.path / "edits", local)
    assert oss2_bucket.get_object("edits/big.bin").read() == (local / "big.bin").read_bytes()
    assert oss2_bucket.get_object("edits/text.txt").read() == (local / "text.txt").read_bytes()


def _git_script(root: Path) -> str:
    run("git", "init", "-q", "-b", "main", ".", cwd=root, env=GIT_ENV)
    (root / "README").write_text("hello\n")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 1000)
    run("git", "add", ".", cwd=root, env=GIT_ENV)
    run("git", "commit", "-q", "-m", "first", cwd=root, env=GIT_ENV)
    with (root / "README").open("a") as readme:
        readme.write("more\n")
    run("git", "mv", "src/main.py", "src/app.py", cwd=root, env=GIT_ENV)
    run("git", "commit", "-q", "-a", "-m", "second", cwd=root, env=GIT_ENV)
    return run("git", "rev-parse", "HEAD", cwd=root, env=GIT_ENV).strip()


def test_git_init_add_commit(mounted: Mounted, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (mounted.path / "repo").mkdir()
    repo = mounted.path / "repo"
    assert _git_script(repo) == _git_script(local)  # same commit ids: same objects
    assert run("git", "status", "--porcelain", cwd=repo, env=GIT_ENV) == ""
    run("git", "fsck", "--strict", cwd=repo, env=GIT_ENV)
    log = run("git", "log", "--format=%s", cwd=repo, env=GIT_ENV)
    assert log.split() == ["second", "first"]


def test_git_status_after_a_remount_reads_no_tracked_file(
    mount_ossmount: MountFactory, oss_server: RunningServer
) -> None:
    first = mount_ossmount()
    repo = first.path / "repo"
    repo.mkdir()
    for n in range(30):
        (repo / f"f{n:02d}.txt").write_text(f"content {n}\n")
    run("git", "init", "-q", "-b", "main", ".", cwd=repo, env=GIT_ENV)
    run("git", "add", ".", cwd=repo, env=GIT_ENV)
    run("git", "commit", "-q", "-m", "files", cwd=repo, env=GIT_ENV)
    time.sleep(1.1)  # past git's racy-timestamp window, then let it record clean stat data
    run("git", "status", "--porcelain", cwd=repo, env=GIT_ENV)
    first.unmount()
    # A new mount: git compares the index's stat data (inode numbers among them) with the
    # files; with the same numbers it trusts them and reads only its own files under .git.
    # (small_file_get=0: metadata by HEAD, so that GETs count what git reads.)
    second = mount_ossmount(["small_file_get=0"])
    oss_server.stats.reset()
    assert run("git", "status", "--porcelain", cwd=second.path / "repo", env=GIT_ENV) == ""
    gets = oss_server.stats.by_operation.get("GetObject", 0)
    assert gets < 30, f"{gets} GETs: git read the tracked files again"


def _sqlite_script(path: Path) -> list[tuple[int, str, float]]:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    connection.executemany(
        "INSERT INTO items VALUES (?, ?, ?)", [(n, f"item {n}" * 20, n * 1.5) for n in range(3000)]
    )
    connection.commit()
    connection.execute("UPDATE items SET price = price * 2 WHERE id % 7 = 0")
    connection.execute("DELETE FROM items WHERE id % 11 = 0")
    connection.execute("CREATE INDEX by_name ON items (name)")
    connection.commit()
    connection.close()
    reopened = sqlite3.connect(path)
    try:
        assert reopened.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows: list[tuple[int, str, float]] = reopened.execute(
            "SELECT id, name, price FROM items ORDER BY id"
        ).fetchall()
        return rows
    finally:
        reopened.close()


def test_sqlite_database(mounted: Mounted, tmp_path: Path, oss2_bucket: oss2.Bucket) -> None:
    rows = _sqlite_script(mounted.path / "app.db")
    assert rows == _sqlite_script(tmp_path / "app.db")
    assert len(rows) == 3000 - 273
    assert not (mounted.path / "app.db-journal").exists()
    # The file in the bucket is the database, readable by anyone.
    copy = tmp_path / "from-bucket.db"
    copy.write_bytes(oss2_bucket.get_object("app.db").read())
    connection = sqlite3.connect(copy)
    try:
        assert connection.execute("SELECT count(*) FROM items").fetchone() == (len(rows),)
    finally:
        connection.close()


def test_cp_r_of_small_files_costs_one_request_each(
    mounted: Mounted, tmp_path: Path, oss_server: RunningServer
) -> None:
    source = tmp_path / "small"
    source.mkdir()
    for index in range(50):
        (source / f"f{index:02d}").write_bytes(os.urandom(4096))
    oss_server.stats.reset()
    run("cp", "-r", str(source), str(mounted.path / "small"), cwd=tmp_path)
    # The directory's marker and one PutObject per file: a directory made by this mount is
    # known to be empty, and every file created in it is added to its cached listing.
    assert oss_server.stats.count("PutObject") == 51
    assert oss_server.stats.count() <= 51 + 5, oss_server.stats.by_operation
    assert_same_tree(mounted.path / "small", source)
