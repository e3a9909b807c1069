"""The `ossmount` command: one entry point, one subcommand per job.

Each subcommand's arguments are declared by an `_add_<name>_parser` function here; the work is
done by the module that owns it (imported lazily, so `ossmount cp` does not load pyfuse3).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ossmount import __version__

Runner = Callable[[argparse.Namespace], int]


class _DefaultsShown(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, [], argparse.SUPPRESS)
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def docs_page(name: str) -> str:
    """Where the documentation page ``name`` is: its absolute path when ossmount runs from a
    checkout (as scripts/setup.sh installs it), else its place in the source tree."""
    page = Path(__file__).resolve().parent.parent / "docs" / name
    return str(page) if page.is_file() else f"docs/{name} in the ossmount source tree"


def _runs(module: str, function: str) -> Runner:
    """The subcommand's work: ``module.function(args)``, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        command: Runner = getattr(importlib.import_module(module), function)
        return command(args)

    return run


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help=f"mount options (ossfs names accepted; see {docs_page('configuration.md')})",
    )


def _rate(text: str) -> float:
    from ossmount.server.command import parse_rate  # noqa: PLC0415 (trio only when used)

    return parse_rate(text)


def _add_server_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "server",
        help="run the bundled OSS-compatible server",
        description="Serve the OSS REST API from a directory; prints the endpoint once it "
        "answers and serves until SIGINT/SIGTERM. Credentials default to the environment "
        f"(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET). See {docs_page('server.md')}.",
        formatter_class=_DefaultsShown,
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
    tls = parser.add_argument_group("https")
    tls.add_argument("--tls-cert", metavar="FILE", help="serve https with this certificate chain")
    tls.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    tls.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve https with a self-signed certificate written under --root (its path is "
        "printed beside the endpoint)",
    )
    faults = parser.add_argument_group("fault injection (for tests and benchmarks)")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    faults.add_argument(
        "--bandwidth",
        type=_rate,
        default=0.0,
        metavar="BYTES_PER_S",
        help="cap shared by all connections, e.g. 1000000 or 1GB/s (0: none)",
    )
    faults.add_argument(
        "--conn-bandwidth",
        type=_rate,
        default=0.0,
        metavar="BYTES_PER_S",
        help="cap on each connection, e.g. 100MB/s (0: none)",
    )
    faults.add_argument(
        "--error-rate", type=float, default=0.0, help="share of 500/503 SlowDown answers"
    )
    faults.add_argument(
        "--reset-rate", type=float, default=0.0, help="share of bodies cut by a reset"
    )
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault choices")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")

    parser.set_defaults(run=_runs("ossmount.server.command", "run_server_command"))


def _add_mount_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "mount",
        help="mount a bucket (or a prefix of one) at a directory",
        description="Mount BUCKET[:/PREFIX] at MOUNTPOINT. Without -f, returns once the mount "
        f"answers. Options: {docs_page('configuration.md')}.",
    )
    parser.add_argument("bucket", metavar="BUCKET[:/PREFIX]")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--endpoint", help="OSS endpoint URL (or -o url=...)")
    parser.add_argument("--region", help="region for V4 signing, e.g. cn-hangzhou")
    _add_mount_options(parser)
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging (implies -f)")
    parser.add_argument("--log-file", help="write the log here (daemon mode logs nowhere else)")

    parser.set_defaults(run=_runs("ossmount.mount", "mount_command"))


def _add_unmount_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("unmount", aliases=["umount"], help="unmount a mounted bucket")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")

    parser.set_defaults(run=_runs("ossmount.mount", "unmount_command"))


def _add_status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "status",
        help="show what a running mount is doing, and which data is not in OSS yet",
        description="Ask the mount at MOUNTPOINT (over its private socket in the state "
        "directory) for its requests, traffic, caches, memory, and the files whose data is "
        "not in OSS yet, with the last error of each failed upload. "
        f"See {docs_page('configuration.md')}.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument(
        "--socket", help="the mount's status socket (default: found from MOUNTPOINT)"
    )

    parser.set_defaults(run=_runs("ossmount.status", "status_command"))


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="start the bundled server with a sample bucket and mount it until Ctrl-C"
    )
    parser.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    parser.add_argument("--data-dir", help="server root (default: a temporary directory)")
    _add_mount_options(parser)

    parser.set_defaults(run=_runs("ossmount.demo", "demo_command"))


def _add_cp_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ossmount.cp import add_arguments  # noqa: PLC0415 (trio/httpx/tqdm, no pyfuse3)

    parser = sub.add_parser(
        "cp",
        help="copy files between OSS and the local disk, resumably",
        description="Copy SRC to DST; one is oss://bucket/key, the other a local path. "
        "Run the same command again after an interruption to resume. "
        f"See {docs_page('client.md')}.",
    )
    add_arguments(parser)

    parser.set_defaults(run=_runs("ossmount.cp", "cp_command"))


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
        "--ca-file", metavar="PATH", help="trust these certificates (PEM) for an https endpoint"
    )
    parser.add_argument(
        "--passwd-file", help="ossfs-style AK:SK file (default: env, ~/.passwd-ossfs)"
    )
    parser.add_argument(
        "--state-dir",
        help="the mount's state directory (default: ~/.cache/ossmount/<bucket>-<hash>)",
    )

    parser.set_defaults(run=_runs("ossmount.recover", "recover_command"))


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ossmount", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ossmount {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_server_parser(sub)
    _add_mount_parser(sub)
    _add_unmount_parser(sub)
    _add_status_parser(sub)
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
