"""The `ossmount` command: one entry point, one subcommand per job.

Each subcommand's arguments are declared by an `_add_<name>_parser` function here; the work is
done by the module that owns it (imported lazily, so `ossmount cp` does not load pyfuse3).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_server_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "server",
        help="run the bundled OSS-compatible server",
        description="Serve the OSS REST API from a directory; prints the endpoint once it "
        "answers and serves until SIGINT/SIGTERM. Credentials default to the environment "
        "(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET).",
    )
    parser.add_argument("--root", required=True, help="directory holding the data and index")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9000, help="port (0: any free port)")
    parser.add_argument("--access-key-id", help="access key id clients sign with")
    parser.add_argument("--access-key-secret", help="its secret")
    parser.add_argument("--security-token", help="require this STS token with the key")
    parser.add_argument(
        "--bucket", action="append", default=[], help="create this bucket (repeatable)"
    )
    parser.add_argument(
        "--public-read", action="store_true", help="buckets from --bucket allow anonymous reads"
    )
    parser.add_argument("--region", default="cn-hangzhou", help="region the server reports")
    parser.add_argument(
        "--direct-io", action="store_true", help="write large bodies with O_DIRECT (less CPU)"
    )
    faults = parser.add_argument_group("fault injection (for tests and benchmarks)")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    faults.add_argument(
        "--bandwidth", type=float, default=0.0, metavar="BYTES_PER_S", help="shared cap (0: none)"
    )
    faults.add_argument(
        "--error-rate", type=float, default=0.0, help="share of 500/503 SlowDown answers"
    )
    faults.add_argument(
        "--reset-rate", type=float, default=0.0, help="share of bodies cut by a reset"
    )
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault choices")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")

    def run(args: argparse.Namespace) -> int:
        from ossmount.server.command import run_server_command  # noqa: PLC0415

        return run_server_command(args)

    parser.set_defaults(run=run)


def _add_mount_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "mount",
        help="mount a bucket (or a prefix of one) at a directory",
        description="Mount BUCKET[:/PREFIX] at MOUNTPOINT. Without -f, returns once the mount "
        "answers. Options: docs/configuration.md.",
    )
    parser.add_argument("bucket", metavar="BUCKET[:/PREFIX]")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--endpoint", help="OSS endpoint URL (or -o url=...)")
    parser.add_argument("--region", help="region for V4 signing, e.g. cn-hangzhou")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options (ossfs names accepted)",
    )
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging (implies -f)")
    parser.add_argument("--log-file", help="write the log here (daemon mode logs nowhere else)")

    def run(args: argparse.Namespace) -> int:
        from ossmount.mount import mount_command  # noqa: PLC0415 (lazy: keeps cp light)

        return mount_command(args)

    parser.set_defaults(run=run)


def _add_unmount_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("unmount", aliases=["umount"], help="unmount a mounted bucket")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")

    def run(args: argparse.Namespace) -> int:
        from ossmount.mount import unmount_command  # noqa: PLC0415

        return unmount_command(args)

    parser.set_defaults(run=run)


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="start the bundled server with a sample bucket and mount it until Ctrl-C"
    )
    parser.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    parser.add_argument("--data-dir", help="server root (default: a temporary directory)")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options",
    )

    def run(args: argparse.Namespace) -> int:
        from ossmount.demo import demo_command  # noqa: PLC0415

        return demo_command(args)

    parser.set_defaults(run=run)


def _add_cp_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ossmount.cp import add_arguments  # noqa: PLC0415 (trio/httpx/tqdm, no pyfuse3)

    parser = sub.add_parser(
        "cp",
        help="copy files between OSS and the local disk, resumably",
        description="Copy SRC to DST; one is oss://bucket/key, the other a local path. "
        "Run the same command again after an interruption to resume. See docs/client.md.",
    )
    add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        from ossmount.cp import cp_command  # noqa: PLC0415

        return cp_command(args)

    parser.set_defaults(run=run)


def _add_recover_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "recover",
        help="finish uploads a crashed mount left, without mounting",
        description="Finish every upload of BUCKET[:/PREFIX] that a crash interrupted after "
        "close() or fsync() began (resuming multipart uploads), discard writes that were never "
        "closed (the old objects stay), abort multipart uploads no longer needed, and report.",
    )
    parser.add_argument("bucket", metavar="BUCKET[:/PREFIX]")
    parser.add_argument("--endpoint", required=True, help="OSS endpoint URL")
    parser.add_argument("--region", help="region for V4 signing, e.g. cn-hangzhou")
    parser.add_argument(
        "--passwd-file", help="ossfs-style AK:SK file (default: env, ~/.passwd-ossfs)"
    )
    parser.add_argument(
        "--state-dir",
        help="the mount's state directory (default: ~/.cache/ossmount/<bucket>-<hash>)",
    )

    def run(args: argparse.Namespace) -> int:
        # Lazy imports: keep `ossmount cp` and `--help` light.
        from pathlib import Path  # noqa: PLC0415

        import trio  # noqa: PLC0415

        from ossmount.config import ConfigError, parse_bucket_spec  # noqa: PLC0415
        from ossmount.credentials import CredentialsError, resolve_credentials  # noqa: PLC0415
        from ossmount.fs.writer import (  # noqa: PLC0415
            RecoveryReport,
            default_state_dir,
            recover_state_dir,
        )
        from ossmount.oss.client import OssClient  # noqa: PLC0415
        from ossmount.oss.errors import OssError  # noqa: PLC0415

        try:
            bucket, prefix = parse_bucket_spec(args.bucket)
            passwd_file = Path(args.passwd_file) if args.passwd_file else None
            credentials = resolve_credentials(bucket, passwd_file=passwd_file)
        except (ConfigError, CredentialsError) as exc:
            print(f"ossmount recover: {exc}", file=sys.stderr)
            return 2
        state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(bucket, prefix)
        if not (state_dir / "journal.sqlite").exists():
            print(f"nothing to recover: no journal in {state_dir}")
            return 0

        async def recover() -> RecoveryReport:
            async with OssClient(args.endpoint, credentials, region=args.region) as client:
                return await recover_state_dir(client, bucket, prefix, state_dir)

        try:
            report = trio.run(recover)
        except (OSError, OssError) as exc:
            print(f"ossmount recover: {exc}", file=sys.stderr)
            return 1
        for line in report.lines() or ["nothing to recover"]:
            print(line)
        return 0 if report.ok else 1

    parser.set_defaults(run=run)


def _helper_syntax(argv: list[str]) -> list[str]:
    # mount(8) / mount.fuse3 and fstab run "ossmount BUCKET MOUNTPOINT -o OPTS": a first
    # argument that is no subcommand means "mount".
    commands: set[str] = set()
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands.update(action.choices)
    helper_form = len(argv) >= 2 and not argv[0].startswith("-") and not argv[1].startswith("-")
    if helper_form and argv[0] not in commands:
        return ["mount", *argv]
    return argv


def _not_built(name: str) -> int:
    print(f"ossmount: '{name}' is not built yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ossmount", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_server_parser(sub)
    _add_mount_parser(sub)
    _add_unmount_parser(sub)
    _add_demo_parser(sub)
    _add_cp_parser(sub)
    _add_recover_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_helper_syntax(list(sys.argv[1:] if argv is None else argv)))
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
