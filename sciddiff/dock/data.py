"""Training data: preprocessing real complexes into ONE tensor file, and noising batches of them on any device.

`preprocess` (needs rdkit + biopython; CPU) turns each complex of a split into a dict of tensors: ligand atom
features, bonds, rotatable bonds with their moving-side masks, K conformer-matched poses (fresh ETKDG conformers
whose torsions are set to the crystal's and which are Kabsch-aligned onto it: the training target x0, DiffDock's
"conformer matching"), and the receptor residues whose C-alpha lies within `crop` A of the ligand centroid.
`TrainSet` (pure torch; runs where rdkit does not) collates complexes into a batch and applies the forward
noise on R^3 x SO(3) x T^m with the core's spaces, returning the network inputs and the exact scores.

Noise conventions: x0 has the crystal centroid tr0 and orientation R0 = I relative to the matched conformer;
tr_t = tr0 + sigma_tr eps; R_t = Exp(v), v ~ IGSO(3)(sigma_rot) (body = lab frame here since R0 = I);
torsions theta_t = theta0 + wrapped-normal(sigma_tor), applied to the moving sides and Kabsch re-aligned.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sciddiff.cli import print_note
from sciddiff.core.so3 import rotate_about_axis
from sciddiff.core.spaces import SO3, Euclidean, Torus
from sciddiff.dock.model import ScoreModelConfig
from sciddiff.nn.graph import segment_mean

CROP = 30.0          # stored residues: C-alpha within this of the crystal ligand centroid
TRAIN_CROP = 22.0    # residues the network sees: within this of the ligand centroid + a random offset
CROP_JITTER = 4.0    # offset std per axis (A), norm capped at twice that


# ----------------------------------------------------------------------------------------------------- preprocessing
def preprocess_complex(protein: str, ligand: str, n_conformers: int = 2, seed: int = 0, crop: float = CROP) -> dict:
    from sciddiff.dock import featurize
    from sciddiff.dock import ligand as lig
    from sciddiff.dock.ligand_io import ligand_coords, load_ligand
    from sciddiff.dock.receptor import load_receptor

    rec = load_receptor(protein)
    mol = load_ligand(ligand)
    xtal = ligand_coords(mol)
    tors = lig.rotatable_torsions(mol)
    confs = lig.generate_conformers(mol, n_conformers, seed=seed)
    matched = np.stack([lig.match_torsions(c, xtal, tors) for c in confs])
    rmsd = [float(np.sqrt(((m - xtal) ** 2).sum(-1).mean())) for m in matched]
    g = featurize.ligand_graph(mol, tors)
    r = featurize.receptor_graph(rec, center=xtal.mean(0), radius=crop)
    if not len(r["pos"]):  # a ligand file of another structure, or one frame apart: nothing to learn a pose from
        raise ValueError(f"no receptor residue within {crop:g} A of the ligand (are the protein and ligand files of "
                         "one structure?)")
    return {
        "feat": g["feat"].half(), "bond_index": g["bond_index"].int(), "bond_type": g["bond_type"].argmax(-1).to(torch.int8),
        "tor_bonds": g["tor_bonds"].int(), "tor_mask": g["tor_mask"],
        "pos": torch.as_tensor(matched), "xtal": torch.as_tensor(xtal), "match_rmsd": torch.tensor(rmsd),
        "rec_pos": r["pos"], "rec_type": r["res_type"].to(torch.uint8), "rec_vec": r["vec"].half(),
    }


def preprocess(data_root: str, split: str, out: str, n_conformers: int = 2, limit: int | None = None) -> int:
    """Write the split's complexes to `out`; a complex that fails is reported and skipped. Returns 1 if any failed
    (as `dock --batch` and `dock-eval`), else 0."""
    from sciddiff.cli import UserError
    from sciddiff.train.checkpoint import save_checkpoint
    from sciddiff.train.log import progress

    listed = read_split(split)
    ids = list(dict.fromkeys(listed))[:limit]  # a complex listed twice would weigh double in training
    if repeats := len(listed) - len(set(listed)):
        print_note(f"{split} lists {repeats} complex(es) more than once: each prepared once")
    complexes, names, failed = [], [], []
    for cid in progress(ids, desc="preprocess"):
        try:
            ligand = complex_ligand(data_root, cid)[1]  # the SDF, or the MOL2 where the SDF does not sanitize
            complexes.append(preprocess_complex(complex_files(data_root, cid)[0], ligand, n_conformers))
            names.append(cid)
        except Exception as err:  # report and skip: one broken complex must not sink the file
            failed.append(f"{cid}: {err}")
    if not complexes:  # a file a trainer cannot use is not written
        raise UserError(f"none of the {len(ids)} complexes of {split} could be prepared"
                        + (f" (first: {failed[0]})" if failed else ""))
    save_checkpoint(out, {"complexes": complexes, "names": names, "failed": failed,
                          "meta": {"split": split, "n_conformers": n_conformers, "crop": CROP, "created": time.ctime()}})
    size = Path(out).stat().st_size / 2**20
    print(f"wrote {out}: {len(complexes)} complexes ({len(failed)} failed) {size:.1f} MiB")
    for f in failed:
        print("  failed", f)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------- batching
def batched_torsion_update(pos: torch.Tensor, tor_bonds: torch.Tensor, tor_mask: torch.Tensor, tor_rank: torch.Tensor,
                           delta: torch.Tensor) -> torch.Tensor:
    """Apply torsion changes to many molecules at once.

    pos (N, 3) all atoms; tor_bonds (M, 2) global atom indices (u, v), the side of v moves; tor_mask (M, N) bool;
    tor_rank (M,) the bond's index within its molecule (bonds of equal rank belong to different molecules, so
    they are applied together); delta (M,) radians.
    """
    if tor_bonds.shape[0] == 0:
        return pos
    for k in range(int(tor_rank.max()) + 1):
        sel = (tor_rank == k).nonzero().squeeze(-1)
        m = tor_mask[sel]                                     # (S, N), at most one row per molecule
        moved = m.any(0)
        which = (m.float() * torch.arange(1, len(sel) + 1, device=pos.device, dtype=torch.float32)[:, None]).amax(0).long() - 1
        j = sel[which.clamp_min(0)]
        origin = pos[tor_bonds[j, 1]]
        axis = origin - pos[tor_bonds[j, 0]]
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        pos = torch.where(moved[:, None], rotate_about_axis(pos, origin, axis, delta[j][:, None]), pos)
    return pos


def batched_kabsch_onto(p: torch.Tensor, q: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """Rigidly move each molecule of p onto the matching molecule of q (least squares); returns moved p."""
    pc, qc = segment_mean(p, batch, n), segment_mean(q, batch, n)
    a, b = p - pc[batch], q - qc[batch]
    h = p.new_zeros(n, 3, 3).index_add(0, batch, a[:, :, None] * b[:, None, :])
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    diag = torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)
    r = vt.transpose(-1, -2) @ torch.diag_embed(diag) @ u.transpose(-1, -2)
    return (r[batch] @ a[:, :, None])[:, :, 0] + qc[batch]


class TrainSet:
    """The preprocessed complexes on one device, with `batch(indices, generator)` returning noised inputs."""

    def __init__(self, path: str | dict, device: torch.device | str = "cpu", cfg: ScoreModelConfig | None = None):
        """`path`: the file `preprocess` wrote, or its loaded contents."""
        blob = path if isinstance(path, dict) else torch.load(path, map_location="cpu", weights_only=True)
        self.names = blob["names"]
        self.device = torch.device(device)
        self.cfg = cfg or ScoreModelConfig()
        self.items = [{k: v.to(self.device) for k, v in c.items()} for c in blob["complexes"]]

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: list[int], generator: torch.Generator | None = None,
              t: torch.Tensor | None = None) -> tuple[dict, dict, torch.Tensor, dict]:
        dev = self.device
        g = len(indices)
        lig = {k: [] for k in ("pos", "feat", "batch", "bond_index", "bond_type", "tor_bonds", "tor_rank")}
        rec = {k: [] for k in ("pos", "res_type", "vec", "batch")}
        masks, n_atoms, n_res = [], 0, 0
        for b, i in enumerate(indices):
            c = self.items[i]
            k = int(torch.randint(0, c["pos"].shape[0], (1,), generator=generator, device=dev))
            n = c["feat"].shape[0]
            lig["pos"].append(c["pos"][k])
            lig["feat"].append(c["feat"].float())
            lig["batch"].append(torch.full((n,), b, device=dev, dtype=torch.long))
            lig["bond_index"].append(c["bond_index"].long() + n_atoms)
            lig["bond_type"].append(torch.nn.functional.one_hot(c["bond_type"].long(), 4).float())
            lig["tor_bonds"].append(c["tor_bonds"].long() + n_atoms)
            lig["tor_rank"].append(torch.arange(c["tor_bonds"].shape[0], device=dev))
            masks.append((n_atoms, c["tor_mask"]))
            # Receptor crop around a point near (not at) the ligand, so that the crop centre does not give the
            # answer away: the network has to find the site from the residues.
            offset = torch.randn(3, generator=generator, device=dev) * CROP_JITTER
            offset = offset * (2 * CROP_JITTER / offset.norm().clamp_min(2 * CROP_JITTER))
            centre = c["pos"][k].mean(0) + offset
            keep = (c["rec_pos"] - centre).norm(dim=-1) <= TRAIN_CROP
            r = int(keep.sum())
            rec["pos"].append(c["rec_pos"][keep])
            rec["res_type"].append(c["rec_type"][keep].long())
            rec["vec"].append(c["rec_vec"][keep].float())
            rec["batch"].append(torch.full((r,), b, device=dev, dtype=torch.long))
            n_atoms += n
            n_res += r
        lig = {k: torch.cat(v, 1 if k == "bond_index" else 0) for k, v in lig.items()}
        rec = {k: torch.cat(v) for k, v in rec.items()}
        m_total = lig["tor_bonds"].shape[0]
        tor_mask = torch.zeros(m_total, n_atoms, dtype=torch.bool, device=dev)
        row = 0
        for offset, m in masks:
            tor_mask[row: row + m.shape[0], offset: offset + m.shape[1]] = m
            row += m.shape[0]
        lig["rec_batch"] = lig["batch"]
        lig["tor_batch"] = lig["batch"][lig["tor_bonds"][:, 0]] if m_total else lig["batch"].new_zeros(0)
        # ---- forward noise
        if t is None:
            t = torch.rand(g, generator=generator, device=dev)
        sig = self.cfg.sigmas(t)
        x0 = lig["pos"]
        center0 = segment_mean(x0, lig["batch"], g)
        tr_t, tr_score = Euclidean(3).perturb(center0, sig["tr"], generator)
        eye = torch.eye(3, device=dev).expand(g, 3, 3)
        rot_t, rot_score = SO3().perturb(eye, sig["rot"], generator)
        tor_sigma = sig["tor"][lig["tor_batch"]][None]
        theta_delta, tor_score = Torus(m_total).perturb(torch.zeros(1, m_total, device=dev), tor_sigma, generator)
        local = x0 - center0[lig["batch"]]
        moved = batched_torsion_update(local, lig["tor_bonds"], tor_mask, lig["tor_rank"], theta_delta[0])
        local = batched_kabsch_onto(moved, local, lig["batch"], g)
        local = local - segment_mean(local, lig["batch"], g)[lig["batch"]]
        lig["pos"] = (rot_t[lig["batch"]] @ local[:, :, None])[:, :, 0] + tr_t[lig["batch"]]
        # rotation score: the kernel's body-frame score equals the lab-frame one because R0 = I
        targets = {"tr": tr_score, "rot": rot_score, "tor": tor_score[0], "sigma": sig}
        return lig, rec, t, targets


def dsm_loss(model, lig: dict, rec: dict, t: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Denoising score matching, each component weighted by 1 / E|score|^2 (core convention; DiffDock's)."""
    sig = targets["sigma"]
    tr, rot, tor = model(lig, rec, t)
    w_tr = Euclidean(3).score_norm_sq(sig["tr"]).float()
    w_rot = SO3().score_norm_sq(sig["rot"]).float()
    parts = {"tr": ((tr.float() - targets["tr"]) ** 2).sum(-1).div(w_tr).mean(),
             "rot": ((rot.float() - targets["rot"]) ** 2).sum(-1).div(w_rot).mean()}
    if tor.numel():
        w_tor = Torus(1).score_norm_sq(sig["tor"][lig["tor_batch"]]).float()
        parts["tor"] = ((tor.float() - targets["tor"]) ** 2).div(w_tor).mean()
    return torch.stack(list(parts.values())).mean(), parts


def main(argv: list[str] | None = None) -> int:
    from sciddiff.cli import DefaultsHelpFormatter

    p = argparse.ArgumentParser(prog="python -m sciddiff.dock.data",
                                description="Preprocess a docking split into one tensor file for `sciddiff.dock.train`.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="docking data root (default $SCIDDIFF_DATA/docking or ../shared/data/docking)")
    p.add_argument("--split", required=True, help="file listing <folder>/<complex_id> per line")
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--conformers", type=int, default=2, help="conformer-matched poses per complex")
    p.add_argument("--limit", type=int, default=None, help="the split's first N complexes")
    from sciddiff.cli import run_command

    return run_command(_preprocess_command, p.parse_args(argv))


def _preprocess_command(a: argparse.Namespace) -> int:
    from sciddiff.cli import UserError, check_output_path, options_below

    if bad := options_below(a, 1, "conformers", "limit"):
        raise UserError(f"{bad[0]} must be >= 1")
    root = Path(a.data) if a.data else default_data_root()
    if not root.is_dir():
        raise UserError(f"docking data folder not found: {root} (pass --data or set SCIDDIFF_DATA)")
    if not Path(a.split).is_file():
        raise UserError(f"split file not found: {a.split}")
    if not read_split(a.split):
        raise UserError(f"no complexes in {a.split}")
    check_output_path(a.out, inputs={"--split": a.split})
    torch.set_num_threads(1)
    return preprocess(str(root), a.split, a.out, a.conformers, a.limit)


def read_split(path: str | Path) -> list[str]:
    """Complex ids (e.g. `val/1abc`), one per line of a split file; blank lines and `#` comments are skipped, and a
    trailing `/` (as `ls -d */` writes folders) is dropped."""
    from sciddiff.dock.files import read_text  # plain or .gz

    lines = (ln.split("#", 1)[0].strip().rstrip("/") for ln in read_text(path).splitlines())
    return [ln for ln in lines if ln]


LIGAND_SUFFIXES = (".sdf.gz", ".sdf", ".mol2.gz", ".mol2")


def complex_files(root: str | Path, cid: str) -> tuple[str, str]:
    """(protein, ligand) paths of complex `cid` under the docking data root: `<cid>/<name>_protein.pdb[.gz]` (or
    .cif, .pdbqt, .ent, .mmcif, each optionally .gz) and `<cid>/<name>_ligand.sdf[.gz]` (or .mol2[.gz]), name = the
    last part of cid; the layout of shared/data/docking and of the PoseBusters benchmark sets. The first suffix that
    exists wins, else the first.
    An absolute cid is its own folder, so one split file may list complexes of several roots."""
    from sciddiff.dock.receptor import PROTEIN_FORMATS

    def first(stem: str, suffixes: tuple[str, ...]) -> str:
        paths = _candidate_files(root, cid, stem, suffixes)
        return str(next((p for p in paths if p.is_file()), paths[0]))

    proteins = tuple(f"{s}{z}" for s in PROTEIN_FORMATS for z in (".gz", ""))  # what `dock` reads
    return first("protein", proteins), first("ligand", LIGAND_SUFFIXES)


def _candidate_files(root: str | Path, cid: str, stem: str, suffixes: tuple[str, ...]) -> list[Path]:
    """`<root>/<cid>/<name>_<stem><suffix>` for each suffix, name = the last part of cid."""
    name, folder = cid.split("/")[-1], Path(root) / cid
    return [folder / f"{name}_{stem}{suffix}" for suffix in suffixes]


def complex_ligand(root: str | Path, cid: str):
    """(molecule, path) of complex `cid`'s crystal ligand: the first of its ligand files (in `LIGAND_SUFFIXES` order)
    that loads, so a complex whose SDF fails sanitization is read from its MOL2. Raises the first file's UserError
    if none loads."""
    from sciddiff.cli import UserError
    from sciddiff.dock.ligand_io import load_ligand

    candidates = _candidate_files(root, cid, "ligand", LIGAND_SUFFIXES)
    errors = []
    for path in [p for p in candidates if p.is_file()] or candidates[:1]:  # none there: the first one's "not found"
        try:
            return load_ligand(path), str(path)
        except UserError as err:
            errors.append(err)
    raise errors[0]


def default_data_root() -> Path:
    import os

    base = os.environ.get("SCIDDIFF_DATA")
    if base:
        return Path(base) / "docking"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "docking"


if __name__ == "__main__":
    raise SystemExit(main())
