"""Training arrays from a zarr replay buffer or from one preprocessed `.npz` file.

A dataset is a dict of numpy arrays sharing axis 0 (env steps, episodes back to back) plus `episode_ends`. Tasks:
- `pusht` (default): state policy `state` (N, 18) float32 (agent xy + the 8 block vertices, see
  `pusht.state_features`), `action` (N, 2); image policy `image` (N, 96, 96, 3) uint8, `agent_pos` (N, 2) float32,
  `action` (N, 2); read from a store whose data/state rows are gym-pusht's (agent x, y, block x, y, angle).
- `generic`: any other gymnasium task, state policies: the store's data/state (N, D) and data/action (N, A) as they
  are (float32), D and A free. Write such a store with `ReplayBuffer` (keys "state" and "action"), or name other keys
  (`GenericKeys`: a store that keeps the observation in several arrays, e.g. keypoint (N, 9, 2) and agent_pos (N, 2),
  flattened and concatenated in the order named into the observation vector; whole arrays, no column selection).
`prepare_dataset` writes such a dict with `np.savez_compressed` so that a GPU machine without zarr or gymnasium can train
from a single file (the 25,650 frames compress to ~12 MB as HWC uint8). `load_dataset` reads either form; it needs zarr
only for `.zarr` paths.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from sciddiff.cli import UserError
from sciddiff.policy import pusht

OBS_KEYS = {"state": ("state",), "image": ("image", "agent_pos")}


@dataclasses.dataclass(frozen=True)
class GenericKeys:
    """Which arrays of a generic task's store make its observation (flattened per row and concatenated in this order)
    and its action."""
    obs: tuple[str, ...] = ("state",)
    action: str = "action"

    @classmethod
    def from_options(cls, task: str, obs_keys: list[str] | None, action_key: str | None) -> GenericKeys:
        """The keys `--obs-keys` / `--action-key` name (defaults where not given); refused for PushT."""
        if task != "generic" and (obs_keys or action_key):
            raise UserError("--obs-keys and --action-key name a generic task's arrays (--task generic); PushT's are "
                            "fixed")
        return cls(tuple(obs_keys or cls.obs), action_key or cls.action)


TASKS = ("pusht", "generic")
# Per-row shapes PushT needs: the replay buffer's raw arrays, then the training arrays made from them. Checked where the
# data are read, so that a malformed store is one line naming it, not an IndexError deep in training.
STORE_SHAPES = {"state": ((5,), "agent x, y, block x, y, angle"), "action": ((2,), "target agent x, y")}
DATASET_SHAPES = {"state": ((pusht.STATE_FEATURE_DIM,), "agent xy + 8 block vertices"),
                  "agent_pos": ((2,), "agent x, y"), "action": ((2,), "target agent x, y"),
                  "image": ((96, 96, 3), "96x96 RGB frames")}


def data_root() -> Path:
    """$SCIDDIFF_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("SCIDDIFF_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def default_zarr() -> Path:
    return data_root() / "pusht" / "pusht_cchi_v7_replay.zarr"


def dataset_from_zarr(path: str | Path, obs_type: str, chunk: int = 2048, task: str = "pusht",
                      keys: GenericKeys = GenericKeys()) -> dict[str, np.ndarray]:
    """Read a replay buffer (keys data/state, data/action, or a generic task's `keys`; PushT image policies also
    data/img) into training arrays."""
    from sciddiff.policy.replay_buffer import ReplayBuffer

    check_task(task, obs_type)
    buffer = ReplayBuffer.open(path)
    if task == "generic":
        raw, ends = buffer.load([*keys.obs, keys.action])
        rows = len(raw[keys.action])
        out = {"state": np.concatenate([raw[k].reshape(rows, -1) for k in keys.obs], 1).astype(np.float32),
               "action": raw[keys.action].reshape(rows, -1).astype(np.float32), "episode_ends": ends.astype(np.int64)}
        check_dataset(out, path, obs_type, task)
        return out
    try:
        raw, ends = pusht_store_arrays(buffer, path)
    except UserError as err:
        if "PushT needs" not in str(err):
            raise
        raise UserError(f"{err} (another gymnasium task's vectors as they are: --task generic)") from None
    out = {"action": raw["action"].astype(np.float32), "episode_ends": ends.astype(np.int64)}
    if obs_type == "state":
        out["state"] = pusht.state_features(raw["state"])
    elif obs_type == "image":
        if "img" not in buffer.keys:
            raise UserError(f"{path} has no data/img frames for an image policy")
        img = buffer.root["data/img"]
        frames, peak = np.empty((buffer.n_steps, *img.shape[1:]), dtype=np.uint8), 0.0
        for s in range(0, buffer.n_steps, chunk):  # the float32 frames are 2.8 GB: convert chunk by chunk
            block = img[s:s + chunk]
            peak = max(peak, float(block.max(initial=0)))
            frames[s:s + chunk] = np.clip(np.rint(block), 0, 255)
        if buffer.n_steps and peak <= 1.0:  # 0..1 floats would round to black and white frames, without a word
            raise UserError(f"{path}: data/img holds values up to {peak:g}: frames must be 0-255 pixels (multiply "
                            "0..1 floats by 255)")
        out["image"] = frames
        out["agent_pos"] = raw["state"][:, :2].astype(np.float32)
    else:
        raise UserError(f"obs_type must be 'state' or 'image', got {obs_type!r}")
    check_dataset(out, path, obs_type)
    return out


def pusht_store_arrays(buffer, path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """data/state and data/action of a PushT replay buffer, checked (shapes, finite values) -> (arrays, ends)."""
    raw, ends = buffer.load(["state", "action"])
    for key, (shape, meaning) in STORE_SHAPES.items():
        _check_array(path, f"data/{key}", raw[key], shape, meaning)
    return raw, ends


def check_task(task: str, obs_type: str) -> None:
    if task not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "generic" and obs_type != "state":
        raise UserError("--task generic trains state policies (data/state, data/action); image policies are PushT's")


def check_dataset(arrays: dict[str, np.ndarray], path: str | Path, obs_type: str, task: str = "pusht") -> None:
    """Training arrays of `obs_type` fit together: at least one episode, `episode_ends` strictly increasing up to
    exactly the rows of every array, the task's per-row shapes (PushT's, or any vector per row for a generic task),
    finite numbers. Raises a one-line UserError naming path."""
    ends = arrays["episode_ends"]
    if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
        raise UserError(f"{path}: episode_ends must be a 1-D integer array, not {ends.dtype} {ends.shape}")
    if not len(ends):
        raise UserError(f"{path} holds no episodes")
    if ends[0] <= 0 or (np.diff(ends) <= 0).any():
        raise UserError(f"{path}: episode_ends must be positive and strictly increasing")
    for key in ("action", *OBS_KEYS[obs_type]):
        shape, meaning = DATASET_SHAPES[key] if task == "pusht" else (arrays[key].shape[1:2], "one vector per step")
        _check_array(path, key, arrays[key], shape, meaning, task)
        if len(arrays[key]) != ends[-1]:
            raise UserError(f"{path}: episode_ends ends at row {ends[-1]} but {key} has {len(arrays[key])} rows")
    if obs_type == "image" and arrays["image"].dtype != np.uint8:
        raise UserError(f"{path}: image must be uint8 frames, not {arrays['image'].dtype}")


def _check_array(path: str | Path, name: str, a: np.ndarray, shape: tuple[int, ...], meaning: str,
                 task: str = "pusht") -> None:
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{path}: {name} must hold numbers, not {a.dtype}")
    if task == "generic" and (a.ndim != 2 or not a.shape[1]):
        raise UserError(f"{path}: {name} has shape {a.shape}; a generic task needs (rows, features)")
    if a.ndim < 1 or a.shape[1:] != shape:
        raise UserError(f"{path}: {name} has shape {a.shape}; PushT needs (rows, {', '.join(map(str, shape))}): "
                        f"{meaning}")
    if np.issubdtype(a.dtype, np.floating) and not (finite := np.isfinite(a).all(tuple(range(1, a.ndim)))).all():
        raise UserError(f"{path}: {name} holds nan or inf in {int((~finite).sum())} row(s) (the first is row "
                        f"{int(np.argmin(finite))})")


def prepare_dataset(zarr_path: str | Path, out_path: str | Path, obs_type: str, task: str = "pusht",
                    keys: GenericKeys = GenericKeys()) -> Path:
    """Write the training arrays of `obs_type` to a compressed `.npz` (atomically)."""
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise UserError(f"prepared datasets are .npz files, got {out_path}")
    arrays = dataset_from_zarr(zarr_path, obs_type, task=task, keys=keys)
    meta = {"source": str(zarr_path), "obs_type": obs_type, "task": task,
            **({"obs_keys": list(keys.obs), "action_key": keys.action} if task == "generic" else {})}
    if task == "pusht":
        meta["state_features"] = "agent xy + 8 T vertices (gym-pusht get_keypoints order)"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def concat_datasets(datasets: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Training arrays of several datasets, episodes back to back in the given order."""
    keys = set(datasets[0])
    if any(set(d) != keys for d in datasets):
        raise UserError(f"datasets differ in their arrays: {[sorted(d) for d in datasets]}")
    offsets = np.cumsum([0] + [int(d["episode_ends"][-1]) for d in datasets[:-1]])
    out = {k: np.concatenate([d[k] for d in datasets]) for k in keys if k != "episode_ends"}
    out["episode_ends"] = np.concatenate([d["episode_ends"] + o for d, o in zip(datasets, offsets)])
    return out


def is_zarr(path: str | Path) -> bool:
    """A zarr store (a folder), not a prepared `.npz`."""
    return Path(path).suffix == ".zarr" or Path(path).is_dir()


def load_dataset(path: str | Path, obs_type: str, task: str = "pusht", keys: GenericKeys = GenericKeys(),
                 ) -> dict[str, np.ndarray]:
    """Training arrays from a `.zarr` replay buffer or a `.npz` written by `prepare_dataset` (which chose the keys)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no dataset at {path}")
    check_task(task, obs_type)
    if is_zarr(path):
        return dataset_from_zarr(path, obs_type, task=task, keys=keys)
    if keys != GenericKeys():  # the arrays were chosen when `prepare` wrote the file
        raise UserError(f"--obs-keys / --action-key read a zarr store; {path} holds the arrays `policy prepare` made "
                        "(give those options to prepare)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k != "meta"}
    except (ValueError, OSError, EOFError) as err:
        # numpy explains a non-archive file as a pickle it refuses to load: not what the user gave
        detail = str(err).splitlines()[0] if str(err) and "pickle" not in str(err) else "not an .npz archive"
        raise UserError(f"{path} is neither a zarr replay buffer nor an .npz from `sciddiff policy prepare` "
                        f"({detail})") from None
    except (TypeError, AttributeError):  # np.load returned a plain array (.npy), not an archive
        raise UserError(f"{path} is a single array, not an .npz from `sciddiff policy prepare`") from None
    needed = {"action", "episode_ends", *OBS_KEYS.get(obs_type, ())}
    if obs_type not in OBS_KEYS or not needed <= arrays.keys():
        raise UserError(f"{path} lacks {sorted(needed - arrays.keys())} for a {obs_type!r} policy")
    check_dataset(arrays, path, obs_type, task)
    return arrays
