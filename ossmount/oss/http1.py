"""HTTP/1.1 without httpx, for the two hot paths that httpx makes CPU-bound.

The client signs every request with httpx (:meth:`OssClient.signed_request`), and most requests
go through it; two kinds do not, because the mount sends them by the thousand and httpx's
per-request cost dominates there:

- ranged GET bodies, received by worker threads over blocking sockets (:mod:`ossmount.oss.bulk`);
- HEADs (exact metadata for a listing: one per file), sent here on trio sockets: about 0.13 ms of
  CPU each against 0.76 ms through httpx (measured, 5,000 HEADs, 32 at a time, loopback).

This module holds what both share, the parsing of a response head, and the HEAD connections.
Only plain ``http`` endpoints: https keeps httpx (and its TLS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx
import trio

from ossmount.oss.errors import OssProtocolError

# A response head longer than this is refused (OSS sends a few hundred bytes).
HEAD_LIMIT = 64 * 1024


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


def request_bytes(request: httpx.Request) -> bytes:
    """A request without a body as it goes on the wire (httpx built and signed it)."""
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


class _ClosedBeforeAnswerError(Exception):
    """A kept connection the server had closed: nothing was answered, so sending again is safe."""


class HeadConnections:
    """Kept-alive trio connections for HEAD requests (answers have no body), to the host each
    request's URL names (the endpoint, or bucket.endpoint in virtual-host style).

    Callers bound the concurrency; up to ``max_idle`` connections per host are kept. Kept
    connections that the server closed meanwhile are passed over (nothing was answered on
    them, so sending again is safe) without counting as an attempt. Network failures raise
    OSError or ``trio.TooSlowError`` (after ``timeout_s``); the client maps them onto its error
    tree.
    """

    def __init__(self, *, timeout_s: float, max_idle: int) -> None:
        self._timeout_s = timeout_s if timeout_s > 0 else math.inf
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], list[trio.SocketStream]] = {}
        self._closed = False

    async def head(self, request: httpx.Request) -> ResponseHead:
        address = (request.url.host, request.url.port or 80)
        idle = self._idle.setdefault(address, [])
        wire = request_bytes(request)
        with trio.fail_after(self._timeout_s):
            while idle:
                stream = idle.pop()
                try:
                    return await self._exchange(stream, wire, idle)
                except _ClosedBeforeAnswerError:
                    continue
            stream = await trio.open_tcp_stream(*address)
            try:
                return await self._exchange(stream, wire, idle)
            except _ClosedBeforeAnswerError:
                raise ConnectionResetError("connection closed before the response head") from None

    async def _exchange(
        self, stream: trio.SocketStream, wire: bytes, idle: list[trio.SocketStream]
    ) -> ResponseHead:
        kept = False
        try:
            try:
                await stream.send_all(wire)
                data = await stream.receive_some(HEAD_LIMIT)
            except (trio.BrokenResourceError, OSError) as exc:
                raise _ClosedBeforeAnswerError from exc
            if not data:
                raise _ClosedBeforeAnswerError
            while (end := data.find(b"\r\n\r\n")) < 0:
                if len(data) >= HEAD_LIMIT:
                    raise OssProtocolError(f"response head longer than {HEAD_LIMIT} bytes")
                more = await stream.receive_some(HEAD_LIMIT)
                if not more:
                    raise ConnectionResetError("connection closed within the response head")
                data += more
            head = parse_response_head(data[:end])
            # Bytes after the head would be a body a HEAD answer must not have: not reusable.
            kept = head.keep_alive and end + 4 == len(data) and not self._closed
            if kept and len(idle) < self._max_idle:
                idle.append(stream)
            else:
                kept = False
            return head
        finally:
            if not kept:
                await stream.aclose()

    async def aclose(self) -> None:
        self._closed = True
        pools, self._idle = self._idle, {}
        for idle in pools.values():
            for stream in idle:
                await stream.aclose()
