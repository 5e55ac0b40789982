"""CPU latency of one action chunk (batch 1), without gymnasium: `python -m sciddiff.policy.latency data/policy/*.pt`.

Pin the process to the cores you mean to measure (e.g. `taskset -c 0,1 ... --threads 2`). Reports, per checkpoint and
sampler setting, the min and median wall time over `--repeats` calls, for the eager and the TorchScript-frozen U-Net.
The observation is a fixed, plausible PushT state (or a blank frame for image policies): the cost does not depend on it.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from sciddiff.policy import pusht
from sciddiff.policy.io import load_policy
from sciddiff.policy.policy import DiffusionPolicy


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def example_obs(policy: DiffusionPolicy) -> dict[str, torch.Tensor]:
    c = policy.config
    state = np.array([200.0, 150.0, 300.0, 280.0, 1.0])
    if c.obs_type == "state":
        return {"state": torch.as_tensor(pusht.state_features(state)).expand(1, c.n_obs_steps, -1)}
    return {"agent_pos": torch.as_tensor(state[:2], dtype=torch.float32).expand(1, c.n_obs_steps, 2),
            "image": torch.full((1, c.n_obs_steps, 3, c.image_size, c.image_size), 255, dtype=torch.uint8)}


def measure(policy: DiffusionPolicy, sampler: str | None, steps: int | None, repeats: int) -> tuple[float, float]:
    obs, gen = example_obs(policy), torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(5):
            policy.predict_action(obs, generator=gen, sampler=sampler, steps=steps)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.predict_action(obs, generator=gen, sampler=sampler, steps=steps)
            times.append(time.perf_counter() - t0)
    return float(np.min(times)), float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--settings", default="default,ddim:8,dpmpp_2m:5,dpmpp_2m:4",
                   help="comma-separated sampler:steps ('default' = the policy's own)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"cpu": cpu_name(), "threads": args.threads,
                      "torch": str(torch.__version__)}))
    for path in args.checkpoints:
        policy = load_policy(path)
        for frozen in (False, True):
            if frozen:
                policy.freeze_for_cpu()
            for setting in args.settings.split(","):
                sampler, steps = (None, None) if setting == "default" else setting.split(":")
                lo, med = measure(policy, sampler, int(steps) if steps else None, args.repeats)
                print(json.dumps({"checkpoint": path, "frozen": frozen,
                                  "sampler": sampler or policy.config.sampler,
                                  "steps": int(steps) if steps else policy.config.num_inference_steps,
                                  "min_ms": round(lo * 1e3, 2), "median_ms": round(med * 1e3, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
