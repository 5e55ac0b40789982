"""Score SDEs: marginals agree with the discrete chain and with the SDE's own drift/diffusion; the probability-flow ODE of
each SDE carries the prior to the data distribution with an exact Gaussian score; the continuous DSM loss is minimised by it."""
import math

import pytest
import torch

from sciddiff.core import DDPMChain, DiscreteSchedule, SubVPSDE, VESDE, VPSDE, sample_sde, sde_dsm_loss

M, S0 = 0.5, 0.3  # data ~ N(M, S0^2)


def exact_score(sde):
    def score(x, t):
        mean_coeff, std = sde.marginal_prob(torch.ones_like(x), t)  # mean of x0 = 1 gives the mean coefficient
        var = mean_coeff**2 * S0**2 + std**2
        return -(x - mean_coeff * M) / var
    return score


def test_ddpm_chain_marginals_equal_discrete_schedule():
    chain, schedule = DDPMChain("cosine", N=100), DiscreteSchedule(name="cosine", num_train_timesteps=100)
    i = torch.arange(100)
    mean, std = chain.marginal_prob(torch.ones(100, 1, dtype=torch.float64), (i + 1).double() / 100)
    alpha, sigma = schedule.alpha_sigma(i, torch.ones(100, 1, dtype=torch.float64))
    assert torch.allclose(mean, alpha, atol=1e-12) and torch.allclose(std, sigma, atol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 5.0)])
def test_marginal_variance_obeys_the_sde(sde):
    """d/dt Var = 2 f_coeff Var + g^2 for the linear SDE dx = f_coeff x dt + g dW, checked by finite differences."""
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    x0 = torch.zeros(3, 1, dtype=torch.float64)
    var = lambda tt: sde.marginal_prob(x0, tt)[1] ** 2  # noqa: E731
    h = 1e-6
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    drift, g = sde.sde(torch.ones(3, 1, dtype=torch.float64), t)
    assert torch.allclose(dvar, 2 * drift * var(t) + g**2, rtol=1e-5, atol=1e-8)


def marginal(sde, t: float) -> tuple[float, float]:
    """Mean and std of p_t when the data are N(M, S0^2)."""
    mean_coeff, std = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), torch.full((1,), t, dtype=torch.float64))
    return mean_coeff.item() * M, math.sqrt(mean_coeff.item() ** 2 * S0**2 + std.item() ** 2)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 5.0)])
def test_probability_flow_ode_and_reverse_sde_reach_the_data_distribution(sde):
    g = torch.Generator().manual_seed(0)
    mean_T, std_T = marginal(sde, sde.T)
    x_T = mean_T + std_T * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    mean_0, std_0 = marginal(sde, sde.eps)
    x_ode = sample_sde(sde, exact_score(sde), x_T, steps=200, probability_flow=True, method="heun")
    assert x_ode.mean().item() == pytest.approx(mean_0, abs=0.02) and x_ode.std().item() == pytest.approx(std_0, rel=0.05)
    x_sde = sample_sde(sde, exact_score(sde), x_T, steps=400, generator=g)
    assert x_sde.mean().item() == pytest.approx(mean_0, abs=0.03) and x_sde.std().item() == pytest.approx(std_0, rel=0.1)


def test_continuous_dsm_loss_is_smallest_for_the_true_score():
    sde, g = VPSDE(), torch.Generator().manual_seed(1)
    x0 = M + S0 * torch.randn(20000, 1, generator=g, dtype=torch.float64)
    true = sde_dsm_loss(exact_score(sde), sde, x0, generator=g).item()
    wrong = sde_dsm_loss(lambda x, t: 1.2 * exact_score(sde)(x, t), sde, x0, generator=g).item()
    assert true < wrong
