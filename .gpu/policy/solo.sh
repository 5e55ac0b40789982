#!/bin/bash
# The state policy alone on one GPU, in one call (run from the repo root; carry .gpu/policy):
#   OUT=$OUT bash .gpu/policy/solo.sh [MAIN_SECONDS]
# 1. the throughput anchor, an eager loop at batch 256 (45 s), then eager at batch 1024 (30 s): the baselines,
#    measured in the same call on the same card;
# 2. a state policy trained from scratch for MAIN_SECONDS (default 380, torch.compile included) at batch 1024 with
#    torch.compile and CUDA graphs (--compile-mode reduce-overhead; the trainer falls back to eager on a compiler error):
#    the "state goal within one 10-minute GPU run". Its policy comes back as policy_solo.tar for a CPU evaluation
#    here (sciddiff policy eval --checkpoint policy_solo/policy.pt --episodes 500 ...).
# Every run's log.csv (steps/s and samples/s per row) comes back as throughput_<name>.csv.
# CPU smoke test (mkdir $OUT first): OUT=/tmp/t SOLO_BASE_SECONDS=3 SOLO_LOG_EVERY=2 SOLO_EXTRA="--threads 1" SOLO_COMPILE= bash .gpu/policy/solo.sh 8
set -u
MAIN=${1:-380}
BASE=${SOLO_BASE_SECONDS:-45}
export PYTHONUNBUFFERED=1
DATA=.gpu/policy/pusht_completed_state.npz
[ -f "$DATA" ] || DATA=.gpu/policy/pusht_state.npz
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "data: $DATA"
run() {  # name, seconds, options
    local name=$1 seconds=$2; shift 2
    rm -rf /tmp/solo_$name
    python3 -m sciddiff.policy.train --data $DATA --obs-type state --out /tmp/solo_$name --max-seconds $seconds \
        --log-every ${SOLO_LOG_EVERY:-250} --val-episodes 4 --seed 0 ${SOLO_EXTRA:-} "$@" \
        > $OUT/throughput_$name.log 2>&1
    echo "$name: exit $?, last row: $(tail -n 1 /tmp/solo_$name/log.csv 2>/dev/null)"
    cp /tmp/solo_$name/log.csv $OUT/throughput_$name.csv 2>/dev/null
}
run eager_b256 $BASE --batch-size 256 --checkpoint-every 100000
run eager_b1024 $((BASE * 2 / 3)) --batch-size 1024 --checkpoint-every 100000
run solo $MAIN --batch-size 1024 ${SOLO_COMPILE---compile --compile-mode reduce-overhead} --checkpoint-every 60 \
    --sampler ddim_trailing --inference-steps 20 --ddim-eta inf --cpu-weights int8
mkdir -p /tmp/solo_solo
tr '\r' '\n' < $OUT/throughput_solo.log | grep -v '^train ' > /tmp/solo_solo/train.log
(cd /tmp && rm -f solo_solo/train_state.pt && rm -rf policy_solo && mv solo_solo policy_solo && tar cf $OUT/policy_solo.tar policy_solo)
ls -la $OUT
