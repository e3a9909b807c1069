"""`ossmount cp` argument handling: oss:// URLs, sizes, endpoints, safe local names."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

import pytest

from ossmount.cli import build_parser
from ossmount.cp import (
    CpError,
    OssLocation,
    endpoint_url,
    parse_location,
    parse_size,
    safe_relative,
)


def test_locations() -> None:
    assert parse_location("oss://b/dir/k ü") == OssLocation("b", "dir/k ü")
    assert parse_location("oss://b") == OssLocation("b", "")
    assert parse_location("./oss:/x") == Path("./oss:/x")
    with pytest.raises(CpError, match="no bucket"):
        parse_location("oss:///key")


@pytest.mark.parametrize(
    ("text", "value"),
    [("8M", 8 << 20), ("512k", 512 << 10), ("1G", 1 << 30), ("1MiB", 1 << 20), ("100", 100)],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "-1M", "0"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_endpoint_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSS_ENDPOINT", "oss-cn-beijing.aliyuncs.com")
    assert endpoint_url("http://127.0.0.1:9000", None) == "http://127.0.0.1:9000"
    assert endpoint_url(None, "cn-shanghai") == "https://oss-cn-beijing.aliyuncs.com"
    monkeypatch.delenv("OSS_ENDPOINT")
    assert endpoint_url(None, "cn-shanghai") == "https://oss-cn-shanghai.aliyuncs.com"
    with pytest.raises(CpError, match="no endpoint"):
        endpoint_url(None, None)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("p/a/b.txt", PurePosixPath("a/b.txt")),
        ("p/a", PurePosixPath("a")),
        ("p/", None),  # the prefix itself (a directory marker)
        ("p/dir/", None),
        ("p/../etc/passwd", None),
        ("p/a/./b", None),
        ("p//abs", None),
    ],
)
def test_safe_relative(key: str, expected: PurePosixPath | None) -> None:
    assert safe_relative(key, "p/") == expected


def test_cp_parser_is_registered() -> None:
    args = build_parser().parse_args(["cp", "-r", "-j", "8", "--part-size", "16M", "a", "oss://b/"])
    assert (args.recursive, args.concurrency, args.part_size) == (True, 8, 16 << 20)
    assert args.progress is None and args.signature_version == 4
