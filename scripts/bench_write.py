#!/usr/bin/env python3
"""Write benchmark: single-stream curl PUT vs the mount's write path (fs/writer.py).

Usage: .venv/bin/python scripts/bench_write.py [--size-mib 1024] [--runs 3]
           [--part-size-mib 8] [--concurrency 4]

One run of the script starts the bundled server (in a thread of this process), writes a file of
--size-mib random bytes to a temporary directory, then alternates
  curl -T FILE <presigned PUT URL>                          (the reference)
  the write path alone, in a child process: WriteStaging + StagedFile.write() of 1 MiB pieces
  (what FUSE write() calls do), then flush() (what close() does)
and reports MB/s (median of --runs), the ratio to curl, the time flush() took after the last
write (close() after a streamed write), the peak staging disk, and the child's peak RSS (VmHWM).
The FUSE layer is not in this figure: it measures the writer the mount calls.

With --mount, the same comparison goes through a real mount (`ossmount mount -f` in a process
of its own; the server in another process, and in a thread of this one for cp -r, to count
its requests):
  dd if=FILE of=MNT/... bs=1M conv=fsync   vs   curl -T FILE (alternated, --runs times)
  close() time after a streamed write of the file (a Python writer, 1 MiB writes)
  peak RSS of the mount process (VmHWM) and peak staging disk (state_dir/staging, polled)
  cp -r of --small-files-count files of 4 KiB into the mount with --latency-ms injected: time
  and requests per file counted at the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio
from benchlib import (
    AK,
    BUCKET,
    CREDENTIALS,
    MIB,
    SK,
    curl_timed,
    foreground_mount,
    make_file,
    peak_rss_kib,
    presigned_url,
    server_process,
)

from ossmount.oss.client import OssClient
from ossmount.server import ServerConfig, run_server_in_thread


def curl_put(endpoint: str, path: Path, key: str) -> float:
    return curl_timed("-H", "Content-Type:", "-T", str(path), presigned_url(endpoint, "PUT", key))


async def writer_child(args: argparse.Namespace) -> dict[str, float]:
    """Stream the file through WriteStaging, as the mount's write()/close() would."""
    from ossmount.fs.writer import WriteStaging  # noqa: PLC0415 (child process only)
    from ossmount.oss.client import OssClient  # noqa: PLC0415

    source = Path(args.source)
    state_dir = Path(args.state_dir)
    peak_staging = 0
    async with OssClient(args.endpoint, CREDENTIALS) as client:
        staging = WriteStaging(
            client,
            BUCKET,
            state_dir=state_dir,
            prefix="",
            disk_budget_bytes=4 * 1024 * MIB,
            part_size=args.part_size_mib * MIB,
            multipart_threshold=16 * MIB,
            upload_concurrency=args.concurrency,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(staging.run)
                start = time.perf_counter()
                staged = await staging.open(args.key, None, truncate=True)
                offset = 0
                with source.open("rb", buffering=0) as file:
                    while piece := file.read(MIB):
                        await staged.write(offset, piece)
                        offset += len(piece)
                        if offset % (16 * MIB) == 0:
                            used = sum(p.stat().st_size for p in (state_dir / "staging").iterdir())
                            peak_staging = max(peak_staging, used)
                flush_start = time.perf_counter()
                await staged.flush()
                end = time.perf_counter()
                await staged.release()
                nursery.cancel_scope.cancel()
        finally:
            staging.close()
    return {
        "seconds": end - start,
        "flush_seconds": end - flush_start,
        "peak_staging_bytes": peak_staging,
        "peak_rss_kib": peak_rss_kib(),
    }


async def small_files(endpoint: str, state_dir: Path, count: int, size: int) -> tuple[float, int]:
    """Write ``count`` new files of ``size`` bytes one after the other (as `cp -r` does):
    open, one write, flush, release each. -> (seconds, requests made)."""
    from ossmount.fs.writer import WriteStaging  # noqa: PLC0415

    payload = os.urandom(size)
    async with OssClient(endpoint, CREDENTIALS) as client:
        staging = WriteStaging(
            client,
            BUCKET,
            state_dir=state_dir,
            prefix="",
            disk_budget_bytes=1024 * MIB,
            part_size=8 * MIB,
            multipart_threshold=16 * MIB,
            upload_concurrency=4,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(staging.run)
                start = time.perf_counter()
                for number in range(count):
                    staged = await staging.open(f"small/{number:05d}", None, truncate=True)
                    await staged.write(0, payload)
                    await staged.flush()
                    await staged.release()
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
        finally:
            staging.close()
    return elapsed, count


def run_writer(
    endpoint: str, source: Path, key: str, work: Path, args: argparse.Namespace
) -> dict[str, float]:
    state_dir = work / f"state-{key}"
    command = [
        sys.executable,
        __file__,
        "--child",
        "--endpoint",
        endpoint,
        "--source",
        str(source),
        "--key",
        key,
        "--state-dir",
        str(state_dir),
        "--part-size-mib",
        str(args.part_size_mib),
        "--concurrency",
        str(args.concurrency),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part-size-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--small-files",
        type=int,
        default=0,
        metavar="N",
        help="instead: N new 4 KiB files one after the other with --latency-ms injected",
    )
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument(
        "--mount", action="store_true", help="measure through a real mount (dd, close(), cp -r)"
    )
    parser.add_argument("--small-files-count", type=int, default=1000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(trio.run(writer_child, args)))
        return 0

    if args.small_files:
        return small_files_main(args)
    if args.mount:
        return mount_main(args)
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="ossmount-bench-write-") as temp:
        work = Path(temp)
        source = work / "source.bin"
        make_file(source, size)
        config = ServerConfig(root=work / "server", credentials=[CREDENTIALS], buckets=[BUCKET])
        with run_server_in_thread(config) as server:
            curl_s: list[float] = []
            writer: list[dict[str, float]] = []
            for run in range(args.runs):
                curl_s.append(curl_put(server.endpoint, source, f"curl-{run}.bin"))
                writer.append(run_writer(server.endpoint, source, f"writer-{run}.bin", work, args))
                print(
                    f"run {run}: curl {size / curl_s[-1] / 1e6:.0f} MB/s; writer "
                    f"{size / writer[-1]['seconds'] / 1e6:.0f} MB/s, flush "
                    f"{writer[-1]['flush_seconds']:.2f} s, staging peak "
                    f"{writer[-1]['peak_staging_bytes'] / MIB:.0f} MiB, RSS "
                    f"{writer[-1]['peak_rss_kib'] / 1024:.0f} MiB",
                    file=sys.stderr,
                )
        curl_mbps = size / statistics.median(curl_s) / 1e6
        writer_mbps = size / statistics.median(run["seconds"] for run in writer) / 1e6
        print(
            f"size {args.size_mib} MiB, part size {args.part_size_mib} MiB, "
            f"{args.concurrency} parts in flight, median of {args.runs} runs"
        )
        print("| writer | MB/s | vs curl | close() (flush) | staging peak | peak RSS |")
        print("|---|---|---|---|---|---|")
        print(f"| curl -T (single stream PUT) | {curl_mbps:.0f} | 100% | | | |")
        print(
            f"| WriteStaging 1 MiB writes + flush | {writer_mbps:.0f} | "
            f"{writer_mbps / curl_mbps:.0%} | "
            f"{max(run['flush_seconds'] for run in writer):.2f} s (max) | "
            f"{max(run['peak_staging_bytes'] for run in writer) / MIB:.0f} MiB | "
            f"{max(run['peak_rss_kib'] for run in writer) / 1024:.0f} MiB |"
        )
    return 0


def small_files_main(args: argparse.Namespace) -> int:
    """Time with the server in a process of its own (a server thread here would share the GIL
    with the writer); count requests with an in-process server (its counters are readable)."""
    with tempfile.TemporaryDirectory(prefix="ossmount-bench-write-") as temp:
        work = Path(temp)
        with server_process(work / "server-timed", "--latency-ms", str(args.latency_ms)) as server:
            elapsed, count = trio.run(
                small_files, server.endpoint, work / "state-timed", args.small_files, 4096
            )
        config = ServerConfig(root=work / "server", credentials=[CREDENTIALS], buckets=[BUCKET])
        with run_server_in_thread(config) as counted:
            counted.stats.reset()
            _, counted_files = trio.run(small_files, counted.endpoint, work / "state", 100, 4096)
            requests = counted.stats.count()
            by_operation = dict(sorted(counted.stats.by_operation.items()))
    print(
        f"{count} files of 4 KiB, {args.latency_ms:g} ms latency: {elapsed:.2f} s "
        f"({elapsed / count * 1000:.1f} ms per file); {requests / counted_files:.2f} requests "
        f"per file {by_operation} (over {counted_files} files)"
    )
    return 0


# -- through a real mount ---------------------------------------------------------------------

STREAMED_CLOSE = r"""
import os, sys, time
source, target = sys.argv[1], sys.argv[2]
fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
start = time.perf_counter()
with open(source, "rb", buffering=0) as data:
    while piece := data.read(1 << 20):
        os.write(fd, piece)
written = time.perf_counter()
os.close(fd)
closed = time.perf_counter()
print(written - start, closed - written)
"""


class Mount:
    """`ossmount mount -f` of BUCKET in a child process, until stop()."""

    def __init__(self, endpoint: str, work: Path, name: str, args: argparse.Namespace) -> None:
        self.path = work / f"mnt-{name}"
        self.path.mkdir()
        self.state_dir = work / f"state-{name}"
        options = (
            f"state_dir={self.state_dir},part_size={args.part_size_mib}m,"
            f"upload_concurrency={args.concurrency}"
        )
        self._mount = contextlib.ExitStack()
        self.process = self._mount.enter_context(
            foreground_mount(endpoint, self.path, "-o", options, timeout_s=30)
        )

    def stop(self) -> None:
        self._mount.close()


class StagingPeak:
    """Polls the bytes in a staging directory every 50 ms in a thread; ``peak`` is the most."""

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            used = 0
            for path in list(self.staging_dir.glob("*")):
                try:
                    used += path.stat().st_blocks * 512
                except FileNotFoundError:
                    continue
            self.peak = max(self.peak, used)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def client_multipart(endpoint: str, source: Path, key: str, args: argparse.Namespace) -> float:
    """`ossmount cp` of the file: the client's own parallel multipart upload, no FUSE."""
    env = {**os.environ, "OSS_ACCESS_KEY_ID": AK, "OSS_ACCESS_KEY_SECRET": SK}
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ossmount.cli",
            "cp",
            "-q",
            "--endpoint",
            endpoint,
            "--part-size",
            f"{args.part_size_mib}m",
            "-j",
            str(args.concurrency),
            str(source),
            f"oss://{BUCKET}/{key}",
        ],
        check=True,
        env=env,
    )
    return time.perf_counter() - start


def dd_fsync(source: Path, target: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["dd", f"if={source}", f"of={target}", "bs=1M", "conv=fsync", "status=none"], check=True
    )
    return time.perf_counter() - start


def mount_main(args: argparse.Namespace) -> int:
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="ossmount-bench-write-") as temp:
        work = Path(temp)
        source = work / "source.bin"
        make_file(source, size)
        # The server in a process of its own for the throughput figures (as curl sees it).
        with server_process(work / "server-timed") as server_timed:
            endpoint = server_timed.endpoint
            mount = Mount(endpoint, work, "big", args)
            try:
                curl_s: list[float] = []
                dd_s: list[float] = []
                client_s: list[float] = []
                staging = StagingPeak(mount.state_dir / "staging")
                for run in range(args.runs):
                    curl_s.append(curl_put(endpoint, source, f"curl-{run}.bin"))
                    dd_s.append(dd_fsync(source, mount.path / f"dd-{run}.bin"))
                    client_s.append(client_multipart(endpoint, source, f"cp-{run}.bin", args))
                    print(
                        f"run {run}: curl {size / curl_s[-1] / 1e6:.0f} MB/s, "
                        f"dd conv=fsync {size / dd_s[-1] / 1e6:.0f} MB/s, "
                        f"ossmount cp {size / client_s[-1] / 1e6:.0f} MB/s",
                        file=sys.stderr,
                    )
                closes: list[float] = []
                for run in range(args.runs):
                    output = subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            STREAMED_CLOSE,
                            str(source),
                            str(mount.path / f"py-{run}.bin"),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout.split()
                    closes.append(float(output[1]))
                    print(
                        f"run {run}: streamed write {size / float(output[0]) / 1e6:.0f} MB/s, "
                        f"close() {closes[-1]:.2f} s",
                        file=sys.stderr,
                    )
                staging_peak = staging.stop()
                rss_kib = peak_rss_kib(mount.process.pid)
            finally:
                mount.stop()
        # In a thread for cp -r: its request counters are readable (the mount is a process).
        config = ServerConfig(root=work / "server", credentials=[CREDENTIALS], buckets=[BUCKET])
        with run_server_in_thread(config) as server:
            small = work / "small"
            small.mkdir()
            for number in range(args.small_files_count):
                (small / f"f{number:04d}").write_bytes(os.urandom(4096))
            mount = Mount(server.endpoint, work, "small", args)
            try:
                server.faults.latency_ms = args.latency_ms
                server.stats.reset()
                start = time.perf_counter()
                subprocess.run(["cp", "-r", str(small), str(mount.path / "small")], check=True)
                cp_s = time.perf_counter() - start
                requests = server.stats.count()
                by_operation = dict(sorted(server.stats.by_operation.items()))
                server.faults.clear()
            finally:
                mount.stop()
    curl_mbps = size / statistics.median(curl_s) / 1e6
    dd_mbps = size / statistics.median(dd_s) / 1e6
    count = args.small_files_count
    print(
        f"size {args.size_mib} MiB, part size {args.part_size_mib} MiB, {args.concurrency} "
        f"uploads in flight, median of {args.runs} runs"
    )
    print("| through the mount | figure |")
    print("|---|---|")
    print(f"| curl -T (single-stream PUT) | {curl_mbps:.0f} MB/s |")
    client_mbps = size / statistics.median(client_s) / 1e6
    print(
        f"| ossmount cp (the client's multipart upload, no FUSE) | {client_mbps:.0f} MB/s "
        f"({client_mbps / curl_mbps:.0%} of curl) |"
    )
    print(f"| dd bs=1M conv=fsync | {dd_mbps:.0f} MB/s ({dd_mbps / curl_mbps:.0%} of curl) |")
    print(
        f"| close() after a streamed write | {statistics.median(closes):.2f} s median, "
        f"{max(closes):.2f} s max |"
    )
    print(f"| peak RSS of the mount (VmHWM) | {rss_kib / 1024:.0f} MiB |")
    print(f"| staging disk peak | {staging_peak / MIB:.0f} MiB |")
    print(
        f"| cp -r of {count} files of 4 KiB, {args.latency_ms:g} ms latency | {cp_s:.2f} s "
        f"({cp_s / count * 1000:.1f} ms per file), {requests / count:.2f} requests per file "
        f"{by_operation} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
