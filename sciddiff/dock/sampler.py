"""Reverse diffusion of ligand poses for ONE complex with the core's sampler on R^3 x SO(3) x T^m.

The receptor is encoded once; each step evaluates the network on all samples at once (per-sample work is the
ligand graph and its cross edges only). Poses are `PoseSpace` points (realign=True: Kabsch-decoupled torsions):
tr (B, 3) Angstrom, rot (B, 3, 3), tor (B, m) radians. The network returns lab-frame rotation scores; the core's
SO(3) tangents are body-frame, so they are multiplied by R^T here. Noise levels follow DiffDock: one time t per
step, sigma_c(t) geometric per component, t from 1 to t_min in `steps` equal steps. The default sampler is Euler
ancestral (its last step, to sigma_min, re-noises at that scale: ~0.1 A); the reverse SDE adds no noise on the last
step (DiffDock's choice). Euler ancestral found more poses within 2 A in the docking pipeline (docs/dock.md).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from sciddiff.cli import file_digest
from sciddiff.core.samplers import sample_pf_ode, sample_reverse_sde
from sciddiff.core.spaces import SO3, Euclidean, Product, Torus
from sciddiff.dock.model import ScoreModel, ScoreModelConfig
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.settings import SAMPLERS, DockSettings


def load_score_model(path: str | Path, device: str | torch.device = "cpu") -> ScoreModel:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("kind") != "sciddiff-dock-score":
        raise ValueError("not a docking score model (score_model.pt of python -m sciddiff.dock.train)")
    model = ScoreModel(ScoreModelConfig(**blob["config"]))
    model.load_state_dict(blob["weights"])
    model.version = f"{Path(path).name}@step{blob.get('step', '?')} sha256:{file_digest(path)}"
    return model.to(device).eval()


class ComplexScore:
    """score_model(x, sigma) for the core samplers, bound to one receptor and one ligand conformer."""

    def __init__(self, model: ScoreModel, rec: dict[str, torch.Tensor], lig: dict[str, torch.Tensor], space: PoseSpace):
        self.model, self.rec, self.lig, self.space = model, rec, lig, space
        with torch.no_grad():
            self.rec_h = model.encode_receptor(rec)
        self.n_atoms = lig["feat"].shape[0]
        self.evaluations = 0

    def batch_inputs(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n = pos.shape[:2]
        dev = pos.device
        offsets = torch.arange(b, device=dev) * n
        bonds = self.lig["bond_index"]
        tor = self.lig["tor_bonds"]
        sample = torch.arange(b, device=dev).repeat_interleave(n)
        return {
            "pos": pos.reshape(-1, 3), "feat": self.lig["feat"].repeat(b, 1), "batch": sample,
            "rec_batch": torch.zeros_like(sample),
            "bond_index": (bonds[:, None, :] + offsets[None, :, None]).reshape(2, -1),
            "bond_type": self.lig["bond_type"].repeat(b, 1),
            "tor_bonds": (tor[None] + offsets[:, None, None]).reshape(-1, 2),
        }

    def t_of(self, sigma_tr: torch.Tensor) -> torch.Tensor:
        cfg = self.model.cfg
        return (torch.log(sigma_tr / cfg.tr_sigma_min) / math.log(cfg.tr_sigma_max / cfg.tr_sigma_min)).clamp(0, 1)

    @torch.no_grad()
    def __call__(self, x: dict[str, torch.Tensor], sigma: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rot = x["rot"]
        pos = self.space.coords(x["tr"], rot, x["tor"])
        t = self.t_of(sigma["tr"].to(pos.dtype))
        tr_s, rot_s, tor_s = self.model(self.batch_inputs(pos), self.rec, t, self.rec_h)
        self.evaluations += 1
        body = (rot.transpose(-1, -2) @ rot_s[..., None])[..., 0]
        return {"tr": tr_s, "rot": body, "tor": tor_s.reshape(pos.shape[0], self.space.n_torsions)}


def sigma_schedule(cfg: ScoreModelConfig, steps: int, t_min: float = 0.0) -> dict[str, torch.Tensor]:
    return cfg.sigmas(torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64))


def sample_poses(score: ComplexScore, center: torch.Tensor, n: int, steps: int, generator: torch.Generator,
                 progress=iter, sampler: str = DockSettings.sampler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n poses by reverse diffusion from the prior (translation N(center, sigma_tr_max^2), uniform rotation and
    torsions) with the core's `sampler`: "euler_ancestral" (k-diffusion's) or "reverse_sde" (DiffDock's geodesic
    random walk), one network call per step either way. Returns (tr, rot, tor)."""
    cfg = score.model.cfg
    m = score.space.n_torsions
    space = Product(tr=Euclidean(3), rot=SO3(), tor=Torus(m))
    dtype = score.space.local.dtype
    x0 = space.prior_sample(n, {"tr": cfg.tr_sigma_max, "rot": None, "tor": None}, generator=generator, dtype=dtype)
    x0["tr"] = x0["tr"] + center.to(dtype)
    sig = sigma_schedule(cfg, steps)
    if sampler == "euler_ancestral":
        out = sample_pf_ode(score, space, x0, sig, method="euler_ancestral", generator=generator, progress=progress)
    elif sampler == "reverse_sde":
        out = sample_reverse_sde(score, space, x0, sig, generator=generator, progress=progress)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return out["tr"], out["rot"], out["tor"]
