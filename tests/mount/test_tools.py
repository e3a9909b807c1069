"""Everyday tools over a real mount: cat, cp -r out of the mount, grep -r, tar c, du, wc."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import oss2

from tests.mount.conftest import Mounted

FILES = {
    "docs/readme.txt": b"ossmount mounts buckets\n",
    "docs/guide/usage.txt": b"usage: mount it\nthen grep for ossmount\n",
    "src/main.py": b"print('hello')\n",
    "src/pkg/__init__.py": b"",
    "data/blob.bin": bytes(range(256)) * 4000,
    "empty.txt": b"",
}


def upload(bucket: oss2.Bucket) -> None:
    for key, data in FILES.items():
        bucket.put_object(key, data)
    bucket.put_object(
        "docs/secret.txt",
        b"ossmount private\n",
        headers={"x-oss-meta-mode": str(stat.S_IFREG | 0o600), "x-oss-meta-mtime": "1500000000"},
    )
    bucket.put_symlink("docs/readme.txt", "docs/latest")


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(command, cwd=cwd, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result


def test_cat_each_file(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload(oss2_bucket)
    for key, data in FILES.items():
        assert run(["cat", key], mounted.path).stdout == data, key


def test_cp_r_out_of_the_mount(oss2_bucket: oss2.Bucket, mounted: Mounted, tmp_path: Path) -> None:
    upload(oss2_bucket)
    target = tmp_path / "copy"
    run(["cp", "-a", str(mounted.path), str(target)], tmp_path)
    for key, data in FILES.items():
        assert (target / key).read_bytes() == data, key
    assert os.readlink(target / "docs" / "latest") == "readme.txt"
    assert (target / "docs" / "latest").read_bytes() == FILES["docs/readme.txt"]
    secret = os.stat(target / "docs" / "secret.txt")
    assert stat.S_IMODE(secret.st_mode) == 0o600
    assert secret.st_mtime == 1500000000  # cp -a kept the x-oss-meta-mtime


def test_grep_r(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload(oss2_bucket)
    found = run(["grep", "-r", "-l", "ossmount", "."], mounted.path).stdout.decode().split()
    assert sorted(found) == ["./docs/guide/usage.txt", "./docs/readme.txt", "./docs/secret.txt"]


def test_tar_c_of_the_tree(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload(oss2_bucket)
    archive = run(["tar", "cf", "-", "."], mounted.path).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {member.name.removeprefix("./"): member for member in tar.getmembers()}
        for key, data in FILES.items():
            extracted = tar.extractfile(members[key])
            assert extracted is not None
            assert hashlib.sha256(extracted.read()).digest() == hashlib.sha256(data).digest()
        assert members["docs/latest"].issym()
        assert members["docs/secret.txt"].mode == 0o600
        assert members["src/pkg"].isdir()


def test_du_and_wc(oss2_bucket: oss2.Bucket, mounted: Mounted) -> None:
    upload(oss2_bucket)
    lines = run(["wc", "-l", "docs/guide/usage.txt"], mounted.path).stdout.split()
    assert lines[0] == b"2"
    apparent = run(["du", "-s", "-b", "data"], mounted.path).stdout.split()[0]
    assert int(apparent) == len(FILES["data/blob.bin"])
