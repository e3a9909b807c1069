"""Where credentials come from, in which order, and which passwd files are refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ossmount.credentials import CredentialsError, read_passwd_file, resolve_credentials
from ossmount.oss.signer import Credentials

ENV = {"OSS_ACCESS_KEY_ID": "env-ak", "OSS_ACCESS_KEY_SECRET": "env-sk"}


def passwd(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_environment_with_session_token(tmp_path: Path) -> None:
    found = resolve_credentials(
        "b", environ={**ENV, "OSS_SESSION_TOKEN": "tok"}, home=tmp_path, system_file=tmp_path / "x"
    )
    assert found == Credentials("env-ak", "env-sk", "tok")


def test_half_a_key_in_the_environment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="OSS_ACCESS_KEY_SECRET"):
        resolve_credentials("b", environ={"OSS_ACCESS_KEY_ID": "a"}, home=tmp_path)


def test_bucket_line_beats_default_line(tmp_path: Path) -> None:
    path = passwd(tmp_path / "p", "# comment\n\nDEF-AK:DEF-SK\nmybucket:B-AK:B-SK\n")
    assert read_passwd_file(path, "mybucket") == Credentials("B-AK", "B-SK")
    assert read_passwd_file(path, "other") == Credentials("DEF-AK", "DEF-SK")


def test_order_option_then_env_then_home_then_system(tmp_path: Path) -> None:
    option = passwd(tmp_path / "option", "OPT-AK:OPT-SK\n")
    home = tmp_path / "home"
    home.mkdir()
    passwd(home / ".passwd-ossfs", "HOME-AK:HOME-SK\n")
    system = passwd(tmp_path / "etc-passwd-ossfs", "SYS-AK:SYS-SK\n", 0o640)

    def key_id(passwd_file: Path | None = None, environ: dict[str, str] | None = None) -> str:
        found = resolve_credentials(
            "b", passwd_file=passwd_file, environ=environ or {}, home=home, system_file=system
        )
        return found.access_key_id if found is not None else "anonymous"

    assert key_id(option, ENV) == "OPT-AK"
    assert key_id(None, ENV) == "env-ak"
    assert key_id() == "HOME-AK"
    (home / ".passwd-ossfs").unlink()
    assert key_id() == "SYS-AK"
    system.unlink()
    assert key_id() == "anonymous"
    with pytest.raises(CredentialsError, match="no credentials"):
        resolve_credentials("b", environ={}, home=home, system_file=system, allow_anonymous=False)


@pytest.mark.parametrize(("mode", "who"), [(0o644, "others"), (0o640, "group"), (0o604, "others")])
def test_readable_personal_file_is_refused_with_a_reason(
    tmp_path: Path, mode: int, who: str
) -> None:
    path = passwd(tmp_path / "p", "AK:SECRETVALUE\n", mode)
    with pytest.raises(CredentialsError) as info:
        resolve_credentials("b", passwd_file=path, environ={}, home=tmp_path)
    message = str(info.value)
    assert f"let {who} read it" in message and "chmod 600" in message
    assert "SECRETVALUE" not in message


def test_system_file_may_be_group_readable_not_world_readable(tmp_path: Path) -> None:
    system = passwd(tmp_path / "sys", "AK:SK\n", 0o640)
    assert resolve_credentials("b", environ={}, home=tmp_path, system_file=system) is not None
    system.chmod(0o644)
    with pytest.raises(CredentialsError, match="others"):
        resolve_credentials("b", environ={}, home=tmp_path, system_file=system)


def test_bad_line_is_reported_without_its_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = passwd(tmp_path / "p", "only-one-field-SECRET\n")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CredentialsError, match="line 1") as info:
        read_passwd_file(path, "b")
    assert "SECRET" not in str(info.value)
    assert "SECRET" not in caplog.text
