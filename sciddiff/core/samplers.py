"""Samplers. Every one takes the network as a callable ``model(x, noise level, **cond)`` and the starting point the caller drew,
so any network plugs in and seeds stay with the caller (k-diffusion's seam). What the callable returns depends on the family
(below): a k-diffusion denoiser D(x, sigma) serves the VE samplers as the score (D(x, sigma) - x) / sigma^2
(``precond.score_from_denoiser``).

- Discrete DDPM chain (``DiscreteSchedule``), ``model(x_t, t, **cond)`` with integer t (B,) returning the ``prediction_type``:
  ``sample_ddpm`` (ancestral), ``sample_ddim`` (eta), ``sample_dpmpp_2m`` (DPM-Solver++(2M), Lu et al. 2022; eta = 1: its SDE
  form). Each step equals diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` / ``DPMSolverMultistepScheduler`` for identical
  model outputs (tested).
- Continuous SDEs on R^n (``sciddiff.core.sde``), ``score_fn(x, t, **cond)``: ``sample_sde`` (reverse SDE by Euler-Maruyama, or the
  probability-flow ODE by Euler or Heun).
- Variance-exploding diffusion on any ``Space`` (R^n, SO(3), torus, products), ``score_model(x, sigma, **cond)`` returning the score
  as a tangent: ``sample_reverse_sde`` (geodesic random walk) and ``sample_pf_ode`` (Euler / Heun in sigma, optionally
  with EDM's churn: their stochastic sampler; DPM-Solver++(2M); Euler ancestral).
Schedules (``t`` grids, ``sigmas``) are float64; the state keeps the caller's dtype. The discrete-chain samplers take
``generator`` = one ``torch.Generator`` or, as diffusers does, a list of one per batch row, so that a sample's noise does not
depend on its batch-mates (a rollout seed that reproduces alone, `randn`).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from .ddpm import DiscreteSchedule
from .parameterization import to_eps, to_x0
from .sde import SDE
from .spaces import Point, Space

__all__ = ["sample_ddpm", "sample_ddim", "sample_dpmpp_2m", "sample_sde", "sample_reverse_sde", "sample_pf_ode",
           "classifier_free_guidance", "randn", "Generators"]

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn(shape: Sequence[int], generator: Generators = None, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal noise of `shape`; with a list of generators, row i (of the leading dimension) from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: give one per row")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def _euclidean_only(x_T, sampler: str) -> None:
    if not torch.is_tensor(x_T):
        raise TypeError(f"{sampler} samples R^n tensors (a discrete chain of Gaussian noise); on a product or a manifold "
                        "use sample_reverse_sde, sample_pf_ode or sample_flow")


def _full(value: float, x: Tensor, dtype=None) -> Tensor:
    return torch.full((x.shape[0],), value, device=x.device, dtype=dtype or torch.long)


def _clip(x0: Tensor, clip_sample: float | None) -> Tensor:
    return x0 if clip_sample is None else x0.clamp(-clip_sample, clip_sample)


# ------------------------------------------------------------------------------------------------------------ discrete chain
# Per-step coefficients are Python floats (float64) taken from the schedule's float64 table: exact and cheap per step.
def _steps(schedule: DiscreteSchedule, steps: int, spacing: str) -> list[tuple[int, int]]:
    """(t, t_prev) per step of the grid; t_prev = -1 (clean data, alpha-bar 1) after the last. t_prev is the grid's
    next timestep, not t - T // steps as diffusers' DDIMScheduler takes it: with trailing spacing and steps that do
    not divide T the two differ, and there the stride lands the last step at t = 0 (alpha-bar 0.9994 for the cosine
    schedule at T = 100), i.e. it returns noisy samples (diffusers issues #9261, #12633; its DDPMScheduler looks the
    grid up since PR #9384). Where steps divide T, and always with leading spacing, both are the same."""
    grid = schedule.timesteps(steps, spacing)
    return list(zip(grid, [*grid[1:], -1]))


def _x0_eps(model, x, t: int, abar: float, prediction_type: str, clip_sample: float | None, cond) -> tuple[Tensor, Tensor]:
    out = model(x, _full(t, x), **cond)
    Space.check_tangent(out, x, what="sample")
    out = out.to(x.dtype)
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    x0 = _clip(to_x0(out, x, alpha, sigma, prediction_type), clip_sample)
    return x0, to_eps(out, x, alpha, sigma, prediction_type)


@torch.no_grad()
def sample_ddpm(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, *, steps: int | None = None,
                prediction_type: str = "epsilon", clip_sample: float | None = None, generator: Generators = None,
                timestep_spacing: str = "leading", progress: Callable = iter, **cond) -> Tensor:
    """Ancestral sampling with the "fixed_small" posterior variance (Ho et al. 2020); ``steps`` < T strides the chain."""
    _euclidean_only(x_T, "sample_ddpm")
    abar, x = schedule.alphas_cumprod.tolist(), x_T
    for t, t_prev in progress(_steps(schedule, schedule.num_train_timesteps if steps is None else steps,
                                     timestep_spacing)):
        a_t, a_prev = abar[t], abar[t_prev] if t_prev >= 0 else 1.0
        alpha_step = a_t / a_prev
        x0, _ = _x0_eps(model, x, t, a_t, prediction_type, clip_sample, cond)
        x = (math.sqrt(a_prev) * (1 - alpha_step) / (1 - a_t)) * x0 + (math.sqrt(alpha_step) * (1 - a_prev) / (1 - a_t)) * x
        if t > 0:
            std = math.sqrt(max((1 - a_prev) / (1 - a_t) * (1 - alpha_step), 1e-20))
            x = x + std * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def sample_ddim(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, *, steps: int, eta: float = 0.0,
                prediction_type: str = "epsilon", clip_sample: float | None = None, generator: Generators = None,
                timestep_spacing: str = "leading", first_step: int = 0, progress: Callable = iter, **cond) -> Tensor:
    """DDIM (Song et al. 2021): eta = 0 is the deterministic first-order solver of the probability-flow ODE, eta = 1
    draws DDPM's posterior noise at each step, eta > 1 more, up to all of x_prev's noise (the eps direction dropped):
    eta = inf re-noises the predicted clean sample at every step, x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev)
    z, the multistep sampling of consistency models (Song et al. 2023, Alg. 1).

    `first_step` > 0 skips the grid's first steps: x_T is then x at timestep ``schedule.timesteps(steps, spacing)
    [first_step]``, e.g. a guess noised there by ``schedule.add_noise`` (SDEdit, Meng et al. 2022)."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM's posterior noise, inf: re-noising), "
                         f"got {eta}")
    grid = _steps(schedule, steps, timestep_spacing)  # checks steps first
    if not 0 <= first_step < steps:
        raise ValueError(f"first_step must lie in 0..steps - 1 = {steps - 1}, got {first_step}")
    _euclidean_only(x_T, "sample_ddim")
    abar, x = schedule.alphas_cumprod.tolist(), x_T
    for t, t_prev in progress(grid[first_step:]):
        a_t, a_prev = abar[t], abar[t_prev] if t_prev >= 0 else 1.0
        x0, eps = _x0_eps(model, x, t, a_t, prediction_type, clip_sample, cond)
        posterior, most = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)), math.sqrt(1 - a_prev)
        std = min(eta * posterior, most) if posterior > 0 else 0.0  # (inf * 0 on the last step)
        direction = math.sqrt(1 - a_prev - std**2) if std < most else 0.0  # exactly none when capped
        x = math.sqrt(a_prev) * x0 + direction * eps
        if eta > 0:
            x = x + std * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Callable, x_T: Tensor, schedule: DiscreteSchedule, *, steps: int, eta: float = 0.0,
                    prediction_type: str = "epsilon", clip_sample: float | None = None,
                    generator: Generators = None, progress: Callable = iter, **cond) -> Tensor:
    """DPM-Solver++(2M), midpoint form, first order on the first and the last step, final sigma 0. In the
    log-SNR lambda = log(alpha / sigma), with D the (extrapolated) data prediction:
    x_next = (sigma_next / sigma) e^{-eta h} x - alpha_next (e^{-(1 + eta) h} - 1) D + sigma_next sqrt(1 - e^{-2 eta h}) z,
    h = lambda_next - lambda. eta = 0 is the ODE solver (diffusers' "dpmsolver++"); eta = 1 the SDE solver
    ("sde-dpmsolver++", k-diffusion's ``dpmpp_2m_sde``), whose first-order step is DDPM's ancestral step."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (0: the ODE solver, 1: its SDE form), got {eta}")
    abar = schedule.alphas_cumprod.tolist()
    timesteps = schedule.linspace_timesteps(steps)
    # (alpha, sigma, lambda) per grid point; the final point is clean data: alpha 1, sigma 0, lambda inf
    grid = [(math.sqrt(abar[t]), math.sqrt(1 - abar[t]), 0.5 * math.log(abar[t] / (1 - abar[t]))) for t in timesteps]
    grid.append((1.0, 0.0, math.inf))
    _euclidean_only(x_T, "sample_dpmpp_2m")
    x, x0_prev, h_prev = x_T, None, None
    for i, t in enumerate(progress(timesteps)):
        (_, sigma, lam), (alpha_next, sigma_next, lam_next) = grid[i], grid[i + 1]
        x0, _ = _x0_eps(model, x, t, abar[t], prediction_type, clip_sample, cond)
        h = lam_next - lam
        # the step into sigma = 0 has h = inf, so it is always first order (as diffusers with final_sigmas_type="zero")
        d = x0 if x0_prev is None or i == len(timesteps) - 1 else x0 + 0.5 * (h / h_prev) * (x0 - x0_prev)
        decay = math.exp(-eta * h) if eta > 0 else 1.0  # (0 * inf is nan on the last step)
        x = (sigma_next / sigma * decay) * x - alpha_next * math.expm1(-(1 + eta) * h) * d
        if eta > 0:  # drawn on the last step too (its sigma_next is 0), as diffusers does: the same generator, the same noise
            z = randn(x.shape, generator, x.device, x.dtype)
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * z
        x0_prev, h_prev = x0, h
    return x


# ------------------------------------------------------------------------------------------------------- continuous SDEs on R^n
@torch.no_grad()
def sample_sde(sde: SDE, score_fn: Callable, x_T: Tensor, *, steps: int, probability_flow: bool = False,
               method: str = "euler", generator: Generators = None, progress: Callable = iter, **cond) -> Tensor:
    """Integrate the reverse SDE (Euler-Maruyama) or the probability-flow ODE (``method`` euler | heun) from t = T to sde.eps."""
    if method not in ("euler", "heun") or (method == "heun" and not probability_flow) or steps < 1:
        raise ValueError(f"sample_sde: method euler (or heun with probability_flow=True) and steps >= 1; got "
                         f"{method!r}, probability_flow={probability_flow}, steps={steps}")
    rev = sde.reverse(score_fn, probability_flow)
    ts = torch.linspace(sde.T, sde.eps, steps + 1, dtype=torch.float64)
    x = x_T
    for i in progress(range(steps)):
        t, dt = _full(float(ts[i]), x, x.dtype), float(ts[i + 1] - ts[i])
        drift, g = rev.sde(x, t, **cond)
        if method == "heun" and probability_flow and i < steps - 1:
            x_euler = x + drift * dt
            drift2, _ = rev.sde(x_euler, _full(float(ts[i + 1]), x, x.dtype), **cond)
            x = x + 0.5 * (drift + drift2) * dt
        else:
            x = x + drift * dt
        if not probability_flow:
            x = x + g * math.sqrt(-dt) * randn(x.shape, generator, x.device, x.dtype)
    return x


# ------------------------------------------------------------------------------------------------- VE diffusion on any Space
def _grid_length(sigmas, like: Point) -> int:
    """Steps of a sigma grid (or a product's dict of grids, one per component of the points `like`), checked: >= 2
    points, non-increasing, >= 0, finite, and one length for every component (an increasing grid would integrate the
    wrong way)."""
    if isinstance(sigmas, Mapping) and (not isinstance(like, dict) or set(sigmas) != set(like)):
        have = sorted(like) if isinstance(like, dict) else "one tensor"
        raise ValueError(f"a dict of sigma grids needs one grid per component of the points ({have}), got {sorted(sigmas)}")
    grids = list(sigmas.values()) if isinstance(sigmas, Mapping) else [sigmas]
    grids = [torch.as_tensor(g, dtype=torch.float64) for g in grids]
    if any(g.dim() != 1 for g in grids):
        raise ValueError(f"a sigma grid is one-dimensional, got shapes {[tuple(g.shape) for g in grids]}")
    if len({len(g) for g in grids}) != 1 or len(grids[0]) < 2:
        raise ValueError(f"sigma grids need at least 2 points and one length per component, got lengths "
                         f"{[len(g) for g in grids]}")
    for g in grids:
        if not bool(torch.isfinite(g).all() & (g >= 0).all() & (g[1:] <= g[:-1]).all() & (g[:-1] > 0).all()):
            raise ValueError("a sigma grid must be finite, non-increasing (noise to data) and > 0 but for its last "
                             "point (a score at sigma 0 is undefined)")
    return len(grids[0]) - 1


def _sigma_at(sigmas, i: int):
    return {k: float(v[i]) for k, v in sigmas.items()} if isinstance(sigmas, Mapping) else float(sigmas[i])


def _batch_sigma(sigma, like: Point):
    """sigma (B,) for the model: float64 for float64 points, else float32 (bf16 would round the noise level)."""
    ref = next(iter(like.values())) if isinstance(like, dict) else like
    dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    if isinstance(sigma, dict):
        return {k: torch.full((ref.shape[0],), v, device=ref.device, dtype=dtype) for k, v in sigma.items()}
    return torch.full((ref.shape[0],), sigma, device=ref.device, dtype=dtype)


def _combine(a, b, fn):
    return {k: fn(a[k], b[k]) for k in a} if isinstance(a, dict) else fn(a, b)


def _map(a, fn):
    return {k: fn(v) for k, v in a.items()} if isinstance(a, dict) else fn(a)


def _log_ratio(a: float, b: float) -> float:
    return math.log(a / b)


@torch.no_grad()
def sample_reverse_sde(score_model: Callable, space: Space, x_init: Point, sigmas: Tensor | Mapping[str, Tensor], *,
                       generator: torch.Generator | None = None,
                       noise_last: bool = False, progress: Callable = iter, **cond) -> Point:
    """Reverse VE SDE as a geodesic random walk: x <- exp_x(g2 * score + sqrt(g2) * z), g2 = sigma_i^2 - sigma_{i+1}^2.

    ``sigmas`` is a decreasing float64 grid (N+1,) or, for a ``Product``, a dict of such grids of equal length. No noise is added
    on the last step unless ``noise_last`` (DiffDock's choice: the last step only denoises)."""
    n = _grid_length(sigmas, x_init)
    Space.check_floating(x_init, "sample_reverse_sde")
    x = x_init
    for i in progress(range(n)):
        s, s_next = _sigma_at(sigmas, i), _sigma_at(sigmas, i + 1)
        g2 = _combine(s, s_next, lambda a, b: a * a - b * b) if isinstance(s, dict) else s * s - s_next * s_next
        score = score_model(x, _batch_sigma(s, x), **cond)
        if i == 0:
            Space.check_tangent(score, space.log(x, x))
        step = Space.scale(Space.in_dtype_of(score, x), g2)
        if noise_last or i < n - 1:
            g = {k: math.sqrt(v) for k, v in g2.items()} if isinstance(g2, dict) else math.sqrt(g2)
            step = Space.add(step, Space.scale(space.randn_tangent(x, generator), g))
        x = space.exp(x, step)
    return x


@torch.no_grad()
def sample_pf_ode(score_model: Callable, space: Space, x_init: Point, sigmas: Tensor | Mapping[str, Tensor], *,
                  method: str = "heun", s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                  s_noise: float = 1.0, eta: float | None = None, generator: torch.Generator | None = None,
                  progress: Callable = iter, **cond) -> Point:
    """Probability-flow ODE dx/dsigma = -sigma * score(x, sigma) (Karras et al. 2022), Euler or Heun (no Heun correction on a
    step that ends at sigma = 0, for a product: at 0 in any component, where the score is undefined). On curved spaces the
    Heun average combines tangents at x and at the Euler point as if both lived at x (exact on flat spaces, second-order on
    SO(3) since the body-frame transport error is O(h^2)).

    ``method="dpmpp_2m"`` is DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m``, the usual choice on a
    Karras grid): one model call per step, the exponential integrator in log sigma applied to a second-order
    extrapolation of the denoised estimate from this step's and the last one's (first order on the first step, after
    a repeated sigma, and on a step to sigma = 0: on a product, to 0 in any component, for every component). The
    denoised estimate is the tangent v = sigma^2 score from x (Tweedie); the last step's, less the step taken since,
    stands in for it at x, treated as living at x as in Heun (exact on flat spaces and the torus). Per component on a
    product, each on its own grid. No churn. ``eta > 0`` (default 0) is its SDE form, k-diffusion's ``sample_dpmpp_2m_sde``
    (midpoint): the step's coefficient 1 - (sigma_next / sigma)^(1 + eta), then the space's own noise of scale s_noise
    sigma_next sqrt(1 - (sigma_next / sigma)^(2 eta)), whose tangent the next step's carried estimate accounts for.

    ``method="euler_ancestral"`` is k-diffusion's ``sample_euler_ancestral``: an Euler step down to sigma_down, then the
    space's own noise (``perturb``) of scale s_noise sigma_up, sigma_up = min(sigma_next, eta sigma_next sqrt(1 -
    sigma_next^2 / sigma^2)), sigma_down = sqrt(sigma_next^2 - sigma_up^2); ``eta=0`` is plain Euler, ``eta=1`` (the
    default) keeps the marginals (the ancestral sampler of a VE chain). Per component on a product, each on its own grid. No churn.

    ``s_churn > 0`` makes it EDM's stochastic sampler (their Algorithm 2, k-diffusion's ``s_churn``, ``s_tmin``, ``s_tmax``,
    ``s_noise``): where s_tmin <= sigma_i <= s_tmax, each step first raises the noise level to sigma_hat = sigma_i (1 + gamma),
    gamma = min(s_churn / N, sqrt(2) - 1), by adding the space's own noise of scale s_noise sqrt(sigma_hat^2 - sigma_i^2)
    (``perturb``: exact Brownian increments on SO(3) and the torus), then steps from sigma_hat. On a product each component
    tests its own sigma (in its own units: A, radians) against the range, so a component outside it takes a plain step,
    and per-component churn moves the levels off a schedule that ties them (DiffDock's sigma(t)): keep the range wide, or
    use one grid for all. Noise comes from ``generator`` (the global stream when None, as k-diffusion)."""
    n = _grid_length(sigmas, x_init)
    Space.check_floating(x_init, "sample_pf_ode")
    if method not in ("euler", "heun", "dpmpp_2m", "euler_ancestral"):
        raise ValueError(f"unknown ODE method {method!r}; choose euler, heun, dpmpp_2m or euler_ancestral")
    if method in ("dpmpp_2m", "euler_ancestral") and s_churn > 0:
        raise ValueError(f"sample_pf_ode: s_churn is for euler and heun, not {method}")
    if eta is not None and method not in ("dpmpp_2m", "euler_ancestral"):
        raise ValueError(f"sample_pf_ode: eta is for dpmpp_2m and euler_ancestral, not {method} (it has s_churn)")
    eta = (1.0 if method == "euler_ancestral" else 0.0) if eta is None else eta
    if not (s_churn >= 0 and s_noise >= 0 and s_tmin <= s_tmax and eta >= 0):
        raise ValueError(f"sample_pf_ode: need s_churn >= 0, s_noise >= 0, s_tmin <= s_tmax and eta >= 0, got {s_churn}, "
                         f"{s_noise}, [{s_tmin}, {s_tmax}], {eta}")
    x = x_init
    checked = []
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)

    def velocity(x, s):  # d x / d(-sigma): sigma * score
        score = score_model(x, _batch_sigma(s, x), **cond)
        if not checked:  # a score of the wrong shape would broadcast silently
            Space.check_tangent(score, space.log(x, x))
            checked.append(True)
        return Space.scale(Space.in_dtype_of(score, x), s)

    def noised(x, amount):  # the space's own noise of scale `amount` (per component on a product), none where 0
        if not isinstance(x, dict):
            return space.perturb(x, _batch_sigma(amount, x), generator)[0] if amount > 0 else x
        per = amount if isinstance(amount, dict) else dict.fromkeys(x, amount)  # one grid may serve every component
        return {k: part.perturb(x[k], _batch_sigma(per[k], x[k]), generator)[0] if per[k] > 0 else x[k]
                for k, part in space.components.items()}

    def churn(x, s):  # EDM's step back up the noise levels: -> (x at sigma_hat, sigma_hat)
        s_hat = _map(s, lambda v: v * (1 + gamma_max) if s_tmin <= v <= s_tmax else v)
        return noised(x, _combine(s_hat, s, lambda a, b: s_noise * math.sqrt(a * a - b * b))), s_hat

    previous = None  # dpmpp_2m: (sigma, denoised tangent, step taken) of the last step
    for i in progress(range(n)):
        s, s_next = _sigma_at(sigmas, i), _sigma_at(sigmas, i + 1)
        if gamma_max > 0:
            x, s = churn(x, s)
        h = _combine(s, s_next, lambda a, b: a - b)
        d = velocity(x, s)
        last = any(v == 0 for v in s_next.values()) if isinstance(s_next, dict) else s_next == 0
        if method == "dpmpp_2m":
            denoised = v = Space.scale(d, s)  # the tangent from x to the denoised estimate: sigma^2 score (Tweedie)
            if previous is not None and not last:
                s_last, denoised_last, step_last = previous
                seen = Space.add(denoised_last, Space.scale(step_last, -1.0))  # the last estimate, seen from x
                # weight 1 / (2 r), r = h_last / h: the step sizes in log sigma (a repeated sigma: first order)
                w = _combine(_combine(s_last, s, _log_ratio), _combine(s, s_next, _log_ratio),
                             lambda h_last, h: h / (2 * h_last) if h_last > 0 else 0.0)
                v = Space.add(Space.scale(denoised, _map(w, lambda a: 1 + a)), Space.scale(seen, _map(w, lambda a: -a)))
            step = Space.scale(v, _combine(s, s_next, lambda a, b: 1 - (b / a) ** (1 + eta)))
            x_next = space.exp(x, step)
            if eta > 0:  # the SDE's noise; its tangent joins the step, so that the next step sees this estimate from x
                noisy = noised(x_next, _combine(s, s_next, lambda a, b: s_noise * b * math.sqrt(1 - (b / a) ** (2 * eta))))
                step, x_next = Space.add(step, space.log(x_next, noisy)), noisy
            x, previous = x_next, (s, denoised, step)
            continue
        if method == "euler_ancestral":  # (sigma_down, sigma_up) per component, as k-diffusion's get_ancestral_step
            up = _combine(s, s_next, lambda a, b: min(b, eta * b * math.sqrt(1 - b * b / (a * a))))
            down = _combine(s_next, up, lambda b, u: math.sqrt(b * b - u * u))
            x = space.exp(x, Space.scale(d, _combine(s, down, lambda a, b: a - b)))
            x = noised(x, _map(up, lambda u: s_noise * u))
            continue
        x_euler = space.exp(x, Space.scale(d, h))
        if method == "euler" or last:
            x = x_euler
        else:
            d2 = velocity(x_euler, s_next)
            x = space.exp(x, Space.scale(Space.add(d, d2), _map(h, lambda a: a / 2)))
    return x


def classifier_free_guidance(model: Callable, guidance_scale: float, null_cond: dict) -> Callable:
    """Wrap a conditional denoiser: out = out_uncond + scale * (out_cond - out_uncond) (Ho & Salimans 2022). ``null_cond``
    holds the keyword arguments that mean "no condition" (e.g. a learned null embedding or a dropped-label index)."""
    def guided(x, t, **cond):
        uncond = model(x, t, **{**cond, **null_cond})
        return _combine(uncond, model(x, t, **cond), lambda u, c: u + guidance_scale * (c - u))  # dicts: per component
    return guided
