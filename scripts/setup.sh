#!/usr/bin/env bash
# Installs everything ossmount needs on a Debian machine (run as root; safe to run again):
# Debian packages for FUSE and for building pyfuse3, then a virtualenv in .venv with ossmount.
#   scripts/setup.sh          the package and its runtime dependencies
#   scripts/setup.sh --test   also the test and lint tools (pytest, oss2, mypy, ruff, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
# Any failing step stops set-up with one line saying which.
step="starting"
trap 'status=$?; echo "setup: failed while $step (exit $status); stopped there" >&2; exit $status' ERR

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# apt-get, waiting while another apt (unattended-upgrades, a second set-up) holds its locks:
# DPkg::Lock::Timeout for the dpkg lock, and a retry for the lists lock of `update`.
apt_get() {
    local attempt output
    for attempt in $(seq 1 "${SETUP_APT_LOCK_TRIES:-120}"); do
        if output=$(apt-get -o DPkg::Lock::Timeout=600 "$@" 2>&1); then
            return 0
        fi
        if ! grep -qE 'Could not get lock|Unable to lock|Unable to acquire' <<<"$output"; then
            echo "$output" >&2
            return 1
        fi
        [ "$attempt" = 1 ] && echo "setup: another apt holds its lock; waiting for it" >&2
        sleep "${SETUP_APT_LOCK_WAIT_S:-5}"
    done
    echo "$output" >&2
    return 1
}

# (attr, acl, strace: setfattr/getfattr, setfacl and strace, which the POSIX tests run on real
# mounts; fio, unzip: scripts/bench_cache.py and its unit test)
packages=(fuse3 libfuse3-dev pkg-config gcc python3 python3-dev python3-venv curl rsync git
          sqlite3 ca-certificates attr acl strace fio unzip)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    step="updating apt's package lists (apt-get update)"
    apt_get update -qq
    step="installing Debian packages (apt-get install)"
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The newest Python 3.11+ on PATH (a pyenv one where present, else Debian's).
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$(command -v "$candidate")
        break
    fi
done
[ -n "$python" ] || { echo "setup: no Python 3.11 or newer found" >&2; exit 1; }

step="creating the virtualenv .venv"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    rm -rf .venv
    "$python" -m venv .venv
fi
step="installing ossmount${extras} into .venv (pip)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras}"
# mount(8) and fstab run `ossmount` as a mount helper with no PATH: link it where they look,
# unless a real file (another installation) already stands there.
link=/usr/local/bin/ossmount
step="linking $link"
if [ -L "$link" ] || [ ! -e "$link" ]; then
    ln -sfn "$PWD/.venv/bin/ossmount" "$link"
fi
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/ossmount --help >/dev/null && echo ossmount OK))"
