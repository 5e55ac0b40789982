"""An image policy for CPUs, built from the trained state policy: a block-vertex regressor + the state policy's U-Net.

Training the image policy end to end (`sciddiff.policy.train --obs-type image`) needs a GPU: on a 2-core CPU the encoder
and U-Net run at ~0.65 optimizer steps/s. This builds a working one in under an hour of one core instead:

1. `train_vertex_encoder`: an `ImageEncoder` (spatial softmax, 16 outputs, no output LayerNorm) learns to predict, from
   one 96x96 frame, the 8 T-block vertices exactly as the state policy sees them (its min-max normalization to [-1, 1]):
   supervised regression on the demonstration frames and their recorded states (mean squared error), optionally
   also on frames gym-pusht renders from random states (`--random-frames`) and from the states a policy visits in
   closed loop (`--extra-states`, written by `sciddiff policy eval --states-out`): its failed episodes reach
   poses the demonstrations never show (a T against a wall, half covered by the agent), where the encoder erred most.
2. `image_policy_from_state`: an image `DiffusionPolicy` (per observation step: the 16 predicted vertex features, then the
   agent's x, y) whose U-Net is the state policy's, with the columns of every FiLM layer's input permuted from the state
   layout (agent x, y, vertices) to the image layout. FiLM applies Mish elementwise before its linear map, so the
   permutation is exact: given perfect vertex predictions the image policy acts exactly as the state policy.

At evaluation the policy sees only pixels and the agent position (`obs_type="pixels_agent_pos"`). It is not end to end:
the encoder never sees the diffusion loss, and its errors are errors of the block pose. The end-to-end recipe is the GPU
command in docs/policy.md. Units: vertex errors are reported in gym-pusht pixels (the 512 x 512 workspace).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sciddiff.cli import UserError, check_output_path, options_not_positive, run_command
from sciddiff.policy import pusht
from sciddiff.policy.data import dataset_from_zarr, default_zarr
from sciddiff.policy.io import save_policy
from sciddiff.policy.normalizer import pixels_to_unit
from sciddiff.policy.policy import DiffusionPolicy, PolicyConfig
from sciddiff.policy.train import lr_at
from sciddiff.train.checkpoint import load_checkpoint, save_checkpoint

AGENT_DIMS = 2  # state features: agent (x, y), then the 8 block vertices (x, y)


def image_config(state: PolicyConfig, channels: tuple[int, ...], keypoints: int) -> PolicyConfig:
    """The image policy's config: the state policy's diffusion settings, a vertex-regressing encoder, no crop."""
    d = state.to_dict()
    d.update(obs_type="image", state_dim=AGENT_DIMS, vision_dim=state.state_dim - AGENT_DIMS, vision_norm=False,
             vision_channels=tuple(channels), vision_keypoints=keypoints, crop_size=state.image_size,
             extra={**state.extra, "image_policy": "vertex encoder + state-policy U-Net (sciddiff.policy.image_transfer)"})
    return PolicyConfig.from_dict(d)


def image_policy_from_state(state_policy: DiffusionPolicy, encoder: nn.Module, config: PolicyConfig) -> DiffusionPolicy:
    """An image policy that runs `state_policy`'s U-Net on [encoder(frame), agent xy] per observation step."""
    policy = DiffusionPolicy(config)
    policy.encoder.load_state_dict(encoder.state_dict())
    policy.action_normalizer.load_state_dict(state_policy.action_normalizer.state_dict())
    policy.state_normalizer.low.copy_(state_policy.state_normalizer.low[:AGENT_DIMS])
    policy.state_normalizer.high.copy_(state_policy.state_normalizer.high[:AGENT_DIMS])
    n_feat, n_obs = state_policy.config.state_dim, config.n_obs_steps
    # image layout per step: vertices (n_feat - 2), agent (2); column j of the image cond reads column perm[j] of the state's
    per_step = torch.cat([torch.arange(AGENT_DIMS, n_feat), torch.arange(AGENT_DIMS)])
    perm = torch.cat([s * n_feat + per_step for s in range(n_obs)])
    embed = config.step_embed_dim
    weights = dict(state_policy.unet.state_dict())
    for name, _ in state_policy.unet.named_modules():
        if name.endswith("film"):
            key = f"{name}.1.weight"
            w = weights[key]
            weights[key] = torch.cat([w[:, :embed], w[:, embed:][:, perm]], 1)
    policy.unet.load_state_dict(weights)
    return policy.eval()


def vertex_targets(state_policy: DiffusionPolicy, state_features: np.ndarray) -> torch.Tensor:
    """Normalized block vertices (N, 16) as the state policy sees them."""
    with torch.no_grad():
        return state_policy.state_normalizer.normalize(torch.as_tensor(state_features))[:, AGENT_DIMS:]


def vertex_error_px(state_policy: DiffusionPolicy, pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean distance (gym-pusht pixels) between predicted and true vertices, both normalized (N, 16)."""
    low, high = state_policy.state_normalizer.low[AGENT_DIMS:], state_policy.state_normalizer.high[AGENT_DIMS:]
    scale = (high - low) / 2
    return float(((pred - target) * scale).reshape(-1, 8, 2).norm(dim=-1).mean())


def rollout_states(path: Path, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `stride`-th state of each episode in a `--states-out` file -> (states (n, 5), held out for validation
    (n,) bool: the states of every 10th episode)."""
    if stride < 1:
        raise UserError(f"--extra-stride must be at least 1, got {stride}")
    if not path.exists():
        raise UserError(f"no rollout states at {path} (write them with `sciddiff policy eval --states-out`)")
    try:
        with np.load(path) as data:
            states, ends = data["states"], data["episode_ends"]
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot read rollout states from {path}: {err}") from err
    starts = np.concatenate([[0], ends[:-1]])
    rows = [np.arange(a, b, stride) for a, b in zip(starts, ends)]
    held_out = np.concatenate([np.full(len(r), i % 10 == 0) for i, r in enumerate(rows)])
    return states[np.concatenate(rows)], held_out


def keep_inference_settings(config: PolicyConfig, donor: PolicyConfig) -> None:
    """Inference settings are the image policy's own choice (its encoder leaves less time per chunk): a rebuilt or
    fine-tuned image policy keeps its donor's, not the state policy's."""
    for setting in ("sampler", "num_inference_steps", "ddim_eta", "cpu_weights", "warm_start_t"):
        setattr(config, setting, getattr(donor, setting))


def reuse_encoder(args: argparse.Namespace) -> dict:
    """Stage 2 alone: the encoder of an image policy built here (`--encoder-from`) under another state policy's U-Net,
    e.g. after the state policy was trained further (its normalizers must be the ones the encoder was trained for)."""
    from sciddiff.policy.cli import load_checkpoint_or_fail

    check_output_path(args.out, folder=True)
    state_policy = load_checkpoint_or_fail(Path(args.state_policy))
    donor = load_checkpoint_or_fail(Path(args.encoder_from))
    if state_policy.config.obs_type != "state" or donor.config.obs_type != "image":
        raise UserError("--state-policy must be a state policy and --encoder-from an image policy")
    config = image_config(state_policy.config, donor.config.vision_channels, donor.config.vision_keypoints)
    keep_inference_settings(config, donor.config)
    if config.to_dict() | {"extra": {}} != donor.config.to_dict() | {"extra": {}}:
        raise UserError(f"{args.encoder_from} was not built for a U-Net like {args.state_policy}'s")
    # the image policy keeps only the agent part of the state normalizer; a state policy fine-tuned with --init keeps all
    state_norm, agent_norm = state_policy.state_normalizer, donor.state_normalizer
    if not (torch.equal(state_norm.low[:AGENT_DIMS], agent_norm.low) and torch.equal(state_norm.high[:AGENT_DIMS], agent_norm.high)):
        raise UserError(f"{args.state_policy} normalizes observations differently from {args.encoder_from}")
    policy = image_policy_from_state(state_policy, donor.encoder, config)
    meta = {"command": " ".join(["python -m sciddiff.policy.image_transfer", *sys.argv[1:]]),
            "state_policy": str(args.state_policy), "encoder_from": str(args.encoder_from),
            **{k: v for k, v in donor.meta.items() if k.startswith("encoder") or k.startswith("val_")},
            "device": "cpu", "torch": str(torch.__version__)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_policy(out / "policy.pt", policy, meta)
    print(f"wrote {out / 'policy.pt'}: the encoder of {args.encoder_from} under the U-Net of {args.state_policy}")
    return meta


def train_vertex_encoder(args: argparse.Namespace) -> dict:
    """Stage 1 (resumable: re-running the same command continues from OUT/train_state.pt), then stage 2 at each
    checkpoint: OUT/policy.pt is always a complete image policy."""
    if options_not_positive(args, "max_seconds") or args.batch_size < 1 or args.threads < 1:
        raise UserError("--max-seconds must be positive, --batch-size and --threads at least 1")
    check_output_path(args.out, folder=True)
    torch.set_num_threads(args.threads)
    from sciddiff.policy.cli import load_checkpoint_or_fail

    state_policy = load_checkpoint_or_fail(Path(args.state_policy))
    if not Path(args.data).exists():
        raise UserError(f"no PushT demonstrations at {args.data} (--data)")
    if state_policy.config.obs_type != "state":
        raise UserError(f"{args.state_policy} is not a state policy (obs_type {state_policy.config.obs_type!r})")
    rollouts = [(path, *rollout_states(Path(path), args.extra_stride)) for path in args.extra_states]
    channels, keypoints = tuple(args.channels), args.keypoints
    if args.init_encoder:
        donor = load_checkpoint_or_fail(Path(args.init_encoder))
        if donor.config.obs_type != "image":
            raise UserError(f"--init-encoder {args.init_encoder} is not an image policy")
        channels, keypoints = donor.config.vision_channels, donor.config.vision_keypoints
    config = image_config(state_policy.config, channels, keypoints)
    if args.init_encoder:
        keep_inference_settings(config, donor.config)
    images = dataset_from_zarr(args.data, "image")
    features = dataset_from_zarr(args.data, "state")["state"]
    out = Path(args.out)  # made once the inputs have loaded: bad data leaves no empty run folder
    out.mkdir(parents=True, exist_ok=True)
    targets = vertex_targets(state_policy, features)
    ends = images["episode_ends"]
    episode = np.searchsorted(ends, np.arange(len(features)), side="right")
    val_eps = np.asarray(state_policy.config.extra.get("val_episodes", []), dtype=np.int64)
    is_val = np.isin(episode, val_eps)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    frames = images["image"]
    extra = []  # (frames, settled states, held out) rendered by gym-pusht
    if args.random_frames:  # rendered random states: poses the demonstrations rarely show (training only)
        rendered = pusht.render_random_states(args.random_frames, seed=args.seed)
        extra.append((*rendered, np.zeros(args.random_frames, bool)))
    for path, states, held_out in rollouts:  # a policy's closed-loop states, failures included
        print(f"rendering {len(states)} states of {path}", flush=True)
        extra.append((*pusht.render_states(states, seed=args.seed), held_out))
    rollout_val_idx = np.zeros(0, np.int64)
    if extra:
        extra_frames, extra_states, held_out = (np.concatenate(parts) for parts in zip(*extra))
        first = len(frames)
        frames = np.concatenate([frames, extra_frames])
        targets = torch.cat([targets, vertex_targets(state_policy, pusht.state_features(extra_states))])
        train_idx = np.concatenate([train_idx, first + np.flatnonzero(~held_out)])
        rollout_val_idx = first + np.flatnonzero(held_out)
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, 96, 96) uint8 view
    train_rows = torch.as_tensor(train_idx)

    encoder = DiffusionPolicy(config).encoder
    if args.init_encoder:
        encoder.load_state_dict(donor.encoder.state_dict())
    opt = torch.optim.AdamW(encoder.parameters(), lr=args.lr, weight_decay=1e-6)
    gen = torch.Generator().manual_seed(args.seed)
    step, seconds = 0, 0.0
    state_path = out / "train_state.pt"
    if state_path.exists():
        saved = load_checkpoint(state_path)
        encoder.load_state_dict(saved["encoder"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        step, seconds = saved["step"], saved["seconds"]
        print(f"resumed {state_path} at step {step}", flush=True)

    def error_px(rows: np.ndarray) -> float:
        if not len(rows):
            return math.nan
        encoder.eval()
        with torch.no_grad():
            pred = torch.cat([encoder(pixels_to_unit(frames[rows[i:i + 256]])) for i in range(0, len(rows), 256)])
        encoder.train()
        return vertex_error_px(state_policy, pred, targets[rows])

    def checkpoint(val_px: float, rollout_px: float) -> None:
        save_checkpoint(state_path, {"encoder": encoder.state_dict(), "optimizer": opt.state_dict(),
                                     "generator": gen.get_state(), "step": step, "seconds": seconds})
        policy = image_policy_from_state(state_policy, encoder, config)
        meta = {"command": " ".join(["python -m sciddiff.policy.image_transfer", *sys.argv[1:]]),
                "state_policy": str(args.state_policy), "data": str(args.data), "encoder_steps": step,
                "encoder_seconds": round(seconds, 1), "val_vertex_error_px": round(val_px, 2),
                "val_rollout_vertex_error_px": round(rollout_px, 2),
                "device": "cpu", "torch": str(torch.__version__)}
        save_policy(out / "policy.pt", policy, meta)

    log_path = out / "log.csv"
    if log_path.exists():  # drop rows logged after the checkpoint we resume from
        rows = list(csv.reader(open(log_path)))
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerows([r for r in rows if not r[0].isdigit() or int(r[0]) <= step])
    new_log = not log_path.exists()
    with open(log_path, "a", newline="") as handle:
        log = csv.writer(handle)
        if new_log:
            log.writerow(["step", "seconds", "loss", "lr", "val_vertex_error_px", "val_rollout_vertex_error_px"])
        start, last_ckpt, running = time.perf_counter() - seconds, time.perf_counter(), []
        val_px = rollout_px = math.nan
        encoder.train()
        while seconds < args.max_seconds:
            rows = train_rows[torch.randint(len(train_rows), (args.batch_size,), generator=gen)]
            lr = lr_at(seconds / args.max_seconds, step, args.lr, args.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = nn.functional.mse_loss(encoder(pixels_to_unit(frames[rows])), targets[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seconds = time.perf_counter() - start
            running.append(loss.item())
            if step % args.log_every == 0:
                val_px, rollout_px = error_px(val_idx), error_px(rollout_val_idx)
                log.writerow([step, round(seconds, 1), np.mean(running), lr, round(val_px, 3), round(rollout_px, 3)])
                handle.flush()
                print(f"step {step} {seconds:.0f}s loss {np.mean(running):.5f} vertex error: demos {val_px:.2f} px, "
                      f"rollouts {rollout_px:.2f} px", flush=True)
                running = []
            if time.perf_counter() - last_ckpt > args.checkpoint_every:
                checkpoint(val_px, rollout_px)
                last_ckpt = time.perf_counter()
        val_px, rollout_px = error_px(val_idx), error_px(rollout_val_idx)
        checkpoint(val_px, rollout_px)
    print(f"wrote {out / 'policy.pt'}: {step} encoder steps, validation vertex error {val_px:.2f} px")
    return {"steps": step, "val_vertex_error_px": val_px}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sciddiff.policy.image_transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-policy", default=str(Path(__file__).resolve().parents[2] / "data" / "policy" / "pusht_state.pt"),
                   help="trained state policy whose U-Net and normalizers are reused (default: the shipped one)")
    p.add_argument("--data", default=str(default_zarr()), help="PushT zarr with data/img frames (default: shared data)")
    p.add_argument("--out", required=True, help="run folder: policy.pt, train_state.pt, log.csv (resumed if present)")
    p.add_argument("--encoder-from", default=None, metavar="IMAGE_POLICY",
                   help="no training: put this image policy's encoder (built here) under --state-policy's U-Net")
    p.add_argument("--max-seconds", type=float, default=2700.0, help="encoder training budget over all runs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64], help="encoder stage widths")
    p.add_argument("--keypoints", type=int, default=32, help="spatial-softmax keypoints")
    p.add_argument("--random-frames", type=int, default=0,
                   help="add this many frames of random states rendered by gym-pusht to the training frames")
    p.add_argument("--extra-states", nargs="+", default=[], metavar="NPZ",
                   help="also train on frames of the states a policy visits (`sciddiff policy eval --states-out`), "
                        "rendered by gym-pusht; every 10th episode is held out for validation")
    p.add_argument("--extra-stride", type=int, default=3, help="render every k-th state of --extra-states episodes")
    p.add_argument("--init-encoder", default=None, metavar="IMAGE_POLICY",
                   help="start from this image policy's encoder (built here) instead of random weights")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(reuse_encoder if args.encoder_from else train_vertex_encoder, args)


if __name__ == "__main__":
    raise SystemExit(main())
