"""The pure helpers of scripts/bench_cache.py: fio's JSON output (from real fio runs), the
--cases list, the cache directory's size and largest file as du and the benchmark see them."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_bench_cache() -> ModuleType:
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)  # the script imports benchlib from its own folder
    spec = importlib.util.spec_from_file_location(
        "bench_cache", REPO / "scripts" / "bench_cache.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


bench_cache = load_bench_cache()

needs_fio = pytest.mark.skipif(
    shutil.which("fio") is None, reason="needs fio (scripts/setup.sh --test installs it)"
)


@needs_fio
def test_a_real_fio_run_parses_into_its_read_figures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(2 * 1024 * 1024))
    command = bench_cache.fio_randread_command(data, 2 * 1024 * 1024, 1, invalidate=False)
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    read = bench_cache.parse_fio_json(result.stdout)
    assert read.ios > 0
    assert read.io_bytes == read.ios * 4096
    assert 0.9 <= read.runtime_s <= 1.5
    assert read.iops == pytest.approx(read.ios / read.runtime_s, rel=0.05)
    assert read.mean_latency_us > 0
    assert read.p99_latency_us is not None and read.p99_latency_us >= read.mean_latency_us / 10


@needs_fio
def test_a_failed_fio_job_is_an_error_even_after_fios_warnings_on_stdout(tmp_path: Path) -> None:
    command = bench_cache.fio_randread_command(tmp_path / "absent", 1024 * 1024, 1, invalidate=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert result.stdout.startswith("fio: ")  # fio's warning lines come before the JSON
    with pytest.raises(ValueError, match="failed with error 2"):
        bench_cache.parse_fio_json(result.stdout)


def test_output_without_a_job_or_without_json_is_an_error() -> None:
    with pytest.raises(ValueError, match="no JSON document"):
        bench_cache.parse_fio_json("fio: something went wrong\n")
    with pytest.raises(ValueError, match="no job"):
        bench_cache.parse_fio_json('{"fio version": "fio-3.33", "jobs": []}')


def test_cases_are_parsed_sorted_once_each_and_bad_items_are_named() -> None:
    assert bench_cache.parse_cases("5,1, 3,1") == [1, 3, 5]
    for bad in ("8", "one", "1,,2", "0"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a case number"):
            bench_cache.parse_cases(bad)


def test_requests_are_formatted_sorted_by_operation() -> None:
    assert bench_cache.format_requests({"HeadObject": 1, "GetObject": 12}) == (
        "GetObject=12 HeadObject=1"
    )
    assert bench_cache.format_requests({}) == "-"


def test_the_bound_allows_one_block_per_concurrent_reader() -> None:
    mib = 1024 * 1024
    assert bench_cache.bound_allowance(256 * mib, 1) == 257 * mib
    assert bench_cache.bound_allowance(256 * mib, 4) == 260 * mib


def test_size_and_largest_file_of_a_cache_directory_with_a_sparse_file(tmp_path: Path) -> None:
    assert bench_cache.largest_file(tmp_path) is None
    (tmp_path / "objects" / "ab").mkdir(parents=True)
    sparse = tmp_path / "objects" / "ab" / "data"
    with sparse.open("wb") as out:
        out.seek(64 * 1024 * 1024)  # 64 MiB long, one 1 MiB extent written
        out.write(os.urandom(1024 * 1024))
    (tmp_path / "index.db").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "index.db", tmp_path / "index-link")  # counted once, as du does
    (tmp_path / "to-data").symlink_to(sparse)
    assert bench_cache.largest_file(tmp_path) == sparse
    du = subprocess.run(["du", "-sB1", str(tmp_path)], capture_output=True, text=True, check=True)
    assert bench_cache.allocated_bytes(tmp_path) == int(du.stdout.split()[0])
    assert bench_cache.allocated_bytes(tmp_path) < 4 * 1024 * 1024


def test_the_largest_entries_and_the_bytes_outside_sqlite_files() -> None:
    mib = 1024 * 1024
    allocated = {".": 4096, "ns/data/01/1": 64 * mib, "ns/index.sqlite-wal": 4 * mib, "ns": 4096}
    allocated["ns/index.sqlite"] = 100 * 1024
    assert bench_cache.largest_entries(allocated, 2) == (
        "ns/data/01/1 64.0 MiB, ns/index.sqlite-wal 4.0 MiB"
    )
    assert bench_cache.without_sqlite(allocated) == 64 * mib + 2 * 4096
