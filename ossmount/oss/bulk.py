"""Ranged GETs whose bodies worker threads receive: the bulk read path of the mount.

Why
---
The mount answers FUSE and runs HTTP in one trio thread. On a large sequential read that thread is
CPU-bound, and most of its time goes to receiving bodies: the kernel's copy of every byte out of
the socket, plus httpcore/h11 handing each 64 KiB on through several layers, plus, over https,
trio's Python-level TLS pump. Here a worker thread receives the body instead, over a blocking
connection of :mod:`ossmount.oss.http1` (the client's one fast transport): on a plain socket
``recv(n, MSG_WAITALL)`` fills one whole piece (a block of the read cache) in one system call
with the GIL released, and the pieces are ``bytes`` objects the kernel wrote into directly; on
a TLS socket OpenSSL decrypts into a buffer with the GIL released, record after record. Either
way that work runs on the other core, and the trio thread only takes finished pieces.

What it shares with the client
------------------------------
Nothing is decided twice. Requests are built and signed by :meth:`OssClient.signed_request`
(the same URL style, headers and V1/V4 signature) and go over the client's connection pools
(:attr:`OssClient.pools`: the same TLS context and proxy); error answers become the client's
exception tree through :func:`ossmount.oss.errors.error_from_response`; opening a GET (connect,
request, response head) is retried by the client's :class:`~ossmount.oss.retry.RetryPolicy`; a
body that breaks off raises :class:`OssConnectionError` from the iteration, for the caller to
resume from the byte it reached (as :mod:`ossmount.fs.reader` does with the client's streams). A
whole-object body is checked against ``x-oss-hash-crc64ecma`` like the client's downloads.

Any client that really uses the network is served, over http or https, directly or through a
proxy (:func:`BulkGetter.supports`); callers use :meth:`OssClient.open_object` otherwise.

Threads, connections, cancellation
----------------------------------
One GET runs in one thread of trio's thread cache (``trio.lowlevel.start_thread_soon``), from
connect to the last piece, and hands each event (the response head, a piece, the end, a failure)
to the trio thread with ``TrioToken.run_sync_soon`` into an unbounded memory channel: the GET's
range bounds what it can hold, and the caller bounds the GETs in flight. Idle connections are kept
in the client's pools for the next request; a kept connection that the server closed meanwhile
is replaced once, before any answer byte, without counting as an attempt.

Closing a body early (cancellation, an error of the consumer) sets a stop flag and shuts the
socket down, which wakes the thread out of ``recv``; shutdown and close happen under one lock, so
a descriptor is never shut down after it was closed and reused.

Memory
------
Pieces are allocated in the worker threads and freed in the trio thread when the cache evicts
them. With glibc's defaults every thread allocates from an arena of its own and 1 MiB blocks sit
near the dynamic mmap threshold, so freed pieces keep going back to the kernel and new ones fault
their pages in again (about 100,000 page faults per GiB read) while the arenas fragment. The first
:class:`BulkGetter` therefore asks glibc (``mallopt``) for one arena, a fixed mmap threshold above
the piece size and a higher trim threshold: freed pieces are reused as they are. Measured on a
1 GiB read through the mount: page faults 100,000 -> 32,000, CPU of the receiving threads 0.33 ->
0.25 s, peak RSS 170-210 -> 135-140 MiB.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import outcome
import trio

# The client's own parsers of a GET's headers: one decision, one place.
from ossmount.oss.client import _object_info, _parse_content_range
from ossmount.oss.counters import RequestCounters
from ossmount.oss.crc64 import crc64
from ossmount.oss.errors import (
    IntegrityError,
    OssProtocolError,
    connection_error,
    error_from_response,
)
from ossmount.oss.http1 import Connection, ConnectionPool, ResponseHead, request_bytes
from ossmount.oss.model import ObjectInfo

if TYPE_CHECKING:
    from ossmount.oss.client import OssClient

log = logging.getLogger(__name__)

# An error document longer than this is not read (the status still tells the error).
_ERROR_BODY_LIMIT = 1024 * 1024
# Pieces a GET's thread may have received ahead of its consumer; how often a thread waiting
# for room looks whether its GET was stopped.
_PIECES_AHEAD = 4
_ROOM_CHECK_S = 0.5


@dataclass(frozen=True)
class _Opened:
    info: ObjectInfo


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _End:
    pass


_Event = _Opened | _Failure | _End | bytes


# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Make glibc reuse freed pieces instead of returning them to the kernel (see Memory)."""
    global _MALLOC_TUNED  # noqa: PLW0603 (once per process)
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt (not glibc): malloc left as it is")
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_ARENA_MAX, 1)
    mallopt(_M_MMAP_THRESHOLD, 8 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 128 * 1024 * 1024)


class _Exchange:
    """One GET of bytes ``[start, end_inclusive]`` on one connection, run by a worker thread
    (:meth:`run`); its events reach the trio thread through ``send``. :meth:`stop` (trio thread)
    ends it early."""

    def __init__(
        self,
        pool: ConnectionPool,
        request: bytes,
        key: str,
        byte_range: tuple[int, int],
        piece_size: int,
        token: trio.lowlevel.TrioToken,
        send: trio.MemorySendChannel[_Event],
    ) -> None:
        self._pool = pool
        self._request = request
        self._key = key
        self._what = f"GET {key}"
        self._range = byte_range
        self._piece_size = piece_size
        self._token = token
        self._send = send
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._stopped = False
        # Pieces received and not yet taken by the consumer, at most: a consumer that waits
        # (for a disk, say) holds the socket back instead of piling up the whole range here.
        self._room = threading.Semaphore(_PIECES_AHEAD)

    # -- trio thread -----------------------------------------------------------------------

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._connection is not None:
                self._connection.shutdown()
        self._room.release()  # a thread waiting for room sees the stop

    def piece_taken(self) -> None:
        self._room.release()

    def _deliver(self, event: _Event) -> None:
        # A consumer that is gone drops the event; the thread stops at its next check.
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(event)

    # -- worker thread ---------------------------------------------------------------------

    def _wait_for_room(self) -> None:
        while not self._room.acquire(timeout=_ROOM_CHECK_S):
            if self._stopped:
                raise ConnectionAbortedError("stopped")
        if self._stopped:
            raise ConnectionAbortedError("stopped")

    def _post(self, event: _Event) -> None:
        try:
            self._token.run_sync_soon(self._deliver, event)
        except trio.RunFinishedError:
            self.stop()

    def run(self) -> None:
        sock: Connection | None = None
        reusable = False
        try:
            sock, head = self._send_request()
            # A kept connection goes back to the pool before the last event is posted: the
            # consumer may start its next GET as soon as it sees that event.
            if head.status >= 300:
                body, keep_alive = self._error_body(sock, head)
                reusable = self._detach(keep_alive)
                error = error_from_response(head.status, head.headers, body, method="GET")
                self._release(sock, reusable)
                sock = None
                self._post(_Failure(error))
                return
            info, expected_crc64 = _check_head(self._key, head, *self._range)
            self._post(_Opened(info))
            self._receive_body(sock, expected_crc64)
            reusable = self._detach(head.keep_alive)
            self._release(sock, reusable)
            sock = None
            self._post(_End())
        except OSError as exc:
            if not self._stopped:
                self._post(_Failure(connection_error(self._what, exc)))
        except Exception as exc:  # an OssError, or a bug: either way the consumer raises it
            self._post(_Failure(exc))
        finally:
            with self._lock:
                self._connection = None
            if sock is not None:
                self._release(sock, reusable)

    def _release(self, sock: Connection, reusable: bool) -> None:
        """Keep the connection for the next GET, or close it."""
        if reusable:
            self._pool.give_back(sock)
        else:
            sock.close()

    def _detach(self, keep_alive: bool) -> bool:
        """The exchange is over: from now on stop() leaves the socket alone (the consumer stops
        the exchange when it sees the last event, while the socket may go back to the pool).
        Whether the socket may be kept."""
        with self._lock:
            self._connection = None
            return keep_alive and not self._stopped

    def _send_request(self) -> tuple[Connection, ResponseHead]:
        """Connect (or reuse), send the request, read the head. A reused connection that fails
        before any answer byte is replaced once by a new one."""
        while True:
            sock, reused = self._pool.take()
            with self._lock:
                if self._stopped:
                    sock.close()
                    raise ConnectionError("stopped")
                self._connection = sock
            try:
                sock.send_all(self._request)
                return sock, sock.receive_head()
            except OSError as exc:
                with self._lock:
                    self._connection = None
                sock.close()
                if not reused or self._stopped:
                    raise
                log.debug("%s: kept connection was dead (%r); reconnecting", self._what, exc)
            except BaseException:
                with self._lock:
                    self._connection = None
                sock.close()
                raise

    @staticmethod
    def _error_body(sock: Connection, head: ResponseHead) -> tuple[bytes, bool]:
        length = head.headers.get("content-length", "")
        if not length.isdigit() or int(length) > _ERROR_BODY_LIMIT:
            return b"", False
        return sock.receive_exactly(int(length)) if int(length) else b"", head.keep_alive

    def _receive_body(self, sock: Connection, expected_crc64: int | None) -> None:
        piece_size = self._piece_size
        position, last = self._range
        crc = 0
        while position <= last:
            piece_end = min((position // piece_size + 1) * piece_size, last + 1)
            piece = sock.receive_exactly(piece_end - position)
            if self._stopped:
                return
            if expected_crc64 is not None:
                crc = crc64(piece, crc)
            self._wait_for_room()
            self._post(piece)
            position = piece_end
        if expected_crc64 is not None and crc != expected_crc64:
            raise IntegrityError(
                f"{self._what}: CRC-64 mismatch (local {crc}, server {expected_crc64})"
            )


def _check_head(
    key: str, head: ResponseHead, start: int, end_inclusive: int
) -> tuple[ObjectInfo, int | None]:
    """(object info, CRC-64 to check the body with, or None) of a 2xx answer to a range
    request; OssProtocolError when it does not deliver exactly that range."""
    headers = head.headers
    parsed = _parse_content_range(headers.get("content-range"))
    length = headers.get("content-length", "")
    if (
        head.status != 206
        or parsed is None
        or parsed[:2] != (start, end_inclusive)
        or "transfer-encoding" in headers
        or length != str(end_inclusive - start + 1)
    ):
        raise OssProtocolError(
            f"GET {key}: asked for bytes {start}-{end_inclusive}, got HTTP {head.status} with "
            f"Content-Range {headers.get('content-range')!r}, Content-Length {length!r}",
            status=head.status,
            request_id=headers.get("x-oss-request-id"),
        )
    total = parsed[2] if parsed[2] is not None else end_inclusive + 1
    info = _object_info(key, headers, size=total)
    whole = start == 0 and end_inclusive + 1 == total
    return info, info.crc64 if whole else None


class BulkBody:
    """The body of one ranged GET: ``info`` (the object's metadata; its size is the whole
    object's) and, by iteration, the pieces in order, each ending at a multiple of the piece
    size in object offsets or at the end of the range."""

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[_Event],
        info: ObjectInfo,
        counters: RequestCounters | None = None,
        piece_taken: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self.info = info
        self._counters = counters
        self._piece_taken = piece_taken

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._receive.receive()
            if isinstance(event, bytes):
                if self._piece_taken is not None:
                    self._piece_taken()
                if self._counters is not None:
                    self._counters.bytes_in += len(event)
                yield event
            elif isinstance(event, _End):
                return
            elif isinstance(event, _Failure):
                raise event.error
            else:
                raise OssProtocolError(f"unexpected {type(event).__name__} in a body")


class BulkGetter:
    """Ranged GETs to one client's endpoint, their bodies received by worker threads."""

    def __init__(self, client: OssClient) -> None:
        if not self.supports(client):
            raise ValueError(f"{client!r}: bulk GETs need a client that uses the network")
        self._client = client
        _tune_malloc()

    @staticmethod
    def supports(client: OssClient) -> bool:
        """True when the client's requests can go over its own sockets (no test transport)."""
        return client.pools is not None

    def close(self) -> None:
        """Nothing of its own: the connections are the client's (closed with it)."""

    @asynccontextmanager
    async def open_range(
        self,
        bucket: str,
        key: str,
        start: int,
        end_inclusive: int,
        *,
        if_match: str | None,
        piece_size: int,
    ) -> AsyncIterator[BulkBody]:
        """GET bytes ``[start, end_inclusive]`` of bucket/key (``x-oss-range-behavior:
        standard``, ``If-Match`` when given): ``async with getter.open_range(...) as body``,
        then ``async for piece in body``. Raises the client's OssError subclasses: from opening,
        after the client's retries; from the iteration, when the body breaks off
        (OssConnectionError) or a whole-object body fails its CRC-64 (IntegrityError)."""
        if start < 0 or end_inclusive < start or piece_size <= 0:
            raise ValueError("bad range or piece size")
        headers = {"x-oss-range-behavior": "standard", "Range": f"bytes={start}-{end_inclusive}"}
        if if_match is not None:
            headers["If-Match"] = if_match

        async def attempt() -> tuple[_Exchange, trio.MemoryReceiveChannel[_Event], ObjectInfo]:
            request = self._client.signed_request("GET", bucket, key, headers)
            return await self._open(request, key, (start, end_inclusive), piece_size)

        exchange, receive, info = await self._client.counted_call(
            "GetObject", attempt, what=f"GET {bucket}/{key}"
        )
        try:
            yield BulkBody(receive, info, self._client.counters, exchange.piece_taken)
        finally:
            exchange.stop()
            receive.close()

    async def _open(
        self, request: httpx.Request, key: str, byte_range: tuple[int, int], piece_size: int
    ) -> tuple[_Exchange, trio.MemoryReceiveChannel[_Event], ObjectInfo]:
        send, receive = trio.open_memory_channel[_Event](math.inf)
        assert self._client.pools is not None
        pool = self._client.pools.for_url(request.url)
        exchange = _Exchange(
            pool,
            request_bytes(request, absolute_form=pool.route.absolute_form),
            key,
            byte_range,
            piece_size,
            trio.lowlevel.current_trio_token(),
            send,
        )
        trio.lowlevel.start_thread_soon(exchange.run, _log_crash, name=f"ossmount GET {key}")
        try:
            info = _opened_info(await receive.receive())
        except BaseException:
            exchange.stop()
            receive.close()
            raise
        return exchange, receive, info


def _opened_info(event: _Event) -> ObjectInfo:
    """The first event of a GET: the object's info, or the GET's failure raised."""
    if isinstance(event, _Failure):
        raise event.error
    if not isinstance(event, _Opened):
        raise OssProtocolError(f"a GET began with {type(event).__name__}, not its head")
    return event.info


def _log_crash(result: outcome.Outcome[None]) -> None:
    # Exchange.run catches everything it can meet; this is for bugs in it.
    if isinstance(result, outcome.Error):
        log.error("bulk GET thread failed: %r", result.error)
