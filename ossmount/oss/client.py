"""OssClient: the async OSS REST client (trio + httpx).

One :class:`OssClient` holds one httpx connection pool, sized by ``max_connections``. Every call
goes through :meth:`OssClient._request`, which builds the URL (path style for IP and localhost
endpoints, virtual-host style otherwise), lets the signer (``httpx.Auth``) sign it with the bucket
and key passed as request extensions, turns error answers into the :mod:`ossmount.oss.errors`
tree, and retries transient failures with the client's :class:`RetryPolicy`. A request body is
re-sent from its start on each attempt: bytes as they are, files re-read from their offset; a
caller's one-shot async stream cannot be replayed, so such uploads get a single attempt.

Integrity: every upload is compared with the server's ``x-oss-hash-crc64ecma``, and so is every
download of a whole object; a mismatch raises :class:`IntegrityError`.

Object bodies are read with ``Response.aiter_raw()`` and handed on chunk by chunk as the network
delivers them (no re-chunking, no decoding).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from http.client import HTTPResponse
from http.cookiejar import CookieJar
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self, TypeVar
from urllib.parse import quote, unquote
from urllib.request import Request

import httpcore._async.http11 as httpcore_http11
import httpx
import trio

from ossmount.oss import xml as oss_xml
from ossmount.oss.counters import PROCESS_COUNTERS, RequestCounters, operation_name
from ossmount.oss.crc64 import Crc64, crc64, crc64_combine
from ossmount.oss.errors import (
    IntegrityError,
    NoSuchUpload,
    OssConnectionError,
    OssError,
    OssProtocolError,
    PositionNotEqualToLength,
    connection_error,
    error_from_response,
)
from ossmount.oss.http1 import Answer, BodyError, Exchanges, Pools, RequestBody
from ossmount.oss.model import (
    AppendResult,
    BucketInfo,
    BucketSummary,
    DeleteResult,
    ListPage,
    MultipartUploadInfo,
    ObjectInfo,
    ObjectSummary,
    PartInfo,
    PutResult,
)
from ossmount.oss.network import proxy_for, tls_context
from ossmount.oss.retry import NO_RETRY, RetryPolicy
from ossmount.oss.signer import (
    BUCKET_EXTENSION,
    KEY_EXTENSION,
    Credentials,
    OssV1Auth,
    OssV4Auth,
    presign_v1,
    presign_v4,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "ossmount"
# Size of the pieces a file body is read and sent in.
FILE_CHUNK_SIZE = 1024 * 1024
# The largest answer the fast transport takes for requests other than object GETs (error
# documents, XML: a listing page of 1,000 keys is a few hundred KiB).
ANSWER_LIMIT = 64 * 1024 * 1024
# DeleteMultipleObjects takes at most this many keys per request.
DELETE_BATCH_SIZE = 1000
# The region assumed for V4 signing against IP/localhost endpoints (the bundled server), where
# the endpoint cannot name one; the bundled server accepts any region.
LOCAL_DEFAULT_REGION = "cn-hangzhou"

# httpcore reads a response 64 KiB per socket read; each read is a trip through httpcore and h11
# with copies. 1 MiB per read halves the CPU of a body received through httpx (FileReader over
# the client, 1 GiB: 1.47 -> 0.74 s per GiB, scripts/bench_read.py --reader-only). A class
# attribute of httpcore, so it holds for every httpx client of the process.
httpcore_http11.AsyncHTTP11Connection.READ_NUM_BYTES = 1024 * 1024

_ALIYUN_HOST = re.compile(r"^oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")


def is_ip_or_localhost(host: str) -> bool:
    """True for hosts that take path-style URLs: IP addresses and localhost."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def region_from_endpoint(host: str) -> str | None:
    """'oss-cn-hangzhou.aliyuncs.com' -> 'cn-hangzhou'; None when the host does not say."""
    match = _ALIYUN_HOST.match(host)
    return match.group(1) if match else None


def quote_key(key: str) -> str:
    """A key as one URL path segment, like oss2 (``/`` encoded too).

    Keys made only of dots are encoded fully, or httpx would normalise ``.``/``..`` away.
    """
    if key and set(key) == {"."}:
        return "%2E" * len(key)
    return quote(key, safe="")


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``size`` bytes of a local file from ``offset`` (to the end of the file if size is None)."""

    path: Path
    offset: int = 0
    size: int | None = None

    def resolved_size(self) -> int:
        if self.size is not None:
            return self.size
        return max(0, os.stat(self.path).st_size - self.offset)


BytesLike = bytes | bytearray | memoryview
Body = BytesLike | Path | FileSlice | AsyncIterable[bytes]


class _Payload:
    """A request body that can be sent again from its start, with the CRC-64 of what was sent."""

    def __init__(self, body: Body | None, stream_length: int | None = None) -> None:
        self._bytes: bytes | None = None
        self._slice: FileSlice | None = None
        self._stream: AsyncIterable[bytes] | None = None
        self._stream_used = False
        self.crc = Crc64()
        if body is None:
            self._bytes = b""
        elif isinstance(body, bytes | bytearray | memoryview):
            self._bytes = bytes(body)
        elif isinstance(body, Path):
            self._slice = FileSlice(body)
        elif isinstance(body, FileSlice):
            self._slice = body
        else:
            self._stream = body
        self.length: int | None
        if self._bytes is not None:
            self.length = len(self._bytes)
        elif self._slice is not None:
            self.length = self._slice.resolved_size()
        else:
            self.length = stream_length

    @property
    def replayable(self) -> bool:
        return self._stream is None

    def content(self) -> bytes | AsyncIterator[bytes]:
        """The body for one attempt; resets the CRC."""
        self.crc = Crc64()
        if self._bytes is not None:
            self.crc.update(self._bytes)
            return self._bytes
        if self._slice is not None:
            return self._read_file(self._slice, self.length or 0)
        assert self._stream is not None
        if self._stream_used:
            raise RuntimeError("a one-shot stream body cannot be sent twice")
        self._stream_used = True
        return self._relay(self._stream)

    def for_worker(self) -> bytes | Callable[[], Iterator[bytes]]:
        """The body for one attempt on the fast transport, whose worker thread sends it: the
        bytes, or a function that reads the file in pieces (and updates the CRC as it goes).
        Resets the CRC. Only for replayable bodies."""
        self.crc = Crc64()
        if self._bytes is not None:
            self.crc.update(self._bytes)
            return self._bytes
        assert self._slice is not None
        file_slice, size = self._slice, self.length or 0

        def pieces() -> Iterator[bytes]:
            # Called again when a kept connection fails: the CRC is of what was sent last.
            self.crc = crc = Crc64()
            with open(file_slice.path, "rb", buffering=0) as file:
                position, remaining = file_slice.offset, size
                while remaining > 0:
                    chunk = os.pread(file.fileno(), min(FILE_CHUNK_SIZE, remaining), position)
                    if not chunk:
                        raise OssError(f"{file_slice.path}: file shrank while being uploaded")
                    crc.update(chunk)
                    position += len(chunk)
                    remaining -= len(chunk)
                    yield chunk

        return pieces

    async def _read_file(self, file_slice: FileSlice, size: int) -> AsyncIterator[bytes]:
        crc = self.crc
        with open(file_slice.path, "rb", buffering=0) as file:
            position = file_slice.offset
            remaining = size
            while remaining > 0:
                chunk = await trio.to_thread.run_sync(
                    os.pread, file.fileno(), min(FILE_CHUNK_SIZE, remaining), position
                )
                if not chunk:
                    raise OssError(f"{file_slice.path}: file shrank while being uploaded")
                crc.update(chunk)
                position += len(chunk)
                remaining -= len(chunk)
                yield chunk

    async def _relay(self, stream: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        crc = self.crc
        async for chunk in stream:
            crc.update(chunk)
            yield chunk


def _lower_headers(response: httpx.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items()}


def _crc_header(headers: Mapping[str, str]) -> int | None:
    value = headers.get("x-oss-hash-crc64ecma")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _check_crc(what: str, local_crc: int, server_crc: int | None, request_id: str | None) -> None:
    if server_crc is not None and server_crc != local_crc:
        raise IntegrityError(
            f"{what}: CRC-64 mismatch (local {local_crc}, server {server_crc})",
            request_id=request_id,
        )


def _object_info(key: str, headers: Mapping[str, str], size: int | None = None) -> ObjectInfo:
    metadata = {
        name[len("x-oss-meta-") :]: value
        for name, value in headers.items()
        if name.startswith("x-oss-meta-")
    }
    target = headers.get("x-oss-symlink-target")
    return ObjectInfo(
        key=key,
        size=int(headers.get("content-length", "0")) if size is None else size,
        etag=headers.get("etag", ""),
        last_modified=oss_xml.parse_http_date(headers.get("last-modified", "")),
        object_type=headers.get("x-oss-object-type", ""),
        crc64=_crc_header(headers),
        content_type=headers.get("content-type"),
        metadata=MappingProxyType(metadata),
        symlink_target=unquote(target) if target is not None else None,
    )


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if not value:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        return None
    total = match.group(3)
    return int(match.group(1)), int(match.group(2)), None if total == "*" else int(total)


def _range_header(start: int, end: int | None) -> str:
    return f"bytes={start}-{'' if end is None else end}"


def _meta_headers(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {f"x-oss-meta-{name.lower()}": value for name, value in (metadata or {}).items()}


def _new_object_headers(
    metadata: Mapping[str, str] | None, headers: Mapping[str, str] | None, forbid_overwrite: bool
) -> dict[str, str]:
    """The headers of a request that creates an object: user metadata, the caller's headers,
    and ``x-oss-forbid-overwrite`` when asked for."""
    all_headers = _meta_headers(metadata)
    all_headers.update(headers or {})
    if forbid_overwrite:
        all_headers["x-oss-forbid-overwrite"] = "true"
    return all_headers


def _list_params(fixed: Mapping[str, str], optional: Mapping[str, str | None]) -> dict[str, str]:
    """The query of a listing: ``fixed``, then those of ``optional`` that are not empty."""
    params = dict(fixed)
    params.update({name: value for name, value in optional.items() if value})
    return params


def _copy_source(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote_key(key)}"


class _NoCookieJar(CookieJar):
    """A cookie jar that keeps no cookie from an answer. OSS sets none, and httpx's client
    otherwise parses every answer's headers looking for Set-Cookie (the way httpx's maintainers
    suggest to turn cookie persistence off, encode/httpx#2992)."""

    def extract_cookies(self, response: HTTPResponse, request: Request) -> None:
        return


class ObjectReader:
    """The body of a GetObject, as raw chunks the moment they arrive.

    A transport failure mid-body is repaired by a new ranged GET from the next byte, with
    If-Match on the ETag (so a changed object fails with PreconditionFailed instead of mixing
    versions), under the client's retry policy. When the whole object is read, its CRC-64 is
    compared with the server's.
    """

    def __init__(
        self,
        client: OssClient,
        bucket: str,
        key: str,
        response: httpx.Response,
        byte_range: tuple[int, int | None] | None,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._response = response
        headers = _lower_headers(response)
        self.request_id = headers.get("x-oss-request-id")
        parsed_range = _parse_content_range(headers.get("content-range"))
        if byte_range is not None and parsed_range is None:
            raise OssProtocolError(
                f"GET {key}: asked for a range, got HTTP {response.status_code} without "
                "Content-Range",
                status=response.status_code,
                request_id=self.request_id,
            )
        length_header = headers.get("content-length")
        if parsed_range is not None:
            start, end, total = parsed_range
            #: (first, last) byte offsets delivered, inclusive; None when the whole object is sent.
            self.content_range: tuple[int, int] | None = (start, end)
            size = total if total is not None else end + 1
            length: int | None = end - start + 1
        else:
            self.content_range = None
            length = int(length_header) if length_header is not None else None
            size = length if length is not None else 0
        #: the object's metadata (size is the whole object's size, even for a range).
        self.info: ObjectInfo = _object_info(key, headers, size=size)
        #: the number of body bytes (None if the server did not say).
        self.length = length
        self._whole = parsed_range is None or (parsed_range[0] == 0 and parsed_range[1] + 1 == size)
        self._consumed = 0
        self._crc = Crc64()
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._done:
            return
        policy = self._client.retry
        failures = 0
        started = trio.current_time()
        while True:
            try:
                async for chunk in self._response.aiter_raw():
                    self._consumed += len(chunk)
                    self._client.counters.bytes_in += len(chunk)
                    self._crc.update(chunk)
                    yield chunk
            except httpx.TransportError as exc:
                if self.length is not None and self._consumed >= self.length:
                    break  # every byte arrived; only the end of the exchange failed
                failures += 1
                error = OssConnectionError(f"GET {self._key}: body interrupted: {exc!r}")
                if self.length is None or failures >= policy.max_attempts:
                    raise error from exc
                delay = policy.delay_s(failures, error)
                if trio.current_time() + delay - started > policy.deadline_s:
                    raise error from exc
                log.info(
                    "GET %s: body interrupted at %d (%s); resuming", self._key, self._consumed, exc
                )
                await self._response.aclose()
                await trio.sleep(delay)
                await self._resume()
                continue
            break
        self._done = True
        if self.length is not None and self._consumed != self.length:
            raise OssConnectionError(
                f"GET {self._key}: body ended after {self._consumed} of {self.length} bytes",
                request_id=self.request_id,
            )
        if self._whole:
            _check_crc(f"GET {self._key}", self._crc.value, self.info.crc64, self.request_id)

    async def _resume(self) -> None:
        first = self.content_range[0] if self.content_range is not None else 0
        assert self.length is not None
        last = first + self.length - 1
        resume_at = first + self._consumed
        response = await self._client._open_get(
            self._bucket, self._key, (resume_at, last), self.info.etag or None, None
        )
        resumed = _parse_content_range(response.headers.get("content-range"))
        if resumed is None or resumed[0] != resume_at:
            await response.aclose()
            raise OssProtocolError(
                f"GET {self._key}: resuming at {resume_at}, got Content-Range {resumed}"
            )
        self._response = response

    @property
    def crc64(self) -> int:
        """CRC-64 of the bytes delivered so far (of the range, for a range)."""
        return self._crc.value

    @property
    def consumed(self) -> int:
        """Bytes delivered so far."""
        return self._consumed

    async def aread(self) -> bytes:
        """Read the rest of the body into memory."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        await self._response.aclose()


class OssClient:
    """An async OSS client with one connection pool; use as ``async with OssClient(...) as c``."""

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials | None,
        *,
        region: str | None = None,
        signature_version: int = 4,
        max_connections: int = 16,
        retry: RetryPolicy | None = None,
        timeout_s: float = 60,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | Path | None = None,
        counters: RequestCounters | None = None,
    ) -> None:
        """``transport`` replaces httpx's network transport (unit tests use httpx.MockTransport).
        ``ca_file``: the certificates to trust instead of the defaults (see
        :mod:`ossmount.oss.network`, which also picks the proxy from the environment).
        ``counters`` gets this client's traffic (default: :data:`PROCESS_COUNTERS`)."""
        self.counters = counters if counters is not None else PROCESS_COUNTERS
        if "://" not in endpoint:
            endpoint = "https://" + endpoint
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"bad endpoint {endpoint!r}: expected http(s)://host[:port]")
        self.endpoint = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self._scheme = url.scheme
        self._netloc = url.netloc.decode("ascii")
        self.path_style = is_ip_or_localhost(url.host)
        self.retry = retry if retry is not None else RetryPolicy()
        #: False when ``transport`` replaces the network (then only httpx can reach the server).
        self.uses_network = transport is None
        #: TLS context of https endpoints (certificates always verified), None for http.
        self.tls_context = tls_context(ca_file) if url.scheme == "https" else None
        #: The proxy every request goes through (from HTTPS_PROXY/HTTP_PROXY/NO_PROXY).
        self.proxy = proxy_for(self.endpoint)
        self._credentials = credentials
        self.signature_version = signature_version
        auth: httpx.Auth | None
        if credentials is None:
            auth = None
            self.region = region or region_from_endpoint(url.host)
        elif signature_version == 1:
            auth = OssV1Auth(credentials)
            self.region = region or region_from_endpoint(url.host)
        elif signature_version == 4:
            resolved = region or region_from_endpoint(url.host)
            if resolved is None:
                if not self.path_style:
                    raise ValueError(
                        f"signature version 4 needs a region; {url.host} does not name one"
                    )
                resolved = LOCAL_DEFAULT_REGION
            self.region = resolved
            auth = OssV4Auth(credentials, resolved)
        else:
            raise ValueError(f"signature_version must be 1 or 4, not {signature_version}")
        self._http = httpx.AsyncClient(
            auth=auth,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            # pool=None: callers bound their own concurrency; waiting for a connection is not
            # a network timeout.
            timeout=httpx.Timeout(timeout_s, pool=None),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            # The environment was read once, above (certificates and proxy), for every transport.
            trust_env=False,
            verify=self.tls_context if self.tls_context is not None else True,
            proxy=self.proxy.url if self.proxy is not None else None,
            follow_redirects=False,
            cookies=_NoCookieJar(),
            transport=transport,
        )
        #: The fast transport's connections (ossmount.oss.http1), for HEADs (_head) and the
        #: bulk GETs of ossmount.oss.bulk; None when ``transport`` replaces the network.
        self.pools = (
            Pools(
                tls=self.tls_context,
                proxy=self.proxy,
                timeout_s=timeout_s,
                max_idle=max_connections,
            )
            if self.uses_network
            else None
        )
        # Every request but object GETs (ossmount.oss.bulk) and one-shot streams skips httpx:
        # HEADs cost a third to a sixth of the CPU, and bodies (parts read from files) are sent,
        # and over https encrypted, by the worker thread instead of the trio thread.
        self._exchanges = (
            Exchanges(self.pools, answer_limit=ANSWER_LIMIT) if self.pools is not None else None
        )

    def __repr__(self) -> str:
        return f"OssClient(endpoint={self.endpoint!r}, region={self.region!r})"

    async def aclose(self) -> None:
        if self.pools is not None:
            self.pools.close()
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def presign(
        self,
        method: str,
        bucket: str,
        key: str,
        expires_s: int,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned URL for ``method`` on bucket/key, valid for ``expires_s`` seconds, signed
        like this client's requests (V1 or V4). ``headers``: those the URL's user will send
        and that are signed (Content-Type, x-oss-*)."""
        if self._credentials is None:
            raise ValueError("an anonymous client cannot presign URLs")
        base_url = self.url(bucket, key)
        if self.signature_version == 1:
            return presign_v1(
                self._credentials, method, base_url, bucket, key,
                int(time.time()) + expires_s, dict(params or {}), headers,
            )  # fmt: skip
        assert self.region is not None
        return presign_v4(
            self._credentials, method, base_url, bucket, key, expires_s, self.region,
            dict(params or {}), headers,
        )  # fmt: skip

    # --- plumbing ---------------------------------------------------------------------------

    def url(self, bucket: str | None, key: str | None = None) -> str:
        """The URL of a bucket/key (no query)."""
        path_key = quote_key(key) if key else ""
        if not bucket:
            return f"{self._scheme}://{self._netloc}/"
        if self.path_style:
            return f"{self._scheme}://{self._netloc}/{bucket}/{path_key}"
        return f"{self._scheme}://{bucket}.{self._netloc}/{path_key}"

    def _build(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        content: bytes | AsyncIterator[bytes] | None,
    ) -> httpx.Request:
        url = self.url(bucket, key)
        if params:
            # Spaces as %20, never "+": OSS, oss2's signer and ours all agree on that form.
            url += "?" + "&".join(
                f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params.items()
            )
        return self._http.build_request(
            method,
            url,
            headers=dict(headers) if headers else None,
            content=content,
            extensions={BUCKET_EXTENSION: bucket, KEY_EXTENSION: key},
        )

    async def _attempt(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        payload: _Payload | None,
        stream: bool,
    ) -> httpx.Response:
        exchanges = self._exchanges
        if exchanges is not None and not stream and (payload is None or payload.replayable):
            return await self._exchange(exchanges, method, bucket, key, params, headers, payload)
        all_headers = dict(headers or {})
        content: bytes | AsyncIterator[bytes] | None = None
        if payload is not None:
            content = payload.content()
            if payload.length is not None:
                all_headers["Content-Length"] = str(payload.length)
                self.counters.bytes_out += payload.length
        request = self._build(method, bucket, key, params, all_headers, content)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise connection_error(f"{method} {self._describe(bucket, key)}", exc) from exc
        try:
            if response.status_code >= 300:
                body = b"" if method == "HEAD" else await response.aread()
                self.counters.bytes_in += len(body)
                raise error_from_response(  # noqa: TRY301 (the handlers below close the response)
                    response.status_code, _lower_headers(response), body, method=method
                )
            if not stream:
                self.counters.bytes_in += len(await response.aread())
        except httpx.TransportError as exc:
            await response.aclose()
            raise connection_error(f"{method} {self._describe(bucket, key)}", exc) from exc
        except BaseException:
            await response.aclose()
            raise
        return response

    async def _exchange(
        self,
        exchanges: Exchanges,
        method: str,
        bucket: str | None,
        key: str | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        payload: _Payload | None,
    ) -> httpx.Response:
        """One attempt on the fast transport (:mod:`ossmount.oss.http1`), the answer as the
        httpx.Response the callers read."""
        all_headers = dict(headers or {})
        body: RequestBody = b""
        if payload is not None:
            all_headers["Content-Length"] = str(payload.length)
            body = payload.for_worker()
            self.counters.bytes_out += payload.length or 0
        request = self._signed(self._build(method, bucket, key, params, all_headers, None))
        try:
            answer = await exchanges.exchange(request, body)
        except BodyError as exc:
            raise exc.error from None
        except OSError as exc:
            raise connection_error(f"{method} {self._describe(bucket, key)}", exc) from exc
        head = answer.head
        self.counters.bytes_in += len(answer.body)
        if head.status >= 300:
            raise error_from_response(head.status, head.headers, answer.body, method=method)
        return httpx.Response(
            head.status, headers=head.headers, content=answer.body, request=request
        )

    def _signed(self, request: httpx.Request) -> httpx.Request:
        auth = self._http.auth
        return next(auth.sync_auth_flow(request)) if auth is not None else request

    def signed_request(
        self, method: str, bucket: str, key: str, headers: Mapping[str, str]
    ) -> httpx.Request:
        """A request without a body, built and signed as this client sends it (URL style,
        default headers, V1/V4 signature), for a caller that sends it over a connection of its
        own (:mod:`ossmount.oss.bulk`). Sign it again for each attempt: signatures carry a time."""
        return self._signed(self._build(method, bucket, key, None, headers, None))

    @staticmethod
    def _describe(bucket: str | None, key: str | None) -> str:
        return f"{bucket or ''}/{key or ''}"

    async def _request(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        stream: bool = False,
        stream_length: int | None = None,
    ) -> tuple[httpx.Response, _Payload | None]:
        payload = _Payload(body, stream_length) if body is not None else None

        async def attempt() -> httpx.Response:
            return await self._attempt(method, bucket, key, params, headers, payload, stream)

        what = f"{method} {self._describe(bucket, key)}"
        operation = operation_name(method, bucket, key, params, headers)
        if payload is not None and not payload.replayable:
            return await self.counted_call(operation, attempt, what=what, policy=NO_RETRY), payload
        return await self.counted_call(operation, attempt, what=what), payload

    async def counted_call(
        self,
        operation: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        what: str,
        policy: RetryPolicy | None = None,
    ) -> T:
        """``attempt()`` under the retry policy, counted: the one place requests, retries and
        failures are counted (:attr:`counters`)."""
        attempts = 0

        async def counted() -> T:
            nonlocal attempts
            attempts += 1
            self.counters.attempt(operation, attempts)
            return await attempt()

        try:
            return await (policy or self.retry).call(counted, what=what)
        except OssError as exc:
            self.counters.failed(operation, exc.code or type(exc).__name__)
            raise

    async def _xml(
        self,
        what: str,
        parse: Callable[[bytes], T],
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
    ) -> tuple[T, dict[str, str]]:
        """A request answered by an XML document: the document as ``parse`` reads it (a
        malformed one is OssProtocolError, named by ``what``) and the answer's headers."""
        response, _ = await self._request(
            method, bucket, key, params=params, headers=headers, body=body
        )
        response_headers = _lower_headers(response)
        request_id = response_headers.get("x-oss-request-id")
        return self._parsed(what, parse, response.content, request_id), response_headers

    @staticmethod
    def _parsed(what: str, parse: Callable[[bytes], T], body: bytes, request_id: str | None) -> T:
        try:
            return parse(body)
        except oss_xml.XmlError as exc:
            raise OssProtocolError(f"{what}: {exc}", request_id=request_id) from None

    # --- buckets -------------------------------------------------------------------------

    async def list_buckets_page(
        self, *, prefix: str = "", marker: str = "", max_keys: int = 100
    ) -> oss_xml.BucketListPage:
        params = _list_params({"max-keys": str(max_keys)}, {"prefix": prefix, "marker": marker})
        page, _ = await self._xml(
            "ListBuckets", oss_xml.parse_list_buckets, "GET", None, None, params=params
        )
        return page

    async def iter_buckets(
        self, *, prefix: str = "", max_keys: int = 100
    ) -> AsyncIterator[BucketSummary]:
        """Every bucket of the account (ListBuckets, all pages)."""
        marker = ""
        while True:
            page = await self.list_buckets_page(prefix=prefix, marker=marker, max_keys=max_keys)
            for bucket in page.buckets:
                yield bucket
            if not page.is_truncated or not page.next_marker:
                return
            marker = page.next_marker

    async def get_bucket_info(self, bucket: str) -> BucketInfo:
        info, _ = await self._xml(
            "GetBucketInfo",
            oss_xml.parse_bucket_info,
            "GET",
            bucket,
            None,
            params={"bucketInfo": ""},
        )
        return info

    # --- reading objects ------------------------------------------------------------------

    async def _head(
        self, bucket: str, key: str, params: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The headers (lower-case names) of a HEAD's answer, retried by the policy. It skips
        httpx (:class:`Exchanges`: a third to a sixth of the CPU) and the httpx.Response."""
        small = self._exchanges
        if small is None:
            response, _ = await self._request("HEAD", bucket, key, params=params)
            return _lower_headers(response)

        async def attempt() -> dict[str, str]:
            request = self._signed(self._build("HEAD", bucket, key, params, None, None))
            try:
                answer = await small.exchange(request)
            except OSError as exc:
                raise connection_error(f"HEAD {self._describe(bucket, key)}", exc) from exc
            head = answer.head
            if head.status >= 300:
                raise error_from_response(head.status, head.headers, b"", method="HEAD")
            return head.headers

        return await self.counted_call(
            operation_name("HEAD", bucket, key, params),
            attempt,
            what=f"HEAD {self._describe(bucket, key)}",
        )

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        return _object_info(key, await self._head(bucket, key))

    async def get_object_meta(self, bucket: str, key: str) -> ObjectInfo:
        """GetObjectMeta: size, ETag, Last-Modified (and CRC-64 where sent); object_type ""."""
        return _object_info(key, await self._head(bucket, key, {"objectMeta": ""}))

    async def get_small_object(
        self, bucket: str, key: str, *, limit: int
    ) -> tuple[ObjectInfo, bytes | None]:
        """GetObject of an object expected to be at most ``limit`` bytes, in one round trip: its
        metadata exactly as :meth:`head_object` reads it (a GET answers with the same headers)
        and its whole body. The body is None when the object is larger than ``limit`` (it is not
        downloaded: the connection is closed instead, see :meth:`Exchanges.exchange`) and when
        it does not match the object's CRC-64 (logged). Retried by the policy, like a HEAD, on
        the fast transport."""
        small = self._exchanges
        if small is None:
            return await self._get_small_through_httpx(bucket, key, limit)

        async def attempt() -> Answer:
            request = self._signed(self._build("GET", bucket, key, None, None, None))
            try:
                answer = await small.exchange(request, body_limit=limit)
            except OSError as exc:
                raise connection_error(f"GET {self._describe(bucket, key)}", exc) from exc
            self.counters.bytes_in += len(answer.body)
            head = answer.head
            if head.status >= 300:
                raise error_from_response(head.status, head.headers, answer.body, method="GET")
            return answer

        answer = await self.counted_call(
            operation_name("GET", bucket, key), attempt, what=f"GET {self._describe(bucket, key)}"
        )
        if answer.body_skipped:
            return await self._small_object_too_large(bucket, key, answer.head.headers)
        return self._checked_small_object(key, answer.head.headers, answer.body)

    async def _get_small_through_httpx(
        self, bucket: str, key: str, limit: int
    ) -> tuple[ObjectInfo, bytes | None]:
        response, _ = await self._request("GET", bucket, key, stream=True)
        try:
            headers = _lower_headers(response)
            length = headers.get("content-length", "")
            if not length.isdigit() or int(length) > limit:
                return await self._small_object_too_large(bucket, key, headers)
            body = await response.aread()
            self.counters.bytes_in += len(body)
        finally:
            await response.aclose()
        return self._checked_small_object(key, headers, body)

    async def _small_object_too_large(
        self, bucket: str, key: str, headers: Mapping[str, str]
    ) -> tuple[ObjectInfo, None]:
        if not headers.get("content-length", "").isdigit():
            # No length (a chunked answer): only a HEAD tells the size.
            return await self.head_object(bucket, key), None
        return _object_info(key, headers), None

    @staticmethod
    def _checked_small_object(
        key: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[ObjectInfo, bytes | None]:
        info = _object_info(key, headers)
        if info.crc64 is not None and crc64(body) != info.crc64:
            log.warning(
                "GET %s: body does not match its CRC-64 (%s); not kept",
                key,
                headers.get("x-oss-request-id", "no request id"),
            )
            return info, None
        return info, body

    async def _open_get(
        self,
        bucket: str,
        key: str,
        byte_range: tuple[int, int | None] | None,
        if_match: str | None,
        if_none_match: str | None,
    ) -> httpx.Response:
        headers = {"x-oss-range-behavior": "standard"}
        if byte_range is not None:
            headers["Range"] = _range_header(*byte_range)
        if if_match is not None:
            headers["If-Match"] = if_match
        if if_none_match is not None:
            headers["If-None-Match"] = if_none_match
        response, _ = await self._request("GET", bucket, key, headers=headers, stream=True)
        return response

    @asynccontextmanager
    async def open_object(
        self,
        bucket: str,
        key: str,
        *,
        byte_range: tuple[int, int | None] | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> AsyncIterator[ObjectReader]:
        """GetObject as a stream: ``async with client.open_object(b, k) as reader``.

        ``byte_range`` is inclusive, like oss2's (``(0, 99)`` = the first 100 bytes; an end of None
        = to the end). The request always carries ``x-oss-range-behavior: standard``, so a range
        that starts past the end fails with InvalidRange.
        """
        response = await self._open_get(bucket, key, byte_range, if_match, if_none_match)
        try:
            reader = ObjectReader(self, bucket, key, response, byte_range)
        except BaseException:
            await response.aclose()
            raise
        try:
            yield reader
        finally:
            await reader.aclose()

    async def get_object(
        self,
        bucket: str,
        key: str,
        *,
        byte_range: tuple[int, int | None] | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> bytes:
        """GetObject into memory (CRC-64 checked when the whole object is read)."""
        async with self.open_object(
            bucket, key, byte_range=byte_range, if_match=if_match, if_none_match=if_none_match
        ) as reader:
            return await reader.aread()

    # --- writing objects --------------------------------------------------------------------

    async def put_object(
        self,
        bucket: str,
        key: str,
        data: Body,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        forbid_overwrite: bool = False,
        size: int | None = None,
    ) -> PutResult:
        """PutObject from bytes, a file (Path or FileSlice) or an async stream; CRC-64 checked.

        A stream cannot be replayed, so it is sent once; it is sent with ``Content-Length: size``
        if ``size`` is given, else chunked.
        """
        all_headers = _new_object_headers(metadata, headers, forbid_overwrite)
        response, payload = await self._request("PUT", bucket, key, headers=all_headers, body=data)
        assert payload is not None
        return self._checked_put(f"PUT {key}", response, payload)

    @staticmethod
    def _checked_put(what: str, response: httpx.Response, payload: _Payload) -> PutResult:
        headers = _lower_headers(response)
        request_id = headers.get("x-oss-request-id")
        server_crc = _crc_header(headers)
        _check_crc(what, payload.crc.value, server_crc, request_id)
        return PutResult(headers.get("etag", ""), server_crc, request_id)

    async def append_object(
        self,
        bucket: str,
        key: str,
        position: int,
        data: BytesLike | Path | FileSlice,
        *,
        previous_crc64: int | None = None,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        """AppendObject at ``position`` (0 creates an appendable object).

        The server returns the CRC-64 of the whole object; it is checked when
        ``previous_crc64`` (the object's CRC before this append; 0 for position 0) is known.
        If a retried append meets PositionNotEqualToLength because the first attempt did land,
        that is recognised (size and CRC-64 checked by a HEAD) and reported as success.
        """
        all_headers = _meta_headers(metadata) if position == 0 else {}
        all_headers.update(headers or {})
        params = {"append": "", "position": str(position)}
        payload = _Payload(data)
        if position == 0 and previous_crc64 is None:
            previous_crc64 = 0
        attempts = 0

        async def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            return await self._attempt("POST", bucket, key, params, all_headers, payload, False)

        try:
            response = await self.counted_call("AppendObject", attempt, what=f"APPEND {key}")
        except PositionNotEqualToLength:
            if attempts < 2:
                raise
            info = await self.head_object(bucket, key)
            expected_crc = (
                crc64_combine(previous_crc64, payload.crc.value, payload.crc.length)
                if previous_crc64 is not None
                else None
            )
            landed = info.size == position + payload.crc.length and (
                expected_crc is None or info.crc64 in (None, expected_crc)
            )
            if not landed:
                raise
            return AppendResult(info.etag, info.crc64, info.size)
        headers_out = _lower_headers(response)
        server_crc = _crc_header(headers_out)
        if previous_crc64 is not None:
            expected = crc64_combine(previous_crc64, payload.crc.value, payload.crc.length)
            _check_crc(f"APPEND {key}", expected, server_crc, headers_out.get("x-oss-request-id"))
        next_position = int(
            headers_out.get("x-oss-next-append-position", position + payload.crc.length)
        )
        return AppendResult(headers_out.get("etag", ""), server_crc, next_position)

    async def copy_object(
        self,
        source_bucket: str,
        source_key: str,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
        forbid_overwrite: bool = False,
    ) -> PutResult:
        """CopyObject. With ``metadata`` the copy gets it (directive REPLACE), else the source's
        metadata is kept (COPY). ``if_match`` guards the source's ETag."""
        all_headers = {"x-oss-copy-source": _copy_source(source_bucket, source_key)}
        if metadata is not None:
            all_headers["x-oss-metadata-directive"] = "REPLACE"
            all_headers.update(_meta_headers(metadata))
        else:
            all_headers["x-oss-metadata-directive"] = "COPY"
        if if_match is not None:
            all_headers["x-oss-copy-source-if-match"] = if_match
        if forbid_overwrite:
            all_headers["x-oss-forbid-overwrite"] = "true"
        all_headers.update(headers or {})
        etag, response_headers = await self._xml(
            "CopyObject", oss_xml.parse_copy_result, "PUT", bucket, key, headers=all_headers
        )
        request_id = response_headers.get("x-oss-request-id")
        return PutResult(etag, _crc_header(response_headers), request_id)

    async def delete_object(self, bucket: str, key: str) -> None:
        """DeleteObject (no error if the key does not exist, as OSS answers 204 either way)."""
        await self._request("DELETE", bucket, key)

    async def delete_objects(
        self, bucket: str, keys: Sequence[str], *, quiet: bool = False
    ) -> DeleteResult:
        """DeleteMultipleObjects, in batches of 1000 keys."""
        deleted: list[str] = []
        errors: dict[str, tuple[str, str]] = {}
        for start in range(0, len(keys), DELETE_BATCH_SIZE):
            batch = keys[start : start + DELETE_BATCH_SIZE]
            document = oss_xml.build_delete_objects(batch, quiet=quiet)
            headers = {
                "Content-MD5": base64.b64encode(
                    hashlib.md5(document, usedforsecurity=False).digest()
                ).decode(),
                "Content-Type": "application/xml",
            }
            result, _ = await self._xml(
                "DeleteMultipleObjects",
                oss_xml.parse_delete_result,
                "POST",
                bucket,
                None,
                params={"delete": "", "encoding-type": "url"},
                headers=headers,
                body=document,
            )
            deleted.extend(result.deleted)
            errors.update(result.errors)
        return DeleteResult(tuple(deleted), MappingProxyType(errors))

    async def put_symlink(
        self,
        bucket: str,
        key: str,
        target: str,
        *,
        metadata: Mapping[str, str] | None = None,
        forbid_overwrite: bool = False,
    ) -> PutResult:
        headers = _new_object_headers(
            metadata, {"x-oss-symlink-target": quote_key(target)}, forbid_overwrite
        )
        response, _ = await self._request(
            "PUT", bucket, key, params={"symlink": ""}, headers=headers
        )
        response_headers = _lower_headers(response)
        return PutResult(
            response_headers.get("etag", ""), None, response_headers.get("x-oss-request-id")
        )

    async def get_symlink(self, bucket: str, key: str) -> str:
        """The target key of a symlink object."""
        response, _ = await self._request("GET", bucket, key, params={"symlink": ""})
        target = response.headers.get("x-oss-symlink-target")
        if target is None:
            raise OssProtocolError(
                f"GetSymlink {key}: answer without x-oss-symlink-target",
                request_id=response.headers.get("x-oss-request-id"),
            )
        return unquote(target)

    async def get_symlink_info(self, bucket: str, key: str) -> ObjectInfo:
        """The symlink object itself: its target key (``symlink_target``), and its own ETag,
        Last-Modified and user metadata (a HEAD describes the target instead)."""
        response, _ = await self._request("GET", bucket, key, params={"symlink": ""})
        headers = _lower_headers(response)
        if "x-oss-symlink-target" not in headers:
            raise OssProtocolError(
                f"GetSymlink {key}: answer without x-oss-symlink-target",
                request_id=headers.get("x-oss-request-id"),
            )
        return replace(_object_info(key, headers, size=0), object_type="Symlink")

    # --- listing -----------------------------------------------------------------------------

    async def list_objects_page(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        continuation_token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One page of ListObjectsV2 (keys sent and received URL-encoded)."""
        params = _list_params(
            {"list-type": "2", "encoding-type": "url", "max-keys": str(max_keys)},
            {
                "prefix": prefix,
                "delimiter": delimiter,
                "start-after": start_after,
                "continuation-token": continuation_token,
            },
        )
        page, _ = await self._xml(
            "ListObjectsV2", oss_xml.parse_list_objects_v2, "GET", bucket, None, params=params
        )
        return page

    async def iter_pages(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> AsyncIterator[ListPage]:
        """Every page of a listing, following continuation tokens."""
        token: str | None = None
        while True:
            page = await self.list_objects_page(
                bucket,
                prefix=prefix,
                delimiter=delimiter,
                start_after=start_after if token is None else "",
                continuation_token=token,
                max_keys=max_keys,
            )
            yield page
            if not page.is_truncated or not page.next_token:
                return
            token = page.next_token

    async def iter_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> AsyncIterator[ObjectSummary | str]:
        """Every entry of a listing: ObjectSummary for objects, str for common prefixes, each
        page's objects before its prefixes (like oss2's ObjectIteratorV2)."""
        async for page in self.iter_pages(
            bucket, prefix=prefix, delimiter=delimiter, start_after=start_after, max_keys=max_keys
        ):
            for summary in page.objects:
                yield summary
            for common_prefix in page.prefixes:
                yield common_prefix

    # --- multipart ------------------------------------------------------------------------------

    async def init_multipart_upload(
        self,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        forbid_overwrite: bool = False,
    ) -> str:
        """InitiateMultipartUpload -> the upload id."""
        upload_id, _ = await self._xml(
            "InitiateMultipartUpload",
            oss_xml.parse_initiate_multipart_upload,
            "POST",
            bucket,
            key,
            params={"uploads": ""},
            headers=_new_object_headers(metadata, headers, forbid_overwrite),
        )
        return upload_id

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        data: BytesLike | Path | FileSlice | AsyncIterable[bytes],
    ) -> PartInfo:
        """UploadPart; the part's CRC-64 is checked against the server's."""
        response, payload = await self._request(
            "PUT",
            bucket,
            key,
            params={"partNumber": str(part_number), "uploadId": upload_id},
            body=data,
        )
        assert payload is not None
        result = self._checked_put(f"UploadPart {key} #{part_number}", response, payload)
        return PartInfo(part_number, result.etag, payload.crc.length, crc64=payload.crc.value)

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        source_bucket: str,
        source_key: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_match: str | None = None,
    ) -> PartInfo:
        """UploadPartCopy of ``byte_range`` (inclusive) of the source, or all of it."""
        headers = {"x-oss-copy-source": _copy_source(source_bucket, source_key)}
        if byte_range is not None:
            headers["x-oss-copy-source-range"] = _range_header(*byte_range)
        if if_match is not None:
            headers["x-oss-copy-source-if-match"] = if_match
        etag, response_headers = await self._xml(
            "UploadPartCopy",
            oss_xml.parse_copy_result,
            "PUT",
            bucket,
            key,
            params={"partNumber": str(part_number), "uploadId": upload_id},
            headers=headers,
        )
        size = byte_range[1] - byte_range[0] + 1 if byte_range is not None else 0
        return PartInfo(part_number, etag, size, crc64=_crc_header(response_headers))

    async def complete_multipart_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: Sequence[PartInfo],
        *,
        headers: Mapping[str, str] | None = None,
        expected_crc64: int | None = None,
    ) -> PutResult:
        """CompleteMultipartUpload; when every part's CRC-64 is known, the object's CRC-64 (their
        combination, or ``expected_crc64`` if the caller has it already) is checked against the
        server's.

        If an attempt is retried after the server did complete the upload (the answer was lost),
        the retry meets NoSuchUpload; when the object's CRC-64 and size then match the parts', that
        is the success it is.
        """
        ordered = sorted(parts, key=lambda part: part.part_number)
        document = oss_xml.build_complete_multipart_upload(
            (part.part_number, part.etag) for part in ordered
        )
        all_headers = {"Content-Type": "application/xml"}
        all_headers.update(headers or {})
        combined: int | None = expected_crc64
        if combined is None and all(part.crc64 is not None for part in ordered):
            combined = 0
            for part in ordered:
                assert part.crc64 is not None
                combined = crc64_combine(combined, part.crc64, part.size)
        params = {"uploadId": upload_id}
        payload = _Payload(document)
        attempts = 0

        async def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            return await self._attempt("POST", bucket, key, params, all_headers, payload, False)

        try:
            response = await self.counted_call(
                "CompleteMultipartUpload", attempt, what=f"CompleteMultipartUpload {key}"
            )
        except NoSuchUpload:
            if attempts < 2 or combined is None:
                raise
            info = await self.head_object(bucket, key)
            if info.crc64 != combined or info.size != sum(part.size for part in ordered):
                raise
            log.info("CompleteMultipartUpload %s: completed by an earlier attempt", key)
            return PutResult(info.etag, info.crc64, None)
        response_headers = _lower_headers(response)
        request_id = response_headers.get("x-oss-request-id")
        etag = self._parsed(
            "CompleteMultipartUpload",
            oss_xml.parse_complete_multipart_upload,
            response.content,
            request_id,
        )
        server_crc = _crc_header(response_headers)
        if combined is not None:
            _check_crc(f"CompleteMultipartUpload {key}", combined, server_crc, request_id)
        return PutResult(etag or response_headers.get("etag", ""), server_crc, request_id)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._request("DELETE", bucket, key, params={"uploadId": upload_id})

    async def list_parts_page(
        self, bucket: str, key: str, upload_id: str, *, marker: int = 0, max_parts: int = 1000
    ) -> oss_xml.PartListPage:
        params = {"uploadId": upload_id, "max-parts": str(max_parts)}
        if marker:
            params["part-number-marker"] = str(marker)
        page, _ = await self._xml(
            "ListParts", oss_xml.parse_list_parts, "GET", bucket, key, params=params
        )
        return page

    async def iter_parts(
        self, bucket: str, key: str, upload_id: str, *, max_parts: int = 1000
    ) -> AsyncIterator[PartInfo]:
        """Every uploaded part of an upload (ListParts, all pages), like oss2's PartIterator."""
        marker = 0
        while True:
            page = await self.list_parts_page(
                bucket, key, upload_id, marker=marker, max_parts=max_parts
            )
            for part in page.parts:
                yield part
            if not page.is_truncated or page.next_part_number_marker <= marker:
                return
            marker = page.next_part_number_marker

    async def list_multipart_uploads_page(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        key_marker: str = "",
        upload_id_marker: str = "",
        max_uploads: int = 1000,
    ) -> oss_xml.UploadListPage:
        params = _list_params(
            {"uploads": "", "encoding-type": "url", "max-uploads": str(max_uploads)},
            {
                "prefix": prefix,
                "delimiter": delimiter,
                "key-marker": key_marker,
                "upload-id-marker": upload_id_marker,
            },
        )
        page, _ = await self._xml(
            "ListMultipartUploads",
            oss_xml.parse_list_multipart_uploads,
            "GET",
            bucket,
            None,
            params=params,
        )
        return page

    async def iter_multipart_uploads(
        self, bucket: str, *, prefix: str = "", key_marker: str = "", max_uploads: int = 1000
    ) -> AsyncIterator[MultipartUploadInfo]:
        """Every upload in progress under ``prefix``, like oss2's MultipartUploadIterator."""
        upload_id_marker = ""
        while True:
            page = await self.list_multipart_uploads_page(
                bucket,
                prefix=prefix,
                key_marker=key_marker,
                upload_id_marker=upload_id_marker,
                max_uploads=max_uploads,
            )
            for upload in page.uploads:
                yield upload
            if not page.is_truncated or not page.next_key_marker:
                return
            key_marker = page.next_key_marker
            upload_id_marker = page.next_upload_id_marker

    async def iter_object_uploads(
        self, bucket: str, key: str, *, max_uploads: int = 1000
    ) -> AsyncIterator[MultipartUploadInfo]:
        """The uploads in progress for exactly ``key``, like oss2's ObjectUploadIterator."""
        async for upload in self.iter_multipart_uploads(
            bucket, prefix=key, max_uploads=max_uploads
        ):
            if upload.key == key:
                yield upload
            elif upload.key > key:
                return
