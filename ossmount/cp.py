"""``ossmount cp``: copy files between the local disk and OSS, resumably.

    ossmount cp [-r] SRC DST      one of SRC/DST is oss://bucket/key, the other a local path

Downloads and uploads use the checkpointed transfers of :mod:`ossmount.oss.transfer`, so an
interrupted copy (Ctrl-C, a lost connection, a killed process) goes on where it stopped when the
same command runs again. Every file is checked against the server's CRC-64. On a terminal a
progress bar shows bytes, rate and ETA; elsewhere cp prints nothing unless something fails.
Failures are one line each on stderr, and the exit status is 1 (130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import trio
from tqdm import tqdm

from ossmount.credentials import CredentialsError, resolve_credentials
from ossmount.oss.client import OssClient
from ossmount.oss.errors import OssError
from ossmount.oss.model import ObjectSummary
from ossmount.oss.transfer import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PART_SIZE,
    download_file,
    upload_file,
)

log = logging.getLogger(__name__)

SCHEME = "oss://"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CpError(Exception):
    """A failure to report as one line."""


@dataclass(frozen=True, slots=True)
class OssLocation:
    bucket: str
    key: str


def parse_location(text: str) -> OssLocation | Path:
    """``oss://bucket/key`` -> OssLocation; anything else is a local path."""
    if not text.startswith(SCHEME):
        return Path(text)
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not bucket:
        raise CpError(f"{text}: no bucket in the URL (oss://bucket/key)")
    return OssLocation(bucket, key)


def parse_size(text: str) -> int:
    """'8M', '512K', '1G', '1048576' -> bytes (binary units)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a size must be positive")
    return value


def endpoint_url(endpoint: str | None, region: str | None) -> str:
    """--endpoint, else $OSS_ENDPOINT, else the public endpoint of --region."""
    if endpoint:
        return endpoint if "://" in endpoint else "https://" + endpoint
    from_env = os.environ.get("OSS_ENDPOINT", "").strip()
    if from_env:
        return from_env if "://" in from_env else "https://" + from_env
    if region:
        return f"https://oss-{region}.aliyuncs.com"
    raise CpError("no endpoint: give --endpoint URL, set OSS_ENDPOINT, or give --region")


def safe_relative(key: str, prefix: str) -> PurePosixPath | None:
    """The local relative path of ``key`` below ``prefix``; None for keys that would escape the
    target directory (``..``, absolute) or name no file (directory markers)."""
    relative = key[len(prefix) :]
    if not relative or relative.endswith("/"):
        return None
    path = PurePosixPath(relative)
    if path.is_absolute() or any(part in ("..", ".", "") for part in relative.split("/")):
        return None
    return path


def file_target(target: Path, target_text: str, name: str) -> Path:
    """Where one downloaded object goes: into DST if DST is a directory (or ends in /)."""
    if target_text.endswith("/") or target.is_dir():
        return target / name
    return target


@dataclass(frozen=True, slots=True)
class Job:
    """One file to copy: (bucket, key) <-> local path, and its size."""

    bucket: str
    key: str
    path: Path
    size: int


def _terminal_known() -> bool:
    """Whether the terminal on stderr tells its size (a pty may say 0x0)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


class ProgressBar:
    """One bar for the whole copy, fed by per-file (consumed, total) callbacks."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = (
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                # A terminal that does not say its size (0x0) would get an invisible bar.
                dynamic_ncols=_terminal_known(),
                ncols=None if _terminal_known() else 80,
                nrows=None if _terminal_known() else 24,
            )
            if enabled
            else None
        )
        self._per_file: dict[str, int] = {}

    def callback(self, name: str) -> Callable[[int, int], None]:
        def update(consumed: int, total: int) -> None:
            previous = self._per_file.get(name, 0)
            self._per_file[name] = consumed
            if self._bar is not None and consumed != previous:
                self._bar.update(consumed - previous)

        return update

    def write(self, line: str) -> None:
        """Print a line on stderr without breaking the bar."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Copier:
    def __init__(self, client: OssClient, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.failures: list[str] = []
        self.bar: ProgressBar | None = None

    async def plan_download(self, source: OssLocation, target: Path) -> list[Job]:
        if not self.args.recursive:
            if not source.key or source.key.endswith("/"):
                raise CpError(f"oss://{source.bucket}/{source.key}: not an object (use -r)")
            info = await self.client.head_object(source.bucket, source.key)
            path = file_target(target, self.args.target, PurePosixPath(source.key).name)
            return [Job(source.bucket, source.key, path, info.size)]
        prefix = source.key if not source.key or source.key.endswith("/") else source.key + "/"
        jobs: list[Job] = []
        async for entry in self.client.iter_objects(source.bucket, prefix=prefix):
            assert isinstance(entry, ObjectSummary)  # no delimiter: objects only
            relative = safe_relative(entry.key, prefix)
            if relative is None:
                if not entry.key.endswith("/"):
                    self.fail(f"oss://{source.bucket}/{entry.key}: skipped, unsafe local name")
                continue
            jobs.append(Job(source.bucket, entry.key, target.joinpath(*relative.parts), entry.size))
        if not jobs and not self.failures:
            raise CpError(f"oss://{source.bucket}/{prefix}: no objects under this prefix")
        return jobs

    def plan_upload(self, source: Path, target: OssLocation) -> list[Job]:
        if not source.exists():
            raise CpError(f"{source}: no such file or directory")
        if source.is_dir():
            if not self.args.recursive:
                raise CpError(f"{source}: is a directory (use -r)")
            prefix = target.key if not target.key or target.key.endswith("/") else target.key + "/"
            jobs = []
            for directory, _, names in os.walk(source):
                for name in sorted(names):
                    path = Path(directory) / name
                    if path.is_symlink() and not path.exists():
                        self.fail(f"{path}: skipped, dangling symlink")
                        continue
                    key = prefix + path.relative_to(source).as_posix()
                    jobs.append(Job(target.bucket, key, path, path.stat().st_size))
            return jobs
        key = target.key
        if not key or key.endswith("/"):
            key += source.name
        return [Job(target.bucket, key, source, source.stat().st_size)]

    def fail(self, line: str) -> None:
        self.failures.append(line)
        if self.bar is not None:
            self.bar.write(f"ossmount cp: {line}")
        else:
            print(f"ossmount cp: {line}", file=sys.stderr)

    async def run_jobs(self, jobs: list[Job], download: bool) -> None:
        self.bar = bar = ProgressBar(sum(job.size for job in jobs), self.args.progress)
        limiter = trio.CapacityLimiter(self.args.concurrency)

        async def run(job: Job) -> None:
            async with limiter:
                try:
                    await self.copy_one(job, download, bar.callback(job.key))
                except (OssError, OSError) as exc:
                    self.fail(describe(exc, job, download))

        try:
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(run, job)
        finally:
            bar.close()
            self.bar = None

    async def copy_one(
        self, job: Job, download: bool, progress: Callable[[int, int], None]
    ) -> None:
        args = self.args
        if download:
            await trio.to_thread.run_sync(
                lambda: job.path.parent.mkdir(parents=True, exist_ok=True)
            )
            await download_file(
                self.client,
                job.bucket,
                job.key,
                job.path,
                part_size=args.part_size,
                concurrency=args.concurrency,
                checkpoint_dir=args.checkpoint_dir,
                progress=progress,
            )
        else:
            await upload_file(
                self.client,
                job.bucket,
                job.key,
                job.path,
                part_size=args.part_size,
                concurrency=args.concurrency,
                multipart_threshold=args.multipart_threshold,
                checkpoint_dir=args.checkpoint_dir,
                progress=progress,
            )


def describe(exc: BaseException, job: Job, download: bool) -> str:
    remote = f"oss://{job.bucket}/{job.key}"
    where = f"{remote} -> {job.path}" if download else f"{job.path} -> {remote}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{where}: {exc.filename or job.path}: {exc.strerror}"
    return f"{where}: {exc}"


async def _copy(args: argparse.Namespace) -> int:
    source = parse_location(args.source)
    target = parse_location(args.target)
    if isinstance(source, OssLocation) == isinstance(target, OssLocation):
        raise CpError("one of SRC and DST must be oss://bucket/key and the other a local path")
    remote = source if isinstance(source, OssLocation) else target
    assert isinstance(remote, OssLocation)
    credentials = resolve_credentials(remote.bucket, passwd_file=args.passwd_file)
    client = OssClient(
        endpoint_url(args.endpoint, args.region),
        credentials,
        region=args.region,
        signature_version=args.signature_version,
        max_connections=max(8, args.concurrency * 2),
        ca_file=args.ca_file,
    )
    async with client:
        copier = Copier(client, args)
        if isinstance(source, OssLocation):
            assert isinstance(target, Path)
            jobs = await copier.plan_download(source, target)
            await copier.run_jobs(jobs, download=True)
        else:
            assert isinstance(target, OssLocation)
            jobs = copier.plan_upload(source, target)
            await copier.run_jobs(jobs, download=False)
    return EXIT_FAILED if copier.failures else 0


def cp_command(args: argparse.Namespace) -> int:
    """Entry point of ``ossmount cp`` (arguments from cli._add_cp_parser)."""
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return trio.run(_copy, args)
    except BaseException as exc:  # every failure: one line and an exit status
        return report_failure(exc)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def report_failure(exc: BaseException) -> int:
    """Print one line for a failure of the whole copy; -> the exit status. Anything that is not
    a known kind of failure (a bug) is raised again, with its traceback."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        print("ossmount cp: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    first = leaves[0]
    if isinstance(first, CpError | ValueError):
        print(f"ossmount cp: {first}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(first, CredentialsError | OssError):
        print(f"ossmount cp: {first}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(first, OSError):
        print(f"ossmount cp: {first.filename or ''}: {first.strerror or first}", file=sys.stderr)
        return EXIT_FAILED
    raise exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``ossmount cp`` (cli._add_cp_parser calls this)."""
    parser.add_argument("source", metavar="SRC", help="oss://bucket/key or a local path")
    parser.add_argument("target", metavar="DST", help="a local path or oss://bucket/key")
    parser.add_argument(
        "-r", "--recursive", action="store_true", help="copy a prefix / a directory tree"
    )
    parser.add_argument("--endpoint", help="OSS endpoint URL (default: $OSS_ENDPOINT)")
    parser.add_argument("--region", help="region for V4 signing (and the default endpoint)")
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="PATH",
        help="trust these certificates (PEM) for an https endpoint instead of the defaults",
    )
    parser.add_argument(
        "--sigv1",
        dest="signature_version",
        action="store_const",
        const=1,
        default=4,
        help="sign with V1 instead of V4",
    )
    parser.add_argument(
        "--passwd-file", type=Path, help="ossfs passwd file (AK:SK or bucket:AK:SK lines)"
    )
    parser.add_argument(
        "--part-size",
        type=parse_size,
        default=DEFAULT_PART_SIZE,
        metavar="SIZE",
        help="part size of parallel transfers, e.g. 8M (raised to keep < 10000 parts)",
    )
    parser.add_argument(
        "--multipart-threshold",
        type=parse_size,
        default=DEFAULT_MULTIPART_THRESHOLD,
        metavar="SIZE",
        help="files from this size up are uploaded in parts (default 16M)",
    )
    parser.add_argument(
        "-j",
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="parts (and files) in flight at once (default 4)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="where resume journals live (default: beside downloads, "
        "~/.cache/ossmount/transfers for uploads)",
    )
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="show a progress bar")
    bar.add_argument("-q", "--quiet", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests and retries")
