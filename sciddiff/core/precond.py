"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Table 1)
on R^n, and the seam from a denoiser to the VE samplers.

A raw network ``net(x_in, c_noise, **cond)`` becomes the denoiser D(x, sigma) = c_skip x + c_out net(c_in x, c_noise) with
sd = sigma_data (the data's standard deviation):
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),  c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4,
so the network's input and its regression target (``losses.edm_loss``) have unit variance at every sigma. sigma is the VE
noise level (x = x0 + sigma n), a (B,) tensor; the coefficients are computed in float64 and applied in the point's dtype
(at least float32). The VE samplers (``sample_pf_ode``, ``sample_reverse_sde``) take a score: ``score_from_denoiser(D)``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .parameterization import broadcast_to_batch, working_dtype
from .spaces import Space

__all__ = ["EDMPrecond", "score_from_denoiser"]


class EDMPrecond(nn.Module):
    """D(x, sigma, **cond) = c_skip x + c_out net(c_in x, c_noise, **cond) (EDM's ``EDMPrecond``; k-diffusion's ``Denoiser``
    scalings)."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"EDMPrecond: sigma_data is the data's standard deviation and must be > 0, got {sigma_data}")
        self.net, self.sigma_data = net, float(sigma_data)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise), each (B,) float64."""
        s, sd = sigma.double(), self.sigma_data
        norm = (s**2 + sd**2).sqrt()
        return sd**2 / norm**2, s * sd / norm, 1 / norm, s.log() / 4

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"EDMPrecond: sigma must be one noise level per sample ({x.shape[0]},), got {tuple(sigma.shape)}")
        dtype = working_dtype(x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma.reshape(-1).expand(x.shape[0]))
        c_skip, c_out, c_in = (broadcast_to_batch(c, x, dtype) for c in (c_skip, c_out, c_in))
        out = self.net((c_in * x).to(x.dtype), c_noise.to(dtype), **cond)
        Space.check_tangent(out, x, what="sample")  # c_skip x + c_out out would broadcast a wrong shape silently
        return c_skip * x + c_out * out.to(dtype)


def score_from_denoiser(denoiser: Callable) -> Callable:
    """score(x, sigma, **cond) = (D(x, sigma) - x) / sigma^2 for the VE samplers (Tweedie; k-diffusion's ``to_d`` is sigma
    times it), computed in at least float32 and returned in x's dtype. x is an R^n tensor, sigma (B,)."""
    def score(x: Tensor, sigma: Tensor, **cond) -> Tensor:
        d = denoiser(x, sigma, **cond)
        Space.check_tangent(d, x, what="sample")
        dtype = working_dtype(x, sigma)
        return ((d.to(dtype) - x.to(dtype)) / broadcast_to_batch(sigma, x, dtype) ** 2).to(x.dtype)
    return score
