"""Flow matching with the exact clean-point predictor of a Gaussian target, and classifier-free guidance."""
import pytest
import torch

from sciddiff.core import SO3, Euclidean, Product, classifier_free_guidance, flow_matching_loss, sample_flow

M, S0 = 1.5, 0.4


def exact_x1(x, t):
    """E[x1 | x_t] for x_t = (1 - t) z + t x1, z ~ N(0, 1), x1 ~ N(M, S0^2)."""
    t = t.to(x.dtype)[:, None]
    return M + t * S0**2 * (x - t * M) / ((1 - t) ** 2 + t**2 * S0**2)


@pytest.mark.parametrize("method, steps", [("euler", 100), ("heun", 20)])
def test_flow_ode_transports_noise_to_data(method, steps):
    z = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1 = sample_flow(exact_x1, Euclidean(1), z, steps=steps, method=method)
    assert x1.mean().item() == pytest.approx(M, abs=0.02)
    assert x1.std().item() == pytest.approx(S0, rel=0.03)


def test_langevin_sampling_keeps_marginals_at_temperature_one_and_sharpens_below():
    z = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    noise = lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)  # noqa: E731
    x1 = sample_flow(exact_x1, Euclidean(1), z, steps=200, langevin={"x": 2.0}, noise=noise)
    assert x1.mean().item() == pytest.approx(M, abs=0.02)
    assert x1.std().item() == pytest.approx(S0, rel=0.03)
    cold = sample_flow(exact_x1, Euclidean(1), z, steps=200, langevin={"x": 2.0}, temperature=0.3, noise=noise)
    assert cold.mean().item() == pytest.approx(M, abs=0.02)
    assert cold.std().item() < 0.9 * S0


def test_langevin_sampling_refuses_non_euclidean_components():
    space = Product(x=Euclidean(1), rot=SO3())
    x = {"x": torch.zeros(2, 1), "rot": torch.eye(3).expand(2, 3, 3)}
    with pytest.raises(ValueError, match="Euclidean"):
        sample_flow(lambda x, t: x, space, x, steps=3, langevin={"rot": 1.0})


def test_flow_matching_loss_smallest_for_exact_predictor():
    g = torch.Generator().manual_seed(1)
    n = 20000
    z, x1 = torch.randn(n, 1, generator=g, dtype=torch.float64), M + S0 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    exact, _ = flow_matching_loss(exact_x1, Euclidean(1), z, x1, t)
    biased, _ = flow_matching_loss(lambda x, tt: exact_x1(x, tt) + 0.1, Euclidean(1), z, x1, t)
    assert exact < biased


def test_classifier_free_guidance_combines_outputs():
    model = lambda x, t, label: x * 0 + label[:, None].to(x.dtype)  # noqa: E731
    guided = classifier_free_guidance(model, 3.0, {"label": torch.zeros(4)})
    out = guided(torch.zeros(4, 2), torch.zeros(4), label=torch.full((4,), 2.0))
    assert torch.allclose(out, torch.full((4, 2), 0 + 3.0 * (2 - 0)))
