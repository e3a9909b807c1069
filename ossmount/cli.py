"""The `ossmount` command: one entry point, one subcommand per job.

Each subcommand's arguments are declared by an `_add_<name>_parser` function here; the work is
done by the module that owns it (imported lazily, so `ossmount cp` does not load pyfuse3).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_server_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("server", help="run the bundled OSS-compatible server")
    # Owned by ossmount/server (issue 2): arguments and run function.
    parser.set_defaults(run=lambda args: _not_built("server"))


def _not_built(name: str) -> int:
    print(f"ossmount: '{name}' is not built yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ossmount", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_server_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
