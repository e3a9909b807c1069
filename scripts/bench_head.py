#!/usr/bin/env python3
"""Client CPU per request: sequential HeadObject calls of one OssClient.

Usage: .venv/bin/python scripts/bench_head.py [--heads 2000] [--runs 5] [--profile]

The bundled server runs as a child process, so the CPU time measured here (time.process_time of
this process) is the client's own: signing, building the request, httpx and h11, parsing the
answer. It prints, per run, the wall time and the client CPU per HEAD, then the median of the
runs. --profile prints the functions that cost the most over one more run (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from benchlib import BUCKET, CREDENTIALS, server_process

from ossmount.oss.client import OssClient

KEY = "head-me"


async def heads(endpoint: str, count: int) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of ``count`` HEADs, after a warm-up."""
    async with OssClient(endpoint, CREDENTIALS) as client:
        await client.put_object(BUCKET, KEY, b"x" * 100)
        for _ in range(100):
            await client.head_object(BUCKET, KEY)
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(count):
            await client.head_object(BUCKET, KEY)
        return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-head-") as directory,
        server_process(Path(directory) / "server") as server,
    ):
        cpu_per_head_ms: list[float] = []
        for run in range(args.runs):
            wall_s, cpu_s = trio.run(heads, server.endpoint, args.heads)
            cpu_per_head_ms.append(cpu_s / args.heads * 1000)
            print(
                f"run {run + 1}: {args.heads} HEADs in {wall_s:.2f} s, "
                f"client CPU {cpu_per_head_ms[-1]:.3f} ms per HEAD",
                flush=True,
            )
        print(f"median client CPU per HEAD: {statistics.median(cpu_per_head_ms):.3f} ms")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(trio.run, heads, server.endpoint, args.heads)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
