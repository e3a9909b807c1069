"""`ossmount cp` as users run it: a subprocess against the bundled server, including a process
killed mid-way (SIGKILL) and interrupted (SIGINT), then run again: the result is byte-identical."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import oss2
import pytest

from ossmount.server import RunningServer
from tests.client.conftest import random_file
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_SK

B = TEST_BUCKET
MIB = 1024 * 1024
PART = "256K"
PART_BYTES = 256 * 1024


def cp_env(tmp_path: Path, secret: str = TEST_SK) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSS_")}
    env.update(
        OSS_ACCESS_KEY_ID=TEST_AK,
        OSS_ACCESS_KEY_SECRET=secret,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        HOME=str(tmp_path / "home"),
    )
    return env


def cp_args(server: RunningServer, *args: str) -> list[str]:
    return [sys.executable, "-m", "ossmount.cli", "cp", "--endpoint", server.endpoint, *args]


def run_cp(
    server: RunningServer, tmp_path: Path, *args: str, secret: str = TEST_SK
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cp_args(server, *args),
        env=cp_env(tmp_path, secret),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def journal_parts(directory: Path) -> int:
    """Finished parts recorded in the transfer journal(s) in ``directory``."""
    if not directory.exists():
        return 0
    return sum(
        max(0, len(path.read_bytes().splitlines()) - 1)
        for path in directory.glob(".ossmount-*.ckpt")
    )


def large_upload(tmp_path: Path) -> tuple[bytes, Path, tuple[str, ...]]:
    """An 8 MiB file, tmp_path/src, to upload to oss://B/up in parts of PART: its bytes, the
    directory of cp's upload journals (under cp_env's XDG_CACHE_HOME), and the cp arguments."""
    data = random_file(tmp_path / "src", 8 * MIB)
    journals = tmp_path / "cache" / "ossmount" / "transfers"
    args = (
        str(tmp_path / "src"),
        f"oss://{B}/up",
        "--part-size",
        PART,
        "--multipart-threshold",
        "1M",
    )
    return data, journals, args


def interrupt_when_parts_done(
    server: RunningServer, tmp_path: Path, journal_dir: Path, parts: int, how: int, *args: str
) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        cp_args(server, *args),
        env=cp_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while journal_parts(journal_dir) < parts:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the copy made no progress"
            time.sleep(0.02)
        process.send_signal(how)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_single_files_up_and_down_quietly(oss_server: RunningServer, tmp_path: Path) -> None:
    data = random_file(tmp_path / "local.bin", 3 * MIB + 1)
    up = run_cp(oss_server, tmp_path, str(tmp_path / "local.bin"), f"oss://{B}/dir/")
    assert (up.returncode, up.stdout, up.stderr) == (0, "", "")
    (tmp_path / "down").mkdir()
    down = run_cp(oss_server, tmp_path, f"oss://{B}/dir/local.bin", str(tmp_path / "down"))
    assert (down.returncode, down.stdout, down.stderr) == (0, "", "")
    assert (tmp_path / "down" / "local.bin").read_bytes() == data


def test_recursive_round_trip(oss_server: RunningServer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = {
        "a.txt": b"a",
        "empty": b"",
        "sub/ü nicode+%.bin": os.urandom(300_000),
        "sub/deeper/big.bin": os.urandom(3 * MIB),
    }
    for name, content in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(content)
    up = run_cp(oss_server, tmp_path, "-r", str(tree), f"oss://{B}/backup", "--part-size", PART)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = run_cp(oss_server, tmp_path, "-r", f"oss://{B}/backup/", str(back), "-j", "2")
    assert down.returncode == 0, down.stderr
    copied = {
        path.relative_to(back).as_posix(): path.read_bytes()
        for path in back.rglob("*")
        if path.is_file()
    }
    assert copied == files


def test_unsafe_keys_are_not_written_outside_the_target(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    oss2_bucket.put_object("p/ok", b"ok")
    oss2_bucket.put_object("p/../escape", b"evil")
    result = run_cp(oss_server, tmp_path, "-r", f"oss://{B}/p", str(tmp_path / "t"))
    assert result.returncode == 1
    assert "p/../escape: skipped, unsafe local name" in result.stderr
    assert (tmp_path / "t" / "ok").read_bytes() == b"ok"
    assert not (tmp_path / "escape").exists()


def test_failures_are_one_line_and_non_zero(oss_server: RunningServer, tmp_path: Path) -> None:
    missing = run_cp(oss_server, tmp_path, f"oss://{B}/no-such-key", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "NoSuchKey" in missing.stderr
    both_local = run_cp(oss_server, tmp_path, "a", "b")
    assert both_local.returncode == 2 and both_local.stderr.startswith("ossmount cp: one of")
    (tmp_path / "f").write_bytes(b"x")
    denied = run_cp(oss_server, tmp_path, str(tmp_path / "f"), f"oss://{B}/f", secret="bad")
    assert denied.returncode == 1
    assert denied.stderr.count("\n") == 1 and "SignatureDoesNotMatch" in denied.stderr
    assert "bad" not in denied.stderr.replace("ossmount", "")


def test_progress_bar_when_asked(oss_server: RunningServer, tmp_path: Path) -> None:
    random_file(tmp_path / "f", MIB)
    result = run_cp(oss_server, tmp_path, "--progress", str(tmp_path / "f"), f"oss://{B}/f")
    assert result.returncode == 0
    assert "100%" in result.stderr and "B/s" in result.stderr


@pytest.mark.slow
def test_download_killed_then_rerun(oss_server: RunningServer, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 8 * MIB)
    subprocess.run(
        cp_args(oss_server, str(tmp_path / "src"), f"oss://{B}/big"),
        env=cp_env(tmp_path),
        check=True,
        timeout=60,
    )
    out = tmp_path / "out"
    out.mkdir()
    oss_server.faults.bandwidth_bytes_per_s = 4 * MIB
    killed = interrupt_when_parts_done(
        oss_server, tmp_path, out, 6, signal.SIGKILL,
        f"oss://{B}/big", str(out / "big"), "--part-size", PART,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "big").exists()
    done_before = journal_parts(out)
    oss_server.faults.bandwidth_bytes_per_s = 0
    oss_server.stats.reset()
    again = run_cp(oss_server, tmp_path, f"oss://{B}/big", str(out / "big"), "--part-size", PART)
    assert again.returncode == 0, again.stderr
    assert (out / "big").read_bytes() == data
    assert oss_server.stats.count("GetObject") <= 32 - done_before
    assert sorted(os.listdir(out)) == ["big"]


@pytest.mark.slow
def test_upload_killed_then_rerun(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    data, journals, args = large_upload(tmp_path)
    oss_server.faults.bandwidth_bytes_per_s = 4 * MIB
    killed = interrupt_when_parts_done(oss_server, tmp_path, journals, 6, signal.SIGKILL, *args)
    assert killed.returncode == -signal.SIGKILL
    done_before = journal_parts(journals)
    oss_server.faults.bandwidth_bytes_per_s = 0
    oss_server.stats.reset()
    again = run_cp(oss_server, tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert oss2_bucket.get_object("up").read() == data
    assert oss_server.stats.count("UploadPart") <= 32 - done_before
    assert list(journals.glob("*.ckpt")) == []


@pytest.mark.slow
def test_ctrl_c_then_same_command_resumes(oss_server: RunningServer, tmp_path: Path) -> None:
    data, journals, args = large_upload(tmp_path)
    oss_server.faults.bandwidth_bytes_per_s = 4 * MIB
    interrupted = interrupt_when_parts_done(oss_server, tmp_path, journals, 4, signal.SIGINT, *args)
    assert interrupted.returncode == 130
    assert "interrupted; run the same command again to resume" in interrupted.stderr
    oss_server.faults.bandwidth_bytes_per_s = 0
    assert run_cp(oss_server, tmp_path, *args).returncode == 0
    down = run_cp(oss_server, tmp_path, f"oss://{B}/up", str(tmp_path / "check"))
    assert down.returncode == 0
    assert (tmp_path / "check").read_bytes() == data


def test_progress_bar_on_a_terminal_by_default(oss_server: RunningServer, tmp_path: Path) -> None:
    random_file(tmp_path / "f", MIB)
    controller, terminal = pty.openpty()
    shown = b""
    try:
        process = subprocess.Popen(
            cp_args(oss_server, str(tmp_path / "f"), f"oss://{B}/f"),
            env=cp_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
        os.close(terminal)
        terminal = -1
        # Read while it runs: Linux drops what is unread when the terminal side closes.
        with contextlib.suppress(OSError):  # EIO once the terminal side is closed
            while chunk := os.read(controller, 65536):
                shown += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert b"100%" in shown and b"B/s" in shown


@pytest.mark.parametrize("oss_server", ["https"], indirect=True)
def test_ca_file_over_https(
    oss_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")
    data = random_file(tmp_path / "small", 100_000)
    untrusted = run_cp(oss_server, tmp_path, str(tmp_path / "small"), f"oss://{TEST_BUCKET}/s")
    assert untrusted.returncode == 1
    assert untrusted.stderr.strip().splitlines() == [
        f"ossmount cp: {tmp_path / 'small'} -> oss://{TEST_BUCKET}/s: PUT {TEST_BUCKET}/s: "
        "certificate verify failed (self-signed certificate): pass -o ssl_ca_file=PATH "
        "(ossmount cp: --ca-file PATH) or set SSL_CERT_FILE"
    ], untrusted.stderr
    ca = ("--ca-file", str(oss_server.ca_file))
    up = run_cp(oss_server, tmp_path, *ca, str(tmp_path / "small"), f"oss://{TEST_BUCKET}/s")
    assert up.returncode == 0, up.stderr
    down = run_cp(oss_server, tmp_path, *ca, f"oss://{TEST_BUCKET}/s", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back").read_bytes() == data
