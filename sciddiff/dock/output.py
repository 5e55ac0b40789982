"""Writing a docking run to disk atomically: everything goes to a temporary sibling folder that is renamed into
place at the end, so an interrupted or failed run never leaves a partial output folder."""
from __future__ import annotations

import csv
import gzip
import io
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from rdkit import Chem

from sciddiff.cli import UserError, check_output_path
from sciddiff.dock.ligand_io import POSE_TAGS, pose_mol, sdf_block
from sciddiff.dock.receptor import Receptor, complex_pdb

if TYPE_CHECKING:  # the pipeline imports torch: not needed to check or write an output folder
    from sciddiff.dock.docking import DockResult


OUTPUT_MARKERS = ("summary.json", "results.csv")  # what every docking output folder holds


def check_out_dir(out: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """An output folder that may be created, or replaced with `overwrite`: only one that a docking run wrote (it
    holds summary.json or results.csv) or an empty one, and never one that holds an input file (`inputs`: paths,
    or strings that are not files, e.g. SMILES, which are ignored)."""
    out = check_output_path(out, folder=True, replaced=True)
    if not out.exists():
        return out
    if not overwrite:
        raise UserError(f"output folder {out} exists; pass --overwrite to replace it (or --resume to continue a "
                        "library screen or --batch run)")
    for path in inputs:
        if path is not None and Path(path).is_file() and Path(path).resolve().is_relative_to(out.resolve()):
            raise UserError(f"--out {out} holds the input {path}, which --overwrite would delete; choose another --out")
    # staging folders of a run killed outright (SIGKILL, power loss; Ctrl-C and SIGTERM remove their own) do not make
    # a folder foreign, and are removed once the folder has passed, never before
    stale = [p for p in out.iterdir() if _staging(p)]
    if any(p not in stale for p in out.iterdir()) and not any((out / m).is_file() for m in OUTPUT_MARKERS):
        raise UserError(f"--out {out} is not a docking output (no {' or '.join(OUTPUT_MARKERS)}); --overwrite only "
                        "replaces one: choose another --out")
    for path in stale + [p for p in out.parent.iterdir() if _staging(p, of=out.name)]:
        shutil.rmtree(path, ignore_errors=True)
    return out


def _staging(path: Path, of: str | None = None) -> bool:
    """Whether `path` is a staging folder `atomic_dir` makes (`.NAME.tmp-XXXXXXXX`, mkdtemp's 8 characters) or moves
    aside (`.NAME.old-PID`), of the output `of` if given."""
    name = re.escape(of) if of is not None else ".+"
    return path.is_dir() and re.fullmatch(rf"\.{name}\.(tmp-[a-z0-9_]{{8}}|old-[0-9]+)", path.name) is not None


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder next to `out`; on success it replaces `out` (old contents removed), on error it is
    deleted."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 is for a temporary folder, not for the results it becomes
    except OSError as err:  # a parent that is a file, no write permission, read-only file system
        raise UserError(f"cannot create output folder {out}: {err.strerror or err}") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_result(folder: Path, receptor: Receptor, mol: Chem.Mol, result: DockResult, meta: dict, name: str = "ligand") -> dict:
    """rank{i}.sdf (SD tags rank, confidence, consensus, score, energy, pocket), poses.sdf (all of them in rank order,
    one file as gnina's and Vina's outputs are, for viewers), complex_rank1.pdb and summary.json."""
    from sciddiff.train.checkpoint import json_text  # sciddiff.train imports torch: not before the inputs are checked

    poses, blocks = [], []
    for i in range(len(result.coords)):
        tags = {"rank": i + 1, "confidence": float(result.confidence[i]), "consensus": float(result.consensus[i]),
                "score": float(result.score[i]),
                "energy": float(result.energy[i]), "pocket": int(result.region[i]) + 1}
        pm = pose_mol(mol, result.coords[i], tags, name=name, hydrogens=True, drop=POSE_TAGS)
        blocks.append(sdf_block(pm))
        (folder / f"rank{i + 1}.sdf").write_text(blocks[-1])
        if i == 0:
            (folder / "complex_rank1.pdb").write_text(complex_pdb(receptor, pm))
        poses.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in tags.items()} | {"file": f"rank{i + 1}.sdf"})
    (folder / "poses.sdf").write_text("".join(blocks))
    summary = {**meta, **result.summary(), "poses": poses}
    (folder / "summary.json").write_text(json_text(summary, indent=1))
    return summary


def atomic_csv(path: str | os.PathLike, rows: list[dict], columns: Iterable[str] | None = None) -> None:
    """Write rows as a CSV file atomically; columns default to every key in order of first appearance ('' where a
    row has none)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, list(columns or dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_file_text(path, text.getvalue())


def atomic_file_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (temporary sibling + rename), gzipped when its name ends in .gz (as inputs are
    read)."""
    from sciddiff.train.checkpoint import atomic_file

    gz = str(path).lower().endswith(".gz")
    with atomic_file(path, "wb" if gz else "w") as fh:
        fh.write(gzip.compress(text.encode()) if gz else text)


class HitList:
    """The hit list of a screen or a --batch run: `results.csv`, one row per molecule, docked ones by rank-1 score
    (best first; ligand efficiency = -score / heavy atoms), then the skipped ones with their error; with
    `best_poses`, `best_poses.sdf` holds each docked molecule's rank-1 pose in the same order. Both are rewritten
    atomically after every molecule, so an interrupted run leaves a consistent list of what it finished."""

    COLUMNS = ("name", "folder", "score", "ligand_efficiency", "confidence", "energy", "heavy_atoms", "torsions",
               "seconds", "smiles", "error")

    def __init__(self, out: str | os.PathLike, best_poses: bool = True):
        self.out, self.best_poses = Path(out), best_poses
        self.rows: list[dict] = []
        self.poses: dict[str, str] = {}  # folder -> its rank1.sdf record

    @property
    def failed(self) -> int:
        return sum(row["error"] != "" for row in self.rows)

    def add(self, name: str, folder: str, summary: dict | None = None, mol: Chem.Mol | None = None,
            error: str | None = None) -> None:
        row = dict.fromkeys(self.COLUMNS, "") | {"name": name, "folder": folder if error is None else "",
                                                 "error": error or ""}
        if summary is not None:
            best = summary["poses"][0]
            row |= {"score": best["score"], "ligand_efficiency": round(-best["score"] / mol.GetNumAtoms(), 4),
                    "confidence": best["confidence"], "energy": best["energy"],
                    "heavy_atoms": mol.GetNumAtoms(), "torsions": summary["n_torsions"],
                    "seconds": round(summary["timings"]["total"], 1), "smiles": summary["smiles"]}
            if self.best_poses:
                self.poses[folder] = (self.out / folder / best["file"]).read_text()
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        ranked = sorted(self.rows, key=lambda r: (r["error"] != "", r["score"] if r["score"] != "" else 0.0))
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_csv(self.out / "results.csv", ranked, self.COLUMNS)
        if self.best_poses:
            atomic_file_text(self.out / "best_poses.sdf", "".join(self.poses[r["folder"]] for r in ranked
                                                                    if r["folder"] in self.poses))
