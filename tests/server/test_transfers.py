"""Streams and resumable transfers through oss2: the seed examples of the issue."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import crcmod
import oss2
import pytest
from oss2.exceptions import ServerError
from oss2.models import PartInfo

from ossmount.server import RunningServer, run_server_in_thread
from tests.conftest import server_config
from tests.server.conftest import oss2_bucket_at

reference_crc = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


def test_stream_to_file_and_into_another_object(bucket: oss2.Bucket, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    bucket.put_object("source.bin", data)
    result = bucket.get_object("source.bin")
    target = tmp_path / "copy.bin"
    with target.open("wb") as handle:
        shutil.copyfileobj(result, handle)
    assert result.client_crc == result.server_crc
    assert target.read_bytes() == data
    # A GetObjectResult as the body of a PUT: oss2 streams it with chunked transfer encoding.
    stream = bucket.get_object("source.bin")
    put = bucket.put_object("copied.bin", stream)
    assert stream.client_crc == stream.server_crc
    assert put.crc == stream.server_crc
    assert bucket.get_object("copied.bin").read() == data


def test_file_helpers(bucket: oss2.Bucket, tmp_path: Path) -> None:
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(200_000))
    bucket.put_object_from_file("up.bin", str(source))
    bucket.get_object_to_file("up.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == source.read_bytes()


def _fail_after(
    server: RunningServer, operation: str, limit: int
) -> Callable[[int, int | None], None]:
    """A progress callback that makes the server fail `operation` once `limit` bytes are done."""

    def progress(consumed: int, total: int | None) -> None:
        if consumed >= limit:
            server.faults.only_operations = frozenset({operation})
            server.faults.error_rate = 1.0

    return progress


def test_resumable_upload_interrupted_and_resumed(
    bucket: oss2.Bucket, oss_server: RunningServer, tmp_path: Path
) -> None:
    part_size = 100 * 1024
    source = tmp_path / "big.bin"
    data = os.urandom(part_size * 10 + 1234)
    source.write_bytes(data)
    store = oss2.ResumableStore(root=str(tmp_path / "checkpoints"))
    with pytest.raises(ServerError) as caught:
        oss2.resumable_upload(
            bucket, "big.bin", str(source), store=store, multipart_threshold=part_size,
            part_size=part_size, num_threads=1,
            progress_callback=_fail_after(oss_server, "UploadPart", 4 * part_size),
        )  # fmt: skip
    assert caught.value.status in (500, 503)
    oss_server.faults.clear()
    uploaded_before = oss_server.stats.count("UploadPart")
    assert not bucket.object_exists("big.bin")
    assert len(list(oss2.ObjectUploadIterator(bucket, "big.bin"))) == 1
    oss_server.stats.reset()
    result = oss2.resumable_upload(
        bucket, "big.bin", str(source), store=store, multipart_threshold=part_size,
        part_size=part_size, num_threads=2,
    )  # fmt: skip
    # Only the parts that failed or never started are sent again.
    assert oss_server.stats.count("UploadPart") <= 11 - 4
    assert uploaded_before >= 4
    assert result.crc == reference_crc(data)
    got = bucket.get_object("big.bin")
    assert got.read() == data
    assert got.client_crc == got.server_crc
    assert bucket.head_object("big.bin").etag.endswith("-11")
    assert list(oss2.ObjectUploadIterator(bucket, "big.bin")) == []


def test_resumable_download_interrupted_and_resumed(
    bucket: oss2.Bucket, oss_server: RunningServer, tmp_path: Path
) -> None:
    part_size = 100 * 1024
    data = os.urandom(part_size * 8 + 99)
    bucket.put_object("down.bin", data)
    store = oss2.ResumableDownloadStore(root=str(tmp_path / "checkpoints"))
    target = tmp_path / "down.bin"
    with pytest.raises(ServerError):
        oss2.resumable_download(
            bucket, "down.bin", str(target), store=store, multiget_threshold=part_size,
            part_size=part_size, num_threads=1,
            progress_callback=_fail_after(oss_server, "GetObject", 3 * part_size),
        )  # fmt: skip
    oss_server.faults.clear()
    assert not target.exists()
    oss_server.stats.reset()
    oss2.resumable_download(
        bucket, "down.bin", str(target), store=store, multiget_threshold=part_size,
        part_size=part_size, num_threads=2,
    )  # fmt: skip
    assert oss_server.stats.count("GetObject") <= 9 - 3
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("size", [256 * 1024 + 1, 2 * 1024 * 1024, 5 * 1024 * 1024 + 4097])
def test_direct_io_uploads(tmp_path: Path, size: int) -> None:
    config = server_config(tmp_path / "direct", direct_io=True)
    with run_server_in_thread(config) as server:
        bucket = oss2_bucket_at(server.endpoint)
        data = os.urandom(size)
        put = bucket.put_object("direct.bin", data)
        assert put.etag == hashlib.md5(data).hexdigest().upper()
        assert put.crc == reference_crc(data)
        assert bucket.get_object("direct.bin").read() == data
        upload_id = bucket.init_multipart_upload("direct-mp").upload_id
        part = bucket.upload_part("direct-mp", upload_id, 1, data)
        assert part.crc == reference_crc(data)
        bucket.complete_multipart_upload("direct-mp", upload_id, [PartInfo(1, part.etag)])
        assert bucket.get_object("direct-mp").read() == data


@pytest.mark.parametrize("direct_io", [False, True])
def test_reused_receive_buffers_hold_nothing_of_earlier_bodies(
    tmp_path: Path, direct_io: bool
) -> None:
    # The server keeps its receive buffers from body to body: a shorter body after a longer
    # one must come out whole and alone (checksums and bytes), buffered or with O_DIRECT.
    config = server_config(tmp_path / "reuse", direct_io=direct_io)
    with run_server_in_thread(config) as server:
        bucket = oss2_bucket_at(server.endpoint)
        for number, size in enumerate([9 * 1024 * 1024 + 1, 5 * 1024 * 1024 + 4097, 300_001]):
            data = os.urandom(size)
            put = bucket.put_object(f"reuse-{number}", data)
            assert put.etag == hashlib.md5(data).hexdigest().upper()
            assert put.crc == reference_crc(data)
            assert bucket.get_object(f"reuse-{number}").read() == data
