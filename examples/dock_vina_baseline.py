"""AutoDock Vina 1.2.7 on the same complexes and box as `sciddiff dock-eval --autobox`, for a side-by-side baseline.

Not a project dependency: `pip install vina meeko` into the venv first. Per complex: a fresh ETKDG conformer (seed 0,
`sciddiff.dock.ligand.generate_conformers` settings, hydrogens kept) prepared by meeko; the receptor written as PDBQT
from its PDB with AutoDock types (polar hydrogens, present in these files, become HD donors); box = crystal ligand
+ 4 A (`box_from_ligand`); Vina scoring, exhaustiveness 8, 9 poses, seed 0, one CPU. Symmetry-corrected RMSD of
the poses to the crystal ligand (heavy atoms, in place), top-1 / top-5 < 2 A, median top-1 RMSD, PoseBusters redock
checks of the top-1 pose (as dock-eval), CPU seconds.

    python examples/dock_vina_baseline.py --split ../shared/data/docking/splits/val.txt --offset 3 --every 7 \\
        --limit 40 --out runs/eval_box_vina
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem
from scipy.spatial import cKDTree

from sciddiff.cli import UserError, check_output_path, run_command
from sciddiff.dock.box import box_from_ligand
from sciddiff.dock.data import complex_files, default_data_root, read_split
from sciddiff.dock.evaluate import posebusters_valid, success_rates
from sciddiff.dock.ligand import symmetric_rmsd
from sciddiff.dock.ligand_io import ligand_coords, load_ligand, pose_mol
from sciddiff.dock.receptor import load_receptor

AROMATIC_C = {("PHE", n) for n in ("CG", "CD1", "CD2", "CE1", "CE2", "CZ")} | \
    {("TYR", n) for n in ("CG", "CD1", "CD2", "CE1", "CE2", "CZ")} | \
    {("TRP", n) for n in ("CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2")} | \
    {("HIS", n) for n in ("CG", "CD2", "CE1")}
METAL_TYPES = {"ZN": "Zn", "MG": "Mg", "CA": "Ca", "FE": "Fe", "MN": "Mn", "CL": "Cl", "BR": "Br", "I": "I", "F": "F"}


def receptor_pdbqt(pdb_path: str) -> str:
    """PDBQT of the protein (no waters): AutoDock atom types from element, residue templates and attached H."""
    with gzip.open(pdb_path, "rt") if pdb_path.endswith(".gz") else open(pdb_path) as fh:
        lines = [ln for ln in fh if ln.startswith(("ATOM", "HETATM")) and ln[17:20] != "HOH"]
    xyz = np.array([[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in lines])
    el = [(ln[76:78].strip() or ln[12:16].strip()[0]).upper() for ln in lines]
    heavy = np.flatnonzero([e != "H" for e in el])
    hydrogens = np.flatnonzero([e == "H" for e in el])
    _, nearest = cKDTree(xyz[heavy]).query(xyz[hydrogens]) if len(hydrogens) else (None, [])
    parent = dict(zip(hydrogens.tolist(), heavy[nearest].tolist()))  # each H's bonded heavy atom
    protonated = set(parent.values())
    out = []
    for i, ln in enumerate(lines):
        e, res, name = el[i], ln[17:20], ln[12:16].strip()
        if e == "H":
            if el[parent[i]] not in ("N", "O"):
                continue  # non-polar hydrogens are merged away, as in AutoDock
            t = "HD"
        elif e == "C":
            t = "A" if (res, name) in AROMATIC_C else "C"
        elif e == "N":
            t = "N" if i in protonated or name == "N" else "NA"
        elif e == "O":
            t = "OA"
        elif e == "S":
            t = "SA"
        else:
            t = METAL_TYPES.get(e, "C")
        out.append(f"{ln[:54]:<54}{1.0:6.2f}{0.0:6.2f}    {0.0:+6.3f} {t:<2}\n")
    return "".join(out)


def dock_vina(protein: str, crystal: Chem.Mol, box, seed: int = 0) -> tuple[list[np.ndarray], float]:
    from meeko import (
        MoleculePreparation,
        PDBQTMolecule,
        PDBQTWriterLegacy,
        RDKitMolCreate,
    )
    from vina import Vina

    t0 = time.process_time()
    molh = Chem.AddHs(Chem.Mol(crystal), addCoords=False)
    molh.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(molh, params) < 0:  # rare: random-coordinate embedding, as generate_conformers does
        params.useRandomCoords = True
        AllChem.EmbedMolecule(molh, params)
    if AllChem.MMFFHasAllMoleculeParams(molh):
        AllChem.MMFFOptimizeMolecule(molh, maxIters=200)
    setup = MoleculePreparation().prepare(molh)[0]
    lig, ok, err = PDBQTWriterLegacy.write_string(setup)
    if not ok:
        raise ValueError(err)
    rec = Path("/tmp") / f"vina_rec_{Path(protein).name}.pdbqt"
    rec.write_text(receptor_pdbqt(protein))
    v = Vina(sf_name="vina", cpu=1, seed=seed, verbosity=0)
    v.set_receptor(str(rec))
    v.set_ligand_from_string(lig)
    v.compute_vina_maps(center=[float(c) for c in box.center], box_size=[float(s) for s in box.size])
    v.dock(exhaustiveness=8, n_poses=9)
    poses = Chem.RemoveHs(RDKitMolCreate.from_pdbqt_mol(PDBQTMolecule(v.poses(n_poses=9), skip_typing=True))[0])
    order = list(poses.GetSubstructMatch(crystal))  # meeko rebuilds the molecule in its own atom order
    if len(order) != crystal.GetNumAtoms():
        raise ValueError("cannot map Vina's poses onto the crystal ligand's atoms")
    coords = [np.asarray(c.GetPositions())[order] for c in poses.GetConformers()]
    return coords, time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="AutoDock Vina baseline, dock-eval's selection and box")
    p.add_argument("--split", required=True, help="file with one <folder>/<complex_id> per line")
    p.add_argument("--data", default=None,
                   help="docking data root (default $SCIDDIFF_DATA/docking or ../shared/data/docking)")
    p.add_argument("--offset", type=int, default=0, help="start at this index of the split (default 0)")
    p.add_argument("--every", type=int, default=1, help="take every k-th complex of the split (default 1)")
    p.add_argument("--limit", type=int, default=None, help="only the first N complexes")
    p.add_argument("--out", required=True, help="folder for results.csv and summary.json")
    return run_command(run_baseline, p.parse_args(argv))


def run_baseline(args: argparse.Namespace) -> None:
    try:
        import meeko  # noqa: F401
        import vina  # noqa: F401
    except ImportError as err:
        raise UserError(f"this baseline needs AutoDock Vina and meeko: pip install vina meeko ({err})") from None
    root = Path(args.data) if args.data else default_data_root()
    if not root.is_dir() or not Path(args.split).is_file():
        raise UserError(f"need the docking data folder ({root}) and the split file ({args.split})")
    if args.every < 1 or args.offset < 0 or (args.limit is not None and args.limit < 1):
        raise UserError("need --every >= 1, --offset >= 0, --limit >= 1")
    ids = read_split(args.split)[args.offset:: args.every][: args.limit]
    out = check_output_path(args.out, folder=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid in ids:
        protein, ligand = complex_files(root, cid)
        row = {"complex": cid, "rmsd_top1": math.inf, "rmsd_top5": math.inf, "pb_valid": False, "pb_failed": "",
               "cpu_s": math.nan, "error": ""}
        try:
            crystal = load_ligand(ligand)
            coords, cpu = dock_vina(protein, crystal, box_from_ligand(ligand, 4.0))
            xtal = ligand_coords(crystal)
            rmsd = [symmetric_rmsd(crystal, c, xtal) for c in coords]
            row.update(rmsd_top1=round(rmsd[0], 3), rmsd_top5=round(min(rmsd[:5]), 3), cpu_s=round(cpu, 1))
            row["pb_valid"], row["pb_failed"] = posebusters_valid(pose_mol(crystal, coords[0]), crystal,
                                                                  load_receptor(protein, keep_waters=False))
        except Exception as err:  # noqa: BLE001 - a baseline run records failures as misses and goes on
            row["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "results.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    cpu = [r["cpu_s"] for r in rows if math.isfinite(r["cpu_s"])]
    summary = {"n": len(rows), **success_rates(rows, "", no_posebusters=False),
               "cpu_seconds_per_complex": round(float(np.mean(cpu)), 1) if cpu else None,
               "errors": sum(1 for r in rows if r["error"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
