"""Transfers: streaming, resumable (checkpointed) download and upload, stream copy.

Progress callbacks take ``(consumed_bytes, total_bytes)``.

Resumable download (:func:`download_file`)
    The object is cut into ranges of ``part_size``; ``concurrency`` tasks fetch them with ranged
    GETs carrying ``If-Match: <etag>`` and write them at their offsets into a temp file beside the
    target (``.<name>.ossmount-tmp``). After each part, a line with its number and CRC-64 is
    appended to the checkpoint journal. A later call with the same object and target reads the
    journal and fetches only the missing parts, whether the first run was cancelled, failed or
    killed. If the object changed (another ETag, size or mtime at the start, or a 412 during the
    run), the temp file and journal are thrown away and the download starts over. The parts'
    CRCs are combined (in order, as they finish) and compared with the object's
    ``x-oss-hash-crc64ecma``; only then is the temp file renamed over the target. An object of
    one part is a single streamed GET without a journal.

Resumable upload (:func:`upload_file`)
    Files below ``multipart_threshold`` are one PutObject. Larger files are a multipart upload:
    parts of ``part_size`` (raised so there are always fewer than 10,000) go up with
    ``concurrency`` tasks, each part's CRC-64 checked, and each finished part is journalled. A
    later call finds the upload id in the journal, asks the server which parts it has
    (ListParts), and sends only the others. A source file whose size or mtime changed since the
    journal starts over (the old upload is aborted). CompleteMultipartUpload is sent only when
    every part is up and the source is unchanged, and its CRC-64 is checked against the
    combination of the parts'. A fatal (non-transient) error aborts the upload and drops the
    journal; cancellation and exhausted retries of transient errors keep both, so that the same
    call can resume.

The checkpoint journal is JSON Lines: a header describing the transfer, then one line per
finished part. Appending a line is one ``write``, so a killed process leaves at worst a torn last
line, which is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

from ossmount.oss.bulk import BulkGetter
from ossmount.oss.client import FileSlice, OssClient
from ossmount.oss.crc64 import Crc64, crc64_combine
from ossmount.oss.errors import (
    IntegrityError,
    NoSuchUpload,
    OssConnectionError,
    OssError,
    PreconditionFailed,
    first_failure,
    is_transient,
)
from ossmount.oss.model import ObjectInfo, PartInfo, PutResult

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MIB
DEFAULT_CONCURRENCY = 4
DEFAULT_MULTIPART_THRESHOLD = 16 * MIB
MAX_PARTS = 10_000
MIN_PART_SIZE = 100 * 1024
MAX_PART_SIZE = 5 * 1024 * MIB
# Bytes gathered from the network before one write to the temp file.
WRITE_BUFFER_SIZE = 1 * MIB
# How often an object that changed under a download is fetched again before giving up.
MAX_RESTARTS = 3
CHECKPOINT_VERSION = 1


class SourceChangedError(OssError):
    """The local file changed while it was being uploaded."""


def choose_part_size(total_size: int, part_size: int = DEFAULT_PART_SIZE) -> int:
    """``part_size``, raised if needed so that ``total_size`` takes fewer than 10,000 parts."""
    size = max(MIN_PART_SIZE, part_size)
    minimum = math.ceil(total_size / (MAX_PARTS - 1)) if total_size else size
    if size < minimum:
        size = math.ceil(minimum / MIB) * MIB  # a whole number of MiB
    return min(size, MAX_PART_SIZE)


def part_ranges(total_size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number from 1, first offset, size) of each part."""
    return [
        (number, offset, min(part_size, total_size - offset))
        for number, offset in enumerate(range(0, total_size, part_size), 1)
    ]


def default_checkpoint_dir() -> Path:
    """$XDG_CACHE_HOME/ossmount/transfers (~/.cache/ossmount/transfers)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ossmount" / "transfers"


# --- checkpoint journal --------------------------------------------------------------------


class Checkpoint:
    """A JSON Lines journal: a header, then one record per finished part."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.parts: dict[int, dict[str, Any]] = {}

    @classmethod
    def load(cls, path: Path, expected: Mapping[str, Any]) -> Checkpoint | None:
        """The journal at ``path`` if its header matches ``expected`` in every field."""
        try:
            lines = path.read_bytes().split(b"\n")
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not isinstance(header, dict) or any(header.get(k) != v for k, v in expected.items()):
            return None
        checkpoint = cls(path, header)
        for line in lines[1:]:
            try:
                record = json.loads(line)
                checkpoint.parts[int(record["part"])] = record
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line, or the empty string after the final newline
        return checkpoint

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".new")
        temp.write_text(json.dumps(self.header) + "\n", encoding="utf-8")
        os.replace(temp, self.path)
        self.parts.clear()

    def record(self, part: int, **fields: Any) -> None:
        entry = {"part": part, **fields}
        self.parts[part] = entry
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _checkpoint_path(checkpoint_dir: Path, kind: str, bucket: str, key: str, path: Path) -> Path:
    identity = "\0".join([kind, bucket, key, str(path.resolve())])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return checkpoint_dir / f".ossmount-{kind}-{digest}.ckpt"


async def _run_parts(
    parts: list[tuple[int, int, int]],
    concurrency: int,
    transfer_part: Callable[[int, int, int], Awaitable[None]],
) -> None:
    """Run ``transfer_part(number, offset, size)`` for each part, ``concurrency`` at a time; the
    first failure cancels the rest."""
    queue: Iterator[tuple[int, int, int]] = iter(parts)

    async def worker() -> None:
        for number, offset, size in queue:
            await transfer_part(number, offset, size)

    with first_failure():
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, min(concurrency, len(parts)))):
                nursery.start_soon(worker)


class OrderedCrc:
    """The CRC-64 of a whole object from the CRC-64s of its parts, which finish in any order.

    Each part is folded in (crc64_combine) as soon as every part before it is in, so the
    combining is spread over the transfer rather than left to its end.
    """

    def __init__(self, parts: list[tuple[int, int, int]]) -> None:
        self._sizes = {number: size for number, _, size in parts}
        self._waiting: dict[int, int] = {}
        self._next = 1
        self._value = 0

    def add(self, number: int, crc: int) -> None:
        self._waiting[number] = crc
        while self._next in self._waiting:
            part_crc = self._waiting.pop(self._next)
            self._value = crc64_combine(self._value, part_crc, self._sizes[self._next])
            self._next += 1

    def has(self, number: int) -> bool:
        return number < self._next or number in self._waiting

    @property
    def value(self) -> int:
        """The CRC-64 of the whole object; only once every part was added."""
        if self._next <= len(self._sizes):
            raise RuntimeError(f"part {self._next} is missing")
        return self._value


class _Progress:
    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self.consumed = 0
        self._callback = callback

    def add(self, count: int) -> None:
        self.consumed += count
        if self._callback is not None:
            self._callback(self.consumed, self.total)


# --- download ------------------------------------------------------------------------------


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.ossmount-tmp")


async def _write_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = await trio.to_thread.run_sync(os.pwrite, fd, view, offset)
        view = view[written:]
        offset += written


async def download_to_sink(
    client: OssClient,
    bucket: str,
    key: str,
    sink: Callable[[bytes], Awaitable[object]],
    *,
    byte_range: tuple[int, int | None] | None = None,
    if_match: str | None = None,
    progress: ProgressCallback | None = None,
) -> ObjectInfo:
    """Stream an object (or a range) into ``sink``, chunk by chunk as received.

    A whole object's CRC-64 is checked at the end (IntegrityError after the sink got the data:
    a sink that must not keep bad data should stage it).
    """
    async with client.open_object(bucket, key, byte_range=byte_range, if_match=if_match) as reader:
        counter = _Progress(reader.length or reader.info.size, progress)
        async for chunk in reader:
            await sink(chunk)
            counter.add(len(chunk))
        return reader.info


async def _download_range(
    client: OssClient,
    bucket: str,
    key: str,
    fd: int,
    first: int,
    size: int,
    etag: str | None,
    progress: _Progress,
) -> int:
    """Fetch ``size`` bytes from ``first`` into ``fd`` at the same offset; -> their CRC-64.
    Through the client's fast transport (bodies received by worker threads) when it has one."""
    if size and BulkGetter.supports(client):
        return await _download_range_bulk(client, bucket, key, fd, first, size, etag, progress)
    buffer = bytearray()
    offset = first
    byte_range = (first, first + size - 1) if size else None
    async with client.open_object(bucket, key, byte_range=byte_range, if_match=etag) as reader:
        async for chunk in reader:
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER_SIZE:
                await _write_at(fd, buffer, offset)
                offset += len(buffer)
                progress.add(len(buffer))
                buffer = bytearray()
        if buffer:
            await _write_at(fd, buffer, offset)
            progress.add(len(buffer))
        if reader.consumed != size:
            raise OssError(f"GET {key}: got {reader.consumed} bytes of {size} from offset {first}")
        return reader.crc64


async def _download_range_bulk(
    client: OssClient,
    bucket: str,
    key: str,
    fd: int,
    first: int,
    size: int,
    etag: str | None,
    progress: _Progress,
) -> int:
    """_download_range over :class:`BulkGetter`: a body that breaks off is resumed from the byte
    it reached (If-Match on the ETag), under the client's retry policy, as ObjectReader does.
    Progress is reported once the range is whole, so that what it reported of an interrupted
    download is what the journal holds."""
    getter = BulkGetter(client)
    policy = client.retry
    crc = Crc64()
    position, last = first, first + size - 1
    failures = 0
    while True:
        try:
            async with getter.open_range(
                bucket, key, position, last, if_match=etag, piece_size=WRITE_BUFFER_SIZE
            ) as body:
                etag = etag or body.info.etag or None  # a resumed GET must meet the same version
                async for piece in body:
                    await _write_at(fd, piece, position)
                    crc.update(piece)
                    position += len(piece)
        except OssConnectionError as error:
            failures += 1
            if failures >= policy.max_attempts:
                raise
            log.info("GET %s: body interrupted at %d (%s); resuming", key, position, error)
            await trio.sleep(policy.delay_s(failures, error))
        else:
            progress.add(size)
            return crc.value


async def download_file(
    client: OssClient,
    bucket: str,
    key: str,
    path: Path | str,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    checkpoint_dir: Path | None = None,
    progress: ProgressCallback | None = None,
) -> ObjectInfo:
    """Download an object into ``path`` (resumable; see the module docstring).

    ``checkpoint_dir`` defaults to the target's directory (the journal is a hidden file beside
    the temp file); both are removed once the target is in place. -> the object's info.
    """
    target = Path(path)
    for attempt in range(MAX_RESTARTS + 1):
        info = await client.head_object(bucket, key)
        try:
            await _download_once(
                client, bucket, key, target, info, part_size, concurrency, checkpoint_dir, progress
            )
        except PreconditionFailed:
            if attempt == MAX_RESTARTS:
                raise
            log.info("%s/%s changed during the download; starting over", bucket, key)
            continue
        return info
    raise AssertionError("unreachable")


async def _download_once(
    client: OssClient,
    bucket: str,
    key: str,
    target: Path,
    info: ObjectInfo,
    part_size: int,
    concurrency: int,
    checkpoint_dir: Path | None,
    progress_callback: ProgressCallback | None,
) -> None:
    temp = temp_path_for(target)
    part_size = choose_part_size(info.size, part_size)
    parts = part_ranges(info.size, part_size)
    progress = _Progress(info.size, progress_callback)
    if len(parts) <= 1:
        # One request: nothing to resume partway, so no journal.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            crc = await _download_range(client, bucket, key, fd, 0, info.size, info.etag, progress)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        _finish_download(temp, target, info, crc, key)
        return

    checkpoint = _open_download_journal(
        bucket, key, target, temp, info, part_size, checkpoint_dir or target.parent
    )
    object_crc = OrderedCrc(parts)
    for number, record in checkpoint.parts.items():
        if 1 <= number <= len(parts):
            object_crc.add(number, int(record["crc64"]))
    pending = [part for part in parts if not object_crc.has(part[0])]
    progress.add(info.size - sum(size for _, _, size in pending))

    fd = os.open(temp, os.O_WRONLY)
    try:

        async def fetch(number: int, offset: int, size: int) -> None:
            crc = await _download_range(client, bucket, key, fd, offset, size, info.etag, progress)
            checkpoint.record(number, crc64=crc)
            object_crc.add(number, crc)

        await _run_parts(pending, concurrency, fetch)
    except PreconditionFailed:
        checkpoint.remove()
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)

    try:
        _finish_download(temp, target, info, object_crc.value, key)
    finally:
        checkpoint.remove()


def _open_download_journal(
    bucket: str,
    key: str,
    target: Path,
    temp: Path,
    info: ObjectInfo,
    part_size: int,
    checkpoint_dir: Path,
) -> Checkpoint:
    """The journal of an earlier attempt at this very download, or a new one (and a new
    temp file of the object's size)."""
    journal_path = _checkpoint_path(checkpoint_dir, "download", bucket, key, target)
    header = {
        "version": CHECKPOINT_VERSION,
        "kind": "download",
        "bucket": bucket,
        "key": key,
        "target": str(target.resolve()),
        "etag": info.etag,
        "size": info.size,
        "last_modified": info.last_modified,
        "part_size": part_size,
    }
    checkpoint = Checkpoint.load(journal_path, header)
    if checkpoint is not None and temp.exists() and temp.stat().st_size == info.size:
        log.info("%s/%s: resuming, %d parts done", bucket, key, len(checkpoint.parts))
        return checkpoint
    checkpoint = Checkpoint(journal_path, header)
    checkpoint.create()
    with open(temp, "wb") as file:
        file.truncate(info.size)
    return checkpoint


def _finish_download(temp: Path, target: Path, info: ObjectInfo, crc: int, key: str) -> None:
    if info.crc64 is not None and crc != info.crc64:
        temp.unlink(missing_ok=True)
        raise IntegrityError(f"download of {key}: CRC-64 {crc} != server's {info.crc64}")
    os.replace(temp, target)


# --- upload --------------------------------------------------------------------------------


def _source_identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


async def upload_file(
    client: OssClient,
    bucket: str,
    key: str,
    path: Path | str,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    checkpoint_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    metadata: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> PutResult:
    """Upload a local file as ``key`` (resumable above ``multipart_threshold``; see the module
    docstring). ``checkpoint_dir`` defaults to :func:`default_checkpoint_dir`."""
    source = Path(path)
    size, mtime_ns = _source_identity(source)
    counter = _Progress(size, progress)
    if size < multipart_threshold or size == 0:
        result = await client.put_object(
            bucket, key, FileSlice(source, 0, size), metadata=metadata, headers=headers
        )
        counter.add(size)
        return result

    part_size = choose_part_size(size, part_size)
    parts = part_ranges(size, part_size)
    journal_path, header = _upload_journal_header(
        bucket, key, source, size, mtime_ns, part_size, checkpoint_dir
    )
    checkpoint = Checkpoint.load(journal_path, header)
    done: dict[int, PartInfo] | None = None
    upload_id: str | None = None
    if checkpoint is not None:
        upload_id = str(checkpoint.header.get("upload_id", "")) or None
        if upload_id is not None:
            done = await _confirmed_parts(client, bucket, key, upload_id, checkpoint, parts)
    else:
        stale_upload_id = _drop_stale_journal(journal_path)
        if stale_upload_id is not None:
            log.info("%s changed since the last attempt: aborting upload %s", key, stale_upload_id)
            await _abort_quietly(client, bucket, key, stale_upload_id)
    if upload_id is None or done is None:
        upload_id = await client.init_multipart_upload(
            bucket, key, metadata=metadata, headers=headers
        )
        checkpoint = _new_journal(journal_path, {**header, "upload_id": upload_id})
        done = {}
    else:
        log.info("%s/%s: resuming upload %s, %d parts up", bucket, key, upload_id, len(done))
    assert checkpoint is not None
    uploaded: dict[int, PartInfo] = done
    object_crc = OrderedCrc(parts)
    for part in uploaded.values():
        if part.crc64 is not None:
            object_crc.add(part.part_number, part.crc64)
    counter.add(sum(part.size for part in uploaded.values()))
    pending = [part for part in parts if part[0] not in uploaded]
    journal = checkpoint

    async def send(number: int, offset: int, part_bytes: int) -> None:
        assert upload_id is not None
        part = await client.upload_part(
            bucket, key, upload_id, number, FileSlice(source, offset, part_bytes)
        )
        uploaded[number] = part
        journal.record(number, etag=part.etag, size=part.size, crc64=part.crc64)
        if part.crc64 is not None:
            object_crc.add(number, part.crc64)
        counter.add(part_bytes)

    try:
        await _run_parts(pending, concurrency, send)
        _check_unchanged(source, size, mtime_ns)
        all_crcs_known = all(uploaded[number].crc64 is not None for number, _, _ in parts)
        result = await client.complete_multipart_upload(
            bucket,
            key,
            upload_id,
            [uploaded[number] for number, _, _ in parts],
            expected_crc64=object_crc.value if all_crcs_known else None,
        )
    except Exception as exc:
        if not is_transient(exc):
            log.warning("upload of %s failed for good (%s): aborting it", key, exc)
            with trio.CancelScope(shield=True):
                await _abort_quietly(client, bucket, key, upload_id)
            journal.remove()
        raise
    journal.remove()
    return result


def _upload_journal_header(
    bucket: str,
    key: str,
    source: Path,
    size: int,
    mtime_ns: int,
    part_size: int,
    checkpoint_dir: Path | None,
) -> tuple[Path, dict[str, Any]]:
    journal_path = _checkpoint_path(
        checkpoint_dir or default_checkpoint_dir(), "upload", bucket, key, source
    )
    header: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "kind": "upload",
        "bucket": bucket,
        "key": key,
        "source": str(source.resolve()),
        "size": size,
        "mtime_ns": mtime_ns,
        "part_size": part_size,
    }
    return journal_path, header


def _new_journal(path: Path, header: dict[str, Any]) -> Checkpoint:
    checkpoint = Checkpoint(path, header)
    checkpoint.create()
    return checkpoint


def _check_unchanged(source: Path, size: int, mtime_ns: int) -> None:
    if _source_identity(source) != (size, mtime_ns):
        raise SourceChangedError(f"{source} changed while it was being uploaded")


def _drop_stale_journal(journal_path: Path) -> str | None:
    """Remove a journal whose header no longer matches (the source changed); -> its upload id."""
    try:
        header = json.loads(journal_path.read_bytes().split(b"\n", 1)[0])
    except (OSError, ValueError):
        return None
    journal_path.unlink(missing_ok=True)
    upload_id = header.get("upload_id") if isinstance(header, dict) else None
    return str(upload_id) if upload_id else None


async def _confirmed_parts(
    client: OssClient,
    bucket: str,
    key: str,
    upload_id: str,
    checkpoint: Checkpoint,
    parts: list[tuple[int, int, int]],
) -> dict[int, PartInfo] | None:
    """The journalled parts that the server also lists (same ETag and size); None if the
    upload is gone."""
    sizes = {number: size for number, _, size in parts}
    listed: dict[int, PartInfo] = {}
    try:
        async for part in client.iter_parts(bucket, key, upload_id):
            listed[part.part_number] = part
    except NoSuchUpload:
        return None
    confirmed: dict[int, PartInfo] = {}
    for number, record in checkpoint.parts.items():
        server_part = listed.get(number)
        if (
            server_part is not None
            and server_part.etag == record.get("etag")
            and server_part.size == sizes.get(number)
        ):
            crc = record.get("crc64")
            confirmed[number] = PartInfo(
                number, server_part.etag, server_part.size, crc64=int(crc) if crc else None
            )
    return confirmed


async def _abort_quietly(client: OssClient, bucket: str, key: str, upload_id: str) -> None:
    try:
        await client.abort_multipart_upload(bucket, key, upload_id)
    except OssError as exc:
        log.warning("could not abort upload %s of %s: %s", upload_id, key, exc)


# --- stream copy -----------------------------------------------------------------------------


async def copy_object_stream(
    client: OssClient,
    source_bucket: str,
    source_key: str,
    bucket: str,
    key: str,
    *,
    destination_client: OssClient | None = None,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> PutResult:
    """Copy an object through this process as a stream (e.g. between accounts or endpoints,
    where a server-side CopyObject is not possible). The source is read with If-Match on its
    ETag; the copy's CRC-64 is checked against the source's."""
    target_client = destination_client or client
    async with client.open_object(source_bucket, source_key) as reader:
        counter = _Progress(reader.info.size, progress)

        async def relay() -> AsyncIterator[bytes]:
            async for chunk in reader:
                counter.add(len(chunk))
                yield chunk

        result = await target_client.put_object(
            bucket,
            key,
            relay(),
            metadata=metadata if metadata is not None else reader.info.metadata,
            size=reader.info.size,
        )
    source_crc = reader.info.crc64
    if source_crc is not None and result.crc64 is not None and source_crc != result.crc64:
        raise IntegrityError(
            f"copy {source_key} -> {key}: CRC-64 {result.crc64} != source's {source_crc}"
        )
    return result


# --- server-side copy ------------------------------------------------------------------------

# OSS's CopyObject takes sources up to 1 GB; larger ones are copied part by part.
COPY_OBJECT_LIMIT = 1024 * MIB
DEFAULT_COPY_PART_SIZE = 64 * MIB


async def copy_object_server_side(
    client: OssClient,
    source_bucket: str,
    source_key: str,
    bucket: str,
    key: str,
    *,
    metadata: Mapping[str, str] | None = None,
    part_size: int = DEFAULT_COPY_PART_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    single_copy_limit: int = COPY_OBJECT_LIMIT,
    progress: ProgressCallback | None = None,
) -> PutResult:
    """Copy an object inside OSS, of any size: CopyObject up to ``single_copy_limit``, else a
    multipart upload of UploadPartCopy ranges (``concurrency`` at a time), aborted on failure.

    The source is pinned by If-Match on the ETag it had at the start, so a source replaced
    during the copy fails the copy (PreconditionFailed) instead of mixing versions. Metadata is
    the source's unless ``metadata`` is given. The copy's CRC-64 is checked against the
    source's.
    """
    source = await client.head_object(source_bucket, source_key)
    counter = _Progress(source.size, progress)
    if source.size < single_copy_limit:
        result = await client.copy_object(
            source_bucket, source_key, bucket, key, metadata=metadata, if_match=source.etag
        )
        counter.add(source.size)
    else:
        parts = part_ranges(source.size, choose_part_size(source.size, part_size))
        upload_id = await client.init_multipart_upload(
            bucket,
            key,
            metadata=metadata if metadata is not None else source.metadata,
            headers={"Content-Type": source.content_type} if source.content_type else None,
        )
        copied: dict[int, PartInfo] = {}

        async def copy_part(number: int, offset: int, size: int) -> None:
            copied[number] = await client.upload_part_copy(
                bucket, key, upload_id, number, source_bucket, source_key,
                byte_range=(offset, offset + size - 1), if_match=source.etag,
            )  # fmt: skip
            counter.add(size)

        try:
            await _run_parts(parts, concurrency, copy_part)
            result = await client.complete_multipart_upload(
                bucket,
                key,
                upload_id,
                [copied[number] for number, _, _ in parts],
                expected_crc64=source.crc64,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await _abort_quietly(client, bucket, key, upload_id)
            raise
    if source.crc64 is not None and result.crc64 is not None and source.crc64 != result.crc64:
        raise IntegrityError(
            f"copy {source_key} -> {key}: CRC-64 {result.crc64} != source's {source.crc64}"
        )
    return result
