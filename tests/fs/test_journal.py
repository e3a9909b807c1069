"""The write journal (SQLite) and the pure pieces of the write path: ranges, part plans, budget."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmount.fs.journal import (
    MODE_LOCAL,
    MODE_STREAM,
    STATE_DIRTY,
    STATE_FLUSHING,
    Journal,
    PlannedPart,
)
from ossmount.fs.staging import (
    MIN_PART_SIZE,
    DiskBudget,
    RangeSet,
    StagingFullError,
    plan_parts,
)
from ossmount.oss.model import PartInfo

KiB = 1024
MiB = 1024 * KiB


def test_journal_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    file_id = journal.add(
        "dir/a.bin",
        state=STATE_DIRTY,
        mode=MODE_STREAM,
        metadata={"mode": "33188"},
        base_crc64=2**64 - 1,
    )
    plan = [PlannedPart(1, 0, 200 * KiB, copy=True), PlannedPart(2, 200 * KiB, 5, copy=False)]
    journal.update(
        file_id,
        state=STATE_FLUSHING,
        mode=MODE_LOCAL,
        size=200 * KiB + 5,
        upload_id="u1",
        plan=plan,
    )
    journal.record_part(file_id, PartInfo(1, '"e1"', 200 * KiB, crc64=2**63 + 7))
    journal.record_part(file_id, PartInfo(2, '"e2"', 5, crc64=None))
    journal.close()

    reopened = Journal(path)
    (entry,) = reopened.entries()
    assert entry.key == "dir/a.bin"
    assert entry.state == STATE_FLUSHING
    assert entry.mode == MODE_LOCAL
    assert entry.size == 200 * KiB + 5
    assert entry.upload_id == "u1"
    assert entry.plan == plan
    assert entry.metadata == {"mode": "33188"}
    assert entry.base_crc64 == 2**64 - 1
    parts = reopened.parts(file_id)
    assert parts[1].crc64 == 2**63 + 7
    assert parts[2].crc64 is None
    reopened.forget_part(file_id, 2)
    assert list(reopened.parts(file_id)) == [1]
    reopened.remove(file_id)
    assert reopened.entries() == []
    assert reopened.parts(file_id) == {}
    with pytest.raises(ValueError, match="unknown journal column"):
        reopened.update(file_id, nonsense=1)


def test_rangeset_add_remove_gaps() -> None:
    ranges = RangeSet()
    ranges.add(10, 20)
    ranges.add(30, 40)
    ranges.add(20, 25)  # adjacent: merged
    assert list(ranges) == [(10, 25), (30, 40)]
    assert ranges.gaps(0, 50) == [(0, 10), (25, 30), (40, 50)]
    ranges.remove(12, 35)
    assert list(ranges) == [(10, 12), (35, 40)]
    assert ranges.total() == 7
    assert RangeSet().gaps(5, 9) == [(5, 9)]


def _check_plan(
    plan: list[PlannedPart], size: int, changed: RangeSet, base_size: int, min_part: int
) -> None:
    assert [part.part_number for part in plan] == list(range(1, len(plan) + 1))
    position = 0
    for index, part in enumerate(plan):
        assert part.offset == position
        if index < len(plan) - 1:
            assert part.size >= min_part, plan
        position += part.size
        if part.copy:
            # A copied part only covers unchanged bytes of the base object.
            assert part.offset + part.size <= base_size
            assert changed.gaps(part.offset, part.offset + part.size) == [
                (part.offset, part.offset + part.size)
            ]
    assert position == max(size, 0)
    assert len(plan) <= 10_000


def test_plan_small_change_copies_the_rest() -> None:
    changed = RangeSet([(MiB, MiB + 10)])
    plan = plan_parts(4 * MiB, changed, 4 * MiB, part_size=MiB)
    _check_plan(plan, 4 * MiB, changed, 4 * MiB, MIN_PART_SIZE)
    uploaded = sum(part.size for part in plan if not part.copy)
    assert uploaded == MIN_PART_SIZE  # the 10 changed bytes grew to one minimal part
    assert [part.copy for part in plan] == [True, False, True]


def test_plan_short_unchanged_runs_are_uploaded() -> None:
    changed = RangeSet([(0, 10), (50 * KiB, 60 * KiB)])
    plan = plan_parts(300 * KiB, changed, 300 * KiB, part_size=MiB)
    _check_plan(plan, 300 * KiB, changed, 300 * KiB, MIN_PART_SIZE)
    assert plan[-1].copy
    assert sum(part.size for part in plan if not part.copy) >= 60 * KiB


def test_plan_new_file_and_growth() -> None:
    plan = plan_parts(10 * MiB + 5, RangeSet(), 0, part_size=4 * MiB)
    assert [(part.size, part.copy) for part in plan] == [
        (4 * MiB, False),
        (4 * MiB, False),
        (2 * MiB + 5, False),
    ]
    grown = plan_parts(3 * MiB, RangeSet(), 2 * MiB, part_size=MiB)
    assert grown[0].copy and grown[0].size == 2 * MiB
    assert not grown[-1].copy
    assert plan_parts(0, RangeSet(), 0, part_size=MiB) == [PlannedPart(1, 0, 0, copy=False)]


def test_plan_respects_part_count_limit() -> None:
    size = 50 * MiB
    changed = RangeSet([(offset, offset + 1) for offset in range(0, size, 2 * MIN_PART_SIZE)])
    plan = plan_parts(size, changed, size, part_size=MIN_PART_SIZE, max_parts=100)
    _check_plan(plan, size, changed, size, MIN_PART_SIZE)
    assert len(plan) <= 100


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 3 * MiB),
    base_size=st.integers(0, 3 * MiB),
    writes=st.lists(st.tuples(st.integers(0, 3 * MiB), st.integers(1, 300 * KiB)), max_size=8),
    part_size=st.sampled_from([MIN_PART_SIZE, 256 * KiB, MiB]),
)
def test_plan_properties(
    size: int, base_size: int, writes: list[tuple[int, int]], part_size: int
) -> None:
    changed = RangeSet([(offset, offset + length) for offset, length in writes])
    plan = plan_parts(size, changed, base_size, part_size=part_size, copy_part_size=MiB)
    _check_plan(plan, size, changed, base_size, MIN_PART_SIZE)


async def test_disk_budget_waits_for_expected_release_else_enospc() -> None:
    budget = DiskBudget(100)
    await budget.reserve(80)
    with pytest.raises(StagingFullError) as raised:
        await budget.reserve(30)
    assert raised.value.errno == errno.ENOSPC
    assert budget.used == 80

    budget.expect_release()
    reserved = trio.Event()

    async def reserve_more() -> None:
        await budget.reserve(30)
        reserved.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reserve_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not reserved.is_set()  # waiting, not failing
        budget.release(50)
        budget.release_expected()
    assert reserved.is_set()
    assert budget.used == 60
