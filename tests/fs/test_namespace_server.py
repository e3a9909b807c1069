"""The namespace against the real server (no FUSE): lookups, listings, caches, request counts."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from typing import Any

import oss2
import pytest
import trio

from ossmount.fs.attrs import AttrDefaults, Attributes, Kind
from ossmount.fs.dircache import DirSnapshot, Namespace, NamespaceOptions, SingleFlight
from ossmount.oss.client import OssClient
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK

DEFAULTS = AttrDefaults(uid=1, gid=2, file_mode=0o644, dir_mode=0o755)
MODE_0600 = {"x-oss-meta-mode": str(stat.S_IFREG | 0o600)}


@pytest.fixture
async def client(oss_server: RunningServer) -> AsyncIterator[OssClient]:
    async with OssClient(
        oss_server.endpoint, Credentials(TEST_AK, TEST_SK), region=TEST_REGION
    ) as oss_client:
        yield oss_client


def namespace(client: OssClient, **options: Any) -> Namespace:
    return Namespace(client, TEST_BUCKET, DEFAULTS, NamespaceOptions(**options), dir_mtime_ns=0)


async def test_cold_lookup_file_dir_missing_and_ossfs_marker(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    oss2_bucket.put_object("f.txt", b"abc", headers=MODE_0600)
    oss2_bucket.put_object("d/inner", b"x")
    oss2_bucket.put_object("old_$folder$", b"")
    ns = namespace(client)
    oss_server.stats.reset()
    file_attrs = await ns.lookup("", "f.txt")
    assert file_attrs is not None
    assert file_attrs.kind is Kind.FILE
    assert file_attrs.permissions == 0o600
    assert file_attrs.size == 3
    assert oss_server.stats.total == 3  # HEAD, one-key LIST, HEAD of the _$folder$ marker
    directory = await ns.lookup("", "d")
    assert directory is not None
    assert directory.kind is Kind.DIR
    old = await ns.lookup("", "old")
    assert old is not None
    assert old.kind is Kind.DIR
    assert await ns.lookup("", "missing") is None
    oss_server.stats.reset()
    assert await ns.lookup("", "missing") is None  # negative cache
    assert await ns.lookup("", "f.txt") is not None  # stat cache
    assert oss_server.stats.total == 0


async def test_listing_serves_lookups_and_reuses_heads_per_version(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(30):
        oss2_bucket.put_object(f"dir/f{index:02d}", b"x", headers=MODE_0600)
    ns = namespace(client, list_cache_ttl_s=0.0, head_concurrency=4)
    oss_server.stats.reset()
    snapshot = await ns.list_directory("dir/")
    assert [entry.name for entry in snapshot.entries] == [f"f{i:02d}" for i in range(30)]
    assert all(entry.attrs.permissions == 0o600 for entry in snapshot.entries)
    assert oss_server.stats.count("HeadObject") == 30
    # The listing cache is off, so this lists again, but every ETag/Last-Modified is unchanged.
    oss_server.stats.reset()
    again = await ns.list_directory("dir/")
    assert all(entry.attrs.exact for entry in again.entries)
    assert oss_server.stats.count("HeadObject") == 0
    assert oss_server.stats.count("ListObjectsV2") == 1
    # A replaced object is HEADed again.
    oss2_bucket.put_object(
        "dir/f00", b"new", headers={"x-oss-meta-mode": str(stat.S_IFREG | 0o640)}
    )
    oss_server.stats.reset()
    third = await ns.list_directory("dir/")
    assert oss_server.stats.count("HeadObject") == 1
    assert third.entries[0].attrs.permissions == 0o640


async def test_listing_with_readdir_optimize_makes_no_heads(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(5):
        oss2_bucket.put_object(f"dir/f{index}", b"x", headers=MODE_0600)
    oss2_bucket.put_object("dir/sub/x", b"x")
    ns = namespace(client, exact_metadata=False)
    oss_server.stats.reset()
    snapshot = await ns.list_directory("dir/")
    assert oss_server.stats.total == 1
    assert [(e.name, e.attrs.kind) for e in snapshot.entries][-1] == ("sub", Kind.DIR)
    assert all(e.attrs.permissions == 0o644 for e in snapshot.entries if e.attrs.kind is Kind.FILE)
    oss_server.stats.reset()
    assert await ns.lookup("dir/", "f3") is not None
    assert await ns.lookup("dir/", "nothing") is None
    assert oss_server.stats.total == 0  # both answered by the cached listing


async def test_many_pages(client: OssClient, oss2_bucket: oss2.Bucket) -> None:
    for index in range(250):
        oss2_bucket.put_object(f"big/{index:05d}", b"")
    oss2_bucket.put_object("big/zz/inner", b"")
    ns = namespace(client, exact_metadata=False, list_page_keys=100)
    snapshot = await ns.list_directory("big/")
    assert len(snapshot.entries) == 251
    assert snapshot.entries[-1].name == "zz"


async def test_readdir_optimize_reuses_known_exact_attributes(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    oss2_bucket.put_object("dir/a", b"x", headers=MODE_0600)
    oss2_bucket.put_object("dir/b", b"x", headers=MODE_0600)
    ns = namespace(client, exact_metadata=False)
    looked_up = await ns.lookup("dir/", "a")  # a cold lookup HEADs: exact
    assert looked_up is not None
    assert looked_up.permissions == 0o600
    oss_server.stats.reset()
    snapshot = await ns.list_directory("dir/")
    assert [e.attrs.permissions for e in snapshot.entries] == [0o600, 0o644]
    assert oss_server.stats.count("HeadObject") == 0


async def test_concurrent_calls_share_one_listing_and_one_probe(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(10):
        oss2_bucket.put_object(f"dir/f{index}", b"x")
    ns = namespace(client)
    oss_server.stats.reset()
    snapshots: list[DirSnapshot] = []
    misses: list[Attributes | None] = []

    async def list_it() -> None:
        snapshots.append(await ns.list_directory("dir/"))

    async def look_up_missing() -> None:
        misses.append(await ns.lookup("", "missing"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(list_it)
            nursery.start_soon(look_up_missing)
    assert len({id(snapshot) for snapshot in snapshots}) == 1
    assert misses == [None] * 5
    assert oss_server.stats.count("ListObjectsV2") == 1 + 1  # one listing, one probe
    assert oss_server.stats.count("HeadObject") == 10 + 2  # the listing's, the probe's two


async def test_single_flight_passes_errors_to_followers() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    errors: list[Exception] = []

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)
        raise ValueError("boom")

    async def run() -> None:
        try:
            await flights.run("k", failing)
        except ValueError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(run)
    assert calls == 1
    assert len(errors) == 3
