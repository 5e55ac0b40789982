"""EDM's preconditioning, loss and stochastic samplers (churn, Euler ancestral): exact Gaussian denoisers, IGSO(3) data,
a product space, and a tiny network that learns the 8-Gaussian ring. (Against k-diffusion 0.1.1's samplers and Denoiser
they agree to 1e-13, docs/core.md.)"""
import pytest
import torch

from sciddiff import toy
from sciddiff.core import (SO3, EDMPrecond, Euclidean, Product, edm_loss, karras_sigmas, sample_pf_ode,
                           score_from_denoiser, so3)

SD = 0.7


def setup_module():
    torch.set_num_threads(1)


def test_a_zero_network_is_the_exact_denoiser_of_gaussian_data_and_its_loss_is_one():
    zero = EDMPrecond(lambda x, c_noise: torch.zeros_like(x), sigma_data=SD)
    x, sigma = torch.randn(16, 3, dtype=torch.float64), torch.rand(16, dtype=torch.float64) * 5 + 0.01
    assert torch.allclose(zero(x, sigma), x * (SD**2 / (sigma**2 + SD**2))[:, None])  # E[x0 | x] for x0 ~ N(0, SD^2)
    g = torch.Generator().manual_seed(0)
    losses = torch.stack([edm_loss(zero, torch.randn(4096, 3, generator=g, dtype=torch.float64) * SD, sigma_data=SD,
                                   generator=g) for _ in range(10)])
    assert abs(float(losses.mean()) - 1) < 0.02  # lambda(sigma) = 1 / the posterior variance, at every sigma
    half = EDMPrecond(lambda x, c_noise: torch.zeros_like(x), sigma_data=SD / 2)  # a wrong sigma_data: not the optimum
    assert float(edm_loss(half, torch.randn(4096, 3, generator=g, dtype=torch.float64) * SD, sigma_data=SD,
                          generator=g)) > 1.1


def test_the_preconditioning_is_edms_table_1():
    x = torch.randn(16, 3, dtype=torch.float64)
    sigma = torch.rand(16, dtype=torch.float64) * 5 + 0.01
    net = lambda x_in, c_noise: x_in**2 + c_noise[:, None]  # noqa: E731 (reads c_in x and c_noise)
    norm = (sigma**2 + SD**2).sqrt()[:, None]
    c_skip, c_out, c_in, c_noise = SD**2 / norm**2, sigma[:, None] * SD / norm, 1 / norm, sigma.log()[:, None] / 4
    assert torch.allclose(EDMPrecond(net, sigma_data=SD)(x, sigma), c_skip * x + c_out * ((c_in * x) ** 2 + c_noise),
                          rtol=1e-12, atol=1e-12)


def test_one_churn_step_adds_each_components_own_noise_and_none_outside_the_range():
    """A zero score leaves exactly the churn noise: each component's own scale (capped gamma = sqrt(2) - 1, so the added
    scale sqrt(sigma_hat^2 - sigma^2) equals sigma), IGSO(3) on SO(3), nothing where sigma is above s_tmax."""
    n = 4000
    space = Product(tr=Euclidean(3), rot=SO3(), far=Euclidean(3))
    x = {"tr": torch.zeros(n, 3, dtype=torch.float64), "rot": torch.eye(3, dtype=torch.float64).expand(n, 3, 3),
         "far": torch.zeros(n, 3, dtype=torch.float64)}
    zero = lambda x, s: {k: torch.zeros(v.shape[:-1] if k == "rot" else v.shape, dtype=v.dtype) for k, v in x.items()}  # noqa: E731
    grids = {"tr": torch.tensor([0.3, 0.1], dtype=torch.float64), "rot": torch.tensor([0.5, 0.1], dtype=torch.float64),
             "far": torch.tensor([3.0, 0.1], dtype=torch.float64)}
    out = sample_pf_ode(zero, space, x, grids, s_churn=100, s_tmax=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["far"], x["far"])
    assert abs(float(out["tr"].std()) / 0.3 - 1) < 0.03
    angle = so3.log_map(out["rot"]).norm(dim=-1)
    ref = so3.sample_igso3(torch.full((n,), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    assert abs(float(angle.mean() / ref.norm(dim=-1).mean()) - 1) < 0.03


@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_heun_with_churn_samples_gaussian_data(churn):
    score = score_from_denoiser(EDMPrecond(lambda x, c_noise: torch.zeros_like(x), sigma_data=SD))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 2, generator=g, dtype=torch.float64) * 80
    out = sample_pf_ode(score, Euclidean(2), x, karras_sigmas(160, 0.002, 80.0), s_churn=churn, s_tmin=0.05, s_tmax=50,
                        generator=g)
    # the discretisation's own error in the std: churn 0 +5.6% at 18 steps, +1% at 40, +0.1% at 160; churn 40 +3.4% at
    # 40 steps, +2% at 80, +0.3-0.6% at 160
    assert out.mean(0).abs().max() < 0.02 and (out.std(0) / SD - 1).abs().max() < 0.02


def test_churn_on_a_product_lands_on_the_data():
    """Data: a point (t0, R0) on R^3 x SO(3); exact scores of the kernels around it; per-component grids or one shared
    grid. With churn the sampler still lands on the point, and the churn noise (s_noise) moves the result; so does
    Euler ancestral and DPM-Solver++(2M) SDE with each component's own grid."""
    t0, r0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), so3.exp_map(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    space = Product(tr=Euclidean(3), rot=SO3())

    def score(x, sigma):
        v = so3.log_map(r0.transpose(-1, -2) @ x["rot"])  # body-frame rotation from R0 to x
        w = v.norm(dim=-1, keepdim=True)
        rot = so3.igso3_score(w, sigma["rot"][:, None]) * v / w.clamp_min(1e-12)
        return {"tr": -(x["tr"] - t0) / sigma["tr"][:, None] ** 2, "rot": rot}

    per_component = {"tr": karras_sigmas(20, 0.01, 10.0)[:-1], "rot": karras_sigmas(20, 0.02, 1.5)[:-1]}
    shared = karras_sigmas(20, 0.02, 3.0)[:-1]  # one grid for both components (the score then gets one sigma)
    runs = []
    for sigmas, how in ((per_component, {"s_churn": 20}), (per_component, {"s_churn": 20, "s_noise": 1.01}),
                        (shared, {"s_churn": 20}), (per_component, {"method": "euler_ancestral"}),
                        (per_component, {"method": "dpmpp_2m", "eta": 1.0})):
        g = torch.Generator().manual_seed(2)
        x = space.prior_sample(200, {"tr": 10.0, "rot": None}, g, dtype=torch.float64)
        score_of = score if isinstance(sigmas, dict) else lambda x, s: score(x, {"tr": s, "rot": s})
        runs.append(sample_pf_ode(score_of, space, x, sigmas, generator=g, **how))
    for out, last in zip(runs, (0.01, 0.01, 0.02, 0.01, 0.01)):  # the grids end at sigma_min: the kernel's own spread is left
        assert (out["tr"] - t0).norm(dim=-1).max() < 5 * last
        assert so3.log_map(r0.transpose(-1, -2) @ out["rot"]).norm(dim=-1).max() < 0.15
    assert not torch.equal(runs[0]["tr"], runs[1]["tr"])


def test_churn_arguments_are_checked():
    with pytest.raises(ValueError, match="s_churn"):
        sample_pf_ode(lambda x, s: -x, Euclidean(1), torch.zeros(2, 1), karras_sigmas(4, 0.1, 1.0), s_churn=-1)
    with pytest.raises(ValueError, match="not (dpmpp_2m|euler_ancestral)"):
        sample_pf_ode(lambda x, s: -x, Euclidean(1), torch.zeros(2, 1), karras_sigmas(4, 0.1, 1.0), s_churn=1,
                      method="euler_ancestral")
    with pytest.raises(ValueError, match="eta is for dpmpp_2m and euler_ancestral"):
        sample_pf_ode(lambda x, s: -x, Euclidean(1), torch.zeros(2, 1), karras_sigmas(4, 0.1, 1.0), eta=0.5)
    with pytest.raises(ValueError, match="eta >= 0"):
        sample_pf_ode(lambda x, s: -x, Euclidean(1), torch.zeros(2, 1), karras_sigmas(4, 0.1, 1.0), eta=-1,
                      method="euler_ancestral")


def test_euler_ancestral_and_dpmpp_2m_sde_sample_gaussian_data_and_without_noise_are_their_odes():
    score = score_from_denoiser(EDMPrecond(lambda x, c_noise: torch.zeros_like(x), sigma_data=SD))
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    error = []
    for n in (80, 320):  # first order: the std's error -6.5% at 80 steps, -1.7% at 320 (as k-diffusion's, to 1e-14)
        out = sample_pf_ode(score, Euclidean(2), x, karras_sigmas(n, 0.002, 80.0), method="euler_ancestral",
                            generator=torch.Generator().manual_seed(2))
        assert out.mean(0).abs().max() < 0.02
        error.append(float((out.std(0) / SD - 1).abs().max()))
    assert error[1] < 0.03 and error[0] > 2 * error[1]
    sigmas = karras_sigmas(20, 0.002, 80.0)
    assert torch.equal(sample_pf_ode(score, Euclidean(2), x[:64], sigmas, method="euler_ancestral", eta=0.0),
                       sample_pf_ode(score, Euclidean(2), x[:64], sigmas, method="euler"))
    # DPM-Solver++(2M) SDE: the std's error +2-3% at 40 steps, +1% at 80 (as k-diffusion's dpmpp_2m_sde, to 1e-14)
    out = sample_pf_ode(score, Euclidean(2), x, karras_sigmas(80, 0.002, 80.0), method="dpmpp_2m", eta=1.0,
                        generator=torch.Generator().manual_seed(2))
    assert out.mean(0).abs().max() < 0.02 and (out.std(0) / SD - 1).abs().max() < 0.025
    assert torch.equal(sample_pf_ode(score, Euclidean(2), x[:64], sigmas, method="dpmpp_2m", eta=0.0),
                       sample_pf_ode(score, Euclidean(2), x[:64], sigmas, method="dpmpp_2m"))


def test_euler_ancestral_and_dpmpp_2m_sde_on_so3_sample_igso3_data():
    """Data IGSO(3)(R0, 0.4): its marginal at noise sigma is IGSO(3)(R0, sqrt(0.4^2 + sigma^2)) (Brownian increments
    add variances), whose score is exact here. From the uniform prior the ancestral chain (IGSO(3) noise, geodesic steps)
    must end on the data's angle distribution, and without noise (eta 0: the PF-ODE's Euler) as well; so must
    DPM-Solver++(2M) SDE in a sixth of the steps."""
    sd, n = 0.4, 4000
    r0 = so3.exp_map(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))

    def score(x, sigma):
        v = so3.log_map(r0.transpose(-1, -2) @ x)  # body-frame rotation from R0 to x
        w = v.norm(dim=-1, keepdim=True)
        return so3.igso3_score(w, (sd**2 + sigma[:, None] ** 2).sqrt()) * v / w.clamp_min(1e-12)

    ref = so3.sample_igso3(torch.full((n,), sd, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    x = SO3().prior_sample(n, None, torch.Generator().manual_seed(1), dtype=torch.float64)
    # Euler ancestral is first order: the mean angle -3% at 60 steps, -1.7% at 240 (eta 1); DPM-Solver++(2M) SDE +1.7%
    # at 20 steps, 0.0% at 40
    for method, eta, steps in (("euler_ancestral", 1.0, 240), ("euler_ancestral", 0.0, 240), ("dpmpp_2m", 1.0, 40)):
        out = sample_pf_ode(score, SO3(), x, karras_sigmas(steps, 0.01, 4.0), method=method, eta=eta,
                            generator=torch.Generator().manual_seed(2))
        angle = so3.log_map(r0.transpose(-1, -2) @ out).norm(dim=-1)
        assert abs(float(angle.mean() / ref.norm(dim=-1).mean()) - 1) < 0.03, (method, eta)
        assert abs(float(angle.std() / ref.norm(dim=-1).std()) - 1) < 0.06, (method, eta)


def test_edm_learns_the_eight_gaussians_and_heun_with_churn_samples_them():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    denoiser = EDMPrecond(toy.EDMNet(2), sigma_data=SD)
    opt = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    for _ in range(2500):
        loss = edm_loss(denoiser, toy.eight_gaussians(512, g) / 2, sigma_data=SD, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    modes = toy.eight_gaussian_modes() / 2
    with torch.no_grad():
        for churn in (0.0, 10.0):
            x = sample_pf_ode(score_from_denoiser(denoiser), Euclidean(2), torch.randn(2000, 2, generator=g) * 40,
                              karras_sigmas(24, 0.002, 40.0), s_churn=churn, generator=g)
            d, nearest = torch.cdist(x, modes).min(-1)
            assert (d < 0.1).float().mean() >= 0.8, churn  # within 2 std (0.05) of a mode
            counts = torch.bincount(nearest, minlength=8).float() / len(x)
            assert counts.min() > 0.08, counts  # every mode (uniform would be 0.125)


def test_wrong_shapes_and_sigma_data_are_refused_and_edm_loss_takes_the_denoisers_sigma_data():
    x, sigma = torch.randn(8, 2), torch.ones(8)
    one_column = lambda x, c_noise: torch.zeros(x.shape[0], 1)  # noqa: E731 (broadcast to (8, 2) before the check)
    with pytest.raises(ValueError, match="sample shape is"):
        EDMPrecond(one_column)(x, sigma)
    with pytest.raises(ValueError, match="sample shape is"):
        score_from_denoiser(lambda x, s: x[:, :1])(x, sigma)
    with pytest.raises(ValueError, match="one noise level per sample"):
        EDMPrecond(lambda x, c: x)(x, torch.ones(8, 2))
    for sd in (0.0, -0.5):
        with pytest.raises(ValueError, match="sigma_data"):
            EDMPrecond(lambda x, c: x, sigma_data=sd)
    zero = EDMPrecond(lambda x, c_noise: torch.zeros_like(x), sigma_data=1.0)
    x0 = torch.randn(256, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma_data"):  # a plain callable has none to take
        edm_loss(lambda x, s: zero(x, s), x0)
    own = edm_loss(zero, x0, generator=torch.Generator().manual_seed(0))
    assert own.dtype == torch.float64
    assert own == edm_loss(zero, x0, sigma_data=1.0, generator=torch.Generator().manual_seed(0))
    assert own != edm_loss(zero, x0, sigma_data=0.5, generator=torch.Generator().manual_seed(0))


def test_score_from_denoiser_keeps_fp16_points_finite_at_large_sigma():
    exact = lambda x, s: x * (SD**2 / (s.to(x.dtype) ** 2 + SD**2))[:, None]  # noqa: E731
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4)) * 400
    sigma = torch.full((64,), 400.0)
    ref = score_from_denoiser(exact)(x.double(), sigma.double())
    half = score_from_denoiser(exact)(x.half(), sigma)  # sigma^2 = 1.6e5 overflows fp16 (max 65504)
    assert half.dtype == torch.float16 and torch.allclose(half.double(), ref, rtol=1e-2, atol=1e-5)
    near = torch.full((1, 1), 1 + 1e-9, dtype=torch.float64)  # float64 points with a float32 sigma stay float64
    assert float(score_from_denoiser(lambda x, s: torch.ones_like(x))(near, torch.ones(1))) == pytest.approx(-1e-9, rel=1e-6)
