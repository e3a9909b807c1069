#!/usr/bin/env python3
"""The server's cost of object bodies: curl GETs and PUTs over http, https and the WAN cap,
parallel https GETs, and a cold read through the mount, with the server's CPU per GiB.

Usage: .venv/bin/python scripts/bench_server_bodies.py [--size-mib 256] [--runs 1]
                                                       [--compare-python PYTHON]

Each case starts the bundled server as a child process (with --compare-python, alternately
that interpreter's installed version and this checkout's; the mount is always this
checkout's), so that the server, the tool and the mount are separate processes; the CPU figures
are utime + stime from /proc (the server's, and the mount's split by thread: its trio thread and
the rest) per GiB moved. Cases:

  curl GET / PUT      one stream over http, https, and https with --latency-ms 20
                      --conn-bandwidth 100MB/s (the WAN profile of scripts/bench_https.py)
  4 x curl GET        four concurrent streams over https
  mount read          a cold `dd bs=1M` of the object through a fresh mount, over https, and
                      over https with the WAN options
Run it from a directory outside the repository when comparing (`python -m` puts the working
directory first on sys.path, which would load this checkout's package for both sides).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from benchlib import (
    BUCKET,
    CREDENTIALS,
    MIB,
    ServerProcess,
    foreground_mount,
    make_file,
    presigned_url,
    process_cpu_s,
    server_process,
)

from ossmount.oss.client import OssClient

KEY = "big.bin"
GIB = 1 << 30
WAN = ("--tls-self-signed", "--latency-ms", "20", "--conn-bandwidth", "100MB/s")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process (tid -> utime + stime)."""
    figures = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        figures[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return figures


def curl(server: ServerProcess, *args: str) -> list[str]:
    ca = ["--cacert", str(server.ca_file)] if server.ca_file is not None else []
    return ["curl", "-sS", "-f", *ca, *args]


def measure(
    label: str,
    server: ServerProcess,
    size: int,
    command: list[str],
    copies: int = 1,
    mount_pid: int = 0,
) -> None:
    """Run `copies` of `command` at once (each moving `size` bytes), then print MB/s, the
    server's CPU-s/GiB and (with a mount) the mount's."""
    size *= copies
    server_pid = server.process.pid
    server_before = process_cpu_s(server_pid)
    mount_before = thread_cpu_s(mount_pid) if mount_pid else {}
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(copies)]
    if any([process.wait() != 0 for process in processes]):
        raise RuntimeError(f"{command[0]} failed")
    seconds = time.perf_counter() - started
    gib = size / GIB
    line = (
        f"{label:34s} {size / seconds / 1e6:8.1f} MB/s  server "
        f"{(process_cpu_s(server_pid) - server_before) / gib:5.2f} CPU-s/GiB"
    )
    if mount_pid:
        after = thread_cpu_s(mount_pid)
        spent = {tid: cpu - mount_before.get(tid, 0.0) for tid, cpu in after.items()}
        main = spent.pop(mount_pid, 0.0)
        line += (
            f"  mount {(main + sum(spent.values())) / gib:5.2f} "
            f"(trio thread {main / gib:4.2f}, others {sum(spent.values()) / gib:4.2f})"
        )
    print(f"{line}  load {os.getloadavg()[0]:.1f}", flush=True)


def run_all(work: Path, source: Path, size: int, python: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="run-", dir=work))  # a fresh root for each server
    for name, options in (("http", ()), ("https", ("--tls-self-signed",)), ("WAN", WAN)):
        with server_process(work / f"root-{name}", *options, python=python) as server:
            trio.run(upload, server, source)
            get_url = presigned_url(server.endpoint, "GET", KEY)
            put_url = presigned_url(server.endpoint, "PUT", "put.bin")
            get = curl(server, "-o", "/dev/null", get_url)
            put = curl(server, "-o", "/dev/null", "-H", "Content-Type:", "-T", str(source), put_url)
            measure(f"{name}: curl GET", server, size, get)
            measure(f"{name}: curl PUT", server, size, put)
            if name == "https":
                measure("https: 4 x curl GET", server, size, get, copies=4)
            if name != "http":
                mountpoint = work / "mnt"
                mountpoint.mkdir(exist_ok=True)
                options_ = ["-o", f"state_dir={work / f'state-{name}'}"]
                options_ += ["-o", f"ssl_ca_file={server.ca_file}"]
                with foreground_mount(
                    server.endpoint, mountpoint, *options_, log=work / "mount.log"
                ) as mount:
                    dd = ["dd", f"if={mountpoint / KEY}", "of=/dev/null", "bs=1M", "status=none"]
                    measure(f"{name}: mount cold read", server, size, dd, mount_pid=mount.pid)


async def upload(server: ServerProcess, path: Path) -> None:
    async with OssClient(server.endpoint, CREDENTIALS, ca_file=server.ca_file) as client:
        await client.put_object(BUCKET, KEY, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--compare-python",
        metavar="PYTHON",
        help="alternate with the server of another virtualenv's python",
    )
    args = parser.parse_args()
    size = args.size_mib * MIB
    pythons = [sys.executable] * args.runs
    if args.compare_python:
        pythons = [args.compare_python, sys.executable] * args.runs
    with tempfile.TemporaryDirectory(prefix="bench-bodies-") as directory:
        work = Path(directory)
        source = work / "source.bin"
        make_file(source, size)
        for python in pythons:
            print(f"\nserver: {python}  ({time.strftime('%H:%M:%S')} UTC)", flush=True)
            run_all(work, source, size, python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
