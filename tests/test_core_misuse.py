"""What a researcher's mistakes with the core get: a clear ValueError at the API boundary, or the right answer for
inputs the docs allow (per-element sigma, a rigid ligand's empty torsion space), never a silently wrong loss."""
import math

import pytest
import torch

from sciddiff.core import (SO3, DiscreteSchedule, Euclidean, Product, Torus, ddpm_loss, dsm_loss, sample_ddim, sample_ddpm,
                           sample_dpmpp_2m, sample_pf_ode, sample_reverse_sde)
from sciddiff.core.flow import sample_flow
from sciddiff.core.so3 import sample_igso3


def zero_score(x, sigma):
    if isinstance(x, dict):
        return {k: zero_score(v, sigma) for k, v in x.items()}
    return torch.zeros(x.shape[:-1]) if x.shape[-2:] == (3, 3) else torch.zeros_like(x)


def test_sigma_shapes_the_docs_allow_give_the_same_loss():
    sigma = torch.tensor([0.1, 1.0, 3.0, 10.0])
    for space, x0 in [(Euclidean(3), torch.zeros(4, 3)), (Euclidean((5, 3)), torch.zeros(4, 5, 3)),
                      (Torus(4), torch.zeros(4, 4)), (SO3(), torch.eye(3).expand(4, 3, 3)),
                      (SO3(2), torch.eye(3).expand(4, 2, 3, 3))]:
        per_sample = dsm_loss(zero_score, space, x0, sigma, torch.Generator().manual_seed(0))[0]
        column = dsm_loss(zero_score, space, x0, sigma[:, None], torch.Generator().manual_seed(0))[0]
        points = x0.shape[:-2] if isinstance(space, SO3) else x0.shape  # a rotation is one element
        per_element = dsm_loss(zero_score, space, x0, sigma.reshape(-1, *[1] * (len(points) - 1)).expand(points),
                               torch.Generator().manual_seed(0))[0]
        assert torch.allclose(column, per_sample) and torch.allclose(per_element, per_sample), space
    seen = []  # the model gets the samplers' (B,) for any one-level-per-sample sigma, as k-diffusion's denoisers do
    for level in (0.5, torch.tensor(0.5), torch.tensor([0.5]), torch.full((1, 1), 0.5), torch.full((4, 1, 1), 0.5)):
        dsm_loss(lambda x, s: seen.append(tuple(s.shape)) or torch.zeros_like(x), Euclidean(3), torch.zeros(4, 3), level)
    assert seen == [(4,)] * 5


def test_a_rigid_ligand_and_a_large_torsion_sigma_give_finite_losses():
    space = Product(tr=Euclidean(3), rot=SO3(), tor=Torus(0))
    x0 = {"tr": torch.zeros(4, 3), "rot": torch.eye(3).expand(4, 3, 3), "tor": torch.zeros(4, 0)}
    loss, parts = dsm_loss(zero_score, space, x0, torch.full((4,), 0.5))
    assert torch.isfinite(loss) and float(parts["tor"]) == 0 and loss == (parts["tr"] + parts["rot"]) / 2
    big = dsm_loss(zero_score, Torus(4), torch.zeros(4, 4), torch.full((4,), 10.0))[0]
    assert torch.isfinite(big) and float(big) < 1  # the weight is held at sigma = pi, where the score is ~0


@pytest.mark.parametrize("sigma", [0.0, -0.5, math.nan])
def test_a_sigma_that_is_no_scale_is_refused(sigma):
    cases = [(Euclidean(3), torch.zeros(2, 3)), (SO3(), torch.eye(3).expand(2, 3, 3)), (Torus(2), torch.zeros(2, 2))]
    for space, x0 in cases:
        with pytest.raises(ValueError, match="sigma must be finite and > 0"):
            dsm_loss(zero_score, space, x0, torch.full((2,), sigma))


def test_an_empty_batch_and_igso3_scales_that_do_not_fit_n_are_refused():
    with pytest.raises(ValueError, match="empty batch"):
        dsm_loss(zero_score, Euclidean(3), torch.zeros(0, 3), torch.ones(0))
    v = sample_igso3(torch.tensor([0.5]), 6, generator=torch.Generator().manual_seed(0))
    assert v.shape == (6, 3) and len({tuple(r) for r in v.tolist()}) == 6  # one scale, six draws
    for sigma, n, message in [(torch.ones(3), 4, "n = 4 but sigma holds 3"), (torch.ones(2, 2), None, "1-D")]:
        with pytest.raises(ValueError, match=message):
            sample_igso3(sigma, n)


def test_a_score_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"model returned \(2, 1\); the tangent shape is \(2, 3\)"):
        dsm_loss(lambda x, s: torch.zeros(2, 1), Euclidean(3), torch.zeros(2, 3), torch.ones(2))
    space = Product(tr=Euclidean(3), tor=Torus(2))
    with pytest.raises(ValueError, match="dict with keys"):
        dsm_loss(lambda x, s: {"tr": torch.zeros(2, 3)}, space, {"tr": torch.zeros(2, 3), "tor": torch.zeros(2, 2)},
                 torch.ones(2))
    for n in (-1, 2.5):
        with pytest.raises(ValueError, match="Torus"):
            Torus(n)


def test_every_loss_and_sampler_names_a_model_output_of_the_wrong_shape():
    """A pooled (B, 1, 2) or batch-less (1, 16, 2) output for (B, 16, 2) actions broadcast silently through the
    discrete losses and samplers, the SDE sampler and the flow (a loss of 0.83, full-shape samples)."""
    from sciddiff.core import VPSDE, ddpm_loss, sample_sde
    from sciddiff.core.flow import flow_matching_loss

    schedule, x = DiscreteSchedule(name="linear", num_train_timesteps=100), torch.zeros(4, 16, 2)
    for bad in (torch.zeros(4, 1, 2), torch.zeros(1, 16, 2)):
        model = lambda x_t, t: bad  # noqa: E731
        shape = rf"model returned \({', '.join(map(str, bad.shape))}\); the (sample|point) shape is \(4, 16, 2\)"
        calls = [lambda: ddpm_loss(model, x, schedule), lambda: sample_ddpm(model, x, schedule, steps=2),
                 lambda: sample_ddim(model, x, schedule, steps=2), lambda: sample_dpmpp_2m(model, x, schedule, steps=2),
                 lambda: sample_sde(VPSDE(), model, x, steps=2),
                 lambda: sample_flow(model, Euclidean((16, 2)), x, steps=2),
                 lambda: flow_matching_loss(model, Euclidean((16, 2)), x, x, torch.full((4,), 0.5))]
        for call in calls:
            with pytest.raises(ValueError, match=shape):
                call()
    space = Product(tr=Euclidean(3), tor=Torus(2))
    with pytest.raises(ValueError, match="dict with keys"):  # was a bare KeyError
        sample_flow(lambda x, t: {"tr": x["tr"]}, space, {"tr": torch.zeros(2, 3), "tor": torch.zeros(2, 2)}, steps=2)


def test_flow_samples_end_on_the_manifold_whatever_the_network_returns():
    angles = sample_flow(lambda x, t: x + 10.0, Torus(3), Torus(3).prior_sample(4, None), steps=3)
    assert angles.min() >= -math.pi and angles.max() < math.pi
    rot = sample_flow(lambda x, t: 2 * x, SO3(), SO3().prior_sample(2, None), steps=3)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, torch.eye(3).expand(2, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="steps >= 1"):
        sample_flow(lambda x, t: x, Torus(3), Torus(3).prior_sample(4, None), steps=0)


def test_step_counts_outside_the_schedule_are_refused():
    schedule = DiscreteSchedule(num_train_timesteps=10)
    x = torch.zeros(2, 3)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match=r"steps must lie in 1\.\.9"):
        sample_dpmpp_2m(model, x, schedule, steps=10)  # repeated timesteps: a division by zero before
    with pytest.raises(ValueError, match=r"steps must lie in 1\.\.10"):
        sample_ddim(model, x, schedule, steps=20, timestep_spacing="trailing")  # t = -1 reached the model before
    with pytest.raises(ValueError, match=r"steps must lie in 1\.\.10"):
        sample_ddpm(model, x, schedule, steps=0)  # the whole chain, silently, before
    with pytest.raises(ValueError, match=r"steps must lie in 1\.\.10"):
        sample_ddim(model, x, schedule, steps=0)  # named steps, not first_step, before
    with pytest.raises(ValueError, match="first_step"):
        sample_ddim(model, x, schedule, steps=4, first_step=4)
    assert sample_dpmpp_2m(model, x, schedule, steps=9).shape == x.shape
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(model, x, schedule, steps=4, eta=-0.1)


def test_sigma_grids_that_run_the_wrong_way_are_refused():
    from sciddiff.core import sample_pf_ode, sample_reverse_sde

    x = torch.zeros(2, 3)
    for grid in ([1.0], [0.5, 1.0], [1.0, -0.1], [1.0, 0.5, 0.6], [1.0, 0.0, 0.0], [[1.0, 0.5]]):
        with pytest.raises(ValueError, match="sigma grid"):
            sample_reverse_sde(zero_score, Euclidean(3), x, torch.tensor(grid, dtype=torch.float64))
    with pytest.raises(ValueError, match="one length per component"):
        sample_pf_ode(zero_score, Product(a=Euclidean(3), b=Torus(2)), {"a": x, "b": torch.zeros(2, 2)},
                      {"a": torch.tensor([1.0, 0.5, 0.0]), "b": torch.tensor([1.0, 0.0])})


def test_heun_takes_an_euler_step_where_any_component_of_a_product_reaches_sigma_zero():
    # k-diffusion's and EDM's rule per step: the Heun correction at sigma = 0 halved component a's last step (its
    # velocity sigma * score is 0 there), leaving it half-way between x and the data
    from sciddiff.core import karras_sigmas, sample_pf_ode

    def score(x, sigma):  # data N(0.7, 0.5^2) per coordinate, exact
        if isinstance(x, dict):
            return {k: score(x[k], sigma[k]) for k in x}
        return -(x - 0.7) / (0.25 + sigma[:, None] ** 2)

    x = {"a": 3.0 * torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
         "b": 3.0 * torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
    grids = {"a": karras_sigmas(20, 0.3, 3.0), "b": torch.linspace(3.0, 0.3, 21, dtype=torch.float64)}
    together = sample_pf_ode(score, Product(a=Euclidean(1), b=Euclidean(1)), x, grids)
    alone = sample_pf_ode(score, Euclidean(1), x["a"], grids["a"])
    assert torch.allclose(together["a"], alone, atol=1e-12)


def test_samplers_name_a_score_of_the_wrong_shape_and_guidance_takes_products():
    from sciddiff.core import classifier_free_guidance, sample_reverse_sde

    grid = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"model returned \(2, 1\)"):
        sample_reverse_sde(lambda x, s: torch.zeros(2, 1), Euclidean(3), torch.zeros(2, 3), grid)
    model = lambda x, s, c=1.0: {"a": torch.full_like(x["a"], c), "b": torch.full_like(x["b"], 2 * c)}  # noqa: E731
    out = classifier_free_guidance(model, 3.0, {"c": 0.0})({"a": torch.zeros(2, 3), "b": torch.zeros(2, 2)}, None)
    assert torch.equal(out["a"], torch.full((2, 3), 3.0)) and torch.equal(out["b"], torch.full((2, 2), 6.0))
    with pytest.raises(ValueError, match="needs sigma_max"):
        Euclidean(3).prior_sample(2, None)


def test_constructors_and_options_outside_their_range_are_refused():
    from sciddiff.core import VESDE, sample_sde
    from sciddiff.core.flow import flow_matching_loss

    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(10.0, 1.0)
    with pytest.raises(ValueError, match="heun with probability_flow"):
        sample_sde(VESDE(), lambda x, t: torch.zeros_like(x), torch.zeros(2, 3), steps=3, method="heun")
    loss, _ = flow_matching_loss(lambda x, t: x, Euclidean(3), torch.zeros(4, 3), torch.ones(4, 3), 0.5)  # one float t
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        flow_matching_loss(lambda x, t: x, Euclidean(3), torch.zeros(4, 3), torch.ones(4, 3), torch.full((4,), 1.5))


def test_the_state_keeps_the_callers_dtype_whatever_the_network_computes_in():
    from sciddiff.core import sample_pf_ode, sample_reverse_sde

    grid = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    rot = SO3().prior_sample(2, None)  # float32
    double = lambda x, s: torch.zeros(x.shape[:-1], dtype=torch.float64)  # noqa: E731
    assert sample_reverse_sde(double, SO3(), rot, grid).dtype == torch.float32  # raised a dtype error before
    assert sample_pf_ode(lambda x, s: torch.zeros(2, 3, dtype=torch.float64), Euclidean(3), torch.zeros(2, 3),
                         grid).dtype == torch.float32  # was silently promoted to float64
    out = sample_ddim(lambda x, t: torch.zeros(x.shape, dtype=torch.float64), torch.zeros(2, 3),
                      DiscreteSchedule(num_train_timesteps=10), steps=4)
    assert out.dtype == torch.float32


def test_flow_rates_apply_to_a_single_space_and_bad_ones_are_refused():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    to_zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    mirror = lambda x, t: -x  # noqa: E731  (a path-dependent end point)
    single = sample_flow(mirror, Euclidean(2), x, steps=4, rates={"x": 10.0})
    assert not torch.allclose(single, sample_flow(mirror, Euclidean(2), x, steps=4))  # were ignored before
    product = sample_flow(lambda p, t: {"x": -p["x"]}, Product(x=Euclidean(2)), {"x": x}, steps=4, rates={"x": 10.0})
    assert torch.allclose(single, product["x"])
    with pytest.raises(ValueError, match="rates: 'typo'"):
        sample_flow(to_zero, Product(x=Euclidean(2)), {"x": x}, steps=4, rates={"typo": 10.0})
    with pytest.raises(ValueError, match="finite rate > 0"):
        sample_flow(to_zero, Product(x=Euclidean(2)), {"x": x}, steps=4, rates={"x": 0.0})


def test_float64_points_give_the_model_float64_noise_levels_in_every_sampler():
    from sciddiff.core import sample_pf_ode, sample_reverse_sde

    seen = []

    def model(x, s):
        seen.append(s.dtype)
        return torch.zeros_like(x)
    grid = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    for points in (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3)):
        seen.clear()
        sample_reverse_sde(model, Euclidean(3), points, grid)
        sample_pf_ode(model, Euclidean(3), points, grid)
        sample_flow(lambda x, t: model(x, t) + x, Euclidean(3), points, steps=2)
        dsm_loss(model, Euclidean(3), points, torch.full((2,), 0.5, dtype=torch.float64))  # the caller's float64
        assert set(seen) == {points.dtype}
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        sample_igso3(torch.tensor([0.5, float("nan")]), 2)


def test_a_schedule_inside_a_bf16_model_keeps_its_float64_tables():
    model = torch.nn.Module()
    model.schedule, model.net = DiscreteSchedule(), torch.nn.Linear(2, 2)
    table = model.schedule.alphas_cumprod.clone()
    model.to(torch.bfloat16)
    assert model.net.weight.dtype == torch.bfloat16 and model.schedule.alphas_cumprod.dtype == torch.float64
    assert torch.equal(model.schedule.alphas_cumprod, table)  # not rounded through bf16 (0.4% off before)


def test_extending_the_core_gets_clear_contracts():
    """What a researcher adding a space met (an S^2 plugged in): the SO(3) weight blew up where IGSO(3) is uniform,
    a (B, 1) sigma reached the model as (B, 1) in training but (B,) in sampling, a product-like class of one's own
    was refused `rates`, a grid dict with a typo was a bare KeyError, the discrete chains an AttributeError on dicts."""
    rot = SO3()
    weights = rot.score_norm_sq(torch.tensor([2.5, 3.0, 4.0]))
    assert torch.allclose(weights, weights[:1].expand(3))  # held at its value at 2.5, as the torus's at pi
    x0, gen = torch.eye(3).expand(64, 3, 3), torch.Generator().manual_seed(0)
    off = lambda x, sigma: torch.full(x.shape[:-1], 0.01)  # noqa: E731  a score 0.01 off, near-uniform kernel
    assert float(dsm_loss(off, rot, x0, torch.full((64,), 4.0), gen)[0]) < 10.0  # was 1e9

    seen = []
    dsm_loss(lambda x, sigma: seen.append(sigma.shape) or torch.zeros_like(x), Euclidean(3), torch.zeros(8, 3),
             torch.rand(8, 1) + 0.1)
    assert seen == [(8,)]  # the samplers' shape

    from sciddiff.core.spaces import Space

    class MyProduct(Space):  # a user's own product (delegation, not a Product subclass)
        def __init__(self, **parts):
            self.components, self.inner = parts, Product(**parts)

        def exp(self, x, v):
            return self.inner.exp(x, v)

        def log(self, x, y):
            return self.inner.log(x, y)

        def randn_tangent(self, x, generator=None):
            return self.inner.randn_tangent(x, generator)

    space = MyProduct(tr=Euclidean(3), rot=SO3())
    x = {"tr": torch.randn(4, 3), "rot": torch.eye(3).expand(4, 3, 3)}
    out = sample_flow(lambda x, t: x, space, x, steps=2, rates={"rot": 10.0}, langevin={"tr": 1.0})
    assert set(out) == {"tr", "rot"}

    product = Product(tr=Euclidean(3), tor=Torus(2))
    x = {"tr": torch.zeros(4, 3), "tor": torch.zeros(4, 2)}
    from sciddiff.core import sample_reverse_sde

    with pytest.raises(ValueError, match=r"one grid per component of the points \(\['tor', 'tr'\]\), got \['tors', 'tr'\]"):
        sample_reverse_sde(zero_score, product, x, {"tr": torch.tensor([1.0, 0.0]), "tors": torch.tensor([1.0, 0.0])})
    with pytest.raises(ValueError, match="per-component sigma names the components"):
        product.prior_sample(4, {"tr": 1.0})
    with pytest.raises(TypeError, match="sample_ddim samples R\\^n tensors"):
        sample_ddim(lambda x, t: x, x, DiscreteSchedule(), steps=2)


def test_integer_points_and_an_unknown_ode_method_are_refused_before_the_model_runs():
    calls = []

    def score(x, sigma):
        calls.append(1)
        return -x

    grid = torch.tensor([80.0, 0.0], dtype=torch.float64)
    start = torch.randint(-80, 80, (64, 2))  # an integer start lost its first step (rounded) before this check
    with pytest.raises(TypeError, match="floating-point"):
        sample_pf_ode(score, Euclidean(2), start, grid)
    with pytest.raises(TypeError, match="floating-point"):
        sample_reverse_sde(score, Euclidean(2), start, grid)
    with pytest.raises(TypeError, match="floating-point"):
        dsm_loss(score, Euclidean(2), start, torch.ones(64))
    with pytest.raises(ValueError, match="unknown ODE method"):  # a one-step grid used to run it as Euler
        sample_pf_ode(score, Euclidean(2), start.float(), grid, method="dpmpp")
    assert not calls


def test_min_snr_weighting_is_one_loss_on_x0_for_every_prediction_type():
    """Min-SNR-gamma caps the weight of the x0 error at gamma whatever the network predicts: a network of each type and
    its clean-sample equivalent (the same function of x_t, converted) have the same weighted loss; gamma <= 0 is refused."""
    from sciddiff.core.parameterization import to_x0

    schedule = DiscreteSchedule(name="cosine", num_train_timesteps=100)
    x0 = torch.randn(128, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = lambda x, t: torch.sin(x + 0.03 * t[:, None])  # noqa: E731
    for kind in ("epsilon", "v_prediction", "score"):
        def as_sample(x, t, kind=kind):
            alpha, sigma = schedule.alpha_sigma(t, x)
            return to_x0(net(x, t), x, alpha, sigma, kind)
        losses = [ddpm_loss(model, x0, schedule, k, generator=torch.Generator().manual_seed(1), snr_gamma=5.0)
                  for model, k in ((net, kind), (as_sample, "sample"))]
        assert torch.allclose(losses[0], losses[1], rtol=1e-4), (kind, losses)
    with pytest.raises(ValueError, match="snr_gamma must be > 0"):
        ddpm_loss(net, x0, schedule, snr_gamma=0.0)
