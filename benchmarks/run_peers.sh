#!/usr/bin/env bash
# Train every tool on one data set and write benchmarks/results/<dataset>.{json,md,png}.
# Usage: bash benchmarks/run_peers.sh [digits|digits_cosine|fashion_mnist|fashion_mnist_cnn]
# fashion_mnist_cnn: the CNN of configs/fashion_mnist_cnn.yaml for hgq and HGQ2 (no QKeras), EPOCHS overrides its
# epochs for both; HGQ2 sweeps its own betas (HGQ2_BETAS), up to 1e-4.
# Needs the hgq venv (HGQ_VENV, default: the repository's .venv) and the peers' venvs from setup_venvs.sh
# (VENV_ROOT). BITS_LR_SCALE: the bit pace of every hgq quantizer (train_hgq.py --bits-lr-scale). REUSE_PEERS=1 retrains only hgq and takes the peers' runs from the existing results JSON (for when
# their scripts did not change); with it, HGQ2_BETAS="..." trains HGQ2 at these extra betas and adds them to the
# reused runs. SEEDS, BETAS and RAMPS override the sweep of hgq (and of HGQ2 without REUSE_PEERS); SETTLE the final epochs with frozen bitwidths of train_hgq.py.
# WARMUP_BETAS: hgq's constant betas also trained with a beta warm-up (BetaWarmup; WARMUP its epochs). An empty
# RAMPS or WARMUP_BETAS ("") runs none.
set -euo pipefail
DATASET=${1:-digits}
HERE=$(cd "$(dirname "$0")" && pwd)
HGQ_VENV=${HGQ_VENV:-$HERE/../.venv}
ROOT=${VENV_ROOT:-/work/bench_venvs}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0

if [ "$DATASET" = fashion_mnist_cnn ]; then
    BETAS=${BETAS:-"3e-9 1e-8 3e-8 1e-7 3e-7 1e-6"}; RAMPS=${RAMPS-""}; SEEDS=${SEEDS:-"0"}
    WARMUP_BETAS=${WARMUP_BETAS-"1e-6"}; HGQ2_SWEEP=${HGQ2_BETAS:-"1e-8 3e-8 1e-7 1e-6 3e-6 1e-5 3e-5 1e-4"}
    PREP="--fashion"
elif [ "$DATASET" = digits ] || [ "$DATASET" = digits_cosine ]; then
    BETAS=${BETAS:-"0 1e-7 3e-7 1e-6 3e-6 5e-6 1e-5 3e-5 5e-5 1e-4 2e-4 3e-4"}; RAMPS=${RAMPS-"1e-6:3e-4"}; BITS="2 3 4 6 8"; SEEDS=${SEEDS:-"0 1 2"}
    WARMUP_BETAS=${WARMUP_BETAS-"5e-6 6e-6 7e-6 1e-5 2e-5 5e-5 1e-4"}
    PREP=""
else
    BETAS=${BETAS:-"0 1e-7 2e-7 3e-7 1e-6 3e-6 1e-5 3e-5 1e-4 3e-4"}; RAMPS=${RAMPS-"1e-7:3e-4"}; BITS="2 3 4 6 8"; SEEDS=${SEEDS:-"0 1 2"}
    WARMUP_BETAS=${WARMUP_BETAS-""}
    PREP="--fashion"
fi

rm -rf "$HERE/work/dumps/$DATASET"
"$HGQ_VENV/bin/python" "$HERE/prepare_data.py" $PREP
"$HGQ_VENV/bin/python" "$HERE/train_hgq.py" --dataset "$DATASET" --betas $BETAS --ramps $RAMPS --seeds $SEEDS \
    --warmup-betas $WARMUP_BETAS ${SETTLE:+--settle $SETTLE} ${WARMUP:+--warmup $WARMUP} ${EPOCHS:+--epochs $EPOCHS} \
    ${BITS_LR_SCALE:+--bits-lr-scale $BITS_LR_SCALE}
if [ "${REUSE_PEERS:-0}" = 1 ]; then
    if [ -n "${HGQ2_BETAS:-}" ]; then
        "$ROOT/hgq2/bin/python" "$HERE/train_hgq2.py" --dataset "$DATASET" --betas $HGQ2_BETAS --seeds $SEEDS
    fi
    "$HGQ_VENV/bin/python" "$HERE/compare.py" --dataset "$DATASET" --reuse-peers
    exit 0
fi
"$ROOT/hgq2/bin/python" "$HERE/train_hgq2.py" --dataset "$DATASET" --betas ${HGQ2_SWEEP:-$BETAS} --seeds $SEEDS \
    ${EPOCHS:+--epochs $EPOCHS}
if [ "$DATASET" = fashion_mnist_cnn ]; then
    "$HGQ_VENV/bin/python" "$HERE/compare.py" --dataset "$DATASET"
    exit 0
fi
TF_USE_LEGACY_KERAS=1 "$ROOT/qkeras/bin/python" "$HERE/train_qkeras.py" --dataset "$DATASET" --bits $BITS \
    --seeds $SEEDS
"$HGQ_VENV/bin/python" "$HERE/compare.py" --dataset "$DATASET"
