"""The differential tester itself (tests/mount/differential.py), with both sides on local disk:
it must find no difference between two local directories, must find a planted one, and its
shrinker must cut an op list down to the ops that matter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.mount.differential import (
    PART_SIZE,
    DivergenceError,
    DriverOptions,
    FileModel,
    Op,
    Side,
    ops_from_json,
    ops_to_json,
    run_trial,
    shrink,
)

# Local disk has no caches to wait for.
QUICK = DriverOptions(sleep_ms=1)


def local_sides(tmp_path: Path) -> tuple[Side, Side]:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    return Side("first", lambda: first), Side("second", lambda: second)


@pytest.mark.parametrize("seed", range(3))
def test_local_disk_against_local_disk_never_diverges(tmp_path: Path, seed: int) -> None:
    first, second = local_sides(tmp_path)
    remounts: list[int] = []
    first.remount = lambda: remounts.append(1)
    driver = run_trial(first, second, "t", seed=seed, count=300, remount_every=120, options=QUICK)
    assert len(driver.done) >= 300  # (a remount also closes the open handles)
    assert len(remounts) == 2
    kinds = {op.kind for op in driver.done}
    assert {"open", "pwrite", "pread", "rename", "mkdir", "close"} <= kinds


def test_same_seed_same_ops(tmp_path: Path) -> None:
    first, second = local_sides(tmp_path)
    once = run_trial(first, second, "a", seed=3, count=200, options=QUICK).done
    again = run_trial(first, second, "b", seed=3, count=200, options=QUICK).done
    assert once == again
    assert ops_from_json(ops_to_json(once, seed=3)) == once


def test_a_planted_difference_is_found_with_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = local_sides(tmp_path)
    ops = [
        Op("open", (0, "f0", "O_RDWR|O_CREAT")),
        Op("pwrite", (0, 0, 4096, 1)),
        Op("fsync", (0,)),
        Op("pread", (0, 0, 4096)),
        Op("close", (0,)),
    ]
    run_trial(first, second, "same", seed=0, ops=ops)
    # The "mount" side's file changes behind the driver's back after the fsync.
    original = os.fsync

    def fsync_and_corrupt(fd: int) -> None:
        original(fd)
        if first.fds.get(0) == fd:
            os.pwrite(fd, b"X", 100)

    monkeypatch.setattr(os, "fsync", fsync_and_corrupt)
    with pytest.raises(DivergenceError) as caught:
        run_trial(first, second, "planted", seed=0, ops=ops)
    assert caught.value.step == 3
    assert caught.value.signature == ("pread", "result")
    assert "first differing byte at 100" in caught.value.detail
    assert "3: pread(h0, offset=0, length=4096)" in caught.value.report()


def test_shrink_keeps_only_the_ops_that_make_the_difference() -> None:
    ops = [Op("stat", (f"f{index % 4}",)) for index in range(40)]
    ops[7] = Op("mkdir", ("d0",))
    ops[23] = Op("rmdir", ("d0",))

    def replay(candidate: list[Op]) -> DivergenceError | None:
        kinds = [op.kind for op in candidate]
        if "mkdir" in kinds and "rmdir" in kinds[kinds.index("mkdir") :]:
            step = kinds.index("rmdir", kinds.index("mkdir"))
            return DivergenceError(step, candidate[step], "result", "planted")
        return None

    assert shrink(ops, ("rmdir", "result"), replay) == [Op("mkdir", ("d0",)), Op("rmdir", ("d0",))]


def test_file_model_knows_which_parts_of_a_streamed_file_are_gone() -> None:
    model = FileModel()
    model.reset_to_empty()
    model.write(0, 3 * PART_SIZE + 10)
    assert model.gone() == (PART_SIZE, 3 * PART_SIZE)
    model.write(100, 1)  # in part 1: kept on disk, rewritten in place
    assert model.mode == "stream"
    model.flushed()
    assert model.gone() == (0, 0)
    small = FileModel()
    small.reset_to_empty()
    small.write(0, PART_SIZE + 5)
    small.write(PART_SIZE // 2, PART_SIZE)  # may be split by the kernel: may go on streaming
    assert (small.mode, small.gone()) == ("stream", (0, 0))
    small.write(3 * PART_SIZE, 1)  # a hole across parts while no part was sent: local
    assert (small.mode, small.gone()) == ("local", (0, 0))
