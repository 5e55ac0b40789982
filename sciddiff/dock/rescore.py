"""Learned rescoring and confidence: a small model that reads cheap, rigid-motion-invariant features of a docked
pose and returns a ranking logit (higher = more likely within 2 A of the crystal pose) and, from a separate
logistic head, the confidence P(symmetry-corrected RMSD < 2 A).

The search's Vina-like energy ranks the relaxed crystal pose below the returned pose in most misses (docs/dock.md),
so the model was trained on the search's own decoys on the training complexes (`sciddiff.dock.rescore_train`) to
re-rank the candidates. Retrained on the current search's decoys it ranked better than the energy in cross-validation
and on the tuning subset, so `dock` orders poses by it by default (settings.ranking "learned"; on the held-out
complexes the two rankings are within one complex of each other, docs/dock.md), and its logistic head gives the
`confidence`, which separates hits from misses far better than the search consensus. Units: Angstrom, kcal/mol-like Vina energies; probabilities in [0, 1].

Features of one pose (all from interatomic distances in Angstrom, hence invariant to moving the whole complex):
  - Vina terms, unweighted sums over protein-ligand heavy-atom pairs within 8 A (gauss1, gauss2, repulsion,
    hydrophobic, H-bond), the Vina energy (inter + intra-ligand, kcal/mol-like) and the intra-ligand energy;
  - contact histogram: ligand atom class x receptor atom class x distance bin counts (a knowledge-based potential
    the model weights), classes from the Vina typing (`scoring.ligand_types`, `scoring.receptor_types`);
  - buriedness: mean receptor heavy atoms within 4.5 A and 8 A per ligand atom;
  - search context: energy above the best pose the search found, and consensus (fraction of the search's Monte
    Carlo chains ending within 2 A plain RMSD of the pose);
  - ligand size: heavy atoms and rotatable bonds (these let the confidence depend on the ligand).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from scipy.spatial import cKDTree
from torch import nn

from sciddiff.cli import file_digest
from sciddiff.dock.ligand import rmsd_matrix
from sciddiff.dock.receptor import Receptor
from sciddiff.dock.scoring import (
    CUTOFF,
    FUNCTIONS,
    METALS,
    IntraLigand,
    hbond_pairs,
    ligand_types,
    pair_terms,
    receptor_types,
    term_weights,
)

CONTACT_BINS = (3.0, 3.5, 4.0, 5.0, 6.0)  # upper edges (A) of the contact-histogram distance bins
LIG_CLASSES = ("C_hyd", "C_pol", "N_don", "N_acc", "N_other", "O_acc", "O_don_acc", "S_P", "halogen")
REC_CLASSES = ("C_hyd", "C_pol", "N_don", "N_other", "O_acc", "O_don_acc", "S", "metal", "other")
TERM_NAMES = ("gauss1", "gauss2", "repulsion", "hydrophobic", "hbond", "vina_energy", "intra")
CONTEXT_NAMES = ("buried_4.5", "buried_8", "energy_above_best", "consensus", "n_heavy", "n_torsions")
FEATURE_NAMES = TERM_NAMES + tuple(f"{a}-{b}-{r}" for a in LIG_CLASSES for b in REC_CLASSES for r in CONTACT_BINS) \
    + CONTEXT_NAMES


def ligand_classes(mol: Chem.Mol) -> np.ndarray:
    """Index into LIG_CLASSES per heavy atom."""
    t = ligand_types(mol)
    el = np.array([a.GetSymbol() for a in mol.GetAtoms()])
    cls = np.full(len(el), 7, np.int64)  # S, P and anything rarer share one class
    c, n, o = el == "C", el == "N", el == "O"
    cls[c] = np.where(t.hydrophobic[c], 0, 1)
    cls[n] = np.where(t.donor[n], 2, np.where(t.acceptor[n], 3, 4))
    cls[o] = np.where(t.donor[o], 6, 5)
    cls[np.isin(el, ["F", "Cl", "Br", "I"])] = 8
    return cls


def receptor_classes(rec: Receptor) -> np.ndarray:
    """Index into REC_CLASSES per receptor heavy atom."""
    t = receptor_types(rec)
    el = rec.elements
    cls = np.full(len(el), 8, np.int64)
    c, n, o = el == "C", el == "N", el == "O"
    cls[c] = np.where(t.hydrophobic[c], 0, 1)
    cls[n] = np.where(t.donor[n], 2, 3)
    cls[o] = np.where(t.donor[o], 5, 4)
    cls[el == "S"] = 6
    cls[np.isin(el, list(METALS))] = 7
    return cls


class Featurizer:
    """Pose features (B, F) of one ligand in one receptor (see the module docstring)."""

    def __init__(self, receptor: Receptor, mol: Chem.Mol, n_torsions: int):
        self.fn = FUNCTIONS["vina"]
        lt, rt = ligand_types(mol), receptor_types(receptor)
        self.rec_xyz = receptor.coords.astype(np.float32)
        self.tree = cKDTree(self.rec_xyz)
        self.rec_cls = torch.as_tensor(receptor_classes(receptor))
        self.rec_r = torch.as_tensor(rt.radius)
        self.rec_hyd = torch.as_tensor(rt.hydrophobic, dtype=torch.float32)
        self.rec_don = torch.as_tensor(rt.donor, dtype=torch.float32)
        self.rec_acc = torch.as_tensor(rt.acceptor, dtype=torch.float32)
        self.lig_cls = torch.as_tensor(ligand_classes(mol))
        self.lig_r = torch.as_tensor(lt.radius)
        self.lig_hyd = torch.as_tensor(lt.hydrophobic, dtype=torch.float32)
        self.lig_don = torch.as_tensor(lt.donor, dtype=torch.float32)
        self.lig_acc = torch.as_tensor(lt.acceptor, dtype=torch.float32)
        self.intra = IntraLigand(mol, lt, self.fn)  # the search's intra-ligand energy
        self.size = torch.tensor([mol.GetNumAtoms(), n_torsions], dtype=torch.float32)

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vina term sums (B, 7), contact histogram (B, L*R*bins) and buriedness (B, 2)."""
        b, n, _ = x.shape
        near = self.tree.query_ball_point(x.reshape(-1, 3).numpy(), CUTOFF)
        idx = torch.as_tensor(sorted(set().union(*near)) if len(near) else [], dtype=torch.long)
        rxyz = torch.as_tensor(self.rec_xyz)[idx]
        r = torch.cdist(x, rxyz[None].expand(b, -1, -1), compute_mode="donot_use_mm_for_euclid_dist")  # (B, N, M)
        within = (r < CUTOFF).float()
        hyd = self.lig_hyd[:, None] * self.rec_hyd[idx]
        hb = hbond_pairs(self.lig_don[:, None], self.lig_acc[:, None], self.rec_don[idx], self.rec_acc[idx])
        raw = torch.stack(pair_terms(r, self.lig_r[:, None] + self.rec_r[idx], hyd, hb, self.fn), -1)
        sums = (raw * within[..., None]).sum((1, 2))  # (B, 5)
        intra = self.intra(x)
        terms = torch.cat([sums, ((sums * term_weights(self.fn)).sum(-1) + intra)[:, None], intra[:, None]], -1)

        nb, nr = len(CONTACT_BINS), len(REC_CLASSES)
        bins = torch.bucketize(r, torch.tensor(CONTACT_BINS))  # bin == nb: beyond the last edge
        cell = (self.lig_cls[:, None] * nr + self.rec_cls[idx][None, :]) * nb + bins
        cell = torch.where(bins < nb, cell, torch.full_like(cell, len(LIG_CLASSES) * nr * nb))  # overflow column
        hist = torch.zeros(b, len(LIG_CLASSES) * nr * nb + 1).scatter_add_(1, cell.reshape(b, -1),
                                                                          torch.ones(b, n * len(idx)))[:, :-1]
        buried = torch.stack([(r < 4.5).float().sum(-1).mean(-1), within.sum(-1).mean(-1)], -1)
        return terms, hist, buried

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, search: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Features (B, F) float32 of poses x (B, N, 3); `search` (P, N, 3) are the search's chain end points,
        the reference for the energy-above-best and consensus features."""
        x, search = x.float(), search.float()
        parts = [torch.cat(self._terms(xb), -1) for xb in x.split(chunk)]
        ref = torch.cat([self._terms(sb)[0][:, 5] for sb in search.split(chunk)]).min()
        f = torch.cat(parts)
        consensus = (rmsd_matrix(x, search) < 2.0).float().mean(1)
        context = torch.stack([f[:, 5] - ref, consensus], -1)
        return torch.cat([f, context, self.size.expand(len(x), 2)], -1)


PRIOR_FEATURES = ("vina_energy", "energy_above_best", "consensus")  # what ranking used before: not shrunk
CONFIDENCE_FEATURES = ("energy_above_best", "consensus", "n_heavy", "n_torsions")  # + the ranking logit


class Rescorer(nn.Module):
    """Standardised features -> linear + (hidden > 0) a one-hidden-layer MLP -> ranking logit; `probability` maps
    that logit and CONFIDENCE_FEATURES through a logistic regression to the confidence P(RMSD < 2 A).

    Training shrinks every weight towards zero except the linear weights of PRIOR_FEATURES, so with little data the
    model falls back to an energy + consensus ranking and only departs from it where the decoys say so. The ranking
    logit separates poses of one complex; the confidence must also compare complexes, where the search consensus
    is the strongest signal, so it gets its own small calibrated head (fit on out-of-fold logits)."""

    def __init__(self, n_features: int = len(FEATURE_NAMES), hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("prior", torch.tensor([n in PRIOR_FEATURES for n in FEATURE_NAMES]))
        self.hidden = hidden
        self.linear = nn.Linear(n_features, 1)
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.SiLU(), nn.Linear(hidden, 1)) if hidden else None
        self.register_buffer("conf_index", torch.tensor([FEATURE_NAMES.index(n) for n in CONFIDENCE_FEATURES]))
        self.register_buffer("conf_weight", torch.zeros(len(CONFIDENCE_FEATURES) + 2))  # logit, features..., bias
        self.version = "untrained"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean) / self.std
        out = self.linear(z)
        if self.mlp is not None:
            out = out + self.mlp(z)
        return out[..., 0]

    def confidence_inputs(self, features: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
        """Inputs (B, 6) of the confidence head: ranking logit, standardised CONFIDENCE_FEATURES, 1."""
        z = (features[..., self.conf_index] - self.mean[self.conf_index]) / self.std[self.conf_index]
        return torch.cat([logit[..., None], z, torch.ones_like(logit)[..., None]], -1)

    def probability(self, features: torch.Tensor, logit: torch.Tensor | None = None) -> torch.Tensor:
        """Confidence P(RMSD < 2 A) (B,) of poses with these features."""
        logit = self(features) if logit is None else logit
        return torch.sigmoid(self.confidence_inputs(features, logit) @ self.conf_weight)

    def penalty(self) -> torch.Tensor:
        """Sum of squares of the shrunk weights."""
        total = self.linear.weight[0, ~self.prior].pow(2).sum()
        if self.mlp is not None:
            total = total + sum(w.pow(2).sum() for name, w in self.mlp.named_parameters() if "weight" in name)
        return total


def save_rescorer(model: Rescorer, path: str | Path, meta: dict) -> None:
    from sciddiff.train.checkpoint import save_checkpoint

    save_checkpoint(path, {"state_dict": model.state_dict(), "hidden": model.hidden, "features": list(FEATURE_NAMES),
                           "meta": meta})


def load_rescorer(path: str | Path) -> Rescorer:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["features"] != list(FEATURE_NAMES):
        raise RuntimeError(f"{path} was trained on other features than this code computes")
    model = Rescorer(len(FEATURE_NAMES), hidden=ckpt["hidden"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    model.version = f"{Path(path).name} ({ckpt['meta'].get('version', '?')}) sha256:{file_digest(path)}"
    model.meta = ckpt["meta"]
    return model
