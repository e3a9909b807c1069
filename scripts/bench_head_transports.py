#!/usr/bin/env python3
"""Which transport for HEADs over https: client CPU per HEAD through four candidates.

Usage: .venv/bin/python scripts/bench_head_transports.py [--heads 2000] [--runs 2]

The measurement behind the choice of oss/http1.py (blocking sockets in worker threads for http
and https). The bundled server runs as a child process (--tls-self-signed for https), so
time.process_time of this process (worker threads included) is the client's CPU. Every variant
sends the same request, built and signed by OssClient, one at a time on one kept connection:

- httpx: OssClient's httpx path (trio's SSLStream under httpcore for https);
- trio-sslstream: a trio.SSLStream on a trio socket, the request written and the head read by
  hand (what a trio-socket transport with TLS would cost);
- thread: a blocking socket (ssl.SSLSocket for https) in a worker thread of trio's cache, the
  exchange started with start_thread_soon and its result handed back with run_sync_soon (what
  oss/http1.py does);
- the client as it is (its fast transport).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import outcome
import trio
from benchlib import BUCKET, CREDENTIALS, ServerProcess, server_process

from ossmount.oss.client import OssClient
from ossmount.oss.http1 import ResponseHead, parse_response_head, request_bytes

KEY = "head-me"


def signed_head(client: OssClient) -> bytes:
    return request_bytes(client.signed_request("HEAD", BUCKET, KEY, {}))


async def trio_sslstream(client: OssClient, host: str, port: int) -> Callable[[], Awaitable[None]]:
    assert client.tls_context is not None
    stream = trio.SSLStream(
        await trio.open_tcp_stream(host, port),
        client.tls_context,
        server_hostname=host,
        https_compatible=True,
    )
    await stream.do_handshake()

    async def head() -> None:
        await stream.send_all(signed_head(client))
        data = await stream.receive_some(65536)
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        parse_response_head(data[: data.find(b"\r\n\r\n")])

    return head


def thread_head(client: OssClient, host: str, port: int) -> Callable[[], Awaitable[None]]:
    raw = socket.create_connection((host, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = client.tls_context
    sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw

    def exchange(wire: bytes) -> ResponseHead:
        sock.sendall(wire)
        data = sock.recv(65536)
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        return parse_response_head(data[: data.find(b"\r\n\r\n")])

    token = trio.lowlevel.current_trio_token()

    async def head() -> None:
        wire = signed_head(client)
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[ResponseHead]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(lambda: exchange(wire), deliver)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    return head


async def measure(server: ServerProcess, variant: str, count: int) -> float:
    """Client CPU ms per HEAD, after a warm-up."""
    async with OssClient(server.endpoint, CREDENTIALS, ca_file=server.ca_file) as client:
        await client.put_object(BUCKET, KEY, b"x" * 100)
        port = int(server.endpoint.rsplit(":", 1)[1])
        head: Callable[[], Awaitable[object]]
        if variant == "httpx":
            client._exchanges = None
            head = lambda: client.head_object(BUCKET, KEY)  # noqa: E731
        elif variant == "trio-sslstream":
            head = await trio_sslstream(client, "127.0.0.1", port)
        elif variant == "thread":
            head = thread_head(client, "127.0.0.1", port)
        else:
            head = lambda: client.head_object(BUCKET, KEY)  # noqa: E731
        for _ in range(100):
            await head()
        cpu_started = time.process_time()
        for _ in range(count):
            await head()
        return (time.process_time() - cpu_started) / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-head-transports-") as directory:
        for scheme in ("https", "http"):
            options = ["--tls-self-signed"] if scheme == "https" else []
            variants = ["httpx", "thread", "client"]
            if scheme == "https":
                variants.insert(1, "trio-sslstream")
            with server_process(Path(directory) / scheme, *options) as server:
                for variant in variants:
                    cpu_ms = [
                        trio.run(measure, server, variant, args.heads) for _ in range(args.runs)
                    ]
                    print(
                        f"{scheme:5s} {variant:15s} client CPU per HEAD: median "
                        f"{statistics.median(cpu_ms):.3f} ms (runs: "
                        f"{', '.join(f'{value:.3f}' for value in cpu_ms)})",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
