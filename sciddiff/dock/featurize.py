"""Numeric features of ligands and receptors for the score network (numpy in, plain tensors out; no rdkit needed
downstream, so the preprocessed training file runs where rdkit is not installed).

Ligand: one node per heavy atom, ATOM_DIM features (element, degree, charge, aromaticity, hybridisation, hydrogens,
ring membership, Vina hydrophobic/donor/acceptor flags); bonds as directed edge pairs with 4 bond-type channels
(single, double, triple, aromatic). Receptor: one node per amino-acid residue at C-alpha, residue type (20 + unknown)
and three unit vectors from C-alpha to N, C and the side-chain centroid (a residue's orientation without ESM).
"""
from __future__ import annotations

import numpy as np
import torch
from rdkit import Chem

from sciddiff.dock.ligand import Torsions
from sciddiff.dock.model import ATOM_DIM, N_RES_TYPES
from sciddiff.dock.receptor import Receptor
from sciddiff.dock.scoring import ligand_types

ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P")
HYBRID = (Chem.HybridizationType.SP, Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)
BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
assert ATOM_DIM == len(ELEMENTS) + 1 + 6 + 3 + 1 + len(HYBRID) + 1 + 4 + 2 + 3
assert N_RES_TYPES == 21  # 20 amino acids + unknown (sciddiff.dock.receptor.AMINO_ACIDS)


def _onehot(value: int, n: int) -> list[float]:
    out = [0.0] * n
    out[min(max(value, 0), n - 1)] = 1.0
    return out


def atom_features(mol: Chem.Mol) -> np.ndarray:
    types = ligand_types(mol)
    rows = []
    for atom in mol.GetAtoms():
        sym = atom.GetSymbol()
        el = ELEMENTS.index(sym) if sym in ELEMENTS else len(ELEMENTS)
        hyb = atom.GetHybridization()
        i = atom.GetIdx()
        rows.append(
            _onehot(el, len(ELEMENTS) + 1) + _onehot(atom.GetDegree(), 6) + _onehot(atom.GetFormalCharge() + 1, 3)
            + [float(atom.GetIsAromatic())] + _onehot(HYBRID.index(hyb) if hyb in HYBRID else len(HYBRID), len(HYBRID) + 1)
            + _onehot(atom.GetTotalNumHs(), 4) + [float(atom.IsInRing()), float(atom.IsInRingSize(5) or atom.IsInRingSize(6))]
            + [float(types.hydrophobic[i]), float(types.donor[i]), float(types.acceptor[i])]
        )
    return np.asarray(rows, dtype=np.float32)


def bond_arrays(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Directed bond edges (2, 2E) and their one-hot types (2E, 4)."""
    src, dst, kind = [], [], []
    for b in mol.GetBonds():
        t = BOND_TYPES.index(b.GetBondType()) if b.GetBondType() in BOND_TYPES else 0
        for u, v in ((b.GetBeginAtomIdx(), b.GetEndAtomIdx()), (b.GetEndAtomIdx(), b.GetBeginAtomIdx())):
            src.append(u)
            dst.append(v)
            kind.append(_onehot(t, 4))
    return np.array([src, dst], dtype=np.int64).reshape(2, -1), np.asarray(kind, dtype=np.float32).reshape(-1, 4)


def ligand_graph(mol: Chem.Mol, torsions: Torsions) -> dict[str, torch.Tensor]:
    """Pose-independent ligand tensors: feat (N, ATOM_DIM), bond_index (2, 2E), bond_type (2E, 4),
    tor_bonds (m, 2), tor_mask (m, N) bool."""
    bond_index, bond_type = bond_arrays(mol)
    return {
        "feat": torch.as_tensor(atom_features(mol)),
        "bond_index": torch.as_tensor(bond_index),
        "bond_type": torch.as_tensor(bond_type),
        "tor_bonds": torch.as_tensor(torsions.bonds),
        "tor_mask": torch.as_tensor(torsions.mask),
    }


def receptor_graph(rec: Receptor, center: np.ndarray | None = None, radius: float | None = None) -> dict[str, torch.Tensor]:
    """Residue nodes: pos (R, 3) C-alpha, res_type (R,) long, vec (R, 3, 3) unit vectors CA->N, CA->C, CA->side chain.
    With center/radius, only residues whose C-alpha lies within radius of center."""
    keep = np.ones(rec.n_residues, bool)
    if center is not None and radius is not None:
        keep = np.linalg.norm(rec.res_ca - center, axis=1) <= radius
    ca = rec.res_ca[keep]
    vec = np.stack([rec.res_n[keep] - ca, rec.res_c[keep] - ca, rec.res_sc[keep] - ca], 1)
    norm = np.linalg.norm(vec, axis=-1, keepdims=True)
    vec = np.where(norm > 1e-3, vec / np.maximum(norm, 1e-3), 0.0).astype(np.float32)
    return {"pos": torch.as_tensor(ca), "res_type": torch.as_tensor(rec.res_type[keep]), "vec": torch.as_tensor(vec)}
