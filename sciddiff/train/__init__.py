"""Training building blocks shared by the applications: small functions, not a framework.

- `seed_everything`, `capture_rng` / `restore_rng` (seed.py): reproducible runs.
- `save_checkpoint` / `load_checkpoint` (atomic), `training_state` / `restore_training_state` (exact resume), `atomic_file`,
  `write_json` (atomic, strict JSON: inf and nan as strings).
- `autocast(device)`: bf16 on CUDA, no-op on CPU.
- `progress` (tqdm, main rank only), `CSVLogger` (log.py).
- `distributed`: torchrun/DDP helpers (`setup`, `wrap`, `unwrap`, `is_main`, `all_reduce_mean`, `mean_over_ranks`,
  `sampler`).
- `interrupt.stop_requests` / `decide`: Ctrl-C and SIGTERM stop a loop between steps (all ranks alike), so it saves.
The EMA of weights lives in `sciddiff.core.ema`. See docs/training.md for a complete loop.
"""
from sciddiff.train import distributed
from sciddiff.train.amp import autocast
from sciddiff.train.checkpoint import (atomic_file, json_text, load_checkpoint, restore_training_state, save_checkpoint,
                                       training_state, write_json)
from sciddiff.train.log import CSVLogger, progress
from sciddiff.train.seed import capture_rng, restore_rng, seed_everything

__all__ = ["distributed", "autocast", "atomic_file", "json_text", "write_json", "load_checkpoint", "restore_training_state", "save_checkpoint",
           "training_state", "CSVLogger", "progress", "capture_rng", "restore_rng", "seed_everything"]
