"""Benchmark the bundled server: single-stream GET and PUT of a large object with curl, and the
time to serve a ListObjectsV2 page of 1,000 keys out of 100,000.

    .venv/bin/python scripts/bench_server.py [--size-mib 1024] [--keys 100000] [--runs 3]
                                             [--direct-io]

The server runs as its own process (`ossmount server`); curl uses presigned V1 URLs. Figures
are the best of --runs; "server CPU" is the CPU time (user + system) the server process spent
on that best run, a figure that depends less on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import httpx

from ossmount.oss.signer import Credentials, OssV4Auth, presign_v1
from ossmount.server.store import ObjectRecord, Store

AK, SK, BUCKET, REGION = "bench-ak", "bench-secret", "bench", "cn-hangzhou"
CREDENTIALS = Credentials(AK, SK)


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


def start_server(root: Path, direct_io: bool) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "ossmount.cli", "server", "--root", str(root)]
    command += ["--port", "0", "--access-key-id", AK, "--access-key-secret", SK]
    command += ["--bucket", BUCKET, *(["--direct-io"] if direct_io else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    endpoint = process.stdout.readline().strip()
    if not endpoint.startswith("http://"):
        process.kill()
        raise SystemExit("server did not start")
    return process, endpoint


def url(endpoint: str, method: str, key: str) -> str:
    return presign_v1(
        CREDENTIALS, method, f"{endpoint}/{BUCKET}/{key}", BUCKET, key, int(time.time()) + 3600
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def curl_run(server_pid: int, args: list[str]) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one curl transfer."""
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", *args], check=True)
    return time.perf_counter() - started, cpu_seconds(server_pid) - cpu_before


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", type=int, default=128, help="parts of the multipart timing")
    parser.add_argument("--direct-io", action="store_true", help="server writes with O_DIRECT")
    options = parser.parse_args()
    size = options.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
        root = Path(scratch) / "root"
        source = Path(scratch) / "source.bin"
        with source.open("wb") as handle:
            block = os.urandom(16 << 20)
            for _ in range(size // len(block)):
                handle.write(block)
        started = time.perf_counter()
        populate_index(root, options.keys)
        print(f"indexed {options.keys} keys in {time.perf_counter() - started:.1f} s")
        process, endpoint = start_server(root, options.direct_io)
        try:
            put_s, put_cpu = min(
                curl_run(
                    process.pid,
                    [
                        "-T",
                        str(source),
                        "-H",
                        "Content-Type:",
                        "-H",
                        "Expect:",
                        url(endpoint, "PUT", "big.bin"),
                    ],
                )
                for _ in range(options.runs)
            )
            get_s, get_cpu = min(
                curl_run(process.pid, [url(endpoint, "GET", "big.bin")])
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
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
