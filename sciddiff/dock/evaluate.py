"""`sciddiff dock-eval`: dock a split from fresh conformers and measure what users care about.

Per complex: symmetry-corrected heavy-atom RMSD (no superposition) of every ranked pose to the crystal ligand,
PoseBusters "redock" checks of the top-1 pose with the RMSD check left out (PB-valid), wall seconds. Summary:
top-1 and top-5 fraction with RMSD < 2 A, median top-1 RMSD, PB-valid fraction, mean seconds per complex; complexes
that fail to dock count as failures (RMSD infinite). With a learned rescorer, the same candidates are also ranked
by energy alone and both rankings are reported (`*_energy`, `*_learned`; the unsuffixed ones are the chosen
ranking's), and the ROC AUC of the top-1 confidence and of the search consensus for top-1 success.
`success_curves.png` plots the fraction of complexes below each RMSD threshold (0-10 A) for the top-1 pose of each
ranking, the best of its top 5, the best candidate (what a perfect ranking would pick) and, in blind runs with
identical pockets, the top-1 pose against the nearest copy of the crystal ligand: the usual docking figure.

Blind runs also report the RMSD to the nearest copy of the crystal ligand (`*_copies`): in a homo-oligomer the
pocket the ligand was crystallised in has identical copies on the other chains, and a pose in a copy is the same
answer for a user but a 20 A miss against the one crystal ligand (the primary numbers keep that protocol, as
DiffDock's and PoseBusters' do).
"""
from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from sciddiff.cli import UserError, same_version
from sciddiff.dock.settings import as_recorded_now

if TYPE_CHECKING:
    from sciddiff.dock.receptor import Receptor


def posebusters_valid(pose, crystal, receptor: Receptor) -> tuple[bool, str]:
    """All redock checks except the RMSD one, against the receptor docked against (as PDB records, whatever file it
    came from: posebusters reads no mmCIF; a copy of the ligand the file held is not there to count as a clashing
    cofactor); returns (valid, names of failed checks)."""
    import rdkit
    from posebusters import PoseBusters

    with tempfile.TemporaryDirectory() as tmp:
        pdb = Path(tmp) / "protein.pdb"
        pdb.write_text(receptor.pdb_text)
        try:
            df = PoseBusters(config="redock").bust(mol_pred=[pose], mol_true=crystal, mol_cond=str(pdb))
        finally:  # posebusters leaves RDKit's log handler on the sys.stderr of the moment, which may close later (a
            # notebook cell's, a test's capture) and fail the next check: the process's own stderr never does
            handler = getattr(rdkit, "log_handler", None)
            if handler is not None:
                handler.setStream(sys.__stderr__)
    row = df.iloc[0]
    checks = {k: bool(v) for k, v in row.items() if isinstance(v, (bool, np.bool_)) and "rmsd" not in k.lower()}
    failed = [k for k, ok in checks.items() if not ok]
    return not failed, ";".join(failed)


def ligand_copies(receptor: Receptor, xyz: np.ndarray, pocket_radius: float = 10.0, min_identity: float = 0.95,
                  max_pocket_rmsd: float = 1.0) -> list[np.ndarray]:
    """The ligand (xyz, (N, 3) A) moved into each copy of its pocket on another chain of the same sequence.

    The pocket is the C-alphas within `pocket_radius` of the ligand on the chain that has most of them; a chain is a
    copy when its global alignment to that chain (residues with a C-alpha; disordered loops make gaps) pairs at
    least 80% of the shorter one with `min_identity` identical residues among the pairs, and at least 90% of the
    pocket's C-alphas are paired and superpose onto their partners within `max_pocket_rmsd` (Kabsch): the ligand
    moves with that superposition.
    """
    import torch
    from Bio.Align import PairwiseAligner
    from Bio.SeqUtils import seq1

    from sciddiff.dock.ligand import kabsch
    from sciddiff.dock.receptor import AMINO_ACIDS

    letters = [seq1(name) for name in AMINO_ACIDS] + ["X"]  # Receptor.res_type: AMINO_ACIDS, then unknown
    f64 = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))  # noqa: E731

    near = np.linalg.norm(receptor.res_ca[:, None] - xyz[None], axis=-1).min(1) < pocket_radius
    if not near.any():
        return []
    chains, counts = np.unique(receptor.res_chain[near], return_counts=True)
    home = chains[counts.argmax()]
    home_idx = np.flatnonzero(receptor.res_chain == home)
    home_seq = "".join(letters[t] for t in receptor.res_type[home_idx])
    pocket = set(np.flatnonzero(near[home_idx]).tolist())
    aligner = PairwiseAligner(mode="global", mismatch_score=-1.0, open_gap_score=-2.0, extend_gap_score=-0.5,
                              end_gap_score=0.0)
    copies = []
    for chain in np.unique(receptor.res_chain):
        idx = np.flatnonzero(receptor.res_chain == chain)
        if chain == home or len(idx) < len(pocket):
            continue
        seq = "".join(letters[t] for t in receptor.res_type[idx])
        alignment = aligner.align(home_seq, seq)[0]
        paired = [(i, j) for (a0, a1), (b0, b1) in zip(*alignment.aligned)
                  for i, j in zip(range(a0, a1), range(b0, b1))]
        same = sum(home_seq[i] == seq[j] for i, j in paired)
        if len(paired) < 0.8 * min(len(home_seq), len(seq)) or same < min_identity * len(paired):
            continue
        pairs = [(i, j) for i, j in paired if i in pocket]
        if len(pairs) < max(3, 0.9 * len(pocket)):
            continue
        p = f64(receptor.res_ca[home_idx[[i for i, _ in pairs]]])
        q = f64(receptor.res_ca[idx[[j for _, j in pairs]]])
        rot, shift = kabsch(p, q)
        if float(((p @ rot.T + shift - q) ** 2).sum(-1).mean().sqrt()) <= max_pocket_rmsd:
            copies.append((f64(xyz) @ rot.T + shift).numpy())
    return copies


def evaluate(args, settings, model, rescorer=None) -> dict:
    from sciddiff.dock.box import box_from_ligand, checked_box_size
    from sciddiff.dock.data import complex_files, complex_ligand, default_data_root, read_split
    from sciddiff.dock.docking import dock
    from sciddiff.dock.ligand import symmetric_rmsd
    from sciddiff.dock.ligand_io import ligand_coords, pose_mol
    from sciddiff.dock.output import atomic_csv
    from sciddiff.dock.receptor import load_receptor, without_ligand_itself
    from sciddiff.dock.settings import settings_dict
    from sciddiff.train.checkpoint import write_json
    from sciddiff.train.log import progress

    root = Path(args.data) if args.data else default_data_root()
    if not root.is_dir():
        raise UserError(f"docking data folder not found: {root} (pass --data or set SCIDDIFF_DATA)")
    split = Path(args.split)
    if not split.is_file():
        raise UserError(f"split file not found: {split}")
    listed = read_split(split)
    ids = listed[args.offset:: args.every][: args.limit]
    if len(set(ids)) < len(ids):  # a complex listed twice would be docked and counted twice
        tqdm.write(f"note: {split}: {len(ids) - len(set(ids))} repeated complex line(s) evaluated once",
                   file=sys.stderr)
        ids = list(dict.fromkeys(ids))
    if not ids:
        raise UserError(f"no complexes in {split}" if not listed else
                        f"--offset {args.offset} is past the end of {split} ({len(listed)} complexes)")
    if missing := [cid for cid in ids if not (root / cid).is_dir()]:  # a typo or the wrong --data: before any work
        raise UserError(f"{len(missing)} of the {len(ids)} complexes of {split} have no folder under {root} "
                        f"(first: {missing[0]!r})")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not any((out / name).is_file() for name in ("run.json", "results.csv")):
        raise UserError(f"--out {out} holds files that are not an evaluation (no run.json or results.csv; a docking "
                        "run's summary.json would be replaced): choose another --out")
    if (out / "results.csv").exists() and not (args.resume or args.overwrite):
        raise UserError(f"{out} holds an evaluation (results.csv): give --resume to continue it, --overwrite to start "
                        "again, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    run = {"data": str(root.resolve()), "box": f"crystal ligand + {args.autobox_add:g} A" if args.autobox else "blind",
           "posebusters": False if args.no_posebusters else version("posebusters"),
           "model_version": getattr(model, "version", "none (physics only)"),
           "rescorer": None if rescorer is None else rescorer.version, "ranking": settings.ranking,
           "waters": "dropped" if args.drop_waters else "receptor atoms",
           "settings": json.loads(json.dumps(settings_dict(settings)))}
    done = _earlier_rows(out, run) if args.resume else {}
    selected = set(ids)
    if left_out := [cid for cid in done if cid not in selected]:  # the rewritten results.csv would drop them
        raise UserError(f"{out} holds results of {len(left_out)} complex(es) this selection leaves out (first: "
                        f"{left_out[0]!r}): --resume needs the interrupted run's --split, --offset, --every and "
                        "--limit (or a selection that contains them), or use another --out")
    if not args.resume:  # --overwrite: the earlier results go before this run's run.json describes the folder
        for name in ("results.csv", "summary.json", "success_curves.png"):
            (out / name).unlink(missing_ok=True)
    write_json(out / "run.json", run, indent=1)
    rows = []
    for cid in progress(ids, desc="dock-eval"):
        if cid in done:  # --resume: docked by the interrupted run
            rows.append(done[cid])
            continue
        protein = complex_files(root, cid)[0]
        row = {"complex": cid, "rmsd_top1": math.inf, "rmsd_top5": math.inf,
               "pb_valid": "" if args.no_posebusters else False, "pb_failed": "",  # "": not checked
               "score_top1": math.nan, "confidence_top1": math.nan, "seconds": math.nan, "error": ""}
        try:
            t0 = time.perf_counter()
            crystal, ligand = complex_ligand(root, cid)
            box = checked_box_size(box_from_ligand(ligand, args.autobox_add)) if args.autobox else None
            receptor, removed = without_ligand_itself(load_receptor(protein, keep_waters=not args.drop_waters),
                                                         crystal, box)  # as `dock` with this box
            if removed:
                tqdm.write(f"note: {cid}: the ligand's own residue {', '.join(removed)} left out of the receptor",
                           file=sys.stderr)
                row["receptor_residues_removed"] = " ".join(removed)
            result = dock(receptor, crystal, box, model, settings, device=args.device, show_progress=False,
                          rescorer=rescorer)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            xtal = ligand_coords(crystal)
            cand_rmsd = [symmetric_rmsd(crystal, x, xtal) for x in result.candidates]
            orders = {"energy": result.order_energy}
            if result.order_learned is not None:
                orders["learned"] = result.order_learned
            for key, order in orders.items():
                rm = [cand_rmsd[j] for j in order]
                row[f"rmsd_top1_{key}"], row[f"rmsd_top5_{key}"] = _milli(rm[0]), _milli(min(rm[:5]))
            default = settings.ranking if result.order_learned is not None else "energy"
            row.update(rmsd_top1=row[f"rmsd_top1_{default}"], rmsd_top5=row[f"rmsd_top5_{default}"],
                       score_top1=round(float(result.score[0]), 3), confidence_top1=round(float(result.confidence[0]), 3),
                       consensus_top1=round(float(result.consensus[0]), 3),
                       rmsd_best_candidate=_milli(min(cand_rmsd)),
                       all_rmsd=" ".join(f"{cand_rmsd[j]:.2f}" for j in orders[default]))
            if not args.autobox:  # a blind pose may sit in a copy of the site on an identical chain
                copies = ligand_copies(receptor, xtal)
                rm = [min([cand_rmsd[j]] + [symmetric_rmsd(crystal, result.candidates[j], c) for c in copies])
                      for j in orders[default]]
                row.update(copies=len(copies), rmsd_top1_copies=_milli(rm[0]), rmsd_top5_copies=_milli(min(rm[:5])))
            if not args.no_posebusters:
                for key, order in orders.items():
                    valid, failed = posebusters_valid(pose_mol(crystal, result.candidates[order[0]]), crystal,
                                                       receptor)
                    row[f"pb_valid_{key}"], row[f"pb_failed_{key}"] = valid, failed
                row["pb_valid"], row["pb_failed"] = row[f"pb_valid_{default}"], row[f"pb_failed_{default}"]
        except UserError as err:
            row["error"] = str(err)
            tqdm.write(f"{cid}: failed, counted as a miss: {err}", file=sys.stderr)
        rows.append(row)
        atomic_csv(out / "results.csv", rows)
    summary = {"n": len(rows), "mode": f"box (crystal ligand + {args.autobox_add:.1f} A)" if args.autobox else "blind"}
    for suffix in ("", "_energy", "_learned") if rescorer is not None else ("",):
        summary.update(success_rates(rows, suffix, args.no_posebusters))
    if not args.autobox:
        summary.update({k: v for k, v in success_rates(rows, "_copies", True).items() if k.startswith("top")})
        summary["complexes_with_copies"] = sum(1 for r in rows if r.get("copies", 0) > 0)
    hit = np.array([r["rmsd_top1"] < 2 for r in rows])
    for key in ("confidence_top1", "consensus_top1"):  # does the number separate right from wrong top-1 poses?
        summary[f"auc_{key}"] = roc_auc(np.array([r.get(key, math.nan) for r in rows], float), hit)
    secs = np.array([r["seconds"] for r in rows], float)
    summary.update({
        "seconds_per_complex": round(float(np.nanmean(secs)), 2) if np.isfinite(secs).any() else None,
        "errors": sum(1 for r in rows if r["error"]),
        "model_version": getattr(model, "version", "none (physics only)"),
        "ranking": "energy" if rescorer is None or settings.ranking == "energy" else "learned",
        "rescorer": None if rescorer is None else rescorer.version,
        "settings": settings_dict(settings),
        "split": str(split), "offset": args.offset, "every": args.every, "limit": args.limit,
    })
    write_json(out / "summary.json", summary, indent=1)
    plot_success_curves(rows, out / "success_curves.png", title=f"{summary['mode']}, {len(rows)} complexes")
    return summary


def plot_success_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Fraction of complexes with RMSD below each threshold (0-10 A): top-1 and best-of-top-5 per ranking, the top-1
    against the nearest copy of the crystal ligand (blind runs with identical pockets), and the best candidate;
    written atomically as a PNG. Failed complexes count as misses at every threshold."""
    from sciddiff.plots import pyplot, save_png

    plt = pyplot()
    thresholds = np.linspace(0.0, 10.0, 201)
    keys = [k for k in ("learned", "energy") if any(f"rmsd_top1_{k}" in r for r in rows)] or [""]

    def below(column: str) -> np.ndarray:  # fraction of complexes under each threshold
        rmsd = np.array([r.get(column, math.inf) for r in rows], float)
        return (rmsd[None] < thresholds[:, None]).mean(1)

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for colour, width, key in zip(("C0", "C1"), (2.6, 1.2), keys):  # the thin line on the thick one: ties show
        suffix = f"_{key}" if key else ""
        for column, style, what in ((f"rmsd_top1{suffix}", "-", "top-1"), (f"rmsd_top5{suffix}", "--", "top-5")):
            ax.plot(thresholds, below(column), style, color=colour, lw=width,
                    label=f"{what} ({key} ranking)" if key else what)
    if any(r.get("copies", 0) > 0 for r in rows):  # blind, some site with copies on identical chains
        ax.plot(thresholds, below("rmsd_top1_copies"), "-.", color="C2", lw=1.2, label="top-1, any identical pocket")
    ax.plot(thresholds, below("rmsd_best_candidate"), ":", color="0.3", label="best candidate")
    ax.axvline(2.0, color="0.8", lw=1, zorder=0)
    ax.set(xlabel="symmetry-corrected RMSD to the crystal ligand (A)", ylabel="fraction of complexes below",
           xlim=(0, 10), ylim=(0, 1), title=title)
    ax.legend(loc="lower right")
    save_png(fig, path)


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC (ties count half) of `score` for `positive`, over the finite scores; None without both classes."""
    ok = np.isfinite(score)
    pos, neg = score[ok & positive], score[ok & ~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    return round(float(greater), 4)


def success_rates(rows: list[dict], suffix: str, no_posebusters: bool) -> dict:
    """Success rates of one ranking; failed complexes (no such column) count as misses."""
    top1 = np.array([r.get(f"rmsd_top1{suffix}", math.inf) for r in rows], float)
    top5 = np.array([r.get(f"rmsd_top5{suffix}", math.inf) for r in rows], float)
    return {f"top1_rmsd_lt_2A{suffix}": round(float((top1 < 2).mean()), 4),
            f"top5_rmsd_lt_2A{suffix}": round(float((top5 < 2).mean()), 4),
            f"median_rmsd_top1{suffix}": _finite(round(float(np.median(top1)), 3)),
            f"pb_valid_top1{suffix}": None if no_posebusters else
            round(float(np.mean([bool(r.get(f"pb_valid{suffix}", False)) for r in rows])), 4)}


def _finite(value: float) -> float | None:
    """JSON has no Infinity: a median over mostly failed complexes is reported as null."""
    return value if math.isfinite(value) else None


def _milli(rmsd: float) -> float:
    """An RMSD cut (not rounded) to 3 decimals: the file's value passes `< 2` (or 1, 3, 5 A) exactly when the value
    does (1.9996 rounded to 2.0 counted as a miss)."""
    return math.floor(rmsd * 1000) / 1000


def _earlier_rows(out: Path, run: dict) -> dict[str, dict]:
    """The rows of an interrupted evaluation in `out` (results.csv), by complex, if it ran the same way (run.json)."""
    try:
        earlier = as_recorded_now(json.loads((out / "run.json").read_text()))
        with open(out / "results.csv", newline="") as fh:
            table = list(csv.DictReader(fh))
    except (OSError, ValueError):
        return {}
    if earlier.get("posebusters") is True and isinstance(run["posebusters"], str):  # recorded before its version was
        earlier["posebusters"] = run["posebusters"]
    if changed := sorted(k for k in run.keys() | earlier.keys() if not same_version(earlier.get(k), run.get(k))):
        raise UserError(f"{out} holds an evaluation run another way (other {', '.join(changed)}); --resume needs "
                        "the same options, or use another --out")
    return {row["complex"]: {k: _csv_value(k, v) for k, v in row.items() if v != "" or _is_text(k)
                             or k.startswith("pb_valid")} for row in table}  # pb_valid "": not checked


def _is_text(column: str) -> bool:
    return column in ("complex", "error", "all_rmsd", "receptor_residues_removed") or column.startswith("pb_failed")


def _csv_value(column: str, value: str):
    """A results.csv cell back as the row held it: text, a pb_valid* boolean, else a number (inf, nan included)."""
    if _is_text(column):
        return value
    if column.startswith("pb_valid"):
        return value == "True" if value else ""
    return float(value)
