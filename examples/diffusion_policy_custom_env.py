"""Diffusion Policy on your own gymnasium task, end to end: demonstrations -> zarr -> training -> closed-loop episodes.

    python examples/diffusion_policy_custom_env.py                        # MountainCarContinuous-v0, ~30 s on 2 idle cores
    python examples/diffusion_policy_custom_env.py --steps 2000 --out runs/policy/mountaincar

The task here is gymnasium's MountainCarContinuous-v0 (observation: position, velocity; action: one force in [-1, 1]);
any env with a vector observation and a Box action works the same way. The three steps, each usable on its own:
1. demonstrations: a scripted controller (push along the velocity, which pumps energy into the swing) writes one
   episode per seed into a zarr replay buffer (`ReplayBuffer.add_episode({"state": (T, D), "action": (T, A)})`);
2. training: `sciddiff policy train --task generic --env MountainCarContinuous-v0 --data OUT/demos.zarr --out OUT/run
   --steps N` (the same trainer as PushT's: EMA, resumable, DDP under torchrun; the state and action vectors are used
   as they are, min-max normalised);
3. evaluation: `sciddiff policy eval --checkpoint OUT/run/policy.pt --episodes 20 --seed 1000` (the env was recorded
   in the policy), here through the Python API with a video of the first episode.
Success = the env terminated (the car reached the flag) before its 999-step limit; the return is gymnasium's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ENV_ID = "MountainCarContinuous-v0"
VAL_EPISODES = 2  # demonstrations held out for the validation loss


def scripted_action(obs: np.ndarray) -> np.ndarray:
    """Push along the velocity (from rest: towards the near slope), the textbook energy-pumping controller."""
    position, velocity = obs
    direction = np.sign(velocity) if abs(velocity) > 1e-6 else (-1.0 if position > -0.5 else 1.0)
    return np.array([direction], dtype=np.float32)


def write_demos(path: Path, episodes: int, seed: int) -> dict:
    """One scripted episode per seed seed, seed + 1, ... into a new zarr replay buffer at `path`."""
    import gymnasium as gym

    from sciddiff.policy.replay_buffer import ReplayBuffer

    env, buffer, reached = gym.make(ENV_ID), ReplayBuffer.create(path, overwrite=True), 0
    for s in range(seed, seed + episodes):
        obs, _ = env.reset(seed=s)
        states, actions, done = [], [], False
        while not done:
            action = scripted_action(obs)
            states.append(np.asarray(obs, dtype=np.float32))
            actions.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            done, reached = terminated or truncated, reached + bool(terminated)
        buffer.add_episode({"state": np.stack(states), "action": np.stack(actions)})
    env.close()
    return {"episodes": episodes, "steps": buffer.n_steps, "reached_goal": reached}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/policy/mountaincar"),
                        help="folder for demos.zarr, run/ and the rollout video (default out/policy/mountaincar)")
    parser.add_argument("--demos", type=int, default=30, help="scripted demonstration episodes (default 30)")
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600, ~25 s on 2 idle cores)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default 10)")
    parser.add_argument("--seed", type=int, default=0,
                        help="demos use seeds 10000 + seed.., evaluation seed.. (unseen starts), training this seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training and the episodes (default: 2 on two idle cores, else 1)")
    args = parser.parse_args(argv)
    from sciddiff.cli import UserError, check_output_path, idle_threads, interrupted_status, options_below
    from sciddiff.policy.cli import format_metrics
    from sciddiff.policy.evaluate import evaluate_policy, task_adapter
    from sciddiff.policy.io import load_policy
    from sciddiff.policy.train import add_arguments, train

    try:
        if bad := options_below(args, 1, "steps", "episodes", "threads"):
            raise UserError(f"{bad[0]} must be at least 1")
        if args.demos < VAL_EPISODES + 1:
            raise UserError(f"--demos must be at least {VAL_EPISODES + 1} (the run holds out {VAL_EPISODES} for "
                            "validation)")
        if args.seed < 0:
            raise UserError("--seed must be >= 0")
        check_output_path(args.out, folder=True)
        demos = write_demos(args.out / "demos.zarr", args.demos, 10000 + args.seed)
        print(f"demonstrations: {demos['episodes']} episodes, {demos['steps']} steps, goal reached in "
              f"{demos['reached_goal']}", flush=True)
        # the trainer's own default is torch's (every core): beside a busy process 2-30x slower than one thread
        threads = args.threads or idle_threads()
        # a small U-Net and batch: this task is two numbers in, one out
        train_args = add_arguments(argparse.ArgumentParser()).parse_args(
            ["--task", "generic", "--env", ENV_ID, "--data", str(args.out / "demos.zarr"), "--out", str(args.out / "run"),
             "--steps", str(args.steps), "--batch-size", "64", "--lr", "3e-4",
             "--warmup-steps", str(min(50, args.steps // 4)), "--down-dims", "32,64",
             "--val-episodes", str(VAL_EPISODES), "--inference-steps", "10", "--seed", str(args.seed),
             "--log-every", "100", "--threads", str(threads)])
        policy = load_policy(train(train_args)["policy"])
        adapter = task_adapter(policy.config)
        metrics = evaluate_policy(policy, adapter, args.episodes, args.seed, video_path=args.out / "rollout.mp4")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: training has saved its state, the same command resumes it
        return interrupted_status(err)
    print(format_metrics(metrics))
    print(f"rollout video: {args.out / 'rollout.mp4'}")
    return 0


if __name__ == "__main__":
    from sciddiff.cli import sigterm_as_interrupt

    with sigterm_as_interrupt():  # a scheduler's SIGTERM stops it as Ctrl-C does (saved; status 143)
        sys.exit(main())
