"""How the client reaches its endpoint: which certificates it trusts, and which proxy it uses.

One place decides both, for every transport of the client (httpx, :mod:`ossmount.oss.http1`,
:mod:`ossmount.oss.bulk`).

Certificates are always verified. The trusted roots are ``ca_file`` when given (``-o
ssl_ca_file``, ``ossmount cp --ca-file``), which replaces the defaults as curl's ``--cacert``
does; otherwise OpenSSL's default locations, which honour ``SSL_CERT_FILE`` and
``SSL_CERT_DIR``, plus certifi's bundle when neither variable is set (so that a system
without a CA store still reaches OSS).

Proxies come from the environment as curl reads them: ``HTTPS_PROXY`` for https endpoints,
``HTTP_PROXY`` for http ones (either in lower case too), and ``NO_PROXY`` for hosts that are
reached directly (urllib's rules: comma-separated names, a name also covers its subdomains,
``*`` covers all).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies_environment

import certifi


def tls_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The client's TLS context (see the module's doc); ValueError if ``ca_file`` is unusable."""
    if ca_file is not None:
        path = Path(ca_file).expanduser()
        if not path.is_file():
            raise ValueError(f"CA file {ca_file}: no such file")
        try:
            return ssl.create_default_context(cafile=str(path))
        except ssl.SSLError as exc:
            raise ValueError(f"CA file {ca_file}: no certificate in it ({exc.reason})") from None
    context = ssl.create_default_context()
    if not os.environ.get("SSL_CERT_FILE") and not os.environ.get("SSL_CERT_DIR"):
        context.load_verify_locations(cafile=certifi.where())
    return context


@dataclass(frozen=True)
class Proxy:
    """An http proxy: https endpoints are tunnelled through CONNECT, http requests are sent
    to it in absolute form."""

    host: str
    port: int
    url: str


def proxy_for(endpoint: str) -> Proxy | None:
    """The proxy to reach ``endpoint`` (scheme://host[:port]) through, from the environment;
    None for a direct connection. ValueError for a proxy URL this client cannot use."""
    proxies = getproxies_environment()
    url = urlsplit(endpoint)
    proxy = proxies.get(url.scheme or "https")
    default_port = 443 if url.scheme == "https" else 80
    if not proxy or _bypassed(url.hostname or "", url.port or default_port, proxies.get("no", "")):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parsed = urlsplit(proxy)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError(f"proxy {proxy!r}: only http:// proxies are supported")
    if parsed.username or parsed.password:
        raise ValueError(f"proxy {parsed.hostname}: proxies that need a password are unsupported")
    return Proxy(parsed.hostname, parsed.port or 80, f"http://{parsed.netloc}")


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY names the host: ``*``, the host itself or a domain it is in (a leading
    dot optional), an address, or a network (``10.0.0.0/8``); ``:port`` narrows an entry."""
    host = host.lower()
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
        except ValueError:
            continue
    return False
