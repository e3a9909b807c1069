#!/usr/bin/env python3
"""Metadata benchmarks of the mount, against the bundled server with injected latency.

Usage: .venv/bin/python scripts/bench_mount.py [--latency-ms 5] [--objects 10000] [--only NAME]

One run starts the bundled server (in a thread of this process, which otherwise only waits on
child processes), uploads the data with no latency, then sets the latency and measures, each on
a fresh daemon mount (cold caches):

  ls-l        `ls -l` of a directory of --objects objects carrying ossfs metadata (mode 0600):
              with readdir_optimize (attributes from the listing), with exact metadata (a HEAD
              per file), and again with exact metadata once the listing cache expired
              (list_cache_ttl=0): HEAD results are reused per object version; then with the
              on-disk metadata cache, on a first and a second mount.
  find        `find` over 100 directories of 100 files, both modes.
  cat         `cat` of 1,000 files of 4 KiB (one `cat` of all, after an `ls` of the directory):
              requests per file counted at the server, both modes.

  million     (only with --million N, not part of a default run) N empty objects in directories
              of 1,000 (seeded straight into the server's index, which takes seconds), walked
              with `find -printf` (name, size, mode: attributes of every file) twice on one
              mount with readdir_optimize, no latency: the mount's peak RSS shows whether its
              memory stays bounded (inodes, listing and attribute caches) on a large bucket.

Each line: seconds, server requests by operation, and whether the output showed mode 0600.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from benchlib import BUCKET, CREDENTIALS, REGION, foreground_mount, peak_rss_kib, process_cpu_s

from ossmount.oss.client import OssClient
from ossmount.server import RunningServer, ServerConfig, run_server_in_thread
from ossmount.server.store import ObjectRecord, Store

EMPTY_ETAG = '"D41D8CD98F00B204E9800998ECF8427E"'  # MD5 of no bytes, as OSS spells ETags

OSSFS_0600 = {"mode": str(stat.S_IFREG | 0o600), "uid": "1000", "gid": "1000"}


async def upload_all(endpoint: str, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    async with OssClient(endpoint, CREDENTIALS, region=REGION, max_connections=32) as c:
        limiter = trio.CapacityLimiter(32)

        async def put(key: str, data: bytes, metadata: dict[str, str]) -> None:
            async with limiter:
                await c.put_object(BUCKET, key, data, metadata=metadata)

        async with trio.open_nursery() as nursery:
            for key, data, metadata in items:
                nursery.start_soon(put, key, data, metadata)


EXTRA_OPTIONS: list[str] = []


@dataclass
class Mount:
    path: Path
    process: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the mount process so far."""
        return process_cpu_s(self.process.pid)

    def peak_rss_mib(self) -> float:
        """VmHWM of the mount process."""
        return peak_rss_kib(self.process.pid) / 1024


@contextmanager
def mounted(server: RunningServer, options: list[str]) -> Iterator[Mount]:
    """A fresh foreground mount (cold caches) as a child process."""
    with tempfile.TemporaryDirectory(prefix="bench-mnt-") as directory:
        mountpoint = Path(directory)
        mount_options = [arg for option in [*options, *EXTRA_OPTIONS] for arg in ("-o", option)]
        with foreground_mount(
            server.endpoint, mountpoint, "--region", REGION, *mount_options
        ) as process:
            yield Mount(mountpoint, process)


def timed(server: RunningServer, command: list[str], cwd: Path) -> tuple[float, str, str]:
    server.stats.reset()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    counts = dict(sorted(server.stats.by_operation.items()))
    return elapsed, result.stdout, " ".join(f"{op}={n}" for op, n in counts.items())


def report(name: str, elapsed: float, requests: str, note: str = "") -> None:
    print(f"{name:<44} {elapsed:7.2f} s   {requests}   {note}", flush=True)


def bench_ls(server: RunningServer, latency_ms: float, objects: int) -> None:
    variants = [
        ("ls -l, readdir_optimize", ["readdir_optimize"], 1),
        ("ls -l, exact metadata (HEAD per file)", [], 1),
        ("ls -l, exact, 2nd listing (list_cache_ttl=0)", ["list_cache_ttl=0"], 2),
    ]
    for name, options, runs in variants:
        with mounted(server, options) as mount:
            server.faults.latency_ms = latency_ms
            for _ in range(runs):
                cpu_before = mount.cpu_s()
                elapsed, out, requests = timed(server, ["ls", "-l", "ls"], mount.path)
                cpu = mount.cpu_s() - cpu_before
            server.faults.latency_ms = 0
            rss = mount.peak_rss_mib()
        lines = out.splitlines()[1:]
        shown_0600 = sum(line.startswith("-rw-------") for line in lines)
        report(
            f"{name} ({len(lines)} entries)",
            elapsed,
            requests,
            f"0600 shown: {shown_0600}, mount CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB",
        )


def bench_ls_disk_cache(server: RunningServer, latency_ms: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache_dir:
        options = [f"metadata_cache,cache_dir={cache_dir}"]
        for attempt in ("1st mount", "2nd mount"):
            with mounted(server, options) as mount:
                server.faults.latency_ms = latency_ms
                elapsed, out, requests = timed(server, ["ls", "-l", "ls"], mount.path)
                server.faults.latency_ms = 0
            lines = out.splitlines()[1:]
            shown_0600 = sum(line.startswith("-rw-------") for line in lines)
            report(
                f"ls -l, exact, metadata_cache, {attempt}",
                elapsed,
                requests,
                f"0600 shown: {shown_0600}",
            )


def bench_find(server: RunningServer, latency_ms: float) -> None:
    for name, options in (
        ("find 100x100, readdir_optimize", ["readdir_optimize"]),
        ("find 100x100, exact metadata", []),
    ):
        with mounted(server, options) as mount:
            server.faults.latency_ms = latency_ms
            elapsed, out, requests = timed(server, ["find", "tree", "-type", "f"], mount.path)
            server.faults.latency_ms = 0
            rss = mount.peak_rss_mib()
        report(f"{name} ({len(out.split())} files)", elapsed, requests, f"peak RSS {rss:.0f} MiB")


def bench_cat(server: RunningServer, latency_ms: float) -> None:
    for name, options in (
        ("cat 1000 x 4 KiB, readdir_optimize", ["readdir_optimize"]),
        ("cat 1000 x 4 KiB, exact metadata", []),
    ):
        with mounted(server, options) as mount:
            server.faults.latency_ms = latency_ms
            listing_s, _, listing_requests = timed(server, ["ls", "-l", "cat"], mount.path)
            elapsed, out, requests = timed(server, ["sh", "-c", "cat cat/* | wc -c"], mount.path)
            per_file = server.stats.total / 1000
            server.faults.latency_ms = 0
        report(f"{name}: listing", listing_s, listing_requests)
        report(
            f"{name}: cat",
            elapsed,
            requests,
            f"{per_file:.2f} requests/file after the listing, {out.strip()} bytes",
        )


def seed_million(root: Path, objects: int) -> None:
    """``objects`` empty objects million/dNNNN/fNNNN (1,000 per directory) in the index at
    ``root``, committed in one transaction before the server opens it."""
    store = Store(root)
    try:
        store.create_bucket(BUCKET)
        now = time.time()
        records = (
            ObjectRecord(BUCKET, f"million/d{i // 1000:04d}/f{i % 1000:03d}", None, 0,
                         EMPTY_ETAG, 0, now, "Normal")
            for i in range(objects)
        )  # fmt: skip
        store.commit_objects(records)
    finally:
        store.close()


def bench_million(server: RunningServer, objects: int) -> None:
    with mounted(server, ["readdir_optimize"]) as mount:
        command = ["find", "million", "-printf", "%p %s %m\\n"]
        for attempt in ("first", "second"):
            cpu_before = mount.cpu_s()
            elapsed, out, requests = timed(server, command, mount.path)
            files = sum(1 for line in out.splitlines() if line.count("/") == 2)
            report(
                f"find -printf of {objects:,} objects, {attempt} walk ({files:,} files)",
                elapsed,
                requests,
                f"mount CPU {mount.cpu_s() - cpu_before:.1f} s, "
                f"peak RSS {mount.peak_rss_mib():.0f} MiB",
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--only", choices=["ls", "find", "cat", "million"])
    parser.add_argument(
        "--million",
        type=int,
        default=0,
        metavar="N",
        help="also walk a tree of N empty objects (seeded into the index) and report peak RSS",
    )
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        help="extra mount options for every mount",
    )
    args = parser.parse_args()
    EXTRA_OPTIONS.extend(args.options)
    with tempfile.TemporaryDirectory(prefix="bench-srv-") as root:
        if args.million:
            started = time.perf_counter()
            seed_million(Path(root), args.million)
            print(f"seeded {args.million:,} objects in {time.perf_counter() - started:.1f} s")
        config = ServerConfig(
            root=Path(root), credentials=[CREDENTIALS], buckets=[BUCKET], region=REGION
        )
        with run_server_in_thread(config) as server:
            items: list[tuple[str, bytes, dict[str, str]]] = []
            if args.only in (None, "ls"):
                items += [(f"ls/f{i:05d}", b"x" * 100, OSSFS_0600) for i in range(args.objects)]
            if args.only in (None, "find"):
                items += [
                    (f"tree/d{d:03d}/f{f:03d}", b"y", OSSFS_0600)
                    for d in range(100)
                    for f in range(100)
                ]
            if args.only in (None, "cat"):
                items += [(f"cat/f{i:04d}", os.urandom(4096), {}) for i in range(1000)]
            started = time.perf_counter()
            trio.run(upload_all, server.endpoint, items)
            print(
                f"uploaded {len(items)} objects in {time.perf_counter() - started:.1f} s; "
                f"latency {args.latency_ms} ms per request from now on",
                flush=True,
            )
            if args.only in (None, "ls"):
                bench_ls(server, args.latency_ms, args.objects)
                bench_ls_disk_cache(server, args.latency_ms)
            if args.only in (None, "find"):
                bench_find(server, args.latency_ms)
            if args.only in (None, "cat"):
                bench_cat(server, args.latency_ms)
            if args.million and args.only in (None, "million"):
                bench_million(server, args.million)
    return 0


if __name__ == "__main__":
    sys.exit(main())
