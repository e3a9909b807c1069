#!/usr/bin/env python3
"""https benchmark: the mount and `ossmount cp` over TLS against curl, on loopback and on a WAN
profile.

Usage: .venv/bin/python scripts/bench_https.py [--size-mib 1024] [--wan] [--small-files 1000]

The bundled server runs as a child process with --tls-self-signed (and, for the http figures of
the loopback part, a second one without). Every row gives wall MB/s and the CPU seconds per GiB
of each process on the path (from /proc and getrusage: curl or dd, the mount, the server), and
the mount's peak RSS.

Loopback (no faults): a cold `dd bs=1M` of the object through a fresh mount against one
`curl` GET of the same object, over https and over http.
Targets: mount >= 0.8x curl over https; mount CPU-s/GiB over https <= 1.5x over http.

--wan: the server gets --latency-ms 20 --conn-bandwidth 100MB/s (over https):
- a cold sequential read through the mount against a single-stream curl GET (target 5x);
- `dd conv=fsync` of the file into the mount against a single-stream curl PUT (target 4x);
- `ossmount cp` up and down against the same curl PUT and GET (target 5x);
- `cp -r` of --small-files files of 4 KiB into the mount and back out (figures only).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from benchlib import (
    AK,
    BUCKET,
    CREDENTIALS,
    MIB,
    SK,
    ServerProcess,
    foreground_mount,
    make_file,
    peak_rss_kib,
    presigned_url,
    process_cpu_s,
    server_process,
)

from ossmount.oss.client import OssClient

KEY = "big.bin"
GIB = 1024 * MIB


@dataclass
class Row:
    """One transfer: what, wall seconds, CPU seconds of the processes on its path."""

    name: str
    seconds: float
    size: int
    tool_cpu_s: float  # curl, dd, cp or ossmount cp (children of this process)
    server_cpu_s: float
    mount_cpu_s: float | None = None
    mount_rss_kib: int | None = None

    def line(self, reference: Row | None = None) -> str:
        gib = self.size / GIB
        ratio = f"{reference.seconds / self.seconds:5.2f}x" if reference is not None else "   - "
        mount = (
            f"mount {self.mount_cpu_s / gib:5.2f}"
            if self.mount_cpu_s is not None
            else "mount     -"
        )
        rss = f"{self.mount_rss_kib // 1024:4d} MiB" if self.mount_rss_kib else "       -"
        return (
            f"{self.name:34s} {self.size / self.seconds / 1e6:8.1f} MB/s {ratio}  CPU-s/GiB: "
            f"tool {self.tool_cpu_s / gib:5.2f}  {mount}  server {self.server_cpu_s / gib:5.2f}"
            f"  peak RSS {rss}"
        )


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    name: str, size: int, server: ServerProcess, command: list[str], mount_pid: int | None = None
) -> Row:
    """Run ``command`` to completion, with the CPU of each process on the path."""
    env = {**os.environ, "OSS_ACCESS_KEY_ID": AK, "OSS_ACCESS_KEY_SECRET": SK}
    tool_before, server_before = children_cpu_s(), process_cpu_s(server.process.pid)
    mount_before = process_cpu_s(mount_pid) if mount_pid is not None else 0.0
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    seconds = time.perf_counter() - start
    row = Row(
        name,
        seconds,
        size,
        children_cpu_s() - tool_before,
        process_cpu_s(server.process.pid) - server_before,
    )
    if mount_pid is not None:
        row.mount_cpu_s = process_cpu_s(mount_pid) - mount_before
        row.mount_rss_kib = peak_rss_kib(mount_pid)
    return row


def curl(server: ServerProcess, *args: str) -> list[str]:
    ca = ["--cacert", str(server.ca_file)] if server.ca_file is not None else []
    return ["curl", "-sS", "-f", *ca, *args]


async def upload(server: ServerProcess, path: Path) -> None:
    async with OssClient(server.endpoint, CREDENTIALS, ca_file=server.ca_file) as client:
        await client.put_object(BUCKET, KEY, path)


def mount_options(server: ServerProcess, state: Path) -> list[str]:
    options = ["-o", f"state_dir={state}"]
    if server.ca_file is not None:
        options += ["-o", f"ssl_ca_file={server.ca_file}"]
    return options


def cold_read(server: ServerProcess, work: Path, size: int, label: str) -> Row:
    mountpoint = work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    options = mount_options(server, work / "state-read")
    with foreground_mount(
        server.endpoint, mountpoint, *options, log=work / "mount.log", timeout_s=60
    ) as mount:
        dd = ["dd", f"if={mountpoint / KEY}", "of=/dev/null", "bs=1M", "status=none"]
        return timed(f"{label}: dd through the mount", size, server, dd, mount.pid)


def loopback(work: Path, source: Path, size: int) -> None:
    rows: dict[str, tuple[Row, Row]] = {}
    for scheme in ("https", "http"):
        options = ["--tls-self-signed"] if scheme == "https" else []
        with server_process(work / f"server-{scheme}", *options) as server:
            trio.run(upload, server, source)
            reference = timed(
                f"{scheme}: curl GET",
                size,
                server,
                curl(server, "-o", "/dev/null", presigned_url(server.endpoint, "GET", KEY)),
            )
            rows[scheme] = (reference, cold_read(server, work, size, scheme))
    print(f"\nLoopback, {size // MIB} MiB object, cold reads (ratio: against curl):")
    for reference, mount in rows.values():
        print(reference.line())
        print(mount.line(reference))
    https_cpu, http_cpu = rows["https"][1].mount_cpu_s, rows["http"][1].mount_cpu_s
    assert https_cpu is not None and http_cpu is not None
    print(f"mount CPU per GiB, https / http: {https_cpu / http_cpu:.2f}x (target <= 1.5x)")


def wan(work: Path, source: Path, size: int, small_files: int) -> None:
    with server_process(
        work / "server-wan",
        "--tls-self-signed",
        "--latency-ms",
        "20",
        "--conn-bandwidth",
        "100MB/s",
    ) as server:
        trio.run(upload, server, source)
        print(
            f"\nWAN profile (https, --latency-ms 20 --conn-bandwidth 100MB/s), {size // MIB} MiB:"
        )
        get = timed(
            "curl GET (one stream)",
            size,
            server,
            curl(server, "-o", "/dev/null", presigned_url(server.endpoint, "GET", KEY)),
        )
        print(get.line())
        print(cold_read(server, work, size, "cold read").line(get))
        put = timed(
            "curl PUT (one stream)",
            size,
            server,
            curl(server, "-H", "Content-Type:", "-T", str(source),
                 presigned_url(server.endpoint, "PUT", "curl-put.bin")),
        )  # fmt: skip
        print(put.line())
        mountpoint = work / "mnt"
        mountpoint.mkdir(exist_ok=True)
        options = mount_options(server, work / "state-write")
        with foreground_mount(
            server.endpoint, mountpoint, *options, log=work / "mount-w.log", timeout_s=60
        ) as mount:
            dd = ["dd", f"if={source}", f"of={mountpoint / 'dd.bin'}", "bs=1M", "conv=fsync",
                  "status=none"]  # fmt: skip
            print(timed("dd conv=fsync into the mount", size, server, dd, mount.pid).line(put))
            if small_files:
                tree = work / "small"
                tree.mkdir(exist_ok=True)
                for number in range(small_files):
                    (tree / f"f{number:04d}").write_bytes(os.urandom(4096))
                into = timed(
                    f"cp -r {small_files} x 4 KiB in",
                    small_files * 4096,
                    server,
                    ["cp", "-r", str(tree), str(mountpoint / "small")],
                    mount.pid,
                )
                print(f"{into.name}: {into.seconds:.1f} s")
        if small_files:
            with foreground_mount(
                server.endpoint, mountpoint, *options, log=work / "mount-r.log", timeout_s=60
            ) as mount:
                back = work / "small-back"
                out = timed(
                    f"cp -r {small_files} x 4 KiB out (cold)",
                    small_files * 4096,
                    server,
                    ["cp", "-r", str(mountpoint / "small"), str(back)],
                    mount.pid,
                )
                print(f"{out.name}: {out.seconds:.1f} s")
                shutil.rmtree(back)
        cp = [sys.executable, "-m", "ossmount.cli", "cp", "-q", "--endpoint", server.endpoint,
              "--ca-file", str(server.ca_file)]  # fmt: skip
        print(
            timed(
                "ossmount cp up", size, server, [*cp, str(source), f"oss://{BUCKET}/cp.bin"]
            ).line(put)
        )
        down = work / "down.bin"
        print(
            timed("ossmount cp down", size, server, [*cp, f"oss://{BUCKET}/{KEY}", str(down)]).line(
                get
            )
        )
        down.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--wan", action="store_true", help="also the WAN profile")
    parser.add_argument("--no-loopback", action="store_true", help="only the WAN profile")
    parser.add_argument("--small-files", type=int, default=1000, help="0: skip cp -r")
    args = parser.parse_args()
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-https-") as directory:
        work = Path(directory)
        source = work / "source.bin"
        make_file(source, size)
        if not args.no_loopback:
            loopback(work, source, size)
        if args.wan:
            wan(work, source, size, args.small_files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
