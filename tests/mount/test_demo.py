"""`ossmount demo`: bundled server + sample bucket, mounted until Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ossmount.demo import BIG_FILE_BYTES, SMALL_FILES, write_big_file
from tests.mount.conftest import force_unmount, fuse_available, is_mounted, ossmount_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available())),
]


def test_demo_mounts_sample_bucket_until_ctrl_c(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSS_")}
    cache_home = tmp_path / "xdg-cache"
    env["XDG_CACHE_HOME"] = str(cache_home)
    process = subprocess.Popen(
        ossmount_command("demo", str(mountpoint), "--data-dir", str(tmp_path / "data")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        output = b""
        while b"Ctrl-C to stop" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output += line
        assert b"Ctrl-C to stop" in output, output.decode()
        assert is_mounted(mountpoint)
        top = sorted(os.listdir(mountpoint))
        assert {"README.txt", "data", "docs", "latest", "small", "empty-dir"} <= set(top)
        assert os.readlink(mountpoint / "latest") == "data/random-100MiB.bin"
        assert os.readlink(mountpoint / "docs" / "intro-link") == "guide/intro.txt"
        assert (mountpoint / "docs" / "intro-link").read_bytes().startswith(b"ossmount mounts")
        big = mountpoint / "data" / "random-100MiB.bin"
        assert big.stat().st_size == BIG_FILE_BYTES
        digest = hashlib.sha256()
        with big.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        expected = tmp_path / "expected.bin"
        write_big_file(expected)
        assert digest.hexdigest() == hashlib.sha256(expected.read_bytes()).hexdigest()
        small = list((mountpoint / "small").rglob("*.txt"))
        assert len(small) == SMALL_FILES
        assert stat.S_IMODE((mountpoint / "data" / "private.txt").stat().st_mode) == 0o600
        assert (mountpoint / "docs" / "reference" / "deep" / "nested" / "tree").is_dir()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert not is_mounted(mountpoint)
        # Nothing is left in the user's cache after a clean exit (the state directory went
        # with the demo's data directory).
        assert not (cache_home / "ossmount").exists(), list(cache_home.rglob("*"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        force_unmount(mountpoint)
