"""Benchmarks, run as ``python -m sciddiff.bench core`` (or ``sciddiff bench core``). They measure; results with the exact command
go in docs/benchmarks.md. Timings use the median of repeats, the compared functions taking turns within each repeat, and
ratios are the median of each repeat's own ratio.

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


def _interleaved_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Each function's times over `repeats` rounds, the functions taking turns within each round: a machine that
    speeds up or slows down during the run (load, clocks) then moves all of them alike, not only the one timed last."""
    for fn in fns.values():
        fn()  # warm-up (table builds, allocator)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _median_time(fn, repeats: int) -> float:
    return statistics.median(_interleaved_times({"fn": fn}, repeats)["fn"])


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
            def ref(make_ref=make_ref, ref_steps=ref_steps):
                sched = make_ref()
                sched.set_timesteps(ref_steps)
                y = x
                for t in sched.timesteps:
                    y = sched.step(model(y, t), t, y).prev_sample
                return y

            fns = {"model": lambda steps=steps: [model(x, None) for _ in range(steps)], "ours": ours}
            times = _interleaved_times(fns | ({"ref": ref} if diffusers is not None else {}), repeats)
            t_model, t_ours = (statistics.median(times[k]) / steps for k in ("model", "ours"))
            row = {"model_us_per_call": 1e6 * t_model, "sciddiff_us_per_step": 1e6 * t_ours,
                   "sciddiff_overhead_us_per_step": 1e6 * (t_ours - t_model)}
            if diffusers is not None:
                t_ref = statistics.median(times["ref"]) / steps
                # the ratio of each round's overheads (the three timed back to back), its median over the rounds;
                # a round whose overhead comes out negative (noise above it: a busy machine) gives no ratio
                ratios = [(o - m) / (r - m) for m, o, r in zip(times["model"], times["ours"], times["ref"])
                          if min(o, r) > m]
                row.update({"diffusers_us_per_step": 1e6 * t_ref, "diffusers_overhead_us_per_step": 1e6 * (t_ref - t_model),
                            "overhead_ratio_sciddiff_over_diffusers": statistics.median(ratios) if ratios else None,
                            "overhead_ratio_rounds": len(ratios)})
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
