#!/usr/bin/env bash
# Train every tool on one data set and write benchmarks/results/<dataset>.{json,md,png}.
# Usage: bash benchmarks/run_peers.sh [digits|fashion_mnist]
# Needs the hgq venv (HGQ_VENV, default: the repository's .venv) and the peers' venvs from setup_venvs.sh
# (VENV_ROOT). REUSE_PEERS=1 retrains only hgq and takes the peers' runs from the existing results JSON (for when
# their scripts did not change). SEEDS overrides the seeds.
set -euo pipefail
DATASET=${1:-digits}
HERE=$(cd "$(dirname "$0")" && pwd)
HGQ_VENV=${HGQ_VENV:-$HERE/../.venv}
ROOT=${VENV_ROOT:-/work/bench_venvs}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0

if [ "$DATASET" = digits ]; then
    BETAS="0 1e-7 3e-7 1e-6 3e-6 1e-5 3e-5 1e-4 3e-4"; RAMPS="1e-6:3e-4 1e-5:3e-3"; BITS="2 3 4 6 8"; SEEDS=${SEEDS:-"0 1 2"}
    PREP=""
else
    BETAS="0 3e-7 3e-6 3e-5 3e-4"; RAMPS="1e-7:3e-4"; BITS="2 3 4 6 8"; SEEDS=${SEEDS:-"0 1 2"}
    PREP="--fashion"
fi

rm -rf "$HERE/work/dumps/$DATASET"
"$HGQ_VENV/bin/python" "$HERE/prepare_data.py" $PREP
"$HGQ_VENV/bin/python" "$HERE/train_hgq.py" --dataset "$DATASET" --betas $BETAS --ramps $RAMPS --seeds $SEEDS
if [ "${REUSE_PEERS:-0}" = 1 ]; then
    "$HGQ_VENV/bin/python" "$HERE/compare.py" --dataset "$DATASET" --reuse-peers
    exit 0
fi
"$ROOT/hgq2/bin/python" "$HERE/train_hgq2.py" --dataset "$DATASET" --betas $BETAS --seeds $SEEDS
TF_USE_LEGACY_KERAS=1 "$ROOT/qkeras/bin/python" "$HERE/train_qkeras.py" --dataset "$DATASET" --bits $BITS \
    --seeds $SEEDS
"$HGQ_VENV/bin/python" "$HERE/compare.py" --dataset "$DATASET"
