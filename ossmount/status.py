"""The live state of a running mount, for `ossmount status MOUNTPOINT` and for Prometheus.

The mount process keeps one :class:`MountStatus` (references to the client counters, the caches,
the write staging and the inode table: nothing is copied until asked). Two readers:

- a Unix socket ``status-PID.sock`` in the mount's state directory, created with mode 0600 (only
  the mounting user, and root, may connect): each connection gets one JSON document, the
  :meth:`MountStatus.snapshot`, and is closed. (Named by process: read-only mounts of one bucket
  and prefix share a state directory; sockets of processes that are gone are removed.)
  `ossmount status MOUNTPOINT` finds the process serving MOUNTPOINT by its title
  (``ossmount BUCKET[:/PREFIX] MOUNTPOINT``) and that process's socket through /proc, so it
  needs no registry and works for any state directory;
- with ``-o metrics_addr=HOST:PORT``, prometheus_client's HTTP server, whose collector takes the
  same snapshot in the trio thread (``trio.from_thread``) at every scrape.

The snapshot is taken in the trio thread, where every counter changes, so it needs no locks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ossmount.oss.counters import RequestCounters

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from trio_typing import TaskStatus

    from ossmount.fs.dircache import Namespace
    from ossmount.fs.inodes import InodeTable
    from ossmount.fs.reader import ReadCache
    from ossmount.fs.writer import WriteStaging

log = logging.getLogger(__name__)

STATUS_SOCKET_PREFIX = "status-"
STATUS_SOCKET_SUFFIX = ".sock"
# sun_path holds 108 bytes with its NUL.
MAX_SOCKET_PATH = 107


@dataclass
class MountStatus:
    """What a running mount can tell about itself (see module doc)."""

    bucket: str
    prefix: str
    endpoint: str
    mountpoint: Path
    counters: RequestCounters
    namespace: Namespace
    inodes: InodeTable
    read_cache: ReadCache
    staging: WriteStaging | None
    log_target: str
    socket_path: Path | None = None
    started_at: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        """Everything `ossmount status` shows, as JSON-ready values (call in the trio thread)."""
        counters = self.counters
        read_stats = self.read_cache.stats
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": self.endpoint,
            "mountpoint": str(self.mountpoint),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "log": self.log_target,
            "status_socket": str(self.socket_path) if self.socket_path else None,
            "requests": dict(sorted(counters.requests.items())),
            "retries": dict(sorted(counters.retries.items())),
            "errors": [
                {"operation": operation, "code": code, "count": count}
                for (operation, code), count in sorted(counters.errors.items())
            ],
            "bytes_in": counters.bytes_in,
            "bytes_out": counters.bytes_out,
            "caches": {
                "blocks": {"hits": read_stats.cache_hits, "misses": read_stats.cache_misses},
                **self.namespace.cache_counters(),
                **self._data_cache_state(),
            },
            **self._write_state(),
            "inodes": len(self.inodes),
            "memory": _memory(),
        }

    def _data_cache_state(self) -> dict[str, Any]:
        cache = self.read_cache.data_cache
        if cache is None:
            return {}
        stats = cache.stats
        return {
            "data": {
                "hits": stats.hits,
                "misses": stats.misses,
                "directory": str(cache.root),
                "cached_bytes": cache.cached_bytes,
                "capacity_bytes": cache.capacity,
                "bytes_read": stats.bytes_read,
                "bytes_stored": stats.bytes_stored,
                "bytes_evicted": stats.bytes_evicted,
                "corrupt_chunks": stats.corrupt_chunks,
            }
        }

    def _write_state(self) -> dict[str, Any]:
        staging = self.staging
        if staging is None:
            return {"read_only": True, "staged_bytes": 0, "not_in_oss": []}
        now = trio.current_time()
        files = []
        for key in staging.pending_keys():
            staged = staging.staged(key)
            if staged is None:
                continue
            due = staged.retry_due_s
            files.append(
                {
                    "key": key,
                    "size": staged.size,
                    "state": staged.upload_state,
                    "last_error": str(staged.last_error) if staged.last_error else None,
                    "retry_in_s": round(max(0.0, due - now), 1) if due is not None else None,
                    "open_handles": staged.open_handles,
                }
            )
        return {
            "read_only": False,
            "staged_bytes": staging.budget.used,
            "staging_budget_bytes": staging.budget.capacity,
            "state_dir": str(staging.state_dir),
            "not_in_oss": files,
        }


def _memory() -> dict[str, int]:
    """Resident and peak resident bytes of this process (/proc/self/status)."""
    fields = {"VmRSS": "rss_bytes", "VmHWM": "peak_rss_bytes"}
    memory: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in fields:
                memory[fields[name]] = int(value.split()[0]) * 1024
    return memory


# -- the status socket ----------------------------------------------------------------------


def status_socket_path(state_dir: Path) -> Path:
    """This process's status socket in ``state_dir``."""
    return state_dir / f"{STATUS_SOCKET_PREFIX}{os.getpid()}{STATUS_SOCKET_SUFFIX}"


def _is_status_socket_name(name: str) -> bool:
    pid = name.removeprefix(STATUS_SOCKET_PREFIX).removesuffix(STATUS_SOCKET_SUFFIX)
    return (
        name.startswith(STATUS_SOCKET_PREFIX)
        and name.endswith(STATUS_SOCKET_SUFFIX)
        and pid.isdigit()
    )


def _remove_dead_sockets(state_dir: Path) -> None:
    """Status sockets in ``state_dir`` that no process answers any more (a crashed mount's)."""
    for path in state_dir.glob(f"{STATUS_SOCKET_PREFIX}*{STATUS_SOCKET_SUFFIX}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(os.fspath(path))
            except ConnectionRefusedError:
                path.unlink(missing_ok=True)
            except OSError:
                continue


def _bind_status_socket(path: Path) -> socket.socket | None:
    """A listening Unix socket at ``path``, 0600 from its creation (umask); None (logged) if
    the path is too long for a socket."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.warning("no status socket: its path %s is longer than a Unix socket allows", path)
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_dead_sockets(path.parent)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(os.fspath(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    return listener


async def serve_status_socket(
    status: MountStatus,
    path: Path,
    *,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer every connection to ``path`` with one snapshot, until cancelled; the socket is
    removed on the way out."""
    bound = _bind_status_socket(path)
    if bound is None:
        task_status.started()
        return
    listener = trio.socket.from_stdlib_socket(bound)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            document = json.dumps(status.snapshot()) + "\n"
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(document.encode())

    try:
        task_status.started()
        await trio.serve_listeners(answer, [trio.SocketListener(listener)])
    finally:
        os.unlink(path)


# -- Prometheus -------------------------------------------------------------------------------


def prometheus_collector(status: MountStatus, trio_token: trio.lowlevel.TrioToken) -> Collector:
    """A collector that reads a snapshot through the trio thread at each scrape."""
    from prometheus_client.core import (  # noqa: PLC0415 (only mounts with metrics load it)
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )

    class MountCollector:
        def collect(self) -> Iterator[Metric]:
            snapshot = trio.from_thread.run_sync(status.snapshot, trio_token=trio_token)
            requests = CounterMetricFamily(
                "ossmount_requests", "OSS requests by operation", labels=["operation"]
            )
            for operation, count in snapshot["requests"].items():
                requests.add_metric([operation], count)
            retries = CounterMetricFamily(
                "ossmount_retries", "Retried OSS request attempts", labels=["operation"]
            )
            for operation, count in snapshot["retries"].items():
                retries.add_metric([operation], count)
            errors = CounterMetricFamily(
                "ossmount_request_errors",
                "OSS requests that failed for good, by operation and error code",
                labels=["operation", "code"],
            )
            for error in snapshot["errors"]:
                errors.add_metric([error["operation"], error["code"]], error["count"])
            yield from (requests, retries, errors)
            yield CounterMetricFamily(
                "ossmount_received_bytes", "Body bytes received from OSS", snapshot["bytes_in"]
            )
            yield CounterMetricFamily(
                "ossmount_sent_bytes", "Body bytes sent to OSS", snapshot["bytes_out"]
            )
            hits = CounterMetricFamily(
                "ossmount_cache_hits", "Cache lookups answered", labels=["cache"]
            )
            misses = CounterMetricFamily(
                "ossmount_cache_misses", "Cache lookups not answered", labels=["cache"]
            )
            for cache, values in snapshot["caches"].items():
                hits.add_metric([cache], values["hits"])
                misses.add_metric([cache], values["misses"])
            yield from (hits, misses)
            gauges = {
                "ossmount_staged_bytes": ("Bytes staged on local disk", snapshot["staged_bytes"]),
                "ossmount_files_not_in_oss": (
                    "Files whose data is staged but not yet in OSS",
                    len(snapshot["not_in_oss"]),
                ),
                "ossmount_failed_uploads": (
                    "Files whose upload failed and is being retried",
                    sum(1 for f in snapshot["not_in_oss"] if f["last_error"] is not None),
                ),
                "ossmount_inodes": ("Inodes held", snapshot["inodes"]),
                "ossmount_resident_memory_bytes": (
                    "Resident memory of the mount process",
                    snapshot["memory"].get("rss_bytes", 0),
                ),
                "ossmount_uptime_seconds": (
                    "Seconds since the mount started",
                    snapshot["uptime_s"],
                ),
            }
            for name, (documentation, value) in gauges.items():
                yield GaugeMetricFamily(name, documentation, value=value)

    return MountCollector()


@contextlib.contextmanager
def metrics_server(status: MountStatus, address: str) -> Iterator[int]:
    """Serve Prometheus metrics at ``address`` ("HOST:PORT"; port 0: any) in a thread of
    prometheus_client's; yields the port. Call from the trio thread."""
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(prometheus_collector(status, trio.lowlevel.current_trio_token()))
    server, thread = start_http_server(int(port), addr=host, registry=registry)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def serve_metrics(
    status: MountStatus,
    address: str,
    *,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The metrics endpoint of the mount, until cancelled; ``nursery.start`` gives the port."""
    with metrics_server(status, address) as port:
        host = address.rpartition(":")[0]
        log.info("Prometheus metrics at http://%s:%d/metrics", host, port)
        task_status.started(port)
        await trio.sleep_forever()


# -- `ossmount status` -----------------------------------------------------------------------


def _processes_titled(mountpoint: Path) -> list[int]:
    """PIDs whose title is ``ossmount SPEC MOUNTPOINT`` (what mount.py sets)."""
    suffix = f" {mountpoint}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().rstrip(b"\0 ")
        except OSError:
            continue
        if title.startswith(b"ossmount ") and title.endswith(suffix) and b"\0" not in title:
            found.append(int(entry))
    return found


def _status_sockets_of(pid: int) -> list[str]:
    """Paths of the bound status sockets among ``pid``'s open files."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    paths = []
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        next(table, None)
        for line in table:
            fields = line.split(maxsplit=7)
            if len(fields) == 8 and fields[6] in inodes:
                path = fields[7].rstrip("\n")
                if _is_status_socket_name(path.rpartition("/")[2]):
                    paths.append(path)
    return paths


def find_status_socket(mountpoint: Path) -> Path:
    """The status socket of the mount at ``mountpoint``; raises LookupError saying why not."""
    pids = _processes_titled(mountpoint)
    if not pids:
        raise LookupError(f"no ossmount process serves {mountpoint}")
    for pid in pids:
        sockets = _status_sockets_of(pid)
        if sockets:
            return Path(sockets[0])
    raise LookupError(
        f"the ossmount process of {mountpoint} (pid {pids[0]}) has no status socket "
        "that this user can see (run as the mounting user or root)"
    )


def read_status(socket_path: Path, timeout_s: float = 10.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        client.connect(os.fspath(socket_path))
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    document: dict[str, Any] = json.loads(data)
    return document


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def format_status(status: dict[str, Any]) -> str:
    """The human form of a snapshot."""
    prefix = status["prefix"]
    spec = status["bucket"] + (":/" + prefix.rstrip("/") if prefix else "")
    memory = status["memory"]
    requests = status["requests"]
    retries = status["retries"]
    lines = [
        f"ossmount {spec} at {status['mountpoint']} (pid {status['pid']})",
        f"  endpoint   {status['endpoint']}",
        f"  uptime     {status['uptime_s']:.0f} s",
        f"  log        {status['log']}",
        f"  memory     {_size(memory.get('rss_bytes', 0))} resident "
        f"(peak {_size(memory.get('peak_rss_bytes', 0))})",
        f"  inodes     {status['inodes']}",
        f"  traffic    {_size(status['bytes_in'])} in, {_size(status['bytes_out'])} out",
        "  requests   "
        + (
            ", ".join(
                f"{operation} {count}"
                + (f" (+{retries[operation]} retried)" if retries.get(operation) else "")
                for operation, count in requests.items()
            )
            or "none"
        ),
    ]
    if status["errors"]:
        lines.append(
            "  errors     "
            + ", ".join(f"{e['operation']} {e['code']} {e['count']}" for e in status["errors"])
        )
    lines.append(
        "  caches     "
        + ", ".join(
            f"{name} {values['hits']} hits / {values['misses']} misses"
            for name, values in status["caches"].items()
        )
    )
    data = status["caches"].get("data")
    if data is not None:
        corrupt = (
            f", {data['corrupt_chunks']} torn chunks refetched" if data["corrupt_chunks"] else ""
        )
        lines.append(
            f"  data cache {_size(data['cached_bytes'])} of {_size(data['capacity_bytes'])} "
            f"in {data['directory']}{corrupt}"
        )
    if status["read_only"]:
        lines.append("  writes     read-only mount")
        return "\n".join(lines)
    lines.append(
        f"  staged     {_size(status['staged_bytes'])} of "
        f"{_size(status['staging_budget_bytes'])} (state directory {status['state_dir']})"
    )
    pending = status["not_in_oss"]
    if not pending:
        lines.append("  every closed file is in OSS")
        return "\n".join(lines)
    failed = sum(1 for f in pending if f["last_error"] is not None)
    lines.append(f"  NOT IN OSS YET: {len(pending)} file(s), {failed} failed and being retried")
    for staged in pending:
        detail = staged["state"]
        if staged["last_error"] is not None:
            retry = staged["retry_in_s"]
            detail += f" (next try in {retry:.0f} s)" if retry is not None else ""
            detail += f": {staged['last_error']}"
        lines.append(f"    {staged['key']}  {_size(staged['size'])}  {detail}")
    return "\n".join(lines)


def status_command(args: argparse.Namespace) -> int:
    """`ossmount status MOUNTPOINT [--json] [--socket PATH]`."""
    mountpoint = Path(args.mountpoint).expanduser().resolve()
    try:
        socket_path = Path(args.socket) if args.socket else find_status_socket(mountpoint)
        status = read_status(socket_path)
    except LookupError as exc:
        print(f"ossmount: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"ossmount: cannot read the status of {mountpoint}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0
