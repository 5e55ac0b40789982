"""Convergence order of the ODE samplers with the exact denoiser of a Gaussian target (closed-form score).

For data x0 ~ N(m, s0^2), x_t = alpha x0 + sigma eps is Gaussian, E[eps | x_t] = sigma (x_t - alpha m) / (alpha^2 s0^2 + sigma^2),
and the probability-flow ODE is affine: x(t) = alpha_t m + sqrt(alpha_t^2 s0^2 + sigma_t^2) z with z fixed by the start point.
"""
import math

import numpy as np
import pytest
import torch

from sciddiff.core import (SO3, DiscreteSchedule, Euclidean, Product, Torus, karras_sigmas, sample_ddim, sample_dpmpp_2m, sample_pf_ode,
                           so3, torus)

M, S0 = 0.7, 0.5


def _exact_eps(schedule):
    def model(x, t):
        alpha, sigma = schedule.alpha_sigma(t, x)
        return sigma * (x - alpha * M) / (alpha**2 * S0**2 + sigma**2)
    return model


def _exact_end(schedule, x_start, t0):
    abar = schedule.alphas_cumprod[t0]
    z = (x_start.double() - abar.sqrt() * M) / (abar * S0**2 + 1 - abar).sqrt()
    return M + S0 * z


def _order(steps, errors):
    """Least-squares slope of -log(error) against log(steps). Pairwise ratios are noisy for DPM-Solver++ because its last step
    (into sigma = 0) is first order and diffusers' integer timesteps make the grid slightly uneven; the fitted slope is not."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def test_ddim_first_order_dpmpp_second_order():
    schedule = DiscreteSchedule(name="cosine", num_train_timesteps=1000)
    x = torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = _exact_eps(schedule)
    steps = (10, 20, 40, 80, 160)
    ddim_err, dpm_err = [], []
    for n in steps:
        t0 = schedule.timesteps(n)[0]
        ddim_err.append((sample_ddim(model, x, schedule, steps=n) - _exact_end(schedule, x, t0)).abs().max().item())
        dpm_err.append((sample_dpmpp_2m(model, x, schedule, steps=n) - _exact_end(schedule, x, 999)).abs().max().item())
    assert 0.85 < _order(steps, ddim_err) < 1.15, ddim_err
    assert 1.7 < _order(steps, dpm_err) < 2.8, dpm_err
    assert dpm_err[1] < ddim_err[1] / 5


def test_pf_ode_euler_first_order_heun_second_order():
    space = Euclidean(1)
    score = lambda x, sigma: -(x - M) / (S0**2 + sigma.to(x.dtype)[:, None] ** 2)  # noqa: E731
    sigma_max, sigma_min = 10.0, 0.05
    x = space.prior_sample(256, math.sqrt(sigma_max**2 + S0**2), torch.Generator().manual_seed(0), dtype=torch.float64) + M
    z = (x - M) / math.sqrt(S0**2 + sigma_max**2)
    exact = M + math.sqrt(S0**2 + sigma_min**2) * z
    err = {"euler": [], "heun": [], "dpmpp_2m": []}
    for n in (8, 16, 32, 64):
        sigmas = karras_sigmas(n, sigma_min, sigma_max)[:-1]  # stop at sigma_min: the last Heun step stays second order
        for method in err:
            err[method].append((sample_pf_ode(score, space, x, sigmas, method=method) - exact).abs().mean().item())
    steps = (8, 16, 32, 64)
    assert 0.8 < _order(steps, err["euler"]) < 1.3, err["euler"]
    assert 1.7 < _order(steps, err["heun"]) < 2.6, err["heun"]
    assert 1.7 < _order(steps, err["dpmpp_2m"]) < 2.6, err["dpmpp_2m"]
    assert err["dpmpp_2m"][1] < err["heun"][0]  # 16 model calls against Heun's 15: the multistep method is ahead


@pytest.mark.parametrize("space_name", ["torus", "so3"])
def test_pf_ode_orders_on_curved_spaces(space_name):
    """Data concentrated at 0 / the identity (wrapped normal / IGSO(3) of scale 0.3): noise adds sigma^2, so the exact
    score is the kernel's at sqrt(0.3^2 + sigma^2). Against a fine Heun solution: Euler first order, DPM-Solver++(2M)
    second order (its denoised extrapolation carried between points as tangents)."""
    g = torch.Generator().manual_seed(0)
    if space_name == "torus":
        space, x = Torus(2), (torch.rand(64, 2, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
        score = lambda x, s: torus.wrapped_normal_score(x, (0.09 + s[:, None] ** 2).sqrt())  # noqa: E731
    else:
        space, x = SO3(), so3.uniform_so3(64, g, dtype=torch.float64)
        score = lambda x, s: so3.rotation_score(torch.eye(3, dtype=x.dtype).expand_as(x), x, (0.09 + s**2).sqrt())  # noqa: E731
    grid = lambda n: karras_sigmas(n, 0.05, 3.0)[:-1]  # noqa: E731
    ref = sample_pf_ode(score, space, x, grid(400), method="heun")
    steps = (8, 16, 32)
    err = {m: [float(space.sq_norm(space.log(ref, sample_pf_ode(score, space, x, grid(n), method=m))).sqrt().mean())
               for n in steps] for m in ("euler", "dpmpp_2m")}
    assert 0.8 < _order(steps, err["euler"]) < 1.4, err["euler"]
    assert 1.6 < _order(steps, err["dpmpp_2m"]) < 2.6, err["dpmpp_2m"]


def test_a_one_percent_eps_error_from_the_last_cosine_step_spreads_the_samples():
    """docs/core.md's cosine trap: from t = T-1 (abar 2.4e-7) a 1% error in eps moves the x0 prediction by ~20; the
    later steps of a trailing grid correct it only partly (std 0.90 for 0.43 at 10 steps), a leading grid is unhurt."""
    schedule = DiscreteSchedule(name="cosine", num_train_timesteps=100)
    exact = _exact_eps(schedule)
    x_T = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))
    std = {}
    for spacing in ("trailing", "leading"):
        for name, model in (("exact", exact), ("1%", lambda x, t: 1.01 * exact(x, t))):
            std[spacing, name] = float(sample_ddim(model, x_T, schedule, steps=10, timestep_spacing=spacing).std())
    assert std["trailing", "1%"] > 1.5 * std["trailing", "exact"], std
    assert abs(std["leading", "1%"] / std["leading", "exact"] - 1) < 0.05, std


def test_dpmpp_2m_to_sigma_zero_on_a_product_is_each_component_on_its_own_grid():
    """A grid ending at 0 (Karras's, as k-diffusion samples): the last step is first order (the extrapolation's log-sigma
    ratio is infinite there). A product with one grid per component gives each component's own run, bit for bit."""
    score = lambda x, sigma: -(x - M) / (S0**2 + sigma.to(x.dtype)[:, None] ** 2)  # noqa: E731
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    grid_a, grid_b = karras_sigmas(24, 0.01, 10.0), karras_sigmas(24, 0.05, 3.0, rho=3.0)
    a = sample_pf_ode(score, Euclidean(2), x, grid_a, method="dpmpp_2m")
    exact = M + S0 * (x - M) / math.sqrt(S0**2 + 100.0)
    euler = sample_pf_ode(score, Euclidean(2), x, grid_a, method="euler")
    assert (a - exact).abs().mean() < (euler - exact).abs().mean() / 4, ((a - exact).abs().mean(), (euler - exact).abs().mean())
    both = sample_pf_ode(lambda x, s: {k: score(x[k], s[k]) for k in x}, Product(a=Euclidean(2), b=Euclidean(2)),
                         {"a": x, "b": x / 3}, {"a": grid_a, "b": grid_b}, method="dpmpp_2m")
    assert torch.equal(both["a"], a)
    assert torch.equal(both["b"], sample_pf_ode(score, Euclidean(2), x / 3, grid_b, method="dpmpp_2m"))
    repeated = torch.tensor([10.0, 5.0, 5.0, 1.0, 0.0], dtype=torch.float64)  # h_last = 0: a first-order step there
    assert torch.isfinite(sample_pf_ode(score, Euclidean(2), x, repeated, method="dpmpp_2m")).all()
    with pytest.raises(ValueError, match="not (dpmpp_2m|euler_ancestral)"):
        sample_pf_ode(score, Euclidean(2), x, grid_a, method="dpmpp_2m", s_churn=1.0)
