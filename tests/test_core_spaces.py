"""The Space interface: perturbation scores are exact, exp/log invert, products compose, DSM loss is minimised by the truth."""

import pytest
import torch

from sciddiff.core import SO3, Euclidean, Product, Torus, dsm_loss, so3
from sciddiff.core.flow import interpolate

SPACES = {
    "euclidean": Euclidean((4, 3)),
    "so3": SO3((5,)),
    "torus": Torus(6),
    "product": Product(tr=Euclidean(3), rot=SO3(), tor=Torus(2)),
}


def _point(space, n, g):
    return space.prior_sample(n, 1.0, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", SPACES)
def test_exp_log_roundtrip(name):
    space, g = SPACES[name], torch.Generator().manual_seed(0)
    x, y = _point(space, 16, g), _point(space, 16, g)
    v = space.log(x, y)
    z = space.exp(x, v)
    flat = lambda p: torch.cat([t.reshape(16, -1) for t in p.values()], -1) if isinstance(p, dict) else p.reshape(16, -1)  # noqa: E731
    assert torch.allclose(flat(z), flat(y), atol=1e-9)
    mid = interpolate(space, x, y, torch.full((16,), 0.5, dtype=torch.float64))
    # the midpoint of a geodesic is equidistant from both ends
    d1, d2 = space.sq_norm(space.log(x, mid)), space.sq_norm(space.log(mid, y))
    if isinstance(d1, dict):
        d1, d2 = sum(d1.values()), sum(d2.values())
    assert torch.allclose(d1, d2, atol=1e-8)


def test_so3_perturbation_score_is_igso3_score():
    space, g = SO3(), torch.Generator().manual_seed(1)
    x0 = _point(space, 500, g)
    sigma = torch.rand(500, generator=g, dtype=torch.float64) + 0.05
    xt, score = space.perturb(x0, sigma, g)
    assert torch.allclose(score, so3.rotation_score(x0, xt, sigma), atol=1e-8)


def test_euclidean_score_norm_is_expected_squared_score():
    space, g = Euclidean(3), torch.Generator().manual_seed(2)
    sigma = torch.full((20_000,), 0.7, dtype=torch.float64)
    _, score = space.perturb(torch.zeros(20_000, 3, dtype=torch.float64), sigma, g)
    assert (score.pow(2).sum(-1).mean() / space.score_norm_sq(sigma)[0]).item() == pytest.approx(1, abs=0.03)


@pytest.mark.parametrize("shape", [(1,), (1, 1), (10, 3)])
def test_a_per_sample_sigma_may_carry_trailing_singleton_dims_on_any_point_shape(shape):
    space, x0 = Euclidean((10, 3)), torch.zeros(8, 10, 3)
    sigma = torch.linspace(0.2, 2.0, 8)
    shaped = sigma.reshape(8, *[1] * len(shape)).expand(8, *shape)  # (8, 1), (8, 1, 1) or per element (8, 10, 3)
    assert torch.allclose(space.score_norm_sq(shaped), space.score_norm_sq(sigma))
    losses = []
    for s in (sigma, shaped):
        torch.manual_seed(0)
        losses.append(dsm_loss(lambda x, sig: torch.zeros_like(x), space, x0, s)[0])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", ["so3", "torus"])
def test_manifold_score_norm_is_expected_squared_score(name):
    space, g = SPACES[name], torch.Generator().manual_seed(3)
    sigma = torch.full((8000,), 0.6, dtype=torch.float64)
    x0 = _point(space, 8000, g)
    _, score = space.perturb(x0, sigma, g)
    assert (space.sq_norm(score).mean() / space.score_norm_sq(sigma)[0]).item() == pytest.approx(1, abs=0.04)


def test_dsm_loss_minimised_by_true_score_on_product():
    """For a point-mass target the exact score of the kernel is the Bayes-optimal score: its DSM loss is 0, others' is not."""
    space, g = Product(tr=Euclidean(3), rot=SO3(), tor=Torus(2)), torch.Generator().manual_seed(4)
    x0 = _point(space, 1, g)
    x0 = {k: v.expand(256, *v.shape[1:]).clone() for k, v in x0.items()}
    sigma = {"tr": torch.full((256,), 2.0), "rot": torch.full((256,), 0.8), "tor": torch.full((256,), 1.0)}

    def true_score(x, sig):
        from sciddiff.core import torus
        return {"tr": -(x["tr"] - x0["tr"]) / sig["tr"][:, None].double() ** 2,
                "rot": so3.rotation_score(x0["rot"], x["rot"], sig["rot"].double()),
                "tor": torus.wrapped_normal_score(torus.wrap(x["tor"] - x0["tor"]), sig["tor"][:, None].double())}

    loss, parts = dsm_loss(true_score, space, x0, sigma, g)
    assert loss.item() < 1e-10 and set(parts) == {"tr", "rot", "tor"}
    zero = lambda x, sig: {k: torch.zeros_like(v) if k != "rot" else torch.zeros(256, 3, dtype=torch.float64) for k, v in x.items()}  # noqa: E731
    assert dsm_loss(zero, space, x0, sigma, g)[0].item() == pytest.approx(1.0, abs=0.15)  # normalised weighting: O(1)


def test_per_element_sigma_for_flattened_torsions():
    space, g = Torus(7), torch.Generator().manual_seed(5)
    sigma = torch.linspace(0.1, 3.0, 7, dtype=torch.float64).expand(4000, 7)
    xt, score = space.perturb(torch.zeros(4000, 7, dtype=torch.float64), sigma, g)
    assert xt.shape == (4000, 7)
    assert xt[:, 0].std() < 0.12 and xt[:, -1].std() > 1.5
