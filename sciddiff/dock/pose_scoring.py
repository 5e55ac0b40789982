"""Scoring given ligand poses without a search (Vina's `--score_only`) and relaxing them in place (Vina's
`--local_only`, gnina's `--minimize`).

Same energy as `sciddiff dock`: Vina-like protein-ligand terms by exact pairs (8 A cutoff) plus the intra-ligand term;
`score` is Vina's reported quantity, inter / (1 + 0.0585 N_rot) (`scoring.ScoringFunction.entropy`), in
kcal/mol-like units (lower is better).
Minimisation moves the pose rigidly and about its rotatable bonds only: bond lengths, angles and ring shapes stay as
given. Coordinates in Angstrom.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem

from sciddiff.dock.ligand import rotatable_torsions, symmetric_rmsd
from sciddiff.dock.ligand_io import ligand_coords
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.receptor import Receptor
from sciddiff.dock.scoring import CUTOFF, PAIR_TERMS, ScoringFunction
from sciddiff.dock.search import POLISH_STEP_SIZES, fit_pose, local_opt


@dataclass
class PoseScore:
    score: float               # inter / (1 + 0.0585 N_rot)
    energy: float              # inter + intra: what the search and the minimisation lower
    inter: float               # weighted protein-ligand terms
    intra: float               # intra-ligand term
    terms: dict[str, float]    # unweighted protein-ligand term sums (PAIR_TERMS), as Vina's --score_only lists them
    n_torsions: int            # rotatable bonds searched (and moved by the minimisation)
    n_rot: float               # Vina's rotor count, the score's divisor: n_torsions + 0.5 per terminal OH, SH, NH2
    coords: np.ndarray         # (N, 3) the pose scored (after minimisation, if any)
    moved: float               # symmetry-corrected RMSD of `coords` from the input pose (A)


@torch.no_grad()
def _evaluate(sf: ScoringFunction, x: torch.Tensor) -> tuple[float, float, float, dict[str, float]]:
    inter, intra = float(sf.inter_exact(x)[0]), float(sf.intra(x)[0])
    terms = dict(zip(PAIR_TERMS, sf.inter_terms(x)[0].tolist()))
    return inter / sf.entropy, inter, intra, terms


def score_pose(receptor: Receptor, mol: Chem.Mol, minimize_steps: int = 0, function: str = "vina") -> PoseScore:
    """Score the pose given by `mol`'s coordinates; with minimize_steps > 0, first relax it by that many steps of the
    search's local optimiser on exact pairs (keeping the lowest energy seen, so it never gets worse)."""
    tors = rotatable_torsions(mol)
    sf = ScoringFunction(receptor, mol, tors.n, function=function)
    given = torch.as_tensor(ligand_coords(mol))[None]
    x = given
    if minimize_steps > 0:
        space = PoseSpace(given[0], tors)  # the pose's own geometry
        poses = local_opt(sf, space, *fit_pose(space, given), steps=minimize_steps, lr=POLISH_STEP_SIZES, exact=True)
        x = space.coords(poses.tr, poses.rot, poses.theta, realign=False)
    score, inter, intra, terms = _evaluate(sf, x)
    coords = x[0].numpy()
    moved = symmetric_rmsd(mol, coords, given[0].numpy()) if minimize_steps > 0 else 0.0
    return PoseScore(score=score, energy=inter + intra, inter=inter, intra=intra, terms=terms, n_torsions=tors.n,
                     n_rot=sf.n_rot, coords=coords, moved=moved)


def pose_warnings(receptor: Receptor, poses: list[np.ndarray]) -> list[list[str]]:
    """Per pose, what makes its score meaningless, for `warning:` lines: no protein atom within the energy's cutoff
    (the score is 0 whatever the pose), or atoms on top of each other (a collapsed or mangled pose file)."""
    from scipy.spatial import cKDTree

    protein = cKDTree(receptor.coords)  # once for all poses
    found = []
    for coords in poses:
        found.append([])
        if np.isinf(protein.query(coords, distance_upper_bound=CUTOFF)[0]).all():
            found[-1].append(f"no protein atom within {CUTOFF:g} A: the pose does not touch the protein")
        if len(coords) > 1 and cKDTree(coords).query(coords, k=2)[0][:, 1].min() < 0.5:
            found[-1].append("atoms closer than 0.5 A to each other: not a physical pose")
    return found
