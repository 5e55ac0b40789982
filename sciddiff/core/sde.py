"""Score SDEs on R^n (Song et al., ICLR 2021), for tensors of any shape with a leading batch dimension.

dx = f(x, t) dt + g(t) dW, t in [0, T]. ``marginal_prob(x0, t)`` gives the mean and std of p_t(x | x0); ``prior_sampling`` draws
from p_T; ``reverse(score_fn)`` is the reverse-time SDE dx = [f - g^2 score] dt + g dW (or, with ``probability_flow=True``, the ODE
dx = [f - g^2 score / 2] dt). t is a (B,) tensor; everything broadcasts over the trailing dims of x (no 4-D image assumption).
The discrete DDPM chain is the VP SDE with beta(t) = T * beta_t on the grid t = (i + 1) / T (``DDPMChain``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .parameterization import broadcast_to_batch
from .schedules import betas as make_betas
from .spaces import Space

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "DDPMChain"]

ScoreFn = Callable[..., Tensor]


class SDE:
    T: float = 1.0
    eps: float = 1e-3  # smallest time used in training and sampling

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(drift f(x, t), diffusion g(t)), g shaped to broadcast against x."""
        raise NotImplementedError

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def prior_sampling(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "SDE":
        """The reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t, **cond)."""
        forward = self

        class Reverse(SDE):
            T, eps = forward.T, forward.eps

            def sde(self, x, t, **cond):
                drift, g = forward.sde(x, t)
                score = score_fn(x, t, **cond)
                Space.check_tangent(score, x, what="sample")
                drift = drift - g**2 * score * (0.5 if probability_flow else 1.0)
                return drift, torch.zeros_like(g) if probability_flow else g

        return Reverse()


class VPSDE(SDE):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = broadcast_to_batch(self._beta(t), x)
        return -0.5 * beta * x, beta.sqrt()

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_mean = broadcast_to_batch(self._log_mean_coeff(t), x0)
        return log_mean.exp() * x0, (1 - (2 * log_mean).exp()).sqrt()

    def prior_sampling(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)


class SubVPSDE(VPSDE):
    """Sub-VP: same drift as VP, g^2 = beta(t) (1 - exp(-2 int_0^t beta)); std = 1 - exp(-int_0^t beta)."""

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = broadcast_to_batch(self._beta(t), x)
        # log_mean_coeff = -int beta / 2, so exp(-2 int beta) = exp(4 log_mean_coeff)
        discount = 1 - (4 * broadcast_to_batch(self._log_mean_coeff(t), x)).exp()
        return -0.5 * beta * x, (beta * discount).sqrt()

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_mean = broadcast_to_batch(self._log_mean_coeff(t), x0)
        return log_mean.exp() * x0, 1 - (2 * log_mean).exp()


class VESDE(SDE):
    """Variance exploding with the geometric schedule sigma(t) = s_min^(1-t) s_max^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        g = broadcast_to_batch(self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min)), x)
        return torch.zeros_like(x), g

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return x0, broadcast_to_batch(self.sigma(t), x0)

    def prior_sampling(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * self.sigma_max


class DDPMChain(VPSDE):
    """The discrete DDPM chain seen as a VP SDE: beta(t) interpolates N * beta_i, so that integrating from 0 to (i+1)/N gives
    alpha_bar_i up to O(1/N). ``schedule`` is any name accepted by ``sciddiff.core.schedules.betas``."""

    def __init__(self, schedule: str = "linear", N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.N = N
        self.discrete_betas = make_betas(schedule, N, beta_start, beta_end)
        super().__init__(beta_min=float(self.discrete_betas[0] * N), beta_max=float(self.discrete_betas[-1] * N))
        # the cumulative integral of beta on the grid, so marginals are exact at t = (i + 1) / N for any schedule
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-self.discrete_betas), 0)])

    def _interp(self, table: Tensor, t: Tensor) -> Tensor:
        pos = (t.double() * self.N).clamp(0, self.N)
        lo = pos.floor().long().clamp(max=self.N - 1)
        frac = pos - lo
        table = table.to(t.device)
        return ((1 - frac) * table[lo] + frac * table[lo + 1]).to(t.dtype)

    def _beta(self, t):
        # piecewise constant -d/dt log alpha_bar, consistent with _log_mean_coeff
        i = (t.double() * self.N).floor().long().clamp(0, self.N - 1)
        return (-self.N * torch.log1p(-self.discrete_betas)).to(t.device)[i].to(t.dtype)

    def _log_mean_coeff(self, t):
        return 0.5 * self._interp(self._log_abar, t)
