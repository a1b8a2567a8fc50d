#!/usr/bin/env bash
# Create .venv and install acclimate with the tested pins, once; later calls return at once.
# Used by scripts/demo.sh and scripts/test.sh. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.acclimate-setup
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "acclimate needs Python >= 3.10 (found $("$py" --version 2>&1)); set PYTHON=python3.11" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$py" -m venv .venv
echo "setting up .venv (torch, timm, lightning; a minute or two the first time)..." >&2
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
echo "$want" > "$stamp"
