"""Why does a docking run miss? Search, conformer shape or energy, per complex, on TRAINING complexes.

Per complex (box = crystal ligand + 4 A, fresh ETKDG conformers, seed 0, physics only: the score network saw the
training complexes): dock with `sciddiff.dock.docking.dock`, then compare under OUR objective (inter + intra-ligand
energy, exact pairs, kcal/mol-like) the top-1 pose with (a) the crystal pose relaxed under the same energy with
dock()'s first conformer (`rescore_train.relaxed_crystal`) and (b) the crystal ligand's own geometry relaxed (ring
puckers and bond angles that torsions cannot reach). A miss whose (a) scores lower than our top-1 is a search
failure; one where only (b) does is a conformer-shape failure; one where both score higher is an energy failure.
With --vina, AutoDock Vina 1.2.7 (`vina` + `meeko`, not project dependencies) also scores our top-1 and the crystal
after its own local BFGS (kcal/mol) and docks the complex (exhaustiveness 8; with --vina-dock-only-misses only our
misses); Vina's top pose is then relaxed and scored under our energy as well. The subset is the first --n of
splits/train.txt in `np.random.default_rng(7)` order.

    python examples/dock_diagnose.py --n 36 --vina --vina-dock-only-misses --out runs/diag/before_vina23.jsonl
    python examples/dock_diagnose.py --n 36 --conformers 1 --out runs/diag/c1.jsonl > runs/diag/c1.log 2>&1

Writes one JSON line per complex (rewritten after each, so a run can be stopped) and a summary line at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sciddiff.cli import UserError, check_output_path, options_below
from sciddiff.dock.box import box_from_ligand
from sciddiff.dock.data import complex_files, default_data_root, read_split
from sciddiff.dock.docking import DockSettings, dock
from sciddiff.dock.ligand import rotatable_torsions, symmetric_rmsd
from sciddiff.dock.ligand_io import ligand_coords, load_ligand, pose_mol
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.receptor import load_receptor
from sciddiff.dock.rescore_train import POLISH_LR, relaxed_crystal
from sciddiff.dock.scoring import ScoringFunction
from sciddiff.dock.search import fit_pose, local_opt

sys.path.insert(0, str(Path(__file__).parent))


def training_subset(n: int, seed: int = 7) -> list[str]:
    """A fixed seeded subset of splits/train.txt (not the rescorer's decoy order, which used seed 0)."""
    ids = read_split(default_data_root() / "splits" / "train.txt")
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:n]]


def relax_ours(sf: ScoringFunction, space: PoseSpace, x: np.ndarray) -> torch.Tensor:
    """Our energy of coordinates x (N, 3) of the dock conformer's atoms after the pipeline's exact polish."""
    tr, rot, theta = fit_pose(space, torch.as_tensor(x, dtype=torch.float32)[None])
    p = local_opt(sf, space, tr, rot, theta, steps=30, lr=POLISH_LR, exact=True)
    return space.coords(p.tr, p.rot, p.theta, realign=False).detach()


def vina_tools(protein: str, box):
    """(score(mol, coords) -> (Vina total after local BFGS, kcal/mol; relaxed coords), dock(mol) -> (top pose, CPU s))."""
    from dock_vina_baseline import dock_vina, receptor_pdbqt
    from meeko import (
        MoleculePreparation,
        PDBQTMolecule,
        PDBQTWriterLegacy,
        RDKitMolCreate,
    )
    from rdkit import Chem
    from vina import Vina

    rec = Path("/tmp") / f"diag_rec_{Path(protein).name}.pdbqt"
    rec.write_text(receptor_pdbqt(protein))
    v = Vina(sf_name="vina", cpu=1, seed=0, verbosity=0)
    v.set_receptor(str(rec))
    v.compute_vina_maps(center=[float(c) for c in box.center], box_size=[float(s) + 8.0 for s in box.size])

    def score(mol, coords):
        m = pose_mol(mol, coords)
        molh = Chem.AddHs(m, addCoords=True)
        setup = MoleculePreparation().prepare(molh)[0]
        lig = PDBQTWriterLegacy.write_string(setup)[0]
        v.set_ligand_from_string(lig)
        e = v.optimize()
        out = Path("/tmp") / "diag_opt.pdbqt"
        v.write_pose(str(out), overwrite=True)
        pose = Chem.RemoveHs(RDKitMolCreate.from_pdbqt_mol(PDBQTMolecule(out.read_text(), skip_typing=True))[0])
        order = list(pose.GetSubstructMatch(mol))
        return float(e[0]), np.asarray(pose.GetConformer().GetPositions())[order]

    def dock_(mol):
        coords, cpu = dock_vina(protein, mol, box)
        return coords[0], cpu

    return score, dock_


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, counts: tuple[str, ...]) -> Path:
    """Refuse bad counts, a missing data folder, complex ids it does not hold, --vina without Vina, or an unwritable
    --out before any docking (parser.error: one line, exit 2); returns the data root."""
    if bad := options_below(args, 1, *counts):
        parser.error(", ".join(bad) + " must be at least 1")
    root = default_data_root()
    if not (root / "splits" / "train.txt").is_file():
        parser.error(f"no docking data at {root} (set SCIDDIFF_DATA)")
    try:
        check_output_path(args.out)
        for cid in getattr(args, "ids", None) or ():  # a complex that is not there: said now, not mid-run
            if not all(Path(f).is_file() for f in complex_files(root, cid)):
                raise UserError(f"no complex {cid} under {root} (<id>_protein.pdb[.gz] and <id>_ligand.sdf[.gz])")
    except UserError as err:
        parser.error(str(err))
    if getattr(args, "vina", False):
        try:
            import meeko  # noqa: F401
            import vina  # noqa: F401
        except ImportError as err:
            parser.error(f"--vina needs AutoDock Vina and meeko: pip install vina meeko ({err})")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=36, help="training complexes of the seeded subset (default 36)")
    p.add_argument("--ids", nargs="*", default=None, help="complex ids instead of the seeded subset")
    p.add_argument("--out", required=True, help="JSON-lines file, one row per complex")
    p.add_argument("--vina", action="store_true", help="score with Vina and dock with Vina too (slow)")
    p.add_argument("--vina-dock-only-misses", action="store_true", help="Vina docking only where our top-1 misses")
    p.add_argument("--mc-rounds", type=int, default=None, help="Monte Carlo rounds (default: dock's)")
    p.add_argument("--mc-chains", type=int, default=None, help="Monte Carlo chains (default: dock's)")
    p.add_argument("--scoring", choices=("vina", "vinardo"), default="vina", help="scoring function (default vina)")
    p.add_argument("--conformers", type=int, default=DockSettings.conformers,
                   help=f"ETKDG conformers embedded (default {DockSettings.conformers})")
    args = p.parse_args()
    root = check_args(p, args, ("n", "mc_rounds", "mc_chains", "conformers"))
    torch.set_num_threads(1)
    settings = DockSettings(samples=0, scoring=args.scoring, conformers=args.conformers)
    if args.mc_rounds:
        settings.mc_rounds = args.mc_rounds
    if args.mc_chains:
        settings.mc_chains = args.mc_chains
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid in args.ids or training_subset(args.n):
        protein, ligand = complex_files(root, cid)
        receptor, mol = load_receptor(protein), load_ligand(ligand)
        box = box_from_ligand(ligand, 4.0)
        xtal = ligand_coords(mol)
        t0 = time.perf_counter()
        try:
            res = dock(receptor, mol, box, None, settings, show_progress=False)
        except Exception as err:  # noqa: BLE001 - a diagnostic run records failures and goes on
            print(f"{cid}: {err}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        tors = rotatable_torsions(mol)
        sf = ScoringFunction(receptor, mol, tors.n, function=args.scoring)
        cryst = relaxed_crystal(receptor, mol)
        # the crystal ligand's own geometry (ring puckers, angles) relaxed: what a perfect conformer would reach
        geom = PoseSpace(torch.as_tensor(xtal), tors)
        tr, rot, theta = fit_pose(geom, torch.as_tensor(xtal)[None])
        pg = local_opt(sf, geom, tr, rot, theta, steps=200, lr=POLISH_LR, exact=True)
        top = torch.as_tensor(res.coords[:1])
        with torch.no_grad():
            e_top, e_cryst = float(sf.energy(top, exact=True)[0]), float(sf.energy(cryst, exact=True)[0])
            e_geom = float(sf.energy(geom.coords(pg.tr, pg.rot, pg.theta, realign=False), exact=True)[0])
        cand_rmsd = [symmetric_rmsd(mol, x, xtal) for x in res.candidates]
        row = {"complex": cid, "n_heavy": mol.GetNumAtoms(), "n_tors": tors.n, "seconds": round(seconds, 1),
               "rmsd_top1": round(symmetric_rmsd(mol, res.coords[0], xtal), 2),
               "rmsd_best_cand": round(min(cand_rmsd), 2),
               "rmsd_relaxed_crystal": round(symmetric_rmsd(mol, cryst[0].numpy(), xtal), 2),
               "e_top1": round(e_top, 3), "e_relaxed_crystal": round(e_cryst, 3),
               "e_relaxed_crystal_geometry": round(e_geom, 3)}
        if args.vina:
            try:
                vscore, vdock = vina_tools(protein, box)
                row["vina_e_top1"], _ = vscore(mol, res.coords[0])
                row["vina_e_crystal"], _ = vscore(mol, xtal)
                if not args.vina_dock_only_misses or row["rmsd_top1"] >= 2:
                    vx, cpu = vdock(mol)
                    space = PoseSpace(torch.as_tensor(_conformer(mol)), tors)  # seed 0, the input's atom order
                    vr = relax_ours(sf, space, vx)
                    with torch.no_grad():
                        row["e_vina_top1_relaxed"] = round(float(sf.energy(vr, exact=True)[0]), 3)
                    row["vina_e_vina_top1"], _ = vscore(mol, vx)
                    row["rmsd_vina_top1"] = round(symmetric_rmsd(mol, vx, xtal), 2)
                    row["rmsd_vina_top1_relaxed"] = round(symmetric_rmsd(mol, vr[0].numpy(), xtal), 2)
                    row["vina_cpu"] = round(cpu, 1)
            except Exception as err:  # noqa: BLE001
                row["vina_error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summarize(rows)


def _conformer(mol) -> np.ndarray:
    from sciddiff.dock.ligand import generate_conformers

    return generate_conformers(mol, 1, seed=0)[0]


def summarize(rows: list[dict]) -> None:
    r = {k: np.array([row.get(k, np.nan) for row in rows], float) for k in rows[0]
         if k != "complex" and k not in ("vina_error",)}
    miss = r["rmsd_top1"] >= 2
    search_fail = miss & (r["e_relaxed_crystal"] < r["e_top1"])
    geom_lower = miss & (r["e_relaxed_crystal_geometry"] < r["e_top1"])
    print(json.dumps({"n": len(rows), "top1": float((r["rmsd_top1"] < 2).mean()),
                      "oracle_candidates": float((r["rmsd_best_cand"] < 2).mean()),
                      "misses": int(miss.sum()), "misses_crystal_lower_energy (search)": int(search_fail.sum()),
                      "misses_crystal_higher_energy (scoring)": int((miss & ~search_fail).sum()),
                      "misses_crystal_geometry_lower_energy": int(geom_lower.sum()),
                      "median_seconds": float(np.median(r["seconds"]))}), flush=True)


if __name__ == "__main__":
    main()
