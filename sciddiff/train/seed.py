"""Seeding and capturing/restoring every random number generator a training loop touches.

Four generators matter: Python's `random`, NumPy's legacy global one (`np.random.*`), torch's CPU generator and one per
CUDA device. `capture_rng` stores them as plain ints and tensors so that checkpoints stay loadable with
`torch.load(weights_only=True)` (no pickled NumPy objects). Code that owns a `torch.Generator` saves that itself.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "capture_rng", "restore_rng"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices). Under DDP pass `seed + rank` for different data per rank."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng() -> dict:
    """The current states of all four generators (the CUDA entry is None without CUDA)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict) -> None:
    """Restore states made by `capture_rng` (CUDA ones only if this process has as many devices)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].cpu().numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
