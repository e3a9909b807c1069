"""Injected faults: latency, errors, resets and the bandwidth cap (seeded, live-settable)."""

from __future__ import annotations

import os
import time

import oss2
import pytest
import requests
from oss2.exceptions import RequestError, ServerError

from ossmount.server import Faults, RunningServer


def test_latency(oss2_bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    oss2_bucket.put_object("k", b"v")
    oss_server.faults.latency_ms = 200
    started = time.monotonic()
    oss2_bucket.get_object("k").read()
    assert time.monotonic() - started >= 0.2
    oss_server.faults.latency_ms = 0
    started = time.monotonic()
    oss2_bucket.get_object("k").read()
    assert time.monotonic() - started < 0.2


def test_error_share_is_seeded(oss2_bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    oss2_bucket.put_object("k", b"v")

    def outcomes() -> list[str]:
        results = []
        for _ in range(40):
            try:
                oss2_bucket.get_object("k").read()
                results.append("ok")
            except ServerError as exc:
                assert (exc.status, exc.code) in ((503, "SlowDown"), (500, "InternalError"))
                results.append(exc.code)
        return results

    oss_server.faults.error_rate = 0.5
    oss_server.faults.reseed(7)
    first = outcomes()
    oss_server.faults.reseed(7)
    assert outcomes() == first
    assert 5 < first.count("ok") < 35
    assert {"SlowDown", "InternalError"} <= set(first)
    oss_server.faults.only_operations = frozenset({"PutObject"})
    assert all(result == "ok" for result in outcomes())


@pytest.mark.parametrize("size", [1 << 20, 4096], ids=["file", "in-index"])
def test_reset_in_the_middle_of_a_download(
    oss2_bucket: oss2.Bucket, oss_server: RunningServer, size: int
) -> None:
    data = os.urandom(size)
    oss2_bucket.put_object("big", data)
    oss_server.faults.reset_rate = 1.0
    oss_server.faults.only_operations = frozenset({"GetObject"})
    url = oss2_bucket.sign_url("GET", "big", 60)
    with pytest.raises(requests.exceptions.RequestException):
        response = requests.get(url, timeout=10)
        # A short body is also a failure to detect, if the reset came after the last read.
        assert len(response.content) == len(data)
    oss_server.faults.clear()
    assert oss2_bucket.get_object("big").read() == data


def test_reset_in_the_middle_of_an_upload(
    oss2_bucket: oss2.Bucket, oss_server: RunningServer
) -> None:
    oss_server.faults.reset_rate = 1.0
    with pytest.raises(RequestError):
        oss2_bucket.put_object("cut", os.urandom(2 << 20))
    oss_server.faults.clear()
    assert not oss2_bucket.object_exists("cut")
    # The server removes the half-written temp file once its worker notices the reset, which
    # may come a moment after the client saw it.
    deadline = time.monotonic() + 10
    while any((oss_server.root / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any((oss_server.root / "tmp").iterdir())


def test_bandwidth_cap(oss2_bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    data = os.urandom(512 * 1024)
    oss2_bucket.put_object("capped", data)
    oss_server.faults.bandwidth_bytes_per_s = 2 << 20
    started = time.monotonic()
    assert oss2_bucket.get_object("capped").read() == data
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 2.0
    oss_server.faults.bandwidth_bytes_per_s = 0
    started = time.monotonic()
    oss2_bucket.get_object("capped").read()
    assert time.monotonic() - started < 0.2


def test_faults_object_defaults_and_seeding() -> None:
    faults = Faults(seed=3)
    assert faults.pick_error("GetObject") is None
    assert faults.pick_reset("GetObject", 100) is None
    faults.reset_rate = 1.0
    assert faults.pick_reset("GetObject", 100) == 50
    faults.clear()
    faults.error_rate = 0.5
    faults.reseed(3)
    first = [faults.pick_error("GetObject") for _ in range(30)]
    faults.seed = 11
    second = [faults.pick_error("GetObject") for _ in range(30)]
    faults.seed = 3
    assert [faults.pick_error("GetObject") for _ in range(30)] == first
    faults.seed = 11
    assert [faults.pick_error("GetObject") for _ in range(30)] == second
    assert first != second
