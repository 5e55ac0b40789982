"""Benchmarks, run as ``python -m sciddiff.bench core`` (or ``sciddiff bench core``). They measure; results with the exact command
go in docs/benchmarks.md. Timings use the median of repeats and report ratios measured in the same run.

core: per-step overhead of sciddiff's DDPM / DDIM / DPM-Solver++ samplers against diffusers' schedulers driving the same tiny
model (a ratio < 1 means sciddiff adds less overhead per step), and IGSO(3) sampling / score throughput.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (table builds, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_core(repeats: int = 7) -> dict:
    from sciddiff.core import DiscreteSchedule, sample_ddim, sample_ddpm, sample_dpmpp_2m, so3

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    model = lambda x, t, **_: net(x)  # noqa: E731
    x = torch.randn(1, 16, 2)
    results: dict = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"}
    with torch.no_grad():
        try:
            import diffusers
        except ImportError:
            diffusers = None
        cases = {
            "ddpm_100": (lambda: sample_ddpm(model, x, DiscreteSchedule(name="cosine", num_train_timesteps=100)), 100,
                         lambda: diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                                         clip_sample=False), 100),
            "ddim_10": (lambda: sample_ddim(model, x, DiscreteSchedule(name="cosine", num_train_timesteps=100), steps=10), 10,
                        lambda: diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                                        clip_sample=False), 10),
            "dpmpp_2m_10": (lambda: sample_dpmpp_2m(model, x, DiscreteSchedule(name="cosine", num_train_timesteps=100), steps=10),
                            10, lambda: diffusers.DPMSolverMultistepScheduler(num_train_timesteps=100,
                                                                              beta_schedule="squaredcos_cap_v2"), 10),
        }
        for name, (ours, steps, make_ref, ref_steps) in cases.items():
            t_model = _median_time(lambda: [model(x, None) for _ in range(steps)], repeats) / steps
            t_ours = _median_time(ours, repeats) / steps
            row = {"model_us_per_call": 1e6 * t_model, "sciddiff_us_per_step": 1e6 * t_ours,
                   "sciddiff_overhead_us_per_step": 1e6 * (t_ours - t_model)}
            if diffusers is not None:
                def ref():
                    sched = make_ref()
                    sched.set_timesteps(ref_steps)
                    y = x
                    for t in sched.timesteps:
                        y = sched.step(model(y, t), t, y).prev_sample
                    return y
                t_ref = _median_time(ref, repeats) / steps
                row.update({"diffusers_us_per_step": 1e6 * t_ref, "diffusers_overhead_us_per_step": 1e6 * (t_ref - t_model),
                            # a negative overhead means the machine's noise exceeded it (a busy machine): no ratio
                            "overhead_ratio_sciddiff_over_diffusers": (t_ours - t_model) / (t_ref - t_model)
                            if min(t_ours, t_ref) > t_model else None})
            results[name] = row
        n = 100_000
        sigma = torch.rand(n, dtype=torch.float64) * 1.5 + 0.03
        t_sample = _median_time(lambda: so3.sample_igso3(sigma), repeats)
        omega = torch.rand(n, dtype=torch.float64) * 3.1
        t_score = _median_time(lambda: so3.igso3_score(omega, sigma), repeats)
        t0 = time.perf_counter()
        so3._table.cache_clear()
        so3.igso3_score_norm(1.0)
        results["igso3"] = {"samples_per_s": n / t_sample, "scores_per_s": n / t_score,
                            "table_build_s": time.perf_counter() - t0}
    return results


BENCHES = {"core": bench_core}


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("name", choices=sorted(BENCHES), metavar="NAME", help="the benchmark: " + ", ".join(sorted(BENCHES)))
    p.add_argument("--repeats", type=int, default=7,
                   help="timed repetitions, at least 3; the median is reported (default 7)")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.repeats < 3:  # a median of fewer is one noisy sample; the overhead ratios need it
        print("error: --repeats must be at least 3", file=sys.stderr)
        return 2
    print(json.dumps(BENCHES[args.name](args.repeats), indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark and print JSON (see docs/benchmarks.md)",
                              description=__doc__.split("\n\n")[0])
    _add_arguments(p).set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    return _run(_add_arguments(argparse.ArgumentParser(prog="python -m sciddiff.bench",
                                                       description=__doc__.split("\n\n")[0])).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
