"""Noise schedules.

Discrete DDPM schedules return float64 betas of length T (index t = 0..T-1, the noise added at step t), equal to diffusers'
``DDPMScheduler`` betas for the same arguments ("cosine" is diffusers' ``squaredcos_cap_v2``; Nichol & Dhariwal 2021).
Continuous VE schedules use t in [0, 1] and sigma(t) = sigma_min^(1-t) * sigma_max^t (Song et al. 2021; DiffDock per component).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["betas", "alphas_cumprod", "geometric_sigma", "karras_sigmas"]


def betas(name: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02, max_beta: float = 0.999) -> Tensor:
    """Betas (T,) in float64 for ``name`` in linear | scaled_linear | cosine | sigmoid."""
    if name == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if name in ("cosine", "squaredcos_cap_v2"):
        def alpha_bar(t: Tensor) -> Tensor:
            return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        t = torch.arange(T, dtype=torch.float64)
        return (1 - alpha_bar((t + 1) / T) / alpha_bar(t / T)).clamp(max=max_beta)
    if name == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown beta schedule {name!r}; choose linear, scaled_linear, cosine or sigmoid")


def alphas_cumprod(betas: Tensor) -> Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), float64."""
    return torch.cumprod(1 - betas.double(), 0)


def geometric_sigma(t: Tensor | float, sigma_min: float, sigma_max: float) -> Tensor:
    """VE schedule sigma(t) = sigma_min^(1-t) sigma_max^t for t in [0, 1]."""
    t = torch.as_tensor(t)
    return sigma_min ** (1 - t) * sigma_max**t


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's sampling grid (n sigmas, decreasing, float64) with a final 0 appended: length n + 1."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, sig.new_zeros(1)])
