"""Crashes and a failing server: the mount process killed with SIGKILL during close() and in
the middle of a write, then mounted again; a copy in and out through 503s and resets."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import oss2
import pytest

from ossmount.oss.crc64 import crc64
from ossmount.server import RunningServer
from tests.mount.conftest import Mounted, MountFactory, force_unmount

MiB = 1024 * 1024
WAIT_S = 90.0

# Writes the files named on the command line (path=size:source, or path=size to write the
# source's first bytes), prints "written", then waits for a line on stdin before closing them
# ("close") or not at all ("hold").
WRITER = r"""
import os, sys
mode, sources = sys.argv[1], sys.argv[2:]
fds = []
for item in sources:
    path, source = item.split("=", 1)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    with open(source, "rb") as data:
        while chunk := data.read(1 << 20):
            os.write(fd, chunk)
    fds.append(fd)
print("written", flush=True)
sys.stdin.readline()
if mode == "close":
    for fd in fds:
        os.close(fd)
    print("closed", flush=True)
sys.stdin.readline()
"""


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        remaining = size
        while remaining:
            piece = os.urandom(min(remaining, 8 * MiB))
            out.write(piece)
            remaining -= len(piece)
    return path


def file_crc64(path: Path) -> int:
    crc = 0
    with path.open("rb") as data:
        while chunk := data.read(8 * MiB):
            crc = crc64(chunk, crc)
    return crc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def start_writer(mode: str, items: list[tuple[Path, Path]]) -> subprocess.Popen[str]:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, mode, *(f"{path}={source}" for path, source in items)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "written"
    return writer


def kill_mount(mounted: Mounted) -> None:
    assert mounted.process is not None
    mounted.process.send_signal(signal.SIGKILL)
    mounted.process.wait(timeout=30)
    force_unmount(mounted.path)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def multipart_uploads(bucket: oss2.Bucket) -> list[str]:
    return [upload.key for upload in oss2.MultipartUploadIterator(bucket)]


def object_or_none(bucket: oss2.Bucket, key: str) -> bytes | None:
    try:
        return bytes(bucket.get_object(key).read())
    except oss2.exceptions.NoSuchKey:
        return None


@pytest.mark.slow
def test_killed_during_close_upload_finished_by_next_mount(
    mount_ossmount: MountFactory,
    oss_server: RunningServer,
    oss2_bucket: oss2.Bucket,
    tmp_path: Path,
) -> None:
    source = random_file(tmp_path / "big.bin", 200 * MiB)
    state = f"state_dir={tmp_path / 'state'}"
    first = mount_ossmount([state])
    writer = start_writer("close", [(first.path / "big.bin", source)])
    # Slow every request down, so that close() is still uploading when the mount dies.
    oss_server.faults.latency_ms = 3000
    assert writer.stdin is not None
    writer.stdin.write("\n")
    writer.stdin.flush()
    time.sleep(1.0)
    kill_mount(first)
    writer.kill()
    writer.wait()
    oss_server.faults.clear()
    assert object_or_none(oss2_bucket, "big.bin") is None  # not completed before the kill
    second = mount_ossmount([state])

    def finished() -> bool:
        try:
            info = oss2_bucket.head_object("big.bin")
        except oss2.exceptions.NoSuchKey:
            return False
        return info.content_length == 200 * MiB and not multipart_uploads(oss2_bucket)

    wait_for(finished, "the next mount to finish the upload")
    server_crc = int(oss2_bucket.head_object("big.bin").headers["x-oss-hash-crc64ecma"])
    assert server_crc == file_crc64(source)
    assert sha256(second.path / "big.bin") == sha256(source)
    assert "completed upload of big.bin" in second.log()
    assert multipart_uploads(oss2_bucket) == []


@pytest.mark.slow
def test_killed_during_unclosed_write_keeps_old_object(
    mount_ossmount: MountFactory, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    old = os.urandom(MiB + 17)
    oss2_bucket.put_object("existing.bin", old)
    state_dir = tmp_path / "state"
    first = mount_ossmount([f"state_dir={state_dir}"])
    source = random_file(tmp_path / "new-data.bin", 50 * MiB)
    writer = start_writer(
        "hold", [(first.path / "existing.bin", source), (first.path / "brand-new.bin", source)]
    )
    # Parts of both were uploaded while writing (streamed), but neither file was closed.
    wait_for(lambda: len(multipart_uploads(oss2_bucket)) == 2, "the streamed uploads to begin")
    kill_mount(first)
    writer.kill()
    writer.wait()
    assert object_or_none(oss2_bucket, "existing.bin") == old
    assert object_or_none(oss2_bucket, "brand-new.bin") is None
    second = mount_ossmount([f"state_dir={state_dir}"])
    wait_for(lambda: not multipart_uploads(oss2_bucket), "the next mount to abort the uploads")
    assert (second.path / "existing.bin").read_bytes() == old
    assert not (second.path / "brand-new.bin").exists()
    assert object_or_none(oss2_bucket, "existing.bin") == old
    assert object_or_none(oss2_bucket, "brand-new.bin") is None
    wait_for(lambda: not os.listdir(state_dir / "staging"), "staging files to be deleted")
    log = second.log()
    assert "discarded unclosed writes to existing.bin" in log
    assert "discarded unclosed writes to brand-new.bin" in log


@pytest.mark.slow
def test_copy_in_and_out_through_errors_and_resets(
    mounted: Mounted, oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    for directory in range(10):
        (source / f"d{directory}").mkdir(parents=True)
        for index in range(100):
            size = 1 + (directory * 100 + index) * 37 % (64 * 1024)
            (source / f"d{directory}" / f"f{index:03d}").write_bytes(os.urandom(size))
    oss_server.faults.reseed(5)
    oss_server.faults.error_rate = 0.05
    oss_server.faults.reset_rate = 0.01
    try:
        copy_in = subprocess.run(
            ["cp", "-r", str(source), str(mounted.path / "copy")],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert copy_in.returncode == 0, copy_in.stderr
        out = tmp_path / "out"
        copy_out = subprocess.run(
            ["cp", "-r", str(mounted.path / "copy"), str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert copy_out.returncode == 0, copy_out.stderr
        injected = oss_server.stats.total
    finally:
        oss_server.faults.clear()
    assert injected > 2000
    diff = subprocess.run(["diff", "-r", str(source), str(out)], capture_output=True, check=False)
    assert diff.returncode == 0, diff.stdout[:2000]
    # And in the bucket itself.
    for directory in range(0, 10, 3):
        for index in range(0, 100, 9):
            relative = f"d{directory}/f{index:03d}"
            expected = (source / relative).read_bytes()
            assert oss2_bucket.get_object(f"copy/{relative}").read() == expected


@pytest.mark.slow
def test_large_files_through_errors_and_resets(
    mount_ossmount: MountFactory,
    oss_server: RunningServer,
    oss2_bucket: oss2.Bucket,
    tmp_path: Path,
) -> None:
    """Multipart uploads (streamed and rewritten) and parallel reads through the same faults."""
    mounted = mount_ossmount(["part_size=1m,multipart_threshold=2m"])
    source = random_file(tmp_path / "large.bin", 24 * MiB)
    oss2_bucket.put_object("existing.bin", os.urandom(6 * MiB))
    # Heavier than the 5% / 1%: there are far fewer requests here.
    oss_server.faults.reseed(7)
    oss_server.faults.error_rate = 0.10
    oss_server.faults.reset_rate = 0.05
    try:
        subprocess.run(
            ["dd", f"if={source}", f"of={mounted.path / 'large.bin'}", "bs=1M", "conv=fsync"],
            check=True,
            capture_output=True,
        )
        with (mounted.path / "existing.bin").open("r+b") as existing:
            existing.seek(3 * MiB)
            existing.write(b"changed in the middle")
        copy = tmp_path / "copy.bin"
        subprocess.run(["cp", str(mounted.path / "large.bin"), str(copy)], check=True)
    finally:
        oss_server.faults.clear()
    assert sha256(copy) == sha256(source)
    assert int(oss2_bucket.head_object("large.bin").headers["x-oss-hash-crc64ecma"]) == (
        file_crc64(source)
    )
    changed = oss2_bucket.get_object("existing.bin").read()
    assert changed[3 * MiB : 3 * MiB + 21] == b"changed in the middle"
    assert multipart_uploads(oss2_bucket) == []
