"""`ossmount status`, the metrics endpoint and the daemon's log file, on real mounts."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ossmount import __version__
from tests.conftest import TEST_BUCKET, TEST_SK
from tests.mount.conftest import (
    Mounted,
    MountFactory,
    force_unmount,
    fuse_available,
    mount_command,
    ossmount_command,
    ossmount_env,
)

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))

WAIT_S = 60.0


def status_of(mounted: Mounted) -> dict[str, Any]:
    result = subprocess.run(
        ossmount_command("status", str(mounted.path), "--json"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def status_text(mounted: Mounted) -> str:
    result = subprocess.run(
        ossmount_command("status", str(mounted.path)), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_counters_move_as_a_program_writes_and_reads(mount_ossmount: MountFactory) -> None:
    mounted = mount_ossmount(["direct_io"])
    before = status_of(mounted)
    assert before["bucket"] == "test-bucket"
    assert before["mountpoint"] == str(mounted.path)
    assert before["not_in_oss"] == []
    socket_path = Path(before["status_socket"])
    assert socket_path.parent == Path(before["state_dir"])
    assert socket_path.name == f"status-{before['pid']}.sock"
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(socket_path.stat().st_mode)

    data = os.urandom(3 * 1024 * 1024 + 17)
    (mounted.path / "counted.bin").write_bytes(data)
    after_write = status_of(mounted)
    assert after_write["requests"].get("PutObject", 0) > before["requests"].get("PutObject", 0)
    assert after_write["bytes_out"] - before["bytes_out"] >= len(data)

    assert (mounted.path / "counted.bin").read_bytes() == data
    after_read = status_of(mounted)
    assert after_read["requests"].get("GetObject", 0) > after_write["requests"].get("GetObject", 0)
    assert after_read["bytes_in"] - after_write["bytes_in"] >= len(data)
    blocks = after_read["caches"]["blocks"]
    assert blocks["misses"] > after_write["caches"]["blocks"]["misses"]
    assert after_read["inodes"] >= 2
    assert after_read["memory"]["rss_bytes"] > 0
    assert after_read["uptime_s"] >= before["uptime_s"]

    text = status_text(mounted)
    assert f"ossmount test-bucket at {mounted.path}" in text
    assert "PutObject" in text
    assert "GetObject" in text
    assert "every closed file is in OSS" in text
    assert str(mounted.log_path) in text  # where the mount logs


def test_a_failed_upload_shows_with_its_error_until_it_succeeds(
    mount_ossmount: MountFactory, oss_server: Any
) -> None:
    mounted = mount_ossmount()
    path = mounted.path / "unlucky.txt"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"precious")
    oss_server.faults.only_operations = frozenset({"PutObject"})
    oss_server.faults.error_rate = 1.0
    try:
        with pytest.raises(OSError) as raised:
            os.close(fd)
        assert raised.value.errno == errno.EIO
        status = status_of(mounted)
        pending = {entry["key"]: entry for entry in status["not_in_oss"]}
        assert set(pending) == {"unlucky.txt"}, status
        assert pending["unlucky.txt"]["state"] == "failed, retrying"
        assert pending["unlucky.txt"]["size"] == len(b"precious")
        last_error = pending["unlucky.txt"]["last_error"]
        assert "SlowDown" in last_error or "InternalError" in last_error, last_error
        assert status["retries"].get("PutObject", 0) > 0
        text = status_text(mounted)
        assert "NOT IN OSS YET: 1 file(s), 1 failed and being retried" in text, text
        assert "unlucky.txt" in text
    finally:
        oss_server.faults.clear()
    # The background retry succeeds: the file leaves the list.
    deadline = time.monotonic() + WAIT_S
    while status_of(mounted)["not_in_oss"] and time.monotonic() < deadline:
        time.sleep(0.2)
    final = status_of(mounted)
    assert final["not_in_oss"] == [], final
    assert "every closed file is in OSS" in status_text(mounted)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_is_scraped_over_http(mount_ossmount: MountFactory) -> None:
    port = free_port()
    mounted = mount_ossmount([f"metrics_addr={port}"])  # a bare port: loopback
    before = scrape(port)
    (mounted.path / "metered.txt").write_bytes(b"x" * 1000)
    after = scrape(port)
    put = 'ossmount_requests_total{operation="PutObject"}'
    assert after[put] > before.get(put, 0)
    assert after["ossmount_sent_bytes_total"] - before["ossmount_sent_bytes_total"] >= 1000
    assert after["ossmount_files_not_in_oss"] == 0
    assert after["ossmount_resident_memory_bytes"] > 0
    assert 'ossmount_cache_misses_total{cache="blocks"}' in after
    # Listening on loopback only (/proc/net/tcp: local address 0100007F = 127.0.0.1).
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")
    ]
    assert listening == [f"0100007F:{port:04X}"], listening


def test_daemon_logs_to_a_file_in_the_state_directory_without_syslog(
    oss_server: Any, tmp_path: Path
) -> None:
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log exists: the daemon logs to syslog here")
    state_dir, mountpoint = tmp_path / "daemon-state", tmp_path / "mnt"
    mountpoint.mkdir()
    command = mount_command(
        oss_server.endpoint, TEST_BUCKET, mountpoint, "-o", f"state_dir={state_dir}"
    )
    try:
        result = subprocess.run(
            command, env=ossmount_env(), capture_output=True, text=True, timeout=90, check=False
        )
        assert result.returncode == 0, result.stderr
        mounted = Mounted(mountpoint, state_dir / "ossmount.log", None)
        (mountpoint / "logged.txt").write_text("hi")
        status = status_of(mounted)
        assert status["log"] == str(state_dir / "ossmount.log")
        assert str(state_dir / "ossmount.log") in status_text(mounted)
        text = mounted.log()
        assert f"ossmount {__version__}" in text.splitlines()[0]
        assert TEST_SK not in text
    finally:
        force_unmount(mountpoint)


def test_read_only_mounts_sharing_a_state_directory_each_answer(
    mount_ossmount: MountFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "shared-state"
    state_dir.mkdir()
    dead = state_dir / "status-999999999.sock"  # a crashed mount's socket: nobody listens
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(os.fspath(dead))
    first = mount_ossmount(["ro", f"state_dir={state_dir}"])
    second = mount_ossmount(["ro", f"state_dir={state_dir}"])
    statuses = [status_of(first), status_of(second)]
    assert [status["mountpoint"] for status in statuses] == [str(first.path), str(second.path)]
    assert all(status["read_only"] and status["not_in_oss"] == [] for status in statuses)
    assert not dead.exists()
    assert "read-only mount" in status_text(first)
