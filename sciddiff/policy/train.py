"""Train a diffusion policy from demonstrations; the same loop runs a 20-step CPU smoke test and a GPU run.

Speed on a GPU comes from keeping the whole dataset on the device (normalized once; images as uint8) and drawing each
batch as one index gather over precomputed windows (`sampler.sequence_windows`), bf16 autocast, fused AdamW, the core's
fused (`_foreach_lerp_`) EMA, large batches, and optionally `torch.compile` of the networks. Nothing is synchronized
with the host except every `--log-every` steps.

Run directory (`--out`): `policy.pt` + `policy.json` (EMA weights in fp16, config, normalizers, the exact command),
`log.csv` (step, time, loss, lr, throughput, val loss, rollout scores) and, unless `--state` moves it, `train_state.pt`
(model, EMA, optimizer, RNG, step, elapsed time). Re-running the same command resumes from `train_state.pt`.
Learning rate: linear warm-up, then cosine decay to 0 over `--steps`, or over `--schedule-seconds` of training time when
no step count is given (so a run bounded by `--max-seconds` still completes its schedule; a re-run after the schedule
is complete stops at once instead of training at learning rate 0).

`--distill-from TEACHER --inference-steps N` trains by progressive distillation instead (Salimans & Ho 2022; the
core's `ddim_distillation_loss`): the policy, started from the teacher, learns to take in N DDIM steps what the
teacher's sampler takes in 2N; the logged validation loss stays the DDPM loss on held-out demonstrations.

Data-parallel under torchrun (`torchrun --standalone --nproc_per_node N -m sciddiff.policy.train ...`, PyTorch DDP
via `sciddiff.train.distributed`; the same command without torchrun is one process): `--batch-size` is per process,
each process draws its own batches and noise, only rank 0 logs and saves, and the time-based decisions (stop,
checkpoint) are rank 0's, shared every `--log-every` steps so that every process takes them at the same step.

GPU (no gymnasium/zarr needed there; data prepared here with `sciddiff policy prepare`):
    python3 -m sciddiff.policy.train --data .gpu/policy/pusht_state.npz --obs-type state --out $OUT/state \
        --max-seconds 420 --batch-size 1024 --compile
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sciddiff.cli import print_note
from sciddiff.core.ema import EMA
from sciddiff.policy.data import (OBS_KEYS, TASKS, GenericKeys, check_task, concat_datasets, default_zarr, is_zarr,
                                  load_dataset)
from sciddiff.policy.io import save_policy
from sciddiff.policy.policy import CPU_WEIGHTS, SAMPLERS, DiffusionPolicy, PolicyConfig, fitted_noise_scale, noise_scale_error
from sciddiff.policy.sampler import sequence_windows, split_episodes
from sciddiff.train import CSVLogger, autocast, distributed, load_checkpoint, progress, save_checkpoint, seed_everything
from sciddiff.train.checkpoint import json_text, restore_training_state, rng_restorable, training_state
from sciddiff.train.interrupt import decide, interruption, stop_requests


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, default=None,
                   help="replay buffer (.zarr) or prepared arrays (.npz); default: the PushT demonstrations under "
                        "$SCIDDIFF_DATA (../shared/data)")
    g.add_argument("--extra-data", type=Path, nargs="+", default=(),
                   help="more demonstrations (.zarr / .npz, e.g. from `sciddiff policy demos`), all used for training; "
                        "the validation episodes come from --data only")
    g.add_argument("--obs-type", choices=("state", "image"), default="state",
                   help="state: agent xy + 8 block vertices; image: 96x96 frames + agent xy (default state)")
    g.add_argument("--task", choices=TASKS, default="pusht",
                   help="pusht (default): PushT features from gym-pusht states; generic: any gymnasium task, the "
                        "stores' data/state and data/action vectors as they are (state policies)")
    g.add_argument("--obs-keys", nargs="+", default=None, metavar="KEY",
                   help="--task generic, a zarr store: the arrays that make the observation, flattened and "
                        "concatenated in this order, e.g. keypoint agent_pos (default: state)")
    g.add_argument("--action-key", default=None, metavar="KEY", help="--task generic: the action array (default: action)")
    g.add_argument("--env", default=None, metavar="ID",
                   help="--task generic: the gymnasium env id (recorded in the policy; --eval-every rolls out in it "
                        "and `sciddiff policy eval` uses it by default)")
    g.add_argument("--val-episodes", type=int, default=4, help="episodes held out for the validation loss (default 4)")
    g.add_argument("--max-train-episodes", type=int, default=None,
                   help="train on at most this many episodes of --data, a seeded random draw as Diffusion Policy's "
                        "(the paper's 90: --max-train-episodes 90 --val-episodes 4 --seed 42; --extra-data episodes "
                        "are added to them); default: all not held out")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="run directory (created; an existing run is resumed)")
    g.add_argument("--state", type=Path, default=None, help="full training state file (default: OUT/train_state.pt)")
    g.add_argument("--init", type=Path, default=None,
                   help="start from this policy checkpoint: its network, weights and normalizers (the model options "
                        "below are then ignored)")
    g.add_argument("--distill-from", type=Path, default=None, metavar="TEACHER",
                   help="progressive distillation (Salimans & Ho 2022): train the policy's DDIM sampler with "
                        "--inference-steps steps to match this DDIM policy's with twice as many (its sampler, eta); "
                        "starts from the teacher unless --init is given")
    g.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (length of the LR schedule); 0 with --init re-saves that policy. Give "
                        "--steps, --max-seconds or both")
    g.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds of this run")
    g.add_argument("--schedule-seconds", type=float, default=None,
                   help="without --steps: decay the LR over this much training time (default: --max-seconds)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the validation split, initialization and batches (default 0)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks (falls back to eager on error)")
    g.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune-no-cudagraphs")
    g.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    g.add_argument("--log-every", type=int, default=200, help="steps between log rows (default 200)")
    g.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between checkpoints (default 120)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="steps between closed-loop rollouts of the EMA policy in PushT (needs gym-pusht) or --env "
                        "(0: never)")
    g.add_argument("--eval-episodes", type=int, default=10,
                   help="rollouts per evaluation (seeds 100000, ...; default 10)")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=256, help="windows per optimizer step (default 256)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4 * sqrt(batch / 256))")
    g.add_argument("--weight-decay", type=float, default=1e-6, help="AdamW weight decay (default 1e-6)")
    g.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up steps (default 500)")
    g.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="image encoder's learning rate / the U-Net's: 0 freezes a pretrained encoder (e.g. the vertex "
                        "regressor of `image_transfer`) while the U-Net fine-tunes on its outputs")
    g.add_argument("--ema-power", type=float, default=0.75,
                   help="EMA warm-up power: decay 1 - (1 + step)^-power, as Diffusion Policy (default 0.75)")
    g = p.add_argument_group("model")
    g.add_argument("--down-dims", default="64,128,256",
                   help="U-Net widths per level, comma separated (default 64,128,256)")
    g.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon",
                   help="what the U-Net predicts: the noise, the clean actions or v (default epsilon)")
    g.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="default inference sampler stored in the policy (default: --init's, else ddim)")
    g.add_argument("--inference-steps", type=int, default=None,
                   help="default denoising steps at inference (default: --init's, else 8)")
    g.add_argument("--ddim-eta", type=float, default=None,
                   help="sampler noise scale stored in the policy (DDIM, DPM-Solver++; 0 deterministic, 1 ancestral, "
                        "inf DDIM re-noising; default: --init's, else 0)")
    g.add_argument("--cpu-weights", choices=CPU_WEIGHTS, default=None,
                   help="the frozen CPU U-Net's weights stored in the policy (default: --init's, else float32)")
    g.add_argument("--vision-channels", default="32,64,128", help="image encoder widths (image policy)")
    return p


RUN_OPTIONS = ("batch_size", "weight_decay", "warmup_steps", "ema_power", "encoder_lr_scale")  # + lr: one run's


def _widths(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated network widths: each is split into GroupNorm's `n_groups` groups, so a multiple of them."""
    from sciddiff.cli import UserError

    groups = PolicyConfig.n_groups
    try:
        widths = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        widths = ()
    if not widths or any(w < 1 or w % groups for w in widths):
        raise UserError(f"{option} must be comma-separated positive multiples of {groups} (e.g. 64,128,256), "
                        f"got {text!r}")
    return widths


def _load_training_state(path: Path, device: torch.device) -> dict:
    """A `train_state.pt` of this trainer (KeyError for another kind of file: load_or_fail names the missing entry)."""
    state = load_checkpoint(path, map_location=device)
    if not isinstance(state, dict):
        raise ValueError("not a dict of training state")
    for key in ("model", "optimizer", "ema", "step", "config", "elapsed"):
        if key not in state:
            raise KeyError(key)
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    if not isinstance(state["config"], dict) or not set(state["config"]) <= fields:  # older runs may lack new fields
        raise ValueError("its config is not a diffusion policy's")
    return state


def _data_identity(sources: list[tuple[Path, int]], ends: np.ndarray) -> list[str]:
    """Each store of a run (--data, then --extra-data) by file name and size: a resume on another store is refused,
    the same store moved to another folder or machine is not."""
    bounds = np.concatenate([[0], ends[np.cumsum([n for _, n in sources]) - 1]])
    return [f"{Path(path).name}: {n} episodes, {int(b - a)} steps"
            for (path, n), a, b in zip(sources, bounds[:-1], bounds[1:])]


def _check_episode_lengths(ends: np.ndarray, sources: list[tuple[Path, int]], min_steps: int) -> None:
    """Episodes shorter than `min_steps` give the sampler no window (`sequence_windows`): said in a warning line
    (short corrective episodes among many are normal), refused when no episode is long enough."""
    from sciddiff.cli import UserError

    lengths = np.diff(ends, prepend=0)
    if not (short := np.flatnonzero(lengths < min_steps)).size:
        return
    first = int(short[0])
    firsts = np.cumsum([0] + [n for _, n in sources])  # each source's first episode in the concatenation
    source = int(np.searchsorted(firsts, first, side="right")) - 1
    what = (f"{len(short)} episode(s) shorter than the {min_steps} steps a training window needs (first: "
            f"{sources[source][0]}, episode {first - firsts[source]}, {lengths[first]} step(s))")
    if len(short) == len(lengths):
        raise UserError(f"no training windows: {what}")
    print(f"warning: {what} add nothing", file=sys.stderr)


def _select_episodes(arrays: dict[str, np.ndarray], episodes: np.ndarray) -> dict[str, np.ndarray]:
    """Keep only `episodes` (rows re-packed back to back) so that unused frames never reach the device."""
    ends = arrays["episode_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    rows = np.concatenate([np.arange(starts[e], ends[e]) for e in episodes])
    out = {k: v[rows] for k, v in arrays.items() if k != "episode_ends"}
    out["episode_ends"] = np.cumsum(ends[episodes] - starts[episodes])
    return out


def lr_at(progress_frac: float, step: int, peak: float, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return peak * warm * 0.5 * (1 + math.cos(math.pi * min(max(progress_frac, 0.0), 1.0)))


class Batches:
    """Device-resident dataset: normalized low-dim features and actions, uint8 images, windows of row indices."""

    def __init__(self, policy: DiffusionPolicy, arrays: dict[str, np.ndarray], windows: np.ndarray,
                 device: torch.device):
        c = policy.config
        self.n_obs = c.n_obs_steps
        key = OBS_KEYS[c.obs_type][-1]  # "state" or "agent_pos"
        with torch.no_grad():  # the policy (and its normalizers) already live on `device`
            self.state = policy.state_normalizer.normalize(torch.as_tensor(arrays[key], device=device).float())
            self.action = policy.action_normalizer.normalize(torch.as_tensor(arrays["action"], device=device).float())
        # HWC uint8 frames -> CHW on the device (700 MB for all of PushT: fine on a GPU, 1 byte per channel).
        self.image = (torch.from_numpy(arrays["image"]).permute(0, 3, 1, 2).contiguous().to(device)
                      if c.obs_type == "image" else None)
        self.windows = torch.as_tensor(windows, device=device)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def get(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        w = self.windows[rows]
        obs_rows = w[:, :self.n_obs]
        nobs = {"state": self.state[obs_rows]}
        if self.image is not None:
            nobs["image"] = self.image[obs_rows]
        return nobs, self.action[w]

    def sample(self, batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.get(torch.randint(0, len(self), (batch_size,), device=self.windows.device))


def _compile(policy: DiffusionPolicy, mode: str) -> None:
    for module in (policy.unet, policy.encoder):
        if module is not None:
            module.compile(mode=mode)


def _uncompile(policy: DiffusionPolicy) -> None:
    for module in (policy.unet, policy.encoder):
        if module is not None:
            module._compiled_call_impl = None


def ema_policy(config: PolicyConfig, ema: EMA, device: torch.device) -> DiffusionPolicy:
    """A fresh (uncompiled) policy holding the EMA weights, in eval mode. Its throw-away initialisation draws from a
    forked RNG: checkpoints and rollouts, which come by the clock, must not change the training's random stream."""
    with torch.random.fork_rng(devices=[]):
        policy = DiffusionPolicy(config)
    policy = policy.to(device)
    ema.copy_to(policy)
    return policy.eval()


@torch.no_grad()
def validation_loss(policy: DiffusionPolicy, val: Batches | None, batch_size: int, amp: bool,
                    max_windows: int = 4096) -> float:
    """Mean DDPM loss over (up to `max_windows`) validation windows, with fixed noise so runs are comparable."""
    if val is None or len(val) == 0:
        return float("nan")
    device = val.windows.device
    gen = torch.Generator(device).manual_seed(1234)
    rows = torch.arange(min(len(val), max_windows), device=device)
    total, count = 0.0, 0
    for chunk in rows.split(batch_size):
        nobs, naction = val.get(chunk)
        with autocast(device, enabled=amp):
            total += float(policy.loss(nobs, naction, generator=gen)) * len(chunk)
        count += len(chunk)
    return total / count


def checked_env(env, state_dim: int, action_dim: int, actions: np.ndarray | None = None, show: bool = True):
    """The `runner.EnvAdapter` of `env` (an env id, or an adapter) once `check_policy` has passed: its mismatches and
    gymnasium's failures to make the env (an unknown id, a module that does not import) as one UserError line, its
    notes printed (with `show`)."""
    from sciddiff.cli import UserError
    from sciddiff.policy.runner import EnvAdapter

    env_id = env.env_id if isinstance(env, EnvAdapter) else env
    try:
        adapter = env if isinstance(env, EnvAdapter) else EnvAdapter(env, None)
        notes = adapter.check_policy(state_dim, action_dim,
                                     None if actions is None else np.asarray(actions).reshape(-1, action_dim))
    except Exception as err:  # ValueError (the checks), gymnasium's errors, ImportError of a "module:EnvId"
        raise UserError(f"--env {env_id}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    for note in notes if show else ():
        print_note(note)
    return adapter


def rollout_score(policy: DiffusionPolicy, n_episodes: int) -> dict | None:
    """Closed-loop score of `policy` in its task's env (`evaluate.task_adapter`) on seeds 100000.. (None where
    the env's package is not installed)."""
    try:
        from sciddiff.policy.evaluate import task_adapter
        from sciddiff.policy.runner import TorchPolicyActor, run_episodes, summarize
        adapter = task_adapter(policy.config)
    except ImportError:
        return None
    results = run_episodes(TorchPolicyActor(policy, seed=0), adapter, range(100000, 100000 + n_episodes),
                           n_obs_steps=policy.config.n_obs_steps, show_progress=False)
    return summarize(results, adapter.score_name)


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) training as configured by `add_arguments`; returns a summary dict."""
    from sciddiff.cli import (UserError, check_output_path, load_or_fail, options_below, options_not_positive,
                              torch_device)

    if args.steps is None and args.max_seconds is None:
        raise UserError("give --steps and/or --max-seconds")
    if bad := options_below(args, 1, "batch_size", "threads", "log_every", "max_train_episodes", "inference_steps"):
        raise UserError(f"{bad[0]} must be at least 1")
    if bad := options_below(args, 0, "warmup_steps", "eval_every", "seed"):
        raise UserError(f"{bad[0]} must be at least 0")
    if args.eval_every and args.eval_episodes < 1:
        raise UserError("--eval-episodes must be at least 1 (or --eval-every 0: no rollouts)")
    if bad := options_not_positive(args, "checkpoint_every"):
        raise UserError(f"{bad[0]} must be a finite number of seconds > 0")
    if args.steps is not None and (args.steps < 0 or (args.steps == 0 and not args.init)):
        raise UserError("--steps must be at least 1 (0 only re-saves an --init policy with new inference settings)")
    # nan would pass `<= 0` and then mean "no time limit" or poison the learning-rate schedule
    if bad := options_not_positive(args, "max_seconds", "schedule_seconds", "ema_power"):
        raise UserError(f"{bad[0]} must be a finite number > 0")
    if bad := options_not_positive(args, "lr", "weight_decay", "encoder_lr_scale", zero=True):
        raise UserError(f"{bad[0]} must be a finite number >= 0")
    if args.ddim_eta is not None and (error := noise_scale_error(args.ddim_eta, args.sampler or "ddim",
                                                                 "--ddim-eta")):
        raise UserError(error)
    check_task(args.task, args.obs_type)
    if args.env is not None and args.task != "generic":
        raise UserError("--env names the gymnasium env of a --task generic policy (PushT's is gym_pusht/PushT-v0)")
    down_dims = _widths(args.down_dims, "--down-dims")
    vision_channels = _widths(args.vision_channels, "--vision-channels")
    check_output_path(args.out, folder=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = distributed.setup()
    device = info.device if info.world_size > 1 else torch_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    amp = not args.no_amp and device.type == "cuda"
    seed_everything(args.seed)
    data_path = args.data or default_zarr()
    keys = GenericKeys.from_options(args.task, args.obs_keys, args.action_key)
    arrays = load_dataset(data_path, args.obs_type, args.task, keys)
    n_episodes = len(arrays["episode_ends"])
    try:
        train_eps, val_eps = split_episodes(n_episodes, args.val_episodes, args.seed, args.max_train_episodes)
    except ValueError as err:
        raise UserError(f"--val-episodes: {err}") from None
    sources = [(data_path, n_episodes)]
    if args.extra_data:
        extra = [load_dataset(path, args.obs_type, args.task, keys) for path in args.extra_data]
        sources += [(path, len(a["episode_ends"])) for path, a in zip(args.extra_data, extra)]
        arrays = concat_datasets([arrays, *extra])
        train_eps = np.concatenate([train_eps, np.arange(n_episodes, len(arrays["episode_ends"]))])
    data_identity = _data_identity(sources, arrays["episode_ends"])
    config = PolicyConfig(
        obs_type=args.obs_type, state_dim=arrays[OBS_KEYS[args.obs_type][-1]].shape[-1],
        action_dim=arrays["action"].shape[-1], down_dims=down_dims, prediction_type=args.prediction_type,
        sampler=args.sampler or "ddim", num_inference_steps=8 if args.inference_steps is None else args.inference_steps,
        ddim_eta=args.ddim_eta or 0.0,
        vision_channels=vision_channels, cpu_weights=args.cpu_weights or "float32",
        extra={"task": args.task, **({"env": args.env} if args.env else {}),
               **({"obs_keys": list(keys.obs), "action_key": keys.action}  # a prepared .npz chose its own
                  if args.task == "generic" and is_zarr(data_path) else {}),
               "train_episodes": len(train_eps),
               "val_episodes": val_eps.tolist()})
    if args.task == "generic" and args.env:  # the data must fit the env the policy will act in: checked now
        checked_env(args.env, config.state_dim, config.action_dim, arrays["action"], show=info.is_main)
    from sciddiff.policy.io import load_policy

    teacher = None
    if args.distill_from:
        if args.inference_steps is None:
            raise UserError("--distill-from needs --inference-steps: the student's steps (the teacher takes twice as many)")
        teacher = load_or_fail(load_policy, args.distill_from, "teacher policy checkpoint").to(device).eval()
        teacher.requires_grad_(False)
        args.init = args.init or args.distill_from
    if args.init:  # the network (and its normalizers) come from the checkpoint; the model options are ignored
        init = load_or_fail(load_policy, args.init, "policy checkpoint")
        data_shape = {"obs_type": config.obs_type, "state_dim": config.state_dim, "action_dim": config.action_dim}
        if {k: getattr(init.config, k) for k in data_shape} != data_shape:
            raise UserError(f"--init {args.init} expects {init.config.obs_type} observations of "
                            f"{init.config.state_dim} features and {init.config.action_dim} actions, not {data_shape}")
        if (init_task := init.config.extra.get("task", "pusht")) != args.task:
            raise UserError(f"--init {args.init} is a --task {init_task} policy, not {args.task}")
        defaults = build_parser()  # a model option given (not its default) that the --init network contradicts
        ignored = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, differs in (
            ("prediction_type", args.prediction_type != init.config.prediction_type),
            ("down_dims", down_dims != tuple(init.config.down_dims)),
            ("vision_channels", args.obs_type == "image" and vision_channels != tuple(init.config.vision_channels)))
            if differs and getattr(args, k) != defaults.get_default(k)]
        if ignored:
            print_note(f"--init {args.init} brings its own network: {', '.join(ignored)} not used")
        given = {"sampler": args.sampler, "num_inference_steps": args.inference_steps, "ddim_eta": args.ddim_eta,
                 "cpu_weights": args.cpu_weights}  # the inference settings not given stay the checkpoint's
        if args.sampler is not None and args.ddim_eta is None:
            given["ddim_eta"] = fitted_noise_scale(init.config.ddim_eta, args.sampler)
        config = dataclasses.replace(init.config, **{k: v for k, v in given.items() if v is not None},
                                     extra={**init.config.extra, **config.extra})
        policy = DiffusionPolicy(config)
        policy.load_state_dict(init.state_dict())
        key = OBS_KEYS[args.obs_type][-1]
        for what, norm, data in (("observations", policy.state_normalizer, arrays[key]),
                                 ("actions", policy.action_normalizer, arrays["action"])):
            if (dims := norm.dims_beyond(data)) and info.is_main:  # kept: the network learned in their units
                print_note(f"--init {args.init}: the data's {what} reach beyond the range its normalizers were fitted "
                           f"on (features {dims}): they map outside [-1, 1], and predicted actions stay within the old "
                           "range; train without --init to fit them to this data")
    else:  # normalizers fitted on every episode (train and val), as Diffusion Policy does
        policy = DiffusionPolicy(config)
        policy.fit_normalizers(arrays[OBS_KEYS[args.obs_type][-1]], arrays["action"])

    if config.num_inference_steps > config.num_train_timesteps:
        raise UserError(f"--inference-steps must be at most {config.num_train_timesteps} (the policy's training "
                        "timesteps)")
    if args.eval_every and args.task == "generic" and not config.extra.get("env"):
        raise UserError("--eval-every with --task generic needs --env ID: the gymnasium env to roll out in")
    if teacher is not None:
        try:
            policy.distillation_grid(teacher.config, config.num_inference_steps)
        except ValueError as err:
            raise UserError(f"--distill-from: {err}") from None

    def windows(a: dict[str, np.ndarray]) -> np.ndarray:  # the paper's padding: n_obs - 1 before, n_action - 1 after
        return sequence_windows(a["episode_ends"], config.horizon, config.n_obs_steps - 1, config.n_action_steps - 1)

    _check_episode_lengths(arrays["episode_ends"], sources,
                           config.horizon - (config.n_obs_steps - 1) - (config.n_action_steps - 1))

    train_arrays = _select_episodes(arrays, train_eps)
    policy = policy.to(device)
    train_data = Batches(policy, train_arrays, windows(train_arrays), device)
    val_data = None
    if len(val_eps):
        val_arrays = _select_episodes(arrays, val_eps)
        val_data = Batches(policy, val_arrays, windows(val_arrays), device)
    del arrays, train_arrays

    out = Path(args.out)
    state_path = Path(args.state) if args.state else out / "train_state.pt"
    lr = 1e-4 * math.sqrt(args.batch_size / 256) if args.lr is None else args.lr  # an explicit 0 is kept
    fused = device.type == "cuda"
    # a second parameter group only when the encoder's rate differs (runs saved before the option have one group)
    encoder = list(policy.encoder.parameters()) if policy.encoder is not None and args.encoder_lr_scale != 1 else []
    in_encoder = {id(q) for q in encoder}
    groups = [{"params": [q for q in policy.parameters() if id(q) not in in_encoder], "lr_scale": 1.0}]
    if encoder:
        groups.append({"params": encoder, "lr_scale": args.encoder_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.95, 0.999), weight_decay=args.weight_decay,
                                  **({"fused": True} if fused else {"foreach": True}))
    ema = EMA(policy, power=args.ema_power)
    step, elapsed_before, samples_before = 0, 0.0, 0
    schedule_seconds = args.schedule_seconds or args.max_seconds
    # the data too: a resume on another store would keep the normalizers fitted on the first
    options = {k: getattr(args, k) for k in RUN_OPTIONS} | {"lr": lr, "data": data_identity}
    if not state_path.exists() and (out / "policy.pt").exists():
        raise UserError(f"{out} holds a policy but no training state ({state_path}) to resume: choose a new --out "
                        f"(--init {out / 'policy.pt'} trains on from that policy)")
    if state_path.exists():
        try:
            state = load_or_fail(lambda path: _load_training_state(path, device), state_path, "policy training state")
        except UserError as err:
            raise UserError(f"--state: {err}" if args.state else str(err)) from None
        if state["config"] != config.to_dict():
            stored, here = state["config"], config.to_dict()
            changed = [f"{k}: {stored.get(k)!r} there, {here.get(k)!r} here" for k in sorted(stored.keys() | here.keys())
                       if stored.get(k) != here.get(k)]
            raise UserError(f"{'--state ' if args.state else ''}{state_path} belongs to a run with a different "
                            f"configuration ({'; '.join(changed)}); use a new {'--state' if args.state else '--out'}")
        if changed := [f"--{k.replace('_', '-')}: {state['options'][k]!r} there, {v!r} here"
                       for k, v in options.items() if k in state.get("options", {}) and state["options"][k] != v]:
            raise UserError(f"{state_path} belongs to a run with other data or optimization options "
                            f"({'; '.join(changed)}); resume it with its own, or start a new --out (--init "
                            f"{out / 'policy.pt'} trains on from its policy)")
        step = restore_training_state(state, model=policy, optimizer=optimizer, ema=ema)
        elapsed_before = state["elapsed"]
        samples_before = state.get("samples_seen", step * args.batch_size * info.world_size)
        schedule_seconds = args.schedule_seconds or state.get("schedule_seconds") or schedule_seconds
        if info.is_main:
            print(f"resuming from step {step} ({elapsed_before:.0f} s trained)", flush=True)
            if (step >= args.steps) if args.steps is not None else elapsed_before >= schedule_seconds:
                done = f"--steps {args.steps}" if args.steps is not None else f"{schedule_seconds:.0f} s"
                print(f"the run's learning-rate schedule ({done}) is complete: nothing to train. To train longer give "
                      f"a larger --steps or --schedule-seconds, or start a new --out with --init {out / 'policy.pt'}",
                      flush=True)
    if info.world_size > 1 and not (step and rng_restorable(state)):
        # the same initial weights everywhere, different batches and noise per process (also on a resume under
        # another process count, which restores no RNG: every rank drew the same batches)
        torch.manual_seed(args.seed * 1000 + info.rank + 7919 * step)
    if info.is_main and args.steps and args.warmup_steps >= args.steps and step == 0:
        print_note(f"--warmup-steps {args.warmup_steps} is not below --steps {args.steps}: the warm-up meets the "
                   "cosine decay and the learning rate stays well below --lr (give fewer --warmup-steps)")
    out.mkdir(parents=True, exist_ok=True)  # only now that every input has loaded: a bad one leaves no empty run

    command = getattr(args, "command_line", None) or command_line(args)
    meta_base = {"command": command, "data": str(data_path), "extra_data": [str(path) for path in args.extra_data],
                 "batch_size": args.batch_size, "lr": lr,
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": str(torch.__version__), "n_params": sum(p.numel() for p in policy.parameters()),
                 "processes": info.world_size}

    def trained_seconds() -> float:  # over all runs of this training, resumed ones included; a call that trains no
        return elapsed_before + (time.perf_counter() - run_start if step > first_step else 0.0)  # step adds none

    def checkpoint(val_loss: float | None = None, extra: dict | None = None) -> None:  # every rank: gathers RNGs
        samples_seen = samples_before + (step - first_step) * args.batch_size * info.world_size
        state = training_state(model=policy, step=step, optimizer=optimizer, ema=ema, config=config.to_dict(),
                               elapsed=trained_seconds(), schedule_seconds=schedule_seconds, options=options,
                               samples_seen=samples_seen)
        if not info.is_main:
            return
        save_checkpoint(state_path, state)
        meta = {**meta_base, "step": step, "samples_seen": samples_seen,
                "train_seconds": round(trained_seconds(), 1),
                **({"val_loss": val_loss} if val_loss is not None else {}), **(extra or {})}
        save_policy(out / "policy.pt", ema_policy(config, ema, device), meta)

    if args.compile:
        _compile(policy, args.compile_mode)
    policy.train()
    model = distributed.wrap(policy)  # DDP averages the gradients of its forward (the loss) over processes
    logger = CSVLogger(out / "log.csv", resume_step=step) if info.is_main else None
    sync_every = 1 if info.world_size == 1 else args.log_every  # steps between rank 0's shared time decisions
    what = "generic" if args.task == "generic" else args.obs_type
    bar = progress(total=args.steps, initial=step, desc=f"train {what}", unit="step")
    run_start = last_ckpt = last_log_time = time.perf_counter()
    first_step = step
    last_log_step, loss_sum, last_val = step, torch.zeros((), device=device), None

    def one_step() -> torch.Tensor:
        nobs, naction = train_data.sample(args.batch_size)
        with autocast(device, enabled=amp):
            loss = model(nobs, naction, teacher)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(policy)
        return loss.detach()

    interrupted = False
    try:
        with stop_requests() as requests:
            while True:
                if args.steps is not None and step >= args.steps:
                    break
                if step % sync_every == 0:  # any process's Ctrl-C or SIGTERM stops all of them here; saved below
                    stop, checkpoint_now, interrupted = decide(
                        (args.max_seconds is not None and time.perf_counter() - run_start >= args.max_seconds)
                        # a resumed run whose LR is spent:
                        or (args.steps is None and trained_seconds() >= schedule_seconds),
                        time.perf_counter() - last_ckpt >= args.checkpoint_every, requests, info.world_size, device)
                    if checkpoint_now:
                        checkpoint(last_val)
                        last_ckpt = time.perf_counter()
                    if stop:
                        break
                frac = step / args.steps if args.steps else trained_seconds() / schedule_seconds
                for group in optimizer.param_groups:
                    group["lr"] = group["lr_scale"] * lr_at(frac, step, lr, args.warmup_steps)
                try:
                    loss_sum += one_step()
                except Exception as err:  # a compiler failure must not cost the GPU run: continue eagerly
                    if not args.compile:
                        raise
                    print(f"torch.compile failed ({type(err).__name__}: {err}); continuing without it", flush=True)
                    _uncompile(policy)
                    optimizer.zero_grad(set_to_none=True)
                    args.compile = False
                    continue
                step += 1
                bar.update(1)
                evaluate = bool(args.eval_every) and step % args.eval_every == 0
                if step % args.log_every == 0 or evaluate:
                    now = time.perf_counter()
                    loss = float(distributed.all_reduce_mean(loss_sum)) / (step - last_log_step)
                    rate = (step - last_log_step) / (now - last_log_time)
                    if info.is_main:
                        row = {"step": step, "seconds": round(trained_seconds(), 1), "loss": round(loss, 5),
                               "lr": optimizer.param_groups[0]["lr"], "steps_per_s": round(rate, 2),
                               "samples_per_s": round(rate * args.batch_size * info.world_size), "val_loss": "",
                               "eval_mean_max_reward": "", "eval_success_rate": "", "eval_mean_return": ""}
                        if evaluate:
                            ema_eval = ema_policy(config, ema, device)
                            last_val = validation_loss(ema_eval, val_data, args.batch_size, amp)
                            row["val_loss"] = round(last_val, 5)
                            score = rollout_score(ema_eval, args.eval_episodes)
                            if score is not None:
                                row["eval_mean_max_reward"] = round(score["mean_max_reward"], 4)
                                row["eval_success_rate"] = round(score["success_rate"], 3)
                                row["eval_mean_return"] = round(score["mean_return"], 4)  # a gymnasium task's number
                        logger.log(**row)
                        bar.set_postfix(loss=f"{loss:.4f}", it_s=f"{rate:.1f}")
                        bar.write(json.dumps(row))
                    loss_sum.zero_()
                    last_log_step, last_log_time = step, time.perf_counter()
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    if interrupted:  # save what was trained, then exit as interrupted (130, SIGTERM 143)
        checkpoint(last_val)
        if info.is_main:
            print(f"{requests[0] if requests else 'stopped'} at step {step}: saved {state_path}; re-run the same "
                  f"command to resume", file=sys.stderr, flush=True)
        del model
        distributed.cleanup()
        raise interruption(requests)
    final_val = None  # only rank 0 writes the policy and its validation loss
    if info.is_main:
        final_val = validation_loss(ema_policy(config, ema, device), val_data, args.batch_size, amp)
    checkpoint(final_val)
    summary = {"step": step, "train_seconds": round(trained_seconds(), 1), "val_loss": final_val,
               "policy": str(out / "policy.pt")}
    if info.is_main:
        print(json_text(summary, indent=None), end="", flush=True)
    del model  # before cleanup (see there)
    distributed.cleanup()
    return summary


def command_line(args: argparse.Namespace) -> str:
    """The `python -m sciddiff.policy.train ...` command that reproduces `args` (non-default options only)."""
    words = ["python", "-m", "sciddiff.policy.train"]
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            words.append(action.option_strings[0])
        else:
            words += [action.option_strings[0], *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return shlex.join(words)


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m sciddiff.policy.train",
                                                 description=__doc__.splitlines()[0],
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))


def main(argv: list[str] | None = None) -> int:
    from sciddiff.cli import run_command

    return run_command(train, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
