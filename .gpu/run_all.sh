#!/bin/bash
# One GPU call trains every sciddiff model concurrently (run from the repo root on the device machine; carry .gpu).
#   OUT=... bash .gpu/run_all.sh SECONDS
# Returns 8 files (each < 16 MiB) under $OUT: policy_state.tar, policy_image.tar, protein.tar, dock.tar, dock_optimizer.tar,
# logs/{policy,protein,dock}.txt. CPU smoke test (blocks the packages the GPU machine lacks; see docs/training.md):
#   OUT=/tmp/smoke POLICY_COMPILE= bash .gpu/run_all.sh 20
set -u
S=${1:-420}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader || true
python3 -c "import torch, e3nn, torch_geometric; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
( OUT="$OUT" POLICY_SECONDS=$S bash .gpu/policy/run_gpu.sh > "$OUT/logs/policy.txt" 2>&1 ) &
p1=$!
( bash .gpu/protein/train.sh /tmp/sd_protein/protein "$S" > "$OUT/logs/protein.txt" 2>&1;
  cd /tmp/sd_protein && tar cf "$OUT/protein.tar" protein ) &
p2=$!
( OUT=/tmp/sd_dock bash .gpu/dock/gpu_train.sh "$S" > "$OUT/logs/dock.txt" 2>&1;
  cd /tmp/sd_dock && tar cf "$OUT/dock.tar" --exclude optimizer.pt dock && tar cf "$OUT/dock_optimizer.tar" dock/optimizer.pt ) &
p3=$!
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) &
mon=$!
wait $p1 $p2 $p3
kill $mon 2>/dev/null
ls -la "$OUT" "$OUT/logs"
for f in "$OUT"/logs/*.txt; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^ *$' | tail -n 6; done
