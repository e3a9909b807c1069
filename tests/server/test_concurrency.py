"""Many clients at once: parallel uploads, reads, overwrites and appends stay consistent."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import oss2
from oss2.exceptions import PositionNotEqualToLength

from ossmount.server import RunningServer


def test_parallel_puts_and_gets(oss2_bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    bodies = {f"par/{number:02d}": os.urandom(300_000 + number) for number in range(48)}

    def put(key: str) -> str:
        return str(oss2_bucket.put_object(key, bodies[key]).etag)

    def get(key: str) -> bytes:
        return bytes(oss2_bucket.get_object(key).read())

    with ThreadPoolExecutor(16) as pool:
        etags = dict(zip(bodies, pool.map(put, bodies), strict=True))
        read = dict(zip(bodies, pool.map(get, bodies), strict=True))
    assert read == bodies
    for key, etag in etags.items():
        assert etag == hashlib.md5(bodies[key]).hexdigest().upper()
    assert len(list((oss_server.root / "data").glob("*/*"))) == len(bodies)


def test_racing_overwrites_leave_one_whole_version(
    oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    versions = [bytes([number]) * 400_000 for number in range(12)]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda body: oss2_bucket.put_object("contended", body), versions))
    final = oss2_bucket.get_object("contended").read()
    assert final in versions
    # The replaced versions' files are gone: one data file for one object.
    assert len(list((oss_server.root / "data").glob("*/*"))) == 1


def test_racing_appends_are_serialised(oss2_bucket: oss2.Bucket) -> None:
    def append_until_done(marker: int) -> None:
        while True:
            position = oss2_bucket.head_object("log").content_length
            try:
                oss2_bucket.append_object("log", position, bytes([65 + marker]) * 1000)
            except PositionNotEqualToLength:
                continue  # another writer got there first: retry at the new end
            return

    oss2_bucket.append_object("log", 0, b"")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append_until_done, range(8)))
    data = oss2_bucket.get_object("log").read()
    assert len(data) == 8000
    assert sorted(data[i] for i in range(0, 8000, 1000)) == list(range(65, 73))
    assert all(data[i : i + 1000] == data[i : i + 1] * 1000 for i in range(0, 8000, 1000))
