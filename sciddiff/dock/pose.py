"""Ligand poses on R^3 x SO(3) x T^m: (translation, rotation, torsion angles) -> heavy-atom coordinates.

A pose of a fixed conformer is x = local(theta) R^T + t, where local(theta) is the conformer, centred at its
centroid, with its rotatable bonds set to absolute dihedral angles theta (radians) and Kabsch re-aligned onto the
centred conformer, so that t is the ligand centroid (Angstrom) and R its orientation whatever theta is. Poses are
batched: t (B, 3), R (B, 3, 3), theta (B, m).

A space may hold several conformers of the same ligand (K, N, 3) that differ in what torsions cannot change (ring
puckers, bond angles); a pose then also carries its conformer index `conf` (B,) (default: conformer 0).
"""
from __future__ import annotations

import math

import torch

from sciddiff.core import so3, torus
from sciddiff.dock.ligand import Torsions, apply_torsion_deltas, dihedral_angles, set_torsions, torsion_tree


class PoseSpace:
    """The pose parameterisation of a conformer (coordinates (N, 3)), or of K conformers of the same ligand
    (K, N, 3), with its rotatable bonds."""

    def __init__(self, conformer: torch.Tensor, torsions: Torsions):
        confs = conformer if conformer.dim() == 3 else conformer[None]
        self.locals = confs - confs.mean(-2, keepdim=True)  # (K, N, 3)
        self.local = self.locals[0]
        self.n_conformers = confs.shape[0]
        self.bonds = torch.as_tensor(torsions.bonds)
        self.mask = torch.as_tensor(torsions.mask)
        self.tree = torsion_tree(torsions.mask)  # all bonds turned at once (`apply_torsion_deltas`)
        self.dihedral = torch.as_tensor(torsions.dihedral)
        self.theta0s = dihedral_angles(self.locals, self.dihedral)  # (K, m)
        self.theta0 = self.theta0s[0]
        self.n_torsions = len(self.bonds)

    def shape(self, theta: torch.Tensor, realign: bool = True, conf: torch.Tensor | None = None) -> torch.Tensor:
        """Centred coordinates (B, N, 3) with torsions theta (B, m) of conformers conf (B,) (default 0).

        realign=False skips the Kabsch step (the frame then follows the larger, fixed part); it is a valid
        parameterisation for local optimisation and avoids SVD gradients.
        """
        if conf is None or self.n_conformers == 1:
            x, theta0 = self.local.expand(theta.shape[0], -1, -1), self.theta0
        else:
            x, theta0 = self.locals[conf], self.theta0s[conf]
        if self.n_torsions == 0:
            return x
        if realign:
            return set_torsions(x, (self.bonds, self.mask), theta - theta0, tree=self.tree)
        y = apply_torsion_deltas(x, self.bonds, self.mask, theta - theta0, self.tree)
        return y - y.mean(-2, keepdim=True)

    def coords(self, tr: torch.Tensor, rot: torch.Tensor, theta: torch.Tensor, realign: bool = True,
               conf: torch.Tensor | None = None) -> torch.Tensor:
        return self.shape(theta, realign, conf) @ rot.transpose(-1, -2) + tr[:, None, :]

    def random(self, n: int, center: torch.Tensor, half_size: torch.Tensor | float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random poses: centroid uniform in the box center +- half_size, Haar-uniform orientation, uniform torsions."""
        dtype = self.local.dtype
        tr = center + (torch.rand(n, 3, generator=generator, dtype=dtype) * 2 - 1) * half_size
        rot = so3.uniform_so3(n, generator=generator, dtype=dtype)
        theta = torus.wrap(torch.rand(n, self.n_torsions, generator=generator, dtype=dtype) * 2 * math.pi)
        return tr, rot, theta
