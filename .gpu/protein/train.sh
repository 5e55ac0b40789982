#!/usr/bin/env bash
# GPU training of the backbone flow model (sciddiff.protein.train), from the repo root:
#   bash .gpu/protein/train.sh "$OUT/protein" 480
# Reads only .gpu/protein/chains.pt (made on the CPU by `sciddiff backbone prepare`); needs torch and numpy.
# Resumes if OUT_DIR/state.pt exists. Bring back OUT_DIR/model.pt (EMA weights, ~2 MB) and OUT_DIR/log.csv
# (and OUT_DIR/state.pt, ~6 MB, to resume later). PROTEIN_EXTRA="--ss-condition" trains the secondary-structure
# conditioned variant (chains.pt must hold the `ss` labels: prepared after 2026-11-27 night).
set -euo pipefail
OUT_DIR=${1:?usage: train.sh OUT_DIR [SECONDS]}
SECONDS_BUDGET=${2:-480}
PYTHONUNBUFFERED=1 python3 -m sciddiff.protein.train --chains .gpu/protein/chains.pt --out "$OUT_DIR" \
  --max-seconds "$SECONDS_BUDGET" --batch-residues 16384 --lr 1e-3 --ckpt-seconds 120 --log-every 50 --val-every 500 \
  ${PROTEIN_EXTRA:-}
