"""Training losses, each a few lines with its weighting explicit.

- ``ddpm_loss``: the discrete chain, t ~ U{0..T-1}, MSE on the network's ``prediction_type`` target (Ho et al. 2020),
  optionally Min-SNR-gamma weighted (Hang et al. 2023).
- ``ddim_distillation_loss``: progressive distillation (Salimans & Ho 2022): one student DDIM step regresses onto two
  teacher steps, MSE on the student's ``prediction_type`` target (the teacher's own weighting).
- ``sde_dsm_loss``: continuous score SDEs on R^n, t ~ U(eps, T), weighting lambda(t) = std(t)^2 (Song et al. 2021).
- ``edm_loss``: EDM (Karras et al. 2022) on R^n, ln sigma ~ N(P_mean, P_std^2), weighting lambda(sigma) = (sigma^2 +
  sigma_data^2) / (sigma sigma_data)^2 on the denoiser's error (with ``precond.EDMPrecond``: unit-variance targets).
- ``dsm_loss``: VE denoising score matching on any ``Space``, weighting lambda(sigma) = 1 / E|score|^2 per component, so every
  component (translation in A, rotation, torsions) contributes O(1) whatever its sigma (DiffDock's normalisation).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from .ddpm import DiscreteSchedule
from .parameterization import broadcast_to_batch, target_for, to_eps, to_x0, working_dtype
from .sde import SDE
from .spaces import Point, Sigma, Space

__all__ = ["ddpm_loss", "ddim_distillation_loss", "sde_dsm_loss", "edm_loss", "dsm_loss"]


def ddpm_loss(model: Callable, x0: Tensor, schedule: DiscreteSchedule, prediction_type: str = "epsilon",
              generator: torch.Generator | None = None, snr_gamma: float | None = None, **cond) -> Tensor:
    """MSE to the ``prediction_type`` target, t ~ U{0..T-1}. ``snr_gamma``: Min-SNR-gamma weighting (Hang et al. 2023;
    diffusers' ``--snr_gamma``, 5 in the paper): each sample's error times min(SNR, gamma) / SNR for epsilon, / (SNR + 1)
    for v, min(SNR, gamma) for sample and / (SNR (SNR + 1)) for score prediction (SNR = abar / (1 - abar)): the same
    loss as the error in x0 weighted by min(SNR, gamma), so the low-noise steps stop dominating; None: unweighted."""
    t = torch.randint(0, schedule.num_train_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    alpha, sigma = schedule.alpha_sigma(t, x0)
    out = model(alpha * x0 + sigma * eps, t, **cond)
    Space.check_tangent(out, x0, what="sample")
    err = (out.float() - target_for(prediction_type, x0, eps, alpha, sigma).float()).pow(2)
    if snr_gamma is None:
        return err.mean()
    if not snr_gamma > 0:
        raise ValueError(f"snr_gamma must be > 0 (None: no weighting), got {snr_gamma}")
    snr = schedule.alpha_bar(t) / (1 - schedule.alpha_bar(t))
    # |x0 error|^2 = |error|^2 times 1 / SNR (epsilon), 1 / (SNR + 1) (v), 1 (sample), 1 / (SNR (SNR + 1)) (score)
    to_x0_error = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr), "score": snr * (snr + 1)}
    weight = snr.clamp(max=snr_gamma) / to_x0_error[prediction_type]
    return (err.reshape(len(err), -1).mean(1) * weight.float()).mean()


def _ddim_coefficients(abar: Tensor, abar_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """float64 (c, std) of a DDIM step t -> t_next: x_next = sqrt(abar_next) x0 + c eps + std z (as ``sample_ddim``)."""
    std = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)).sqrt()
    return (1 - abar_next - std**2).clamp_min(0).sqrt(), std


def ddim_distillation_loss(student: Callable, teacher: Callable, x0: Tensor, schedule: DiscreteSchedule,
                           timesteps: list[int], prediction_type: str = "epsilon", eta: float = 0.0,
                           clip_sample: float | None = None, generator: torch.Generator | None = None,
                           teacher_cond: dict | None = None, **cond) -> Tensor:
    """Progressive distillation (Salimans & Ho 2022) of the DDIM sampler on the grid ``timesteps`` (the teacher's,
    largest first, an even number; the student walks every other point, then clean data). For x_t = alpha x0 + sigma
    eps at a student point t, the teacher takes two steps t -> t' -> t''; the target is the clean-data prediction
    that lands one student step on the same point, x0~ = (x_t'' - (c''/sigma) x_t) / (alpha'' - c'' alpha / sigma).
    With eta > 0 the regression learns the mean of the teacher's two-step transition: its first step draws noise z
    and -z (antithetic: the part of the target linear in z cancels), its second is taken to its mean, and the target
    is their average; the student's step adds its own noise at sampling time. ``teacher_cond``: the teacher's
    keyword arguments where they differ from the student's ``cond`` (e.g. features of its own encoder)."""
    if not 0 <= eta <= 1:  # the two-step target below is derived for DDIM's own family
        raise ValueError(f"progressive distillation takes eta in [0, 1], got {eta}")
    if len(timesteps) % 2:
        raise ValueError(f"the teacher's grid needs an even number of steps, got {len(timesteps)}")
    grid = torch.tensor([*timesteps, -1], device=x0.device)
    k = 2 * torch.randint(0, len(timesteps) // 2, (x0.shape[0],), device=x0.device, generator=generator)
    t, t_mid, t_next = grid[k], grid[k + 1], grid[k + 2]
    abar = schedule.alpha_bar  # float64: the coefficients below are formed before the cast to x0's dtype

    def cast(v: Tensor) -> Tensor:
        return broadcast_to_batch(v, x0)

    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    alpha, sigma = abar(t).sqrt(), (1 - abar(t)).sqrt()
    x_t = cast(alpha) * x0 + cast(sigma) * eps

    def teacher_mean_step(x, s, s_next, **cond) -> tuple[Tensor, Tensor]:  # (mean of x_next, std of its noise)
        a, s_sigma = cast(abar(s).sqrt()), cast((1 - abar(s)).sqrt())
        out = teacher(x, s, **cond)
        Space.check_tangent(out, x, what="sample")
        x0_hat = to_x0(out, x, a, s_sigma, prediction_type)
        x0_hat = x0_hat if clip_sample is None else x0_hat.clamp(-clip_sample, clip_sample)
        c, std = _ddim_coefficients(abar(s), abar(s_next), eta)
        return cast(abar(s_next).sqrt()) * x0_hat + cast(c) * to_eps(out, x, a, s_sigma, prediction_type), cast(std)

    with torch.no_grad():
        teacher_cond = cond if teacher_cond is None else teacher_cond
        x_mid, std = teacher_mean_step(x_t, t, t_mid, **teacher_cond)
        if eta > 0:
            z = std * torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
            both = {name: torch.cat([v, v]) for name, v in teacher_cond.items()}
            x_two = teacher_mean_step(torch.cat([x_mid + z, x_mid - z]), t_mid.repeat(2), t_next.repeat(2), **both)[0]
            x_two = x_two.view(2, *x0.shape).mean(0)
        else:
            x_two = teacher_mean_step(x_mid, t_mid, t_next, **teacher_cond)[0]
        c, _ = _ddim_coefficients(abar(t), abar(t_next), eta)
        x0_target = (x_two - cast(c / sigma) * x_t) / cast(abar(t_next).sqrt() - c * alpha / sigma)
        target = target_for(prediction_type, x0_target, (x_t - cast(alpha) * x0_target) / cast(sigma), cast(alpha),
                            cast(sigma))
    out = student(x_t, t, **cond)
    Space.check_tangent(out, x0, what="sample")
    return (out.float() - target.float()).pow(2).mean()


def sde_dsm_loss(score_fn: Callable, sde: SDE, x0: Tensor, generator: torch.Generator | None = None, **cond) -> Tensor:
    t = torch.rand(x0.shape[0], device=x0.device, generator=generator) * (sde.T - sde.eps) + sde.eps
    z = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    mean, std = sde.marginal_prob(x0, t)
    score = score_fn(mean + std * z, t, **cond)
    Space.check_tangent(score, x0, what="sample")
    return (std * score + z).pow(2).reshape(x0.shape[0], -1).sum(-1).mean()


def edm_loss(denoiser: Callable, x0: Tensor, sigma_data: float | None = None, p_mean: float = -1.2, p_std: float = 1.2,
             generator: torch.Generator | None = None, **cond) -> Tensor:
    """lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2, mean over samples and elements, in float32 or float64 as x0;
    ``denoiser(x, sigma, **cond)`` predicts x0 (an ``EDMPrecond``, whose ``sigma_data`` is the default; another callable
    needs ``sigma_data``), sigma (B,) reaches it in float64 for float64 points, else float32. With the exact denoiser of
    data N(m, sigma_data^2) the loss is 1 in expectation at every sigma (the weight is 1 / the posterior variance)."""
    Space.check_floating(x0, "edm_loss")
    sd = getattr(denoiser, "sigma_data", None) if sigma_data is None else sigma_data
    if sd is None or not sd > 0:
        raise ValueError(f"edm_loss: sigma_data (the data's standard deviation, > 0) is needed, got {sd}: pass it, or "
                         "a denoiser with a sigma_data attribute (EDMPrecond)")
    sigma = (torch.randn(x0.shape[0], generator=generator, device=x0.device, dtype=torch.float64) * p_std + p_mean).exp()
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    out = denoiser(x0 + broadcast_to_batch(sigma, x0) * noise, _model_sigma(sigma, x0), **cond)
    Space.check_tangent(out, x0, what="sample")
    dtype = working_dtype(x0)
    err = out.to(dtype) - x0.to(dtype)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return (broadcast_to_batch(weight, err) * err.pow(2)).mean()


def _model_sigma(sigma: Sigma, like: Point) -> Sigma:
    """sigma as the samplers hand it to a model: a tensor in float64 for float64 points, else float32, of the samplers'
    shape (B,) when it is one level per sample (a number, (B,), (B, 1), (B, 1, 1), ...; a per-element sigma as given)."""
    ref = next(iter(like.values())) if isinstance(like, Mapping) else like
    dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32

    def as_tensor(s):
        s = torch.as_tensor(s, dtype=dtype, device=ref.device)
        if s.numel() == 1:
            return s.reshape(()).expand(ref.shape[0])
        return s.reshape(-1) if all(n == 1 for n in s.shape[1:]) else s

    return {k: as_tensor(v) for k, v in sigma.items()} if isinstance(sigma, Mapping) else as_tensor(sigma)


def dsm_loss(score_model: Callable, space: Space, x0: Point, sigma: Sigma, generator: torch.Generator | None = None,
             **cond) -> tuple[Tensor, dict[str, Tensor]]:
    """Returns (total loss, per-component losses); the total is the mean over the components that have dimensions
    (a torsion space of a rigid ligand, Torus(0), reports 0 and is not averaged in)."""
    Space.check_floating(x0, "dsm_loss")
    for s in sigma.values() if isinstance(sigma, Mapping) else [sigma]:
        if not bool((torch.as_tensor(s) > 0).all() & torch.isfinite(torch.as_tensor(s)).all()):
            raise ValueError("dsm_loss: sigma must be finite and > 0 (the kernel's scale; its loss weight is 1/E|score|^2)")
    if any(v.shape[0] == 0 for v in (x0.values() if isinstance(x0, Mapping) else [x0])):
        raise ValueError("dsm_loss: empty batch (x0 has no samples)")
    x_t, target = space.perturb(x0, sigma, generator)
    pred = score_model(x_t, _model_sigma(sigma, x0), **cond)
    Space.check_tangent(pred, target)
    err, norm = space.sq_norm(Space.add(pred, Space.scale(target, -1.0))), space.score_norm_sq(sigma)
    if not isinstance(err, dict):
        err, norm = {"x": err}, {"x": norm}
    parts = {k: (err[k] / norm[k].to(err[k].dtype)).mean() if bool((norm[k] > 0).all()) else err[k].sum() * 0
             for k in err}
    counted = [parts[k] for k in err if bool((norm[k] > 0).all())] or list(parts.values())
    return torch.stack(counted).mean(), parts

