"""Progressive distillation of DDIM (`ddim_distillation_loss`): its target is exact where DDIM is, unbiased with
ancestral noise, and a student trained with it samples closer to the data than its teacher at the same (few) steps."""
import copy

import pytest
import torch

from sciddiff import toy
from sciddiff.core import DiscreteSchedule, ddim_distillation_loss, ddpm_loss, sample_ddim

SCHEDULE = DiscreteSchedule(name="cosine", num_train_timesteps=100)
POINT = torch.tensor([0.3, -0.5])


def setup_module():
    torch.set_num_threads(1)


def exact_eps(x, t, shift=0.0):
    """The exact epsilon of data that is the single point POINT, plus a constant error `shift`."""
    alpha, sigma = SCHEDULE.alpha_sigma(t, x)
    return (x - alpha * POINT) / sigma + shift


def test_exact_teacher_gives_zero_loss_without_noise_and_an_unbiased_target_with_it():
    grid, x0 = SCHEDULE.timesteps(40, "trailing"), POINT.expand(20000, 2)
    loss = lambda student, eta: float(ddim_distillation_loss(student, exact_eps, x0, SCHEDULE, grid, eta=eta,
                                                             generator=torch.Generator().manual_seed(0)))
    # one DDIM step of the exact denoiser of a point equals two: the target is the teacher's own output
    assert loss(exact_eps, 0.0) < 1e-10
    # eta = 1: an error +d or -d costs d^2 more than none, so the target's mean is the exact epsilon
    for eta in (0.5, 1.0):
        base = loss(exact_eps, eta)
        for d in (0.3, -0.3):
            assert loss(lambda x, t: exact_eps(x, t, d), eta) == pytest.approx(base + d**2, abs=1e-3)
    with pytest.raises(ValueError, match="even"):
        ddim_distillation_loss(exact_eps, exact_eps, x0, SCHEDULE, grid[:-1])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_distilled_student_samples_better_than_its_teacher_at_the_same_steps(eta):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    data = lambda n: toy.eight_gaussians(n, g, radius=1.0, std=0.05)
    teacher = toy.ScoreMLP("euclidean", 2, hidden=64)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(3000):
        loss = ddpm_loss(teacher, data(512), SCHEDULE, "epsilon", g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    student, steps = copy.deepcopy(teacher), 4
    opt = torch.optim.Adam(student.parameters(), lr=3e-4)
    grid = SCHEDULE.timesteps(2 * steps, "trailing")
    for _ in range(1000):
        loss = ddim_distillation_loss(student, teacher, data(512), SCHEDULE, grid, eta=eta, clip_sample=1.5,
                                      generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x_T, modes = torch.randn(4000, 2, generator=g), toy.eight_gaussian_modes() / 2

    def near_modes(model, n):  # fraction of samples within 2 data std of a mode
        x = sample_ddim(model, x_T, SCHEDULE, steps=n, eta=eta, clip_sample=1.5, timestep_spacing="trailing",
                        generator=torch.Generator().manual_seed(1))
        return float((torch.cdist(x, modes).min(-1)[0] < 0.1).float().mean())

    teacher_2n, teacher_n, student_n = near_modes(teacher, 2 * steps), near_modes(teacher, steps), near_modes(student, steps)
    assert teacher_n < teacher_2n - 0.15  # few steps blur the modes: there is a gap to close
    assert student_n > teacher_n + 0.3 * (teacher_2n - teacher_n), (teacher_n, student_n, teacher_2n)
