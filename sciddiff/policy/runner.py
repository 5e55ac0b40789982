"""Closed-loop evaluation of an action-chunking policy in any gymnasium environment.

Receding horizon: the policy sees the last `n_obs_steps` observations (the reset observation repeated at the start,
like the training windows' edge padding), returns a chunk of actions, and all of them are executed before it is
asked again (the episode stops early at termination, truncation or `max_steps`). Episodes run in lockstep batches of
`batch_size` environments so one network call serves the whole batch. Episode i starts from `env.reset(seed=seeds[i])`.

An `EnvAdapter` holds what is task specific: how to make the env, how to turn an observation into the policy's
per-step features, which number is the episode's score (PushT: `info["coverage"]`; by default the step reward) and
when it counts as a success (PushT: max coverage > 0.95; by default: the env terminated, or the max score reached
`success_score` where one is given). Every episode also records its return (the sum of its rewards).
A policy is any callable `obs -> actions` on numpy dicts: obs[key] (B, n_obs_steps, ...) -> (B, n_actions, action_dim).
One that carries state from chunk to chunk (e.g. a warm-started diffusion policy, or one whose sampling noise follows
each episode) also has `reset(seeds)`: it is then reset at the start of each batch of episodes with their seeds and
called as `policy(obs, env_ids)`, env_ids naming the batch's environments (indices into those seeds).
"""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sciddiff.policy import pusht
from sciddiff.train.log import progress as progress_bar

PolicyFn = Callable[[dict[str, np.ndarray]], np.ndarray]


SUCCESS_RULES = ("terminated", "survived")


class EnvAdapter:
    """Generic gymnasium task: features = {"state": observation as float32}, score = reward, success = the episode
    `terminated` before the step limit (a goal reached: MountainCar's flag) or, with success="survived", that it
    ran to the limit without terminating (where termination is failure: CartPole, the locomotion tasks); or max
    score >= `success_score`. `max_steps` None: the env's registered episode limit (1000 where it has none).
    `env_id` may name the module that registers it, as gymnasium.make reads it ("my_package:MyEnv-v0")."""

    score_name = "reward"  # what `score` measures, named in the metrics

    def __init__(self, env_id: str, max_steps: int | None = None, env_kwargs: dict | None = None,
                 success_score: float | None = None, success: str = "terminated"):
        if success not in SUCCESS_RULES:
            raise ValueError(f"success must be one of {SUCCESS_RULES}, got {success!r}")
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.registered_steps = self._registered_limit(env_id)
        self.max_steps = max_steps if max_steps is not None else self.registered_steps or 1000
        self.success_score, self.success = success_score, success

    @staticmethod
    def _registered_limit(env_id: str) -> int | None:
        """The env's registered episode limit (None where it has none), importing the module a "module:EnvId" names
        first, as gymnasium.make does."""
        import importlib

        import gymnasium as gym

        module, _, name = env_id.rpartition(":")
        if module:
            importlib.import_module(module)
        return gym.spec(name).max_episode_steps

    def check_policy(self, state_dim: int, action_dim: int, actions: np.ndarray | None = None) -> list[str]:
        """Raise ValueError unless a policy reading `state_dim` observation features and writing `action_dim`
        actions can act in this env (a continuous Box action space of that size, flat observations of that size);
        returns notes: demonstrated `actions` (N, action_dim) beyond the env's bounds, which the env would clip."""
        from gymnasium import spaces

        env = self.make_env()
        try:
            obs_space, act_space = env.observation_space, env.action_space
            self.render_modes = list(env.metadata.get("render_modes") or [])  # a video needs rgb_array
        finally:
            env.close()
        if not isinstance(act_space, spaces.Box):
            raise ValueError(f"{self.env_id} has a {type(act_space).__name__} action space; a diffusion policy writes "
                             "continuous actions (a Box)")
        if len(act_space.shape) != 1 or act_space.shape[0] != action_dim:
            raise ValueError(f"the policy writes {action_dim} action values, {self.env_id} takes an action of shape "
                             f"{act_space.shape}" + (" (a flat Box is needed)" if len(act_space.shape) != 1 else ""))
        obs_size = obs_space.shape[0] if isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1 else None
        if obs_size != state_dim:
            raise ValueError(f"the policy reads {state_dim} observation features, {self.env_id} observes "
                             f"{obs_size if obs_size is not None else f'{type(obs_space).__name__} {obs_space.shape}'}"
                             + ("" if obs_size is not None else " (a flat Box is needed; an EnvAdapter subclass's "
                                                                "`features` can flatten it)"))
        notes = []
        if actions is not None and len(actions):
            low, high = act_space.low.reshape(-1), act_space.high.reshape(-1)
            outside = (actions < low - 1e-6) | (actions > high + 1e-6)
            if outside.any():
                notes.append(f"{outside.any(1).mean():.1%} of the demonstrated actions lie beyond {self.env_id}'s "
                             f"bounds [{low.min():g}, {high.max():g}]: the env clips what the policy learns there")
        return notes + self.length_notes()

    def length_notes(self) -> list[str]:
        """A note where episodes run longer than the env registers: scores then differ from the benchmark's."""
        if self.registered_steps and self.max_steps > self.registered_steps:
            return [f"episodes of {self.max_steps} steps, beyond {self.env_id}'s registered {self.registered_steps}: "
                    "scores are not comparable with the standard benchmark"]
        return []

    def make_env(self, render: bool = False):
        import gymnasium as gym

        if render and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            # off-screen frames: pygame's display otherwise prints an SDL error line on a headless machine
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        return gym.make(self.env_id, max_episode_steps=self.max_steps, **self.env_kwargs, **self.render_kwargs(render))

    def render_kwargs(self, render: bool) -> dict:
        return {"render_mode": "rgb_array"} if render else {}

    def features(self, obs) -> dict[str, np.ndarray]:
        return {"state": np.asarray(obs, dtype=np.float32)}

    def score(self, reward: float, info: dict) -> float:
        return float(reward)

    def is_success(self, max_score: float, terminated: bool) -> bool:
        if self.success_score is not None:
            return max_score >= self.success_score
        return bool(terminated) if self.success == "terminated" else not terminated

    def snapshot(self, env) -> np.ndarray | None:
        """The simulator state an expert could restart from (None where the task has no such notion)."""
        return None


class PushTAdapter(EnvAdapter):
    """gym-pusht: score = coverage of the goal by the T, reward = min(coverage / 0.95, 1), success = coverage > 0.95."""

    OBS_TYPES = ("state", "environment_state_agent_pos", "pixels_agent_pos")
    score_name = "coverage"

    def __init__(self, obs_type: str = "environment_state_agent_pos", max_steps: int = 300, gif_size: int = 256):
        if obs_type not in self.OBS_TYPES:
            raise ValueError(f"PushT obs_type must be one of {self.OBS_TYPES}, got {obs_type!r}")
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)

        super().__init__(pusht.ENV_ID, max_steps, {"obs_type": obs_type})
        self.obs_type, self.gif_size = obs_type, gif_size

    def render_kwargs(self, render: bool) -> dict:
        # gym-pusht always renders rgb_array; the GIF uses its visualization size.
        return {"visualization_width": self.gif_size, "visualization_height": self.gif_size}

    def features(self, obs) -> dict[str, np.ndarray]:
        return pusht.obs_to_features(obs, self.obs_type)

    def score(self, reward: float, info: dict) -> float:
        return float(info["coverage"])

    def is_success(self, max_score: float, terminated: bool) -> bool:
        return max_score > pusht.SUCCESS_COVERAGE

    def snapshot(self, env) -> np.ndarray:
        return pusht.env_state(env)


@dataclass
class EpisodeResult:
    seed: int
    max_score: float  # PushT: max coverage over the episode
    max_reward: float  # max env reward over the episode (PushT: min(coverage / 0.95, 1))
    success: bool
    steps: int
    episode_return: float = 0.0  # sum of the env's rewards
    states: np.ndarray | None = None  # (steps + 1, ...) adapter snapshots before each action, with record_states


def summarize(results: Sequence[EpisodeResult], score_name: str = "coverage") -> dict:
    """Mean max reward, mean max score (`mean_max_<score_name>`; PushT: coverage; left out when the score is the
    reward), mean return and success rate over episodes."""
    metrics = {"mean_max_reward": float(np.mean([r.max_reward for r in results]))}
    if score_name != "reward":
        metrics[f"mean_max_{score_name}"] = float(np.mean([r.max_score for r in results]))
    return {**metrics, "mean_return": float(np.mean([r.episode_return for r in results])),
            "success_rate": float(np.mean([r.success for r in results])), "episodes": len(results)}


class TorchPolicyActor:
    """Wrap a `DiffusionPolicy` (`predict_plan`, `plan_actions`) as a numpy policy; sampling noise is seeded. After
    `reset(seeds)` each environment's noise comes from its own generator, seeded by its episode's seed, so the noise
    does not depend on which episodes share its batch (the batched network's float rounding still does); before any
    reset one generator (`seed`) serves every call. It keeps each environment's last plan, the start of the next
    chunk when the policy warm-starts (`config.warm_start_t`; ignored otherwise): without env_ids, row i of every call
    is environment i."""

    def __init__(self, policy: torch.nn.Module, seed: int = 0, **predict_kwargs):
        self.policy = policy
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.episode_generators: list[torch.Generator] = []
        self.predict_kwargs = predict_kwargs
        self.plans: dict[int, torch.Tensor] = {}

    def reset(self, seeds: Sequence[int] = ()) -> None:
        self.plans.clear()
        self.episode_generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def __call__(self, obs: dict[str, np.ndarray], env_ids: Sequence[int] | None = None) -> np.ndarray:
        tensors = {k: torch.as_tensor(np.asarray(v), device=self.device) for k, v in obs.items()}
        ids = [int(i) for i in (range(len(next(iter(obs.values())))) if env_ids is None else env_ids)]
        previous = torch.stack([self.plans[i] for i in ids]) if all(i in self.plans for i in ids) else None
        generator = [self.episode_generators[i] for i in ids] if self.episode_generators else self.generator
        plan = self.policy.predict_plan(tensors, generator=generator, previous=previous, **self.predict_kwargs)
        self.plans.update(zip(ids, plan))
        return self.policy.plan_actions(plan).cpu().numpy()


def run_episodes(policy: PolicyFn, adapter: EnvAdapter, seeds: Sequence[int], *, n_obs_steps: int = 2,
                 batch_size: int = 10, video_path: str | Path | None = None, show_progress: bool = True,
                 record_states: bool = False) -> list[EpisodeResult]:
    """Run one episode per seed; write a video of the first one if `video_path` is given (`write_video`: GIF or
    MP4); with `record_states`, each result carries the adapter's snapshot of the simulator before every action and
    after the last."""
    seeds = [int(s) for s in seeds]
    results: list[EpisodeResult] = []
    frames: list[np.ndarray] = []
    envs = [adapter.make_env(render=video_path is not None and i == 0) for i in range(min(batch_size, len(seeds)))]
    fps = int(envs[0].metadata.get("render_fps") or 10) if envs else 10  # the video plays at the env's own rate
    bar = progress_bar(total=len(seeds), desc="episodes", unit="ep", disable=not show_progress)
    try:
        for start in range(0, len(seeds), batch_size):
            group = seeds[start:start + batch_size]
            record = frames if video_path is not None and start == 0 else None
            results += _run_group(policy, adapter, envs[:len(group)], group, n_obs_steps, record, bar, record_states)
    finally:
        bar.close()
        for env in envs:
            env.close()
    if video_path is not None and frames:
        write_video(video_path, frames, fps=fps)
    return results


def _run_group(policy: PolicyFn, adapter: EnvAdapter, envs: list, seeds: list[int], n_obs_steps: int,
               frames: list | None, bar, record_states: bool = False) -> list[EpisodeResult]:
    n = len(envs)
    stateful = callable(getattr(policy, "reset", None))
    if stateful:
        policy.reset(seeds)
    snapshots: list[list] = [[] for _ in range(n)]
    history, max_score, max_reward, steps = [], np.full(n, -np.inf), np.full(n, -np.inf), np.zeros(n, dtype=int)
    returns = np.zeros(n)
    terminated, alive = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    for env, seed, snaps in zip(envs, seeds, snapshots):
        obs, _ = env.reset(seed=seed)
        feats = adapter.features(obs)
        history.append(deque([feats] * n_obs_steps, maxlen=n_obs_steps))
        if record_states:
            snaps.append(adapter.snapshot(env))
    if frames is not None:
        frames.append(envs[0].render())
    while alive.any():
        idx = np.flatnonzero(alive)
        batch = {k: np.stack([np.stack([h[k] for h in history[i]]) for i in idx]) for k in history[idx[0]][0]}
        actions = np.asarray(policy(batch, idx) if stateful else policy(batch))
        for row, i in enumerate(idx):
            for action in actions[row]:
                obs, reward, term, trunc, info = envs[i].step(action)
                steps[i] += 1
                max_score[i] = max(max_score[i], adapter.score(reward, info))
                max_reward[i] = max(max_reward[i], float(reward))
                returns[i] += float(reward)
                history[i].append(adapter.features(obs))
                if record_states:
                    snapshots[i].append(adapter.snapshot(envs[i]))
                if frames is not None and i == 0:
                    frames.append(envs[0].render())
                if term or trunc or steps[i] >= adapter.max_steps:
                    alive[i], terminated[i] = False, bool(term)
                    bar.update(1)
                    break
    return [EpisodeResult(seed, float(max_score[i]), float(max_reward[i]),
                          adapter.is_success(float(max_score[i]), bool(terminated[i])), int(steps[i]),
                          float(returns[i]), np.asarray(snapshots[i]) if record_states else None)
            for i, seed in enumerate(seeds)]


VIDEO_SUFFIXES = (".gif", ".mp4")


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """Atomically write `frames` (H, W, 3 uint8) as a looping GIF or an H.264 MP4 (yuv420p, what browsers and
    LeRobot's viewers play; through imageio's ffmpeg plugin), chosen by the suffix of `path`."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"a rollout video must be one of {', '.join(VIDEO_SUFFIXES)}, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{suffix}")
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    try:
        if suffix == ".gif":
            imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)
        else:  # yuv420p needs even sides: pad an odd edge by one repeated pixel rather than let imageio resize
            frames = [np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge") for f in frames]
            imageio.mimsave(tmp, frames, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=2)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def time_action_chunk(policy: PolicyFn, obs: dict[str, np.ndarray], repeats: int = 20, warmup: int = 3,
                      ) -> np.ndarray:
    """Wall seconds of `repeats` policy calls on one observation history (batch of 1); a stateful policy is timed
    in its steady state (e.g. warm-started chunks), the warm-up calls having set it up."""
    single = {k: np.asarray(v)[:1] for k, v in obs.items()}
    for _ in range(warmup):
        policy(single)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy(single)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def results_to_dicts(results: Sequence[EpisodeResult]) -> list[dict]:
    """Per-episode rows for JSON (without recorded states)."""
    return [{k: v for k, v in asdict(r).items() if k != "states"} for r in results]
