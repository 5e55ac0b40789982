#!/bin/bash
# One GPU call trains every sciddiff model concurrently (run from the repo root on the device machine).
#   OUT=... bash .gpu/run_all.sh SECONDS
# Carry the four data files, made on the CPU by `bash .gpu/prepare.sh` (docs/training.md):
# .gpu/policy/pusht_completed_{state,image}.npz .gpu/protein/chains.pt .gpu/dock/train.pt (carry the folders .gpu/policy
# .gpu/protein .gpu/dock). Returns 7 files (each < 16 MiB) under $OUT: policy_{state,state_ft,image}.tar,
# protein.tar, dock.tar, dock_optimizer.tar, logs.tar ({policy,protein,dock,gpu}.txt). The backbone and docking runs
# continue the shipped models (PROTEIN_EXTRA / DOCK_EXTRA override; the dock run resumes .gpu/dock/run/ when carried).
# CPU smoke test (blocks the packages the GPU machine lacks):
#   PYTHONPATH=.gpu/gpusim OUT=/tmp/smoke POLICY_COMPILE= POLICY_EXTRA="--threads 1" bash .gpu/run_all.sh 20
set -u
S=${1:-420}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader || true
python3 -c "import torch, e3nn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
missing=""
for f in .gpu/policy/pusht_completed_state.npz .gpu/policy/pusht_completed_image.npz .gpu/protein/chains.pt .gpu/dock/train.pt; do
    [ -f "$f" ] || missing="$missing $f"
done
[ -z "$missing" ] || echo "WARNING: not carried (bash .gpu/prepare.sh makes them; the runs that need them will fail):$missing"
( OUT="$OUT" POLICY_SECONDS=$S bash .gpu/policy/run_gpu.sh > "$OUT/logs/policy.txt" 2>&1; echo $? > "$OUT/logs/rc_policy" ) &
p1=$!
( PROTEIN_EXTRA=${PROTEIN_EXTRA---init data/protein/backbone_flow.pt --lr 3e-4 --warmup 100} \
  bash .gpu/protein/train.sh /tmp/sd_protein/protein "$S" > "$OUT/logs/protein.txt" 2>&1; echo $? > "$OUT/logs/rc_protein";
  cd /tmp/sd_protein && tar cf "$OUT/protein.tar" protein ) &
p2=$!
( OUT=/tmp/sd_dock DOCK_EXTRA=${DOCK_EXTRA---init data/dock/score_model.pt --lr 5e-4} bash .gpu/dock/gpu_train.sh "$S" > "$OUT/logs/dock.txt" 2>&1; echo $? > "$OUT/logs/rc_dock";
  cd /tmp/sd_dock && tar cf "$OUT/dock.tar" --exclude optimizer.pt dock && tar cf "$OUT/dock_optimizer.tar" dock/optimizer.pt ) &
p3=$!
( while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done > "$OUT/logs/gpu.txt" 2>&1 ) &
mon=$!
wait $p1 $p2 $p3
kill $mon 2>/dev/null
ls -la "$OUT" "$OUT/logs"
for f in "$OUT"/logs/*.txt; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^ *$' | tail -n 8; done
codes="policy=$(cat "$OUT/logs/rc_policy" 2>/dev/null || echo ?) protein=$(cat "$OUT/logs/rc_protein" 2>/dev/null || echo ?) dock=$(cat "$OUT/logs/rc_dock" 2>/dev/null || echo ?)"
(cd "$OUT" && tar cf logs.tar logs && rm -r logs)
ls -la "$OUT"
echo "exit codes: $codes"
[ "$codes" = "policy=0 protein=0 dock=0" ]  # the call's status: non-zero when any run failed
