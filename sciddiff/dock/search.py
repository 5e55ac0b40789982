"""Pose optimisation with the scoring function: batched gradient descent over rigid + torsion degrees of freedom and
Monte Carlo basin hopping (Vina's global search, in batch, with Adam instead of BFGS).

Poses go in and out as `PoseSpace` parameters with realign=False (the frame follows the fixed part of the ligand):
t (B, 3) centroid in Angstrom, R (B, 3, 3), theta (B, m) radians. Inside `local_opt` the state is the coordinates;
each step moves them by a shift, a rotation about the centroid (lab frame, R <- Exp(w) R) and torsion increments,
with gradients from the scoring function's analytic atom gradient (no autograd), and the best coordinates are fitted
back to parameters. Each pose keeps its conformer index conf (B,) into the space's conformers; the search never
changes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sciddiff.core import so3, torus
from sciddiff.dock.ligand import apply_torsion_deltas, bond_axes, dihedral_angles, kabsch
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


POLISH_STEP_SIZES = (0.05, 0.02, 0.05)  # local_opt's step sizes (shift A, rotation and torsion radians) near a minimum


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
    conformer indices (default 0).

    Each step moves the current coordinates by a shift (A), a rotation vector about the centroid (radians, lab frame)
    and torsion increments (radians), with step sizes lr = (shift, rotation, torsion); the gradient with respect to
    these moves comes from the analytic atom gradient (`pose_gradient`), as in Vina, not from autograd."""
    conf = torch.zeros(tr.shape[0], dtype=torch.long) if conf is None else conf
    x = space.coords(tr, rot, theta, realign=False, conf=conf)
    rates = torch.tensor([lr[0]] * 3 + [lr[1]] * 3 + [lr[2]] * space.n_torsions, dtype=x.dtype)
    m1, m2 = x.new_zeros(x.shape[0], len(rates)), x.new_zeros(x.shape[0], len(rates))
    beta1, beta2 = 0.9, 0.999  # Adam's defaults
    best_e, best_x = torch.full((x.shape[0],), math.inf, dtype=x.dtype), x
    for step in range(steps + 1):
        e, grad_x = sf.energy_and_gradient(x, exact=exact)
        better = e < best_e
        best_e, best_x = torch.where(better, e, best_e), torch.where(better[:, None, None], x, best_x)
        if step == steps:
            break
        g = pose_gradient(x, grad_x, space)
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta2 * m2 + (1 - beta2) * g * g
        m1_hat, m2_hat = m1 / (1 - beta1 ** (step + 1)), m2 / (1 - beta2 ** (step + 1))
        scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = move(x, -scale * rates * m1_hat / (m2_hat.sqrt() + 1e-8), space)
    tr, rot, theta = fit_pose(space, best_x, conf)
    return Poses(tr, rot, torus.wrap(theta), best_e, conf)


def pose_gradient(x: torch.Tensor, grad_x: torch.Tensor, space: PoseSpace) -> torch.Tensor:
    """Gradient (B, 6 + m) of the energy with respect to the moves of `move` at zero, from its gradient grad_x
    (B, N, 3) with respect to the coordinates x (B, N, 3): total force, torque about the centroid, and per rotatable
    bond the torque of its moving side about the bond axis, less that of the recentring shift."""
    force = grad_x.sum(1)
    arm = x - x.mean(1, keepdim=True)
    parts = [force, torch.linalg.cross(arm, grad_x, dim=-1).sum(1)]
    if space.n_torsions:
        mask = space.mask.to(x.dtype)  # (m, N)
        pivot, axis = bond_axes(x, space.bonds)  # (B, m, 3) each
        torque = mask @ torch.linalg.cross(x, grad_x, dim=-1) - torch.linalg.cross(pivot, mask @ grad_x, dim=-1)
        shift = (mask @ x - mask.sum(1)[:, None] * pivot) / x.shape[1]  # mean displacement direction of the recentring
        parts.append((axis * (torque - torch.linalg.cross(shift, force[:, None], dim=-1))).sum(-1))
    return torch.cat(parts, -1)


def move(x: torch.Tensor, step: torch.Tensor, space: PoseSpace) -> torch.Tensor:
    """Coordinates x (B, N, 3) after torsion increments step[:, 6:] (the centroid kept), a rotation by the vector
    step[:, 3:6] about the centroid and a shift step[:, :3]."""
    center = x.mean(1, keepdim=True)
    if space.n_torsions:
        x = apply_torsion_deltas(x, space.bonds, space.mask, step[:, 6:], space.tree)
        x = x - x.mean(1, keepdim=True) + center
    return (x - center) @ so3.exp_map(step[:, 3:6]).transpose(-1, -2) + center + step[:, None, :3]


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
