"""The write path (fs/writer.py) against the real server: staging, uploads, journal, recovery."""

from __future__ import annotations

import errno
import os
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import oss2
import pytest
import trio

from ossmount.fs import writer as writer_module
from ossmount.fs.staging import StagingFullError
from ossmount.fs.writer import (
    RecoveryReport,
    StagedFile,
    StreamedRangeGoneError,
    UploadFailedError,
    WriteStaging,
)
from ossmount.oss.client import OssClient
from ossmount.oss.crc64 import crc64
from ossmount.oss.errors import FileAlreadyExists, IntegrityError, OssError
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK

KiB = 1024
MiB = 1024 * KiB
PART = 100 * KiB  # the smallest part OSS allows: many parts from little data


def _client(server: RunningServer, *, attempts: int = 3) -> OssClient:
    return OssClient(
        server.endpoint,
        Credentials(TEST_AK, TEST_SK),
        region=TEST_REGION,
        retry=RetryPolicy(max_attempts=attempts, base_delay_s=0.01, max_delay_s=0.05),
    )


@asynccontextmanager
async def open_staging(
    client: OssClient, state_dir: Path, **overrides: Any
) -> AsyncIterator[WriteStaging]:
    """A WriteStaging with its background task running; at exit the task is cancelled and the
    state directory released, as at unmount (or, mid-upload, as in a crash)."""
    options: dict[str, Any] = {
        "prefix": "",
        "disk_budget_bytes": 64 * MiB,
        "part_size": PART,
        "multipart_threshold": 2 * PART,
        "upload_concurrency": 3,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
    }
    options.update(overrides)
    staging = WriteStaging(client, TEST_BUCKET, state_dir=state_dir, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(staging.run)
            yield staging
            nursery.cancel_scope.cancel()
    finally:
        staging.close()


def _data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _staging_bytes(state_dir: Path) -> int:
    return sum(path.stat().st_size for path in (state_dir / "staging").iterdir())


def _open_uploads(bucket: oss2.Bucket) -> list[str]:
    return [upload.key for upload in oss2.MultipartUploadIterator(bucket)]


def _get(bucket: oss2.Bucket, key: str) -> bytes:
    data: bytes = bucket.get_object(key).read()
    return data


def _server_crc(bucket: oss2.Bucket, key: str) -> int:
    return int(bucket.head_object(key).headers["x-oss-hash-crc64ecma"])


async def _write_all(staged: StagedFile, data: bytes, chunk: int, offset: int = 0) -> None:
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        assert await staged.write(offset + start, piece) == len(piece)


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(function, *args)


async def test_small_new_file_is_one_put(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("dir/small.txt", None, truncate=True)
        staged.set_metadata({"mode": str(0o100640), "uid": "1000", "gid": "1000"})
        await staged.write(0, b"hello ")
        await staged.write(6, b"world\n")
        assert await staged.read(0, 100) == b"hello world\n"
        oss_server.stats.reset()
        await staged.flush()
        assert oss_server.stats.count("PutObject") == 1
        assert oss_server.stats.count() == 1
        await staged.release()
        assert staging.staged("dir/small.txt") is None
    assert await _in_thread(_get, oss2_bucket, "dir/small.txt") == b"hello world\n"
    meta = (await _in_thread(oss2_bucket.head_object, "dir/small.txt")).headers
    assert meta["x-oss-meta-mode"] == str(0o100640)
    assert list((tmp_path / "state" / "staging").iterdir()) == []


async def test_touch_creates_empty_object(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("empty", None, truncate=True)
        await staged.flush()
        await staged.release()
    assert await _in_thread(_get, oss2_bucket, "empty") == b""


async def test_sequential_write_streams_parts_within_the_budget(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    data = _data(40 * PART + 123)
    state_dir = tmp_path / "state"
    # Room for part 1, the parts in flight (upload_concurrency) and the part being filled:
    # uploaded parts are dropped to make room for new ones.
    budget = (1 + 3 + 1) * PART
    async with (
        _client(oss_server) as client,
        open_staging(client, state_dir, disk_budget_bytes=budget) as staging,
    ):
        staged = await staging.open("big.bin", None, truncate=True)
        peak = 0
        for start in range(0, len(data), 32 * KiB):
            await staged.write(start, data[start : start + 32 * KiB])
            peak = max(peak, _staging_bytes(state_dir))
        assert peak <= budget
        parts_before_close = oss_server.stats.count("UploadPart")
        assert parts_before_close >= 30  # streamed while writing, not at close
        oss_server.stats.reset()
        await staged.flush()
        # At close: part 1, the last part, CompleteMultipartUpload (and nothing else big).
        assert oss_server.stats.count("UploadPart") <= 2 + 3
        assert oss_server.stats.count("CompleteMultipartUpload") == 1
        await staged.release()
    assert await _in_thread(_get, oss2_bucket, "big.bin") == data
    assert await _in_thread(_server_crc, oss2_bucket, "big.bin") == crc64(data)
    assert await _in_thread(_open_uploads, oss2_bucket) == []
    assert _staging_bytes(state_dir) == 0
    assert list((state_dir / "staging").iterdir()) == []  # no empty file left either


async def test_header_rewrite_and_random_writes_of_new_file(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    # A budget of 5 parts: the middle parts of the long file are dropped once uploaded.
    async with (
        _client(oss_server) as client,
        open_staging(client, tmp_path / "state", disk_budget_bytes=5 * PART) as staging,
    ):
        # A small file written out of order: becomes a full staging file.
        small = await staging.open("random.bin", None, truncate=True)
        expected = bytearray(PART + 500)
        for offset in (PART, 7, 300, PART // 2, 0):  # a hole over a part boundary first
            piece = _data(500, offset)
            await small.write(offset, piece)
            expected[offset : offset + 500] = piece
        assert small.mode == "local"
        assert await small.read(0, len(expected)) == bytes(expected)
        await small.flush()
        await small.release()

        # A long streamed file whose header (in part 1) is rewritten at the end: still streamed.
        data = bytearray(_data(10 * PART, 2))
        big = await staging.open("muxed.mp4", None, truncate=True)
        await _write_all(big, bytes(data), 64 * KiB)
        await big.write(4, b"HEADER")
        data[4:10] = b"HEADER"
        assert big.mode == "stream"
        # The middle parts were sent and dropped: writing there cannot be honoured.
        with pytest.raises(StreamedRangeGoneError) as raised:
            await big.write(5 * PART, b"x")
        assert raised.value.errno == errno.EIO
        await big.flush()
        await big.release()
    assert await _in_thread(_get, oss2_bucket, "random.bin") == bytes(expected)
    assert await _in_thread(_get, oss2_bucket, "muxed.mp4") == bytes(data)
    assert await _in_thread(_open_uploads, oss2_bucket) == []


async def test_write_into_existing_object_uploads_only_changed_ranges(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    original = _data(4 * MiB, 3)
    await _in_thread(oss2_bucket.put_object, "existing.bin", original)
    async with (
        _client(oss_server) as client,
        open_staging(client, tmp_path / "state", part_size=MiB) as staging,
    ):
        info = await client.head_object(TEST_BUCKET, "existing.bin")
        staged = await staging.open("existing.bin", info, truncate=False)
        assert await staged.read(0, 10) is None  # nothing staged: the reader serves it
        oss_server.stats.reset()
        await staged.write(2 * MiB + 5, b"CHANGED")
        assert staged.mode == "local"
        assert oss_server.stats.count("GetObject") >= 1  # the full local copy
        oss_server.stats.reset()
        await staged.flush()
        await staged.release()
        uploaded_parts = oss_server.stats.count("UploadPart")
        copied_parts = oss_server.stats.count("UploadPartCopy")
    expected = bytearray(original)
    expected[2 * MiB + 5 : 2 * MiB + 12] = b"CHANGED"
    assert await _in_thread(_get, oss2_bucket, "existing.bin") == bytes(expected)
    assert await _in_thread(_server_crc, oss2_bucket, "existing.bin") == crc64(bytes(expected))
    assert uploaded_parts == 1  # one minimal part around the change
    assert copied_parts == 2  # the unchanged runs before and after
    assert await _in_thread(_open_uploads, oss2_bucket) == []


async def test_append_and_truncate_up_and_down(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    original = _data(300 * KiB, 4)
    await _in_thread(oss2_bucket.put_object, "t.bin", original)
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        info = await client.head_object(TEST_BUCKET, "t.bin")
        staged = await staging.open("t.bin", info, truncate=False, append=True)
        await staged.write(staged.size, b"tail")  # O_APPEND: the caller writes at size
        await staged.truncate(1000)
        await staged.truncate(5000)  # grows with zeros
        assert staged.size == 5000
        await staged.flush()
        await staged.truncate(10)
        await staged.flush()
        await staged.release()
        assert await _in_thread(_get, oss2_bucket, "t.bin") == original[:10]

        staged = await staging.open(
            "t.bin", await client.head_object(TEST_BUCKET, "t.bin"), truncate=True
        )
        await staged.truncate(3 * PART)  # a new, sparse file
        await staged.write(PART, b"mid")
        await staged.flush()
        await staged.release()
    expected = bytearray(3 * PART)
    expected[PART : PART + 3] = b"mid"
    assert await _in_thread(_get, oss2_bucket, "t.bin") == bytes(expected)

    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("grow.bin", None, truncate=True)
        await staged.write(0, b"abc")
        await staged.truncate(1)
        await staged.flush()
        await staged.release()
    assert await _in_thread(_get, oss2_bucket, "grow.bin") == b"a"


async def test_two_handles_share_the_staged_file(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        first = await staging.open("shared", None, truncate=True)
        second = await staging.open("shared", None, truncate=False)
        assert first is second
        await first.write(0, b"one")
        assert await second.read(0, 3) == b"one"
        await first.flush()
        await first.release()
        await second.write(3, b"two")
        await second.flush()
        await second.release()
    assert await _in_thread(_get, oss2_bucket, "shared") == b"onetwo"


async def test_exclusive_create_meets_existing_object(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("excl", None, truncate=True, exclusive=True)
        await staged.write(0, b"mine")
        await _in_thread(oss2_bucket.put_object, "excl", b"theirs")  # a race lost
        with pytest.raises(FileAlreadyExists) as raised:
            await staged.flush()
        assert raised.value.errno == errno.EEXIST
        await staged.release()
        await staging.wait_idle()
        # A multipart O_EXCL create meets the same check at completion.
        big = await staging.open("excl-big", None, truncate=True, exclusive=True)
        await _write_all(big, _data(5 * PART), 64 * KiB)
        await _in_thread(oss2_bucket.put_object, "excl-big", b"theirs")
        with pytest.raises(FileAlreadyExists):
            await big.flush()
        await big.release()
    assert await _in_thread(_get, oss2_bucket, "excl") == b"theirs"
    assert await _in_thread(_get, oss2_bucket, "excl-big") == b"theirs"


async def test_metadata_only_change_is_a_copy(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    await _in_thread(oss2_bucket.put_object, "m", b"content")
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("m", await client.head_object(TEST_BUCKET, "m"), truncate=False)
        staged.set_metadata({"mode": str(0o100600), "mtime": "1700000000"})
        oss_server.stats.reset()
        await staged.flush()
        await staged.release()
        assert oss_server.stats.count("CopyObject") == 1
        assert oss_server.stats.count() == 1
    headers = (await _in_thread(oss2_bucket.head_object, "m")).headers
    assert headers["x-oss-meta-mode"] == str(0o100600)
    assert headers["x-oss-meta-mtime"] == "1700000000"
    assert await _in_thread(_get, oss2_bucket, "m") == b"content"


async def test_flush_failure_is_an_error_then_the_background_retry_succeeds(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    data = _data(50 * KiB)
    async with (
        _client(oss_server, attempts=2) as client,
        open_staging(client, tmp_path / "state") as staging,
    ):
        staged = await staging.open("flaky", None, truncate=True)
        await staged.write(0, data)
        oss_server.faults.only_operations = frozenset({"PutObject"})
        oss_server.faults.error_rate = 1.0
        with pytest.raises(UploadFailedError) as raised:
            await staged.flush()
        assert raised.value.errno == errno.EIO
        assert isinstance(raised.value.__cause__, OssError)
        await staged.release()  # close() returned EIO; the data stays staged
        assert staging.pending_keys() == ["flaky"]
        await trio.sleep(0.3)  # a few background attempts fail too
        assert staging.pending_keys() == ["flaky"]
        oss_server.faults.clear()
        with trio.fail_after(10):
            await staging.wait_idle()
        assert staging.staged("flaky") is None
    assert await _in_thread(_get, oss2_bucket, "flaky") == data


async def test_disk_budget_exhausted_gives_enospc_without_corruption(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    original = _data(3 * PART, 5)
    await _in_thread(oss2_bucket.put_object, "budget.bin", original)
    async with (
        _client(oss_server) as client,
        open_staging(client, tmp_path / "state", disk_budget_bytes=4 * PART) as staging,
    ):
        staged = await staging.open(
            "budget.bin", await client.head_object(TEST_BUCKET, "budget.bin"), truncate=False
        )
        await staged.write(0, b"X")  # local copy: 3 parts of the 4 allowed
        with pytest.raises(StagingFullError) as raised:
            await staged.write(3 * PART, bytes(2 * PART))  # nothing will free space: ENOSPC
        assert raised.value.errno == errno.ENOSPC
        assert staged.size == 3 * PART
        await staged.flush()
        await staged.release()

        # A streamed write needs only a few parts: it waits for uploads instead of failing.
        oss_server.faults.latency_ms = 20
        data = _data(20 * PART, 6)
        stream = await staging.open("streamed.bin", None, truncate=True)
        await _write_all(stream, data, 50 * KiB)
        assert staging.budget.used <= 4 * PART
        oss_server.faults.clear()
        await stream.flush()
        await stream.release()
    assert await _in_thread(_get, oss2_bucket, "budget.bin") == b"X" + original[1:]
    assert await _in_thread(_get, oss2_bucket, "streamed.bin") == data


async def test_crash_during_flush_is_finished_by_recover(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    await _in_thread(oss2_bucket.put_object, "streamed.bin", b"old version")
    streamed = _data(30 * PART + 7, 7)
    original = _data(3 * MiB, 8)
    await _in_thread(oss2_bucket.put_object, "edited.bin", original)
    edited = bytearray(original)
    edited[MiB : MiB + 4] = b"EDIT"
    async with _client(oss_server) as client:
        async with open_staging(client, state_dir, part_size=256 * KiB) as staging:
            first = await staging.open("streamed.bin", None, truncate=True)
            await _write_all(first, streamed, 64 * KiB)
            second = await staging.open(
                "edited.bin", await client.head_object(TEST_BUCKET, "edited.bin"), truncate=False
            )
            await second.write(MiB, b"EDIT")
            # Slow the server, start both flushes and "crash" while they run.
            oss_server.faults.latency_ms = 300
            with trio.move_on_after(0.45) as cancelled:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(first.flush)
                    nursery.start_soon(second.flush)
            assert cancelled.cancelled_caught
            oss_server.faults.clear()
        # Nothing was published half-way: the old object, or (a CompleteMultipartUpload the
        # server got before the crash) the whole new one.
        assert await _in_thread(_get, oss2_bucket, "streamed.bin") in (b"old version", streamed)
        assert await _in_thread(_get, oss2_bucket, "edited.bin") == original
        assert await _in_thread(_open_uploads, oss2_bucket) != []

        async with open_staging(client, state_dir, part_size=256 * KiB) as staging:
            report: RecoveryReport = await staging.recover()
    assert sorted(report.completed) == ["edited.bin", "streamed.bin"]
    assert report.ok
    assert await _in_thread(_get, oss2_bucket, "streamed.bin") == streamed
    assert await _in_thread(_server_crc, oss2_bucket, "streamed.bin") == crc64(streamed)
    assert await _in_thread(_get, oss2_bucket, "edited.bin") == bytes(edited)
    assert await _in_thread(_server_crc, oss2_bucket, "edited.bin") == crc64(bytes(edited))
    assert await _in_thread(_open_uploads, oss2_bucket) == []
    assert _staging_bytes(state_dir) == 0


async def test_never_closed_write_leaves_the_old_object(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    await _in_thread(oss2_bucket.put_object, "keep.bin", b"old content")
    async with _client(oss_server) as client:
        async with open_staging(client, state_dir) as staging:
            staged = await staging.open(
                "keep.bin", await client.head_object(TEST_BUCKET, "keep.bin"), truncate=True
            )
            await _write_all(staged, _data(12 * PART, 9), 64 * KiB)
            assert oss_server.stats.count("UploadPart") > 0
            # The process dies here: no flush, no release.
        assert await _in_thread(_open_uploads, oss2_bucket) == ["keep.bin"]
        async with open_staging(client, state_dir) as staging:
            report = await staging.recover()
    assert report.discarded == ["keep.bin"]
    assert len(report.aborted_uploads) == 1
    assert await _in_thread(_get, oss2_bucket, "keep.bin") == b"old content"
    assert await _in_thread(_open_uploads, oss2_bucket) == []
    assert _staging_bytes(state_dir) == 0


async def test_uploaded_parts_stay_on_disk_while_the_budget_has_room(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """A streamed file whose parts went up can still be read anywhere, rewritten anywhere and
    kept when unlinked while open, as long as the budget did not need the room."""
    data = bytearray(_data(10 * PART + 5))
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("kept.bin", None, truncate=True)
        await _write_all(staged, bytes(data), 64 * KiB)
        await staged._wait_stream_parts()
        assert oss_server.stats.count("UploadPart") >= 8
        assert await staged.read(3 * PART, 10) == bytes(data[3 * PART : 3 * PART + 10])
        await staged.write(4 * PART + 1, b"rewritten")  # into a part already uploaded
        data[4 * PART + 1 : 4 * PART + 10] = b"rewritten"
        await staged.flush()
        assert await _in_thread(_get, oss2_bucket, "kept.bin") == bytes(data)
        await staged.write(7 * PART, b"again")
        data[7 * PART : 7 * PART + 5] = b"again"
        # What an unlink while open does:
        await staged.make_private()
        async with staging.removing("kept.bin"):
            await client.delete_object(TEST_BUCKET, "kept.bin")
        assert await staged.read(0, len(data)) == bytes(data)
        await staged.release()
    assert _staging_bytes(tmp_path / "state") == 0


async def test_unlink_while_open_keeps_working_and_uploads_nothing(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    await _in_thread(oss2_bucket.put_object, "gone", b"0123456789")
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open(
            "gone", await client.head_object(TEST_BUCKET, "gone"), truncate=False
        )
        # What an unlink while open does:
        await staged.make_private()
        async with staging.removing("gone"):
            await client.delete_object(TEST_BUCKET, "gone")
        await staged.write(10, b"ab")
        assert await staged.read(0, 100) == b"0123456789ab"
        await staged.flush()
        await staged.release()
    assert not await _in_thread(oss2_bucket.object_exists, "gone")


async def test_state_dir_is_exclusive(oss_server: RunningServer, tmp_path: Path) -> None:
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state"):
        with pytest.raises(OSError, match="in use") as raised:
            WriteStaging(
                client,
                TEST_BUCKET,
                state_dir=tmp_path / "state",
                prefix="",
                disk_budget_bytes=MiB,
                part_size=PART,
                multipart_threshold=PART,
                upload_concurrency=1,
            )
        assert raised.value.errno == errno.EBUSY
    assert os.path.exists(tmp_path / "state" / "journal.sqlite")


async def test_recover_resumes_uploaded_parts_by_listparts(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    original = _data(2 * MiB, 10)
    await _in_thread(oss2_bucket.put_object, "edited.bin", original)
    edited = bytearray(original)
    edited[5:9] = b"EDIT"
    streamed = _data(8 * PART + 1, 11)
    async with _client(oss_server, attempts=1) as client:
        async with open_staging(client, state_dir, retry_initial_s=60) as staging:
            local = await staging.open(
                "edited.bin", await client.head_object(TEST_BUCKET, "edited.bin"), truncate=False
            )
            await local.write(5, b"EDIT")
            stream = await staging.open("streamed.bin", None, truncate=True)
            await _write_all(stream, streamed, 64 * KiB)
            # Every part goes up, the completion fails: then the process dies.
            oss_server.faults.only_operations = frozenset({"CompleteMultipartUpload"})
            oss_server.faults.error_rate = 1.0
            for staged in (local, stream):
                with pytest.raises(UploadFailedError):
                    await staged.flush()
        oss_server.faults.clear()
        oss_server.stats.reset()
        async with open_staging(client, state_dir) as staging:
            report = await staging.recover()
    assert sorted(report.completed) == ["edited.bin", "streamed.bin"]
    # Nothing was sent again: ListParts confirmed the journalled parts.
    assert oss_server.stats.count("UploadPart") == 0
    assert oss_server.stats.count("UploadPartCopy") == 0
    assert oss_server.stats.count("ListParts") == 2
    assert oss_server.stats.count("CompleteMultipartUpload") == 2
    assert await _in_thread(_get, oss2_bucket, "edited.bin") == bytes(edited)
    assert await _in_thread(_get, oss2_bucket, "streamed.bin") == streamed
    assert await _in_thread(_open_uploads, oss2_bucket) == []


async def test_recover_command_finishes_a_crashed_upload(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    data = _data(6 * PART + 3, 12)
    async with (
        _client(oss_server, attempts=1) as client,
        open_staging(client, state_dir, prefix="pre/", retry_initial_s=60) as staging,
    ):
        staged = await staging.open("pre/file.bin", None, truncate=True)
        await _write_all(staged, data, 64 * KiB)
        oss_server.faults.only_operations = frozenset({"CompleteMultipartUpload"})
        oss_server.faults.error_rate = 1.0
        with pytest.raises(UploadFailedError):
            await staged.flush()
    oss_server.faults.clear()
    command = [
        sys.executable,
        "-m",
        "ossmount.cli",
        "recover",
        f"{TEST_BUCKET}:/pre",
        "--endpoint",
        oss_server.endpoint,
        "--region",
        TEST_REGION,
        "--state-dir",
        str(state_dir),
    ]
    environment = {
        **os.environ,
        "OSS_ACCESS_KEY_ID": TEST_AK,
        "OSS_ACCESS_KEY_SECRET": TEST_SK,
    }
    result = await trio.run_process(command, env=environment, capture_stdout=True, check=False)
    assert result.returncode == 0, result
    assert result.stdout.decode().splitlines() == ["completed upload of pre/file.bin"]
    assert await _in_thread(_get, oss2_bucket, "pre/file.bin") == data
    assert await _in_thread(_open_uploads, oss2_bucket) == []
    again = await trio.run_process(command, env=environment, capture_stdout=True, check=False)
    assert again.stdout.decode().splitlines() == ["nothing to recover"]


async def test_unlink_drops_a_pending_upload(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    async with (
        _client(oss_server, attempts=1) as client,
        open_staging(client, tmp_path / "state", retry_initial_s=0.05) as staging,
    ):
        staged = await staging.open("doomed", None, truncate=True)
        await staged.write(0, b"data")
        oss_server.faults.only_operations = frozenset({"PutObject"})
        oss_server.faults.error_rate = 1.0
        with pytest.raises(UploadFailedError):
            await staged.flush()
        await staged.release()
        async with staging.removing("doomed"):
            await client.delete_object(TEST_BUCKET, "doomed")
        assert staging.staged("doomed") is None
        oss_server.faults.clear()
        await trio.sleep(0.3)  # no background retry brings it back
    assert not await _in_thread(oss2_bucket.object_exists, "doomed")
    assert _staging_bytes(tmp_path / "state") == 0


async def test_end_to_end_crc_catches_staging_corruption(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    async with (
        _client(oss_server) as client,
        open_staging(client, state_dir, retry_initial_s=60) as staging,
    ):
        staged = await staging.open("corrupt.bin", None, truncate=True)
        await _write_all(staged, _data(5 * PART + 10, 13), 64 * KiB)
        # The last part waits on disk for close(): flip a byte of it behind the writer's back.
        (tail,) = (state_dir / "staging").glob("*.part6")
        content = bytearray(tail.read_bytes())
        content[0] ^= 0xFF
        tail.write_bytes(bytes(content))
        with pytest.raises(IntegrityError):
            await staged.flush()
        await staged.release()
    assert not await _in_thread(oss2_bucket.object_exists, "corrupt.bin")


async def test_recover_accepts_an_upload_completed_before_the_crash(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """The crash came after the server completed the upload but before the answer arrived."""
    state_dir = tmp_path / "state"
    data = _data(3 * MiB + 5, 14)
    original = _data(3 * MiB, 15)
    await _in_thread(oss2_bucket.put_object, "local.bin", original)
    edited = b"HEAD" + original[4:]
    async with (
        _client(oss_server, attempts=1) as client,
        open_staging(client, state_dir, retry_initial_s=60, part_size=MiB) as staging,
    ):
        stream = await staging.open("stream.bin", None, truncate=True)
        await _write_all(stream, data, 64 * KiB)
        local = await staging.open(
            "local.bin", await client.head_object(TEST_BUCKET, "local.bin"), truncate=False
        )
        await local.write(0, b"HEAD")
        oss_server.faults.only_operations = frozenset({"CompleteMultipartUpload"})
        oss_server.faults.error_rate = 1.0
        for staged in (stream, local):
            with pytest.raises(UploadFailedError):
                await staged.flush()
    oss_server.faults.clear()

    def complete_all_uploads() -> None:
        for upload in list(oss2.MultipartUploadIterator(oss2_bucket)):
            parts = [
                oss2.models.PartInfo(part.part_number, part.etag)
                for part in oss2.PartIterator(oss2_bucket, upload.key, upload.upload_id)
            ]
            oss2_bucket.complete_multipart_upload(upload.key, upload.upload_id, parts)

    await _in_thread(complete_all_uploads)
    async with _client(oss_server) as client, open_staging(client, state_dir) as staging:
        report = await staging.recover()
    assert report.ok, report.failed
    assert sorted(report.completed) == ["local.bin", "stream.bin"]
    assert await _in_thread(_get, oss2_bucket, "stream.bin") == data
    assert await _in_thread(_get, oss2_bucket, "local.bin") == edited


async def test_rename_while_open_then_more_writes(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("old-name", None, truncate=True)
        await staged.write(0, b"first ")
        await staged.flush()  # what the caller does before renaming a dirty file
        await client.copy_object(TEST_BUCKET, "old-name", TEST_BUCKET, "new-name")
        await client.delete_object(TEST_BUCKET, "old-name")
        moved = await client.head_object(TEST_BUCKET, "new-name")
        staging.rename("old-name", "new-name", moved.etag)
        assert staging.staged("new-name") is staged
        await staged.write(6, b"second")
        await staged.flush()
        await staged.release()
    assert await _in_thread(_get, oss2_bucket, "new-name") == b"first second"
    assert not await _in_thread(oss2_bucket.object_exists, "old-name")


async def test_base_object_replaced_before_flush_sends_local_bytes(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    original = _data(2 * MiB, 16)
    await _in_thread(oss2_bucket.put_object, "base.bin", original)
    async with (
        _client(oss_server) as client,
        open_staging(client, tmp_path / "state", part_size=MiB) as staging,
    ):
        staged = await staging.open(
            "base.bin", await client.head_object(TEST_BUCKET, "base.bin"), truncate=False
        )
        await staged.write(0, b"MINE")
        # Another writer replaces the object: copying "unchanged" ranges from it would mix two
        # versions, so If-Match fails and those bytes go from the local copy.
        await _in_thread(oss2_bucket.put_object, "base.bin", _data(2 * MiB, 17))
        oss_server.stats.reset()
        await staged.flush()
        await staged.release()
    assert await _in_thread(_get, oss2_bucket, "base.bin") == b"MINE" + original[4:]
    assert oss_server.stats.count("UploadPart") >= 2


async def test_metadata_change_of_a_huge_object_is_a_multipart_copy(
    oss_server: RunningServer,
    oss2_bucket: oss2.Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_module, "COPY_OBJECT_LIMIT", 0)  # everything counts as "huge"
    content = _data(3 * PART, 18)
    await _in_thread(oss2_bucket.put_object, "huge", content)
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open(
            "huge", await client.head_object(TEST_BUCKET, "huge"), truncate=False
        )
        staged.set_metadata({"mode": str(0o100600)})
        oss_server.stats.reset()
        await staged.flush()
        await staged.release()
        assert oss_server.stats.count("UploadPartCopy") >= 1
        assert oss_server.stats.count("GetObject") == 0  # nothing downloaded
    assert await _in_thread(_get, oss2_bucket, "huge") == content
    headers = (await _in_thread(oss2_bucket.head_object, "huge")).headers
    assert headers["x-oss-meta-mode"] == str(0o100600)


async def test_interrupted_local_copy_resumes(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    original = _data(4 * MiB, 19)
    await _in_thread(oss2_bucket.put_object, "resume.bin", original)
    async with (
        _client(oss_server, attempts=1) as client,
        open_staging(client, tmp_path / "state", part_size=MiB, upload_concurrency=1) as staging,
    ):
        staged = await staging.open(
            "resume.bin", await client.head_object(TEST_BUCKET, "resume.bin"), truncate=False
        )
        oss_server.faults.only_operations = frozenset({"GetObject"})
        oss_server.faults.error_rate = 0.5
        oss_server.faults.reseed(3)
        oss_server.stats.reset()
        failures = 0
        for _ in range(30):
            try:
                await staged.write(MiB, b"x")
                break
            except OssError:
                failures += 1
        else:
            pytest.fail("the local copy never completed")
        oss_server.faults.clear()
        assert failures > 0
        # Resumed, not restarted: each 1 MiB range was fetched once successfully.
        assert oss_server.stats.count("GetObject") - failures == 4
        await staged.flush()
        await staged.release()
    expected = bytearray(original)
    expected[MiB] = ord("x")
    assert await _in_thread(_get, oss2_bucket, "resume.bin") == bytes(expected)


async def test_open_during_background_recovery_gets_the_staged_data(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    data = _data(4 * PART, 20)
    async with (
        _client(oss_server, attempts=1) as client,
        open_staging(client, state_dir, retry_initial_s=60) as staging,
    ):
        staged = await staging.open("pending.bin", None, truncate=True)
        await _write_all(staged, data, 64 * KiB)
        oss_server.faults.only_operations = frozenset({"CompleteMultipartUpload"})
        oss_server.faults.error_rate = 1.0
        with pytest.raises(UploadFailedError):
            await staged.flush()
    oss_server.faults.clear()
    async with _client(oss_server) as client, open_staging(client, state_dir) as staging:
        # The mount serves before recovery ran: the key reads as the staged data.
        reopened = await staging.open("pending.bin", None, truncate=False)
        assert reopened.size == len(data)
        assert await reopened.read(0, PART) == data[:PART]
        report = await staging.recover()
        assert report.completed == ["pending.bin"]
        await reopened.release()
        assert staging.staged("pending.bin") is None
    assert await _in_thread(_get, oss2_bucket, "pending.bin") == data


async def test_rename_file_and_noreplace(
    oss_server: RunningServer,
    oss2_bucket: oss2.Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = _data(1000, 21)
    big = _data(3 * PART + 7, 22)
    await _in_thread(oss2_bucket.put_object, "a/small", small, {"x-oss-meta-mode": "33188"})
    await _in_thread(oss2_bucket.put_object, "a/big", big)
    await _in_thread(oss2_bucket.put_object, "a/taken", b"taken")
    await _in_thread(oss2_bucket.put_symlink, "a/small", "a/link")
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        info = await staging.rename_file("a/small", "b/small")
        assert info is not None
        assert info.size == len(small)
        assert info.metadata["mode"] == "33188"
        assert await staging.rename_file("a/link", "b/link", symlink=True) is None
        # Over 1 GB (here: everything, by lowering the limit) the copy is UploadPartCopy.
        monkeypatch.setattr(writer_module, "COPY_OBJECT_LIMIT", 0)
        oss_server.stats.reset()
        await staging.rename_file("a/big", "b/big")
        assert oss_server.stats.count("UploadPartCopy") >= 1
        with pytest.raises(FileAlreadyExists) as raised:
            await staging.rename_file("b/big", "a/taken", no_replace=True)
        assert raised.value.errno == errno.EEXIST
    assert await _in_thread(_get, oss2_bucket, "b/small") == small
    assert await _in_thread(_get, oss2_bucket, "b/big") == big
    assert await _in_thread(_get, oss2_bucket, "a/taken") == b"taken"
    # The link read "small" (relative to a/) and still does from b/, as a moved POSIX symlink.
    assert (await _in_thread(oss2_bucket.get_symlink, "b/link")).target_key == "b/small"
    for key in ("a/small", "a/big", "a/link"):
        assert not await _in_thread(oss2_bucket.object_exists, key)
    assert await _in_thread(_open_uploads, oss2_bucket) == []


async def test_rename_directory_and_finish_after_crash(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    tree = {f"src/d{n % 3}/f{n}": _data(100 + n, n) for n in range(40)}
    tree["src/"] = b""
    tree["src/d0/"] = b""

    def upload_tree() -> None:
        for key, value in tree.items():
            oss2_bucket.put_object(key, value)
        oss2_bucket.put_object("src_$folder$", b"")

    await _in_thread(upload_tree)
    async with _client(oss_server) as client, open_staging(client, state_dir) as staging:
        open_file = await staging.open("src/d1/new", None, truncate=True)
        await open_file.write(0, b"staged")
        moved = await staging.rename_directory("src/", "dst/")
        assert moved == len(tree) + 2  # the staged file was flushed first; the $folder$ marker
        assert open_file.key == "dst/d1/new"
        await open_file.write(6, b"!")
        await open_file.flush()
        await open_file.release()
    assert await _in_thread(_get, oss2_bucket, "dst/d1/new") == b"staged!"
    for key, value in tree.items():
        assert await _in_thread(_get, oss2_bucket, "dst/" + key[len("src/") :]) == value
    assert await _in_thread(oss2_bucket.object_exists, "dst_$folder$")
    left = await _in_thread(lambda: [o.key for o in oss2.ObjectIteratorV2(oss2_bucket, "src")])
    assert left == []

    # A crash in the middle: the journal row is there, some keys moved, some not.
    await _in_thread(upload_tree)
    async with _client(oss_server) as client:
        async with open_staging(client, state_dir) as staging:
            staging.journal.add_rename("src/", "moved/")
            await staging._move_key("src/d0/f0", "moved/d0/f0", 100, "", "Normal")
        async with open_staging(client, state_dir) as staging:
            report = await staging.recover()
    assert report.renames == [f"src/ -> moved/ ({len(tree)} keys moved)"]
    for key, value in tree.items():
        assert await _in_thread(_get, oss2_bucket, "moved/" + key[len("src/") :]) == value
    left = await _in_thread(lambda: [o.key for o in oss2.ObjectIteratorV2(oss2_bucket, "src")])
    assert left == []


async def test_chmod_while_streaming_and_budget_returns_to_zero(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    data = _data(6 * PART + 1, 23)
    original = _data(3 * PART, 24)
    await _in_thread(oss2_bucket.put_object, "existing", original)
    async with _client(oss_server) as client, open_staging(client, tmp_path / "state") as staging:
        staged = await staging.open("streamed", None, truncate=True)
        staged.set_metadata({"mode": str(0o100644)})
        await _write_all(staged, data[: 4 * PART], 64 * KiB)  # the upload began: metadata fixed
        staged.set_metadata({"mode": str(0o100600)})  # chmod while writing
        await _write_all(staged, data[4 * PART :], 64 * KiB, offset=4 * PART)
        await staged.flush()
        await staged.release()
        local = await staging.open(
            "existing", await client.head_object(TEST_BUCKET, "existing"), truncate=False
        )
        await local.write(10, b"x")
        await local.truncate(2 * PART)
        await local.flush()
        await local.release()
        assert staging.budget.used == 0
    headers = (await _in_thread(oss2_bucket.head_object, "streamed")).headers
    assert headers["x-oss-meta-mode"] == str(0o100600)
    assert await _in_thread(_get, oss2_bucket, "streamed") == data
    assert await _in_thread(_get, oss2_bucket, "existing") == (
        original[:10] + b"x" + original[11 : 2 * PART]
    )


async def test_holes_take_no_budget_until_written(
    oss_server: RunningServer, oss2_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """Growing by truncate or by a write past the end leaves a sparse hole: it counts against
    the budget only once written into, and what a cut or the release gives back matches."""
    async with (
        _client(oss_server) as client,
        open_staging(client, tmp_path / "state", disk_budget_bytes=4 * PART) as staging,
    ):
        staged = await staging.open("sparse", None, truncate=True)
        await staged.write(0, b"head")
        await staged.truncate(64 * PART)  # 16 times the budget
        assert staging.budget.used == 4
        await staged.write(10 * PART, b"x" * 100)  # fills 100 bytes of the hole
        await staged.write(70 * PART, b"tail")  # past the end: a new hole before it
        assert staging.budget.used == 4 + 100 + 4
        await staged.write(10 * PART + 50, b"y" * 100)  # half in the filled bytes, half hole
        assert staging.budget.used == 4 + 150 + 4
        await staged.truncate(10 * PART + 120)  # the cut gives back the written bytes only
        assert staging.budget.used == 4 + 120
        await staged.flush()
        await staged.release()
        assert staging.budget.used == 0
    expected = b"head" + bytes(10 * PART - 4) + b"x" * 50 + b"y" * 70
    assert await _in_thread(_get, oss2_bucket, "sparse") == expected
