#!/usr/bin/env python3
"""Read benchmark: single-stream curl GET vs `dd bs=1M` through a fresh (cold) mount.

Usage: .venv/bin/python scripts/bench_read.py [--size-mib 1024] [--runs 3] [--variant "-o ..."]

One run of the script starts the bundled server (in a thread of this process, which otherwise only
waits on child processes), uploads one object of --size-mib random bytes, then alternates
  curl -o /dev/null <presigned URL>                 (the reference)
  ossmount mount -f ...; dd if=MNT/obj of=/dev/null bs=1M; unmount   (a new mount each run: cold)
for every variant of mount options, and reports MB/s (median of --runs), the ratio to curl, the
CPU time the mount process spent per GiB (utime + stime from /proc/PID/stat: a measure of its
efficiency that other load on the machine disturbs less than MB/s does), and the mount process's
peak RSS (VmHWM from /proc/PID/status) during the dd.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpcore._async.http11 as httpcore_http11
import trio

from ossmount.fs.reader import ReadCache
from ossmount.oss.client import OssClient
from ossmount.oss.signer import Credentials, presign_v1
from ossmount.server import ServerConfig, run_server_in_thread

AK = "bench-ak"
SK = "bench-secret"
BUCKET = "bench"
KEY = "big.bin"
MIB = 1024 * 1024


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with path.open("wb") as out:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            out.write(piece)
            written += len(piece)


async def upload(endpoint: str, path: Path) -> None:
    async with OssClient(endpoint, Credentials(AK, SK)) as client:
        await client.put_object(BUCKET, KEY, path)


def curl_get(endpoint: str) -> float:
    url = presign_v1(
        Credentials(AK, SK),
        "GET",
        f"{endpoint}/{BUCKET}/{KEY}",
        BUCKET,
        KEY,
        int(time.time()) + 3600,
    )
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - start


def cpu_time_s(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


@contextmanager
def mounted(endpoint: str, mountpoint: Path, options: list[str], log: Path) -> Iterator[int]:
    env = dict(os.environ, OSS_ACCESS_KEY_ID=AK, OSS_ACCESS_KEY_SECRET=SK)
    launcher = ["-m", "ossmount.cli"]
    if options and options[0].startswith("httpcore_read="):
        # Measures a client tuning: httpcore's socket read size (64 KiB by default) for bodies.
        read_bytes = int(options[0].split("=", 1)[1])
        options = options[1:]
        launcher = [
            "-c",
            "import sys, httpcore._async.http11 as h; "
            f"h.AsyncHTTP11Connection.READ_NUM_BYTES = {read_bytes}; "
            "from ossmount.cli import main; sys.argv[0] = 'ossmount'; sys.exit(main())",
        ]
    command = [
        sys.executable,
        *launcher,
        "mount",
        BUCKET,
        str(mountpoint),
        "--endpoint",
        endpoint,
        "-f",
        *options,
    ]
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount failed; see {log}")
            time.sleep(0.05)
        yield process.pid
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dd_through_mount(
    endpoint: str, mountpoint: Path, options: list[str], log: Path
) -> tuple[float, float, int]:
    """(seconds, CPU seconds of the mount process, its peak RSS in KiB) of one cold dd."""
    with mounted(endpoint, mountpoint, options, log) as pid:
        cpu_before = cpu_time_s(pid)
        start = time.perf_counter()
        subprocess.run(
            ["dd", f"if={mountpoint / KEY}", "of=/dev/null", "bs=1M"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - start
        return elapsed, cpu_time_s(pid) - cpu_before, peak_rss_kib(pid)


class RawSocketSource:
    """An experiment, not the product: ranged GETs of a presigned URL over a bare socket,
    received with recv_into, no HTTP library. It measures what the body path costs without
    httpx/h11, to tell the client how much a leaner body path could win. No retries, no
    If-Match (a presigned V1 URL signs no x-oss-* header here), so only for this benchmark."""

    def __init__(self, endpoint: str) -> None:
        self._url = urlsplit(
            presign_v1(
                Credentials(AK, SK),
                "GET",
                f"{endpoint}/{BUCKET}/{KEY}",
                BUCKET,
                KEY,
                int(time.time()) + 3600,
            )
        )

    @property
    def object_crc64(self) -> int | None:
        return None

    @asynccontextmanager
    async def open_range(
        self, start: int, end_inclusive: int
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        url = self._url
        assert url.hostname is not None and url.port is not None
        sock = trio.socket.socket()
        try:
            await sock.connect((url.hostname, url.port))
            request = (
                f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Range: bytes={start}-{end_inclusive}\r\n\r\n"
            )
            await sock.send(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                received = await sock.recv(65536)
                if not received:
                    raise ConnectionError("closed before the headers")
                head += received
            status_and_headers, first_bytes = head.split(b"\r\n\r\n", 1)
            if b" 206 " not in status_and_headers.split(b"\r\n", 1)[0]:
                raise ConnectionError(status_and_headers.decode(errors="replace"))
            yield self._body(sock, first_bytes, end_inclusive - start + 1)
        finally:
            sock.close()

    @staticmethod
    async def _body(
        sock: trio.socket.SocketType, first_bytes: bytes, length: int
    ) -> AsyncIterator[bytes]:
        received = len(first_bytes)
        if first_bytes:
            yield first_bytes
        buffer = bytearray(MIB)
        while received < length:
            count = await sock.recv_into(buffer, min(MIB, length - received))
            if not count:
                raise ConnectionError("body cut short")
            received += count
            yield bytes(memoryview(buffer)[:count])


async def read_with_file_reader(endpoint: str, block_size: int, raw_socket: bool) -> None:
    """The mount's read path without FUSE: FileReader.read() of 1 MiB pieces, front to back."""
    async with (
        OssClient(endpoint, Credentials(AK, SK)) as client,
        trio.open_nursery() as nursery,
    ):
        info = await client.head_object(BUCKET, KEY)
        cache = ReadCache(
            client,
            BUCKET,
            block_size=block_size,
            cache_bytes=64 * MIB,
            max_inflight=8,
            nursery=nursery,
        )
        source = RawSocketSource(endpoint) if raw_socket else None
        reader = cache.open(KEY, info.size, info.etag, info.crc64, source=source)
        cpu_before = time.process_time()
        start = time.perf_counter()
        for offset in range(0, info.size, MIB):
            await reader.read(offset, MIB)
        elapsed = time.perf_counter() - start
        print(elapsed, time.process_time() - cpu_before)
        await reader.close()


def reader_only(endpoint: str, httpcore_read: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of read_with_file_reader in a process of its own; httpcore_read
    0 = httpcore's default, -1 = the raw-socket experiment."""
    command = [sys.executable, __file__, "--reader-child", endpoint]
    if httpcore_read > 0:
        command += ["--httpcore-read", str(httpcore_read)]
    if httpcore_read < 0:
        command += ["--raw-socket"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    elapsed, cpu = result.stdout.split()
    return float(elapsed), float(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader-child", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--httpcore-read", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw-socket", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='mount options of one variant, e.g. "-o block_size=1M" (repeatable; '
        "default: the default options only); a first word httpcore_read=N runs that mount "
        "with httpcore reading N bytes per socket read (a client tuning under test)",
    )
    parser.add_argument(
        "--reader-only",
        action="store_true",
        help="also time FileReader without FUSE (1 MiB blocks): through the client with "
        "httpcore's default socket reads and with 1 MiB ones, and over a bare socket",
    )
    args = parser.parse_args()
    if args.reader_child:
        if args.httpcore_read:
            httpcore_http11.AsyncHTTP11Connection.READ_NUM_BYTES = args.httpcore_read
        trio.run(read_with_file_reader, args.reader_child, MIB, args.raw_socket)
        return 0
    variants: list[list[str]] = [[]] + [v.split() for v in args.variant]
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        root = Path(tmp)
        mountpoint = root / "mnt"
        mountpoint.mkdir()
        source = root / "source.bin"
        make_file(source, size)
        config = ServerConfig(
            root=root / "server",
            credentials=[Credentials(AK, SK)],
            buckets=[BUCKET],
        )
        with run_server_in_thread(config) as server:
            trio.run(upload, server.endpoint, source)
            source.unlink()
            curl_s: list[float] = []
            dd_s: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            rss_kib: dict[int, list[int]] = {i: [] for i in range(len(variants))}
            cpu_s: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            alone: dict[int, list[tuple[float, float]]] = {0: [], MIB: [], -1: []}
            for run in range(args.runs):
                curl_s.append(curl_get(server.endpoint))
                if args.reader_only:
                    for httpcore_read, timings in alone.items():
                        timings.append(reader_only(server.endpoint, httpcore_read))
                for index, options in enumerate(variants):
                    elapsed, cpu, peak = dd_through_mount(
                        server.endpoint, mountpoint, options, root / "mount.log"
                    )
                    dd_s[index].append(elapsed)
                    cpu_s[index].append(cpu)
                    rss_kib[index].append(peak)
                    print(
                        f"run {run}: curl {size / curl_s[-1] / 1e6:.0f} MB/s; "
                        f"dd {' '.join(options) or '(defaults)'} {size / elapsed / 1e6:.0f} MB/s, "
                        f"mount CPU {cpu:.2f} s, peak RSS {peak / 1024:.0f} MiB",
                        flush=True,
                    )
        curl_mbps = size / statistics.median(curl_s) / 1e6
        print()
        print(
            f"object: {args.size_mib} MiB; median of {args.runs} runs; one fresh mount per dd run"
        )
        print("| reader | MB/s | vs curl | mount CPU s per GiB | peak RSS of the mount (max) |")
        print("|---|---|---|---|---|")
        print(f"| curl (single stream GET) | {curl_mbps:.0f} | 100% | | |")
        gib = size / (1024 * MIB)
        for httpcore_read, timings in alone.items():
            if not timings:
                continue
            mbps = size / statistics.median(t for t, _ in timings) / 1e6
            body_path = {
                0: "httpx, 64 KiB socket reads (httpcore default)",
                MIB: "httpx, 1 MiB socket reads",
                -1: "bare socket + recv_into (experiment, no HTTP library)",
            }[httpcore_read]
            print(
                f"| FileReader alone, no FUSE, 1 MiB blocks, {body_path} | "
                f"{mbps:.0f} | {mbps / curl_mbps:.0%} | "
                f"{statistics.median(c for _, c in timings) / gib:.2f} | |"
            )
        for index, options in enumerate(variants):
            mbps = size / statistics.median(dd_s[index]) / 1e6
            label = "dd bs=1M, mount " + (" ".join(options) or "defaults")
            print(
                f"| {label} | {mbps:.0f} | {mbps / curl_mbps:.0%} | "
                f"{statistics.median(cpu_s[index]) / gib:.2f} | "
                f"{max(rss_kib[index]) / 1024:.0f} MiB |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
