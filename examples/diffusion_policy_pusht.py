"""Diffusion Policy on PushT: watch a trained policy push the T into its target.

    python examples/diffusion_policy_pusht.py                      # shipped state policy, 5 episodes, writes a GIF
    python examples/diffusion_policy_pusht.py --episodes 100 --seed 0 --metrics-json out/policy/metrics.json
    python examples/diffusion_policy_pusht.py --obs-type image     # the image (96x96 pixels) policy
    python examples/diffusion_policy_pusht.py --inference-steps 40  # more denoising steps (2x the time)
    python examples/diffusion_policy_pusht.py --video out/policy/rollout.mp4  # the rollout as an H.264 MP4
    python examples/diffusion_policy_pusht.py --train              # train from the zarr demos first (CPU: slow)

Metrics, per episode then averaged: max coverage of the goal; max reward = min(coverage / 0.95, 1) (the paper's and
LeRobot's score); success = max coverage > 0.95. `seconds_per_action_chunk` is one 8-action chunk for one observation
on the CPU. Episodes start from gym-pusht seeds S, S+1, ... (not the paper's legacy seeds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sciddiff.cli import (UserError, check_output_path, idle_threads, interrupted_status, options_below,
                          options_not_positive, sigterm_as_interrupt)
from sciddiff.policy.cli import SHIPPED, check_seeds, check_suffix, format_metrics, load_checkpoint_or_fail
from sciddiff.policy.evaluate import evaluate_pusht
from sciddiff.policy.runner import VIDEO_SUFFIXES
from sciddiff.train.checkpoint import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5, help="number of episodes (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="first env seed; episodes use seed, seed+1, ...")
    parser.add_argument("--metrics-json", type=Path, default=None, help="write the metrics JSON here")
    parser.add_argument("--obs-type", choices=("state", "image"), default=None,
                        help="which shipped policy (default state; with --checkpoint it must match that policy's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="policy file (default: shipped in data/policy)")
    parser.add_argument("--inference-steps", type=int, default=None, metavar="K",
                        help="denoising steps (default: the policy's own, 20 for the shipped ones; 40 take twice the chunk "
                             "time, docs/policy.md)")
    parser.add_argument("--video", "--gif", dest="video", type=Path, default=None, metavar="GIF|MP4",
                        help="video of the first episode, .gif or .mp4 (H.264); default "
                             "out/policy/pusht_<obs-type>_rollout.gif")
    parser.add_argument("--plot", type=Path, default=None, help="max-coverage histogram and fraction finished by "
                        "step (default out/policy/pusht_<obs-type>_episodes.png)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the episodes (default: 2 on two idle cores, else 1)")
    parser.add_argument("--train", action="store_true",
                        help="train a policy from the zarr demonstrations first, then evaluate it")
    parser.add_argument("--train-seconds", type=float, default=1800, help="training budget with --train")
    parser.add_argument("--train-out", type=Path, default=Path("runs/policy/example"), help="run directory of --train")
    args = parser.parse_args(argv)
    given_obs_type, args.obs_type = args.obs_type, args.obs_type or "state"
    args.video = args.video or Path(f"out/policy/pusht_{args.obs_type}_rollout.gif")  # a state and an image run side
    args.plot = args.plot or Path(f"out/policy/pusht_{args.obs_type}_episodes.png")  # by side keep both
    try:
        if bad := options_below(args, 1, "episodes", "inference_steps", "threads"):
            raise UserError(f"{bad[0]} must be at least 1")
        if args.train and options_not_positive(args, "train_seconds"):  # nan would pass `<= 0`: no time limit
            raise UserError("--train-seconds must be a finite number > 0")
        check_seeds(args.seed, args.episodes)
        check_output_path(args.video, option="--video")
        check_output_path(args.plot, option="--plot")
        check_suffix(args.video, VIDEO_SUFFIXES, "--video")
        check_suffix(args.plot, ".png", "--plot")
        if args.metrics_json:
            check_output_path(args.metrics_json, option="--metrics-json")
        checkpoint = args.checkpoint or SHIPPED[args.obs_type]
        if args.train:
            from sciddiff.policy.train import add_arguments, train

            train_args = add_arguments(argparse.ArgumentParser()).parse_args(
                ["--obs-type", args.obs_type, "--out", str(args.train_out), "--max-seconds", str(args.train_seconds),
                 "--batch-size", "64", "--lr", "2e-4", "--seed", str(args.seed),
                 *(["--threads", str(args.threads)] if args.threads else [])])
            checkpoint = Path(train(train_args)["policy"])
        policy = load_checkpoint_or_fail(checkpoint)
        if given_obs_type is not None and given_obs_type != policy.config.obs_type:
            raise UserError(f"--obs-type {given_obs_type} contradicts --checkpoint {checkpoint}, whose policy reads "
                            f"{policy.config.obs_type} observations")
        if policy.config.extra.get("task", "pusht") != "pusht":
            raise UserError(f"{checkpoint} was trained for another task (--task generic); roll it out with "
                            f"`sciddiff policy eval --checkpoint {checkpoint}`")
        if args.inference_steps is not None and args.inference_steps > policy.config.num_train_timesteps:
            raise UserError(f"--inference-steps must be at most {policy.config.num_train_timesteps}")
        torch.set_num_threads(idle_threads() if args.threads is None else args.threads)
        metrics = evaluate_pusht(policy, args.episodes, args.seed, video_path=args.video, steps=args.inference_steps,
                                 plot_path=args.plot)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: training has saved its state, the same command resumes it
        return interrupted_status(err)
    print(format_metrics(metrics))
    print(f"rollout video: {args.video}, episode plot: {args.plot}")
    if args.metrics_json:
        keys = ("mean_max_reward", "mean_max_coverage", "success_rate", "episodes", "seconds_per_action_chunk",
                "seconds_per_action_chunk_min", "sampler", "inference_steps", "torch_threads")
        write_json(args.metrics_json, {k: metrics[k] for k in keys} | {"seed": args.seed, "checkpoint": str(checkpoint)})
    return 0


if __name__ == "__main__":
    with sigterm_as_interrupt():  # a scheduler's SIGTERM stops it as Ctrl-C does (status 143)
        sys.exit(main())
