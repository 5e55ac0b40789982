"""The discrete DDPM chain (Ho et al. 2020) as diffusers defines it.

Timesteps are integers t = 0..T-1; x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. A ``DiscreteSchedule`` holds the float64
tables; the samplers in ``sciddiff.core.samplers`` walk it. Networks are called ``model(x_t, t, **cond)`` with t a long tensor (B,).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .parameterization import broadcast_to_batch, to_eps, to_x0
from .schedules import alphas_cumprod, betas

__all__ = ["DiscreteSchedule"]


class DiscreteSchedule(nn.Module):
    """float64 tables of a discrete DDPM chain, kept as buffers so they follow ``.to(device)``; a dtype conversion of
    the module holding them (``.to(torch.bfloat16)``, ``.half()``) moves them but keeps them float64.

    With ``prediction_type="epsilon"`` note the cosine chain's last abar (2.4e-7 at T = 100, betas capped at 0.999):
    samplers that start at t = T-1 (DDIM "trailing", DPM-Solver++) turn eps into x0 by dividing by sqrt(abar) =
    4.9e-4, so an eps error of 1% moves x0 by ~20; clip x0 (``clip_sample``, as Diffusion Policy does for actions
    normalised to [-1, 1]), predict v or x0, or start from the "leading" grid (t = T - T/steps). diffusers behaves the
    same."""

    def __init__(self, betas_: Tensor | None = None, *, name: str = "cosine", num_train_timesteps: int = 100,
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if betas_ is None:
            betas_ = betas(name, num_train_timesteps, beta_start, beta_end)
        betas_ = torch.as_tensor(betas_)
        if betas_.dim() != 1 or len(betas_) < 1 or not bool(((betas_ > 0) & (betas_ < 1)).all()):
            raise ValueError("betas must be a non-empty 1-D tensor with every value in (0, 1)")
        self.register_buffer("betas", betas_.double())
        self.register_buffer("alphas_cumprod", alphas_cumprod(betas_))

    def _apply(self, fn, recurse: bool = True):
        def keep_float64(t: Tensor) -> Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(device=out.device)
        return super()._apply(keep_float64, recurse)

    @property
    def num_train_timesteps(self) -> int:
        return self.betas.shape[0]

    def alpha_bar(self, t: Tensor) -> Tensor:
        """abar_t (float64) for integer t of any shape; t = -1 means clean data, abar = 1."""
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp_min(0)], torch.ones_like(self.alphas_cumprod[0]))

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) for integer t (B,), shaped to broadcast against ``like``. t = -1 means abar = 1."""
        abar = self.alpha_bar(t)
        return broadcast_to_batch(abar.sqrt(), like), broadcast_to_batch((1 - abar).sqrt(), like)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def predict_x0(self, x_t: Tensor, out: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x_t)
        return to_x0(out, x_t, alpha, sigma, prediction_type)

    def predict_eps(self, x_t: Tensor, out: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x_t)
        return to_eps(out, x_t, alpha, sigma, prediction_type)

    def timesteps(self, steps: int, spacing: str = "leading") -> list[int]:
        """Sampling timesteps, largest first, as diffusers spaces them. "leading" (DDPM/DDIM default): 0, r, 2r, ... with
        r = T // steps; "trailing": round(T, T - T/steps, ...) - 1, which starts at T - 1 and so suits few-step sampling
        (Lin et al. 2024). The samplers step from each timestep to the next one of the grid, and from the last to
        clean data."""
        T = self.num_train_timesteps
        if not 1 <= steps <= T:  # more would repeat timesteps (and "trailing" would reach t = -1)
            raise ValueError(f"steps must lie in 1..{T} (the schedule's timesteps), got {steps}")
        if spacing == "leading":
            return [i * (T // steps) for i in reversed(range(steps))]
        if spacing == "trailing":  # numpy's arange itself: its float steps decide the .5 ties (87.49999 -> 87)
            return (np.round(np.arange(T, 0, -T / steps))[:steps].astype(np.int64) - 1).tolist()
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose leading or trailing")

    def linspace_timesteps(self, steps: int) -> list[int]:
        """diffusers' "linspace" spacing (DPM-Solver default): round(linspace(0, T-1, steps+1)) reversed, last dropped."""
        if not 1 <= steps < self.num_train_timesteps:  # steps + 1 points on 0..T-1 must be distinct integers
            raise ValueError(f"steps must lie in 1..{self.num_train_timesteps - 1} for this spacing, got {steps}")
        # numpy's linspace, not torch's: they round differently at .5 ties (T = 100, 46 steps: 49.5 -> 49 or 50)
        return np.linspace(0, self.num_train_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64).tolist()
