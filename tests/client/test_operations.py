"""Every OssClient operation against the bundled server over loopback sockets."""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import oss2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossmount.oss import errors
from ossmount.oss.client import FileSlice, OssClient
from ossmount.oss.crc64 import crc64
from ossmount.oss.model import ObjectSummary
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer, open_server
from tests.client.conftest import FAST_RETRY, random_file
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK, server_config

B = TEST_BUCKET
ODD_KEYS = ["plain", "with space", "ünïcødé/文件", "a+b%c?d#e", "a//b", "dir/", "~tilde.x"]


@pytest.mark.parametrize("key", ODD_KEYS)
async def test_put_head_get_round_trip(client: OssClient, key: str) -> None:
    data = b"payload of " + key.encode()
    put = await client.put_object(
        B, key, data, metadata={"Mode": "33188"}, headers={"Content-Type": "text/plain"}
    )
    assert put.crc64 == crc64(data) and put.etag.startswith('"')
    info = await client.head_object(B, key)
    assert (info.key, info.size, info.etag, info.object_type) == (
        key,
        len(data),
        put.etag,
        "Normal",
    )
    assert info.crc64 == crc64(data)
    assert info.content_type == "text/plain"
    assert dict(info.metadata) == {"mode": "33188"}
    assert info.last_modified > 1_600_000_000
    assert await client.get_object(B, key) == data
    async with client.open_object(B, key) as reader:
        assert reader.info.etag == put.etag and reader.content_range is None
        assert b"".join([chunk async for chunk in reader]) == data


async def test_ranges_use_standard_behaviour(client: OssClient) -> None:
    data = bytes(range(256)) * 4
    await client.put_object(B, "r", data)
    assert await client.get_object(B, "r", byte_range=(0, 99)) == data[:100]
    assert await client.get_object(B, "r", byte_range=(1000, None)) == data[1000:]
    assert await client.get_object(B, "r", byte_range=(1000, 5000)) == data[1000:]
    async with client.open_object(B, "r", byte_range=(10, 19)) as reader:
        assert reader.content_range == (10, 19) and reader.info.size == len(data)
        assert await reader.aread() == data[10:20]
    with pytest.raises(errors.InvalidRange) as info:
        await client.get_object(B, "r", byte_range=(5000, 6000))
    assert info.value.errno == errno.EINVAL


async def test_conditional_gets(client: OssClient) -> None:
    put = await client.put_object(B, "c", b"v1")
    assert await client.get_object(B, "c", if_match=put.etag) == b"v1"
    with pytest.raises(errors.PreconditionFailed) as failed:
        await client.get_object(B, "c", if_match='"0000"')
    assert failed.value.errno == errno.ESTALE
    with pytest.raises(errors.NotModified):
        await client.get_object(B, "c", if_none_match=put.etag)


async def test_small_get_gives_the_head_metadata_and_the_body(
    oss_server: RunningServer, client: OssClient
) -> None:
    data = b"small body"
    await client.put_object(
        B, "small", data, metadata={"Mode": "33188"}, headers={"Content-Type": "text/plain"}
    )
    oss_server.stats.reset()
    info, body = await client.get_small_object(B, "small", limit=64 * 1024)
    assert oss_server.stats.by_operation == {"GetObject": 1}
    assert body == data
    assert info == await client.head_object(B, "small")  # one place builds both
    with pytest.raises(errors.NotFound):
        await client.get_small_object(B, "absent", limit=64 * 1024)


async def test_small_get_of_a_larger_object_skips_its_body(
    oss_server: RunningServer, client: OssClient
) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: larger than the limit
    await client.put_object(B, "large", data)
    oss_server.stats.reset()
    info, body = await client.get_small_object(B, "large", limit=1024)
    assert body is None
    assert (info.size, info.crc64) == (len(data), crc64(data))
    assert oss_server.stats.by_operation == {"GetObject": 1}
    # The connection was closed rather than drained; the next request gets a good one.
    info, body = await client.get_small_object(B, "large", limit=len(data))
    assert body == data


async def test_small_get_drops_a_body_that_fails_its_crc(
    oss_server: RunningServer, client: OssClient, caplog: pytest.LogCaptureFixture
) -> None:
    await client.put_object(B, "rotten", b"good bytes")
    record = oss_server.store.get_object(B, "rotten")
    assert record is not None and record.body_id is not None  # small: kept in the index
    oss_server.store._db.execute(  # same length, behind the server's back
        "UPDATE bodies SET data = ? WHERE id = ?", (b"evil bytes", record.body_id)
    )
    with caplog.at_level(logging.WARNING, logger="ossmount.oss.client"):
        info, body = await client.get_small_object(B, "rotten", limit=1024)
    assert body is None
    assert info.size == 10
    assert "does not match its CRC-64" in caplog.text


async def test_put_from_file_slice_and_streams(client: OssClient, tmp_path: Path) -> None:
    data = random_file(tmp_path / "f", 3 * 1024 * 1024 + 5)
    await client.put_object(B, "whole", tmp_path / "f")
    assert await client.get_object(B, "whole") == data
    await client.put_object(B, "slice", FileSlice(tmp_path / "f", 100, 2_000_000))
    assert await client.get_object(B, "slice") == data[100:2_000_100]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 700_000):
            yield data[start : start + 700_000]

    await client.put_object(B, "sized-stream", chunks(), size=len(data))
    assert await client.get_object(B, "sized-stream") == data
    await client.put_object(B, "chunked-stream", chunks())
    assert await client.get_object(B, "chunked-stream") == data


async def test_forbid_overwrite(client: OssClient) -> None:
    await client.put_object(B, "once", b"1", forbid_overwrite=True)
    with pytest.raises(errors.FileAlreadyExists) as info:
        await client.put_object(B, "once", b"2", forbid_overwrite=True)
    assert info.value.errno == errno.EEXIST and info.value.request_id
    assert await client.get_object(B, "once") == b"1"


async def test_missing_things_and_bad_keys(oss_server: RunningServer, client: OssClient) -> None:
    with pytest.raises(errors.NoSuchKey) as missing:
        await client.head_object(B, "nope")
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(errors.NoSuchKey):
        await client.get_object(B, "nope")
    with pytest.raises(errors.NoSuchBucket):
        await client.head_object("no-such-bucket", "k")
    with pytest.raises(errors.NoSuchBucket):
        await client.list_objects_page("no-such-bucket")
    wrong_secret = Credentials(TEST_AK, "wrong-secret")
    async with OssClient(oss_server.endpoint, wrong_secret, region=TEST_REGION) as bad:
        with pytest.raises(errors.SignatureDoesNotMatch) as info:
            await bad.put_object(B, "k", b"x")
        assert info.value.errno == errno.EACCES
        assert "wrong-secret" not in str(info.value)
        with pytest.raises(errors.Forbidden):  # HEAD: the code comes from x-oss-err
            await bad.head_object(B, "k")
    async with OssClient(oss_server.endpoint, Credentials("unknown", "x")) as unknown:
        with pytest.raises(errors.InvalidAccessKeyId):
            await unknown.get_object(B, "k")
    async with OssClient(oss_server.endpoint, None) as anonymous:
        with pytest.raises(errors.AccessDenied):
            await anonymous.get_object(B, "k")


async def test_v1_signing_client(oss_server: RunningServer) -> None:
    creds = Credentials(TEST_AK, TEST_SK)
    async with OssClient(oss_server.endpoint, creds, signature_version=1) as v1:
        await v1.put_object(B, "v1 key+ü", b"signed with v1")
        assert await v1.get_object(B, "v1 key+ü") == b"signed with v1"
        upload_id = await v1.init_multipart_upload(B, "v1-multi")
        await v1.abort_multipart_upload(B, "v1-multi", upload_id)


async def test_get_object_meta(client: OssClient) -> None:
    put = await client.put_object(B, "m", b"12345")
    meta = await client.get_object_meta(B, "m")
    assert (meta.size, meta.etag) == (5, put.etag)


async def test_append(client: OssClient) -> None:
    first = await client.append_object(B, "log", 0, b"hello ")
    assert first.next_position == 6
    second = await client.append_object(B, "log", 6, b"world", previous_crc64=first.crc64)
    assert second.next_position == 11 and second.crc64 == crc64(b"hello world")
    assert (await client.head_object(B, "log")).object_type == "Appendable"
    with pytest.raises(errors.PositionNotEqualToLength):
        await client.append_object(B, "log", 3, b"x")
    await client.put_object(B, "normal", b"n")
    with pytest.raises(errors.ObjectNotAppendable):
        await client.append_object(B, "normal", 1, b"x")


async def test_copy_object_keeps_or_replaces_metadata(client: OssClient) -> None:
    await client.put_object(B, "src", b"copy me", metadata={"a": "1"})
    kept = await client.copy_object(B, "src", B, "dst kept")
    assert kept.etag == (await client.head_object(B, "src")).etag
    assert dict((await client.head_object(B, "dst kept")).metadata) == {"a": "1"}
    await client.copy_object(B, "src", B, "dst replaced", metadata={"b": "2"})
    replaced = await client.head_object(B, "dst replaced")
    assert dict(replaced.metadata) == {"b": "2"}
    assert await client.get_object(B, "dst replaced") == b"copy me"
    with pytest.raises(errors.PreconditionFailed):
        await client.copy_object(B, "src", B, "dst", if_match='"stale"')
    with pytest.raises(errors.FileAlreadyExists):
        await client.copy_object(B, "src", B, "dst kept", forbid_overwrite=True)


async def test_delete_and_delete_multiple(client: OssClient) -> None:
    keys = [f"del/{i} ü+%" for i in range(5)]
    for key in keys:
        await client.put_object(B, key, b"x")
    await client.delete_object(B, keys[0])
    await client.delete_object(B, keys[0])  # deleting what is gone is fine
    result = await client.delete_objects(B, keys[1:])
    assert sorted(result.deleted) == sorted(keys[1:]) and not result.errors
    assert (await client.list_objects_page(B, prefix="del/")).objects == ()


async def test_listing_pages_prefixes_and_encoding(client: OssClient) -> None:
    keys = ["l/a", "l/b c", "l/d/1", "l/d/2", "l/e+ü/x", "l/f%?#", "l/g"]
    for key in keys:
        await client.put_object(B, key, b"")
    page = await client.list_objects_page(B, prefix="l/", delimiter="/", max_keys=3)
    assert page.is_truncated and page.next_token
    entries = [e async for e in client.iter_objects(B, prefix="l/", delimiter="/", max_keys=2)]
    objects = [e.key for e in entries if isinstance(e, ObjectSummary)]
    prefixes = [e for e in entries if isinstance(e, str)]
    assert objects == ["l/a", "l/b c", "l/f%?#", "l/g"]
    assert prefixes == ["l/d/", "l/e+ü/"]
    flat = [
        e.key async for e in client.iter_objects(B, prefix="l/") if isinstance(e, ObjectSummary)
    ]
    assert flat == sorted(keys)
    after = [p async for p in client.iter_pages(B, prefix="l/", start_after="l/d/2", max_keys=1)]
    assert [o.key for page in after for o in page.objects] == ["l/e+ü/x", "l/f%?#", "l/g"]


async def test_multipart_with_part_copy_and_iterators(client: OssClient) -> None:
    source = bytes(range(256)) * 2048  # 512 KiB
    await client.put_object(B, "mp-source", source)
    part_one = b"1" * 200_000
    upload_id = await client.init_multipart_upload(B, "mp target", metadata={"k": "v"})
    other_id = await client.init_multipart_upload(B, "mp target")
    await client.init_multipart_upload(B, "mp target2")
    uploads = [u.upload_id async for u in client.iter_object_uploads(B, "mp target")]
    assert sorted(uploads) == sorted([upload_id, other_id])
    all_uploads = [u async for u in client.iter_multipart_uploads(B, prefix="mp", max_uploads=1)]
    assert len(all_uploads) == 3

    first = await client.upload_part(B, "mp target", upload_id, 1, part_one)
    assert first.crc64 == crc64(part_one) and first.size == len(part_one)
    second = await client.upload_part_copy(
        B, "mp target", upload_id, 2, B, "mp-source", byte_range=(1000, 300_999)
    )
    third = await client.upload_part(B, "mp target", upload_id, 3, b"tail")
    listed = [p async for p in client.iter_parts(B, "mp target", upload_id, max_parts=1)]
    assert [(p.part_number, p.etag, p.size) for p in listed] == [
        (1, first.etag, len(part_one)),
        (2, second.etag, 300_000),
        (3, third.etag, 4),
    ]
    second_with_crc = type(second)(2, second.etag, 300_000, crc64=crc64(source[1000:301_000]))
    result = await client.complete_multipart_upload(
        B, "mp target", upload_id, [third, first, second_with_crc]
    )
    expected = part_one + source[1000:301_000] + b"tail"
    assert result.crc64 == crc64(expected)
    assert await client.get_object(B, "mp target") == expected
    info = await client.head_object(B, "mp target")
    assert info.object_type == "Multipart" and dict(info.metadata) == {"k": "v"}
    await client.abort_multipart_upload(B, "mp target", other_id)
    with pytest.raises(errors.NoSuchUpload):
        await client.upload_part(B, "mp target", other_id, 1, b"x")


async def test_complete_with_a_wrong_part_crc_is_an_integrity_error(client: OssClient) -> None:
    upload_id = await client.init_multipart_upload(B, "bad-crc")
    part = await client.upload_part(B, "bad-crc", upload_id, 1, b"data")
    lie = type(part)(1, part.etag, part.size, crc64=(part.crc64 or 0) ^ 1)
    with pytest.raises(errors.IntegrityError):
        await client.complete_multipart_upload(B, "bad-crc", upload_id, [lie])


async def test_symlinks(client: OssClient) -> None:
    await client.put_object(B, "target file ü", b"pointed at")
    await client.put_symlink(B, "link", "target file ü", metadata={"m": "1"})
    assert await client.get_symlink(B, "link") == "target file ü"
    assert (await client.head_object(B, "link")).object_type == "Symlink"
    assert await client.get_object(B, "link") == b"pointed at"
    with pytest.raises(errors.FileAlreadyExists):
        await client.put_symlink(B, "link", "x", forbid_overwrite=True)


async def test_buckets(client: OssClient) -> None:
    names = [bucket.name async for bucket in client.iter_buckets()]
    assert B in names
    info = await client.get_bucket_info(B)
    assert info.name == B and info.creation_date > 0


async def test_interoperates_with_oss2(client: OssClient, oss2_bucket: oss2.Bucket) -> None:
    await client.put_object(B, "from ossmount ü+", b"written by ossmount")
    assert oss2_bucket.get_object("from ossmount ü+").read() == b"written by ossmount"
    oss2_bucket.put_object("from oss2 ü+", b"written by oss2")
    assert await client.get_object(B, "from oss2 ü+") == b"written by oss2"


async def test_injected_errors_and_resets_are_survived(
    oss_server: RunningServer, client: OssClient, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "f", 2 * 1024 * 1024)
    await client.put_object(B, "flaky", data)
    oss_server.faults.reseed(11)
    oss_server.faults.error_rate = 0.4
    oss_server.faults.reset_rate = 0.4
    for round_number in range(6):
        await client.put_object(B, f"flaky-{round_number}", tmp_path / "f")
        assert await client.get_object(B, "flaky") == data
        assert (await client.head_object(B, f"flaky-{round_number}")).crc64 == crc64(data)
    oss_server.faults.clear()
    assert oss_server.stats.count("GetObject") > 6  # some were retried or resumed


async def test_retries_give_up_with_the_last_error(oss_server: RunningServer) -> None:
    oss_server.faults.error_rate = 1.0
    policy = type(FAST_RETRY)(max_attempts=3, base_delay_s=0.001)
    creds = Credentials(TEST_AK, TEST_SK)
    async with OssClient(oss_server.endpoint, creds, retry=policy) as flaky:
        oss_server.stats.reset()
        with pytest.raises(errors.ServerError) as info:
            await flaky.head_object(B, "k")
    assert oss_server.stats.count() == 3
    assert errors.is_transient(info.value)


@pytest.mark.parametrize("version", [1, 4])
async def test_presigned_urls(oss_server: RunningServer, version: int) -> None:
    creds = Credentials(TEST_AK, TEST_SK)
    async with OssClient(oss_server.endpoint, creds, signature_version=version) as signer:
        await signer.put_object(B, "shared ü+%/file", b"shared data")
        get_url = signer.presign("GET", B, "shared ü+%/file", 600)
        put_url = signer.presign("PUT", B, "uploaded via url", 600)
    async with httpx.AsyncClient() as plain:
        fetched = await plain.get(get_url)
        assert (fetched.status_code, fetched.content) == (200, b"shared data")
        stored = await plain.put(put_url, content=b"from a presigned PUT")
        assert stored.status_code == 200
        tampered = await plain.get(get_url.replace("shared", "sharex", 1))
        assert tampered.status_code == 403
    async with OssClient(oss_server.endpoint, creds) as client:
        assert await client.get_object(B, "uploaded via url") == b"from a presigned PUT"


async def test_no_secret_or_signature_in_debug_logs(
    oss_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for version in (1, 4):
        creds = Credentials(TEST_AK, TEST_SK)
        async with OssClient(oss_server.endpoint, creds, signature_version=version) as client:
            await client.put_object(B, "logged", b"x")
            await client.get_object(B, "logged")
            with pytest.raises(errors.NoSuchKey):
                await client.head_object(B, "missing")
        wrong = Credentials(TEST_AK, "another-secret-value")
        async with OssClient(oss_server.endpoint, wrong, signature_version=version) as client:
            with pytest.raises(errors.SignatureDoesNotMatch):
                await client.get_object(B, "logged")
    assert caplog.records  # httpx/httpcore did log at DEBUG
    for secret in (TEST_SK, "another-secret-value", "Signature=", "OSS4-HMAC-SHA256 Cred"):
        assert secret not in caplog.text


KEY_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# (OSS refuses names that start with a backslash, InvalidObjectName, as the server now does.)
@given(key=KEY_TEXT.filter(lambda key: not key.startswith(("/", "\\"))))
def test_any_unicode_key_round_trips(oss_server: RunningServer, key: str) -> None:
    async def round_trip() -> None:
        creds = Credentials(TEST_AK, TEST_SK)
        async with OssClient(oss_server.endpoint, creds) as client:
            await client.put_object(B, key, key.encode())
            assert await client.get_object(B, key) == key.encode()
            assert (await client.head_object(B, key)).size == len(key.encode())
            listed = [
                entry.key
                async for entry in client.iter_objects(B, prefix=key)
                if isinstance(entry, ObjectSummary)
            ]
            assert key in listed
            await client.delete_object(B, key)

    trio.run(round_trip)


@pytest.mark.parametrize("version", [1, 4])
async def test_sts_security_token(tmp_path: Path, version: int) -> None:
    sts = Credentials("sts-ak", "sts-secret", "sts-token/+=")
    config = server_config(tmp_path / "root", credentials=[sts])
    async with open_server(config) as server:
        async with OssClient(server.endpoint, sts, signature_version=version) as client:
            await client.put_object(B, "k", b"with token")
            assert await client.get_object(B, "k") == b"with token"
            url = client.presign("GET", B, "k", 60)
        async with httpx.AsyncClient() as plain:
            assert (await plain.get(url)).content == b"with token"
        no_token = Credentials("sts-ak", "sts-secret")
        async with OssClient(server.endpoint, no_token, signature_version=version) as client:
            with pytest.raises(errors.Forbidden):
                await client.get_object(B, "k")
