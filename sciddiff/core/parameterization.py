"""Conversions between network parameterizations for Gaussian perturbations x_t = alpha x_0 + sigma eps.

``kind`` is one of "epsilon" (predict eps), "sample" (predict x_0), "v_prediction" (v = alpha eps - sigma x_0, with
alpha^2 + sigma^2 = 1; Salimans & Ho 2022) or "score" (grad log p(x_t) = -eps / sigma). ``alpha`` and ``sigma`` are tensors that
broadcast against x (use ``broadcast_to_batch``).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PREDICTION_TYPES", "broadcast_to_batch", "working_dtype", "to_x0", "to_eps", "to_score", "target_for"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "score")


def broadcast_to_batch(values: Tensor, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Reshape a per-sample (B,) tensor to (B, 1, ..., 1) so it broadcasts against x of any rank, in `dtype` (default
    x's)."""
    return values.reshape(values.shape + (1,) * (x.dim() - values.dim())).to(dtype or x.dtype)


def working_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute a loss or a preconditioning in: the widest of the tensors', at least float32 (fp16 / bf16
    networks keep their own dtype; their noise-level arithmetic must not: sigma^2 overflows fp16 above 256)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def to_x0(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, kind: str) -> Tensor:
    if kind == "epsilon":
        return (x_t - sigma * out) / alpha
    if kind == "sample":
        return out
    if kind == "v_prediction":
        return alpha * x_t - sigma * out
    if kind == "score":
        return (x_t + sigma**2 * out) / alpha
    raise ValueError(f"unknown prediction type {kind!r}; choose from {PREDICTION_TYPES}")


def to_eps(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, kind: str) -> Tensor:
    if kind == "epsilon":
        return out
    if kind == "sample":
        return (x_t - alpha * out) / sigma
    if kind == "v_prediction":
        return alpha * out + sigma * x_t
    if kind == "score":
        return -sigma * out
    raise ValueError(f"unknown prediction type {kind!r}; choose from {PREDICTION_TYPES}")


def to_score(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, kind: str) -> Tensor:
    return -to_eps(out, x_t, alpha, sigma, kind) / sigma


def target_for(kind: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of a network of this ``kind`` for a training pair (x0, eps)."""
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {kind!r}; choose from {PREDICTION_TYPES}")
    return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0, "score": -eps / sigma}[kind]
