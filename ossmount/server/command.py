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
    if args.tls_self_signed and (args.tls_cert or args.tls_key):
        raise ValueError("give --tls-self-signed or --tls-cert/--tls-key, not both")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("give both --tls-cert and --tls-key")
    for name, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise ValueError(f"{name} {path}: no such file")
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
        conn_bandwidth_bytes_per_s=args.conn_bandwidth,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        fault_seed=args.fault_seed,
        direct_io=args.direct_io,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_self_signed=args.tls_self_signed,
    )


_RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_rate(text: str) -> float:
    """Bytes per second from ``12500000``, ``100MB/s``, ``100M``, ``1.5GiB/s`` (decimal units
    for k/M/G, binary for Ki/Mi/Gi); argparse turns the ValueError into a usage error."""
    value = text.strip().lower().removesuffix("/s").removesuffix("b")
    number = value.rstrip("kmgi")
    unit = value[len(number) :]
    if unit not in _RATE_UNITS:
        raise ValueError(f"bad rate {text!r}")
    try:
        rate = float(number) * _RATE_UNITS[unit]
    except ValueError:
        raise ValueError(f"bad rate {text!r}") from None
    if rate < 0:
        raise ValueError(f"bad rate {text!r}")
    return rate


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
