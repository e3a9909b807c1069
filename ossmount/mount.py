"""Mounting: config -> client -> file system, pyfuse3's main loop on trio, signals, daemon mode.

Foreground (``-f``): checks that can fail cheaply come first (the FUSE device, the mountpoint,
credentials, one listing request that proves endpoint, key and bucket), then pyfuse3.init mounts
and the main loop runs until SIGINT/SIGTERM or an external unmount; the mount is always
released on the way out.

Daemon (default): the command starts ``python -m ossmount.mount`` in a new session, hands it
the configuration on stdin, and waits on a pipe for one line: ``OK`` once the mount has
answered a stat() of its root (and only then does the command exit 0), or ``ERR <reason>``.
If the child dies or stays silent past the start-up timeout, the command kills it, clears any
half-made mount, and exits non-zero with a one-line reason. So there is never a hang and never
a half-mounted directory.

A mountpoint left by a crashed mount ("Transport endpoint is not connected") is unmounted
lazily before the new mount.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import logging.handlers
import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyfuse3
import setproctitle
import trio

from ossmount import __version__
from ossmount.config import (
    GOOD_ENDPOINT_EXAMPLE,
    LIBFUSE_MAX_READ,
    ConfigError,
    MountConfig,
    build_config,
    split_option_list,
)
from ossmount.credentials import CredentialsError, places_searched, resolve_credentials
from ossmount.fs.attrs import AttrDefaults, directory_attributes
from ossmount.fs.datacache import DataCache, DataCacheError, cache_namespace
from ossmount.fs.dircache import DiskMetadataCache, Namespace, NamespaceOptions
from ossmount.fs.inodes import Inode, InodeTable
from ossmount.fs.operations import FsOptions, OssFs
from ossmount.fs.reader import ReadCache
from ossmount.fs.writer import StateDirBusyError, WriteStaging, default_state_dir
from ossmount.oss.client import OssClient
from ossmount.oss.errors import (
    AccessDenied,
    InvalidAccessKeyId,
    NoSuchBucket,
    OssConnectionError,
    OssError,
    SignatureDoesNotMatch,
    TlsError,
)
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials
from ossmount.status import (
    MountStatus,
    serve_metrics,
    serve_status_socket,
    status_socket_path,
)

log = logging.getLogger(__name__)

# The daemon parent waits this long beyond the preflight timeout for the mount to answer.
STARTUP_MARGIN_S = 30.0
FUSE_DEVICE = Path("/dev/fuse")
SYSLOG_SOCKET = "/dev/log"


class MountError(Exception):
    """The mount cannot be made; the message is the one-line reason shown to the user."""


# -- checks before mounting -----------------------------------------------------------------


def _is_mountpoint(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            target = os.fsencode(str(path))
            for line in mounts:
                fields = line.split()
                if len(fields) > 4 and unescape_mount_path(fields[4]) == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def unescape_mount_path(field: str) -> bytes:
    """A path field of /proc/self/mountinfo, which escapes space, tab, newline and backslash
    as \\ooo, as the bytes it stands for."""
    raw = field.encode()
    out = bytearray()
    index = 0
    while index < len(raw):
        if raw[index] == 0x5C and index + 4 <= len(raw):
            out.append(int(raw[index + 1 : index + 4], 8))
            index += 4
        else:
            out.append(raw[index])
            index += 1
    return bytes(out)


def unmount(mountpoint: Path, *, lazy: bool = False) -> None:
    """Unmount a FUSE mount (fusermount3 -u, lazily with -z); raises MountError on failure."""
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 and os.geteuid() == 0:
        # fusermount3 refuses mounts not in its mtab view; umount(8) is the root fallback.
        result = subprocess.run(
            ["umount", *(["-l"] if lazy else []), str(mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise MountError(f"cannot unmount {mountpoint}: {reason[-1] if reason else 'failed'}")


def _clear_crashed_mount(mountpoint: Path, exc: OSError) -> os.stat_result:
    """After ``exc`` from the mountpoint: clear the mount of a crashed process (ENOTCONN) and
    stat the directory under it; any other error is the mount's failure."""
    if exc.errno != errno.ENOTCONN:
        raise MountError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    log.warning("%s: clearing the mount of a crashed process", mountpoint)
    unmount(mountpoint, lazy=True)
    return mountpoint.stat()


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse a missing, non-directory or already mounted mountpoint; clear a crashed mount."""
    try:
        info = mountpoint.stat()
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as exc:
        info = _clear_crashed_mount(mountpoint, exc)
    if _is_mountpoint(mountpoint):
        # stat() may be answered from the kernel's attribute cache; statfs always reaches
        # the file system, so it tells a live mount from a dead one.
        try:
            os.statvfs(mountpoint)
        except OSError as exc:
            info = _clear_crashed_mount(mountpoint, exc)
        else:
            raise MountError(f"mountpoint {mountpoint} is already mounted")
    if not stat.S_ISDIR(info.st_mode):
        raise MountError(f"mountpoint {mountpoint} is not a directory")


def check_mountpoint_empty(mountpoint: Path) -> None:
    """Refuse a mountpoint with entries: the mount would hide them (-o nonempty allows it)."""
    try:
        with os.scandir(mountpoint) as entries:
            occupied = next(entries, None) is not None
    except OSError as exc:
        raise MountError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if occupied:
        raise MountError(
            f"mountpoint {mountpoint} is not empty: the mount would hide its files "
            "(-o nonempty mounts over them)"
        )


def mount_title(config: MountConfig) -> str:
    """``ossmount BUCKET[:/PREFIX] MOUNTPOINT``: the process title, and what a log names."""
    spec = config.bucket + (":/" + config.prefix.rstrip("/") if config.prefix else "")
    return f"ossmount {spec} {config.mountpoint}"


def check_fuse_device() -> None:
    """Refuse to start without a usable /dev/fuse."""
    if not FUSE_DEVICE.exists():
        raise MountError(
            f"{FUSE_DEVICE} is missing (load the fuse kernel module; in a container, "
            "pass --device /dev/fuse)"
        )
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise MountError(f"{FUSE_DEVICE} is not readable and writable by this user")


def endpoint_url(config: MountConfig) -> str:
    if config.endpoint:
        return config.endpoint
    env_endpoint = os.environ.get("OSS_ENDPOINT", "").strip()
    if env_endpoint:
        return env_endpoint if "://" in env_endpoint else "https://" + env_endpoint
    if config.region:
        return f"https://oss-{config.region}.aliyuncs.com"
    raise MountError("no endpoint: give --endpoint, -o url=..., -o region=... or OSS_ENDPOINT")


def _reason_for(
    exc: OssError, config: MountConfig, endpoint: str, *, anonymous: bool = False
) -> str:
    if anonymous and isinstance(exc, AccessDenied):
        return (
            f"no credentials found (looked in: {places_searched()}); the anonymous request "
            f"got: access denied to bucket {config.bucket}: {exc.message}"
        )
    if isinstance(exc, InvalidAccessKeyId):
        return f"wrong access key: the server does not know this AccessKeyId ({exc.code})"
    if isinstance(exc, SignatureDoesNotMatch):
        return "wrong access key secret: the signature does not match (SignatureDoesNotMatch)"
    if isinstance(exc, NoSuchBucket):
        return f"no such bucket: {config.bucket}"
    if isinstance(exc, AccessDenied):
        return f"access denied to bucket {config.bucket}: {exc.message}"
    if isinstance(exc, OssConnectionError):
        return f"endpoint {endpoint} unreachable: {exc.message}"
    if isinstance(exc, TlsError):
        return f"endpoint {endpoint}: {exc.message}"
    return f"cannot list bucket {config.bucket}: {exc}"


def bad_endpoint_reason(endpoint: str, exc: ValueError) -> str:
    """One line for a client the endpoint (no region can be told from it, ...), CA file or
    proxy does not allow: the reason, and what a good endpoint looks like."""
    return (
        f"endpoint {endpoint}: {exc} (endpoints look like {GOOD_ENDPOINT_EXAMPLE}; "
        "give --region for one that names none)"
    )


async def preflight(config: MountConfig, endpoint: str, credentials: Credentials | None) -> None:
    """One listing request: proves the endpoint answers, the key is right and the bucket exists.

    It has its own client with a short retry budget: an unreachable endpoint must fail the
    mount within seconds, not after the mount's generous retry deadline.
    """
    try:
        client = OssClient(
            endpoint,
            credentials,
            region=config.region,
            signature_version=config.signature_version,
            max_connections=1,
            retry=RetryPolicy(max_attempts=3, base_delay_s=0.2, deadline_s=config.mount_timeout_s),
            timeout_s=config.mount_timeout_s,
            ca_file=config.ssl_ca_file,
        )
    except ValueError as exc:  # an unusable endpoint, CA file or proxy
        raise MountError(bad_endpoint_reason(endpoint, exc)) from None
    try:
        with trio.fail_after(config.mount_timeout_s):
            async with client:
                await client.list_objects_page(
                    config.bucket, prefix=config.prefix, delimiter="/", max_keys=1
                )
    except trio.TooSlowError:
        raise MountError(
            f"endpoint {endpoint} unreachable: no answer within {config.mount_timeout_s:g} s"
        ) from None
    except OssError as exc:
        raise MountError(
            _reason_for(exc, config, endpoint, anonymous=credentials is None)
        ) from None


# -- the mount itself -----------------------------------------------------------------------


def fuse_options(config: MountConfig) -> set[str]:
    """Options for pyfuse3.init (libfuse's mount options)."""
    options = set(pyfuse3.default_options)
    options.add(f"fsname=ossmount:{config.bucket}")
    options.add("subtype=ossmount")
    if config.read_only:
        # The kernel itself refuses every change with EROFS.
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    if config.debug:
        options.add("debug")
    return options


def drop_kernel_entries(inodes: list[Inode]) -> None:
    """Ask the kernel to drop its entries for ``inodes`` (a batch the table evicts); it forgets
    each inode once nothing uses its entry. Through pyfuse3's notify thread, since an
    invalidation waits for the parent directory's lock, which a request being handled may hold.
    (A thread per batch calling invalidate_entry measured a third more CPU.)"""
    log.debug("asking the kernel to drop %d least recently used entries", len(inodes))
    for inode in inodes:
        pyfuse3.invalidate_entry_async(inode.parent, os.fsencode(inode.name), ignore_enoent=True)


def raise_read_ahead(mountpoint: Path, read_ahead_kb: int) -> bool:
    """Set the mount's bdi read_ahead_kb (kernel readahead, hence FUSE read size), if permitted."""
    device = os.stat(mountpoint).st_dev
    sysfs = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        sysfs.write_text(f"{read_ahead_kb}\n")
    except OSError as exc:
        log.info("cannot set %s to %d (%s); kernel default kept", sysfs, read_ahead_kb, exc)
        return False
    log.debug("%s = %d", sysfs, read_ahead_kb)
    return True


def build_filesystem(
    config: MountConfig,
    client: OssClient,
    nursery: trio.Nursery,
    head_clients: Sequence[OssClient] = (),
    disk_cache: DiskMetadataCache | None = None,
    staging: WriteStaging | None = None,
    data_cache: DataCache | None = None,
) -> tuple[OssFs, ReadCache]:
    """Wire the namespace, inode table and block cache of one mount (and its write path,
    ``staging``, unless the mount is read-only)."""
    defaults = AttrDefaults(
        uid=config.uid,
        gid=config.gid,
        file_mode=config.default_file_mode,
        dir_mode=config.default_dir_mode,
    )
    mount_time_ns = time.time_ns()

    def offer_small_body(key: str, etag: str, body: bytes) -> None:
        # Bodies of small files fetched with their metadata go to the read path (read_cache is
        # made below, before the mount answers any request).
        read_cache.offer_object(key, etag, body)

    def holds_body(key: str, etag: str, size: int) -> bool:
        return read_cache.holds_object(key, etag, size)

    namespace = Namespace(
        client,
        config.bucket,
        defaults,
        NamespaceOptions(
            exact_metadata=not config.readdir_optimize,
            head_concurrency=config.head_concurrency,
            list_cache_ttl_s=config.list_cache_ttl_s,
            stat_cache_ttl_s=config.stat_cache_ttl_s,
            negative_ttl_s=config.negative_timeout_s,
            list_cache_entries=config.list_cache_entries,
            stat_cache_entries=config.stat_cache_entries,
            small_file_get_bytes=config.small_file_get,
        ),
        dir_mtime_ns=mount_time_ns,
        head_clients=head_clients,
        disk_cache=disk_cache,
        on_small_body=offer_small_body,
        holds_body=holds_body,
    )
    root_attrs = replace(
        directory_attributes(defaults, mount_time_ns), permissions=config.root_dir_mode
    )
    inodes = InodeTable(
        config.prefix,
        root_attrs,
        max_remembered=config.inode_cache_entries,
        evict=drop_kernel_entries,
    )
    read_cache = ReadCache(
        client,
        config.bucket,
        block_size=config.block_size,
        cache_bytes=config.read_cache_bytes,
        max_inflight=config.max_inflight_reads,
        nursery=nursery,
        data_cache=data_cache,
    )
    fs = OssFs(
        namespace,
        inodes,
        read_cache,
        FsOptions(
            entry_timeout_s=config.entry_timeout_s,
            attr_timeout_s=config.attr_timeout_s,
            negative_timeout_s=config.negative_timeout_s,
            stat_cache_ttl_s=config.stat_cache_ttl_s,
            block_size=LIBFUSE_MAX_READ,
            direct_io=config.direct_io,
            xattrs=not config.noxattr,
        ),
        staging=staging,
    )
    return fs, read_cache


def find_credentials(config: MountConfig) -> Credentials | None:
    try:
        return resolve_credentials(config.bucket, passwd_file=config.passwd_file)
    except CredentialsError as exc:
        raise MountError(str(exc)) from None


HEAD_POOL_CONNECTIONS = 4


def make_client(
    config: MountConfig,
    endpoint: str,
    credentials: Credentials | None,
    max_connections: int | None = None,
) -> OssClient:
    """A client of the mount, with the default retry policy."""
    return OssClient(
        endpoint,
        credentials,
        region=config.region,
        signature_version=config.signature_version,
        max_connections=max_connections or config.max_connections,
        retry=RetryPolicy(),
        ca_file=config.ssl_ca_file,
    )


@asynccontextmanager
async def open_clients(
    config: MountConfig, endpoint: str, credentials: Credentials | None
) -> AsyncIterator[tuple[OssClient, list[OssClient]]]:
    """The main client (reads, listings) and the small pools that share the HEAD concurrency."""
    pools = -(-config.head_concurrency // HEAD_POOL_CONNECTIONS)
    async with contextlib.AsyncExitStack() as stack:
        main = await stack.enter_async_context(make_client(config, endpoint, credentials))
        head_clients = [
            await stack.enter_async_context(
                make_client(config, endpoint, credentials, HEAD_POOL_CONNECTIONS)
            )
            for _ in range(pools)
        ]
        yield main, head_clients


async def serve(config: MountConfig, on_ready: Callable[[str | None], None]) -> None:
    """Mount and serve until SIGINT/SIGTERM or an external unmount.

    ``on_ready(None)`` is called once the mount answers; ``on_ready(reason)`` never is: a
    failure before that point raises MountError with the reason.
    """
    log.info("ossmount %s (pid %d): mounting %s", __version__, os.getpid(), mount_title(config)[9:])
    setproctitle.setproctitle(mount_title(config))
    check_fuse_device()
    check_mountpoint(config.mountpoint)
    if not config.nonempty:
        check_mountpoint_empty(config.mountpoint)
    endpoint = endpoint_url(config)
    credentials = find_credentials(config)
    await preflight(config, endpoint, credentials)
    mount_failure: str | None = None
    disk_cache = open_disk_cache(config, endpoint)
    data_cache = open_data_cache(config, endpoint)
    # Signals are caught from before the mount exists, so none can kill it half-way.
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
        contextlib.closing(disk_cache) if disk_cache is not None else contextlib.nullcontext(),
        contextlib.closing(data_cache) if data_cache is not None else contextlib.nullcontext(),
    ):
        async with open_clients(config, endpoint, credentials) as (client, head_clients):
            # Loads the journal: keys with uploads pending read as their staged data at once.
            staging = None if config.read_only else open_write_staging(config, client)
            try:
                async with trio.open_nursery() as nursery:
                    if staging is not None:
                        await nursery.start(staging.run)
                        nursery.start_soon(staging.recover)
                    fs, _ = build_filesystem(
                        config,
                        client,
                        nursery,
                        head_clients,
                        disk_cache,
                        staging=staging,
                        data_cache=data_cache,
                    )
                    await start_status(config, endpoint, fs, staging, nursery)
                    try:
                        pyfuse3.init(fs, str(config.mountpoint), fuse_options(config))
                    except RuntimeError as exc:
                        # Raised after the nursery closes (raising here would wrap it in an
                        # ExceptionGroup).
                        mount_failure = f"cannot mount {config.mountpoint}: {exc}"
                        nursery.cancel_scope.cancel()
                    else:
                        log.info(
                            "mounted %s%s at %s (endpoint %s)",
                            config.bucket,
                            ":/" + config.prefix if config.prefix else "",
                            config.mountpoint,
                            endpoint,
                        )
                        try:
                            nursery.start_soon(_stop_on_signals, signals)
                            nursery.start_soon(_announce_when_answering, config, on_ready)
                            await pyfuse3.main(min_tasks=4, max_tasks=256)
                        finally:
                            nursery.cancel_scope.cancel()
                            pyfuse3.close(unmount=True)
                            log.info("unmounted %s", config.mountpoint)
            finally:
                if staging is not None:
                    staging.close()
    if mount_failure is not None:
        raise MountError(mount_failure)


def mount_state_dir(config: MountConfig) -> Path:
    """The mount's state directory: journal, staging files, status socket, log file."""
    return config.state_dir or default_state_dir(config.bucket, config.prefix)


async def start_status(
    config: MountConfig,
    endpoint: str,
    fs: OssFs,
    staging: WriteStaging | None,
    nursery: trio.Nursery,
) -> None:
    """What the mount tells operators: the status socket, and the metrics endpoint if asked."""
    status = MountStatus(
        bucket=config.bucket,
        prefix=config.prefix,
        endpoint=endpoint,
        mountpoint=config.mountpoint,
        counters=fs.namespace.client.counters,
        namespace=fs.namespace,
        inodes=fs.inodes,
        read_cache=fs.read_cache,
        staging=staging,
        log_target=log_destination,
        socket_path=status_socket_path(mount_state_dir(config)),
    )
    try:
        await nursery.start(serve_status_socket, status, status.socket_path)
    except OSError as exc:
        log.warning("no status socket in %s: %s", mount_state_dir(config), exc)
    if config.metrics_addr is not None:
        try:
            await nursery.start(serve_metrics, status, config.metrics_addr)
        except OSError as exc:
            raise MountError(f"metrics_addr={config.metrics_addr}: {exc.strerror or exc}") from None


def open_write_staging(config: MountConfig, client: OssClient) -> WriteStaging:
    """The write path of the mount: state directory (journal, staging files) and its budget."""
    state_dir = mount_state_dir(config)
    try:
        return WriteStaging(
            client,
            config.bucket,
            state_dir=state_dir,
            prefix=config.prefix,
            disk_budget_bytes=config.staging_budget,
            part_size=config.part_size,
            multipart_threshold=config.multipart_threshold,
            upload_concurrency=config.upload_concurrency,
        )
    except StateDirBusyError as exc:
        raise MountError(f"{exc} (a second mount of it needs -o state_dir=PATH)") from None
    except OSError as exc:
        raise MountError(f"state directory {state_dir}: {exc.strerror or exc}") from None


def open_disk_cache(config: MountConfig, endpoint: str) -> DiskMetadataCache | None:
    """The on-disk metadata cache of this endpoint, bucket and prefix, if enabled."""
    if not config.metadata_cache:
        return None
    identity = f"{endpoint}\n{config.bucket}\n{config.prefix}".encode()
    name = f"meta-{config.bucket}-{hashlib.sha256(identity).hexdigest()[:16]}.sqlite"
    try:
        return DiskMetadataCache(config.cache_dir / name)
    except (OSError, sqlite3.Error) as exc:
        raise MountError(f"metadata cache in {config.cache_dir}: {exc}") from None


def open_data_cache(config: MountConfig, endpoint: str) -> DataCache | None:
    """The persistent data cache of this endpoint, bucket and prefix (``use_cache``), if on."""
    if config.use_cache is None:
        return None
    root = config.use_cache / cache_namespace(endpoint, config.bucket, config.prefix)
    try:
        return DataCache(
            root,
            capacity=config.cache_size,
            block_size=config.block_size,
            clear=config.del_cache,
        )
    except DataCacheError as exc:
        raise MountError(str(exc.strerror or exc)) from None


async def _stop_on_signals(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("signal %d: unmounting", signum)
        pyfuse3.terminate()
        return


async def _announce_when_answering(
    config: MountConfig, on_ready: Callable[[str | None], None]
) -> None:
    # A stat() of the root goes through the kernel to our getattr: when it returns, the mount
    # answers. It runs in a thread because the main loop that answers it is this one.
    await trio.to_thread.run_sync(os.stat, config.mountpoint)
    await trio.to_thread.run_sync(raise_read_ahead, config.mountpoint, config.read_ahead_kb)
    on_ready(None)


# Where this process logs (set by setup_logging; shown by `ossmount status`).
log_destination = "stderr"
# The log file a daemon writes when there is no syslog: bounded, rotated.
DAEMON_LOG_NAME = "ossmount.log"
DAEMON_LOG_BYTES = 10 * 1024 * 1024
DAEMON_LOG_BACKUPS = 3


def setup_logging(config: MountConfig, *, daemon: bool = False) -> None:
    """Log to the log file if given, else stderr (foreground), or as a daemon to syslog if
    /dev/log exists and otherwise to a rotating file in the state directory."""
    global log_destination  # noqa: PLW0603 (one logging set-up per process)
    level = logging.DEBUG if config.debug else logging.INFO
    handler: logging.Handler
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.log_file is not None:
        handler = logging.FileHandler(config.log_file)
        log_destination = str(config.log_file)
    elif daemon and os.path.exists(SYSLOG_SOCKET):
        handler = logging.handlers.SysLogHandler(SYSLOG_SOCKET)
        formatter = logging.Formatter(f"ossmount[{os.getpid()}]: %(levelname)s %(message)s")
        log_destination = f"syslog ({SYSLOG_SOCKET})"
    elif daemon:
        log_path = mount_state_dir(config) / DAEMON_LOG_NAME
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = logging.handlers.RotatingFileHandler(
            log_path, maxBytes=DAEMON_LOG_BYTES, backupCount=DAEMON_LOG_BACKUPS
        )
        log_destination = str(log_path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not config.debug else logging.INFO)


def run_foreground(config: MountConfig, on_ready: Callable[[str | None], None]) -> int:
    """Serve in this process; returns the exit status."""
    try:
        trio.run(serve, config, on_ready)
    except MountError as exc:
        on_ready(str(exc))
        return 1
    except Exception as exc:
        log.exception("the mount failed")
        on_ready(f"the mount failed: {exc!r}")
        return 1
    return 0


# -- daemon mode ----------------------------------------------------------------------------


def config_to_json(config: MountConfig) -> str:
    fields = dataclasses.asdict(config)
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})


def config_from_json(text: str) -> MountConfig:
    raw: dict[str, Any] = json.loads(text)
    for name in ("mountpoint", "passwd_file", "log_file", "cache_dir", "state_dir", "use_cache"):
        if raw.get(name) is not None:
            raw[name] = Path(raw[name])
    return MountConfig(**raw)


def run_daemon(config: MountConfig) -> int:
    """Start the mount in the background; exit 0 only once it answers (see module doc)."""
    timeout_s = config.mount_timeout_s + STARTUP_MARGIN_S
    read_fd, write_fd = os.pipe()
    log_target = open(config.log_file, "ab") if config.log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "ossmount.mount", "--ready-fd", str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=log_target,
            stderr=log_target,
            pass_fds=(write_fd,),
            start_new_session=True,
            cwd="/",
        )
    finally:
        os.close(write_fd)
        if log_target is not subprocess.DEVNULL:
            log_target.close()  # type: ignore[union-attr]
    assert child.stdin is not None
    child.stdin.write(config_to_json(config).encode())
    child.stdin.close()
    message = _read_ready_line(read_fd, timeout_s)
    os.close(read_fd)
    if message == "OK":
        return 0
    if message is None:
        child.kill()
        child.wait()
        _clear_half_mount(config.mountpoint)
        print(f"ossmount: the mount did not answer within {timeout_s:.0f} s", file=sys.stderr)
        return 1
    if message.startswith("ERR "):
        child.wait()
        print(f"ossmount: {message[4:]}", file=sys.stderr)
        return 1
    status = child.wait()
    _clear_half_mount(config.mountpoint)
    print(f"ossmount: the mount process exited with status {status}", file=sys.stderr)
    return 1


def _read_ready_line(fd: int, timeout_s: float) -> str | None:
    """The first line written to ``fd`` ("" at EOF), or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")


def _clear_half_mount(mountpoint: Path) -> None:
    if _is_mountpoint(mountpoint):
        try:
            unmount(mountpoint, lazy=True)
        except MountError as exc:
            log.warning("%s", exc)


def _daemon_child_main(argv: list[str]) -> int:
    ready_fd = int(argv[argv.index("--ready-fd") + 1])
    config = config_from_json(sys.stdin.read())
    setup_logging(config, daemon=True)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    answered = False

    def on_ready(reason: str | None) -> None:
        nonlocal answered
        if answered:
            return
        answered = True
        line = "OK\n" if reason is None else f"ERR {reason}\n"
        try:
            os.write(ready_fd, line.encode())
            os.close(ready_fd)
        except OSError:
            pass

    status = run_foreground(config, on_ready)
    if not answered:
        on_ready(f"the mount stopped before answering (status {status})")
    return status


def mount_main(config: MountConfig) -> int:
    """The `ossmount mount` command: foreground or daemon, per the config."""
    if config.foreground:
        setup_logging(config)

        def report(reason: str | None) -> None:
            if reason is not None:
                print(f"ossmount: {reason}", file=sys.stderr)

        return run_foreground(config, report)
    return run_daemon(config)


def mount_command(args: argparse.Namespace) -> int:
    """`ossmount mount` (and the mount(8) helper form): parse, then mount."""
    options = [item for value in args.options for item in split_option_list(value)]
    try:
        config = build_config(
            args.bucket,
            args.mountpoint,
            options=options,
            endpoint=args.endpoint,
            region=args.region,
            foreground=True if args.foreground or args.debug else None,
            debug=True if args.debug else None,
            log_file=Path(args.log_file) if args.log_file else None,
        )
    except ConfigError as exc:
        print(f"ossmount: {exc}", file=sys.stderr)
        return 2
    return mount_main(config)


def unmount_command(args: argparse.Namespace) -> int:
    """`ossmount unmount MOUNTPOINT`."""
    mountpoint = Path(args.mountpoint).expanduser().resolve()
    try:
        unmount(mountpoint, lazy=args.lazy)
    except MountError as exc:
        print(f"ossmount: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_daemon_child_main(sys.argv[1:]))
