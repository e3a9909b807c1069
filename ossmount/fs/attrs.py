"""POSIX attributes of objects and directories, and their x-oss-meta-* form.

ossfs (like s3fs) keeps POSIX metadata in user metadata: `x-oss-meta-mode` (the whole st_mode
in decimal, file type bits included), `x-oss-meta-uid`, `x-oss-meta-gid` and `x-oss-meta-mtime`
(epoch seconds, possibly with a fraction). ossmount reads and (from part 2 on) writes the same
names, so a bucket written by either looks the same through both.

A listing carries no user metadata: attributes built from an ObjectSummary use the mount's
defaults and the object's Last-Modified, and are marked ``exact=False``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from ossmount.oss.model import ObjectInfo, ObjectSummary

log = logging.getLogger(__name__)

META_MODE = "mode"
META_UID = "uid"
META_GID = "gid"
META_MTIME = "mtime"
# ossfs's names and format (epoch seconds, optional fraction), stored only once set.
META_ATIME = "atime"
META_CTIME = "ctime"
META_SYMLINK_TARGET = "symlink-target"
META_RDEV = "rdev"
# Extended attributes, ossfs's form: URL-encoded JSON of name -> base64(value).
META_XATTR = "xattr"
# OSS's limit on an object's user metadata (names with their x-oss-meta- prefix, and values).
USER_METADATA_MAX = 8 * 1024

NAME_MAX = 255
# OSS's limit on a key's length, in bytes.
KEY_MAX = 1023
BLOCK_UNIT = 512


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    # Special files: zero-byte objects whose x-oss-meta-mode carries the type (as ossfs does).
    FIFO = "fifo"
    CHAR_DEVICE = "chr"
    BLOCK_DEVICE = "blk"
    SOCKET = "sock"

    @property
    def is_special(self) -> bool:
        return self in _SPECIAL_KINDS


_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.CHAR_DEVICE: stat.S_IFCHR,
    Kind.BLOCK_DEVICE: stat.S_IFBLK,
    Kind.SOCKET: stat.S_IFSOCK,
}
_KIND_OF_TYPE = {bits: kind for kind, bits in _TYPE_BITS.items()}
_SPECIAL_KINDS = frozenset({Kind.FIFO, Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE, Kind.SOCKET})


def kind_of_mode(mode: int) -> Kind | None:
    """The kind of file an st_mode's type bits name, or None for unknown bits."""
    return _KIND_OF_TYPE.get(stat.S_IFMT(mode))


@dataclass(frozen=True, slots=True)
class AttrDefaults:
    """What an object without POSIX metadata looks like."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int


@dataclass(frozen=True, slots=True)
class Attributes:
    """The POSIX view of one object or directory.

    ``permissions`` holds only the permission bits (07777); the file type comes from ``kind``.
    ``etag``, ``last_modified`` and ``size`` identify the object version the attributes were
    read from; ``exact`` is True when they came from a HEAD (user metadata known).
    """

    kind: Kind
    size: int
    mtime_ns: int
    permissions: int
    uid: int
    gid: int
    etag: str | None = None
    last_modified: float = 0.0
    crc64: int | None = None
    object_type: str = ""
    symlink_target: str | None = None
    exact: bool = False
    # Device number of a character or block device (x-oss-meta-rdev; 0 when absent).
    rdev: int = 0
    # x-oss-meta-atime / x-oss-meta-ctime; None: the same as mtime (see st_atime_ns).
    atime_ns: int | None = None
    ctime_ns: int | None = None
    # x-oss-meta-xattr as stored (see decode_xattrs), None when the object has none.
    xattrs: str | None = None

    @property
    def st_atime_ns(self) -> int:
        return self.mtime_ns if self.atime_ns is None else self.atime_ns

    @property
    def st_ctime_ns(self) -> int:
        return self.mtime_ns if self.ctime_ns is None else self.ctime_ns

    @property
    def st_mode(self) -> int:
        return _TYPE_BITS[self.kind] | self.permissions

    @property
    def st_blocks(self) -> int:
        return (self.size + BLOCK_UNIT - 1) // BLOCK_UNIT


def parse_mtime_ns(value: str | None) -> int | None:
    """Parse x-oss-meta-mtime (or atime, ctime: epoch seconds, optional fraction, before 1970
    with a minus sign) into nanoseconds."""
    if not value:
        return None
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, fraction = text.lstrip("-").partition(".")
    try:
        seconds = int(whole)
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
    except ValueError:
        return None
    return sign * (seconds * 1_000_000_000 + nanos)


def format_time_ns(time_ns: int) -> str:
    """Nanoseconds since the epoch in ossfs's form: decimal seconds, a fraction if any."""
    seconds, nanos = divmod(abs(time_ns), 1_000_000_000)
    sign = "-" if time_ns < 0 else ""
    return f"{sign}{seconds}.{nanos:09d}" if nanos else f"{sign}{seconds}"


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _kind_from_mode(mode: int | None, default: Kind) -> Kind:
    if mode is None:
        return default
    return kind_of_mode(mode) or default


def attributes_from_info(
    info: ObjectInfo, defaults: AttrDefaults, *, kind: Kind | None = None
) -> Attributes:
    """Exact attributes from a HEAD of an object (or of a directory marker, with kind=DIR).

    The kind is decided by the object: an OSS symlink (Type=Symlink), an ossfs symlink (S_IFLNK
    in x-oss-meta-mode), else a file; ``kind`` forces DIR for directory markers.
    """
    metadata: Mapping[str, str] = info.metadata
    mode = _parse_int(metadata.get(META_MODE))
    if kind is None:
        kind = Kind.SYMLINK if info.object_type == "Symlink" else _kind_from_mode(mode, Kind.FILE)
        if kind is Kind.DIR:
            # S_IFDIR on a key without a trailing slash: ossfs never writes that; show a file.
            kind = Kind.FILE
    default_permissions = defaults.dir_mode if kind is Kind.DIR else defaults.file_mode
    permissions = stat.S_IMODE(mode) if mode is not None else default_permissions
    if kind is Kind.SYMLINK and mode is None:
        permissions = 0o777
    mtime_ns = parse_mtime_ns(metadata.get(META_MTIME))
    if mtime_ns is None:
        mtime_ns = int(info.last_modified * 1_000_000_000)
    target = metadata.get(META_SYMLINK_TARGET)
    if info.object_type == "Symlink" and info.symlink_target is not None:
        target = native_symlink_path(info.key, info.symlink_target)
    size = info.size
    if kind is Kind.SYMLINK and target is not None:
        size = len(target.encode())
    elif kind is Kind.DIR:
        size = 0
    uid = _parse_int(metadata.get(META_UID))
    gid = _parse_int(metadata.get(META_GID))
    rdev = _parse_int(metadata.get(META_RDEV)) if kind.is_special else None
    if kind.is_special:
        size = 0
    return Attributes(
        kind=kind,
        size=size,
        mtime_ns=mtime_ns,
        permissions=permissions,
        uid=uid if uid is not None else defaults.uid,
        gid=gid if gid is not None else defaults.gid,
        etag=info.etag,
        last_modified=info.last_modified,
        crc64=info.crc64,
        object_type=info.object_type,
        symlink_target=target,
        exact=True,
        rdev=rdev or 0,
        atime_ns=parse_mtime_ns(metadata.get(META_ATIME)),
        ctime_ns=parse_mtime_ns(metadata.get(META_CTIME)),
        xattrs=metadata.get(META_XATTR),
    )


def attributes_from_summary(summary: ObjectSummary, defaults: AttrDefaults) -> Attributes:
    """Attributes from a listing entry alone: mount defaults, Last-Modified as mtime.

    The listing gives Last-Modified in milliseconds, a HEAD in whole seconds (an HTTP date):
    the mtime takes the whole seconds of either, so that it does not change when the HEAD
    comes (the kernel drops a file's cached pages when its mtime changes; make and rsync would
    see a change too)."""
    kind = Kind.SYMLINK if summary.object_type == "Symlink" else Kind.FILE
    return Attributes(
        kind=kind,
        size=summary.size,
        mtime_ns=int(summary.last_modified) * 1_000_000_000,
        permissions=0o777 if kind is Kind.SYMLINK else defaults.file_mode,
        uid=defaults.uid,
        gid=defaults.gid,
        etag=summary.etag,
        last_modified=summary.last_modified,
        object_type=summary.object_type,
        exact=False,
    )


def directory_attributes(defaults: AttrDefaults, mtime_ns: int = 0) -> Attributes:
    """Attributes of an implicit directory (a prefix without a marker carrying metadata)."""
    return Attributes(
        kind=Kind.DIR,
        size=0,
        mtime_ns=mtime_ns,
        permissions=defaults.dir_mode,
        uid=defaults.uid,
        gid=defaults.gid,
        exact=True,
    )


def posix_metadata(attrs: Attributes) -> dict[str, str]:
    """The x-oss-meta-* values (names without the prefix) that store ``attrs`` ossfs-style."""
    metadata = {
        META_MODE: str(attrs.st_mode),
        META_UID: str(attrs.uid),
        META_GID: str(attrs.gid),
        META_MTIME: format_time_ns(attrs.mtime_ns),
    }
    if attrs.atime_ns is not None:
        metadata[META_ATIME] = format_time_ns(attrs.atime_ns)
    if attrs.ctime_ns is not None:
        metadata[META_CTIME] = format_time_ns(attrs.ctime_ns)
    if attrs.kind is Kind.SYMLINK and attrs.symlink_target is not None:
        metadata[META_SYMLINK_TARGET] = attrs.symlink_target
    if attrs.kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE):
        metadata[META_RDEV] = str(attrs.rdev)
    if attrs.xattrs is not None:
        metadata[META_XATTR] = attrs.xattrs
    return metadata


def decode_xattrs(stored: str | None) -> dict[str, bytes]:
    """Extended attributes from x-oss-meta-xattr (ossfs/s3fs form: the URL-encoded JSON object
    ``{"name":"base64(value)"}``). A value that does not parse is logged and read as none."""
    if not stored:
        return {}
    try:
        decoded = json.loads(unquote(stored, errors="surrogateescape"))
        if isinstance(decoded, dict):
            return {str(name): base64.b64decode(value) for name, value in decoded.items()}
        reason = f"a JSON {type(decoded).__name__}, not an object"
    except (ValueError, TypeError, binascii.Error) as exc:
        reason = str(exc)
    log.warning("ignoring unreadable x-oss-meta-xattr %.80r: %s", stored, reason)
    return {}


def encode_xattrs(xattrs: Mapping[str, bytes]) -> str:
    """The x-oss-meta-xattr value for ``xattrs`` (as ossfs writes it; "{}" once all removed)."""
    document = {name: base64.b64encode(value).decode() for name, value in sorted(xattrs.items())}
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return quote(text, safe="", errors="surrogateescape")


def user_metadata_bytes(metadata: Mapping[str, str]) -> int:
    """What ``metadata`` counts against OSS's 8 KB limit of user metadata."""
    return sum(len(f"x-oss-meta-{name}") + len(value.encode()) for name, value in metadata.items())


def native_symlink_path(link_key: str, target_key: str) -> str:
    """The POSIX target of an OSS symlink: its target key made relative to the link's directory.

    OSS symlink targets are keys (absolute within the bucket); a POSIX symlink target is resolved
    from the link's directory, so "docs/latest" -> "docs/readme.txt" reads back as "readme.txt".
    ossfs symlinks store the POSIX target itself and are returned unchanged.
    """
    return posixpath.relpath(target_key, posixpath.dirname(link_key) or ".")


def invalid_name_reason(name: str) -> str | None:
    """Why a key segment cannot be a file name, or None when it can."""
    if name == "":
        return "empty path segment"
    if name in (".", ".."):
        return f"'{name}' segment"
    if "\0" in name:
        return "NUL byte in name"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"segment longer than {NAME_MAX} bytes"
    return None
