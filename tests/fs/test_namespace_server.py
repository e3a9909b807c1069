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
    # No listing cache: every lookup probes (HEAD, one-key LIST, HEAD of the marker).
    ns = namespace(client, list_cache_ttl_s=0.0)
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
    ns = namespace(client, list_cache_ttl_s=0.0, head_concurrency=4, small_file_get_bytes=0)
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
    ns = namespace(client, small_file_get_bytes=0, negative_ttl_s=30.0)
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
    # One listing of dir/, one of the root for the lookups, and one probe (its one-key LIST).
    assert oss_server.stats.count("ListObjectsV2") == 1 + 1 + 1
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


class Bodies:
    """What the namespace hands to the read path (on_small_body): (key, etag) -> body."""

    def __init__(self) -> None:
        self.offered: dict[tuple[str, str], bytes] = {}

    def __call__(self, key: str, etag: str, body: bytes) -> None:
        self.offered[(key, etag)] = body


def namespace_with_bodies(client: OssClient, **options: Any) -> tuple[Namespace, Bodies]:
    bodies = Bodies()
    ns = Namespace(
        client,
        TEST_BUCKET,
        DEFAULTS,
        NamespaceOptions(**options),
        dir_mtime_ns=0,
        on_small_body=bodies,
    )
    return ns, bodies


async def test_listing_gets_small_files_whole_and_hands_their_bodies_on(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(5):
        oss2_bucket.put_object(f"dir/f{index}", f"body {index}".encode(), headers=MODE_0600)
    large = bytes(range(256)) * 400  # 100 KiB, over the 64 KiB default
    oss2_bucket.put_object("dir/large", large, headers=MODE_0600)
    oss2_bucket.put_object("dir/empty", b"")
    # An ossfs symlink (its target is its body) and a FIFO (a zero-byte object with its mode).
    oss2_bucket.put_object(
        "dir/link", b"f0", headers={"x-oss-meta-mode": str(stat.S_IFLNK | 0o777)}
    )
    oss2_bucket.put_object("dir/fifo", b"", headers={"x-oss-meta-mode": str(stat.S_IFIFO | 0o600)})
    ns, bodies = namespace_with_bodies(client)
    oss_server.stats.reset()
    snapshot = await ns.list_directory("dir/")
    entries = {entry.name: entry.attrs for entry in snapshot.entries}
    # One request per object: a GET for each small one (the symlink's target included), a
    # HEAD for the large one.
    assert oss_server.stats.by_operation == {"ListObjectsV2": 1, "GetObject": 8, "HeadObject": 1}
    assert entries["link"].kind is Kind.SYMLINK and entries["link"].symlink_target == "f0"
    assert entries["fifo"].kind is Kind.FIFO
    assert all(entries[f"f{i}"].permissions == 0o600 for i in range(5))
    assert entries["large"].size == len(large) and entries["large"].permissions == 0o600
    expected = {(f"dir/f{i}", entries[f"f{i}"].etag): f"body {i}".encode() for i in range(5)}
    expected[("dir/empty", entries["empty"].etag)] = b""
    assert bodies.offered == expected  # not the large file's, the link's or the FIFO's


async def test_small_file_get_zero_sends_heads(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(3):
        oss2_bucket.put_object(f"dir/f{index}", b"x")
    ns, bodies = namespace_with_bodies(client, small_file_get_bytes=0)
    oss_server.stats.reset()
    await ns.list_directory("dir/")
    assert oss_server.stats.by_operation == {"ListObjectsV2": 1, "HeadObject": 3}
    assert bodies.offered == {}


async def test_stat_for_a_read_trusts_the_get_over_the_size_seen_before(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    large = bytes(range(256)) * 400
    oss2_bucket.put_object("grown", large)  # was 3 bytes when last seen
    ns, bodies = namespace_with_bodies(client)
    oss_server.stats.reset()
    attrs = await ns.stat_file("grown", read_size=3)
    assert attrs is not None and attrs.size == len(large)
    assert oss_server.stats.by_operation == {"GetObject": 1}
    assert bodies.offered == {}  # its body was not downloaded
    oss2_bucket.put_object("grown", b"small again")
    attrs = await ns.stat_file("grown", read_size=len(large))  # over the threshold: a HEAD
    assert attrs is not None and attrs.size == 11 and bodies.offered == {}
    attrs = await ns.stat_file("grown", read_size=11)
    assert attrs is not None and attrs.etag is not None
    assert bodies.offered == {("grown", attrs.etag): b"small again"}


async def test_lookups_in_a_cold_directory_share_one_listing(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(10):
        oss2_bucket.put_object(f"dir/f{index}", f"body {index}".encode(), headers=MODE_0600)
    oss2_bucket.put_object("dir/sub/x", b"x")
    oss2_bucket.put_object("dir/old_$folder$", b"", headers={"x-oss-meta-mode": "16832"})
    oss2_bucket.put_object("dir/both", b"hidden")  # and a directory of the same name:
    oss2_bucket.put_object("dir/both/inner", b"x")
    ns, bodies = namespace_with_bodies(client, negative_ttl_s=30.0)
    oss_server.stats.reset()
    for index in range(10):
        attrs = await ns.lookup("dir/", f"f{index}")
        assert attrs is not None and attrs.permissions == 0o600 and attrs.size == 6
    assert oss_server.stats.by_operation == {"ListObjectsV2": 1, "GetObject": 10}
    assert len(bodies.offered) == 10
    oss_server.stats.reset()
    assert await ns.lookup("dir/", "missing") is None  # not in the listing: probed all the same
    assert oss_server.stats.by_operation == {"HeadObject": 2, "ListObjectsV2": 1}
    oss_server.stats.reset()
    sub, old, both = [await ns.lookup("dir/", name) for name in ("sub", "old", "both")]
    assert sub is not None and sub.kind is Kind.DIR
    assert old is not None and old.kind is Kind.DIR and old.permissions == 0o700
    assert both is not None and both.kind is Kind.DIR  # the directory wins, as in readdir
    # Directories: their markers' HEADs only (sub/, old/ then old_$folder$, both/).
    assert oss_server.stats.by_operation == {"HeadObject": 4}
    # readdir does not serve the lookups' listing (no exact metadata): it lists again, and
    # HEADs nothing it already knows.
    oss_server.stats.reset()
    snapshot = await ns.list_directory("dir/")
    assert {entry.name for entry in snapshot.entries} >= {"both", "old", "sub", "f0"}
    assert oss_server.stats.by_operation == {"ListObjectsV2": 1}


async def test_a_name_created_after_the_lookup_listing_is_found_at_once(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    oss2_bucket.put_object("dir/a", b"a")
    ns, _ = namespace_with_bodies(client, negative_ttl_s=30.0)
    assert await ns.lookup("dir/", "a") is not None
    oss2_bucket.put_object("dir/late", b"late")  # after the listing
    oss_server.stats.reset()
    late = await ns.lookup("dir/", "late")
    assert late is not None and late.size == 4
    assert oss_server.stats.by_operation == {"HeadObject": 2, "ListObjectsV2": 1}  # the probe


async def test_a_directory_of_several_pages_is_probed_not_listed_per_lookup(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    for index in range(8):
        oss2_bucket.put_object(f"big/f{index}", b"x")
    ns, _ = namespace_with_bodies(client, list_page_keys=5)
    oss_server.stats.reset()
    assert await ns.lookup("big/", "f1") is not None
    # The first page (truncated), then the probe: HEAD, HEAD of the marker, one-key LIST.
    assert oss_server.stats.by_operation == {"ListObjectsV2": 2, "HeadObject": 2}
    oss_server.stats.reset()
    assert await ns.lookup("big/", "f2") is not None
    assert oss_server.stats.by_operation == {"ListObjectsV2": 1, "HeadObject": 2}


async def test_a_full_page_and_the_directory_marker_still_answer_lookups(
    client: OssClient, oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    oss2_bucket.put_object("full/", b"")  # the marker mkdir makes
    for index in range(5):
        oss2_bucket.put_object(f"full/f{index}", b"x")
    ns, _ = namespace_with_bodies(client, list_page_keys=5, negative_ttl_s=30.0)
    oss_server.stats.reset()
    for index in range(5):
        assert await ns.lookup("full/", f"f{index}") is not None
    assert oss_server.stats.by_operation == {"ListObjectsV2": 1, "GetObject": 5}
