#!/usr/bin/env bash
# Create the peers' virtual environments. HGQ2 imports as `hgq` (it would shadow this project) and QKeras needs
# the legacy Keras 2 (tf_keras), so each gets its own venv; TensorFlow is pinned to the version of the hgq venv.
# Usage: bash benchmarks/setup_venvs.sh [VENV_ROOT]   (default /work/bench_venvs)
set -euo pipefail
ROOT=${1:-/work/bench_venvs}
PYTHON=${PYTHON:-python3}
mkdir -p "$ROOT"

"$PYTHON" -m venv "$ROOT/hgq2"
"$ROOT/hgq2/bin/pip" install 'hgq2==0.2.0' 'tensorflow-cpu==2.21.0'

# QKeras 0.9.0 declares a dependency on `pyparser` (sic) but imports `pyparsing`; install it by hand.
"$PYTHON" -m venv "$ROOT/qkeras"
"$ROOT/qkeras/bin/pip" install 'qkeras==0.9.0' 'tensorflow-cpu==2.21.0' 'tf_keras==2.21.0' pyparsing
