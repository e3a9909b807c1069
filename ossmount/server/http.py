"""HTTP/1.1 on raw trio sockets, built for bulk transfer.

The request head is parsed here (request line and header fields, with the usual size limits);
bodies are framed here too (Content-Length or chunked transfer coding, `Expect: 100-continue`)
so that a PUT body goes from the socket to its consumer in large reads with no per-chunk
protocol machinery in between. Responses are a head plus either an in-memory body or slices
of files; file slices go out with `os.sendfile` (zero copy) unless a bandwidth cap or
an injected reset needs to see the bytes.

One `Connection` per accepted socket; requests on it are handled one after another
(keep-alive). A request is answered as soon as its handler is done, whether or not its body
came: a client may declare a body it never sends (a presigned GET signed with a
Content-Length), and a request rejected before its body is needed must not wait for it. What
is left of the body after the answer is drained before the next request if it is small and
the method carries bodies (PUT, POST); otherwise the answer says `Connection: close` and the
connection is closed, gracefully (see `_linger_close`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import unquote, unquote_plus

import trio

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 8 * 1024
RECEIVE_SIZE = 1 << 20
SENDFILE_CHUNK = 8 << 20
# File bodies up to this size are read (from the page cache, as a rule) and sent with the head.
SMALL_RESPONSE = 64 * 1024
# A bandwidth cap sleeps only once its booked debt exceeds this (see Throttle).
THROTTLE_QUANTUM_S = 0.005
# Under a cap, file bodies are sent in pieces of this size (2.6 ms at 100 MB/s): 64 KiB pieces
# cost 2.2 CPU-s per GiB sent over TLS at 100 MB/s, 1 MiB pieces 1.6-1.8.
THROTTLED_PIECE = 256 * 1024
# A peer that neither sends nor takes a byte for this long is dropped.
STALL_TIMEOUT_S = 120.0
# The unread rest of a body that is drained after the answer (instead of closing): at most this
# many bytes, arriving within this many seconds.
DRAIN_LIMIT = 1 << 20
DRAIN_TIMEOUT_S = 10.0
# After answering and shutting down its side, a closing connection reads (and drops) what the
# peer still sends for at most this long, so that the peer reads the answer before the close
# (closing with unread bytes would reset the connection and could destroy the answer).
LINGER_TIMEOUT_S = 2.0
# Methods whose body OSS ignores: answered without waiting for a declared body.
BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
T = TypeVar("T")
# What a request target and a header value may not hold (searched by regex: a loop over the
# bytes in Python cost more than the rest of the head's parsing).
_BAD_TARGET_BYTE = re.compile(rb"[\x00-\x20\x7f-\xff]")
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+\Z")


class ProtocolError(Exception):
    """The peer broke HTTP framing; answer `status` (if still possible) and close."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class PeerGoneError(Exception):
    """The peer closed or reset the connection in the middle of a message."""


@dataclass(frozen=True)
class FileSegment:
    """`length` bytes of the file at `path` from `offset` (opened when its turn comes)."""

    path: str
    offset: int
    length: int


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # A body from files: the segments in order. `release` runs once the response is done
    # with them (sent, failed or abandoned): the store keeps the files until then.
    segments: list[FileSegment] = field(default_factory=list)
    release: Callable[[], None] | None = None
    # HEAD: send the head with the Content-Length a GET would have, and no body.
    head_only: bool = False
    # Fault injection: reset the connection after this many body bytes.
    reset_at: int | None = None
    # The Content-Length to announce when no body is sent (HEAD).
    declared_length: int | None = None
    # A body of unknown length, sent with chunked transfer coding (a compressed GET).
    chunks: AsyncGenerator[bytes, None] | None = None
    # `body` holds an object's data (a small object kept in the index): injected resets apply
    # to it as to file segments.
    object_data: bool = False

    @property
    def content_length(self) -> int:
        if self.declared_length is not None:
            return self.declared_length
        if self.segments:
            return sum(segment.length for segment in self.segments)
        return len(self.body)

    def finish(self) -> None:
        if self.release is not None:
            release, self.release = self.release, None
            release()


class Throttle:
    """A bandwidth cap: every chunk books its transfer time on one timeline.

    `rate_bytes_per_s` is read at each chunk, so the cap can change while transfers run. A
    throttle with a `parent` (one per connection under the server's shared one) books each
    chunk on both timelines and waits for the later of the two. A chunk whose booking ends less
    than THROTTLE_QUANTUM_S ahead goes on without sleeping (the debt stays booked for the next
    one): a sleep per 16 KiB TLS record cost the server more CPU than the transfer itself.
    """

    def __init__(
        self, rate_bytes_per_s: Callable[[], float] = lambda: 0.0, parent: Throttle | None = None
    ) -> None:
        self._rate = rate_bytes_per_s
        self._parent = parent
        self._next_free = 0.0

    @property
    def active(self) -> bool:
        return self._rate() > 0 or (self._parent is not None and self._parent.active)

    def _book(self, nbytes: int, now: float) -> float:
        """When a chunk of `nbytes` booked now is through (`now` if no cap applies).

        A timeline that fell less than THROTTLE_QUANTUM_S behind `now` goes on from where it
        was: each sleep wakes a little late, and restarting from `now` lost that lateness every
        time (a 100 MB/s cap gave 80-85 MB/s). One idle for longer restarts from `now`."""
        done = now
        rate = self._rate()
        if rate > 0:
            start = self._next_free if self._next_free >= now - THROTTLE_QUANTUM_S else now
            self._next_free = start + nbytes / rate
            done = self._next_free
        if self._parent is not None:
            done = max(done, self._parent._book(nbytes, now))
        return done

    async def take(self, nbytes: int) -> None:
        if not self.active:
            return
        now = trio.current_time()
        done = self._book(nbytes, now)
        if done - now > THROTTLE_QUANTUM_S:
            await trio.sleep_until(done)


class Connection:
    """One accepted socket: buffered reads of heads, raw reads of bodies, sends."""

    def __init__(
        self, sock: trio.socket.SocketType, throttle: Throttle, zero_copy: bool = True
    ) -> None:
        self.sock = sock
        self.throttle = throttle
        # False for TLS (ossmount.server.tls): os.sendfile would bypass the encryption.
        self.zero_copy = zero_copy
        self._buffer = bytearray()

    async def _stalling(self, operation: Awaitable[T]) -> T:
        """`operation`, or PeerGoneError if the peer makes no progress for STALL_TIMEOUT_S."""
        with trio.move_on_after(STALL_TIMEOUT_S):
            return await operation
        raise PeerGoneError(f"no progress for {STALL_TIMEOUT_S} s")

    async def _wait_writable(self, fd: int) -> None:
        with trio.move_on_after(STALL_TIMEOUT_S):
            await trio.lowlevel.wait_writable(fd)
            return
        raise PeerGoneError(f"no progress for {STALL_TIMEOUT_S} s")

    async def _fill(self, size: int = 65536, *, stalling: bool = True) -> bool:
        """Read more into the buffer; False at EOF. `stalling=False`: the caller's own timeout
        bounds the wait (one cancel scope fewer per request)."""
        try:
            receive = self.sock.recv(size)
            data = await (self._stalling(receive) if stalling else receive)
        except OSError as exc:
            raise PeerGoneError(str(exc)) from exc
        if not data:
            return False
        self._buffer += data
        return True

    async def read_head(self) -> bytes | None:
        """The bytes of the next request head (without the blank line); None at a clean EOF.
        Only under the caller's idle timeout (serve_connection), which bounds its waits."""
        searched = 0
        while True:
            end = self._buffer.find(b"\r\n\r\n", max(0, searched - 3))
            if end > MAX_HEAD_BYTES:
                raise ProtocolError("request head too large", 431)
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                return head
            searched = len(self._buffer)
            if searched > MAX_HEAD_BYTES:
                raise ProtocolError("request head too large", 431)
            if not await self._fill(stalling=False):
                if self._buffer.strip():
                    raise PeerGoneError("connection closed inside a request head")
                return None

    async def read_line(self) -> bytes:
        searched = 0
        while True:
            end = self._buffer.find(b"\r\n", max(0, searched - 1))
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            searched = len(self._buffer)
            if searched > MAX_LINE_BYTES:
                raise ProtocolError("line too long")
            if not await self._fill():
                raise PeerGoneError("connection closed inside a chunked body")

    def take_buffered(self, max_bytes: int) -> int:
        """Drop up to `max_bytes` of what is already buffered (no socket read); -> how many."""
        count = min(max_bytes, len(self._buffer))
        del self._buffer[:count]
        return count

    async def receive(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` from the buffer, or else straight from the socket."""
        if self._buffer:
            data = bytes(self._buffer[:max_bytes])
            del self._buffer[:max_bytes]
        else:
            try:
                data = await self._stalling(self.sock.recv(max_bytes))
            except OSError as exc:
                raise PeerGoneError(str(exc)) from exc
            if not data:
                raise PeerGoneError("connection closed inside a request body")
        await self.throttle.take(len(data))
        return data

    async def receive_into(self, view: memoryview) -> int:
        """Like receive(), into `view` (no allocation per read)."""
        if self._buffer:
            count = min(len(view), len(self._buffer))
            view[:count] = self._buffer[:count]
            del self._buffer[:count]
        else:
            try:
                count = await self._stalling(self.sock.recv_into(view))
            except OSError as exc:
                raise PeerGoneError(str(exc)) from exc
            if not count:
                raise PeerGoneError("connection closed inside a request body")
        await self.throttle.take(count)
        return count

    async def send_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = await self._stalling(self.sock.send(view))
                view = view[sent:]
        except OSError as exc:
            raise PeerGoneError(str(exc)) from exc

    async def send_segments(self, segments: list[FileSegment], limit: int | None) -> None:
        """Send the file segments (at most `limit` bytes in all)."""
        remaining = sum(segment.length for segment in segments) if limit is None else limit
        for segment in segments:
            if remaining <= 0:
                return
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                length = min(segment.length, remaining)
                await self._send_file(fd, segment.offset, length)
                remaining -= length
            finally:
                os.close(fd)

    async def _send_file(self, fd: int, offset: int, remaining: int) -> None:
        """sendfile (zero copy); over TLS, the TLS socket's send_file (a worker thread); pread +
        send if throttled."""
        send_file = getattr(self.sock, "send_file", None)
        if send_file is not None and not self.throttle.active:
            try:
                await send_file(fd, offset, remaining, STALL_TIMEOUT_S)
            except OSError as exc:
                raise PeerGoneError(str(exc)) from exc
            return
        out_fd = self.sock.fileno()
        while remaining > 0:
            if self.throttle.active or not self.zero_copy:
                piece = THROTTLED_PIECE if self.throttle.active else RECEIVE_SIZE
                chunk = os.pread(fd, min(remaining, piece), offset)
                if not chunk:
                    raise PeerGoneError("file shrank while being sent")
                await self.throttle.take(len(chunk))
                await self.send_all(chunk)
                sent = len(chunk)
            else:
                try:
                    sent = os.sendfile(out_fd, fd, offset, min(remaining, SENDFILE_CHUNK))
                except BlockingIOError:
                    await self._wait_writable(out_fd)
                    continue
                except OSError as exc:
                    raise PeerGoneError(str(exc)) from exc
                if sent == 0:
                    raise PeerGoneError("file shrank while being sent")
                # Let other tasks run between big chunks on a fast socket.
                await trio.lowlevel.checkpoint()
            offset += sent
            remaining -= sent

    def abort(self) -> None:
        """Reset the connection (RST instead of FIN)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Body:
    """A request body: `receive_some` until it returns b"" (Content-Length or chunked)."""

    def __init__(
        self, conn: Connection, content_length: int | None, chunked: bool, expect_continue: bool
    ) -> None:
        self._conn = conn
        self.declared_length = content_length
        self.chunked = chunked
        self._remaining = content_length or 0
        self._chunk_left = 0
        self.received = 0
        self.complete = not chunked and not content_length
        self.continue_pending = expect_continue and not self.complete
        self.reset_after: int | None = None  # fault injection: abort after this many bytes

    def drop_buffered(self) -> None:
        """Count what of the rest of a Content-Length body already arrived as read, without
        waiting for more."""
        if self.complete or self.chunked or self.continue_pending or self.reset_after is not None:
            return
        count = self._conn.take_buffered(self._remaining)
        self.received += count
        self._remaining -= count
        self.complete = self._remaining == 0

    def leftover_fits(self, limit: int) -> bool:
        """Whether the unread rest is at most `limit` bytes, as far as is known."""
        return self.declared_length is None or self.declared_length - self.received <= limit

    async def _allowance(self, max_bytes: int) -> int:
        """How many bytes the next raw read may take; 0 once the body is complete."""
        if self.complete:
            return 0
        if self.continue_pending:
            self.continue_pending = False
            await self._conn.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.reset_after is not None:
            if self.received >= self.reset_after:
                self._conn.abort()
                raise PeerGoneError("injected reset")
            max_bytes = max(1, min(max_bytes, self.reset_after - self.received))
        if not self.chunked:
            return min(max_bytes, self._remaining)
        if self._chunk_left == 0:
            line = await self._conn.read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size < 0:
                raise ProtocolError("bad chunk size")
            if size == 0:
                while await self._conn.read_line():
                    pass  # trailer fields are ignored
                self.complete = True
                return 0
            self._chunk_left = size
        return min(max_bytes, self._chunk_left)

    async def _consumed(self, nbytes: int) -> None:
        self.received += nbytes
        if not self.chunked:
            self._remaining -= nbytes
            self.complete = self._remaining == 0
            return
        self._chunk_left -= nbytes
        if self._chunk_left == 0 and await self._conn.read_line() != b"":
            raise ProtocolError("chunk not followed by CRLF")

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        """The next piece of the body (b"" at its end)."""
        allowed = await self._allowance(max_bytes)
        if allowed == 0:
            return b""
        data = await self._conn.receive(allowed)
        await self._consumed(len(data))
        return data

    async def receive_into(self, view: memoryview) -> int:
        """Fill the start of `view` with the next piece of the body; 0 at its end."""
        allowed = await self._allowance(len(view))
        if allowed == 0:
            return 0
        received = await self._conn.receive_into(view[:allowed])
        await self._consumed(received)
        return received

    async def read_all(self, limit: int) -> bytes:
        """The whole body; ProtocolError(413) if it is larger than `limit`."""
        if self.declared_length is not None and self.declared_length > limit:
            raise ProtocolError("request body too large", 413)
        parts = []
        total = 0
        while data := await self.receive_some():
            total += len(data)
            if total > limit:
                raise ProtocolError("request body too large", 413)
            parts.append(data)
        return b"".join(parts)


@dataclass
class Request:
    method: str
    target: str
    raw_path: str  # percent-encoded, as sent
    path: str  # decoded (UTF-8)
    query: list[tuple[str, str | None]]  # decoded; None for a bare name (`?uploads`)
    headers: dict[str, str]  # lower-case names; repeated fields joined with ","
    body: Body
    version: str
    peer: str
    request_id: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    def param(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value if value is not None else ""
        return None

    def has_param(self, name: str) -> bool:
        return any(key == name for key, _ in self.query)


def parse_query(raw_query: str) -> list[tuple[str, str | None]]:
    result: list[tuple[str, str | None]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, sep, value = item.partition("=")
        result.append(
            (
                unquote_plus(name, errors="strict"),
                unquote_plus(value, errors="strict") if sep else None,
            )
        )
    return result


def parse_head(head: bytes, conn: Connection, peer: str) -> Request:
    lines = head.split(b"\r\n")
    request_line = lines[0]
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ProtocolError("malformed request line")
    method_bytes, target_bytes, version_bytes = parts
    if not _TOKEN.match(method_bytes):
        raise ProtocolError("malformed method")
    if not target_bytes or _BAD_TARGET_BYTE.search(target_bytes):
        raise ProtocolError("malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ProtocolError("malformed header field")
        if _BAD_VALUE_BYTE.search(value):
            raise ProtocolError("control character in header value")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("utf-8", errors="surrogateescape")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    target = target_bytes.decode("ascii")
    raw_path, _, raw_query = target.partition("?")
    if raw_path.startswith(("http://", "https://")):  # absolute-form
        rest = raw_path.split("://", 1)[1]
        raw_path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if not raw_path.startswith("/"):
        raise ProtocolError("request target is not a path")
    try:
        path = unquote(raw_path, errors="strict")
        query = parse_query(raw_query)
    except UnicodeDecodeError:
        raise ProtocolError("request target is not UTF-8") from None

    chunked = False
    if "transfer-encoding" in headers:
        codings = [item.strip().lower() for item in headers["transfer-encoding"].split(",")]
        if codings != ["chunked"]:
            raise ProtocolError("unsupported transfer coding", 501)
        if "content-length" in headers:
            raise ProtocolError("both Content-Length and Transfer-Encoding")
        chunked = True
    content_length: int | None = None
    if "content-length" in headers:
        values = {item.strip() for item in headers["content-length"].split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ProtocolError("bad Content-Length")
        content_length = int(next(iter(values)))
    expect = headers.get("expect", "").lower() == "100-continue"
    body = Body(conn, content_length, chunked, expect)
    return Request(
        method=method_bytes.decode("ascii"),
        target=target,
        raw_path=raw_path,
        path=path,
        query=query,
        headers=headers,
        body=body,
        version=version_bytes.decode("ascii"),
        peer=peer,
    )


def wants_close(request: Request) -> bool:
    connection = request.header("connection").lower()
    if request.version == "HTTP/1.0":
        return "keep-alive" not in connection
    return "close" in connection


def encode_head(response: Response, close: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    if response.chunks is not None and not response.head_only:
        lines.append("Transfer-Encoding: chunked")
    elif response.status != 304:
        lines.append(f"Content-Length: {response.content_length}")
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", errors="surrogateescape")


# What the application hands us: a request in, a response out.
Handler = Callable[[Request], Awaitable[Response]]
# Called when the head could not be parsed: status, message -> response.
ErrorResponder = Callable[[int, str], Response]


async def serve_connection(
    sock: trio.socket.SocketType,
    peer: str,
    handler: Handler,
    on_bad_request: ErrorResponder,
    throttle: Throttle,
    idle_timeout_s: float = 120.0,
    zero_copy: bool = True,
) -> None:
    """Serve requests on one socket until the peer closes or a request asks to close."""
    conn = Connection(sock, throttle, zero_copy)
    try:
        while True:
            with trio.move_on_after(idle_timeout_s) as idle:
                try:
                    head = await conn.read_head()
                except ProtocolError as exc:
                    await _send_error_and_close(conn, on_bad_request(exc.status, str(exc)))
                    return
            if idle.cancelled_caught or head is None:
                return
            try:
                request = parse_head(head, conn, peer)
            except ProtocolError as exc:
                await _send_error_and_close(conn, on_bad_request(exc.status, str(exc)))
                return
            try:
                response = await handler(request)
            except ProtocolError as exc:
                await _send_error_and_close(conn, on_bad_request(exc.status, str(exc)))
                return
            body = request.body
            try:
                close = wants_close(request)
                body.drop_buffered()
                # Answered now; a small leftover of a PUT or POST is drained afterwards (cheaper
                # than a new connection). Anything else closes: a body held back for
                # 100-continue, a large one, or one declared on a GET, HEAD or DELETE, which may
                # never come (and, kept alive, would swallow the next request).
                drain_after = not body.complete and not close
                if drain_after and (
                    request.method in BODILESS_METHODS
                    or body.continue_pending
                    or not body.leftover_fits(DRAIN_LIMIT)
                ):
                    close, drain_after = True, False
                await _send_response(conn, response, close)
            finally:
                response.finish()
            if close:
                if not body.complete:
                    await _linger_close(conn)
                return
            if drain_after and not await _drain(body, DRAIN_LIMIT):
                return
    except PeerGoneError as exc:
        log.debug("connection from %s ended: %s", peer, exc)
    except Exception:
        # One connection's failure must never take the server down.
        log.exception("connection from %s failed", peer)
    finally:
        _close_quietly(sock)


async def _drain(body: Body, limit: int) -> bool:
    """Read the rest of the body (at most `limit` bytes, within DRAIN_TIMEOUT_S); -> whether
    it ended, so that the connection can serve the next request."""
    if not body.leftover_fits(limit):
        return False
    drained = 0
    ended = False
    with trio.move_on_after(DRAIN_TIMEOUT_S):
        try:
            while data := await body.receive_some():
                drained += len(data)
                if drained > limit:
                    return False
        except ProtocolError:
            return False
        ended = True
    return ended


async def _linger_close(conn: Connection) -> None:
    """Close after an answer with a body still unread: shut our side down (the peer sees the
    end of the answer) and drop what the peer still sends, until it closes, DRAIN_LIMIT bytes
    or LINGER_TIMEOUT_S, so that our close does not reset the connection under the answer."""
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_WR)
    dropped = conn.take_buffered(DRAIN_LIMIT)
    with trio.move_on_after(LINGER_TIMEOUT_S), contextlib.suppress(OSError):
        while dropped < DRAIN_LIMIT and (data := await conn.sock.recv(65536)):
            dropped += len(data)


async def _send_response(conn: Connection, response: Response, close: bool) -> None:
    head = encode_head(response, close)
    if response.head_only or response.status == 304:
        await conn.send_all(head)
        return
    if response.chunks is not None:
        await conn.send_all(head)
        await _send_chunked(conn, response.chunks)
        return
    small = _small_body(conn, response)
    if small is not None:
        # One send for head and body: a small GET costs one syscall instead of an open,
        # a send, a sendfile and a close.
        await conn.send_all(head + small)
        return
    await conn.send_all(head)
    await _send_body(conn, response, response.reset_at)


async def _send_chunked(conn: Connection, chunks: AsyncGenerator[bytes, None]) -> None:
    try:
        async for chunk in chunks:
            if chunk:
                await conn.throttle.take(len(chunk))
                await conn.send_all(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    finally:
        await chunks.aclose()
    await conn.send_all(b"0\r\n\r\n")


def _small_body(conn: Connection, response: Response) -> bytes | None:
    """The whole body if it is small enough to go out with the head (None otherwise, or when
    a bandwidth cap or an injected reset needs to see the bytes go)."""
    if response.reset_at is not None or conn.throttle.active:
        return None
    if not response.segments:
        return response.body
    if response.content_length > SMALL_RESPONSE:
        return None
    pieces = []
    for segment in response.segments:
        fd = os.open(segment.path, os.O_RDONLY)
        try:
            data = os.pread(fd, segment.length, segment.offset)
        finally:
            os.close(fd)
        if len(data) != segment.length:
            raise PeerGoneError("file shrank while being sent")
        pieces.append(data)
    return b"".join(pieces)


async def _send_body(conn: Connection, response: Response, reset_at: int | None) -> None:
    if response.segments:
        await conn.send_segments(response.segments, reset_at)
    elif response.body:
        body = response.body if reset_at is None else response.body[:reset_at]
        if conn.throttle.active:
            view = memoryview(body)
            for start in range(0, len(view), 64 * 1024):
                chunk = view[start : start + 64 * 1024]
                await conn.throttle.take(len(chunk))
                await conn.send_all(chunk)
        else:
            await conn.send_all(body)
    if reset_at is not None and reset_at < response.content_length:
        conn.abort()
        raise PeerGoneError("injected reset")


async def _send_error_and_close(conn: Connection, response: Response) -> None:
    with contextlib.suppress(PeerGoneError):
        await conn.send_all(encode_head(response, close=True) + response.body)


def _close_quietly(sock: trio.socket.SocketType) -> None:
    try:
        sock.close()
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
