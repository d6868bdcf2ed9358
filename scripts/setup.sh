#!/usr/bin/env bash
# Create .venv (once) and install Reach with its dev extras into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch is pinned in pyproject.toml (a CPU build is used where one is on disk).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
