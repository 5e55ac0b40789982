"""CPU latency of one action chunk (batch 1), without gymnasium: `python -m sciddiff.policy.latency data/policy/*.pt`.

Pin the process to the cores you mean to measure (e.g. `taskset -c 0,1 ... --threads 2`). Reports, per checkpoint and
sampler setting, the min and median wall time over `--repeats` calls (timed round-robin across all settings), for the
eager U-Net and the TorchScript-frozen one with each `--cpu-weights` precision (float32, int8 weight-only).
The observation is a fixed, plausible PushT state (or a blank frame for image policies): the cost does not depend on it.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sciddiff.policy import pusht
from sciddiff.policy.io import load_policy
from sciddiff.policy.policy import SAMPLERS, DiffusionPolicy, noise_scale_for
from sciddiff.train.checkpoint import json_text


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


def measure(cases: list, repeats: int) -> list[tuple[float, float]]:
    """(min, median) seconds per action chunk (`predict_plan` + `plan_actions`) for each (policy, sampler, steps)
    case, in the steady state: a warm-starting policy (`config.warm_start_t`) gets its previous plan. The cases are
    timed round-robin, one call each in turn, so that a machine whose speed drifts (other tenants, frequency changes)
    slows all of them alike and their ratios stay meaningful."""
    obs = [example_obs(policy) for policy, _, _ in cases]
    gen = torch.Generator().manual_seed(0)
    times = [[] for _ in cases]
    plans = [None] * len(cases)

    def chunk(j: int) -> None:
        policy, sampler, steps = cases[j]
        plans[j] = policy.predict_plan(obs[j], generator=gen, sampler=sampler, steps=steps, previous=plans[j])
        policy.plan_actions(plans[j])

    with torch.inference_mode():
        for _ in range(5):
            for j in range(len(cases)):
                chunk(j)
        for _ in range(repeats):
            for j, t in enumerate(times):
                t0 = time.perf_counter()
                chunk(j)
                t.append(time.perf_counter() - t0)
    return [(float(np.min(t)), float(np.median(t))) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sciddiff.policy.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="policy .pt files")
    p.add_argument("--settings", default="default,ddim:8,dpmpp_2m:5,dpmpp_2m:4",
                   help="comma-separated sampler:steps ('default' = the policy's own)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=100, help="timed chunks per setting (default 100)")
    p.add_argument("--cpu-weights", default="float32,int8", help="comma-separated frozen-U-Net weight precisions")
    p.add_argument("--no-eager", action="store_true", help="skip the eager U-Net")
    p.add_argument("--warm-start-t", default=None, metavar="T[,T...]",
                   help="comma-separated warm-start timesteps to time instead of each policy's own (0 = off; "
                        "chunks are timed in the steady state)")
    p.add_argument("--against-unet1d", default=None, metavar="FILE",
                   help="also time each frozen variant with the CPU inference copy (`with_matmul_convs`, "
                        "`TimestepFiLMTable`) of another version of sciddiff/nn/unet1d.py, e.g. `git show "
                        "REV:sciddiff/nn/unet1d.py > old.py`: a code change's A/B in one process")
    args = p.parse_args(argv)
    from sciddiff.cli import run_command

    return run_command(_time_settings, args)


def _time_settings(args: argparse.Namespace) -> None:
    from sciddiff.cli import UserError, load_or_fail

    if args.threads < 1 or args.repeats < 1:
        raise UserError("--threads and --repeats must be at least 1")
    try:
        pairs = [(None, "") if s == "default" else s.split(":") for s in args.settings.split(",")]
        settings = [(sampler, int(steps) if steps else None) for sampler, steps in pairs]  # "ddpm:": its own steps
        warm = [None] if args.warm_start_t is None else [int(t) for t in args.warm_start_t.split(",")]
    except (ValueError, IndexError):
        raise UserError("--settings takes default or SAMPLER:STEPS, --warm-start-t integers, comma-separated") from None
    if any(sampler not in (None, *SAMPLERS) for sampler, _ in settings):
        raise UserError(f"--settings: samplers are {', '.join(SAMPLERS)}")
    policies = {path: load_or_fail(load_policy, path, "policy checkpoint") for path in args.checkpoints}
    builds = {"": None}  # "": this version's inference copy; else the file's
    if args.against_unet1d is not None:
        builds[args.against_unet1d] = _unet1d_module(args.against_unet1d)
    torch.set_num_threads(args.threads)
    # the vector ISA decides what int8 weights buy (0.51x a float32 call with AVX-512, ~0.7x with AVX2 only)
    print(json_text({"cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
                      "torch": str(torch.__version__)}, indent=None), end="")
    cases, labels = [], []
    for path in args.checkpoints:
        variants = [("eager", "")] * (not args.no_eager) + [(w, b) for w in args.cpu_weights.split(",") for b in builds]
        for variant, build in variants:
            for warm_t in warm:
                policy = copy.deepcopy(policies[path])
                if warm_t is not None:
                    policy.config.warm_start_t = warm_t
                if variant != "eager":
                    policy.config.cpu_weights = variant
                    policy.freeze_for_cpu(_inference_copy(builds[build], policy))
                for sampler, steps in settings:
                    cases.append((policy, sampler, steps))
                    labels.append({"checkpoint": path, "unet": variant + (f" ({build})" if build else ""),
                                   "sampler": sampler or policy.config.sampler,
                                   "steps": policy.denoising_steps(sampler, steps),
                                   "warm_start_t": policy.config.warm_start_t,
                                   "network_calls": policy.chunk_network_calls(sampler, steps),
                                   "ddim_eta": noise_scale_for(policy.config.ddim_eta,
                                                               sampler or policy.config.sampler)})
    for label, (lo, med) in zip(labels, measure(cases, args.repeats)):
        print(json_text({**label, "min_ms": round(lo * 1e3, 2), "median_ms": round(med * 1e3, 2)}, indent=None),
              end="", flush=True)


def _unet1d_module(path: str):
    """Another version of sciddiff/nn/unet1d.py, loaded as a module of its own."""
    import importlib.util

    from sciddiff.cli import UserError

    spec = importlib.util.spec_from_file_location("sciddiff_unet1d_against", path) if Path(path).is_file() else None
    if spec is None:
        raise UserError(f"--against-unet1d: no Python file at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inference_copy(module, policy: DiffusionPolicy):
    """The frozen U-Net's source as `module` builds it (None: this version's, `freeze_for_cpu`'s default)."""
    if module is None:
        return None
    c = policy.config
    unet = copy.deepcopy(policy.unet).eval()
    for sub in unet.modules():  # the other version's classes too, so that their methods match its inference copy
        sub.__class__ = getattr(module, type(sub).__name__, type(sub))
    convs = module.with_matmul_convs(unet, int8_weights=c.cpu_weights == "int8")
    return module.TimestepFiLMTable(convs, c.num_train_timesteps)


if __name__ == "__main__":
    raise SystemExit(main())
