"""The command line's help and version (issue 14: fixes 6 and 9)."""

from __future__ import annotations

import subprocess
import sys

from ossmount import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ossmount.cli", *args], capture_output=True, text=True, check=False
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ossmount {__version__}"


def test_server_help_shows_the_defaults_the_readme_shows() -> None:
    help_text = " ".join(run_cli("server", "--help").stdout.split())
    assert "(default: 9000)" in help_text
    assert "(default: 127.0.0.1)" in help_text
    assert "(default: None)" not in help_text


def test_help_names_docs_by_absolute_path() -> None:
    for command in ("server", "mount", "cp"):
        help_text = "".join(run_cli(command, "--help").stdout.split())
        assert " docs/" not in run_cli(command, "--help").stdout
        assert "/docs/" in help_text, (command, help_text)
