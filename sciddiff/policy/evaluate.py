"""Score a trained policy on PushT: N episodes from seeds S, S+1, ..., the paper's and LeRobot's metrics, CPU latency.

Metrics (per episode, then averaged): max coverage over the episode; max reward = min(max coverage / 0.95, 1) (Diffusion
Policy's and LeRobot's "mean max reward"); success = max coverage > 0.95 (gym-pusht's termination). The latency
`seconds_per_action_chunk` is the median wall time of one `predict_action` call (one observation history, batch of 1,
i.e. one 8-action chunk) on the CPU with the current torch thread count (`..._min`: the fastest of those calls).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sciddiff.policy.policy import DiffusionPolicy
from sciddiff.policy.runner import (EpisodeResult, PushTAdapter, TorchPolicyActor, results_to_dicts, run_episodes,
                                    summarize, time_action_chunk)

# the gym-pusht observation types that give each policy type its features (`pusht.obs_to_features`), default first
ENV_OBS_TYPES = {"state": ("environment_state_agent_pos", "state"), "image": ("pixels_agent_pos",)}
DEFAULT_ENV_OBS = {kind: types[0] for kind, types in ENV_OBS_TYPES.items()}


def rollout_pusht(policy: DiffusionPolicy, seeds: Sequence[int], *, batch_size: int = 10,
                  env_obs_type: str | None = None, video_path: str | Path | None = None, sampler: str | None = None,
                  steps: int | None = None, show_progress: bool = True, freeze: bool = True,
                  record_states: bool = False) -> list[EpisodeResult]:
    """One PushT episode of `policy` per seed (its sampling noise seeded by the first seed). `freeze` traces the
    U-Net for CPU inference (`DiffusionPolicy.freeze_for_cpu`); `record_states` keeps the simulator states."""
    adapter = PushTAdapter(env_obs_type or DEFAULT_ENV_OBS[policy.config.obs_type])
    policy.eval()
    if freeze and next(policy.parameters()).device.type == "cpu":
        policy.freeze_for_cpu()
    actor = TorchPolicyActor(policy, seed=int(seeds[0]), sampler=sampler, steps=steps)
    return run_episodes(actor, adapter, seeds, n_obs_steps=policy.config.n_obs_steps, batch_size=batch_size,
                        video_path=video_path, show_progress=show_progress, record_states=record_states)


def evaluate_pusht(policy: DiffusionPolicy, episodes: int, seed: int = 0, *, batch_size: int = 10,
                   env_obs_type: str | None = None, video_path: str | Path | None = None, sampler: str | None = None,
                   steps: int | None = None, show_progress: bool = True, per_episode: bool = False,
                   freeze: bool = True, states_out: str | Path | None = None,
                   plot_path: str | Path | None = None) -> dict:
    """Roll `policy` out for `episodes` seeds from `seed`; returns the metrics dict (plus per-episode rows if asked).
    `freeze` traces the U-Net for CPU inference (`DiffusionPolicy.freeze_for_cpu`); `states_out` writes the visited
    simulator states there (`save_rollout_states`); `plot_path` a PNG of the episodes (`plot_episodes`)."""
    obs_type = env_obs_type or DEFAULT_ENV_OBS[policy.config.obs_type]
    results = rollout_pusht(policy, range(seed, seed + episodes), batch_size=batch_size, env_obs_type=obs_type,
                            video_path=video_path, sampler=sampler, steps=steps, show_progress=show_progress,
                            freeze=freeze, record_states=states_out is not None)
    if states_out is not None:
        save_rollout_states(states_out, results)
    adapter = PushTAdapter(obs_type)
    metrics = summarize(results)
    times = chunk_latency(policy, adapter, seed, freeze=freeze, sampler=sampler, steps=steps)
    # median = the headline number; min = the same call without interference from other processes on the CPU
    metrics["seconds_per_action_chunk"] = float(np.median(times))
    metrics["seconds_per_action_chunk_min"] = float(times.min())
    metrics.update(seed=seed, env_obs_type=obs_type, sampler=sampler or policy.config.sampler,
                   inference_steps=policy.denoising_steps(sampler, steps), ddim_eta=policy.config.ddim_eta,
                   warm_start_t=policy.config.warm_start_t,
                   network_calls_per_chunk=policy.chunk_network_calls(sampler, steps),
                   action_steps=policy.config.n_action_steps,
                   cpu_weights=policy.config.cpu_weights if freeze else "float32",
                   torch_threads=torch.get_num_threads())
    if per_episode:
        metrics["per_episode"] = results_to_dicts(results)
    if plot_path is not None:
        plot_episodes(results, plot_path, title=f"{len(results)} episodes from seed {seed}")
    return metrics


def plot_episodes(results: Sequence[EpisodeResult], path: str | Path, title: str = "", max_steps: int = 300) -> None:
    """PNG (written atomically) of a PushT evaluation: the histogram of per-episode max coverage with the success
    threshold, and the fraction of episodes finished (coverage > 0.95, which ends an episode) by each env step."""
    from sciddiff.plots import pyplot, save_png
    from sciddiff.policy.pusht import SUCCESS_COVERAGE

    plt = pyplot()
    coverage = np.array([r.max_score for r in results])
    finished = np.array([r.steps for r in results if r.success])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(coverage, bins=np.linspace(0, 1, 41), color="C0", log=True)  # log: the failures hide beside the peak
    left.axvline(SUCCESS_COVERAGE, color="C3", lw=1)
    left.set(xlabel="max coverage over the episode", ylabel="episodes (log scale)",
             title=f"mean max reward {np.mean([r.max_reward for r in results]):.3f}")
    steps = np.arange(max_steps + 1)
    right.plot(steps, (finished[None] <= steps[:, None]).sum(1) / len(results), color="C0")
    right.set(xlabel="env step (10 Hz)", ylabel="fraction of episodes finished", xlim=(0, max_steps), ylim=(0, 1),
              title=f"success {len(finished) / len(results):.1%}")
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def save_rollout_states(path: str | Path, results: Sequence[EpisodeResult]) -> Path:
    """Atomically write the episodes' simulator states to an .npz: `states` (all episodes' states before each action
    and after the last, concatenated: agent x, y, block x, y, angle), `episode_ends` (cumulative row counts, as
    the replay buffer's), and per episode `seed`, `max_score` and `success`."""
    from sciddiff.train.checkpoint import atomic_file

    with atomic_file(path, "wb") as handle:
        np.savez(handle, states=np.concatenate([r.states for r in results]),
                 episode_ends=np.cumsum([len(r.states) for r in results]), seed=np.array([r.seed for r in results]),
                 max_score=np.array([r.max_score for r in results]), success=np.array([r.success for r in results]))
    return Path(path)


def chunk_latency(policy: DiffusionPolicy, adapter: PushTAdapter, seed: int = 0, repeats: int = 30,
                  freeze: bool = True, **kwargs) -> np.ndarray:
    """Seconds per action chunk (`repeats` timings) for one real observation history, on the CPU."""
    cpu_policy = policy
    if next(policy.parameters()).device.type != "cpu":
        cpu_policy = copy.deepcopy(policy).cpu()
        if freeze:
            cpu_policy.freeze_for_cpu()
    env = adapter.make_env()
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    feats = adapter.features(obs)
    n_obs = cpu_policy.config.n_obs_steps
    batch = {k: np.repeat(v[None, None], n_obs, axis=1) for k, v in feats.items()}  # (1, n_obs, ...)
    with torch.inference_mode():
        return time_action_chunk(TorchPolicyActor(cpu_policy, seed=seed, **kwargs), batch, repeats=repeats)
