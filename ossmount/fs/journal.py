"""The write journal: which files are staged, and how far their uploads got.

One SQLite database per state directory (one state directory per bucket + prefix). SQLite gives
atomic, crash-safe updates for free: every change below is one transaction, in WAL mode with
``synchronous=NORMAL``, which survives a killed process (the crash the issue is about; a power
loss may lose the last transactions, never corrupt the database).

Rows of ``files`` go through these states::

    dirty     staged data not yet handed to close()/fsync(): a crash discards it (the old
              object stays), aborting the upload and deleting the temporary object it started
    flushing  close()/fsync() began: the next mount (or `ossmount recover`) finishes the upload
    clean     the staged copy equals the object in OSS: a crash only deletes the staging files

``parts`` records each part of the current multipart upload once the server has it (number,
ETag, size, CRC-64), so that a resumed upload re-sends only what is missing. ``plan`` is the part
plan of a flush of a local staging file (JSON), so that a resumed flush produces the same parts.
``renames`` records each directory rename (old and new prefix) from before its first key moves
until its last one did: the next start finishes it (the keys still under the old prefix are
moved; moving a key is a copy then a delete, so doing it again is harmless).

``upload_intent_s`` is set just before an InitiateMultipartUpload is sent: if the process dies
before the upload id is recorded, recovery looks for uploads of the key started after it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossmount.oss.model import PartInfo

log = logging.getLogger(__name__)

STATE_DIRTY = "dirty"
STATE_FLUSHING = "flushing"
STATE_CLEAN = "clean"

MODE_STREAM = "stream"
MODE_LOCAL = "local"
MODE_REMOTE = "remote"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    mode TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    base_key TEXT,
    base_etag TEXT,
    base_size INTEGER NOT NULL DEFAULT 0,
    base_crc64 TEXT,
    temp_key TEXT,
    upload_id TEXT,
    upload_key TEXT,
    upload_intent_s REAL,
    metadata TEXT NOT NULL DEFAULT '{}',
    forbid_overwrite INTEGER NOT NULL DEFAULT 0,
    plan TEXT,
    part_size INTEGER NOT NULL DEFAULT 0,
    updated_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS renames (
    rename_id INTEGER PRIMARY KEY AUTOINCREMENT,
    old_prefix TEXT NOT NULL,
    new_prefix TEXT NOT NULL,
    started_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    file_id INTEGER NOT NULL,
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    crc64 TEXT,
    PRIMARY KEY (file_id, part_number)
);
"""

# Columns a caller may update with Journal.update().
_UPDATABLE = frozenset(
    {
        "key",
        "state",
        "mode",
        "size",
        "base_key",
        "base_etag",
        "base_size",
        "base_crc64",
        "temp_key",
        "upload_id",
        "upload_key",
        "upload_intent_s",
        "metadata",
        "forbid_overwrite",
        "plan",
        "part_size",
    }
)


@dataclass(frozen=True, slots=True)
class PlannedPart:
    """One part of a planned multipart upload: bytes [offset, offset+size) of the new object,
    either sent from the staging file (``copy`` False) or copied server-side from the same
    offsets of the base object (``copy`` True)."""

    part_number: int
    offset: int
    size: int
    copy: bool

    def to_json(self) -> list[Any]:
        return [self.part_number, self.offset, self.size, int(self.copy)]

    @classmethod
    def from_json(cls, value: list[Any]) -> PlannedPart:
        return cls(int(value[0]), int(value[1]), int(value[2]), bool(value[3]))


@dataclass(slots=True)
class JournalEntry:
    """One staged file, as the journal knows it."""

    file_id: int
    key: str
    state: str
    mode: str
    size: int = 0
    base_key: str | None = None
    base_etag: str | None = None
    base_size: int = 0
    base_crc64: int | None = None
    temp_key: str | None = None
    upload_id: str | None = None
    upload_key: str | None = None
    upload_intent_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    forbid_overwrite: bool = False
    plan: list[PlannedPart] | None = None
    part_size: int = 0


def _encode(name: str, value: Any) -> Any:
    if name == "metadata":
        return json.dumps(dict(value), sort_keys=True)
    if name == "plan":
        return None if value is None else json.dumps([part.to_json() for part in value])
    if name == "base_crc64":
        return None if value is None else str(value)  # 64-bit unsigned does not fit INTEGER
    if name == "forbid_overwrite":
        return int(bool(value))
    return value


class Journal:
    """The SQLite journal of one state directory. Calls are synchronous and short."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, key: str, *, state: str, mode: str, **fields: Any) -> int:
        """Record a new staged file; returns its id (also the name of its staging files)."""
        names = ["key", "state", "mode", "updated_s"]
        values: list[Any] = [key, state, mode, time.time()]
        for name, value in fields.items():
            if name not in _UPDATABLE:
                raise ValueError(f"unknown journal column {name!r}")
            names.append(name)
            values.append(_encode(name, value))
        placeholders = ", ".join("?" for _ in names)
        cursor = self._db.execute(
            f"INSERT INTO files ({', '.join(names)}) VALUES ({placeholders})",  # noqa: S608 (names are checked)
            values,
        )
        file_id = cursor.lastrowid
        assert file_id is not None
        return file_id

    def update(self, file_id: int, **fields: Any) -> None:
        """Change some columns of one file, atomically."""
        if not fields:
            return
        assignments = []
        values: list[Any] = []
        for name, value in fields.items():
            if name not in _UPDATABLE:
                raise ValueError(f"unknown journal column {name!r}")
            assignments.append(f"{name} = ?")
            values.append(_encode(name, value))
        assignments.append("updated_s = ?")
        values.extend([time.time(), file_id])
        self._db.execute(
            f"UPDATE files SET {', '.join(assignments)} WHERE file_id = ?",  # noqa: S608 (names are checked)
            values,
        )

    def remove(self, file_id: int) -> None:
        """Forget a file and its parts."""
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM parts WHERE file_id = ?", (file_id,))
            self._db.execute("DELETE FROM files WHERE file_id = ?", (file_id,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def record_part(self, file_id: int, part: PartInfo) -> None:
        """Record that the server has this part of the file's current upload."""
        self._db.execute(
            "INSERT OR REPLACE INTO parts (file_id, part_number, etag, size, crc64) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                file_id,
                part.part_number,
                part.etag,
                part.size,
                None if part.crc64 is None else str(part.crc64),
            ),
        )

    def forget_part(self, file_id: int, part_number: int) -> None:
        self._db.execute(
            "DELETE FROM parts WHERE file_id = ? AND part_number = ?", (file_id, part_number)
        )

    def clear_parts(self, file_id: int) -> None:
        self._db.execute("DELETE FROM parts WHERE file_id = ?", (file_id,))

    def parts(self, file_id: int) -> dict[int, PartInfo]:
        """The recorded parts of the file's current upload, by part number."""
        rows = self._db.execute(
            "SELECT part_number, etag, size, crc64 FROM parts WHERE file_id = ? "
            "ORDER BY part_number",
            (file_id,),
        ).fetchall()
        return {
            int(number): PartInfo(int(number), str(etag), int(size), crc64=_int_or_none(crc))
            for number, etag, size, crc in rows
        }

    def add_rename(self, old_prefix: str, new_prefix: str) -> int:
        """Record a directory rename before its first key moves; -> its id."""
        cursor = self._db.execute(
            "INSERT INTO renames (old_prefix, new_prefix, started_s) VALUES (?, ?, ?)",
            (old_prefix, new_prefix, time.time()),
        )
        rename_id = cursor.lastrowid
        assert rename_id is not None
        return rename_id

    def remove_rename(self, rename_id: int) -> None:
        self._db.execute("DELETE FROM renames WHERE rename_id = ?", (rename_id,))

    def renames(self) -> list[tuple[int, str, str]]:
        """Directory renames begun and not finished: (id, old prefix, new prefix), oldest first."""
        rows = self._db.execute(
            "SELECT rename_id, old_prefix, new_prefix FROM renames ORDER BY rename_id"
        ).fetchall()
        return [(int(rename_id), str(old), str(new)) for rename_id, old, new in rows]

    def get(self, file_id: int) -> JournalEntry | None:
        rows = self._select("WHERE file_id = ?", (file_id,))
        return rows[0] if rows else None

    def entries(self) -> list[JournalEntry]:
        """Every staged file, oldest first."""
        return self._select("ORDER BY file_id", ())

    def _select(self, where: str, args: tuple[Any, ...]) -> list[JournalEntry]:
        columns = (
            "file_id, key, state, mode, size, base_key, base_etag, base_size, base_crc64, "
            "temp_key, upload_id, upload_key, upload_intent_s, metadata, forbid_overwrite, plan, "
            "part_size"
        )
        rows = self._db.execute(f"SELECT {columns} FROM files {where}", args).fetchall()  # noqa: S608 (fixed text)
        return [_entry_from_row(row) for row in rows]


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(str(value))


def _entry_from_row(row: tuple[Any, ...]) -> JournalEntry:
    (
        file_id,
        key,
        state,
        mode,
        size,
        base_key,
        base_etag,
        base_size,
        base_crc64,
        temp_key,
        upload_id,
        upload_key,
        upload_intent_s,
        metadata,
        forbid_overwrite,
        plan,
        part_size,
    ) = row
    metadata_map: Mapping[str, str] = json.loads(metadata) if metadata else {}
    return JournalEntry(
        file_id=int(file_id),
        key=str(key),
        state=str(state),
        mode=str(mode),
        size=int(size),
        base_key=base_key,
        base_etag=base_etag,
        base_size=int(base_size),
        base_crc64=_int_or_none(base_crc64),
        temp_key=temp_key,
        upload_id=upload_id,
        upload_key=upload_key,
        upload_intent_s=upload_intent_s,
        metadata={str(name): str(value) for name, value in metadata_map.items()},
        forbid_overwrite=bool(forbid_overwrite),
        plan=None if plan is None else [PlannedPart.from_json(item) for item in json.loads(plan)],
        part_size=int(part_size),
    )
