"""Training losses, each a few lines with its weighting explicit.

- ``ddpm_loss``: the discrete chain, t ~ U{0..T-1}, MSE on the network's ``prediction_type`` target (Ho et al. 2020).
- ``sde_dsm_loss``: continuous score SDEs on R^n, t ~ U(eps, T), weighting lambda(t) = std(t)^2 (Song et al. 2021).
- ``dsm_loss``: VE denoising score matching on any ``Space``, weighting lambda(sigma) = 1 / E|score|^2 per component, so every
  component (translation in A, rotation, torsions) contributes O(1) whatever its sigma (DiffDock's normalisation).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .ddpm import DiscreteSchedule
from .parameterization import target_for
from .sde import SDE
from .spaces import Point, Sigma, Space

__all__ = ["ddpm_loss", "sde_dsm_loss", "dsm_loss"]


def ddpm_loss(model: Callable, x0: Tensor, schedule: DiscreteSchedule, prediction_type: str = "epsilon",
              generator: torch.Generator | None = None, **cond) -> Tensor:
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    alpha, sigma = schedule.alpha_sigma(t, x0)
    out = model(alpha * x0 + sigma * eps, t, **cond)
    return (out.float() - target_for(prediction_type, x0, eps, alpha, sigma).float()).pow(2).mean()


def sde_dsm_loss(score_fn: Callable, sde: SDE, x0: Tensor, generator: torch.Generator | None = None, **cond) -> Tensor:
    t = torch.rand(x0.shape[0], device=x0.device, generator=generator) * (sde.T - sde.eps) + sde.eps
    z = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    mean, std = sde.marginal_prob(x0, t)
    score = score_fn(mean + std * z, t, **cond)
    return (std * score + z).pow(2).reshape(x0.shape[0], -1).sum(-1).mean()


def dsm_loss(score_model: Callable, space: Space, x0: Point, sigma: Sigma, generator: torch.Generator | None = None,
             **cond) -> tuple[Tensor, dict[str, Tensor]]:
    """Returns (total loss, per-component losses); the total is the mean over components (one component: itself)."""
    x_t, target = space.perturb(x0, sigma, generator)
    pred = score_model(x_t, sigma, **cond)
    err, norm = space.sq_norm(Space.add(pred, Space.scale(target, -1.0))), space.score_norm_sq(sigma)
    if not isinstance(err, dict):
        err, norm = {"x": err}, {"x": norm}
    parts = {k: (err[k] / norm[k].to(err[k].dtype)).mean() for k in err}
    return torch.stack(list(parts.values())).mean(), parts
