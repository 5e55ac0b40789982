"""Embeddings of a scalar diffusion time or noise level into a feature vector.

- `sinusoidal_embedding` is the DDPM / Transformer embedding in the convention of Ho et al.'s code, diffusers'
  `get_timestep_embedding` defaults and Diffusion Policy's `SinusoidalPosEmb`: for half = dim // 2 and i = 0 .. half-1,
  freq_i = max_period ** (-i / (half - shift)) (shift = 1, so the lowest frequency is exactly 1 / max_period), output
  [sin(x freq), cos(x freq)]. diffusers' image U-Nets instead use shift = 0 and [cos, sin]: pass `downscale_freq_shift=0,
  flip_sin_to_cos=True` to reproduce them. x is whatever scalar the model is conditioned on (integer timestep 0..T-1,
  continuous t in [0, 1] scaled by ~1000, or a noise level transform such as log(sigma) / 4); choose the scale so that x
  spans ~max_period / (2 pi) or less, else the low frequencies see only a sliver of a period.
- `GaussianFourierProjection` is score_sde's (Song et al., 2021) random Fourier features: a fixed W ~ N(0, scale^2),
  output [sin(2 pi x W), cos(2 pi x W)]. NCSN++ feeds it log(sigma); DiffDock feeds it t in [0, 1]. W is a buffer: it is
  saved in the state dict (so a checkpoint reproduces it) but never trained.
- `floored_exp` is exp with its argument floored at -EXP_FLOOR, for Gaussian radial bases, Gaussian energy terms and
  softmax weights: float32 exp of arguments below -87 (denormal or zero results) takes a scalar path ~50x slower than
  the vectorised one on x86 (docs/benchmarks.md, 2026-12-06), and most pairs of a distance basis are that far out;
  below exp(-80) ~ 2e-35 a term is nothing next to the others.
"""
from __future__ import annotations

import math

import torch
from torch import nn


EXP_FLOOR = 80.0


def floored_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(max(x, -EXP_FLOOR)), elementwise (see the module docstring)."""
    return torch.exp(x.clamp(min=-EXP_FLOOR))


def sinusoidal_embedding(
    x: torch.Tensor,
    dim: int,
    max_period: float = 10000.0,
    *,
    downscale_freq_shift: float = 1.0,
    flip_sin_to_cos: bool = False,
) -> torch.Tensor:
    """Embed x of shape (B,) (or a scalar) into (B, dim) float32 features; an odd `dim` gets a trailing zero column."""
    x = torch.as_tensor(x)
    if x.ndim == 0:
        x = x[None]
    if x.ndim != 1:
        raise ValueError(f"sinusoidal_embedding expects a (B,) tensor, got shape {tuple(x.shape)}")
    half = dim // 2
    if half < 1 or half - downscale_freq_shift <= 0:
        raise ValueError(f"embedding dim {dim} too small for downscale_freq_shift={downscale_freq_shift}")
    # Same float32 operation order as diffusers, so embeddings of large timesteps agree to the last bit.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device)
    exponent = exponent / (half - downscale_freq_shift)
    args = x.float()[:, None] * torch.exp(exponent)[None, :]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    if dim % 2:
        parts.append(args.new_zeros(args.shape[0], 1))
    return torch.cat(parts, dim=-1)


class SinusoidalEmbedding(nn.Module):
    """`sinusoidal_embedding` as a module (for use inside nn.Sequential); no parameters."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim, self.max_period = dim, max_period

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(x, self.dim, self.max_period)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: (B,) -> (B, dim), dim even; W ~ N(0, scale^2) of size dim // 2, fixed.

    `scale` sets the frequency bandwidth: score_sde uses 16 on log(sigma), DiffDock 1 on t in [0, 1]. Pass `generator`
    to draw W reproducibly without touching the global RNG; a loaded state dict overrides it either way.
    """

    W: torch.Tensor

    def __init__(self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"GaussianFourierProjection needs an even dim >= 2, got {dim}")
        self.register_buffer("W", torch.randn(dim // 2, generator=generator) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, device=self.W.device)
        if x.ndim == 0:
            x = x[None]
        proj = x.float()[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={2 * self.W.numel()}"
