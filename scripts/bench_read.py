#!/usr/bin/env python3
"""Read benchmark: single-stream curl GET vs `dd bs=1M` through a fresh (cold) mount.

Usage: .venv/bin/python scripts/bench_read.py [--size-mib 1024] [--runs 3] [--variant "-o ..."]

One run of the script starts the bundled server (in a thread of this process, which otherwise only
waits on child processes), uploads one object of --size-mib random bytes, then alternates
  curl -o /dev/null <presigned URL>                 (the reference)
  ossmount mount -f ...; dd if=MNT/obj of=/dev/null bs=1M; unmount   (a new mount each run: cold)
for every variant of mount options, and reports MB/s (median of --runs), the ratio to curl, the
CPU time per GiB of each process on the path (utime + stime: the reader, curl or dd; the mount,
from /proc/PID/stat; the server, this process's own CPU time, as it runs here), which other load
on the machine disturbs less than MB/s does, and the FUSE daemon's peak RSS (VmHWM from
/proc/PID/status) during the dd.

--ceiling adds `dd` through scripts/fuse_ceiling.py, a pyfuse3 file system serving the same
number of bytes from memory (no server, no network), with the page cache and with direct I/O:
what FUSE alone allows on this machine, against the same curl.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpcore._async.http11 as httpcore_http11
import trio
from benchlib import (
    BUCKET,
    CREDENTIALS,
    MIB,
    foreground_fs,
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


@dataclass
class Timing:
    """One transfer: wall seconds, and the CPU seconds of each process on its path."""

    seconds: float
    reader_cpu_s: float  # curl or dd
    server_cpu_s: float  # the server's threads (this process)
    mount_cpu_s: float | None = None
    mount_peak_rss_kib: int | None = None


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_reader(command: list[str]) -> Timing:
    """Run ``command`` (curl or dd) to completion; the server runs in this process, so its CPU
    is this process's (the main thread only waits meanwhile)."""
    reader_before, server_before = children_cpu_s(), time.process_time()
    start = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return Timing(seconds, children_cpu_s() - reader_before, time.process_time() - server_before)


def curl_get(endpoint: str) -> Timing:
    url = presigned_url(endpoint, "GET", KEY)
    return timed_reader(["curl", "-sS", "-f", "-o", "/dev/null", url])


def dd_command(path: Path) -> list[str]:
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M"]


def dd_through(daemon_pid: int, path: Path) -> Timing:
    """One dd of ``path``, with the CPU and peak RSS of the FUSE daemon serving it."""
    cpu_before = process_cpu_s(daemon_pid)
    timing = timed_reader(dd_command(path))
    timing.mount_cpu_s = process_cpu_s(daemon_pid) - cpu_before
    timing.mount_peak_rss_kib = peak_rss_kib(daemon_pid)
    return timing


def dd_through_mount(endpoint: str, mountpoint: Path, options: list[str], log: Path) -> Timing:
    """One cold dd of the object through a fresh mount."""
    with foreground_mount(endpoint, mountpoint, *options, log=log, timeout_s=30) as mount:
        return dd_through(mount.pid, mountpoint / KEY)


CEILING_VARIANTS = {
    "page cache": [],
    "direct I/O": ["--direct-io"],
}


def dd_through_ceiling(mountpoint: Path, size_mib: int, options: list[str], log: Path) -> Timing:
    """One dd of the same size through scripts/fuse_ceiling.py (FUSE alone, data from memory)."""
    script = Path(__file__).with_name("fuse_ceiling.py")
    command = [sys.executable, str(script), str(mountpoint), "--size-mib", str(size_mib)]
    with foreground_fs([*command, *options], mountpoint, log=log, timeout_s=30) as daemon:
        return dd_through(daemon.pid, mountpoint / "data")


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


def print_table(
    args: argparse.Namespace,
    size: int,
    curl: list[Timing],
    dd: dict[str, list[Timing]],
    alone: dict[str, list[tuple[float, float]]],
) -> None:
    """The medians as a Markdown table (CPU columns: seconds per GiB, median of the runs)."""
    gib = size / (1024 * MIB)

    def cpu(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return f"{statistics.median(known) / gib:.2f}" if known else ""

    curl_mbps = size / statistics.median(t.seconds for t in curl) / 1e6
    print()
    print(f"object: {args.size_mib} MiB; median of {args.runs} runs; one fresh mount per dd run")
    print(
        "| reader | MB/s | vs curl | CPU s per GiB: reader | server | mount "
        "| peak RSS of the FUSE daemon (max) |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = {"curl (single stream GET)": curl, **dd}
    for label, timings in rows.items():
        mbps = size / statistics.median(t.seconds for t in timings) / 1e6
        peaks = [t.mount_peak_rss_kib for t in timings if t.mount_peak_rss_kib is not None]
        print(
            f"| {label} | {mbps:.0f} | {mbps / curl_mbps:.0%} "
            f"| {cpu([t.reader_cpu_s for t in timings])} "
            f"| {cpu([t.server_cpu_s for t in timings])} "
            f"| {cpu([t.mount_cpu_s for t in timings])} "
            f"| {f'{max(peaks) / 1024:.0f} MiB' if peaks else ''} |"
        )
    for path, pairs in alone.items():
        if not pairs:
            continue
        mbps = size / statistics.median(seconds for seconds, _ in pairs) / 1e6
        cpu_s: list[float | None] = [reader_cpu for _, reader_cpu in pairs]
        print(
            f"| FileReader alone, no FUSE, 1 MiB blocks, {READER_PATHS[path]} | "
            f"{mbps:.0f} | {mbps / curl_mbps:.0%} | {cpu(cpu_s)} | | | |"
        )


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
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also time dd through scripts/fuse_ceiling.py (FUSE alone, data from memory)",
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
            curl: list[Timing] = []
            dd: dict[str, list[Timing]] = {}
            alone: dict[str, list[tuple[float, float]]] = {path: [] for path in READER_PATHS}
            for run in range(args.runs):
                curl.append(curl_get(server.endpoint))
                print(f"run {run}: curl {size / curl[-1].seconds / 1e6:.0f} MB/s", flush=True)
                if args.reader_only:
                    for path, timings in alone.items():
                        timings.append(reader_only(server.endpoint, path))
                for options in variants:
                    label = "dd bs=1M, mount " + (" ".join(options) or "defaults")
                    timing = dd_through_mount(
                        server.endpoint, mountpoint, options, root / "mount.log"
                    )
                    dd.setdefault(label, []).append(timing)
                    print(f"run {run}: {label} {size / timing.seconds / 1e6:.0f} MB/s", flush=True)
                if args.ceiling:
                    for name, options in CEILING_VARIANTS.items():
                        label = f"dd bs=1M, FUSE alone (scripts/fuse_ceiling.py, {name})"
                        timing = dd_through_ceiling(
                            mountpoint, args.size_mib, options, root / "ceiling.log"
                        )
                        dd.setdefault(label, []).append(timing)
                        print(
                            f"run {run}: {label} {size / timing.seconds / 1e6:.0f} MB/s",
                            flush=True,
                        )
        print_table(args, size, curl, dd, alone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
