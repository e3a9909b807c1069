"""scripts/setup.sh and scripts/clear_test_mounts.py, without touching the machine: a fake
apt-get and dpkg-query on PATH; mountinfo texts and lock files."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_clear_test_mounts() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "clear_test_mounts", REPO / "scripts" / "clear_test_mounts.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$FAKE_APT_CALLS"
calls=$(wc -l < "$FAKE_APT_CALLS")
case "$*" in
  *update*)
    if [ "$calls" -le 2 ]; then
      echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2
      exit 100
    fi
    exit 0 ;;
  *install*) echo "E: Unable to locate package fuse3" >&2; exit 100 ;;
esac
"""


def test_setup_waits_for_the_apt_lock_then_stops_with_one_clear_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")  # nothing installed
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        FAKE_APT_CALLS=str(calls),
        SETUP_APT_LOCK_WAIT_S="0",
    )
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    lines = calls.read_text().splitlines()
    # update waited through two lock failures, install was tried once, then set-up stopped.
    assert [line.split()[-1] if "update" in line else "install" for line in lines] == [
        "-qq",
        "-qq",
        "-qq",
        "install",
    ], lines
    assert all("DPkg::Lock::Timeout=" in line for line in lines)
    assert "another apt holds its lock; waiting" in result.stderr
    failure_lines = [line for line in result.stderr.splitlines() if line.startswith("setup:")]
    assert failure_lines[-1].startswith(
        "setup: failed while installing Debian packages (apt-get install)"
    ), result.stderr
    assert "No such file" not in result.stderr


MOUNTINFO = """\
22 1 0:21 / /proc rw - proc proc rw
88 22 0:50 / /tmp/pytest-of-u/pytest-1/test_a0/mnt0 rw - fuse.ossmount ossmount:test-bucket rw
89 22 0:51 / /tmp/pytest-of-u/pytest-2/test_b0/mnt0 rw - fuse.ossmount ossmount:test-bucket rw
90 22 0:52 / /tmp/pytest-of-u/pytest-1/test_c0/sshfs rw - fuse.sshfs me@host:/ rw
91 22 0:53 / /home/me/bucket rw - fuse.ossmount ossmount:mine rw
92 22 0:54 / /tmp/pytest-of-u/pytest-1/with\\040space rw - fuse.ossmount ossmount:test-bucket rw
"""


def test_only_ossmount_mounts_of_finished_runs_are_leftovers(tmp_path: Path) -> None:
    clear = load_clear_test_mounts()
    root = tmp_path / "pytest-of-u"
    mountinfo = MOUNTINFO.replace("/tmp/pytest-of-u", str(root))
    for run in ("pytest-1", "pytest-2"):
        (root / run).mkdir(parents=True)
        (root / run / clear.SUITE_LOCK_NAME).touch()
    held = os.open(root / "pytest-2" / clear.SUITE_LOCK_NAME, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        found = clear.leftovers(clear.parse_mountinfo(mountinfo), root)
    finally:
        os.close(held)
    assert found == [root / "pytest-1/test_a0/mnt0", root / "pytest-1/with space"]
    # Once the second run is over too, its mount is a leftover as well.
    found = clear.leftovers(clear.parse_mountinfo(mountinfo), root)
    assert root / "pytest-2/test_b0/mnt0" in found
    assert Path("/home/me/bucket") not in found
