#!/usr/bin/env python3
"""The price of extended attributes on the mount: the calls that reach it without a request.

Usage: .venv/bin/python scripts/bench_xattr.py [--calls 20000] [--names 2000]

With xattrs on (the default), two kinds of getxattr reach the mount without anyone asking for
xattrs: the kernel's ``security.capability`` before every write() (to clear file capabilities)
and ``ls -l``'s ``security.selinux`` for every name it lists. Each is a FUSE round trip and no
OSS request. This measures, on a fresh mount of the bundled server (child processes, loopback):

  getxattr    --calls getxattr(security.capability) of one file: the mount's CPU per call
  ls -l       `ls -l` of a directory of --names files, listing cached, with and without
              -o noxattr: the mount's CPU per name, and the getxattr calls that made the
              difference
  write       a 256 MiB file written in 128 KiB write() calls with and without -o noxattr:
              the mount's CPU for the whole write and its upload

CPU is the mount process's user + system time from /proc, before and after each step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import foreground_mount, process_cpu_s, server_process

WRITE_SIZE = 256 * 1024 * 1024
WRITE_CHUNK = 128 * 1024


def getxattr_loop(path: Path, calls: int) -> None:
    for _ in range(calls):
        with contextlib.suppress(OSError):  # ENODATA (on) or EOPNOTSUPP (noxattr)
            os.getxattr(path, "security.capability")


def measure(label: str, pid: int, step: Callable[..., None], *args: object) -> tuple[float, float]:
    cpu_before, wall_before = process_cpu_s(pid), time.monotonic()
    step(*args)
    cpu, wall = process_cpu_s(pid) - cpu_before, time.monotonic() - wall_before
    print(f"{label:58s} {wall:7.2f} s   mount CPU {cpu:6.2f} s", flush=True)
    return cpu, wall


def ls_l(directory: Path) -> None:
    subprocess.run(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL, check=True)


def write_file(path: Path) -> None:
    chunk = b"\0" * WRITE_CHUNK
    with path.open("wb") as handle:
        for _ in range(WRITE_SIZE // WRITE_CHUNK):
            handle.write(chunk)
            handle.flush()  # one write() per chunk


def run_case(endpoint: str, work: Path, options: list[str], args: argparse.Namespace) -> None:
    mountpoint = work / f"mnt{len(options)}"
    mountpoint.mkdir(exist_ok=True)
    extra = [item for option in options for item in ("-o", option)]
    state = ["-o", f"state_dir={work / f'state{len(options)}'}"]
    with foreground_mount(endpoint, mountpoint, *extra, *state) as process:
        name = " ".join(options) or "xattrs on"
        directory = mountpoint / "names"
        directory.mkdir(exist_ok=True)
        for number in range(args.names):
            (directory / f"f{number:05d}").touch()
        ls_l(directory)  # the listing is cached from here on
        probe = mountpoint / "probe"
        probe.touch()
        cpu, _ = measure(
            f"{name}: {args.calls} getxattr(security.capability)",
            process.pid,
            getxattr_loop,
            probe,
            args.calls,
        )
        print(f"{'':58s} {cpu / args.calls * 1e6:7.1f} us of mount CPU per call")
        cpu, _ = measure(f"{name}: ls -l of {args.names} names", process.pid, ls_l, directory)
        print(f"{'':58s} {cpu / args.names * 1e6:7.1f} us of mount CPU per name")
        measure(
            f"{name}: 256 MiB in 128 KiB writes, closed", process.pid, write_file, mountpoint / "w"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--names", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-xattr-") as temp:
        work = Path(temp)
        with server_process(work / "server") as server:
            for options in ([], ["noxattr"]):
                run_case(server.endpoint, work, options, args)
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
