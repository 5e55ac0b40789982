"""Atomic checkpoints and exact resume.

A checkpoint is one `torch.save`d dict. `save_checkpoint` writes it to a temporary file in the target's directory and
`os.replace`s it into place, so a crash or a kill mid-write leaves the previous checkpoint intact (never a truncated one).
`training_state` / `restore_training_state` bundle what an exact resume needs: model, EMA, optimiser and LR-scheduler
states, the step counter and the RNG states. Resuming is then bit-identical to never stopping, provided the loop draws its
randomness from those generators (e.g. batch indices via torch.randint, dropout) rather than from a DataLoader iterator
that was part-way through an epoch (resume those at epoch boundaries, or use a seeded sampler and skip the used batches).

Under DDP `training_state` gathers every rank's RNG states (so call it on ALL ranks, then save on the main one); on
resume each rank takes its own back if the world size is unchanged, and keeps its fresh seeding otherwise (with a warning).
Checkpoints hold only tensors and plain Python values and load with `weights_only=True`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
from torch import nn

from sciddiff.core.ema import EMA
from sciddiff.train.distributed import rank, unwrap, world_size
from sciddiff.train.seed import capture_rng, restore_rng

__all__ = ["atomic_file", "json_text", "write_json", "save_checkpoint", "load_checkpoint", "training_state", "restore_training_state",
           "capture_rng", "restore_rng"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing (`open_kwargs` go to open()); on success fsync it and rename it
    over `path`, else delete it. Creates missing parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _finite_or_text(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan": float() reads them back
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_text(v) for v in value]
    return value


def json_text(obj, indent: int | None = 2) -> str:
    """`obj` as strict JSON (RFC 8259), newline-terminated. Python's json writes inf and nan as the bare words Infinity
    and NaN, which jq, JavaScript and most other parsers refuse; here they become the strings "inf", "-inf", "nan"."""
    return json.dumps(_finite_or_text(obj), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """Write `json_text(obj)` to `path` atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(json_text(obj, indent))
    return Path(path)


def earlier_config(config_json: str | os.PathLike) -> dict:
    """What a run folder's config.json recorded of the call that last wrote it ({} without a readable one)."""
    try:
        earlier = json.loads(Path(config_json).read_text())
    except (OSError, ValueError):
        return {}
    return earlier if isinstance(earlier, dict) else {}


def command_history(config_json: str | os.PathLike, command: str) -> list[str]:
    """The commands of a run so far, this call's last: those a run folder's config.json recorded ("commands", or one
    "command" as older runs wrote it) plus `command`. A resumed run keeps how every call trained it."""
    earlier = earlier_config(config_json)
    past = earlier.get("commands") or ([earlier["command"]] if earlier.get("command") else [])
    return [c for c in past if isinstance(c, str)] + [command]


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomically write `state` with torch.save; returns the path."""
    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu",
                    weights_only: bool = True) -> dict:
    """torch.load a checkpoint (tensors mapped to `map_location`); weights_only refuses pickled code objects. A file
    that is no pickle at all raises pickle.UnpicklingError naming it (torch's own text advises weights_only=False,
    which is no advice for a file that is not a checkpoint)."""
    from sciddiff.cli import PICKLE_ERRORS, not_a_pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except PICKLE_ERRORS as err:
        if not_a_pickle(err):
            raise pickle.UnpicklingError(f"{path} is not a torch checkpoint file") from None
        raise  # a real checkpoint with a pickled object (torch's message names it), a missing entry


def training_state(
    *,
    model: nn.Module,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: EMA | None = None,
    **extra,
) -> dict:
    """Everything an exact resume needs, as a dict for `save_checkpoint`; `extra` (config, metrics) is stored as given."""
    rng = capture_rng()
    if world_size() > 1:
        gathered: list = [None] * world_size()
        dist.all_gather_object(gathered, rng)
        rng = gathered
    return {
        "model": unwrap(model).state_dict(),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng,
        **extra,
    }


def rng_restorable(state: dict) -> bool:
    """Whether `restore_training_state` restores this process's RNG from `state`: saved by as many processes as now
    run. Where it does not, a data-parallel run must reseed each rank itself, or every rank draws the same batches."""
    rng = state.get("rng")
    return len(rng) == world_size() if isinstance(rng, list) else rng is not None and world_size() == 1


def restore_training_state(
    state: dict,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: EMA | None = None,
) -> int:
    """Load a `training_state` dict into freshly built objects (same architecture/hyper-parameters); returns the step."""
    unwrap(model).load_state_dict(state["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("ema", ema)):
        if obj is None:
            continue
        if state.get(name) is None:
            raise KeyError(f"checkpoint has no {name} state to resume from")
        obj.load_state_dict(state[name])
    rng = state.get("rng")
    if isinstance(rng, list):
        if len(rng) == world_size():
            restore_rng(rng[rank()])
        else:
            warnings.warn(f"checkpoint RNG states are from {len(rng)} ranks, this run has {world_size()}: RNG not restored")
    elif rng is not None:
        if world_size() == 1:
            restore_rng(rng)
        else:
            warnings.warn("checkpoint RNG state is from a single process; not restored under DDP")
    return int(state["step"])
