"""Score a trained policy on PushT (or any gymnasium task through an `EnvAdapter`): N episodes from seeds S, S+1, ...,
the paper's and LeRobot's metrics, CPU latency.

PushT metrics (per episode, then averaged): max coverage over the episode; max reward = min(max coverage / 0.95, 1)
(Diffusion Policy's and LeRobot's "mean max reward"); success = max coverage > 0.95 (gym-pusht's termination); the
return. Another task reports its adapter's max reward, return and success (`runner.summarize`). The latency
`seconds_per_action_chunk` is the median wall time of one 8-action chunk for one observation history (batch of 1),
warm-started as the rollouts run it (`TorchPolicyActor`), on the CPU with the current torch thread count (`..._min`:
the fastest of those chunks).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sciddiff.policy.policy import DiffusionPolicy
from sciddiff.policy.runner import (EnvAdapter, EpisodeResult, PushTAdapter, TorchPolicyActor, results_to_dicts,
                                    run_episodes, summarize, time_action_chunk)

# the gym-pusht observation types that give each policy type its features (`pusht.obs_to_features`), default first
ENV_OBS_TYPES = {"state": ("environment_state_agent_pos", "state"), "image": ("pixels_agent_pos",)}
DEFAULT_ENV_OBS = {kind: types[0] for kind, types in ENV_OBS_TYPES.items()}


def task_adapter(config, env: str | None = None, max_steps: int | None = None,
                 success: str | None = None) -> EnvAdapter:
    """The environment a policy was trained for: gym-pusht for `extra["task"] == "pusht"` (the default), else the
    gymnasium env `env` or, without it, the one recorded at training (`extra["env"]`, `sciddiff policy train --env`).
    `max_steps`: the episode limit (default: PushT's 300, another env's registered limit); `success`: a generic
    task's success rule (`runner.SUCCESS_RULES`, default "terminated"). Raises ValueError when a generic policy has
    no env, or for options that do not apply to PushT."""
    if config.extra.get("task", "pusht") == "pusht":
        if env is not None:
            raise ValueError("this is a PushT policy; --env is for policies trained with --task generic")
        if success is not None:
            raise ValueError("--success is for --task generic policies; PushT's is the T covering >= 95% of its goal")
        return PushTAdapter(DEFAULT_ENV_OBS[config.obs_type], **({} if max_steps is None else {"max_steps": max_steps}))
    env = env or config.extra.get("env")
    if env is None:
        raise ValueError("this policy was trained for a generic task with no env recorded: give the gymnasium env id "
                         "(--env ID)")
    return EnvAdapter(env, max_steps, success=success or "terminated")


def rollout_pusht(policy: DiffusionPolicy, seeds: Sequence[int], *, env_obs_type: str | None = None,
                  **kwargs) -> list[EpisodeResult]:
    """`rollout` in gym-pusht, the observation type matching the policy's unless `env_obs_type` is given."""
    return rollout(policy, PushTAdapter(env_obs_type or DEFAULT_ENV_OBS[policy.config.obs_type]), seeds, **kwargs)


def rollout(policy: DiffusionPolicy, adapter: EnvAdapter, seeds: Sequence[int], *, batch_size: int = 10,
            video_path: str | Path | None = None, sampler: str | None = None, steps: int | None = None,
            show_progress: bool = True, freeze: bool = True, record_states: bool = False) -> list[EpisodeResult]:
    """One episode of `policy` per seed, its sampling noise seeded by that seed too (`TorchPolicyActor`): with
    batch_size 1 an episode is reproduced alone; in a batch, up to the batched network's float rounding. `freeze` traces the U-Net for CPU inference (`DiffusionPolicy.freeze_for_cpu`);
    `record_states` keeps the simulator states."""
    policy.eval()
    if freeze and next(policy.parameters()).device.type == "cpu":
        policy.freeze_for_cpu()
    actor = TorchPolicyActor(policy, sampler=sampler, steps=steps)
    return run_episodes(actor, adapter, seeds, n_obs_steps=policy.config.n_obs_steps, batch_size=batch_size,
                        video_path=video_path, show_progress=show_progress, record_states=record_states)


def evaluate_pusht(policy: DiffusionPolicy, episodes: int, seed: int = 0, *, env_obs_type: str | None = None,
                   max_steps: int = 300, **kwargs) -> dict:
    """`evaluate_policy` in gym-pusht, the observation type matching the policy's unless `env_obs_type` is given."""
    obs_type = env_obs_type or DEFAULT_ENV_OBS[policy.config.obs_type]
    adapter = PushTAdapter(obs_type, max_steps=max_steps)
    return {**evaluate_policy(policy, adapter, episodes, seed, **kwargs), "env_obs_type": obs_type}


def evaluate_policy(policy: DiffusionPolicy, adapter: EnvAdapter, episodes: int, seed: int = 0, *,
                    batch_size: int = 10, video_path: str | Path | None = None, sampler: str | None = None,
                    steps: int | None = None, show_progress: bool = True, per_episode: bool = False,
                    freeze: bool = True, states_out: str | Path | None = None,
                    plot_path: str | Path | None = None) -> dict:
    """Roll `policy` out in `adapter`'s env for `episodes` seeds from `seed`; returns the metrics dict (plus
    per-episode rows if asked). `freeze` traces the U-Net for CPU inference (`DiffusionPolicy.freeze_for_cpu`);
    `states_out` writes the visited simulator states there (`save_rollout_states`; adapters with snapshots, e.g.
    PushT); `plot_path` a PNG of the episodes (`plot_episodes`)."""
    results = rollout(policy, adapter, range(seed, seed + episodes), batch_size=batch_size, video_path=video_path,
                      sampler=sampler, steps=steps, show_progress=show_progress, freeze=freeze,
                      record_states=states_out is not None)
    if states_out is not None:
        save_rollout_states(states_out, results)
    metrics = summarize(results, adapter.score_name)
    times = chunk_latency(policy, adapter, seed, freeze=freeze, sampler=sampler, steps=steps)
    # median = the headline number; min = the same call without interference from other processes on the CPU
    metrics["seconds_per_action_chunk"] = float(np.median(times))
    metrics["seconds_per_action_chunk_min"] = float(times.min())
    metrics.update(seed=seed, env=adapter.env_id, max_steps=adapter.max_steps, sampler=sampler or policy.config.sampler,
                   inference_steps=policy.denoising_steps(sampler, steps), ddim_eta=policy.config.ddim_eta,
                   warm_start_t=policy.config.warm_start_t,
                   network_calls_per_chunk=policy.chunk_network_calls(sampler, steps),
                   action_steps=policy.config.n_action_steps,
                   cpu_weights=policy.config.cpu_weights if freeze else "float32",
                   torch_threads=torch.get_num_threads())
    if not isinstance(adapter, PushTAdapter):  # what "success" meant here (PushT's is coverage > 0.95)
        metrics["success_rule"] = (f"max score >= {adapter.success_score:g}" if adapter.success_score is not None
                                   else adapter.success)
    if per_episode:
        metrics["per_episode"] = results_to_dicts(results)
    if plot_path is not None:
        plot_episodes(results, plot_path, title=f"{len(results)} episodes from seed {seed}", adapter=adapter)
    return metrics


def plot_episodes(results: Sequence[EpisodeResult], path: str | Path, title: str = "", max_steps: int = 300,
                  adapter: EnvAdapter | None = None) -> None:
    """PNG (written atomically) of an evaluation: for PushT (no `adapter`, or a PushT one) the histogram of
    per-episode max coverage with the success threshold, for another task that of the episodes' returns; and the
    fraction of episodes finished successfully by each env step (up to the adapter's max_steps)."""
    from sciddiff.plots import pyplot, save_png
    from sciddiff.policy.pusht import SUCCESS_COVERAGE

    plt = pyplot()
    pusht = adapter is None or isinstance(adapter, PushTAdapter)
    max_steps = max_steps if adapter is None else adapter.max_steps
    finished = np.array([r.steps for r in results if r.success])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if pusht:
        left.hist([r.max_score for r in results], bins=np.linspace(0, 1, 41), color="C0", log=True)  # log: the
        left.axvline(SUCCESS_COVERAGE, color="C3", lw=1)                                 # failures hide by the peak
        left.set(xlabel="max coverage over the episode", ylabel="episodes (log scale)",
                 title=f"mean max reward {np.mean([r.max_reward for r in results]):.3f}")
    else:
        returns = [r.episode_return for r in results]
        left.hist(returns, bins=min(40, max(5, len(results) // 2)), color="C0")
        left.set(xlabel="episode return", ylabel="episodes", title=f"mean return {np.mean(returns):.3g}")
    steps = np.arange(max_steps + 1)
    right.plot(steps, (finished[None] <= steps[:, None]).sum(1) / len(results), color="C0")
    right.set(xlabel="env step (10 Hz)" if pusht else "env step", ylabel="fraction of episodes finished",
              xlim=(0, max_steps), ylim=(0, 1), title=f"success {len(finished) / len(results):.1%}")
    fig.suptitle(title)
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


def chunk_latency(policy: DiffusionPolicy, adapter: EnvAdapter, seed: int = 0, repeats: int = 30,
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
