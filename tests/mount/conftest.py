"""Real mounts for tests: ossmount runs as a subprocess against the `oss_server` fixture.

`mount_ossmount` (fixture) is a factory: ``mount_ossmount(options=[...], prefix="", daemon=False)``
mounts TEST_BUCKET (or a prefix of it) at a fresh directory and returns a :class:`Mounted`. Every
mount made through it is unmounted at teardown with ``fusermount3 -u -z``, whatever happened.
`mounted` is the default mount (foreground, default options). Tests skip, with a reason, only
where /dev/fuse is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import oss2
import pytest

from tests.conftest import SCHEMES, TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK

MOUNT_TIMEOUT_S = 30.0

# The mount tests that also run over https (every mount test would double the slowest layer):
# all reads, and the write-side tools that make most kinds of request.
OVER_BOTH_SCHEMES = frozenset(
    {
        "tests.mount.test_read",
        "tests.mount.test_write_tools::test_cp_r",
        "tests.mount.test_write_tools::test_rsync_twice_second_transfers_nothing",
        "tests.mount.test_write_tools::test_git_init_add_commit",
        "tests.mount.test_write_tools::test_sqlite_database",
        "tests.mount.test_write_tools::test_mv_files_and_directories",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__
    if "oss_server" in metafunc.fixturenames and (
        module in OVER_BOTH_SCHEMES
        or f"{module}::{metafunc.function.__name__}" in OVER_BOTH_SCHEMES
    ):
        metafunc.parametrize("oss_server", SCHEMES, indirect=True)


def fuse_available() -> str | None:
    """None when real mounts can run here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: real FUSE mounts cannot run on this machine"
    return None


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        return any(line.split()[4] == target for line in mounts if len(line.split()) > 4)


def force_unmount(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def ossmount_env(access_key_id: str = TEST_AK, secret: str = TEST_SK) -> dict[str, str]:
    env = dict(os.environ)
    env["OSS_ACCESS_KEY_ID"] = access_key_id
    env["OSS_ACCESS_KEY_SECRET"] = secret
    env.pop("OSS_SESSION_TOKEN", None)
    env["HOME"] = env.get("HOME", "/root")
    return env


def ossmount_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ossmount.cli", *args]


def mount_command(endpoint: str, spec: str, mountpoint: Path, *extra: str) -> list[str]:
    """`ossmount mount SPEC MOUNTPOINT` against ``endpoint`` in the test region, then ``extra``."""
    return ossmount_command(
        "mount", spec, str(mountpoint), "--endpoint", endpoint, "--region", TEST_REGION, *extra
    )


@dataclass
class Mounted:
    """One mount made by the fixture."""

    path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None
    command: list[str] = field(default_factory=list)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def unmount(self) -> None:
        force_unmount(self.path)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until_mounted(path: Path, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while time.monotonic() < deadline:
        if is_mounted(path):
            try:
                os.stat(path)
            except OSError:
                pass
            else:
                return
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"ossmount exited with {process.returncode} before mounting:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.05)
    raise AssertionError("ossmount did not mount within the timeout:\n" + log.read_text()[-3000:])


MountFactory = Callable[..., Mounted]


@pytest.fixture
def mount_ossmount(oss_server: Any, tmp_path: Path) -> Iterator[MountFactory]:
    reason = fuse_available()
    if reason is not None:
        pytest.skip(reason)
    mounts: list[Mounted] = []

    def mount(
        options: list[str] | None = None,
        *,
        prefix: str = "",
        daemon: bool = False,
        bucket: str = TEST_BUCKET,
        env: dict[str, str] | None = None,
        debug: bool = False,
    ) -> Mounted:
        mountpoint = tmp_path / f"mnt{len(mounts)}"
        mountpoint.mkdir()
        log_path = tmp_path / f"mount{len(mounts)}.log"
        spec = f"{bucket}:/{prefix}" if prefix else bucket
        command = mount_command(oss_server.endpoint, spec, mountpoint, "--log-file", str(log_path))
        for option in options or []:
            command += ["-o", option]
        if debug:
            command.append("--debug")
        if not any("state_dir=" in option for option in options or []):
            # A write-path state directory of its own (the default one is per user, bucket and
            # prefix, and would be shared by every test's mount).
            command += ["-o", f"state_dir={tmp_path / f'state{len(mounts)}'}"]
        environment = env or ossmount_env()
        if oss_server.ca_file is not None and not any("ssl_ca_file=" in o for o in options or []):
            # Trusted by the option, not by the test process's SSL_CERT_FILE.
            command += ["-o", f"ssl_ca_file={oss_server.ca_file}"]
            environment.pop("SSL_CERT_FILE", None)
        if daemon:
            result = subprocess.run(
                command, env=environment, capture_output=True, timeout=90, check=False
            )
            mounted = Mounted(mountpoint, log_path, None, command)
            mounts.append(mounted)
            assert result.returncode == 0, result.stderr.decode() + mounted.log()
            assert is_mounted(mountpoint)
            return mounted
        with log_path.with_suffix(".stderr").open("wb") as stderr:
            process = subprocess.Popen(
                [*command, "-f"], env=environment, stdout=subprocess.DEVNULL, stderr=stderr
            )
        mounted = Mounted(mountpoint, log_path, process, command)
        mounts.append(mounted)
        wait_until_mounted(mountpoint, process, log_path)
        return mounted

    try:
        yield mount
    finally:
        for mounted in mounts:
            mounted.unmount()


@pytest.fixture
def mounted(mount_ossmount: MountFactory) -> Mounted:
    """TEST_BUCKET mounted in the foreground with default options."""
    return mount_ossmount()


def object_bytes(bucket: oss2.Bucket, key: str) -> bytes | None:
    """The object's bytes read through oss2 (an independent client), or None when it is gone."""
    try:
        return bytes(bucket.get_object(key).read())
    except oss2.exceptions.NoSuchKey:
        return None
