"""Shared fixtures for every layer: a real ossmount server on loopback, and oss2 against it.

- TEST_AK / TEST_SK / TEST_BUCKET / TEST_REGION: the credentials and bucket of `oss_server`.
- `oss_server` (function scope): a fresh server (root in tmp_path, TEST_BUCKET created), run in
  a thread of its own, so it serves sync (oss2) and async (trio) tests alike -> RunningServer
  (.endpoint, .faults, .stats, .port, .root).
- `oss2_bucket`: an oss2.Bucket for TEST_BUCKET on that server, V4 auth, region TEST_REGION.
- `oss2_bucket_v1`: the same with V1 auth (oss2.Auth).

Both schemes: `oss_server` serves plain http unless parametrized with "https" (indirectly:
`pytest.mark.parametrize("oss_server", SCHEMES, indirect=True)`, or `over_both_schemes()` from
a directory's `pytest_generate_tests`). An https server has a self-signed certificate, and the
test's environment trusts it through SSL_CERT_FILE (ossmount, httpx) and REQUESTS_CA_BUNDLE
(oss2), so every client a test builds verifies it; tests of `-o ssl_ca_file` and of failures
pass or remove those themselves.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest

from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer, ServerConfig, run_server_in_thread

TEST_AK = "test-ak"
TEST_SK = "test-secret"
TEST_BUCKET = "test-bucket"
TEST_REGION = "cn-hangzhou"

# Held (shared lock) in this run's pytest-N directory for the whole session, so that
# scripts/clear_test_mounts.py (run by scripts/test.sh) knows this run's mounts are still in use.
SUITE_LOCK_NAME = "ossmount-suite.lock"
_suite_lock_fd: int | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _suite_lock_fd  # noqa: PLW0603 (one lock for the life of the process)
    run_dir = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    _suite_lock_fd = os.open(run_dir / SUITE_LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(_suite_lock_fd, fcntl.LOCK_SH)


def server_config(root: Path, **overrides: object) -> ServerConfig:
    """The configuration `oss_server` uses, for tests that start servers of their own."""
    config = ServerConfig(
        root=root,
        credentials=[Credentials(TEST_AK, TEST_SK)],
        buckets=[TEST_BUCKET],
        region=TEST_REGION,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


SCHEMES = ("http", "https")


def over_both_schemes(metafunc: pytest.Metafunc, plain_only: frozenset[str] = frozenset()) -> None:
    """For a directory's ``pytest_generate_tests``: every test of it that uses `oss_server`
    runs once over http and once over https, except those of the modules named in
    ``plain_only`` (tests of plain-HTTP framing on raw sockets)."""
    if "oss_server" not in metafunc.fixturenames or metafunc.module.__name__ in plain_only:
        return
    if any(
        marker.args[0] == "oss_server" for marker in metafunc.definition.iter_markers("parametrize")
    ):
        return
    metafunc.parametrize("oss_server", SCHEMES, indirect=True)


def trust_server(monkeypatch: pytest.MonkeyPatch, server: RunningServer) -> None:
    """Make every client of the test process trust ``server``'s certificate (if it has one)."""
    if server.ca_file is not None:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))


@pytest.fixture
def oss_server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    scheme = getattr(request, "param", "http")
    config = server_config(tmp_path / "oss-server-root", tls_self_signed=scheme == "https")
    with run_server_in_thread(config) as server:
        trust_server(monkeypatch, server)
        yield server


@pytest.fixture
def oss2_bucket(oss_server: RunningServer) -> oss2.Bucket:
    auth = oss2.AuthV4(TEST_AK, TEST_SK)
    return oss2.Bucket(auth, oss_server.endpoint, TEST_BUCKET, region=TEST_REGION)


@pytest.fixture
def oss2_bucket_v1(oss_server: RunningServer) -> oss2.Bucket:
    return oss2.Bucket(oss2.Auth(TEST_AK, TEST_SK), oss_server.endpoint, TEST_BUCKET)
