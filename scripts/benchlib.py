"""What the benchmark scripts share: the bench key and bucket, a file of random bytes, the
bundled server as a child process, presigned URLs, a timed curl transfer, and a process's CPU
time and peak RSS.

The scripts in this folder import it as ``benchlib`` (Python puts a script's own folder first on
``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ossmount.oss.crc64 import Crc64
from ossmount.oss.signer import Credentials, presign_v1

AK = "bench-ak"
SK = "bench-secret"
BUCKET = "bench"
REGION = "cn-hangzhou"
CREDENTIALS = Credentials(AK, SK)
MIB = 1024 * 1024


def make_file(path: Path, size: int) -> int:
    """Write ``size`` random bytes to ``path``; -> their CRC-64.

    16 MiB of randomness, rotated by one byte per block so that no two blocks are alike.
    """
    block = os.urandom(16 * MIB)
    crc = Crc64()
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            block = block[1:] + block[:1]
            out.write(piece)
            crc.update(piece)
            written += len(piece)
    return crc.value


@dataclass
class ServerProcess:
    """A running ``ossmount server`` child process and the endpoint it answers at."""

    process: subprocess.Popen[str]
    endpoint: str
    # The certificate to trust when the server speaks https (--tls-self-signed), else None.
    ca_file: Path | None = None


@contextmanager
def server_process(
    root: Path, *options: str, python: str = sys.executable
) -> Iterator[ServerProcess]:
    """``ossmount server`` with its data in ``root`` as a child process (so that it does not
    share the benchmark's GIL), serving BUCKET to the bench key until the block exits.
    ``options``: more command-line options, e.g. ``--direct-io``, ``--tls-self-signed``;
    ``python``: the interpreter (another virtualenv's, to measure another version of the
    server)."""
    command = [
        python, "-m", "ossmount.cli", "server", "--root", str(root), "--port", "0",
        "--access-key-id", AK, "--access-key-secret", SK, "--bucket", BUCKET, *options,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        endpoint, _, ca = line.partition(" ca_file=")
        if not endpoint.startswith(("http://", "https://")):
            raise RuntimeError(f"the server did not start: {line!r}")
        yield ServerProcess(process, endpoint, Path(ca) if ca else None)
    finally:
        process.terminate()
        process.wait(timeout=30)


def presigned_url(endpoint: str, method: str, key: str) -> str:
    """A V1 presigned URL of BUCKET/key for ``method``, valid for an hour."""
    return presign_v1(
        CREDENTIALS, method, f"{endpoint}/{BUCKET}/{key}", BUCKET, key, int(time.time()) + 3600
    )


def curl_timed(*args: str) -> float:
    """Wall seconds of one ``curl -sS -f -o /dev/null ARGS`` (raises if curl fails)."""
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", *args], check=True)
    return time.perf_counter() - started


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has spent so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM from /proc/PID/status) of a process, in KiB; by default
    of this one."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


@contextmanager
def foreground_mount(
    endpoint: str,
    mountpoint: Path,
    *args: str,
    log: Path | None = None,
    timeout_s: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``ossmount mount -f BUCKET MOUNTPOINT --endpoint ENDPOINT ARGS`` with the bench key, as a
    child process, under :func:`foreground_fs`."""
    command = [
        sys.executable, "-m", "ossmount.cli", "mount", BUCKET, str(mountpoint),
        "--endpoint", endpoint, "-f", *args,
    ]  # fmt: skip
    with foreground_fs(command, mountpoint, log=log, timeout_s=timeout_s) as process:
        yield process


@contextmanager
def foreground_fs(
    command: list[str],
    mountpoint: Path,
    *,
    log: Path | None = None,
    timeout_s: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """A FUSE daemon ``command`` that mounts at ``mountpoint`` in the foreground, as a child
    process with the bench key in its environment; yields once the mount answers, and at exit
    unmounts it (lazily) and waits for the process, killing it if it does not stop. Its output
    goes to ``log`` (appended) or nowhere."""
    env = dict(os.environ, OSS_ACCESS_KEY_ID=AK, OSS_ACCESS_KEY_SECRET=SK)
    if log is None:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    else:
        with log.open("ab") as log_file:
            process = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                where = f"; see {log}" if log is not None else ""
                raise RuntimeError(f"the mount did not come up{where}")
            time.sleep(0.05)
        yield process
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
