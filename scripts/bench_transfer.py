#!/usr/bin/env python3
"""Transfer benchmark: ossmount's resumable upload/download vs oss2's, same server, same run.

Usage: .venv/bin/python scripts/bench_transfer.py [--size-mib 1024] [--runs 3] [--part-size-mib 10]
                                                  [--threads 4]

One run starts the bundled server as a separate process (`ossmount server`, so that it does not
share this process's GIL), writes a file of --size-mib random bytes, then alternates, --runs
times each:
  upload:   ossmount.oss.transfer.upload_file     vs  oss2.resumable_upload   (multipart)
  download: ossmount.oss.transfer.download_file   vs  oss2.resumable_download (parallel ranges)
with the same part size and --threads parallel parts on both sides (ossmount's concurrency,
oss2's num_threads). Every result is checked (CRC-64 by ossmount itself, size and CRC-64 of the
oss2 results here). It prints MB/s (median of the runs), the ratio ossmount/oss2, and the CPU
seconds per GiB each client spent (this process: robust to other load on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import oss2
import trio
from benchlib import AK, BUCKET, CREDENTIALS, MIB, REGION, SK, make_file, server_process

from ossmount.oss import transfer
from ossmount.oss.client import OssClient
from ossmount.oss.crc64 import Crc64


def file_crc(path: Path) -> int:
    crc = Crc64()
    with path.open("rb") as source:
        while chunk := source.read(16 * MIB):
            crc.update(chunk)
    return crc.value


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """-> (wall seconds, CPU seconds of this process: the client's own work, all threads)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part-size-mib", type=int, default=10, help="oss2's default: 10")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory in /tmp")
    args = parser.parse_args()
    size = args.size_mib * MIB
    part_size = args.part_size_mib * MIB

    scratch = tempfile.TemporaryDirectory(
        prefix="bench-transfer-", dir=args.workdir, ignore_cleanup_errors=True
    )
    with scratch as directory, server_process(Path(directory) / "server") as server:
        workdir = Path(directory)
        endpoint = server.endpoint
        source = workdir / "source.bin"
        source_crc = make_file(source, size)
        bucket = oss2.Bucket(oss2.AuthV4(AK, SK), endpoint, BUCKET, region=REGION)
        oss2_store = workdir / "oss2-store"

        def ossmount_upload() -> None:
            async def run() -> None:
                async with OssClient(endpoint, CREDENTIALS, max_connections=args.threads) as client:
                    await transfer.upload_file(
                        client, BUCKET, "ossmount-up", source,
                        part_size=part_size, concurrency=args.threads,
                        multipart_threshold=part_size, checkpoint_dir=workdir / "ckpt",
                    )  # fmt: skip

            trio.run(run)

        def oss2_upload() -> None:
            oss2.resumable_upload(
                bucket, "oss2-up", str(source),
                store=oss2.ResumableStore(root=str(oss2_store)),
                multipart_threshold=part_size, part_size=part_size, num_threads=args.threads,
            )  # fmt: skip

        def ossmount_download() -> None:
            async def run() -> None:
                async with OssClient(endpoint, CREDENTIALS, max_connections=args.threads) as client:
                    await transfer.download_file(
                        client, BUCKET, "ossmount-up", workdir / "ossmount-down.bin",
                        part_size=part_size, concurrency=args.threads,
                    )  # fmt: skip

            trio.run(run)

        def oss2_download() -> None:
            oss2.resumable_download(
                bucket, "oss2-up", str(workdir / "oss2-down.bin"),
                store=oss2.ResumableDownloadStore(root=str(oss2_store)),
                multiget_threshold=part_size, part_size=part_size, num_threads=args.threads,
            )  # fmt: skip

        names = ("upload ossmount", "upload oss2", "download ossmount", "download oss2")
        cpu_s: dict[str, list[float]] = {name: [] for name in names}
        results: dict[str, list[float]] = {name: [] for name in names}
        for run_number in range(args.runs):
            pairs = [("upload ossmount", ossmount_upload), ("upload oss2", oss2_upload)]
            pairs += [("download ossmount", ossmount_download), ("download oss2", oss2_download)]
            if run_number % 2:  # alternate who goes first
                pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
            for name, action in pairs:
                for stale in ("ossmount-down.bin", "oss2-down.bin"):
                    (workdir / stale).unlink(missing_ok=True)
                seconds, cpu_seconds = timed(action)
                results[name].append(size / seconds / 1e6)
                cpu_s[name].append(cpu_seconds / (size / 1024**3))
                print(f"run {run_number + 1} {name:18s} {size / seconds / 1e6:8.1f} MB/s "
                      f"{cpu_s[name][-1]:6.2f} client CPU s/GiB", flush=True)  # fmt: skip
                if name == "download oss2":
                    assert file_crc(workdir / "oss2-down.bin") == source_crc, "oss2 download"
                if name == "upload oss2":
                    crc = bucket.head_object("oss2-up").server_crc
                    assert int(crc) == source_crc, "oss2 upload"
                if name == "download ossmount":  # checked by download_file; double-check
                    assert file_crc(workdir / "ossmount-down.bin") == source_crc

        print()
        print(
            f"object {args.size_mib} MiB, part size {args.part_size_mib} MiB, {args.threads} "
            f"parallel parts, median of {args.runs} runs (MB/s = 10^6 B/s)"
        )
        print(
            "| transfer | ossmount MB/s | oss2 MB/s | ossmount / oss2 "
            "| client CPU s/GiB ossmount | oss2 |"
        )
        print("|---|---|---|---|---|---|")
        for kind in ("upload", "download"):
            ours = statistics.median(results[f"{kind} ossmount"])
            theirs = statistics.median(results[f"{kind} oss2"])
            our_cpu = statistics.median(cpu_s[f"{kind} ossmount"])
            their_cpu = statistics.median(cpu_s[f"{kind} oss2"])
            print(
                f"| resumable {kind} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} "
                f"| {our_cpu:.2f} | {their_cpu:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
