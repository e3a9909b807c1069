#!/usr/bin/env bash
# The whole test command: set-up (with the test tools), lint, type check, then every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# A mount left over by an interrupted run would break the mount tests.
{ grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts || true; } | awk '{print $2}' | while read -r leftover; do
    fusermount3 -u -z "$leftover" 2>/dev/null || true
done
echo "== ruff"; .venv/bin/ruff check ossmount tests scripts
echo "== ruff format"; .venv/bin/ruff format --check ossmount tests scripts
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest "$@"
