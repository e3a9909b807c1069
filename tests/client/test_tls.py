"""https: certificates always verified, the remedy named when they are not trusted, a wrong
scheme told at once, and proxies from the environment (through a CONNECT proxy on loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ossmount.oss.bulk import BulkGetter
from ossmount.oss.client import OssClient
from ossmount.oss.errors import TlsError, is_transient
from ossmount.oss.network import proxy_for
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials
from ossmount.server import RunningServer
from tests.conftest import TEST_AK, TEST_BUCKET, TEST_REGION, TEST_SK
from tests.proxy import LoopbackProxy

CREDENTIALS = Credentials(TEST_AK, TEST_SK)
# Retrying a TLS failure would take minutes under this policy: the tests see it is not retried.
SLOW_RETRY = RetryPolicy(max_attempts=5, base_delay_s=60, max_delay_s=60, deadline_s=600)
https_only = pytest.mark.parametrize("oss_server", ["https"], indirect=True)


def untrusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the trust tests/conftest.py gives every client of an https server."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def client_of(server: RunningServer, endpoint: str | None = None, **options: object) -> OssClient:
    return OssClient(
        endpoint or server.endpoint,
        CREDENTIALS,
        region=TEST_REGION,
        retry=SLOW_RETRY,
        **options,  # type: ignore[arg-type]
    )


async def round_trip(client: OssClient) -> None:
    """A PUT, GET, ranged GET, bulk GET (the fast transport), HEAD, listing and DELETE."""
    data = os.urandom(300_000)
    await client.put_object(TEST_BUCKET, "tls/object", data)
    assert await client.get_object(TEST_BUCKET, "tls/object") == data
    assert await client.get_object(TEST_BUCKET, "tls/object", byte_range=(5, 9)) == data[5:10]
    async with BulkGetter(client).open_range(
        TEST_BUCKET, "tls/object", 0, len(data) - 1, if_match=None, piece_size=65536
    ) as body:
        assert b"".join([piece async for piece in body]) == data
    assert (await client.head_object(TEST_BUCKET, "tls/object")).size == len(data)
    page = await client.list_objects_page(TEST_BUCKET, prefix="tls/")
    assert [summary.key for summary in page.objects] == ["tls/object"]
    await client.delete_object(TEST_BUCKET, "tls/object")


@https_only
async def test_untrusted_certificate_fails_at_once_naming_the_remedy(
    oss_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    untrusting(monkeypatch)
    async with client_of(oss_server) as client:

        async def bulk_get() -> None:
            async with BulkGetter(client).open_range(
                TEST_BUCKET, "any", 0, 9, if_match=None, piece_size=65536
            ):
                pass

        # httpx, the fast transport's HEADs and its bulk GETs alike.
        for request in (
            client.head_object(TEST_BUCKET, "any"),
            client.get_object(TEST_BUCKET, "any"),
            client.list_objects_page(TEST_BUCKET),
            bulk_get(),
        ):
            with pytest.raises(TlsError) as caught:
                await request
            assert not is_transient(caught.value)
            assert caught.value.message.endswith(
                ": certificate verify failed (self-signed certificate): pass -o "
                "ssl_ca_file=PATH (ossmount cp: --ca-file PATH) or set SSL_CERT_FILE"
            ), caught.value.message


@https_only
async def test_ca_file_is_trusted(
    oss_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    untrusting(monkeypatch)
    async with client_of(oss_server, ca_file=oss_server.ca_file) as client:
        await round_trip(client)


@https_only
async def test_ssl_cert_file_and_dir_are_honoured(
    oss_server: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    untrusting(monkeypatch)
    monkeypatch.setenv("SSL_CERT_FILE", str(oss_server.ca_file))
    async with client_of(oss_server) as client:
        await round_trip(client)
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to name the certificate for SSL_CERT_DIR")
    assert oss_server.ca_file is not None
    subject_hash = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(oss_server.ca_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    certificates = tmp_path / "certs"
    certificates.mkdir()
    shutil.copy(oss_server.ca_file, certificates / f"{subject_hash}.0")
    untrusting(monkeypatch)
    monkeypatch.setenv("SSL_CERT_DIR", str(certificates))
    async with client_of(oss_server) as client:
        await round_trip(client)


def test_unusable_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        OssClient("https://127.0.0.1:1", CREDENTIALS, ca_file=tmp_path / "missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no certificate in it"):
        OssClient("https://127.0.0.1:1", CREDENTIALS, ca_file=empty)


async def test_wrong_scheme_fails_at_once_saying_so(oss_server: RunningServer) -> None:
    scheme, address = oss_server.endpoint.split("://")
    wrong = f"{'http' if scheme == 'https' else 'https'}://{address}"
    async with client_of(oss_server, wrong) as client:
        with pytest.raises(TlsError) as caught:
            await client.list_objects_page(TEST_BUCKET)
    assert not is_transient(caught.value)
    if scheme == "https":
        assert caught.value.message == (
            "the endpoint's port speaks https, not http: use an https:// endpoint"
        )
    else:
        assert caught.value.message.endswith(
            ": the endpoint does not speak TLS (wrong version number): use an http:// "
            "endpoint, or the server's https port"
        ), caught.value.message


async def test_requests_go_through_the_proxy_of_their_scheme(
    oss_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheme, address = oss_server.endpoint.split("://")
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with LoopbackProxy() as proxy:
        # The other scheme's proxy is not used.
        monkeypatch.setenv(
            "HTTP_PROXY" if scheme == "https" else "HTTPS_PROXY", "http://127.0.0.1:1"
        )
        monkeypatch.setenv(f"{scheme.upper()}_PROXY", proxy.url)
        async with client_of(oss_server) as client:
            assert client.proxy is not None
            await round_trip(client)
        assert proxy.requests
        expected_method = {"CONNECT"} if scheme == "https" else {"GET", "PUT", "HEAD", "DELETE"}
        assert {address for _, address in proxy.requests} == {address}
        assert {method for method, _ in proxy.requests} <= expected_method
        served = len(proxy.requests)

        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with client_of(oss_server) as client:
            assert client.proxy is None
            await round_trip(client)
        assert len(proxy.requests) == served


def test_proxy_choice_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://oss-cn-hangzhou.aliyuncs.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    chosen = proxy_for("https://oss-cn-hangzhou.aliyuncs.com")
    assert chosen is not None and (chosen.host, chosen.port) == ("proxy.corp", 3128)
    assert proxy_for("http://oss-cn-hangzhou.aliyuncs.com") is None
    for no_proxy in ("*", "aliyuncs.com", ".aliyuncs.com", "oss-cn-hangzhou.aliyuncs.com:443"):
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert proxy_for("https://oss-cn-hangzhou.aliyuncs.com") is None, no_proxy
    monkeypatch.setenv("NO_PROXY", "example.com,oss-cn-hangzhou.aliyuncs.com:80,10.0.0.0/8")
    assert proxy_for("https://oss-cn-hangzhou.aliyuncs.com") is not None
    assert proxy_for("https://10.1.2.3:9000") is None
    monkeypatch.setenv("https_proxy", "https://proxy.corp:3128")
    with pytest.raises(ValueError, match="only http:// proxies"):
        proxy_for("https://oss-cn-hangzhou.aliyuncs.com")
