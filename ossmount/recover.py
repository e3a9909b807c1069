"""`ossmount recover`: finish what a crashed mount left, without mounting.

The work is the write path's own recovery (``fs/writer.py``: ``recover_state_dir``), run against
the bucket with the mount's credentials and state directory; this module only wires it and
prints its report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from ossmount.config import ConfigError, parse_bucket_spec
from ossmount.credentials import CredentialsError, resolve_credentials
from ossmount.fs.writer import RecoveryReport, default_state_dir, recover_state_dir
from ossmount.oss.client import OssClient
from ossmount.oss.errors import OssError


def recover_command(args: argparse.Namespace) -> int:
    """Exit 0 when every journalled upload was finished or rightly discarded, 1 otherwise,
    2 for a wrong argument."""
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
        async with OssClient(
            args.endpoint, credentials, region=args.region, ca_file=args.ca_file
        ) as client:
            return await recover_state_dir(client, bucket, prefix, state_dir)

    try:
        report = trio.run(recover)
    except (OSError, OssError, ValueError) as exc:
        print(f"ossmount recover: {exc}", file=sys.stderr)
        return 1
    for line in report.lines() or ["nothing to recover"]:
        print(line)
    return 0 if report.ok else 1
