"""Storage safety: a server killed mid-PUT leaves the old object or none; data survives a
restart; stray files are cleaned up; the `ossmount server` command itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest
from oss2.models import PartInfo

from tests.conftest import TEST_AK, TEST_BUCKET, TEST_SK
from tests.server.conftest import oss2_bucket_at


class ServerProcess:
    """`ossmount server` as a child process."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ossmount.cli", "server", "--root", str(root), "--port", "0",
             "--bucket", TEST_BUCKET],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OSS_ACCESS_KEY_ID": TEST_AK, "OSS_ACCESS_KEY_SECRET": TEST_SK},
        )  # fmt: skip
        assert self.process.stdout is not None
        self.endpoint = self.process.stdout.readline().strip()
        assert self.endpoint.startswith("http://127.0.0.1:"), self.endpoint
        self.port = int(self.endpoint.rsplit(":", 1)[1])

    def bucket(self) -> oss2.Bucket:
        return oss2_bucket_at(self.endpoint)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "root"


def _start_unfinished_put(
    server: ServerProcess, root: Path, key: str, in_flight: int
) -> socket.socket:
    """Send half of a 16 MiB PUT of `key` (presigned) and wait until it reaches the disk
    (`in_flight` temp files with data in them)."""
    url = server.bucket().sign_url("PUT", key, 600)
    target = url.split(str(server.port), 1)[1]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {16 << 20}\r\n\r\n".encode()
        + os.urandom(8 << 20)
    )
    deadline = time.monotonic() + 10
    while sum(path.stat().st_size > 0 for path in (root / "tmp").iterdir()) < in_flight:
        assert time.monotonic() < deadline, "the body never reached the temp file"
        time.sleep(0.01)
    return sock


def test_killed_put_leaves_the_old_object(root: Path) -> None:
    server = ServerProcess(root)
    try:
        # Larger than INLINE_LIMIT: the old version is a data file.
        server.bucket().put_object("victim", b"old version" * 2000)
        sock = _start_unfinished_put(server, root, "victim", 1)
        sock_new = _start_unfinished_put(server, root, "newcomer", 2)
        server.kill()
        sock.close()
        sock_new.close()
    finally:
        if server.process.poll() is None:
            server.kill()
    restarted = ServerProcess(root)
    try:
        bucket = restarted.bucket()
        assert bucket.get_object("victim").read() == b"old version" * 2000
        assert not bucket.object_exists("newcomer")
        assert list((root / "tmp").iterdir()) == []
        assert len(list((root / "data").glob("*/*"))) == 1
    finally:
        assert restarted.stop() == 0


def test_acknowledged_small_puts_survive_a_killed_server(root: Path) -> None:
    # Bodies up to INLINE_LIMIT live in the index (WAL): a PUT that was answered survives a
    # SIGKILL right after, and so do an overwrite and a delete.
    server = ServerProcess(root)
    try:
        bucket = server.bucket()
        bucket.put_object("small", b"x" * 4096)
        bucket.put_object("replaced", b"first")
        bucket.put_object("replaced", b"second")
        bucket.put_object("gone", b"soon deleted")
        bucket.delete_object("gone")
        bucket.copy_object(TEST_BUCKET, "small", "small-copy")
    finally:
        server.kill()
    restarted = ServerProcess(root)
    try:
        bucket = restarted.bucket()
        assert bucket.get_object("small").read() == b"x" * 4096
        assert bucket.get_object("small-copy").read() == b"x" * 4096
        assert bucket.get_object("replaced").read() == b"second"
        assert not bucket.object_exists("gone")
        assert list((root / "data").glob("*/*")) == []
    finally:
        assert restarted.stop() == 0


def test_data_survives_restart_and_strays_are_removed(root: Path) -> None:
    server = ServerProcess(root)
    try:
        bucket = server.bucket()
        bucket.put_object("kept", b"persistent")
        upload_id = bucket.init_multipart_upload("pending").upload_id
        bucket.upload_part("pending", upload_id, 1, b"part one")
        done_id = bucket.init_multipart_upload("assembled").upload_id
        first = bucket.upload_part("assembled", done_id, 1, b"a" * 102400)
        second = bucket.upload_part("assembled", done_id, 2, b"b")
        bucket.complete_multipart_upload(
            "assembled", done_id, [PartInfo(1, first.etag), PartInfo(2, second.etag)]
        )
        bucket.copy_object(TEST_BUCKET, "assembled", "assembled-copy")
    finally:
        assert server.stop() == 0
    stray = root / "data" / "ff" / ("ff" * 16)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"not indexed")
    (root / "tmp" / "leftover").write_bytes(b"half a body")
    restarted = ServerProcess(root)
    try:
        bucket = restarted.bucket()
        assert bucket.get_object("kept").read() == b"persistent"
        assert bucket.get_object("assembled").read() == b"a" * 102400 + b"b"
        assert bucket.get_object("assembled-copy").read() == b"a" * 102400 + b"b"
        assert [part.size for part in oss2.PartIterator(bucket, "pending", upload_id)] == [8]
        assert not stray.exists()
        assert list((root / "tmp").iterdir()) == []
    finally:
        assert restarted.stop() == 0


def test_command_prints_one_line_and_uses_the_environment(root: Path) -> None:
    server = ServerProcess(root)
    try:
        server.bucket().put_object("k", b"v")
        assert server.process.stdout is not None
    finally:
        assert server.stop() == 0
    assert server.process.stdout is not None
    assert server.process.stdout.read() == ""  # nothing after the endpoint line


def test_command_refuses_bad_arguments(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ossmount.cli", "server", "--root", str(root),
         "--access-key-id", "only-the-id", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "OSS_ACCESS_KEY_SECRET": ""},
    )  # fmt: skip
    assert result.returncode == 2
    assert "secret" in result.stderr
    assert result.stdout == ""


def test_command_reports_a_taken_port(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ossmount.cli", "server", "--root", str(root),
             "--port", str(port)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Address already in use" in result.stderr
