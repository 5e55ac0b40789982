"""Wrapped normal on the circle: density, exact score, sampling, score norm."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sciddiff.core import torus

X = torch.linspace(-math.pi, math.pi, 200_001, dtype=torch.float64)


def _brute_density(x, s, k=200):
    ks = np.arange(-k, k + 1)
    return stats.norm.pdf(x[:, None] + 2 * np.pi * ks, scale=s).sum(-1)


@pytest.mark.parametrize("sigma", [0.0314, 0.3, 1.0, 2.5, math.pi])
def test_density_normalised_and_exact(sigma):
    p = torus.wrapped_normal_log_density(X, torch.tensor(sigma, dtype=torch.float64)).exp()
    assert abs(torch.trapezoid(p, X).item() - 1) < 1e-6
    x = np.linspace(-math.pi, math.pi, 101)
    ref = _brute_density(x, sigma)
    ours = torus.wrapped_normal_log_density(torch.from_numpy(x), torch.tensor(sigma, dtype=torch.float64)).exp().numpy()
    mask = ref > 1e-250
    assert np.allclose(ours[mask], ref[mask], rtol=1e-6, atol=0)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 1.5, math.pi])
def test_score_is_derivative_of_log_density(sigma):
    x = torch.linspace(-3.1, 3.1, 301, dtype=torch.float64)
    s = torch.tensor(sigma, dtype=torch.float64)
    h = 1e-6
    fd = (torus.wrapped_normal_log_density(x + h, s) - torus.wrapped_normal_log_density(x - h, s)) / (2 * h)
    score = torus.wrapped_normal_score(x, s)
    assert torch.allclose(score, fd, rtol=1e-6, atol=1e-6 * fd.abs().max().item())
    # periodic: the score at x and x + 2 pi agree
    assert torch.allclose(torus.wrapped_normal_score(x + 2 * math.pi, s), score, atol=1e-9)


@pytest.mark.parametrize("sigma", [0.2, 1.0, 2.5])
def test_sampling_ks(sigma):
    samples = torus.sample_wrapped_normal(torch.full((20_000,), sigma, dtype=torch.float64),
                                          generator=torch.Generator().manual_seed(0))
    assert samples.min() >= -math.pi and samples.max() < math.pi
    pdf = torus.wrapped_normal_log_density(X, torch.tensor(sigma, dtype=torch.float64)).exp()
    cdf_table = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(pdf, X)]).numpy()
    assert stats.kstest(samples.numpy(), lambda x: np.interp(x, X.numpy(), cdf_table)).pvalue > 1e-3


@pytest.mark.parametrize("sigma", [0.01, 0.0314, 0.3, 1.0, 2.0, math.pi])
def test_score_norm_matches_quadrature(sigma):
    s = torch.tensor(sigma, dtype=torch.float64)
    p = torus.wrapped_normal_log_density(X, s).exp()
    ref = torch.trapezoid(torus.wrapped_normal_score(X, s) ** 2 * p, X).item()
    assert torus.wrapped_normal_score_norm(sigma).item() == pytest.approx(ref, rel=1e-5)
