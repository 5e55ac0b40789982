"""Backbone idealization: a restrained minimization of generated frames toward ideal peptide geometry, without clashes.

A generated chain's frames are individually exact residues (ideal N, CA, C), but the model places neighbouring frames only
approximately, so peptide bonds and CA(i)-CA(i+1) spacings scatter by tenths of an Angstrom. This step moves every frame
by a small rigid motion (R <- R Exp(w), body frame as in `sciddiff.core.spaces.SO3`; t <- t + d) that minimizes, in
Angstrom, a sum of squared z-scores:

- the trans peptide between consecutive residues, as four distances: C(i)-N(i+1) 1.329, CA(i)-N(i+1) and C(i)-CA(i+1) from
  Engh & Huber's CA-C-N 116.2 and C-N-CA 121.7 degrees, CA(i)-CA(i+1) of a trans peptide (omega = 180 deg);
- a flat-bottomed repulsion between CA atoms |i - j| >= 3 closer than `clash_distance`;
- a harmonic restraint of each residue's N, CA, C to where the model put them (keeps the fold), and a circular one of
  every phi and psi to the model's (keeps the Ramachandran distribution the model learned);
- a reward for backbone hydrogen bonds (Kabsch & Sander's electrostatic energy with amide H placed as DSSP does) between
  residues |i - j| >= 3 whose O and N start within 5 A: the model often builds strand pairs and helix turns a few tenths
  of an Angstrom or degrees short of bonding, and a relax with an H-bond term completes them, as Rosetta's would.
  DSSP scores secondary structure with this same energy, so the relax's gain in DSSP helix/strand is partly by
  construction; the restraints bound how far it can go (docs/protein.md reports with and without it).

The same idea as Rosetta's idealize or a restrained relax: chemistry the network only learned approximately is imposed
exactly, the fold stays the model's. L-BFGS in float64, one chain at a time.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import sys
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
    backbone_from_frames,
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
    # Backbone H-bonds: a reward of hbond_weight per pair, pydssp's smooth indicator of the Kabsch-Sander energy E
    # (1 below cutoff - 2 margin, 0 above cutoff, a sine ramp between). The window [-2, 0] kcal/mol gives nearly formed
    # bonds a gradient and leaves an ideal alpha helix (i -> i+4 at -2.2) in place; pydssp calls a bond at E < -1.5.
    # 0 switches the term off (geometry only). Chosen on tuning seeds, see docs/protein.md.
    hbond_weight: float = 10.0
    hbond_cutoff: float = 0.0
    hbond_margin: float = 1.0


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


def _hydrogens(bb: Tensor) -> Tensor:
    """Amide H of residues 1..L-1 from N, CA, C(i-1), placed as DSSP / pydssp do: 1.01 A from N along the bisector of
    C(i-1)->N and CA->N. bb (L, 4, 3) N, CA, C, O -> (L - 1, 3)."""
    n, ca, c_prev = bb[1:, 0], bb[1:, 1], bb[:-1, 2]
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)  # noqa: E731
    return n + 1.01 * unit(unit(n - c_prev) + unit(n - ca))


def hbond_energy(bb: Tensor, acceptor: Tensor, donor: Tensor) -> Tensor:
    """Kabsch & Sander's electrostatic H-bond energy (kcal/mol) of C=O(acceptor) ... H-N(donor) pairs; donors >= 1.

    E = 0.084 * 332 * (1/r_ON + 1/r_CH - 1/r_OH - 1/r_CN), the energy DSSP (and pydssp) call a bond below a cutoff."""
    h = _hydrogens(bb)[donor - 1]
    c, o, n = bb[acceptor, 2], bb[acceptor, 3], bb[donor, 0]
    inv = lambda a, b: 1.0 / (a - b).norm(dim=-1)  # noqa: E731
    return 0.084 * 332.0 * (inv(o, n) + inv(c, h) - inv(o, h) - inv(c, n))


def idealize_chain(rot: Tensor, trans: Tensor, cfg: IdealizeConfig = IdealizeConfig()) -> tuple[Tensor, Tensor]:
    """Idealize the frames rot (L, 3, 3), trans (L, 3) (Angstrom) of one chain; returns new (rot, trans), input dtype."""
    rot0, trans0 = rot.detach().double().cpu(), trans.detach().double().cpu()
    atoms0 = frame_atoms(rot0, trans0)
    phi_psi0 = _phi_psi(atoms0)
    targets = torch.tensor(_peptide_targets(), dtype=torch.float64)
    sigmas = torch.tensor([cfg.bond_sigma, cfg.angle_sigma, cfg.angle_sigma, cfg.angle_sigma], dtype=torch.float64)
    ii, jj = torch.triu_indices(len(trans0), len(trans0), offset=3)
    acc = don = torch.zeros(0, dtype=torch.long)
    if cfg.hbond_weight:
        # candidate H-bonds: acceptor O and donor N of residues >= 3 apart within 5 A at the start (atoms move < ~0.5 A)
        o, n = backbone_from_frames(rot0, trans0)[:, 3], atoms0[:, 0]
        acc, don = torch.nonzero(((o[:, None] - n[None]).norm(dim=-1) < 5.0)
                                 & ((torch.arange(len(o))[:, None] - torch.arange(len(o))[None]).abs() >= 3), as_tuple=True)
        acc, don = acc[don > 0], don[don > 0]
    params = torch.zeros(len(trans0), 6, dtype=torch.float64, requires_grad=True)  # body-frame rotvec, translation

    def moved() -> tuple[Tensor, Tensor]:
        return rot0 @ so3.exp_map(params[:, :3]), trans0 + params[:, 3:]

    def energy() -> Tensor:
        frames = moved()
        atoms = frame_atoms(*frames)
        bonded = (((_peptide_distances(atoms) - targets) / sigmas) ** 2).sum()
        d_ca = (atoms[ii, 1] - atoms[jj, 1]).norm(dim=-1)
        clash = ((cfg.clash_distance - d_ca).clamp_min(0.0) / cfg.clash_sigma).pow(2).sum()
        restraint = ((atoms - atoms0) / cfg.restraint_sigma).pow(2).sum()
        torsion = ((2 - 2 * torch.cos(_phi_psi(atoms) - phi_psi0)) / cfg.dihedral_sigma ** 2).sum()
        total = bonded + clash + restraint + torsion
        if len(acc):
            # pydssp's smooth H-bond indicator: 0 above the cutoff, 1 below cutoff - 2 margin, a sine ramp between
            e = hbond_energy(backbone_from_frames(*frames), acc, don)
            ramp = (cfg.hbond_cutoff - cfg.hbond_margin - e).clamp(-cfg.hbond_margin, cfg.hbond_margin)
            total = total - cfg.hbond_weight * ((torch.sin(ramp / cfg.hbond_margin * math.pi / 2) + 1) / 2).sum()
        return total

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


def _one_thread() -> None:
    torch.set_num_threads(1)


def idealize_frames(rot: Tensor, trans: Tensor, chain: Tensor, cfg: IdealizeConfig = IdealizeConfig(),
                    workers: int = 1) -> tuple[Tensor, Tensor]:
    """`idealize_chain` on each chain of frames concatenated in residue order (chain (N,) ids); one chain's result
    does not depend on the others. With workers > 1 (Linux), chains are idealized in that many forked processes: the
    minimization is a Python loop over small tensors, which threads cannot share out."""
    rot, trans = rot.clone(), trans.clone()
    masks = [chain == c for c in torch.unique(chain)]
    jobs = [(rot[m], trans[m], cfg) for m in masks]
    if workers > 1 and len(jobs) > 1 and sys.platform == "linux":
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), initializer=_one_thread) as pool:
            results = pool.starmap(idealize_chain, jobs)
    else:
        results = [idealize_chain(*job) for job in jobs]
    for m, (r, t) in zip(masks, results):
        rot[m], trans[m] = r, t
    return rot, trans
