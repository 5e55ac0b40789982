"""`sciddiff dock`, `sciddiff dock-eval` and `sciddiff dock-score`."""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import re
import shutil
import sys
import time
from pathlib import Path

from sciddiff.cli import (NOT_SHIPPED, UserError, check_output_path, idle_threads, load_or_fail, options_below,
                          print_note, same_version)

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "dock" / "score_model.pt"
MODEL_HELP = f"score-model checkpoint, or 'none' for physics-only docking (default: {DEFAULT_MODEL} when present)"
DEFAULT_RESCORER = DEFAULT_MODEL.with_name("rescore.pt")
RESCORE_HELP = (f"learned rescoring/confidence model, or 'none' to rank by energy and report search consensus "
                f"(default: {DEFAULT_RESCORER} when present)")


def _add_common(p: argparse.ArgumentParser) -> None:
    from sciddiff.dock.settings import SAMPLERS, DockSettings

    d = DockSettings()
    p.add_argument("--samples", type=int, default=d.samples,
                   help=f"reverse-diffusion samples per box (blind: per refined site, see --pocket-samples), each a "
                        f"search start (default {d.samples}); --samples 0 --random-starts {d.samples + d.random_starts} "
                        "searches from random starts alone (docs/dock.md)")
    p.add_argument("--random-starts", type=int, default=d.random_starts,
                   help=f"further search starts: random poses in the box (default {d.random_starts})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"reverse-diffusion steps (default {d.steps})")
    p.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                   help=f"reverse-diffusion sampler: k-diffusion's Euler ancestral or DiffDock's reverse SDE, one "
                        f"network call per step either way (default {d.sampler}; docs/dock.md)")
    p.add_argument("--poses", type=int, default=d.poses, help=f"ranked poses to write (default {d.poses})")
    p.add_argument("--mc-chains", type=int, default=d.mc_chains,
                   help=f"Monte Carlo chains continued from the best starts (default {d.mc_chains})")
    p.add_argument("--mc-rounds", type=int, default=d.mc_rounds,
                   help=f"Monte Carlo rounds of the physics search per chain (default {d.mc_rounds})")
    p.add_argument("--pockets", type=int, default=d.pockets,
                   help=f"blind docking: pockets searched (default {d.pockets}; 3 takes about half the time for a few "
                        "fewer hits, docs/dock.md)")
    p.add_argument("--refine-sites", type=int, default=d.refine_sites,
                   help=f"blind docking: search again in a box around the best pose of this many best pockets, as "
                        f"--autobox-ligand would (default {d.refine_sites}; 0 skips it: with diffusion starts in the "
                        "pockets it gave 27.4%% against 31.2%% top-1 over 157 validation complexes, docs/dock.md)")
    p.add_argument("--pocket-samples", type=int, default=d.pocket_samples,
                   help=f"blind docking: reverse-diffusion samples per geometric pocket, its other starts random "
                        f"(default {d.pocket_samples}: over 157 validation complexes the same top-1 as 8 samples, 31.2%%, "
                        "more top-5 hits, in ~0.8x the time; docs/dock.md); the refined sites get --samples")
    p.add_argument("--conformers", type=int, default=d.conformers,
                   help=f"ETKDG conformers embedded; their distinct ring/angle shapes are searched (default {d.conformers})")
    p.add_argument("--scoring", choices=("vina", "vinardo"), default=d.scoring,
                   help=f"empirical scoring function for search and ranking (default {d.scoring})")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same poses (default 0)")
    _add_drop_waters(p)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the score model runs (default cpu)")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--rescore", default=None, help=RESCORE_HELP)
    p.add_argument("--ranking", choices=("energy", "learned"), default=None,
                   help=f"with a rescoring model: order poses by energy or by the learned P(RMSD < 2 A) "
                        f"(default {d.ranking}, energy without a rescoring model; see docs/dock.md for the "
                        "measurements behind it)")
    _add_threads(p)


def _add_drop_waters(p) -> None:
    p.add_argument("--drop-waters", action="store_true",
                   help="drop the protein file's waters (HOH, WAT, ...) as Vina-style receptor preparation does "
                        "(default: they are receptor atoms, like metals and cofactors: poses avoid them)")


def _add_threads(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: 2 when no other process is running on the two cores, else 1; "
                        "on two idle cores 2 threads dock 1.4x faster, next to another busy process 2x slower)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dock", help="dock a ligand into a protein (diffusion proposals + physics search)",
        description="Dock a ligand into a protein: fresh RDKit conformer, pose proposals by reverse diffusion over "
                    "translation x rotation x torsions, a Vina-like physics search, ranked poses. Without a box the "
                    "whole protein is searched (blind: the best geometric pockets). See docs/dock.md.")
    p.add_argument("--protein", help="receptor PDB, mmCIF or PDBQT (.pdb, .cif, .pdbqt, optionally .gz; first model); "
                                     "cofactors, metals and waters (HETATM) are receptor atoms (see --drop-waters)")
    p.add_argument("--ligand", help="ligand SDF/MOL/MOL2/SMI file (optionally .gz), a meeko PDBQT (its SMILES remark) "
                                    "or a SMILES string; its coordinates are ignored. A file with several molecules "
                                    "is a library: each is docked (a screen; see --out)")
    p.add_argument("--out", required=True,
                   help="output folder (written atomically). A library or --batch: one sub-folder per molecule/row "
                        "and a hit list results.csv (+ best_poses.sdf for a library), best score first")
    p.add_argument("--batch", help="CSV (UTF-8) with columns protein, ligand, name (paths relative to the CSV's "
                                   "folder) and optionally autobox_ligand: that row's box, its reference ligand + "
                                   "--autobox-add (a row with the cell empty is docked blind); without the column, "
                                   "--autobox-ligand / --center give every row's box, else all are blind")
    box = p.add_argument_group("search box (default: blind docking)")
    box.add_argument("--autobox-ligand", help="box = the extent of this file's molecules (all of them, as gnina) "
                                              "plus --autobox-add on every side")
    box.add_argument("--autobox-add", type=float, default=None, help="padding for --autobox-ligand in A (default 4)")
    box.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"), help="box centre (A)")
    box.add_argument("--size", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="box edge lengths (A)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted library screen or --batch run in OUT: molecules already docked there "
                        "with the same settings and model are kept, the rest are docked")
    _add_common(p)
    p.set_defaults(func=run_dock)

    e = subparsers.add_parser(
        "dock-eval", help="dock a split of complexes and report success rates",
        description="Dock every complex of a split from a fresh conformer and report top-1/top-5 success "
                    "(symmetry-corrected RMSD < 2 A), median RMSD, PoseBusters validity of top-1 poses "
                    "(redock checks except RMSD) and seconds per complex; plots the success rate against the RMSD "
                    "threshold (success_curves.png). Blind runs also count a pose in a copy of the site on an "
                    "identical chain (the *_copies columns).")
    e.add_argument("--data", default=None, help="docking data root (default $SCIDDIFF_DATA/docking or ../shared/data/docking)")
    e.add_argument("--split", required=True, help="file with one <folder>/<complex_id> per line")
    e.add_argument("--autobox", action="store_true", help="box = crystal ligand + --autobox-add (default: blind)")
    e.add_argument("--autobox-add", type=float, default=None,
                   help="padding of the crystal-ligand box in A (default 4; needs --autobox)")
    e.add_argument("--limit", type=int, default=None, help="only the first N complexes")
    e.add_argument("--every", type=int, default=1, help="take every k-th complex of the split (default 1)")
    e.add_argument("--offset", type=int, default=0, help="start at this index of the split (default 0)")
    e.add_argument("--out", required=True, help="folder for results.csv and summary.json")
    e.add_argument("--no-posebusters", action="store_true", help="skip the PoseBusters checks")
    e.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation in --out: complexes already in its results.csv are kept "
                        "(refused if it ran with other options)")
    e.add_argument("--overwrite", action="store_true", help="start again in an --out that holds an evaluation")
    _add_common(e)
    e.set_defaults(func=run_eval)

    s = subparsers.add_parser(
        "dock-score", help="score given ligand poses, or relax them in place (Vina's --score_only / --local_only)",
        description="Score each pose of a ligand file in a protein with the docking energy (no search): Vina-like "
                    "score = inter-molecular energy / (1 + 0.0585 N_rot) as Vina's, the inter- and intra-molecular "
                    "energies and the unweighted protein-ligand term sums. --minimize first relaxes each pose "
                    "rigidly and about its rotatable bonds (bond lengths, angles and rings stay as given).")
    s.add_argument("--protein", required=True, help="receptor PDB, mmCIF or PDBQT (optionally .gz)")
    s.add_argument("--ligand", required=True, help="poses: SDF (every molecule), MOL or MOL2 with 3D coordinates")
    s.add_argument("--minimize", action="store_true", help="relax each pose before scoring it")
    s.add_argument("--minimize-steps", type=int, default=200, help="local optimisation steps (default 200)")
    s.add_argument("--scoring", choices=("vina", "vinardo"), default="vina", help="energy function (default vina)")
    s.add_argument("--out", default=None,
                   help="write the (relaxed) poses with their scores as SD tags to this SDF (.sdf.gz: gzipped); heavy "
                        "atoms as given (or relaxed), the input's hydrogens placed again on them (RDKit, MMFF), as in "
                        "docked poses")
    s.add_argument("--json", default=None, help="write the scores to this JSON file")
    _add_drop_waters(s)
    _add_threads(s)
    s.set_defaults(func=run_score)


MAX_SEED = 2**31 - 1


def _settings(args):
    from sciddiff.dock.settings import DockSettings

    for low, names in ((0, ("samples", "random_starts", "mc_rounds", "refine_sites", "pocket_samples")),
                       (1, ("steps", "poses", "mc_chains", "pockets", "conformers", "threads"))):
        if bad := options_below(args, low, *names):
            raise UserError(f"{bad[0]} must be >= {low}")
    if args.samples + args.random_starts < 1:
        raise UserError("need at least one search chain: --samples + --random-starts >= 1")
    if not 0 <= args.seed <= MAX_SEED:  # RDKit's embedding seeds are 31-bit: larger seeds would repeat smaller ones
        raise UserError(f"--seed must lie between 0 and {MAX_SEED}, got {args.seed}")
    return DockSettings(samples=args.samples, random_starts=args.random_starts, steps=args.steps, sampler=args.sampler,
                        poses=args.poses, mc_chains=args.mc_chains, mc_rounds=args.mc_rounds, pockets=args.pockets,
                        refine_sites=args.refine_sites, pocket_samples=args.pocket_samples,
                        conformers=args.conformers, scoring=args.scoring, seed=args.seed,
                        **({"ranking": args.ranking} if args.ranking else {}))


def _model(args):
    import torch

    torch.set_num_threads(idle_threads() if args.threads is None else args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")

    def load(path: Path):  # e3nn is imported only when a model is used
        with _e3nn_without_dynamo():
            from sciddiff.dock.sampler import load_score_model

        return load_score_model(path, args.device)

    return _load_optional(args.model, DEFAULT_MODEL, "score model", load, "--model")


@contextlib.contextmanager
def _e3nn_without_dynamo():
    """Import e3nn in this command's process without torch._dynamo.

    e3nn 0.5-0.6 marks one basis-change helper (called when tensor products are built, not in forward) with
    `@torch.compiler.disable`, and that decorator imports torch._dynamo: 1.1-1.3 s of a ~10 s docking run on 2 cores
    (docs/dock.md), for a graph break that matters only under torch.compile, which `sciddiff dock` never uses. Here,
    in the CLI process only (a library import must not change a user's compiled code), the decorator is an identity
    while e3nn is imported; if torch._dynamo or e3nn is already loaded nothing changes."""
    import torch

    if "torch._dynamo" in sys.modules or "e3nn" in sys.modules:
        yield
        return
    disable = torch.compiler.disable
    torch.compiler.disable = lambda fn=None, *a, **k: fn if fn is not None else (lambda f: f)
    try:
        yield
    finally:
        torch.compiler.disable = disable


def _rescorer(args, settings):
    """(rescoring model or None, the settings with the ranking it allows): without one the energy ranks, and an
    explicit --ranking learned is refused."""
    import dataclasses

    def load(path: Path):
        from sciddiff.dock.rescore import load_rescorer

        return load_rescorer(path)

    rescorer = _load_optional(args.rescore, DEFAULT_RESCORER, "rescoring model", load, "--rescore")
    if rescorer is None and settings.ranking == "learned":
        if args.ranking == "learned":
            raise UserError("--ranking learned needs the rescoring model (--rescore none, or none is shipped)")
        settings = dataclasses.replace(settings, ranking="energy")
    return rescorer, settings


def _load_optional(value: str | None, default: Path, what: str, load, option: str):
    """`none` -> None; no value -> the shipped file, or None with a note when it is missing (docking goes on without
    it, as with `none`); a path must exist and load (one-line errors)."""
    if value == "none":
        return None
    if value is None and not default.exists():
        print_note(f"no {what} at {default}, docking without it ({option} PATH gives one, {option} none says so); "
                   f"{NOT_SHIPPED}")
        return None
    return load_or_fail(load, Path(value) if value else default, what)


SMALL_BOX = 8.0  # A: a box side below this cannot hold a drug-sized ligand (benzene alone spans ~5 A with its H)


def _read_inputs(protein: str, ligand: str, args) -> tuple:
    """(receptor, ligand records, box or None): read before any model is loaded, so bad input fails fast."""
    from sciddiff.dock.box import resolve_box
    from sciddiff.dock.ligand_io import ligand_smiles, load_ligands, reference_coords
    from sciddiff.dock.receptor import load_receptor, waters_on

    receptor = load_receptor(protein, keep_waters=not args.drop_waters)
    _note_receptor(receptor, protein)
    ligands = load_ligands(ligand)
    if len(ligands) > 1 and all(r.mol is None for r in ligands):  # a library that is all bad input is bad input
        raise UserError(f"none of the {len(ligands)} molecules in {ligand} can be docked; the first: "
                        f"{ligands[0].error}")
    first = ligand_smiles(ligands[0].mol) if ligands[0].mol is not None else None
    if len(ligands) > 1 and all(r.mol is not None and ligand_smiles(r.mol) == first for r in ligands[1:]):
        # conformers of one ligand (what conformer generators write): docking starts from fresh conformers anyway
        print_note(f"{ligand}: {len(ligands)} records of the same molecule, docked once (input coordinates are not "
                   "used)")
        ligands = ligands[:1]
    box = resolve_box(receptor, args.autobox_ligand, args.autobox_add, args.center, args.size)
    if args.autobox_ligand and (n := waters_on(receptor, reference_coords(args.autobox_ligand, note=False))):
        print_note(f"{n} water(s) of {protein} sit within 1.5 A of {args.autobox_ligand}'s atoms; waters are "
                   "receptor atoms, so poses there clash with them (--drop-waters leaves them out)")
    if box is not None and box.size.min() < SMALL_BOX:
        print_note(f"the box is {' x '.join(f'{s:g}' for s in box.size.round(1))} A, smaller than a drug-sized "
                   f"ligand ({SMALL_BOX:g} A): poses will extend beyond it "
                   "(--autobox-ligand REF makes REF's extent + 4 A)")
    return receptor, ligands, box


def _one_ligand(ligands: list, ligand: str):
    """The molecule of a ligand input that must hold exactly one (a --batch row)."""
    if len(ligands) > 1:
        raise UserError(f"{ligand} holds {len(ligands)} molecules; a --batch row docks one (give the file as "
                        "--ligand to dock each of them)")
    if ligands[0].mol is None:
        raise UserError(ligands[0].error)
    return ligands[0].mol


def _note_receptor(receptor, protein: str) -> None:
    from sciddiff.dock.receptor import receptor_note

    if note := receptor_note(receptor):
        print(f"warning: protein {protein}: {note}", file=sys.stderr)


def _note_ligand_itself(removed, protein: str) -> None:
    if removed:
        print_note(f"protein {protein}: {', '.join(removed)} is the ligand itself (the same heavy atoms, in the "
                   "site): left out of the receptor")


def _note_repairs(mol, what: str) -> None:
    from sciddiff.dock.ligand_io import ligand_repairs

    if repairs := ligand_repairs(mol):
        print_note(f"ligand {what}: {repairs}")


def _dock_one(receptor, mol, box, protein: str, ligand: str, out: Path, args, model, rescorer, settings, name: str,
              started: float, show_progress: bool = True) -> dict:
    import torch

    from sciddiff.dock.docking import dock
    from sciddiff.dock.ligand_io import ligand_repairs, ligand_smiles
    from sciddiff.dock.output import atomic_dir, write_result
    from sciddiff.dock.receptor import without_ligand_itself

    how = _how_docked(settings, model, rescorer, args, receptor, box)
    receptor, removed = without_ligand_itself(receptor, mol, box)
    _note_ligand_itself(removed, protein)
    with atomic_dir(out) as tmp:
        result = dock(receptor, mol, box, model, settings, device=args.device,
                      show_progress=show_progress and sys.stderr.isatty(), rescorer=rescorer)
        result.timings["total"] = time.perf_counter() - started
        meta = {"name": name, "protein": str(protein), "ligand": str(ligand), "smiles": ligand_smiles(mol),
                "ligand_repairs": ligand_repairs(mol), "receptor_residues_removed": removed or None,
                "mode": "box" if box is not None else "blind", "seed": settings.seed,
                "threads": torch.get_num_threads(),  # the poses do not depend on it (tested): recorded for timings
                **how,
                "score_units": "kcal/mol-like (Vina weights), lower is better"}
        return write_result(tmp, receptor, mol, result, meta, name)


def _how_docked(settings, model, rescorer, args, receptor, box) -> dict:
    """The summary.json entries that decide the poses: a --resume keeps a result only if they are the same."""
    import hashlib

    from sciddiff.dock.settings import settings_dict

    atoms = hashlib.sha256(receptor.coords.tobytes() + " ".join(receptor.elements).encode()).hexdigest()[:16]
    return {"receptor_atoms_sha256": atoms,  # the receptor's heavy atoms as read, wherever its file lies
            "box": None if box is None else {"center": box.center.round(3).tolist(),
                                             "size": box.size.round(3).tolist()},
            "model_version": getattr(model, "version", "none (physics only)"),
            "waters": "dropped" if args.drop_waters else "receptor atoms",
            "settings": json.loads(json.dumps(settings_dict(settings))),
            "ranking": f"learned rescorer {rescorer.version}" if rescorer is not None and settings.ranking == "learned"
            else f"{settings.scoring} energy (inter + intra-ligand) after physics search",
            # the confidences come from the rescorer whichever the ranking: under the energy ranking its name goes
            # here, so that a resume compares it (under the learned ranking the "ranking" entry names it)
            "confidence": "search consensus: fraction of search chains ending within 2 A of the pose"
            if rescorer is None else "learned P(RMSD < 2 A)" if settings.ranking == "learned"
            else f"learned P(RMSD < 2 A), rescorer {rescorer.version}"}


def run_dock(args) -> int:
    from sciddiff.dock.output import check_out_dir

    settings = _settings(args)
    if args.resume and args.overwrite:
        raise UserError("give --resume or --overwrite, not both")
    if args.batch:
        if args.protein or args.ligand:
            raise UserError("--batch replaces --protein/--ligand; give one or the other")
        return _run_batch(args, settings)
    if not args.protein or not args.ligand:
        raise UserError("give --protein and --ligand (or --batch table.csv)")
    out = check_out_dir(args.out, args.overwrite or args.resume,  # --resume deletes no input: only --overwrite
                        inputs=(args.protein, args.ligand, args.autobox_ligand) if args.overwrite else ())
    started = time.perf_counter()
    receptor, ligands, box = _read_inputs(args.protein, args.ligand, args)
    if len(ligands) > 1:
        width = len(str(len(ligands)))
        jobs = [(r.name, f"{i + 1:0{width}d}_{_safe_name(r.name)}",
                 lambda r=r: (receptor, _one_ligand([r], args.ligand), box, args.protein, args.ligand))
                for i, r in enumerate(ligands)]
        _screen_out(out, [folder for _, folder, _ in jobs], args)
        print(f"{args.ligand}: {len(ligands)} molecules; each docked into {out}/<index>_<name>/, hit list in "
              f"{out}/results.csv", file=sys.stderr)
        failed = _dock_each(jobs, out, args, settings, best_poses=True)
        print(f"{len(jobs) - failed}/{len(jobs)} molecules docked into {out}; ranked by score in {out}/results.csv "
              f"and {out}/best_poses.sdf")
        return 1 if failed else 0
    if args.resume:
        raise UserError("--resume continues a library screen or a --batch run; this ligand input holds one molecule")
    mol = _one_ligand(ligands, args.ligand)
    _note_repairs(mol, args.ligand)
    model, (rescorer, settings) = _model(args), _rescorer(args, settings)
    summary = _dock_one(receptor, mol, box, args.protein, args.ligand, out, args, model, rescorer, settings,
                        ligands[0].name, started)
    best = summary["poses"][0]
    print(f"wrote {len(summary['poses'])} poses to {out}  (rank 1: score {best['score']:.2f}, "
          f"confidence {best['confidence']:.2f}; {summary['timings']['total']:.1f} s)")
    return 0


def _dock_each(jobs: list, out: Path, args, settings, best_poses: bool) -> int:
    """Dock each (name, folder, read) job into out/folder, read() giving (receptor, molecule, box, protein, ligand);
    a job that fails is reported and skipped. With --resume a folder that holds this molecule docked with the same
    settings and model is kept. The hit list is rewritten after every job. Returns the number of failed jobs."""
    from tqdm.auto import tqdm

    from sciddiff.dock.output import HitList, check_out_dir

    model, (rescorer, settings) = _model(args), _rescorer(args, settings)
    hits = HitList(out, best_poses=best_poses)
    for name, folder, read in tqdm(jobs, desc="docking", disable=not sys.stderr.isatty()):
        started = time.perf_counter()
        try:
            receptor, mol, box, protein, ligand = read()
            earlier = (_earlier_result(out / folder, mol, _how_docked(settings, model, rescorer, args, receptor, box))
                       if args.resume else None)
            if earlier is not None:
                hits.add(name, folder, summary=earlier, mol=mol)
                tqdm.write(f"{name}: kept from the earlier run", file=sys.stderr)
                continue
            check_out_dir(out / folder, args.overwrite or args.resume)
            _note_repairs(mol, name)
            summary = _dock_one(receptor, mol, box, protein, ligand, out / folder, args, model, rescorer, settings,
                                name, started, show_progress=False)
        except UserError as err:  # unreadable input, no conformer embeds ...: the run goes on
            hits.add(name, folder, error=str(err))
            tqdm.write(f"{name}: skipped: {err}", file=sys.stderr)
            continue
        hits.add(name, folder, summary=summary, mol=mol)
        blind = ", blind" if box is None else ""
        tqdm.write(f"{name}: rank 1 score {summary['poses'][0]['score']:.2f}{blind} ({summary['timings']['total']:.1f} s)",
                   file=sys.stderr)
    return hits.failed


def _earlier_result(folder: Path, mol, how: dict) -> dict | None:
    """The summary of an earlier run in `folder` if it docked this molecule the same way (`_how_docked`: the same
    receptor, box, settings and models; and its poses are there)."""
    from sciddiff.dock.ligand_io import ligand_smiles
    from sciddiff.dock.settings import as_recorded_now

    try:
        summary = as_recorded_now(json.loads((folder / "summary.json").read_text()))
    except (OSError, ValueError):
        return None
    same = (summary.get("smiles") == ligand_smiles(mol) and summary.get("poses")
            and all(same_version(summary.get(k), v) for k, v in how.items())
            and all((folder / p["file"]).is_file() for p in summary["poses"]))
    return summary if same else None


def _screen_out(out: Path, folders: list[str], args) -> None:
    """An output folder for a screen or a --batch run (`check_out_dir` has passed it): --resume continues only a
    screen whose molecules' folders are among `folders`; --overwrite clears an earlier output first, so that no
    folder of it stays beside the new hit list."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if args.overwrite:
        shutil.rmtree(out)
        return
    if (out / "summary.json").is_file():
        raise UserError(f"--resume: {out} holds a single docking run, not a screen; --overwrite replaces it")
    ours = set(folders)
    try:
        with open(out / "results.csv", newline="") as fh:
            earlier = [row.get("folder") or "" for row in csv.DictReader(fh)]
    except OSError:
        earlier = []
    if stray := [f for f in earlier if f and f not in ours and (out / f).is_dir()]:
        raise UserError(f"--resume: {out} holds a screen of other molecules ({stray[0]} is not one of this run's "
                        "folders); --overwrite replaces it, or choose another --out")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "mol"


def _run_batch(args, settings) -> int:
    from sciddiff.dock.output import check_out_dir

    table = Path(args.batch)
    if not table.is_file():
        raise UserError(f"batch table not found: {table}")
    from sciddiff.dock.ligand_io import is_ligand_file_name

    rows, lines, header = _batch_table(table)
    columns = {h for h in header if h}
    if not {"protein", "ligand", "name"} <= columns:
        raise UserError(f"{table} needs a comma-separated header with columns protein, ligand, name")
    if unknown := sorted(columns - {"protein", "ligand", "name", "autobox_ligand"}):
        print_note(f"{table}: columns {', '.join(unknown)} are not read (protein, ligand, name and the optional "
                   "autobox_ligand are)")
    if "autobox_ligand" in columns and (args.autobox_ligand or args.center or args.size):
        raise UserError(f"{table} has an autobox_ligand column: give the boxes there or by an option, not both")
    if not rows:
        raise UserError(f"{table} has a header but no rows")
    names, first_line = [_cell(r, "name") for r in rows], {}
    for line, n in zip(lines, names):
        if not n or "/" in n or n in (".", "..", "results.csv") or n in first_line:
            why = ("is empty" if not n else f"is line {first_line[n]}'s too" if n in first_line else
                   "names no folder (names contain no '/' and are not '.', '..' or results.csv)")
            raise UserError(f"{table}, line {line}: the name {n!r} {why}; each row's name is its folder inside --out")
        first_line[n] = line

    def path_of(cell: str) -> Path:
        return Path(cell) if Path(cell).is_absolute() else table.parent / cell

    # --overwrite deletes --out first: never with a row's input inside it (a pose re-docked from an earlier run)
    inputs = [table] + [path_of(c) for r in rows for col in ("protein", "ligand", "autobox_ligand")
                        if (c := _cell(r, col))]
    out = check_out_dir(args.out, args.overwrite or args.resume, inputs=inputs if args.overwrite else ())
    _screen_out(out, names, args)

    def read(row: dict) -> tuple:
        protein, ligand = _cell(row, "protein"), _cell(row, "ligand")
        if not protein or not ligand:
            raise UserError("empty protein or ligand cell")
        protein, lig_path = str(path_of(protein)), path_of(ligand)
        if lig_path.exists() or is_ligand_file_name(ligand):  # else: a SMILES string
            ligand = str(lig_path)
        row_args = args
        if reference := _cell(row, "autobox_ligand"):  # this row's box: its reference ligand + --autobox-add
            row_args = argparse.Namespace(**{**vars(args), "autobox_ligand": str(path_of(reference))})
        receptor, ligands, box = _read_inputs(protein, ligand, row_args)
        return receptor, _one_ligand(ligands, ligand), box, protein, ligand

    failed = _dock_each([(n, n, lambda r=r: read(r)) for r, n in zip(rows, names)], out, args, settings,
                        best_poses=False)
    print(f"{len(rows) - failed}/{len(rows)} complexes docked into {out} (results.csv)")
    return 1 if failed else 0


def _batch_table(table: Path) -> tuple[list[dict], list[int], list[str]]:
    """A --batch table's rows (blank ones left out), the file line each ends on (errors name it) and its header."""
    from sciddiff.dock.files import read_text

    # plain or .gz, a byte-order mark dropped (read_text); skipinitialspace: "protein, ligand"
    text = read_text(table)
    if "\ufffd" in text:  # a name or path with its bytes replaced would name a folder or file that is not there
        raise UserError(f"{table} is not UTF-8 text (a spreadsheet's 'CSV (Windows)' or 'Latin-1'?): save it as "
                        "'CSV UTF-8'")
    reader = csv.DictReader(text.splitlines(), skipinitialspace=True)
    if reader.fieldnames:  # "name ,protein": the header's cells as the columns they name
        reader.fieldnames = [h.strip() for h in reader.fieldnames]
    rows, lines = [], []
    for row in reader:  # a spreadsheet writes rows of bare commas for cells it once held: blank, as blank lines are
        if any(isinstance(v, str) and v.strip() for v in row.values()):
            rows.append(row)
            lines.append(reader.line_num)  # a quoted cell may span lines: the row's last
    return rows, lines, list(reader.fieldnames or ())  # no fieldnames: an empty file


def _cell(row: dict, column: str) -> str:
    return (row.get(column) or "").strip()  # a short row has None in its missing cells


def run_eval(args) -> int:
    from sciddiff.dock.evaluate import evaluate

    settings = _settings(args)
    if args.resume and args.overwrite:
        raise UserError("give --resume or --overwrite, not both")
    for low, names in ((1, ("every", "limit")), (0, ("offset",))):
        if bad := options_below(args, low, *names):
            raise UserError(f"{bad[0]} must be >= {low}")
    from sciddiff.dock.box import AUTOBOX_ADD, checked_autobox_add

    if args.autobox_add is not None and not args.autobox:
        raise UserError("--autobox-add needs --autobox (without it every complex is docked blind)")
    args.autobox_add = checked_autobox_add(AUTOBOX_ADD if args.autobox_add is None else args.autobox_add)
    check_output_path(args.out, folder=True)
    model, (rescorer, settings) = _model(args), _rescorer(args, settings)
    summary = evaluate(args, settings, model, rescorer)
    print(json.dumps(summary, indent=1))
    if summary["errors"]:
        print(f"{summary['errors']} of {summary['n']} complexes failed to dock (counted as misses; see the error "
              f"column of {Path(args.out) / 'results.csv'})", file=sys.stderr)
        return 1
    return 0


def run_score(args) -> int:
    from sciddiff.dock.box import box_around
    from sciddiff.dock.ligand_io import POSE_TAGS, ligand_coords, load_poses, pose_mol, sdf_block
    from sciddiff.dock.output import atomic_file_text
    from sciddiff.dock.receptor import load_receptor, without_ligand_itself

    if bad := options_below(args, 1, "minimize_steps", "threads"):
        raise UserError(f"{bad[0]} must be >= 1")
    for path, option in ((args.out, "--out"), (args.json, "--json")):
        if path is not None:  # never one of the inputs: it would replace what was scored, silently
            check_output_path(path, option=option, inputs={"--protein": args.protein, "--ligand": args.ligand})
    if args.out and args.json and Path(args.out).resolve() == Path(args.json).resolve():
        raise UserError("--out and --json name the same file")
    receptor, poses = load_receptor(args.protein, keep_waters=not args.drop_waters), load_poses(args.ligand)
    _note_receptor(receptor, args.protein)
    for i, mol in enumerate(poses):
        _note_repairs(mol, f"{args.ligand} (molecule {i + 1})")
    import torch

    from sciddiff.dock.pose_scoring import pose_warnings, score_pose  # torch: once the inputs have passed
    from sciddiff.train.checkpoint import write_json

    torch.set_num_threads(idle_threads() if args.threads is None else args.threads)

    rows, sd_records, removed = [], [], {}
    problems = pose_warnings(receptor, [ligand_coords(mol) for mol in poses])
    for i, mol in enumerate(poses):
        for warning in problems[i]:
            print(f"warning: {args.ligand} (pose {i + 1}): {warning}", file=sys.stderr)
        own_receptor, own_copies = without_ligand_itself(receptor, mol, box_around(ligand_coords(mol)))
        removed.update(dict.fromkeys(own_copies))
        r = score_pose(own_receptor, mol, args.minimize_steps if args.minimize else 0, args.scoring)
        tags = {"score": r.score, "energy": r.energy, "inter": r.inter, "intra": r.intra, **r.terms,
                "n_torsions": r.n_torsions, "n_rot": r.n_rot, **({"moved": r.moved} if args.minimize else {})}
        name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        rows.append({"pose": i + 1, "name": name or f"pose{i + 1}", **tags})
        # a relaxed pose is a new pose: the tags of the one given (a docking run's rank, gnina's affinity) go
        drop = POSE_TAGS if args.minimize else ()
        sd_records.append(sdf_block(pose_mol(mol, r.coords, tags, hydrogens=True, drop=drop)))
    _note_ligand_itself(list(removed), args.protein)
    columns = ["score", "inter", "intra", *r.terms, *(["moved"] if args.minimize else [])]
    print("pose  " + "  ".join(f"{c:>11}" for c in columns) + "  name")
    for row in rows:
        print(f"{row['pose']:>4}  " + "  ".join(f"{row[c]:>11.3f}" for c in columns) + f"  {row['name']}")
    if args.out:
        atomic_file_text(args.out, "".join(sd_records))
    if args.json:
        write_json(args.json, {"protein": str(args.protein), "ligand": str(args.ligand), "scoring": args.scoring,
                               "minimized": args.minimize,
                               "score_units": "kcal/mol-like (Vina weights), lower is better", "poses": rows}, indent=1)
    return 0
