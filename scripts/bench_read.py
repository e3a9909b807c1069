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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpcore._async.http11 as httpcore_http11
import trio
from benchlib import (
    BUCKET,
    CREDENTIALS,
    MIB,
    curl_timed,
    foreground_mount,
    make_file,
    peak_rss_kib,
    presigned_url,
    process_cpu_s,
)

from ossmount.fs.reader import ReadCache
from ossmount.oss.client import OssClient
from ossmount.server import ServerConfig, run_server_in_thread

KEY = "big.bin"


async def upload(endpoint: str, path: Path) -> None:
    async with OssClient(endpoint, CREDENTIALS) as client:
        await client.put_object(BUCKET, KEY, path)


def curl_get(endpoint: str) -> float:
    return curl_timed(presigned_url(endpoint, "GET", KEY))


def dd_through_mount(
    endpoint: str, mountpoint: Path, options: list[str], log: Path
) -> tuple[float, float, int]:
    """(seconds, CPU seconds of the mount process, its peak RSS in KiB) of one cold dd."""
    with foreground_mount(endpoint, mountpoint, *options, log=log, timeout_s=30) as mount:
        pid = mount.pid
        cpu_before = process_cpu_s(pid)
        start = time.perf_counter()
        subprocess.run(
            ["dd", f"if={mountpoint / KEY}", "of=/dev/null", "bs=1M"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - start
        return elapsed, process_cpu_s(pid) - cpu_before, peak_rss_kib(pid)


async def read_with_file_reader(endpoint: str, block_size: int, threaded_gets: bool) -> None:
    """The mount's read path without FUSE: FileReader.read() of 1 MiB pieces, front to back,
    with the bodies received by worker threads (oss/bulk.py) or through the client (httpx)."""
    async with (
        OssClient(endpoint, CREDENTIALS) as client,
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
            threaded_gets=threaded_gets,
        )
        reader = cache.open(KEY, info.size, info.etag, info.crc64)
        cpu_before = time.process_time()
        start = time.perf_counter()
        for offset in range(0, info.size, MIB):
            await reader.read(offset, MIB)
        elapsed = time.perf_counter() - start
        print(elapsed, time.process_time() - cpu_before)
        await reader.close()


# The body paths of --reader-only: worker threads (the mount's), and the client (httpx) with
# httpcore's socket reads of 64 KiB (its default) or of 1 MiB.
READER_PATHS = {
    "threads": "bodies received by worker threads (oss/bulk.py, the mount's path)",
    "client": "bodies through the client: httpx, 64 KiB socket reads (httpcore default)",
    "client-1m": "bodies through the client: httpx, 1 MiB socket reads",
}


def reader_only(endpoint: str, path: str) -> tuple[float, float]:
    """(seconds, CPU seconds) of read_with_file_reader in a process of its own."""
    command = [sys.executable, __file__, "--reader-child", endpoint, "--reader-path", path]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    elapsed, cpu = result.stdout.split()
    return float(elapsed), float(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader-child", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--reader-path", choices=READER_PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='mount options of one variant, e.g. "-o block_size=4M" (repeatable; '
        "the default options are always measured first)",
    )
    parser.add_argument(
        "--reader-only",
        action="store_true",
        help="also time FileReader without FUSE (1 MiB blocks, 64 MiB cache): bodies received "
        "by worker threads, and through the client with 64 KiB or 1 MiB socket reads",
    )
    args = parser.parse_args()
    if args.reader_child:
        httpcore_http11.AsyncHTTP11Connection.READ_NUM_BYTES = (
            MIB if args.reader_path == "client-1m" else 64 * 1024
        )
        trio.run(read_with_file_reader, args.reader_child, MIB, args.reader_path == "threads")
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
            credentials=[CREDENTIALS],
            buckets=[BUCKET],
        )
        with run_server_in_thread(config) as server:
            trio.run(upload, server.endpoint, source)
            source.unlink()
            curl_s: list[float] = []
            dd_s: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            rss_kib: dict[int, list[int]] = {i: [] for i in range(len(variants))}
            cpu_s: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            alone: dict[str, list[tuple[float, float]]] = {path: [] for path in READER_PATHS}
            for run in range(args.runs):
                curl_s.append(curl_get(server.endpoint))
                if args.reader_only:
                    for path, timings in alone.items():
                        timings.append(reader_only(server.endpoint, path))
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
        for path, timings in alone.items():
            if not timings:
                continue
            mbps = size / statistics.median(t for t, _ in timings) / 1e6
            print(
                f"| FileReader alone, no FUSE, 1 MiB blocks, {READER_PATHS[path]} | "
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
