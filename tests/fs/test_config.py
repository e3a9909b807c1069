"""Mount option parsing: ossmount names, ossfs names, ignored fstab options, rejections."""

from __future__ import annotations

from pathlib import Path

import pytest

from ossmount.config import (
    ConfigError,
    build_config,
    parse_bucket_spec,
    parse_options,
    split_option_list,
)


def test_bucket_spec_with_and_without_prefix() -> None:
    assert parse_bucket_spec("bkt") == ("bkt", "")
    assert parse_bucket_spec("bkt:/a/b") == ("bkt", "a/b/")
    assert parse_bucket_spec("bkt:/a/b/") == ("bkt", "a/b/")
    with pytest.raises(ConfigError):
        parse_bucket_spec("bkt:/a//b")
    with pytest.raises(ConfigError):
        parse_bucket_spec(":/x")


def test_ossfs_option_names() -> None:
    items = split_option_list(
        "allow_other,ro,uid=1000,gid=1001,umask=027,url=http://127.0.0.1:9000,"
        "passwd_file=/etc/pw,readdir_optimize,sigv1,stat_cache_expire=5"
    )
    fields = parse_options(items)
    assert fields == {
        "allow_other": True,
        "read_only": True,
        "uid": 1000,
        "gid": 1001,
        "umask": 0o027,
        "endpoint": "http://127.0.0.1:9000",
        "passwd_file": Path("/etc/pw"),
        "readdir_optimize": True,
        "signature_version": 1,
        "stat_cache_ttl_s": 5.0,
    }


def test_ossfs_options_with_the_same_behaviour(tmp_path: Path) -> None:
    items = split_option_list("kernel_cache,enable_noobj_cache,dbglevel=debug,mp_umask=022")
    assert parse_options(items) == {"debug": True, "mp_umask": 0o022}
    assert parse_options(["noxattr"]) == {"noxattr": True}
    config = build_config("b", tmp_path, options=["mp_umask=077", "umask=000"])
    assert config.root_dir_mode == 0o700
    assert config.default_dir_mode == 0o777


def test_data_cache_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_config("b", tmp_path).use_cache is None
    config = build_config("b", tmp_path, options=["use_cache=/tmp/x", "cache_size=2G"])
    assert config.use_cache == Path("/tmp/x") and config.cache_size == 2 * 1024**3
    config = build_config("b", tmp_path, options=["use_cache", f"cache_dir={tmp_path}/c"])
    assert config.use_cache == tmp_path / "c" / "data"  # a bare use_cache: under cache_dir
    monkeypatch.chdir(tmp_path)
    assert build_config("b", tmp_path, options=["use_cache=rel"]).use_cache == tmp_path / "rel"
    assert build_config("b", tmp_path, options=["del_cache"]).del_cache
    with pytest.raises(ConfigError, match="cache_size must hold at least one block and"):
        build_config("b", tmp_path, options=["use_cache=/tmp/x", "cache_size=1536k"])
    with pytest.raises(ConfigError, match="cache_size=lots: not a whole number"):
        build_config("b", tmp_path, options=["cache_size=lots"])


def test_fstab_options_are_ignored() -> None:
    items = split_option_list("_netdev,nofail,noauto,defaults,x-systemd.automount,rw,nosuid,nodev")
    assert parse_options(items) == {"read_only": False}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nosuchoption", "unknown mount option 'nosuchoption'"),
        ("colour=blue", "unknown mount option 'colour=blue'"),
        ("uid=abc", "uid=abc: not a whole number"),
        ("umask=999", "umask=999: not an octal number"),
        ("attr_timeout=-1", "must not be negative"),
    ],
)
def test_bad_options_are_rejected_by_name(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_options([item])


def test_build_config_defaults_and_overrides(tmp_path: Path) -> None:
    config = build_config(
        "bkt:/data",
        tmp_path,
        options=["umask=077", "block_size=8M", "url=example.com"],
        endpoint="http://127.0.0.1:1",
        foreground=None,
    )
    assert config.prefix == "data/"
    assert config.endpoint == "http://127.0.0.1:1"  # the flag wins over -o url
    assert config.block_size == 8 * 1024 * 1024
    assert config.default_file_mode == 0o600
    assert config.default_dir_mode == 0o700
    assert not config.foreground
    assert build_config("b", tmp_path, options=["url=oss.example.com"]).endpoint == (
        "https://oss.example.com"
    )


def test_explicit_modes_win_over_umask(tmp_path: Path) -> None:
    config = build_config("b", tmp_path, options=["umask=077", "file_mode=644", "dir_mode=755"])
    assert (config.default_file_mode, config.default_dir_mode) == (0o644, 0o755)


def test_block_size_floor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="block_size"):
        build_config("b", tmp_path, options=["block_size=4k"])


def test_small_file_get_sizes(tmp_path: Path) -> None:
    assert build_config("b", tmp_path).small_file_get == 64 * 1024
    assert build_config("b", tmp_path, options=["small_file_get=16k"]).small_file_get == 16384
    assert build_config("b", tmp_path, options=["small_file_get=0"]).small_file_get == 0
    with pytest.raises(ConfigError, match="small_file_get must be at most 1 MiB"):
        build_config("b", tmp_path, options=["small_file_get=2m"])
    with pytest.raises(ConfigError, match="small_file_get=lots: not a whole number"):
        build_config("b", tmp_path, options=["small_file_get=lots"])


def test_direct_io_is_off_unless_asked(tmp_path: Path) -> None:
    assert build_config("b", tmp_path, options=[]).direct_io is False
    assert build_config("b", tmp_path, options=["direct_io"]).direct_io is True


def test_nonempty_and_metrics_addr_options() -> None:
    assert parse_options(["nonempty"]) == {"nonempty": True}
    assert parse_options(["metrics_addr=127.0.0.1:9100"]) == {"metrics_addr": "127.0.0.1:9100"}
    assert parse_options(["metrics_addr=[::1]:0"]) == {"metrics_addr": "::1:0"}
    assert parse_options(["metrics_addr=9100"]) == {"metrics_addr": "127.0.0.1:9100"}
    for bad in ("metrics_addr=host", "metrics_addr=host:", "metrics_addr=h:70000"):
        with pytest.raises(ConfigError, match="expected HOST:PORT"):
            parse_options([bad])


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("oss-cn-hangzhou.aliyuncs.com", "https://oss-cn-hangzhou.aliyuncs.com"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("https://oss-cn-beijing.aliyuncs.com", "https://oss-cn-beijing.aliyuncs.com"),
    ],
)
def test_good_endpoints(given: str, kept: str) -> None:
    assert parse_options([f"url={given}"]) == {"endpoint": kept}


@pytest.mark.parametrize("bad", ["http://", "ftp://host", "http://h:99999", "http://h/x", "a b"])
def test_bad_endpoint_is_named_with_a_good_example(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"bad endpoint .*https://oss-cn-hangzhou\.aliyuncs\.com"):
        parse_options([f"url={bad}"])
