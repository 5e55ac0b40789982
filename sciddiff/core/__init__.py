"""sciddiff.core: domain-agnostic diffusion on R^n, SO(3), the torus and products of them.

Modules (one concept each): ``schedules`` (betas, VE sigma grids), ``parameterization`` (eps / x0 / v / score), ``precond``
(EDM's preconditioning, denoiser -> score), ``ddpm`` (the discrete chain), ``sde`` (VP, sub-VP, VE, DDPM-chain SDEs), ``so3``
(geometry and IGSO(3)), ``torus`` (wrapped normal), ``spaces`` (one interface over all of them), ``losses``, ``samplers``,
``flow`` (flow matching), ``ema``, ``lbfgs`` (batched minimization). Conventions are stated in each module's docstring
and collected in docs/core.md. This package imports torch only.
"""
from . import ddpm, ema, flow, lbfgs, losses, parameterization, precond, samplers, schedules, sde, so3, spaces, torus
from .ddpm import DiscreteSchedule
from .ema import EMA
from .flow import flow_matching_loss, interpolate, sample_flow
from .lbfgs import minimize_lbfgs_batched
from .losses import ddim_distillation_loss, ddpm_loss, dsm_loss, edm_loss, sde_dsm_loss
from .precond import EDMPrecond, score_from_denoiser
from .samplers import (classifier_free_guidance, sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_pf_ode, sample_reverse_sde,
                       sample_sde)
from .schedules import betas, geometric_sigma, karras_sigmas
from .sde import DDPMChain, SubVPSDE, VESDE, VPSDE
from .so3 import igso3_score, igso3_score_norm, sample_igso3
from .spaces import SO3, Euclidean, Product, Space, Torus
from .torus import sample_wrapped_normal, wrapped_normal_score, wrapped_normal_score_norm

__all__ = [
    "ddpm", "ema", "EMA", "flow", "lbfgs", "minimize_lbfgs_batched", "losses", "parameterization", "samplers", "schedules",
    "sde", "so3", "spaces", "torus",
    "DiscreteSchedule", "flow_matching_loss", "interpolate", "sample_flow", "ddpm_loss", "ddim_distillation_loss", "dsm_loss", "sde_dsm_loss",
    "edm_loss", "precond", "EDMPrecond", "score_from_denoiser",
    "classifier_free_guidance", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_pf_ode", "sample_reverse_sde",
    "sample_sde", "betas", "geometric_sigma", "karras_sigmas", "DDPMChain", "SubVPSDE", "VESDE", "VPSDE", "igso3_score",
    "igso3_score_norm", "sample_igso3", "SO3", "Euclidean", "Product", "Space", "Torus", "sample_wrapped_normal",
    "wrapped_normal_score", "wrapped_normal_score_norm",
]
