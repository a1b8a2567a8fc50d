#!/usr/bin/env bash
# The test suite (the README's second command): sets up .venv if needed, lints, runs pytest.
# Slow tests are kept out by default; run them with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
