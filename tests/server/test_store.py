"""The index on its own: listing pages against a brute-force model (hypothesis), prefix bounds."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmount.server.store import ObjectRecord, Store, prefix_upper_bound

ALPHABET = st.sampled_from(["a", "b", "/", "-", "ü", "\U0001f600", "\x01", "\ud7ff", "\ue000"])
KEYS = st.lists(st.text(ALPHABET, min_size=1, max_size=6), max_size=40, unique=True)


def model_listing(keys: list[str], prefix: str, delimiter: str) -> list[str]:
    """Every entry a complete listing yields, in order: keys and common prefixes."""
    entries: list[str] = []
    for key in sorted(keys, key=lambda key: key.encode()):
        if not key.startswith(prefix):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = key if cut < 0 else key[: cut + len(delimiter)]
        if not entries or entries[-1] != entry:
            entries.append(entry)
    return entries


@settings(max_examples=150, deadline=None)
@given(
    keys=KEYS,
    prefix=st.text(ALPHABET, max_size=2),
    delimiter=st.sampled_from(["", "/", "b", "ü"]),
    page_size=st.integers(min_value=1, max_value=7),
)
def test_paged_listing_matches_the_model(
    keys: list[str], prefix: str, delimiter: str, page_size: int
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(Path(scratch))
        store.create_bucket("b")
        store.create_bucket("other")
        for key in keys:
            store.commit_object(ObjectRecord("b", key, None, 0, '""', 0, 0.0, "Normal"))
            store.commit_object(ObjectRecord("other", key + "x", None, 0, '""', 0, 0.0, "Normal"))
        listed: list[str] = []
        after = ""
        for _ in range(len(keys) + 2):
            entries, truncated = store.list_objects("b", prefix, delimiter, after, page_size)
            assert len(entries) <= page_size
            listed.extend(entry.name for entry in entries)
            if not truncated:
                break
            assert entries
            after = entries[-1].name
        else:
            raise AssertionError("listing did not end")
        store.close()
    assert listed == model_listing(keys, prefix, delimiter)


@given(st.text(ALPHABET, min_size=1, max_size=5), st.text(ALPHABET, max_size=5))
def test_prefix_upper_bound(prefix: str, rest: str) -> None:
    bound = prefix_upper_bound(prefix)
    assert bound is not None
    assert (prefix + rest).encode() < bound.encode()
    assert prefix.encode() < bound.encode()


def test_prefix_upper_bound_edges() -> None:
    assert prefix_upper_bound("") is None
    assert prefix_upper_bound("a/") == "a0"
    assert prefix_upper_bound("\ud7ff") == "\ue000"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None


def test_commit_objects_is_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_bucket("b")
    writer = store.new_writer()
    writer.write(b"old data")
    old_file = store.install_object_file(writer.finish().temp_path)
    store.commit_object(ObjectRecord("b", "k0", old_file, 8, '"old"', 0, 0.0, "Normal"))
    assert store.object_path(old_file).exists()

    fresh = (ObjectRecord("b", f"k{i}", None, 0, '""', 0, 0.0, "Normal") for i in range(1000))
    assert store.commit_objects(fresh) == 1000
    entries, truncated = store.list_objects("b", "", "", "", 2000)
    assert len(entries) == 1000
    assert not truncated
    # k0 was replaced: its old data file is gone once the transaction is committed.
    assert not store.object_path(old_file).exists()

    def failing() -> Iterator[ObjectRecord]:
        yield ObjectRecord("b", "new-1", None, 0, '""', 0, 0.0, "Normal")
        raise OSError("the source of the records broke")

    with pytest.raises(OSError, match="broke"):
        store.commit_objects(failing())
    assert store.get_object("b", "new-1") is None  # rolled back with the rest
    store.close()


def _body_rows(store: Store) -> int:
    return int(store._db.execute("SELECT COUNT(*) FROM bodies").fetchone()[0])


def test_bodies_in_the_index_follow_their_objects(tmp_path: Path) -> None:
    """A small body lives in the index as long as some version names it: replaced by another
    body, by a file-less record, or deleted, its row goes in the same transaction; a change of
    attributes keeps it; rows no object names are removed at start-up."""
    store = Store(tmp_path)
    store.create_bucket("b")
    first = ObjectRecord("b", "k", None, 3, '"e"', 0, 0.0, "Normal")
    store.commit_object(first, b"one")
    current = store.get_object("b", "k")
    assert current is not None and current.body_id is not None
    assert store.read_body(current) == b"one"
    store.commit_object(first, b"two")
    current = store.get_object("b", "k")
    assert current is not None and store.read_body(current) == b"two"
    assert _body_rows(store) == 1
    store.commit_object(ObjectRecord("b", "k", None, 0, '"e"', 0, 0.0, "Normal", acl="private"))
    assert _body_rows(store) == 0
    store.commit_object(first, b"three")
    current = store.get_object("b", "k")
    assert current is not None
    store.commit_object(dataclasses.replace(current, tags={"t": "v"}))
    tagged = store.get_object("b", "k")
    assert tagged is not None and tagged.tags == {"t": "v"} and store.read_body(tagged) == b"three"
    assert store.delete_object("b", "k")
    assert _body_rows(store) == 0
    store._db.execute("INSERT INTO bodies (data) VALUES (?)", (b"orphan",))
    store.commit_object(ObjectRecord("b", "kept", None, 4, '"e"', 0, 0.0, "Normal"), b"kept")
    store.close()
    reopened = Store(tmp_path)
    assert _body_rows(reopened) == 1
    kept = reopened.get_object("b", "kept")
    assert kept is not None and reopened.read_body(kept) == b"kept"
    reopened.close()
