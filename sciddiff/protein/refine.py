"""Backbone idealization: a restrained minimization of generated frames toward ideal peptide geometry, without clashes.

A generated chain's frames are individually exact residues (ideal N, CA, C), but the model places neighbouring frames only
approximately, so peptide bonds and CA(i)-CA(i+1) spacings scatter by tenths of an Angstrom. This step moves every frame
by a small rigid motion (R <- R Exp(w), body frame as in `sciddiff.core.spaces.SO3`; t <- t + d) that minimizes, in
Angstrom, a sum of squared z-scores:

- the trans peptide between consecutive residues, as four distances: C(i)-N(i+1) 1.329, CA(i)-N(i+1) and C(i)-CA(i+1) from
  Engh & Huber's CA-C-N 116.2 and C-N-CA 121.7 degrees, CA(i)-CA(i+1) of a trans peptide (omega = 180 deg);
- a flat-bottomed repulsion between CA atoms |i - j| >= 3 closer than `clash_distance`;
- a harmonic restraint of each residue's N, CA, C to where the model put them (keeps the fold), and a circular one of
  every phi and psi to the model's (keeps the Ramachandran distribution the model learned).

The same idea as Rosetta's idealize or a restrained relax: chemistry the network only learned approximately is imposed
exactly, the fold stays the model's. L-BFGS in float64, one chain at a time.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sciddiff.core import so3
from sciddiff.protein.geometry import (
    C_N_BOND,
    C_N_CA_ANGLE,
    CA_C_BOND,
    CA_C_N_ANGLE,
    N_CA_BOND,
    backbone_from_dihedrals,
    dihedral,
    frame_atoms,
)


def _law_of_cosines(a: float, b: float, angle: float) -> float:
    return math.sqrt(a * a + b * b - 2 * a * b * math.cos(angle))


@functools.cache
def _peptide_targets() -> tuple[float, float, float, float]:
    """Ideal trans-peptide C(i)-N(i+1), CA(i)-N(i+1), C(i)-CA(i+1), CA(i)-CA(i+1) (the last from a built chain)."""
    bb = backbone_from_dihedrals(torch.zeros(2, dtype=torch.float64), torch.full((2,), 2.0, dtype=torch.float64))
    return (C_N_BOND, _law_of_cosines(CA_C_BOND, C_N_BOND, CA_C_N_ANGLE),
            _law_of_cosines(C_N_BOND, N_CA_BOND, C_N_CA_ANGLE), float((bb[1, 1] - bb[0, 1]).norm()))


@dataclass(frozen=True)
class IdealizeConfig:
    bond_sigma: float = 0.05  # C(i)-N(i+1), Angstrom
    angle_sigma: float = 0.08  # the 1-3 distances that fix CA-C-N and C-N-CA, and CA-CA (omega)
    clash_distance: float = 3.8  # CA-CA repulsion starts here (the metric's clash is < 3.0 A)
    clash_sigma: float = 0.1
    restraint_sigma: float = 0.3  # how far atoms may move from the model's placement
    dihedral_sigma: float = 0.2  # how far phi/psi may move from the model's (radians; on 2 - 2 cos)
    max_iter: int = 80  # L-BFGS iterations per chain; ~0.15 CPU-s for 100 residues


def _phi_psi(atoms: Tensor) -> Tensor:
    """phi(i+1) and psi(i) of every peptide i -> i+1 of one chain: (L - 1, 2)."""
    n, ca, c = atoms[:, 0], atoms[:, 1], atoms[:, 2]
    phi = dihedral(c[:-1], n[1:], ca[1:], c[1:])
    psi = dihedral(n[:-1], ca[:-1], c[:-1], n[1:])
    return torch.stack([phi, psi], dim=-1)


def _peptide_distances(atoms: Tensor) -> Tensor:
    """C(i)-N(i+1), CA(i)-N(i+1), C(i)-CA(i+1), CA(i)-CA(i+1) of one chain: (L - 1, 4)."""
    n, ca, c = atoms[:, 0], atoms[:, 1], atoms[:, 2]
    return torch.stack([(c[:-1] - n[1:]).norm(dim=-1), (ca[:-1] - n[1:]).norm(dim=-1),
                        (c[:-1] - ca[1:]).norm(dim=-1), (ca[:-1] - ca[1:]).norm(dim=-1)], dim=-1)


def idealize_chain(rot: Tensor, trans: Tensor, cfg: IdealizeConfig = IdealizeConfig()) -> tuple[Tensor, Tensor]:
    """Idealize the frames rot (L, 3, 3), trans (L, 3) (Angstrom) of one chain; returns new (rot, trans), input dtype."""
    rot0, trans0 = rot.detach().double().cpu(), trans.detach().double().cpu()
    atoms0 = frame_atoms(rot0, trans0)
    phi_psi0 = _phi_psi(atoms0)
    targets = torch.tensor(_peptide_targets(), dtype=torch.float64)
    sigmas = torch.tensor([cfg.bond_sigma, cfg.angle_sigma, cfg.angle_sigma, cfg.angle_sigma], dtype=torch.float64)
    ii, jj = torch.triu_indices(len(trans0), len(trans0), offset=3)
    params = torch.zeros(len(trans0), 6, dtype=torch.float64, requires_grad=True)  # body-frame rotvec, translation

    def moved() -> tuple[Tensor, Tensor]:
        return rot0 @ so3.exp_map(params[:, :3]), trans0 + params[:, 3:]

    def energy() -> Tensor:
        atoms = frame_atoms(*moved())
        bonded = (((_peptide_distances(atoms) - targets) / sigmas) ** 2).sum()
        d_ca = (atoms[ii, 1] - atoms[jj, 1]).norm(dim=-1)
        clash = ((cfg.clash_distance - d_ca).clamp_min(0.0) / cfg.clash_sigma).pow(2).sum()
        restraint = ((atoms - atoms0) / cfg.restraint_sigma).pow(2).sum()
        torsion = ((2 - 2 * torch.cos(_phi_psi(atoms) - phi_psi0)) / cfg.dihedral_sigma ** 2).sum()
        return bonded + clash + restraint + torsion

    opt = torch.optim.LBFGS([params], max_iter=cfg.max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> Tensor:
        opt.zero_grad()
        e = energy()
        e.backward()
        return e

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        r, t = moved()
    return r.to(rot), t.to(trans)


def idealize_frames(rot: Tensor, trans: Tensor, chain: Tensor, cfg: IdealizeConfig = IdealizeConfig()
                    ) -> tuple[Tensor, Tensor]:
    """`idealize_chain` on each chain of frames concatenated in residue order (chain (N,) ids); one chain's result
    does not depend on the others."""
    rot, trans = rot.clone(), trans.clone()
    for c in torch.unique(chain):
        sel = chain == c
        rot[sel], trans[sel] = idealize_chain(rot[sel], trans[sel], cfg)
    return rot, trans
