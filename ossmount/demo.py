"""`ossmount demo`: the bundled server with a sample bucket, mounted until Ctrl-C.

The sample bucket has nested directories, text files, a 100 MiB binary, an OSS symlink, an
ossfs-style symlink and file with POSIX metadata, an ossfs `dir_$folder$` marker and a few
hundred small files, so that `ls -la`, `cat`, `find`, `grep -r`, `sha256sum` and `readlink`
all have something to show.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import trio

from ossmount.config import ConfigError, build_config, split_option_list
from ossmount.mount import run_foreground, setup_logging
from ossmount.oss.client import OssClient
from ossmount.oss.signer import Credentials
from ossmount.server import ServerConfig, run_server_in_thread

DEMO_BUCKET = "demo"
DEMO_AK = "demo-ak"
DEMO_SK = "demo-secret"
BIG_FILE_BYTES = 100 * 1024 * 1024
SMALL_FILES = 300
SEED = 20240601

README_TEXT = """\
This bucket is served by ossmount's bundled OSS-compatible server and mounted with ossmount.

Try:  ls -la, find . -type f | head, cat docs/guide/intro.txt, readlink latest,
      sha256sum data/random-100MiB.bin, grep -r ossmount docs
"""


def _text_files() -> dict[str, str]:
    files = {
        "README.txt": README_TEXT,
        "docs/guide/intro.txt": "ossmount mounts an OSS bucket as a POSIX file system.\n",
        "docs/guide/usage.txt": "ossmount mount BUCKET MOUNTPOINT --endpoint URL\n",
        "docs/reference/options.txt": "attr_timeout, entry_timeout, readdir_optimize, ...\n",
        "docs/reference/deep/nested/tree/leaf.txt": "five levels down\n",
        "logs/2024/06/01/app.log": "".join(f"line {i}: ok\n" for i in range(1000)),
    }
    return files


def _small_files() -> Iterator[tuple[str, bytes]]:
    rng = random.Random(SEED)
    for index in range(SMALL_FILES):
        yield (
            f"small/batch-{index // 100}/file-{index:04d}.txt",
            f"small file {index}\n".encode() + rng.randbytes(rng.randrange(0, 4096)),
        )


def write_big_file(path: Path) -> None:
    rng = random.Random(SEED)
    chunk = rng.randbytes(1024 * 1024)
    with path.open("wb") as out:
        for index in range(BIG_FILE_BYTES // len(chunk)):
            # Vary each MiB so that no two blocks are the same.
            out.write(index.to_bytes(8, "little") + chunk[8:])


async def populate(endpoint: str, scratch: Path) -> None:
    """Upload the sample data (skipped when the bucket already holds it)."""
    credentials = Credentials(DEMO_AK, DEMO_SK)
    async with OssClient(endpoint, credentials, region="cn-hangzhou") as client:
        page = await client.list_objects_page(DEMO_BUCKET, prefix="README.txt", max_keys=1)
        if page.objects:
            return
        for key, text in _text_files().items():
            await client.put_object(DEMO_BUCKET, key, text.encode())
        big = scratch / "random-100MiB.bin"
        write_big_file(big)
        await client.put_object(DEMO_BUCKET, "data/random-100MiB.bin", big)
        big.unlink()
        await client.put_object(
            DEMO_BUCKET,
            "data/private.txt",
            b"mode 0600, owner 1234:1234, as ossfs would store it\n",
            metadata={
                "mode": str(stat.S_IFREG | 0o600),
                "uid": "1234",
                "gid": "1234",
                "mtime": "1600000000",
            },
        )
        await client.put_object(DEMO_BUCKET, "empty-dir/", b"")
        await client.put_object(DEMO_BUCKET, "ossfs-dir_$folder$", b"")
        await client.put_symlink(DEMO_BUCKET, "latest", "data/random-100MiB.bin")
        await client.put_object(
            DEMO_BUCKET,
            "docs/intro-link",
            b"guide/intro.txt",
            metadata={"mode": str(stat.S_IFLNK | 0o777)},
        )
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(16)

            async def upload(key: str, data: bytes) -> None:
                async with limiter:
                    await client.put_object(DEMO_BUCKET, key, data)

            for key, data in _small_files():
                nursery.start_soon(upload, key, data)


def demo_command(args: argparse.Namespace) -> int:
    """Start the server, fill the sample bucket, mount it in the foreground until Ctrl-C."""
    with contextlib.ExitStack() as stack:
        data_dir = (
            Path(args.data_dir)
            if args.data_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ossmount-demo-")))
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        mountpoint = (
            Path(args.mountpoint)
            if args.mountpoint
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ossmount-mnt-")))
        )
        with contextlib.suppress(OSError):  # exists, or a stale mount the mount will clear
            mountpoint.mkdir(parents=True, exist_ok=True)
        options = [item for value in args.options for item in split_option_list(value)]
        if not any(option.startswith("state_dir=") for option in options):
            # The write path's state directory lives and goes with the demo's data, not in
            # ~/.cache/ossmount, where it would outlive a clean exit.
            options.append(f"state_dir={data_dir / 'state'}")
        server = stack.enter_context(
            run_server_in_thread(
                ServerConfig(
                    root=data_dir / "server",
                    credentials=[Credentials(DEMO_AK, DEMO_SK)],
                    buckets=[DEMO_BUCKET],
                )
            )
        )
        try:
            config = build_config(
                DEMO_BUCKET,
                mountpoint,
                options=options,
                endpoint=server.endpoint,
                region="cn-hangzhou",
                foreground=True,
            )
        except ConfigError as exc:
            print(f"ossmount: {exc}", file=sys.stderr)
            return 2
        setup_logging(config)
        print(f"ossmount demo: server at {server.endpoint}, filling bucket '{DEMO_BUCKET}' ...")
        trio.run(populate, server.endpoint, data_dir)
        # The mount finds its key the way any mount does: in the environment.
        os.environ["OSS_ACCESS_KEY_ID"] = DEMO_AK
        os.environ["OSS_ACCESS_KEY_SECRET"] = DEMO_SK
        os.environ.pop("OSS_SESSION_TOKEN", None)

        def on_ready(reason: str | None) -> None:
            if reason is None:
                print(f"ossmount demo: bucket mounted at {mountpoint} (Ctrl-C to stop)", flush=True)
            else:
                print(f"ossmount: {reason}", file=sys.stderr)

        status = run_foreground(config, on_ready)
    return status
