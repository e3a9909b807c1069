"""Mounting for real: daemon readiness, every error path, signals, stale mounts, helper syntax."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_BUCKET, TEST_REGION
from tests.mount.conftest import (
    Mounted,
    MountFactory,
    force_unmount,
    fuse_available,
    is_mounted,
    mount_command,
    ossmount_command,
    ossmount_env,
    wait_until_mounted,
)

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


def mount_daemon(
    endpoint: str, mountpoint: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ossmount mount` without -f; always leaves nothing mounted if it failed."""
    command = mount_command(endpoint, TEST_BUCKET, mountpoint, *extra)
    started = time.monotonic()
    result = subprocess.run(
        command,
        env=env or ossmount_env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    result.elapsed_s = time.monotonic() - started  # type: ignore[attr-defined]
    return result


@pytest.fixture
def mountpoint(tmp_path: Path) -> Any:
    path = tmp_path / "mnt"
    path.mkdir()
    try:
        yield path
    finally:
        force_unmount(path)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_daemon_returns_once_mount_answers(
    oss_server: Any, oss2_bucket: Any, mountpoint: Path
) -> None:
    oss2_bucket.put_object("hello.txt", b"hello\n")
    result = mount_daemon(oss_server.endpoint, mountpoint)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # No polling: the mount answers the moment the command returns.
    assert (mountpoint / "hello.txt").read_bytes() == b"hello\n"
    unmounted = subprocess.run(
        ossmount_command("unmount", str(mountpoint)), capture_output=True, text=True, check=False
    )
    assert unmounted.returncode == 0, unmounted.stderr
    assert not is_mounted(mountpoint)


def test_wrong_access_key_id(oss_server: Any, mountpoint: Path) -> None:
    env = ossmount_env(access_key_id="no-such-key")
    line = one_line_error(mount_daemon(oss_server.endpoint, mountpoint, env=env))
    assert line.startswith("ossmount: wrong access key"), line
    assert not is_mounted(mountpoint)


def test_wrong_secret(oss_server: Any, mountpoint: Path) -> None:
    env = ossmount_env(secret="wrong-secret")
    line = one_line_error(mount_daemon(oss_server.endpoint, mountpoint, env=env))
    assert "signature does not match" in line, line
    assert "wrong-secret" not in line
    assert not is_mounted(mountpoint)


def test_no_such_bucket(oss_server: Any, mountpoint: Path) -> None:
    command = mount_command(oss_server.endpoint, "no-such-bucket", mountpoint)
    result = subprocess.run(
        command, env=ossmount_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert one_line_error(result) == "ossmount: no such bucket: no-such-bucket"
    assert not is_mounted(mountpoint)


def test_endpoint_unreachable(mountpoint: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = mount_daemon(f"http://127.0.0.1:{closed_port}", mountpoint)
    line = one_line_error(result)
    assert line.startswith(f"ossmount: endpoint http://127.0.0.1:{closed_port} unreachable"), line
    assert result.elapsed_s < 20  # type: ignore[attr-defined]
    assert not is_mounted(mountpoint)


def test_mountpoint_missing(oss_server: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    line = one_line_error(mount_daemon(oss_server.endpoint, missing))
    assert line == f"ossmount: mountpoint {missing} does not exist"


def test_already_mounted(oss_server: Any, mounted: Mounted) -> None:
    line = one_line_error(mount_daemon(oss_server.endpoint, mounted.path))
    assert line == f"ossmount: mountpoint {mounted.path} is already mounted"
    assert os.listdir(mounted.path) == []  # the first mount still answers


def test_unknown_option_rejected(oss_server: Any, mountpoint: Path) -> None:
    result = mount_daemon(oss_server.endpoint, mountpoint, "-o", "allow_other,colour=blue")
    assert result.returncode == 2
    assert one_line_error(result) == (
        "ossmount: unknown mount option 'colour=blue' (see docs/configuration.md)"
    )


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_no_dev_fuse(oss_server: Any, mountpoint: Path) -> None:
    # A private mount namespace whose /dev is an empty tmpfs: no /dev/fuse there.
    inner = " ".join(
        [
            *ossmount_command("mount", TEST_BUCKET, str(mountpoint)),
            "--endpoint",
            oss_server.endpoint,
            "--region",
            TEST_REGION,
        ]
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none /dev && exec {inner}"],
        env=ossmount_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot make a mount namespace here: {result.stderr.strip()}")
    line = one_line_error(result)
    assert line.startswith("ossmount: /dev/fuse is missing"), line


def start_foreground(endpoint: str, mountpoint: Path, log: Path) -> subprocess.Popen[bytes]:
    command = mount_command(endpoint, TEST_BUCKET, mountpoint, "-f", "--log-file", str(log))
    process = subprocess.Popen(command, env=ossmount_env(), stderr=subprocess.DEVNULL)
    wait_until_mounted(mountpoint, process, log)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(
    oss_server: Any, mountpoint: Path, tmp_path: Path, signum: int
) -> None:
    process = start_foreground(oss_server.endpoint, mountpoint, tmp_path / "log")
    try:
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0
        assert not is_mounted(mountpoint)
        assert os.listdir(mountpoint) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stale_mount_of_crashed_process_is_cleared(
    oss_server: Any, oss2_bucket: Any, mountpoint: Path, tmp_path: Path
) -> None:
    oss2_bucket.put_object("after-crash.txt", b"back\n")
    crashed = start_foreground(oss_server.endpoint, mountpoint, tmp_path / "log1")
    crashed.kill()
    crashed.wait()
    with pytest.raises(OSError, match="Transport endpoint is not connected"):
        os.listdir(mountpoint)
    result = mount_daemon(oss_server.endpoint, mountpoint)
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "after-crash.txt").read_bytes() == b"back\n"


def test_fstab_helper_syntax(oss_server: Any, oss2_bucket: Any, mountpoint: Path) -> None:
    """`ossmount BUCKET MOUNTPOINT -o ...`, the way mount.fuse3 runs a helper."""
    oss2_bucket.put_object("f.txt", b"fstab\n")
    options = f"_netdev,nofail,rw,nosuid,nodev,url={oss_server.endpoint},region={TEST_REGION}"
    result = subprocess.run(
        ossmount_command(TEST_BUCKET, str(mountpoint), "-o", options),
        env=ossmount_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "f.txt").read_bytes() == b"fstab\n"


@pytest.mark.skipif(
    shutil.which("mount.fuse3") is None or os.geteuid() != 0, reason="needs mount.fuse3 as root"
)
def test_mount_t_fuse_ossmount(
    oss_server: Any, oss2_bucket: Any, mountpoint: Path, tmp_path: Path
) -> None:
    """mount(8) -> mount.fuse3 -> `HELPER BUCKET MOUNTPOINT -o OPTS`.

    mount(8) runs helpers without PATH (so `-t fuse.ossmount` needs ossmount in /usr/local/bin
    or /usr/bin, which a test must not touch); the `-t fuse PROGRAM#BUCKET` form names the
    helper by path and exercises the same command line.
    """
    oss2_bucket.put_object("f.txt", b"mount -t\n")
    helper = tmp_path / "ossmount"
    helper.write_text(f'#!/bin/sh\nexec {" ".join(ossmount_command())} "$@"\n', encoding="utf-8")
    helper.chmod(0o755)
    result = subprocess.run(
        [
            "mount",
            "-t",
            "fuse",
            f"{helper}#{TEST_BUCKET}",
            str(mountpoint),
            "-o",
            f"_netdev,nofail,url={oss_server.endpoint},region={TEST_REGION}",
        ],
        env=ossmount_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "f.txt").read_bytes() == b"mount -t\n"


def test_unmount_command_on_unmounted_dir_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        ossmount_command("unmount", str(tmp_path)), capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"ossmount: cannot unmount {tmp_path}")


def test_fixture_mount_is_usable(mount_ossmount: MountFactory) -> None:
    daemon = mount_ossmount(daemon=True)
    assert is_mounted(daemon.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a bdi's read_ahead_kb")
def test_read_ahead_raised(mount_ossmount: MountFactory) -> None:
    mounted = mount_ossmount(["read_ahead_kb=2048"])
    device = os.stat(mounted.path).st_dev
    sysfs = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    # A foreground mount is in the mount table a moment before it answers and raises its
    # readahead (the fixture waits only for the former).
    deadline = time.monotonic() + 10
    while sysfs.read_text().strip() != "2048":
        assert time.monotonic() < deadline, sysfs.read_text()
        time.sleep(0.05)


def test_anonymous_on_private_bucket(oss_server: Any, mountpoint: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in ossmount_env().items() if not k.startswith("OSS_")}
    env["HOME"] = str(tmp_path)  # no ~/.passwd-ossfs: anonymous access
    line = one_line_error(mount_daemon(oss_server.endpoint, mountpoint, env=env))
    # First that no key was found and where ossmount looked, then what the anonymous request got.
    assert line.startswith("ossmount: no credentials found (looked in: OSS_ACCESS_KEY_ID/"), line
    assert f"{tmp_path}/.passwd-ossfs, /etc/passwd-ossfs)" in line, line
    assert f"the anonymous request got: access denied to bucket {TEST_BUCKET}" in line, line


def test_passwd_file_readable_by_others_is_refused(
    oss_server: Any, mountpoint: Path, tmp_path: Path
) -> None:
    passwd = tmp_path / "passwd-ossfs"
    passwd.write_text("test-ak:test-secret\n")
    passwd.chmod(0o644)
    env = {k: v for k, v in ossmount_env().items() if not k.startswith("OSS_")}
    line = one_line_error(
        mount_daemon(oss_server.endpoint, mountpoint, "-o", f"passwd_file={passwd}", env=env)
    )
    assert "chmod 600" in line, line
    passwd.chmod(0o600)
    result = mount_daemon(oss_server.endpoint, mountpoint, "-o", f"passwd_file={passwd}", env=env)
    assert result.returncode == 0, result.stderr


def test_endpoint_that_never_answers_fails_within_mount_timeout(mountpoint: Path) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        result = mount_daemon(f"http://127.0.0.1:{port}", mountpoint, "-o", "mount_timeout=2")
    line = one_line_error(result)
    assert line.startswith(f"ossmount: endpoint http://127.0.0.1:{port} unreachable"), line
    assert result.elapsed_s < 15  # type: ignore[attr-defined]
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("oss_server", ["https"], indirect=True)
def test_https_endpoint_needs_its_certificate_trusted(
    oss_server: Any, oss2_bucket: Any, mountpoint: Path, tmp_path: Path
) -> None:
    oss2_bucket.put_object("hello.txt", b"hello\n")
    untrusting = ossmount_env()
    untrusting.pop("SSL_CERT_FILE", None)
    state = ("-o", f"state_dir={tmp_path / 'state'}")
    result = mount_daemon(oss_server.endpoint, mountpoint, *state, env=untrusting)
    line = one_line_error(result)
    assert line == (
        f"ossmount: endpoint {oss_server.endpoint}: GET {TEST_BUCKET}/: certificate verify "
        "failed (self-signed certificate): pass -o ssl_ca_file=PATH (ossmount cp: --ca-file "
        "PATH) or set SSL_CERT_FILE"
    ), line
    assert not is_mounted(mountpoint)

    trusted = mount_daemon(
        oss_server.endpoint,
        mountpoint,
        *state,
        "-o",
        f"ssl_ca_file={oss_server.ca_file}",
        env=untrusting,
    )
    try:
        assert trusted.returncode == 0, trusted.stderr
        assert (mountpoint / "hello.txt").read_bytes() == b"hello\n"
    finally:
        force_unmount(mountpoint)


@pytest.mark.parametrize("oss_server", ["https"], indirect=True)
def test_http_to_the_https_port_says_so(oss_server: Any, mountpoint: Path) -> None:
    plain = oss_server.endpoint.replace("https://", "http://")
    line = one_line_error(mount_daemon(plain, mountpoint))
    assert line == (
        f"ossmount: endpoint {plain}: the endpoint's port speaks https, not http: use an "
        "https:// endpoint"
    ), line
    assert not is_mounted(mountpoint)


def test_https_to_the_http_port_says_so(oss_server: Any, mountpoint: Path) -> None:
    tls = oss_server.endpoint.replace("http://", "https://")
    line = one_line_error(mount_daemon(tls, mountpoint))
    assert line == (
        f"ossmount: endpoint {tls}: GET {TEST_BUCKET}/: the endpoint does not speak TLS "
        "(wrong version number): use an http:// endpoint, or the server's https port"
    ), line
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize("endpoint", ["notaurl", "http://", "ftp://host", "http://h:99999"])
def test_bad_endpoint_is_one_line_naming_it(endpoint: str, mountpoint: Path) -> None:
    # (No --region: "notaurl" names none, which is how the client met it first.)
    command = ossmount_command("mount", TEST_BUCKET, str(mountpoint), "--endpoint", endpoint)
    result = subprocess.run(
        command, env=ossmount_env(), capture_output=True, text=True, timeout=90, check=False
    )
    line = one_line_error(result)
    assert "endpoint" in line, line
    assert endpoint.rsplit("://", maxsplit=1)[-1] in line, line
    assert "https://oss-cn-hangzhou.aliyuncs.com" in line, line
    assert "ValueError" not in line, line


def test_version_option_and_first_log_line(
    oss_server: Any, mountpoint: Path, tmp_path: Path
) -> None:
    from ossmount import __version__  # noqa: PLC0415

    result = subprocess.run(
        ossmount_command("--version"), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ossmount {__version__}"
    log = tmp_path / "mount.log"
    state = f"state_dir={tmp_path / 'state'}"
    result = mount_daemon(oss_server.endpoint, mountpoint, "--log-file", str(log), "-o", state)
    assert result.returncode == 0, result.stderr
    first = log.read_text().splitlines()[0]
    assert f"ossmount {__version__}" in first, first


def test_process_title_names_bucket_prefix_and_mountpoint(
    oss_server: Any, mountpoint: Path, tmp_path: Path
) -> None:
    state = f"state_dir={tmp_path / 'state'}"
    assert mount_daemon(oss_server.endpoint, mountpoint, "-o", state).returncode == 0
    titles = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip())
        except OSError:
            continue
    expected = f"ossmount {TEST_BUCKET} {mountpoint}".encode()
    assert expected in titles, [t for t in titles if b"ossmount" in t]


def test_nonempty_mountpoint_is_refused_unless_nonempty(
    oss_server: Any, mountpoint: Path, tmp_path: Path
) -> None:
    (mountpoint / "precious.txt").write_text("keep me visible")
    line = one_line_error(mount_daemon(oss_server.endpoint, mountpoint))
    assert line == (
        f"ossmount: mountpoint {mountpoint} is not empty: the mount would hide its files "
        "(-o nonempty mounts over them)"
    )
    assert not is_mounted(mountpoint)
    state = f"state_dir={tmp_path / 'state'}"
    result = mount_daemon(oss_server.endpoint, mountpoint, "-o", "nonempty", "-o", state)
    assert result.returncode == 0, result.stderr
    assert is_mounted(mountpoint)
    assert not (mountpoint / "precious.txt").exists()
