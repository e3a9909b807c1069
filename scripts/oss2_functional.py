"""Run oss2's own functional tests (from its source distribution) against `ossmount server`.

    .venv/bin/python scripts/oss2_functional.py [--auth v1|v4|both] [--cache DIR]
                                                [--timeout-s 300] [TEST ...] [-- PYTEST-ARGS]

Downloads the oss2 sdist with pip (once, into --cache, by default ~/.cache/ossmount-oss2),
starts `ossmount server` on a free port with a throw-away root, points oss2's tests at it
through the environment their tests/common.py reads (OSS_TEST_ENDPOINT, OSS_TEST_ACCESS_KEY_ID,
OSS_TEST_ACCESS_KEY_SECRET, OSS_TEST_REGION, OSS_TEST_AUTH_VERSION) and runs pytest on them,
once per signature version. TEST is a file or node id relative to the sdist's tests/ folder
(`test_object.py`, `test_object.py::TestObject::test_append`); by default the files that
exercise what the server implements (DEFAULT_TESTS). oss2's code is never copied into this
repository. Exit status: pytest's, the worst of the runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

OSS2_VERSION = "2.19.1"
AK = "oss2-functional-ak"
SK = "oss2-functional-secret"
REGION = "cn-hangzhou"
# The files of oss2's tests/ whose subject the server implements (objects, listings, multipart,
# signing, live channels, tagging). The rest test cloud services out of scope (KMS, image
# processing, lifecycle, replication, ...); test_upload.py and test_download.py need the `mock`
# package, which is not installed here.
DEFAULT_TESTS = (
    "test_object.py",
    "test_multipart.py",
    "test_list_objects_v2.py",
    "test_iterator.py",
    "test_chinese.py",
    "test_sign.py",
    "test_live_channel.py",
    "test_headers.py",
    "test_crc64_combine.py",
    "test_put_object_chunked.py",
    "test_api_base.py",
    "test_exception_ec.py",
)


def fetch_sdist(cache: Path) -> Path:
    """The unpacked oss2 sdist in `cache` (downloaded with pip the first time)."""
    unpacked = cache / f"oss2-{OSS2_VERSION}"
    if (unpacked / "tests" / "common.py").exists():
        return unpacked
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
         "--no-deps", "--dest", str(cache), f"oss2=={OSS2_VERSION}"],
        check=True,
    )  # fmt: skip
    with tarfile.open(cache / f"oss2-{OSS2_VERSION}.tar.gz") as archive:
        archive.extractall(cache, filter="data")
    return unpacked


def start_server(root: Path) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable, "-m", "ossmount.cli", "server", "--root", str(root), "--port", "0",
        "--access-key-id", AK, "--access-key-secret", SK, "--region", REGION,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    endpoint = process.stdout.readline().strip()
    if not endpoint.startswith("http://"):
        process.kill()
        raise SystemExit(f"the server did not start: {endpoint!r}")
    return process, endpoint


def run_tests(
    sdist: Path, auth: str, tests: list[str], pytest_args: list[str], timeout_s: int
) -> int:
    with tempfile.TemporaryDirectory(prefix="oss2-functional-") as scratch:
        process, endpoint = start_server(Path(scratch) / "root")
        try:
            env = dict(
                os.environ,
                OSS_TEST_ENDPOINT=endpoint,
                OSS_TEST_ACCESS_KEY_ID=AK,
                OSS_TEST_ACCESS_KEY_SECRET=SK,
                OSS_TEST_REGION=REGION,
                OSS_TEST_AUTH_VERSION=auth,
            )
            targets = [f"tests/{test}" for test in tests]
            print(f"== oss2 {OSS2_VERSION} tests, {auth} signing, against {endpoint}", flush=True)
            # The tests write temporary files into the working directory: run from scratch.
            command = [
                sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                "--rootdir", str(sdist), "-o", f"timeout={timeout_s}", *targets, *pytest_args,
            ]  # fmt: skip
            return subprocess.run(command, cwd=sdist, env=env, check=False).returncode
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--auth", choices=("v1", "v4", "both"), default="both")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ossmount-oss2")
    parser.add_argument(
        "--timeout-s", type=int, default=300, help="per test (pytest-timeout), default 300"
    )
    parser.add_argument("tests", nargs="*", help="files or node ids under the sdist's tests/")
    argv = sys.argv[1:]
    pytest_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    sdist = fetch_sdist(args.cache)
    tests = args.tests or list(DEFAULT_TESTS)
    versions = ["v1", "v4"] if args.auth == "both" else [args.auth]
    return max(run_tests(sdist, auth, tests, pytest_args, args.timeout_s) for auth in versions)


if __name__ == "__main__":
    sys.exit(main())
