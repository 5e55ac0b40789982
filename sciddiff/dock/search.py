"""Pose optimisation with the scoring function: batched gradient descent over rigid + torsion degrees of freedom and
Monte Carlo basin hopping (Vina's global search, in batch, with Adam instead of BFGS).

Parameters are the `PoseSpace` ones with realign=False (the frame follows the fixed part of the ligand; no SVD
in the gradient path): t (B, 3) centroid in Angstrom, R (B, 3, 3), theta (B, m) radians. Rotation steps are
left-multiplied rotation vectors, R <- Exp(w) R, i.e. rotations about the centroid in the lab frame. Each pose
keeps its conformer index conf (B,) into the space's conformers; the search never changes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sciddiff.core import so3, torus
from sciddiff.dock.ligand import dihedral_angles, kabsch
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.scoring import ScoringFunction


@dataclass
class Poses:
    tr: torch.Tensor
    rot: torch.Tensor
    theta: torch.Tensor
    energy: torch.Tensor
    conf: torch.Tensor  # (B,) long: conformer index in the PoseSpace

    def take(self, idx: torch.Tensor) -> Poses:
        return Poses(self.tr[idx], self.rot[idx], self.theta[idx], self.energy[idx], self.conf[idx])

    @staticmethod
    def where(mask: torch.Tensor, a: Poses, b: Poses) -> Poses:
        return Poses(torch.where(mask[:, None], a.tr, b.tr), torch.where(mask[:, None, None], a.rot, b.rot),
                     torch.where(mask[:, None], a.theta, b.theta), torch.where(mask, a.energy, b.energy),
                     torch.where(mask, a.conf, b.conf))

    @staticmethod
    def cat(items: list[Poses]) -> Poses:
        return Poses(*(torch.cat([getattr(p, f) for p in items]) for f in ("tr", "rot", "theta", "energy", "conf")))


def fit_pose(space: PoseSpace, x: torch.Tensor, conf: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, R, theta) whose realign=False coordinates best match the coordinates x (B, N, 3) of conformers conf."""
    theta = dihedral_angles(x, space.dihedral) if space.n_torsions else x.new_zeros(x.shape[0], 0)
    y = space.shape(theta, realign=False, conf=conf)
    rot, _ = kabsch(y, x)
    return x.mean(-2), rot, theta


def local_opt(sf: ScoringFunction, space: PoseSpace, tr: torch.Tensor, rot: torch.Tensor, theta: torch.Tensor,
              steps: int = 50, lr: tuple[float, float, float] = (0.25, 0.06, 0.15), exact: bool = False,
              conf: torch.Tensor | None = None) -> Poses:
    """Adam on the energy with a cosine-decayed step size; returns the best pose seen per sample. conf (B,):
    conformer indices (default 0)."""
    conf = torch.zeros(tr.shape[0], dtype=torch.long) if conf is None else conf
    t = tr.clone().requires_grad_()
    w = torch.zeros_like(tr).requires_grad_()
    th = theta.clone().requires_grad_()
    opt = torch.optim.Adam([{"params": [t], "lr": lr[0]}, {"params": [w], "lr": lr[1]}, {"params": [th], "lr": lr[2]}])
    base = [g["lr"] for g in opt.param_groups]
    best_e = torch.full((tr.shape[0],), math.inf, dtype=tr.dtype)
    best = (tr.clone(), rot.clone(), theta.clone())
    for step in range(steps + 1):
        r = so3.exp_map(w) @ rot
        e = sf.energy(space.coords(t, r, th, realign=False, conf=conf), exact=exact)
        with torch.no_grad():
            better = e < best_e
            best_e = torch.where(better, e, best_e)
            best = (torch.where(better[:, None], t, best[0]), torch.where(better[:, None, None], r, best[1]),
                    torch.where(better[:, None], th, best[2]))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        e.sum().backward()
        scale = 0.5 * (1 + math.cos(math.pi * step / steps))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * (0.1 + 0.9 * scale)
        opt.step()
    return Poses(best[0].detach(), best[1].detach(), torus.wrap(best[2].detach()), best_e, conf)


def perturb(poses: Poses, space: PoseSpace, generator: torch.Generator, step: float = 2.0) -> Poses:
    """Vina's mutation: per sample, one of a random shift (|step| A), a random rotation (step / radius of
    gyration, radians) or one torsion set uniformly at random."""
    b = poses.tr.shape[0]
    n_choices = 2 + (1 if space.n_torsions else 0)
    kind = torch.randint(0, n_choices, (b,), generator=generator)
    tr, rot, theta = poses.tr.clone(), poses.rot.clone(), poses.theta.clone()
    direction = torch.randn(b, 3, generator=generator, dtype=tr.dtype)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    shift = direction * step * torch.rand(b, 1, generator=generator, dtype=tr.dtype)
    tr = torch.where((kind == 0)[:, None], tr + shift, tr)
    gyration = space.local.norm(dim=-1).pow(2).mean().sqrt().clamp_min(1.0)
    rv = direction * (step / gyration) * torch.rand(b, 1, generator=generator, dtype=tr.dtype)
    rot = torch.where((kind == 1)[:, None, None], so3.exp_map(rv) @ rot, rot)
    if space.n_torsions:
        k = torch.randint(0, space.n_torsions, (b,), generator=generator)
        new = (torch.rand(b, generator=generator, dtype=tr.dtype) * 2 - 1) * math.pi
        onehot = torch.nn.functional.one_hot(k, space.n_torsions).bool() & (kind == 2)[:, None]
        theta = torch.where(onehot, new[:, None], theta)
    return Poses(tr, rot, theta, poses.energy, poses.conf)


def basin_hopping(sf: ScoringFunction, space: PoseSpace, start: Poses, rounds: int, steps: int,
                  generator: torch.Generator, temperature: float = 1.2, progress=iter) -> Poses:
    """Monte Carlo over local minima, all chains at once; returns each chain's best minimum."""
    cur = start
    best = start
    for _ in progress(range(rounds)):
        prop = perturb(cur, space, generator)
        prop = local_opt(sf, space, prop.tr, prop.rot, prop.theta, steps=steps, conf=prop.conf)
        u = torch.rand(prop.energy.shape, generator=generator, dtype=prop.energy.dtype)
        accept = u < torch.exp(-(prop.energy - cur.energy).clamp(min=0) / temperature)
        cur = Poses.where(accept, prop, cur)
        best = Poses.where(cur.energy < best.energy, cur, best)
    return best
