"""Mixed precision: bf16 autocast on CUDA, a no-op elsewhere.

bf16 has float32's exponent range, so unlike fp16 it needs no loss scaling (no GradScaler). Parameters, optimiser state
and EMA stay float32; only autocast-eligible ops (matmuls, convolutions) run in bf16. On the CPU we run plain float32:
CPU bf16 autocast is slower than float32 on most machines and would change results between CPU tests and GPU runs.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast"]


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Context manager for the forward pass (and loss): `with autocast(device): loss = model(x)`."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
