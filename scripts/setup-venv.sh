#!/usr/bin/env bash
# Create .venv (if needed) and install lorem_mta with its test dependencies.
# torch is pinned in the same pip command so that pip uses the CPU build when one is
# available locally and never resolves an unpinned (multi-GB CUDA) torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[test]"
