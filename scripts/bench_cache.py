#!/usr/bin/env python3
"""Data cache and random-read benchmark (issue 11): fio, grep, dd and unzip through the mount,
with and without the persistent data cache (-o use_cache=DIR,cache_size=BYTES).

Usage: .venv/bin/python scripts/bench_cache.py [--cases 1,2,3,4,5,6,7] [--quick]
           [--size-mib 1024] [--runtime 20] [--latency-ms 5] [--seq-size-mib 2048]
           [--seq-latency-ms 20] [--files 1000] [--zip-mib 200] [--bound-mib 256] [-o OPTION]

Needs fio (Debian package `fio`), unzip and root (to drop the page cache). The bundled server
runs as a child process of this script (its CPU is its own) and answers on its stdin: "stats"
prints (and resets) the requests it served by operation and the bytes of their answers'
bodies (the server's Stats: Content-Length of each successful non-HEAD answer), "latency MS"
sets its injected latency. Every case runs on fresh foreground mounts; each row gives the wall
time, IOPS or MB/s, the requests by operation, those body bytes, the CPU seconds (utime +
stime) of the mount daemon and the server (from /proc/PID/stat) and of the tool (fio, dd,
grep, unzip: the reaped children of this script), and the mount daemon's peak RSS (VmHWM).

  1  fio randread, 4 KiB, QD1 (psync, iodepth 1), buffered, --runtime s (time based) over a
     --size-mib object, cold (fresh mount, no data cache): IOPS, GETs and bytes sent per read.
  2  the same job with the data cache: the object read once whole (dd), remount, then fio
     through the mount (target: no GET), against the same fio job run on the cache's local
     data file (the largest file under the cache directory), cold (page cache dropped) and
     warm (the file read whole first), and the mount with that file warm too.
  3  case 1 with the server at --latency-ms, cold.
  4  grep -r over --files files of 4 KiB at --latency-ms: without the cache (two passes, a
     remount between), then with it: first pass, remount, second pass (target: no GET).
  5  dd bs=1M of a --seq-size-mib object at --seq-latency-ms: without the cache, then with it:
     first read, remount, page cache dropped, re-read; the same dd on the cache's local file
     (page cache dropped): what the disk gives; remount, the cache's local file read whole
     first, re-read (target: at least 3x the first read).
  6  `unzip -l` of a --zip-mib zip of many members: requests and bytes sent, without the cache,
     with it (cold cache), and with it after a remount.
  7  cache_size=--bound-mib and the --size-mib object read whole (dd) by 1, then by 4
     concurrent readers: the cache directory's size (du, allocated bytes) sampled during the
     read and after it, against the bound plus 1 MiB per concurrent reader.

Until the mount knows these options (`ossmount: unknown mount option`), or when a full read
leaves no file in the cache directory, the cache rows say "not available" and the no-cache
rows still run. --quick: 256 MiB objects, 5 s fio runs, 300 small files, a 64 MiB zip and a
64 MiB bound: about a minute and a half of work.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from benchlib import (
    AK,
    BUCKET,
    CREDENTIALS,
    MIB,
    REGION,
    SK,
    foreground_mount,
    make_file,
    peak_rss_kib,
    process_cpu_s,
)

from ossmount.oss.client import OssClient
from ossmount.server import ServerConfig, run_server_in_thread

RANDOM_KEY = "rand.bin"
SEQUENTIAL_KEY = "seq.bin"
ZIP_KEY = "big.zip"
SMALL_PREFIX = "tree"
ALL_CASES = (1, 2, 3, 4, 5, 6, 7)
T = TypeVar("T")


# --- pure helpers (tests/unit/test_bench_cache.py) ---


def parse_cases(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5] (sorted, no repeats); a clear error for anything else."""
    cases: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item.isdigit() or int(item) not in ALL_CASES:
            raise argparse.ArgumentTypeError(
                f"--cases: {item!r} is not a case number (choose among {ALL_CASES})"
            )
        cases.add(int(item))
    return sorted(cases)


@dataclass(frozen=True)
class FioRead:
    """The read side of one fio job, from its JSON output."""

    ios: int
    io_bytes: int
    iops: float
    runtime_s: float
    mean_latency_us: float
    p99_latency_us: float | None


def parse_fio_json(text: str) -> FioRead:
    """The first job's read figures from ``fio --output-format=json`` output. fio may print
    warnings ("fio: ...") on stdout before the JSON document: they are skipped."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON document in fio's output: {text[:200]!r}")
    document: dict[str, Any] = json.JSONDecoder().raw_decode(text[start:])[0]
    jobs = document.get("jobs") or []
    if not jobs:
        raise ValueError("fio's JSON output has no job")
    job = jobs[0]
    if job.get("error"):
        raise ValueError(f"fio job {job.get('jobname')!r} failed with error {job['error']}")
    read = job["read"]
    latency = read.get("clat_ns") or read["lat_ns"]
    percentiles: dict[str, float] = latency.get("percentile") or {}
    p99 = percentiles.get("99.000000")
    return FioRead(
        ios=int(read["total_ios"]),
        io_bytes=int(read["io_bytes"]),
        iops=float(read["iops"]),
        runtime_s=int(read["runtime"]) / 1000,
        mean_latency_us=float(latency["mean"]) / 1000,
        p99_latency_us=p99 / 1000 if p99 is not None else None,
    )


def fio_randread_command(path: Path, size: int, runtime_s: float, *, invalidate: bool) -> list[str]:
    """The issue's job: 4 KiB random reads, QD1 (psync), buffered, time based over ``size``
    bytes of ``path``; fio's seeded random sequence (randrepeat), so every run reads the same
    offsets. ``invalidate``: fio drops the file's page cache before the job (its default)."""
    return [
        "fio", "--name=randread", f"--filename={path}", "--rw=randread", "--bs=4k",
        "--ioengine=psync", "--iodepth=1", "--direct=0", f"--size={size}",
        f"--runtime={runtime_s:g}", "--time_based", "--readonly", "--randrepeat=1",
        f"--invalidate={int(invalidate)}", "--output-format=json",
    ]  # fmt: skip


def bound_allowance(bound: int, concurrent_readers: int, block_size: int = MIB) -> int:
    """The most the cache directory may hold: its bound plus one block per concurrent reader."""
    return bound + concurrent_readers * block_size


def format_requests(requests: dict[str, int]) -> str:
    """{"HeadObject": 1, "GetObject": 12} -> "GetObject=12 HeadObject=1"; "-" for none."""
    return " ".join(f"{op}={n}" for op, n in sorted(requests.items())) or "-"


def largest_file(directory: Path) -> Path | None:
    """The largest regular file below ``directory`` (by size), or None."""
    best: tuple[int, Path] | None = None
    for parent, _, names in os.walk(directory):
        for name in names:
            path = Path(parent) / name
            try:
                size = path.lstat().st_size
            except FileNotFoundError:
                continue
            if path.is_file() and not path.is_symlink() and (best is None or size > best[0]):
                best = (size, path)
    return best[1] if best else None


def allocated_by_entry(directory: Path) -> dict[str, int]:
    """Bytes allocated to each file and directory below ``directory`` (by its path relative to
    it, "." for ``directory`` itself), as `du` counts them: blocks of 512 bytes, each inode once."""
    allocated = {".": os.lstat(directory).st_blocks * 512}
    seen: set[tuple[int, int]] = set()
    for parent, dirs, names in os.walk(directory):
        for name in [*dirs, *names]:
            path = os.path.join(parent, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                allocated[os.path.relpath(path, directory)] = info.st_blocks * 512
    return allocated


def allocated_bytes(directory: Path) -> int:
    """Bytes allocated below ``directory`` and to it, as `du -sB1` counts them."""
    return sum(allocated_by_entry(directory).values())


SQLITE_SUFFIXES = (".sqlite", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal", ".db", ".db-wal")


def without_sqlite(allocated: dict[str, int]) -> int:
    """The bytes of :func:`allocated_by_entry` outside SQLite files (an index and its WAL)."""
    return sum(size for name, size in allocated.items() if not name.endswith(SQLITE_SUFFIXES))


def largest_entries(allocated: dict[str, int], count: int = 3) -> str:
    """The ``count`` largest entries of :func:`allocated_by_entry`, e.g. "data/01/1 64.0 MiB"."""
    ranked = sorted(allocated.items(), key=lambda item: (-item[1], item[0]))[:count]
    return ", ".join(f"{name} {size / MIB:.1f} MiB" for name, size in ranked)


# --- the server child ---


def serve(root: Path) -> None:
    """The child process: the bundled server in a thread. Commands on stdin: "stats" prints
    (and resets) the requests and answer body bytes by operation as one JSON line; "latency
    MS" sets the latency."""
    config = ServerConfig(root=root, credentials=[CREDENTIALS], buckets=[BUCKET], region=REGION)
    with run_server_in_thread(config) as server:
        print(server.endpoint, flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "stats":
                counts = {
                    "requests": server.stats.by_operation,
                    "body_bytes": server.stats.body_bytes(),
                }
                print(json.dumps(counts), flush=True)
                server.stats.reset()
            elif command == "latency":
                server.faults.latency_ms = float(argument)
                print("ok", flush=True)


@dataclass
class Server:
    process: subprocess.Popen[str]
    endpoint: str

    def _ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline()

    def stats(self) -> tuple[dict[str, int], int]:
        """The requests served since the last call, by operation, and their body bytes."""
        counts = json.loads(self._ask("stats"))
        return dict(counts["requests"]), int(counts["body_bytes"])

    def set_latency(self, latency_ms: float) -> None:
        if self._ask(f"latency {latency_ms}").strip() != "ok":
            raise RuntimeError("the server did not take the latency")

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)


@contextmanager
def server_child(root: Path) -> Iterator[Server]:
    command = [sys.executable, __file__, "--serve", str(root)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().strip()
        if not endpoint.startswith("http"):
            raise RuntimeError(f"the server did not start: {endpoint!r}")
        yield Server(process, endpoint)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def latency(server: Server, latency_ms: float) -> Iterator[None]:
    server.set_latency(latency_ms)
    try:
        yield
    finally:
        server.set_latency(0)


# --- mounts ---


class CacheUnavailableError(Exception):
    """The mount does not know the data cache options, or its cache stays empty."""


@dataclass(frozen=True)
class CacheSpec:
    directory: Path
    size_bytes: int

    def options(self) -> list[str]:
        return [f"use_cache={self.directory}", f"cache_size={self.size_bytes // MIB}M"]


@dataclass
class Mount:
    path: Path
    pid: int


@dataclass
class Bench:
    """What every case needs: the server, a scratch directory, the options of the run."""

    server: Server
    work: Path
    args: argparse.Namespace
    rows: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Why the data cache cannot be used (the mount rejected its options), once known.
    cache_unavailable: str | None = None

    @contextmanager
    def mounted(self, cache: CacheSpec | None = None) -> Iterator[Mount]:
        """A fresh foreground mount (no page cache, cold metadata caches), with the data cache
        in ``cache`` if given; raises CacheUnavailableError if the mount rejects its options
        (then at once, without mounting, for every later mount with the cache)."""
        if cache is not None and self.cache_unavailable is not None:
            raise CacheUnavailableError(self.cache_unavailable)
        state = self.work / "state"
        options = [f"state_dir={state}", *(cache.options() if cache else []), *self.args.options]
        arguments = [arg for option in options for arg in ("-o", option)]
        log = self.work / "mount.log"
        log.touch()
        log_start = log.stat().st_size
        with (
            tempfile.TemporaryDirectory(prefix="bench-mnt-", dir=self.work) as directory,
            ExitStack() as stack,
        ):
            try:
                process = stack.enter_context(
                    foreground_mount(
                        self.server.endpoint,
                        Path(directory),
                        "--region",
                        REGION,
                        *arguments,
                        log=log,
                    )
                )
            except RuntimeError:
                with log.open("rb") as text:
                    text.seek(log_start)
                    output = text.read().decode(errors="replace")
                for line in output.splitlines():
                    if "unknown mount option" in line and cache is not None:
                        self.cache_unavailable = line.strip().replace(str(cache.directory), "DIR")
                        raise CacheUnavailableError(self.cache_unavailable) from None
                raise
            yield Mount(Path(directory), process.pid)


@dataclass
class Usage:
    """One measured piece of work."""

    wall_s: float
    requests: dict[str, int]
    body_bytes: int
    server_cpu_s: float
    tool_cpu_s: float
    mount_cpu_s: float | None
    mount_peak_rss_kib: int | None

    def gets(self) -> int:
        return self.requests.get("GetObject", 0)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: Server, mount: Mount | None, work: Callable[[], T]) -> tuple[T, Usage]:
    """Run ``work`` and what it cost: requests and bytes at the server, CPU of the mount, the
    server and the tools ``work`` ran (children of this process, reaped by then)."""
    server.stats()
    mount_before = process_cpu_s(mount.pid) if mount else 0.0
    server_before, tools_before = server.cpu_s(), children_cpu_s()
    started = time.perf_counter()
    result = work()
    wall = time.perf_counter() - started
    requests, body_bytes = server.stats()
    return result, Usage(
        wall_s=wall,
        requests=requests,
        body_bytes=body_bytes,
        server_cpu_s=server.cpu_s() - server_before,
        tool_cpu_s=children_cpu_s() - tools_before,
        mount_cpu_s=process_cpu_s(mount.pid) - mount_before if mount else None,
        mount_peak_rss_kib=peak_rss_kib(mount.pid) if mount else None,
    )


TABLE_HEADER = (
    "| case | run | wall s | result | requests | body bytes sent by the server "
    "| CPU-s mount | CPU-s server | CPU-s tool | mount peak RSS |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(case: int, run: str, result: str, usage: Usage, tool: str) -> str:
    mount_cpu = f"{usage.mount_cpu_s:.2f}" if usage.mount_cpu_s is not None else ""
    rss = f"{usage.mount_peak_rss_kib / 1024:.0f} MiB" if usage.mount_peak_rss_kib else ""
    return (
        f"| {case} | {run} | {usage.wall_s:.2f} | {result} | {format_requests(usage.requests)} "
        f"| {usage.body_bytes / MIB:.1f} MiB | {mount_cpu} | {usage.server_cpu_s:.2f} "
        f"| {usage.tool_cpu_s:.2f} ({tool}) | {rss} |"
    )


def emit(bench: Bench, row: str) -> None:
    bench.rows.append(row)
    print(row, flush=True)


def note(bench: Bench, text: str) -> None:
    bench.notes.append(text)
    print(f"  - {text}", flush=True)


def not_available(bench: Bench, case: int, run: str, reason: str) -> None:
    emit(bench, f"| {case} | {run} | | not available: {reason} | | | | | | |")


# --- the tools ---


def drop_page_cache(path: Path | None = None) -> str:
    """Drop the page cache (all of it, or else ``path``'s); -> how it was done."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        if path is None:
            raise
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return f"posix_fadvise(DONTNEED) of {path.name} (drop_caches not permitted)"
    return "echo 3 > /proc/sys/vm/drop_caches"


def read_whole(path: Path) -> None:
    """Read ``path`` into the page cache, in this process (not a measured tool)."""
    with path.open("rb", buffering=0) as source:
        while source.read(MIB):
            pass


def run_fio(path: Path, size: int, runtime_s: float, *, invalidate: bool) -> FioRead:
    command = fio_randread_command(path, size, runtime_s, invalidate=invalidate)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"fio failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse_fio_json(result.stdout)


def run_dd(path: Path, *, skip_mib: int = 0, count_mib: int | None = None) -> None:
    command = ["dd", f"if={path}", "of=/dev/null", "bs=1M", f"skip={skip_mib}"]
    if count_mib is not None:
        command.append(f"count={count_mib}")
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)


def mb_per_s(size: int, usage: Usage) -> str:
    return f"{size / usage.wall_s / 1e6:.0f} MB/s"


def fio_result(read: FioRead) -> str:
    p99 = f", p99 {read.p99_latency_us:.0f} us" if read.p99_latency_us is not None else ""
    return f"{read.iops:,.0f} IOPS ({read.ios:,} reads, mean {read.mean_latency_us:.0f} us{p99})"


# --- set-up: the objects ---


def small_file_text(rng: random.Random) -> bytes:
    """4 KiB of lowercase words and newlines (text, so that grep reads it as text)."""
    words = "".join(rng.choice(string.ascii_lowercase + "    \n") for _ in range(4096))
    return words.encode()


def build_zip(path: Path, size: int) -> int:
    """A zip of about ``size`` bytes: members of 64 KiB of random bytes, stored; -> members."""
    member_size = 64 * 1024
    members = max(1, size // member_size)
    block = os.urandom(member_size + members)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for index in range(members):
            archive.writestr(
                f"dir{index // 100:03d}/member{index:05d}.bin", block[index:][:member_size]
            )
    return members


async def upload(endpoint: str, files: dict[str, Path], blobs: dict[str, bytes]) -> None:
    async with OssClient(endpoint, CREDENTIALS, region=REGION, max_connections=16) as client:
        for key, path in files.items():
            await client.put_object(BUCKET, key, path)
        limiter = trio.CapacityLimiter(16)

        async def put(key: str, data: bytes) -> None:
            async with limiter:
                await client.put_object(BUCKET, key, data)

        async with trio.open_nursery() as nursery:
            for key, data in blobs.items():
                nursery.start_soon(put, key, data)


def prepare_objects(bench: Bench, cases: list[int]) -> None:
    args = bench.args
    files: dict[str, Path] = {}
    blobs: dict[str, bytes] = {}
    staging = bench.work / "staging"
    staging.mkdir()
    if {1, 2, 3, 7} & set(cases):
        files[RANDOM_KEY] = staging / RANDOM_KEY
        make_file(files[RANDOM_KEY], args.size_mib * MIB)
    if 5 in cases:
        files[SEQUENTIAL_KEY] = staging / SEQUENTIAL_KEY
        make_file(files[SEQUENTIAL_KEY], args.seq_size_mib * MIB)
    if 6 in cases:
        files[ZIP_KEY] = staging / ZIP_KEY
        members = build_zip(files[ZIP_KEY], args.zip_mib * MIB)
        print(f"zip: {members:,} members, {files[ZIP_KEY].stat().st_size / MIB:.0f} MiB")
    if 4 in cases:
        rng = random.Random(11)
        blobs = {f"{SMALL_PREFIX}/d{i // 100:02d}/f{i:05d}.txt": small_file_text(rng)
                 for i in range(args.files)}  # fmt: skip
    started = time.perf_counter()
    trio.run(upload, bench.server.endpoint, files, blobs)
    for path in files.values():
        path.unlink()
    print(f"uploaded {len(files) + len(blobs):,} objects in {time.perf_counter() - started:.1f} s")


def new_cache(bench: Bench, name: str, size_bytes: int) -> CacheSpec:
    directory = bench.work / "caches" / name
    directory.mkdir(parents=True)
    return CacheSpec(directory, size_bytes)


def require_cache_filled(cache: CacheSpec) -> Path:
    """The cache's local data file after a full read; CacheUnavailableError if there is none."""
    data_file = largest_file(cache.directory)
    if data_file is None or data_file.stat().st_size == 0:
        raise CacheUnavailableError("the cache directory holds no data after a full read")
    return data_file


# --- the cases ---


def fio_through_mount(bench: Bench, cache: CacheSpec | None, case: int, run: str) -> FioRead:
    size, runtime = bench.args.size_mib * MIB, bench.args.runtime
    with bench.mounted(cache) as mount:
        fio, usage = measure(
            bench.server,
            mount,
            lambda: run_fio(mount.path / RANDOM_KEY, size, runtime, invalidate=True),
        )
    emit(bench, table_row(case, run, fio_result(fio), usage, "fio"))
    mount_cpu = usage.mount_cpu_s or 0.0
    note(
        bench,
        f"case {case}, {run}: {usage.gets() / fio.ios:.3f} GETs per read, "
        f"{usage.body_bytes / fio.ios / 1024:.1f} KiB of bodies sent by the server per read, "
        f"mount CPU {mount_cpu:.2f} s = {mount_cpu / fio.ios * 1e6:.0f} us per read",
    )
    return fio


def case_cold_randread(bench: Bench) -> None:
    fio_through_mount(bench, None, 1, "fio randread 4 KiB QD1, cold, no cache")


def case_cold_randread_latency(bench: Bench) -> None:
    latency_ms = bench.args.latency_ms
    with latency(bench.server, latency_ms):
        fio_through_mount(
            bench, None, 3, f"fio randread 4 KiB QD1, cold, no cache, {latency_ms:g} ms"
        )


def case_cached_randread(bench: Bench) -> None:
    size, runtime = bench.args.size_mib * MIB, bench.args.runtime
    cache = new_cache(bench, "case2", 2 * size + 64 * MIB)
    try:
        with bench.mounted(cache) as mount:
            _, usage = measure(bench.server, mount, lambda: run_dd(mount.path / RANDOM_KEY))
        emit(
            bench,
            table_row(
                2, "fill: dd bs=1M through the mount, cache on", mb_per_s(size, usage), usage, "dd"
            ),
        )
        data_file = require_cache_filled(cache)
    except CacheUnavailableError as exc:
        not_available(bench, 2, "fio randread with the data cache", str(exc))
        return
    note(
        bench,
        f"case 2: the cache's local data file: {data_file} ({data_file.stat().st_size:,} bytes)",
    )
    how = drop_page_cache(data_file)
    mount_cold = fio_through_mount(
        bench, cache, 2, "fio through the mount, cache on, after a remount, cache file cold"
    )
    read_whole(data_file)
    mount_warm = fio_through_mount(
        bench, cache, 2, "fio through the mount, cache on, after a remount, cache file warm"
    )
    local_size = min(size, data_file.stat().st_size // 4096 * 4096)
    drop_page_cache(data_file)
    local_cold, usage = measure(
        bench.server, None, lambda: run_fio(data_file, local_size, runtime, invalidate=True)
    )
    emit(
        bench,
        table_row(2, "fio on the cache's local file, cold", fio_result(local_cold), usage, "fio"),
    )
    read_whole(data_file)
    local_warm, usage = measure(
        bench.server, None, lambda: run_fio(data_file, local_size, runtime, invalidate=False)
    )
    emit(
        bench,
        table_row(2, "fio on the cache's local file, warm", fio_result(local_warm), usage, "fio"),
    )
    note(
        bench,
        f"case 2: cold = page cache dropped first ({how}; fio's invalidate=1 too); warm = the "
        f"local file read whole first, fio invalidate=0. The mount's own page cache is empty "
        f"in both mount runs (a fresh mount).",
    )
    note(
        bench,
        f"case 2: mount/local, both cold: {mount_cold.iops / local_cold.iops:.2f} "
        f"(target >= 0.3); both warm: {mount_warm.iops / local_warm.iops:.3f}",
    )


def case_grep(bench: Bench) -> None:
    files, latency_ms = bench.args.files, bench.args.latency_ms
    command = ["grep", "-r", "-c", "needle-not-there", SMALL_PREFIX]

    def grep_pass(mount: Mount) -> None:
        # grep -c exits 1 when nothing matched: that is the expected outcome.
        result = subprocess.run(
            command, cwd=mount.path, capture_output=True, text=True, check=False
        )
        if result.returncode not in (0, 1) or len(result.stdout.splitlines()) != files:
            raise RuntimeError(f"grep -r failed ({result.returncode}): {result.stderr[:500]}")

    def two_passes(cache: CacheSpec | None, label: str) -> None:
        for index, run in enumerate(("first pass", "second pass, after a remount")):
            with bench.mounted(cache) as mount, latency(bench.server, latency_ms):
                _, usage = measure(bench.server, mount, lambda: grep_pass(mount))
            if index == 0 and cache is not None:
                require_cache_filled(cache)
            emit(
                bench,
                table_row(
                    4,
                    f"grep -r, {files:,} x 4 KiB, {latency_ms:g} ms, {label}: {run}",
                    f"{files / usage.wall_s:.0f} files/s",
                    usage,
                    "grep",
                ),
            )

    two_passes(None, "no cache")
    try:
        two_passes(new_cache(bench, "case4", 256 * MIB), "cache on")
    except CacheUnavailableError as exc:
        not_available(bench, 4, "grep -r with the data cache", str(exc))


def case_sequential(bench: Bench) -> None:
    size, latency_ms = bench.args.seq_size_mib * MIB, bench.args.seq_latency_ms
    label = f"dd bs=1M of {bench.args.seq_size_mib} MiB, {latency_ms:g} ms"

    def read(cache: CacheSpec | None, run: str) -> Usage:
        with bench.mounted(cache) as mount, latency(bench.server, latency_ms):
            _, usage = measure(bench.server, mount, lambda: run_dd(mount.path / SEQUENTIAL_KEY))
        emit(bench, table_row(5, f"{label}, {run}", mb_per_s(size, usage), usage, "dd"))
        return usage

    read(None, "no cache")
    cache = new_cache(bench, "case5", size + 256 * MIB)
    try:
        first = read(cache, "cache on, first read")
        data_file = require_cache_filled(cache)
    except CacheUnavailableError as exc:
        not_available(bench, 5, f"{label} with the data cache", str(exc))
        return
    how = drop_page_cache(data_file)
    cold = read(cache, "cache on, re-read after a remount, cache file cold")
    drop_page_cache(data_file)
    _, local = measure(bench.server, None, lambda: run_dd(data_file))
    emit(
        bench,
        table_row(
            5, "dd bs=1M of the cache's local file, cold", mb_per_s(size, local), local, "dd"
        ),
    )
    read_whole(data_file)
    warm = read(cache, "cache on, re-read after a remount, cache file warm")
    note(
        bench,
        f"case 5: re-read/first read speed: {first.wall_s / cold.wall_s:.1f}x with the cache's "
        f"local file cold (its page cache dropped first: {how}), "
        f"{first.wall_s / warm.wall_s:.1f}x with it warm (read whole first) (target >= 3x)",
    )


def case_unzip(bench: Bench) -> None:
    def listing(cache: CacheSpec | None, run: str) -> None:
        with bench.mounted(cache) as mount:

            def unzip_list() -> int:
                result = subprocess.run(
                    ["unzip", "-l", str(mount.path / ZIP_KEY)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                return len(result.stdout.splitlines())

            lines, usage = measure(bench.server, mount, unzip_list)
        emit(
            bench,
            table_row(
                6,
                f"unzip -l of {bench.args.zip_mib} MiB, {run}",
                f"{lines:,} lines",
                usage,
                "unzip",
            ),
        )

    listing(None, "no cache")
    cache = new_cache(bench, "case6", 2 * bench.args.zip_mib * MIB)
    try:
        listing(cache, "cache on, cold cache")
        require_cache_filled(cache)
        listing(cache, "cache on, after a remount")
    except CacheUnavailableError as exc:
        not_available(bench, 6, "unzip -l with the data cache", str(exc))


class DirectorySizeSampler:
    """Samples the bytes allocated below ``directory`` every ``interval_s`` in a thread; keeps
    the peak and what it was made of."""

    def __init__(self, directory: Path, interval_s: float = 0.05) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self.peak = 0
        self.peak_entries: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        entries = allocated_by_entry(self.directory)
        if sum(entries.values()) > self.peak:
            self.peak, self.peak_entries = sum(entries.values()), entries

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> DirectorySizeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def du_bytes(directory: Path) -> int:
    output = subprocess.run(
        ["du", "-sB1", str(directory)], capture_output=True, text=True, check=True
    )
    return int(output.stdout.split()[0])


def read_in_parts(path: Path, readers: int, part_mib: int) -> None:
    """``readers`` concurrent `dd bs=1M` of ``part_mib`` each, one after the other's part."""
    processes = [
        subprocess.Popen(
            [
                "dd",
                f"if={path}",
                "of=/dev/null",
                "bs=1M",
                f"skip={i * part_mib}",
                f"count={part_mib}",
            ],
            stderr=subprocess.DEVNULL,
        )
        for i in range(readers)
    ]
    if any(process.wait() != 0 for process in processes):
        raise RuntimeError("a dd reader failed")


def case_bound(bench: Bench) -> None:
    size_mib, bound = bench.args.size_mib, bench.args.bound_mib * MIB
    with bench.mounted() as mount:
        _, usage = measure(
            bench.server,
            mount,
            functools.partial(read_in_parts, mount.path / RANDOM_KEY, 4, size_mib // 4),
        )
    run = f"dd of {size_mib} MiB by 4 readers, no cache (the reference)"
    emit(bench, table_row(7, run, mb_per_s(size_mib // 4 * 4 * MIB, usage), usage, "dd"))
    for readers in (1, 4):
        cache = new_cache(bench, f"case7-{readers}", bound)
        share = size_mib // readers

        try:
            with bench.mounted(cache) as mount, DirectorySizeSampler(cache.directory) as sampler:
                _, usage = measure(
                    bench.server,
                    mount,
                    functools.partial(read_in_parts, mount.path / RANDOM_KEY, readers, share),
                )
            require_cache_filled(cache)
        except CacheUnavailableError as exc:
            not_available(bench, 7, f"cache_size bound, {readers} reader(s)", str(exc))
            return
        after = du_bytes(cache.directory)
        allowance = bound_allowance(bound, readers)
        emit(
            bench,
            table_row(
                7,
                f"dd of {size_mib} MiB by {readers} reader(s), cache_size={bench.args.bound_mib}M",
                mb_per_s(share * readers * MIB, usage),
                usage,
                "dd",
            ),
        )
        verdict = "within" if max(sampler.peak, after) <= allowance else "OVER"
        data_peak = without_sqlite(sampler.peak_entries)
        data_verdict = "within" if data_peak <= allowance else "OVER"
        note(
            bench,
            f"case 7, {readers} reader(s): cache dir after the read (du -sB1) {after:,} bytes, "
            f"peak while reading (sampled every 50 ms) {sampler.peak:,} bytes, largest parts "
            f"then: {largest_entries(sampler.peak_entries)}; bound {bound / MIB:.0f} MiB + "
            f"{readers} x 1 MiB = {allowance:,} bytes: {verdict}; without the SQLite files, "
            f"at that peak: {data_peak:,} bytes, {data_verdict}",
        )


CASES: dict[int, Callable[[Bench], None]] = {
    1: case_cold_randread,
    2: case_cached_randread,
    3: case_cold_randread_latency,
    4: case_grep,
    5: case_sequential,
    6: case_unzip,
    7: case_bound,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=parse_cases, default=list(ALL_CASES), help="e.g. 1,3,6")
    parser.add_argument("--quick", action="store_true", help="small sizes and 5 s fio runs")
    parser.add_argument("--size-mib", type=int, help="the fio object (default 1024)")
    parser.add_argument("--runtime", type=float, help="seconds per fio run (default 20)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="cases 3 and 4")
    parser.add_argument("--seq-size-mib", type=int, help="case 5's object (default 2048)")
    parser.add_argument("--seq-latency-ms", type=float, default=20.0, help="case 5")
    parser.add_argument("--files", type=int, help="case 4's 4 KiB files (default 1000)")
    parser.add_argument("--zip-mib", type=int, help="case 6's zip (default 200)")
    parser.add_argument("--bound-mib", type=int, help="case 7's cache_size (default 256)")
    parser.add_argument(
        "-o", dest="options", action="append", default=[], help="more mount options"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    defaults = (
        {
            "size_mib": 256,
            "runtime": 5.0,
            "seq_size_mib": 256,
            "files": 300,
            "zip_mib": 64,
            "bound_mib": 64,
        }
        if args.quick
        else {
            "size_mib": 1024,
            "runtime": 20.0,
            "seq_size_mib": 2048,
            "files": 1000,
            "zip_mib": 200,
            "bound_mib": 256,
        }
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.size_mib <= 0 or args.seq_size_mib <= 0 or args.files <= 0 or args.zip_mib <= 0:
        parser.error("sizes and counts must be positive")
    missing = [tool for tool in ("fio", "unzip", "dd", "grep", "du") if not shutil.which(tool)]
    if missing:
        parser.error(
            f"not installed: {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})"
        )
    os.environ.update(OSS_ACCESS_KEY_ID=AK, OSS_ACCESS_KEY_SECRET=SK)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as directory:
        work = Path(directory)
        (work / "server").mkdir()
        with server_child(work / "server") as server:
            bench = Bench(server, work, args)
            prepare_objects(bench, args.cases)
            print(
                f"cases {args.cases}; fio object {args.size_mib} MiB, {args.runtime:g} s runs; "
                f"mount options {args.options or '-'}; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            print(TABLE_HEADER, flush=True)
            for case in args.cases:
                CASES[case](bench)
            print()
            print(TABLE_HEADER)
            print("\n".join(bench.rows))
            print()
            print("\n".join(f"- {text}" for text in bench.notes))
            print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
