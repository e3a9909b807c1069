"""Starting and stopping the server: in the caller's trio loop, in a thread, or as a command."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ossmount.oss.signer import Credentials
from ossmount.server.app import App, Stats
from ossmount.server.auth import Verifier
from ossmount.server.faults import Faults
from ossmount.server.http import Throttle, serve_connection
from ossmount.server.store import Store
from ossmount.server.tls import (
    TLS_HANDSHAKE_RECORD,
    TlsSocket,
    first_byte,
    refuse_tls_on_plain_port,
    server_context,
    write_self_signed,
)

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Everything a server needs. An empty `credentials` list admits only anonymous requests
    (to buckets whose ACL allows them)."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    credentials: list[Credentials] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)
    bucket_acl: str = "private"  # ACL of the buckets created from `buckets`
    region: str = "cn-hangzhou"
    # Host names under which `bucket.<name>` means virtual-host style.
    virtual_host_bases: tuple[str, ...] = ("localhost",)
    latency_ms: float = 0.0
    bandwidth_bytes_per_s: float = 0.0
    conn_bandwidth_bytes_per_s: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    fault_seed: int = 0
    # Write large bodies with O_DIRECT: no copy into the page cache and little left for the
    # fsync, but the data is not cached, so reads right after a write come from the disk.
    direct_io: bool = False
    # https: a certificate chain and its key, or a self-signed pair written under the root.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_self_signed or self.tls_cert is not None


@dataclass
class RunningServer:
    """A server that answers at `endpoint`; `faults` may be changed while it runs.

    `store` is there for tests to inspect or prepare the index directly (buckets, ACLs,
    objects); do that while no request is in flight, since it shares the server's connection.
    """

    endpoint: str
    host: str
    port: int
    root: Path
    faults: Faults
    stats: Stats
    store: Store
    # The certificate a client must trust (https with --tls-self-signed or --tls-cert), or None.
    ca_file: Path | None = None

    def virtual_host(self, bucket: str) -> str:
        """The Host header value that addresses `bucket` virtual-host style."""
        return f"{bucket}.localhost:{self.port}"


def _display_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


@asynccontextmanager
async def open_server(config: ServerConfig) -> AsyncIterator[RunningServer]:
    """Serve in the current trio loop until the block exits."""
    config.root.mkdir(parents=True, exist_ok=True)
    tls_context, ca_file = _tls_setup(config)
    store = Store(config.root)
    try:
        for name in config.buckets:
            store.create_bucket(name, config.bucket_acl)
        faults = Faults(
            latency_ms=config.latency_ms,
            bandwidth_bytes_per_s=config.bandwidth_bytes_per_s,
            conn_bandwidth_bytes_per_s=config.conn_bandwidth_bytes_per_s,
            error_rate=config.error_rate,
            reset_rate=config.reset_rate,
            seed=config.fault_seed,
        )
        stats = Stats()
        bases = list(config.virtual_host_bases)
        try:
            ipaddress.ip_address(config.host)
        except ValueError:
            if config.host and config.host not in bases:
                bases.append(config.host)
        throttle = Throttle(lambda: faults.bandwidth_bytes_per_s)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        listener = trio.socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await listener.bind((config.host, config.port))
        listener.listen(512)
        port = listener.getsockname()[1]
        display = f"{_display_host(config.host)}:{port}"
        app = App(
            store,
            Verifier(config.credentials),
            faults,
            stats,
            tuple(bases),
            display,
            config.region,
            config.direct_io,
        )
        running = RunningServer(
            endpoint=f"{'https' if tls_context else 'http'}://{display}",
            host=config.host,
            port=port,
            root=config.root,
            faults=faults,
            stats=stats,
            store=store,
            ca_file=ca_file,
        )

        async def serve(sock: trio.socket.SocketType, peer: str) -> None:
            try:
                await serve_one(sock, peer)
            except Exception:
                # One connection's failure must never take the server down.
                log.exception("connection from %s failed", peer)
                sock.close()

        async def serve_one(sock: trio.socket.SocketType, peer: str) -> None:
            connection_throttle = Throttle(lambda: faults.conn_bandwidth_bytes_per_s, throttle)
            if tls_context is not None:
                tls = await TlsSocket.accept(sock, tls_context)
                if tls is not None:
                    await serve_connection(
                        tls,  # type: ignore[arg-type]  # the methods Connection uses
                        peer,
                        app.handle,
                        app.bad_request,
                        connection_throttle,
                        zero_copy=False,
                    )
                return
            if await first_byte(sock, 120.0) == TLS_HANDSHAKE_RECORD:
                await refuse_tls_on_plain_port(sock)
                return
            await serve_connection(sock, peer, app.handle, app.bad_request, connection_throttle)

        async def accept_loop(nursery: trio.Nursery) -> None:
            with listener:
                while True:
                    sock, address = await listener.accept()
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    peer = f"{address[0]}:{address[1]}"
                    nursery.start_soon(serve, sock, peer)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_loop, nursery)
                log.info("serving %s from %s", running.endpoint, config.root)
                try:
                    yield running
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # What the caller's block raised comes out as itself, not wrapped in the group
            # of the server's nursery (connection tasks never raise: see serve_connection).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        store.close()


def _tls_setup(config: ServerConfig) -> tuple[ssl.SSLContext | None, Path | None]:
    """The server's TLS context (None: plain http) and the certificate clients should trust."""
    if config.tls_self_signed:
        if config.tls_cert is not None or config.tls_key is not None:
            raise ValueError("give --tls-self-signed or --tls-cert/--tls-key, not both")
        cert, key = write_self_signed(config.root, config.host)
        return server_context(cert, key), cert
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key")
    if config.tls_cert is None or config.tls_key is None:
        return None, None
    return server_context(config.tls_cert, config.tls_key), config.tls_cert


@contextmanager
def run_server_in_thread(config: ServerConfig) -> Iterator[RunningServer]:
    """Serve from a thread of its own (with its own trio loop), for synchronous callers."""
    started = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop = trio.Event()
        state["token"] = trio.lowlevel.current_trio_token()
        state["stop"] = stop
        try:
            async with open_server(config) as running:
                state["running"] = running
                started.set()
                await stop.wait()
        finally:
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name="ossmount-server", daemon=True)
    thread.start()
    started.wait()
    if "running" not in state:
        thread.join()
        error = state.get("error")
        raise RuntimeError(f"server failed to start: {error!r}") from (
            error if isinstance(error, BaseException) else None
        )
    running = state["running"]
    assert isinstance(running, RunningServer)
    try:
        yield running
    finally:
        token = state["token"]
        stop = state["stop"]
        assert isinstance(token, trio.lowlevel.TrioToken) and isinstance(stop, trio.Event)
        trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(timeout=30)
        error = state.get("error")
        if isinstance(error, BaseException):
            raise error


def serve_until_signalled(config: ServerConfig) -> int:
    """Run the server, print its endpoint on one line once it answers, stop on SIGINT/SIGTERM."""

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_server(config) as running:
                if running.ca_file is not None:
                    print(f"{running.endpoint} ca_file={running.ca_file}", flush=True)
                else:
                    print(running.endpoint, flush=True)
                async for signum in signals:
                    log.info("stopping on signal %d", signum)
                    break

    try:
        trio.run(main)
    except (OSError, ValueError) as exc:
        print(f"ossmount server: {exc}", file=sys.stderr)
        return 1
    return 0
