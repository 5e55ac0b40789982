"""How close do a score model's raw reverse-diffusion samples come to the crystal pose?

The docking pipeline uses the score model only for search starts, so a model is judged here before any search or
ranking: for each complex, `--samples` poses drawn exactly as `sciddiff dock` draws its diffusion starts (same crop,
conformer, sampler and seeds; box = crystal ligand + `--autobox-add` A), and the symmetry-corrected RMSD of the best
of them to the crystal ligand (A, in place). Prints the complexes with a sample within 2 / 3 A and the median best
RMSD per model; with several `--model`s every complex is sampled by each (same seeds), so the counts pair up.

    python examples/dock_sample_recall.py --split ../shared/data/docking/splits/val.txt --offset 4 --every 7 \
        --limit 40 --model data/dock/score_model.pt runs/dock/score_model.pt --out recall.jsonl
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from tqdm import tqdm

from sciddiff.cli import UserError, check_output_path, load_or_fail, options_below
from sciddiff.dock.box import AUTOBOX_ADD, Box, box_from_ligand, checked_box_size
from sciddiff.dock.cli import DEFAULT_MODEL
from sciddiff.dock.data import complex_files, complex_ligand, default_data_root, read_split
from sciddiff.dock.docking import diffusion_starts
from sciddiff.dock.ligand import canonical_atom_order, generate_conformers, rotatable_torsions, symmetric_rmsd
from sciddiff.dock.ligand_io import ligand_coords
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.receptor import Receptor, load_receptor, without_ligand_itself
from sciddiff.dock.sampler import load_score_model
from sciddiff.dock.settings import SAMPLERS, DockSettings
from sciddiff.train.checkpoint import atomic_file, json_text


def diffusion_samples(model, receptor: Receptor, crystal, box: Box, settings: DockSettings
                      ) -> tuple[Chem.Mol, np.ndarray]:
    """The ligand in dock()'s canonical atom order (crystal coordinates) and the diffusion starts dock() would draw
    for it in `box` (`settings.samples`, N, 3), in the same order."""
    mol, _ = canonical_atom_order(crystal)
    tors = rotatable_torsions(mol)
    space = PoseSpace(torch.as_tensor(np.stack(generate_conformers(mol, 1, seed=settings.seed))), tors)
    gen = torch.Generator().manual_seed(settings.seed)  # dock() draws nothing from it before the diffusion
    with torch.no_grad():
        tr, rot, theta, conf = diffusion_starts(model, receptor, mol, tors, space, box, settings, gen, "cpu",
                                                lambda it: it)
    return mol, space.coords(tr, rot, theta, conf=conf).numpy()


def best_sample_rmsd(model, root: Path, cid: str, settings: DockSettings, autobox_add: float) -> float:
    crystal, ligand = complex_ligand(root, cid)
    box = checked_box_size(box_from_ligand(ligand, autobox_add))
    receptor, _ = without_ligand_itself(load_receptor(complex_files(root, cid)[0]), crystal, box)
    mol, x = diffusion_samples(model, receptor, crystal, box, settings)
    xtal = ligand_coords(mol)
    return min(symmetric_rmsd(mol, xi, xtal) for xi in x)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, help="split file (one complex folder per line)")
    p.add_argument("--data", default=None, help="docking data folder (default: ../shared/data/docking or $SCIDDIFF_DATA)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model", nargs="+", default=[str(DEFAULT_MODEL)], help="score model checkpoint(s) (default: the "
                   "shipped one)")
    p.add_argument("--samples", type=int, default=16, help="diffusion samples per complex (default 16)")
    p.add_argument("--steps", type=int, default=DockSettings.steps, help="reverse-diffusion steps")
    p.add_argument("--sampler", choices=SAMPLERS, default=DockSettings.sampler)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autobox-add", type=float, default=AUTOBOX_ADD, help="box = crystal ligand + this (A)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON lines, one per complex (best RMSD per model)")
    args = p.parse_args(argv)
    try:
        if bad := options_below(args, 1, "samples", "steps", "every", "threads"):
            raise UserError(f"{bad[0]} must be at least 1")
        root = Path(args.data) if args.data else default_data_root()
        ids = read_split(Path(args.split))[args.offset:: args.every][: args.limit]
        if not ids:
            raise UserError(f"no complexes selected from {args.split}")
        if args.out:
            check_output_path(args.out, option="--out")
        models = [load_or_fail(load_score_model, m, "docking score model") for m in args.model]
    except UserError as err:
        p.error(str(err))
    torch.set_num_threads(args.threads)
    settings = DockSettings(samples=args.samples, steps=args.steps, sampler=args.sampler, seed=args.seed)
    best = {m: [] for m in args.model}
    with atomic_file(args.out, "w") if args.out else contextlib.nullcontext() as out:  # whole, or not at all
        for cid in tqdm(ids, desc="complexes"):
            row = {"complex": cid}
            for name, model in zip(args.model, models):
                try:
                    row[name] = round(best_sample_rmsd(model, root, cid, settings, args.autobox_add), 3)
                except UserError as err:  # a complex that does not load counts as a miss for every model
                    tqdm.write(f"{cid}: {err}", file=sys.stderr)
                    row[name] = float("inf")
                best[name].append(row[name])
            if out:
                out.write(json_text(row, indent=None))
    for name, r in best.items():
        r = np.array(r)
        print(f"{name}: {len(r)} complexes, a sample within 2 A: {(r < 2).sum()}, within 3 A: {(r < 3).sum()}, "
              f"median best RMSD {np.median(r):.2f} A")


if __name__ == "__main__":
    main()
