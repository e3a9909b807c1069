#!/usr/bin/env bash
# The whole test command: set-up (with the test tools), lint, type check, then every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Mounts an interrupted, finished run of the suite left (and only those: other FUSE mounts and
# the mounts of test runs still going on stay mounted).
.venv/bin/python scripts/clear_test_mounts.py
echo "== ruff"; .venv/bin/ruff check ossmount tests scripts
echo "== ruff format"; .venv/bin/ruff format --check ossmount tests scripts
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest "$@"
