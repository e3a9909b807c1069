"""Pure namespace logic: attributes from metadata, directory entries from listings, inodes."""

from __future__ import annotations

import logging
import stat
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmount.fs.attrs import (
    AttrDefaults,
    Kind,
    attributes_from_info,
    attributes_from_summary,
    directory_attributes,
    invalid_name_reason,
    native_symlink_path,
    parse_mtime_ns,
    posix_metadata,
)
from ossmount.fs.dircache import (
    DirListing,
    ListingCache,
    StatCache,
    WarnOnce,
    build_entries,
)
from ossmount.fs.inodes import ROOT_INODE, InodeTable, key_inode_number
from ossmount.oss.model import ObjectInfo, ObjectSummary

DEFAULTS = AttrDefaults(uid=1000, gid=1000, file_mode=0o644, dir_mode=0o755)


def summary(key: str, size: int = 10, object_type: str = "Normal") -> ObjectSummary:
    return ObjectSummary(key, size, '"etag"', 1_700_000_000.0, object_type, "Standard")


def info(key: str, metadata: dict[str, str], **kwargs: object) -> ObjectInfo:
    base: dict[str, object] = {
        "key": key,
        "size": 5,
        "etag": '"e"',
        "last_modified": 1_700_000_000.0,
        "object_type": "Normal",
    }
    base.update(kwargs)
    return ObjectInfo(metadata=metadata, **base)  # type: ignore[arg-type]


def test_ossfs_metadata_gives_mode_owner_and_mtime() -> None:
    attrs = attributes_from_info(
        info(
            "f", {"mode": str(stat.S_IFREG | 0o600), "uid": "7", "gid": "8", "mtime": "1600000000"}
        ),
        DEFAULTS,
    )
    assert attrs.kind is Kind.FILE
    assert attrs.st_mode == stat.S_IFREG | 0o600
    assert (attrs.uid, attrs.gid) == (7, 8)
    assert attrs.mtime_ns == 1_600_000_000 * 10**9
    assert attrs.exact


def test_missing_metadata_uses_defaults_and_last_modified() -> None:
    attrs = attributes_from_info(info("f", {}), DEFAULTS)
    assert attrs.st_mode == stat.S_IFREG | 0o644
    assert (attrs.uid, attrs.gid) == (1000, 1000)
    assert attrs.mtime_ns == 1_700_000_000 * 10**9
    assert attrs.st_blocks == 1


def test_symlinks_native_and_ossfs() -> None:
    native = attributes_from_info(
        info("l", {}, object_type="Symlink", symlink_target="target/file"), DEFAULTS
    )
    assert native.kind is Kind.SYMLINK
    assert native.size == len("target/file")
    ossfs = attributes_from_info(
        info("l", {"mode": str(stat.S_IFLNK | 0o777), "symlink-target": "../x"}), DEFAULTS
    )
    assert ossfs.kind is Kind.SYMLINK
    assert ossfs.symlink_target == "../x"
    body_style = attributes_from_info(info("l", {"mode": str(stat.S_IFLNK | 0o777)}), DEFAULTS)
    assert body_style.kind is Kind.SYMLINK
    assert body_style.symlink_target is None
    listed = attributes_from_summary(summary("l", object_type="Symlink"), DEFAULTS)
    assert listed.kind is Kind.SYMLINK


def test_native_symlink_targets_are_relative_to_the_link() -> None:
    assert native_symlink_path("docs/latest", "docs/readme.txt") == "readme.txt"
    assert native_symlink_path("top", "a/b") == "a/b"
    assert native_symlink_path("a/b/link", "c/d") == "../../c/d"
    attrs = attributes_from_info(
        info("d/l", {}, object_type="Symlink", symlink_target="d/e/f"), DEFAULTS
    )
    assert attrs.symlink_target == "e/f"


def test_mtime_parsing_and_round_trip() -> None:
    assert parse_mtime_ns("12.5") == 12_500_000_000
    assert parse_mtime_ns("garbage") is None
    attrs = attributes_from_info(info("f", {"mtime": "1600000000.000000123"}), DEFAULTS)
    assert posix_metadata(attrs)["mtime"] == "1600000000.000000123"
    assert posix_metadata(attrs)["mode"] == str(stat.S_IFREG | 0o644)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("", False),
        (".", False),
        ("..", False),
        ("x" * 255, True),
        ("x" * 256, False),
        ("é" * 128, False),
    ],
)
def test_invalid_names(name: str, valid: bool) -> None:
    assert (invalid_name_reason(name) is None) is valid


def test_build_entries_markers_conflicts_and_invalid_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    objects = [
        summary("d/"),  # the directory's own marker: not an entry
        summary("d/a"),  # beside the prefix d/a/: the directory wins
        summary("d/b.txt"),
        summary("d/old_$folder$"),  # ossfs marker: directory "old"
        summary("d/.."),
        summary("d/" + "x" * 300),
        summary("d/link", object_type="Symlink"),
    ]
    prefixes = ["d/a/", "d//", "d/sub/"]
    warn = WarnOnce()
    with caplog.at_level(logging.WARNING):
        entries = build_entries("d/", objects, prefixes, DEFAULTS, warn=warn)
        build_entries("d/", objects, prefixes, DEFAULTS, warn=warn)  # warnings only once
    names = [(e.name, e.attrs.kind) for e in entries]
    assert names == [
        ("a", Kind.DIR),
        ("b.txt", Kind.FILE),
        ("link", Kind.SYMLINK),
        ("old", Kind.DIR),
        ("sub", Kind.DIR),
    ]
    assert [e.marker_key for e in entries if e.name == "old"] == ["d/old_$folder$"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4, warnings
    assert any("hidden by the directory" in w for w in warnings)


def test_listing_cache_bounded_by_entries_and_ttl() -> None:
    now = [0.0]
    cache = ListingCache(ttl_s=10, max_entries=10, clock=lambda: now[0])
    entries = tuple(build_entries("", [summary(f"f{i}") for i in range(4)], [], DEFAULTS))
    cache.put(DirListing("a/", entries, 0.0))
    cache.put(DirListing("b/", entries, 0.0))
    cache.put(DirListing("c/", entries, 0.0))  # 3 x 5 > 10: the oldest goes
    assert cache.get("a/") is None
    assert cache.get("c/") is not None
    now[0] = 11.0
    assert cache.get("c/") is None


def test_stat_cache_version_match_outlives_ttl() -> None:
    now = [0.0]
    cache = StatCache(ttl_s=1, max_entries=2, clock=lambda: now[0])
    attrs = attributes_from_info(info("f", {"mode": "33152"}), DEFAULTS)
    cache.put("f", attrs)
    now[0] = 100.0
    assert cache.get_fresh("f") is None
    listed = attributes_from_summary(ObjectSummary("f", 5, '"e"', 1.7e9, "Normal", ""), DEFAULTS)
    assert cache.get_for_version("f", listed) is attrs
    assert cache.get_for_version("f", replace(listed, etag='"other"')) is None
    assert cache.get_for_version("f", replace(listed, last_modified=1.8e9)) is None
    assert cache.get_for_version("f", replace(listed, size=6)) is None


def test_inode_table_lookup_counts_and_kind_change() -> None:
    root_attrs = directory_attributes(DEFAULTS)
    table = InodeTable("pre/", root_attrs)
    file_attrs = attributes_from_summary(summary("pre/a"), DEFAULTS)
    inode = table.upsert(table.root, "a", file_attrs, ttl_s=5)
    assert inode.key == "pre/a"
    table.remember(inode, 2)
    assert table.upsert(table.root, "a", file_attrs, ttl_s=5) is inode
    table.forget(inode.ino, 1)
    assert table.get(inode.ino) is inode
    table.forget(inode.ino, 1)
    assert table.get(inode.ino) is None
    # A name that turns from file into directory gets a new inode and key "pre/a/".
    old = table.upsert(table.root, "a", file_attrs, ttl_s=5)
    table.remember(old)
    new = table.upsert(table.root, "a", directory_attributes(DEFAULTS), ttl_s=5)
    assert new.ino != old.ino
    assert new.key == "pre/a/"
    assert table.by_key("pre/a") is None
    assert table.get(old.ino) is old  # the kernel still holds it until forget
    table.forget(ROOT_INODE, 10)
    assert table.get(ROOT_INODE) is not None


def test_inode_open_keeps_unreferenced_inode() -> None:
    table = InodeTable("", directory_attributes(DEFAULTS))
    inode = table.upsert(table.root, "f", attributes_from_summary(summary("f"), DEFAULTS), 5)
    table.remember(inode)
    table.open(inode)
    table.forget(inode.ino, 1)
    assert table.get(inode.ino) is inode
    table.close(inode)
    assert table.get(inode.ino) is None


def test_inode_rename_moves_descendants() -> None:
    table = InodeTable("", directory_attributes(DEFAULTS))
    directory = table.upsert(table.root, "d", directory_attributes(DEFAULTS), 5)
    table.remember(directory)
    child = table.upsert(directory, "f", attributes_from_summary(summary("d/f"), DEFAULTS), 5)
    table.remember(child)
    table.rename(directory, table.root, "e")
    assert directory.key == "e/"
    assert child.key == "e/f"
    assert table.by_key("e/f") is child
    assert table.by_key("d/f") is None


def test_inode_numbers_come_from_keys() -> None:
    table = InodeTable("", directory_attributes(DEFAULTS))
    attrs = attributes_from_summary(summary("f"), DEFAULTS)
    inode = table.upsert(table.root, "f", attrs, 5)
    assert inode.ino == key_inode_number("f")
    assert 1 < inode.ino < 2**32
    table.remember(inode)
    table.forget(inode.ino, 1)
    assert table.get(inode.ino) is None
    # Looked up again after the kernel forgot it: the same number.
    assert table.upsert(table.root, "f", attrs, 5).ino == inode.ino


def test_inode_number_collisions_take_the_next_free_number() -> None:
    table = InodeTable("", directory_attributes(DEFAULTS))
    attrs = attributes_from_summary(summary("f"), DEFAULTS)
    old = table.upsert(table.root, "f", attrs, 5)
    table.remember(old)
    # "f" is replaced by a directory while the kernel still holds the file's inode; then a
    # file "f" comes back: its number is taken by the old inode, so it gets the next one.
    directory = table.upsert(table.root, "f", directory_attributes(DEFAULTS), 5)
    table.remember(directory)
    again = table.upsert(table.root, "f", attrs, 5)
    assert old.ino == key_inode_number("f")
    assert again.ino == old.ino + 1
    assert len({old.ino, directory.ino, again.ino}) == 3


def test_inode_table_evicts_least_recent_files_beyond_the_bound() -> None:
    evicted: list[str] = []
    table = InodeTable(
        "",
        directory_attributes(DEFAULTS),
        max_remembered=100,
        evict=lambda batch: evicted.extend(i.key for i in batch),
    )
    directory = table.upsert(table.root, "d", directory_attributes(DEFAULTS), 5)
    table.remember(directory)
    files = []
    for n in range(100):
        inode = table.upsert(
            directory, f"f{n}", attributes_from_summary(summary(f"d/f{n}"), DEFAULTS), 5
        )
        table.remember(inode)
        files.append(inode)
    assert evicted == []
    table.open(files[1])  # an open file is never evicted
    table.remember(files[0])  # handed out again: now the most recent
    extra = table.upsert(directory, "g", attributes_from_summary(summary("d/g"), DEFAULTS), 5)
    table.remember(extra)
    # Over the bound by one: down to 99 (1% below), oldest first; the open f1 leaves the order
    # without being evicted.
    assert evicted == ["d/f2"]
    assert table.remembered_files == 99
    assert "d/" not in evicted  # directories are not counted or evicted
    # The kernel's forget frees an evicted inode; looking it up again makes it count again.
    table.forget(files[2].ino, 1)
    assert table.get(files[2].ino) is None
    again = table.upsert(directory, "f2", attributes_from_summary(summary("d/f2"), DEFAULTS), 5)
    table.remember(again)
    assert table.remembered_files == 100


SEGMENT = st.sampled_from(["a", "b", "a.txt", ".", "..", "", "x" * 256, "d_$folder$", "é"])


@given(st.lists(st.lists(SEGMENT, min_size=1, max_size=3).map("/".join), max_size=30))
def test_build_entries_properties(keys: list[str]) -> None:
    """Any keys: names unique, sorted and valid; a name is a directory iff keys are below it."""
    objects = []
    prefixes = set()
    for key in keys:
        head, slash, _ = key.partition("/")
        if slash:
            prefixes.add(head + "/")
        else:
            objects.append(summary(key))
    entries = build_entries("", objects, sorted(prefixes), DEFAULTS, warn=WarnOnce())
    names = [entry.name for entry in entries]
    assert names == sorted(set(names))
    assert all(invalid_name_reason(name) is None for name in names)
    for entry in entries:
        below = entry.name + "/" in prefixes or entry.name + "_$folder$" in keys
        assert (entry.attrs.kind is Kind.DIR) == below, entry


def test_dir_listing_changes_in_place_and_snapshots_never_change() -> None:
    entries = build_entries("d/", [summary(f"d/f{i}") for i in range(3)], ["d/sub/"], DEFAULTS)
    listing = DirListing("d/", entries, 0.0)
    assert listing.subdirectories == 1
    opened = listing.snapshot()
    assert listing.snapshot() is opened  # no change, no new sort
    new_file = build_entries("d/", [summary("d/a-new")], [], DEFAULTS)[0]
    listing.put(new_file)
    listing.remove("f1")
    listing.remove("sub")
    # A directory handle keeps reading what it opened: nothing skipped or repeated.
    assert [entry.name for entry in opened.entries] == ["f0", "f1", "f2", "sub"]
    assert [entry.name for entry in listing.snapshot().entries] == ["a-new", "f0", "f2"]
    assert listing.find("f1") is None and listing.find("a-new") is new_file
    assert listing.subdirectories == 0
    assert len(listing) == 3


def test_listing_cache_counts_a_listing_that_grew_in_place() -> None:
    cache = ListingCache(ttl_s=10, max_entries=10, clock=lambda: 0.0)
    small = DirListing("a/", [], 0.0)
    other = DirListing("b/", build_entries("b/", [summary("b/x")], [], DEFAULTS), 0.0)
    cache.put(small)
    cache.put(other)
    for i in range(8):
        small.put(build_entries("a/", [summary(f"a/f{i}")], [], DEFAULTS)[0])
        cache.put(small)  # stored again: its new size counts, the older listing goes
    assert cache.get("a/") is small
    assert cache.get("b/") is None
