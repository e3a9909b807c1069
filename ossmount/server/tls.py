"""TLS for the bundled server: certificates, a self-signed one on request, and TLS sockets with
the interface :class:`ossmount.server.http.Connection` uses.

A TLS connection is a non-blocking ``ssl.SSLSocket`` driven from the trio thread: OpenSSL reads
and writes the socket itself, so no byte passes through a Python-level buffer pump (trio's
``SSLStream`` copies every record through ``MemoryBIO`` objects). ``os.sendfile`` cannot send
through TLS (no kernel TLS on this stack), so file bodies are read and written in 1 MiB pieces
(:attr:`TlsSocket.zero_copy` is False). Without a bandwidth cap that is done by a worker thread
(:meth:`TlsSocket.send_file`): ``pread`` and OpenSSL's encryption and writes run with the GIL
released, off the event loop, so one connection's body does not hold up the others' requests.
Measured (docs/benchmarks.md): the same throughput within the noise of a shared machine, and
the same or up to a fifth less server CPU per GiB; what it buys is that one body's encryption
no longer holds up the other connections' requests. The thread owns the socket until it
returns; the connection's task waits for it, and cancellation (the server stopping) makes it
stop within a poll interval.

The first bytes of a connection tell the two protocols apart (a TLS record starts with 0x16, a
request with a method name). Each port answers the other protocol with one plain-text 400 and
closes, as nginx does, so that a client with the wrong scheme in its endpoint fails at once with
a readable message instead of waiting for bytes that never come:

- plain HTTP on the TLS port: ``400 The plain HTTP request was sent to HTTPS port``;
- a TLS handshake on the plain port: ``400 This port speaks plain HTTP``, which a TLS client
  reports as "wrong version number".
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import outcome
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

T = TypeVar("T")

TLS_HANDSHAKE_RECORD = 0x16
# Where --tls-self-signed writes its files, under --root.
SELF_SIGNED_DIR = "tls"
PLAIN_ON_TLS_PORT = b"The plain HTTP request was sent to HTTPS port\n"
TLS_ON_PLAIN_PORT = b"This port speaks plain HTTP, not TLS\n"
HANDSHAKE_TIMEOUT_S = 30.0
MAX_FIRST_MESSAGE = 64 * 1024
# File bodies are read and encrypted in pieces of this size.
FILE_PIECE = 1 << 20
# How often a worker thread that waits for the peer checks whether it was stopped.
_POLL_INTERVAL_S = 0.2


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for the certificate chain and key; ValueError names what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ValueError(f"cannot read {exc.filename}: no such file") from None
    except ssl.SSLError as exc:
        raise ValueError(f"cannot load {cert_file} with key {key_file}: {exc.reason}") from None
    return context


def write_self_signed(root: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for localhost, 127.0.0.1, ::1 and ``host``,
    written under ``root/tls``; an existing pair is reused so that clients keep trusting it.
    Returns (certificate, key)."""
    directory = root / SELF_SIGNED_DIR
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    try:
        ipaddress.ip_address(host)
        addresses.add(host)
    except ValueError:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in sorted(addresses)]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ossmount server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _plain_answer(message: bytes) -> bytes:
    return (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(message), message)
    )


async def first_byte(sock: trio.socket.SocketType, timeout_s: float) -> int | None:
    """The first byte the peer sends (left in the socket), or None if it sends none in time."""
    peeked = b""
    with trio.move_on_after(timeout_s), contextlib.suppress(OSError):
        peeked = await sock.recv(1, socket.MSG_PEEK)
    return peeked[0] if peeked else None


async def refuse_tls_on_plain_port(sock: trio.socket.SocketType) -> None:
    """Answer a TLS handshake on the plain port with a plain 400 (see the module's doc)."""
    await _answer_and_close(sock, TLS_ON_PLAIN_PORT)


async def _answer_and_close(sock: trio.socket.SocketType, message: bytes) -> None:
    """A plain 400 with ``message``, then close. What the peer sent is read first: closing a
    socket with unread input resets the connection, and the reset can destroy the answer."""
    with contextlib.suppress(OSError):
        await sock.recv(MAX_FIRST_MESSAGE)
        await sock.send(_plain_answer(message))
        sock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(1.0):
            while await sock.recv(MAX_FIRST_MESSAGE):
                pass
    sock.close()


class TlsSocket:
    """A non-blocking ``ssl.SSLSocket`` behind the async methods of a trio socket that
    :class:`ossmount.server.http.Connection` calls (recv, recv_into, send, fileno, setsockopt,
    close)."""

    zero_copy = False

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock

    @classmethod
    async def accept(
        cls, sock: trio.socket.SocketType, context: ssl.SSLContext
    ) -> TlsSocket | None:
        """The TLS side of an accepted socket after its handshake; None (socket closed) if the
        peer spoke plain HTTP (answered as the module's doc says) or the handshake failed."""
        first = await first_byte(sock, HANDSHAKE_TIMEOUT_S)
        if first is None:
            sock.close()
            return None
        if first != TLS_HANDSHAKE_RECORD:
            await _answer_and_close(sock, PLAIN_ON_TLS_PORT)
            return None
        raw = socket.socket(fileno=sock.detach())
        raw.setblocking(False)
        tls = cls(context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False))
        done = False
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            try:
                await tls._retrying(tls._sock.do_handshake)
                done = True
            except (OSError, ValueError) as exc:
                log.debug("TLS handshake failed: %s", exc)
        if not done:
            tls.close()
            return None
        return tls

    async def _retrying(self, operation: Callable[[], T]) -> T:
        """``operation`` on the non-blocking socket, waiting for the socket whenever OpenSSL
        wants to read or write first."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._sock.fileno())
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._sock.fileno())
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return result

    async def recv(self, size: int) -> bytes:
        return await self._retrying(lambda: self._sock.recv(size))

    async def recv_into(self, view: memoryview) -> int:
        count = await self._retrying(lambda: self._sock.recv_into(view))
        # One TLS record per call: take what else is already here without going back to trio.
        while count and count < len(view):
            try:
                more = self._sock.recv_into(view[count:])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not more:
                break
            count += more
        return count

    async def send(self, data: bytes | memoryview) -> int:
        # Without partial writes, OpenSSL wants the same buffer again after SSLWantWriteError,
        # and then reports it sent whole.
        return await self._retrying(lambda: self._sock.send(data))

    async def send_file(self, fd: int, offset: int, length: int, stall_timeout_s: float) -> None:
        """``length`` bytes of ``fd`` from ``offset``, read, encrypted and sent by a worker
        thread (see the module's doc). OSError if the peer goes away or takes no byte for
        ``stall_timeout_s``; on cancellation the thread stops within a poll interval."""
        stopped = threading.Event()

        def work() -> None:
            sock = self._sock
            position, end = offset, offset + length
            while position < end:
                piece = os.pread(fd, min(end - position, FILE_PIECE), position)
                if not piece:
                    raise ConnectionError("file shrank while being sent")
                waited = 0.0
                while True:
                    if stopped.is_set():
                        raise ConnectionError("stopped")
                    try:
                        sock.send(piece)  # whole, once it returns (no partial writes)
                        break
                    except ssl.SSLWantWriteError:
                        events = select.POLLOUT
                    except ssl.SSLWantReadError:  # a TLS 1.3 key update, for one
                        events = select.POLLIN
                    poller = select.poll()
                    poller.register(sock.fileno(), events)
                    if not poller.poll(int(_POLL_INTERVAL_S * 1000)):
                        waited += _POLL_INTERVAL_S
                        if waited >= stall_timeout_s:
                            raise TimeoutError(f"no progress for {stall_timeout_s} s")
                position += len(piece)

        await _run_in_thread(work, stopped)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setsockopt(self, level: int, option: int, value: bytes | int) -> None:
        self._sock.setsockopt(level, option, value)

    def close(self) -> None:
        self._sock.close()


async def _run_in_thread(work: Callable[[], None], stopped: threading.Event) -> None:
    """``work()`` in a thread of trio's cache. Cancellation sets ``stopped`` (which ``work``
    checks while it waits), waits for the thread, and raises Cancelled: the socket and file
    ``work`` uses stay open until it is done with them."""
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    cancelled = False

    def deliver(result: outcome.Outcome[None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    def abort(_: object) -> trio.lowlevel.Abort:
        nonlocal cancelled
        cancelled = True
        stopped.set()
        return trio.lowlevel.Abort.FAILED  # the thread's end reschedules the task

    trio.lowlevel.start_thread_soon(work, deliver, name="ossmount-server TLS body")
    try:
        await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        if cancelled:
            await trio.lowlevel.checkpoint()  # raises the Cancelled that stopped the work
