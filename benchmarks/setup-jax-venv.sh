#!/usr/bin/env bash
# Create a separate virtual environment with the reference JAX implementation,
# lorem-jax 0.2.0 (CPU jax), used by the scripts in benchmarks/jax_tools/ to make
# training runs and reference numbers for tests/resources/jax_run/.
#
# lorem-jax and jax are never installed into the project's own environment.
#
# Usage: bash benchmarks/setup-jax-venv.sh [VENV_DIR]   (default: <repo>/.venv-jax)
# Needs python >= 3.11 (lorem-jax requires it); set PYTHON to choose the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-jax}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"lorem-jax needs python >= 3.11, got {sys.version.split()[0]}; set PYTHON=...")
PY

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip

# Versions of the parity fixtures (shared/parity/README.md). lorem-jax 0.2.0 itself
# only lists unpinned names; the pins make the reference numbers reproducible.
"$VENV/bin/python" -m pip install \
    "lorem-jax==0.2.0" \
    "jax[cpu]==0.10.2" "jaxlib==0.10.2" \
    "flax==0.12.8" \
    "e3x==1.0.2" \
    "jax-pme==0.1.0" \
    "marathon-train==0.4.0" \
    "ase==3.29.0" \
    "vesin==0.6.2"

"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
names = ["lorem-jax", "jax", "jaxlib", "flax", "e3x", "jax-pme", "marathon-train",
         "optax", "grain", "ase", "vesin", "numpy"]
for name in names:
    try:
        print(f"{name}=={version(name)}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: not installed ({e})")
PY
echo "lorem-jax environment ready in $VENV"
