"""Residue frames <-> backbone atoms, and backbone internal coordinates.

Conventions (AlphaFold / FrameDiff):
- Coordinates in Angstrom, angles in radians, torch tensors of any float dtype, leading batch dims free.
- A residue frame is (R, t): R (..., 3, 3) rotation whose columns are the local axes in global coordinates, t (..., 3) the
  CA position; a local point p maps to the global point R p + t.
- The local axes come from N, CA, C by Gram-Schmidt: x along CA->C, y in the N-CA-C plane towards N, z = x cross y.
- Ideal atoms in the local frame are AlphaFold's alanine backbone (N-CA 1.460, CA-C 1.526 A, N-CA-C 111.0 deg); the carbonyl
  O (C=O 1.231 A, CA-C-O 120.5 deg) is placed trans to psi's N, i.e. in the CA-C-N(i+1) plane, so that a chain built from
  frames alone is always a complete, chemically valid 4-atom backbone. The last residue has no N(i+1): its O uses `psi_last`.
- Dihedrals follow IUPAC: phi(i) = C(i-1)-N(i)-CA(i)-C(i), psi(i) = N(i)-CA(i)-C(i)-N(i+1),
  omega(i) = CA(i)-C(i)-N(i+1)-CA(i+1); the undefined ends are NaN.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# AlphaFold residue_constants, ALA backbone rigid group (Angstrom, local frame).
IDEAL_N = (-0.525, 1.363, 0.0)
IDEAL_C = (1.526, 0.0, 0.0)
C_O_BOND = 1.231
CA_C_O_ANGLE = math.radians(120.5)
# psi used for the last residue's O, which has no N(i+1) to fix it: a fixed helical value; only that one O depends on it.
DEFAULT_PSI_LAST = math.radians(-40.0)

ATOMS = ("N", "CA", "C", "O")


def frame_atoms(rot: Tensor, trans: Tensor, scale: float = 1.0) -> Tensor:
    """Ideal N, CA, C (N, 3, 3) of frames rot (N, 3, 3), trans (N, 3) whose translations are in units of `scale`
    Angstrom (same units out)."""
    local = torch.tensor([IDEAL_N, (0.0, 0.0, 0.0), IDEAL_C], dtype=trans.dtype, device=trans.device) / scale
    return torch.einsum("nij,aj->nai", rot, local) + trans[:, None]


def frames_from_backbone(n: Tensor, ca: Tensor, c: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Gram-Schmidt frames from N, CA, C (..., 3) -> (R (..., 3, 3), t (..., 3))."""
    e1 = c - ca
    e1 = e1 / e1.norm(dim=-1, keepdim=True).clamp_min(eps)
    u2 = n - ca
    e2 = u2 - (u2 * e1).sum(-1, keepdim=True) * e1
    e2 = e2 / e2.norm(dim=-1, keepdim=True).clamp_min(eps)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1), ca


def place_atom(a: Tensor, b: Tensor, c: Tensor, bond: float, angle: float, torsion: Tensor | float) -> Tensor:
    """NeRF: the atom d with |c d| = bond, angle b-c-d = angle and dihedral a-b-c-d = torsion (all (..., 3) / (...))."""
    torsion = torch.as_tensor(torsion, dtype=a.dtype, device=a.device)
    bc = c - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    nrm = torch.linalg.cross(b - a, bc, dim=-1)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    m = torch.stack([bc, torch.linalg.cross(nrm, bc, dim=-1), nrm], dim=-1)
    d_local = torch.stack(
        [
            -bond * math.cos(angle) * torch.ones_like(torsion),
            bond * math.sin(angle) * torch.cos(torsion),
            bond * math.sin(angle) * torch.sin(torsion),
        ],
        dim=-1,
    )
    return c + (m @ d_local.unsqueeze(-1)).squeeze(-1)


def backbone_from_frames(rot: Tensor, trans: Tensor, psi_last: float | Tensor = DEFAULT_PSI_LAST) -> Tensor:
    """Ideal N, CA, C, O of a chain from its frames: rot (..., L, 3, 3), trans (..., L, 3) -> (..., L, 4, 3).

    Residue i's O lies in the plane of CA(i), C(i), N(i+1) (peptide planarity); the last residue's O uses psi_last.
    """
    ideal_n = torch.tensor(IDEAL_N, dtype=trans.dtype, device=trans.device)
    ideal_c = torch.tensor(IDEAL_C, dtype=trans.dtype, device=trans.device)
    n = rot @ ideal_n + trans
    c = rot @ ideal_c + trans
    ca = trans
    # O is trans to N(i+1) about the CA-C bond, i.e. dihedral N(i+1)-CA-C-O = 180 deg; the last residue's N(i+1) is
    # replaced by its own N with the torsion shifted by psi (dihedral N-CA-C-O = psi + 180 deg).
    o_inner = place_atom(n[..., 1:, :], ca[..., :-1, :], c[..., :-1, :], C_O_BOND, CA_C_O_ANGLE, math.pi)
    psi_last = torch.as_tensor(psi_last, dtype=trans.dtype, device=trans.device)
    o_last = place_atom(n[..., -1:, :], ca[..., -1:, :], c[..., -1:, :], C_O_BOND, CA_C_O_ANGLE, psi_last + math.pi)
    o = torch.cat([o_inner, o_last], dim=-2)
    return torch.stack([n, ca, c, o], dim=-2)


def dihedral(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """Signed dihedral a-b-c-d in (-pi, pi] (IUPAC sign), (..., 3) -> (...)."""
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    x = (v * w).sum(-1)
    y = (torch.linalg.cross(b1n, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def angle(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Bond angle a-b-c in [0, pi], (..., 3) -> (...)."""
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    return torch.arccos(cos.clamp(-1.0, 1.0))


def backbone_dihedrals(bb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """phi, psi, omega (..., L) of a backbone (..., L, >=3, 3); undefined ends are NaN."""
    n, ca, c = bb[..., 0, :], bb[..., 1, :], bb[..., 2, :]
    nan = torch.full_like(n[..., :1, 0], float("nan"))
    phi = torch.cat([nan, dihedral(c[..., :-1, :], n[..., 1:, :], ca[..., 1:, :], c[..., 1:, :])], -1)
    psi = torch.cat([dihedral(n[..., :-1, :], ca[..., :-1, :], c[..., :-1, :], n[..., 1:, :]), nan], -1)
    omega = torch.cat([dihedral(ca[..., :-1, :], c[..., :-1, :], n[..., 1:, :], ca[..., 1:, :]), nan], -1)
    return phi, psi, omega


def center(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Subtract the (masked) mean over the residue axis: x (..., L, 3), mask (..., L)."""
    if mask is None:
        return x - x.mean(dim=-2, keepdim=True)
    m = mask.to(x.dtype).unsqueeze(-1)
    return x - (x * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp_min(1.0)


# Ideal internal coordinates for chains built from dihedrals: N-CA, CA-C and N-CA-C exactly those of IDEAL_N / IDEAL_C
# (so frames of such a chain rebuild it exactly), the peptide bond and its angles from Engh & Huber.
N_CA_BOND, CA_C_BOND, C_N_BOND = math.hypot(*IDEAL_N), IDEAL_C[0], 1.329
N_CA_C_ANGLE = math.atan2(IDEAL_N[1], IDEAL_N[0])
CA_C_N_ANGLE, C_N_CA_ANGLE = math.radians(116.2), math.radians(121.7)


def backbone_from_dihedrals(phi: Tensor, psi: Tensor, omega: Tensor | float = math.pi) -> Tensor:
    """Ideal-geometry backbone (L, 4, 3) from phi, psi (L,) (phi[0] and psi[-1] unused) and omega (trans by default), by NeRF.

    Used for the trivial baselines (ideal helix, random phi/psi walk); the chain starts at an arbitrary pose.
    """
    dtype = phi.dtype
    omega = torch.as_tensor(omega, dtype=dtype).expand(len(phi))
    n = torch.tensor([0.0, 0.0, 0.0], dtype=dtype)
    ca = torch.tensor([N_CA_BOND, 0.0, 0.0], dtype=dtype)
    c = ca + CA_C_BOND * torch.tensor([-math.cos(N_CA_C_ANGLE), math.sin(N_CA_C_ANGLE), 0.0], dtype=dtype)
    atoms = [n, ca, c]
    for i in range(1, len(phi)):
        # N(i) from psi(i-1), CA(i) from omega(i-1), C(i) from phi(i)
        atoms.append(place_atom(atoms[-3], atoms[-2], atoms[-1], C_N_BOND, CA_C_N_ANGLE, psi[i - 1]))
        atoms.append(place_atom(atoms[-3], atoms[-2], atoms[-1], N_CA_BOND, C_N_CA_ANGLE, omega[i - 1]))
        atoms.append(place_atom(atoms[-3], atoms[-2], atoms[-1], CA_C_BOND, N_CA_C_ANGLE, phi[i]))
    xyz = torch.stack(atoms).reshape(len(phi), 3, 3)
    rot, trans = frames_from_backbone(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    return backbone_from_frames(rot, trans, psi_last=psi[-1])
