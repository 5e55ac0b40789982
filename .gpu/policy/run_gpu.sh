#!/bin/bash
# Train the PushT state and image diffusion policies concurrently on one GPU (run from the repo root).
# Needs only python3 + torch + numpy + tqdm there; data = .gpu/policy/pusht_{state,image}.npz, made on the CPU with
#   sciddiff policy prepare --obs-type state --out .gpu/policy/pusht_state.npz   (and --obs-type image)
# Returns 2 files: $OUT/policy_state.tar and $OUT/policy_image.tar (policy.pt + policy.json + log.csv + train.log each;
# the state tar also holds latency.log: CPU ms per action chunk on 2 pinned cores).
# POLICY_SECONDS: training seconds per process after data loading (default 400; the whole script takes ~+40 s).
# POLICY_STATE_DATA: the state run's data (default .gpu/policy/pusht_completed_state.npz when present: the human demos
#   completed by the planner, which lifted the CPU policy's success 62 -> 69%; made with
#   sciddiff policy demos --complete ../shared/data/pusht/pusht_cchi_v7_replay.zarr --out runs/policy/completed.zarr --no-images --max-steps 150
#   sciddiff policy prepare --zarr runs/policy/completed.zarr --obs-type state --out .gpu/policy/pusht_completed_state.npz)
# POLICY_STATE_EXTRA: extra options for the state run only, e.g. the scripted demonstrations made on the CPU with
#   sciddiff policy demos --out D.zarr --episodes 100 --seed 1000000 --no-images && sciddiff policy prepare --zarr D.zarr ...
#   POLICY_STATE_EXTRA="--extra-data .gpu/policy/scripted_a_state.npz .gpu/policy/scripted_b_state.npz"
# CPU smoke test: OUT=/tmp/o POLICY_SECONDS=5 POLICY_COMPILE= POLICY_LOG_EVERY=2 POLICY_EXTRA="--threads 1" bash .gpu/policy/run_gpu.sh
set -u
OUT=${OUT:-/tmp/policy_out}
BUDGET=${POLICY_SECONDS:-400}
WORK=$(mktemp -d /tmp/policy_gpu.XXXX)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# CPU latency of the shipped (CPU-trained) state policy on 2 pinned cores, before the GPU work starts (~10 s)
pin() { if command -v taskset >/dev/null; then taskset -c 0,1 "$@"; else "$@"; fi; }
pin python3 -m sciddiff.policy.latency data/policy/pusht_state.pt --threads 2 --repeats 50 \
    --settings default,ddim:8,dpmpp_2m:4 > $WORK/latency.log 2>&1
cat $WORK/latency.log
common="--max-seconds $BUDGET --checkpoint-every 60 --log-every ${POLICY_LOG_EVERY:-500} ${POLICY_COMPILE---compile} --val-episodes 4 --seed 0 --eval-every 2000 --sampler dpmpp_2m --inference-steps 5 ${POLICY_EXTRA:-}"
STATE_DATA=${POLICY_STATE_DATA:-.gpu/policy/pusht_completed_state.npz}
[ -f "$STATE_DATA" ] || STATE_DATA=.gpu/policy/pusht_state.npz
echo "state data: $STATE_DATA"
python3 -m sciddiff.policy.train --data $STATE_DATA --obs-type state --out $WORK/policy_state \
    --state $WORK/state_train.pt --batch-size 1024 $common ${POLICY_STATE_EXTRA:-} > $WORK/state.log 2>&1 &
pid_state=$!
python3 -m sciddiff.policy.train --data .gpu/policy/pusht_image.npz --obs-type image --out $WORK/policy_image \
    --state $WORK/image_train.pt --batch-size 512 $common > $WORK/image.log 2>&1 &
pid_image=$!
wait $pid_state; rc_state=$?
wait $pid_image; rc_image=$?
pin python3 -m sciddiff.policy.latency $WORK/policy_state/policy.pt $WORK/policy_image/policy.pt --threads 2 \
    --repeats 50 --settings default >> $WORK/latency.log 2>&1
tail -n 4 $WORK/latency.log
cp $WORK/latency.log $WORK/policy_state/latency.log 2>/dev/null
for kind in state image; do
    mkdir -p $WORK/policy_$kind
    tr '\r' '\n' < $WORK/$kind.log | grep -v '^train ' > $WORK/policy_$kind/train.log
    tail -n 4 $WORK/policy_$kind/train.log
    (cd $WORK && tar cf $OUT/policy_$kind.tar policy_$kind)
done
echo "exit codes: state=$rc_state image=$rc_image"
ls -la $OUT
