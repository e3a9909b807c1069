"""The bundled OSS-compatible server (``ossmount server``): see docs/server.md."""

from ossmount.server.app import Stats
from ossmount.server.faults import Faults
from ossmount.server.runner import (
    RunningServer,
    ServerConfig,
    open_server,
    run_server_in_thread,
    serve_until_signalled,
)

__all__ = [
    "Faults",
    "RunningServer",
    "ServerConfig",
    "Stats",
    "open_server",
    "run_server_in_thread",
    "serve_until_signalled",
]
