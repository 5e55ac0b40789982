"""Toy targets and tiny score networks on R^2, SO(3) and the torus: shared by the core's learning tests, the
``examples/core_manifolds.py`` and ``examples/core_edm.py`` demos and ``python -m sciddiff.bench core``.

Each target draws fresh samples on demand, so a trained model is judged against samples it never saw, with a kernel MMD on the
space's own geodesic distance (``mmd``). Angles in radians.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .core import so3, torus
from .core.schedules import geometric_sigma
from .nn.embeddings import sinusoidal_embedding

__all__ = ["eight_gaussians", "so3_mixture", "torus_mixture", "mmd", "geodesic_so3", "geodesic_torus", "ScoreMLP",
           "EDMNet", "train_score_model"]


def eight_gaussians(n: int, generator: torch.Generator | None = None, radius: float = 2.0, std: float = 0.1) -> Tensor:
    """The classic 8-Gaussian ring in R^2; returns (n, 2)."""
    k = torch.randint(0, 8, (n,), generator=generator)
    centres = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], -1)
    return centres + std * torch.randn(n, 2, generator=generator)


def eight_gaussian_modes(radius: float = 2.0) -> Tensor:
    k = torch.arange(8)
    return radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], -1)


def so3_modes() -> Tensor:
    """Four well-separated rotations (about x, y, z by 2pi/3, and the identity)."""
    v = torch.tensor([[0.0, 0, 0], [2.1, 0, 0], [0, 2.1, 0], [0, 0, 2.1]])
    return so3.exp_map(v)


def so3_mixture(n: int, generator: torch.Generator | None = None, sigma: float = 0.15) -> Tensor:
    """IGSO(3)-concentrated mixture around ``so3_modes()``; returns (n, 3, 3)."""
    modes = so3_modes()
    k = torch.randint(0, len(modes), (n,), generator=generator)
    return modes[k] @ so3.exp_map(so3.sample_igso3(sigma, n, generator=generator))


def torus_modes() -> Tensor:
    return torch.tensor([[-2.0, -2.0], [-2.0, 1.0], [1.0, 2.5], [2.0, -1.0]])


def torus_mixture(n: int, generator: torch.Generator | None = None, sigma: float = 0.25) -> Tensor:
    """Wrapped-normal mixture on T^2 (one mode sits across the +-pi seam); returns (n, 2)."""
    modes = torus_modes()
    k = torch.randint(0, len(modes), (n,), generator=generator)
    return torus.wrap(modes[k] + sigma * torch.randn(n, 2, generator=generator))


def geodesic_so3(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise rotation angle between (n,3,3) and (m,3,3): (n, m)."""
    return so3.log_map(a.transpose(-1, -2)[:, None] @ b[None]).norm(dim=-1)


def geodesic_torus(a: Tensor, b: Tensor) -> Tensor:
    return torus.wrap(a[:, None] - b[None]).norm(dim=-1)


def mmd(x: Tensor, y: Tensor, dist, bandwidth: float) -> float:
    """Squared MMD with the kernel exp(-d^2 / 2h^2) on the given distance (biased V-statistic)."""
    k = lambda a, b: torch.exp(-dist(a, b) ** 2 / (2 * bandwidth**2)).mean()  # noqa: E731
    return float(k(x, x) + k(y, y) - 2 * k(x, y))


class ScoreMLP(nn.Module):
    """A small MLP score network for the toy spaces.

    ``kind`` chooses the input features and output scaling: "so3" reads the rotation matrix (9) and returns a body-frame rotation
    vector scaled by sqrt(E|s|^2 / 3); "torus" reads (cos, sin) of each angle and scales by sqrt(E|s|^2); "euclidean" predicts
    epsilon of the discrete chain from (x, t)."""

    def __init__(self, kind: str, dim: int, hidden: int = 128, emb: int = 32):
        super().__init__()
        self.kind, self.emb = kind, emb
        in_dim = {"so3": 9, "torus": 2 * dim, "euclidean": dim}[kind] + emb
        out_dim = 3 if kind == "so3" else dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor, noise_level: Tensor) -> Tensor:
        if self.kind == "euclidean":  # noise_level is the integer timestep of the discrete chain
            return self.net(torch.cat([x, sinusoidal_embedding(noise_level, self.emb)], -1))
        temb = sinusoidal_embedding(noise_level.log() * 100, self.emb)
        if self.kind == "so3":
            out = self.net(torch.cat([x.reshape(-1, 9), temb], -1))
            return out * (so3.igso3_score_norm(noise_level) / 3).sqrt().to(out.dtype)[:, None]
        out = self.net(torch.cat([torch.cos(x), torch.sin(x), temb], -1))
        return out * torus.wrapped_normal_score_norm(noise_level).sqrt().to(out.dtype)[:, None]


class EDMNet(nn.Module):
    """The raw network F(x_in, c_noise) that ``core.EDMPrecond`` wraps into a denoiser on R^dim: an MLP of the scaled point
    and c_noise = ln(sigma) / 4 (already O(1), so no embedding)."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return self.net(torch.cat([x, c_noise[:, None].to(x.dtype)], -1))


def train_score_model(model: nn.Module, space, sample_target, sigma_min: float, sigma_max: float, steps: int,
                      batch: int = 512, lr: float = 3e-3, generator: torch.Generator | None = None,
                      progress=iter) -> list[float]:
    """VE denoising score matching with log-uniform sigma in [sigma_min, sigma_max]; returns the loss curve."""
    from .core.losses import dsm_loss  # local: keeps this module's import light for the CLI

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in progress(range(steps)):
        x0 = sample_target(batch, generator)
        sigma = geometric_sigma(torch.rand(batch, generator=generator), sigma_min, sigma_max).float()
        loss, _ = dsm_loss(model, space, x0, sigma, generator)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses
