#!/usr/bin/env python3
"""Per-file cost of the mount: daemon CPU per create, cold read, chmod and unlink, and how it
grows with the directory.

Usage: .venv/bin/python scripts/bench_per_file.py [--files 1000] [--big-dir 100000]
                                                  [--latency-ms 5] [--only NAME] [-o OPTION]
       (the mount's per-file path: --only ops; the 4 KiB loop: --only small; small files
       after `ls -l`: --latency-ms 5 --only lscat)

The bundled server runs as a child process of this script (so that its CPU is its own), and
answers "stats" on its stdin with the requests it served since the last "stats". Each case
runs on a fresh foreground mount and reports, per file: the mount daemon's CPU (from
/proc/PID/stat), the server's CPU per request, and requests per file by operation.

  ops       --files files, one operation each, in a fresh directory: create (`echo > f`:
            open O_CREAT|O_TRUNC, write a byte, close), cold read (after a remount: open,
            read, close), chmod, unlink.
  small     --files files of 4 KiB: the loop open, write, close for each (files/s), then
            after dropping the kernel's page cache open, read, close for each (files/s).
  growth    creates into a directory made by the mount (files 1 to --files) against creates
            into a directory that already holds --big-dir objects (seeded straight into the
            server's index), listed once first on both sides; with readdir_optimize, so that
            listing the big directory costs no HEAD per object.
  cp        (only with --latency-ms > 0) `cp -r` of --files files of 4 KiB into the mount:
            seconds and requests per file.
  lscat     --files files of 4 KiB (written through a first mount); on a fresh mount `ls -l`
            of their directory, then `cat` of every file (the shell's glob, one `cat`):
            requests per file of each step (exact metadata HEADs, or GETs of small files,
            and the reads' GETs after them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchlib import AK, BUCKET, CREDENTIALS, REGION, SK, foreground_mount, process_cpu_s

from ossmount.server import ServerConfig, run_server_in_thread
from ossmount.server.store import ObjectRecord, Store

EMPTY_ETAG = '"D41D8CD98F00B204E9800998ECF8427E"'


def serve(root: Path, latency_ms: float) -> None:
    """The child process: the bundled server in a thread; "stats" on stdin prints (and resets)
    the request counts as one JSON line."""
    config = ServerConfig(
        root=root, credentials=[CREDENTIALS], buckets=[BUCKET], region=REGION, latency_ms=latency_ms
    )
    with run_server_in_thread(config) as server:
        print(server.endpoint, flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(dict(server.stats.by_operation)), flush=True)
                server.stats.reset()


@dataclass
class Server:
    process: subprocess.Popen[str]
    endpoint: str

    def stats(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        counts: dict[str, int] = json.loads(self.process.stdout.readline())
        return counts

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)


@contextmanager
def server_child(root: Path, latency_ms: float) -> Iterator[Server]:
    command = [sys.executable, __file__, "--serve", str(root), "--latency-ms", str(latency_ms)]
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


@dataclass
class Measured:
    wall_s: float
    mount_cpu_s: float
    server_cpu_s: float
    requests: dict[str, int]


def measure(server: Server, mount_pid: int, work: Callable[[], None]) -> Measured:
    server.stats()
    mount_before, server_before = process_cpu_s(mount_pid), server.cpu_s()
    started = time.perf_counter()
    work()
    wall = time.perf_counter() - started
    return Measured(
        wall,
        process_cpu_s(mount_pid) - mount_before,
        server.cpu_s() - server_before,
        server.stats(),
    )


def report(name: str, files: int, result: Measured) -> None:
    total = sum(result.requests.values())
    per_request = result.server_cpu_s / total * 1000 if total else 0.0
    ops = " ".join(f"{op}={n / files:.2f}" for op, n in sorted(result.requests.items()))
    print(
        f"{name:<34} {files / result.wall_s:8.0f} files/s  mount CPU "
        f"{result.mount_cpu_s / files * 1000:5.2f} ms/file  server CPU {per_request:5.2f} "
        f"ms/request  requests/file: {ops or '-'}",
        flush=True,
    )


@contextmanager
def mounted(server: Server, state: Path, options: list[str]) -> Iterator[tuple[Path, int]]:
    with tempfile.TemporaryDirectory(prefix="bench-mnt-") as directory:
        mountpoint = Path(directory)
        args = [arg for option in [f"state_dir={state}", *options] for arg in ("-o", option)]
        with foreground_mount(server.endpoint, mountpoint, "--region", REGION, *args) as process:
            yield mountpoint, process.pid


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def each(action: Callable[[Path], object], paths: list[Path]) -> Callable[[], None]:
    """Work that applies ``action`` to every path, in order."""

    def work() -> None:
        for path in paths:
            action(path)

    return work


def bench_ops(server: Server, state: Path, files: int, options: list[str]) -> None:
    names = [f"f{i:06d}" for i in range(files)]
    with mounted(server, state, options) as (root, pid):
        (root / "ops").mkdir()
        paths = [root / "ops" / name for name in names]
        create = each(lambda path: write_file(path, b"\n"), paths)
        report("create (echo > f)", files, measure(server, pid, create))
    with mounted(server, state, options) as (root, pid):
        paths = [root / "ops" / name for name in names]
        report("cold read (after a remount)", files, measure(server, pid, each(read_file, paths)))
        chmod = each(lambda path: os.chmod(path, 0o600), paths)
        report("chmod", files, measure(server, pid, chmod))
        report("unlink", files, measure(server, pid, each(os.unlink, paths)))


def bench_small(server: Server, state: Path, files: int, options: list[str]) -> None:
    data = os.urandom(4096)
    with mounted(server, state, options) as (root, pid):
        (root / "small").mkdir()
        paths = [root / "small" / f"s{i:06d}" for i in range(files)]
        create = each(lambda path: write_file(path, data), paths)
        report("4 KiB files: create", files, measure(server, pid, create))
        drop_page_cache()
        read = each(read_file, paths)
        report("4 KiB files: read (page cache dropped)", files, measure(server, pid, read))


def bench_lscat(server: Server, state: Path, files: int, options: list[str]) -> None:
    data = os.urandom(4096)
    with mounted(server, state, options) as (root, _):
        (root / "lscat").mkdir()
        for i in range(files):
            write_file(root / "lscat" / f"s{i:06d}", data)
    with mounted(server, state, options) as (root, pid):
        directory = root / "lscat"

        def ls_l() -> None:
            subprocess.run(["ls", "-l", str(directory)], check=True, stdout=subprocess.DEVNULL)

        def cat_all() -> None:
            subprocess.run(
                f"cat {directory}/* | wc -c", shell=True, check=True, stdout=subprocess.DEVNULL
            )

        report("ls -l of 4 KiB files (fresh mount)", files, measure(server, pid, ls_l))
        report("cat * after ls -l", files, measure(server, pid, cat_all))


def seed_directory(root: Path, prefix: str, objects: int) -> None:
    store = Store(root)
    try:
        store.create_bucket(BUCKET)
        now = time.time()
        store.commit_objects(
            ObjectRecord(BUCKET, f"{prefix}/o{i:07d}", None, 0, EMPTY_ETAG, 0, now, "Normal")
            for i in range(objects)
        )
    finally:
        store.close()


def bench_growth(server: Server, state: Path, files: int, big: int, options: list[str]) -> None:
    growth_options = ["readdir_optimize", f"list_cache_entries={4 * big}", *options]
    cases = ((f"files 1-{files:,}", "fresh"), (f"files {big + 1:,}-{big + files:,}", "big"))
    for label, name in cases:
        with mounted(server, state, growth_options) as (root, pid):
            directory = root / name
            if name == "fresh":
                directory.mkdir()
            listed = len(os.listdir(directory))
            paths = [directory / f"new{i:06d}" for i in range(files)]
            create = each(lambda path: write_file(path, b"\n"), paths)
            report(f"create into a dir of {listed:,}: {label}", files, measure(server, pid, create))


def bench_cp(server: Server, state: Path, files: int, options: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-src-") as source:
        tree = Path(source) / "tree"
        tree.mkdir()
        for i in range(files):
            (tree / f"c{i:06d}").write_bytes(os.urandom(4096))
        with mounted(server, state, options) as (root, pid):

            def copy() -> None:
                subprocess.run(["cp", "-r", str(tree), str(root / "cp")], check=True)

            report("cp -r of 4 KiB files", files, measure(server, pid, copy))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--big-dir", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--only", choices=["ops", "small", "growth", "cp", "lscat"])
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.latency_ms)
        return 0
    os.environ.update(OSS_ACCESS_KEY_ID=AK, OSS_ACCESS_KEY_SECRET=SK)
    with tempfile.TemporaryDirectory(prefix="bench-srv-") as directory:
        root, state = Path(directory) / "server", Path(directory) / "state"
        root.mkdir()
        if args.only in (None, "growth"):
            seed_directory(root, "big", args.big_dir)
        with server_child(root, args.latency_ms) as server:
            print(f"latency {args.latency_ms} ms; mount options {args.options or '-'}", flush=True)
            if args.only in (None, "ops"):
                bench_ops(server, state, args.files, args.options)
            if args.only in (None, "small"):
                bench_small(server, state, args.files, args.options)
            if args.only in (None, "growth"):
                bench_growth(server, state, args.files, args.big_dir, args.options)
            if args.only == "cp" or (args.only is None and args.latency_ms > 0):
                bench_cp(server, state, args.files, args.options)
            if args.only in (None, "lscat"):
                bench_lscat(server, state, args.files, args.options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
