"""Transfer planning without a server: part sizes, part ranges, the checkpoint journal."""

from __future__ import annotations

import json
from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmount.oss.crc64 import crc64
from ossmount.oss.transfer import (
    MAX_PARTS,
    MIN_PART_SIZE,
    Checkpoint,
    OrderedCrc,
    choose_part_size,
    part_ranges,
)

TIB = 1024**4


@given(st.integers(0, 48 * TIB), st.integers(1, 64 * 1024 * 1024))
def test_always_fewer_than_10000_parts(total: int, wanted: int) -> None:
    size = choose_part_size(total, wanted)
    assert size >= MIN_PART_SIZE
    assert -(-total // size) < MAX_PARTS


@given(st.integers(0, 10**9), st.integers(MIN_PART_SIZE, 10**8))
def test_parts_tile_the_object(total: int, part_size: int) -> None:
    ranges = part_ranges(total, part_size)
    offset = 0
    for index, (number, first, size) in enumerate(ranges, 1):
        assert number == index and first == offset and 0 < size <= part_size
        offset += size
    assert offset == total


def test_small_part_size_is_kept_when_it_fits() -> None:
    assert choose_part_size(1024**3, 8 * 1024 * 1024) == 8 * 1024 * 1024


def test_journal_survives_a_torn_last_line(tmp_path: Path) -> None:
    header = {"kind": "download", "etag": '"E"', "size": 10}
    journal = Checkpoint(tmp_path / "j", header)
    journal.create()
    journal.record(1, crc64=11)
    journal.record(3, crc64=33)
    with open(journal.path, "a") as file:
        file.write('{"part": 4, "crc')  # a process killed mid-write
    loaded = Checkpoint.load(journal.path, header)
    assert loaded is not None
    assert {n: r["crc64"] for n, r in loaded.parts.items()} == {1: 11, 3: 33}


def test_journal_for_another_object_version_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_text(json.dumps({"kind": "download", "etag": '"OLD"'}) + "\n")
    assert Checkpoint.load(path, {"kind": "download", "etag": '"NEW"'}) is None
    assert Checkpoint.load(tmp_path / "missing", {}) is None
    (tmp_path / "garbage").write_bytes(b"\xff\x00")
    assert Checkpoint.load(tmp_path / "garbage", {}) is None


@given(st.binary(min_size=0, max_size=5000), st.integers(1, 700), st.randoms())
def test_ordered_crc_of_parts_in_any_order(data: bytes, part_size: int, rng: Random) -> None:
    parts = part_ranges(len(data), part_size)
    combined = OrderedCrc(parts)
    order = list(parts)
    rng.shuffle(order)
    for number, first, size in order:
        assert not combined.has(number)
        combined.add(number, crc64(data[first : first + size]))
        assert combined.has(number)
    assert combined.value == crc64(data)


def test_ordered_crc_refuses_an_incomplete_object() -> None:
    combined = OrderedCrc(part_ranges(10, 4))
    combined.add(1, crc64(b"abcd"))
    combined.add(3, crc64(b"ij"))
    with pytest.raises(RuntimeError, match="part 2"):
        _ = combined.value
