"""Backbone quality metrics: local geometry, clashes, Ramachandran, secondary structure, compactness, distribution distance.

All functions take one backbone as a float array (L, 4, 3) of N, CA, C, O in Angstrom and return plain Python numbers;
angles are reported in degrees. Definitions (the goals of issue 5 and the natural reference of shared/data/README.md):
- bonds N-CA, CA-C, C(i)-N(i+1); angles N-CA-C, CA-C-N(i+1), C(i)-N(i+1)-CA(i+1)  (mean and std over the chain);
- CA(i)-CA(i+1) distance; a chain is "CA-valid" when every one is within 3.8 +/- 0.2 A (two-sided, so a natural chain's
  cis peptide, CA-CA ~2.9 A, makes it invalid; FrameDiff's ca_ca_valid is one-sided);
- peptide planarity: omega's distance from planar (cis or trans), degrees; "twisted" beyond 30 (MolProbity's flag);
- CA clashes: pairs |i - j| >= 3 closer than 3 A;
- Ramachandran favoured / allowed: MolProbity general-case table (see `ramachandran`);
- DSSP (pydssp, 3 states): helix (H) and strand (E) fractions;
- radius of gyration of CA against the natural fit Rg = 1.59 N^0.465 A (ratio; within 15% is the goal);
- distance profile: per chain, the number of CA neighbours per residue in 1 A shells out to 24 A (|i - j| >= 2): a
  length-robust summary of local packing and secondary structure; sets of chains are compared by MMD with a Gaussian kernel.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from sciddiff.protein import geometry, ramachandran

CA_CA_IDEAL, CA_CA_TOL = 3.8, 0.2
CLASH_DIST, CLASH_MIN_SEP = 3.0, 3
RG_PREFACTOR, RG_EXPONENT = 1.59, 0.465
PROFILE_BINS = np.arange(0.0, 25.0, 1.0)  # 24 shells of 1 A
PROFILE_MIN_SEP = 2
OMEGA_TWISTED = 30.0  # degrees from planar: MolProbity's twisted peptide


def _t(bb: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(bb), dtype=torch.float64)


def bond_geometry(bb: np.ndarray) -> dict[str, np.ndarray]:
    """Per-bond lengths (A) and angles (deg) along the chain."""
    x = _t(bb)
    n, ca, c = x[:, 0], x[:, 1], x[:, 2]
    deg = 180.0 / math.pi
    return {
        "N-CA": (ca - n).norm(dim=-1).numpy(),
        "CA-C": (c - ca).norm(dim=-1).numpy(),
        "C-N": (n[1:] - c[:-1]).norm(dim=-1).numpy(),
        "N-CA-C": deg * geometry.angle(n, ca, c).numpy(),
        "CA-C-N": deg * geometry.angle(ca[:-1], c[:-1], n[1:]).numpy(),
        "C-N-CA": deg * geometry.angle(c[:-1], n[1:], ca[1:]).numpy(),
    }


def ca_ca_distances(bb: np.ndarray) -> np.ndarray:
    ca = np.asarray(bb, dtype=np.float64)[:, 1]
    return np.linalg.norm(np.diff(ca, axis=0), axis=-1)


def ca_clashes(bb: np.ndarray, cutoff: float = CLASH_DIST, min_sep: int = CLASH_MIN_SEP) -> int:
    """Number of CA pairs with |i - j| >= min_sep closer than cutoff."""
    ca = np.asarray(bb, dtype=np.float64)[:, 1]
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    i, j = np.triu_indices(len(ca), k=min_sep)
    return int((d[i, j] < cutoff).sum())


def omega_deviation(bb: np.ndarray) -> np.ndarray:
    """Degrees from planar (the nearer of cis and trans) of each peptide i -> i + 1, (L - 1,)."""
    omega = np.degrees(np.abs(geometry.backbone_dihedrals(_t(bb))[2].numpy()[:-1]))
    return np.minimum(omega, 180.0 - omega)


def phi_psi(bb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backbone phi, psi in radians (L,), NaN at the undefined ends."""
    phi, psi, _ = geometry.backbone_dihedrals(_t(bb))
    return phi.numpy(), psi.numpy()


DSSP_MIN_LENGTH = 6  # pydssp's arrays are sized for at least 6 residues: shorter chains fail inside it


def secondary_structure(bb: np.ndarray) -> np.ndarray:
    """DSSP 3-state string per residue ('-', 'H', 'E') from pydssp (hydrogens placed by pydssp)."""
    if len(bb) < DSSP_MIN_LENGTH:
        # All loop, which is also DSSP's answer: its shortest helix (two consecutive i -> i+4 H-bonds) spans 6
        # residues, and a bridge needs partners at least 3 apart with a flanking residue on each side (6 residues too).
        return np.full(len(bb), "-")
    import pydssp  # here, not at the top: training imports this module on GPU machines that lack pydssp
    index = pydssp.assign(np.asarray(bb, dtype=np.float32), out_type="index")
    return np.array(["-", "H", "E"])[np.asarray(index)]


def radius_of_gyration(bb: np.ndarray) -> float:
    ca = np.asarray(bb, dtype=np.float64)[:, 1]
    return float(np.sqrt(((ca - ca.mean(0)) ** 2).sum(-1).mean()))


def natural_rg(length: int | np.ndarray) -> np.ndarray | float:
    return RG_PREFACTOR * np.asarray(length, dtype=float) ** RG_EXPONENT


def distance_profile(bb: np.ndarray) -> np.ndarray:
    """CA neighbours per residue in each 1 A shell (|i - j| >= 2), (24,)."""
    ca = np.asarray(bb, dtype=np.float64)[:, 1]
    i, j = np.triu_indices(len(ca), k=PROFILE_MIN_SEP)
    d = np.linalg.norm(ca[i] - ca[j], axis=-1)
    hist, _ = np.histogram(d, bins=PROFILE_BINS)
    return 2.0 * hist / len(ca)


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased squared MMD between sample sets x (n, d) and y (m, d) with a Gaussian kernel of the given bandwidth."""
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2.0 * bandwidth**2))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def median_bandwidth(x: np.ndarray) -> float:
    """Median pairwise distance within a reference set (the usual MMD bandwidth heuristic)."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return float(np.median(d[np.triu_indices(len(x), k=1)]))


def _defined(values: np.ndarray, stat=np.mean) -> float | None:
    """stat over the defined (not NaN) values of a per-bond or per-residue array; None (JSON null, not a bare NaN)
    where the chain has none: a 1-residue chain has no peptide bond or CA-CA distance, one of 2 residues no residue
    with both phi and psi."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(stat(values)) if values.size else None


PEPTIDE_TERMS = ("C-N", "CA-C-N", "C-N-CA")  # the `bond_geometry` entries of the peptide i -> i + 1


def chain_metrics(bb: np.ndarray, gaps: np.ndarray | None = None) -> dict:
    """All per-chain metrics of one backbone (JSON-ready; None where a chain is too short for the metric). `gaps`
    (L - 1,) bool marks residues i, i + 1 that are not bonded (missing residues in an experimental structure): the
    peptide terms, CA-CA distances and the phi / psi across them are left out rather than counted as bonds."""
    bb = np.asarray(bb, dtype=np.float64)
    gaps = np.zeros(max(len(bb) - 1, 0), bool) if gaps is None else np.asarray(gaps, bool)
    geo = bond_geometry(bb)
    caca = ca_ca_distances(bb)
    clashes = ca_clashes(bb)
    phi, psi = phi_psi(bb)
    omega = omega_deviation(bb)
    for values in [*(geo[k] for k in PEPTIDE_TERMS), caca, phi[1:], psi[:-1], omega]:
        values[gaps] = np.nan
    bonded = caca[~gaps]
    rama = ramachandran.classify(phi, psi)
    ss = secondary_structure(bb)
    rg = radius_of_gyration(bb)
    return {
        "length": len(bb),
        **{f"{k}_mean": _defined(v) for k, v in geo.items()},
        **{f"{k}_std": _defined(v, np.std) for k, v in geo.items()},
        "ca_ca_mean": _defined(caca),
        "ca_ca_std": _defined(caca, np.std),
        "ca_ca_within_tol": _defined(np.abs(bonded - CA_CA_IDEAL) <= CA_CA_TOL),
        "ca_clashes": clashes,
        "ca_valid": bool((np.abs(bonded - CA_CA_IDEAL) <= CA_CA_TOL).all() and clashes == 0),
        "gaps": int(gaps.sum()),
        "omega_deviation_mean": _defined(omega),
        "omega_twisted": _defined(np.where(np.isnan(omega), np.nan, omega > OMEGA_TWISTED)),
        "rama_favoured": _defined([rama["favoured"]]),
        "rama_allowed": _defined([rama["allowed"]]),
        "helix": float((ss == "H").mean()),
        "strand": float((ss == "E").mean()),
        "dssp": "".join(ss),
        "rg": rg,
        "rg_ratio": float(rg / natural_rg(len(bb))),
    }


def summarize(per_chain: list[dict]) -> dict:
    """Set-level numbers for the issue-5 goals from per-chain metrics (means over the chains where a metric is
    defined; None where it is defined for none)."""
    def col(key: str) -> np.ndarray:
        return np.array([m[key] for m in per_chain], dtype=float)  # None -> NaN

    def mean(key: str) -> float | None:
        values = col(key)
        return _defined(values[~np.isnan(values)])

    helix, strand = col("helix"), col("strand")
    return {
        "num_chains": len(per_chain),
        "ca_valid_fraction": float(col("ca_valid").mean()),
        "ca_ca_within_tol": mean("ca_ca_within_tol"),
        "ca_clash_free_fraction": float((col("ca_clashes") == 0).mean()),
        "ca_ca_mean": mean("ca_ca_mean"),
        "C-N_mean": mean("C-N_mean"),
        "CA-C-N_mean": mean("CA-C-N_mean"),
        "C-N-CA_mean": mean("C-N-CA_mean"),
        "omega_deviation_mean": mean("omega_deviation_mean"),
        "omega_twisted": mean("omega_twisted"),
        "rama_favoured": mean("rama_favoured"),
        "rama_allowed": mean("rama_allowed"),
        "helix": float(helix.mean()),
        "strand": float(strand.mean()),
        "helix_plus_strand": float((helix + strand).mean()),
        "chains_with_helix": float((helix > 0).mean()),
        "chains_with_strand": float((strand > 0).mean()),
        "rg_ratio_mean": float(col("rg_ratio").mean()),
        "rg_within_15pct": float((np.abs(col("rg_ratio") - 1.0) <= 0.15).mean()),
    }


def ideal_helix(length: int) -> np.ndarray:
    """Trivial baseline: an ideal alpha helix (phi -57, psi -47 deg)."""
    phi = torch.full((length,), math.radians(-57.0), dtype=torch.float64)
    psi = torch.full((length,), math.radians(-47.0), dtype=torch.float64)
    return geometry.backbone_from_dihedrals(phi, psi).numpy()


def random_walk(length: int, generator: torch.Generator) -> np.ndarray:
    """Trivial baseline: ideal bonds with phi, psi uniform on the torus (a random-coil walk)."""
    phi = (torch.rand(length, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    psi = (torch.rand(length, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    return geometry.backbone_from_dihedrals(phi, psi).numpy()
