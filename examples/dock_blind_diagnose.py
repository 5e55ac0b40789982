"""Why does BLIND docking miss? Pocket recall, search within the right pocket, or ranking across pockets.

Per TRAINING complex (the seeded subset of `dock_diagnose.training_subset`; physics only, `--model none`: the
score network saw these complexes; fresh ETKDG conformers, seed 0): the pockets `sciddiff.dock.pockets` finds
(up to --list of them) and the rank of the first one whose centre lies within 4 A of the crystal ligand's centroid
and of the first whose box contains it; then each of the --pockets best pockets is docked on its own with
`dock(..., box=pocket)`, which is what blind `dock()` does per pocket (it shares one random stream among them,
polishes the best distinct minima over all pockets and, by default, searches again around the best two pockets' best
poses, which this script leaves out). Blind top-1 = the lowest-energy top-1 over the pockets, as in
`dock()`. A blind miss is then
- recall: no searched pocket contains the crystal centroid;
- search: a searched pocket contains it, but no pocket's top-1 is within 2 A;
- ranking: some pocket's top-1 is within 2 A but a pose in another pocket has a lower energy.

    python examples/dock_blind_diagnose.py --n 20 --out runs/diag_blind/before.jsonl > runs/diag_blind/before.log 2>&1
    python examples/dock_blind_diagnose.py --n 20 --pockets 6 --out runs/diag_blind/after_p6.jsonl
    python examples/dock_blind_diagnose.py --n 20 --pockets 6 --mc-chains 48 --out runs/diag_blind/after_p6_c48.jsonl

Any split file instead of the training subset, and pocket recall alone (`--pockets 0`: no docking, ~0.5 s a
complex; recall at the top 1, 2, 3, 6 and --list pockets in the summary):

    python examples/dock_blind_diagnose.py --split ../shared/data/docking/splits/val.txt --pockets 0 --out runs/diag_blind/val_recall.jsonl

Writes one JSON line per complex (rewritten after each) and a summary line at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sciddiff.cli import UserError
from sciddiff.dock.data import complex_files, read_split
from sciddiff.dock.docking import dock
from sciddiff.dock.ligand import canonical_atom_order, generate_conformers, symmetric_rmsd
from sciddiff.dock.ligand_io import ligand_coords, load_ligand
from sciddiff.dock.pockets import find_pockets
from sciddiff.dock.receptor import load_receptor
from sciddiff.dock.settings import DockSettings

sys.path.insert(0, str(Path(__file__).parent))
from dock_diagnose import check_args, training_subset

SITE_DISTANCE = 4.0  # A: a pocket centre this close to the crystal centroid "is" the site


def site_ranks(boxes: list, centroid: np.ndarray) -> tuple[int | None, int | None]:
    """Rank of the first pocket whose centre is within SITE_DISTANCE of `centroid` and of the first containing it."""
    near = [i for i, b in enumerate(boxes) if np.linalg.norm(b.center - centroid) < SITE_DISTANCE]
    inside = [i for i, b in enumerate(boxes) if b.contains(centroid[None])[0]]
    return (near[0] if near else None), (inside[0] if inside else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="training complexes of the seeded subset (default 20)")
    p.add_argument("--out", required=True, help="JSON-lines file, one row per complex")
    p.add_argument("--split", help="complexes of this split file instead of the training subset (--n ignored)")
    p.add_argument("--pockets", type=int, default=DockSettings.pockets,
                   help="pockets docked; 0: pocket recall alone, no docking")
    p.add_argument("--list", type=int, default=10, help="pockets listed for the recall numbers")
    p.add_argument("--mc-chains", type=int, default=DockSettings.mc_chains,
                   help=f"Monte Carlo chains per pocket (default {DockSettings.mc_chains})")
    p.add_argument("--mc-rounds", type=int, default=DockSettings.mc_rounds,
                   help=f"Monte Carlo rounds (default {DockSettings.mc_rounds})")
    args = p.parse_args()
    if args.split is not None:
        try:
            args.ids = read_split(args.split)
        except UserError as err:
            p.error(f"--split: {err}")
        if not args.ids:
            p.error(f"--split {args.split} lists no complexes")
    if args.pockets < 0:
        p.error("--pockets must be at least 0")
    root = check_args(p, args, ("n", "list", "mc_chains", "mc_rounds"))
    torch.set_num_threads(1)
    settings = DockSettings(samples=0, mc_chains=args.mc_chains, mc_rounds=args.mc_rounds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid in args.ids if args.split is not None else training_subset(args.n):
        protein, ligand = complex_files(root, cid)
        receptor, mol = load_receptor(protein), load_ligand(ligand)
        xtal = ligand_coords(mol)
        # as dock() sizes pockets: its first conformer, embedded in canonical atom order
        extent = float(np.ptp(generate_conformers(canonical_atom_order(mol)[0], 1, seed=0)[0], 0).max())
        t0 = time.perf_counter()
        boxes = find_pockets(receptor, n=max(args.list, args.pockets), ligand_extent=extent)
        near, inside = site_ranks(boxes, xtal.mean(0))
        per = []
        for box in boxes[: args.pockets]:
            res = dock(receptor, mol, box, None, settings, show_progress=False)
            rm = [symmetric_rmsd(mol, x, xtal) for x in res.coords]
            per.append({"energy": [round(float(e), 3) for e in res.energy],
                        "score": [round(float(e), 3) for e in res.score], "rmsd": [round(r, 2) for r in rm],
                        "best_candidate": round(min(symmetric_rmsd(mol, x, xtal) for x in res.candidates), 2)})
        seconds = time.perf_counter() - t0
        pool = sorted((e, r) for q in per for e, r in zip(q["energy"], q["rmsd"]))
        row = {"complex": cid, "n_heavy": mol.GetNumAtoms(), "extent": round(extent, 1), "n_pockets": len(boxes),
               "rank_near": near, "rank_inside": inside, "seconds": round(seconds, 1),
               "centre_distance": [round(float(np.linalg.norm(b.center - xtal.mean(0))), 1) for b in boxes],
               "sizes": [b.size.round(1).tolist() for b in boxes[: args.pockets]],
               "top1": pool[0][1] if pool else None, "top5": min(r for _, r in pool[:5]) if pool else None,
               "pockets": per}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "pockets"}), flush=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(summarize(rows, args.pockets) if args.pockets else recall(rows, args.list)), flush=True)


def recall(rows: list[dict], listed: int) -> dict:
    """Complexes whose site lies within SITE_DISTANCE of one of the top k pocket centres / inside one of their boxes."""
    ks = sorted({k for k in (1, 2, 3, 6, listed) if k <= listed})

    def found(key: str, k: int) -> int:
        return sum(r[key] is not None and r[key] < k for r in rows)

    return {"n": len(rows), "site_near_top_k": {k: found("rank_near", k) for k in ks},
            "site_inside_top_k": {k: found("rank_inside", k) for k in ks}}


def summarize(rows: list[dict], searched: int) -> dict:
    """Counts of blind hits and of misses by cause (recall / search / ranking)."""
    hit = [r for r in rows if r["top1"] is not None and r["top1"] < 2]
    miss = [r for r in rows if r not in hit]
    found = [r for r in miss if r["rank_inside"] is not None and r["rank_inside"] < searched]
    ranking = [r for r in found if any(q["rmsd"] and q["rmsd"][0] < 2 for q in r["pockets"])]
    return {"n": len(rows), "top1": len(hit), "top5": sum(r["top5"] is not None and r["top5"] < 2 for r in rows),
            "site_near_in_searched": sum(r["rank_near"] is not None and r["rank_near"] < searched for r in rows),
            "site_inside_searched": sum(r["rank_inside"] is not None and r["rank_inside"] < searched for r in rows),
            "miss_recall": len(miss) - len(found), "miss_search": len(found) - len(ranking),
            "miss_ranking": len(ranking), "median_seconds": float(np.median([r["seconds"] for r in rows]))}


if __name__ == "__main__":
    main()
