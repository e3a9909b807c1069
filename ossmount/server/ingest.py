"""Receiving request bodies: from the socket to a fsynced temp file, with MD5 and CRC-64.

The PUT path is the server's hot loop for uploads. MD5 (the ETag) is its slowest step (about
0.8 GB/s on one core here), so the body is hashed in one worker thread while another computes
the CRC-64 and writes, and the event loop keeps receiving into reused buffers meanwhile.

The buffers are the server's (:class:`BufferPool`), not the request's: a multipart upload sends
one body per part (8 MiB each from the mount), and a buffer mapped afresh for each body had
every page faulted in and zeroed by the kernel again, which cost the server more CPU per GiB
than the copy out of the socket.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ossmount.oss.crc64 import crc64
from ossmount.server.errors import OssServerError
from ossmount.server.http import Body
from ossmount.server.store import INLINE_LIMIT, Blob, BlobWriter, Store, md5_digest

SMALL_BODY = 256 * 1024
PUMP_CHUNK = 8 << 20
# Buffers one body may hold at a time (filling, hashing, writing).
PUMP_BUFFERS = 4
# Idle buffers the server keeps for the next bodies (16 x 8 MiB).
POOL_IDLE_BUFFERS = 16


class BufferPool:
    """Page-aligned buffers of PUMP_CHUNK bytes, reused from body to body; used from the trio
    thread only. At most `max_idle` are kept when nobody uses them.

    A buffer holds what an earlier body left beyond the bytes received into it. Only O_DIRECT
    writes pass such bytes on (the padding of a body's last block), and the temp file is
    truncated back at once (BlobWriter.write_buffer)."""

    def __init__(self, max_idle: int = POOL_IDLE_BUFFERS) -> None:
        self._idle: list[mmap.mmap] = []
        self._max_idle = max_idle

    def take(self) -> mmap.mmap:
        return self._idle.pop() if self._idle else mmap.mmap(-1, PUMP_CHUNK)

    def give_back(self, buffer: mmap.mmap) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(buffer)
            return
        with contextlib.suppress(BufferError):  # still viewed (a failed body): dropped later
            buffer.close()


async def receive_blob(
    store: Store,
    body: Body,
    limit: int,
    *,
    direct_io: bool,
    buffers: BufferPool,
    writer: BlobWriter | None = None,
) -> Blob:
    """Receive a request body into a fsynced temp file (or `writer`), hashing it on the way.

    Bodies up to SMALL_BODY are read whole on the event loop; larger ones are pumped.
    """
    if body.declared_length is None and not body.chunked:
        raise OssServerError(
            411, "MissingContentLength", "You must provide the Content-Length HTTP header."
        )
    if body.declared_length is not None and body.declared_length > limit:
        raise OssServerError(
            400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size."
        )
    small = body.declared_length is not None and body.declared_length <= SMALL_BODY
    writer = writer or store.new_writer(direct=direct_io and not small)
    try:
        if small:
            writer.write(await body.read_all(limit))
        else:
            await _pump(body, writer, limit, buffers)
        return await trio.to_thread.run_sync(writer.finish)
    except BaseException:
        writer.discard()
        raise


@dataclass(frozen=True, slots=True)
class ObjectBody:
    """A received object body: its checksums, and either the data file it was installed as in
    data/ or, for a small body, the bytes to keep in the index (see store.py)."""

    size: int
    md5: bytes
    crc64: int
    data_file: str | None
    inline: bytes | None


async def receive_object_body(
    store: Store, body: Body, limit: int, *, direct_io: bool, buffers: BufferPool
) -> ObjectBody:
    """Receive a PUT body: one of at most INLINE_LIMIT bytes (with a Content-Length) is read
    whole and hashed on the event loop, for the index; a larger one goes into a fsynced file
    installed in data/.

    A body of at most SMALL_BODY bytes is read whole on the event loop, then written, fsynced
    and installed in one trip to a worker thread (a trip costs about as much CPU as the rest of
    a small PUT).
    """
    declared = body.declared_length
    if declared is not None and declared > limit:
        raise _entity_too_large()
    if declared is not None and declared <= INLINE_LIMIT:
        data = await body.read_all(INLINE_LIMIT)
        return ObjectBody(len(data), md5_digest(data), crc64(data), None, data)
    if declared is None or declared > SMALL_BODY:
        blob = await receive_blob(store, body, limit, direct_io=direct_io, buffers=buffers)
        try:
            data_file = await trio.to_thread.run_sync(store.install_object_file, blob.temp_path)
        except BaseException:
            blob.temp_path.unlink(missing_ok=True)
            raise
        return ObjectBody(blob.size, blob.md5, blob.crc64, data_file, None)
    data = await body.read_all(limit)

    def write_and_install() -> ObjectBody:
        writer = store.new_writer()
        try:
            writer.write(data)
            blob = writer.finish()
        except BaseException:
            writer.discard()
            raise
        try:
            data_file = store.install_object_file(blob.temp_path)
        except BaseException:
            blob.temp_path.unlink(missing_ok=True)
            raise
        return ObjectBody(blob.size, blob.md5, blob.crc64, data_file, None)

    return await trio.to_thread.run_sync(write_and_install)


async def _pump(body: Body, writer: BlobWriter, limit: int, buffers: BufferPool) -> None:
    """Socket -> two worker threads, one hashing MD5, one computing CRC-64 and writing.

    The body is read straight into a few buffers of the pool (no allocation per read); each
    full buffer goes to both workers, which have a queue each, so neither waits for the
    other buffer by buffer and the socket keeps being read while they work. A buffer
    returns to the body's free list when both are done with it, and to the pool at the end.
    """
    free_send, free_receive = trio.open_memory_channel[mmap.mmap](PUMP_BUFFERS)
    held: list[mmap.mmap] = []  # taken from the pool for this body
    md5_send, md5_receive = trio.open_memory_channel[tuple[mmap.mmap, int]](PUMP_BUFFERS)
    write_send, write_receive = trio.open_memory_channel[tuple[mmap.mmap, int]](PUMP_BUFFERS)
    users: dict[int, int] = {}  # id(buffer) -> workers not yet done with it

    def hash_md5(buffer: mmap.mmap, length: int) -> None:
        writer.hash_md5(memoryview(buffer)[:length])

    async def consume(
        channel: trio.MemoryReceiveChannel[tuple[mmap.mmap, int]],
        work: Callable[[mmap.mmap, int], None],
    ) -> None:
        async with channel:
            async for buffer, length in channel:
                await trio.to_thread.run_sync(work, buffer, length)
                users[id(buffer)] -= 1
                if users[id(buffer)] == 0:
                    del users[id(buffer)]
                    free_send.send_nowait(buffer)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, md5_receive, hash_md5)
            nursery.start_soon(consume, write_receive, writer.write_buffer)
            async with md5_send, write_send:
                total = 0
                while True:
                    try:
                        buffer = free_receive.receive_nowait()
                    except trio.WouldBlock:
                        if len(held) < PUMP_BUFFERS:
                            buffer = buffers.take()
                            held.append(buffer)
                        else:
                            buffer = await free_receive.receive()
                    view = memoryview(buffer)
                    filled = 0
                    while filled < len(buffer):
                        received = await body.receive_into(view[filled:])
                        if received == 0:
                            break
                        filled += received
                    view.release()
                    total += filled
                    if total > limit:
                        raise _entity_too_large()
                    if filled:
                        users[id(buffer)] = 2
                        await md5_send.send((buffer, filled))
                        await write_send.send((buffer, filled))
                    if filled < len(buffer):
                        break
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        # The workers are done (the nursery waited for them): no buffer is in use any more.
        for buffer in held:
            buffers.give_back(buffer)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group.exceptions[0]


def _entity_too_large() -> OssServerError:
    return OssServerError(
        400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size."
    )
