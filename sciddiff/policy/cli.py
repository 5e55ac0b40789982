"""`sciddiff policy prepare|train|demos|eval`: diffusion policies for PushT (and the pieces for other gymnasium tasks)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from sciddiff.cli import UserError, check_output_path, idle_threads, load_or_fail, options_below, print_note

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"state": REPO / "data" / "policy" / "pusht_state.pt", "image": REPO / "data" / "policy" / "pusht_image.pt"}
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed; gymnasium any seed >= 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="diffusion policies: prepare data, train, evaluate on PushT",
                                   description=__doc__)
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    p = sub.add_parser("prepare", help="zarr -> one compressed .npz for training on a machine without zarr",
                       description="Convert a replay buffer into the arrays one policy type trains on.")
    p.add_argument("--zarr", type=Path, default=None, help="replay buffer (default: $SCIDDIFF_DATA/pusht/...zarr)")
    p.add_argument("--obs-type", choices=("state", "image"), required=True)
    p.add_argument("--task", choices=("pusht", "generic"), default="pusht",
                   help="pusht: PushT features from gym-pusht states; generic: data/state and data/action as they "
                        "are (any gymnasium task; state policies)")
    p.add_argument("--obs-keys", nargs="+", default=None, metavar="KEY",
                   help="--task generic: the arrays that make the observation, in order (default: state)")
    p.add_argument("--action-key", default=None, metavar="KEY", help="--task generic: the action array (default: action)")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    p.set_defaults(func=_prepare)

    from sciddiff.policy.train import add_arguments
    p = sub.add_parser("train", help="train a policy (resumable; bf16 + compile on CUDA)",
                       description="Train a diffusion policy; re-running the same command resumes it.")
    add_arguments(p)
    p.set_defaults(func=_train)

    from sciddiff.policy import scripted
    p = sub.add_parser("demos", help="write scripted PushT demonstrations (a sampling-based push planner) to a zarr",
                       description=scripted.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scripted.add_arguments(p)
    p.set_defaults(func=scripted.run_demos)

    p = sub.add_parser("eval", help="closed-loop episodes: mean max reward / coverage, success rate, latency",
                       description="Roll a policy out in gym_pusht/PushT-v0 (or, for a policy trained with --task "
                                   "generic, its gymnasium env) from seeds S, S+1, ...")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="policy .pt (default: the shipped data/policy/pusht_<obs-type>.pt)")
    p.add_argument("--obs-type", choices=("state", "image"), default=None,
                   help="which shipped policy to load (default state; with --checkpoint it must match that policy's)")
    p.add_argument("--episodes", type=int, default=10, help="episodes, one per seed (default 10)")
    p.add_argument("--seed", type=int, default=0, help="first env seed")
    p.add_argument("--batch-size", type=int, default=10, help="episodes run in lockstep (default 10)")
    p.add_argument("--sampler", choices=("ddim", "ddim_trailing", "dpmpp_2m", "ddpm"), default=None, help="override the policy's")
    p.add_argument("--inference-steps", type=int, default=None, help="override the policy's denoising steps")
    p.add_argument("--ddim-eta", type=float, default=None, metavar="ETA",
                   help="override the policy's sampler noise scale: 0 deterministic (ODE), 1 ancestral / SDE (DDIM and "
                        "DPM-Solver++), inf: DDIM re-noising the predicted clean sample at every step")
    p.add_argument("--warm-start-t", type=int, default=None, metavar="T",
                   help="override the policy's warm starts (DDIM): each chunk after the first starts from the previous "
                        "plan noised to the first grid timestep <= T and takes only the remaining steps; 0 = off")
    p.add_argument("--action-steps", type=int, default=None,
                   help="actions executed per chunk before re-planning (default: the policy's, 8 as trained)")
    p.add_argument("--env-obs-type", choices=("state", "environment_state_agent_pos", "pixels_agent_pos"),
                   default=None, help="gym-pusht observation type (default: matches the policy)")
    p.add_argument("--env", default=None, metavar="ID",
                   help="gymnasium env id for a policy trained with --task generic (default: the env recorded at "
                        "training)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="env steps per episode (default: PushT's 300, another env's registered limit; beyond that "
                        "limit returns are not comparable with the env's usual benchmark, a note says so)")
    p.add_argument("--success", choices=("terminated", "survived"), default=None,
                   help="--task generic policies: what counts as success, the episode terminating before the step "
                        "limit (default: a goal reached, e.g. MountainCar's flag) or running to the limit without "
                        "terminating (where termination is failure: CartPole, the locomotion tasks)")
    p.add_argument("--video", "--gif", dest="video", type=Path, default=None, metavar="GIF|MP4",
                   help="write a video of the first episode here: .gif, or .mp4 (H.264)")
    p.add_argument("--metrics-json", type=Path, default=None, help="write the metrics here")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="plot the episodes here: max-coverage (PushT) or return histogram, fraction finished by env "
                        "step")
    p.add_argument("--per-episode", action="store_true", help="include per-episode rows in the metrics")
    p.add_argument("--states-out", type=Path, default=None, metavar="NPZ",
                   help="write the simulator states the episodes visit here (e.g. to train an image encoder on them)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2 on two idle cores, else 1: two threads next to another busy "
                        "process run slower than one)")
    p.add_argument("--eager", action="store_true", help="do not trace/freeze the U-Net for CPU inference")
    p.add_argument("--cpu-weights", choices=("float32", "int8"), default=None,
                   help="the frozen CPU U-Net's convolution weights (default: the policy's; int8 = weight-only "
                        "quantized, ~0.6x the time per network call)")
    p.set_defaults(func=_eval)


def _prepare(args: argparse.Namespace) -> int:
    from sciddiff.policy.data import GenericKeys, default_zarr, prepare_dataset

    check_output_path(args.out)
    keys = GenericKeys.from_options(args.task, args.obs_keys, args.action_key)
    path = prepare_dataset(args.zarr or default_zarr(), args.out, args.obs_type, args.task, keys)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from sciddiff.policy.train import train

    args.command_line = shlex.join(["sciddiff", *sys.argv[1:]])
    train(args)
    return 0


def load_checkpoint_or_fail(path: Path):
    from sciddiff.policy.io import load_policy

    return load_or_fail(load_policy, path, "policy checkpoint")


def check_seeds(seed: int, episodes: int) -> None:
    """Episode seeds seed .. seed + episodes - 1 must all be seeds gymnasium and the runner's torch generator accept:
    checked before the episodes, which would otherwise fail with a traceback inside them."""
    if not 0 <= seed <= MAX_SEED - (episodes - 1):
        raise UserError(f"--seed must be in 0..{MAX_SEED - (episodes - 1)} for {episodes} episode(s) (each episode "
                        f"uses seed + its index), got {seed}")


def check_suffix(path: Path | None, suffixes: str | tuple[str, ...], option: str) -> None:
    """An output file whose format follows from its name must carry one of those suffixes: the video writer picks
    its format by the suffix (failing only after every episode has run), and a PNG under another name misleads."""
    suffixes = (suffixes,) if isinstance(suffixes, str) else suffixes
    if path is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{option} must name a {' or '.join(suffixes)} file, got {path}")


def _eval(args: argparse.Namespace) -> int:
    import torch

    from sciddiff.policy.evaluate import ENV_OBS_TYPES, evaluate_policy, task_adapter
    from sciddiff.policy.policy import fitted_noise_scale, noise_scale_error
    from sciddiff.policy.runner import VIDEO_SUFFIXES, PushTAdapter
    from sciddiff.train.checkpoint import write_json

    if bad := options_below(args, 1, "episodes", "batch_size", "inference_steps", "threads", "max_steps"):
        raise UserError(f"{bad[0]} must be at least 1")
    check_seeds(args.seed, args.episodes)
    for option, path in (("--video", args.video), ("--metrics-json", args.metrics_json),
                         ("--states-out", args.states_out), ("--plot", args.plot)):
        if path is not None:
            check_output_path(path, option=option)
    check_suffix(args.video, VIDEO_SUFFIXES, "--video")
    check_suffix(args.plot, ".png", "--plot")
    torch.set_num_threads(idle_threads() if args.threads is None else args.threads)
    policy = load_checkpoint_or_fail(args.checkpoint or SHIPPED[args.obs_type or "state"])
    if args.obs_type is not None and args.obs_type != policy.config.obs_type:  # --obs-type only picks a shipped policy
        raise UserError(f"--obs-type {args.obs_type} contradicts --checkpoint {args.checkpoint}, whose policy reads "
                        f"{policy.config.obs_type} observations; drop --obs-type (it only picks the shipped policy)")
    try:
        adapter = task_adapter(policy.config, args.env, args.max_steps, args.success)
    except ValueError as err:
        raise UserError(str(err)) from None
    except Exception as err:  # gymnasium: an unknown or uninstallable env id
        raise UserError(f"--env {args.env or policy.config.extra.get('env')}: {str(err).splitlines()[0]}") from None
    pusht_task = isinstance(adapter, PushTAdapter)
    if not pusht_task:  # a policy of other sizes than the env's would crash mid-rollout or act on half its actions
        from sciddiff.policy.train import checked_env

        checked_env(adapter, policy.config.state_dim, policy.config.action_dim)
        if args.video and "rgb_array" not in adapter.render_modes:  # gymnasium would fail once episodes ran
            raise UserError(f"--video: {adapter.env_id} renders no rgb_array frames (its render modes: "
                            f"{', '.join(adapter.render_modes) or 'none'})")
    for note in adapter.length_notes() if pusht_task else ():
        print_note(note)
    for option, value in (("--env-obs-type", args.env_obs_type), ("--states-out", args.states_out)):
        if value is not None and not pusht_task:
            raise UserError(f"{option} is for PushT policies; this one acts in {adapter.env_id}")
    if args.inference_steps is not None and (args.sampler or policy.config.sampler) == "ddpm":
        raise UserError(f"--inference-steps: the ddpm sampler takes all {policy.config.num_train_timesteps} training "
                        "steps; ddim or dpmpp_2m take fewer")
    if args.inference_steps is not None and args.inference_steps > policy.config.num_train_timesteps:
        raise UserError(f"--inference-steps must be at most {policy.config.num_train_timesteps} (the policy's "
                        f"training timesteps)")
    if args.env_obs_type is not None and args.env_obs_type not in ENV_OBS_TYPES[policy.config.obs_type]:
        article = "an" if policy.config.obs_type == "image" else "a"
        raise UserError(f"{article} {policy.config.obs_type} policy reads --env-obs-type "
                        f"{' or '.join(ENV_OBS_TYPES[policy.config.obs_type])}, not {args.env_obs_type}")
    if args.env_obs_type is not None:
        adapter = PushTAdapter(args.env_obs_type, max_steps=adapter.max_steps)
    if args.action_steps is not None:
        c = policy.config
        if not 1 <= args.action_steps <= c.horizon - c.n_obs_steps + 1:
            raise UserError(f"--action-steps must be in 1..{c.horizon - c.n_obs_steps + 1} for this policy")
        c.n_action_steps = args.action_steps
    if args.cpu_weights is not None:
        policy.config.cpu_weights = args.cpu_weights
    if args.ddim_eta is not None:
        if error := noise_scale_error(args.ddim_eta, args.sampler or policy.config.sampler, "--ddim-eta"):
            raise UserError(error)
        policy.config.ddim_eta = args.ddim_eta
    elif args.sampler is not None:
        policy.config.ddim_eta = fitted_noise_scale(policy.config.ddim_eta, args.sampler)
    if args.warm_start_t is not None:
        if not 0 <= args.warm_start_t < policy.config.num_train_timesteps:
            raise UserError(f"--warm-start-t must be in 0..{policy.config.num_train_timesteps - 1}")
        policy.config.warm_start_t = args.warm_start_t
    metrics = evaluate_policy(policy, adapter, args.episodes, args.seed, batch_size=args.batch_size,
                              video_path=args.video, sampler=args.sampler, steps=args.inference_steps,
                              per_episode=args.per_episode, freeze=not args.eager, states_out=args.states_out,
                              plot_path=args.plot)
    if pusht_task:
        metrics["env_obs_type"] = adapter.obs_type
    metrics["checkpoint"] = str(args.checkpoint or SHIPPED[args.obs_type or "state"])
    print(format_metrics(metrics))
    if args.metrics_json:
        write_json(args.metrics_json, metrics)
    return 0


def format_metrics(m: dict) -> str:
    episodes = f"{m['episodes']} episode{'s' if m['episodes'] != 1 else ''} from seed {m['seed']}"
    scores = (f"mean max coverage {m['mean_max_coverage']:.3f}, mean max reward {m['mean_max_reward']:.3f}"
              if "mean_max_coverage" in m else f"{m['env']}: mean return {m['mean_return']:.4g}, mean max reward "
                                                f"{m['mean_max_reward']:.4g}")
    rule = f" ({m['success_rule']})" if "success_rule" in m else ""
    return (f"{episodes}: {scores}, success{rule} {m['success_rate']:.0%}, "
            f"{m['seconds_per_action_chunk'] * 1e3:.1f} ms (min {m['seconds_per_action_chunk_min'] * 1e3:.1f}) per "
            f"{m['action_steps']}-action chunk on {m['torch_threads']} CPU thread(s) ({m['sampler']}, {m['inference_steps']} steps{_eta_note(m)})")


def _eta_note(m: dict) -> str:
    note = f", eta {m['ddim_eta']:g}" if m.get("ddim_eta") and m["sampler"] != "ddpm" else ""
    if m.get("network_calls_per_chunk", m["inference_steps"]) != m["inference_steps"]:
        note += f", warm starts from t <= {m['warm_start_t']}: {m['network_calls_per_chunk']} network calls"
    return note
