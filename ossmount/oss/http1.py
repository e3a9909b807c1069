"""HTTP/1.1 on blocking sockets in worker threads: the client's one fast transport, for http and
https alike.

Why
---
The mount answers FUSE and runs HTTP in one trio thread, and httpx's per-request cost and its
TLS (trio's ``SSLStream``, a Python-level pump that copies every record through ``MemoryBIO``
objects on that thread) make it CPU-bound. Here a worker thread runs the whole exchange on a
blocking socket, a plain one or a stdlib ``ssl.SSLSocket``: OpenSSL reads, decrypts and writes
with the GIL released, so that work runs on the other core, and the trio thread only hands the
request over and takes the answer. Measured before choosing (client CPU per HEAD over https,
loopback, 2,000 sequential HEADs on a busy 2-core machine): httpx 0.91-1.07 ms, trio
``SSLStream`` 0.35-0.40 ms, a worker thread with a blocking ``SSLSocket`` 0.35-0.36 ms; over
plain http the worker thread cost 0.27-0.32 ms against 0.40-0.43 ms on trio sockets. So one
transport serves both schemes, and nothing is slower than what it replaced.

Who uses it
-----------
Requests are built and signed by :meth:`OssClient.signed_request` (one URL style, one set of
headers, one signature); error answers become the client's exception tree through
:func:`ossmount.oss.errors.error_from_response`; network failures through
:func:`ossmount.oss.errors.connection_error` (a TLS failure is never retried); attempts are retried
by the client's :class:`~ossmount.oss.retry.RetryPolicy`. Two kinds of exchange:

- :class:`Exchanges`: every request whose answer is small (HEAD, PUT and POST of bytes or of a
  file, parts included, DELETE, CopyObject, listings and the other XML answers). The body is
  sent from memory, or read from its file in 1 MiB pieces, by the worker thread; one worker
  thread per exchange, from trio's thread cache.
- ranged GETs whose bodies stream in pieces (:mod:`ossmount.oss.bulk`), on the same
  :class:`ConnectionPool`.

Connections
-----------
:class:`Route` says how to reach a host: directly, or through an http proxy (CONNECT tunnel for
https; absolute-form requests for http), and with which TLS context (certificates always
verified, for the request's host name). A :class:`ConnectionPool` per host keeps idle
connections; one that became readable while idle (the server closed it) is passed over, and a
kept one that fails before any answer byte is replaced once, without counting as an attempt.

Plain sockets are read with ``recv(n, MSG_WAITALL)`` (one system call per piece) and the response
head is peeked, so body bytes are never copied in user space. TLS sockets return at most one
record per read, so they are read with ``recv_into`` into a buffer. Timeouts: ``SO_RCVTIMEO`` /
``SO_SNDTIMEO`` for plain sockets (a blocking socket, which ``MSG_WAITALL`` needs), Python's
socket timeout for TLS ones (OpenSSL retries a read that ``SO_RCVTIMEO`` interrupted forever).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

import httpx
import outcome
import trio

from ossmount.oss.errors import OssProtocolError
from ossmount.oss.network import Proxy

T = TypeVar("T")

# A response head longer than this is refused (OSS sends a few hundred bytes).
HEAD_LIMIT = 64 * 1024
# How much a TLS read asks for at once (records are at most 16 KiB).
_TLS_READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    keep_alive: bool


def parse_response_head(raw: bytes) -> ResponseHead:
    """The status line and headers of a response head (without its final blank line)."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise OssProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise OssProtocolError(f"malformed response header line {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (
        parts[0] != "HTTP/1.0" or "keep-alive" in connection
    )
    return ResponseHead(int(parts[1]), headers, keep_alive)


def request_bytes(request: httpx.Request, *, absolute_form: bool = False) -> bytes:
    """A request's line and headers as they go on the wire (httpx built and signed it); the
    target in absolute form for an http proxy."""
    target = request.url.raw_path
    if absolute_form:
        target = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}".encode() + target
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


@dataclass(frozen=True)
class Route:
    """How connections to one host are made: TLS or not, through a proxy or not."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    proxy: Proxy | None
    timeout_s: float

    @property
    def absolute_form(self) -> bool:
        """Requests go to an http proxy, which wants the whole URL as the target."""
        return self.proxy is not None and self.tls is None

    def connect(self) -> Connection:
        """A new connection (blocking; OSError or ssl.SSLError on failure)."""
        proxy = self.proxy
        address = (proxy.host, proxy.port) if proxy is not None else (self.host, self.port)
        sock = socket.create_connection(address, timeout=self.timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy is not None and self.tls is not None:
                _tunnel(sock, self.host, self.port)
            if self.tls is not None:
                return Connection(self.tls.wrap_socket(sock, server_hostname=self.host))
            sock.settimeout(None)  # blocking: MSG_WAITALL needs it; the kernel keeps the timeout
            whole_s = int(self.timeout_s)
            timeval = struct.pack("ll", whole_s, int((self.timeout_s - whole_s) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            return Connection(sock)
        except BaseException:
            sock.close()
            raise


def _tunnel(sock: socket.socket, host: str, port: int) -> None:
    """Ask the proxy on ``sock`` for a tunnel to host:port (CONNECT)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii"))
    answer = b""
    while (end := answer.find(b"\r\n\r\n")) < 0:
        if len(answer) >= HEAD_LIMIT:
            raise ConnectionError("the proxy's answer to CONNECT is too long")
        more = sock.recv(4096)
        if not more:
            raise ConnectionError("the proxy closed the connection instead of answering CONNECT")
        answer += more
    head = parse_response_head(answer[:end])
    if head.status != 200 or end + 4 != len(answer):
        raise ConnectionError(f"the proxy refused a tunnel to {authority} (HTTP {head.status})")


class Connection:
    """One blocking connection, plain or TLS, used by one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        # TLS only: bytes read past the response head (plain sockets peek instead).
        self._buffer = bytearray()

    def send_all(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)

    def receive_head(self) -> ResponseHead:
        """The response head; nothing of the body is consumed."""
        raw = self._receive_head_tls() if self.tls else self._receive_head_plain()
        return parse_response_head(raw)

    def _receive_head_plain(self) -> bytes:
        # Peek, then read exactly the head: the body stays in the socket for MSG_WAITALL.
        head = b""
        while True:
            peeked = self.sock.recv(HEAD_LIMIT - len(head), socket.MSG_PEEK)
            if not peeked:
                raise ConnectionResetError("connection closed before the response head")
            end = (head[-3:] + peeked).find(b"\r\n\r\n")
            if end >= 0:
                return (head + self.receive_exactly(end + 4 - min(3, len(head))))[:-4]
            head += self.receive_exactly(len(peeked))
            if len(head) >= HEAD_LIMIT:
                raise OssProtocolError(f"response head longer than {HEAD_LIMIT} bytes")

    def _receive_head_tls(self) -> bytes:
        buffer = self._buffer
        searched = 0
        while (end := buffer.find(b"\r\n\r\n", max(0, searched - 3))) < 0:
            if len(buffer) >= HEAD_LIMIT:
                raise OssProtocolError(f"response head longer than {HEAD_LIMIT} bytes")
            searched = len(buffer)
            more = self.sock.recv(_TLS_READ_SIZE)
            if not more:
                raise ConnectionResetError("connection closed before the response head")
            buffer += more
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        return head

    def receive_exactly(self, count: int) -> bytes:
        """``count`` bytes; one system call on a plain socket unless the data trickles."""
        if self.tls:
            return self._receive_exactly_tls(count)
        data = self.sock.recv(count, socket.MSG_WAITALL)
        if len(data) == count:
            return data
        pieces = [data]
        received = len(data)
        while data and received < count:
            data = self.sock.recv(count - received, socket.MSG_WAITALL)
            pieces.append(data)
            received += len(data)
        if received < count:
            raise ConnectionResetError(f"connection closed {count - received} bytes before the end")
        return b"".join(pieces)

    def _receive_exactly_tls(self, count: int) -> bytes:
        buffer = bytearray(count)
        view = memoryview(buffer)
        filled = min(count, len(self._buffer))
        view[:filled] = self._buffer[:filled]
        del self._buffer[:filled]
        while filled < count:
            received = self.sock.recv_into(view[filled:])
            if not received:
                raise ConnectionResetError(
                    f"connection closed {count - filled} bytes before the end"
                )
            filled += received
        return bytes(buffer)

    def receive_chunked(self, limit: int) -> bytes:
        """A body in chunked transfer coding (at most ``limit`` bytes); trailers are dropped."""
        pieces: list[bytes] = []
        total = 0
        while True:
            line = self._receive_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise OssProtocolError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while self._receive_line():
                    pass
                return b"".join(pieces)
            total += size
            if total > limit:
                raise OssProtocolError(f"a chunked answer over {limit} bytes")
            pieces.append(self.receive_exactly(size))
            if self.receive_exactly(2) != b"\r\n":
                raise OssProtocolError("a chunk not followed by CRLF")

    def _receive_line(self) -> bytes:
        line = b""
        while not line.endswith(b"\r\n"):
            if len(line) > 4096:
                raise OssProtocolError("a line of the chunked coding over 4 KiB")
            line += self.receive_exactly(1)
        return line[:-2]

    def receive_to_end(self, limit: int) -> bytes:
        """Everything until the server closes (an answer without a length; at most ``limit``)."""
        pieces = [bytes(self._buffer)]
        self._buffer.clear()
        total = len(pieces[0])
        while data := self.sock.recv(_TLS_READ_SIZE):
            total += len(data)
            if total > limit:
                raise OssProtocolError(f"an answer over {limit} bytes")
            pieces.append(data)
        return b"".join(pieces)

    @property
    def idle_clean(self) -> bool:
        """Nothing unread: not readable while idle (else the server closed it or sent garbage)."""
        if self._buffer or (self.tls and self.sock.pending()):  # type: ignore[attr-defined]
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def shutdown(self) -> None:
        """Wake a thread blocked on this connection (from another thread)."""
        with suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


class ConnectionPool:
    """Connections to one host along one :class:`Route`; idle ones kept for reuse. Used from
    worker threads."""

    def __init__(self, route: Route, max_idle: int) -> None:
        self.route = route
        self._max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> tuple[Connection, bool]:
        """A connection, and whether it was used before."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self.route.connect(), False
            if connection.idle_clean:
                return connection, True
            connection.close()

    def give_back(self, connection: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class Pools:
    """One :class:`ConnectionPool` per host a client's requests name (the endpoint, or
    bucket.endpoint in virtual-host style), all along the client's TLS context and proxy."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None,
        proxy: Proxy | None,
        timeout_s: float,
        max_idle: int,
    ) -> None:
        self._tls = tls
        self._proxy = proxy
        self._timeout_s = timeout_s if timeout_s > 0 else 3600.0
        self._max_idle = max_idle
        self._pools: dict[tuple[str, int], ConnectionPool] = {}
        self._lock = threading.Lock()

    def for_url(self, url: httpx.URL) -> ConnectionPool:
        host = url.host
        address = (host, url.port or (443 if url.scheme == "https" else 80))
        with self._lock:
            pool = self._pools.get(address)
            if pool is None:
                route = Route(host, address[1], self._tls, self._proxy, self._timeout_s)
                pool = self._pools[address] = ConnectionPool(route, self._max_idle)
            return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


@dataclass(frozen=True)
class Answer:
    """A response head and its (small) body. ``body_skipped``: a successful answer's body was
    longer than the caller's ``body_limit`` (or of unknown length), so it was not read and the
    connection was closed instead."""

    head: ResponseHead
    body: bytes
    body_skipped: bool = False


class _ClosedBeforeAnswerError(Exception):
    """A kept connection the server had closed: nothing was answered, so sending again is safe."""


# A request body for one attempt: bytes, or a function the worker thread calls for the pieces
# (a file read as it is sent).
RequestBody = bytes | Callable[[], Iterable[bytes]]


class Exchanges:
    """Requests whose answers are small (every request but the GETs of object bodies), each run
    by a worker thread on a connection of :class:`Pools`; the request body may be large (a
    part read from a file as it is sent). Network failures raise OSError (ssl.SSLError
    included); the client maps them onto its error tree. Callers bound the concurrency."""

    def __init__(self, pools: Pools, *, answer_limit: int) -> None:
        self._pools = pools
        self._answer_limit = answer_limit

    async def exchange(
        self, request: httpx.Request, body: RequestBody = b"", *, body_limit: int | None = None
    ) -> Answer:
        """Send ``request`` (signed, with its Content-Length set when there is a body) and
        ``body``; the answer's head and body (none for HEAD). OssProtocolError for an answer
        body over ``answer_limit``. ``body_limit``: the GET of an object that should be small;
        a successful answer whose Content-Length is larger (or missing) is not read
        (``Answer.body_skipped``) and its connection is closed, since reading a large body only
        to drop it costs more than a new connection. What ``body`` raises (a local file that
        cannot be read) comes out wrapped in :class:`BodyError`."""
        pool = self._pools.for_url(request.url)
        wire = request_bytes(request, absolute_form=pool.route.absolute_form)
        head_only = request.method == "HEAD"
        state = _Stoppable()
        return await run_in_worker(
            lambda: self._run(pool, wire, body, head_only, body_limit, state),
            state.stop,
            request.method,
        )

    def _run(
        self,
        pool: ConnectionPool,
        wire: bytes,
        body: RequestBody,
        head_only: bool,
        body_limit: int | None,
        state: _Stoppable,
    ) -> Answer:
        while True:
            connection, reused = pool.take()
            if not state.attach(connection):
                connection.close()
                raise ConnectionAbortedError("stopped")
            try:
                answer = self._on(connection, wire, body, head_only, body_limit, reused)
            except _ClosedBeforeAnswerError as exc:
                state.detach()
                connection.close()
                if not reused:
                    raise ConnectionResetError("connection closed before the response") from exc
                continue
            except BaseException:
                state.detach()
                connection.close()
                raise
            if state.detach() and answer.head.keep_alive and not answer.body_skipped:
                pool.give_back(connection)
            else:
                connection.close()
            return answer

    def _on(
        self,
        connection: Connection,
        wire: bytes,
        body: RequestBody,
        head_only: bool,
        body_limit: int | None,
        reused: bool,
    ) -> Answer:
        try:
            if isinstance(body, bytes):
                connection.send_all(wire + body if len(body) < 65536 else wire)
                if len(body) >= 65536:
                    connection.send_all(body)
            else:
                connection.send_all(wire)
                for piece in _pieces(body):
                    connection.send_all(piece)
            head = connection.receive_head()
        except (ConnectionError, ssl.SSLEOFError) as exc:
            if reused:
                raise _ClosedBeforeAnswerError from exc
            raise
        if head_only or head.status in (204, 304) or 100 <= head.status < 200:
            return Answer(head, b"")
        if body_limit is not None and 200 <= head.status < 300:
            length = head.headers.get("content-length", "")
            if not length.isdigit() or int(length) > body_limit:
                return Answer(head, b"", body_skipped=True)
        return Answer(head, self._answer_body(connection, head))

    def _answer_body(self, connection: Connection, head: ResponseHead) -> bytes:
        headers = head.headers
        length = headers.get("content-length", "")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return connection.receive_chunked(self._answer_limit)
        if not length.isdigit():
            if head.keep_alive:
                raise OssProtocolError(f"an answer (HTTP {head.status}) with no length")
            return connection.receive_to_end(self._answer_limit)
        if int(length) > self._answer_limit:
            raise OssProtocolError(f"an answer of {length} bytes where a small one was expected")
        return connection.receive_exactly(int(length)) if int(length) else b""


class BodyError(Exception):
    """Producing the request body failed (e.g. a local file could not be read): ``error``."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _pieces(body: Callable[[], Iterable[bytes]]) -> Iterable[bytes]:
    """The body's pieces, its own failures wrapped in BodyError (they are not the network's)."""
    try:
        iterator = iter(body())
    except Exception as exc:
        raise BodyError(exc) from exc
    while True:
        try:
            piece = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise BodyError(exc) from exc
        yield piece


class _Stoppable:
    """The connection an exchange is using, for :meth:`stop` (trio thread, on cancellation) to
    shut it down; shutdown and the end of the exchange happen under one lock, so a descriptor
    is never shut down after it was closed and reused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self.stopped = False

    def attach(self, connection: Connection) -> bool:
        with self._lock:
            self._connection = connection
            return not self.stopped

    def detach(self) -> bool:
        """The exchange is over; whether it was not stopped."""
        with self._lock:
            self._connection = None
            return not self.stopped

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            if self._connection is not None:
                self._connection.shutdown()


async def run_in_worker(work: Callable[[], T], stop: Callable[[], None], name: str) -> T:
    """``work()`` in a thread of trio's cache; its result or exception. Cancellation calls
    ``stop()`` (which must make ``work`` end soon), waits for the thread, and raises Cancelled."""
    token = trio.lowlevel.current_trio_token()
    task = trio.lowlevel.current_task()
    cancelled = False

    def deliver(result: outcome.Outcome[T]) -> None:
        with suppress(trio.RunFinishedError):
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    def abort(_: object) -> trio.lowlevel.Abort:
        nonlocal cancelled
        cancelled = True
        stop()
        return trio.lowlevel.Abort.FAILED  # the thread's end reschedules the task

    trio.lowlevel.start_thread_soon(work, deliver, name=f"ossmount {name}")
    try:
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    except Exception:
        if cancelled:
            await trio.lowlevel.checkpoint()  # raises the Cancelled that stopped the work
        raise
    if cancelled:
        await trio.lowlevel.checkpoint()
    return result
