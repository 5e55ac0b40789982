"""IGSO(3): normalisation, exact score, sampling, reference values; SO(3) maps and equivariance (float64)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from sciddiff.core import so3

W = torch.linspace(0, math.pi, 200_001, dtype=torch.float64)


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1, 0.5, 0.99, 1.0, 1.5, 3.0])
def test_angle_density_integrates_to_one(sigma):
    assert abs(torch.trapezoid(so3.igso3_angle_density(W, sigma), W).item() - 1) <= 1e-4


@pytest.mark.parametrize("sigma, mean_angle", [(0.1, 0.1595), (0.5, 0.7895), (1.0, 1.5214), (1.5, 2.0073)])
def test_reference_mean_angle(sigma, mean_angle):
    # Reference values are given to 4 digits from an independent float64 computation; our quadrature agrees to <= 1e-3
    assert abs(torch.trapezoid(W * so3.igso3_angle_density(W, sigma), W).item() - mean_angle) < 1e-3


@pytest.mark.parametrize("sigma, ref", [(0.1301, 7.670), (0.3666, 2.681), (1.0273, 0.768), (1.5, 0.245)])
def test_reference_score_norm(sigma, ref):
    assert abs(math.sqrt(so3.igso3_score_norm(sigma).item() / 3) - ref) / ref < 2e-3


def test_reference_score_values():
    assert so3.igso3_score(torch.tensor(0.05, dtype=torch.float64), 0.1).item() == pytest.approx(-4.996, abs=1e-3)
    # FrameDiff's (f + 1e-4) denominator gives -0.106 here; the exact value is -10.96
    assert so3.igso3_score(torch.tensor(3.0, dtype=torch.float64), 0.5).item() == pytest.approx(-10.96, abs=1e-2)
    # a Python-float sigma is float64, not rounded to float32 first (off by 9e-6 at s = 0.1, w = 3; mpmath -299.702124089)
    w = torch.tensor(3.0, dtype=torch.float64)
    assert so3.igso3_score(w, 0.1).item() == pytest.approx(-299.7021240888, abs=1e-9)
    assert so3.igso3_density(w, 0.1).item() == so3.igso3_density(w, torch.tensor(0.1, dtype=torch.float64)).item()


@pytest.mark.parametrize("sigma", [0.03, 0.2, 0.8, 1.0, 1.2, 2.0])
def test_score_is_derivative_of_log_density(sigma):
    w = torch.linspace(0.01, math.pi - 0.01, 400, dtype=torch.float64)
    h = 1e-6
    fd = (so3.igso3_density(w + h, sigma).log() - so3.igso3_density(w - h, sigma).log()) / (2 * h)
    mask = so3.igso3_density(w, sigma) > 1e-200  # finite differences of log(0) are meaningless in the far tail
    assert torch.allclose(so3.igso3_score(w, sigma)[mask], fd[mask], rtol=1e-5, atol=1e-5)


def test_poisson_and_series_forms_agree():
    w = torch.tensor([1e-4, 0.01, 0.5, 1.5, 3.0, math.pi], dtype=torch.float64)
    for sigma in (0.6, 0.9, 1.2):
        s = torch.full_like(w, sigma)
        a, b = so3._poisson_log_f(w, s), so3._series_log_f(w, s, 200)
        assert torch.allclose(a[0], b[0], atol=1e-7) and torch.allclose(a[1], b[1], atol=1e-7)


def test_score_small_angle_and_broadcasting():
    omega = torch.tensor([[1e-5], [1e-3], [0.5]], dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.7, 1.4], dtype=torch.float64)
    out = so3.igso3_score(omega, sigma)
    assert out.shape == (3, 3) and torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(-1e-5 / 0.01 + 1e-5 / 12, rel=1e-6)
    assert so3.igso3_score(torch.tensor(1e-3, dtype=torch.float32), 0.1).dtype == torch.float32


@pytest.mark.parametrize("sigma", [1e-3, 1.5e-3, 3e-3])
def test_small_sigma_density_is_smooth_at_the_small_angle_branch_and_matches_the_maxwell_limit(sigma):
    # below w = 1e-3 the density takes a series form; with sigma ~1e-3 that branch holds most of the mass
    w = torch.tensor([0.999e-3, 1.001e-3], dtype=torch.float64)
    f = so3.igso3_density(w, sigma)
    assert f[1] / f[0] == pytest.approx(math.exp(-(w[1]**2 - w[0]**2) / (2 * sigma**2)), rel=1e-5)
    fine = torch.linspace(0, 40 * sigma, 400_001, dtype=torch.float64)
    assert torch.trapezoid(so3.igso3_angle_density(fine, sigma), fine).item() == pytest.approx(1, abs=1e-6)
    # angles of N(0, sigma^2 I_3) rotation vectors: Maxwell, mean 2 sigma sqrt(2 / pi)
    angles = so3.sample_igso3(sigma, 200_000, generator=torch.Generator().manual_seed(0)).double().norm(dim=-1)
    assert angles.mean().item() == pytest.approx(2 * sigma * math.sqrt(2 / math.pi), rel=5e-3)
    # the score norm is continuous where the table (sigma >= 1e-3) meets the Gaussian limit 3 / sigma^2
    s = torch.tensor([0.9999e-3, 1.0001e-3, 1.01e-3], dtype=torch.float64)
    assert torch.allclose(so3.igso3_score_norm(s) * s**2 / 3, torch.ones(3, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.0, 1.8])
def test_sampled_angles_pass_ks_test(sigma):
    v = so3.sample_igso3(sigma, 20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cdf_w = torch.cumulative_trapezoid(so3.igso3_angle_density(W, sigma), W)
    table = torch.cat([torch.zeros(1, dtype=torch.float64), cdf_w]).numpy()

    def cdf(x):
        return np.interp(x, W.numpy(), table)
    assert stats.kstest(v.norm(dim=-1).numpy(), cdf).pvalue > 1e-3
    axis = v / v.norm(dim=-1, keepdim=True)
    assert axis.mean(0).abs().max() < 0.03  # isotropic axis


def test_sample_with_per_sample_sigma_and_interpolation_in_sigma():
    # sigmas between table rows: the mean angle follows the density's mean
    sigma = torch.full((40_000,), 0.4321, dtype=torch.float64)
    v = so3.sample_igso3(sigma, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mean = torch.trapezoid(W * so3.igso3_angle_density(W, 0.4321), W).item()
    assert abs(v.norm(dim=-1).mean().item() - mean) < 4 * 0.3 / math.sqrt(40_000) + 1e-3


@pytest.mark.parametrize("sigma", [0.05, 0.4321, 1.2, 2.2])
def test_inverse_cdf_between_table_rows_has_the_density_mean(sigma):
    """The sampler's inverse CDF integrated over its uniform variate (deterministic: a midpoint rule in the table's level
    variable) gives the density's mean angle to 2e-5 relative at sigmas midway between table rows in log sigma, where
    linear interpolation between rows was 1.3e-4 off (on the rows themselves the table is within 3e-6)."""
    table = so3._table(torch.device("cpu"))
    k = int((math.log(sigma) - float(table.log_sigmas[0])) // float(table.log_sigmas[1] - table.log_sigmas[0]))
    mid = float(((table.log_sigmas[k] + table.log_sigmas[k + 1]) / 2).exp())
    t = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    du = torch.sin(math.pi * t)  # u = (1 - cos(pi t)) / 2
    mean = float((table.inverse_cdf(torch.full_like(t, mid), (1 - torch.cos(math.pi * t)) / 2) * du).sum() / du.sum())
    exact = float(torch.trapezoid(W * so3.igso3_angle_density(W, mid), W) / torch.trapezoid(so3.igso3_angle_density(W, mid), W))
    assert abs(mean / exact - 1) < 2e-5, (mid, mean, exact)


def test_exp_log_roundtrip_including_near_pi():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(2000, 1, generator=g, dtype=torch.float64) * math.pi
    v[:5] *= 1e-9
    R = so3.exp_map(v)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12)
    assert torch.allclose(so3.exp_map(so3.log_map(R)), R, atol=1e-10)
    keep = v.norm(dim=-1) < math.pi - 1e-6
    assert torch.allclose(so3.log_map(R)[keep], v[keep], atol=1e-9)
    # agrees with the matrix exponential of the skew matrix
    assert torch.allclose(torch.linalg.matrix_exp(so3.hat(v)), R, atol=1e-10)


def test_log_map_is_exact_at_small_angles():
    for angle in (1e-6, 5e-5, 1.9e-4, 2.1e-4, 1e-3):  # both sides of the small-angle branch
        v = torch.tensor([[angle, -0.5 * angle, 0.25 * angle]], dtype=torch.float64)
        assert torch.allclose(so3.log_map(so3.exp_map(v)), v, rtol=1e-13, atol=0)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.3])
def test_sampled_far_tail_holds_its_mass_not_the_last_table_bin(sigma):
    """P(angle > 5 sigma) ~ 1.5e-5 (quadrature of the density); uniformly spaced CDF levels put 2e-4 there."""
    w = so3.sample_igso3(sigma, 2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).norm(dim=-1)
    grid = torch.linspace(5 * sigma, math.pi, 200_001, dtype=torch.float64)
    exact = float(torch.trapezoid(so3.igso3_angle_density(grid, sigma), grid))
    count = int((w > 5 * sigma).sum())
    assert abs(count - exact * len(w)) < 5 * math.sqrt(exact * len(w)) + 2, (count, exact * len(w))


def test_uniform_so3_is_haar():
    R = so3.uniform_so3(50_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    # Haar: the angle density is (1 - cos w) / pi, mean angle pi/2 + 2/pi
    assert abs(so3.log_map(R).norm(dim=-1).mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.01


def test_rotation_score_equivariance():
    """Left-multiplying both R0 and Rt by any Q leaves the body-frame score unchanged."""
    g = torch.Generator().manual_seed(3)
    R0 = so3.uniform_so3(64, g, dtype=torch.float64)
    Rt = R0 @ so3.exp_map(so3.sample_igso3(0.7, 64, generator=g, dtype=torch.float64))
    Q = so3.uniform_so3(1, g, dtype=torch.float64)
    s = so3.rotation_score(R0, Rt, torch.tensor(0.7))
    assert torch.allclose(so3.rotation_score(Q @ R0, Q @ Rt, torch.tensor(0.7)), s, atol=1e-10)
