"""`ossmount server`: arguments (declared in ossmount/cli.py) to a running server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ossmount.oss.signer import Credentials
from ossmount.server.runner import ServerConfig, serve_until_signalled

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server configuration from the command line, with credentials from the environment
    where the options do not give them. Raises ValueError for unusable arguments."""
    access_key_id = args.access_key_id or os.environ.get("OSS_ACCESS_KEY_ID")
    access_key_secret = args.access_key_secret or os.environ.get("OSS_ACCESS_KEY_SECRET")
    if bool(access_key_id) != bool(access_key_secret):
        raise ValueError("give both an access key id and its secret, or neither")
    credentials = []
    if access_key_id and access_key_secret:
        credentials.append(Credentials(access_key_id, access_key_secret, args.security_token))
    for name, share in (("--error-rate", args.error_rate), ("--reset-rate", args.reset_rate)):
        if not 0 <= share <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
    if not 0 <= args.port <= 65535:
        raise ValueError("--port must be between 0 and 65535")
    return ServerConfig(
        root=Path(args.root),
        host=args.host,
        port=args.port,
        credentials=credentials,
        buckets=list(args.bucket),
        bucket_acl="public-read" if args.public_read else "private",
        region=args.region,
        latency_ms=args.latency_ms,
        bandwidth_bytes_per_s=args.bandwidth,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        fault_seed=args.fault_seed,
        direct_io=args.direct_io,
    )


def run_server_command(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"ossmount server: {exc}", file=sys.stderr)
        return 2
    if not config.credentials:
        log.warning("no credentials given: only anonymous requests to public buckets will work")
    return serve_until_signalled(config)
