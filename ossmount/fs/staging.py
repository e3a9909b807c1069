"""Pure pieces of the write path: byte range sets, the multipart part plan, the disk budget.

Part plan (OSS rules): every part but the last is at least 100 KB (102,400 bytes) and at most
5 GB, and an upload has at most 10,000 parts. When an existing object is rewritten, ranges that
did not change and are at least 100 KB long are copied server-side (UploadPartCopy with
``x-oss-copy-source-range``); everything else is sent from the local staging file. An upload
segment too short to be a part (it is followed by a copy) borrows bytes from the copy that
follows, or absorbs it whole when what would remain of the copy is itself too short.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator

import trio

from ossmount.fs.journal import PlannedPart

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
# OSS: every part but the last at least 100 KB; at most 10,000 parts; a part at most 5 GB.
MIN_PART_SIZE = 100 * KiB
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * GiB
# Server-side copies are cheap per byte: copy unchanged ranges in big parts.
COPY_PART_SIZE = 1 * GiB


class StagingFullError(OSError):
    """The staging disk budget is used up and no upload in progress will free any of it."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


class RangeSet:
    """A set of byte offsets kept as sorted, disjoint, non-adjacent [start, end) intervals."""

    __slots__ = ("_ranges",)

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self._ranges: list[tuple[int, int]] = []
        for start, end in ranges or []:
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self._ranges))

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __repr__(self) -> str:
        return f"RangeSet({self._ranges!r})"

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        merged: list[tuple[int, int]] = []
        for low, high in self._ranges:
            if high < start or low > end:
                merged.append((low, high))
            else:
                start, end = min(start, low), max(end, high)
        merged.append((start, end))
        merged.sort()
        self._ranges = merged

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        kept: list[tuple[int, int]] = []
        for low, high in self._ranges:
            if high <= start or low >= end:
                kept.append((low, high))
                continue
            if low < start:
                kept.append((low, start))
            if high > end:
                kept.append((end, high))
        self._ranges = kept

    def total(self) -> int:
        return sum(high - low for low, high in self._ranges)

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) not in the set."""
        result: list[tuple[int, int]] = []
        position = start
        for low, high in self._ranges:
            if high <= position:
                continue
            if low >= end:
                break
            if low > position:
                result.append((position, low))
            position = max(position, high)
        if position < end:
            result.append((position, end))
        return result


def _segments(
    size: int, changed: RangeSet, base_size: int, min_copy: int
) -> list[tuple[int, int, bool]]:
    """[start, end, copy] segments covering [0, size): copy where unchanged and long enough."""
    copyable = [
        (low, high) for low, high in changed.gaps(0, min(size, base_size)) if high - low >= min_copy
    ]
    segments: list[tuple[int, int, bool]] = []
    position = 0
    for low, high in copyable:
        if low > position:
            segments.append((position, low, False))
        segments.append((low, high, True))
        position = high
    if position < size:
        segments.append((position, size, False))
    return segments


def _fix_short_uploads(segments: list[tuple[int, int, bool]], min_part: int) -> None:
    """Make every upload segment but the last at least min_part long, in place."""
    index = 0
    while index < len(segments) - 1:
        start, end, copy = segments[index]
        if copy or end - start >= min_part:
            index += 1
            continue
        # An upload segment too short to be a part, followed by a copy segment.
        copy_start, copy_end, _ = segments[index + 1]
        need = min_part - (end - start)
        if copy_end - copy_start - need >= min_part:
            segments[index] = (start, end + need, False)
            segments[index + 1] = (copy_start + need, copy_end, True)
            index += 1
            continue
        # Absorb the copy (and the upload after it, if any) and look again.
        new_end = copy_end
        del segments[index + 1]
        if index + 1 < len(segments) and not segments[index + 1][2]:
            new_end = segments[index + 1][1]
            del segments[index + 1]
        segments[index] = (start, new_end, False)


def _split(start: int, end: int, chunk: int, min_part: int) -> list[tuple[int, int]]:
    """Split [start, end) into chunks of ``chunk`` bytes; a short tail joins the chunk before."""
    pieces: list[tuple[int, int]] = []
    position = start
    while position < end:
        piece_end = min(end, position + chunk)
        pieces.append((position, piece_end))
        position = piece_end
    if len(pieces) >= 2 and pieces[-1][1] - pieces[-1][0] < min_part:
        last_start, last_end = pieces.pop()
        previous_start, _ = pieces.pop()
        pieces.append((previous_start, last_end))
        del last_start
    return pieces


def plan_parts(
    size: int,
    changed: RangeSet,
    base_size: int,
    *,
    part_size: int,
    min_part: int = MIN_PART_SIZE,
    copy_part_size: int = COPY_PART_SIZE,
    max_parts: int = MAX_PARTS,
) -> list[PlannedPart]:
    """The parts of a multipart upload of a ``size``-byte file.

    Bytes in ``changed`` (and bytes at or past ``base_size``) are uploaded from the staging file;
    other bytes, in runs of at least ``min_part``, are copied from the same offsets of the base
    object. With ``base_size`` 0 everything is uploaded. Part numbers start at 1.
    """
    if size <= 0:
        return [PlannedPart(1, 0, 0, copy=False)]
    part_size = max(part_size, min_part)
    copy_part_size = max(copy_part_size, part_size)
    while True:
        segments = _segments(size, changed, base_size, min_part)
        _fix_short_uploads(segments, min_part)
        pieces: list[tuple[int, int, bool]] = []
        for start, end, copy in segments:
            chunk = min(copy_part_size if copy else part_size, MAX_PART_SIZE)
            pieces.extend((low, high, copy) for low, high in _split(start, end, chunk, min_part))
        if len(pieces) <= max_parts:
            break
        if len(segments) > max_parts // 2:
            # Too many alternations of changed and unchanged runs: send everything.
            base_size = 0
        part_size *= 2
        copy_part_size *= 2
    return [
        PlannedPart(number, low, high - low, copy)
        for number, (low, high, copy) in enumerate(pieces, start=1)
    ]


class DiskBudget:
    """Bytes of staging disk in use, against a budget.

    ``reserve`` first asks ``evict`` to free bytes that are only kept for convenience (parts of
    streamed files already uploaded), then waits while uploads in progress will free some
    (``expect_release`` / ``release``); when nothing will, it raises :class:`StagingFullError`
    (ENOSPC) at once. Nothing is written before its bytes are reserved, so a full budget
    never leaves a half-written staging file.
    """

    def __init__(self, capacity: int, evict: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self.used = 0
        self._evict = evict
        self._pending_releases = 0
        self._changed = trio.Event()

    async def reserve(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        while self.used + nbytes > self.capacity:
            if self._evict is not None:
                self._evict(self.used + nbytes - self.capacity)  # releases what it frees
                if self.used + nbytes <= self.capacity:
                    break
            if self._pending_releases <= 0 or nbytes > self.capacity:
                raise StagingFullError(
                    f"staging disk budget used up ({self.used} of {self.capacity} bytes; "
                    f"{nbytes} more needed)"
                )
            await self._changed.wait()
        self.used += nbytes

    def force(self, nbytes: int) -> None:
        """Account bytes that already exist (staging files found at start)."""
        self.used += nbytes

    def release(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        self.used = max(0, self.used - nbytes)
        self._wake()

    def expect_release(self) -> None:
        """An upload started whose end will release bytes: reservations may wait for it."""
        self._pending_releases += 1

    def release_expected(self) -> None:
        """An upload announced by expect_release ended (whether or not it freed bytes)."""
        self._pending_releases -= 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
