#!/bin/bash
# Solo training throughput of the state policy on one GPU, one configuration at a time (run from the repo root):
#   OUT=$OUT bash .gpu/policy/throughput.sh [SECONDS]      # carry .gpu/policy/pusht_completed_state.npz
# Each configuration trains SECONDS (default 60) after its compile; steps/s and samples/s per log row land in
# $OUT/throughput_<name>.csv, the last row of each is printed. The anchor: an eager loop on one H200,
# 27 steps/s at batch 256 = 6.9k samples/s. CPU smoke test: OUT=/tmp/t THROUGHPUT_EXTRA="--threads 1" bash .gpu/policy/throughput.sh 3
set -u
S=${1:-60}
export PYTHONUNBUFFERED=1
DATA=.gpu/policy/pusht_completed_state.npz
[ -f "$DATA" ] || DATA=.gpu/policy/pusht_state.npz
run() {  # name, options
    local name=$1; shift
    rm -rf /tmp/tp_$name
    python3 -m sciddiff.policy.train --data $DATA --obs-type state --out /tmp/tp_$name --max-seconds $S \
        --log-every ${THROUGHPUT_LOG_EVERY:-250} --checkpoint-every 100000 --val-episodes 4 ${THROUGHPUT_EXTRA:-} "$@" \
        > $OUT/throughput_$name.log 2>&1
    cp /tmp/tp_$name/log.csv $OUT/throughput_$name.csv 2>/dev/null
    echo "$name: $(tail -n 1 $OUT/throughput_$name.csv 2>/dev/null)"
}
nvidia-smi --query-gpu=name --format=csv,noheader || true
run eager_b256 --batch-size 256
run eager_b1024 --batch-size 1024
[ -n "${THROUGHPUT_NO_COMPILE:-}" ] || run compile_b1024 --batch-size 1024 --compile
[ -n "${THROUGHPUT_NO_COMPILE:-}" ] || run cudagraphs_b1024 --batch-size 1024 --compile --compile-mode reduce-overhead
