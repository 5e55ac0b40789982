#!/bin/bash
# Train the docking score model on the GPU machine (run from the repo root; $OUT is brought back).
#   bash .gpu/dock/gpu_train.sh [SECONDS]
# Resumes when .gpu/dock/run/ holds state.pt + optimizer.pt from an earlier call (copy $OUT/dock there); else
# DOCK_EXTRA="--init data/dock/score_model.pt --lr 5e-4" continues the shipped weights with a fresh optimizer.
# DOCK_DATA=.gpu/dock/train_synthetic.pt trains on the split plus synthetic complexes (.gpu/prepare.sh, SYNTHETIC=N).
set -eo pipefail  # the trainer's status, not tee's
export PYTHONUNBUFFERED=1
SECS=${1:-450}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
mkdir -p "$OUT/dock"
if [ -f .gpu/dock/run/state.pt ]; then cp .gpu/dock/run/{state.pt,optimizer.pt,log.csv} "$OUT/dock/"; fi
python3 -m sciddiff.dock.train --data "${DOCK_DATA:-.gpu/dock/train.pt}" --out "$OUT/dock" --max-seconds "$SECS" \
    --batch-size 32 --lr 1e-3 --save-every 120 ${DOCK_EXTRA:-} 2>&1 | tee "$OUT/dock/train_stdout.txt"
