"""Every mount option in one frozen dataclass, and the parsing of `-o` option lists.

`-o` accepts ossmount's own names and ossfs's names where they mean the same thing
(`allow_other`, `ro`, `uid`, `gid`, `umask`, `url`, `passwd_file`, `readdir_optimize`, ...).
Options that only matter to mount(8), fstab or systemd (`_netdev`, `nofail`, `noauto`,
`x-systemd.*`, ...) are accepted and ignored. Anything else is rejected with a message that
names the option, so a typo never silently changes behaviour.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# libfuse 3 takes at most 1 MiB per request (FUSE_MAX_MAX_PAGES pages of 4 KiB). ossmount never
# passes the max_read mount option, which pyfuse3 cannot match in its init(), so the kernel's
# limit is that maximum; how large sequential reads really arrive is set by read_ahead_kb.
LIBFUSE_MAX_READ = MiB
# The largest small_file_get: a GET of that size in place of a HEAD.
SMALL_FILE_GET_MAX = MiB


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ossmount, else ~/.cache/ossmount."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "ossmount"


class ConfigError(ValueError):
    """A mount option is unknown or has a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class MountConfig:
    """Every option of one mount. Times are seconds; sizes are bytes unless named otherwise."""

    bucket: str
    mountpoint: Path
    # Key prefix the mount's root stands for: "" or ending in "/".
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    signature_version: int = 4
    passwd_file: Path | None = None
    # Certificates to trust for an https endpoint instead of the defaults (a private CA).
    ssl_ca_file: Path | None = None
    foreground: bool = False
    # How long the first request may take before the mount gives up (endpoint unreachable).
    mount_timeout_s: float = 30.0
    debug: bool = False
    log_file: Path | None = None

    allow_other: bool = False
    read_only: bool = False
    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)
    umask: int = 0o022
    # Permission bits of objects / directories without x-oss-meta-mode (None: 0o666 / 0o777
    # & ~umask).
    file_mode: int | None = None
    dir_mode: int | None = None
    # ossfs's mp_umask: permissions of the mount's root directory (None: as other directories).
    mp_umask: int | None = None

    # Skip the per-file HEAD when listing: attributes come from the listing alone.
    readdir_optimize: bool = False
    # ossfs's noxattr: no extended attributes (ENOSYS, so the kernel stops asking: it asks for
    # security.capability before every write() otherwise).
    noxattr: bool = False
    head_concurrency: int = 32
    max_connections: int = 16
    # Objects known to be at most this size are fetched whole by a GET where exact metadata
    # needs a HEAD: the same headers plus the body in one round trip (0: always HEAD).
    small_file_get: int = 64 * 1024

    # Kernel caches (FUSE entry/attribute timeouts).
    attr_timeout_s: float = 1.0
    entry_timeout_s: float = 1.0
    negative_timeout_s: float = 1.0
    # ossmount's own caches.
    list_cache_ttl_s: float = 60.0
    stat_cache_ttl_s: float = 60.0
    stat_cache_entries: int = 100_000
    list_cache_entries: int = 100_000
    # Files and symlinks the kernel may keep looked up (an inode each here, 800-900 bytes); beyond
    # it the least recently used ones that are not open are dropped from the kernel's cache.
    inode_cache_entries: int = 100_000
    # Keep exact file metadata on disk across mounts (validated by ETag, Last-Modified, size).
    metadata_cache: bool = False
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)

    # Writes (part 2): where staged files and the journal live (None: a directory per bucket
    # and prefix under $XDG_CACHE_HOME/ossmount), the staging disk budget, multipart settings.
    state_dir: Path | None = None
    staging_budget: int = 10 * 1024 * MiB
    part_size: int = 8 * MiB
    multipart_threshold: int = 16 * MiB
    upload_concurrency: int = 4

    # Measured with scripts/bench_read.py (docs/benchmarks.md, Reads): 1 MiB blocks are the FUSE
    # request size, so aligned replies are the cached block itself; 4 MiB of kernel readahead
    # keeps several requests coming; 64 MiB of cache keeps peak RSS near 140 MiB.
    read_ahead_kb: int = 4096
    # Reads of unchanged files bypass the kernel page cache (FOPEN_DIRECT_IO): one copy less
    # per byte, so faster large sequential reads, but no shared mmap of those files (ENODEV),
    # a FUSE request per read() however small, and no page-cache hits across opens. Off by
    # default for those reasons.
    direct_io: bool = False
    block_size: int = 1 * MiB
    read_cache_bytes: int = 64 * MiB
    max_inflight_reads: int = 8
    # The persistent data cache (fs/datacache.py): off unless a directory is given; its bound
    # in bytes; del_cache empties it at mount.
    use_cache: Path | None = None
    cache_size: int = 10 * 1024 * MiB
    del_cache: bool = False

    # Operability: mount over a non-empty directory (hiding its files); serve Prometheus
    # metrics at "HOST:PORT" (None: no metrics endpoint).
    nonempty: bool = False
    metrics_addr: str | None = None

    @property
    def default_file_mode(self) -> int:
        """Permission bits of a file that carries no x-oss-meta-mode."""
        return self.file_mode if self.file_mode is not None else 0o666 & ~self.umask

    @property
    def root_dir_mode(self) -> int:
        """Permission bits of the mount's root directory."""
        return 0o777 & ~self.mp_umask if self.mp_umask is not None else self.default_dir_mode

    @property
    def default_dir_mode(self) -> int:
        """Permission bits of a directory that carries no x-oss-meta-mode."""
        return self.dir_mode if self.dir_mode is not None else 0o777 & ~self.umask


# Accepted for mount(8)/fstab/systemd compatibility and ignored.
_IGNORED_OPTIONS = frozenset(
    {
        "_netdev",
        "nofail",
        "noauto",
        "auto",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "defaults",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "async",
        "sync",
        "dirsync",
        "big_writes",
        "default_permissions",
        "auto_unmount",
        "comment",
        "helper",
        "fsname",
        "subtype",
    }
)
_IGNORED_PREFIXES = ("x-systemd.", "x-gvfs", "comment=")

_BOOL_OPTIONS = {
    "allow_other": "allow_other",
    "ro": "read_only",
    "readdir_optimize": "readdir_optimize",
    "noxattr": "noxattr",
    "metadata_cache": "metadata_cache",
    "direct_io": "direct_io",
    "debug": "debug",
    "foreground": "foreground",
    "nonempty": "nonempty",
    "del_cache": "del_cache",
}

_TIMEOUT_OPTIONS = {
    "attr_timeout": "attr_timeout_s",
    "entry_timeout": "entry_timeout_s",
    "negative_timeout": "negative_timeout_s",
    "list_cache_ttl": "list_cache_ttl_s",
    "stat_cache_ttl": "stat_cache_ttl_s",
    # ossfs's name for the stat cache lifetime.
    "stat_cache_expire": "stat_cache_ttl_s",
    "mount_timeout": "mount_timeout_s",
}

_INT_OPTIONS = {
    "uid": "uid",
    "gid": "gid",
    "head_concurrency": "head_concurrency",
    "max_connections": "max_connections",
    "small_file_get": "small_file_get",
    # ossfs's name for the HEAD/list concurrency.
    "parallel_count": "head_concurrency",
    "max_stat_cache_size": "stat_cache_entries",
    "stat_cache_entries": "stat_cache_entries",
    "list_cache_entries": "list_cache_entries",
    "inode_cache_entries": "inode_cache_entries",
    "read_ahead_kb": "read_ahead_kb",
    "block_size": "block_size",
    "read_cache_bytes": "read_cache_bytes",
    "max_inflight_reads": "max_inflight_reads",
    "staging_budget": "staging_budget",
    "part_size": "part_size",
    "multipart_threshold": "multipart_threshold",
    "upload_concurrency": "upload_concurrency",
    "cache_size": "cache_size",
}

_OCTAL_OPTIONS = {
    "umask": "umask",
    "file_mode": "file_mode",
    "dir_mode": "dir_mode",
    "mp_umask": "mp_umask",
}

# ossfs options whose behaviour ossmount always has: accepted, nothing to change.
_OSSFS_ALWAYS_ON = frozenset(
    {
        "kernel_cache",  # the page cache is kept across opens while the ETag is unchanged
        "listobjectsv2",  # listings always use ListObjectsV2
        "enable_noobj_cache",  # missing names are cached (negative_timeout)
    }
)

_PATH_OPTIONS = {
    "passwd_file": "passwd_file",
    "log_file": "log_file",
    "logfile": "log_file",
    "cache_dir": "cache_dir",
    "state_dir": "state_dir",
    "ssl_ca_file": "ssl_ca_file",
    "use_cache": "use_cache",
}


# A bare `use_cache`: the data cache goes to `cache_dir`/data (resolved in build_config).
_USE_CACHE_UNDER_CACHE_DIR = Path("\0cache_dir")


def split_option_list(value: str) -> list[str]:
    """Split one `-o a,b=c` argument into its options (empty items are dropped)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_size(name: str, value: str) -> int:
    multipliers = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    factor = 1
    if text and text[-1] in multipliers:
        factor = multipliers[text[-1]]
        text = text[:-1]
    try:
        number = int(text) * factor
    except ValueError:
        raise ConfigError(f"option {name}={value}: not a whole number") from None
    if number < 0:
        raise ConfigError(f"option {name}={value}: must not be negative")
    return number


def _parse_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"option {name}={value}: not a number of seconds") from None
    if number < 0:
        raise ConfigError(f"option {name}={value}: must not be negative")
    return number


def _parse_octal(name: str, value: str) -> int:
    try:
        number = int(value, 8)
    except ValueError:
        raise ConfigError(f"option {name}={value}: not an octal number") from None
    if not 0 <= number <= 0o7777:
        raise ConfigError(f"option {name}={value}: out of range 0..7777")
    return number


def parse_options(options: list[str]) -> dict[str, Any]:
    """Turn `-o` items into MountConfig field values.

    `url` (ossfs) sets the endpoint; `sigv1`/`sigv4` pick the signature version. Raises
    ConfigError naming the first option that is unknown or has a bad value.
    """
    fields: dict[str, Any] = {}
    for item in options:
        name, has_value, value = item.partition("=")
        name = name.strip()
        if (
            name in _IGNORED_OPTIONS
            or name in _OSSFS_ALWAYS_ON
            or item.startswith(_IGNORED_PREFIXES)
        ):
            log.debug("ignoring mount option %s", item)
            continue
        if name == "rw" and not has_value:
            fields["read_only"] = False
        elif name == "use_cache" and not has_value:
            fields["use_cache"] = _USE_CACHE_UNDER_CACHE_DIR
        elif name in _BOOL_OPTIONS and not has_value:
            fields[_BOOL_OPTIONS[name]] = True
        elif name in _BOOL_OPTIONS and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            fields[_BOOL_OPTIONS[name]] = value.lower() in ("true", "1", "yes")
        elif name in ("sigv1", "sigv4") and not has_value:
            fields["signature_version"] = int(name[-1])
        elif not has_value:
            raise ConfigError(f"unknown mount option '{item}' (see docs/configuration.md)")
        elif name in ("url", "endpoint"):
            fields["endpoint"] = _endpoint_url(value)
        elif name == "dbglevel":
            fields["debug"] = value.lower() in ("dbg", "debug", "info")
        elif name == "region":
            fields["region"] = value
        elif name == "metrics_addr":
            fields["metrics_addr"] = _metrics_address(value)
        elif name == "signature_version":
            if value not in ("1", "4"):
                raise ConfigError(f"option {item}: the signature version is 1 or 4")
            fields["signature_version"] = int(value)
        elif name in _TIMEOUT_OPTIONS:
            fields[_TIMEOUT_OPTIONS[name]] = _parse_float(name, value)
        elif name in _INT_OPTIONS:
            fields[_INT_OPTIONS[name]] = _parse_size(name, value)
        elif name in _OCTAL_OPTIONS:
            fields[_OCTAL_OPTIONS[name]] = _parse_octal(name, value)
        elif name in _PATH_OPTIONS:
            fields[_PATH_OPTIONS[name]] = Path(value).expanduser()
        else:
            raise ConfigError(f"unknown mount option '{item}' (see docs/configuration.md)")
    return fields


GOOD_ENDPOINT_EXAMPLE = (
    "https://oss-cn-hangzhou.aliyuncs.com, or http://127.0.0.1:9000 for the bundled server"
)


def _endpoint_url(value: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigError("the endpoint is empty")
    if "://" not in value:
        value = "https://" + value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or any(character.isspace() for character in value)
    ):
        raise ConfigError(f"bad endpoint {value!r}: expected a URL such as {GOOD_ENDPOINT_EXAMPLE}")
    return f"{parts.scheme}://{parts.netloc}"


def _metrics_address(value: str) -> str:
    """ "HOST:PORT", or a bare PORT on loopback (127.0.0.1): never all interfaces unasked."""
    value = value.strip()
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    host, separator, port = value.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"option metrics_addr={value}: expected HOST:PORT or PORT, e.g. 127.0.0.1:9100"
        )
    return f"{host}:{int(port)}"


def parse_bucket_spec(spec: str) -> tuple[str, str]:
    """Split `BUCKET[:/PREFIX]` into (bucket, prefix ending in '/' or '')."""
    bucket, _, prefix = spec.partition(":")
    bucket = bucket.strip()
    if not bucket:
        raise ConfigError(f"no bucket name in '{spec}'")
    prefix = prefix.strip("/")
    if prefix:
        segments = prefix.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            raise ConfigError(f"prefix '{prefix}' has an empty, '.' or '..' segment")
        prefix += "/"
    return bucket, prefix


def build_config(
    bucket_spec: str,
    mountpoint: str | Path,
    *,
    options: list[str] | None = None,
    **overrides: Any,
) -> MountConfig:
    """Build a MountConfig from the command line; explicit overrides win over `-o` items."""
    bucket, prefix = parse_bucket_spec(bucket_spec)
    fields = parse_options(options or [])
    fields.update({name: value for name, value in overrides.items() if value is not None})
    if "endpoint" in overrides and overrides["endpoint"] is not None:
        fields["endpoint"] = _endpoint_url(overrides["endpoint"])
    config = MountConfig(
        bucket=bucket, prefix=prefix, mountpoint=Path(mountpoint).expanduser().resolve(), **fields
    )
    if config.use_cache == _USE_CACHE_UNDER_CACHE_DIR:
        config = dataclasses.replace(config, use_cache=config.cache_dir / "data")
    if config.use_cache is not None:
        config = dataclasses.replace(config, use_cache=config.use_cache.absolute())
    _validate(config)
    return config


def _validate(config: MountConfig) -> None:
    if config.block_size < 64 * 1024:
        raise ConfigError("block_size must be at least 64 KiB")
    if config.head_concurrency < 1 or config.max_connections < 1:
        raise ConfigError("head_concurrency and max_connections must be at least 1")
    if config.read_cache_bytes < config.block_size:
        raise ConfigError("read_cache_bytes must hold at least one block")
    if config.use_cache is not None and config.cache_size < config.block_size + MiB:
        raise ConfigError("cache_size must hold at least one block and the 1 MiB of its index")
    if not 100 * 1024 <= config.part_size <= 5 * 1024 * MiB:
        raise ConfigError("part_size must be between 100 KiB and 5 GiB (OSS part limits)")
    if config.small_file_get > SMALL_FILE_GET_MAX:
        raise ConfigError(
            f"small_file_get must be at most {SMALL_FILE_GET_MAX // MiB} MiB (bodies of that "
            "size are held in memory, head_concurrency at a time, while a directory is listed)"
        )
    if config.upload_concurrency < 1:
        raise ConfigError("upload_concurrency must be at least 1")
    if config.ssl_ca_file is not None and not config.ssl_ca_file.is_file():
        raise ConfigError(f"option ssl_ca_file={config.ssl_ca_file}: no such file")
