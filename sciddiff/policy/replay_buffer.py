"""Episode storage in Diffusion Policy's zarr layout: read the paper's v2 stores, write and append with zarr 3.

Layout: `data/<key>` arrays share axis 0 (all episodes back to back, one row per 10 Hz step) and `meta/episode_ends`
(E,) int64 holds each episode's exclusive end row. `episode_ends` is the source of truth for the length: appends write
the data rows first and the new end last, so a store interrupted mid-append still reads as its complete episodes
(and the dangling rows are trimmed the next time it is opened for appending).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import zarr

from sciddiff.cli import UserError, print_note

CHUNK_STEPS = 256  # rows per chunk along time: ~2 demonstrations; a 96x96x3 uint8 chunk is then 7 MB raw


class ReplayBuffer:
    """A zarr group of episodes; reads lazily, `load()` copies selected keys and episodes into memory."""

    def __init__(self, root: zarr.Group, path: str | Path | None = None):
        self.root, self.path = root, path

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open an existing store ("r" read-only, "a" to append episodes)."""
        if not Path(path).exists():
            raise UserError(f"no zarr replay buffer at {path}")
        try:
            root = zarr.open_group(str(path), mode=mode)
        except (FileNotFoundError, ValueError) as err:  # zarr's GroupNotFoundError is both
            raise UserError(f"{path} is not a zarr replay buffer ({type(err).__name__})") from None
        try:
            if "meta" not in root or "episode_ends" not in root["meta"]:
                raise UserError(f"{path} is not a replay buffer (no meta/episode_ends)")
            if "data" not in root:
                raise UserError(f"{path} is not a replay buffer (no data group)")
            buffer = cls(root, path)
            buffer._check_episode_ends(path)
            if mode != "r":
                buffer._trim_dangling_rows()
        except UserError:
            raise
        except Exception as err:  # damaged metadata (zarr.json) or an index chunk: one line, not zarr's traceback
            what = "cannot open the zarr store" if isinstance(err, OSError) else "damaged zarr store"  # permissions
            raise UserError(f"{path}: {what} ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        return buffer

    @classmethod
    def create(cls, path: str | Path, zarr_format: int = 3, overwrite: bool = False) -> ReplayBuffer:
        """Create an empty store; arrays are made by the first `add_episode`."""
        if Path(path).exists() and not overwrite:
            raise UserError(f"{path} exists (pass overwrite=True to replace it)")
        root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        root.require_group("data")
        root.require_group("meta").create_array("episode_ends", shape=(0,), dtype="int64", chunks=(1024,))
        return cls(root, path)

    @property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self.root["meta/episode_ends"][:], dtype=np.int64)

    @property
    def n_episodes(self) -> int:
        return int(self.root["meta/episode_ends"].shape[0])

    @property
    def n_steps(self) -> int:
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    @property
    def keys(self) -> list[str]:
        return sorted(self.root["data"].array_keys())

    def episode_slice(self, index: int) -> slice:
        ends = self.episode_ends
        if not -len(ends) <= index < len(ends):
            raise IndexError(f"episode {index} out of range ({len(ends)} episodes)")
        index %= len(ends)
        return slice(int(ends[index - 1]) if index > 0 else 0, int(ends[index]))

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        rows = self.episode_slice(index)
        return {k: np.asarray(self.root["data"][k][rows]) for k in (keys or self.keys)}

    def load(self, keys: Iterable[str] | None = None, episodes: Iterable[int] | None = None,
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Copy `keys` of the chosen `episodes` (default all) to memory -> (data, episode_ends of the copy)."""
        keys = list(keys or self.keys)
        missing = set(keys) - set(self.keys)
        if missing:
            raise UserError(f"replay buffer has no key(s) {sorted(missing)}; it has {self.keys}")
        n = self.n_steps
        slices = [slice(0, n)] if episodes is None else [self.episode_slice(i) for i in episodes]
        data = {}
        for k in keys:
            try:
                data[k] = np.concatenate([np.asarray(self.root["data"][k][s]) for s in slices])
            except Exception as err:  # a damaged chunk (zarr raises its codec's error): one line
                raise UserError(f"{self.path or 'replay buffer'}: cannot read data/{k} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:200]})") from None
        if episodes is None:
            return data, self.episode_ends
        return data, np.cumsum([s.stop - s.start for s in slices]).astype(np.int64)

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode: every array has the same length along axis 0 and the same keys, per-step shapes and
        kinds of dtype as earlier episodes. All or nothing: a refused episode writes no row."""
        episode = {k: np.asarray(v) for k, v in episode.items()}
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"episode arrays must share one non-zero length, got {lengths}")
        if bad := {k: v.dtype for k, v in episode.items() if v.dtype.kind not in "biuf"}:
            raise ValueError(f"episode arrays must be numeric (bool, int, float), got {bad}")
        data = self.root["data"]
        if self.n_episodes == 0 and not self.keys:
            for k, v in episode.items():
                data.create_array(k, shape=(0, *v.shape[1:]), dtype=v.dtype, chunks=(CHUNK_STEPS, *v.shape[1:]))
        elif set(episode) != set(self.keys):
            raise ValueError(f"episode keys {sorted(episode)} differ from the buffer's {self.keys}")
        for k, v in episode.items():
            if v.shape[1:] != data[k].shape[1:] or not np.can_cast(v.dtype, data[k].dtype, "same_kind"):
                raise ValueError(f"episode array {k!r} is {v.dtype} {v.shape[1:]} per step; the buffer holds "
                                 f"{data[k].dtype} {data[k].shape[1:]}")
        try:
            for k, v in episode.items():
                data[k].append(v.astype(data[k].dtype, copy=False), axis=0)
            self.root["meta/episode_ends"].append(np.array([self.n_steps + next(iter(lengths.values()))]), axis=0)
        except BaseException:  # a write that failed part-way (disk full, Ctrl-C): no row of it stays
            self._trim_dangling_rows()
            raise

    def _check_episode_ends(self, path: str | Path) -> None:
        """Refuse a store whose `episode_ends` cannot index its data: every reader (training, `prepare`,
        `demos --complete`, appends) would otherwise fail deep inside with an IndexError or silently truncate."""
        ends_array = self.root["meta/episode_ends"]
        if len(ends_array.shape) != 1 or not np.issubdtype(ends_array.dtype, np.integer):
            raise UserError(f"{path}: meta/episode_ends must be a 1-D integer array, not {ends_array.dtype} "
                            f"{ends_array.shape}")
        ends = self.episode_ends
        if len(ends) and (ends[0] <= 0 or (np.diff(ends) <= 0).any()):
            raise UserError(f"{path}: meta/episode_ends must be positive and strictly increasing, got "
                            f"{_preview(ends)}")
        shapes = {k: self.root["data"][k].shape for k in self.keys}
        if scalar := [k for k, shape in shapes.items() if not shape]:
            raise UserError(f"{path}: data/{scalar[0]} is a single value, not one row per step")
        rows = {k: shape[0] for k, shape in shapes.items()}
        if short := {k: n for k, n in rows.items() if n < self.n_steps}:
            key = min(short, key=short.get)
            raise UserError(f"{path}: meta/episode_ends ends at row {self.n_steps} but data/{key} has only "
                            f"{short[key]} rows")
        if more := {k: n - self.n_steps for k, n in rows.items() if n > self.n_steps}:
            key = max(more, key=more.get)  # an interrupted append's, or episode_ends that miss the data's last rows
            print_note(f"{path}: data/{key} has {more[key]} rows after meta/episode_ends' last end (row "
                       f"{self.n_steps}): read as an interrupted append's, they belong to no episode")

    def _trim_dangling_rows(self) -> None:
        n = self.n_steps
        for k in self.keys:
            arr = self.root["data"][k]
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))


def _preview(values: np.ndarray, most: int = 8) -> str:
    return np.array2string(values[:most], separator=" ").rstrip("]") + (" ...]" if len(values) > most else "]")
