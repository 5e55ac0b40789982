"""Synthetic protein-ligand complexes cut from protein structures: a buried peptide segment becomes the ligand.

DiffDock-L (Corso et al. 2024) multiplied its training data with side chains treated as ligands in the rest of their
protein. Here the ligand is a contiguous segment of `--residues` residues (default 2): a peptide with its own
backbone and side chains, whose bond orders come from RDKit's residue templates (`Chem.MolFromSequence`, free
amine and carboxylate termini; the terminal OXT is placed where the next residue's N was). The receptor is the
first model without the segment and without the residue on either side of it (the termini would otherwise sit 1.3 A
from the atoms they were bonded to, and the OXT on the next residue's N). A segment of the first chain qualifies when
it lies at least `--margin` residues from the chain ends, has every heavy atom, only standard residues, no chain break
within one residue of it, and at least `--contacts` receptor heavy atoms within 4 A of its atoms per ligand heavy
atom, not counting the two flanking residues it was bonded to: a buried segment, in the environment of a pocket
rather than of a surface loop (the crystal ligands of the docking training set have 1.35 such atoms per heavy atom at
the median, 1.1 at the first quartile). Contacts are counted within the first chain.

Writes the docking data layout (`OUT/synthetic/<id>/<id>_protein.pdb.gz`, `<id>_ligand.sdf.gz`) and
`OUT/splits/synthetic.txt`, so that every docking tool reads it with `--data OUT --split OUT/splits/synthetic.txt`:

    python -m sciddiff.dock.synthetic --proteins ../shared/data/proteins --out runs/synthetic --complexes 200
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from sciddiff.cli import print_note

CONTACT_RADIUS = 4.0  # A
STANDARD = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
            "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
            "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V"}


def read_chain(path: Path):
    """The first model's first chain of a (gzipped) PDB file, as a list of Bio.PDB residues (waters and HETATM
    residues left out)."""
    from Bio.PDB import PDBParser

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        structure = PDBParser(QUIET=True).get_structure(path.name, handle)
    chain = next(iter(next(iter(structure))))
    return [res for res in chain if res.id[0] == " "]


def segment_ligand(residues: list, following):
    """RDKit molecule (heavy atoms, crystal coordinates) of consecutive standard residues, or None if an atom of
    the peptide template is missing; `following` is the residue after them (its N places the terminal OXT)."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.MolFromSequence("".join(STANDARD[r.get_resname()] for r in residues))
    conf = Chem.Conformer(mol.GetNumAtoms())
    for atom in mol.GetAtoms():
        info = atom.GetPDBResidueInfo()
        res, name = residues[info.GetResidueNumber() - 1], info.GetName().strip()
        source = following if name == "OXT" else res
        name = "N" if name == "OXT" else name
        xyz = source[name].coord if name in source else None
        if xyz is None:
            return None
        conf.SetAtomPosition(atom.GetIdx(), Point3D(*map(float, xyz)))
    mol.AddConformer(conf, assignId=True)
    Chem.AssignStereochemistryFrom3D(mol)
    return mol


def candidate_segments(residues: list, length: int, margin: int, contacts: float) -> list[tuple[int, float]]:
    """(start index, contacts per heavy atom) of every qualifying segment (module docstring)."""
    from scipy.spatial import cKDTree

    coords = [np.array([a.coord for a in r if a.element != "H"]) for r in residues]
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(coords)])
    tree = cKDTree(np.concatenate(coords))
    ca = np.array([r["CA"].coord if "CA" in r else [np.nan] * 3 for r in residues])
    gap = np.linalg.norm(np.diff(ca, axis=0), axis=1)  # a break: CA(i)-CA(i+1) > 4.2 A (or a missing CA)
    # a cysteine disulfide-bonded to the rest (any chain of the model) would make a covalent "ligand"
    model = residues[0].get_parent().get_parent()
    sulfurs = [a for a in model.get_atoms() if a.get_id() == "SG"]
    pairs = cKDTree(np.array([a.coord for a in sulfurs])).query_pairs(2.5) if len(sulfurs) > 1 else set()
    bonded = {id(sulfurs[i].get_parent()) for pair in pairs for i in pair}
    found = []
    for s in range(margin, len(residues) - length - margin + 1):
        seg = residues[s:s + length]
        if (any(r.get_resname() not in STANDARD or id(r) in bonded for r in seg)
                or not np.all(gap[s - 1:s + length] <= 4.2)):
            continue
        atoms = np.concatenate(coords[s:s + length])
        near = tree.query_ball_point(atoms, CONTACT_RADIUS)
        hits = {j for js in near for j in js if not s - 1 <= owner[j] <= s + length}  # flanks and segment excluded
        if len(hits) >= contacts * len(atoms):
            found.append((s, len(hits) / len(atoms)))
    return found


def write_complex(out: Path, cid: str, residues: list, start: int, length: int, mol) -> None:
    from Bio.PDB import PDBIO, Select
    from rdkit import Chem

    cut = {id(r) for r in residues[start - 1:start + length + 1]}  # the segment and its two flanking residues

    first_model = residues[0].get_parent().get_parent()

    class Receptor(Select):  # every chain of the first model, without waters and HETATM groups
        def accept_model(self, model):
            return model is first_model

        def accept_residue(self, residue):
            return residue.id[0] == " " and id(residue) not in cut

    folder = out / "synthetic" / cid
    folder.mkdir(parents=True, exist_ok=True)
    pdb = PDBIO()
    pdb.set_structure(first_model.get_parent())
    text = io.StringIO()
    pdb.save(text, Receptor())
    with gzip.open(folder / f"{cid}_protein.pdb.gz", "wt") as handle:
        handle.write(text.getvalue())
    with gzip.open(folder / f"{cid}_ligand.sdf.gz", "wt") as handle:
        handle.write(Chem.MolToMolBlock(mol) + "$$$$\n")


def run(args: argparse.Namespace) -> int:
    from sciddiff.cli import UserError, check_output_path

    if args.residues < 1 or args.complexes < 1 or args.margin < 1 or not args.contacts >= 0:
        raise UserError("--residues, --complexes and --margin must be at least 1, --contacts at least 0")
    root = Path(args.proteins)
    files = sorted(root.rglob("*.pdb.gz")) + sorted(root.rglob("*.pdb"))
    if (root / "manifest.tsv").is_file():  # ../shared/data/proteins: one chain per distinct sequence
        import csv

        with open(root / "manifest.tsv") as handle:
            keep = {root / row["path"] for row in csv.DictReader(handle, delimiter="\t")
                    if row.get("is_seq_representative", "1") == "1"}
        files = [f for f in files if f in keep]
    if not files:
        raise UserError(f"no .pdb or .pdb.gz files under {root}")
    out = check_output_path(args.out, folder=True)
    if (out / "synthetic").exists():  # a second run would mix its complexes with a split that lists only its own
        raise UserError(f"{out} already holds synthetic complexes: choose another --out")
    # complexes are written to a staging folder moved into place at the end: an interrupted run leaves no partial
    # synthetic/ (which refused the rerun); a staging folder an interrupted run left is removed first
    staging = out / ".synthetic-staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        ids = _write_complexes(args, files, staging)
        if not ids:
            raise UserError(f"no segment of the proteins under {root} qualified (buried, {args.residues} standard "
                            "residues without a chain break or a disulfide): nothing written")
        os.replace(staging / "synthetic", out / "synthetic")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (out / "splits").mkdir(parents=True, exist_ok=True)
    (out / "splits" / "synthetic.txt").write_text("".join(f"synthetic/{cid}\n" for cid in ids))
    if len(ids) < args.complexes:
        print_note(f"{len(ids)} of the {args.complexes} complexes asked for: the proteins under {root} hold no more "
                   "qualifying segments (one per protein)")
    print(f"wrote {len(ids)} synthetic complexes to {out / 'synthetic'}; split {out / 'splits' / 'synthetic.txt'}")
    return 0


def _write_complexes(args, files: list[Path], out: Path) -> list[str]:
    """Up to --complexes synthetic complexes, one per protein in a seeded order, written under out/synthetic/."""
    from sciddiff.train.log import progress

    rng = np.random.default_rng(args.seed)
    ids = []
    bar = progress([files[i] for i in rng.permutation(len(files))], desc="synthetic complexes", unit="protein")
    for path in bar:
        if len(ids) >= args.complexes:
            break
        try:
            residues = read_chain(path)
        except (ValueError, KeyError, StopIteration, OSError, EOFError):  # an unreadable file: the next one
            continue
        segments = candidate_segments(residues, args.residues, args.margin, args.contacts)
        for k in rng.permutation(len(segments)):  # one segment per protein: diverse receptors
            start = segments[k][0]
            mol = segment_ligand(residues[start:start + args.residues], residues[start + args.residues])
            if mol is not None:
                cid = f"{path.name.split('.')[0]}_{residues[start].id[1]}"
                write_complex(out, cid, residues, start, args.residues, mol)
                ids.append(cid)
                break
    return ids


def main(argv: list[str] | None = None) -> int:
    from sciddiff.cli import DefaultsHelpFormatter, run_command

    p = argparse.ArgumentParser(prog="python -m sciddiff.dock.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--proteins", required=True, help="folder searched recursively for protein .pdb / .pdb.gz files")
    p.add_argument("--out", required=True, help="output data root (synthetic/<id>/..., splits/synthetic.txt)")
    p.add_argument("--complexes", type=int, default=200, help="complexes to write (one per protein)")
    p.add_argument("--residues", type=int, default=2, help="segment length (the ligand's residues)")
    p.add_argument("--margin", type=int, default=5, help="residues kept between a segment and the chain ends")
    p.add_argument("--contacts", type=float, default=1.1,
                   help="receptor heavy atoms within 4 A of the segment per segment heavy atom (flanking residues "
                        "not counted)")
    p.add_argument("--seed", type=int, default=0, help="order of the proteins and choice of segments")
    return run_command(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
