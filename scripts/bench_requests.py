#!/usr/bin/env python3
"""Client CPU per small request, over http and https: the fast transport against httpx.

Usage: .venv/bin/python scripts/bench_requests.py [--requests 1000] [--runs 2]

The bundled server runs as a child process (with --tls-self-signed for https), so the CPU time
measured here (time.process_time of this process, worker threads included) is the client's own.
For each scheme and each kind of request (HEAD, PUT of 4 KiB, CopyObject, DELETE), sequential
requests of one OssClient go through the fast transport (oss/http1.py: blocking sockets in
worker threads, the client's default) and then through httpx (the client with its fast
transport switched off, as it was before); it prints the wall time and client CPU per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from benchlib import BUCKET, CREDENTIALS, ServerProcess, server_process

from ossmount.oss.client import OssClient

BODY = b"x" * 4096


def operations(client: OssClient) -> dict[str, Callable[[int], Awaitable[object]]]:
    return {
        "HEAD": lambda number: client.head_object(BUCKET, "source"),
        "PUT 4 KiB": lambda number: client.put_object(BUCKET, f"put-{number}", BODY),
        "CopyObject": lambda number: client.copy_object(
            BUCKET, "source", BUCKET, "copy", metadata={"mode": str(number)}
        ),
        "DELETE": lambda number: client.delete_object(BUCKET, f"put-{number}"),
    }


async def measure(
    server: ServerProcess, operation: str, count: int, fast: bool
) -> tuple[float, float]:
    """(wall ms, client CPU ms) per request, after a warm-up."""
    async with OssClient(server.endpoint, CREDENTIALS, ca_file=server.ca_file) as client:
        if not fast:
            client._exchanges = None  # every request through httpx, as before the fast path
        await client.put_object(BUCKET, "source", BODY)
        run = operations(client)[operation]
        for number in range(50):
            await run(number)
        started, cpu_started = time.perf_counter(), time.process_time()
        for number in range(count):
            await run(number)
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        return wall_s / count * 1000, cpu_s / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-requests-") as directory:
        for scheme in ("http", "https"):
            options = ["--tls-self-signed"] if scheme == "https" else []
            with server_process(Path(directory) / scheme, *options) as server:
                for operation in operations(OssClient(server.endpoint, None)):
                    for fast in (True, False):
                        cpu_ms: list[float] = []
                        wall_ms: list[float] = []
                        for _ in range(args.runs):
                            wall, cpu = trio.run(measure, server, operation, args.requests, fast)
                            wall_ms.append(wall)
                            cpu_ms.append(cpu)
                        print(
                            f"{scheme:5s} {operation:10s} {'fast' if fast else 'httpx':5s}: "
                            f"wall {statistics.median(wall_ms):.3f} ms, client CPU "
                            f"{statistics.median(cpu_ms):.3f} ms per request "
                            f"(runs: {', '.join(f'{value:.3f}' for value in cpu_ms)})",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
