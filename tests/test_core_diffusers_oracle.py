"""sciddiff's discrete schedules and samplers against diffusers, used here only as a numerical oracle."""
import math

import pytest
import torch

from sciddiff.core import DiscreteSchedule, betas, ddpm_loss, sample_ddim, sample_ddpm, sample_dpmpp_2m

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name, dname", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                         ("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")])
@pytest.mark.parametrize("T", [100, 1000])
def test_betas_equal_diffusers(name, dname, T):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=dname).betas.double()
    assert torch.allclose(betas(name, T), ref, atol=1e-6, rtol=0)


def assert_close(ours, ref):
    """<= 1e-5 relative to max(1, |x|): diffusers steps in float32, we keep the schedule in float64."""
    assert ((ours - ref).abs() / ref.abs().clamp_min(1.0)).max() < 1e-5


class FixedModel:
    """Returns a fixed pseudo-random function of (x, t) so both implementations see identical model outputs."""

    def __call__(self, x, t, **_):
        return torch.tanh(0.3 * x + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))) * 0.9


def _diffusers_loop(scheduler, model, x, steps, generator=None, first_step=0):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps[first_step:]:
        out = model(x, torch.full((x.shape[0],), int(t)))
        kw = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out, t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("T", [100, 1000, 37])
def test_timestep_grids_are_diffusers_own_for_every_step_count(T):
    """Trailing and linspace grids at every step count, .5 ties included (T = 100: trailing with 24 steps holds 86,
    where exact arithmetic rounds 87.5 to 88; linspace with 46 steps 49, where torch's linspace gives 50). Where
    diffusers' trailing grid has one entry too many (np.arange's float end), its first `steps` are compared."""
    sched = DiscreteSchedule(name="linear", num_train_timesteps=T)
    ddim = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    for steps in range(1, T):
        ddim.set_timesteps(steps)
        dpm.set_timesteps(steps)
        assert sched.timesteps(steps, "trailing") == ddim.timesteps.tolist()[:steps], steps
        assert sched.linspace_timesteps(steps) == dpm.timesteps.tolist(), steps


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("spacing, steps", [("leading", 10), ("leading", 7), ("trailing", 4), ("trailing", 20)])
def test_ddim_matches_diffusers(prediction_type, clip, spacing, steps):
    """Where diffusers' DDIMScheduler steps along its own grid: leading spacing, or trailing with steps dividing T
    (otherwise it steps t -> t - T // steps off the grid: `test_ddim_steps_along_its_grid_to_clean_data`)."""
    T = 100
    ref_sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                        prediction_type=prediction_type, clip_sample=clip is not None,
                                        clip_sample_range=clip or 1.0, timestep_spacing=spacing)
    x = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(0))
    ref = _diffusers_loop(ref_sched, FixedModel(), x.clone(), steps)
    ours = sample_ddim(FixedModel(), x.clone(), DiscreteSchedule(name="cosine", num_train_timesteps=T), steps=steps,
                       prediction_type=prediction_type, clip_sample=clip, timestep_spacing=spacing)
    assert_close(ours, ref)


def test_ddim_from_an_intermediate_step_matches_diffusers_img2img():
    """SDEdit / img2img: a guess noised to the grid's step k, then the remaining steps (diffusers' img2img loop)."""
    T, steps, k = 100, 20, 8
    ref_sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                        timestep_spacing="trailing")
    sched = DiscreteSchedule(name="cosine", num_train_timesteps=T)
    g = torch.Generator().manual_seed(3)
    guess, noise = torch.randn(4, 16, 2, generator=g), torch.randn(4, 16, 2, generator=g)
    t_k = sched.timesteps(steps, "trailing")[k]
    x = sched.add_noise(guess, noise, torch.full((4,), t_k)).float()
    ref_sched.set_timesteps(steps)
    assert int(ref_sched.timesteps[k]) == t_k
    ref = _diffusers_loop(ref_sched, FixedModel(), x.clone(), steps, first_step=k)
    ours = sample_ddim(FixedModel(), x.clone(), sched, steps=steps, timestep_spacing="trailing", first_step=k)
    assert_close(ours, ref)
    full = sample_ddim(FixedModel(), x.clone(), sched, steps=steps, timestep_spacing="trailing")
    assert (full - ours).abs().max() > 0.1  # the same x taken as pure noise at t = 99 ends elsewhere


@pytest.mark.parametrize("steps", [10, 14, 28])
@pytest.mark.parametrize("eta", [0.0, 1.0, 3.0, math.inf])
def test_ddim_steps_along_its_grid_to_clean_data(steps, eta):
    """The last step lands on clean data: a denoiser that knows the one data point predicts it from any x, so DDIM
    must return it exactly. diffusers' t -> t - T // steps does not for trailing grids whose steps do not divide T:
    at 28 of 100 its last step ends at t = 0 and keeps noise of std sqrt(1 - alpha-bar_0) = 0.025 (~6 px on
    PushT's normalized actions). Intermediate steps now also move to the noise level the next step is evaluated at
    (`samplers._steps`)."""
    sched = DiscreteSchedule(name="cosine", num_train_timesteps=100)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1, 16, 2, generator=g, dtype=torch.float64)
    abar = sched.alphas_cumprod

    def oracle(x, t):  # the exact epsilon of x_t when the data are `data`
        a = abar[t].view(-1, 1, 1)
        return (x - a.sqrt() * data) / (1 - a).sqrt()

    x_T = torch.randn(64, 16, 2, generator=g, dtype=torch.float64)
    out = sample_ddim(oracle, x_T, sched, steps=steps, eta=eta, timestep_spacing="trailing", generator=g)
    assert (out - data).abs().max() < 1e-9


def test_ddim_noise_beyond_the_posterior_up_to_re_noising():
    """eta <= 1 is DDIM's family as before (its posterior noise at 1); larger eta adds more, capped where the eps
    direction vanishes: eta = inf is x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) z at every step."""
    sched = DiscreteSchedule(name="cosine", num_train_timesteps=100)
    x = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = lambda x, t: 0.3 * x + 0.1  # any epsilon model
    run = lambda eta: sample_ddim(model, x.clone(), sched, steps=10, eta=eta, timestep_spacing="trailing",
                                  generator=torch.Generator().manual_seed(5))
    abar = sched.alphas_cumprod.tolist()
    grid = list(sched.timesteps(10, "trailing")) + [-1]
    g, y = torch.Generator().manual_seed(5), x.clone()
    for t, t_prev in zip(grid[:-1], grid[1:]):
        a_t, a_prev = abar[t], abar[t_prev] if t_prev >= 0 else 1.0
        x0 = (y - math.sqrt(1 - a_t) * model(y, t)) / math.sqrt(a_t)
        y = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * torch.randn(y.shape, generator=g, dtype=y.dtype)
    assert_close(run(math.inf), y)
    assert_close(run(1e6), y)  # every step is capped
    # the posterior's noise is not re-noising, and a little more than it changes the samples (on a 10-step grid
    # eta = 1.5 is already capped at every step: the posterior noise of coarse steps is nearly all of x_prev's)
    assert (run(1.0) - y).abs().max() > 1e-3 and (run(1.0) - run(1.05)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="eta must be >= 0"):
        run(-0.5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddpm_matches_diffusers(prediction_type):
    T = 50
    ref_sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                        prediction_type=prediction_type, clip_sample=True)
    x = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(1))
    ref = _diffusers_loop(ref_sched, FixedModel(), x.clone(), T, generator=torch.Generator().manual_seed(7))
    ours = sample_ddpm(FixedModel(), x.clone(), DiscreteSchedule(name="cosine", num_train_timesteps=T),
                       prediction_type=prediction_type, clip_sample=1.0, generator=torch.Generator().manual_seed(7))
    assert_close(ours, ref)


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_dpmpp_2m_matches_diffusers(steps, prediction_type):
    T = 1000
    ref_sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="scaled_linear",
                                                      beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type,
                                                      algorithm_type="dpmsolver++", solver_order=2)
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    ref = _diffusers_loop(ref_sched, FixedModel(), x.clone(), steps)
    ours = sample_dpmpp_2m(FixedModel(), x.clone(), DiscreteSchedule(name="scaled_linear", num_train_timesteps=T,
                                                                      beta_start=0.00085, beta_end=0.012),
                           steps=steps, prediction_type=prediction_type)
    assert_close(ours, ref)


@pytest.mark.parametrize("steps", [5, 14])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_sde_dpmpp_2m_matches_diffusers(steps, prediction_type):
    """eta = 1 is diffusers' "sde-dpmsolver++": the same generator gives the same noise, step for step."""
    T = 100
    ref_sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                                      prediction_type=prediction_type, algorithm_type="sde-dpmsolver++",
                                                      solver_order=2, final_sigmas_type="zero")
    x = torch.randn(3, 16, 2, generator=torch.Generator().manual_seed(3))
    ref = _diffusers_loop(ref_sched, FixedModel(), x.clone(), steps, generator=torch.Generator().manual_seed(11))
    ours = sample_dpmpp_2m(FixedModel(), x.clone(), DiscreteSchedule(name="cosine", num_train_timesteps=T), steps=steps,
                           eta=1.0, prediction_type=prediction_type, generator=torch.Generator().manual_seed(11))
    assert_close(ours, ref)
    ode = sample_dpmpp_2m(FixedModel(), x.clone(), DiscreteSchedule(name="cosine", num_train_timesteps=T), steps=steps,
                          prediction_type=prediction_type)
    assert (ours - ode).abs().max() > 1e-2  # the noise is really there


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_gamma_loss_is_diffusers_training_recipe(prediction_type):
    """ddpm_loss(snr_gamma=5) = diffusers' training scripts (train_text_to_image --snr_gamma 5): compute_snr, the weight
    min(SNR, gamma) divided by SNR (epsilon) or SNR + 1 (v), per-sample MSE times it, then the mean."""
    from diffusers.training_utils import compute_snr

    ours = DiscreteSchedule(name="cosine", num_train_timesteps=100)
    ref = diffusers.DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    x0 = torch.randn(256, 2, 8, generator=torch.Generator().manual_seed(0))
    loss = ddpm_loss(FixedModel(), x0, ours, prediction_type, generator=torch.Generator().manual_seed(1), snr_gamma=5.0)
    g = torch.Generator().manual_seed(1)  # ddpm_loss's draws, in its order: t, then the noise
    t = torch.randint(0, 100, (256,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    noisy = ref.add_noise(x0, eps, t)
    target = {"epsilon": eps, "v_prediction": ref.get_velocity(x0, eps, t), "sample": x0}[prediction_type]
    snr = compute_snr(ref, t)
    weight = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    weight = weight / snr if prediction_type == "epsilon" else weight / (snr + 1) if prediction_type == "v_prediction" else weight
    expected = (torch.nn.functional.mse_loss(FixedModel()(noisy, t), target, reduction="none").mean(dim=[1, 2]) * weight).mean()
    assert abs(loss.item() - expected.item()) <= 1e-5 * expected.item(), (loss.item(), expected.item())
    unweighted = ddpm_loss(FixedModel(), x0, ours, prediction_type, generator=torch.Generator().manual_seed(1))
    assert abs(unweighted.item() - loss.item()) > 1e-3 * unweighted.item()  # the weighting changes the loss
