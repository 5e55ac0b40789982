"""Chunk latency of the shipped PushT policies against their 2026-11-28 CPU inference, in one process.

"Before" rebuilds the frozen U-Net as it was until 2026-12-03 (float32 convolutions as matmuls, PyTorch's own
ConvTranspose1d, FiLM computed per call) with the then-default sampler (state: DDIM trailing 8; image: DPM-Solver++ 6);
"shipped" is `DiffusionPolicy.freeze_for_cpu` with the checkpoint's settings (int8 weights, FiLM timestep table, and
for the state policy warm-started chunks, timed in their steady state).
All cases are timed round-robin (`sciddiff.policy.latency.measure`), so a machine whose speed drifts slows them alike:
read the ratios. Pin the cores: `taskset -c 0,1 python examples/policy_latency_ab.py --repeats 200`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sciddiff.nn.unet1d import with_matmul_convs
from sciddiff.policy.io import load_policy
from sciddiff.policy.latency import measure
from sciddiff.policy.policy import DiffusionPolicy

REPO = Path(__file__).resolve().parents[1]
BEFORE = {"pusht_state.pt": ("ddim_trailing", 8), "pusht_image.pt": ("dpmpp_2m", 6)}


def frozen_as_before(policy: DiffusionPolicy) -> DiffusionPolicy:
    policy.config.warm_start_t = 0  # every chunk from noise, as then
    fast = with_matmul_convs(policy.unet.eval())
    for level, original in zip(fast.up, policy.unet.up):
        level[2] = original[2]  # the transposed convolution as PyTorch runs it
    return policy.freeze_for_cpu(unet=fast)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=200, help="timed chunks per setting (default 200)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = p.parse_args()
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    cases, labels = [], []
    for name, (sampler, steps) in BEFORE.items():
        path = REPO / "data" / "policy" / name
        shipped = load_policy(path).freeze_for_cpu()
        c = shipped.config
        cases += [(frozen_as_before(load_policy(path)), sampler, steps), (shipped, None, None)]
        labels += [f"{name} before (float32, {sampler} {steps})",
                   f"{name} shipped ({c.cpu_weights}, {c.sampler} {c.num_inference_steps}"
                   + (f", warm from t <= {c.warm_start_t})" if c.warm_start_t else ")")]
    results = measure(cases, args.repeats)
    for i, (label, (lo, med)) in enumerate(zip(labels, results)):
        ratio = f", {med / results[i - 1][1]:.2f}x before" if i % 2 else ""
        print(f"{label}: median {med * 1e3:.2f} ms, min {lo * 1e3:.2f} ms{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
