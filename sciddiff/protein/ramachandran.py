"""Ramachandran regions: MolProbity's Top500 general-case preference table (Lovell et al., Proteins 2003).

The table (180 x 180 bins of 2 deg, phi first, density normalised to 1 at the peak) ships with the `pyrama` PyPI package as
`pyrama/data/pref_general.data`; it is read by path, without importing pyrama. MolProbity's general-case contours are
favoured = value >= 0.02 (encloses 98% of the reference residues) and allowed = value >= 0.0005 (99.95%).

Every residue is scored against the general-case table, whatever its amino acid: generated backbones have no sequence, and
natural chains are scored the same way so that the numbers compare (glycine and proline, ~12% of natural residues, fall
outside general contours more often, which is why natural chains score ~90% favoured here rather than MolProbity's ~98%).
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

FAVOURED = 0.02
ALLOWED = 0.0005


@lru_cache(maxsize=1)
def general_table() -> np.ndarray:
    """(180, 180) preference grid indexed [phi_bin, psi_bin], bins of 2 deg starting at -180 deg."""
    spec = importlib.util.find_spec("pyrama")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the Ramachandran table needs the `pyrama` package: pip install pyrama")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "pref_general.data"
    values = np.loadtxt(path, comments="#")
    table = np.zeros((180, 180))
    phi_bin = ((values[:, 0] + 180.0) // 2).astype(int)
    psi_bin = ((values[:, 1] + 180.0) // 2).astype(int)
    table[phi_bin, psi_bin] = values[:, 2]
    return table


def preference(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Table value at each (phi, psi) in radians (NaN stays NaN)."""
    phi, psi = np.asarray(phi, dtype=float), np.asarray(psi, dtype=float)
    ok = np.isfinite(phi) & np.isfinite(psi)
    out = np.full(phi.shape, np.nan)
    i = (np.floor((np.degrees(phi[ok]) + 180.0) / 2.0).astype(int)) % 180
    j = (np.floor((np.degrees(psi[ok]) + 180.0) / 2.0).astype(int)) % 180
    out[ok] = general_table()[i, j]
    return out


def classify(phi: np.ndarray, psi: np.ndarray) -> dict[str, float]:
    """Fractions of residues with both angles defined that are favoured / allowed (allowed includes favoured)."""
    p = preference(phi, psi)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return {"favoured": float("nan"), "allowed": float("nan")}
    return {"favoured": float((p >= FAVOURED).mean()), "allowed": float((p >= ALLOWED).mean())}
