"""Benchmark the bundled server: single-stream GET and PUT of a large object with curl, the
time to serve a ListObjectsV2 page of 1,000 keys out of 100,000, and the server's CPU per small
request (4 KiB GETs and PUTs on one kept-alive connection).

    .venv/bin/python scripts/bench_server.py [--size-mib 1024] [--keys 100000] [--runs 3]
                                             [--direct-io] [--small-requests 3000]
    .venv/bin/python scripts/bench_server.py --small-only [--small-requests 3000]
                                             [--compare-python OTHER-VENV/bin/python --runs 3]

The server runs as its own process (`ossmount server`); curl uses presigned V1 URLs. Figures
are the best of --runs; "server CPU" is the CPU time (user + system) the server process spent
on that best run, a figure that depends less on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
from benchlib import (
    BUCKET,
    CREDENTIALS,
    REGION,
    curl_timed,
    make_file,
    presigned_url,
    process_cpu_s,
    server_process,
)

from ossmount.oss.signer import OssV4Auth
from ossmount.server.store import ObjectRecord, Store


def populate_index(root: Path, keys: int) -> None:
    """Index `keys` empty objects straight into the store (the HTTP path is not under test)."""
    store = Store(root)
    store.create_bucket(BUCKET)
    now = time.time()
    store._db.execute("BEGIN")
    for number in range(keys):
        # 100 "directories" of keys/100 files each.
        key = f"dir{number % 100:03d}/file{number:07d}.dat"
        store.commit_object(
            ObjectRecord(
                BUCKET, key, None, 0, '"D41D8CD98F00B204E9800998ECF8427E"', 0, now, "Normal"
            )
        )
    store._db.execute("COMMIT")
    store.close()


def curl_run(server_pid: int, *args: str) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one curl transfer."""
    cpu_before = process_cpu_s(server_pid)
    seconds = curl_timed(*args)
    return seconds, process_cpu_s(server_pid) - cpu_before


def time_multipart_complete(client: httpx.Client, parts: int) -> float:
    """Upload `parts` parts of 1 MiB and time the CompleteMultipartUpload alone."""
    key = "multipart.bin"
    extensions = {"oss_bucket": BUCKET, "oss_key": key}
    path = f"/{BUCKET}/{key}"
    initiated = client.post(path, params={"uploads": ""}, extensions=extensions)
    initiated.raise_for_status()
    upload_id = ElementTree.fromstring(initiated.content).findtext("UploadId") or ""
    body = os.urandom(1 << 20)
    listing = []
    for number in range(1, parts + 1):
        response = client.put(
            path,
            params={"partNumber": str(number), "uploadId": upload_id},
            content=body,
            extensions=extensions,
        )
        response.raise_for_status()
        etag = response.headers["ETag"]
        listing.append(f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>")
    document = f"<CompleteMultipartUpload>{''.join(listing)}</CompleteMultipartUpload>"
    started = time.perf_counter()
    response = client.post(
        path, params={"uploadId": upload_id}, content=document.encode(), extensions=extensions
    )
    response.raise_for_status()
    return time.perf_counter() - started


def _send(connection: http.client.HTTPConnection, method: str, url: str, body: bytes) -> None:
    parts = urlsplit(url)
    connection.request(method, f"{parts.path}?{parts.query}", body=body or None)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {parts.path}: {response.status}")


def small_requests(endpoint: str, pid: int, count: int) -> None:
    """Server CPU per request of `count` 4 KiB PUTs (new keys) and `count` GETs of one 4 KiB
    object, each on one kept-alive connection: V1 presigned URLs made beforehand (http.client,
    so that the client costs little of the two cores), and V4 header signatures (httpx with
    ossmount's signer, as the mount sends them)."""
    body = os.urandom(4096)
    put_urls = [presigned_url(endpoint, "PUT", f"small/{number:06d}") for number in range(count)]
    get_url = presigned_url(endpoint, "GET", "small/000000")
    connection = http.client.HTTPConnection(urlsplit(endpoint).netloc)
    figures = []
    for label, method, urls, payload in (
        ("PUT 4 KiB, V1 presigned", "PUT", put_urls, body),
        ("GET 4 KiB, V1 presigned", "GET", [get_url] * count, b""),
    ):
        cpu_before = process_cpu_s(pid)
        started = time.perf_counter()
        for url in urls:
            _send(connection, method, url, payload)
        seconds = time.perf_counter() - started
        figures.append((label, process_cpu_s(pid) - cpu_before, seconds))
    connection.close()
    auth = OssV4Auth(CREDENTIALS, REGION)
    with httpx.Client(base_url=endpoint, auth=auth) as client:
        for label, method in (("PUT 4 KiB, V4 header", "PUT"), ("GET 4 KiB, V4 header", "GET")):
            cpu_before = process_cpu_s(pid)
            started = time.perf_counter()
            for number in range(count):
                key = f"small-v4/{number:06d}" if method == "PUT" else "small/000000"
                response = client.request(
                    method,
                    f"/{BUCKET}/{key}",
                    content=body if method == "PUT" else None,
                    extensions={"oss_bucket": BUCKET, "oss_key": key},
                )
                response.raise_for_status()
            seconds = time.perf_counter() - started
            figures.append((label, process_cpu_s(pid) - cpu_before, seconds))
    for label, cpu, seconds in figures:
        print(
            f"{label} x{count}: server CPU {cpu / count * 1000:.3f} ms per request "
            f"({cpu:.2f} s), {count / seconds:.0f} requests/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", type=int, default=128, help="parts of the multipart timing")
    parser.add_argument("--direct-io", action="store_true", help="server writes with O_DIRECT")
    parser.add_argument(
        "--small-requests", type=int, default=3000, help="small GETs and PUTs of each kind"
    )
    parser.add_argument(
        "--small-only", action="store_true", help="only the small requests (no big file)"
    )
    parser.add_argument(
        "--compare-python",
        metavar="PYTHON",
        help="with --small-only: also measure the server of another virtualenv's python "
        "(an older version installed there), alternating with this one",
    )
    options = parser.parse_args()
    if options.small_only:
        pythons = [sys.executable]
        if options.compare_python:
            pythons = [options.compare_python, sys.executable] * options.runs
        for python in pythons:
            print(f"server: {python}")
            with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
                options_io = ["--direct-io"] if options.direct_io else []
                root = Path(scratch) / "root"
                with server_process(root, *options_io, python=python) as server:
                    small_requests(server.endpoint, server.process.pid, options.small_requests)
        return
    size = options.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
        root = Path(scratch) / "root"
        source = Path(scratch) / "source.bin"
        make_file(source, size)
        started = time.perf_counter()
        populate_index(root, options.keys)
        print(f"indexed {options.keys} keys in {time.perf_counter() - started:.1f} s")
        with server_process(root, *(["--direct-io"] if options.direct_io else [])) as server:
            endpoint, pid = server.endpoint, server.process.pid
            put_url = presigned_url(endpoint, "PUT", "big.bin")
            put_s, put_cpu = min(
                curl_run(pid, "-T", str(source), "-H", "Content-Type:", "-H", "Expect:", put_url)
                for _ in range(options.runs)
            )
            get_s, get_cpu = min(
                curl_run(pid, presigned_url(endpoint, "GET", "big.bin"))
                for _ in range(options.runs)
            )
            for label, seconds, cpu in (("PUT", put_s, put_cpu), ("GET", get_s, get_cpu)):
                print(
                    f"{label} {options.size_mib} MiB: {size / seconds / 1e9:.2f} GB/s "
                    f"({seconds:.2f} s, server CPU {cpu:.2f} s)"
                )
            auth = OssV4Auth(CREDENTIALS, REGION)
            with httpx.Client(base_url=endpoint, auth=auth) as client:
                for label, params in (
                    ("first page", {"list-type": "2", "max-keys": "1000"}),
                    (
                        "middle page",
                        {
                            "list-type": "2",
                            "max-keys": "1000",
                            "start-after": "dir050/file0050000.dat",
                        },
                    ),
                    ("delimiter /", {"list-type": "2", "max-keys": "1000", "delimiter": "/"}),
                    (
                        "prefix+delimiter",
                        {
                            "list-type": "2",
                            "max-keys": "1000",
                            "prefix": "dir042/",
                            "delimiter": "/",
                        },
                    ),
                ):
                    timings = []
                    for _ in range(max(5, options.runs)):
                        started = time.perf_counter()
                        response = client.get(
                            f"/{BUCKET}/",
                            params=params,
                            extensions={"oss_bucket": BUCKET, "oss_key": ""},
                        )
                        response.raise_for_status()
                        timings.append(time.perf_counter() - started)
                    print(f"list {label} (1000 of {options.keys}): {min(timings) * 1000:.1f} ms")
                complete_s = time_multipart_complete(client, options.parts)
                print(
                    f"CompleteMultipartUpload of {options.parts} parts of 1 MiB: "
                    f"{complete_s * 1000:.1f} ms"
                )
            small_requests(endpoint, pid, options.small_requests)


if __name__ == "__main__":
    main()
