"""Training windows over episodes, with episode-edge padding expressed as index clamping.

A window is `horizon` consecutive row indices into the flat (all episodes back to back) data. Windows may start up to
`pad_before` steps before an episode's first step and end up to `pad_after` steps after its last; the out-of-episode
positions are clamped to the episode's first/last row, i.e. the edge frame is repeated. This is Diffusion Policy's
padding (`pad_before = n_obs_steps - 1`, `pad_after = n_action_steps - 1`): the first window observes the initial state
twice, as the env runner does at reset, and the last windows teach the policy to hold its final action.
A batch is then a gather `data[windows[batch_rows]]`, identical on the CPU and on a GPU that holds the whole dataset.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def episode_starts(episode_ends: np.ndarray) -> np.ndarray:
    ends = np.asarray(episode_ends, dtype=np.int64)
    return np.concatenate([[0], ends[:-1]]).astype(np.int64)


def sequence_windows(episode_ends: np.ndarray, horizon: int, pad_before: int = 0, pad_after: int = 0,
                     episodes: Iterable[int] | None = None) -> np.ndarray:
    """All windows of the chosen episodes (default all) -> (M, horizon) int64 row indices."""
    if pad_before >= horizon or pad_after >= horizon:
        raise ValueError("padding must be shorter than the horizon")
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = episode_starts(ends)
    chosen = range(len(ends)) if episodes is None else episodes
    offsets = np.arange(horizon, dtype=np.int64)
    windows = []
    for e in chosen:
        first, last = starts[e], ends[e] - 1
        # Window starts from -pad_before to length - horizon + pad_after (inclusive), relative to the episode start.
        rel = np.arange(-pad_before, (last - first + 1) - horizon + pad_after + 1, dtype=np.int64)
        windows.append(np.clip(first + rel[:, None] + offsets, first, last))
    if not windows:
        return np.zeros((0, horizon), dtype=np.int64)
    return np.concatenate(windows)


def split_episodes(n_episodes: int, n_val: int, seed: int = 0, max_train: int | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split -> (train episode ids, val episode ids), both sorted, as Diffusion Policy's `get_val_mask` and
    `downsample_mask` draw them: `n_val` episodes at random, then `max_train` of the rest at random from a second
    generator of the same seed (PushT with seed 42, 4 held out and 90: the paper's training episodes)."""
    if not 0 <= n_val < n_episodes:
        raise ValueError(f"cannot hold out {n_val} of {n_episodes} episodes")
    val = np.sort(np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False))
    train = np.setdiff1d(np.arange(n_episodes), val)
    if max_train is not None and len(train) > max_train:
        train = np.sort(train[np.random.default_rng(seed).choice(len(train), size=max_train, replace=False)])
    return train, val
