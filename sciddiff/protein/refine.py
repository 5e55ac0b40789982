"""Backbone idealization: a restrained minimization of generated frames toward ideal peptide geometry, without clashes.

A generated chain's frames are individually exact residues (ideal N, CA, C), but the model places neighbouring frames only
approximately, so peptide bonds and CA(i)-CA(i+1) spacings scatter by tenths of an Angstrom. This step moves every frame
by a small rigid motion (R <- R Exp(w), body frame as in `sciddiff.core.spaces.SO3`; t <- t + d) that minimizes, in
Angstrom, a sum of squared z-scores:

- the trans peptide between consecutive residues, as four distances: C(i)-N(i+1) 1.329, CA(i)-N(i+1) and C(i)-CA(i+1) from
  Engh & Huber's CA-C-N 116.2 and C-N-CA 121.7 degrees, CA(i)-CA(i+1) of a trans peptide, and its planarity, omega =
  180 deg (a circular term: CA-CA alone barely holds omega, its slope is zero at 180, and without it the H-bond reward
  twisted ~1% of peptides past MolProbity's 30 deg);
- a flat-bottomed repulsion between CA atoms |i - j| >= 3 closer than `clash_distance`;
- a harmonic restraint of each residue's N, CA, C to where the model put them (keeps the fold), and a circular one of
  every phi and psi to the model's (keeps the Ramachandran distribution the model learned);
- a reward for backbone hydrogen bonds (Kabsch & Sander's electrostatic energy with amide H placed as pydssp does) between
  residues |i - j| >= 3 whose O and N start within 5 A: the model often builds strand pairs and helix turns a few tenths
  of an Angstrom or degrees short of bonding, and a relax with an H-bond term completes them, as Rosetta's would.
  DSSP scores secondary structure with this same energy, so the relax's gain in DSSP helix/strand is partly by
  construction; the restraints bound how far it can go (docs/protein.md reports with and without it).

The same idea as Rosetta's idealize or a restrained relax: chemistry the network only learned approximately is imposed
exactly, the fold stays the model's. L-BFGS in float64, all chains of a batch at once (`sciddiff.core.lbfgs`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sciddiff.core import so3
from sciddiff.core.lbfgs import minimize_lbfgs_batched
from sciddiff.protein.geometry import (
    C_N_BOND,
    C_N_CA_ANGLE,
    C_O_BOND,
    CA_C_BOND,
    CA_C_N_ANGLE,
    CA_C_O_ANGLE,
    DEFAULT_PSI_LAST,
    N_CA_BOND,
    backbone_from_dihedrals,
    dihedral,
    frame_atoms,
    frames_from_backbone,
    place_atom,
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
    omega_sigma: float = 0.1  # peptide planarity (radians; Engh & Huber's omega spread is ~6 deg)
    max_evals: int = 100  # energy + gradient evaluations (batched L-BFGS iterations) per chain
    # Backbone H-bonds: a reward of hbond_weight per pair, pydssp's smooth indicator of the Kabsch-Sander energy E
    # (1 below cutoff - 2 margin, 0 above cutoff, a sine ramp between). The window [-2, 0] kcal/mol gives nearly formed
    # bonds a gradient and leaves an ideal alpha helix (i -> i+4 at -2.2) in place; pydssp calls a bond at E < -1.5.
    # 0 switches the term off (geometry only). Chosen on tuning seeds, see docs/protein.md.
    hbond_weight: float = 10.0
    hbond_cutoff: float = 0.0
    hbond_margin: float = 1.0


def _phi_psi(atoms: Tensor) -> Tensor:
    """phi(i+1) and psi(i) of every peptide i -> i+1 of chains of N, CA, C atoms (..., L, 3, 3): (..., L - 1, 2)."""
    n, ca, c = atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :]
    phi = dihedral(c[..., :-1, :], n[..., 1:, :], ca[..., 1:, :], c[..., 1:, :])
    psi = dihedral(n[..., :-1, :], ca[..., :-1, :], c[..., :-1, :], n[..., 1:, :])
    return torch.stack([phi, psi], dim=-1)


def _peptide_distances(atoms: Tensor) -> Tensor:
    """C(i)-N(i+1), CA(i)-N(i+1), C(i)-CA(i+1), CA(i)-CA(i+1) of chains (..., L, 3, 3): (..., L - 1, 4)."""
    n, ca, c = atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :]
    pairs = ((c, n), (ca, n), (c, ca), (ca, ca))
    return torch.stack([(a[..., :-1, :] - b[..., 1:, :]).norm(dim=-1) for a, b in pairs], dim=-1)


def hbond_energy(bb: Tensor, acceptor: Tensor, donor: Tensor) -> Tensor:
    """Kabsch & Sander's electrostatic H-bond energy (kcal/mol) of C=O(acceptor) ... H-N(donor) pairs of residues of
    bb (N, 4, 3) (N, CA, C, O); a donor's previous residue (donor - 1) must be its chain's.

    E = 0.084 * 332 * (1/r_ON + 1/r_CH - 1/r_OH - 1/r_CN), the energy DSSP (and pydssp) call a bond below a cutoff."""
    return _hbond_energy(bb[acceptor, 2], bb[acceptor, 3], bb[donor, 0], bb[donor, 1], bb[donor - 1, 2])


def _hbond_energy(c: Tensor, o: Tensor, n: Tensor, ca: Tensor, c_prev: Tensor) -> Tensor:
    """`hbond_energy` from the acceptors' C, O and the donors' N, CA and previous C; the amide H is placed as pydssp
    places it: 1.01 A from N along the bisector of C(i-1)->N and CA->N (DSSP itself: 1.0 A along the previous C=O,
    O->C; the two differ by ~5 deg on natural chains)."""
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)  # noqa: E731
    h = n + 1.01 * unit(unit(n - c_prev) + unit(n - ca))
    inv = lambda a, b: 1.0 / (a - b).norm(dim=-1)  # noqa: E731
    return 0.084 * 332.0 * (inv(o, n) + inv(c, h) - inv(o, h) - inv(c, n))


def _carbonyl_o(atoms: Tensor, residue: Tensor, chain_end: Tensor) -> Tensor:
    """O of `residue` (indices into atoms (N, 3, 3) of N, CA, C) placed as `backbone_from_frames` does: trans to the next
    N about CA-C, or at a chain end (`chain_end`, bool like residue) from the residue's own N with psi_last."""
    nxt = torch.where(chain_end, residue, residue + 1)
    torsion = torch.full(residue.shape, math.pi, dtype=atoms.dtype).masked_fill(chain_end,
                                                                                  DEFAULT_PSI_LAST + math.pi)
    return place_atom(atoms[nxt, 0], atoms[residue, 1], atoms[residue, 2], C_O_BOND, CA_C_O_ANGLE, torsion)


def idealize_frames(rot: Tensor, trans: Tensor, chain: Tensor, cfg: IdealizeConfig = IdealizeConfig()
                    ) -> tuple[Tensor, Tensor]:
    """Idealize the frames rot (N, 3, 3), trans (N, 3) (Angstrom) of chains concatenated in residue order (chain (N,)
    ids); returns new (rot, trans) in the input dtype.

    The chains are padded to one (B, L) batch (padding: an ideal helix 1000 A away, whose terms are masked out) and
    minimized together by the core's batched L-BFGS: one chain's result does not depend on the others (up to float
    rounding), and ten chains cost about what one costs in a per-chain loop. Works under `torch.inference_mode()`."""
    with torch.inference_mode(False):  # the minimization needs autograd; inference tensors are copied out of that mode
        return _idealize(rot, trans, chain, cfg)


def _idealize(rot: Tensor, trans: Tensor, chain: Tensor, cfg: IdealizeConfig) -> tuple[Tensor, Tensor]:
    f64 = dict(dtype=torch.float64)
    masks = [chain == c for c in torch.unique(chain)]
    lengths = torch.tensor([int(m.sum()) for m in masks])
    num, size = len(masks), int(lengths.max())
    pad = backbone_from_dihedrals(torch.full((size,), math.radians(-57.0), **f64),
                                  torch.full((size,), math.radians(-47.0), **f64))
    pad_rot, pad_trans = frames_from_backbone(pad[:, 0], pad[:, 1], pad[:, 2])
    rot0, trans0 = pad_rot.repeat(num, 1, 1, 1), (pad_trans + 1000.0).repeat(num, 1, 1)
    real = torch.arange(size) < lengths[:, None]  # (B, L)
    for k, m in enumerate(masks):
        rot0[k, : lengths[k]], trans0[k, : lengths[k]] = rot[m].detach().cpu(), trans[m].detach().cpu()
    last = torch.arange(size) == lengths[:, None] - 1
    peptide = real[:, 1:].double()  # (B, L - 1): peptide i -> i + 1 inside a chain
    atoms0 = frame_atoms(rot0.flatten(0, 1), trans0.flatten(0, 1)).view(num, size, 3, 3)
    phi_psi0 = _phi_psi(atoms0)
    targets = torch.tensor(_peptide_targets(), **f64)
    sigmas = torch.tensor([cfg.bond_sigma, cfg.angle_sigma, cfg.angle_sigma, cfg.angle_sigma], **f64)
    # Residue pairs |i - j| >= 3 of a chain that can interact: CA pairs within clash reach and O...N pairs within 5 A at
    # the start (the restraints keep atoms within ~0.5 A of the model's placement), as (chain, i, j) index triples.
    apart = (torch.arange(size)[:, None] - torch.arange(size)[None]).abs() >= 3
    both = real[:, :, None] & real[:, None, :] & apart
    cb, ci, cj = torch.nonzero(both & ((trans0[:, :, None] - trans0[:, None]).norm(dim=-1) < cfg.clash_distance + 3.0)
                               & (torch.arange(size)[:, None] < torch.arange(size)[None]), as_tuple=True)
    hb_chain = torch.zeros(0, dtype=torch.long)
    if cfg.hbond_weight:
        flat0 = atoms0.flatten(0, 1)
        o0 = _carbonyl_o(flat0, torch.arange(num * size), (last | (torch.arange(size) == size - 1)).flatten())
        o0 = o0.view(num, size, 3)
        near = both & ((o0[:, :, None] - atoms0[:, None, :, 0]).norm(dim=-1) < 5.0)
        near[:, :, 0] = False  # the first residue's N has no amide H
        hb_chain, acceptor, donor = torch.nonzero(near, as_tuple=True)
        acceptor, donor = hb_chain * size + acceptor, hb_chain * size + donor  # into the flattened (B * L) residues
        acceptor_end = last.flatten()[acceptor]

    def moved(params: Tensor) -> tuple[Tensor, Tensor]:
        return rot0 @ so3.exp_map(params[..., :3]), trans0 + params[..., 3:]

    def energy(params: Tensor) -> Tensor:
        rot, trans = moved(params)
        atoms = frame_atoms(rot.flatten(0, 1), trans.flatten(0, 1)).view(num, size, 3, 3)
        bonded = ((((_peptide_distances(atoms) - targets) / sigmas) ** 2).sum(-1) * peptide).sum(-1)
        d_ca = (atoms[cb, ci, 1] - atoms[cb, cj, 1]).norm(dim=-1)
        overlap = ((cfg.clash_distance - d_ca).clamp_min(0.0) / cfg.clash_sigma) ** 2
        clash = torch.zeros(num, **f64).index_add(0, cb, overlap)
        restraint = ((atoms - atoms0) / cfg.restraint_sigma).pow(2).sum((1, 2, 3))
        torsion = (((2 - 2 * torch.cos(_phi_psi(atoms) - phi_psi0)) / cfg.dihedral_sigma ** 2).sum(-1) * peptide).sum(-1)
        ca, c, n = atoms[..., 1, :], atoms[..., 2, :], atoms[..., 0, :]
        omega = dihedral(ca[:, :-1], c[:, :-1], n[:, 1:], ca[:, 1:])
        planar = ((2 + 2 * torch.cos(omega)) / cfg.omega_sigma ** 2 * peptide).sum(-1)
        total = bonded + clash + restraint + torsion + planar
        if len(hb_chain):
            # pydssp's smooth H-bond indicator: 0 above the cutoff, 1 below cutoff - 2 margin, a sine ramp between
            flat = atoms.flatten(0, 1)
            e = _hbond_energy(flat[acceptor, 2], _carbonyl_o(flat, acceptor, acceptor_end), flat[donor, 0],
                              flat[donor, 1], flat[donor - 1, 2])
            ramp = (cfg.hbond_cutoff - cfg.hbond_margin - e).clamp(-cfg.hbond_margin, cfg.hbond_margin)
            bonds = (torch.sin(ramp / cfg.hbond_margin * math.pi / 2) + 1) / 2
            total = total - cfg.hbond_weight * torch.zeros(num, **f64).index_add(0, hb_chain, bonds)
        return total

    def value_and_grad(params: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            params = params.detach().requires_grad_()
            e = energy(params)
            return e.detach(), torch.autograd.grad(e.sum(), params)[0]

    params, _ = minimize_lbfgs_batched(value_and_grad, torch.zeros(num, size, 6, **f64), cfg.max_evals)
    with torch.no_grad():
        rot_out, trans_out = moved(params)
    rot, trans = rot.clone(), trans.clone()
    for k, m in enumerate(masks):
        rot[m], trans[m] = rot_out[k, : lengths[k]].to(rot), trans_out[k, : lengths[k]].to(trans)
    return rot, trans
