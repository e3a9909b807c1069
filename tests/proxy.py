"""A small HTTP proxy on loopback for tests: CONNECT tunnels (https) and absolute-form requests
(http), each connection piped to its target as it is. It records what it was asked for."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from urllib.parse import urlsplit


class LoopbackProxy:
    """``with LoopbackProxy() as proxy``: listens on 127.0.0.1; ``proxy.url`` for HTTPS_PROXY
    or HTTP_PROXY; ``proxy.requests``: (method, "host:port") of every connection it served."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> LoopbackProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                address = target
            else:
                url = urlsplit(target)
                address = f"{url.hostname}:{url.port or 80}"
            with self._lock:
                self.requests.append((method, address))
            host, _, port = address.rpartition(":")
            try:
                upstream = socket.create_connection((host, int(port)))
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with upstream:
                if method == "CONNECT":
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    upstream.sendall(head)  # the bundled server takes absolute-form targets
                forward = threading.Thread(target=_pipe, args=(client, upstream), daemon=True)
                forward.start()
                _pipe(upstream, client)
                forward.join()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(1 << 20):
            sink.sendall(data)
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
