"""The server's https: the command's TLS options, the answer to the other protocol on each port,
and the per-connection bandwidth cap (--conn-bandwidth) under the shared one."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import oss2
import pytest
import trio
import trio.testing

from ossmount.server import open_server, run_server_in_thread
from ossmount.server.command import parse_rate
from ossmount.server.http import Throttle
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK, server_config, trust_server

SERVER_ENV = {**os.environ, "OSS_ACCESS_KEY_ID": TEST_AK, "OSS_ACCESS_KEY_SECRET": TEST_SK}


def server_command(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ossmount.cli", "server", "--root", str(root), "--port", "0",
            "--bucket", TEST_BUCKET, *extra]  # fmt: skip


def start_server(root: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """The server process and the line it printed."""
    process = subprocess.Popen(
        server_command(root, *extra), stdout=subprocess.PIPE, text=True, env=SERVER_ENV
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def oss2_over_https(endpoint: str) -> oss2.Bucket:
    return oss2.Bucket(oss2.AuthV4(TEST_AK, TEST_SK), endpoint, TEST_BUCKET, region=TEST_REGION)


def test_self_signed_prints_the_certificate_beside_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    process, line = start_server(root, "--tls-self-signed")
    try:
        endpoint, ca = line.split(" ")
        assert endpoint.startswith("https://127.0.0.1:"), line
        ca_file = Path(ca.removeprefix("ca_file="))
        assert ca_file == root / "tls" / "cert.pem"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        bucket = oss2_over_https(endpoint)
        bucket.put_object("k", b"over tls")
        assert bucket.get_object("k").read() == b"over tls"
        first_certificate = ca_file.read_bytes()
    finally:
        stop(process)
    # A restart keeps the certificate that clients were told to trust.
    process, line = start_server(root, "--tls-self-signed")
    try:
        assert line.endswith(f" ca_file={ca_file}")
        assert ca_file.read_bytes() == first_certificate
        assert oss2_over_https(line.split(" ")[0]).get_object("k").read() == b"over tls"
    finally:
        stop(process)


def test_given_certificate_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pair a first server made, served by a second one through --tls-cert/--tls-key.
    process, line = start_server(tmp_path / "first", "--tls-self-signed")
    stop(process)
    tls = tmp_path / "first" / "tls"
    process, line = start_server(
        tmp_path / "second", "--tls-cert", str(tls / "cert.pem"), "--tls-key", str(tls / "key.pem")
    )
    try:
        endpoint, ca = line.split(" ")
        assert ca == f"ca_file={tls / 'cert.pem'}"
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls / "cert.pem"))
        bucket = oss2_over_https(endpoint)
        bucket.put_object("k", b"x" * 100_000)
        assert bucket.get_object("k", byte_range=(10, 19)).read() == b"x" * 10
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tls-cert", "/nonexistent.pem"], "give both --tls-cert and --tls-key"),
        (
            ["--tls-cert", "/nonexistent.pem", "--tls-key", "/k"],
            "--tls-cert /nonexistent.pem: no such file",
        ),
        (["--tls-self-signed", "--tls-key", "/k"], "not both"),
        (["--conn-bandwidth", "fast"], "invalid _rate value"),
    ],
)
def test_bad_tls_and_bandwidth_arguments(tmp_path: Path, extra: list[str], message: str) -> None:
    result = subprocess.run(
        server_command(tmp_path, *extra), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_file_that_is_no_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    result = subprocess.run(
        server_command(tmp_path / "root", "--tls-cert", str(junk), "--tls-key", str(junk)),
        capture_output=True, text=True, timeout=60, check=False, env=SERVER_ENV,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot load {junk} with key {junk}" in result.stderr, result.stderr


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("oss_server", ["https"], indirect=True)
def test_plain_http_on_the_tls_port_is_answered_in_plain_text(oss_server: object) -> None:
    port = oss_server.port  # type: ignore[attr-defined]
    answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"\r\n\r\nThe plain HTTP request was sent to HTTPS port\n")


@pytest.mark.parametrize("oss_server", ["http"], indirect=True)
def test_tls_on_the_plain_port_is_refused_at_once(oss_server: object) -> None:
    port = oss_server.port  # type: ignore[attr-defined]
    context = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as sock,
        pytest.raises(ssl.SSLError, match=r"WRONG_VERSION_NUMBER|wrong version number"),
    ):
        context.wrap_socket(sock, server_hostname="127.0.0.1")


def test_rates_with_units() -> None:
    assert parse_rate("12500000") == 12_500_000
    assert parse_rate("100MB/s") == 100_000_000
    assert parse_rate("100M") == 100_000_000
    assert parse_rate("1.5GiB/s") == 1.5 * 2**30
    assert parse_rate("0") == 0
    for bad in ("fast", "-1", "10TB"):
        with pytest.raises(ValueError, match="bad rate"):
            parse_rate(bad)


async def test_connection_caps_under_the_shared_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Virtual time (trio's MockClock jumps over every sleep): two connections capped at 100 B/s
    each under a shared 150 B/s move 300 bytes each in 4 s (the shared cap binds); alone, one
    moves 300 bytes in 3 s (its own cap binds)."""
    shared = Throttle(lambda: 150.0)

    async def move(throttle: Throttle, total: int, done: list[float]) -> None:
        for _ in range(total // 10):
            await throttle.take(10)
        done.append(trio.current_time())

    start = trio.current_time()
    done: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(move, Throttle(lambda: 100.0, shared), 300, done)
    # 600 bytes at 150 B/s: the last chunk ends at 4 s, the other connection's one chunk earlier.
    assert round(max(done) - start, 6) == 4.0
    assert 3.9 < min(done) - start < 4.0

    start = trio.current_time()
    done.clear()
    await move(Throttle(lambda: 100.0, shared), 300, done)
    assert round(done[0] - start, 6) == 3.0


def _tls_get_without_reading(endpoint_port: int, ca_file: Path, key: str) -> ssl.SSLSocket:
    """A TLS connection that sent an anonymous GET of `key` and reads nothing of the answer."""
    context = ssl.create_default_context(cafile=str(ca_file))
    raw = socket.create_connection(("127.0.0.1", endpoint_port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(f"GET /{TEST_BUCKET}/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def test_tls_body_sender_stops_when_the_server_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file body over TLS is sent by a worker thread. With the peer reading nothing, that
    thread waits for the socket; stopping the server must stop it at once, not after the
    120 s a stalled peer is given."""
    config = server_config(tmp_path / "root", tls_self_signed=True)
    with trio.fail_after(60):
        async with open_server(config) as server:
            assert server.ca_file is not None
            server.store.set_bucket_acl(TEST_BUCKET, "public-read")
            trust_server(monkeypatch, server)
            await trio.to_thread.run_sync(
                oss2_over_https(server.endpoint).put_object,
                "big",
                os.urandom(8 << 20),
            )
            sock = await trio.to_thread.run_sync(
                _tls_get_without_reading, server.port, server.ca_file, "big"
            )
            await trio.sleep(0.5)  # the sender fills the socket buffers and waits
        sock.close()


def test_tls_body_to_a_peer_that_goes_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that resets the connection in the middle of a TLS body ends that connection
    only: the next client is served."""
    config = server_config(tmp_path / "root", tls_self_signed=True)
    with run_server_in_thread(config) as server:
        assert server.ca_file is not None
        server.store.set_bucket_acl(TEST_BUCKET, "public-read")
        trust_server(monkeypatch, server)
        bucket = oss2_over_https(server.endpoint)
        data = os.urandom(8 << 20)
        bucket.put_object("big", data)
        sock = _tls_get_without_reading(server.port, server.ca_file, "big")
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert bucket.get_object("big").read() == data
        assert bucket.get_object("big", byte_range=(5, 1 << 20)).read() == data[5 : (1 << 20) + 1]
