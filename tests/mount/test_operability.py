"""Operability (issue 14): the test script's mount clearing, errors a user meets, logs."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ossmount.server import run_server_in_thread
from tests.conftest import TEST_BUCKET, server_config
from tests.mount.conftest import (
    force_unmount,
    fuse_available,
    is_mounted,
    mount_command,
    ossmount_env,
    wait_until_mounted,
)

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))

REPO = Path(__file__).resolve().parents[2]
SUITE_LOCK_NAME = "ossmount-suite.lock"


class Mounts:
    """Mount processes a test starts itself; all unmounted and stopped at teardown."""

    def __init__(self) -> None:
        self.started: list[tuple[Path, subprocess.Popen[bytes]]] = []

    def unrelated(self, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.mount.unrelated_fuse", str(mountpoint)], cwd=REPO
        )
        self.started.append((mountpoint, process))
        wait_until_mounted(mountpoint, process, Path("/dev/null"))

    def ossmount(self, endpoint: str, mountpoint: Path, state_dir: Path, *options: str) -> None:
        mountpoint.mkdir(parents=True)
        command = mount_command(endpoint, TEST_BUCKET, mountpoint, "-f")
        for option in (f"state_dir={state_dir}", *options):
            command += ["-o", option]
        process = subprocess.Popen(command, env=ossmount_env(), stderr=subprocess.DEVNULL)
        self.started.append((mountpoint, process))
        wait_until_mounted(mountpoint, process, Path("/dev/null"))

    def stop_all(self) -> None:
        for mountpoint, process in self.started:
            force_unmount(mountpoint)
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def own_mounts() -> Iterator[Mounts]:
    mounts = Mounts()
    try:
        yield mounts
    finally:
        mounts.stop_all()


def test_test_script_clears_only_leftovers_of_finished_runs(
    oss_server: Any, tmp_path: Path, own_mounts: Mounts
) -> None:
    # A pytest temporary root with a finished run (lock file, unlocked) and a run going on
    # (lock file held here, as tests/conftest.py holds it for a live session).
    temp_root = tmp_path / "pytest-of-someone"
    finished, running = temp_root / "pytest-1", temp_root / "pytest-2"
    for run_dir in (finished, running):
        run_dir.mkdir(parents=True)
        (run_dir / SUITE_LOCK_NAME).touch()
    held = os.open(running / SUITE_LOCK_NAME, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        leftover = finished / "test_a0" / "mnt0"
        in_use = running / "test_b0" / "mnt0"
        unrelated_in_root = finished / "test_c0" / "sshfs"
        unrelated_elsewhere = tmp_path / "rclone"
        own_mounts.ossmount(oss_server.endpoint, leftover, tmp_path / "state-a")
        own_mounts.ossmount(oss_server.endpoint, in_use, tmp_path / "state-b")
        own_mounts.unrelated(unrelated_in_root)
        own_mounts.unrelated(unrelated_elsewhere)

        # The very command scripts/test.sh runs, with the root pointed at ours.
        assert "scripts/clear_test_mounts.py" in (REPO / "scripts" / "test.sh").read_text()
        result = subprocess.run(
            [sys.executable, "scripts/clear_test_mounts.py", "--temp-root", str(temp_root)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.splitlines() == [
            f"clearing a mount a finished test run left: {leftover}"
        ]
        assert not is_mounted(leftover)
        assert is_mounted(in_use)
        assert is_mounted(unrelated_in_root)
        assert is_mounted(unrelated_elsewhere)
        assert os.stat(unrelated_elsewhere).st_ino == 1
    finally:
        os.close(held)


def test_this_session_holds_its_run_lock(tmp_path_factory: pytest.TempPathFactory) -> None:
    lock = tmp_path_factory.getbasetemp() / SUITE_LOCK_NAME
    descriptor = os.open(lock, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)


def test_lookup_during_outage_is_eio_without_internal_error(
    tmp_path: Path, own_mounts: Mounts
) -> None:
    # (The server is stopped, not made to answer 503: connections are refused, as in an outage.)
    mountpoint, log_path = tmp_path / "mnt", tmp_path / "mount.log"
    with run_server_in_thread(server_config(tmp_path / "server")) as server:
        own_mounts.ossmount(
            server.endpoint,
            mountpoint,
            tmp_path / "state",
            "negative_timeout=0",
            "entry_timeout=0",
            f"log_file={log_path}",
        )
    with pytest.raises(OSError) as failure:
        os.stat(mountpoint / "never-seen-before")
    assert failure.value.errno == errno.EIO
    log = log_path.read_text()
    assert "internal error" not in log, log
    assert "Traceback" not in log, log
    # The EIO is logged once, with the key and the reason.
    eio_lines = [line for line in log.splitlines() if "WARNING" in line and "lookup" in line]
    assert len(eio_lines) == 1, log
    assert "never-seen-before" in eio_lines[0], log
    assert "connect" in eio_lines[0].lower(), log
